"""Operators that start SEPA export jobs and download their files.

The module imports neither ``requests`` nor the hook at top level, so DAG files that use
these operators parse quickly; the hook is imported when a task runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_sepa.core import endpoints
from airflow_provider_sepa.core.errors import (
    SepaExportConflictError,
    SepaExportCreateOutcomeUnknownError,
    SepaExportInputError,
    SepaExportJobNotFoundError,
    SepaExportTimeoutError,
)
from airflow_provider_sepa.core.files import check_destination, default_file_name
from airflow_provider_sepa.core.jobs import ExportJob, JobState

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

#: How far the API server's clock may run behind the worker's, in seconds, when the
#: operator looks for a job created earlier in the same DAG run.
DEFAULT_CLOCK_SKEW = 60.0


def _positive_seconds(value: Any, name: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise SepaExportInputError(f"Invalid {name} {value!r}: use a positive number of seconds or a timedelta.")
    return float(seconds)


class SepaExportCreateJobOperator(BaseOperator):
    """Start a SEPA export job for one site and return its job id.

    An export cannot be revoked, so one DAG run starts at most one job per site. On a
    task retry, or after a create request whose reply was lost, the operator adopts the
    site's job created during this DAG run instead of starting another. When the API
    answers 409 because a job is in progress, the operator adopts that job if it belongs
    to the same site; otherwise it waits ``poll_interval`` seconds and tries again until
    ``timeout``.

    The job id is pushed to XCom under the key ``job_id`` as soon as it is known, before
    any waiting, and is also the return value.

    :param site_code: the Emporix site whose orders are exported. (templated)
    :param emporix_conn_id: id of the Airflow connection of type ``emporix``. (templated)
    :param wait_for_completion: wait until the job has finished and fail if it failed;
        the job's details are then pushed under the key ``job``.
    :param poll_interval: seconds between two checks of the job list.
    :param timeout: seconds the task may spend waiting for a free job slot and, with
        ``wait_for_completion``, for the job to finish.
    :param clock_skew: seconds of tolerance when comparing the API's job creation times
        with the start of the DAG run.
    """

    template_fields: Sequence[str] = ("site_code", "emporix_conn_id")
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        site_code: str,
        emporix_conn_id: str = endpoints.DEFAULT_CONN_ID,
        wait_for_completion: bool = False,
        poll_interval: float | timedelta = 30.0,
        timeout: float | timedelta = 6 * 3600.0,
        clock_skew: float | timedelta = DEFAULT_CLOCK_SKEW,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.site_code = site_code
        self.emporix_conn_id = emporix_conn_id
        self.wait_for_completion = wait_for_completion
        self.poll_interval = _positive_seconds(poll_interval, "poll_interval")
        self.timeout = _positive_seconds(timeout, "timeout")
        self.clock_skew = _positive_seconds(clock_skew, "clock_skew")

    def _make_hook(self) -> SepaExportHook:
        from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

        return SepaExportHook(self.emporix_conn_id)

    def execute(self, context: Context) -> str:
        site_code = endpoints.validate_site_code(self.site_code)
        deadline = time.monotonic() + self.timeout
        hook = self._make_hook()
        try:
            hook.settings  # noqa: B018 - validate the connection before any request
            job_id = self._start_or_adopt(hook, site_code, context, deadline)
            context["ti"].xcom_push(key="job_id", value=job_id)
            if self.wait_for_completion:
                job = self._wait(hook, site_code, job_id, deadline)
                context["ti"].xcom_push(key="job", value=job.to_dict())
        finally:
            hook.close()
        return job_id

    # -- starting a job exactly once ------------------------------------------------------

    def _run_started_at(self, context: Context) -> datetime:
        """Return the earliest time a job of this DAG run can have been created."""
        dag_run = context.get("dag_run")
        started = getattr(dag_run, "start_date", None) or getattr(context.get("ti"), "start_date", None)
        if started is None:
            started = datetime.now(timezone.utc)
        if started.tzinfo is None:
            started = started.replace(tzinfo=timezone.utc)
        return started - timedelta(seconds=self.clock_skew)

    def _start_or_adopt(self, hook: SepaExportHook, site_code: str, context: Context, deadline: float) -> str:
        since = self._run_started_at(context)
        try_number = getattr(context.get("ti"), "try_number", 1) or 1
        # A first try has sent no create request yet in this DAG run, so the lookup is
        # needed only on later tries; this keeps a normal export at the minimum requests.
        must_look_up = try_number > 1

        while True:
            if must_look_up:
                adopted = self._find_run_job(hook, site_code, since)
                if adopted is not None:
                    self.log.info(
                        "Adopting export job %s of site %s, created at %s during this DAG run; no new job started.",
                        adopted.job_id,
                        site_code,
                        adopted.created_at,
                    )
                    return adopted.job_id

            try:
                return hook.create_job(site_code)
            except SepaExportCreateOutcomeUnknownError as error:
                self.log.warning("The create request for site %s may have started a job: %s", site_code, error)
                must_look_up = True
                self._pause_or_time_out(deadline, site_code, f"the outcome of a create request was unknown ({error})")
            except SepaExportConflictError:
                running = self._find_active_job(hook, site_code)
                if running is not None:
                    self.log.info(
                        "Another request started export job %s for site %s, which is still running; adopting it.",
                        running.job_id,
                        site_code,
                    )
                    return running.job_id
                self.log.info(
                    "A job of another site is in progress (HTTP 409); trying site %s again in %.1f s.",
                    site_code,
                    self.poll_interval,
                )
                self._pause_or_time_out(deadline, site_code, "another site's export job was still running")

    def _find_run_job(self, hook: SepaExportHook, site_code: str, since: datetime) -> ExportJob | None:
        jobs = hook.find_jobs_created_since(site_code, since)
        return jobs[0] if jobs else None

    def _find_active_job(self, hook: SepaExportHook, site_code: str) -> ExportJob | None:
        for job in hook.list_jobs(site_code, page_number=1, page_size=16):
            if job.is_active:
                return job
        return None

    def _pause_or_time_out(self, deadline: float, site_code: str, reason: str) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SepaExportTimeoutError(
                f"No export job could be started for site {site_code!r} within {self.timeout:.0f} s: {reason}. "
                "Raise the operator's timeout or schedule the export when no other job runs."
            )
        time.sleep(min(self.poll_interval, remaining))

    # -- waiting ------------------------------------------------------------------------

    def _wait(self, hook: SepaExportHook, site_code: str, job_id: str, deadline: float) -> ExportJob:
        started = time.monotonic()
        last_status: str | None = None
        while True:
            try:
                job = hook.get_job(site_code, job_id)
            except SepaExportJobNotFoundError:
                job = None
            if job is not None:
                if job.status != last_status:
                    self.log.info("Export job %s of site %s has status %s.", job_id, site_code, job.status)
                    last_status = job.status
                job.raise_if_failed()
                if job.state is JobState.SUCCEEDED:
                    self.log.info(
                        "Export job %s finished: %s orders, file %s.", job_id, job.orders_exported_count, job.file_id
                    )
                    return job

            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = f"last status {last_status}" if job is not None else "the job never appeared in the job list"
                raise SepaExportTimeoutError(
                    f"Export job {job_id} of site {site_code!r} did not finish within "
                    f"{time.monotonic() - started:.0f} s ({seen}). The job keeps running in Emporix; "
                    "wait for it with SepaExportJobSensor instead of starting a new one."
                )
            time.sleep(min(self.poll_interval, remaining))


class SepaExportDownloadOperator(BaseOperator):
    """Download a finished export's SEPA-XML file to a local path or object storage.

    The bytes are written exactly as the API sends them, never decoded or re-encoded, and
    the file appears at the destination only when it is complete. Returns a dict with
    ``path``, ``size_bytes``, ``sha256`` and ``file_id``.

    :param file_id: the ``fileId`` of a finished job. (templated)
    :param destination: an absolute file path, an object-storage URL such as
        ``s3://aws_default@bucket/sepa/main.xml``, or a folder ending with ``/``, in which
        case the file is named ``<file id>.xml``. (templated)
    :param emporix_conn_id: id of the Airflow connection of type ``emporix``. (templated)
    """

    template_fields: Sequence[str] = ("file_id", "destination", "emporix_conn_id")
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        file_id: str,
        destination: str,
        emporix_conn_id: str = endpoints.DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.file_id = file_id
        self.destination = destination
        self.emporix_conn_id = emporix_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

        file_id = endpoints.validate_file_id(self.file_id)
        destination = check_destination(self.destination)
        if destination.endswith("/"):
            destination += default_file_name(file_id)

        hook = SepaExportHook(self.emporix_conn_id)
        try:
            downloaded = hook.download_file(file_id, destination)
        finally:
            hook.close()
        return downloaded.to_dict()
