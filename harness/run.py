"""One benchmark run end to end: dataset -> manifest -> executor -> store (+ run.json).

Re-running the same command resumes: chunks whose Parquet part verifies are skipped (a corrupt one
is moved aside and recomputed), so a killed run ends, after a re-run, with every episode exactly
once. One process writes a run folder at a time (``<run>/.lock``); a dataset whose image or mask
bytes changed makes another manifest id, and resuming a run over changed data is refused.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from harness import provenance
from harness.class_split import check_trained_classes, mark_rows
from harness.normal_supports import normal_support_pool
from harness.runner import (DEFAULT_EPISODE_TIMEOUT_S, EvalSettings, Executor, InlineExecutor, MethodJob, RowContext,
                            WorkUnit, make_unit)
from harness.store import RunStore, StoreError, os_problem, partition_value
from harness.io import REPO_ROOT, file_sha256
from harness.records import UNSCORED_STATUS
from methods.base import MethodError, MethodSpec


class RunError(Exception):
    """A user-facing problem with the run's configuration (one line)."""


@dataclass(frozen=True)
class ManifestSettings:
    shots: tuple[int, ...] = (1,)
    seeds: int = 5
    normal_fraction: float = 0.2
    fad: bool = False
    fold: str | None = None
    max_queries_per_class: int | None = None
    base_seed: int = 0
    calibration_normals: int = 0  # good images held out per object to set a threshold on (issue 19)
    normal_queries_per_object: int | None = None  # instead of normal_fraction
    classes: tuple[str, ...] = ()  # evaluate only these classes (harness.episodes.resolve_class_names)


@dataclass
class RunConfig:
    methods: list[MethodSpec]
    dataset: str = "synthetic"
    dataset_format: str = "auto"
    manifest: ManifestSettings = field(default_factory=ManifestSettings)
    manifest_path: str | None = None
    out: str | None = None
    results_root: str = str(REPO_ROOT / "results")
    overwrite: str = "missing"  # never | missing | always
    executor: str = "ray"  # ray | inline
    address: str | None = None
    workers: int | None = None  # None: auto from the cluster's resources
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None  # None: 1 per worker when the cluster has GPUs, else 0
    chunk_size: int | None = None
    save_predictions: bool = False
    follow_links: bool = False  # read images/masks that resolve outside the dataset root
    allow_replacement: bool = False  # let supports repeat when a class has fewer images than shots
    allow_trained_classes: bool = False  # score classes a method trained on, rows marked (harness.class_split)
    settings: EvalSettings = field(default_factory=EvalSettings)
    command: str = ""
    episode_timeout_s: float | None = DEFAULT_EPISODE_TIMEOUT_S  # a longer predict becomes an error row; 0/None: none


@dataclass
class MethodSummary:
    method: str
    planned: int = 0
    skipped: int = 0  # already stored before this invocation
    ok: int = 0
    failed: int = 0
    lost: int = 0  # episodes of chunks that kept killing workers: not stored, a re-run retries them
    errors: dict = field(default_factory=dict)  # status -> count (first few)


@dataclass
class RunSummary:
    run_dir: Path
    manifest_id: str
    episodes: int
    methods: list[MethodSummary]
    elapsed_s: float

    @property
    def failed(self) -> int:
        return sum(m.failed + m.lost for m in self.methods)


def default_fold(dataset) -> str | None:
    """Evaluate the novel (test) objects when the dataset defines folds."""
    if "novel" in dataset.folds:
        return "novel"
    return None


def choose_chunk_size(episodes: int, workers: int) -> int:
    """16-64 episodes per chunk, smaller for small runs so every worker gets several chunks."""
    return int(min(64, max(4, math.ceil(episodes / max(1, workers * 4)))))


