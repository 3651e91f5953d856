"""The quota backends' registry (graftfs.quota): names, probe order, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from graftfs import quota
from graftfs.errors import FailedPrecondition
from graftfs.store import features, probe
from graftfs.store.layout import Layout


def test_each_registered_backend_bears_its_name() -> None:
    for name in quota.BACKENDS:
        assert quota.backend_class(name).name == name
    # Probed in order: measure only, which always works, last; tmpfs (ephemeral images) never.
    assert list(quota.BACKENDS)[-1] == "none" and quota.backend_class("none").probe("/")
    assert not quota.backend_class(quota.EPHEMERAL).probe("/")
    assert quota.chosen("xfs", ephemeral=True) == quota.EPHEMERAL and quota.chosen("xfs", False) == "xfs"


def test_an_unknown_backend_is_named() -> None:
    with pytest.raises(FailedPrecondition, match=r"^unknown quota backend `zfs`$"):
        quota.load("zfs", Layout("/nonexistent"))
    # `graftfs features` still describes such a store (as measure only); creates refuse it.
    described = probe.describe(features.Features(filesystem="zfs", quota="zfs"), "/s")
    assert "disk quotas      none on zfs here: limits are checked against the image" in "\n".join(described)


def test_a_backend_is_imported_only_when_asked_for() -> None:
    """A create in a store without quotas loads one module for them, and no subprocess."""
    code = (
        "import sys, graftfs.quota as q\n"
        "q.load('none', None)\n"
        "print(sorted(m for m in sys.modules if m.startswith('graftfs.quota') or m == 'subprocess'))\n"
        "q.load('xfs', None)\n"
        "print(sorted(m for m in sys.modules if m.startswith('graftfs.quota')))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.splitlines() == ["['graftfs.quota']", "['graftfs.quota', 'graftfs.quota.xfs']"]
