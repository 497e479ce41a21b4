"""Convert Painter's original SegGPT checkpoint (``seggpt_vit_large.pth``) to a transformers folder.

    python -m methods.seggpt_convert seggpt_vit_large.pth weights/seggpt-vit-large

The result loads with ``SegGptForImageSegmentation.from_pretrained(OUT_DIR, local_files_only=True)``
and is what ``--weights seggpt=OUT_DIR`` expects. The conversion is a pure key rename (no tensor
changes); the table below pairs Painter's module names with transformers' ones:

    Painter                         transformers
    patch_embed.proj                model.embeddings.patch_embeddings.projection
    mask_token, pos_embed           model.embeddings.mask_token, .position_embeddings
    segment_token_x / _y            model.embeddings.segment_token_input / _prompt
    type_token_cls / _ins           model.embeddings.type_token_semantic / _instance
    blocks.i.attn.*                 model.encoder.layers.i.attention.*   (qkv, proj, rel_pos_h/w)
    blocks.i.norm1 / norm2          model.encoder.layers.i.layernorm_before / layernorm_after
    blocks.i.mlp.fc1 / fc2          model.encoder.layers.i.mlp.lin1 / lin2
    norm                            model.encoder.layernorm
    decoder_embed                   decoder.decoder_embed
    decoder_pred.0 / .1 / .3        decoder.decoder_pred.conv / layernorm / head   (.2 is the GELU)
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Mapping

import torch

from harness.io import short_error
from methods.base import MethodError

# Whole-module renames, Painter prefix -> transformers prefix.
TOP_LEVEL = {
    "patch_embed.proj": "model.embeddings.patch_embeddings.projection",
    "mask_token": "model.embeddings.mask_token",
    "segment_token_x": "model.embeddings.segment_token_input",
    "segment_token_y": "model.embeddings.segment_token_prompt",
    "type_token_cls": "model.embeddings.type_token_semantic",
    "type_token_ins": "model.embeddings.type_token_instance",
    "pos_embed": "model.embeddings.position_embeddings",
    "norm": "model.encoder.layernorm",
    "decoder_embed": "decoder.decoder_embed",
    "decoder_pred.0": "decoder.decoder_pred.conv",
    "decoder_pred.1": "decoder.decoder_pred.layernorm",
    "decoder_pred.3": "decoder.decoder_pred.head",
}
# Inside encoder block i, Painter ``blocks.i.<a>`` -> transformers ``model.encoder.layers.i.<b>``.
IN_BLOCK = {
    "attn": "attention",
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.lin1",
    "mlp.fc2": "mlp.lin2",
}
PAINTER_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
HF_BLOCK = re.compile(r"^model\.encoder\.layers\.(\d+)\.(.+)$")


def _rename_prefix(key: str, table: Mapping[str, str]) -> str | None:
    """Rename the longest dotted prefix of ``key`` found in ``table``; None if there is none."""
    for old in sorted(table, key=len, reverse=True):
        if key == old or key.startswith(old + "."):
            return table[old] + key[len(old) :]
    return None


def painter_to_hf_key(key: str) -> str | None:
    """Painter state-dict key -> transformers key (None: no transformers counterpart)."""
    key = key.removeprefix("module.")
    block = PAINTER_BLOCK.match(key)
    if block:
        tail = _rename_prefix(block.group(2), IN_BLOCK)
        return None if tail is None else f"model.encoder.layers.{block.group(1)}.{tail}"
    return _rename_prefix(key, TOP_LEVEL)


def hf_to_painter_key(key: str) -> str | None:
    """transformers key -> Painter key (the inverse of :func:`painter_to_hf_key`)."""
    block = HF_BLOCK.match(key)
    if block:
        tail = _rename_prefix(block.group(2), {v: k for k, v in IN_BLOCK.items()})
        return None if tail is None else f"blocks.{block.group(1)}.{tail}"
    return _rename_prefix(key, {v: k for k, v in TOP_LEVEL.items()})


def painter_to_hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a Painter state dict; returns (transformers state dict, Painter keys with no counterpart)."""
    converted, unused = {}, []
    for key, tensor in state_dict.items():
        new_key = painter_to_hf_key(key)
        if new_key is None:
            unused.append(key)
        else:
            converted[new_key] = tensor
    return converted, unused


def convert_painter_checkpoint(
    source: Path | str, out_dir: Path | str, config=None, allow_unused: bool = False
) -> Path:
    """Write ``out_dir`` (config.json + model.safetensors) from a Painter ``.pth`` checkpoint.

    ``config`` is a ``SegGptConfig`` (default: BAAI/seggpt-vit-large's). Every transformers tensor
    must be present with the right shape; Painter tensors without a counterpart are an error
    unless ``allow_unused``.
    """
    from transformers import SegGptConfig, SegGptForImageSegmentation

    source, out_dir = Path(source), Path(out_dir)
    if not source.is_file():
        raise MethodError(f"{source}: Painter SegGPT checkpoint not found")
    try:
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MethodError(f"{source}: cannot read as a torch checkpoint ({short_error(err)})") from None
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise MethodError(f"{source}: no state dict (expected a dict, optionally under 'model')")

    converted, unused = painter_to_hf_state_dict(state_dict)
    if unused and not allow_unused:
        raise MethodError(f"{source}: {len(unused)} tensors have no SegGPT counterpart, e.g. {unused[0]}")
    model = SegGptForImageSegmentation(config if config is not None else SegGptConfig()).eval()
    missing = sorted(set(model.state_dict()) - set(converted))
    if missing:
        example = hf_to_painter_key(missing[0])
        raise MethodError(f"{source}: checkpoint lacks {len(missing)} SegGPT tensors, e.g. {example}")
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as err:
        lines = str(err).splitlines()
        shape_line = next((line.strip() for line in lines if "size mismatch" in line), lines[0])
        raise MethodError(f"{source}: does not fit the SegGPT config ({shape_line})") from None
    model.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m methods.seggpt_convert", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="Painter seggpt_vit_large.pth")
    parser.add_argument("out_dir", type=Path, help="folder to write (config.json + model.safetensors)")
    parser.add_argument("--config", type=Path, help="SegGptConfig JSON (default: BAAI/seggpt-vit-large)")
    parser.add_argument("--allow-unused", action="store_true", help="skip Painter tensors without a counterpart")
    args = parser.parse_args(argv)
    try:
        config = None
        if args.config is not None:
            from transformers import SegGptConfig

            config = SegGptConfig.from_json_file(str(args.config))
        out = convert_painter_checkpoint(args.checkpoint, args.out_dir, config, args.allow_unused)
    except MethodError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
