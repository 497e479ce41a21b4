"""One benchmark run end to end: dataset -> manifest -> executor -> store (+ run.json).

``Run.open(config)`` loads everything once; ``Run.plan()`` and ``Run.execute()`` share it and one
job generator (``Run.pending``); ``execute(config)`` is the two in one call.

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
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

from harness import provenance
from harness.class_split import check_trained_classes, mark_rows
from harness.io import REPO_ROOT, file_sha256
from harness.normal_supports import normal_support_pool
from harness.plan import RunPlan, auto_workers
from harness.records import UNSCORED_STATUS
from harness.run_record import SCHEMA_VERSION, RunRecord
from harness.runner import (DEFAULT_EPISODE_TIMEOUT_S, SCORE_MAP_KEY, EvalSettings, Executor, InlineExecutor, MethodJob,
                            RowContext, WorkUnit, describe_error, failed_row, make_unit)
from harness.store import RunStore, StoreError, os_problem, partition_value
from methods.base import MethodSpec


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


# The no-argument run on the embedded default is a smoke benchmark that must finish in minutes on
# 2 CPUs (and keeps score maps); any user dataset gets the full protocol (all queries, 5 support draws).
SYNTHETIC_QUICK = {"seeds": 1, "max_queries_per_class": 4, "normal_queries_per_object": 40}
CALIBRATION_NORMALS = 20


def is_quick_dataset(dataset: str) -> bool:
    """The embedded synthetic default (``synthetic[:seed]``): quick protocol, score maps kept."""
    return str(dataset).startswith("synthetic")


def manifest_defaults(dataset: str, shots: tuple[int, ...] = (1,), seeds: int | None = None,
                      normal_fraction: float = 0.2, fad: bool = False, fold: str | None = None,
                      max_queries_per_class: int | None = None, base_seed: int = 0,
                      normal_queries_per_object: int | None = None,
                      calibration_normals: int | None = None, classes: tuple[str, ...] = ()) -> ManifestSettings:
    """The manifest settings of ``bench.py run`` (and ``ablate``): an option left None takes its
    default, the quick protocol's on the embedded synthetic default."""
    quick = is_quick_dataset(dataset)
    if seeds is None:
        seeds = SYNTHETIC_QUICK["seeds"] if quick else 5
    if max_queries_per_class is None and quick:
        max_queries_per_class = SYNTHETIC_QUICK["max_queries_per_class"]
    if normal_queries_per_object is None and quick:
        normal_queries_per_object = SYNTHETIC_QUICK["normal_queries_per_object"]
    if calibration_normals is None:
        calibration_normals = CALIBRATION_NORMALS
    return ManifestSettings(tuple(shots), seeds, normal_fraction, fad, fold, max_queries_per_class, base_seed,
                            calibration_normals, normal_queries_per_object, tuple(classes))


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

    @property
    def errors_log(self) -> Path:
        """Where the failed episodes' tracebacks are (``RunStore.errors_log``)."""
        return RunStore(self.run_dir).errors_log


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


def record_skipped_inputs(dataset, store: RunStore) -> Path | None:
    """Write the dataset files the adapter left out to the store's ``skipped_inputs.tsv``; one summary line."""
    skipped = dataset.meta.get("skipped") or []
    if not skipped:
        return None
    lines = ["path\treason\tproblem"] + [
        "\t".join(str(item.get(key, "")).replace("\t", " ").replace("\n", " ") for key in ("path", "reason", "problem"))
        for item in skipped]
    path = store.write_skipped_inputs(lines)
    reasons = Counter(item.get("reason", "?") for item in skipped)
    by_reason = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(reasons.items()))
    warn(f"{len(skipped)} dataset file(s) left out ({by_reason}); list: {path}")
    return path


