"""Harness performance, printed as figures and ratios (never asserted by unit tests).

0. Backbone work: backbone passes / unique views per method and across methods, for a
   sofs,panet,patchcore run (2 seeds, shots 1,2, few queries per class) of the embedded default
   (run.json ``backbone_views``; 1.00 = every view computed once).
1. Harness overhead per episode after warm-up: per chunk (first chunk = model load and first
   features, excluded), wall time of run_chunk + the Parquet write minus the methods' predict()
   time, on the embedded default (1024 x 768 images), and its ratio to the method time: the
   harness time the compute thread waits for (decode and scoring overlap predict() in run_chunk).
2. Throughput after warm-up: episodes/s with 1 vs 2 Ray workers (same episodes and CPUs), counted
   from the moment every worker has returned its first chunk (actor start and model load excluded).
3. Memory: RSS slope of a long inline run once the feature cache is full (a small cache budget,
   measured from its first eviction on), MB per 100 episodes (~0 = no leak).
4. Cross-image batching: backbone seconds per small image (256 x 256, one tile) one by one vs in
   the shared batches the runner forms for a chunk's small images (``prepare``).

``bench.py benchmark`` runs ``benchmarks.cli_bench`` first: ``--help`` seconds and ``bench.py
report`` end to end on 100 k and 1 M synthetic rows (reading, aggregation, bootstrap, plots).

    python bench.py benchmark [--episodes 24] [--rows 1000000] [--method panet]   # --rows: cli_bench's report timing
"""
from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

from harness.run import ManifestSettings, RunConfig, execute
from harness.store import RunStore, read_run
from methods.base import MethodSpec


