"""Command-line response and report timings, printed (never asserted by unit tests); ``bench.py
benchmark`` runs these first (``--cli-only`` runs only these).

- ``[cli]``: one line per case with its seconds (median of 3 fresh processes), its target and PASS
  or FAIL: ``--help`` of every command and subcommand (found by walking the click groups, the lazy
  ``train`` / ``ablate`` ones included), ``methods --options`` and each kind of user error (unknown
  option, unknown method, bad ``--set`` option or value, missing dataset / manifest path): target
  <= 1 s each, which means no torch, Ray or pandas before the answer.
- ``[cli] Ctrl-C under Ray``: ``bench.py run`` on the embedded dataset with ``--executor ray``,
  SIGINT sent to its process group (as a terminal's Ctrl-C) once the first part is stored: seconds
  to exit, target <= 5 s, exit code 130 and one ``interrupted: ...`` line saying what is kept.
- ``[report]``: ``bench.py report`` end to end (read Parquet, aggregate, bootstrap, tables, plots,
  HTML) on synthetic run folders of 100 k and ``rows`` episode rows; target <= 15 s at 1 M.
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAST_S = 1.0  # --help, methods --options and user errors
INTERRUPT_S = 5.0  # Ctrl-C to exit
MISSING = "/nonexistent/sofs-bench-dataset"
USER_ERRORS = (
    ("unknown option", ["run", "--no-such-option"]),
    ("unknown method", ["run", "--methods", "no-such-method"]),
    ("unknown --set option", ["run", "--methods", "panet", "--set", "panet.no_such_option=1"]),
    ("bad --set value", ["run", "--methods", "panet", "--set", "panet.resolution=bogus"]),
    ("missing dataset path", ["run", "--methods", "panet", "--dataset", MISSING]),
    ("missing manifest path", ["run", "--manifest", MISSING + ".parquet"]),
    ("missing dataset path", ["train", "sofs", "--dataset", MISSING]),
    ("missing dataset path", ["datasets", "check", MISSING]),
    ("unknown command", ["no-such-command"]),
)


def help_cases() -> list[list[str]]:
    """``[..., "--help"]`` for the top level and every command and subcommand, lazy ones included."""
    import click

    from bench import cli

    cases = []

    def walk(command: click.Command, path: list[str]) -> None:
        cases.append([*path, "--help"])
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), [*path, name])

    walk(cli, [])
    return cases


def cli_seconds(args: list[str], repeats: int = 3) -> tuple[float, int]:
    """(median wall seconds, exit code) of ``python bench.py ARGS`` in a fresh process."""
    times, code = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(REPO / "bench.py"), *args], cwd=REPO, capture_output=True,
                              timeout=300).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), code


def verdict(seconds: float, target: float, ok: bool = True) -> str:
    return "PASS" if ok and seconds <= target else "FAIL"


def interrupt_under_ray(method: str, tmp: Path) -> tuple[float, float | None, int, str]:
    """Ctrl-C during ``bench.py run --executor ray``: (seconds from SIGINT to exit, seconds to the
    ``interrupted`` line or None when there is not exactly one or a traceback came too, exit code,
    that line)."""
    out = tmp / "interrupted-run"
    args = [sys.executable, str(REPO / "bench.py"), "run", "--methods", method, "--dataset", "synthetic",
            "--executor", "ray", "--chunk-size", "4", "--no-report", "--out", str(out)]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.perf_counter(), line.strip()) for line in process.stderr),
                              daemon=True)
    reader.start()
    deadline = time.time() + 600
    while not list(out.glob("episodes/method=*/part-*.parquet")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    sent = time.perf_counter()
    try:
        os.killpg(process.pid, signal.SIGINT)  # a terminal sends Ctrl-C to the whole foreground group
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    exited = time.perf_counter() - sent
    reader.join(timeout=10)
    said = [(t - sent, line) for t, line in lines if line.startswith("interrupted")]
    if len(said) != 1 or any("Traceback" in line for _, line in lines):
        return exited, None, process.returncode, "; ".join(line for _, line in lines[-3:])
    return exited, said[0][0], process.returncode, said[0][1]


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


def main(rows: int = 1_000_000, method: str = "panet", interrupt: bool = True) -> None:
    cases = [("help", args) for args in help_cases()] + [("", ["methods", "--options"])] + list(USER_ERRORS)
    for what, args in cases:
        seconds, code = cli_seconds(args)
        expected = code == 0 if what in ("help", "") else code in (1, 2)
        label = f" ({what}, exit {code})" if what not in ("help", "") else ""
        print(f"[cli] bench.py {' '.join(args)}{label}: {seconds:.2f} s (median of 3 fresh processes; "
              f"target <= {FAST_S:g} s) {verdict(seconds, FAST_S, expected)}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="sofs-bench-cli-timing-"))
    if interrupt:
        exited, said, code, line = interrupt_under_ray(method, tmp)
        shown = f"'{line}' after {said:.1f} s" if said is not None else f"not one clean line: '{line}'"
        print(f"[cli] Ctrl-C under Ray (run --methods {method}, SIGINT to the process group after the first "
              f"stored part): exit {code} in {exited:.1f} s, {shown} (target <= {INTERRUPT_S:g} s, exit 130, "
              f"one line) {verdict(exited, INTERRUPT_S, code == 130 and said is not None)}", flush=True)
        shutil.rmtree(tmp / "interrupted-run", ignore_errors=True)
    for n in sorted({100_000, rows}):
        written, seconds = report_seconds(n, tmp)
        print(f"[report] bench.py report on {n:,} synthetic rows: {seconds:.1f} s (writing the run folder: "
              f"{written:.1f} s; target <= 15 s at 1 M); folders in {tmp}", flush=True)
