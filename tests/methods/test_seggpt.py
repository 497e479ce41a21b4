"""SegGPT baseline on a tiny random SegGptForImageSegmentation (spec §1.8): input side S = 32."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from transformers import SegGptConfig, SegGptForImageSegmentation  # noqa: E402

from methods.base import MethodError, MethodSpec, MissingWeights  # noqa: E402
from methods.seggpt import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegGPT,
    crop_support,
    encode_mask,
    ensemble_forward,
    load_seggpt,
    normalise,
    resize_image_bicubic,
    resize_mask_nearest,
    score_from_pred_masks,
)
from methods.seggpt_convert import convert_painter_checkpoint, hf_to_painter_key  # noqa: E402
from methods.seggpt_convert import main as convert_main  # noqa: E402

SIDE = 32


def tiny_config() -> SegGptConfig:
    return SegGptConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, mlp_dim=64, image_size=[64, 32],
        patch_size=8, pretrain_image_size=32, decoder_hidden_size=8, merge_index=1,
        intermediate_hidden_state_indices=[1, 3], drop_path_rate=0.0,
    )


def tiny_model() -> SegGptForImageSegmentation:
    torch.manual_seed(0)
    model = SegGptForImageSegmentation(tiny_config()).eval()
    with torch.no_grad():  # larger random weights than the 0.02 init, so outputs vary across pixels
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seggpt-tiny")
    tiny_model().save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def build(model_dir, **options) -> SegGPT:
    return MethodSpec("seggpt", options, weights={"model": str(model_dir)}).build()


def episode(rng, k=2, support_shape=(37, 53), query_shape=(45, 71)):
    supports = [rng.integers(0, 256, (*support_shape, 3), dtype=np.uint8) for _ in range(k)]
    masks = []
    for _ in range(k):
        mask = np.zeros(support_shape, dtype=bool)
        mask[5:12, 20:31] = True
        masks.append(mask)
    query = rng.integers(0, 256, (*query_shape, 3), dtype=np.uint8)
    return supports, masks, query


# -- output shapes and thresholds ------------------------------------------------------------


@pytest.mark.parametrize("resolution", ["resize", "native"])
@pytest.mark.parametrize("query_shape", [(45, 71), (20, 27), (32, 33)])
def test_score_map_at_query_size(model_dir, resolution, query_shape):
    method = build(model_dir, resolution=resolution, batch_size="3")
    supports, masks, query = episode(np.random.default_rng(0), k=2, query_shape=query_shape)
    score = method.predict(supports, masks, query)
    assert score.shape == query_shape and score.dtype == np.float32
    assert 0 <= score.min() and score.max() <= 1 and score.std() > 0


def test_threshold_defaults_and_override(model_dir):
    assert build(model_dir).threshold == 0.6  # SOFS: channel max > 0.6
    assert build(model_dir, reduction="mean").threshold == 0.5  # HF grey level > 127.5
    assert build(model_dir, threshold="0.3").threshold == 0.3


def test_score_reduction_by_hand():
    # A predicted lower half that un-normalises to RGB (204, 102, 0); the upper half is ignored.
    rgb = torch.tensor([204, 102, 0]) / 255
    normed = (rgb - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    pred = torch.full((1, 3, 2 * SIDE, SIDE), -9.0)
    pred[:, :, SIDE:] = normed.view(1, 3, 1, 1)
    assert score_from_pred_masks(pred, "max")[0].flatten().unique().item() == pytest.approx(0.8, abs=1e-5)
    assert score_from_pred_masks(pred, "mean")[0].flatten().unique().item() == pytest.approx(0.4, abs=1e-5)
    # clipping: far outside the RGB cube -> 0 and 1
    pred[:, :, SIDE:] = torch.tensor([-50.0, 50.0, 0.0]).view(1, 3, 1, 1)
    assert score_from_pred_masks(pred, "max").max().item() == 1.0


def test_bad_option_is_one_line_error(model_dir):
    with pytest.raises(MethodError, match="option 'resolution': 'tiles' is not one of resize [|] native"):
        build(model_dir, resolution="tiles")


# -- k-shot ensemble equals transformers ---------------------------------------------------------


def reference_pred(model, query, prompt_images, prompt_masks):
    """transformers' own call: query repeated k times, feature_ensemble for k > 1."""
    k = prompt_images.shape[0]
    return model(
        pixel_values=query.expand(k, -1, -1, -1), prompt_pixel_values=prompt_images, prompt_masks=prompt_masks,
        feature_ensemble=k > 1,
    ).pred_masks


@pytest.mark.parametrize("shots", [1, 3])
def test_k_shot_equals_transformers_call(model_dir, shots):
    method = build(model_dir, batch_size="16")
    rng = np.random.default_rng(1)
    supports, masks, query = episode(rng, k=shots)
    prompts = [method._prompt(image, mask) for image, mask in zip(supports, masks)]
    view = resize_image_bicubic(query, SIDE)
    ours = method.score_views([view], prompts)[0]

    device, dtype = torch.device("cpu"), torch.float32
    with torch.no_grad():
        pred = reference_pred(
            method.model, normalise(view[None], device, dtype),
            normalise(np.stack([p[0] for p in prompts]), device, dtype),
            normalise(np.stack([p[1] for p in prompts]), device, dtype),
        )
    expected = score_from_pred_masks(pred, "max")[0].numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    if shots > 1:
        assert method.last_ensemble_spread > 1e-4  # elements differ: the ensemble is not a plain average


