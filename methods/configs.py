"""The baselines' options, torch-free: each method's ``Config`` dataclass (``--set METHOD.KEY=VALUE``).

A method class names its options with ``Config = <Name>Config``; they live here, apart from the
torch code, so that ``bench.py`` refuses a bad option and lists options (``methods --options``)
without importing torch (``methods.registry.CONFIGS`` says which dataclass belongs to which class).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from methods.base import require_at_least

DEFAULT_BACKBONE = "efficientnet_lite0"
Precision = Literal["fp32", "bf16", "fp16"]  # frozen backbone forward (autocast)


@dataclass
class BackboneConfig:
    """Options every ViT-feature baseline takes (they become CLI options)."""

    backbone: str = DEFAULT_BACKBONE  # a harness.features.ARCHS entry
    layers: tuple[int, ...] = ()  # feature levels (ViT blocks / EfficientNet stages); () = the backbone's default
    resolution: Literal["native", "resize"] = "native"  # native: tiles at native pixels; resize: longest side -> input_size
    input_size: int = 0  # tile side (native) or resized side; 0 = the backbone's tile size (ViT 518, CNN 512)
    tile_overlap: int = 0  # native: minimum pixels shared by neighbouring tiles (maps averaged there)
    batch_size: int = 4  # tiles per backbone forward
    feature_cache_mb: int = 512  # process-wide LRU of backbone features, shared by methods (0 = off for this method)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    precision: Precision = "fp32"  # frozen backbone forward (autocast); fp32 keeps numbers comparable
    # on: a chunk's small images (fewer tiles than batch_size) share backbone batches (for a GPU;
    # on CPU one image per forward measured faster: bench.py benchmark [batching]). Off by default:
    # on a GPU, features can differ in the last bits with the batch an image lands in.
    image_batching: Literal["on", "off"] = "off"

    def __post_init__(self):
        require_at_least(self, batch_size=1, tile_overlap=0, input_size=0, feature_cache_mb=0)


@dataclass
class PANetConfig(BackboneConfig):
    """PANet's options (methods/panet.py)."""

    layer_merge: Literal["concat", "mean"] = "concat"  # how the per-layer normalised features are combined


@dataclass
class PatchCoreConfig(BackboneConfig):
    """PatchCore's options (methods/patchcore.py)."""

    coreset_ratio: float = 0.1  # per-support greedy coreset share (1.0 = every bank token); see BASELINES.md
    threshold_quantile: float = 0.995
    exclusion_radius: int = 1  # k = 1 threshold: tokens excluded around each scored token
    blur_sigma: float = 4.0
    seed: int = 0  # coreset start point and projection
    score_scale: Literal["support", "fixed"] = "support"  # support: map / (map + fitted threshold)
    bank_margin: int = 2  # support tokens within this many tokens of a defect pixel stay out of the bank
    level_norm: bool = True  # per-level L2 normalisation (False: raw levels concatenated)
    normal_supports: int = 0  # K good images of the object the runner adds as supports (harness.normal_supports)


@dataclass
class PaDiMConfig(BackboneConfig):
    """PaDiM's options (methods/padim.py)."""

    cells: int = 1  # position pooling: one Gaussian per cells x cells image region (1 = whole image)
    max_dims: int = 256  # random channel subset when the features are wider (PaDiM's reduction)
    threshold_quantile: float = 0.995
    blur_sigma: float = 4.0
    seed: int = 0  # channel subset
    normal_supports: int = 0  # K good images of the object the runner adds as supports (harness.normal_supports)


@dataclass
class AnomalyDINOConfig(BackboneConfig):
    """AnomalyDINO's options (methods/anomalydino.py)."""

    rotations: int = 4  # bank copies of each support rotated by 0, 90, 180, 270 degrees (1 = none)
    masking: bool = False  # query background (PCA of the patch tokens) scores 0
    top_fraction: float = 0.01  # image score = mean of this top share of token scores
    normal_supports: int = 0  # K good images of the object the runner adds as supports (harness.normal_supports)
    threshold_quantile: float = 0.995
    exclusion_radius: int = 1  # k = 1 threshold: tokens excluded around each scored token
    blur_sigma: float = 4.0
    score_scale: Literal["support", "fixed"] = "support"  # support: map / (map + fitted threshold)
    # PatchCore options at AnomalyDINO's values: the whole bank (no coreset), no margin around defects
    coreset_ratio: float = 1.0
    bank_margin: int = 0
    level_norm: bool = True
    seed: int = 0


@dataclass
class MatchConfig(BackboneConfig):
    """Match's options (methods/match.py)."""

    fg_fraction: float = 0.5  # a support token is a defect patch when this much of it is defect
    mutual_k: int = 0  # 0 = off; else keep a defect match only within its mutual_k nearest query patches
    scaler: float = 20.0  # sigmoid slope on the similarity difference


@dataclass(frozen=True)
class SegGPTConfig:
    """SegGPT's options (methods/seggpt.py)."""

    resolution: Literal["resize", "native"] = "resize"  # resize: squash the query to S x S; native: S x S tiles at native resolution
    native_support: Literal["crop", "resize"] = "crop"  # native policy only: crop around the defect, or resize the whole support
    reduction: Literal["max", "mean"] = "max"  # RGB -> score: max (SOFS) or mean (HF post-processing)
    threshold: float | None = None  # None: 0.6 for "max" (SOFS), 0.5 for "mean"
    embedding_type: Literal["instance", "semantic"] = "instance"  # Painter's and SOFS's default
    merge_rule: Literal["hf", "painter"] = "hf"  # k-shot ensemble at the merge block: transformers' or Painter's
    batch_size: int = 8  # canvases (query views x prompts) per forward; rounded to a multiple of k
    device: str = "auto"  # "auto": cuda if available
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # float16 / bfloat16 on GPU
    prompt_cache_size: int = 256  # preprocessed prompts kept across episodes

    def __post_init__(self):
        require_at_least(self, batch_size=1, prompt_cache_size=0)
