"""Tiny on-disk fixtures shared by the dataset tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, width: int = 16, height: int = 12, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.full((height, width, 3), value, dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """``mask``: bool (saved as 0/255) or an integer array saved as is (8-bit grey)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = mask.astype(np.uint8) * 255 if mask.dtype == bool else mask.astype(np.uint8)
    Image.fromarray(arr, mode="L").save(path)
    return path


def box_mask(width: int, height: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask
