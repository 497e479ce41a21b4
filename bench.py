#!/usr/bin/env python
"""sofs-bench command line: run, episodes, report, train, methods, datasets, benchmark."""
from __future__ import annotations

import os

# Offline by design: an accidental hub call would retry for ~47 s; Ray stays on 127.0.0.1.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_LOGGER_LEVEL", "warning")  # no "INFO ... Started a local Ray instance." line

import json
import shlex
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click

from datasets.formats import ADAPTERS
from harness.constants import SIZE_BIN_EDGES
from harness.io import short_error

# Start-up stays under a second: only click at module level; torch, ray, pandas, pyarrow and the
# methods are imported inside the commands that use them (tests/test_cli_ux.py checks sys.modules).
DEFAULT_METHODS = "sofs,panet,patchcore"
# Every dataset format by name (datasets/formats.py), for the --format help.
FORMAT_HELP = "Dataset format: auto (detect) | " + " | ".join(ADAPTERS) + "."
# Exit codes: 0 done; 1 a user error (one line on stderr); 2 bad command-line usage (unknown
# option, command or method); 3 a run whose episodes partly failed (rows kept); 130 interrupted by
# Ctrl-C; 143 terminated (SIGTERM).
EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130


def _one_line(exc: BaseException) -> str:
    return short_error(exc, 300)


# The project's one-line error types, named so that no module is imported to catch them.
USER_ERROR_TYPES = {
    ("datasets.base", "DatasetError"), ("harness.features", "BackboneError"),
    ("harness.ray_executor", "ClusterError"), ("harness.run", "RunError"), ("harness.store", "StoreError"),
    ("methods.base", "MethodError"), ("harness.episodes", "ManifestError"), ("methods.registry", "PluginError"),
}


def user_error_text(exc: BaseException) -> str | None:
    """The one line a user sees for ``exc``, or None when it is a bug (keep the traceback)."""
    if any((cls.__module__, cls.__qualname__) in USER_ERROR_TYPES for cls in type(exc).__mro__):
        return _one_line(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or _one_line(exc)}"
    if "pyarrow" in sys.modules:
        import pyarrow as pa

        if isinstance(exc, pa.ArrowException):
            return f"{type(exc).__name__}: {_one_line(exc)}"
    image = sys.modules.get("PIL.Image")
    if image is not None and isinstance(exc, image.DecompressionBombError):
        return f"{type(exc).__name__}: {_one_line(exc)}"
    return None


@contextmanager
def user_errors():
    """Turn user-facing errors into one-line Click errors (exit 1, no traceback).

    Besides the project's own error types: any ``OSError`` (disk full, permissions), PIL decoding
    error and pyarrow error reaching here becomes one line naming the file when it has one.
    """
    try:
        yield
    except click.ClickException:
        raise
    except Exception as exc:
        text = user_error_text(exc)
        if text is None:
            raise
        raise click.ClickException(text) from None


EXIT_TERMINATED = 128 + signal.SIGTERM


class BenchGroup(click.Group):
    """Ctrl-C exits 130 and SIGTERM 143, each with one line (Click's default for Ctrl-C is
    "Aborted!" and exit 1, like a data error)."""

    def invoke(self, ctx):
        _run_folder.clear()
        _run_folder["started"] = time.time()
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\n" + kept_text("interrupted"), err=True)
            if _exit_at_once:  # the run has unwound (run.json written, Ray shut down): skip the teardown
                _exit_now(EXIT_INTERRUPTED)  # of torch / Ray modules, seconds of silence after the line
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except SystemExit as exc:
            # Ray turns an exception raised by a signal handler inside ray.wait/get into SystemExit(1)
            if exc.code != EXIT_TERMINATED and _received.get("signal") != signal.SIGTERM:
                raise
            click.echo("\n" + kept_text("terminated (SIGTERM)"), err=True)
            _exit_now(EXIT_TERMINATED)


_run_folder: dict = {}  # "path": the folder `run` is computing into (None until planned), for kept_text


