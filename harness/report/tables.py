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
from harness.report.operating import MIN_GOOD_IMAGES, wilson_interval


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


MIN_CLASS_EPISODES = 5  # a bootstrap CI from fewer defective episodes per (repeat, class) is flagged
AUROC_CHANCE_BELOW = 0.6  # pixel AUROC under this: the scores barely rank defect pixels first
FEW_EPISODES_MARK = "‡"


def protocol_label(protocol, threshold: float) -> str:
    """The threshold protocol as the console and the report print it: "fixed 0.50 (native)" for a
    method's fixed threshold, "deployable (fitted per episode, median 0.43)" for one fitted on
    support data per episode (``threshold_protocol`` declared by the method class in run.json, else
    inferred from whether the stored threshold varies)."""
    if not isinstance(protocol, str):
        return "– (no ok rows)"
    if protocol == "deployable":
        return f"deployable (fitted per episode, median {_num(threshold, 2)})"
    if protocol == "native":
        return f"fixed {_num(threshold, 2)} (native)"
    return f"{protocol} @{_num(threshold, 2)}"


def miou_text(mean: float, std: float, n_repeats) -> str:
    """"41.2 ± 3.1 (5 draws)" over several support draws; "41.2 (1 draw)" when there is one (no ± 0.0)."""
    if not np.isfinite(mean):
        return "–"
    if not np.isfinite(n_repeats) or int(n_repeats) <= 1:
        return f"{_pct(mean)} (1 draw)"
    return f"{_pct(mean)} ± {_pct(std)} ({int(n_repeats)} draws)"


def ci_text(low: float, high: float, min_class_episodes) -> str:
    """"[38.0, 44.1]", marked ‡ when some (repeat, class) stratum had < 5 defective episodes."""
    if not np.isfinite(low):
        return "–"
    few = np.isfinite(min_class_episodes) and min_class_episodes < MIN_CLASS_EPISODES
    return f"[{_pct(low)}, {_pct(high)}]" + (f" {FEW_EPISODES_MARK}" if few else "")


def fp_rate_text(x: float) -> str:
    """FP pixel rate in percent with three decimals (small rates stay visible), as everywhere."""
    if x is None or not np.isfinite(x):
        return "–"
    return "<0.001" if 0 < 100 * x < 0.0005 else f"{100 * x:.3f}"


def seconds_text(episodes_per_s: float) -> str:
    return "–" if not np.isfinite(episodes_per_s) or episodes_per_s <= 0 else f"{1 / episodes_per_s:.2f}"


IMAGE_AUROC_BELOW = 0.5  # image AUROC under chance: the image score ranks good parts above bad ones


def primary_budget(budgets) -> float:
    """The budget the verdict and the console's calibrated column use: the largest one."""
    return max(budgets)


def flags(row) -> list[str]:
    """Reasons to distrust a summary row: one support draw, a CI from few episodes, near chance,
    an image score below chance, a false-alarm figure from fewer than 20 good images."""
    return [text for text, _ in _flag_items(row)]


def short_flags(row) -> list[str]:
    """The console's short codes of :func:`flags` (legend: :data:`SHORT_FLAG_LEGEND`)."""
    return [code for _, code in _flag_items(row)]


SHORT_FLAG_LEGEND = ("flags: 1draw = one support draw (no spread); few-ep = a 95% CI from < 5 episodes in "
                     "a class; px~50 = pixel AUROC < 60 %; img<50 = image AUROC < 50 % (worse than chance); "
                     "good<20 = a false-alarm figure from fewer than 20 good images; trained = scored on classes its "
                     "weights were trained on (--allow-trained-classes: not novel); inert = a training switch "
                     "that could not act on its training data (the ablation changes nothing)")


NOTE_SEPARATOR = " | "  # between a method's training notes in the summary's ``method_notes`` column


