"""``POST /api/auth/login`` takes ``application/json`` only.

An HTML form on another site can post ``text/plain`` (or urlencoded, or multipart) whose body
happens to be JSON; it can never send ``application/json`` without a CORS preflight. The CSRF
rule already stops such a form from another site; refusing every other media type (415) is a
second layer, and the backend's login never hears of the attempt.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import RunningGateway
from tests.fakes.backend import FakeBackend

Fetch = Callable[..., Any]
CREDENTIALS = b'{"username": "ada", "password": "correct horse"}'


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",  # what a cross-site <form enctype="text/plain"> sends
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/vnd.api+json",
        None,  # no Content-Type at all
    ],
)
async def test_a_login_that_is_not_application_json_is_415_and_never_reaches_the_backend(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await fetch(gateway.url + "/api/auth/login", method="POST", body=CREDENTIALS, headers=headers)

    assert response.code == 415
    assert json.loads(response.body) == {
        "error": "unsupported_media_type",
        "message": "Send the credentials as application/json.",
    }
    assert "Set-Cookie" not in response.headers
    assert backend.calls("/auth/login") == []


@pytest.mark.gen_test
@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
async def test_application_json_logins_are_accepted(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch, content_type: str
) -> None:
    response = await fetch(
        gateway.url + "/api/auth/login", method="POST", body=CREDENTIALS, headers={"Content-Type": content_type}
    )

    assert response.code == 200
    assert backend.calls("/auth/login")[0].body == CREDENTIALS


@pytest.mark.gen_test
async def test_a_cross_site_text_plain_login_is_refused_by_the_csrf_rule_first(
    gateway: RunningGateway, backend: FakeBackend, fetch: Fetch
) -> None:
    response = await fetch(
        gateway.url + "/api/auth/login",
        method="POST",
        body=CREDENTIALS,
        headers={"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    )

    assert response.code == 403
    assert json.loads(response.body)["error"] == "csrf_rejected"
    assert backend.calls("/auth/login") == []
