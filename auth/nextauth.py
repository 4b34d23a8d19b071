"""next-auth v4 session tokens: compact JWE, ``dir`` + ``A256GCM``.

The wire format, as next-auth 4.24's ``next-auth/jwt`` ``encode`` / ``decode`` produce it:

* key = HKDF-SHA256(ikm=secret, salt=b"", info=b"NextAuth.js Generated Encryption Key", 32 bytes)
* token = ``b64u(header) . "" . b64u(iv) . b64u(ciphertext) . b64u(tag)``, header
  ``{"alg":"dir","enc":"A256GCM"}``, AAD = the ASCII header segment
* claims = the app's token plus ``iat``, ``exp`` and ``jti``; decoders allow 15 s of clock skew.

The key is derived once, when the codec is built, not per request.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from auth.jose import InvalidToken, b64url_decode, b64url_encode, json_segment, unexpired

__all__ = ["DEFAULT_MAX_AGE", "NextAuthV4Codec"]

DEFAULT_MAX_AGE = 30 * 24 * 60 * 60
_HEADER = {"alg": "dir", "enc": "A256GCM"}
_HEADER_SEGMENT = b64url_encode(json.dumps(_HEADER, separators=(",", ":")).encode())


class NextAuthV4Codec:
    """Encrypts and decrypts next-auth v4 session tokens under one secret."""

    def __init__(self, secret: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=b"NextAuth.js Generated Encryption Key").derive(
            secret.encode("utf-8")
        )
        self._aead = AESGCM(key)

    def decode(self, token: str, now: float | None = None) -> dict[str, Any]:
        """The claims of ``token``; `InvalidToken` if it is malformed, forged, tampered or expired."""
        parts = token.split(".")
        if len(parts) != 5 or parts[1] != "":
            raise InvalidToken("not a compact JWE with direct encryption")
        header = json_segment(b64url_decode(parts[0]))
        if header.get("alg") != "dir" or header.get("enc") != "A256GCM":
            raise InvalidToken("unsupported JWE algorithm")
        iv, ciphertext, tag = (b64url_decode(p) for p in parts[2:])
        if len(iv) != 12 or len(tag) != 16:
            raise InvalidToken("bad IV or tag length")
        try:
            plaintext = self._aead.decrypt(iv, ciphertext + tag, parts[0].encode("ascii"))
        except (InvalidTag, UnicodeEncodeError):
            raise InvalidToken("decryption failed") from None
        return unexpired(json_segment(plaintext), now)

    def encode(self, claims: dict[str, Any], max_age: int = DEFAULT_MAX_AGE, now: float | None = None) -> str:
        """A token next-auth's own ``decode`` accepts, with fresh ``iat``/``exp``/``jti``."""
        issued = int(time.time() if now is None else now)
        payload = {**claims, "iat": issued, "exp": issued + max_age, "jti": str(uuid.uuid4())}
        iv = os.urandom(12)
        sealed = self._aead.encrypt(iv, json.dumps(payload, separators=(",", ":")).encode(), _HEADER_SEGMENT.encode())
        return ".".join(
            (_HEADER_SEGMENT, "", b64url_encode(iv), b64url_encode(sealed[:-16]), b64url_encode(sealed[-16:]))
        )
