"""Mask semantics (datasets.base): binary, 0/255, 16-bit, class-id, palette, graded; VisA per-id classes."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from bench import cli
from datasets.base import DatasetError, class_pixels, load_dataset, load_mask_values, mask_kind, read_mask
from datasets.check import check_dataset

from tests.conftest import REAL_DATA

from .helpers import write_image, write_mask


@pytest.mark.parametrize("values, kind, expected", [
    ((0, 255), "binary", [False, True]),
    ((0, 1), "binary", [False, True]),
    ((0, 1, 2), "class ids", [False, True, True]),        # was "graded", cut at > 127: empty
    ((0, 1, 2, 7), "class ids", [False, True, True, True]),
    ((0, 3, 127), "class ids", [False, True, True]),
    ((0, 100, 128, 255), "graded", [False, False, True, True]),
    ((0, 2, 254, 255), "graded", [False, False, True, True]),  # JPEG-like noise around 0 and 255
])
def test_mask_kinds_and_the_pixels_they_mark(values, kind, expected):
    arr = np.array(values, np.uint8)
    assert mask_kind(arr) == kind
    assert class_pixels(arr, None).tolist() == expected


def test_16_bit_class_ids_and_graded():
    assert class_pixels(np.array([0, 1, 2, 300], np.uint16), None).tolist() == [False, True, True, True]
    assert class_pixels(np.array([0, 500, 40000, 65535], np.uint16), None).tolist() == [False, False, True, True]


def test_class_id_given_selects_that_id_only():
    arr = np.array([0, 1, 2, 2], np.uint8)
    assert class_pixels(arr, 2).tolist() == [False, False, True, True]


def _palette_mask(path, index, palette):
    img = Image.fromarray(index.astype(np.uint8), mode="P")
    img.putpalette(palette + [0] * (768 - len(palette)))
    img.save(path)
    return path


def test_coloured_palette_indices_are_class_ids(tmp_path):
    index = np.zeros((4, 5), np.uint8)
    index[0, :2], index[3, 4] = 1, 2  # red and green on black: three indices
    path = _palette_mask(tmp_path / "m.png", index, [0, 0, 0, 255, 0, 0, 0, 255, 0])
    values = load_mask_values(path)
    assert sorted(np.unique(values).tolist()) == [0, 1, 2]
    assert class_pixels(values, None).sum() == 3


def test_palette_with_black_at_another_index_uses_black_as_background(tmp_path):
    index = np.full((4, 5), 2, np.uint8)  # index 2 is black = background
    index[1, 1:4] = 1
    path = _palette_mask(tmp_path / "m.png", index, [9, 9, 200, 255, 0, 0, 0, 0, 0])
    assert class_pixels(load_mask_values(path), None).sum() == 3


def test_palette_with_coloured_index_0_and_a_black_entry_is_refused(tmp_path):
    index = np.zeros((4, 5), np.uint8)
    index[0, 0] = 1
    path = _palette_mask(tmp_path / "m.png", index, [255, 0, 0, 0, 0, 0])
    with pytest.raises(DatasetError, match="m.png: palette mask"):
        load_mask_values(path)


def test_grey_palette_reads_its_grey_values(tmp_path):
    index = np.zeros((4, 5), np.uint8)
    index[2, :] = 1  # index 1 = grey 255, index 2 = grey 40 (anti-aliased edge): graded, cut > 127
    index[3, 0] = 2
    path = _palette_mask(tmp_path / "m.png", index, [0, 0, 0, 255, 255, 255, 40, 40, 40])
    assert class_pixels(load_mask_values(path), None).sum() == 5


def _kolektor_with_class_id_label(root):
    """Four kos folders of KolektorSDD v1: two with 0/255 labels, one 0/1/2 class-id label, one empty."""
    labels = {}
    for n, folder in enumerate(("kos01", "kos02", "kos03", "kos04")):
        write_image(root / folder / "Part0.jpg", 20, 30)
        label = np.zeros((30, 20), np.uint8)
        if folder in ("kos01", "kos02"):
            label[10:14, 5:8] = 255
        elif folder == "kos03":
            label[2:6, 2:5], label[20:22, 10:12] = 1, 2  # 12 + 4 defect px held as class ids
        Image.fromarray(label, mode="L").save(root / folder / "Part0_label.bmp")
        labels[folder] = label
    return labels


def test_kolektorsdd_class_id_label_is_a_defect(tmp_path):
    root = tmp_path / "KolektorSDD"
    _kolektor_with_class_id_label(root)
    ds = load_dataset(str(root))
    assert len(ds.defective("kolektorsdd", "crack")) == 3 and len(ds.normals("kolektorsdd")) == 1
    assert read_mask(ds.by_id()["kolektorsdd/crack/kos03/Part0"]).sum() == 16
    report = check_dataset(str(root))
    assert report.classes[("kolektorsdd", "crack")] == {"defective": 3, "normal": 1}
    assert not report.errors


def test_datasets_check_cli_counts_a_class_id_kolektor_label(tmp_path):
    root = tmp_path / "KolektorSDD"
    _kolektor_with_class_id_label(root)
    result = CliRunner().invoke(cli, ["datasets", "check", str(root)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if "kolektorsdd/crack" in x)
    assert line.split()[1:] == ["3", "1"]
    assert "class ids (1, 2): read as one class" in result.output


def _visa(root, masks: dict[str, np.ndarray], names: dict | None = None):
    rows = ["object,split,label,image,mask"]
    for i in range(2):
        write_image(root / f"pcb1/Data/Images/Normal/{i:04d}.JPG")
        rows.append(f"pcb1,train,normal,pcb1/Data/Images/Normal/{i:04d}.JPG,")
    for stem, mask in masks.items():
        write_image(root / f"pcb1/Data/Images/Anomaly/{stem}.JPG")
        write_mask(root / f"pcb1/Data/Masks/Anomaly/{stem}.png", mask)
        rows.append(f"pcb1,test,anomaly,pcb1/Data/Images/Anomaly/{stem}.JPG,pcb1/Data/Masks/Anomaly/{stem}.png")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    if names is not None:
        (root / "id2class.json").write_text(json.dumps(names))


def _ids_mask(*regions):
    mask = np.zeros((12, 16), np.uint8)
    for value, (y0, y1, x0, x1) in regions:
        mask[y0:y1, x0:x1] = value
    return mask


def test_visa_multi_id_masks_split_per_id(tmp_path):
    root = tmp_path / "visa"
    _visa(root, {"000": _ids_mask((1, (0, 2, 0, 3)), (3, (5, 6, 0, 4))),  # bent 6 px + scratch 4 px
                 "001": _ids_mask((1, (2, 4, 2, 4))),
                 "002": _ids_mask((3, (8, 9, 8, 12)), (2, (0, 1, 0, 1)))})
    ds = load_dataset(str(root))
    assert ds.classes() == [("pcb1", "type1"), ("pcb1", "type2"), ("pcb1", "type3")]
    by_id = ds.by_id()
    assert read_mask(by_id["pcb1/type1/test/000"]).sum() == 6
    assert read_mask(by_id["pcb1/type3/test/000"]).sum() == 4
    assert read_mask(by_id["pcb1/type3/test/002"]).sum() == 4
    assert ds.meta["skipped_empty_masks"] == 0
    report = check_dataset(str(root))
    assert not [p for p in report.problems if "empty" in p[1]]
    assert report.classes[("pcb1", "type1")] == {"defective": 2, "normal": 2}


def test_visa_names_its_classes_from_id2class(tmp_path):
    root = tmp_path / "visa"
    _visa(root, {"000": _ids_mask((1, (0, 2, 0, 3)), (4, (5, 6, 0, 4))), "001": _ids_mask((255, (0, 1, 0, 2)))},
          names={"pcb1": {"0": "BACKGROUND", "1": "Bent", "4": "Missing"}})
    ds = load_dataset(str(root))
    assert ds.classes() == [("pcb1", "anomaly"), ("pcb1", "bent"), ("pcb1", "missing")]
    assert read_mask(ds.by_id()["pcb1/missing/test/000"]).sum() == 4


@pytest.mark.skipif(not (REAL_DATA / "el_pv_crack" / "masks_classid").is_dir(), reason="real data absent")
def test_real_class_id_maps_are_read_as_class_ids():
    """el_pv_crack's original class maps (0 bg, 1 dark, 2 cross, 3 crack, 4 busbar): the old rule read
    every map holding two classes or more as graded and cut it at >127, to nothing (543 of 593)."""
    files = sorted((REAL_DATA / "el_pv_crack" / "masks_classid").glob("*.png"))[:120]
    multi = 0
    for path in files:
        values = load_mask_values(path)
        if len(np.unique(values)) > 2:
            multi += 1
            assert mask_kind(values) == "class ids", path
        np.testing.assert_array_equal(class_pixels(values, None), values > 0)
    assert multi > 0
