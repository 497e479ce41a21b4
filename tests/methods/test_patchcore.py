"""Few-shot PatchCore on a tiny random ViT (vit_micro14): shapes, anomaly map, deployable threshold."""
import numpy as np
import pytest
import torch

from methods.base import MethodSpec, Prediction
from methods.patchcore import _nearest_distance, gaussian_blur, greedy_coreset, pairs_within
from tests.methods.test_panet import micro_weights, textured_image, with_defect  # noqa: F401 (fixture)


def build(micro_weights, **options):
    return MethodSpec("patchcore", {"backbone": "vit_micro14", **options}, {"backbone": str(micro_weights)}).build()


@pytest.mark.parametrize("resolution", ["native", "resize"])
def test_score_map_shape_range_and_threshold(micro_weights, resolution):
    image, mask = with_defect(textured_image(600, 1030), 280, 500, 40)
    prediction = build(micro_weights, resolution=resolution).predict([image], [mask], image)
    assert isinstance(prediction, Prediction)
    assert prediction.score_map.shape == (600, 1030)
    assert prediction.score_map.dtype == np.float32
    assert 0.0 <= prediction.score_map.min() and prediction.score_map.max() <= 1.0
    assert np.isfinite(prediction.threshold) and 0.0 <= prediction.threshold <= 1.0


@pytest.mark.parametrize("resolution", ["native", "resize"])
def test_query_equal_to_support_is_normal_except_a_pasted_patch(micro_weights, resolution):
    support, mask = with_defect(textured_image(600, 1030), 100, 100, 42)
    query, pasted = with_defect(support, 420, 700, 56, colour=(20, 40, 220))  # not in the bank
    # the whole bank (no coreset, no margin), so every normal query token has its exact copy in it
    prediction = build(micro_weights, resolution=resolution, coreset_ratio=1.0, bank_margin=0).predict([support], [mask], query)
    score_map = prediction.score_map
    far = np.ones_like(mask)
    far[40:200, 40:200] = False  # the support's own defect (excluded from the bank)
    far[360:540, 640:820] = False  # the pasted patch and its blur
    assert np.quantile(score_map[far], 0.99) < 0.02
    assert score_map[pasted].mean() > 0.1
    # an identical copy scores ~0, but the threshold is fitted on unseen normal patches
    assert (score_map[pasted] > prediction.threshold).mean() > 0.9
    assert (score_map[far] > prediction.threshold).mean() < 0.01


def test_threshold_uses_support_data_only(micro_weights):
    method = build(micro_weights)
    support_a, mask_a = with_defect(textured_image(300, 400, seed=1), 40, 40, 28)
    support_b, mask_b = with_defect(textured_image(300, 400, seed=2), 200, 300, 28)
    queries = [textured_image(300, 400, seed=3), with_defect(textured_image(300, 400, seed=4), 100, 100, 40)[0]]
    for supports, masks in (([support_a], [mask_a]), ([support_a, support_b], [mask_a, mask_b])):
        thresholds = {method.predict(supports, masks, query).threshold for query in queries}
        assert len(thresholds) == 1
        assert np.isfinite(thresholds.pop())


def test_normal_supports_use_every_token(micro_weights):
    method = build(micro_weights)
    normal = [textured_image(200, 280, seed=s) for s in (5, 6)]
    empty = [np.zeros((200, 280), bool)] * 2
    supports = [method._support(image, mask) for image, mask in zip(normal, empty)]
    assert all(s["normal"].all() for s in supports)
    prediction = method.predict(normal, empty, textured_image(200, 280, seed=7))
    assert np.isfinite(prediction.threshold)
    assert (prediction.score_map > prediction.threshold).mean() < 0.05


def test_defect_tokens_are_kept_out_of_the_bank(micro_weights):
    method = build(micro_weights, bank_margin=0)
    image, mask = with_defect(textured_image(140, 140), 60, 60, 1)  # one pixel
    support = method._support(image, mask)
    assert (~support["normal"]).sum() == 1


