"""The error kinds and the one table that turns them into exit codes, HTTP statuses and gRPC codes.

The whole table is pinned here: a front end's client (Garden, docker, containerd) acts on these numbers, so
changing one is a change of contract, not a refactoring.
"""

from __future__ import annotations

import pytest

from graftfs import errors
from graftfs.errors import (
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
    exit_code,
    from_grpc,
    grpc_code,
    http_status,
    kind,
)

# kind: (CLI exit status, HTTP status, gRPC code, gRPC name)
EXPECTED_TABLE = {
    "invalid argument": (1, 400, 3, "INVALID_ARGUMENT"),
    "not found": (1, 404, 5, "NOT_FOUND"),
    "already exists": (1, 409, 6, "ALREADY_EXISTS"),
    "failed precondition": (1, 412, 9, "FAILED_PRECONDITION"),
    "unavailable": (1, 503, 14, "UNAVAILABLE"),
    "resource exhausted": (1, 507, 8, "RESOURCE_EXHAUSTED"),
    "permission denied": (1, 403, 7, "PERMISSION_DENIED"),
    "internal": (1, 500, 13, "INTERNAL"),
}

# Every public class and the kind it belongs to.
EXPECTED_KIND: dict[type[GraftfsError], str] = {
    InvalidArgument: "invalid argument",
    NotFound: "not found",
    AlreadyExists: "already exists",
    FailedPrecondition: "failed precondition",
    Unavailable: "unavailable",
    ResourceExhausted: "resource exhausted",
    PermissionDenied: "permission denied",
    Internal: "internal",
    GraftfsError: "internal",
    Unsupported: "failed precondition",
    VerificationError: "failed precondition",
    UnsafeArchive: "invalid argument",
    InvalidImage: "invalid argument",
    LockTimeout: "unavailable",
    KernelError: "internal",
}

KIND_CLASSES = [InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Unavailable]
KIND_CLASSES += [ResourceExhausted, PermissionDenied, Internal]


def test_the_table_is_pinned() -> None:
    assert errors.TABLE == EXPECTED_TABLE


def test_the_cli_exits_1_for_every_kind() -> None:
    # GrootFS's contract with Garden: any failure is exit status 1.
    assert {row[0] for row in errors.TABLE.values()} == {1}


def test_statuses_and_codes_are_distinct() -> None:
    # So that a client can map a status back to exactly one kind.
    rows = errors.TABLE.values()
    assert len({r[1] for r in rows}) == len({r[2] for r in rows}) == len({r[3] for r in rows}) == len(rows)


def test_every_public_class_has_a_pinned_kind() -> None:
    public = {getattr(errors, name) for name in errors.__all__}
    assert public == set(EXPECTED_KIND)


@pytest.mark.parametrize("cls", list(EXPECTED_KIND), ids=lambda c: c.__name__)
def test_each_class_belongs_to_exactly_one_kind(cls: type[GraftfsError]) -> None:
    assert cls.kind == EXPECTED_KIND[cls]
    # ... and, below the base, derives from that kind's class and no other: ``except NotFound`` is the kind.
    if cls is not GraftfsError:
        assert [k for k in KIND_CLASSES if issubclass(cls, k)] == [k for k in KIND_CLASSES if k.kind == cls.kind]


@pytest.mark.parametrize("cls", list(EXPECTED_KIND), ids=lambda c: c.__name__)
def test_the_functions_read_the_table(cls: type[GraftfsError]) -> None:
    err = cls("boom")
    _, status, code, name = EXPECTED_TABLE[EXPECTED_KIND[cls]]
    assert kind(err) == EXPECTED_KIND[cls]
    assert exit_code(err) == err.exit_code == 1
    assert http_status(err) == status
    assert grpc_code(err) == (code, name)


def test_a_wrapped_error_keeps_its_kind() -> None:
    err = LockTimeout("timed out waiting for the 'x' file lock after '1s'").wrap("creating")
    assert str(err) == "creating: timed out waiting for the 'x' file lock after '1s'"
    assert isinstance(err, Unavailable)
    assert http_status(err) == 503


@pytest.mark.parametrize("exc", [ValueError("x"), OSError(2, "No such file or directory"), KeyboardInterrupt()])
def test_anything_else_is_internal(exc: BaseException) -> None:
    assert kind(exc) == "internal"
    assert exit_code(exc) == 1
    assert http_status(exc) == 500
    assert grpc_code(exc) == (13, "INTERNAL")


@pytest.mark.parametrize("name", list(EXPECTED_TABLE))
def test_from_grpc_round_trips_each_kind(name: str) -> None:
    code = EXPECTED_TABLE[name][2]
    err = from_grpc(code, "image `x` not found")
    assert type(err) in KIND_CLASSES
    assert kind(err) == name
    assert grpc_code(err)[0] == code
    assert str(err) == "image `x` not found"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (1, Unavailable),  # CANCELLED
        (2, Internal),  # UNKNOWN
        (4, Unavailable),  # DEADLINE_EXCEEDED
        (10, Unavailable),  # ABORTED
        (11, InvalidArgument),  # OUT_OF_RANGE
        (12, FailedPrecondition),  # UNIMPLEMENTED
        (15, Internal),  # DATA_LOSS
        (16, PermissionDenied),  # UNAUTHENTICATED
        (99, Internal),  # a code from a newer grpc
    ],
)
def test_from_grpc_reads_other_codes_as_the_nearest_kind(code: int, cls: type[GraftfsError]) -> None:
    assert type(from_grpc(code, "m")) is cls


def test_from_grpc_refuses_ok() -> None:
    with pytest.raises(ValueError, match="not an error"):
        from_grpc(0, "")


def test_from_grpc_keeps_the_message_on_one_line() -> None:
    assert str(from_grpc(5, "a\nb")) == "a b"
