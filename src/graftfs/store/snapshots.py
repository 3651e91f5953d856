"""The snapshot core: containerd's snapshotter contract over a graftfs store.

Vocabulary (containerd's ``core/snapshots/snapshotter.go``, which this follows verb for verb):

* A **snapshot** is a directory tree that is either *committed* (read-only, a layer), *active* (writable:
  an upper directory over its parent chain) or a *view* (a read-only look at a parent chain). Active
  snapshots and views are named by a **key**, committed ones by a **name**; keys and names share one
  space (a front end's namespace, below) and may be any non-empty string (``ns/12/extract-1 sha256:…``
  included): on disk they are hashed.
* ``prepare(key, parent)`` makes an active snapshot on the committed snapshot ``parent`` (or on nothing)
  and returns the mounts that show it; ``view`` does the same read-only. ``mounts(key)`` returns them
  again. The caller performs them (:func:`graftfs.mount.kernel.mount_all`) or hands them on (a runtime,
  containerd): mounts are data here, never performed.
* ``commit(name, key)`` turns the active snapshot ``key`` into the committed snapshot ``name``; ``key`` is
  gone after it. A committed snapshot is the parent of later ones and cannot change.
* ``remove(key)`` removes an active snapshot, a view, or a committed snapshot that is nobody's parent.
* ``stat``, ``update`` (labels only), ``usage`` and ``walk`` (containerd's filter syntax) read the
  records; ``cleanup`` removes what interrupted processes left.

In a graftfs store, the layers pulled for images (``volumes/<chain-id-hex>``) are committed snapshots named
``sha256:<chain-id-hex>`` too, shared with every image exactly as before (they are built and collected by
:mod:`graftfs.store.volumes` and ``clean``, never by this module). A snapshot whose chain reaches them
keeps them from ``clean`` by a record of its own in ``meta/dependencies/snapshot:<id>.json``, written
while their locks are held, as an image's commit record is.

**Namespaces.** Every front end keeps its keys in a namespace of its own (``Snapshotter(root,
namespace=...)``): the Python API the default one (``""``, every store's keys before namespaces), the containerd
snapshotter ``containerd``, the Docker graphdriver ``docker``. A snapshotter sees (``stat``, ``mounts``,
``usage``, ``commit``, ``remove``, ``update``) and walks only its own namespace's snapshots, so containerd's
garbage collector, which removes every snapshot its snapshotter lists and its own records do not name, never
sees the Python API's or the graphdriver's. Two kinds of snapshot are **shared**, found by name from every
namespace (``stat``, and as a parent): the store's pulled layers (walked by the default namespace only, as
before, and removed by ``clean`` only) and remote layers (below: walked, removed and relabelled by the
namespace that made them, and refused to its ``remove`` while another namespace's snapshot stands on one). A
record says its namespace; one written before namespaces says none and is the default's until a front end
claims it (:meth:`Snapshotter.adopt`, by the shape of its keys, when it starts).

**Remote layers** (containerd's remote-snapshot protocol, as CernVM-FS's and stargz's snapshotters serve it):
containerd's unpacker prepares each layer's snapshot with the label ``containerd.io/snapshot.ref`` (the
layer's chain ID, the committed snapshot it wants) and passes the layer descriptor's ``containerd.io/snapshot/``
annotations on as labels: ``containerd.io/snapshot/cri.layer-digest`` (CRI) or
``containerd.io/snapshot/remote/stargz.digest`` (``ctr-remote images rpull``) name the layer's compressed
digest. When that layer is in the store's layer repository (:mod:`graftfs.repository.layers`, DUCC's layout)
and the store can stack it as it is, ``prepare`` makes the committed snapshot named after the target at once,
on ``parent``, whose tree is the repository's ``layerfs`` (``fs`` is a symbolic link to it, and ``above`` and
``below`` link to the layer's shim in the store when its whiteouts are DUCC's plain files), and raises
AlreadyExists naming the target: containerd then finds it with ``List``
(``labels."containerd.io/snapshot.ref"==<target>,parent==<parent>``) and never downloads the layer. A target
that exists already with that parent answers the same (another namespace pulled it); a target name taken on
another parent (a namespace that unpacked the layers below itself) or by a pulled layer names the snapshot
``<target>@<16 hex of the parent's sha256>`` instead (containerd finds it by its labels and parent, not by its
name). When the layer is not in the repository (or cannot be used in place: the log says why), ``prepare``
makes an ordinary active snapshot, as without the labels. Such a snapshot's usage is 0 (its tree is the repository's);
``remove`` and ``cleanup`` remove the store's record and links, never anything in the repository (symbolic
links are unlinked, never followed). A repository layer that is gone later (the repository unmounted, or the
layer removed from it) fails ``mounts``, ``prepare`` and ``view`` on any snapshot whose chain holds it with one
line naming the layer: never an overlay with a hole in it.

**Thin images' layers** (the CernVM-FS graphdriver's, :mod:`graftfs.repository.thin`): a committed snapshot
whose tree holds exactly one entry, the regular file ``thin.json`` (a thin image's only layer, unpacked as any
layer by a front end: ``docker load``, containerd's unpacker), at the base of its chain or directly on another
such layer (``docker commit`` of a thin image's container), stands for the layers its descriptor lists (such a
file anywhere else is an ordinary file of an ordinary layer). A
snapshot prepared or viewed on it stacks those layers from the store's layer repository, in place (short links
``r/<12 hex>``, shims, ``r/.hide``, as Garden's creates of thin images), instead of the thin layer and
everything below it; snapshots above inherit that, so ordinary layers above stack above as usual. A store
without a repository, a layer missing from it (named) or one it cannot stack in place here is refused in one
line, and nothing is made. ``thin`` reads a snapshot's descriptor and ``thin_layer`` says which thin layer a
snapshot's mounts stand on (the Docker front end's ``docker commit`` publishes on it).

On disk, beside the store's own directories::

    snapshots/<id>/info.json    the record: name, kind, parent, labels, times, and the parent chain's ids
    snapshots/<id>/fs           the snapshot's tree (an active snapshot's overlay upperdir)
    snapshots/<id>/work         an active snapshot's overlay workdir
    snapshots/<id>/fs -> <repository>/.layers/<hh>/<hex>/layerfs     a remote layer's tree (and, when it
    snapshots/<id>/{above,below} -> <store>/r/<12 hex>.shim/…        has a shim, the shim's two lowers)
    snapshots/keys/<sha256(key)> -> ../<id>     the index of keys and names: the default namespace's and
                                                the shared ones' (remote layers)
    snapshots/keys/<sha256(0xff ns 0xff key)>   another namespace's
    locks/snapshots.lock        held exclusively by every verb that changes something, shared by walk

Crash safety: every change holds the lock (a killed holder's lock is free again) and has one commit point,
an atomic rename. A key is visible only while its index link points at a record that carries the same key,
so a link left behind by a killed commit or remove (pointing at a record that now says otherwise, or at
nothing) is invisible, is replaced by the next ``prepare`` of that key, and is removed by ``cleanup``, as
are snapshot directories no link reaches. ``stat`` and ``mounts`` take no lock: they follow one link and
check one record, which a verb changes atomically. ``walk`` reads every link and record, and a commit changes
two links and a record: read between those steps, a walk would list the snapshot under both its key and its
name, or under neither. So it reads them with the lock held shared, and yields after letting it go.
"""

from __future__ import annotations

import os
import time

from .. import jsonc
from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, os_reason
from .fsutil import atomic_write, read_text, remove_tree, unlink
from .layout import GC_PREFIX, Layout
from .locks import FileLock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from ..log import Logger
    from ..mount.spec import Mount
    from ..repository import layers
    from ..repository.thin import ThinImage
    from .features import Features

