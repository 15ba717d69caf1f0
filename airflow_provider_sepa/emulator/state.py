"""In-memory state of the emulator: clients, tokens, jobs, files, fault rules and the request log.

All public methods are thread-safe: the HTTP server, file generation threads and tests
share one :class:`EmulatorState` through a single lock. Job completion is evaluated
lazily whenever jobs are read, from the injected clock. File generation starts in a
background thread when a job is created, so no request waits for a large file to be
written. A job reports completion only once its duration has passed and its file is written.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import shutil
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from airflow_provider_sepa.emulator.config import ALL_SCOPES, EmulatorConfig
from airflow_provider_sepa.emulator.fault_injector import FaultInjector
from airflow_provider_sepa.emulator.faults import Fault, JobOutcome
from airflow_provider_sepa.emulator.orders import iter_orders, make_creditor, site_order_count, total_orders

log = logging.getLogger(__name__)

# Job status strings. The contract does not publish them, so the emulator uses these three.
JOB_STATUS_IN_PROGRESS = "IN_PROGRESS"
JOB_STATUS_COMPLETED = "COMPLETED"
JOB_STATUS_FAILED = "FAILED"

#: Days between the creation of a job and the requested collection date in its file.
COLLECTION_DELAY_DAYS = 2
#: Seconds between the createdAt values of the jobs that insert_newer_jobs() adds.
NEWER_JOB_SPACING_SECONDS = 0.001

#: Query parameter names whose values the HTTP view of the request log always masks.
SENSITIVE_QUERY_KEYS = frozenset({"client_secret", "access_token", "refresh_token", "token", "password"})
REDACTED = "[REDACTED]"

# Seconds that close() waits for each file generation thread to stop.
_GENERATION_JOIN_TIMEOUT = 30.0


class EmulatorError(Exception):
    """Base class of the errors that state operations raise for rejected requests."""


class InvalidClientError(EmulatorError):
    """Raised when the client id is unknown or the client secret does not match."""


class InvalidScopeError(EmulatorError):
    """Raised when a token request names a scope that the client does not have."""


class InvalidTokenError(EmulatorError):
    """Raised when an access token is missing, unknown or revoked."""


class ExpiredTokenError(EmulatorError):
    """Raised when an access token has expired."""


class UnknownSiteError(EmulatorError):
    """Raised when a job is requested for a site code that the emulator does not serve."""


class JobConflictError(EmulatorError):
    """Raised when the tenant already has an active job."""


@dataclass(frozen=True)
class Client:
    """OAuth client that may request tokens for one tenant."""

    client_id: str
    client_secret: str = field(repr=False)
    tenant: str
    scopes: tuple[str, ...]


@dataclass
class TokenRecord:
    """Issued access token with its tenant, scopes and expiry in clock seconds."""

    token: str = field(repr=False)
    client_id: str
    tenant: str
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    lifetime_seconds: float
    revoked: bool = False


@dataclass(frozen=True)
class FileRecord:
    """Generated SEPA file on disk and its totals."""

    file_id: str
    job_id: str
    tenant: str
    site_code: str
    path: Path
    size: int
    sha256: str
    nb_of_txs: int
    ctrl_sum: Decimal
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        """Return the metadata as a dict. ``ctrl_sum`` stays a Decimal and ``path`` a Path."""
        return {
            "file_id": self.file_id,
            "job_id": self.job_id,
            "tenant": self.tenant,
            "site_code": self.site_code,
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "nb_of_txs": self.nb_of_txs,
            "ctrl_sum": self.ctrl_sum,
            "created_at": format_timestamp(self.created_at),
        }


@dataclass
class JobRecord:
    """Export job and the progress of its file generation."""

    job_id: str
    tenant: str
    site_code: str
    created_at: float
    due_at: float
    status: str = JOB_STATUS_IN_PROGRESS
    active: bool = True
    completed_at: float | None = None
    file_id: str | None = None
    orders_exported_count: int = 0
    # Set by the generation thread. The job stays active until this is set and due_at has passed.
    generated: bool = False
    generated_at: float | None = None
    generated_file: FileRecord | None = None
    generated_count: int = 0
    generation_error: str | None = None
    # A job fault that decides how the job ends, instead of COMPLETED with its file.
    outcome_fault: Fault | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def to_details(self) -> dict[str, Any]:
        """Return the job as a JobDetails object of the API, leaving out unset fields."""
        details: dict[str, Any] = {
            "jobId": self.job_id,
            "status": self.status,
            "siteCode": self.site_code,
            "active": self.active,
            "ordersExportedCount": self.orders_exported_count,
            "createdAt": format_timestamp(self.created_at),
        }
        if self.file_id is not None:
            details["fileId"] = self.file_id
        if self.completed_at is not None:
            details["completedAt"] = format_timestamp(self.completed_at)
        return details


@dataclass(frozen=True)
class RequestContext:
    """Request as the request hooks see it, before the endpoint runs."""

    endpoint: str
    method: str
    path: str
    query: dict[str, str]


@dataclass(frozen=True)
class InjectedResponse:
    """Response that a request hook returns to replace the endpoint's response."""

    status_code: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


