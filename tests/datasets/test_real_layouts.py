"""The adapters on files laid out and encoded as the public datasets ship them (built here, small):
KolektorSDD v1, DAGM 2007, Severstal and SOFS open-domain. Each is auto-detected, checked with
``bench.py datasets check`` and made into episodes; pixel counts are the ones drawn."""
import numpy as np
from click.testing import CliRunner
from PIL import Image

from bench import cli
from datasets.base import detect_format, load_dataset, read_mask
from datasets.check import check_dataset
from harness.episodes import build_manifest

RNG = np.random.default_rng(20)


def _grey_jpeg(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(40, 90, (height, width), dtype=np.uint8), mode="L").save(path, quality=90)


def check_cli(root):
    result = CliRunner().invoke(cli, ["datasets", "check", str(root)])
    counts = {line.split()[0]: tuple(int(v) for v in line.split()[1:3])
              for line in result.output.splitlines() if line.startswith("  ") and "/" in line.split()[0]
              and len(line.split()) == 3 and line.split()[1].isdigit()}
    return result, counts


# ------------------------------------------------------------------ KolektorSDD v1


def kolektorsdd(root):
    """kos01..kos04, Part0..Part3 each: grey JPEG 24x62 + 8-bit BMP label. Labels: 0/255 (kos01/Part2,
    kos02/Part1), a 0/1/2 class-id BMP (kos03/Part0: 34 px), a 3-colour palette BMP (kos04/Part3: 10 px);
    the rest empty."""
    drawn = {}
    for k in range(1, 5):
        for i in range(4):
            folder = root / f"kos{k:02d}"
            _grey_jpeg(folder / f"Part{i}.jpg", 24, 62)
            label = np.zeros((62, 24), np.uint8)
            name = f"kos{k:02d}/Part{i}"
            if name in ("kos01/Part2", "kos02/Part1"):
                label[20:30, 10:14] = 255
            elif name == "kos03/Part0":
                label[40:46, 5:10], label[50:52, 5:7] = 1, 2
            elif name == "kos04/Part3":
                label[3:6, 3:6], label[10, 10] = 2, 1
            if name == "kos04/Part3":
                img = Image.fromarray(label, mode="P")
                img.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0] + [0] * 759)  # 2 = red
            else:
                img = Image.fromarray(label, mode="L")
            img.save(folder / f"Part{i}_label.bmp")
            drawn[name] = int((label > 0).sum())
    (root / "kos01" / "Thumbs.db").write_bytes(b"\0" * 16)  # shipped in some copies; not an image
    return drawn


def test_kolektorsdd_v1_layout(tmp_path):
    root = tmp_path / "KolektorSDD"
    drawn = kolektorsdd(root)
    assert detect_format(root) == "kolektor"
    ds = load_dataset(str(root))
    defective = {f"{r.split}/{r.image_id.rsplit('/', 1)[1]}": r for r in ds.defective("kolektorsdd", "crack")}
    assert {name: int(read_mask(r).sum()) for name, r in defective.items()} == {
        name: n for name, n in drawn.items() if n}
    assert len(ds.normals("kolektorsdd")) == 12
    result, counts = check_cli(root)
    assert result.exit_code == 0, result.output
    assert counts == {"kolektorsdd/crack": (4, 12)}
    manifest = build_manifest(ds, shots=(1,), seeds=1, normal_fraction=0.2)
    assert manifest.params["n_defective_episodes"] == 4 and manifest.params["n_normal_episodes"] == 1


# ------------------------------------------------------------------ DAGM 2007


