"""``ablate_sofs``: the click command behind ``bench.py ablate sofs`` (the paper's ablation table).

Trains the full head and one head per contribution switched off, on the same fold with the same
options, into ``OUT/heads/<variant>/`` (each resumes like ``bench.py train sofs``), then evaluates
the five variants, each with its own head, in one run into ``OUT/run`` through the harness's run
API (``harness.run.Run``, as ``bench.py run`` does, with its defaults), so the summary table
compares them on the same episodes.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from methods.sofs.config import TrainConfig

# registry variant -> the `bench.py train sofs` switch that trains its head
ABLATIONS = {
    "sofs": (),
    "sofs-no-nonresize": ("--no-non-resizing",),
    "sofs-no-intensity": ("--no-intensity-downsampling",),
    "sofs-no-prior": ("--no-abnormal-prior",),
    "sofs-no-mixed-dice": ("--no-mixed-normal-dice",),
}
CPU_STEPS = 20  # a smoke-sized default on CPU; the paper-scale recipe needs a GPU and ~1000+ steps


@click.command("sofs")
@click.option("--dataset", required=True, help='Dataset path, or "synthetic[:seed]".')
@click.option("--fold", default=TrainConfig.fold, show_default=True,
              help="Training fold (as `train sofs --fold`; 'all' or no folds: every class).")
@click.option("--eval-fold", default=None,
              help="Evaluation fold (as `run --fold`; default 'novel' when the dataset has one, else every object).")
@click.option("--holdout-objects", default="", help="As `train sofs --holdout-objects`.")
@click.option("--train-classes", default="", help="As `train sofs --train-classes` (evaluate the others with --classes).")
@click.option("--holdout-classes", default="", help="As `train sofs --holdout-classes`.")
@click.option("--classes", default=None, help="Evaluated classes (as `run --classes`).")
@click.option("--allow-trained-classes", is_flag=True, help="As `run --allow-trained-classes` (rows marked, flagged).")
@click.option("--steps", type=int, default=None,
              help=f"Optimizer steps per head. Default: {CPU_STEPS} on CPU (a smoke test, not the paper's "
                   f"numbers), {TrainConfig.steps} on a GPU.")
@click.option("--backbone", default=TrainConfig.backbone, show_default=True)
@click.option("--backbone-weights", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--layers", default=",".join(map(str, TrainConfig.layers)), show_default=True)
@click.option("--image-size", type=int, default=None, help="Default: the backbone's tile size.")
@click.option("--reduce-dim", type=int, default=TrainConfig.reduce_dim, show_default=True)
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True)
@click.option("--accumulate", type=int, default=TrainConfig.accumulate, show_default=True)
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--only", default=",".join(ABLATIONS), show_default=True, help="Variants to train and evaluate.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for heads/ and run/ (default results/ablate-sofs-<dataset name>).")
@click.option("--shots", default="1", show_default=True)
@click.option("--seeds", type=int, default=None, help="As `run --seeds`.")
@click.option("--max-queries-per-class", type=int, default=None, help="As `run --max-queries-per-class`.")
@click.option("--executor", type=click.Choice(["ray", "inline"]), default="ray", show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None)
@click.option("--quiet", is_flag=True, help="No training progress bars.")
def ablate_sofs(dataset, fold, eval_fold, holdout_objects, steps, backbone, backbone_weights, layers,
                image_size, reduce_dim, batch_size, accumulate, seed, device, only, out, shots, seeds,
                max_queries_per_class, executor, workers, quiet, train_classes="", holdout_classes="", classes=None,
                allow_trained_classes=False):
    """Train the full SOFS head and its four ablation heads, then evaluate all five in one run folder."""
    variants = [v.strip() for v in only.split(",") if v.strip()]
    unknown = [v for v in variants if v not in ABLATIONS]
    if unknown or not variants:
        raise click.BadParameter(f"{', '.join(unknown) or 'nothing'}: choose from {', '.join(ABLATIONS)}",
                                 param_hint="--only")
    from datasets.base import DatasetError, locate_dataset

    try:
        locate_dataset(dataset)  # a wrong path answers before torch is imported
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    import torch

    from methods.sofs.cli import train_sofs

    try:
        shot_counts = tuple(int(s) for s in shots.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{shots!r} is not a comma-separated list of integers", param_hint="--shots") from None
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if steps is None:
        steps = TrainConfig.steps if cuda else CPU_STEPS
        if not cuda:
            click.echo(f"CPU: {steps} steps per head (a smoke run; pass --steps for real numbers)", err=True)
    name = Path(dataset.split(":")[0]).name or "dataset"
    out = out or Path("results") / f"ablate-sofs-{name}"
    train_args = ["--preset", "reference", "--dataset", dataset, "--fold", fold, "--steps", str(steps), "--backbone", backbone,
                  "--layers", layers, "--reduce-dim", str(reduce_dim), "--batch-size", str(batch_size),
                  "--accumulate", str(accumulate), "--seed", str(seed), "--device", device]
    for flag, value in (("--holdout-objects", holdout_objects), ("--backbone-weights", backbone_weights),
                        ("--image-size", image_size), ("--train-classes", train_classes),
                        ("--holdout-classes", holdout_classes)):
        if value:
            train_args += [flag, str(value)]
    if quiet:
        train_args.append("--quiet")
    heads = {}
    for variant in variants:
        head_dir = out / "heads" / variant
        click.echo(f"== training {variant} -> {head_dir}", err=True)
        train_sofs.main(train_args + list(ABLATIONS[variant]) + ["--out", str(head_dir)],
                        standalone_mode=False)
        heads[variant] = head_dir / "sofs_head.pt"
    click.echo(f"== evaluating {', '.join(variants)} -> {out / 'run'}", err=True)
    evaluate(variants, heads, backbone_weights, dataset, shot_counts, seeds, eval_fold, max_queries_per_class,
             out / "run", executor, workers, classes, allow_trained_classes)


def evaluate(variants, heads: dict[str, Path], backbone_weights: Path | None, dataset: str, shots: tuple[int, ...],
             seeds: int | None, fold: str | None, max_queries_per_class: int | None, out: Path, executor: str,
             workers: int | None, classes: str | None = None, allow_trained_classes: bool = False) -> None:
    """One run of the variants (each with its head) through ``harness.run.Run``, then its summary table."""
    from datasets.base import DatasetError
    from harness.plan import format_plan
    from harness.run import Run, RunConfig, RunError, is_quick_dataset, manifest_defaults
    from harness.store import StoreError
    from harness.summary import write_run_summary
    from methods.base import MethodError, MethodSpec

    weights = {v: {"checkpoint": str(heads[v]), **({"backbone": str(backbone_weights)} if backbone_weights else {})}
               for v in variants}
    try:
        config = RunConfig(
            methods=[MethodSpec.create(v, {}, weights[v]) for v in variants], dataset=dataset,
            manifest=manifest_defaults(dataset, shots, seeds, fold=fold, max_queries_per_class=max_queries_per_class,
                                      classes=tuple(c.strip() for c in (classes or "").split(",") if c.strip())),
            out=str(out), executor=executor, workers=workers, save_predictions=is_quick_dataset(dataset),
            allow_trained_classes=allow_trained_classes, command=shlex.join(["python", "bench.py", *sys.argv[1:]]))
        run = Run.open(config)
        click.echo(format_plan(run.plan()), err=True)
        summary = run.execute()
        table, warnings = write_run_summary(summary.run_dir)
    except (DatasetError, MethodError, RunError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("\n" + table)
    for line in warnings:
        click.echo(line, err=True)
    if summary.failed:
        click.echo(f"{summary.failed} episodes failed (rows kept with their error; details in "
                   f"{summary.errors_log})", err=True)
    click.echo(f"\ntable: {summary.run_dir / 'summary.md'}  (full report: python bench.py report {summary.run_dir})")

