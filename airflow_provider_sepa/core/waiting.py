"""Rules for waiting on an export job, shared by the operator, the sensor and the trigger.

A task waits either by polling in the worker or by deferring to
:class:`~airflow_provider_sepa.triggers.sepa_export.SepaExportJobTrigger`. Both ways build
their messages here, and a resumed task turns the trigger's event back into the result or
the exception that polling would have produced.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_sepa.core.errors import (
    SepaExportError,
    SepaExportJobFailedError,
    SepaExportTimeoutError,
    restore_error,
)
from airflow_provider_sepa.core.jobs import ExportJob, JobState

#: Values of the ``status`` key of a trigger event.
EVENT_SUCCESS = "success"
EVENT_FAILED = "failed"
EVENT_TIMEOUT = "timeout"
EVENT_ERROR = "error"

#: Seconds that a deferred task may stay deferred after its deadline before Airflow fails
#: it with ``TaskDeferralTimeout``. The trigger reports the timeout itself, after one last
#: check, so this limit only fires when no triggerer runs the trigger. It leaves room for
#: the retries of that last check, which may honour ``Retry-After`` waits.
DEFERRAL_TIMEOUT_MARGIN = 15 * 60.0


def wait_timeout_message(job_id: str, site_code: str, elapsed: float, last_status: str | None, listed: bool) -> str:
    """Describe a wait that reached its deadline before the job finished.

    :param job_id: the job waited for.
    :param site_code: the site of the job.
    :param elapsed: seconds spent waiting.
    :param last_status: the job's status at the last check.
    :param listed: whether the last check found the job in the job list.
    """
    seen = f"last status {last_status}" if listed else "the job never appeared in the job list"
    return f"Export job {job_id} of site {site_code!r} did not finish within {elapsed:.0f} s ({seen})."


def job_missing_message(error: Exception, waited: float, not_found_timeout: float) -> str:
    """Describe a job that stayed missing from the job list for longer than allowed.

    :param error: the :class:`SepaExportJobNotFoundError` of the last look-up.
    :param waited: seconds since the wait began.
    :param not_found_timeout: the allowed seconds, as configured on the sensor.
    """
    return f"{error} The job was still missing after {waited:.0f} s (job_not_found_timeout={not_found_timeout:.0f})."


def job_from_event(event: Any, job_id: str | None = None) -> ExportJob:
    """Return the succeeded job of a trigger event, or raise what polling would have raised.

    The check fails closed. Only a ``success`` event whose job is inactive, has a non-empty
    file id and a status not known to mean failure returns a job, and its state is derived
    again from the job's fields instead of read from the event. Anything else raises.

    :param event: the event payload passed to ``execute_complete``.
    :param job_id: the job the task waited for; a success event for another job raises.
    :raises SepaExportJobFailedError: for a ``failed`` event or a finished job without a file.
    :raises SepaExportTimeoutError: for a ``timeout`` event.
    :raises SepaExportError: the exception class named by an ``error`` event, or a plain
        :class:`SepaExportError` for a missing, malformed or unknown event.
    """
    if not isinstance(event, dict):
        raise SepaExportError(
            f"The trigger returned no usable event ({type(event).__name__}), so the export job's state is unknown. "
            "Clear the task to check the job again."
        )
    status = event.get("status")
    message = event.get("message")
    if not isinstance(message, str) or not message:
        message = f"The trigger reported {status!r} without a message."

    if status == EVENT_SUCCESS:
        job = _job_of(event)
        if job_id is not None and job.job_id != job_id:
            raise SepaExportError(
                f"The trigger reported success for export job {job.job_id}, but the task waited for {job_id}."
            )
        job.raise_if_failed()
        if job.state is not JobState.SUCCEEDED or not job.file_id:
            raise SepaExportError(
                f"The trigger reported success for export job {job.job_id}, but the job is still running "
                f"(status {job.status}). Clear the task to check the job again."
            )
        return job
    if status == EVENT_FAILED:
        raise SepaExportJobFailedError(message)
    if status == EVENT_TIMEOUT:
        raise SepaExportTimeoutError(message)
    if status == EVENT_ERROR:
        raise restore_error(event.get("error_type"), message)
    raise SepaExportError(f"The trigger returned an event with unknown status {status!r}: {message}")


def _job_of(event: dict[str, Any]) -> ExportJob:
    data = event.get("job")
    if not isinstance(data, dict) or not isinstance(data.get("job_id"), str):
        raise SepaExportError(f"The trigger reported success without a job: {data!r}.")
    try:
        return ExportJob.from_dict(data)
    except (TypeError, ValueError) as error:
        raise SepaExportError(f"The trigger reported success with an invalid job: {error}") from None
