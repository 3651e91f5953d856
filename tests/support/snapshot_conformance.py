"""The snapshotter conformance suite: containerd's (``core/snapshots/testsuite``) case for case, plus graftfs's
own cases, as plain functions over any object with the snapshotter's verbs (:class:`SnapshotterLike`).

``case_<name>(sn, work)`` takes a snapshotter and an empty work directory (the play area its mounts go in);
:data:`CASES` lists containerd's cases under their ``t.Run`` names (typos included, so a failure can be
looked up there), :data:`GRAFTFS_CASES` graftfs's own. A front end (a Docker graphdriver, a containerd
gRPC snapshotter) runs the very same cases through its wire protocol by passing a client with the same
methods: the cases only call the verbs, and perform the mounts the verbs return themselves
(:func:`graftfs.mount.kernel.mount_all`), as containerd's ``mount.All`` does.

:data:`PROCESS_CASES` need a snapshotter opened by other processes on the same root: they take an
:class:`Opener` (a root and the ``module:callable`` that opens it) instead. Their children are this module
run as a program (``python -m tests.support.snapshot_conformance share|churn ...``), each in a private
mount namespace, so that what a killed child mounted goes with it.

The cases run with the umask cleared, as containerd's suite does (:func:`cleared_umask`).
"""

from __future__ import annotations

import copy
import errno
import importlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

from graftfs.errors import AlreadyExists, FailedPrecondition, GraftfsError, InvalidArgument, NotFound
from graftfs.mount import kernel
from graftfs.mount.spec import Mount
from graftfs.store.snapshots import KIND_ACTIVE, KIND_COMMITTED, KIND_VIEW, Info, Usage
from tests.support import fstest


class SnapshotterLike(Protocol):
    """The verbs the cases call (graftfs.store.snapshots.Snapshotter's; a wire client's)."""

    def stat(self, key: str) -> Info: ...

    def update(self, info: Info, *fieldpaths: str) -> Info: ...

    def usage(self, key: str) -> Usage: ...

    def mounts(self, key: str) -> list[Mount]: ...

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]: ...

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]: ...

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None: ...

    def remove(self, key: str) -> None: ...

    def walk(self, *filters: str) -> Iterable[Info]: ...

    def cleanup(self) -> object: ...  # graftfs returns what it removed; containerd nothing

    def close(self) -> None: ...


CaseFn = Callable[[SnapshotterLike, str], None]