def _flag_items(row) -> list[tuple[str, str]]:
    out = []
    repeats = row.get("n_repeats", np.nan)
    if np.isfinite(row.get("miou_mean", np.nan)) and (not np.isfinite(repeats) or repeats <= 1):
        out.append(("1 draw: no spread over supports", "1draw"))
    few = row.get("min_class_episodes", np.nan)
    if np.isfinite(few) and few < MIN_CLASS_EPISODES:
        out.append((f"CI from {int(few)} episode(s) in a class (< {MIN_CLASS_EPISODES})", "few-ep"))
    auroc = row.get("pixel_auroc", np.nan)
    if np.isfinite(auroc) and auroc < AUROC_CHANCE_BELOW:
        out.append((f"near chance: pixel AUROC {_pct(auroc)} % < {100 * AUROC_CHANCE_BELOW:g} %", "px~50"))
    image_auroc = row.get("image_auroc", np.nan)
    if np.isfinite(image_auroc) and image_auroc < IMAGE_AUROC_BELOW:
        out.append((f"image AUROC {_pct(image_auroc)} % < 50 %: the image score ranks good parts above "
                    "defective ones", "img<50"))
    good = [(n, what) for n, what in ((row.get("n_good_test", np.nan), "test good parts"),
                                      (row.get("calibration_images", np.nan), "calibration images per draw"))
            if isinstance(n, (int, float, np.integer, np.floating)) and np.isfinite(n) and 0 < n < MIN_GOOD_IMAGES]
    if good:
        out.append(("false alarms from " + " and ".join(f"{int(n)} {what}" for n, what in good)
                    + f" (< {MIN_GOOD_IMAGES})", "good<20"))
    trained = row.get("n_trained_classes", 0)
    if isinstance(trained, (int, np.integer)) and trained > 0:
        out.append((f"{int(trained)} class(es) its weights were trained on (--allow-trained-classes): not novel",
                    "trained"))
    notes = row.get("method_notes")
    for note in notes.split(NOTE_SEPARATOR) if isinstance(notes, str) and notes else ():
        out.append((note.split(":")[0] + " (run.json: methods.<method>.trained_on.notes)", "inert"))
    return out


# Summary header -> aggregate column, each shown as a percentage.
PERCENT_COLUMNS = (
    ("FB-IoU % (@protocol)", "fb_iou"),
    ("mIoU % (oracle)", "oracle_miou"),
    ("pixel AUROC % (thr-free)", "pixel_auroc"),
    ("pixel AP % (thr-free)", "pixel_ap"),
    ("F1-max % (oracle)", "f1_max"),
    ("image AUROC % (thr-free)", "image_auroc"),
    ("image AP % (thr-free)", "image_ap"),
    ("image F1-max % (oracle)", "image_f1_max"),
    ("AUPRO % ≤30% FPR (thr-free)", "aupro"),
    ("AUPRO % ≤5% FPR (thr-free)", "aupro_5"),
    ("class-mean pixel AUROC % (thr-free)", "class_mean_pixel_auroc"),
    ("class-mean image AUROC % (thr-free)", "class_mean_image_auroc"),
    ("class-mean AUPRO % (thr-free)", "class_mean_aupro"),
    ("comp. recall touch % (@protocol)", "comp_recall_touch"),
    ("comp. recall ≥50% % (@protocol)", "comp_recall_half"),
    ("false-alarm rate % (@protocol)", "false_alarm_rate"),
)


