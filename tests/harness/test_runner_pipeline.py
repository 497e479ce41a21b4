"""EpisodeWorker.run_chunk's pipeline: decode ahead on a loader thread and score on a scorer thread
while the method predicts; the rows equal those of the one-episode-at-a-time path."""
import threading
import time

import numpy as np

import tests.toy_methods  # noqa: F401  (registers toy-bright)
from datasets.base import load_dataset
from harness.episodes import build_manifest
from harness.runner import SCORE_MAP_KEY, EpisodeWorker, EvalSettings, RowContext, make_unit
from methods.base import MethodSpec
from tests.toy_methods import make_folder_dataset

TIMING = {"latency_s", "load_s", "finished_at"}


def _worker_and_unit(tmp_path, sleep_s=0.0, save=False):
    dataset = load_dataset(str(make_folder_dataset(tmp_path / "data")))
    manifest = build_manifest(dataset, shots=(1,), seeds=1, normal_fraction=0.2)
    unit = make_unit("toy-bright", 0, tuple(manifest.episodes), dataset.by_id())
    context = RowContext("run", manifest.manifest_id, "widget", "hash", "{}")
    spec = MethodSpec.create("toy-bright", {"sleep_s": sleep_s})
    return EpisodeWorker(spec, context, EvalSettings(), keep_maps=save), unit


def _untimed(row):
    return {k: v for k, v in row.items() if k not in TIMING}


def test_pipelined_rows_equal_sequential_rows_in_episode_order(tmp_path):
    worker, unit = _worker_and_unit(tmp_path, save=True)
    rows = worker.run_chunk(unit)
    assert [r["episode_id"] for r in rows] == [e.episode_id for e in unit.episodes]
    assert all(r["status"] == "ok" for r in rows)
    # The worker writes nothing: each row brings its 8-bit map, at the query's size, for the store.
    maps = [r.pop(SCORE_MAP_KEY) for r in rows]
    assert all(m.dtype == np.uint8 and m.shape == (r["height"], r["width"]) for m, r in zip(maps, rows))
    assert not any(r["pred_path"] for r in rows)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # nothing written beside the dataset
    sequential = [worker.run_episode(e) for e in unit.episodes]
    assert all(np.array_equal(m, r.pop(SCORE_MAP_KEY)) for m, r in zip(maps, sequential))
    assert [_untimed(r) for r in rows] == [_untimed(r) for r in sequential]


def test_images_are_decoded_off_the_compute_thread_while_the_method_predicts(tmp_path):
    worker, unit = _worker_and_unit(tmp_path, sleep_s=0.05)
    reads, predicts = [], []
    read_image, predict = worker._read_image, worker.method.predict

    def traced_read(record):
        reads.append((threading.current_thread().name, time.perf_counter()))
        return read_image(record)

    def traced_predict(*args):
        start = time.perf_counter()
        out = predict(*args)
        predicts.append((threading.current_thread().name, start, time.perf_counter()))
        return out

    worker._read_image, worker.method.predict = traced_read, traced_predict
    worker.run_chunk(unit)
    assert {name for name, _ in reads} == {next(iter({n for n, *_ in reads}))}  # one loader thread
    assert reads[0][0].startswith("sofs-load") and predicts[0][0] == threading.current_thread().name
    # some image was read while a predict call was running (decode overlaps compute)
    assert any(start < at < end for _, at in reads for _, start, end in predicts)


def test_a_bad_image_fails_only_its_episodes_and_keeps_the_order(tmp_path):
    worker, unit = _worker_and_unit(tmp_path)
    bad = unit.episodes[1].query_id
    read_image = worker._read_image

    def failing(record):
        if record.image_id == bad:
            raise OSError("truncated file")
        return read_image(record)

    worker._read_image = failing
    rows = worker.run_chunk(unit)
    assert [r["episode_id"] for r in rows] == [e.episode_id for e in unit.episodes]
    failed = [r for r in rows if r["status"] != "ok"]
    uses_bad = [e for e in unit.episodes if bad in (e.query_id, *e.support_ids)]
    assert len(failed) == len(uses_bad) >= 1
    assert all(r["status"] == "error: OSError: truncated file" and "truncated" in r["error_trace"] for r in failed)
    assert all(np.isfinite(r["tp"]) for r in rows if r["status"] == "ok")


def test_a_chunk_of_small_images_is_computed_in_shared_batches(tmp_path, lite0_file):
    from methods.sharing import reset_shared

    dataset = load_dataset(str(make_folder_dataset(tmp_path / "data", n_per_category=6)))
    manifest = build_manifest(dataset, shots=(1,), seeds=1, normal_fraction=0.2)
    unit = make_unit("panet", 0, tuple(manifest.episodes), dataset.by_id())
    context = RowContext("run", manifest.manifest_id, "widget", "hash", "{}")
    runs = {}
    for batched in (True, False):
        reset_shared()
        spec = MethodSpec.create("panet", {"backbone": "efficientnet_lite0", "image_batching": "on"},
                                 {"backbone": str(lite0_file)})
        worker = EpisodeWorker(spec, context, EvalSettings())
        if not batched:
            worker.method.prepare = None  # the method without the optional hook
        batches = []
        forward = worker.method.backbone.forward
        worker.method.backbone.forward = lambda batch: batches.append(batch.shape[0]) or forward(batch)
        runs[batched] = worker.run_chunk(unit), batches
    (rows, batches), (plain_rows, plain_batches) = runs[True], runs[False]
    unique = len({i for e in unit.episodes for i in (*e.support_ids, e.query_id)})
    assert sum(batches) == sum(plain_batches) == unique  # every image once (1 tile each), either way
    assert max(plain_batches) == 1 and len(batches) < unique / 2  # shared batches instead of one image each
    assert [r["status"] for r in rows] == ["ok"] * len(unit.episodes)
    for row, plain in zip(rows, plain_rows):
        assert row["gt_area_px"] == plain["gt_area_px"]
        assert abs(row["tp"] - plain["tp"]) + abs(row["fp"] - plain["fp"]) <= 2  # float16 features, other batch
