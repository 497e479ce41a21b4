"""``bench.py datasets check``: what a dataset holds, and every problem with the file it is in.

Every image is decoded and every mask read once, so this is slower than ``load_dataset``; it is
meant to be run once on a new dataset. Problems are ``(path, "error: ...")`` or
``(path, "warning: ...")`` pairs; errors make the CLI exit non-zero.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.constants import SIZE_BIN_EDGES, size_bin_labels
from harness.records import ImageRecord

from .base import (DatasetError, class_pixels, load_dataset, load_mask_values, mask_ids, mask_kind,
                   mask_levels, read_image)

# Area-fraction bin edges, as the report's size-stratified mIoU (DESIGN.md "Metrics").
AREA_EDGES = SIZE_BIN_EDGES
AREA_BINS = tuple(size_bin_labels(AREA_EDGES))
WARNING_REASONS = {"empty_masks", "empty_folders"}


@dataclass
class CheckReport:
    spec: str
    name: str
    format: str
    n_objects: int
    classes: dict[tuple[str, str], dict[str, int]]  # (object, category) -> defective / normal
    image_size: dict[str, tuple[int, int, int]]  # "width"/"height" -> (min, median, max)
    area_frac: tuple[float, float, float] | None  # (min, median, max) over defective records
    area_bins: dict[str, int]
    problems: list[tuple[str, str]] = field(default_factory=list)
    unlabelled: int = 0  # query images without ground truth (predicted, never scored)

    @property
    def errors(self) -> list[tuple[str, str]]:
        return [p for p in self.problems if p[1].startswith("error:")]

    @property
    def has_errors(self) -> bool:
        return bool(self.errors)


def _stats(values: list[float]) -> tuple:
    arr = np.asarray(values)
    return (arr.min(), float(np.median(arr)), arr.max())


def area_bin(frac: float) -> str:
    return AREA_BINS[int(np.searchsorted(AREA_EDGES, frac, side="right"))]


class _Scanner:
    """Reads each image and mask file once, collecting sizes, areas and problems."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []
        self.image_shapes: dict[str, tuple[int, int] | None] = {}
        self.masks: dict[str, np.ndarray | None] = {}

    def error(self, path, text: str) -> None:
        self.problems.append((str(path), f"error: {text}"))

    def warning(self, path, text: str) -> None:
        self.problems.append((str(path), f"warning: {text}"))

    def image_shape(self, record: ImageRecord) -> tuple[int, int] | None:
        if record.path not in self.image_shapes:
            try:
                shape = read_image(record).shape[:2]
            except DatasetError as exc:
                self.error(record.path, str(exc).split(": ", 1)[-1])
                shape = None
            self.image_shapes[record.path] = shape
            if shape is not None and shape != (record.height, record.width):
                self.error(record.path, f"image is {shape[1]}x{shape[0]} but the dataset index "
                                        f"says {record.width}x{record.height}")
        return self.image_shapes[record.path]

    def mask_values(self, record: ImageRecord) -> np.ndarray | None:
        path = record.mask_path
        if path not in self.masks:
            try:
                values = load_mask_values(Path(path))
            except DatasetError as exc:
                self.error(path, str(exc).split(": ", 1)[-1])
                values = None
            if values is not None and record.mask_value is None:
                self._mask_reading(path, values)
            self.masks[path] = values
        return self.masks[path]

    def _mask_reading(self, path, values: np.ndarray) -> None:
        """Say how a mask that is not binary is read (``datasets.base`` mask semantics)."""
        kind = mask_kind(values)
        if kind == "graded":
            half = 127 if int(values.max()) <= 255 else 32767
            self.warning(path, f"non-binary mask, graded ({mask_levels(values).size} distinct values): defect = values > {half}")
        elif kind == "class ids":
            ids = mask_ids(values)
            shown = ", ".join(map(str, ids[:8])) + (" ..." if len(ids) > 8 else "")
            self.warning(path, f"non-binary mask, class ids ({shown}): read as one class, any non-zero pixel")

    def defect_area(self, record: ImageRecord) -> float | None:
        shape = self.image_shape(record)
        values = self.mask_values(record)
        if values is None or shape is None:
            return None
        if values.shape != shape:
            self.error(record.mask_path, f"mask is {values.shape[1]}x{values.shape[0]}, image "
                                         f"{record.path} is {shape[1]}x{shape[0]}")
            return None
        pixels = int(class_pixels(values, record.mask_value).sum())
        if pixels == 0:
            self.warning(record.mask_path, f"empty mask for class {record.class_id}")
            return None
        return pixels / float(shape[0] * shape[1])