def summary_table(agg: Aggregates, intervals: pd.DataFrame, paired: pd.DataFrame,
                  n_resamples: int) -> Table:
    """The one summary table: the report's section, ``summary.md/csv`` and the console rows
    (``console_table`` of it) all come from here."""
    keys = agg.keys
    data = agg.summary.merge(intervals[keys + ["ci_low", "ci_high"]], on=keys, how="left")
    if "min_class_episodes" not in data:
        data["min_class_episodes"] = np.nan
    display = pd.DataFrame({k: data[k].astype(str) for k in keys})
    display["protocol"] = [protocol_label(p, t) for p, t in
                           zip(data["threshold_protocol"], data["threshold"])]
    display["episodes"] = data["n_episodes"].astype(str)
    display["failed"] = data["n_failed"].astype(str)
    display["mIoU % (@protocol)"] = [miou_text(m, s, r) for m, s, r in
                                     zip(data["miou_mean"], data["miou_std"], data["n_repeats"].astype(float))]
    display["mIoU 95% CI"] = [ci_text(lo, hi, n) for lo, hi, n in
                              zip(data["ci_low"], data["ci_high"], data["min_class_episodes"].astype(float))]
    for header, column in PERCENT_COLUMNS:
        display[header] = data[column].map(_pct)
    display["FP px rate % (@protocol)"] = data["fp_pixel_rate"].map(fp_rate_text)
    display["FP blobs/img (@protocol)"] = data["fp_blobs_per_image"].map(lambda x: _num(x, 2))
    for header, cells in operating_columns(data, agg.operating.budgets if agg.operating else ()):
        display[header] = cells
    display["s/episode"] = data["episodes_per_s"].astype(float).map(seconds_text)
    display["flags"] = ["; ".join(flags(row)) or "–" for row in data.to_dict("records")]
    bold = _mark_best(data, display, keys, paired)
    caption = (
        "mIoU: per repeat (support draw), foreground IoU pooled per class (ΣTP/Σ(TP+FP+FN) over the "
        "class's defective queries), unweighted mean over classes; mean ± std (ddof=0) over repeats "
        "('1 draw' when there is one support draw: no spread to show). "
        f"95% CI: percentile bootstrap over episodes within (repeat, class), {n_resamples} resamples; "
        f"{FEW_EPISODES_MARK} = some (repeat, class) had fewer than {MIN_CLASS_EPISODES} defective "
        "episodes, so the interval is too narrow to trust. "
        "FB-IoU: mean of fg and bg IoU pooled over all defective queries. Oracle mIoU: per class the "
        "IoU-max threshold of the pooled 64-bin score histogram (chosen on test labels: upper bound). "
        "Pixel AUROC/AP/F1-max: from the summed histograms of all queries. Image AUROC/AP/F1-max: "
        "per-query max score, defective vs normal queries (exact; F1-max at the best image threshold). "
        "AUPRO: area under per-region overlap vs pixel FPR up to 30 % FPR, / 0.3 (MVTec AD, anomalib), "
        "at the 64 histogram bin edges. Component recall: GT components found, 'touch' = >= 1 "
        "predicted pixel inside, '≥50%' = at least half of its pixels predicted. False alarms and FP "
        "pixel rate (ΣFP/Σ(FP+TN), in %): normal queries only. @protocol: at the stored threshold of "
        "the row's protocol (fixed = the method's own threshold; deployable = fitted on support data "
        "per episode). All rates in %. Bold: best mIoU per shot; † = not significantly better than the "
        "runner-up (paired bootstrap, 95% CI of the difference contains 0). " + OPERATING_CAPTION +
        f" flags: 1 draw, CI from few episodes, near chance (pixel AUROC < {100 * AUROC_CHANCE_BELOW:g} %; "
        f"chance = 50 %), image AUROC < 50 %, false alarms from fewer than {MIN_GOOD_IMAGES} good images, "
        "classes the method's weights were trained on (scored with --allow-trained-classes: not novel), a "
        "training switch that could not act on the training data (an ablation identical to the full recipe).")
    return Table("summary", "Summary per method and shots", caption, display, data, bold)


OPERATING_CAPTION = (
    "Operating points (image score = the query's max pixel score; a query or GT component is flagged "
    "when its score is > t): '@≤B% FA (test good)' sets t on the normal test queries so that at most B % "
    "of them exceed it (np.quantile(scores, 1 − B/100, method='higher')) — threshold-free, fitted on the "
    "good parts it is judged on; image recall = defective queries flagged [Wilson 95 % CI]; comp. recall "
    "= GT components whose max score is > t; small = components under 0.3 % of the image. PG95 = good "
    "parts passed at the highest threshold that still flags 95 % of defective queries. 'cal.' = "
    "deployable: t set on held-out good parts alone (--calibration-normals, never queries or "
    "supports; one per class support draw), then applied to the test queries: false alarms on good "
    "parts [Wilson 95 % CI] (n), recall of defective parts and of GT components.")


