"""Operating points (issue 19): recall at a false-alarm budget, from the rows, by independent code."""
import math
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from harness.metrics import episode_metrics
from harness.report.operating import (budget_threshold, good_passed_at_recall, operating_points,
                                      wilson_interval)


def test_budget_threshold_is_numpy_higher_quantile_by_hand():
    scores = np.arange(1, 11) / 10  # 0.1 .. 1.0
    # 1 - 20/100 = 0.8 -> position 0.8 * 9 = 7.2 -> "higher" takes index 8 = 0.9: 1 of 10 above
    assert budget_threshold(scores, 20) == pytest.approx(0.9)
    assert budget_threshold(scores, 5) == pytest.approx(1.0)  # index ceil(8.55) = 9: none above
    assert math.isnan(budget_threshold([], 5))


def test_good_passed_at_95_recall_by_hand():
    # k = ceil(0.95 * 4) = 4 -> the 4th highest defective score 0.6 must stay flagged (score > t),
    # so t sits just below 0.6: good parts below 0.6 pass (0.5), 0.65 and 0.75 do not
    assert good_passed_at_recall([0.9, 0.8, 0.7, 0.6], [0.65, 0.5, 0.75]) == pytest.approx(1 / 3)


def test_wilson_interval_matches_the_formula():
    k, n, z = 2, 20, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(centre - half, abs=1e-9) and high == pytest.approx(centre + half, abs=1e-9)


def test_component_max_score_is_stored_per_gt_component():
    gt = np.zeros((20, 30), bool)
    gt[2:4, 2:4] = True  # component A
    gt[10:15, 20:25] = True  # component B
    score = np.full(gt.shape, 0.1, np.float32)
    score[3, 3] = 0.7
    score[12, 22] = 0.95
    score[0, 29] = 1.0  # outside every component
    row = episode_metrics(score, 0.5, gt)
    assert row["gt_comp_areas"] == [4, 25]
    assert row["gt_comp_max_score"] == pytest.approx([0.7, 0.95])
    # "found at t" is max > t for every t: at t = 0.8 only B
    assert [m > 0.8 for m in row["gt_comp_max_score"]] == [False, True]


def test_rows_of_older_schema_give_blank_component_figures():
    rows = pd.DataFrame({
        "method": ["m"] * 4, "shots": [1] * 4, "status": ["ok"] * 4, "repeat": [0] * 4,
        "class_id": ["o/c"] * 4, "query_is_normal": [False, False, True, True],
        "max_score": [0.9, 0.4, 0.5, 0.1], "gt_comp_max_score": [None] * 4,
        "gt_comp_areas": [[3], [5], [], []], "height": [10] * 4, "width": [10] * 4})
    op = operating_points(rows, rows.iloc[:0], ["method", "shots"], budgets=(50.0,))
    row = op.summary.iloc[0]
    assert row["image_recall@fa50"] == 0.5  # t = 0.5: 0.9 flagged, 0.4 not
    assert math.isnan(row["comp_recall@fa50"]) and math.isnan(row["calibrated_false_alarm@fa50"])


def _dataset(root, n_defective=12, n_good=40, seed=0):
    """widget/{spot,good}: dark noise; a spot of varying brightness (defects, and on some good parts
    a harmless bright blotch), so good and defective image scores overlap."""
    rng = np.random.default_rng(seed)
    base = root / "widget"
    for category, n in (("spot", n_defective), ("good", n_good)):
        (base / category / "images").mkdir(parents=True)
        if category == "spot":
            (base / category / "masks").mkdir()
        for i in range(n):
            image = rng.integers(10, 40, size=(32, 40, 3), dtype=np.uint8)
            mask = np.zeros((32, 40), np.uint8)
            y, x = rng.integers(2, 26), rng.integers(2, 34)
            if category == "spot":
                mask[y:y + 1 + i % 3, x:x + 2] = 255
                image[mask > 0] = rng.integers(60, 250)
            elif i % 2:
                image[y:y + 2, x:x + 2] = rng.integers(40, 200)
            Image.fromarray(image).save(base / category / "images" / f"{category}_{i}.png")
            if category == "spot":
                Image.fromarray(mask).save(base / category / "masks" / f"{category}_{i}.png")
    return root


