"""SOFS training loop (issue 22): feature cache on disk, checkpoints by time, Ctrl-C, presets."""
# ruff: noqa: F401  (single_thread is an autouse fixture)
import os
import signal
import subprocess
import sys
from types import SimpleNamespace
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import methods.sofs.train as train_module
from methods.sofs.cli import CE_FORMS, PRESETS, train_sofs
from methods.sofs.model import SOFSModel
from methods.sofs.train import TrainingInterrupted, train
from tests.methods.test_sofs_fixtures import single_thread
from tests.methods.test_sofs_train import EPISODE, _config, tiny_dataset

FIXED = replace(EPISODE, variants=2)


def _kwargs(data):
    return dict(progress=False, read_image=data.read_image, read_mask=data.read_mask)


def _count_encodes(monkeypatch) -> list[int]:
    calls = []
    original = SOFSModel.encode

    def counting(self, images):
        calls.append(images.shape[0])
        return original(self, images)

    monkeypatch.setattr(SOFSModel, "encode", counting)
    return calls


def test_features_are_cached_on_disk_and_only_missing_views_are_encoded(tmp_path, monkeypatch):
    data = tiny_dataset()
    config = _config(steps=2, episode=FIXED, cache_mb=0)
    calls = _count_encodes(monkeypatch)
    first = train(data, config, tmp_path / "a", **_kwargs(data))
    files = sorted((tmp_path / "a" / "feature_cache").glob("*/*.pt"))
    # 4 base images (one class), 2 roles x 2 variants each, all encoded once before step 1
    assert len(files) == 4 * 2 * 2 and sum(calls) == len(files)
    for path in files[:5]:
        path.unlink()  # a run killed while caching: 5 views missing
    calls.clear()
    again = train(data, config, tmp_path / "a", resume=False, **_kwargs(data))
    assert sum(calls) == 5 and again.losses == first.losses
    calls.clear()
    other = train(data, replace(config, episode=replace(FIXED, alpha=0.9)), tmp_path / "a", resume=False,
                  **_kwargs(data))
    assert sum(calls) == 16 and len(list((tmp_path / "a" / "feature_cache").iterdir())) == 2  # new fingerprint
    assert other.losses != first.losses


def test_checkpoints_come_by_time_as_well_as_by_step(tmp_path, monkeypatch):
    data = tiny_dataset()
    saved = []
    original = train_module._save

    def spy(out, model, optimizer, step, *args):
        saved.append(step)
        return original(out, model, optimizer, step, *args)

    monkeypatch.setattr(train_module, "_save", spy)
    train(data, _config(steps=3, checkpoint_every=100, checkpoint_minutes=0), tmp_path / "a", **_kwargs(data))
    assert saved == [3]
    saved.clear()
    train(data, _config(steps=3, checkpoint_every=100, checkpoint_minutes=1e-9), tmp_path / "b", **_kwargs(data))
    assert saved == [1, 2, 3]


def test_ctrl_c_finishes_the_step_saves_and_says_what_was_kept(tmp_path, monkeypatch):
    data = tiny_dataset()
    original = train_module.train_step

    def interrupted_during_step_1(model, optimizer, sampler, config, step, cache=None):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: finish this step
        return original(model, optimizer, sampler, config, step, cache)

    monkeypatch.setattr(train_module, "train_step", interrupted_during_step_1)
    config = _config(steps=5, checkpoint_every=100, checkpoint_minutes=0, episode=FIXED)
    with pytest.raises(TrainingInterrupted) as caught:
        train(data, config, tmp_path / "a", **_kwargs(data))
    message = str(caught.value)
    assert "checkpoint at step 2/5" in message and "cached features of 16 of 16 views" in message
    monkeypatch.setattr(train_module, "train_step", original)
    resumed = train(data, config, tmp_path / "a", **_kwargs(data))
    full = train(data, config, tmp_path / "full", **_kwargs(data))
    assert resumed.losses == full.losses