def dagm(root):
    """Class1 and Class2_def: 8-bit grey PNGs 32x32 named 0001.PNG ..., Label/<id>_label.PNG ellipses (0/255)
    for 0002 and 0004 of each split, Labels.txt as shipped (its content is not needed)."""
    yy, xx = np.mgrid[:32, :32]
    ellipse = ((yy - 16) / 6.0) ** 2 + ((xx - 12) / 4.0) ** 2 <= 1
    for cls in ("Class1", "Class2_def"):
        for split in ("Train", "Test"):
            folder = root / cls / split
            (folder / "Label").mkdir(parents=True, exist_ok=True)
            lines = ["5"]
            for i in range(1, 6):
                Image.fromarray(RNG.integers(0, 255, (32, 32), dtype=np.uint8), mode="L").save(folder / f"{i:04d}.PNG")
                defect = i in (2, 4)
                lines.append(f"{i}\t{int(defect)}\t{i:04d}.PNG\t" + (f"{i:04d}_label.PNG" if defect else "0"))
                if defect:
                    Image.fromarray(ellipse.astype(np.uint8) * 255, mode="L").save(folder / "Label" / f"{i:04d}_label.PNG")
            (folder / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    return int(ellipse.sum())


def test_dagm_layout(tmp_path):
    root = tmp_path / "DAGM"
    ellipse_px = dagm(root)
    assert detect_format(root) == "dagm"
    ds = load_dataset(str(root))
    assert ds.classes() == [("Class1", "defect"), ("Class2_def", "defect")]
    assert all(int(read_mask(r).sum()) == ellipse_px for r in ds.records if not r.is_normal)
    result, counts = check_cli(root)
    assert result.exit_code == 0, result.output
    assert counts == {"Class1/defect": (4, 6), "Class2_def/defect": (4, 6)}
    manifest = build_manifest(ds, shots=(1, 2), seeds=2, normal_fraction=0.0)
    assert manifest.params["n_defective_episodes"] == 2 * 2 * 8


# ------------------------------------------------------------------ Severstal


def _rle(mask):
    """Column-major, 1-based ``start length`` runs (Severstal's encoding), written independently here."""
    flat = np.concatenate([[0], mask.T.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends))


def severstal(root):
    """train_images/*.jpg 64x16 (RGB JPEG as shipped), train.csv rows: a.jpg classes 1 and 3, b.jpg class 3,
    c.jpg class 1; d.jpg and e.jpg have no row (defect-free)."""
    masks = {}
    for name in ("a", "b", "c", "d", "e"):
        path = root / "train_images" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(RNG.integers(0, 255, (16, 64, 3), dtype=np.uint8)).save(path)
    for name, cls, box in (("a", 1, (2, 5, 3, 9)), ("a", 3, (10, 16, 40, 64)), ("b", 3, (0, 16, 0, 2)),
                           ("c", 1, (7, 8, 30, 31))):
        mask = np.zeros((16, 64), bool)
        mask[box[0]:box[1], box[2]:box[3]] = True
        masks[(name, cls)] = mask
    rows = ["ImageId,ClassId,EncodedPixels"] + [f"{n}.jpg,{c},{_rle(m)}" for (n, c), m in masks.items()]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return masks


def test_severstal_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFS_BENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "severstal"
    masks = severstal(root)
    assert detect_format(root) == "severstal"
    ds = load_dataset(str(root))
    by_id = ds.by_id()
    for (name, cls), mask in masks.items():
        np.testing.assert_array_equal(read_mask(by_id[f"steel/class{cls}/{name}"]), mask)
    assert sorted(r.image_id for r in ds.normals("steel")) == ["steel/good/d", "steel/good/e"]
    result, counts = check_cli(root)
    assert result.exit_code == 0, result.output
    assert counts == {"steel/class1": (2, 2), "steel/class3": (2, 2)}
    manifest = build_manifest(ds, shots=(1,), seeds=1, normal_fraction=0.0)
    assert sorted(e.query_id for e in manifest.episodes) == sorted(f"steel/class{c}/{n}" for n, c in masks)


# ------------------------------------------------------------------ SOFS open-domain


def opendomain(root):
    """bottle_cap: support/image 3 JPEGs + support/mask <stem>_mask.png 0/255; query/image 4 PNGs,
    query/true_label for q1 (defect, 6 px) and q2 (empty); q3, q4 unlabelled."""
    for i in range(3):
        _grey_jpeg(root / f"bottle_cap/support/image/s{i}.jpg", 40, 30)
        mask = np.zeros((30, 40), np.uint8)
        mask[5 + i:8 + i, 10:14] = 255
        (root / "bottle_cap/support/mask").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask, mode="L").save(root / f"bottle_cap/support/mask/s{i}_mask.png")
    (root / "bottle_cap/query/true_label").mkdir(parents=True)
    (root / "bottle_cap/query/image").mkdir(parents=True)
    for i in range(1, 5):
        Image.fromarray(RNG.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / f"bottle_cap/query/image/q{i}.png")
    label = np.zeros((30, 40), np.uint8)
    label[20:22, 1:4] = 255
    Image.fromarray(label, mode="L").save(root / "bottle_cap/query/true_label/q1_mask.png")
    Image.fromarray(np.zeros((30, 40), np.uint8), mode="L").save(root / "bottle_cap/query/true_label/q2_mask.png")


def test_sofs_open_domain_layout(tmp_path):
    root = tmp_path / "open"
    opendomain(root)
    assert detect_format(root) == "opendomain"
    ds = load_dataset(str(root))
    by_id = ds.by_id()
    assert [int(read_mask(by_id[f"bottle_cap/support/s{i}"]).sum()) for i in range(3)] == [12, 12, 12]
    assert int(read_mask(by_id["bottle_cap/query/q1"]).sum()) == 6
    assert by_id["bottle_cap/query/q2"].category == "good"
    result, counts = check_cli(root)
    assert result.exit_code == 0, result.output
    assert counts == {"bottle_cap/defect": (4, 1)} and "unlabelled queries: 2" in result.output
    report = check_dataset(str(root))
    assert report.unlabelled == 2
    manifest = build_manifest(ds, shots=(1,), seeds=2, normal_fraction=0.5)
    assert {s for e in manifest.episodes for s in e.support_ids} <= {f"bottle_cap/support/s{i}" for i in range(3)}
    assert sorted({e.query_id for e in manifest.episodes}) == [f"bottle_cap/query/q{i}" for i in range(1, 5)]
    assert manifest.params["n_unlabelled_episodes"] == 4 and manifest.params["n_defective_episodes"] == 2
