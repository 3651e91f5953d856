"""A store's layer repository: a read-only tree of unpacked layers, used in place as overlay lowerdirs.

``init-store --layer-repository DIR`` records DIR in the store (``meta/layer-repository.json``). DIR is laid
out as CERN's DUCC writes ``/cvmfs/unpacked.cern.ch`` and as CernVM-FS's containerd snapshotter reads it::

    DIR/.layers/<first two hex>/<hex>/layerfs      one layer, unpacked; <hex> is the manifest's layer digest

``<hex>`` is the layer's *compressed blob* digest, as the manifest names it (not the diffID), sha256 only,
without its ``sha256:``. A layer is there when ``layerfs`` is a directory: the snapshotter's rule (CernVM-FS
publishes an ingest atomically, so a ``layerfs`` that is visible is complete). Nothing in the repository is
verified against a digest: like the snapshotter, graftfs trusts a repository that only root can write
(see :func:`check`), which is why one that others can write is refused.

**What DUCC's ingest does to a layer**, and how graftfs handles it (docs/research: ``cvmfs_server ingest``'s
tar engine):

* OCI whiteouts (``.wh.<name>``) and opaque markers (``.wh..wh..opq``) are kept as *plain files*: nothing is
  deleted and no overlayfs whiteout (a 0:0 character device) or ``trusted.overlay.opaque`` xattr is made.
  Stacked as an overlay lower as it is, such a layer would neither delete what it deletes nor hide the
  marker files. graftfs therefore stacks such a layer **between the two lowers of a shim** the store makes
  for it once (:func:`build_shim`, ``r/<12 hex>.shim/{above,below}``): ``below``, right under the layer,
  holds an overlay whiteout for each name the layer deletes and marks opaque each directory it makes opaque,
  so they apply to the layers below it and never to its own files (the OCI rule); ``above``, right over it,
  holds an overlay whiteout over each marker file, so none shows, in directories that copy the layer's
  (mode, owner through the store's mappings, times), since the top-most lower's directory is the one the
  overlay shows. Whether a layer has any ``.wh.`` entry is found by one walk of its tree, the first time a
  store meets it, and kept in ``meta/repository-layers/<hex>`` (the layer's verdict; a repository's layers
  never change under their digest), so warm creates read one small file per layer instead of walking it.
  Where this caller cannot make 0:0 character devices, such a layer is pulled into the store as today (its
  whiteouts unpacked as the store's), and the log says why.
* ``layerfs/.cvmfscatalog``, the empty file that marks a nested catalog, is visible in every layer DUCC
  ingests with ``--catalog``. Where a layer in place has one, the image gets one more lower on top,
  ``r/.hide`` in the store: a directory holding an overlay whiteout (0:0 character device) named
  ``.cvmfscatalog``, so ``/.cvmfscatalog`` is not in the container (nor can a pulled layer put one there).
  Its root's attributes never show: an image's root comes from its writable layer.
* xattrs (file capabilities included) are dropped, hardlinks become copies, and newer CernVM-FS versions
  replace owners unless ingest was given ``-k``: a layer in place shows what the repository holds. That is
  the repository's content and graftfs does not correct it (the snapshotter does not either).

**Names in the store**: a layer used in place is named in the overlay's options by a short link
``r/<first 12 hex>`` to its absolute ``layerfs`` path (the options must fit in a page), made once per store
and layer (temp link and rename; a link that exists and points there is left alone); its shim, if it needs
one, is ``r/<first 12 hex>.shim``, built under a temporary name and renamed into place. In a store with ID
mappings, a layer in place is bound idmapped at ``images/<id>/lowers/<n>`` instead (the store's layers are
shifted on disk, the repository's are not), where the repository's filesystem allows idmapped mounts (tried
by ``init-store``, recorded); elsewhere such layers are pulled, and the log says why.

``clean`` and ``delete`` never touch the repository: the store only links to it, and ``clean`` collects
volumes (``volumes/``), never anything under ``r/``.

The snapshot core (:mod:`graftfs.store.snapshots`) uses the same :class:`Repository` (``find``, ``verdict``,
``shim``) for containerd's remote layers: a layer containerd's unpacker labels with its digest is committed
as a snapshot whose tree is the layer's ``layerfs``, and is never downloaded.
"""

from __future__ import annotations

import os
import stat

from ..errors import FailedPrecondition, InvalidArgument, NotFound, os_reason
from ..store.fsutil import atomic_write, read_text, temp_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..api import Store
    from ..log import Logger
    from ..sources.base import ImageSpec
    from ..store.features import Features
    from ..store.layout import Layout
    from .thin import ThinImage