#: The labels containerd's suite gives every snapshot it makes (its ``opt``): a gc root, so that a
#: snapshotter behind containerd's metadata store keeps them.
GC_ROOT = "containerd.io/gc.root"
OPT: dict[str, str] = {GC_ROOT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# -- helpers ---------------------------------------------------------------------------------------------------


@contextmanager
def cleared_umask() -> Iterator[None]:
    """Run with umask 0 (containerd's suite clears it for all its cases), restoring the old one after."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mount_points() -> list[str]:
    """Every mount point of this process's mount namespace, in mount order."""
    return [m.point for m in kernel.mountinfo()]


def mounts_under(path: str) -> list[str]:
    """The mount points at or below ``path``, deepest (then latest) first: the order to unmount them in."""
    prefix = os.path.realpath(path).rstrip("/")
    found = [p for p in mount_points() if p == prefix or p.startswith(prefix + "/")]
    order = {p: i for i, p in enumerate(found)}
    return sorted(set(found), key=lambda p: (p.count("/"), order[p]), reverse=True)


def unmount_all(target: str) -> None:
    """Unmount ``target`` until nothing is mounted there (containerd's ``mount.UnmountAll``)."""
    for _ in range(32):
        if os.path.realpath(target) not in mount_points():
            return
        kernel.unmount(target)
    raise AssertionError(f"{target} is still mounted after 32 unmounts")


@contextmanager
def mounted(mounts: Sequence[Mount], target: str) -> Iterator[str]:
    """``mounts`` performed at ``target`` for the block, unmounted after it (failed or not)."""
    os.makedirs(target, exist_ok=True)
    try:
        kernel.mount_all(mounts, target)
    except BaseException:
        unmount_all(target)  # a mount_all that failed half way
        raise
    try:
        yield target
    finally:
        unmount_all(target)


E = TypeVar("E", bound=BaseException)


def raises(kind: type[E], call: Callable[[], object], what: str) -> E:
    """The ``kind`` error ``call`` raises; an AssertionError saying ``what`` was expected if it raises
    nothing (another error propagates as it is)."""
    try:
        call()
    except kind as exc:
        return exc
    raise AssertionError(f"{what}: expected {kind.__name__}, but it succeeded")


def _exists(sn: SnapshotterLike, key: str) -> bool:
    try:
        sn.stat(key)
    except NotFound:
        return False
    return True


def _changed(info: Info, **fields: object) -> Info:
    """A copy of ``info`` with ``fields`` set (what the Go suite does to its value copy before Update)."""
    new = copy.copy(info)
    for name, value in fields.items():
        setattr(new, name, value)
    return new


def prepare_mounted(sn: SnapshotterLike, work: str, name: str, parent: str) -> str:
    """containerd's ``snapshotterPrepareMount``: prepare ``work/name`` (the key is the path) on ``parent``
    and mount it there. The caller unmounts it."""
    preparing = os.path.join(work, name)
    os.makedirs(preparing, mode=0o777, exist_ok=True)
    mounts = sn.prepare(preparing, parent, OPT)
    assert len(mounts) >= 1, "expected mounts to have entries"
    kernel.mount_all(mounts, preparing)
    return preparing


def _apply_to_mounts(mounts: Sequence[Mount], work: str, applier: fstest.Applier) -> None:
    td = tempfile.mkdtemp(prefix="prepare", dir=work)
    try:
        with mounted(mounts, td):
            applier(td)
    finally:
        os.rmdir(td)  # never rmtree: were it still mounted, that would empty the snapshot


def create_snapshot(sn: SnapshotterLike, parent: str, work: str, applier: fstest.Applier) -> str:
    """A committed snapshot on ``parent`` holding what ``applier`` does to it; returns its name."""
    name = f"{id(applier):x}-{random.getrandbits(63)}"
    prepare = f"{name}-prepare"
    mounts = sn.prepare(prepare, parent, OPT)
    _apply_to_mounts(mounts, work, applier)
    sn.commit(name, prepare, OPT)
    return name


def check_snapshot(sn: SnapshotterLike, work: str, name: str, expected: str) -> None:
    """A view of ``name``, mounted, is the same tree as ``expected``; the view is removed after."""
    td = tempfile.mkdtemp(prefix="check", dir=work)
    view = f"{name}-view"
    try:
        mounts = sn.view(view, name, OPT)
        try:
            with mounted(mounts, td):
                fstest.check_directory_equal(expected, td)
        finally:
            sn.remove(view)
    finally:
        os.rmdir(td)


def check_snapshots(sn: SnapshotterLike, work: str, *appliers: fstest.Applier) -> None:
    """containerd's ``checkSnapshots``: a chain of snapshots, each made by one applier on the one before,
    each checked through a view against the same appliers run in order on one plain directory."""
    flat = tempfile.mkdtemp(prefix="flat", dir=work)
    try:
        parent = ""
        for i, applier in enumerate(appliers, 1):
            name = create_snapshot(sn, parent, work, applier)
            applier(flat)
            try:
                check_snapshot(sn, work, name, flat)
            except AssertionError as exc:
                raise AssertionError(f"snapshot check failed on snapshot {i}: {exc}") from None
            parent = name
    finally:
        shutil.rmtree(flat)


# -- containerd's cases (testsuite.go, issues.go) -----------------------------------------------------------------


def case_basic(sn: SnapshotterLike, work: str) -> None:
    """The basic workflow: prepare, write, commit; a child on it; a view of the chain; removal in order."""
    initial = fstest.apply(
        fstest.create_file("/foo", b"foo\n", 0o777),
        fstest.create_dir("/a", 0o755),
        fstest.create_dir("/a/b", 0o755),
        fstest.create_dir("/a/b/c", 0o755),
    )
    diff = fstest.apply(
        fstest.create_file("/bar", b"bar\n", 0o777),
        fstest.create_file("/foo", b"bar\n", 0o777),  # foo's content changes too
        fstest.remove_all("/a/b"),
    )

    preparing = os.path.join(work, "preparing")
    os.makedirs(preparing, 0o777)
    mounts = sn.prepare(preparing, "", OPT)
    assert len(mounts) >= 1, "expected mounts to have entries"
    with mounted(mounts, preparing):
        initial(preparing)

    committed = os.path.join(work, "committed")
    sn.commit(committed, preparing, OPT)
    si = sn.stat(committed)
    assert si.parent == ""
    assert si.kind == KIND_COMMITTED
    raises(NotFound, lambda: sn.stat(preparing), f"{preparing} should no longer be available after commit")

    nxt = os.path.join(work, "nextlayer")
    os.makedirs(nxt, 0o777)
    mounts = sn.prepare(nxt, committed, OPT)
    with mounted(mounts, nxt):
        fstest.check_directory_equal_with_applier(nxt, initial)
        diff(nxt)

    ni = sn.stat(nxt)
    assert ni.parent == committed
    assert ni.kind == KIND_ACTIVE

    next_committed = os.path.join(work, "committed-next")
    sn.commit(next_committed, nxt, OPT)
    si2 = sn.stat(next_committed)
    assert si2.parent == committed
    assert si2.kind == KIND_COMMITTED
    raises(NotFound, lambda: sn.stat(nxt), f"{nxt} should no longer be available after commit")

    walked = {info.name: info for info in sn.walk()}  # walk is not ordered
    for expected in (si, si2):
        assert expected.name in walked, f"missing stat for {expected.name}"
        assert walked[expected.name] == expected

    nextnext = os.path.join(work, "nextnextlayer")
    os.makedirs(nextnext, 0o777)
    mounts = sn.view(nextnext, next_committed, OPT)
    with mounted(mounts, nextnext):
        fstest.check_directory_equal_with_applier(nextnext, fstest.apply(initial, diff))
    sn.remove(nextnext)

    err = raises(FailedPrecondition, lambda: sn.remove(committed), "removing a committed snapshot with a child")
    assert "remove" in str(err), str(err)

    sn.remove(next_committed)
    sn.remove(committed)


def case_stat_active(sn: SnapshotterLike, work: str) -> None:
    """Stat of a prepared (and written) snapshot: active, no parent, its own key as name."""
    preparing = os.path.join(work, "preparing")
    os.makedirs(preparing, 0o777)
    mounts = sn.prepare(preparing, "", OPT)
    assert len(mounts) >= 1, "expected mounts to have entries"
    with mounted(mounts, preparing):
        fstest.create_file("foo", b"foo\n", 0o777)(preparing)
        si = sn.stat(preparing)
        assert si.name == preparing
        assert si.kind == KIND_ACTIVE
        assert si.parent == ""


def case_stat_committed(sn: SnapshotterLike, work: str) -> None:
    """Stat of a committed snapshot (committed while still mounted, as the Go case does)."""
    preparing = os.path.join(work, "preparing")
    os.makedirs(preparing, 0o777)
    mounts = sn.prepare(preparing, "", OPT)
    assert len(mounts) >= 1, "expected mounts to have entries"
    with mounted(mounts, preparing):
        fstest.create_file("foo", b"foo\n", 0o777)(preparing)
        committed = os.path.join(work, "committed")
        sn.commit(committed, preparing, OPT)
        si = sn.stat(committed)
        assert si.name == committed
        assert si.kind == KIND_COMMITTED
        assert si.parent == ""


def case_transitivity(sn: SnapshotterLike, work: str) -> None:
    """A <- B: B's parent is A, and stat of B's parent is A (which has none)."""
    preparing = prepare_mounted(sn, work, "preparing", "")
    try:
        fstest.create_file("foo", b"foo\n", 0o777)(preparing)
    finally:
        unmount_all(preparing)
    snap_a = os.path.join(work, "snapA")
    sn.commit(snap_a, preparing, OPT)

    nxt = prepare_mounted(sn, work, "next", snap_a)
    try:
        fstest.create_file("foo", b"foo bar\n", 0o777)(nxt)
    finally:
        unmount_all(nxt)
    snap_b = os.path.join(work, "snapB")
    sn.commit(snap_b, nxt, OPT)

    si_a = sn.stat(snap_a)
    si_b = sn.stat(snap_b)
    si_parent_b = sn.stat(si_b.parent)
    assert si_a.parent == ""
    assert si_b.parent == snap_a
    assert si_parent_b.parent == ""


def case_prepare_view(sn: SnapshotterLike, work: str) -> None:
    """A key taken by prepare or view cannot be taken again by either."""
    preparing = prepare_mounted(sn, work, "preparing", "")
    unmount_all(preparing)
    snap_a = os.path.join(work, "snapA")
    sn.commit(snap_a, preparing, OPT)

    new_layer = os.path.join(work, "newlayer")
    sn.prepare(new_layer, snap_a, OPT)
    raises(AlreadyExists, lambda: sn.view(new_layer, snap_a, OPT), "view with the key of an active snapshot")

    prep_layer = os.path.join(work, "prepLayer")
    sn.prepare(prep_layer, snap_a, OPT)
    raises(AlreadyExists, lambda: sn.prepare(prep_layer, snap_a, OPT), "a second prepare of one key")

    view_layer = os.path.join(work, "viewLayer")
    sn.view(view_layer, snap_a, OPT)
    raises(AlreadyExists, lambda: sn.view(view_layer, snap_a, OPT), "a second view of one key")


def _base_snapshots(sn: SnapshotterLike) -> None:
    """c1 (committed), c2 (committed on c1), a1 (active on c2), a2 (active), v1 (view of c2), v2 (view)."""
    sn.prepare("c1-a", "", OPT)
    sn.commit("c1", "c1-a", OPT)
    sn.prepare("c2-a", "c1", OPT)
    sn.commit("c2", "c2-a", OPT)
    sn.prepare("a1", "c2", OPT)
    sn.prepare("a2", "", OPT)
    sn.view("v1", "c2", OPT)
    sn.view("v2", "", OPT)


def case_update(sn: SnapshotterLike, work: str) -> None:
    """Times on creation and update; labels replaced whole, by ``labels.<key>`` paths, and by ``labels``;
    anything else (parent) is immutable: InvalidArgument."""
    t1 = time.time_ns()
    _base_snapshots(sn)
    t2 = time.time_ns()
    cases = [
        ("c1", KIND_COMMITTED, ""),
        ("c2", KIND_COMMITTED, "c1"),
        ("a1", KIND_ACTIVE, "c2"),
        ("a2", KIND_ACTIVE, ""),
        ("v1", KIND_VIEW, "c2"),
        ("v2", KIND_VIEW, ""),
    ]
    for name, kind, parent in cases:
        st = sn.stat(name)
        assert t1 <= st.created <= t2, f"({name}) wrong created time {st.created}: expected between {t1} and {t2}"
        assert st.created == st.updated, f"({name}) unexpected updated time {st.updated}: expected {st.created}"
        assert st.kind == kind, f"({name}) unexpected kind {st.kind}, expected {kind}"
        assert st.parent == parent, f"({name}) unexpected parent {st.parent!r}, expected {parent!r}"
        assert st.name == name, f"({name}) unexpected name {st.name!r}"

        created = st.created
        root_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        expected = {"l1": "v1", "l2": "v2", "l3": "v3", GC_ROOT: root_time}  # keeps the root label
        u1 = time.time_ns()
        st = sn.update(_changed(st, parent="doesnotexist", labels=dict(expected)))
        u2 = time.time_ns()
        assert st.created == created, f"({name}) wrong created time {st.created}: expected {created}"
        assert u1 <= st.updated <= u2, f"({name}) wrong updated time {st.updated}: expected between {u1} and {u2}"
        assert st.kind == kind, f"({name}) unexpected kind {st.kind}, expected {kind}"
        assert st.parent == parent, f"({name}) unexpected parent {st.parent!r}, expected {parent!r}"
        assert st.name == name, f"({name}) unexpected name {st.name!r}"
        assert st.labels == expected, f"({name}) labels {st.labels}, expected {expected}"

        expected = {"l1": "updated", "l3": "v3", GC_ROOT: root_time}
        st = sn.update(_changed(st, labels={"l1": "updated", "l4": "v4"}), "labels.l1", "labels.l2")
        assert st.labels == expected, f"({name}) labels {st.labels}, expected {expected}"

        expected = {"l4": "v4", GC_ROOT: root_time}
        st = sn.update(_changed(st, labels=dict(expected)), "labels")
        assert st.labels == expected, f"({name}) labels {st.labels}, expected {expected}"

        immutable = _changed(st, parent="doesnotexist")
        raises(InvalidArgument, partial(sn.update, immutable, "parent"), f"({name}) updating the field path parent")


def case_remove(sn: SnapshotterLike, work: str) -> None:
    """A removed key can be taken again, by prepare or view; a committed name can be reused after removal."""
    sn.prepare("committed-a", "", OPT)
    sn.commit("committed-1", "committed-a", OPT)
    sn.prepare("reuse-1", "committed-1", OPT)
    sn.remove("reuse-1")
    sn.view("reuse-1", "committed-1", OPT)
    sn.remove("reuse-1")
    sn.prepare("reuse-1", "", OPT)
    sn.remove("committed-1")
    sn.commit("committed-1", "reuse-1", OPT)


def case_walk(sn: SnapshotterLike, work: str) -> None:
    """Walk with containerd's filters: kinds, names, parents, labels, present and absent fields; several
    filters match any."""
    opt = {GC_ROOT: "check-walk"}
    sn.prepare("a-np", "", opt)  # no parent, active
    sn.prepare("p-tmp", "", opt)
    sn.commit("p", "p-tmp", opt)  # base parent
    sn.prepare("a", "p", opt)
    sn.view("v", "p", opt)
    sn.prepare("p-wl-tmp", "", opt)
    sn.commit("p-wl", "p-wl-tmp", {"l": "1", GC_ROOT: "check-walk"})
    sn.prepare("a-wl", "p-wl", {"l": "2", GC_ROOT: "check-walk"})
    sn.view("v-wl", "p-wl", {"l": "3", GC_ROOT: "check-walk"})
    sn.prepare("a-np-wl", "", {"l": "2", GC_ROOT: "check-walk"})

    table: list[tuple[list[str], list[str]]] = [
        (["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"], ['labels."containerd.io/gc.root"==check-walk']),
        (["a-np", "a", "a-wl", "a-np-wl"], ['kind==active,labels."containerd.io/gc.root"==check-walk']),
        (["v", "v-wl"], ['kind==view,labels."containerd.io/gc.root"==check-walk']),
        (["p", "p-wl"], ['kind==committed,labels."containerd.io/gc.root"==check-walk']),
        (["p", "a-np-wl"], ["name==p", "name==a-np-wl"]),
        (["a-wl"], ["name==a-wl,labels.l"]),
        (["a", "v"], ["parent==p"]),
        (["a", "v", "a-wl", "v-wl"], ['parent!="",labels."containerd.io/gc.root"==check-walk']),
        (["p-wl", "a-wl", "v-wl", "a-np-wl"], ["labels.l"]),
        (["a-wl", "a-np-wl"], ["labels.l==2"]),
    ]
    failures = []
    for i, (matches, filters) in enumerate(table):
        actual = sorted(info.name for info in sn.walk(*filters))
        if actual != sorted(matches):
            failures.append(f"[{i}] {filters}: got {actual}, expected {sorted(matches)}")
    assert not failures, "unexpected walk results:\n" + "\n".join(failures)


def case_layer_file_update(sn: SnapshotterLike, work: str) -> None:
    """A file changed in an upper layer (docker#21555), five times, each starting on a new second."""
    l1 = fstest.apply(
        fstest.create_dir("/etc", 0o700),
        fstest.create_file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
        fstest.create_file("/etc/profile", b"PATH=/usr/bin", 0o644),
    )
    l2 = fstest.apply(
        fstest.create_file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
        fstest.create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
        fstest.create_dir("/root", 0o700),
        fstest.create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644),
    )
    for i in range(5):  # sporadic failures were the issue
        if i:
            now = time.time()
            time.sleep(int(now) + 1 - now)  # to the next second boundary
        check_snapshots(sn, work, l1, l2)


