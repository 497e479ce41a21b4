"""Calibration normals and per-object normal queries in the manifest (issue 19)."""
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.episodes import ManifestError, build_manifest, read_manifest, write_manifest
from tests.harness.test_episodes import _dataset, _record


def _big_dataset():
    records = ([_record("cap", "scratch", i) for i in range(5)] + [_record("cap", "dent", i) for i in range(4)]
               + [_record("cap", "good", i) for i in range(30)]
               + [_record("pin", "bent", i) for i in range(3)] + [_record("pin", "good", i) for i in range(5)])
    return _dataset(records)


def test_calibration_images_are_never_test_queries_or_supports():
    manifest = build_manifest(_big_dataset(), shots=(1, 2), seeds=2, normal_queries_per_object=12,
                              calibration_normals=10)
    held = set(manifest.params["calibration_ids"]["cap"])
    assert len(held) == 10 and "pin" not in manifest.params["calibration_ids"]
    assert "pin" in manifest.params["calibration_skipped"]  # 5 good images < 2 x 10
    test = [e for e in manifest.episodes if e.role == "test"]
    calibration = [e for e in manifest.episodes if e.role == "calibration"]
    for episode in test:
        assert episode.query_id not in held and not held & set(episode.support_ids)
    # every (class, k, r) scores every held-out image once, with one support draw
    assert len(calibration) == 10 * 2 * 2 * 2 == manifest.params["n_calibration_episodes"]
    draws = Counter((e.object, e.category, e.shots, e.repeat, e.support_ids)
                    for e in calibration)
    assert len(draws) == 2 * 2 * 2 and set(draws.values()) == {10}
    assert {e.query_id for e in calibration} == held
    assert all(e.query_is_normal for e in calibration)


def test_normal_queries_per_object_dealt_over_classes_each_image_once():
    manifest = build_manifest(_big_dataset(), shots=(1,), seeds=1, normal_queries_per_object=12,
                              calibration_normals=10)
    normal = [e for e in manifest.episodes if e.query_is_normal and e.role == "test"]
    cap = [e for e in normal if e.object == "cap"]
    assert len(cap) == 12 and len({e.query_id for e in cap}) == 12
    assert Counter(e.category for e in cap) == {"dent": 6, "scratch": 6}
    assert len([e for e in normal if e.object == "pin"]) == 5  # all it has (no calibration there)
    assert manifest.params["n_normal_episodes"] == 17


def test_ids_unchanged_without_the_new_options_and_v1_manifest_reads(tmp_path):
    dataset = _big_dataset()
    plain = build_manifest(dataset, shots=(1,), seeds=1)
    assert "calibration_normals" not in plain.params and all(e.role == "test" for e in plain.episodes)
    path = write_manifest(plain, tmp_path)
    # a version-1 file (no role column) still reads, as all "test"
    table = pq.read_table(path)
    pq.write_table(table.drop(["role"]), path)
    again = read_manifest(path)
    assert again.manifest_id == plain.manifest_id and again.episodes == plain.episodes


def test_edited_role_is_refused(tmp_path):
    manifest = build_manifest(_big_dataset(), shots=(1,), seeds=1, calibration_normals=10)
    path = write_manifest(manifest, tmp_path)
    table = pq.read_table(path)
    roles = ["calibration" if r == "test" else r for r in table.column("role").to_pylist()]
    index = table.schema.get_field_index("role")
    pq.write_table(table.set_column(index, pa.field("role", pa.string(), nullable=False), pa.array(roles)).replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(ManifestError, match="does not match its content"):
        read_manifest(path)


def test_negative_counts_refused():
    with pytest.raises(ManifestError, match="calibration_normals"):
        build_manifest(_big_dataset(), calibration_normals=-1)
