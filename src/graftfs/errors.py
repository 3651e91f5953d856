"""One error hierarchy for all of graftfs.

Every failure the core can report is one of these classes (modelled on containerd's errdefs: a closed set of
kinds, wrapped with context on the way up, translated only at the edges). Each class belongs to exactly one
kind, and :data:`TABLE` is the one place a kind becomes what a front end reports: the Garden CLI prints
``str(err)`` as one line on stdout and exits with its exit code; an HTTP front end (a graphdriver) answers
with :func:`http_status`, a gRPC one (containerd) with :func:`grpc_code`; a wire client turns a status back
into a class with :func:`from_grpc`. The Python API raises them as they are.

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


# The kinds: a closed set. A new failure takes the kind a caller would act on (retry later, fix the request,
# fix the machine ...); a new kind needs a row in TABLE, a class, and a decision in every front end.
INVALID_ARGUMENT = "invalid argument"
NOT_FOUND = "not found"
ALREADY_EXISTS = "already exists"
FAILED_PRECONDITION = "failed precondition"
UNAVAILABLE = "unavailable"
RESOURCE_EXHAUSTED = "resource exhausted"
PERMISSION_DENIED = "permission denied"
INTERNAL = "internal"

#: kind -> (CLI exit status, HTTP status, gRPC code, gRPC code name).
#:
#: The CLI column is 1 throughout on purpose: GrootFS exits 1 for every error and Garden relies on nothing
#: else; the CLI's text is ``str(err)`` for every kind. HTTP statuses are distinct, so a client can map a
#: status back to its kind; the gRPC codes are grpc's own (google.golang.org/grpc/codes).
TABLE: dict[str, tuple[int, int, int, str]] = {
    INVALID_ARGUMENT: (1, 400, 3, "INVALID_ARGUMENT"),
    NOT_FOUND: (1, 404, 5, "NOT_FOUND"),
    ALREADY_EXISTS: (1, 409, 6, "ALREADY_EXISTS"),
    FAILED_PRECONDITION: (1, 412, 9, "FAILED_PRECONDITION"),
    UNAVAILABLE: (1, 503, 14, "UNAVAILABLE"),
    # 507 Insufficient Storage, not 429: what graftfs runs out of is the machine's space, never a rate.
    RESOURCE_EXHAUSTED: (1, 507, 8, "RESOURCE_EXHAUSTED"),
    PERMISSION_DENIED: (1, 403, 7, "PERMISSION_DENIED"),
    INTERNAL: (1, 500, 13, "INTERNAL"),
}


class GraftfsError(Exception):
    """Base class. ``str()`` is a single human-readable line.

    Raise one of the kind classes below (or a class derived from one): a bare ``GraftfsError`` says nothing
    a caller can act on, so the edges read it as :data:`INTERNAL`.
    """

    kind = INTERNAL
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

    @property
    def exit_code(self) -> int:
        """The CLI's exit status, from :data:`TABLE` (1 whatever the kind: GrootFS's, which Garden expects)."""
        return TABLE[self.kind][0]

    def wrap(self, context: str) -> Self:
        """Return a copy of this error, of the same class, with ``context: `` in front (unless it is final)."""
        if self.final:
            return self
        new = type(self).__new__(type(self))
        GraftfsError.__init__(new, f"{context}: {self.message}")
        new.__dict__.update(self.__dict__)
        new.__cause__ = self
        return new


# One class per kind. ``except NotFound`` catches every error of that kind, as containerd's
# ``errdefs.IsNotFound`` does, whichever more specific class below was raised.


class InvalidArgument(GraftfsError):
    """The caller asked for something malformed: a bad ID, URL, flag, config value or image. Retrying the same
    request cannot succeed."""

    kind = INVALID_ARGUMENT


class NotFound(GraftfsError):
    """An image, store, blob or tag that does not exist."""

    kind = NOT_FOUND


class AlreadyExists(GraftfsError):
    """An image ID that is already taken."""

    kind = ALREADY_EXISTS


class FailedPrecondition(GraftfsError):
    """The store or the machine is not in a state that allows the operation (e.g. store not initialized):
    retrying is pointless until someone changes that state."""

    kind = FAILED_PRECONDITION


class Unavailable(GraftfsError):
    """Something graftfs depends on (a registry, a lock another process holds) is busy, unreachable or gave
    no usable answer: the same request may succeed later."""

    kind = UNAVAILABLE


class ResourceExhausted(GraftfsError):
    """Space, inodes or another resource of the machine ran out."""

    kind = RESOURCE_EXHAUSTED


class PermissionDenied(GraftfsError):
    """The registry refused the credentials given, or wants credentials that were not given."""

    kind = PERMISSION_DENIED


class Internal(GraftfsError):
    """A failure that no change to the request or the machine's state is known to fix."""

    kind = INTERNAL


