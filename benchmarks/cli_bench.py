"""Start-up and report timings, printed (never asserted by unit tests); ``bench.py benchmark`` runs
these first (``--cli-only`` runs only these).

- ``[cli]``: seconds for ``bench.py --help``, ``run --help`` and a usage error (unknown method),
  median of 3 fresh processes; target <= 1 s (no torch / ray / pandas at start-up).
- ``[report]``: ``bench.py report`` end to end (read Parquet, aggregate, bootstrap, tables, plots,
  HTML) on synthetic run folders of 100 k and ``rows`` episode rows; target <= 15 s at 1 M.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI_CASES = (["--help"], ["run", "--help"], ["run", "--methods", "no-such-method"])


def cli_seconds(args: list[str], repeats: int = 3) -> float:
    """Median wall seconds of ``python bench.py ARGS`` in a fresh process."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "bench.py"), *args], cwd=REPO, capture_output=True, timeout=300)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report_seconds(rows: int, tmp: Path) -> tuple[float, float]:
    """(seconds to write a synthetic run folder of ``rows`` rows, seconds of ``bench.py report`` on it)."""
    from benchmarks.report_rows import write_synthetic_run

    start = time.perf_counter()
    run = write_synthetic_run(tmp / f"synthetic-{rows}", rows)
    written = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "bench.py"), "report", str(run), "--out", str(tmp / f"report-{rows}")],
                   cwd=REPO, capture_output=True, check=True, timeout=1800)
    return written, time.perf_counter() - start


def main(rows: int = 1_000_000) -> None:
    for args in CLI_CASES:
        print(f"[cli] bench.py {' '.join(args)}: {cli_seconds(args):.2f} s (median of 3 fresh processes; target <= 1 s)",
              flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="sofs-bench-report-timing-"))
    for n in sorted({100_000, rows}):
        written, seconds = report_seconds(n, tmp)
        print(f"[report] bench.py report on {n:,} synthetic rows: {seconds:.1f} s (writing the run folder: "
              f"{written:.1f} s; target <= 15 s at 1 M); folders in {tmp}", flush=True)
