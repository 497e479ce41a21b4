"""SOFS model (spec §1.3-1.6): frozen ViT features -> parameter-free priors -> learned head.

Notation: B queries, N support sets (N == B, or N == 1 shared by all B queries), n support crops
per set (K support images x S crops), L feature levels of C_l channels each (all C for a ViT),
h = w = S / P token grid of an S x S input (ViT-B/14: S = 518, P = 14, h = 37; EfficientNet-Lite
levels 2 + 3: P = 8), D = transformer dim.

Learned module names mirror the reference ``Feature_Recorrect_Module`` (``down_query``,
``down_supp``, ``down_supp_semantic``, ``supp_merge_semantic``, ``query_merge_semantic``,
``query_semantic_transformer``), so the released ``SOFS_model.pth`` loads through the small key
mapping of :mod:`methods.sofs.checkpoint`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.features import FeatureExtractor

PROTOTYPE_EPS = 5e-4  # weighted-GAP denominator epsilon of the reference (not 1e-5)
COSINE_EPS = 1e-7  # semantic-similarity cosine epsilon
PRIOR_SCALE = 10.0  # similarity channels are multiplied by 10 before query_merge ("follows HDMNet")


@dataclass(frozen=True)
class HeadConfig:
    """Shapes of the learned head. Defaults are the released ViT-B/14 model (fea_dim 4608).

    ``level_dims``: per-level channel widths of a backbone whose levels differ (a CNN pyramid);
    empty means ``num_layers`` levels of ``backbone_dim`` each (a ViT, the reference layout).
    """

    backbone_dim: int = 768
    num_layers: int = 6
    level_dims: tuple[int, ...] = ()
    reduce_dim: int = 256
    transformer_dim: int = 256
    num_heads: int = 4
    num_stages: int = 2
    mlp_ratio: int = 4
    temperature: float = 0.1
    drop_rate: float = 0.1
    down_dropout: float = 0.5
    abnormal_prior: bool = True  # reference ``normal_sim_aug``: 2L similarity channels, else L

    def __post_init__(self):
        if self.level_dims and len(self.level_dims) != self.num_layers:
            raise ValueError(f"level_dims {self.level_dims} do not give {self.num_layers} levels")

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.level_dims) or (self.backbone_dim,) * self.num_layers

    @property
    def fea_dim(self) -> int:
        return sum(self.dims)

    @property
    def prior_channels(self) -> int:
        return self.num_layers * (2 if self.abnormal_prior else 1)


# ------------------------------------------------------------------------------------------
# Parameter-free quantities (spec §1.3)


def downsample_mask(mask: torch.Tensor, patch: int = 14, intensity: bool = True) -> torch.Tensor:
    """``[N, 1, H, W]`` binary mask -> ``[N, 1, H/P, W/P]`` support weights.

    ``intensity``: the per-patch defect fraction (avg-pool P x P, stride P), so a 1-pixel defect
    keeps weight 1/P^2. Otherwise bilinear interpolation (align_corners False), the ablation.
    """
    mask = mask.float()
    if intensity:
        return F.avg_pool2d(mask, patch, patch)
    size = (mask.shape[-2] // patch, mask.shape[-1] // patch)
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=False)


def weighted_gap(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted global average pool: ``[N, C, h, w]``, ``[N, 1, h, w]`` -> ``[N, C, 1, 1]``."""
    total = (features * weights).sum(dim=(2, 3), keepdim=True)
    return total / (weights.sum(dim=(2, 3), keepdim=True) + PROTOTYPE_EPS)


