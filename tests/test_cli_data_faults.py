"""bench.py on awkward data (issue 20): every format in --format help, classes that make no episode
named in the plan, a FIFO named *.png, two images with one stem, an open-domain dataset end to end."""
import os
import shutil

import pytest
from click.testing import CliRunner

import tests.toy_methods  # noqa: F401  (registers toy-bright)
from bench import cli
from datasets.formats import ADAPTERS
from harness.progress import Progress
from harness.store import read_run
from tests.datasets.test_files_and_ids import fifo_unblocker
from tests.harness.test_episode_roles import open_domain
from tests.toy_methods import make_folder_dataset


@pytest.fixture()
def runner():
    return CliRunner()


def run_args(dataset, out, *extra):
    return ["run", "--methods", "toy-bright", "--dataset", str(dataset), "--executor", "inline", "--seeds", "1",
            "--no-report", "--out", str(out), *extra]


@pytest.mark.parametrize("command", [["run"], ["episodes", "build"], ["datasets", "check"]])
def test_format_help_lists_every_format(runner, command):
    result = runner.invoke(cli, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    for name in (*ADAPTERS, "auto"):
        assert f" {name} " in help_text or f" {name}." in help_text, name


def test_a_class_with_one_image_is_named_in_the_plan(runner, tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    (dataset / "pit/images").mkdir(parents=True)
    (dataset / "pit/masks").mkdir(parents=True)
    shutil.copy(dataset / "spot/images/spot_0.png", dataset / "pit/images/pit_0.png")
    shutil.copy(dataset / "spot/masks/spot_0.png", dataset / "pit/masks/pit_0.png")
    result = runner.invoke(cli, run_args(dataset, tmp_path / "run", "--dry-run"))
    assert result.exit_code == 0, result.output
    lines = [x for x in result.output.splitlines() if "widget/pit" in x]
    assert lines == ["left out: 1 class(es) make no episode: widget/pit (single image: no support other than the query)"]
    built = runner.invoke(cli, ["episodes", "build", "--dataset", str(dataset), "--out", str(tmp_path / "m")])
    assert built.exit_code == 0 and "left out: 1 class(es) make no episode: widget/pit" in built.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_run_with_a_fifo_named_png_finishes_and_lists_it(runner, tmp_path):
    dataset = make_folder_dataset(tmp_path / "data", n_per_category=3)
    fifo = dataset / "spot/images/spot_9.png"
    os.mkfifo(fifo)
    with fifo_unblocker(fifo) as fired:
        result = runner.invoke(cli, run_args(dataset, tmp_path / "run"))
    assert not fired.is_set(), "the run opened the FIFO and blocked"
    assert result.exit_code == 0, result.output
    assert "1 dataset file(s) left out (1 special files)" in result.output
    listed = (tmp_path / "run/skipped_inputs.tsv").read_text()
    assert str(fifo) in listed and "not a regular file (FIFO)" in listed


def test_same_stem_two_extensions_are_both_evaluated(runner, tmp_path):
    dataset = make_folder_dataset(tmp_path / "data", n_per_category=3)
    from PIL import Image
    Image.open(dataset / "spot/images/spot_1.png").save(dataset / "spot/images/spot_1.bmp")
    result = runner.invoke(cli, run_args(dataset, tmp_path / "run", "--normal-fraction", "0"))
    assert result.exit_code == 0, result.output
    rows = read_run(tmp_path / "run")
    spot = sorted(rows.loc[rows["class_id"] == "widget/spot", "query_id"])
    assert spot == ["widget/spot/spot_0", "widget/spot/spot_1.bmp", "widget/spot/spot_1.png", "widget/spot/spot_2"]
    assert rows["episode_id"].is_unique and (rows["status"] == "ok").all()


def test_open_domain_run_keeps_roles_and_does_not_fail_unlabelled_queries(runner, tmp_path):
    dataset = open_domain(tmp_path / "open")
    result = runner.invoke(cli, run_args(dataset, tmp_path / "run"))
    assert result.exit_code == 0, result.output
    rows = read_run(tmp_path / "run")
    assert not rows["query_id"].str.contains("/support/").any()
    assert (rows["status"] == "unscored").sum() == 3 and "failed    0" in result.output
    assert set(rows.loc[rows["status"] == "unscored", "role"]) == {"unlabelled"}
    assert "1 defective, " in result.output and " 3 unlabelled)" in result.output  # the plan's composition


def test_progress_does_not_count_unscored_rows_as_failed():
    import io

    out = io.StringIO()
    progress = Progress(3, out, interval=30, clock=lambda: 10.0)
    progress.update_rows(3, [{"status": "ok"}, {"status": "unscored"}, {"status": "error: x"}])
    assert out.getvalue().strip().endswith(", 1 failed")
