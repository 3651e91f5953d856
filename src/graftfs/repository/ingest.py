"""Putting a layer into a layer repository directory, in CERN DUCC's layout (see :mod:`.layers`)::

    DIR/.layers/<hh>/<hex>/layerfs                 the layer, unpacked as DUCC's ingest leaves it
    DIR/.layers/<hh>/<hex>/.metadata/layers.json   what DUCC's StoreLayerInfo writes; the completion marker

``<hex>`` is the layer's compressed blob digest. The blob is verified while it streams (its size, digest and
diffID, :class:`~graftfs.layers.stream.LayerStream`), and unpacked as ``cvmfs_server ingest``'s tar engine
does: OCI whiteouts (``.wh.<name>``) and opaque markers (``.wh..wh..opq``) are kept as the plain files they
are in the tar (creates stack such layers with the store-side shims of :mod:`.layers`).

**Atomic and concurrent.** A layer is built in ``.layers/<hh>/.<hex>.tmp-<time>-<random>`` (both ``layerfs``
and ``.metadata``) and renamed to ``.layers/<hh>/<hex>``: readers see it whole or not at all. Builders of one
layer take an exclusive flock on ``.layers/<hh>/.<hex>.lock`` first, so one builds while the others wait and
then find it there (one copy, one download); the kernel drops the lock of a builder that dies. Whoever holds
the lock removes what a killed build left: any ``.<hex>.tmp-*`` directory (nobody else can be building it),
and a ``<hex>`` directory without its ``layers.json`` (B's rule: ``layerfs`` without metadata is not a
layer). Ingesting a layer that is there does nothing (idempotent), and reads no blob.
"""

from __future__ import annotations

import os
import time

from ..errors import GraftfsError, InvalidArgument, KernelError, os_reason
from ..store.fsutil import remove_tree, temp_name
from .layers import LAYERFS, LAYERS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO

    from ..layers import Expect

METADATA = ".metadata"
LAYERS_JSON = "layers.json"
#: How long an ingest waits for another one building the same layer (a large layer takes minutes).
WAIT = 3600.0


def entry_dir(root: str, digest: str) -> str:
    """``DIR/.layers/<hh>/<hex>`` for ``sha256:<hex>``."""
    hexd = _hex(digest)
    return os.path.join(root, LAYERS, hexd[:2], hexd)


def _hex(digest: str) -> str:
    algorithm, _, hexd = digest.partition(":")
    if algorithm != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise InvalidArgument(f"a layer repository keys layers by sha256 digest, not `{digest}`")
    return hexd


def present(root: str, digest: str) -> bool:
    """Whether the layer is in the repository, complete (its ``layers.json`` written)."""
    return os.path.isfile(os.path.join(entry_dir(root, digest), METADATA, LAYERS_JSON))


def layers_json(digest: str, diff_id: str, size: int) -> bytes:
    """``.metadata/layers.json`` as DUCC's ``StoreLayerInfo`` writes it: one podman ``LayerInfo``."""
    from .. import jsonc

    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    info = {
        "id": diff_id.partition(":")[2],
        "created": created,
        "compressed-diff-digest": digest,
        "diff-digest": diff_id,
        "diff-size": size,
    }
    return jsonc.dumps([info]).encode() + b"\n"


def ingest(root: str, expect: Expect, open_blob: Callable[[], IO[bytes]], wait: float = WAIT) -> bool:
    """Put the layer whose blob ``open_blob()`` opens into the repository at ``root``, verified against
    ``expect`` (its ``digest`` is required: it names the layer). True if this call built it, False if it was
    there already (then no blob is opened). Errors are one line; nothing half-built stays in ``.layers``."""
    from ..store.locks import FileLock

    final = entry_dir(root, expect.digest)
    if present(root, expect.digest):
        return False
    hexd = os.path.basename(final)
    parent = os.path.dirname(final)
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise KernelError(f"layer repository {root}: making {parent}: {os_reason(exc)}", exc.errno or 0) from exc
    lock = FileLock(parent, f".{hexd}")
    lock.acquire(timeout=wait)
    try:
        if present(root, expect.digest):
            return False
        _remove_leftovers(parent, hexd)
        tmp = temp_name(os.path.join(parent, f".{hexd}"), "tmp")
        os.mkdir(tmp, 0o755)
        try:
            _build(tmp, expect, open_blob)
            os.rename(tmp, final)
        except BaseException:
            remove_tree(tmp)
            raise
        return True
    finally:
        lock.discard()  # whoever holds it: no lock file stays beside a layer (a waiter makes its own anew)


def _remove_leftovers(parent: str, hexd: str) -> None:
    """Under the layer's lock: what a killed build left (its temp directory), and an incomplete layer."""
    prefix = f".{hexd}-tmp-"
    for name in os.listdir(parent):
        if name.startswith(prefix) and not name.endswith(".lock"):
            remove_tree(os.path.join(parent, name))
    final = os.path.join(parent, hexd)
    if os.path.lexists(final):
        remove_tree(final)  # layerfs without layers.json: a layer DUCC's rule says is not there


def _build(tmp: str, expect: Expect, open_blob: Callable[[], IO[bytes]]) -> None:
    from ..layers.stream import LayerStream
    from ..layers.unpack import UnpackOptions, unpack

    layerfs = os.path.join(tmp, LAYERFS)
    os.mkdir(layerfs, 0o755)
    root = os.geteuid() == 0
    options = UnpackOptions(preserve_owner=root, devices=root, whiteouts="file")
    size = 0

    def count(n: int) -> None:
        nonlocal size
        size += n

    try:
        with open_blob() as blob:
            stream = LayerStream(blob, expect, count)
            try:
                try:
                    unpack(stream.tar, layerfs, options)
                except Exception:
                    explained = stream.explain()  # a wrong blob is the error worth reporting
                    if explained is not None:
                        raise explained from None
                    raise
                diff_id = stream.finish()
            finally:
                stream.close()
    except GraftfsError as exc:
        raise exc.wrap(f"ingesting layer `{expect.digest}`") from exc
    except OSError as exc:
        raise KernelError(f"ingesting layer `{expect.digest}`: {os_reason(exc)}", exc.errno or 0) from exc
    os.mkdir(os.path.join(tmp, METADATA), 0o755)
    with open(os.path.join(tmp, METADATA, LAYERS_JSON), "wb") as f:
        f.write(layers_json(expect.digest, diff_id, size))
        f.flush()
        os.fsync(f.fileno())


__all__ = ["entry_dir", "ingest", "layers_json", "present"]
