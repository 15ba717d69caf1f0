"""Tests of the shared waiting rules: messages, and how a resumed task reads a trigger event."""

from __future__ import annotations

import pytest

from airflow_provider_sepa.core import waiting
from airflow_provider_sepa.core.errors import (
    SepaExportApiError,
    SepaExportError,
    SepaExportInputError,
    SepaExportJobFailedError,
    SepaExportJobNotFoundError,
    SepaExportServerError,
    SepaExportTimeoutError,
    restore_error,
)
from airflow_provider_sepa.core.jobs import ExportJob

JOB_ID = "884cf047-94a2-42ae-8a89-7084c3259ef2"
SUCCEEDED = {
    "jobId": JOB_ID,
    "status": "COMPLETED",
    "siteCode": "main",
    "active": False,
    "fileId": "file-1",
    "ordersExportedCount": 3,
    "createdAt": "2026-12-04T06:55:43.015Z",
    "completedAt": "2026-12-04T06:56:01Z",
}


def job_dict(**fields) -> dict:
    return ExportJob.from_api({**SUCCEEDED, **fields}).to_dict()


def success(**fields) -> dict:
    return {"status": "success", "job": job_dict(**fields)}


class TestMessages:
    def test_timeout_message_with_status(self):
        message = waiting.wait_timeout_message(JOB_ID, "main", 61.4, "IN_PROGRESS", listed=True)

        assert message == f"Export job {JOB_ID} of site 'main' did not finish within 61 s (last status IN_PROGRESS)."

    def test_timeout_message_never_listed(self):
        message = waiting.wait_timeout_message(JOB_ID, "main", 5, None, listed=False)

        assert message.endswith("(the job never appeared in the job list).")

    def test_job_missing_message(self):
        error = SepaExportJobNotFoundError("Export job x is not in the job list.")

        message = waiting.job_missing_message(error, 130.2, 120.0)

        assert message == (
            "Export job x is not in the job list. The job was still missing after 130 s (job_not_found_timeout=120)."
        )


class TestJobFromEvent:
    def test_success_returns_job(self):
        job = waiting.job_from_event(success(), JOB_ID)

        assert job.job_id == JOB_ID
        assert job.file_id == "file-1"
        assert job.to_dict() == job_dict()

    def test_success_without_expected_id(self):
        assert waiting.job_from_event(success()).job_id == JOB_ID

    def test_success_for_other_job_raises(self):
        with pytest.raises(SepaExportError, match="waited for other-job"):
            waiting.job_from_event(success(), "other-job")

    def test_success_without_file_raises_failed(self):
        event = success()
        event["job"]["file_id"] = None

        with pytest.raises(SepaExportJobFailedError, match="without a fileId"):
            waiting.job_from_event(event, JOB_ID)

    def test_success_with_failure_status_raises_failed(self):
        with pytest.raises(SepaExportJobFailedError):
            waiting.job_from_event(success(status="FAILED"), JOB_ID)

    def test_success_ignores_state_field(self):
        event = success()
        event["job"]["active"] = True
        event["job"]["state"] = "succeeded"

        with pytest.raises(SepaExportError, match="still running") as raised:
            waiting.job_from_event(event, JOB_ID)

        assert type(raised.value) is SepaExportError

    @pytest.mark.parametrize(
        "job",
        [None, "job", {}, {"job_id": 7}, {"job_id": JOB_ID, "created_at": "yesterday"}],
        ids=["none", "string", "empty", "id-not-string", "bad-timestamp"],
    )
    def test_success_with_malformed_job_raises(self, job):
        with pytest.raises(SepaExportError, match="success"):
            waiting.job_from_event({"status": "success", "job": job}, JOB_ID)

    def test_failed_raises_job_failed(self):
        event = {"status": "failed", "job": job_dict(status="FAILED"), "message": "Export job x failed: boom."}

        with pytest.raises(SepaExportJobFailedError, match=r"Export job x failed: boom\."):
            waiting.job_from_event(event, JOB_ID)

    def test_timeout_raises_timeout(self):
        with pytest.raises(SepaExportTimeoutError, match="did not finish within 9 s"):
            waiting.job_from_event({"status": "timeout", "message": "Export job x did not finish within 9 s."})

    def test_error_restores_class(self):
        event = {"status": "error", "message": "GET ... failed with HTTP 503", "error_type": "SepaExportServerError"}

        with pytest.raises(SepaExportServerError, match="HTTP 503"):
            waiting.job_from_event(event, JOB_ID)

    @pytest.mark.parametrize(
        "event",
        [None, {}, {"status": "done"}, {"status": None, "message": "x"}, ["success"]],
        ids=["none", "empty", "unknown-status", "null-status", "list"],
    )
    def test_unusable_event_raises(self, event):
        with pytest.raises(SepaExportError) as raised:
            waiting.job_from_event(event, JOB_ID)

        assert type(raised.value) is SepaExportError

    def test_missing_message_filled_in(self):
        with pytest.raises(SepaExportJobFailedError, match="reported 'failed' without a message"):
            waiting.job_from_event({"status": "failed"}, JOB_ID)


class TestRestoreError:
    def test_api_error_keeps_message(self):
        error = restore_error("SepaExportServerError", "GET /x failed with HTTP 502 after 5 attempts: bad")

        assert type(error) is SepaExportServerError
        assert isinstance(error, SepaExportApiError)
        assert str(error) == "GET /x failed with HTTP 502 after 5 attempts: bad"
        assert error.status is None

    def test_plain_error_class(self):
        error = restore_error("SepaExportJobNotFoundError", "missing")

        assert type(error) is SepaExportJobNotFoundError
        assert str(error) == "missing"

    def test_input_error_keeps_fail_semantics(self):
        error = restore_error("SepaExportInputError", "Invalid job id ' '")

        assert type(error) is SepaExportInputError

    @pytest.mark.parametrize("name", ["RuntimeError", "AirflowException", None, 42, "object"])
    def test_unknown_class_is_plain_error(self, name):
        error = restore_error(name, "boom")

        assert type(error) is SepaExportError
        assert str(error) == f"The trigger failed with {name}: boom"
