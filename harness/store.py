"""The results store: one folder per run, one Parquet part per finished chunk, plus run.json.

    results/<run>/run.json                                 provenance (see harness.provenance)
    results/<run>/.lock                                    {"pid", "host", "since"} while a run writes
    results/<run>/manifest/<manifest_id>.parquet (+ .json) the episodes this run evaluates
    results/<run>/episodes/method=<m>/part-<chunk>.parquet one row per episode (harness.schema)
    results/<run>/episodes/method=<m>/.part-<chunk>.parquet.sha256   its content checksum (sha256sum format)
    results/<run>/episodes/.corrupt/                       parts that failed verification, moved aside
    results/<run>/predictions/<m>/<episode_id>.png         optional 8-bit score maps
    results/<run>/errors.log                               tracebacks of the episodes that failed
    results/<run>/skipped_inputs.tsv                       dataset files the adapter left out

This module is the only one that spells the layout: the run (``harness.run``, on the driver) writes
parts, score maps, run.json (``harness.run_record.RunRecord``) and errors.log through
:class:`RunStore`; workers only return rows and 8-bit maps; the planner and the report ask it for
paths.

Part names are deterministic (the chunk index in the manifest order) and written to a temp file
then renamed, so a killed run leaves only whole parts and a re-run replaces a chunk's own file.
A part counts as done only when its bytes match the sha256 written beside it (hidden, so readers of
the folder skip it) and its footer reads back with the episode schema and the chunk's row count (a
truncated, bit-flipped or foreign file is moved to ``episodes/.corrupt/`` and its chunk recomputed).
Everything reads back with plain pandas / pyarrow / DuckDB (hive partitioning on ``method``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from harness.io import atomic_write, pid_alive, short_error
from harness.run_record import RecordError, RunRecord, loads as parse_record
from harness.schema import EPISODE_SCHEMA, EPISODE_SCHEMA_WITH_METHOD

Warn = Callable[[str], None]
KEY_COLUMNS = ("episode_id", "manifest_id", "method_config_hash", "status")


class StoreError(Exception):
    """A user-facing problem with a results folder (one line)."""


def partition_value(name: str) -> str:
    """Method names become folder names: keep them free of '/', '=' and spaces."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def os_problem(exc: OSError) -> str:
    """``"No space left on device"``: the OS reason without errno and path (callers name the file)."""
    return exc.strerror or str(exc) or type(exc).__name__


def atomic_write_bytes(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temp)`` then rename over ``path``; the temp file never survives a failure.

    An ``OSError`` (disk full, permissions) becomes a ``StoreError`` naming ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as exc:
        raise StoreError(f"{path}: cannot write ({os_problem(exc)})") from None


def verify_part(path: Path, rows: int | None = None) -> str | None:
    """Why ``path`` is not a whole part of ``rows`` episode rows, or ``None`` when it is.

    Reads only the Parquet footer: every column must be an episode-schema column of the same type
    (a part of an older schema version may lack newer columns: ``read_run`` fills them with nulls),
    the key columns must be there, and the row count must be the chunk's (a part of another chunk
    size, a truncated copy or a foreign file fail).
    """
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        return f"unreadable Parquet ({short_error(exc)})"
    for column in schema:
        expected = EPISODE_SCHEMA.field(column.name) if column.name in EPISODE_SCHEMA.names else None
        if expected is None or not expected.type.equals(column.type):
            return f"column {column.name} ({column.type}) is not in the episode schema"
    absent = [name for name in KEY_COLUMNS if name not in schema.names]
    if absent:
        return f"lacks the key column(s) {', '.join(absent)}"
    if rows is not None and meta.num_rows != rows:
        return f"{meta.num_rows} rows, its chunk has {rows}"
    return None


def checksum_path(part: Path) -> Path:
    """The sha256 sidecar of a part: ``.part-00003.parquet.sha256`` beside it (hidden: pandas,
    pyarrow and DuckDB globs skip it)."""
    return part.with_name(f".{part.name}.sha256")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(part: Path) -> str | None:
    """Why ``part``'s bytes do not match its sha256 sidecar, ``None`` when they do; a part without
    a sidecar (written before checksums existed) gives ``"no checksum"``."""
    try:
        recorded = checksum_path(part).read_text().split()
    except FileNotFoundError:
        return "no checksum"
    except OSError as exc:
        return f"checksum file unreadable ({os_problem(exc)})"
    try:
        actual = _sha256(part)
    except OSError as exc:
        return f"unreadable ({os_problem(exc)})"
    if not recorded or recorded[0] != actual:
        return f"content does not match its sha256 ({checksum_path(part).name}): the data are corrupt"
    return None


