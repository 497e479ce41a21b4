"""Harness performance, printed as figures and ratios (never asserted by unit tests).

1. Harness overhead per episode: wall time per episode of an inline run minus the method's own
   predict() time, on the embedded default (1024 x 768 images), as a ratio to the method time.
2. Throughput: episodes/s with 1 vs 2 Ray workers (same episodes, same method).
3. Memory: peak RSS of the driver over a long inline run (first half vs end), to catch leaks.
4. Report aggregation over 1 M synthetic episode rows (seconds).

    python bench.py benchmark [--episodes 24] [--rows 1000000] [--method panet]
"""
from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

from harness.run import ManifestSettings, RunConfig, execute
from harness.store import read_run
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


def main(episodes: int = 24, rows: int = 1_000_000, method: str = "panet") -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sofs-bench-benchmark-"))
    print(f"benchmark: method {method}, {episodes} episodes of the embedded default (1024x768), results in {tmp}")

    # 1. overhead (inline: no Ray in the way)
    _, rows_inline, wall = _limited_manifest_run(method, tmp / "inline", episodes, "inline")
    ok = rows_inline[rows_inline["status"] == "ok"]
    method_s = float(ok["latency_s"].sum())
    load_s = float(ok["load_s"].sum())
    overhead = (wall - method_s) / len(rows_inline)
    print(f"[overhead] wall {wall:.1f} s for {len(rows_inline)} episodes; method predict() {method_s / len(ok):.3f} s/episode; "
          f"harness {overhead:.3f} s/episode (image loading {load_s / len(ok):.3f}), incl. model load once")
    print(f"[overhead] ratio harness/method = {overhead / (method_s / len(ok)):.3f}")

    # 2. throughput, 1 vs 2 Ray workers
    rates = {}
    for workers in (1, 2):
        _, rows_ray, wall = _limited_manifest_run(method, tmp / f"ray{workers}", episodes, "ray", workers=workers, cpus=2 / workers)
        rates[workers] = len(rows_ray) / wall
        print(f"[throughput] {workers} worker(s) x {2 / workers:g} CPU: {rates[workers]:.3f} episodes/s ({wall:.1f} s, incl. actor start)")
    print(f"[throughput] speed-up 2 vs 1 workers = {rates[2] / rates[1]:.2f}x")

    # 3. memory over a longer run
    rss_start = _rss_mb()
    _, rows_long, _ = _limited_manifest_run(method, tmp / "long", episodes * 3, "inline")
    print(f"[memory] driver RSS {rss_start:.0f} MiB before, {_rss_mb():.0f} MiB after {len(rows_long)} more episodes; "
          f"peak {_peak_rss_mb():.0f} MiB; ratio after/before = {_rss_mb() / rss_start:.2f}")

    # 4. aggregation
    try:
        from harness.report import benchmark_aggregation
    except ImportError as exc:
        print(f"[aggregation] unavailable: {exc}")
        return
    seconds = benchmark_aggregation(rows)
    print(f"[aggregation] {rows:,} episode rows aggregated in {seconds:.2f} s ({rows / seconds:,.0f} rows/s)")
