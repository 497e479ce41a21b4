"""Report figures (matplotlib Agg -> PNG). Each function writes one file and returns its path.

Titles say the threshold protocol of what is plotted: "@stored threshold" (native or deployable,
per method, as in the summary table) or "oracle".
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness import metrics  # noqa: E402
from harness.report.aggregate import Aggregates  # noqa: E402

_DPI = 110



def _percent_ylim(ax) -> None:
    """0-100 % when values reach 20 %, else zoom so near-zero methods stay distinguishable."""
    top = max((np.nanmax(np.asarray(line.get_ydata(), float)) for line in ax.get_lines()
               if len(line.get_ydata())), default=0.0)
    for collection in ax.collections:
        offsets = np.asarray(collection.get_offsets(), float)
        if offsets.size:
            top = max(top, np.nanmax(offsets[:, 1]))
    top = 0.0 if not np.isfinite(top) else top
    ax.set_ylim(0, 100 if top >= 20 else max(1.0, 1.25 * top))

def series_label(row, keys: list[str]) -> str:
    """``method k-shot`` (+ dataset prefix when the report spans datasets)."""
    label = f"{row['method']} {row['shots']}-shot"
    return f"{row['dataset']} {label}" if "dataset" in keys else label


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def size_curve(agg: Aggregates, path: Path) -> Path:
    """mIoU per GT-area-fraction bin, one line per method x shots, N per bin as bars (right axis)."""
    data = agg.size_miou
    labels = list(data["size_bin"].cat.categories)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 4.8))
    counts = None
    for _, block in data.groupby(agg.keys, sort=True, observed=True):
        values = block.set_index("size_bin")["miou"].reindex(labels).to_numpy(float)
        n = block.set_index("size_bin")["n_episodes"].reindex(labels).fillna(0).to_numpy()
        counts = n if counts is None else np.maximum(counts, n)
        ax.plot(x, 100 * values, marker="o", label=series_label(block.iloc[0], agg.keys))
    if counts is not None:
        twin = ax.twinx()
        twin.bar(x, counts, width=0.5, color="grey", alpha=0.15, zorder=0)
        twin.set_ylabel("episodes per bin (max over methods)")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    ax.set_xticks(x, labels)
    ax.set_xlabel("GT defect area (fraction of image)")
    ax.set_ylabel("mIoU (%)")
    _percent_ylim(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("mIoU vs defect size (@stored threshold: native / deployable per method)")
    return _save(fig, path)


def false_alarm_vs_miou(agg: Aggregates, path: Path) -> Path:
    """False-alarm rate on normal queries (x) vs mIoU (y), one point per method x shots:
    colour = method, marker = shots; labelled in the legend (and next to the point when few)."""
    data = agg.summary
    methods = sorted(data["method"].unique())
    shot_values = sorted(data["shots"].unique())
    markers = dict(zip(shot_values, "os^Dvp*"))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(9, 5))
    for _, row in data.iterrows():
        far = 100 * row["false_alarm_rate"] if pd.notna(row["false_alarm_rate"]) else np.nan
        label = f"{series_label(row, agg.keys)} ({row['threshold_protocol']})"
        ax.scatter(far, 100 * row["miou_mean"], s=70, color=colours[row["method"]],
                   marker=markers.get(row["shots"], "o"), label=label, edgecolor="black", linewidth=0.5)
        if len(data) <= 6:
            ax.annotate(series_label(row, agg.keys), (far, 100 * row["miou_mean"]),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("image false-alarm rate on normal queries (%)")
    ax.set_ylabel("mIoU (%)")
    ax.set_xlim(-5, 105)
    _percent_ylim(ax)
    ax.grid(alpha=0.3)
    if data["false_alarm_rate"].isna().all():
        ax.text(50, 50, "no normal queries in these runs", ha="center", color="grey")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="method (protocol)")
    ax.set_title("False alarms vs mIoU (@stored threshold; upper left is better)")
    return _save(fig, path)


def class_heatmap(agg: Aggregates, path: Path) -> Path:
    """Per-class IoU (@stored threshold), rows method x shots, columns classes."""
    data = agg.per_class.copy()
    data["series"] = [series_label(r, agg.keys) for _, r in data.iterrows()]
    grid = data.pivot_table(index="series", columns="class_id", values="iou", sort=True)
    n_rows, n_cols = grid.shape
    values = 100 * grid.to_numpy(float)
    top = float(np.nanmax(values)) if np.isfinite(values).any() else 100.0
    top = max(top, 1.0)  # the colour scale spans the data (0 to its maximum), not a fixed 0-100
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.75 * n_cols, 24), 1.6 + 0.5 * n_rows))
    image = ax.imshow(values, vmin=0, vmax=top, cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_cols), grid.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), grid.index, fontsize=8)
    if n_rows * n_cols <= 400:
        for (i, j), value in np.ndenumerate(values):
            text = f"{value:.1f}" if np.isfinite(value) else "–"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if not np.isfinite(value) or value < 0.6 * top else "black")
    fig.colorbar(image, ax=ax, label=f"IoU (%), scale 0-{top:.1f}")
    ax.set_title("Per-class IoU (@stored threshold)")
    return _save(fig, path)


def threshold_sweep(agg: Aggregates, path: Path, prediction_sweeps: dict | None = None) -> Path:
    """Pooled foreground IoU vs threshold from the summed histograms of the defective queries
    (solid), from stored prediction maps where given (dashed); stored threshold marked."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    summary = agg.summary.set_index(agg.keys)
    for group, (hist_pos, hist_neg) in agg.pooled_hist.items():
        if hist_pos.sum() == 0:
            continue
        row = dict(zip(agg.keys, group))
        thresholds, iou = metrics.iou_sweep_from_hist(hist_pos, hist_neg)
        (line,) = ax.plot(thresholds, 100 * np.asarray(iou),
                          label=f"{series_label(row, agg.keys)} (histogram)")
        best = int(np.nanargmax(iou))
        ax.plot(thresholds[best], 100 * iou[best], marker="*", markersize=10, color=line.get_color())
        stored = summary.loc[group if len(group) > 1 else group[0], "threshold"]
        ax.axvline(stored, color=line.get_color(), linestyle=":", alpha=0.7)
        if prediction_sweeps and group in prediction_sweeps:
            p_thresholds, p_iou, n = prediction_sweeps[group]
            ax.plot(p_thresholds, 100 * np.asarray(p_iou), linestyle="--", color=line.get_color(),
                    label=f"{series_label(row, agg.keys)} (stored maps, {n} episodes)")
    ax.set_xlabel("score threshold")
    ax.set_ylabel("pooled foreground IoU (%)")
    ax.set_xlim(0, 1)
    _percent_ylim(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Threshold sweep: pooled IoU (★ = oracle max; dotted = stored threshold)")
    return _save(fig, path)


def recall_vs_false_alarm(agg: Aggregates, path: Path) -> Path:
    """Defect recall vs false-alarm rate on good parts, one threshold swept over the image scores:
    defective queries (first panel), then GT components per GT-area-fraction bin; one curve per
    method x shots; the budgets as dotted vertical lines (symlog x: the budgets are small)."""
    op = agg.operating
    bins = [label for label in agg.size_miou["size_bin"].cat.categories
            if any(label in curves for curves in op.curves.values())] if op is not None else []
    panels = ["image"] + bins
    n_cols = min(3, len(panels))
    n_rows = int(np.ceil(len(panels) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.6 * n_cols, 3.8 * n_rows), squeeze=False)
    groups = sorted(op.curves) if op is not None else []
    for index, panel in enumerate(panels):
        ax = axes[index // n_cols][index % n_cols]
        for position, group in enumerate(groups):
            fa, recall = op.curves[group].get(panel, (np.zeros(0), np.zeros(0)))
            if fa.size:
                ax.step(100 * fa, 100 * recall, where="post", color=f"C{position % 10}",
                        label=series_label(dict(zip(agg.keys, group)), agg.keys))
        for budget in op.budgets if op is not None else ():
            ax.axvline(budget, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
        ax.set_xlabel("false alarms on good parts (%)")
        ax.set_ylabel("defective parts flagged (%)" if panel == "image" else "GT components flagged (%)")
        ax.set_title("image level" if panel == "image" else f"components {panel} of the image", fontsize=10)
        if not groups:
            ax.text(10, 50, "no good and defective test queries", ha="center", color="grey")
    for index in range(len(panels), n_rows * n_cols):
        axes[index // n_cols][index % n_cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="lower right", ncol=2)
    budgets = ", ".join(f"{b:g} %" for b in (op.budgets if op is not None else ()))
    fig.suptitle(f"Recall vs false alarms on good parts (threshold swept; dotted: budgets {budgets})", fontsize=11)
    return _save(fig, path)
