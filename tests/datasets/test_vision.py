import json
from pathlib import Path

from datasets import vision
from datasets.base import load_dataset, read_mask

from .helpers import write_image

W, H = 20, 16


def rle_string(counts: list[int]) -> str:
    """COCO compressed RLE (inverse of the decoder under test), written out for the test."""
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def coco(images, annotations):
    return {"categories": [{"id": 0, "name": "cable-damage", "supercategory": "none"},
                           {"id": 1, "name": "break", "supercategory": "cable-damage"},
                           {"id": 2, "name": "thunder bolt", "supercategory": "cable-damage"}],
            "images": [{"id": i, "file_name": name, "width": W, "height": H}
                       for i, name in enumerate(images)],
            "annotations": [{"id": k, "image_id": img, "category_id": cat, "segmentation": seg,
                             "iscrowd": int(isinstance(seg, dict))}
                            for k, (img, cat, seg) in enumerate(annotations)]}


TRIANGLE = [[1, 1, 5, 1, 1, 5]]  # x,y pairs: 5+4+3+2+1 = 15 pixels with skimage (edges included)
BOX = [[10, 2, 13, 2, 13, 4, 10, 4]]  # columns 10..13 x rows 2..4 = 12 pixels


def build_vision(root: Path) -> Path:
    obj = root / "Cable"
    for name in ("img1.jpg", "img2.jpg"):
        write_image(obj / "train" / name, W, H)
    (obj / "train" / vision.COCO_FILE).write_text(json.dumps(coco(
        ["img1.jpg", "img2.jpg"],
        [(0, 1, TRIANGLE), (0, 1, BOX), (0, 2, [[0, 10, 2, 10, 2, 12, 0, 12]])])))
    for name in ("img3.png", "img4.png"):
        write_image(obj / "val" / name, W, H)
    rle = {"size": [H, W], "counts": rle_string([5, 3, H * W - 8])}  # column 0, rows 5..7
    (obj / "val" / vision.COCO_FILE).write_text(json.dumps(coco(
        ["img3.png", "img4.png"], [(0, 1, TRIANGLE), (0, 1, TRIANGLE), (1, 2, rle)])))
    write_image(obj / "inference" / "unlabelled.jpg", W, H)
    return root


def test_vision_rasterizes_polygons_once(tmp_path):
    root = build_vision(tmp_path / "vision")
    ds = load_dataset(str(root))
    assert ds.format == "vision"
    by_id = ds.by_id()
    assert sorted(by_id) == ["Cable/break/train/img1", "Cable/break/val/img3",
                             "Cable/good/train/img2", "Cable/thunder_bolt/train/img1",
                             "Cable/thunder_bolt/val/img4"]
    assert ds.classes() == [("Cable", "break"), ("Cable", "thunder bolt")]  # supercategory dropped
    assert read_mask(by_id["Cable/break/train/img1"]).sum() == 15 + 12  # two instances OR-ed
    assert read_mask(by_id["Cable/thunder_bolt/train/img1"]).sum() == 9
    assert read_mask(by_id["Cable/break/val/img3"]).sum() == 15  # duplicate polygon OR-ed
    rle_mask = read_mask(by_id["Cable/thunder_bolt/val/img4"])
    assert rle_mask.sum() == 3 and rle_mask[5:8, 0].all()
    triangle = read_mask(by_id["Cable/break/val/img3"])
    assert triangle[1, 1:6].all() and triangle[5, 1] and not triangle[5, 2]
    assert by_id["Cable/good/train/img2"].is_normal
    assert "skimage.draw.polygon" in ds.meta["rasterizer"]
    assert ds.folds["split_0:test"] == ("Cable",) and ds.folds["split_1:train"] == ("Cable",)
    assert ds.folds["split_2:test"] == ()

    cache = Path(ds.meta["mask_cache"])
    assert cache == root / ".sofs_bench_masks"
    index = cache / "Cable" / "train" / "index.json"
    stamp = index.stat().st_mtime_ns
    again = load_dataset(str(root))
    assert again.records == ds.records and index.stat().st_mtime_ns == stamp  # reused


def test_vision_cache_falls_back_when_root_not_writable(tmp_path, monkeypatch):
    root = build_vision(tmp_path / "vision")
    (root / ".sofs_bench_masks").write_text("a file, so the cache folder cannot be made here")
    monkeypatch.setenv("SOFS_BENCH_CACHE", str(tmp_path / "cache"))
    ds = vision.load(root)
    assert str(tmp_path / "cache") in ds.meta["mask_cache"]
    assert read_mask(ds.by_id()["Cable/break/train/img1"]).sum() == 27
