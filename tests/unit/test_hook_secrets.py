"""Tests that no client secret or access token reaches an exception message or a log,
and of the hook's connection test."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_sepa.core.errors import SepaExportError
from airflow_provider_sepa.core.payloads import TOKEN_CACHE, AccessToken
from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

SITE_CODE = "main"
FILE_ID = "file-0001"
JOB_ID = "job-1"
BODY = b"<Document>ok</Document>"
BODY_401 = {"fault": {"faultstring": "Invalid access token", "detail": {"errorcode": "oauth.v2.InvalidAccessToken"}}}
BODY_403 = {"status": "Bad request", "code": 403, "message": "forbidden", "details": ["Missing required scopes"]}


def fail_token_401(hook, api, requests_mock):
    requests_mock.post(
        api.token_url, status_code=401, json={"error": "invalid_client", "error_description": "Bad client credentials"}
    )
    hook.get_token()


def fail_token_echo(hook, api, requests_mock):
    # A token endpoint that echoes the form, secret included, in a non-JSON error page.
    requests_mock.post(
        api.token_url, status_code=400, text=f"<html>bad request: client_secret={api.client_secret}</html>"
    )
    hook.get_token()


def fail_token_not_json(hook, api, requests_mock):
    requests_mock.post(api.token_url, text="access_token=leaked-form-token-value&token_type=bearer")
    hook.get_token()


def fail_list_401(hook, api, requests_mock):
    requests_mock.get(api.jobs_url, status_code=401, json=BODY_401)
    hook.list_jobs(SITE_CODE)


def fail_list_echo(hook, api, requests_mock):
    def echo(request, context):
        context.status_code = 400
        return f"debug: Authorization: {request.headers['Authorization']}"

    requests_mock.get(api.jobs_url, text=echo)
    hook.list_jobs(SITE_CODE)


def fail_list_403(hook, api, requests_mock):
    requests_mock.get(api.jobs_url, status_code=403, json=BODY_403)
    hook.list_jobs(SITE_CODE)


def fail_list_500(hook, api, requests_mock):
    requests_mock.get(api.jobs_url, status_code=500, text="internal error")
    hook.list_jobs(SITE_CODE)


def fail_list_timeout(hook, api, requests_mock):
    requests_mock.get(api.jobs_url, exc=requests.exceptions.ReadTimeout)
    hook.list_jobs(SITE_CODE)


def fail_create_502(hook, api, requests_mock):
    requests_mock.post(api.jobs_url, status_code=502, text="bad gateway")
    hook.create_job(SITE_CODE)


def fail_create_409(hook, api, requests_mock):
    requests_mock.post(api.jobs_url, status_code=409, json={"message": "Another job is in progress."})
    hook.create_job(SITE_CODE)


def fail_download_short(hook, api, requests_mock, tmp_path):
    requests_mock.get(f"{api.files_url}/{FILE_ID}", content=BODY[:3], headers={"Content-Length": str(len(BODY))})
    hook.download_file(FILE_ID, str(tmp_path / "main.xml"))


def fail_download_404(hook, api, requests_mock, tmp_path):
    requests_mock.get(
        f"{api.files_url}/{FILE_ID}", status_code=404, json={"message": "Given resource has not been found."}
    )
    hook.download_file(FILE_ID, str(tmp_path / "main.xml"))


def fail_download_different(hook, api, requests_mock, tmp_path):
    requests_mock.get(f"{api.files_url}/{FILE_ID}", content=BODY)
    (tmp_path / "main.xml").write_bytes(b"other")
    hook.download_file(FILE_ID, str(tmp_path / "main.xml"))


FAILURES = [
    fail_token_401,
    fail_token_echo,
    fail_token_not_json,
    fail_list_401,
    fail_list_echo,
    fail_list_403,
    fail_list_500,
    fail_list_timeout,
    fail_create_502,
    fail_create_409,
    fail_download_short,
    fail_download_404,
    fail_download_different,
]
FAILURE_IDS = [failure.__name__.removeprefix("fail_").replace("_", "-") for failure in FAILURES]


def run_failure(failure, hook, api, requests_mock, tmp_path) -> SepaExportError:
    """Run one failure scenario and return the exception it raised."""
    with pytest.raises(SepaExportError) as caught:
        if failure.__name__.startswith("fail_download"):
            failure(hook, api, requests_mock, tmp_path)
        else:
            failure(hook, api, requests_mock)
    return caught.value


class TestSepaExportHookSecrets:
    @pytest.mark.parametrize("failure", FAILURES, ids=FAILURE_IDS)
    def test_secrets_absent_from_error(self, hook, api, requests_mock, token_endpoint, tmp_path, failure):
        error = run_failure(failure, hook, api, requests_mock, tmp_path)
        message = f"{error}\n{error!r}\n{error.args!r}"

        assert api.client_secret not in message
        for token in [*token_endpoint.issued, "leaked-form-token-value"]:
            assert token not in message

    @pytest.mark.parametrize("failure", FAILURES, ids=FAILURE_IDS)
    def test_secrets_absent_from_logs(self, hook, api, requests_mock, token_endpoint, tmp_path, captured_logs, failure):
        run_failure(failure, hook, api, requests_mock, tmp_path)

        assert api.client_secret not in captured_logs.text
        for token in [*token_endpoint.issued, "leaked-form-token-value"]:
            assert token not in captured_logs.text

    def test_secrets_echo_redacted(self, hook, api, requests_mock, token_endpoint, tmp_path):
        error = run_failure(fail_list_echo, hook, api, requests_mock, tmp_path)

        assert "Authorization: Bearer ***" in str(error)

    def test_secrets_absent_from_success_logs(self, hook, api, requests_mock, token_endpoint, tmp_path, captured_logs):
        requests_mock.post(api.jobs_url, status_code=201, json={"id": JOB_ID})
        requests_mock.get(
            api.jobs_url,
            [
                {"status_code": 401, "json": BODY_401},
                {"status_code": 503},
                {"json": [{"jobId": JOB_ID, "active": False, "fileId": FILE_ID}]},
            ],
        )
        requests_mock.get(f"{api.files_url}/{FILE_ID}", content=BODY)

        hook.create_job(SITE_CODE)
        hook.get_job(SITE_CODE, JOB_ID)
        hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        # The capture must see the hook's own messages, or the checks below could not fail.
        assert "Fetched an access token" in captured_logs.text
        assert "returned HTTP 401" in captured_logs.text
        assert "retrying in" in captured_logs.text
        assert api.client_secret not in captured_logs.text
        for token in token_endpoint.issued:
            assert token not in captured_logs.text


class TestSepaExportHookTestConnection:
    def test_connection_success(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=[])

        ok, message = hook.test_connection()

        assert ok is True
        assert f"tenant {api.tenant!r}" in message
        assert token_endpoint.call_count == 1

    def test_connection_fetches_fresh_token(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=[])
        TOKEN_CACHE.put(hook.settings, AccessToken(value="cached-token-value", refresh_at=1e12, lifetime=3600))

        hook.test_connection()

        assert token_endpoint.call_count == 1
        assert requests_mock.last_request.headers["Authorization"] == f"Bearer {token_endpoint.issued[0]}"

    def test_connection_bad_credentials(self, hook, api, requests_mock):
        requests_mock.post(api.token_url, status_code=401, json={"error": "invalid_client"})

        ok, message = hook.test_connection()

        assert ok is False
        assert "HTTP 401" in message
        assert "POST /oauth/token" in message
        assert api.client_secret not in message

    def test_connection_missing_scope(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, status_code=403, json=BODY_403)

        ok, message = hook.test_connection()

        assert ok is False
        assert "HTTP 403" in message
        assert "sepaexport.job_view" in message
        assert api.client_secret not in message
        assert token_endpoint.issued[0] not in message

    def test_connection_server_down(self, api, requests_mock, token_endpoint, sleeps):
        hook = SepaExportHook(sleep=sleeps.append)
        requests_mock.get(api.jobs_url, status_code=503)

        ok, message = hook.test_connection()

        assert ok is False
        assert "HTTP 503" in message
        assert len(sleeps) == 4

    def test_connection_undefined(self, requests_mock):
        ok, message = SepaExportHook("emporix_missing").test_connection()

        assert ok is False
        assert "'emporix_missing' is not defined" in message
        assert requests_mock.call_count == 0
