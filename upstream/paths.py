"""Turning the browser's ``/api/proxy/<path>`` into a backend path that cannot escape.

The path is judged on its raw, still-percent-encoded form, because Tornado's decoded route
arguments can no longer tell ``a%2Fb`` from ``a/b``. A `BackendPath` keeps both forms: the
``raw`` one is what the backend receives (so encoded characters reach it unchanged), the
``decoded`` one is what access rules such as ``PUBLIC_PATHS`` are matched against.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse

__all__ = ["BackendPath", "InvalidPath", "parse_backend_path"]

# RFC 3986 pchar, plus "%" for escapes (checked separately) and "/" between segments.
_RAW_ALLOWED = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_DECODINGS = 4  # the raw form and up to three decodings


class InvalidPath(ValueError):
    """The path is unsafe to forward. ``str(exc)`` is safe to show the client."""


@dataclasses.dataclass(frozen=True, slots=True)
class BackendPath:
    raw: str  # without a leading slash, as received (percent-encoding intact)
    decoded: str  # segments percent-decoded, for matching rules

    def is_under(self, prefixes: tuple[str, ...]) -> bool:
        """Whether the path is one of ``prefixes`` or below one, on segment boundaries."""
        return any(self.decoded == p or self.decoded.startswith(p + "/") for p in prefixes)


def parse_backend_path(raw: str) -> BackendPath:
    """Validate the raw path after ``/api/proxy/``.

    Rejected: empty paths and empty segments (``//``; one trailing slash is allowed, since
    many backends need it), ``.`` and ``..`` segments however encoded (also double-encoded),
    backslashes, encoded ``/`` or ``\\``, control characters, malformed ``%`` escapes and
    characters outside RFC 3986's path alphabet.
    """
    if not raw:
        raise InvalidPath("A backend path is required after /api/proxy/.")
    if _RAW_ALLOWED.fullmatch(raw) is None:
        raise InvalidPath("The path contains characters that are not allowed.")
    if _BAD_ESCAPE.search(raw):
        raise InvalidPath("The path contains a malformed percent-escape.")
    segments = raw.split("/")
    if segments[-1] == "" and len(segments) > 1:
        segments.pop()  # one trailing slash
    decoded_segments = []
    for segment in segments:
        if segment == "":
            raise InvalidPath("The path contains an empty segment (//).")
        decoded = _check_segment(segment)
        decoded_segments.append(decoded)
    return BackendPath(raw=raw, decoded="/".join(decoded_segments))


def _check_segment(segment: str) -> str:
    """The decoded segment, if no decoding of it (a backend may decode more than once, so
    ``%252e%252e`` is checked as ``..`` too) is a dot segment or holds a separator or control
    character. ``..;x`` counts as ``..``: Java servers strip ``;`` path parameters first."""
    decoded = form = segment
    for depth in range(_MAX_DECODINGS):
        if depth:
            if "%" not in form:
                break
            try:
                form = urllib.parse.unquote(form, errors="strict")
            except UnicodeDecodeError:
                raise InvalidPath("The path contains a percent-escape that is not UTF-8.") from None
            if depth == 1:
                decoded = form
        if form.split(";", 1)[0] in (".", "..") or "/" in form or "\\" in form or _CONTROL.search(form):
            raise InvalidPath("The path contains a dot segment, an encoded separator or a control character.")
    return decoded
