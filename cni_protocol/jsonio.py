"""JSON through the C accelerator `_json` alone.

`import json` costs ~8 ms per process because its pure-Python decoder imports `re` (and with
it `enum`); every plugin call is a fresh process, so we drive the same C scanner and encoder
that `json` uses, without the wrapper. Output matches `json.dumps(obj)`; errors are the
`json` module's own (ValueError subclasses).
"""
from __future__ import annotations

import _json

_WHITESPACE = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _ScannerContext:
    """The attributes _json.make_scanner reads from a json.JSONDecoder."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_CONSTANTS.__getitem__)
    memo: dict = {}


def _unserializable(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_scan = _json.make_scanner(_ScannerContext())
_encode = _json.make_encoder(None, _unserializable, _json.encode_basestring_ascii, None,
                             ": ", ", ", False, False, True)


def loads(data: bytes | str) -> object:
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        obj, end = _scan(text, start)
    except StopIteration as e:
        raise ValueError(f"Expecting value: line 1 column {e.value + 1} (char {e.value})") \
            from None
    except SystemError:
        # The scanner raises json.decoder.JSONDecodeError, but only finds it in sys.modules:
        # without it a syntax error inside a document is a bare SystemError. Bad input only.
        import json.decoder  # noqa: F401
        obj, end = _scan(text, start)
    except RecursionError:
        raise ValueError("too deeply nested") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"Extra data: char {end}")
    return obj


def dumps(obj: object) -> str:
    return "".join(_encode(obj, 0))
