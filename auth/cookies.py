"""Reading and writing chunked session cookies.

next-auth splits a session cookie longer than its chunk size into ``<name>.0``, ``<name>.1``,
... and its readers join every ``<name>.N`` sorted by N. A single unsplit ``<name>`` wins when
present, as in next-auth's ``SessionStore``.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "AUTHJS_V5_CHUNK_SIZE",
    "NEXTAUTH_V4_CHUNK_SIZE",
    "chunk_value",
    "names_present",
    "read_chunked",
    "write_plan",
]

NEXTAUTH_V4_CHUNK_SIZE = 3933  # 4096 minus next-auth v4's allowance for the cookie's attributes
AUTHJS_V5_CHUNK_SIZE = 3936  # the same for @auth/core


def read_chunked(cookies: Mapping[str, str], name: str) -> str | None:
    """The value of cookie ``name``, joined from its ``.N`` chunks if it was split."""
    whole = cookies.get(name)
    if whole:
        return whole
    prefix = name + "."
    chunks: list[tuple[int, str]] = []
    for key, value in cookies.items():
        if key.startswith(prefix):
            index = key[len(prefix) :]
            if index.isascii() and index.isdigit():  # isdigit() alone also takes "²"
                chunks.append((int(index), value))
    if not chunks:
        return None
    chunks.sort()
    return "".join(value for _, value in chunks)


def names_present(cookies: Mapping[str, str], name: str) -> tuple[str, ...]:
    """The cookie names that carry ``name``'s value: ``name`` itself and any ``name.N``."""
    prefix = name + "."
    return tuple(
        k
        for k in cookies
        if k == name or (k.startswith(prefix) and k[len(prefix) :].isascii() and k[len(prefix) :].isdigit())
    )


def write_plan(
    name: str, value: str | None, present: tuple[str, ...], size: int = NEXTAUTH_V4_CHUNK_SIZE
) -> list[tuple[str, str | None]]:
    """What to set (``(name, value)``) and expire (``(name, None)``) so the browser ends up
    holding exactly ``value`` under ``name``, chunked as next-auth would, with no stale chunk of
    an older, longer value left behind. ``value=None`` expires the whole session cookie."""
    setting = chunk_value(name, value, size) if value is not None else []
    keep = {n for n, _ in setting}
    stale = [(n, None) for n in (present or (name,)) if n not in keep]
    return [*setting, *stale]


def chunk_value(name: str, value: str, size: int = NEXTAUTH_V4_CHUNK_SIZE) -> list[tuple[str, str]]:
    """The ``(cookie name, value)`` pairs next-auth would set for ``value``."""
    if len(value) <= size:
        return [(name, value)]
    return [(f"{name}.{i}", value[start : start + size]) for i, start in enumerate(range(0, len(value), size))]
