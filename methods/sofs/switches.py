"""Which of the paper's training switches have something to act on in a training set.

An ablation head trained with a switch off is only informative when the switch changes what the
head learns. Two of SOFS's contributions need something in the data:

* non-resizing (``--no-non-resizing``): a native-resolution crop differs from the whole image
  resized only when the image is larger than the crop and its defect small (defect area at most
  ``area_resize_ratio``; a larger defect is resized whole either way). When every training image
  fits in the crop or has a large defect, each view is the whole image resized with or without the
  switch (the support views' augmentations are all that differ).
* mixed normal Dice (``--no-mixed-normal-dice``): its normal term acts only on a query whose
  target (the defect fraction per backbone patch, > 0.1) is empty. When every query view is a whole
  image (as above, or non-resizing off) each holds its defect, so a query is normal only where a
  tiny defect falls under the target threshold. The first :data:`SAMPLED_QUERIES` training
  queries are rendered (the same views training draws) and their targets counted: none empty, and
  the plain Dice + CE of the switch off trains the same head as the mixed normal Dice.

:func:`inert_switches` returns ``{switch: one-line reason}``; training logs each line and keeps
the dict in the head's hparams (``inert_switches``), whence a head trained with such a switch off
carries the reason to the report's flags (``methods.sofs.checkpoint.head_trained_on``).
"""
from __future__ import annotations

from methods.sofs.data import area_fraction
from methods.sofs.loss import patch_target

SAMPLED_QUERIES = 64  # training queries rendered to look for an empty target


def inert_switches(sampler, config, patch: int) -> dict[str, str]:
    """``{switch: reason}`` for the training switches that cannot act on ``sampler``'s records
    (``config``: a ``TrainConfig``; ``patch``: the backbone's pixels per token)."""
    episode = config.episode
    crop = int(episode.crop_size * min(episode.crop_ratio))
    whole = _every_view_whole(sampler, crop, episode.area_resize_ratio)
    notes = {}
    if whole:
        notes["non_resizing"] = (
            f"non-resizing cannot act on these training images: each fits in the {crop} px crop or has a defect "
            f"over {100 * episode.area_resize_ratio:g} % of it, so every view is the whole image resized, with "
            "or without --no-non-resizing (only the support views' augmentations differ)")
    if whole or not episode.non_resizing:
        sampled = min(SAMPLED_QUERIES, config.steps * config.accumulate * config.batch_size)
        normal = _empty_targets(sampler, range(sampled), patch, config)
        if sampled and normal == 0:
            size = episode.image_size // patch
            notes["mixed_normal_dice"] = (
                f"mixed normal Dice cannot act on these training images: every query view is a whole image "
                f"holding its defect, and none of the first {sampled} training queries has an empty {size}x{size} "
                "target, so --no-mixed-normal-dice trains the same head as the full loss")
    return notes


def _every_view_whole(sampler, crop: int, area_resize_ratio: float) -> bool:
    """Every training record fits in a ``crop`` window or has a defect resized whole (masks are
    read only for records larger than the crop, and only until one with a small defect)."""
    for index, record in enumerate(sampler.records):
        if record.height <= crop and record.width <= crop:
            continue
        mask = sampler._load(index)[1]  # the sampler's cached reader (same package)
        if area_fraction(mask) <= area_resize_ratio:
            return False
    return True


def _empty_targets(sampler, indices, patch: int, config) -> int:
    """How many of the training samples ``indices`` have a query whose target is empty."""
    empty = 0
    for index in indices:
        query, _ = sampler.plan(index)
        _, mask = sampler.render(query)
        target = patch_target(mask[None], patch, config.target_threshold, config.intensity_downsampling)
        empty += int(target.sum() == 0)
    return empty
