"""Tests of the sync hook's connection settings, token handling and re-authentication."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs

import pytest

from airflow_provider_sepa.core import endpoints
from airflow_provider_sepa.core.errors import (
    SepaExportAuthError,
    SepaExportConfigError,
    SepaExportResponseError,
    SepaExportScopeError,
)
from airflow_provider_sepa.core.payloads import TOKEN_CACHE, AccessToken
from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

SITE_CODE = "main"
JOB_LIST = [{"jobId": "job-1", "active": True}]
BODY_401 = {"fault": {"faultstring": "Invalid access token", "detail": {"errorcode": "oauth.v2.InvalidAccessToken"}}}
BODY_403 = {
    "status": "Bad request",
    "code": 403,
    "message": "The access to the requested resource has been forbidden by the server.",
    "details": ["Missing required scopes"],
}


def connection(**fields) -> str:
    """Return a connection JSON with the test values and ``fields`` replaced."""
    values = {
        "conn_type": "emporix",
        "host": "https://api.example.test",
        "login": "client-id",
        "password": "s3cret-value",
        "extra": {"tenant": "acme"},
    }
    values.update(fields)
    return json.dumps(values)


def calls_to(requests_mock, method: str, url: str) -> list:
    """Return the recorded requests with the given method whose URL, without query, is ``url``."""
    return [call for call in requests_mock.request_history if call.method == method and call.url.split("?")[0] == url]


class TestSepaExportHookSettings:
    def test_settings_from_environment(self, hook, api):
        settings = hook.settings

        assert settings.base_url == api.base_url
        assert settings.client_id == api.client_id
        assert settings.client_secret == api.client_secret
        assert settings.tenant == api.tenant

    def test_settings_unknown_connection(self, requests_mock):
        hook = SepaExportHook("emporix_missing")

        with pytest.raises(SepaExportConfigError) as caught:
            hook.list_jobs(SITE_CODE)

        assert "'emporix_missing' is not defined" in str(caught.value)
        assert "AIRFLOW_CONN_EMPORIX_MISSING" in str(caught.value)
        assert requests_mock.call_count == 0

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            ({"tenant": "Acme"}, "Set 'tenant' to 'acme'"),
            ({"tenant": ""}, "has no tenant"),
            ({}, "has no tenant"),
        ],
        ids=["uppercase", "empty", "missing"],
    )
    def test_settings_bad_tenant_before_request(self, monkeypatch, requests_mock, extra, message):
        monkeypatch.setenv("AIRFLOW_CONN_EMPORIX_DEFAULT", connection(extra=extra))
        hook = SepaExportHook()

        with pytest.raises(SepaExportConfigError, match=message):
            hook.list_jobs(SITE_CODE)

        assert requests_mock.call_count == 0

    def test_settings_missing_password_before_request(self, monkeypatch, requests_mock):
        monkeypatch.setenv("AIRFLOW_CONN_EMPORIX_DEFAULT", connection(password=None))

        with pytest.raises(SepaExportConfigError, match="has no client secret"):
            SepaExportHook().get_token()

        assert requests_mock.call_count == 0

    def test_settings_repr_hides_secret(self, hook, api):
        assert api.client_secret not in repr(hook.settings)


class TestSepaExportHookToken:
    def test_token_request_form_body(self, hook, api, token_endpoint):
        hook.get_token()
        request = token_endpoint.matcher.last_request

        assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert parse_qs(request.text, strict_parsing=True) == {
            "grant_type": ["client_credentials"],
            "client_id": [api.client_id],
            "client_secret": [api.client_secret],
        }

    def test_token_request_has_no_authorization(self, hook, token_endpoint):
        hook.get_token()

        assert "Authorization" not in token_endpoint.matcher.last_request.headers

    def test_token_request_with_scope(self, monkeypatch, api, token_endpoint):
        scope = "sepaexport.job_view sepaexport.media_view"
        monkeypatch.setenv("AIRFLOW_CONN_EMPORIX_DEFAULT", connection(extra={"tenant": "acme", "scope": scope}))

        SepaExportHook().get_token()

        assert parse_qs(token_endpoint.matcher.last_request.text)["scope"] == [scope]

    def test_token_returned_value(self, hook, token_endpoint):
        assert hook.get_token() == token_endpoint.issued[0]

    def test_token_sent_as_bearer(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=JOB_LIST)

        hook.list_jobs(SITE_CODE)

        assert (
            calls_to(requests_mock, "GET", api.jobs_url)[0].headers["Authorization"]
            == f"Bearer {token_endpoint.issued[0]}"
        )

    def test_token_reused_across_calls(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=JOB_LIST)

        hook.list_jobs(SITE_CODE)
        hook.list_jobs(SITE_CODE)

        assert token_endpoint.call_count == 1
        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 2

    def test_token_shared_between_hooks(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=JOB_LIST)

        hook.list_jobs(SITE_CODE)
        SepaExportHook().list_jobs(SITE_CODE)

        assert token_endpoint.call_count == 1

    def test_token_cached_value_used(self, hook, requests_mock, token_endpoint):
        TOKEN_CACHE.put(
            hook.settings, AccessToken(value="cached-token-value", refresh_at=time.monotonic() + 600, lifetime=3600)
        )

        assert hook.get_token() == "cached-token-value"
        assert token_endpoint.call_count == 0

    def test_token_refetched_near_expiry(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=JOB_LIST)
        hook.list_jobs(SITE_CODE)
        cached = TOKEN_CACHE.get(hook.settings)
        # The refresh time passing is what happens when less than the refresh margin remains.
        TOKEN_CACHE.put(
            hook.settings,
            AccessToken(value=cached.value, refresh_at=time.monotonic() - 0.001, lifetime=cached.lifetime),
        )

        hook.list_jobs(SITE_CODE)
        api_calls = calls_to(requests_mock, "GET", api.jobs_url)

        assert token_endpoint.call_count == 2
        assert api_calls[1].headers["Authorization"] == f"Bearer {token_endpoint.issued[1]}"

    def test_token_same_body_on_refetch(self, hook, token_endpoint):
        hook.get_token()
        TOKEN_CACHE.clear()
        hook.get_token()
        bodies = [call.text for call in token_endpoint.matcher.request_history]

        assert len(bodies) == 2
        assert bodies[0] == bodies[1]

    def test_token_refresh_at_from_expires_in(self, hook, token_endpoint):
        before = time.monotonic()
        hook.get_token()
        after = time.monotonic()
        token = TOKEN_CACHE.get(hook.settings)

        assert before + 14399 - 60 <= token.refresh_at <= after + 14399 - 60

    def test_token_missing_access_token(self, hook, api, requests_mock):
        requests_mock.post(api.token_url, json={"token_type": "Bearer", "expires_in": 3600})

        with pytest.raises(SepaExportResponseError, match="no access_token"):
            hook.get_token()

    def test_token_non_bearer_type(self, hook, api, requests_mock):
        requests_mock.post(api.token_url, json={"access_token": "mac-token-value", "token_type": "mac"})

        with pytest.raises(SepaExportResponseError, match="unsupported token_type 'mac'"):
            hook.get_token()

    def test_token_missing_expires_in_fallback(self, hook, api, requests_mock):
        requests_mock.post(api.token_url, json={"access_token": "short-lived-token"})
        before = time.monotonic()

        hook.get_token()
        token = TOKEN_CACHE.get(hook.settings)

        assert token.lifetime == 300
        assert token.refresh_at <= time.monotonic() + 270
        assert token.refresh_at >= before + 270

    def test_token_non_json_body_not_quoted(self, hook, api, requests_mock):
        requests_mock.post(api.token_url, text="access_token=form-encoded-token-value&token_type=bearer")

        with pytest.raises(SepaExportResponseError) as caught:
            hook.get_token()

        assert "not JSON" in str(caught.value)
        assert "form-encoded-token-value" not in str(caught.value)
        assert f"client {api.client_id}" in str(caught.value)

    @pytest.mark.parametrize(
        ("status", "body", "hint"),
        [
            (401, {"error": "invalid_client"}, "client secret (Password)"),
            (400, {"error": "invalid_scope"}, "extra 'scope'"),
        ],
        ids=["401-credentials", "400-scope"],
    )
    def test_token_rejected(self, hook, api, requests_mock, status, body, hint):
        requests_mock.post(api.token_url, status_code=status, json=body)

        with pytest.raises(SepaExportAuthError) as caught:
            hook.get_token()

        message = str(caught.value)
        assert endpoints.TOKEN_ENDPOINT in message
        assert f"HTTP {status}" in message
        assert f"client {api.client_id}" in message
        assert hint in message
        assert api.client_secret not in message
        assert requests_mock.call_count == 1

    def test_token_endpoint_5xx_retried(self, hook, api, requests_mock, sleeps):
        requests_mock.post(
            api.token_url,
            [{"status_code": 503, "text": "busy"}, {"json": {"access_token": "after-retry-token", "expires_in": 60}}],
        )

        assert hook.get_token() == "after-retry-token"
        assert len(sleeps) == 1


class TestSepaExportHookReauthentication:
    def test_401_fetches_new_token_and_repeats(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, [{"status_code": 401, "json": BODY_401}, {"json": JOB_LIST}])

        jobs = hook.list_jobs(SITE_CODE)
        api_calls = calls_to(requests_mock, "GET", api.jobs_url)

        assert [job.job_id for job in jobs] == ["job-1"]
        assert token_endpoint.call_count == 2
        assert len(api_calls) == 2
        assert api_calls[0].headers["Authorization"] == f"Bearer {token_endpoint.issued[0]}"
        assert api_calls[1].headers["Authorization"] == f"Bearer {token_endpoint.issued[1]}"

    def test_401_does_not_sleep(self, hook, api, requests_mock, token_endpoint, sleeps):
        requests_mock.get(api.jobs_url, [{"status_code": 401, "json": BODY_401}, {"json": JOB_LIST}])

        hook.list_jobs(SITE_CODE)

        assert sleeps == []

    def test_401_twice_raises_auth_error(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, status_code=401, json=BODY_401)

        with pytest.raises(SepaExportAuthError) as caught:
            hook.list_jobs(SITE_CODE)

        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 2
        assert token_endpoint.call_count == 2
        assert "HTTP 401" in str(caught.value)
        assert "Invalid access token" in str(caught.value)
        assert f"site {SITE_CODE}" in str(caught.value)

    def test_401_replaced_token_stays_cached(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, [{"status_code": 401, "json": BODY_401}, {"json": JOB_LIST}])

        hook.list_jobs(SITE_CODE)

        assert TOKEN_CACHE.get(hook.settings).value == token_endpoint.issued[1]

    def test_401_on_create_repeats_once(self, hook, api, requests_mock, token_endpoint):
        requests_mock.post(
            api.jobs_url, [{"status_code": 401, "json": BODY_401}, {"status_code": 201, "json": {"id": "job-9"}}]
        )

        assert hook.create_job(SITE_CODE) == "job-9"
        assert len(calls_to(requests_mock, "POST", api.jobs_url)) == 2

    @pytest.mark.parametrize(
        ("method", "scope"),
        [("list", endpoints.SCOPE_JOB_VIEW), ("create", endpoints.SCOPE_JOB_MANAGE)],
        ids=["list", "create"],
    )
    def test_403_raises_scope_error(self, hook, api, requests_mock, token_endpoint, method, scope):
        requests_mock.register_uri("GET" if method == "list" else "POST", api.jobs_url, status_code=403, json=BODY_403)

        with pytest.raises(SepaExportScopeError) as caught:
            hook.list_jobs(SITE_CODE) if method == "list" else hook.create_job(SITE_CODE)

        assert scope in str(caught.value)
        assert "HTTP 403" in str(caught.value)
        assert "Missing required scopes" in str(caught.value)
        assert token_endpoint.call_count == 1
        assert requests_mock.call_count == 2
