"""SegGPT (Wang et al., ICCV 2023) as a few-shot defect segmenter, on transformers' SegGptForImageSegmentation.

The model paints the missing lower half of two stacked canvases (spec: baselines-spec.md §1.3)::

    image canvas [B, 3, 2S, S] = prompt image above query image
    mask canvas  [B, 3, 2S, S] = prompt mask above (a masked-out copy of) the prompt mask
    pred_masks   [B, 3, 2S, S]   normalised RGB; the lower half is the query's predicted mask

S is the model's input side (448 for BAAI/seggpt-vit-large). Decisions, all documented in
methods/SEGGPT.md:

* **Mask encoding.** A bool defect mask is rendered as an RGB image ``mask * 255`` in all three
  channels (foreground white, background black), then ImageNet-normalised like an image. This is
  the palette ``SegGptImageProcessor`` uses with ``num_labels=1``; passing 0/1 masks without
  ``num_labels`` would give an almost black, i.e. empty, prompt (spec §1.4).
* **k-shot.** The query is repeated k times against k prompts and the query half of every
  block's attention output is averaged over the k prompts (transformers' ``feature_ensemble``,
  spec §1.5); element 0 is the prediction. It is on only for k > 1. Several queries (tiles) can
  share one forward: :func:`ensemble_forward` averages within groups of k, which transformers'
  own flag cannot (it averages over the whole batch).
* **Score.** ``s = max over RGB of clip(unnormalise(pred) * 255, 0, 255) / 255`` (SOFS's reduction),
  native threshold 0.6 (SOFS ``TEST.semantic_threshold``). ``reduction="mean"`` gives the
  HF-equivalent grey level, threshold 0.5.
* **No reuse of prompt encodings.** Prompt and query are one canvas under global attention (and
  the ensemble mixes prompts), so nothing of the encoder can be cached per prompt. Only the
  preprocessed prompts (resized/cropped uint8 image and mask) are cached, keyed by content.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.constants import IMAGENET_MEAN, IMAGENET_STD
from harness.io import LRU, short_error
from harness.tiling import pad_bottom_right, resize_map, resize_mask_fraction, stitch, tile_grid
from methods.base import MethodError, WeightSpec
from methods.configs import SegGPTConfig

WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)


# ---------------------------------------------------------------------------------------------
# Loading


def load_seggpt(folder: Path | str):
    """``SegGptForImageSegmentation`` from a local ``save_pretrained`` folder, offline, in eval mode."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MethodError(f"{folder}: SegGPT weights folder not found")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MethodError(
            f"{folder}: no config.json; expected a folder written by SegGptForImageSegmentation.save_pretrained"
        )
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as err:
        raise MethodError(f"{config_path}: not a readable JSON config ({err})") from None
    if model_type != "seggpt":
        raise MethodError(f"{config_path}: model_type is {model_type!r}, not 'seggpt'")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise MethodError(f"{folder}: no weights file ({' or '.join(WEIGHT_FILES[::2])})")

    from transformers import SegGptForImageSegmentation

    try:
        model, info = SegGptForImageSegmentation.from_pretrained(
            folder, local_files_only=True, output_loading_info=True
        )
    except Exception as err:  # transformers raises OSError, ValueError, RuntimeError, safetensors errors
        raise MethodError(f"{folder}: cannot load SegGPT weights ({short_error(err)})") from None
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise MethodError(f"{folder}: weights lack {len(missing)} SegGPT tensors, e.g. {missing[0]}")
    return model.eval()


def model_input_side(config) -> int:
    """S of the model's S x S inputs: the stacked canvas ``image_size`` is (2S, S)."""
    size = config.image_size
    canvas_h, canvas_w = (size, size) if isinstance(size, int) else tuple(size)
    if canvas_h != 2 * canvas_w:
        raise MethodError(f"SegGPT config image_size {tuple(size)} is not a (2S, S) canvas of square inputs")
    return canvas_w


