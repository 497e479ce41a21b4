"""Operating points: defect recall at a false-alarm budget on good parts (issue 19).

An inspection engineer picks a method by what it finds at the false-alarm rate the line can
afford. Everything here is a group-by over the stored rows (schema >= 4): the image score is
``max_score`` (the highest pixel score of the query), a GT component's score is its
``gt_comp_max_score``; at a threshold ``t`` a query or a component is *flagged* when its score
is ``> t``, exactly as pixels are predicted (``score > threshold``).

Two kinds of threshold, always labelled:

* **threshold-free (set on the test's good parts)**: for a budget B % the threshold
  ``t_B = np.quantile(normal scores, 1 - B/100, method="higher")`` over the ``max_score`` of the
  normal *test* queries, so at most B % of them exceed it. It is fitted on the very good parts it
  is judged on, an optimistic reading, but it ranks methods at equal false alarms.
  ``image_recall@faB`` = defective test queries flagged, ``comp_recall@faB`` = GT components
  flagged (all, per GT-area-fraction bin, and under 0.3 % of the image); ``good_passed@recall95``
  (PG95, Baitieva et al. 2025) = good parts passed at the highest threshold that still flags 95 %
  of the defective queries.
* **calibrated (deployable)**: ``t_B`` is set the same way on the held-out calibration images
  alone (``role == "calibration"``: good parts that are never queries or supports, scored by
  the class's calibration support draw of the same shots and repeat), then applied to that
  class's test queries: ``calibrated_false_alarm@faB`` (with a Wilson 95 % interval and its n),
  ``calibrated_image_recall@faB``, ``calibrated_comp_recall@faB``. This is a number an engineer
  could deploy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness import metrics
from harness.report.aggregate import flatten_lists

DEFAULT_FA_BUDGETS = (1.0, 5.0)  # percent of good parts
PG_RECALL = 0.95  # good parts passed at the threshold that still catches this share of defective parts
MIN_GOOD_IMAGES = 20  # a false-alarm figure from fewer good images is flagged
SMALL_DEFECT_FRAC = 0.003  # "defects under 0.3 % of the image" in the verdict
CALIBRATION = "calibration"


def budget_label(budget: float) -> str:
    """1.0 -> "1", 0.5 -> "0.5": the suffix of ``image_recall@fa{B}``."""
    return f"{budget:g}"


def budget_threshold(normal_scores, budget_pct: float) -> float:
    """``t_B = np.quantile(scores, 1 - B/100, method="higher")``: at most B % of ``normal_scores``
    are ``> t_B``. nan without scores."""
    scores = np.asarray(normal_scores, np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return float("nan")
    return float(np.quantile(scores, 1 - budget_pct / 100, method="higher"))


def flagged_rate(scores, threshold) -> float:
    """Share of ``scores`` above ``threshold`` (a scalar or one threshold per score). nan when empty."""
    scores = np.asarray(scores, np.float64)
    if scores.size == 0:
        return float("nan")
    return float(np.mean(scores > np.asarray(threshold, np.float64)))


def good_passed_at_recall(defective_scores, normal_scores, recall: float = PG_RECALL) -> float:
    """PG: share of good parts passed (score <= t) at the highest ``t`` that still flags at least
    ``recall`` of the defective parts, i.e. just below the ``ceil(recall * n)``-th highest
    defective score ``s_k``: good parts with a score ``< s_k`` pass. nan without both kinds."""
    defective = np.sort(np.asarray(defective_scores, np.float64))[::-1]
    normal = np.asarray(normal_scores, np.float64)
    if defective.size == 0 or normal.size == 0:
        return float("nan")
    k = int(np.ceil(recall * defective.size - 1e-9))
    return float(np.mean(normal < defective[max(k, 1) - 1]))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (scipy's ``binomtest(...).proportion_ci``)."""
    if n <= 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def split_calibration(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(test rows, calibration rows)``; rows without a role (schema < 4) are test rows."""
    if "role" not in rows:
        return rows, rows.iloc[:0]
    calibration = (rows["role"].astype(object) == CALIBRATION).to_numpy(bool)
    test, held = rows[~calibration], rows[calibration]
    test.attrs = dict(rows.attrs)
    return test, held


@dataclass
class OperatingPoints:
    budgets: tuple[float, ...]
    summary: pd.DataFrame  # keys + the @fa columns (fractions), n's and interval bounds
    by_size: pd.DataFrame  # keys + budget + size_bin: components, threshold-free / calibrated recall
    curves: dict = field(default_factory=dict)  # group tuple -> {"image": (fa, recall), bin: (fa, recall)}


def _components(sub: pd.DataFrame, edges) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GT components of the defective rows that store their max score:
    ``(score, size bin index, parent row position in sub)``."""
    has = sub["gt_comp_max_score"].notna().to_numpy() if "gt_comp_max_score" in sub else np.zeros(len(sub), bool)
    if not has.any():
        return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
    positions = np.flatnonzero(has)
    scores, parent = flatten_lists(sub["gt_comp_max_score"].iloc[positions])
    areas, _ = flatten_lists(sub["gt_comp_areas"].iloc[positions])
    pixels = (sub["height"].to_numpy(np.float64) * sub["width"].to_numpy(np.float64))[positions][parent]
    fraction = areas.astype(np.float64) / pixels
    return (scores.astype(np.float64), np.searchsorted(np.asarray(edges, float), fraction, side="right"),
            positions[parent])


def _draw_thresholds(calibration: pd.DataFrame, budget: float) -> dict:
    """(repeat, class_id) -> (t_B on that draw's calibration scores, number of calibration images)."""
    out = {}
    for (repeat, class_id), sub in calibration.groupby(["repeat", "class_id"], sort=False, observed=True):
        scores = sub["max_score"].to_numpy(np.float64)
        out[(int(repeat), str(class_id))] = (budget_threshold(scores, budget), int(np.isfinite(scores).sum()))
    return out


def _roc_points(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-alarm rate, recall) at every distinct score as threshold (flagged = score > t), from
    (1, 1) down to (0, 0)."""
    if positive.size == 0 or negative.size == 0:
        return np.zeros(0), np.zeros(0)
    thresholds = np.r_[-np.inf, np.unique(np.r_[positive, negative])]
    neg, pos = np.sort(negative), np.sort(positive)
    fa = 1 - np.searchsorted(neg, thresholds, side="right") / neg.size
    recall = 1 - np.searchsorted(pos, thresholds, side="right") / pos.size
    return fa, recall


def operating_points(rows: pd.DataFrame, calibration: pd.DataFrame, keys: list[str], *,
                     budgets=DEFAULT_FA_BUDGETS, size_edges=metrics.SIZE_BIN_EDGES) -> OperatingPoints:
    """Per group of ``keys``: the threshold-free and calibrated operating points of the module doc.

    ``rows``: test rows (``status``, ``query_is_normal``, ``max_score``, ``repeat``, ``class_id``,
    ``gt_comp_max_score``, ``gt_comp_areas``, ``height``, ``width``); ``calibration``: the rows
    of role "calibration". Only ``status == "ok"`` rows count.
    """
    budgets = tuple(float(b) for b in budgets)
    labels = metrics.size_bin_labels(tuple(size_edges))
    # components under SMALL_DEFECT_FRAC: the bins whose upper edge is <= it (exact when it is an edge)
    small_bins = int(np.searchsorted(np.asarray(size_edges, float), SMALL_DEFECT_FRAC, side="right"))
    ok = rows[(rows["status"] == "ok").to_numpy()]
    cal_ok = calibration[(calibration["status"] == "ok").to_numpy()] if len(calibration) else calibration
    cal_groups = dict(iter(cal_ok.groupby(keys, sort=True, observed=True))) if len(cal_ok) else {}
    summary, by_size, curves = [], [], {}
    for group, sub in ok.groupby(keys, sort=True, observed=True):
        group = group if isinstance(group, tuple) else (group,)
        entry = dict(zip(keys, group))
        normal_mask = sub["query_is_normal"].to_numpy(bool)
        scores = sub["max_score"].to_numpy(np.float64)
        normal, defective = scores[normal_mask], scores[~normal_mask]
        defective_sub = sub[~normal_mask]
        comp_scores, comp_bins, comp_parent = _components(defective_sub, size_edges)
        small = comp_bins < small_bins
        n_small = int(small.sum())
        entry.update(n_good_test=int(normal.size), n_defective_test=int(defective.size),
                     n_components_scored=int(comp_scores.size), n_small_components=n_small)
        entry["good_passed@recall95"] = good_passed_at_recall(defective, normal)
        calibration_sub = cal_groups.get(group if len(group) > 1 else group[0])
        for budget in budgets:
            b = budget_label(budget)
            t = budget_threshold(normal, budget)
            entry[f"threshold@fa{b}"] = t
            hits = int(np.sum(defective > t)) if np.isfinite(t) else 0
            entry[f"image_recall@fa{b}"] = hits / defective.size if np.isfinite(t) and defective.size else np.nan
            entry[f"image_recall@fa{b}_low"], entry[f"image_recall@fa{b}_high"] = (
                wilson_interval(hits, defective.size) if np.isfinite(t) else (np.nan, np.nan))
            entry[f"false_alarm@fa{b}"] = flagged_rate(normal, t) if np.isfinite(t) else np.nan
            found = comp_scores > t if np.isfinite(t) else np.zeros(comp_scores.size, bool)
            entry[f"comp_recall@fa{b}"] = found.mean() if np.isfinite(t) and found.size else np.nan
            entry[f"comp_recall_small@fa{b}"] = found[small].mean() if np.isfinite(t) and n_small else np.nan
            entry[f"comp_recall_small@fa{b}_low"], entry[f"comp_recall_small@fa{b}_high"] = (
                wilson_interval(int(found[small].sum()), n_small) if np.isfinite(t) else (np.nan, np.nan))
            calibrated = _calibrated(sub, normal_mask, comp_scores, comp_parent, calibration_sub, budget)
            cal_found = calibrated.pop(("_found", ""))
            entry["calibration_images"] = calibrated.pop(("calibration_images", ""))
            entry.update({f"{name}@fa{b}{suffix}": value for (name, suffix), value in calibrated.items()})
            for index, label in enumerate(labels):
                in_bin = comp_bins == index
                if not in_bin.any():
                    continue
                by_size.append({**dict(zip(keys, group)), "budget": budget, "size_bin": label,
                                "n_components": int(in_bin.sum()),
                                "recall": found[in_bin].mean() if np.isfinite(t) else np.nan,
                                "calibrated_recall": (np.nanmean(cal_found[in_bin])
                                                      if np.isfinite(cal_found[in_bin]).any() else np.nan)})
        curves[group] = {"image": _roc_points(defective, normal)}
        for index, label in enumerate(labels):
            if (comp_bins == index).any():
                curves[group][label] = _roc_points(comp_scores[comp_bins == index], normal)
        summary.append(entry)
    summary_frame = pd.DataFrame(summary)
    if summary_frame.empty:
        summary_frame = pd.DataFrame(columns=keys)
    size_frame = pd.DataFrame(by_size, columns=keys + ["budget", "size_bin", "n_components", "recall",
                                                       "calibrated_recall"])
    return OperatingPoints(budgets, summary_frame, size_frame, curves)


def _calibrated(sub: pd.DataFrame, normal_mask: np.ndarray, comp_scores: np.ndarray, comp_parent: np.ndarray,
                calibration: pd.DataFrame | None, budget: float) -> dict:
    """The calibrated columns of one group at one budget (keys ``(name, suffix)``), plus
    ``("_found", "")``: per component 1.0 / 0.0 flagged at its draw's threshold, nan without one."""
    nan = float("nan")
    out = {("calibrated_false_alarm", ""): nan, ("calibrated_false_alarm", "_low"): nan,
           ("calibrated_false_alarm", "_high"): nan, ("calibrated_false_alarm", "_n"): 0,
           ("calibrated_image_recall", ""): nan, ("calibrated_comp_recall", ""): nan,
           ("calibration_images", ""): 0, ("_found", ""): np.full(comp_scores.size, nan)}
    if calibration is None or not len(calibration):
        return out
    thresholds = _draw_thresholds(calibration, budget)
    keys = list(zip(sub["repeat"].astype(int), sub["class_id"].astype(str)))
    per_row = np.array([thresholds.get(k, (nan, 0))[0] for k in keys], np.float64)
    has = np.isfinite(per_row)
    scores = sub["max_score"].to_numpy(np.float64)
    flagged = scores > per_row
    normal = has & normal_mask
    defective = has & ~normal_mask
    n_false = int(flagged[normal].sum())
    out[("calibrated_false_alarm", "")] = n_false / normal.sum() if normal.any() else nan
    out[("calibrated_false_alarm", "_low")], out[("calibrated_false_alarm", "_high")] = wilson_interval(
        n_false, int(normal.sum()))
    out[("calibrated_false_alarm", "_n")] = int(normal.sum())
    out[("calibrated_image_recall", "")] = flagged[defective].mean() if defective.any() else nan
    defective_positions = np.flatnonzero(~normal_mask)
    comp_threshold = per_row[defective_positions][comp_parent] if comp_parent.size else np.zeros(0)
    found = np.where(np.isfinite(comp_threshold), (comp_scores > comp_threshold).astype(float), nan)
    out[("calibrated_comp_recall", "")] = float(np.nanmean(found)) if np.isfinite(found).any() else nan
    out[("calibration_images", "")] = min((n for _, n in thresholds.values()), default=0)
    out[("_found", "")] = found
    return out
