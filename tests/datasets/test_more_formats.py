"""VisA, KolektorSDD / SDD2, DAGM 2007 and Severstal: tiny fixtures built here, auto-detected."""
import numpy as np
import pytest

from datasets.base import DatasetError, detect_format, load_dataset, read_mask
from datasets.severstal import rle_decode

from .helpers import box_mask, write_image, write_mask


def test_visa_split_csv(tmp_path):
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for i in range(2):
        write_image(root / f"candle/Data/Images/Normal/{i:04d}.JPG")
        rows.append(f"candle,train,normal,candle/Data/Images/Normal/{i:04d}.JPG,")
    write_image(root / "candle/Data/Images/Anomaly/0100.JPG")
    write_mask(root / "candle/Data/Masks/Anomaly/0100.png", box_mask(16, 12, 2, 5, 3, 7))
    rows.append("candle,test,anomaly,candle/Data/Images/Anomaly/0100.JPG,candle/Data/Masks/Anomaly/0100.png")
    write_image(root / "candle/Data/Images/Anomaly/0101.JPG")
    write_mask(root / "candle/Data/Masks/Anomaly/0101.png", np.zeros((12, 16), bool))  # empty: skipped
    rows.append("candle,test,anomaly,candle/Data/Images/Anomaly/0101.JPG,candle/Data/Masks/Anomaly/0101.png")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    assert detect_format(root) == "visa"
    ds = load_dataset(str(root))
    assert ds.format == "visa" and ds.classes() == [("candle", "anomaly")]
    assert len(ds.normals("candle")) == 2
    assert read_mask(ds.by_id()["candle/anomaly/test/0100"]).sum() == 12
    assert ds.meta["skipped_empty_masks"] == 1


def test_kolektorsdd_empty_label_is_normal(tmp_path):
    root = tmp_path / "KolektorSDD"
    for folder, defect in (("kos01", True), ("kos02", False)):
        write_image(root / folder / "Part0.jpg", 20, 30)
        label = box_mask(20, 30, 10, 14, 5, 8) if defect else np.zeros((30, 20), bool)
        path = root / folder / "Part0_label.bmp"
        write_mask(path.with_suffix(".png"), label)
        (path.with_suffix(".png")).rename(path)  # PNG bytes named .bmp are still read by PIL
    assert detect_format(root) == "kolektor"
    ds = load_dataset(str(root))
    assert ds.classes() == [("kolektorsdd", "crack")]
    assert read_mask(ds.by_id()["kolektorsdd/crack/kos01/Part0"]).sum() == 12
    assert [r.image_id for r in ds.normals("kolektorsdd")] == ["kolektorsdd/good/kos02/Part0"]


def test_kolektorsdd2(tmp_path):
    root = tmp_path / "KolektorSDD2"
    write_image(root / "train/10000.png", 16, 40)
    write_mask(root / "train/10000_GT.png", box_mask(16, 40, 0, 3, 0, 2))
    write_image(root / "test/20000.png", 16, 40)
    write_mask(root / "test/20000_GT.png", np.zeros((40, 16), bool))
    ds = load_dataset(str(root))
    assert ds.format == "kolektor" and ds.classes() == [("kolektorsdd2", "crack")]
    assert read_mask(ds.by_id()["kolektorsdd2/crack/train/10000"]).sum() == 6
    assert [r.split for r in ds.normals("kolektorsdd2")] == ["test"]


def test_dagm(tmp_path):
    root = tmp_path / "DAGM"
    for split in ("Train", "Test"):
        write_image(root / f"Class3/{split}/0001.PNG")
        write_image(root / f"Class3/{split}/0002.PNG")
        write_mask(root / f"Class3/{split}/Label/0002_label.PNG", box_mask(16, 12, 4, 8, 4, 8))
    (root / "Class3/Train/Label/Labels.txt").write_text("1\n")
    assert detect_format(root) == "dagm"
    ds = load_dataset(str(root))
    assert ds.classes() == [("Class3", "defect")]
    assert len(ds.defective("Class3", "defect")) == 2 and len(ds.normals("Class3")) == 2
    assert read_mask(ds.by_id()["Class3/defect/Test/0002"]).sum() == 16


def test_rle_decode_is_column_major_and_one_based():
    mask = rle_decode("1 3 10 2", 4, 3)  # H 4, W 3: pixels 1-3 = column 0 rows 0-2; 10-11 = column 2 rows 1-2
    expected = np.zeros((4, 3), bool)
    expected[0:3, 0] = True
    expected[1:3, 2] = True
    np.testing.assert_array_equal(mask, expected)
    with pytest.raises(DatasetError):
        rle_decode("11 5", 4, 3)


def test_severstal(tmp_path):
    root = tmp_path / "severstal"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(root / "train_images" / name, 8, 4)
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\na.jpg,1,1 3 10 2\na.jpg,3,29 4\nb.jpg,1,5 4\n")
    assert detect_format(root) == "severstal"
    ds = load_dataset(str(root))
    assert ds.classes() == [("steel", "class1"), ("steel", "class3")]
    by_id = ds.by_id()
    assert read_mask(by_id["steel/class1/a"]).sum() == 5
    class3 = read_mask(by_id["steel/class3/a"])
    assert class3[:, 7].all() and class3.sum() == 4  # pixels 29-32 = last column
    assert read_mask(by_id["steel/class1/b"])[:, 1].all()
    assert [r.image_id for r in ds.normals("steel")] == ["steel/good/c"]
    assert load_dataset(str(root)).by_id()["steel/class1/a"].mask_path == by_id["steel/class1/a"].mask_path  # cached
