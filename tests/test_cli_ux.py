"""The command line as a person meets it (issue 13): start-up without torch, exit codes as the
README documents them, the plan printed before a run (and ``--dry-run``), progress in a pipe."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import tests.toy_methods  # noqa: F401
from bench import cli
from harness.progress import Progress
from tests.toy_methods import make_folder_dataset

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "ray", "pandas", "pyarrow", "matplotlib")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                          "print(json.dumps(sorted(m for m in sys.modules if '.' not in m)))"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_bench_and_help_import_no_heavy_module():
    loaded = _modules_after("import bench\n"
                            "for args in (['--help'], ['run', '--help'], ['train', '--help'],\n"
                            "             ['run', '--methods', 'no-such-method']):\n"
                            "    try:\n"
                            "        bench.cli(args, standalone_mode=True)\n"
                            "    except SystemExit:\n"
                            "        pass")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def _exit_codes_and_modules(cases: list[list[str]]) -> tuple[list, set[str]]:
    """Run ``bench.cli`` on each argument list in one fresh process: (exit codes, top-level modules loaded)."""
    code = ("import json, sys, bench\n"
            "codes = []\n"
            f"for args in {cases!r}:\n"
            "    try:\n"
            "        bench.cli(args, standalone_mode=True)\n"
            "    except SystemExit as exc:\n"
            "        codes.append(exc.code)\n"
            "print(json.dumps(codes))")
    out = subprocess.run([sys.executable, "-c", code + "\nprint(json.dumps(sorted(m for m in sys.modules if '.' not in m)))"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-2]), set(json.loads(lines[-1]))


def test_every_help_and_methods_options_import_no_heavy_module():
    """Issue 23: each --help (the lazy `train sofs` / `ablate sofs` too) and `methods --options`
    answer without torch, Ray, pandas, pyarrow, scipy or matplotlib."""
    from benchmarks.cli_bench import help_cases

    cases = help_cases()
    assert ["train", "sofs", "--help"] in cases and ["ablate", "sofs", "--help"] in cases
    assert ["curve", "sofs", "--help"] in cases
    codes, loaded = _exit_codes_and_modules(cases + [["methods", "--options"]])
    assert codes == [0] * len(cases) + [0]
    assert not loaded & {*HEAVY, "scipy"}, loaded & {*HEAVY, "scipy"}


def test_user_errors_are_found_before_any_heavy_import(tmp_path):
    """Issue 23: unknown option / method, a bad --set option or value, a missing dataset or manifest
    path: each answers (exit 2 usage, 1 user error) with no heavy module imported."""
    missing = str(tmp_path / "missing")
    cases = [["run", "--no-such-option"], ["run", "--methods", "pannet"],
             ["run", "--methods", "panet", "--set", "panet.no_such=1"],
             ["run", "--methods", "panet,sofs", "--set", "sofs.map_back=labels"],
             ["run", "--methods", "panet", "--dataset", missing],
             ["run", "--methods", "panet", "--dataset", str(tmp_path)],  # a folder of no known layout
             ["run", "--manifest", missing + ".parquet"],
             ["train", "sofs", "--dataset", missing], ["train", "sofs", "--no-such-option"],
             ["ablate", "sofs", "--no-such-option"], ["curve", "sofs", missing, "--dataset", "synthetic"],
             ["ablate", "sofs", "--dataset", missing]]
    codes, loaded = _exit_codes_and_modules(cases)
    assert codes == [2, 2, 1, 1, 1, 1, 2, 1, 2, 2, 1, 1]
    assert not loaded & {*HEAVY, "scipy"}, loaded & {*HEAVY, "scipy"}


def test_bad_set_names_the_method_and_missing_dataset_is_one_line(runner, tmp_path):
    unknown = runner.invoke(cli, ["run", "--methods", "panet", "--set", "panet.resolutoin=resize"])
    assert unknown.exit_code == 1
    assert "method 'panet' has no option 'resolutoin' (did you mean 'resolution'?)" in unknown.output
    value = runner.invoke(cli, ["run", "--methods", "panet", "--set", "panet.resolution=bogus"])
    assert value.exit_code == 1 and "method 'panet' option 'resolution': 'bogus' is not one of native | resize" in value.output
    missing = runner.invoke(cli, ["run", "--methods", "panet", "--dataset", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and missing.output.strip() == f"Error: {tmp_path / 'nope'}: dataset path does not exist"
    train = runner.invoke(cli, ["train", "sofs", "--dataset", str(tmp_path / "nope")])
    assert train.exit_code == 1 and "dataset path does not exist" in train.output and "Traceback" not in train.output


def test_methods_options_lists_options_without_checking_weights(runner):
    result = runner.invoke(cli, ["methods", "--options"])
    assert result.exit_code == 0, result.output
    assert "needs weights" not in result.output and "ready" not in result.output
    assert "`bench.py methods` checks them" in result.output


@pytest.fixture()
def runner():
    return CliRunner()


def test_usage_errors_exit_2(runner):
    unknown = runner.invoke(cli, ["run", "--methods", "panet,pannet"])
    assert unknown.exit_code == 2 and "unknown method 'pannet' (did you mean 'panet'?)" in unknown.output
    assert runner.invoke(cli, ["run", "--methods", "panet,panet"]).exit_code == 2
    assert runner.invoke(cli, ["run", "--no-such-option"]).exit_code == 2
    assert runner.invoke(cli, ["no-such-command"]).exit_code == 2
    assert runner.invoke(cli, ["run", "--shots", "one"]).exit_code == 2


def test_data_error_exits_1_with_one_line(runner, tmp_path):
    result = runner.invoke(cli, ["run", "--methods", "toy-bright", "--dataset", str(tmp_path / "missing"),
                                 "--executor", "inline", "--dry-run"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ")


def test_dry_run_prints_the_plan_and_computes_nothing(runner, tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    result = runner.invoke(cli, ["run", "--methods", "toy-bright", "--dataset", str(dataset), "--seeds", "2",
                                 "--executor", "inline", "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "plan: " in result.output and "toy-bright" in result.output and "to compute" in result.output
    assert "dry run: nothing computed" in result.output
    assert not out.exists()


def test_failed_episodes_exit_3_and_plan_uses_stored_latency(runner, tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = ["run", "--methods", "toy-bright", "--dataset", str(dataset), "--seeds", "1", "--executor", "inline",
            "--out", str(out), "--set", "toy-bright.crash_width=64", "--no-report"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 3, result.output
    assert "episodes failed" in result.output
    # the run folder's stored latencies now give an estimate, and nothing is left to compute
    again = runner.invoke(cli, args + ["--dry-run"])
    assert again.exit_code == 0, again.output
    line = next(l for l in again.output.splitlines() if l.strip().startswith("toy-bright"))
    assert " 0 to compute" in line and "s/episode (median of" in line


def test_progress_in_a_pipe_prints_plain_lines():
    out = io.StringIO()  # not a terminal: no bar, no carriage returns
    now = [0.0]
    progress = Progress(10, out, interval=30, clock=lambda: now[0])
    progress.set_description("panet")
    for step in range(5):
        now[0] += 10
        progress.update_rows(2, [{"status": "ok"}, {"status": "error: x" if step == 0 else "ok"}])
    progress.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # one line per 30 s of a 50 s run plus the final one
    assert lines == ["progress: panet 6/10 episodes (60 %), 0.20 episodes/s, 30 s elapsed, ETA 20 s, 1 failed",
                     "progress: panet 10/10 episodes (100 %), 0.20 episodes/s, 50 s elapsed, 1 failed"]


def test_progress_silent_without_output():
    progress = Progress(3, None)
    progress.update_rows(3, [{"status": "ok"}] * 3)
    progress.close()
    assert progress.done == 3
