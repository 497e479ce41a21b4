"""The first comparison table printed after a run: one row per (run, method, shots).

All numbers use each method's native threshold (the one stored per row). Columns:
mIoU (mean ± std over support re-draws), FB-IoU (pooled), mIoU per GT area-fraction bin,
false-alarm rate / FP pixel rate on normal queries, episode counts. The full report
(harness.report) adds confidence intervals, oracle/threshold-free metrics and plots.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from harness.metrics import class_miou, false_alarm_stats, fb_iou, size_bin_label, size_bin_labels
from harness.store import read_run

COLUMNS = ["method", "shots", "status", "tp", "fp", "fn", "tn", "class_id", "repeat", "query_is_normal",
           "gt_area_frac", "image_positive", "fp_components", "latency_s"]


def _pct(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


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
            "FB-IoU": fb_iou(defective.tp, defective.fp, defective.fn, defective.tn) if len(defective) else float("nan"),
        }
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


def summary_table(run_dirs: Sequence[Path], size_edges: Sequence[float] = (0.001, 0.003, 0.01, 0.05)) -> pd.DataFrame:
    """Printable table (percent strings) over one or several runs; run name prefixed when several."""
    frames = []
    for run_dir in run_dirs:
        rows = read_run(run_dir, columns=COLUMNS)
        if len(run_dirs) > 1:
            rows["method"] = Path(run_dir).name + ":" + rows["method"].astype(str)
        frames.append(rows)
    numbers = summary_frame(pd.concat(frames, ignore_index=True), size_edges)
    table = pd.DataFrame({"method": numbers["method"], "shots": numbers["shots"]})
    table["mIoU % (native thr.)"] = [
        _pct(m) + ("" if math.isnan(s) else f" ± {100 * s:.1f}") for m, s in zip(numbers["mIoU"], numbers["mIoU_std"])
    ]
    table["FB-IoU %"] = numbers["FB-IoU"].map(_pct)
    for column in [c for c in numbers.columns if c.startswith("mIoU ") and c != "mIoU_std"]:
        table[column.replace("mIoU ", "mIoU@") + " %"] = numbers[column].map(_pct)
    table["false alarms % (normal q.)"] = numbers["false_alarm_rate"].map(_pct)
    table["FP px % (normal q.)"] = numbers["fp_pixel_rate"].map(lambda v: "–" if math.isnan(v) else f"{100 * v:.3f}")
    table["s/episode"] = numbers["s_per_episode"].map(lambda v: "–" if math.isnan(v) else f"{v:.2f}")
    table["episodes"] = numbers["episodes"]
    table["failed"] = numbers["failed"]
    return table