def semantic_similarity(
    query: torch.Tensor, support: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Max cosine similarity of each query token to the masked support tokens, mean over supports.

    query ``[B, C, h, w]``; support ``[N, n, C, h, w]``; weights ``[N, n, 1, h, w]`` (N = B or 1)
    -> ``[B, 1, h, w]``. Support tokens are multiplied by their weight (cosine eps 1e-7), so a
    zero-weight token has similarity exactly 0; only non-zero-weight tokens are computed, and 0
    enters the max wherever a support set has a zero-weight token (identical to the full product).
    """
    batch, channels, height, width = query.shape
    q = query.flatten(2).transpose(1, 2)  # [B, hw, C]
    q_norm = q.norm(dim=2, keepdim=True)  # [B, hw, 1]
    per_support = []
    for i in range(support.shape[1]):
        w = weights[:, i].flatten(2)  # [N, 1, hw]
        columns = (w > 0).any(dim=0).flatten().nonzero().flatten()
        s = (support[:, i].flatten(2) * w)[:, :, columns]  # [N, C, k]
        if columns.numel():
            cos = (q @ s) / (s.norm(dim=1, keepdim=True) * q_norm + COSINE_EPS)  # [B, hw, k]
            best = cos.max(dim=2).values  # [B, hw]
        else:
            best = torch.zeros(batch, height * width, dtype=q.dtype, device=q.device)
        has_masked_token = (w == 0).flatten(1).any(dim=1)  # [N]
        best = torch.where(has_masked_token[:, None], best.clamp_min(0.0), best)
        per_support.append(best)
    return torch.stack(per_support, dim=1).mean(dim=1).view(batch, 1, height, width)


def abnormal_prior(query: torch.Tensor, support: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """1 - max cosine similarity to the support tokens of all n crops, defect tokens weighted (1-m).

    query ``[B, C, h, w]``; support ``[N, n, C, h, w]``; weights ``[N, n, 1, h, w]`` (N = B or 1)
    -> ``[B, 1, h, w]`` in [0, 2] (masked tokens contribute 0, not -inf, as in the reference).
    Computed support by support with a running max, so memory stays ``[B, hw, hw]``.
    """
    batch, _, height, width = query.shape
    q = F.normalize(query.flatten(2).transpose(1, 2), dim=2)  # [B, hw, C]
    best = None
    for i in range(support.shape[1]):
        s = F.normalize(support[:, i].flatten(2), dim=1)  # [N, C, hw]
        sim = (q @ s) * (1.0 - weights[:, i].flatten(2))  # [B, hw, hw]
        current = sim.max(dim=2).values
        best = current if best is None else torch.maximum(best, current)
    return (1.0 - best).view(batch, 1, height, width)


def nonlearnable_fusion(
    query: torch.Tensor, support: torch.Tensor, weights: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Reverse-softmax fusion: each support token distributes itself over QUERY positions.

    query ``[B, hw, D]``; support ``[N, n*hw, D]``; weights ``[N, 1, n*hw]`` -> ``[B, hw, D]``.
    A = cos(q, s) * m; W = softmax(A / tau, dim=1 (query positions)); q + W @ (s * m).
    Zero-weight support columns get a uniform softmax but add exactly 0, so only columns with a
    non-zero weight in some support set are computed.
    """
    columns = (weights > 0).any(dim=0).flatten().nonzero().flatten()
    s = support[:, columns]  # [N, k, D]
    w = weights[:, :, columns]  # [N, 1, k]
    affinity = F.normalize(query, dim=2) @ F.normalize(s, dim=2).transpose(1, 2) * w  # [B, hw, k]
    attention = torch.softmax(affinity / temperature, dim=1)
    return query + attention @ (s * w.transpose(1, 2))


# ------------------------------------------------------------------------------------------
# Learned head (spec §1.4-1.5)


def _down_projection(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, 1, bias=False), nn.ReLU(inplace=True), nn.Dropout2d(dropout)
    )


def _merge(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 1, bias=False), nn.ReLU(inplace=True))


