"""AnomalyDINO-style baseline on a tiny random ViT (vit_micro14) and on hand-made token features."""
import numpy as np
import pytest
import torch

from methods.anomalydino import foreground_tokens, top_mean
from methods.base import MethodError, MethodSpec, Prediction
from tests.methods.test_panet import micro_weights, textured_image, with_defect  # noqa: F401 (fixture)


def build(micro_weights, **options):
    return MethodSpec("anomalydino", {"backbone": "vit_micro14", **options}, {"backbone": str(micro_weights)}).build()


def test_top_mean_by_hand():
    scores = torch.arange(1, 201, dtype=torch.float32) / 200  # 0.005 ... 1.0
    assert top_mean(scores, 0.01) == pytest.approx((1.0 + 0.995) / 2)  # ceil(2.0) = 2 highest
    assert top_mean(scores, 0.02) == pytest.approx(np.mean([1.0, 0.995, 0.99, 0.985]))
    assert top_mean(torch.zeros(0), 0.01) == 0.0


def test_foreground_is_the_side_away_from_the_border():
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    features = torch.zeros(1, 8, 8, 4)
    features[..., 0] = -1.0  # background everywhere ...
    features[0, 3:5, 3:5, 0] = 1.0  # ... except a 2 x 2 object in the middle
    features += 0.01 * torch.randn(features.shape, generator=torch.Generator().manual_seed(0))
    expected = torch.zeros(1, 8, 8, dtype=torch.bool)
    expected[0, 2:6, 2:6] = True  # the object dilated by one token
    assert torch.equal(foreground_tokens(features, valid), expected)
    assert torch.equal(foreground_tokens(-features, valid), expected)  # the PCA sign does not matter


def test_a_rotated_support_is_normal_only_with_rotations(micro_weights):
    support = textured_image(140, 140, seed=3)
    empty = np.zeros((140, 140), bool)
    query = np.ascontiguousarray(np.rot90(support))
    plain = build(micro_weights, rotations=1, score_scale="fixed").predict([support], [empty], query)
    rotated = build(micro_weights, rotations=4, score_scale="fixed").predict([support], [empty], query)
    assert isinstance(rotated, Prediction)
    assert rotated.score_map.max() < 1e-3 and rotated.image_score < 1e-3  # the bank holds this very view
    assert plain.image_score > 10 * max(rotated.image_score, 1e-4)
    assert plain.score_map.mean() > rotated.score_map.mean()


def test_pasted_patch_scores_above_the_fitted_threshold(micro_weights):
    support, mask = with_defect(textured_image(300, 420), 30, 30, 28)
    query, pasted = with_defect(support, 150, 250, 42, colour=(20, 40, 220))
    prediction = build(micro_weights).predict([support], [mask], query)
    assert prediction.threshold == 0.5 and 0 <= prediction.score_map.min() and prediction.score_map.max() < 1
    far = np.ones_like(mask)
    far[:90, :90] = False  # the support's own defect, left out of the bank
    far[120:230, 220:330] = False  # the pasted patch and its blur
    assert (prediction.score_map[pasted] > 0.5).mean() > 0.9
    assert (prediction.score_map[far] > 0.5).mean() < 0.01
    # the image score is the mean of the top 1 % token scores: at least the pasted patch's mean score
    assert prediction.image_score > prediction.score_map[far].max()


def test_vit_default_level_is_the_last_block_and_options_are_checked(micro_weights):
    assert build(micro_weights).backbone.features.layers == (10,)
    assert build(micro_weights, layers=(5,)).backbone.features.layers == (5,)
    with pytest.raises(MethodError, match="rotations"):
        build(micro_weights, rotations=3)
    with pytest.raises(MethodError, match="top_fraction"):
        build(micro_weights, top_fraction=0.0)


def test_masking_zeroes_background_tokens(micro_weights):
    support = textured_image(140, 140, seed=4)
    empty = np.zeros((140, 140), bool)
    query = textured_image(140, 140, seed=5)
    masked = build(micro_weights, masking=True, rotations=1, blur_sigma=0, score_scale="fixed").predict(
        [support], [empty], query)
    plain = build(micro_weights, rotations=1, blur_sigma=0, score_scale="fixed").predict([support], [empty], query)
    zeroed = masked.score_map < plain.score_map - 1e-6
    assert zeroed.any() and np.all(masked.score_map <= plain.score_map + 1e-6)
