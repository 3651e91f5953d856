"""graftfs.idmap: NS:HOST:SIZE mappings, ID translation and meta/namespace.json."""

from __future__ import annotations

import json

import pytest

from graftfs.errors import FailedPrecondition, InvalidArgument
from graftfs.idmap import MAX_ID, IdMap, Mapping, Namespace, parse_all

MAXIMUS = 4294967294
# garden-runc-release's unprivileged store: container root is maximus, everyone else keeps their ID.
GARDEN = [Mapping(0, MAXIMUS, 1), Mapping(1, 1, MAXIMUS - 1)]


@pytest.mark.parametrize(
    ("text", "mapping"),
    [
        ("0:1000:1", Mapping(0, 1000, 1)),
        ("1:100000:65536", Mapping(1, 100000, 65536)),
        (" 0:4294967294:1 ", Mapping(0, MAXIMUS, 1)),
        ("0:0:4294967296", Mapping(0, 0, MAX_ID + 1)),
    ],
)
def test_parse_and_format(text: str, mapping: Mapping) -> None:
    assert Mapping.parse(text) == mapping
    assert str(mapping) == text.strip()


@pytest.mark.parametrize("text", ["", "0:1000", "0:1000:1:2", "a:b:c", "0:1000:x", "0x0:1:1", "0;1;1"])
def test_malformed_mappings(text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        Mapping.parse(text)
    assert str(err.value) == f"invalid mapping `{text}`: expected NAMESPACE_ID:HOST_ID:SIZE"


@pytest.mark.parametrize("text", ["-1:0:1", "0:-5:1", "0:0:0", "0:0:-1", "1:0:4294967296", "0:4294967295:2"])
def test_out_of_range_mappings(text: str) -> None:
    with pytest.raises(InvalidArgument, match="IDs out of range"):
        Mapping.parse(text)


def test_parse_all_accepts_repeats_and_commas() -> None:
    got = parse_all(["0:4294967294:1", "1:1:4294967293,2:2:3", "", " , "])
    assert got == [Mapping(0, MAXIMUS, 1), Mapping(1, 1, MAXIMUS - 1), Mapping(2, 2, 3)]
    assert parse_all([]) == []


def test_parse_all_reports_the_bad_item() -> None:
    with pytest.raises(InvalidArgument, match="`nope`"):
        parse_all(["0:1:1,nope"])


def test_translation_in_garden_store() -> None:
    m = IdMap(GARDEN)
    assert m(0) == MAXIMUS
    assert m(1) == 1
    assert m(1000) == 1000
    assert m(MAXIMUS - 1) == MAXIMUS - 1


def test_translation_uses_the_kernel_rule_not_grootfs_minus_one() -> None:
    # GrootFS computes host + id - 1; for a range starting at 1000 that is off by 999.
    m = IdMap([Mapping(0, 100000, 1), Mapping(1000, 200000, 5000)])
    assert m(0) == 100000
    assert m(1000) == 200000
    assert m(1234) == 200234
    assert m(5999) == 204999


def test_ids_outside_every_range_are_unchanged() -> None:
    m = IdMap([Mapping(0, 100000, 1), Mapping(1000, 200000, 10)])
    assert m(1) == 1
    assert m(999) == 999
    assert m(1010) == 1010
    assert IdMap([])(42) == 42


def test_order_of_the_mappings_does_not_matter() -> None:
    forward = IdMap([Mapping(0, 500, 1), Mapping(1, 1000, 100)])
    backward = IdMap([Mapping(1, 1000, 100), Mapping(0, 500, 1)])
    assert [forward(i) for i in range(0, 120)] == [backward(i) for i in range(0, 120)]


def test_empty_map_is_falsy() -> None:
    assert not IdMap([])
    assert IdMap(GARDEN)


def test_namespace_json_is_sorted_strings_with_a_newline() -> None:
    ns = Namespace(
        uid_mappings=[Mapping(1, 100000, 65000), Mapping(0, 1000, 1)],
        gid_mappings=[Mapping(0, 1000, 1)],
    )
    assert ns.to_json() == b'{"uid-mappings":["0:1000:1","1:100000:65000"],"gid-mappings":["0:1000:1"]}\n'


def test_namespace_sort_is_lexicographic_as_grootfs() -> None:
    ns = Namespace(uid_mappings=[Mapping(2, 10, 1), Mapping(10, 20, 1)])
    assert json.loads(ns.to_json())["uid-mappings"] == ["10:20:1", "2:10:1"]


def test_namespace_without_mappings() -> None:
    assert Namespace().to_json() == b'{"uid-mappings":[],"gid-mappings":[]}\n'
    assert Namespace().owner == (0, 0)


def test_namespace_round_trip() -> None:
    ns = Namespace(uid_mappings=list(GARDEN), gid_mappings=list(GARDEN))
    back = Namespace.from_json(ns.to_json().decode())
    assert sorted(back.uid_mappings) == sorted(GARDEN)
    assert back.to_json() == ns.to_json()


@pytest.mark.parametrize("text", ["", "{}", '{"uid-mappings":null,"gid-mappings":null}'])
def test_namespace_from_empty_documents(text: str) -> None:
    assert Namespace.from_json(text) == Namespace()


def test_corrupt_namespace_json() -> None:
    with pytest.raises(FailedPrecondition, match=r"namespace.json is corrupt"):
        Namespace.from_json('{"uid-mappings": [')


def test_store_owner_is_the_host_id_of_container_root() -> None:
    assert Namespace(uid_mappings=list(GARDEN), gid_mappings=[Mapping(0, 7, 1)]).owner == (MAXIMUS, 7)
    # A range that covers 0 also maps root.
    assert Namespace(uid_mappings=[Mapping(0, 100000, 65536)]).owner == (100000, 0)