KIND_VIEW = "view"
KIND_ACTIVE = "active"
KIND_COMMITTED = "committed"

#: How long a verb waits for another process's change to the snapshot records (each takes milliseconds;
#: a removal of a large tree happens after the lock is let go).
LOCK_WAIT = 30.0
_CHAIN_PREFIX = "sha256:"
#: containerd's unpacker: the committed snapshot a layer's prepare is for (its chain ID).
LABEL_TARGET = "containerd.io/snapshot.ref"
#: The layer's compressed (manifest) digest, as CRI and as ``ctr-remote images rpull`` (stargz) label it.
LABEL_DIGESTS = ("containerd.io/snapshot/cri.layer-digest", "containerd.io/snapshot/remote/stargz.digest")
#: Set on a remote layer's snapshot, as stargz's snapshotter marks its own.
LABEL_REMOTE = "containerd.io/snapshot/remote"
#: A lowers entry of a remote layer: ``repo:<verdict>:<id>`` (the layer's verdict says if it has a shim and a
#: marker to hide, so mounts read nothing more than one stat per remote layer).
_REPO_PREFIX = "repo:"
#: A lowers entry of a repository layer a Garden create used in place (no snapshot record of its own):
#: ``layer:<verdict>:<digest hex>``, stacked through the store's short link ``r/<12 hex>`` (and shim).
_LAYER_PREFIX = "layer:"
#: A lowers entry of a thin image's layer (its tree holds ``/thin.json`` only): ``thin:<id>``. It shows
#: nothing; the entries after it are its descriptor's layers (``layer:``), top first, and nothing else.
_THIN_PREFIX = "thin:"
_ID_BYTES = 5  # 10 hex digits: short lowerdir paths (``<id>/fs:``, 14 bytes a layer) and no collisions


class Info:
    """What ``stat`` and ``walk`` report (containerd's ``snapshots.Info``). Times are nanoseconds since the
    epoch; ``parent`` is ``""`` for a snapshot on nothing."""

    __slots__ = ("created", "kind", "labels", "name", "parent", "updated")

    def __init__(
        self,
        name: str,
        kind: str,
        parent: str = "",
        labels: Mapping[str, str] | None = None,
        created: int = 0,
        updated: int = 0,
    ) -> None:
        self.name = name
        self.kind = kind
        self.parent = parent
        self.labels: dict[str, str] = dict(labels or {})
        self.created = created
        self.updated = updated

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Info) and all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __copy__(self) -> Info:
        return Info(self.name, self.kind, self.parent, self.labels, self.created, self.updated)

    def __repr__(self) -> str:
        return f"Info(name={self.name!r}, kind={self.kind!r}, parent={self.parent!r}, labels={self.labels!r})"


class Usage:
    """Disk used by a snapshot's own tree (not its parents'): bytes allocated and inodes."""

    __slots__ = ("inodes", "size")

    def __init__(self, size: int = 0, inodes: int = 0) -> None:
        self.size = size
        self.inodes = inodes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Usage) and (self.size, self.inodes) == (other.size, other.inodes)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Usage(size={self.size}, inodes={self.inodes})"


class _Found:
    """A snapshot found by key: its directory id (None for a pulled layer) and record."""

    __slots__ = ("id", "info", "lowers", "namespace", "remote", "volume")

    def __init__(
        self,
        id: str | None,
        info: Info,
        lowers: list[str],
        volume: str = "",
        remote: dict[str, str] | None = None,
        namespace: str | None = "",
    ) -> None:
        self.id = id
        self.info = info
        # The parent chain's directories (``<id>``, ``volume:<hex>`` or ``repo:<verdict>:<id>``), nearest first.
        self.lowers = lowers
        self.volume = volume
        self.remote = remote  # a remote layer's ``{"digest", "verdict"}``
        # The front end's namespace that owns it; None for a record written before namespaces (the default's,
        # until a front end adopts it: :meth:`Snapshotter.adopt`).
        self.namespace = namespace

    @property
    def owner(self) -> str:
        return self.namespace or ""

    def entry(self) -> str:
        """How the lowers of the snapshots on this one name it."""
        if self.id is None:
            return "volume:" + self.volume
        if self.remote is not None:
            return f"{_REPO_PREFIX}{self.remote['verdict']}:{self.id}"
        return self.id


