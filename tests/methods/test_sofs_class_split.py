"""SOFS under the class-split protocol: `train sofs --train-classes` records the classes and their
fingerprints in the head, `run` refuses to score them as novel unless --allow-trained-classes (rows
marked, summary flagged); the released and shipped heads have their own records; a training switch
that cannot act on the data is said at training start and flagged in the table (issue 22, items 1, 4)."""
# ruff: noqa: F401  (single_thread is an autouse fixture)
import json

import pyarrow.dataset as ds
import pytest
import torch
from click.testing import CliRunner

from bench import cli
from harness.class_split import TrainedOn
from harness.constants import SOFS_DEFAULT_CHECKPOINT
from harness.io import REPO_ROOT
from methods.sofs.checkpoint import REFERENCE_HPARAMS, head_trained_on
from methods.sofs.switches import inert_switches
from methods.sofs.train import TrainConfig
from tests.methods.test_sofs_fixtures import micro_backbone_file, single_thread
from tests.toy_methods import make_folder_dataset

TINY = ["--backbone", "vit_micro14", "--layers", "5,6,7,8,9,10", "--image-size", "112", "--reduce-dim", "16",
        "--steps", "1", "--batch-size", "1", "--accumulate", "1", "--device", "cpu", "--quiet"]


def _train(tmp_path, root, *extra):
    out = tmp_path / "head"
    result = CliRunner().invoke(cli, ["train", "sofs", "--dataset", str(root), "--backbone-weights",
                                      str(micro_backbone_file()), *TINY, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return out / "sofs_head.pt", result.output


def _run(tmp_path, root, head, name, *extra, method="sofs"):
    return CliRunner().invoke(cli, [
        "run", "--methods", method, "--weights", f"{method}={head}", "--weights",
        f"{method}.backbone={micro_backbone_file()}", "--dataset", str(root), "--executor", "inline", "--seeds", "1",
        "--calibration-normals", "0", "--normal-queries-per-object", "2", "--out", str(tmp_path / name), *extra])


def test_train_on_some_classes_evaluate_on_the_others(tmp_path):
    root = make_folder_dataset(tmp_path / "data")  # one object "widget": spot, line, good
    head, _ = _train(tmp_path, root, "--train-classes", "spot")
    hparams = torch.load(head, weights_only=True)["hparams"]
    assert hparams["train_classes"] == ["widget/spot"] and hparams["train_dataset"] == "widget"
    assert set(hparams["train_class_sha256"]) == {"widget/spot"}
    record = head_trained_on(head)
    assert record.classes == ("widget/spot",) and record.data_sha256 == hparams["train_data_sha256"]

    refused = _run(tmp_path, root, head, "refused", "--classes", "spot,line")
    assert refused.exit_code == 1
    assert ("sofs: head " in refused.output and "was trained on 1 of the classes to evaluate (widget/spot)"
            in refused.output and "--allow-trained-classes" in refused.output)
    assert not (tmp_path / "refused").exists()  # before any computation

    novel = _run(tmp_path, root, head, "novel", "--classes", "line")
    assert novel.exit_code == 0, novel.output
    rows = ds.dataset(tmp_path / "novel" / "episodes", partitioning="hive").to_table().to_pandas()
    assert set(rows["class_id"]) == {"widget/line"} and rows["query_is_normal"].sum() == 2  # good images kept
    assert not rows["trained_class"].any()
    entry = json.loads((tmp_path / "novel" / "run.json").read_text())["methods"]["sofs"]
    assert entry["trained_classes_scored"] == [] and entry["trained_on"]["classes"] == ["widget/spot"]

    allowed = _run(tmp_path, root, head, "allowed", "--classes", "spot,line", "--allow-trained-classes")
    assert allowed.exit_code == 0, allowed.output
    rows = ds.dataset(tmp_path / "allowed" / "episodes", partitioning="hive").to_table().to_pandas()
    assert rows.groupby("class_id")["trained_class"].all().to_dict() == {"widget/line": False, "widget/spot": True}
    assert "trained" in allowed.output.split("flags:")[0]  # the console table's short flag
    assert "1 class(es) its weights were trained on" in (tmp_path / "allowed" / "summary.md").read_text()


def test_a_folds_file_listing_classes_is_a_class_split_for_train_and_run(tmp_path):
    root = make_folder_dataset(tmp_path / "data")
    (root / "folds.json").write_text(json.dumps({"base": ["spot"], "novel": ["line"]}))
    head, output = _train(tmp_path, root)  # --fold base (the default)
    assert torch.load(head, weights_only=True)["hparams"]["train_classes"] == ["widget/spot"]
    result = _run(tmp_path, root, head, "run")  # run's default fold: novel
    assert result.exit_code == 0, result.output
    rows = ds.dataset(tmp_path / "run" / "episodes", partitioning="hive").to_table().to_pandas()
    assert set(rows["class_id"]) == {"widget/line"} and rows["query_is_normal"].sum() == 2


def test_the_shipped_head_and_heads_without_a_record_of_their_own(monkeypatch):
    import methods.sofs.checkpoint as checkpoint
    from datasets.synthetic_surfaces import FOLDS, SURFACES  # the classes, without generating the images

    classes = {fold: {f"{s.name}/{d.name}" for s in SURFACES if s.name in objects for d in s.defects}
               for fold, objects in FOLDS.items()}
    shipped = head_trained_on(REPO_ROOT / SOFS_DEFAULT_CHECKPOINT)  # trained on the whole v2 base fold
    assert shipped.dataset == "synthetic" and set(shipped.classes) == classes["base"]
    assert not set(shipped.classes) & classes["novel"]  # the default run (fold 'novel') is not refused
    assert len(shipped.class_sha256) == len(classes["base"])

    # the head shipped before heads recorded their classes (sha256 c4ccc0b5...): the v1 base fold,
    # the first three base objects (synthetic v2 appended twelve more)
    old_sha = next(iter(checkpoint.SHIPPED_RECORDS))
    monkeypatch.setattr(checkpoint, "read_hparams", lambda path: {})
    monkeypatch.setattr(checkpoint, "file_sha256", lambda path: old_sha)
    old = head_trained_on(REPO_ROOT / SOFS_DEFAULT_CHECKPOINT)
    v1_base = {c for c in classes["base"] if c.split("/")[0] in ("brushed_metal", "woven_fabric", "wood")}
    assert old.dataset == "synthetic" and set(old.classes) == v1_base


def test_released_head_record_does_not_name_classes(tmp_path, monkeypatch):
    import methods.sofs.checkpoint as checkpoint

    path = tmp_path / "SOFS_model.pth"
    path.write_bytes(b"x")
    monkeypatch.setattr(checkpoint, "read_checkpoint", lambda p: ({}, dict(REFERENCE_HPARAMS)))
    record = head_trained_on(path)
    assert record.classes is None and "VISION" in record.dataset


def test_a_switch_without_data_to_act_on_is_said_at_training_start_and_flagged(tmp_path):
    root = make_folder_dataset(tmp_path / "data")  # 48 x 64-67 images: all fit in the 112 px crop
    head, output = _train(tmp_path, root, "--train-classes", "spot", "--no-non-resizing")
    assert "note: non-resizing cannot act on these training images: each fits in the 112 px crop" in output
    assert head_trained_on(head).notes[0].startswith("non-resizing cannot act")
    result = _run(tmp_path, root, head, "run", "--classes", "line", method="sofs-no-nonresize")
    assert result.exit_code == 0, result.output
    assert "inert" in result.output.split("flags:")[0]
    assert "non-resizing cannot act on these training images" in (tmp_path / "run" / "summary.md").read_text()


def test_inert_switches_look_at_the_training_views():
    from methods.sofs.data import EpisodeSampler
    from tests.methods.test_sofs_train import EPISODE, InMemoryDataset, tiny_dataset

    data = tiny_dataset()  # 240 x 320 images, small and large defects

    def notes(episode):
        config = TrainConfig(steps=4, batch_size=1, accumulate=1, episode=episode)
        sampler = EpisodeSampler(data, "base", episode, 3, read_image=data.read_image, read_mask=data.read_mask)
        return inert_switches(sampler, config, patch=14)

    assert notes(EPISODE) == {}  # 224 px crops of 320 px images: crops can miss a small defect
    from dataclasses import replace

    whole = notes(replace(EPISODE, crop_size=336, image_size=336))  # every image fits in the crop
    assert set(whole) >= {"non_resizing"}
    # the tiny dataset's defects all reach the 24 x 24 target, so no query of the sample is normal
    assert "none of the first 4 training queries" in whole["mixed_normal_dice"]
