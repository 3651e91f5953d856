"""One error hierarchy for all of graftfs.

Every failure the core can report is one of these classes (modelled on containerd's errdefs: a closed set of
kinds, wrapped with context on the way up, translated only at the edges). The Garden CLI prints ``str(err)``
as one line on stdout and exits with ``exit_code``; the Python API raises them as they are.

Context is added GrootFS-style, ``outer: inner``, with :meth:`GraftfsError.wrap`, so an operator sees the
whole chain (``pulling the image: streaming blob `sha256:..`: layerID digest mismatch: ...``) while code
can still branch on the class.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds at start-up; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Self


def os_reason(exc: BaseException) -> str:
    """An OS error's reason as Go prints it (``no such file or directory``): GrootFS's texts, which operators'
    scripts match, carry Go's lower-case errno strings; Python's ``strerror`` is capitalised."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        return text[:1].lower() + text[1:]
    return str(exc)


def errno_reason(code: int) -> str:
    """:func:`os_reason` for a bare errno, as a system call made without ``os`` reports it."""
    import os  # loaded at interpreter start-up: this costs nothing

    return os_reason(OSError(code, os.strerror(code)))


class GraftfsError(Exception):
    """Base class. ``str()`` is a single human-readable line."""

    exit_code = 1
    #: A complete message meant for the operator as it is (GrootFS's "humanised" texts, such as
    #: ``This registry is insecure. ...``): :meth:`wrap` adds no context to it.
    final = False

    def __init__(self, message: str, *, final: bool = False) -> None:
        # Errors go to one line of stdout (Garden captures it whole): never let a newline split them.
        super().__init__(" ".join(message.splitlines()))
        if final:
            self.final = True

    @property
    def message(self) -> str:
        return str(self.args[0])

    def wrap(self, context: str) -> Self:
        """Return a copy of this error, of the same class, with ``context: `` in front (unless it is final)."""
        if self.final:
            return self
        new = type(self).__new__(type(self))
        GraftfsError.__init__(new, f"{context}: {self.message}")
        new.__dict__.update(self.__dict__)
        new.__cause__ = self
        return new


class InvalidArgument(GraftfsError):
    """The caller asked for something malformed: a bad ID, URL, flag or config value."""


class NotFound(GraftfsError):
    """An image, store, blob or tag that does not exist."""


class AlreadyExists(GraftfsError):
    """An image ID that is already taken."""


class FailedPrecondition(GraftfsError):
    """The store or the machine is not in a state that allows the operation (e.g. store not initialized)."""


class Unsupported(GraftfsError):
    """A feature the image or request needs that this build or this kernel does not offer."""


class PermissionDenied(GraftfsError):
    """The registry refused the credentials given, or wants credentials that were not given."""


class VerificationError(GraftfsError):
    """Content did not match its digest, size or diffID."""


class UnsafeArchive(GraftfsError):
    """A layer tried to create, change or remove something outside its own directory."""


class InvalidImage(GraftfsError):
    """An image (layout, manifest, config or layer) that is malformed."""


class LockTimeout(GraftfsError):
    """A bounded lock wait ran out. The message names the lock."""


class KernelError(GraftfsError):
    """A system call (mount, umount, mknod ...) failed in a way the caller cannot fix by retrying."""

    def __init__(self, message: str, errno: int = 0, *, final: bool = False) -> None:
        super().__init__(message, final=final)
        self.errno = errno


# The error classes only: graftfs re-exports each of these (os_reason is a helper, imported by name).
__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "GraftfsError",
    "InvalidArgument",
    "InvalidImage",
    "KernelError",
    "LockTimeout",
    "NotFound",
    "PermissionDenied",
    "UnsafeArchive",
    "Unsupported",
    "VerificationError",
]
