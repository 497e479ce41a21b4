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


def _stop_head(temp_dir: Path, gcs_address: str) -> None:
    """End every process of the head node this test started.

    The head's own processes name its temp dir or its GCS address on their command line; the agents they start rename
    themselves (``ray::DashboardAgent``), so their descendants are collected before any is signalled.
    Left running, an orphaned agent keeps its port and the next head's job agent cannot start.
    """
    import signal

    def parents() -> dict[int, int]:
        found = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    found[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        return found

    def named() -> set[int]:
        pids = set()
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
            except OSError:
                continue
            if str(temp_dir).encode() in cmdline or gcs_address.encode() in cmdline:
                pids.add(int(proc.name))
        return pids - {os.getpid()}

    tree = named()
    parent_of = parents()
    while True:
        children = {pid for pid, ppid in parent_of.items() if ppid in tree} - tree
        if not children:
            break
        tree |= children
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in tree:
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
           "AGENT_PORT": str(_free_port()),
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
            agent_log = temp_dir / "session_latest" / "logs" / "dashboard_agent.log"
            agent_tail = agent_log.read_text()[-2000:] if agent_log.exists() else "(no agent log)"
            assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{agent_tail}"
    finally:
        _stop_head(temp_dir, f"127.0.0.1:{env['GCS_PORT']}")
        shutil.rmtree(temp_dir, ignore_errors=True)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "complete" and record["counts"]["failed"] == 0 and record["counts"]["done"] > 0
    assert record["git"]["sha"] == sha and record["git"]["source"] == "$SOFS_BENCH_GIT_SHA"
    assert record["executor"]["name"] == "ray"
