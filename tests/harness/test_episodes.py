import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.episodes import ManifestError, build_manifest, episode_id_for, read_manifest, write_manifest
from harness.records import ImageRecord


@dataclass(frozen=True)
class StandInDataset:
    """Same fields as datasets.base.Dataset."""

    name: str
    root: Path
    format: str
    records: tuple
    folds: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def _record(object_name, category, index, image_id=None):
    image_id = image_id or f"{object_name}_{category}_{index:02d}"
    normal = category == "good"
    return ImageRecord(
        image_id=image_id, path=f"{object_name}/{image_id}.png", mask_path=None if normal else f"{image_id}_mask.png",
        category=category, object=object_name, split="", width=64, height=48,
    )


def _dataset(records=None, **kwargs):
    if records is None:
        records = (
            [_record("cap", "scratch", i) for i in range(6)]
            + [_record("cap", "dent", i) for i in range(3)]
            + [_record("cap", "good", i) for i in range(10)]
            + [_record("nut", "crack", i) for i in range(4)]  # no normal images of nut
            + [_record("nut", "hole", 0)]  # single image -> skipped
            + [_record("pin", "bent", i) for i in range(2)]
            + [_record("pin", "good", i) for i in range(2)]
        )
    folds = {"0": ("cap",), "1": ("nut", "pin")}
    return StandInDataset("toy", Path("/data/toy"), "mvtec", tuple(records), folds, **kwargs)


def _records_by_id(dataset):
    return {(r.image_id, r.category if not r.is_normal else "good"): r for r in dataset.records}


def test_supports_same_class_never_the_query_and_counts():
    dataset = _dataset()
    manifest = build_manifest(dataset, shots=(1, 3), seeds=2, normal_fraction=0)
    defective_queries = 6 + 3 + 4 + 2  # nut/hole skipped
    assert len(manifest) == defective_queries * 2 * 2
    assert manifest.params["skipped_classes"] == ["nut/hole"]
    by_id = _records_by_id(dataset)
    for episode in manifest.episodes:
        assert episode.query_id not in episode.support_ids
        assert len(episode.support_ids) == episode.shots
        for support_id in episode.support_ids:
            support = by_id[(support_id, episode.category)]
            assert (support.object, support.category) == (episode.object, episode.category)
        query = by_id[(episode.query_id, episode.category)]
        assert (query.object, query.category) == (episode.object, episode.category)
    # every defective record is a query exactly once per (shot, repeat)
    per_query = Counter((e.query_id, e.category) for e in manifest.episodes)
    assert set(per_query.values()) == {4}
    assert len({e.episode_id for e in manifest.episodes}) == len(manifest)


def test_without_replacement_when_enough_else_with():
    manifest = build_manifest(_dataset(), shots=(3,), seeds=3, normal_fraction=0)
    for episode in manifest.episodes:
        if episode.category == "scratch":  # 5 candidates >= 3
            assert len(set(episode.support_ids)) == 3
    assert "pin/bent@3" in manifest.params["supports_with_replacement"]
    assert "cap/scratch@3" not in manifest.params["supports_with_replacement"]


def test_repeats_redraw_supports():
    manifest = build_manifest(_dataset(), shots=(2,), seeds=5, normal_fraction=0)
    draws = {e.support_ids for e in manifest.episodes if e.query_id == "cap_scratch_00"}
    assert len(draws) > 1
    assert sorted(e.repeat for e in manifest.episodes if e.query_id == "cap_scratch_00") == [0, 1, 2, 3, 4]


def test_normal_fraction():
    dataset = _dataset()
    manifest = build_manifest(dataset, seeds=1, normal_fraction=0.2)
    normal = [e for e in manifest.episodes if e.query_is_normal]
    defective = [e for e in manifest.episodes if not e.query_is_normal]
    assert len(defective) == 15
    assert len(normal) == round(0.25 * 15)  # 4 of 19 episodes ~ 0.2
    assert manifest.params["n_normal_episodes"] == len(normal)
    normal_ids = {r.image_id for r in dataset.records if r.is_normal}
    by_id = _records_by_id(dataset)
    for episode in normal:
        assert episode.query_id in normal_ids
        assert episode.object != "nut"  # nut has no normal images
        assert by_id[(episode.query_id, "good")].object == episode.object
        for support_id in episode.support_ids:
            assert by_id[(support_id, episode.category)].object == episode.object
    assert len({e.category for e in normal}) > 1  # spread over classes
    # the same normal images for every shot and repeat (paired comparisons)
    two = build_manifest(dataset, shots=(1, 2), seeds=2, normal_fraction=0.2)
    keys = Counter((e.category, e.query_id) for e in two.episodes if e.query_is_normal)
    assert set(keys.values()) == {4} and len(keys) == len(normal)


