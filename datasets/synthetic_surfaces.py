"""Surfaces and their defects in the embedded default dataset (``datasets.synthetic``): how each
surface family is textured, how each defect category is drawn on it, and the catalogue (objects,
categories, area ranges, folds)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import synthetic_families as F
from .synthetic_marks import (Canvas, Mark, blob, contrast, crack, fill, grey, jitter, line_for_area, paint, pit_cluster,
                              smooth_noise, tint)


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

BASE_EXTRA_GOOD = 20  # defect-free images per object of the wider base fold (normal episodes)


@dataclass(frozen=True)
class DefectKind:
    """A defect category: area range (fraction of the image) and the function that draws it."""

    name: str
    area_range: tuple[float, float]
    draw: Callable[[Canvas, float], None]


@dataclass(frozen=True)
class Surface:
    """An object: its texture, defect categories, the share of its images rendered grey (a
    monochrome camera) and a cap on its defect-free images (``None``: the dataset's count)."""

    name: str
    texture: Callable[[Canvas], None]
    defects: tuple[DefectKind, ...]
    grey_share: float = 0.0
    max_good: int | None = None


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
    # The wider base fold (issue 22): appended after the six above, whose indices seed their
    # images' random streams, so the novel fold stays byte-identical.
    *(Surface(name, texture, defects, grey_share=share, max_good=BASE_EXTRA_GOOD)
      for name, texture, share, defects in (
        ("ground_metal", F.ground_metal, 0.0, (
            DefectKind("scratch", (1e-4, 0.012), F.kind(F.line_defect, lo=6, hi=40)),
            DefectKind("dent", (3e-4, 0.03), F.kind(F.dent, lo=6, hi=40)),
            DefectKind("pits", (5e-5, 0.003), F.kind(F.pits, lo=15, hi=70)))),
        ("galvanised_steel", F.galvanised_steel, 0.0, (
            DefectKind("rust_stain", (3e-4, 0.08), F.kind(F.discolour, lo=0.08, hi=0.5)),
            DefectKind("scratch", (1e-4, 0.01), F.kind(F.line_defect, lo=8, hi=50, bright_share=0.3)),
            DefectKind("dross", (1e-4, 0.01), F.kind(F.spots, lo=10, hi=50)))),
        ("leather", F.leather, 0.3, (
            DefectKind("cut", (1e-4, 0.01), F.kind(F.line_defect, lo=15, hi=60, bright_share=0.2,
                                                   width=(1.5, 4.0))),
            DefectKind("stain", (3e-4, 0.1), F.kind(F.discolour, lo=0.06, hi=0.4)),
            DefectKind("puncture", (6e-5, 0.004), F.puncture))),
        ("concrete", F.concrete, 0.0, (
            DefectKind("crack", (1e-4, 0.015), F.kind(F.crack_defect, lo=20, hi=70)),
            DefectKind("spall", (5e-4, 0.06), F.chip),
            DefectKind("efflorescence", (5e-4, 0.08), F.kind(F.discolour, lo=0.05, hi=0.3)))),
        ("ceramic_tile", F.ceramic_tile, 0.3, (
            DefectKind("crack", (1e-4, 0.012), F.kind(F.crack_defect, lo=15, hi=80)),
            DefectKind("chip", (1e-4, 0.02), F.chip),
            DefectKind("glaze_spots", (5e-5, 0.004), F.kind(F.spots, lo=10, hi=60)))),
        ("moulded_plastic", F.moulded_plastic, 0.3, (
            DefectKind("sink_mark", (3e-4, 0.04), F.kind(F.dent, lo=4, hi=25)),
            DefectKind("scratch", (1e-4, 0.01), F.kind(F.line_defect, lo=6, hi=40)),
            DefectKind("black_specks", (5e-5, 0.003), F.kind(F.pits, lo=20, hi=90, count=8, bright_share=0.0)))),
        ("glass", F.glass, 0.5, (
            DefectKind("bubble", (5e-5, 0.004), F.kind(F.blister, lo=8, hi=40)),
            DefectKind("scratch", (5e-5, 0.008), F.kind(F.line_defect, lo=4, hi=30, width=(1.0, 2.0),
                                                         bright_share=0.5)),
            DefectKind("inclusion", (3e-5, 0.002), F.kind(F.pits, lo=20, hi=90, count=2)))),
        ("carbon_weave", F.carbon_weave, 0.0, (
            DefectKind("fibre", (5e-5, 0.003), F.fibre),
            DefectKind("dry_spot", (3e-4, 0.05), F.kind(F.discolour, lo=0.1, hi=0.5)),
            DefectKind("crack", (1e-4, 0.012), F.kind(F.crack_defect, lo=10, hi=50)))),
        ("paper", F.paper, 0.3, (
            DefectKind("hole", (5e-5, 0.01), F.puncture),
            DefectKind("fibre", (5e-5, 0.003), F.fibre),
            DefectKind("water_mark", (5e-4, 0.1), F.kind(F.discolour, lo=0.04, hi=0.25)),
            DefectKind("crease", (1e-4, 0.01), F.kind(F.line_defect, lo=4, hi=25, width=(1.5, 4.0),
                                                      wiggle=0.001, reach=0.9)))),
        ("rubber", F.rubber, 0.0, (
            DefectKind("blister", (1e-4, 0.01), F.kind(F.blister, lo=8, hi=35)),
            DefectKind("cut", (1e-4, 0.01), F.kind(F.line_defect, lo=8, hi=40, bright_share=0.7)),
            DefectKind("contamination", (5e-5, 0.005), F.kind(F.spots, lo=15, hi=80)))),
        ("printed_label", F.printed_label, 0.3, (
            DefectKind("missing_print", (5e-5, 0.006), F.missing_print),
            DefectKind("smear", (2e-4, 0.02), F.smear),
            DefectKind("spots", (3e-5, 0.003), F.kind(F.spots, lo=20, hi=90)))),
        ("perforated_sheet", F.perforated_sheet, 0.0, (
            DefectKind("blocked_hole", (5e-5, 0.004), F.blocked_hole),
            DefectKind("dent", (3e-4, 0.03), F.kind(F.dent, lo=8, hi=45)),
            DefectKind("scratch", (1e-4, 0.01), F.kind(F.line_defect, lo=8, hi=45)))),
    )),
)
FOLDS = {"base": ("brushed_metal", "woven_fabric", "wood", *(s.name for s in SURFACES[6:])),
         "novel": ("pcb", "cast_surface", "painted_panel")}