def case_remove_directory_in_lower_layer(sn: SnapshotterLike, work: str) -> None:
    """A directory removed and made again hides what the lower one held (docker#25244)."""
    l1 = fstest.apply(
        fstest.create_dir("/lib", 0o700),
        fstest.create_file("/lib/hidden", b"", 0o644),
    )
    l2 = fstest.apply(
        fstest.remove_all("/lib"),
        fstest.create_dir("/lib", 0o700),
        fstest.create_file("/lib/not-hidden", b"", 0o644),
    )
    l3 = fstest.apply(fstest.create_file("/lib/newfile", b"", 0o644))
    check_snapshots(sn, work, l1, l2, l3)


def case_chown(sn: SnapshotterLike, work: str) -> None:
    """Ownership changed in an upper layer, on directories and a file (docker#20240, #24913, #28391)."""
    l1 = fstest.apply(
        fstest.create_dir("/opt", 0o700),
        fstest.create_dir("/opt/a", 0o700),
        fstest.create_dir("/opt/a/b", 0o700),
        fstest.create_file("/opt/a/b/file.txt", b"hello", 0o644),
    )
    l2 = fstest.apply(
        fstest.chown("/opt", 1, 1),
        fstest.chown("/opt/a", 1, 1),
        fstest.chown("/opt/a/b", 1, 1),
        fstest.chown("/opt/a/b/file.txt", 1, 1),
    )
    check_snapshots(sn, work, l1, l2)


