from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.base import Dataset, DatasetError, load_dataset, read_image, read_mask
from harness.records import ImageRecord

from .helpers import write_image, write_mask


def _record(path, mask_path=None, width=4, height=3, mask_value=None, category="scratch"):
    return ImageRecord(image_id="o/c/x", path=str(path), mask_path=mask_path and str(mask_path),
                       category=category if mask_path else "good", object="o", split="",
                       width=width, height=height, mask_value=mask_value)


def test_read_image_converts_grey_rgba_and_16bit(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = read_image(_record(tmp_path / "g.png"))
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert (out[..., 1] == grey).all()

    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert read_image(_record(tmp_path / "a.png"))[0, 0].tolist() == [200, 0, 0]

    deep = np.full((3, 4), 65535, dtype=np.uint16)
    deep[0, 0] = 0
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = read_image(_record(tmp_path / "d.png"))
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255


def test_read_mask_thresholds_and_values(tmp_path):
    values = np.array([[0, 100, 128, 255]] * 3, dtype=np.uint8)
    write_mask(tmp_path / "m.png", values)
    image = write_image(tmp_path / "i.png", 4, 3)
    assert read_mask(_record(image, tmp_path / "m.png")).sum() == 6  # > 127: 128 and 255
    assert read_mask(_record(image, tmp_path / "m.png", mask_value=100)).sum() == 3
    write_mask(tmp_path / "one.png", np.array([[0, 1, 1, 0]] * 3, dtype=np.uint8))
    assert read_mask(_record(image, tmp_path / "one.png")).sum() == 6  # 0/1 masks: > 0
    normal = read_mask(_record(image))
    assert normal.shape == (3, 4) and not normal.any()


def test_read_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="bad.png: unreadable image"):
        read_image(_record(bad))
    image = write_image(tmp_path / "i.png", 4, 3)
    with pytest.raises(DatasetError, match="bad.png: unreadable mask"):
        read_mask(_record(image, bad))
    write_mask(tmp_path / "big.png", np.zeros((5, 5), dtype=bool))
    with pytest.raises(DatasetError, match=r"big.png: mask is 5x5.*4x3"):
        read_mask(_record(image, tmp_path / "big.png"))


def test_load_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no known dataset layout"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="unknown format"):
        load_dataset(str(tmp_path / "empty"), fmt="kitti")


def test_dataset_helpers():
    records = (
        ImageRecord("a/scratch/1", "1.png", "m1.png", "scratch", "a", "", 4, 3),
        ImageRecord("b/pit/1", "2.png", "m2.png", "pit", "b", "", 4, 3),
        ImageRecord("a/good/1", "3.png", None, "good", "a", "", 4, 3),
    )
    ds = Dataset("t", Path("."), "folder", records, {}, {})
    assert ds.classes() == [("a", "scratch"), ("b", "pit")]
    assert ds.objects() == ["a", "b"]
    assert ds.by_id()["a/good/1"].is_normal
    assert [r.image_id for r in ds.normals("a")] == ["a/good/1"]
