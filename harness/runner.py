"""Episode execution: a worker that turns episodes into rows, and two executors (inline, Ray).

The worker holds one method instance (weights loaded once); given a chunk of episodes and the
records of the images they name, it reads the images, calls ``predict``, computes the metrics and returns small
row dicts. It never writes Parquet: the driver does (``harness.store``). The runner knows no
method by name. Application errors (a bad image, a method exception) become rows whose
``status`` is the error; system failures (a dead Ray worker) requeue the chunk.
"""
from __future__ import annotations

import json
import os
import socket
import time
import traceback
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from harness.metrics import episode_metrics
from harness.records import Episode, ImageRecord
from harness.schema import METRIC_COLUMNS
from methods.base import MethodSpec, as_prediction


@dataclass(frozen=True)
class EvalSettings:
    """How predictions are scored (recorded in run.json, part of the run's identity)."""

    min_area: int = 1
    hist_bins: int = 64
    frac_edges: tuple[float, ...] = (0.001, 0.003, 0.01, 0.05)


@dataclass(frozen=True)
class RowContext:
    """Fields every row of one (run, method) shares."""

    run_id: str
    manifest_id: str
    dataset: str
    method_config_hash: str
    method_options: str  # canonical JSON


@dataclass(frozen=True)
class WorkUnit:
    """A chunk of episodes plus the records of every image they name (plain data, no dataset)."""

    method: str
    chunk_index: int
    episodes: tuple[Episode, ...]
    records: tuple[ImageRecord, ...]
    attempt: int = 1

    def retry(self) -> "WorkUnit":
        return replace(self, attempt=self.attempt + 1)


def make_unit(method: str, chunk_index: int, episodes: Sequence[Episode], by_id: dict[str, ImageRecord]) -> WorkUnit:
    ids = sorted({i for e in episodes for i in (*e.support_ids, e.query_id)})
    return WorkUnit(method, chunk_index, tuple(episodes), tuple(by_id[i] for i in ids))


def episode_fields(episode: Episode) -> dict:
    return {
        "episode_id": episode.episode_id,
        "object": episode.object,
        "category": episode.category,
        "class_id": f"{episode.object}/{episode.category}",
        "shots": episode.shots,
        "seed": episode.seed,
        "repeat": episode.repeat,
        "query_id": episode.query_id,
        "support_ids": list(episode.support_ids),
        "query_is_normal": episode.query_is_normal,
        "support_is_normal": episode.support_is_normal,
    }


def error_row(context: RowContext, episode: Episode, status: str, worker: str = "") -> dict:
    row = {**asdict(context), **episode_fields(episode), "status": status[:2000]}
    row.update({key: None for key in METRIC_COLUMNS})
    row.update(latency_s=None, load_s=None, worker=worker, pred_path=None,
               finished_at=datetime.now(timezone.utc))
    return row


def describe_error(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"error: {type(exc).__name__}: {message}"


class ImageCache:
    """Small LRU of decoded images/masks: supports recur across the episodes of a chunk."""

    def __init__(self, capacity: int = 32):
        self.capacity = capacity
        self.items: OrderedDict = OrderedDict()

    def get(self, key, load: Callable):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = load()
        self.items[key] = value
        if len(self.items) > self.capacity:
            self.items.popitem(last=False)
        return value


class EpisodeWorker:
    """One method instance + the dataset records; ``run_chunk(unit) -> rows``."""

    def __init__(
        self,
        method_spec: MethodSpec,
        context: RowContext,
        settings: EvalSettings,
        predictions_dir: str | None = None,
        threads: int | None = None,
    ):
        if threads:
            import torch

            torch.set_num_threads(threads)
        from datasets.base import read_image, read_mask

        self._read_image, self._read_mask = read_image, read_mask
        self.method = method_spec.build()
        self.records: dict[str, ImageRecord] = {}
        self.context = context
        self.settings = settings
        self.predictions_dir = Path(predictions_dir) if predictions_dir else None
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self.cache = ImageCache()

    def _image(self, image_id: str) -> np.ndarray:
        return self.cache.get(("img", image_id), lambda: self._read_image(self.records[image_id]))

    def _mask(self, image_id: str) -> np.ndarray:
        return self.cache.get(("mask", image_id), lambda: self._read_mask(self.records[image_id]))

    def ready(self) -> str:
        """Answered once the constructor (weights loading) has finished."""
        return self.worker_name

    def run_chunk(self, unit: WorkUnit) -> list[dict]:
        self.records = {record.image_id: record for record in unit.records}
        return [self.run_episode(episode) for episode in unit.episodes]

    def run_episode(self, episode: Episode) -> dict:
        try:
            start = time.perf_counter()
            support_images = [self._image(i) for i in episode.support_ids]
            support_masks = [self._mask(i) for i in episode.support_ids]
            query_image = self._image(episode.query_id)
            gt_mask = self._mask(episode.query_id)
            loaded = time.perf_counter()
            prediction = as_prediction(
                self.method.predict(support_images, support_masks, query_image),
                self.method.threshold,
            )
            predicted = time.perf_counter()
            score_map = prediction.score_map
            if score_map.shape != gt_mask.shape:
                raise ValueError(
                    f"method returned a {score_map.shape} map for a {gt_mask.shape} query"
                )
            if not np.isfinite(score_map).all():
                raise ValueError("method returned non-finite scores")
            metrics = episode_metrics(
                np.clip(score_map, 0.0, 1.0),
                prediction.threshold,
                gt_mask,
                min_area=self.settings.min_area,
                hist_bins=self.settings.hist_bins,
                frac_edges=self.settings.frac_edges,
            )
            pred_path = self._save_prediction(episode, score_map)
        except Exception as exc:  # noqa: BLE001 - one bad episode must not stop the run
            row = error_row(self.context, episode, describe_error(exc), self.worker_name)
            row["error_trace"] = traceback.format_exc(limit=-3)
            return row
        row = {**asdict(self.context), **episode_fields(episode), **metrics}
        row.update(
            status="ok",
            latency_s=predicted - loaded,
            load_s=loaded - start,
            worker=self.worker_name,
            finished_at=datetime.now(timezone.utc),
            pred_path=str(pred_path) if pred_path else None,
        )
        return row

    def _save_prediction(self, episode: Episode, score_map: np.ndarray) -> Path | None:
        if self.predictions_dir is None:
            return None
        from PIL import Image

        path = self.predictions_dir / f"{episode.episode_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
        try:
            Image.fromarray(np.round(np.clip(score_map, 0, 1) * 255).astype(np.uint8)).save(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # a full disk must not leave half-written temp files
        return path


@dataclass
class MethodJob:
    """Everything needed to run one method over its pending chunks."""

    spec: MethodSpec
    context: RowContext
    units: list[WorkUnit]
    predictions_dir: str | None = None
    done_rows: Callable[[WorkUnit, list[dict]], None] = field(default=lambda unit, rows: None)


class InlineExecutor:
    """Runs the same worker code in this process (debugging, tests, no Ray)."""

    name = "inline"

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def run(self, job: MethodJob, settings: EvalSettings, progress) -> None:
        worker = EpisodeWorker(job.spec, job.context, settings, job.predictions_dir, self.threads)
        for unit in job.units:
            rows = worker.run_chunk(unit)
            job.done_rows(unit, rows)
            progress(len(rows), rows)
