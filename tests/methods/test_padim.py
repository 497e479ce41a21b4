"""Few-shot PaDiM on a tiny random ViT (vit_micro14): Ledoit-Wolf against a numpy recomputation,
Mahalanobis, pasted-patch detection, deployable threshold from support data only."""
import numpy as np
import pytest
import torch

from methods.base import MethodError, MethodSpec, Prediction
from methods.padim import gaussian, ledoit_wolf, mahalanobis
from tests.methods.test_panet import micro_weights, textured_image, with_defect  # noqa: F401 (fixture)


def with_pattern(image, top, left, size):
    """A high-contrast checkerboard square (a uniform square is near-normal for random ViT features)."""
    image, mask = image.copy(), np.zeros(image.shape[:2], bool)
    mask[top : top + size, left : left + size] = True
    ys, xs = np.mgrid[0:size, 0:size]
    odd = ((ys // 3 + xs // 3) % 2)[..., None] == 1
    image[top : top + size, left : left + size] = np.where(odd, (250, 250, 40), (10, 10, 200))
    return image, mask


def build(micro_weights, **options):
    return MethodSpec("padim", {"backbone": "vit_micro14", **options}, {"backbone": str(micro_weights)}).build()


def ledoit_wolf_reference(x):
    """Ledoit & Wolf (2004), Lemma 3.2-3.4, written out with explicit per-sample outer products."""
    n, p = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    m = np.trace(s) / p
    d2 = np.sum((s - m * np.eye(p)) ** 2) / p
    b2_bar = sum(np.sum((np.outer(row, row) - s) ** 2) / p for row in xc) / n**2
    b2 = min(b2_bar, d2)
    return b2 / d2 * m * np.eye(p) + (1 - b2 / d2) * s, b2 / d2


@pytest.mark.parametrize("n, p", [(5, 12), (40, 6), (300, 3)])
def test_ledoit_wolf_matches_the_formula_written_out(n, p):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 3, size=p)
    expected, expected_shrinkage = ledoit_wolf_reference(x)
    cov, shrinkage = ledoit_wolf(torch.from_numpy(x))
    np.testing.assert_allclose(cov.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert shrinkage == pytest.approx(expected_shrinkage, rel=1e-10)
    assert np.linalg.eigvalsh(cov.numpy()).min() > 0  # well-conditioned even with n < p


def test_shrinkage_small_for_many_samples_large_for_few():
    rng = np.random.default_rng(0)
    scales = np.linspace(0.5, 3, 8)
    _, many = ledoit_wolf(torch.from_numpy(rng.normal(size=(5000, 8)) * scales))
    _, few = ledoit_wolf(torch.from_numpy(rng.normal(size=(4, 8)) * scales))
    assert many < 0.05 < few


def test_mahalanobis_per_cell_against_numpy():
    rng = np.random.default_rng(1)
    samples = [torch.from_numpy(rng.normal(size=(50, 4)) + offset) for offset in (0.0, 5.0)]
    gaussians = [gaussian(s) for s in samples]
    features = torch.from_numpy(rng.normal(size=(1, 2, 3, 4)))
    cell = torch.tensor([[[0, 1, 0], [1, 1, 0]]])
    got = mahalanobis(features, cell, gaussians)
    for (t, y, x), index in np.ndenumerate(cell.numpy()):
        mean, precision = (v.numpy() for v in gaussians[index])
        diff = features[t, y, x].numpy() - mean
        assert got[t, y, x].item() == pytest.approx(np.sqrt(diff @ precision @ diff), rel=1e-9)


@pytest.mark.parametrize("resolution", ["native", "resize"])
def test_pasted_patch_scores_above_threshold_and_background_below(micro_weights, resolution):
    support, mask = with_defect(textured_image(300, 520), 60, 60, 42)
    query, pasted = with_pattern(support, 150, 330, 56)
    prediction = build(micro_weights, resolution=resolution).predict([support], [mask], query)
    assert isinstance(prediction, Prediction) and prediction.threshold == 0.5
    score_map = prediction.score_map
    assert score_map.shape == (300, 520) and score_map.dtype == np.float32
    assert 0 <= score_map.min() and score_map.max() < 1
    far = np.ones_like(mask)
    far[20:140, 20:140] = False
    far[110:250, 290:430] = False
    assert (score_map[pasted] > 0.5).mean() > 0.9
    assert (score_map[far] > 0.5).mean() < 0.02
    assert score_map[pasted].mean() > np.quantile(score_map[far], 0.99)


def test_cells_option_fits_a_threshold_and_ranks_the_defective_query_higher(micro_weights):
    method = build(micro_weights, cells=2)
    supports = [with_defect(textured_image(200, 260, seed=s), 40, 40, 28) for s in (1, 2)]
    images, masks = [s[0] for s in supports], [s[1] for s in supports]
    raws = []
    for query in (textured_image(200, 260, seed=3), with_pattern(textured_image(200, 260, seed=4), 90, 90, 40)[0]):
        prediction = method.predict(images, masks, query)
        raws.append(prediction.score_map)
    assert method.fit_threshold([method._support(i, m) for i, m in zip(images, masks)]) > 0
    assert raws[1].max() > raws[0].max()


def test_normal_supports_and_all_defect_support(micro_weights):
    method = build(micro_weights)
    normal = [textured_image(200, 280, seed=s) for s in (5, 6)]
    empty = [np.zeros((200, 280), bool)] * 2
    prediction = method.predict(normal, empty, textured_image(200, 280, seed=7))
    assert (prediction.score_map > prediction.threshold).mean() < 0.05
    full = np.ones((200, 280), bool)
    blank = method.predict([normal[0]], [full], normal[1])
    assert not blank.score_map.any()


def test_option_errors(micro_weights):
    with pytest.raises(MethodError, match="cells"):
        build(micro_weights, cells=0)