def _rss_mb() -> float:
    """Current resident set size of this process (Linux /proc), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _limited_manifest_run(method: str, out: Path, episodes: int, executor: str, workers: int = 1, cpus=None):
    """Run the first ``episodes`` episodes of the default manifest (via a trimmed manifest file)."""
    from datasets.base import load_dataset
    from harness.episodes import Manifest, build_manifest, manifest_id_for, write_manifest

    dataset = load_dataset("synthetic")
    full = build_manifest(dataset, shots=(1,), seeds=1, fold="novel")
    episodes_subset = full.episodes[:episodes]
    params = {**full.params, "benchmark_subset": episodes}
    manifest = Manifest(manifest_id_for(params, episodes_subset), episodes_subset, params)
    path = write_manifest(manifest, out.parent / "manifests")
    config = RunConfig(
        methods=[MethodSpec.create(method)], dataset="synthetic", manifest_path=str(path), out=str(out),
        executor=executor, workers=workers, cpus_per_worker=cpus, chunk_size=max(1, episodes // (4 * workers)),
    )
    start = time.perf_counter()
    summary = execute(config, progress_out=None)
    wall = time.perf_counter() - start
    return summary, read_run(summary.run_dir), wall


def _manifest(shots=(1,), seeds=1, max_queries=None):
    from datasets.base import load_dataset
    from harness.episodes import build_manifest

    dataset = load_dataset("synthetic")
    return dataset, build_manifest(dataset, shots=shots, seeds=seeds, fold="novel", max_queries_per_class=max_queries)


def bench_backbone_views(out: Path, methods: str = "sofs,panet,patchcore", max_queries: int = 2) -> dict:
    """[views] passes / unique views of a 3-method, 2-seed, 2-shot inline run (one worker)."""
    from methods.sharing import reset_shared

    reset_shared()
    config = RunConfig(
        methods=[MethodSpec.create(m) for m in methods.split(",")], dataset="synthetic", out=str(out),
        manifest=ManifestSettings(shots=(1, 2), seeds=2, max_queries_per_class=max_queries), executor="inline",
    )
    start = time.perf_counter()
    summary = execute(config, progress_out=None)
    wall = time.perf_counter() - start
    views = RunStore(summary.run_dir).read_record().backbone_views or {}
    print(f"[views] {methods}, shots 1,2, seeds 2, {summary.episodes} episodes per method, inline, {wall:.0f} s")
    for name, item in views.items():
        print(f"[views] {name:<10} backbone passes {item['backbone_passes']:>6} / unique views {item['unique_views']:>6} "
              f"= {item['passes_per_view']:.3f}")
    return views


def _units(manifest, method_names, chunk_size):
    from datasets.base import load_dataset
    from harness.run import order_episodes
    from harness.runner import make_unit

    by_id = load_dataset("synthetic").by_id()
    ordered = order_episodes(manifest.episodes, "query")
    chunks = [ordered[i : i + chunk_size] for i in range(0, len(ordered), chunk_size)]
    return [[make_unit(m, i, chunk, by_id) for m in method_names] for i, chunk in enumerate(chunks)]


def _worker(method_names, options=None):
    from harness.runner import EpisodeWorker, EvalSettings, RowContext

    specs = [MethodSpec.create(m, options or {}) for m in method_names]
    context = RowContext("bench", "bench", "synthetic", "bench", "{}")
    return EpisodeWorker(specs[0], context, EvalSettings(), False, None, more=[(s, context, False) for s in specs[1:]])


def bench_overhead(out: Path, method: str, episodes: int) -> float:
    """[overhead] harness seconds per episode after warm-up (run_chunk + Parquet write - predict)."""
    from harness.store import RunStore
    from methods.sharing import reset_shared

    reset_shared()
    _, manifest = _manifest()
    groups = _units(manifest, [method], max(2, episodes // 6))
    worker, store = _worker([method]), RunStore(out)
    harness_s = method_s = 0.0
    counted = 0
    for index, (unit,) in enumerate(groups):
        start = time.perf_counter()
        rows = worker.run_chunk(unit)
        store.write_part(method, unit.chunk_index, rows)
        wall = time.perf_counter() - start
        if index == 0:
            continue  # warm-up: first features, lazy imports, allocator growth
        predict = sum(r["latency_s"] or 0.0 for r in rows)
        harness_s += wall - predict
        method_s += predict
        counted += len(rows)
        if counted >= episodes:
            break
    per_episode = harness_s / max(1, counted)
    print(f"[overhead] {method}: {counted} episodes after a warm-up chunk; predict() {method_s / max(1, counted):.3f} s/episode; "
          f"harness not hidden behind predict() (decode and metrics run on their own threads; Parquet) "
          f"{per_episode:.4f} s/episode; ratio harness/method = "
          f"{harness_s / max(method_s, 1e-9):.3f}")
    return per_episode


def _rate_after_warmup(frame) -> float:
    """Episodes/s from the moment every worker has returned rows (its first chunk) to the last row."""
    times = frame.groupby("worker")["finished_at"].min()
    start = times.max()
    later = frame[frame["finished_at"] > start]
    span = (frame["finished_at"].max() - start).total_seconds()
    return len(later) / span if span > 0 else float("nan")


def bench_throughput(out: Path, method: str, episodes: int) -> dict:
    """[throughput] episodes/s after warm-up, 1 worker x 2 CPU vs 2 workers x 1 CPU."""
    rates = {}
    for workers in (1, 2):
        _, frame, wall = _limited_manifest_run(method, out / f"ray{workers}", episodes, "ray", workers=workers, cpus=2 / workers)
        rates[workers] = _rate_after_warmup(frame[frame["status"] == "ok"])
        print(f"[throughput] {workers} worker(s) x {2 / workers:g} CPU: {rates[workers]:.3f} episodes/s after warm-up "
              f"({len(frame)} episodes, {wall:.1f} s wall incl. actor start)")
    print(f"[throughput] speed-up 2 vs 1 workers after warm-up = {rates[2] / rates[1]:.2f}x")
    return rates


def bench_memory(method: str, episodes: int, cache_mb: int = 16) -> float:
    """[memory] RSS slope (MB / 100 episodes) of a long inline run once the feature cache is full."""
    import numpy as np

    from methods.sharing import FEATURE_CACHE, reset_shared

    reset_shared()
    _, manifest = _manifest(shots=(1, 2), seeds=3)
    groups = _units(manifest, [method], 4)
    worker = _worker([method], {"feature_cache_mb": cache_mb})
    seen, points, full_at = 0, [], None
    while seen < episodes:
        for (unit,) in groups:
            worker.run_chunk(unit)
            seen += len(unit.episodes)
            if full_at is None and FEATURE_CACHE.evictions:
                full_at = seen  # the first eviction: the cache is at its budget from here on
            if full_at is not None:
                points.append((seen, _rss_mb()))
            if seen >= episodes:
                break
    if len(points) < 3:
        print(f"[memory] the {cache_mb} MB cache did not fill within {episodes} episodes; raise --episodes")
        return float("nan")
    x, y = np.array(points).T
    slope = float(np.polyfit(x, y, 1)[0]) * 100
    print(f"[memory] {method}: cache {cache_mb} MB full after {full_at} episodes; RSS {y[0]:.0f} -> {y[-1]:.0f} MiB over "
          f"{int(x[-1] - x[0])} more episodes; slope {slope:+.2f} MB per 100 episodes")
    return slope


def bench_small_image_batching(method: str, images: int = 32, side: int = 256) -> float:
    """[batching] backbone seconds per small image (one tile): one forward per image (``extract``)
    vs the chunk's images in shared batches (``prepare``, as the runner does); returns the speed-up."""
    import numpy as np

    from methods.sharing import reset_shared

    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(images)]
    timings = {}
    for mode in ("one by one", "shared batches"):
        reset_shared()
        worker = MethodSpec.create(method, {"image_batching": "on"}).build()
        worker.backbone.extract(batch[0][: side // 2])  # warm-up: lazy init, allocator (another view)
        start = time.perf_counter()
        if mode == "shared batches":
            worker.prepare(batch)
        for image in batch:
            worker.backbone.extract(image)
        timings[mode] = (time.perf_counter() - start) / images
    speed_up = timings["one by one"] / timings["shared batches"]
    print(f"[batching] {method}, {images} images of {side}x{side} (1 tile each): {timings['one by one']:.4f} s/image one "
          f"by one, {timings['shared batches']:.4f} s/image in shared batches of {worker.backbone.config.batch_size}; "
          f"speed-up {speed_up:.2f}x on {worker.backbone.device} (--set {method}.image_batching=on; off by default)")
    return speed_up


def main(episodes: int = 24, method: str = "panet") -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sofs-bench-benchmark-"))
    print(f"benchmark: method {method}, {episodes} episodes of the embedded default (1024x768), results in {tmp}")

    bench_backbone_views(tmp / "views")
    bench_overhead(tmp / "overhead", method, episodes)
    bench_throughput(tmp, method, episodes)
    bench_memory(method, episodes * 16)
    bench_small_image_batching(method)
