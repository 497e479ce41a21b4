"""One backbone pass per unique view: the process-wide feature cache, shared extractors and the
count of backbone work.

Every method in a process that names the same frozen
backbone (arch, weights file, levels, input size, device) uses ONE extractor instance
(:func:`shared_extractor`), and features live in ONE process-wide :class:`FeatureCache` keyed by
(arch, weights, levels, resolution policy, tile geometry, precision, device, image content hash).
The cache is bounded by bytes (the largest ``feature_cache_mb`` of the backbones using it) and by
entries (:data:`CACHE_MAX_ENTRIES`), least recently used first out. An image whose features alone
exceed the budget is kept in a one-entry *overflow* slot (the newest such image replaces the
previous one), so the consecutive episodes the runner schedules on one query still share its
features while memory stays bounded by budget + one image.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from harness.features import make_features
from harness.io import LRU

CACHE_MAX_ENTRIES = 4096  # feature-cache entries (images), whatever their size


def image_key(image: np.ndarray) -> str:
    """Content hash of an image array (bytes + shape)."""
    image = np.ascontiguousarray(image)
    return hashlib.blake2b(image.tobytes(), digest_size=16, key=repr(image.shape).encode()).hexdigest()


class FeatureCache:
    """Process-wide LRU of extracted features, bounded by bytes and entries (see module doc).

    ``get``/``put`` take any hashable key; values need ``nbytes()``. Thread-safe."""

    def __init__(self, budget_bytes: int = 512 * 2**20, max_entries: int = CACHE_MAX_ENTRIES):
        self.lru = LRU(max_entries=max_entries, max_bytes=budget_bytes, size=lambda value: value.nbytes())
        self.overflow: tuple | None = None  # (key, value) of the latest entry larger than the budget
        self.evictions = 0
        self.lock = threading.Lock()

    @property
    def budget_bytes(self) -> int:
        return self.lru.max_bytes

    @budget_bytes.setter
    def budget_bytes(self, value: int) -> None:
        self.lru.max_bytes = value

    @property
    def max_entries(self) -> int:
        return self.lru.max_entries

    @property
    def items(self):
        return self.lru.items

    @property
    def bytes(self) -> int:
        return self.lru.bytes

    def get(self, key):
        with self.lock:
            if key in self.lru:
                return self.lru.get(key)
            if self.overflow is not None and self.overflow[0] == key:
                return self.overflow[1]
            return None

    def put(self, key, value) -> None:
        size = value.nbytes()
        with self.lock:
            if key in self.lru:
                return
            if size > self.budget_bytes:
                self.overflow = (key, value)
                return
            self.evictions += len(self.lru.put(key, value))

    def ensure_budget(self, budget_bytes: int) -> None:
        """Grow the byte budget to at least ``budget_bytes`` (the largest any user asked for)."""
        with self.lock:
            self.lru.max_bytes = max(self.lru.max_bytes, budget_bytes)

    def clear(self) -> None:
        with self.lock:
            self.lru.items.clear()
            self.lru.bytes = 0
            self.overflow = None
            self.evictions = 0


FEATURE_CACHE = FeatureCache(budget_bytes=0)  # grows to the largest feature_cache_mb in use
_EXTRACTORS: dict[tuple, object] = {}
_EXTRACTORS_LOCK = threading.Lock()


def weights_identity(weights: Path | None) -> tuple:
    """(resolved path, size, mtime): the same file names the same weights within one process."""
    if weights is None:
        return ("default",)
    path = Path(weights).resolve()
    try:
        stat = path.stat()
        return (str(path), stat.st_size, stat.st_mtime_ns)
    except OSError:
        return (str(path),)


def shared_extractor(arch: str, weights: Path | None, layers: Sequence[int], img_size: int, device: torch.device):
    """The one frozen extractor of this process for (arch, weights, levels, input size, device)."""
    key = (arch, weights_identity(weights), tuple(layers), int(img_size), str(device))
    with _EXTRACTORS_LOCK:
        if key not in _EXTRACTORS:
            _EXTRACTORS[key] = make_features(arch, weights, layers, img_size=img_size).to(device)
        return _EXTRACTORS[key]


def reset_shared() -> None:
    """Drop the shared extractors and cached features (tests, benchmarks)."""
    with _EXTRACTORS_LOCK:
        _EXTRACTORS.clear()
    FEATURE_CACHE.clear()
    FEATURE_CACHE.budget_bytes = 0


class ViewStats:
    """Backbone work of one method: tiles forwarded (``passes``) and distinct views requested.

    A view is one backbone input (a tile, or a resized image); views are identified by their
    cache key plus tile index, so sets from several methods/workers can be united."""

    def __init__(self):
        self.passes = 0
        self.views: set[str] = set()

    def record(self, key: str, tiles: int, forwarded: bool) -> None:
        self.views.update(f"{key}/{i}" for i in range(tiles))
        if forwarded:
            self.passes += tiles

    def as_dict(self, keys: bool = True) -> dict:
        out = {"backbone_passes": self.passes, "unique_views": len(self.views)}
        if keys:
            out["view_keys"] = sorted(self.views)
        return out
