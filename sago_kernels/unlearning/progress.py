"""Progress that suits where the output goes: a bar on a terminal, plain periodic lines in a log.

A log file gets no carriage returns or escape codes and no bar left half-drawn: one line when a
task starts, one at most every ``every`` seconds while it runs, one when it ends.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """``with Progress(total, "unlearning runs") as p: ... p.update(note="npo/sago")``.

    ``bar``: None decides from the stream (a bar only on a terminal), True/False forces it;
    ``enabled=False`` prints nothing at all."""

    def __init__(self, total: int, desc: str, *, stream: TextIO | None = None,
                 bar: bool | None = None, every: float = 30.0, enabled: bool = True,
                 leave: bool = True, estimate: bool = True) -> None:  # fmt: skip
        """``estimate``: say the time left in plain lines (not for a task that may stop early,
        as pre-training does once every token is memorised)."""
        self.total, self.desc, self.every, self.enabled = total, desc, every, enabled
        self.estimate = estimate
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.bar = None
        self.done = 0
        self.note = ""
        self.start = self.last = time.perf_counter()
        if enabled and (isatty if bar is None else bar):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, file=self.stream, leave=leave,
                            dynamic_ncols=True)  # fmt: skip

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, note: str = "") -> None:
        """``n`` more done; ``note`` (kept until the next one) says what was last done."""
        self.done += n
        self.note = note or self.note
        if not self.enabled:
            return
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            self.line(self.note)

    def line(self, note: str = "") -> None:
        elapsed = time.perf_counter() - self.start
        left = ""
        if self.estimate and 0 < self.done < self.total:
            left = f", ~{_clock(elapsed / self.done * (self.total - self.done))} left"
        tail = f" ({note})" if note else ""
        print(f"{self.desc}: {self.done}/{self.total}, {_clock(elapsed)}{left}{tail}",
              file=self.stream, flush=True)  # fmt: skip

    def write(self, text: str) -> None:
        """A line of its own, above the bar if there is one."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
