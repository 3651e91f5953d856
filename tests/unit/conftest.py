"""Fixtures for every unit test."""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(autouse=True)
def _keep_tmpdir(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI points ``TMPDIR`` into its store, as GrootFS does; run in this process, it would leave every
    test after it (and ``tempfile``'s cached directory) pointing into a store that is gone by then."""
    monkeypatch.setenv("TMPDIR", os.environ.get("TMPDIR", ""))
    if not os.environ["TMPDIR"]:
        monkeypatch.delenv("TMPDIR")
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
