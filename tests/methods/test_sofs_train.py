"""SOFS training: episode sampling, checkpoint + kill + resume == uninterrupted, CLI."""
# ruff: noqa: F401  (single_thread is an autouse fixture)
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from harness.records import ImageRecord
from methods.sofs.cli import train_sofs
from methods.sofs.data import EpisodeConfig, EpisodeSampler
from methods.sofs.inference import SOFS, SOFSConfig
from methods.sofs.train import TrainConfig, train
from tests.methods.test_sofs_fixtures import defect_episode, micro_backbone_file, single_thread


@dataclass
class InMemoryDataset:
    """Stand-in for datasets.base.Dataset: records, folds and arrays held in memory."""

    records: tuple
    folds: dict
    arrays: dict = field(default_factory=dict)

    def read_image(self, record):
        return self.arrays[record.image_id][0]

    def read_mask(self, record):
        return self.arrays[record.image_id][1]


def tiny_dataset() -> InMemoryDataset:
    records, arrays = [], {}
    defects = [(slice(40, 46), slice(50, 70)), (slice(200, 230), slice(300, 330)),
               (slice(10, 160), slice(10, 200)), (slice(120, 128), slice(220, 226))]  # 3rd: 23 %, resized
    for obj, split in (("plate", "base"), ("gear", "novel")):
        for i, defect in enumerate(defects):
            support, mask, _ = defect_episode(240, 320, defect, seed=10 * i + len(obj))
            image_id = f"{obj}-{i}"
            records.append(ImageRecord(image_id, f"/mem/{image_id}.png", f"/mem/{image_id}_mask.png",
                                       "dent", obj, split, 320, 240))
            arrays[image_id] = (support, mask)
    return InMemoryDataset(tuple(records), {"base": ("plate",), "novel": ("gear",)}, arrays)


EPISODE = EpisodeConfig(crop_size=224, image_size=224, s_in_shot=2)


def _sampler(data, **changes):
    return EpisodeSampler(data, "base", replace(EPISODE, **changes), seed=3,
                          read_image=data.read_image, read_mask=data.read_mask)


def test_sampler_is_deterministic_and_uses_only_the_fold():
    data = tiny_dataset()
    sampler = _sampler(data)
    assert len(sampler) == 4 and {r.object for r in sampler.records} == {"plate"}
    query, supports = sampler.plan(5)
    assert (query, supports) == sampler.plan(5)
    assert all(s.record != query.record for s in supports) and len(supports) == 2
    a, b = sampler.batch([5, 6]), sampler.batch([5, 6])
    assert a.support_images.shape == (2, 2, 3, 224, 224) and a.query_masks.shape == (2, 1, 224, 224)
    torch.testing.assert_close(a.support_images, b.support_images)
    assert (a.support_masks.flatten(2).sum(2) > 0).all()  # support views always hold the defect


def test_query_anchor_follows_alpha():
    data = tiny_dataset()
    small = [i for i in range(40) if _sampler(data).plan(i)[0].record != 2]  # record 2: resized whole
    defect_always = _sampler(data, alpha=0.0, augment=False).batch(small)
    assert (defect_always.query_masks.flatten(1).sum(1) > 0).all()
    normal_always = _sampler(data, alpha=1.0, augment=False).batch(small)
    assert (normal_always.query_masks.flatten(1).sum(1) == 0).any()


def _config(**changes) -> TrainConfig:
    base = TrainConfig(
        backbone="vit_micro14", backbone_weights=str(micro_backbone_file()), reduce_dim=16,
        steps=3, batch_size=1, accumulate=2, lr=1e-3, seed=7, checkpoint_every=1,
        episode=EPISODE, device="cpu",
    )
    return replace(base, **changes)


def _head_state(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_kill_and_resume_reaches_the_same_parameters(tmp_path):
    data = tiny_dataset()
    kwargs = dict(progress=False, read_image=data.read_image, read_mask=data.read_mask)
    full = train(data, _config(), tmp_path / "full", **kwargs)
    first = train(data, _config(), tmp_path / "killed", stop_after=1, **kwargs)  # "killed" after step 1
    assert first.step == 1 and (tmp_path / "killed" / "checkpoint.pt").exists()
    after_one = _head_state(first.head_path)
    resumed = train(data, _config(), tmp_path / "killed", **kwargs)
    assert resumed.step == full.step == 3 and resumed.losses == full.losses
    a, b = _head_state(full.head_path), _head_state(resumed.head_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], after_one[k]) for k in a)
    with pytest.raises(Exception, match="holds a run with seed=7"):
        train(data, _config(seed=8), tmp_path / "killed", **kwargs)
    # the trained head is a valid `sofs` checkpoint
    method = SOFS(SOFSConfig(device="cpu", image_size=224, crop_size=224),
                  {"checkpoint": full.head_path, "backbone": micro_backbone_file()})
    image, mask = data.arrays["gear-0"]
    score = method.predict([image], [mask], data.arrays["gear-3"][0])
    assert score.shape == (240, 320) and 0 <= score.min() and score.max() <= 1


def test_feature_cache_changes_nothing(tmp_path):
    data = tiny_dataset()
    kwargs = dict(progress=False, read_image=data.read_image, read_mask=data.read_mask)
    fixed = replace(EPISODE, variants=2)
    cached = train(data, _config(steps=2, episode=fixed, cache_mb=64), tmp_path / "c", **kwargs)
    plain = train(data, _config(steps=2, episode=fixed, cache_mb=0), tmp_path / "p", **kwargs)
    assert cached.losses == plain.losses


def test_cli_reports_user_errors_in_one_line(tmp_path):
    runner = CliRunner()
    assert "--smooth-r" in runner.invoke(train_sofs, ["--help"]).output
    result = runner.invoke(train_sofs, ["--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "does not exist" in result.output
