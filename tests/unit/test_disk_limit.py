"""GrootFS's disk-limit arithmetic, in the one place it is decided."""

from __future__ import annotations

import pytest

from graftfs.create import DiskLimit
from graftfs.errors import InvalidArgument


def test_no_limit_limits_nothing() -> None:
    limit = DiskLimit(0, False)
    limit.check_layers(10**12)
    assert (limit.pull_budget, limit.writable_bytes(10**9)) == (0, 0)


def test_the_layers_count_against_the_limit() -> None:
    limit = DiskLimit(1000, False)
    assert limit.pull_budget == 1000
    assert limit.writable_bytes(300) == 700
    with pytest.raises(InvalidArgument, match=r"^disk limit is smaller than volume size$"):
        limit.writable_bytes(1001)
    with pytest.raises(InvalidArgument, match=r"^layers exceed disk quota 1001/1000 bytes$"):
        limit.check_layers(1001)


def test_an_excluded_image_has_the_whole_limit_for_its_writes() -> None:
    limit = DiskLimit(1000, True)
    limit.check_layers(10**9)
    assert (limit.pull_budget, limit.writable_bytes(10**9)) == (0, 1000)


def test_a_negative_limit_is_refused_in_grootfs_words() -> None:
    with pytest.raises(InvalidArgument, match=r"^invalid argument: disk limit cannot be negative$"):
        DiskLimit(-1, False)
