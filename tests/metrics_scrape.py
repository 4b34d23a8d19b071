"""`scrape`: what a Prometheus scraper reads from gatehouse's metrics listener, parsed by
``prometheus_client``'s own text parser.

`Scrape.value(name, **labels)` is one sample (0 when absent: a scraper treats a missing counter
as not yet counted), `Scrape.series` every sample's name and labels, `Scrape.labels_of(name)`
the label names a family's samples carry.
"""

from __future__ import annotations

import asyncio
import dataclasses

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Scrape", "SeriesKey", "scrape", "scrape_on"]

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclasses.dataclass
class Scrape:
    status: int
    content_type: str
    text: str
    samples: dict[SeriesKey, float]

    @classmethod
    def parse(cls, status: int, content_type: str, text: str) -> Scrape:
        samples: dict[SeriesKey, float] = {}
        if status == 200 and content_type.startswith("text/plain"):
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return cls(status, content_type, text, samples)

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, tuple(sorted(labels.items()))) in self.samples

    @property
    def series(self) -> set[SeriesKey]:
        return set(self.samples)

    def labels_of(self, name: str) -> set[tuple[str, ...]]:
        """The label names of each sample called ``name`` (``le`` included for buckets)."""
        return {tuple(label for label, _ in labels) for sample, labels in self.samples if sample == name}

    def gatehouse(self) -> dict[SeriesKey, float]:
        return {key: value for key, value in self.samples.items() if key[0].startswith("gatehouse_")}


async def scrape(host: str, port: int, path: str = "/metrics", accept: str | None = None) -> Scrape:
    """One ``GET`` on a fresh connection (``Connection: close``), read to its end."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        if accept is not None:
            lines.append(f"Accept: {accept}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    if not raw:
        raise ConnectionResetError("closed with no answer")
    head, _, body = raw.partition(b"\r\n\r\n")
    status, headers = _head(head)
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return Scrape.parse(status, headers.get("content-type", ""), body.decode())


async def scrape_on(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> Scrape:
    """One ``GET /metrics`` on a kept-alive connection (the answer has a ``Content-Length``)."""
    reader, writer = conn
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n")
    status, headers = _head(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return Scrape.parse(status, headers.get("content-type", ""), body.decode())


def _head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    return int(status_line.split(" ")[1]), headers


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        data = rest[size + 2 :]
