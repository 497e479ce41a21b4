"""SOFS image pipeline (spec §1.2, §2.1) and training episode sampling (spec §3).

Shared by inference and training: defect-anchored native-resolution crops, resize-longest-518 +
ImageNet normalisation + bottom/right zero padding. Training only: query crops anchored on a
non-defect pixel with probability alpha, augmentations, and a deterministic episode sampler whose
randomness is a pure function of ``(seed, sample index)``, so a resumed run replays exactly.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from harness.features import IMAGENET_MEAN, images_to_tensor
from harness.tiling import Tile, pad_bottom_right, pil_resize_image, pil_resize_mask, resized_shape
from methods.base import MethodError
from methods.sofs.config import EpisodeConfig

MASK_BINARY_THRESHOLD = 0.1  # resized masks are divided by their max, then > 0.1 (spec §1.2)
ROTATION_FILL = [round(255 * m) for m in IMAGENET_MEAN]  # rotated corners normalise to ~0


# ------------------------------------------------------------------------------------------
# Crops and model inputs (train and test)


def area_fraction(mask: np.ndarray) -> float:
    """Defect-area ratio r = #defect pixels / (H * W) at native resolution."""
    return float(np.count_nonzero(mask)) / mask.size


def random_pixel(rng: np.random.Generator, mask: np.ndarray, defect: bool) -> tuple[int, int] | None:
    """A uniformly random pixel with ``mask == defect`` (``None`` if there is none)."""
    flat = mask.reshape(-1)
    for _ in range(32):  # rejection sampling is fast when the wanted pixels are common
        index = int(rng.integers(flat.size))
        if bool(flat[index]) == defect:
            return divmod(index, mask.shape[1])
    candidates = np.flatnonzero(flat == defect)
    if candidates.size == 0:
        return None
    return divmod(int(candidates[rng.integers(candidates.size)]), mask.shape[1])


def crop_window(rng: np.random.Generator, anchor: tuple[int, int], height: int, width: int, crop: int) -> Tile:
    """A ``min(crop, H) x min(crop, W)`` window containing ``anchor`` at a uniformly random offset.

    The reference draws the offset in [0, crop] and can leave the anchor one pixel outside the
    window (spec §2.1, off-by-one); here the anchor is always inside.
    """
    tile_h, tile_w = min(crop, height), min(crop, width)
    top = int(np.clip(anchor[0] - rng.integers(tile_h), 0, height - tile_h))
    left = int(np.clip(anchor[1] - rng.integers(tile_w), 0, width - tile_w))
    return Tile(top, left, tile_h, tile_w)


