"""Schema-v2 metrics: component hit rules, AUPRO and image-level AUROC / AP / F1-max, each against
a plain-numpy recomputation from raw score maps (own flood fill, own threshold loop)."""
from collections import deque

import numpy as np
import pytest

from harness.metrics import (aupro, component_found, component_recall, episode_metrics, image_ap,
                             image_auroc, image_f1max, pooled_hist, pro_curve)
from harness.schema import HIST_BINS, METRIC_COLUMNS


def flood_components(mask):
    """8-connected components of a bool mask as lists of (y, x), by breadth-first search."""
    seen = np.zeros_like(mask, bool)
    components = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        components.append(pixels)
    return components


def random_episode(rng, shape=(24, 30), n_blobs=3, normal=False):
    """Scores on bin centres (binning is exact) higher inside random rectangles of GT."""
    gt = np.zeros(shape, bool)
    if not normal:
        for _ in range(n_blobs):
            y, x = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
            gt[y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
    bins = rng.integers(0, HIST_BINS, shape)
    bins = np.where(gt, np.minimum(bins + rng.integers(0, 40, shape), HIST_BINS - 1), bins // 2)
    return ((bins + 0.5) / HIST_BINS).astype(np.float32), gt


def reference_aupro(episodes, limit=0.3):
    """MVTec AD AUPRO written out: thresholds at every bin edge, PRO = mean component overlap."""
    components = [(score, pixels) for score, gt in episodes for pixels in flood_components(gt)]
    negatives = np.concatenate([score[~gt] for score, gt in episodes])
    points = []
    for t in np.arange(HIST_BINS, -1, -1) / HIST_BINS:  # nothing predicted first
        overlaps = [np.mean([score[p] >= t for p in pixels]) for score, pixels in components]
        points.append(((negatives >= t).mean() if t > 0 else 1.0, np.mean(overlaps) if t > 0 else 1.0))
    points = np.array(points)
    fpr, pro = points[:, 0], points[:, 1]
    keep = fpr <= limit
    crossing = np.argmax(fpr > limit)
    x = np.append(fpr[keep], limit)
    y = np.append(pro[keep], pro[crossing - 1] + (pro[crossing] - pro[crossing - 1])
                  * (limit - fpr[crossing - 1]) / (fpr[crossing] - fpr[crossing - 1]))
    return np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / limit


def test_new_columns_in_order_and_by_hand():
    score = np.zeros((6, 8), np.float32)
    gt = np.zeros((6, 8), bool)
    gt[0:2, 0:2] = True  # component A, 4 px
    gt[4:6, 4:8] = True  # component B, 8 px
    score[0, 0:2] = 0.9  # 2 of A predicted (50 %)
    score[4, 4:7] = 0.8  # 3 of B predicted (37.5 %)
    m = episode_metrics(score, 0.5, gt)
    assert list(m) == METRIC_COLUMNS
    assert m["gt_comp_areas"] == [4, 8] and m["gt_comp_pred_px"] == [2, 3]
    assert m["gt_comp_hit"] == [True, True]
    assert component_found(m["gt_comp_areas"], m["gt_comp_pred_px"], "half").tolist() == [True, False]
    assert component_recall([4, 8], [2, 3], "touch") == 1.0 and component_recall([4, 8], [2, 3], "half") == 0.5
    assert np.isnan(component_recall([], [], "half"))
    # bin of 0.9 is 57, of 0.8 is 51, of 0 is 0: overlap fractions above each edge
    expected = np.zeros(HIST_BINS)
    expected[: 1] += 1 + 1
    expected[1:52] += 2 / 4 + 3 / 8
    expected[52:58] += 2 / 4
    np.testing.assert_allclose(m["pro_overlap_sum"], expected)
    assert episode_metrics(score, 0.5, np.zeros_like(gt))["pro_overlap_sum"] == [0.0] * HIST_BINS
    with pytest.raises(ValueError, match="unknown"):
        component_found([1], [1], "any")


def test_aupro_by_hand():
    # one component of 4 px scored 0.9, 0.9, 0.1, 0.1; 10 negative pixels at 0.5
    score = np.array([[0.9, 0.9, 0.1, 0.1] + [0.5] * 10], np.float32)
    gt = np.array([[True] * 4 + [False] * 10])
    m = episode_metrics(score, 0.5, gt)
    # PRO 0.5 from FPR 0 until FPR jumps to 1: area over [0, 0.3] = 0.15, / 0.3 = 0.5
    assert aupro(m["pro_overlap_sum"], 1, m["score_hist_neg"]) == pytest.approx(0.5)
    assert aupro(m["pro_overlap_sum"], 1, m["score_hist_neg"], fpr_limit=1.0) == pytest.approx(0.5)
    assert np.isnan(aupro(m["pro_overlap_sum"], 0, m["score_hist_neg"]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_pooled_over_episodes_equals_recomputation_from_maps(seed):
    rng = np.random.default_rng(seed)
    episodes = [random_episode(rng, normal=(i == 3)) for i in range(5)]
    rows = [episode_metrics(score, 0.5, gt) for score, gt in episodes]
    overlap_sum = np.sum([r["pro_overlap_sum"] for r in rows], axis=0)
    n_components = sum(r["gt_components"] for r in rows)
    assert n_components == sum(len(flood_components(gt)) for _, gt in episodes)
    neg = pooled_hist([r["score_hist_neg"] for r in rows])
    assert aupro(overlap_sum, n_components, neg) == pytest.approx(reference_aupro(episodes), abs=1e-12)
    fpr, pro = pro_curve(overlap_sum, n_components, neg)
    assert fpr[0] == 0 and pro[0] == 0 and fpr[-1] == pytest.approx(1) and pro[-1] == pytest.approx(1)
    for rule, minimum in (("touch", 1), ("half", None)):
        expected = []
        for score, gt in episodes:
            for pixels in flood_components(gt):
                predicted = sum(score[p] > 0.5 for p in pixels)
                expected.append(predicted >= (minimum or len(pixels) / 2))
        areas = np.concatenate([r["gt_comp_areas"] for r in rows])
        pred_px = np.concatenate([r["gt_comp_pred_px"] for r in rows])
        assert component_recall(areas, pred_px, rule) == pytest.approx(np.mean(expected))


def brute_force_image_metrics(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    auroc = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    ap, f1, last_recall = 0.0, 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        precision, recall = tp / predicted.sum(), tp / labels.sum()
        ap += (recall - last_recall) * precision
        last_recall = recall
        f1 = max(f1, 2 * precision * recall / (precision + recall) if tp else 0.0)
    return auroc, ap, f1


@pytest.mark.parametrize("seed", range(4))
def test_image_metrics_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(25) < 0.6
    scores = np.round(rng.random(25) + 0.3 * labels, 1)  # rounded: ties across classes
    auroc, ap, f1 = brute_force_image_metrics(scores, labels)
    assert image_auroc(scores, labels) == pytest.approx(auroc)
    assert image_ap(scores, labels) == pytest.approx(ap)
    assert image_f1max(scores, labels) == pytest.approx(f1)


def test_image_metrics_by_hand():
    scores = [0.9, 0.8, 0.8, 0.3]
    labels = [True, False, True, False]
    assert image_auroc(scores, labels) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    # thresholds 0.9: P 1, R 0.5; 0.8: P 2/3, R 1 -> AP = 0.5 * 1 + 0.5 * 2/3
    assert image_ap(scores, labels) == pytest.approx(0.5 + 1 / 3)
    assert image_f1max(scores, labels) == pytest.approx(0.8)
    assert np.isnan(image_auroc([0.1], [True])) and np.isnan(image_ap([0.1], [False]))
