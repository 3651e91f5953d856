"""Small crash-safe file primitives: every metadata write is temp file + fsync + rename."""

from __future__ import annotations

import os
import time


def temp_name(base: str, tag: str) -> str:
    # Time first so leftovers sort by age; randomness so two processes never pick the same name.
    return f"{base}-{tag}-{time.time_ns()}-{os.urandom(4).hex()}"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` so that readers (and a crash) see either the old or the new file.
    ``sync`` also makes it durable across a power cut (two fsyncs): the store's identity records
    (``namespace.json``, ``features.json``) are; per-image and per-layer records are not (see where they are
    written for why)."""
    tmp = temp_name(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.chmod(tmp, mode)  # not subject to the umask, unlike the open() mode
    os.rename(tmp, path)
    if sync:
        fsync_dir(os.path.dirname(path))


def unlink(path: str) -> None:
    """Remove a file; missing is fine (someone else removed it first)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def read_text(path: str, default: str = "") -> str:
    """The file's UTF-8 text (:func:`text`), or ``default`` if there is no file."""
    try:
        with open(path, "rb") as f:
            return text(f.read())
    except FileNotFoundError:
        return default


def text(data: bytes) -> str:
    """UTF-8 ``data`` as a text-mode read returns it (``\r\n`` and ``\r`` as ``\n``). Files are read as
    bytes: a text-mode file object sets up a Python-level decoder per open, 20-40 us each."""
    decoded = data.decode()
    return decoded.replace("\r\n", "\n").replace("\r", "\n") if "\r" in decoded else decoded


def read_int(path: str) -> int:
    try:
        return int(read_text(path, "0").strip() or 0)
    except ValueError:
        return 0


_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class CrossesMount(OSError):
    """A tree to remove holds another mount: its files belong to whoever mounted it."""


def remove_tree(path: str, mounts: set[str] | None = None) -> None:
    """Remove a file or a directory tree; missing is fine. Never follows symlinks out of the tree, and never
    descends into another mount (as ``rm --one-file-system``, and bind mounts of the same filesystem too):
    it stops with :class:`CrossesMount` naming the mount point, which it leaves in place with the
    directories above it. Mounts are known from ``/proc/self/mountinfo``, read once, and a directory on
    another device than the top is refused even if it is not listed there (mounted meanwhile, or a mount in
    a namespace whose table we do not see). ``mounts``: the mount points under ``path`` when the caller
    has just read the table itself (an image's delete, which unmounted them all: none).

    Not ``shutil.rmtree``: importing shutil costs ~2 ms (it loads bz2 and lzma), a sixth of the interpreter's
    start-up, on every delete. This walks with directory fds as shutil does (a symlink put where a directory
    was is unlinked, never entered), and with a stack instead of recursion, so no tree is too deep.
    """
    top = _open_dir(None, path)
    if top is None:
        return
    real = os.path.realpath(path) if mounts is None or mounts else path  # only ever compared with mount points
    if mounts is None:
        from ..mount.kernel import mounts_under

        mounts = set(mounts_under(real, resolved=True))
    if real in mounts:
        os.close(top)
        raise _crosses(path)
    device = os.fstat(top).st_dev
    # Each entry: a directory's fd, its name in the one below it on the stack, the subdirectories left.
    stack: list[tuple[int, str, list[str]]] = [(top, path, [])]
    try:
        stack[0] = (top, path, _clear(top))
        while stack:
            fd, name, subdirs = stack[-1]
            if subdirs:
                child_name = subdirs.pop()
                child = _open_dir(fd, child_name)
                if child is not None:
                    stack.append((child, child_name, []))
                    if os.fstat(child).st_dev != device or (
                        mounts and os.path.join(real, *(entry[1] for entry in stack[1:])) in mounts
                    ):
                        raise _crosses(os.path.join(*(e[1] for e in stack)))
                    stack[-1] = (child, child_name, _clear(child))
                continue
            stack.pop()
            os.close(fd)
            try:
                os.rmdir(name, dir_fd=stack[-1][0] if stack else None)
            except FileNotFoundError:
                pass
    except BaseException:
        for fd, _, _ in stack:
            os.close(fd)
        raise


def _crosses(path: str) -> CrossesMount:
    import errno

    return CrossesMount(errno.EBUSY, "a mount point", path)


def _open_dir(dir_fd: int | None, name: str) -> int | None:
    """Open a directory to empty it; ``None`` if it is gone, or was not a directory (then it is unlinked)."""
    try:
        return os.open(name, _O_DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        import errno  # here, not at the top: an import, even of a built-in module, costs a delete ~0.1 ms

        if not isinstance(exc, NotADirectoryError) and exc.errno != errno.ELOOP:
            raise
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    return None


def _clear(fd: int) -> list[str]:
    """Unlink everything in the directory but its subdirectories, which are returned."""
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                try:
                    os.unlink(entry.name, dir_fd=fd)
                except FileNotFoundError:
                    pass
    return subdirs


def disk_usage(path: str) -> int:
    """Bytes allocated under ``path`` (st_blocks, hard links counted once), like ``du -s -B1``."""
    return usage(path)[0]


def usage(path: str) -> tuple[int, int]:
    """``(bytes allocated, inodes)`` under ``path``, hard links counted once (containerd's fs.DiskUsage)."""
    total = inodes = 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += st.st_blocks * 512
                inodes += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total, inodes
