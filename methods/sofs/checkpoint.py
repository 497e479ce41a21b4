"""SOFS head checkpoints: the project's own format and the released reference ``SOFS_model.pth``.

Own format (``torch.save`` of plain data, loadable with ``weights_only=True``)::

    {"format": "sofs-bench/sofs-head/1", "hparams": {...}, "state_dict": {name: tensor}}

``hparams`` carries what is needed to rebuild the shapes: ``backbone`` (an ``ARCHS`` name),
``layers``, ``level_dims`` (per-level widths, CNN backbones only), ``image_size`` (the model
input side, a multiple of the backbone's coarsest stride; 518 when absent), ``reduce_dim``,
``transformer_dim``, ``num_heads``, ``num_stages``, ``mlp_ratio``, ``temperature``,
``abnormal_prior`` (plus provenance such as training options).

What a head was trained on (``harness.class_split``; :func:`head_trained_on`): ``train_classes`` (class
ids), ``train_dataset`` (the dataset's name), ``train_class_sha256`` (class id -> fingerprint of its
images and masks), ``train_data_sha256``, and ``inert_switches`` (paper switch -> why it could not act
on the training data, ``methods.sofs.switches``). The released ``SOFS_model.pth`` records none of
them (trained by the SOFS authors on VISION V1); the shipped head predates them and has its record
in :data:`SHIPPED_RECORDS`.

Reference layout (the released checkpoint, a state dict of the whole ``SOFS`` module, possibly
``module.``-prefixed by DDP): ``backbone.*`` (DINOv2, skipped here; see :func:`load_backbone`)
and ``feature_recorrect.*``. The mapping to this package's names is::

    feature_recorrect.X                                   -> X
    ...query_semantic_transformer.mix_transformer.Y       -> ...query_semantic_transformer.Y
    ...sa_layers.i.attn.attn.linear_{q,k,v,o}.weight      -> ...sa_layers.i.attn.linear_*.weight

All other names (``down_query.0``, ``supp_merge_semantic.0``, ``sa_layers.i.norm1``,
``ffn.layers.{0,1,4}``, ``support_prototype``, ...) are identical. Shapes are inferred from the
tensors, so the released file needs no hparams (spec defaults: DINOv2 ViT-B/14, layers 5..10).
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from methods.base import MethodError
from harness.class_split import TrainedOn, class_fingerprints, data_sha256
from harness.constants import SOFS_LAYERS
from harness.features import FeatureExtractor, torch_load_problem
from harness.io import atomic_write, file_sha256, short_error
from methods.sofs.model import HeadConfig, SOFSHead

FORMAT = "sofs-bench/sofs-head/1"
REFERENCE_PREFIX = "feature_recorrect."
REFERENCE_HPARAMS = {
    "backbone": "dinov2_vitb14",
    "layers": list(SOFS_LAYERS),
    "num_heads": 4,
    "temperature": 0.1,
    "source": "reference SOFS_model.pth layout",
}

RELEASED_TRAINING = "VISION V1 (trained by the SOFS authors; classes not published with the file)"
# Heads shipped before heads recorded what they were trained on, by the file's sha256.
SHIPPED_RECORDS = {
    # methods/weights/sofs_synthetic.pt: the synthetic default's fold 'base' (--fold base, 240 steps)
    "c4ccc0b52e7bc7b3ed0548662d99bd84f08fd2554834f1410195782b8149600d": {
        "train_dataset": "synthetic",
        "train_classes": ["brushed_metal/pit", "brushed_metal/scratch", "brushed_metal/stain", "wood/crack",
                          "wood/wormhole", "woven_fabric/broken_yarn", "woven_fabric/hole", "woven_fabric/stain"],
    },
}


class CheckpointError(MethodError):
    """A checkpoint file that cannot be used (one line naming the file)."""


def map_reference_key(key: str) -> str | None:
    """Reference state-dict key -> this package's head key; ``None`` for backbone keys."""
    key = key.removeprefix("module.")
    if key.startswith("backbone."):
        return None
    key = key.removeprefix(REFERENCE_PREFIX)
    key = key.replace("query_semantic_transformer.mix_transformer.", "query_semantic_transformer.")
    return re.sub(r"\.attn\.attn\.", ".attn.", key)


