"""Retry policy and the per-request decision rules shared by the sync hook and the trigger.

A transport (``requests`` in the hook, ``httpx`` in the trigger) sends a request, then asks
:class:`RequestAttempts` what to do with the outcome: return the response, wait and retry,
fetch a new token and repeat once, or raise. Both transports therefore treat every status,
timeout and dropped connection the same way.
"""

from __future__ import annotations

import enum
import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, TypedDict

from airflow_provider_sepa.core import endpoints, payloads
from airflow_provider_sepa.core.errors import (
    SepaExportApiError,
    SepaExportAuthError,
    SepaExportBadRequestError,
    SepaExportConflictError,
    SepaExportCreateOutcomeUnknownError,
    SepaExportNotFoundError,
    SepaExportScopeError,
    SepaExportServerError,
    truncate_body,
)

#: Statuses that mean "try again later" for idempotent requests.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter.

    :param max_attempts: how many times a request is sent at most, the first one included.
    :param backoff_base: wait in seconds before the second attempt, before jitter.
    :param backoff_max: upper bound in seconds of one backoff wait.
    :param max_retry_after: longest ``Retry-After`` in seconds the client agrees to wait;
        a longer one ends the retries at once.
    """

    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    max_retry_after: float = 300.0
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"Invalid max_attempts {self.max_attempts}: use 1 or more.")
        if self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError("Backoff waits cannot be negative.")

    def backoff(self, attempt: int) -> float:
        """Return the jittered wait after the given failed attempt (1-based), in seconds."""
        # int ** int is typed as Any, because a negative exponent gives a float.
        ceiling: float = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        # Equal jitter: at least half of the exponential wait, so retries still spread out.
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Return how long to wait before the next attempt, or ``None`` to stop retrying."""
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None and retry_after > self.max_retry_after:
            return None
        wait = self.backoff(attempt)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header (seconds or an HTTP date) into seconds from now."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now or datetime.now(timezone.utc)
    return max(0.0, (when - current).total_seconds())


class TransportFailure(enum.Enum):
    """Kind of failure of a request that got no complete response."""

    #: The connection could not be opened, so the server never saw the request.
    CONNECT = "connection failed"
    #: The server sent no response within the read timeout.
    READ_TIMEOUT = "read timed out"
    #: The connection closed after the request was sent.
    DISCONNECTED = "connection closed before the response was complete"
    #: The response arrived, but its body is not valid for its Content-Encoding.
    INVALID_BODY = "the response body is invalid"


class Action(enum.Enum):
    """Next step of the transport after an attempt."""

    RETURN = "return"
    RETRY = "retry"
    REAUTHENTICATE = "reauthenticate"
    RAISE = "raise"


@dataclass(frozen=True)
class Decision:
    """The next step for a request, with the wait before it or the error to raise."""

    action: Action
    delay: float = 0.0
    error: SepaExportApiError | None = None


