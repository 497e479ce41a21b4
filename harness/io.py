"""Small idioms every package shares, defined once: the repository root, temp-file-then-rename
writes (of a file, or of a folder's files), the one-line text of an exception, a file's sha256 and
a bounded LRU.

Standard library only, so that datasets, methods and the harness can all import it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable

REPO_ROOT = Path(__file__).resolve().parent.parent


def atomic_write(path: Path, write: Callable[[Path], Any], *, suffix: str = "") -> None:
    """Call ``write(temp)`` then rename the temp file over ``path``; the temp file never survives.

    The temp file sits next to ``path`` (same file system) as ``.<name>.<pid>.tmp<suffix>``
    (``suffix`` keeps an ending a writer reads, e.g. ``".png"`` for PIL). ``OSError`` propagates:
    callers turn it into their own one-line error.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    if os.path.lexists(tmp):
        os.unlink(tmp)  # a leftover, or a link planted there: the writer must not follow it
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass  # renamed (the usual case) or never created


def staging_folder(final: Path) -> Path:
    """A new empty folder beside ``final`` to write a set of files into before
    :func:`publish_files` moves them over (``.<name>.staging-*``, hidden)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))


def publish_files(staging: Path, final: Path, last: str | None = None) -> dict[Path, Path]:
    """Move every file of ``staging`` into ``final`` by rename (a link planted in ``final`` is
    replaced, never followed), ``last`` after the others and its old copy removed first (so a kill
    in between never leaves new files beside the old ``last``); remove ``staging``. Returns
    ``{staged path: final path}``."""
    staging, final = Path(staging), Path(final)
    final.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in staging.rglob("*") if p.is_file() and not p.is_symlink())
    if last is not None and os.path.lexists(final / last):
        os.unlink(final / last)
    moved = {}
    for path in sorted(files, key=lambda p: p.name == last):
        target = final / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        moved[path] = target
    shutil.rmtree(staging, ignore_errors=True)
    return moved


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def did_you_mean(name: str, known) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ``""``."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def short_error(exc: BaseException, limit: int | None = None) -> str:
    """The first line of ``str(exc)`` (at most ``limit`` characters), or the type's name if empty."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files in sorted order (weights folders)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class LRU:
    """Least-recently-used map bounded by entries and/or bytes (``size(value)``; None = no bound).

    ``put`` of a value larger than ``max_bytes`` stores nothing; ``put`` returns the evicted values.
    """

    def __init__(self, max_entries: int | None = None, max_bytes: int | None = None,
                 size: Callable[[Any], int] | None = None):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = size or (lambda value: 0)
        self.items: OrderedDict = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.items

    def __getitem__(self, key: Hashable) -> Any:
        return self.items[key]  # a look without refreshing recency (as OrderedDict)

    def __iter__(self):
        return iter(self.items)

    def keys(self):
        return self.items.keys()

    def get(self, key: Hashable, default: Any = None) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return default

    def put(self, key: Hashable, value: Any) -> list:
        size = self.size(value)
        if self.max_bytes is not None and size > self.max_bytes:
            return []
        if key in self.items:
            self.bytes -= self.size(self.items.pop(key))
        self.items[key] = value
        self.bytes += size
        evicted = []
        while self.items and self._over():
            _, old = self.items.popitem(last=False)
            self.bytes -= self.size(old)
            evicted.append(old)
        return evicted

    def _over(self) -> bool:
        return ((self.max_entries is not None and len(self.items) > self.max_entries)
                or (self.max_bytes is not None and self.bytes > self.max_bytes))