def check_resumable(store: RunStore, previous: RunRecord | None, config: RunConfig, manifest) -> None:
    """Refuse to add to a run folder made by another manifest, data, or evaluation settings."""
    run_dir = store.run_dir
    if previous is None:
        if any(store.part_files(spec.name) for spec in config.methods):
            raise RunError(f"{run_dir}: holds episode parts but no run.json; cannot tell how they were chunked, "
                           "use another --out")
        return
    if previous.manifest_id not in (None, manifest.manifest_id):
        before = previous.manifest_params
        ignore = ("data_sha256", "dataset_root")
        same_sampling = {k: v for k, v in before.items() if k not in ignore} == \
            {k: v for k, v in manifest.params.items() if k not in ignore}
        if same_sampling and before.get("data_sha256") != manifest.params.get("data_sha256"):
            raise RunError(
                f"{run_dir}: the dataset's images or masks changed since this run was made (manifest "
                f"{previous.manifest_id}, now {manifest.manifest_id}); resuming would mix labels, use another --out")
        raise RunError(
            f"{run_dir}: holds manifest {previous.manifest_id}, this command makes {manifest.manifest_id}; "
            "use another --out"
        )
    settings_record = json.loads(json.dumps(asdict(config.settings)))
    if previous.eval_settings not in (None, settings_record):
        raise RunError(f"{run_dir}: was scored with other evaluation settings {previous.eval_settings}; use another --out")


def check_config(config: RunConfig) -> None:
    """The options a run refuses before any work (one line each)."""
    if not config.methods:
        raise RunError("no method given (--methods)")
    if config.chunk_size is not None and config.chunk_size < 1:
        raise RunError(f"--chunk-size must be at least 1, got {config.chunk_size}")
    if config.episode_timeout_s is not None and not config.episode_timeout_s >= 0:
        raise RunError(f"--episode-timeout must be 0 (none) or a number of seconds, got {config.episode_timeout_s}")
    for spec in config.methods:
        if partition_value(spec.name) != spec.name:
            raise RunError(f"method name '{spec.name}' cannot be a results folder name (use letters, digits, _ . + -)")
    if len({s.name for s in config.methods}) != len(config.methods):
        raise RunError("a method is listed twice in --methods")


def check_methods(methods: Sequence[MethodSpec]) -> dict[str, tuple[str, str, dict]]:
    """Every method's options and weights checked once (``MethodSpec.check``), before any data is
    read; ``{name: method_identity}``."""
    return {spec.name: method_identity(spec, spec.check()) for spec in methods}


@dataclass(frozen=True)
class Chunking:
    """How a run's episodes are cut into work units (one Parquet part each)."""

    size: int
    order: str  # harness.run_record.CHUNK_ORDERS
    chunks: tuple[tuple, ...]

    @property
    def rows(self) -> dict[int, int]:
        return {index: len(chunk) for index, chunk in enumerate(self.chunks)}


@dataclass
class MethodWork:
    """What is left to do for one method: the units to compute and the episodes already stored."""

    spec: MethodSpec
    units: list[WorkUnit]
    stored: int  # episodes stored and kept (transient errors are computed again)