def case_rename(sn: SnapshotterLike, work: str) -> None:
    """Files renamed over others and renamed away in an upper layer (docker#25409). As for containerd's
    overlayfs snapshotter, a lower directory is not renamed: without redirect_dir overlayfs refuses it."""
    l1 = fstest.apply(
        fstest.create_dir("/dir1", 0o700),
        fstest.create_dir("/somefiles", 0o700),
        fstest.create_file("/somefiles/f1", b"was here first!", 0o644),
        fstest.create_file("/somefiles/f2", b"nothing interesting", 0o644),
    )
    l2 = fstest.apply(
        fstest.create_file("/somefiles/f1-overwrite", b"new content 1", 0o644),
        fstest.rename("/somefiles/f1-overwrite", "/somefiles/f1"),
        fstest.rename("/somefiles/f2", "/somefiles/f3"),
    )
    check_snapshots(sn, work, l1, l2)


def case_directory_permission_on_commit(sn: SnapshotterLike, work: str) -> None:
    """Directory owners kept across commits, through removal and re-creation (docker#27298)."""
    l1 = fstest.apply(
        fstest.create_dir("/dir1", 0o700),
        fstest.create_dir("/dir2", 0o700),
        fstest.create_dir("/dir3", 0o700),
        fstest.create_dir("/dir4", 0o700),
        fstest.create_file("/dir4/f1", b"...", 0o644),
        fstest.create_dir("/dir5", 0o700),
        fstest.create_file("/dir5/f1", b"...", 0o644),
        fstest.chown("/dir1", 1, 1),
        fstest.chown("/dir2", 1, 1),
        fstest.chown("/dir3", 1, 1),
        fstest.chown("/dir5", 1, 1),
        fstest.chown("/dir5/f1", 1, 1),
    )
    l2 = fstest.apply(
        fstest.chown("/dir2", 0, 0),
        fstest.remove_all("/dir3"),
        fstest.chown("/dir4", 1, 1),
        fstest.chown("/dir4/f1", 1, 1),
    )
    l3 = fstest.apply(
        fstest.create_dir("/dir3", 0o700),
        fstest.chown("/dir3", 1, 1),
        fstest.remove_all("/dir5"),
        fstest.create_dir("/dir5", 0o700),
        fstest.chown("/dir5", 1, 1),
    )
    check_snapshots(sn, work, l1, l2, l3)


def case_remove_intermediate_snapshot(sn: SnapshotterLike, work: str) -> None:
    """Of three layers, the middle one cannot be removed while the top one is there; top down works."""
    base = prepare_mounted(sn, work, "base", "")
    unmount_all(base)
    committed_base = os.path.join(work, "committed-base")
    sn.commit(committed_base, base, OPT)

    intermediate = os.path.join(work, "intermediate")
    sn.prepare(intermediate, committed_base, OPT)
    committed_inter = os.path.join(work, "committed-inter")
    sn.commit(committed_inter, intermediate, OPT)

    top = os.path.join(work, "toplayer")
    sn.prepare(top, committed_inter, OPT)

    raises(FailedPrecondition, lambda: sn.remove(committed_inter), "intermediate layer removal should fail")
    sn.remove(top)
    sn.remove(committed_inter)
    sn.remove(committed_base)


def case_deleted_files_in_child_snapshot(sn: SnapshotterLike, work: str) -> None:
    """A file deleted in a child stays deleted in the child's child."""
    l1 = fstest.apply(
        fstest.create_file("/foo", b"foo\n", 0o777),
        fstest.create_file("/foobar", b"foobar\n", 0o777),
    )
    l2 = fstest.apply(fstest.remove_all("/foobar"))
    l3 = fstest.apply()
    check_snapshots(sn, work, l1, l2, l3)


def case_move_file_from_lower_layer(sn: SnapshotterLike, work: str) -> None:
    """Files of a lower layer moved (copied and removed; hard linked and removed) in an upper one."""
    l1 = fstest.apply(
        fstest.create_dir("/dir1", 0o700),
        fstest.create_file("/dir1/f1", b"Hello", 0o644),
        fstest.create_dir("dir2", 0o700),
        fstest.create_file("dir2/f2", b"...", 0o644),
    )
    l2 = fstest.apply(
        fstest.create_dir("/dir3", 0o700),
        fstest.create_file("/dir3/f1", b"Hello", 0o644),
        fstest.remove_all("/dir1"),
        fstest.link("dir2/f2", "dir3/f2"),
        fstest.remove_all("dir2/f2"),
    )
    check_snapshots(sn, work, l1, l2)


def case_view_readonly(sn: SnapshotterLike, work: str) -> None:
    """A view, really mounted, refuses writes (EROFS expected; any error will do)."""
    preparing = os.path.join(work, "preparing")
    sn.prepare(preparing, "", OPT)
    committed = os.path.join(work, "committed")
    sn.commit(committed, preparing, OPT)
    view = os.path.join(work, "view")
    mounts = sn.view(view, committed, OPT)
    point = os.path.join(work, "view-mount")
    os.makedirs(point, 0o777)
    testfile = os.path.join(point, "testfile")
    with mounted(mounts, point):
        try:
            fstest.create_file("testfile", b"testcontent", 0o777)(point)
        except OSError as exc:
            if exc.errno != errno.EROFS:  # EROFS is expected, but another error is fine too
                print(f"write to {testfile} failed with {exc} (EROFS expected, but any error will do)")
        else:
            raise AssertionError(f"write to {testfile} should fail (EROFS) but did not fail")
    sn.remove(view)
    sn.remove(committed)


def _named_snapshots(sn: SnapshotterLike, prefix: str) -> None:
    c1, c2 = f"{prefix}c1", f"{prefix}c2"
    sn.prepare(c1 + "-a", "", OPT)
    sn.commit(c1, c1 + "-a", OPT)
    sn.prepare(c2 + "-a", c1, OPT)
    sn.commit(c2, c2 + "-a", OPT)
    sn.prepare(f"{prefix}a1", c2, OPT)
    sn.view(f"{prefix}v1", c2, OPT)


def case_stat_in_walk(sn: SnapshotterLike, work: str) -> None:
    """Stat while a walk is under way (no deadlock), and it agrees with what the walk reported."""
    prefix = "stats-in-walk-"
    _named_snapshots(sn, prefix)
    seen = 0
    for si in sn.walk():
        if not si.name.startswith(prefix):
            continue  # only this case's snapshots
        si2 = sn.stat(si.name)
        for field in ("kind", "name", "parent", "labels", "created", "updated"):
            a, b = getattr(si, field), getattr(si2, field)
            assert a == b, f"{si.name}: walk says {field} {a!r}, stat says {b!r}"
        seen += 1
    assert seen == 4, f"walk reported {seen} of the 4 snapshots made"


def case_close_twice(sn: SnapshotterLike, work: str) -> None:
    """Close after some changes, and close again: both succeed."""
    name = f"closeTwice-{random.getrandbits(63)}"
    prepare = f"{name}-prepare"
    sn.prepare(prepare, "", OPT)
    sn.commit(name, prepare, OPT)
    sn.remove(name)
    sn.close()
    sn.close()


def case_root_permission(sn: SnapshotterLike, work: str) -> None:
    """The root of a new snapshot is 0755 (with the umask cleared)."""
    preparing = prepare_mounted(sn, work, "preparing", "")
    try:
        mode = os.stat(preparing).st_mode & 0o777
        assert mode == 0o755, f"expected 0755, got 0{mode:o}"
    finally:
        unmount_all(preparing)


