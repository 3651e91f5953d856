"""The typed interface between sources and the rest of graftfs."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from ..errors import InvalidImage
from ..layers.stream import Expect

DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


def check_digest(digest: object, what: str) -> str:
    """Digests index blob files by name: anything but a well-formed sha256 could walk out of ``blobs/``."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise InvalidImage(f"invalid {what} digest `{digest}`: only sha256 digests are supported")
    return digest


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """OCI chain IDs: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).

    (GrootFS hashes the bare hex strings instead; the image spec's form lets a store be compared with
    containerd's and skopeo's outputs.)
    """
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


@dataclass(frozen=True)
class LayerInfo:
    """One layer as the store needs it. ``volume_id`` names its volume: the chain ID's hex."""

    volume_id: str
    blob: str  # source-specific handle: a digest, or the tar file path
    expect: Expect = field(default_factory=Expect)
    media_type: str = ""
    base_directory: str = ""
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageSpec:
    layers: tuple[LayerInfo, ...]  # bottom layer first
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> list[str]:
        cfg = self.config.get("config") or {}
        env = cfg.get("Env") if isinstance(cfg, dict) else None
        return [e for e in env if isinstance(e, str)] if isinstance(env, list) else []

    @property
    def compressed_size(self) -> int:
        return sum(max(layer.expect.size, 0) for layer in self.layers)


class Source(Protocol):
    def resolve(self) -> ImageSpec:
        """Read the manifest and config (verified against their digests) and describe the layers."""
        ...

    def open_blob(self, layer: LayerInfo) -> IO[bytes]:
        """Open the layer's (possibly compressed) blob for one sequential read."""
        ...
