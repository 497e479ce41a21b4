"""SOFS training speed at the shipped (``--preset cpu``) recipe: steps/s and episodes/s.

Two loops over the same episodes, model sizes, optimizer and loss, measured back to back:

* project: ``methods.sofs.train.train_step`` with the backbone features of the fixed views
  cached beforehand (``cache_features``; its views/s are printed too);
* straightforward: the reference's loop as the spec describes it (spec §3) — every step renders
  each query and support view afresh (crop, augmentation, resize), runs the frozen backbone on
  the query batch and on the support batch, then the head, the loss and the backward pass.

The data is a small in-memory set of textured images with small defects (no files, no real
data), so the figure is about compute, not disk. Run alone: ``python -m benchmarks.sofs_train_bench``.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.records import ImageRecord


@dataclass
class _Images:
    """A stand-in dataset: records + arrays in memory (two classes of one object)."""

    records: tuple
    folds: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    name: str = "bench-textures"

    def read_image(self, record):
        return self.arrays[record.image_id][0]

    def read_mask(self, record):
        return self.arrays[record.image_id][1]


def textured_dataset(images_per_class: int = 6, height: int = 360, width: int = 480, seed: int = 0) -> _Images:
    rng = np.random.default_rng(seed)
    records, arrays = [], {}
    for category in ("scratch", "spot"):
        for i in range(images_per_class):
            base = rng.normal(128, 20, (-(-height // 8), -(-width // 8), 3)).clip(0, 255)
            image = np.kron(base, np.ones((8, 8, 1)))[:height, :width].astype(np.uint8)  # 8 x 8 px texture cells
            mask = np.zeros((height, width), bool)
            top, left = int(rng.integers(20, height - 40)), int(rng.integers(20, width - 60))
            size = (4, 40) if category == "scratch" else (12, 12)  # < 1 % of the image: cropped views
            mask[top : top + size[0], left : left + size[1]] = True
            image[mask] = (image[mask] * 0.4).astype(np.uint8)
            image_id = f"{category}-{i}"
            records.append(ImageRecord(image_id, f"/mem/{image_id}.png", f"/mem/{image_id}_mask.png",
                                       category, "tile", "", width, height))
            arrays[image_id] = (image, mask)
    return _Images(tuple(records), {}, arrays)


def preset_config(preset: str = "cpu", device: str = "cpu"):
    """The TrainConfig of a ``train sofs --preset`` (its steps, batch, sizes, loss options)."""
    from methods.sofs.cli import PRESETS
    from methods.sofs.data import EpisodeConfig
    from methods.sofs.train import TrainConfig

    o = PRESETS[preset]
    size = o["image_size"] or 256
    return TrainConfig(
        backbone=o["backbone"], layers=tuple(int(x) for x in o["layers"].split(",")), reduce_dim=o["reduce_dim"],
        fold="all", steps=o["steps"] or 1000, batch_size=o["batch_size"], accumulate=o["accumulate"], lr=o["lr"],
        seed=o["seed"], smooth_r=o["smooth_r"], ce_weight=o["ce_weight"], ce_form=o["ce_form"],
        cache_mb=o["cache_mb"], device=device, checkpoint_every=o["checkpoint_every"],
        checkpoint_minutes=o["checkpoint_minutes"],
        episode=EpisodeConfig(shot=o["shot"], s_in_shot=o["s_in_shot"], area_resize_ratio=o["area_resize_ratio"],
                              image_size=size, crop_size=size, alpha=o["alpha"], variants=o["variants"] or 4),
    )


# The --preset cpu episode when issue 22 was filed (256 px crops, 4 crops per support image); the
# preset's episode now is smaller (chosen on base-fold mIoU per training minute, README).
ISSUE_EPISODE = {"image_size": 256, "crop_size": 256, "s_in_shot": 4}


def issue_config(config):
    """``config`` with the episode sizes of ``ISSUE_EPISODE`` (everything else equal)."""
    return dataclasses.replace(config, episode=dataclasses.replace(config.episode, **ISSUE_EPISODE))


def straightforward_step(model, optimizer, sampler, config, step: int) -> float:
    """One optimizer step of the reference loop: fresh views, backbone on every view, head, loss."""
    import torch

    from methods.sofs.loss import patch_target, sofs_loss
    from methods.sofs.train import poly_factor

    for group, scale in zip(optimizer.param_groups, (1.0, config.lr_multiple)):
        group["lr"] = config.lr * scale * poly_factor(step, config)
    optimizer.zero_grad(set_to_none=True)
    device = next(model.head.parameters()).device
    total = 0.0
    for micro in range(config.accumulate):
        first = (step * config.accumulate + micro) * config.batch_size
        batch = sampler.batch(range(first, first + config.batch_size))
        output, _ = model(batch.query_images.to(device), batch.support_images.to(device),
                          batch.support_masks.to(device))
        target = patch_target(batch.query_masks.to(device), model.patch, config.target_threshold,
                              config.intensity_downsampling)
        loss = sofs_loss(torch.sigmoid(output.logits), target, config.smooth_r, config.dice_weight,
                         config.ce_weight, logits=output.logits if config.ce_form == "logits" else None)
        (loss / config.accumulate).backward()
        total += loss.item() / config.accumulate
    optimizer.step()
    return total


def _timed_steps(step_fn, steps: int, warmup: int = 1) -> float:
    for i in range(warmup):
        step_fn(i)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step_fn(i)
    return (time.perf_counter() - start) / steps


def measure(steps: int = 3, device: str = "cpu", preset: str = "cpu", config=None, data=None,
            straightforward: bool = True) -> dict:
    """Seconds per step of both loops (``config``/``data``: other sizes, for tests;
    ``straightforward=False``: the project's loop only, ``straightforward_s`` None)."""
    import torch

    from methods.sofs.data import EpisodeSampler
    from methods.sofs.train import (FeatureCache, build_training_model, cache_features, fixed_views,
                                    make_optimizer, train_step)

    config = config or preset_config(preset, device)
    data = data or textured_dataset()
    sampler = EpisodeSampler(data, "all", config.episode, config.seed, data.read_image, data.read_mask)
    fresh = EpisodeSampler(data, "all", dataclasses.replace(config.episode, variants=0), config.seed,
                           data.read_image, data.read_mask)
    model, _ = build_training_model(config)
    model.train()
    optimizer = make_optimizer(model, config)
    episodes = config.batch_size * config.accumulate
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(config.cache_mb, Path(tmp) / "cache")
        views = fixed_views(sampler)
        start = time.perf_counter()
        cache_features(model, sampler, cache, torch.device(device), views, progress=False)
        cache_s = time.perf_counter() - start
        project = _timed_steps(lambda i: train_step(model, optimizer, sampler, config, i, cache), steps)
    simple = _timed_steps(lambda i: straightforward_step(model, optimizer, fresh, config, i), steps) \
        if straightforward else None
    return {"config": config, "views": len(views), "cache_s": cache_s, "project_s": project,
            "straightforward_s": simple, "episodes_per_step": episodes}


def main(steps: int = 3, device: str = "cpu") -> dict:
    result = measure(steps, device)
    before = measure(steps, device, config=issue_config(result["config"]), straightforward=False)
    config, per = result["config"], result["episodes_per_step"]
    ep = config.episode
    print(f"sofs training, --preset cpu recipe ({config.backbone} levels {','.join(map(str, config.layers))}, "
          f"{ep.image_size} px, {config.batch_size} x {config.accumulate} episodes/step, K={ep.shot} S={ep.s_in_shot}, "
          f"reduce_dim {config.reduce_dim}, {device}, {steps} timed steps each):")
    print(f"  feature caching: {result['views']} views in {result['cache_s']:.1f} s "
          f"({result['views'] / result['cache_s']:.1f} views/s, once per run folder)")
    for name, key in (("project step (cached features)", "project_s"),
                      ("straightforward reference loop", "straightforward_s")):
        seconds = result[key]
        print(f"  {name:<32} {1 / seconds:.3f} steps/s  {per / seconds:.2f} episodes/s  ({seconds:.2f} s/step)")
    print(f"  project vs straightforward: {result['straightforward_s'] / result['project_s']:.2f}x episodes/s")
    old = before["config"].episode
    print(f"  the same project step at the episode of issue 22's filing ({old.image_size} px, S={old.s_in_shot}): "
          f"{before['episodes_per_step'] / before['project_s']:.2f} episodes/s ({before['project_s']:.2f} s/step); "
          f"the preset now: {before['project_s'] / result['project_s']:.2f}x episodes/s")
    result["issue_episode_s"] = before["project_s"]
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    main(args.steps, args.device)
