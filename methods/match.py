"""Training-free patch matching to the support's defect and background patches.

Source ideas (re-implemented, none of their code): GFDS (arXiv 2502.01216) matches DINOv2 query
patches to support *defect* patches; Matcher (Liu et al., ICLR 2024) and PerSAM (Zhang et al.,
ICLR 2024) locate a target by patch-level correspondence to the reference mask, Matcher with a
bidirectional (mutual) matching filter. Here, without SAM and without refinement: each query
patch scores ``max cos(q, support defect patches) - max cos(q, support background patches)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from methods._common import (
    Backbone, BackboneMethod, TiledFeatures, backbone_weight_spec, defect_free_tokens, l2_normalise,
)
from methods.configs import MatchConfig
from methods.base import MethodError

QUERY_CHUNK = 4096  # query patches per similarity matrix


class Match(BackboneMethod):
    """Nearest-patch matching: best cosine to support defect patches minus best to background.

    Per level of the backbone (multi-level: the per-level differences are averaged):

    1. Token features L2-normalised (``[T, C, h, w]``); the support mask is area-averaged to the
       token grid (fraction ``m`` per token, as the other baselines).
    2. Defect bank: support tokens with ``m >= fg_fraction``; a shot whose defect covers no token
       that much contributes its token(s) of largest ``m`` instead (tiny defects stay matchable).
       Background bank: support tokens with ``m == 0`` inside the image.
    3. ``diff(q) = max_j cos(q, fg_j) - max_i cos(q, bg_i)`` in [-2, 2]. With ``mutual_k > 0`` a
       defect patch j counts for q only when q is among j's ``mutual_k`` most similar query patches
       (Matcher's bidirectional filter): a query patch that matches a defect patch which itself
       prefers other query patches gets no defect evidence from it (``-1`` when none is left).
    4. Score map = ``sigmoid(scaler * diff)`` of the bilinearly upsampled, stitched difference;
       threshold 0.5, i.e. "closer to some defect patch than to every background patch".

    FAD episodes (all support masks empty): no defect bank, an all-zero map.
    """

    threshold = 0.5
    threshold_protocol = "native"
    weight_specs = (backbone_weight_spec("match"),)

    Config = MatchConfig

    def __init__(self, config: Config, weights: dict[str, Path]):
        if not 0 < config.fg_fraction <= 1:
            raise MethodError(f"fg_fraction must be in (0, 1], got {config.fg_fraction}")
        if config.mutual_k < 0:
            raise MethodError(f"mutual_k must be >= 0, got {config.mutual_k}")
        self.config = config
        self.backbone = Backbone(config, weights["backbone"])
        self.device = self.backbone.device  # features, banks and similarities live here

    def banks(self, support_images: Sequence[np.ndarray], support_masks: Sequence[np.ndarray]):
        """Per level: (defect patches ``[F, C]``, background patches ``[B, C]``); None without a defect."""
        fg_rows: list[list[torch.Tensor]] = []
        bg_rows: list[list[torch.Tensor]] = []
        for image, mask in zip(support_images, support_masks):
            feats = self.backbone.extract(image)
            fraction = self.backbone.mask_fractions(feats, np.asarray(mask, dtype=bool))[:, 0]  # [T, h, w]
            fg = defect_tokens(fraction, self.config.fg_fraction)
            bg = defect_free_tokens(feats, fraction)
            for level, layer in enumerate(feats.layers):
                tokens = l2_normalise(layer).permute(0, 2, 3, 1)  # [T, h, w, C]
                if level == len(fg_rows):
                    fg_rows.append([])
                    bg_rows.append([])
                fg_rows[level].append(tokens[fg])
                bg_rows[level].append(tokens[bg])
        banks = [(torch.cat(f), torch.cat(b)) for f, b in zip(fg_rows, bg_rows)]
        return banks if len(banks[0][0]) else None

    def predict(
        self,
        support_images: Sequence[np.ndarray],
        support_masks: Sequence[np.ndarray],
        query_image: np.ndarray,
    ) -> np.ndarray:
        """Return ``sigmoid(scaler * diff)``, float32 ``[H, W]`` in [0, 1], at the query's size."""
        banks = self.banks(support_images, support_masks)
        if banks is None:
            return np.zeros(query_image.shape[:2], np.float32)
        feats = self.backbone.extract(query_image)
        diffs = []
        for layer, (fg, bg) in zip(feats.layers, banks):
            query = l2_normalise(layer).permute(0, 2, 3, 1)  # [T, h, w, C]
            diffs.append(match_scores(query.reshape(-1, query.shape[-1]), fg, bg, self.config.mutual_k))
        diff = torch.stack(diffs).mean(0).reshape(feats.valid.shape[0], *feats.grid)  # [T, h, w]
        logit = self.backbone.to_image(feats, self.config.scaler * diff)
        return torch.sigmoid(torch.from_numpy(logit)).numpy().astype(np.float32)


def defect_tokens(fraction: torch.Tensor, fg_fraction: float) -> torch.Tensor:
    """bool like ``fraction``: tokens at least ``fg_fraction`` defect, else the shot's largest-fraction tokens."""
    peak = fraction.max()
    if peak <= 0:
        return torch.zeros_like(fraction, dtype=torch.bool)
    return fraction >= min(fg_fraction, float(peak))


def match_scores(query: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, mutual_k: int = 0) -> torch.Tensor:
    """``max_j cos(q, fg_j) - max_i cos(q, bg_i)`` for unit rows ``query [N, C]``, ``fg [F, C]``, ``bg [B, C]``.

    An empty background bank counts as similarity -1. With ``mutual_k > 0``, ``fg_j`` is a
    candidate for ``q`` only if ``q`` is among the ``mutual_k`` query rows most similar to ``fg_j``
    (ties broken by ``torch.topk``); a row with no candidate has defect similarity -1.
    """
    best_fg = torch.empty(len(query), device=query.device)
    best_bg = torch.full((len(query),), -1.0, device=query.device)
    allowed = None
    if mutual_k > 0:
        sim_t = fg @ query.T  # [F, N]
        top = sim_t.topk(min(mutual_k, len(query)), dim=1).indices  # [F, k]
        allowed = torch.zeros(len(fg), len(query), dtype=torch.bool, device=query.device)
        allowed.scatter_(1, top, True)
    for start in range(0, len(query), QUERY_CHUNK):
        rows = slice(start, start + QUERY_CHUNK)
        sim = query[rows] @ fg.T  # [n, F]
        if allowed is not None:
            sim = sim.masked_fill(~allowed[:, rows].T, -1.0)
        best_fg[rows] = sim.max(dim=1).values
        if len(bg):
            best_bg[rows] = (query[rows] @ bg.T).max(dim=1).values
    return best_fg - best_bg
