"""graftfs: container images to overlay root filesystems, without a daemon.

The public API is :class:`Store` (``Store(path).create(url, image_id)`` does what ``graftfs create`` does;
``Store.thin_publish`` what ``graftfs thin publish`` does), :func:`thin_convert` (``graftfs thin convert``),
:class:`Snapshotter` (containerd's snapshot verbs over the same store, their :class:`Mount` lists performed
by :func:`mount_all`) and the error classes. Names are resolved lazily so that ``import graftfs`` (and the
CLI's start-up) stays cheap.
"""

# No `from __future__ import annotations` here: it is an import of the __future__ module, from the standard
# library's directory, and it would come before use_bundle(), which serves it (see _STANDARD). Annotations
# that name what is only imported for type checkers are quoted instead.
TYPE_CHECKING = False  # importing typing would cost the CLI milliseconds on every run

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "CreateOptions",
    "DiskUsage",
    "FailedPrecondition",
    "GraftfsError",
    "Image",
    "Internal",
    "InvalidArgument",
    "InvalidImage",
    "KernelError",
    "LockTimeout",
    "Mount",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SnapshotInfo",
    "SnapshotUsage",
    "Snapshotter",
    "Store",
    "ThinConverted",
    "ThinImage",
    "ThinLayer",
    "ThinPublished",
    "Unavailable",
    "UnsafeArchive",
    "Unsupported",
    "VerificationError",
    "__version__",
    "mount_all",
    "thin_convert",
]

if TYPE_CHECKING:
    from typing import Any

    from .api import CreateOptions, DiskUsage, Image, Store
    from .errors import (
        AlreadyExists,
        FailedPrecondition,
        GraftfsError,
        Internal,
        InvalidArgument,
        InvalidImage,
        KernelError,
        LockTimeout,
        NotFound,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        UnsafeArchive,
        Unsupported,
        VerificationError,
    )
    from .mount.kernel import mount_all
    from .mount.spec import Mount
    from .repository.convert import Converted as ThinConverted
    from .repository.convert import thin_convert
    from .repository.publish import Published as ThinPublished
    from .repository.thin import ThinImage, ThinLayer
    from .store.snapshots import Info as SnapshotInfo
    from .store.snapshots import Snapshotter
    from .store.snapshots import Usage as SnapshotUsage


# -- start-up: graftfs's modules from one file ----------------------------------------------------------------
#
# Garden runs one graftfs process per create and per delete. Of the ~10 ms a warm create spends importing its
# ~25 modules, a third goes to the import system finding, stat-ing, opening and reading each one's .pyc. The
# CLI keeps their compiled code in one file next to their .pyc files (written like a .pyc, by a process that
# imported them: see refresh_bundle()), and a finder serves them from it, one read each. An entry is used
# only while its source file's mtime and size are those it was compiled from; anything else (a changed
# source, a module not in the file, no file, a damaged one) is imported as usual. Only graftfs's own
# modules are served, and the few of the standard library's that every create or delete imports
# (_STANDARD), and only to the CLI (bin/graftfs). Before a create or a delete runs, the CLI loads what it
# will import (_HOT_DELETE, _HOT_CREATE) from the bundle in one go (_Bundle.preload), which spares the import
# system's own work for each module: another ~2 ms of a create.

_BUNDLE_VERSION = 2  # 2: entries for standard modules, an extension's without code

#: Standard modules the CLI's creates and deletes import, as they are found: `__future__` (every module's
#: first line imports it) and the C extensions graftfs calls directly. The import system finds each by
#: listing and searching every directory on sys.path in turn, ~0.1 ms apiece (0.3 ms for the first); the
#: bundle names the file it found (an extension's entry has no code: a length of -1), checked as graftfs's
#: sources are. Only names no package on PyPI reuses, and only files in this interpreter's library.
_STANDARD = frozenset({"__future__", "_ctypes", "_json", "_sha256", "fcntl"})


