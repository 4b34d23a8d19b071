"""The small part of JOSE that session cookies need: base64url and compact JWE parts."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

__all__ = ["InvalidToken", "b64url_decode", "b64url_encode", "json_segment"]


class InvalidToken(Exception):
    """A token that cannot be decoded, decrypted or trusted. Never carries the token itself."""


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
