"""Build one volume from one layer: open the blob, verify while streaming, unpack.

This is the only place where a source, a layer stream and the unpacker meet; the store calls
:meth:`LayerBuilder.build` under the volume's lock with an empty directory to fill.
"""

from __future__ import annotations

import os
import time

from .errors import GraftfsError, InvalidArgument, KernelError, os_reason
from .idmap import IdMap, Namespace
from .log import Logger

TYPE_CHECKING = False  # typing and dataclasses cost more than the interpreter start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable

    from .layers.unpack import UnpackOptions
    from .metrics import Metrics
    from .progress import Progress
    from .sources.base import ImageSpec, LayerInfo, Source
    from .store.features import Features
    from .store.layout import Layout


class QuotaExceeded(InvalidArgument):
    """The layers pulled for an image unpack to more than its disk limit."""


class LayerBuilder:
    """Builds the missing layers of one image. ``quota`` > 0 is the image's inclusive disk limit: as GrootFS,
    the uncompressed bytes of the layers pulled for it (all of them, whichever thread pulls them) may not
    exceed it, and the pull stops as soon as they do. Layers already in the store count later, in the
    ``disk limit is smaller than volume size`` check."""

    def __init__(
        self,
        layout: Layout,
        source: Source,
        spec: ImageSpec,
        namespace: Namespace,
        features: Features,
        log: Logger,
        progress: Progress | None = None,
        metrics: Metrics | None = None,
        quota: int = 0,
    ) -> None:
        self.layout = layout
        self.source = source
        self.spec = spec
        self.log = log
        self.progress = progress
        self.metrics = metrics
        self._download_ns: dict[int, int] = {}
        self.features = features
        self.uid_map = IdMap(namespace.uid_mappings)
        self.gid_map = IdMap(namespace.gid_mappings)
        self.quota_left = quota
        self._charge: Callable[[int], None] | None = None
        if quota > 0:
            import threading  # only with a disk limit, and then only when a layer is pulled

            # Layers are pulled on several threads, and ``-=`` on an attribute is not atomic.
            self._quota_lock = threading.Lock()
            self._charge = self._take

    def _take(self, n: int) -> None:
        with self._quota_lock:
            self.quota_left -= n
            exceeded = self.quota_left < 0
        if exceeded:
            raise QuotaExceeded("uncompressed layer size exceeds quota")

    def build(self, index: int, directory: str) -> int:
        layer = self.spec.layers[index]
        start = time.monotonic()
        start_ns = time.monotonic_ns()
        try:
            size = self._unpack(index, layer, directory)
        except KernelError as exc:
            # Only the unpacker raises these here: ```entry`: operation: reason``.
            raise exc.wrap(f"unpacking layer `{layer.blob}`").wrap("pulling the image") from exc
        except GraftfsError as exc:
            raise exc.wrap(f"streaming blob `{layer.blob}`").wrap("pulling the image") from exc
        except OSError as exc:
            raise KernelError(
                f"pulling the image: unpacking layer `{layer.blob}`: {os_reason(exc)}", exc.errno or 0
            ) from exc
        self.log.debug("layer-unpacked", volume=layer.volume_id, bytes=size, seconds=time.monotonic() - start)
        # Download, verification and unpacking are one stream here: UnpackTime is the whole layer, and
        # DownloadTime the part of it spent waiting for the blob's bytes.
        if self.metrics is not None:
            self.metrics.since("UnpackTime", start_ns)
            self.metrics.duration("DownloadTime", self._download_ns.pop(index, 0))
        return size

    def _waited(self, index: int, nanoseconds: int) -> None:
        self._download_ns[index] = self._download_ns.get(index, 0) + nanoseconds

    def _options(self, index: int, layer: LayerInfo) -> UnpackOptions:
        from .layers.unpack import UnpackOptions

        opts = UnpackOptions(
            # Owners are kept where every ID can be written; where one ID is mapped, all files are its.
            preserve_owner=self.features.ids == "all",
            devices=self.features.devices,
            xattr_namespace=self.features.xattrs,
            whiteouts=self.features.whiteouts,
            uid_map=self.uid_map,
            gid_map=self.gid_map,
            base_directory=layer.base_directory,
        )
        if layer.base_directory:
            # Directories the base directory implies take their owner and mode from the layers below,
            # as GrootFS does, so unpacking under /home/vcap does not turn /home into root:root 0755.
            parts = [p for p in layer.base_directory.split("/") if p and p != "."]
            for depth in range(1, len(parts) + 1):
                rel = "/".join(parts[:depth])
                for below in reversed(self.spec.layers[:index]):
                    try:
                        st = os.lstat(os.path.join(self.layout.volume(below.volume_id), rel))
                    except OSError:
                        continue
                    opts.implied_dirs[rel] = (st.st_mode & 0o7777, st.st_uid, st.st_gid)
                    break
        return opts

    def _unpack(self, index: int, layer: LayerInfo, directory: str) -> int:
        # Imported here: a warm create (every layer cached) never needs tarfile, isal or zstandard.
        from .layers.stream import LayerStream, observed
        from .layers.unpack import unpack

        with self.source.open_blob(layer) as blob:
            if self.metrics is not None:
                blob = observed(blob, lambda _n, ns: self._waited(index, ns))
            if self.progress is not None:
                blob = self.progress.layer(blob, layer.expect.size)
            stream = LayerStream(blob, layer.expect, self._charge)
            try:
                try:
                    result = unpack(stream.tar, directory, self._options(index, layer))
                except QuotaExceeded:
                    raise  # too large, whatever else may be wrong with it: no reading on to explain
                except Exception:
                    # Corrupt bytes usually break decompression or tar parsing before the digest can be
                    # compared; if the blob is wrong, that is the error worth reporting.
                    explained = stream.explain()
                    if explained is not None:
                        raise explained from None
                    raise
                stream.finish()
            finally:
                stream.close()
        if self.progress is not None:
            self.progress.layer_done()
        return result.bytes_written