def check_dataset(spec: str, fmt: str = "auto", follow_links: bool = False) -> CheckReport:
    """Load ``spec`` and scan every file; raises ``DatasetError`` only if nothing can be loaded."""
    ds = load_dataset(spec, fmt, follow_links=follow_links)
    scan = _Scanner()
    for item in ds.meta.get("skipped", []):
        text = f"{item['problem']} (left out)"
        if item["reason"] in WARNING_REASONS:
            scan.warning(item["path"], text)
        else:
            scan.error(item["path"], text)
    for item in ds.meta.get("renamed_ids", []):
        scan.warning(item["path"], f"another image has the same name stem: its id is {item['image_id']}")
    for image_id, n in Counter(r.image_id for r in ds.records).items():
        if n > 1:
            scan.error(image_id, f"image id used by {n} records")

    areas: list[float] = []
    defective: Counter = Counter()
    normal_per_object: Counter = Counter()
    class_dirs: dict[tuple[str, str], str] = {}
    for record in ds.records:
        if record.is_normal:
            scan.image_shape(record)
            if record.category == "good":
                normal_per_object[record.object] += 1
            continue
        key = (record.object, record.category)
        defective[key] += 1
        class_dirs.setdefault(key, str(Path(record.path).parent))
        area = scan.defect_area(record)
        if area is not None:
            areas.append(area)
    for key, n in sorted(defective.items()):
        if n < 2:
            scan.warning(class_dirs[key], f"class {key[0]}/{key[1]} has {n} image; a few-shot "
                                          f"episode needs a support different from the query")

    shapes = [s for s in scan.image_shapes.values() if s is not None]
    sizes = {"width": _stats([s[1] for s in shapes]) if shapes else (0, 0, 0),
             "height": _stats([s[0] for s in shapes]) if shapes else (0, 0, 0)}
    bins = {label: 0 for label in AREA_BINS}
    for area in areas:
        bins[area_bin(area)] += 1
    classes = {key: {"defective": n, "normal": normal_per_object[key[0]]}
               for key, n in sorted(defective.items())}
    return CheckReport(spec=str(spec), name=ds.name, format=ds.format, n_objects=len(ds.objects()),
                       classes=classes, image_size=sizes,
                       area_frac=_stats(areas) if areas else None, area_bins=bins,
                       problems=scan.problems, unlabelled=sum(not r.is_labelled for r in ds.records))


def format_check_report(report: CheckReport) -> str:
    lines = [f"dataset {report.name} ({report.spec})", f"format: {report.format}",
             f"objects: {report.n_objects}   classes: {len(report.classes)}   defective images: "
             f"{sum(c['defective'] for c in report.classes.values())}"]
    lines.append("class                                     defective  normal(object)")
    for (obj, category), counts in report.classes.items():
        lines.append(f"  {obj + '/' + category:<40} {counts['defective']:>9}  {counts['normal']:>6}")
    if report.unlabelled:
        lines.append(f"unlabelled queries: {report.unlabelled} (predicted and stored, not scored)")
    for axis in ("width", "height"):
        lo, med, hi = report.image_size[axis]
        lines.append(f"image {axis}: min {lo}  median {med:g}  max {hi}")
    if report.area_frac is not None:
        lo, med, hi = report.area_frac
        lines.append(f"defect area fraction: min {lo:.4%}  median {med:.4%}  max {hi:.4%}")
        lines.append("area bins: " + "  ".join(f"{k}: {v}" for k, v in report.area_bins.items()))
    n_err = len(report.errors)
    lines.append(f"problems: {len(report.problems)} ({n_err} errors, "
                 f"{len(report.problems) - n_err} warnings)")
    lines.extend(f"  {path}: {problem}" for path, problem in report.problems)
    return "\n".join(lines)