def case_128_layers_mount(sn: SnapshotterLike, work: str) -> None:
    """128 layers stacked, each checked against one flat directory before and after its changes, and the
    view of the whole chain at the end."""
    lowest = fstest.apply(
        fstest.create_file("/bottom", b"way at the bottom\n", 0o777),
        fstest.create_file("/overwriteme", b"FIRST!\n", 0o777),
        fstest.create_dir("/addhere", 0o755),
        fstest.create_dir("/onlyme", 0o755),
        fstest.create_file("/onlyme/bottom", b"bye!\n", 0o777),
    )
    appliers = [lowest]
    for i in range(1, 128):
        appliers.append(
            fstest.apply(
                fstest.create_file("/overwriteme", f"{i} WAS HERE!\n".encode(), 0o777),
                fstest.create_file(f"/addhere/file-{i}", b"same\n", 0o755),
                fstest.remove_all("/onlyme"),
                fstest.create_dir("/onlyme", 0o755),
                fstest.create_file(f"/onlyme/file-{i}", b"only me!\n", 0o777),
            )
        )

    flat = os.path.join(work, "flat")
    os.makedirs(flat, 0o777)
    parent = ""
    for i, applier in enumerate(appliers):
        preparing = os.path.join(work, f"prepare-layer-{i}")
        os.makedirs(preparing, 0o777)
        mounts = sn.prepare(preparing, parent, OPT)
        with mounted(mounts, preparing):
            try:
                fstest.check_directory_equal(flat, preparing)
            except AssertionError as exc:
                raise AssertionError(f"[layer {i}] preparing doesn't equal flat before apply: {exc}") from None
            applier(flat)
            applier(preparing)
            try:
                fstest.check_directory_equal(flat, preparing)
            except AssertionError as exc:
                raise AssertionError(f"[layer {i}] preparing doesn't equal flat after apply: {exc}") from None
        parent = os.path.join(work, f"committed-{i}")
        sn.commit(parent, preparing, OPT)

    view = os.path.join(work, "fullview")
    os.makedirs(view, 0o777)
    mounts = sn.view(view, parent, OPT)
    with mounted(mounts, view):
        fstest.check_directory_equal(flat, view)


#: containerd's cases under their t.Run names, in its order.
CASES: list[tuple[str, CaseFn]] = [
    ("Basic", case_basic),
    ("StatActive", case_stat_active),
    ("StatComitted", case_stat_committed),
    ("TransitivityTest", case_transitivity),
    ("PreareViewFailingtest", case_prepare_view),
    ("Update", case_update),
    ("Remove", case_remove),
    ("Walk", case_walk),
    ("LayerFileupdate", case_layer_file_update),
    ("RemoveDirectoryInLowerLayer", case_remove_directory_in_lower_layer),
    ("Chown", case_chown),
    ("DirectoryPermissionOnCommit", case_directory_permission_on_commit),
    ("RemoveIntermediateSnapshot", case_remove_intermediate_snapshot),
    ("DeletedFilesInChildSnapshot", case_deleted_files_in_child_snapshot),
    ("MoveFileFromLowerLayer", case_move_file_from_lower_layer),
    ("ViewReadonly", case_view_readonly),
    ("StatInWalk", case_stat_in_walk),
    ("CloseTwice", case_close_twice),
    ("RootPermission", case_root_permission),
    ("Rename", case_rename),
    ("128LayersMount", case_128_layers_mount),
]


# -- graftfs's own cases -------------------------------------------------------------------------------------------

#: Keys a snapshotter must take as they are: paths, separators and escapes, whitespace, dot names,
#: non-ASCII, long ones, and pairs that a careless encoding into file names would make one.
ODD_KEYS: list[str] = [
    "a",
    "a/b",
    "a/b/c",
    "/abs/path/key",
    "a//b",
    "trailing/",
    ".",
    "..",
    "../../escape",
    "a%2Fb",
    "a_b",
    "with space",
    " leading and trailing ",
    "new\nline",
    "tab\there",
    "carriage\rreturn",
    "back\\slash",
    'quote"s',
    "comma,equals==",
    "*?[glob]",
    "-leading-dash",
    "unicode-ключ-键-🙂",
    "é",  # precomposed
    "e\u0301",  # the same text decomposed: another key
    "ﬁ",  # a ligature: NFKC makes it "fi", which is another key
    "fi",
    "Key",  # case matters
    "key",
    "\u200b",  # a zero-width space alone
    "nul\x00byte",
    "del\x7f",
    "sha256:" + "0" * 64,  # the shape of a pulled layer's name; in a bare root just a key
    "x" * 1000,
    "y" * 999 + "/",
]


def case_odd_keys(sn: SnapshotterLike, work: str) -> None:
    """Every verb with :data:`ODD_KEYS` (all present at once, so no two may share a record): prepare,
    write through the mounts, commit, stat, view and read back, walk, usage, remove in order."""
    labels = {"odd": "yes", GC_ROOT: "odd-keys"}
    mnt = os.path.join(work, "mnt")
    names = {}
    for key in ODD_KEYS:
        committed, view = f"committed {key}", f"view {key}"
        names[key] = (committed, view)
        mounts = sn.prepare(key, "", labels)
        with mounted(mounts, mnt):
            fstest.create_file("key", key.encode("utf-8", "surrogatepass"), 0o644)(mnt)
        info = sn.stat(key)
        assert (info.name, info.kind, info.parent) == (key, KIND_ACTIVE, ""), f"{key!r}: {info!r}"
        sn.commit(committed, key, labels)
        raises(NotFound, partial(sn.stat, key), f"stat of {key!r} after its commit")
        info = sn.stat(committed)
        assert (info.name, info.kind, info.parent) == (committed, KIND_COMMITTED, ""), f"{committed!r}: {info!r}"
        sn.view(view, committed, labels)

    expected = {n for pair in names.values() for n in pair}
    walked = {info.name: info for info in sn.walk()}
    assert set(walked) == expected, f"walk: missing {expected - set(walked)}, extra {set(walked) - expected}"
    assert {info.name for info in sn.walk("labels.odd==yes")} == expected
    for key, (committed, view) in names.items():
        assert walked[committed].kind == KIND_COMMITTED and walked[committed].parent == ""
        assert walked[view].kind == KIND_VIEW and walked[view].parent == committed
        assert walked[view] == sn.stat(view)
        with mounted(sn.mounts(view), mnt), open(os.path.join(mnt, "key"), "rb") as f:
            assert f.read() == key.encode("utf-8", "surrogatepass"), f"view of {key!r} shows another's tree"
        assert sn.usage(committed).inodes >= 1

    for committed, view in names.values():
        raises(FailedPrecondition, partial(sn.remove, committed), f"removing {committed!r} under a view")
        sn.remove(view)
        sn.remove(committed)
        raises(NotFound, partial(sn.stat, committed), f"stat of {committed!r} after its removal")
    assert list(sn.walk()) == []

    # The keys are free again.
    for key in ODD_KEYS:
        sn.prepare(key, "", labels)
    assert {info.name for info in sn.walk()} == set(ODD_KEYS)
    for key in ODD_KEYS:
        sn.remove(key)
    assert list(sn.walk()) == []


