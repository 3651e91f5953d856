"""Pull progress for people at a terminal: one status line on stderr, redrawn in place.

Only the CLI makes one, and only when stderr is a terminal and no log lines go there: Garden reads stderr
as lager logs and stdout as the runtime spec, so neither ever sees this. Layers are pulled by several
threads; they all report here, under a lock, and the line is redrawn at most every ``INTERVAL`` seconds.
"""

from __future__ import annotations

import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO

INTERVAL = 0.1


class Progress:
    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._drawn_at = 0.0
        self._drawn = False
        self.started = 0
        self.done = 0
        self.total = 0  # compressed bytes of the layers started so far (those with a known size)
        self.read = 0

    def layer(self, raw: IO[bytes], size: int) -> IO[bytes]:
        """Count what is read from a layer's blob (``size`` bytes, or -1 if unknown) into the display."""
        with self._lock:
            self.started += 1
            self.total += max(size, 0)
        self._draw(force=True)
        from .layers.stream import observed

        return observed(raw, lambda n, _ns: self.advance(n))

    def layer_done(self) -> None:
        with self._lock:
            self.done += 1
        self._draw(force=True)

    def advance(self, n: int) -> None:
        with self._lock:
            self.read += n
        self._draw()

    def close(self) -> None:
        with self._lock:
            if self._drawn:
                self._stream.write("\n")
                self._stream.flush()
                self._drawn = False

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._drawn_at < INTERVAL:
                return
            self._drawn_at = now
            rate = self.read / max(now - self._start, 1e-3)
            line = (
                f"pulling layers: {self.done}/{self.started} done, {_mb(self.read)}"
                + (f" of {_mb(self.total)}" if self.total else "")
                + f" MB, {_mb(rate)} MB/s"
            )
            # \r and erase-to-end: redraw in place, whatever the previous line's length.
            self._stream.write(f"\r{line}\x1b[K")
            self._stream.flush()
            self._drawn = True


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}"
