"""Runner + store: rows per episode, error rows, resume after kill -9, Ray retries, resource checks."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import tests.toy_methods  # noqa: F401  (registers toy-bright)
from harness.run import ManifestSettings, RunConfig, RunError, execute
from harness.store import read_run
from methods.base import MethodSpec
from tests.conftest import REPO_ROOT
from tests.toy_methods import make_folder_dataset

KEY_COLUMNS = ["method", "episode_id", "status", "tp", "fp", "fn", "tn", "gt_area_px", "gt_components"]


def config(dataset: Path, out: Path, executor="inline", **overrides) -> RunConfig:
    options = overrides.pop("options", {})
    return RunConfig(
        methods=[MethodSpec.create("toy-bright", options)],
        dataset=str(dataset),
        manifest=ManifestSettings(shots=(1,), seeds=2, normal_fraction=0.2),
        out=str(out),
        executor=executor,
        chunk_size=overrides.pop("chunk_size", 3),
        **overrides,
    )


def test_inline_run_stores_every_episode_once_and_resumes(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    summary = execute(config(dataset, tmp_path / "run"), progress_out=None)
    rows = read_run(summary.run_dir)
    assert len(rows) == summary.episodes == rows["episode_id"].nunique()
    assert (rows["status"] == "ok").all()
    defective = rows[~rows["query_is_normal"]]
    # toy-bright segments the bright fixture defects exactly
    assert (defective["fp"] == 0).all() and (defective["fn"] == 0).all()
    assert (rows[rows["query_is_normal"]]["image_positive"] == False).all()  # noqa: E712
    again = execute(config(dataset, tmp_path / "run"), progress_out=None)
    assert again.methods[0].skipped == summary.episodes and again.methods[0].ok == 0
    assert len(read_run(summary.run_dir)) == summary.episodes


def test_all_error_part_reads_back_and_run_continues(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    summary = execute(config(dataset, tmp_path / "run", options={"crash_width": 65}), progress_out=None)
    rows = read_run(summary.run_dir)
    failed = rows[rows["status"] != "ok"]
    assert len(failed) > 0 and summary.failed == len(failed)
    assert failed["status"].str.startswith("error: RuntimeError: toy crash").all()
    assert failed["tp"].isna().all()
    assert (rows[rows["status"] == "ok"]["tp"] >= 0).all()
    assert "toy crash" in (summary.run_dir / "errors.log").read_text()


def test_unreadable_image_becomes_error_row(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    bad_image = dataset / "spot" / "images" / "spot_1.png"
    bad_image.write_bytes(bad_image.read_bytes()[:120])  # header intact, pixel data truncated
    summary = execute(config(dataset, tmp_path / "run"), progress_out=None)
    rows = read_run(summary.run_dir)
    bad = rows[rows["status"] != "ok"]
    assert len(bad) > 0
    assert bad["status"].str.contains("spot_1.png").all()


def test_changed_method_config_refuses_to_mix(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    execute(config(dataset, tmp_path / "run"), progress_out=None)
    with pytest.raises(RunError, match="another config"):
        execute(config(dataset, tmp_path / "run", options={"sleep_s": 0.001}), progress_out=None)


def _cli(args, env_extra=None, **kwargs):
    env = {**os.environ, "SOFS_BENCH_PLUGINS": "tests.toy_methods", "PYTHONPATH": str(REPO_ROOT), **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "bench.py"), *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _rows(run_dir: Path) -> pd.DataFrame:
    rows = read_run(run_dir)[KEY_COLUMNS]
    rows["method"] = rows["method"].astype(str)
    return rows.sort_values("episode_id").reset_index(drop=True)


def test_kill_9_then_same_command_gives_same_rows(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data", n_per_category=5)
    common = ["run", "--methods", "toy-bright", "--dataset", str(dataset), "--executor", "inline",
              "--seeds", "2", "--chunk-size", "2", "--no-report"]
    killed_out = tmp_path / "killed"
    process = _cli([*common, "--out", str(killed_out), "--set", "toy-bright.sleep_s=0.15"])
    parts = killed_out / "episodes" / "method=toy-bright"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stored_before = len(list(parts.glob("part-*.parquet")))
    assert stored_before >= 2
    resumed = _cli([*common, "--out", str(killed_out), "--set", "toy-bright.sleep_s=0.15"])
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "already stored" in out
    clean = _cli([*common, "--out", str(tmp_path / "clean"), "--set", "toy-bright.sleep_s=0.15"])
    clean.communicate(timeout=120)
    killed_rows, clean_rows = _rows(killed_out), _rows(tmp_path / "clean")
    assert killed_rows["episode_id"].is_unique
    pd.testing.assert_frame_equal(killed_rows, clean_rows)


def test_cli_exit_code_and_summary_on_failures(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    process = _cli(["run", "--methods", "toy-bright", "--dataset", str(dataset), "--executor", "inline",
                    "--seeds", "1", "--out", str(tmp_path / "run"), "--set", "toy-bright.crash_width=65"])
    out, err = process.communicate(timeout=120)
    assert process.returncode == 3
    assert "episodes failed" in err and "Traceback" not in err
    assert "mIoU" in out  # the table is still written from the rows that succeeded


def test_missing_dataset_is_one_line_error(tmp_path):
    process = _cli(["run", "--methods", "toy-bright", "--dataset", str(tmp_path / "nope"), "--executor", "inline"])
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "Traceback" not in err and str(tmp_path / "nope") in err


@pytest.mark.ray
def test_ray_run_retries_a_dead_worker(tmp_path, ray_cluster):
    dataset = make_folder_dataset(tmp_path / "data")
    marker = tmp_path / "died-once"
    summary = execute(
        config(dataset, tmp_path / "run", executor="ray", workers=2, cpus_per_worker=1,
               options={"die_once_marker": str(marker)}),
        progress_out=None,
    )
    assert marker.exists()  # a worker really died
    rows = read_run(summary.run_dir)
    assert len(rows) == summary.episodes and (rows["status"] == "ok").all()
    inline = execute(config(dataset, tmp_path / "inline"), progress_out=None)
    pd.testing.assert_frame_equal(_rows(summary.run_dir), _rows(inline.run_dir))


@pytest.mark.ray
def test_infeasible_gpu_request_is_refused_up_front(tmp_path, ray_cluster):
    from harness.ray_executor import ClusterError

    dataset = make_folder_dataset(tmp_path / "data")
    with pytest.raises(ClusterError, match="GPU"):
        execute(config(dataset, tmp_path / "run", executor="ray", gpus_per_worker=0.5), progress_out=None)
    with pytest.raises(ClusterError, match="workers"):
        execute(config(dataset, tmp_path / "run2", executor="ray", workers=4, cpus_per_worker=1), progress_out=None)


@pytest.mark.ray
def test_ray_worker_start_failure_is_one_clear_error(tmp_path, ray_cluster):
    from harness.ray_executor import ClusterError

    dataset = make_folder_dataset(tmp_path / "data")
    with pytest.raises(ClusterError, match="weights.pt: truncated file"):
        execute(config(dataset, tmp_path / "run", executor="ray", workers=2, cpus_per_worker=1,
                       options={"fail_init": "weights.pt: truncated file"}), progress_out=None)
    assert not list((tmp_path / "run").glob("episodes/*/part-*.parquet"))


def test_run_json_records_completion_and_invocations(tmp_path):
    import json

    dataset = make_folder_dataset(tmp_path / "data")
    summary = execute(config(dataset, tmp_path / "run"), progress_out=None)
    execute(config(dataset, tmp_path / "run"), progress_out=None)
    record = json.loads((summary.run_dir / "run.json").read_text())
    assert record["status"] == "complete" and record["ended_at"]
    assert len(record["invocations"]) == 2
    assert record["counts"] == {"planned": summary.episodes, "done": summary.episodes, "failed": 0, "ok": summary.episodes,
                                "retry_on_resume": 0}
    assert record["methods"]["toy-bright"]["config_hash"]
    assert record["manifest_id"] == summary.manifest_id and record["git"]["sha"]


def test_bad_method_name_and_chunk_size_are_refused(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    with pytest.raises(RunError, match="chunk-size"):
        execute(config(dataset, tmp_path / "run", chunk_size=0), progress_out=None)
