"""Request bodies that claim to be JSON: parsed once, strictly, before any upstream sees them.

A body passes when it is RFC 8259 JSON in UTF-8 that every later reader can take as it is:

* UTF-8 only: ``json.loads`` would guess UTF-16/32 from bytes; no BOM;
* no ``NaN`` / ``Infinity`` (Python's extension, which other parsers refuse), and no number too
  large for a double (``1e400``, which Python reads as infinity);
* every string valid Unicode: a lone surrogate escape (``"\\ud800"``) parses in Python but cannot
  be written out again as UTF-8, and other parsers replace or refuse it;
* nested at most `MAX_JSON_DEPTH` deep: Python's parser stops only at its recursion limit, and
  a body that only just parses fails when it is serialised again (and in other parsers sooner).

Anything else is 400 ``invalid_json``. Duplicate keys are accepted: where gatehouse reads a field
it sends its own serialisation of what it read (the last value, as Python's ``json``); bodies
forwarded byte for byte are not read by gatehouse, so it and the upstream cannot disagree on them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from handlers.errors import ApiError

__all__ = ["MAX_JSON_DEPTH", "parse_json"]

MAX_JSON_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")
_INVALID = "The request body is not valid JSON."
_TOO_DEEP = f"The request body is nested deeper than {MAX_JSON_DEPTH} levels, the most this gateway accepts."


def parse_json(body: bytes) -> Any:
    """``body`` parsed, or 400 ``invalid_json`` (see the module's rules)."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError:
        raise ApiError(400, "invalid_json", _TOO_DEEP) from None
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_json", _INVALID) from None
    # Each walk is skipped unless the raw bytes could hold what it looks for: a body with at most
    # MAX_JSON_DEPTH brackets cannot nest deeper, and a surrogate can only come from a \uD... escape.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise ApiError(400, "invalid_json", _TOO_DEEP)
    if (b"\\ud" in body or b"\\uD" in body) and _has_lone_surrogate(value):
        raise ApiError(400, "invalid_json", "The request body holds text that is not valid Unicode.")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    # 1e400 is valid JSON, but as a float it is infinity, which no serialiser writes back as JSON.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number too large for a double")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _has_lone_surrogate(value: Any) -> bool:
    # Paired escapes were already joined into one code point by the parser: any surrogate left
    # is a lone one.
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return True
        elif isinstance(node, dict):
            stack.extend(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False
