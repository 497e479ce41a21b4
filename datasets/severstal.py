"""Severstal steel defects (Kaggle 2019): ``<root>/train.csv`` (``ImageId,ClassId,EncodedPixels``)
and ``<root>/train_images/<ImageId>``.

``EncodedPixels`` is run-length encoded: pairs ``start length`` with pixels numbered from 1
top to bottom, then left to right (column-major). Each (image, ClassId) row is decoded ONCE
into a 0/255 PNG in the mask cache (the VISION adapter's: ``<root>/.sofs_bench_masks/`` when
writable, else under ``$SOFS_BENCH_CACHE`` / ``~/.cache/sofs-bench``), keyed by a hash of the
CSV. One object ``steel``, categories ``class1`` .. ``class4``; images of ``train_images/``
without any CSV row are normal images.
"""
from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import numpy as np

from harness.records import ImageRecord

from .base import Dataset, DatasetError, SkipLog, image_size, list_images
from .vision import _cache_root, _write_png

CSV_NAME = "train.csv"
IMAGE_DIR = "train_images"
COLUMNS = ("ImageId", "ClassId", "EncodedPixels")


def detect(root: Path) -> bool:
    root = Path(root)
    if not ((root / CSV_NAME).is_file() and (root / IMAGE_DIR).is_dir()):
        return False
    with open(root / CSV_NAME, newline="") as handle:
        return tuple(next(csv.reader(handle), ()))[:3] == COLUMNS


def rle_decode(encoded: str, height: int, width: int) -> np.ndarray:
    """bool ``[H, W]`` from ``"start length ..."`` (1-based starts, column-major pixel order)."""
    numbers = np.asarray(encoded.split(), dtype=np.int64)
    if len(numbers) % 2:
        raise DatasetError(f"run-length code has an odd number of values ({len(numbers)})")
    flat = np.zeros(height * width, bool)
    for start, length in zip(numbers[0::2], numbers[1::2]):
        if start < 1 or start - 1 + length > flat.size:
            raise DatasetError(f"run {start} {length} lies outside a {width}x{height} image")
        flat[start - 1 : start - 1 + length] = True
    return flat.reshape(width, height).T


def load(root: Path) -> Dataset:
    root = Path(os.path.abspath(root))
    if not detect(root):
        raise DatasetError(f"{root}: no {CSV_NAME} with columns {','.join(COLUMNS)} and {IMAGE_DIR}/ (Severstal)")
    raw = (root / CSV_NAME).read_bytes()
    cache = _cache_root(root) / "severstal" / hashlib.sha1(raw).hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    with open(root / CSV_NAME, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["EncodedPixels"].strip()]
    log = SkipLog()
    sizes: dict[str, tuple[int, int]] = {}
    records = []
    for row in rows:
        image = root / IMAGE_DIR / row["ImageId"]
        try:
            if image.name not in sizes:
                sizes[image.name] = image_size(image)
            width, height = sizes[image.name]
            png = cache / f"{Path(row['ImageId']).stem}_class{row['ClassId']}.png"
            if not png.is_file():
                _write_png(png, rle_decode(row["EncodedPixels"], height, width))
        except DatasetError as exc:
            log.skip("unreadable_files", image, str(exc))
            continue
        category = f"class{row['ClassId']}"
        records.append(ImageRecord(image_id=f"steel/{category}/{image.stem}", path=str(image), mask_path=str(png),
                                   category=category, object="steel", split="train", width=width, height=height))
    for image in list_images(root / IMAGE_DIR, log):
        if image.name in sizes:
            continue
        try:
            width, height = image_size(image)
        except DatasetError as exc:
            log.skip("unreadable_images", image, str(exc))
            continue
        records.append(ImageRecord(image_id=f"steel/good/{image.stem}", path=str(image), mask_path=None,
                                   category="good", object="steel", split="train", width=width, height=height))
    return Dataset(name=root.name, root=root, format="severstal", records=tuple(records), folds={},
                   meta={"mask_cache": str(cache), **log.meta()})