#: Callable run before each API request. Returning an :class:`InjectedResponse` makes the
#: server send it in place of the endpoint's response, for example to inject faults.
RequestHook = Callable[[RequestContext], InjectedResponse | None]


def format_timestamp(timestamp: float) -> str:
    """Format clock seconds as ISO 8601 UTC with milliseconds, like ``2025-07-12T06:55:43.015Z``."""
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EmulatorState:
    """Thread-safe store behind the emulator's endpoints, with accessors for tests."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        """Create the state for ``config`` and prepare its data directory.

        Without ``config.data_dir`` the state creates a temporary directory, which
        :meth:`close` removes.
        """
        self.config = config if config is not None else EmulatorConfig()
        self._clock = self.config.clock
        self._lock = threading.RLock()
        self._clients: dict[str, Client] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._jobs: dict[str, JobRecord] = {}
        self._files: dict[str, FileRecord] = {}
        self._requests: deque[dict[str, Any]] = deque(maxlen=self.config.request_log_limit)
        self._request_hooks: list[RequestHook] = []
        self._token_lifetime_seconds = float(self.config.token_lifetime_seconds)
        self._cancel = threading.Event()
        self._closed = False
        #: Fault rules of this emulator, a :class:`FaultInjector`.
        self.faults = FaultInjector()
        self.faults.add_all(self.config.faults)

        if self.config.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="sepa-emulator-"))
            self._owns_data_dir = True
        else:
            self.data_dir = Path(self.config.data_dir)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._owns_data_dir = False

        self.add_client(
            self.config.client_id,
            self.config.client_secret,
            scopes=self.config.client_scopes,
            tenant=self.config.tenant,
        )

    def now(self) -> float:
        """Return the current time of the configured clock in seconds."""
        return self._clock()

    # Clients and tokens

    @property
    def token_lifetime_seconds(self) -> float:
        """Lifetime of newly issued tokens in seconds, unless a fault rule sets another one."""
        with self._lock:
            return self._token_lifetime_seconds

    def set_token_lifetime(self, seconds: float) -> None:
        """Change the lifetime of tokens issued from now on. Issued tokens keep their expiry."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
            raise ValueError(f"Invalid token lifetime {seconds!r}: expected seconds > 0.")
        with self._lock:
            self._token_lifetime_seconds = float(seconds)

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        scopes: tuple[str, ...] = ALL_SCOPES,
        tenant: str | None = None,
    ) -> None:
        """Register a client, for example one of another tenant or with fewer scopes.

        ``tenant`` defaults to the configured tenant. Registering an existing id replaces it.
        """
        tenant = self.config.tenant if tenant is None else tenant
        if tenant != tenant.lower() or not tenant:
            raise ValueError(f"Invalid tenant {tenant!r}: tenants are non-empty and lowercase.")
        unknown_scopes = [scope for scope in scopes if scope not in ALL_SCOPES]
        if unknown_scopes:
            raise ValueError(f"Invalid scopes {unknown_scopes}: known scopes are {list(ALL_SCOPES)}.")
        with self._lock:
            self._clients[client_id] = Client(client_id, client_secret, tenant, tuple(scopes))

    def issue_token(self, client_id: str, client_secret: str, scope: str | None) -> TokenRecord:
        """Authenticate a client and issue an access token.

        ``scope`` is a space-separated list. ``None`` or a blank string grants every scope
        of the client. Raise :class:`InvalidClientError` for an unknown id or a wrong
        secret and :class:`InvalidScopeError` for a scope that the client does not have.
        """
        with self._lock:
            client = self._clients.get(client_id)
            # Compare in constant time, and compare even for an unknown id.
            expected_secret = client.client_secret if client is not None else secrets.token_urlsafe(24)
            secret_matches = hmac.compare_digest(client_secret.encode(), expected_secret.encode())
            if client is None or not secret_matches:
                raise InvalidClientError("Invalid client identifier")

            requested = scope.split() if scope is not None else []
            if requested:
                missing = [name for name in requested if name not in client.scopes]
                if missing:
                    raise InvalidScopeError(f"Invalid scope: {' '.join(missing)}")
                granted = tuple(name for name in client.scopes if name in requested)
            else:
                granted = client.scopes

            lifetime = self.faults.take_token_lifetime() or self._token_lifetime_seconds
            now = self.now()
            record = TokenRecord(
                token=secrets.token_urlsafe(32),
                client_id=client.client_id,
                tenant=client.tenant,
                scopes=granted,
                issued_at=now,
                expires_at=now + lifetime,
                lifetime_seconds=lifetime,
            )
            self._tokens[record.token] = record
            return record

    def check_token(self, token: str | None) -> TokenRecord:
        """Return the record of a usable token.

        Raise :class:`InvalidTokenError` for a missing, unknown or revoked token and
        :class:`ExpiredTokenError` for an expired one.
        """
        with self._lock:
            record = self._tokens.get(token) if token else None
            if record is None or record.revoked:
                raise InvalidTokenError("Invalid access token")
            if self.now() >= record.expires_at:
                raise ExpiredTokenError("Access Token expired")
            return record

    def issued_tokens(self) -> list[str]:
        """Return every access token issued so far, including expired and revoked ones.

        Tests use this to scan logs and files for leaked tokens. No endpoint returns it.
        """
        with self._lock:
            return list(self._tokens)

    def revoke_tokens(self) -> int:
        """Revoke all tokens so that they are rejected as invalid, and return how many there were."""
        with self._lock:
            for record in self._tokens.values():
                record.revoked = True
            return len(self._tokens)

    def expire_tokens(self) -> int:
        """Make all unexpired tokens expire now, and return how many changed."""
        with self._lock:
            now = self.now()
            changed = 0
            for record in self._tokens.values():
                if record.expires_at > now:
                    record.expires_at = now
                    changed += 1
            return changed

    # Jobs and files

    def create_job(self, tenant: str, site_code: str) -> JobRecord:
        """Create an export job and start writing its file in a background thread.

        Raise :class:`UnknownSiteError` for a site code outside the configuration and
        :class:`JobConflictError` while ``config.max_active_jobs_per_tenant`` jobs of
        ``tenant`` are active (one by default, as in the API).
        """
        if site_code not in self.config.site_codes():
            raise UnknownSiteError(f"Unknown site code [{site_code}]")
        with self._lock:
            if self._closed:
                raise RuntimeError("The emulator state is closed.")
            self._refresh_jobs_locked()
            active_jobs = sum(1 for job in self._jobs.values() if job.active and job.tenant == tenant)
            if active_jobs >= self.config.max_active_jobs_per_tenant:
                raise JobConflictError("Another job is in progress. You can have only one job at the same time.")
            now = self.now()
            job = JobRecord(
                job_id=str(uuid.uuid4()),
                tenant=tenant,
                site_code=site_code,
                created_at=now,
                due_at=now + self.config.job_duration_seconds,
            )
            job.thread = threading.Thread(
                target=self._generate_file,
                args=(job,),
                name=f"sepa-emulator-job-{job.job_id}",
                daemon=True,
            )
            job_faults = self.faults.take_job_faults(site_code)
            job.outcome_fault = job_faults.outcome
            self._jobs[job.job_id] = job
            job.thread.start()
            newer_ids = self._insert_newer_jobs_locked(job, job_faults.newer_jobs)
        log.info("Created job %s for tenant %s, site %s", job.job_id, tenant, site_code)
        if newer_ids:
            log.info("Added %d finished jobs created after job %s", len(newer_ids), job.job_id)
        return job

    def insert_newer_jobs(self, job_id: str, count: int) -> list[str]:
        """Add ``count`` finished jobs of the same tenant and site, created after job ``job_id``.

        The added jobs have status COMPLETED, no ``fileId`` and 0 exported orders, and
        their ``createdAt`` values follow the job's in steps of NEWER_JOB_SPACING_SECONDS.
        With ``count`` >= the page size, the job drops off the first page of the list
        endpoint (``sort=DESC``). Return the ids of the added jobs. Raise KeyError for an
        unknown job and ValueError when ``count`` < 1.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"Invalid count {count!r}: expected an integer >= 1.")
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise KeyError(f"Job {job_id!r} not found.")
            return self._insert_newer_jobs_locked(job, count)

    def _insert_newer_jobs_locked(self, job: JobRecord, count: int) -> list[str]:
        added = []
        for index in range(1, count + 1):
            created_at = job.created_at + index * NEWER_JOB_SPACING_SECONDS
            newer = JobRecord(
                job_id=str(uuid.uuid4()),
                tenant=job.tenant,
                site_code=job.site_code,
                created_at=created_at,
                due_at=created_at,
                status=JOB_STATUS_COMPLETED,
                active=False,
                completed_at=created_at,
                generated=True,
                generated_at=created_at,
            )
            self._jobs[newer.job_id] = newer
            added.append(newer.job_id)
        return added

    def _generate_file(self, job: JobRecord) -> None:
        """Write the job's pain.008 file and store the result on the job (generation thread)."""
        # Imported here so that state.py stays importable without the XML modules.
        from airflow_provider_sepa.emulator.sepa_xml import Pain008Header, WriteCancelledError, write_pain008

        file_record: FileRecord | None = None
        error: str | None = None
        count = 0
        file_id = str(uuid.uuid4())
        final_path = self.data_dir / f"{file_id}.xml"
        partial_path = self.data_dir / f"{file_id}.xml.part"
        try:
            count = site_order_count(self.config, job.site_code)
            if count > 0:
                totals = total_orders(self.config.seed, job.site_code, count)
                created = datetime.fromtimestamp(job.created_at, tz=timezone.utc)
                header = Pain008Header(
                    message_id="M" + job.job_id.replace("-", ""),
                    created_at=created,
                    initiating_party=make_creditor(self.config.seed).name,
                    payment_info_id="P" + job.job_id.replace("-", ""),
                    collection_date=(created + timedelta(days=COLLECTION_DELAY_DAYS)).date(),
                    creditor=make_creditor(self.config.seed),
                )
                orders = iter_orders(self.config.seed, job.site_code, count)
                with open(partial_path, "wb") as output:
                    result = write_pain008(output, header, orders, totals.count, totals.amount_sum, cancel=self._cancel)
                partial_path.replace(final_path)
                file_record = FileRecord(
                    file_id=file_id,
                    job_id=job.job_id,
                    tenant=job.tenant,
                    site_code=job.site_code,
                    path=final_path,
                    size=result.size,
                    sha256=result.sha256,
                    nb_of_txs=result.nb_of_txs,
                    ctrl_sum=result.ctrl_sum,
                    created_at=self.now(),
                )
        except WriteCancelledError:
            partial_path.unlink(missing_ok=True)
            log.info("Stopped writing the file of job %s because the emulator is closing", job.job_id)
            return
        except Exception as exc:  # the job must end as FAILED instead of staying active forever
            partial_path.unlink(missing_ok=True)
            error = f"{type(exc).__name__}: {exc}"
            log.exception("Failed to write the file of job %s", job.job_id)

        with self._lock:
            job.generated = True
            job.generated_at = self.now()
            job.generated_file = file_record
            job.generated_count = count if error is None else 0
            job.generation_error = error

    def _refresh_jobs_locked(self) -> None:
        """Complete every active job whose duration has passed and whose file is written."""
        now = self.now()
        for job in self._jobs.values():
            if not job.active or not job.generated or now < job.due_at:
                continue
            job.active = False
            job.completed_at = max(job.due_at, job.generated_at or job.due_at)
            if job.generation_error is not None:
                job.status = JOB_STATUS_FAILED
                log.warning("Job %s failed: %s", job.job_id, job.generation_error)
                continue
            if job.outcome_fault is not None:
                self._end_job_with_fault_locked(job, job.outcome_fault)
                continue
            job.status = JOB_STATUS_COMPLETED
            job.orders_exported_count = job.generated_count
            if job.generated_file is not None:
                job.file_id = job.generated_file.file_id
                self._files[job.file_id] = job.generated_file
            log.info("Completed job %s with %d orders", job.job_id, job.orders_exported_count)

    def _end_job_with_fault_locked(self, job: JobRecord, fault: Fault) -> None:
        """End ``job`` with the status that the job fault ``fault`` sets. Only UNKNOWN_STATUS keeps the file."""
        job.status = fault.effective_job_status()
        job.orders_exported_count = 0 if fault.outcome is JobOutcome.FAILED else job.generated_count
        if fault.outcome is JobOutcome.UNKNOWN_STATUS and job.generated_file is not None:
            job.file_id = job.generated_file.file_id
            self._files[job.file_id] = job.generated_file
        log.info("Job %s ended with status %s by fault %s", job.job_id, job.status, fault.spec())

    def list_jobs(
        self,
        tenant: str,
        site_code: str,
        page_number: int = 1,
        page_size: int = 16,
        descending: bool = True,
    ) -> list[dict[str, Any]]:
        """Return one page of the JobDetails of ``tenant`` and ``site_code``, sorted by createdAt."""
        with self._lock:
            self._refresh_jobs_locked()
            # Jobs are stored in creation order, which breaks ties between equal timestamps.
            matching = [job for job in self._jobs.values() if job.tenant == tenant and job.site_code == site_code]
            ordered = sorted(enumerate(matching), key=lambda item: (item[1].created_at, item[0]), reverse=descending)
            start = (page_number - 1) * page_size
            return [job.to_details() for _, job in ordered[start : start + page_size]]

    def get_file(self, tenant: str, file_id: str) -> FileRecord | None:
        """Return the file ``file_id`` of ``tenant``, or None when it does not exist."""
        with self._lock:
            self._refresh_jobs_locked()
            record = self._files.get(file_id)
            if record is None or record.tenant != tenant:
                return None
            return record

    def jobs(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Return the JobDetails of all jobs in creation order, each with a ``tenant`` key."""
        with self._lock:
            self._refresh_jobs_locked()
            return [
                {**job.to_details(), "tenant": job.tenant}
                for job in self._jobs.values()
                if tenant is None or job.tenant == tenant
            ]

    def job_count(self, tenant: str | None = None, site_code: str | None = None) -> int:
        """Return the number of jobs, optionally only those of ``tenant`` and ``site_code``."""
        with self._lock:
            return sum(
                1
                for job in self._jobs.values()
                if (tenant is None or job.tenant == tenant) and (site_code is None or job.site_code == site_code)
            )

    def file_info(self, file_id: str) -> dict[str, Any]:
        """Return the metadata of a completed job's file: path, size, sha256, nb_of_txs, ctrl_sum.

        Raise KeyError when no completed job has this file id.
        """
        with self._lock:
            self._refresh_jobs_locked()
            record = self._files.get(file_id)
            if record is None:
                raise KeyError(f"File {file_id!r} not found: no completed job has this file id.")
            return record.to_dict()

    # Request log and hooks

    def record_request(
        self,
        endpoint: str,
        method: str,
        path: str,
        query: dict[str, str],
        status_code: int | None,
        faults: Sequence[str] = (),
    ) -> None:
        """Append a request to the log. Headers and bodies are never passed in or stored.

        ``status_code`` is None when the client got no status line because a fault closed
        the connection. ``faults`` lists the specs of the faults that acted on the request.
        """
        entry = {
            "endpoint": endpoint,
            "method": method,
            "path": path,
            "query": dict(query),
            "status_code": status_code,
            "faults": list(faults),
            "timestamp": self.now(),
        }
        with self._lock:
            self._requests.append(entry)

    def request_log(self, redact: bool = False) -> list[dict[str, Any]]:
        """Return copies of the logged requests, oldest first.

        With ``redact``, query values that look like credentials or equal a client secret
        or an issued token are replaced with ``[REDACTED]``, as the HTTP view needs.
        """
        with self._lock:
            entries = [
                {**entry, "query": dict(entry["query"]), "faults": list(entry["faults"])} for entry in self._requests
            ]
            if not redact:
                return entries
            secret_values = {client.client_secret for client in self._clients.values()} | set(self._tokens)
        for entry in entries:
            query = entry["query"]
            for key, value in query.items():
                if key.lower() in SENSITIVE_QUERY_KEYS or value in secret_values:
                    query[key] = REDACTED
        return entries

    def clear_request_log(self) -> None:
        """Remove all entries from the request log."""
        with self._lock:
            self._requests.clear()

    def add_request_hook(self, hook: RequestHook) -> None:
        """Register a hook that runs before each API request and may replace its response."""
        with self._lock:
            self._request_hooks.append(hook)

    def clear_request_hooks(self) -> None:
        """Remove all request hooks."""
        with self._lock:
            self._request_hooks.clear()

    def run_request_hooks(self, context: RequestContext) -> InjectedResponse | None:
        """Run the hooks in registration order and return the first injected response, if any."""
        with self._lock:
            hooks = list(self._request_hooks)
        for hook in hooks:
            response = hook(context)
            if response is not None:
                return response
        return None

    # Lifecycle

    def close(self) -> None:
        """Stop file generation threads and remove the data directory if the state created it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = [job.thread for job in self._jobs.values() if job.thread is not None]
        self._cancel.set()
        self.faults.cancel_delays()
        for thread in threads:
            thread.join(timeout=_GENERATION_JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("File generation thread %s did not stop in time", thread.name)
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
