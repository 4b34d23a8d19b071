"""HTTPS upstreams (Dify's default URL is one): certificates are verified, answers relayed whole.

The upstream here is an asyncio TLS server with a certificate made for the test; the gateway's
client trusts it only where a test says so (``trusting``), as a deployment would trust its
CA. TLS protocols report the upstream's close straight after its last bytes, while those are
still being written to the browser: the answer must still end as a whole one.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import RunningGateway
from upstream import client as upstream_client

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Script = Callable[[Reader, Writer], Awaitable[None]]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatehouse test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def trusting(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's client trusts the test certificate (and verifies it, hostname included)."""
    context = ssl.create_default_context(cafile=str(certificate[0]))
    monkeypatch.setattr(upstream_client, "_TLS", context)


@pytest.fixture
def tls_upstream(
    io_loop: Any, certificate: tuple[Path, Path]
) -> Iterator[Callable[[Script], Awaitable[tuple[str, list[int]]]]]:
    """``await tls_upstream(script)``: an https URL answering each connection with ``script``,
    and a list that counts the connections."""
    servers: list[asyncio.Server] = []
    serving: set[asyncio.Task[None]] = set()

    async def start(script: Script) -> tuple[str, list[int]]:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*certificate)
        connections: list[int] = []

        async def serve(reader: Reader, writer: Writer) -> None:
            connections.append(1)
            task = asyncio.current_task()
            assert task is not None
            serving.add(task)
            try:
                await script(reader, writer)
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        return f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", connections

    yield start
    for server in servers:
        server.close()

    async def finish() -> None:
        # A connection the gateway keeps alive still has its script waiting for a request.
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)

    io_loop.run_sync(finish)


async def read_request(reader: Reader) -> str:
    head = await reader.readuntil(b"\r\n\r\n")
    return head.decode("latin-1").split(" ", 2)[1]


def answer(body: bytes, *headers: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


Fetch = Callable[..., Awaitable[Any]]


async def get(fetch: Fetch, gateway: RunningGateway, cookie: str, path: str) -> Any:
    return await fetch(f"{gateway.url}/api/proxy/{path}", headers={"Cookie": cookie})


@pytest.mark.parametrize(
    "framing",
    ["content-length", "chunked", "until-close"],
)
@pytest.mark.gen_test(timeout=10)
async def test_an_answer_the_upstream_closes_after_arrives_whole(
    framing: str,
    trusting: None,
    tls_upstream: Any,
    start_gateway: Any,
    fetch: Fetch,
    session_cookie: Any,
) -> None:
    body = json.dumps({"words": ["x" * 1000] * 200}).encode()  # several TLS records

    async def script(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        if framing == "content-length":
            writer.write(answer(body, f"Content-Length: {len(body)}", "Connection: close"))
        elif framing == "chunked":
            chunks = b"".join(
                b"%x\r\n%b\r\n" % (len(body[i : i + 4096]), body[i : i + 4096]) for i in range(0, len(body), 4096)
            )
            writer.write(answer(chunks + b"0\r\n\r\n", "Transfer-Encoding: chunked", "Connection: close"))
        else:
            writer.write(answer(body, "Connection: close"))
        await writer.drain()
        writer.close()  # TLS close_notify, then FIN
        await writer.wait_closed()

    url, _ = await tls_upstream(script)
    gateway = start_gateway(url)
    response = await get(fetch, gateway, session_cookie(), "data")

    assert response.code == 200
    assert response.body == body


@pytest.mark.gen_test(timeout=10)
async def test_events_are_relayed_over_tls_and_connections_are_kept_alive(
    trusting: None, tls_upstream: Any, start_gateway: Any, fetch: Fetch, session_cookie: Any
) -> None:
    async def script(reader: Reader, writer: Writer) -> None:
        while True:
            path = await read_request(reader)
            if path == "/events":
                events = b"".join(b"data: %d\n\n" % n for n in range(3))
                writer.write(
                    answer(b"", "Transfer-Encoding: chunked").replace(b"application/json", b"text/event-stream")
                    + b"%x\r\n%b\r\n0\r\n\r\n" % (len(events), events)
                )
            else:
                writer.write(answer(b"{}", "Content-Length: 2"))
            await writer.drain()

    url, connections = await tls_upstream(script)
    gateway = start_gateway(url)
    cookie = session_cookie()

    first = await get(fetch, gateway, cookie, "a")
    second = await get(fetch, gateway, cookie, "b")
    events = await get(fetch, gateway, cookie, "events")

    assert first.code == second.code == 200 and first.body == b"{}"
    assert events.code == 200 and events.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert len(connections) == 1  # one TLS handshake for three requests


@pytest.mark.gen_test(timeout=10)
async def test_an_upstream_certificate_nobody_vouches_for_is_refused(
    tls_upstream: Any, start_gateway: Any, fetch: Fetch, session_cookie: Any
) -> None:
    async def script(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(answer(b'{"secret": "the backend answered"}', "Content-Length: 34"))
        await writer.drain()

    url, _ = await tls_upstream(script)  # the client's default trust: the system's CAs only
    gateway = start_gateway(url)
    response = await get(fetch, gateway, session_cookie(), "data")

    assert response.code == 502
    assert json.loads(response.body)["error"] == "bad_gateway"
    assert b"secret" not in response.body
