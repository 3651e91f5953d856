"""UID/GID mappings (``NS:HOST:SIZE``), as recorded by ``init-store`` in ``meta/namespace.json``."""

from __future__ import annotations

from . import jsonc
from .errors import FailedPrecondition, InvalidArgument

TYPE_CHECKING = False  # typing and dataclasses cost more than the interpreter start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

MAX_ID = 0xFFFFFFFF


class Mapping:
    __slots__ = ("host_id", "namespace_id", "size")

    def __init__(self, namespace_id: int, host_id: int, size: int) -> None:
        self.namespace_id = namespace_id
        self.host_id = host_id
        self.size = size

    def _key(self) -> tuple[int, int, int]:
        return (self.namespace_id, self.host_id, self.size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self._key() == other._key()

    def __lt__(self, other: Mapping) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Mapping({self.namespace_id}, {self.host_id}, {self.size})"

    @classmethod
    def parse(cls, text: str) -> Mapping:
        parts = text.strip().split(":")
        try:
            ns, host, size = (int(p) for p in parts)
        except ValueError:
            raise InvalidArgument(f"invalid mapping `{text}`: expected NAMESPACE_ID:HOST_ID:SIZE") from None
        if min(ns, host) < 0 or size < 1 or ns + size - 1 > MAX_ID or host + size - 1 > MAX_ID:
            raise InvalidArgument(f"invalid mapping `{text}`: IDs out of range")
        return cls(ns, host, size)

    def __str__(self) -> str:
        return f"{self.namespace_id}:{self.host_id}:{self.size}"


def parse_all(values: Iterable[str]) -> list[Mapping]:
    """Repeatable flags that may also hold comma-separated lists (urfave/cli string slices)."""
    return [Mapping.parse(v) for value in values for v in value.split(",") if v.strip()]


class IdMap:
    """Translate a container ID to the host: ``host + id - namespace`` within a range.

    GrootFS computes ``host + id - 1`` (right only for ranges that start at 1); this is the kernel's rule.
    IDs outside every range are left as they are, as GrootFS does.
    """

    def __init__(self, mappings: Sequence[Mapping]) -> None:
        self.mappings = sorted(mappings)

    def __bool__(self) -> bool:
        return bool(self.mappings)

    def __call__(self, container_id: int) -> int:
        for m in self.mappings:
            if m.namespace_id <= container_id < m.namespace_id + m.size:
                return m.host_id + container_id - m.namespace_id
        return container_id


class Namespace:
    """A store's mappings, as ``meta/namespace.json`` records them."""

    def __init__(self, uid_mappings: Sequence[Mapping] = (), gid_mappings: Sequence[Mapping] = ()) -> None:
        self.uid_mappings = list(uid_mappings)
        self.gid_mappings = list(gid_mappings)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Namespace)
            and sorted(self.uid_mappings) == sorted(other.uid_mappings)
            and sorted(self.gid_mappings) == sorted(other.gid_mappings)
        )

    __hash__ = None  # type: ignore[assignment]

    def kernel_maps(self) -> tuple[str, str]:
        """``/proc/<pid>/uid_map`` and ``gid_map`` contents for these mappings (identity where none)."""

        def lines(mappings: Sequence[Mapping]) -> str:
            return "".join(f"{m.namespace_id} {m.host_id} {m.size}\n" for m in mappings) or "0 0 4294967295\n"

        return lines(self.uid_mappings), lines(self.gid_mappings)

    def to_json(self) -> bytes:
        doc = {
            "uid-mappings": sorted(str(m) for m in self.uid_mappings),
            "gid-mappings": sorted(str(m) for m in self.gid_mappings),
        }
        return jsonc.dumps(doc).encode() + b"\n"

    @classmethod
    def from_json(cls, data: str) -> Namespace:
        try:
            doc = jsonc.loads(data or "{}")
        except ValueError:
            raise FailedPrecondition("store metadata meta/namespace.json is corrupt") from None
        return cls(parse_all(doc.get("uid-mappings") or []), parse_all(doc.get("gid-mappings") or []))

    @property
    def owner(self) -> tuple[int, int]:
        """Who owns the store and each image: the host IDs that container root maps to."""
        return IdMap(self.uid_mappings)(0), IdMap(self.gid_mappings)(0)
