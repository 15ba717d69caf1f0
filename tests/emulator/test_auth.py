"""Bearer token checks on the SEPA Export endpoints: 401 and 403 bodies."""

from __future__ import annotations

import httpx
import pytest

from airflow_provider_sepa.emulator.server import EmulatorServer

from .conftest import bearer, request_token, run_job

INVALID_TOKEN_BODY = {
    "fault": {"faultstring": "Invalid access token", "detail": {"errorcode": "oauth.v2.InvalidAccessToken"}}
}
FORBIDDEN_MESSAGE = "The access to the requested resource has been forbidden by the server."

# (method, path, JSON body) of each protected endpoint, with the scope it requires.
ENDPOINTS = {
    "sepaexport.job_view": ("GET", "/sepa-export/{tenant}/jobs?siteCode=main", None),
    "sepaexport.job_manage": ("POST", "/sepa-export/{tenant}/jobs", {"siteCode": "main"}),
    "sepaexport.media_view": ("GET", "/sepa-export/{tenant}/files/{file_id}", None),
}


def _call(
    client: httpx.Client, scope: str, headers: dict[str, str], tenant: str = "demo", file_id: str = "unknown"
) -> httpx.Response:
    method, path, body = ENDPOINTS[scope]
    return client.request(method, path.format(tenant=tenant, file_id=file_id), json=body, headers=headers)


@pytest.mark.parametrize("scope", sorted(ENDPOINTS))
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
    ],
    ids=["missing", "unknown", "basic scheme", "empty bearer"],
)
def test_invalid_token_401(shared_client: httpx.Client, scope: str, headers: dict[str, str]) -> None:
    response = _call(shared_client, scope, headers)

    assert response.status_code == 401
    assert response.json() == INVALID_TOKEN_BODY
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("required_scope", sorted(ENDPOINTS))
def test_missing_scope_403(shared_server: EmulatorServer, shared_client: httpx.Client, required_scope: str) -> None:
    other_scopes = " ".join(scope for scope in ENDPOINTS if scope != required_scope)
    headers = bearer(request_token(shared_server, scope=other_scopes))

    response = _call(shared_client, required_scope, headers)

    assert response.status_code == 403
    assert response.json() == {
        "status": "Bad request",
        "code": 403,
        "message": FORBIDDEN_MESSAGE,
        "details": ["Missing required scopes"],
    }
    assert shared_server.state.job_count() == 0


@pytest.mark.parametrize("required_scope", sorted(ENDPOINTS))
def test_granted_scope_passes(server: EmulatorServer, client: httpx.Client, required_scope: str) -> None:
    headers = bearer(request_token(server, scope=required_scope))

    response = _call(client, required_scope, headers)

    # The download of an unknown file id passes the auth checks and ends in 404.
    assert response.status_code in (200, 201, 404)
    assert response.status_code not in (401, 403)


@pytest.mark.parametrize("scope", sorted(ENDPOINTS))
def test_other_tenant_token_403(shared_server: EmulatorServer, shared_client: httpx.Client, scope: str) -> None:
    shared_server.state.add_client("other-client", "other-secret", tenant="other")
    form = {"grant_type": "client_credentials", "client_id": "other-client", "client_secret": "other-secret"}
    token_response = shared_client.post("/oauth/token", data=form)
    assert token_response.json()["scope"].startswith("tenant=other ")

    response = _call(shared_client, scope, bearer(token_response.json()["access_token"]), tenant="demo")

    assert response.status_code == 403
    assert response.json()["code"] == 403
    assert response.json()["details"] == ["Token tenant does not match the tenant in the path"]


@pytest.mark.parametrize("scope", sorted(ENDPOINTS))
def test_uppercase_tenant_403(shared_server: EmulatorServer, shared_client: httpx.Client, scope: str) -> None:
    response = _call(shared_client, scope, bearer(request_token(shared_server)), tenant="Demo")

    assert response.status_code == 403
    assert response.json()["details"] == ["Tenant in the path must be lowercase: Demo"]


def test_invalid_token_checked_before_tenant(shared_client: httpx.Client) -> None:
    response = shared_client.get("/sepa-export/Demo/jobs?siteCode=main")

    assert response.status_code == 401


def test_other_tenant_file_404(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    job = run_job(client, auth, "main")
    server.state.add_client("other-client", "other-secret", tenant="other")
    form = {"grant_type": "client_credentials", "client_id": "other-client", "client_secret": "other-secret"}
    other_headers = bearer(client.post("/oauth/token", data=form).json()["access_token"])

    response = client.get(f"/sepa-export/other/files/{job['fileId']}", headers=other_headers)

    assert response.status_code == 404
    assert response.json() == {"message": "Given resource has not been found."}
