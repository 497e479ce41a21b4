"""VISION V1: ``<root>/<object>/{train,val}/_annotations.coco.json`` + images (sofs-spec §4.1).

train and val are merged; ``inference/`` (no labels) is ignored. A class is ``(object, COCO
category name)``; categories without any annotation (the Roboflow dataset-named supercategory)
are dropped. Polygons are rasterized ONCE with ``skimage.draw.polygon`` into a cache of 0/255 PNGs,
all instances of a category in an image OR-ed; images with no annotation at all are normal.
Rasterizers disagree on boundary pixels (tens of percent of a 50-px defect), so the one used is
recorded in ``Dataset.meta["rasterizer"]`` and in the cache key.

Cache: ``<root>/.sofs_bench_masks/`` when writable, else ``$SOFS_BENCH_CACHE/vision-masks/<hash>``
or ``~/.cache/sofs-bench/vision-masks/<hash>``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from importlib.metadata import version

import numpy as np
from PIL import Image

from harness.io import atomic_write
from harness.records import ImageRecord

from .base import Dataset, DatasetError, SkipLog, object_dirs

COCO_FILE = "_annotations.coco.json"
SPLITS = ("train", "val")
# skimage (and scipy under it) is imported only to rasterize: detecting the layout stays light
RASTERIZER = (f"skimage.draw.polygon {version('scikit-image')} "
              "(vertices as given, pixel centres at integer coordinates)")
CACHE_VERSION = 1

# sofs-spec §4.1: (training objects, test objects) per fold.
FOLDS = {
    "split_0": (("Console", "Casting", "Groove", "Capacitor", "PCB_2", "Screw", "Cylinder",
                 "Electronics", "Lens"),
                ("PCB_1", "Hemisphere", "Wood", "Ring", "Cable")),
    "split_1": (("PCB_1", "Groove", "Cable", "Hemisphere", "Screw", "Cylinder", "Wood", "Ring",
                 "Lens"),
                ("Casting", "Capacitor", "PCB_2", "Electronics", "Console")),
    "split_2": (("Console", "PCB_1", "Casting", "Cable", "Hemisphere", "Capacitor", "PCB_2",
                 "Wood", "Electronics", "Ring"),
                ("Groove", "Lens", "Screw", "Cylinder")),
}


def safe_name(name: str) -> str:
    """Category name usable in file names and ids ("Flash Particle" -> "Flash_Particle")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "unnamed"


def _is_object(folder: Path) -> bool:
    return any((folder / split / COCO_FILE).is_file() for split in SPLITS)


def _object_dirs(root: Path) -> list[Path]:
    return object_dirs(root, _is_object)


def detect(root: Path) -> bool:
    return bool(_object_dirs(Path(root)))


# --------------------------------------------------------------------------- rasterizing


def _rle_counts(counts) -> list[int]:
    """COCO RLE counts: a list already, or the compressed string (6-bit chunks, deltas)."""
    if isinstance(counts, list):
        return [int(c) for c in counts]
    text = counts.encode() if isinstance(counts, str) else bytes(counts)
    out: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            chunk = text[pos] - 48
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            pos += 1
            shift += 5
            if not more and chunk & 0x10:
                value |= -1 << shift
        if len(out) > 2:
            value += out[-2]
        out.append(value)
    return out


def _decode_rle(segmentation: dict, height: int, width: int) -> np.ndarray:
    flat = np.zeros(height * width, dtype=bool)
    pos, fill = 0, False
    for run in _rle_counts(segmentation["counts"]):
        if fill:
            flat[pos:pos + run] = True
        pos += run
        fill = not fill
    # RLE is column-major (Fortran order).
    return flat.reshape((width, height)).T


def rasterize(segmentations: list, height: int, width: int) -> np.ndarray:
    """OR of all polygons / RLEs of one category in one image, bool ``[H, W]``."""
    from skimage.draw import polygon as draw_polygon

    mask = np.zeros((height, width), dtype=bool)
    for seg in segmentations:
        if isinstance(seg, dict):
            mask |= _decode_rle(seg, height, width)
            continue
        for poly in seg:
            coords = np.asarray(poly, dtype=np.float64)
            if coords.size < 6:
                continue
            rows, cols = draw_polygon(coords[1::2], coords[0::2], shape=(height, width))
            mask[rows, cols] = True
    return mask


# --------------------------------------------------------------------------- cache


