"""Normal supports (``--set M.normal_supports=K``): the pool, the per-episode draw, the worker's hand-over."""
import numpy as np

import tests.toy_methods  # noqa: F401  (registers toy-bright)
from datasets.base import load_dataset
from harness.episodes import build_manifest
from harness.normal_supports import draw_normal_supports, normal_support_pool
from harness.runner import EpisodeWorker, EvalSettings, RowContext, make_unit
from methods.base import MethodSpec
from tests.toy_methods import make_folder_dataset


def _data(tmp_path, n=6):
    dataset = load_dataset(str(make_folder_dataset(tmp_path / "data", n_per_category=n)))
    return dataset, build_manifest(dataset, shots=(1,), seeds=1, normal_fraction=0.2)


def test_pool_is_the_normal_images_never_queried(tmp_path):
    dataset, manifest = _data(tmp_path)
    normals = {r.image_id for r in dataset.records if r.is_normal}
    queried = {e.query_id for e in manifest.episodes if e.query_is_normal}
    assert queried and normals - queried  # the fixture has both kinds
    assert normal_support_pool(manifest.episodes, dataset.records) == {"widget": tuple(sorted(normals - queried))}


def test_draw_is_seeded_by_the_episode_and_avoids_its_supports(tmp_path):
    dataset, manifest = _data(tmp_path)
    pool = normal_support_pool(manifest.episodes, dataset.records)
    first = manifest.episodes[0]
    drawn = draw_normal_supports(first, pool, 2)
    assert len(drawn) == 2 == len(set(drawn)) and set(drawn) <= set(pool["widget"])
    assert drawn == draw_normal_supports(first, pool, 2)  # same episode, same images
    assert draw_normal_supports(first, pool, 99) == pool["widget"]  # a short pool gives all it has
    assert draw_normal_supports(first, pool, 0) == ()
    fad_like = type(first)(**{**first.__dict__, "support_ids": pool["widget"][:1]})
    assert pool["widget"][0] not in draw_normal_supports(fad_like, pool, 99)
    assert len(pool["widget"]) >= 3
    assert len({draw_normal_supports(e, pool, 1) for e in manifest.episodes}) > 1  # episodes draw independently


def test_worker_hands_the_drawn_images_over_with_empty_masks(tmp_path):
    dataset, manifest = _data(tmp_path)
    pool = normal_support_pool(manifest.episodes, dataset.records)
    unit = make_unit("toy-bright", 0, tuple(manifest.episodes), dataset.by_id(), normal_supports=2, normal_pool=pool)
    worker = EpisodeWorker(MethodSpec.create("toy-bright"), RowContext("run", "m", "widget", "h", "{}"), EvalSettings())
    seen = []
    predict = worker.method.predict

    def traced(support_images, support_masks, query_image):
        seen.append((len(support_images), [bool(m.any()) for m in support_masks]))
        return predict(support_images, support_masks, query_image)

    worker.method.predict = traced
    rows = worker.run_chunk(unit)
    assert all(r["status"] == "ok" for r in rows)
    assert [n for n, _ in seen] == [1 + 2] * len(unit.episodes)
    assert all(masks[1:] == [False, False] for _, masks in seen)
    # without the option nothing is added, and the unit carries no extra records
    plain = make_unit("toy-bright", 0, tuple(manifest.episodes), dataset.by_id())
    assert plain.normal_pool == () and len(plain.records) < len(unit.records)
    seen.clear()
    worker.run_chunk(plain)
    assert [n for n, _ in seen] == [1] * len(plain.episodes)
    assert np.isfinite([r["tp"] for r in rows]).all()
