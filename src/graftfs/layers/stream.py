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
import time
from collections.abc import Callable
from typing import IO, Any, cast

from ..errors import GraftfsError, InvalidImage, VerificationError, os_reason
from . import Expect

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class DigestReader(io.RawIOBase):
    """Counts and hashes every byte read through it.

    ``limit`` (when >= 0) makes the reader raise as soon as more bytes arrive than promised, so a lying or
    endless source cannot make us read (or unpack) more than its descriptor allows. ``charge``, when given,
    is told how many bytes each read brought, and may raise to stop the stream (an image's disk limit).
    """

    def __init__(
        self,
        raw: IO[bytes],
        limit: int = -1,
        on_overflow: Callable[[int], Exception] | None = None,
        decoding: bool = False,
        charge: Callable[[int], None] | None = None,
    ):
        super().__init__()
        self._raw = raw
        self._hash = hashlib.sha256()
        self.count = 0
        self._limit = limit
        self._on_overflow = on_overflow
        self._decoding = decoding
        self._charge = charge

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._raw.read(len(view))
        except GraftfsError:
            raise  # e.g. the compressed side's size check, raised through the decompressor
        except Exception as exc:
            # isal's IsalError and zstandard's ZstdError derive from Exception only, and truncated gzip
            # raises EOFError: none of them is a GraftfsError or an OSError, so corrupt layers escaped
            # unpack() (which tarfile does not wrap them for) and the CLI as tracebacks. A real I/O error
            # on the blob (an OSError with an errno) is left as it is.
            if not self._decoding or (isinstance(exc, OSError) and exc.errno is not None):
                raise
            raise InvalidImage(f"reading layer: {exc}") from exc
        n = len(data)
        if n:
            view[:n] = data
            self._hash.update(data)
            self.count += n
            if 0 <= self._limit < self.count and self._on_overflow is not None:
                raise self._on_overflow(self.count)
            if self._charge is not None:
                self._charge(n)
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

        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], _ZstdFrames(stream)), read_size=CHUNK, read_across_frames=True
        )
        return cast(IO[bytes], reader)
    return stream


class _ZstdFrames:
    """Passes a zstd stream through unchanged while following its frame layout (RFC 8878 3.1), to notice a
    stream that stops inside a frame.

    Why: zstandard's stream_reader ends a truncated frame quietly, so a cut-off ``.tar.zst`` with no digest to
    catch it (a rootfs tarball, ``--skip-layer-validation``) became a silently partial root filesystem, where
    gzip raises EOFError (and GrootFS's Go reader "unexpected EOF"). Only headers are parsed; block contents
    are skipped over, so this costs a few Python steps per 128 KiB block. Anything not understood (legacy
    frames, reserved bits) switches the check off and leaves the verdict to the decoder.
    """

    _MAGIC = 0xFD2FB528
    _SKIPPABLE = 0x184D2A50  # 0x184D2A50..0x184D2A5F

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._state = "magic"
        self._need = 4  # header bytes wanted in this state
        self._head = bytearray()
        self._skip = 0  # payload bytes to pass over before the next header
        self._checksum = False
        self._lost = False

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if self._lost:
            return data
        if data:
            self._follow(memoryview(data))
        elif self._state != "magic" or self._head or self._skip:
            raise InvalidImage("reading layer: zstd: unexpected end of data: the blob ends inside a frame")
        return data

    def _follow(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end and not self._lost:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._head), end - pos)
            self._head += data[pos : pos + take]
            pos += take
            if len(self._head) == self._need:
                head = int.from_bytes(self._head, "little")
                self._head.clear()
                self._header(head)

    def _header(self, value: int) -> None:
        if self._state == "magic":
            if value == self._MAGIC:
                self._state, self._need = "descriptor", 1
            elif value & 0xFFFFFFF0 == self._SKIPPABLE:
                self._state, self._need = "skippable", 4
            else:
                self._lost = True
        elif self._state == "skippable":
            self._skip = value
            self._state, self._need = "magic", 4
        elif self._state == "descriptor":
            if value & 0x08:  # reserved bit
                self._lost = True
                return
            single_segment = bool(value & 0x20)
            self._checksum = bool(value & 0x04)
            dict_id = (0, 1, 2, 4)[value & 0x03]
            content_size = (1 if single_segment else 0, 2, 4, 8)[value >> 6]
            self._skip = (0 if single_segment else 1) + dict_id + content_size
            self._state, self._need = "block", 3
        else:  # block header: last-block bit, type (raw, RLE, compressed, reserved), size
            kind, size = (value >> 1) & 3, value >> 3
            if kind == 3:
                self._lost = True
                return
            self._skip = 1 if kind == 1 else size
            if value & 1:
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4


