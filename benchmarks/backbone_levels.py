"""Choose a backbone's feature levels on the synthetic *base* fold (never the novel fold or real data).

For each candidate level set, runs PatchCore and PANet over the base fold (1-shot, one support
draw, 2 defective queries per class + normal queries) into ``OUT/<levels>`` and prints pixel
AUROC / mIoU / seconds per episode:

    python -m benchmarks.backbone_levels efficientnet_lite0 2+3 2+4 3+4 2+3+4 4+5 --out /tmp/levels

The levels shipped as the default (``harness.features.ARCHS``) and the table in
``methods/BASELINES.md`` come from this command.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from harness.report.aggregate import aggregate
from harness.report.load import load_runs

REPO = Path(__file__).resolve().parent.parent


def run_candidate(backbone: str, levels: str, out: Path, methods: str, max_queries: int) -> Path:
    run_dir = out / f"{backbone}-{levels}"
    sets = [arg for m in methods.split(",") for arg in
            ("--set", f"{m}.backbone={backbone}", "--set", f"{m}.layers={levels}")]
    subprocess.run(
        [sys.executable, str(REPO / "bench.py"), "run", "--methods", methods, "--dataset", "synthetic",
         "--fold", "base", "--shots", "1", "--seeds", "1", "--max-queries-per-class", str(max_queries),
         "--out", str(run_dir), "--no-report", "--no-save-predictions", *sets],
        check=True, cwd=REPO,
    )
    return run_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbone")
    parser.add_argument("levels", nargs="+", help="candidate level sets, e.g. 2+3")
    parser.add_argument("--out", type=Path, default=Path("/tmp/levels"))
    parser.add_argument("--methods", default="patchcore,panet")
    parser.add_argument("--max-queries-per-class", type=int, default=2)
    args = parser.parse_args(argv)
    lines = ["| levels | method | pixel AUROC % | mIoU % | oracle mIoU % | s/episode |", "|---|---|---|---|---|---|"]
    for levels in args.levels:
        run_dir = run_candidate(args.backbone, levels, args.out, args.methods, args.max_queries_per_class)
        rows, _, _ = load_runs([run_dir])
        summary = aggregate(rows).summary
        for _, row in summary.iterrows():
            lines.append(f"| {levels} | {row['method']} | {100 * row['pixel_auroc']:.1f} | "
                         f"{100 * row['miou_mean']:.1f} | {100 * row['oracle_miou']:.1f} | {1 / row['episodes_per_s']:.2f} |")
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
