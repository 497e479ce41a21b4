"""One benchmark run end to end: dataset -> manifest -> executor -> store (+ run.json).

Re-running the same command resumes: chunks whose Parquet part exists are skipped, so a killed
run ends, after a re-run, with every episode exactly once.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from harness import provenance
from harness.runner import EvalSettings, InlineExecutor, MethodJob, RowContext, WorkUnit, make_unit
from harness.store import RunStore, StoreError, partition_value
from methods.base import MethodError, MethodSpec, REPO_ROOT


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
    gpus_per_worker: float = 0.0
    chunk_size: int | None = None
    save_predictions: bool = False
    settings: EvalSettings = field(default_factory=EvalSettings)
    command: str = ""


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
    weight_shas = {key: provenance.file_sha256(path) for key, path in sorted(weights.items())}
    identity = {"name": spec.name, "target": spec.entry().target, "options": options, "weights_sha256": weight_shas}
    return provenance.canonical_hash(identity), json.dumps(options, sort_keys=True, default=str), {
        **identity,
        "weights": {k: str(v) for k, v in weights.items()},
        # "native" (a fixed threshold) or "deployable" (fitted per episode on support data)
        "threshold_protocol": getattr(spec.entry().load_class(), "threshold_protocol", None),
    }


def load_or_build_manifest(config: RunConfig, dataset):
    from harness.episodes import build_manifest, read_manifest

    if config.manifest_path:
        return read_manifest(Path(config.manifest_path))
    settings = config.manifest
    fold = settings.fold if settings.fold is not None else default_fold(dataset)
    if fold == "all":
        fold = None
    return build_manifest(
        dataset,
        shots=settings.shots,
        seeds=settings.seeds,
        normal_fraction=settings.normal_fraction,
        fad=settings.fad,
        fold=fold,
        max_queries_per_class=settings.max_queries_per_class,
        base_seed=settings.base_seed,
    )


def execute(config: RunConfig, progress_out=sys.stderr) -> RunSummary:
    from datasets.base import load_dataset
    from harness.episodes import write_manifest

    started = time.time()
    if not config.methods:
        raise RunError("no method given (--methods)")
    if config.chunk_size is not None and config.chunk_size < 1:
        raise RunError(f"--chunk-size must be at least 1, got {config.chunk_size}")
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

    dataset = load_dataset(config.dataset, config.dataset_format)
    manifest = load_or_build_manifest(config, dataset)
    if not manifest.episodes:
        raise RunError(f"{config.dataset}: the manifest has no episodes (check --fold and the dataset's classes)")
    by_id = dataset.by_id()
    missing = {i for e in manifest.episodes for i in (*e.support_ids, e.query_id)} - set(by_id)
    if missing:
        raise RunError(f"manifest {manifest.manifest_id} names {len(missing)} images not in {config.dataset} (e.g. {sorted(missing)[0]})")

    run_dir = Path(config.out) if config.out else Path(config.results_root) / f"{dataset.name}-{manifest.manifest_id[:8]}"
    store = RunStore(run_dir)
    previous = store.read_json()
    if not previous and any(store.done_chunks(spec.name) for spec in config.methods):
        raise RunError(f"{run_dir}: holds episode parts but no run.json; cannot tell how they were chunked, use another --out")
    if previous and previous.get("manifest_id") not in (None, manifest.manifest_id):
        raise RunError(
            f"{run_dir}: holds manifest {previous['manifest_id']}, this command makes {manifest.manifest_id}; "
            "use another --out"
        )
    settings_record = asdict(config.settings)
    if previous and previous.get("eval_settings") not in (None, json.loads(json.dumps(settings_record))):
        raise RunError(f"{run_dir}: was scored with other evaluation settings {previous['eval_settings']}; use another --out")
    write_manifest(manifest, store.manifest_dir)

    executor = make_executor(config)
    workers = getattr(executor, "workers", 1)
    chunk_size = config.chunk_size or previous.get("chunk_size") or choose_chunk_size(len(manifest.episodes), workers)
    if previous.get("chunk_size") not in (None, chunk_size):
        raise RunError(f"{run_dir}: was chunked by {previous['chunk_size']} episodes; drop --chunk-size to resume")
    chunks = [tuple(manifest.episodes[i : i + chunk_size]) for i in range(0, len(manifest.episodes), chunk_size)]

    run_id = previous.get("run_id") or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{manifest.manifest_id[:8]}"
    stored_methods = dict(previous.get("methods", {}))
    record = {
        **previous,
        "run_id": run_id,
        "schema_version": 1,
        "command": config.command,
        "dataset": {"spec": config.dataset, "name": dataset.name, "root": str(dataset.root), "format": dataset.format,
                    "meta": {k: v for k, v in dataset.meta.items() if not isinstance(v, (list, dict))}},
        "manifest_id": manifest.manifest_id,
        "manifest_params": manifest.params,
        "eval_settings": settings_record,
        "chunk_size": chunk_size,
        "git": provenance.git_info(),
        "packages": provenance.package_versions(),
        "hardware": provenance.hardware(),
        "status": "running",
        "ended_at": None,
        "executor": {"name": executor.name, "workers": workers, "cpus_per_worker": getattr(executor, "cpus_per_worker", None),
                     "gpus_per_worker": config.gpus_per_worker, "cluster_resources": getattr(executor, "resources", None)},
        "started_at": previous.get("started_at") or datetime.now(timezone.utc).isoformat(),
    }
    # Each invocation (first run, resumes) is recorded, so a resumed run shows every code version.
    earlier = previous.get("invocations") if isinstance(previous.get("invocations"), list) else []
    record["invocations"] = [*earlier, {
        "started_at": datetime.now(timezone.utc).isoformat(), "command": config.command,
        "git_sha": record["git"]["sha"], "git_dirty": record["git"]["dirty"], "host": record["hardware"]["hostname"]}]

    jobs, summaries = [], []
    for spec in config.methods:
        config_hash, options_json, identity = identities[spec.name]
        stored = stored_methods.get(spec.name)
        if config.overwrite == "always":
            store.clear_method(spec.name)
        elif stored and stored.get("config_hash") != config_hash and store.done_chunks(spec.name):
            raise RunError(
                f"{run_dir}: method '{spec.name}' was run with another config or weights "
                f"({stored.get('config_hash')} vs {config_hash}); use --overwrite always or another --out"
            )
        done = store.done_chunks(spec.name)
        if config.overwrite == "never" and done:
            raise RunError(f"{run_dir}: method '{spec.name}' already has results and --overwrite never was given")
        stored_methods[spec.name] = {**identity, "config_hash": config_hash}
        summary = MethodSummary(spec.name, planned=len(manifest.episodes))
        summary.skipped = sum(len(chunks[i]) for i in done if i < len(chunks))
        units = [make_unit(spec.name, i, chunk, by_id) for i, chunk in enumerate(chunks) if i not in done]
        context = RowContext(run_id, manifest.manifest_id, dataset.name, config_hash, options_json)
        predictions = str(store.predictions_dir / spec.name) if config.save_predictions else None
        jobs.append(MethodJob(spec, context, units, predictions, make_writer(store, summary)))
        summaries.append(summary)
    record["methods"] = stored_methods
    record["counts"] = {"planned": len(manifest.episodes) * len(config.methods)}
    store.write_json(record)

    total = sum(len(u.episodes) for job in jobs for u in job.units)
    progress = make_progress(total, progress_out)
    record["status"] = "interrupted"
    try:
        for job, summary in zip(jobs, summaries):
            if job.units:
                progress.set_description(job.spec.name)
                executor.run(job, config.settings, progress.update_rows)
            for unit, reason in getattr(executor, "lost", []):
                if unit.method == job.spec.name:
                    summary.lost += len(unit.episodes)
                    summary.errors[f"not stored, re-run to retry: {reason}"] = len(unit.episodes)
        record["status"] = "complete" if not any(s.lost for s in summaries) else "incomplete"
    finally:
        progress.close()
        record["ended_at"] = datetime.now(timezone.utc).isoformat()
        record["elapsed_s"] = record.get("elapsed_s", 0.0) + (time.time() - started)
        record["counts"] = count_stored(store, [s.name for s in config.methods], len(manifest.episodes))
        store.write_json(record)
    return RunSummary(run_dir, manifest.manifest_id, len(manifest.episodes), summaries, time.time() - started)


def make_writer(store: RunStore, summary: MethodSummary):
    def write(unit: WorkUnit, rows: list[dict]) -> None:
        errors_log = store.run_dir / "errors.log"
        for row in rows:
            trace = row.pop("error_trace", None)
            if row["status"] == "ok":
                summary.ok += 1
                continue
            summary.failed += 1
            summary.errors[row["status"]] = summary.errors.get(row["status"], 0) + 1
            with open(errors_log, "a") as log:
                log.write(f"[{unit.method}] episode {row['episode_id']} (query {row['query_id']}): {row['status']}\n")
                if trace:
                    log.write(trace + "\n")
        store.write_part(unit.method, unit.chunk_index, rows)

    return write


def count_stored(store: RunStore, methods: Sequence[str], planned_per_method: int) -> dict:
    from harness.store import read_run

    try:
        frame = read_run(store.run_dir, columns=["method", "status"])
    except (StoreError, OSError):
        return {"planned": planned_per_method * len(methods), "done": 0, "failed": 0}
    frame = frame[frame["method"].isin([partition_value(m) for m in methods])]
    failed = int((frame["status"] != "ok").sum())
    return {"planned": planned_per_method * len(methods), "done": int(len(frame)), "failed": failed,
            "ok": int(len(frame)) - failed}


def auto_workers(resources: dict, gpus_per_worker: float) -> int:
    """One worker per GPU slot; on CPUs one per core up to 4 cores, then one per 2 cores."""
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0.0) // gpus_per_worker + 1e-9))
    cpus = int(resources.get("CPU", 1.0))
    return max(1, cpus if cpus <= 4 else cpus // 2)


def make_executor(config: RunConfig):
    if config.executor == "inline":
        return InlineExecutor(threads=int(config.cpus_per_worker) if config.cpus_per_worker else None)
    if config.executor != "ray":
        raise RunError(f"unknown executor '{config.executor}' (ray or inline)")
    from harness.ray_executor import RayExecutor, check_resources, connect

    resources = connect(config.address)
    workers = config.workers or auto_workers(resources, config.gpus_per_worker)
    if workers < 1:
        raise RunError("--workers must be at least 1")
    cpus = config.cpus_per_worker or max(1.0, float(int(resources.get("CPU", 1.0) // workers)))
    check_resources(resources, workers, cpus, config.gpus_per_worker)
    executor = RayExecutor(workers, cpus, config.gpus_per_worker)
    executor.resources = resources
    return executor


class make_progress:
    """tqdm bar over episodes (rate and ETA), counting failures in the postfix."""

    def __init__(self, total: int, out):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="ep", file=out, dynamic_ncols=True, smoothing=0.1,
                        disable=None if out is not None else True)
        self.failed = 0

    def set_description(self, text: str) -> None:
        self.bar.set_description(text)

    def update_rows(self, count: int, rows: list[dict]) -> None:
        self.failed += sum(1 for r in rows if r["status"] != "ok")
        if self.failed:
            self.bar.set_postfix(failed=self.failed)
        self.bar.update(count)

    def close(self) -> None:
        self.bar.close()
