"""Layer streams: verification while reading, decompression, and unpacking into a volume directory; and
:class:`Expect`, what a manifest promises about one blob (sources build it, streams check it). Expect lives
here rather than in a module of its own because every warm create loads this package for it, and one module
more costs about a quarter of a millisecond to find and load."""

from __future__ import annotations


class Expect:
    """Empty or negative fields are not checked."""

    __slots__ = ("diff_id", "digest", "size")

    def __init__(self, digest: str = "", size: int = -1, diff_id: str = "") -> None:
        self.digest = digest
        self.size = size
        self.diff_id = diff_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expect) and (self.digest, self.size, self.diff_id) == (
            other.digest,
            other.size,
            other.diff_id,
        )

    def __hash__(self) -> int:
        return hash((self.digest, self.size, self.diff_id))

    def __repr__(self) -> str:
        return f"Expect(digest={self.digest!r}, size={self.size}, diff_id={self.diff_id!r})"
