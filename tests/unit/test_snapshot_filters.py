"""containerd's filter syntax as the snapshot core's walk reads it."""

from __future__ import annotations

import pytest

from graftfs.errors import InvalidArgument
from graftfs.store.snapshots import Info, _parse_filter

A = Info("a", "active", "p", {"containerd.io/gc.root": "x", "l": "1"})
C = Info("p", "committed", "", {"l": "2"})


def matches(text: str, info: Info) -> bool:
    return all(condition(info) for condition in _parse_filter(text))


@pytest.mark.parametrize(
    ("text", "a", "c"),
    [
        ("kind==active", True, False),
        ("kind!=active", False, True),
        ('labels."containerd.io/gc.root"==x', True, False),
        ("labels.l", True, True),
        ("labels.missing", False, False),
        ("parent", True, True),  # containerd's adaptor: name, parent and kind are always present
        ('parent==""', False, True),
        ("name~=/^p$/", False, True),
        ("name~=|a|", True, False),
        ("kind == active , labels.l==1", True, False),
        (r'name=="\x61"', True, False),
        ("parent==p,labels.l==1", True, False),
        ("name~=^p$", False, True),
        ('labels.l=="2"', False, True),
        ("labels.l~=[12]", True, True),
    ],
)
def test_conditions(text: str, a: bool, c: bool) -> None:
    assert (matches(text, A), matches(text, C)) == (a, c)


@pytest.mark.parametrize(
    "text", ["size==1", "kind==a,", 'labels."unterminated==1', "name~=(", "==x", "name==", "name==a b"]
)
def test_bad_filters_are_invalid_arguments(text: str) -> None:
    with pytest.raises(InvalidArgument):
        _parse_filter(text)
