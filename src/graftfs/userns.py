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
"""

from __future__ import annotations

import os

from .errors import FailedPrecondition, KernelError
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
    caller's own IDs, the helpers ``newuidmap`` and ``newgidmap`` map it (:func:`kernel.fork_userns`): the
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
            kernel.write_maps("self", f"0 {uid} 1", f"0 {gid} 1", deny_setgroups=True)
        except KernelError as exc:
            raise FailedPrecondition(f"rootless: {exc.message}") from None
    else:
        uid_map, gid_map = Namespace(uid_mappings, gid_mappings).kernel_maps()
        try:
            kernel.fork_userns(uid_map, gid_map, enter=True, helpers=True, flags=flags)
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