class Run:
    """One run, opened once: its config, dataset, manifest, method identities and store.

    ``Run.open(config)`` checks the methods (weights included), loads the dataset and builds or
    reads the manifest, each once; ``plan()`` (``bench.py run`` prints it, ``--dry-run`` stops
    there) and ``execute()`` then share the object and one job generator (:meth:`pending`), so
    the plan counts exactly the units the run computes.
    """

    def __init__(self, config: RunConfig, dataset, manifest, identities: dict[str, tuple[str, str, dict]]):
        self.config, self.dataset, self.manifest, self.identities = config, dataset, manifest, identities
        run_dir = Path(config.out) if config.out else Path(config.results_root) / f"{dataset.name}-{manifest.manifest_id[:8]}"
        self.store = RunStore(run_dir)
        self.by_id = dataset.by_id()

    @classmethod
    def open(cls, config: RunConfig) -> "Run":
        from datasets.base import load_dataset

        check_config(config)
        identities = check_methods(config.methods)  # fail before any work
        dataset = load_dataset(config.dataset, config.dataset_format, follow_links=config.follow_links)
        manifest = load_or_build_manifest(config, dataset)
        if not manifest.episodes:
            raise RunError(f"{config.dataset}: the manifest has no episodes (check --fold and the dataset's classes)")
        run = cls(config, dataset, manifest, identities)
        missing = {i for e in manifest.episodes for i in (*e.support_ids, e.query_id)} - set(run.by_id)
        if missing:
            raise RunError(f"manifest {manifest.manifest_id} names {len(missing)} images not in {config.dataset} "
                           f"(e.g. {sorted(missing)[0]})")
        check_trained_classes(config.methods, identities, dataset, manifest, config.allow_trained_classes, warn)
        return run

    @property
    def run_dir(self) -> Path:
        return self.store.run_dir

    def chunking(self, previous: RunRecord | None, workers: int) -> Chunking:
        """The chunk plan; a resumed run keeps its size and order (run.json)."""
        previous = previous or RunRecord()
        size = self.config.chunk_size or previous.chunk_size or choose_chunk_size(len(self.manifest.episodes), workers)
        if previous.chunk_size not in (None, size):
            raise RunError(f"{self.run_dir}: was chunked by {previous.chunk_size} episodes; drop --chunk-size to resume")
        order = previous.resolved_chunk_order
        ordered = order_episodes(self.manifest.episodes, order)
        return Chunking(size, order, tuple(tuple(ordered[i : i + size]) for i in range(0, len(ordered), size)))

    def pending(self, previous: RunRecord | None, chunking: Chunking, *, dry: bool) -> Iterator[MethodWork]:
        """Per method, the units not stored yet (resume, ``--overwrite``), in method order.

        ``dry`` (the plan): reads part footers only and changes nothing; otherwise (the run, under
        the lock) verifies each part's checksum, moves bad parts aside and, with
        ``--overwrite always``, clears the method's results first."""
        config, store, chunks = self.config, self.store, chunking.chunks
        stored_methods = previous.methods if previous else {}
        for spec in config.methods:
            config_hash = self.identities[spec.name][0]
            stored = stored_methods.get(spec.name)
            if config.overwrite == "always":
                if not dry:
                    store.clear_method(spec.name)
                done = set()
            else:
                if stored and stored.get("config_hash") != config_hash and store.part_files(spec.name):
                    raise RunError(
                        f"{self.run_dir}: method '{spec.name}' was run with another config or weights "
                        f"({stored.get('config_hash')} vs {config_hash}); use --overwrite always or another --out")
                done = (store.stored_chunks(spec.name, chunking.rows) if dry
                        else store.done_chunks(spec.name, chunking.rows, warn=warn))
            if config.overwrite == "never" and done:
                raise RunError(f"{self.run_dir}: method '{spec.name}' already has results and --overwrite never was given")
            try:
                retry = transient_rows(store, spec.name, done, warn=None if dry else warn)
            except StoreError:
                if not dry:
                    raise
                retry = {}  # a part whose footer reads but not its rows: the run's checksum check moves it aside
            normal = int(spec.resolved_options().get("normal_supports", 0) or 0)  # harness.normal_supports
            pool = normal_support_pool(self.manifest.episodes, self.dataset.records) if normal else None
            units = [make_unit(spec.name, i, chunk, self.by_id, retry.get(i), normal, pool)
                     for i, chunk in enumerate(chunks) if i not in done or i in retry]
            kept = sum(len(chunks[i]) for i in done if i < len(chunks)) - sum(map(len, retry.values()))
            yield MethodWork(spec, units, kept)

    def plan(self) -> RunPlan:
        """Episodes per method to compute and stored, and a time estimate; nothing is written."""
        from harness.plan import MethodPlan, composition, guess_workers, stored_latency

        config, manifest = self.config, self.manifest
        previous = self.store.read_record()
        check_resumable(self.store, previous, config, manifest)
        workers = guess_workers(config)
        plan = RunPlan(self.run_dir, manifest.manifest_id, len(manifest.episodes), workers,
                       composition=composition(manifest.episodes),
                       skipped_classes=dict(manifest.params.get("skip_reasons") or {}))
        for work in self.pending(previous, self.chunking(previous, workers), dry=True):
            seconds, n = stored_latency([self.run_dir, Path(config.results_root)], work.spec.name)
            plan.methods.append(MethodPlan(work.spec.name, len(manifest.episodes), work.stored, seconds, n))
        return plan

    def execute(self, progress_out=sys.stderr) -> RunSummary:
        """Lock the run folder, chunk, record, run every method, finish run.json."""
        from harness.episodes import write_manifest

        started = time.time()
        with self.store.lock(warn=warn):
            previous = self.store.read_record()
            check_resumable(self.store, previous, self.config, self.manifest)
            write_manifest(self.manifest, self.store.manifest_dir)
            record_skipped_inputs(self.dataset, self.store)
            executor = make_executor(self.config)
            try:
                return self._run_methods(previous, executor, progress_out, started)
            finally:
                executor.close()

    def _run_methods(self, previous: RunRecord | None, executor: Executor, progress_out, started: float) -> RunSummary:
        """Chunk the episodes, record the run, build one job per method, run them, finish run.json."""
        config, store, manifest = self.config, self.store, self.manifest
        chunking = self.chunking(previous, executor.workers)
        record = start_record(config, self.dataset, manifest, previous, executor, chunking)
        jobs, summaries = [], []
        for work in self.pending(previous, chunking, dry=False):
            name = work.spec.name
            config_hash, options_json, identity = self.identities[name]
            record.methods[name] = {**identity, "config_hash": config_hash}
            summary = MethodSummary(name, planned=len(manifest.episodes), skipped=work.stored)
            context = RowContext(record.run_id, manifest.manifest_id, self.dataset.name, config_hash, options_json)
            writer = make_writer(store, summary, identity.get("trained_classes_scored", []))
            jobs.append(MethodJob(work.spec, context, work.units, config.save_predictions, writer))
            summaries.append(summary)
        record.counts = {"planned": len(manifest.episodes) * len(config.methods)}
        attach_file_hashes(jobs, manifest)
        store.write_record(record)
        self._run_jobs(executor, jobs, summaries, record, progress_out, started)
        return RunSummary(self.run_dir, manifest.manifest_id, len(manifest.episodes), summaries, time.time() - started)

    def _run_jobs(self, executor: Executor, jobs, summaries, record: RunRecord, progress_out, started: float) -> None:
        """Run every job on the executor with a progress bar; run.json ends complete, incomplete
        (units lost) or interrupted (an exception, re-raised)."""
        total = sum(len(u.episodes) for job in jobs for u in job.units)
        progress = make_progress(total, progress_out)
        record.status = "interrupted"
        failure: BaseException | None = None
        try:
            if any(job.units for job in jobs):
                # One worker set for all methods: each chunk's units of every method run back to back
                # on one worker, so a query's features are computed once (methods._common).
                progress.set_description(",".join(job.spec.name for job in jobs if job.units))
                executor.run_all(jobs, self.config.settings, progress.update_rows)
            for job, summary in zip(jobs, summaries):
                for unit, reason in executor.lost:
                    if unit.method == job.spec.name:
                        summary.lost += len(unit.episodes)
                        summary.errors[f"not stored, re-run to retry: {reason}"] = len(unit.episodes)
            record.status = "complete" if not any(s.lost for s in summaries) else "incomplete"
        except BaseException as exc:
            failure = exc
            raise
        finally:
            progress.close()
            record_backbone_work(record, executor)
            self._finish_record(record, started, failure)

    def _finish_record(self, record: RunRecord, started: float, failure: BaseException | None) -> None:
        """Write the final run.json; while another error is on its way out, only warn if that fails too."""
        record.ended_at = datetime.now(timezone.utc).isoformat()
        record.elapsed_s = (record.elapsed_s or 0.0) + (time.time() - started)
        record.counts = count_stored(self.store, [s.name for s in self.config.methods], len(self.manifest.episodes))
        if record.status == "complete" and record.counts.get("retry_on_resume"):
            record.status = "incomplete"  # transient errors stored: the same command retries them
        try:
            self.store.write_record(record)
        except StoreError as exc:
            if failure is None:
                raise
            warn(f"{exc} (run.json not updated; the stored parts are kept)")


