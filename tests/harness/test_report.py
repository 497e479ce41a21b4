"""The report stage: numbers equal a plain-numpy recomputation from the stored rows; files and
HTML sections exist; bootstrap is deterministic; paired differences have the right sign."""
from __future__ import annotations

import os
import re
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.records import ImageRecord
from harness.report import SECTIONS, build_report
from harness.report.aggregate import aggregate
from harness.report.confidence import bootstrap_miou, paired_difference
from benchmarks.report_rows import benchmark_aggregation, make_synthetic_rows
from harness.schema import EPISODE_SCHEMA, HIST_BINS
from harness.run_record import RunRecord
from harness.store import RunStore

H = W = 100
CLASSES = ["obj/scratch", "obj/dent"]
GT_AREAS = [5, 20, 60, 150, 400, 800]  # 0.05 %, 0.2 %, 0.6 %, 1.5 %, 4 %, 8 %: one per size bin+
# Score bins of the pixels (threshold 0.5): TP 0.75, FN 0.25, FP 0.625, TN ~0.08.
BIN_TP, BIN_FN, BIN_FP, BIN_TN = 48, 16, 40, 5
RECALL = {"alpha": 0.8, "beta": 0.4, "gamma": 0.8}  # gamma: alpha's twin (paired n.s. case)


def _row(**values) -> dict:
    row = {f.name: None for f in EPISODE_SCHEMA}
    row.update(run_id="run", manifest_id="m1", method_config_hash="h", method_options="{}",
               dataset="toy", support_ids=["s0"], support_is_normal=False, shots=1,
               height=H, width=W, threshold=0.5, status="ok", latency_s=0.1, load_s=0.01,
               worker="w0", finished_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
               gt_comp_areas=[], gt_comp_hit=[], fp_comp_areas=[], max_score=0.9,
               pred_components=0, fp_components=0, gt_components=0)
    row.update(values)
    return row


def _hist(counts: dict[int, int]) -> list[int]:
    hist = [0] * HIST_BINS
    for b, n in counts.items():
        hist[b] += int(n)
    return hist


