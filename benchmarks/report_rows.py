"""Synthetic episode rows at scale (a fixture of the report's tests and of ``benchmarks/cli_bench.py``),
and the aggregation timing over them. Not part of the harness: nothing in harness/ imports it."""
from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa

from harness.schema import EPISODE_SCHEMA, HIST_BINS

_METHODS = {"sofs": 0.55, "panet": 0.35, "seggpt": 0.45, "patchcore": 0.3}  # name -> mean recall
_SIZES = np.array([[512, 512], [1024, 1024], [2048, 2448]])


def _list_array(values: np.ndarray, lengths: np.ndarray, value_type) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = pa.array(values, type=value_type)
    if isinstance(flat, pa.ChunkedArray):  # large string inputs come back chunked
        flat = flat.combine_chunks()
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


def make_synthetic_rows(n: int, seed: int = 0, n_classes: int = 40, normal_frac: float = 0.2) -> pd.DataFrame:
    return make_synthetic_table(n, seed, n_classes, normal_frac).to_pandas()


def write_synthetic_run(run_dir, n: int, seed: int = 0, rows_per_part: int = 50_000):
    """A run folder of about ``n`` synthetic rows (parts without checksums, as before checksums
    existed, and run.json), written where the store puts them, for timing ``bench.py report`` at
    scale. Returns the folder."""
    from pathlib import Path

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from harness.run_record import RunRecord
    from harness.store import RunStore

    store = RunStore(Path(run_dir))
    table = make_synthetic_table(n, seed)
    for method in _METHODS:
        rows = table.filter(pc.equal(table["method"], method)).drop_columns(["method"])
        store.method_dir(method).mkdir(parents=True, exist_ok=True)
        for part, start in enumerate(range(0, rows.num_rows, rows_per_part)):
            pq.write_table(rows.slice(start, rows_per_part), store.part_path(method, part))
    store.write_record(RunRecord(
        run_id="synthetic", manifest_id="synthetic-manifest", command=f"synthetic {n} rows",
        methods={m: {"threshold_protocol": "deployable" if m == "patchcore" else "native"} for m in _METHODS}))
    return store.run_dir


