"""JSON for the start-up path, straight from CPython's C accelerator (``_json``).

``import json`` costs about 5 ms here, more than a third of the interpreter's own start-up: ``json.decoder``
and ``json.encoder`` import ``re`` (which imports ``enum``, ``functools``, ``collections``...) for their
pure-Python fallbacks. The C scanner and encoder they wrap need none of that. Garden runs graftfs once per
container create and delete, so every create reads and writes its records through this module; anything
else (logs at debug level, the registry client) may use ``json`` itself.

Same results as ``json.loads`` / ``json.dumps(obj, separators=(",", ":"))`` for the documents graftfs
handles (UTF-8 text, no NaN handling beyond Python's). Interpreters without ``_json`` get ``json``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_WS = " \t\n\r"

try:
    from _json import encode_basestring, encode_basestring_ascii, make_encoder, make_scanner
except ImportError:  # pragma: no cover - not CPython
    import json as _std

    def loads(data: str | bytes) -> Any:
        return _std.loads(data)

    def dumps(value: Any, ensure_ascii: bool = True, default: Callable[[Any], Any] | None = None) -> str:
        return _std.dumps(value, ensure_ascii=ensure_ascii, separators=(",", ":"), default=default)

else:

    class _Context:
        """What the C scanner reads from a ``json.JSONDecoder``: the defaults."""

        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int

        @staticmethod
        def parse_constant(name: str) -> float:
            return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]

    _scan = make_scanner(_Context())  # type: ignore[arg-type]  # typeshed wants a JSONDecoder; any object will do

    def loads(data: str | bytes) -> Any:
        """``json.loads``; raises ``ValueError`` for anything that is not exactly one JSON value."""
        if isinstance(data, bytes | bytearray):
            # As json.loads does for bytes, a UTF-8 byte-order mark is skipped. (The codec that would do it,
            # utf-8-sig, is one more module to import.)
            text = data.decode()
            if text.startswith("\ufeff"):
                text = text[1:]
        else:
            text = data
        start = len(text) - len(text.lstrip(_WS))
        try:
            value, end = _scan(text, start)
        except StopIteration:
            raise ValueError(f"Expecting value: char {start}") from None
        except SystemError:
            # The scanner raises json.decoder.JSONDecodeError for malformed input, but only finds that
            # class if json.decoder is already imported (otherwise it fails without an exception). Bad
            # input is the rare path: import it and scan again for the real error, a ValueError.
            import json.decoder  # noqa: F401

            value, end = _scan(text, start)
        if text[end:].strip(_WS):
            raise ValueError(f"Extra data: char {end}")
        return value

    def _unserializable(value: Any) -> Any:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    # (markers, default, encoder, indent, key_separator, item_separator, sort_keys, skipkeys, allow_nan)
    _ascii = make_encoder(None, _unserializable, encode_basestring_ascii, None, ":", ",", False, False, True)
    _utf8 = make_encoder(None, _unserializable, encode_basestring, None, ":", ",", False, False, True)

    def dumps(value: Any, ensure_ascii: bool = True, default: Callable[[Any], Any] | None = None) -> str:
        """``json.dumps(value, ensure_ascii=..., separators=(",", ":"), default=...)``."""
        if default is not None:
            encoder = make_encoder(
                None, default, encode_basestring_ascii if ensure_ascii else encode_basestring, None, ":", ",",
                False, False, True,
            )  # fmt: skip
            return "".join(encoder(value, 0))
        return "".join((_ascii if ensure_ascii else _utf8)(value, 0))
