"""A root filesystem tarball on local disk: one layer, no config.

The tarball is not read to compute a digest on every create (that would cost a full read of a possibly
large file per container). Like GrootFS, its volume is keyed by path and modification time, and also by
size and inode, so replacing the file (even within one mtime tick) makes a new volume.
"""

from __future__ import annotations

import os
import stat

from ..errors import InvalidImage, NotFound, os_reason
from ..reference import ImageRef
from .base import ImageSpec, LayerInfo, sha256_digest

TYPE_CHECKING = False  # keep typing off the start-up path
if TYPE_CHECKING:
    from typing import IO


class TarballSource:
    def __init__(self, ref: ImageRef) -> None:
        self.path = ref.path

    def resolve(self) -> ImageSpec:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise NotFound(f"fetching image timestamp: stat {self.path}: no such file or directory") from None
        except OSError as exc:
            raise NotFound(f"fetching image timestamp: stat {self.path}: {os_reason(exc)}") from None
        if stat.S_ISDIR(st.st_mode):
            raise InvalidImage("invalid base image: directory provided instead of a tar file")
        key = f"{self.path}-{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"
        volume_id = sha256_digest(key.encode("utf-8", "surrogateescape"))[len("sha256:") :]
        return ImageSpec(layers=(LayerInfo(volume_id=volume_id, blob=self.path),))

    def open_blob(self, layer: LayerInfo) -> IO[bytes]:
        try:
            return open(layer.blob, "rb", buffering=0)
        except OSError as exc:
            raise NotFound(f"opening {layer.blob}: {os_reason(exc)}") from None
