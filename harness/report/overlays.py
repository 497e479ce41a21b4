"""Qualitative overlays (best / median / worst and largest disagreements) and prediction sweeps.

Pixels come from two optional places, and the report says which one is missing:
- query images and GT masks: run.json's ``dataset`` (``{"root", "format"}``) opened with
  ``datasets.base.load_dataset``; ``Dataset.by_id()`` maps ``query_id`` -> ImageRecord;
- score maps: the run store's ``prediction_path(method, episode_id)`` (8-bit, score·255), or the
  row's ``pred_path``.
A run folder's contents are not trusted: a score map is opened only when its real path lies inside
the run folder (a ``pred_path`` or a link leading elsewhere is ignored), images only through the
dataset adapter, which refuses files that resolve outside the recorded dataset root, and a PNG that
cannot be decoded is skipped with a note.
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
from harness.store import RunStore  # noqa: E402

MAX_SIDE = 512


class PixelSource:
    """Query images, GT masks and stored score maps of the runs; ``notes`` says what is missing."""

    def __init__(self, runs: list[RunInfo], sources: dict[str, MethodSource]):
        self.sources = sources
        self.notes: list[str] = []
        self._datasets = {run.label: self._open_dataset(run) for run in runs}

    def _open_dataset(self, run: RunInfo):
        entry = run.record.dataset if run.record else None
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
        candidates = [RunStore(source.run.run_dir).prediction_path(source.method, episode_id)]
        if isinstance(pred_path, str) and pred_path:
            candidates.append(Path(pred_path))
        inside = source.run.run_dir.resolve()
        for path in candidates:
            if not path.resolve().is_relative_to(inside) or not path.is_file():
                continue  # only files of the run folder are opened
            try:
                with Image.open(path) as image:
                    return np.asarray(image.convert("L"), np.float32) / 255.0
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                note = f"{path}: prediction PNG unreadable ({type(error).__name__}: {error}); skipped."
                if note not in self.notes:
                    self.notes.append(note)
                return None
        return None

    def has_images(self) -> bool:
        return any(opened is not None for opened in self._datasets.values())

    def has_predictions(self) -> bool:
        return any(RunStore(s.run.run_dir).has_predictions(s.method) for s in self.sources.values())


MAX_CROPS_GT = 4  # zoomed crops per episode around GT components (smallest first)
CROP_MIN_SIDE = 96  # px at native resolution: a crop shows at least this much context
METHOD_COLOURS = ["#00e5ff", "#ffe000", "#ff40ff", "#ff8c00", "#7dff3a", "#3a7dff"]  # cyan, yellow first: visible on red, green and grey surfaces
GT_COLOUR = "#ffffff"  # white with a black edge: visible on dark, bright and green (PCB) surfaces


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


def _boxes(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """``(area, y0, x0, y1, x1)`` of each connected component (8-connectivity), smallest first."""
    from skimage.measure import label, regionprops

    if mask is None or not mask.any():
        return []
    return sorted((int(r.area), *map(int, r.bbox)) for r in regionprops(label(mask, connectivity=2)))


def _crop_window(box, shape) -> tuple[slice, slice]:
    """A window around ``box`` (y0, x0, y1, x1): 3x its size, at least ``CROP_MIN_SIDE``, inside the image."""
    y0, x0, y1, x1 = box
    height, width = shape[:2]
    side = int(min(max(CROP_MIN_SIDE, 3 * max(y1 - y0, x1 - x0)), height, width))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    top = int(np.clip(cy - side // 2, 0, height - side))
    left = int(np.clip(cx - side // 2, 0, width - side))
    return slice(top, top + side), slice(left, left + side)


def _contour(ax, mask: np.ndarray, colour: str, width: float) -> None:
    if mask is not None and mask.any() and not mask.all():
        import matplotlib.patheffects as effects

        lines = ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=width)
        lines.set(path_effects=[effects.withStroke(linewidth=width + 1.6, foreground="black")])


def episode_figure(pixels: PixelSource, episode_id: str, rows: pd.DataFrame, title: str) -> str:
    """One episode as a base64 PNG: the whole query with GT (white) and each method's thresholded
    prediction (other colours) as contours, boxes marking the zoomed regions; then a crop at native
    resolution around each GT component (smallest first, up to ``MAX_CROPS_GT``) and around each
    method's largest false-positive blob. Titles give each method's IoU and threshold.

    ``rows``: the ok rows of this episode, one per method (display label in ``method``).
    """
    first = rows.iloc[0]
    image = pixels.query_image(first["run"], first["query_id"])
    gt = pixels.gt_mask(first["run"], first["query_id"])
    canvas = image if image is not None else np.full((int(first["height"]), int(first["width"]), 3), 60, np.uint8)
    methods = _method_masks(pixels, episode_id, rows, canvas.shape[:2])
    crops = _crops(gt, methods)
    # More than three crops: two rows of crops beside the whole query, so the page never shrinks
    # the figure below readability.
    crop_rows = 2 if len(crops) > 3 else 1
    crop_cols = max(1, -(-len(crops) // crop_rows))
    whole_width = float(np.clip(5.0 * crop_rows * canvas.shape[1] / max(canvas.shape[0], 1), 3.5, 7.5))
    fig = plt.figure(figsize=(whole_width + 2.7 * crop_cols, 3.6 * crop_rows + 0.9))
    grid = fig.add_gridspec(crop_rows, 1 + crop_cols, width_ratios=[whole_width / 2.7] + [1] * crop_cols)
    _draw_whole(fig.add_subplot(grid[:, 0]), canvas, gt, methods, crops,
                "whole query" + (" (image unavailable)" if image is None else "")
                + ("" if gt is not None else ", GT unavailable"))
    for k, (what, box, area) in enumerate(crops):
        ax = fig.add_subplot(grid[k // crop_cols, 1 + k % crop_cols])
        window = _crop_window(box, canvas.shape)
        ax.imshow(canvas[window], interpolation="nearest")
        _contour(ax, gt[window] if gt is not None else None, GT_COLOUR, 1.5)
        for _, colour, predicted in methods:
            _contour(ax, predicted[window] if predicted is not None else None, colour, 1.2)
        ax.set_title(f"{k + 1}: {what}, {area} px", fontsize=7)
        ax.axis("off")
    return _finish(fig, title, methods, crop_rows)


def _method_masks(pixels: PixelSource, episode_id: str, rows: pd.DataFrame, shape) -> list:
    """``(label, colour, predicted mask at the canvas size or None)`` of each method's row."""
    methods = []
    for i, (_, row) in enumerate(rows.iterrows()):
        score = pixels.score_map(row["method"], episode_id, row.get("pred_path"))
        predicted = None
        if score is not None:
            predicted = score > row["threshold"]  # as metrics: score > t
            if predicted.shape != tuple(shape):
                predicted = np.asarray(Image.fromarray(predicted).resize(tuple(shape)[::-1], Image.NEAREST))
        label = f"{row['method']} {row['shots']}-shot: IoU {100 * row['iou_fg']:.1f} % @ thr {row['threshold']:.2f}"
        if score is None:
            label += " (no stored prediction)"
        methods.append((label, METHOD_COLOURS[i % len(METHOD_COLOURS)], predicted))
    return methods


