"""Count the API requests of one single-site export: token, create, polls and download.

Each scenario runs the real operators and sensor against the emulator on 127.0.0.1 and
counts the requests per endpoint in the emulator's request log. The minimum for one
export is 1 token + 1 create + 1 list request per poll + 1 download.

Every scenario runs under two process models:

- "one process": all tasks share one Python process, as in ``airflow dags test``, so the
  process-wide token cache serves every task.
- "process per task": the token cache is cleared before each task try and each
  reschedule, because an executor runs every task try in a new process. The trigger of
  a deferred task runs in the triggerer, a long-lived process. The benchmark gives it an
  empty cache as well, as the triggerer has for its first trigger.

    .venv/bin/python benchmarks/requests_per_export.py [--job-seconds 1] [--poll-interval 0.25]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import bench_common
from bench_common import log, markdown_table

ENDPOINTS = ("token", "create_job", "list_jobs", "download_file")
SITE = "main"


@dataclass
class FakeTaskInstance:
    """The parts of a task instance that the operators and the sensor read."""

    try_number: int = 1
    start_date: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    first_reschedule_date: datetime | None = None
    xcom: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def get_first_reschedule_date(self, context: Any) -> datetime | None:
        return self.first_reschedule_date


@dataclass
class FakeDagRun:
    start_date: datetime


def make_context() -> dict[str, Any]:
    """Build the minimal task context, as tests/integration/conftest.py does."""
    started = datetime.now(timezone.utc)
    return {"ti": FakeTaskInstance(start_date=started), "dag_run": FakeDagRun(started)}


@dataclass
class ExportCount:
    scenario: str
    processes: str
    polls: int
    requests: Counter[str]
    seconds: float
    exports: int = 1


class Export:
    """The tasks of one export, with the token cache cleared wherever the process model starts a new process."""

    def __init__(self, output_dir: str, poll_interval: float, process_per_task: bool) -> None:
        self.output_dir = output_dir
        self.poll_interval = poll_interval
        self.process_per_task = process_per_task
        self.polls = 0

    def new_task_process(self) -> None:
        """Forget cached tokens when the process model starts a new process for the next task."""
        from airflow_provider_sepa.core.payloads import TOKEN_CACHE

        if self.process_per_task:
            TOKEN_CACHE.clear()

    # -- tasks ----------------------------------------------------------------------------

    def create(self, context: dict[str, Any] | None = None, **kwargs: Any) -> str:
        self.new_task_process()
        operator = _counting_create_operator(self)(task_id="create_job", site_code=SITE, **kwargs)
        return operator.execute(context or make_context())

    def wait_poke(self, job_id: str) -> dict[str, Any]:
        self.new_task_process()
        sensor = _counting_sensor(self)(
            task_id="wait_for_job", site_code=SITE, job_id=job_id, mode="poke", poke_interval=self.poll_interval
        )
        return sensor.execute(make_context())

    def wait_reschedule(self, job_id: str) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowRescheduleException

        context = make_context()
        ti = context["ti"]
        while True:
            self.new_task_process()
            sensor = _counting_sensor(self)(
                task_id="wait_for_job",
                site_code=SITE,
                job_id=job_id,
                mode="reschedule",
                poke_interval=self.poll_interval,
            )
            try:
                return sensor.execute(context)
            except AirflowRescheduleException as reschedule:
                if ti.first_reschedule_date is None:
                    ti.first_reschedule_date = datetime.now(timezone.utc)
                delay = (reschedule.reschedule_date - datetime.now(timezone.utc)).total_seconds()
                time.sleep(max(delay, 0.0))

    def run_deferred(self, operator: Any, context: dict[str, Any]) -> Any:
        """Run ``execute``. On deferral, run the trigger to its first event and call the resume method."""
        from airflow.sdk.exceptions import TaskDeferred

        try:
            return operator.execute(context)
        except TaskDeferred as deferred:
            trigger, method_name, kwargs = deferred.trigger, deferred.method_name, deferred.kwargs or {}
        self.new_task_process()  # the triggerer
        _count_trigger_polls(trigger, self)
        event = asyncio.run(_first_event(trigger))
        self.new_task_process()  # the task resumes in a new worker process
        return getattr(operator, method_name)(context, event=event.payload, **kwargs)

    def download(self, file_id: str) -> dict[str, Any]:
        from airflow_provider_sepa.operators.sepa_export import SepaExportDownloadOperator

        self.new_task_process()
        operator = SepaExportDownloadOperator(
            task_id="download_file", file_id=file_id, destination=self.output_dir + "/"
        )
        return operator.execute(make_context())


def _counting_create_operator(export: Export) -> type:
    from airflow_provider_sepa.operators.sepa_export import SepaExportCreateJobOperator

    class CountingCreateJobOperator(SepaExportCreateJobOperator):
        """The create operator with a hook that counts job look-ups while it waits."""

        def _make_hook(self):  # type: ignore[no-untyped-def]
            hook = super()._make_hook()
            get_job = hook.get_job

            def counted_get_job(*args: Any, **kwargs: Any) -> Any:
                export.polls += 1
                return get_job(*args, **kwargs)

            hook.get_job = counted_get_job
            return hook

    return CountingCreateJobOperator


def _counting_sensor(export: Export) -> type:
    from airflow_provider_sepa.sensors.sepa_export import SepaExportJobSensor

    class CountingSensor(SepaExportJobSensor):
        """The job sensor, counting its pokes."""

        def poke(self, context: Any) -> Any:
            export.polls += 1
            return super().poke(context)

    return CountingSensor


def _count_trigger_polls(trigger: Any, export: Export) -> None:
    """Wrap the trigger's hook factory so that each async job look-up counts as a poll."""
    make_hook: Callable[[], Any] | None = getattr(trigger, "_make_hook", None)
    if make_hook is None:
        raise RuntimeError(f"{type(trigger).__name__} has no _make_hook any more; update _count_trigger_polls.")

    def counting_make_hook() -> Any:
        hook = make_hook()
        get_job = hook.get_job

        async def counted_get_job(*args: Any, **kwargs: Any) -> Any:
            export.polls += 1
            return await get_job(*args, **kwargs)

        hook.get_job = counted_get_job
        return hook

    trigger._make_hook = counting_make_hook


