"""Dataset container, image/mask readers and the format-detecting loader.

Every on-disk format has one adapter module in this package. An adapter exposes
``detect(root: Path) -> bool`` and ``load(root: Path) -> Dataset``; ``load_dataset`` tries
them in a fixed order (most specific layout first) so that a folder is read by exactly one
adapter. The ``Dataset`` it returns is a flat tuple of ``ImageRecord`` plus the fold
definitions of the format; nothing here knows about episodes or methods.
"""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from harness.io import short_error
from harness.records import ImageRecord

from . import formats
from .formats import ADAPTERS  # detection order (re-exported)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")

# Everything PIL raises for a file it cannot decode: truncated or foreign bytes, and a decompression
# bomb (a small file declaring more than 2 x Image.MAX_IMAGE_PIXELS pixels).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError,
                 Image.DecompressionBombError)
# EXIF orientations 5-8 are 90-degree turns: the displayed width is the stored height.
_TURNED_ORIENTATIONS = (5, 6, 7, 8)



class DatasetError(Exception):
    """A problem with the user's data, reported as one line naming the file."""


@dataclass(frozen=True)
class Dataset:
    """All image records of one dataset, with the folds its format defines.

    ``folds`` maps a fold name (``"base"``, ``"split_0:test"`` ...) to object names; it is empty
    when the format has none. ``meta`` holds adapter facts worth recording in provenance
    (rasterizer, counts of skipped files ...).
    """

    name: str
    root: Path
    format: str
    records: tuple[ImageRecord, ...]
    folds: dict[str, tuple[str, ...]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def classes(self) -> list[tuple[str, str]]:
        """Sorted ``(object, category)`` pairs that have at least one defective record."""
        return sorted({(r.object, r.category) for r in self.records if not r.is_normal})

    def objects(self) -> list[str]:
        return sorted({r.object for r in self.records})

    def by_id(self) -> dict[str, ImageRecord]:
        return {r.image_id: r for r in self.records}

    def defective(self, obj: str, category: str) -> list[ImageRecord]:
        return [r for r in self.records
                if not r.is_normal and r.object == obj and r.category == category]

    def normals(self, obj: str) -> list[ImageRecord]:
        return [r for r in self.records if r.is_normal and r.object == obj and r.category == "good"]


# --------------------------------------------------------------------------- files


def list_images(folder: Path, log: "SkipLog | None" = None) -> list[Path]:
    """Image files directly in ``folder`` (not recursive), sorted by name.

    Only regular files (or links to them) are listed: a FIFO, socket or device named ``*.png``
    would block or fail the reader. Those are left out with their kind, in ``log`` (reason
    ``special_files``) when one is given; callers without a log hit the same refusal in
    ``image_size`` / ``read_image``.
    """
    if not folder.is_dir():
        return []
    images = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        kind = special_kind(path)
        if kind is None:
            images.append(path)
        elif log is not None and kind != "folder":
            log.skip("special_files", path, f"not a regular file ({kind})")
    return images


def special_kind(path: Path) -> str | None:
    """``None`` for a regular file (or a link to one), else what it is: "FIFO", "socket", "device",
    "folder" or "broken link". Reads no data, so a FIFO does not block."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "broken link" if os.path.islink(path) else "missing"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file"


def regular_file(path: Path, what: str) -> None:
    """Refuse (``DatasetError``) an image or mask path that is not a regular file, before opening it
    (opening a FIFO blocks forever)."""
    kind = special_kind(path)
    if kind is not None and kind != "missing":
        raise DatasetError(f"{path}: {what} is not a regular file ({kind})")


def resolve_link_stub(path: Path) -> Path:
    """Follow a symlink that a checkout stored as a small text file holding the target path.

    Real symlinks need nothing (the OS follows them); this handles copies made with
    ``core.symlinks=false`` or by tools that do not keep links, where the file content is the
    relative target (``../../images/EL100_33.jpg``).
    """
    try:
        info = path.stat()
        if path.is_symlink() or not stat.S_ISREG(info.st_mode) or info.st_size > 1024:
            return path  # a FIFO is never read here: reading it would block
        text = path.read_bytes()
    except OSError:
        return path
    try:
        target_text = text.decode("utf-8").strip()
    except UnicodeDecodeError:
        return path
    if not target_text or "\n" in target_text or "\0" in target_text:
        return path
    target = (path.parent / target_text)
    if target.is_file() and target != path:
        return Path(os.path.normpath(target))
    return path


def find_mask(mask_dir: Path, stem: str, suffixes: tuple[str, ...] = ("", "_mask")) -> Path | None:
    """Mask of image ``stem`` in ``mask_dir``: ``<stem><suffix>.<ext>`` for the given suffixes."""
    for tail in suffixes:
        for ext in MASK_SUFFIXES:
            candidate = mask_dir / f"{stem}{tail}{ext}"
            if candidate.exists() and not candidate.is_dir():  # a FIFO is refused by its reader
                return candidate
    return None


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` as displayed (after the EXIF orientation), from the file header only."""
    try:
        regular_file(Path(path), "image")
        with Image.open(path) as img:
            width, height = img.size
            if _header_orientation(img) in _TURNED_ORIENTATIONS:
                return height, width
            return width, height
    except DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: unreadable image ({_short(exc)})") from None


def _header_orientation(img: Image.Image) -> int | None:
    """EXIF orientation known from the header (PNG's ``getexif`` would decode the pixels)."""
    if img.format == "PNG":
        raw = img.info.get("exif")
        if not raw:
            return None
        exif = Image.Exif()
        exif.load(raw)
        return exif.get(0x0112)
    return img.getexif().get(0x0112)


def mask_pixel_count(path: Path, mask_value: int | None = None) -> int:
    """Number of pixels of the class in a mask file (used to drop empty masks)."""
    return int(class_pixels(load_mask_values(Path(path)), mask_value).sum())


def object_dirs(root: Path, is_object) -> list[Path]:
    """``[root]`` when ``root`` itself is one object folder, else its child folders that are."""
    root = Path(root)
    if is_object(root):
        return [root]
    return [c for c in sorted(root.iterdir()) if c.is_dir() and is_object(c)]


def defect_image_size(image: Path, mask: Path, log: "SkipLog",
                      empty_problem: str = "empty mask") -> tuple[int, int] | None:
    """``(width, height)`` of a defect image whose mask has defect pixels; ``None`` after logging
    why the pair is left out (empty mask, unreadable file)."""
    try:
        width, height = image_size(image)
        if mask_pixel_count(mask) == 0:
            log.skip("empty_masks", mask, empty_problem)
            return None
    except DatasetError as exc:
        log.skip("unreadable_files", image, str(exc))
        return None
    return width, height


def _short(exc: Exception) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return "decompression bomb: " + str(exc).split(" pixels")[0].replace("Image size ", "") + " pixels declared"
    return short_error(exc, 120)


# --------------------------------------------------------------------------- readers


def read_image(record: ImageRecord) -> np.ndarray:
    """Image as uint8 RGB ``[H, W, 3]`` as displayed: the EXIF orientation is applied, and grey,
    RGBA, palette and 16-bit files are converted."""
    path = resolve_link_stub(Path(record.path))
    try:
        regular_file(path, "image")
        with Image.open(path) as img:
            img.load()
            return _to_rgb8(ImageOps.exif_transpose(img))
    except DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: unreadable image ({_short(exc)})") from None


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "1", "PA", "La", "RGBa"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    # 16-bit / 32-bit integer or float single-channel images: scale to 0..255.
    arr = np.asarray(img).astype(np.float64)
    if arr.ndim == 3:
        arr = arr[..., 0]
    top = float(arr.max(initial=0))
    if img.mode == "F":
        scale = 1.0 if top <= 1.0 else (255.0 if top <= 255 else top)
    else:
        scale = 255.0 if top <= 255 else 65535.0
    grey = np.clip(np.round(arr / scale * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


# Mask semantics, stated once (README "Datasets" repeats it). A mask file is read as its stored
# values (``load_mask_values``), then a class map is made of them (``class_pixels``):
#   binary     two levels (0 and one value: 0/1, 0/255, 0/1000, 0/65535; 1-bit files) -> any non-zero
#   class ids  more than two levels, none above half the range (0/1/2 ...)          -> any non-zero,
#              or, in formats whose ids name classes (VisA, Defect Spectrum), one record per id
#              (``ImageRecord.mask_value``): ``values == id``
#   graded     more than two levels reaching above half the range (anti-aliased, JPEG-noisy)
#              -> above half the range: > 127 when the values fit 8 bits (16-bit files too), else > 32767
#   palette    a coloured palette's indices are class ids (index 0 or the black entry = background);
#              a grey palette is read as its grey values
#   colour     RGB: a pixel is marked if any channel is, then the rules above
MASK_KINDS = ("binary", "class ids", "graded")


def load_mask_values(path: Path) -> np.ndarray:
    """Mask file as a 2-D integer array of its stored values (palette indices stay indices),
    turned by its EXIF orientation like the images."""
    path = Path(path)
    try:
        regular_file(path, "mask")
        with Image.open(path) as opened:
            opened.load()
            img = ImageOps.exif_transpose(opened)
            if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
                # Colour masks (red on black ...): a pixel is marked if any channel is.
                arr = np.asarray(img.convert("RGB")).max(axis=2)
            elif img.mode in ("1", "LA"):
                arr = np.asarray(img.convert("L"))
            elif img.mode == "P":
                arr = _palette_values(img, path)
            else:
                arr = np.asarray(img)
    except DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: unreadable mask ({_short(exc)})") from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr


def _palette_values(img: Image.Image, path: Path) -> np.ndarray:
    """A palette mask's values: the grey levels of a grey palette, else the indices as class ids
    with the background (the black entry, else index 0) as 0."""
    index = np.asarray(img)
    palette = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    palette = np.vstack([palette, np.zeros((max(0, 256 - len(palette)), 3), np.uint8)])
    used = np.unique(index)
    colours = palette[used]
    if (colours == colours[:, :1]).all():
        return palette[index, 0]
    black = used[~colours.any(axis=1)]
    if black.size == 0 or black.tolist() == [0]:
        return index
    if used[0] == 0 and colours[0].any():
        raise DatasetError(f"{path}: palette mask with a coloured index 0 and black index "
                           f"{int(black[0])}: cannot tell the background")
    return np.where(np.isin(index, black), 0, index).astype(index.dtype)


def mask_levels(arr: np.ndarray) -> np.ndarray:
    """The distinct values of a mask, ascending (a histogram for 8/16-bit values: no sort)."""
    if arr.dtype.kind in "ui" and arr.size and int(arr.min()) >= 0 and int(arr.max()) <= 65535:
        return np.flatnonzero(np.bincount(arr.ravel()))
    return np.unique(arr)


def mask_kind(arr: np.ndarray) -> str:
    """How a mask's values are read when no class id is given: one of ``MASK_KINDS``."""
    top = int(arr.max(initial=0))
    if top <= 0 or not np.any((arr != 0) & (arr != top)):  # every non-zero value is the top one
        return "binary"
    return "graded" if top > _half_range(top) else "class ids"


def _half_range(top: int) -> int:
    return 127 if top <= 255 else 32767


def class_pixels(arr: np.ndarray, mask_value: int | None) -> np.ndarray:
    """Boolean class map of a mask's values (the rules above ``MASK_KINDS``):

    * ``mask_value`` given (formats whose ids name classes): ``arr == mask_value``;
    * binary or class ids: any non-zero pixel;
    * graded: above half the range, ``> 127`` when its largest value fits 8 bits, else ``> 32767``.
    """
    if mask_value is not None:
        return arr == mask_value
    if mask_kind(arr) != "graded":
        return arr > 0
    return arr > _half_range(int(arr.max()))


def mask_ids(arr: np.ndarray) -> list[int]:
    """The non-zero values of a class-id mask, ascending."""
    return [int(v) for v in mask_levels(arr) if v > 0]


def read_mask(record: ImageRecord) -> np.ndarray:
    """Class mask as bool ``[H, W]``; all False for a normal record."""
    if record.mask_path is None:
        return np.zeros((record.height, record.width), dtype=bool)
    path = Path(record.mask_path)
    arr = load_mask_values(path)
    width, height = record.width, record.height
    if width <= 0 or height <= 0:
        width, height = image_size(resolve_link_stub(Path(record.path)))
    if arr.shape != (height, width):
        raise DatasetError(f"{path}: mask is {arr.shape[1]}x{arr.shape[0]}, image {record.path} is "
                           f"{width}x{height}")
    return class_pixels(arr, record.mask_value)


# --------------------------------------------------------------------------- loading


_adapter = formats.adapter


def detect_format(root: Path) -> str:
    """Name of the first adapter whose ``detect`` accepts ``root``."""
    for name in ADAPTERS:
        if _adapter(name).detect(root):
            return name
    raise DatasetError(f"{root}: no known dataset layout (tried {', '.join(ADAPTERS)}); "
                       f"expected e.g. <root>/<category>/images + masks, MVTec, VISION COCO, "
                       f"Defect Spectrum or SOFS open-domain folders")


def locate_dataset(spec: str, fmt: str = "auto") -> tuple[Path, str] | None:
    """A dataset folder and its format (detected for ``auto``), or a DatasetError: what the command
    line checks before it imports torch or Ray. None for the embedded default (``synthetic[:seed]``)."""
    spec = str(spec)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return None
    root = Path(spec).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: dataset path does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset path is not a folder")
    if fmt == "auto":
        return root, detect_format(root)
    if fmt not in ADAPTERS:
        raise DatasetError(f"{root}: unknown format {fmt!r} (known: {', '.join(ADAPTERS)})")
    return root, fmt


def load_dataset(spec: str, fmt: str = "auto", follow_links: bool = False) -> Dataset:
    """Load a dataset from a path, or the embedded default with ``spec="synthetic"``.

    ``synthetic`` and ``synthetic:<seed>`` generate (once, cached) and read the procedural
    dataset of ``datasets.synthetic``. Records whose image or mask resolves (through a symlink, a
    link stub or a ``..`` path in an index file) outside the dataset root are left out with their
    reason, unless ``follow_links``.
    """
    spec = str(spec)
    located = locate_dataset(spec, fmt)
    if located is None:
        seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return formats.generator("synthetic")(seed=seed)
    root, fmt = located
    dataset = distinct_image_ids(_adapter(fmt).load(root))
    return dataset if follow_links else inside_root(dataset)


def distinct_image_ids(dataset: Dataset) -> Dataset:
    """One image id per image file. Adapters name an image by its stem, so ``d1.png`` and ``d1.jpg``
    in one folder would share an id (one evaluated twice, the other never): such ids get the file's
    extension (``.../d1.png``, ``.../d1.jpg``), or, if that still clashes, ``@<path under the root>``.
    Listed in ``meta["renamed_ids"]`` (``{"path", "image_id"}``); other ids are unchanged."""
    paths_by_id: dict[str, set[str]] = {}
    for record in dataset.records:
        paths_by_id.setdefault(record.image_id, set()).add(record.path)
    clashing = {image_id for image_id, paths in paths_by_id.items() if len(paths) > 1}
    if not clashing:
        return dataset
    renamed = {}
    for image_id in sorted(clashing):
        paths = sorted(paths_by_id[image_id])
        ids = [f"{image_id}{Path(p).suffix}" for p in paths]
        if len(set(ids)) < len(ids):
            ids = [f"{image_id}@{_relative(p, dataset.root)}" for p in paths]
        renamed.update({(image_id, p): new for p, new in zip(paths, ids)})
    records = tuple(replace(r, image_id=renamed[(r.image_id, r.path)]) if r.image_id in clashing else r
                    for r in dataset.records)
    listed = sorted({(p, new) for (_, p), new in renamed.items()})
    meta = {**dataset.meta, "renamed_ids": [{"path": p, "image_id": new} for p, new in listed]}
    return replace(dataset, records=records, meta=meta)


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def outside_root(path: Path | str, root: Path) -> Path | None:
    """Where ``path`` really leads when that is outside ``root`` (after links and stubs), else ``None``."""
    real = Path(os.path.realpath(resolve_link_stub(Path(path))))
    real_root = Path(os.path.realpath(root))
    return None if real == real_root or real_root in real.parents else real


def inside_root(dataset: Dataset) -> Dataset:
    """``dataset`` without the records whose image or mask leads outside its root (logged as skipped)."""
    kept, log = [], SkipLog()
    for record in dataset.records:
        for path in (record.path, record.mask_path):
            target = outside_root(path, dataset.root) if path else None
            if target is not None:
                log.skip("outside_root", path, f"leads outside the dataset root to {target} "
                                               "(refused; --follow-links reads it)")
                break
        else:
            kept.append(record)
    if not log.items:
        return dataset
    meta = dict(dataset.meta)
    meta["skipped"] = [*meta.get("skipped", []), *log.items]
    meta["skipped_outside_root"] = len(log.items)
    return replace(dataset, records=tuple(kept), meta=meta)


class SkipLog:
    """Records an adapter leaves out, by reason, for ``Dataset.meta`` and ``check``.

    ``meta()`` has ``skipped_<reason>`` counts (always ``skipped_empty_masks``) and ``skipped``,
    a list of ``{"path", "problem", "reason"}`` dicts.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {"empty_masks": 0}
        self.items: list[dict[str, str]] = []

    def skip(self, reason: str, path: Path | str, problem: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        prefix = f"{path}: "
        problem = problem[len(prefix):] if problem.startswith(prefix) else problem
        self.items.append({"path": str(path), "problem": problem, "reason": reason})

    def meta(self) -> dict:
        out: dict = {f"skipped_{reason}": n for reason, n in self.counts.items()}
        out["skipped"] = list(self.items)
        return out
