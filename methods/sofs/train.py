"""Episodic meta-training of the SOFS head on the base classes of a dataset (spec §3).

Recipe: AdamW (betas 0.9/0.999, weight decay 0.01); two LR groups, ``query_semantic_transformer``
at the base LR and every other learned layer at ``lr_multiple`` x; poly schedule per iteration,
``lr * (1 - it / steps) ** 0.9`` with ``it`` starting at 1 (as the reference); gradient
accumulation to an effective batch of ``batch_size * accumulate`` episodes (28 = 7 GPUs x 4 in
the reference); dropout active; backbone frozen, eval mode, no grad.

Every random draw is a pure function of ``(seed, step, micro-batch)`` (data: sample index, see
``EpisodeSampler``; dropout: ``torch.manual_seed`` per micro-batch), and a checkpoint holds the
head, the optimizer state and the step, so a run killed after a checkpoint and resumed reaches
the same parameters as an uninterrupted one.

Files in ``out``: ``checkpoint.pt`` (resume state, one atomic file), ``sofs_head.pt`` (the head
+ hparams, what the ``sofs`` method loads), ``train_state.json`` (step, losses, options) and, with
fixed views (``episode.variants > 0``), ``feature_cache/<fingerprint>/`` (one file of backbone
features per view, written before the first step with a progress bar; a killed run keeps the files
it wrote and the next call encodes only the missing views), and with ``snapshot_every > 0``
``snapshots/sofs_head_stepNNNNNN.pt`` (the head of every N-th step, for a learning curve).

Checkpoints are written every ``checkpoint_every`` steps and every ``checkpoint_minutes`` minutes,
and on Ctrl-C (the first one finishes the current step; a second stops at once):
:class:`TrainingInterrupted` then says exactly what was kept.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from harness.features import BackboneError, default_weights
from methods.base import MethodError
from harness.io import LRU, REPO_ROOT, atomic_write, file_sha256
from methods.sofs.checkpoint import atomic_save, hparams_of, load_backbone, save_head, training_record
from methods.sofs.config import CE_FORMS, TrainConfig, snapshot_path
from methods.sofs.data import EpisodeSampler, ViewSpec
from methods.sofs.loss import patch_target, sofs_loss
from methods.sofs.model import HeadConfig, SOFSHead, SOFSModel
from methods.sofs.switches import inert_switches

TRAIN_FORMAT = "sofs-bench/sofs-train/1"
# Options that may change between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = {"checkpoint_every", "checkpoint_minutes", "device", "cache_mb", "snapshot_every"}


@dataclass
class TrainResult:
    head_path: Path
    step: int
    losses: list[float]


def _entry_bytes(entry: tuple[list[torch.Tensor], torch.Tensor]) -> int:
    features, mask = entry
    return sum(f.numel() * f.element_size() for f in features) + mask.numel()


class TrainingInterrupted(Exception):
    """Ctrl-C during training; the message says what was kept (checkpoint, cached features)."""


class FeatureCache:
    """Backbone features (fp16) + masks of fixed views: an LRU in memory bounded in megabytes,
    over an optional folder with one file per view (kept across calls, so a resumed or repeated
    run does not encode them again)."""

    def __init__(self, max_mb: int, folder: Path | None = None):
        self.lru = LRU(max_bytes=max_mb * 2**20, size=_entry_bytes)
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def _file(self, key: tuple) -> Path:
        record, role, seed = key
        return self.folder / f"{record}-{role}-{'-'.join(map(str, seed))}.pt"

    def stored(self, key: tuple) -> bool:
        return key in self.lru or (self.folder is not None and self._file(key).exists())

    def get(self, key: tuple):
        hit = self.lru.get(key)
        if hit is None and self.folder is not None:
            path = self._file(key)
            if path.exists():
                try:
                    entry = torch.load(path, map_location="cpu", weights_only=True)
                    hit = (list(entry["features"]), entry["mask"])
                except Exception:  # noqa: BLE001 - a damaged file is encoded again, not trusted
                    return None
                self.lru.put(key, hit)
        return hit

    def put(self, key: tuple, features: list[torch.Tensor], mask: torch.Tensor) -> None:
        features = [f.detach().cpu() for f in features]
        mask = mask.cpu()
        self.lru.put(key, (features, mask))
        if self.folder is not None and not self._file(key).exists():
            atomic_save({"features": features, "mask": mask}, self._file(key))


def feature_cache_folder(out: Path, config: TrainConfig, sampler: EpisodeSampler, backbone_sha256: str) -> Path:
    """``out/feature_cache/<fingerprint>``: the fingerprint covers everything a view's features
    depend on (backbone file, levels, rendering options, seed, the records in order), so a
    changed option never reads stale features."""
    episode = config.episode
    identity = {
        "backbone": config.backbone, "backbone_sha256": backbone_sha256, "layers": list(config.layers),
        "seed": config.seed, "crop_size": episode.crop_size, "crop_ratio": list(episode.crop_ratio),
        "image_size": episode.image_size, "area_resize_ratio": episode.area_resize_ratio,
        "alpha": episode.alpha, "augment": episode.augment, "non_resizing": episode.non_resizing,
        "records": [[r.image_id, r.class_id, r.mask_value, *_file_identity(r.path), *_file_identity(r.mask_path)]
                    for r in sampler.records],
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return out / "feature_cache" / digest


def _file_identity(path) -> list:
    """Path, size and modification time (a rewritten image gets a new cache folder)."""
    try:
        stat = Path(path).stat()
        return [str(path), stat.st_size, stat.st_mtime_ns]
    except (OSError, TypeError):
        return [str(path), None, None]


def fixed_views(sampler: EpisodeSampler) -> list[ViewSpec]:
    """Every view the episodes can draw with ``variants`` fixed views per (image, role): queries
    and supports both come from the classes with two or more images (``sampler.queries``)."""
    count = sampler.config.variants
    return [ViewSpec(record, role, (variant,)) for record in sampler.queries
            for role in ("query", "support") for variant in range(count)]


def build_training_model(config: TrainConfig) -> tuple[SOFSModel, dict[str, Any]]:
    if config.ce_form not in CE_FORMS:
        raise MethodError(f"ce_form must be one of {', '.join(CE_FORMS)}, not {config.ce_form!r}")
    backbone_path = _backbone_path(config)
    features = load_backbone(config.backbone, backbone_path, config.layers)
    if config.episode.image_size % features.pad_multiple:
        raise MethodError(f"image size {config.episode.image_size} is not a multiple of backbone "
                          f"'{config.backbone}' stride {features.pad_multiple}")
    torch.manual_seed(config.seed)  # PyTorch default init of the head, seeded
    equal = len(set(features.dims)) == 1
    head = SOFSHead(HeadConfig(
        backbone_dim=features.dims[0] if equal else 0, num_layers=len(features.dims),
        level_dims=() if equal else tuple(features.dims), reduce_dim=config.reduce_dim,
        transformer_dim=config.reduce_dim, abnormal_prior=config.abnormal_prior,
    ))
    model = SOFSModel(features, head, config.intensity_downsampling).to(torch.device(config.device))
    hparams = hparams_of(
        head, config.backbone, features.layers, config.episode.image_size,
        intensity_downsampling=config.intensity_downsampling,
        non_resizing=config.episode.non_resizing,
        mixed_normal_dice=config.mixed_normal_dice,
        backbone_sha256=file_sha256(backbone_path),
        train_options=json.dumps(config.as_json()),
    )
    return model, hparams


def _backbone_path(config: TrainConfig) -> Path:
    if not config.backbone_weights:
        try:
            return default_weights(config.backbone)
        except BackboneError as exc:
            raise MethodError(str(exc)) from None
    path = Path(config.backbone_weights).expanduser()
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path  # a repo-relative file, from any working dir
    if not path.exists():
        raise MethodError(f"{path}: backbone weights file not found")
    return path


def make_optimizer(model: SOFSModel, config: TrainConfig) -> torch.optim.AdamW:
    """Group 0: ``query_semantic_transformer`` at lr; group 1: the rest at lr * lr_multiple."""
    transformer, rest = [], []
    for name, param in model.head.named_parameters():
        (transformer if name.startswith("query_semantic_transformer.") else rest).append(param)
    return torch.optim.AdamW(
        [{"params": transformer, "lr": config.lr}, {"params": rest, "lr": config.lr * config.lr_multiple}],
        lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay,
    )


def poly_factor(step: int, config: TrainConfig) -> float:
    """LR factor before optimizer step ``step`` (0-based); iteration ``it = step + 1``."""
    return max(0.0, 1.0 - (step + 1) / config.steps) ** config.poly_power


def _views_features(
    model: SOFSModel, sampler: EpisodeSampler, views: Sequence[ViewSpec],
    cache: FeatureCache | None, device: torch.device, chunk: int,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Backbone features L x ``[V, C, h, w]`` and masks ``[V, 1, S, S]`` of views (each distinct
    view rendered and encoded once; fixed views go through the cache)."""
    fixed = sampler.config.variants > 0
    distinct = list(OrderedDict.fromkeys(v.key for v in views))
    by_key = {v.key: v for v in views}
    found: dict[tuple, tuple[list[torch.Tensor], torch.Tensor]] = {}
    missing = []
    for key in distinct:
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            found[key] = hit
        else:
            missing.append(key)
    for start in range(0, len(missing), chunk):
        keys = missing[start : start + chunk]
        rendered = [sampler.render(by_key[k]) for k in keys]
        encoded = model.encode(torch.stack([r[0] for r in rendered]).to(device))
        for i, key in enumerate(keys):
            # fixed views are stored in fp16 and always rounded, so cache hits change nothing
            feats = [f[i : i + 1].half().float() if fixed else f[i : i + 1] for f in encoded]
            mask = rendered[i][1][None].bool()
            found[key] = (feats, mask)
            if cache is not None and fixed:
                cache.put(key, [f.half() for f in feats], mask)
    features = [torch.cat([found[v.key][0][layer].float().to(device) for v in views])
                for layer in range(len(model.backbone.layers))]
    masks = torch.cat([found[v.key][1] for v in views]).float().to(device)
    return features, masks


