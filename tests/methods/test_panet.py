"""Training-free PANet on a tiny random ViT (vit_micro14): shapes, prototypes, masks, weights."""
import numpy as np
import pytest
import torch

import benchmarks.small_backbones  # noqa: F401  (registers the test backbones vit_tiny14, vit_micro14)
from methods.base import MethodError, MethodSpec
from tests.conftest import random_weights


@pytest.fixture(scope="module")
def micro_weights(tmp_path_factory):
    return random_weights("vit_micro14", tmp_path_factory.mktemp("weights") / "vit_micro14.pt")


def build(micro_weights, **options):
    return MethodSpec("panet", {"backbone": "vit_micro14", **options}, {"backbone": str(micro_weights)}).build()


def textured_image(height, width, seed=0):
    """Grey, smoothly textured background (no defect)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = 120 + 20 * np.sin(xs / 9.0) * np.cos(ys / 13.0)
    image = base[..., None] + rng.normal(0, 4, (height, width, 3))
    return image.clip(0, 255).astype(np.uint8)


def with_defect(image, top, left, size, colour=(230, 30, 30)):
    image = image.copy()
    mask = np.zeros(image.shape[:2], bool)
    mask[top : top + size, left : left + size] = True
    image[mask] = colour
    return image, mask


@pytest.mark.parametrize("resolution", ["native", "resize"])
def test_score_map_shape_and_range_at_odd_native_size(micro_weights, resolution):
    image, mask = with_defect(textured_image(600, 1030), 280, 500, 40)
    score_map = build(micro_weights, resolution=resolution).predict([image], [mask], image)
    assert score_map.shape == (600, 1030)
    assert score_map.dtype == np.float32
    assert 0.0 <= score_map.min() and score_map.max() <= 1.0


@pytest.mark.parametrize("resolution", ["native", "resize"])
def test_query_equal_to_support_scores_defect_high_background_low(micro_weights, resolution):
    image, mask = with_defect(textured_image(600, 1030), 280, 500, 56)
    score_map = build(micro_weights, resolution=resolution).predict([image], [mask], image)
    inner = np.zeros_like(mask)
    inner[294:322, 514:542] = True  # the defect minus one token of border
    far = np.ones_like(mask)
    far[220:400, 440:620] = False
    assert score_map[inner].mean() > 0.9
    assert np.quantile(score_map[far], 0.99) < 0.1
    assert ((score_map > 0.5) & far).sum() == 0


def test_one_pixel_defect_keeps_a_fractional_token_weight(micro_weights):
    method = build(micro_weights)
    image = textured_image(100, 130)
    mask = np.zeros((100, 130), bool)
    mask[50, 60] = True
    fractions = method.backbone.mask_fractions(method.backbone.extract(image), mask)
    assert fractions.shape == (1, 1, 8, 10)  # 100x130 padded to 112x140
    assert fractions.sum().item() == pytest.approx(1 / 196)
    assert fractions[0, 0, 50 // 14, 60 // 14].item() == pytest.approx(1 / 196)
    p_fg, p_bg = method.prototypes([image], [mask])
    assert p_fg.norm() > 0
    assert not torch.allclose(p_fg, p_bg)
    assert method.predict([image], [mask], image).max() > 0


def test_resize_policy_mask_is_area_weighted(micro_weights):
    method = build(micro_weights, resolution="resize")
    image = textured_image(1036, 700)  # scale 0.5: a 1-pixel defect becomes a quarter pixel
    mask = np.zeros((1036, 700), bool)
    mask[500, 300] = True
    fractions = method.backbone.mask_fractions(method.backbone.extract(image), mask)
    assert fractions.shape == (1, 1, 37, 37)
    assert fractions.sum().item() * 196 == pytest.approx(0.25, rel=0.05)


def test_k_shot_prototype_is_the_mean_of_per_shot_prototypes(micro_weights):
    method = build(micro_weights)
    first, mask_a = with_defect(textured_image(140, 140, seed=1), 20, 20, 28)
    second, mask_b = with_defect(textured_image(140, 140, seed=2), 70, 56, 28, colour=(30, 200, 30))
    p_a, _ = method.prototypes([first], [mask_a])
    p_b, _ = method.prototypes([second], [mask_b])
    p_both, _ = method.prototypes([first, second], [mask_a, mask_b])
    torch.testing.assert_close(p_both, (p_a + p_b) / 2)


def test_all_empty_support_masks_give_zeros(micro_weights):
    image = textured_image(200, 300)
    empty = np.zeros((200, 300), bool)
    score_map = build(micro_weights).predict([image, image], [empty, empty], image)
    assert score_map.shape == (200, 300) and not score_map.any()


def test_weights_of_another_architecture_are_a_one_line_error(micro_weights):
    with pytest.raises(MethodError, match="does not match backbone 'vit_tiny14'"):
        MethodSpec("panet", {"backbone": "vit_tiny14"}, {"backbone": str(micro_weights)}).build()


def test_layer_merge_mean_and_weights_through_method_spec(micro_weights):
    method = build(micro_weights, layer_merge="mean", layers="9 10")
    assert method.config.layers == (9, 10)
    image, mask = with_defect(textured_image(150, 200), 50, 50, 28)
    assert method.predict([image], [mask], image).shape == (150, 200)
