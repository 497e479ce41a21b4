"""SOFS model pieces: loss, mask downsampling, priors, fusion, forward shapes."""
# ruff: noqa: F401  (single_thread is an autouse fixture)
import math

import pytest
import torch
import torch.nn.functional as F

from harness.features import ViTFeatures, load_vit
from methods.sofs.loss import binary_ce, logits_ce, mixed_normal_dice, patch_target, sofs_loss
from methods.sofs.model import (
    HeadConfig, SOFSHead, SOFSModel, abnormal_prior, count_parameters, downsample_mask,
    nonlearnable_fusion, semantic_similarity, weighted_gap,
)
from tests.methods.test_sofs_fixtures import single_thread, LAYERS, micro_backbone_file, micro_head


# ---------------------------------------------------------------- loss (spec §2.4)

def test_loss_defective_episode_by_hand():
    prob = torch.tensor([[[0.5, 0.5], [0.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # I = 0.5, G = 1, sum p = 1
    dice = 1 - (2 * 0.5 + 1e-5) / (1 + 1 + 1e-5)
    ce = -(2 * math.log(0.5 + 1e-6) + 2 * math.log(1 + 1e-6)) / 4
    assert mixed_normal_dice(prob, target, 1e5).item() == pytest.approx(dice, rel=1e-6)
    assert binary_ce(prob, target).item() == pytest.approx(ce, rel=1e-6)
    assert sofs_loss(prob, target, 1e5).item() == pytest.approx(dice + 0.01 * ce, rel=1e-6)


def test_logits_ce_equals_the_reference_ce_until_the_reference_saturates():
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    logits = torch.tensor([[[0.3, -1.2], [2.0, -0.5]]])
    prob = torch.sigmoid(logits)
    assert logits_ce(logits, target).item() == pytest.approx(binary_ce(prob, target).item(), abs=1e-5)
    combined = sofs_loss(prob, target, 1.0, 1.0, 1.0, logits=logits)
    assert combined.item() == pytest.approx((mixed_normal_dice(prob, target, 1.0) + logits_ce(logits, target)).item())
    # A defect pixel at logit -30 (p ~ 1e-13): the reference's log(p + 1e-6) has no gradient left,
    # the logits form still pulls the logit up (d/dz = sigmoid(z) - 1 ~ -1 per pixel, / 4 pixels).
    deep = torch.full((1, 2, 2), -30.0, requires_grad=True)
    binary_ce(torch.sigmoid(deep), target).backward()
    assert deep.grad.abs().max().item() < 1e-6
    deep.grad = None
    logits_ce(deep, target).backward()
    assert deep.grad[0, 0, 0].item() == pytest.approx(-0.25, abs=1e-6)


def test_loss_normal_episode_by_hand():
    prob = torch.tensor([[[0.1, 0.1], [0.0, 0.0]]])
    target = torch.zeros(1, 2, 2)
    assert mixed_normal_dice(prob, target, 1.0).item() == pytest.approx(0.2 / 1.2, rel=1e-6)
    assert mixed_normal_dice(prob, target, 1e5).item() == pytest.approx(2e4 / (2e4 + 1), rel=1e-6)
    # batch mean over a defective and a normal episode
    both = mixed_normal_dice(torch.cat([prob, prob]), torch.cat([target, torch.ones(1, 2, 2)]), 1.0)
    defective = 1 - (2 * 0.2 + 1e-5) / (4 + 0.2 + 1e-5)
    assert both.item() == pytest.approx((0.2 / 1.2 + defective) / 2, rel=1e-6)


def test_patch_target_needs_more_than_ten_percent():
    mask = torch.zeros(1, 1, 28, 28)
    mask[0, 0, :2, :10] = 1  # 20 / 196 > 0.1
    mask[0, 0, 14:16, 14:23] = 1  # 18 / 196 < 0.1
    assert patch_target(mask).tolist() == [[[1.0, 0.0], [0.0, 0.0]]]


# ---------------------------------------------------------------- priors (spec §1.3)

def test_intensity_downsampling_keeps_one_pixel_defect():
    mask = torch.zeros(1, 1, 518, 518)
    mask[0, 0, 15, 30] = 1  # patch (1, 2)
    m = downsample_mask(mask, 14, intensity=True)
    assert m.shape == (1, 1, 37, 37)
    assert m[0, 0, 1, 2].item() == pytest.approx(1 / 196)
    assert m.sum().item() == pytest.approx(1 / 196)
    assert downsample_mask(mask, 14, intensity=False).sum().item() == 0.0  # bilinear loses it


def test_weighted_gap_epsilon():
    features = torch.ones(1, 3, 2, 2)
    weights = torch.zeros(1, 1, 2, 2)
    weights[0, 0, 0, 0] = 0.5
    assert weighted_gap(features, weights).flatten().tolist() == pytest.approx([0.5 / 0.5005] * 3)
    assert weighted_gap(features, torch.zeros(1, 1, 2, 2)).abs().sum() == 0


def test_abnormal_prior_identical_query_and_support():
    torch.manual_seed(0)
    feats = torch.randn(1, 8, 6, 6)
    weights = torch.zeros(1, 1, 1, 6, 6)
    weights[..., 2:4, 2:4] = 1.0
    prior = abnormal_prior(feats, feats[:, None], weights)
    outside = torch.ones(6, 6, dtype=torch.bool)
    outside[2:4, 2:4] = False
    assert prior.shape == (1, 1, 6, 6)
    assert prior[0, 0][outside].abs().max() < 1e-5
    assert prior[0, 0][~outside].min() > 0.05  # defect tokens only match other tokens


def _naive_semantic(query, support, weights):
    """Spec §1.3(c) literally: full product, cos with eps 1e-7, max, mean over supports."""
    b, c, h, w = query.shape
    q = query.flatten(2).transpose(1, 2)  # [B, hw, C]
    maps = []
    for i in range(support.shape[1]):
        s = (support[:, i] * weights[:, i]).flatten(2)  # [N, C, hw]
        cos = (q @ s) / (q.norm(dim=2, keepdim=True) @ s.norm(dim=1, keepdim=True) + 1e-7)
        maps.append(cos.max(dim=2).values)
    return torch.stack(maps, 1).mean(1).view(b, 1, h, w)


@pytest.mark.parametrize("sets", [1, 3])
def test_semantic_similarity_matches_full_product(sets):
    torch.manual_seed(1)
    query = torch.randn(3, 8, 5, 5)
    support = torch.randn(sets, 2, 8, 5, 5)
    weights = torch.zeros(sets, 2, 1, 5, 5)
    weights[:, 0, :, 1:3, 1:4] = torch.rand(sets, 1, 2, 3)
    weights[-1, 1, :, 4, 4] = 1 / 196
    fast = semantic_similarity(query, support, weights)
    assert torch.allclose(fast, _naive_semantic(query, support, weights), atol=1e-6)


def test_fusion_softmax_over_query_and_masked_columns_add_nothing():
    torch.manual_seed(2)
    query, support = torch.randn(2, 9, 4), torch.randn(2, 18, 4)
    weights = torch.zeros(2, 1, 18)
    weights[0, 0, 3] = 0.7
    weights[1, 0, 10:12] = 1.0
    cos = F.normalize(query, dim=2) @ F.normalize(support, dim=2).transpose(1, 2) * weights
    expected = query + torch.softmax(cos / 0.1, dim=1) @ (support * weights.transpose(1, 2))
    assert torch.allclose(nonlearnable_fusion(query, support, weights, 0.1), expected, atol=1e-6)
    # attention columns sum to 1 over query positions, not over supports
    assert not torch.allclose(
        expected, query + torch.softmax(cos / 0.1, dim=2) @ (support * weights.transpose(1, 2)))


# ---------------------------------------------------------------- head and model

def test_head_parameter_count_vitb():
    assert count_parameters(SOFSHead(HeadConfig())) == 5_467_904  # spec §1.5: ~5.47 M


def _micro_model(abnormal_prior=True):
    backbone = ViTFeatures(load_vit("vit_micro14", micro_backbone_file()), LAYERS)
    return SOFSModel(backbone, micro_head(abnormal_prior)).eval()


@pytest.mark.parametrize("n", [4, 20])  # 1-shot (K=1, S=4) and 5-shot (K=5, S=4)
def test_forward_shapes(n):
    model = _micro_model()
    torch.manual_seed(3)
    query = torch.randn(2, 3, 224, 224)
    supports = torch.randn(2, n, 3, 224, 224)
    masks = torch.zeros(2, n, 1, 224, 224)
    masks[0, :, :, 10:40, 10:40] = 1
    with torch.no_grad():
        output, mask_weight = model(query, supports, masks)
    assert output.logits.shape == (2, 16, 16)
    assert output.abnormal_prior.shape == (2, 1, 16, 16)
    assert mask_weight.tolist() == [1.0, 0.0]
    assert torch.isfinite(output.logits).all()


def test_training_mode_keeps_backbone_frozen_and_gives_gradients():
    model = _micro_model().train()
    assert not model.backbone.training and model.head.training
    query, supports = torch.randn(1, 3, 224, 224), torch.randn(1, 4, 3, 224, 224)
    masks = torch.zeros(1, 4, 1, 224, 224)
    masks[..., 50:90, 50:90] = 1
    output, _ = model(query, supports, masks)
    output.logits.sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.down_query[0].weight.grad is not None
