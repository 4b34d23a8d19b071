"""The small part of JOSE that session cookies need: base64url and compact JWE parts."""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any, TypeGuard

__all__ = [
    "CLOCK_TOLERANCE",
    "InvalidToken",
    "b64url_decode",
    "b64url_encode",
    "is_number",
    "json_segment",
    "unexpired",
]

CLOCK_TOLERANCE = 15  # seconds, as next-auth's and Auth.js's decode
MAX_NUMBER = 2.0**53  # what a JSON number may be to gatehouse: exact as a float, and a date's seconds
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second a datetime can show


def is_number(value: object) -> TypeGuard[float]:
    """A JSON number gatehouse can compute with: ``json`` also yields ``True``, ``NaN``,
    ``inf`` and integers such as ``10**400`` that overflow a float."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -MAX_NUMBER <= value <= MAX_NUMBER


class InvalidToken(Exception):
    """A token that cannot be decoded, decrypted or trusted. Never carries the token itself."""


def unexpired(claims: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """``claims``, unless their ``exp`` has passed (with `CLOCK_TOLERANCE`): `InvalidToken`."""
    exp = claims.get("exp")
    if exp is not None:
        if not is_number(exp) or exp > MAX_TIMESTAMP:
            raise InvalidToken("exp is not a date")
        if exp + CLOCK_TOLERANCE < (time.time() if now is None else now):
            raise InvalidToken("session expired")
    return claims


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("bad base64url segment") from None


def json_segment(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidToken("segment is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken("segment is not a JSON object")
    return value
