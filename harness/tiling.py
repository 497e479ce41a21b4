"""Native-resolution tiling and stitching, plus the resize/pad helpers of the two resolution policies.

``native``: tiles of the model input size at native resolution; tiles sit at stride = tile size
minus the optional overlap and the last row/column is snapped to the bottom/right border (so it
overlaps its neighbour), as in SOFS's non-resizing procedure; overlapping maps are averaged. ``resize``: the whole image is resized to the model input.

``pil_resize_image`` / ``pil_resize_mask`` are PIL's own bilinear filter on uint8 (what SOFS's
reference pipeline does through torchvision on PIL images); ``resize_image`` /
``resize_mask_fraction`` are torch's antialiased bilinear on float (the baselines' path, within
about one grey level of PIL).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class Tile:
    top: int
    left: int
    height: int
    width: int

    def crop(self, array: np.ndarray) -> np.ndarray:
        return array[self.top : self.top + self.height, self.left : self.left + self.width]


def tile_grid(height: int, width: int, tile_size: int, overlap: int = 0) -> list[Tile]:
    """Tiles of ``min(tile_size, H) x min(tile_size, W)`` covering an H x W image.

    Rows start at 0, s, 2s, ... with step ``s = t - overlap`` and the last one moved to ``H - t``
    (same for columns), so every tile lies inside the image, neighbours share at least
    ``overlap`` pixels, and with ``overlap = 0`` only the last row/column overlaps its neighbour.
    A defect narrower than ``overlap`` lies wholly inside some tile along that axis wherever it
    sits. Stitching (:func:`stitch`) averages the tiles' maps where they overlap.
    """
    if not 0 <= overlap < tile_size:
        raise ValueError(f"tile overlap must be in [0, tile size {tile_size}), got {overlap}")
    tile_h, tile_w = min(tile_size, height), min(tile_size, width)
    tops = _starts(height, tile_h, overlap)
    lefts = _starts(width, tile_w, overlap)
    return [Tile(top, left, tile_h, tile_w) for top in tops for left in lefts]


def _starts(length: int, tile: int, overlap: int = 0) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - min(overlap, tile - 1)
    count = math.ceil((length - tile) / step) + 1
    return [min(i * step, length - tile) for i in range(count)]


def _as_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor as it is; an array as a tensor sharing its memory (copied first if not contiguous)."""
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))


def stitch(tile_maps: Sequence[np.ndarray | torch.Tensor], tiles: list[Tile], height: int, width: int) -> np.ndarray:
    """Average per-tile maps ``[h, w]`` into one float32 ``[H, W]`` map (overlaps are averaged).

    Tensor maps are stitched on their device (float64 sums, as NumPy's) and copied to the host
    once, as the finished map."""
    maps = [_as_tensor(tile_map) for tile_map in tile_maps]
    device = maps[0].device if maps else torch.device("cpu")
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    total = torch.zeros((height, width), dtype=dtype, device=device)
    count = torch.zeros((height, width), dtype=dtype, device=device)
    for tile_map, tile in zip(maps, tiles):
        total[tile.top : tile.top + tile.height, tile.left : tile.left + tile.width] += tile_map
        count[tile.top : tile.top + tile.height, tile.left : tile.left + tile.width] += 1
    return (total / count.clamp(min=1)).float().cpu().numpy()


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shape after resizing so the longest side is ``size`` (round half up, as the SOFS pipeline)."""
    scale = size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> uint8 ``[h, w, 3]``, bilinear with antialiasing (PIL-like)."""
    if image.shape[:2] == tuple(shape):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    out = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False, antialias=True)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_mask_fraction(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool ``[H, W]`` -> float32 ``[h, w]`` in [0, 1] (area-weighted, so tiny defects survive)."""
    if mask.shape == tuple(shape):
        return mask.astype(np.float32)
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    out = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].clamp(0, 1).numpy()


def pil_resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> uint8 ``[h, w, 3]`` with PIL's bilinear filter (``Image.BILINEAR``:
    a triangle filter widened by the scale on downscaling, fixed-point, rounded to uint8)."""
    if image.shape[:2] == tuple(shape):
        return image
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    return np.array(pil.resize((shape[1], shape[0]), Image.BILINEAR))  # a writable copy


def pil_resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool ``[H, W]`` -> uint8 ``[h, w]``: the 0/255 mask image resized with PIL's bilinear filter
    (grey values at the edges; a defect smaller than the scale keeps a small non-zero value)."""
    grey = np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8)
    if grey.shape == tuple(shape):
        return grey
    return np.array(Image.fromarray(grey).resize((shape[1], shape[0]), Image.BILINEAR))


def resize_tensor(score_map: torch.Tensor, shape: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """float ``[h, w]`` -> float32 ``[H, W]`` on the map's device, bilinear (the map itself when
    it has that shape already)."""
    score_map = score_map.float()
    if tuple(score_map.shape) == tuple(shape):
        return score_map
    return F.interpolate(score_map.contiguous()[None, None], size=shape, mode="bilinear", align_corners=align_corners)[0, 0]


def resize_map(score_map: np.ndarray | torch.Tensor, shape: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    """float ``[h, w]`` -> a new float32 ``[H, W]`` array, bilinear (align_corners False unless
    asked; SOFS's reference maps its predictions back with align_corners True). A tensor is
    resized on its device and copied to the host once."""
    tensor = _as_tensor(score_map)
    resized = resize_tensor(tensor, shape, align_corners).cpu().numpy()
    return resized.copy() if tuple(tensor.shape) == tuple(shape) else resized


def pad_bottom_right(array: np.ndarray, size: int, value: float = 0) -> np.ndarray:
    """Pad the first two dims of ``array`` to ``size x size`` at the bottom/right."""
    pad = [(0, size - array.shape[0]), (0, size - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, constant_values=value)