def case_error_kinds(sn: SnapshotterLike, work: str) -> None:
    """Each refusal of each verb is of the kind containerd's metadata store gives it (what a front end maps
    to a status code), and leaves nothing changed."""
    sn.prepare("c-a", "", OPT)
    sn.commit("c", "c-a", OPT)
    sn.prepare("a", "c", OPT)
    sn.view("v", "c", OPT)
    before = sorted((info.name, info.kind, info.parent) for info in sn.walk())
    stat_c = sn.stat("c")

    checks: list[tuple[type[GraftfsError], Callable[[], object], str]] = [
        (NotFound, partial(sn.stat, "missing"), "stat of a missing key"),
        (NotFound, partial(sn.mounts, "missing"), "mounts of a missing key"),
        (NotFound, partial(sn.usage, "missing"), "usage of a missing key"),
        (NotFound, partial(sn.remove, "missing"), "remove of a missing key"),
        (NotFound, partial(sn.update, _changed(stat_c, name="missing")), "update of a missing key"),
        (NotFound, partial(sn.prepare, "new", "missing", OPT), "prepare on a missing parent"),
        (NotFound, partial(sn.view, "new", "missing", OPT), "view of a missing parent"),
        (NotFound, partial(sn.commit, "new", "missing", OPT), "commit of a missing key"),
        (InvalidArgument, partial(sn.prepare, "new", "a", OPT), "prepare on an active parent"),
        (InvalidArgument, partial(sn.view, "new", "v", OPT), "view of a view"),
        (InvalidArgument, partial(sn.prepare, "", "", OPT), "prepare of an empty key"),
        (InvalidArgument, partial(sn.commit, "", "a", OPT), "commit to an empty name"),
        (InvalidArgument, partial(sn.update, stat_c, "kind"), "update of the kind"),
        (InvalidArgument, partial(sn.update, stat_c, "name"), "update of the name"),
        (InvalidArgument, lambda: list(sn.walk("nofield==x")), "walk with an unknown field"),
        (InvalidArgument, lambda: list(sn.walk('name=="unterminated')), "walk with an open quote"),
        (AlreadyExists, partial(sn.prepare, "a", "", OPT), "prepare of a taken key"),
        (AlreadyExists, partial(sn.view, "c", "", OPT), "view with a committed name"),
        (AlreadyExists, partial(sn.commit, "v", "a", OPT), "commit to a taken name"),
        (AlreadyExists, partial(sn.commit, "a", "a", OPT), "commit to the key's own name"),
        (FailedPrecondition, partial(sn.commit, "new", "v", OPT), "commit of a view"),
        (FailedPrecondition, partial(sn.commit, "new", "c", OPT), "commit of a committed snapshot"),
        (FailedPrecondition, partial(sn.mounts, "c"), "mounts of a committed snapshot"),
        (FailedPrecondition, partial(sn.remove, "c"), "remove of a parent"),
    ]
    wrong = []
    for kind, call, what in checks:
        try:
            call()
        except GraftfsError as exc:
            if not isinstance(exc, kind):
                wrong.append(f"{what}: {type(exc).__name__} ({exc}), expected {kind.__name__}")
        else:
            wrong.append(f"{what}: succeeded, expected {kind.__name__}")
    assert not wrong, "wrong error kinds:\n" + "\n".join(wrong)
    assert sorted((info.name, info.kind, info.parent) for info in sn.walk()) == before
    assert sn.stat("c") == stat_c


GRAFTFS_CASES: list[tuple[str, CaseFn]] = [("OddKeys", case_odd_keys), ("ErrorKinds", case_error_kinds)]


# -- cases across processes -------------------------------------------------------------------------------------

DEFAULT_FACTORY = "graftfs.store.snapshots:Snapshotter"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Opener:
    """How any process opens the snapshotter under test: ``factory`` (``module:callable``) called with
    ``root``. A front end names its client's constructor here."""

    root: str
    factory: str = DEFAULT_FACTORY

    def open(self) -> SnapshotterLike:
        module, _, name = self.factory.partition(":")
        made = getattr(importlib.import_module(module), name)(self.root)
        return made  # type: ignore[no-any-return]

    def at(self, root: str) -> Opener:
        return Opener(root, self.factory)

    def child(self, *args: str) -> list[str]:
        """The argv of this module run as a program in a private mount namespace (its mounts die with it)."""
        python = [sys.executable, "-m", "tests.support.snapshot_conformance"]
        return ["unshare", "--mount", "--propagation", "private", *python, *args, self.root, self.factory]


ProcessCaseFn = Callable[[Opener, str], None]


def _child_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def _wait_for(path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout}s")
        time.sleep(0.001)


SHARED_BASE = "shared-base"
SHARED_ROUNDS = 30
RACE = "race"


def _share_child(sn: SnapshotterLike, tag: str, sync: str) -> dict[str, str]:
    """One of two processes on one root: 30 prepare/commit(/remove) rounds on keys of its own, all on one
    shared parent, then a commit to the name both want. Returns what happened to that commit."""
    Path(sync, f"{tag}.ready").touch()
    _wait_for(os.path.join(sync, "go"))
    for i in range(SHARED_ROUNDS):
        active, committed = f"{tag}/active-{i}", f"{tag}/committed-{i}"
        sn.prepare(active, SHARED_BASE, {"tag": tag})
        sn.commit(committed, active, {"tag": tag})
        if i % 3:
            sn.remove(committed)
    active = f"{tag}/{RACE}"
    mnt = os.path.join(sync, f"{tag}-mnt")
    with mounted(sn.prepare(active, SHARED_BASE, {"tag": tag}), mnt):
        fstest.create_file("who", tag.encode(), 0o644)(mnt)
    Path(sync, f"{tag}.ready2").touch()
    _wait_for(os.path.join(sync, "go2"))
    try:
        sn.commit(RACE, active, {"tag": tag})
    except AlreadyExists:
        return {"race": "lost"}
    return {"race": "won"}


def _run_children(argvs: list[list[str]], timeout: float = 120) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env=_child_env(),
        )
        for argv in argvs
    ]


class WalkWatcher:
    """Checks walks taken while the share children run, each on its own and against the walks before it.

    A walk must be a consistent picture: no name listed twice; a round's snapshot never both as its active
    key and its committed name (a commit seen half done); the race's name never with both actives; the
    shared base (which never changes) always there. And a round's snapshot goes active, committed, gone, in
    that order: a walk that shows it as neither between one that shows it active and one that shows it
    committed missed it (the commit was under way)."""

    def __init__(self, tags: list[str]) -> None:
        self.tags = tags
        self.walks = 0
        self.anomalies: list[str] = []
        self.history: dict[tuple[str, int], str] = {}  # the states seen, one letter each, repeats dropped

    def check(self, walked: Iterable[Info]) -> None:
        self.walks += 1
        names = [info.name for info in walked]
        seen = set(names)
        out = self.anomalies
        if len(names) != len(seen):
            out.append(f"listed twice: {sorted(n for n in seen if names.count(n) > 1)}")
        if SHARED_BASE not in seen:
            out.append("the shared base is missing")
        for tag in self.tags:
            for i in range(SHARED_ROUNDS):
                active, committed = f"{tag}/active-{i}" in seen, f"{tag}/committed-{i}" in seen
                if active and committed:
                    out.append(f"{tag} round {i} is both active and committed")
                state = "a" if active else "c" if committed else "-"
                past = self.history.get((tag, i), "")
                if not past.endswith(state):
                    self.history[(tag, i)] = past + state
                    if (past + state).endswith("a-c"):
                        out.append(f"{tag} round {i} was missing from a walk during its commit")
        if RACE in seen and all(f"{tag}/{RACE}" in seen for tag in self.tags):
            out.append("the race is committed and both its actives are still there")