def test_a_hard_interrupt_before_any_checkpoint_says_nothing_was_kept(tmp_path, monkeypatch):
    data = tiny_dataset()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the second Ctrl-C: stop at once

    monkeypatch.setattr(train_module, "train_step", killed)
    with pytest.raises(TrainingInterrupted, match=r"^interrupted: nothing kept \(no checkpoint written yet\)$"):
        train(data, _config(checkpoint_every=100), tmp_path / "a", **_kwargs(data))
    with pytest.raises(TrainingInterrupted) as caught:
        train(data, _config(checkpoint_every=100, episode=FIXED), tmp_path / "b", **_kwargs(data))
    assert "kept cached features of 16 of 16 views" in str(caught.value)
    assert "checkpoint" not in str(caught.value)


def _captured_config(monkeypatch, args, queries=100):
    import datasets.base

    captured = {}

    def fake_train(data, config, out, **kwargs):
        captured["config"] = config
        return train_module.TrainResult(out / "sofs_head.pt", config.steps, [])

    monkeypatch.setattr(datasets.base, "load_dataset", lambda path: SimpleNamespace(folds={}, records=[], name="x"))
    monkeypatch.setattr(datasets.base, "locate_dataset", lambda *args, **kwargs: None)
    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(train_module, "queries_per_epoch", lambda data, config: queries)
    result = CliRunner().invoke(train_sofs, ["--dataset", "x", *args])
    assert result.exit_code == 0, result.output
    return captured["config"], result.output


def test_presets_set_the_defaults_and_options_override_them(monkeypatch, tmp_path):
    cpu, _ = _captured_config(monkeypatch, ["--out", str(tmp_path)])
    assert (cpu.steps, cpu.batch_size * cpu.accumulate, cpu.reduce_dim, cpu.lr, cpu.smooth_r, cpu.ce_form) == \
        (2400, 8, 128, 1e-4, 1.0, "logits")
    assert (cpu.episode.image_size, cpu.episode.s_in_shot, cpu.episode.variants, cpu.episode.alpha, cpu.ce_weight) \
        == (192, 2, 4, 0.1, 1.0)
    ref, output = _captured_config(monkeypatch, ["--preset", "reference", "--out", str(tmp_path)])
    assert ref.batch_size * ref.accumulate == 28 and ref.steps == 50 * (100 // 28)
    assert "50 epochs = 150 steps" in output
    assert (ref.lr, ref.reduce_dim, ref.smooth_r, ref.ce_weight, ref.ce_form) == (1e-5, 256, 1e5, 0.01, "reference")
    assert (ref.episode.variants, ref.episode.alpha, ref.episode.image_size, ref.episode.s_in_shot) == \
        (0, 0.3, 512, 4)  # lite0 tile
    mixed, _ = _captured_config(monkeypatch, ["--preset", "reference", "--steps", "7", "--lr", "3e-4",
                                              "--out", str(tmp_path)])
    assert (mixed.steps, mixed.lr, mixed.reduce_dim) == (7, 3e-4, 256)


def test_steps_and_epochs_together_are_one_usage_error(tmp_path):
    result = CliRunner().invoke(train_sofs, ["--dataset", "x", "--steps", "3", "--epochs", "2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--steps or --epochs" in result.output


def test_cli_module_needs_no_torch_and_agrees_with_the_loss():
    assert set(CE_FORMS) == {"reference", "logits"} and set(PRESETS) == {"cpu", "reference"}
    code = "import sys, methods.sofs.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))


@pytest.mark.cuda
def test_cached_features_train_on_cuda(tmp_path):
    data = tiny_dataset()
    result = train(data, _config(steps=2, episode=FIXED, device="cuda"), tmp_path, **_kwargs(data))
    assert result.step == 2 and np.isfinite(result.losses).all()  # dropout masks differ from the CPU's
    assert len(list((tmp_path / "feature_cache").glob("*/*.pt"))) == 16  # cached from the GPU, stored on CPU
    saved = torch.load(result.head_path, weights_only=True)["state_dict"]
    assert {t.device.type for t in saved.values()} == {"cpu"}