LAYERS = ".layers"
LAYERFS = "layerfs"
WHITEOUT_PREFIX = ".wh."
CATALOG_MARKER = ".cvmfscatalog"
OPAQUE = ".wh..wh..opq"
#: A layer's verdict (``meta/repository-layers/<hex>``): flags joined by ``,``, none meaning usable as it is;
#: ``shim``: it has whiteout files, and is stacked between the lowers of its shim (see :func:`build_shim`);
#: ``hide``: ``/.cvmfscatalog`` is to be hidden.
USABLE = ""
SHIM = "shim"
HIDE = "hide"
LINK_LEN = 12


def layer_dir(root: str, digest: str) -> str:
    """Where the layer with manifest digest ``digest`` (``sha256:<hex>``) is, in a repository at ``root``."""
    hexd = digest.partition(":")[2]
    return os.path.join(root, LAYERS, hexd[:2], hexd, LAYERFS)


def _writable_by_others(st: os.stat_result) -> bool:
    """Whether someone other than root may change this directory entry's contents."""
    return st.st_uid != 0 or bool(st.st_mode & 0o022)


def _read_only(path: str) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def check(path: str) -> str:
    """The repository's real path, or a one-line error: a relative path, a repository that is not there (or
    not mounted: no ``.layers``), or one that a user other than root could write, where the layers, their
    directories or any directory above them is writable by anyone but root (a read-only filesystem is not
    writable; a sticky directory above is fine when what it holds is root's)."""
    if not os.path.isabs(path):
        raise InvalidArgument(f"layer repository `{path}` must be an absolute path")
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise FailedPrecondition(f"layer repository {path}: {os_reason(exc)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(f"layer repository {path} is not a directory")
    layers = os.path.join(real, LAYERS)
    if not os.path.isdir(layers):
        raise FailedPrecondition(
            f"layer repository {path} has no {LAYERS} directory: not mounted, or not in DUCC's layout "
            f"({path}/{LAYERS}/<hh>/<hex>/layerfs)"
        )
    child_is_roots = True
    current = layers
    while True:
        st = os.stat(current)
        if not _read_only(current) and _writable_by_others(st):
            sticky_above = current not in (layers, real) and st.st_uid == 0 and st.st_mode & stat.S_ISVTX
            if not (sticky_above and child_is_roots):
                raise FailedPrecondition(
                    f"layer repository {path} is writable by users other than root ({current}: owner {st.st_uid}, "
                    f"mode {stat.S_IMODE(st.st_mode):04o}): its layers are mounted into containers as they are; "
                    "make it read-only, or root's only"
                )
        child_is_roots = st.st_uid == 0
        parent = os.path.dirname(current)
        if parent == current:
            return real
        current = parent


def _check_layer_path(root: str, path: str) -> None:
    """The directories of one layer (``<hh>``, ``<hex>``, ``layerfs``) are root's only, or read-only."""
    current = path
    while current != os.path.join(root, LAYERS):
        st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode) or (not _read_only(current) and _writable_by_others(st)):
            mode = stat.S_IMODE(st.st_mode)
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else f"owner {st.st_uid}, mode {mode:04o}"
            raise FailedPrecondition(
                f"layer repository {root}: {current} is {what}: a repository's layers must be root's only "
                "(or read-only), and real directories"
            )
        current = os.path.dirname(current)


def scan(path: str) -> str:
    """One layer's verdict, from one walk of ``layerfs``: the flags :data:`SHIM` (it holds OCI whiteout files,
    ``.wh.*``, which overlayfs would not read as deletions) and :data:`HIDE` (a ``.cvmfscatalog`` at its root)
    joined by ``,`` (empty: usable as it is); or ``writable:<path>`` for an entry others could write, on a
    filesystem that is not read-only."""
    read_only = _read_only(path)
    flags = []
    stack = [path]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(WHITEOUT_PREFIX) and SHIM not in flags:
                    flags.append(SHIM)
                st = entry.stat(follow_symlinks=False)
                if not read_only and not stat.S_ISLNK(st.st_mode) and _writable_by_others(st):
                    return f"writable:{os.path.relpath(entry.path, path)}"
                if stat.S_ISDIR(st.st_mode) and not entry.name.startswith(WHITEOUT_PREFIX):
                    stack.append(entry.path)
    if os.path.isfile(os.path.join(path, CATALOG_MARKER)):
        flags.append(HIDE)
    return ",".join(flags)


