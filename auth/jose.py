"""The small part of JOSE that session cookies need: base64url and compact JWE parts."""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

__all__ = ["CLOCK_TOLERANCE", "InvalidToken", "b64url_decode", "b64url_encode", "json_segment", "unexpired"]

CLOCK_TOLERANCE = 15  # seconds, as next-auth's and Auth.js's decode


class InvalidToken(Exception):
    """A token that cannot be decoded, decrypted or trusted. Never carries the token itself."""


def unexpired(claims: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """``claims``, unless their ``exp`` has passed (with `CLOCK_TOLERANCE`): `InvalidToken`."""
    exp = claims.get("exp")
    if exp is not None:
        if not isinstance(exp, (int, float)):
            raise InvalidToken("exp is not a number")
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