def test_coreset_weights_and_blur(micro_weights):
    features = torch.nn.functional.normalize(torch.randn(300, 200), dim=1)
    chosen = greedy_coreset(features, 30)
    assert len(set(chosen.tolist())) == 30
    constant = np.full((50, 70), 0.3, np.float32)
    np.testing.assert_allclose(gaussian_blur(constant, 4.0), constant, atol=1e-6)
    impulse = np.zeros((41, 41), np.float32)
    impulse[20, 20] = 1
    blurred = gaussian_blur(impulse, 4.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5) and blurred.argmax() == 20 * 41 + 20
    image, mask = with_defect(textured_image(200, 300), 50, 50, 28)
    prediction = build(micro_weights, coreset_ratio=0.25).predict([image], [mask], image)
    assert prediction.score_map.shape == (200, 300)


def test_pairs_within_and_exclusion_match_a_full_gap_matrix():
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(300, 2, generator=generator) * 200  # [N, 2] pixel positions
    bank_centres = torch.cat([centres[::3], torch.rand(50, 2, generator=generator) * 200])  # [M, 2]
    gap = (centres[:, None] - bank_centres[None]).abs().amax(-1)  # [N, M], the brute-force way
    rows, cols = pairs_within(centres, bank_centres, 12.0)
    assert sorted(zip(rows.tolist(), cols.tolist())) == sorted(map(tuple, (gap < 12.0).nonzero().tolist()))
    query = torch.nn.functional.normalize(torch.randn(300, 16, generator=generator), dim=1)
    bank = torch.cat([query[::3], torch.nn.functional.normalize(torch.randn(50, 16, generator=generator), dim=1)])
    expected = torch.cdist(query, bank).masked_fill(gap < 12.0, float("inf")).min(dim=1).values
    got = _nearest_distance(query, bank, centres=centres, bank_centres=bank_centres, reach=12.0)
    torch.testing.assert_close(got, expected)
    assert torch.isfinite(got).all() and (got > 0).all()  # each row's own copy in the bank is excluded
    raw_query, raw_bank = 3 * query, 3 * bank  # not unit length: the cdist path
    exact = ((raw_query[:, None].double() - raw_bank[None].double()) ** 2).sum(-1).sqrt().min(dim=1).values
    # torch.cdist's matmul form leaves ~1e-3 at zero distance (the rows copied into the bank)
    torch.testing.assert_close(_nearest_distance(raw_query, raw_bank).double(), exact, atol=5e-3, rtol=1e-5)
    torch.testing.assert_close(_nearest_distance(query, bank).double(), exact / 3, atol=2e-3, rtol=1e-5)


def test_threshold_is_fitted_once_per_support_set(micro_weights):
    method = build(micro_weights)
    support, mask = with_defect(textured_image(200, 280, seed=1), 40, 40, 20)
    calls = []
    fit = method.fit_threshold
    method.fit_threshold = lambda supports: calls.append(1) or fit(supports)
    first = method.predict([support], [mask], textured_image(200, 280, seed=2))
    second = method.predict([support], [mask], textured_image(200, 280, seed=3))
    assert first.threshold == second.threshold and len(calls) == 1
    moved = np.roll(mask, 100, axis=1)
    method.predict([support], [moved], textured_image(200, 280, seed=2))  # another mask: another set
    assert len(calls) == 2


@pytest.mark.parametrize("margin, left_out", [(0, 1), (1, 9), (2, 25)])
def test_bank_margin_leaves_out_the_tokens_around_a_defect(micro_weights, margin, left_out):
    method = build(micro_weights, bank_margin=margin, coreset_ratio=1.0)
    image, mask = with_defect(textured_image(140, 140), 60, 60, 1)  # one pixel, in token (4, 4) of 10 x 10
    support = method._support(image, mask)
    assert (~support["normal"]).sum() == left_out
    assert len(support["bank"]) == 100 - left_out


def test_coreset_bank_is_cached_per_support_and_subsampled(micro_weights):
    method = build(micro_weights, coreset_ratio=0.25, bank_margin=0)
    image, mask = with_defect(textured_image(140, 140), 60, 60, 1)
    first = method._support(image, mask)
    assert len(first["bank"]) == 25  # ceil(0.25 * 99)
    assert method._support(image, mask)["bank"] is first["bank"]  # the greedy selection ran once
