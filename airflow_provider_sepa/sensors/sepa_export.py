"""Sensor that waits for a SEPA export job to finish."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_sepa.core import endpoints
from airflow_provider_sepa.core.errors import SepaExportJobNotFoundError
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

    Works in ``poke`` and ``reschedule`` mode.

    :param site_code: the site the job belongs to. (templated)
    :param job_id: the id returned by the create endpoint. (templated)
    :param emporix_conn_id: id of the Airflow connection of type ``emporix``. (templated)
    :param job_not_found_timeout: seconds the job may be missing from the job list
        before the sensor fails; covers a list that lags behind the create request.
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
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", 30.0)
        super().__init__(**kwargs)
        self.site_code = site_code
        self.job_id = job_id
        self.emporix_conn_id = emporix_conn_id
        self.job_not_found_timeout = job_not_found_timeout
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
                    f"{error} The job was still missing after {waited:.0f} s (job_not_found_timeout="
                    f"{self.job_not_found_timeout:.0f})."
                ) from None
            self.log.warning("Export job %s is not listed for site %s yet; checking again.", job_id, site_code)
            return False
        finally:
            hook.close()

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
        return False
