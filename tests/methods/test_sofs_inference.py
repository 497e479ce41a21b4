"""The SOFS Method: crops, tiling round trip, both query branches, FAD fallback, ablation switches."""
# ruff: noqa: F401  (single_thread is an autouse fixture)
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.tiling import resize_map, resized_shape, stitch, tile_grid
from methods.base import MethodSpec, get_entry
from methods.sofs.data import crop_window, model_input, support_views
from tests.methods.test_sofs_fixtures import single_thread, defect_episode, make_method, textured_image


@pytest.fixture(scope="module")
def method():
    return make_method()


def _spy_tiles(monkeypatch, method):
    calls = []
    original = method._tile_probabilities

    def spy(tiles, context):
        calls.append([t.shape[:2] for t in tiles])
        return original(tiles, context)

    monkeypatch.setattr(method, "_tile_probabilities", spy)
    return calls


@pytest.mark.parametrize("shape", [(700, 1100), (519, 517), (300, 1037), (300, 400)])
def test_tiling_round_trip_odd_sizes(shape):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    tiles = tile_grid(*shape, 518)
    assert stitch([t.crop(image) for t in tiles], tiles, *shape) == pytest.approx(image)
    # tile -> network input (resize-longest, pad) -> unpadded crop -> tile size
    for tile in tiles:
        h, w = resized_shape(tile.height, tile.width, 518)
        grey = (tile.crop(image) * 255).astype(np.uint8)
        tensor, _, unpadded = model_input(np.repeat(grey[..., None], 3, 2), None)
        assert unpadded == (h, w) and tensor.shape == (3, 518, 518)
        assert tensor[:, h:, :].abs().sum() == 0 and tensor[:, :, w:].abs().sum() == 0
        back = resize_map(tensor[0, :h, :w].numpy(), (tile.height, tile.width))
        assert back.shape == (tile.height, tile.width)


def test_support_crops_contain_the_defect_and_are_deterministic():
    support, mask, _ = defect_episode()
    views = support_views(np.random.default_rng(1), support, mask, 4, 518, 0.01)
    again = support_views(np.random.default_rng(1), support, mask, 4, 518, 0.01)
    assert len(views) == 4
    for (image, crop_mask), (image2, _) in zip(views, again):
        assert image.shape == (518, 518, 3) and crop_mask.any()
        assert np.array_equal(image, image2)
    rng = np.random.default_rng(2)
    for _ in range(200):  # the anchor pixel always lies inside the window (reference off-by-one fixed)
        anchor = (int(rng.integers(700)), int(rng.integers(1100)))
        tile = crop_window(rng, anchor, 700, 1100, 518)
        assert tile.top <= anchor[0] < tile.top + 518 and tile.left <= anchor[1] < tile.left + 518


def test_predict_tiled_branch(method, monkeypatch):
    calls = _spy_tiles(monkeypatch, method)
    support, mask, query = defect_episode()  # defect area 0.05 % -> crops + tiling
    score = method.predict([support], [mask], query)
    assert score.shape == (700, 1100) and score.dtype == np.float32
    assert 0.0 <= score.min() and score.max() <= 1.0
    assert calls == [[(518, 518)] * 6]  # 2 x 3 tiles, last row/column snapped to the border


def test_predict_is_reproducible(method):
    support, mask, query = defect_episode(300, 400, (slice(100, 104), slice(100, 110)))
    assert np.array_equal(method.predict([support], [mask], query), method.predict([support], [mask], query))


def test_predict_resized_branch(method, monkeypatch):
    calls = _spy_tiles(monkeypatch, method)
    support, mask, query = defect_episode(defect=(slice(100, 400), slice(200, 600)))  # 15.6 %
    score = method.predict([support], [mask], query)
    assert score.shape == (700, 1100) and score.dtype == np.float32
    assert 0.0 <= score.min() and score.max() <= 1.0
    assert calls == [[(700, 1100)]]  # the whole query, resized to 518 inside


def test_five_shot():
    method = make_method(image_size=224, crop_size=224)  # n = 20 views; small grid for speed
    supports, masks = [], []
    for seed in range(5):
        s, m, _ = defect_episode(300, 400, (slice(100, 105), slice(100, 109)), seed=seed)
        supports.append(s)
        masks.append(m)
    query = textured_image(9, 333, 555)
    score = method.predict(supports, masks, query)
    assert score.shape == (333, 555) and np.isfinite(score).all()


def _expected_prior(method, support, mask, query):
    """Abnormal prior map of a single-tile query, computed from the model pieces directly."""
    context = method._support_context([support], [mask])
    tensor, _, (h, w) = model_input(query, None)
    with torch.no_grad():
        output = method.model.query(method.model.encode(tensor[None]), context)
    prior = F.interpolate(output.abnormal_prior, size=(518, 518), mode="bilinear", align_corners=False)
    return resize_map(prior[0, 0, :h, :w].clamp(0, 1).numpy(), query.shape[:2], align_corners=True)


def test_fad_fallback_equals_abnormal_prior(method):
    support, _, query = defect_episode(300, 400)
    empty = np.zeros((300, 400), bool)
    score = method.predict([support], [empty], query)
    np.testing.assert_allclose(score, _expected_prior(method, support, empty, query), atol=1e-5)
    no_fad = make_method(fad_fallback=False).predict([support], [empty], query)
    assert np.abs(no_fad - score).max() > 1e-3


def test_prior_output_is_the_abnormal_prior_of_a_defective_support(method):
    support, mask, query = defect_episode(300, 400)
    prior = make_method(output="prior").predict([support], [mask], query)
    np.testing.assert_allclose(prior, _expected_prior(method, support, mask, query), atol=1e-5)


def test_ablation_non_resizing_off_resizes_query_and_supports(monkeypatch):
    ablated = make_method(non_resizing=False, test_time_ablation=True)
    calls = _spy_tiles(monkeypatch, ablated)
    support, mask, query = defect_episode()  # small defect: the default would crop and tile
    encoded = []
    original_encode = ablated.model.encode
    monkeypatch.setattr(ablated.model, "encode", lambda x: encoded.append(len(x)) or original_encode(x))
    score = ablated.predict([support], [mask], query)
    assert score.shape == (700, 1100)
    assert calls == [[(700, 1100)]]
    assert encoded == [1, 1]  # one resized support (repeated S times), one resized query


def test_ablation_intensity_downsampling():
    support, mask, _ = defect_episode(600, 700, (slice(315, 316), slice(330, 331)))  # one pixel
    weights_on = make_method()._support_context([support], [mask]).weights
    weights_off = make_method(intensity_downsampling=False, test_time_ablation=True)._support_context([support], [mask]).weights
    assert weights_on.sum().item() == pytest.approx(4 / 196, rel=1e-5)  # S crops x 1/196
    assert not torch.allclose(weights_on, weights_off)


def test_ablation_abnormal_prior_zeroes_the_prior_channels(monkeypatch):
    support, mask, query = defect_episode(300, 400, (slice(100, 110), slice(100, 120)))
    seen = {}
    for flag in (True, False):
        ablated = make_method(abnormal_prior=flag, test_time_ablation=True)
        original = ablated.model.head.forward

        def spy(features, priors, code, flag=flag, original=original):
            seen[flag] = priors.clone()
            return original(features, priors, code)

        monkeypatch.setattr(ablated.model.head, "forward", spy)
        ablated.predict([support], [mask], query)
    assert seen[True].shape[1] == seen[False].shape[1] == 12
    assert seen[False][:, 6:].abs().sum() == 0 and seen[True][:, 6:].abs().sum() > 0
    torch.testing.assert_close(seen[True][:, :6], seen[False][:, :6])


def test_registry_variants():
    assert get_entry("sofs").options == {}
    for name, key in [("sofs-no-nonresize", "non_resizing"), ("sofs-no-intensity", "intensity_downsampling"),
                      ("sofs-no-prior", "abnormal_prior"), ("sofs-no-fad", "fad_fallback"),
                      ("sofs-no-mixed-dice", "mixed_normal_dice")]:
        assert get_entry(name).options == {key: False}
    spec = MethodSpec("sofs-no-fad", {"device": "cpu"}, {})
    cls = spec.entry().load_class()
    assert cls.threshold == 0.5 and [w.key for w in cls.weight_specs] == ["checkpoint", "backbone"]
