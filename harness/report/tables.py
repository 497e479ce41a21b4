"""Report tables: numbers from ``aggregate`` / ``confidence`` -> display frames -> md, CSV, LaTeX.

CSV files hold the raw numbers (fractions, full precision) for other tools; Markdown, LaTeX and
HTML hold the display strings (IoU-like numbers in percent). Every metric header names its
threshold protocol: ``@protocol`` means the row's stored threshold, whose protocol ("native" or
"deployable") is in the ``protocol`` column; ``oracle`` means a threshold chosen on the test labels
(an upper bound); ``thr-free`` means no threshold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.aggregate import Aggregates


@dataclass
class Table:
    """One report table: display strings, raw numbers for CSV, and the cells to emphasise."""

    name: str  # file stem
    title: str
    caption: str
    display: pd.DataFrame
    data: pd.DataFrame
    bold: set[tuple[int, str]] = field(default_factory=set)  # (row position, column)


def _pct(x, digits: int = 1) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.{digits}f}"


def _num(x, digits: int = 3) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _threshold_text(protocol, threshold: float) -> str:
    if not isinstance(protocol, str):
        return "– (no ok rows)"
    if protocol == "deployable":
        return f"deployable (per episode, median {_num(threshold, 2)})"
    return f"{protocol} @{_num(threshold, 2)}"


def summary_table(agg: Aggregates, intervals: pd.DataFrame, paired: pd.DataFrame,
                  n_resamples: int) -> Table:
    keys = agg.keys
    data = agg.summary.merge(intervals[keys + ["ci_low", "ci_high"]], on=keys, how="left")
    display = pd.DataFrame({k: data[k].astype(str) for k in keys})
    display["protocol"] = [_threshold_text(p, t) for p, t in
                           zip(data["threshold_protocol"], data["threshold"])]
    display["episodes"] = data["n_episodes"].astype(str)
    display["failed"] = data["n_failed"].astype(str)
    display["mIoU (@protocol)"] = [f"{_pct(m)} ± {_pct(s)}" if np.isfinite(m) else "–" for m, s in
                                   zip(data["miou_mean"], data["miou_std"])]
    display["mIoU 95% CI"] = [f"[{_pct(lo)}, {_pct(hi)}]" if np.isfinite(lo) else "–" for lo, hi in
                              zip(data["ci_low"], data["ci_high"])]
    display["FB-IoU (@protocol)"] = data["fb_iou"].map(_pct)
    display["mIoU (oracle)"] = data["oracle_miou"].map(_pct)
    display["pixel AUROC (thr-free)"] = data["pixel_auroc"].map(_pct)
    display["pixel AP (thr-free)"] = data["pixel_ap"].map(_pct)
    display["F1-max (oracle)"] = data["f1_max"].map(_pct)
    display["image AUROC (thr-free)"] = data["image_auroc"].map(_pct)
    display["image AP (thr-free)"] = data["image_ap"].map(_pct)
    display["image F1-max (oracle)"] = data["image_f1_max"].map(_pct)
    display["AUPRO ≤30% FPR (thr-free)"] = data["aupro"].map(_pct)
    display["comp. recall touch (@protocol)"] = data["comp_recall_touch"].map(_pct)
    display["comp. recall ≥50% (@protocol)"] = data["comp_recall_half"].map(_pct)
    display["false-alarm rate (@protocol)"] = data["false_alarm_rate"].map(_pct)
    display["FP px rate (@protocol)"] = data["fp_pixel_rate"].map(
        lambda x: "–" if not np.isfinite(x) else f"{x:.2e}")
    display["FP blobs/img (@protocol)"] = data["fp_blobs_per_image"].map(lambda x: _num(x, 2))
    display["episodes/s"] = data["episodes_per_s"].map(lambda x: _num(x, 2))
    bold = _mark_best(data, display, keys, paired)
    caption = (
        "mIoU: per repeat (support draw), foreground IoU pooled per class (ΣTP/Σ(TP+FP+FN) over the "
        "class's defective queries), unweighted mean over classes; mean ± std (ddof=0) over repeats, "
        f"95% CI: percentile bootstrap over episodes within (repeat, class), {n_resamples} resamples. "
        "FB-IoU: mean of fg and bg IoU pooled over all defective queries. Oracle mIoU: per class the "
        "IoU-max threshold of the pooled 64-bin score histogram (chosen on test labels: upper bound). "
        "Pixel AUROC/AP/F1-max: from the summed histograms of all queries. Image AUROC/AP/F1-max: "
        "per-query max score, defective vs normal queries (exact; F1-max at the best image threshold). "
        "AUPRO: area under per-region overlap vs pixel FPR up to 30 % FPR, / 0.3 (MVTec AD, anomalib), "
        "at the 64 histogram bin edges. Component recall: GT components found, 'touch' = >= 1 "
        "predicted pixel inside, '≥50%' = at least half of its pixels predicted. False alarms: normal "
        "queries only. @protocol: at the stored threshold of the row's protocol (native = the method's "
        "fixed threshold; deployable = fitted on support data per episode). Values in % except FP "
        "rates. Bold: best mIoU per shot; † = not significantly better than the runner-up (paired "
        "bootstrap, 95% CI of the difference contains 0).")
    return Table("summary", "Summary per method and shots", caption, display, data, bold)


def _mark_best(data: pd.DataFrame, display: pd.DataFrame, keys: list[str],
               paired: pd.DataFrame) -> set[tuple[int, str]]:
    bold = set()
    context = [k for k in keys if k != "method"]
    for _, block in data.groupby(context, sort=False, observed=True):
        ranked = block.sort_values("miou_mean", ascending=False)
        if ranked["miou_mean"].isna().all():
            continue
        best = ranked.index[0]
        bold.add((int(best), "mIoU (@protocol)"))
        if len(ranked) < 2:
            continue
        a, b = sorted([data.at[best, "method"], data.at[ranked.index[1], "method"]])
        match = paired[(paired["method_a"] == a) & (paired["method_b"] == b)]
        for k in context:
            match = match[match[k] == data.at[best, k]]
        if len(match) and not bool(match["significant"].iloc[0]):
            display.at[best, "mIoU (@protocol)"] += " †"
    return bold


def size_table(agg: Aggregates) -> Table:
    data = agg.size_miou.merge(agg.summary[agg.keys + ["threshold_protocol"]], on=agg.keys)
    data = data[data["n_episodes"] > 0]
    display = _wide(data, agg.keys, "size_bin",
                    lambda r: f"{_pct(r['miou'])} (n={int(r['n_episodes'])})")
    caption = ("mIoU (@protocol) per GT-area-fraction bin (half-open bins): per class, IoU pooled over the "
               "class's defective queries in the bin; mean over the classes present in the bin. "
               "n = episodes in the bin, all repeats pooled.")
    return Table("size_miou", "Size-stratified mIoU (GT area fraction)", caption, display, data)


def component_table(agg: Aggregates) -> Table:
    data = agg.component_recall.merge(agg.summary[agg.keys + ["threshold_protocol"]], on=agg.keys)
    data = data[data["n_components"] > 0]
    display = _wide(data, agg.keys, "component_bin", _recall_cell)
    caption = ("Component recall (@protocol): fraction of GT connected components found, per "
               "absolute component area bin in pixels at native resolution (half-open bins), under "
               "two rules: touch = at least one predicted pixel inside the component (flatters "
               "over-prediction); ≥50% = at least half of the component's pixels predicted (only rows "
               "of schema >= 2). n = GT components, all repeats pooled.")
    return Table("component_recall", "Component recall by absolute component size", caption,
                 display, data)


def _recall_cell(r) -> str:
    half = f" / ≥50% {_pct(r['recall_half'])}" if r.get("n_components_half", 0) > 0 else ""
    return f"touch {_pct(r['recall'])}{half} (n={int(r['n_components'])})"


def _wide(data: pd.DataFrame, keys: list[str], bin_column: str, cell) -> pd.DataFrame:
    data = data.assign(_cell=[cell(r) for _, r in data.iterrows()] if len(data) else [])
    wide = data.pivot_table(index=keys + ["threshold_protocol"], columns=bin_column, values="_cell",
                            aggfunc="first", observed=True, sort=True)
    wide = wide.reset_index().rename(columns={"threshold_protocol": "protocol"}).fillna("–")
    wide.columns = [str(c) for c in wide.columns]
    return wide.astype(str)


def paired_table(paired: pd.DataFrame, n_resamples: int) -> Table:
    context = [c for c in paired.columns if c in ("dataset", "shots")]
    display = pd.DataFrame({k: paired[k].astype(str) for k in context})
    display["A"] = paired["method_a"]
    display["B"] = paired["method_b"]
    display["paired episodes"] = paired["n_paired"].astype(str)
    display["ΔmIoU A−B (pts)"] = paired["diff"].map(_pct)
    display["95% CI"] = [f"[{_pct(lo)}, {_pct(hi)}]" for lo, hi in
                         zip(paired["ci_low"], paired["ci_high"])]
    display["P(A > B)"] = paired["p_a_better"].map(lambda x: _num(x, 3))
    display["significance"] = np.where(paired["significant"], "*", "n.s.")
    caption = ("Paired bootstrap of mIoU(A) − mIoU(B) (each at its own stored-threshold protocol) on "
               "the defective episodes both methods ran (joined on episode_id), resampled within "
               f"(repeat, class) with shared weights, {n_resamples} resamples. P(A > B): fraction of "
               "resamples where A beats B. n.s.: the 95% interval contains 0.")
    return Table("paired_differences", "Paired differences between methods", caption, display,
                 paired)


def per_class_table(agg: Aggregates) -> Table:
    data = agg.per_class
    column = data["method"].astype(str) + " " + data["shots"].astype(str) + "-shot"
    if "dataset" in agg.keys:
        column = data["dataset"].astype(str) + " " + column
    wide = (data.assign(_col=column, _cell=[f"{_pct(i)} / {_pct(o)}" for i, o in
                                            zip(data["iou"], data["oracle_iou"])])
            .pivot_table(index="class_id", columns="_col", values="_cell", aggfunc="first",
                         sort=True).fillna("–"))
    display = wide.reset_index()
    display.columns = [str(c) for c in display.columns]
    caption = ("Per-class foreground IoU pooled over all repeats: stored-threshold protocol / oracle "
               "IoU-max threshold (chosen on test labels).")
    return Table("per_class", "Per-class IoU (@protocol / oracle)", caption, display, data)


# --- writers ---------------------------------------------------------------------------------

def to_markdown(table: Table) -> str:
    def cell(i, column):
        text = str(table.display.iloc[i][column]).replace("|", "\\|")
        return f"**{text}**" if (int(table.display.index[i]), column) in table.bold else text

    columns = list(table.display.columns)
    lines = [f"### {table.title}", "", "| " + " | ".join(columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(i, c) for c in columns) + " |" for i in range(len(table.display))]
    return "\n".join(lines + ["", table.caption, ""])


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "±": r"$\pm$", "†": r"$^\dagger$", "−": "$-$",
                  "Δ": r"$\Delta$", "≥": r"$\geq$", "–": "--", "Σ": r"$\Sigma$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    columns = list(table.display.columns)
    spec = "l" * min(len(columns), 3) + "r" * max(len(columns) - 3, 0)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(table.title)}. {latex_escape(table.caption)}}}",
             rf"\label{{tab:{table.name.replace('_', '-')}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in columns) + r" \\", r"\midrule"]
    for i in range(len(table.display)):
        cells = []
        for column in columns:
            text = latex_escape(table.display.iloc[i][column])
            bold = (int(table.display.index[i]), column) in table.bold
            cells.append(rf"\textbf{{{text}}}" if bold else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def write_table(table: Table, out_dir: Path, formats) -> list[Path]:
    """Write ``table`` as ``<name>.md|csv|tex`` (those in ``formats``) under ``out_dir``."""
    written = []
    for fmt in formats:
        path = out_dir / f"{table.name}.{fmt}"
        if fmt == "md":
            path.write_text(to_markdown(table), encoding="utf-8")
        elif fmt == "csv":
            table.data.to_csv(path, index=False)
        elif fmt == "tex":
            path.write_text(to_latex(table), encoding="utf-8")
        else:
            raise ValueError(f"unknown table format {fmt!r} (md, csv, tex)")
        written.append(path)
    return written
