"""The console summary after ``bench.py run``: pixel AUROC equals a hand count (and the report's),
the protocol column tells fixed from support-fitted thresholds, low AUROC gets a warning line,
one support draw says "1 draw" (never "± 0.0"), a CI from few episodes per class is flagged."""
from __future__ import annotations

import math
import os
from datetime import datetime, timezone

os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")

import pandas as pd
import pytest

from harness.report import summarise
from harness.report.load import MethodSource, RunInfo
from harness.run_record import RunRecord
from harness.report.tables import summary_table
from harness.schema import EPISODE_SCHEMA, HIST_BINS
from harness.store import RunStore
from harness.summary import auroc_warnings, console_frame, write_run_summary

H = W = 10  # 100 pixels per query


def _hist(counts: dict[int, int]) -> list[int]:
    hist = [0] * HIST_BINS
    for b, n in counts.items():
        hist[b] += n
    return hist


def _row(method: str, episode: str, pos: dict[int, int], neg: dict[int, int], *, threshold: float = 0.5,
         normal: bool = False, status: str = "ok", repeat: int = 0) -> dict:
    """One schema row whose histograms are ``pos`` / ``neg`` (bin -> pixels); counts at bin 32."""
    n_pos, n_neg = sum(pos.values()), sum(neg.values())
    assert n_pos + n_neg == H * W
    tp = sum(n for b, n in pos.items() if b >= 32)
    fp = sum(n for b, n in neg.items() if b >= 32)
    row = {f.name: None for f in EPISODE_SCHEMA}
    row.update(run_id="run", manifest_id="m1", episode_id=episode, method_config_hash="h", method_options="{}",
               dataset="toy", object="obj", category="scratch", class_id="obj/scratch", shots=1, seed=repeat,
               repeat=repeat, query_id=episode, support_ids=["s0"], query_is_normal=normal,
               support_is_normal=False, height=H, width=W, gt_area_px=n_pos, gt_area_frac=n_pos / (H * W),
               size_bin="normal" if normal else "", gt_components=int(n_pos > 0), gt_comp_areas=[n_pos] if n_pos else [],
               gt_comp_hit=[tp > 0] if n_pos else [], pred_area_px=tp + fp, pred_components=int(tp + fp > 0),
               fp_components=int(fp > 0), fp_comp_areas=[fp] if fp else [], threshold=threshold, tp=tp, fp=fp,
               fn=n_pos - tp, tn=n_neg - fp, iou_fg=None, image_positive=tp + fp > 0, max_score=0.9,
               score_hist_pos=_hist(pos), score_hist_neg=_hist(neg), status=status, latency_s=0.1, load_s=0.01,
               worker="w0", finished_at=datetime(2025, 1, 1, tzinfo=timezone.utc), method=method)
    return row


def make_rows() -> pd.DataFrame:
    """``good``: fixed 0.5, AUROC 75 % by hand; ``fitted``: thresholds 0.3 / 0.45, AUROC 50 %."""
    rows = [
        # defective: positives 3 @ bin 40 + 1 @ bin 10; negatives 94 @ bin 5 + 2 @ bin 40
        _row("good", "g0", {40: 3, 10: 1}, {5: 94, 40: 2}),
        # normal query: negatives only, 98 @ bin 5 + 2 @ bin 40
        _row("good", "g1", {}, {5: 98, 40: 2}, normal=True),
        # a failed row with another threshold enters neither the AUROC nor the label
        _row("good", "g2", {63: 50}, {0: 50}, threshold=0.9, status="error: RuntimeError: boom"),
        # defective: positives 4 @ bin 10; negatives 48 @ bin 5 + 48 @ bin 40
        _row("fitted", "f0", {10: 4}, {5: 48, 40: 48}, threshold=0.3),
        _row("fitted", "f1", {}, {5: 50, 40: 50}, threshold=0.45, normal=True),
    ]
    return pd.DataFrame(rows)


def _hand_auroc(pos: dict[int, int], neg: dict[int, int]) -> float:
    """P(score_pos > score_neg) + P(tie) / 2 over bins, pixels of one bin tied."""
    n_pos, n_neg = sum(pos.values()), sum(neg.values())
    wins = sum(p * (sum(n for c, n in neg.items() if c < b) + neg.get(b, 0) / 2) for b, p in pos.items())
    return wins / (n_pos * n_neg)


def _table(rows: pd.DataFrame, bootstrap: int = 50):
    run = RunInfo("run", None)
    sources = {m: MethodSource(m, run, m) for m in rows["method"].unique()}
    agg, intervals, paired, _ = summarise(rows, sources, bootstrap=bootstrap)
    return summary_table(agg, intervals, paired, bootstrap)


