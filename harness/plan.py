"""What a run will do before it starts: episodes per method and a rough time estimate.

``harness.run.Run.plan`` fills a :class:`RunPlan` from the same job generator the run executes
(``Run.pending``); ``bench.py run`` prints it before any computation, and ``--dry-run`` stops after it. The
estimate uses stored latencies: the median per-episode time (``latency_s + load_s`` of ok rows)
of the most recent Parquet parts of the same method under the results folder (the run folder
itself included), divided over the workers. It leaves out start-up and model loading, and an
earlier run on another dataset or a less loaded machine makes it optimistic: a rough guide.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MAX_PARTS = 40  # most recent parts per method read for latencies


@dataclass
class MethodPlan:
    method: str
    planned: int
    stored: int
    seconds_per_episode: float | None  # None: no stored latency of this method
    latency_episodes: int = 0  # stored episodes behind the median

    @property
    def to_compute(self) -> int:
        return max(0, self.planned - self.stored)


@dataclass
class RunPlan:
    run_dir: Path
    manifest_id: str
    episodes: int
    workers: int
    methods: list[MethodPlan] = field(default_factory=list)
    composition: str = ""  # "32 defective, 120 normal, 160 calibration"
    skipped_classes: dict[str, str] = field(default_factory=dict)  # class id -> why it makes no episode

    @property
    def estimated_s(self) -> float | None:
        """Seconds for the methods with a stored latency; None when none has one."""
        known = [m.to_compute * m.seconds_per_episode for m in self.methods if m.seconds_per_episode is not None]
        return sum(known) / max(1, self.workers) if known else None


def stored_latency(results_roots: list[Path], method: str) -> tuple[float | None, int]:
    """Median seconds per episode (latency + image loading, ok rows) over the newest stored parts
    of ``method`` in the run folders at and directly under ``results_roots``; ``(None, 0)`` when
    there are none."""
    import numpy as np
    import pyarrow.parquet as pq

    from harness.store import RunStore

    parts = {path for root in results_roots for store in RunStore.runs_under(root)
             for path in store.part_files(method).values()}
    parts = sorted(parts, key=lambda p: p.stat().st_mtime, reverse=True)[:MAX_PARTS]
    values = []
    for part in parts:
        try:
            table = pq.read_table(part, columns=["status", "latency_s", "load_s"]).to_pydict()
        except Exception:
            continue
        values += [lat + (load or 0.0) for status, lat, load in zip(table["status"], table["latency_s"], table["load_s"])
                   if status == "ok" and lat is not None]
    return (float(np.median(values)), len(values)) if values else (None, 0)


def auto_workers(resources: dict, gpus_per_worker: float) -> int:
    """One worker per GPU slot; on CPUs one per core up to 4 cores, then one per 2 cores."""
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0.0) // gpus_per_worker + 1e-9))
    cpus = int(resources.get("CPU", 1.0))
    return max(1, cpus if cpus <= 4 else cpus // 2)


def guess_workers(config) -> int:
    """The workers ``harness.run.make_executor`` would start, without starting Ray."""
    if config.executor == "inline":
        return 1
    if config.workers:
        return config.workers
    if config.address or os.environ.get("RAY_ADDRESS"):
        return 1  # unknown cluster: a conservative guess
    return auto_workers({"CPU": float(os.cpu_count() or 1)}, getattr(config, "gpus_per_worker", 0.0) or 0.0)


def composition(episodes) -> str:
    """``"32 defective, 120 normal, 160 calibration"`` (and unlabelled, when there are any)."""
    kinds = [("defective", lambda e: not e.query_is_normal and e.role == "test"),
             ("normal", lambda e: e.query_is_normal and e.role == "test"),
             ("calibration", lambda e: e.role == "calibration")]
    if any(e.role == "unlabelled" for e in episodes):  # predicted and stored, not scored
        kinds.append(("unlabelled", lambda e: e.role == "unlabelled"))
    return ", ".join(f"{sum(map(test, episodes))} {name}" for name, test in kinds)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def skipped_classes_line(skip_reasons: dict[str, str], shown: int = 8) -> str | None:
    """One line naming the classes that make no episode and why (``params["skip_reasons"]``)."""
    if not skip_reasons:
        return None
    items = [f"{class_id} ({why})" for class_id, why in sorted(skip_reasons.items())]
    more = f", and {len(items) - shown} more (manifest params skip_reasons)" if len(items) > shown else ""
    return f"left out: {len(items)} class(es) make no episode: " + ", ".join(items[:shown]) + more


def format_plan(plan: RunPlan) -> str:
    composition = f" ({plan.composition})" if plan.composition else ""
    lines = [f"plan: {plan.episodes} episodes per method{composition} (manifest {plan.manifest_id[:8]}), "
             f"{plan.workers} worker(s), run folder {plan.run_dir}"]
    skipped = skipped_classes_line(plan.skipped_classes)
    if skipped:
        lines.append(skipped)
    for m in plan.methods:
        if m.seconds_per_episode is None:
            rate = "no stored latency of this method: time unknown"
        else:
            rate = (f"~{m.seconds_per_episode:.2f} s/episode (median of {m.latency_episodes} stored episodes)"
                    f" -> ~{_duration(m.to_compute * m.seconds_per_episode / max(1, plan.workers))}")
        lines.append(f"  {m.method:<20} {m.to_compute:>6} to compute, {m.stored:>6} already stored   {rate}")
    estimate = plan.estimated_s
    unknown = [m.method for m in plan.methods if m.seconds_per_episode is None and m.to_compute]
    if estimate is None:
        lines.append("estimated time: unknown (no earlier run of these methods in the results folder)")
    else:
        lines.append(f"estimated time: ~{_duration(estimate)} plus start-up and model loading"
                     + (f" (not counting {', '.join(unknown)})" if unknown else "")
                     + "; from stored latencies of earlier runs, rough on a loaded machine")
    return "\n".join(lines)
