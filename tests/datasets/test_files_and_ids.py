"""Files that are not images (a FIFO named *.png) and image ids that must stay distinct (d1.png + d1.jpg)."""
import os
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from datasets.base import DatasetError, image_size, load_dataset, read_mask
from datasets.check import check_dataset
from harness.episodes import build_manifest

from .helpers import box_mask, write_image, write_mask

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


@contextmanager
def fifo_unblocker(fifo, after_s: float = 15.0):
    """After ``after_s``, open ``fifo`` for writing whenever a reader waits on it (so code that opens it
    returns instead of hanging the test session); yields an Event set when that was needed."""
    fired, stop = threading.Event(), threading.Event()

    def watch():
        if stop.wait(after_s):
            return
        fired.set()
        while not stop.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only with a reader waiting
            except OSError:
                time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        stop.set()
        thread.join()


def _folder(root):
    for i in range(3):
        write_image(root / f"scratch/images/s{i}.png")
        write_mask(root / f"scratch/masks/s{i}.png", box_mask(16, 12, 1, 3, 1, 4))
        write_image(root / f"good/images/g{i}.png")
    return root


@needs_fifo
def test_fifo_named_png_is_listed_not_opened(tmp_path):
    root = _folder(tmp_path / "parts")
    fifo = root / "scratch/images/s9.png"
    os.mkfifo(fifo)
    with fifo_unblocker(fifo) as fired:
        ds = load_dataset(str(root))
        report = check_dataset(str(root))
    assert not fired.is_set(), "a reader opened the FIFO and blocked"
    assert ds.meta["skipped_special_files"] == 1
    assert ds.meta["skipped"] == [{"path": str(fifo), "problem": "not a regular file (FIFO)",
                                   "reason": "special_files"}]
    assert len(ds.defective("parts", "scratch")) == 3
    assert (str(fifo), "error: not a regular file (FIFO) (left out)") in report.problems


@needs_fifo
def test_fifo_as_mask_or_named_in_an_index_is_refused_without_blocking(tmp_path):
    root = _folder(tmp_path / "parts")
    write_image(root / "scratch/images/s5.png")
    fifo_mask = root / "scratch/masks/s5.png"
    os.mkfifo(fifo_mask)
    fifo_image = tmp_path / "x.png"
    os.mkfifo(fifo_image)
    with fifo_unblocker(fifo_mask) as fired_mask, fifo_unblocker(fifo_image) as fired_image:
        ds = load_dataset(str(root))
        with pytest.raises(DatasetError, match="x.png: image is not a regular file"):
            image_size(fifo_image)
    assert not fired_mask.is_set() and not fired_image.is_set()
    assert ds.meta["skipped_unreadable_masks"] == 1
    assert "mask is not a regular file (FIFO)" in ds.meta["skipped"][0]["problem"]


def test_same_stem_two_extensions_give_two_ids(tmp_path):
    root = _folder(tmp_path / "parts")
    write_image(root / "scratch/images/d1.png", value=10)
    write_mask(root / "scratch/masks/d1.png", box_mask(16, 12, 0, 2, 0, 2))  # 4 px, the mask of both
    write_image(root / "scratch/images/d1.jpg", value=200)
    ds = load_dataset(str(root))
    ids = [r.image_id for r in ds.records if r.path.endswith(("d1.png", "d1.jpg"))]
    assert sorted(ids) == ["parts/scratch/d1.jpg", "parts/scratch/d1.png"]
    assert len({r.image_id for r in ds.records}) == len(ds.records)
    assert read_mask(ds.by_id()["parts/scratch/d1.jpg"]).sum() == 4
    assert ds.by_id()["parts/scratch/s0"].image_id == "parts/scratch/s0"  # unclashing ids unchanged
    manifest = build_manifest(ds, shots=(1,), seeds=1, normal_fraction=0.0)
    queries = [e.query_id for e in manifest.episodes]
    assert sorted(q for q in queries if "d1" in q) == ["parts/scratch/d1.jpg", "parts/scratch/d1.png"]
    assert len(queries) == len(set(queries)) == 5
    problems = check_dataset(str(root)).problems
    assert not [p for p in problems if "used by" in p[1]]
    assert any(path.endswith("d1.jpg") and "same name stem" in text for path, text in problems)


def test_same_stem_in_mvtec(tmp_path):
    root = tmp_path / "mvtec"
    write_image(root / "bottle/train/good/000.png")
    write_image(root / "bottle/train/good/000.bmp")
    write_image(root / "bottle/test/crack/000.png")
    write_mask(root / "bottle/ground_truth/crack/000_mask.png", np.ones((12, 16), bool))
    ds = load_dataset(str(root))
    assert sorted(r.image_id for r in ds.normals("bottle")) == ["bottle/good/train/000.bmp",
                                                                 "bottle/good/train/000.png"]
    assert ds.meta["renamed_ids"][0]["image_id"] == "bottle/good/train/000.bmp"
