"""bench.py under faults (issue 9): corrupt part -> resume, full disk, two runs on one folder,
Ctrl-C / SIGTERM exit codes, Ray processes ending with the run. Each gives one line, no traceback.

Subprocess tests take 7-20 s each, so all but Ctrl-C are marked slow (``pytest -m slow``); the
same cases run fast in-process in tests/harness/test_reliability.py."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness.store import read_run
from tests.conftest import REPO_ROOT
from tests.toy_methods import make_folder_dataset

PART_GLOB = "episodes/method=toy-bright/part-*.parquet"


def bench(args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "SOFS_BENCH_PLUGINS": "tests.toy_methods", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "bench.py"), *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def run_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--methods", "toy-bright", "--dataset", str(dataset), "--executor", "inline", "--seeds", "2",
            "--chunk-size", "2", "--no-report", "--out", str(out), *extra]


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def sorted_rows(run_dir: Path):
    rows = read_run(run_dir)[["episode_id", "status", "tp", "fp", "fn", "tn"]]
    return rows.sort_values("episode_id").reset_index(drop=True)


@pytest.mark.slow
def test_corrupt_part_is_recomputed_on_the_next_run(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    first = bench(run_args(dataset, out))
    assert first.wait(timeout=120) == 0
    clean = sorted_rows(out)
    part = sorted(out.glob(PART_GLOB))[1]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    second = bench(run_args(dataset, out))
    stdout, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr
    assert "Traceback" not in stderr and f"{part}: unreadable Parquet" in stderr and "computed again" in stderr
    assert "computed     2" in stdout
    assert sorted_rows(out).equals(clean)


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_disk_full_is_one_line_and_the_run_resumes_elsewhere(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data", n_per_category=5)
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "96k"):
        pytest.skip("needs root and tmpfs mounts to fill a disk")
    try:
        process = bench(run_args(dataset, small / "run", "--save-predictions"))
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 1, stdout + stderr
        assert "Traceback" not in stderr and "No space left on device" in stderr
        # after the plan and progress lines: the error (last), maybe a run.json warning before it
        lines = stderr.strip().splitlines()
        problems = [line for line in lines if line.startswith(("Error:", "warning:"))
                    and "--calibration-normals" not in line]  # the fixture has too few good images
        assert lines[-1].startswith("Error: ") and "No space left on device" in lines[-1], stderr
        assert len(problems) <= 2 and len([line for line in lines if line.startswith("Error:")]) == 1, stderr
        assert not [p for p in (small / "run").rglob("*") if ".tmp" in p.name]
        shutil.copytree(small / "run", tmp_path / "big")
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
    (tmp_path / "big" / ".lock").unlink(missing_ok=True)
    resumed = bench(run_args(dataset, tmp_path / "big"))
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    rows = read_run(tmp_path / "big")
    assert rows["episode_id"].is_unique and len(rows) == json.loads((tmp_path / "big" / "run.json").read_text())["manifest_params"]["n_episodes"]


@pytest.mark.slow
def test_two_runs_into_one_folder_the_second_is_refused(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    first = bench(run_args(dataset, out, "--set", "toy-bright.sleep_s=0.5"))  # ~10 s of work
    assert wait_for(lambda: (out / ".lock").exists())
    second = bench(run_args(dataset, out, "--set", "toy-bright.sleep_s=0.5"))
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 1
    assert f"in use by pid {first.pid}" in stderr and "Traceback" not in stderr
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    rows = read_run(out)
    assert rows["episode_id"].is_unique
    assert len(json.loads((out / "run.json").read_text())["invocations"]) == 1
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130),
                                          pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_interrupt_exits_with_the_signal_code_and_keeps_results(tmp_path, signum, code):
    dataset = make_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    process = bench(run_args(dataset, out, "--set", "toy-bright.sleep_s=0.1"))
    assert wait_for(lambda: len(list(out.glob(PART_GLOB))) >= 1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted" and record["counts"]["done"] >= 2
    what = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    done, planned = record["counts"]["done"], record["counts"]["planned"]
    assert stderr.strip().splitlines()[-1] == (f"{what}: {done} of {planned} episode rows are stored in {out} and kept; "
                                               f"run the same command to compute the other {planned - done}")
    assert not (out / ".lock").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_sigterm_shuts_down_the_local_ray_cluster(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = [a if a != "inline" else "ray" for a in run_args(dataset, out, "--set", "toy-bright.sleep_s=0.2", "--workers", "1")]
    process = bench(args)
    record = Path(tempfile.gettempdir()) / "sofs-bench-ray" / f"{process.pid}.json"
    assert wait_for(lambda: len(list(out.glob(PART_GLOB))) >= 1, timeout=180)
    assert record.exists()
    pids = json.loads(record.read_text())["pids"]
    assert pids
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert not record.exists()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    assert wait_for(lambda: all(gone(pid) for pid in pids), timeout=30)
