"""`train sofs --snapshot-every` keeps the head of every N-th step; `curve sofs` evaluates each kept
head on the trained (base) and the novel classes and writes mIoU per step (issue 22, item 3)."""
# ruff: noqa: F401  (single_thread is an autouse fixture)
import pandas as pd
import pyarrow.dataset as ds
import torch
from click.testing import CliRunner

from bench import cli
from methods.sofs.curve import default_base_dataset, snapshot_heads
from tests.methods.test_sofs_class_split import TINY
from tests.methods.test_sofs_fixtures import micro_backbone_file, single_thread
from tests.toy_methods import make_folder_dataset


def test_snapshots_then_a_curve_on_base_and_novel_classes(tmp_path):
    root = make_folder_dataset(tmp_path / "data")  # one object "widget": spot, line, good
    out = tmp_path / "head"
    args = list(TINY)
    args[args.index("--steps") + 1] = "3"
    trained = CliRunner().invoke(cli, ["train", "sofs", "--dataset", str(root), "--backbone-weights",
                                       str(micro_backbone_file()), *args, "--train-classes", "spot",
                                       "--snapshot-every", "2", "--out", str(out)])
    assert trained.exit_code == 0, trained.output
    heads = snapshot_heads(out)
    assert list(heads) == [2, 3] and heads[2].name == "sofs_head_step000002.pt" and heads[3] == out / "sofs_head.pt"
    assert torch.load(heads[2], weights_only=True)["hparams"]["train_step"] == 2

    command = ["curve", "sofs", str(out), "--dataset", str(root), "--base-classes", "spot", "--classes", "line",
               "--backbone-weights", str(micro_backbone_file()), "--max-queries-per-class", "2"]
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 0, result.output
    curve = pd.read_csv(out / "curve" / "curve.csv")
    assert sorted(zip(curve["split"], curve["step"])) == [("base", 2), ("base", 3), ("novel", 2), ("novel", 3)]
    assert (curve["n_episodes"] == 2).all() and curve["miou"].between(0, 1).all()
    assert (out / "curve" / "curve.png").stat().st_size > 0
    base = ds.dataset(out / "curve" / "base" / "step000003" / "episodes", partitioning="hive").to_table().to_pandas()
    novel = ds.dataset(out / "curve" / "novel" / "step000003" / "episodes", partitioning="hive").to_table().to_pandas()
    assert set(base["class_id"]) == {"widget/spot"} and base["trained_class"].all()  # marked, not novel
    assert set(novel["class_id"]) == {"widget/line"} and not novel["trained_class"].any()
    assert not novel["query_is_normal"].any()  # mIoU only: no good queries

    again = CliRunner().invoke(cli, command)  # every run folder is complete: nothing recomputed
    assert again.exit_code == 0 and pd.read_csv(out / "curve" / "curve.csv").equals(curve)


def test_the_embedded_dataset_s_base_curve_uses_unseen_images_and_errors_are_one_line(tmp_path):
    assert default_base_dataset("synthetic") == "synthetic:1" and default_base_dataset("synthetic:4") == "synthetic:5"
    assert default_base_dataset("/data/tiles") == "/data/tiles"
    missing = CliRunner().invoke(cli, ["curve", "sofs", str(tmp_path / "nope"), "--dataset", "synthetic"])
    assert missing.exit_code == 1 and "no such training folder" in missing.output
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(cli, ["curve", "sofs", str(tmp_path / "empty"), "--dataset", "synthetic"])
    assert empty.exit_code == 1 and "train with --snapshot-every N" in empty.output
    negative = CliRunner().invoke(cli, ["train", "sofs", "--dataset", "synthetic", "--snapshot-every", "-1"])
    assert negative.exit_code == 2 and "--snapshot-every" in negative.output
