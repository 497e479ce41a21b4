"""SOFS training on user data (--fold all, no folds, --holdout-objects, too-few-images messages), the
four paper switches (--no-non-resizing, --no-intensity-downsampling, --no-abnormal-prior,
--no-mixed-normal-dice) recorded in the head and checked by the inference variants, and resuming a
checkpoint written before these options existed."""
# ruff: noqa: F401  (single_thread is an autouse fixture)
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from harness.records import ImageRecord
from methods.base import MethodError, MethodSpec
from methods.sofs.cli import train_sofs
from methods.sofs.data import EpisodeSampler, select_training_records
from methods.sofs.inference import SOFS, SOFSConfig
from methods.sofs.loss import binary_ce, sofs_loss
from methods.sofs.train import TrainConfig, train
from tests.methods.test_sofs_fixtures import defect_episode, micro_backbone_file, single_thread
from tests.methods.test_sofs_train import EPISODE, InMemoryDataset, _config, tiny_dataset


def _records(spec: dict[str, int], folds=None) -> InMemoryDataset:
    """{"object/category": n defective images} -> records only (no arrays)."""
    records = []
    for class_id, count in spec.items():
        obj, category = class_id.split("/")
        for i in range(count):
            records.append(ImageRecord(f"{class_id}/{i}", f"/m/{class_id}/{i}.png", f"/m/{class_id}/{i}_m.png",
                                       category, obj, "", 64, 64))
    records.append(ImageRecord("good/0", "/m/good/0.png", None, "good", "plate", "", 64, 64))
    return InMemoryDataset(tuple(records), folds or {})


# ------------------------------------------------------------------------------------------ records


def test_fold_all_and_datasets_without_folds_train_on_every_class():
    data = _records({"plate/dent": 3, "plate/scratch": 2, "gear/crack": 2},
                    folds={"base": ("plate",), "novel": ("gear",)})
    assert {r.object for r in select_training_records(data, "base").records} == {"plate"}
    assert len(select_training_records(data, "all").records) == 7
    no_folds = replace(data, folds={})
    selection = select_training_records(no_folds, "base")
    assert len(selection.records) == 7 and "defines no folds" in selection.scope
    with pytest.raises(MethodError, match="no fold 'novle'.*--fold all"):
        select_training_records(data, "novle")


def test_holdout_by_name_and_by_fraction():
    data = _records({"plate/dent": 3, "plate/scratch": 2, "gear/crack": 2, "cog/pit": 2})
    kept = select_training_records(data, "all", "gear,plate/dent")
    assert kept.held_out == ("gear", "plate/dent")
    assert {r.class_id for r in kept.records} == {"plate/scratch", "cog/pit"}
    half = select_training_records(data, "all", "0.5", seed=1)  # 3 objects -> 2 held out
    assert len(half.held_out) == 2 and set(half.held_out) < {"plate", "gear", "cog"}
    assert half.held_out == select_training_records(data, "all", "0.5", seed=1).held_out
    assert not {r.object for r in half.records} & set(half.held_out)
    single = _records({"tile/crack": 2, "tile/fray": 2, "tile/break": 2, "tile/uneven": 2})
    one_object = select_training_records(single, "all", "0.25")  # one object: a fraction of classes
    assert len(one_object.held_out) == 1 and one_object.held_out[0].startswith("tile/")
    assert len(one_object.records) == 6
    with pytest.raises(MethodError, match="'plat' is neither an object nor a class.*did you mean 'plate'"):
        select_training_records(data, "all", "plat")
    with pytest.raises(MethodError, match="would hold out all 3 objects"):
        select_training_records(data, "all", "0.99")
    with pytest.raises(MethodError, match="must be in \\(0, 1\\)"):
        select_training_records(data, "all", "1.5")


