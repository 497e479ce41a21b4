"""Generic folder layout: ``<root>/<object?>/<category>/{images,masks}``.

Two shapes are accepted:

* ``<root>/<category>/images/<id>.<ext>`` + ``<root>/<category>/masks/<id>.png`` — one object,
  named after the root folder (``real-data/magnetic_tile``);
* ``<root>/<object>/<category>/{images,masks}`` — several objects (the synthetic default).

``good/`` holds defect-free images. A mask is matched by stem: ``<id>.png`` or ``<id>_mask.png``.
An optional ``manifest.csv`` (columns ``image``, ``mask``, ``width``, ``height``,
``defect_area_frac``; paths relative to the csv) spares opening every file; an optional
``folds.json`` at the root (``{"base": [objects], "novel": [objects]}``) defines folds, and a
record's ``split`` is the first fold holding its object.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from harness.records import ImageRecord

from .base import (Dataset, DatasetError, SkipLog, find_mask, image_size, list_images,
                   mask_pixel_count, resolve_link_stub)

NORMAL_CATEGORY = "good"


def _category_dirs(folder: Path) -> list[Path]:
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return []
    return [c for c in children
            if c.is_dir() and not c.name.startswith(".") and (c / "images").is_dir()]


def object_dirs(root: Path) -> list[tuple[str, Path]]:
    """``(object name, folder holding its category folders)`` pairs found under ``root``."""
    root = Path(os.path.abspath(root))
    if _category_dirs(root):
        return [(root.name, root)]
    return [(child.name, child) for child in sorted(root.iterdir())
            if child.is_dir() and not child.name.startswith(".") and _category_dirs(child)]


def detect(root: Path) -> bool:
    return bool(object_dirs(root))


def _read_manifest(folder: Path) -> dict[str, dict[str, str]]:
    """Rows of ``folder/manifest.csv`` keyed by the normalised absolute image path."""
    path = folder / "manifest.csv"
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable manifest ({exc})") from None
    return {os.path.normpath(folder / row["image"]): row for row in rows if row.get("image")}


def read_folds(root: Path) -> dict[str, tuple[str, ...]]:
    path = Path(root) / "folds.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {str(name): tuple(str(o) for o in objs) for name, objs in raw.items()}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise DatasetError(f"{path}: unreadable folds file ({exc})") from None


def _size(row: dict | None, image: Path) -> tuple[int, int]:
    if row and row.get("width") and row.get("height"):
        try:
            return int(row["width"]), int(row["height"])
        except ValueError:
            pass
    return image_size(image)


def _mask_for(row: dict | None, manifest_dir: Path, cat_dir: Path, stem: str) -> Path | None:
    if row and row.get("mask"):
        candidate = manifest_dir / row["mask"]
        if candidate.is_file():
            return candidate
    return find_mask(cat_dir / "masks", stem)


def _is_empty(row: dict | None, mask: Path) -> bool:
    if row and row.get("defect_area_frac") not in (None, ""):
        try:
            return float(row["defect_area_frac"]) <= 0.0
        except ValueError:
            pass
    return mask_pixel_count(mask) == 0


def _object_records(obj: str, obj_dir: Path, manifest: dict, split: str,
                    log: SkipLog) -> list[ImageRecord]:
    records = []
    for cat_dir in _category_dirs(obj_dir):
        category = cat_dir.name
        images = list_images(cat_dir / "images", log)
        if not images:
            log.skip("empty_folders", cat_dir / "images", f"category folder '{category}' holds no images")
        for image in images:
            row = manifest.get(os.path.normpath(image))
            real = resolve_link_stub(image)
            try:
                width, height = _size(row, real)
            except DatasetError as exc:
                log.skip("unreadable_images", image, str(exc))
                continue
            image_id = f"{obj}/{category}/{image.stem}"
            mask = None
            if category != NORMAL_CATEGORY:
                mask_dir = Path(row["_dir"]) if row else obj_dir
                mask = _mask_for(row, mask_dir, cat_dir, image.stem)
                if mask is None:
                    log.skip("missing_masks", image, "no mask in masks/ for this defect image")
                    continue
                try:
                    if _is_empty(row, mask):
                        log.skip("empty_masks", mask, "empty mask")
                        continue
                except DatasetError as exc:
                    log.skip("unreadable_masks", mask, str(exc))
                    continue
            records.append(ImageRecord(
                image_id=image_id, path=str(real), mask_path=None if mask is None else str(mask),
                category=category, object=obj, split=split, width=width, height=height))
    return records


def load(root: Path, name: str | None = None, fmt: str = "folder") -> Dataset:
    root = Path(os.path.abspath(root))
    objects = object_dirs(root)
    if not objects:
        raise DatasetError(f"{root}: no <category>/images folders found")
    folds = read_folds(root)
    manifest: dict[str, dict] = {}
    for folder in {root, *(d for _, d in objects)}:
        for key, row in _read_manifest(folder).items():
            manifest[key] = {**row, "_dir": str(folder)}
    log = SkipLog()
    records: list[ImageRecord] = []
    for obj, obj_dir in objects:
        split = next((fold for fold, objs in folds.items() if obj in objs), "")
        records.extend(_object_records(obj, obj_dir, manifest, split, log))
    meta = {"area_source": "manifest" if manifest else "masks", **log.meta()}
    return Dataset(name=name or root.name, root=root, format=fmt, records=tuple(records),
                   folds=folds, meta=meta)
