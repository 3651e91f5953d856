"""``none``: measure only. The limit is checked against the image and recorded, and the container's writes
are measured for ``stats``, but nothing stops them. Whether such a create is refused or only logged is the
caller's choice (``create.unenforceable_disk_limit: refuse|warn``). Every filesystem can do this."""

from __future__ import annotations

from . import base


class Backend(base.Backend):
    name = "none"

    @classmethod
    def probe(cls, root: str) -> bool:
        return True

    @classmethod
    def describe(cls, filesystem: str) -> str:
        return (
            f"none on {filesystem} here"
            + (" (not mounted with prjquota)" if filesystem == "xfs" else "")
            + ": limits are checked against the image and the container's writes are measured, but not enforced"
        )