def test_grouped_ensemble_equals_separate_calls():
    model = tiny_model()
    torch.manual_seed(3)
    shots, groups = 3, 4
    prompt_images, prompt_masks = torch.randn(shots, 3, SIDE, SIDE), torch.randn(shots, 3, SIDE, SIDE)
    queries = torch.randn(groups, 3, SIDE, SIDE)
    with torch.no_grad():
        batched = ensemble_forward(
            model, queries.repeat_interleave(shots, 0), prompt_images.repeat(groups, 1, 1, 1),
            prompt_masks.repeat(groups, 1, 1, 1), shots,
        )
        separate = torch.cat([reference_pred(model, q[None], prompt_images, prompt_masks) for q in queries])
        first = queries[:1].expand(shots, -1, -1, -1)
        painter = ensemble_forward(model, first, prompt_images, prompt_masks, shots, merge_rule="painter")
    torch.testing.assert_close(batched, separate, atol=1e-5, rtol=1e-5)
    assert (painter - separate[:shots]).abs().max() > 1e-6  # the per-stream merge rule is a different model


# -- pre-processing ------------------------------------------------------------------------------


def test_mask_encoding_matches_processor_palette():
    from transformers.models.seggpt.image_processing_pil_seggpt import SegGptImageProcessorPil

    rng = np.random.default_rng(2)
    mask = np.zeros((SIDE, SIDE), dtype=bool)
    mask[3:9, 10:20] = True
    image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    processor = SegGptImageProcessorPil(size={"height": SIDE, "width": SIDE})
    out = processor(
        images=image, prompt_images=image, prompt_masks=mask.astype(np.uint8), num_labels=1, return_tensors="pt"
    )
    ours = normalise(encode_mask(mask)[None], torch.device("cpu"), torch.float32)
    torch.testing.assert_close(ours, out["prompt_masks"].float(), atol=1e-5, rtol=0)
    assert encode_mask(mask)[mask].min() == 255 and encode_mask(mask)[~mask].max() == 0


def test_image_resize_close_to_processor():
    from transformers.models.seggpt.image_processing_pil_seggpt import SegGptImageProcessorPil

    rng = np.random.default_rng(4)
    smooth = np.kron(rng.integers(0, 256, (10, 14, 3)), np.ones((9, 7, 1))).astype(np.uint8)  # [90, 98, 3]
    processor = SegGptImageProcessorPil(size={"height": SIDE, "width": SIDE})
    expected = processor(images=smooth, return_tensors="pt")["pixel_values"].float()
    ours = normalise(resize_image_bicubic(smooth, SIDE)[None], torch.device("cpu"), torch.float32)
    assert (ours - expected).abs().mean() < 0.02  # ~1 grey level: antialiased bicubic vs PIL bicubic


def test_tiny_defect_survives_mask_resize():
    mask = np.zeros((300, 300), dtype=bool)
    mask[150, 151] = True  # nearest neighbour to 32 x 32 samples neither row 150 nor column 151
    assert resize_mask_nearest(mask, SIDE).sum() >= 1
    big = np.zeros((64, 64), dtype=bool)
    big[:32] = True
    assert resize_mask_nearest(big, SIDE)[:16].all() and not resize_mask_nearest(big, SIDE)[16:].any()


def test_support_crop_keeps_defect():
    image = np.arange(100 * 80 * 3, dtype=np.uint32).reshape(100, 80, 3).astype(np.uint8)
    mask = np.zeros((100, 80), dtype=bool)
    mask[95:98, 2:5] = True  # near the bottom-left corner
    crop_image, crop_mask = crop_support(image, mask, SIDE)
    assert crop_image.shape == (SIDE, SIDE, 3) and crop_mask.sum() == 9  # native resolution, whole defect
    np.testing.assert_array_equal(crop_image, image[68:100, 0:32])
    mask[10:90, 10:60] = True  # defect larger than S: squashed down, still inside
    crop_image, crop_mask = crop_support(image, mask, SIDE)
    assert crop_image.shape == (SIDE, SIDE, 3) and crop_mask.any()
    small_image, small_mask = crop_support(image[:20, :25], mask[:20, :25], SIDE)  # padded
    assert small_image.shape == (SIDE, SIDE, 3) and not small_mask[20:].any() and small_image[:, 25:].max() == 0


