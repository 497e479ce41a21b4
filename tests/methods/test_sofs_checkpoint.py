"""SOFS checkpoints: the released reference layout loads strictly; own format round trip."""
# ruff: noqa: F401  (single_thread is an autouse fixture)
import pytest
import torch

from harness.features import build_vit
from methods.sofs.checkpoint import (
    CheckpointError, build_head, load_backbone, map_reference_key, read_checkpoint, save_head,
)
from tests.methods.test_sofs_fixtures import single_thread, micro_backbone_file, micro_head


def reference_state_dict(fea_dim=4608, r=256, d=256, prior=12, stages=2) -> dict[str, torch.Tensor]:
    """Names and shapes of the reference ``feature_recorrect`` module (spec §1.4-1.5), written
    out independently of methods.sofs.model."""
    shapes = {
        "down_query.0.weight": (r, fea_dim, 1, 1),
        "down_supp.0.weight": (r, fea_dim, 1, 1),
        "down_supp_semantic.0.weight": (r, fea_dim, 1, 1),
        "supp_merge_semantic.0.weight": (d, 2 * r, 1, 1),
        "query_merge_semantic.0.weight": (d, 2 * r + prior, 1, 1),
        "query_semantic_transformer.mix_transformer.support_prototype.weight": (d, d, 1, 1),
        "query_semantic_transformer.mix_transformer.support_prototype.bias": (d,),
    }
    for i in range(stages):
        layer = f"query_semantic_transformer.mix_transformer.sa_layers.{i}"
        for norm in ("norm1", "norm2"):
            shapes[f"{layer}.{norm}.weight"] = (d,)
            shapes[f"{layer}.{norm}.bias"] = (d,)
        for proj in "qkvo":
            shapes[f"{layer}.attn.attn.linear_{proj}.weight"] = (d, d)
        shapes[f"{layer}.ffn.layers.0.weight"] = (4 * d, d, 1, 1)
        shapes[f"{layer}.ffn.layers.0.bias"] = (4 * d,)
        shapes[f"{layer}.ffn.layers.1.weight"] = (4 * d, 1, 3, 3)
        shapes[f"{layer}.ffn.layers.1.bias"] = (4 * d,)
        shapes[f"{layer}.ffn.layers.4.weight"] = (d, 4 * d, 1, 1)
        shapes[f"{layer}.ffn.layers.4.bias"] = (d,)
    gen = torch.Generator().manual_seed(0)
    return {f"feature_recorrect.{k}": torch.randn(s, generator=gen) * 0.01 for k, s in shapes.items()}


def test_key_mapping():
    assert map_reference_key("module.backbone.blocks.0.norm1.weight") is None
    assert map_reference_key("feature_recorrect.down_query.0.weight") == "down_query.0.weight"
    assert map_reference_key(
        "feature_recorrect.query_semantic_transformer.mix_transformer.sa_layers.1.attn.attn.linear_k.weight"
    ) == "query_semantic_transformer.sa_layers.1.attn.linear_k.weight"


@pytest.mark.parametrize("prefix", ["", "module."])
def test_released_layout_loads_strictly(tmp_path, prefix):
    state = reference_state_dict()
    state["backbone.cls_token"] = torch.zeros(1, 1, 768)  # the released file also holds DINOv2
    path = tmp_path / "SOFS_model.pth"
    torch.save({prefix + k: v for k, v in state.items()}, path)
    head_state, hparams = read_checkpoint(path)
    assert hparams["backbone"] == "dinov2_vitb14" and hparams["layers"] == [5, 6, 7, 8, 9, 10]
    head = build_head(head_state, hparams, path)
    cfg = head.cfg
    assert (cfg.fea_dim, cfg.reduce_dim, cfg.transformer_dim, cfg.num_stages, cfg.abnormal_prior) == (
        4608, 256, 256, 2, True)
    torch.testing.assert_close(
        head.query_semantic_transformer.sa_layers[1].attn.linear_v.weight,
        state["feature_recorrect.query_semantic_transformer.mix_transformer.sa_layers.1.attn.attn.linear_v.weight"],
    )


def test_reference_without_prior_channels_builds_518_input(tmp_path):
    path = tmp_path / "noprior.pth"
    torch.save(reference_state_dict(prior=6), path)
    head = build_head(*read_checkpoint(path), path)
    assert head.query_merge_semantic[0].in_channels == 518 and not head.cfg.abnormal_prior


def test_mismatched_checkpoint_names_the_file(tmp_path):
    state = reference_state_dict()
    del state["feature_recorrect.down_supp.0.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="broken.pth: does not match") as info:
        build_head(*read_checkpoint(path), path)
    assert "\n" not in str(info.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: cannot read"):
        read_checkpoint(junk)
    other = tmp_path / "other.pth"
    torch.save({"some.weight": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="other.pth: neither"):
        read_checkpoint(other)


def test_own_format_round_trip(tmp_path):
    head = micro_head()
    path = save_head(tmp_path / "head.pt", head, {"backbone": "vit_micro14", "layers": [5, 6, 7, 8, 9, 10]})
    state, hparams = read_checkpoint(path)
    loaded = build_head(state, hparams, path)
    assert loaded.cfg == head.cfg
    for (name, a), (_, b) in zip(head.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_backbone_from_whole_released_file(tmp_path):
    vit = build_vit("vit_micro14")
    state = {f"backbone.{k}": v for k, v in torch.load(micro_backbone_file(), weights_only=True).items()}
    state.update(reference_state_dict(fea_dim=192, r=8, d=8))
    path = tmp_path / "SOFS_model.pth"
    torch.save(state, path)
    model = load_backbone("vit_micro14", path, (5, 6)).model
    torch.testing.assert_close(model.blocks[3].mlp.fc1.weight, state["backbone.blocks.3.mlp.fc1.weight"])
    assert vit is not model
