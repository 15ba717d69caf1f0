"""Tests of body truncation, API error messages and the exception hierarchy."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_sepa.core import errors
from airflow_provider_sepa.core.errors import MAX_BODY_CHARS, SepaExportApiError, truncate_body

ENDPOINT = "GET /sepa-export/{tenant}/jobs"


class TestTruncateBody:
    @pytest.mark.parametrize(
        ("text", "expected"), [(None, ""), ("", ""), ("  a \n\t b  ", "a b")], ids=["none", "empty", "whitespace"]
    )
    def test_truncate_body_short(self, text, expected):
        assert truncate_body(text) == expected

    def test_truncate_body_at_limit_unchanged(self):
        assert truncate_body("x" * MAX_BODY_CHARS) == "x" * MAX_BODY_CHARS

    def test_truncate_body_over_limit(self):
        assert truncate_body("x" * (MAX_BODY_CHARS + 5)) == "x" * MAX_BODY_CHARS + "... (5 more characters)"


class TestSepaExportApiError:
    def test_api_error_message_parts(self):
        error = SepaExportApiError(ENDPOINT, 404, "not here", attempts=3, resource_id="site main", hint="Check it.")

        assert str(error) == f"{ENDPOINT} failed with HTTP 404 for site main after 3 attempts: not here. Check it."

    def test_api_error_detail_with_full_stop(self):
        error = SepaExportApiError(ENDPOINT, 400, "Invalid site code.", hint="Check it.")

        assert str(error) == f"{ENDPOINT} failed with HTTP 400 after 1 attempt: Invalid site code. Check it."

    def test_api_error_single_attempt_no_response(self):
        error = SepaExportApiError(ENDPOINT, None, "read timed out")

        assert str(error) == f"{ENDPOINT} failed with no response after 1 attempt: read timed out"

    def test_api_error_attributes(self):
        error = SepaExportApiError(ENDPOINT, 500, "boom", attempts=2, resource_id="file f")

        assert error.endpoint == ENDPOINT
        assert error.status == 500
        assert error.attempts == 2
        assert error.resource_id == "file f"
        assert error.detail == "boom"


class TestErrorHierarchy:
    @pytest.mark.parametrize(
        "error_class",
        [errors.SepaExportInputError, errors.SepaExportJobFailedError],
        ids=["input", "job-failed"],
    )
    def test_error_fails_task_without_retry(self, error_class):
        assert issubclass(error_class, AirflowFailException)

    @pytest.mark.parametrize(
        "error_class",
        [
            errors.SepaExportAuthError,
            errors.SepaExportScopeError,
            errors.SepaExportBadRequestError,
            errors.SepaExportNotFoundError,
            errors.SepaExportConflictError,
            errors.SepaExportServerError,
            errors.SepaExportResponseError,
            errors.SepaExportCreateOutcomeUnknownError,
            errors.SepaExportDownloadError,
        ],
        ids=[
            "auth",
            "scope",
            "bad-request",
            "not-found",
            "conflict",
            "server",
            "response",
            "outcome-unknown",
            "download",
        ],
    )
    def test_error_is_api_error(self, error_class):
        assert issubclass(error_class, SepaExportApiError)

    def test_config_error_is_value_error(self):
        assert issubclass(errors.SepaExportConfigError, ValueError)

    def test_base_error_is_airflow_exception(self):
        assert issubclass(errors.SepaExportError, AirflowException)
