import math

import numpy as np
import pandas as pd
import pytest

from harness.metrics import (
    abs_size_bin_label,
    ap_from_hist,
    auroc_from_hist,
    class_miou,
    episode_metrics,
    f1max_from_hist,
    false_alarm_stats,
    fb_iou,
    iou_sweep_from_hist,
    per_class_iou,
    pooled_hist,
    pooled_iou,
    score_histograms,
    size_bin_label,
    size_bin_labels,
)
from harness.schema import METRIC_COLUMNS


def _map(shape=(10, 10)):
    return np.zeros(shape, np.float32), np.zeros(shape, bool)


def test_returns_exactly_the_metric_columns():
    score, gt = _map()
    assert list(episode_metrics(score, 0.5, gt)) == METRIC_COLUMNS


def test_empty_gt_empty_prediction():
    score, gt = _map()
    m = episode_metrics(score, 0.5, gt)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (0, 0, 0, 100)
    assert m["iou_fg"] is None
    assert m["size_bin"] == "normal" and m["gt_area_px"] == 0 and m["gt_area_frac"] == 0.0
    assert m["gt_components"] == 0 and m["gt_comp_areas"] == [] and m["gt_comp_hit"] == []
    assert m["pred_components"] == 0 and m["fp_components"] == 0 and m["fp_comp_areas"] == []
    assert m["image_positive"] is False
    assert m["max_score"] == 0.0
    assert sum(m["score_hist_neg"]) == 100 and m["score_hist_neg"][0] == 100 and sum(m["score_hist_pos"]) == 0


def test_empty_gt_with_fp_blob():
    score, gt = _map()
    score[2:4, 2:5] = 0.9  # 6-pixel blob
    m = episode_metrics(score, 0.5, gt)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (0, 6, 0, 94)
    assert m["iou_fg"] == 0.0
    assert m["pred_components"] == 1 and m["fp_components"] == 1 and m["fp_comp_areas"] == [6]
    assert m["image_positive"] is True
    assert m["pred_area_px"] == 6
    assert m["max_score"] == pytest.approx(0.9)


def test_min_area_for_image_positive():
    score, gt = _map()
    score[2:4, 2:5] = 0.9
    assert episode_metrics(score, 0.5, gt, min_area=6)["image_positive"] is True
    assert episode_metrics(score, 0.5, gt, min_area=7)["image_positive"] is False


def test_empty_prediction_with_gt():
    score, gt = _map()
    gt[5:7, 5:7] = True
    m = episode_metrics(score, 0.5, gt)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (0, 0, 4, 96)
    assert m["iou_fg"] == 0.0
    assert m["gt_area_px"] == 4 and m["gt_area_frac"] == 0.04 and m["size_bin"] == "1-5%"
    assert m["gt_comp_areas"] == [4] and m["gt_comp_hit"] == [False]
    assert m["image_positive"] is False


@pytest.mark.parametrize("hit", [True, False])
def test_one_pixel_defect(hit):
    score, gt = np.zeros((100, 100), np.float32), np.zeros((100, 100), bool)
    gt[50, 50] = True
    if hit:
        score[50, 50] = 0.8
    else:
        score[50, 52] = 0.8
    m = episode_metrics(score, 0.5, gt)
    assert m["gt_area_frac"] == 1e-4 and m["size_bin"] == "<0.1%"
    assert m["gt_comp_areas"] == [1] and m["gt_comp_hit"] == [hit]
    if hit:
        assert (m["tp"], m["fp"], m["fn"], m["iou_fg"]) == (1, 0, 0, 1.0)
        assert m["fp_components"] == 0
    else:
        assert (m["tp"], m["fp"], m["fn"], m["iou_fg"]) == (0, 1, 1, 0.0)
        assert m["fp_components"] == 1 and m["fp_comp_areas"] == [1]
    assert m["score_hist_pos"][int(0.8 * 64) if hit else 0] == 1


