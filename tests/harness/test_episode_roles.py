"""Fixed roles (SOFS open-domain): supports only from support/, queries only from query/, and unlabelled
queries predicted and stored but never scored (status "unscored", counted neither ok nor failed)."""
import json
from pathlib import Path

import numpy as np

import tests.toy_methods  # noqa: F401  (registers toy-bright)
from datasets.base import load_dataset
from harness.episodes import build_manifest, read_manifest, write_manifest
from harness.records import UNSCORED_STATUS
from harness.report.aggregate import aggregate
from harness.run import ManifestSettings, RunConfig, execute
from harness.store import read_run
from methods.base import MethodSpec
from tests.datasets.helpers import box_mask, write_image, write_mask


def open_domain(root: Path) -> Path:
    """steel: supports s1 s2 s3, queries q1 (defect), q2 (empty label), u1 u2 (no label); tile: s1 s2 + u1."""
    for obj, supports in (("steel", ("s1", "s2", "s3")), ("tile", ("s1", "s2"))):
        for stem in supports:
            write_image(root / obj / f"support/image/{stem}.jpg", value=30)
            write_mask(root / obj / f"support/mask/{stem}_mask.png", box_mask(16, 12, 0, 2, 0, 5))
    for stem in ("q1", "q2", "u1", "u2"):
        write_image(root / "steel" / f"query/image/{stem}.png", value=30)
    write_mask(root / "steel/query/true_label/q1_mask.png", box_mask(16, 12, 3, 4, 0, 7))
    write_mask(root / "steel/query/true_label/q2_mask.png", np.zeros((12, 16), bool))
    write_image(root / "tile/query/image/u1.png", value=30)
    return root


def test_supports_come_only_from_support_and_queries_only_from_query(tmp_path):
    ds = load_dataset(str(open_domain(tmp_path / "open")))
    manifest = build_manifest(ds, shots=(1, 2), seeds=3, normal_fraction=0.5)
    assert manifest.episodes
    for episode in manifest.episodes:  # image ids are <object>/<support|query>/<stem>
        assert all(s.split("/")[1] == "support" for s in episode.support_ids), episode
        assert episode.query_id.split("/")[1] == "query", episode
    queried = {e.query_id for e in manifest.episodes}
    assert {"steel/query/q1", "steel/query/u1", "steel/query/u2", "tile/query/u1"} <= queried
    assert not any(q.split("/")[1] == "support" for q in queried)
    assert {r.role for r in ds.records if "/support/" in r.image_id} == {"support"}


def test_unlabelled_queries_make_episodes_counted_apart(tmp_path):
    ds = load_dataset(str(open_domain(tmp_path / "open")))
    manifest = build_manifest(ds, shots=(1,), seeds=2, normal_fraction=0.0)
    unlabelled = [e for e in manifest.episodes if e.query_id.split("/")[-1].startswith("u")]
    # 3 unlabelled queries x 2 repeats, each a query of its object's class, not a normal query
    assert sorted((e.query_id, e.repeat) for e in unlabelled) == [
        (q, r) for q in ("steel/query/u1", "steel/query/u2", "tile/query/u1") for r in (0, 1)]
    assert not any(e.query_is_normal for e in unlabelled) and {e.role for e in unlabelled} == {"unlabelled"}
    assert {e.role for e in manifest.episodes if e not in unlabelled} == {"test"}
    assert {e.category for e in unlabelled} == {"defect"}
    assert manifest.params["n_unlabelled_episodes"] == 6
    assert manifest.params["n_defective_episodes"] == 2  # q1 x 2 repeats
    assert manifest.params["classes"] == ["steel/defect", "tile/defect"]


def test_unlabelled_queries_are_predicted_and_stored_not_scored(tmp_path):
    dataset = open_domain(tmp_path / "open")
    config = RunConfig(methods=[MethodSpec.create("toy-bright", {})], dataset=str(dataset),
                       manifest=ManifestSettings(shots=(1,), seeds=1, normal_fraction=0.5),
                       out=str(tmp_path / "run"), executor="inline", chunk_size=2)
    summary = execute(config, progress_out=None)
    assert summary.failed == 0
    rows = read_run(summary.run_dir)
    unscored = rows[rows["status"] == UNSCORED_STATUS]
    assert sorted(unscored["query_id"]) == ["steel/query/u1", "steel/query/u2", "tile/query/u1"]
    assert unscored["tp"].isna().all() and unscored["gt_area_px"].isna().all()
    assert (unscored["pred_area_px"] == 0).all() and unscored["max_score"].notna().all()
    assert set(rows.loc[rows["status"] != UNSCORED_STATUS, "status"]) == {"ok"}
    counts = json.loads((summary.run_dir / "run.json").read_text())["counts"]
    assert counts["failed"] == 0 and counts["unscored"] == 3 and counts["ok"] == len(rows) - 3
    pooled = aggregate(rows).summary.iloc[0]
    assert pooled["n_failed"] == 0 and pooled["n_unscored"] == 3
    assert pooled["n_defective"] == 1 and pooled["n_normal"] == int((rows["query_is_normal"]).sum())


def test_unlabelled_images_are_never_calibration_normals_and_roles_survive_the_file(tmp_path):
    ds = load_dataset(str(open_domain(tmp_path / "open")))
    manifest = build_manifest(ds, shots=(1,), seeds=1, normal_fraction=0.0, calibration_normals=1)
    assert manifest.params["calibration_ids"] == {}  # steel has one labelled good image, tile none
    assert not [e for e in manifest.episodes if e.role == "calibration"]
    again = read_manifest(write_manifest(manifest, tmp_path / "manifests"))
    assert [e.role for e in again.episodes] == [e.role for e in manifest.episodes]
    assert again.manifest_id == manifest.manifest_id