def markers(path: str) -> list[str]:
    """The ``.wh.`` entries of ``layerfs`` (relative paths), found by a walk; not below one of them."""
    found = []
    stack = [path]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(WHITEOUT_PREFIX):
                    found.append(os.path.relpath(entry.path, path))
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return sorted(found)


def build_shim(
    layerfs: str, target: str, uid: Callable[[int], int], gid: Callable[[int], int], xattr_namespace: str
) -> None:
    """Make ``target`` (a new directory; the caller renames it into place) hold the two lowers that give a
    layer of DUCC's, whose whiteouts are plain files, the overlay's semantics:

    * ``below`` (stacked right under the layer): for each ``d/.wh.<name>``, an overlay whiteout (0:0
      character device) ``d/<name>``, deleting ``name`` from the layers below, never from the layer itself
      (the OCI rule: a whiteout applies to lower layers only); for each ``d/.wh..wh..opq``, ``d`` marked opaque
      (``<xattr_namespace>.overlay.opaque``), so nothing below shows through ``d``;
    * ``above`` (stacked right over it): an overlay whiteout over each marker file ``d/.wh.*``, so none shows.
      Its directories copy the mode, owner (through ``uid``/``gid``, the store's mappings) and times of the
      layer's: the top-most lower's directory is what the overlay shows, and it must be the layer's.

    The directories of ``below`` show nothing: the layer above has each of them (each holds a marker)."""
    above = os.path.join(target, "above")
    below = os.path.join(target, "below")
    os.mkdir(above, 0o755)
    os.mkdir(below, 0o755)
    dirs: set[str] = set()
    for marker in markers(layerfs):
        parent, name = os.path.split(marker)
        for base in (above, below):
            os.makedirs(os.path.join(base, parent), 0o755, exist_ok=True)
        dirs.update(_ancestors(parent))
        os.mknod(os.path.join(above, marker), stat.S_IFCHR, os.makedev(0, 0))
        if name == OPAQUE:
            os.setxattr(os.path.join(below, parent) if parent else below, f"{xattr_namespace}.overlay.opaque", b"y")
        elif not name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):  # .wh..wh.<other>: AUFS's, hidden only
            os.mknod(os.path.join(below, parent, name[len(WHITEOUT_PREFIX) :]), stat.S_IFCHR, os.makedev(0, 0))
    for directory in sorted(dirs, key=len, reverse=True):  # deepest first: a child's mknod changes mtimes
        st = os.lstat(os.path.join(layerfs, directory))
        mine = os.path.join(above, directory)
        os.chown(mine, uid(st.st_uid), gid(st.st_gid))
        os.chmod(mine, stat.S_IMODE(st.st_mode))
        os.utime(mine, ns=(st.st_atime_ns, st.st_mtime_ns))


def _ancestors(parent: str) -> list[str]:
    """``a/b/c`` → ``a/b/c``, ``a/b``, ``a`` (the layer's root is the image's, never shown: not listed)."""
    out = []
    while parent:
        out.append(parent)
        parent = os.path.dirname(parent)
    return out


