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
    """Replace ``path`` with ``data`` so that readers (and a crash) see either the old or the new file."""
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


def read_text(path: str, default: str = "") -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return default


def read_int(path: str) -> int:
    try:
        return int(read_text(path, "0").strip() or 0)
    except ValueError:
        return 0


def remove_tree(path: str) -> None:
    """Remove a file or a directory tree; missing is fine. Never follows symlinks out of the tree."""
    import shutil

    try:
        shutil.rmtree(path)
    except NotADirectoryError:
        os.unlink(path)
    except FileNotFoundError:
        pass


def disk_usage(path: str) -> int:
    """Bytes allocated under ``path`` (st_blocks, hard links counted once), like ``du -s -B1``."""
    total = 0
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
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total
