"""Fixtures that start the SEPA emulator on loopback and fetch tokens from it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_sepa.emulator.config import EmulatorConfig
from airflow_provider_sepa.emulator.server import EmulatorServer

# Short enough to keep the suite fast, long enough to observe a job while it runs.
FAST_JOB_SECONDS = 0.2


class FakeClock:
    """Thread-safe clock in epoch seconds that moves only when a test advances it."""

    def __init__(self, start: float = 1_780_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        with self._lock:
            self._now += seconds


@pytest.fixture
def start_server() -> Iterator[Callable[..., EmulatorServer]]:
    """Return a factory that starts an emulator with config overrides and stops it after the test."""
    servers: list[EmulatorServer] = []

    def start(**overrides: Any) -> EmulatorServer:
        overrides.setdefault("job_duration_seconds", FAST_JOB_SECONDS)
        server = EmulatorServer(EmulatorConfig(**overrides)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., EmulatorServer]) -> EmulatorServer:
    """Return a running emulator with the default sites and a short job duration."""
    return start_server()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmulatorServer]:
    """Return one emulator per test module, for tests that neither need nor check a fresh state."""
    with EmulatorServer(EmulatorConfig(job_duration_seconds=FAST_JOB_SECONDS)) as module_server:
        yield module_server


@pytest.fixture(scope="module")
def shared_client(shared_server: EmulatorServer) -> Iterator[httpx.Client]:
    """Return an HTTP client whose base URL is the module's shared emulator."""
    with httpx.Client(base_url=shared_server.url, timeout=10.0) as http_client:
        yield http_client


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[httpx.Client]:
    """Return an HTTP client whose base URL is the running emulator."""
    with httpx.Client(base_url=server.url, timeout=10.0) as http_client:
        yield http_client


def request_token(server: EmulatorServer, scope: str | None = None) -> str:
    """Request an access token for the configured client and return it."""
    form = {
        "grant_type": "client_credentials",
        "client_id": server.config.client_id,
        "client_secret": server.config.client_secret,
    }
    if scope is not None:
        form["scope"] = scope
    response = httpx.post(f"{server.url}/oauth/token", data=form, timeout=10.0)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    """Return the Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def auth(server: EmulatorServer) -> dict[str, str]:
    """Return an Authorization header with a token that has every scope."""
    return bearer(request_token(server))


def wait_for_job(
    client: httpx.Client, headers: dict[str, str], tenant: str, site_code: str, job_id: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll the list endpoint until the job is no longer active and return its JobDetails."""
    deadline = time.monotonic() + timeout
    while True:
        params = {"siteCode": site_code, "pageNumber": 1, "pageSize": 1000}
        response = client.get(f"/sepa-export/{tenant}/jobs", params=params, headers=headers)
        assert response.status_code == 200, response.text
        job = next(item for item in response.json() if item["jobId"] == job_id)
        if not job["active"]:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still active after {timeout} s"
        time.sleep(0.05)


def create_job(client: httpx.Client, headers: dict[str, str], site_code: str, tenant: str = "demo") -> str:
    """Create a job and return its id, failing the test on any status other than 201."""
    response = client.post(f"/sepa-export/{tenant}/jobs", json={"siteCode": site_code}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def run_job(client: httpx.Client, headers: dict[str, str], site_code: str, tenant: str = "demo") -> dict[str, Any]:
    """Create a job, wait until it finishes and return its JobDetails."""
    job_id = create_job(client, headers, site_code, tenant)
    return wait_for_job(client, headers, tenant, site_code, job_id)
