"""What gatehouse writes back, next-auth and Auth.js read: tokens minted by gatehouse's codecs
and decoded by next-auth 4.24's and @auth/core 0.41's own ``decode``
(tests/fixtures/interop/verify_gatehouse.py made gatehouse_minted.json by running both).

These tests keep that proof current: the fixture still decodes to what the libraries saw, and
today's encoders still produce tokens of exactly that shape (same protected header bytes, same
segment sizes), so a change to the encoders that the libraries might reject fails here first.
"""

from __future__ import annotations

import json
from pathlib import Path

from auth.authjs import AuthJsV5Codec
from auth.nextauth import NextAuthV4Codec

MINTED = json.loads((Path(__file__).parent / "fixtures" / "interop" / "gatehouse_minted.json").read_text())


def shape(token: str) -> tuple[str, str, int, int]:
    header, empty, iv, _, tag = token.split(".")
    return header, empty, len(iv), len(tag)


def test_next_auth_decoded_gatehouses_v4_token_as_gatehouse_does() -> None:
    fixture = MINTED["nextauth_v4"]
    codec = NextAuthV4Codec(fixture["secret"])
    assert codec.decode(fixture["value"]) == fixture["decoded"]
    assert shape(codec.encode({"sub": "x"})) == shape(fixture["value"])


def test_auth_core_decoded_gatehouses_v5_token_as_gatehouse_does() -> None:
    fixture = MINTED["authjs_v5"]
    codec = AuthJsV5Codec((fixture["secret"],), fixture["salt"])
    assert codec.decode(fixture["value"]) == fixture["decoded"]
    assert shape(codec.encode({"sub": "x"})) == shape(fixture["value"])