class Snapshotter:
    """containerd's snapshotter verbs over the store (or bare directory) at ``root``.

    Processes share a root safely: each verb that changes something holds ``locks/snapshots.lock``; walk
    holds it shared while it reads, stat and mounts not at all. ``overlay_options`` are added to every
    overlay mount; by default the store's (its layers' whiteouts may be ``user.*`` xattrs, which need
    ``userxattr``).

    ``namespace`` is the front end's own space of keys (see the module's documentation): ``""``, the default,
    is the Python API's (and every store's before namespaces); graftfs's containerd snapshotter uses
    ``containerd`` and its Docker graphdriver ``docker``. A snapshotter sees, walks and removes the snapshots
    of its own namespace only; the shared ones (pulled layers, remote layers) every namespace can stat and
    name as a parent."""

    def __init__(
        self,
        root: str,
        overlay_options: Sequence[str] | None = None,
        log: Logger | None = None,
        namespace: str = "",
    ) -> None:
        if not isinstance(namespace, str) or (namespace and not valid_namespace(namespace)):
            raise InvalidArgument(f"snapshot namespace {namespace!r}: letters, digits, `.`, `_` and `-` only")
        self.namespace = namespace
        self.layout = Layout.at(root)
        self.log = log
        self.dir = os.path.join(self.layout.root, "snapshots")
        self.keys = os.path.join(self.dir, "keys")
        os.makedirs(os.path.dirname(self.layout.root), exist_ok=True)
        for directory, mode in (
            (self.layout.root, 0o755),
            (self.dir, 0o755),
            (self.keys, 0o700),
            (self.layout.locks, 0o755),
        ):
            try:
                os.mkdir(directory, mode)
            except FileExistsError:
                continue
            # Not left to the umask: under umask 0 (containerd's test suite runs so) the root and snapshots/
            # would be world-writable, and anyone could rename a snapshot's directory away and put their own
            # tree in its place.
            os.chmod(directory, mode)
        if overlay_options is None:
            from .features import load

            found = load(self.layout) if os.path.isfile(self.layout.features_file) else None
            overlay_options = found.overlay_options() if found is not None else ()
        self.overlay_options = tuple(overlay_options)
        self.closed = False

    # -- reading ----------------------------------------------------------------------------------------

    def stat(self, key: str) -> Info:
        """The snapshot ``key``. NotFound if there is none."""
        return self._get(key).info

    def mounts(self, key: str) -> list[Mount]:
        """The mounts that show the active snapshot or view ``key`` (again: ``prepare`` returned them)."""
        found = self._get(key)
        if found.info.kind == KIND_COMMITTED:
            raise FailedPrecondition(f"snapshot `{key}` is committed: mount it through a view")
        return self._mounts(found)

    def usage(self, key: str) -> Usage:
        """Disk used by the snapshot's own tree: an active snapshot's writes so far, a layer's contents."""
        found = self._get(key)
        if found.remote is not None:
            return Usage()  # the repository's, not the store's
        from .fsutil import usage

        return Usage(*usage(self._tree(found)))

    def tree(self, key: str) -> str:
        """The directory holding the snapshot's own tree: an active snapshot's overlay upperdir, a committed
        snapshot's contents, a view's (empty) directory. For a front end that reads or fills a snapshot in
        place (a graphdriver's ``Diff`` and ``ApplyDiff``), as containerd's differs read the upperdir out of
        a snapshot's mounts; nothing else may write a committed snapshot's tree."""
        return self._tree(self._get(key))

    def lower_dirs(self, key: str) -> list[str]:
        """The directories the snapshot ``key``'s mounts stack below its own tree, nearest first (a thin image's
        layer's descriptor layers, shims included, in its place): what a front end compares a layer's tree
        with (a graphdriver's ``Changes``)."""
        found = self._get(key)
        if found.id is None:
            return self._lower_dirs(self._volume_chain(found.volume)[1:])
        return self._lower_dirs(found.lowers)

    def walk(self, *filters: str) -> Iterator[Info]:
        """Every snapshot, or those matching any of ``filters`` (containerd's syntax: comma-separated
        ``field==value``, ``field!=value``, ``field~=regexp`` or ``field`` conditions that must all hold;
        fields ``name``, ``kind``, ``parent``, ``labels.<key>``, a key quoted when it has dots)."""
        matchers = [
            _parse_filter(f) for f in filters if f
        ]  # here, not at the first next(): a bad filter fails the call
        # Shared, so that no verb is half done while the records are read (a commit seen half done shows
        # the snapshot twice, or not at all); let go before returning, so that the caller may call any verb
        # while it goes through them.
        with FileLock(self.layout.locks, "snapshots").held(shared=True, timeout=LOCK_WAIT):
            everything = self._all(self.namespace)
        return iter(
            [f.info for f in everything if not matchers or any(all(cond(f.info) for cond in m) for m in matchers)]
        )

    # -- changing ---------------------------------------------------------------------------------------

    def prepare(
        self,
        key: str,
        parent: str = "",
        labels: Mapping[str, str] | None = None,
        *,
        make_dir: Callable[[str], None] | None = None,
    ) -> list[Mount]:
        """Make the active snapshot ``key`` on the committed snapshot ``parent`` ("" for none) and return its
        mounts. AlreadyExists if ``key`` is taken; NotFound if ``parent`` is not there; InvalidArgument (as
        containerd's metadata store) if ``parent`` is not committed. ``make_dir`` makes the snapshot's
        directory (mode 0700; its ``fs`` and ``work`` go in it) instead of ``os.mkdir``: a quota backend's
        ``make_image_dir`` (a btrfs subvolume, an XFS project), so that the snapshot's writes can be limited
        (a front end's ``size=``); removing the snapshot removes it as any directory.

        With the labels of containerd's remote-snapshot protocol (:data:`LABEL_TARGET` and one of
        :data:`LABEL_DIGESTS`) for a layer in the store's layer repository: the committed snapshot named by
        :data:`LABEL_TARGET` is made from it on ``parent``, and AlreadyExists names it (see the module's
        documentation); ``key`` is not made."""
        return self._create(KIND_ACTIVE, key, parent, labels, make_dir)

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Make the read-only view ``key`` of ``parent`` and return its mounts (as ``prepare``)."""
        return self._create(KIND_VIEW, key, parent, labels)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn the active snapshot ``key`` into the committed snapshot ``name`` (``key`` is gone after).
        Unmount it first: a committed snapshot must not change. AlreadyExists if ``name`` is taken."""
        _check_key(name)
        with self._lock():
            found = self._get(key)
            if found.info.kind != KIND_ACTIVE:
                raise FailedPrecondition(f"snapshot `{key}` is a {found.info.kind} snapshot: only active ones commit")
            if self._find(name) is not None:
                raise AlreadyExists(f"snapshot `{name}` already exists")
            assert found.id is not None
            now = time.time_ns()
            info = Info(name, KIND_COMMITTED, found.info.parent, labels, now, now)
            # The name's link first (invisible: its record still carries the key), then the record (the
            # commit point), then the key's link (invisible from the commit point on).
            self._link(self._key_path(name, found.owner), found.id)
            self._write(found.id, info, found.lowers, found.remote, found.namespace)
            unlink(self._canonical(found))

    def update(self, info: Info, *fieldpaths: str) -> Info:
        """Change the labels of ``info.name``: all of them as ``info.labels`` says (no ``fieldpaths``, or
        ``labels``), or those named ``labels.<key>`` (set, or removed when ``info.labels`` lacks them).
        Nothing else can change: another field path is InvalidArgument. Returns the new record."""
        for path in fieldpaths:
            if path != "labels" and not path.startswith("labels."):
                raise InvalidArgument(f"cannot update `{path}` of snapshot `{info.name}`: only labels can change")
        with self._lock():
            found = self._get(info.name)
            if found.id is None:
                raise FailedPrecondition(f"labels of layer `{info.name}` belong to the images that pulled it")
            self._check_owner(found, "change the labels of")
            labels = dict(found.info.labels)
            if not fieldpaths or "labels" in fieldpaths:
                labels = dict(info.labels)
            else:
                for path in fieldpaths:
                    label = path[len("labels.") :]
                    if label in info.labels:
                        labels[label] = info.labels[label]
                    else:
                        labels.pop(label, None)
            new = Info(found.info.name, found.info.kind, found.info.parent, labels, found.info.created, time.time_ns())
            self._write(found.id, new, found.lowers, found.remote, found.namespace)
            return new

    def remove(self, key: str) -> None:
        """Remove the snapshot ``key``. FailedPrecondition if it is the parent of another (remove those
        first); a pulled layer is removed by ``clean`` when no image uses it, never here."""
        with self._lock():
            found = self._get(key)
            if found.id is None:
                raise FailedPrecondition(
                    f"cannot remove `{key}`: it is a layer pulled for images; clean removes it when none uses it"
                )
            self._check_owner(found, "remove")
            child = next(self._children(found.id), None)
            if child is not None:
                raise FailedPrecondition(f"cannot remove snapshot `{key}`: it is the parent of `{child}`")
            unlink(self._canonical(found))  # the commit point: gone for everyone
            below = _nearest_record(found.lowers)
            if below is not None:
                unlink(os.path.join(self.dir, below, "children", found.id))
            # Renamed first, so that what a kill leaves half removed is plainly garbage to ``cleanup``.
            doomed = os.path.join(self.dir, GC_PREFIX + found.id)
            os.rename(os.path.join(self.dir, found.id), doomed)
            unlink(self._record(found.id))
        # Out of the lock (a large tree takes its time, and nobody can reach it any more), and past the commit
        # point: what cannot be removed now (a mount someone made in it) is left to ``cleanup``, not reported
        # as a failed remove of a snapshot that is gone.
        try:
            remove_tree(doomed)
        except OSError:
            pass

    def cleanup(self) -> list[str]:
        """Remove what interrupted processes left: snapshot directories no key reaches, ``gc.`` directories,
        index links whose record says otherwise, records of pulled layers kept for snapshots that are gone,
        and half-written records. Returns what it removed; every step is tried, and what failed (a mount
        found in a leftover, say) is raised at the end, in one line."""
        removed: list[str] = []
        failures: list[str] = []
        doomed: list[str] = []
        with self._lock():
            live = [f for f in self._all(None) if f.id is not None]  # every namespace's
            reached = {f.id for f in live}
            # Records first: one left behind keeps layers from ``clean`` for as long as it is there.
            for name in os.listdir(self.layout.dependencies) if os.path.isdir(self.layout.dependencies) else ():
                if name.startswith("snapshot:") and name[len("snapshot:") :].split(".", 1)[0] not in reached:
                    unlink(os.path.join(self.layout.dependencies, name))
                    removed.append(name)
            links = {self._canonical(f) for f in live}
            for name in os.listdir(self.keys):
                if os.path.join(self.keys, name) not in links:
                    unlink(os.path.join(self.keys, name))
                    removed.append(f"snapshots/keys/{name}")
            for found in live:
                directory = os.path.join(self.dir, str(found.id))
                children = os.path.join(directory, "children")
                stale = [f"children/{c}" for c in _listdir(children) if c not in reached]
                stale += [n for n in os.listdir(directory) if "-tmp-" in n]  # a record a kill left half written
                for name in stale:
                    unlink(os.path.join(directory, name))
                    removed.append(f"snapshots/{found.id}/{name}")
            for name in os.listdir(self.dir):
                if name == "keys" or name in reached:
                    continue
                if not name.startswith(GC_PREFIX):
                    # Renamed under the lock, removed after it (as ``remove`` does): nobody can reach it.
                    os.rename(os.path.join(self.dir, name), os.path.join(self.dir, GC_PREFIX + name))
                    name = GC_PREFIX + name
                doomed.append(name)
        for name in doomed:
            try:
                remove_tree(os.path.join(self.dir, name))
                removed.append(f"snapshots/{name}")
            except OSError as exc:
                failures.append(f"removing snapshots/{name}: {os_reason(exc)}")
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise FailedPrecondition(f"snapshot cleanup: {failures[0]}{more}")
        return removed

    def adopt(self, claims: Callable[[Info, bool], bool]) -> list[str]:
        """Move into this snapshotter's namespace the snapshots a store made before namespaces (records
        without one, all in the default namespace then) for which ``claims(info, remote)`` says they are this
        front end's (by the shape of their keys: containerd's ``<ns>/<n>/…``, the graphdriver's
        ``docker/…``). Returns their names. A front end calls it as it starts; once a record says its
        namespace, nothing moves it again.

        Each move has one commit point, the record's rewrite: the new link is made first (invisible: the
        record still says the default namespace), the old one unlinked after (invisible from the commit point
        on; ``cleanup`` removes it if a kill left it). A remote layer keeps its link (the shared space's) and
        only gains its owner."""
        if not self.namespace:
            raise InvalidArgument("the default namespace adopts nothing: its snapshots are the old ones already")
        moved: list[str] = []
        kept: list[str] = []
        with self._lock():
            for found in self._all(None):
                if found.namespace is not None or found.id is None or not claims(found.info, found.remote is not None):
                    continue
                if found.remote is None and self._find(found.info.name) is not None:
                    # This namespace has a snapshot of that name already (an older graftfs wrote the old one
                    # beside it): the old one stays the default namespace's, never over the other.
                    kept.append(found.info.name)
                    continue
                old = self._canonical(found)
                if found.remote is None:
                    self._link(self._key_path(found.info.name, self.namespace), found.id)
                self._write(found.id, found.info, found.lowers, found.remote, self.namespace)  # the commit point
                if found.remote is None:
                    unlink(old)
                moved.append(found.info.name)
        if self.log is not None and (moved or kept):
            # By name: an operator can tell which snapshots changed hands (a Python program's keys shaped like
            # containerd's would be among them).
            self.log.info("adopted-snapshots", namespace=self.namespace, names=moved, kept_in_default=kept)
        return moved

    def close(self) -> None:
        """Nothing is held between verbs; closing twice is fine."""
        self.closed = True

    # -- the records ------------------------------------------------------------------------------------

    def _create(
        self,
        kind: str,
        key: str,
        parent: str,
        labels: Mapping[str, str] | None,
        make_dir: Callable[[str], None] | None = None,
    ) -> list[Mount]:
        _check_key(key)
        with self._lock():
            if self._find(key) is not None:
                raise AlreadyExists(f"snapshot `{key}` already exists")
            lowers: list[str] = []
            if parent:
                base = self._get(parent, what="parent snapshot")
                if base.info.kind != KIND_COMMITTED:
                    raise InvalidArgument(f"parent snapshot `{parent}` is not committed")
                lowers = self._volume_chain(base.volume) if base.id is None else [base.entry(), *base.lowers]
                if base.id is not None and base.remote is None:
                    image = self._thin(base)
                    if image is not None:
                        # A thin image's layer: its descriptor's layers, from the repository, stand in for it
                        # and for everything below it.
                        lowers = self._thin_lowers(base, image)
            self._lower_dirs(lowers)  # a repository layer gone from under the chain is refused by name
            if kind == KIND_ACTIVE and labels and labels.get(LABEL_TARGET):
                self._remote(parent, labels, lowers)  # AlreadyExists when the target is made from the repository
            now = time.time_ns()
            info = Info(key, kind, parent, labels, now, now)
            self._check_fits(_Found("0" * 2 * _ID_BYTES, info, lowers))
            snapshot_id = self._new_dir(kind, make_dir)
            self._make(snapshot_id, info, lowers)
            return self._mounts(_Found(snapshot_id, info, lowers))

    def _make(self, snapshot_id: str, info: Info, lowers: list[str], remote: dict[str, str] | None = None) -> None:
        """Record the snapshot ``info`` in its new directory ``snapshot_id`` and give it its key (the commit
        point); on failure, the directory is removed. Called with the lock held."""
        try:
            below = _nearest_record(lowers)
            if below is not None:
                # The parent's list of children, so that its remove looks at those and not at every record.
                children = os.path.join(self.dir, below, "children")
                os.makedirs(children, mode=0o700, exist_ok=True)
                os.close(os.open(os.path.join(children, snapshot_id), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            volumes = [lower[len("volume:") :] for lower in lowers if lower.startswith("volume:")]
            held = self._hold(volumes)
            try:
                if volumes:
                    atomic_write(self._record(snapshot_id), jsonc.dumps(volumes).encode(), sync=False)
                self._write(snapshot_id, info, lowers, remote, self.namespace)
                # The commit point. A remote layer's link is in the shared space (by its name alone), as a
                # pulled layer's name is: every namespace finds it as a parent.
                self._link(self._key_path(info.name, "" if remote is not None else self.namespace), snapshot_id)
            finally:
                for lock in held:
                    lock.release()
        except BaseException:
            unlink(self._record(snapshot_id))
            remove_tree(os.path.join(self.dir, snapshot_id))  # symbolic links unlinked, never followed
            raise

    # -- remote layers ----------------------------------------------------------------------------------------

    def _remote(self, parent: str, labels: Mapping[str, str], lowers: list[str]) -> None:
        """containerd's remote-snapshot protocol: when the layer the labels name is in the store's layer
        repository and can be stacked as it is, make the committed snapshot ``labels[LABEL_TARGET]`` from it
        on ``parent`` (or find it made already on that parent) and raise AlreadyExists naming it. Returns
        when the layer is to be unpacked as usual (the reason is logged)."""
        target = labels[LABEL_TARGET]
        digest = next((labels[name] for name in LABEL_DIGESTS if labels.get(name)), "")
        if not digest:
            return  # a plain `ctr images pull`: containerd's unpacker sends the target only
        layer = self._repository_layer(digest)
        if layer is None:
            return
        path, verdict, shim = layer
        # Remote layers are named in the shared space (every namespace's parents can be one). The target's
        # name may be taken: by this layer on another parent (a containerd namespace that unpacked the layers
        # below it itself), by a pulled layer of the same chain ID, by a key of the default namespace, or by
        # another front end's remote layer of it (each front end walks, and removes, its own). containerd
        # finds the snapshot by its labels and parent, not by its name: one per parent and namespace, named
        # after them.
        from hashlib import sha256

        def suffixed(text: str) -> str:
            return f"{target}@{sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"

        names = [target, suffixed(parent)]
        if self.namespace:
            names.append(suffixed(f"{self.namespace}\0{parent}"))
        for name in names:
            existing = self._find_in("", name)
            if existing is None:
                break
            if existing.remote is not None and existing.owner == self.namespace and existing.info.parent == parent:
                raise AlreadyExists(f"target snapshot `{target}` already exists (layer {digest}, in place)")
        else:
            self._note(
                "remote-layer-not-used",
                digest=digest,
                target=target,
                reason=f"the store has snapshots named `{'`, `'.join(names)}` already",
            )
            return
        now = time.time_ns()
        info = Info(name, KIND_COMMITTED, parent, {**labels, LABEL_REMOTE: "remote snapshot"}, now, now)
        snapshot_id = self._new_dir(KIND_COMMITTED, tree=False)
        top = os.path.join(self.dir, snapshot_id)
        try:
            os.symlink(path, os.path.join(top, "fs"))
            if shim:
                for half in ("above", "below"):
                    os.symlink(os.path.join(self.layout.root, shim, half), os.path.join(top, half))
        except BaseException:
            remove_tree(top)
            raise
        self._make(snapshot_id, info, lowers, {"digest": digest, "verdict": verdict})
        if self.log is not None:
            self.log.info("remote-layer", target=target, name=name, digest=digest, layerfs=path, shim=shim)
        raise AlreadyExists(f"target snapshot `{target}`: layer {digest} is in the layer repository, used in place")

    def _repository_layer(self, digest: str) -> tuple[str, str, str] | None:
        """The layer ``digest`` in the store's layer repository as a remote snapshot stacks it: its
        ``layerfs``, its verdict and its shim relative to the store ("" if none); None when the store has no
        repository, the layer is not in it, or it cannot be used in place here (logged)."""
        record = read_text(self.layout.layer_repository_file)
        if not record:
            return None
        from ..errors import GraftfsError
        from ..repository import layers

        try:
            root = layers.check(layers.parse(record)[0])
            repository = layers.Repository(self.layout, root)
            path = repository.find(digest)
            if path is None:
                if self.log is not None:
                    self.log.debug("remote-layer-not-in-repository", digest=digest, repository=root)
                return None
            verdict, shim, why = self._stackable(repository, digest, path)
        except GraftfsError as exc:
            # A repository that is not mounted, or that others could write: its layers are downloaded.
            self._note("remote-layer-not-used", digest=digest, reason=str(exc))
            return None
        if why:
            self._note("remote-layer-not-used", digest=digest, reason=why)
            return None
        return path, verdict, shim

    def _stackable(self, repository: layers.Repository, digest: str, path: str) -> tuple[str, str, str]:
        """How the repository layer ``digest`` (its ``layerfs`` at ``path``) stacks in this store: its verdict,
        its shim relative to the store ("" if it needs none) and "", or ``("", "", why)`` when this store
        cannot stack it in place (a store with ID mappings, fuse-overlayfs, no whiteouts for its shim)."""
        from ..idmap import IdMap, Namespace
        from ..repository import layers

        namespace = Namespace.from_json(read_text(self.layout.namespace_file))
        feats = self._features()
        why = ""
        if namespace.uid_mappings or namespace.gid_mappings:
            why = "this store has ID mappings: its repository's layers would need idmapped mounts, which a "
            why += "snapshot's mounts (containerd's, a graphdriver's) cannot express"
        elif feats is not None and feats.overlay != "kernel":
            why = f"this store's overlay is {feats.overlay}, not the kernel's"
        if why:
            return "", "", why
        verdict = repository.verdict(digest, path)
        flags = verdict.split(",")
        hide_ready = os.path.lexists(os.path.join(self.layout.repository_hide, layers.CATALOG_MARKER))
        if layers.HIDE in flags and not hide_ready:
            return "", "", "it has a .cvmfscatalog marker, and this store has no whiteout to hide it with"
        if layers.SHIM in flags and feats is not None and feats.whiteouts != "device":
            return "", "", "it holds OCI whiteouts as plain files, and this store cannot make the overlay whiteouts"
        shim = ""
        if layers.SHIM in flags:
            identity = IdMap([])
            shim = repository.shim(digest, path, identity, identity, feats.xattrs if feats else "trusted")
        return verdict, shim, ""

    # -- thin images ------------------------------------------------------------------------------------------

    def thin(self, key: str) -> ThinImage | None:
        """The descriptor of the committed snapshot ``key`` if it is a thin image's layer (its tree holds
        exactly one entry, the regular file ``thin.json``), else None. InvalidImage, in one line, if that file
        is not a descriptor."""
        found = self._get(key)
        if found.info.kind != KIND_COMMITTED or found.id is None or found.remote is not None:
            return None
        return self._thin(found)

    def thin_layer(self, key: str) -> str:
        """The name of the thin image's layer whose descriptor the mounts of ``key`` stack ("" if none: its
        chain holds no thin image's layer)."""
        for entry in self._get(key).lowers:
            if entry.startswith(_THIN_PREFIX):
                loaded = self._load(entry[len(_THIN_PREFIX) :])
                return loaded.info.name if loaded is not None else ""
        return ""

    def _thin(self, found: _Found) -> ThinImage | None:
        # Only where a thin image's layer can be: its image's base (a thin image has one layer), or directly on
        # another one (``docker commit`` of a thin image's container adds a new descriptor on top). A file
        # /thin.json alone in a layer anywhere else (an ordinary image's `COPY thin.json /`) is a file.
        if found.lowers and not found.lowers[0].startswith(_THIN_PREFIX):
            return None
        import stat

        tree = self._tree(found)
        try:
            if os.listdir(tree) != ["thin.json"]:
                return None  # one listing per prepare on an ordinary layer: nothing imported, nothing read
            path = os.path.join(tree, "thin.json")
            st = os.lstat(path)
        except OSError:
            return None
        from ..repository import thin

        if not stat.S_ISREG(st.st_mode) or st.st_size > thin.DETECT_MAX:
            return None
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            data = f.read(thin.DETECT_MAX + 1)
        return thin.parse(data, f"snapshot `{found.info.name}`: /{thin.DESCRIPTOR}")

    def _thin_lowers(self, found: _Found, image: ThinImage) -> list[str]:
        """The lowers entries of a snapshot on the thin image's layer ``found``: the layer itself, marked
        (``thin:<id>``: it shows nothing, and is the parent whose ``children`` list the snapshot), then the
        descriptor's layers, top first, from the store's layer repository as Garden's creates stack them in
        place (short links ``r/<12 hex>``, shims, ``r/.hide``). One line, and nothing made, when the store has
        no repository, or the repository lacks some of them (named), or cannot stack them here."""
        from ..repository import layers, thin

        record = read_text(self.layout.layer_repository_file)
        if not record:
            raise FailedPrecondition(thin.no_repository(image, self.layout.root, f"thin image in `{found.info.name}`"))
        root = layers.check(layers.parse(record)[0])
        repository = layers.Repository(self.layout, root)
        paths = [("sha256:" + lay.digest, repository.find("sha256:" + lay.digest)) for lay in image.layers]
        missing = [digest.partition(":")[2] for digest, path in paths if path is None]
        if missing:
            raise NotFound(thin.missing(image, missing, root, f"thin image in `{found.info.name}`"))
        entries = [_THIN_PREFIX + str(found.id)]
        for digest, path in reversed(paths):
            assert path is not None
            verdict, _, why = self._stackable(repository, digest, path)
            if why:
                raise FailedPrecondition(
                    f"thin image layer {digest} cannot be stacked in place from the layer repository {root}: {why}"
                )
            repository.link(digest, path)
            entries.append(f"{_LAYER_PREFIX}{verdict}:{digest.partition(':')[2]}")
        return entries

    def _features(self) -> Features | None:
        if not os.path.isfile(self.layout.features_file):
            return None
        from .features import load

        return load(self.layout)

    def _note(self, action: str, **data: str) -> None:
        if self.log is not None:
            self.log.info(action, **data)

    def _lower_dirs(self, lowers: Sequence[str]) -> list[str]:
        """The directories of the lowers entries ``lowers`` (nearest first) as an overlay stacks them: a remote
        layer's shim around it, the store's ``r/.hide`` on top when a remote layer has DUCC's marker.
        FailedPrecondition naming the layer if a remote layer is gone from the repository."""
        dirs: list[str] = []
        hide = False
        for entry in lowers:
            if entry.startswith("volume:"):
                dirs.append(self._dir(entry))
                continue
            if entry.startswith(_THIN_PREFIX):
                continue  # a thin image's layer: the repository layers after it stand in for it
            if entry.startswith(_LAYER_PREFIX):
                # A repository layer a Garden create used in place: its short link and shim in the store.
                verdict, _, hexd = entry[len(_LAYER_PREFIX) :].partition(":")
                link = os.path.join(self.layout.repository_links, hexd[:12])
                parts = [link]
                if "shim" in verdict.split(","):
                    parts = [os.path.join(link + ".shim", "above"), link, os.path.join(link + ".shim", "below")]
                for part in parts:
                    if not os.path.isdir(part):
                        raise self._gone_link(hexd, link, part)
                dirs += parts
                hide = hide or "hide" in verdict.split(",")
                continue
            if not entry.startswith(_REPO_PREFIX):
                dirs.append(self._dir(entry))
                continue
            verdict, _, snapshot_id = entry[len(_REPO_PREFIX) :].partition(":")
            top = os.path.join(self.dir, snapshot_id)
            flags = verdict.split(",")
            parts = [os.path.join(top, "fs")]
            if "shim" in flags:
                parts = [os.path.join(top, "above"), parts[0], os.path.join(top, "below")]
            for part in parts:
                if not os.path.isdir(part):
                    raise self._gone(top, part)
            dirs += parts
            hide = hide or "hide" in flags
        if hide:
            dirs.insert(0, self.layout.repository_hide)
        return dirs

    def _gone_link(self, hexd: str, link: str, missing: str) -> FailedPrecondition:
        if missing == link:
            where = os.readlink(link) if os.path.islink(link) else link
            return FailedPrecondition(
                f"layer {_CHAIN_PREFIX}{hexd} is gone from the layer repository ({where} does not exist): the "
                "snapshots on it cannot be mounted"
            )
        return FailedPrecondition(
            f"the shim of repository layer {_CHAIN_PREFIX}{hexd} is gone from the store ({missing})"
        )

    def _gone(self, top: str, missing: str) -> FailedPrecondition:
        try:
            layerfs = os.readlink(os.path.join(top, "fs"))
        except OSError:
            layerfs = os.path.join(top, "fs")
        digest = _CHAIN_PREFIX + os.path.basename(os.path.dirname(layerfs))
        where = os.readlink(missing) if os.path.islink(missing) else missing
        if missing.endswith("/fs"):
            return FailedPrecondition(
                f"layer {digest} is gone from the layer repository ({where} does not exist): the snapshots on it "
                "cannot be mounted"
            )
        return FailedPrecondition(
            f"the shim of repository layer {digest} is gone from the store ({where} does not exist)"
        )

    def _children(self, snapshot_id: str) -> Iterator[str]:
        """The keys of the snapshots on ``snapshot_id`` (an entry whose child never got its key, or lost it
        to a remove that was killed, is no child)."""
        try:
            names = os.listdir(os.path.join(self.dir, snapshot_id, "children"))
        except FileNotFoundError:
            return
        for child_id in names:
            loaded = self._load(child_id)
            if loaded is not None:
                # In its own namespace: another front end's snapshot on a shared layer is a child too.
                found = self._find_in(loaded.owner, loaded.info.name)
                if found is not None and found.id == child_id:
                    yield loaded.info.name

    def _new_dir(self, kind: str, make_dir: Callable[[str], None] | None = None, tree: bool = True) -> str:
        """A new snapshot directory (made by ``make_dir`` if given): with its ``fs`` (unless not ``tree``: a
        remote layer's is a link) and, for an active snapshot, its ``work``."""
        while True:
            snapshot_id = os.urandom(_ID_BYTES).hex()
            path = os.path.join(self.dir, snapshot_id)
            if make_dir is not None:
                if os.path.lexists(path):
                    continue
                make_dir(path)
                break
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            break
        if not tree:
            return snapshot_id
        os.mkdir(os.path.join(path, "fs"), 0o755)
        os.chmod(os.path.join(path, "fs"), 0o755)  # whatever the umask: a root file system is 0755
        if kind == KIND_ACTIVE:
            os.mkdir(os.path.join(path, "work"), 0o700)
        return snapshot_id

    def _hold(self, volumes: list[str]) -> list[FileLock]:
        """The shared locks of the pulled layers ``volumes``, each still there: held while the record that
        keeps them from ``clean`` is written (clean locks a layer exclusively, then reads the records)."""
        from .volumes import volume_lock

        held: list[FileLock] = []
        try:
            for volume_id in volumes:
                lock = volume_lock(self.layout, volume_id)
                lock.acquire(shared=True, timeout=LOCK_WAIT)
                held.append(lock)
                if not os.path.isdir(self.layout.volume(volume_id)):
                    raise NotFound(f"parent snapshot `{_CHAIN_PREFIX}{volume_id}` was removed meanwhile")
        except BaseException:
            for lock in held:
                lock.release()
            raise
        return held

    def _write(
        self,
        snapshot_id: str,
        info: Info,
        lowers: list[str],
        remote: dict[str, str] | None = None,
        namespace: str | None = "",
    ) -> None:
        record: dict[str, object] = {
            "name": info.name,
            "kind": info.kind,
            "parent": info.parent,
            "labels": info.labels,
            "created": info.created,
            "updated": info.updated,
            "lowers": lowers,
        }
        if remote is not None:
            record["repository"] = remote
        if namespace is not None:  # None: a record from before namespaces, kept so (a front end may adopt it)
            record["namespace"] = namespace
        # Not fsynced: like an image's commit record, it falls back with the tree it describes on a power cut.
        atomic_write(os.path.join(self.dir, snapshot_id, "info.json"), jsonc.dumps(record).encode(), 0o600, sync=False)

    def _link(self, path: str, snapshot_id: str) -> None:
        """Point the index entry ``path`` (:meth:`_key_path`) at ``snapshot_id`` atomically (a stale one is
        replaced)."""
        tmp = f"{path}-tmp-{os.urandom(4).hex()}"
        os.symlink(os.path.join("..", snapshot_id), tmp)
        os.rename(tmp, path)

    def _key_path(self, key: str, namespace: str) -> str:
        """The index entry of ``key`` in ``namespace``: ``sha256(key)`` in the default namespace (as every
        store had it before namespaces) and for the shared snapshots; ``sha256(0xff namespace 0xff key)`` in
        another (no string's UTF-8 has a byte 0xff, so no default key hashes the same bytes)."""
        from hashlib import sha256

        data = key.encode("utf-8", "surrogatepass")
        if namespace:
            data = b"\xff" + namespace.encode() + b"\xff" + data
        return os.path.join(self.keys, sha256(data).hexdigest())

    def _canonical(self, found: _Found) -> str:
        """The one index entry through which the snapshot ``found`` is visible."""
        return self._key_path(found.info.name, "" if found.remote is not None else found.owner)

    def _check_owner(self, found: _Found, verb: str) -> None:
        """Another namespace's remote layer is shared: it can be a parent here, but only its own front end
        removes it or changes its labels."""
        if found.owner != self.namespace:
            owner = f"namespace `{found.owner}`" if found.owner else "the default namespace"
            raise FailedPrecondition(
                f"cannot {verb} `{found.info.name}`: it is a remote layer of {owner}, shared with this one"
            )

    def _record(self, snapshot_id: str) -> str:
        return os.path.join(self.layout.dependencies, f"snapshot:{snapshot_id}.json")

    def _find(self, key: str) -> _Found | None:
        return self._find_in(self.namespace, key)

    def _find_in(self, namespace: str, key: str) -> _Found | None:
        """The snapshot ``key`` as ``namespace`` sees it: its own, else a shared one (a remote layer, a
        pulled layer). A link is followed only to a record that carries ``key`` and for which it is the
        canonical link: one a killed commit, remove or adoption left behind is invisible."""
        paths = [self._key_path(key, namespace), self._key_path(key, "")] if namespace else [self._key_path(key, "")]
        for path in paths:
            try:
                snapshot_id = os.path.basename(os.readlink(path))
            except FileNotFoundError:
                continue
            found = self._load(snapshot_id)
            if (
                found is not None
                and found.info.name == key
                and (found.owner == namespace or found.remote is not None)
                and self._canonical(found) == path
            ):
                return found
        return self._volume(key)

    def _get(self, key: str, what: str = "snapshot") -> _Found:
        found = self._find(key)
        if found is None:
            raise NotFound(f"{what} `{key}` does not exist")
        return found

    def _load(self, snapshot_id: str) -> _Found | None:
        try:
            with open(os.path.join(self.dir, snapshot_id, "info.json"), "rb") as f:
                record = jsonc.loads(f.read())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        info = Info(
            record["name"], record["kind"], record["parent"], record["labels"], record["created"], record["updated"]
        )
        remote = record.get("repository")
        namespace = record.get("namespace")
        return _Found(
            snapshot_id,
            info,
            list(record["lowers"]),
            remote=dict(remote) if remote else None,
            namespace=namespace if isinstance(namespace, str) else None,
        )

    def _volume(self, key: str) -> _Found | None:
        """A layer pulled for images, as the committed snapshot ``sha256:<chain id>``. Its ``lowers`` are
        left empty: only a prepare on it needs them (:meth:`_volume_chain`), and a walk of a store of deep
        images would otherwise read every layer's chain."""
        volume_id = key[len(_CHAIN_PREFIX) :]
        if not key.startswith(_CHAIN_PREFIX) or not _is_hex(volume_id):
            return None
        try:
            st = os.stat(self.layout.volume(volume_id))
        except FileNotFoundError:
            return None
        below = self._volume_parent(volume_id)
        parent = _CHAIN_PREFIX + below if below else ""  # unknown (None) shows as none; prepare refuses it
        info = Info(key, KIND_COMMITTED, parent, None, st.st_mtime_ns, st.st_mtime_ns)
        return _Found(None, info, [], volume_id)

    def _volume_parent(self, volume_id: str) -> str | None:
        """The layer below a pulled layer ("" for a bottom layer), from its size record; None when unknown.
        Layers built before parents were recorded (and a GrootFS store's) say nothing: their parent is then
        read from an image's commit record that lists the layer (bottom first, so the entry before it)."""
        try:
            record = jsonc.loads(read_text(self.layout.volume_meta(volume_id), "{}"))
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("Parent"), str):
            return str(record["Parent"])
        from .images import read_record

        for directory in (self.layout.dependencies, self.layout.released):
            for name in os.listdir(directory) if os.path.isdir(directory) else ():
                if name.startswith("image:"):
                    layers = read_record(os.path.join(directory, name)) or []
                    if volume_id in layers:
                        index = layers.index(volume_id)
                        return layers[index - 1] if index > 0 else ""
        return None

    def _volume_chain(self, volume_id: str) -> list[str]:
        """A pulled layer and the layers below it, nearest first, as ``lowers`` entries."""
        top = volume_id
        chain: list[str] = []
        below: str | None = volume_id
        while below:
            if not os.path.isdir(self.layout.volume(below)):
                # Pulled above a layer used in place from the store's layer repository: stacked through the
                # snapshot of that name if there is one (containerd pulled the layer as a remote layer: the
                # same chain ID names both), else through the record the create wrote of the layer it used
                # in place there (meta/repository-chains), else refused by name rather than mounted with a
                # hole in it. Found as the default namespace finds it, whichever front end asks: a pulled
                # layer's chain is the store's, the same for every namespace.
                named = self._find_in("", _CHAIN_PREFIX + below)
                if named is not None and named.id is not None and named.info.kind == KIND_COMMITTED:
                    return [*chain, named.entry(), *named.lowers]
                used = self._repository_chain(below)
                if used is not None and used[0] not in chain:
                    entry, below = used
                    chain.append(entry)
                    continue
                raise FailedPrecondition(
                    f"layer `{_CHAIN_PREFIX}{top}` stands on `{_CHAIN_PREFIX}{below}`, which is not in the store "
                    "(a layer of its layer repository): snapshots cannot be prepared on it"
                )
            if "volume:" + below in chain:
                raise FailedPrecondition(f"layer `{_CHAIN_PREFIX}{top}`: its size records name a cycle of parents")
            chain.append("volume:" + below)
            below = self._volume_parent(below)
        if below is None:
            raise FailedPrecondition(
                f"layer `{_CHAIN_PREFIX}{chain[-1][len('volume:') :]}` was pulled by an older graftfs, which did not "
                "record the layer below it, and no image names it: snapshots cannot be prepared on it"
            )
        return chain

    def _repository_chain(self, chain_id: str) -> tuple[str, str] | None:
        """The lowers entry (``layer:<verdict>:<digest hex>``) of the repository layer a create used in place
        at ``chain_id``, and the chain ID below it; None if no create recorded one."""
        try:
            record = jsonc.loads(read_text(os.path.join(self.layout.repository_chains, chain_id), "null"))
        except ValueError:
            return None
        if not (isinstance(record, dict) and isinstance(record.get("digest"), str)):
            return None
        hexd = record["digest"].partition(":")[2]
        verdict = read_text(os.path.join(self.layout.repository_verdicts, hexd), "\0")
        if verdict == "\0" or verdict.startswith("writable:"):
            return None
        return f"{_LAYER_PREFIX}{verdict}:{hexd}", str(record.get("parent", ""))

    def _all(self, namespace: str | None) -> list[_Found]:
        """The snapshots of ``namespace`` (in the default one, with the store's pulled layers, as before
        namespaces), or with None every namespace's records (no pulled layers)."""
        found = []
        for name in os.listdir(self.keys):
            if "-tmp-" in name:
                continue
            try:
                snapshot_id = os.path.basename(os.readlink(os.path.join(self.keys, name)))
            except OSError:
                continue
            loaded = self._load(snapshot_id)
            if loaded is not None and os.path.basename(self._canonical(loaded)) == name:
                found.append(loaded)
        if namespace is None:
            return found
        # A snapshot in the shared space under a layer's name hides the layer.
        taken = {f.info.name for f in found if f.remote is not None or not f.owner}
        found = [f for f in found if f.owner == namespace]
        if namespace == "" and os.path.isdir(self.layout.volumes):
            from .volumes import Volumes

            for volume_id in Volumes(self.layout).ids():
                volume = self._volume(_CHAIN_PREFIX + volume_id)
                if volume is not None and volume.info.name not in taken:
                    found.append(volume)
        return found

    def _tree(self, found: _Found) -> str:
        if found.id is None:
            return self.layout.volume(found.volume)
        return os.path.join(self.dir, found.id, "fs")

    def _dir(self, lower: str) -> str:
        if lower.startswith("volume:"):
            # By its short link (``l/<12 hex>``), as images name it: 64 hex digits a layer would fill the
            # kernel's page of mount options at about 56 layers.
            volume_id = lower[len("volume:") :]
            link = self.layout.link(volume_id)
            return link if os.path.islink(link) else self.layout.volume(volume_id)
        return os.path.join(self.dir, lower, "fs")

    def _check_fits(self, found: _Found) -> None:
        """Refuse, before making anything, a snapshot whose overlay the kernel could not mount whole."""
        from ..mount.spec import compact_options

        for mount in self._mounts(found):
            if mount.type == "overlay":
                compact_options(mount.options)

    def _mounts(self, found: _Found) -> list[Mount]:
        from ..mount.spec import Mount

        assert found.id is not None
        fs = os.path.join(self.dir, found.id, "fs")
        lowers = self._lower_dirs(found.lowers)
        if found.info.kind == KIND_VIEW:
            if len(lowers) <= 1:
                # A view of one layer is that layer, read-only; of nothing, an empty directory.
                return [Mount("bind", lowers[0] if lowers else fs, ("ro", "rbind"))]
            return [Mount("overlay", "overlay", (*self.overlay_options, "lowerdir=" + ":".join(lowers)))]
        if not lowers:
            return [Mount("bind", fs, ("rw", "rbind"))]
        work = os.path.join(self.dir, found.id, "work")
        options = (*self.overlay_options, "lowerdir=" + ":".join(lowers), f"upperdir={fs}", f"workdir={work}")
        return [Mount("overlay", "overlay", options)]

    def _lock(self) -> FileLock:
        if self.closed:
            raise FailedPrecondition("the snapshotter is closed")
        return FileLock(self.layout.locks, "snapshots").held(timeout=LOCK_WAIT)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidArgument("a snapshot key must be a non-empty string")


def _nearest_record(lowers: Sequence[str]) -> str | None:
    """The directory id of the nearest snapshot below, in a lowers list, that has a record (not a pulled
    layer): the one whose ``children`` lists the snapshot."""
    for entry in lowers:
        if entry.startswith(("volume:", _LAYER_PREFIX)):
            continue
        return entry.rpartition(":")[2]
    return None


def valid_namespace(text: str) -> bool:
    """A front end's namespace name: ASCII letters, digits, `.`, `_` and `-`, starting with a letter or digit."""
    return text[:1].isascii() and text[:1].isalnum() and all(c.isascii() and (c.isalnum() or c in "._-") for c in text)


def _is_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


# -- containerd's filter syntax ---------------------------------------------------------------------------

if TYPE_CHECKING:
    Condition = Callable[[Info], bool]


def _parse_filter(text: str) -> list[Condition]:
    """One filter in containerd's syntax (its ``filters`` package): comma-separated selectors, all of which
    must hold; a selector is a field path (``name``, ``labels."a.b"``), then optionally an operator (``==``,
    ``!=``, ``~=``) and a value, quoted as a Go string (or, for ``~=``, between ``/`` or ``|``) or bare up to
    a space or comma. Blanks between tokens are allowed."""
    conditions: list[Condition] = []
    pos = _blank(text, 0)
    while True:
        path, pos = _fieldpath(text, pos)
        pos = _blank(text, pos)
        op = text[pos : pos + 2] if text[pos : pos + 2] in ("==", "!=", "~=") else ""
        value = ""
        if op:
            value, pos = _value(text, _blank(text, pos + 2), regexp=op == "~=")
            pos = _blank(text, pos)
        conditions.append(_condition(path, op, value, text))
        if pos == len(text):
            return conditions
        if text[pos] != ",":
            raise InvalidArgument(f"filter `{text}`: expected `,` at {pos}")
        pos = _blank(text, pos + 1)


def _blank(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def _fieldpath(text: str, pos: int) -> tuple[list[str], int]:
    parts: list[str] = []
    while True:
        if pos < len(text) and text[pos] == '"':
            part, pos = _quoted(text, pos, '"')
        else:
            start = pos
            while pos < len(text) and (text[pos].isascii() and (text[pos].isalnum() or text[pos] == "_")):
                pos += 1
            part = text[start:pos]
        if not part:
            raise InvalidArgument(f"filter `{text}`: expected a field name at {pos}")
        parts.append(part)
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return parts, pos


def _value(text: str, pos: int, regexp: bool) -> tuple[str, int]:
    if pos < len(text) and (text[pos] == '"' or (regexp and text[pos] in "/|")):
        return _quoted(text, pos, text[pos])
    end = pos
    while end < len(text) and text[end] not in " \t\n\r,":
        end += 1
    if end == pos:
        raise InvalidArgument(f"filter `{text}`: expected a value at {pos}")
    return text[pos:end], end


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _quoted(text: str, pos: int, quote: str) -> tuple[str, int]:
    """A quoted string from ``text[pos]`` (the quote) with Go's escapes; ``/`` and ``|`` quotes (regexps)
    only escape themselves, everything else is the regexp's own."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        c = text[pos]
        if c == quote:
            return "".join(out), pos + 1
        if c == "\\" and pos + 1 < len(text):
            e = text[pos + 1]
            if quote != '"':
                out.append(e if e == quote else c + e)
                pos += 2
            elif e in _ESCAPES:
                out.append(_ESCAPES[e])
                pos += 2
            elif e in "xuU" or e in "01234567":
                digits, base = ({"x": 2, "u": 4, "U": 8}.get(e, 3), 8 if e in "01234567" else 16)
                start = pos + 1 if base == 8 else pos + 2
                try:
                    out.append(chr(int(text[start : start + digits], base)))
                except ValueError:
                    raise InvalidArgument(f"filter `{text}`: bad escape at {pos}") from None
                pos = start + digits
            else:
                out.append(e)
                pos += 2
            continue
        out.append(c)
        pos += 1
    raise InvalidArgument(f"filter `{text}`: unterminated quote")


def _condition(path: list[str], op: str, value: str, text: str) -> Condition:
    """As containerd's snapshot adaptor: ``name``, ``parent`` and ``kind`` are always present (``parent``
    empty for a snapshot on nothing, so ``parent==""`` selects those), a label only when it is set;
    ``==`` needs the field present, ``!=`` and ``~=`` compare whatever value it has ("" when absent)."""

    def field(info: Info) -> str | None:
        if path[0] == "labels" and len(path) > 1:
            return info.labels.get(".".join(path[1:]))
        if len(path) == 1 and path[0] in ("name", "kind", "parent"):
            # Always present, empty or not (containerd's snapshot adaptor): `parent==""` selects the
            # snapshots on nothing, which containerd's metadata store asks for after a remote layer's prepare.
            found: str = getattr(info, path[0])
            return found
        return None

    if path[0] not in ("name", "kind", "parent", "labels"):
        raise InvalidArgument(f"filter `{text}`: unknown field `{'.'.join(path)}`")
    if op == "":
        return lambda info: field(info) is not None
    if op == "==":
        return lambda info: field(info) == value
    if op == "!=":
        return lambda info: (field(info) or "") != value
    import re

    try:
        pattern = re.compile(value)
    except re.error as exc:
        raise InvalidArgument(f"filter `{text}`: {exc}") from None
    return lambda info: pattern.search(field(info) or "") is not None


__all__ = ["KIND_ACTIVE", "KIND_COMMITTED", "KIND_VIEW", "Info", "Snapshotter", "Usage"]