# ---------------------------------------------------------------------------------------------
# Pre- and post-processing (re-implemented so results do not depend on the processor backend)


def resize_image_bicubic(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> uint8 ``[side, side, 3]``, squashed; PIL-like antialiased bicubic."""
    if image.shape[:2] == (side, side):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    out = F.interpolate(tensor, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_mask_nearest(mask: np.ndarray, side: int) -> np.ndarray:
    """bool ``[H, W]`` -> bool ``[side, side]`` by nearest neighbour (pixel centres, as PIL).

    A defect that nearest neighbour would erase entirely is kept as every target pixel it
    touches, so a tiny defect never turns into an empty prompt.
    """
    if mask.shape == (side, side):
        return mask.astype(bool)
    tensor = torch.from_numpy(mask.astype(np.uint8))[None, None].float()
    out = F.interpolate(tensor, size=(side, side), mode="nearest-exact")[0, 0].numpy() > 0.5
    if mask.any() and not out.any():
        out = resize_mask_fraction(mask, (side, side)) > 0
    return out


def encode_mask(mask: np.ndarray) -> np.ndarray:
    """bool ``[S, S]`` -> uint8 RGB ``[S, S, 3]``: defect white (255, 255, 255), background black.

    Equals ``SegGptImageProcessor(num_labels=1)``'s palette; see the module docstring.
    """
    return np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)


def normalise(images: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``[N, S, S, 3]`` -> ImageNet-normalised ``[N, 3, S, S]``."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return ((tensor - mean) / std).to(dtype)


def score_from_pred_masks(pred_masks: torch.Tensor, reduction: str = "max") -> torch.Tensor:
    """``pred_masks [N, 3, 2S, S]`` -> score ``[N, S, S]`` in [0, 1] from the lower (query) half."""
    lower = pred_masks[:, :, pred_masks.shape[2] // 2 :].float()
    mean = torch.tensor(IMAGENET_MEAN, device=lower.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=lower.device).view(1, 3, 1, 1)
    rgb = torch.clip((lower * std + mean) * 255, 0, 255) / 255
    return rgb.amax(dim=1) if reduction == "max" else rgb.mean(dim=1)


def crop_support(image: np.ndarray, mask: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A native-resolution ``side x side`` prompt around the support's defect (``native`` policy).

    The crop is centred on the bounding box of all defect pixels (deterministic, unlike SOFS's
    random defect pixel) and shifted to lie inside the image. A defect larger than ``side`` gets
    a crop just large enough to hold it, squashed down to ``side``; an image smaller than
    ``side`` is padded at the bottom/right (black image, background mask). A defect-free
    support gives the centre crop.
    """
    height, width = mask.shape
    if mask.any():
        rows, cols = np.nonzero(mask)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    else:
        top, bottom, left, right = height // 2, height // 2, width // 2, width // 2
    crop = max(side, bottom - top, right - left)
    crop_h, crop_w = min(crop, height), min(crop, width)
    y0 = int(np.clip((top + bottom) // 2 - crop_h // 2, 0, height - crop_h))
    x0 = int(np.clip((left + right) // 2 - crop_w // 2, 0, width - crop_w))
    image, mask = image[y0 : y0 + crop_h, x0 : x0 + crop_w], mask[y0 : y0 + crop_h, x0 : x0 + crop_w]
    if crop_h <= side and crop_w <= side:
        return pad_bottom_right(image, side), pad_bottom_right(mask, side, value=False)
    return resize_image_bicubic(image, side), resize_mask_nearest(mask, side)


# ---------------------------------------------------------------------------------------------
# Forward with a per-group feature ensemble


def ensemble_forward(
    model,
    pixel_values: torch.Tensor,
    prompt_pixel_values: torch.Tensor,
    prompt_masks: torch.Tensor,
    shots: int,
    embedding_type: str = "instance",
    merge_rule: str = "hf",
) -> torch.Tensor:
    """SegGPT forward with the k-shot feature ensemble applied within groups of ``shots``.

    Inputs are ``[G*k, 3, S, S]``, group-major: rows ``g*k .. g*k+k-1`` hold query g repeated
    against its k prompts. Returns ``pred_masks [G*k, 3, 2S, S]``. With G = 1 and
    ``merge_rule="hf"`` this is ``model(..., feature_ensemble=True)``, re-traced block by block so
    that G queries can share a batch. ``merge_rule="painter"`` averages per stream at the merge
    block, as the original Painter code does (spec §1.5 (b)).
    """
    backbone, config = model.model, model.config
    count = pixel_values.shape[0]
    groups = count // shots
    dtype = backbone.embeddings.patch_embeddings.projection.weight.dtype
    image_canvas = torch.cat((prompt_pixel_values, pixel_values), dim=2).to(dtype)  # [N, 3, 2S, S]
    mask_canvas = torch.cat((prompt_masks, prompt_masks), dim=2).to(dtype)
    num_patches = backbone.embeddings.patch_embeddings.num_patches
    bool_masked_pos = torch.zeros(1, num_patches, dtype=torch.bool, device=pixel_values.device)
    bool_masked_pos[:, num_patches // 2 :] = True  # hide the query half of the mask canvas
    hidden = backbone.embeddings(
        image_canvas, mask_canvas, bool_masked_pos=bool_masked_pos, embedding_type=embedding_type
    )  # [2N, h, w, C]: image stream, then mask stream

    features = []
    for index, layer in enumerate(backbone.encoder.layers):
        attention = layer.attention(layer.layernorm_before(hidden))[0]
        across_streams = index == config.merge_index and merge_rule == "hf"
        attention = _average_query_half(attention, groups, shots, across_streams)
        hidden = layer.drop_path(attention) + hidden
        hidden = hidden + layer.drop_path(layer.mlp(layer.layernorm_after(hidden)))
        if index == config.merge_index:
            hidden = (hidden[:count] + hidden[count:]) * 0.5  # [N, h, w, C]
        if index in config.intermediate_hidden_state_indices:
            features.append(backbone.encoder.layernorm(hidden))
    return model.decoder(torch.cat(features, dim=-1))


def _average_query_half(attention: torch.Tensor, groups: int, shots: int, across_streams: bool) -> torch.Tensor:
    """Replace the query (lower) half of ``attention [streams*G*k, h, w, C]`` by its mean over the k prompts."""
    prompt_half, query_half = attention.split(attention.shape[1] // 2, dim=1)
    streams = attention.shape[0] // (groups * shots)
    grouped = query_half.reshape(streams, groups, shots, -1)
    dims = (0, 2) if across_streams else (2,)
    grouped = grouped.mean(dim=dims, keepdim=True).expand_as(grouped)
    return torch.cat((prompt_half, grouped.reshape(query_half.shape)), dim=1)


# ---------------------------------------------------------------------------------------------
# The method


class SegGPT:
    """SegGPT in-context painting: k prompts (support image + defect mask) -> query defect score map."""

    threshold_protocol = "native"

    Config = SegGPTConfig
    weight_specs = (
        WeightSpec(
            "model",
            source="a folder saved by SegGptForImageSegmentation.from_pretrained('BAAI/seggpt-vit-large')"
            ".save_pretrained(DIR) on a machine with internet, or converted from Painter's "
            "seggpt_vit_large.pth with python -m methods.seggpt_convert",
            default=None,
            is_dir=True,
        ),
    )

    def __init__(self, config: SegGPTConfig, weights: dict[str, Path]):
        if config.batch_size < 1:
            raise MethodError(f"seggpt option batch_size={config.batch_size}; must be >= 1")
        self.config = config
        default_threshold = 0.6 if config.reduction == "max" else 0.5  # SOFS channel max / HF grey level
        self.threshold = config.threshold if config.threshold is not None else default_threshold
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
        )
        self.dtype = getattr(torch, config.dtype)
        self.model = load_seggpt(weights["model"]).to(self.device, self.dtype)
        self.side = model_input_side(self.model.config)
        self._prompt_cache = LRU(max_entries=config.prompt_cache_size)  # key -> (image, RGB mask)
        self.last_ensemble_spread = 0.0  # max |element i - element 0| of the last k-shot score maps

    # -- public ----------------------------------------------------------------------------

    def predict(
        self,
        support_images: Sequence[np.ndarray],
        support_masks: Sequence[np.ndarray],
        query_image: np.ndarray,
    ) -> np.ndarray:
        """Score map float32 ``[H, W]`` in [0, 1] at the query's original size."""
        prompts = [self._prompt(image, mask) for image, mask in zip(support_images, support_masks)]
        height, width = query_image.shape[:2]
        if self.config.resolution == "resize":
            view = resize_image_bicubic(query_image, self.side)
            score = self.score_views([view], prompts)[0]
            return _resize_score(score, (height, width))
        tiles = tile_grid(height, width, self.side)
        views = [pad_bottom_right(tile.crop(query_image), self.side) for tile in tiles]
        scores = self.score_views(views, prompts)
        tile_maps = [score[: tile.height, : tile.width] for score, tile in zip(scores, tiles)]  # drop the padding
        return stitch(tile_maps, tiles, height, width)

    @torch.inference_mode()
    def score_views(
        self, views: Sequence[np.ndarray], prompts: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> list[np.ndarray]:
        """Score maps ``[S, S]`` of query views uint8 ``[S, S, 3]``.

        ``prompts``: k pairs (image uint8 ``[S, S, 3]``, RGB-encoded mask uint8 ``[S, S, 3]``).
        """
        shots = len(prompts)
        prompt_images = normalise(np.stack([image for image, _ in prompts]), self.device, self.dtype)
        prompt_masks = normalise(np.stack([mask for _, mask in prompts]), self.device, self.dtype)
        views_per_batch = max(1, self.config.batch_size // shots)
        scores: list[np.ndarray] = []
        for start in range(0, len(views), views_per_batch):
            chunk = normalise(np.stack(views[start : start + views_per_batch]), self.device, self.dtype)
            groups = chunk.shape[0]
            queries = chunk.repeat_interleave(shots, dim=0)  # [G*k, 3, S, S], group-major
            images, masks = prompt_images.repeat(groups, 1, 1, 1), prompt_masks.repeat(groups, 1, 1, 1)
            if shots == 1:  # no ensemble: transformers' own forward
                pred = self.model(
                    pixel_values=queries, prompt_pixel_values=images, prompt_masks=masks,
                    feature_ensemble=False, embedding_type=self.config.embedding_type,
                ).pred_masks
            else:
                pred = ensemble_forward(
                    self.model, queries, images, masks, shots, self.config.embedding_type, self.config.merge_rule
                )
            score = score_from_pred_masks(pred, self.config.reduction).reshape(groups, shots, self.side, self.side)
            self.last_ensemble_spread = float((score - score[:, :1]).abs().max())
            scores.extend(score[:, 0].cpu().numpy().astype(np.float32))  # element 0, as Painter and SOFS
        return scores

    # -- prompts ---------------------------------------------------------------------------

    def _prompt(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 image ``[S, S, 3]``, uint8 RGB mask ``[S, S, 3]``), cached by content."""
        mask = np.asarray(mask, dtype=bool)
        crop = self.config.resolution == "native" and self.config.native_support == "crop"
        key = (_digest(image), _digest(mask), crop)
        if key in self._prompt_cache:
            return self._prompt_cache.get(key)
        if crop:
            prompt_image, prompt_mask = crop_support(image, mask, self.side)
        else:
            prompt_image = resize_image_bicubic(image, self.side)
            prompt_mask = resize_mask_nearest(mask, self.side)
        prompt = (prompt_image, encode_mask(prompt_mask))
        self._prompt_cache.put(key, prompt)
        return prompt


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _resize_score(score: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.clip(resize_map(score, shape), 0, 1).astype(np.float32)
