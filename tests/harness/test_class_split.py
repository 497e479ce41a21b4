"""The class-split protocol in the manifest and the report: ``--classes`` / a fold listing classes keep
the good images of their objects; class names (object/category, bare category, object) with one-line
errors; which classes a training record covers (by name, by content); marked rows in the tables."""
import json
from pathlib import Path

import numpy as np
import pytest

from harness.class_split import TrainedOn, class_fingerprints, mark_rows, trained_classes
from harness.episodes import ManifestError, build_manifest, resolve_class_names
from harness.records import ImageRecord
from tests.conftest import REAL_DATA
from tests.harness.test_episodes import StandInDataset
from tests.toy_methods import make_folder_dataset

REAL_MAGNETIC_TILE = REAL_DATA / "magnetic_tile"


def _dataset(objects=("tile",), categories=("crack", "fray", "uneven"), n=3, good=4, folds=None):
    records = []
    for obj in objects:
        for category in categories:
            records += [ImageRecord(f"{obj}/{category}/{i}", f"/d/{obj}/{category}/{i}.png",
                                    f"/d/{obj}/{category}/{i}_m.png", category, obj, "", 64, 48) for i in range(n)]
        records += [ImageRecord(f"{obj}/good/{i}", f"/d/{obj}/good/{i}.png", None, "good", obj, "", 64, 48)
                    for i in range(good)]
    return StandInDataset("toy", Path("/d"), "folder", tuple(records), folds or {})


def test_class_names_resolve_with_one_line_errors():
    one = _dataset()
    assert resolve_class_names(one, ["fray", "tile/uneven"], "--classes") == ("tile/fray", "tile/uneven")
    assert resolve_class_names(one, ["tile"], "--classes") == ("tile/crack", "tile/fray", "tile/uneven")
    with pytest.raises(ManifestError, match=r"^--classes: 'fary' is not a class of toy \(did you mean 'fray'\?\); "
                                            r"classes: crack, fray, uneven$"):
        resolve_class_names(one, ["fary"], "--classes")
    with pytest.raises(ManifestError, match="'good' holds the defect-free images"):
        resolve_class_names(one, ["good"], "--classes")
    two = _dataset(objects=("tile", "wood"), categories=("crack",))
    with pytest.raises(ManifestError, match=r"'crack' is a category of several objects \(tile/crack, wood/crack\)"):
        resolve_class_names(two, ["crack"], "--classes")
    with pytest.raises(ManifestError, match="classes: tile/crack, wood/crack$"):  # several objects: full ids
        resolve_class_names(two, ["pit"], "--classes")


def test_classes_keep_the_good_images_of_their_object():
    data = _dataset()
    manifest = build_manifest(data, seeds=1, classes=["fray", "uneven"], normal_queries_per_object=4,
                              calibration_normals=0)
    test = [e for e in manifest.episodes if e.role == "test"]
    assert {e.category for e in test} == {"fray", "uneven"}
    assert sum(e.query_is_normal for e in test) == 4  # every good image is a normal query
    assert manifest.params["class_selection"] == ["tile/fray", "tile/uneven"]
    with_calibration = build_manifest(data, seeds=1, classes=["fray"], calibration_normals=2)
    assert with_calibration.params["n_calibration_episodes"] == 2
    assert with_calibration.params["n_normal_episodes"] > 0
    # the same manifest from a fold that lists the classes (folds.json), and none of the other classes
    folded = _dataset(folds={"novel": ("fray", "tile/uneven"), "base": ("crack",)})
    by_fold = build_manifest(folded, seeds=1, fold="novel", normal_queries_per_object=4, calibration_normals=0)
    assert [(e.category, e.query_id) for e in by_fold.episodes] == [(e.category, e.query_id) for e in test]
    with pytest.raises(ManifestError, match="fold 'x' of toy: 'nope' is not a class"):
        build_manifest(_dataset(folds={"x": ("nope",)}), fold="x")
    # no selection: ids of manifests built before --classes existed do not change
    assert "class_selection" not in build_manifest(data, seeds=1).params


