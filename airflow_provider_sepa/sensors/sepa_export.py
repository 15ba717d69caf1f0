"""Sensor that waits for a SEPA export job to finish."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowSensorTimeout

from airflow_provider_sepa.core import endpoints, waiting
from airflow_provider_sepa.core.errors import SepaExportJobNotFoundError, SepaExportTimeoutError
from airflow_provider_sepa.core.jobs import JobState

if TYPE_CHECKING:
    from airflow.sdk import Context


class SepaExportJobSensor(BaseSensorOperator):
    """Wait until an export job has succeeded and return its details.

    Each poke reads the site's job list, following pages until the job appears. The
    sensor succeeds only when the job is inactive and has a file id, and fails at once
    when the job has ended in any other way. The XCom value is a dict with ``job_id``,
    ``status``, ``site_code``, ``file_id``, ``active``, ``orders_exported_count``,
    ``created_at``, ``completed_at`` and ``state``; the file id is also pushed under the
    key ``file_id``, so a DAG can pass ``sensor.output["file_id"]`` to the download.

    Works in ``poke`` and ``reschedule`` mode, and with ``deferrable=True``. A deferrable
    sensor checks the job once and, while it runs, hands the waiting to
    :class:`~airflow_provider_sepa.triggers.sepa_export.SepaExportJobTrigger`, which polls
    every ``poke_interval`` seconds until ``timeout`` seconds after the sensor started. It
    returns the same XCom values and raises the same exception classes as polling in the
    worker, including ``AirflowSensorTimeout`` at the timeout.

    :param site_code: the site the job belongs to. (templated)
    :param job_id: the id returned by the create endpoint. (templated)
    :param emporix_conn_id: id of the Airflow connection of type ``emporix``. (templated)
    :param job_not_found_timeout: seconds the job may be missing from the job list
        before the sensor fails; covers a list that lags behind the create request.
    :param deferrable: wait in the triggerer instead of the worker. Defaults to the
        ``[operators] default_deferrable`` option of the Airflow configuration.
    """

    template_fields: Sequence[str] = ("site_code", "job_id", "emporix_conn_id")
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        site_code: str,
        job_id: str,
        emporix_conn_id: str = endpoints.DEFAULT_CONN_ID,
        job_not_found_timeout: float = 120.0,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", 30.0)
        super().__init__(**kwargs)
        self.site_code = site_code
        self.job_id = job_id
        self.emporix_conn_id = emporix_conn_id
        self.job_not_found_timeout = job_not_found_timeout
        self.deferrable = deferrable
        self._first_poke_monotonic: float | None = None
        self._last_status: str | None = None

    def _seconds_since_start(self, context: Context) -> float:
        """Return how long this sensor has been waiting, across reschedules."""
        if self.reschedule:
            first = context["ti"].get_first_reschedule_date(context)
            if first is not None:
                if first.tzinfo is None:
                    first = first.replace(tzinfo=timezone.utc)
                return (datetime.now(timezone.utc) - first).total_seconds()
            return 0.0
        if self._first_poke_monotonic is None:
            self._first_poke_monotonic = time.monotonic()
        return time.monotonic() - self._first_poke_monotonic

    def poke(self, context: Context) -> bool | PokeReturnValue:
        from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

        site_code = endpoints.validate_site_code(self.site_code)
        job_id = endpoints.validate_job_id(self.job_id)
        waited = self._seconds_since_start(context)

        hook = SepaExportHook(self.emporix_conn_id)
        try:
            job = hook.get_job(site_code, job_id)
        except SepaExportJobNotFoundError as error:
            if waited >= self.job_not_found_timeout:
                raise SepaExportJobNotFoundError(
                    waiting.job_missing_message(error, waited, self.job_not_found_timeout)
                ) from None
            self.log.warning("Export job %s is not listed for site %s yet; checking again.", job_id, site_code)
            job = None
        finally:
            hook.close()

        if job is not None:
            if job.status != self._last_status:
                self.log.info("Export job %s of site %s has status %s.", job_id, site_code, job.status)
                self._last_status = job.status

            job.raise_if_failed()
            if job.state is JobState.SUCCEEDED:
                self.log.info(
                    "Export job %s succeeded: %s orders, file %s.", job_id, job.orders_exported_count, job.file_id
                )
                context["ti"].xcom_push(key="file_id", value=job.file_id)
                return PokeReturnValue(is_done=True, xcom_value=job.to_dict())

        if self.deferrable:
            self._defer(site_code, job_id, waited)
        return False

    def _defer(self, site_code: str, job_id: str, waited: float) -> NoReturn:
        """Hand the waiting to the trigger, with a deadline ``timeout`` seconds after the first poke.

        The first poke of a deferrable sensor calls this, so the base class's ``soft_fail``
        and ``never_fail`` handling still covers that first check.

        :param site_code: the validated site code.
        :param job_id: the validated job id.
        :param waited: seconds since the first poke.
        """
        from airflow_provider_sepa.triggers.sepa_export import SepaExportJobTrigger

        started_at = time.time() - waited
        deadline = started_at + self.timeout
        self.log.info(
            "Export job %s of site %s is not finished; deferring the wait to the triggerer.", job_id, site_code
        )
        self.defer(
            trigger=SepaExportJobTrigger(
                site_code=site_code,
                job_id=job_id,
                deadline=deadline,
                started_at=started_at,
                emporix_conn_id=self.emporix_conn_id,
                poll_interval=self.poke_interval,
                job_not_found_timeout=self.job_not_found_timeout,
            ),
            method_name="execute_complete",
            kwargs={"job_id": job_id, "deadline": deadline},
            timeout=timedelta(seconds=max(0.0, deadline - time.time()) + waiting.DEFERRAL_TIMEOUT_MARGIN),
        )

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any] | None = None,
        job_id: str | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Finish the sensor when the trigger has fired: push ``file_id`` and return the job.

        Fails closed: only a success event for a succeeded job with a file id returns.

        :param context: the task context.
        :param event: the trigger's event payload.
        :param job_id: the job the sensor deferred for; an event about another job raises.
        :param deadline: the wall-clock end of the wait in seconds since the epoch, fixed
            at the first poke. The trigger has already enforced it.
        :raises SepaExportJobFailedError: when the job ended without a file.
        :raises AirflowSensorTimeout: when the job did not finish within ``timeout``.
        :raises SepaExportError: the exception class the trigger reported, for API errors
            and for a job missing longer than ``job_not_found_timeout``.
        """
        try:
            job = waiting.job_from_event(event, job_id)
        except SepaExportTimeoutError as error:
            raise AirflowSensorTimeout(str(error)) from None
        self.log.info(
            "Export job %s succeeded: %s orders, file %s.", job.job_id, job.orders_exported_count, job.file_id
        )
        context["ti"].xcom_push(key="file_id", value=job.file_id)
        return job.to_dict()
