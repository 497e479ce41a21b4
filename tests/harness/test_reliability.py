"""Faults around a run (issue 9): corrupt parts, full disk, concurrent runs, changed data,
skipped inputs, incomplete runs in the report, checkpoint errors, supports with replacement."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import tests.toy_methods  # noqa: F401  (registers toy-bright)
from harness.episodes import build_manifest, write_manifest
from harness.features import BackboneError, read_state_dict
from harness.run import ManifestSettings, RunConfig, RunError, execute
from harness.store import RunStore, StoreError, read_run, verify_part
from methods.base import MethodSpec
from tests.toy_methods import make_folder_dataset

KEY_COLUMNS = ["episode_id", "status", "tp", "fp", "fn", "tn"]


def config(dataset: Path, out: Path, **overrides) -> RunConfig:
    return RunConfig(
        methods=[MethodSpec.create("toy-bright", overrides.pop("options", {}))],
        dataset=str(dataset),
        manifest=overrides.pop("manifest", ManifestSettings(shots=(1,), seeds=2, normal_fraction=0.2)),
        out=str(out), executor="inline", chunk_size=overrides.pop("chunk_size", 3), **overrides)


def rows_of(run_dir: Path) -> pd.DataFrame:
    return read_run(run_dir)[KEY_COLUMNS].sort_values("episode_id").reset_index(drop=True)


def parts_of(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "episodes" / "method=toy-bright").glob("part-*.parquet"))


def leftover_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


# ------------------------------------------------------------------------------ corrupt parts


def test_corrupt_and_short_parts_are_moved_aside_and_recomputed(tmp_path, capsys):
    dataset = make_folder_dataset(tmp_path / "data")
    first = execute(config(dataset, tmp_path / "run"), progress_out=None)
    clean = rows_of(first.run_dir)
    truncated, short = parts_of(first.run_dir)[:2]
    truncated.write_bytes(truncated.read_bytes()[:100])  # "Parquet magic bytes not found"
    table = pq.read_table(short)
    pq.write_table(table.slice(0, 1), short)  # a whole file with rows missing
    with pytest.raises(StoreError, match=str(truncated.name)):
        read_run(first.run_dir)  # the report names the file instead of a pyarrow traceback

    again = execute(config(dataset, tmp_path / "run"), progress_out=None)
    err = capsys.readouterr().err
    assert err.count("moved to") == 2 and "the chunk is computed again" in err
    assert again.methods[0].ok == 6 and again.methods[0].skipped == first.episodes - 6
    pd.testing.assert_frame_equal(rows_of(first.run_dir), clean)
    corrupt = sorted((first.run_dir / "episodes" / ".corrupt" / "method=toy-bright").iterdir())
    assert len([p for p in corrupt if not p.name.endswith(".sha256")]) == 2  # each with its checksum
    assert len(corrupt) == 4
    assert json.loads((first.run_dir / "run.json").read_text())["status"] == "complete"


def test_verify_part_reports_why(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    summary = execute(config(dataset, tmp_path / "run"), progress_out=None)
    part = parts_of(summary.run_dir)[0]
    assert verify_part(part, 3) is None
    assert verify_part(part, 4) == "3 rows, its chunk has 4"
    pq.write_table(pq.read_table(part).drop_columns(["episode_id"]), part)
    assert "episode_id" in verify_part(part, 3)
    part.write_bytes(b"garbage")
    assert verify_part(part, 3).startswith("unreadable Parquet")


# ------------------------------------------------------------------------------ full disk


def test_disk_full_is_one_store_error_keeps_parts_and_leaves_no_temp_files(tmp_path, monkeypatch):
    dataset = make_folder_dataset(tmp_path / "data")
    real_write = pq.write_table
    calls = {"n": 0}

    def write_until_full(table, where, *args, **kwargs):
        calls["n"] += "part-" in str(where)
        if calls["n"] > 2:
            Path(where).write_bytes(b"PAR1 half")  # a partial temp file, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_until_full)
    with pytest.raises(StoreError) as info:
        execute(config(dataset, tmp_path / "run"), progress_out=None)
    assert "No space left on device" in str(info.value) and "part-00002.parquet" in str(info.value)
    assert "\n" not in str(info.value)
    run_dir = tmp_path / "run"
    assert len(parts_of(run_dir)) == 2 and leftover_temp_files(run_dir) == []
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted" and record["counts"]["done"] == 6
    monkeypatch.setattr(pq, "write_table", real_write)
    resumed = execute(config(dataset, tmp_path / "run"), progress_out=None)
    assert resumed.methods[0].skipped == 6 and len(read_run(run_dir)) == resumed.episodes


def test_failing_run_json_in_finally_does_not_mask_the_first_error(tmp_path, monkeypatch, capsys):
    dataset = make_folder_dataset(tmp_path / "data")
    real_json = RunStore.write_record
    calls = {"n": 0}

    def json_fails_after_start(self, record):
        calls["n"] += 1
        if calls["n"] > 1:
            raise StoreError(f"{self.run_json}: cannot write (No space left on device)")
        real_json(self, record)

    def part_fails(self, method, index, rows):
        raise StoreError("part-00000.parquet: cannot write (No space left on device)")

    monkeypatch.setattr(RunStore, "write_record", json_fails_after_start)
    monkeypatch.setattr(RunStore, "write_part", part_fails)
    with pytest.raises(StoreError, match="part-00000"):
        execute(config(dataset, tmp_path / "run"), progress_out=None)
    assert "run.json not updated" in capsys.readouterr().err
    assert not (tmp_path / "run" / ".lock").exists()


# ------------------------------------------------------------------------------ lock


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_run_folder_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, capsys):
    store = RunStore(tmp_path / "run")
    with store.lock():
        with pytest.raises(StoreError, match=f"in use by pid {os.getpid()}"):
            RunStore(tmp_path / "run").lock()
    assert not store.lock_path.exists()
    store.lock_path.write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename, "since": "x"}))
    warnings = []
    with store.lock(warn=warnings.append):
        assert json.loads(store.lock_path.read_text())["pid"] == os.getpid()
    assert len(warnings) == 1 and "stale lock" in warnings[0]


def test_run_refuses_a_folder_held_by_another_live_process(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run_dir / ".lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "since": "t"}))
        with pytest.raises(StoreError, match=f"in use by pid {holder.pid}"):
            execute(config(dataset, run_dir), progress_out=None)
        assert not (run_dir / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------------ changed data


def test_relabelled_mask_changes_the_manifest_id_and_resume_is_refused(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    first = execute(config(dataset, tmp_path / "run"), progress_out=None)
    cache = Path(os.environ["SOFS_BENCH_CACHE"]) / "content-hashes.json"
    assert str(os.path.realpath(dataset / "spot" / "masks" / "spot_1.png")) in json.loads(cache.read_text())
    mask_path = dataset / "spot" / "masks" / "spot_1.png"
    relabelled = np.zeros((48, 65), np.uint8)
    relabelled[30:35, 40:45] = 255
    Image.fromarray(relabelled).save(mask_path)
    with pytest.raises(RunError, match="images or masks changed since this run was made"):
        execute(config(dataset, tmp_path / "run"), progress_out=None)
    other = execute(config(dataset, tmp_path / "run2"), progress_out=None)
    assert other.manifest_id != first.manifest_id


def test_given_manifest_over_changed_data_is_refused(tmp_path):
    from datasets.base import load_dataset
    from harness.episodes import ManifestError

    dataset = make_folder_dataset(tmp_path / "data")
    manifest = build_manifest(load_dataset(str(dataset)), seeds=1, hash_content=True)
    path = write_manifest(manifest, tmp_path / "manifests")
    image = dataset / "line" / "images" / "line_2.png"
    Image.open(image).rotate(180).save(image)
    with pytest.raises(ManifestError, match="changed since manifest"):
        execute(config(dataset, tmp_path / "run", manifest_path=str(path)), progress_out=None)


# ------------------------------------------------------------------------------ skipped inputs


def test_skipped_inputs_get_a_console_line_and_a_list_file(tmp_path, capsys):
    dataset = make_folder_dataset(tmp_path / "data")
    (dataset / "spot" / "images" / "spot_2.png").write_bytes(b"")  # zero-byte image
    (dataset / "line" / "masks" / "line_3.png").unlink()  # defect image without its mask
    summary = execute(config(dataset, tmp_path / "run"), progress_out=None)
    err = capsys.readouterr().err
    listing = summary.run_dir / "skipped_inputs.tsv"
    assert f"2 dataset file(s) left out" in err and str(listing) in err
    text = listing.read_text()
    assert "spot_2.png\tunreadable_images" in text and "line_3.png\tmissing_masks" in text


# ------------------------------------------------------------------------------ report coverage


def test_report_states_stored_of_planned_and_marks_incomplete_methods(tmp_path):
    from harness.report import build_report

    dataset = make_folder_dataset(tmp_path / "data")
    summary = execute(config(dataset, tmp_path / "run"), progress_out=None)
    complete = build_report([summary.run_dir], tmp_path / "rep1", bootstrap=0)
    assert f"run: {summary.episodes} of {summary.episodes} planned episodes stored" in complete.notes
    parts_of(summary.run_dir)[0].unlink()
    partial = build_report([summary.run_dir], tmp_path / "rep2", bootstrap=0)
    line = next(n for n in partial.notes if "planned episodes stored" in n)
    assert line == (f"run: {summary.episodes - 3} of {summary.episodes} planned episodes stored; incomplete: "
                    f"toy-bright ({summary.episodes - 3} of {summary.episodes}) (run the same command to resume)")
    assert "planned episodes stored" in partial.html_path.read_text()


# ------------------------------------------------------------------------------ weights


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_with_python_objects_is_one_line_without_unsafe_advice(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(BackboneError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "GLOBAL" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


# ------------------------------------------------------------------------------ supports


def test_more_shots_than_supports_is_refused_unless_replacement_is_allowed(tmp_path, capsys):
    dataset = make_folder_dataset(tmp_path / "data")  # 4 images per class: 3 possible supports
    many = ManifestSettings(shots=(5,), seeds=1, normal_fraction=0.0)
    with pytest.raises(RunError, match="--allow-replacement"):
        execute(config(dataset, tmp_path / "run", manifest=many), progress_out=None)
    assert not (tmp_path / "run").exists()
    summary = execute(config(dataset, tmp_path / "run", manifest=many, allow_replacement=True), progress_out=None)
    assert "drawn with replacement" in capsys.readouterr().err and summary.failed == 0


# ------------------------------------------------------------------------------ CLI errors, Ray orphans


def test_os_and_pyarrow_errors_reaching_the_cli_are_one_line():
    import click
    import pyarrow as pa

    from bench import user_errors

    with pytest.raises(click.ClickException) as info:
        with user_errors():
            raise OSError(errno.ENOSPC, "No space left on device", "/data/run/run.json")
    assert info.value.message == "/data/run/run.json: No space left on device"
    with pytest.raises(click.ClickException) as info:
        with user_errors():
            raise pa.ArrowInvalid("Parquet magic bytes not found in footer.\nEither the file is corrupted")
    assert "\n" not in info.value.message and "magic bytes" in info.value.message


def test_orphaned_ray_daemons_of_a_dead_driver_are_reaped(tmp_path, monkeypatch):
    import harness.ray_executor as ray_executor

    monkeypatch.setattr(ray_executor.tempfile, "gettempdir", lambda: str(tmp_path))
    # stands in for a raylet: recorded with its start time, its driver is gone
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "ray-daemon-stand-in"])
    # a process the kernel gave a recorded pid to since: its command line says "ray", its start time differs
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "gray_decoy"])
    try:
        registry = tmp_path / "sofs-bench-ray"
        registry.mkdir()
        start = ray_executor.process_start
        record = {"driver": _dead_pid(), "host": os.uname().nodename, "boot_id": ray_executor._boot_id(),
                  "processes": [[daemon.pid, start(daemon.pid)], [decoy.pid, start(decoy.pid) - 1]]}
        (registry / "1.json").write_text(json.dumps(record))
        assert ray_executor.reap_orphans() == 1
        assert daemon.wait(timeout=10) == -9
        assert decoy.poll() is None  # not provably ours: left alone
        assert not (registry / "1.json").exists()
    finally:
        for process in (daemon, decoy):
            process.kill()
            process.wait()
