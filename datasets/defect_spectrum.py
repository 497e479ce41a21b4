"""Defect Spectrum: ``<object>/image/...`` + ``<object>/mask/..._mask.png`` (sofs-spec §4.2).

Masks are multi-valued: pixel value v > 0 is defect class v - 1 of the object, and one image can
hold several classes. Each value present in an image gives one record with ``mask_value = v`` and
category ``cat<v-1>`` (or a name from ``name_map[object][v]``). Paths containing "good" are
skipped, as in SOFS, so DS has no normal images. The colourized ``rbg_mask``/``rgb_mask`` folders
(spelling varies per object) are never read.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness.records import ImageRecord

from .base import (IMAGE_SUFFIXES, Dataset, DatasetError, SkipLog, find_mask, image_size,
                   load_mask_values, object_dirs)

# sofs-spec §4.2: test objects of the three DS folds; a fold's train set is the other two.
TEST_FOLDS = {
    "split_0": ("Screw_VISION", "Ring_VISION", "Capacitor_VISION", "toothbrush", "grid", "cable",
                "metal_nut", "tile"),
    "split_1": ("Wood_VISION", "Console_VISION", "pill", "leather", "carpet", "hazelnut",
                "transistor"),
    "split_2": ("Groove_VISION", "DS-DAGM", "capsule", "screw", "wood", "zipper",
                "DS-Cotton-Fabric", "bottle"),
}


def _is_object(folder: Path) -> bool:
    return (folder / "image").is_dir() and (folder / "mask").is_dir()


def _object_dirs(root: Path) -> list[Path]:
    return object_dirs(root, _is_object)


def detect(root: Path) -> bool:
    return bool(_object_dirs(Path(root)))


def category_name(obj: str, value: int, name_map: dict | None) -> str:
    names = (name_map or {}).get(obj, {})
    return str(names.get(value, f"cat{value - 1}"))


def _images(image_root: Path) -> list[Path]:
    # not is_dir(): a FIFO named *.png is kept here, so image_size refuses it and the log lists it
    return sorted(p for p in image_root.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()
                  and "good" not in p.relative_to(image_root).as_posix())


def _object_records(obj_dir: Path, name_map: dict | None, log: SkipLog) -> list[ImageRecord]:
    records = []
    obj = obj_dir.name
    for image in _images(obj_dir / "image"):
        rel = image.relative_to(obj_dir / "image")
        mask = find_mask(obj_dir / "mask" / rel.parent, image.stem, ("_mask", ""))
        if mask is None:
            log.skip("missing_masks", image, "no mask/<...>/<stem>_mask.png for this image")
            continue
        try:
            width, height = image_size(image)
            values = [int(v) for v in np.unique(load_mask_values(mask)) if v > 0]
        except DatasetError as exc:
            log.skip("unreadable_files", image, str(exc))
            continue
        if not values:
            log.skip("empty_masks", mask, "mask has no non-zero value")
        for value in values:
            category = category_name(obj, value, name_map)
            records.append(ImageRecord(
                image_id=f"{obj}/{category}/{rel.with_suffix('').as_posix()}", path=str(image),
                mask_path=str(mask), category=category, object=obj, split="", width=width,
                height=height, mask_value=value))
    return records


def _folds(objects: list[str]) -> dict[str, tuple[str, ...]]:
    present = set(objects)
    folds = {}
    for fold, test in TEST_FOLDS.items():
        train = [o for other, objs in TEST_FOLDS.items() if other != fold for o in objs]
        folds[f"{fold}:train"] = tuple(o for o in train if o in present)
        folds[f"{fold}:test"] = tuple(o for o in test if o in present)
    return folds if any(folds.values()) else {}


def load(root: Path, name_map: dict[str, dict[int, str]] | None = None) -> Dataset:
    root = Path(os.path.abspath(root))
    objects = _object_dirs(root)
    if not objects:
        raise DatasetError(f"{root}: no <object>/image + <object>/mask folders found")
    log = SkipLog()
    records: list[ImageRecord] = []
    for obj_dir in objects:
        records.extend(_object_records(obj_dir, name_map, log))
    return Dataset(name=root.name, root=root, format="defect_spectrum", records=tuple(records),
                   folds=_folds([o.name for o in objects]), meta=log.meta())
