"""VisA (Zou et al., ECCV 2022) through its split CSV: ``<root>/split_csv/1cls.csv``.

CSV columns ``object,split,label,image,mask``; ``label`` is ``normal`` or ``anomaly``; ``image``
and ``mask`` are paths relative to the root (``<object>/Data/Images/...``, ``.../Masks/...``).
VisA masks are class-id maps: 0 is background and each value 1, 2 ... one defect type of the object
(the authors publish the names per object as ``id2class.json``, ``{object: {id: name}}``). Each id
present in a mask gives one record with ``mask_value = id`` and category ``<name>`` from
``<root>/id2class.json`` (or ``<root>/split_csv/id2class.json``) when that file is there, else
``type<id>``; one image with two defect types is a query of both classes. A mask already made
binary (0/255, as some converted copies are) or graded gives one record of category ``anomaly``.
``split`` is kept ("train" / "test"); every image is usable as support or query.
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from harness.records import ImageRecord

from .base import Dataset, DatasetError, SkipLog, image_size, load_mask_values, mask_ids, mask_kind

SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = {"object", "split", "label", "image", "mask"}
NAME_FILES = (Path("id2class.json"), Path("split_csv") / "id2class.json")
UNTYPED = "anomaly"  # category of a binary (0/255) or graded mask: no defect type given


def detect(root: Path) -> bool:
    return (Path(root) / SPLIT_CSV).is_file()


def _rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = COLUMNS - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"{csv_path}: missing columns {sorted(missing)} (VisA split CSV: {sorted(COLUMNS)})")
        return list(reader)


def read_names(root: Path) -> dict[str, dict[int, str]]:
    """``{object: {id: category}}`` from the first ``NAME_FILES`` present (ids as ints, names as
    lower-case words joined by ``_``; ``BACKGROUND`` dropped); ``{}`` when there is none."""
    for name in NAME_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            raw = json.loads(path.read_text())
            return {str(obj): {int(i): _category(str(n)) for i, n in ids.items() if int(i) > 0}
                    for obj, ids in raw.items()}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise DatasetError(f"{path}: unreadable id-to-class file ({exc})") from None
    return {}


def _category(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "unnamed"


def _mask_classes(mask: Path, obj: str, names: dict) -> list[tuple[str, int | None]]:
    """``(category, mask_value)`` of each defect type in ``mask``; [] when it is empty."""
    values = load_mask_values(mask)
    ids = mask_ids(values)
    if not ids:
        return []
    if mask_kind(values) == "graded" or ids == [255]:
        return [(UNTYPED, None)]
    return [(names.get(obj, {}).get(v, f"type{v}"), v) for v in ids]


def _anomaly_records(row: dict, root: Path, names: dict, log: SkipLog) -> list[ImageRecord]:
    image, obj = root / row["image"], row["object"]
    if not row["mask"]:
        log.skip("missing_masks", image, "anomaly row without a mask path")
        return []
    mask = root / row["mask"]
    try:
        width, height = image_size(image)
        classes = _mask_classes(mask, obj, names)
    except DatasetError as exc:
        log.skip("unreadable_files", image, str(exc))
        return []
    if not classes:
        log.skip("empty_masks", mask, "mask has no non-zero value")
    return [ImageRecord(image_id=f"{obj}/{category}/{row['split']}/{Path(row['image']).stem}", path=str(image),
                        mask_path=str(mask), category=category, object=obj, split=row["split"],
                        width=width, height=height, mask_value=value)
            for category, value in classes]


def load(root: Path) -> Dataset:
    root = Path(os.path.abspath(root))
    log = SkipLog()
    names = read_names(root)
    records: list[ImageRecord] = []
    for row in _rows(root / SPLIT_CSV):
        if row["label"] != "normal":
            records.extend(_anomaly_records(row, root, names, log))
            continue
        image = root / row["image"]
        try:
            width, height = image_size(image)
        except DatasetError as exc:
            log.skip("unreadable_images", image, str(exc))
            continue
        records.append(ImageRecord(image_id=f"{row['object']}/good/{row['split']}/{image.stem}", path=str(image),
                                   mask_path=None, category="good", object=row["object"], split=row["split"],
                                   width=width, height=height))
    return Dataset(name=root.name, root=root, format="visa", records=tuple(records), folds={},
                   meta={"category_names": "id2class.json" if names else "type<id>", **log.meta()})
