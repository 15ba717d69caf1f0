"""Shared fixtures of the unit tests: an Emporix connection from an environment variable,
a hook that records its waits instead of sleeping, and log capture for secret checks."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass

import pytest
from structlog.testing import capture_logs

from airflow_provider_sepa.core.retry import RetryPolicy
from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

BASE_URL = "https://api.example.test"
TENANT = "acme"
CLIENT_ID = "client-id"
CLIENT_SECRET = "s3cret-value"


@dataclass(frozen=True)
class ApiEndpoints:
    """Connection values and the URLs the hook is expected to call for them."""

    base_url: str
    tenant: str
    client_id: str
    client_secret: str
    token_url: str
    jobs_url: str
    files_url: str


def connection_json(**extra: str) -> str:
    """Return the JSON form of the test connection, with ``extra`` merged into its Extra field."""
    return json.dumps(
        {
            "conn_type": "emporix",
            "host": BASE_URL,
            "login": CLIENT_ID,
            "password": CLIENT_SECRET,
            "extra": {"tenant": TENANT, **extra},
        }
    )


@pytest.fixture
def api(monkeypatch) -> ApiEndpoints:
    """Define the connection ``emporix_default`` and return its values and URLs."""
    monkeypatch.setenv("AIRFLOW_CONN_EMPORIX_DEFAULT", connection_json())
    return ApiEndpoints(
        base_url=BASE_URL,
        tenant=TENANT,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        token_url=f"{BASE_URL}/oauth/token",
        jobs_url=f"{BASE_URL}/sepa-export/{TENANT}/jobs",
        files_url=f"{BASE_URL}/sepa-export/{TENANT}/files",
    )


@pytest.fixture
def sleeps() -> list[float]:
    """Waits the hook requested, in seconds, in order."""
    return []


@pytest.fixture
def hook(api, sleeps) -> SepaExportHook:
    """A hook on the test connection: three attempts per request, seeded jitter, no real sleeping."""
    policy = RetryPolicy(max_attempts=3, backoff_base=1.0, backoff_max=30.0, rng=random.Random(0))
    created = SepaExportHook(retry_policy=policy, sleep=sleeps.append)
    yield created
    created.close()


@dataclass
class TokenEndpoint:
    """The mocked token endpoint and the access tokens it has issued, in order."""

    matcher: object
    issued: list[str]

    @property
    def call_count(self) -> int:
        return self.matcher.call_count


@pytest.fixture
def token_endpoint(requests_mock, api) -> TokenEndpoint:
    """Mock the token endpoint so that every call issues a new access token valid for about 4 hours."""
    issued: list[str] = []

    def issue(request, context):
        value = f"access-token-{len(issued) + 1}-Zq81xKw"
        issued.append(value)
        return {"access_token": value, "token_type": "Bearer", "expires_in": 14399, "refresh_token": ""}

    return TokenEndpoint(matcher=requests_mock.post(api.token_url, json=issue), issued=issued)


class CapturedLogs:
    """Log output of a test, from Airflow's structlog loggers and from the standard library."""

    def __init__(self, events: list[dict], caplog: pytest.LogCaptureFixture) -> None:
        self._events = events
        self._caplog = caplog

    @property
    def text(self) -> str:
        """Every captured event and record, one per line, with all fields."""
        lines = [repr(event) for event in self._events]
        lines.extend(repr(record.__dict__) for record in self._caplog.records)
        return "\n".join(lines)


@pytest.fixture
def captured_logs(caplog) -> CapturedLogs:
    """Capture the hook's structlog events and any standard-library log record at DEBUG.

    Airflow 3 hooks log through structlog, which ``caplog`` alone does not see.
    """
    caplog.set_level(logging.DEBUG)
    with capture_logs() as events:
        yield CapturedLogs(events, caplog)
