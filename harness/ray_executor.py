"""Ray Core executor: one long-lived actor set per run, driver-side scheduling and Parquet writes.

One actor per worker slot holds an EpisodeWorker with every method of the run (weights loaded once
per actor; methods sharing a backbone share its model and feature cache). Work is scheduled in
chunk groups (all methods' units of one chunk, ``runner.interleave``) that run on one actor in
sequence; chunks are dealt to actors in contiguous ranges (chunks are ordered by class and query,
so an actor keeps seeing the same images), and an idle actor takes the tail of the longest
remaining range. The driver keeps at most
``in_flight`` chunks per actor and waits with a timeout. A chunk whose actor died is requeued in
two halves (``SplitUnits`` gathers their rows back into one part), so an episode that kills its
worker ends alone and, after ``max_attempts`` deaths, becomes its own ``WorkerDied`` error row. An
actor whose ``predict`` timed out (``--episode-timeout``) is restarted. An actor that cannot be
restarted because the cluster lost the room for it (a lost node) is given up at once and its
chunks go to the others. Resource requests are checked against the cluster before anything is
submitted, because a request no node can satisfy makes Ray wait forever.

A local cluster started here dies with the run: ``RayExecutor.close`` shuts it down (also on
SIGTERM and Ctrl-C, which unwind through it), and its process ids are recorded in
``$TMPDIR/sofs-bench-ray/<driver pid>.json`` with their start times, so the next run reaps what a
``kill -9`` left behind, and only that.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from harness.io import REPO_ROOT, pid_alive, short_error
from harness.runner import (DEFAULT_EPISODE_TIMEOUT_S, EpisodeTimeout, EpisodeWorker, EvalSettings, MethodJob,
                            WorkerDied, WorkUnit, describe_error, error_row, interleave, merge_stats)

RESTART_POLL_S = 2.0  # while a worker restarts, how often the driver checks the cluster still has room



class ClusterError(Exception):
    """A user-facing problem with the Ray cluster or resource request (one line)."""


def local_ray_env() -> None:
    """Keep a local cluster on 127.0.0.1 and let workers import this project."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *paths])


_started_local = False  # this process started the local cluster it is connected to