async def _first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event
    raise RuntimeError(f"{type(trigger).__name__}.run() ended without an event.")


# -- scenarios ----------------------------------------------------------------------------


def scenario_sensor_poke(export: Export) -> None:
    job_id = export.create()
    job = export.wait_poke(job_id)
    export.download(job["file_id"])


def scenario_sensor_reschedule(export: Export) -> None:
    job_id = export.create()
    job = export.wait_reschedule(job_id)
    export.download(job["file_id"])


def scenario_create_and_wait(export: Export) -> None:
    context = make_context()
    export.create(context, wait_for_completion=True, poll_interval=export.poll_interval)
    export.download(context["ti"].xcom["job"]["file_id"])


def scenario_create_deferrable(export: Export) -> None:
    export.new_task_process()
    operator = _counting_create_operator(export)(
        task_id="create_job",
        site_code=SITE,
        wait_for_completion=True,
        deferrable=True,
        poll_interval=export.poll_interval,
    )
    context = make_context()
    export.run_deferred(operator, context)
    export.download(context["ti"].xcom["job"]["file_id"])


def scenario_sensor_deferrable(export: Export) -> None:
    job_id = export.create()
    export.new_task_process()
    sensor = _counting_sensor(export)(
        task_id="wait_for_job", site_code=SITE, job_id=job_id, deferrable=True, poke_interval=export.poll_interval
    )
    context = make_context()
    job = export.run_deferred(sensor, context)
    export.download(job["file_id"])


def deferrable_support() -> dict[str, bool]:
    """Return which classes accept ``deferrable=True`` in this checkout."""
    from airflow_provider_sepa.operators.sepa_export import SepaExportCreateJobOperator
    from airflow_provider_sepa.sensors.sepa_export import SepaExportJobSensor

    try:
        from airflow_provider_sepa.triggers.sepa_export import SepaExportJobTrigger  # noqa: F401
    except ImportError:
        return {"operator": False, "sensor": False}
    return {
        "operator": "deferrable" in inspect.signature(SepaExportCreateJobOperator.__init__).parameters,
        "sensor": "deferrable" in inspect.signature(SepaExportJobSensor.__init__).parameters,
    }


def count_requests(
    server: Any, run: Callable[[Export], None], export: Export, exports: int = 1
) -> tuple[Counter, float]:
    """Run ``run`` ``exports`` times and count the requests per endpoint it caused."""
    from airflow_provider_sepa.core.payloads import TOKEN_CACHE

    TOKEN_CACHE.clear()
    server.state.clear_request_log()
    started = time.monotonic()
    for _ in range(exports):
        run(export)
    seconds = time.monotonic() - started
    counts = Counter(entry["endpoint"] for entry in server.state.request_log())
    failed = [entry for entry in server.state.request_log() if entry["status_code"] >= 400]
    if failed:
        raise RuntimeError(f"The export sent failing requests: {failed}")
    return counts, seconds


