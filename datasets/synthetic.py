"""Embedded default dataset: procedural industrial surfaces with small, subtle defects.

Six surfaces (three "base" objects for training, three "novel" for testing), each with two or
three defect categories suited to it. Images are 1024 x 768 RGB PNG (lossless: JPEG would blur
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
import math
import os
import shutil
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .base import Dataset, DatasetError

GENERATOR_VERSION = "synthetic-v1"
WIDTH, HEIGHT = 1024, 768
AREA_SKEW = 1.4  # > 1 piles the areas towards the small end of each category's range
PNG_LEVEL = 1  # fast zlib level; the files stay lossless


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


# --------------------------------------------------------------------------- surfaces


def _grid(cv: Canvas) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(cv.h, dtype=np.float32)[:, None], np.arange(cv.w, dtype=np.float32)[None, :])


def brushed_metal(cv: Canvas) -> None:
    rng, h, w = cv.rng, cv.h, cv.w
    lum = (rng.uniform(120, 175) + 12 * smooth_noise(cv, 1.5, 180)
           + 5 * smooth_noise(cv, 1, 25) + 10 * smooth_noise(cv, 200, 260))
    cv.rgb = grey(lum, jitter(rng, (0.98, 1.0, 1.04), 0.02))


def woven_fabric(cv: Canvas) -> None:
    """Plain weave: warp on top where the cell parity is even, weft elsewhere."""
    rng, h, w = cv.rng, cv.h, cv.w
    y, x = _grid(cv)
    pitch, skew = rng.uniform(9, 13), rng.uniform(-0.03, 0.03)
    u = (x + skew * y + rng.uniform(0, 20)) / pitch
    v = (y - skew * x + rng.uniform(0, 20)) / pitch
    warp_on_top = ((np.floor(u) + np.floor(v)) % 2) == 0
    thread = np.abs(np.where(warp_on_top, np.sin(np.float32(np.pi) * u), np.sin(np.float32(np.pi) * v)))
    slub = np.where(warp_on_top, smooth_noise(cv, 50, 5), smooth_noise(cv, 5, 50))
    lum = rng.uniform(120, 170) + 45 * (np.sqrt(thread) - 0.6) + 7 * slub
    palette = [(0.55, 0.62, 0.95), (1.05, 0.95, 0.78), (0.95, 0.95, 0.95), (0.8, 0.85, 0.6)]
    cv.rgb = grey(lum, jitter(rng, palette[int(rng.integers(len(palette)))]))
    cv.aux = {"pitch": pitch, "skew": skew}


def wood(cv: Canvas) -> None:
    """Plank grain: distorted growth rings, dark late-wood bands and fibre streaks."""
    rng, h, w = cv.rng, cv.h, cv.w
    y, x = _grid(cv)
    tilt = rng.uniform(-0.08, 0.08)
    warp = 28 * smooth_noise(cv, 150, 300) + 6 * smooth_noise(cv, 20, 80)
    phase = (y + tilt * x + warp) / rng.uniform(16, 32)
    ring = phase % 1
    late = np.clip((ring - 0.65) / 0.12, 0, 1) * np.clip((1.0 - ring) / 0.08, 0, 1)
    lum = (rng.uniform(165, 200) - 35 * late + 7 * smooth_noise(cv, 1.2, 90)
           + 6 * smooth_noise(cv, 120, 120))
    cv.rgb = grey(lum, jitter(rng, (1.0, 0.76, 0.5), 0.05))
    cv.aux = {"tilt": tilt}


def cast_surface(cv: Canvas) -> None:
    """Sand-cast metal: mottled grey with dark and bright grain speckle."""
    rng, h, w = cv.rng, cv.h, cv.w
    speckle = cv.bank.take(rng, h, w)
    lum = (rng.uniform(100, 150) + 10 * smooth_noise(cv, 70, 70)
           + 7 * smooth_noise(cv, 5, 5) + 5 * speckle
           - 22 * np.maximum(speckle - 2.0, 0) + 12 * np.maximum(-speckle - 2.3, 0))
    cv.rgb = grey(lum, jitter(rng, (1.02, 1.0, 0.96), 0.02))


def painted_panel(cv: Canvas) -> None:
    """Glossy paint: flat colour, orange-peel ripple, a soft specular band."""
    rng, h, w = cv.rng, cv.h, cv.w
    y, x = _grid(cv)
    palette = [(175, 30, 35), (30, 70, 150), (215, 215, 210), (95, 100, 105), (20, 22, 25)]
    colour = jitter(rng, palette[int(rng.integers(len(palette)))], 0.06)
    peel = 1 + 0.025 * smooth_noise(cv, 7, 7) + 0.02 * smooth_noise(cv, 160, 160)
    angle = rng.uniform(0, math.pi)
    band = (x * math.cos(angle) + y * math.sin(angle) - rng.uniform(0.2, 0.8) * (h + w) / 1.4)
    spec = rng.uniform(25, 60) * np.exp(-(band / rng.uniform(80, 200)) ** 2)
    cv.rgb = grey(peel, colour) + spec[None]


def pcb(cv: Canvas) -> None:
    """Solder-masked board: copper traces (lighter green), tinned pads, glass-weave texture."""
    rng, h, w = cv.rng, cv.h, cv.w
    y, x = _grid(cv)
    substrate = jitter(rng, (38, 95, 52), 0.08)
    copper_colour = substrate * np.float32(1.55) + np.float32(10)
    pad_colour = jitter(rng, (196, 180, 120), 0.05)
    weave = np.sin(x * 0.9) * np.sin(y * 0.9)
    lum = 1 + 0.04 * weave + 0.06 * smooth_noise(cv, 80, 80)
    copper = np.zeros((h, w), dtype=bool)
    pads = np.zeros((h, w), dtype=bool)
    traces = []
    for _ in range(int(rng.integers(18, 30))):
        width = int(rng.integers(5, 13))
        if rng.random() < 0.5:
            at, a0 = int(rng.integers(20, h - 20)) // 16 * 16, int(rng.integers(0, w - 100))
            a1 = min(w, a0 + int(rng.integers(80, 600)))
            copper[at - width // 2:at + width // 2 + 1, a0:a1] = True
            traces.append(("h", at, a0, a1, width))
            ends = [(at, a0), (at, a1 - 1)]
        else:
            at, a0 = int(rng.integers(20, w - 20)) // 16 * 16, int(rng.integers(0, h - 100))
            a1 = min(h, a0 + int(rng.integers(80, 450)))
            copper[a0:a1, at - width // 2:at + width // 2 + 1] = True
            traces.append(("v", at, a0, a1, width))
            ends = [(a0, at), (a1 - 1, at)]
        for cy, cx in ends:
            r = width * rng.uniform(1.2, 1.8)
            sl = (slice(max(0, int(cy - r)), int(cy + r) + 1), slice(max(0, int(cx - r)), int(cx + r) + 1))
            pads[sl] |= ((y[sl[0]] - cy) ** 2 + (x[:, sl[1]] - cx) ** 2) <= r * r
    for _ in range(int(rng.integers(1, 4))):  # SMD footprint: a row of rectangular pads
        cy, cx = int(rng.integers(40, h - 60)), int(rng.integers(40, w - 200))
        for k in range(int(rng.integers(4, 10))):
            pads[cy:cy + 22, cx + k * 18:cx + k * 18 + 10] = True
    rgb = np.where(copper[None], copper_colour[:, None, None], substrate[:, None, None]) * lum[None]
    cv.rgb = np.where(pads[None], pad_colour[:, None, None] * (1 + 0.05 * weave[None]), rgb)
    cv.aux = {"copper": copper | pads, "traces": traces, "substrate": substrate,
              "copper_colour": copper_colour}


# --------------------------------------------------------------------------- defects


def _stain_factor(rng) -> np.ndarray:
    """Colour multiplier of a stain: brownish (rust, oil, water) at a random, often weak, strength."""
    strength = contrast(rng, 0.12, 0.6)
    hue = rng.choice([np.array([0.15, 0.3, 0.5]), np.array([0.35, 0.35, 0.3]),
                      np.array([0.1, 0.2, 0.1])])
    return 1 - strength * hue


def scratch(cv: Canvas, area_px: float) -> None:
    rng = cv.rng
    mark = line_for_area(cv, area_px, rng.uniform(1.0, 3.0), rng.uniform(0, math.pi),
                         0.7 * cv.w, wiggle=0.003)
    paint(cv, mark, contrast(rng, 10, 45) * (1 if rng.random() < 0.7 else -1), floor=0.6)


def pit(cv: Canvas, area_px: float) -> None:
    paint(cv, pit_cluster(cv, area_px, 3), -contrast(cv.rng, 15, 60), floor=0.4, power=0.7)


def stain(cv: Canvas, area_px: float) -> None:
    rng = cv.rng
    tint(cv, blob(cv, area_px, rng.uniform(1.0, 2.5), 0.45), _stain_factor(rng))


def hole(cv: Canvas, area_px: float) -> None:
    rng = cv.rng
    mark = blob(cv, area_px, rng.uniform(1.0, 2.0), 0.5)
    fill(cv, mark, jitter(rng, (28, 26, 24), 0.2), rng.uniform(0.45, 0.95))


def broken_yarn(cv: Canvas, area_px: float) -> None:
    rng, pitch, skew = cv.rng, cv.aux["pitch"], cv.aux["skew"]
    angle = math.atan(skew) if rng.random() < 0.5 else math.pi / 2 - math.atan(skew)
    mark = line_for_area(cv, area_px, pitch * rng.uniform(0.4, 0.8), angle, 0.8 * cv.h,
                         wiggle=0.001)
    paint(cv, mark, contrast(rng, 12, 45) * (1 if rng.random() < 0.4 else -1), floor=0.6)


def wood_crack(cv: Canvas, area_px: float) -> None:
    rng = cv.rng
    mark = crack(cv, area_px, math.atan(cv.aux["tilt"]) + rng.normal(0, 0.1))
    paint(cv, mark, -contrast(rng, 25, 80), floor=0.6)


def wormhole(cv: Canvas, area_px: float) -> None:
    paint(cv, pit_cluster(cv, area_px, 6, 0.1), -contrast(cv.rng, 30, 90), floor=0.5, power=0.5)


def blowhole(cv: Canvas, area_px: float) -> None:
    paint(cv, pit_cluster(cv, area_px, 4, 0.2), -contrast(cv.rng, 20, 70), floor=0.4, power=0.6)


def cast_crack(cv: Canvas, area_px: float) -> None:
    rng = cv.rng
    paint(cv, crack(cv, area_px, rng.uniform(0, math.pi)), -contrast(rng, 15, 60), floor=0.6)


def inclusion(cv: Canvas, area_px: float) -> None:
    rng = cv.rng
    mark = blob(cv, area_px, rng.uniform(1.0, 2.0), 0.5)
    sign = 1 if rng.random() < 0.5 else -1
    paint(cv, mark, sign * contrast(rng, 10, 35) * np.array([1.0, 0.9, 0.75]), floor=0.5, power=0.5)


def bubble(cv: Canvas, area_px: float) -> None:
    """Paint blister: dulled film, bright specular cap, darker rim."""
    rng = cv.rng
    mark = pit_cluster(cv, area_px, 5, 0.05)
    level = contrast(rng, 12, 45)
    region = cv.rgb[(slice(None), *mark.sl)]
    shade = np.float32(level) * (1.4 * mark.core[mark.m] ** 1.5 - 0.4)
    region[:, mark.m] = region[:, mark.m] * np.float32(0.94) + shade[None, :]
    cv.mask[mark.sl] |= mark.m


def paint_scratch(cv: Canvas, area_px: float) -> None:
    rng = cv.rng
    mark = line_for_area(cv, area_px, rng.uniform(1.0, 2.5), rng.uniform(0, math.pi),
                         0.6 * cv.w, wiggle=0.004)
    paint(cv, mark, contrast(rng, 12, 50), floor=0.6)


def _on_copper(cv: Canvas, mark: Mark, want_copper: bool) -> Mark:
    copper = cv.aux["copper"][mark.sl]
    return Mark(mark.sl, mark.m & (copper if want_copper else ~copper), mark.core)


def _trace_point(rng, trace) -> tuple[int, int, float]:
    """A point on a trace's edge and the heading pointing away from it."""
    kind, at, a0, a1, width = trace
    pos = int(rng.integers(a0, max(a0 + 1, a1)))
    side = 1 if rng.random() < 0.5 else -1
    if kind == "h":
        return at + side * (width // 2 + 1), pos, side * math.pi / 2
    return pos, at + side * (width // 2 + 1), (0.0 if side > 0 else math.pi)


def open_circuit(cv: Canvas, area_px: float) -> None:
    rng, aux = cv.rng, cv.aux
    for _ in range(20):
        kind, at, a0, a1, width = aux["traces"][int(rng.integers(len(aux["traces"])))]
        gap = int(np.clip(area_px / width, 2, 0.8 * (a1 - a0)))
        pos = int(rng.integers(a0, max(a0 + 1, a1 - gap)))
        across = slice(max(0, at - width // 2 - 1), at + width // 2 + 2)
        sl = (across, slice(pos, pos + gap)) if kind == "h" else (slice(pos, pos + gap), across)
        window = cv.aux["copper"][sl].shape  # numpy clips the slices at the border
        mark = _on_copper(cv, Mark(sl, np.ones(window, bool), np.ones(window, np.float32)), True)
        if mark.m.any():
            fill(cv, mark, aux["substrate"], rng.uniform(0.55, 1.0))
            return
    raise RuntimeError("pcb: no trace to cut")  # unreachable with >= 18 traces


def _copper_growth(cv: Canvas, make_mark: Callable[[tuple[int, int, float]], Mark]) -> None:
    rng, aux = cv.rng, cv.aux
    for _ in range(20):
        point = _trace_point(rng, aux["traces"][int(rng.integers(len(aux["traces"])))])
        mark = _on_copper(cv, make_mark(point), False)
        if mark.m.sum() >= 4:
            fill(cv, mark, aux["copper_colour"], rng.uniform(0.5, 1.0))
            return
    raise RuntimeError("pcb: no room for a copper defect")


def short(cv: Canvas, area_px: float) -> None:
    width = cv.rng.uniform(1.5, 4.0)
    _copper_growth(cv, lambda p: line_for_area(cv, area_px, width, p[2], 0.3 * cv.h,
                                               wiggle=0.02, start=(p[0], p[1])))


def spurious_copper(cv: Canvas, area_px: float) -> None:
    r = math.sqrt(area_px / math.pi)
    _copper_growth(cv, lambda p: blob(cv, area_px, cv.rng.uniform(1, 2), 0.45,
                                      centre=(np.clip(p[0] + math.sin(p[2]) * r * 0.8, 0, cv.h - 1),
                                              np.clip(p[1] + math.cos(p[2]) * r * 0.8, 0, cv.w - 1))))


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class DefectKind:
    """A defect category: area range (fraction of the image) and the function that draws it."""

    name: str
    area_range: tuple[float, float]
    draw: Callable[[Canvas, float], None]


@dataclass(frozen=True)
class Surface:
    name: str
    texture: Callable[[Canvas], None]
    defects: tuple[DefectKind, ...]


SURFACES: tuple[Surface, ...] = (
    Surface("brushed_metal", brushed_metal, (
        DefectKind("scratch", (1e-4, 0.012), scratch),
        DefectKind("pit", (8e-5, 0.004), pit),
        DefectKind("stain", (3e-4, 0.10), stain))),
    Surface("woven_fabric", woven_fabric, (
        DefectKind("hole", (2e-4, 0.07), hole),
        DefectKind("stain", (3e-4, 0.10), stain),
        DefectKind("broken_yarn", (2e-4, 0.008), broken_yarn))),
    Surface("wood", wood, (
        DefectKind("crack", (1e-4, 0.015), wood_crack),
        DefectKind("wormhole", (8e-5, 0.005), wormhole))),
    Surface("pcb", pcb, (
        DefectKind("open_circuit", (6e-5, 0.0015), open_circuit),
        DefectKind("short", (6e-5, 0.003), short),
        DefectKind("spurious_copper", (1e-4, 0.03), spurious_copper))),
    Surface("cast_surface", cast_surface, (
        DefectKind("blowhole", (8e-5, 0.008), blowhole),
        DefectKind("crack", (1e-4, 0.015), cast_crack),
        DefectKind("inclusion", (2e-4, 0.06), inclusion))),
    Surface("painted_panel", painted_panel, (
        DefectKind("bubble", (8e-5, 0.006), bubble),
        DefectKind("scratch", (1e-4, 0.01), paint_scratch))),
)
FOLDS = {"base": ("brushed_metal", "woven_fabric", "wood"),
         "novel": ("pcb", "cast_surface", "painted_panel")}


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
    jobs = [("good", 0, i, None) for i in range(n_good)]
    for cat_index, kind in enumerate(surface.defects, start=1):
        areas = area_targets(seed, obj_index, cat_index, kind, n_defective)
        jobs += [(kind.name, cat_index, i, float(areas[i])) for i in range(n_defective)]
    return jobs


def generate(root: Path, seed: int = 0, n_defective: int = 10, n_good: int = 8,
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


def default_cache_dir(seed: int, n_defective: int = 10, n_good: int = 8) -> Path:
    base = os.environ.get("SOFS_BENCH_CACHE") or os.path.expanduser("~/.cache/sofs-bench")
    name = f"{GENERATOR_VERSION}-seed{seed}"
    if (n_defective, n_good) != (10, 8):
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


def ensure_synthetic(seed: int = 0, root: Path | str | None = None, n_defective: int = 10,
                     n_good: int = 8) -> Path:
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


def load_synthetic(seed: int = 0, root: Path | str | None = None, n_defective: int = 10,
                   n_good: int = 8) -> Dataset:
    from . import folder

    path = ensure_synthetic(seed, root, n_defective, n_good)
    ds = folder.load(path, name="synthetic" if seed == 0 else f"synthetic-seed{seed}",
                     fmt="synthetic")
    meta = {**ds.meta, "generator": GENERATOR_VERSION, "seed": seed}
    return Dataset(name=ds.name, root=ds.root, format=ds.format, records=ds.records,
                   folds=ds.folds, meta=meta)