def execute(config: RunConfig, progress_out=sys.stderr) -> RunSummary:
    """``Run.open(config).execute()``: the run without printing a plan (tests, benchmarks)."""
    return Run.open(config).execute(progress_out)


def order_episodes(episodes: Sequence, chunk_order: str) -> list:
    """Episodes in chunking order. ``"query"``: grouped by (class, query image), manifest order
    inside a group, so every episode (seed, shot) of one query lands in one chunk (or neighbouring
    chunks) and runs on one worker after the others; ``"manifest"``: as listed (runs made before
    this order existed, so a resume chunks them as before)."""
    if chunk_order == "manifest":
        return list(episodes)
    return sorted(episodes, key=lambda e: (e.object, e.category, e.query_id))


def start_record(config: RunConfig, dataset, manifest, previous: RunRecord | None, executor: Executor,
                 chunking: Chunking) -> RunRecord:
    """run.json of this invocation before any episode runs (provenance, executor, invocations);
    what ``previous`` holds and this invocation does not set is kept."""
    previous = previous or RunRecord()
    now = datetime.now(timezone.utc)
    git, hardware = provenance.git_info(), provenance.hardware()
    # Each invocation (first run, resumes) is recorded, so a resumed run shows every code version.
    invocation = {"started_at": now.isoformat(), "command": config.command, "git_sha": git["sha"],
                  "git_dirty": git["dirty"], "host": hardware["hostname"]}
    return replace(
        previous,
        run_id=previous.run_id or f"{now:%Y%m%dT%H%M%SZ}-{manifest.manifest_id[:8]}",
        schema_version=SCHEMA_VERSION,
        command=config.command,
        dataset={"spec": config.dataset, "name": dataset.name, "root": str(dataset.root), "format": dataset.format,
                 "meta": {k: v for k, v in dataset.meta.items() if not isinstance(v, (list, dict))}},
        manifest_id=manifest.manifest_id,
        manifest_params=manifest.params,
        eval_settings=asdict(config.settings),
        chunk_size=chunking.size,
        chunk_order=chunking.order,
        episode_timeout_s=config.episode_timeout_s or None,
        git=git,
        packages=provenance.package_versions(),
        hardware=hardware,
        status="running",
        ended_at=None,
        executor={"name": executor.name, "workers": executor.workers, "cpus_per_worker": executor.cpus_per_worker,
                  "gpus_per_worker": executor.gpus_per_worker, "cluster_resources": executor.resources},
        started_at=previous.started_at or now.isoformat(),
        invocations=[*previous.invocations, invocation],
        methods=dict(previous.methods),
    )

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


