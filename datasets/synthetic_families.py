"""The wider base fold of the embedded default dataset (``datasets.synthetic``): twelve more surface
families and generic defect drawers, for meta-training on varied data (issue 22).

Nothing here is shaped after a real dataset: textures are common industrial materials (ground and
galvanised metal, leather, concrete, ceramic tile, moulded plastic, glass, carbon weave, paper,
rubber, printed labels, perforated sheet), each drawn at a texture scale and contrast picked per
image, in colour or grey. Defects are generic shapes (lines, cracks, pits, blobs, dents, clusters,
fibres, missing print, blocked holes) at a contrast drawn per image from a wide, often faint range.
Only the base fold uses these, so the novel fold (the evaluation data) is unchanged.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
from scipy.spatial import cKDTree

from .synthetic_marks import (Canvas, Mark, blob, contrast, crack, fill, grey, jitter, line_for_area, paint,
                              pit_cluster, smooth_noise, tint, union)


def _grid(cv: Canvas) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(cv.h, dtype=np.float32)[:, None], np.arange(cv.w, dtype=np.float32)[None, :])


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _cells(cv: Canvas, size: float, jitter_frac: float = 0.45, step: int = 2):
    """Jittered-grid Voronoi cells of about ``size`` px: (cell index, nearest distance, second
    nearest distance), each ``[H, W]``, computed at 1/``step`` resolution and repeated."""
    rng = cv.rng
    gy = np.arange(-size, cv.h + 2 * size, size)
    gx = np.arange(-size, cv.w + 2 * size, size)
    py, px = np.meshgrid(gy, gx, indexing="ij")
    pts = np.column_stack([py.ravel(), px.ravel()]) + rng.uniform(-jitter_frac, jitter_frac, (py.size, 2)) * size
    ys, xs = np.arange(0, cv.h, step) + step / 2, np.arange(0, cv.w, step) + step / 2
    qy, qx = np.meshgrid(ys, xs, indexing="ij")
    dist, idx = cKDTree(pts).query(np.column_stack([qy.ravel(), qx.ravel()]), k=2)
    shape = qy.shape

    def up(a):
        a = a.reshape(shape).repeat(step, 0).repeat(step, 1)[:cv.h, :cv.w]
        return a

    return up(idx[:, 0]), up(dist[:, 0].astype(np.float32)), up(dist[:, 1].astype(np.float32)), len(pts)


# --------------------------------------------------------------------------- surfaces


def ground_metal(cv: Canvas) -> None:
    """Surface-ground steel: fine arcs of a grinding wheel whose centre lies off the image."""
    rng = cv.rng
    y, x = _grid(cv)
    far = rng.uniform(1.5, 4.0) * max(cv.h, cv.w)
    angle = rng.uniform(0, 2 * math.pi)
    cy, cx = cv.h / 2 + far * math.sin(angle), cv.w / 2 + far * math.cos(angle)
    r = np.sqrt((y - np.float32(cy)) ** 2 + (x - np.float32(cx)) ** 2)
    period = _pick(rng, (2.5, 4.0, 7.0))
    lines = np.sin(np.float32(2 * math.pi / period) * r + 2.5 * smooth_noise(cv, 12, 12))
    amp = rng.uniform(3, 14)
    lum = (rng.uniform(110, 190) + amp * lines * (0.6 + 0.4 * smooth_noise(cv, 40, 40))
           + 4 * smooth_noise(cv, 1.5, 1.5) + 8 * smooth_noise(cv, 200, 260))
    cv.rgb = grey(lum, jitter(rng, (1.0, 1.0, 1.03), 0.02))


def galvanised_steel(cv: Canvas) -> None:
    """Hot-dip zinc: spangle cells of different brightness with a feathered grain inside."""
    rng = cv.rng
    size = _pick(rng, (45.0, 80.0, 140.0))
    idx, _, _, n = _cells(cv, size, 0.5)
    level = rng.normal(0, rng.uniform(6, 18), n).astype(np.float32)
    grain_angle = rng.uniform(0, math.pi, n).astype(np.float32)
    y, x = _grid(cv)
    a = grain_angle[idx]
    feather = np.sin((np.cos(a) * x + np.sin(a) * y) * np.float32(0.9))
    lum = rng.uniform(140, 190) + level[idx] + 3 * feather + 4 * smooth_noise(cv, 2, 2)
    cv.rgb = grey(lum, jitter(rng, (0.98, 1.0, 1.04), 0.02))


def leather(cv: Canvas) -> None:
    """Pebble-grain leather: rounded pebbles separated by darker creases, dyed in one colour."""
    rng = cv.rng
    size = _pick(rng, (10.0, 16.0, 26.0))
    _, d1, d2, _ = _cells(cv, size, 0.4)
    crease = np.exp(-((d2 - d1) / np.float32(size * 0.12)) ** 2)
    dome = np.clip(1 - d1 / np.float32(size * 0.7), 0, 1)
    palette = [(0.62, 0.40, 0.24), (0.25, 0.22, 0.20), (0.85, 0.70, 0.50), (0.55, 0.15, 0.12),
               (0.20, 0.25, 0.40), (0.60, 0.60, 0.58)]
    depth = rng.uniform(0.15, 0.45)
    lum = 190 * (1 - depth * crease + 0.12 * dome + 0.04 * smooth_noise(cv, 60, 60)
                 + 0.03 * smooth_noise(cv, 1.5, 1.5))
    cv.rgb = grey(lum, jitter(rng, _pick(rng, palette), 0.08))


def concrete(cv: Canvas) -> None:
    """Cast concrete: cloudy mottling, aggregate grains and a sprinkle of small pores."""
    rng = cv.rng
    grains = smooth_noise(cv, 6, 6)
    pores = smooth_noise(cv, 3, 3)
    lum = (rng.uniform(110, 175) + 12 * smooth_noise(cv, 120, 120) + 6 * smooth_noise(cv, 25, 25)
           + rng.uniform(3, 9) * np.clip(grains - 0.6, 0, None) + 4 * smooth_noise(cv, 1.5, 1.5)
           - rng.uniform(30, 70) * (pores > rng.uniform(2.8, 3.4)))
    cv.rgb = grey(lum, jitter(rng, (1.0, 0.99, 0.95), 0.03))


def ceramic_tile(cv: Canvas) -> None:
    """Glazed tiles on a grout grid; glaze colour, tile size and grout width vary per image."""
    rng = cv.rng
    y, x = _grid(cv)
    size = _pick(rng, (160.0, 260.0, 420.0))
    grout_w = rng.uniform(4, 12)
    oy, ox = rng.uniform(0, size, 2)
    gy, gx = (y + np.float32(oy)) % np.float32(size), (x + np.float32(ox)) % np.float32(size)
    edge = np.minimum(np.minimum(gy, np.float32(size) - gy), np.minimum(gx, np.float32(size) - gx))
    grout = np.clip((np.float32(grout_w / 2) - edge) / 1.5 + 0.5, 0, 1)
    palette = [(235, 235, 228), (40, 90, 140), (180, 60, 45), (70, 120, 80), (200, 185, 150), (30, 30, 32)]
    glaze = jitter(rng, _pick(rng, palette), 0.05)
    grout_colour = jitter(rng, (150, 145, 135), 0.1)
    gloss = 1 + 0.015 * smooth_noise(cv, 30, 30) + 0.01 * smooth_noise(cv, 2, 2)
    spec = rng.uniform(10, 40) * np.exp(-((x - rng.uniform(0, cv.w)) ** 2 + (y - rng.uniform(0, cv.h)) ** 2)
                                        / np.float32(2 * rng.uniform(120, 300) ** 2))
    tile = grey(gloss, glaze) + spec[None]
    cv.rgb = tile * (1 - grout[None]) + grey(1 + 0.05 * smooth_noise(cv, 3, 3), grout_colour) * grout[None]


def moulded_plastic(cv: Canvas) -> None:
    """Injection-moulded part: fine matte stipple, faint flow lines, one of many resin colours."""
    rng = cv.rng
    y, x = _grid(cv)
    palette = [(25, 25, 28), (120, 122, 125), (225, 225, 220), (190, 40, 35), (30, 80, 170),
               (230, 190, 40), (60, 140, 70)]
    colour = jitter(rng, _pick(rng, palette), 0.06)
    stipple = smooth_noise(cv, *(_pick(rng, ((1.5, 1.5), (3, 3)),)))
    angle = rng.uniform(0, math.pi)
    flow = np.sin((np.float32(math.cos(angle)) * x + np.float32(math.sin(angle)) * y
                   + 40 * smooth_noise(cv, 150, 150)) / np.float32(rng.uniform(25, 60)))
    shade = (1 + rng.uniform(0.02, 0.06) * stipple + rng.uniform(0.005, 0.02) * flow
             + 0.03 * smooth_noise(cv, 200, 260))
    cv.rgb = grey(shade, colour) + np.float32(rng.uniform(4, 14))


def glass(cv: Canvas) -> None:
    """Back-lit float glass: a smooth gradient, very faint ripple, a slight green or blue tint."""
    rng = cv.rng
    y, x = _grid(cv)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.float32(math.cos(angle)) * x + np.float32(math.sin(angle)) * y) / np.float32(cv.w + cv.h)
    ripple = np.sin((y + 30 * smooth_noise(cv, 200, 200)) / np.float32(rng.uniform(8, 30)))
    lum = rng.uniform(150, 215) + rng.uniform(10, 40) * ramp + rng.uniform(0.5, 2.5) * ripple \
        + 3 * smooth_noise(cv, 120, 120)
    cv.rgb = grey(lum, jitter(rng, _pick(rng, [(0.94, 1.0, 0.97), (0.95, 0.98, 1.0), (1.0, 1.0, 1.0)]), 0.01))


def carbon_weave(cv: Canvas) -> None:
    """2 x 2 twill carbon fibre: dark tows whose sheen depends on their direction."""
    rng = cv.rng
    y, x = _grid(cv)
    pitch = _pick(rng, (12.0, 20.0, 32.0))
    u, v = (x + rng.uniform(0, 50)) / np.float32(pitch), (y + rng.uniform(0, 50)) / np.float32(pitch)
    warp_on_top = ((np.floor(u) + np.floor(v)) % 4) < 2
    fibres = np.where(warp_on_top, np.sin(x * np.float32(2.1)), np.sin(y * np.float32(2.1)))
    tow = np.where(warp_on_top, np.sin(np.float32(np.pi) * (v % 1)), np.sin(np.float32(np.pi) * (u % 1)))
    bright, dark = rng.uniform(70, 120), rng.uniform(25, 45)
    lum = np.where(warp_on_top, bright, dark) * (0.55 + 0.45 * tow) + 4 * fibres + 3 * smooth_noise(cv, 80, 80)
    cv.rgb = grey(lum, jitter(rng, (1.0, 1.0, 1.05), 0.02))


def paper(cv: Canvas) -> None:
    """Paper or board: cloudy formation and short fibres, white, cream or kraft."""
    rng = cv.rng
    fibres = smooth_noise(cv, 1.2, 6) + smooth_noise(cv, 6, 1.2)
    lum = 220 + rng.uniform(2, 6) * fibres + rng.uniform(3, 9) * smooth_noise(cv, 25, 25) \
        + 2 * smooth_noise(cv, 1.2, 1.2)
    palette = [(1.0, 1.0, 0.99), (1.0, 0.96, 0.86), (0.78, 0.62, 0.44), (0.92, 0.94, 0.98)]
    cv.rgb = grey(lum, jitter(rng, _pick(rng, palette), 0.02))


def rubber(cv: Canvas) -> None:
    """Moulded rubber: near-black matte speckle, sometimes with parallel ribs."""
    rng = cv.rng
    y, x = _grid(cv)
    lum = rng.uniform(30, 70) + 5 * smooth_noise(cv, 1.5, 1.5) + 4 * smooth_noise(cv, 60, 60)
    if rng.random() < 0.5:
        pitch = rng.uniform(40, 120)
        angle = rng.uniform(0, math.pi)
        along = np.float32(math.cos(angle)) * x + np.float32(math.sin(angle)) * y
        ribs = np.sin(along * np.float32(2 * math.pi / pitch))
        lum = lum + rng.uniform(6, 15) * np.tanh(3 * ribs)
    cv.rgb = grey(lum, jitter(rng, (1.0, 1.0, 1.0), 0.03))


def printed_label(cv: Canvas) -> None:
    """Coated label stock with printed lines of glyph blocks and a bar code."""
    rng = cv.rng
    h, w = cv.h, cv.w
    ink = np.zeros((h, w), dtype=bool)
    glyph_h = int(_pick(rng, (10, 16, 26)) * min(1.0, h / 768))
    glyph_h = max(glyph_h, 4)
    row = int(rng.integers(glyph_h, 3 * glyph_h))
    while row + glyph_h < h * 0.62:
        col = int(rng.integers(glyph_h, 4 * glyph_h))
        stop = int(w * rng.uniform(0.5, 0.95))
        while col + glyph_h < stop:
            gw = int(glyph_h * rng.uniform(0.4, 0.8))
            shape = rng.random((3, 2)) < 0.6  # a glyph = a few strokes on a 3 x 2 cell
            for (i, j) in zip(*np.nonzero(shape)):
                ys = row + i * glyph_h // 3
                xs = col + j * gw // 2
                ink[ys:ys + max(2, glyph_h // 3 - 1), xs:xs + max(2, gw // 2 - 1)] = True
            col += gw + max(2, glyph_h // 4) + (glyph_h if rng.random() < 0.15 else 0)
        row += int(glyph_h * rng.uniform(1.6, 2.4))
    top = int(h * 0.7)
    col = int(w * rng.uniform(0.05, 0.3))
    while col < w * 0.85 and top < h - 8:
        bar = int(rng.integers(2, 8))
        if rng.random() < 0.55:
            ink[top:h - max(8, h // 12), col:col + bar] = True
        col += bar
    paper_colour = jitter(rng, _pick(rng, [(240, 240, 236), (245, 235, 200), (225, 235, 245)]), 0.02)
    ink_colour = jitter(rng, _pick(rng, [(25, 25, 30), (30, 40, 120), (150, 25, 25)]), 0.1)
    sheet = grey(1 + 0.01 * smooth_noise(cv, 2, 2) + 0.015 * smooth_noise(cv, 90, 90), paper_colour)
    cv.rgb = np.where(ink[None], ink_colour[:, None, None] * (1 + 0.05 * smooth_noise(cv, 3, 3))[None], sheet)
    cv.aux = {"ink": ink, "paper": paper_colour}


def perforated_sheet(cv: Canvas) -> None:
    """Punched metal sheet: a straight or staggered grid of round holes over a dark background."""
    rng = cv.rng
    y, x = _grid(cv)
    pitch = _pick(rng, (28.0, 44.0, 70.0))
    radius = pitch * rng.uniform(0.22, 0.36)
    staggered = rng.random() < 0.5
    oy, ox = rng.uniform(0, pitch, 2)
    row = np.floor((y + np.float32(oy)) / np.float32(pitch))
    shift = np.where(row % 2 == 1, np.float32(pitch / 2), np.float32(0)) if staggered else np.float32(0)
    gy = (y + np.float32(oy)) % np.float32(pitch) - np.float32(pitch / 2)
    gx = (x + np.float32(ox) + shift) % np.float32(pitch) - np.float32(pitch / 2)
    dist = np.sqrt(gy ** 2 + gx ** 2)
    hole = np.clip(np.float32(radius) - dist + 0.5, 0, 1)
    metal = rng.uniform(130, 190) + 6 * smooth_noise(cv, 1.5, 80) + 6 * smooth_noise(cv, 150, 150)
    back = rng.uniform(15, 50)
    lum = metal * (1 - hole) + back * hole
    cv.rgb = grey(lum, jitter(rng, (1.0, 1.0, 1.03), 0.02))
    cv.aux = {"holes": (pitch, radius, staggered, oy, ox), "hole": hole > 0.5, "metal": float(metal.mean())}


# --------------------------------------------------------------------------- generic defects


def _sign(rng, bright_share: float) -> int:
    return 1 if rng.random() < bright_share else -1


def line_defect(cv: Canvas, area_px: float, lo: float = 8, hi: float = 45, width=(1.0, 3.0),
                bright_share: float = 0.6, wiggle: float = 0.003, reach: float = 0.7) -> None:
    """A scratch, hairline or fibre: a tapered stroke, brighter or darker than the surface."""
    rng = cv.rng
    mark = line_for_area(cv, area_px, rng.uniform(*width), rng.uniform(0, math.pi), reach * cv.w, wiggle=wiggle)
    paint(cv, mark, contrast(rng, lo, hi) * _sign(rng, bright_share), floor=0.6)


def crack_defect(cv: Canvas, area_px: float, lo: float = 15, hi: float = 70) -> None:
    rng = cv.rng
    paint(cv, crack(cv, area_px, rng.uniform(0, math.pi)), -contrast(rng, lo, hi), floor=0.6)


def pits(cv: Canvas, area_px: float, lo: float = 15, hi: float = 70, count: int = 4,
         bright_share: float = 0.15) -> None:
    rng = cv.rng
    paint(cv, pit_cluster(cv, area_px, count, 0.2), contrast(rng, lo, hi) * _sign(rng, bright_share),
          floor=0.4, power=0.6)


def spots(cv: Canvas, area_px: float, lo: float = 10, hi: float = 60) -> None:
    """Contamination: many tiny spots scattered over a wide patch."""
    rng = cv.rng
    count = int(rng.integers(6, 30))
    cy, cx = rng.uniform(0.2, 0.8) * cv.h, rng.uniform(0.2, 0.8) * cv.w
    spread = rng.uniform(20, 120) * min(1.0, cv.h / 768)
    marks = []
    for share in rng.dirichlet(np.ones(count)):
        at = (float(np.clip(cy + rng.normal(0, spread), 2, cv.h - 3)),
              float(np.clip(cx + rng.normal(0, spread), 2, cv.w - 3)))
        marks.append(blob(cv, max(area_px * share, 2.0), rng.uniform(1.0, 1.5), 0.2, centre=at))
    paint(cv, union(marks), contrast(rng, lo, hi) * _sign(rng, 0.3), floor=0.5, power=0.5)


def discolour(cv: Canvas, area_px: float, lo: float = 0.06, hi: float = 0.45) -> None:
    """Stain or faded patch: colours multiplied toward a random hue, often faintly."""
    rng = cv.rng
    hue = rng.uniform(0.1, 1.0, 3)
    strength = contrast(rng, lo, hi)
    factor = 1 - strength * hue / hue.max() if rng.random() < 0.7 else 1 + 0.6 * strength * hue / hue.max()
    tint(cv, blob(cv, area_px, rng.uniform(1.0, 2.5), rng.uniform(0.2, 0.6)), factor)


def dent(cv: Canvas, area_px: float, lo: float = 8, hi: float = 50) -> None:
    """Dent or bump lit from one side: bright on one flank, dark on the other."""
    rng = cv.rng
    mark = blob(cv, area_px, rng.uniform(1.0, 2.2), 0.15)
    height = np.where(mark.m, mark.core, 0).astype(np.float32) ** 0.8
    gy, gx = np.gradient(height) if min(height.shape) > 1 else (height * 0, height * 0)
    light = rng.uniform(0, 2 * math.pi)
    shade = gx * math.cos(light) + gy * math.sin(light)
    shade = shade / (np.abs(shade[mark.m]).max() + 1e-6)
    level = contrast(rng, lo, hi)
    delta = level * (shade[mark.m] + _sign(rng, 0.5) * (0.15 + 0.2 * height[mark.m]))
    region = cv.rgb[(slice(None), *mark.sl)]
    region[:, mark.m] += delta.astype(np.float32)[None, :]
    cv.mask[mark.sl] |= mark.m


def blister(cv: Canvas, area_px: float, lo: float = 10, hi: float = 45) -> None:
    """Bubble in a film or glass: dulled, with a bright cap and a darker rim."""
    rng = cv.rng
    mark = pit_cluster(cv, area_px, 5, 0.05)
    shade = np.float32(contrast(rng, lo, hi)) * (1.4 * mark.core[mark.m] ** 1.5 - 0.4)
    region = cv.rgb[(slice(None), *mark.sl)]
    region[:, mark.m] = region[:, mark.m] * np.float32(0.95) + shade[None, :]
    cv.mask[mark.sl] |= mark.m


def chip(cv: Canvas, area_px: float) -> None:
    """Missing material: a rough patch showing a grey underlayer."""
    rng = cv.rng
    mark = blob(cv, area_px, rng.uniform(1.0, 2.0), rng.uniform(0.4, 0.7))
    under = jitter(rng, (_pick(rng, (70, 120, 170)),) * 3, 0.08)
    fill(cv, mark, under, rng.uniform(0.35, 0.9))


def puncture(cv: Canvas, area_px: float) -> None:
    rng = cv.rng
    mark = blob(cv, area_px, rng.uniform(1.0, 1.8), 0.5)
    fill(cv, mark, jitter(rng, (20, 20, 22), 0.2), rng.uniform(0.5, 0.95))


def missing_print(cv: Canvas, area_px: float) -> None:
    """Ink absent inside a patch of the print (paper shows through); mask = the ink removed."""
    rng, ink = cv.rng, cv.aux["ink"]
    ys, xs = np.nonzero(ink)
    for _ in range(30):
        k = int(rng.integers(ys.size))
        mark = blob(cv, area_px * 2.5, rng.uniform(1.0, 3.0), 0.4, centre=(float(ys[k]), float(xs[k])))
        kept = Mark(mark.sl, mark.m & ink[mark.sl], mark.core)
        if kept.m.sum() >= 4:
            fill(cv, kept, cv.aux["paper"], rng.uniform(0.6, 1.0))
            return
    raise RuntimeError("printed_label: no ink to remove")  # unreachable: every label has print


def smear(cv: Canvas, area_px: float, lo: float = 0.15, hi: float = 0.6) -> None:
    """Ink smear: a streak darkening the paper along one direction."""
    rng = cv.rng
    mark = line_for_area(cv, area_px, rng.uniform(4, 14), rng.uniform(0, math.pi), 0.3 * cv.w, wiggle=0.01)
    tint(cv, mark, 1 - contrast(rng, lo, hi) * np.array([0.9, 0.9, 0.8]), floor=0.3)


def blocked_hole(cv: Canvas, area_px: float) -> None:
    """Punched holes partly or fully closed by metal (burr, slug): a patch around a hole whose
    hole pixels are filled, so large defects close several neighbouring holes."""
    rng = cv.rng
    pitch, radius = cv.aux["holes"][:2]
    hole = cv.aux["hole"]
    open_share = min(0.9, math.pi * radius ** 2 / pitch ** 2)
    ys, xs = np.nonzero(hole)
    for _ in range(30):
        k = int(rng.integers(ys.size))
        patch = max(area_px, 6.0) if area_px < math.pi * radius ** 2 / 2 else area_px / open_share
        mark = blob(cv, patch, rng.uniform(1.0, 1.6), 0.3, centre=(float(ys[k]), float(xs[k])))
        kept = Mark(mark.sl, mark.m & hole[mark.sl], mark.core)
        if kept.m.sum() >= 4:
            fill(cv, kept, (cv.aux["metal"] * 0.9,) * 3, rng.uniform(0.6, 1.0))
            return
    raise RuntimeError("perforated_sheet: no hole to block")  # unreachable: the grid has holes


def fibre(cv: Canvas, area_px: float) -> None:
    """Foreign hair or fibre: a thin, curly stroke lying on the surface."""
    rng = cv.rng
    mark = line_for_area(cv, area_px, rng.uniform(1.0, 2.2), rng.uniform(0, 2 * math.pi), 0.5 * cv.w,
                         wiggle=0.04)
    paint(cv, mark, contrast(rng, 15, 80) * _sign(rng, 0.35), floor=0.7)


def kind(draw, **params):
    """A defect drawer with fixed parameters (contrast range, widths ...)."""
    return partial(draw, **params) if params else draw
