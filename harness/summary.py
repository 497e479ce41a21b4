"""The comparison table printed after ``bench.py run``, and its ``summary.md`` / ``summary.csv``.

There is one aggregation path: this module reads the run like the report does
(``harness.report.load.load_runs``), computes the numbers with ``harness.report.summarise`` (the
report's tested aggregates and bootstrap, same seed and resamples) and formats them with
``harness.report.tables.summary_table``. So the console, ``<run>/summary.md|csv`` and the report's
summary agree on every number, unit (all rates in %, FP pixel rate included) and protocol label
("fixed 0.50 (native)" / "deployable (fitted per episode, median t)").

The console prints ``tables.CONSOLE_COLUMNS`` of that table; ``summary.md`` holds every column,
``summary.csv`` the raw numbers (fractions), exactly as the report's files of the same name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.report.tables import AUROC_CHANCE_BELOW, CONSOLE_COLUMNS, Table

AUROC_WARNING_BELOW = AUROC_CHANCE_BELOW  # pixel AUROC under this gets a warning line


def run_summary(run_dirs: Sequence[Path], *, bootstrap: int = 1000, seed: int = 0) -> Table:
    """The summary table of one or several runs (run name prefixed to a method found in several)."""
    from harness.report import summarise
    from harness.report.load import load_runs
    from harness.report.tables import summary_table

    rows, _, sources = load_runs([Path(p) for p in run_dirs])
    agg, intervals, paired, _ = summarise(rows, sources, bootstrap=bootstrap, seed=seed)
    return summary_table(agg, intervals, paired, bootstrap)


def console_frame(table: Table):
    """The console's columns of ``table.display`` (a subset, cells unchanged)."""
    return table.display[[c for c in CONSOLE_COLUMNS if c in table.display.columns]]


def console_text(table: Table) -> str:
    """Markdown of the console columns, best mIoU per shot in bold as in the report."""
    frame = console_frame(table).copy()
    for position, column in table.bold:
        if column in frame.columns:
            frame.iloc[position, frame.columns.get_loc(column)] = f"**{frame.iloc[position][column]}**"
    return frame.to_markdown(index=False, disable_numparse=True)  # "100.0" stays "100.0"


def auroc_warnings(data, below: float = AUROC_WARNING_BELOW) -> list[str]:
    """One line per (method, shots) of the table's ``data`` whose pixel AUROC is under ``below``."""
    return [
        f"warning: {row['method']} ({row['shots']}-shot) pixel AUROC {100 * row['pixel_auroc']:.1f} % < "
        f"{100 * below:g} %: its features carry (almost) no defect signal on this data (chance = 50 %)"
        for row in data.to_dict("records")
        if row["pixel_auroc"] < below  # nan (no positives or negatives) never warns
    ]


def write_run_summary(run_dir: Path, *, bootstrap: int = 1000, seed: int = 0) -> tuple[str, list[str]]:
    """Write ``<run>/summary.md`` (all columns) and ``summary.csv`` (raw numbers); return the console
    text and its warning lines."""
    from harness.report.tables import write_table

    run_dir = Path(run_dir)
    table = run_summary([run_dir], bootstrap=bootstrap, seed=seed)
    write_table(table, run_dir, ("md", "csv"))
    return console_text(table), auroc_warnings(table.data)
