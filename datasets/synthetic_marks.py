"""Drawing kit of the embedded default dataset (``datasets.synthetic``): smooth noise, the canvas,
defect shapes (blobs, strokes, cracks, pits) and how they are painted into an image."""
from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
from PIL import Image

WIDTH, HEIGHT = 1024, 768  # image size of the embedded default


# --------------------------------------------------------------------------- noise


class NoiseBank:
    """One large white-noise field per seed; images read random windows of it (cheap, varied)."""

    def __init__(self, seed: int, height: int = 3 * HEIGHT // 2, width: int = 3 * WIDTH // 2):
        rng = np.random.default_rng([seed, 9_999])
        self.field = rng.standard_normal((height, width), dtype=np.float32)

        self.seed = seed
        self.smooth_fields: dict[tuple[float, float], np.ndarray] = {}

    @staticmethod
    def _window(field: np.ndarray, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        oy = int(rng.integers(0, field.shape[0] - h + 1))
        ox = int(rng.integers(0, field.shape[1] - w + 1))
        return field[oy:oy + h, ox:ox + w]

    def take(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        """Read-only ``[h, w]`` window of unit-variance white noise."""
        return self._window(self.field, rng, h, w)

    def smooth(self, rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float) -> np.ndarray:
        """Read-only ``[h, w]`` window of band-limited noise (std ~1, correlation lengths
        ``cell_y`` x ``cell_x``). Fields are made once per cell size, from the bank's own seed,
        so the bytes do not depend on the order images are drawn in."""
        key = (float(cell_y), float(cell_x))
        if key not in self.smooth_fields:
            big_h, big_w = self.field.shape
            field_rng = np.random.default_rng([self.seed, 4_242, int(cell_y * 100), int(cell_x * 100)])
            low = field_rng.standard_normal((int(big_h / cell_y) + 3, int(big_w / cell_x) + 3),
                                            dtype=np.float32)
            img = Image.fromarray(low, mode="F").resize((big_w, big_h), Image.BICUBIC)
            field = np.asarray(img, dtype=np.float32)
            self.smooth_fields[key] = field / np.float32(field.std() + 1e-6)
        return self._window(self.smooth_fields[key], rng, h, w)


def smooth_noise(cv: "Canvas", cell_y: float, cell_x: float) -> np.ndarray:
    return cv.bank.smooth(cv.rng, cv.h, cv.w, cell_y, cell_x)


@dataclass
class Canvas:
    """Image being drawn: ``rgb`` float32 ``[3, H, W]`` (channel-first: fast whole-image arithmetic)
    in 0..255, class ``mask`` bool ``[H, W]``."""

    rng: np.random.Generator
    bank: NoiseBank
    h: int
    w: int
    rgb: np.ndarray | None = None
    mask: np.ndarray | None = None
    aux: dict | None = None


@dataclass
class Mark:
    """A defect footprint: local bool mask ``m`` and interior weight ``core`` (1 centre, 0 edge)
    inside the window ``sl`` of the image."""

    sl: tuple[slice, slice]
    m: np.ndarray
    core: np.ndarray


# --------------------------------------------------------------------------- shapes


def _centre(rng, cv: Canvas, ext: float) -> tuple[float, float]:
    my, mx = min(ext, cv.h * 0.3), min(ext, cv.w * 0.3)
    return rng.uniform(my, cv.h - my), rng.uniform(mx, cv.w - mx)


def blob(cv: Canvas, area_px: float, aspect: float = 1.0, roughness: float = 0.2,
         centre: tuple[float, float] | None = None) -> Mark:
    """Irregular ellipse of about ``area_px`` pixels: radius perturbed by harmonics 2..5."""
    rng = cv.rng
    r = math.sqrt(max(area_px, 1.0) / math.pi)
    a, b = r * math.sqrt(aspect), r / math.sqrt(aspect)
    ext = max(a, b) * (1 + 1.5 * roughness) + 2
    cy, cx = centre if centre is not None else _centre(rng, cv, ext)
    y0, y1 = max(0, int(cy - ext)), min(cv.h, int(cy + ext) + 2)
    x0, x1 = max(0, int(cx - ext)), min(cv.w, int(cx + ext) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    yy -= cy
    xx -= cx
    angle = rng.uniform(0, math.pi)
    u = (xx * math.cos(angle) + yy * math.sin(angle)) / a
    v = (-xx * math.sin(angle) + yy * math.cos(angle)) / b
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    edge = np.ones_like(rho)
    for k in range(2, 6):
        edge += roughness * rng.uniform(0.3, 1.0) / k * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    edge = np.maximum(edge, 0.3)
    m = rho < edge
    if not m.any():
        m[min(int(cy) - y0, m.shape[0] - 1), min(int(cx) - x0, m.shape[1] - 1)] = True
    core = np.clip(1.0 - rho / edge, 0.0, 1.0)
    return Mark((slice(y0, y1), slice(x0, x1)), m, core)


def stroke(cv: Canvas, length: float, width: float, angle: float, wiggle: float = 0.004,
           jag: float = 0.0, start: tuple[float, float] | None = None) -> Mark:
    """Thin curve (scratch, crack, yarn) of ``length`` px and max ``width`` px, tapered ends.

    Heading = ``angle`` + random walk (``wiggle`` rad/px) + per-pixel jitter ``jag``.
    """
    rng = cv.rng
    n = max(2, int(length))
    heading = angle + np.cumsum(rng.normal(0, wiggle, n)) + jag * rng.normal(0, 1, n)
    if start is None:
        cy, cx = _centre(rng, cv, min(length / 2, 40))
        start = (cy - math.sin(angle) * length / 2, cx - math.cos(angle) * length / 2)
    py = start[0] + np.cumsum(np.sin(heading))
    px = start[1] + np.cumsum(np.cos(heading))
    t = np.linspace(0, 1, n)
    radius = np.maximum(width / 2 * np.sin(np.pi * t) ** 0.35, 0.5)
    reach = int(math.ceil(width / 2))
    oy, ox = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    od = np.hypot(oy, ox).ravel()
    keep = od[None, :] <= radius[:, None] + 0.05
    ys = (np.rint(py)[:, None] + oy.ravel()[None, :])[keep].astype(np.int64)
    xs = (np.rint(px)[:, None] + ox.ravel()[None, :])[keep].astype(np.int64)
    core = (1.0 - od[None, :] / (radius[:, None] + 0.5))[keep].astype(np.float32)
    inside = (ys >= 0) & (ys < cv.h) & (xs >= 0) & (xs < cv.w)
    ys, xs, core = ys[inside], xs[inside], core[inside]
    if ys.size == 0:  # walked off the image: fall back to a dot in the middle
        return blob(cv, max(width, 1.0) ** 2, centre=(cv.h / 2, cv.w / 2))
    y0, x0 = int(ys.min()), int(xs.min())
    shape = (int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1)
    m = np.zeros(shape, dtype=bool)
    m[ys - y0, xs - x0] = True
    local_core = np.zeros(shape, dtype=np.float32)
    np.maximum.at(local_core, (ys - y0, xs - x0), core)
    return Mark((slice(y0, y0 + shape[0]), slice(x0, x0 + shape[1])), m, local_core)


def union(marks: list[Mark]) -> Mark:
    y0 = min(mk.sl[0].start for mk in marks)
    y1 = max(mk.sl[0].stop for mk in marks)
    x0 = min(mk.sl[1].start for mk in marks)
    x1 = max(mk.sl[1].stop for mk in marks)
    m = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    core = np.zeros(m.shape, dtype=np.float32)
    for mk in marks:
        sl = (slice(mk.sl[0].start - y0, mk.sl[0].stop - y0),
              slice(mk.sl[1].start - x0, mk.sl[1].stop - x0))
        m[sl] |= mk.m
        core[sl] = np.maximum(core[sl], np.where(mk.m, mk.core, 0))
    return Mark((slice(y0, y1), slice(x0, x1)), m, core)


def line_for_area(cv: Canvas, area_px: float, width: float, angle: float, max_len: float,
                  **kw) -> Mark:
    """A stroke whose length x mean width is about ``area_px`` (widened when too long)."""
    length = area_px / (0.85 * width)
    if length > max_len:
        width, length = area_px / (0.85 * max_len), max_len
    return stroke(cv, max(length, 3.0), width, angle, **kw)


def crack(cv: Canvas, area_px: float, angle: float) -> Mark:
    rng = cv.rng
    width = rng.uniform(1.0, 2.6)
    main = line_for_area(cv, area_px * 0.75, width, angle, 0.8 * cv.w, wiggle=0.01, jag=0.25)
    ys, xs = np.nonzero(main.m)
    pick = int(rng.integers(0, ys.size))
    origin = (ys[pick] + main.sl[0].start, xs[pick] + main.sl[1].start)
    side = angle + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0)
    branch = line_for_area(cv, area_px * 0.25, max(width * 0.7, 1.0), side, 0.4 * cv.w,
                           wiggle=0.02, jag=0.3, start=origin)
    return union([main, branch])


def pit_cluster(cv: Canvas, area_px: float, max_count: int = 5, roughness: float = 0.15) -> Mark:
    rng = cv.rng
    count = int(rng.integers(1, max_count + 1))
    cy, cx = _centre(rng, cv, 60)
    spread = 6 + math.sqrt(area_px) * 1.5
    marks = []
    for share in rng.dirichlet(np.ones(count) * 2.0):
        at = (float(np.clip(cy + rng.normal(0, spread), 2, cv.h - 3)),
              float(np.clip(cx + rng.normal(0, spread), 2, cv.w - 3)))
        marks.append(blob(cv, area_px * share, rng.uniform(1.0, 1.6), roughness, centre=at))
    return union(marks)


# --------------------------------------------------------------------------- painting


def contrast(rng, lo: float, hi: float) -> float:
    """Defect strength in grey levels, log-uniform so subtle and clear defects both occur."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def paint(cv: Canvas, mark: Mark, delta, floor: float = 0.55, power: float = 1.0) -> None:
    """Add ``delta`` (grey levels, scalar or RGB) inside the mark, stronger in its core."""
    weight = floor + (1 - floor) * mark.core[mark.m] ** power
    region = cv.rgb[(slice(None), *mark.sl)]
    region[:, mark.m] += np.asarray(delta, dtype=np.float32).reshape(-1, 1) * weight[None, :]
    cv.mask[mark.sl] |= mark.m


def tint(cv: Canvas, mark: Mark, factor_rgb, floor: float = 0.45) -> None:
    """Multiply colours toward ``factor_rgb`` inside the mark (stains, discolouration)."""
    weight = floor + (1 - floor) * np.sqrt(mark.core[mark.m])
    region = cv.rgb[(slice(None), *mark.sl)]
    factor = np.asarray(factor_rgb, dtype=np.float32).reshape(3, 1)
    region[:, mark.m] *= 1 - weight[None, :] * (1 - factor)
    cv.mask[mark.sl] |= mark.m


def fill(cv: Canvas, mark: Mark, colour, strength: float) -> None:
    """Blend the mark toward a flat ``colour`` (PCB copper/substrate) by ``strength``."""
    region = cv.rgb[(slice(None), *mark.sl)]
    target = np.asarray(colour, dtype=np.float32).reshape(3, 1)
    region[:, mark.m] += np.float32(strength) * (target - region[:, mark.m])
    cv.mask[mark.sl] |= mark.m


def grey(value: np.ndarray, colour) -> np.ndarray:
    """Luminance ``[H, W]`` (about 0..255) times an RGB colour ratio -> ``[3, H, W]``."""
    return np.asarray(colour, dtype=np.float32)[:, None, None] * value[None]


def jitter(rng, colour, amount: float = 0.04) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) * rng.uniform(1 - amount, 1 + amount, 3).astype(np.float32)
