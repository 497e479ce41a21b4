"""One self-contained ``report.html``: inline CSS, PNGs as base64 data URIs, no scripts."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from harness.report.load import RunInfo
from harness.run_record import RunRecord
from harness.report.tables import Table

# In page order: verdict and contents first, provenance last (collapsed).
SECTIONS = {
    "summary": "Summary",
    "operating": "Operating points: recall at a false-alarm budget",
    "operating_size": "Recall at a false-alarm budget, by defect size",
    "definitions": "Definitions: thresholds and the three oracle figures",
    "paired": "Paired differences",
    "size": "Size-stratified mIoU",
    "components": "Component recall",
    "false_alarms": "False alarms",
    "per_class": "Per-class figures",
    "plots": "Plots",
    "qualitative": "Qualitative examples",
    "disagreements": "Largest disagreements",
    "provenance": "Run provenance",
}
TABLE_SECTIONS = ("summary", "operating", "operating_size", "paired", "size", "components", "false_alarms",
                  "per_class")

DEFINITIONS = [
    ("threshold-free operating point (test good parts)",
     "t_B = np.quantile(max scores of the normal test queries, 1 − B/100, method='higher'): at most B % of "
     "those good parts score above it. Fitted on the good parts it is judged on, so optimistic, but every "
     "method is read at the same false-alarm rate: this is what ranks methods."),
    ("calibrated (deployable) threshold",
     "The same quantile over held-out good parts only (--calibration-normals per object, never queries or "
     "supports), one threshold per class support draw, applied to the test queries. Its false-alarm rate on "
     "the test good parts (Wilson 95 % interval) is what an engineer would see on the line."),
    ("stored threshold (@protocol)",
     "The method's own threshold (fixed, e.g. 0.5) or one it fits on the supports per episode; mIoU, "
     "component recall 'touch'/'≥50%' and the false-alarm table use it."),
    ("oracle mIoU",
     "Per class, the threshold that maximises that class's pooled IoU (chosen on the test labels), then the "
     "mean over classes: the best mIoU any per-class threshold could give. Same pooling as mIoU."),
    ("pixel F1-max (oracle)",
     "One global threshold that maximises pixel F1 over the pooled pixels of all queries: a pixel-level "
     "figure, weighted by defect area, not by class."),
    ("threshold sweep peak (oracle)",
     "One global threshold that maximises IoU over the pooled pixels of all classes' defective queries: "
     "large defects dominate it, so it is lower than mIoU and can name another winner. The three oracle "
     "figures answer three different questions; none is a deployable number, and the verdict uses none."),
]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1400px;color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.caption,.note{font-size:.85em;color:#555;max-width:1100px}.note{color:#8a4b00}
img{max-width:100%;border:1px solid #eee;margin:.3em 0}
.scroll{overflow-x:auto}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}
dt{font-weight:600}dd{margin:0;font-family:monospace;font-size:.85em;word-break:break-all}
dl.defs dd{font-family:inherit;word-break:normal;max-width:900px}
.verdict{background:#f4f8ff;border-left:4px solid #3b6fd8;padding:.6em 1em;max-width:1100px}
nav.toc ol{columns:2;max-width:700px;font-size:.95em}details{margin:.5em 0}
summary{cursor:pointer;color:#3b6fd8}figure{margin:1em 0}
td.flags{text-align:left;color:#8a4b00}td{white-space:nowrap}th{white-space:normal;min-width:4em}
"""


def png_data_uri(path_or_b64) -> str:
    data = (base64.b64encode(Path(path_or_b64).read_bytes()).decode("ascii")
            if isinstance(path_or_b64, Path) else path_or_b64)
    return f"data:image/png;base64,{data}"


