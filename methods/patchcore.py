"""Few-shot PatchCore (Roth et al., CVPR 2022) on a frozen patch-14 ViT (baselines-spec §3.1, §3.4)."""
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
from harness.io import LRU
from methods.configs import PatchCoreConfig
from methods.base import MethodError, Prediction
from methods.sharing import image_key

CHUNK_ELEMENTS = 2**24  # entries of one query-by-bank block (64 MB of float32)
BANK_CACHE_ENTRIES = 64  # coreset banks kept per method instance (a support recurs across episodes)
THRESHOLD_CACHE_ENTRIES = 1024  # fitted thresholds by support set (1-shot: one per support image)


class PatchCore(BackboneMethod):
    """Few-shot PatchCore: memory bank of defect-free support patches, 1-NN distance.

    * Patch feature: per layer, 3x3 average of the token map (AvgPool2d(3, 1, 1), as anomalib),
      L2-normalised, layers concatenated and scaled by 1/sqrt(L) -> unit vectors ``[N, L*C]``.
    * Memory bank: per support, the tokens farther than ``bank_margin`` (2) tokens from every
      defect pixel (a token next to the defect carries it through the 3x3 average and the
      upsampled stride-16 level; with FAD / normal supports: all tokens), then a greedy k-center
      coreset of ``coreset_ratio`` (10 %) of them, as PatchCore subsamples its bank, cached per
      support across episodes (methods/BASELINES.md: measured against a minimal 1-NN scorer).
    * Score: exact 1-NN Euclidean distance d in [0, 2] (matmul form for unit vectors), mapped to
      ``d / 2`` in [0, 1] (fixed and linear, so scores compare across episodes), bilinearly
      upsampled to the original size (tiles stitched), then a Gaussian blur sigma = 4 px at the
      original resolution (separable, truncate 4, edge replicated). Image score = max.
    * Calibration (``score_scale="support"``, default): the map is divided by the episode's
      support-fitted threshold t, ``s = r / (r + t)`` (monotone, so t maps to 0.5 and the
      decision ``s > 0.5`` equals ``r > t``). Raw distances of different objects live on different
      scales (textured surfaces are far from their own nearest neighbours everywhere), so pooled
      pixel AUROC over episodes ranks raw ``d / 2`` maps badly even where each episode's map is
      good; the calibrated map is comparable across episodes. ``"fixed"``: the raw ``d / 2`` map
      with the fitted threshold t returned as is.
    * Threshold (deployable, §3.4 protocol 4, no query labels): the support's defect-free pixels
      are scored through the same pipeline against a bank that excludes them -- leave-one-image-out
      when k >= 2; when k = 1, each token against the same image's bank minus the tokens within
      ``exclusion_radius`` tokens of it (Chebyshev, in pixels of the original image). Defect tokens'
      own scores are replaced by the median normal score before upsampling so the defect does not
      blur into the normal pixels. Threshold = ``threshold_quantile`` of those normal pixel scores.

    Deviations from the official code: ViT tokens instead of WRN50 layer2+3; per-layer L2
    normalisation (raw pre-norm ViT tokens have a few huge channels); no 1024-d projection; blur
    at the original resolution rather than the 224 input.
    """

    threshold = 0.5  # calibrated maps: the fitted threshold maps to 0.5 (raw maps: predict() returns its own)
    threshold_protocol = "deployable"  # fitted per episode on the support's defect-free pixels
    weight_specs = (backbone_weight_spec("patchcore"),)

    Config = PatchCoreConfig

    def __init__(self, config: Config, weights: dict[str, Path]):
        if not 0 < config.coreset_ratio <= 1:
            raise MethodError(f"coreset_ratio must be in (0, 1], got {config.coreset_ratio}")
        if not 0 < config.threshold_quantile <= 1:
            raise MethodError(f"threshold_quantile must be in (0, 1], got {config.threshold_quantile}")
        if config.normal_supports < 0:
            raise MethodError(f"normal_supports must be >= 0 images, got {config.normal_supports}")
        if config.bank_margin < 0:
            raise MethodError(f"bank_margin must be >= 0 tokens, got {config.bank_margin}")
        self.config = config
        self.backbone = Backbone(config, weights["backbone"])
        self.device = self.backbone.device  # features, memory bank and cdist live here
        self._banks = LRU(max_entries=BANK_CACHE_ENTRIES)  # (image, mask) -> coreset bank; supports recur
        self._thresholds = LRU(max_entries=THRESHOLD_CACHE_ENTRIES)  # support set -> fitted threshold

    # -- features ------------------------------------------------------------------------------
    def embed(self, feats: TiledFeatures) -> torch.Tensor:
        """TiledFeatures -> locally aggregated unit patch features ``[T, h, w, D]``."""
        layers = [F.avg_pool2d(layer.float(), 3, 1, 1) for layer in feats.layers]
        if not self.config.level_norm:
            return torch.cat(layers, dim=1).permute(0, 2, 3, 1)
        layers = [l2_normalise(layer) for layer in layers]
        return (torch.cat(layers, dim=1) / math.sqrt(len(layers))).permute(0, 2, 3, 1)

    # -- predict -------------------------------------------------------------------------------
    def predict(
        self,
        support_images: Sequence[np.ndarray],
        support_masks: Sequence[np.ndarray],
        query_image: np.ndarray,
    ) -> Prediction:
        """Return the anomaly map float32 ``[H, W]`` in [0, 1] and the support-fitted threshold."""
        supports = [self._support(image, np.asarray(mask, dtype=bool)) for image, mask in zip(support_images, support_masks)]
        bank = torch.cat([s["bank"] for s in supports])  # [M, D]
        feats = self.backbone.extract(query_image)
        if len(bank) == 0:  # every support token touches a defect: nothing is known to be normal
            return Prediction(np.zeros(query_image.shape[:2], np.float32), None)
        query = self.embed(feats)
        distances = _nearest_distance(query.reshape(-1, query.shape[-1]), bank).reshape(query.shape[:3])
        score_map = self._to_score_map(feats, distances)
        return self._calibrated(score_map, self.support_threshold(supports))

    def support_threshold(self, supports: list[dict]) -> float | None:
        """:meth:`fit_threshold`, computed once per support set (it depends on nothing else)."""
        key = tuple(s["key"] for s in supports)
        if key not in self._thresholds:
            self._thresholds.put(key, self.fit_threshold(supports))
        return self._thresholds.get(key)

    def _calibrated(self, score_map: np.ndarray, fitted: float | None, **extra) -> Prediction:
        if self.config.score_scale == "fixed" or fitted is None:
            return Prediction(score_map.clip(max=1), fitted, **extra)
        return Prediction(support_calibrated(score_map, fitted), 0.5, **extra)

    def _support(self, image: np.ndarray, mask: np.ndarray) -> dict:
        """Features of one support and its memory bank (defect-free tokens, coreset-subsampled)."""
        feats = self.backbone.extract(image)
        fg = self.backbone.mask_fractions(feats, mask)[:, 0]  # [T, h, w]
        margin = self.config.bank_margin
        if margin > 0:  # a token whose 3x3 neighbourhood holds defect pixels carries them in its feature
            fg = F.max_pool2d(fg[:, None], 2 * margin + 1, 1, margin)[:, 0]
        features = self.embed(feats)  # [T, h, w, D]
        normal = defect_free_tokens(feats, fg)  # [T, h, w]
        centres = self.backbone.token_centres(feats)  # [T, h, w, 2]
        key = (image_key(image), image_key(mask))
        bank = self._banks.get(key)
        if bank is None:
            bank = self._coreset(features[normal], centres[normal])
            if self.config.coreset_ratio < 1:  # the greedy selection is the costly part: supports recur
                self._banks.put(key, bank)
        return dict(feats=feats, features=features, normal=normal, mask=mask, centres=centres,
                    bank=bank[0], bank_centres=bank[1], key=key)

    def _to_score_map(self, feats: TiledFeatures, distances: torch.Tensor) -> np.ndarray:
        """1-NN distances ``[T, h, w]`` in [0, 2] -> blurred score map ``[H, W]`` in [0, 1]."""
        image_map = self.backbone.to_image(feats, distances / 2)
        return gaussian_blur(image_map, self.config.blur_sigma).clip(min=0).astype(np.float32)

    def _coreset(self, features: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bank rows ``[M, D]``, their centres ``[M, 2]``): all rows, or a greedy k-center coreset."""
        if self.config.coreset_ratio >= 1 or len(features) < 2:
            return features, centres
        count = max(1, math.ceil(self.config.coreset_ratio * len(features)))
        chosen = greedy_coreset(features, count, seed=self.config.seed)
        return features[chosen], centres[chosen]

    # -- deployable threshold ------------------------------------------------------------------
    def fit_threshold(self, supports: list[dict]) -> float | None:
        """Quantile of leave-out scores of the supports' defect-free pixels (no query labels)."""
        radius = self.config.exclusion_radius + 0.5
        normal_pixels = []
        for index, support in enumerate(supports):
            features = support["features"].reshape(-1, support["features"].shape[-1])
            normal = support["normal"].reshape(-1)
            if len(supports) >= 2:
                others = torch.cat([s["bank"] for j, s in enumerate(supports) if j != index])
                distances = _nearest_distance(features, others)
            else:
                reach = radius * self.backbone.token_pixels(support["feats"])
                distances = _nearest_distance(
                    features, support["bank"], centres=support["centres"].reshape(-1, 2),
                    bank_centres=support["bank_centres"], reach=reach,
                )
            if not normal.any():
                continue
            distances = torch.where(normal, distances, distances[normal].median())
            score_map = self._to_score_map(support["feats"], distances.reshape(support["normal"].shape))
            normal_pixels.append(score_map[~support["mask"]])
        pixels = np.concatenate(normal_pixels) if normal_pixels else np.zeros(0)
        pixels = pixels[np.isfinite(pixels)]
        if len(pixels) == 0:
            return None
        return float(np.quantile(pixels, self.config.threshold_quantile))


