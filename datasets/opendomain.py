"""SOFS open-domain layout (sofs-spec §4.3).

    <root>/<object>/support/image/*.{jpg,png}
    <root>/<object>/support/mask/<stem>_mask.png      0/255, 255 = target
    <root>/<object>/query/image/*
    <root>/<object>/query/{mask,true_label}/           optional query ground truth

One class per object, category ``"defect"``. The folders fix the roles (``ImageRecord.role``):
support images are only supports (split and role "support"), query images only queries. A query
with a label has split and role "query" (a label with no target pixel makes it a normal record,
category "good"); one without has split "query-unlabelled", role "unlabelled" and
``mask_path=None``: it is predicted and stored, not scored.
"""
from __future__ import annotations

import os
from pathlib import Path

from harness.records import ImageRecord

from .base import (Dataset, DatasetError, SkipLog, defect_image_size, find_mask, image_size,
                   list_images, mask_pixel_count, object_dirs)

CATEGORY = "defect"
QUERY_LABEL_DIRS = ("mask", "true_label")


def _is_object(folder: Path) -> bool:
    return (folder / "support" / "image").is_dir()


def _object_dirs(root: Path) -> list[Path]:
    return object_dirs(root, _is_object)


def detect(root: Path) -> bool:
    return bool(_object_dirs(Path(root)))


def _support_records(obj_dir: Path, log: SkipLog) -> list[ImageRecord]:
    records = []
    for image in list_images(obj_dir / "support" / "image", log):
        mask = find_mask(obj_dir / "support" / "mask", image.stem, ("_mask", ""))
        if mask is None:
            log.skip("missing_masks", image, "support image without support/mask/<stem>_mask.png")
            continue
        size = defect_image_size(image, mask, log, "empty support mask")
        if size is None:
            continue
        width, height = size
        records.append(ImageRecord(
            image_id=f"{obj_dir.name}/support/{image.stem}", path=str(image), mask_path=str(mask),
            category=CATEGORY, object=obj_dir.name, split="support", width=width, height=height,
            role="support"))
    return records


def _query_records(obj_dir: Path, log: SkipLog) -> list[ImageRecord]:
    label_dirs = [obj_dir / "query" / d for d in QUERY_LABEL_DIRS if (obj_dir / "query" / d).is_dir()]
    records = []
    for image in list_images(obj_dir / "query" / "image", log):
        try:
            width, height = image_size(image)
        except DatasetError as exc:
            log.skip("unreadable_images", image, str(exc))
            continue
        mask = next((m for d in label_dirs
                     if (m := find_mask(d, image.stem, ("_mask", "", "_label"))) is not None), None)
        category, split, role = CATEGORY, "query-unlabelled", "unlabelled"
        if mask is not None:
            split = role = "query"
            try:
                if mask_pixel_count(mask) == 0:
                    mask, category = None, "good"
            except DatasetError as exc:
                log.skip("unreadable_masks", mask, str(exc))
                continue
        records.append(ImageRecord(
            image_id=f"{obj_dir.name}/query/{image.stem}", path=str(image),
            mask_path=None if mask is None else str(mask), category=category,
            object=obj_dir.name, split=split, width=width, height=height, role=role))
    return records


def load(root: Path) -> Dataset:
    root = Path(os.path.abspath(root))
    objects = _object_dirs(root)
    if not objects:
        raise DatasetError(f"{root}: no <object>/support/image folders found")
    log = SkipLog()
    records: list[ImageRecord] = []
    for obj_dir in objects:
        records.extend(_support_records(obj_dir, log))
        records.extend(_query_records(obj_dir, log))
    unlabelled = sum(not r.is_labelled for r in records)
    return Dataset(name=root.name, root=root, format="opendomain", records=tuple(records),
                   folds={}, meta={"unlabelled_queries": unlabelled, **log.meta()})
