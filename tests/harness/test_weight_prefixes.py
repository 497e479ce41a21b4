"""Backbone weight files saved from wrappers: ``module.`` (DataParallel / DDP) and ``backbone.`` prefixes."""
import pytest
import torch

import benchmarks.small_backbones  # noqa: F401  (registers the test backbones vit_tiny14, vit_micro14)
from harness.features import BackboneError, build_model, make_features, read_state_dict
from methods.sofs.checkpoint import load_backbone


@pytest.fixture(scope="module")
def micro_state():
    torch.manual_seed(0)
    return build_model("vit_micro14").state_dict()


@pytest.mark.parametrize("prefix", ["module.", "module.backbone.", "backbone."])
def test_wrapped_backbone_file_serves_as_the_backbone(tmp_path, micro_state, prefix):
    path = tmp_path / "wrapped.pt"
    torch.save({prefix + key: value for key, value in micro_state.items()}, path)
    features = make_features("vit_micro14", path, (5, 10))
    for key, value in features.model.state_dict().items():
        if key in micro_state:
            torch.testing.assert_close(value, micro_state[key].float(), msg=key)


def test_ddp_saved_reference_sofs_model_serves_as_the_backbone(tmp_path, micro_state):
    """A whole SOFS model saved under DDP: ``module.backbone.*`` + ``module.feature_recorrect.*``."""
    state = {f"module.backbone.{key}": value for key, value in micro_state.items()}
    state["module.feature_recorrect.support_prototype"] = torch.zeros(1, 4)
    path = tmp_path / "SOFS_model.pth"
    torch.save(state, path)
    features = load_backbone("vit_micro14", path, (5, 10))
    torch.testing.assert_close(features.model.state_dict()["cls_token"], micro_state["cls_token"].float())


def test_module_prefix_is_dropped_only_when_every_key_has_it(tmp_path, micro_state):
    path = tmp_path / "mixed.pt"
    keys = list(micro_state)
    torch.save({("module." + k if i % 2 else k): micro_state[k] for i, k in enumerate(keys)}, path)
    assert sum(k.startswith("module.") for k in read_state_dict(path)) == len(keys) // 2
    with pytest.raises(BackboneError, match="mixed.pt: does not match backbone 'vit_micro14'"):
        make_features("vit_micro14", path, (5, 10))
