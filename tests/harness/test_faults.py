"""Faults around a run (issue 20, harness side): hung predict, transient errors retried on
resume, corrupt part data, the orphan reaper, run-folder paths, lost nodes, crashing episodes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------------------------ item 4: transient errors


def test_transient_error_rows_are_retried_on_resume_and_counted_until_they_succeed(tmp_path, capsys):
    from harness.report import build_report

    dataset = make_folder_dataset(tmp_path / "data")
    disk_back = tmp_path / "disk-has-room-again"
    options = {"full_disk_width": 65, "full_disk_until": str(disk_back)}
    first = execute(config(dataset, tmp_path / "run", options=options), progress_out=None)
    full = int((query_widths(first.run_dir) == 65).sum())
    assert full > 0 and first.failed == full
    assert rows_of(first.run_dir)["status"].str.startswith("error: OSError: [Errno 28] No space left").sum() == full
    record = json.loads((first.run_dir / "run.json").read_text())
    assert record["counts"]["retry_on_resume"] == full and record["status"] == "incomplete"
    report = build_report([first.run_dir], tmp_path / "report", bootstrap=0)
    line = next(n for n in report.notes if "planned episodes stored" in n)
    assert line.startswith(f"run: {first.episodes - full} of {first.episodes} planned episodes stored "
                           f"({full} more failed on a transient cause")

    from harness.run import Run

    plan = Run.open(config(dataset, tmp_path / "run", options=options)).plan()
    assert plan.methods[0].to_compute == full  # the plan counts the retries too

    still_full = execute(config(dataset, tmp_path / "run", options=options), progress_out=None)
    assert still_full.methods[0].failed == full and still_full.methods[0].ok == 0  # not "failed 0"
    assert still_full.methods[0].skipped == first.episodes - full
    assert f"{full} stored episode(s) failed on a transient cause" in capsys.readouterr().err

    disk_back.touch()
    healed = execute(config(dataset, tmp_path / "run", options=options), progress_out=None)
    assert healed.failed == 0 and healed.methods[0].ok == full
    clean = execute(config(dataset, tmp_path / "clean", options=options), progress_out=None)
    pd.testing.assert_frame_equal(rows_of(healed.run_dir), rows_of(clean.run_dir))
    assert json.loads((healed.run_dir / "run.json").read_text())["status"] == "complete"
    again = execute(config(dataset, tmp_path / "run", options=options), progress_out=None)
    assert again.methods[0].skipped == again.episodes and again.methods[0].ok == 0


def test_which_errors_are_transient():
    from harness.runner import EpisodeTimeout, WorkerDied, describe_error
    from harness.status import TIMEOUT, WORKER_DIED, is_transient

    assert (EpisodeTimeout.__name__, WorkerDied.__name__) == (TIMEOUT, WORKER_DIED)
    for exc in (OSError(28, "No space left on device"), FileNotFoundError("x.png"), MemoryError(),
                EpisodeTimeout("slow"), WorkerDied("gone"), PermissionError("denied")):
        assert is_transient(describe_error(exc)), exc
    for status in ("ok", None, "error: RuntimeError: toy crash", "error: ValueError: OSError: in the text",
                   "error: MethodError: bad option"):
        assert not is_transient(status), status


# ------------------------------------------------------------------------------ item 8: part checksums


def parts_of(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "episodes" / "method=toy-bright").glob("part-*.parquet"))


def test_part_with_a_valid_footer_but_changed_data_is_recomputed(tmp_path, capsys):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from harness.store import checksum_path, verify_part

    dataset = make_folder_dataset(tmp_path / "data")
    first = execute(config(dataset, tmp_path / "run"), progress_out=None)
    clean = rows_of(first.run_dir)
    part = parts_of(first.run_dir)[1]
    assert checksum_path(part).read_text().split()[1] == part.name
    table = pq.read_table(part)
    forged = table.set_column(table.schema.get_field_index("tp"), "tp", pc.add(table.column("tp"), 1))
    pq.write_table(forged, part)  # a whole, valid file: footer, schema and row count all fine
    assert verify_part(part, 3) is None
    again = execute(config(dataset, tmp_path / "run"), progress_out=None)
    err = capsys.readouterr().err
    assert f"{part}: content does not match its sha256" in err and "computed again" in err
    assert again.methods[0].ok == 3
    pd.testing.assert_frame_equal(rows_of(first.run_dir), clean)


def test_bit_flip_in_part_data_is_refused_by_the_reader_naming_the_file(tmp_path):
    from harness.report import build_report
    from harness.store import StoreError

    dataset = make_folder_dataset(tmp_path / "data")
    first = execute(config(dataset, tmp_path / "run"), progress_out=None)
    part = parts_of(first.run_dir)[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0x10  # inside the column chunks; the footer at the end is intact
    part.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"{part}: content does not match its sha256"):
        read_run(first.run_dir)
    with pytest.raises(StoreError, match=str(part)):
        build_report([first.run_dir], tmp_path / "report", bootstrap=0)


def test_part_from_before_checksums_is_read_whole_and_adopted(tmp_path, capsys):
    from harness.store import checksum_path

    dataset = make_folder_dataset(tmp_path / "data")
    first = execute(config(dataset, tmp_path / "run"), progress_out=None)
    for part in parts_of(first.run_dir):
        checksum_path(part).unlink()
    again = execute(config(dataset, tmp_path / "run"), progress_out=None)
    assert again.methods[0].skipped == first.episodes
    assert "part(s) written before parts had checksums" in capsys.readouterr().err
    assert all(checksum_path(part).exists() for part in parts_of(first.run_dir))


# ------------------------------------------------------------------------------ item 6: orphan reaper


def test_reaper_leaves_a_reused_pid_alone_even_with_ray_in_its_command_line(tmp_path, monkeypatch):
    import harness.ray_executor as ray_executor

    monkeypatch.setattr(ray_executor.tempfile, "gettempdir", lambda: str(tmp_path))
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "gray_decoy"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        registry = tmp_path / "sofs-bench-ray"
        registry.mkdir()
        # a record of the old format (pids only) and one whose driver pid was reused by a live process
        (registry / "1.json").write_text(json.dumps({"driver": dead.pid, "host": os.uname().nodename,
                                                     "pids": [decoy.pid]}))
        (registry / "2.json").write_text(json.dumps({
            "driver": os.getpid(), "driver_start": ray_executor.process_start(os.getpid()) - 5,
            "host": os.uname().nodename, "boot_id": ray_executor._boot_id(),
            "processes": [[decoy.pid, ray_executor.process_start(decoy.pid) + 3]]}))
        assert ray_executor.reap_orphans() == 0
        assert decoy.poll() is None
        assert not list(registry.iterdir())  # both records were dealt with
    finally:
        decoy.kill()
        decoy.wait()


def test_process_start_reads_a_command_name_with_spaces_and_parentheses(tmp_path):
    from harness.ray_executor import process_start

    odd = tmp_path / "a b) (c"
    odd.symlink_to(sys.executable)
    process = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"])
    try:
        stat = Path(f"/proc/{process.pid}/stat").read_text()
        assert process_start(process.pid) == int(stat.rsplit(")", 1)[1].split()[19]) > 0
    finally:
        process.kill()
        process.wait()
    assert process_start(process.pid) is None


# ------------------------------------------------------------------------------ item 10: run-folder paths


def _opened_files(monkeypatch) -> list[str]:
    """Every path PIL opens from here on."""
    from PIL import Image

    opened, real_open = [], Image.open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    return opened


def test_report_opens_prediction_files_only_inside_the_run_folder(tmp_path, monkeypatch):
    from PIL import Image

    from harness.report import build_report
    from harness.store import RunStore

    dataset = make_folder_dataset(tmp_path / "data")
    summary = execute(config(dataset, tmp_path / "run", save_predictions=True), progress_out=None)
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    Image.fromarray(np.full((48, 65), 200, np.uint8)).save(secret)
    store = RunStore(summary.run_dir)
    rows = store.read_part("toy-bright", 0)
    for row in rows:  # the rows now name a file outside the run folder, and their own PNG is gone
        store.prediction_path("toy-bright", row["episode_id"]).unlink()
        row["pred_path"] = str(secret)
    store.write_part("toy-bright", 0, rows)
    planted = store.prediction_path("toy-bright", store.read_part("toy-bright", 1)[0]["episode_id"])
    planted.unlink()
    planted.symlink_to(secret)  # a link inside the run folder leading out of it
    opened = _opened_files(monkeypatch)
    build_report([summary.run_dir], tmp_path / "report", bootstrap=0)
    assert opened and str(secret) not in opened and str(planted) not in opened


def test_writes_do_not_follow_links_planted_in_the_run_folder(tmp_path):
    from harness.store import StoreError
    from harness.summary import write_run_summary

    dataset = make_folder_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    first = execute(config(dataset, run_dir, options={"crash_width": 65}), progress_out=None)
    for name in ("summary.md", "errors.log", "report"):
        target = run_dir / name
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        target.symlink_to(victim)
    write_run_summary(run_dir, bootstrap=0)
    assert not (run_dir / "summary.md").is_symlink() and "mIoU" in (run_dir / "summary.md").read_text()
    for part in parts_of(run_dir)[:2]:
        part.unlink()  # so the resume computes (and logs errors) again
    execute(config(dataset, run_dir, options={"crash_width": 65}), progress_out=None)
    assert victim.read_text() == "keep me"  # errors.log was not appended through the link
    from harness.report import build_report

    with pytest.raises(StoreError, match="symbolic link inside the run folder"):
        build_report([run_dir], run_dir / "report", bootstrap=0)
    outside = tmp_path / "outside"
    outside.mkdir()
    (run_dir / "episodes" / "method=toy-bright").rename(tmp_path / "moved")
    (run_dir / "episodes" / "method=toy-bright").symlink_to(outside)
    with pytest.raises(StoreError, match="method=toy-bright: is a symbolic link"):
        execute(config(dataset, run_dir, options={"crash_width": 65}), progress_out=None)
    assert not list(outside.iterdir()) and victim.read_text() == "keep me" and first.failed


# ------------------------------------------------------------------------------ item 11: report faults


def test_one_truncated_prediction_png_is_skipped_with_a_note(tmp_path):
    from harness.report import build_report

    dataset = make_folder_dataset(tmp_path / "data")
    summary = execute(config(dataset, tmp_path / "run", save_predictions=True), progress_out=None)
    png = sorted((summary.run_dir / "predictions" / "toy-bright").glob("*.png"))[0]
    png.write_bytes(png.read_bytes()[:60])  # header kept, pixel data cut
    report = build_report([summary.run_dir], tmp_path / "report", bootstrap=0)
    assert any(str(png) in note and "unreadable" in note for note in report.notes)
    assert report.html_path.is_file()


def test_a_report_killed_midway_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    from harness import report as report_package
    from harness.report import build_report

    dataset = make_folder_dataset(tmp_path / "data")
    summary = execute(config(dataset, tmp_path / "run"), progress_out=None)
    out = tmp_path / "report"
    build_report([summary.run_dir], out, bootstrap=0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    parts_of(summary.run_dir)[0].unlink()  # the next report's tables differ

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_package, "render_report", killed)
    with pytest.raises(KeyboardInterrupt):
        build_report([summary.run_dir], out, bootstrap=0)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]
    monkeypatch.undo()
    again = build_report([summary.run_dir], out, bootstrap=0)
    assert again.html_path == out / "report.html" and (out / "summary.md").read_bytes() != before["summary.md"]
    assert all(path.parent == out and path.exists() for path in again.files)


# ------------------------------------------------------------------------------ item 5: lost node


def test_worker_slots_count_whole_workers_on_live_nodes():
    from harness.ray_executor import worker_slots

    nodes = [{"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
             {"Alive": True, "Resources": {"CPU": 3.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    assert worker_slots(nodes, 2.0, 0.0) == 2 + 1
    assert worker_slots(nodes, 1.0, 0.5) == 2  # GPU-bound: only the first node has one
    assert worker_slots(nodes, 8.0, 0.0) == 0


@pytest.mark.ray
def test_restart_wait_gives_up_at_once_when_the_cluster_has_no_room(ray_cluster, capsys):
    import ray

    from harness.ray_executor import RayExecutor, worker_slots

    @ray.remote(num_cpus=1)
    class Stranded:
        def ready(self):
            return "never scheduled"

    stranded = Stranded.options(resources={"a_node_that_is_gone": 1}).remote()  # waits for room forever
    executor = RayExecutor(workers=2, cpus_per_worker=1, start_timeout_s=600)
    healthy = worker_slots(ray.nodes(), 1.0, 0.0)  # every slot is held by a running worker
    assert executor._restarted(stranded, healthy, "method 'toy-bright'") is False
    assert f"the cluster has room for {healthy} worker(s), {healthy} running" in capsys.readouterr().err


@pytest.mark.slow
def test_lost_node_without_spare_capacity_is_replanned_onto_the_survivor(tmp_path, capsys):
    """Two one-CPU nodes, two workers; the second node dies mid-run: the run ends on the first."""
    import threading
    import time

    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.skip("needs its own Ray cluster (run apart from the session cluster)")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    doomed = cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        dataset = make_folder_dataset(tmp_path / "data", n_per_category=5)
        run_dir = tmp_path / "run"

        def kill_after_first_part():  # both workers run by then
            while not list(run_dir.glob("episodes/*/part-*.parquet")):
                time.sleep(0.05)
            cluster.remove_node(doomed, allow_graceful=False)

        killer = threading.Thread(target=kill_after_first_part, daemon=True)
        killer.start()
        summary = execute(config(dataset, run_dir, executor="ray", workers=2, cpus_per_worker=1,
                                 chunk_size=2, options={"sleep_s": 0.3}), progress_out=None)
        killer.join(timeout=1)
        rows = read_run(summary.run_dir)
        assert len(rows) == summary.episodes == rows["episode_id"].nunique()
        assert (rows["status"] == "ok").all()
        assert "a Ray worker was lost and the cluster has room for 1 worker(s), 1 running" in capsys.readouterr().err
    finally:
        ray.shutdown()
        cluster.shutdown()


# ------------------------------------------------------------------------------ item 11: small refusals


@pytest.mark.parametrize("method, option", [("panet", "batch_size"), ("patchcore", "batch_size"),
                                            ("sofs", "nd_batch_size"), ("seggpt", "batch_size")])
def test_zero_batch_size_is_refused_before_the_run_starts(tmp_path, method, option):
    from methods.base import MethodError

    spec = MethodSpec.create(method, {option: "0"})
    with pytest.raises(MethodError, match=f"option {option}=0; must be >= 1"):
        spec.check()
    with pytest.raises(MethodError, match=f"{option}=0"):
        execute(RunConfig(methods=[spec], dataset=str(tmp_path / "nowhere"), out=str(tmp_path / "run"),
                          executor="inline"), progress_out=None)
    assert not (tmp_path / "run").exists()


def test_a_bad_plugin_module_is_one_line(tmp_path):
    from tests.conftest import REPO_ROOT

    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('half-written plugin')\n")
    for plugins, cause in (("broken_plugin", "RuntimeError: half-written plugin"),
                           ("no_such_plugin_module", "ModuleNotFoundError")):
        env = {**os.environ, "SOFS_BENCH_PLUGINS": plugins, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO_ROOT}"}
        for args in (["methods"], ["run", "--methods", "panet", "--dry-run"]):
            done = subprocess.run([sys.executable, str(REPO_ROOT / "bench.py"), *args], env=env, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            assert done.stderr.strip().splitlines()[-1].startswith(
                f"Error: SOFS_BENCH_PLUGINS: module '{plugins}' cannot be imported ({cause}")


@pytest.mark.parametrize("damage, field", [([], "not a run record"), ({"methods": 5}, "field 'methods'"),
                                           ({"chunk_size": "abc"}, "field 'chunk_size'"),
                                           ({"methods": {"toy-bright": "x"}}, "methods.toy-bright"),
                                           ({"elapsed_s": "x"}, "field 'elapsed_s'"),
                                           ({"chunk_order": "zzz"}, "chunk_order 'zzz'")])
def test_a_malformed_run_json_is_one_line_for_run_and_report(tmp_path, damage, field):
    from harness.report import build_report
    from harness.store import StoreError

    dataset = make_folder_dataset(tmp_path / "data")
    summary = execute(config(dataset, tmp_path / "run"), progress_out=None)
    record = json.loads((summary.run_dir / "run.json").read_text())
    (summary.run_dir / "run.json").write_text(json.dumps(damage if isinstance(damage, list) else {**record, **damage}))
    with pytest.raises(StoreError, match=field) as info:
        execute(config(dataset, tmp_path / "run"), progress_out=None)
    assert str(summary.run_dir / "run.json") in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(StoreError, match=field):
        build_report([summary.run_dir], tmp_path / "report", bootstrap=0)


# ------------------------------------------------------------------------------ item 11: SIGTERM under Ray


def test_sigterm_turned_into_exit_1_by_ray_still_exits_143_with_a_line(monkeypatch, capsys):
    import signal

    import bench

    exits = []
    monkeypatch.setattr(bench, "_exit_now", exits.append)
    monkeypatch.setattr(bench, "_received", {})

    @bench.cli.command("fake-ray-wait")
    def fake_ray_wait():
        try:
            bench._terminate(signal.SIGTERM, None)  # what the handler raises inside ray.wait ...
        except SystemExit:
            raise SystemExit(1) from None  # ... and what Ray's check_status makes of it

    try:
        with pytest.raises(SystemExit):
            bench.cli(["fake-ray-wait"])
    finally:
        bench.cli.commands.pop("fake-ray-wait")
    assert exits == [143]
    assert "terminated (SIGTERM): stored results are kept" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ray
def test_sigterm_to_the_process_group_under_ray_exits_143(tmp_path):
    """A container stop or `timeout` signals the driver and its local Ray daemons together."""
    import signal
    import time

    from tests.conftest import REPO_ROOT

    dataset = make_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    env = {**os.environ, "SOFS_BENCH_PLUGINS": "tests.toy_methods", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "bench.py"), "run", "--methods", "toy-bright", "--dataset", str(dataset),
         "--executor", "ray", "--workers", "1", "--seeds", "2", "--chunk-size", "2", "--no-report", "--out", str(out),
         "--set", "toy-bright.sleep_s=0.2"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    deadline = time.time() + 180
    while not list(out.glob("episodes/*/part-*.parquet")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


# ------------------------------------------------------------------------------ item 11: an episode that kills its worker


def test_split_units_gather_the_pieces_of_a_unit_back_in_order(tmp_path):
    from harness.episodes import build_manifest
    from harness.ray_executor import SplitUnits
    from harness.runner import make_unit
    from datasets.base import load_dataset

    dataset = load_dataset(str(make_folder_dataset(tmp_path / "data")))
    episodes = build_manifest(dataset, seeds=1).episodes[:5]
    unit = make_unit("toy-bright", 7, episodes, dataset.by_id())
    pieces = SplitUnits()
    assert pieces.gather(unit, ["whole"]) == (unit, ["whole"])  # an unsplit unit passes through
    left, right = pieces.announce(unit)
    assert (left.piece, right.piece) == ((0, 2), (2, 5)) and left.episodes + right.episodes == unit.episodes
    right_left, right_right = pieces.announce(right.retry())
    assert (right_left.piece, right_right.piece) == ((2, 3), (3, 5)) and right_left.attempt == 1
    assert pieces.gather(right_right, ["r3", "r4"]) is None
    assert pieces.gather(left, ["r0", "r1"]) is None
    whole, rows = pieces.gather(right_left, ["r2"])
    assert whole == unit and rows == ["r0", "r1", "r2", "r3", "r4"] and not pieces.open


@pytest.mark.slow
@pytest.mark.ray
def test_an_episode_that_kills_its_worker_is_isolated_in_its_own_error_row(tmp_path, ray_cluster):
    dataset = make_folder_dataset(tmp_path / "data")
    summary = execute(config(dataset, tmp_path / "run", executor="ray", workers=2, cpus_per_worker=1,
                             manifest=ManifestSettings(shots=(1,), seeds=1, normal_fraction=0.0),
                             options={"die_width": 67}), progress_out=None)
    rows = read_run(summary.run_dir)
    deadly = query_widths(summary.run_dir) == 67
    assert deadly.any() and len(rows) == summary.episodes == rows["episode_id"].nunique()
    assert rows.loc[deadly, "status"].str.startswith("error: WorkerDied: the worker died each of 3 times").all()
    assert (rows.loc[~deadly, "status"] == "ok").all()  # the rest of each chunk is kept


# ------------------------------------------------------------------------------ item 12: one dataset scan per run


def test_run_reads_the_dataset_once(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import bench
    from datasets import base

    dataset = make_folder_dataset(tmp_path / "data")
    scans, real_load = [], base.load_dataset

    def counting_load(*args, **kwargs):
        scans.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(base, "load_dataset", counting_load)
    monkeypatch.setattr(bench.signal, "signal", lambda *args: None)  # leave pytest's handlers alone
    result = CliRunner().invoke(bench.cli, ["run", "--methods", "toy-bright", "--dataset", str(dataset),
                                            "--executor", "inline", "--seeds", "1", "--no-report",
                                            "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert scans == [str(dataset)]


# ------------------------------------------------------------------------------ item 9: data changed during a run


def test_a_mask_rewritten_during_the_run_becomes_an_error_row_naming_it(tmp_path, monkeypatch):
    from PIL import Image

    from harness import runner

    dataset = make_folder_dataset(tmp_path / "data")
    mask_path = dataset / "spot" / "masks" / "spot_2.png"
    real_run_chunk = runner.EpisodeWorker.run_chunk

    def rewrite_then_run(self, unit):  # the mask is relabelled after the manifest was built
        if not getattr(rewrite_then_run, "done", False):
            relabelled = np.zeros((48, 66), np.uint8)
            relabelled[:, :] = 255  # 20,000-odd pixels of "defect"
            Image.fromarray(relabelled).save(mask_path)
            rewrite_then_run.done = True
        return real_run_chunk(self, unit)

    monkeypatch.setattr(runner.EpisodeWorker, "run_chunk", rewrite_then_run)
    summary = execute(config(dataset, tmp_path / "run"), progress_out=None)
    rows = read_run(summary.run_dir)
    def is_spot_2(image_id: str) -> bool:
        return image_id.rsplit("/", 1)[-1].split(".")[0] == "spot_2"

    uses_mask = rows.apply(lambda r: is_spot_2(r["query_id"]) or any(map(is_spot_2, r["support_ids"])), axis=1)
    assert uses_mask.any()
    assert rows.loc[uses_mask, "status"].str.startswith(f"error: DataChanged: {mask_path}: changed during the run").all()
    assert (rows.loc[~uses_mask, "status"] == "ok").all()


def test_changed_file_trusts_size_and_mtime_then_the_bytes(tmp_path):
    import os as os_module

    from harness.provenance import ContentHashes, changed_file

    path = tmp_path / "mask.png"
    path.write_bytes(b"original bytes")
    recorded = ContentHashes(tmp_path / "cache.json").entry(path)
    assert not changed_file(recorded)
    os_module.utime(path, ns=(recorded[2] + 10**9, recorded[2] + 10**9))  # touched, same bytes
    assert not changed_file(recorded)
    path.write_bytes(b"rewritten bytes")
    assert changed_file(recorded)


# ------------------------------------------------------------------------------ item 11: stopping one head node


def test_stop_head_ends_that_node_and_its_children_only(tmp_path):
    from harness.ray_executor import stop_head

    def fake_node(temp: Path) -> tuple[subprocess.Popen, int]:
        """A 'raylet' naming its session folder, with a child that renamed itself (an agent)."""
        session = temp / "session_2026-12-03_01-02-03_000001_1"
        session.mkdir(parents=True)
        (temp / "session_latest").symlink_to(session)
        script = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
                  "'import time; time.sleep(120)']); print(child.pid, flush=True); time.sleep(120)")
        process = subprocess.Popen([sys.executable, "-c", script, f"--log_dir={session}/logs"],
                                   stdout=subprocess.PIPE, text=True)
        return process, int(process.stdout.readline())

    ours, our_agent = fake_node(tmp_path / "ours")
    theirs, their_agent = fake_node(tmp_path / "theirs")  # another cluster of the same user
    try:
        assert stop_head(tmp_path / "ours", grace_s=5) == 2
        assert ours.wait(timeout=10) is not None
        assert theirs.poll() is None and Path(f"/proc/{their_agent}").exists()

        def gone(pid: int) -> bool:
            try:
                return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
            except OSError:
                return True

        assert gone(our_agent)
        assert stop_head(tmp_path / "nowhere") == 0
    finally:
        for process, agent in ((ours, our_agent), (theirs, their_agent)):
            for pid in (process.pid, agent):
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            process.wait()


# ------------------------------------------------------------------------------ item 11: the README snippet


def test_readme_reading_a_run_snippet_gives_the_report_miou(tmp_path, capsys):
    import contextlib
    import io
    import re

    from harness.report import build_report
    from tests.conftest import REPO_ROOT

    text = (REPO_ROOT / "README.md").read_text()
    snippet = re.search(r"Reading a run without this project:\n\n```python\n(.*?)```", text, re.S).group(1)
    dataset = make_folder_dataset(tmp_path / "data", n_per_category=5)
    summary = execute(config(dataset, tmp_path / "run", options={"crash_width": 66, "support_scale": True},
                             manifest=ManifestSettings(shots=(1,), seeds=3, normal_fraction=0.2)), progress_out=None)
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(snippet.replace("results/RUN", str(summary.run_dir)), namespace)
    from_snippet = namespace["miou"].groupby(["method", "shots"], observed=True).mean()
    report = build_report([summary.run_dir], tmp_path / "report", bootstrap=0).aggregates.summary
    assert len(report) == 1 and namespace["miou"].index.get_level_values("repeat").nunique() == 3
    assert from_snippet.iloc[0] == pytest.approx(report["miou_mean"].iloc[0], abs=1e-12)
    rows = read_run(summary.run_dir)  # pooling the draws (what the snippet did) gives another number
    ok = rows[(rows.status == "ok") & ~rows.query_is_normal].groupby("class_id")[["tp", "fp", "fn"]].sum()
    pooled = (ok.tp / (ok.tp + ok.fp + ok.fn)).mean()
    assert abs(pooled - report["miou_mean"].iloc[0]) > 1e-3
