"""Publishing a container's changes as a layer of a thin image, through S3, and the publisher that puts
published layers into a layer repository.

``graftfs thin publish ID``: the image's writable layer (``<store>/images/<ID>/diff``, its overlay's upper
dir) is written as an OCI layer (:func:`graftfs.layers.diff.write_layer`: overlay whiteouts and opaque
directories as ``.wh.`` entries, deterministic, gzip or zstd), uploaded to S3 as ``layers/<hex>`` (its
compressed digest) with ``If-None-Match: *`` (the same changes published twice upload nothing the second
time), and a new thin image is written: the descriptor the image was created from (recorded by the create,
``images/<ID>/thin.json``) with the new layer appended on top, and its config. The output layout is written
only once the upload has succeeded: an unreachable S3, or one refusing the credentials, leaves nothing.

``graftfs thin publisher``: lists ``layers/`` in the bucket; each object whose layer is not in the
repository yet is downloaded (to an unnamed file in the repository's ``.layers``, so a killed publisher
leaves nothing), its digest checked against its key, and ingested (:mod:`.ingest`). An object whose bytes do
not match its key is reported in one line and not ingested. ``publish --wait`` polls the repository until
the layer is there.

From Python: ``Store.thin_publish`` (:meth:`graftfs.api.Store.thin_publish`), which ``thin publish`` calls;
:func:`publisher_pass` is one pass of the publisher.
"""

from __future__ import annotations

import os
import time

from ..errors import FailedPrecondition, GraftfsError, InvalidArgument, Unavailable, VerificationError, os_reason
from . import thin

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import IO, Any

    from ..api import Store
    from ..idmap import Mapping
    from ..log import Logger
    from ..store.layout import Layout
    from .s3 import S3Client

PREFIX = "layers/"
RECORD = "thin.json"
CONFIG_RECORD = "thin-config.json"


class Published:
    """What a publish did: the new layer, its S3 key, whether it was uploaded (False: it was there), and the
    new thin image's manifest digest."""

    __slots__ = ("key", "layer", "manifest", "uploaded")

    def __init__(self, layer: thin.ThinLayer, key: str, uploaded: bool, manifest: str) -> None:
        self.layer = layer
        self.key = key
        self.uploaded = uploaded
        self.manifest = manifest

    def __repr__(self) -> str:
        return (
            f"Published(layer={self.layer!r}, key={self.key!r}, uploaded={self.uploaded!r}, manifest={self.manifest!r})"
        )


def _to_image(mappings: Sequence[Mapping]) -> Any:
    """host ID → the image's ID, through a store's mappings (IDs outside them stay as they are)."""

    def back(host: int) -> int:
        for m in mappings:
            if m.host_id <= host < m.host_id + m.size:
                return m.namespace_id + host - m.host_id
        return host

    return back


def parent_of(store: Store, image_id: str) -> tuple[thin.ThinImage, dict[str, Any]]:
    """The thin descriptor and config an image was created from (its create recorded them)."""
    from ..store.fsutil import read_text

    directory = store.layout.image(image_id)
    if not store.images.is_committed(image_id):
        raise FailedPrecondition(f"image `{image_id}` not found in store {store.path}")
    text = read_text(os.path.join(directory, RECORD))
    if not text:
        raise FailedPrecondition(
            f"image `{image_id}` was not created from a thin image: only a thin image's changes are published "
            "as a thin image (thin convert makes one)"
        )
    from .. import jsonc

    config = jsonc.loads(read_text(os.path.join(directory, CONFIG_RECORD), "{}"))
    return thin.parse(text.encode(), f"images/{image_id}/{RECORD}"), config if isinstance(config, dict) else {}


def publish(
    store: Store,
    image_id: str,
    client: S3Client,
    output: str,
    compression: str = "gzip",
    repository_name: str = "",
    log: Logger | None = None,
) -> Published:
    """Upload the changes of image ``image_id`` and write the thin image that has them on top to ``output``."""
    from .convert import parse_output, write_thin

    parse_output(output)
    parent, config = parent_of(store, image_id)
    namespace = store.namespace()
    image, published = publish_changes(
        os.path.join(store.layout.image(image_id), "diff"),
        parent,
        client,
        store.layout,
        compression=compression,
        repository_name=repository_name,
        xattr_namespace=store.features().xattrs,
        uid=_to_image(namespace.uid_mappings),
        gid=_to_image(namespace.gid_mappings),
        log=log,
    )
    published.manifest = write_thin(output, image, config)
    return published