def _numpy_quantile(scores, budget):
    return np.quantile(np.asarray(scores, float), 1 - budget / 100, method="higher")


@pytest.mark.parametrize("budgets", ["1,5"])
def test_summary_csv_operating_points_recomputed_from_rows_with_numpy(tmp_path, monkeypatch, budgets):
    monkeypatch.setenv("SOFS_BENCH_PLUGINS", "tests.toy_methods")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    import bench

    data = _dataset(tmp_path / "data")
    out = tmp_path / "run"
    result = CliRunner().invoke(bench.cli, [
        "run", "--methods", "toy-bright", "--dataset", str(data), "--executor", "inline", "--seeds", "2",
        "--shots", "1,2", "--normal-queries-per-object", "25", "--calibration-normals", "10",
        "--fa-budget", budgets, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "rec@fa5" in result.output and "calFA@5" in result.output
    assert max(len(line) for line in result.output.splitlines() if line.startswith(("toy", "method", "---"))) <= 120

    # independent recomputation: pyarrow rows, numpy only
    rows = pq.read_table(out / "episodes").to_pandas()
    rows = rows[rows["status"] == "ok"]
    summary = pd.read_csv(out / "summary.csv")
    for shots, block in rows.groupby("shots"):
        got = summary[summary["shots"] == shots].iloc[0]
        test, cal = block[block["role"] == "test"], block[block["role"] == "calibration"]
        assert len(cal) == 10 * 2 and test["query_is_normal"].sum() == 25 * 2  # 10 held out, 2 draws
        assert not set(cal["query_id"]) & (set(test["query_id"]) | {i for ids in test["support_ids"] for i in ids})
        normal = test[test["query_is_normal"]]["max_score"].to_numpy(float)
        defective = test[~test["query_is_normal"]]
        components = np.concatenate([np.asarray(v, float) for v in defective["gt_comp_max_score"]])
        for budget in (1, 5):
            t = _numpy_quantile(normal, budget)
            assert got[f"image_recall@fa{budget}"] == pytest.approx(np.mean(defective["max_score"].to_numpy(float) > t))
            assert got[f"comp_recall@fa{budget}"] == pytest.approx(np.mean(components > t))
            fraction = np.concatenate([np.asarray(a, float) / (h * w) for a, h, w in
                                       zip(defective["gt_comp_areas"], defective["height"], defective["width"])])
            assert got[f"comp_recall_small@fa{budget}"] == pytest.approx(np.mean(components[fraction < 0.003] > t))
        # calibrated: one threshold per (repeat, class) from its calibration scores alone
        flagged_normal, flagged_defective = [], []
        for (repeat, class_id), draw in cal.groupby(["repeat", "class_id"]):
            t = _numpy_quantile(draw["max_score"], 5)
            same = test[(test["repeat"] == repeat) & (test["class_id"] == class_id)]
            flagged_normal += list(same[same["query_is_normal"]]["max_score"].to_numpy(float) > t)
            flagged_defective += list(same[~same["query_is_normal"]]["max_score"].to_numpy(float) > t)
        assert got["calibrated_false_alarm@fa5"] == pytest.approx(np.mean(flagged_normal))
        assert got["calibrated_false_alarm@fa5_n"] == len(flagged_normal)
        assert got["calibrated_image_recall@fa5"] == pytest.approx(np.mean(flagged_defective))
    # the numbers are not degenerate: the fixture makes good and defective scores overlap
    assert 0 < summary["image_recall@fa5"].max() < 1

    report = CliRunner().invoke(bench.cli, ["report", str(out), "--bootstrap", "20"])
    assert report.exit_code == 0, report.output
    html = (out / "report" / "report.html").read_text()
    verdict = html[html.index('class="verdict"'):html.index("</p>", html.index('class="verdict"'))]
    assert "at ≤ 5 % false alarms on good parts" in verdict and "defects under 0.3 % of the image" in verdict
    assert (out / "report" / "recall_vs_false_alarm.png").stat().st_size > 0
    assert (out / "report" / "operating_points.csv").is_file()
