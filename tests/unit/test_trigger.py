"""Tests of SepaExportJobTrigger and SepaExportAsyncHook on an in-memory API behind httpx.MockTransport."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import random
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from airflow_provider_sepa.core.errors import SepaExportJobNotFoundError
from airflow_provider_sepa.core.payloads import TOKEN_CACHE
from airflow_provider_sepa.core.retry import RetryPolicy
from airflow_provider_sepa.hooks import sepa_export as sepa_export_hooks
from airflow_provider_sepa.hooks.sepa_export import HOOKS_PER_CLIENT, SepaExportAsyncHook, SepaExportHook
from airflow_provider_sepa.triggers.sepa_export import SepaExportJobTrigger

SITE_CODE = "main"
JOB_ID = "884cf047-94a2-42ae-8a89-7084c3259ef2"
FILE_ID = "7739a523-cbc9-446b-b254-378d37312fbb"
TRIGGER_PATH = "airflow_provider_sepa.triggers.sepa_export.SepaExportJobTrigger"
BODY_401_EXPIRED = {
    "fault": {
        "faultstring": "Access Token expired",
        "detail": {"errorcode": "keymanagement.service.access_token_expired"},
    }
}


def running_job(job_id: str = JOB_ID) -> dict[str, Any]:
    return {
        "jobId": job_id,
        "status": "IN_PROGRESS",
        "siteCode": SITE_CODE,
        "active": True,
        "createdAt": "2026-12-04T06:55:43.015Z",
    }


def finished_job(job_id: str = JOB_ID, status: str = "COMPLETED", file_id: str | None = FILE_ID) -> dict[str, Any]:
    job = {
        "jobId": job_id,
        "status": status,
        "siteCode": SITE_CODE,
        "active": False,
        "ordersExportedCount": 12,
        "createdAt": "2026-12-04T06:55:43.015Z",
        "completedAt": "2026-12-04T06:56:01.250Z",
    }
    if file_id is not None:
        job["fileId"] = file_id
    return job


class FakeApi:
    """In-memory token and job list endpoints for ``httpx.MockTransport``.

    ``jobs`` is the site's job list, newest first, served in pages. ``faults`` are
    responses or exceptions served, in order, in place of the next list responses.
    ``before_list`` runs before each list request with its 1-based number.
    """

    def __init__(self, api) -> None:
        self.api = api
        self.jobs: list[dict[str, Any]] = []
        self.faults: list[httpx.Response | Exception] = []
        self.before_list: Callable[[int], None] | None = None
        self.issued: list[str] = []
        self.valid_tokens: set[str] = set()
        self.list_requests: list[httpx.Request] = []
        self.list_times: list[float] = []

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            token = f"access-token-{len(self.issued) + 1}-Qw8zLp"
            self.issued.append(token)
            self.valid_tokens.add(token)
            return httpx.Response(200, json={"access_token": token, "token_type": "Bearer", "expires_in": 14399})
        assert request.url.path == f"/sepa-export/{self.api.tenant}/jobs"
        self.list_requests.append(request)
        self.list_times.append(time.time())
        if self.before_list is not None:
            self.before_list(len(self.list_requests))
        if self.faults:
            fault = self.faults.pop(0)
            if isinstance(fault, Exception):
                raise fault
            return fault
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.valid_tokens:
            return httpx.Response(401, json=BODY_401_EXPIRED)
        number = int(request.url.params["pageNumber"])
        size = int(request.url.params["pageSize"])
        return httpx.Response(200, json=self.jobs[(number - 1) * size : number * size])

    def token_requests(self) -> int:
        return len(self.issued)


@pytest.fixture
def fake_api(api) -> FakeApi:
    return FakeApi(api)


@pytest.fixture
def retry_waits() -> list[float]:
    """Retry waits the async hook requested, in seconds."""
    return []


@pytest.fixture
def hooks_built(monkeypatch, fake_api, retry_waits) -> list[SepaExportAsyncHook]:
    """Make every trigger use an async hook on the fake API, with fast seeded retries."""
    built: list[SepaExportAsyncHook] = []

    async def record_wait(seconds: float) -> None:
        retry_waits.append(seconds)

    def make_hook(trigger: SepaExportJobTrigger) -> SepaExportAsyncHook:
        hook = SepaExportAsyncHook(
            trigger.emporix_conn_id,
            retry_policy=RetryPolicy(max_attempts=3, rng=random.Random(0)),
            sleep=record_wait,
            transport=httpx.MockTransport(fake_api.handle),
        )
        built.append(hook)
        return hook

    monkeypatch.setattr(SepaExportJobTrigger, "_make_hook", make_hook)
    return built


@pytest.fixture
def built_clients(monkeypatch) -> list[httpx.AsyncClient]:
    """The httpx clients that async hooks build during the test, in order."""
    built: list[httpx.AsyncClient] = []
    original = SepaExportAsyncHook._build_client

    def record_client(hook: SepaExportAsyncHook) -> httpx.AsyncClient:
        built.append(original(hook))
        return built[-1]

    monkeypatch.setattr(SepaExportAsyncHook, "_build_client", record_client)
    return built


def make_trigger(wait: float = 5.0, **overrides: Any) -> SepaExportJobTrigger:
    now = time.time()
    arguments = {
        "site_code": SITE_CODE,
        "job_id": JOB_ID,
        "deadline": now + wait,
        "started_at": now,
        "poll_interval": 0.01,
    }
    arguments.update(overrides)
    return SepaExportJobTrigger(**arguments)


def run_trigger(trigger: SepaExportJobTrigger) -> list[dict[str, Any]]:
    """Run the trigger to its end and return every event payload it yielded."""

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), timeout=20))


def finish_on_list(fake_api: FakeApi, number: int, job: dict[str, Any]) -> None:
    """Replace the job with ``job`` from the ``number``-th list request on."""

    def advance(count: int) -> None:
        if count >= number:
            fake_api.jobs[:] = [job]

    fake_api.before_list = advance


class TestSerialization:
    def test_serialize_round_trip(self):
        trigger = make_trigger(job_not_found_timeout=120.0, page_size=20, emporix_conn_id="emporix_eu")

        classpath, kwargs = trigger.serialize()
        rebuilt = SepaExportJobTrigger(**kwargs)

        assert classpath == TRIGGER_PATH
        assert rebuilt.serialize() == (classpath, kwargs)
        assert set(kwargs) == {
            "site_code",
            "job_id",
            "deadline",
            "started_at",
            "emporix_conn_id",
            "poll_interval",
            "page_size",
            "job_not_found_timeout",
        }

    def test_serialize_is_json(self):
        _, kwargs = make_trigger().serialize()

        assert json.loads(json.dumps(kwargs)) == kwargs

    def test_serialize_after_run_has_no_secret(self, api, fake_api, hooks_built):
        fake_api.jobs = [finished_job()]
        trigger = make_trigger()
        run_trigger(trigger)

        text = json.dumps(trigger.serialize())

        assert fake_api.issued
        assert api.client_secret not in text
        for token in fake_api.issued:
            assert token not in text


class TestTriggerEvents:
    def test_success_event(self, fake_api, hooks_built):
        fake_api.jobs = [running_job()]
        finish_on_list(fake_api, 3, finished_job())

        events = run_trigger(make_trigger())

        assert len(events) == 1
        assert events[0]["status"] == "success"
        assert events[0]["job"]["job_id"] == JOB_ID
        assert events[0]["job"]["file_id"] == FILE_ID
        assert events[0]["job"]["state"] == "succeeded"
        assert len(fake_api.list_requests) == 3

    def test_failed_job_event(self, fake_api, hooks_built):
        fake_api.jobs = [finished_job(status="FAILED", file_id=None)]

        events = run_trigger(make_trigger())

        assert [event["status"] for event in events] == ["failed"]
        assert events[0]["job"]["state"] == "failed"
        assert JOB_ID in events[0]["message"]
        assert "status FAILED" in events[0]["message"]

    def test_failure_status_with_file_fails(self, fake_api, hooks_built):
        fake_api.jobs = [finished_job(status="CANCELLED")]

        events = run_trigger(make_trigger())

        assert [event["status"] for event in events] == ["failed"]

    def test_unknown_status_without_file_fails(self, fake_api, hooks_built):
        fake_api.jobs = [finished_job(status="DONE_PARTIAL", file_id=None)]

        events = run_trigger(make_trigger())

        assert [event["status"] for event in events] == ["failed"]
        assert "without a fileId" in events[0]["message"]

    def test_blank_file_id_fails(self, fake_api, hooks_built):
        fake_api.jobs = [finished_job(file_id="  ")]

        events = run_trigger(make_trigger())

        assert [event["status"] for event in events] == ["failed"]

    def test_job_on_later_page(self, fake_api, hooks_built):
        fake_api.jobs = [finished_job(f"other-{index}") for index in range(5)] + [finished_job()]

        events = run_trigger(make_trigger(page_size=2))
        pages = [request.url.params["pageNumber"] for request in fake_api.list_requests]

        assert events[0]["status"] == "success"
        assert pages == ["1", "2", "3"]
        assert {request.url.params["pageSize"] for request in fake_api.list_requests} == {"2"}

    def test_job_missing_until_listed(self, fake_api, hooks_built):
        finish_on_list(fake_api, 3, finished_job())

        events = run_trigger(make_trigger(job_not_found_timeout=60.0))

        assert events[0]["status"] == "success"

    def test_job_missing_past_not_found_timeout(self, fake_api, hooks_built):
        fake_api.jobs = [finished_job("another-job")]

        events = run_trigger(make_trigger(job_not_found_timeout=0.05))

        assert len(events) == 1
        assert events[0]["status"] == "error"
        assert events[0]["error_type"] == "SepaExportJobNotFoundError"
        assert "job_not_found_timeout=0" in events[0]["message"]

    def test_not_found_timeout_counts_from_start(self, fake_api, hooks_built):
        # A restarted trigger keeps started_at, so a job missing since long ago fails at once.
        trigger = make_trigger(job_not_found_timeout=30.0, started_at=time.time() - 60)

        events = run_trigger(trigger)

        assert events[0]["error_type"] == "SepaExportJobNotFoundError"
        assert len(fake_api.list_requests) == 1


class TestTriggerTimeout:
    def test_timeout_event_names_job_and_seconds(self, fake_api, hooks_built):
        fake_api.jobs = [running_job()]

        events = run_trigger(make_trigger(wait=0.2, poll_interval=0.05))

        assert len(events) == 1
        assert events[0]["status"] == "timeout"
        assert set(events[0]) == {"status", "message"}
        assert JOB_ID in events[0]["message"]
        assert "did not finish within 0 s (last status IN_PROGRESS)" in events[0]["message"]

    def test_polls_once_after_deadline(self, fake_api, hooks_built):
        fake_api.jobs = [running_job()]
        trigger = make_trigger(wait=0.2, poll_interval=0.05)

        run_trigger(trigger)

        assert len(fake_api.list_times) >= 2
        assert fake_api.list_times[-1] >= trigger.deadline
        assert fake_api.list_times[-2] < trigger.deadline

    def test_deadline_passed_checks_once(self, fake_api, hooks_built):
        fake_api.jobs = [finished_job()]

        events = run_trigger(make_trigger(wait=-10.0))

        assert events[0]["status"] == "success"
        assert len(fake_api.list_requests) == 1

    def test_timeout_when_never_listed(self, fake_api, hooks_built):
        events = run_trigger(make_trigger(wait=0.1, poll_interval=0.05))

        assert events[0]["status"] == "timeout"
        assert "the job never appeared in the job list" in events[0]["message"]

    def test_elapsed_counts_from_started_at(self, fake_api, hooks_built):
        fake_api.jobs = [running_job()]
        trigger = make_trigger(wait=0.05, started_at=time.time() - 3600)

        events = run_trigger(trigger)

        assert "did not finish within 3600 s" in events[0]["message"]


class TestFirstCheckDelay:
    def test_first_check_waits_random_part(self, monkeypatch, fake_api, hooks_built):
        monkeypatch.setattr(random, "uniform", lambda low, high: high / 2)
        fake_api.jobs = [finished_job()]
        started = time.time()

        events = run_trigger(make_trigger(poll_interval=0.4))

        assert events[0]["status"] == "success"
        assert fake_api.list_times[0] - started >= 0.2

    def test_first_check_not_past_deadline(self, monkeypatch, fake_api, hooks_built):
        monkeypatch.setattr(random, "uniform", lambda low, high: high)
        fake_api.jobs = [running_job()]
        started = time.time()

        events = run_trigger(make_trigger(wait=0.1, poll_interval=60))

        assert events[0]["status"] == "timeout"
        assert len(fake_api.list_requests) == 1
        assert fake_api.list_times[0] - started < 1.0


class TestTriggerRequests:
    def test_one_client_and_token_across_polls(self, fake_api, hooks_built, built_clients):
        fake_api.jobs = [running_job()]
        finish_on_list(fake_api, 5, finished_job())

        run_trigger(make_trigger())

        assert len(fake_api.list_requests) == 5
        assert len(built_clients) == 1
        assert built_clients[0].is_closed
        assert fake_api.token_requests() == 1

    def test_cached_token_reused(self, fake_api, hooks_built):
        fake_api.jobs = [finished_job()]
        run_trigger(make_trigger())

        run_trigger(make_trigger())

        assert fake_api.token_requests() == 1

    def test_token_expiry_mid_wait(self, fake_api, hooks_built):
        fake_api.jobs = [running_job()]

        def expire_then_finish(count: int) -> None:
            if count == 2:
                fake_api.expire_tokens()
            if count >= 4:
                fake_api.jobs[:] = [finished_job()]

        fake_api.before_list = expire_then_finish

        events = run_trigger(make_trigger())
        tokens_sent = [request.headers["Authorization"] for request in fake_api.list_requests]

        assert events[0]["status"] == "success"
        assert fake_api.token_requests() == 2
        assert tokens_sent[1] == f"Bearer {fake_api.issued[0]}"
        assert tokens_sent[2] == f"Bearer {fake_api.issued[1]}"
        assert TOKEN_CACHE.get(hooks_built[0]._settings).value == fake_api.issued[1]

    def test_second_401_is_error(self, fake_api, hooks_built):
        fake_api.faults = [httpx.Response(401, json=BODY_401_EXPIRED), httpx.Response(401, json=BODY_401_EXPIRED)]

        events = run_trigger(make_trigger())

        assert events[0]["error_type"] == "SepaExportAuthError"
        assert fake_api.token_requests() == 2

    def test_429_and_503_retried(self, fake_api, hooks_built, retry_waits):
        fake_api.jobs = [finished_job()]
        fake_api.faults = [
            httpx.Response(429, headers={"Retry-After": "2"}, json={"message": "Too many requests"}),
            httpx.Response(503, text="<html>Service Unavailable</html>"),
        ]

        events = run_trigger(make_trigger())

        assert events[0]["status"] == "success"
        assert len(retry_waits) == 2
        assert retry_waits[0] >= 2.0
        assert len(fake_api.list_requests) == 3

    def test_5xx_until_retries_run_out(self, fake_api, hooks_built, retry_waits):
        fake_api.faults = [httpx.Response(502, text="Bad Gateway")] * 3

        events = run_trigger(make_trigger())

        assert len(events) == 1
        assert events[0]["status"] == "error"
        assert events[0]["error_type"] == "SepaExportServerError"
        assert "HTTP 502" in events[0]["message"]
        assert "after 3 attempts" in events[0]["message"]
        assert len(retry_waits) == 2

    def test_retry_after_over_limit_not_waited(self, fake_api, hooks_built, retry_waits):
        fake_api.faults = [httpx.Response(503, headers={"Retry-After": "3600"}, text="maintenance")]

        events = run_trigger(make_trigger())

        assert events[0]["error_type"] == "SepaExportServerError"
        assert retry_waits == []

    @pytest.mark.parametrize(
        "failure",
        [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("dropped")],
        ids=["connect", "read-timeout", "disconnect"],
    )
    def test_transport_failure_retried(self, fake_api, hooks_built, retry_waits, failure):
        fake_api.jobs = [finished_job()]
        fake_api.faults = [failure]

        events = run_trigger(make_trigger())

        assert events[0]["status"] == "success"
        assert len(retry_waits) == 1

    def test_transport_failures_exhaust_retries(self, fake_api, hooks_built):
        fake_api.faults = [httpx.ReadTimeout("slow")] * 3

        events = run_trigger(make_trigger())

        assert events[0]["error_type"] == "SepaExportServerError"
        assert "read timed out" in events[0]["message"]

    def test_403_not_retried(self, fake_api, hooks_built, retry_waits):
        fake_api.faults = [httpx.Response(403, json={"message": "forbidden"})]

        events = run_trigger(make_trigger())

        assert events[0]["error_type"] == "SepaExportScopeError"
        assert "sepaexport.job_view" in events[0]["message"]
        assert retry_waits == []

    def test_body_not_json_is_error(self, fake_api, hooks_built):
        fake_api.faults = [httpx.Response(200, text="<html>portal login</html>")]

        events = run_trigger(make_trigger())

        assert events[0]["error_type"] == "SepaExportResponseError"

    def test_echoed_secrets_redacted(self, api, fake_api, hooks_built):
        fake_api.jobs = [finished_job()]
        run_trigger(make_trigger())
        token = fake_api.issued[0]
        fake_api.faults = [httpx.Response(400, text=f"echo: secret={api.client_secret} token={token}")]

        events = run_trigger(make_trigger())
        text = json.dumps(events)

        assert events[0]["error_type"] == "SepaExportBadRequestError"
        assert api.client_secret not in text
        assert token not in text
        assert "***" in text


class TestTriggerErrors:
    def test_missing_connection(self, monkeypatch, hooks_built):
        monkeypatch.delenv("AIRFLOW_CONN_EMPORIX_DEFAULT")

        events = run_trigger(make_trigger(emporix_conn_id="emporix_missing"))

        assert events[0]["status"] == "error"
        assert events[0]["error_type"] == "SepaExportConfigError"
        assert "AIRFLOW_CONN_EMPORIX_MISSING" in events[0]["message"]

    def test_invalid_connection_extra(self, monkeypatch, api, hooks_built):
        connection = {
            "conn_type": "emporix",
            "host": api.base_url,
            "login": "id",
            "password": "pw",
            "extra": "{not json",
        }
        monkeypatch.setenv("AIRFLOW_CONN_EMPORIX_DEFAULT", json.dumps(connection))

        events = run_trigger(make_trigger())

        assert events[0]["error_type"] == "SepaExportConfigError"
        assert "not valid JSON" in events[0]["message"]

    def test_invalid_job_id(self, fake_api, hooks_built):
        events = run_trigger(make_trigger(job_id=" "))

        assert events[0]["error_type"] == "SepaExportInputError"
        assert fake_api.list_requests == []

    def test_unexpected_error_is_error_event(self, monkeypatch, fake_api, hooks_built):
        async def explode(self, *args, **kwargs):
            raise RuntimeError("bug in the hook")

        monkeypatch.setattr(SepaExportAsyncHook, "get_job", explode)

        events = run_trigger(make_trigger())

        assert events == [
            {
                "status": "error",
                "message": f"Unexpected RuntimeError while waiting for export job {JOB_ID}: bug in the hook",
                "error_type": "RuntimeError",
            }
        ]

    def test_client_closed_after_error(self, fake_api, hooks_built):
        fake_api.faults = [httpx.Response(404, json={"message": "no such tenant"})]

        run_trigger(make_trigger())

        assert hooks_built[0]._client is None


class PausedTokenEndpoint:
    """Token endpoint for ``httpx.MockTransport`` that replies after a pause, so that concurrent requests overlap.

    With ``status`` 200 each request gets a new token, and with another status an error body.
    """

    def __init__(self, status: int = 200, pause: float = 0.05) -> None:
        self.status = status
        self.pause = pause
        self.token_requests = 0
        self.request_started = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/oauth/token"
        self.token_requests += 1
        self.request_started.set()
        await asyncio.sleep(self.pause)
        if self.status != 200:
            return httpx.Response(self.status, json={"fault": {"faultstring": "Invalid client identifier"}})
        token = f"shared-token-{self.token_requests}-Vb4nQ"
        return httpx.Response(200, json={"access_token": token, "token_type": "Bearer", "expires_in": 3600})

    def hook(self) -> SepaExportAsyncHook:
        return SepaExportAsyncHook(retry_policy=RetryPolicy(max_attempts=1), transport=httpx.MockTransport(self.handle))


class TestTokenSingleFlight:
    """Hooks in one event loop that need a token for the same client at once send one token request."""

    @pytest.mark.asyncio
    async def test_concurrent_hooks_share_request(self, api):
        endpoint = PausedTokenEndpoint()
        hooks = [endpoint.hook() for _ in range(50)]

        tokens = await asyncio.gather(*(hook.get_token() for hook in hooks))
        for hook in hooks:
            await hook.aclose()

        assert endpoint.token_requests == 1
        assert set(tokens) == {"shared-token-1-Vb4nQ"}

    @pytest.mark.asyncio
    async def test_failed_request_raises_in_every_waiter(self, api):
        endpoint = PausedTokenEndpoint(status=401)
        hooks = [endpoint.hook() for _ in range(20)]

        results = await asyncio.gather(*(hook.get_token() for hook in hooks), return_exceptions=True)
        for hook in hooks:
            await hook.aclose()

        assert endpoint.token_requests == 1
        assert {type(result).__name__ for result in results} == {"SepaExportAuthError"}
        assert TOKEN_CACHE.get(hooks[0]._settings) is None

    @pytest.mark.asyncio
    async def test_cancelled_fetch_leaves_waiter_to_fetch(self, api):
        endpoint = PausedTokenEndpoint()
        first, second = endpoint.hook(), endpoint.hook()

        first_task = asyncio.create_task(first.get_token())
        await asyncio.wait_for(endpoint.request_started.wait(), timeout=5)
        second_task = asyncio.create_task(second.get_token())
        await asyncio.sleep(0)
        first_task.cancel()
        token = await asyncio.wait_for(second_task, timeout=5)
        await first.aclose()
        await second.aclose()

        assert first_task.cancelled()
        assert token == "shared-token-2-Vb4nQ"
        assert endpoint.token_requests == 2

    @pytest.mark.asyncio
    async def test_cancelled_waiter_leaves_fetch_running(self, api):
        endpoint = PausedTokenEndpoint()
        first, second = endpoint.hook(), endpoint.hook()

        first_task = asyncio.create_task(first.get_token())
        await asyncio.wait_for(endpoint.request_started.wait(), timeout=5)
        second_task = asyncio.create_task(second.get_token())
        await asyncio.sleep(0)
        second_task.cancel()
        token = await asyncio.wait_for(first_task, timeout=5)
        await first.aclose()
        await second.aclose()

        assert second_task.cancelled()
        assert token == "shared-token-1-Vb4nQ"
        assert endpoint.token_requests == 1

    def test_concurrent_triggers_share_request(self, monkeypatch, fake_api):
        fake_api.jobs = [finished_job()]

        async def pause_token_reply(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/oauth/token":
                await asyncio.sleep(0.05)
            return fake_api.handle(request)

        def make_hook(trigger: SepaExportJobTrigger) -> SepaExportAsyncHook:
            return SepaExportAsyncHook(trigger.emporix_conn_id, transport=httpx.MockTransport(pause_token_reply))

        monkeypatch.setattr(SepaExportJobTrigger, "_make_hook", make_hook)

        async def run_all() -> list[list[dict[str, Any]]]:
            async def collect(trigger: SepaExportJobTrigger) -> list[dict[str, Any]]:
                return [event.payload async for event in trigger.run()]

            return await asyncio.gather(*(collect(make_trigger()) for _ in range(30)))

        results = asyncio.run(asyncio.wait_for(run_all(), timeout=20))

        assert [events[0]["status"] for events in results] == ["success"] * 30
        assert fake_api.token_requests() == 1


class TestSharedClient:
    """Async hooks of one event loop and one API client send their requests through one httpx client."""

    @staticmethod
    def loop_clients() -> dict[Any, Any]:
        from airflow_provider_sepa.hooks.sepa_export import _clients_of_running_loop

        return _clients_of_running_loop().by_key

    @pytest.mark.asyncio
    async def test_last_hook_closes_shared_client(self, fake_api):
        fake_api.jobs = [finished_job()]
        transport = httpx.MockTransport(fake_api.handle)
        first, second = SepaExportAsyncHook(transport=transport), SepaExportAsyncHook(transport=transport)

        await first.list_jobs(SITE_CODE)
        await second.list_jobs(SITE_CODE)
        client = first._client
        await first.aclose()
        still_open = not client.is_closed
        await second.list_jobs(SITE_CODE)
        await second.aclose()

        assert second._client is None
        assert still_open
        assert client.is_closed
        assert self.loop_clients() == {}
        assert len(fake_api.list_requests) == 3

    @pytest.mark.asyncio
    async def test_other_credentials_get_own_client(self, monkeypatch, fake_api):
        monkeypatch.setenv(
            "AIRFLOW_CONN_EMPORIX_OTHER",
            json.dumps(
                {
                    "conn_type": "emporix",
                    "host": fake_api.api.base_url,
                    "login": fake_api.api.client_id,
                    "password": "another-s3cret-Rm2x",
                    "extra": {"tenant": fake_api.api.tenant},
                }
            ),
        )
        transport = httpx.MockTransport(fake_api.handle)
        default, other = (
            SepaExportAsyncHook(transport=transport),
            SepaExportAsyncHook("emporix_other", transport=transport),
        )

        await default.list_jobs(SITE_CODE)
        await other.list_jobs(SITE_CODE)
        clients = (default._client, other._client)
        await default.aclose()
        await other.aclose()

        assert clients[0] is not clients[1]
        assert all(client.is_closed for client in clients)

    @pytest.mark.asyncio
    async def test_cancelled_setup_leaves_no_user(self, monkeypatch, fake_api):
        fake_api.jobs = [finished_job()]
        transport = httpx.MockTransport(fake_api.handle)

        def slow_setup() -> None:
            time.sleep(0.2)

        monkeypatch.setattr(sepa_export_hooks, "_HTTP_CLIENT_READY", False)
        monkeypatch.setattr(sepa_export_hooks, "_prepare_http_client", slow_setup)
        cancelled, later = SepaExportAsyncHook(transport=transport), SepaExportAsyncHook(transport=transport)

        task = asyncio.create_task(cancelled.list_jobs(SITE_CODE))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        registry_after_cancel = dict(self.loop_clients())
        await later.list_jobs(SITE_CODE)
        client = later._client
        await later.aclose()
        await cancelled.aclose()

        assert registry_after_cancel == {}
        assert cancelled._client is None
        assert client.is_closed
        assert self.loop_clients() == {}

    @pytest.mark.asyncio
    async def test_concurrent_first_requests_count_once(self, fake_api):
        fake_api.jobs = [finished_job()]
        hook = SepaExportAsyncHook(transport=httpx.MockTransport(fake_api.handle))

        await asyncio.gather(hook.list_jobs(SITE_CODE), hook.list_jobs(SITE_CODE))
        client = hook._client
        await hook.aclose()

        assert client.is_closed
        assert self.loop_clients() == {}

    def test_other_loop_aclose_keeps_client(self, fake_api):
        fake_api.jobs = [finished_job()]
        transport = httpx.MockTransport(fake_api.handle)
        first, second = SepaExportAsyncHook(transport=transport), SepaExportAsyncHook(transport=transport)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(first.list_jobs(SITE_CODE))
            loop.run_until_complete(second.list_jobs(SITE_CODE))
            shared = second._client
            asyncio.run(first.aclose())
            loop.run_until_complete(second.list_jobs(SITE_CODE))
            loop.run_until_complete(second.aclose())
        finally:
            loop.close()

        assert first._client is None
        assert shared.is_closed
        assert len(fake_api.list_requests) == 3

    def test_new_loop_takes_new_client(self, fake_api):
        fake_api.jobs = [finished_job()]
        hook = SepaExportAsyncHook(transport=httpx.MockTransport(fake_api.handle))

        async def list_once() -> httpx.AsyncClient | None:
            await hook.list_jobs(SITE_CODE)
            return hook._client

        first_client = asyncio.run(list_once())
        second_client = asyncio.run(list_once())

        async def close() -> None:
            await hook.aclose()

        asyncio.run(close())

        assert first_client is not second_client
        assert hook._client is None

    def test_finished_loop_is_freed(self, fake_api):
        fake_api.jobs = [finished_job()]
        transport = httpx.MockTransport(fake_api.handle)
        loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

        async def main() -> None:
            loops.append(weakref.ref(asyncio.get_running_loop()))
            hooks = [SepaExportAsyncHook(transport=transport) for _ in range(3)]
            await asyncio.gather(*(hook.list_jobs(SITE_CODE) for hook in hooks))
            for hook in hooks:
                await hook.aclose()

        asyncio.run(main())
        # Airflow keeps a reference to the last loop that looked up a connection; a new one replaces it.
        asyncio.run(main())
        gc.collect()

        assert loops[0]() is None

    def test_cancelled_triggers_close_every_client(self, monkeypatch, fake_api, built_clients):
        fake_api.jobs = [running_job()]
        finish_on_list(fake_api, 150, finished_job())
        transport = httpx.MockTransport(fake_api.handle)
        monkeypatch.setattr(
            SepaExportJobTrigger, "_make_hook", lambda trigger: SepaExportAsyncHook(transport=transport)
        )
        rng = random.Random(1)

        async def main() -> dict[Any, Any]:
            async def collect(trigger: SepaExportJobTrigger) -> list[dict[str, Any]]:
                return [event.payload async for event in trigger.run()]

            tasks = [asyncio.create_task(collect(make_trigger())) for _ in range(60)]
            for task in rng.sample(tasks, 25):
                await asyncio.sleep(rng.uniform(0, 0.02))
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return dict(self.loop_clients())

        left = asyncio.run(asyncio.wait_for(main(), timeout=30))

        assert left == {}
        assert built_clients
        assert [client for client in built_clients if not client.is_closed] == []

    def test_concurrent_triggers_share_clients(self, monkeypatch, fake_api, built_clients):
        fake_api.jobs = [running_job()]
        finish_on_list(fake_api, 60, finished_job())
        transport = httpx.MockTransport(fake_api.handle)
        monkeypatch.setattr(
            SepaExportJobTrigger, "_make_hook", lambda trigger: SepaExportAsyncHook(transport=transport)
        )

        async def run_all() -> list[list[dict[str, Any]]]:
            async def collect(trigger: SepaExportJobTrigger) -> list[dict[str, Any]]:
                return [event.payload async for event in trigger.run()]

            return await asyncio.gather(*(collect(make_trigger()) for _ in range(30)))

        results = asyncio.run(asyncio.wait_for(run_all(), timeout=20))

        assert [events[0]["status"] for events in results] == ["success"] * 30
        assert len(fake_api.list_requests) >= 60
        assert len(built_clients) == math.ceil(30 / HOOKS_PER_CLIENT)
        assert all(client.is_closed for client in built_clients)

    @pytest.mark.asyncio
    async def test_full_client_starts_another(self, fake_api):
        fake_api.jobs = [finished_job()]
        transport = httpx.MockTransport(fake_api.handle)
        hooks = [SepaExportAsyncHook(transport=transport) for _ in range(HOOKS_PER_CLIENT + 1)]

        for hook in hooks:
            await hook.list_jobs(SITE_CODE)
        clients = [hook._client for hook in hooks]
        for hook in hooks:
            await hook.aclose()

        assert len({id(client) for client in clients}) == 2
        assert clients[0] is clients[HOOKS_PER_CLIENT - 1]
        assert clients[HOOKS_PER_CLIENT] is not clients[0]
        assert all(client.is_closed for client in clients)
        assert self.loop_clients() == {}


def test_trigger_module_imports_no_http_client():
    # Airflow itself may load httpx, so only the modules the trigger module adds count.
    probe = (
        "import json, sys\n"
        "import airflow.sdk, airflow.triggers.base\n"
        "before = set(sys.modules)\n"
        "import airflow_provider_sepa.triggers.sepa_export\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    added = json.loads(completed.stdout.strip().splitlines()[-1])

    assert "airflow_provider_sepa.triggers.sepa_export" in added
    assert [name for name in added if name.split(".")[0] in ("httpx", "httpcore", "requests", "urllib3")] == []


def scripted_transport(list_responses: list[httpx.Response]) -> httpx.MockTransport:
    """Return a transport that issues tokens and serves ``list_responses`` in order, the last one repeatedly."""
    served = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            token = {"access_token": "async-token-Hy71q", "token_type": "Bearer", "expires_in": 3600}
            return httpx.Response(200, json=token)
        served.append(request)
        return list_responses[min(len(served), len(list_responses)) - 1]

    return httpx.MockTransport(handle)


# Each case: the list responses in order (the last one repeats), as (status, headers, body).
HOOK_PARITY_CASES = {
    "ok": [(200, {}, [finished_job()])],
    "429-then-ok": [(429, {"Retry-After": "4"}, {"message": "slow down"}), (200, {}, [finished_job()])],
    "503-then-ok": [(503, {}, "<html>unavailable</html>"), (200, {}, [finished_job()])],
    "502-always": [(502, {}, "<html>Bad Gateway</html>")],
    "retry-after-too-long": [(503, {"Retry-After": "3600"}, "maintenance")],
    "400": [(400, {}, {"message": "Bad Request", "_embedded": {"errors": [{"message": "siteCode invalid"}]}})],
    "401-twice": [(401, {}, BODY_401_EXPIRED)],
    "403": [(403, {}, {"message": "forbidden", "details": ["Missing required scopes"]})],
    "404": [(404, {}, {"message": "tenant not found"})],
    "418": [(418, {}, "teapot")],
    "not-json": [(200, {}, "<html>portal</html>")],
    "not-a-list": [(200, {}, {"jobs": []})],
    "job-without-id": [(200, {}, [{"status": "DONE"}])],
    "redirect": [(302, {"Location": "https://elsewhere.example.test/"}, "")],
}


def as_body(body: Any) -> dict[str, Any]:
    if isinstance(body, str):
        return {"text": body}
    return {"json": body}


class TestHookParity:
    """The async hook ends each list request as the sync hook does: same jobs, waits, error class and message."""

    @pytest.mark.parametrize("case", list(HOOK_PARITY_CASES), ids=list(HOOK_PARITY_CASES))
    @pytest.mark.asyncio
    async def test_list_jobs_same_end(self, api, requests_mock, case):
        responses = HOOK_PARITY_CASES[case]
        requests_mock.post(
            api.token_url, json={"access_token": "sync-token-Kw93x", "token_type": "Bearer", "expires_in": 3600}
        )
        scripted = [{"status_code": status, "headers": headers, **as_body(body)} for status, headers, body in responses]
        requests_mock.get(api.jobs_url, scripted)
        sync_waits: list[float] = []
        sync_policy = RetryPolicy(max_attempts=3, rng=random.Random(5))
        sync_hook = SepaExportHook(retry_policy=sync_policy, sleep=sync_waits.append)
        async_waits: list[float] = []

        async def record_wait(seconds: float) -> None:
            async_waits.append(seconds)

        transport = scripted_transport(
            [httpx.Response(status, headers=headers, **as_body(body)) for status, headers, body in responses]
        )
        try:
            sync_result = sync_hook.list_jobs(SITE_CODE)
        except Exception as error:  # noqa: BLE001 - compared with the async hook's result below
            sync_result = error
        TOKEN_CACHE.clear()
        async with SepaExportAsyncHook(
            retry_policy=RetryPolicy(max_attempts=3, rng=random.Random(5)), sleep=record_wait, transport=transport
        ) as async_hook:
            try:
                async_result = await async_hook.list_jobs(SITE_CODE)
            except Exception as error:  # noqa: BLE001 - compared with the sync hook's result above
                async_result = error

        assert type(async_result) is type(sync_result)
        if isinstance(sync_result, Exception):
            assert str(async_result) == str(sync_result)
        else:
            assert async_result == sync_result
        assert async_waits == sync_waits

    @pytest.mark.asyncio
    async def test_get_job_not_found_same_message(self, api, requests_mock):
        requests_mock.post(api.token_url, json={"access_token": "sync-token-Kw93x", "expires_in": 3600})
        requests_mock.get(api.jobs_url, json=[finished_job("another-job")])
        transport = scripted_transport([httpx.Response(200, json=[finished_job("another-job")])])

        with pytest.raises(SepaExportJobNotFoundError) as sync_error:
            SepaExportHook().get_job(SITE_CODE, JOB_ID)
        async with SepaExportAsyncHook(transport=transport) as async_hook:
            with pytest.raises(SepaExportJobNotFoundError) as async_error:
                await async_hook.get_job(SITE_CODE, JOB_ID)

        assert str(async_error.value) == str(sync_error.value)

    @pytest.mark.asyncio
    async def test_list_jobs_query(self, api):
        transport_requests: list[httpx.Request] = []

        def handle(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/oauth/token":
                return httpx.Response(200, json={"access_token": "async-token-Hy71q", "expires_in": 3600})
            transport_requests.append(request)
            return httpx.Response(200, json=[])

        async with SepaExportAsyncHook(transport=httpx.MockTransport(handle)) as async_hook:
            jobs = await async_hook.list_jobs(SITE_CODE, page_number=3, page_size=7, sort="ASC")

        assert jobs == []
        assert dict(transport_requests[0].url.params) == {
            "siteCode": SITE_CODE,
            "pageNumber": "3",
            "pageSize": "7",
            "sort": "ASC",
        }
        assert transport_requests[0].headers["Authorization"] == "Bearer async-token-Hy71q"
        assert transport_requests[0].headers["User-Agent"] == "airflow-provider-sepa"

    @pytest.mark.asyncio
    async def test_aclose_twice(self, api):
        hook = SepaExportAsyncHook(transport=scripted_transport([httpx.Response(200, json=[])]))
        await hook.list_jobs(SITE_CODE)

        await hook.aclose()
        await hook.aclose()

        assert hook._client is None