def test_several_components_some_hit_one_fp_blob():
    score, gt = np.zeros((20, 20), np.float32), np.zeros((20, 20), bool)
    gt[1:3, 1:3] = True  # A: 4 px, hit by one pixel
    gt[10:13, 10:13] = True  # B: 9 px, missed
    gt[5, 15] = gt[6, 16] = True  # C: 2 px, diagonal -> one component under 8-connectivity
    score[2, 2] = 1.0  # inside A
    score[6, 16] = 0.7  # inside C
    score[6, 17] = 0.7  # same predicted component as the C hit -> touches GT, not an FP blob
    score[17:19, 1:4] = 0.6  # FP blob of 6 px
    m = episode_metrics(score, 0.5, gt)
    assert m["gt_components"] == 3
    assert sorted(zip(m["gt_comp_areas"], m["gt_comp_hit"])) == [(2, True), (4, True), (9, False)]
    assert m["pred_components"] == 3 and m["fp_components"] == 1 and m["fp_comp_areas"] == [6]
    assert (m["tp"], m["fp"], m["fn"]) == (2, 7, 13)
    assert m["tn"] == 400 - 2 - 7 - 13
    assert m["iou_fg"] == pytest.approx(2 / 22)
    assert m["max_score"] == 1.0
    assert m["score_hist_pos"][63] == 1 and sum(m["score_hist_pos"]) == 15
    assert sum(m["score_hist_neg"]) == 385


def test_threshold_is_strict():
    score, gt = _map((1, 3))
    score[0] = [0.5, 0.5000001, 0.49]
    m = episode_metrics(score, 0.5, gt)
    assert m["pred_area_px"] == 1 and m["fp"] == 1


def test_tile_overlap_half_values_are_negative_at_half():
    # Stitched map: two tiles disagree on an overlap column -> averaged 0.5 there.
    score, gt = np.zeros((4, 6), np.float32), np.zeros((4, 6), bool)
    score[:, 2:4] = 1.0
    score[:, 3] = 0.5  # overlap of a tile saying 1 and a tile saying 0
    gt[:, 2:4] = True
    m = episode_metrics(score, 0.5, gt)
    assert (m["tp"], m["fp"], m["fn"]) == (4, 0, 4)
    assert m["iou_fg"] == 0.5
    assert m["score_hist_pos"][32] == 4 and m["score_hist_pos"][63] == 4


def test_histogram_bin_edges():
    scores = np.array([[0.0, 1.0, 0.5, 1 / 64, np.nextafter(np.float32(1 / 64), 0), 63 / 64]], np.float32)
    pos, neg = score_histograms(scores, np.zeros(scores.shape, bool), 64)
    assert pos.sum() == 0 and neg.sum() == 6
    assert neg[0] == 2  # 0.0 and just below 1/64
    assert neg[1] == 1  # exactly 1/64 -> upper bin
    assert neg[32] == 1  # 0.5
    assert neg[63] == 2  # 63/64 and 1.0 (last bin closed)
    pos, _ = score_histograms(np.array([[0.25, 0.75]], np.float32), np.ones((1, 2), bool), 4)
    assert pos.tolist() == [0, 1, 0, 1]


def test_histogram_chunks_match_whole(monkeypatch):
    import harness.metrics as metrics

    rng = np.random.default_rng(0)
    score = rng.random((50, 7), dtype=np.float32)
    gt = rng.random((50, 7)) > 0.7
    whole = score_histograms(score, gt, 16)
    monkeypatch.setattr(metrics, "_HIST_CHUNK_PX", 20)
    chunked = score_histograms(score, gt, 16)
    assert np.array_equal(whole[0], chunked[0]) and np.array_equal(whole[1], chunked[1])
    assert whole[0].sum() == gt.sum()


def test_size_bins():
    assert size_bin_labels() == ["<0.1%", "0.1-0.3%", "0.3-1%", "1-5%", ">=5%"]
    assert size_bin_label(0.0009) == "<0.1%"
    assert size_bin_label(0.001) == "0.1-0.3%"  # exact edge -> upper bin
    assert size_bin_label(0.003) == "0.3-1%"
    assert size_bin_label(0.01) == "1-5%"
    assert size_bin_label(0.05) == ">=5%"
    assert size_bin_label(0.2, (0.01, 0.1)) == ">=10%"
    assert abs_size_bin_label(63) == "<8²"
    assert abs_size_bin_label(64) == "8²-16²"
    assert abs_size_bin_label(1024) == "32²-96²"  # COCO would put 1024 in both small and medium
    assert abs_size_bin_label(9216) == ">=96²"


