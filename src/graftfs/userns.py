"""Rootless operation: an ordinary user's graftfs runs as root of a user namespace of its own.

Layers hold files of many owners, and only a namespace that maps those IDs lets an unprivileged process
create them. So before touching its store, a non-root graftfs unshares a user (and mount) namespace and
has it mapped:

* with the store's mappings (``init-store --uid-mapping 0:1000:1 --uid-mapping 1:100000:65536``), written
  by ``newuidmap``/``newgidmap`` (package ``uidmap``; ``--newuidmap-bin``/``--newgidmap-bin`` name others,
  as Garden's own copies), which check them against ``/etc/subuid`` and ``/etc/subgid``;
* without mappings, the caller's subordinate IDs from those files if it has some (``0:<uid>:1`` plus
  ``1:<first subuid>:<count>``), else just ``0:<uid>:1``, which the process may write itself (every file
  then belongs to that one user).

Inside, graftfs is root: it unpacks with the namespace's IDs (the kernel writes the mapped host IDs), and
the runtime, run with the same mapping, sees the files as the image has them. An overlay mounted in that
namespace would disappear with it, so rootless creates hand the mount to the runtime (``--without-mount``).

:func:`fork_userns` is the one way graftfs makes a namespace whose maps need a process outside it: for
rootless operation here, and for the namespaces that idmapped mounts take their mapping from.
"""

from __future__ import annotations

import os

from .errors import FailedPrecondition, KernelError, os_reason
from .idmap import Mapping, Namespace
from .mount import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def default_mappings(kind: str) -> list[Mapping]:
    """``0:<own id>:1``, plus ``1:<start>:<count>`` from ``/etc/sub{u,g}id`` when the caller has a range."""
    own = os.getuid() if kind == "uid" else os.getgid()
    mappings = [Mapping(0, own, 1)]
    sub = _subordinate(kind)
    if sub is not None:
        mappings.append(Mapping(1, sub[0], sub[1]))
    return mappings


def _subordinate(kind: str) -> tuple[int, int] | None:
    import pwd

    uid = os.getuid()
    names = {str(uid)}
    try:
        names.add(pwd.getpwuid(uid).pw_name)
    except KeyError:
        pass
    try:
        with open(f"/etc/sub{kind}", encoding="utf-8") as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] in names and fields[1].isdigit() and fields[2].isdigit():
                    return int(fields[1]), int(fields[2])
    except FileNotFoundError:
        pass
    return None


def enter(
    uid_mappings: Sequence[Mapping],
    gid_mappings: Sequence[Mapping],
    newuidmap: str | None = None,
    newgidmap: str | None = None,
) -> None:
    """Unshare a user and mount namespace, map it, and become its root. When the mappings need more than the
    caller's own IDs, the helpers ``newuidmap`` and ``newgidmap`` map it (:func:`fork_userns`): the
    binaries :data:`kernel.tools` names, which ``newuidmap``/``newgidmap`` given here set (the CLI's
    ``--newuidmap-bin``/``--newgidmap-bin``)."""
    for tool, binary in (("newuidmap", newuidmap), ("newgidmap", newgidmap)):
        if binary:
            kernel.tools[tool] = binary
    flags = kernel.CLONE_NEWUSER | kernel.CLONE_NEWNS
    if _own_only(uid_mappings, os.getuid()) and _own_only(gid_mappings, os.getgid()):
        uid, gid = os.getuid(), os.getgid()
        kernel.unshare(flags)
        try:
            # A process may map its own IDs without help once setgroups is denied.
            write_maps("self", f"0 {uid} 1", f"0 {gid} 1", deny_setgroups=True)
        except KernelError as exc:
            raise FailedPrecondition(f"rootless: {exc.message}") from None
    else:
        uid_map, gid_map = Namespace(uid_mappings, gid_mappings).kernel_maps()
        try:
            fork_userns(uid_map, gid_map, enter=True, helpers=True, flags=flags)
        except KernelError as exc:
            if exc.errno:  # the unshare itself
                raise
            raise FailedPrecondition(
                f"rootless: cannot map the store's IDs in a user namespace: {exc.message} "
                "(the ranges must be yours in /etc/subuid and /etc/subgid; package uidmap provides the helpers)"
            ) from None
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _own_only(mappings: Sequence[Mapping], own: int) -> bool:
    return len(mappings) == 1 and mappings[0].host_id == own and mappings[0].size == 1


# -- making a user namespace -------------------------------------------------------------------------------