# The specific classes: each belongs to exactly one kind, by deriving from that kind's class.


class Unsupported(FailedPrecondition):
    """A feature the image or request needs that this build or this kernel does not offer."""


class VerificationError(FailedPrecondition):
    """Content did not match its digest, size or diffID.

    A failed precondition (as a digest mismatch is in containerd's content store), not an invalid argument:
    the request named the content correctly; the source holds, or sent, something else.
    """


class UnsafeArchive(InvalidArgument):
    """A layer tried to create, change or remove something outside its own directory."""


class InvalidImage(InvalidArgument):
    """An image (layout, manifest, config or layer) that is malformed: the caller must name another one."""


class LockTimeout(Unavailable):
    """A bounded lock wait ran out. The message names the lock."""


class KernelError(Internal):
    """A system call (mount, umount, mknod ...) failed in a way the caller cannot fix by retrying."""

    def __init__(self, message: str, errno: int = 0, *, final: bool = False) -> None:
        super().__init__(message, final=final)
        self.errno = errno


def kind(err: BaseException) -> str:
    """``err``'s kind, one of :data:`TABLE`'s keys; anything not a :class:`GraftfsError` is :data:`INTERNAL`."""
    return err.kind if isinstance(err, GraftfsError) else INTERNAL


def exit_code(err: BaseException) -> int:
    """The CLI's exit status for ``err`` (always 1, as GrootFS; the text it prints is ``str(err)``)."""
    return TABLE[kind(err)][0]


def http_status(err: BaseException) -> int:
    """The HTTP status a graphdriver front end answers ``err`` with."""
    return TABLE[kind(err)][1]


def grpc_code(err: BaseException) -> tuple[int, str]:
    """The gRPC status code (number and name) a containerd front end answers ``err`` with."""
    row = TABLE[kind(err)]
    return row[2], row[3]


#: The class :func:`from_grpc` returns for each kind.
_CLASSES: dict[str, type[GraftfsError]] = {
    INVALID_ARGUMENT: InvalidArgument,
    NOT_FOUND: NotFound,
    ALREADY_EXISTS: AlreadyExists,
    FAILED_PRECONDITION: FailedPrecondition,
    UNAVAILABLE: Unavailable,
    RESOURCE_EXHAUSTED: ResourceExhausted,
    PERMISSION_DENIED: PermissionDenied,
    INTERNAL: Internal,
}

#: gRPC codes outside the closed set, read as the nearest kind a client can act on (any other code, such as
#: UNKNOWN or DATA_LOSS, is internal): a deadline, cancellation or abort is worth retrying; an unauthenticated
#: call needs credentials; out of range is an argument the server refused.
_GRPC_ALIASES = {
    1: UNAVAILABLE,  # CANCELLED
    4: UNAVAILABLE,  # DEADLINE_EXCEEDED
    10: UNAVAILABLE,  # ABORTED
    11: INVALID_ARGUMENT,  # OUT_OF_RANGE
    12: FAILED_PRECONDITION,  # UNIMPLEMENTED: what Unsupported means
    16: PERMISSION_DENIED,  # UNAUTHENTICATED
}


def from_grpc(code: int, message: str) -> GraftfsError:
    """The error a wire client raises for a gRPC status: the class of the code's kind, carrying ``message``."""
    if code == 0:
        raise ValueError("gRPC status 0 (OK) is not an error")
    for name, row in TABLE.items():
        if row[2] == code:
            return _CLASSES[name](message)
    return _CLASSES[_GRPC_ALIASES.get(code, INTERNAL)](message)


# The error classes only: graftfs re-exports each of these (the functions and constants are imported by name).
__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "GraftfsError",
    "Internal",
    "InvalidArgument",
    "InvalidImage",
    "KernelError",
    "LockTimeout",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unavailable",
    "UnsafeArchive",
    "Unsupported",
    "VerificationError",
]