def micro_batch_loss(
    model: SOFSModel, sampler: EpisodeSampler, indices: Sequence[int], config: TrainConfig,
    cache: FeatureCache | None = None,
) -> torch.Tensor:
    """Loss of B episodes: features of the query and n support views, head, mixed Dice + CE."""
    device = next(model.head.parameters()).device
    plans = [sampler.plan(i) for i in indices]
    n = len(plans[0][1])
    views = [q for q, _ in plans] + [v for _, supports in plans for v in supports]
    features, masks = _views_features(model, sampler, views, cache, device, chunk=8)
    batch = len(plans)
    query_features = [f[:batch] for f in features]
    support_features = [f[batch:] for f in features]
    support_masks = masks[batch:].view(batch, n, *masks.shape[1:])
    context = model.support_context(support_features, support_masks)
    output = model.query(query_features, context)
    target = patch_target(masks[:batch], model.patch, config.target_threshold, config.intensity_downsampling)
    logits = output.logits if config.ce_form == "logits" else None
    return sofs_loss(torch.sigmoid(output.logits), target, config.smooth_r, config.dice_weight,
                     config.ce_weight, logits=logits, mixed_normal=config.mixed_normal_dice)


def queries_per_epoch(dataset, config: TrainConfig) -> int:
    """Episodes in one epoch (every query of the selected classes once), for lengths in epochs."""
    return len(EpisodeSampler(dataset, config.fold, config.episode, config.seed, holdout=config.holdout_objects))