def test_too_few_defective_images_are_named():
    from methods.sofs.data import EpisodeConfig

    cfg = EpisodeConfig()
    mixed = _records({"plate/dent": 3, "plate/scratch": 1})
    sampler = EpisodeSampler(mixed, "all", cfg, 0, read_image=lambda r: None, read_mask=lambda r: None)
    assert len(sampler) == 3 and "never queried" in sampler.notes[0] and "plate/scratch" in sampler.notes[0]
    single = _records({"plate/dent": 1, "gear/crack": 1})
    with pytest.raises(MethodError, match="no class has two or more defective images.*gear/crack 1, plate/dent 1"):
        EpisodeSampler(single, "all", cfg, 0, read_image=lambda r: None, read_mask=lambda r: None)


# ------------------------------------------------------------------------------------------ switches


def test_no_non_resizing_resizes_every_view_whole():
    data = tiny_dataset()
    sampler = EpisodeSampler(data, "base", replace(EPISODE, non_resizing=False, augment=False), seed=3,
                             read_image=data.read_image, read_mask=data.read_mask)
    for index in range(6):
        query, supports = sampler.plan(index)
        assert len({s.seed for s in supports}) == 1 and len(supports) == 2  # one view repeated S times
        image, mask = sampler.render(query)
        # the whole 240 x 320 image resized to 168 x 224 and padded; its defect is all there
        assert image[:, 168:].abs().sum() == 0 and image[:, :168].abs().sum() > 0
        full = data.arrays[sampler.records[query.record].image_id][1]
        assert mask.sum() >= full.sum() * (224 / 320) ** 2 * 0.5


