"""Per-episode sufficient statistics and the pooled metrics of the report.

:func:`episode_metrics` turns one score map + one GT mask into the metric columns of an episode
row (``harness.schema.METRIC_COLUMNS``). Every reported number is then a pure aggregate of those
columns: pooled IoU per class (SOFS §5 / HSNet), FB-IoU, size-stratified numbers, false alarms on
normal queries, and pixel AUROC / AP / F1-max / IoU sweeps from the fixed-bin score histograms
(exact at bin resolution).

Conventions:

* prediction at a threshold ``t`` is ``score_map > t`` (a score equal to the threshold is negative);
* histogram bin ``i`` of ``B`` holds scores in ``[i/B, (i+1)/B)``; a score of exactly 1.0 goes to
  the last bin; scores are clipped to [0, 1] first;
* the histogram sweeps put thresholds at bin edges: at edge ``e = i/B`` the pixels of bins
  ``>= i`` (scores ``>= e``) are predicted positive;
* size bins are half-open intervals ``[lo, hi)``: a value exactly on an edge goes to the upper bin;
* connected components use 8-connectivity.

Aggregates return ``nan`` when their denominator is empty. Callers choose the rows (e.g. only
``status == "ok"``, only defective or only normal queries); the functions pool what they get.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Sequence

import numpy as np
from skimage.measure import label

from harness.constants import ABS_SIZE_BIN_EDGES_PX, NORMAL_SIZE_BIN, SIZE_BIN_EDGES, size_bin_labels
from harness.schema import HIST_BINS

_HIST_CHUNK_PX = 1 << 20  # histogram pass in row chunks of about this many pixels (bounded memory)


# ------------------------------------------------------------------------------------------------
# size bins


def size_bin_label(area_frac: float, edges: Sequence[float] = SIZE_BIN_EDGES) -> str:
    """Label of the half-open bin ``[edges[i-1], edges[i])`` holding ``area_frac`` (a fraction, not %).

    With the default edges: ``<0.1%``, ``0.1-0.3%``, ``0.3-1%``, ``1-5%``, ``>=5%``. A value exactly
    on an edge goes to the upper bin (0.01 -> ``1-5%``).
    """
    return size_bin_labels(edges)[bisect.bisect_right(list(edges), area_frac)]


def _format_px(edge: int) -> str:
    root = math.isqrt(edge)
    return f"{root}²" if root * root == edge else str(edge)


def abs_size_bin_labels(edges_px: Sequence[int] = ABS_SIZE_BIN_EDGES_PX) -> list[str]:
    """Labels of the absolute-area bins, smallest first: ``<8²``, ``8²-16²``, ..., ``>=96²``."""
    names = [_format_px(edge) for edge in edges_px]
    middle = [f"{lo}-{hi}" for lo, hi in zip(names, names[1:])]
    return [f"<{names[0]}", *middle, f">={names[-1]}"]


def abs_size_bin_label(area_px: int, edges_px: Sequence[int] = ABS_SIZE_BIN_EDGES_PX) -> str:
    """Label of the half-open pixel-area bin holding ``area_px`` (AI-TOD / COCO style edges).

    Default edges 8², 16², 32², 96² px: ``<8²``, ``8²-16²``, ``16²-32²``, ``32²-96²``, ``>=96²``.
    Unlike pycocotools (closed at both ends), an area of exactly 1024 px is only in ``32²-96²``.
    """
    return abs_size_bin_labels(edges_px)[bisect.bisect_right(list(edges_px), area_px)]


# ------------------------------------------------------------------------------------------------
# per episode


def episode_metrics(
    score_map: np.ndarray,
    threshold: float,
    gt_mask: np.ndarray,
    *,
    min_area: int = 1,
    hist_bins: int = HIST_BINS,
    frac_edges: Sequence[float] = SIZE_BIN_EDGES,
) -> dict[str, Any]:
    """Sufficient statistics of one episode: the ``METRIC_COLUMNS`` of its row, as Python values.

    ``score_map`` float ``[H, W]`` in [0, 1]; ``gt_mask`` bool ``[H, W]``; ``pred = score_map > threshold``.

    * ``tp = |pred & gt|``, ``fp = |pred & ~gt|``, ``fn = |~pred & gt|``, ``tn = |~pred & ~gt|``;
    * ``gt_area_frac = |gt| / (H W)``; ``size_bin`` = :func:`size_bin_label` of it, ``"normal"`` if
      ``|gt| = 0``;
    * ``gt_comp_areas[j]`` = pixels of GT component j (8-connected, in ``skimage.measure.label``
      order); ``gt_comp_hit[j]`` = at least one predicted pixel inside component j ("touch" rule);
      ``gt_comp_pred_px[j]`` = predicted pixels inside component j (the ">= 50 %" rule and any other
      overlap rule are derived from it); ``gt_comp_max_score[j]`` = the highest score inside
      component j, so "component j is found at threshold t" (any pixel above t) is
      ``gt_comp_max_score[j] > t`` for every t (``gt_comp_hit`` is that at the stored threshold);
    * ``pro_overlap_sum[i]`` = sum over GT components of the fraction of the component's pixels
      whose score bin is ``>= i`` (:func:`pro_overlap_sum`; AUPRO's sufficient statistic);
    * ``pred_components`` = predicted components; ``fp_components`` / ``fp_comp_areas`` = those
      with no GT pixel (false-positive blobs);
    * ``iou_fg = tp / (tp + fp + fn)``, ``None`` when the denominator is 0;
    * ``image_positive`` = some predicted component has ``area >= min_area``;
    * ``score_hist_pos`` / ``score_hist_neg`` = counts of GT-positive / GT-negative pixels per
      score bin (``hist_bins`` bins over [0, 1], bin i = ``[i/B, (i+1)/B)``, 1.0 in the last bin).
    """
    if score_map.ndim != 2 or score_map.shape != gt_mask.shape:
        raise ValueError(f"score_map {score_map.shape} and gt_mask {gt_mask.shape} must be the same [H, W]")
    gt = gt_mask.astype(bool, copy=False)
    pred = score_map > threshold
    height, width = gt.shape
    total = height * width

    tp = int(np.count_nonzero(pred & gt))
    pred_area = int(np.count_nonzero(pred))
    gt_area = int(np.count_nonzero(gt))
    fp, fn = pred_area - tp, gt_area - tp
    tn = total - tp - fp - fn
    denominator = tp + fp + fn

    gt_areas, gt_hit_counts, gt_hists, gt_max = gt_component_stats(gt, pred, score_map, hist_bins)
    pred_areas, pred_gt_counts = _component_areas_and_overlap(pred, gt)
    is_fp_blob = pred_gt_counts == 0
    hist_pos, hist_neg = score_histograms(score_map, gt, hist_bins)

    gt_area_frac = gt_area / total if total else 0.0
    return {
        "height": int(height),
        "width": int(width),
        "gt_area_px": gt_area,
        "gt_area_frac": float(gt_area_frac),
        "size_bin": size_bin_label(gt_area_frac, frac_edges) if gt_area else NORMAL_SIZE_BIN,
        "gt_components": int(gt_areas.size),
        "gt_comp_areas": gt_areas.tolist(),
        "gt_comp_hit": (gt_hit_counts > 0).tolist(),
        "gt_comp_pred_px": gt_hit_counts.tolist(),
        "pred_area_px": pred_area,
        "pred_components": int(pred_areas.size),
        "fp_components": int(np.count_nonzero(is_fp_blob)),
        "fp_comp_areas": pred_areas[is_fp_blob].tolist(),
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "iou_fg": tp / denominator if denominator else None,
        "image_positive": bool(np.any(pred_areas >= min_area)),
        "max_score": float(score_map.max()) if total else 0.0,
        "score_hist_pos": hist_pos.tolist(),
        "score_hist_neg": hist_neg.tolist(),
        "pro_overlap_sum": pro_overlap_sum(gt_hists, gt_areas).tolist(),
        "gt_comp_max_score": gt_max.tolist(),
    }


def gt_component_stats(gt: np.ndarray, pred: np.ndarray, score_map: np.ndarray,
                       bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per 8-connected GT component: area, predicted pixels inside, score histogram, max score.

    Returns int64 ``[n]``, ``[n]``, ``[n, bins]`` (bins as :func:`score_histograms`) and float32
    ``[n]`` (scores clipped to [0, 1], as the histograms); labels only the bounding box of ``gt``,
    histogram in row chunks of bounded memory.
    """
    rows = np.flatnonzero(gt.any(axis=1))
    if rows.size == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, bins), np.int64),
                np.zeros(0, np.float32))
    cols = np.flatnonzero(gt.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    labels, count = label(gt[box], connectivity=2, return_num=True)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    overlap = np.bincount(labels[pred[box]], minlength=count + 1)[1:]
    scores = score_map[box]
    hist = np.zeros((count + 1) * bins, np.int64)
    step = max(1, _HIST_CHUNK_PX // max(scores.shape[1], 1))
    for top in range(0, scores.shape[0], step):
        chunk = np.clip(scores[top : top + step].astype(np.float64), 0.0, 1.0)
        bin_index = np.minimum((chunk * bins).astype(np.int64), bins - 1)
        hist += np.bincount((labels[top : top + step] * bins + bin_index).ravel(), minlength=(count + 1) * bins)
    inside = labels > 0
    max_score = np.full(count + 1, -np.inf, np.float32)
    np.maximum.at(max_score, labels[inside], np.clip(scores[inside], 0.0, 1.0).astype(np.float32))
    return (areas.astype(np.int64), overlap.astype(np.int64), hist.reshape(count + 1, bins)[1:],
            max_score[1:])


def _component_areas_and_overlap(mask: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Areas of the 8-connected components of ``mask`` and, per component, its pixels in ``other``.

    Labels only the bounding box of ``mask`` (small defects on 4000 x 4000 maps label a few pixels).
    Returns two int64 arrays ``[n_components]``.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cols = np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    labels, count = label(mask[box], connectivity=2, return_num=True)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    overlap = np.bincount(labels[other[box]], minlength=count + 1)[1:]
    return areas.astype(np.int64), overlap.astype(np.int64)


def score_histograms(score_map: np.ndarray, gt_mask: np.ndarray, bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Counts of GT-positive and GT-negative pixels per score bin, two int64 arrays ``[bins]``.

    Bin of a score s = ``min(floor(clip(s, 0, 1) * bins), bins - 1)``. The product is taken in
    float64, exact for float32 scores, so scores on a bin edge land in the upper bin.
    """
    counts = np.zeros(2 * bins, np.int64)
    width = max(score_map.shape[1], 1)
    step = max(1, _HIST_CHUNK_PX // width)
    for top in range(0, score_map.shape[0], step):
        scores = np.clip(score_map[top : top + step].astype(np.float64), 0.0, 1.0)
        bin_index = np.minimum((scores * bins).astype(np.int64), bins - 1)
        # code = 2 * bin + is_gt: one bincount gives both histograms
        code = 2 * bin_index + gt_mask[top : top + step]
        counts += np.bincount(code.ravel(), minlength=2 * bins)
    return counts[1::2].copy(), counts[0::2].copy()


# ------------------------------------------------------------------------------------------------
# pooled IoU


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else float("nan")


def pooled_iou(tp, fp, fn) -> float:
    """IoU pooled over episodes: ``sum(tp) / sum(tp + fp + fn)`` (nan when the sum is 0)."""
    tp_sum = np.sum(np.asarray(tp, dtype=np.int64))
    return _ratio(tp_sum, tp_sum + np.sum(np.asarray(fp, dtype=np.int64)) + np.sum(np.asarray(fn, dtype=np.int64)))


def per_class_iou(df) -> dict[str, float]:
    """IoU of each class over its defective episodes: ``ΣTP / Σ(TP + FP + FN)`` (SOFS §5, no epsilon).

    ``df`` has the row columns ``class_id, query_is_normal, tp, fp, fn``; normal queries are ignored.
    Returns ``{class_id: iou}`` sorted by class id.
    """
    defective = df[~df["query_is_normal"].astype(bool)]
    sums = defective.groupby("class_id", sort=True)[["tp", "fp", "fn"]].sum()
    return {class_id: _ratio(row.tp, row.tp + row.fp + row.fn) for class_id, row in sums.iterrows()}


def class_miou(df) -> float:
    """mIoU = unweighted mean over classes of :func:`per_class_iou` (SOFS §5, HSNet).

    A class whose union is empty (no GT and no prediction over all its episodes) has no IoU and is
    left out of the mean; nan when no class has one.
    """
    values = [iou for iou in per_class_iou(df).values() if not math.isnan(iou)]
    return float(np.mean(values)) if values else float("nan")


def fb_iou(tp, fp, fn, tn) -> float:
    """FB-IoU, pooled over all given episodes (not per class), as SOFS / HSNet:

    ``( ΣTP / Σ(TP + FP + FN)  +  ΣTN / Σ(TN + FP + FN) ) / 2``.
    """
    tp_s, fp_s, fn_s, tn_s = (np.sum(np.asarray(x, dtype=np.int64)) for x in (tp, fp, fn, tn))
    return (_ratio(tp_s, tp_s + fp_s + fn_s) + _ratio(tn_s, tn_s + fp_s + fn_s)) / 2


def false_alarm_stats(df_normal) -> dict[str, float]:
    """False positives on normal (defect-free) queries, from their rows:

    * ``false_alarm_rate`` = fraction of images with ``image_positive``;
    * ``fp_pixel_rate`` = ``ΣFP / Σ(FP + TN)`` (pooled pixels; all pixels of a normal image are negative);
    * ``fp_blobs_per_image`` = mean of ``fp_components``.
    """
    n_images = len(df_normal)
    if n_images == 0:
        nan = float("nan")
        return {"false_alarm_rate": nan, "fp_pixel_rate": nan, "fp_blobs_per_image": nan}
    fp = int(np.sum(df_normal["fp"].to_numpy(dtype=np.int64)))
    tn = int(np.sum(df_normal["tn"].to_numpy(dtype=np.int64)))
    return {
        "false_alarm_rate": float(np.mean(df_normal["image_positive"].to_numpy(dtype=bool))),
        "fp_pixel_rate": _ratio(fp, fp + tn),
        "fp_blobs_per_image": float(np.mean(df_normal["fp_components"].to_numpy(dtype=np.float64))),
    }


# ------------------------------------------------------------------------------------------------
# from histograms


def pooled_hist(hist) -> np.ndarray:
    """Sum per-episode histograms into one int64 ``[B]`` array.

    Accepts one histogram ``[B]``, an array ``[n, B]``, or a sequence / Series of ``[B]`` lists.
    """
    if isinstance(hist, np.ndarray) and hist.dtype != object:
        array = hist
    else:
        items = list(hist)
        if items and np.ndim(items[0]) == 0:
            array = np.asarray(items)
        else:
            array = np.stack([np.asarray(item, dtype=np.int64) for item in items]) if items else np.zeros((0, 0))
    array = np.asarray(array, dtype=np.int64)
    return array.sum(axis=0) if array.ndim == 2 else array


def _cumulative_counts(hist_pos, hist_neg) -> tuple[np.ndarray, np.ndarray, int, int]:
    """TP and FP when predicting bins ``>= i``, for i = 0..B (i = B: nothing predicted). ``[B + 1]`` each."""
    pos, neg = pooled_hist(hist_pos), pooled_hist(hist_neg)
    if pos.shape != neg.shape:
        raise ValueError(f"histograms differ in bins: {pos.shape} vs {neg.shape}")
    tp = np.append(np.cumsum(pos[::-1])[::-1], 0)
    fp = np.append(np.cumsum(neg[::-1])[::-1], 0)
    return tp, fp, int(pos.sum()), int(neg.sum())


def auroc_from_hist(hist_pos, hist_neg) -> float:
    """Pixel AUROC from pooled score histograms, exact at bin resolution.

    ``AUROC = Σ_i pos_i (Σ_{j<i} neg_j + neg_i / 2) / (P N)`` = the trapezoidal ROC through the
    bin-edge thresholds (pixels in the same bin count as ties). nan without positives or negatives.
    """
    pos, neg = pooled_hist(hist_pos).astype(np.float64), pooled_hist(hist_neg).astype(np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + neg / 2)) / (n_pos * n_neg))


def ap_from_hist(hist_pos, hist_neg) -> float:
    """Pixel average precision from pooled histograms, thresholds at bin edges (step-wise, no interpolation).

    ``AP = Σ_i (R_i − R_{i+1}) P_i`` over edges i = B−1 .. 0, with ``R_i = TP_i / P`` and
    ``P_i = TP_i / (TP_i + FP_i)`` when predicting bins ``>= i``. nan without positives.
    """
    tp, fp, n_pos, _ = _cumulative_counts(hist_pos, hist_neg)
    if n_pos == 0:
        return float("nan")
    recall = tp / n_pos
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.zeros(tp.shape, np.float64), where=predicted > 0)
    return float(np.sum((recall[:-1] - recall[1:]) * precision[:-1]))


def f1max_from_hist(hist_pos, hist_neg) -> float:
    """Best pixel F1 over the bin-edge thresholds: ``max_i 2 TP_i / (2 TP_i + FP_i + FN_i)``. nan without positives."""
    tp, fp, n_pos, _ = _cumulative_counts(hist_pos, hist_neg)
    if n_pos == 0:
        return float("nan")
    return float(np.max(2 * tp / (2 * tp + fp + (n_pos - tp))))


def iou_sweep_from_hist(hist_pos, hist_neg) -> tuple[np.ndarray, np.ndarray]:
    """Pooled pixel IoU at each bin-edge threshold: ``(thresholds [B + 1], iou [B + 1])``.

    At ``thresholds[i] = i / B`` the pixels with score ``>= i / B`` are predicted positive;
    ``iou_i = TP_i / (TP_i + FP_i + FN_i)`` (nan when 0/0). ``thresholds[argmax(iou)]`` is the
    *oracle* IoU-max threshold (it looks at the query GT): report it as such, never as deployable.
    """
    tp, fp, n_pos, _ = _cumulative_counts(hist_pos, hist_neg)
    bins = tp.size - 1
    union = (tp + fp + (n_pos - tp)).astype(np.float64)
    iou = np.divide(tp, union, out=np.full(tp.shape, np.nan), where=union > 0)
    return np.arange(bins + 1, dtype=np.float64) / bins, iou


# ------------------------------------------------------------------------------------------------
# component hit rules


COMPONENT_HIT_RULES = {
    "touch": "a GT component counts as found when >= 1 predicted pixel lies inside it",
    "half": "a GT component counts as found when >= 50 % of its pixels are predicted",
}


def component_found(areas, pred_px, rule: str) -> np.ndarray:
    """bool ``[n]``: GT components found under ``rule`` (:data:`COMPONENT_HIT_RULES`).

    ``areas`` / ``pred_px``: pixels of each component and predicted pixels inside it
    (``gt_comp_areas`` / ``gt_comp_pred_px``). ``"half"`` is ``2 * pred_px >= area``.
    """
    areas, pred_px = np.asarray(areas, np.int64), np.asarray(pred_px, np.int64)
    if rule == "touch":
        return pred_px > 0
    if rule == "half":
        return 2 * pred_px >= areas
    raise ValueError(f"component hit rule '{rule}' unknown; use one of {', '.join(COMPONENT_HIT_RULES)}")


def component_recall(areas, pred_px, rule: str) -> float:
    """Found GT components / all GT components, pooled over the given components (nan when none)."""
    found = component_found(areas, pred_px, rule)
    return _ratio(int(found.sum()), found.size)


# ------------------------------------------------------------------------------------------------
# AUPRO (per-region overlap, MVTec AD / anomalib)

AUPRO_FPR_LIMIT = 0.3


def pro_overlap_sum(comp_hists: np.ndarray, comp_areas: np.ndarray) -> np.ndarray:
    """float64 ``[B]``: entry i = ``Σ_j (pixels of component j in score bins >= i) / area_j``.

    ``comp_hists [n, B]``: score histogram of each GT component's pixels. Summed over episodes
    and divided by the number of components, it is the PRO curve at the bin-edge thresholds.
    """
    comp_hists = np.asarray(comp_hists, np.float64)
    if comp_hists.shape[0] == 0:
        return np.zeros(comp_hists.shape[1] if comp_hists.ndim == 2 else HIST_BINS)
    above = np.cumsum(comp_hists[:, ::-1], axis=1)[:, ::-1]  # [n, B]
    return (above / np.asarray(comp_areas, np.float64)[:, None]).sum(axis=0)


def pro_curve(overlap_sum, n_components: int, hist_neg) -> tuple[np.ndarray, np.ndarray]:
    """PRO against FPR at the bin-edge thresholds, FPR ascending: ``(fpr [B + 1], pro [B + 1])``.

    ``overlap_sum [B]``: pooled ``pro_overlap_sum``; ``n_components``: GT components it sums over;
    ``hist_neg [B]``: pooled GT-negative pixels (defective and normal queries). Predicting bins
    ``>= i``: ``PRO_i`` = mean over components of the fraction of its pixels predicted (MVTec AD's
    per-region overlap), ``FPR_i`` = fraction of negative pixels predicted; point i = B predicts nothing.
    """
    neg = pooled_hist(hist_neg).astype(np.float64)
    pro = np.append(np.asarray(overlap_sum, np.float64), 0.0) / n_components
    fpr = np.append(np.cumsum(neg[::-1])[::-1], 0) / neg.sum()
    return fpr[::-1], pro[::-1]


def aupro(overlap_sum, n_components: int, hist_neg, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Area under the PRO curve (:func:`pro_curve`) for FPR in ``[0, fpr_limit]``, / ``fpr_limit``.

    Trapezoids between bin-edge thresholds; the segment crossing ``fpr_limit`` is cut there by
    linear interpolation (as anomalib's AUPRO). nan without GT components or negative pixels.
    """
    if n_components == 0 or pooled_hist(hist_neg).sum() == 0:
        return float("nan")
    fpr, pro = pro_curve(overlap_sum, n_components, hist_neg)
    area = 0.0
    for x0, x1, y0, y1 in zip(fpr[:-1], fpr[1:], pro[:-1], pro[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:  # cut the segment at the limit
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return float(area / fpr_limit)


# ------------------------------------------------------------------------------------------------
# image level (per-episode max score, defective vs normal queries)


def image_auroc(scores, is_defective) -> float:
    """Exact AUROC of image scores: P(defective score > normal score) + P(tie) / 2. nan without both."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(is_defective, bool)
    pos, neg = scores[labels], np.sort(scores[~labels])
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float(np.sum(below + ties / 2) / (pos.size * neg.size))


def _image_counts(scores, is_defective) -> tuple[np.ndarray, np.ndarray, int]:
    """TP and FP when predicting scores ``>= t`` for each distinct score t, highest t first."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(is_defective, bool)
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_value = np.r_[scores[1:] != scores[:-1], True]
    tp = np.cumsum(labels)[last_of_value]
    fp = np.cumsum(~labels)[last_of_value]
    return tp, fp, int(labels.sum())


def image_ap(scores, is_defective) -> float:
    """Average precision of image scores: ``Σ (R_k − R_{k−1}) P_k`` over distinct thresholds
    (highest first, ``R_0 = 0``, no interpolation). nan without defective images."""
    tp, fp, n_pos = _image_counts(scores, is_defective)
    if n_pos == 0:
        return float("nan")
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * tp / (tp + fp)))


def image_f1max(scores, is_defective) -> float:
    """Best F1 of ``score >= t`` over the distinct image scores t. nan without defective images."""
    tp, fp, n_pos = _image_counts(scores, is_defective)
    if n_pos == 0:
        return float("nan")
    return float(np.max(2 * tp / (2 * tp + fp + (n_pos - tp))))
