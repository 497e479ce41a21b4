"""Run the GPU check's stages one process each, with time caps; write the JSON and Markdown.

    python -m benchmarks.gpu_check [--device auto|cuda|cpu] [--out DIR] [--stages a,b] [--budget S]

On a GPU the whole check is planned to end within :data:`BUDGET_S` (8 min): each stage gets at
most its cap (:data:`CAPS`) and what is left of the budget; a stage that outlives its cap is
killed (its process group) and recorded as ``timeout`` with the rows it had measured.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from harness.io import REPO_ROOT, atomic_write

# Seconds per stage on a GPU (the small CPU profile multiplies them by its cap_scale).
CAPS = {
    "prepare": 45, "cuda-tests": 70, "episodes-lite0": 50, "episodes-vitb14": 80,
    "agreement": 60, "train": 50, "ray": 90, "seggpt": 25,
}
BUDGET_S = 480
NEEDS_INPUTS = {"episodes-lite0", "episodes-vitb14", "agreement", "train", "ray", "seggpt"}
TERM_GRACE_S = 10


def _end(process: subprocess.Popen) -> None:
    """SIGTERM the stage's process group, SIGKILL it after a grace period."""
    for sig, wait in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _verdict(stage: dict, payload: dict, returncode: int | None, log: Path) -> None:
    """Fill ``status`` and ``error`` (one line) from how the stage process ended and its rows."""
    rows = stage["rows"]
    failed_rows = [r for r in rows if r.get("error")]
    failed_checks = [r["measure"] for r in rows if r.get("ok") is False]
    if returncode is None:
        stage.update(status="timeout", error=f"timed out after {stage['cap_s']:.0f} s (rows measured before are kept)")
    elif payload.get("error"):
        stage.update(status="error", error=payload["error"])
    elif returncode != 0:
        stage.update(status="error", error=_last_line(log) or f"exit code {returncode}")
    elif payload.get("skipped"):
        stage.update(status="skipped", error=payload["skipped"])
    elif failed_rows:
        first = failed_rows[0]
        stage.update(status="error", error=f"{len(failed_rows)} of {len(rows)} measurements failed; first: "
                                           f"{first['measure']}: {first['error']}")
    elif failed_checks:
        stage.update(status="failed", error="check failed: " + "; ".join(failed_checks))


def run_stage(name: str, command: list[str], cap_s: float, result: Path, log: Path) -> dict:
    """Run one stage process (its own process group) for at most ``cap_s``; read its result file."""
    start = time.time()
    result.unlink(missing_ok=True)
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            _end(process)
            returncode = None
    try:
        payload = json.loads(result.read_text())
    except (OSError, ValueError):
        payload = {}
    stage = {"name": name, "status": "ok", "error": "", "cap_s": cap_s, "seconds": time.time() - start,
             "rows": payload.get("rows", [])}
    _verdict(stage, payload, returncode, log)
    return stage


def run_all(names: list[str], command_for: Callable[[str, Path, float], list[str]], caps: dict[str, float],
            budget_s: float, work: Path) -> list[dict]:
    """Every stage in order within ``budget_s``; none stops the others, except that the stages
    needing the inputs are skipped when ``prepare`` did not succeed."""
    start = time.time()
    stages: list[dict] = []
    for name in names:
        left = budget_s - (time.time() - start)
        prepared = all(s["status"] == "ok" for s in stages if s["name"] == "prepare")
        reason = ("the total budget is spent" if left < 5 else
                  "" if prepared or name not in NEEDS_INPUTS else "prepare did not succeed")
        if reason:
            stages.append({"name": name, "status": "skipped", "error": reason, "cap_s": caps[name],
                           "seconds": 0.0, "rows": []})
            continue
        cap = min(caps[name], left)
        result = work / f"{name}.json"
        stage = run_stage(name, command_for(name, result, time.time() + cap), cap, result, work / f"{name}.log")
        print(f"[gpu_check] {name}: {stage['status']} in {stage['seconds']:.0f} s"
              f"{'; ' + stage['error'] if stage['error'] else ''}", file=sys.stderr, flush=True)
        stages.append(stage)
    return stages