def case_shared_between_processes(opener: Opener, work: str) -> None:
    """Two processes on one root at once: each 30 prepare/commit/remove rounds on its own keys under one
    shared parent, then both commit to one name: exactly one wins, the other gets AlreadyExists and keeps
    its active snapshot. Walk afterwards shows exactly what both did, and the winner's tree is the one."""
    sn = opener.open()
    try:
        sn.prepare(SHARED_BASE + "-a", "", OPT)
        sn.commit(SHARED_BASE, SHARED_BASE + "-a", OPT)
        sync = tempfile.mkdtemp(prefix="sync", dir=work)
        tags = ["one", "two"]
        children = _run_children([opener.child("share", tag, sync) for tag in tags])
        try:
            for tag in tags:
                _wait_for(os.path.join(sync, f"{tag}.ready"))
            Path(sync, "go").touch()
            # Meanwhile, walks from this third process: each must be a consistent picture.
            watcher = WalkWatcher(tags)
            deadline = time.monotonic() + 120
            while not all(os.path.exists(os.path.join(sync, f"{tag}.ready2")) for tag in tags):
                assert time.monotonic() < deadline, "the children did not finish their rounds in 120s"
                assert all(child.poll() is None for child in children), "a child exited early"
                watcher.check(sn.walk())
            Path(sync, "go2").touch()
            while any(child.poll() is None for child in children) and time.monotonic() < deadline:
                watcher.check(sn.walk())
            outs = [child.communicate(timeout=120) for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        bad = watcher.anomalies
        assert not bad, f"{len(bad)} inconsistencies in {watcher.walks} concurrent walks: {bad[:6]}"
        results = {}
        for tag, child, (out, err) in zip(tags, children, outs, strict=True):
            assert child.returncode == 0, f"child {tag} exited {child.returncode}: {err}"
            results[tag] = json.loads(out.strip().splitlines()[-1])["race"]
        assert sorted(results.values()) == ["lost", "won"], f"the race to commit one name: {results}"
        winner = next(tag for tag in tags if results[tag] == "won")
        loser = next(tag for tag in tags if results[tag] == "lost")

        walked = {info.name: info for info in sn.walk()}
        expected = {SHARED_BASE, RACE, f"{loser}/{RACE}"}
        expected |= {f"{tag}/committed-{i}" for tag in tags for i in range(SHARED_ROUNDS) if i % 3 == 0}
        assert set(walked) == expected, f"missing {expected - set(walked)}, extra {set(walked) - expected}"
        for name, info in walked.items():
            assert info == sn.stat(name)
            if name == SHARED_BASE:
                assert (info.kind, info.parent) == (KIND_COMMITTED, "")
            elif name == f"{loser}/{RACE}":
                assert (info.kind, info.parent) == (KIND_ACTIVE, SHARED_BASE)
                assert info.labels == {"tag": loser}
            else:
                assert (info.kind, info.parent) == (KIND_COMMITTED, SHARED_BASE), info
        assert walked[RACE].labels == {"tag": winner}
        raises(NotFound, lambda: sn.stat(f"{winner}/{RACE}"), "the winner's active snapshot after its commit")

        mnt = os.path.join(work, "check")
        sn.view("check", RACE, OPT)
        with mounted(sn.mounts("check"), mnt), open(os.path.join(mnt, "who")) as f:
            assert f.read() == winner, "the committed tree is not the winner's"
        sn.remove("check")
        raises(FailedPrecondition, lambda: sn.remove(SHARED_BASE), "removing the parent of everything")
        for name in expected - {SHARED_BASE}:
            sn.remove(name)
        sn.remove(SHARED_BASE)
        assert list(sn.walk()) == []
    finally:
        sn.close()


# The churn: slots cycling prepare -> commit -> (view) -> remove, in a child killed at random instants.

CHURN_BASE = "churn-base"
CHURN_SLOTS = 6
CHURN_KILLS = 20


def _slot(s: int) -> tuple[str, str, str]:
    """A slot's committed name, active key and view key."""
    return f"churn/{s}", f"churn/{s}/active", f"churn/{s}/view"


def _slot_data(s: int) -> bytes:
    return f"slot {s}\n".encode() * 4096  # big enough that a kill can land in the write


def _check_tree(root: str, slot: int | None) -> None:
    """A committed slot shows the base's file and its full data; the base, only its file."""
    with open(os.path.join(root, "base")) as f:
        assert f.read() == "base\n"
    if slot is not None:
        with open(os.path.join(root, "data"), "rb") as f:
            assert f.read() == _slot_data(slot), f"slot {slot}: committed with partial data"


#: What each step does to a slot's set of snapshots (``c`` committed, ``a`` active, ``v`` view): the state
#: before and after it. A step a kill interrupted leaves one or the other, nothing else.
CHURN_STEPS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "prepare": (frozenset(), frozenset("a")),
    "commit": (frozenset("a"), frozenset("c")),
    "view": (frozenset("c"), frozenset("cv")),
    "remove-view": (frozenset("cv"), frozenset("c")),
    "remove": (frozenset("c"), frozenset()),
}


