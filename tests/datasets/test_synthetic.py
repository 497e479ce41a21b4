import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import synthetic
from datasets.base import load_dataset, read_image, read_mask


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path):
    kwargs = dict(seed=3, n_defective=2, n_good=1, objects=("pcb", "painted_panel"))
    synthetic.generate(tmp_path / "a", **kwargs)
    synthetic.generate(tmp_path / "b", **kwargs)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 2 * 1 + 2 * (3 + 2) * 2 + 2  # images, masks, manifest + folds
    assert first == second
    other = synthetic.generate(tmp_path / "c", **{**kwargs, "seed": 4})
    assert _files(tmp_path / "c")["pcb/good/images/pcb_good_000.png"] != first["pcb/good/images/pcb_good_000.png"]
    assert other[0]["width"] == 1024 and other[0]["height"] == 768


def test_images_are_1024x768_png_and_masks_exact(tmp_path):
    rows = synthetic.generate(tmp_path, seed=0, n_defective=1, n_good=1, objects=("wood",))
    image = Image.open(tmp_path / rows[1]["image"])
    mask = np.asarray(Image.open(tmp_path / rows[1]["mask"]))
    assert image.format == "PNG" and image.size == (1024, 768) and image.mode == "RGB"
    assert set(np.unique(mask)) <= {0, 255} and (mask > 0).any()
    assert (mask > 0).mean() == pytest.approx(rows[1]["defect_area_frac"], abs=1e-7)


def test_defect_changes_only_masked_pixels():
    bank = synthetic.NoiseBank(0)
    for obj_index, surface in enumerate(synthetic.SURFACES):
        for cat_index, kind in enumerate(surface.defects, start=1):
            rng = np.random.default_rng([0, obj_index, cat_index, 0])
            canvas = synthetic.Canvas(rng=rng, bank=bank, h=192, w=256)
            surface.texture(canvas)
            before = canvas.rgb.copy()
            canvas.mask = np.zeros((192, 256), dtype=bool)
            kind.draw(canvas, 0.002 * 192 * 256)
            changed = np.abs(canvas.rgb - before).max(axis=0) > 0
            assert canvas.mask.any(), (surface.name, kind.name)
            assert not (changed & ~canvas.mask).any(), (surface.name, kind.name)
            assert changed[canvas.mask].mean() > 0.95, (surface.name, kind.name)


def test_catalogue_and_folds():
    names = [s.name for s in synthetic.SURFACES]
    assert len(names) >= 6 and all(len(s.defects) >= 2 for s in synthetic.SURFACES)
    assert sorted(synthetic.FOLDS["base"] + synthetic.FOLDS["novel"]) == sorted(names)


def test_area_distribution_has_small_tail():
    """Masks of two surfaces' classes (10 images each), rendered without writing files."""
    bank = synthetic.NoiseBank(0)
    areas = []
    for obj_index in (0, 1):  # brushed_metal (scratch, pit, stain), woven_fabric (hole, stain, yarn)
        for cat_index, kind in enumerate(synthetic.SURFACES[obj_index].defects, start=1):
            for i, target in enumerate(synthetic.area_targets(0, obj_index, cat_index, kind, 10)):
                _, mask = synthetic.render(0, bank, obj_index, cat_index, i, float(target))
                areas.append(mask.mean())
    areas = np.array(areas)
    assert areas.min() < 0.0005 and areas.max() > 0.05
    assert (areas < 0.003).mean() > 0.5


def test_ensure_synthetic_is_atomic_and_reused(tmp_path):
    root = tmp_path / "synth"
    path = synthetic.ensure_synthetic(seed=1, root=root, n_defective=1, n_good=1)
    assert path == root
    marker = json.loads((root / "COMPLETE").read_text())
    assert marker["generator"] == synthetic.GENERATOR_VERSION and marker["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dir renamed away
    stamp = (root / "COMPLETE").stat().st_mtime_ns
    synthetic.ensure_synthetic(seed=1, root=root, n_defective=1, n_good=1)
    assert (root / "COMPLETE").stat().st_mtime_ns == stamp

    ds = synthetic.load_synthetic(seed=1, root=root, n_defective=1, n_good=1)
    assert ds.format == "synthetic"
    assert ds.folds == {k: tuple(v) for k, v in synthetic.FOLDS.items()}
    n_classes = sum(len(s.defects) for s in synthetic.SURFACES)
    assert len(ds.classes()) == n_classes
    assert len(ds.records) == n_classes + len(synthetic.SURFACES)
    for record in ds.records:
        expected = "base" if record.object in synthetic.FOLDS["base"] else "novel"
        assert record.split == expected
    record = ds.defective("pcb", "short")[0]
    assert read_image(record).shape == (768, 1024, 3) and read_mask(record).any()


@pytest.mark.slow
def test_default_synthetic_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFS_BENCH_CACHE", str(tmp_path))
    start = time.process_time()
    ds = load_dataset("synthetic")
    cpu = time.process_time() - start
    n_classes = sum(len(s.defects) for s in synthetic.SURFACES)
    assert len(ds.classes()) == n_classes
    assert len(ds.records) == 10 * n_classes + 8 * len(synthetic.SURFACES)
    assert (tmp_path / "synthetic-v1-seed0" / "COMPLETE").is_file()
    areas = np.array([float(r.split(",")[5]) for r in
                      (tmp_path / "synthetic-v1-seed0" / "manifest.csv").read_text().splitlines()[1:]
                      if r.split(",")[2]])
    assert areas.min() < 0.0005 and areas.max() > 0.05 and (areas < 0.003).mean() > 0.6
    assert cpu < 30