class _Bundle:
    """A meta path finder and loader over ``__pycache__/bundle.<cache tag>``: the magic number of .pyc
    files, the length of the index, the index (``{name: (source path, mtime_ns, size, is_package, offset after
    the index, length)}``, marshalled; an extension module's length is -1), then the marshalled code objects."""

    def __init__(self, path: str) -> None:
        import marshal

        # Entries name sources in this package only: a copy of an installed tree (cp -a, a relocated venv)
        # must not run the original's code.
        self.root = _os.path.dirname(_os.path.dirname(path)) + "/"
        self.missed = False  # a graftfs module was imported some other way: refresh() has something to add
        self.damaged: set[str] = set()  # entries that did not load
        self.index: dict[str, tuple[str, int, int, bool, int, int]] = {}
        self.fd = -1  # open for the process's life: each module is read when imported, not the whole file
        self.base = 0  # where the code objects start
        try:
            self.fd = _os.open(path, _os.O_RDONLY | _os.O_CLOEXEC)
            start = _os.pread(self.fd, 8, 0)
            head = int.from_bytes(start[4:8], "little")
            if start[:4] == _magic():
                version, index = marshal.loads(_os.pread(self.fd, head, 8))
                if version == _BUNDLE_VERSION and isinstance(index, dict):
                    self.index, self.base = index, 8 + head
        except (OSError, ValueError, EOFError, TypeError):
            pass

    def code(self, name: str) -> bytes:
        _, _, _, _, offset, length = self.index[name]
        data = _os.pread(self.fd, length, self.base + offset)
        if len(data) != length:
            raise EOFError(f"{name}: the bundle is cut short")
        return data

    def find_spec(self, name: str, path: object = None, target: object = None) -> "Any":
        if not (name.startswith("graftfs.") or name in _STANDARD):
            return None
        spec = self._spec(name)
        if spec is None and name not in _sys.builtin_module_names:  # (Debian's fcntl and _sha256 are built in)
            self.missed = True
        return spec

    def _spec(self, name: str) -> "Any":
        """The spec of ``name``'s entry, if it holds one for the file there is now."""
        entry = self.index.get(name)
        if entry is None:
            return None
        root = self.root if name.startswith("graftfs.") else _stdlib()
        try:
            source, _, _, _, _, _ = entry
            st = _os.stat(source) if source.startswith(root) else None
        except (OSError, TypeError, ValueError, AttributeError):
            st = None
        if st is None or st.st_mtime_ns != entry[1] or st.st_size != entry[2]:
            return None
        if entry[5] < 0:
            external = _sys.modules["_frozen_importlib_external"]
            return external.spec_from_file_location(name, source, loader=external.ExtensionFileLoader(name, source))
        import marshal

        try:
            code = marshal.loads(self.code(name))
        except (OSError, ValueError, EOFError, TypeError):
            code = None
        if not isinstance(code, _CodeType):
            self.damaged.add(name)  # a damaged file (a crash while it was written, say): the usual import
            return None
        spec = _ModuleSpec(name, self, origin=source, is_package=entry[3])
        spec.has_location = True  # __file__ is the source, for tracebacks
        spec.loader_state = code
        if entry[3]:
            spec.submodule_search_locations = [_os.path.dirname(source)]
        return spec

    def preload(self, names: tuple[str, ...]) -> None:
        """Import ``names`` (graftfs's modules, as :func:`_hot` lists them) as importlib would: the module made
        from its spec, entered in sys.modules, its code run, then named in its package. Without importlib's
        work around that for each (the module's lock, the finders asked in turn, the bookkeeping), ~70 us a
        module, 2 ms of a create. A module whose package is not loaded yet is skipped, as is one the bundle
        does not hold for its source as it is now: each is imported when something imports it, as usual. One
        whose code fails is taken out again and ends this, to fail where it is imported. Called before the
        command runs, on the only thread, so that no other import sees a module before its code has run."""
        bootstrap = _sys.modules["_frozen_importlib"]
        for name in names:
            package, _, child = name.rpartition(".")
            if name in _sys.modules or package not in _sys.modules:
                continue
            spec = self._spec(name)
            if spec is None:
                continue
            module = bootstrap.module_from_spec(spec)
            _sys.modules[name] = module
            try:
                self.exec_module(module)
            except BaseException as exc:
                del _sys.modules[name]
                if isinstance(exc, Exception):
                    return
                raise
            setattr(_sys.modules[package], child, module)

    def create_module(self, spec: "Any") -> None:
        return None  # the default module

    def exec_module(self, module: "Any") -> None:
        exec(module.__spec__.loader_state, module.__dict__)


def _magic() -> bytes:
    return _sys.modules["_frozen_importlib_external"].MAGIC_NUMBER  # type: ignore[no-any-return]


#: What Garden's per-container calls import, for _Bundle.preload: a delete's, then what a create adds; each
#: after its package and after what it imports.
#: A hint: a module missing here is imported when needed, one listed but not needed costs its load.
#: tests/integration/test_cli.py checks the lists against what the commands import.
_HOT_DELETE = (
    "graftfs.cli",
    "graftfs.errors",
    "graftfs.cli.settings",
    "graftfs.cli.main",
    "graftfs.store",
    "graftfs.store.fsutil",
    "graftfs.cli.miniyaml",  # only with --config
    "graftfs.log",
    "graftfs.mount",
    "graftfs.mount.kernel",
    "graftfs.store.layout",
    "graftfs.store.locks",
    "graftfs.store.images",
    "graftfs.api",
)
_HOT_CREATE = (
    "graftfs.quota",
    "graftfs.reference",
    "graftfs.jsonc",
    "graftfs.layers",
    "graftfs.sources",
    "graftfs.sources.base",
    "graftfs.create",
    "graftfs.store.features",
    "graftfs.sources.oci_layout",  # an OCI layout's, and a registry's (it names media types from there)
    "graftfs.idmap",
    "graftfs.mount.spec",
    "graftfs.store.volumes",
)


