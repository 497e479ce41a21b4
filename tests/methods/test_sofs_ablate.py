"""`bench.py ablate sofs`: five heads (full + one per switched-off contribution) trained with the same
options, each recording its switch, and evaluated as their variants in one run folder."""
# ruff: noqa: F401  (single_thread is an autouse fixture)
import pytest
import torch
from click.testing import CliRunner

from bench import cli
from methods.sofs.ablate import ABLATIONS
from tests.methods.test_sofs_fixtures import micro_backbone_file, single_thread
from tests.methods.test_sofs_train_switches import _folder_dataset

SWITCH_OF = {"sofs-no-nonresize": "non_resizing", "sofs-no-intensity": "intensity_downsampling",
             "sofs-no-prior": "abnormal_prior", "sofs-no-mixed-dice": "mixed_normal_dice"}


@pytest.mark.slow
def test_ablate_trains_five_heads_and_evaluates_them_in_one_run(tmp_path):
    root = _folder_dataset(tmp_path / "tiles")
    out = tmp_path / "ablate"
    result = CliRunner().invoke(cli, [
        "ablate", "sofs", "--dataset", str(root), "--backbone", "vit_micro14",
        "--backbone-weights", str(micro_backbone_file()), "--layers", "5,6,7,8,9,10", "--image-size", "112",
        "--reduce-dim", "16", "--batch-size", "1", "--accumulate", "1", "--steps", "2", "--device", "cpu",
        "--quiet", "--executor", "inline", "--seeds", "1", "--train-classes", "crack", "--classes", "fray",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    for variant in ABLATIONS:
        hparams = torch.load(out / "heads" / variant / "sofs_head.pt", weights_only=True)["hparams"]
        assert hparams["train_step"] == 2
        for key in SWITCH_OF.values():
            assert hparams[key] is (SWITCH_OF.get(variant) != key), (variant, key)
    summary = (out / "run" / "summary.md").read_text()
    assert all(f"| {variant} " in summary for variant in ABLATIONS)
    # 120 x 160 images with defects over 1 %: resized whole, so non-resizing has nothing to act on
    assert "note: non-resizing cannot act on these training images" in result.output
    row = next(line for line in summary.splitlines() if line.startswith("| sofs-no-nonresize "))
    assert "non-resizing cannot act on these training images" in row
    full = next(line for line in summary.splitlines() if line.startswith("| sofs "))
    assert "cannot act" not in full  # the full head has every switch on: nothing to flag


def test_ablate_rejects_unknown_variants(tmp_path):
    result = CliRunner().invoke(cli, ["ablate", "sofs", "--dataset", str(tmp_path), "--only", "sofs,sofs-no-fad"])
    assert result.exit_code == 2 and "sofs-no-fad: choose from sofs, sofs-no-nonresize" in result.output