def _cache_root(root: Path) -> Path:
    local = root / ".sofs_bench_masks"
    try:
        local.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=local, prefix=".probe"):
            pass
        return local
    except OSError:
        base = os.environ.get("SOFS_BENCH_CACHE") or os.path.expanduser("~/.cache/sofs-bench")
        digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
        folder = Path(base) / "vision-masks" / f"{root.name}-{digest}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def _write_png(path: Path, mask: np.ndarray) -> None:
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _rasterize_split(coco: dict, cache_dir: Path, key: str) -> dict:
    """Write the masks of one COCO file; return ``{file_name: {category: [png, pixels]}}``."""
    index_path = cache_dir / "index.json"
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            if index.get("key") == key:
                return index["masks"]
        except (OSError, ValueError):
            pass
    cache_dir.mkdir(parents=True, exist_ok=True)
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    by_image: dict[int, dict[str, list]] = {}
    for ann in coco.get("annotations", []):
        if ann.get("segmentation"):
            seg = ann["segmentation"]
            by_image.setdefault(ann["image_id"], {}).setdefault(
                names.get(ann["category_id"], str(ann["category_id"])), []).append(seg)
    masks: dict[str, dict[str, list]] = {}
    for info in coco.get("images", []):
        for category, segs in sorted(by_image.get(info["id"], {}).items()):
            mask = rasterize(segs, int(info["height"]), int(info["width"]))
            png = f"{Path(info['file_name']).stem}__{safe_name(category)}.png"
            _write_png(cache_dir / png, mask)
            masks.setdefault(info["file_name"], {})[category] = [png, int(mask.sum())]
    text = json.dumps({"key": key, "rasterizer": RASTERIZER, "masks": masks})
    atomic_write(index_path, lambda tmp: tmp.write_text(text))
    return masks


# --------------------------------------------------------------------------- loading


def _read_coco(path: Path) -> tuple[dict, bytes]:
    try:
        raw = path.read_bytes()
        return json.loads(raw), raw
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable COCO annotation file ({exc})") from None


def _split_records(obj: str, split_dir: Path, cache_dir: Path, log: SkipLog) -> list[ImageRecord]:
    coco, raw = _read_coco(split_dir / COCO_FILE)
    key = hashlib.sha1(raw + f"|{RASTERIZER}|{CACHE_VERSION}".encode()).hexdigest()
    masks = _rasterize_split(coco, cache_dir, key)
    records = []
    for info in sorted(coco.get("images", []), key=lambda i: i["file_name"]):
        image = split_dir / info["file_name"]
        if not image.is_file():
            log.skip("missing_images", image, "listed in the COCO file but not on disk")
            continue
        stem = Path(info["file_name"]).with_suffix("").as_posix()
        common = dict(path=str(image), object=obj, split=split_dir.name,
                      width=int(info["width"]), height=int(info["height"]))
        per_category = masks.get(info["file_name"], {})
        if not per_category:
            records.append(ImageRecord(image_id=f"{obj}/good/{split_dir.name}/{stem}",
                                       mask_path=None, category="good", **common))
        for category, (png, pixels) in sorted(per_category.items()):
            if pixels == 0:
                log.skip("empty_masks", cache_dir / png, f"polygon of {category!r} covers no pixel")
                continue
            records.append(ImageRecord(
                image_id=f"{obj}/{safe_name(category)}/{split_dir.name}/{stem}",
                mask_path=str(cache_dir / png), category=category, **common))
    return records


def _folds(objects: list[str]) -> dict[str, tuple[str, ...]]:
    present = {o.lower(): o for o in objects}
    folds = {}
    for fold, (train, test) in FOLDS.items():
        folds[f"{fold}:train"] = tuple(present[o.lower()] for o in train if o.lower() in present)
        folds[f"{fold}:test"] = tuple(present[o.lower()] for o in test if o.lower() in present)
    return folds


def load(root: Path) -> Dataset:
    root = Path(os.path.abspath(root))
    objects = _object_dirs(root)
    if not objects:
        raise DatasetError(f"{root}: no <object>/{{train,val}}/{COCO_FILE} found")
    cache = _cache_root(root)
    log = SkipLog()
    records: list[ImageRecord] = []
    for obj_dir in objects:
        for split in SPLITS:
            if (obj_dir / split / COCO_FILE).is_file():
                records.extend(_split_records(obj_dir.name, obj_dir / split,
                                              cache / obj_dir.name / split, log))
    meta = {"rasterizer": RASTERIZER, "mask_cache": str(cache), **log.meta()}
    return Dataset(name=root.name, root=root, format="vision", records=tuple(records),
                   folds=_folds([o.name for o in objects]), meta=meta)