def publish_changes(
    upper: str,
    parent: thin.ThinImage,
    client: S3Client,
    layout: Layout,
    *,
    compression: str = "gzip",
    repository_name: str = "",
    xattr_namespace: str = "trusted",
    uid: Callable[[int], int] | None = None,
    gid: Callable[[int], int] | None = None,
    log: Logger | None = None,
) -> tuple[thin.ThinImage, Published]:
    """The overlay upper directory ``upper`` (a container's changes over the thin image ``parent``) written as
    an OCI layer (owners through ``uid``/``gid``, overlay xattrs in ``xattr_namespace``), in a temporary file of
    the store ``layout``, uploaded to S3 as ``layers/<hex>`` with ``If-None-Match: *``; returns the descriptor
    with the layer appended on top, and what was published (its ``manifest`` empty: no image written). For
    ``thin publish`` and the Docker graphdriver's ``Diff`` alike."""
    from ..layers.diff import write_layer
    from ..store.fsutil import temp_name
    from .convert import thin_url

    name = repository_name or _repository_name(parent, layout)
    os.makedirs(layout.tmp, mode=0o700, exist_ok=True)
    tmp = temp_name(os.path.join(layout.tmp, "publish"), "layer")
    identity = _to_image(())
    try:
        with open(tmp, "xb") as f:
            written = write_layer(upper, f, compression, xattr_namespace, uid or identity, gid or identity)
        hexd = written.digest.partition(":")[2]
        key = PREFIX + hexd
        uploaded = client.put_file(key, tmp, if_none_match=True)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    if log is not None:
        log.info("layer-published", key=key, digest=written.digest, size=written.size, uploaded=uploaded)
    layer = thin.ThinLayer(hexd, thin_url(name, written.digest))
    return parent.with_layer(layer), Published(layer, key, uploaded, "")


def _repository_name(parent: thin.ThinImage, layout: Layout) -> str:
    """The repository the parent's layers name (its top layer's url), else the store repository's name."""
    for layer in reversed(parent.layers):
        if layer.url:
            return layer.location()[0]
    from ..store.fsutil import read_text
    from .layers import parse

    record = read_text(layout.layer_repository_file)
    if record:
        return os.path.basename(parse(record)[0])
    raise InvalidArgument("thin publish: give --repository-name: the thin image names no repository")


def wait_for(repository: str, digest: str, timeout: float, interval: float = 0.2) -> None:
    """Return once the layer is in the repository (a publisher ingested it), else Unavailable after
    ``timeout`` seconds."""
    from .layers import layer_dir

    deadline = time.monotonic() + timeout
    # The snapshotter's rule, and a create's: a layerfs that is there is whole (graftfs's ingest renames it
    # into place with its metadata; CernVM-FS publishes an ingest whole).
    while not os.path.isdir(layer_dir(repository, "sha256:" + digest.removeprefix("sha256:"))):
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"layer {digest} is not in the layer repository {repository} after {timeout:g}s: is a publisher "
                "(graftfs thin publisher) running for this bucket?"
            )
        time.sleep(interval)


# -- the publisher -------------------------------------------------------------------------------------------


def _unnamed_file(directory: str) -> IO[bytes]:
    """A file with no name in ``directory`` (O_TMPFILE), gone when closed or when the process dies."""
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        from ..store.fsutil import temp_name

        path = temp_name(os.path.join(directory, ".incoming"), "tmp")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.unlink(path)
    return open(fd, "w+b")


def _file_digest(f: IO[bytes]) -> str:
    import hashlib

    f.seek(0)
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def _there(repository: str, digest: str, command: Sequence[str]) -> bool:
    """Whether the layer is in the repository: its metadata written (graftfs's own ingest), or, where a
    command ingests (``cvmfs_server ingest`` publishes a layer whole), its ``layerfs`` there."""
    from .ingest import present
    from .layers import layer_dir

    return os.path.isdir(layer_dir(repository, digest)) if command else present(repository, digest)


