"""Read one or several runs into one episode frame, with display labels for methods.

A run is a run folder of ``harness.store`` (run.json, one Parquet part per chunk and method).
When several runs hold the same method name, that method is shown as ``<run folder>:<method>``
so the runs can be compared side by side; other method names are kept as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.run_record import RunRecord
from harness.store import RunStore, StoreError, check_parts, read_run


# What the report reads of each row (the rest of the schema stays on disk).
REPORT_COLUMNS = [
    "method", "episode_id", "dataset", "class_id", "shots", "repeat", "query_id", "query_is_normal",
    "height", "width", "gt_area_frac", "gt_comp_areas", "gt_comp_hit", "fp_components", "threshold",
    "tp", "fp", "fn", "tn", "iou_fg", "image_positive", "score_hist_pos", "score_hist_neg", "status",
    "latency_s", "pred_path", "max_score", "gt_comp_pred_px", "pro_overlap_sum", "role", "gt_comp_max_score",
    "trained_class",
]


@dataclass(frozen=True)
class RunInfo:
    """One run folder as the report sees it."""

    label: str  # the run folder name, unique among the runs of one report
    run_dir: Path
    record: RunRecord | None = None  # run.json, None when missing
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


HIST_LISTS = ("score_hist_pos", "score_hist_neg", "pro_overlap_sum")  # 64 values per row each


def _fixed_lists(column, width: int, dtype) -> np.ndarray | None:
    """A list column whose lists all hold ``width`` values as ``[n, width]``; None otherwise."""
    import pyarrow.compute as pc

    if column.null_count or len(column) == 0:
        return None if column.null_count else np.zeros((0, width), dtype)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if not (lengths == width).all():
        return None
    return column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(len(column), width)


def _batch_cells(batch, has_pro):
    """One record batch's histogram lists summed per cell (``aggregate.CELL_KEYS``) of its ok rows:
    cell codes from one dictionary-encoded key string per row (no per-row Python), non-ok rows in
    a discarded extra cell. None when a list is null or not 64 long (the caller falls back)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from harness.report.aggregate import CELL_KEYS, HistCells, group_sums
    from harness.schema import HIST_BINS

    # calibration rows (schema 4) only set thresholds: they enter no histogram
    ok = pc.and_(pc.fill_null(pc.equal(batch.column("status"), "ok"), False),
                 pc.invert(pc.fill_null(pc.equal(batch.column("role"), "calibration"), False)))
    pos = _fixed_lists(batch.column("score_hist_pos"), HIST_BINS, np.int64)
    neg = _fixed_lists(batch.column("score_hist_neg"), HIST_BINS, np.int64)
    overlap = _fixed_lists(batch.column("pro_overlap_sum").filter(has_pro), HIST_BINS, np.float64)
    if pos is None or neg is None or overlap is None:
        return None
    text = [pc.cast(batch.column(k), pa.string()) for k in ("dataset", "method", "shots", "class_id", "query_is_normal")]
    key = pc.binary_join_element_wise(*text, pc.cast(has_pro, pa.string()), "\x1f")
    key = pc.if_else(ok, key, pa.scalar(None, pa.string()))
    encoded = pc.dictionary_encode(key)
    n_cells = len(encoded.dictionary)
    codes = pc.fill_null(encoded.indices, n_cells).to_numpy(zero_copy_only=False).astype(np.int64)
    pro = np.zeros((batch.num_rows, HIST_BINS))
    pro[has_pro.to_numpy(zero_copy_only=False)] = overlap
    # cell n_cells collects the non-ok rows and is dropped
    sums = group_sums(codes, [pos, neg, pro], n_cells + 1, [np.int64, np.int64, np.float64])
    fields = [item.split("\x1f") for item in encoded.dictionary.to_pylist()]
    frame = pd.DataFrame(fields, columns=CELL_KEYS) if fields else pd.DataFrame(columns=CELL_KEYS)
    frame["shots"] = frame["shots"].astype(np.int64)
    for flag in ("query_is_normal", "has_pro"):
        frame[flag] = frame[flag] == "true"
    frame["n"] = np.bincount(codes, minlength=n_cells + 1)[:n_cells]
    return HistCells(frame[CELL_KEYS + ["n"]], *(s[:n_cells] for s in sums))


