"""DAGM 2007 (weakly supervised texture defects): ``<root>/Class<N>/{Train,Test}/<id>.PNG`` with
``Label/<id>_label.PNG`` for the defective images (``Label/Labels.txt`` is not needed).

One object per texture class (``Class1`` .. ``Class10``, or the ``_def`` development variants),
one defect category ``defect``; an image without a label file is a normal image of its class.
The labels are coarse ellipses drawn around the defect, not pixel-exact masks.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from harness.records import ImageRecord

from .base import Dataset, DatasetError, SkipLog, defect_image_size, image_size, list_images

CLASS_FOLDER = re.compile(r"Class\d+(_def)?$", re.IGNORECASE)
SPLITS = ("Train", "Test")


def _class_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    candidates = [root] if CLASS_FOLDER.match(root.name) else sorted(p for p in root.iterdir() if p.is_dir())
    return [p for p in candidates if CLASS_FOLDER.match(p.name) and any((p / s / "Label").is_dir() for s in SPLITS)]


def detect(root: Path) -> bool:
    return bool(_class_dirs(Path(root)))


def _label_of(split_dir: Path, stem: str) -> Path | None:
    for suffix in (".PNG", ".png"):
        path = split_dir / "Label" / f"{stem}_label{suffix}"
        if path.is_file():
            return path
    return None


def load(root: Path) -> Dataset:
    root = Path(os.path.abspath(root))
    classes = _class_dirs(root)
    if not classes:
        raise DatasetError(f"{root}: no Class<N>/{{Train,Test}}/Label folders (DAGM 2007)")
    log = SkipLog()
    records = []
    for class_dir in classes:
        for split in SPLITS:
            for image in list_images(class_dir / split, log):
                label = _label_of(class_dir / split, image.stem)
                common = dict(object=class_dir.name, split=split.lower(), path=str(image))
                if label is None:
                    try:
                        width, height = image_size(image)
                    except DatasetError as exc:
                        log.skip("unreadable_images", image, str(exc))
                        continue
                    records.append(ImageRecord(image_id=f"{class_dir.name}/good/{split}/{image.stem}", mask_path=None,
                                               category="good", width=width, height=height, **common))
                    continue
                size = defect_image_size(image, label, log)
                if size is not None:
                    records.append(ImageRecord(image_id=f"{class_dir.name}/defect/{split}/{image.stem}",
                                               mask_path=str(label), category="defect", width=size[0],
                                               height=size[1], **common))
    return Dataset(name=root.name, root=root, format="dagm", records=tuple(records), folds={}, meta=log.meta())
