"""Faults around a run (issue 20, harness side): hung predict, transient errors retried on
resume, corrupt part data, the orphan reaper, run-folder paths, lost nodes, crashing episodes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import tests.toy_methods  # noqa: F401  (registers toy-bright)
from harness.run import ManifestSettings, RunConfig, execute
from harness.store import read_run
from methods.base import MethodSpec
from tests.toy_methods import make_folder_dataset

KEY_COLUMNS = ["episode_id", "status", "tp", "fp", "fn", "tn"]


def config(dataset: Path, out: Path, executor: str = "inline", **overrides) -> RunConfig:
    return RunConfig(
        methods=[MethodSpec.create("toy-bright", overrides.pop("options", {}))],
        dataset=str(dataset),
        manifest=overrides.pop("manifest", ManifestSettings(shots=(1,), seeds=2, normal_fraction=0.2)),
        out=str(out), executor=executor, chunk_size=overrides.pop("chunk_size", 3), **overrides)


def rows_of(run_dir: Path) -> pd.DataFrame:
    return read_run(run_dir)[KEY_COLUMNS].sort_values("episode_id").reset_index(drop=True)


def query_widths(run_dir: Path) -> pd.Series:
    """Width of each row's query image (the toy fixture's images are 64 + i pixels wide)."""
    rows = read_run(run_dir)
    return rows["query_id"].map(lambda query: 64 + int(query.rsplit("_", 1)[1].split(".")[0]))


# ------------------------------------------------------------------------------ item 3: timeout


def test_hung_predict_becomes_a_timeout_row_and_the_run_goes_on(tmp_path, capsys):
    dataset = make_folder_dataset(tmp_path / "data")
    summary = execute(config(dataset, tmp_path / "run", options={"hang_width": 65}, episode_timeout_s=0.5),
                      progress_out=None)
    rows = read_run(summary.run_dir)
    hung = query_widths(summary.run_dir) == 65
    assert hung.any() and len(rows) == summary.episodes
    assert rows.loc[hung, "status"].str.startswith("error: EpisodeTimeout: predict did not return within 0.5 s").all()
    assert (rows.loc[~hung, "status"] == "ok").all()
    assert summary.failed == hung.sum()
    assert "the method loaded again" in capsys.readouterr().err
    assert json.loads((summary.run_dir / "run.json").read_text())["episode_timeout_s"] == 0.5


def test_predict_thread_passes_results_and_errors_through():
    from harness.runner import EpisodeTimeout, PredictThread

    predictor = PredictThread(timeout_s=30)
    assert predictor.call(lambda: 41 + 1) == 42
    with pytest.raises(ZeroDivisionError):
        predictor.call(lambda: 1 / 0)
    import threading

    gate = threading.Event()
    predictor.timeout_s = 0.05
    with pytest.raises(EpisodeTimeout):
        predictor.call(gate.wait)
    predictor.timeout_s = 30
    assert predictor.call(lambda: "fresh thread") == "fresh thread" and predictor.abandoned == 1
    gate.set()


@pytest.mark.ray
def test_hung_predict_under_ray_is_a_timeout_row_and_its_worker_restarts(tmp_path, ray_cluster):
    dataset = make_folder_dataset(tmp_path / "data")
    summary = execute(config(dataset, tmp_path / "run", executor="ray", workers=2, cpus_per_worker=1,
                             options={"hang_width": 65}, episode_timeout_s=1.0), progress_out=None)
    rows = read_run(summary.run_dir)
    hung = query_widths(summary.run_dir) == 65
    assert hung.any() and len(rows) == summary.episodes == rows["episode_id"].nunique()
    assert rows.loc[hung, "status"].str.startswith("error: EpisodeTimeout").all()
    assert (rows.loc[~hung, "status"] == "ok").all()
