"""Run a command inside a root filesystem with the real ``runc``.

Tests use this to prove that a rootfs produced by graftfs actually boots a
container (what Garden does with it), not just that files exist on disk.

Each call writes a throw-away OCI bundle (a hand-made ``config.json``, no
``runc spec``, so the config does not drift with the runc version) and a
private runc state directory in a fresh temporary directory, runs the
container in the foreground under a unique id and always tears everything
down again: ``runc delete --force`` and removal of the temporary directory,
even on failure or timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

# (container_id, host_id, size), the field order of the OCI spec's
# linux.uidMappings / gidMappings entries.
IdMapping = tuple[int, int, int]

DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"]

# Docker's default capability set: enough for root in the container to
# chown, override file permissions, setuid and mknod, which tests of
# ownership and permissions inside a rootfs rely on; nothing host-wide.
DEFAULT_CAPABILITIES = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
]


def runc_binary() -> str | None:
    """Path of runc, or None when it is not installed (tests then skip)."""
    return shutil.which("runc") or ("/usr/sbin/runc" if os.access("/usr/sbin/runc", os.X_OK) else None)


@contextmanager
def traversable_tmpdir(prefix: str = "graftfs-userns-") -> Iterator[Path]:
    """A fresh 0755 directory directly under the system temp dir, removed on exit.

    For user-namespaced containers: the mapped root must be able to search
    every directory above the rootfs, which rules out pytest's ``tmp_path``
    (its base, ``/tmp/pytest-of-root``, is 0700; runc then fails with
    "mount ...: permission denied" while preparing the rootfs).
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _mounts(userns: bool) -> list[dict[str, object]]:
    mounts: list[dict[str, object]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            # gid=5 (tty) is only valid if gid 5 is mapped; with a user
            # namespace it may not be, and the mount would fail with EINVAL.
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
            + ([] if userns else ["gid=5"]),
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
    ]
    if userns:
        # A fresh sysfs may only be mounted by the owner of the network
        # namespace; we keep the host's netns, which a new user namespace
        # does not own, so bind the host's /sys read-only instead.
        mounts.append(
            {
                "destination": "/sys",
                "type": "none",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
            }
        )
    else:
        mounts.append(
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            }
        )
    return mounts


def _mapping_json(mappings: Sequence[IdMapping]) -> list[dict[str, int]]:
    return [{"containerID": c, "hostID": h, "size": s} for c, h, s in mappings]


def make_config(
    rootfs: Path,
    args: Sequence[str],
    *,
    env: Sequence[str] | None = None,
    uid_mappings: Sequence[IdMapping] | None = None,
    gid_mappings: Sequence[IdMapping] | None = None,
    readonly: bool = False,
    user: tuple[int, int] = (0, 0),
    cwd: str = "/",
    hostname: str = "graftfs-test",
    extra_mounts: Sequence[Mapping[str, object]] = (),
    allow_devices: Sequence[tuple[int, int]] = (),
    extra_capabilities: Sequence[str] = (),
    drop_capabilities: Sequence[str] = (),
) -> dict[str, object]:
    """The OCI runtime ``config.json`` :func:`run_in_rootfs` uses. ``allow_devices`` are character devices
    (major, minor) the container's device cgroup allows; bind the node in with ``extra_mounts`` (in a user
    namespace runc can only bind the host's own node, with the host's permissions). ``drop_capabilities``
    are taken out of Docker's default set (and of ``extra_capabilities``), bounding set included."""
    userns = uid_mappings is not None or gid_mappings is not None
    caps = [cap for cap in [*DEFAULT_CAPABILITIES, *extra_capabilities] if cap not in drop_capabilities]
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    linux: dict[str, object] = {"namespaces": namespaces}
    if allow_devices:
        linux["resources"] = {
            "devices": [
                {"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
                for major, minor in allow_devices
            ]
        }
    if userns:
        namespaces.append({"type": "user"})
        # A user namespace needs both maps; mirror the one that was given.
        uids = uid_mappings if uid_mappings is not None else gid_mappings
        gids = gid_mappings if gid_mappings is not None else uid_mappings
        assert uids is not None and gids is not None
        linux["uidMappings"] = _mapping_json(uids)
        linux["gidMappings"] = _mapping_json(gids)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": user[0], "gid": user[1]},
            "args": list(args),
            "env": list(DEFAULT_ENV if env is None else env),
            "cwd": cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                # Ambient/inheritable stay empty, as in Docker: a non-root
                # process user gets no capabilities.
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            # Setuid binaries inside the image should behave as in Garden,
            # so privilege gain on exec is left allowed.
            "noNewPrivileges": False,
        },
        # runc resolves a relative root.path against the bundle directory,
        # which is a different temporary directory: always absolute.
        "root": {"path": str(rootfs.absolute()), "readonly": readonly},
        "hostname": hostname,
        # A mount of "/" (an image plugin's rootfs overlay) comes first, as Garden prepends the plugin's
        # mounts: after it, /proc and the rest land on the new root instead of being hidden by it.
        "mounts": [dict(m) for m in extra_mounts if m.get("destination") == "/"]
        + _mounts(userns)
        + [dict(m) for m in extra_mounts if m.get("destination") != "/"],
        "linux": linux,
    }


