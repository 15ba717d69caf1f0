"""Trigger that waits for a SEPA export job in the triggerer's event loop.

The hook module is imported here, at load time, so that no import blocks the event loop
later. Neither module imports ``httpx`` or ``requests`` at top level: the async hook
imports ``httpx`` in a worker thread when it builds its client.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_sepa.core import endpoints, waiting
from airflow_provider_sepa.core.errors import SepaExportError, SepaExportJobFailedError, SepaExportJobNotFoundError
from airflow_provider_sepa.core.jobs import ExportJob, JobState
from airflow_provider_sepa.hooks.sepa_export import SepaExportAsyncHook


class SepaExportJobTrigger(BaseTrigger):
    """Poll the job list until an export job has finished, then fire one event.

    The trigger applies the rules of the sync operator and sensor. A job that is missing
    from the list is looked for again, until ``job_not_found_timeout`` if it is set. A
    failed job ends the wait at once. At ``deadline`` the trigger checks once more and then
    reports the timeout. Requests retry like the sync hook's, because both drive the same
    :class:`~airflow_provider_sepa.core.retry.RequestAttempts`.

    The single event is one of:

    - ``{"status": "success", "job": <ExportJob.to_dict()>}``
    - ``{"status": "failed", "job": <dict>, "message": <why>}``
    - ``{"status": "timeout", "message": <job id and seconds waited>}``
    - ``{"status": "error", "message": <text>, "error_type": <exception class name>}``

    :param site_code: the site the job belongs to.
    :param job_id: the id returned by the create endpoint.
    :param deadline: the wall-clock end of the wait in seconds since the epoch (UTC); it is
        fixed when the task first starts waiting, so a restarted trigger keeps it.
    :param started_at: the wall-clock start of the wait in seconds since the epoch; the
        seconds in messages and the ``job_not_found_timeout`` count from it.
    :param emporix_conn_id: id of the Airflow connection of type ``emporix``.
    :param poll_interval: seconds between two checks of the job list. The first check
        comes after a random part of it.
    :param page_size: jobs per page when the trigger follows the job list's pages.
    :param job_not_found_timeout: seconds the job may be missing from the job list before
        the trigger reports :class:`SepaExportJobNotFoundError`; ``None`` keeps looking
        until ``deadline``.
    """

    def __init__(
        self,
        *,
        site_code: str,
        job_id: str,
        deadline: float,
        started_at: float,
        emporix_conn_id: str = endpoints.DEFAULT_CONN_ID,
        poll_interval: float = 30.0,
        page_size: int = 50,
        job_not_found_timeout: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # BaseTrigger.__init__ has no annotations (Airflow 3.3).
        self.site_code = site_code
        self.job_id = job_id
        self.deadline = float(deadline)
        self.started_at = float(started_at)
        self.emporix_conn_id = emporix_conn_id
        self.poll_interval = float(poll_interval)
        self.page_size = page_size
        self.job_not_found_timeout = None if job_not_found_timeout is None else float(job_not_found_timeout)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the class path and the arguments that recreate the trigger, which contain no secret."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "site_code": self.site_code,
                "job_id": self.job_id,
                "deadline": self.deadline,
                "started_at": self.started_at,
                "emporix_conn_id": self.emporix_conn_id,
                "poll_interval": self.poll_interval,
                "page_size": self.page_size,
                "job_not_found_timeout": self.job_not_found_timeout,
            },
        )

    def _make_hook(self) -> SepaExportAsyncHook:
        return SepaExportAsyncHook(self.emporix_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the job finishes, fails or times out, or an error ends the wait, then yield one event."""
        # The event is built first, so the HTTP client is closed before the event is yielded.
        payload = await self._wait_for_job()
        yield TriggerEvent(payload)  # type: ignore[no-untyped-call]  # TriggerEvent.__init__ has no annotations (Airflow 3.3).

    async def _wait_for_job(self) -> dict[str, Any]:
        try:
            async with self._make_hook() as hook:
                return await self._poll(hook)
        except SepaExportError as error:
            self.log.error("Waiting for export job %s of site %s failed: %s", self.job_id, self.site_code, error)
            return {"status": waiting.EVENT_ERROR, "message": str(error), "error_type": type(error).__name__}
        except Exception as error:
            # An unexpected error still yields one event, so the task resumes and fails with the message.
            self.log.exception(
                "Unexpected error while waiting for export job %s of site %s.", self.job_id, self.site_code
            )
            return {
                "status": waiting.EVENT_ERROR,
                "message": f"Unexpected {type(error).__name__} while waiting for export job {self.job_id}: {error}",
                "error_type": type(error).__name__,
            }

    async def _poll(self, hook: SepaExportAsyncHook) -> dict[str, Any]:
        await self._wait_before_first_check()
        last_status: str | None = None
        while True:
            job = await self._find_job(hook)
            if job is not None:
                if job.status != last_status:
                    self.log.info("Export job %s of site %s has status %s.", self.job_id, self.site_code, job.status)
                    last_status = job.status
                event = self._event_for_finished(job)
                if event is not None:
                    return event

            now = time.time()
            if now >= self.deadline:
                message = waiting.wait_timeout_message(
                    self.job_id, self.site_code, now - self.started_at, last_status, listed=job is not None
                )
                self.log.warning("%s", message)
                return {"status": waiting.EVENT_TIMEOUT, "message": message}
            await asyncio.sleep(min(self.poll_interval, self.deadline - now))

    async def _wait_before_first_check(self) -> None:
        """Wait a random part of one poll interval, but never past the deadline.

        Triggers that start together, as after a triggerer restart, then spread their polls
        over the interval instead of polling in step, in bursts that block the event loop.
        The task checked the job just before it deferred, so the first check can wait.
        """
        delay = min(random.uniform(0, self.poll_interval), self.deadline - time.time())
        if delay > 0:
            await asyncio.sleep(delay)

    async def _find_job(self, hook: SepaExportAsyncHook) -> ExportJob | None:
        """Return the job, or ``None`` while it is missing from the job list.

        :raises SepaExportJobNotFoundError: once the job has been missing for longer than
            ``job_not_found_timeout``.
        """
        try:
            return await hook.get_job(self.site_code, self.job_id, page_size=self.page_size)
        except SepaExportJobNotFoundError as error:
            waited = time.time() - self.started_at
            if self.job_not_found_timeout is not None and waited >= self.job_not_found_timeout:
                raise SepaExportJobNotFoundError(
                    waiting.job_missing_message(error, waited, self.job_not_found_timeout)
                ) from None
            self.log.warning(
                "Export job %s is not listed for site %s yet; checking again.", self.job_id, self.site_code
            )
            return None

    def _event_for_finished(self, job: ExportJob) -> dict[str, Any] | None:
        """Return the event for a finished job, or ``None`` while it runs."""
        try:
            job.raise_if_failed()
        except SepaExportJobFailedError as error:
            return {"status": waiting.EVENT_FAILED, "job": job.to_dict(), "message": str(error)}
        if job.state is JobState.SUCCEEDED:
            self.log.info(
                "Export job %s succeeded: %s orders, file %s.", self.job_id, job.orders_exported_count, job.file_id
            )
            return {"status": waiting.EVENT_SUCCESS, "job": job.to_dict()}
        return None
