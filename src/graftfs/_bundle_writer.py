"""Writing the bundle graftfs's CLI loads its modules from (see graftfs/__init__.py, "start-up"): a module of
its own, since a run only writes it when it imported a module the bundle did not hold."""

from __future__ import annotations

import _imp
import marshal
import os
import sys

from . import _BUNDLE_VERSION, _STANDARD, _Bundle, _bundle_path, _magic, _stdlib


def write(finder: _Bundle) -> None:
    """:func:`graftfs.refresh_bundle`'s work, for the finder that missed a module."""
    index: dict[str, tuple[str, int, int, bool, int, int]] = {}
    parts: list[bytes] = []
    offset = 0

    def add(name: str, source: str, st: os.stat_result, package: bool, code: bytes | None) -> None:
        nonlocal offset
        if code is None:  # an extension module: its file's name only
            index[name] = (source, st.st_mtime_ns, st.st_size, False, 0, -1)
            return
        index[name] = (source, st.st_mtime_ns, st.st_size, package, offset, len(code))
        parts.append(code)
        offset += len(code)

    for name, held in finder.index.items():  # what it held, still good, whether this process used it or not
        try:
            st = os.stat(held[0])
            if (held[1], held[2]) == (st.st_mtime_ns, st.st_size) and name not in finder.damaged:
                add(name, held[0], st, held[3], finder.code(name) if held[5] >= 0 else None)
        except (OSError, EOFError):
            pass
    changed = len(index) != len(finder.index)
    extension = sys.modules["_frozen_importlib_external"].ExtensionFileLoader
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if name in index or spec is None or not spec.origin:
            continue
        standard = name in _STANDARD and spec.origin.startswith(_stdlib())
        if standard and isinstance(spec.loader, extension):
            try:
                add(name, spec.origin, os.stat(spec.origin), False, None)
                changed = True
            except OSError:
                pass
            continue
        if not spec.cached or not (standard or name.startswith("graftfs.")):
            continue
        try:
            st = os.stat(spec.origin)
        except OSError:
            continue
        try:
            with open(spec.cached, "rb") as f:
                pyc = f.read()
        except OSError:
            continue
        # The .pyc the import system just used: its magic, plain (timestamp) flags, the source's mtime and size.
        if (
            pyc[:4] == _magic()
            and int.from_bytes(pyc[4:8], "little") == 0
            and int.from_bytes(pyc[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(pyc[12:16], "little") == st.st_size & 0xFFFFFFFF
        ):
            try:
                code = marshal.loads(pyc[16:])
            except (ValueError, EOFError, TypeError):
                continue
            # Named by the source's path, as the import system names what it loads from a .pyc (compileall
            # may have written it with a relative one): what tracebacks show.
            _imp._fix_co_filename(code, spec.origin)  # type: ignore[attr-defined]
            add(name, spec.origin, st, spec.submodule_search_locations is not None, marshal.dumps(code))
            changed = True
    if not changed:
        return  # what it missed cannot be added (no .pyc, or one not matching its source)
    head = marshal.dumps((_BUNDLE_VERSION, index))
    path = _bundle_path()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as out:
            out.write(_magic() + len(head).to_bytes(4, "little") + head + b"".join(parts))
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
