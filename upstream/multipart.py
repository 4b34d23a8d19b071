"""Adding a field of the gateway's own to a ``multipart/form-data`` body that streams through.

`FormField` makes the part to send ahead of the browser's body (a multipart body may begin
with any part) and watches the browser's parts go by, so the browser cannot send a field of
that name itself: the upstream would see two, and might believe the browser's.

The upstream must read the body exactly as the gateway does, so the rules are strict where
parsers differ: `boundary_of` accepts one plain ``boundary`` parameter of RFC 2046 characters
(no ``boundary*``, no duplicates) and the upstream gets a Content-Type the gateway wrote; the
browser's body must start with its first delimiter (no preamble to run into the gateway's
part); delimiters are recognised after any line break (CRLF, LF or CR), folded part headers are
unfolded, ``name*=`` is read too, and the epilogue after the close delimiter is still watched.
Only part headers are examined: file contents pass unread, and nothing is buffered beyond one
part's headers.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["ForbiddenField", "FormField", "boundary_of"]

MAX_PART_HEADERS = 16 * 1024
_BCHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")  # RFC 2046 bchars
_EOL = rb"(?:\r\n|\n|\r(?!\n))"  # a CRLF is one line break, never a CR and then an LF
_LINE_BREAK = re.compile(_EOL)


class ForbiddenField(ValueError):
    """The browser's body is not acceptable; ``str(exc)`` says why, for the client."""


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type with exactly one plain, valid
    ``boundary`` parameter; None for anything parsers could read differently."""
    media, *params = content_type.split(";")
    if media.strip().lower() != "multipart/form-data":
        return None
    boundaries = []
    for param in params:
        key, _, value = param.partition("=")
        key = key.strip().lower()
        if key.startswith("boundary"):  # boundary, and boundary* (RFC 2231): only the first is plain
            boundaries.append((key, value.strip()))
    if len(boundaries) != 1 or boundaries[0][0] != "boundary":
        return None
    value = boundaries[0][1]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value.encode("ascii") if _BCHARS.fullmatch(value) else None


class FormField:
    def __init__(self, boundary: bytes, name: str, value: str) -> None:
        self._name = name
        self._dashes = b"--" + boundary
        self._delimiter = re.compile(rb"(?:\r\n|\r|\n)" + re.escape(self._dashes))
        disposition = f'Content-Disposition: form-data; name="{name}"'.encode()
        self.content_type = f'multipart/form-data; boundary="{boundary.decode("ascii")}"'
        self.prefix = self._dashes + b"\r\n" + disposition + b"\r\n\r\n" + value.encode() + b"\r\n"
        self._tail = b""
        self._started = False
        self._in_headers = False

    def check(self, chunk: bytes) -> None:
        """Watch the next ``chunk`` of the browser's body; `ForbiddenField` if it names the field
        or does not begin with its first delimiter."""
        data = self._tail + chunk
        pos = 0
        if not self._started:
            if len(data) < len(self._dashes):
                self._tail = data
                return
            if not data.startswith(self._dashes):
                raise ForbiddenField("The form must begin with its first boundary.")
            self._started, self._in_headers, pos = True, True, len(self._dashes)
        while True:
            if self._in_headers:
                if len(data) - pos < 2:
                    break
                if data.startswith(b"--", pos):  # the close delimiter: no headers follow it
                    self._in_headers, pos = False, pos + 2
                    continue
                end = _end_of_headers(data, pos)
                if end < 0:
                    if len(data) - pos > MAX_PART_HEADERS:
                        raise ForbiddenField("A part of the form has headers that are too long.")
                    break
                self._check_headers(data[pos:end])
                self._in_headers, pos = False, end
            else:
                found = self._delimiter.search(data, pos)
                if found is None:
                    pos = max(pos, len(data) - len(self._dashes) - 1)
                    break
                self._in_headers, pos = True, found.end()
        self._tail = data[pos:]

    def _check_headers(self, block: bytes) -> None:
        # Unfold continuation lines (a line starting with a space or tab belongs to the one before).
        unfolded = re.sub(_EOL + rb"[ \t]+", b" ", block)
        for line in _LINE_BREAK.split(unfolded):
            header, _, value = line.partition(b":")
            if header.strip().lower() == b"content-disposition" and self._name in _field_names(value):
                raise ForbiddenField(f"The form may not carry a {self._name!r} field; the gateway sets it.")


_BLANK_LINE = re.compile(_EOL + _EOL)


def _end_of_headers(data: bytes, pos: int) -> int:
    """Where a part's body starts: after the blank line ending its headers; -1 if not seen yet.
    ``pos`` is just after a delimiter, whose own line end comes first."""
    found = _BLANK_LINE.search(data, pos)
    if found is None or (found.end() == len(data) and data.endswith(b"\r")):
        return -1  # a lone CR at the end may be half of a CRLF
    return found.end()


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