def run_in_rootfs(
    rootfs: Path,
    args: Sequence[str],
    *,
    env: Sequence[str] | None = None,
    uid_mappings: Sequence[IdMapping] | None = None,
    gid_mappings: Sequence[IdMapping] | None = None,
    timeout: float = 60,
    readonly: bool = False,
    check: bool = True,
    user: tuple[int, int] = (0, 0),
    cwd: str = "/",
    extra_mounts: Sequence[Mapping[str, object]] = (),
    tmp_dir: Path | None = None,
    as_user: tuple[int, int] | None = None,
    allow_devices: Sequence[tuple[int, int]] = (),
    extra_capabilities: Sequence[str] = (),
    drop_capabilities: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in a container whose root filesystem is ``rootfs``.

    ``as_user`` (uid, gid) runs runc itself as that ordinary user: rootless runc, which needs
    ``uid_mappings``/``gid_mappings`` the user may set up (its own ID, its subordinate ranges).

    Returns the finished process with stdout/stderr as text. With
    ``check`` (default) a non-zero exit raises ``AssertionError`` carrying
    the exit code, stdout and stderr. ``uid_mappings``/``gid_mappings``
    (``(container_id, host_id, size)``) add a user namespace; then every
    directory above ``rootfs`` must be searchable by the mapped root (the
    kernel grants no override on inodes owned by unmapped ids), so put such
    a rootfs under a 0755 directory, not below pytest's 0700 base temp.
    On timeout the container is killed and ``subprocess.TimeoutExpired`` is
    raised.
    """
    runc = runc_binary()
    if runc is None:
        raise RuntimeError("runc is not installed")
    if not rootfs.is_dir():
        raise FileNotFoundError(f"rootfs {rootfs} is not a directory")
    config = make_config(
        rootfs,
        args,
        env=env,
        uid_mappings=uid_mappings,
        gid_mappings=gid_mappings,
        readonly=readonly,
        user=user,
        cwd=cwd,
        extra_mounts=extra_mounts,
        allow_devices=allow_devices,
        extra_capabilities=extra_capabilities,
        drop_capabilities=drop_capabilities,
    )
    # Unique per call: runc ids must be unique within a state dir, and the
    # id also names the container's cgroups (/sys/fs/cgroup/<ctl>/<id>),
    # which *are* shared with every other run on the host.
    container_id = f"graftfs-test-{uuid.uuid4().hex[:16]}"
    work = Path(tempfile.mkdtemp(prefix="graftfs-runc-", dir=tmp_dir))
    state = work / "state"
    bundle = work / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(config, indent=2))
    prefix: list[str] = []
    if as_user is not None:
        prefix = ["setpriv", f"--reuid={as_user[0]}", f"--regid={as_user[1]}", "--clear-groups", "--"]
        for path in (work, bundle, bundle / "config.json"):
            os.chown(path, *as_user)
    cmd = [*prefix, runc, "--root", str(state), "run", "--bundle", str(bundle), container_id]
    try:
        # Foreground `runc run` (not detached): with terminal=false the
        # container's stdio are our pipes, and runc exits with the
        # container's exit status (128+N if killed by signal N).
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="surrogateescape",
            # Own session: a stray signal for the test runner's terminal
            # does not reach runc, and runc cannot grab our tty.
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Kill the container first (killing only runc would orphan the
            # container's init), then reap runc and collect what it printed.
            _delete(runc, state, container_id, prefix)
            proc.kill()
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr) from None
    finally:
        # A foreground run deletes its container on exit; this covers
        # failures half-way through create/start and the timeout path.
        _delete(runc, state, container_id, prefix)
        shutil.rmtree(work, ignore_errors=True)
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"runc {list(args)!r} in {rootfs} exited {proc.returncode}\n"
            f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        )
    return result


def _delete(runc: str, state: Path, container_id: str, prefix: Sequence[str] = ()) -> None:
    if not state.exists():
        return
    # --force kills a still running container before deleting it; failure
    # ("container does not exist") is the normal case after a clean exit.
    subprocess.run(
        [*prefix, runc, "--root", str(state), "delete", "--force", container_id],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