class Repository:
    """A store's repository as its creates use it: ``find`` a layer, its cached verdict, its short link."""

    __slots__ = ("layout", "root")

    def __init__(self, layout: Layout, root: str) -> None:
        self.layout = layout
        self.root = root

    def find(self, digest: str) -> str | None:
        """The layer's ``layerfs`` in the repository, or None when it is not there."""
        if not (digest.startswith("sha256:") and len(digest) == 71):
            return None  # a tarball's layer has no manifest digest
        path = layer_dir(self.root, digest)
        if not os.path.isdir(path):
            return None
        _check_layer_path(self.root, path)
        return path

    def verdict(self, digest: str, path: str) -> str:
        """The layer's verdict (see :func:`scan`), from the store's record, else scanned and recorded."""
        record = os.path.join(self.layout.repository_verdicts, digest.partition(":")[2])
        found = read_text(record, "\0")
        if found == "\0":
            found = scan(path)
            if not found.startswith("writable:"):  # not kept: it holds until someone fixes the repository
                os.makedirs(self.layout.repository_verdicts, mode=0o755, exist_ok=True)
                atomic_write(record, found.encode(), sync=False)  # a lost record is only scanned again
        if found.startswith("writable:"):
            raise FailedPrecondition(
                f"layer repository {self.root}: {os.path.join(path, found[len('writable:') :])} is writable by "
                "users other than root: its layers are mounted into containers as they are; make it read-only, "
                "or root's only"
            )
        return found

    def shim(
        self, digest: str, path: str, uid: Callable[[int], int], gid: Callable[[int], int], xattr_namespace: str
    ) -> str:
        """The layer's shim (see :func:`build_shim`), relative to the store: ``r/<12 hex>.shim``, built once
        (in a temporary directory renamed into place; a build that loses the race to another is dropped:
        they are the same)."""
        name = digest.partition(":")[2][:LINK_LEN] + ".shim"
        final = os.path.join(self.layout.repository_links, name)
        if not os.path.isdir(final):
            from ..store.fsutil import remove_tree

            tmp = temp_name(final, "tmp")
            os.mkdir(tmp, 0o755)
            try:
                build_shim(path, tmp, uid, gid, xattr_namespace)
                os.rename(tmp, final)
            except OSError:
                remove_tree(tmp)
                if not os.path.isdir(final):
                    raise
        return os.path.join(os.path.basename(self.layout.repository_links), name)

    def link(self, digest: str, path: str) -> str:
        """The layer's short link in the store (``r/<12 hex>``, relative to the store), made if missing."""
        name = digest.partition(":")[2][:LINK_LEN]
        link = os.path.join(self.layout.repository_links, name)
        try:
            current: str | None = os.readlink(link)
        except FileNotFoundError:
            current = None
        if current != path:
            if current is not None and os.path.isdir(current):
                # Two layers whose digests share 48 leading bits: never mount the wrong one because of it.
                raise FailedPrecondition(f"short link {link} is taken by repository layer {current}")
            tmp = temp_name(link, "tmp")
            os.symlink(path, tmp)
            os.rename(tmp, link)
        return os.path.join(os.path.basename(self.layout.repository_links), name)


def make_hide(layout: Layout) -> bool:
    """The store's ``r/.hide`` lower (an overlay whiteout for ``.cvmfscatalog``); False where this caller
    cannot make 0:0 character devices (then layers that have the marker are pulled instead)."""
    hide = layout.repository_hide
    whiteout = os.path.join(hide, CATALOG_MARKER)
    if os.path.lexists(whiteout):
        return True
    tmp = temp_name(hide, "tmp")
    os.mkdir(tmp, 0o755)
    try:
        os.mknod(os.path.join(tmp, CATALOG_MARKER), stat.S_IFCHR | 0o000, os.makedev(0, 0))
        os.rename(tmp, hide)
    except OSError:
        from ..store.fsutil import remove_tree

        remove_tree(tmp)
        return os.path.lexists(whiteout)  # another init-store made it meanwhile
    return True


# -- the store's record --------------------------------------------------------------------------------------


def record(root: str, idmapped: bool, why: str) -> bytes:
    """``meta/layer-repository.json``: the repository's path, and whether layers in place can be idmapped
    (for a store with mappings: ``why`` they cannot, else empty)."""
    from .. import jsonc

    return jsonc.dumps({"path": root, "idmapped": idmapped, "why": why}).encode() + b"\n"


def parse(text: str) -> tuple[str, bool, str]:
    """``(path, idmapped, why)`` of a store's record; a damaged one is an error (never silently ignored: the
    store would pull what it should not, or use what it should not)."""
    from .. import jsonc

    try:
        doc = jsonc.loads(text)
    except ValueError:
        doc = None
    if not (isinstance(doc, dict) and isinstance(doc.get("path"), str) and isinstance(doc.get("idmapped"), bool)):
        raise FailedPrecondition("the store's layer repository record (meta/layer-repository.json) is damaged")
    return doc["path"], doc["idmapped"], str(doc.get("why", ""))


def probe_idmapped(layout: Layout, root: str, maps: tuple[str, str]) -> str:
    """Whether the repository's filesystem takes idmapped mounts (with the store's ``maps``): "" if it does,
    else why not. Tried for real: an idmapped bind of ``.layers`` in the store's ``tmp/``, unmounted at once."""
    from ..errors import KernelError
    from ..mount import kernel
    from ..store.features import Features
    from ..userns import fork_userns

    release = os.uname().release
    if not Features(kernel=release).idmapped_mounts:
        return f"idmapped mounts on overlay layers need Linux 5.19 or later; this kernel is {release}"
    target = temp_name(os.path.join(layout.tmp, "repository"), "probe")
    os.mkdir(target, 0o700)
    try:
        ns = fork_userns(*maps)
        try:
            kernel.bind_idmapped(os.path.join(root, LAYERS), target, ns)
        finally:
            os.close(ns)
        kernel.unmount(target)
    except KernelError as exc:
        return f"its filesystem refuses idmapped mounts ({exc.message})"
    finally:
        os.rmdir(target)
    return ""