def method_identity(spec: MethodSpec, weights: dict[str, Path]) -> tuple[str, str, dict]:
    options = spec.resolved_options()
    weight_shas = {key: file_sha256(path) for key, path in sorted(weights.items())}
    identity = {"name": spec.name, "target": spec.entry().target, "options": options, "weights_sha256": weight_shas}
    return provenance.canonical_hash(identity), json.dumps(options, sort_keys=True, default=str), {
        **identity,
        "weights": {k: str(v) for k, v in weights.items()},
        "threshold_protocol": spec.method_class().threshold_protocol,  # methods.base.ThresholdProtocol
    }


def warn(text: str) -> None:
    """A one-line warning on stderr (looked up at call time, so tests can capture it)."""
    print(f"warning: {text}", file=sys.stderr, flush=True)


def load_or_build_manifest(config: RunConfig, dataset):
    """The manifest of ``--manifest``, or one built from the dataset with its content hash.

    A built manifest whose supports would repeat (``--shots`` above the images a class has) is
    refused unless ``config.allow_replacement``; a given manifest is checked against the data.
    """
    from harness.episodes import build_manifest, check_data_unchanged, read_manifest

    if config.manifest_path:
        manifest = read_manifest(Path(config.manifest_path))
        check_data_unchanged(manifest, dataset)
        return manifest
    settings = config.manifest
    fold = settings.fold if settings.fold is not None or settings.classes else default_fold(dataset)
    if fold == "all":
        fold = None
    manifest = build_manifest(
        dataset,
        shots=settings.shots,
        seeds=settings.seeds,
        normal_fraction=settings.normal_fraction,
        fad=settings.fad,
        fold=fold,
        max_queries_per_class=settings.max_queries_per_class,
        base_seed=settings.base_seed,
        hash_content=True,
        calibration_normals=settings.calibration_normals,
        normal_queries_per_object=settings.normal_queries_per_object,
        classes=settings.classes,
    )
    check_supports(manifest, config.allow_replacement)
    for obj, why in sorted((manifest.params.get("calibration_skipped") or {}).items()):
        warn(f"{dataset.root}: object {obj!r} has {why}: no calibrated threshold for it")
    return manifest


def check_supports(manifest, allow_replacement: bool) -> None:
    """Refuse (or, with ``allow_replacement``, warn about) episodes whose supports repeat."""
    repeated = manifest.params.get("supports_with_replacement") or []
    if not repeated:
        return
    shots = sorted({int(item.rsplit("@", 1)[1]) for item in repeated})
    classes = sorted({item.rsplit("@", 1)[0] for item in repeated})
    text = (f"--shots {','.join(map(str, shots))}: {len(classes)} class(es) have fewer other images than shots "
            f"(e.g. {classes[0]}), so their supports would repeat")
    if not allow_replacement:
        raise RunError(f"{text}; lower --shots, or pass --allow-replacement to draw with replacement")
    warn(f"{text}; drawn with replacement (--allow-replacement)")


def record_skipped_inputs(dataset, run_dir: Path) -> Path | None:
    """Write the dataset files the adapter left out to ``<run>/skipped_inputs.tsv``; one summary line."""
    from harness.store import atomic_write_bytes

    skipped = dataset.meta.get("skipped") or []
    path = run_dir / "skipped_inputs.tsv"
    if not skipped:
        return None
    lines = ["path\treason\tproblem"] + [
        "\t".join(str(item.get(key, "")).replace("\t", " ").replace("\n", " ") for key in ("path", "reason", "problem"))
        for item in skipped]
    atomic_write_bytes(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    reasons = Counter(item.get("reason", "?") for item in skipped)
    by_reason = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(reasons.items()))
    warn(f"{len(skipped)} dataset file(s) left out ({by_reason}); list: {path}")
    return path


