"""Auth.js v5 (next-auth@5, @auth/core) session tokens: compact JWE, ``dir`` + ``A256CBC-HS512``.

The wire format, as @auth/core 0.41's ``encode`` / ``decode`` produce it:

* key = HKDF-SHA256(ikm=secret, salt=<cookie name>,
  info="Auth.js Generated Encryption Key (<cookie name>)", 64 bytes; 32 for ``A256GCM``):
  a token only decodes under the cookie name it was made for;
* header ``{"alg":"dir","enc":"A256CBC-HS512","kid":<RFC 7638 SHA-512 thumbprint of the key>}``;
* A256CBC-HS512 (RFC 7518 5.2): the first 32 key bytes sign with HMAC-SHA512 over
  AAD || IV || ciphertext || bit-length(AAD), the tag being the first 32 bytes of it; the last
  32 encrypt with AES-256-CBC and PKCS#7 padding, under a 16-byte IV;
* several secrets (``AUTH_SECRET``, ``AUTH_SECRET_1..3``): the first encrypts, all decrypt; the
  ``kid`` says which one made a token.

Keys are derived once, when the codec is built.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import uuid
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from auth.jose import InvalidToken, b64url_decode, b64url_encode, json_segment, unexpired
from auth.nextauth import DEFAULT_MAX_AGE

__all__ = ["AuthJsV5Codec"]


def _derive(secret: str, cookie_name: str, length: int) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=length,
        salt=cookie_name.encode(),
        info=f"Auth.js Generated Encryption Key ({cookie_name})".encode(),
    ).derive(secret.encode("utf-8"))


def _thumbprint(key: bytes) -> str:
    jwk = json.dumps({"k": b64url_encode(key), "kty": "oct"}, separators=(",", ":"))
    return b64url_encode(hashlib.sha512(jwk.encode()).digest())


def _cbc_hs512_tag(mac_key: bytes, aad: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    al = (len(aad) * 8).to_bytes(8, "big")
    return hmac.new(mac_key, aad + iv + ciphertext + al, hashlib.sha512).digest()[:32]


class AuthJsV5Codec:
    """Encrypts and decrypts Auth.js v5 session tokens for one cookie name."""

    def __init__(self, secrets: tuple[str, ...], cookie_name: str) -> None:
        if not secrets:
            raise ValueError("at least one secret is required")
        self._cbc = [_derive(s, cookie_name, 64) for s in secrets]  # the first one encrypts
        self._gcm = [AESGCM(_derive(s, cookie_name, 32)) for s in secrets]
        self._kids = [_thumbprint(key) for key in self._cbc]

    def decode(self, token: str, now: float | None = None) -> dict[str, Any]:
        """The claims of ``token``; `InvalidToken` if it is malformed, forged, tampered,
        made for another cookie name or secret, or expired."""
        parts = token.split(".")
        if len(parts) != 5 or parts[1] != "":
            raise InvalidToken("not a compact JWE with direct encryption")
        header = json_segment(b64url_decode(parts[0]))
        aad = parts[0].encode("ascii", errors="replace")
        iv, ciphertext, tag = (b64url_decode(p) for p in parts[2:])
        if header.get("alg") != "dir":
            raise InvalidToken("unsupported JWE algorithm")
        if header.get("enc") == "A256CBC-HS512":
            plaintext = self._open_cbc(header.get("kid"), aad, iv, ciphertext, tag)
        elif header.get("enc") == "A256GCM":
            plaintext = self._open_gcm(aad, iv, ciphertext, tag)
        else:
            raise InvalidToken("unsupported JWE encryption")
        return unexpired(json_segment(plaintext), now)

    def _open_cbc(self, kid: object, aad: bytes, iv: bytes, ciphertext: bytes, tag: bytes) -> bytes:
        if len(iv) != 16 or len(tag) != 32 or not ciphertext or len(ciphertext) % 16:
            raise InvalidToken("bad IV, tag or ciphertext length")
        keys = [k for k, key_id in zip(self._cbc, self._kids, strict=True) if key_id == kid] or self._cbc
        for key in keys:
            if hmac.compare_digest(_cbc_hs512_tag(key[:32], aad, iv, ciphertext), tag):
                decryptor = Cipher(algorithms.AES(key[32:]), modes.CBC(iv)).decryptor()
                padded = decryptor.update(ciphertext) + decryptor.finalize()
                unpadder = padding.PKCS7(128).unpadder()
                try:
                    return unpadder.update(padded) + unpadder.finalize()
                except ValueError:
                    raise InvalidToken("bad padding") from None
        raise InvalidToken("decryption failed")

    def _open_gcm(self, aad: bytes, iv: bytes, ciphertext: bytes, tag: bytes) -> bytes:
        if len(iv) != 12 or len(tag) != 16:
            raise InvalidToken("bad IV or tag length")
        for aead in self._gcm:
            try:
                return aead.decrypt(iv, ciphertext + tag, aad)
            except InvalidTag:
                continue
        raise InvalidToken("decryption failed")

    def encode(self, claims: dict[str, Any], max_age: int = DEFAULT_MAX_AGE, now: float | None = None) -> str:
        """A token @auth/core's ``decode`` accepts under this cookie name and the first secret."""
        issued = int(time.time() if now is None else now)
        payload = {**claims, "iat": issued, "exp": issued + max_age, "jti": str(uuid.uuid4())}
        header = {"alg": "dir", "enc": "A256CBC-HS512", "kid": self._kids[0]}
        protected = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
        key, iv = self._cbc[0], os.urandom(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(json.dumps(payload, separators=(",", ":")).encode()) + padder.finalize()
        encryptor = Cipher(algorithms.AES(key[32:]), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(padded) + encryptor.finalize()
        tag = _cbc_hs512_tag(key[:32], protected.encode(), iv, ciphertext)
        return ".".join((protected, "", b64url_encode(iv), b64url_encode(ciphertext), b64url_encode(tag)))
