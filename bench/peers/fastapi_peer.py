"""The ``fastapi`` peer: what a FastAPI backend-for-frontend of gatehouse's job looks like.

    BACKEND_URL=http://127.0.0.1:9100 SESSION_SECRET=... python bench/peers/fastapi_peer.py --port 9201

FastAPI on uvicorn (uvloop event loop, httptools parser, one worker, uvicorn's access log at
INFO as it ships), one shared ``httpx.AsyncClient`` with a connection pool, and the same work
per request as gatehouse's ``/api/proxy/<path>``: read the next-auth v4 session cookie, decrypt
it (``auth.nextauth``: the same HKDF key derived once + AES-256-GCM as gatehouse, so the crypto
is not what differs), send ``Authorization: Bearer <access_token>`` upstream with the browser's
other headers minus hop-by-hop ones, and stream both bodies (request body as it arrives,
response with ``StreamingResponse``). When the browser goes away the upstream response is
closed (the generator's ``finally``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from auth.jose import InvalidToken
from auth.nextauth import NextAuthV4Codec

__all__ = ["app", "main"]

COOKIE = "next-auth.session-token"
BACKEND = os.environ.get("BACKEND_URL", "http://127.0.0.1:9100").rstrip("/")
CODEC = NextAuthV4Codec(os.environ.get("SESSION_SECRET", "bench-secret-not-for-production-0123456789"))
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)
REQUEST_DROP = HOP_BY_HOP | {"cookie", "authorization", "host", "content-length", "expect"}
RESPONSE_DROP = HOP_BY_HOP | {"set-cookie"}
BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))

client: httpx.AsyncClient | None = None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global client
    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        timeout=httpx.Timeout(120.0, connect=5.0),
    )
    try:
        yield
    finally:
        await client.aclose()


app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)


@app.api_route("/api/proxy/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def proxy(path: str, request: Request) -> Response:
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return JSONResponse({"error": "unauthorized"}, status_code=401)
    try:
        claims = CODEC.decode(cookie)
    except InvalidToken:
        return JSONResponse({"error": "unauthorized"}, status_code=401)
    token = claims.get("access_token") or claims.get("accessToken")
    if not isinstance(token, str):
        return JSONResponse({"error": "unauthorized"}, status_code=401)
    headers = [(k, v) for k, v in request.headers.items() if k not in REQUEST_DROP]
    headers.append(("authorization", f"Bearer {token}"))
    headers.append(("x-forwarded-for", request.client.host if request.client else ""))
    if "content-length" in request.headers:
        headers.append(("content-length", request.headers["content-length"]))
    url = f"{BACKEND}/{path}"
    if request.url.query:
        url += f"?{request.url.query}"
    assert client is not None
    upstream_request = client.build_request(
        request.method,
        url,
        headers=headers,
        content=request.stream() if request.method in BODY_METHODS else None,
    )
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.HTTPError:
        return JSONResponse({"error": "upstream_failed"}, status_code=502)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()

    return StreamingResponse(
        body(),
        status_code=upstream.status_code,
        headers={k: v for k, v in upstream.headers.items() if k not in RESPONSE_DROP},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9201)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", log_level="info", backlog=4096)


if __name__ == "__main__":
    main()