def _recall_ci_text(value, low, high) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{_pct(value)} [{_pct(low, 0)}, {_pct(high, 0)}]"


def _share_text(value, low, high, n) -> str:
    """"62.5 % (95 % CI 41–80 %, n=32)" for the verdict."""
    if value is None or not np.isfinite(value):
        return "– %"
    return f"{_pct(value)} % (95 % CI {_pct(low, 0)}–{_pct(high, 0)} %, n={int(n)})"


def operating_columns(data: pd.DataFrame, budgets) -> list[tuple[str, list[str]]]:
    """Display columns of the operating points (``operating.py``) for the summary table."""
    columns = []
    get = lambda name: data[name] if name in data else pd.Series(np.nan, index=data.index)  # noqa: E731
    for budget in budgets:
        b = f"{budget:g}"
        columns.append((f"image recall % @≤{b}% FA (test good)",
                        [_recall_ci_text(v, lo, hi) for v, lo, hi in zip(get(f"image_recall@fa{b}"),
                                                                       get(f"image_recall@fa{b}_low"),
                                                                       get(f"image_recall@fa{b}_high"))]))
        columns.append((f"comp. recall % @≤{b}% FA (test good)", list(get(f"comp_recall@fa{b}").map(_pct))))
        columns.append((f"small-defect comp. recall % @≤{b}% FA (test good)",
                        list(get(f"comp_recall_small@fa{b}").map(_pct))))
    columns.append(("PG95 % good passed (test)", list(get("good_passed@recall95").map(_pct))))
    for budget in budgets:
        b = f"{budget:g}"
        columns.append((f"cal. false alarms % @{b}% [CI] (n)",
                        [calibrated_fa_text(v, lo, hi, n) for v, lo, hi, n in zip(
                            get(f"calibrated_false_alarm@fa{b}"), get(f"calibrated_false_alarm@fa{b}_low"),
                            get(f"calibrated_false_alarm@fa{b}_high"), get(f"calibrated_false_alarm@fa{b}_n"))]))
        columns.append((f"cal. image recall % @{b}%", list(get(f"calibrated_image_recall@fa{b}").map(_pct))))
        columns.append((f"cal. comp. recall % @{b}%", list(get(f"calibrated_comp_recall@fa{b}").map(_pct))))
    return columns


def calibrated_fa_text(value, low, high, n, with_n: bool = True) -> str:
    """"7.5 [3.2, 16] (n=120)"; "–" without calibration."""
    text = _recall_ci_text(value, low, high)
    return text + (f" (n={int(n)})" if with_n and text != "–" else "")


def console_table(table: Table, budgets) -> pd.DataFrame:
    """The console's compact view of the summary (fits 120 columns): method, shots, mIoU, pixel and
    image AUROC, image recall at each budget (threshold set on the test's good parts), the
    calibrated false alarms at the largest budget [Wilson 95 % CI], short flags."""
    data = table.data
    keys = [k for k in ("dataset", "method", "shots") if k in data.columns]
    frame = pd.DataFrame({k: data[k].astype(str) for k in keys})
    frame["mIoU"] = data["miou_mean"].map(_pct)
    frame["pxAUROC"] = data["pixel_auroc"].map(_pct)
    frame["imgAUROC"] = data["image_auroc"].map(_pct)
    for budget in budgets:
        b = f"{budget:g}"
        column = f"image_recall@fa{b}"
        frame[f"rec@fa{b}"] = data[column].map(_pct) if column in data else "–"
    b = f"{primary_budget(budgets):g}" if budgets else None
    if b is not None and f"calibrated_false_alarm@fa{b}" in data:
        frame[f"calFA@{b} [CI]"] = [calibrated_fa_text(v, lo, hi, n, with_n=False) for v, lo, hi, n in zip(
            data[f"calibrated_false_alarm@fa{b}"], data[f"calibrated_false_alarm@fa{b}_low"],
            data[f"calibrated_false_alarm@fa{b}_high"], data[f"calibrated_false_alarm@fa{b}_n"])]
    frame["flags"] = [",".join(short_flags(row)) or "–" for row in data.to_dict("records")]
    return frame


