"""Constants more than one package uses, defined once (standard library only, cheap to import)."""
from __future__ import annotations

from typing import Sequence

# Size-stratified metrics (DESIGN.md "Metrics"): half-open bins [lo, hi), a value on an edge goes up.
SIZE_BIN_EDGES = (0.001, 0.003, 0.01, 0.05)  # GT area fraction of the image
ABS_SIZE_BIN_EDGES_PX = (64, 256, 1024, 9216)  # 8², 16², 32², 96² pixels (AI-TOD / COCO)
NORMAL_SIZE_BIN = "normal"

# Input normalisation of ImageNet-pretrained backbones (DINOv2, EfficientNet, SegGPT).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# SOFS: the DINOv2 blocks it hooks and the head the harness ships (relative to the repository root).
SOFS_LAYERS = (5, 6, 7, 8, 9, 10)
SOFS_DEFAULT_CHECKPOINT = "methods/weights/sofs_synthetic.pt"


def size_bin_labels(edges: Sequence[float] = SIZE_BIN_EDGES) -> list[str]:
    """Labels of the area-fraction bins, smallest first: ``<0.1%``, ``0.1-0.3%``, ..., ``>=5%``."""
    percents = [f"{edge * 100:g}" for edge in edges]
    middle = [f"{lo}-{hi}%" for lo, hi in zip(percents, percents[1:])]
    return [f"<{percents[0]}%", *middle, f">={percents[-1]}%"]
