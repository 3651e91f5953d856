"""The YAML that config files are written in, read without importing PyYAML.

Garden runs graftfs with ``--config`` once per container create and delete, and ``import yaml`` (with the
``re`` patterns and ``enum`` it loads) costs more than the whole rest of a warm create. Config files are
block mappings of plain keys to scalars and short lists, so this reads exactly that subset and gives up
(``None``) on anything else, which PyYAML then reads. Within the subset, every value is what PyYAML's safe
loader (YAML 1.1) gives: a plain scalar becomes a bool, null or int only in the forms listed below; one
that PyYAML could read as a float, a timestamp, an octal or base-60 integer (anything starting with a
digit, sign or dot that is not a plain decimal) makes the whole file fall back. A test compares both on
generated files.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_BOOLS = {w: True for w in ("yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")}
_BOOLS.update({w: False for w in ("no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF")})
_NULLS = ("", "~", "null", "Null", "NULL")
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
# Characters of plain strings taken as they are; anything else (quotes inside, flow or block indicators,
# anchors, tags, escapes, non-ASCII) is left to PyYAML.
_PLAIN_CHARS = _KEY_CHARS | frozenset("./@:+%,#")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")


class _Unsupported(Exception):
    pass


def load(text: str) -> tuple[bool, Any]:
    """``(True, document)``, or ``(False, None)`` when ``text`` is outside the subset (then read it with
    PyYAML, which also gives the errors)."""
    try:
        return True, _Parser(text).document()
    except _Unsupported:
        return False, None


class _Parser:
    def __init__(self, text: str) -> None:
        # (indent, content) of every line that holds something.
        self.lines: list[tuple[int, str]] = []
        for number, raw in enumerate(text.split("\n")):
            if "\t" in raw or "\r" in raw:
                raise _Unsupported
            line = _strip_comment(raw).rstrip(" ")
            if not line.strip():
                continue
            if number == len(self.lines) == 0 and line == "---":
                continue
            if line.startswith(("---", "...", "%")):
                raise _Unsupported
            self.lines.append((len(line) - len(line.lstrip(" ")), line.lstrip(" ")))
        self.pos = 0

    def document(self) -> Any:
        if not self.lines:
            return None
        if self.lines[0][0] != 0:
            raise _Unsupported
        value = self._mapping(0)
        if self.pos != len(self.lines):
            raise _Unsupported
        return value

    def _mapping(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while self.pos < len(self.lines) and self.lines[self.pos][0] == indent:
            content = self.lines[self.pos][1]
            key, sep, rest = content.partition(":")
            if (
                not sep
                or not _KEY_CHARS.issuperset(key)
                or key[:1] not in _LETTERS
                or key in _BOOLS
                or key in _NULLS
                or key in out
                or (rest and rest[0] != " ")
            ):
                raise _Unsupported  # keys that are not plain strings, duplicates, `a:b`
            self.pos += 1
            rest = rest.strip(" ")
            if rest:
                out[key] = _value(rest)
            elif (
                self.pos < len(self.lines)
                and self.lines[self.pos][1].startswith("- ")
                and (self.lines[self.pos][0] >= indent)
            ):
                out[key] = self._sequence(self.lines[self.pos][0])
            elif self.pos < len(self.lines) and self.lines[self.pos][0] > indent:
                out[key] = self._mapping(self.lines[self.pos][0])
            else:
                out[key] = None
        if self.pos < len(self.lines) and self.lines[self.pos][0] > indent:
            raise _Unsupported  # an indentation that closes nothing
        return out

    def _sequence(self, indent: int) -> list[Any]:
        out = []
        while self.pos < len(self.lines) and self.lines[self.pos][0] == indent:
            content = self.lines[self.pos][1]
            if not content.startswith("- "):
                break
            item = content[2:].strip(" ")
            if not item or item.startswith("- ") or _is_mapping_entry(item):
                raise _Unsupported  # nested collections
            out.append(_value(item))
            self.pos += 1
        return out


def _strip_comment(line: str) -> str:
    """The line without a trailing comment; a ``#`` inside quotes (or not after a space) is text."""
    if "#" not in line:
        return line  # most lines: no walk over every character (a fifth of a delete's config read)
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i]
    return line


def _is_mapping_entry(item: str) -> bool:
    _, sep, rest = item.partition(":")
    return bool(sep) and (not rest or rest[0] == " ")


def _value(text: str) -> Any:
    if text[0] == "[":
        if text[-1] != "]":
            raise _Unsupported
        inner = text[1:-1].strip(" ")
        if not inner:
            return []
        items = [item.strip(" ") for item in inner.split(",")]
        if any(":" in item and item[:1] not in "\"'" for item in items):
            raise _Unsupported  # PyYAML's flow scanner has its own rules for a plain `:`
        return [_scalar(item) for item in items]
    if text == "{}":
        return {}
    return _scalar(text)


def _scalar(text: str) -> Any:
    if not text:
        raise _Unsupported  # `[a,,b]` and the like
    first = text[0]
    if first in "\"'":
        inner = text[1:-1]
        if len(text) < 2 or text[-1] != first or first in inner or "\\" in inner or not inner.isprintable():
            raise _Unsupported  # escapes, doubled quotes, control characters
        return inner
    if text in _BOOLS:
        return _BOOLS[text]
    if text in _NULLS:
        return None
    if not _PLAIN_CHARS.issuperset(text) or first in "@%:," or text.endswith(":"):
        raise _Unsupported  # indicators that cannot start a plain scalar; `a:` is a mapping
    body = text[1:] if first in "+-" else text
    if body.isdigit() and body.isascii():
        if body[0] == "0" and body != "0":
            raise _Unsupported  # octal in YAML 1.1
        return int(text)
    if first not in "0123456789+-.":
        return text
    if first in "+-" and text[1:2] in _LETTERS:
        return text  # `-flag`: no number starts with a sign and a letter
    if first.isdigit() and text.count(".") >= 2 and text[4:5] != "-":
        return text  # `127.0.0.1:5000`: floats have one dot, timestamps a dash after the year
    raise _Unsupported  # floats, timestamps, base-60, hex, .inf ...