def check_resumable(store: RunStore, previous: dict, config: RunConfig, manifest) -> None:
    """Refuse to add to a run folder made by another manifest, data, or evaluation settings."""
    run_dir = store.run_dir
    if not previous and any(store.part_files(spec.name) for spec in config.methods):
        raise RunError(f"{run_dir}: holds episode parts but no run.json; cannot tell how they were chunked, use another --out")
    if previous and previous.get("manifest_id") not in (None, manifest.manifest_id):
        before = previous.get("manifest_params") or {}
        ignore = ("data_sha256", "dataset_root")
        same_sampling = {k: v for k, v in before.items() if k not in ignore} == \
            {k: v for k, v in manifest.params.items() if k not in ignore}
        if same_sampling and before.get("data_sha256") != manifest.params.get("data_sha256"):
            raise RunError(
                f"{run_dir}: the dataset's images or masks changed since this run was made (manifest "
                f"{previous['manifest_id']}, now {manifest.manifest_id}); resuming would mix labels, use another --out")
        raise RunError(
            f"{run_dir}: holds manifest {previous['manifest_id']}, this command makes {manifest.manifest_id}; "
            "use another --out"
        )
    settings_record = json.loads(json.dumps(asdict(config.settings)))
    if previous and previous.get("eval_settings") not in (None, settings_record):
        raise RunError(f"{run_dir}: was scored with other evaluation settings {previous['eval_settings']}; use another --out")


def execute(config: RunConfig, progress_out=sys.stderr, inputs: tuple | None = None) -> RunSummary:
    """Run ``config``; ``inputs``: the ``(dataset, manifest)`` its plan loaded (``harness.plan``)."""
    from datasets.base import load_dataset

    started = time.time()
    if not config.methods:
        raise RunError("no method given (--methods)")
    if config.chunk_size is not None and config.chunk_size < 1:
        raise RunError(f"--chunk-size must be at least 1, got {config.chunk_size}")
    if config.episode_timeout_s is not None and not config.episode_timeout_s >= 0:
        raise RunError(f"--episode-timeout must be 0 (none) or a number of seconds, got {config.episode_timeout_s}")
    for spec in config.methods:
        if partition_value(spec.name) != spec.name:
            raise RunError(f"method name '{spec.name}' cannot be a results folder name (use letters, digits, _ . + -)")
    # Fail before any work: every method's options and weights must be usable.
    identities = {}
    for spec in config.methods:
        weights = spec.check()
        identities[spec.name] = method_identity(spec, weights)
    if len({s.name for s in config.methods}) != len(config.methods):
        raise RunError("a method is listed twice in --methods")

    if inputs is None:
        dataset = load_dataset(config.dataset, config.dataset_format, follow_links=config.follow_links)
        manifest = load_or_build_manifest(config, dataset)
    else:
        dataset, manifest = inputs
    if not manifest.episodes:
        raise RunError(f"{config.dataset}: the manifest has no episodes (check --fold and the dataset's classes)")
    by_id = dataset.by_id()
    missing = {i for e in manifest.episodes for i in (*e.support_ids, e.query_id)} - set(by_id)
    if missing:
        raise RunError(f"manifest {manifest.manifest_id} names {len(missing)} images not in {config.dataset} (e.g. {sorted(missing)[0]})")
    check_trained_classes(config.methods, identities, dataset, manifest, config.allow_trained_classes, warn)

    run_dir = Path(config.out) if config.out else Path(config.results_root) / f"{dataset.name}-{manifest.manifest_id[:8]}"
    store = RunStore(run_dir)
    with store.lock(warn=warn):
        return _execute_locked(config, store, dataset, manifest, identities, progress_out, started)


def _execute_locked(config: RunConfig, store: RunStore, dataset, manifest, identities, progress_out,
                    started: float) -> RunSummary:
    from harness.episodes import write_manifest

    run_dir = store.run_dir
    previous = store.read_json()
    check_resumable(store, previous, config, manifest)
    write_manifest(manifest, store.manifest_dir)
    record_skipped_inputs(dataset, run_dir)

    executor = make_executor(config)
    try:
        return _run_methods(config, store, dataset, manifest, identities, previous, executor, progress_out, started)
    finally:
        executor.close()