def attach_utilisation(stages: list[dict], sampler) -> None:
    for stage in stages:
        for row in stage["rows"]:
            window = sampler.window(row["t0"], row["t1"]) if "t0" in row else None
            if window:
                row.update(window)


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cuda:N or cpu")
    parser.add_argument("--profile", choices=("full", "small"), default=None,
                        help="sizes: full (1024x768, for a GPU) or small (256x192, for a CPU); default by device")
    parser.add_argument("--out", default=None, help="folder for gpu_check.json and gpu_check.md (default $OUT, "
                                                    "else results/gpu_check)")
    parser.add_argument("--stages", default=",".join(CAPS), help=f"comma-separated subset of {','.join(CAPS)}")
    parser.add_argument("--budget", type=float, default=None, help=f"total seconds (default {BUDGET_S} x the "
                                                                   "profile's cap scale)")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary folder of inputs and logs")
    for hidden in ("--stage", "--work", "--stop-at", "--result"):  # a stage process's own arguments
        parser.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _stage_names(text: str) -> list[str]:
    wanted = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in CAPS]
    if unknown:
        raise SystemExit(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(CAPS)}")
    if NEEDS_INPUTS & set(wanted) and "prepare" not in wanted:
        wanted.insert(0, "prepare")
    return [n for n in CAPS if n in wanted]


def _environment_defaults(work: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLCONFIGDIR", str(work / "mpl"))
    os.environ.setdefault("SOFS_BENCH_CACHE", str(work / "cache"))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PYTHONUNBUFFERED"] = "1"


def main(argv=None) -> int:
    args = _parse(argv)
    if args.stage:
        from benchmarks.gpu_check.stages import stage_main

        return stage_main(args.stage, Path(args.work), args.device, args.profile, float(args.stop_at), Path(args.result))
    from benchmarks.gpu_check.inputs import PROFILES
    from benchmarks.gpu_check.report import markdown
    from benchmarks.gpu_check.sampler import UtilSampler
    from benchmarks.gpu_check.stages import AGREEMENT_MAX_ABS, AGREEMENT_MEAN_ABS

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    profile = PROFILES[args.profile or ("full" if device.startswith("cuda") else "small")]
    names = _stage_names(args.stages)
    out = Path(args.out or os.environ.get("OUT") or REPO_ROOT / "results" / "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sofs-bench-gpu-check-"))
    _environment_defaults(work)
    caps = {name: cap * profile.cap_scale for name, cap in CAPS.items()}
    budget = args.budget or BUDGET_S * profile.cap_scale
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"[gpu_check] device {device}, profile {profile.name}, stages {','.join(names)}, budget {budget:.0f} s; "
          f"work folder {work}", file=sys.stderr, flush=True)

    def command_for(name: str, result: Path, stop_at: float) -> list[str]:
        return [sys.executable, "-m", "benchmarks.gpu_check", "--stage", name, "--work", str(work), "--device", device,
                "--profile", profile.name, "--stop-at", f"{stop_at:.1f}", "--result", str(result)]

    sampler = UtilSampler(enabled=device.startswith("cuda")).start()
    begin = time.time()
    try:
        stages = run_all(names, command_for, caps, budget, work)
    finally:
        sampler.stop()
    attach_utilisation(stages, sampler)
    inputs_file = work / "inputs.json"
    inputs = json.loads(inputs_file.read_text()) if inputs_file.exists() else {}
    report = {
        "tool": "benchmarks.gpu_check", "started": started, "device": device, "seconds": time.time() - begin,
        "profile": asdict(profile), "environment": inputs.get("environment"),
        "lite0_weights": inputs.get("lite0_note"), "util_source": sampler.source if device.startswith("cuda") else "n/a (cpu)",
        "tolerance": {"max_abs": AGREEMENT_MAX_ABS, "mean_abs": AGREEMENT_MEAN_ABS}, "stages": stages,
    }
    text = markdown(report)
    atomic_write(out / "gpu_check.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    atomic_write(out / "gpu_check.md", lambda tmp: tmp.write_text(text))
    print(text)
    print(f"[gpu_check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}", file=sys.stderr)
    if args.keep_work:
        print(f"[gpu_check] inputs and stage logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s["status"] in ("ok", "skipped") for s in stages) else 1
