"""The command line as a user meets it: help, methods, manifests, dataset checks, real data."""
import numpy as np
import pytest
from PIL import Image
from click.testing import CliRunner

import tests.toy_methods  # noqa: F401
from bench import cli
from tests.conftest import REAL_DATA
from tests.toy_methods import make_folder_dataset


@pytest.fixture()
def runner():
    return CliRunner()


def test_methods_lists_availability(runner):
    result = runner.invoke(cli, ["methods"])
    assert result.exit_code == 0, result.output
    assert "panet" in result.output and "patchcore" in result.output and "sofs" in result.output
    seggpt = result.output.split("seggpt ")[1].split("\n")[1]
    assert "needs weights" in seggpt and "--weights seggpt=PATH" in seggpt


def test_methods_options_lists_types_allowed_values_and_variant_settings(runner):
    result = runner.invoke(cli, ["methods", "--options"])
    assert result.exit_code == 0, result.output
    panet_resize = result.output.split("panet-resize ")[1].split("patchcore ")[0]
    assert "resolution: native | resize = resize (fixed by this variant)" in panet_resize
    assert "layer_merge: concat | mean = concat" in panet_resize
    sofs = result.output.split("\nsofs ")[1].split("\nsofs-")[0]
    assert "map_back: probability | label = probability" in sofs and "s_in_shot: int = 4" in sofs


def test_missing_weights_fail_before_any_work(runner, tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    result = runner.invoke(cli, ["run", "--methods", "panet,seggpt", "--dataset", str(dataset),
                                 "--executor", "inline", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "--weights seggpt=PATH" in result.output
    assert not (tmp_path / "run").exists()


def test_weights_for_unlisted_method_is_a_usage_error(runner, tmp_path):
    result = runner.invoke(cli, ["run", "--methods", "panet", "--weights", "seggpt=/x", "--executor", "inline"])
    assert result.exit_code == 2 and "seggpt" in result.output


def test_episodes_build_is_byte_identical(runner, tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    outputs = []
    for name in ("a", "b"):
        result = runner.invoke(cli, ["episodes", "build", "--dataset", str(dataset), "--shots", "1,2",
                                     "--seeds", "3", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        (parquet,) = (tmp_path / name).glob("*.parquet")
        outputs.append(parquet.read_bytes())
    assert outputs[0] == outputs[1]


def test_datasets_check_reports_problems_with_files(runner, tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    good = runner.invoke(cli, ["datasets", "check", str(dataset)])
    assert good.exit_code == 0, good.output
    wrong_size = np.zeros((40, 40), dtype=np.uint8)
    wrong_size[5:9, 5:9] = 255
    Image.fromarray(wrong_size).save(dataset / "spot" / "masks" / "spot_0.png")
    bad = runner.invoke(cli, ["datasets", "check", str(dataset)])
    assert bad.exit_code == 1
    assert "spot_0.png: error: mask is 40x40" in bad.output


def test_report_cli_writes_html(runner, tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    run = runner.invoke(cli, ["run", "--methods", "toy-bright", "--dataset", str(dataset), "--executor", "inline",
                              "--seeds", "2", "--out", str(tmp_path / "run")])
    assert run.exit_code == 0, run.output
    assert "mIoU" in (tmp_path / "run" / "summary.md").read_text()
    report = runner.invoke(cli, ["report", str(tmp_path / "run"), "--bootstrap", "50"])
    assert report.exit_code == 0, report.output
    assert (tmp_path / "run" / "report" / "report.html").stat().st_size > 10_000


@pytest.mark.skipif(not (REAL_DATA / "magnetic_tile").is_dir(), reason="../shared/real-data absent")
def test_run_on_real_magnetic_tile(runner, tmp_path):
    result = runner.invoke(cli, ["run", "--methods", "panet", "--dataset", str(REAL_DATA / "magnetic_tile"),
                                 "--executor", "inline", "--seeds", "1", "--max-queries-per-class", "1",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "panet" in result.output and "failed    0" in result.output


def test_seggpt_runs_end_to_end_with_a_saved_tiny_model(runner, tmp_path):
    import torch
    from transformers import SegGptConfig, SegGptForImageSegmentation

    torch.manual_seed(0)
    config = SegGptConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, mlp_dim=64, image_size=[64, 32],
                          patch_size=8, pretrain_image_size=32, decoder_hidden_size=8, merge_index=1,
                          intermediate_hidden_state_indices=[1, 3], drop_path_rate=0.0)
    SegGptForImageSegmentation(config).save_pretrained(tmp_path / "seggpt-tiny")
    dataset = make_folder_dataset(tmp_path / "data")
    result = runner.invoke(cli, ["run", "--methods", "seggpt,toy-bright", "--weights", f"seggpt={tmp_path / 'seggpt-tiny'}",
                                 "--set", "seggpt.resolution=native", "--dataset", str(dataset), "--executor", "inline",
                                 "--seeds", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "seggpt" in result.output and "failed    0" in result.output