def test_normal_queries_capped_by_normal_images():
    dataset = _dataset()
    manifest = build_manifest(dataset, seeds=1, normal_fraction=0.9, fold="1")
    normal = [e for e in manifest.episodes if e.query_is_normal]
    assert len(normal) == 2  # only pin has (two) normal images and one class
    assert len({e.episode_id for e in manifest.episodes}) == len(manifest)


def test_fad_mode():
    dataset = _dataset()
    manifest = build_manifest(dataset, shots=(2,), seeds=1, normal_fraction=0, fad=True)
    normal_ids = {(r.image_id, r.object) for r in dataset.records if r.is_normal}
    assert manifest.params["skipped_classes"] == ["nut/crack", "nut/hole"]
    assert {e.category for e in manifest.episodes} == {"scratch", "dent", "bent"}
    assert len(manifest) == 6 + 3 + 2
    for episode in manifest.episodes:
        assert episode.support_is_normal and not episode.query_is_normal
        assert all((s, episode.object) in normal_ids for s in episode.support_ids)
    with_normals = build_manifest(dataset, shots=(1,), seeds=1, normal_fraction=0.2, fad=True)
    for episode in with_normals.episodes:
        assert episode.query_id not in episode.support_ids


def test_fold_filtering():
    dataset = _dataset()
    fold0 = build_manifest(dataset, seeds=1, fold="0")
    assert {e.object for e in fold0.episodes} == {"cap"}
    fold1 = build_manifest(dataset, seeds=1, fold="1", normal_fraction=0)
    assert {e.object for e in fold1.episodes} == {"nut", "pin"}
    everything = build_manifest(dataset, seeds=1)
    assert {e.object for e in everything.episodes} == {"cap", "nut", "pin"}
    with pytest.raises(ManifestError, match="no fold 'novel'.*folds: 0, 1"):
        build_manifest(dataset, fold="novel")


def test_episodes_of_a_class_do_not_depend_on_other_classes():
    dataset = _dataset()
    alone = _dataset([r for r in dataset.records if r.object == "cap"])
    full = build_manifest(dataset, shots=(1, 2), seeds=3, normal_fraction=0)
    part = build_manifest(alone, shots=(1, 2), seeds=3, normal_fraction=0)
    assert {e.episode_id for e in part.episodes} <= {e.episode_id for e in full.episodes}


def test_max_queries_per_class():
    manifest = build_manifest(_dataset(), seeds=2, normal_fraction=0, max_queries_per_class=2)
    counts = Counter(e.category for e in manifest.episodes)
    assert counts == {"scratch": 4, "dent": 4, "crack": 4, "bent": 4}
    full = build_manifest(_dataset(), seeds=2, normal_fraction=0)
    capped_keys = {(e.category, e.query_id, e.repeat, e.support_ids) for e in manifest.episodes}
    assert capped_keys <= {(e.category, e.query_id, e.repeat, e.support_ids) for e in full.episodes}


def test_deterministic_and_record_order_independent(tmp_path):
    dataset = _dataset()
    shuffled = _dataset(tuple(reversed(dataset.records)))
    first = build_manifest(dataset, shots=(1, 5), seeds=3)
    second = build_manifest(shuffled, shots=(1, 5), seeds=3)
    assert first.manifest_id == second.manifest_id and first.episodes == second.episodes
    path_a = write_manifest(first, tmp_path / "a")
    path_b = write_manifest(second, tmp_path / "b")
    assert path_a.name == f"{first.manifest_id}.parquet"
    assert path_a.read_bytes() == path_b.read_bytes()
    assert path_a.with_suffix(".json").read_bytes() == path_b.with_suffix(".json").read_bytes()
    assert build_manifest(dataset, shots=(1, 5), seeds=3, base_seed=1).manifest_id != first.manifest_id


def test_manifest_id_ignores_the_data_root():
    moved = dataclasses.replace(_dataset(), root=Path("/elsewhere"))
    assert build_manifest(moved).manifest_id == build_manifest(_dataset()).manifest_id
    assert build_manifest(moved).params["dataset_root"] == "/elsewhere"


def test_round_trip(tmp_path):
    manifest = build_manifest(_dataset(), shots=(1, 2), seeds=2)
    path = write_manifest(manifest, tmp_path)
    for source in (path, path.with_suffix(".json")):
        back = read_manifest(source)
        assert back == manifest
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["params"]["shots"] == [1, 2] and sidecar["manifest_id"] == manifest.manifest_id
    assert all(e.episode_id == episode_id_for(e) for e in back.episodes)


def test_read_errors_name_the_file(tmp_path):
    manifest = build_manifest(_dataset(), seeds=1)
    path = write_manifest(manifest, tmp_path)
    sidecar = path.with_suffix(".json")
    data = json.loads(sidecar.read_text())
    data["params"]["seeds"] = 7
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=f"{path.name}: content hash differs"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="nothing.json: manifest file not found"):
        read_manifest(tmp_path / "nothing.json")
    sidecar.write_text("{")
    with pytest.raises(ManifestError, match=f"{sidecar.name}: not a manifest sidecar"):
        read_manifest(path)
