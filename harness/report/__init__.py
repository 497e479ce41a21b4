"""The report stage: episode rows of one or more runs -> tables, plots and one offline HTML page.

``build_report(run_dirs, out_dir)`` is the only door in (``bench.py report`` calls it):

- ``aggregate.py``  pooled numbers per (method, shots) — vectorised group-bys over the rows;
- ``confidence.py`` bootstrap intervals for mIoU and paired method differences;
- ``tables.py``     display tables and their Markdown / CSV / LaTeX files;
- ``plots.py``      PNG figures; ``overlays.py`` qualitative examples; ``html.py`` the page.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from harness.report import plots
from harness.report.aggregate import (DEFAULT_COMPONENT_EDGES_PX, DEFAULT_SIZE_EDGES, Aggregates,
                                      aggregate)
from harness.report.confidence import confidence_tables
from harness.report.html import SECTIONS, render_report
from harness.report.load import MethodSource, coverage_notes, load_runs
from harness.report.operating import DEFAULT_FA_BUDGETS, operating_points, split_calibration
from harness.report.overlays import (PixelSource, episode_figure, largest_disagreements,
                                     pick_examples, prediction_sweeps)
from harness.report.tables import (NOTE_SEPARATOR, Table, component_table, false_alarm_table, operating_size_table,
                                   operating_table, paired_table, per_class_table, size_table,
                                   summary_table, verdict, write_table)

__all__ = ["ReportResult", "build_report", "SECTIONS"]


@dataclass
class ReportResult:
    """What ``build_report`` wrote, and the numbers behind it."""

    out_dir: Path
    html_path: Path
    tables: dict[str, Table]  # name -> table (``.data`` has the raw numbers)
    aggregates: Aggregates
    files: list[Path] = field(default_factory=list)  # every file written
    plots: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why
    verdict: list[str] = field(default_factory=list)  # the report's opening paragraph, one sentence per shot


def _declared_protocols(sources: dict[str, MethodSource]) -> dict[str, str]:
    declared = {}
    for label, source in sources.items():
        protocol = source.run.record.method_protocol(source.method) if source.run.record else None
        if protocol:
            declared[label] = protocol
    return declared


def _method_notes(sources: dict[str, MethodSource]) -> dict[str, tuple[str, ...]]:
    """Per method label, the notes of what its weights were trained on (run.json
    ``methods.<m>.trained_on.notes``, ``harness.class_split``): a training switch that could not act."""
    notes = {}
    for label, source in sources.items():
        spec = source.run.record.methods.get(source.method) if source.run.record else None
        record = spec.get("trained_on") if isinstance(spec, dict) else None
        if isinstance(record, dict) and isinstance(record.get("notes"), list):
            notes[label] = tuple(str(n) for n in record["notes"])
    return notes


def training_notes(agg: Aggregates, sources: dict[str, MethodSource]) -> list[str]:
    """One line per method scored on classes its weights were trained on, and per training note."""
    lines = []
    for label, notes in sorted(_method_notes(sources).items()):
        lines += [f"{label}: {note}" for note in notes]
    trained = agg.per_class[agg.per_class["trained_class"]] if "trained_class" in agg.per_class else agg.per_class[:0]
    for method, block in trained.groupby("method", sort=True):
        lines.append(f"{method}: scored on {block['class_id'].nunique()} class(es) its weights were trained on "
                     f"({', '.join(sorted(block['class_id'].unique()))}; --allow-trained-classes): not novel, "
                     "marked in the per-class table")
    return lines


def _run_rates(sources: dict[str, MethodSource]) -> dict[str, float]:
    """Episodes/s of each method's whole run (all methods) from run.json ``elapsed_s``."""
    rates = {}
    for label, source in sources.items():
        elapsed = source.run.record.elapsed_s if source.run.record else None
        if isinstance(elapsed, (int, float)) and elapsed > 0:
            rates[label] = source.run.n_rows / elapsed
    return rates