def read_report_rows(run_dir: Path):
    """``(rows, hist_cells)`` of a run: ``REPORT_COLUMNS`` without the three 64-bin lists, plus
    ``has_pro`` (the row stores ``pro_overlap_sum``); the lists are summed per cell batch by batch
    while streaming (``aggregate.HistCells``), so the ~1.5 GB of a million rows never sit in memory.
    Other list columns stay in Arrow (``pd.ArrowDtype``). Rows whose lists are not all 64 long, or
    any read problem, fall back to ``read_run`` (whose one-line error names the bad part) and
    ``hist_cells`` None (computed from the rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from harness.report.aggregate import CELL_KEYS
    from harness.schema import EPISODE_SCHEMA_WITH_METHOD, HIST_BINS

    check_parts(run_dir)
    try:
        dataset = ds.dataset(RunStore(run_dir).episodes_dir, format="parquet",
                             partitioning=ds.partitioning(pa.schema([pa.field("method", pa.string())]), flavor="hive"),
                             schema=EPISODE_SCHEMA_WITH_METHOD, exclude_invalid_files=False, ignore_prefixes=[".", "_"])
        scalars, parts = [], []
        narrow = [c for c in REPORT_COLUMNS if c not in HIST_LISTS]
        for batch in dataset.to_batches(columns=REPORT_COLUMNS, batch_size=1 << 17):
            has_pro = pc.is_valid(batch.column("pro_overlap_sum"))
            scalars.append(pa.RecordBatch.from_arrays([*batch.select(narrow).columns, has_pro], narrow + ["has_pro"]))
            part = _batch_cells(batch, has_pro)
            if part is None:
                return read_run(run_dir, columns=REPORT_COLUMNS), None
            parts.append(part)
        table = pa.Table.from_batches(scalars) if scalars else pa.table(
            {c: pa.array([], EPISODE_SCHEMA_WITH_METHOD.field(c).type) for c in narrow} | {"has_pro": pa.array([], pa.bool_())})
        rows = table.combine_chunks().to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)
        return rows, parts
    except (OSError, pa.ArrowException):
        return read_run(run_dir, columns=REPORT_COLUMNS), None


def load_runs(run_dirs: list[Path]) -> tuple[pd.DataFrame, list[RunInfo], dict[str, MethodSource]]:
    """Concatenate the episode rows of ``run_dirs``.

    Returns ``(rows, runs, sources)``: ``rows`` has the episode schema plus ``method`` (the
    display label) and ``run`` (the run label); ``sources`` maps each display label to its run
    and in-run method name.
    """
    if not run_dirs:
        raise StoreError("report: no run folder given")
    frames, runs, hist_parts = [], [], []
    for run_dir, label in zip(map(Path, run_dirs), _unique_run_labels([Path(p) for p in run_dirs])):
        store = RunStore(run_dir)
        if not store.episodes_dir.is_dir():
            raise StoreError(f"{run_dir}: no episodes/ folder (is this a run folder?)")
        record = store.read_record()
        rows, parts = read_report_rows(run_dir)
        frames.append(rows)
        hist_parts.append((label, parts))
        runs.append(RunInfo(label=label, run_dir=run_dir, record=record, n_rows=len(rows)))
    if any(parts is None for _, parts in hist_parts):
        # A run whose lists could not be streamed brings them in memory: the others must too, so
        # that ``aggregate`` sums every run's lists from the rows.
        for index, (run, (label, parts)) in enumerate(zip(runs, hist_parts)):
            if parts is not None:
                frames[index] = read_run(run.run_dir, columns=REPORT_COLUMNS)
                hist_parts[index] = (label, None)
    for rows, run in zip(frames, runs):
        rows["method"] = rows["method"].astype(str)
        rows["run"] = run.label
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
    rows.attrs["hist_cells"] = _hist_cells(hist_parts, shared)
    return rows, runs, sources


def _hist_cells(hist_parts, shared: set[str]):
    """The runs' streamed histogram sums under the display labels (``aggregate.HistCells``);
    None when the runs' lists are in memory (then ``aggregate`` sums ``rows``)."""
    from harness.report.aggregate import HistCells

    if any(parts is None for _, parts in hist_parts):
        return None
    relabelled = []
    for label, parts in hist_parts:
        for cells in parts:
            keys, pos, neg, pro = cells.frame.copy(), cells.pos, cells.neg, cells.pro
            keys["method"] = keys["method"].astype(str)
            mask = keys["method"].isin(shared)
            keys.loc[mask, "method"] = label + ":" + keys.loc[mask, "method"]
            relabelled.append((keys, pos, neg, pro))
    return HistCells.combine(relabelled)


def planned_episodes(run: RunInfo) -> int | None:
    """Episodes per method the run's manifest planned (``run.json``), ``None`` when unknown."""
    return run.record.planned_episodes if run.record is not None else None


def coverage_notes(rows: pd.DataFrame, sources: dict[str, MethodSource]) -> list[str]:
    """One line per run: "N of M planned episodes stored", naming the incomplete methods. An
    episode whose row holds a transient error (``harness.status``) is not counted as stored: the
    same command computes it again."""
    from harness.status import is_transient

    transient = rows["status"].map(is_transient).to_numpy(bool)
    stored = rows.loc[~transient].groupby("method", sort=False)["episode_id"].nunique()
    retry = rows.loc[transient].groupby("method", sort=False)["episode_id"].nunique()
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
        retried = sum(int(retry.get(label, 0)) for label, _, _ in known)
        if retried:
            line += f" ({retried} more failed on a transient cause: disk, memory, read error, timeout or dead worker)"
        if incomplete:
            line += f"; incomplete: {', '.join(incomplete)} (run the same command to resume)"
        notes.append(line)
    return notes
