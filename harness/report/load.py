"""Read one or several runs into one episode frame, with display labels for methods.

A run is ``results/<run>/run.json`` + ``results/<run>/episodes/method=<m>/part-*.parquet``.
When several runs hold the same method name, that method is shown as ``<run folder>:<method>``
so the runs can be compared side by side; other method names are kept as they are.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.store import StoreError, read_run


# What the report reads of each row (the rest of the schema stays on disk).
REPORT_COLUMNS = [
    "method", "episode_id", "dataset", "class_id", "shots", "repeat", "query_id", "query_is_normal",
    "height", "width", "gt_area_frac", "gt_comp_areas", "gt_comp_hit", "fp_components", "threshold",
    "tp", "fp", "fn", "tn", "iou_fg", "image_positive", "score_hist_pos", "score_hist_neg", "status",
    "latency_s", "pred_path", "max_score", "gt_comp_pred_px", "pro_overlap_sum",
]


@dataclass(frozen=True)
class RunInfo:
    """One run folder as the report sees it."""

    label: str  # the run folder name, unique among the runs of one report
    run_dir: Path
    provenance: dict = field(default_factory=dict)  # run.json, {} when missing
    n_rows: int = 0


@dataclass(frozen=True)
class MethodSource:
    """Where the rows of one displayed method label come from."""

    label: str
    run: RunInfo
    method: str  # the method name inside its run (partition value, predictions/<method>/)


def _unique_run_labels(run_dirs: list[Path]) -> list[str]:
    labels = []
    for run_dir in run_dirs:
        label = run_dir.name or str(run_dir)
        candidate, n = label, 2
        while candidate in labels:  # two runs with the same folder name in different places
            candidate, n = f"{label}#{n}", n + 1
        labels.append(candidate)
    return labels


def read_report_rows(run_dir: Path) -> pd.DataFrame:
    """``REPORT_COLUMNS`` of a run, list columns kept in Arrow (``pd.ArrowDtype``): converting
    millions of lists to numpy objects dominated the report's time. Any read problem falls back to
    ``read_run``, whose one-line error names the bad part."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from harness.schema import EPISODE_SCHEMA_WITH_METHOD

    try:
        dataset = ds.dataset(Path(run_dir) / "episodes", format="parquet",
                             partitioning=ds.partitioning(pa.schema([pa.field("method", pa.string())]), flavor="hive"),
                             schema=EPISODE_SCHEMA_WITH_METHOD, exclude_invalid_files=False, ignore_prefixes=[".", "_"])
        table = dataset.to_table(columns=REPORT_COLUMNS).combine_chunks()  # one chunk: fast takes
        return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)
    except (OSError, pa.ArrowException):
        return read_run(run_dir, columns=REPORT_COLUMNS)


def load_runs(run_dirs: list[Path]) -> tuple[pd.DataFrame, list[RunInfo], dict[str, MethodSource]]:
    """Concatenate the episode rows of ``run_dirs``.

    Returns ``(rows, runs, sources)``: ``rows`` has the episode schema plus ``method`` (the
    display label) and ``run`` (the run label); ``sources`` maps each display label to its run
    and in-run method name.
    """
    if not run_dirs:
        raise StoreError("report: no run folder given")
    frames, runs = [], []
    for run_dir, label in zip(map(Path, run_dirs), _unique_run_labels([Path(p) for p in run_dirs])):
        if not (run_dir / "episodes").is_dir():
            raise StoreError(f"{run_dir}: no episodes/ folder (is this a run folder?)")
        provenance = {}
        if (run_dir / "run.json").is_file():
            try:
                provenance = json.loads((run_dir / "run.json").read_text())
            except json.JSONDecodeError as error:
                raise StoreError(f"{run_dir / 'run.json'}: not valid JSON ({error})") from None
        rows = read_report_rows(run_dir)
        rows["method"] = rows["method"].astype(str)
        rows["run"] = label
        frames.append(rows)
        runs.append(RunInfo(label=label, run_dir=run_dir, provenance=provenance, n_rows=len(rows)))
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if rows.empty:
        raise StoreError(f"{', '.join(str(r.run_dir) for r in runs)}: no episode rows")

    runs_per_method = rows.groupby("method", sort=False)["run"].nunique()
    shared = set(runs_per_method[runs_per_method > 1].index)
    run_by_label = {run.label: run for run in runs}
    pairs = rows[["run", "method"]].drop_duplicates()
    sources = {}
    for run_label, method in pairs.itertuples(index=False):
        display = f"{run_label}:{method}" if method in shared else method
        sources[display] = MethodSource(display, run_by_label[run_label], method)
    if shared:
        prefixed = rows["method"].isin(shared)
        rows.loc[prefixed, "method"] = rows.loc[prefixed, "run"] + ":" + rows.loc[prefixed, "method"]
    return rows, runs, sources


def planned_episodes(run: RunInfo) -> int | None:
    """Episodes per method the run's manifest planned (``run.json``), ``None`` when unknown."""
    params = run.provenance.get("manifest_params") or {}
    planned = params.get("n_episodes") if isinstance(params, dict) else None
    return planned if isinstance(planned, int) and planned >= 0 else None


def coverage_notes(rows: pd.DataFrame, sources: dict[str, MethodSource]) -> list[str]:
    """One line per run: "N of M planned episodes stored", naming the incomplete methods."""
    stored = rows.groupby("method", sort=False)["episode_id"].nunique()
    by_run: dict[str, list[tuple[str, int, int | None]]] = {}
    for label, source in sources.items():
        by_run.setdefault(source.run.label, []).append((label, int(stored.get(label, 0)), planned_episodes(source.run)))
    notes = []
    for run_label, methods in by_run.items():
        known = [(label, n, planned) for label, n, planned in methods if planned is not None]
        if not known:
            notes.append(f"{run_label}: planned episode count unknown (no run.json manifest_params)")
            continue
        total, planned = sum(n for _, n, _ in known), sum(p for _, _, p in known)
        incomplete = [f"{label} ({n} of {p})" for label, n, p in known if n < p]
        line = f"{run_label}: {total} of {planned} planned episodes stored"
        if incomplete:
            line += f"; incomplete: {', '.join(incomplete)} (run the same command to resume)"
        notes.append(line)
    return notes
