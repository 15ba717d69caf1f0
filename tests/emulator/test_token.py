"""Token endpoint: form parsing, client authentication, scopes and expiry."""

from __future__ import annotations

import httpx
import pytest

from airflow_provider_sepa.emulator.server import EmulatorServer

from .conftest import FakeClock, bearer, request_token

ALL_SCOPES_TEXT = "sepaexport.job_view sepaexport.job_manage sepaexport.media_view"


def _token_form(server: EmulatorServer, **overrides: str) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": server.config.client_id,
        "client_secret": server.config.client_secret,
    }
    form.update(overrides)
    return form


def test_token_success_body(server: EmulatorServer, client: httpx.Client) -> None:
    response = client.post("/oauth/token", data=_token_form(server))

    assert response.status_code == 200
    body = response.json()
    assert len(body["access_token"]) >= 40
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 14399
    assert body["session_idle_time"] == 120
    assert body["refresh_token"] == ""
    assert body["refresh_token_expires_in"] == 0
    assert body["scope"] == f"tenant=demo {ALL_SCOPES_TEXT}"
    assert response.headers["cache-control"] == "no-store"


def test_token_values_are_unique(server: EmulatorServer) -> None:
    tokens = {request_token(server) for _ in range(5)}

    assert len(tokens) == 5
    assert tokens == set(server.state.issued_tokens())


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_secret": "wrong-secret"},
        {"client_id": "unknown-client"},
        {"client_secret": ""},
    ],
    ids=["wrong secret", "unknown client", "empty secret"],
)
def test_token_invalid_client_401(server: EmulatorServer, client: httpx.Client, overrides: dict[str, str]) -> None:
    response = client.post("/oauth/token", data=_token_form(server, **overrides))

    assert response.status_code == 401
    assert response.json() == {
        "fault": {
            "faultstring": "Invalid client identifier",
            "detail": {"errorcode": "oauth.v2.InvalidClientIdentifier"},
        }
    }
    assert server.state.issued_tokens() == []


def test_token_missing_credentials_401(client: httpx.Client) -> None:
    response = client.post("/oauth/token", data={"grant_type": "client_credentials"})

    assert response.status_code == 401
    assert response.json()["fault"]["detail"]["errorcode"] == "oauth.v2.InvalidClientIdentifier"


def test_token_json_body_rejected(server: EmulatorServer, client: httpx.Client) -> None:
    response = client.post("/oauth/token", json=_token_form(server))

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert server.state.issued_tokens() == []


def test_token_credentials_in_query_ignored(server: EmulatorServer, client: httpx.Client) -> None:
    response = client.post(
        "/oauth/token", params=_token_form(server), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_token_unsupported_grant_type(server: EmulatorServer, client: httpx.Client) -> None:
    response = client.post("/oauth/token", data=_token_form(server, grant_type="password"))

    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_token_missing_grant_type(server: EmulatorServer, client: httpx.Client) -> None:
    form = _token_form(server)
    del form["grant_type"]

    response = client.post("/oauth/token", data=form)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_token_requested_scope_subset(server: EmulatorServer, client: httpx.Client) -> None:
    response = client.post("/oauth/token", data=_token_form(server, scope="sepaexport.media_view sepaexport.job_view"))

    assert response.status_code == 200
    assert response.json()["scope"] == "tenant=demo sepaexport.job_view sepaexport.media_view"


def test_token_blank_scope_grants_all(server: EmulatorServer, client: httpx.Client) -> None:
    response = client.post("/oauth/token", data=_token_form(server, scope=""))

    assert response.status_code == 200
    assert response.json()["scope"] == f"tenant=demo {ALL_SCOPES_TEXT}"


@pytest.mark.parametrize("scope", ["sepaexport.admin", "sepaexport.job_view orders.order_read"])
def test_token_unknown_scope_rejected(server: EmulatorServer, client: httpx.Client, scope: str) -> None:
    response = client.post("/oauth/token", data=_token_form(server, scope=scope))

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


def test_token_scope_not_assigned_rejected(start_server) -> None:
    server = start_server(client_scopes=("sepaexport.job_view",))

    response = httpx.post(
        f"{server.url}/oauth/token", data=_token_form(server, scope="sepaexport.job_manage"), timeout=10.0
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


def test_token_expires_with_clock(start_server) -> None:
    clock = FakeClock()
    server = start_server(clock=clock, token_lifetime_seconds=60)
    headers = bearer(request_token(server))
    url = f"{server.url}/sepa-export/demo/jobs?siteCode=main"

    clock.advance(59)
    assert httpx.get(url, headers=headers).status_code == 200

    clock.advance(1)
    response = httpx.get(url, headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "fault": {
            "faultstring": "Access Token expired",
            "detail": {"errorcode": "keymanagement.service.access_token_expired"},
        }
    }


def test_expire_tokens_rejects_as_expired(server: EmulatorServer, client: httpx.Client) -> None:
    headers = bearer(request_token(server))

    assert server.state.expire_tokens() == 1
    response = client.get("/sepa-export/demo/jobs", params={"siteCode": "main"}, headers=headers)

    assert response.status_code == 401
    assert response.json()["fault"]["faultstring"] == "Access Token expired"


def test_revoke_tokens_rejects_as_invalid(server: EmulatorServer, client: httpx.Client) -> None:
    headers = bearer(request_token(server))

    assert server.state.revoke_tokens() == 1
    response = client.get("/sepa-export/demo/jobs", params={"siteCode": "main"}, headers=headers)

    assert response.status_code == 401
    assert response.json()["fault"]["faultstring"] == "Invalid access token"


def test_new_token_after_expiry_works(server: EmulatorServer, client: httpx.Client) -> None:
    request_token(server)
    server.state.expire_tokens()

    headers = bearer(request_token(server))
    response = client.get("/sepa-export/demo/jobs", params={"siteCode": "main"}, headers=headers)

    assert response.status_code == 200