# -- tiling and caching --------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", ["native", "resize"])
def test_tiling_round_trip(model_dir, resolution, monkeypatch):
    """With a model that 'paints' its query's red channel, predict must return the query's red channel."""
    method = build(model_dir, resolution=resolution)
    seen = []

    def paint_red(views, prompts):
        seen.append(len(views))
        return [view[..., 0].astype(np.float32) / 255 for view in views]

    monkeypatch.setattr(method, "score_views", paint_red)
    rng = np.random.default_rng(5)
    supports, masks, _ = episode(rng, k=1)
    query = np.kron(rng.integers(0, 256, (3, 5, 3)), np.ones((15, 14, 1))).astype(np.uint8)  # [45, 70, 3]
    score = method.predict(supports, masks, query)
    if resolution == "native":
        assert seen == [6]  # rows at 0, 13; columns at 0, 32, 38
        np.testing.assert_allclose(score, query[..., 0] / 255, atol=1e-6)
    else:
        assert seen == [1]
        error = np.abs(score - query[..., 0] / 255)
        assert np.median(error) < 1.5 / 255 and error.mean() < 0.05  # resampled twice: block edges blur


def test_prompt_cache_reused_across_episodes(model_dir):
    method = build(model_dir, resolution="native", prompt_cache_size="2")
    supports, masks, query = episode(np.random.default_rng(6), k=2)
    first = method.predict(supports, masks, query)
    cached = dict(method._prompt_cache)
    second = method.predict(supports, masks, query)
    assert method._prompt_cache.keys() == cached.keys()
    assert all(method._prompt_cache[key] is cached[key] for key in cached)
    np.testing.assert_array_equal(first, second)
    method.predict(supports[:1], [~masks[0]], query)  # a third prompt evicts the oldest
    assert len(method._prompt_cache) == 2


def test_batch_size_does_not_change_result(model_dir):
    supports, masks, query = episode(np.random.default_rng(7), k=2, query_shape=(45, 71))
    one = build(model_dir, resolution="native", batch_size="2").predict(supports, masks, query)
    many = build(model_dir, resolution="native", batch_size="12").predict(supports, masks, query)
    np.testing.assert_allclose(one, many, atol=1e-5)


# -- loading errors ------------------------------------------------------------------------------


def test_weights_required(model_dir):
    with pytest.raises(MissingWeights, match="--weights seggpt=PATH"):
        MethodSpec("seggpt").build()


def test_missing_folder(tmp_path):
    with pytest.raises(MethodError, match="not found"):
        MethodSpec("seggpt", weights={"model": str(tmp_path / "nope")}).build()
    with pytest.raises(MethodError, match="SegGPT weights folder not found"):
        load_seggpt(tmp_path / "nope")


def test_malformed_folders(tmp_path, model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MethodError, match=r"empty: no config.json"):
        load_seggpt(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(MethodError, match="model_type is 'bert', not 'seggpt'"):
        load_seggpt(other)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(MethodError, match="no_weights: no weights file"):
        load_seggpt(no_weights)
    (no_weights / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MethodError, match="cannot load SegGPT weights") as info:
        load_seggpt(no_weights)
    assert "\n" not in str(info.value)


# -- converter -----------------------------------------------------------------------------------


def painter_checkpoint(path, model):
    """The tiny model's weights in Painter's layout (by inverting the converter's key table)."""
    state = {hf_to_painter_key(key): tensor.clone() for key, tensor in model.state_dict().items()}
    assert None not in state and len(state) == len(model.state_dict())
    torch.save({"model": state, "epoch": 0}, path)
    return state


def test_converter_round_trip(tmp_path):
    model = tiny_model()
    state = painter_checkpoint(tmp_path / "seggpt_tiny.pth", model)
    assert {"blocks.0.attn.rel_pos_h", "blocks.3.mlp.fc2.bias", "segment_token_x", "type_token_ins",
            "decoder_pred.3.weight", "norm.weight", "patch_embed.proj.weight", "pos_embed"} <= set(state)
    out = convert_painter_checkpoint(tmp_path / "seggpt_tiny.pth", tmp_path / "converted", config=tiny_config())
    reloaded = load_seggpt(out)
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], tensor, atol=0, rtol=0)


def test_converter_cli_and_errors(tmp_path, capsys):
    model = tiny_model()
    state = painter_checkpoint(tmp_path / "tiny.pth", model)
    (tmp_path / "config.json").write_text(tiny_config().to_json_string())
    config_option = ["--config", str(tmp_path / "config.json")]
    assert convert_main([str(tmp_path / "tiny.pth"), str(tmp_path / "cli"), *config_option]) == 0
    assert (tmp_path / "cli" / "model.safetensors").is_file()

    torch.save({"model": {**state, "head.extra": torch.zeros(1)}}, tmp_path / "extra.pth")
    with pytest.raises(MethodError, match="no SegGPT counterpart, e.g. head.extra"):
        convert_painter_checkpoint(tmp_path / "extra.pth", tmp_path / "x", config=tiny_config())
    state.pop("blocks.2.norm1.weight")
    torch.save({"model": state}, tmp_path / "short.pth")
    with pytest.raises(MethodError, match="lacks 1 SegGPT tensors, e.g. blocks.2.norm1.weight"):
        convert_painter_checkpoint(tmp_path / "short.pth", tmp_path / "y", config=tiny_config())
    assert convert_main([str(tmp_path / "short.pth"), str(tmp_path / "z"), *config_option]) == 1
    assert "error:" in capsys.readouterr().err
