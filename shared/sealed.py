"""Secrets kept in Redis: key names that reveal nothing, values only the session secret opens.

`Sealer` derives two keys from the session secret (HKDF-SHA256, one ``info`` per purpose, so
they are unrelated to the cookies' keys and to each other's):

* `Sealer.name`: HMAC-SHA256 of a secret value (a refresh token), as hex. Every instance with
  the same secret computes the same name; without the secret, a name says nothing of the token
  and cannot be checked against a guess.
* `Sealer.seal` / `Sealer.open`: AES-256-GCM with a random 96-bit nonce, bound to a ``context``
  (the Redis key it is stored under) as associated data, so a value copied to another key does
  not open. `open` answers None for anything it cannot authenticate.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["Sealer"]

_NONCE = 12


def _derive(secret: str, info: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=info.encode()).derive(secret.encode())


class Sealer:
    """Names and sealed values for one ``purpose`` (e.g. ``refresh``) under ``secret``."""

    def __init__(self, secret: str, purpose: str) -> None:
        self._name_key = _derive(secret, f"gatehouse shared {purpose} names")
        self._aead = AESGCM(_derive(secret, f"gatehouse shared {purpose} values"))

    def name(self, value: str) -> str:
        """A stable, keyed digest of ``value`` to use in a key name in its place."""
        return hmac.new(self._name_key, value.encode(), hashlib.sha256).hexdigest()

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes | None:
        """The plaintext `seal` was given for ``context``; None if ``sealed`` is not that."""
        if len(sealed) < _NONCE + 16:
            return None
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], context.encode())
        except InvalidTag:
            return None
