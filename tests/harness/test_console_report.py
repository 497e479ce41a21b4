"""The console table after a run and the report agree on every shared number, unit and label:
both are read back from what a person sees (the printed Markdown, the report's HTML table) and
from the files (``summary.csv`` in the run folder and in the report folder)."""
from __future__ import annotations

import html
import json
import os
import re

os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")

import pandas as pd

from harness.report import build_report
from harness.summary import write_run_summary
from tests.harness.test_report import write_run


def _console_rows(text: str) -> pd.DataFrame:
    """The compact console table ("simple" format: header, dashes, rows; legend lines after)."""
    lines = text.splitlines()
    widths = [len(dashes) for dashes in lines[1].split("  ") if dashes]
    starts = [0]
    for width in widths[:-1]:
        starts.append(starts[-1] + width + 2)
    cut = lambda line: [line[a:a + w].strip() for a, w in zip(starts, widths)]  # noqa: E731
    rows = [cut(line) for line in lines[2:] if line.strip() and not line.startswith(("All in %", "flags:", "("))]
    rows = [r for r in rows if r[0] in ("alpha", "beta", "gamma")]
    return pd.DataFrame(rows, columns=cut(lines[0]))


def _html_summary(page: str) -> pd.DataFrame:
    section = page.split('<h2 id="summary">', 1)[1].split("</table>", 1)[0]
    head = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", section)]
    rows = [[html.unescape(re.sub(r"</?b>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)]
            for r in re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>", 1)[1])]
    return pd.DataFrame(rows, columns=head)


def test_console_and_report_agree(tmp_path):
    run = tmp_path / "run"
    write_run(run)
    record = json.loads((run / "run.json").read_text())
    record["methods"]["alpha"]["threshold_protocol"] = "deployable"  # declared by the method class
    (run / "run.json").write_text(json.dumps(record))
    console, _ = write_run_summary(run, bootstrap=200, seed=0)
    result = build_report([run], tmp_path / "report", bootstrap=200, seed=0)

    shown = _console_rows(console).set_index("method")
    report = _html_summary(result.html_path.read_text()).set_index("method")
    data = pd.read_csv(run / "summary.csv").set_index("method")
    assert sorted(shown.index) == sorted(report.index) == ["alpha", "beta", "gamma"]
    pct = lambda x: "–" if pd.isna(x) else f"{100 * x:.1f}"  # noqa: E731
    # every console cell is the report's cell of the same number (compact header)
    same = {"pxAUROC": ("pixel AUROC % (thr-free)", "pixel_auroc"),
            "imgAUROC": ("image AUROC % (thr-free)", "image_auroc")}
    for method in shown.index:
        assert shown.at[method, "mIoU"] == pct(data.at[method, "miou_mean"])
        assert report.at[method, "mIoU % (@protocol)"].startswith(shown.at[method, "mIoU"])
        for short, (header, column) in same.items():
            assert shown.at[method, short] == report.at[method, header] == pct(data.at[method, column])
        for budget in (1, 5):
            assert shown.at[method, f"rec@fa{budget}"] == pct(data.at[method, f"image_recall@fa{budget}"])
            assert report.at[method, f"image recall % @≤{budget}% FA (test good)"].startswith(
                shown.at[method, f"rec@fa{budget}"])
        codes = shown.at[method, "flags"]
        assert (codes == "–") == (report.at[method, "flags"] == "–")
    # labels from the declared protocol, percent units, no zero-width "±"
    assert report.at["alpha", "protocol"].startswith("deployable")
    assert report.at["beta", "protocol"] == "fixed 0.50 (native)"
    assert "±" in report.at["beta", "mIoU % (@protocol)"]
    fp = data.at["beta", "fp_pixel_rate"]
    assert report.at["beta", "FP px rate % (@protocol)"] == f"{100 * fp:.3f}"
    # the files are the same table
    pd.testing.assert_frame_equal(pd.read_csv(run / "summary.csv"), pd.read_csv(tmp_path / "report" / "summary.csv"))
    assert (run / "summary.md").read_text() == (tmp_path / "report" / "summary.md").read_text()
