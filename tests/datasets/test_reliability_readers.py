"""Bad dataset files (issue 9): EXIF orientation, decompression bombs, 16-bit masks, links leading
outside the dataset root, empty category folders."""
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.base import class_pixels, image_size, load_dataset, read_image, read_mask
from datasets.check import check_dataset
from tests.toy_methods import make_folder_dataset


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path: Path, side: int = 40000) -> None:
    """A tiny PNG whose header declares side x side pixels (PIL refuses > 2 x MAX_IMAGE_PIXELS)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def test_decompression_bomb_is_a_skipped_record_not_a_crash(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    write_bomb_png(dataset / "spot" / "images" / "spot_9.png")
    loaded = load_dataset(str(dataset))
    assert "widget/spot/spot_9" not in loaded.by_id()
    (item,) = [i for i in loaded.meta["skipped"] if i["path"].endswith("spot_9.png")]
    assert item["reason"] == "unreadable_images" and "decompression bomb" in item["problem"]
    report = check_dataset(str(dataset))
    assert any(p.endswith("spot_9.png") and "decompression bomb" in text for p, text in report.problems)


def test_exif_orientation_is_applied_to_size_image_and_mask_alignment(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    # displayed image: 40 wide x 30 high, defect at the displayed top-left corner
    displayed = np.full((30, 40, 3), 20, np.uint8)
    displayed[2:6, 3:9] = 230
    mask = np.zeros((30, 40), np.uint8)
    mask[2:6, 3:9] = 255
    # stored turned 90 degrees with orientation 6 ("rotate 90 CW to display"), as cameras do
    stored = Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    image_path = dataset / "spot" / "images" / "spot_7.png"
    stored.save(image_path, exif=exif.tobytes())
    Image.fromarray(mask).save(dataset / "spot" / "masks" / "spot_7.png")
    assert image_size(image_path) == (40, 30)
    record = load_dataset(str(dataset)).by_id()["widget/spot/spot_7"]
    pixels, gt = read_image(record), read_mask(record)
    assert pixels.shape == (30, 40, 3) and gt.shape == (30, 40)
    assert (pixels[gt][:, 0] == 230).all(), "mask pixels must lie on the defect"
    assert not any(p.endswith("spot_7.png") for p, _ in check_dataset(str(dataset)).problems)


@pytest.mark.parametrize("values, expected", [
    ((0, 1000), [False, True]),        # 16-bit two-level mask: any non-zero
    ((0, 65535), [False, True]),
    ((0, 1), [False, True]),
    ((0, 100), [False, True]),         # 8-bit two-level mask below half range
])
def test_two_level_masks_of_any_depth_mark_every_nonzero_pixel(values, expected):
    assert class_pixels(np.array(values, dtype=np.uint16), None).tolist() == expected


def test_graded_masks_threshold_at_half_range():
    assert class_pixels(np.array([0, 100, 128, 255], np.uint8), None).tolist() == [False, False, True, True]
    assert class_pixels(np.array([0, 1000, 40000, 65535], np.int32), None).tolist() == [False, False, True, True]


def test_16_bit_mask_file_reads_as_defect(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    mask = np.zeros((48, 65), np.uint16)
    mask[10:14, 20:23] = 1000
    Image.fromarray(mask).save(dataset / "spot" / "masks" / "spot_1.png")
    record = load_dataset(str(dataset)).by_id()["widget/spot/spot_1"]
    assert read_mask(record).sum() == 12


def test_links_outside_the_root_are_refused_unless_followed(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(outside / "secret.png")
    os.symlink(outside / "secret.png", dataset / "good" / "images" / "good_link.png")
    stub = dataset / "good" / "images" / "good_stub.png"
    stub.write_text(os.path.relpath(outside / "secret.png", stub.parent))
    inside = dataset / "good" / "images" / "good_inside.png"
    inside.write_text("good_0.png")  # a link stub within the root stays allowed
    loaded = load_dataset(str(dataset))
    ids = loaded.by_id()
    assert "widget/good/good_link" not in ids and "widget/good/good_stub" not in ids
    assert "widget/good/good_inside" in ids
    refused = [i for i in loaded.meta["skipped"] if i["reason"] == "outside_root"]
    assert len(refused) == 2 and all("--follow-links" in i["problem"] for i in refused)
    followed = load_dataset(str(dataset), follow_links=True).by_id()
    assert "widget/good/good_link" in followed and "widget/good/good_stub" in followed


def test_manifest_csv_mask_outside_the_root_is_refused(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    outside = tmp_path / "other_mask.png"
    Image.open(dataset / "spot" / "masks" / "spot_0.png").save(outside)
    (dataset / "manifest.csv").write_text(f"image,mask\nspot/images/spot_0.png,../../other_mask.png\n")
    loaded = load_dataset(str(dataset))
    assert "widget/spot/spot_0" not in loaded.by_id()
    assert any(i["reason"] == "outside_root" and i["path"].endswith("other_mask.png") for i in loaded.meta["skipped"])


def test_empty_category_folder_is_reported_by_check(tmp_path):
    dataset = make_folder_dataset(tmp_path / "data")
    (dataset / "scratch" / "images").mkdir(parents=True)
    report = check_dataset(str(dataset))
    (problem,) = [text for path, text in report.problems if "scratch" in path]
    assert problem.startswith("warning:") and "holds no images" in problem
    assert not report.has_errors