def transient_rows(store: RunStore, method: str, done: set[int], warn=warn) -> dict[int, list[int]]:
    """``{chunk: positions}`` of the stored rows whose error is transient (``harness.status``):
    a resume computes those episodes again and merges them into their part (``warn``: one line
    saying so, None: quiet)."""
    from harness.status import is_transient

    retry = {}
    for index in sorted(done):
        statuses = store.part_statuses(method, index)
        positions = [p for p, status in enumerate(statuses or ()) if is_transient(status)]
        if positions:
            retry[index] = positions
    if retry and warn is not None:
        n = sum(map(len, retry.values()))
        warn(f"{method}: {n} stored episode(s) failed on a transient cause (disk, memory, read error, "
             "timeout, dead worker); computing them again")
    return retry


def record_backbone_work(record: RunRecord, executor: Executor) -> None:
    """run.json: per method (this invocation) backbone passes, unique views and their ratio, and
    the device it ran on; ``backbone_views`` adds the ratio across methods ("all")."""
    from harness.runner import summarise_stats

    views = summarise_stats(executor.view_stats or {})
    devices = executor.devices or {}
    for name, entry in record.methods.items():
        if name in views:
            entry["backbone_views"] = views[name]
        if devices.get(name):
            entry["device"] = devices[name]
    if views:
        record.backbone_views = views


def store_maps(store: RunStore, method: str, rows: list[dict]) -> list[dict]:
    """Write the 8-bit score maps the workers returned with ``rows`` as PNGs (``pred_path``); a
    map that cannot be written (a full disk) makes its episode an error row (transient: retried on
    resume)."""
    out = []
    for row in rows:
        score = row.pop(SCORE_MAP_KEY, None)
        if score is not None:
            try:
                row["pred_path"] = str(store.write_prediction(method, row["episode_id"], score))
            except Exception as exc:  # noqa: BLE001 - e.g. a full disk while writing the PNG
                row = failed_row(row, describe_error(exc))
                row["error_trace"] = f"writing the score map of {row['episode_id']}: {describe_error(exc)}"
        out.append(row)
    return out


def make_writer(store: RunStore, summary: MethodSummary, trained_classes=()):
    """``MethodJob.done_rows``: a unit's rows into its part (merged into the stored part when only
    some of its episodes ran again), their maps into PNGs, the failures into errors.log;
    ``trained_classes``: the classes the method trained on (``harness.class_split``; None =
    unknown), which set each row's ``trained_class``."""

    def write(unit: WorkUnit, rows: list[dict]) -> None:
        rows = store_maps(store, unit.method, rows)
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
                store.append_errors("".join(lines))
            except OSError as exc:
                warn(f"{store.errors_log}: cannot append error details ({os_problem(exc)}); the rows keep their status")

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
