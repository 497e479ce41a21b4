"""The comparison table printed after ``bench.py run``, and its ``summary.md`` / ``summary.csv``.

There is one aggregation path: this module reads the run like the report does
(``harness.report.load.load_runs``), computes the numbers with ``harness.report.summarise`` (the
report's tested aggregates and bootstrap, same seed and resamples) and formats them with
``harness.report.tables.summary_table``. So the console, ``<run>/summary.md|csv`` and the report's
summary agree on every number, unit (all rates in %, FP pixel rate included) and protocol label
("fixed 0.50 (native)" / "deployable (fitted per episode, median t)").

The console prints a compact view (``tables.console_table``: fits 120 columns); ``summary.md`` holds every column,
``summary.csv`` the raw numbers (fractions), exactly as the report's files of the same name.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from harness.report.operating import DEFAULT_FA_BUDGETS
from harness.report.tables import AUROC_CHANCE_BELOW, SHORT_FLAG_LEGEND, Table, console_table, primary_budget

AUROC_WARNING_BELOW = AUROC_CHANCE_BELOW  # pixel AUROC under this gets a warning line
CONSOLE_WIDTH = 120  # the console table fits this many columns


def run_summary(run_dirs: Sequence[Path], *, bootstrap: int = 1000, seed: int = 0,
                fa_budgets=DEFAULT_FA_BUDGETS) -> Table:
    """The summary table of one or several runs (run name prefixed to a method found in several)."""
    from harness.report import summarise
    from harness.report.load import load_runs
    from harness.report.tables import summary_table

    rows, _, sources = load_runs([Path(p) for p in run_dirs])
    agg, intervals, paired, _ = summarise(rows, sources, bootstrap=bootstrap, seed=seed, fa_budgets=fa_budgets)
    return summary_table(agg, intervals, paired, bootstrap)


def console_frame(table: Table, fa_budgets=DEFAULT_FA_BUDGETS):
    """The console's compact columns (``tables.console_table``)."""
    return console_table(table, fa_budgets)


def console_text(table: Table, fa_budgets=DEFAULT_FA_BUDGETS) -> str:
    """The compact console table (<= 120 columns when method names are short), its legend, and a
    pointer to the full table."""
    frame = console_frame(table, fa_budgets)
    text = frame.to_markdown(index=False, tablefmt="simple", disable_numparse=True)  # "100.0" stays "100.0"
    b = f"{primary_budget(fa_budgets):g}" if fa_budgets else "B"
    legend = (f"All in %. rec@faB = defective parts flagged by the threshold that at most B % of the test's good "
              f"parts exceed (threshold-free); calFA@{b} = false alarms on the test's good parts [Wilson 95 % CI] "
              f"with a threshold set on held-out good parts only (deployable; its recall is in summary.md).")
    return "\n".join([text, _wrap(legend), _wrap(SHORT_FLAG_LEGEND)])


def _wrap(text: str) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, CONSOLE_WIDTH))


def auroc_warnings(data, below: float = AUROC_WARNING_BELOW) -> list[str]:
    """One line per (method, shots) of the table's ``data`` whose pixel AUROC is under ``below``."""
    return [
        f"warning: {row['method']} ({row['shots']}-shot) pixel AUROC {100 * row['pixel_auroc']:.1f} % < "
        f"{100 * below:g} %: its features carry (almost) no defect signal on this data (chance = 50 %)"
        for row in data.to_dict("records")
        if row["pixel_auroc"] < below  # nan (no positives or negatives) never warns
    ]


def write_run_summary(run_dir: Path, *, bootstrap: int = 1000, seed: int = 0,
                      fa_budgets=DEFAULT_FA_BUDGETS) -> tuple[str, list[str]]:
    """Write ``<run>/summary.md`` (all columns) and ``summary.csv`` (raw numbers); return the console
    text and its warning lines."""
    from harness.io import publish_files, staging_folder
    from harness.report.tables import write_table

    run_dir = Path(run_dir)
    table = run_summary([run_dir], bootstrap=bootstrap, seed=seed, fa_budgets=fa_budgets)
    staging = staging_folder(run_dir / "summary")
    try:
        write_table(table, staging, ("md", "csv"))
        publish_files(staging, run_dir)  # renamed into place: a link planted there is not followed
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return console_text(table, fa_budgets), auroc_warnings(table.data)
