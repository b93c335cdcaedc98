"""Progress of the client commands on stderr, fitted to the place: a labelled bar on a
terminal, a plain line every few seconds in a log (CI), nothing with ``--quiet``."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import IO, Any

from casd.client.files import Progress

# Seconds between two plain progress lines (CASD_PROGRESS_INTERVAL changes it).
DEFAULT_INTERVAL = 5.0


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class PlainProgress:
    """``label: 1.2 GiB of 2.4 GiB (50%), 110.0 MiB/s, ETA 0:00:11`` every ``interval``
    seconds, and a last line at the end when any was written."""

    def __init__(self, label: str, stream: IO[str], interval: float) -> None:
        self.label, self.stream, self.interval = label, stream, interval
        self.started = time.monotonic()
        self.next_line = self.started + interval
        self.first: int | None = None  # bytes done when we started (a resumed transfer)
        self.done, self.total = 0, 0
        self.lines = 0

    def __call__(self, done: int, total: int) -> None:
        if self.first is None:
            self.first = done
        self.done, self.total = done, total
        if time.monotonic() >= self.next_line:
            self.write()
            self.next_line = time.monotonic() + self.interval

    def write(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (self.done - (self.first or 0)) / elapsed
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = (self.total - self.done) / rate if rate > 0 else None
        text = f"{self.label}: {human_bytes(self.done)} of {human_bytes(self.total)}{percent}"
        text += f", {human_bytes(rate)}/s"
        text += f", ETA {human_seconds(eta)}" if eta is not None else ""
        print(text, file=self.stream, flush=True)
        self.lines += 1

    def close(self) -> None:
        if self.lines:
            self.write()


class Reporter:
    """The progress of a command's stages (``hashing x``, then ``uploading x``), each shown
    from its first report on and closed when the next one starts, in the form the place asks
    for. Stages may report from another thread (hashing runs in one)."""

    def __init__(self, quiet: bool = False, stream: IO[str] | None = None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.interval = float(os.environ.get("CASD_PROGRESS_INTERVAL") or DEFAULT_INTERVAL)
        self._lock = threading.Lock()
        self._label: str | None = None
        self._shown: Shown | None = None

    def progress(self, label: str) -> Progress | None:
        if self.quiet:
            return None

        def update(done: int, total: int) -> None:
            with self._lock:
                if self._label != label:
                    self._close()
                    self._label, self._shown = label, self._open(label)
                assert self._shown is not None
                self._shown(done, total)

        return update

    def _open(self, label: str) -> Shown:
        if self.stream.isatty():
            return TerminalBar(label, self.stream)
        return PlainProgress(label, self.stream, self.interval)

    def _close(self) -> None:
        if self._shown is not None:
            self._shown.close()
        self._label, self._shown = None, None

    def close(self) -> None:
        with self._lock:
            self._close()


class TerminalBar:
    """A bytes/rate/ETA bar labelled with what is going on."""

    def __init__(self, label: str, stream: IO[str]) -> None:
        from tqdm import tqdm

        size = os.get_terminal_size(stream.fileno())
        # A terminal that reports no size (some pseudo-terminals) would get no bar at all.
        shape: dict[str, Any] = {} if size.columns and size.lines else {"ncols": 80, "nrows": 24}
        self.bar = tqdm(
            desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=stream, **shape
        )

    def __call__(self, done: int, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)  # a resumed upload may step back to the server's

    def close(self) -> None:
        self.bar.close()


Shown = PlainProgress | TerminalBar
