"""Two real multipart parsers, to hold the upload guard (upstream/multipart.py) to: Tornado's
``parse_body_arguments`` (the fake and demo Dify's) and ``python_multipart`` driven as
Starlette's ``MultiPartParser`` drives it. Each returns the fields it reads, in order, or None
when it refuses the body."""

from __future__ import annotations

import dataclasses
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from tornado.httputil import HTTPFile, HTTPInputError, parse_body_arguments

__all__ = ["PARSERS", "Fields", "starlette_fields", "tornado_fields"]

Fields = list[tuple[str, bytes]]


def tornado_fields(content_type: str, body: bytes) -> Fields | None:
    """The fields Tornado's parser reads (files included), None when it refuses the body."""
    arguments: dict[str, list[bytes]] = {}
    files: dict[str, list[HTTPFile]] = {}
    try:
        parse_body_arguments(content_type, body, arguments, files)
    except HTTPInputError:
        return None
    return [(k, v) for k, vs in arguments.items() for v in vs] + [(k, f.body) for k, fs in files.items() for f in fs]


@dataclasses.dataclass
class _Part:
    field: bytes = b""
    value: bytes = b""
    data: bytes = b""
    name: str = ""
    headers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)


def starlette_fields(content_type: str, body: bytes) -> Fields | None:
    """The fields ``python_multipart`` yields driven as Starlette's ``MultiPartParser`` drives
    it (header names lower-cased, the last Content-Disposition wins, a part without ``name``
    refuses the form), None when the form is refused."""
    _, params = parse_options_header(content_type)
    if b"boundary" not in params:
        return None
    fields: Fields = []
    part = _Part()

    def on_part_begin() -> None:
        nonlocal part
        part = _Part()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part.data += data[start:end]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.value += data[start:end]

    def on_header_end() -> None:
        part.headers.append((part.field.lower(), part.value))
        part.field = part.value = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(dict(part.headers).get(b"content-disposition"))
        raw = options[b"name"]  # KeyError: Starlette refuses the form
        try:
            part.name = raw.decode("utf-8")
        except UnicodeDecodeError:
            part.name = raw.decode("latin-1")

    def on_part_end() -> None:
        fields.append((part.name, part.data))

    callbacks: Any = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(params[b"boundary"], callbacks)
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, KeyError):
        return None
    return fields


PARSERS = {"tornado": tornado_fields, "python_multipart": starlette_fields}
