"""Tile overlap: grid geometry, averaging stitch, and a defect on a tile seam (tiny random ViT)."""
import numpy as np
import pytest

from harness.tiling import stitch, tile_grid
from methods.base import MethodError, MethodSpec
from tests.methods.test_panet import micro_weights, textured_image, with_defect  # noqa: F401 (fixture)


def test_zero_overlap_keeps_the_old_grid():
    assert [(t.top, t.left) for t in tile_grid(600, 1030, 518)] == [(0, 0), (0, 512), (82, 0), (82, 512)]
    assert [t.left for t in tile_grid(100, 392, 196)] == [0, 196]


@pytest.mark.parametrize("length, tile, overlap", [(392, 196, 98), (1000, 196, 50), (1030, 518, 100), (200, 196, 10)])
def test_overlap_grid_covers_and_shares_at_least_overlap(length, tile, overlap):
    lefts = [t.left for t in tile_grid(50, length, tile, overlap)]
    assert lefts[0] == 0 and lefts[-1] + tile == length
    assert all(0 < b - a <= tile - overlap for a, b in zip(lefts, lefts[1:]))
    # any interval of width <= overlap lies inside some tile
    for start in range(0, length - overlap + 1):
        assert any(left <= start and start + overlap <= left + tile for left in lefts)


def test_overlap_must_be_smaller_than_the_tile():
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 400, 196, 196)


def test_stitch_averages_overlapping_tiles():
    tiles = tile_grid(10, 30, 10, 5)  # lefts 0, 5, 10, 15, 20
    maps = [np.full((10, 10), float(i)) for i in range(len(tiles))]
    stitched = stitch(maps, tiles, 10, 30)
    assert stitched[0, 2] == 0 and stitched[0, 7] == pytest.approx(0.5) and stitched[0, 27] == 4
    assert stitched[0, 12] == pytest.approx((1 + 2) / 2)


def build(micro_weights, method, **options):
    options = {"backbone": "vit_micro14", "input_size": 196, **options}
    return MethodSpec(method, options, {"backbone": str(micro_weights)}).build()


@pytest.mark.parametrize("method", ["panet", "match"])
def test_defect_on_a_tile_seam(micro_weights, method):
    # 28-px defect across the seam at x = 196 of two 196-px tiles
    image, mask = with_defect(textured_image(196, 392), 84, 182, 28)
    seam = build(micro_weights, method)
    overlapped = build(micro_weights, method, tile_overlap=98)
    feats = overlapped.backbone.extract(image)
    assert [t.left for t in feats.tiles] == [0, 98, 196]
    assert any(t.left <= 182 and 210 <= t.left + t.width for t in feats.tiles)  # one tile holds it whole
    assert not any(t.left <= 182 and 210 <= t.left + t.width for t in seam.backbone.extract(image).tiles)
    for model in (seam, overlapped):
        score_map = model.predict([image], [mask], image)
        assert score_map.shape == (196, 392)
        assert score_map[mask].mean() > 0.5
        far = np.ones_like(mask)
        far[56:140, 150:240] = False
        assert (score_map[far] > 0.5).mean() < 0.02


def test_negative_or_too_large_overlap_is_a_method_error(micro_weights):
    with pytest.raises(MethodError, match="tile_overlap"):
        build(micro_weights, "padim", tile_overlap=-1)
    with pytest.raises(MethodError, match="tile_overlap"):
        build(micro_weights, "patchcore", tile_overlap=196)
