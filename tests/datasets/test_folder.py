import json
import os
from pathlib import Path

import numpy as np
import pytest

from datasets import folder
from datasets.base import load_dataset, read_image, read_mask
from datasets.check import check_dataset, format_check_report

from .helpers import box_mask, write_image, write_mask

REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "real-data"


def build_generic_tree(root: Path) -> Path:
    """One object ("parts") with good, defective, broken and linked files (16 x 12 images)."""
    write_image(root / "scratch/images/a.png")
    write_mask(root / "scratch/masks/a.png", box_mask(16, 12, 2, 4, 5, 8))  # 6 px
    write_image(root / "scratch/images/b.png")
    write_mask(root / "scratch/masks/b_mask.png", box_mask(16, 12, 0, 2, 0, 2))  # 4 px
    write_image(root / "scratch/images/c.png")
    write_mask(root / "scratch/masks/c.png", box_mask(10, 10, 0, 3, 0, 3))  # wrong size
    write_image(root / "scratch/images/d.png")  # no mask at all
    write_image(root / "pit/images/e.png")
    values = np.zeros((12, 16), dtype=np.uint8)
    values[0, :5], values[1, :3] = 200, 100  # three values: non-binary; 5 px above 127
    write_mask(root / "pit/masks/e.png", values)
    write_image(root / "pit/images/f.png")
    write_mask(root / "pit/masks/f.png", np.zeros((12, 16), dtype=bool))  # empty
    (root / "pit/images/bad.png").write_bytes(b"garbage")
    write_mask(root / "pit/masks/bad.png", box_mask(16, 12, 0, 1, 0, 1))
    write_image(root / "good/images/g1.png")
    write_image(root / "good/images/g2.png")
    write_image(root / "store/real.png", value=7)
    write_mask(root / "dent/masks/h.png", box_mask(16, 12, 5, 6, 5, 6))
    (root / "dent/images").mkdir(parents=True)
    (root / "dent/images/h.png").write_text("../../store/real.png")  # symlink kept as a text stub
    write_mask(root / "dent/masks/s.png", box_mask(16, 12, 5, 7, 5, 6))
    os.symlink("../../store/real.png", root / "dent/images/s.png")
    return root


def test_generic_layout_counts_and_masks(tmp_path):
    ds = load_dataset(str(build_generic_tree(tmp_path / "parts")))
    assert ds.format == "folder" and ds.name == "parts" and ds.folds == {}
    by_id = ds.by_id()
    assert sorted(by_id) == ["parts/dent/h", "parts/dent/s", "parts/good/g1", "parts/good/g2",
                             "parts/pit/e", "parts/scratch/a", "parts/scratch/b", "parts/scratch/c"]
    assert ds.classes() == [("parts", "dent"), ("parts", "pit"), ("parts", "scratch")]
    assert ds.meta["skipped_empty_masks"] == 1
    assert ds.meta["skipped_missing_masks"] == 1
    assert ds.meta["skipped_unreadable_images"] == 1
    assert read_mask(by_id["parts/scratch/a"]).sum() == 6
    assert read_mask(by_id["parts/scratch/b"]).sum() == 4
    assert read_mask(by_id["parts/pit/e"]).sum() == 5
    assert by_id["parts/good/g1"].is_normal
    for image_id in ("parts/dent/h", "parts/dent/s"):  # stub and real symlink both read
        assert read_image(by_id[image_id])[0, 0].tolist() == [7, 7, 7]
    assert read_mask(by_id["parts/dent/s"]).sum() == 2


def test_check_reports_every_problem_with_its_file(tmp_path):
    root = build_generic_tree(tmp_path / "parts")
    report = check_dataset(str(root))
    found = {(Path(path).name, problem.split(":")[0]) for path, problem in report.problems}
    assert ("d.png", "error") in found  # missing mask
    assert ("bad.png", "error") in found  # unreadable image
    assert ("c.png", "error") in found  # mask size differs
    assert ("e.png", "warning") in found  # non-binary
    assert ("f.png", "warning") in found  # empty mask
    assert ("images", "warning") in found  # pit has one image left
    texts = " | ".join(p for _, p in report.problems)
    for needle in ("no mask", "unreadable image", "mask is 10x10", "non-binary", "empty mask",
                   "has 1 image"):
        assert needle in texts
    assert report.has_errors
    assert report.classes[("parts", "scratch")] == {"defective": 3, "normal": 2}
    assert report.image_size["width"] == (16, 16, 16)
    # a, b, e, h, s are measurable: 6, 4, 5, 1, 2 px of 192
    assert report.area_frac[0] == pytest.approx(1 / 192) and report.area_frac[2] == pytest.approx(6 / 192)
    # 1/192 = 0.52 %; 2, 4, 5, 6 px = 1.04 %, 2.1 %, 2.6 %, 3.1 %
    assert report.area_bins == {"<0.1%": 0, "0.1-0.3%": 0, "0.3-1%": 1, "1-5%": 4, ">=5%": 0}
    text = format_check_report(report)
    assert "format: folder" in text and "d.png" in text and "errors" in text


def test_multi_object_layout_with_folds_and_manifest(tmp_path):
    for obj in ("gear", "shaft"):
        write_image(tmp_path / obj / "scratch/images/x.png")
        write_mask(tmp_path / obj / "scratch/masks/x.png", box_mask(16, 12, 0, 2, 0, 2))
        write_image(tmp_path / obj / "good/images/y.png")
    (tmp_path / "folds.json").write_text(json.dumps({"base": ["gear"], "novel": ["shaft"]}))
    # The manifest says shaft's mask is empty: the loader believes it and does not open the mask.
    (tmp_path / "manifest.csv").write_text(
        "category,image,mask,width,height,defect_area_frac\n"
        "scratch,shaft/scratch/images/x.png,shaft/scratch/masks/x.png,16,12,0.0\n")
    ds = folder.load(tmp_path)
    assert ds.folds == {"base": ("gear",), "novel": ("shaft",)}
    assert {r.image_id: r.split for r in ds.records} == {
        "gear/scratch/x": "base", "gear/good/y": "base", "shaft/good/y": "novel"}
    assert ds.meta["skipped_empty_masks"] == 1 and ds.meta["area_source"] == "manifest"


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="shared real-data folder absent")
def test_real_data_folders():
    tile = load_dataset(str(REAL_DATA / "magnetic_tile"))
    assert tile.classes() == [("magnetic_tile", c) for c in ("blowhole", "break", "crack", "fray", "uneven")]
    assert tile.meta["skipped_empty_masks"] == 4  # four 'uneven' masks are empty (README)
    assert len(tile.defective("magnetic_tile", "uneven")) == 99
    assert len(tile.normals("magnetic_tile")) == 80
    record = tile.defective("magnetic_tile", "blowhole")[0]
    image, mask = read_image(record), read_mask(record)
    assert image.shape[:2] == mask.shape == (record.height, record.width) and mask.any()

    pv = load_dataset(str(REAL_DATA / "el_pv_crack"))
    assert [len(pv.defective("el_pv_crack", c)) for c in ("crack", "cross", "dark")] == [493, 323, 270]
    assert len({r.image_id for r in pv.records}) == len(pv.records)
    linked = pv.defective("el_pv_crack", "cross")[0]  # images are (possibly stubbed) links
    assert read_image(linked).shape == (400, 400, 3)
