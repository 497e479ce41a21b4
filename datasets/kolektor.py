"""KolektorSDD and KolektorSDD2 (surface cracks on electrical commutators).

* KolektorSDD (Tabernik et al., 2019): ``<root>/kos01 .. kos50/Part<i>.jpg`` with
  ``Part<i>_label.bmp`` beside it; an all-zero label means a defect-free image.
* KolektorSDD2 (Božič et al., 2021): ``<root>/{train,test}/<id>.png`` with ``<id>_GT.png``.

One object, ``kolektorsdd`` / ``kolektorsdd2``, one class ``(<object>, "crack")``; images whose
mask is empty are the object's normal images. ``split`` is the folder (``kos07``; ``train``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from harness.records import ImageRecord

from .base import Dataset, DatasetError, SkipLog, image_size, list_images, mask_pixel_count

SDD1_FOLDER = re.compile(r"kos\d+$")
SDD2_SPLITS = ("train", "test")


def _sdd1_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and SDD1_FOLDER.match(p.name)) if root.is_dir() else []


def _is_sdd2(root: Path) -> bool:
    return any((root / split).is_dir() and any((root / split).glob("*_GT.png")) for split in SDD2_SPLITS)


def detect(root: Path) -> bool:
    root = Path(root)
    return bool(_sdd1_folders(root)) or _is_sdd2(root)


def _pairs(root: Path, log: SkipLog) -> tuple[str, list[tuple[str, Path, Path | None]]]:
    """(object name, [(split, image, mask or None)])."""
    folders = _sdd1_folders(root)
    if folders:
        pairs = []
        for folder in folders:
            for image in list_images(folder, log):
                if not image.stem.endswith("_label"):
                    label = folder / f"{image.stem}_label.bmp"
                    pairs.append((folder.name, image, label if label.is_file() else None))
        return "kolektorsdd", pairs
    pairs = []
    for split in SDD2_SPLITS:
        for image in list_images(root / split, log):
            if not image.stem.endswith("_GT"):
                mask = root / split / f"{image.stem}_GT.png"
                pairs.append((split, image, mask if mask.is_file() else None))
    return "kolektorsdd2", pairs


def load(root: Path) -> Dataset:
    root = Path(os.path.abspath(root))
    if not detect(root):
        raise DatasetError(f"{root}: no kosNN/ folders (KolektorSDD) or train|test/*_GT.png (KolektorSDD2)")
    log = SkipLog()
    obj, pairs = _pairs(root, log)
    records = []
    for split, image, mask in pairs:
        if mask is None:
            log.skip("missing_masks", image, "no label file beside the image")
            continue
        try:
            width, height = image_size(image)
            defective = mask_pixel_count(mask) > 0
        except DatasetError as exc:
            log.skip("unreadable_files", image, str(exc))
            continue
        category = "crack" if defective else "good"
        records.append(ImageRecord(
            image_id=f"{obj}/{category}/{split}/{image.stem}", path=str(image),
            mask_path=str(mask) if defective else None, category=category, object=obj, split=split,
            width=width, height=height))
    return Dataset(name=root.name, root=root, format="kolektor", records=tuple(records), folds={}, meta=log.meta())
