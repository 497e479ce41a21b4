"""Image-level, AUPRO and both component-recall numbers of the report and the console summary equal
a recomputation from the raw score maps; schema-1 runs (without the v2 columns) still report."""
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.metrics import episode_metrics
from harness.report.aggregate import aggregate
from harness.report.load import load_runs
from harness.schema import EPISODE_SCHEMA
from harness.store import RunStore
from harness.summary import run_summary
from tests.harness.test_metrics_region import brute_force_image_metrics, flood_components, random_episode, reference_aupro


THRESHOLD = 0.6


def _row(index, score, gt, threshold=THRESHOLD):
    row = {f.name: None for f in EPISODE_SCHEMA}
    row.update(run_id="r", manifest_id="m", episode_id=f"e{index}", method_config_hash="h", method_options="{}",
               dataset="toy", object="obj", category="c", class_id="obj/c", shots=1, seed=0, repeat=0,
               query_id=f"q{index}", support_ids=["s"], query_is_normal=not gt.any(), support_is_normal=False,
               status="ok", latency_s=0.1, load_s=0.0, worker="w", finished_at=datetime(2025, 1, 1, tzinfo=timezone.utc))
    row.update(episode_metrics(score, threshold, gt))
    return row


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rng = np.random.default_rng(5)
    episodes = []
    for i in range(12):
        score, gt = random_episode(rng, normal=i % 3 == 0)
        if gt.any():  # weaker maps: some components missed, some half-found
            score = (np.floor(score * rng.uniform(0.6, 1.0) * 64) + 0.5) / 64
        else:  # a bright spot on some normal queries: image-level ranking is not perfect
            score[rng.integers(0, 20), rng.integers(0, 20)] = (rng.integers(20, 64) + 0.5) / 64
        episodes.append((score.astype(np.float32), gt))
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    store = RunStore(run_dir)
    rows = [_row(i, s, g) for i, (s, g) in enumerate(episodes)]
    store.write_part("new", 0, rows)
    # the same episodes as a schema-1 part: no gt_comp_pred_px / pro_overlap_sum columns
    v1 = pa.Table.from_pylist(rows, schema=EPISODE_SCHEMA).drop(["gt_comp_pred_px", "pro_overlap_sum"])
    store.method_dir("old").mkdir(parents=True)
    pq.write_table(v1, store.part_path("old", 0))
    return run_dir, episodes


def expected_numbers(episodes):
    """Recomputed from the maps (threshold THRESHOLD)."""
    scores = np.array([s.max() for s, _ in episodes])
    labels = np.array([g.any() for _, g in episodes])
    auroc, ap, f1 = brute_force_image_metrics(scores, labels)
    touch, half = [], []
    for score, gt in episodes:
        for pixels in flood_components(gt):
            predicted = sum(score[p] > THRESHOLD for p in pixels)
            touch.append(predicted >= 1)
            half.append(2 * predicted >= len(pixels))
    return dict(image_auroc=auroc, image_ap=ap, image_f1_max=f1, aupro=reference_aupro(episodes),
                comp_recall_touch=np.mean(touch), comp_recall_half=np.mean(half))


def test_report_numbers_equal_recomputation_and_old_runs_read(run):
    run_dir, episodes = run
    rows, _, _ = load_runs([run_dir])
    summary = aggregate(rows).summary.set_index("method")
    expected = expected_numbers(episodes)
    for column, value in expected.items():
        assert summary.at["new", column] == pytest.approx(value, abs=1e-12), column
    for column in ("image_auroc", "image_ap", "image_f1_max", "comp_recall_touch"):
        assert summary.at["old", column] == pytest.approx(expected[column], abs=1e-12), column
    assert np.isnan(summary.at["old", "aupro"]) and np.isnan(summary.at["old", "comp_recall_half"])


def test_component_table_has_both_rules(run):
    run_dir, episodes = run
    recall = aggregate(load_runs([run_dir])[0]).component_recall
    new = recall[recall["method"] == "new"]
    assert new["n_components"].sum() == new["n_components_half"].sum() == sum(len(flood_components(g)) for _, g in episodes)
    assert new["n_hit_half"].sum() / new["n_components_half"].sum() == pytest.approx(expected_numbers(episodes)["comp_recall_half"])
    assert recall[recall["method"] == "old"]["n_components_half"].sum() == 0


def test_console_summary_shows_the_same_numbers(run):
    run_dir, episodes = run
    numbers = run_summary([run_dir], bootstrap=20).data.set_index("method")
    expected = expected_numbers(episodes)
    assert numbers.at["new", "image_auroc"] == pytest.approx(expected["image_auroc"])
    assert numbers.at["new", "aupro"] == pytest.approx(expected["aupro"])
    assert numbers.at["new", "comp_recall_half"] == pytest.approx(expected["comp_recall_half"])
    assert numbers.at["new", "comp_recall_touch"] == pytest.approx(expected["comp_recall_touch"])
    assert np.isnan(numbers.at["old", "aupro"])
