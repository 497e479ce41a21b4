"""Episode execution: a worker that turns episodes into rows, and two executors (inline, Ray).

The worker holds the run's method instances (weights loaded once per process; methods that share
a frozen backbone share one model and one feature cache, ``methods._common``); given a chunk of
episodes of one method and the records of the images they name, it reads the images, calls
``predict``, computes the metrics and returns small row dicts. The executors give one worker all
methods' units of a chunk in sequence, so every episode on a query image runs where its features
are cached. It never writes Parquet: the driver does (``harness.store``). The runner knows no
method by name. Application errors (a bad image, a method exception) become rows whose
``status`` is the error; system failures (a dead Ray worker) requeue the chunk.
"""
from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from harness.constants import SIZE_BIN_EDGES
from harness.io import LRU, short_error
from harness.metrics import episode_metrics
from harness.normal_supports import draw_normal_supports
from harness.records import UNSCORED_STATUS, Episode, ImageRecord
from harness.schema import METRIC_COLUMNS
from methods.base import MethodSpec, Prediction, check_inputs, checked_prediction


@dataclass(frozen=True)
class EvalSettings:
    """How predictions are scored (recorded in run.json, part of the run's identity)."""

    min_area: int = 1
    hist_bins: int = 64
    frac_edges: tuple[float, ...] = SIZE_BIN_EDGES


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
    # The positions of ``episodes`` in the stored chunk when only some are computed (a resume
    # retrying transient errors): the driver merges their rows into the stored part. None: all.
    positions: tuple[int, ...] | None = None
    # (start, stop): this unit is episodes[start:stop] of a unit an executor split (a worker kept
    # dying on it); the executor gathers the pieces' rows before handing the whole unit back.
    piece: tuple[int, int] | None = None
    # (real path, size, mtime_ns, content digest) of the unit's image and mask files as hashed for
    # the manifest (``harness.provenance.ContentHashes.entry``); each file is checked when read.
    file_hashes: tuple[tuple[str, int, int, str], ...] = ()
    normal_supports: int = 0  # good images added to each episode's supports (harness.normal_supports)
    normal_pool: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (object, ids) they are drawn from

    def retry(self) -> "WorkUnit":
        return replace(self, attempt=self.attempt + 1)

    def halves(self) -> list["WorkUnit"]:
        """Two pieces of a unit of several episodes, each a first attempt."""
        start = self.piece[0] if self.piece else 0
        middle = len(self.episodes) // 2
        return [replace(self, episodes=self.episodes[:middle], attempt=1, piece=(start, start + middle)),
                replace(self, episodes=self.episodes[middle:], attempt=1,
                        piece=(start + middle, start + len(self.episodes)))]


def make_unit(method: str, chunk_index: int, episodes: Sequence[Episode], by_id: dict[str, ImageRecord],
              positions: Sequence[int] | None = None, normal_supports: int = 0,
              normal_pool: dict[str, tuple[str, ...]] | None = None) -> WorkUnit:
    """The unit of a chunk; with ``positions`` only those episodes of it (``WorkUnit.positions``);
    with ``normal_supports`` K > 0 also the records of the K normal supports each episode draws."""
    if positions is not None:
        episodes = [episodes[p] for p in positions]
        positions = tuple(positions)
    ids = {i for e in episodes for i in (*e.support_ids, e.query_id)}
    pool = tuple((obj, (normal_pool or {}).get(obj, ())) for obj in sorted({e.object for e in episodes}))
    if normal_supports:
        ids |= {i for e in episodes for i in draw_normal_supports(e, dict(pool), normal_supports)}
    return WorkUnit(method, chunk_index, tuple(episodes), tuple(by_id[i] for i in sorted(ids)), positions=positions,
                    normal_supports=normal_supports, normal_pool=pool if normal_supports else ())


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
        "role": episode.role,
    }


SCORE_MAP_KEY = "score_map_u8"  # a row's 8-bit score map on its way to the store (not a column)


def score_map_u8(score_map: np.ndarray) -> np.ndarray:
    """``uint8 [H, W]``: score·255, rounded (what a prediction PNG holds)."""
    return np.round(np.clip(score_map, 0, 1) * 255).astype(np.uint8)


