"""Tests of the retry policy, Retry-After parsing, per-request decisions and error bodies."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone

import pytest

from airflow_provider_sepa.core import endpoints
from airflow_provider_sepa.core.errors import (
    MAX_BODY_CHARS,
    SepaExportApiError,
    SepaExportAuthError,
    SepaExportBadRequestError,
    SepaExportConflictError,
    SepaExportCreateOutcomeUnknownError,
    SepaExportNotFoundError,
    SepaExportScopeError,
    SepaExportServerError,
)
from airflow_provider_sepa.core.retry import (
    Action,
    RequestAttempts,
    RetryPolicy,
    TransportFailure,
    describe_error_body,
    error_for_status,
    parse_retry_after,
)

NOW = datetime(2025, 7, 12, 6, 0, 0, tzinfo=timezone.utc)
SITE = "site main"

# Response bodies as the API contract shows them.
BODY_400 = json.dumps(
    {
        "message": "Bad Request",
        "_embedded": {
            "errors": [{"message": "Required argument [String siteCode] not specified", "path": "/siteCode"}]
        },
    }
)
BODY_401_INVALID = json.dumps(
    {"fault": {"faultstring": "Invalid access token", "detail": {"errorcode": "oauth.v2.InvalidAccessToken"}}}
)
BODY_401_EXPIRED = json.dumps(
    {
        "fault": {
            "faultstring": "Access Token expired",
            "detail": {"errorcode": "keymanagement.service.access_token_expired"},
        }
    }
)
BODY_403 = json.dumps(
    {
        "status": "Bad request",
        "code": 403,
        "message": "The access to the requested resource has been forbidden by the server.",
        "details": ["Missing required scopes"],
    }
)
BODY_404 = json.dumps({"message": "Given resource has not been found."})
BODY_409 = json.dumps({"message": "Another job is in progress. You can have only one job at the same time."})
BODY_HTML = (
    "<html>\n  <head><title>502 Bad Gateway</title></head>\n  <body>\n    <h1>502 Bad Gateway</h1>\n  </body>\n</html>"
)


class UpperBoundRandom(random.Random):
    """A random source whose ``uniform`` always returns the upper bound."""

    def uniform(self, a, b):
        return b


class LowerBoundRandom(random.Random):
    """A random source whose ``uniform`` always returns the lower bound."""

    def uniform(self, a, b):
        return a


def make_attempts(
    *,
    idempotent: bool = True,
    endpoint: str = endpoints.LIST_ENDPOINT,
    max_attempts: int = 3,
    authenticated: bool = True,
) -> RequestAttempts:
    policy = RetryPolicy(
        max_attempts=max_attempts, backoff_base=1.0, backoff_max=30.0, max_retry_after=60.0, rng=random.Random(0)
    )
    return RequestAttempts(policy, endpoint, idempotent=idempotent, resource_id=SITE, authenticated=authenticated)


class TestRetryPolicy:
    @pytest.mark.parametrize(
        ("attempt", "ceiling"),
        [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 30.0), (7, 30.0), (20, 30.0)],
        ids=[
            "attempt-1",
            "attempt-2",
            "attempt-3",
            "attempt-4",
            "attempt-5",
            "attempt-6-capped",
            "attempt-7-capped",
            "attempt-20-capped",
        ],
    )
    def test_backoff_upper_bound(self, attempt, ceiling):
        policy = RetryPolicy(backoff_base=1.0, backoff_max=30.0, rng=UpperBoundRandom())

        assert policy.backoff(attempt) == ceiling

    @pytest.mark.parametrize(
        ("attempt", "floor"),
        [(1, 0.5), (2, 1.0), (3, 2.0), (6, 15.0)],
        ids=["attempt-1", "attempt-2", "attempt-3", "attempt-6-capped"],
    )
    def test_backoff_lower_bound(self, attempt, floor):
        policy = RetryPolicy(backoff_base=1.0, backoff_max=30.0, rng=LowerBoundRandom())

        assert policy.backoff(attempt) == floor

    def test_backoff_seeded_within_bounds(self):
        policy = RetryPolicy(backoff_base=2.0, backoff_max=10.0, rng=random.Random(0))

        for attempt in range(1, 12):
            ceiling = min(10.0, 2.0 * 2 ** (attempt - 1))
            wait = policy.backoff(attempt)
            assert ceiling / 2 <= wait <= ceiling, f"attempt {attempt}: {wait}"

    def test_backoff_zero_base_is_zero(self):
        assert RetryPolicy(backoff_base=0.0, rng=random.Random(0)).backoff(3) == 0.0

    @pytest.mark.parametrize("attempt", [3, 4, 10], ids=["at-max", "past-max", "far-past-max"])
    def test_delay_stops_at_max_attempts(self, attempt):
        assert RetryPolicy(max_attempts=3).delay(attempt) is None

    def test_delay_before_max_attempts(self):
        policy = RetryPolicy(max_attempts=3, rng=UpperBoundRandom())

        assert policy.delay(2) == 2.0

    def test_delay_single_attempt_never_retries(self):
        assert RetryPolicy(max_attempts=1).delay(1) is None

    def test_delay_retry_after_longer_than_backoff(self):
        policy = RetryPolicy(rng=UpperBoundRandom())

        assert policy.delay(1, retry_after=45.0) == 45.0

    def test_delay_retry_after_shorter_than_backoff(self):
        policy = RetryPolicy(rng=UpperBoundRandom())

        assert policy.delay(3, retry_after=1.0) == 4.0

    def test_delay_retry_after_at_limit(self):
        policy = RetryPolicy(max_retry_after=300.0, rng=UpperBoundRandom())

        assert policy.delay(1, retry_after=300.0) == 300.0

    def test_delay_retry_after_above_limit_stops(self):
        policy = RetryPolicy(max_retry_after=300.0)

        assert policy.delay(1, retry_after=301.0) is None

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            ({"max_attempts": 0}, "Invalid max_attempts 0"),
            ({"backoff_base": -1.0}, "cannot be negative"),
            ({"backoff_max": -0.1}, "cannot be negative"),
        ],
        ids=["zero-attempts", "negative-base", "negative-max"],
    )
    def test_policy_invalid(self, arguments, message):
        with pytest.raises(ValueError, match=message):
            RetryPolicy(**arguments)


class TestParseRetryAfter:
    @pytest.mark.parametrize(
        ("header", "seconds"),
        [
            ("120", 120.0),
            (" 7 ", 7.0),
            ("0", 0.0),
            ("Sat, 12 Jul 2025 06:00:30 GMT", 30.0),
            ("Sat, 12 Jul 2025 07:00:00 GMT", 3600.0),
            ("Sat, 12 Jul 2025 05:59:00 GMT", 0.0),
            ("Sat, 12 Jul 2025 08:00:30 +0200", 30.0),
        ],
        ids=["seconds", "seconds-padded", "zero", "date-30s", "date-1h", "date-in-past", "date-with-offset"],
    )
    def test_parse_retry_after_valid(self, header, seconds):
        assert parse_retry_after(header, now=NOW) == seconds

    @pytest.mark.parametrize(
        "header",
        [None, "", "   ", "soon", "-5", "1.5", "Sat, 99 Foo 2025"],
        ids=["none", "empty", "blank", "word", "negative", "fraction", "broken-date"],
    )
    def test_parse_retry_after_unusable(self, header):
        assert parse_retry_after(header, now=NOW) is None


class TestRequestAttempts:
    def test_attempts_2xx_returns(self):
        attempts = make_attempts()
        attempts.start_attempt()

        assert attempts.after_response(204, "").action is Action.RETURN

    def test_attempts_401_reauthenticates_once(self):
        attempts = make_attempts()
        attempts.start_attempt()
        first = attempts.after_response(401, BODY_401_EXPIRED)
        attempts.start_attempt()
        second = attempts.after_response(401, BODY_401_INVALID)

        assert first.action is Action.REAUTHENTICATE
        assert second.action is Action.RAISE
        assert isinstance(second.error, SepaExportAuthError)
        assert second.error.status == 401
        assert second.error.attempts == 2
        assert "Invalid access token" in str(second.error)

    def test_attempts_401_unauthenticated_raises(self):
        attempts = make_attempts(endpoint=endpoints.TOKEN_ENDPOINT, authenticated=False)
        attempts.start_attempt()

        decision = attempts.after_response(401, '{"error": "invalid_client"}')

        assert decision.action is Action.RAISE
        assert isinstance(decision.error, SepaExportAuthError)
        assert "client secret (Password)" in str(decision.error)

    @pytest.mark.parametrize(
        ("endpoint", "scope"),
        [
            (endpoints.LIST_ENDPOINT, endpoints.SCOPE_JOB_VIEW),
            (endpoints.CREATE_ENDPOINT, endpoints.SCOPE_JOB_MANAGE),
            (endpoints.DOWNLOAD_ENDPOINT, endpoints.SCOPE_MEDIA_VIEW),
        ],
        ids=["list", "create", "download"],
    )
    def test_attempts_403_names_scope(self, endpoint, scope):
        attempts = make_attempts(endpoint=endpoint)
        attempts.start_attempt()

        decision = attempts.after_response(403, BODY_403)

        assert decision.action is Action.RAISE
        assert isinstance(decision.error, SepaExportScopeError)
        assert scope in str(decision.error)
        assert "Missing required scopes" in str(decision.error)

    @pytest.mark.parametrize(
        ("status", "body", "error_class"),
        [
            (400, BODY_400, SepaExportBadRequestError),
            (404, BODY_404, SepaExportNotFoundError),
            (409, BODY_409, SepaExportConflictError),
            (418, "teapot", SepaExportApiError),
            (301, "", SepaExportApiError),
        ],
        ids=["400", "404", "409", "418-other", "301-redirect"],
    )
    def test_attempts_final_status_mapping(self, status, body, error_class):
        attempts = make_attempts()
        attempts.start_attempt()

        decision = attempts.after_response(status, body)

        assert decision.action is Action.RAISE
        assert type(decision.error) is error_class
        assert decision.error.status == status

    @pytest.mark.parametrize("status", [429, 500, 502, 503, 504], ids=["429", "500", "502", "503", "504"])
    def test_attempts_idempotent_retries_then_raises(self, status):
        attempts = make_attempts(max_attempts=3)
        actions = []
        for _ in range(3):
            attempts.start_attempt()
            actions.append(attempts.after_response(status, BODY_HTML))

        assert [decision.action for decision in actions] == [Action.RETRY, Action.RETRY, Action.RAISE]
        assert isinstance(actions[-1].error, SepaExportServerError)
        assert actions[-1].error.attempts == 3
        assert "502 Bad Gateway" in str(actions[-1].error)

    @pytest.mark.parametrize("status", [429, 503], ids=["429", "503"])
    def test_attempts_retry_after_sets_delay(self, status):
        attempts = make_attempts()
        attempts.start_attempt()

        decision = attempts.after_response(status, "", retry_after="40")

        assert decision.action is Action.RETRY
        assert decision.delay >= 40.0

    def test_attempts_retry_after_above_limit_raises(self):
        attempts = make_attempts()
        attempts.start_attempt()

        decision = attempts.after_response(429, "", retry_after="3600")

        assert decision.action is Action.RAISE
        assert isinstance(decision.error, SepaExportServerError)
        assert "3600 s" in str(decision.error)
        assert "60 s limit" in str(decision.error)

    def test_attempts_create_429_retried(self):
        attempts = make_attempts(idempotent=False, endpoint=endpoints.CREATE_ENDPOINT)
        attempts.start_attempt()

        assert attempts.after_response(429, "").action is Action.RETRY

    @pytest.mark.parametrize("status", [500, 502, 503, 504], ids=["500", "502", "503", "504"])
    def test_attempts_create_5xx_outcome_unknown(self, status):
        attempts = make_attempts(idempotent=False, endpoint=endpoints.CREATE_ENDPOINT)
        attempts.start_attempt()

        decision = attempts.after_response(status, BODY_HTML)

        assert decision.action is Action.RAISE
        assert isinstance(decision.error, SepaExportCreateOutcomeUnknownError)
        assert decision.error.status == status
        assert "look it up" in str(decision.error)

    @pytest.mark.parametrize(
        "failure",
        [TransportFailure.READ_TIMEOUT, TransportFailure.DISCONNECTED],
        ids=["read-timeout", "disconnected"],
    )
    def test_attempts_create_transport_outcome_unknown(self, failure):
        attempts = make_attempts(idempotent=False, endpoint=endpoints.CREATE_ENDPOINT)
        attempts.start_attempt()

        decision = attempts.after_transport_failure(failure, "ReadTimeout")

        assert decision.action is Action.RAISE
        assert isinstance(decision.error, SepaExportCreateOutcomeUnknownError)
        assert decision.error.status is None
        assert failure.value in str(decision.error)

    def test_attempts_create_connect_failure_retried(self):
        attempts = make_attempts(idempotent=False, endpoint=endpoints.CREATE_ENDPOINT)
        attempts.start_attempt()

        assert attempts.after_transport_failure(TransportFailure.CONNECT, "ConnectionError").action is Action.RETRY

    @pytest.mark.parametrize(
        "failure",
        [TransportFailure.CONNECT, TransportFailure.READ_TIMEOUT, TransportFailure.DISCONNECTED],
        ids=["connect", "read-timeout", "disconnected"],
    )
    def test_attempts_idempotent_transport_retries_then_raises(self, failure):
        attempts = make_attempts(max_attempts=2)
        attempts.start_attempt()
        first = attempts.after_transport_failure(failure, "error")
        attempts.start_attempt()
        second = attempts.after_transport_failure(failure, "error")

        assert first.action is Action.RETRY
        assert first.delay > 0
        assert second.action is Action.RAISE
        assert isinstance(second.error, SepaExportServerError)
        assert second.error.status is None
        assert "no response" in str(second.error)

    def test_attempts_error_names_endpoint_and_resource(self):
        attempts = make_attempts()
        attempts.start_attempt()

        error = attempts.after_response(404, BODY_404).error

        assert endpoints.LIST_ENDPOINT in str(error)
        assert "HTTP 404" in str(error)
        assert SITE in str(error)
        assert "after 1 attempt:" in str(error)


class TestDescribeErrorBody:
    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            (BODY_400, "Bad Request; Required argument [String siteCode] not specified"),
            (BODY_401_INVALID, "Invalid access token"),
            (BODY_401_EXPIRED, "Access Token expired"),
            (
                BODY_403,
                "The access to the requested resource has been forbidden by the server.; Missing required scopes",
            ),
            (BODY_404, "Given resource has not been found."),
            (BODY_409, "Another job is in progress. You can have only one job at the same time."),
            ('{"error": "invalid_client"}', "invalid_client"),
            ('{"unexpected": 1}', '{"unexpected": 1}'),
            ("[1, 2]", "[1, 2]"),
            ("", "(empty body)"),
            ("plain failure text", "plain failure text"),
        ],
        ids=[
            "400",
            "401-invalid",
            "401-expired",
            "403",
            "404",
            "409",
            "oauth-error",
            "unknown-object",
            "json-list",
            "empty",
            "plain-text",
        ],
    )
    def test_describe_error_body(self, body, expected):
        assert describe_error_body(body) == expected

    def test_describe_error_body_html_flattened(self):
        text = describe_error_body(BODY_HTML)

        assert "\n" not in text
        assert "<h1>502 Bad Gateway</h1>" in text

    def test_describe_error_body_huge_truncated(self):
        text = describe_error_body("x" * 100_000)

        assert text.startswith("x" * MAX_BODY_CHARS + "...")
        assert len(text) < MAX_BODY_CHARS + 50
        assert f"{100_000 - MAX_BODY_CHARS} more characters" in text

    def test_describe_error_body_huge_json_message_truncated(self):
        text = describe_error_body(json.dumps({"message": "y" * 5000}))

        assert len(text) < MAX_BODY_CHARS + 50


class TestErrorForStatus:
    def test_error_for_status_token_400_is_auth_error(self):
        error = error_for_status(endpoints.TOKEN_ENDPOINT, 400, '{"error": "invalid_scope"}', 1, "client client-id")

        assert isinstance(error, SepaExportAuthError)
        assert "extra 'scope'" in str(error)

    def test_error_for_status_token_403_has_no_scope(self):
        error = error_for_status(endpoints.TOKEN_ENDPOINT, 403, BODY_403, 1, None)

        assert isinstance(error, SepaExportScopeError)
        assert "not allowed" in str(error)

    def test_error_for_status_api_401_hint(self):
        error = error_for_status(endpoints.LIST_ENDPOINT, 401, BODY_401_INVALID, 2, SITE)

        assert "freshly issued token" in str(error)