def command_for(template: Sequence[str], digest: str) -> list[str]:
    """The ingest command for one layer: ``{hex}``, ``{hh}``, ``{digest}`` and ``{path}`` (the layer's
    ``layerfs`` relative to the repository, DUCC's ``.layers/<hh>/<hex>/layerfs``) replaced in each word."""
    hexd = digest.partition(":")[2]
    values = {
        "{hex}": hexd,
        "{hh}": hexd[:2],
        "{digest}": digest,
        "{path}": f".layers/{hexd[:2]}/{hexd}/layerfs",
    }
    out = []
    for word in template:
        for key, value in values.items():
            word = word.replace(key, value)
        out.append(word)
    return out


def ingest_with_command(template: Sequence[str], expect: Any, blob: IO[bytes]) -> None:
    """Pipe the layer's uncompressed tar, verified while it streams, into the ingest command (as DUCC feeds
    ``cvmfs_server ingest -t -``). Its failure, or a blob that is not what it claims, is one line."""
    import subprocess

    from ..errors import KernelError
    from ..layers.stream import CHUNK, LayerStream

    argv = command_for(template, expect.digest)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as exc:
        raise KernelError(f"ingest command {argv[0]}: {os_reason(exc)}", exc.errno or 0) from None
    assert proc.stdin is not None and proc.stderr is not None
    stream = LayerStream(blob, expect)
    try:
        try:
            while chunk := stream.tar.read(CHUNK):
                proc.stdin.write(chunk)
            stream.finish()
        except BrokenPipeError:
            pass  # the command stopped reading: its status says why
        except BaseException:
            proc.kill()
            raise
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        err = proc.stderr.read().decode(errors="replace")
        status = proc.wait()
    finally:
        stream.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if status != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        last = f": {' '.join(lines[-1].split())}" if lines else ""
        raise KernelError(f"ingest command {' '.join(argv)}: exit status {status}{last}")


def publisher_pass(client: S3Client, repository: str, log: Logger, command: Sequence[str] = ()) -> list[str]:
    """One pass over the bucket: ingest every published layer not in the repository yet (by graftfs's own
    ingest, or by ``command``, see :func:`command_for`). Returns one line per layer that could not be
    ingested (and ingests nothing of it); S3 errors on the listing raise."""
    from .ingest import ingest
    from .layers import LAYERS

    failures = []
    hexchars = set("0123456789abcdef")
    for obj in client.list_objects(PREFIX):
        hexd = obj.key[len(PREFIX) :]
        if len(hexd) != 64 or not set(hexd) <= hexchars:
            log.info("publisher-skipped", key=obj.key, reason="not layers/<sha256 hex>")
            continue
        digest = "sha256:" + hexd
        if _there(repository, digest, command):
            continue
        where = f"s3://{client.bucket}/{obj.key}"
        incoming = os.path.join(repository, LAYERS) if not command else _spool()
        try:
            with _unnamed_file(incoming) as f:
                client.get_object(obj.key, f)
                actual = _file_digest(f)
                if actual != digest:
                    raise VerificationError(f"layerID digest mismatch: expected: {digest}, actual: {actual}")
                from ..layers import Expect

                def reopen(f: IO[bytes] = f) -> IO[bytes]:
                    f.seek(0)
                    return os.fdopen(os.dup(f.fileno()), "rb")

                if command:
                    ingest_with_command(command, Expect(digest, obj.size), reopen())
                else:
                    ingest(repository, Expect(digest, obj.size), reopen)
        except GraftfsError as exc:
            line = f"{where}: {exc}"
            log.error("publisher-layer-failed", line, key=obj.key)
            failures.append(line)
            continue
        except OSError as exc:
            line = f"{where}: {os_reason(exc)}"
            log.error("publisher-layer-failed", line, key=obj.key)
            failures.append(line)
            continue
        log.info("publisher-layer-ingested", key=obj.key, digest=digest)
    return failures


def _spool() -> str:
    """Where a download waits for an ingest command (the repository is the command's to write): an unnamed
    file in /tmp (not $TMPDIR, which graftfs points into the store, and a publisher has none)."""
    return "/tmp"


def run_publisher(client: S3Client, repository: str, log: Logger, interval: float, command: Sequence[str] = ()) -> None:
    """Pass after pass, ``interval`` seconds apart, until interrupted; a pass that fails (S3 unreachable) is
    logged and the next one tried."""
    while True:
        try:
            publisher_pass(client, repository, log, command)
        except GraftfsError as exc:
            log.error("publisher-pass-failed", exc)
        time.sleep(max(interval, 0.1))
