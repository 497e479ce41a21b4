"""VisA (Zou et al., ECCV 2022) through its split CSV: ``<root>/split_csv/1cls.csv``.

CSV columns ``object,split,label,image,mask``; ``label`` is ``normal`` or ``anomaly``; ``image``
and ``mask`` are paths relative to the root (``<object>/Data/Images/...``, ``.../Masks/...``).
VisA labels no defect type per image, so each object is one class ``(<object>, "anomaly")``.
Masks are two-level PNGs (0 and one value), read by the common rule. ``split`` is kept
("train" / "test"); every image is usable as support or query.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from harness.records import ImageRecord

from .base import Dataset, DatasetError, SkipLog, defect_image_size, image_size

SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = {"object", "split", "label", "image", "mask"}


def detect(root: Path) -> bool:
    return (Path(root) / SPLIT_CSV).is_file()


def _rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = COLUMNS - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{csv_path}: missing columns {sorted(missing)} (VisA split CSV: {sorted(COLUMNS)})")
        return list(reader)


def load(root: Path) -> Dataset:
    root = Path(os.path.abspath(root))
    log = SkipLog()
    records: list[ImageRecord] = []
    for row in _rows(root / SPLIT_CSV):
        image = root / row["image"]
        stem = Path(row["image"]).stem
        common = dict(object=row["object"], split=row["split"])
        if row["label"] == "normal":
            try:
                width, height = image_size(image)
            except DatasetError as exc:
                log.skip("unreadable_images", image, str(exc))
                continue
            records.append(ImageRecord(image_id=f"{row['object']}/good/{row['split']}/{stem}", path=str(image),
                                       mask_path=None, category="good", width=width, height=height, **common))
            continue
        if not row["mask"]:
            log.skip("missing_masks", image, "anomaly row without a mask path")
            continue
        mask = root / row["mask"]
        size = defect_image_size(image, mask, log)
        if size is None:
            continue
        records.append(ImageRecord(image_id=f"{row['object']}/anomaly/{row['split']}/{stem}", path=str(image),
                                   mask_path=str(mask), category="anomaly", width=size[0], height=size[1], **common))
    return Dataset(name=root.name, root=root, format="visa", records=tuple(records), folds={}, meta=log.meta())
