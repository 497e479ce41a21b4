
import numpy as np

from datasets.base import load_dataset, read_mask

from .helpers import box_mask, write_image, write_mask


def test_mvtec(tmp_path):
    root = tmp_path / "mvtec"
    for i in range(3):
        write_image(root / f"bottle/train/good/{i:03d}.png")
    write_image(root / "bottle/test/good/000.png")
    for i, (defect, box) in enumerate([("broken_large", (0, 3, 0, 4)), ("contamination", (5, 7, 5, 6))]):
        write_image(root / f"bottle/test/{defect}/000.png")
        write_mask(root / f"bottle/ground_truth/{defect}/000_mask.png", box_mask(16, 12, *box))
    write_image(root / "bottle/test/contamination/001.png")  # no ground truth -> skipped
    ds = load_dataset(str(root))
    assert ds.format == "mvtec"
    assert ds.classes() == [("bottle", "broken_large"), ("bottle", "contamination")]
    by_id = ds.by_id()
    assert read_mask(by_id["bottle/broken_large/000"]).sum() == 12
    assert read_mask(by_id["bottle/contamination/000"]).sum() == 2
    assert {r.image_id for r in ds.records if r.is_normal} == {
        "bottle/good/train/000", "bottle/good/train/001", "bottle/good/train/002",
        "bottle/good/test/000"}
    assert ds.meta["skipped_missing_masks"] == 1


def test_defect_spectrum_multi_valued_masks(tmp_path):
    root = tmp_path / "ds"
    values = np.zeros((12, 16), dtype=np.uint8)
    values[0:2, 0:3] = 1  # 6 px of cat0
    values[5, 5:9] = 3  # 4 px of cat2
    write_image(root / "carpet/image/color/000.png")
    write_mask(root / "carpet/mask/color/000_mask.png", values)
    write_image(root / "carpet/image/good/000.png")  # skipped: path contains "good"
    write_image(root / "Screw_VISION/image/a.png")
    write_mask(root / "Screw_VISION/mask/a_mask.png", (values > 0).astype(np.uint8) * 2)
    ds = load_dataset(str(root))
    assert ds.format == "defect_spectrum"
    assert ds.classes() == [("Screw_VISION", "cat1"), ("carpet", "cat0"), ("carpet", "cat2")]
    by_id = ds.by_id()
    assert by_id["carpet/cat0/color/000"].mask_value == 1
    assert read_mask(by_id["carpet/cat0/color/000"]).sum() == 6
    assert read_mask(by_id["carpet/cat2/color/000"]).sum() == 4
    assert read_mask(by_id["Screw_VISION/cat1/a"]).sum() == 10
    assert not any(r.is_normal for r in ds.records)
    assert ds.folds["split_0:test"] == ("Screw_VISION",) and ds.folds["split_1:test"] == ("carpet",)


def test_opendomain_with_and_without_query_labels(tmp_path):
    root = tmp_path / "open"
    for obj in ("steel", "tile"):
        for stem in ("s1", "s2"):
            write_image(root / obj / f"support/image/{stem}.jpg")
            write_mask(root / obj / f"support/mask/{stem}_mask.png", box_mask(16, 12, 0, 2, 0, 5))
        write_image(root / obj / "query/image/q1.png")
        write_image(root / obj / "query/image/q2.png")
    write_mask(root / "steel/query/true_label/q1_mask.png", box_mask(16, 12, 3, 4, 0, 7))
    write_mask(root / "steel/query/true_label/q2_mask.png", np.zeros((12, 16), dtype=bool))
    ds = load_dataset(str(root))
    assert ds.format == "opendomain"
    by_id = ds.by_id()
    assert by_id["steel/support/s1"].split == "support"
    assert read_mask(by_id["steel/support/s2"]).sum() == 10
    assert by_id["steel/query/q1"].split == "query" and read_mask(by_id["steel/query/q1"]).sum() == 7
    assert by_id["steel/query/q2"].is_normal and by_id["steel/query/q2"].category == "good"
    unlabelled = by_id["tile/query/q1"]
    assert unlabelled.mask_path is None and unlabelled.split == "query-unlabelled"
    assert ds.meta["unlabelled_queries"] == 2
    assert ds.classes() == [("steel", "defect"), ("tile", "defect")]
