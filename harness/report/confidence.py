"""Bootstrap intervals for mIoU and paired method differences, vectorised over resamples.

The statistic is the table's mIoU: per repeat, class-wise pooled IoU (ΣTP / Σ(TP+FP+FN)) over
the defective episodes, unweighted mean over classes, then mean over repeats. A resample draws
episodes with replacement *within each (repeat, class) stratum*, so every class keeps its episode
count. For a stratum of n episodes the B resamples are drawn at once (``[B, n]`` episode indices,
i.e. multinomial weights ``W``) and the resampled class sums are ``W @ counts [n, 3]``: no
per-resample group-by.

Strata of more than ``NORMAL_APPROX_ABOVE`` episodes (200; only in very large runs) draw their
resampled sums from the normal approximation (CLT: mean n·μ, covariance n·Σ) instead of drawing
episodes, so the bootstrap of a 1 M-row report costs O(B) per
stratum; smaller strata are exact.

Paired differences resample the episodes both methods ran (joined on ``episode_id``) with the
same weights for both, so the interval reflects the methods, not the episode draw.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

_MAX_DRAW_CELLS = 20_000_000  # cap on B x n drawn at once (memory); resamples are chunked
NORMAL_APPROX_ABOVE = 200  # strata with more episodes use the normal approximation of their sum


def _resampled_sums(counts: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Sums of ``counts [n, C]`` under ``n_resamples`` bootstrap draws -> ``[B, C]``.

    Equal to ``W @ counts`` with ``W [B, n]`` the multinomial(n, 1/n) episode multiplicities, but
    drawn as ``B x n`` episode indices and summed, which is several times faster than numpy's
    multinomial for large strata.
    """
    n = len(counts)
    if n > NORMAL_APPROX_ABOVE:
        # Large stratum: the resampled sum of n i.i.d. rows is, by the CLT, normal with mean
        # n * mean and covariance n * Cov (ddof=0) -- O(B) instead of O(B n) draws.
        mean = counts.mean(axis=0)
        cov = np.atleast_2d(np.cov(counts, rowvar=False, ddof=0))
        return rng.multivariate_normal(n * mean, n * cov, size=n_resamples, method="eigh",
                                       check_valid="ignore")
    chunk = max(1, _MAX_DRAW_CELLS // max(n, 1))
    out = np.empty((n_resamples, counts.shape[1]), float)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        picks = rng.integers(0, n, size=(stop - start, n))  # [b, n] episode indices
        for column in range(counts.shape[1]):
            out[start:stop, column] = counts[:, column][picks].sum(axis=1)
    return out


def _strata(frame: pd.DataFrame) -> list[tuple[int, np.ndarray]]:
    """``(repeat position, row positions)`` of each (repeat, class) stratum, in a fixed order
    (repeat, then class id)."""
    if len(frame) == 0:
        return []
    codes = frame.groupby(["repeat", frame["class_id"].astype(str)], sort=True, observed=True).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    stops = np.r_[starts[1:], len(order)]
    repeats = frame["repeat"].to_numpy()
    repeat_values = np.unique(repeats)
    return [(int(np.searchsorted(repeat_values, repeats[order[a]])), order[a:b])
            for a, b in zip(starts, stops)]


def _miou_from_class_sums(class_sums: list[np.ndarray], repeat_of: list[int]) -> np.ndarray:
    """Mean over repeats of the mean over classes of ΣTP/Σ(TP+FP+FN); ``class_sums[i]`` is
    ``[B, 3]`` (tp, fp, fn) of stratum i -> ``[B]``."""
    iou = np.stack([s[:, 0] / (s[:, 0] + s[:, 1] + s[:, 2]) for s in class_sums], axis=1)  # [B, S]
    repeat_of = np.asarray(repeat_of)
    per_repeat = [np.nanmean(iou[:, repeat_of == r], axis=1) for r in np.unique(repeat_of)]
    return np.mean(np.stack(per_repeat, axis=1), axis=1)


def bootstrap_miou(defective: pd.DataFrame, *, n_resamples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict:
    """Point mIoU and percentile interval of one method's defective episodes.

    Returns ``{"miou", "ci_low", "ci_high", "n_resamples"}``.
    """
    counts = defective[["tp", "fp", "fn"]].to_numpy(float)
    strata = _strata(defective)
    rng = np.random.default_rng(seed)
    point = _miou_from_class_sums([counts[rows].sum(0)[None] for _, rows in strata],
                                  [r for r, _ in strata])[0]
    boot = _miou_from_class_sums([_resampled_sums(counts[rows], n_resamples, rng) for _, rows in strata],
                                 [r for r, _ in strata])
    low, high = np.nanpercentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return {"miou": float(point), "ci_low": float(low), "ci_high": float(high),
            "n_resamples": n_resamples}


def paired_difference(rows_a: pd.DataFrame, rows_b: pd.DataFrame, *, n_resamples: int = 1000,
                      seed: int = 0, level: float = 0.95) -> dict:
    """mIoU(A) − mIoU(B) on the defective episodes both ran (joined on ``episode_id``).

    Returns ``{"n_paired", "diff", "ci_low", "ci_high", "p_a_better", "significant"}`` where
    ``p_a_better`` is the fraction of resamples with mIoU(A) > mIoU(B) and ``significant`` is
    False when the interval contains 0.
    """
    columns = ["episode_id", "repeat", "class_id", "tp", "fp", "fn"]
    joined = rows_a[columns].merge(rows_b[["episode_id", "tp", "fp", "fn"]], on="episode_id",
                                   suffixes=("_a", "_b"))
    if joined.empty:
        return {"n_paired": 0, "diff": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                "p_a_better": np.nan, "significant": False}
    counts = joined[["tp_a", "fp_a", "fn_a", "tp_b", "fp_b", "fn_b"]].to_numpy(float)
    strata = _strata(joined)
    repeat_of = [r for r, _ in strata]
    rng = np.random.default_rng(seed)
    point = [counts[rows].sum(0)[None] for _, rows in strata]
    boot = [_resampled_sums(counts[rows], n_resamples, rng) for _, rows in strata]  # same W for A, B
    diff = (_miou_from_class_sums([s[:, :3] for s in point], repeat_of)
            - _miou_from_class_sums([s[:, 3:] for s in point], repeat_of))[0]
    boot_diff = (_miou_from_class_sums([s[:, :3] for s in boot], repeat_of)
                 - _miou_from_class_sums([s[:, 3:] for s in boot], repeat_of))
    low, high = np.nanpercentile(boot_diff, [50 * (1 - level), 50 * (1 + level)])
    return {"n_paired": len(joined), "diff": float(diff), "ci_low": float(low),
            "ci_high": float(high), "p_a_better": float(np.mean(boot_diff > 0)),
            "significant": not (low <= 0 <= high)}


def confidence_tables(defective: pd.DataFrame, keys: list[str], *, n_resamples: int = 1000,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-group mIoU intervals and all paired differences within the same shots (and dataset).

    ``defective``: ok, defective-query episode rows with ``method``. Returns
    ``(intervals: keys + miou, ci_low, ci_high; paired: context keys + method_a, method_b, …)``.
    """
    intervals = []
    for i, (group, sub) in enumerate(defective.groupby(keys, sort=True, observed=True)):
        result = bootstrap_miou(sub, n_resamples=n_resamples, seed=seed + i)
        intervals.append({**dict(zip(keys, group)), **result})
    context = [k for k in keys if k != "method"]
    paired = []
    for j, (group, sub) in enumerate(defective.groupby(context, sort=True, observed=True)):
        by_method = dict(list(sub.groupby("method", sort=True, observed=True)))
        names = sorted(by_method)
        for a_pos, a in enumerate(names):
            for b in names[a_pos + 1:]:
                result = paired_difference(by_method[a], by_method[b], n_resamples=n_resamples,
                                           seed=seed + 1000 * (j + 1) + a_pos)
                paired.append({**dict(zip(context, group)), "method_a": a, "method_b": b, **result})
    interval_cols = keys + ["miou", "ci_low", "ci_high", "n_resamples"]
    paired_cols = context + ["method_a", "method_b", "n_paired", "diff", "ci_low", "ci_high",
                             "p_a_better", "significant"]
    return pd.DataFrame(intervals, columns=interval_cols), pd.DataFrame(paired, columns=paired_cols)
