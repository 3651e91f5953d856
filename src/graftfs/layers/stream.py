"""Verified, decompressed layer streams.

A layer is read exactly once, as a pipeline of readers::

    blob file ─► DigestReader (compressed size + digest) ─► decompressor ─► DigestReader (diffID) ─► tar

Nothing is buffered whole: each stage pulls fixed-size chunks from the one before. The checks run when the
stream has been drained, in GrootFS's order (size, digest, diffID) and with its texts, and a stream that
grows past the size its descriptor promises is cut off at once rather than read to the end.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, cast

from ..errors import InvalidImage, VerificationError

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class DigestReader(io.RawIOBase):
    """Counts and hashes every byte read through it.

    ``limit`` (when >= 0) makes the reader raise as soon as more bytes arrive than promised, so a lying or
    endless source cannot make us read (or unpack) more than its descriptor allows.
    """

    def __init__(self, raw: IO[bytes], limit: int = -1, on_overflow: Callable[[int], Exception] | None = None):
        super().__init__()
        self._raw = raw
        self._hash = hashlib.sha256()
        self.count = 0
        self._limit = limit
        self._on_overflow = on_overflow

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        n = len(data)
        if n:
            view[:n] = data
            self._hash.update(data)
            self.count += n
            if 0 <= self._limit < self.count and self._on_overflow is not None:
                raise self._on_overflow(self.count)
        return n

    def drain(self) -> None:
        """Read to the end, so the digest covers the whole stream (tar padding, trailing frames)."""
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def decompressor(stream: io.BufferedReader[Any]) -> IO[bytes]:
    """Pick the decompressor by magic bytes, not media type: local tarballs carry no media type, and a
    mislabelled layer is better read correctly than refused."""
    head = stream.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        try:
            from isal import igzip  # ISA-L: several times faster than zlib at inflate

            return cast(IO[bytes], igzip.IGzipFile(fileobj=stream, mode="rb"))  # type: ignore[no-untyped-call]
        except ImportError:  # pragma: no cover - isal is a dependency; kept for odd platforms
            import gzip

            return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))
    if head == ZSTD_MAGIC:
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_size=CHUNK, read_across_frames=True)
        return cast(IO[bytes], reader)
    return stream


@dataclass(frozen=True)
class Expect:
    """What the manifest promises about one blob. Empty/negative fields are not checked."""

    digest: str = ""
    size: int = -1
    diff_id: str = ""


class LayerStream:
    """Opens ``blob`` as a verified stream of uncompressed tar bytes (``self.tar``)."""

    def __init__(self, blob: IO[bytes], expect: Expect) -> None:
        self.expect = expect
        self._compressed = DigestReader(blob, expect.size, self._size_error)
        buffered = io.BufferedReader(self._compressed, CHUNK)
        try:
            self._decoded: IO[bytes] = decompressor(buffered)
        except Exception as exc:
            raise InvalidImage(f"reading layer: {exc}") from exc
        self._uncompressed = DigestReader(self._decoded)
        self.tar = io.BufferedReader(self._uncompressed, CHUNK)

    def _size_error(self, actual: int) -> VerificationError:
        return VerificationError(
            "validating actual blob size: layer size is different from the value in the manifest; "
            f"expected: {self.expect.size}, actual {actual}"
        )

    def finish(self) -> str:
        """Drain both ends and run the checks. Returns the diffID actually seen."""
        try:
            self._uncompressed.drain()
            self._compressed.drain()
        except (OSError, EOFError, ValueError) as exc:
            # zstandard/isal raise their own error types, all subclasses of these, for corrupt input.
            raise VerificationError(f"reading layer: {exc}") from exc
        e = self.expect
        if e.size >= 0 and self._compressed.count != e.size:
            raise self._size_error(self._compressed.count)
        if e.digest and self._compressed.digest != e.digest:
            raise VerificationError(f"layerID digest mismatch: expected: {e.digest}, actual: {self._compressed.digest}")
        if e.diff_id and self._uncompressed.digest != e.diff_id:
            raise VerificationError(
                f"diffID digest mismatch: expected: {e.diff_id}, actual: {self._uncompressed.digest}"
            )
        return self._uncompressed.digest

    def explain(self) -> VerificationError | None:
        """After a decode or unpack failure: was the blob itself wrong? Corrupt bytes usually break the
        decompressor before the digest can be compared, and the digest is the error worth reporting."""
        try:
            self._compressed.drain()
        except VerificationError as exc:
            return exc
        except OSError:
            return None
        e = self.expect
        if e.size >= 0 and self._compressed.count != e.size:
            return self._size_error(self._compressed.count)
        if e.digest and self._compressed.digest != e.digest:
            return VerificationError(
                f"layerID digest mismatch: expected: {e.digest}, actual: {self._compressed.digest}"
            )
        return None

    @property
    def compressed_bytes(self) -> int:
        return self._compressed.count