def kept_text(what: str) -> str:
    """The one line after Ctrl-C / SIGTERM: what is kept, read from the run.json the run wrote as it
    unwound (its stored-episode counts), else what stays as it was."""
    if "path" not in _run_folder:  # not `run`: e.g. `train sofs` keeps its last checkpoint
        return f"{what}: stored results are kept; run the same command to resume"
    run_dir = _run_folder["path"]
    if run_dir is None:
        return f"{what} before any episode was computed (nothing stored); run the same command to start"
    record_path = Path(run_dir) / "run.json"
    try:
        if record_path.stat().st_mtime < _run_folder["started"]:  # not written by this command
            raise FileNotFoundError
        record = json.loads(record_path.read_text())
        counts = record["counts"]
        if record.get("status") != "interrupted":
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        return f"{what} before any episode was computed: {run_dir} is as it was; run the same command to start"
    failed = f" ({counts['failed']} with an error row)" if counts.get("failed") else ""
    return (f"{what}: {counts['done']} of {counts['planned']} episode rows are stored in {run_dir}{failed} and kept; "
            f"run the same command to compute the other {counts['planned'] - counts['done']}")


def _exit_now(code: int) -> None:
    """Leave with ``code`` once the run has unwound (run.json written, its Ray cluster shut down).
    A SIGTERM sent to the whole process group also ends the local Ray daemons, and Ray's exit
    hooks then end the process with status 1; so skip them (after a clean Ray disconnect)."""
    ray = sys.modules.get("ray")
    try:
        if ray is not None and ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - the cluster may be gone already; the exit code matters now
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_received: dict = {}  # the signal that is ending the run, for BenchGroup.invoke
_exit_at_once = False  # a `python bench.py` process (not the CLI called in-process, as tests do)


def _terminate(signum, frame):
    """SIGTERM unwinds like Ctrl-C (run.json written, Ray shut down), then exits 128 + 15."""
    _received["signal"] = signum
    raise SystemExit(128 + signum)


def parse_assignments(values: tuple[str, ...], what: str) -> dict[str, dict[str, str]]:
    """["sofs.abnormal_prior=false", "seggpt=/w"] -> {"sofs": {"abnormal_prior": "false"}, "seggpt": {"": "/w"}}"""
    parsed: dict[str, dict[str, str]] = {}
    for value in values:
        if "=" not in value:
            raise click.BadParameter(f"'{value}' is not METHOD[.KEY]=VALUE", param_hint=what)
        target, _, setting = value.partition("=")
        method, _, key = target.partition(".")
        parsed.setdefault(method.strip(), {})[key.strip()] = setting
    return parsed


FA_BUDGET_OPTION = click.option(
    "--fa-budget", default="1,5", show_default=True,
    help="False-alarm budgets in % of good parts: recall at each (threshold set on the test's good parts, "
         "and one set on held-out good parts only).")