def run(job_seconds: float, poll_interval: float, exports_in_one_process: int) -> str:
    """Run every scenario and return the Markdown result."""
    from airflow_provider_sepa.emulator.config import EmulatorConfig
    from airflow_provider_sepa.emulator.server import EmulatorServer

    bench_common.isolate_airflow_home()
    support = deferrable_support()
    scenarios: list[tuple[str, Callable[[Export], None]]] = [
        ("sensor, poke mode", scenario_sensor_poke),
        ("sensor, reschedule mode", scenario_sensor_reschedule),
        ("create operator, wait_for_completion", scenario_create_and_wait),
    ]
    if support["operator"]:
        scenarios.append(("create operator, wait_for_completion, deferrable", scenario_create_deferrable))
    if support["sensor"]:
        scenarios.append(("sensor, deferrable", scenario_sensor_deferrable))

    config = EmulatorConfig(sites=(SITE,), job_duration_seconds=job_seconds)
    output_dir = tempfile.mkdtemp(prefix="sepa-bench-requests-")
    results: list[ExportCount] = []
    try:
        with EmulatorServer(config) as server:
            os.environ["AIRFLOW_CONN_EMPORIX_DEFAULT"] = bench_common.connection_json(
                server.url, config.client_id, config.client_secret, config.tenant
            )
            for process_per_task in (False, True):
                processes = "process per task" if process_per_task else "one process"
                for name, scenario in scenarios:
                    log(f"requests per export: {name}, {processes}")
                    export = Export(tempfile.mkdtemp(dir=output_dir), poll_interval, process_per_task)
                    counts, seconds = count_requests(server, scenario, export)
                    results.append(ExportCount(name, processes, export.polls, counts, seconds))

            log(f"requests per export: {exports_in_one_process} exports in one process")
            export = Export(tempfile.mkdtemp(dir=output_dir), poll_interval, process_per_task=False)
            counts, seconds = count_requests(server, scenario_sensor_poke, export, exports=exports_in_one_process)
            results.append(
                ExportCount(
                    f"{exports_in_one_process} exports, sensor in poke mode",
                    "one process",
                    export.polls,
                    counts,
                    seconds,
                    exports=exports_in_one_process,
                )
            )
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    return _format(results, support, job_seconds, poll_interval)


def _format(results: list[ExportCount], support: dict[str, bool], job_seconds: float, poll_interval: float) -> str:
    rows = []
    for result in results:
        counts = result.requests
        total = sum(counts[endpoint] for endpoint in ENDPOINTS)
        minimum = 1 + 2 * result.exports + result.polls
        rows.append(
            [
                result.scenario,
                result.processes,
                counts["token"],
                counts["create_job"],
                counts["list_jobs"],
                counts["download_file"],
                total,
                result.polls,
                minimum,
                total - minimum,
                f"{result.seconds:.1f}",
            ]
        )
    table = markdown_table(
        [
            "scenario",
            "processes",
            "token",
            "create",
            "list",
            "download",
            "total",
            "polls",
            "minimum",
            "above minimum",
            "seconds",
        ],
        rows,
    )
    notes = [
        f"Emulator job duration {job_seconds:g} s, poll interval {poll_interval:g} s. A poll is one poke of "
        "the sensor, one job check of the create operator or the trigger; the minimum is "
        "1 token + 1 create per export + polls + 1 download per export.",
    ]
    missing = [name for name, present in support.items() if not present]
    if missing:
        notes.append(
            "NOTE: deferrable mode of the "
            + " and the ".join(missing)
            + " is not measured: this checkout has no `deferrable` argument there or no trigger module."
        )
    return table + "\n\n" + "\n\n".join(notes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job-seconds", type=float, default=1.0, help="emulator job duration in seconds (default 1)")
    parser.add_argument("--poll-interval", type=float, default=0.25, help="seconds between polls (default 0.25)")
    parser.add_argument("--exports", type=int, default=3, help="exports in the one-process token run (default 3)")
    parser.add_argument("--markdown-out", help="also write the Markdown result to this file")
    args = parser.parse_args()

    markdown = run(args.job_seconds, args.poll_interval, args.exports)
    print(markdown)
    bench_common.write_markdown(args.markdown_out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