def order_episodes(episodes: Sequence, chunk_order: str) -> list:
    """Episodes in chunking order. ``"query"``: grouped by (class, query image), manifest order
    inside a group, so every episode (seed, shot) of one query lands in one chunk (or neighbouring
    chunks) and runs on one worker after the others; ``"manifest"``: as listed (runs made before
    this order existed, so a resume chunks them as before)."""
    if chunk_order == "manifest":
        return list(episodes)
    return sorted(episodes, key=lambda e: (e.object, e.category, e.query_id))


def _run_methods(config: RunConfig, store: RunStore, dataset, manifest, identities, previous, executor: Executor,
                 progress_out, started: float) -> RunSummary:
    """Chunk the episodes, record the run, build one job per method, run them, finish run.json."""
    chunk_size, chunk_order, chunks = plan_chunks(config, store, manifest, previous, executor.workers)
    record = start_record(config, dataset, manifest, previous, executor, chunk_size, chunk_order)
    jobs, summaries = build_jobs(config, store, dataset, manifest, identities, record, chunks)
    attach_file_hashes(jobs, manifest)
    store.write_json(record)
    run_jobs(config, store, manifest, executor, jobs, summaries, record, progress_out, started)
    return RunSummary(store.run_dir, manifest.manifest_id, len(manifest.episodes), summaries, time.time() - started)


def plan_chunks(config: RunConfig, store: RunStore, manifest, previous: dict, workers: int):
    """(chunk size, chunk order, chunks of episodes); a resumed run keeps its size and order."""
    chunk_size = config.chunk_size or previous.get("chunk_size") or choose_chunk_size(len(manifest.episodes), workers)
    if previous.get("chunk_size") not in (None, chunk_size):
        raise RunError(f"{store.run_dir}: was chunked by {previous['chunk_size']} episodes; drop --chunk-size to resume")
    # A run folder made before chunks were grouped by query keeps the manifest order.
    chunk_order = previous.get("chunk_order") or ("manifest" if previous.get("chunk_size") else "query")
    ordered = order_episodes(manifest.episodes, chunk_order)
    chunks = [tuple(ordered[i : i + chunk_size]) for i in range(0, len(ordered), chunk_size)]
    return chunk_size, chunk_order, chunks


def start_record(config: RunConfig, dataset, manifest, previous: dict, executor: Executor, chunk_size: int,
                 chunk_order: str) -> dict:
    """run.json of this invocation before any episode runs (provenance, executor, invocations)."""
    run_id = previous.get("run_id") or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{manifest.manifest_id[:8]}"
    record = {
        **previous,
        "run_id": run_id,
        "schema_version": 1,
        "command": config.command,
        "dataset": {"spec": config.dataset, "name": dataset.name, "root": str(dataset.root), "format": dataset.format,
                    "meta": {k: v for k, v in dataset.meta.items() if not isinstance(v, (list, dict))}},
        "manifest_id": manifest.manifest_id,
        "manifest_params": manifest.params,
        "eval_settings": asdict(config.settings),
        "chunk_size": chunk_size,
        "chunk_order": chunk_order,
        "episode_timeout_s": config.episode_timeout_s or None,
        "git": provenance.git_info(),
        "packages": provenance.package_versions(),
        "hardware": provenance.hardware(),
        "status": "running",
        "ended_at": None,
        "executor": {"name": executor.name, "workers": executor.workers, "cpus_per_worker": executor.cpus_per_worker,
                     "gpus_per_worker": executor.gpus_per_worker, "cluster_resources": executor.resources},
        "started_at": previous.get("started_at") or datetime.now(timezone.utc).isoformat(),
    }
    # Each invocation (first run, resumes) is recorded, so a resumed run shows every code version.
    earlier = previous.get("invocations") if isinstance(previous.get("invocations"), list) else []
    record["invocations"] = [*earlier, {
        "started_at": datetime.now(timezone.utc).isoformat(), "command": config.command,
        "git_sha": record["git"]["sha"], "git_dirty": record["git"]["dirty"], "host": record["hardware"]["hostname"]}]
    return record