def _crops(gt: np.ndarray | None, methods: list) -> list:
    """``(what, box, area)``: the smallest GT components, then each method's largest false-positive blob."""
    crops = [("GT component", box[1:], box[0]) for box in _boxes(gt)[:MAX_CROPS_GT]]
    for label, _, predicted in methods:
        if predicted is None:
            continue
        blobs = _boxes(predicted & ~gt if gt is not None else predicted)
        if blobs:
            area, *box = max(blobs)
            crops.append((f"largest FP blob of {label.split(':')[0]}", tuple(box), area))
    return crops


def _draw_whole(ax, canvas: np.ndarray, gt, methods: list, crops: list, title: str) -> None:
    """The whole query (downscaled to ``MAX_SIDE``) with the contours and numbered crop boxes."""
    scale = MAX_SIDE / max(canvas.shape[:2]) if max(canvas.shape[:2]) > MAX_SIDE else 1.0
    ax.imshow(_downscale(canvas, nearest=False))
    _contour(ax, _downscale(gt, True) if gt is not None else None, GT_COLOUR, 1.0)
    for _, colour, predicted in methods:
        _contour(ax, _downscale(predicted, True) if predicted is not None else None, colour, 0.8)
    for k, (_, box, _) in enumerate(crops):
        rows_slice, cols_slice = _crop_window(box, canvas.shape)
        ax.add_patch(plt.Rectangle((cols_slice.start * scale, rows_slice.start * scale),
                                   (cols_slice.stop - cols_slice.start) * scale,
                                   (rows_slice.stop - rows_slice.start) * scale,
                                   fill=False, edgecolor="white", linewidth=0.8, linestyle="--"))
        ax.text(cols_slice.start * scale + 2, rows_slice.start * scale + 2, str(k + 1), color="white",
                fontsize=7, va="top", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _finish(fig, title: str, methods: list, crop_rows: int) -> str:
    """Legend and title, then the figure as a base64 PNG (closed)."""
    import matplotlib.patheffects as effects

    handles = [plt.Line2D([], [], color=GT_COLOUR, linewidth=2, label="ground truth (white)",
                          path_effects=[effects.withStroke(linewidth=3.6, foreground="black")])]
    handles += [plt.Line2D([], [], color=colour, linewidth=2, label=label) for label, colour, _ in methods]
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=7, frameon=False)
    fig.suptitle(title + "\n" + "   ".join(label for label, _, _ in methods), fontsize=8.5)
    fig.tight_layout(rect=(0, 0.08 / crop_rows, 1, 1 - 0.08 / crop_rows))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pick_examples(defective: pd.DataFrame, exclude=()) -> list[tuple[str, str, str]]:
    """``(method, which, episode_id)`` for each method's best, median and worst episode by IoU.

    No episode is shown twice: a rank already taken (by this method or another, or in
    ``exclude``) moves to the next unused episode of that method's ranking (towards the median
    for best/worst)."""
    picks, used = [], set(exclude)
    for method, block in defective.groupby("method", sort=True, observed=True):
        ranked = list(block.sort_values(["iou_fg", "episode_id"], ascending=[False, True])["episode_id"])
        n = len(ranked)
        for which, order in (("best", range(n)), ("worst", range(n - 1, -1, -1)),
                             ("median", sorted(range(n), key=lambda i: (abs(i - n // 2), i)))):
            episode = next((ranked[i] for i in order if ranked[i] not in used), None)
            if episode is not None:
                used.add(episode)
                picks.append((method, which, episode))
    order = {"best": 0, "median": 1, "worst": 2}
    return sorted(picks, key=lambda p: (p[0], order[p[1]]))


def largest_disagreements(defective: pd.DataFrame, n: int = 4, exclude=()) -> pd.DataFrame:
    """Episodes whose per-episode IoU differs most between methods: episode_id, spread, best, worst
    (episodes in ``exclude``, e.g. already shown as examples, are left out)."""
    table = defective.pivot_table(index="episode_id", columns="method", values="iou_fg", aggfunc="first")
    table = table[(table.notna().sum(axis=1) >= 2) & ~table.index.isin(list(exclude))]
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
