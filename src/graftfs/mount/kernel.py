"""graftfs's one module for the kernel and external tools: every raw system call (mount, umount2, unshare,
the new mount API's calls), the one parser of ``/proc/self/mountinfo`` (:func:`mountinfo`), and the one runner
of external tools (:func:`run`: mkfs.xfs, mount, xfs_quota, btrfs, fuse-overlayfs, newuidmap, newgidmap),
which names the binary configured for each in :data:`tools` and describes a failure in one line. Nothing else
in graftfs calls ``_ctypes`` or imports ``subprocess`` (but the CLI's detached clean-on-create, which runs
graftfs). Making a user namespace, which takes a fork and these calls, is :func:`graftfs.userns.fork_userns`.

The API's callers import this module on every command, so it stays cheap: ``subprocess`` and ``struct`` are
imported by the functions that need them, and the system calls are made through ``_ctypes``, the C half of
ctypes, loaded only by the commands that make them. Not ``import ctypes``: its ``__init__`` builds dozens of
classes and loads ``struct``, which costs about 2 ms, a sixth of the interpreter's start-up, on every create
and delete. The function class :func:`_function` defines is all that these calls need.
"""

from __future__ import annotations

import os
import time

from ..errors import KernelError, errno_reason, os_reason

TYPE_CHECKING = False  # keep typing off the start-up path
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from .spec import Mount, OverlaySpec

_calls: dict[str, Any] = {}  # name -> the C function, made at its first call


def _libc(name: str) -> Any:
    """The C library's ``name`` (this process's, already loaded), its errno kept for :func:`_errno_now`.

    Called the plain ctypes way, without ``argtypes``: an int is passed as a C int, which the calling
    convention widens to the register the C prototype reads (every flag and fd passed here is below 2**31),
    bytes as a char pointer, None as NULL, and the result is a C int. Declaring argument types would take
    ctypes's type classes (c_int, c_ulong...), and making those costs ~0.15 ms, more than a delete's one call.
    """
    fn = _calls.get(name)
    if fn is None:
        fn = _calls[name] = _function(name, None)
    return fn


def _function(name: str, restype: Any) -> Any:
    import _ctypes

    class Function(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        if restype is not None:
            _restype_ = restype

    # CFuncPtr only reads ``_handle`` from the library object: no need for ctypes.CDLL.
    class Libc:
        _handle = _ctypes.dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]  # None: this process (with libc)

    return Function((name, Libc))  # type: ignore[arg-type]


def _errno_now() -> int:
    """The errno of the last :func:`_libc` or :func:`_syscall` call of this thread."""
    import _ctypes

    return _ctypes.get_errno()


def load() -> None:
    """Load the C calls a forked child makes now rather than at its first call (a child importing _ctypes
    could wait forever on an import lock another thread held at the fork)."""
    _libc("unshare")
    _errno_now()


def _fs(path: str) -> bytes:
    return os.fsencode(path)


def mount_overlay(spec: OverlaySpec) -> None:
    """Mount ``spec`` at its target. Relative layer paths are resolved from ``spec.cwd``, so the mount is
    made with the process's working directory there (and restored after)."""
    spec.check()
    if spec.driver == "fuse-overlayfs":
        _mount_fuse(spec)
        return
    if spec.idmap is not None:
        _bind_lowers(spec)
        try:
            _mount_kernel_overlay(spec)
        except BaseException:
            for point in mounts_under(spec.cwd):
                unmount(point)
            raise
        return
    _mount_kernel_overlay(spec)


def _bind_lowers(spec: OverlaySpec) -> None:
    assert spec.idmap is not None
    os.makedirs(spec.cwd, mode=0o700, exist_ok=True)
    from ..userns import fork_userns

    ns = fork_userns(*spec.idmap)
    try:
        for index, source in enumerate(spec.sources):
            if not source:
                continue  # a lower named by its path (already shifted on disk): not bound
            target = os.path.join(spec.cwd, str(index))
            os.makedirs(target, exist_ok=True)
            bind_idmapped(source, target, ns)
    except BaseException:
        for point in mounts_under(spec.cwd):
            unmount(point)
        raise
    finally:
        os.close(ns)


def _mount_kernel_overlay(spec: OverlaySpec) -> None:
    _overlay_from(spec.cwd, spec.target, spec.options())


def _overlay_from(cwd: str, target: str, options: str) -> None:
    """Mount an overlay whose layer paths are relative to ``cwd``: made with the working directory there
    (and restored after), which is how layer paths stay short enough for the kernel's one page."""
    target = os.path.abspath(target)  # before the chdir
    old = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(cwd)
        rc = _libc("mount")(b"overlay", _fs(target), b"overlay", 0, options.encode())
        err = _errno_now()
    finally:
        os.fchdir(old)
        os.close(old)
    if rc != 0:
        raise KernelError(f"mounting overlay at {target}: {errno_reason(err)}", err)


MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Perform ``mounts`` (a snapshot's, as data) at ``target``, in order, as containerd's ``mount.All``
    does: binds (``ro`` made read-only by a remount, as the kernel wants) and overlays. An overlay whose
    absolute layer paths would not fit in the kernel's page is mounted from their longest common directory
    with relative paths, containerd's trick (:func:`graftfs.mount.spec.compact_options`). The working directory
    is the process's: do not mount from two threads at once."""
    from ..errors import InvalidArgument
    from .spec import compact_options

    for m in mounts:
        if m.type == "bind":
            rec = MS_REC if "rbind" in m.options else 0
            _call_mount(_fs(m.source), target, None, MS_BIND | rec, None)
            if "ro" in m.options:
                try:
                    # The source's own flags (nosuid, nodev ...) kept: in a user namespace they are locked,
                    # and a remount that would drop them is refused (EPERM).
                    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | rec | _locked_flags(m.source)
                    _call_mount(_fs(m.source), target, None, flags, None)
                except BaseException:
                    unmount(target)
                    raise
        elif m.type == "overlay":
            cwd, options = compact_options(m.options)
            _overlay_from(cwd, target, options)
        else:
            raise InvalidArgument(f"mount type `{m.type}` is not supported (bind and overlay are)")


#: statvfs's f_flag bits and the mount flags they are (MS_RELATIME is not ST_RELATIME's value).
_STATVFS_TO_MS = ((2, 2), (4, 4), (8, 8), (1024, 1024), (2048, 2048), (4096, 1 << 21))


def _locked_flags(path: str) -> int:
    f_flag = os.statvfs(path).f_flag
    return sum(ms for st, ms in _STATVFS_TO_MS if f_flag & st)


def mount_tmpfs(target: str, size: int) -> None:
    """A private tmpfs at ``target`` (mode 0700), holding at most ``size`` bytes when ``size`` > 0."""
    _call_mount(b"tmpfs", target, b"tmpfs", 0, ("mode=0700" + (f",size={size}" if size > 0 else "")).encode())


def resize_tmpfs(target: str, size: int) -> None:
    """Let the tmpfs at ``target`` hold at most ``size`` bytes (a remount; not below what it holds)."""
    _call_mount(b"tmpfs", target, b"tmpfs", MS_REMOUNT, f"size={size}".encode())


def move(source: str, target: str) -> None:
    """Move the mount at ``source`` to ``target`` (MS_MOVE): a mounted directory cannot be renamed."""
    _call_mount(_fs(source), target, None, MS_MOVE, None)


def _call_mount(source: bytes, target: str, fstype: bytes | None, flags: int, data: bytes | None) -> None:
    if _libc("mount")(source, _fs(target), fstype, flags, data) != 0:
        err = _errno_now()
        raise KernelError(f"mounting {source.decode(errors='replace')} at {target}: {errno_reason(err)}", err)


def _mount_fuse(spec: OverlaySpec) -> None:
    """fuse-overlayfs is a program (it serves the mount from user space), so this one mount is a command."""
    try:
        run("fuse-overlayfs", "-o", spec.options(absolute=True), spec.target, timeout=60)
    except KernelError as exc:
        raise KernelError(f"mounting fuse-overlayfs at {spec.target}: {exc.message}", exc.errno) from None


def unmount(target: str, retries: int = 50, interval: float = 0.1) -> None:
    """Unmount ``target``; not mounted is success. EBUSY is retried (bounded), as GrootFS does, because a
    container's last processes can take a moment to let go after the runtime kills them."""
    umount2 = _libc("umount2")
    for attempt in range(retries):
        if umount2(_fs(target), 0) == 0:
            return
        err = _errno_now()
        import errno  # here, not at the top: an import, even of a built-in module, costs a delete ~0.1 ms

        if err in (errno.EINVAL, errno.ENOENT):  # not a mount point / already gone
            return
        if err != errno.EBUSY or attempt == retries - 1:
            raise KernelError(f"unmounting {target}: {errno_reason(err)}", err)
        time.sleep(interval)


def is_mountpoint(path: str) -> bool:
    """Whether another filesystem (a tmpfs, the backing XFS, a btrfs subvolume) is mounted at ``path``: a
    device check, two ``lstat`` calls. A bind mount of the same filesystem does not show this way; what must
    see those reads the mount table (:func:`mount_entries`)."""
    try:
        st = os.lstat(path)
        parent = os.lstat(os.path.join(path, ".."))
    except OSError:
        return False
    return st.st_dev != parent.st_dev or st.st_ino == parent.st_ino


# -- user namespaces ------------------------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000


def unshare(flags: int) -> None:
    if _libc("unshare")(flags) != 0:  # os.unshare is Python 3.12+
        err = _errno_now()
        raise KernelError(f"unshare: {errno_reason(err)}", err)


# -- idmapped mounts (Linux 5.12+; on overlay layers 5.19+) --------------------------------------------------

# The new mount API's calls have the same numbers on every architecture (they came after the tables merged).
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_AT_FDCWD = -100
_OPEN_TREE_CLONE, _AT_EMPTY_PATH = 0x1, 0x1000
_MOUNT_ATTR_IDMAP = 0x00100000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4


def _syscall(name: str, number: int, *args: int | bytes) -> int:
    # syscall(2) is variadic and returns a long: every argument is passed as a c_long, so each fills a whole
    # register, and the result is read as one.
    syscall, c_long = _long_syscall()
    rc = int(syscall(c_long(number), *(a if isinstance(a, bytes) else c_long(a) for a in args)))
    if rc < 0:
        err = _errno_now()
        raise KernelError(f"{name}: {errno_reason(err)}", err)
    return rc


def _long_syscall() -> tuple[Any, Any]:
    found = _calls.get("syscall")
    if found is None:
        import _ctypes

        class c_long(_ctypes._SimpleCData):  # type: ignore[type-arg]
            _type_ = "l"

        found = _calls["syscall"] = (_function("syscall", c_long), c_long)
    return found


def bind_idmapped(source: str, target: str, ns_fd: int) -> None:
    """Bind ``source`` at ``target`` with the ID mapping of the user namespace ``ns_fd``: files owned by k on
    disk appear owned by the namespace's host ID for k."""
    tree = _syscall("open_tree", _SYS_OPEN_TREE, _AT_FDCWD, _fs(source), _OPEN_TREE_CLONE | os.O_CLOEXEC)
    try:
        import struct

        attr = struct.pack("=QQQQ", _MOUNT_ATTR_IDMAP, 0, 0, ns_fd)  # struct mount_attr
        _syscall("mount_setattr", _SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, attr, len(attr))
        _syscall("move_mount", _SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, _fs(target), _MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(tree)


# -- mountinfo ---------------------------------------------------------------------------------------------------


class MountEntry:
    """A line of ``/proc/<pid>/mountinfo``: ``id parent major:minor root point options [optional...] - fstype
    source super-options``. Paths (``root``, ``point``, ``source``) are unescaped; options are as the kernel
    wrote them (an option's own commas stay escaped, so they split on ``,``)."""

    __slots__ = ("fstype", "options", "point", "root", "source", "super_options")

    def __init__(self, root: str, point: str, options: str, fstype: str, source: str, super_options: str) -> None:
        self.root = root
        self.point = point
        self.options = options
        self.fstype = fstype
        self.source = source
        self.super_options = super_options

    def __repr__(self) -> str:
        return f"MountEntry({self.point!r}, {self.fstype!r}, source={self.source!r}, root={self.root!r})"


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Every mount in ``text`` (mountinfo's format), in its order (a mount over another comes after it);
    lines that are not in that format are skipped."""
    found = []
    # Not splitlines(): it also splits on characters such as \x1c and \x85, which the kernel does not escape.
    for line in text.split("\n"):
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
            fstype, source, super_options = fields[dash + 1 : dash + 4]
        except ValueError:
            continue
        found.append(
            MountEntry(_unescape(fields[3]), _unescape(fields[4]), fields[5], fstype, _unescape(source), super_options)
        )
    return found


def mountinfo(path: str = "/proc/self/mountinfo", naming: str = "") -> list[MountEntry]:
    """This process's mounts (:func:`parse_mountinfo`); with ``naming``, only those whose line has that path
    in it (a superset of the mounts at or below it). Only those lines are parsed: a host running a thousand
    containers has a thousand overlay mounts, a line of a kilobyte or more each, and every delete asks."""
    with open(path, "rb") as f:  # not text mode: a path's \r is not a line break (and no decoder to set up)
        data = f.read()
    if naming:
        wanted = os.fsencode(_escape(naming))
        data = b"\n".join(line for line in data.split(b"\n") if wanted in line)
    return parse_mountinfo(os.fsdecode(data))  # paths as os.fsdecode makes them


def mount_entries(path: str, resolved: bool = False) -> list[tuple[str, str]]:
    """``(mount point, filesystem type)`` of every mount at or below ``path``, deepest first; a point
    mounted over twice is listed twice. ``resolved``: ``path`` is a ``realpath`` already (the table names
    mount points so), which spares resolving it again, an ``lstat`` for each of its components."""
    top = (path if resolved else os.path.realpath(path)).rstrip("/")
    prefix = top + "/"
    found = [(m.point, m.fstype) for m in mountinfo(naming=top) if m.point == top or m.point.startswith(prefix)]
    return sorted(found, key=lambda entry: len(entry[0]), reverse=True)


def mounts_under(path: str, resolved: bool = False) -> list[str]:
    """Mount points at or below ``path``, deepest first (``resolved`` as for :func:`mount_entries`)."""
    return [point for point, _ in mount_entries(path, resolved)]


def mount_of(path: str) -> tuple[str, str, str]:
    """``(mount point, filesystem type, superblock options)`` of the mount holding ``path`` (the top one
    where several are stacked); ``("", "unknown", "")`` without ``/proc``."""
    real = os.path.realpath(path)
    best = ("", "unknown", "")
    try:
        mounts = mountinfo()
    except FileNotFoundError:
        return best
    for m in mounts:
        if (real == m.point or real.startswith(m.point.rstrip("/") + "/")) and len(m.point) >= len(best[0]):
            best = (m.point, m.fstype, m.super_options)
    return best


def _escape(path: str) -> str:
    """A path as mountinfo writes it (:func:`_unescape`'s inverse)."""
    if not any(c in path for c in " \t\n\\"):
        return path
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in mountinfo paths as octal escapes (``\\040``)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


# -- external tools ----------------------------------------------------------------------------------------------

#: The binary to run for each tool :func:`run` and :func:`which` are asked for, by the tool's usual name
#: (``newuidmap``, ``newgidmap``, ``mkfs.xfs``, ``mount``, ``xfs_quota``, ``btrfs``, ``fuse-overlayfs``); a tool
#: not named here is looked up in ``PATH`` under that name. A front end sets it once, from its flags (the
#: CLI's ``--newuidmap-bin`` and ``--newgidmap-bin``, and their config keys).
tools: dict[str, str] = {}

#: Arguments longer than this are shortened in a failure's description, which is one line.
_ARG_SHOWN = 120


def which(tool: str) -> str | None:
    """The path of the binary :func:`run` would run for ``tool``, or ``None`` if there is no such program.
    (Not ``shutil.which``: importing shutil costs milliseconds.)"""
    binary = tools.get(tool, tool)
    if "/" in binary:
        candidates = [binary]
    else:
        candidates = [os.path.join(d or ".", binary) for d in os.environ.get("PATH", os.defpath).split(os.pathsep)]
    for candidate in candidates:
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def run(tool: str, *args: str, timeout: float = 120) -> str:
    """Run ``tool`` (the binary :data:`tools` names for it) with ``args``, and return its standard output.
    Its failure is a :class:`KernelError` of one line: the command, then ``exit status N`` (or ``killed by
    signal N``, ``timed out after Ns``) and the last line it wrote to stderr (stdout if none), or the reason
    it could not be started (``<binary>: no such file or directory``)."""
    import subprocess

    binary = tools.get(tool, tool)
    try:
        result = subprocess.run(
            [binary, *args], capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise KernelError(f"{_describe(binary, args)}: timed out after {timeout:g}s") from None
    except OSError as exc:
        raise KernelError(f"{binary}: {os_reason(exc)}", exc.errno or 0) from None
    if result.returncode != 0:
        raise KernelError(_failure(binary, args, result.returncode, result.stderr, result.stdout))
    return result.stdout


def _failure(binary: str, args: tuple[str, ...], status: int, stderr: str, stdout: str) -> str:
    """:func:`run`'s description of a failed command: what ran, how it ended, and the last line it wrote."""
    ended = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    last = _last_line(stderr) or _last_line(stdout)
    return f"{_describe(binary, args)}: {ended}" + (f": {last}" if last else "")


def _last_line(output: str) -> str:
    lines = [line for line in output.split("\n") if line.strip()]
    return " ".join(lines[-1].split()) if lines else ""


def _describe(binary: str, args: tuple[str, ...]) -> str:
    """The command as a shell would take it, each argument cut to :data:`_ARG_SHOWN` characters."""
    return " ".join(_quote(a if len(a) <= _ARG_SHOWN else a[: _ARG_SHOWN - 3] + "...") for a in (binary, *args))


def _quote(arg: str) -> str:
    if arg and not any(c in arg for c in " \t\n'\"\\$`;&|<>()*?[]{}~#!"):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"