def from_reference(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Head state dict in this package's names from a reference-layout state dict."""
    out = {}
    for key, value in state.items():
        mapped = map_reference_key(key)
        if mapped is not None:
            out[mapped] = value
    return out


def is_reference_layout(state: Mapping[str, Any]) -> bool:
    return any(k.removeprefix("module.").startswith(REFERENCE_PREFIX) for k in state)


def head_config_from_state(state: Mapping[str, torch.Tensor], hparams: Mapping[str, Any]) -> HeadConfig:
    """Infer the head shapes from the tensors (``hparams`` gives layers, heads, temperature)."""
    num_layers = len(hparams["layers"])
    down = state["down_query.0.weight"]  # [R, L*C, 1, 1]
    reduce_dim, fea_dim = int(down.shape[0]), int(down.shape[1])
    transformer_dim = int(state["supp_merge_semantic.0.weight"].shape[0])
    prior_channels = int(state["query_merge_semantic.0.weight"].shape[1]) - 2 * reduce_dim
    stages = {int(m.group(1)) for k in state if (m := re.match(r"query_semantic_transformer\.sa_layers\.(\d+)\.", k))}
    hidden = int(state["query_semantic_transformer.sa_layers.0.ffn.layers.0.weight"].shape[0])
    level_dims = tuple(int(d) for d in hparams.get("level_dims") or ())
    if level_dims and sum(level_dims) != fea_dim:
        raise ValueError(f"level widths {level_dims} do not add up to fea_dim {fea_dim}")
    if (not level_dims and fea_dim % num_layers) or prior_channels not in (num_layers, 2 * num_layers):
        raise ValueError(
            f"fea_dim {fea_dim} / {prior_channels} prior channels do not fit {num_layers} layers"
        )
    return HeadConfig(
        backbone_dim=0 if level_dims else fea_dim // num_layers,
        num_layers=num_layers,
        level_dims=level_dims,
        reduce_dim=reduce_dim,
        transformer_dim=transformer_dim,
        num_heads=int(hparams.get("num_heads", 4)),
        num_stages=len(stages),
        mlp_ratio=hidden // transformer_dim,
        temperature=float(hparams.get("temperature", 0.1)),
        abnormal_prior=prior_channels == 2 * num_layers,
    )


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a head checkpoint (own format or reference layout) -> (head state dict, hparams)."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise CheckpointError(f"{path}: cannot read as a SOFS checkpoint ({torch_load_problem(exc)})") from None
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        return dict(raw["state_dict"]), dict(raw["hparams"])
    for key in ("model", "state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not is_reference_layout(raw):
        raise CheckpointError(f"{path}: neither a sofs-bench SOFS head nor a reference SOFS state dict")
    return from_reference(raw), dict(REFERENCE_HPARAMS)


def read_hparams(path: Path) -> dict[str, Any]:
    """A head checkpoint's hparams (:func:`read_checkpoint`), read once per file version."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return dict(_hparams(str(path), info.st_mtime_ns, info.st_size))


@lru_cache(maxsize=8)
def _hparams(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    return read_checkpoint(Path(path))[1]


def training_record(dataset, records, read_image=None, read_mask=None) -> dict[str, Any]:
    """The hparams that say what a head is trained on: ``dataset``'s name and the fingerprints of
    the classes of ``records`` (its defective training records; the readers: records in memory)."""
    fingerprints = class_fingerprints(records, read_image, read_mask)
    return {"train_dataset": str(getattr(dataset, "name", "")), "train_class_sha256": fingerprints,
            "train_data_sha256": data_sha256(fingerprints)}


def head_trained_on(path: Path) -> TrainedOn:
    """What the head in ``path`` was trained on (``harness.class_split.TrainedOn``); its notes are
    the recorded reasons why a switch this head was trained with off could not act."""
    path = Path(path)
    hparams = read_hparams(path)
    if hparams.get("source") == REFERENCE_HPARAMS["source"]:
        return TrainedOn(source=f"the released SOFS head {path}", dataset=RELEASED_TRAINING)
    if "train_classes" not in hparams:
        hparams = {**SHIPPED_RECORDS.get(file_sha256(path), {}), **hparams}
    classes = hparams.get("train_classes")
    inert = hparams.get("inert_switches") or {}
    return TrainedOn(
        source=f"head {path}", dataset=str(hparams.get("train_dataset", "")),
        classes=None if classes is None else tuple(str(c) for c in classes),
        class_sha256={str(k): str(v) for k, v in (hparams.get("train_class_sha256") or {}).items()},
        data_sha256=str(hparams.get("train_data_sha256", "")),
        notes=tuple(str(inert[key]) for key in sorted(inert) if hparams.get(key) is False),
    )


def build_head(state: Mapping[str, torch.Tensor], hparams: Mapping[str, Any], path: Path) -> SOFSHead:
    """Build a :class:`SOFSHead` of the checkpoint's shapes and load it strictly."""
    try:
        head = SOFSHead(head_config_from_state(state, hparams))
        head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: does not match the SOFS head layout ({short_error(exc)})") from None
    return head


def hparams_of(head: SOFSHead, backbone: str, layers, image_size: int = 518, **extra: Any) -> dict[str, Any]:
    cfg = head.cfg
    return {
        "backbone": backbone,
        "layers": [int(i) for i in layers],
        "level_dims": [int(d) for d in cfg.level_dims],
        "image_size": int(image_size),
        "reduce_dim": cfg.reduce_dim,
        "transformer_dim": cfg.transformer_dim,
        "num_heads": cfg.num_heads,
        "num_stages": cfg.num_stages,
        "mlp_ratio": cfg.mlp_ratio,
        "temperature": cfg.temperature,
        "abnormal_prior": cfg.abnormal_prior,
        **extra,
    }


def save_head(path: Path, head: nn.Module, hparams: Mapping[str, Any]) -> Path:
    """Write the head in the own format (temp file + rename, so a kill never leaves half a file)."""
    state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
    return atomic_save({"format": FORMAT, "hparams": dict(hparams), "state_dict": state}, path)


def atomic_save(obj: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
    return path


def load_backbone(arch: str, path: Path | None, layers) -> FeatureExtractor:
    """Frozen feature levels of ``arch`` from its weights file (None: the backbone's default
    file), or from the ``backbone.*`` keys of a whole reference SOFS checkpoint (so
    ``SOFS_model.pth`` can serve as both weights)."""
    from harness.features import BackboneError, ViTFeatures, arch_of, make_features

    try:
        if path is None or arch_of(arch).family != "vit":
            return make_features(arch, path, layers)
        return ViTFeatures(_load_reference_vit(arch, Path(path)), layers, arch).eval()
    except BackboneError as exc:
        raise CheckpointError(str(exc)) from None


def _load_reference_vit(arch: str, path: Path) -> nn.Module:
    from harness.features import BackboneError, build_vit, load_vit, read_state_dict

    state = read_state_dict(path)  # strips "backbone." / "module."
    if not is_reference_layout(state):
        return load_vit(arch, path)
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = build_vit(arch)
    state = {k: v for k, v in state.items() if not k.startswith(REFERENCE_PREFIX)}
    state = {k: v.float() for k, v in checkpoint_filter_fn(state, model).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head", "fc_norm", "norm."))]
    if missing or unexpected:
        raise BackboneError(f"{path}: backbone keys do not match '{arch}' "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.requires_grad_(False).eval()
