"""Few-shot PaDiM (Defard et al., ICPR 2021) on the shared frozen backbone (baselines-spec §3.2).

PaDiM fits one Gaussian per feature-grid position from hundreds of aligned normal training images
and scores a query patch by its Mahalanobis distance to its position's Gaussian. With k = 1-5
supports of arbitrary size that per-position Gaussian is degenerate: a position has k samples in
a 120-dimensional space (rank <= k - 1), and native-resolution images of different sizes are not
aligned position by position anyway. So positions are *pooled*: the supports' defect-free tokens
of each of ``cells x cells`` image regions (relative coordinates; ``cells = 1``, the default, is
one Gaussian for the whole image) form one Gaussian, and the covariance is shrunk by the
Ledoit-Wolf closed form towards a scaled identity (:func:`ledoit_wolf`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from methods._common import (
    Backbone, BackboneMethod, TiledFeatures, backbone_weight_spec, defect_free_tokens, l2_normalise,
    support_calibrated,
)
from methods.configs import PaDiMConfig
from methods.base import MethodError, Prediction
from methods.patchcore import gaussian_blur

EPS = 1e-6


class PaDiM(BackboneMethod):
    """Few-shot PaDiM: pooled Gaussian(s) of defect-free support tokens, Mahalanobis distance.

    * Token feature: per level, L2-normalised (raw pre-norm ViT tokens have a few huge channels),
      concatenated and scaled by 1/sqrt(L) -> ``[T, h, w, D]``; ``max_dims < D`` keeps a fixed
      random subset of channels (PaDiM's own dimensionality reduction, seeded).
    * Gaussian(s): mean and Ledoit-Wolf-shrunk covariance (plus ``1e-6 I``) of the support tokens
      whose mask fraction is exactly 0 (with normal / FAD supports: all tokens), one per position
      cell; a cell with fewer than 2 tokens uses the pooled all-cells Gaussian.
    * Score: Mahalanobis distance ``r``, bilinearly upsampled (tiles stitched), Gaussian blur
      sigma = 4 px at the original resolution (PaDiM), calibrated as PatchCore's:
      ``s = r / (r + t)`` with ``t`` the deployable threshold, so ``s > 0.5`` iff ``r > t``.
    * Threshold (deployable, no query labels): the supports' defect-free pixels are scored by
      Gaussians that did not see them -- leave-one-image-out when k >= 2; when k = 1, two-fold
      cross-fitting over the top / bottom half of the support's token rows. ``t`` =
      ``threshold_quantile`` of those pixel scores (defect tokens get the median normal score
      before upsampling, as PatchCore). Without any held-out normal pixel, ``t = sqrt(D)`` (the
      expected distance of a sample of the Gaussian itself).
    """

    threshold = 0.5
    threshold_protocol = "deployable"
    weight_specs = (backbone_weight_spec("padim"),)

    Config = PaDiMConfig

    def __init__(self, config: Config, weights: dict[str, Path]):
        if config.cells < 1:
            raise MethodError(f"cells must be >= 1, got {config.cells}")
        if config.normal_supports < 0:
            raise MethodError(f"normal_supports must be >= 0 images, got {config.normal_supports}")
        if config.max_dims < 1:
            raise MethodError(f"max_dims must be >= 1, got {config.max_dims}")
        if not 0 < config.threshold_quantile <= 1:
            raise MethodError(f"threshold_quantile must be in (0, 1], got {config.threshold_quantile}")
        self.config = config
        self.backbone = Backbone(config, weights["backbone"])
        self.device = self.backbone.device  # features, Gaussians and distances live here
        self._dims: torch.Tensor | None = None

    # -- features ------------------------------------------------------------------------------
    def embed(self, feats: TiledFeatures) -> torch.Tensor:
        """TiledFeatures -> ``[T, h, w, D]`` (per-level unit vectors, concatenated, / sqrt(L))."""
        layers = [l2_normalise(layer) for layer in feats.layers]
        features = torch.cat(layers, dim=1) / math.sqrt(len(layers))  # [T, D_all, h, w]
        if features.shape[1] > self.config.max_dims:
            if self._dims is None:
                generator = torch.Generator().manual_seed(self.config.seed)
                dims = torch.randperm(features.shape[1], generator=generator)[: self.config.max_dims].sort().values
                self._dims = dims.to(features.device)
            features = features[:, self._dims]
        return features.permute(0, 2, 3, 1).double()

    def cell_index(self, feats: TiledFeatures) -> torch.Tensor:
        """``[T, h, w]`` position-cell index of every token (row-major over cells x cells)."""
        cells = self.config.cells
        centres = self.backbone.token_centres(feats)  # [T, h, w, 2] in original pixels
        height, width = feats.shape
        row = (centres[..., 0] / height * cells).long().clamp(0, cells - 1)
        col = (centres[..., 1] / width * cells).long().clamp(0, cells - 1)
        return row * cells + col

    # -- predict -------------------------------------------------------------------------------
    def predict(
        self,
        support_images: Sequence[np.ndarray],
        support_masks: Sequence[np.ndarray],
        query_image: np.ndarray,
    ) -> Prediction:
        """Return the calibrated anomaly map float32 ``[H, W]`` in [0, 1) and threshold 0.5."""
        supports = [self._support(image, np.asarray(mask, dtype=bool)) for image, mask in zip(support_images, support_masks)]
        gaussians = self.fit(supports)
        if gaussians is None:  # every support token touches a defect: nothing is known to be normal
            return Prediction(np.zeros(query_image.shape[:2], np.float32), None)
        feats = self.backbone.extract(query_image)
        distances = mahalanobis(self.embed(feats), self.cell_index(feats), gaussians)  # [T, h, w]
        raw = self._to_map(feats, distances)
        fitted = self.fit_threshold(supports)
        if fitted is None:
            fitted = math.sqrt(gaussians[0][0].shape[0])
        return Prediction(support_calibrated(raw, fitted), 0.5)

    def _support(self, image: np.ndarray, mask: np.ndarray) -> dict:
        feats = self.backbone.extract(image)
        fg = self.backbone.mask_fractions(feats, mask)[:, 0]  # [T, h, w]
        return dict(feats=feats, features=self.embed(feats), cell=self.cell_index(feats),
                    normal=defect_free_tokens(feats, fg), mask=mask)

    def fit(self, supports: list[dict], keep: list[torch.Tensor] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Gaussians ``[(mean [D], precision [D, D])]`` per cell from the supports' normal tokens.

        ``keep``: per support, an extra bool ``[T, h, w]`` selection (threshold cross-fitting).
        Index ``cells**2`` (last) is the pooled all-cells Gaussian; None without any normal token.
        """
        rows, cells = [], []
        for index, support in enumerate(supports):
            selected = support["normal"] if keep is None else support["normal"] & keep[index]
            rows.append(support["features"][selected])
            cells.append(support["cell"][selected])
        samples, cell_of = torch.cat(rows), torch.cat(cells)
        if len(samples) < 2:
            return None
        pooled = gaussian(samples)
        out = []
        for cell in range(self.config.cells**2):
            in_cell = samples[cell_of == cell]
            out.append(gaussian(in_cell) if len(in_cell) >= 2 else pooled)
        return out + [pooled]

    def _to_map(self, feats: TiledFeatures, distances: torch.Tensor) -> np.ndarray:
        image_map = self.backbone.to_image(feats, distances.float())
        return gaussian_blur(image_map, self.config.blur_sigma).clip(min=0).astype(np.float32)

    # -- deployable threshold ------------------------------------------------------------------
    def fit_threshold(self, supports: list[dict]) -> float | None:
        """Quantile of held-out scores of the supports' defect-free pixels (no query labels)."""
        pixels = []
        for index, support in enumerate(supports):
            if not support["normal"].any():
                continue
            for held_out, gaussians in self._folds(supports, index):
                if gaussians is None or not held_out.any():
                    continue
                distances = mahalanobis(support["features"], support["cell"], gaussians)
                usable = support["normal"] & held_out
                distances = torch.where(usable, distances, distances[usable].median())
                score_map = self._to_map(support["feats"], distances)
                pixel_rows = self._pixel_selection(support, held_out)
                pixels.append(score_map[~support["mask"] & pixel_rows])
        pixels = np.concatenate(pixels) if pixels else np.zeros(0)
        pixels = pixels[np.isfinite(pixels)]
        return float(np.quantile(pixels, self.config.threshold_quantile)) if len(pixels) else None

    def _folds(self, supports: list[dict], index: int):
        """(held-out token selection of support ``index``, Gaussians fitted without it)."""
        if len(supports) >= 2:
            others = [s for j, s in enumerate(supports) if j != index]
            yield torch.ones_like(supports[index]["normal"]), self.fit(others)
            return
        top = self._top_half(supports[index])
        yield top, self.fit(supports, keep=[~top])
        yield ~top, self.fit(supports, keep=[top])

    def _top_half(self, support: dict) -> torch.Tensor:
        """bool ``[T, h, w]``: tokens whose centre lies in the top half of the image."""
        centres = self.backbone.token_centres(support["feats"])[..., 0]
        return centres < support["feats"].shape[0] / 2

    def _pixel_selection(self, support: dict, held_out: torch.Tensor) -> np.ndarray:
        """bool ``[H, W]``: the pixels whose nearest token is held out (all pixels for leave-one-out)."""
        height = support["feats"].shape[0]
        if held_out.all():
            return np.ones(support["mask"].shape, bool)
        top_rows = np.arange(height) < height / 2
        in_top = bool(held_out[self._top_half(support)].all())
        rows = top_rows if in_top else ~top_rows
        return np.broadcast_to(rows[:, None], support["mask"].shape)


def ledoit_wolf(samples: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ledoit-Wolf (2004) shrunk covariance of ``samples [n, D]`` -> (``[D, D]``, shrinkage in [0, 1]).

    With ``S`` the maximum-likelihood covariance (divide by n) of the centred samples ``x_k``,
    ``mu = tr(S) / D``, ``d2 = ||S - mu I||_F^2 / D`` and
    ``b2 = min(d2, sum_k ||x_k x_k^T - S||_F^2 / (n^2 D))``, the estimate is
    ``(b2 / d2) mu I + (1 - b2 / d2) S``. ``sum_k ||x_k x_k^T - S||_F^2 = sum_k ||x_k||^4 - n ||S||_F^2``.
    """
    n, dims = samples.shape
    centred = samples - samples.mean(0)
    cov = centred.T @ centred / n
    mu = torch.trace(cov) / dims
    eye = torch.eye(dims, dtype=cov.dtype, device=cov.device)
    d2 = ((cov - mu * eye) ** 2).sum() / dims
    b2_raw = ((centred**2).sum(1) ** 2).sum() - n * (cov**2).sum()
    b2 = torch.clamp(b2_raw / (n**2 * dims), min=0)
    shrinkage = float(torch.clamp(b2 / d2, max=1.0)) if d2 > 0 else 1.0
    return shrinkage * mu * eye + (1 - shrinkage) * cov, shrinkage


def gaussian(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean ``[D]``, precision ``[D, D]``) of ``samples [n, D]`` with Ledoit-Wolf shrinkage + 1e-6 I."""
    cov, _ = ledoit_wolf(samples)
    cov = cov + EPS * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    return samples.mean(0), torch.linalg.inv(cov)


def mahalanobis(features: torch.Tensor, cell: torch.Tensor, gaussians) -> torch.Tensor:
    """Distance of every token ``[T, h, w, D]`` to its cell's Gaussian -> ``[T, h, w]``."""
    flat, cells = features.reshape(-1, features.shape[-1]), cell.reshape(-1)
    out = torch.zeros(len(flat), dtype=flat.dtype, device=flat.device)
    for index in cells.unique().tolist():
        rows = cells == index
        mean, precision = gaussians[index]
        centred = flat[rows] - mean
        out[rows] = torch.einsum("nd,de,ne->n", centred, precision, centred).clamp_min(0).sqrt()
    return out.reshape(features.shape[:-1])
