"""Qualitative overlays (best / median / worst and largest disagreements) and prediction sweeps.

Pixels come from two optional places, and the report says which one is missing:
- query images and GT masks: ``run.json["dataset"] = {"root", "format"}`` opened with
  ``datasets.base.load_dataset``; ``Dataset.by_id()`` maps ``query_id`` -> ImageRecord;
- score maps: ``<run>/predictions/<method>/<episode_id>.png`` (8-bit, score·255), or the row's
  ``pred_path``.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from harness import metrics  # noqa: E402
from harness.report.load import MethodSource, RunInfo  # noqa: E402
from harness.schema import HIST_BINS  # noqa: E402
from harness.store import partition_value  # noqa: E402

MAX_SIDE = 512


class PixelSource:
    """Query images, GT masks and stored score maps of the runs; ``notes`` says what is missing."""

    def __init__(self, runs: list[RunInfo], sources: dict[str, MethodSource]):
        self.sources = sources
        self.notes: list[str] = []
        self._datasets = {run.label: self._open_dataset(run) for run in runs}

    def _open_dataset(self, run: RunInfo):
        entry = run.provenance.get("dataset")
        if not isinstance(entry, dict) or not entry.get("root"):
            self.notes.append(f"{run.label}: run.json has no dataset root, so query images and GT "
                              "masks are not shown.")
            return None
        spec = str(entry.get("spec") or "")
        try:
            from datasets import base

            if spec.startswith("synthetic"):  # the embedded default regenerates from its seed
                dataset = base.load_dataset(spec)
            else:
                fmt = entry.get("format") or "auto"
                dataset = base.load_dataset(entry["root"], fmt if fmt in base.ADAPTERS else "auto")
            return base, dataset, dataset.by_id()
        except Exception as error:  # any adapter problem only costs the overlays
            self.notes.append(f"{run.label}: dataset {entry['root']} could not be opened "
                              f"({type(error).__name__}: {error}); images are not shown.")
            return None

    def _record_call(self, run_label: str, query_id: str, name: str):
        opened = self._datasets.get(run_label)
        if opened is None:
            return None
        base, dataset, index = opened
        record = index.get(query_id)
        if record is None:
            return None
        reader = getattr(base, name, None) or getattr(dataset, name)
        try:
            return np.asarray(reader(record))
        except Exception:
            return None

    def query_image(self, run_label: str, query_id: str) -> np.ndarray | None:
        """uint8 ``[H, W, 3]`` or None."""
        image = self._record_call(run_label, query_id, "read_image")
        if image is None:
            return None
        if image.dtype != np.uint8:
            image = np.clip(image * (255 if image.max() <= 1 else 1), 0, 255).astype(np.uint8)
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]

    def gt_mask(self, run_label: str, query_id: str) -> np.ndarray | None:
        """bool ``[H, W]`` or None."""
        mask = self._record_call(run_label, query_id, "read_mask")
        return None if mask is None else mask.astype(bool)

    def score_map(self, method_label: str, episode_id: str, pred_path=None) -> np.ndarray | None:
        """float32 ``[H, W]`` in [0, 1] from the stored 8-bit PNG, or None."""
        source = self.sources[method_label]
        folder = source.run.run_dir / "predictions"
        candidates = [folder / source.method / f"{episode_id}.png",
                      folder / partition_value(source.method) / f"{episode_id}.png"]
        if isinstance(pred_path, str) and pred_path:
            candidates.append(Path(pred_path))
        for path in candidates:
            if path.is_file():
                return np.asarray(Image.open(path).convert("L"), np.float32) / 255.0
        return None

    def has_images(self) -> bool:
        return any(opened is not None for opened in self._datasets.values())

    def has_predictions(self) -> bool:
        return any((s.run.run_dir / "predictions" / name).is_dir() for s in self.sources.values()
                   for name in (s.method, partition_value(s.method)))


def _downscale(array: np.ndarray, nearest: bool) -> np.ndarray:
    height, width = array.shape[:2]
    scale = MAX_SIDE / max(height, width)
    if scale >= 1:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if array.dtype == bool:
        return np.asarray(Image.fromarray(array.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    mode = Image.NEAREST if nearest else Image.BILINEAR
    if array.dtype == np.float32:
        return np.asarray(Image.fromarray(array, mode="F").resize(size, mode))
    return np.asarray(Image.fromarray(array).resize(size, mode))


def _tint(image: np.ndarray, mask: np.ndarray, color) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask] = 0.45 * out[mask] + 0.55 * np.asarray(color, np.float32)
    return out.astype(np.uint8)


def episode_figure(pixels: PixelSource, episode_id: str, rows: pd.DataFrame, title: str) -> str:
    """One episode as a base64 PNG: query, GT, then each method's thresholded prediction.

    ``rows``: the ok rows of this episode, one per method (display label in ``method``).
    """
    first = rows.iloc[0]
    image = pixels.query_image(first["run"], first["query_id"])
    gt = pixels.gt_mask(first["run"], first["query_id"])
    canvas = image if image is not None else np.full((int(first["height"]), int(first["width"]), 3),
                                                     60, np.uint8)
    canvas = _downscale(canvas, nearest=False)
    panels = [("query" if image is not None else "query (image unavailable)", canvas)]
    if gt is not None:
        panels.append(("ground truth", _tint(canvas, _downscale(gt, True), (0, 255, 0))))
    else:
        panels.append(("ground truth (unavailable)", canvas))
    for _, row in rows.iterrows():
        score = pixels.score_map(row["method"], episode_id, row.get("pred_path"))
        name = f"{row['method']} {row['shots']}-shot\nIoU {100 * row['iou_fg']:.1f}% @{row['threshold']:.2f}"
        if score is None:
            panels.append((name + "\n(no stored prediction)", canvas))
            continue
        predicted = _downscale(score, nearest=False) > row["threshold"]  # as metrics: score > t
        predicted = predicted[: canvas.shape[0], : canvas.shape[1]]
        panels.append((name, _tint(canvas, predicted, (255, 0, 0))))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels), 3.2))
    for ax, (label, panel) in zip(np.atleast_1d(axes), panels):
        ax.imshow(panel)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pick_examples(defective: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``(method, which, episode_id)`` for each method's best, median and worst episode by IoU."""
    picks = []
    for method, block in defective.groupby("method", sort=True, observed=True):
        ranked = block.sort_values(["iou_fg", "episode_id"], ascending=[False, True])
        for which, position in (("best", 0), ("median", len(ranked) // 2), ("worst", len(ranked) - 1)):
            picks.append((method, which, ranked["episode_id"].iloc[position]))
    return picks


def largest_disagreements(defective: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """Episodes whose per-episode IoU differs most between methods: episode_id, spread, best, worst."""
    table = defective.pivot_table(index="episode_id", columns="method", values="iou_fg", aggfunc="first")
    table = table[table.notna().sum(axis=1) >= 2]
    if table.empty:
        return pd.DataFrame(columns=["episode_id", "spread", "best", "worst"])
    out = pd.DataFrame({"spread": table.max(axis=1) - table.min(axis=1),
                        "best": table.idxmax(axis=1), "worst": table.idxmin(axis=1)})
    return out.sort_values("spread", ascending=False).head(n).reset_index()


def prediction_sweeps(pixels: PixelSource, defective: pd.DataFrame, keys: list[str],
                      max_episodes: int = 64) -> dict:
    """IoU-vs-threshold from stored maps + GT masks: group tuple -> (thresholds, iou, n_episodes).

    Uses at most ``max_episodes`` episodes per group (first by episode_id) and the same 64 bins as
    the stored histograms, so the curve checks the histogram curve.
    """
    out = {}
    for group, block in defective.groupby(keys, sort=True, observed=True):
        hist_pos = np.zeros(HIST_BINS, np.int64)
        hist_neg = np.zeros(HIST_BINS, np.int64)
        used = 0
        for _, row in block.sort_values("episode_id").head(max_episodes).iterrows():
            score = pixels.score_map(row["method"], row["episode_id"], row.get("pred_path"))
            gt = pixels.gt_mask(row["run"], row["query_id"]) if score is not None else None
            if score is None or gt is None or gt.shape != score.shape:
                continue
            bins = np.minimum((score * HIST_BINS).astype(np.int64), HIST_BINS - 1)
            hist_pos += np.bincount(bins[gt], minlength=HIST_BINS)
            hist_neg += np.bincount(bins[~gt], minlength=HIST_BINS)
            used += 1
        if used and hist_pos.sum():
            thresholds, iou = metrics.iou_sweep_from_hist(hist_pos, hist_neg)
            out[group] = (thresholds, iou, used)
    return out