def table_html(table: Table) -> str:
    columns = list(table.display.columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for i in range(len(table.display)):
        cells = []
        for column in columns:
            text = html.escape(str(table.display.iloc[i][column]))
            if (int(table.display.index[i]), column) in table.bold:
                text = f"<b>{text}</b>"
            cells.append(f'<td class="flags">{text}</td>' if column == "flags" else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<h3>{html.escape(table.title)}</h3><div class="scroll"><table><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>'
            f'<p class="caption">{html.escape(table.caption)}</p>')


def _provenance_html(run: RunInfo) -> str:
    r = run.record or RunRecord()
    elapsed = r.elapsed_s
    rate = (f"{run.n_rows / elapsed:.2f} episode rows/s over {elapsed:.1f} s (all methods)"
            if isinstance(elapsed, (int, float)) and elapsed > 0 else None)
    fields = {"run folder": str(run.run_dir), "run_id": r.run_id, "command": r.command,
              "dataset": r.dataset, "manifest_id": r.manifest_id,
              "manifest_params": r.manifest_params, "eval_settings": r.eval_settings,
              "methods": r.methods, "counts": r.counts,
              "started_at": r.started_at or r.extra.get("start"),
              "ended_at": r.ended_at or r.extra.get("end"), "throughput": rate, "git": r.git,
              "executor": r.executor, "hardware": r.hardware,
              "episode rows read": run.n_rows}
    items = []
    for name, value in fields.items():
        if value is None or value == {}:  # a field the run.json lacks
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        if len(text) > 600:
            text = text[:600] + " …"
        items.append(f"<dt>{html.escape(name)}</dt><dd>{html.escape(text)}</dd>")
    if run.record is None:
        items.append("<dt>run.json</dt><dd>missing</dd>")
    return f"<h3>{html.escape(run.label)}</h3><dl>{''.join(items)}</dl>"


def _notes(notes: list[str]) -> str:
    return "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)


def render_report(path: Path, *, runs: list[RunInfo], tables: dict[str, Table],
                  plots: dict[str, tuple[str, Path]], qualitative: list[tuple[str, str]],
                  disagreements: list[tuple[str, str]], notes: dict[str, list[str]],
                  verdict: list[str] | None = None) -> Path:
    """Write the HTML report.

    ``tables``: section key -> Table; ``plots``: name -> (caption, PNG path);
    ``qualitative`` / ``disagreements``: (caption, base64 PNG); ``notes``: section key -> lines.
    """
    title = ", ".join(r.label for r in runs)
    parts = [f"<h1>sofs-bench report: {html.escape(title)}</h1>"]
    if verdict:
        parts.append('<p class="verdict"><b>Verdict.</b> ' + " ".join(html.escape(v) for v in verdict) + "</p>")
    parts.append('<p class="caption">Threshold protocols: <b>fixed</b> (native) = the method\'s own fixed '
                 "threshold; <b>deployable</b> = a threshold fitted on support / normal data only, per "
                 "episode; <b>oracle</b> = chosen on the test labels (an upper bound, never a deployable "
                 "number); <b>thr-free</b> = no threshold. mIoU is foreground-only, class-wise pooled, "
                 "averaged over (object, category) classes. All rates are in %.</p>")
    parts.append('<nav class="toc"><b>Contents</b><ol>' + "".join(
        f'<li><a href="#{key}">{html.escape(name)}</a></li>' for key, name in SECTIONS.items()) + "</ol></nav>")
    for key in TABLE_SECTIONS:
        if key == "paired":  # after the decision tables, before the detail: what the words mean
            parts.append(f'<h2 id="definitions">{SECTIONS["definitions"]}</h2><dl class="defs">'
                         + "".join(f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>"
                                   for term, text in DEFINITIONS) + "</dl>")
        parts.append(f'<h2 id="{key}">{SECTIONS[key]}</h2>')
        parts.append(_notes(notes.get(key, [])))
        if key in tables:
            parts.append(table_html(tables[key]))
    parts.append(f'<h2 id="plots">{SECTIONS["plots"]}</h2>')
    parts.append(_notes(notes.get("plots", [])))
    for name, (caption, png) in plots.items():
        parts.append(f'<figure><img alt="{html.escape(name)}" src="{png_data_uri(png)}">'
                     f'<figcaption class="caption">{html.escape(caption)}</figcaption></figure>')
    for key, figures in (("qualitative", qualitative), ("disagreements", disagreements)):
        parts.append(f'<h2 id="{key}">{SECTIONS[key]}</h2>')
        parts.append(_notes(notes.get(key, [])))
        for caption, b64 in figures:
            parts.append(f'<figure><img alt="{html.escape(caption)}" src="{png_data_uri(b64)}">'
                         f'<figcaption class="caption">{html.escape(caption)}</figcaption></figure>')
    parts.append(f'<h2 id="provenance">{SECTIONS["provenance"]}</h2>')
    parts.append("<details><summary>run.json of each run: command, dataset, manifest, methods, code "
                 "version, hardware (click to open)</summary>"
                 + "".join(_provenance_html(run) for run in runs) + "</details>")
    document = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>sofs-bench report</title><style>{_CSS}</style></head><body>"
                + "\n".join(parts) + "</body></html>")
    path.write_text(document, encoding="utf-8")
    return path
