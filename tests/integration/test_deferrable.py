"""Deferrable waiting against the emulator: each scenario must end as polling in the worker does.

A deferred task is driven as Airflow drives it: ``execute`` raises ``TaskDeferred``, the
trigger is rebuilt from ``serialize()`` and run to its first event in an event loop, and
the task resumes through ``resume_execution``, which calls ``execute_complete``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowSensorTimeout, TaskDeferred

from airflow_provider_sepa.core.errors import (
    SepaExportJobFailedError,
    SepaExportJobNotFoundError,
    SepaExportServerError,
    SepaExportTimeoutError,
)
from airflow_provider_sepa.core.retry import RetryPolicy
from airflow_provider_sepa.emulator.app import ENDPOINT_LIST_JOBS
from airflow_provider_sepa.emulator.state import InjectedResponse, RequestContext
from airflow_provider_sepa.hooks.sepa_export import SepaExportHook
from airflow_provider_sepa.operators.sepa_export import SepaExportCreateJobOperator
from airflow_provider_sepa.sensors.sepa_export import SepaExportJobSensor
from airflow_provider_sepa.triggers.sepa_export import SepaExportJobTrigger
from tests.integration.conftest import make_context

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("emporix_conn")]

POLL_SECONDS = 0.05
MISSING_JOB_ID = "00000000-0000-4000-8000-000000000000"


@dataclass
class Outcome:
    """How one run of a task ended: its return value or exception, and its XComs."""

    value: Any = None
    error: BaseException | None = None
    xcom: dict[str, Any] = field(default_factory=dict)

    @property
    def error_class(self) -> type[BaseException] | None:
        return type(self.error) if self.error is not None else None


@dataclass
class Deferral:
    """A task that raised ``TaskDeferred``, with the context it will resume in."""

    task: Any
    context: dict[str, Any]
    deferred: TaskDeferred


def first_event(trigger: SepaExportJobTrigger) -> dict[str, Any]:
    """Run the trigger in a new event loop until its first event and return the payload."""

    async def run() -> Any:
        return await anext(trigger.run())

    return asyncio.run(asyncio.wait_for(run(), timeout=30)).payload


def start_deferrable(task: Any, context: dict[str, Any]) -> Deferral:
    """Call ``execute`` and expect the task to defer."""
    with pytest.raises(TaskDeferred) as raised:
        task.execute(context)
    return Deferral(task, context, raised.value)


def finish_deferrable(deferral: Deferral) -> Outcome:
    """Rebuild the trigger from its serialized form, run it, and resume the task with the event."""
    classpath, kwargs = deferral.deferred.trigger.serialize()
    assert classpath == "airflow_provider_sepa.triggers.sepa_export.SepaExportJobTrigger"
    event = first_event(SepaExportJobTrigger(**json.loads(json.dumps(kwargs))))
    next_kwargs = {**(deferral.deferred.kwargs or {}), "event": event}
    outcome = Outcome(xcom=deferral.context["ti"].xcom)
    try:
        outcome.value = deferral.task.resume_execution(deferral.deferred.method_name, next_kwargs, deferral.context)
    except Exception as error:  # noqa: BLE001 - the test compares the exception class
        outcome.error = error
    return outcome


def run_sync(task: Any, context: dict[str, Any]) -> Outcome:
    """Run a non-deferrable task to its end in the worker."""
    outcome = Outcome(xcom=context["ti"].xcom)
    try:
        outcome.value = task.execute(context)
    except Exception as error:  # noqa: BLE001 - the test compares the exception class
        outcome.error = error
    return outcome


def assert_same_end(deferred: Outcome, polled: Outcome) -> None:
    """Assert that both runs raised the same exception class, or returned and pushed the same values."""
    assert deferred.error_class is polled.error_class, (deferred.error, polled.error)
    assert deferred.value == polled.value
    assert deferred.xcom == polled.xcom


def make_sensor(job_id: str, deferrable: bool, **overrides: Any) -> SepaExportJobSensor:
    arguments = {"poke_interval": POLL_SECONDS, "timeout": 20.0}
    arguments.update(overrides)
    return SepaExportJobSensor(
        task_id="wait_for_job", site_code="main", job_id=job_id, deferrable=deferrable, **arguments
    )


def make_operator(deferrable: bool, **overrides: Any) -> SepaExportCreateJobOperator:
    arguments = {"poll_interval": POLL_SECONDS, "timeout": 20.0}
    arguments.update(overrides)
    return SepaExportCreateJobOperator(
        task_id="create_job", site_code="main", wait_for_completion=True, deferrable=deferrable, **arguments
    )


def sensor_runs(job_id: str, **overrides: Any) -> tuple[Outcome, Outcome]:
    """Defer a sensor while the job runs, poll with a second sensor to the end, then finish the deferred one.

    Both sensors therefore see the job in the same final state.
    """
    deferral = start_deferrable(make_sensor(job_id, True, **overrides), make_context())
    polled = run_sync(make_sensor(job_id, False, **overrides), make_context())
    return finish_deferrable(deferral), polled


def operator_runs(**overrides: Any) -> tuple[Outcome, Outcome]:
    """Create a job with a deferring operator, then wait for the same job with a polling one.

    The polling operator runs as the task's second try, so it adopts the job created
    during the run instead of starting another.
    """
    started = make_context()["dag_run"].start_date
    deferral = start_deferrable(make_operator(True, **overrides), make_context(run_started=started))
    polled = run_sync(make_operator(False, **overrides), make_context(try_number=2, run_started=started))
    return finish_deferrable(deferral), polled


def list_rewriter(emulator, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]):
    """Serve every list request from the emulator's jobs after ``change`` has edited the full list.

    Requests are paged as the API pages them. The injected responses skip the token check.
    """

    def rewrite(request: RequestContext) -> InjectedResponse | None:
        if request.endpoint != ENDPOINT_LIST_JOBS:
            return None
        site_code = request.query["siteCode"]
        jobs = emulator.state.list_jobs(emulator.config.tenant, site_code, 1, 100_000, descending=True)
        number = int(request.query.get("pageNumber", "1"))
        size = int(request.query.get("pageSize", "16"))
        return InjectedResponse(200, change(jobs)[(number - 1) * size : number * size])

    return rewrite


def end_finished_jobs_as(emulator, status: str) -> None:
    """Show every finished job with ``status`` and without a fileId."""

    def change(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        changed = []
        for job in jobs:
            if not job["active"]:
                job = {key: value for key, value in job.items() if key != "fileId"}
                job["status"] = status
            changed.append(job)
        return changed

    emulator.state.add_request_hook(list_rewriter(emulator, change))


def keep_jobs_running(emulator) -> None:
    """Show every job as still running, whatever its real state."""

    def change(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"jobId": job["jobId"], "status": "IN_PROGRESS", "siteCode": job["siteCode"], "active": True}
            for job in jobs
        ]

    emulator.state.add_request_hook(list_rewriter(emulator, change))


class ListFaults:
    """Request hook that replaces list responses with scripted ones, then lets requests through.

    ``actions`` maps the 1-based number of a list request, counted from :meth:`arm`, to a
    response to inject or to a callable run before the emulator answers.
    """

    def __init__(self) -> None:
        self.actions: dict[int, InjectedResponse | Callable[[], None]] = {}
        self.count = 0

    def arm(self, actions: dict[int, InjectedResponse | Callable[[], None]]) -> None:
        self.actions = dict(actions)
        self.count = 0

    def __call__(self, request: RequestContext) -> InjectedResponse | None:
        if request.endpoint != ENDPOINT_LIST_JOBS:
            return None
        self.count += 1
        action = self.actions.get(self.count)
        if isinstance(action, InjectedResponse):
            return action
        if action is not None:
            action()
        return None


@pytest.fixture
def list_faults(emulator) -> ListFaults:
    faults = ListFaults()
    emulator.state.add_request_hook(faults)
    return faults


@pytest.fixture
def fast_retries(monkeypatch):
    """Cut every retry wait to 10 ms, in both hooks, so retry scenarios stay fast."""
    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, attempt: 0.01)


def requests_to(emulator, endpoint: str) -> list[dict[str, Any]]:
    return [entry for entry in emulator.state.request_log() if entry["endpoint"] == endpoint]


class TestSensorParity:
    def test_success_same_xcom(self, emulator):
        job_id = SepaExportHook().create_job("main")

        deferred, polled = sensor_runs(job_id)

        assert_same_end(deferred, polled)
        assert deferred.value["job_id"] == job_id
        assert deferred.value["state"] == "succeeded"
        assert deferred.xcom["file_id"] == emulator.state.jobs()[0]["fileId"]

    def test_failed_job(self, emulator):
        job_id = SepaExportHook().create_job("main")
        end_finished_jobs_as(emulator, "FAILED")

        deferred, polled = sensor_runs(job_id)

        assert_same_end(deferred, polled)
        assert deferred.error_class is SepaExportJobFailedError
        assert str(deferred.error) == str(polled.error)

    def test_unknown_status_without_file(self, emulator):
        job_id = SepaExportHook().create_job("main")
        end_finished_jobs_as(emulator, "EXPORTED")

        deferred, polled = sensor_runs(job_id)

        assert_same_end(deferred, polled)
        assert deferred.error_class is SepaExportJobFailedError
        assert "without a fileId" in str(deferred.error)

    def test_job_on_later_page(self, emulator):
        job_id = SepaExportHook().create_job("main")
        filler = [
            {"jobId": f"filler-{index}", "status": "COMPLETED", "siteCode": "main", "active": False, "fileId": "f"}
            for index in range(60)
        ]
        emulator.state.add_request_hook(list_rewriter(emulator, lambda jobs: filler + jobs))

        deferred, polled = sensor_runs(job_id)
        pages = {entry["query"]["pageNumber"] for entry in requests_to(emulator, ENDPOINT_LIST_JOBS)}

        assert_same_end(deferred, polled)
        assert deferred.value["job_id"] == job_id
        assert pages == {"1", "2"}

    def test_token_expiry_mid_wait(self, emulator, list_faults):
        job_id = SepaExportHook().create_job("main")
        deferral = start_deferrable(make_sensor(job_id, True), make_context())

        list_faults.arm({2: emulator.state.expire_tokens})
        polled = run_sync(make_sensor(job_id, False), make_context())
        list_faults.arm({1: emulator.state.expire_tokens})
        deferred = finish_deferrable(deferral)
        statuses = [entry["status_code"] for entry in requests_to(emulator, ENDPOINT_LIST_JOBS)]

        assert_same_end(deferred, polled)
        assert deferred.value["state"] == "succeeded"
        assert statuses.count(401) == 2
        assert len(requests_to(emulator, "token")) == 3

    def test_429_and_503_retried(self, emulator, list_faults, fast_retries):
        job_id = SepaExportHook().create_job("main")
        faults = {
            1: InjectedResponse(429, {"message": "Too many requests"}, {"Retry-After": "0"}),
            2: InjectedResponse(503, "<html>Service Unavailable</html>"),
        }
        deferral = start_deferrable(make_sensor(job_id, True), make_context())

        list_faults.arm(faults)
        polled = run_sync(make_sensor(job_id, False), make_context())
        list_faults.arm(faults)
        deferred = finish_deferrable(deferral)
        statuses = [entry["status_code"] for entry in requests_to(emulator, ENDPOINT_LIST_JOBS)]

        assert_same_end(deferred, polled)
        assert deferred.value["state"] == "succeeded"
        assert statuses.count(429) == 2
        assert statuses.count(503) == 2

    def test_5xx_until_retries_run_out(self, emulator, list_faults, fast_retries):
        job_id = SepaExportHook().create_job("main")
        outage = {number: InjectedResponse(502, "Bad Gateway") for number in range(1, 6)}
        deferral = start_deferrable(make_sensor(job_id, True), make_context())

        list_faults.arm(outage)
        polled = run_sync(make_sensor(job_id, False), make_context())
        list_faults.arm(outage)
        deferred = finish_deferrable(deferral)

        assert_same_end(deferred, polled)
        assert deferred.error_class is SepaExportServerError
        assert "HTTP 502" in str(deferred.error)
        assert "after 5 attempts" in str(deferred.error)

    def test_timeout(self, emulator):
        job_id = SepaExportHook().create_job("main")
        keep_jobs_running(emulator)

        deferred, polled = sensor_runs(job_id, timeout=0.5)

        assert_same_end(deferred, polled)
        assert deferred.error_class is AirflowSensorTimeout
        assert job_id in str(deferred.error)

    def test_job_missing_too_long(self, emulator):
        deferred, polled = sensor_runs(MISSING_JOB_ID, job_not_found_timeout=0.3)

        assert_same_end(deferred, polled)
        assert deferred.error_class is SepaExportJobNotFoundError
        assert "job_not_found_timeout=0" in str(deferred.error)

    def test_finished_job_not_deferred(self, emulator):
        hook = SepaExportHook()
        job_id = hook.create_job("main")
        polled = run_sync(make_sensor(job_id, False), make_context())
        context = make_context()

        value = make_sensor(job_id, True).execute(context)

        assert value == polled.value
        assert context["ti"].xcom == polled.xcom


class TestOperatorParity:
    def test_success_same_xcom(self, emulator):
        deferred, polled = operator_runs()

        assert_same_end(deferred, polled)
        assert deferred.xcom["job"]["state"] == "succeeded"
        assert deferred.value == deferred.xcom["job_id"]
        assert emulator.state.job_count() == 1

    def test_failed_job(self, emulator):
        end_finished_jobs_as(emulator, "FAILED")

        deferred, polled = operator_runs()

        assert_same_end(deferred, polled)
        assert deferred.error_class is SepaExportJobFailedError

    def test_timeout(self, emulator):
        keep_jobs_running(emulator)

        deferred, polled = operator_runs(timeout=0.5)

        assert_same_end(deferred, polled)
        assert deferred.error_class is SepaExportTimeoutError
        assert "SepaExportJobSensor" in str(deferred.error)

    def test_deadline_set_at_first_start(self, emulator):
        context = make_context()
        before = time.time()

        deferral = start_deferrable(make_operator(True, timeout=600), context)
        trigger_deadline = deferral.deferred.trigger.deadline

        assert before + 600 - 1 <= trigger_deadline <= time.time() + 600
        assert deferral.deferred.kwargs["deadline"] == trigger_deadline
        assert deferral.deferred.timeout.total_seconds() > 600


class TestDeferral:
    def test_serialized_trigger_has_no_secret(self, emulator):
        job_id = SepaExportHook().create_job("main")

        deferral = start_deferrable(make_sensor(job_id, True), make_context())
        text = json.dumps([deferral.deferred.trigger.serialize(), deferral.deferred.kwargs])

        assert emulator.state.issued_tokens()
        assert emulator.config.client_secret not in text
        for token in emulator.state.issued_tokens():
            assert token not in text

    def test_sensor_deadline_from_timeout(self, emulator):
        job_id = SepaExportHook().create_job("main")
        before = time.time()

        deferral = start_deferrable(make_sensor(job_id, True, timeout=3600), make_context())
        trigger = deferral.deferred.trigger

        assert before + 3600 - 1 <= trigger.deadline <= time.time() + 3600
        assert trigger.poll_interval == POLL_SECONDS
        assert trigger.job_not_found_timeout == 120.0

    def test_trigger_restart_keeps_deadline(self, emulator):
        job_id = SepaExportHook().create_job("main")
        keep_jobs_running(emulator)
        deferral = start_deferrable(make_sensor(job_id, True, timeout=0.3), make_context())
        time.sleep(0.4)

        started = time.monotonic()
        outcome = finish_deferrable(deferral)

        assert outcome.error_class is AirflowSensorTimeout
        assert time.monotonic() - started < 5


def test_trigger_never_blocks_event_loop(emulator, list_faults, fast_retries):
    """Run the trigger in asyncio debug mode and fail on any callback that blocks the loop over 100 ms."""
    job_id = SepaExportHook().create_job("main")
    list_faults.arm({2: emulator.state.expire_tokens, 3: InjectedResponse(503, "busy")})
    from airflow_provider_sepa.core.payloads import TOKEN_CACHE

    TOKEN_CACHE.clear()
    now = time.time()
    trigger = SepaExportJobTrigger(
        site_code="main", job_id=job_id, deadline=now + 20, started_at=now, poll_interval=POLL_SECONDS
    )
    slow_callbacks: list[str] = []

    class SlowCallbackHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("Executing") and " took " in message:
                slow_callbacks.append(message)

    asyncio_logger = logging.getLogger("asyncio")
    handler = SlowCallbackHandler(level=logging.WARNING)
    previous_level = asyncio_logger.level
    asyncio_logger.addHandler(handler)
    asyncio_logger.setLevel(logging.WARNING)
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.1
    try:
        event = loop.run_until_complete(asyncio.wait_for(anext(trigger.run()), timeout=30))
    finally:
        loop.close()
        asyncio_logger.removeHandler(handler)
        asyncio_logger.setLevel(previous_level)

    assert event.payload["status"] == "success"
    assert len(requests_to(emulator, "token")) == 3
    assert slow_callbacks == []
