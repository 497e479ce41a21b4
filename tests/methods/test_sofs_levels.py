"""SOFS on a CNN pyramid: unequal level widths, stride-8 intensity downsampling, save/load, predict."""
# ruff: noqa: F401  (single_thread is an autouse fixture)
import numpy as np
import pytest
import torch

from harness.features import build_model
from methods.base import MethodError
from methods.sofs.checkpoint import build_head, hparams_of, load_backbone, read_checkpoint, save_head
from methods.sofs.loss import patch_target, sofs_loss
from methods.sofs.model import HeadConfig, SOFSHead, SOFSModel, count_parameters
from tests.methods.test_sofs_fixtures import single_thread

LEVELS = (2, 3)  # EfficientNet-Lite0 stages: stride 8 (40 ch) + stride 16 (80 ch) upsampled


def _head(seed=0):
    torch.manual_seed(seed)
    return SOFSHead(HeadConfig(backbone_dim=0, num_layers=2, level_dims=(40, 80), reduce_dim=16, transformer_dim=16))


def test_unequal_widths_shape_the_head():
    head = _head()
    assert head.cfg.fea_dim == 120 and head.cfg.prior_channels == 4
    assert head.down_query[0].weight.shape == (16, 120, 1, 1)
    assert head.query_merge_semantic[0].weight.shape == (16, 2 * 16 + 4, 1, 1)
    with pytest.raises(ValueError):
        HeadConfig(num_layers=3, level_dims=(40, 80))


def test_forward_loss_and_gradients_on_the_stride_8_grid(lite0_file):
    model = SOFSModel(load_backbone("efficientnet_lite0", lite0_file, LEVELS), _head()).train()
    assert model.patch == 8
    torch.manual_seed(1)
    query, supports = torch.randn(2, 3, 64, 64), torch.randn(2, 4, 3, 64, 64)
    masks = torch.zeros(2, 4, 1, 64, 64)
    masks[0, :, :, 20:23, 30:31] = 1  # 3 pixels: intensity weight 3/64 in one cell
    output, mask_weight = model(query, supports, masks)
    assert output.logits.shape == (2, 8, 8) and output.abnormal_prior.shape == (2, 1, 8, 8)
    assert mask_weight.tolist() == [1.0, 0.0]
    weights = model.downsample(masks[0, :1])
    assert weights.sum().item() == pytest.approx(3 / 64) and weights[0, 0, 2, 3].item() == pytest.approx(3 / 64)
    query_masks = torch.zeros(2, 1, 64, 64)
    query_masks[0, :, 8:24, 8:24] = 1
    loss = sofs_loss(torch.sigmoid(output.logits), patch_target(query_masks, model.patch), 1.0, 1.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and model.head.down_query[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())


def test_save_and_load_keep_level_widths_and_image_size(tmp_path):
    head = _head(seed=3)
    path = save_head(tmp_path / "head.pt", head, hparams_of(head, "efficientnet_lite0", LEVELS, image_size=256))
    state, hparams = read_checkpoint(path)
    assert hparams["level_dims"] == [40, 80] and hparams["image_size"] == 256
    loaded = build_head(state, hparams, path)
    assert loaded.cfg.dims == (40, 80) and count_parameters(loaded) == count_parameters(head)
    for (name, a), b in zip(head.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_method_predicts_at_native_size_and_checks_the_backbone(tmp_path, lite0_file):
    from methods.sofs.inference import SOFS, SOFSConfig

    head = _head()
    checkpoint = save_head(tmp_path / "head.pt", head, hparams_of(head, "efficientnet_lite0", LEVELS, image_size=64))
    method = SOFS(SOFSConfig(device="cpu"), {"checkpoint": checkpoint, "backbone": lite0_file})
    assert (method.image_size, method.crop_size) == (64, 64)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    mask = np.zeros((90, 130), bool)
    mask[40:44, 60:63] = True
    score_map = method.predict([image], [mask], image)
    assert score_map.shape == (90, 130) and score_map.dtype == np.float32
    assert 0 <= score_map.min() and score_map.max() <= 1
    with pytest.raises(MethodError, match="multiple of backbone 'efficientnet_lite0' stride 16"):
        SOFS(SOFSConfig(device="cpu", image_size=72), {"checkpoint": checkpoint, "backbone": lite0_file})
    with pytest.raises(MethodError, match="trained with layers=\\(2, 3\\), option says \\(2, 4\\)"):
        SOFS(SOFSConfig(device="cpu", layers=(2, 4)), {"checkpoint": checkpoint, "backbone": lite0_file})
    wrong = save_head(tmp_path / "wrong.pt", head, hparams_of(head, "efficientnet_lite0", (2, 4), image_size=64))
    with pytest.raises(MethodError, match=r"level widths \(40, 80\).* give \(40, 112\)"):
        SOFS(SOFSConfig(device="cpu"), {"checkpoint": wrong, "backbone": lite0_file})