def _hot(argv: list[str]) -> tuple[str, ...]:
    """The modules to preload for ``argv``: a create's or a delete's (the first such word: a flag's value
    that happens to be one only costs a wrong guess), less the config reader if there is no config file."""
    command = next((arg for arg in argv if arg in ("create", "delete")), "")
    names = (_HOT_DELETE + _HOT_CREATE if command == "create" else _HOT_DELETE) if command else ()
    if any(arg.lstrip("-").partition("=")[0] == "config" for arg in argv if arg.startswith("-")):
        return names
    return tuple(name for name in names if name != "graftfs.cli.miniyaml")


def _stdlib() -> str:
    return _os.path.dirname(_os.__file__) + "/"  # lib-dynload is below it, in Debian's Python as in others


def _bundle_path() -> str:
    # As .pyc files are named: one per interpreter and optimisation level (-O strips asserts).
    level = f".opt-{_sys.flags.optimize}" if _sys.flags.optimize else ""
    return _os.path.join(_os.path.dirname(__file__), "__pycache__", f"bundle.{_sys.implementation.cache_tag}{level}")


def use_bundle() -> _Bundle:
    """Serve graftfs's modules from the bundle, if there is one (the CLI calls this first); returns its finder."""
    finder = next((f for f in _sys.meta_path if isinstance(f, _Bundle)), None)
    if finder is None:
        finder = _Bundle(_bundle_path())
        _sys.meta_path.insert(0, finder)
    return finder


def refresh_bundle() -> None:
    """Rewrite the bundle if this process imported a graftfs module it did not hold: each from its .pyc,
    when that matches its source (as the import system checks it), with the fresh entries it held. Not
    when bytecode is not written (``PYTHONDONTWRITEBYTECODE``) or the directory is read-only."""
    finder = next((f for f in _sys.meta_path if isinstance(f, _Bundle)), None)
    if finder is None or not finder.missed or _sys.dont_write_bytecode:
        return
    from ._bundle_writer import write

    write(finder)


def _command() -> None:
    """The graftfs command (bin/graftfs, whose own code is compiled on every run, never cached: so it is here)."""
    import gc

    # The cyclic GC collects every 700 allocations; start-up (imports: functions, classes, code objects) makes
    # tens of thousands of objects that live until exit, so those collections cost ~1.5 ms a run and free
    # nothing. Refcounting still frees everything else at once; cycles wait a little longer.
    gc.set_threshold(20_000, 50, 50)
    use_bundle().preload(_hot(_sys.argv[1:]))
    from .cli.main import run

    code = run(_sys.argv[1:])
    try:
        refresh_bundle()
    except Exception:  # a cache: it must never fail the command that just ran
        pass
    # Exit without tearing the interpreter down (freeing every module, class and function one by one: 3-6 ms,
    # a tenth of a warm create). Nothing is left to do then: every command has closed its files and flushed
    # its log lines, and stdout and stderr are flushed here. The ordinary exit is taken when threads outlived
    # the command (a server's, past its shutdown's grace), which it waits for, and when a flush fails (a
    # closed pipe), which it reports as Python always does.
    threading = _sys.modules.get("threading")
    if threading is not None and any(
        t is not threading.main_thread() and t.is_alive() and not t.daemon for t in threading.enumerate()
    ):
        _sys.exit(code)
    try:
        _sys.stdout.flush()
        _sys.stderr.flush()
    except BaseException:
        _sys.exit(code)
    _os._exit(code)


import os as _os  # noqa: E402
import sys as _sys  # noqa: E402

_ModuleSpec: "Any" = type(_sys.__spec__)  # importlib.machinery's, without importing importlib
_CodeType = type(_bundle_path.__code__)  # types.CodeType, without importing types


def __getattr__(name: str) -> "Any":
    if name in ("Store", "CreateOptions", "Image", "DiskUsage"):
        from . import api

        return getattr(api, name)
    if name in ("Snapshotter", "SnapshotInfo", "SnapshotUsage"):
        from .store import snapshots

        return getattr(snapshots, {"SnapshotInfo": "Info", "SnapshotUsage": "Usage"}.get(name, name))
    if name == "Mount":
        from .mount.spec import Mount

        return Mount
    if name == "mount_all":
        from .mount.kernel import mount_all

        return mount_all
    if name in ("thin_convert", "ThinConverted"):
        from .repository import convert

        return getattr(convert, {"ThinConverted": "Converted"}.get(name, name))
    if name == "ThinPublished":
        from .repository.publish import Published

        return Published
    if name in ("ThinImage", "ThinLayer"):
        from .repository import thin

        return getattr(thin, name)
    if name in __all__:
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'graftfs' has no attribute {name!r}")