def parse_budgets(text: str) -> tuple[float, ...]:
    """``"1,5"`` -> ``(1.0, 5.0)``; each in (0, 100)."""
    try:
        values = tuple(sorted({float(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of percentages", param_hint="--fa-budget") from None
    if not values or not all(0 < v < 100 for v in values):
        raise click.BadParameter(f"'{text}': each budget must be a percentage in (0, 100)", param_hint="--fa-budget")
    return values


def parse_ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of integers", param_hint=name) from None


def check_method_names(names: list[str]) -> None:
    """Unknown or repeated ``--methods`` names are usage errors (exit 2), found without torch."""
    import difflib

    from methods.registry import REGISTRY, load_plugins  # imports no method module

    with user_errors():
        load_plugins()

    if not names:
        raise click.BadParameter("no method given", param_hint="--methods")
    for name in names:
        if name not in REGISTRY:
            close = difflib.get_close_matches(name, list(REGISTRY), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise click.BadParameter(f"unknown method '{name}'{hint}; known: {', '.join(sorted(REGISTRY))}",
                                     param_hint="--methods")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise click.BadParameter(f"'{repeated[0]}' is listed twice", param_hint="--methods")


def check_methods(methods: str, weights: tuple[str, ...], sets: tuple[str, ...]):
    """``--methods``, ``--weights`` and ``--set`` checked without torch: an unknown or repeated
    method is a usage error (exit 2), an unknown option or a bad value a user error (exit 1).
    Returns (names, {method: {key: path}}, {method: {option: value}})."""
    from methods.base import MethodSpec

    names = [m.strip() for m in methods.split(",") if m.strip()]
    check_method_names(names)
    weight_map = parse_assignments(weights, "--weights")
    option_map = parse_assignments(sets, "--set")
    for unknown in (set(weight_map) | set(option_map)) - set(names):
        raise click.BadParameter(f"'{unknown}' is not among --methods {methods}", param_hint="--weights/--set")
    with user_errors():
        for name in names:
            MethodSpec.create(name, option_map.get(name, {})).check_options()
    return names, weight_map, option_map


def check_dataset_path(dataset: str, dataset_format: str = "auto") -> None:
    """A missing dataset folder or an unknown layout, said before torch or Ray is imported."""
    from datasets.base import locate_dataset

    with user_errors():
        locate_dataset(dataset, dataset_format)


def method_specs(methods: str, weights: tuple[str, ...], sets: tuple[str, ...]):
    from methods.base import MethodSpec, get_entry

    names, weight_map, option_map = check_methods(methods, weights, sets)
    specs = []
    for name in names:
        cls = get_entry(name).load_class()
        primary = cls.weight_specs[0].key if getattr(cls, "weight_specs", ()) else ""
        given = {(key or primary): path for key, path in weight_map.get(name, {}).items()}
        specs.append(MethodSpec.create(name, option_map.get(name, {}), given))
    return specs


def manifest_options(func):
    options = [
        click.option("--dataset", default="synthetic", show_default=True, help="Dataset folder, or 'synthetic' (the embedded default)."),
        click.option("--format", "dataset_format", default="auto", show_default=True, help=FORMAT_HELP),
        click.option("--shots", default="1", show_default=True, help="Comma-separated shot counts, e.g. 1,5."),
        click.option("--seeds", type=int, default=None, help="Support re-draws per query (report mean ± std). Default 5; 1 on the embedded synthetic default."),
        click.option("--normal-fraction", default=0.2, show_default=True, help="Fraction of episodes with a defect-free query."),
        click.option("--fad", is_flag=True, help="Few-shot anomaly detection: supports are defect-free images."),
        click.option("--fold", default=None, help="Objects to evaluate: a fold of the dataset ('novel' by default when it has one; 'all' for every object)."),
        click.option("--classes", default=None, help="Defect classes to evaluate, comma-separated: object/category, or the category when one object has it, or an object (inside --fold when both are given); the good images of their objects stay in. The class-split protocol: classes the weights never trained on (README)."),
        click.option("--max-queries-per-class", type=int, default=None, help="Cap queries per class (quick runs). Default: all; 4 on the embedded synthetic default."),
        click.option("--episode-seed", default=0, show_default=True, help="Base seed of support sampling."),
        click.option("--normal-queries-per-object", type=click.IntRange(min=0), default=None, help="Defect-free test queries per object (replaces --normal-fraction). Default: 40 on the embedded synthetic default."),
        click.option("--calibration-normals", type=click.IntRange(min=0), default=None, help="Defect-free images held out per object (never queries or supports) to set each method's threshold on good parts alone; an object needs twice as many. 0 turns it off.  [default: 20]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def manifest_settings(dataset, shots, seeds, normal_fraction, fad, fold, max_queries_per_class, episode_seed,
                      normal_queries_per_object=None, calibration_normals=None, classes=None):
    from harness.run import manifest_defaults

    if seeds is not None and seeds < 1:
        raise click.BadParameter("must be at least 1", param_hint="--seeds")
    return manifest_defaults(dataset, parse_ints(shots, "--shots"), seeds, normal_fraction, fad, fold,
                             max_queries_per_class, episode_seed, normal_queries_per_object, calibration_normals,
                             tuple(c.strip() for c in (classes or "").split(",") if c.strip()))


@click.group(cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli():
    """Few-shot small-defect segmentation benchmark: SOFS and baselines over episode manifests."""


@cli.command()
@click.option("--methods", default=DEFAULT_METHODS, show_default=True, help="Comma-separated method names (see `bench.py methods`).")
@manifest_options
@click.option("--manifest", "manifest_path", default=None, type=click.Path(exists=True, dir_okay=False), help="Use this manifest (.parquet/.json) instead of building one.")
@click.option("--out", default=None, help="Run folder (default results/<dataset>-<manifest id>; the same command resumes there).")
@click.option("--overwrite", type=click.Choice(["never", "missing", "always"]), default="missing", show_default=True, help="missing: resume, compute only what is not stored.")
@click.option("--executor", type=click.Choice(["ray", "inline"]), default="ray", show_default=True, help="inline runs without Ray (debugging).")
@click.option("--address", default=None, help="Join this Ray cluster (default $RAY_ADDRESS, else a local one on 127.0.0.1).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Ray actors per method, each loading the method once (default: one per GPU slot, else one per CPU up to 4 CPUs, else one per 2 CPUs).")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=None, help="Default: cluster CPUs / workers.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=None, help="May be fractional (a scheduling label: Ray does not isolate memory). Default: 1 when the cluster has GPUs, else 0.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, help="Episodes per work unit / Parquet part (default 4-64 by run size).")
@click.option("--weights", multiple=True, help="METHOD[.KEY]=PATH, e.g. seggpt=/w/seggpt-vit-large or sofs.backbone=dinov2_vitb14_pretrain.pth.")
@click.option("--set", "sets", multiple=True, help="METHOD.OPTION=VALUE, e.g. panet.resolution=resize.")
@click.option("--save-predictions/--no-save-predictions", default=None, help="Keep each episode's score map as an 8-bit PNG at native size (for report overlays and threshold sweeps). Default: off; on for the embedded synthetic default.")
@click.option("--min-area", default=1, show_default=True, help="A predicted component counts for image-level alarms from this many pixels.")
@click.option("--report/--no-report", "make_report", default=True, show_default=True, help="Write the comparison table when done.")
@click.option("--follow-links", is_flag=True, help="Read images/masks that resolve outside the dataset folder (symlinks, link stubs, '..' paths in manifest.csv); refused by default.")
@click.option("--allow-replacement", is_flag=True, help="Let supports repeat when a class has fewer other images than --shots (default: refuse).")
@click.option("--allow-trained-classes", is_flag=True, help="Score classes a method's weights were trained on (refused by default: not novel); their rows are marked trained_class and flagged in the tables.")
@click.option("--episode-timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True, help="Seconds one predict() may take before it becomes an error row (retried on resume) and the run goes on; 0: no limit. The default is ~4x the slowest episode measured (README, Reliability).")
@click.option("--dry-run", is_flag=True, help="Print the plan (episodes per method, estimated time) and stop before any computation.")
@FA_BUDGET_OPTION
def run(methods, dataset, dataset_format, shots, seeds, normal_fraction, fad, fold, max_queries_per_class, episode_seed,
        normal_queries_per_object, calibration_normals, manifest_path, out, overwrite, executor, address, workers, cpus_per_worker, gpus_per_worker, chunk_size,
        weights, sets, save_predictions, min_area, make_report, follow_links, allow_replacement, episode_timeout, dry_run, fa_budget,
        classes=None, allow_trained_classes=False):
    """Run methods over the episodes of a dataset and store one Parquet row per episode."""
    # Usage errors first, before the heavy imports, so they answer in well under a second.
    check_methods(methods, weights, sets)
    parse_ints(shots, "--shots")
    budgets = parse_budgets(fa_budget)
    if seeds is not None and seeds < 1:
        raise click.BadParameter("must be at least 1", param_hint="--seeds")
    check_dataset_path(dataset, dataset_format)
    from harness.run import Run, RunConfig, is_quick_dataset
    from harness.runner import EvalSettings

    signal.signal(signal.SIGTERM, _terminate)
    _run_folder["path"] = None  # known once planned
    if save_predictions is None:
        save_predictions = is_quick_dataset(dataset)
    with user_errors():
        config = RunConfig(
            methods=method_specs(methods, weights, sets),
            dataset=dataset,
            dataset_format=dataset_format,
            manifest=manifest_settings(dataset, shots, seeds, normal_fraction, fad, fold, max_queries_per_class,
                                       episode_seed, normal_queries_per_object, calibration_normals, classes),
            manifest_path=manifest_path,
            out=out,
            overwrite=overwrite,
            executor=executor,
            address=address,
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            chunk_size=chunk_size,
            save_predictions=save_predictions,
            follow_links=follow_links,
            allow_replacement=allow_replacement,
            allow_trained_classes=allow_trained_classes,
            settings=EvalSettings(min_area=min_area),
            command=shlex.join(["python", "bench.py", *sys.argv[1:]]),
            episode_timeout_s=episode_timeout,
        )
        from harness.plan import format_plan

        opened = Run.open(config)  # methods checked, then the dataset and manifest loaded, once
        plan = opened.plan()
        _run_folder["path"] = plan.run_dir
        click.echo(format_plan(plan), err=True)
        if dry_run:
            click.echo("dry run: nothing computed (drop --dry-run to start)", err=True)
            return
        summary = opened.execute()
    click.echo(f"\nrun folder: {summary.run_dir}  (manifest {summary.manifest_id}, {summary.episodes} episodes per method, {summary.elapsed_s:.0f} s)")
    for m in summary.methods:
        click.echo(f"  {m.method:<22} computed {m.ok + m.failed:>5}  already stored {m.skipped:>5}  failed {m.failed:>4}"
                   + (f"  not stored (worker failures) {m.lost}" if m.lost else ""))
        for status, count in list(m.errors.items())[:3]:
            click.echo(f"      {count} x {status}")
    if make_report:
        with user_errors():
            write_quick_report(summary.run_dir, budgets)
    if summary.failed:
        click.echo(f"{summary.failed} episodes failed (rows kept with their error; details in {summary.errors_log})", err=True)
        sys.exit(EXIT_SOME_FAILED)


def write_quick_report(run_dir: Path, budgets=(1.0, 5.0)) -> None:
    from harness.summary import write_run_summary

    table, warnings = write_run_summary(run_dir, fa_budgets=budgets)
    click.echo("\n" + table)
    for line in warnings:
        click.echo(line, err=True)
    click.echo(f"\ntable: {run_dir / 'summary.md'}  (full report: python bench.py report {run_dir})")


@cli.group()
def episodes():
    """Episode manifests."""


@episodes.command("build")
@manifest_options
@click.option("--out", default=str(Path("results") / "manifests"), show_default=True, help="Folder for <id>.parquet + <id>.json.")
@click.option("--follow-links", is_flag=True, help="Read images/masks that resolve outside the dataset folder.")
@click.option("--allow-replacement", is_flag=True, help="Let supports repeat when a class has fewer other images than --shots.")
def episodes_build(dataset, dataset_format, shots, seeds, normal_fraction, fad, fold, max_queries_per_class, episode_seed,
                   normal_queries_per_object, calibration_normals, out,
                   follow_links, allow_replacement, classes=None):
    """Build a content-hashed episode manifest (same inputs -> byte-identical files)."""
    from datasets.base import load_dataset
    from harness.episodes import write_manifest
    from harness.run import RunConfig, load_or_build_manifest

    with user_errors():
        data = load_dataset(dataset, dataset_format, follow_links=follow_links)
        config = RunConfig(methods=[], dataset=dataset, dataset_format=dataset_format, allow_replacement=allow_replacement,
                           manifest=manifest_settings(dataset, shots, seeds, normal_fraction, fad, fold, max_queries_per_class,
                                                      episode_seed, normal_queries_per_object, calibration_normals, classes))
        manifest = load_or_build_manifest(config, data)
        path = write_manifest(manifest, Path(out))
    normal = sum(e.query_is_normal and e.role == "test" for e in manifest.episodes)
    calibration = sum(e.role == "calibration" for e in manifest.episodes)
    click.echo(f"manifest {manifest.manifest_id}: {len(manifest.episodes)} episodes ({normal} normal queries, "
               f"{calibration} calibration episodes) -> {path}")
    from harness.plan import skipped_classes_line

    skipped = skipped_classes_line(manifest.params.get("skip_reasons") or {})
    if skipped:
        click.echo(skipped, err=True)


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Report folder (default <first run>/report).")
@click.option("--per-class/--no-per-class", default=True, show_default=True, help="Also write the per-class table.")
@click.option("--size-edges", default=",".join(map(str, SIZE_BIN_EDGES)), show_default=True, help="GT area-fraction bin edges.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples for confidence intervals.")
@FA_BUDGET_OPTION
def report(runs, out, per_class, size_edges, bootstrap, fa_budget):
    """Tables (md/csv/tex), size-stratified mIoU, false alarms, plots and one HTML file."""
    budgets = parse_budgets(fa_budget)
    from harness.report import build_report

    try:
        edges = tuple(float(v) for v in size_edges.split(","))
    except ValueError:
        raise click.BadParameter(f"'{size_edges}' is not a comma-separated list of numbers", param_hint="--size-edges") from None
    with user_errors():
        try:
            result = build_report(list(runs), out or runs[0] / "report", per_class=per_class,
                                  size_edges=edges, bootstrap=bootstrap, fa_budgets=budgets)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    from harness.summary import auroc_warnings, console_text

    click.echo(console_text(result.tables["summary"], budgets))  # the same columns and cells as after `run`
    click.echo("\nverdict: " + " ".join(result.verdict))
    for line in auroc_warnings(result.tables["summary"].data):
        click.echo(line, err=True)
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"\nreport: {result.html_path}  (tables: {result.out_dir})")


@cli.command("methods")
@click.option("--weights", multiple=True, help="METHOD[.KEY]=PATH to check.")
@click.option("--options", "show_options", is_flag=True,
              help="List each method's options (--set METHOD.KEY=VALUE): type or allowed values, and default; "
                   "weights are then checked only with --weights (checking them imports torch).")
def list_methods(weights, show_options):
    """List methods and whether their weights are available."""
    from methods.base import MethodError, MethodSpec, REGISTRY, get_entry, option_lines

    with user_errors():
        get_entry("panet")  # fills the registry (and imports SOFS_BENCH_PLUGINS)
    given = parse_assignments(weights, "--weights")
    if show_options and not given:
        for name, entry in sorted(REGISTRY.items()):
            click.echo(f"{name:<20} {entry.description}")
            try:
                lines = option_lines(entry.load_config(), entry.options)
            except ImportError as exc:
                lines = [f"unavailable: {exc}"]
            for line in lines:
                click.echo(f"{'':<22}{line}")
        click.echo("\nweights: `bench.py methods` checks them (add --weights METHOD=PATH to check a file)")
        return
    for name, entry in sorted(REGISTRY.items()):
        try:
            cls = entry.load_class()
            primary = cls.weight_specs[0].key if cls.weight_specs else ""
            spec = MethodSpec(name, {}, {(k or primary): v for k, v in given.get(name, {}).items()})
            resolved = spec.check()
            state = "ready  " + ", ".join(f"{k}={p}" for k, p in resolved.items())
        except MethodError as exc:
            state = f"needs weights: {exc}"
        except ImportError as exc:
            state = f"unavailable: {exc}"
        click.echo(f"{name:<20} {entry.description}\n{'':<20} {state}")
        if show_options and state.startswith(("ready", "needs")):
            for line in option_lines(cls.Config, entry.options):
                click.echo(f"{'':<22}{line}")


@cli.group("datasets")
def datasets_group():
    """Dataset tools."""


@datasets_group.command("check")
@click.argument("path")
@click.option("--format", "dataset_format", default="auto", show_default=True, help=FORMAT_HELP)
@click.option("--follow-links", is_flag=True, help="Accept images/masks that resolve outside the dataset folder.")
def datasets_check(path, dataset_format, follow_links):
    """Validate a dataset: counts, sizes, and every problem with its file."""
    from datasets.check import check_dataset, format_check_report

    with user_errors():
        result = check_dataset(path, dataset_format, follow_links=follow_links)
    click.echo(format_check_report(result))
    if result.has_errors:
        sys.exit(1)


@datasets_group.command("synthetic")
@click.option("--seed", default=0, show_default=True)
def datasets_synthetic(seed):
    """Generate (or find) the embedded default dataset and print its folder."""
    from datasets.synthetic import ensure_synthetic

    click.echo(ensure_synthetic(seed=seed))


class LazyTrainGroup(click.Group):
    """``train`` subcommands imported only when named (the SOFS trainer imports torch)."""

    LAZY = {"sofs": ("methods.sofs.cli", "train_sofs", "Meta-train SOFS on the base fold.")}

    def list_commands(self, ctx):
        return sorted(self.LAZY)

    def get_command(self, ctx, name):
        if name not in self.LAZY:
            return None
        module, attr, _ = self.LAZY[name]
        try:
            import importlib

            return getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise click.ClickException(f"train {name} is unavailable: {exc}") from None

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_text) for name, (_, _, help_text) in sorted(self.LAZY.items())])


@cli.group(cls=LazyTrainGroup)
def train():
    """Train learned methods."""


class LazyAblateGroup(LazyTrainGroup):
    """``ablate`` subcommands, imported only when named."""

    LAZY = {"sofs": ("methods.sofs.ablate", "ablate_sofs",
                     "Train SOFS's four ablation heads and evaluate them beside the full model.")}


@cli.group(cls=LazyAblateGroup)
def ablate():
    """Paper ablation tables: train the ablation heads, evaluate them with the full model in one run."""


class LazyCurveGroup(LazyTrainGroup):
    """``curve`` subcommands, imported only when named."""

    LAZY = {"sofs": ("methods.sofs.curve", "curve_sofs",
                     "Evaluate the heads kept by `train sofs --snapshot-every` on base and novel classes.")}


@cli.group(cls=LazyCurveGroup)
def curve():
    """Learning curves: mIoU of the heads a training kept, step by step, on base and novel classes."""


@cli.command()
@click.option("--episodes", default=24, show_default=True, help="Episodes per measurement.")
@click.option("--rows", default=1_000_000, show_default=True, help="Synthetic rows for the `bench.py report` timing.")
@click.option("--method", default="panet", show_default=True, help="Method whose episodes are timed.")
@click.option("--cli-only", is_flag=True, help="Only the command-line (--help, user errors, Ctrl-C under Ray) and `report` timings.")
@click.option("--train-steps", default=2, show_default=True,
              help="Timed SOFS training steps (project vs straightforward loop, benchmarks.sofs_train_bench); 0: skip.")
def benchmark(episodes, rows, method, cli_only, train_steps):
    """Command-line response (every --help, user errors, Ctrl-C under Ray: PASS/FAIL against 1 s / 5 s)
    and report speed, then backbone passes per view, harness overhead, 1 vs 2 workers, RSS slope,
    cross-image batching and SOFS training steps/s (prints figures and ratios)."""
    from benchmarks import cli_bench

    cli_bench.main(rows=rows, method=method)
    if cli_only:
        return
    from benchmarks.harness_bench import main

    main(episodes=episodes, method=method)
    if train_steps > 0:
        from benchmarks.sofs_train_bench import main as train_bench

        train_bench(steps=train_steps)


if __name__ == "__main__":
    _exit_at_once = True
    cli()