def train_step(model: SOFSModel, optimizer, sampler: EpisodeSampler, config: TrainConfig, step: int,
               cache: FeatureCache | None = None) -> float:
    """Optimizer step ``step`` (0-based): poly LR, ``accumulate`` micro-batches of ``batch_size``
    episodes, AdamW; returns the mean loss."""
    for group, scale in zip(optimizer.param_groups, (1.0, config.lr_multiple)):
        group["lr"] = config.lr * scale * poly_factor(step, config)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for micro in range(config.accumulate):
        torch.manual_seed(config.seed * 1_000_003 + step * 1_009 + micro)  # dropout
        first = (step * config.accumulate + micro) * config.batch_size
        loss = micro_batch_loss(model, sampler, range(first, first + config.batch_size), config, cache)
        (loss / config.accumulate).backward()
        total += loss.item() / config.accumulate
    optimizer.step()
    return total


def _with_defaults(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the options it predates filled in with their defaults (recursively),
    so a checkpoint written before an option existed still resumes."""
    out = dict(defaults)
    for key, value in saved.items():
        nested = isinstance(value, dict) and isinstance(defaults.get(key), dict)
        out[key] = _with_defaults(value, defaults[key]) if nested else value
    return out


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    saved = _with_defaults(saved, TrainConfig().as_json())
    current = config.as_json()
    changed = [k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]]
    if changed:
        key = changed[0]
        raise MethodError(
            f"{path}: holds a run with {key}={saved.get(key)!r}, not {current[key]!r}; "
            f"use --no-resume or another --out"
        )


class _StopRequests:
    """SIGINT while training: the first request finishes the current step (then a checkpoint is
    written), a second raises KeyboardInterrupt at once. Only in the main thread."""

    def __init__(self, log):
        self.requested = False
        self.log = log
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.log is not None:
            self.log("Ctrl-C: finishing the current step (or chunk of views being cached), then keeping what "
                     "is done (Ctrl-C again: stop now)")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def cache_features(model: SOFSModel, sampler: EpisodeSampler, cache: FeatureCache, device: torch.device,
                   views: Sequence[ViewSpec], progress: bool, stop: _StopRequests | None = None,
                   chunk: int = 8, log=None) -> int:
    """Encode the views that ``cache`` lacks, ``chunk`` at a time (progress bar with ETA); returns
    how many are stored. Stops early (between chunks) when ``stop.requested``."""
    missing = [v for v in views if not cache.stored(v.key)]
    if not missing:
        return len(views)
    if log is not None:
        log(f"caching backbone features of {len(missing)} views ({len(views) - len(missing)} of "
            f"{len(views)} already cached) in {cache.folder}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(views), initial=len(views) - len(missing), desc="cache features", unit="view")
    done = len(views) - len(missing)
    try:
        for start in range(0, len(missing), chunk):
            if stop is not None and stop.requested:
                break
            part = missing[start : start + chunk]
            _views_features(model, sampler, part, cache, device, chunk)
            done += len(part)
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    return done


def train(
    dataset, config: TrainConfig, out: Path, resume: bool = True, stop_after: int | None = None,
    progress: bool = True, read_image=None, read_mask=None, log=None,
) -> TrainResult:
    """Train (or resume) and write checkpoints to ``out``; ``stop_after``: at most this many
    optimizer steps in this call (a time-boxed run; resume continues it); ``log``: a callable that
    receives one-line notes (which classes are trained, which are never queried). Ctrl-C raises
    :class:`TrainingInterrupted`, whose message says what was kept."""
    out = Path(out)
    sampler = EpisodeSampler(dataset, config.fold, config.episode, config.seed, read_image, read_mask,
                             holdout=config.holdout_objects)
    if log is not None:
        log(f"training on {sampler.selection.scope}: {len(sampler.by_class)} classes, "
            f"{len(sampler.records)} defective images, {len(sampler)} queries per epoch")
        for note in sampler.notes:
            log(note)
    out.mkdir(parents=True, exist_ok=True)
    model, hparams = build_training_model(config)
    hparams["train_classes"] = sorted(sampler.by_class)
    hparams["held_out"] = list(sampler.selection.held_out)
    hparams.update(training_record(dataset, sampler.records, read_image, read_mask))  # harness.class_split
    hparams["inert_switches"] = inert_switches(sampler, config, model.patch)
    for note in hparams["inert_switches"].values() if log is not None else ():
        log(f"note: {note}")
    optimizer = make_optimizer(model, config)
    step, losses = 0, []
    checkpoint_path = out / "checkpoint.pt"
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if state.get("format") != TRAIN_FORMAT:
            raise MethodError(f"{checkpoint_path}: not a sofs-bench SOFS training checkpoint")
        _check_resumable(json.loads(state["config"]), config, checkpoint_path)
        model.head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        step, losses = int(state["step"]), json.loads(state["losses"])
    device = next(model.head.parameters()).device
    cache, views = None, []
    if config.episode.variants > 0:
        folder = feature_cache_folder(out, config, sampler, hparams.get("backbone_sha256", ""))
        cache = FeatureCache(config.cache_mb, folder)
        views = fixed_views(sampler)
    saved = {"step": step if checkpoint_path.exists() and resume else None}

    def kept() -> str:
        parts = []
        if saved["step"] is not None:
            parts.append(f"checkpoint at step {saved['step']}/{config.steps} ({checkpoint_path}; "
                         f"head {out / 'sofs_head.pt'})")
        if cache is not None:
            stored = sum(cache.stored(v.key) for v in views)
            parts.append(f"cached features of {stored} of {len(views)} views ({cache.folder})")
        if not parts:
            return "interrupted: nothing kept (no checkpoint written yet)"
        return "interrupted: kept " + " and ".join(parts) + "; run the same command to resume"

    try:
        with _StopRequests(log) as stop:
            if cache is not None and step < config.steps:
                cache_features(model, sampler, cache, device, views, progress, stop, log=log)
                if stop.requested:
                    raise TrainingInterrupted(kept())
            model.train()
            bar = _progress(progress, config.steps, step)
            done_here, finished = 0, False
            last_save = time.monotonic()
            while step < config.steps and (stop_after is None or done_here < stop_after):
                total = train_step(model, optimizer, sampler, config, step, cache)
                step += 1
                done_here += 1
                losses.append(total)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total:.4f}")
                finished = step == config.steps or (stop_after is not None and done_here >= stop_after)
                due = config.checkpoint_minutes > 0 and time.monotonic() - last_save >= 60 * config.checkpoint_minutes
                if config.snapshot_every > 0 and step % config.snapshot_every == 0:
                    save_head(snapshot_path(out, step), model.head, {**hparams, "train_step": step})
                if step % config.checkpoint_every == 0 or finished or due or stop.requested:
                    _save(out, model, optimizer, step, losses, config, hparams)
                    saved["step"], last_save = step, time.monotonic()
                if stop.requested:
                    break
            if bar is not None:
                bar.close()
            if stop.requested and not finished:
                raise TrainingInterrupted(kept())
    except KeyboardInterrupt:
        raise TrainingInterrupted(kept()) from None
    return TrainResult(out / "sofs_head.pt", step, losses)


def _save(out: Path, model: SOFSModel, optimizer, step: int, losses: list[float],
          config: TrainConfig, hparams: dict[str, Any]) -> None:
    head_state = {k: v.detach().cpu().clone() for k, v in model.head.state_dict().items()}
    atomic_save({
        "format": TRAIN_FORMAT, "step": step, "head": head_state,
        "optimizer": optimizer.state_dict(), "config": json.dumps(config.as_json()),
        "losses": json.dumps(losses),
    }, out / "checkpoint.pt")
    save_head(out / "sofs_head.pt", model.head, {**hparams, "train_step": step})
    summary = {"step": step, "steps": config.steps, "last_loss": losses[-1] if losses else None,
               "losses": losses, "config": config.as_json(), "train_classes": hparams.get("train_classes", []),
               "held_out": hparams.get("held_out", []), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    text = json.dumps(summary, indent=1)
    atomic_write(out / "train_state.json", lambda tmp: tmp.write_text(text))


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train sofs", unit="step")