def verdict(table: Table, paired: pd.DataFrame, budgets=(1.0, 5.0)) -> list[str]:
    """One paragraph per shot count (and dataset), decision first: at <= B % false alarms on good
    parts (the largest budget), which method finds most defective parts and small defects, with
    intervals; then its deployable (calibrated) false alarms; then the mIoU ranking."""
    data = table.data
    if not budgets or f"image_recall@fa{primary_budget(budgets):g}" not in data:
        return miou_verdict(table, paired)
    b = f"{primary_budget(budgets):g}"
    keys = [k for k in ("dataset", "method", "shots") if k in data.columns]
    context = [k for k in keys if k != "method"]
    mious = dict(zip(_context_tuples(data, context), miou_verdict(table, paired, with_flags=False)))
    sentences = []
    for group, block in data.groupby(context, sort=True, observed=True):
        group = group if isinstance(group, tuple) else (group,)
        where = ", ".join(f"{v}-shot" if k == "shots" else str(v) for k, v in zip(context, group))
        ranked = block.dropna(subset=[f"image_recall@fa{b}"]).sort_values(
            [f"image_recall@fa{b}", f"comp_recall_small@fa{b}"], ascending=False)
        if ranked.empty:
            sentences.append(f"{where}: no method has defective and good test queries to set a {b} % "
                             "false-alarm budget on. " + mious.get(group, ""))
            continue
        best = ranked.iloc[0]
        n_good = int(best.get("n_good_test", 0))
        text = (f"{where}: at ≤ {b} % false alarms on good parts (threshold set on the test's {n_good} good "
                f"parts), {best['method']} finds "
                + _share_text(best[f"image_recall@fa{b}"], best[f"image_recall@fa{b}_low"],
                              best[f"image_recall@fa{b}_high"], best["n_defective_test"])
                + " of defective parts")
        if np.isfinite(best.get(f"comp_recall_small@fa{b}", np.nan)):
            text += (" and " + _share_text(best[f"comp_recall_small@fa{b}"], best[f"comp_recall_small@fa{b}_low"],
                                           best[f"comp_recall_small@fa{b}_high"], best["n_small_components"])
                     + " of defects under 0.3 % of the image")
        text += f"; mIoU {_pct(best['miou_mean'])} % at its own threshold"
        others = [f"{row['method']} {_pct(row[f'image_recall@fa{b}'])} %" for _, row in ranked.iloc[1:].iterrows()]
        if others:
            text += "; others: " + ", ".join(others)
        calibrated = best.get(f"calibrated_false_alarm@fa{b}", np.nan)
        if np.isfinite(calibrated):
            text += (f". Deployable, with its threshold set on {int(best['calibration_images'])} held-out good "
                     f"parts per support draw: {best['method']} raises false alarms on "
                     + _share_text(calibrated, best[f"calibrated_false_alarm@fa{b}_low"],
                                   best[f"calibrated_false_alarm@fa{b}_high"], best[f"calibrated_false_alarm@fa{b}_n"])
                     + f" of good parts and finds {_pct(best[f'calibrated_image_recall@fa{b}'])} % of defective parts")
        else:
            text += ". No calibrated (deployable) threshold: no held-out good parts (--calibration-normals)"
        problems = flags(best)
        if problems:
            text += f" [{'; '.join(problems)}]"
        sentences.append(text + ". By mIoU: " + mious.get(group, ""))
    return sentences


def _context_tuples(data: pd.DataFrame, context: list[str]) -> list[tuple]:
    return [g if isinstance(g, tuple) else (g,) for g, _ in data.groupby(context, sort=True, observed=True)]


