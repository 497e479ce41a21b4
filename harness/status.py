"""A row's ``status``: ``"ok"`` or ``"error: <Type>: <message>"``, and which errors are transient.

A transient error (disk full, out of memory, a read error, a hung ``predict``, a worker that kept
dying) may pass on its own: ``harness.run`` computes such episodes again when the run is resumed,
and the report counts them as not stored until they succeed. Other errors (a method's exception
on an episode, changed data) are kept as they are. Standard library only (a leaf module).
"""
from __future__ import annotations

import builtins

TIMEOUT = "EpisodeTimeout"  # harness.runner.EpisodeTimeout: predict exceeded --episode-timeout
WORKER_DIED = "WorkerDied"  # harness.runner.WorkerDied: the episode's worker died each time it ran it

# OSError covers its subclasses (FileNotFoundError, PIL's UnidentifiedImageError ...);
# OutOfMemoryError is torch.cuda's.
TRANSIENT_ERRORS = frozenset(
    {name for name, value in vars(builtins).items()
     if isinstance(value, type) and issubclass(value, (OSError, MemoryError))}
    | {"OutOfMemoryError", "UnidentifiedImageError", TIMEOUT, WORKER_DIED})


def error_type(status: str | None) -> str | None:
    """``"OSError"`` of ``"error: OSError: ..."``; None for ``"ok"`` or a status of another form."""
    if not status or not status.startswith("error: "):
        return None
    return status[len("error: "):].split(":", 1)[0].strip()


def is_transient(status: str | None) -> bool:
    """Whether a stored ``status`` names a cause worth computing again on resume."""
    return error_type(status) in TRANSIENT_ERRORS
