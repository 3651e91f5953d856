"""Where everything lives in a store. The directories Garden and operators look at are GrootFS's::

<store>/images/<id>/{rootfs,diff,workdir,image_info}   one per container
<store>/volumes/<volume-id>/                           one unpacked layer, shared; named by chain ID
<store>/l/<short-id> -> ../volumes/<volume-id>         short lowerdir names (mount option size limit)
<store>/meta/volume-<volume-id>                        {"Size": bytes of regular files}
<store>/meta/dependencies/image:<id>.json              the volumes an image uses; its commit record
<store>/meta/namespace.json                            the store's UID/GID mappings
<store>/meta/plain-http/<host>                         insecure registries that speak plain HTTP
<store>/meta/documents/sha256-<hex>                    registry manifests and configs by digest, kept
<store>/meta/layer-repository.json                     the store's layer repository, if it has one
<store>/meta/repository-layers/<hex>                   a repository layer's verdict (usable in place, or why not)
<store>/meta/repository-chains/<chain-hex>             a repository layer used in place at that chain ID
<store>/r/<short-hex> -> <repository>/.layers/…/layerfs  short lowerdir names of repository layers
<store>/r/.hide/                                       a lower hiding DUCC's .cvmfscatalog markers
<store>/locks/*.lock                                   flock files
<store>/tmp/                                           TMPDIR for graftfs processes
"""

from __future__ import annotations

import os

from ..errors import InvalidArgument

INCOMPLETE = "incomplete"  # volumes/<id>-incomplete-<ns>-<rand>: a volume being built
GC_PREFIX = "gc."  # volumes/gc.<id>-collecting-<ns>-<rand>: a volume being removed
COLLECTING = "collecting"
SHORT_ID_LEN = 12


def validate_image_id(image_id: str) -> str:
    if "/" in image_id:
        raise InvalidArgument(f"id `{image_id}` contains invalid characters: `/`")
    bad = sorted({c for c in image_id if c < " " or c == "\x7f"})
    if bad:
        # A newline would split `list`'s output and the one-line error; shown escaped, as Go's %q would.
        shown = image_id.encode("unicode_escape").decode("ascii")
        chars = "".join(c.encode("unicode_escape").decode("ascii") for c in bad)
        raise InvalidArgument(f"id `{shown}` contains invalid characters: `{chars}`")
    if not image_id or image_id in (".", "..") or image_id.startswith("."):
        raise InvalidArgument(f"id `{image_id}` is not a valid image id")
    if "\x00" in image_id or len(image_id.encode("utf-8", "surrogateescape")) > 200:
        raise InvalidArgument(f"id `{image_id}` is not a valid image id")
    return image_id