def miou_verdict(table: Table, paired: pd.DataFrame, with_flags: bool = True) -> list[str]:
    """One sentence per shot count (and dataset): the best method by mIoU, its CI, and whether it
    is significantly better than the runner-up (paired bootstrap)."""
    data = table.data
    keys = [k for k in ("dataset", "method", "shots") if k in data.columns]
    context = [k for k in keys if k != "method"]
    sentences = []
    for group, block in data.groupby(context, sort=True, observed=True):
        group = group if isinstance(group, tuple) else (group,)
        ranked = block.dropna(subset=["miou_mean"]).sort_values("miou_mean", ascending=False)
        where = ", ".join(f"{v}-shot" if k == "shots" else str(v) for k, v in zip(context, group))
        if ranked.empty:
            sentences.append(f"{where}: no method has a finite mIoU.")
            continue
        best = ranked.iloc[0]
        ci = ci_text(best.get("ci_low", np.nan), best.get("ci_high", np.nan),
                     float(best.get("min_class_episodes", np.nan)))
        draws = float(best["n_repeats"])
        spread = (f" ± {_pct(best['miou_std'])} over {int(draws)} draws" if np.isfinite(draws) and draws > 1
                  else " (1 draw)")
        text = (f"{where}: best is {best['method']} with mIoU {_pct(best['miou_mean'])} %{spread} "
                f"(95% CI {ci}, {protocol_label(best['threshold_protocol'], best['threshold'])})")
        if len(ranked) > 1:
            second = ranked.iloc[1]
            a, b = sorted([best["method"], second["method"]])
            match = paired[(paired["method_a"] == a) & (paired["method_b"] == b)]
            for k, v in zip(context, group):
                match = match[match[k] == v]
            if len(match) and np.isfinite(match["ci_low"].iloc[0]):
                significant = bool(match["significant"].iloc[0])
                text += (f"; {'significantly' if significant else 'not significantly'} better than "
                         f"{second['method']} ({_pct(second['miou_mean'])} %, paired bootstrap)")
            else:
                text += f"; runner-up {second['method']} ({_pct(second['miou_mean'])} %), not paired"
        problems = flags(best) if with_flags else []
        if problems:
            text += f" [{'; '.join(problems)}]"
        sentences.append(text + ".")
    return sentences


def _mark_best(data: pd.DataFrame, display: pd.DataFrame, keys: list[str],
               paired: pd.DataFrame) -> set[tuple[int, str]]:
    bold = set()
    context = [k for k in keys if k != "method"]
    for _, block in data.groupby(context, sort=False, observed=True):
        ranked = block.sort_values("miou_mean", ascending=False)
        if ranked["miou_mean"].isna().all():
            continue
        best = ranked.index[0]
        bold.add((int(best), "mIoU % (@protocol)"))
        if len(ranked) < 2:
            continue
        a, b = sorted([data.at[best, "method"], data.at[ranked.index[1], "method"]])
        match = paired[(paired["method_a"] == a) & (paired["method_b"] == b)]
        for k in context:
            match = match[match[k] == data.at[best, k]]
        if len(match) and not bool(match["significant"].iloc[0]):
            display.at[best, "mIoU % (@protocol)"] += " †"
    return bold


def size_table(agg: Aggregates) -> Table:
    data = agg.size_miou.merge(agg.summary[agg.keys + ["threshold_protocol", "threshold"]], on=agg.keys)
    data = data[data["n_episodes"] > 0]
    display = _wide(data, agg.keys, "size_bin",
                    lambda r: f"{_pct(r['miou'])} (n={int(r['n_episodes'])})")
    caption = ("mIoU (@protocol) per GT-area-fraction bin (half-open bins): per class, IoU pooled over the "
               "class's defective queries in the bin; mean over the classes present in the bin. "
               "n = episodes in the bin, all repeats pooled.")
    return Table("size_miou", "Size-stratified mIoU (GT area fraction)", caption, display, data)