class SelfAttention(nn.Module):
    """Multi-head self-attention without biases; scores scaled by 1/(sqrt(d_head) + 1e-9)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"transformer dim {dim} not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.linear_q = nn.Linear(dim, dim, bias=False)
        self.linear_k = nn.Linear(dim, dim, bias=False)
        self.linear_v = nn.Linear(dim, dim, bias=False)
        self.linear_o = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, T, D] -> [N, T, D]``."""
        n, t, d = x.shape
        heads = [
            proj(x).view(n, t, self.num_heads, d // self.num_heads).transpose(1, 2)
            for proj in (self.linear_q, self.linear_k, self.linear_v)
        ]
        scale = 1.0 / (math.sqrt(d // self.num_heads) + 1e-9)
        out = F.scaled_dot_product_attention(*heads, scale=scale)  # [N, heads, T, d_head]
        return self.linear_o(out.transpose(1, 2).reshape(n, t, d))


class MixFFN(nn.Module):
    """SegFormer FFN on the token grid: 1x1 -> depthwise 3x3 -> GELU -> drop -> 1x1 -> drop.

    ``layers`` indices 0, 1, 4 hold the convs, as in the reference state dict.
    """

    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        dropout = nn.Dropout(drop)
        self.layers = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            dropout,
            nn.Conv2d(hidden, dim, 1),
            dropout,
        )

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """``[N, T, D] -> [N, T, D]`` (no residual)."""
        n, t, d = x.shape
        grid = x.transpose(1, 2).reshape(n, d, *hw)
        return self.layers(grid).flatten(2).transpose(1, 2)


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + drop(MHSA(LN(x))); x + MixFFN(LN(x)). LN eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, drop: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.proj_drop = nn.Dropout(drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = MixFFN(dim, mlp_ratio * dim, drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.proj_drop(self.attn(self.norm1(x)))
        return x + self.ffn(self.norm2(x), hw)


@dataclass
class SupportCode:
    """What the head keeps of one or more support sets (N sets of n crops)."""

    tokens: torch.Tensor  # [N, n*hw, D] support tokens after the transformer
    weights: torch.Tensor  # [N, 1, n*hw] downsampled support masks
    prototype: torch.Tensor  # [N, D] transformer prototype (support_prototype conv + weighted GAP)
    prototype_map: torch.Tensor  # [N, R, 1, 1] mean over n of down_supp_semantic(layer prototypes)


class FusionTransformer(nn.Module):
    """Shared-weight self-attention stages for query and supports, prototype, non-learnable fusion."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.temperature = cfg.temperature
        self.sa_layers = nn.ModuleList(
            EncoderLayer(cfg.transformer_dim, cfg.num_heads, cfg.mlp_ratio, cfg.drop_rate)
            for _ in range(cfg.num_stages)
        )
        self.support_prototype = nn.Conv2d(cfg.transformer_dim, cfg.transformer_dim, 1)

    def _encode(self, grid: torch.Tensor) -> torch.Tensor:
        """``[N, D, h, w] -> [N, hw, D]`` through all stages."""
        hw = tuple(grid.shape[-2:])
        x = grid.flatten(2).transpose(1, 2)
        for layer in self.sa_layers:
            x = layer(x, hw)
        return x

    def encode_support(self, support: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """support ``[N*n, D, h, w]``, weights ``[N, n, 1, h, w]`` ->
        tokens ``[N, n*hw, D]``, flat weights ``[N, 1, n*hw]``, prototype ``[N, D]``."""
        sets, n = weights.shape[:2]
        dim, height, width = support.shape[1:]
        tokens = self._encode(support)  # [N*n, hw, D]
        grid = tokens.transpose(1, 2).reshape(sets * n, dim, height, width)
        prototype = weighted_gap(self.support_prototype(grid), weights.flatten(0, 1))
        prototype = prototype.view(sets, n, dim).mean(dim=1)
        return tokens.reshape(sets, n * height * width, dim), weights.reshape(sets, 1, -1), prototype

    def fuse_query(self, query: torch.Tensor, code: SupportCode) -> torch.Tensor:
        """query ``[B, D, h, w]`` -> fused query ``[B, D, h, w]``."""
        batch, dim, height, width = query.shape
        q = self._encode(query)
        fused = nonlearnable_fusion(q, code.tokens, code.weights, self.temperature)
        return fused.transpose(1, 2).reshape(batch, dim, height, width)


class SOFSHead(nn.Module):
    """The learned part of SOFS (reference ``feature_recorrect``), ~5.47 M parameters for ViT-B."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        r, d = cfg.reduce_dim, cfg.transformer_dim
        self.down_query = _down_projection(cfg.fea_dim, r, cfg.down_dropout)
        self.down_supp = _down_projection(cfg.fea_dim, r, cfg.down_dropout)
        self.down_supp_semantic = _down_projection(cfg.fea_dim, r, cfg.down_dropout)
        self.supp_merge_semantic = _merge(2 * r, d)
        self.query_merge_semantic = _merge(2 * r + cfg.prior_channels, d)
        self.query_semantic_transformer = FusionTransformer(cfg)

    def encode_support(
        self, features: torch.Tensor, prototypes: torch.Tensor, weights: torch.Tensor
    ) -> SupportCode:
        """features ``[N*n, L*C, h, w]``; per-layer prototypes ``[N*n, L*C, 1, 1]``;
        weights ``[N, n, 1, h, w]`` -> :class:`SupportCode`.

        The prototype map is constant over the grid, so ``down_supp_semantic`` (1x1 conv, ReLU,
        channel dropout) runs on ``[., ., 1, 1]`` and is broadcast; the result is the same.
        """
        sets, n = weights.shape[:2]
        supp = self.down_supp(features)  # [N*n, R, h, w]
        proto = self.down_supp_semantic(prototypes)  # [N*n, R, 1, 1]
        merged = self.supp_merge_semantic(torch.cat([supp, proto.expand_as(supp)], dim=1))
        tokens, flat_weights, prototype = self.query_semantic_transformer.encode_support(merged, weights)
        prototype_map = proto.view(sets, n, *proto.shape[1:]).mean(dim=1)
        return SupportCode(tokens, flat_weights, prototype, prototype_map)

    def forward(self, features: torch.Tensor, priors: torch.Tensor, code: SupportCode) -> torch.Tensor:
        """features ``[B, L*C, h, w]``; priors ``[B, L or 2L, h, w]`` -> logits ``[B, h, w]``."""
        query = self.down_query(features)  # [B, R, h, w]
        prototype_map = code.prototype_map.expand(query.shape[0], -1, *query.shape[2:])
        merged = self.query_merge_semantic(
            torch.cat([query, prototype_map, PRIOR_SCALE * priors], dim=1)
        )
        fused = self.query_semantic_transformer.fuse_query(merged, code)  # [B, D, h, w]
        prototype = code.prototype.expand(fused.shape[0], -1)
        return torch.einsum("bd,bdhw->bhw", prototype, fused)


# ------------------------------------------------------------------------------------------
# Whole model


@dataclass
class SupportContext:
    """Everything computed once per support set, reused for every query tile."""

    features: list[torch.Tensor]  # L x [N, n, C, h, w]
    weights: torch.Tensor  # [N, n, 1, h, w]
    mask_weight: torch.Tensor  # [N]: 1 if any support crop has a defect pixel, else 0
    code: SupportCode


@dataclass
class QueryOutput:
    logits: torch.Tensor  # [B, h, w]
    abnormal_prior: torch.Tensor  # [B, 1, h, w]: max over layers of the per-layer prior maps


class SOFSModel(nn.Module):
    """Frozen backbone + priors + :class:`SOFSHead`.

    ``intensity_downsampling``: patch-fraction mask downsampling (else bilinear, the ablation).
    ``prior_input``: feed the abnormal-prior channels to the head; when False and the head was
    built with ``abnormal_prior=True`` the channels are zeroed (same weights, prior removed).
    """

    def __init__(
        self,
        backbone: FeatureExtractor,
        head: SOFSHead,
        intensity_downsampling: bool = True,
        prior_input: bool = True,
    ):
        super().__init__()
        if tuple(backbone.dims) != head.cfg.dims:
            raise ValueError(f"head expects level widths {head.cfg.dims}, backbone gives {tuple(backbone.dims)}")
        self.backbone = backbone
        self.head = head
        self.patch = backbone.stride  # pixels per token; masks are intensity-downsampled with it
        self.intensity_downsampling = intensity_downsampling
        self.prior_input = prior_input
        backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> SOFSModel:
        super().train(mode)
        self.backbone.eval()  # frozen backbone always in eval mode
        return self

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, S, S]`` -> L x ``[B, C_l, S/P, S/P]`` (no grad)."""
        with torch.no_grad():
            return [f.float() for f in self.backbone(images)]

    def downsample(self, masks: torch.Tensor) -> torch.Tensor:
        """``[N, 1, S, S]`` -> ``[N, 1, S/P, S/P]``."""
        return downsample_mask(masks, self.patch, self.intensity_downsampling)

    def support_context(self, features: list[torch.Tensor], masks: torch.Tensor) -> SupportContext:
        """features L x ``[N*n, C_l, h, w]``; masks ``[N, n, 1, S, S]`` -> :class:`SupportContext`."""
        sets, n = masks.shape[:2]
        weights = self.downsample(masks.flatten(0, 1))  # [N*n, 1, h, w]
        with torch.no_grad():
            prototypes = torch.cat([weighted_gap(f, weights) for f in features], dim=1)
        weights = weights.view(sets, n, *weights.shape[1:])
        return SupportContext(
            features=[f.view(sets, n, *f.shape[1:]) for f in features],
            weights=weights,
            mask_weight=(masks.flatten(1).sum(dim=1) > 0).float(),
            code=self.head.encode_support(torch.cat(features, dim=1), prototypes, weights),
        )

    def query(self, features: list[torch.Tensor], context: SupportContext) -> QueryOutput:
        """query features L x ``[B, C, h, w]`` -> logits ``[B, h, w]`` + abnormal prior."""
        pairs = list(zip(features, context.features))
        with torch.no_grad():
            semantic = [semantic_similarity(q, s, context.weights) for q, s in pairs]
            normal = [abnormal_prior(q, s, context.weights) for q, s in pairs]
        priors = semantic
        if self.head.cfg.abnormal_prior:
            priors = semantic + (normal if self.prior_input else [torch.zeros_like(m) for m in normal])
        logits = self.head(torch.cat(features, dim=1), torch.cat(priors, dim=1), context.code)
        return QueryOutput(logits, torch.cat(normal, dim=1).max(dim=1, keepdim=True).values)

    def forward(
        self, query_images: torch.Tensor, support_images: torch.Tensor, support_masks: torch.Tensor
    ) -> tuple[QueryOutput, torch.Tensor]:
        """query ``[B, 3, S, S]``; supports ``[B, n, 3, S, S]``; masks ``[B, n, 1, S, S]`` ->
        (:class:`QueryOutput`, mask_weight ``[B]``)."""
        context = self.support_context(self.encode(support_images.flatten(0, 1)), support_masks)
        return self.query(self.encode(query_images), context), context.mask_weight


def probability(
    output: QueryOutput, mask_weight: torch.Tensor, size: int, fad_fallback: bool = True
) -> torch.Tensor:
    """Inference head (spec §1.6) -> defect probability ``[B, size, size]``.

    Logits and the abnormal prior are upsampled bilinearly (align_corners False); where a support
    set has no defect pixel (``mask_weight`` 0) and ``fad_fallback`` is on, the output is the
    training-free abnormal prior (clipped to [0, 1]) instead of the learned map.
    """
    logits = F.interpolate(output.logits[:, None], size=(size, size), mode="bilinear", align_corners=False)
    learned = torch.sigmoid(logits[:, 0])
    if not fad_fallback:
        return learned
    prior = F.interpolate(output.abnormal_prior, size=(size, size), mode="bilinear", align_corners=False)
    weight = mask_weight.view(-1, 1, 1).to(learned)
    return weight * learned + (1 - weight) * prior[:, 0].clamp(0.0, 1.0)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
