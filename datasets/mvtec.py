"""MVTec AD: ``<object>/train/good``, ``<object>/test/<defect>``, ``<object>/ground_truth/<defect>``.

One class per ``(object, defect)``; masks are ``ground_truth/<defect>/<stem>_mask.png`` (also
``<stem>.png`` as anomalib accepts). ``train/good`` and ``test/good`` are normal images, with
``split`` "train" / "test". The root may be the dataset folder or a single object folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from harness.records import ImageRecord

from .base import (Dataset, DatasetError, SkipLog, defect_image_size, find_mask, image_size,
                   list_images, object_dirs)


def _is_object(folder: Path) -> bool:
    return (folder / "test").is_dir() and (folder / "ground_truth").is_dir()


def _object_dirs(root: Path) -> list[Path]:
    return object_dirs(root, _is_object)


def detect(root: Path) -> bool:
    return bool(_object_dirs(Path(root)))


def _normal_records(obj_dir: Path, split: str, log: SkipLog) -> list[ImageRecord]:
    records = []
    for image in list_images(obj_dir / split / "good", log):
        try:
            width, height = image_size(image)
        except DatasetError as exc:
            log.skip("unreadable_images", image, str(exc))
            continue
        records.append(ImageRecord(
            image_id=f"{obj_dir.name}/good/{split}/{image.stem}", path=str(image), mask_path=None,
            category="good", object=obj_dir.name, split=split, width=width, height=height))
    return records


def _defect_records(obj_dir: Path, defect_dir: Path, log: SkipLog) -> list[ImageRecord]:
    records = []
    for image in list_images(defect_dir, log):
        mask = find_mask(obj_dir / "ground_truth" / defect_dir.name, image.stem, ("_mask", ""))
        if mask is None:
            log.skip("missing_masks", image, "no ground_truth mask for this defect image")
            continue
        size = defect_image_size(image, mask, log)
        if size is None:
            continue
        width, height = size
        records.append(ImageRecord(
            image_id=f"{obj_dir.name}/{defect_dir.name}/{image.stem}", path=str(image),
            mask_path=str(mask), category=defect_dir.name, object=obj_dir.name, split="test",
            width=width, height=height))
    return records


def load(root: Path) -> Dataset:
    root = Path(os.path.abspath(root))
    objects = _object_dirs(root)
    if not objects:
        raise DatasetError(f"{root}: no <object>/test + <object>/ground_truth folders found")
    log = SkipLog()
    records: list[ImageRecord] = []
    for obj_dir in objects:
        records.extend(_normal_records(obj_dir, "train", log))
        records.extend(_normal_records(obj_dir, "test", log))
        for defect_dir in sorted((obj_dir / "test").iterdir()):
            if defect_dir.is_dir() and defect_dir.name != "good":
                records.extend(_defect_records(obj_dir, defect_dir, log))
    return Dataset(name=root.name, root=root, format="mvtec", records=tuple(records), folds={},
                   meta=log.meta())
