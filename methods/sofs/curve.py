"""``curve_sofs``: the click command behind ``bench.py curve sofs`` (a SOFS learning curve).

``bench.py train sofs --snapshot-every N`` keeps the head of every N-th step in
``OUT/snapshots/``. This command evaluates each kept head (and the final ``sofs_head.pt``) on the
same two manifests: the *base* classes the head was trained on (by default on another draw of the
images when the dataset is the embedded synthetic one, so the base curve is measured on unseen
images of the trained classes) and the *novel* classes it never saw. Each (split, step) is an
ordinary run folder under ``OUT/<split>/step<NNNNNN>`` built through ``harness.run.Run`` (a killed
curve resumes where it stopped); the curve is ``OUT/curve.csv`` (one row per split, step and shot
count) and ``OUT/curve.png`` (mIoU per step beside the training loss).
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from methods.sofs.config import snapshot_steps
CURVE_COLUMNS = ["split", "step", "shots", "n_episodes", "miou", "fb_iou", "pixel_auroc", "head"]


def snapshot_heads(train_out: Path) -> dict[int, Path]:
    """Step -> head file: every ``snapshots/sofs_head_stepNNNNNN.pt`` and the final ``sofs_head.pt``
    (at the step its train_state.json records) once the training finished, or when nothing else
    was kept (mid-training ``sofs_head.pt`` is only the latest checkpoint)."""
    heads = snapshot_steps(train_out)
    final, state = train_out / "sofs_head.pt", train_out / "train_state.json"
    if final.exists() and state.exists():
        try:
            record = json.loads(state.read_text())
            step, steps = int(record["step"]), int(record["steps"])
        except (ValueError, KeyError, TypeError):
            raise click.ClickException(f"{state}: not a train_state.json written by `bench.py train sofs`") from None
        if step == steps or not heads:
            heads.setdefault(step, final)
    return dict(sorted(heads.items()))


def default_base_dataset(dataset: str) -> str:
    """The embedded synthetic dataset draws new images with another seed (same classes): the base
    curve is then measured on images the head never saw. Any other dataset: itself."""
    if dataset == "synthetic" or dataset.startswith("synthetic:"):
        seed = int(dataset.split(":")[1]) if ":" in dataset else 0
        return f"synthetic:{seed + 1}"
    return dataset


@click.command("sofs")
@click.argument("train_out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dataset", required=True, help='The training dataset (path, or "synthetic[:seed]").')
@click.option("--base-dataset", default=None,
              help="Dataset of the base curve. Default: --dataset; for the embedded synthetic dataset another "
                   "seed of it (the same classes, unseen images).")
@click.option("--base-fold", default="base", show_default=True, help="Fold of the trained (base) classes.")
@click.option("--base-classes", default=None, help="Instead of --base-fold: the trained classes (as `run --classes`).")
@click.option("--fold", default=None, help="Novel fold (as `run --fold`; default 'novel' when the dataset has one).")
@click.option("--classes", default=None, help="Novel classes (as `run --classes`).")
@click.option("--shots", default="1", show_default=True)
@click.option("--seeds", type=int, default=1, show_default=True, help="Support draws per query.")
@click.option("--max-queries-per-class", type=int, default=4, show_default=True)
@click.option("--base-max-queries-per-class", type=int, default=None,
              help="The base curve's (default: --max-queries-per-class); base folds often have many classes.")
@click.option("--backbone-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Backbone file the heads were trained with, when not the backbone's own (as `train sofs`).")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Evaluate every n-th kept head (the final head always).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Default: TRAIN_OUT/curve.")
@click.option("--executor", type=click.Choice(["ray", "inline"]), default="inline", show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
def curve_sofs(train_out, dataset, base_dataset, base_fold, base_classes, fold, classes, shots, seeds,
               max_queries_per_class, base_max_queries_per_class, backbone_weights, every, out, executor, workers):
    """Evaluate the heads kept by `train sofs --snapshot-every` on base and novel classes: mIoU per step."""
    if not train_out.is_dir():
        raise click.ClickException(f"{train_out}: no such training folder (the --out of `bench.py train sofs`)")
    heads = snapshot_heads(train_out)
    if not heads:
        raise click.ClickException(f"{train_out}: no heads to evaluate (train with --snapshot-every N)")
    try:
        shot_counts = tuple(int(s) for s in shots.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{shots!r} is not a comma-separated list of integers", param_hint="--shots") from None
    steps = list(heads)
    steps = [s for i, s in enumerate(steps) if i % every == 0 or i == len(steps) - 1]
    out = out or train_out / "curve"
    names = lambda text: tuple(c.strip() for c in (text or "").split(",") if c.strip())  # noqa: E731
    splits = {
        "base": (base_dataset or default_base_dataset(dataset), None if base_classes else base_fold, names(base_classes),
                 base_max_queries_per_class or max_queries_per_class),
        "novel": (dataset, fold, names(classes), max_queries_per_class),
    }
    rows = []
    for step in steps:
        for split, (data, split_fold, split_classes, max_queries) in splits.items():
            click.echo(f"== step {step}: {split} ({data}) with {heads[step]}", err=True)
            table = _evaluate(heads[step], data, split_fold, split_classes, shot_counts, seeds,
                              max_queries, out / split / f"step{step:06d}", executor, workers,
                              allow_trained=split == "base", backbone_weights=backbone_weights)
            for record in table.to_dict("records"):
                rows.append({"split": split, "step": step, "shots": int(record["shots"]),
                             "n_episodes": int(record["n_episodes"]), "miou": record["miou_mean"],
                             "fb_iou": record["fb_iou"], "pixel_auroc": record["pixel_auroc"],
                             "head": str(heads[step])})
            _write_curve(rows, out, train_out)
    click.echo(_curve_text(rows))
    click.echo(f"\ncurve: {out / 'curve.csv'}  plot: {out / 'curve.png'}")


def _evaluate(head: Path, dataset: str, fold, classes, shots, seeds, max_queries_per_class, out: Path,
              executor: str, workers: int, allow_trained: bool, backbone_weights: Path | None = None):
    """One run of ``sofs`` with ``head`` (defective queries only: mIoU needs no good images), and its
    summary table's raw numbers."""
    from datasets.base import DatasetError
    from harness.run import Run, RunConfig, RunError, manifest_defaults
    from harness.store import StoreError
    from harness.summary import run_summary
    from methods.base import MethodError, MethodSpec

    weights = {"checkpoint": str(head), **({"backbone": str(backbone_weights)} if backbone_weights else {})}
    try:
        config = RunConfig(
            methods=[MethodSpec.create("sofs", {}, weights)], dataset=dataset,
            manifest=manifest_defaults(dataset, shots, seeds, fold=fold, max_queries_per_class=max_queries_per_class,
                                      normal_queries_per_object=0, calibration_normals=0, classes=classes),
            out=str(out), executor=executor, workers=workers, save_predictions=False,
            allow_trained_classes=allow_trained, command=shlex.join(["python", "bench.py", *sys.argv[1:]]))
        summary = Run.open(config).execute()
        return run_summary([summary.run_dir], bootstrap=0).data
    except (DatasetError, MethodError, RunError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None


def _write_curve(rows: list[dict], out: Path, train_out: Path) -> None:
    import pandas as pd

    from harness.io import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    atomic_write(out / "curve.csv", lambda tmp: frame.to_csv(tmp, index=False))
    _plot(frame, out / "curve.png", train_out / "train_state.json")


def _plot(frame, path: Path, train_state: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from harness.io import atomic_write

    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for (split, shots), part in frame.groupby(["split", "shots"]):
        ax.plot(part["step"], 100 * part["miou"], marker="o", label=f"{split}, {shots}-shot")
    ax.set_xlabel("training step")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("SOFS head: mIoU per step")
    ax.grid(alpha=0.3)
    ax.legend()
    losses = json.loads(train_state.read_text()).get("losses", []) if train_state.exists() else []
    if losses:
        window = max(1, len(losses) // 40)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax_loss.plot(np.arange(1, len(losses) + 1), losses, color="0.8", lw=0.6, label="per step")
        ax_loss.plot(np.arange(window, len(losses) + 1), smooth, color="C3", label=f"mean of {window}")
        ax_loss.legend()
    ax_loss.set_xlabel("training step")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _curve_text(rows: list[dict]) -> str:
    lines = ["split  shots    step  episodes   mIoU %", "-----  -----  ------  --------  -------"]
    for r in rows:
        lines.append(f"{r['split']:<5}  {r['shots']:>5}  {r['step']:>6}  {r['n_episodes']:>8}  {100 * r['miou']:7.1f}")
    return "\n".join(lines)
