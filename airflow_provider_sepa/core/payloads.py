"""Parsing of the API's success bodies and of issued tokens, shared by hook and trigger."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_sepa.core import endpoints
from airflow_provider_sepa.core.errors import SepaExportJobNotFoundError, SepaExportResponseError, truncate_body
from airflow_provider_sepa.core.jobs import ExportJob

#: Lifetime assumed when the token response has no usable ``expires_in``, in seconds.
FALLBACK_TOKEN_LIFETIME = 300
#: A token is replaced when less than this many seconds of its lifetime remain...
MAX_REFRESH_MARGIN = 60.0
#: ...or less than this share of its lifetime, whichever is shorter.
REFRESH_MARGIN_SHARE = 0.1


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and the monotonic clock time after which it must not be used."""

    value: str = field(repr=False)
    refresh_at: float
    lifetime: float

    def is_usable(self, now: float | None = None) -> bool:
        """Return whether the token may still be sent."""
        return (time.monotonic() if now is None else now) < self.refresh_at


def not_json_error(endpoint: str, status: int, resource_id: str, body: str | None) -> SepaExportResponseError:
    """Build the error for a 2xx response whose body is not JSON.

    :param endpoint: the endpoint template, such as ``GET /sepa-export/{tenant}/jobs``.
    :param status: the HTTP status of the response.
    :param resource_id: the client, site code or file id the request was about.
    :param body: the body to quote, truncated, or ``None`` to leave it out because it may
        contain a token.
    """
    detail = "the body is not JSON."
    if body is not None:
        detail = f"the body is not JSON: {truncate_body(body)!r}"
    return SepaExportResponseError(endpoint, status, detail, resource_id=resource_id)


def parse_token_response(payload: Any, now: float | None = None) -> AccessToken:
    """Read a token endpoint reply.

    :raises SepaExportResponseError: when ``access_token`` is missing or the type is not Bearer.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("access_token"), str) or not payload["access_token"]:
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise SepaExportResponseError(endpoints.TOKEN_ENDPOINT, 200, f"the reply has no access_token (fields: {keys}).")
    token_type = payload.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise SepaExportResponseError(
            endpoints.TOKEN_ENDPOINT,
            200,
            f"unsupported token_type {truncate_body(str(token_type))!r}; expected Bearer.",
        )
    lifetime = payload.get("expires_in")
    if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0:
        lifetime = FALLBACK_TOKEN_LIFETIME
    margin = min(MAX_REFRESH_MARGIN, lifetime * REFRESH_MARGIN_SHARE)
    started = time.monotonic() if now is None else now
    return AccessToken(value=payload["access_token"], refresh_at=started + lifetime - margin, lifetime=float(lifetime))


class TokenCache:
    """Process-wide store of access tokens, so every hook and trigger of one client shares a token.

    Keys include a digest of the client secret, so a changed secret never reuses a token.
    """

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str, str], AccessToken] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(settings: endpoints.ConnectionSettings) -> tuple[str, str, str, str]:
        """Return the cache key of a connection's client."""
        digest = hashlib.sha256(settings.client_secret.encode()).hexdigest()
        return (settings.token_url, settings.client_id, settings.scope or "", digest)

    def get(self, settings: endpoints.ConnectionSettings) -> AccessToken | None:
        """Return a usable cached token, or ``None``."""
        with self._lock:
            token = self._tokens.get(self.key(settings))
        if token is not None and token.is_usable():
            return token
        return None

    def put(self, settings: endpoints.ConnectionSettings, token: AccessToken) -> None:
        """Store a newly issued token."""
        with self._lock:
            self._tokens[self.key(settings)] = token

    def discard(
        self, settings: endpoints.ConnectionSettings, token: AccessToken | None = None, *, value: str | None = None
    ) -> None:
        """Forget the client's token.

        With ``token`` or ``value``, forget it only while it is still the cached one, so a
        late 401 for an old token never throws away a token fetched meanwhile.
        """
        with self._lock:
            key = self.key(settings)
            cached = self._tokens.get(key)
            if token is not None and cached is not token:
                return
            if value is not None and (cached is None or cached.value != value):
                return
            self._tokens.pop(key, None)

    def clear(self) -> None:
        """Forget every token."""
        with self._lock:
            self._tokens.clear()


#: The cache shared by every hook and trigger in this process.
TOKEN_CACHE = TokenCache()


def parse_job_list(payload: Any, site_code: str) -> list[ExportJob]:
    """Read a list endpoint reply: a bare JSON array of jobs.

    :raises SepaExportResponseError: when the reply is not an array of valid job objects.
    """
    if not isinstance(payload, list):
        raise SepaExportResponseError(
            endpoints.LIST_ENDPOINT,
            200,
            f"expected a JSON array of jobs, got {type(payload).__name__}.",
            resource_id=f"site {site_code}",
        )
    try:
        return [ExportJob.from_api(item) for item in payload]
    except ValueError as error:
        raise SepaExportResponseError(
            endpoints.LIST_ENDPOINT, 200, str(error), resource_id=f"site {site_code}"
        ) from None


def parse_created_job_id(payload: Any, site_code: str) -> str:
    """Read a create endpoint reply ``{"id": "..."}``."""
    job_id = payload.get("id") if isinstance(payload, dict) else None
    if not isinstance(job_id, str) or not job_id.strip():
        raise SepaExportResponseError(
            endpoints.CREATE_ENDPOINT,
            201,
            f"the reply has no job id: {truncate_body(repr(payload))}. The job may exist; check the job list.",
            resource_id=f"site {site_code}",
        )
    return job_id


def find_job_in_page(jobs: list[ExportJob], job_id: str) -> ExportJob | None:
    """Return the job with the given id from one page, or ``None``."""
    for job in jobs:
        if job.job_id == job_id:
            return job
    return None


def job_not_found_error(job_id: str, site_code: str, tenant: str) -> SepaExportJobNotFoundError:
    """Build the error for a job id that no page of the site's job list contains.

    :param job_id: the job id that was looked for.
    :param site_code: the site whose job list was read.
    :param tenant: the tenant of the connection, to name the endpoint.
    """
    return SepaExportJobNotFoundError(
        f"Export job {job_id} is not in the job list of site {site_code!r} (GET /sepa-export/"
        f"{tenant}/jobs). Check that the job id belongs to this site and tenant."
    )


@dataclass
class PageWalk:
    """Paging state for finding one job across pages of the list endpoint.

    The list endpoint has no paging envelope, so the walk ends at a page shorter than the
    page size, at an empty page, at ``max_pages``, or when a page repeats the previous one
    (a server that ignores ``pageNumber``).
    """

    page_size: int = 50
    max_pages: int = 200
    page_number: int = 1
    previous_ids: tuple[str, ...] = ()

    def next_page(self, jobs: list[ExportJob]) -> bool:
        """Record a fetched page; return whether another page should be fetched."""
        ids = tuple(job.job_id for job in jobs)
        if not jobs or len(jobs) < self.page_size or ids == self.previous_ids:
            return False
        if self.page_number >= self.max_pages:
            return False
        self.previous_ids = ids
        self.page_number += 1
        return True