class LayerStream:
    """Opens ``blob`` as a verified stream of uncompressed tar bytes (``self.tar``). ``charge`` is told of
    every uncompressed byte, the tar padding and trailing bytes a drain reads included (see
    :class:`DigestReader`)."""

    def __init__(self, blob: IO[bytes], expect: Expect, charge: Callable[[int], None] | None = None) -> None:
        self.expect = expect
        # Not a bound method of self: the decompressor (a C object the garbage collector cannot see into)
        # holds the reader, and a cycle through it would keep every layer's buffers alive until exit.
        size = expect.size
        self._compressed = DigestReader(blob, size, lambda actual: _size_error(size, actual))
        self._buffered = buffered = io.BufferedReader(self._compressed, CHUNK)
        try:
            self._decoded: IO[bytes] = decompressor(buffered)
        except GraftfsError:
            # Sniffing the magic reads the first chunk, which for a small blob is all of it: a broken size
            # promise surfaces here and must stay the size error, not become "reading layer: ..." InvalidImage.
            raise
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # a real I/O error on the blob, not a bad layer
            raise InvalidImage(f"reading layer: {exc}") from exc
        self._uncompressed = DigestReader(self._decoded, decoding=True, charge=charge)
        self.tar = io.BufferedReader(self._uncompressed, CHUNK)

    def close(self) -> None:
        """Release the buffers and the decompressor's state (about 2 MiB per layer)."""
        for stream in (self.tar, self._decoded, self._buffered):
            stream.close()

    def finish(self) -> str:
        """Drain both ends and run the checks. Returns the diffID actually seen."""
        try:
            self._uncompressed.drain()
            self._compressed.drain()
        except InvalidImage as exc:
            # Corrupt or truncated compressed data: a wrong digest or size, if any, is the better error.
            raise (self.explain() or exc) from exc
        except (OSError, EOFError, ValueError) as exc:
            # Decoder errors arrive as InvalidImage (DigestReader translates them); these are what is left.
            raise VerificationError(f"reading layer: {os_reason(exc)}") from exc
        e = self.expect
        if e.size >= 0 and self._compressed.count != e.size:
            raise _size_error(e.size, self._compressed.count)
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
            return _size_error(e.size, self._compressed.count)
        if e.digest and self._compressed.digest != e.digest:
            return VerificationError(
                f"layerID digest mismatch: expected: {e.digest}, actual: {self._compressed.digest}"
            )
        return None


def _size_error(expected: int, actual: int) -> VerificationError:
    return VerificationError(
        "validating actual blob size: layer size is different from the value in the manifest; "
        f"expected: {expected}, actual {actual}"
    )


class Observed(io.RawIOBase):
    """Passes a blob through, telling ``on_read(bytes, nanoseconds)`` about each read (progress, metrics)."""

    def __init__(self, raw: IO[bytes], on_read: Callable[[int, int], None]) -> None:
        super().__init__()
        self._raw = raw
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        start = time.monotonic_ns()
        n: int = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        self._on_read(n, time.monotonic_ns() - start)
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def observed(raw: IO[bytes], on_read: Callable[[int, int], None]) -> IO[bytes]:
    return io.BufferedReader(Observed(raw, on_read), 1 << 16)