def failed_row(row: dict, status: str) -> dict:
    """``row`` turned into an error row (``status``): its metric columns emptied."""
    failed = {**row, "status": status[:2000], **{key: None for key in METRIC_COLUMNS}}
    failed.update(latency_s=None, load_s=None, pred_path=None)
    failed.pop(SCORE_MAP_KEY, None)
    return failed


def error_row(context: RowContext, episode: Episode, status: str, worker: str = "") -> dict:
    row = {**asdict(context), **episode_fields(episode), "status": status[:2000]}
    row.update({key: None for key in METRIC_COLUMNS})
    row.update(latency_s=None, load_s=None, worker=worker, pred_path=None,
               finished_at=datetime.now(timezone.utc))
    return row


# What a prediction says without ground truth: kept in the rows of unlabelled queries.
GT_FREE_COLUMNS = ("height", "width", "threshold", "pred_area_px", "pred_components", "image_positive", "max_score")


def unscored(metrics: dict) -> dict:
    """``metrics`` of a query with no label: the ground-truth columns emptied (None)."""
    return {key: (value if key in GT_FREE_COLUMNS else None) for key, value in metrics.items()}


def describe_error(exc: BaseException) -> str:
    message = short_error(exc) if str(exc).strip() else ""
    return f"error: {type(exc).__name__}: {message}"


class DataChanged(Exception):
    """An image or mask file changed during the run: its bytes differ from those hashed for the
    manifest (the episode's error row names the file)."""


class EpisodeTimeout(Exception):
    """``predict`` did not return within the run's ``--episode-timeout`` (the call is abandoned).
    Its rows are transient errors (``harness.status.TIMEOUT``), computed again on resume."""


class WorkerDied(Exception):
    """The worker process died (crash, OOM kill, lost node) each time it ran this one episode.
    Its rows are transient errors (``harness.status.WORKER_DIED``), computed again on resume."""


# ~4x the slowest CPU episode foreseen (SegGPT ViT-L, ~850 s), 400x the slowest measured (8.2 s): README "Reliability"
DEFAULT_EPISODE_TIMEOUT_S = 3600.0