def support_views(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    s_in_shot: int,
    crop_size: int,
    area_resize_ratio: float,
    non_resizing: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The S native-resolution views of one support image (spec §2.1, test mode).

    Large defect (r > ratio) or resizing policy: the whole image, the same object S times.
    Small defect: S crops, each around a random defect pixel. Defect-free support (FAD mode, not
    handled by the reference): S crops around uniformly random pixels.
    """
    if not non_resizing or area_fraction(mask) > area_resize_ratio:
        return [(image, mask)] * s_in_shot
    views = []
    for _ in range(s_in_shot):
        anchor = random_pixel(rng, mask, defect=True) if mask.any() else (
            int(rng.integers(mask.shape[0])), int(rng.integers(mask.shape[1])))
        tile = crop_window(rng, anchor, *mask.shape, crop_size)
        views.append((tile.crop(image), tile.crop(mask)))
    return views


def resize_longest(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize so the longest side is ``size``, as the reference (spec §1.2): the image with PIL's
    bilinear filter on uint8; the mask as a 0/255 uint8 image with the same filter, divided by its
    max (float32) and binarised ``> 0.1`` (an all-zero mask stays all zero)."""
    shape = resized_shape(*image.shape[:2], size)
    image = pil_resize_image(image, shape)
    if mask is not None and mask.shape != shape:
        grey = pil_resize_mask(mask, shape)
        peak = grey.max()
        if peak == 0:
            mask = np.zeros(shape, bool)
        else:
            mask = grey.astype(np.float32) / np.float32(peak) > np.float32(MASK_BINARY_THRESHOLD)
    return image, mask


def model_input(
    image: np.ndarray, mask: np.ndarray | None, size: int = 518
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """uint8 ``[h, w, 3]`` (+ bool mask) -> normalised image ``[3, S, S]``, mask ``[1, S, S]``,
    and the unpadded ``(h', w')``; padding is 0 in normalised space (the mean colour)."""
    image, mask = resize_longest(image, mask, size)
    shape = image.shape[:2]
    tensor = torch.from_numpy(pad_bottom_right(images_to_tensor([image])[0].permute(1, 2, 0).numpy(), size))
    mask = np.zeros(shape, bool) if mask is None else mask
    mask_tensor = torch.from_numpy(pad_bottom_right(mask.astype(np.float32), size))
    return tensor.permute(2, 0, 1).contiguous(), mask_tensor[None], shape


def episode_seed(support_images: Sequence[np.ndarray], support_masks: Sequence[np.ndarray], seed: int) -> int:
    """A seed that is a pure function of the supports (so a re-run crops identically)."""
    digest = hashlib.blake2b(str(seed).encode(), digest_size=8)
    for image, mask in zip(support_images, support_masks):
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        digest.update(np.packbits(np.asarray(mask, bool)).tobytes())
    return int.from_bytes(digest.digest(), "little")


# ------------------------------------------------------------------------------------------
# Training augmentations (spec §3)


def augment(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ColorJitter(0.4, 0.4, 0.4, 0.1) p0.3 -> rotation U(-10, 10) p0.5 -> Gaussian blur 5x5
    (sigma 1.1, as cv2 derives it) p0.3 -> horizontal flip p0.5. A rotation that would push every
    defect pixel out of the view is skipped (the reference then trains on an empty support)."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    msk = torch.from_numpy(np.ascontiguousarray(mask))[None]
    if rng.random() < 0.3:
        factors = {"b": rng.uniform(0.6, 1.4), "c": rng.uniform(0.6, 1.4),
                   "s": rng.uniform(0.6, 1.4), "h": rng.uniform(-0.1, 0.1)}
        for op in rng.permutation(["b", "c", "s", "h"]):
            adjust = {"b": TF.adjust_brightness, "c": TF.adjust_contrast,
                      "s": TF.adjust_saturation, "h": TF.adjust_hue}[op]
            img = adjust(img, float(factors[op]))
    if rng.random() < 0.5:
        angle = float(rng.uniform(-10, 10))
        rotated_mask = TF.rotate(msk.to(torch.uint8), angle, InterpolationMode.NEAREST, fill=[0]).bool()
        if rotated_mask.any() or not msk.any():
            img = TF.rotate(img, angle, InterpolationMode.BILINEAR, fill=ROTATION_FILL)
            msk = rotated_mask
    if rng.random() < 0.3:
        img = TF.gaussian_blur(img, [5, 5], [1.1, 1.1])
    if rng.random() < 0.5:
        img, msk = img.flip(-1), msk.flip(-1)
    return img.permute(1, 2, 0).contiguous().numpy(), msk[0].numpy()


# ------------------------------------------------------------------------------------------
# Training episodes


@dataclass(frozen=True)
class ViewSpec:
    """One network input of an episode: a (possibly augmented) crop or resized image.

    ``key`` identifies identical views (same record, role and RNG seed) for feature caching.
    """

    record: int
    role: str  # "query" or "support"
    seed: tuple[int, ...]

    @property
    def key(self) -> tuple:
        return (self.record, self.role, self.seed)


@dataclass
class EpisodeBatch:
    query_images: torch.Tensor  # [B, 3, S, S]
    query_masks: torch.Tensor  # [B, 1, S, S]
    support_images: torch.Tensor  # [B, n, 3, S, S]
    support_masks: torch.Tensor  # [B, n, 1, S, S]


ImageReader = Callable[[object], np.ndarray]


ALL_FOLDS = "all"


@dataclass(frozen=True)
class TrainingSelection:
    """The defective records a training run draws its episodes from, and how they were chosen."""

    records: tuple
    scope: str  # e.g. "fold 'base'", "every class (the dataset defines no folds)"
    held_out: tuple[str, ...]  # objects or class ids kept unseen by --holdout-objects


def select_training_records(dataset, fold: str, holdout: str = "", seed: int = 0) -> TrainingSelection:
    """Defective records of ``fold``: a fold of the dataset (its objects), ``all`` (every class),
    records whose ``split`` is ``fold``, or, on a dataset without folds and the default ``base``,
    every class. ``holdout``: comma-separated objects or ``object/category`` class ids to leave out,
    or a fraction in (0, 1) of the objects (of the classes when there is a single object), drawn
    with ``seed``."""
    folds = getattr(dataset, "folds", {}) or {}
    defective = [r for r in dataset.records if not r.is_normal]
    name = getattr(dataset, "name", "dataset")
    if fold in folds:
        objects = set(folds[fold])
        records, scope = [r for r in defective if r.object in objects], f"fold '{fold}'"
    elif fold == ALL_FOLDS:
        records, scope = defective, "every class"
    elif any(r.split == fold for r in defective):
        records, scope = [r for r in defective if r.split == fold], f"split '{fold}'"
    elif not folds and fold == "base":
        records, scope = defective, "every class (the dataset defines no folds)"
    else:
        known = ", ".join(sorted(folds)) or "none"
        raise MethodError(f"{name}: no fold '{fold}' (folds: {known}); use --fold all to train on every class")
    held = _holdout_names(records, holdout, seed, name)
    if held:
        records = [r for r in records if r.object not in held and r.class_id not in held]
        scope += f" minus held-out {', '.join(held)}"
    return TrainingSelection(tuple(records), scope, held)


def _holdout_names(records, holdout: str, seed: int, name: str) -> tuple[str, ...]:
    from harness.features import did_you_mean

    items = [x.strip() for x in holdout.split(",") if x.strip()]
    if not items:
        return ()
    objects = sorted({r.object for r in records})
    classes = sorted({r.class_id for r in records})
    try:
        fraction = float(items[0]) if len(items) == 1 else None
    except ValueError:
        fraction = None
    if fraction is not None:
        units = objects if len(objects) > 1 else classes
        if not 0 < fraction < 1:
            raise MethodError(f"--holdout-objects {items[0]}: a fraction must be in (0, 1)")
        count = max(1, round(fraction * len(units)))
        if count >= len(units):
            raise MethodError(f"--holdout-objects {items[0]} would hold out all {len(units)} "
                              f"{'objects' if units is objects else 'classes'} of {name}")
        chosen = np.random.default_rng([seed, 11]).choice(len(units), size=count, replace=False)
        return tuple(sorted(units[int(i)] for i in chosen))
    for item in items:
        if item not in objects and item not in classes:
            raise MethodError(f"--holdout-objects: '{item}' is neither an object nor a class of the "
                              f"training records of {name}{did_you_mean(item, objects + classes)}")
    return tuple(items)


class EpisodeSampler:
    """Episodes over the defective records of one fold (spec §3 "Episode sampling").

    Records: :func:`select_training_records`. With ``non_resizing`` off every view is the whole
    image resized (a support repeated S times, as the ``sofs-no-nonresize`` inference feeds it).
    One epoch = every (class, image) record once as query, in a permutation seeded by
    ``(seed, epoch)``; supports are K other images of the same class (without replacement when
    enough exist, else with replacement); classes with a single image are never queried (the
    reference loops forever on them). Sample ``i``'s randomness is ``default_rng([seed, i])``.
    """

    def __init__(self, dataset, fold: str, config: EpisodeConfig, seed: int,
                 read_image: ImageReader | None = None, read_mask: ImageReader | None = None,
                 holdout: str = ""):
        if read_image is None or read_mask is None:
            from datasets import base as dataset_base  # written in parallel; imported lazily

            read_image = read_image or dataset_base.read_image
            read_mask = read_mask or dataset_base.read_mask
        self.selection = select_training_records(dataset, fold, holdout, seed)
        self.records = list(self.selection.records)
        by_class: dict[str, list[int]] = defaultdict(list)
        for index, record in enumerate(self.records):
            by_class[record.class_id].append(index)
        self.by_class = dict(by_class)
        self.queries = [i for i, r in enumerate(self.records) if len(self.by_class[r.class_id]) > 1]
        small = sorted(c for c, members in self.by_class.items() if len(members) < 2)
        self.notes = []
        if small:
            self.notes.append(f"{len(small)} class(es) with a single defective image are never queried "
                              f"(a query needs another image of its class as support): {', '.join(small)}")
        if not self.queries:
            where = f"{getattr(dataset, 'name', 'dataset')}, {self.selection.scope}"
            if not self.records:
                raise MethodError(f"{where}: no defective image to train on")
            raise MethodError(f"{where}: no class has two or more defective images "
                              f"(a query needs another image of its class as support); classes: "
                              f"{', '.join(f'{c} {len(m)}' for c, m in sorted(self.by_class.items()))}")
        self.config = config
        self.seed = seed
        self._read_image, self._read_mask = read_image, read_mask
        self._load = lru_cache(maxsize=32)(self._load_uncached)

    def __len__(self) -> int:
        return len(self.queries)

    def _load_uncached(self, record: int) -> tuple[np.ndarray, np.ndarray]:
        rec = self.records[record]
        # copies: readers may return read-only arrays, which torch.from_numpy warns about
        return np.array(self._read_image(rec), np.uint8), np.array(self._read_mask(rec), bool)

    def plan(self, index: int) -> tuple[ViewSpec, list[ViewSpec]]:
        """Query view + n = K * S support views of sample ``index`` (no image is read)."""
        epoch, position = divmod(index, len(self.queries))
        query = self.queries[np.random.default_rng([self.seed, epoch, 7]).permutation(len(self.queries))[position]]
        rng = np.random.default_rng([self.seed, index])
        others = [i for i in self.by_class[self.records[query].class_id] if i != query]
        k, s = self.config.shot, self.config.s_in_shot
        chosen = rng.choice(others, size=k, replace=len(others) < k)
        views = self.config.variants
        query_seed = (int(rng.integers(views)),) if views else (index, 0)
        supports = []
        for slot, record in enumerate(int(c) for c in chosen):
            if views:
                seeds = [(int(v),) for v in rng.choice(views, size=s, replace=views < s)]
            else:
                seeds = [(index, 1 + slot * s + j) for j in range(s)]
            if self._is_large(record):
                seeds = [seeds[0]] * s  # one resized view, repeated S times
            supports += [ViewSpec(record, "support", seed) for seed in seeds]
        return ViewSpec(query, "query", query_seed), supports

    def _is_large(self, record: int) -> bool:
        """Resized whole (large defect, or the non-resizing procedure switched off) vs cropped."""
        if not self.config.non_resizing:
            return True
        return area_fraction(self._load(record)[1]) > self.config.area_resize_ratio

    def render(self, view: ViewSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """A view -> (image ``[3, S, S]``, mask ``[1, S, S]``)."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, view.record, int(view.role == "query"), *view.seed])
        image, mask = self._load(view.record)
        if not self._is_large(view.record):
            defect = view.role == "support" or rng.random() >= cfg.alpha
            anchor = random_pixel(rng, mask, defect) or random_pixel(rng, mask, not defect)
            crop = int(cfg.crop_size * rng.uniform(*cfg.crop_ratio))
            tile = crop_window(rng, anchor, *mask.shape, crop)
            image, mask = tile.crop(image), tile.crop(mask)
        if cfg.augment:
            image, mask = augment(rng, image, mask)
        tensor, mask_tensor, _ = model_input(image, mask, cfg.image_size)
        return tensor, mask_tensor

    def batch(self, indices: Sequence[int]) -> EpisodeBatch:
        """Render samples (no feature cache) -> :class:`EpisodeBatch`."""
        queries, supports = [], []
        for index in indices:
            query, support = self.plan(index)
            queries.append(self.render(query))
            supports.append([self.render(v) for v in support])
        return EpisodeBatch(
            torch.stack([q[0] for q in queries]),
            torch.stack([q[1] for q in queries]),
            torch.stack([torch.stack([v[0] for v in s]) for s in supports]),
            torch.stack([torch.stack([v[1] for v in s]) for s in supports]),
        )