def test_pixel_auroc_matches_hand_count():
    numbers = _table(make_rows()).data.set_index("method")
    # good, pooled over its ok queries: pos 3 @ 40, 1 @ 10; neg 192 @ 5, 4 @ 40
    good = _hand_auroc({40: 3, 10: 1}, {5: 192, 40: 4})
    assert good == pytest.approx((3 * (192 + 4 / 2) + 1 * 192) / (4 * 196))
    assert numbers.loc["good", "pixel_auroc"] == pytest.approx(good)
    assert numbers.loc["fitted", "pixel_auroc"] == pytest.approx(0.5)
    display = _table(make_rows()).display.set_index("method")
    assert display.loc["good", "pixel AUROC % (thr-free)"] == f"{100 * good:.1f}"


def test_pixel_auroc_nan_without_positives_or_negatives():
    rows = make_rows()
    rows = rows[rows["query_is_normal"] | (rows["method"] != "good")]  # good keeps only its normal query
    numbers = _table(rows).data.set_index("method")
    assert math.isnan(numbers.loc["good", "pixel_auroc"])
    assert auroc_warnings(numbers.reset_index().query("method == 'good'")) == []


def test_protocol_label_fixed_vs_fitted():
    display = _table(make_rows()).display.set_index("method")
    assert display.loc["good", "protocol"] == "fixed 0.50 (native)"
    assert display.loc["fitted", "protocol"].startswith("deployable (fitted per episode, median 0.")


def test_declared_protocol_wins_over_inference():
    rows = make_rows()
    rows = rows[rows["method"] == "good"]
    run = RunInfo("run", None, RunRecord(methods={"good": {"threshold_protocol": "deployable"}}))
    agg, intervals, paired, _ = summarise(rows, {"good": MethodSource("good", run, "good")}, bootstrap=10)
    assert summary_table(agg, intervals, paired, 10).display["protocol"].iloc[0].startswith("deployable")


def test_warning_only_below_60_percent():
    lines = auroc_warnings(_table(make_rows()).data)
    assert lines == ["warning: fitted (1-shot) pixel AUROC 50.0 % < 60 %: its features carry (almost) no "
                     "defect signal on this data (chance = 50 %)"]
    flags = _table(make_rows()).display.set_index("method")["flags"]
    assert "near chance" in flags["fitted"] and "near chance" not in flags["good"]


def test_one_draw_says_so_and_few_episodes_are_flagged():
    table = _table(make_rows())
    display = table.display.set_index("method")
    # one repeat: no "± 0.0", the cell says "1 draw"
    assert "(1 draw)" in display.loc["good", "mIoU % (@protocol)"]
    assert "±" not in display.loc["good", "mIoU % (@protocol)"]
    # one defective episode in the class: the CI is marked and the flag names the count
    assert display.loc["good", "mIoU 95% CI"].endswith("‡")
    assert "CI from 1 episode(s) in a class (< 5)" in display.loc["good", "flags"]


def test_several_draws_and_enough_episodes_are_not_flagged():
    rows = [
        _row("many", f"e{r}-{k}", {40: 3, 10: 1}, {5: 94, 40: 2}, repeat=r) for r in (0, 1) for k in range(5)
    ]
    rows[0] = _row("many", "e0-0", {40: 4}, {5: 96}, repeat=0)  # repeats differ -> non-zero std
    display = _table(pd.DataFrame(rows)).display.iloc[0]
    assert display["mIoU % (@protocol)"].endswith(" (2 draws)") and "±" in display["mIoU % (@protocol)"]
    assert not display["mIoU 95% CI"].endswith("‡")
    assert display["flags"] == "–"


def test_run_summary_files_and_console_columns(tmp_path):
    rows = make_rows()
    store = RunStore(tmp_path / "run")
    for method, group in rows.groupby("method"):
        store.write_part(method, 0, group.drop(columns="method").to_dict("records"))
    text, warnings = write_run_summary(tmp_path / "run", bootstrap=20)
    header = text.splitlines()[0].split()
    assert header[:5] == ["method", "shots", "mIoU", "pxAUROC", "imgAUROC"] and "rec@fa5" in header
    assert max(len(line) for line in text.splitlines()) <= 120  # fits a 120-column terminal
    assert warnings and "fitted" in warnings[0]
    csv = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert {"miou_mean", "ci_low", "pixel_auroc", "fp_pixel_rate"} <= set(csv.columns)
    markdown = (tmp_path / "run" / "summary.md").read_text()
    assert "FB-IoU % (@protocol)" in markdown  # summary.md has every column, the console a subset
    assert "FB-IoU % (@protocol)" not in text
