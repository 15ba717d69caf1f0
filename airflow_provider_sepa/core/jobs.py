"""The export job record and the rules that derive a job's state from the API's fields.

The API publisher does not list the job status strings, so the state is derived
fail-closed: a job counts as succeeded only when it is inactive, has a non-empty file id
and its status is not known to mean failure. Anything else that is not running is failed.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow_provider_sepa.core.errors import SepaExportJobFailedError

#: Status strings (compared case-insensitively) that mean a finished job has no usable file,
#: even if a file id is present.
FAILURE_STATUSES = frozenset(
    {"FAILED", "FAILURE", "ERROR", "ERRORED", "CANCELLED", "CANCELED", "ABORTED", "REJECTED", "TIMEOUT", "TIMED_OUT"}
)

_TIMESTAMP = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<time>\d{2}:\d{2}(?::\d{2})?)"
    r"(?:\.(?P<fraction>\d+))?(?P<zone>Z|z|[+-]\d{2}:?\d{2})?$"
)


class JobState(str, enum.Enum):
    """State of an export job as this provider derives it."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        """Whether the job will not change any more."""
        return self is not JobState.RUNNING


def parse_timestamp(value: Any) -> datetime | None:
    """Parse an API date-time into a timezone-aware UTC datetime.

    Accepts ``Z`` or a numeric offset, any number of fraction digits, and a missing or
    null value (returns ``None``). A value without a zone is read as UTC.

    :raises ValueError: when the value is not an ISO-8601 date-time.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"Invalid date-time {value!r}: expected an ISO-8601 string.")
    match = _TIMESTAMP.match(value.strip())
    if match is None:
        raise ValueError(f"Invalid date-time {value!r}: expected ISO-8601 such as 2025-07-12T06:55:43.015Z.")

    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    zone = match["zone"] or "+00:00"
    if zone in ("Z", "z"):
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    clock = match["time"] if match["time"].count(":") == 2 else match["time"] + ":00"
    try:
        parsed = datetime.fromisoformat(f"{match['date']}T{clock}.{fraction}{zone}")
    except ValueError as error:
        # The pattern checks only the shape, so a month 13 or an hour 25 fails here.
        raise ValueError(f"Invalid date-time {value!r}: {error}.") from None
    return parsed.astimezone(timezone.utc)


def _format_timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ExportJob:
    """One export job as the list endpoint returns it.

    ``active`` is ``None`` when the API left the field out.
    """

    job_id: str
    status: str | None
    site_code: str | None
    file_id: str | None
    active: bool | None
    orders_exported_count: int | None
    created_at: datetime | None
    completed_at: datetime | None

    @classmethod
    def from_api(cls, item: Any) -> ExportJob:
        """Build a job from one element of the list endpoint's JSON array.

        :raises ValueError: when the element is not an object, has no ``jobId`` or has a
            field of the wrong type.
        """
        if not isinstance(item, dict):
            raise ValueError(f"Invalid job entry {item!r}: expected a JSON object.")
        job_id = item.get("jobId")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError(f"Invalid job entry: missing or empty jobId in {sorted(item)}.")

        active = item.get("active")
        if active is not None and not isinstance(active, bool):
            raise ValueError(f"Invalid job {job_id}: active is {active!r}, expected true or false.")
        file_id = _optional_string(item, "fileId", job_id)
        count = item.get("ordersExportedCount")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise ValueError(f"Invalid job {job_id}: ordersExportedCount is {count!r}, expected an integer.")

        return cls(
            job_id=job_id,
            status=_optional_string(item, "status", job_id),
            site_code=_optional_string(item, "siteCode", job_id),
            # A blank fileId names no file, so it counts as missing and the job as failed.
            file_id=file_id if file_id and file_id.strip() else None,
            active=active,
            orders_exported_count=count,
            created_at=parse_timestamp(item.get("createdAt")),
            completed_at=parse_timestamp(item.get("completedAt")),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportJob:
        """Rebuild a job from :meth:`to_dict` output (for example from an XCom or an event)."""
        return cls(
            job_id=data["job_id"],
            status=data.get("status"),
            site_code=data.get("site_code"),
            file_id=data.get("file_id"),
            active=data.get("active"),
            orders_exported_count=data.get("orders_exported_count"),
            created_at=parse_timestamp(data.get("created_at")),
            completed_at=parse_timestamp(data.get("completed_at")),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the job as JSON-compatible values, for XCom and trigger events."""
        return {
            "job_id": self.job_id,
            "status": self.status,
            "site_code": self.site_code,
            "file_id": self.file_id,
            "active": self.active,
            "orders_exported_count": self.orders_exported_count,
            "created_at": _format_timestamp(self.created_at),
            "completed_at": _format_timestamp(self.completed_at),
            "state": self.state.value,
        }

    @property
    def is_active(self) -> bool:
        """Whether the job still runs.

        A missing ``active`` field counts as running until ``completedAt`` appears.
        """
        if self.active is None:
            return self.completed_at is None
        return self.active

    @property
    def status_means_failure(self) -> bool:
        """Whether the status string is one known to mean failure."""
        return (self.status or "").strip().upper() in FAILURE_STATUSES

    @property
    def state(self) -> JobState:
        """The job's state, derived fail-closed (see the module documentation)."""
        if self.is_active:
            return JobState.RUNNING
        if self.file_id and not self.status_means_failure:
            return JobState.SUCCEEDED
        return JobState.FAILED

    def failure_reason(self) -> str:
        """Describe why a finished job counts as failed."""
        status = self.status if self.status is not None else "<missing>"
        if self.status_means_failure:
            return f"the job ended with status {status}"
        if not self.file_id:
            return f"the job ended with status {status} but without a fileId"
        return f"the job ended with status {status}"

    def raise_if_failed(self) -> None:
        """Raise :class:`SepaExportJobFailedError` when the job has ended without a file."""
        if self.state is JobState.FAILED:
            raise SepaExportJobFailedError(
                f"Export job {self.job_id} of site {self.site_code!r} failed: {self.failure_reason()}. "
                "The export cannot be revoked or resumed; check the job in Emporix and start a new DAG run "
                "once the cause is fixed."
            )


def _optional_string(item: dict[str, Any], key: str, job_id: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"Invalid job {job_id}: {key} is {value!r}, expected a string.")
    return value


def newest_job_since(jobs: list[ExportJob], since: datetime, *, slack: timedelta = timedelta(0)) -> ExportJob | None:
    """Return the most recently created job whose ``created_at`` is not before ``since - slack``."""
    threshold = since - slack
    candidates = [job for job in jobs if job.created_at is not None and job.created_at >= threshold]
    if not candidates:
        return None
    return max(candidates, key=lambda job: job.created_at or threshold)
