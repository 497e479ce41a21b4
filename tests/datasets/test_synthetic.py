import hashlib
import json
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


# sha256 (first 16 hex digits) of PNG(image) + PNG(mask) of novel-fold images as generator
# synthetic-v1 (main at 191ee9f) wrote them: the novel fold is the evaluation data of the default
# run, so every README table stays valid only while these files are unchanged.
NOVEL_V1_DIGESTS = {
    "pcb/good/000": "d309432e1a30699c",
    "pcb/good/037": "7a84c5220f2aaf26",
    "pcb/open_circuit/000": "69ce1c50e35c6397",
    "pcb/open_circuit/007": "474b4127f4b83af3",
    "pcb/short/000": "855a5a7534295280",
    "pcb/short/007": "385c5d4c2b8e4ea6",
    "pcb/spurious_copper/000": "fe8a29ab6c98777f",
    "pcb/spurious_copper/007": "bfe7616b0ca99aa1",
    "cast_surface/good/000": "0ba547e3041bac91",
    "cast_surface/good/037": "6c631c42e9c4f9f2",
    "cast_surface/blowhole/000": "fe52671ce3a50f0a",
    "cast_surface/blowhole/007": "a68248cf2d6e7053",
    "cast_surface/crack/000": "c177bb30068e34e4",
    "cast_surface/crack/007": "49a464941c2aa374",
    "cast_surface/inclusion/000": "5b1b30a922a90427",
    "cast_surface/inclusion/007": "834848fc65245fe8",
    "painted_panel/good/000": "03d6914b9a372e53",
    "painted_panel/good/037": "3416839307c5c9a1",
    "painted_panel/bubble/000": "a5c55cee1ee1b3ee",
    "painted_panel/bubble/007": "fbee976175e0ee7a",
    "painted_panel/scratch/000": "b5b094a41ff6d751",
    "painted_panel/scratch/007": "0804543d0c10425d",
}


def test_novel_fold_is_byte_identical_to_v1():
    """The default seed's novel images and masks, as generate() would write them, match v1."""
    bank = synthetic.NoiseBank(0)
    names = [s.name for s in synthetic.SURFACES]
    assert synthetic.FOLDS["novel"] == ("pcb", "cast_surface", "painted_panel")
    digests = {}
    for name in synthetic.FOLDS["novel"]:
        obj = names.index(name)
        jobs = synthetic._jobs(0, obj, synthetic.N_DEFECTIVE, synthetic.N_GOOD)
        n_classes = len(synthetic.SURFACES[obj].defects)
        assert sum(1 for job in jobs if job[1] == 0) == 60 and len(jobs) == 60 + 10 * n_classes
        for category, cat_index, index, area in jobs:
            if index not in ((0, 37) if cat_index == 0 else (0, 7)):
                continue
            image, mask = synthetic.render(0, bank, obj, cat_index, index, area)
            digest = hashlib.sha256(synthetic.encode_png(image))
            if cat_index:
                digest.update(synthetic.encode_png(mask.astype(np.uint8) * 255))
            digests[f"{name}/{category}/{index:03d}"] = digest.hexdigest()[:16]
    assert digests == NOVEL_V1_DIGESTS


def test_wider_base_fold():
    """Twelve more base objects, each with >= 3 categories, grey and colour images, and a capped
    number of defect-free images; the base fold holds every object but the novel three."""
    base = synthetic.FOLDS["base"]
    assert len(base) >= 15 and not set(base) & set(synthetic.FOLDS["novel"])
    extra = synthetic.SURFACES[6:]
    assert len(extra) >= 12 and all(len(s.defects) >= 3 for s in extra)
    assert any(s.grey_share > 0 for s in extra)
    obj = [s.name for s in synthetic.SURFACES].index("leather")
    jobs = synthetic._jobs(0, obj, 10, 60)
    assert sum(1 for job in jobs if job[1] == 0) == synthetic.SURFACES[obj].max_good < 60
    assert synthetic._jobs(0, obj, 10, 1)[0][:3] == ("good", 0, 0)
    assert sum(1 for job in synthetic._jobs(0, obj, 10, 1) if job[1] == 0) == 1
    bank = synthetic.NoiseBank(0)
    greys = colours = 0
    for index in range(12):  # leather: 30 % of its images are grey
        image, _ = synthetic.render(0, bank, obj, 0, index, None, size=(128, 96))
        is_grey = bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
        greys, colours = greys + is_grey, colours + (not is_grey)
    assert greys and colours


@pytest.mark.parametrize("obj_index", range(6, 18))
def test_wider_base_defects_are_visible_and_exact(obj_index):
    """Every category of the new objects, at a tiny and a large area: the mask is non-empty,
    covers the pixels that changed and nothing else, and its area follows the target."""
    bank = synthetic.NoiseBank(0)
    surface = synthetic.SURFACES[obj_index]
    for cat_index, kind in enumerate(surface.defects, start=1):
        for index, frac in ((1, kind.area_range[0]), (2, kind.area_range[1])):
            rng = np.random.default_rng([0, obj_index, cat_index, index])
            canvas = synthetic.Canvas(rng=rng, bank=bank, h=768, w=1024)
            surface.texture(canvas)
            before = canvas.rgb.copy()
            canvas.mask = np.zeros((768, 1024), dtype=bool)
            kind.draw(canvas, frac * 768 * 1024)
            changed = np.abs(canvas.rgb - before).max(axis=0) > 0
            area = canvas.mask.mean()
            assert canvas.mask.any() and not (changed & ~canvas.mask).any(), (surface.name, kind.name)
            assert changed[canvas.mask].mean() > 0.95, (surface.name, kind.name)
            assert frac / 8 < area < frac * 4 or area * 768 * 1024 < 40, (surface.name, kind.name, frac, area)


@pytest.mark.slow
def test_default_synthetic_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFS_BENCH_CACHE", str(tmp_path))
    ds = load_dataset("synthetic")
    n_classes = sum(len(s.defects) for s in synthetic.SURFACES)
    n_good = sum(min(60, s.max_good or 60) for s in synthetic.SURFACES)
    assert len(ds.classes()) == n_classes
    assert len(ds.records) == 10 * n_classes + n_good
    folder = tmp_path / f"{synthetic.GENERATOR_VERSION}-seed0"
    assert (folder / "COMPLETE").is_file()
    areas = np.array([float(r.split(",")[5]) for r in (folder / "manifest.csv").read_text().splitlines()[1:]
                      if r.split(",")[2]])
    assert areas.min() < 0.0005 and areas.max() > 0.05 and (areas < 0.003).mean() > 0.6