class Journal:
    """An append-only log of the churn's verbs, ``<slot> <step>`` before each and ``<slot> <step> done``
    after: one ``write`` each, on an O_APPEND file, so a SIGKILL loses no line already written."""

    def __init__(self, path: str) -> None:
        self.path = path

    def note(self, line: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def allowed(self) -> dict[int, set[frozenset[str]]]:
        """The states each slot may be in now: the last step's result, or either side of it when the step
        was under way at the kill."""
        last: dict[int, str] = {}
        try:
            with open(self.path) as f:
                for line in f:
                    slot, _, rest = line.rstrip("\n").partition(" ")
                    last[int(slot)] = rest
        except FileNotFoundError:
            pass
        out: dict[int, set[frozenset[str]]] = {}
        for s in range(CHURN_SLOTS):
            step, _, done = last.get(s, "remove done").partition(" ")
            before, after = CHURN_STEPS[step]
            out[s] = {after} if done else {before, after}
        return out


def churn_step(sn: SnapshotterLike, s: int, mnt: str, rng: random.Random, journal: Journal | None = None) -> str:
    """Take slot ``s`` one step on from whatever state it is in; returns the step taken."""
    committed, active, view = _slot(s)
    labels = {"slot": str(s)}

    def verb(step: str, call: Callable[[], object]) -> str:
        if journal is not None:
            journal.note(f"{s} {step}")
        call()
        if journal is not None:
            journal.note(f"{s} {step} done")
        return step

    if _exists(sn, view):
        return verb("remove-view", partial(sn.remove, view))
    if _exists(sn, committed):
        if rng.random() < 0.4:
            verb("view", partial(sn.view, view, committed, labels))
            with mounted(sn.mounts(view), mnt):
                _check_tree(mnt, s)
            return "view"
        return verb("remove", partial(sn.remove, committed))
    if _exists(sn, active):
        with mounted(sn.mounts(active), mnt):
            fstest.create_file("data", _slot_data(s), 0o644)(mnt)
        return verb("commit", partial(sn.commit, committed, active, labels))
    return verb("prepare", partial(sn.prepare, active, CHURN_BASE, labels))


def _churn_child(sn: SnapshotterLike, work: str, seed: int) -> None:
    rng = random.Random(seed)
    mnt = tempfile.mkdtemp(prefix="churn-mnt", dir=work)
    journal = Journal(os.path.join(work, "journal"))
    print("ready", flush=True)
    while True:
        churn_step(sn, rng.randrange(CHURN_SLOTS), mnt, rng, journal)


def check_churned(sn: SnapshotterLike, work: str) -> None:
    """The store a killed churn left: every key fully there (stat and walk agree) or absent (NotFound); a
    slot never both active and committed, and in the state its journal's last step left it in (either side
    of a step the kill interrupted: a killed commit loses nothing); every snapshot listed can be mounted and
    shows its tree."""
    infos = list(sn.walk())
    names = [info.name for info in infos]
    assert len(names) == len(set(names)), f"a name listed twice: {sorted(names)}"
    walked = {info.name: info for info in infos}
    known = {CHURN_BASE} | {key for s in range(CHURN_SLOTS) for key in _slot(s)}
    assert set(walked) <= known, f"unknown snapshots: {set(walked) - known}"
    for key in known:
        try:
            info = sn.stat(key)
        except NotFound:
            assert key not in walked, f"{key!r} is listed but stat says NotFound"
            continue
        assert walked.get(key) == info, f"{key!r}: stat {info!r}, walk {walked.get(key)!r}"
    assert CHURN_BASE in walked
    allowed = Journal(os.path.join(work, "journal")).allowed()
    for s in range(CHURN_SLOTS):
        committed, active, view = _slot(s)
        assert not (committed in walked and active in walked), f"slot {s} is both committed and active"
        state = frozenset(c for c, key in (("c", committed), ("a", active), ("v", view)) if key in walked)
        shown = sorted("".join(sorted(a)) or "-" for a in allowed[s])
        assert state in allowed[s], f"slot {s} is {''.join(sorted(state)) or '-'}; the journal allows {shown}"
        if committed in walked:
            assert (walked[committed].kind, walked[committed].parent) == (KIND_COMMITTED, CHURN_BASE)
        if active in walked:
            assert (walked[active].kind, walked[active].parent) == (KIND_ACTIVE, CHURN_BASE)
        if view in walked:
            assert (walked[view].kind, walked[view].parent) == (KIND_VIEW, committed)

    mnt = os.path.join(work, "check-mnt")
    slot_of = {_slot(s)[0]: s for s in range(CHURN_SLOTS)}
    for name, info in walked.items():
        if info.kind == KIND_COMMITTED:
            check = f"check/{name}"
            with mounted(sn.view(check, name), mnt):
                _check_tree(mnt, slot_of.get(name))
            sn.remove(check)
        else:
            with mounted(sn.mounts(name), mnt):
                _check_tree(mnt, None)  # an active one may hold a partial write: it is not committed
        sn.usage(name)


def _relative_tree(root: str) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def case_kill_during_commit_and_remove(opener: Opener, work: str) -> None:
    """A child churning prepare/commit/view/remove is killed (SIGKILL) at random instants, 20 times: after
    each, a new snapshotter finds every key whole or absent (:func:`check_churned`). Then ``cleanup`` keeps
    all that is listed, the same keys cycle again, and with everything removed and cleaned up the root
    holds no more than a fresh one."""
    rng = random.Random()
    seed = rng.getrandbits(32)
    sn = opener.open()
    try:
        mounts = sn.prepare(CHURN_BASE + "-a", "", OPT)
        with mounted(mounts, os.path.join(work, "base-mnt")) as mnt:
            fstest.create_file("base", b"base\n", 0o644)(mnt)
        sn.commit(CHURN_BASE, CHURN_BASE + "-a", OPT)
    finally:
        sn.close()

    for round_ in range(CHURN_KILLS):
        (child,) = _run_children([opener.child("churn", work, str(seed + round_))])
        try:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 60)
            line = child.stdout.readline() if ready else ""
            if line.strip() != "ready":
                child.kill()
                _, err = child.communicate(timeout=60)
                raise AssertionError(f"churn child {round_} did not start: {line!r} {err}")
            time.sleep(rng.uniform(0.0, 0.3))
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
            _, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == -signal.SIGKILL, f"churn child {round_} exited {child.returncode}: {err}"
        sn = opener.open()
        try:
            try:
                check_churned(sn, work)
            except AssertionError as exc:
                raise AssertionError(f"after kill {round_ + 1} (seed {seed}): {exc}") from None
        finally:
            sn.close()

    sn = opener.open()
    try:
        sn.cleanup()
        check_churned(sn, work)  # cleanup removed nothing that is listed
        mnt = os.path.join(work, "final-mnt")
        journal = Journal(os.path.join(work, "journal"))
        for s in range(CHURN_SLOTS):
            taken: set[str] = set()
            for _ in range(50):
                taken.add(churn_step(sn, s, mnt, rng, journal))
                if {"prepare", "commit", "remove"} <= taken and not any(_exists(sn, key) for key in _slot(s)):
                    break
            assert {"prepare", "commit", "remove"} <= taken, f"slot {s} did not cycle: {taken}"
        check_churned(sn, work)
        for s in range(CHURN_SLOTS):
            for key in _slot(s):
                assert not _exists(sn, key)
        sn.remove(CHURN_BASE)
        assert list(sn.walk()) == []

        # What the kills left went in the one cleanup above, and removal removes all: the root holds no
        # more than a fresh one does after the same kinds of verbs. A second cleanup finds nothing.
        fresh_root = tempfile.mkdtemp(prefix="fresh", dir=work)
        fresh = opener.at(fresh_root).open()
        try:
            fresh.prepare("x", "", OPT)
            fresh.commit("y", "x", OPT)
            fresh.remove("y")
            fresh.cleanup()
        finally:
            fresh.close()
        fresh_tree = _relative_tree(fresh_root)
        left = _relative_tree(opener.root) - fresh_tree
        assert not left, f"left behind after cleanup and removal of everything: {sorted(left)}"
        before = _relative_tree(opener.root)
        sn.cleanup()
        assert _relative_tree(opener.root) == before, "a second cleanup still found something"
    finally:
        sn.close()


PROCESS_CASES: list[tuple[str, ProcessCaseFn]] = [
    ("SharedBetweenProcesses", case_shared_between_processes),
    ("KillDuringCommitAndRemove", case_kill_during_commit_and_remove),
]


def main(argv: list[str]) -> int:
    """The children of :data:`PROCESS_CASES`: ``share TAG SYNC ROOT FACTORY`` prints one JSON line;
    ``churn WORK SEED ROOT FACTORY`` prints ``ready`` and churns until killed."""
    what, *args = argv
    if what == "share":
        tag, sync, root, factory = args
        sn = Opener(root, factory).open()
        try:
            with cleared_umask():
                print(json.dumps(_share_child(sn, tag, sync)), flush=True)
        finally:
            sn.close()
        return 0
    if what == "churn":
        work, seed, root, factory = args
        with cleared_umask():
            _churn_child(Opener(root, factory).open(), work, int(seed))
        return 0
    print(f"unknown child {what!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except GraftfsError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise
