"""SOFS's resize and map-back paths pinned to the reference (spec §1.2, §2.1, §5) on hand-made arrays:
PIL bilinear on uint8 images and 0/255 masks, align_corners=True when mapping predictions back, and
the reference's hard-label map-back as the ``map_back="label"`` option."""
# ruff: noqa: F401  (single_thread is an autouse fixture)
import numpy as np
import torch
import pytest
from PIL import Image

from harness.tiling import pil_resize_image, pil_resize_mask, resize_image, resize_map, resized_shape
from methods.base import MethodError
from methods.sofs.data import model_input, resize_longest
from tests.methods.test_sofs_fixtures import defect_episode, make_method, single_thread


def _pil(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((shape[1], shape[0]), Image.BILINEAR))


def _bilinear_align_corners(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Independent bilinear resize with align_corners=True: output i samples input i*(h-1)/(H-1)."""
    def axis(n_in, n_out):
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        lo = np.floor(pos).astype(int).clip(0, n_in - 1)
        hi = (lo + 1).clip(0, n_in - 1)
        return lo, hi, pos - lo

    y0, y1, fy = axis(a.shape[0], shape[0])
    x0, x1, fx = axis(a.shape[1], shape[1])
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


# ------------------------------------------------------------------------------------------ images


def test_pil_bilinear_upscale_by_hand():
    # 1 x 2 -> 1 x 4: output centres 0.25, 0.75, 1.25, 1.75 in input pixels; PIL clips its window to
    # the image, so the outer outputs copy the edge; 0.5 and 1.5 round half up in PIL's fixed point
    row = np.array([[[0, 0, 0], [2, 100, 255]]], np.uint8)
    out = pil_resize_image(row, (1, 4))
    assert out[0, :, 0].tolist() == [0, 1, 2, 2]
    assert out[0, :, 1].tolist() == [0, 25, 75, 100]
    assert out[0, :, 2].tolist() == [0, 64, 191, 255]  # 63.75, 191.25
    # torch's antialiased float path rounds 0.5 half to even: the deviation the issue measured
    assert resize_image(row, (1, 4))[0, :, 0].tolist() == [0, 0, 2, 2]


def test_pil_bilinear_downscale_by_hand():
    # 1 x 4 -> 1 x 2: the triangle filter widens to 2 input pixels; output 0 (centre 1.0) weighs
    # pixels 0, 1, 2 by 3/7, 3/7, 1/7, output 1 (centre 3.0) pixels 1, 2, 3 by 1/7, 3/7, 3/7
    row = np.array([[0, 100, 200, 250]], np.uint8)[..., None].repeat(3, 2)
    out = pil_resize_image(row, (1, 2))
    assert out[0, :, 0].tolist() == [round(500 / 7), round(1450 / 7)]  # 71.4, 207.1


def test_pil_resize_2d_matches_pil_and_differs_from_torch_path():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    for shape in [(18, 26), (61, 87), (37, 20)]:
        np.testing.assert_array_equal(pil_resize_image(image, shape), _pil(image, shape))
    assert np.any(resize_image(image, (18, 26)) != _pil(image, (18, 26)))  # what the old path gave
    assert pil_resize_image(image, (37, 53)) is image  # same size: untouched


def test_resize_longest_image_is_pil_at_the_reference_size():
    image = np.random.default_rng(4).integers(0, 256, size=(300, 401, 3), dtype=np.uint8)
    resized, _ = resize_longest(image, None, 518)
    assert resized.shape[:2] == resized_shape(300, 401, 518) == (388, 518)  # 387.5 rounds half up
    np.testing.assert_array_equal(resized, _pil(image, (388, 518)))


# ------------------------------------------------------------------------------------------ masks


def test_mask_resize_is_pil_on_0_255_then_max_normalised_and_thresholded():
    mask = np.zeros((1, 4), bool)
    mask[0, 1] = True
    grey = pil_resize_mask(mask, (1, 2))
    assert grey.dtype == np.uint8 and grey[0].tolist() == [109, 36]  # 255 * 3/7, 255 * 1/7
    mask = np.zeros((40, 60), bool)
    mask[10:13, 20:22] = True
    mask[30, 50] = True
    expected_grey = _pil(np.where(mask, 255, 0).astype(np.uint8), (26, 39))
    np.testing.assert_array_equal(pil_resize_mask(mask, (26, 39)), expected_grey)
    image = np.zeros((40, 60, 3), np.uint8)
    _, resized = resize_longest(image, mask, 39)
    expected = expected_grey.astype(np.float32) / np.float32(expected_grey.max()) > np.float32(0.1)
    np.testing.assert_array_equal(resized, expected)
    assert resized[30 * 26 // 40, 50 * 39 // 60]  # the single pixel survives (its grey is > 0.1 max)


def test_mask_edge_values_between_threshold_and_max():
    # 1 x 2 -> 1 x 8: output centres 0.125, 0.375, ... 1.875; the first two and last two see one
    # input pixel only (PIL clips the window), the middle ones 255 x 1/8, 3/8, 5/8, 7/8
    mask = np.array([[False, True]])
    grey = pil_resize_mask(mask, (1, 8))
    assert grey[0].tolist() == [0, 0, 32, 96, 159, 223, 255, 255]
    image = np.zeros((1, 2, 3), np.uint8)
    _, resized = resize_longest(image, mask, 8)
    assert resized[0].tolist() == [False, False, True, True, True, True, True, True]  # 32/255 > 0.1


def test_all_zero_mask_stays_zero_and_model_input_pads():
    image = np.full((100, 50, 3), 128, np.uint8)
    tensor, mask, shape = model_input(image, np.zeros((100, 50), bool), 518)
    assert shape == (518, 259) and mask.sum() == 0
    assert tensor[:, :, 259:].abs().sum() == 0


# ------------------------------------------------------------------------------------------ map-back


def test_resize_map_align_corners_by_hand():
    grid = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    f = np.array([0, 1 / 3, 2 / 3, 1])  # align_corners=True: 4 outputs sample 0, 1/3, 2/3, 1
    expected = (1 - f)[:, None] * f[None, :] + f[:, None] * (1 - f)[None, :]
    np.testing.assert_allclose(resize_map(grid, (4, 4), align_corners=True), expected, atol=1e-6)
    g = np.array([0, 0.25, 0.75, 1])  # align_corners=False (the baselines' default, unchanged)
    old = (1 - g)[:, None] * g[None, :] + g[:, None] * (1 - g)[None, :]
    np.testing.assert_allclose(resize_map(grid, (4, 4)), old, atol=1e-6)
    ramp = np.random.default_rng(5).random((7, 11)).astype(np.float32)
    np.testing.assert_allclose(resize_map(ramp, (19, 23), align_corners=True),
                               _bilinear_align_corners(ramp, (19, 23)), atol=1e-5)


@pytest.fixture(scope="module")
def methods():
    return {mode: make_method(map_back=mode) for mode in ("probability", "label")}


def _fixed_probabilities(monkeypatch, method, maps):
    calls = iter(maps)
    # the method's tile probabilities are tensors on its device
    monkeypatch.setattr(method, "_tile_probabilities", lambda tiles, context: [torch.from_numpy(next(calls)) for _ in tiles])


def test_resized_path_maps_back_like_the_reference(methods, monkeypatch):
    support, mask, query = defect_episode(300, 400, (slice(50, 250), slice(50, 350)))  # large: resized
    h, w = resized_shape(300, 400, 518)
    score = np.random.default_rng(6).random((518, 518)).astype(np.float32)
    expected_prob = _bilinear_align_corners(score[:h, :w], (300, 400))
    _fixed_probabilities(monkeypatch, methods["probability"], [score])
    out = methods["probability"].predict([support], [mask], query)
    np.testing.assert_allclose(out, expected_prob, atol=1e-4)  # float32 source coordinates in torch
    resized_labels = _bilinear_align_corners((score[:h, :w] > 0.5).astype(np.float32), (300, 400))
    _fixed_probabilities(monkeypatch, methods["label"], [score])
    out = methods["label"].predict([support], [mask], query)
    assert set(np.unique(out)) == {0.0, 1.0}
    clear = np.abs(resized_labels - 0.9) > 1e-4  # away from the re-binarisation threshold
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(out[clear], (resized_labels > 0.9)[clear].astype(np.float32))


def test_tiled_path_averages_probabilities_or_labels(methods, monkeypatch):
    support, mask, query = defect_episode(600, 518)  # small defect: 2 x 1 tiles overlapping rows 82..517
    first = np.full((518, 518), 0.7, np.float32)
    second = np.full((518, 518), 0.4, np.float32)
    for mode, overlap, top, bottom in [("probability", 0.55, 0.7, 0.4), ("label", 0.5, 1.0, 0.0)]:
        _fixed_probabilities(monkeypatch, methods[mode], [first, second])
        out = methods[mode].predict([support], [mask], query)
        assert out.shape == (600, 518)
        np.testing.assert_allclose(out[:82], top, atol=1e-6)
        np.testing.assert_allclose(out[82:518], overlap, atol=1e-6)
        np.testing.assert_allclose(out[518:], bottom, atol=1e-6)


def test_map_back_option_is_checked():
    from methods.base import coerce_options
    from methods.sofs.inference import SOFSConfig

    with pytest.raises(MethodError, match="option 'map_back': 'labels' is not one of probability [|] label"):
        coerce_options(SOFSConfig, {"map_back": "labels"})
