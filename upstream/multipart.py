"""Adding a field of the gateway's own to a ``multipart/form-data`` body that streams through.

`FormField` makes the part to send ahead of the browser's body (a multipart body may begin
with any part) and watches the browser's parts go by, so the browser cannot send a field of
that name itself: the upstream would see two, and might believe the browser's.

A guard that reads a body differently from the upstream does not guard it, and parsers differ
wherever RFC 7578 leaves room: Tornado splits at ``--boundary CRLF`` anywhere, reads to the
*last* close delimiter, and takes a bare LF as a line break and unfolds folded headers;
python-multipart (Starlette) and Werkzeug (Dify) each have their own leniencies. So the guard
accepts only the one form every parser reads alike, the one browsers send, and refuses the rest:

* the Content-Type has one plain ``boundary`` parameter of RFC 2046 characters (`boundary_of`),
  and the upstream gets a Content-Type the gateway wrote;
* the body starts with its first delimiter (no preamble to run into the gateway's part);
* ``--boundary`` appears only as a delimiter: at the start or right after a CRLF, and followed by
  CRLF (a part begins) or ``--`` (the form ends);
* a part's header block ends at the first CRLF CRLF and holds no bare CR or LF, no NUL, no
  folded line and no header without a colon; it has exactly one ``Content-Disposition``, of
  ``form-data``, in RFC 7578's exact grammar (tokens and quoted strings without escapes; no
  ``name*0=`` continuations) and naming at most one field (``name=`` or RFC 2231's ``name*=``);
  that name may not be the gateway's;
* nothing but a CRLF follows the close delimiter (no epilogue).

Only part headers and delimiters are examined: file contents pass unread, and nothing is held
beyond one part's headers. `FormField` is a parser that does no I/O: it is fed chunks.
"""

from __future__ import annotations

import enum
import re
import urllib.parse

__all__ = ["ForbiddenField", "FormField", "boundary_of"]

MAX_PART_HEADERS = 16 * 1024
_BCHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")  # RFC 2046 bchars
_CONTINUATION = re.compile(rb"name\*[0-9]+\*?")  # RFC 2231: name*0=, name*1*=, ...
_TCHARS = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # an RFC 9110 token
_TOKEN = re.compile(_TCHARS)
_QUOTED = rb'"[^"\\\x00-\x08\x0a-\x1f\x7f]*"'  # no escapes: browsers percent-encode '"'
_PARAMETER = re.compile(rb"[ \t]*;[ \t]*(" + _TCHARS + rb")=(" + _TCHARS + rb"|" + _QUOTED + rb")")
_DISPOSITION = re.compile(rb"[ \t]*" + _TCHARS + rb"(?:" + _PARAMETER.pattern + rb")*[ \t]*")
_CRLF = b"\r\n"
_END_OF_HEADERS = b"\r\n\r\n"


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


class _At(enum.Enum):
    FIRST_DELIMITER = "first delimiter"
    HEADERS = "headers"
    CONTENT = "content"
    END = "after the close delimiter"


