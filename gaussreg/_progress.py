"""Progress of the commands that run for minutes (``gaussreg demo``, ``train``, ``bench``).

One helper for all three: a tqdm bar with an ETA on stderr when stderr is a terminal and
tqdm is installed (the ``demo`` and ``bench`` extras install it); otherwise one plain line
per finished block (``lines``, so that logs show how far a run got); nothing at all with
``quiet``. Result lines go
through ``Progress.write`` to stdout, above a live bar. The library's losses print nothing.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # the plain lines below
    _tqdm = None


class Progress:
    """``total`` steps of a command; ``step(what)`` after each.

    Example::

        progress = Progress(len(rows), "bench")
        for row in rows:
            progress.write(run(row))      # a result line on stdout
            progress.step(row.name)
        progress.close()
    """

    def __init__(self, total: int, desc: str = "", quiet: bool = False, stream: Optional[TextIO] = None,
                 lines: bool = True):
        self.total, self.done, self.desc = max(int(total), 1), 0, desc
        self.lines = lines and not quiet
        self.stream = sys.stderr if stream is None else stream
        self.start = time.perf_counter()
        live = not quiet and _tqdm is not None and _is_terminal(self.stream)
        self._bar = _tqdm(total=self.total, desc=desc or None, file=self.stream, dynamic_ncols=True,
                          leave=True) if live else None

    @property
    def live(self) -> bool:
        """Whether a bar is drawn (a terminal and tqdm), rather than plain lines."""
        return self._bar is not None

    def step(self, what: str = "", finished_block: bool = False) -> None:
        """One step done; ``what`` says which. Without a bar a line is written for each
        finished block (``finished_block``) and for the last step."""
        self.done += 1
        if self._bar is not None:
            if what:
                self._bar.set_postfix_str(what, refresh=False)
            self._bar.update(1)
        elif self.lines and (finished_block or self.done == self.total):
            elapsed = time.perf_counter() - self.start
            prefix = f"{self.desc}: " if self.desc else ""
            self.stream.write(f"{prefix}{self.done}/{self.total} {elapsed:6.1f}s  {what}\n")
            self.stream.flush()

    def write(self, line: str) -> None:
        """A result line on stdout (printed above a live bar; printed even when quiet)."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