class RunStore:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.episodes_dir = self.run_dir / "episodes"
        self.predictions_dir = self.run_dir / "predictions"
        self.manifest_dir = self.run_dir / "manifest"
        self.corrupt_dir = self.episodes_dir / ".corrupt"
        self.run_json = self.run_dir / "run.json"
        self.lock_path = self.run_dir / ".lock"
        self.errors_log = self.run_dir / "errors.log"
        self.skipped_inputs = self.run_dir / "skipped_inputs.tsv"

    @classmethod
    def runs_under(cls, root: Path) -> list["RunStore"]:
        """``root`` itself and each folder directly inside it, as run folders (some may hold nothing)."""
        root = Path(root)
        if not root.is_dir():
            return []
        return [cls(root), *(cls(p) for p in sorted(root.iterdir()) if p.is_dir())]

    def method_dir(self, method: str) -> Path:
        return self.episodes_dir / f"method={partition_value(method)}"

    def part_path(self, method: str, chunk_index: int) -> Path:
        return self.method_dir(method) / f"part-{chunk_index:05d}.parquet"

    def method_predictions_dir(self, method: str) -> Path:
        """Where a method's score maps are kept (:meth:`prediction_path` names them)."""
        return self.predictions_dir / partition_value(method)

    def prediction_path(self, method: str, episode_id: str) -> Path:
        """The 8-bit score-map PNG of one episode."""
        return self.method_predictions_dir(method) / f"{episode_id}.png"

    def write_prediction(self, method: str, episode_id: str, score_u8) -> Path:
        """Write an episode's 8-bit score map (``uint8 [H, W]``, score·255) as a PNG, atomically;
        an ``OSError`` (a full disk) is raised as it is, so the caller makes the episode's error row."""
        from PIL import Image

        path = self.prediction_path(method, episode_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, Image.fromarray(score_u8).save, suffix=".png")  # no half-written temp file survives
        return path

    def has_predictions(self, method: str) -> bool:
        return self.method_predictions_dir(method).is_dir()

    def part_files(self, method: str) -> dict[int, Path]:
        folder = self.method_dir(method)
        if not folder.is_dir():
            return {}
        return {int(p.stem.removeprefix("part-")): p for p in folder.glob("part-*.parquet")
                if p.stem.removeprefix("part-").isdigit()}

    def done_chunks(self, method: str, chunk_rows: dict[int, int] | None = None,
                    warn: Warn | None = None) -> set[int]:
        """Chunk indices whose part is stored.

        Without ``chunk_rows`` a part counts when its file exists (parts are renamed into place
        whole). With ``chunk_rows`` (chunk index -> episodes) each part is verified first
        (:func:`verify_part`); a bad one is moved to ``episodes/.corrupt/`` with a ``warn`` line,
        so its chunk is computed again.
        """
        parts = self.part_files(method)
        if chunk_rows is None:
            return set(parts)
        done, adopted = set(), []
        for index, path in sorted(parts.items()):
            problem = self._verify(path, chunk_rows.get(index), adopted)
            if problem is None:
                done.add(index)
                continue
            moved = self.quarantine(path)
            if warn is not None:
                warn(f"{path}: {problem}; moved to {moved}, the chunk is computed again")
        if adopted and warn is not None:
            warn(f"{adopted[0].parent}: {len(adopted)} part(s) written before parts had checksums were read "
                 "whole and their checksums added")
        return done

    def stored_chunks(self, method: str, chunk_rows: dict[int, int]) -> set[int]:
        """Chunk indices whose part's footer reads back whole with its chunk's row count: what
        :meth:`done_chunks` will keep, short of a checksum mismatch, read without changing anything
        (the plan)."""
        return {index for index, path in self.part_files(method).items()
                if index in chunk_rows and verify_part(path, chunk_rows[index]) is None}

    def _verify(self, path: Path, rows: int | None, adopted: list[Path]) -> str | None:
        """Why a part does not count as done (its footer, then its checksum), None when it does. A part
        from before checksums is read whole instead, and its checksum written when it reads."""
        problem = verify_checksum(path)
        if problem == "no checksum":
            problem = verify_part(path, rows)
            if problem is None:
                try:
                    pq.read_table(path)  # every data page decodes
                except (OSError, pa.ArrowException) as exc:
                    return f"unreadable data ({short_error(exc)})"
                digest = _sha256(path)
                atomic_write_bytes(checksum_path(path), lambda tmp: tmp.write_text(f"{digest}  {path.name}\n"))
                adopted.append(path)
            return problem
        return verify_part(path, rows) or problem  # a footer problem says more (truncated, foreign)

    def quarantine(self, path: Path) -> Path:
        """Move a bad part out of the dataset (``episodes/.corrupt/method=<m>/<name>.<time>``),
        its checksum with it."""
        target = self.corrupt_dir / path.parent.name / f"{path.name}.{datetime.now():%Y%m%dT%H%M%S%f}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if checksum_path(path).exists():
                os.replace(checksum_path(path), target.with_name(target.name + ".sha256"))
            os.replace(path, target)
        except OSError as exc:
            raise StoreError(f"{path}: corrupt part cannot be moved aside ({os_problem(exc)}); "
                             "delete it and run again") from None
        return target

    def write_part(self, method: str, chunk_index: int, rows: list[dict]) -> Path:
        """Write one chunk's rows atomically (temp file + rename) with the explicit schema, and its
        sha256 sidecar just before the rename: a kill between the two leaves a part that does not
        match (recomputed), never one whose corruption would go unnoticed."""
        table = pa.Table.from_pylist(rows, schema=EPISODE_SCHEMA)
        path = self.part_path(method, chunk_index)

        def write(tmp: Path) -> None:
            pq.write_table(table, tmp)
            digest = _sha256(tmp)
            atomic_write(checksum_path(path), lambda side: side.write_text(f"{digest}  {path.name}\n"))

        atomic_write_bytes(path, write)
        return path

    def read_part(self, method: str, chunk_index: int) -> list[dict]:
        """The rows of a stored part, in order (to merge recomputed episodes into it)."""
        path = self.part_path(method, chunk_index)
        try:
            return pq.read_table(path, schema=EPISODE_SCHEMA).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{path}: cannot read ({short_error(exc)})") from None

    def part_statuses(self, method: str, chunk_index: int) -> list[str] | None:
        """The ``status`` of each row of a stored part; None when the footer's statistics show
        every row is "ok" (most parts: nothing but the footer is read)."""
        path = self.part_path(method, chunk_index)
        try:
            meta = pq.read_metadata(path)
            column = meta.schema.to_arrow_schema().get_field_index("status")
            stats = [meta.row_group(i).column(column).statistics for i in range(meta.num_row_groups)]
            if all(s is not None and s.has_min_max and s.null_count == 0 and s.min == s.max == "ok" for s in stats):
                return None
            return pq.read_table(path, columns=["status"]).column("status").to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"{path}: cannot read ({short_error(exc)})") from None

    def clear_method(self, method: str) -> None:
        shutil.rmtree(self.method_dir(method), ignore_errors=True)
        shutil.rmtree(self.predictions_dir / partition_value(method), ignore_errors=True)

    def read_record(self) -> RunRecord | None:
        """run.json as a :class:`RunRecord`, None when the folder has none; a damaged file is one
        ``StoreError`` naming it and the field."""
        try:
            text = self.run_json.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self.run_json}: cannot read ({os_problem(exc)})") from None
        try:
            return parse_record(text, self.run_json)
        except RecordError as exc:
            raise StoreError(str(exc)) from None

    def write_record(self, record: RunRecord) -> None:
        text = record.dumps()
        atomic_write_bytes(self.run_json, lambda tmp: tmp.write_text(text))

    def write_skipped_inputs(self, lines: list[str]) -> Path:
        """``skipped_inputs.tsv``: one line per dataset file the adapter left out."""
        atomic_write_bytes(self.skipped_inputs, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
        return self.skipped_inputs

    def append_errors(self, text: str) -> None:
        """Append to ``errors.log`` (:meth:`append_text`)."""
        self.append_text(self.errors_log, text)

    def lock(self, warn: Warn | None = None) -> "RunLock":
        """Take the run folder for this process (see :class:`RunLock`); refuse a folder whose own
        sub-folders are symbolic links (:meth:`check_own_folders`)."""
        lock = RunLock(self.lock_path, warn).acquire()
        try:
            self.check_own_folders()
        except StoreError:
            lock.release()
            raise
        return lock

    def check_own_folders(self) -> None:
        """Refuse to write through a symbolic link planted where the store keeps its folders
        (``episodes/``, ``episodes/method=*``, ``predictions/*``, ``manifest/``; ``report`` checks ``report/``): the
        files would land wherever it points. Files are replaced by rename, which never follows."""
        own = [self.episodes_dir, self.predictions_dir, self.manifest_dir, self.corrupt_dir]
        for folder in (self.episodes_dir, self.predictions_dir):
            if folder.is_dir() and not folder.is_symlink():
                own += list(folder.iterdir())
        for path in own:
            if path.is_symlink():
                raise StoreError(f"{path}: is a symbolic link (to {os.readlink(path)}); a run folder's own "
                                 "folders must be real folders, remove the link")

    def append_text(self, path: Path, text: str) -> None:
        """Append to a file of the run folder (``errors.log``) without following a link there."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "a") as handle:
            handle.write(text)


class RunLock:
    """``<run>/.lock``: one writer per run folder, created with O_EXCL and holding pid + host.

    A lock left by a dead process on this host (kill -9, power loss of a container) is taken over
    with a warning; a live one, or one from another host, is refused with who holds it.
    """

    STALE_UNREADABLE_S = 60.0  # a lock file cut short while being written, older than this, is stale

    def __init__(self, path: Path, warn: Warn | None = None):
        self.path = Path(path)
        self.warn = warn
        self.held = False

    def acquire(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path.parent}: cannot create the run folder ({os_problem(exc)})") from None
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            holder = self._holder()
            if holder is None:
                continue  # released between our attempt and the read
            if not self._stale(holder):
                raise StoreError(
                    f"{self.path.parent}: in use by pid {holder.get('pid')} on {holder.get('host')} "
                    f"since {holder.get('since')} (lock {self.path}); wait for it, or delete the lock "
                    "if that process is gone")
            if self.warn is not None:
                self.warn(f"{self.path}: taking over a stale lock of pid {holder.get('pid')} on "
                          f"{holder.get('host')} (that process is gone)")
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        raise StoreError(f"{self.path}: could not take the run folder lock (another run keeps taking it)")

    def _create(self) -> bool:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the run lock ({os_problem(exc)})") from None
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(info))
        except OSError as exc:
            self.path.unlink(missing_ok=True)
            raise StoreError(f"{self.path}: cannot write the run lock ({os_problem(exc)})") from None
        return True

    def _holder(self) -> dict | None:
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read the run lock ({os_problem(exc)})") from None
        try:
            holder = json.loads(text)
            if not isinstance(holder, dict):
                raise ValueError
        except ValueError:
            return {"pid": "?", "host": "?", "since": "?", "unreadable_age_s": age}
        return holder

    def _stale(self, holder: dict) -> bool:
        if "unreadable_age_s" in holder:
            return holder["unreadable_age_s"] > self.STALE_UNREADABLE_S
        if holder.get("host") != socket.gethostname():
            return False  # cannot see that host's processes
        pid = holder.get("pid")
        return isinstance(pid, int) and pid != os.getpid() and not pid_alive(pid)

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                self.path.unlink()
            except OSError:
                pass  # the folder went away or became read-only: the next run takes the lock over

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _bad_part(episodes: Path) -> str | None:
    """The first part under ``episodes`` that does not verify, with its problem (for error lines)."""
    for path in sorted(episodes.glob("method=*/part-*.parquet")):
        problem = check_part(path)
        if problem is not None:
            return f"{path}: {problem}"
    return None


def check_part(path: Path) -> str | None:
    """Footer, then checksum (when the part has one): why a stored part cannot be read as it was written."""
    problem = verify_checksum(path)
    return verify_part(path) or (problem if problem != "no checksum" else None)


def check_parts(run_dir: Path | str) -> None:
    """Refuse, naming the file, a run whose parts do not match their checksums (the report reads
    values only from parts as they were written; parts from before checksums are read as they are)."""
    from concurrent.futures import ThreadPoolExecutor

    paths = sorted(RunStore(run_dir).episodes_dir.glob("method=*/part-*.parquet"))
    with ThreadPoolExecutor(4) as pool:  # hashlib and file reads release the GIL
        for path, problem in zip(paths, pool.map(verify_checksum, paths)):
            if problem not in (None, "no checksum"):
                raise StoreError(f"{path}: {problem} (run the same command to recompute it, or delete the file)")


def read_run(run_dir: Path | str, columns: list[str] | None = None) -> pd.DataFrame:
    """All episode rows of a run (errors included) with the ``method`` column from the folder."""
    episodes = RunStore(run_dir).episodes_dir
    if not episodes.is_dir():
        raise StoreError(f"{run_dir}: not a run folder (no episodes/ inside)")
    check_parts(run_dir)
    try:
        dataset = ds.dataset(
            episodes,
            format="parquet",
            partitioning=ds.partitioning(pa.schema([pa.field("method", pa.string())]), flavor="hive"),
            schema=EPISODE_SCHEMA_WITH_METHOD,
            exclude_invalid_files=False,
            ignore_prefixes=[".", "_"],
        )
        return dataset.to_table(columns=columns).to_pandas()
    except (OSError, pa.ArrowException) as exc:
        where = _bad_part(episodes)
        if where is not None:
            raise StoreError(f"{where} (run the same command to recompute it, or delete the file)") from None
        raise StoreError(f"{episodes}: cannot read the episode parts "
                         f"({short_error(exc)})") from None
