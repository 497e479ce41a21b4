"""The README's cluster recipe, as written, against a local head node on 127.0.0.1 (slow)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _recipe() -> list[str]:
    """The shell lines of the README's ``Cluster`` recipe block."""
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"### Cluster\n.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no '### Cluster' recipe block"
    lines, current = [], ""
    for line in block.group(1).splitlines():
        line = line.split("  # ")[0].rstrip()
        if not line.strip():
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return lines


def _stop_head(temp_dir: Path) -> None:
    """End the processes of the head node this test started (their command lines name its temp dir)."""
    import signal
    import time

    def ours() -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if str(temp_dir).encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(3)


def test_readme_ray_job_recipe_runs_on_a_local_head_node_and_records_the_git_sha(tmp_path):
    pytest.importorskip("ray.dashboard", reason="needs ray[default]: pip install -e '.[ray]'")
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    lines = _recipe()
    assert any(line.startswith("ray start --head") for line in lines)
    assert any(line.startswith("ray job submit") for line in lines)
    bin_dir = str(Path(sys.executable).parent)
    temp_dir = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's socket paths are length-limited
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "OMP_NUM_THREADS": "1", "GCS_PORT": str(_free_port()), "DASHBOARD_PORT": str(_free_port()),
           "RAY_TMP": str(temp_dir), "OUT": str(tmp_path / "run")}
    env.pop("RAY_ADDRESS", None)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    try:
        for line in lines:
            if line.startswith(("pip install", "ray stop")):
                # the test environment has the extra already; `ray stop` would stop every Ray
                # process of this user on the machine, so only this head's processes are ended below
                continue
            for _ in range(12):  # the head's job agent can come up seconds after `ray start` returns
                done = subprocess.run(["bash", "-c", line], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                      timeout=900)
                if done.returncode == 0 or "No available agent" not in done.stderr:
                    break
                time.sleep(5)
            assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "complete" and record["counts"]["failed"] == 0 and record["counts"]["done"] > 0
    assert record["git"]["sha"] == sha and record["git"]["source"] == "$SOFS_BENCH_GIT_SHA"
    assert record["executor"]["name"] == "ray"
