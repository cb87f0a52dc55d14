"""A job's output in its log file: stdout and stderr, Python's and the C level's, with progress bars
written as plain lines at a readable rate (one line per ``progress_every`` seconds)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Iterator


class _LogStream(io.TextIOBase):
    """Text to a log file; a ``\\r``-terminated segment (a progress-bar refresh) becomes a line at most
    every ``every`` seconds, blank ones (a bar being cleared) are dropped."""

    def __init__(self, fh, every: float):
        self.fh, self.every, self.last, self.pending = fh, every, -float("inf"), ""

    @property
    def encoding(self) -> str:
        return "utf-8"

    def write(self, text: str) -> int:
        for char_run in _split(text):
            if char_run == "\n":
                self.fh.write(self.pending + "\n")
                self.pending = ""
            elif char_run == "\r":
                now = time.monotonic()
                if self.pending.strip() and now - self.last >= self.every:
                    self.fh.write(self.pending.rstrip() + "\n")
                    self.last = now
                self.pending = ""
            else:
                self.pending += char_run
        self.fh.flush()
        return len(text)

    def flush(self) -> None:
        self.fh.flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def _split(text: str) -> Iterator[str]:
    start = 0
    for i, ch in enumerate(text):
        if ch in "\r\n":
            if i > start:
                yield text[start:i]
            yield ch
            start = i + 1
    if start < len(text):
        yield text[start:]


@contextlib.contextmanager
def logged(path: str | os.PathLike, progress_every: float = 30.0) -> Iterator[None]:
    """Send everything the block prints (and an exception's traceback) to ``path``, then restore."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    old = sys.stdout, sys.stderr
    with open(path, "w", encoding="utf-8", buffering=1) as fh:
        os.dup2(fh.fileno(), 1)  # C-level output (torch warnings, subprocesses) too
        os.dup2(fh.fileno(), 2)
        stream = _LogStream(fh, progress_every)
        sys.stdout = sys.stderr = stream
        try:
            yield
        except BaseException:
            stream.write(traceback.format_exc())
            raise
        finally:
            stream.write(stream.pending and "\n")
            sys.stdout, sys.stderr = old
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