class FormField:
    def __init__(self, boundary: bytes, name: str, value: str) -> None:
        self._name = name
        self._dashes = b"--" + boundary
        disposition = f'Content-Disposition: form-data; name="{name}"'.encode()
        self.content_type = f'multipart/form-data; boundary="{boundary.decode("ascii")}"'
        self.prefix = self._dashes + _CRLF + disposition + _CRLF + _CRLF + value.encode() + _CRLF
        self._at = _At.FIRST_DELIMITER
        self._pending = b""  # what could not be judged yet: the start of a delimiter or a header block

    def check(self, chunk: bytes) -> None:
        """Watch the next ``chunk`` of the browser's body; `ForbiddenField` if the form breaks
        one of the module's rules or names the gateway's field."""
        data = self._pending + chunk
        pos, more = 0, True
        while more:
            pos, more = self._step(data, pos)
        self._pending = data[pos:]

    def _step(self, data: bytes, pos: int) -> tuple[int, bool]:
        """Judge what starts at ``pos``: where to go on from and True, or where to keep the bytes
        from and False when more are needed to judge them."""
        if self._at is _At.FIRST_DELIMITER:
            if len(data) - pos < len(self._dashes) + 2:
                return pos, False
            if not data.startswith(self._dashes, pos):
                raise ForbiddenField("The form must begin with its first boundary.")
            return self._after_delimiter(data, pos + len(self._dashes)), True
        if self._at is _At.HEADERS:
            if data.startswith(_CRLF, pos):
                raise ForbiddenField("Each part of the form needs exactly one Content-Disposition.")
            end = data.find(_END_OF_HEADERS, pos)
            if end < 0:
                if len(data) - pos > MAX_PART_HEADERS:
                    raise ForbiddenField("A part of the form has headers that are too long or never end.")
                # Judge the lines so far now: a body that ends before its headers do must not
                # pass unjudged (a final CR may be half of a CRLF).
                self._check_header_bytes(data[pos:].removesuffix(b"\r"))
                return pos, False
            self._check_headers(data[pos:end])
            self._at = _At.CONTENT
            return end + len(_END_OF_HEADERS), True
        if self._at is _At.CONTENT:
            found = data.find(self._dashes, pos)
            if found < 0:  # keep what may be the start of a CRLF and delimiter split across chunks
                return max(pos, len(data) - len(self._dashes) - 1), False
            # The CRLF before a delimiter is the content's own: never the end of the part's headers.
            if found - 2 < pos or data[found - 2 : found] != _CRLF:
                raise ForbiddenField("The form's boundary appears where no part begins.")
            if len(data) - found < len(self._dashes) + 2:
                return found - 2, False
            return self._after_delimiter(data, found + len(self._dashes)), True
        if not _CRLF.startswith(data[pos:]):  # _At.END
            raise ForbiddenField("Nothing may follow the form's closing boundary.")
        return pos, False

    def _after_delimiter(self, data: bytes, pos: int) -> int:
        after = data[pos : pos + 2]
        if after == _CRLF:
            self._at = _At.HEADERS
        elif after == b"--":
            self._at = _At.END
        else:
            raise ForbiddenField("The form's boundary appears where no part begins.")
        return pos + 2

    def _check_header_bytes(self, block: bytes) -> None:
        lone = block.replace(_CRLF, b"")
        if b"\0" in block or b"\r" in lone or b"\n" in lone:
            raise ForbiddenField("A part of the form has a line break other than CRLF in its headers.")
        if self._dashes in block:
            raise ForbiddenField("The form's boundary appears where no part begins.")

    def _check_headers(self, block: bytes) -> None:
        self._check_header_bytes(block)
        dispositions = []
        for line in block.split(_CRLF):
            header, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(header):
                raise ForbiddenField("A part of the form has a malformed or folded header.")
            if header.lower() == b"content-disposition":
                dispositions.append(value)
        if len(dispositions) != 1:
            raise ForbiddenField("Each part of the form needs exactly one Content-Disposition.")
        kind, names = _disposition(dispositions[0])
        if kind != "form-data" or len(names) > 1:
            raise ForbiddenField("A part of the form has a Content-Disposition parsers could read differently.")
        if self._name in names:
            raise ForbiddenField(f"The form may not carry a {self._name!r} field; the gateway sets it.")


def _disposition(value: bytes) -> tuple[str, set[str]]:
    """The disposition type and the field names of a Content-Disposition value that is exactly
    ``type *(OWS ";" OWS token "=" (token / quoted-string))``; `ForbiddenField` for anything
    else. Parsers disagree on what lies outside that grammar (a ``\\"`` outside quotes, Unicode
    spaces that ``str.strip`` removes, RFC 2231 continuations ``name*0=`` that Tornado and
    Werkzeug join and python-multipart does not), so none of it is accepted. Browsers send
    ``"``, CR and LF in names and filenames percent-encoded, and nothing else this refuses."""
    if not _DISPOSITION.fullmatch(value):
        raise ForbiddenField("A part of the form has a Content-Disposition parsers could read differently.")
    kind = value.split(b";", 1)[0].strip().decode("ascii").lower()
    names = set()
    for key, raw in _PARAMETER.findall(value):
        key = key.lower()
        text = raw[1:-1] if raw.startswith(b'"') else raw
        if key == b"name":
            names.add(text.decode("latin-1"))
        elif key == b"name*":
            names.add(urllib.parse.unquote(text.decode("latin-1").split("'", 2)[-1]))
        elif _CONTINUATION.fullmatch(key):
            raise ForbiddenField("A part of the form has a Content-Disposition parsers could read differently.")
    return kind, names
