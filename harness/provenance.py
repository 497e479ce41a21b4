"""What run.json records about where and how a run was made (lm-eval / MTEB style provenance)."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from harness.io import REPO_ROOT, atomic_write

PACKAGES = ("torch", "torchvision", "timm", "transformers", "ray", "pyarrow", "pandas", "numpy", "scikit-image", "click")


def canonical_hash(obj: object, length: int = 16) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace); ``default=str`` for paths."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def git_info() -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:  # no .git (e.g. a Ray job's uploaded working dir): what the submitter stamped
        return submitted_git_info()
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None, "describe": git("describe", "--always", "--dirty"),
            "source": "git"}


GIT_SHA_ENV = "SOFS_BENCH_GIT_SHA"  # set at submit time: --runtime-env-json '{"env_vars": {...}}'
GIT_DIRTY_ENV = "SOFS_BENCH_GIT_DIRTY"  # "1"/"0"
PROVENANCE_FILE = "sofs_bench_provenance.json"  # or written at submit time by `python -m harness.provenance`


def submitted_git_info() -> dict:
    """Code provenance of a checkout without ``.git``: $SOFS_BENCH_GIT_SHA (+ $SOFS_BENCH_GIT_DIRTY),
    else ``<repo>/sofs_bench_provenance.json``; all None when neither exists."""
    sha = os.environ.get(GIT_SHA_ENV) or None
    if sha:
        dirty = os.environ.get(GIT_DIRTY_ENV)
        return {"sha": sha, "dirty": None if dirty is None else dirty.strip().lower() in ("1", "true", "yes"),
                "describe": None, "source": f"${GIT_SHA_ENV}"}
    try:
        stamped = json.loads((REPO_ROOT / PROVENANCE_FILE).read_text())
        return {"sha": stamped.get("sha"), "dirty": stamped.get("dirty"), "describe": stamped.get("describe"),
                "source": PROVENANCE_FILE}
    except (OSError, ValueError, AttributeError):
        return {"sha": None, "dirty": None, "describe": None, "source": None}


def write_provenance_file(path: Path | None = None) -> Path:
    """Stamp this checkout's git info into ``sofs_bench_provenance.json`` (before ``ray job submit``)."""
    info = git_info()
    path = Path(path) if path else REPO_ROOT / PROVENANCE_FILE
    path.write_text(json.dumps({k: info[k] for k in ("sha", "dirty", "describe")}, indent=1) + "\n")
    return path



def package_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict:
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["cuda_version"] = torch.version.cuda
    except ImportError:
        pass
    return info


def content_digest(path: Path | str) -> str:
    """blake2b-128 hex digest of a file's bytes (what :class:`ContentHashes` caches)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def changed_file(recorded: tuple[str, int, int, str]) -> bool:
    """Whether the file of a :meth:`ContentHashes.entry` no longer holds the recorded bytes:
    unchanged size and mtime count as the same file (as the cache does), else it is hashed again.
    ``OSError`` propagates."""
    real, size, mtime_ns, digest = recorded
    stat = os.stat(real)
    if (stat.st_size, stat.st_mtime_ns) == (size, mtime_ns):
        return False
    return content_digest(real) != digest


class ContentHashes:
    """Fast content hashes of data files (blake2b-128), cached by real path + size + mtime.

    The cache (``$SOFS_BENCH_CACHE/content-hashes.json``, else ``~/.cache/sofs-bench``) makes a
    re-run over an unchanged dataset cost one ``stat`` per file; any rewrite of a file changes its
    size or mtime and so is hashed again.
    """

    def __init__(self, cache_file: Path | None = None):
        base = os.environ.get("SOFS_BENCH_CACHE") or os.path.expanduser("~/.cache/sofs-bench")
        self.cache_file = Path(cache_file) if cache_file else Path(base) / "content-hashes.json"
        self.entries: dict[str, list] | None = None
        self.changed = False

    def _load(self) -> dict[str, list]:
        if self.entries is None:
            try:
                loaded = json.loads(self.cache_file.read_text())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}  # no cache yet, or a damaged one: hash again
        return self.entries

    def digest(self, path: Path | str) -> str:
        """Hex digest of the file's bytes; ``OSError`` propagates (the caller names the file)."""
        return self.entry(path)[3]

    def entry(self, path: Path | str) -> tuple[str, int, int, str]:
        """``(real path, size, mtime_ns, digest)`` of a file: what a reader checks it against
        (:func:`changed_file`). ``OSError`` propagates."""
        real = os.path.realpath(path)
        stat = os.stat(real)
        key = [stat.st_size, stat.st_mtime_ns]
        entries = self._load()
        cached = entries.get(real)
        if isinstance(cached, list) and cached[:2] == key and len(cached) == 3:
            return (real, *key, cached[2])
        digest = content_digest(real)
        entries[real] = [*key, digest]
        self.changed = True
        return (real, *key, digest)

    def save(self) -> None:
        """Write the cache back (best effort: a read-only cache folder only costs re-hashing)."""
        if not self.changed or self.entries is None:
            return
        text = json.dumps(self.entries, separators=(",", ":"))
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.cache_file, lambda tmp: tmp.write_text(text))
            self.changed = False
        except OSError:
            pass


if __name__ == "__main__":
    print(write_provenance_file())