def make_synthetic_table(n: int, seed: int = 0, n_classes: int = 40, normal_frac: float = 0.2) -> pa.Table:
    """About ``n`` realistic episode rows (all schema columns + ``method``), as ``read_run`` returns.

    Episodes are shared by the four methods (so paired comparisons work), spread over
    ``n_classes`` classes, shots {1, 5}, repeats 0-4; ``normal_frac`` of the queries are normal.
    Counts are consistent (tp + fn = GT area, tp + fp + fn + tn = H W); histograms are random.
    """
    rng = np.random.default_rng(seed)
    n_methods = len(_METHODS)
    n_episodes = max(1, n // n_methods)
    episode = np.arange(n_episodes)
    class_index = rng.integers(0, n_classes, n_episodes)
    shots = np.where(episode % 2 == 0, 1, 5).astype(np.int32)
    repeat = (episode // 2 % 5).astype(np.int32)
    is_normal = rng.random(n_episodes) < normal_frac
    hw = _SIZES[rng.integers(0, len(_SIZES), n_episodes)]
    area_frac = np.where(is_normal, 0.0, 10 ** rng.uniform(-4, -1, n_episodes))
    gt_area = np.round(area_frac * hw[:, 0] * hw[:, 1]).astype(np.int64)
    gt_area = np.where(is_normal, 0, np.maximum(gt_area, 1))

    # one row per (episode, method): repeat episode columns, draw method-specific outcomes
    e = np.tile(episode, n_methods)
    method_index = np.repeat(np.arange(n_methods), n_episodes)
    rows_n = len(e)
    recall = np.array(list(_METHODS.values()))[method_index]
    pixels = (hw[e, 0] * hw[e, 1]).astype(np.int64)
    tp = rng.binomial(gt_area[e], np.clip(recall + rng.normal(0, 0.15, rows_n), 0, 1))
    fn = gt_area[e] - tp
    fp = rng.binomial(np.maximum(gt_area[e], 50), 0.4 * rng.random(rows_n))
    fp = np.where(rng.random(rows_n) < 0.5, fp, 0)  # half the queries have no FP pixel
    tn = pixels - tp - fp - fn
    union = tp + fp + fn
    n_comp = np.where(is_normal[e], 0, rng.integers(1, 4, rows_n))
    comp_areas = np.maximum(1, (np.repeat(gt_area[e] / np.maximum(n_comp, 1), n_comp)
                                * rng.uniform(0.5, 1.5, n_comp.sum()))).astype(np.int64)
    comp_hit = rng.random(n_comp.sum()) < np.repeat(recall, n_comp)
    comp_pred_px = np.where(comp_hit, rng.integers(1, comp_areas + 1), 0).astype(np.int64)
    fp_components = np.where(fp > 0, rng.integers(1, 4, rows_n), 0).astype(np.int32)
    fp_areas = np.maximum(1, np.repeat(fp // np.maximum(fp_components, 1), fp_components)).astype(np.int64)
    bins = np.arange(HIST_BINS)
    # better methods put GT pixels in higher score bins
    separation = np.linspace(0.2, 4.0, HIST_BINS) ** (0.5 + 2 * recall[:, None])
    hist_pos = rng.poisson(separation) * (~is_normal[e])[:, None]
    hist_neg = rng.poisson(4000 * np.exp(-bins / 5.0), (rows_n, HIST_BINS))  # scores mostly low
    # per-region overlap summed over components, falling from n_comp (bin 0) like the positives
    pro_sum = n_comp[:, None] * (1 - np.cumsum(hist_pos, 1) / np.maximum(hist_pos.sum(1, keepdims=True), 1))
    pro_sum = np.hstack([n_comp[:, None], pro_sum[:, :-1]]).astype(np.float64)
    deployable = method_index == n_methods - 1  # patchcore: threshold fitted per episode
    threshold = np.where(deployable, rng.uniform(0.3, 0.7, rows_n), 0.5)
    status = np.where(rng.random(rows_n) < 0.005, "error: RuntimeError: synthetic", "ok")
    class_names = np.array([f"obj{c // 4}/cat{c % 4}" for c in range(n_classes)])
    episode_ids = np.char.add("ep", episode.astype(str))[e]
    query_ids = np.char.add("img", (episode * 7 % 100_003).astype(str))[e]
    columns = {
        "run_id": pa.array(np.full(rows_n, "synthetic-run")),
        "manifest_id": pa.array(np.full(rows_n, "synthetic-manifest")),
        "episode_id": pa.array(episode_ids),
        "method_config_hash": pa.array(np.full(rows_n, "0" * 16)),
        "method_options": pa.array(np.full(rows_n, "{}")),
        "dataset": pa.array(np.full(rows_n, "synthetic")),
        "object": pa.array(np.char.partition(class_names[class_index[e]], "/")[:, 0]),
        "category": pa.array(np.char.partition(class_names[class_index[e]], "/")[:, 2]),
        "class_id": pa.array(class_names[class_index[e]]),
        "shots": pa.array(shots[e]),
        "seed": pa.array(repeat[e].astype(np.int64)),
        "repeat": pa.array(repeat[e]),
        "query_id": pa.array(query_ids),
        "support_ids": _list_array(np.char.add("s", np.arange(shots[e].sum()).astype(str)), shots[e],
                                   pa.string()),
        "query_is_normal": pa.array(is_normal[e]),
        "support_is_normal": pa.array(np.zeros(rows_n, bool)),
        "height": pa.array(hw[e, 0].astype(np.int32)),
        "width": pa.array(hw[e, 1].astype(np.int32)),
        "gt_area_px": pa.array(gt_area[e]),
        "gt_area_frac": pa.array(gt_area[e] / pixels),
        "size_bin": pa.array(np.where(is_normal[e], "normal", "")),
        "gt_components": pa.array(n_comp.astype(np.int32)),
        "gt_comp_areas": _list_array(comp_areas, n_comp, pa.int64()),
        "gt_comp_hit": _list_array(comp_hit, n_comp, pa.bool_()),
        "gt_comp_pred_px": _list_array(comp_pred_px, n_comp, pa.int64()),
        "pro_overlap_sum": _list_array(pro_sum.ravel(), np.full(rows_n, HIST_BINS), pa.float64()),
        "pred_area_px": pa.array(tp + fp),
        "pred_components": pa.array(fp_components + (tp > 0)),
        "fp_components": pa.array(fp_components),
        "fp_comp_areas": _list_array(fp_areas, fp_components, pa.int64()),
        "threshold": pa.array(threshold),
        "tp": pa.array(tp), "fp": pa.array(fp), "fn": pa.array(fn), "tn": pa.array(tn),
        "iou_fg": pa.array(np.where(union > 0, tp / np.maximum(union, 1), np.nan), from_pandas=True),
        "image_positive": pa.array((tp + fp) > 0),
        "max_score": pa.array(rng.random(rows_n).astype(np.float32)),
        "score_hist_pos": _list_array(hist_pos.ravel(), np.full(rows_n, HIST_BINS), pa.int64()),
        "score_hist_neg": _list_array(hist_neg.ravel(), np.full(rows_n, HIST_BINS), pa.int64()),
        "status": pa.array(status),
        "latency_s": pa.array(rng.exponential(0.05, rows_n)),
        "load_s": pa.array(rng.exponential(0.01, rows_n)),
        "worker": pa.array(np.full(rows_n, "w0")),
        "finished_at": pa.array(np.full(rows_n, datetime(2025, 1, 1, tzinfo=timezone.utc))),
        "pred_path": pa.nulls(rows_n, pa.string()),
    }
    # Columns added to the schema later (e.g. the worker's device) are null here.
    table = pa.Table.from_arrays([columns[f.name].cast(f.type) if f.name in columns else pa.nulls(rows_n, f.type)
                                  for f in EPISODE_SCHEMA],
                                 schema=EPISODE_SCHEMA)
    return table.append_column("method", pa.array(np.array(list(_METHODS))[method_index]))


def benchmark_aggregation(n_rows: int = 1_000_000, seed: int = 0) -> float:
    """Seconds to compute every pooled number of the report (``aggregate``) over ``n_rows``
    synthetic rows already in memory (generation and the bootstrap are not timed)."""
    from harness.report.aggregate import aggregate

    rows = make_synthetic_rows(n_rows, seed)
    start = time.perf_counter()
    aggregate(rows)
    return time.perf_counter() - start
