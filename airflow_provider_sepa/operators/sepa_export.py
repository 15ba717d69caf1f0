"""Operators that start SEPA export jobs and download their files.

The module imports neither ``requests`` nor the hook at top level, so DAG files that use
these operators parse quickly; the hook is imported when a task runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_provider_sepa.core import endpoints, waiting
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
    from airflow.sdk import Asset, Context

    from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

#: How far the API server's clock may run behind the worker's, in seconds, when the
#: operator looks for a job created earlier in the same DAG run.
DEFAULT_CLOCK_SKEW = 60.0

#: Advice appended to the message when waiting for a job ends at the timeout.
WAIT_TIMEOUT_HINT = (
    "The job keeps running in Emporix; wait for it with SepaExportJobSensor instead of starting a new one."
)


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
    returns 409 because a job is in progress, the operator adopts that job if it belongs
    to the same site. Otherwise it waits ``poll_interval`` seconds and tries again until
    ``timeout``.

    The job id is pushed to XCom under the key ``job_id`` as soon as it is known, before
    any waiting, and is also the return value.

    With ``deferrable=True`` and ``wait_for_completion=True``, the operator checks the job
    once and, while it runs, hands the waiting to
    :class:`~airflow_provider_sepa.triggers.sepa_export.SepaExportJobTrigger`, freeing the
    worker slot. The wait ends the same way as in the worker: with the same XCom values or
    the same exception class.

    :param site_code: the Emporix site whose orders are exported. (templated)
    :param emporix_conn_id: id of the Airflow connection of type ``emporix``. (templated)
    :param wait_for_completion: wait until the job has finished and fail if it failed;
        the job's details are then pushed under the key ``job``.
    :param poll_interval: seconds between two checks of the job list.
    :param timeout: seconds the task may spend waiting for a free job slot and, with
        ``wait_for_completion``, for the job to finish.
    :param clock_skew: seconds of tolerance when comparing the API's job creation times
        with the start of the DAG run.
    :param deferrable: wait for the job in the triggerer instead of the worker; only used
        with ``wait_for_completion``. Defaults to the ``[operators] default_deferrable``
        option of the Airflow configuration.
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
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.site_code = site_code
        self.emporix_conn_id = emporix_conn_id
        self.wait_for_completion = wait_for_completion
        self.poll_interval = _positive_seconds(poll_interval, "poll_interval")
        self.timeout = _positive_seconds(timeout, "timeout")
        self.clock_skew = _positive_seconds(clock_skew, "clock_skew")
        self.deferrable = deferrable
        self._last_status: str | None = None

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
                if self.deferrable:
                    job = self._check_or_defer(hook, site_code, job_id, deadline)
                else:
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
        # A first try has sent no create request yet in this DAG run, so only later tries
        # need the lookup. That keeps a normal export at the minimum number of requests.
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

    def _check_job(self, hook: SepaExportHook, site_code: str, job_id: str) -> ExportJob | None:
        """Look the job up once and return it, or ``None`` while the job list does not show it yet.

        :raises SepaExportJobFailedError: when the job has ended without a file.
        """
        try:
            job = hook.get_job(site_code, job_id)
        except SepaExportJobNotFoundError:
            return None
        if job.status != self._last_status:
            self.log.info("Export job %s of site %s has status %s.", job_id, site_code, job.status)
            self._last_status = job.status
        job.raise_if_failed()
        if job.state is JobState.SUCCEEDED:
            self._log_finished(job)
        return job

    def _log_finished(self, job: ExportJob) -> None:
        self.log.info("Export job %s finished: %s orders, file %s.", job.job_id, job.orders_exported_count, job.file_id)

    def _wait(self, hook: SepaExportHook, site_code: str, job_id: str, deadline: float) -> ExportJob:
        started = time.monotonic()
        while True:
            job = self._check_job(hook, site_code, job_id)
            if job is not None and job.state is JobState.SUCCEEDED:
                return job

            remaining = deadline - time.monotonic()
            if remaining <= 0:
                message = waiting.wait_timeout_message(
                    job_id, site_code, time.monotonic() - started, self._last_status, listed=job is not None
                )
                raise SepaExportTimeoutError(f"{message} {WAIT_TIMEOUT_HINT}")
            time.sleep(min(self.poll_interval, remaining))

    def _check_or_defer(self, hook: SepaExportHook, site_code: str, job_id: str, deadline: float) -> ExportJob:
        """Check the job once and return it if it has succeeded, or else defer to the trigger.

        :param hook: the sync hook for the check.
        :param site_code: the site of the job.
        :param job_id: the job to wait for.
        :param deadline: the end of the task's timeout on the monotonic clock. The trigger
            gets it as wall-clock time, because it may run in another process.
        """
        from airflow_provider_sepa.triggers.sepa_export import SepaExportJobTrigger

        started_at = time.time()
        wall_deadline = started_at + (deadline - time.monotonic())
        job = self._check_job(hook, site_code, job_id)
        if job is not None and job.state is JobState.SUCCEEDED:
            return job
        if started_at >= wall_deadline:
            # The wait for a free job slot used up the timeout, so the check above was the last one.
            message = waiting.wait_timeout_message(job_id, site_code, 0.0, self._last_status, listed=job is not None)
            raise SepaExportTimeoutError(f"{message} {WAIT_TIMEOUT_HINT}")

        self.log.info("Export job %s of site %s is running; deferring the wait to the triggerer.", job_id, site_code)
        self.defer(
            trigger=SepaExportJobTrigger(
                site_code=site_code,
                job_id=job_id,
                deadline=wall_deadline,
                started_at=started_at,
                emporix_conn_id=self.emporix_conn_id,
                poll_interval=self.poll_interval,
            ),
            method_name="execute_complete",
            kwargs={"job_id": job_id, "deadline": wall_deadline},
            timeout=timedelta(seconds=wall_deadline - started_at + waiting.DEFERRAL_TIMEOUT_MARGIN),
        )

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any] | None = None,
        job_id: str | None = None,
        deadline: float | None = None,
    ) -> str:
        """Finish the task when the trigger has fired: push the job and return its id.

        Fails closed: only a success event for a succeeded job with a file id returns.

        :param context: the task context.
        :param event: the trigger's event payload.
        :param job_id: the job the task deferred for; an event about another job raises.
        :param deadline: the wall-clock end of the wait in seconds since the epoch, fixed
            when the task first started waiting. The trigger has already enforced it.
        :raises SepaExportJobFailedError: when the job ended without a file.
        :raises SepaExportTimeoutError: when the job did not finish before the deadline.
        :raises SepaExportError: the exception class the trigger reported, for API errors.
        """
        try:
            job = waiting.job_from_event(event, job_id)
        except SepaExportTimeoutError as error:
            raise SepaExportTimeoutError(f"{error} {WAIT_TIMEOUT_HINT}") from None
        self._log_finished(job)
        context["ti"].xcom_push(key="job", value=job.to_dict())
        return job.job_id


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
    :param site_code: the site the file belongs to. (templated) When it is set and the task
        has an ``AssetAlias`` among its ``outlets``, each download adds an event for the
        asset that :func:`sepa_file_asset` returns for the tenant and site. The event's
        extra contains the file's path, size and SHA-256, so a DAG can be scheduled on "a new
        SEPA file for site X".
    """

    template_fields: Sequence[str] = ("file_id", "destination", "emporix_conn_id", "site_code")
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        file_id: str,
        destination: str,
        emporix_conn_id: str = endpoints.DEFAULT_CONN_ID,
        site_code: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.file_id = file_id
        self.destination = destination
        self.emporix_conn_id = emporix_conn_id
        self.site_code = site_code

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

        file_id = endpoints.validate_file_id(self.file_id)
        destination = check_destination(self.destination)
        if destination.endswith("/"):
            destination += default_file_name(file_id)

        site_code = endpoints.validate_site_code(self.site_code) if self.site_code is not None else None

        hook = SepaExportHook(self.emporix_conn_id)
        try:
            downloaded = hook.download_file(file_id, destination)
            tenant = hook.settings.tenant
        finally:
            hook.close()

        result = downloaded.to_dict()
        if site_code is not None:
            self._add_asset_events(context, tenant, site_code, result)
        return result

    def _add_asset_events(self, context: Context, tenant: str, site_code: str, result: dict[str, Any]) -> None:
        """Record the new file on every ``AssetAlias`` outlet of the task."""
        from airflow.sdk import AssetAlias

        aliases = [outlet for outlet in self.outlets if isinstance(outlet, AssetAlias)]
        if not aliases:
            return
        outlet_events = context.get("outlet_events")
        if outlet_events is None:
            self.log.warning("The task context has no outlet_events; no asset event recorded for %s.", site_code)
            return
        asset = sepa_file_asset(tenant, site_code)
        for alias in aliases:
            outlet_events[alias].add(asset, extra={**result, "site_code": site_code, "tenant": tenant})
        self.log.info("Recorded a new-file event for asset %s.", asset.uri)


def sepa_file_asset(tenant: str, site_code: str) -> Asset:
    """Return the asset of the SEPA files of one tenant's site.

    Its URI is ``sepa-export://<tenant>/<site code>``; schedule a DAG on it to run after
    each new file of that site.
    """
    from urllib.parse import quote

    from airflow.sdk import Asset

    tenant = endpoints.validate_tenant(tenant)
    site_code = endpoints.validate_site_code(site_code)
    return Asset(
        name=f"sepa_export.{tenant}.{site_code}",
        uri=f"sepa-export://{tenant}/{quote(site_code, safe='')}",
        group="sepa-export",
    )