class PredictThread:
    """Runs ``predict`` calls on one long-lived daemon thread and waits at most ``timeout_s`` each.

    A Python thread cannot be stopped, so a call that does not return in time is abandoned: its
    thread stays blocked (a daemon: it does not keep the process alive) and the next call starts
    a new thread. One thread serves every call otherwise (a thread per call would take a fresh
    malloc arena each time, see ``EpisodeWorker._threads``)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.abandoned = 0  # calls that timed out (their threads are still blocked)
        self._inbox: queue.SimpleQueue | None = None

    def call(self, function: Callable):
        if self._inbox is None:
            self._inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(self._inbox,), name="sofs-predict", daemon=True).start()
        done, box = threading.Event(), {}
        self._inbox.put((function, done, box))
        if not done.wait(self.timeout_s):
            self._inbox.put(None)  # should the call ever return, its thread ends there
            self._inbox = None
            self.abandoned += 1
            raise EpisodeTimeout(f"predict did not return within {self.timeout_s:g} s (--episode-timeout)")
        if "error" in box:
            raise box["error"]
        return box["value"]

    @staticmethod
    def _serve(inbox: queue.SimpleQueue) -> None:
        while (item := inbox.get()) is not None:
            function, done, box = item
            try:
                box["value"] = function()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                box["error"] = exc
            finally:
                done.set()


PIPELINE_DEPTH = 2  # score maps waiting for the scorer thread (each is float32 [H, W])


class ImageCache:
    """Small LRU of decoded images/masks: supports recur across the episodes of a chunk."""

    def __init__(self, capacity: int = 32):
        self.capacity = capacity
        self.lru = LRU(max_entries=capacity)

    def get(self, key, load: Callable):
        if key in self.lru:
            return self.lru.get(key)
        value = load()
        self.lru.put(key, value)
        return value


def method_device(method) -> str | None:
    """The torch device a method computes on (its ``device`` attribute), as recorded in rows."""
    device = getattr(method, "device", None)
    return str(device) if device is not None else None


def method_view_stats(method) -> dict | None:
    """Backbone passes / unique views of a method (``view_stats`` or ``backbone.stats``), or None."""
    stats = getattr(method, "view_stats", None) or getattr(getattr(method, "backbone", None), "stats", None)
    return stats.as_dict() if stats is not None else None


@dataclass
class _Failure:
    """An exception raised off the compute thread, with its traceback text."""

    error: Exception
    trace: str


@dataclass
class _Slot:
    method: object
    context: RowContext
    keep_maps: bool  # return each episode's 8-bit score map with its row (SCORE_MAP_KEY)


class EpisodeWorker:
    """The run's method instances + the dataset records; ``run_chunk(unit) -> rows``.

    ``method_spec``/``context``/``keep_maps`` give the first method; ``more`` adds others as
    ``(spec, context, keep_maps)`` (one worker, one process, models loaded once each). A worker
    writes nothing: with ``keep_maps`` a row carries its episode's 8-bit score map under
    ``SCORE_MAP_KEY``, and the driver's store writes it (``harness.run``)."""

    def __init__(
        self,
        method_spec: MethodSpec,
        context: RowContext,
        settings: EvalSettings,
        keep_maps: bool = False,
        threads: int | None = None,
        more: Sequence[tuple[MethodSpec, RowContext, bool]] = (),
        episode_timeout_s: float | None = None,
    ):
        if threads:
            import torch

            torch.set_num_threads(threads)
        from datasets.base import read_image, read_mask

        self._read_image, self._read_mask = read_image, read_mask
        self.slots: dict[str, _Slot] = {}
        self.specs: dict[str, MethodSpec] = {}
        for spec, ctx, keep in ((method_spec, context, keep_maps), *more):
            self.slots[spec.name] = _Slot(spec.build(), ctx, bool(keep))
            self.specs[spec.name] = spec
        # None or 0: predict runs on the calling thread, unbounded
        self.predictor = PredictThread(episode_timeout_s) if episode_timeout_s else None
        self._use(method_spec.name)
        self.records: dict[str, ImageRecord] = {}
        self.settings = settings
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self.cache = ImageCache()
        self.file_hashes: dict[str, tuple] = {}  # real path -> WorkUnit.file_hashes entry
        self.normal_supports: tuple[int, dict] = (0, {})  # (K, pool) of the current unit
        self._pools = None  # (loader, scorer) thread pools, started on the first chunk

    def _use(self, name: str) -> None:
        slot = self.slots[name]
        self.method, self.context, self.keep_maps = slot.method, slot.context, slot.keep_maps
        self.method_name = name
        self.device = method_device(slot.method)

    def _replace_method(self) -> None:
        """A fresh instance of the current method after a timed-out ``predict``: the abandoned
        call may still be running on the old one (its caches, its state)."""
        name = self.method_name
        print(f"warning: {self.worker_name}: {name}: predict timed out after {self.predictor.timeout_s:g} s; "
              "the call is abandoned and the method loaded again", file=sys.stderr, flush=True)
        self.slots[name].method = self.specs[name].build()
        self._use(name)

    def devices(self) -> dict:
        """``{method: device}`` of this worker's methods."""
        return {name: method_device(slot.method) for name, slot in self.slots.items()}

    def stats(self) -> dict:
        """``{method: {backbone_passes, unique_views, view_keys}}`` of what this process computed."""
        return {name: s for name, s in ((n, method_view_stats(slot.method)) for n, slot in self.slots.items()) if s}

    def _image(self, image_id: str) -> np.ndarray:
        record = self.records[image_id]
        return self.cache.get(("img", image_id), lambda: self._checked(self._read_image(record), record.path))

    def _mask(self, image_id: str) -> np.ndarray:
        record = self.records[image_id]
        return self.cache.get(("mask", image_id), lambda: self._checked(self._read_mask(record), record.mask_path))

    def _checked(self, pixels: np.ndarray, path: str | None) -> np.ndarray:
        """``pixels`` read from ``path``, once the file is known to hold the bytes the manifest
        was built from (checked after the read, so a rewrite during the read is caught too)."""
        from datasets.base import resolve_link_stub
        from harness.provenance import changed_file

        if path is None or not self.file_hashes:
            return pixels
        real = os.path.realpath(resolve_link_stub(Path(path)))
        recorded = self.file_hashes.get(real)
        if recorded is not None and changed_file(recorded):
            raise DataChanged(f"{path}: changed during the run (its content differs from the bytes the "
                              "manifest was built from)")
        return pixels

    def ready(self) -> str:
        """Answered once the constructor (weights loading) has finished."""
        return self.worker_name

    def run_chunk(self, unit: WorkUnit) -> list[dict]:
        """Rows of the chunk's episodes, in order, computed as a three-stage pipeline.

        A loader thread decodes episode i+1's images while episode i runs ``predict`` on this
        thread, and a scorer thread computes episode i-1's metrics and its 8-bit map
        (numpy releases the GIL for most of that), so a GPU is not left idle while the CPU
        decodes and scores. At most ``PIPELINE_DEPTH`` score maps wait for the scorer."""
        self._use(unit.method)
        self.records = {record.image_id: record for record in unit.records}
        self.file_hashes.update((entry[0], entry) for entry in unit.file_hashes)
        self.normal_supports = (unit.normal_supports, dict(unit.normal_pool))
        episodes = unit.episodes
        if not episodes:
            return []
        self._prepare(episodes)
        loader, scorer = self._threads()
        rows: list = []
        next_inputs = loader.submit(self._load, episodes[0])
        for index, episode in enumerate(episodes):
            inputs = next_inputs.result()
            if index + 1 < len(episodes):
                next_inputs = loader.submit(self._load, episodes[index + 1])
            outcome = self._predict(episode, inputs)
            if isinstance(outcome, dict):  # an error row
                rows.append(outcome)
                continue
            pending = [r for r in rows if not isinstance(r, dict) and not r.done()]
            if len(pending) >= PIPELINE_DEPTH:
                pending[0].result()  # bound the score maps held in memory
            rows.append(scorer.submit(self._score, episode, *outcome))
        return [row if isinstance(row, dict) else row.result() for row in rows]

    def close(self) -> None:
        """Stop the loader and scorer threads (a Ray actor's end with its process)."""
        if self._pools is not None:
            for pool in self._pools:
                pool.shutdown(wait=True)
            self._pools = None

    def _threads(self):
        """The worker's loader and scorer threads, started once and kept for every chunk (threads
        started per chunk each took a fresh malloc arena: RSS grew ~1 MB per episode)."""
        from concurrent.futures import ThreadPoolExecutor

        if self._pools is None:
            self._pools = (ThreadPoolExecutor(1, thread_name_prefix="sofs-load"),
                           ThreadPoolExecutor(1, thread_name_prefix="sofs-score"))
        return self._pools

    def _prepare(self, episodes: Sequence[Episode]) -> None:
        """Hand the method the chunk's images it batches with others (``batches_with_others`` /
        ``prepare``, optional hooks of a method), decoded up to half the image cache (masks share it). A
        failure here is left to the episodes: each reports its own error row."""
        prepare = getattr(self.method, "prepare", None)
        wanted = getattr(self.method, "batches_with_others", None)
        if prepare is None or wanted is None:
            return
        try:
            ids = list(dict.fromkeys(i for e in episodes for i in (*e.support_ids, e.query_id)))
            ids = [i for i in ids if wanted(self.records[i].height, self.records[i].width)][: self.cache.capacity // 2]
            images = []
            for image_id in ids:
                try:
                    images.append(self._image(image_id))
                except Exception:  # noqa: BLE001 - a bad image fails its own episodes later
                    continue
            if len(images) >= 2:
                prepare(images)
        except Exception as exc:  # noqa: BLE001 - the episodes compute (and report) one by one
            print(f"warning: {self.worker_name}: batched features skipped: {describe_error(exc)}", file=sys.stderr)

    def run_episode(self, episode: Episode) -> dict:
        """One episode without the pipeline (load, predict, score on this thread)."""
        outcome = self._predict(episode, self._load(episode))
        return outcome if isinstance(outcome, dict) else self._score(episode, *outcome)

    def _load(self, episode: Episode) -> tuple | _Failure:
        """(support images, support masks, query image, GT mask, load seconds), or what failed."""
        try:
            start = time.perf_counter()
            support_images = [self._image(i) for i in episode.support_ids]
            support_masks = [self._mask(i) for i in episode.support_ids]
            for image_id in draw_normal_supports(episode, self.normal_supports[1], self.normal_supports[0]):
                support_images.append(self._image(image_id))
                support_masks.append(np.zeros(support_images[-1].shape[:2], bool))
            query_image = self._image(episode.query_id)
            gt_mask = self._mask(episode.query_id)
            return support_images, support_masks, query_image, gt_mask, time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - becomes this episode's error row
            return _Failure(exc, traceback.format_exc(limit=-3))

    def _predict(self, episode: Episode, inputs: tuple | _Failure) -> tuple | dict:
        """(prediction, GT mask, load seconds, predict seconds), or the episode's error row."""
        if isinstance(inputs, _Failure):
            return self._error_row(episode, inputs.error, inputs.trace)
        support_images, support_masks, query_image, gt_mask, load_s = inputs
        try:
            check_inputs(support_images, support_masks, query_image)
            start = time.perf_counter()
            output = self._call_predict(support_images, support_masks, query_image)
            predict_s = time.perf_counter() - start
            prediction = checked_prediction(output, self.method.threshold, gt_mask.shape)
            return prediction, gt_mask, load_s, predict_s
        except Exception as exc:  # noqa: BLE001 - one bad episode must not stop the run
            return self._error_row(episode, exc, traceback.format_exc(limit=-3))

    def _call_predict(self, support_images, support_masks, query_image):
        """``method.predict``, bounded by the episode timeout when one is set."""
        method = self.method
        if self.predictor is None:
            return method.predict(support_images, support_masks, query_image)
        try:
            return self.predictor.call(lambda: method.predict(support_images, support_masks, query_image))
        except EpisodeTimeout:
            self._replace_method()
            raise

    def _score(self, episode: Episode, prediction: Prediction, gt_mask: np.ndarray, load_s: float,
               predict_s: float) -> dict:
        """The episode's row: metrics of the checked prediction, and its 8-bit map when maps are kept."""
        try:
            metrics = episode_metrics(
                np.clip(prediction.score_map, 0.0, 1.0),
                prediction.threshold,
                gt_mask,
                min_area=self.settings.min_area,
                hist_bins=self.settings.hist_bins,
                frac_edges=self.settings.frac_edges,
            )
        except Exception as exc:  # noqa: BLE001 - one bad episode must not stop the run
            return self._error_row(episode, exc, traceback.format_exc(limit=-3))
        labelled = episode.role != "unlabelled"
        row = {**asdict(self.context), **episode_fields(episode), **(metrics if labelled else unscored(metrics))}
        row.update(
            status="ok" if labelled else UNSCORED_STATUS,
            latency_s=predict_s,
            load_s=load_s,
            worker=self.worker_name,
            device=self.device,
            finished_at=datetime.now(timezone.utc),
            pred_path=None,  # set by the driver when it stores the map
        )
        # A calibration image only sets a threshold: its row holds all that needs.
        if self.keep_maps and episode.role != "calibration":
            row[SCORE_MAP_KEY] = score_map_u8(prediction.score_map)
        return row

    def _error_row(self, episode: Episode, exc: BaseException, trace: str) -> dict:
        row = error_row(self.context, episode, describe_error(exc), self.worker_name)
        row["device"] = self.device
        row["error_trace"] = trace
        return row



@dataclass
class MethodJob:
    """Everything needed to run one method over its pending chunks."""

    spec: MethodSpec
    context: RowContext
    units: list[WorkUnit]
    keep_maps: bool = False  # rows carry their 8-bit score maps (SCORE_MAP_KEY) for the store
    done_rows: Callable[[WorkUnit, list[dict]], None] = field(default=lambda unit, rows: None)


def interleave(jobs: Sequence[MethodJob]) -> list[list[WorkUnit]]:
    """Units grouped by chunk (all methods' units of chunk i together, in method order), chunks in order.

    A group is the scheduling atom: it runs on one worker in sequence, so the episodes of the
    chunk's query images are computed where the previous method left their features."""
    groups: dict[int, list[WorkUnit]] = {}
    for job in jobs:
        for unit in job.units:
            groups.setdefault(unit.chunk_index, []).append(unit)
    return [groups[index] for index in sorted(groups)]


def merge_stats(into: dict, stats: dict) -> dict:
    """Unite per-method view stats of several workers (passes add up, view keys are a union)."""
    for name, item in stats.items():
        slot = into.setdefault(name, {"backbone_passes": 0, "view_keys": set()})
        slot["backbone_passes"] += int(item.get("backbone_passes", 0))
        slot["view_keys"] |= set(item.get("view_keys", ()))
    return into


def summarise_stats(merged: dict) -> dict:
    """``{method: {backbone_passes, unique_views, ratio}, "all": {...}}`` from :func:`merge_stats`."""
    out, keys, passes = {}, set(), 0
    for name, item in merged.items():
        views = len(item["view_keys"])
        out[name] = {"backbone_passes": item["backbone_passes"], "unique_views": views,
                     "passes_per_view": round(item["backbone_passes"] / views, 4) if views else None}
        keys |= item["view_keys"]
        passes += item["backbone_passes"]
    if out:
        out["all"] = {"backbone_passes": passes, "unique_views": len(keys),
                      "passes_per_view": round(passes / len(keys), 4) if keys else None}
    return out


@runtime_checkable
class Executor(Protocol):
    """Where work units run: ``harness.run`` builds one, calls ``run_all`` once, then ``close``.

    Besides running, an executor reports what it ran on (run.json "executor") and what came back
    beside the rows. Implementations: :class:`InlineExecutor` (this process) and
    ``harness.ray_executor.RayExecutor`` (a Ray actor set).
    """

    name: str  # run.json executor.name
    workers: int  # parallel workers (sets the default chunk size)
    cpus_per_worker: float | None  # None: not bounded (inline)
    gpus_per_worker: float
    resources: dict | None  # the cluster's resources ({"CPU": n, "GPU": n, ...}); None: this process
    lost: list  # (WorkUnit, reason) of chunks that ran but could not be stored; re-run to retry
    view_stats: dict  # merge_stats of the workers, per method
    devices: dict  # method -> device it ran on

    def run_all(self, jobs: Sequence[MethodJob], settings: EvalSettings, progress: Callable) -> None:
        """Run every job's units; ``job.done_rows(unit, rows)`` and ``progress(n, rows)`` per unit."""

    def close(self) -> None:
        """End of the run: release what the executor started (called once, also after a failure)."""


class InlineExecutor:
    """Runs the same worker code in this process (debugging, tests, no Ray). An :class:`Executor`."""

    name = "inline"
    workers = 1
    cpus_per_worker = None
    resources = None

    def __init__(self, threads: int | None = None, gpus_per_worker: float = 0.0,
                 episode_timeout_s: float | None = DEFAULT_EPISODE_TIMEOUT_S):
        self.threads = threads
        self.episode_timeout_s = episode_timeout_s
        self.gpus_per_worker = gpus_per_worker  # recorded as given (the method picks its device)
        self.lost: list = []  # nothing is lost in-process: a failure raises
        self.view_stats: dict = {}  # merge_stats of the workers, per method
        self.devices: dict = {}  # method -> device it ran on

    def close(self) -> None:
        pass

    def run(self, job: MethodJob, settings: EvalSettings, progress) -> None:
        self.run_all([job], settings, progress)

    def run_all(self, jobs: Sequence[MethodJob], settings: EvalSettings, progress) -> None:
        """One worker holding every method; each chunk's units of all methods run back to back."""
        jobs = [job for job in jobs if job.units]
        if not jobs:
            return
        by_name = {job.spec.name: job for job in jobs}
        first, *rest = jobs
        worker = EpisodeWorker(first.spec, first.context, settings, first.keep_maps, self.threads,
                               more=[(j.spec, j.context, j.keep_maps) for j in rest],
                               episode_timeout_s=self.episode_timeout_s)
        try:
            for group in interleave(jobs):
                for unit in group:
                    rows = worker.run_chunk(unit)
                    by_name[unit.method].done_rows(unit, rows)
                    progress(len(rows), rows)
        finally:
            merge_stats(self.view_stats, worker.stats())
            self.devices.update(worker.devices())
            worker.close()