def summarise(rows: pd.DataFrame, sources: dict[str, MethodSource], *, size_edges=DEFAULT_SIZE_EDGES,
              component_edges_px=DEFAULT_COMPONENT_EDGES_PX, bootstrap: int = 1000, seed: int = 0,
              fa_budgets=DEFAULT_FA_BUDGETS):
    """Every number of the summary: ``(aggregates, intervals, paired, defective ok rows)``.

    The one aggregation path: ``build_report`` and the console table after a run
    (``harness.summary``) both call this, then ``tables.summary_table``. Calibration rows (held-out
    good parts, schema 4) enter only the calibrated operating points (``operating.py``).
    """
    rows, calibration = split_calibration(rows)
    agg = aggregate(rows, size_edges=tuple(size_edges), component_edges_px=tuple(component_edges_px),
                    declared_protocols=_declared_protocols(sources), run_rates=_run_rates(sources))
    notes = _method_notes(sources)
    agg.summary["method_notes"] = [NOTE_SEPARATOR.join(notes.get(m, ())) for m in agg.summary["method"]]
    agg.operating = operating_points(rows, calibration, agg.keys, budgets=fa_budgets, size_edges=tuple(size_edges))
    agg.summary = agg.summary.merge(agg.operating.summary, on=agg.keys, how="left")
    # Scalar columns only: copying the list columns (histograms) of a million rows is slow.
    scalars = [c for c in rows.columns if not isinstance(rows[c].dtype, pd.ArrowDtype)]
    keep = (rows["status"] == "ok").to_numpy() & ~rows["query_is_normal"].astype(bool).to_numpy()
    defective = rows.loc[keep, scalars]
    intervals, paired = confidence_tables(defective, agg.keys, n_resamples=max(bootstrap, 1), seed=seed)
    if bootstrap <= 0:
        intervals[["ci_low", "ci_high"]] = float("nan")
        paired[["ci_low", "ci_high", "p_a_better"]] = float("nan")
        paired["significant"] = False
    return agg, intervals, paired, defective


