"""Matching baseline: hand-made features for the score and the mutual filter, then a tiny ViT end to end."""
import numpy as np
import pytest
import torch

from methods.base import MethodSpec
from methods.match import defect_tokens, match_scores
from tests.methods.test_panet import micro_weights, textured_image, with_defect  # noqa: F401 (fixture)


def unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_score_is_best_defect_minus_best_background_similarity():
    fg = unit([1, 0, 0], [0.6, 0.8, 0])
    bg = unit([0, 0, 1], [0, 1, 1])
    query = unit([1, 0, 0], [0, 0, 1], [0, 1, 0])
    got = match_scores(query, fg, bg)
    # by hand: q0: 1 - 0; q1: 0 - 1; q2: 0.8 - 1/sqrt(2)
    np.testing.assert_allclose(got.numpy(), [1.0, -1.0, 0.8 - 2**-0.5], atol=1e-6)


def test_empty_background_bank_counts_as_minus_one():
    got = match_scores(unit([1, 0]), unit([0, 1]), torch.zeros(0, 2))
    assert got.item() == pytest.approx(0 - (-1))


def test_mutual_filter_keeps_only_matches_the_defect_patch_prefers():
    fg = unit([1, 0])
    bg = unit([0, 1])
    query = unit([1, 0], [0.9, 0.1], [0.7, 0.7])
    plain = match_scores(query, fg, bg)
    mutual = match_scores(query, fg, bg, mutual_k=1)
    assert mutual[0] == pytest.approx(plain[0].item())  # q0 is fg's nearest query patch
    # q1, q2 are not: defect similarity -1
    expected = -1 - (query[1:] @ bg.T).max(1).values
    np.testing.assert_allclose(mutual[1:].numpy(), expected.numpy(), atol=1e-6)
    two = match_scores(query, fg, bg, mutual_k=2)
    assert two[1] == pytest.approx(plain[1].item()) and two[2] < plain[2]


def test_defect_tokens_fall_back_to_the_largest_fraction():
    fraction = torch.tensor([[0.0, 0.1, 0.3], [0.3, 0.7, 0.0]])
    assert defect_tokens(fraction, 0.5).tolist() == [[False, False, False], [False, True, False]]
    small = torch.tensor([[0.0, 0.1, 0.3], [0.3, 0.2, 0.0]])
    assert defect_tokens(small, 0.5).tolist() == [[False, False, True], [True, False, False]]
    assert not defect_tokens(torch.zeros(2, 2), 0.5).any()


def build(micro_weights, **options):
    return MethodSpec("match", {"backbone": "vit_micro14", **options}, {"backbone": str(micro_weights)}).build()


@pytest.mark.parametrize("mutual_k", [0, 50])
def test_query_equal_to_support_finds_the_defect(micro_weights, mutual_k):
    image, mask = with_defect(textured_image(300, 530), 120, 250, 56)
    score_map = build(micro_weights, mutual_k=mutual_k).predict([image], [mask], image)
    assert score_map.shape == (300, 530) and score_map.dtype == np.float32
    inner = np.zeros_like(mask)
    inner[134:162, 264:292] = True
    far = np.ones_like(mask)
    far[80:220, 210:350] = False
    assert score_map[inner].mean() > 0.9
    assert (score_map[far] > 0.5).mean() < 0.01


def test_fad_supports_give_zeros(micro_weights):
    image = textured_image(150, 200)
    empty = np.zeros((150, 200), bool)
    assert not build(micro_weights).predict([image], [empty], image).any()
