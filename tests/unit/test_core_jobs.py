"""Tests of the export job record, its timestamp parsing and its fail-closed state rules."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_sepa.core.errors import SepaExportJobFailedError
from airflow_provider_sepa.core.jobs import ExportJob, JobState, newest_job_since, parse_timestamp

JOB_ID = "884cf047-94a2-42ae-8a89-7084c3259ef2"
SITE_CODE = "main"
FILE_ID = "file-0001"
CREATED_AT = "2025-07-12T06:55:43.015Z"
COMPLETED_AT = "2025-07-12T06:57:01.5Z"
UTC = timezone.utc

FULL_ENTRY = {
    "jobId": JOB_ID,
    "status": "DONE",
    "siteCode": SITE_CODE,
    "fileId": FILE_ID,
    "active": False,
    "ordersExportedCount": 12,
    "createdAt": CREATED_AT,
    "completedAt": COMPLETED_AT,
}


def make_entry(**fields) -> dict:
    """Return a finished, successful job entry with ``fields`` replaced; a value of ``...`` drops the key."""
    entry = dict(FULL_ENTRY)
    for key, value in fields.items():
        if value is ...:
            entry.pop(key, None)
        else:
            entry[key] = value
    return entry


class TestParseTimestamp:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2025-07-12T06:55:43Z", datetime(2025, 7, 12, 6, 55, 43, tzinfo=UTC)),
            ("2025-07-12T06:55:43z", datetime(2025, 7, 12, 6, 55, 43, tzinfo=UTC)),
            ("2025-07-12T08:55:43+02:00", datetime(2025, 7, 12, 6, 55, 43, tzinfo=UTC)),
            ("2025-07-12T08:55:43+0200", datetime(2025, 7, 12, 6, 55, 43, tzinfo=UTC)),
            ("2025-07-12T01:25:43-05:30", datetime(2025, 7, 12, 6, 55, 43, tzinfo=UTC)),
            ("2025-07-12T06:55:43-0000", datetime(2025, 7, 12, 6, 55, 43, tzinfo=UTC)),
            ("2025-07-12T06:55:43.1Z", datetime(2025, 7, 12, 6, 55, 43, 100000, tzinfo=UTC)),
            ("2025-07-12T06:55:43.015Z", datetime(2025, 7, 12, 6, 55, 43, 15000, tzinfo=UTC)),
            ("2025-07-12T06:55:43.123456Z", datetime(2025, 7, 12, 6, 55, 43, 123456, tzinfo=UTC)),
            ("2025-07-12T06:55:43.1234567Z", datetime(2025, 7, 12, 6, 55, 43, 123456, tzinfo=UTC)),
            ("2025-07-12T06:55:43.123456789Z", datetime(2025, 7, 12, 6, 55, 43, 123456, tzinfo=UTC)),
            ("2025-07-12T06:55:43.015", datetime(2025, 7, 12, 6, 55, 43, 15000, tzinfo=UTC)),
            ("2025-07-12T06:55:43", datetime(2025, 7, 12, 6, 55, 43, tzinfo=UTC)),
            ("2025-07-12 06:55:43Z", datetime(2025, 7, 12, 6, 55, 43, tzinfo=UTC)),
            ("2025-07-12T06:55Z", datetime(2025, 7, 12, 6, 55, tzinfo=UTC)),
            (" 2025-07-12T06:55:43Z ", datetime(2025, 7, 12, 6, 55, 43, tzinfo=UTC)),
        ],
        ids=[
            "zulu",
            "zulu-lowercase",
            "offset-with-colon",
            "offset-without-colon",
            "negative-half-hour-offset",
            "negative-zero-offset",
            "fraction-1-digit",
            "fraction-3-digits",
            "fraction-6-digits",
            "fraction-7-digits",
            "fraction-9-digits",
            "naive-with-fraction",
            "naive-no-fraction",
            "space-separator",
            "no-seconds",
            "surrounding-spaces",
        ],
    )
    def test_parse_timestamp_valid(self, text, expected):
        parsed = parse_timestamp(text)

        assert parsed == expected
        assert parsed.utcoffset() == timedelta(0)

    @pytest.mark.parametrize("value", [None, ""], ids=["null", "empty"])
    def test_parse_timestamp_absent_is_none(self, value):
        assert parse_timestamp(value) is None

    @pytest.mark.parametrize(
        "value",
        [
            "yesterday",
            "2025-07-12",
            "2025-13-01T00:00:00Z",
            "2025-02-30T00:00:00Z",
            "2025-07-12T25:00:00Z",
            "2025-07-12T06:55:43+2",
            "2025-07-12T06:55:43 UTC",
            "   ",
            12345,
            1.5,
            ["2025-07-12T06:55:43Z"],
        ],
        ids=[
            "word",
            "date-only",
            "month-13",
            "february-30",
            "hour-25",
            "short-offset",
            "zone-name",
            "blank",
            "integer",
            "float",
            "list",
        ],
    )
    def test_parse_timestamp_garbage_raises(self, value):
        with pytest.raises(ValueError, match="Invalid date-time"):
            parse_timestamp(value)


class TestJobState:
    @pytest.mark.parametrize(
        ("state", "terminal"),
        [(JobState.RUNNING, False), (JobState.SUCCEEDED, True), (JobState.FAILED, True)],
        ids=["running", "succeeded", "failed"],
    )
    def test_job_state_is_terminal(self, state, terminal):
        assert state.is_terminal is terminal


class TestExportJobFromApi:
    def test_from_api_reads_every_field(self):
        job = ExportJob.from_api(FULL_ENTRY)

        assert job.job_id == JOB_ID
        assert job.status == "DONE"
        assert job.site_code == SITE_CODE
        assert job.file_id == FILE_ID
        assert job.active is False
        assert job.orders_exported_count == 12
        assert job.created_at == datetime(2025, 7, 12, 6, 55, 43, 15000, tzinfo=UTC)
        assert job.completed_at == datetime(2025, 7, 12, 6, 57, 1, 500000, tzinfo=UTC)

    def test_from_api_only_job_id(self):
        job = ExportJob.from_api({"jobId": JOB_ID})

        assert job.status is None
        assert job.site_code is None
        assert job.file_id is None
        assert job.active is None
        assert job.orders_exported_count is None
        assert job.created_at is None
        assert job.completed_at is None

    def test_from_api_ignores_unknown_fields(self):
        job = ExportJob.from_api(make_entry(extraField={"nested": True}))

        assert job.job_id == JOB_ID

    @pytest.mark.parametrize(
        ("entry", "message"),
        [
            ("not an object", "expected a JSON object"),
            ([FULL_ENTRY], "expected a JSON object"),
            (None, "expected a JSON object"),
            (make_entry(jobId=...), "missing or empty jobId"),
            (make_entry(jobId=""), "missing or empty jobId"),
            (make_entry(jobId=42), "missing or empty jobId"),
            (make_entry(active="false"), "active is 'false'"),
            (make_entry(active=0), "active is 0"),
            (make_entry(ordersExportedCount="12"), "ordersExportedCount is '12'"),
            (make_entry(ordersExportedCount=True), "ordersExportedCount is True"),
            (make_entry(ordersExportedCount=1.5), "ordersExportedCount is 1.5"),
            (make_entry(status=3), "status is 3"),
            (make_entry(siteCode=["main"]), "siteCode is"),
            (make_entry(fileId=7), "fileId is 7"),
            (make_entry(createdAt="last week"), "Invalid date-time"),
            (make_entry(completedAt=20250712), "Invalid date-time"),
        ],
        ids=[
            "string",
            "list",
            "null",
            "missing-job-id",
            "empty-job-id",
            "integer-job-id",
            "active-string",
            "active-integer",
            "count-string",
            "count-boolean",
            "count-float",
            "status-integer",
            "site-code-list",
            "file-id-integer",
            "created-at-garbage",
            "completed-at-integer",
        ],
    )
    def test_from_api_invalid_raises(self, entry, message):
        with pytest.raises(ValueError, match=message):
            ExportJob.from_api(entry)

    def test_from_api_error_names_job_id(self):
        with pytest.raises(ValueError) as caught:
            ExportJob.from_api(make_entry(active="yes"))

        assert JOB_ID in str(caught.value)


class TestExportJobState:
    @pytest.mark.parametrize(
        ("fields", "expected"),
        [
            ({"active": True, "fileId": ..., "completedAt": ...}, JobState.RUNNING),
            ({"active": True, "fileId": FILE_ID, "status": "DONE"}, JobState.RUNNING),
            ({"active": True, "status": "FAILED"}, JobState.RUNNING),
            ({"active": False, "fileId": FILE_ID, "status": "DONE"}, JobState.SUCCEEDED),
            ({"active": False, "fileId": FILE_ID, "status": "SOMETHING_NEW"}, JobState.SUCCEEDED),
            ({"active": False, "fileId": FILE_ID, "status": ...}, JobState.SUCCEEDED),
            ({"active": False, "fileId": FILE_ID, "status": "FAILED"}, JobState.FAILED),
            ({"active": False, "fileId": FILE_ID, "status": "failed"}, JobState.FAILED),
            ({"active": False, "fileId": FILE_ID, "status": " Error "}, JobState.FAILED),
            ({"active": False, "fileId": FILE_ID, "status": "cancelled"}, JobState.FAILED),
            ({"active": False, "fileId": FILE_ID, "status": "Timed_Out"}, JobState.FAILED),
            ({"active": False, "fileId": ..., "status": "DONE"}, JobState.FAILED),
            ({"active": False, "fileId": "", "status": "DONE"}, JobState.FAILED),
            ({"active": False, "fileId": "   ", "status": "DONE"}, JobState.FAILED),
            ({"active": False, "fileId": None, "status": "DONE"}, JobState.FAILED),
            ({"active": ..., "completedAt": ..., "fileId": ...}, JobState.RUNNING),
            ({"active": ..., "completedAt": ..., "fileId": FILE_ID}, JobState.RUNNING),
            ({"active": ..., "completedAt": COMPLETED_AT, "fileId": FILE_ID}, JobState.SUCCEEDED),
            ({"active": ..., "completedAt": COMPLETED_AT, "fileId": ...}, JobState.FAILED),
            ({"active": None, "completedAt": None, "fileId": FILE_ID}, JobState.RUNNING),
        ],
        ids=[
            "active-without-file",
            "active-with-file",
            "active-with-failure-status",
            "inactive-file-done",
            "inactive-file-unknown-status",
            "inactive-file-no-status",
            "inactive-file-failed",
            "inactive-file-failed-lowercase",
            "inactive-file-error-padded",
            "inactive-file-cancelled",
            "inactive-file-timed-out-mixed-case",
            "inactive-no-file",
            "inactive-empty-file",
            "inactive-blank-file",
            "inactive-null-file",
            "no-active-not-completed",
            "no-active-not-completed-with-file",
            "no-active-completed-with-file",
            "no-active-completed-without-file",
            "null-active-null-completed",
        ],
    )
    def test_state_derivation(self, fields, expected):
        job = ExportJob.from_api(make_entry(**fields))

        assert job.state is expected

    def test_state_blank_file_id_is_none(self):
        job = ExportJob.from_api(make_entry(fileId="  "))

        assert job.file_id is None


class TestExportJobRaiseIfFailed:
    def test_raise_if_failed_names_job_site_status(self):
        job = ExportJob.from_api(make_entry(status="ERROR"))

        with pytest.raises(SepaExportJobFailedError) as caught:
            job.raise_if_failed()

        message = str(caught.value)
        assert JOB_ID in message
        assert SITE_CODE in message
        assert "ERROR" in message

    def test_raise_if_failed_missing_file_reason(self):
        job = ExportJob.from_api(make_entry(fileId=..., status="DONE"))

        with pytest.raises(SepaExportJobFailedError, match="without a fileId"):
            job.raise_if_failed()

    def test_raise_if_failed_missing_status_reason(self):
        job = ExportJob.from_api(make_entry(fileId=..., status=...))

        with pytest.raises(SepaExportJobFailedError, match="<missing>"):
            job.raise_if_failed()

    def test_raise_if_failed_is_not_retried(self):
        job = ExportJob.from_api(make_entry(status="FAILED"))

        with pytest.raises(AirflowFailException):
            job.raise_if_failed()

    @pytest.mark.parametrize(
        "fields",
        [{"active": True}, {"active": False, "fileId": FILE_ID, "status": "DONE"}],
        ids=["running", "succeeded"],
    )
    def test_raise_if_failed_passes(self, fields):
        job = ExportJob.from_api(make_entry(**fields))

        assert job.raise_if_failed() is None


class TestExportJobDict:
    def test_to_dict_values(self):
        data = ExportJob.from_api(FULL_ENTRY).to_dict()

        assert data == {
            "job_id": JOB_ID,
            "status": "DONE",
            "site_code": SITE_CODE,
            "file_id": FILE_ID,
            "active": False,
            "orders_exported_count": 12,
            "created_at": "2025-07-12T06:55:43.015000Z",
            "completed_at": "2025-07-12T06:57:01.500000Z",
            "state": "succeeded",
        }

    def test_to_dict_is_json_serializable(self):
        data = ExportJob.from_api(FULL_ENTRY).to_dict()

        assert json.loads(json.dumps(data)) == data

    @pytest.mark.parametrize(
        "entry",
        [FULL_ENTRY, {"jobId": JOB_ID}, make_entry(active=True, fileId=..., completedAt=...)],
        ids=["finished", "minimal", "running"],
    )
    def test_dict_round_trip(self, entry):
        job = ExportJob.from_api(entry)

        rebuilt = ExportJob.from_dict(json.loads(json.dumps(job.to_dict())))

        assert rebuilt == job

    def test_from_dict_offset_timestamp_is_utc(self):
        job = ExportJob.from_dict({"job_id": JOB_ID, "created_at": "2025-07-12T08:55:43+02:00"})

        assert job.created_at == datetime(2025, 7, 12, 6, 55, 43, tzinfo=UTC)


class TestNewestJobSince:
    SINCE = datetime(2025, 7, 12, 6, 0, tzinfo=UTC)

    def make_job(self, job_id: str, created_at: str | None) -> ExportJob:
        return ExportJob.from_api({"jobId": job_id, "createdAt": created_at})

    def test_newest_job_since_picks_newest(self):
        jobs = [
            self.make_job("old", "2025-07-12T05:59:59Z"),
            self.make_job("first", "2025-07-12T06:00:00Z"),
            self.make_job("second", "2025-07-12T06:10:00Z"),
            self.make_job("undated", None),
        ]

        assert newest_job_since(jobs, self.SINCE).job_id == "second"

    def test_newest_job_since_none_found(self):
        jobs = [self.make_job("old", "2025-07-12T05:59:59Z"), self.make_job("undated", None)]

        assert newest_job_since(jobs, self.SINCE) is None

    def test_newest_job_since_slack_widens_window(self):
        jobs = [self.make_job("old", "2025-07-12T05:59:00Z")]

        assert newest_job_since(jobs, self.SINCE, slack=timedelta(minutes=2)).job_id == "old"