def test_pooled_iou_and_class_miou_by_hand():
    df = pd.DataFrame(
        {
            "class_id": ["a/x", "a/x", "b/y", "b/y"],
            "query_is_normal": [False, False, False, True],
            "tp": [10, 0, 5, 0],
            "fp": [5, 5, 0, 100],
            "fn": [0, 10, 15, 0],
            "tn": [85, 85, 80, 0],
        }
    )
    # a/x: 10 / (10 + 10 + 10) = 1/3 ; b/y (normal row ignored): 5 / (5 + 0 + 15) = 1/4
    assert per_class_iou(df) == {"a/x": pytest.approx(1 / 3), "b/y": pytest.approx(0.25)}
    assert class_miou(df) == pytest.approx((1 / 3 + 1 / 4) / 2)
    defective = df[~df.query_is_normal]
    assert pooled_iou(defective.tp, defective.fp, defective.fn) == pytest.approx(15 / 50)
    # bg IoU = 250 / (250 + 10 + 25)
    assert fb_iou(defective.tp, defective.fp, defective.fn, defective.tn) == pytest.approx((15 / 50 + 250 / 285) / 2)
    assert math.isnan(pooled_iou([0], [0], [0]))


def test_false_alarm_stats():
    df = pd.DataFrame(
        {"image_positive": [True, False, False, True], "fp": [10, 0, 0, 30], "tn": [90, 100, 100, 70],
         "fp_components": [1, 0, 0, 3]}
    )
    assert false_alarm_stats(df) == {"false_alarm_rate": 0.5, "fp_pixel_rate": 0.1, "fp_blobs_per_image": 1.0}
    assert all(math.isnan(v) for v in false_alarm_stats(df.iloc[:0]).values())


def test_auroc_ap_perfect_and_identical():
    pos, neg = np.zeros(64, np.int64), np.zeros(64, np.int64)
    pos[60], neg[3] = 10, 30
    assert auroc_from_hist(pos, neg) == 1.0
    assert ap_from_hist(pos, neg) == 1.0
    assert f1max_from_hist(pos, neg) == 1.0
    same = np.arange(64)
    assert auroc_from_hist(same, same) == pytest.approx(0.5)
    assert ap_from_hist(same, same) == pytest.approx(0.5)  # = prevalence
    assert auroc_from_hist(neg, pos) == 0.0


def test_ap_by_hand():
    # bins (high->low): bin 3 has 1 pos 1 neg, bin 1 has 1 pos. P=2.
    pos, neg = np.array([0, 1, 0, 1]), np.array([0, 0, 0, 1])
    # edge 3: R=1/2, P=1/2 ; edge 1: R=1, P=2/3  -> AP = 1/4 + 1/3
    assert ap_from_hist(pos, neg) == pytest.approx(1 / 4 + 1 / 3)
    # AUROC: pos in bin 3 ties neg (0.5), pos in bin 1 below neg (0) -> 0.25
    assert auroc_from_hist(pos, neg) == pytest.approx(0.25)
    # F1 at edge 3: 2/(2+1+1)=0.5 ; edge 1: 4/(4+1+0)=0.8
    assert f1max_from_hist(pos, neg) == pytest.approx(0.8)


def test_histograms_are_summed_from_rows():
    rows = pd.Series([np.array([1, 0, 0, 0]), np.array([0, 0, 0, 2])])
    assert pooled_hist(rows).tolist() == [1, 0, 0, 2]
    assert pooled_hist([[1, 2], [3, 4]]).tolist() == [4, 6]
    assert pooled_hist(np.array([1, 2])).tolist() == [1, 2]


def test_iou_sweep():
    pos, neg = np.array([0, 1, 0, 3]), np.array([4, 0, 2, 0])
    thresholds, iou = iou_sweep_from_hist(pos, neg)
    assert thresholds.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # edge 0: 4/(4+6); edge 1/4: 4/(4+2); edge 1/2: 3/(3+2+1); edge 3/4: 3/4; edge 1: 0/4
    assert iou.tolist() == pytest.approx([0.4, 4 / 6, 0.5, 0.75, 0.0])
    assert thresholds[np.nanargmax(iou)] == 0.75
    _, empty = iou_sweep_from_hist([0, 0], [5, 0])
    assert empty[0] == 0.0 and math.isnan(empty[-1])


def test_histograms_agree_with_direct_metrics():
    rng = np.random.default_rng(1)
    score = rng.random((64, 64), dtype=np.float32)
    gt = score + rng.normal(0, 0.3, score.shape) > 0.8
    m = episode_metrics(score, 0.5, gt)
    thresholds, iou = iou_sweep_from_hist(m["score_hist_pos"], m["score_hist_neg"])
    # at edge 0.5 the sweep predicts score >= 0.5; no float32 score equals 0.5 exactly here
    assert iou[32] == pytest.approx(m["iou_fg"])