def build_report(run_dirs: list[Path], out_dir: Path, **options) -> ReportResult:
    """Read the runs, write tables, PNG plots and ``report.html`` into ``out_dir`` (the options of
    :func:`write_report`).

    The files are written into a fresh folder beside ``out_dir`` and renamed into it, the old
    ``report.html`` removed first and the new one moved last: a kill never leaves new tables beside
    an old page, and a link planted in ``out_dir`` is replaced, not written through. An ``out_dir``
    inside a run folder that is itself a link is refused.
    """
    from harness.io import publish_files, staging_folder
    from harness.store import StoreError

    out_dir = Path(out_dir)
    for run_dir in map(Path, run_dirs):
        if out_dir.is_symlink() and out_dir.parent.resolve() == run_dir.resolve():
            raise StoreError(f"{out_dir}: is a symbolic link inside the run folder; remove it or pass --out")
    staging = staging_folder(out_dir)
    try:
        result = write_report(run_dirs, staging, **options)
        moved = publish_files(staging, out_dir, last=result.html_path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return replace(result, out_dir=out_dir, html_path=moved[result.html_path],
                   files=[moved.get(path, path) for path in result.files],
                   plots={name: moved.get(path, path) for name, path in result.plots.items()})


def write_report(run_dirs: list[Path], out_dir: Path, *, formats=("md", "csv", "tex"),
                 per_class: bool = False, size_edges=DEFAULT_SIZE_EDGES,
                 component_edges_px=DEFAULT_COMPONENT_EDGES_PX, bootstrap: int = 1000,
                 seed: int = 0, max_overlay_disagreements: int = 4,
                 fa_budgets=DEFAULT_FA_BUDGETS) -> ReportResult:
    """Read the runs, write tables (``formats``), PNG plots and ``report.html`` into ``out_dir``.

    Several runs are compared side by side; a method name present in more than one run is shown
    as ``<run folder>:<method>``. ``bootstrap`` resamples (0 disables the intervals);
    ``seed`` makes them reproducible.
    """
    unknown = set(formats) - {"md", "csv", "tex"}
    if unknown:
        raise ValueError(f"report: unknown table format(s) {sorted(unknown)} (known: md, csv, tex)")
    for name, edges in (("size_edges", size_edges), ("component_edges_px", component_edges_px)):
        if not len(edges) or list(edges) != sorted(set(edges)) or edges[0] <= 0:
            raise ValueError(f"report: {name} must be increasing positive numbers, got {tuple(edges)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, runs, sources = load_runs([Path(p) for p in run_dirs])
    agg, intervals, paired, defective = summarise(rows, sources, size_edges=size_edges,
                                                  component_edges_px=component_edges_px,
                                                  bootstrap=bootstrap, seed=seed, fa_budgets=fa_budgets)

    section_notes: dict[str, list[str]] = {"summary": coverage_notes(rows, sources) + training_notes(agg, sources)}
    tables = {"summary": summary_table(agg, intervals, paired, bootstrap),
              "operating": operating_table(agg), "operating_size": operating_size_table(agg),
              "size": size_table(agg), "components": component_table(agg),
              "false_alarms": false_alarm_table(agg), "paired": paired_table(paired, bootstrap)}
    if per_class:
        tables["per_class"] = per_class_table(agg)
    else:
        section_notes["per_class"] = ["Per-class table not requested (per_class=True / --per-class); "
                                      "the per-class heatmap is under Plots."]
    if paired.empty:
        section_notes["paired"] = ["Only one method per shot: nothing to pair."]
    files = [path for table in tables.values() for path in write_table(table, out_dir, formats)]

    pixels = PixelSource(runs, sources)
    sweeps = {}
    if pixels.has_predictions():
        sweeps = prediction_sweeps(pixels, defective, agg.keys)
        if not sweeps:
            section_notes["plots"] = ["Stored predictions exist but no GT masks could be read: the "
                                      "threshold sweep shows the histogram curves only."]
    plot_paths = {
        "recall_vs_false_alarm": plots.recall_vs_false_alarm(agg, out_dir / "recall_vs_false_alarm.png"),
        "size_curve": plots.size_curve(agg, out_dir / "size_curve.png"),
        "false_alarm_vs_miou": plots.false_alarm_vs_miou(agg, out_dir / "false_alarm_vs_miou.png"),
        "class_heatmap": plots.class_heatmap(agg, out_dir / "class_heatmap.png"),
        "threshold_sweep": plots.threshold_sweep(agg, out_dir / "threshold_sweep.png", sweeps),
    }
    files += list(plot_paths.values())
    plot_captions = {
        "recall_vs_false_alarm": "Defect recall vs false-alarm rate on good parts, sweeping one threshold "
                                 "over the image scores (max pixel score): defective queries flagged (left), "
                                 "then GT components flagged per GT-area-fraction bin; dotted lines = the "
                                 "false-alarm budgets. Upper left is better.",
        "size_curve": "mIoU per GT-area-fraction bin (@stored threshold); grey bars: episodes per bin.",
        "false_alarm_vs_miou": "Image false-alarm rate on normal queries vs mIoU, both @stored threshold.",
        "class_heatmap": "Per-class IoU (@stored threshold), pooled over repeats; the colour scale runs from 0 to the largest value, each cell gives its value in %.",
        "threshold_sweep": "Pooled IoU vs one global threshold: the pixels of all classes' defective "
                           "queries pooled (so large defects weigh most; this is not mIoU, which averages "
                           "per-class IoU) from the summed score histograms (solid) and from stored "
                           "prediction maps (dashed, when saved); ★ = its maximum (an oracle), dotted = the "
                           "stored threshold.",
    }

    qualitative, disagreements = _overlays(pixels, defective, max_overlay_disagreements, section_notes)
    opening = verdict(tables["summary"], paired, agg.operating.budgets)
    html_path = render_report(
        out_dir / "report.html", runs=runs, tables=tables,
        plots={name: (plot_captions[name], path) for name, path in plot_paths.items()},
        qualitative=qualitative, disagreements=disagreements, notes=section_notes,
        verdict=opening)
    files.append(html_path)
    notes = [line for lines in section_notes.values() for line in lines]
    return ReportResult(out_dir, html_path, {t.name: t for t in tables.values()}, agg, files,
                        plot_paths, notes, opening)


def _overlays(pixels: PixelSource, defective: pd.DataFrame, n_disagreements: int,
              section_notes: dict[str, list[str]]):
    has_images = pixels.has_images()
    has_predictions = pixels.has_predictions()
    missing = pixels.notes  # the same list: PNGs found unreadable while drawing add their notes
    if not has_predictions:
        missing.append("No stored predictions (run with --save-predictions): prediction panels are empty.")
    if not has_images and not has_predictions:
        note = missing + ["Qualitative overlays need query images or stored predictions; "
                          "neither is available."]
        section_notes["qualitative"] = note
        section_notes["disagreements"] = ["Not shown (see Qualitative examples)."]
        return [], []
    section_notes["qualitative"] = missing
    by_episode = {eid: block for eid, block in defective.groupby("episode_id", sort=False)}
    qualitative = []
    picks = pick_examples(defective)
    for method, which, episode_id in picks:
        title = f"{method}: {which} episode {episode_id}"
        qualitative.append((title, episode_figure(pixels, episode_id, by_episode[episode_id], title)))
    disagreements = []
    shown = {episode_id for _, _, episode_id in picks}
    for record in largest_disagreements(defective, n_disagreements, exclude=shown).itertuples(index=False):
        title = (f"episode {record.episode_id}: IoU spread {100 * record.spread:.1f} pts "
                 f"(best {record.best}, worst {record.worst})")
        disagreements.append((title, episode_figure(pixels, record.episode_id,
                                                    by_episode[record.episode_id], title)))
    if not disagreements:
        section_notes["disagreements"] = ["Needs at least two methods on the same episodes."]
    return qualitative, disagreements