def _registry() -> Path:
    return Path(tempfile.gettempdir()) / "sofs-bench-ray"


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, ``/proc/<pid>/stat`` field 22), or
    None when it does not exist. A pid and its start time name one process: a reused pid differs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
    try:
        return int(fields[19])  # field 22 counts from 1, and fields[0] is field 3
    except (IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def reap_orphans() -> int:
    """Kill the Ray daemons of local clusters whose driver died without shutting them down.

    Only processes this project recorded, and that it can prove are the same ones, are touched:
    same host and boot, the driver gone (or its pid now another process), and each pid still
    started at the recorded time (a pid the kernel gave to another process since is left alone).
    Returns how many were killed.
    """
    killed = 0
    for record_path in sorted(_registry().glob("*.json")):
        try:
            record = json.loads(record_path.read_text())
            driver, host = int(record["driver"]), record["host"]
            pids = [(int(pid), int(start)) for pid, start in record.get("processes", [])]
            driver_start, boot = record.get("driver_start"), record.get("boot_id")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if host != socket.gethostname():
            continue  # another machine's record
        same_boot = boot is not None and boot == _boot_id()
        if same_boot and pid_alive(driver) and process_start(driver) == driver_start:
            continue  # the driver still runs
        for pid, start in pids if same_boot else ():  # before a reboot, or an old record: nothing provable
            if process_start(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except OSError:
                    pass
        record_path.unlink(missing_ok=True)
    return killed


def _record_local_cluster() -> None:
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    processes = getattr(node, "all_processes", {}) or {}
    pids = [info.process.pid for infos in processes.values() for info in infos
            if getattr(info, "process", None) is not None]
    started = [[pid, start] for pid in pids if (start := process_start(pid)) is not None]
    try:
        _registry().mkdir(parents=True, exist_ok=True)
        (_registry() / f"{os.getpid()}.json").write_text(json.dumps(
            {"driver": os.getpid(), "driver_start": process_start(os.getpid()), "host": socket.gethostname(),
             "boot_id": _boot_id(), "processes": started, "pids": pids}))
    except OSError:
        pass  # best effort: only the reaping after a kill -9 is lost


def _children() -> dict[int, list[int]]:
    """``{parent pid: [child pids]}`` of the processes on this host (from ``/proc/<pid>/stat``)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(proc.name))
    return children


def head_processes(temp_dir: str | Path) -> dict[int, int]:
    """``{pid: start time}`` of the Ray node whose temp dir is ``temp_dir`` (``ray start
    --temp-dir``): the processes naming its current session folder on their command line, and
    their descendants (agents rename themselves). Other clusters have other session folders."""
    try:
        session = os.path.realpath(Path(temp_dir) / "session_latest")
    except OSError:
        return {}
    if not os.path.isdir(session):
        return {}
    marker = session.encode()
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "cmdline").read_bytes():
                    found.add(int(proc.name))
            except OSError:
                continue
    children, queue = _children(), list(found)
    while queue:
        for child in children.get(queue.pop(), ()):
            if child not in found:
                found.add(child)
                queue.append(child)
    return {pid: start for pid in found if (start := process_start(pid)) is not None}


def stop_head(temp_dir: str | Path, grace_s: float = 10.0) -> int:
    """End the Ray node started with ``--temp-dir temp_dir`` (SIGTERM, then SIGKILL after
    ``grace_s``) and nothing else: a bare ``ray stop`` ends every Ray process of the user on the
    machine, other clusters included. Returns how many processes were signalled."""
    processes = head_processes(temp_dir)
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        for pid, start in processes.items():
            if process_start(pid) == start:  # still the process found, not a reused pid
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(process_start(p) == s for p, s in processes.items()):
            time.sleep(0.2)
    return len(processes)


def shutdown_local() -> None:
    """Shut down the local cluster this process started (no-op for a joined cluster)."""
    global _started_local
    if not _started_local:
        return
    import ray

    ray.shutdown()
    _started_local = False
    (_registry() / f"{os.getpid()}.json").unlink(missing_ok=True)


def started_local() -> bool:
    return _started_local


def connect(address: str | None, num_cpus: int | None = None) -> dict:
    """Join ``address`` (or $RAY_ADDRESS), or start a local cluster bound to 127.0.0.1."""
    global _started_local
    local_ray_env()
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        # ray.init installs its own SIGTERM handler (exit code 15); keep the caller's if it has one.
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if main_thread else None
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                reap_orphans()
                ray.init(
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    log_to_driver=False,
                )
                _started_local = True
                _record_local_cluster()
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"cannot connect to Ray at {address or 'a new local cluster'}: {exc}") from None
        finally:
            if callable(previous):
                signal.signal(signal.SIGTERM, previous)
    return {k: float(v) for k, v in ray.cluster_resources().items() if not k.startswith("node:")}


def check_resources(resources: dict, workers: int, cpus_per_worker: float, gpus_per_worker: float) -> None:
    """Refuse a request no node can satisfy (Ray would wait for it forever)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = [
        n for n in nodes
        if n["Resources"].get("CPU", 0) >= cpus_per_worker and n["Resources"].get("GPU", 0) >= gpus_per_worker
    ]
    total_gpu, total_cpu = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    if not fits:
        raise ClusterError(
            f"no Ray node has {cpus_per_worker:g} CPU and {gpus_per_worker:g} GPU for one worker "
            f"(cluster: {total_cpu:g} CPU, {total_gpu:g} GPU); lower --gpus-per-worker/--cpus-per-worker"
        )
    if workers * gpus_per_worker > total_gpu + 1e-9 or workers * cpus_per_worker > total_cpu + 1e-9:
        raise ClusterError(
            f"{workers} workers x ({cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU) exceed the cluster "
            f"({total_cpu:g} CPU, {total_gpu:g} GPU); lower --workers"
        )


class RayExecutor:
    """Work units on a set of Ray actors (see the module doc). An ``harness.runner.Executor``."""

    name = "ray"

    def __init__(
        self,
        workers: int,
        cpus_per_worker: float,
        gpus_per_worker: float = 0.0,
        in_flight: int = 2,
        max_attempts: int = 3,
        wait_timeout_s: float = 30.0,
        start_timeout_s: float = 600.0,
        resources: dict | None = None,
        owns_cluster: bool = False,
        episode_timeout_s: float | None = DEFAULT_EPISODE_TIMEOUT_S,
    ):
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.in_flight = in_flight
        self.max_attempts = max_attempts
        self.wait_timeout_s = wait_timeout_s
        self.start_timeout_s = start_timeout_s
        self.episode_timeout_s = episode_timeout_s
        self.lost: list = []  # Executor protocol; stays empty: a chunk that kills workers is split until
        # the episode at fault is alone, then stored as its WorkerDied error row
        self.resources = resources  # the cluster's, as connect() reported them
        self.owns_cluster = owns_cluster  # the run's own connect started the local cluster
        self.view_stats: dict = {}  # merge_stats of the actors, per method
        self.devices: dict = {}  # method -> device its actors ran on

    def close(self) -> None:
        """End of the run: the local cluster its ``connect`` started (``owns_cluster``) goes down."""
        if self.owns_cluster:
            shutdown_local()

    def run(self, job: MethodJob, settings: EvalSettings, progress) -> None:
        self.run_all([job], settings, progress)

    def run_all(self, jobs, settings: EvalSettings, progress) -> None:
        """Every method's units on one actor set (see the module doc)."""
        import ray

        jobs = [job for job in jobs if job.units]
        if not jobs:
            return
        by_name = {job.spec.name: job for job in jobs}
        groups = interleave(jobs)
        actors = self._start_actors(jobs, settings, min(self.workers, max(1, len(groups))))
        label = _label(by_name)
        work = ChunkQueues.split(groups, len(actors))
        pieces = SplitUnits()
        pending: dict = {}  # ObjectRef -> (actor index, WorkUnit)
        load = [0] * len(actors)
        alive = [True] * len(actors)
        suspect: set[int] = set()  # actors that failed a task (or timed out): wait for their restart first
        try:
            while work or pending:
                for index in sorted(suspect):
                    if not any(i == index for i, _ in pending.values()):
                        healthy = sum(a and i not in suspect for i, a in enumerate(alive))
                        alive[index] = self._restarted(actors[index], healthy, label)
                        suspect.discard(index)
                if not any(alive):
                    raise ClusterError(f"{label}: every Ray worker died and none restarted")
                for index, actor in enumerate(actors):
                    while alive[index] and index not in suspect and load[index] < self.in_flight:
                        units = work.next_units(index, alive)
                        if not units:
                            break
                        for unit in units:  # a group is submitted whole: the actor runs it in order
                            pending[actor.run_chunk.remote(unit)] = (index, unit)
                            load[index] += 1
                if not pending:
                    continue
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.wait_timeout_s)
                for ref in ready:
                    index, unit = pending.pop(ref)
                    load[index] -= 1
                    rows = self._finish(ref, unit, by_name[unit.method], work, pieces)
                    if rows is None:
                        suspect.add(index)
                        continue
                    whole = pieces.gather(unit, rows)
                    if whole is not None:
                        by_name[unit.method].done_rows(*whole)
                        progress(len(whole[1]), whole[1])
                    if any(str(row.get("status", "")).startswith(f"error: {EpisodeTimeout.__name__}") for row in rows):
                        # the abandoned predict still runs in that process: restart it
                        ray.kill(actors[index], no_restart=False)
                        suspect.add(index)
            # Not in ``finally``: after Ctrl-C or an error a busy actor answers only once its chunk
            # is done (up to 30 s per actor), and the user would wait that long for statistics.
            self._collect(actors)
        finally:
            for actor in actors:
                ray.kill(actor)

    def _start_actors(self, jobs: list[MethodJob], settings: EvalSettings, count: int) -> list:
        """``count`` actors, each an EpisodeWorker with every job's method, once all are ready."""
        import ray

        remote_worker = ray.remote(EpisodeWorker).options(
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
            max_restarts=-1,
            max_task_retries=0,
        )
        threads = max(1, int(self.cpus_per_worker))
        first, *rest = jobs
        more = [(j.spec, j.context, j.keep_maps) for j in rest]
        actors = [remote_worker.remote(first.spec, first.context, settings, first.keep_maps, threads, more,
                                       episode_timeout_s=self.episode_timeout_s)
                  for _ in range(count)]
        return self._wait_until_ready(_label({job.spec.name: job for job in jobs}), actors)

    def _finish(self, ref, unit: WorkUnit, job: MethodJob, work: "ChunkQueues", pieces: "SplitUnits") -> list[dict] | None:
        """A finished unit's rows; None when its actor failed (the unit is requeued: a unit of
        several episodes in two halves, so an episode that kills its worker is isolated; one
        episode that killed ``max_attempts`` workers becomes its own error row)."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            # The worker turns episode errors into rows, so this is a bug in run_chunk.
            cause = exc.cause if getattr(exc, "cause", None) else exc
            return [error_row(job.context, e, describe_error(cause)) for e in unit.episodes]
        except ray.exceptions.RayError as exc:
            # System failure (actor died or restarting, worker crashed, OOM kill, node lost): the
            # actor restarts and reloads the methods.
            if len(unit.episodes) > 1:
                work.retries.extend(pieces.announce(unit))
            elif unit.attempt < self.max_attempts:
                work.retries.append(unit.retry())
            else:
                died = WorkerDied(f"the worker died each of {unit.attempt} times it ran this episode "
                                  f"(last: {describe_error(exc)[len('error: '):]})")
                return [error_row(job.context, unit.episodes[0], describe_error(died))]
            return None

    def _collect(self, actors: list) -> None:
        """Backbone view stats and devices of the live actors (best effort: a dead actor's are lost)."""
        import ray

        for actor in actors:
            try:
                stats, devices = ray.get([actor.stats.remote(), actor.devices.remote()], timeout=30)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                continue
            merge_stats(self.view_stats, stats)
            self.devices.update(devices)

    def _restarted(self, actor, healthy: int, label: str) -> bool:
        """Wait until a failed actor has restarted (and reloaded its methods); False if it is gone,
        or as soon as the cluster has no room for it beside the ``healthy`` actors (a lost node):
        its work then goes to the others at once, and a line says so."""
        import ray

        deadline = time.monotonic() + self.start_timeout_s
        ready = actor.ready.remote()
        while time.monotonic() < deadline:
            try:
                ray.get(ready, timeout=min(RESTART_POLL_S, max(0.1, deadline - time.monotonic())))
                return True
            except ray.exceptions.ActorUnavailableError:
                time.sleep(0.5)  # still restarting
                ready = actor.ready.remote()
            except ray.exceptions.GetTimeoutError:
                pass
            except ray.exceptions.RayError:
                return False
            slots = worker_slots(ray.nodes(), self.cpus_per_worker, self.gpus_per_worker)
            if slots <= healthy:
                ray.kill(actor, no_restart=True)  # should capacity come back, it is not waited for
                print(f"warning: {label}: a Ray worker was lost and the cluster has room for {slots} "
                      f"worker(s), {healthy} running; its chunks go to the {healthy} left",
                      file=sys.stderr, flush=True)
                return False
        return False

    def _wait_until_ready(self, label: str, actors: list) -> list:
        """The actors once started; a constructor failure (bad weights ...) or an unschedulable
        actor is one line. When a node is lost while they start and the cluster has no room for
        the rest, the run goes on with those that started (a line says so)."""
        import ray

        refs = [actor.ready.remote() for actor in actors]
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                done, waiting = ray.wait(refs, num_returns=len(refs), timeout=RESTART_POLL_S)
                ray.get(done)  # raises a constructor's failure
                if not waiting:
                    return actors
                slots = worker_slots(ray.nodes(), self.cpus_per_worker, self.gpus_per_worker)
                if done and slots <= len(done):
                    started = [actor for actor, ref in zip(actors, refs) if ref not in waiting]
                    for actor, ref in zip(actors, refs):
                        if ref in waiting:
                            ray.kill(actor, no_restart=True)
                    print(f"warning: {label}: the cluster has room for {slots} worker(s) now (a node was lost?); "
                          f"going on with the {len(started)} started", file=sys.stderr, flush=True)
                    return started
                if time.monotonic() > deadline:
                    raise ray.exceptions.GetTimeoutError()
        except ray.exceptions.GetTimeoutError:
            for actor in actors:
                ray.kill(actor)
            raise ClusterError(
                f"{label}: {len(actors)} workers did not start within {self.start_timeout_s:.0f} s "
                f"(each needs {self.cpus_per_worker:g} CPU and {self.gpus_per_worker:g} GPU on one node; "
                "lower --workers or --cpus-per-worker)"
            ) from None
        except ray.exceptions.RayError as exc:
            for actor in actors:
                ray.kill(actor)
            cause = _creation_cause(exc)
            raise ClusterError(f"{label} failed to start on a Ray worker: {cause}") from None


def worker_slots(nodes: list[dict], cpus_per_worker: float, gpus_per_worker: float) -> int:
    """How many workers of this shape the cluster's live nodes hold (``ray.nodes()`` entries)."""
    slots = 0
    for node in nodes:
        if not node.get("Alive"):
            continue
        resources = node.get("Resources") or {}
        fits = [int(resources.get("CPU", 0.0) // cpus_per_worker + 1e-9)] if cpus_per_worker > 0 else []
        if gpus_per_worker > 0:
            fits.append(int(resources.get("GPU", 0.0) // gpus_per_worker + 1e-9))
        slots += min(fits) if fits else 0
    return slots


class SplitUnits:
    """Rows of units that were split after worker deaths (``WorkUnit.halves``), gathered until
    the unit handed to the executor is whole again (a Parquet part holds a whole chunk)."""

    def __init__(self):
        self.open: dict[tuple[str, int], tuple[WorkUnit, list]] = {}

    def gather(self, unit: WorkUnit, rows: list[dict]) -> tuple[WorkUnit, list[dict]] | None:
        """``(whole unit, its rows in order)`` once every piece is back; None while some are out."""
        if unit.piece is None:
            return unit, rows
        key = (unit.method, unit.chunk_index)
        if key not in self.open:
            raise RuntimeError(f"piece {unit.piece} of chunk {key} came back unannounced")
        whole, gathered = self.open[key]
        start, stop = unit.piece
        gathered[start:stop] = rows
        if any(row is None for row in gathered):
            return None
        del self.open[key]
        return whole, gathered

    def announce(self, unit: WorkUnit) -> list[WorkUnit]:
        """The halves of ``unit``; the first split of a unit opens its gathering."""
        if unit.piece is None:
            self.open[(unit.method, unit.chunk_index)] = (unit, [None] * len(unit.episodes))
        return unit.halves()


class ChunkQueues:
    """Which units each actor runs next: contiguous ranges of chunk groups per actor (a group's
    units stay together), requeued units first (any actor), and an idle actor steals the tail of
    the longest remaining range (the donor keeps its head, where its cached images are)."""

    def __init__(self, queues: list[deque]):
        self.queues = queues
        self.retries: deque = deque()

    @classmethod
    def split(cls, groups: list, actors: int) -> "ChunkQueues":
        share = -(-len(groups) // actors)
        return cls([deque(groups[i * share : (i + 1) * share]) for i in range(actors)])

    def __bool__(self) -> bool:
        return any(self.queues) or bool(self.retries)

    def next_units(self, index: int, alive: list[bool]) -> list:
        if self.retries:
            return [self.retries.popleft()]
        queues = self.queues
        if not queues[index]:
            donor = max(range(len(queues)), key=lambda i: len(queues[i]))
            if len(queues[donor]) > 1 or (queues[donor] and not alive[donor]):
                queues[index].append(queues[donor].pop())
        return list(queues[index].popleft()) if queues[index] else []


def _label(by_name: dict) -> str:
    return f"method '{next(iter(by_name))}'" if len(by_name) == 1 else f"methods {', '.join(by_name)}"


def _creation_cause(exc: BaseException) -> str:
    """The user-facing line inside a Ray actor-creation error (e.g. a BackboneError message)."""
    cause = getattr(exc, "cause", None) or getattr(getattr(exc, "error_msg", None), "cause", None)
    if isinstance(cause, BaseException):
        cause = getattr(cause, "cause", None) or cause
        return short_error(f"{type(cause).__name__}: {cause}")
    text = str(exc)
    for line in text.splitlines():
        if "Error:" in line and "ray::" not in line:
            return line.strip()
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__


if __name__ == "__main__":  # python -m harness.ray_executor stop --temp-dir DIR
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.ray_executor",
                                     description="Stop one local Ray head node (the one using --temp-dir).")
    parser.add_argument("command", choices=["stop"])
    parser.add_argument("--temp-dir", required=True, help="the --temp-dir the head was started with")
    args = parser.parse_args()
    stopped = stop_head(args.temp_dir)
    print(f"stopped {stopped} process(es) of the Ray node in {args.temp_dir}" if stopped
          else f"no running Ray node uses {args.temp_dir}")