# -- a create's use of the repository (graftfs.api.Store.create) -------------------------------------------------


def check_thin(store_path: str, image: ThinImage, record: str) -> None:
    """A thin image's layers must all be in the store's layer repository: refused, in one line naming the
    missing ones, when they are not, or when the store has no repository."""
    from . import thin

    if not record:
        raise FailedPrecondition(thin.no_repository(image, store_path))
    root = parse(record)[0]
    missing = [lay.digest for lay in image.layers if not os.path.isdir(layer_dir(root, "sha256:" + lay.digest))]
    if missing:
        raise NotFound(thin.missing(image, missing, root))


def use_in_place(
    store: Store, record: str, spec: ImageSpec, mapped: bool, feats: Features, mount: bool, log: Logger
) -> tuple[dict[int, tuple[str, str, str]], str]:
    """The layers of ``spec`` to use in place from the store's layer repository (index → short link
    relative to the store, layerfs path, its shim relative to the store if it has whiteouts), and the lower
    that hides DUCC's markers ("" if none is needed).
    A repository that is gone or writable by others fails the create; a layer that cannot be used in place
    is pulled, and the log says why (see :mod:`graftfs.repository.layers`)."""
    root, idmapped, why = parse(record)
    repository = Repository(store.layout, root)
    found = [(i, layer.blob, repository.find(layer.blob)) for i, layer in enumerate(spec.layers)]
    present = [(i, digest, path) for i, digest, path in found if path is not None]
    if not present:
        return {}, ""
    reason = ""
    if store.rootless:
        reason = "rootless: the repository's files would show with IDs this store's namespace does not map"
    elif any(layer.base_directory for layer in spec.layers):
        reason = "the image has a base-directory layer, which takes its owners from the layers below it"
    elif mapped and not idmapped:
        reason = f"this store has ID mappings, and the repository's layers cannot be idmapped: {why}"
    elif mapped and not mount:
        reason = (
            "this store has ID mappings: the repository's layers are mounted idmapped, which a runtime spec's "
            "mount cannot express (create without --without-mount to use them)"
        )
    elif feats.overlay != "kernel":
        reason = f"this store's overlay is {feats.overlay}, not the kernel's"
    if reason:
        log.info("layer-repository-not-used", repository=root, layers=len(present), reason=reason)
        return {}, ""
    in_place: dict[int, tuple[str, str, str]] = {}
    hide = ""
    hide_ready = os.path.lexists(os.path.join(store.layout.repository_hide, CATALOG_MARKER))
    for index, digest, path in present:
        flags = repository.verdict(digest, path).split(",")
        why_not = ""
        if HIDE in flags and not hide_ready:
            why_not = "it has a .cvmfscatalog marker, and this store has no whiteout to hide it with"
        elif SHIM in flags and feats.whiteouts != "device":
            why_not = (
                "it holds OCI whiteouts as plain files, which overlayfs does not read as deletions, and this "
                "caller cannot make the overlay whiteouts (0:0 character devices) that would apply them"
            )
        if why_not:
            log.info("layer-repository-layer-pulled", repository=root, digest=digest, reason=why_not)
            continue
        if HIDE in flags:
            hide = os.path.relpath(store.layout.repository_hide, store.layout.root)
        shim = ""
        if SHIM in flags:
            from ..idmap import IdMap

            namespace = store.namespace()
            uid, gid = IdMap(namespace.uid_mappings), IdMap(namespace.gid_mappings)
            shim = repository.shim(digest, path, uid, gid, feats.xattrs)
        in_place[index] = (repository.link(digest, path) if not mapped else "", path, shim)
    return in_place, hide


def record_chains(
    layout: Layout, spec: ImageSpec, volume_ids: Sequence[str], in_place: dict[int, tuple[str, str, str]]
) -> None:
    """For each layer used in place, ``meta/repository-chains/<its chain ID>``: its digest and the chain ID
    below it, so that the snapshot core can stack the pulled layers above it (their records name their
    parent by chain ID only). Written once (a few bytes; never collected, like the verdicts); not fsynced:
    a lost one is written by the next create of an image that has the layer."""
    from .. import jsonc

    for index in in_place:
        path = os.path.join(layout.repository_chains, volume_ids[index])
        if os.path.lexists(path):
            continue
        record = {"digest": spec.layers[index].blob, "parent": volume_ids[index - 1] if index else ""}
        os.makedirs(layout.repository_chains, mode=0o755, exist_ok=True)
        atomic_write(path, jsonc.dumps(record).encode(), sync=False)