def build_jobs(config: RunConfig, store: RunStore, dataset, manifest, identities, record: dict, chunks):
    """One :class:`MethodJob` per method with the chunks it has not stored yet (resume, overwrite);
    fills ``record["methods"]`` and ``record["counts"]``. Returns (jobs, summaries)."""
    chunk_rows = {index: len(chunk) for index, chunk in enumerate(chunks)}
    by_id = dataset.by_id()
    stored_methods = dict(record.get("methods", {}))
    jobs, summaries = [], []
    for spec in config.methods:
        config_hash, options_json, identity = identities[spec.name]
        stored = stored_methods.get(spec.name)
        if config.overwrite == "always":
            store.clear_method(spec.name)
        elif stored and stored.get("config_hash") != config_hash and store.part_files(spec.name):
            raise RunError(
                f"{store.run_dir}: method '{spec.name}' was run with another config or weights "
                f"({stored.get('config_hash')} vs {config_hash}); use --overwrite always or another --out"
            )
        done = store.done_chunks(spec.name, chunk_rows, warn=warn)
        if config.overwrite == "never" and done:
            raise RunError(f"{store.run_dir}: method '{spec.name}' already has results and --overwrite never was given")
        stored_methods[spec.name] = {**identity, "config_hash": config_hash}
        summary = MethodSummary(spec.name, planned=len(manifest.episodes))
        retry = transient_rows(store, spec.name, done)
        summary.skipped = sum(len(chunks[i]) for i in done if i < len(chunks)) - sum(map(len, retry.values()))
        normal = int(spec.resolved_options().get("normal_supports", 0) or 0)  # harness.normal_supports
        pool = normal_support_pool(manifest.episodes, dataset.records) if normal else None
        units = [make_unit(spec.name, i, chunk, by_id, retry.get(i), normal, pool) for i, chunk in enumerate(chunks)
                 if i not in done or i in retry]
        context = RowContext(record["run_id"], manifest.manifest_id, dataset.name, config_hash, options_json)
        predictions = str(store.method_predictions_dir(spec.name)) if config.save_predictions else None
        writer = make_writer(store, summary, identity.get("trained_classes_scored", []))
        jobs.append(MethodJob(spec, context, units, predictions, writer))
        summaries.append(summary)
    record["methods"] = stored_methods
    record["counts"] = {"planned": len(manifest.episodes) * len(config.methods)}
    return jobs, summaries


def attach_file_hashes(jobs: list[MethodJob], manifest) -> None:
    """Give each unit the content hashes of its image and mask files as the manifest was built
    from them (``WorkUnit.file_hashes``; cached by path, size and mtime, so this costs a ``stat``
    per file): a file rewritten during the run becomes its episodes' error row, naming it."""
    from dataclasses import replace

    from datasets.base import resolve_link_stub
    from harness.provenance import ContentHashes

    if not manifest.params.get("data_sha256"):
        return  # a manifest built without content hashes: nothing to check against
    hashes, by_path = ContentHashes(), {}

    def entries(record):
        files = [resolve_link_stub(Path(record.path))] + ([Path(record.mask_path)] if record.mask_path else [])
        for path in files:
            if path not in by_path:
                try:
                    by_path[path] = hashes.entry(path)
                except OSError:
                    by_path[path] = None  # unreadable now: reading it fails the episode, naming it
            if by_path[path] is not None:
                yield by_path[path]

    for job in jobs:
        job.units = [replace(unit, file_hashes=tuple(e for r in unit.records for e in entries(r))) for unit in job.units]
    hashes.save()


