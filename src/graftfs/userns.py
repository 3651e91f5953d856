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

from .errors import FailedPrecondition, os_reason
from .idmap import Mapping
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
    newuidmap: str = "newuidmap",
    newgidmap: str = "newgidmap",
) -> None:
    """Unshare a user and mount namespace, map it, and become its root. ``newuidmap`` and ``newgidmap`` are
    the helpers run (looked up in ``PATH`` unless they are paths) when the mappings need more than the
    caller's own IDs."""
    if _own_only(uid_mappings, os.getuid()) and _own_only(gid_mappings, os.getgid()):
        uid, gid = os.getuid(), os.getgid()
        kernel.unshare(kernel.CLONE_NEWUSER | kernel.CLONE_NEWNS)
        # A process may map its own IDs without help once setgroups is denied.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    else:
        _enter_with_helpers(uid_mappings, gid_mappings, newuidmap, newgidmap)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _own_only(mappings: Sequence[Mapping], own: int) -> bool:
    return len(mappings) == 1 and mappings[0].host_id == own and mappings[0].size == 1


def _enter_with_helpers(
    uid_mappings: Sequence[Mapping], gid_mappings: Sequence[Mapping], newuidmap: str, newgidmap: str
) -> None:
    """newuidmap must write the maps from outside the namespace: a forked child waits for this process to
    unshare, runs both helpers on it, and reports their errors through a pipe."""
    import subprocess

    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child, reported through the pipe
        status = 1
        try:
            os.close(ready_w)
            os.close(done_r)
            os.read(ready_r, 1)
            errors = []
            for tool, mappings in ((newuidmap, uid_mappings), (newgidmap, gid_mappings)):
                args = [str(n) for m in mappings for n in (m.namespace_id, m.host_id, m.size)]
                try:
                    result = subprocess.run([tool, str(parent), *args], capture_output=True, text=True)
                except OSError as exc:
                    # A helper that is not there (a wrong --newuidmap-bin): say which one.
                    errors.append(f"{tool}: {os_reason(exc)}")
                    continue
                if result.returncode != 0:
                    detail = " ".join((result.stderr or result.stdout).split())
                    errors.append(f"{tool} {' '.join(args)}: {detail or f'exit status {result.returncode}'}")
            os.write(done_w, "; ".join(errors).encode())
            status = 0
        except BaseException as exc:
            os.write(done_w, f"mapping the user namespace: {os_reason(exc)}".encode())
        finally:
            os._exit(status)
    os.close(ready_r)
    os.close(done_w)
    try:
        kernel.unshare(kernel.CLONE_NEWUSER | kernel.CLONE_NEWNS)
    finally:
        os.write(ready_w, b"x")
        os.close(ready_w)
    report = b""
    while chunk := os.read(done_r, 4096):
        report += chunk
    os.close(done_r)
    os.waitpid(child, 0)
    if report:
        raise FailedPrecondition(
            f"rootless: cannot map the store's IDs in a user namespace: {report.decode(errors='replace')} "
            "(the ranges must be yours in /etc/subuid and /etc/subgid; package uidmap provides the helpers)"
        )


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(text)
    except OSError as exc:
        raise FailedPrecondition(f"rootless: writing {path}: {os_reason(exc)}") from None
