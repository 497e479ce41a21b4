"""``ablate_sofs``: the click command behind ``bench.py ablate sofs`` (the paper's ablation table).

Trains the full head and one head per contribution switched off, on the same fold with the same
options, into ``OUT/heads/<variant>/`` (each resumes like ``bench.py train sofs``), then runs
``bench.py run`` once with the five variants, each with its own head, into ``OUT/run``, so the
summary table compares them on the same episodes.
"""
from __future__ import annotations

from pathlib import Path

import click

from methods.sofs.train import TrainConfig

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
@click.pass_context
def ablate_sofs(ctx, dataset, fold, eval_fold, holdout_objects, steps, backbone, backbone_weights, layers,
                image_size, reduce_dim, batch_size, accumulate, seed, device, only, out, shots, seeds,
                max_queries_per_class, executor, workers, quiet):
    """Train the full SOFS head and its four ablation heads, then evaluate all five in one run folder."""
    import torch

    from methods.sofs.cli import train_sofs

    variants = [v.strip() for v in only.split(",") if v.strip()]
    unknown = [v for v in variants if v not in ABLATIONS]
    if unknown or not variants:
        raise click.BadParameter(f"{', '.join(unknown) or 'nothing'}: choose from {', '.join(ABLATIONS)}",
                                 param_hint="--only")
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
                        ("--image-size", image_size)):
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
    run_command = ctx.find_root().command.get_command(ctx, "run")
    if run_command is None:
        raise click.ClickException("no `run` command to evaluate with")
    weights = [f"{v}={heads[v]}" for v in variants]
    if backbone_weights:
        weights += [f"{v}.backbone={backbone_weights}" for v in variants]
    click.echo(f"== evaluating {', '.join(variants)} -> {out / 'run'}", err=True)
    ctx.invoke(run_command, methods=",".join(variants), dataset=dataset, shots=shots, seeds=seeds,
               fold=eval_fold, max_queries_per_class=max_queries_per_class, out=str(out / "run"),
               executor=executor, workers=workers, weights=tuple(weights))

