"""What the CLI prints, byte for byte as GrootFS's Go ``encoding/json`` does."""

from __future__ import annotations

from .. import jsonc
from ..api import Image

TYPE_CHECKING = False  # keep typing off the start-up path
if TYPE_CHECKING:
    from typing import Any

# Go escapes these inside strings (HTML safety); Garden parses either form, scripts that grep may not.
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_json(value: Any) -> str:
    text = jsonc.dumps(value, ensure_ascii=False)
    for char, escaped in _GO_ESCAPES.items():
        if char in text:
            text = text.replace(char, escaped)
    return text


def runtime_spec(image: Image) -> str:
    """The runtime-spec document GrootFS prints for create: key order is that of Go's specs.Spec."""
    process: dict[str, Any] = {"user": {"uid": 0, "gid": 0}}
    if image.env:
        process["env"] = image.env
    process["cwd"] = ""
    spec: dict[str, Any] = {"ociVersion": "", "process": process, "root": {"path": image.rootfs}}
    if image.mount is not None:
        spec["mounts"] = [image.mount]
    return go_json(spec)