def component_table(agg: Aggregates) -> Table:
    data = agg.component_recall.merge(agg.summary[agg.keys + ["threshold_protocol", "threshold"]], on=agg.keys)
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
    data = data.assign(_cell=[cell(r) for _, r in data.iterrows()] if len(data) else [],
                       protocol=[protocol_label(p, t) for p, t in zip(data["threshold_protocol"], data["threshold"])])
    wide = data.pivot_table(index=keys + ["protocol"], columns=bin_column, values="_cell",
                            aggfunc="first", observed=True, sort=True)
    wide = wide.reset_index().fillna("–")
    wide.columns = [str(c) for c in wide.columns]
    return wide.astype(str)


def false_alarm_table(agg: Aggregates) -> Table:
    """Normal (defect-free) queries only: how often and how much a method fires where there is nothing."""
    data = agg.summary[agg.keys + ["threshold_protocol", "threshold", "n_normal", "false_alarm_rate",
                                   "fp_pixel_rate", "fp_blobs_per_image"]].copy()
    display = pd.DataFrame({k: data[k].astype(str) for k in agg.keys})
    display["protocol"] = [protocol_label(p, t) for p, t in zip(data["threshold_protocol"], data["threshold"])]
    display["normal queries"] = data["n_normal"].astype(str)
    display["false-alarm rate % (@protocol)"] = data["false_alarm_rate"].map(_pct)
    display["95% CI (Wilson)"] = [_wilson_text(rate, n) for rate, n in zip(data["false_alarm_rate"], data["n_normal"])]
    display["FP px rate % (@protocol)"] = data["fp_pixel_rate"].map(fp_rate_text)
    display["FP blobs/img (@protocol)"] = data["fp_blobs_per_image"].map(lambda x: _num(x, 2))
    caption = ("Normal queries only, at the stored threshold. False-alarm rate: % of normal images with "
               "any predicted pixel, with a Wilson 95 % interval over the normal queries; FP px rate: "
               "ΣFP/Σ(FP+TN) over their pixels, in %; FP blobs/img: mean predicted connected components "
               "per normal image.")
    return Table("false_alarms", "False alarms on defect-free queries", caption, display, data)


def _wilson_text(rate, n) -> str:
    if rate is None or not np.isfinite(rate) or not n:
        return "–"
    low, high = wilson_interval(int(round(rate * n)), int(n))
    return f"[{_pct(low, 0)}, {_pct(high, 0)}] (n={int(n)})"


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
    """One row per class and method x shots: IoU (@protocol) and oracle IoU, pixel AUROC (the class's
    defective queries), image AUROC (its defective vs normal queries), AUPRO."""
    data = agg.per_class.sort_values(["class_id"] + agg.keys, kind="stable").reset_index(drop=True)
    display = pd.DataFrame({"class": data["class_id"].astype(str)})
    for k in agg.keys:
        display[k] = data[k].astype(str)
    display["defective queries"] = data["n_episodes"].astype(str)
    display["IoU % (@protocol)"] = data["iou"].map(_pct)
    display["IoU % (oracle)"] = data["oracle_iou"].map(_pct)
    display["pixel AUROC % (thr-free)"] = data["pixel_auroc"].map(_pct)
    display["image AUROC % (thr-free)"] = data["image_auroc"].map(_pct) if "image_auroc" in data else "–"
    display["AUPRO % ≤30% FPR (thr-free)"] = data["aupro"].map(_pct) if "aupro" in data else "–"
    trained = data["trained_class"].to_numpy(bool) if "trained_class" in data else np.zeros(len(data), bool)
    if trained.any():
        display["training class"] = np.where(trained, "yes (not novel)", "–")
    caption = ("Per class, all repeats pooled: foreground IoU at the stored threshold and at the class's "
               "IoU-max threshold (oracle: chosen on test labels); pixel AUROC over the class's defective "
               "queries; image AUROC of its defective vs its normal queries (max score); AUPRO of its GT "
               "components against the negatives of all its queries (FPR ≤ 30 %). The summary's "
               "class-mean columns are the unweighted means of these over classes; mIoU is the mean of IoU."
               + (" 'training class': the method's weights were trained on it (scored with "
                  "--allow-trained-classes), so its figures are not few-shot figures on a novel class."
                  if trained.any() else ""))
    return Table("per_class", "Per-class figures", caption, display, data)


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


