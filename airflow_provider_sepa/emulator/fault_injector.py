"""Fault rules: a thread-safe registry that decides which faults act on each call.

Request faults act on HTTP requests and are carried out by the server
(:mod:`airflow_provider_sepa.emulator.fault_http`). At most one *terminal* fault acts on a
request (a replaced response, a dropped connection, a lost or damaged reply): the first
matching rule in registration order. A later terminal rule does not see that request, so
its schedule does not advance. Delays, token revocation and file body changes combine
with any other fault. Token and job faults act when the state issues a token or creates
a job, also when a test calls the state directly.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_sepa.emulator.faults import (
    DEFAULT_RATE_LIMIT_RETRY_AFTER,
    STATE_KINDS,
    TERMINAL_KINDS,
    DelayStage,
    Fault,
    FaultEndpoint,
    FaultKind,
    JobOutcome,
    parse_fault,
)

log = logging.getLogger(__name__)

# Maximum sleep step of a delay, so that clear() and server shutdown end a delay promptly.
_DELAY_STEP_SECONDS = 0.05


class FaultRule:
    """A registered fault with its counters. :class:`FaultInjector` creates it."""

    def __init__(self, rule_id: int, fault: Fault, lock: threading.Lock) -> None:
        """Wrap ``fault`` under ``rule_id``. ``lock`` guards the counters."""
        self.id = rule_id
        self.fault = fault
        self._lock = lock
        self._seen = 0
        self._fired = 0

    @property
    def seen(self) -> int:
        """Number of matching calls counted towards ``every``."""
        with self._lock:
            return self._seen

    @property
    def fired(self) -> int:
        """Number of times the fault has acted."""
        with self._lock:
            return self._fired

    @property
    def exhausted(self) -> bool:
        """Whether the fault has acted as often as its ``times`` allows."""
        with self._lock:
            return self._exhausted_locked()

    def to_dict(self) -> dict[str, Any]:
        """Return the rule as JSON-ready data, as the admin endpoint lists it."""
        fault = self.fault
        with self._lock:
            seen, fired, exhausted = self._seen, self._fired, self._exhausted_locked()
        return {
            "id": self.id,
            "spec": fault.spec(),
            "endpoint": fault.endpoint,
            "kind": fault.kind.value,
            "times": fault.times,
            "every": fault.every,
            "site_code": fault.site_code,
            "file_id": fault.file_id,
            "seen": seen,
            "fired": fired,
            "exhausted": exhausted,
        }

    def __repr__(self) -> str:
        """Show the id, the spec and the fired count."""
        return f"FaultRule(id={self.id}, spec={self.fault.spec()!r}, fired={self._fired})"

    def _exhausted_locked(self) -> bool:
        limit = self.fault.limit
        return limit is not None and self._fired >= limit

    def _take_locked(self) -> bool:
        """Count one matching call and return whether the fault acts on it (caller holds the lock)."""
        if self._exhausted_locked():
            return False
        self._seen += 1
        if self._seen % (self.fault.every or 1) != 0:
            return False
        self._fired += 1
        return True


@dataclass
class RequestFaults:
    """Faults chosen for one HTTP request, in the form the server carries them out."""

    delay_before_seconds: float = 0.0
    delay_reply_seconds: float = 0.0
    revoke_tokens: bool = False
    expire_tokens: bool = False
    terminal: Fault | None = None
    bom: bool = False
    no_charset: bool = False
    specs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class JobFaults:
    """Faults chosen for one created job."""

    outcome: Fault | None = None
    newer_jobs: int = 0


#: Specs of the faults that acted on the request being handled. The server sets a fresh
#: list per request, and the state appends token and job faults to it for the request log.
FIRED_FAULTS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("fired_faults", default=None)


def _note_fired(spec: str) -> None:
    fired = FIRED_FAULTS.get()
    if fired is not None:
        fired.append(spec)


class FaultInjector:
    """Thread-safe set of fault rules, reachable as ``state.faults`` and ``server.faults``.

    The helper methods build a :class:`Fault`, register it and return its
    :class:`FaultRule`. Each takes the schedule (``times``, ``every``) as keyword
    arguments. Without either, the fault acts on the next matching call only.
    """

    def __init__(self) -> None:
        """Create an injector without rules."""
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_id = 1
        # Incremented by clear() and cancel_delays(), which ends every running delay.
        self._delay_generation = 0

    # Registration

    def add(self, fault: Fault | str) -> FaultRule:
        """Register a fault, given as a :class:`Fault` or in the syntax of :func:`parse_fault`."""
        return self.add_all([fault])[0]

    def add_all(self, faults: Iterable[Fault | str]) -> list[FaultRule]:
        """Register several faults, all or none: raise ValueError before adding any if one is invalid."""
        parsed = [parse_fault(item) if isinstance(item, str) else item for item in faults]
        for item in parsed:
            if not isinstance(item, Fault):
                raise TypeError(f"Invalid fault {item!r}: expected a Fault or a string.")
        with self._lock:
            rules = []
            for item in parsed:
                rules.append(FaultRule(self._next_id, item, self._lock))
                self._next_id += 1
            self._rules.extend(rules)
        for rule in rules:
            log.info("Added fault rule %d: %s", rule.id, rule.fault.spec())
        return rules

    def rules(self) -> list[FaultRule]:
        """Return the registered rules in registration order, exhausted ones included."""
        with self._lock:
            return list(self._rules)

    def remove(self, rule: FaultRule | int) -> bool:
        """Remove one rule by object or id and return whether it was registered."""
        rule_id = rule.id if isinstance(rule, FaultRule) else rule
        with self._lock:
            for index, registered in enumerate(self._rules):
                if registered.id == rule_id:
                    del self._rules[index]
                    return True
        return False

    def clear(self) -> int:
        """Remove every rule, end running delays and return how many rules there were."""
        with self._lock:
            removed = len(self._rules)
            self._rules.clear()
            self._delay_generation += 1
        if removed:
            log.info("Removed %d fault rules", removed)
        return removed

    def cancel_delays(self) -> None:
        """End every running delay early, for example when the server stops."""
        with self._lock:
            self._delay_generation += 1

    # Helpers that build and register one fault each

    def respond_with_status(
        self,
        endpoint: FaultEndpoint,
        status_code: int,
        *,
        retry_after: int | None = None,
        body: Any = None,
        times: int | None = None,
        every: int | None = None,
        site_code: str | None = None,
        file_id: str | None = None,
    ) -> FaultRule:
        """Respond with ``status_code`` instead of running the endpoint.

        The default body matches the status (see :mod:`~airflow_provider_sepa.emulator.fault_http`). A 429 gets
        ``Retry-After: 1`` unless ``retry_after`` sets another number of seconds.
        ``body`` replaces the default: bytes or str are sent as they are, anything else as JSON.
        """
        if status_code == 429 and retry_after is None:
            retry_after = DEFAULT_RATE_LIMIT_RETRY_AFTER
        return self.add(
            Fault(
                endpoint,
                FaultKind.STATUS,
                status_code=status_code,
                retry_after=retry_after,
                body=body,
                times=times,
                every=every,
                site_code=site_code,
                file_id=file_id,
            )
        )

    def respond_with_html_error(
        self,
        endpoint: FaultEndpoint,
        status_code: int = 502,
        *,
        retry_after: int | None = None,
        times: int | None = None,
        every: int | None = None,
        site_code: str | None = None,
        file_id: str | None = None,
    ) -> FaultRule:
        """Respond with a gateway error page in ``text/html`` instead of running the endpoint."""
        fault = Fault(
            endpoint,
            FaultKind.HTML_ERROR,
            status_code=status_code,
            retry_after=retry_after,
            times=times,
            every=every,
            site_code=site_code,
            file_id=file_id,
        )
        return self.add(fault)

    def send_malformed_json(
        self,
        endpoint: FaultEndpoint,
        *,
        times: int | None = None,
        every: int | None = None,
        site_code: str | None = None,
    ) -> FaultRule:
        """Run the endpoint, then send its status with the JSON body cut in half.

        Content-Length matches the cut body, so only the JSON is broken, not the HTTP
        framing. On ``create`` the job exists although the reply cannot be parsed.
        """
        return self.add(Fault(endpoint, FaultKind.MALFORMED_JSON, times=times, every=every, site_code=site_code))

    def drop_connection(
        self,
        endpoint: FaultEndpoint,
        *,
        times: int | None = None,
        every: int | None = None,
        site_code: str | None = None,
        file_id: str | None = None,
    ) -> FaultRule:
        """Close the connection without any HTTP response. The endpoint does not run."""
        fault = Fault(endpoint, FaultKind.DROP, times=times, every=every, site_code=site_code, file_id=file_id)
        return self.add(fault)

    def drop_during_body(
        self,
        endpoint: FaultEndpoint = "download",
        *,
        after_bytes: int | None = None,
        times: int | None = None,
        every: int | None = None,
        site_code: str | None = None,
        file_id: str | None = None,
    ) -> FaultRule:
        """Send the headers with the full Content-Length and part of the body, then close.

        ``after_bytes`` is how much of the body is sent, by default half of it. The server
        sends at least one byte less than Content-Length, so the body is always incomplete
        unless it is empty.
        """
        fault = Fault(
            endpoint,
            FaultKind.DROP_BODY,
            after_bytes=after_bytes,
            times=times,
            every=every,
            site_code=site_code,
            file_id=file_id,
        )
        return self.add(fault)

    def lose_reply(
        self,
        endpoint: FaultEndpoint = "create",
        *,
        times: int | None = None,
        every: int | None = None,
        site_code: str | None = None,
    ) -> FaultRule:
        """Run the endpoint, discard its reply and close the connection.

        On ``create`` the job is really created while the client sees only a closed connection.
        """
        return self.add(Fault(endpoint, FaultKind.LOSE_REPLY, times=times, every=every, site_code=site_code))

    def delay(
        self,
        endpoint: FaultEndpoint,
        seconds: float,
        *,
        stage: DelayStage | str = DelayStage.REQUEST,
        times: int | None = None,
        every: int | None = None,
        site_code: str | None = None,
        file_id: str | None = None,
    ) -> FaultRule:
        """Wait ``seconds`` of real time, without blocking other requests, then go on.

        With ``stage="request"`` the wait comes before the endpoint runs, with
        ``stage="reply"`` after it ran and before the reply is sent. The endpoint runs
        even when the client has given up in the meantime, as a real server would.
        """
        fault = Fault(
            endpoint,
            FaultKind.DELAY,
            seconds=seconds,
            stage=DelayStage(stage),
            times=times,
            every=every,
            site_code=site_code,
            file_id=file_id,
        )
        return self.add(fault)

    def revoke_tokens_before(
        self,
        endpoint: FaultEndpoint,
        *,
        times: int | None = None,
        every: int | None = None,
        site_code: str | None = None,
    ) -> FaultRule:
        """Revoke every token just before a matching request, so that it gets 401 Invalid access token."""
        return self.add(Fault(endpoint, FaultKind.REVOKE_TOKENS, times=times, every=every, site_code=site_code))

    def expire_tokens_before(
        self,
        endpoint: FaultEndpoint,
        *,
        times: int | None = None,
        every: int | None = None,
        site_code: str | None = None,
    ) -> FaultRule:
        """Expire every token just before a matching request, so that it gets 401 Access Token expired."""
        return self.add(Fault(endpoint, FaultKind.EXPIRE_TOKENS, times=times, every=every, site_code=site_code))

    def add_utf8_bom(
        self, *, times: int | None = None, every: int | None = None, file_id: str | None = None
    ) -> FaultRule:
        """Prefix downloaded files with a UTF-8 byte order mark, so Content-Length grows by 3."""
        return self.add(Fault("download", FaultKind.BOM, times=times, every=every, file_id=file_id))

    def drop_charset(
        self, *, times: int | None = None, every: int | None = None, file_id: str | None = None
    ) -> FaultRule:
        """Send downloaded files with ``Content-Type: text/plain`` and no charset parameter."""
        return self.add(Fault("download", FaultKind.NO_CHARSET, times=times, every=every, file_id=file_id))

    def shorten_token_lifetime(
        self, seconds: float, *, times: int | None = None, every: int | None = None
    ) -> FaultRule:
        """Issue tokens that expire after ``seconds``.

        ``expires_in`` reports the lifetime rounded down to whole seconds.
        """
        return self.add(Fault("token", FaultKind.TOKEN_LIFETIME, seconds=seconds, times=times, every=every))

    def end_jobs_with(
        self,
        outcome: JobOutcome | str,
        *,
        status: str | None = None,
        times: int | None = None,
        every: int | None = None,
        site_code: str | None = None,
    ) -> FaultRule:
        """Make the next created jobs end with ``outcome`` instead of ``COMPLETED`` with a file.

        ``status`` sets the status string for ``failed`` and the unknown-status outcomes.
        The job still runs for the configured duration before it ends.
        """
        fault = Fault(
            "create",
            FaultKind.JOB_OUTCOME,
            outcome=JobOutcome(outcome),
            job_status=status,
            times=times,
            every=every,
            site_code=site_code,
        )
        return self.add(fault)

    def add_newer_jobs(
        self,
        count: int,
        *,
        times: int | None = None,
        every: int | None = None,
        site_code: str | None = None,
    ) -> FaultRule:
        """After a matching job is created, add ``count`` finished jobs of its site created after it.

        With ``count`` >= the page size, the job is no longer on the first page of the
        list endpoint (``sort=DESC``). :meth:`EmulatorState.insert_newer_jobs` does the same
        for an existing job.
        """
        fault = Fault("create", FaultKind.NEWER_JOBS, count=count, times=times, every=every, site_code=site_code)
        return self.add(fault)

    # Matching, used by the server and the state

    def has_rules(self) -> bool:
        """Return whether any rule is registered, so that callers can skip matching."""
        with self._lock:
            return bool(self._rules)

    def take_request_faults(self, endpoint: str, site_code: str | None, file_id: str | None) -> RequestFaults:
        """Choose the faults for one request to ``endpoint`` and advance the rules' schedules.

        ``endpoint`` is one of REQUEST_ENDPOINTS. The specs of the chosen faults are added
        to the request's FIRED_FAULTS list.
        """
        chosen = RequestFaults()
        with self._lock:
            for rule in self._rules:
                fault = rule.fault
                if fault.kind in STATE_KINDS or not fault.applies_to(endpoint):
                    continue
                if not _filters_match(fault, site_code, file_id):
                    continue
                if fault.kind in TERMINAL_KINDS and chosen.terminal is not None:
                    continue
                if not rule._take_locked():
                    continue
                _apply(chosen, fault)
                chosen.specs.append(fault.spec())
        for spec in chosen.specs:
            _note_fired(spec)
        return chosen

    def take_token_lifetime(self) -> float | None:
        """Return the lifetime in seconds for a token being issued, or None for the default."""
        with self._lock:
            for rule in self._rules:
                if rule.fault.kind is FaultKind.TOKEN_LIFETIME and rule._take_locked():
                    fault = rule.fault
                    break
            else:
                return None
        _note_fired(fault.spec())
        return fault.seconds

    def take_job_faults(self, site_code: str) -> JobFaults:
        """Choose the outcome fault and the number of newer jobs for a job being created."""
        outcome: Fault | None = None
        newer_jobs = 0
        specs: list[str] = []
        with self._lock:
            for rule in self._rules:
                fault = rule.fault
                if fault.kind not in (FaultKind.JOB_OUTCOME, FaultKind.NEWER_JOBS):
                    continue
                if fault.site_code is not None and fault.site_code != site_code:
                    continue
                if fault.kind is FaultKind.JOB_OUTCOME and outcome is not None:
                    continue
                if not rule._take_locked():
                    continue
                if fault.kind is FaultKind.JOB_OUTCOME:
                    outcome = fault
                else:
                    newer_jobs += fault.count or 0
                specs.append(fault.spec())
        for spec in specs:
            _note_fired(spec)
        return JobFaults(outcome=outcome, newer_jobs=newer_jobs)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of real time on the event loop. clear() and cancel_delays() end the wait early."""
        with self._lock:
            generation = self._delay_generation
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with self._lock:
                if self._delay_generation != generation:
                    return
            await asyncio.sleep(min(remaining, _DELAY_STEP_SECONDS))


def _filters_match(fault: Fault, site_code: str | None, file_id: str | None) -> bool:
    if fault.site_code is not None and fault.site_code != site_code:
        return False
    return fault.file_id is None or fault.file_id == file_id


def _apply(chosen: RequestFaults, fault: Fault) -> None:
    kind = fault.kind
    if kind in TERMINAL_KINDS:
        chosen.terminal = fault
    elif kind is FaultKind.DELAY:
        if fault.stage is DelayStage.REPLY:
            chosen.delay_reply_seconds += fault.seconds or 0.0
        else:
            chosen.delay_before_seconds += fault.seconds or 0.0
    elif kind is FaultKind.REVOKE_TOKENS:
        chosen.revoke_tokens = True
    elif kind is FaultKind.EXPIRE_TOKENS:
        chosen.expire_tokens = True
    elif kind is FaultKind.BOM:
        chosen.bom = True
    elif kind is FaultKind.NO_CHARSET:
        chosen.no_charset = True
