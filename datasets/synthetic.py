"""Embedded default dataset: procedural industrial surfaces with small, subtle defects.

Eighteen surfaces: fifteen "base" objects for meta-training and three "novel" ones for testing,
each with two to four defect categories suited to it. The novel fold (pcb, cast_surface,
painted_panel) and the first three base objects are exactly those of generator v1; v2 appends
twelve base families (``datasets.synthetic_families``: metals, leather, concrete, tile, plastic,
glass, carbon weave, paper, rubber, print, perforated sheet) with generic defects, grey and colour
images and 20 defect-free images each. Images are 1024 x 768 RGB PNG (lossless: JPEG would blur
the tiny defects); masks are 0/255 PNG marking exactly the pixels a defect changed. The defect
area per image is drawn log-uniformly inside a per-category range with a heavy small tail
(``frac = lo * (hi / lo) ** (u ** 1.4)``, ``u`` stratified over the images of a class), so areas
span < 0.05 % to > 5 % of the image with most under 0.3 %, as in VISION V1.

Every image has its own random stream ``default_rng([seed, object, category, index])``, so the
same seed gives byte-identical files whatever the counts. ``ensure_synthetic`` writes the
generic folder layout once into a cache folder (temp dir + rename, ``COMPLETE`` marker) that
``datasets.folder`` reads back.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .base import Dataset, DatasetError
# The drawing kit and the catalogue live in two modules split by concern (no circle: they import
# nothing from here); the names tests and tools use are re-exported.
from .synthetic_marks import HEIGHT, WIDTH, Canvas, NoiseBank, smooth_noise
from .synthetic_surfaces import FOLDS, SURFACES, DefectKind, _grid

# v2 (issue 22): the base fold grows from 3 to 15 objects; the novel fold's files are unchanged
# (tests/datasets/test_synthetic.py checks digests of v1's novel images).
GENERATOR_VERSION = "synthetic-v2"
# Defect-free images per object: 40 test queries and 20 held out to calibrate a threshold on good
# parts alone (issue 19: a 5 % false-alarm budget needs tens of good images to mean anything).
# Each image has its own random stream, so raising this adds images and changes none.
N_DEFECTIVE, N_GOOD = 10, 60
AREA_SKEW = 1.4  # > 1 piles the areas towards the small end of each category's range
PNG_LEVEL = 1  # fast zlib level; the files stay lossless


# --------------------------------------------------------------------------- rendering


def _light(cv: Canvas) -> None:
    """Uneven illumination and sensor noise, applied after the defects like a camera would."""
    rng = cv.rng
    y, x = _grid(cv)
    gain = (1 + rng.uniform(-0.15, 0.15) * (y / cv.h - 0.5) + rng.uniform(-0.15, 0.15) * (x / cv.w - 0.5)
            + 0.04 * smooth_noise(cv, 250, 250)) * rng.uniform(0.9, 1.1)
    cv.rgb *= gain[None]
    cv.rgb += (rng.uniform(0.8, 2.0) * cv.bank.take(rng, cv.h, cv.w))[None]


def area_targets(seed: int, obj_index: int, cat_index: int, kind: DefectKind, n: int) -> np.ndarray:
    """Target defect area fraction of the ``n`` images of a class.

    ``u`` is stratified (one draw per 1/n interval, first and last strata pushed to the ends) so
    even a small class spans its range; ``u ** AREA_SKEW`` gives the heavy small tail.
    """
    rng = np.random.default_rng([seed, obj_index, cat_index, 7_777])
    offsets = rng.uniform(0, 1, n)
    if n > 1:
        offsets[0], offsets[-1] = offsets[0] * 0.5, 0.5 + offsets[-1] * 0.5
    u = (np.arange(n) + offsets) / n
    lo, hi = kind.area_range
    return rng.permutation(lo * (hi / lo) ** (u ** AREA_SKEW))


def render(seed: int, bank: NoiseBank, obj_index: int, cat_index: int, index: int,
           area_frac: float | None, size: tuple[int, int] = (WIDTH, HEIGHT)) -> tuple[np.ndarray, np.ndarray]:
    """One image uint8 ``[H, W, 3]`` and its class mask bool ``[H, W]`` (cat_index 0 = good)."""
    surface = SURFACES[obj_index]
    rng = np.random.default_rng([seed, obj_index, cat_index, index])
    cv = Canvas(rng=rng, bank=bank, h=size[1], w=size[0])
    surface.texture(cv)
    cv.mask = np.zeros((cv.h, cv.w), dtype=bool)
    if cat_index > 0:
        surface.defects[cat_index - 1].draw(cv, area_frac * cv.h * cv.w)
    _light(cv)
    if surface.grey_share and rng.random() < surface.grey_share:  # a monochrome camera
        cv.rgb[:] = (cv.rgb * np.array([0.299, 0.587, 0.114], np.float32)[:, None, None]).sum(0)[None]
    np.clip(cv.rgb, 0, 255, out=cv.rgb)
    cv.rgb += np.float32(0.5)
    return cv.rgb.transpose(1, 2, 0).astype(np.uint8), cv.mask


def encode_png(array: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """PNG bytes of a uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) array.

    Written directly (every row with the "Up" filter, zlib level 1) because PIL's encoder tries
    every filter on every row, which costs 2-3x more on noisy textures for ~3 % smaller files.
    """
    height, width = array.shape[:2]
    colour_type = 2 if array.ndim == 3 else 0
    rows = array.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type "Up": byte minus the byte above
    filtered[0, 0] = 0
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(filtered.tobytes(), level)) + chunk(b"IEND", b""))


def _save_png(path: Path, array: np.ndarray) -> None:
    path.write_bytes(encode_png(array))


def _jobs(seed: int, obj_index: int, n_defective: int, n_good: int) -> list[tuple]:
    """``(category, cat_index, index, area_frac | None)`` for every image of one object."""
    surface = SURFACES[obj_index]
    if surface.max_good is not None:
        n_good = min(n_good, surface.max_good)
    jobs = [("good", 0, i, None) for i in range(n_good)]
    for cat_index, kind in enumerate(surface.defects, start=1):
        areas = area_targets(seed, obj_index, cat_index, kind, n_defective)
        jobs += [(kind.name, cat_index, i, float(areas[i])) for i in range(n_defective)]
    return jobs


def generate(root: Path, seed: int = 0, n_defective: int = N_DEFECTIVE, n_good: int = N_GOOD,
             objects: tuple[str, ...] | None = None,
             size: tuple[int, int] = (WIDTH, HEIGHT)) -> list[dict]:
    """Write the dataset into ``root`` (generic folder layout); return the manifest rows."""
    root = Path(root)
    bank = NoiseBank(seed)
    rows = []
    wanted = objects or tuple(s.name for s in SURFACES)
    # PNG compression (zlib releases the GIL) overlaps with drawing the next image.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        pending: list = []
        for obj_index, surface in enumerate(SURFACES):
            if surface.name not in wanted:
                continue
            for category, cat_index, index, area in _jobs(seed, obj_index, n_defective, n_good):
                folder = root / surface.name / category
                (folder / "images").mkdir(parents=True, exist_ok=True)
                name = f"{surface.name}_{category}_{index:03d}.png"
                image, mask = render(seed, bank, obj_index, cat_index, index, area, size)
                pending.append(pool.submit(_save_png, folder / "images" / name, image))
                row = {"category": category, "image": f"{surface.name}/{category}/images/{name}",
                       "mask": "", "width": size[0], "height": size[1], "defect_area_frac": 0.0}
                if cat_index > 0:
                    (folder / "masks").mkdir(exist_ok=True)
                    pending.append(pool.submit(_save_png, folder / "masks" / name,
                                               mask.astype(np.uint8) * 255))
                    row["mask"] = f"{surface.name}/{category}/masks/{name}"
                    row["defect_area_frac"] = round(float(mask.mean()), 8)
                rows.append(row)
                while len(pending) > 8:  # bound the images held in memory
                    pending.pop(0).result()
        for future in pending:
            future.result()
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["image"])
        writer.writeheader()
        writer.writerows(rows)
    folds = {fold: [o for o in objs if o in wanted] for fold, objs in FOLDS.items()}
    (root / "folds.json").write_text(json.dumps(folds, indent=1) + "\n")
    return rows


# --------------------------------------------------------------------------- cache


def default_cache_dir(seed: int, n_defective: int = N_DEFECTIVE, n_good: int = N_GOOD) -> Path:
    base = os.environ.get("SOFS_BENCH_CACHE") or os.path.expanduser("~/.cache/sofs-bench")
    name = f"{GENERATOR_VERSION}-seed{seed}"
    if (n_defective, n_good) != (N_DEFECTIVE, N_GOOD):
        name += f"-d{n_defective}-g{n_good}"
    return Path(base) / name


def _marker(seed: int, n_defective: int, n_good: int) -> dict:
    return {"generator": GENERATOR_VERSION, "seed": seed, "n_defective": n_defective,
            "n_good": n_good, "size": [WIDTH, HEIGHT]}


def _is_complete(root: Path, marker: dict) -> bool:
    try:
        return json.loads((root / "COMPLETE").read_text()) == marker
    except (OSError, ValueError):
        return False


def ensure_synthetic(seed: int = 0, root: Path | str | None = None, n_defective: int = N_DEFECTIVE,
                     n_good: int = N_GOOD) -> Path:
    """Generate the synthetic dataset once (atomically) and return its folder."""
    root = Path(root) if root is not None else default_cache_dir(seed, n_defective, n_good)
    marker = _marker(seed, n_defective, n_good)
    if _is_complete(root, marker):
        return root
    if root.exists():
        if (root / "COMPLETE").exists() or not any(root.iterdir()):
            shutil.rmtree(root)  # older generator version, or an empty placeholder
        else:
            raise DatasetError(f"{root}: exists but is not a synthetic dataset; remove it or pick "
                               f"another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        generate(tmp, seed, n_defective, n_good)
        (tmp / "COMPLETE").write_text(json.dumps(marker) + "\n")
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_complete(root, marker):  # another process finished first
            return root
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def load_synthetic(seed: int = 0, root: Path | str | None = None, n_defective: int = N_DEFECTIVE,
                   n_good: int = N_GOOD) -> Dataset:
    from . import folder

    path = ensure_synthetic(seed, root, n_defective, n_good)
    ds = folder.load(path, name="synthetic" if seed == 0 else f"synthetic-seed{seed}",
                     fmt="synthetic")
    meta = {**ds.meta, "generator": GENERATOR_VERSION, "seed": seed}
    return Dataset(name=ds.name, root=ds.root, format=ds.format, records=ds.records,
                   folds=ds.folds, meta=meta)