def operating_table(agg: Aggregates) -> Table:
    """One row per method, shots and budget: the threshold set on the test's good parts and what it
    flags, PG95, and the deployable (calibrated) false alarms and recall."""
    op = agg.operating
    data = agg.summary.copy()
    out = []
    for _, row in data.iterrows():
        for budget in op.budgets:
            b = f"{budget:g}"
            value = lambda name: row.get(f"{name}@fa{b}", np.nan)  # noqa: E731
            entry = {k: str(row[k]) for k in agg.keys}
            entry.update({
                "budget (good parts alarmed)": f"≤{b}%",
                "good / defective test queries": f"{_int_text(row.get('n_good_test'))} / "
                                                 f"{_int_text(row.get('n_defective_test'))}",
                "t (test good)": _num(value("threshold"), 4),
                "image recall % [CI]": _recall_ci_text(value("image_recall"), row.get(f"image_recall@fa{b}_low", np.nan),
                                                       row.get(f"image_recall@fa{b}_high", np.nan)),
                "comp. recall %": _pct(value("comp_recall")),
                "comp. < 0.3 % of image, recall %": _pct(value("comp_recall_small")),
                "PG95 %": _pct(row.get("good_passed@recall95", np.nan)),
                "cal. false alarms % [CI] (n)": calibrated_fa_text(
                    value("calibrated_false_alarm"), row.get(f"calibrated_false_alarm@fa{b}_low", np.nan),
                    row.get(f"calibrated_false_alarm@fa{b}_high", np.nan), row.get(f"calibrated_false_alarm@fa{b}_n", 0)),
                "cal. image recall %": _pct(value("calibrated_image_recall")),
                "cal. comp. recall %": _pct(value("calibrated_comp_recall")),
                "flags": "; ".join(flags(row)) or "–",
            })
            out.append(entry)
    display = pd.DataFrame(out) if out else pd.DataFrame(columns=agg.keys)
    columns = agg.keys + [c for c in data.columns if "@fa" in c or c in (
        "n_good_test", "n_defective_test", "n_components_scored", "n_small_components", "good_passed@recall95",
        "calibration_images", "image_auroc")]
    return Table("operating_points", "Operating points: defect recall at a false-alarm budget on good parts",
                 OPERATING_CAPTION, display, data[list(dict.fromkeys(columns))])


def _int_text(x) -> str:
    return "–" if x is None or not np.isfinite(x) else str(int(x))


def operating_size_table(agg: Aggregates) -> Table:
    """GT-component recall per GT-area-fraction bin at each budget: threshold-free / calibrated."""
    data = agg.operating.by_size.copy()
    data["budget_label"] = data["budget"].map(lambda b: f"≤{b:g}% FA")
    cell = lambda r: (f"{_pct(r['recall'])} / {_pct(r['calibrated_recall'])} (n={int(r['n_components'])})")  # noqa: E731
    data["_cell"] = [cell(r) for _, r in data.iterrows()] if len(data) else []
    wide = data.pivot_table(index=agg.keys + ["budget_label"], columns="size_bin", values="_cell",
                            aggfunc="first", observed=True, sort=True)
    labels = [c for c in agg.size_miou["size_bin"].cat.categories if c in wide.columns] if len(wide) else []
    display = wide[labels].reset_index().fillna("–") if len(wide) else pd.DataFrame(columns=agg.keys)
    display.columns = [str(c) for c in display.columns]
    caption = ("GT components found per GT-area-fraction bin of the component (its pixels / the image's), "
               "at each false-alarm budget: threshold set on the test's good parts / calibrated (deployable) "
               "threshold; n = GT components, all repeats pooled. A component is found when its max score "
               "is > t: no 'touch' rule can favour a method that floods the image, since t is set where "
               "good parts stay below it.")
    return Table("operating_points_by_size", "Component recall at a false-alarm budget, by defect size",
                 caption, display.astype(str), data.drop(columns=["_cell"]))