def test_plain_dice_ignores_normal_queries():
    prob = torch.tensor([[[0.8, 0.2], [0.6, 0.1]], [[0.3, 0.4], [0.2, 0.9]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # episode 1 normal
    dice = 1 - (2 * 1.4 + 1e-5) / (2 + 1.7 + 1e-5)  # episode 0 only
    expected = dice + 0.01 * binary_ce(prob[:1], target[:1])
    assert sofs_loss(prob, target, mixed_normal=False).item() == pytest.approx(expected.item(), rel=1e-6)
    other = prob.clone()
    other[1] = 0.99  # the normal episode changes nothing
    assert sofs_loss(other, target, mixed_normal=False).item() == pytest.approx(expected.item(), rel=1e-6)
    assert sofs_loss(other, target).item() != pytest.approx(sofs_loss(prob, target).item())  # mixed: it does
    normal_only = prob[1:].clone().requires_grad_(True)
    loss = sofs_loss(normal_only, target[1:], mixed_normal=False)
    loss.backward()
    assert loss.item() == 0 and normal_only.grad.abs().sum() == 0
    logits = torch.logit(prob)
    with_logits = sofs_loss(prob, target, logits=logits, mixed_normal=False)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:1], target[:1])
    assert with_logits.item() == pytest.approx(dice + 0.01 * ce.item(), rel=1e-5)


SWITCHES = [  # (TrainConfig changes, head key, registry variant)
    ({"episode": replace(EPISODE, non_resizing=False)}, "non_resizing", "sofs-no-nonresize"),
    ({"intensity_downsampling": False}, "intensity_downsampling", "sofs-no-intensity"),
    ({"abnormal_prior": False}, "abnormal_prior", "sofs-no-prior"),
    ({"mixed_normal_dice": False}, "mixed_normal_dice", "sofs-no-mixed-dice"),
]


def _variant(name: str, head: Path, **options) -> SOFS:
    spec = MethodSpec(name, {"device": "cpu", "image_size": 224, "crop_size": 224, **options}, {})
    config = SOFSConfig(**{**spec.entry().options, **spec.options})
    return SOFS(config, {"checkpoint": head, "backbone": micro_backbone_file()})


@pytest.mark.slow
def test_each_switch_is_recorded_and_loads_only_under_its_variant(tmp_path):
    data = tiny_dataset()
    kwargs = dict(progress=False, read_image=data.read_image, read_mask=data.read_mask)
    full = train(data, _config(steps=1, accumulate=1), tmp_path / "full", **kwargs).head_path
    image, mask = data.arrays["gear-0"]
    query = data.arrays["gear-3"][0]
    for changes, key, variant in SWITCHES:
        head = train(data, _config(steps=1, accumulate=1, **changes), tmp_path / key, **kwargs).head_path
        hparams = torch.load(head, weights_only=True)["hparams"]
        assert hparams[key] is False
        assert all(hparams[other] is True for _, other, _ in SWITCHES if other != key)
        score = _variant(variant, head).predict([image], [mask], query)
        assert score.shape == (240, 320) and np.isfinite(score).all()
        with pytest.raises(MethodError, match=f"trained with --no-{key.replace('_', '-')}.*evaluate it as {variant}") as err:
            _variant("sofs", head)
        assert "\n" not in str(err.value)
        with pytest.raises(MethodError, match=f"needs a head trained with `bench.py train sofs --no-") as err:
            _variant(variant, full)
        assert "\n" not in str(err.value)
    assert _variant("sofs-no-prior", full, test_time_ablation=True).predict([image], [mask], query).shape == (240, 320)


# ------------------------------------------------------------------------------------------ resume


def test_checkpoint_from_before_the_new_options_resumes(tmp_path):
    data = tiny_dataset()
    kwargs = dict(progress=False, read_image=data.read_image, read_mask=data.read_mask)
    config = _config(steps=2, accumulate=1)
    train(data, config, tmp_path / "run", stop_after=1, **kwargs)
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    saved = json.loads(state["config"])
    for key in ("mixed_normal_dice", "holdout_objects"):
        del saved[key]
    del saved["episode"]["non_resizing"]
    state["config"] = json.dumps(saved)  # what an older version wrote
    torch.save(state, path)
    assert train(data, config, tmp_path / "run", **kwargs).step == 2
    with pytest.raises(MethodError, match="holds a run with mixed_normal_dice=True"):
        train(data, replace(config, mixed_normal_dice=False), tmp_path / "run", **kwargs)


# ------------------------------------------------------------------------------------------ CLI


def _folder_dataset(root: Path) -> Path:
    """``<root>/<category>/{images,masks}`` without folds.json (the magnetic_tile layout)."""
    for c, category in enumerate(("crack", "fray")):
        for i in range(2):
            image, mask, _ = defect_episode(120, 160, (slice(30 + 10 * i, 40 + 10 * i), slice(50, 70)), seed=c * 5 + i)
            for sub, array in (("images", image), ("masks", np.where(mask, 255, 0).astype(np.uint8))):
                (root / category / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / category / sub / f"{i}.png")
    return root


def test_cli_trains_a_folder_dataset_without_folds(tmp_path):
    root = _folder_dataset(tmp_path / "tiles")
    args = ["--dataset", str(root), "--backbone", "vit_micro14", "--backbone-weights", str(micro_backbone_file()),
            "--layers", "5,6,7,8,9,10", "--image-size", "112", "--reduce-dim", "16", "--steps", "1",
            "--batch-size", "1", "--accumulate", "1", "--device", "cpu", "--quiet", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(train_sofs, args + ["--holdout-objects", "tiles/fray", "--no-mixed-normal-dice"])
    assert result.exit_code == 0, result.output
    assert "training on every class (the dataset defines no folds) minus held-out tiles/fray" in result.output
    hparams = torch.load(tmp_path / "o" / "sofs_head.pt", weights_only=True)["hparams"]
    assert hparams["train_classes"] == ["tiles/crack"] and hparams["held_out"] == ["tiles/fray"]
    assert hparams["mixed_normal_dice"] is False
    result = CliRunner().invoke(train_sofs, args + ["--holdout-objects", "tiles/crack,tiles/fray", "--no-resume"])
    assert result.exit_code == 1 and "no defective image to train on" in result.output


def test_variant_mismatch_fails_at_the_weights_check_before_any_work():
    from tests.methods.test_sofs_fixtures import micro_head_file

    weights = {"checkpoint": str(micro_head_file()), "backbone": str(micro_backbone_file())}
    with pytest.raises(MethodError, match="needs a head trained with `bench.py train sofs --no-mixed-normal-dice`"):
        # the check runs where the default backbone is looked up (no backbone given)
        MethodSpec.create("sofs-no-mixed-dice", {}, {"checkpoint": weights["checkpoint"]}).check()
    assert MethodSpec.create("sofs-no-prior", {"test_time_ablation": "true"}, weights).check()
    assert MethodSpec.create("sofs", {}, weights).check()