def test_a_folds_file_listing_categories_is_read_by_the_folder_format(tmp_path):
    from datasets.base import load_dataset

    root = make_folder_dataset(tmp_path / "d")
    (root / "folds.json").write_text(json.dumps({"base": ["spot"], "novel": ["line"]}))
    manifest = build_manifest(load_dataset(str(root)), seeds=1, fold="novel", normal_queries_per_object=2)
    assert {e.category for e in manifest.episodes if not e.query_is_normal} == {"line"}
    assert sum(e.query_is_normal for e in manifest.episodes) == 2


def _files(root: Path, name: str) -> StandInDataset:
    """Two classes of one object with real files (to fingerprint)."""
    from PIL import Image

    records = []
    for c, category in enumerate(("crack", "fray")):
        for i in range(2):
            folder = root / category
            folder.mkdir(parents=True, exist_ok=True)
            image, mask = folder / f"{i}.png", folder / f"{i}_m.png"
            Image.fromarray(np.full((8, 8, 3), 10 * c + i, np.uint8)).save(image)
            Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(mask)
            records.append(ImageRecord(f"{name}/{category}/{i}", str(image), str(mask), category, name, "", 8, 8))
    return StandInDataset(name, root, "folder", tuple(records), {})


def test_training_classes_are_found_by_name_or_by_content(tmp_path):
    data = _files(tmp_path / "a", "tile")
    fingerprints = class_fingerprints(data.records)
    record = TrainedOn("head h.pt", "tile", ("tile/crack",), {"tile/crack": fingerprints["tile/crack"]})
    assert trained_classes(record, data, ["tile/crack", "tile/fray"]) == ["tile/crack"]
    # a renamed copy: other folder and object names, the same bytes
    copy = _files(tmp_path / "b", "copy")
    assert class_fingerprints(copy.records) == {k.replace("tile/", "copy/"): v for k, v in fingerprints.items()}
    assert trained_classes(record, copy, ["copy/crack", "copy/fray"]) == ["copy/crack"]
    # same class names, another dataset with other images: novel
    other = StandInDataset("other", Path("/o"), "folder", (), {})
    assert trained_classes(record, other, ["tile/crack"]) == []
    assert trained_classes(TrainedOn("h", "", ("tile/crack",)), other, ["tile/crack"]) == ["tile/crack"]
    assert trained_classes(TrainedOn("h"), data, ["tile/crack"]) is None  # classes not recorded
    rows = mark_rows([{"class_id": "tile/crack"}, {"class_id": "tile/fray"}], ["tile/crack"])
    assert [r["trained_class"] for r in rows] == [True, False]
    assert mark_rows([{"class_id": "tile/crack"}], None)[0]["trained_class"] is None


def test_the_report_flags_rows_on_training_classes():
    from harness.report import aggregate
    from benchmarks.report_rows import make_synthetic_rows
    from harness.report.tables import flags, per_class_table

    rows = make_synthetic_rows(400, n_classes=4)
    first = sorted(rows["class_id"].unique())[0]
    method = sorted(rows["method"].unique())[0]
    rows["trained_class"] = (rows["class_id"] == first) & (rows["method"] == method)
    agg = aggregate(rows)
    summary = agg.summary.set_index("method")
    assert summary.loc[method, "n_trained_classes"].max() == 1
    assert (summary.drop(index=method)["n_trained_classes"] == 0).all()
    row = agg.summary[agg.summary["method"] == method].iloc[0].to_dict()
    assert any("1 class(es) its weights were trained on" in text for text in flags(row))
    table = per_class_table(agg).display
    marked = table[table["training class"] != "–"]
    assert set(marked["class"]) == {first} and set(marked["method"]) == {method}
    # rows of an older schema (no column, or nulls): nothing flagged, no column
    older = aggregate(rows.drop(columns="trained_class"))
    assert (older.summary["n_trained_classes"] == 0).all()
    assert "training class" not in per_class_table(older).display


@pytest.mark.skipif(not REAL_MAGNETIC_TILE.is_dir(), reason="real data (../shared/real-data) absent")
def test_magnetic_tile_split_keeps_its_good_images():
    from datasets.base import load_dataset

    data = load_dataset(str(REAL_MAGNETIC_TILE))
    manifest = build_manifest(data, seeds=1, classes=["fray", "uneven"], calibration_normals=20)
    assert manifest.params["classes"] == ["magnetic_tile/fray", "magnetic_tile/uneven"]
    assert manifest.params["n_normal_episodes"] > 0 and manifest.params["n_calibration_episodes"] > 0