class RequestAttempts:
    """Decision state of one logical request across its attempts.

    :param policy: the retry policy.
    :param endpoint: the endpoint template, such as ``GET /sepa-export/{tenant}/jobs``.
    :param idempotent: whether repeating the request is harmless. The create request is
        not: after a reply that may have come too late, it raises
        :class:`SepaExportCreateOutcomeUnknownError` instead of repeating.
    :param resource_id: the site code, job id or file id, for messages.
    :param authenticated: whether the request carries a bearer token that a 401 may invalidate.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        endpoint: str,
        *,
        idempotent: bool,
        resource_id: str | None = None,
        authenticated: bool = True,
    ) -> None:
        self.policy = policy
        self.endpoint = endpoint
        self.idempotent = idempotent
        self.resource_id = resource_id
        self.authenticated = authenticated
        self.attempts = 0
        self.reauthenticated = False

    def start_attempt(self) -> None:
        """Count one more attempt; call before sending."""
        self.attempts += 1

    def after_transport_failure(self, failure: TransportFailure, description: str) -> Decision:
        """Decide after a request that got no complete response."""
        detail = f"{failure.value} ({truncate_body(description)})"
        if not self.idempotent and failure is not TransportFailure.CONNECT:
            return Decision(Action.RAISE, error=self._outcome_unknown(None, detail))
        delay = self.policy.delay(self.attempts)
        if delay is None:
            return Decision(Action.RAISE, error=self._server_error(None, detail))
        return Decision(Action.RETRY, delay=delay)

    def after_response(self, status: int, body: str, retry_after: str | None = None) -> Decision:
        """Decide after a response with the given status.

        :param body: the response body, only read for error statuses; it is truncated in messages.
        :param retry_after: the ``Retry-After`` header, if any.
        """
        if 200 <= status < 300:
            return Decision(Action.RETURN)

        if status == 401 and self.authenticated and not self.reauthenticated:
            self.reauthenticated = True
            return Decision(Action.REAUTHENTICATE)

        if status in RETRYABLE_STATUSES:
            if not self.idempotent and status != 429:
                # A 5xx from a gateway can hide a job the server created after all.
                return Decision(Action.RAISE, error=self._outcome_unknown(status, describe_error_body(body)))
            # Retry-After is honoured on every retryable status, because servers send it with 503 as well as 429.
            delay = self.policy.delay(self.attempts, parse_retry_after(retry_after))
            if delay is not None:
                return Decision(Action.RETRY, delay=delay)
            return Decision(
                Action.RAISE, error=self._server_error(status, self._retry_detail(status, body, retry_after))
            )

        return Decision(
            Action.RAISE, error=error_for_status(self.endpoint, status, body, self.attempts, self.resource_id)
        )

    def _retry_detail(self, status: int, body: str, retry_after: str | None) -> str:
        detail = describe_error_body(body)
        seconds = parse_retry_after(retry_after)
        if seconds is not None and seconds > self.policy.max_retry_after:
            detail += (
                f" The server asked to wait {seconds:.0f} s, longer than the {self.policy.max_retry_after:.0f} s limit."
            )
        return detail

    def _server_error(self, status: int | None, detail: str) -> SepaExportServerError:
        return SepaExportServerError(
            self.endpoint,
            status,
            detail,
            attempts=self.attempts,
            resource_id=self.resource_id,
            hint="The API is unavailable or rate-limited; the task can be retried later.",
        )

    def _outcome_unknown(self, status: int | None, detail: str) -> SepaExportCreateOutcomeUnknownError:
        return SepaExportCreateOutcomeUnknownError(
            self.endpoint,
            status,
            detail,
            attempts=self.attempts,
            resource_id=self.resource_id,
            hint="The job may have been created; look it up before creating another.",
        )


def prepare_next_attempt(
    attempts: RequestAttempts,
    decision: Decision,
    *,
    settings: endpoints.ConnectionSettings,
    log: Any,
    rejected_token: str | None = None,
) -> float | None:
    """Carry out a decision that did not return the response, before the next attempt.

    Both transports call this after every attempt that did not end in a 2xx response, so
    they log, forget tokens and raise in the same way.

    :param attempts: the request's attempt state, for the endpoint and the attempt count.
    :param decision: what :meth:`RequestAttempts.after_response` or
        :meth:`RequestAttempts.after_transport_failure` returned.
    :param settings: the connection settings whose cached token a 401 invalidates.
    :param log: the logger of the hook that sends the request (standard library or structlog).
    :param rejected_token: the token the attempt sent; a 401 removes the cached token only
        while it is still this one.
    :return: the wait in seconds before a retry, or ``None`` when the next attempt follows
        at once with a new token (after a 401).
    :raises SepaExportApiError: the decision's error when the decision is to raise.
    """
    if decision.action is Action.REAUTHENTICATE:
        log.warning("%s returned HTTP 401; fetching a new access token and repeating once.", attempts.endpoint)
        payloads.TOKEN_CACHE.discard(settings, value=rejected_token)
        return None
    if decision.action is Action.RETRY:
        log.warning(
            "%s failed on attempt %d of %d; retrying in %.1f s.",
            attempts.endpoint,
            attempts.attempts,
            attempts.policy.max_attempts,
            decision.delay,
        )
        return decision.delay
    if decision.error is None:
        raise ValueError(f"Decision {decision.action.value!r} has no next attempt and no error to raise.")
    raise decision.error


def describe_error_body(body: str) -> str:
    """Extract the message of an API error body, or a truncated copy of an unknown body."""
    text = body or ""
    try:
        payload = json.loads(text)
    except ValueError:
        return truncate_body(text) or "(empty body)"
    if not isinstance(payload, dict):
        return truncate_body(text)

    messages: list[str] = []
    fault = payload.get("fault")
    if isinstance(fault, dict) and isinstance(fault.get("faultstring"), str):
        messages.append(fault["faultstring"])
    if isinstance(payload.get("message"), str):
        messages.append(payload["message"])
    errors = (payload.get("_embedded") or {}).get("errors") if isinstance(payload.get("_embedded"), dict) else None
    if isinstance(errors, list):
        for error in errors:
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                messages.append(error["message"])
    details = payload.get("details")
    if isinstance(details, list):
        messages.extend(str(item) for item in details)
    if isinstance(payload.get("error"), str):
        messages.append(payload["error"])
    return truncate_body("; ".join(messages) if messages else text)


class _ErrorContext(TypedDict):
    """Keyword arguments that every exception built by :func:`error_for_status` gets."""

    attempts: int
    resource_id: str | None


def error_for_status(
    endpoint: str, status: int, body: str, attempts: int, resource_id: str | None
) -> SepaExportApiError:
    """Build the exception for a final non-2xx response."""
    detail = describe_error_body(body)
    kwargs: _ErrorContext = {"attempts": attempts, "resource_id": resource_id}
    if status == 401:
        if endpoint == endpoints.TOKEN_ENDPOINT:
            hint = "Check the client id (Login) and client secret (Password) of the connection."
        else:
            hint = "A freshly issued token was rejected too; check that the client belongs to the tenant."
        return SepaExportAuthError(endpoint, status, detail, hint=hint, **kwargs)
    if status == 403:
        scope = endpoints.REQUIRED_SCOPES.get(endpoint)
        hint = (
            f"The token lacks the scope {scope!r} or belongs to another tenant; grant the scope to the client "
            "and, if the connection sets the extra 'scope', include it there."
            if scope
            else "The client is not allowed to do this."
        )
        return SepaExportScopeError(endpoint, status, detail, hint=hint, **kwargs)
    if status == 400 and endpoint == endpoints.TOKEN_ENDPOINT:
        return SepaExportAuthError(
            endpoint, status, detail, hint="Check the extra 'scope' of the connection.", **kwargs
        )
    if status == 400:
        return SepaExportBadRequestError(endpoint, status, detail, **kwargs)
    if status == 404:
        return SepaExportNotFoundError(endpoint, status, detail, **kwargs)
    if status == 409:
        return SepaExportConflictError(endpoint, status, detail, **kwargs)
    return SepaExportApiError(endpoint, status, detail, **kwargs)