class Layout:
    __slots__ = ("root",)

    def __init__(self, root: str) -> None:
        self.root = root

    @classmethod
    def at(cls, path: str) -> Layout:
        return cls(os.path.abspath(path))

    @property
    def images(self) -> str:
        return os.path.join(self.root, "images")

    @property
    def volumes(self) -> str:
        return os.path.join(self.root, "volumes")

    @property
    def links(self) -> str:
        return os.path.join(self.root, "l")

    @property
    def meta(self) -> str:
        return os.path.join(self.root, "meta")

    @property
    def dependencies(self) -> str:
        return os.path.join(self.root, "meta", "dependencies")

    @property
    def locks(self) -> str:
        return os.path.join(self.root, "locks")

    @property
    def tmp(self) -> str:
        return os.path.join(self.root, "tmp")

    @property
    def namespace_file(self) -> str:
        return os.path.join(self.root, "meta", "namespace.json")

    @property
    def released(self) -> str:
        """Dependency records of deleted images, kept a while for clean's age policy (see store.gc)."""
        return os.path.join(self.meta, "released")

    @property
    def projectids(self) -> str:
        return os.path.join(self.meta, "projectids")

    def quota_record(self, image_dir: str) -> str:
        """A quota backend's record of what it holds for an image directory (by its name, temp or final)
        outside it, such as its XFS project ID: what tells a delete that there is something to release. Under
        ``projectids/`` because XFS's project IDs were the first (and stores made then have them there)."""
        return os.path.join(self.projectids, f"image-{os.path.basename(image_dir)}")

    @property
    def plain_http_hosts(self) -> str:
        """Insecure registries found to speak plain HTTP, one empty file each (a hint for the next pull)."""
        return os.path.join(self.meta, "plain-http")

    @property
    def documents(self) -> str:
        """Manifests and configs a registry named by digest, kept for the next pull (sources.registry)."""
        return os.path.join(self.meta, "documents")

    @property
    def features_file(self) -> str:
        return os.path.join(self.meta, "features.json")

    # -- layer repository (graftfs.repository.layers) -----------------------------------------------------

    @property
    def layer_repository_file(self) -> str:
        return os.path.join(self.meta, "layer-repository.json")

    @property
    def repository_verdicts(self) -> str:
        return os.path.join(self.meta, "repository-layers")

    @property
    def repository_chains(self) -> str:
        """``<chain id hex>`` -> the repository layer a create used in place at that chain ID, and the chain ID
        below it (``{"digest", "parent"}``): how the snapshot core stacks a pulled layer that stands on it."""
        return os.path.join(self.meta, "repository-chains")

    @property
    def repository_links(self) -> str:
        """Short links to the repository's layers: the store's own (never shared: a repository is a store's)."""
        return os.path.join(self.root, "r")

    @property
    def repository_hide(self) -> str:
        return os.path.join(self.repository_links, ".hide")

    def directories(self) -> list[str]:
        return [self.images, self.volumes, self.links, self.meta, self.dependencies, self.locks, self.tmp]

    def is_initialized(self) -> bool:
        return all(os.path.isdir(d) for d in self.directories()) and os.path.isfile(self.namespace_file)

    # -- images ---------------------------------------------------------------------------------------------

    def image(self, image_id: str) -> str:
        return os.path.join(self.images, image_id)

    def dependency_file(self, image_id: str) -> str:
        return os.path.join(self.dependencies, f"image:{image_id}.json")

    # -- volumes --------------------------------------------------------------------------------------------

    def volume(self, volume_id: str) -> str:
        return os.path.join(self.volumes, volume_id)

    @property
    def volume_meta_dir(self) -> str:
        """Where volume size records live: ``meta/`` beside ``volumes/``. Spelled through ``volumes/..`` so
        that in a store sharing its layers (``volumes`` a symlink), the kernel resolves it to the shared
        ``meta/``; never normalise it."""
        return os.path.join(self.volumes, os.pardir, "meta")

    def volume_meta(self, volume_id: str) -> str:
        return os.path.join(self.volume_meta_dir, f"volume-{volume_id}")

    # -- shared layers ----------------------------------------------------------------------------------

    def shared_layers(self) -> str | None:
        """The directory whose layers this store shares (``volumes`` links there), or None."""
        try:
            target = os.readlink(self.volumes)
        except OSError:
            return None
        return os.path.dirname(target)

    def members(self) -> list[Layout]:
        """The other stores sharing this store's layers (registered in ``<shared>/stores/``)."""
        shared = self.shared_layers()
        if shared is None:
            return []
        stores = os.path.join(shared, "stores")
        found = []
        for name in sorted(os.listdir(stores)) if os.path.isdir(stores) else ():
            try:
                root = os.readlink(os.path.join(stores, name))
            except OSError:
                continue
            if root != self.root and os.path.isdir(root):
                found.append(Layout(root))
        return found

    @staticmethod
    def short_id(volume_id: str) -> str:
        return volume_id[:SHORT_ID_LEN]

    def link(self, volume_id: str) -> str:
        return os.path.join(self.links, self.short_id(volume_id))
