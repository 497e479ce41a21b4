"""Frozen patch-14 ViT backbones (timm) loaded from explicit local files, returning token maps.

Every learned component loads from a local file; nothing is downloaded. Accepted files: the
original Meta DINOv2 checkpoints (``dinov2_vitb14_pretrain.pth``), timm-format state dicts, and
the project's own shipped backbone. timm's DINOv2 checkpoint filter converts the Meta keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneArch:
    """A timm model name plus constructor overrides (for the small shipped backbone)."""

    timm_name: str
    overrides: dict = field(default_factory=dict)


ARCHS: dict[str, BackboneArch] = {
    "dinov2_vitb14": BackboneArch("vit_base_patch14_dinov2"),
    "dinov2_vits14": BackboneArch("vit_small_patch14_dinov2"),
    "dinov2_vitl14": BackboneArch("vit_large_patch14_dinov2"),
    # The embedded default: a small ViT with DINOv2's layout (patch 14, 11 blocks so that SOFS's
    # blocks 5..10 exist), 192 dims, 3 heads. Weights are shipped in methods/weights/.
    "vit_tiny14": BackboneArch(
        "vit_small_patch14_dinov2", dict(embed_dim=192, depth=11, num_heads=3)
    ),
    # Test-only: tiny and fast.
    "vit_micro14": BackboneArch(
        "vit_small_patch14_dinov2", dict(embed_dim=32, depth=11, num_heads=2, mlp_ratio=2.0)
    ),
}


class BackboneError(Exception):
    """A user-facing problem loading backbone weights (one line)."""


def build_vit(arch: str, img_size: int = 518) -> nn.Module:
    """Build an architecture with random weights (no download)."""
    import timm

    if arch not in ARCHS:
        raise BackboneError(f"unknown backbone '{arch}'; known: {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    return timm.create_model(
        spec.timm_name, pretrained=False, img_size=img_size, dynamic_img_size=True, **spec.overrides
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a plain state dict (weights_only), unwrapping common {"model": ...} containers."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise BackboneError(f"{path}: cannot read as a torch state dict ({type(exc).__name__}: {exc})") from None
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneError(f"{path}: not a state dict")
    return {k.removeprefix("backbone.").removeprefix("module."): v for k, v in state.items()}


def load_vit(arch: str, weights: Path, img_size: int = 518) -> nn.Module:
    """Build ``arch`` and load ``weights`` (Meta DINOv2 or timm format); frozen, eval mode."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = build_vit(arch, img_size)
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
    model.requires_grad_(False)
    return model.eval()


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` x B (same size) -> ImageNet-normalised float ``[B, 3, H, W]``."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


class ViTFeatures(nn.Module):
    """Token maps of chosen blocks of a frozen ViT.

    ``forward(x [B, 3, H, W]) -> list of [B, C, H/14, W/14]``, one per layer in ``layers``
    (0-based block indices), taken from the residual stream *before* the final LayerNorm.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int]):
        super().__init__()
        self.model = model
        self.layers = tuple(int(i) for i in layers)
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.embed_dim = int(model.embed_dim)
        depth = len(model.blocks)
        if any(not -depth <= i < depth for i in self.layers):
            raise BackboneError(f"layers {self.layers} out of range for a {depth}-block backbone")
        self.layers = tuple(i % depth for i in self.layers)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(
            x, indices=list(self.layers), norm=False, output_fmt="NCHW", intermediates_only=True
        )
