"""``harness.run.Run``: a run is opened once (dataset, manifest, fingerprint, method checks) and its
plan and execution share one job generator; run.json is a typed ``RunRecord``."""
import json
from pathlib import Path
from dataclasses import replace

import pandas as pd
import pytest
from click.testing import CliRunner

import tests.toy_methods  # noqa: F401  (registers toy-bright)
from harness.run import ManifestSettings, Run, RunConfig
from harness.run_record import RunRecord
from harness.store import RunStore, StoreError
from methods.base import MethodSpec
from tests.toy_methods import make_folder_dataset


def config(dataset, out, **overrides) -> RunConfig:
    second = MethodSpec("toy-bright-2", {}, {}, "tests.toy_methods:Bright", {})  # a second method, same class
    return RunConfig(methods=[MethodSpec.create("toy-bright"), second],
        dataset=str(dataset), manifest=ManifestSettings(shots=(1,), seeds=2, normal_fraction=0.2), out=str(out),
        executor="inline", chunk_size=3, **overrides)


@pytest.fixture
def counted(monkeypatch):
    """Counts of dataset loads, manifest builds (each hashes every file: the data fingerprint) and
    method checks (a SOFS check reads its checkpoint)."""
    from datasets import base
    from harness import episodes

    counts = {"load_dataset": 0, "build_manifest": 0, "check": 0}

    def counting(module, name, key):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counting(base, "load_dataset", "load_dataset")
    counting(episodes, "build_manifest", "build_manifest")
    counting(MethodSpec, "check", "check")
    return counts


def test_bench_run_loads_the_dataset_once(tmp_path, counted):
    from bench import cli

    dataset = make_folder_dataset(tmp_path / "data")
    result = CliRunner().invoke(cli, ["run", "--methods", "toy-bright", "--dataset", str(dataset), "--seeds", "2",
                                      "--executor", "inline", "--out", str(tmp_path / "run"), "--no-report"])
    assert result.exit_code == 0, result.output
    assert "plan: " in result.output and "computed" in result.output
    assert counted == {"load_dataset": 1, "build_manifest": 1, "check": 1}


def test_dry_run_loads_once_and_writes_nothing(tmp_path, counted):
    from bench import cli

    dataset = make_folder_dataset(tmp_path / "data")
    result = CliRunner().invoke(cli, ["run", "--methods", "toy-bright", "--dataset", str(dataset),
                                      "--executor", "inline", "--out", str(tmp_path / "run"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: nothing computed" in result.output
    assert counted == {"load_dataset": 1, "build_manifest": 1, "check": 1}
    assert not (tmp_path / "run").exists()


def test_the_plan_counts_what_the_run_computes(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    first = Run.open(config(dataset, tmp_path / "run"))
    assert [m.to_compute for m in first.plan().methods] == [first.plan().episodes] * 2
    done = first.execute(progress_out=None)
    store = RunStore(done.run_dir)
    store.part_path("toy-bright", 1).unlink()  # one chunk lost, one corrupt: both recomputed
    store.part_path("toy-bright-2", 0).write_bytes(b"not parquet")
    again = Run.open(config(dataset, tmp_path / "run"))
    plan = again.plan()
    assert store.part_path("toy-bright-2", 0).read_bytes() == b"not parquet"  # the plan changes nothing
    summary = again.execute(progress_out=None)
    assert [m.to_compute for m in plan.methods] == [m.ok + m.failed for m in summary.methods] == [3, 3]
    assert [m.stored for m in plan.methods] == [m.skipped for m in summary.methods]


def test_run_record_round_trips_and_reads_older_files(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    summary = Run.open(config(dataset, tmp_path / "run")).execute(progress_out=None)
    store = RunStore(summary.run_dir)
    record = store.read_record()
    assert isinstance(record, RunRecord) and record.status == "complete" and record.chunk_order == "query"
    assert json.loads(store.run_json.read_text()) == record.to_json()
    # A run.json of an older version: no chunk_order, a field this version does not know.
    old = {k: v for k, v in record.to_json().items() if k != "chunk_order"} | {"legacy_field": [1, 2]}
    store.run_json.write_text(json.dumps(old))
    older = store.read_record()
    assert older.chunk_order is None and older.resolved_chunk_order == "manifest"
    assert older.extra == {"legacy_field": [1, 2]} and older.to_json()["legacy_field"] == [1, 2]
    store.write_record(replace(older, chunk_size=0))
    with pytest.raises(StoreError, match="chunk_size 0"):
        store.read_record()


def test_the_driver_stores_the_maps_and_a_map_it_cannot_write_is_a_transient_error_row(tmp_path, monkeypatch):
    import errno

    from harness.status import is_transient
    from harness.store import read_run

    dataset = make_folder_dataset(tmp_path / "data")
    real = RunStore.write_prediction
    refused = []

    def full_disk_once(self, method, episode_id, score_u8):
        if not refused:
            refused.append(episode_id)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, method, episode_id, score_u8)

    monkeypatch.setattr(RunStore, "write_prediction", full_disk_once)
    summary = Run.open(config(dataset, tmp_path / "run", save_predictions=True)).execute(progress_out=None)
    rows = read_run(summary.run_dir).set_index(["method", "episode_id"])
    store = RunStore(summary.run_dir)
    failed = rows.loc[("toy-bright", refused[0])]
    assert failed["status"].startswith("error: OSError: [Errno 28]") and is_transient(failed["status"])
    assert pd.isna(failed["tp"]) and pd.isna(failed["iou_fg"]) and pd.isna(failed["pred_path"])  # no metrics kept
    assert refused[0] in store.errors_log.read_text()
    ok = rows[rows["status"] == "ok"]
    assert len(ok) == len(rows) - 1 and all(store.prediction_path(m, e) == Path(p) and Path(p).is_file()
                                            for (m, e), p in ok["pred_path"].items())
