"""AnomalyDINO-style few-shot anomaly detection (Damm et al., WACV 2025), re-implemented from the paper.

AnomalyDINO scores each query patch by its cosine distance to the nearest patch of a memory bank
built from a few normal reference images (DINOv2 patch tokens, no training), augments the
references by rotation, optionally masks the background of object images (the first principal
component of the patch features separates object from background), and takes the mean of the
1 % highest patch distances as the image score.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.features import arch_of
from methods._common import TiledFeatures, backbone_weight_spec, l2_normalise
from methods.base import MethodError, Prediction
from methods.configs import AnomalyDINOConfig
from methods.patchcore import PatchCore, _nearest_distance


class AnomalyDINO(PatchCore):
    """AnomalyDINO-style: 1-NN cosine distance of patch tokens to rotated defect-free support patches.

    * Patch feature: the token of each chosen level, L2-normalised (no neighbourhood averaging:
      DINOv2 tokens carry their context); several levels are concatenated and scaled by 1/sqrt(L).
      ViT default level: the last block (the paper's final-layer patch tokens); CNN default: the
      backbone's default levels (EfficientNet-Lite0 stages 2 + 3).
    * Memory bank: the defect-free tokens (mask fraction 0, as PatchCore here) of every support
      and of its ``rotations - 1`` copies rotated by multiples of 90 degrees (lossless; the paper
      augments the few references by rotation).
    * Patch score: cosine distance ``1 - cos`` to the nearest bank token, halved to [0, 1];
      bilinearly upsampled, tiles stitched, Gaussian blur sigma = 4 px. With ``masking``, query
      tokens on the background (first principal component of the query's own tokens, sign taken
      so the image border is background, dilated by one token) score 0.
    * Image score (``Prediction.image_score``): mean of the top ``top_fraction`` (1 %) of the
      query's token scores (those in the image, foreground only when masking).
    * Threshold and calibrated map: as PatchCore (support leave-out scores of the *unrotated*
      supports, ``threshold_quantile``; ``s = r / (r + t)``); AnomalyDINO itself reports AUROC only.

    Deviations from the paper: the harness's backbones and resolution policies (native tiles by
    default, not a 448 / 672 px resize); 90-degree rotations only; masking is off by default
    (defect datasets here are mostly surfaces and textures, where the paper does not mask either);
    the bank leaves out the defect tokens of defective supports (the paper's references are normal).
    """

    weight_specs = (backbone_weight_spec("anomalydino"),)

    Config = AnomalyDINOConfig

    def __init__(self, config: Config, weights: dict[str, Path]):
        if config.rotations not in (1, 2, 4):
            raise MethodError(f"rotations must be 1, 2 or 4 (multiples of 90 degrees), got {config.rotations}")
        if not 0 < config.top_fraction <= 1:
            raise MethodError(f"top_fraction must be in (0, 1], got {config.top_fraction}")
        if not config.layers and arch_of(config.backbone).family == "vit":
            config = dataclasses.replace(config, layers=(-1,))  # the final block's patch tokens
        super().__init__(config, weights)

    def embed(self, feats: TiledFeatures) -> torch.Tensor:
        """TiledFeatures -> unit token features ``[T, h, w, D]`` (no neighbourhood averaging)."""
        layers = [l2_normalise(layer) for layer in feats.layers]
        return (torch.cat(layers, dim=1) / math.sqrt(len(layers))).permute(0, 2, 3, 1)

    def _to_score_map(self, feats: TiledFeatures, distances: torch.Tensor) -> np.ndarray:
        """Euclidean 1-NN distances of unit vectors -> cosine distance / 2 = d^2 / 4, upsampled, blurred."""
        return super()._to_score_map(feats, distances**2 / 2)

    def predict(
        self,
        support_images: Sequence[np.ndarray],
        support_masks: Sequence[np.ndarray],
        query_image: np.ndarray,
    ) -> Prediction:
        """Return the anomaly map float32 ``[H, W]`` in [0, 1], the threshold and the image score."""
        masks = [np.asarray(mask, dtype=bool) for mask in support_masks]
        supports = [self._support(image, mask) for image, mask in zip(support_images, masks)]
        turns = {1: (), 2: (2,), 4: (1, 2, 3)}[self.config.rotations]
        rotated = [self._support(np.rot90(image, t), np.rot90(mask, t)) for image, mask in zip(support_images, masks)
                   for t in turns]
        bank = torch.cat([s["bank"] for s in supports + rotated])  # [M, D]
        feats = self.backbone.extract(query_image)
        if len(bank) == 0:  # every support token touches a defect: nothing is known to be normal
            return Prediction(np.zeros(query_image.shape[:2], np.float32), None, 0.0)
        query = self.embed(feats)
        distances = _nearest_distance(query.reshape(-1, query.shape[-1]), bank).reshape(query.shape[:3])
        counted = feats.valid[:, 0] > 0  # [T, h, w] tokens inside the image
        if self.config.masking:
            foreground = foreground_tokens(query, counted)
            distances = distances * foreground
            counted = counted & foreground
        score_map = self._to_score_map(feats, distances)
        image_score = top_mean(distances[counted] ** 2 / 4, self.config.top_fraction)
        return self._calibrated(score_map, self.support_threshold(supports), image_score=image_score)


def top_mean(scores: torch.Tensor, fraction: float) -> float:
    """Mean of the ``ceil(fraction * n)`` highest of ``n`` scores (0 when there are none)."""
    if scores.numel() == 0:
        return 0.0
    count = max(1, math.ceil(fraction * scores.numel()))
    return float(scores.flatten().topk(count).values.mean())


def foreground_tokens(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """bool ``[T, h, w]``: tokens on the object, by the sign of the first principal component.

    The valid tokens' features ``[N, D]`` are centred and projected on their first principal
    direction; the side holding most of the image-border tokens is background. The foreground is
    dilated by one token (3 x 3) so object edges are kept.
    """
    flat = features[valid]  # [N, D]
    if len(flat) < 3:
        return valid.clone()
    centred = flat - flat.mean(0)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]  # [D]
    projection = torch.zeros(valid.shape, device=features.device)
    projection[valid] = centred @ direction
    border = torch.zeros_like(valid)
    border[:, 0, :] = border[:, -1, :] = border[:, :, 0] = border[:, :, -1] = True
    border &= valid
    positive = projection > 0
    if (positive & border).sum() * 2 > border.sum():  # the border is mostly on the positive side
        positive = (projection < 0) & valid
    grown = F.max_pool2d(positive[:, None].float(), 3, 1, 1)[:, 0] > 0
    return grown & valid