def fork_userns(
    uid_map: str, gid_map: str, *, enter: bool = False, helpers: bool = False, flags: int = kernel.CLONE_NEWUSER
) -> int:
    """A new user namespace (``flags`` has CLONE_NEWUSER, and may add CLONE_NEWNS) with these maps (the
    contents of ``/proc/<pid>/uid_map`` and ``gid_map``: lines such as ``1 100000 65536``), which only a process
    outside it can write: one process unshares, a forked one maps it from outside, and they wait for each
    other on two pipes.

    * ``enter=False``: the forked child unshares and waits while this process maps its namespace and opens
      it; returns that fd (the namespace lives as long as the fd; the child exits). For idmapped mounts.
    * ``enter=True``: this process unshares, and the forked child maps it; returns -1, this process now in
      the namespace (root there once it calls setresuid/setresgid). For rootless operation.

    The maps are written directly, which needs privilege over the namespace's parent, or with ``helpers``
    by the setuid tools ``newuidmap`` and ``newgidmap`` (:data:`kernel.tools`), which check them against
    ``/etc/subuid`` and ``/etc/subgid``. With ``enter``, a failed unshare raises its :class:`KernelError`
    with the errno, and a failed mapping one with errno 0 (the forked child reports it), so that a caller
    can tell the two apart; without, the forked child's failed unshare reaches this process as its text."""
    # The C calls are loaded before the fork: a child importing them could wait forever on an import lock that
    # another thread of this process held.
    kernel.load()
    unshared_r, unshared_w = os.pipe()  # the unsharer to the mapper: "x", or why unshare failed
    try:
        mapped_r, mapped_w = os.pipe()  # the mapper to the unsharer: closed once mapped, after why not if not
    except BaseException:
        os.close(unshared_r)
        os.close(unshared_w)
        raise
    parent = os.getpid()
    try:
        child = os.fork()
    except BaseException:
        for fd in (unshared_r, unshared_w, mapped_r, mapped_w):
            os.close(fd)
        raise
    if child == 0:  # pragma: no cover - the forked child: it reports through the pipes
        try:
            if enter:
                os.close(unshared_w)
                os.close(mapped_r)
                try:
                    _map_from_outside(parent, unshared_r, uid_map, gid_map, helpers)
                except BaseException as exc:
                    why = exc.message if isinstance(exc, KernelError) else f"mapping the namespace: {os_reason(exc)}"
                    os.write(mapped_w, why.encode(errors="replace") or b"?")
            else:
                os.close(unshared_r)
                os.close(mapped_w)
                _unshare_and_wait(flags, unshared_w, mapped_r)
        finally:
            os._exit(0)
    if enter:
        os.close(unshared_r)
        os.close(mapped_w)
        try:
            _unshare_and_wait(flags, unshared_w, mapped_r)
        finally:
            os.waitpid(child, 0)
        return -1
    os.close(unshared_w)
    os.close(mapped_r)
    try:
        _map_from_outside(child, unshared_r, uid_map, gid_map, helpers)
        return os.open(f"/proc/{child}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(mapped_w)  # mapped (or given up): the child may exit
        os.waitpid(child, 0)


def _unshare_and_wait(flags: int, unshared_w: int, mapped_r: int) -> None:
    """:func:`fork_userns`'s unsharing side: unshare, say so, and wait until the other side has mapped."""
    report = b""
    try:
        try:
            kernel.unshare(flags)
        except KernelError as exc:
            os.write(unshared_w, exc.message.encode())
            raise
        os.write(unshared_w, b"x")
        os.close(unshared_w)
        unshared_w = -1
        while chunk := os.read(mapped_r, 4096):
            report += chunk
    finally:
        if unshared_w >= 0:
            os.close(unshared_w)
        os.close(mapped_r)
    if report:
        raise KernelError(report.decode(errors="replace"))


def _map_from_outside(pid: int, unshared_r: int, uid_map: str, gid_map: str, helpers: bool) -> None:
    """:func:`fork_userns`'s mapping side: once process ``pid`` has unshared, write its maps."""
    try:
        said = os.read(unshared_r, 4096)
    finally:
        os.close(unshared_r)
    if said != b"x":
        raise KernelError(said.decode(errors="replace") or "making a user namespace: the other process exited")
    if not helpers:
        write_maps(str(pid), uid_map, gid_map)
        return
    failures = []
    for tool, lines in (("newuidmap", uid_map), ("newgidmap", gid_map)):
        try:
            kernel.run(tool, str(pid), *lines.split())
        except KernelError as exc:
            failures.append(exc.message)
    if failures:
        raise KernelError("; ".join(failures))


def write_maps(pid: str, uid_map: str, gid_map: str, deny_setgroups: bool = False) -> None:
    """Write ``/proc/<pid>/uid_map`` and ``gid_map`` (``pid`` may be ``self``), after denying setgroups if
    asked: a process may map its own IDs in its own namespace only so."""
    files = [("setgroups", "deny")] if deny_setgroups else []
    for name, text in (*files, ("uid_map", uid_map), ("gid_map", gid_map)):
        path = f"/proc/{pid}/{name}"
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write(text)
        except OSError as exc:
            raise KernelError(f"writing {path}: {os_reason(exc)}", exc.errno or 0) from None