def _nearest_distance(
    query: torch.Tensor,
    bank: torch.Tensor,
    centres: torch.Tensor | None = None,
    bank_centres: torch.Tensor | None = None,
    reach: float = 0.0,
) -> torch.Tensor:
    """Exact 1-NN Euclidean distance of each query row ``[N, D]`` to ``bank`` ``[M, D]`` -> ``[N]``.

    With ``centres`` (``[N, 2]`` / ``[M, 2]`` pixel positions), bank rows closer than ``reach``
    (Chebyshev) to the query row are excluded (:func:`pairs_within`: a few per row, dropped
    before the minimum); a row with no bank row left gets the largest finite distance (2, the
    unit-vector maximum, when none is finite). Unit-length rows (PatchCore's features) take the
    matmul form ``sqrt(2 - 2 max_j q.b_j)``: one GEMM per block and one square root per row
    (torch.cdist writes and square-roots every entry); other rows use ``torch.cdist``.
    """
    out = torch.full((len(query),), float("inf"), device=query.device)
    if bank.numel() == 0:
        return out.clamp(max=2.0)
    excluded = None if centres is None else pairs_within(centres, bank_centres, reach)
    unit = _unit_rows(query) and _unit_rows(bank)
    step = max(64, CHUNK_ELEMENTS // len(bank))  # query rows per [n, M] block
    for start in range(0, len(query), step):
        rows = slice(start, start + step)
        if unit:  # |q - b|^2 = 2 - 2 q.b: one matmul, the square root only of each row's best
            scores = query[rows] @ bank.T  # [n, M] cosine similarities
        else:
            scores = -torch.cdist(query[rows][None], bank[None])[0]  # [n, M] negated distances
        if excluded is not None:
            pair_rows, pair_cols = excluded
            here = (pair_rows >= start) & (pair_rows < start + step)
            scores[pair_rows[here] - start, pair_cols[here]] = float("-inf")
        best = scores.amax(dim=1)
        out[rows] = (2 - 2 * best).clamp(min=0).sqrt() if unit else -best
    finite = out[torch.isfinite(out)]
    return out.clamp(max=float(finite.max()) if len(finite) else 2.0)


def _unit_rows(rows: torch.Tensor) -> bool:
    """Whether every row has unit length (to float32 rounding): the matmul form is then exact."""
    return rows.numel() == 0 or bool(((rows * rows).sum(1) - 1).abs().max() < 1e-4)


def pairs_within(centres: torch.Tensor, bank_centres: torch.Tensor, reach: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols): every pair of a centre ``[N, 2]`` and a bank centre ``[M, 2]`` closer than
    ``reach`` (Chebyshev), found through square buckets of side ``reach`` (such a pair lies in the
    same or a neighbouring bucket), without an ``[N, M]`` gap matrix."""
    cell_q = torch.floor(centres / reach).long() + 1  # [N, 2], >= 0 after the +1 margin
    cell_b = torch.floor(bank_centres / reach).long() + 1  # [M, 2]
    width = int(max(cell_q[:, 1].max(), cell_b[:, 1].max())) + 2
    bank_key = cell_b[:, 0] * width + cell_b[:, 1]
    order = torch.argsort(bank_key)
    sorted_key = bank_key[order]
    rows, cols = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            key = (cell_q[:, 0] + dy) * width + cell_q[:, 1] + dx  # [N]
            low = torch.searchsorted(sorted_key, key, side="left")
            count = torch.searchsorted(sorted_key, key, side="right") - low
            for j in range(int(count.max()) if len(count) else 0):  # bank rows per bucket: a handful
                has = (count > j).nonzero().flatten()
                rows.append(has)
                cols.append(order[low[has] + j])
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=centres.device)
        return empty, empty
    rows, cols = torch.cat(rows), torch.cat(cols)
    near = (centres[rows] - bank_centres[cols]).abs().amax(-1) < reach
    return rows[near], cols[near]


def greedy_coreset(features: torch.Tensor, count: int, seed: int = 0, dims: int = 128) -> torch.Tensor:
    """Indices of ``count`` rows chosen by greedy k-center on a Gaussian random projection.

    Each step adds the row farthest from those chosen so far; squared distances to the newest
    row come from one matrix-vector product (``|x|^2 + |c|^2 - 2 x.c``), so a step reads the
    rows once."""
    generator = torch.Generator().manual_seed(seed)  # CPU generator: the same draw on every device
    features = features.float()
    if features.shape[1] > dims:
        projection = torch.randn(features.shape[1], dims, generator=generator) / math.sqrt(dims)
        features = features @ projection.to(features.device)
    squared = (features * features).sum(1)  # [N]
    chosen = [int(torch.randint(len(features), (1,), generator=generator))]
    min_distance = squared + squared[chosen[-1]] - 2 * (features @ features[chosen[-1]])
    for _ in range(count - 1):
        chosen.append(int(min_distance.argmax()))
        newest = squared + squared[chosen[-1]] - 2 * (features @ features[chosen[-1]])
        torch.minimum(min_distance, newest, out=min_distance)
    return torch.tensor(chosen, device=features.device)


def gaussian_blur(image_map: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``[H, W]`` (truncate 4 sigma, edges replicated)."""
    if sigma <= 0:
        return image_map
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = torch.from_numpy(np.ascontiguousarray(image_map, dtype=np.float32))[None, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x[0, 0].numpy()