def make_rows(method: str, rng: np.random.Generator) -> list[dict]:
    """Two repeats x two classes x six defective queries + two normal queries per repeat."""
    rows = []
    for repeat in (0, 1):
        for c, class_id in enumerate(CLASSES):
            for k, gt in enumerate(GT_AREAS):
                tp = int(round(RECALL[method] * gt)) - int(rng.integers(0, 2))
                fp = int(rng.integers(0, 8)) if method != "beta" else int(rng.integers(5, 30))
                fn, tn = gt - tp, H * W - gt - fp
                comps = [gt] if k % 2 == 0 else [gt // 2, gt - gt // 2]
                hits = [tp > 0] if k % 2 == 0 else [tp > 0, bool(k % 3)]
                obj, cat = class_id.split("/")
                rows.append(_row(
                    episode_id=f"e{repeat}-{c}-{k}", object=obj, category=cat, class_id=class_id,
                    seed=repeat, repeat=repeat, query_id=f"q{c}-{k}", query_is_normal=False,
                    gt_area_px=gt, gt_area_frac=gt / (H * W), size_bin="", gt_components=len(comps),
                    gt_comp_areas=comps, gt_comp_hit=hits, pred_area_px=tp + fp, tp=tp, fp=fp, fn=fn,
                    tn=tn, iou_fg=tp / (tp + fp + fn), image_positive=tp + fp > 0,
                    fp_components=int(fp > 0), score_hist_pos=_hist({BIN_TP: tp, BIN_FN: fn}),
                    score_hist_neg=_hist({BIN_FP: fp, BIN_TN: tn})))
        for k in range(2):
            fp = int(rng.integers(0, 3)) * (k + (method == "beta"))
            rows.append(_row(
                episode_id=f"n{repeat}-{k}", object="obj", category="scratch", class_id=CLASSES[0],
                seed=repeat, repeat=repeat, query_id=f"good{k}", query_is_normal=True, gt_area_px=0,
                gt_area_frac=0.0, size_bin="normal", pred_area_px=fp, tp=0, fp=fp, fn=0,
                tn=H * W - fp, image_positive=fp > 0, fp_components=int(fp > 0),
                score_hist_pos=_hist({}), score_hist_neg=_hist({BIN_FP: fp, BIN_TN: H * W - fp})))
    if method == "beta":
        rows.append(_row(episode_id="e9-0-0", object="obj", category="scratch", class_id=CLASSES[0],
                         seed=0, repeat=0, query_id="q0-0", query_is_normal=False,
                         gt_area_frac=0.01, status="error: RuntimeError: boom",
                         score_hist_pos=_hist({}), score_hist_neg=_hist({})))
    return rows


def write_run(run_dir: Path, methods=("alpha", "beta", "gamma"), seed: int = 0) -> dict[str, list[dict]]:
    store = RunStore(run_dir)
    rng = np.random.default_rng(seed)
    written = {}
    for method in methods:
        rows = make_rows(method, rng) if method != "gamma" else [dict(r) for r in written["alpha"]]
        store.write_part(method, 0, rows)
        written[method] = rows
    store.write_record(RunRecord(run_id=run_dir.name, command="bench.py run toy", manifest_id="m1",
                                 methods={m: {"config_hash": "h"} for m in methods}, elapsed_s=3.0))
    return written


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rows = write_run(root / "run_a")
    result = build_report([root / "run_a"], root / "out", per_class=True, bootstrap=300, seed=7)
    return rows, result, root


# ------------------------------------------------------------------ independent recomputation


def _ok(rows):
    return [r for r in rows if r["status"] == "ok"]


def expected_miou(rows) -> tuple[float, float]:
    per_repeat = []
    for repeat in (0, 1):
        ious = []
        for class_id in CLASSES:
            sel = [r for r in _ok(rows) if r["repeat"] == repeat and r["class_id"] == class_id
                   and not r["query_is_normal"]]
            tp = sum(r["tp"] for r in sel)
            ious.append(tp / (tp + sum(r["fp"] for r in sel) + sum(r["fn"] for r in sel)))
        per_repeat.append(np.mean(ious))
    return float(np.mean(per_repeat)), float(np.std(per_repeat))


def expected_fb_iou(rows) -> float:
    sel = [r for r in _ok(rows) if not r["query_is_normal"]]
    tp, fp, fn, tn = (sum(r[k] for r in sel) for k in ("tp", "fp", "fn", "tn"))
    return (tp / (tp + fp + fn) + tn / (tn + fp + fn)) / 2


def expected_false_alarms(rows) -> tuple[float, float, float]:
    sel = [r for r in _ok(rows) if r["query_is_normal"]]
    fp, tn = sum(r["fp"] for r in sel), sum(r["tn"] for r in sel)
    return (np.mean([r["fp"] > 0 for r in sel]), fp / (fp + tn), np.mean([r["fp_components"] for r in sel]))


def expected_auroc(rows) -> float:
    pos = np.sum([r["score_hist_pos"] for r in _ok(rows)], axis=0)
    neg = np.sum([r["score_hist_neg"] for r in _ok(rows)], axis=0)
    wins = sum(pos[i] * neg[j] * (1.0 if i > j else 0.5 if i == j else 0.0)
               for i in range(HIST_BINS) for j in range(HIST_BINS))
    return wins / (pos.sum() * neg.sum())


def expected_oracle_miou(rows) -> float:
    best = []
    for class_id in CLASSES:
        sel = [r for r in _ok(rows) if r["class_id"] == class_id and not r["query_is_normal"]]
        pos = np.sum([r["score_hist_pos"] for r in sel], axis=0)
        neg = np.sum([r["score_hist_neg"] for r in sel], axis=0)
        best.append(max(pos[i:].sum() / (neg[i:].sum() + pos.sum()) for i in range(HIST_BINS + 1)))
    return float(np.mean(best))


def expected_size_miou(rows, lo: float, hi: float) -> float:
    ious = []
    for class_id in CLASSES:
        sel = [r for r in _ok(rows) if r["class_id"] == class_id and not r["query_is_normal"]
               and lo <= r["gt_area_frac"] < hi]
        if sel:
            tp = sum(r["tp"] for r in sel)
            ious.append(tp / (tp + sum(r["fp"] + r["fn"] for r in sel)))
    return float(np.mean(ious))


def test_summary_numbers_equal_independent_recomputation(toy_report):
    rows, result, root = toy_report
    summary = pd.read_csv(root / "out" / "summary.csv").set_index("method")
    for method in ("alpha", "beta"):
        mean, std = expected_miou(rows[method])
        far, fp_rate, blobs = expected_false_alarms(rows[method])
        got = summary.loc[method]
        assert got["miou_mean"] == pytest.approx(mean, abs=1e-12)
        assert got["miou_std"] == pytest.approx(std, abs=1e-12)
        assert got["fb_iou"] == pytest.approx(expected_fb_iou(rows[method]), abs=1e-12)
        assert got["false_alarm_rate"] == pytest.approx(far)
        assert got["fp_pixel_rate"] == pytest.approx(fp_rate)
        assert got["fp_blobs_per_image"] == pytest.approx(blobs)
        assert got["pixel_auroc"] == pytest.approx(expected_auroc(rows[method]), abs=1e-12)
        assert got["oracle_miou"] == pytest.approx(expected_oracle_miou(rows[method]), abs=1e-12)
        assert got["oracle_miou"] >= got["miou_mean"] - 1e-9
        assert got["episodes_per_s"] == pytest.approx(10.0)
        assert got["threshold_protocol"] == "native"
    assert summary.loc["beta", "n_failed"] == 1 and summary.loc["alpha", "n_failed"] == 0
    assert summary.loc["alpha", "n_normal"] == 4 and summary.loc["alpha", "n_defective"] == 24


def test_size_and_component_tables_equal_recomputation(toy_report):
    rows, result, root = toy_report
    size = pd.read_csv(root / "out" / "size_miou.csv")
    alpha = size[size["method"] == "alpha"].set_index("size_bin")
    edges = [0, 0.001, 0.003, 0.01, 0.05, np.inf]
    labels = ["<0.1%", "0.1-0.3%", "0.3-1%", "1-5%", ">=5%"]
    for label, lo, hi in zip(labels, edges[:-1], edges[1:]):
        assert alpha.loc[label, "miou"] == pytest.approx(expected_size_miou(rows["alpha"], lo, hi))
    assert alpha.loc["1-5%", "n_episodes"] == 8  # 1.5 % and 4 % x 2 classes x 2 repeats

    recall = pd.read_csv(root / "out" / "component_recall.csv")
    beta = recall[recall["method"] == "beta"].set_index("component_bin")
    edges_px = [0, 64, 256, 1024, 9216, np.inf]
    comps = [(a, h) for r in _ok(rows["beta"]) for a, h in zip(r["gt_comp_areas"], r["gt_comp_hit"])]
    for label, lo, hi in zip(["<8²", "8²-16²", "16²-32²"], edges_px, edges_px[1:]):
        inside = [h for a, h in comps if lo <= a < hi]
        assert beta.loc[label, "n_components"] == len(inside)
        assert beta.loc[label, "recall"] == pytest.approx(np.mean(inside))


def test_custom_size_edges_rebin_from_gt_area_frac(toy_report):
    rows, _, root = toy_report
    result = build_report([root / "run_a"], root / "out_edges", size_edges=(0.01,), bootstrap=0,
                          formats=("csv",))
    size = result.tables["size_miou"].data
    alpha = size[size["method"] == "alpha"].set_index("size_bin")
    assert list(alpha.index.astype(str)) == ["<1%", ">=1%"]
    assert alpha.loc["<1%", "miou"] == pytest.approx(expected_size_miou(rows["alpha"], 0, 0.01))


def test_files_written_and_labelled(toy_report):
    _, result, root = toy_report
    out = root / "out"
    for name in ("summary", "size_miou", "component_recall", "paired_differences", "per_class"):
        for fmt in ("md", "csv", "tex"):
            assert (out / f"{name}.{fmt}").stat().st_size > 0, f"{name}.{fmt}"
    markdown = (out / "summary.md").read_text()
    for protocol in ("fixed 0.50 (native)", "(oracle)", "(thr-free)", "(@protocol)"):
        assert protocol in markdown
    latex = (out / "summary.tex").read_text()
    assert r"\begin{tabular}" in latex and r"\textbf{" in latex and "%" not in latex.replace(r"\%", "")
    assert "obj/dent" in (out / "per_class.md").read_text()


def test_html_is_self_contained_with_every_section(toy_report):
    _, result, _ = toy_report
    page = result.html_path.read_text()
    for title in SECTIONS.values():
        assert f">{title}</h2>" in page
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', page)) >= 4
    assert "<script" not in page and 'src="http' not in page and "<link" not in page
    assert "run.json has no dataset root" in page  # overlays degrade with a note


def test_bootstrap_deterministic_and_contains_point(toy_report):
    rows, _, _ = toy_report
    frame = pd.DataFrame([r for r in _ok(rows["beta"]) if not r["query_is_normal"]])
    first = bootstrap_miou(frame, n_resamples=500, seed=3)
    again = bootstrap_miou(frame, n_resamples=500, seed=3)
    other = bootstrap_miou(frame, n_resamples=500, seed=4)
    assert first == again and first["ci_low"] != other["ci_low"]
    assert first["ci_low"] <= first["miou"] <= first["ci_high"]
    assert first["miou"] == pytest.approx(expected_miou(rows["beta"])[0])


def test_paired_difference_sign_and_not_significant_twin(toy_report):
    rows, result, root = toy_report
    frames = {m: pd.DataFrame([r for r in _ok(rows[m]) if not r["query_is_normal"]]) for m in rows}
    better = paired_difference(frames["alpha"], frames["beta"], n_resamples=500, seed=0)
    assert better["diff"] > 0.2 and better["ci_low"] > 0 and better["p_a_better"] == 1.0
    assert better["significant"] and better["n_paired"] == 24
    worse = paired_difference(frames["beta"], frames["alpha"], n_resamples=500, seed=0)
    assert worse["diff"] == pytest.approx(-better["diff"]) and worse["p_a_better"] == 0.0
    twin = paired_difference(frames["alpha"], frames["gamma"], n_resamples=500, seed=0)
    assert twin["diff"] == 0 and not twin["significant"]
    table = pd.read_csv(root / "out" / "paired_differences.csv")
    md = (root / "out" / "paired_differences.md").read_text()
    assert "| alpha | gamma |" in md and "n.s." in md
    row = table[(table["method_a"] == "alpha") & (table["method_b"] == "beta")].iloc[0]
    assert row["diff"] > 0 and bool(row["significant"])
    assert "†" in (root / "out" / "summary.md").read_text()  # best (alpha/gamma tie) is n.s.


def test_multi_run_labels(tmp_path):
    write_run(tmp_path / "run_a", methods=("alpha", "beta"), seed=0)
    write_run(tmp_path / "run_b", methods=("alpha",), seed=1)
    result = build_report([tmp_path / "run_a", tmp_path / "run_b"], tmp_path / "out", bootstrap=50)
    methods = set(pd.read_csv(tmp_path / "out" / "summary.csv")["method"])
    assert methods == {"run_a:alpha", "run_b:alpha", "beta"}
    paired = result.tables["paired_differences"].data
    assert {"run_a:alpha", "run_b:alpha"} <= set(paired["method_a"]) | set(paired["method_b"])
    assert "run_b:alpha" in result.html_path.read_text()


def test_overlays_with_images_and_predictions(tmp_path, monkeypatch):
    rows = write_run(tmp_path / "run", methods=("alpha", "beta"))
    records = []
    for query_id in sorted({r["query_id"] for rs in rows.values() for r in rs}):
        image, mask = tmp_path / f"{query_id}.png", tmp_path / f"{query_id}_mask.png"
        Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(image)
        gt = np.zeros((H, W), np.uint8)
        gt[40:50, 40:50] = 255
        Image.fromarray(gt).save(mask)
        records.append(ImageRecord(query_id, str(image), str(mask), "scratch", "obj", "test", W, H))
    store = RunStore(tmp_path / "run")
    for method in rows:
        for r in rows[method]:
            score = np.zeros((H, W), np.uint8)
            score[42:52, 42:52] = 230
            store.write_prediction(method, r["episode_id"], score)
    store.write_record(replace(store.read_record(), dataset={"spec": str(tmp_path), "root": str(tmp_path),
                                                             "format": "folder"}))
    from datasets import base

    monkeypatch.setattr(base, "load_dataset", lambda spec, fmt="auto": base.Dataset(
        "toy", tmp_path, "folder", tuple(records)))
    from harness.report import plots

    swept = {}
    real_sweep = plots.threshold_sweep

    def threshold_sweep(agg, path, prediction_sweeps=None):
        swept.update(prediction_sweeps or {})
        return real_sweep(agg, path, prediction_sweeps)

    monkeypatch.setattr(plots, "threshold_sweep", threshold_sweep)
    result = build_report([tmp_path / "run"], tmp_path / "out", bootstrap=0)
    page = result.html_path.read_text()
    assert "alpha: best episode" in page and "alpha: worst episode" in page
    assert "IoU spread" in page  # largest disagreements rendered
    assert "has no dataset root" not in page and "No stored predictions" not in page
    # The sweep plot has a curve from the stored maps and GT masks of every method's defective episodes.
    assert result.plots["threshold_sweep"].exists()
    assert {group[0] for group in swept} == set(rows), swept
    defective = {m: sum(not r["query_is_normal"] and r["status"] == "ok" for r in rs) for m, rs in rows.items()}
    assert {group[0]: n for group, (_, _, n) in swept.items()} == defective


def test_synthetic_rows_aggregate_fast():
    rows = make_synthetic_rows(20_000, seed=1)
    assert len(rows) == 20_000 and set(rows["method"]) == {"sofs", "panet", "seggpt", "patchcore"}
    agg = aggregate(rows)
    assert len(agg.summary) == 8 and agg.summary["miou_mean"].between(0, 1).all()
    assert set(agg.summary.loc[agg.summary["method"] == "patchcore", "threshold_protocol"]) == {"deployable"}


@pytest.mark.slow
def test_one_million_rows_aggregate_in_seconds():
    seconds = benchmark_aggregation(1_000_000)
    print(f"aggregate over 1M rows: {seconds:.1f} s")
    assert seconds < 60  # ~3-9 s measured on 2 shared CPUs


def test_examples_never_repeat_an_episode_and_crop_small_gt(tmp_path, monkeypatch):
    from harness.report import overlays

    rows = write_run(tmp_path / "run", methods=("alpha", "beta"))
    frame = pd.DataFrame([r for rs in rows.values() for r in _ok(rs) if not r["query_is_normal"]])
    frame["method"] = [m for m, rs in rows.items() for r in _ok(rs) if not r["query_is_normal"]]
    picks = overlays.pick_examples(frame)
    episodes = [e for _, _, e in picks]
    assert len(episodes) == len(set(episodes)) == 6
    spread = overlays.largest_disagreements(frame, 50, exclude=set(episodes))
    assert not set(spread["episode_id"]) & set(episodes)
    # a 3x3 px defect in a 1000x800 image gets its own native-resolution crop around it
    gt = np.zeros((800, 1000), bool)
    gt[400:403, 700:703] = True
    boxes = overlays._boxes(gt)
    assert boxes == [(9, 400, 700, 403, 703)]
    rows_slice, cols_slice = overlays._crop_window(boxes[0][1:], gt.shape)
    assert rows_slice.stop - rows_slice.start == overlays.CROP_MIN_SIDE
    assert gt[rows_slice, cols_slice].sum() == 9


def test_html_layout_verdict_contents_and_provenance_last(toy_report):
    _, result, _ = toy_report
    page = result.html_path.read_text()
    order = ["<h1>", 'class="verdict"', 'class="toc"', 'id="summary"', 'id="size"', 'id="false_alarms"',
             'id="per_class"', 'id="plots"', 'id="qualitative"', 'id="provenance"']
    positions = [page.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert page.index("<details>") > page.index('id="provenance"') and '"run_id"' not in page[:positions[-1]]
    verdict = page[positions[1]:page.index("</p>", positions[1])]
    assert "1-shot: best is" in verdict and "95% CI" in verdict and "significantly better" in verdict
    for key in SECTIONS:
        assert f'href="#{key}"' in page


def test_normal_approximation_of_large_strata_matches_exact_bootstrap(monkeypatch):
    from harness.report import confidence

    rng = np.random.default_rng(0)
    n = 1500  # one (repeat, class) stratum above NORMAL_APPROX_ABOVE
    gt = rng.integers(5, 400, n)
    tp = rng.binomial(gt, 0.5)
    frame = pd.DataFrame({"repeat": 0, "class_id": "c", "tp": tp, "fp": rng.integers(0, 80, n), "fn": gt - tp})
    approx = bootstrap_miou(frame, n_resamples=2000, seed=1)
    monkeypatch.setattr(confidence, "NORMAL_APPROX_ABOVE", 10 ** 9)
    exact = bootstrap_miou(frame, n_resamples=2000, seed=1)
    assert approx["miou"] == exact["miou"]
    width = exact["ci_high"] - exact["ci_low"]
    assert width > 0
    assert abs(approx["ci_low"] - exact["ci_low"]) < 0.1 * width
    assert abs(approx["ci_high"] - exact["ci_high"]) < 0.1 * width


def test_a_run_whose_lists_cannot_be_streamed_is_reported_with_streamed_ones_unchanged(tmp_path, monkeypatch):
    """One run falls back to in-memory lists (e.g. lists not 64 long): the others join it, and
    every pooled number equals the all-streamed report's."""
    from harness.report import load
    from benchmarks.report_rows import write_synthetic_run
    from harness.store import read_run

    def summary(run_dirs):
        rows, _, _ = load.load_runs(run_dirs)
        table = aggregate(rows).summary.set_index(["method", "shots"]).sort_index()
        return table[["pixel_auroc", "pixel_ap", "aupro", "oracle_miou", "miou_mean"]]

    first = write_synthetic_run(tmp_path / "a", 2000, seed=0)
    second = write_synthetic_run(tmp_path / "b", 2000, seed=1)
    streamed = summary([first, second])
    original = load.read_report_rows
    monkeypatch.setattr(load, "read_report_rows", lambda run_dir: (read_run(run_dir, columns=load.REPORT_COLUMNS), None)
                        if run_dir == second else original(run_dir))
    pd.testing.assert_frame_equal(summary([first, second]), streamed)
