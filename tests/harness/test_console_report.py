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


def _markdown_rows(text: str) -> pd.DataFrame:
    lines = [l for l in text.splitlines() if l.startswith("|")]
    cells = [[c.strip().replace("**", "") for c in l.strip("|").split("|")] for l in lines]
    return pd.DataFrame(cells[2:], columns=cells[0])


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

    shown = _markdown_rows(console).set_index("method")
    report = _html_summary(result.html_path.read_text()).set_index("method")
    shared = [c for c in shown.columns if c in report.columns]
    assert len(shared) == len(shown.columns)  # every console column is in the report
    for column in ["protocol", "mIoU % (@protocol)", "mIoU 95% CI", "pixel AUROC % (thr-free)",
                   "FP px rate % (@protocol)", "false-alarm rate % (@protocol)", "flags"]:
        assert column in shared
    assert sorted(shown.index) == sorted(report.index) == ["alpha", "beta", "gamma"]
    for method in shown.index:
        for column in shared:
            assert shown.at[method, column] == report.at[method, column], (method, column)
    # labels from the declared protocol, percent units, no zero-width "±"
    assert shown.at["alpha", "protocol"].startswith("deployable")
    assert shown.at["beta", "protocol"] == "fixed 0.50 (native)"
    assert "±" in shown.at["beta", "mIoU % (@protocol)"]
    fp = pd.read_csv(run / "summary.csv").set_index("method").at["beta", "fp_pixel_rate"]
    assert shown.at["beta", "FP px rate % (@protocol)"] == f"{100 * fp:.3f}"
    # the files are the same table
    pd.testing.assert_frame_equal(pd.read_csv(run / "summary.csv"), pd.read_csv(tmp_path / "report" / "summary.csv"))
    assert (run / "summary.md").read_text() == (tmp_path / "report" / "summary.md").read_text()
