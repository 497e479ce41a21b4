"""Mixed normal Dice + CE loss of SOFS (spec §2.4), at the 37 x 37 patch resolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_SMOOTH = 1e-5
LOG_EPS = 1e-6


def patch_target(query_mask: torch.Tensor, patch: int = 14, threshold: float = 0.1,
                 intensity: bool = True) -> torch.Tensor:
    """``[B, 1, 518, 518]`` binary -> ``[B, 37, 37]`` float {0, 1}: patch defect fraction > 0.1.

    A patch needs more than 10 % (>= 20 of 196) defect pixels to be a positive target (spec §7.1).
    """
    mask = query_mask.float()
    if intensity:
        fraction = F.avg_pool2d(mask, patch, patch)
    else:
        size = (mask.shape[-2] // patch, mask.shape[-1] // patch)
        fraction = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
    return (fraction[:, 0] > threshold).float()


def mixed_normal_dice(prob: torch.Tensor, target: torch.Tensor, smooth_r: float) -> torch.Tensor:
    """Mean over episodes of the per-episode Dice term; prob, target ``[B, h, w]``.

    defective (sum y > 0): 1 - (2 sum(y p) + 1e-5) / (sum y + sum p + 1e-5)
    normal    (sum y = 0): 1 - 1 / (eta sum p + 1)   with eta = ``smooth_r``
    """
    normal = 1 - 1 / (smooth_r * prob.flatten(1).sum(1) + 1)
    return torch.where(target.flatten(1).sum(1) > 0, episode_dice(prob, target), normal).mean()


def episode_dice(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per episode ``[B]``: 1 - (2 sum(y p) + 1e-5) / (sum y + sum p + 1e-5)."""
    intersection = (prob * target).flatten(1).sum(1)
    return 1 - (2 * intersection + DICE_SMOOTH) / (target.flatten(1).sum(1) + prob.flatten(1).sum(1) + DICE_SMOOTH)


def binary_ce(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-mean[y log(p + 1e-6) + (1 - y) log(1 - p + 1e-6)] over all pixels of all episodes."""
    return -(target * torch.log(prob + LOG_EPS) + (1 - target) * torch.log(1 - prob + LOG_EPS)).mean()


def logits_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The same CE computed from logits (``binary_cross_entropy_with_logits``): its gradient,
    ``sigmoid(z) - y``, never vanishes, while ``log(p + 1e-6)`` is flat once ``p < 1e-6``."""
    return F.binary_cross_entropy_with_logits(logits, target)




def plain_dice(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over episodes of :func:`episode_dice` (no normal term)."""
    return episode_dice(prob, target).mean()


def sofs_loss(prob: torch.Tensor, target: torch.Tensor, smooth_r: float = 1e5,
              dice_weight: float = 1.0, ce_weight: float = 0.01,
              logits: torch.Tensor | None = None, mixed_normal: bool = True) -> torch.Tensor:
    """dice_weight * mixed normal Dice + ce_weight * CE; prob = sigmoid(logits) ``[B, 37, 37]``.

    With ``logits`` the CE term is :func:`logits_ce` (no saturation; see methods/sofs/README.md
    decision 23), else the reference's ``log(p + 1e-6)`` form (:func:`binary_ce`).

    ``mixed_normal=False`` (the ablation ``--no-mixed-normal-dice``): a standard FSS loss, plain
    Dice + CE over the defective episodes only (target not empty); normal episodes are left out of
    both terms, and a batch without a defective episode gives a zero loss (no gradient).
    """
    if not mixed_normal:
        defective = target.flatten(1).sum(1) > 0
        if not bool(defective.any()):
            return prob.sum() * 0.0
        prob, target = prob[defective], target[defective]
        logits = None if logits is None else logits[defective]
        dice = plain_dice(prob, target)
    else:
        dice = mixed_normal_dice(prob, target, smooth_r)
    ce = binary_ce(prob, target) if logits is None else logits_ce(logits, target)
    return dice_weight * dice + ce_weight * ce