def transient_rows(store: RunStore, method: str, done: set[int]) -> dict[int, list[int]]:
    """``{chunk: positions}`` of the stored rows whose error is transient (``harness.status``):
    a resume computes those episodes again and merges them into their part."""
    from harness.status import is_transient

    retry = {}
    for index in sorted(done):
        statuses = store.part_statuses(method, index)
        positions = [p for p, status in enumerate(statuses or ()) if is_transient(status)]
        if positions:
            retry[index] = positions
    if retry:
        n = sum(map(len, retry.values()))
        warn(f"{method}: {n} stored episode(s) failed on a transient cause (disk, memory, read error, "
             "timeout, dead worker); computing them again")
    return retry


def run_jobs(config: RunConfig, store: RunStore, manifest, executor: Executor, jobs, summaries, record: dict,
             progress_out, started: float) -> None:
    """Run every job on the executor with a progress bar; run.json ends complete, incomplete
    (units lost) or interrupted (an exception, re-raised)."""
    total = sum(len(u.episodes) for job in jobs for u in job.units)
    progress = make_progress(total, progress_out)
    record["status"] = "interrupted"
    failure: BaseException | None = None
    try:
        if any(job.units for job in jobs):
            # One worker set for all methods: each chunk's units of every method run back to back
            # on one worker, so a query's features are computed once (methods._common).
            progress.set_description(",".join(job.spec.name for job in jobs if job.units))
            executor.run_all(jobs, config.settings, progress.update_rows)
        for job, summary in zip(jobs, summaries):
            for unit, reason in executor.lost:
                if unit.method == job.spec.name:
                    summary.lost += len(unit.episodes)
                    summary.errors[f"not stored, re-run to retry: {reason}"] = len(unit.episodes)
        record["status"] = "complete" if not any(s.lost for s in summaries) else "incomplete"
    except BaseException as exc:
        failure = exc
        raise
    finally:
        progress.close()
        record_backbone_work(record, executor)
        finish_record(store, record, [s.name for s in config.methods], len(manifest.episodes), started, failure)


def record_backbone_work(record: dict, executor: Executor) -> None:
    """run.json: per method (this invocation) backbone passes, unique views and their ratio, and
    the device it ran on; ``backbone_views`` adds the ratio across methods ("all")."""
    from harness.runner import summarise_stats

    views = summarise_stats(executor.view_stats or {})
    devices = executor.devices or {}
    for name, entry in record.get("methods", {}).items():
        if name in views:
            entry["backbone_views"] = views[name]
        if devices.get(name):
            entry["device"] = devices[name]
    if views:
        record["backbone_views"] = views


def finish_record(store: RunStore, record: dict, methods: Sequence[str], planned_per_method: int, started: float,
                  failure: BaseException | None) -> None:
    """Write the final run.json; while another error is on its way out, only warn if that fails too."""
    record["ended_at"] = datetime.now(timezone.utc).isoformat()
    record["elapsed_s"] = record.get("elapsed_s", 0.0) + (time.time() - started)
    record["counts"] = count_stored(store, methods, planned_per_method)
    if record.get("status") == "complete" and record["counts"].get("retry_on_resume"):
        record["status"] = "incomplete"  # transient errors stored: the same command retries them
    try:
        store.write_json(record)
    except StoreError as exc:
        if failure is None:
            raise
        warn(f"{exc} (run.json not updated; the stored parts are kept)")


