"""This host's platform, in OCI terms, and choosing a manifest for it from an index."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing and dataclasses cost more than the interpreter start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

_GOARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


def host() -> tuple[str, str, str]:
    """(os, architecture, variant) as Go/containerd spell them."""
    machine = os.uname().machine.lower()
    arch, variant = _GOARCH.get(machine, (machine, ""))
    return "linux", arch, variant


def host_string() -> str:
    """``linux/arm64/v8``: how errors name this host's platform."""
    return "/".join(part for part in host() if part)


def choose(descriptors: Sequence[dict[str, Any]], want: tuple[str, str, str] | None = None) -> dict[str, Any] | None:
    """The best descriptor for the platform, or None.

    Same rules as containerd's default matcher, reduced to what matters on Linux: OS and architecture must
    match; an exact variant beats a missing one; arm64's "v8" is its default so it matches a missing variant.
    """
    os_, arch, variant = want or host()
    best: tuple[int, dict[str, Any]] | None = None
    for desc in descriptors:
        plat = desc.get("platform") or {}
        if not isinstance(plat, dict):  # malformed JSON (a string, a list): matches nothing, rather than crash
            continue
        if plat.get("os", "linux") != os_ or plat.get("architecture") != arch:
            continue
        have = plat.get("variant", "")
        if have == variant:
            score = 2
        elif not have or not variant:
            score = 1
        else:
            continue
        if best is None or score > best[0]:
            best = (score, desc)
    return best[1] if best else None
