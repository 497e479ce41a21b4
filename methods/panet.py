"""Training-free PANet (Wang et al., ICCV 2019) on a frozen patch-14 ViT (baselines-spec §2.5)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from methods._common import Backbone, BackboneMethod, TiledFeatures, backbone_weight_spec, l2_normalise
from methods.configs import PANetConfig


class PANet(BackboneMethod):
    """Training-free PANet: masked-average fg/bg prototypes, cosine x 20, softmax over {bg, fg}.

    Per episode:

    1. Token features of the chosen blocks, each L2-normalised, merged across layers
       (``concat``: concatenated; ``mean``: averaged, then re-normalised) -> ``[T, D, h, w]``.
    2. Support masks are area-averaged to the token grid (avg pool 14/14, never nearest), giving
       per-token defect fractions ``m``; padding tokens are weighted by their in-image fraction.
    3. fg prototype of a shot = sum(f * m) / (sum(m) + 1e-5) over all its tiles; the episode's fg
       prototype is the mean over shots that have a defect. The single bg prototype pools
       ``valid - m`` over all shots' tiles.
    4. Query score = softmax over (20 cos(x, p_bg), 20 cos(x, p_fg)) = sigmoid(20 (cos_fg - cos_bg)).
       The logit difference is upsampled bilinearly to the tile, stitched (or resized back), then
       squashed, so the map equals the softmax of bilinearly upsampled logits, as in PANet.

    Deviations from PANet (kaixin96/PANet, ``notrain``): frozen ViT (DINOv2 layout) instead of
    VGG16; mask area-averaged to the token grid instead of features upsampled to the mask (equal in
    expectation, much cheaper); one bg prototype (PANet's own choice, weak on textured industrial
    backgrounds); no PAR (a training loss only).

    With all-empty support masks (FAD episodes) there is no fg prototype: the map is all zeros.
    """

    threshold = 0.5
    threshold_protocol = "native"
    weight_specs = (backbone_weight_spec("panet"),)
    scaler = 20.0

    Config = PANetConfig

    def __init__(self, config: Config, weights: dict[str, Path]):
        self.config = config
        self.backbone = Backbone(config, weights["backbone"])
        self.device = self.backbone.device  # features, prototypes and cosines live here

    def embed(self, feats: TiledFeatures) -> torch.Tensor:
        """TiledFeatures -> unit-length merged features ``[T, D, h, w]``."""
        layers = [l2_normalise(layer) for layer in feats.layers]
        if self.config.layer_merge == "mean":
            return l2_normalise(torch.stack(layers).mean(0))
        return l2_normalise(torch.cat(layers, dim=1))

    def prototypes(
        self, support_images: Sequence[np.ndarray], support_masks: Sequence[np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """-> (p_fg [D], p_bg [D]), or None when no support has a defect pixel."""
        fg_shots, bg_sum, bg_weight = [], 0.0, 0.0
        for image, mask in zip(support_images, support_masks):
            feats = self.backbone.extract(image)
            features = self.embed(feats)  # [T, D, h, w]
            fg = self.backbone.mask_fractions(feats, np.asarray(mask, dtype=bool))  # [T, 1, h, w]
            bg = (feats.valid - fg).clamp_min(0)
            if fg.sum() > 0:
                fg_shots.append((features * fg).sum((0, 2, 3)) / (fg.sum() + 1e-5))
            bg_sum = bg_sum + (features * bg).sum((0, 2, 3))
            bg_weight = bg_weight + bg.sum()
        if not fg_shots:
            return None
        return torch.stack(fg_shots).mean(0), bg_sum / (bg_weight + 1e-5)

    def predict(
        self,
        support_images: Sequence[np.ndarray],
        support_masks: Sequence[np.ndarray],
        query_image: np.ndarray,
    ) -> np.ndarray:
        """Return the fg probability map, float32 ``[H, W]`` in [0, 1], at the query's size."""
        height, width = query_image.shape[:2]
        protos = self.prototypes(support_images, support_masks)
        if protos is None:  # FAD episode: nothing to segment with
            return np.zeros((height, width), dtype=np.float32)
        p_fg, p_bg = (torch.nn.functional.normalize(p, dim=0) for p in protos)
        feats = self.backbone.extract(query_image)
        query = self.embed(feats)  # [T, D, h, w], unit length
        cos_fg = torch.einsum("tdhw,d->thw", query, p_fg)
        cos_bg = torch.einsum("tdhw,d->thw", query, p_bg)
        logit = self.backbone.to_image(feats, self.scaler * (cos_fg - cos_bg))  # [H, W] (copied to the CPU here)
        return torch.sigmoid(torch.from_numpy(logit)).numpy().astype(np.float32)
