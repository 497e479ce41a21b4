"""The first comparison table printed after a run: one row per (run, method, shots).

Thresholded numbers use the threshold stored per row; the ``threshold`` column says which:
"fixed <t>" when every episode of the group used the same one (the method's native threshold),
"support-fitted (deployable)" when it varies per episode (fitted on the support images).
Columns: threshold, mIoU (mean ± std over support re-draws), pixel AUROC (threshold-free, pooled
histograms of all ok queries, as in the full report), FB-IoU (pooled), image AUROC (per-query max
score, defective vs normal queries), AUPRO (<= 30 % FPR), component recall under the "touch" and
">= 50 %" rules, mIoU per GT area-fraction
bin, false-alarm rate / FP pixel rate on normal queries, episode counts. The full report
(harness.report) adds confidence intervals, oracle metrics and plots.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from harness.metrics import (aupro, auroc_from_hist, class_miou, component_recall, false_alarm_stats, fb_iou,
                             image_auroc, pooled_hist, size_bin_label, size_bin_labels)
from harness.report.aggregate import threshold_protocol
from harness.store import read_run

COLUMNS = ["method", "shots", "status", "tp", "fp", "fn", "tn", "class_id", "repeat", "query_is_normal",
           "gt_area_frac", "image_positive", "fp_components", "latency_s", "threshold",
           "score_hist_pos", "score_hist_neg", "max_score", "gt_comp_areas", "gt_comp_hit", "gt_comp_pred_px",
           "pro_overlap_sum"]
AUROC_WARNING_BELOW = 0.6  # pixel AUROC under this: the scores barely rank defect pixels first


def _pct(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def threshold_label(ok: pd.DataFrame) -> str:
    """"fixed <t>" when the ok rows share one stored threshold, "support-fitted (deployable)" when it
    varies per episode or the method class declares "deployable" in run.json
    (``harness.report.aggregate.threshold_protocol``), "–" without any."""
    thresholds = ok["threshold"].dropna()
    if thresholds.empty:
        return "–"
    declared = ok["declared_protocol"].dropna() if "declared_protocol" in ok else pd.Series([], dtype=object)
    if threshold_protocol(ok, declared.iloc[0] if len(declared) else None) == "deployable":
        return "support-fitted (deployable)"
    return f"fixed {thresholds.iloc[0]:g}"


def summary_frame(rows: pd.DataFrame, size_edges: Sequence[float] = (0.001, 0.003, 0.01, 0.05)) -> pd.DataFrame:
    """Numbers (fractions, not percent) per (method, shots) from episode rows."""
    records = []
    labels = size_bin_labels(size_edges)
    for (method, shots), group in rows.groupby(["method", "shots"], sort=True, observed=True):
        ok = group[group["status"] == "ok"]
        defective = ok[~ok["query_is_normal"].astype(bool)]
        normal = ok[ok["query_is_normal"].astype(bool)]
        per_repeat = [class_miou(g) for _, g in defective.groupby("repeat")]
        per_repeat = [v for v in per_repeat if not math.isnan(v)]
        record = {
            "method": method,
            "shots": int(shots),
            "mIoU": float(np.mean(per_repeat)) if per_repeat else float("nan"),
            "mIoU_std": float(np.std(per_repeat)) if len(per_repeat) > 1 else float("nan"),
            "threshold": threshold_label(ok),
            # pooled over all ok queries (normal ones add negatives), as the report's pixel_auroc
            "pixel_AUROC": auroc_from_hist(ok["score_hist_pos"], ok["score_hist_neg"]),
            "FB-IoU": fb_iou(defective.tp, defective.fp, defective.fn, defective.tn) if len(defective) else float("nan"),
        }
        record.update(region_numbers(ok))
        bins = defective["gt_area_frac"].map(lambda f: size_bin_label(f, size_edges))
        for label in labels:
            in_bin = defective[bins == label]
            record[f"mIoU {label}"] = class_miou(in_bin) if len(in_bin) else float("nan")
        alarms = false_alarm_stats(normal)
        record.update(
            {
                "false_alarm_rate": alarms["false_alarm_rate"],
                "fp_pixel_rate": alarms["fp_pixel_rate"],
                "episodes": int(len(group)),
                "failed": int((group["status"] != "ok").sum()),
                "s_per_episode": float(ok["latency_s"].mean()) if len(ok) else float("nan"),
            }
        )
        records.append(record)
    return pd.DataFrame.from_records(records)


def _flat(column: pd.Series) -> np.ndarray:
    items = [np.asarray(x) for x in column if x is not None]
    return np.concatenate(items) if items else np.zeros(0)


def region_numbers(ok: pd.DataFrame) -> dict[str, float]:
    """Image AUROC (per-query max score), AUPRO (<= 30 % FPR) and component recall under both hit
    rules ("touch", ">= 50 %"), from ok rows; AUPRO and ">= 50 %" only over schema-2 rows."""
    normal = ok["query_is_normal"].astype(bool).to_numpy()
    scored = ok["max_score"].notna().to_numpy()
    defective = ok[~normal]
    v2 = ok[ok["pro_overlap_sum"].notna().to_numpy()] if "pro_overlap_sum" in ok else ok.iloc[:0]
    v2_defective = v2[~v2["query_is_normal"].astype(bool).to_numpy()]
    has_px = defective["gt_comp_pred_px"].notna().to_numpy() if "gt_comp_pred_px" in ok else np.zeros(len(defective), bool)
    overlap = np.sum([np.asarray(x, np.float64) for x in v2["pro_overlap_sum"]], axis=0) if len(v2) else np.zeros(0)
    return {
        "image_AUROC": image_auroc(ok["max_score"].to_numpy(np.float64)[scored], ~normal[scored]),
        "AUPRO": aupro(overlap, len(_flat(v2_defective["gt_comp_areas"])), pooled_hist(v2["score_hist_neg"]))
        if len(v2) else float("nan"),
        "comp_recall_touch": float(np.mean(_flat(defective["gt_comp_hit"]).astype(bool)))
        if len(_flat(defective["gt_comp_hit"])) else float("nan"),
        "comp_recall_half": component_recall(_flat(defective["gt_comp_areas"][has_px]),
                                             _flat(defective["gt_comp_pred_px"][has_px]), "half")
        if has_px.any() else float("nan"),
    }


def declared_protocols(run_dir: Path) -> dict[str, str]:
    """Method -> threshold protocol its class declares, as recorded in ``run.json`` (may be empty)."""
    try:
        methods = json.loads((run_dir / "run.json").read_text()).get("methods") or {}
    except (OSError, ValueError):
        return {}
    return {name: spec["threshold_protocol"] for name, spec in methods.items()
            if isinstance(spec, dict) and spec.get("threshold_protocol")}


def read_summary_rows(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """The ``COLUMNS`` of one or several runs; run name prefixed to the method when several."""
    frames = []
    for run_dir in run_dirs:
        rows = read_run(run_dir, columns=COLUMNS)
        rows["declared_protocol"] = rows["method"].astype(str).map(declared_protocols(Path(run_dir)))
        if len(run_dirs) > 1:
            rows["method"] = Path(run_dir).name + ":" + rows["method"].astype(str)
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def format_summary(numbers: pd.DataFrame) -> pd.DataFrame:
    """Printable table (percent strings) from :func:`summary_frame` numbers."""
    table = pd.DataFrame({"method": numbers["method"], "shots": numbers["shots"]})
    table["threshold"] = numbers["threshold"]
    table["mIoU %"] = [
        _pct(m) + ("" if math.isnan(s) else f" ± {100 * s:.1f}") for m, s in zip(numbers["mIoU"], numbers["mIoU_std"])
    ]
    table["pixel AUROC %"] = numbers["pixel_AUROC"].map(_pct)
    table["FB-IoU %"] = numbers["FB-IoU"].map(_pct)
    table["image AUROC %"] = numbers["image_AUROC"].map(_pct)
    table["AUPRO %"] = numbers["AUPRO"].map(_pct)
    table["comp. recall touch / ≥50% %"] = [f"{_pct(a)} / {_pct(b)}" for a, b in
                                            zip(numbers["comp_recall_touch"], numbers["comp_recall_half"])]
    for column in [c for c in numbers.columns if c.startswith("mIoU ") and c != "mIoU_std"]:
        table[column.replace("mIoU ", "mIoU@") + " %"] = numbers[column].map(_pct)
    table["false alarms % (normal q.)"] = numbers["false_alarm_rate"].map(_pct)
    table["FP px % (normal q.)"] = numbers["fp_pixel_rate"].map(lambda v: "–" if math.isnan(v) else f"{100 * v:.3f}")
    table["s/episode"] = numbers["s_per_episode"].map(lambda v: "–" if math.isnan(v) else f"{v:.2f}")
    table["episodes"] = numbers["episodes"]
    table["failed"] = numbers["failed"]
    return table


def summary_table(run_dirs: Sequence[Path], size_edges: Sequence[float] = (0.001, 0.003, 0.01, 0.05)) -> pd.DataFrame:
    """Printable table (percent strings) over one or several runs; run name prefixed when several."""
    return format_summary(summary_frame(read_summary_rows(run_dirs), size_edges))


def auroc_warnings(numbers: pd.DataFrame, below: float = AUROC_WARNING_BELOW) -> list[str]:
    """One line per (method, shots) of :func:`summary_frame` whose pixel AUROC is under ``below``."""
    return [
        f"warning: {row.method} ({row.shots}-shot) pixel AUROC {100 * row.pixel_AUROC:.1f} % < {100 * below:g} %: "
        "its features carry (almost) no defect signal on this data (chance = 50 %)"
        for row in numbers.itertuples(index=False)
        if row.pixel_AUROC < below  # nan (no positives or negatives) never warns
    ]
