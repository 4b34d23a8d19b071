"""Adding a field of the gateway's own to a ``multipart/form-data`` body that streams through.

`FormField` makes the part to send ahead of the browser's body (a multipart body may begin
with any part) and watches the browser's parts go by, so the browser cannot send a field of
that name itself: the upstream would see two, and might believe the browser's. Only part
headers are examined (file contents pass unread), nothing is buffered beyond one part's
headers, and the epilogue after the close delimiter is watched too, since parsers differ on
where a body ends.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["ForbiddenField", "FormField", "boundary_of"]

MAX_PART_HEADERS = 16 * 1024
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)


class ForbiddenField(ValueError):
    """The browser's body is not acceptable; ``str(exc)`` says why, for the client."""


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type, else None (also when it names two,
    which parsers would choose between differently)."""
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        return None
    matches = _BOUNDARY.findall(content_type)
    if len(matches) != 1:
        return None
    boundary: str = matches[0][0] or matches[0][1]
    return boundary.encode("latin-1") if boundary.isascii() else None


class FormField:
    def __init__(self, boundary: bytes, name: str, value: str) -> None:
        self._name = name
        self._delimiter = b"\r\n--" + boundary
        disposition = f'Content-Disposition: form-data; name="{name}"'.encode()
        self.prefix = b"--" + boundary + b"\r\n" + disposition + b"\r\n\r\n" + value.encode() + b"\r\n"
        self._tail = b"\r\n"  # the body's first delimiter has no line end before it: pretend one
        self._in_headers = False

    def check(self, chunk: bytes) -> None:
        """Watch the next ``chunk`` of the browser's body; `ForbiddenField` if it names the field."""
        data = self._tail + chunk
        pos = 0
        while True:
            if self._in_headers:
                if len(data) - pos < 2:
                    break
                if data.startswith(b"--", pos):  # the close delimiter: no headers follow it
                    self._in_headers, pos = False, pos + 2
                    continue
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if len(data) - pos > MAX_PART_HEADERS:
                        raise ForbiddenField("A part of the form has headers that are too long.")
                    break
                self._check_headers(data[pos:end])
                self._in_headers, pos = False, end + 4
            else:
                found = data.find(self._delimiter, pos)
                if found < 0:
                    pos = max(pos, len(data) - len(self._delimiter) + 1)
                    break
                self._in_headers, pos = True, found + len(self._delimiter)
        self._tail = data[pos:]

    def _check_headers(self, block: bytes) -> None:
        for line in block.split(b"\r\n"):
            header, _, value = line.partition(b":")
            if header.strip().lower() == b"content-disposition" and self._name in _field_names(value):
                raise ForbiddenField(f"The form may not carry a {self._name!r} field; the gateway sets it.")


def _field_names(disposition: bytes) -> set[str]:
    """Every field name a parser could read from a Content-Disposition value: ``name=`` (quoted
    or not) and RFC 2231's ``name*=charset'lang'percent-encoded``. A ``;`` inside a quoted value
    may yield an extra candidate: that only errs on the side of refusing."""
    names = set()
    for param in disposition.decode("latin-1").split(";")[1:]:
        key, _, value = param.partition("=")
        key, value = key.strip().lower(), value.strip().strip('"')
        if key == "name":
            names.add(value)
        elif key == "name*":
            names.add(urllib.parse.unquote(value.split("'", 2)[-1]))
    return names
