"""Run progress that works in a terminal and in a pipe.

On a terminal with a width: a tqdm bar (rate, ETA, failures), drawn at the first finished chunk
(not at 0 %, so start-up messages never leave a stray "0%" line behind). Otherwise (stdout/stderr
piped to a file or CI log, or a terminal reporting width 0): one plain line every ``interval``
seconds and one at the end, e.g. ``progress: 12/40 episodes (30 %), 0.42 episodes/s, ETA 67 s``.
"""
from __future__ import annotations

import os
import time

from harness.records import UNSCORED_STATUS

PLAIN_INTERVAL_S = 30.0


def _terminal_width(out) -> int:
    try:
        if not out.isatty():
            return 0
        return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class Progress:
    """Episodes done out of ``total``; ``update_rows(count, rows)`` after each stored chunk."""

    def __init__(self, total: int, out, interval: float = PLAIN_INTERVAL_S, clock=time.monotonic):
        self.total = total
        self.out = out
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.last_line = self.started
        self.done = 0
        self.failed = 0
        self.description = ""
        self.bar = None
        self.plain = out is not None and _terminal_width(out) <= 0

    def set_description(self, text: str) -> None:
        self.description = text
        if self.bar is not None:
            self.bar.set_description(text)

    def _ensure_bar(self) -> None:
        if self.bar is None and self.out is not None and not self.plain:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="ep", file=self.out, dynamic_ncols=True, smoothing=0.1,
                            desc=self.description or None)

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"progress: {self.description + ' ' if self.description else ''}{self.done}/{self.total} episodes"
        if self.total:
            text += f" ({100 * self.done / self.total:.0f} %)"
        text += f", {rate:.2f} episodes/s, {_duration(elapsed)} elapsed"
        if 0 < self.done < self.total and rate > 0:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        if self.failed:
            text += f", {self.failed} failed"
        return text

    def update_rows(self, count: int, rows: list[dict]) -> None:
        self.done += count
        self.failed += sum(1 for r in rows if r["status"] not in ("ok", UNSCORED_STATUS))
        if self.out is None:
            return
        if self.plain:
            now = self.clock()
            if now - self.last_line >= self.interval or self.done >= self.total:
                self.last_line = now
                print(self.line(), file=self.out, flush=True)
            return
        self._ensure_bar()
        if self.failed:
            self.bar.set_postfix(failed=self.failed)
        self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.plain and self.done and self.done < self.total and self.out is not None:
            print(self.line(), file=self.out, flush=True)  # where an interrupted run stopped