def make_writer(store: RunStore, summary: MethodSummary, trained_classes=()):
    """Store a unit's rows; ``trained_classes``: the classes the method trained on
    (``harness.class_split``; None = unknown), which set each row's ``trained_class``."""
    def write(unit: WorkUnit, rows: list[dict]) -> None:
        errors_log = store.run_dir / "errors.log"
        lines = []
        for row in rows:
            trace = row.pop("error_trace", None)
            if row["status"] in ("ok", UNSCORED_STATUS):  # unscored: an unlabelled query, predicted and stored
                summary.ok += 1
                continue
            summary.failed += 1
            summary.errors[row["status"]] = summary.errors.get(row["status"], 0) + 1
            lines.append(f"[{unit.method}] episode {row['episode_id']} (query {row['query_id']}): {row['status']}\n")
            if trace:
                lines.append(trace + "\n")
        if unit.positions is not None:  # some episodes of a stored chunk: merge them into its part
            merged = store.read_part(unit.method, unit.chunk_index)
            for position, row in zip(unit.positions, rows):
                merged[position] = row
            rows = merged
        store.write_part(unit.method, unit.chunk_index, mark_rows(rows, trained_classes))
        if lines:
            try:
                store.append_text(errors_log, "".join(lines))
            except OSError as exc:
                warn(f"{errors_log}: cannot append error details ({os_problem(exc)}); the rows keep their status")

    return write


def count_stored(store: RunStore, methods: Sequence[str], planned_per_method: int) -> dict:
    from harness.store import read_run

    try:
        frame = read_run(store.run_dir, columns=["method", "status"])
    except StoreError:
        return {"planned": planned_per_method * len(methods), "done": 0, "failed": 0, "retry_on_resume": 0}
    from harness.status import is_transient

    frame = frame[frame["method"].isin([partition_value(m) for m in methods])]
    failed = int((~frame["status"].isin(["ok", UNSCORED_STATUS])).sum())
    unscored = int((frame["status"] == UNSCORED_STATUS).sum())
    transient = int(frame["status"].map(is_transient).sum()) if failed else 0
    counts = {"planned": planned_per_method * len(methods), "done": int(len(frame)), "failed": failed,
              "ok": int(len(frame)) - failed - unscored, "retry_on_resume": transient}
    return {**counts, "unscored": unscored} if unscored else counts


def auto_workers(resources: dict, gpus_per_worker: float) -> int:
    """One worker per GPU slot; on CPUs one per core up to 4 cores, then one per 2 cores."""
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0.0) // gpus_per_worker + 1e-9))
    cpus = int(resources.get("CPU", 1.0))
    return max(1, cpus if cpus <= 4 else cpus // 2)


def default_gpus_per_worker(given: float | None, resources: dict) -> float:
    """``--gpus-per-worker`` as given; when not given, 1 per worker if the cluster has GPUs (said
    on the console), else 0."""
    if given is not None:
        return float(given)
    if resources.get("GPU", 0.0) >= 1:
        print(f"cluster has {resources['GPU']:g} GPU(s): using 1 GPU per worker (--gpus-per-worker to change)",
              file=sys.stderr, flush=True)
        return 1.0
    return 0.0


def make_executor(config: RunConfig) -> Executor:
    if config.executor == "inline":
        return InlineExecutor(threads=int(config.cpus_per_worker) if config.cpus_per_worker else None,
                              gpus_per_worker=config.gpus_per_worker or 0.0, episode_timeout_s=config.episode_timeout_s)
    if config.executor != "ray":
        raise RunError(f"unknown executor '{config.executor}' (ray or inline)")
    import ray

    from harness.ray_executor import RayExecutor, check_resources, connect, started_local

    joined_existing = ray.is_initialized()  # e.g. a test session's cluster: not ours to shut down
    resources = connect(config.address)
    gpus = default_gpus_per_worker(config.gpus_per_worker, resources)
    workers = config.workers or auto_workers(resources, gpus)
    if workers < 1:
        raise RunError("--workers must be at least 1")
    cpus = config.cpus_per_worker or max(1.0, float(int(resources.get("CPU", 1.0) // workers)))
    check_resources(resources, workers, cpus, gpus)
    return RayExecutor(workers, cpus, gpus, resources=resources, owns_cluster=not joined_existing and started_local(),
                       episode_timeout_s=config.episode_timeout_s)


def make_progress(total: int, out):
    """Progress over episodes: a tqdm bar on a terminal, periodic plain lines in a pipe or a
    terminal of width 0 (``harness.progress``)."""
    from harness.progress import Progress

    return Progress(total, out)
