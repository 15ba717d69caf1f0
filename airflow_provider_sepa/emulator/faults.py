"""Faults that the emulator can inject: the model, its validation and the string syntax.

A :class:`Fault` describes what goes wrong (its :class:`FaultKind`), at which endpoint
(``token``, ``list``, ``create``, ``download`` or ``any``) and how often:

* neither ``times`` nor ``every``: the next matching call only;
* ``times=N``: the next N matching calls;
* ``every=K``: every K-th matching call, without end, for a background error rate;
* both: every K-th matching call, N times in all.

:class:`~airflow_provider_sepa.emulator.fault_injector.FaultInjector` registers faults as
rules and decides which ones act on a call. :func:`parse_fault` reads the compact string
form (``create:lose-reply``, ``any:503:every=3``) that the command line and the admin
endpoint use.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Literal

FaultEndpoint = Literal["token", "list", "create", "download", "any"]

ENDPOINT_ANY = "any"
#: Endpoints that a request fault can match, without ``any``.
REQUEST_ENDPOINTS: tuple[str, ...] = ("token", "list", "create", "download")
ENDPOINTS: tuple[str, ...] = (*REQUEST_ENDPOINTS, ENDPOINT_ANY)

#: Status string of jobs that end with an unknown status, unless a rule names another one.
DEFAULT_UNKNOWN_STATUS = "WEIRD_STATE"
DEFAULT_FAILED_STATUS = "FAILED"
DEFAULT_RATE_LIMIT_RETRY_AFTER = 1

_STATUS_STRING = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FILTER_VALUE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class FaultKind(str, enum.Enum):
    """Effect of a fault. The value is the action name of the string syntax."""

    STATUS = "status"
    HTML_ERROR = "html"
    MALFORMED_JSON = "malformed-json"
    DROP = "drop"
    DROP_BODY = "drop-body"
    LOSE_REPLY = "lose-reply"
    DELAY = "delay"
    REVOKE_TOKENS = "revoke-tokens"
    EXPIRE_TOKENS = "expire-tokens"
    BOM = "bom"
    NO_CHARSET = "no-charset"
    TOKEN_LIFETIME = "lifetime"
    JOB_OUTCOME = "job"
    NEWER_JOBS = "newer-jobs"


class JobOutcome(str, enum.Enum):
    """End state of a job that a job fault picks, in place of ``COMPLETED`` with a file."""

    #: Status ``FAILED`` (or the rule's status string), no ``fileId``.
    FAILED = "failed"
    #: Status ``COMPLETED`` but no ``fileId``.
    COMPLETED_WITHOUT_FILE = "completed-no-file"
    #: An unknown status string (``WEIRD_STATE`` by default), inactive, with a ``fileId``.
    UNKNOWN_STATUS = "unknown"
    #: An unknown status string, inactive, without a ``fileId``.
    UNKNOWN_STATUS_WITHOUT_FILE = "unknown-no-file"


class DelayStage(str, enum.Enum):
    """Point of the request at which a delay fault waits."""

    #: Before the endpoint handles the request, so a created job appears only after the delay.
    REQUEST = "request"
    #: After the endpoint has handled the request, before the first byte of the reply.
    REPLY = "reply"


_ALL = frozenset(REQUEST_ENDPOINTS)
_JSON_ENDPOINTS = frozenset({"token", "list", "create"})
#: Endpoints at which each kind of fault can act.
APPLICABLE_ENDPOINTS: dict[FaultKind, frozenset[str]] = {
    FaultKind.STATUS: _ALL,
    FaultKind.HTML_ERROR: _ALL,
    FaultKind.MALFORMED_JSON: _JSON_ENDPOINTS,
    FaultKind.DROP: _ALL,
    FaultKind.DROP_BODY: _ALL,
    FaultKind.LOSE_REPLY: _ALL,
    FaultKind.DELAY: _ALL,
    FaultKind.REVOKE_TOKENS: _ALL,
    FaultKind.EXPIRE_TOKENS: _ALL,
    FaultKind.BOM: frozenset({"download"}),
    FaultKind.NO_CHARSET: frozenset({"download"}),
    FaultKind.TOKEN_LIFETIME: frozenset({"token"}),
    FaultKind.JOB_OUTCOME: frozenset({"create"}),
    FaultKind.NEWER_JOBS: frozenset({"create"}),
}
#: Kinds that decide the whole reply. At most one of them acts on a request.
TERMINAL_KINDS = frozenset(
    {
        FaultKind.STATUS,
        FaultKind.HTML_ERROR,
        FaultKind.MALFORMED_JSON,
        FaultKind.DROP,
        FaultKind.DROP_BODY,
        FaultKind.LOSE_REPLY,
    }
)
#: Kinds that act when the state issues a token or creates a job, not per HTTP request.
STATE_KINDS = frozenset({FaultKind.TOKEN_LIFETIME, FaultKind.JOB_OUTCOME, FaultKind.NEWER_JOBS})
# Endpoints whose requests carry a site code: list (query), create (body), download (the file's job).
_SITE_ENDPOINTS = frozenset({"list", "create", "download", ENDPOINT_ANY})


def _format_number(value: float) -> str:
    return format(value, "g")


@dataclass(frozen=True)
class Fault:
    """One fault and where and how often it acts. Construction validates every field.

    Only the parameters of the fault's kind may be set:

    * ``status``: ``status_code``, ``retry_after`` and ``body``, which replaces the
      default body and has no string form;
    * ``html``: ``status_code`` and ``retry_after``;
    * ``delay``: ``seconds`` and ``stage``;
    * ``lifetime``: ``seconds``;
    * ``drop-body``: ``after_bytes``;
    * ``job``: ``outcome`` and ``job_status``;
    * ``newer-jobs``: ``count``.

    ``site_code`` limits a fault to requests or jobs of one site, and ``file_id`` limits a
    download fault to one file.
    """

    endpoint: str
    kind: FaultKind
    status_code: int | None = None
    retry_after: int | None = None
    body: Any = field(default=None, compare=False)
    seconds: float | None = None
    stage: DelayStage = DelayStage.REQUEST
    after_bytes: int | None = None
    outcome: JobOutcome | None = None
    job_status: str | None = None
    count: int | None = None
    times: int | None = None
    every: int | None = None
    site_code: str | None = None
    file_id: str | None = None

    def __post_init__(self) -> None:
        """Convert string values of the enum fields and raise ValueError on invalid ones."""
        object.__setattr__(self, "kind", _enum_value(FaultKind, self.kind, "fault kind"))
        object.__setattr__(self, "stage", _enum_value(DelayStage, self.stage, "delay stage"))
        if self.outcome is not None:
            object.__setattr__(self, "outcome", _enum_value(JobOutcome, self.outcome, "job outcome"))
        self._validate_scope()
        self._validate_parameters()

    @property
    def limit(self) -> int | None:
        """Maximum number of times the fault acts, or None for no limit."""
        if self.times is not None:
            return self.times
        return None if self.every is not None else 1

    def applies_to(self, endpoint: str) -> bool:
        """Return whether the fault can act on a request to ``endpoint`` (one of REQUEST_ENDPOINTS)."""
        if endpoint not in APPLICABLE_ENDPOINTS[self.kind]:
            return False
        return self.endpoint in (ENDPOINT_ANY, endpoint)

    def spec(self) -> str:
        """Return the fault in the string syntax of :func:`parse_fault`.

        A custom ``body`` has no string form, so the result leaves it out.
        """
        parts = [self.endpoint, self._action()]
        if self.retry_after is not None:
            parts.append(f"retry-after={self.retry_after}")
        if self.kind is FaultKind.DELAY and self.stage is not DelayStage.REQUEST:
            parts.append(f"stage={self.stage.value}")
        if self.job_status is not None:
            parts.append(f"status={self.job_status}")
        if self.site_code is not None:
            parts.append(f"site={self.site_code}")
        if self.file_id is not None:
            parts.append(f"file={self.file_id}")
        if self.times is not None and not (self.times == 1 and self.every is None):
            parts.append(f"times={self.times}")
        if self.every is not None:
            parts.append(f"every={self.every}")
        return ":".join(parts)

    def _action(self) -> str:
        kind = self.kind
        if kind is FaultKind.STATUS:
            return str(self.status_code)
        if kind is FaultKind.HTML_ERROR:
            return f"html={self.status_code}"
        if kind in (FaultKind.DELAY, FaultKind.TOKEN_LIFETIME):
            return f"{kind.value}={_format_number(self.seconds or 0)}"
        if kind is FaultKind.DROP_BODY and self.after_bytes is not None:
            return f"{kind.value}={self.after_bytes}"
        if kind is FaultKind.JOB_OUTCOME:
            assert self.outcome is not None
            return f"{kind.value}={self.outcome.value}"
        if kind is FaultKind.NEWER_JOBS:
            return f"{kind.value}={self.count}"
        return str(kind.value)

    def _validate_scope(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"Invalid endpoint {self.endpoint!r}: use one of {', '.join(ENDPOINTS)}.")
        applicable = APPLICABLE_ENDPOINTS[self.kind]
        if self.endpoint != ENDPOINT_ANY and self.endpoint not in applicable:
            raise ValueError(
                f"Fault {self.kind.value!r} does not apply to the {self.endpoint} endpoint: "
                f"use {' or '.join(sorted(applicable))}."
            )
        for name, value in (("times", self.times), ("every", self.every)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"Invalid {name} {value!r}: expected an integer >= 1.")
        if self.site_code is not None:
            if self.endpoint not in _SITE_ENDPOINTS:
                raise ValueError(f"Invalid site filter on the {self.endpoint} endpoint: token requests have no site.")
            if not _FILTER_VALUE.fullmatch(self.site_code):
                raise ValueError(f"Invalid site code {self.site_code!r}: use letters, digits, '-', '_' or '.'.")
        if self.file_id is not None:
            if self.endpoint != "download":
                raise ValueError(f"Invalid file filter on the {self.endpoint} endpoint: use it with download.")
            if not _FILTER_VALUE.fullmatch(self.file_id):
                raise ValueError(f"Invalid file id {self.file_id!r}: use letters, digits, '-', '_' or '.'.")

    def _validate_parameters(self) -> None:
        kind = self.kind
        allowed = _PARAMETERS[kind]
        for name in ("status_code", "retry_after", "body", "seconds", "after_bytes", "outcome", "job_status", "count"):
            if getattr(self, name) is not None and name not in allowed:
                raise ValueError(f"Invalid parameter {name} for fault {kind.value!r}: it takes {_describe(allowed)}.")
        if kind is not FaultKind.DELAY and self.stage is not DelayStage.REQUEST:
            raise ValueError(f"Invalid parameter stage for fault {kind.value!r}: only delay takes a stage.")

        if kind in (FaultKind.STATUS, FaultKind.HTML_ERROR):
            code = self.status_code
            if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
                raise ValueError(f"Invalid status code {code!r}: expected an error status from 400 to 599.")
        if self.retry_after is not None and (
            isinstance(self.retry_after, bool) or not isinstance(self.retry_after, int) or self.retry_after < 0
        ):
            raise ValueError(f"Invalid retry_after {self.retry_after!r}: expected whole seconds >= 0.")
        if kind in (FaultKind.DELAY, FaultKind.TOKEN_LIFETIME):
            seconds = self.seconds
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
                raise ValueError(f"Invalid seconds {seconds!r} for fault {kind.value!r}: expected a number > 0.")
        if self.after_bytes is not None and (
            isinstance(self.after_bytes, bool) or not isinstance(self.after_bytes, int) or self.after_bytes < 0
        ):
            raise ValueError(f"Invalid after_bytes {self.after_bytes!r}: expected an integer >= 0.")
        if kind is FaultKind.JOB_OUTCOME:
            self._validate_job_outcome()
        if kind is FaultKind.NEWER_JOBS and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1
        ):
            raise ValueError(f"Invalid count {self.count!r} of newer jobs: expected an integer >= 1.")

    def _validate_job_outcome(self) -> None:
        if self.outcome is None:
            outcomes = ", ".join(outcome.value for outcome in JobOutcome)
            raise ValueError(f"Missing outcome for fault 'job': use one of {outcomes}.")
        if self.job_status is None:
            return
        if self.outcome is JobOutcome.COMPLETED_WITHOUT_FILE:
            raise ValueError("Invalid job_status for outcome 'completed-no-file': its status is always COMPLETED.")
        if not _STATUS_STRING.fullmatch(self.job_status):
            raise ValueError(f"Invalid job status {self.job_status!r}: use 1 to 64 letters, digits, '-' or '_'.")

    def effective_job_status(self) -> str:
        """Return the status string that a job picked by this ``job`` fault ends with."""
        if self.outcome is JobOutcome.COMPLETED_WITHOUT_FILE:
            return "COMPLETED"
        if self.job_status is not None:
            return self.job_status
        return DEFAULT_FAILED_STATUS if self.outcome is JobOutcome.FAILED else DEFAULT_UNKNOWN_STATUS


# Parameters that each kind accepts, besides the scope and schedule fields.
_PARAMETERS: dict[FaultKind, frozenset[str]] = {
    FaultKind.STATUS: frozenset({"status_code", "retry_after", "body"}),
    FaultKind.HTML_ERROR: frozenset({"status_code", "retry_after"}),
    FaultKind.MALFORMED_JSON: frozenset(),
    FaultKind.DROP: frozenset(),
    FaultKind.DROP_BODY: frozenset({"after_bytes"}),
    FaultKind.LOSE_REPLY: frozenset(),
    FaultKind.DELAY: frozenset({"seconds"}),
    FaultKind.REVOKE_TOKENS: frozenset(),
    FaultKind.EXPIRE_TOKENS: frozenset(),
    FaultKind.BOM: frozenset(),
    FaultKind.NO_CHARSET: frozenset(),
    FaultKind.TOKEN_LIFETIME: frozenset({"seconds"}),
    FaultKind.JOB_OUTCOME: frozenset({"outcome", "job_status"}),
    FaultKind.NEWER_JOBS: frozenset({"count"}),
}


def _describe(names: frozenset[str]) -> str:
    return ", ".join(sorted(names)) if names else "no parameters"


def _enum_value(enum_type: type[enum.Enum], value: Any, label: str) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(str(member.value) for member in enum_type)
        raise ValueError(f"Invalid {label} {value!r}: use one of {choices}.") from None


_INTEGER_TEXT = re.compile(r"[0-9]{1,9}")
_SECONDS_TEXT = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,6})?")
# Option names of the string syntax and the Fault fields they set.
_OPTION_FIELDS = {
    "times": "times",
    "every": "every",
    "site": "site_code",
    "file": "file_id",
    "retry-after": "retry_after",
    "stage": "stage",
    "status": "job_status",
}
_INTEGER_FIELDS = frozenset({"times", "every", "retry_after"})

#: Short description of the string syntax, for help texts and error messages.
FAULT_SYNTAX = "ENDPOINT:ACTION[:OPTION...], for example create:lose-reply or any:503:every=3"


def parse_fault(text: str) -> Fault:
    """Parse a fault written as ``ENDPOINT:ACTION[:OPTION...]``.

    ENDPOINT is ``token``, ``list``, ``create``, ``download`` or ``any``. ACTION is one of:

    * ``429``, ``500``, ``502``, ``503``, ``504`` or another status from 400 to 599;
    * ``html`` or ``html=CODE``: a gateway error page in text/html, 502 by default;
    * ``malformed-json``: the endpoint's reply with its JSON body cut in half;
    * ``drop``: close the connection without a response;
    * ``drop-body`` or ``drop-body=BYTES``: close the connection after part of the body;
    * ``lose-reply``: run the endpoint, then close the connection without its reply;
    * ``delay=SECONDS``: wait before the endpoint runs (or before the reply, with ``stage=reply``);
    * ``revoke-tokens`` or ``expire-tokens``: invalidate every token before the request;
    * ``bom`` or ``no-charset`` (download): add a UTF-8 BOM, or drop the charset from Content-Type;
    * ``lifetime=SECONDS`` (token): issue tokens with this lifetime;
    * ``job=OUTCOME`` (create): ``failed``, ``completed-no-file``, ``unknown`` or ``unknown-no-file``;
    * ``newer-jobs=COUNT`` (create): add COUNT finished jobs created after the new job.

    OPTION is ``N`` or ``times=N`` (act on the next N matching calls), ``every=K`` (every
    K-th matching call, without end unless ``times`` is given), ``site=CODE``,
    ``file=FILE_ID`` (download only), ``retry-after=SECONDS`` (status and html),
    ``stage=request|reply`` (delay) or ``status=STRING`` (job). A 429 without
    ``retry-after`` gets ``Retry-After: 1``.

    Raise ValueError with the reason when the text is not a valid fault.
    """
    try:
        return _parse_fault(text)
    except ValueError as error:
        reason = str(error)
        raise ValueError(f"Invalid fault {text!r}: {reason[:1].lower()}{reason[1:]}") from None


def _parse_fault(text: str) -> Fault:
    parts = text.strip().split(":")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"Expected {FAULT_SYNTAX}.")
    endpoint, action, *options = parts
    if endpoint not in ENDPOINTS:
        raise ValueError(f"Unknown endpoint {endpoint!r}: use one of {', '.join(ENDPOINTS)}.")

    kind, fields = _parse_action(action)
    for option in options:
        name, value = ("times", option) if option.isdigit() else _split_option(option)
        field_name = _OPTION_FIELDS.get(name)
        if field_name is None:
            raise ValueError(f"Unknown option {name!r}: use one of {', '.join(_OPTION_FIELDS)}.")
        if field_name in fields:
            raise ValueError(f"Option {name!r} is given twice.")
        fields[field_name] = _parse_integer(value, name) if field_name in _INTEGER_FIELDS else value

    if kind is FaultKind.STATUS and fields["status_code"] == 429:
        fields.setdefault("retry_after", DEFAULT_RATE_LIMIT_RETRY_AFTER)
    return Fault(endpoint, kind, **fields)


def _split_option(option: str) -> tuple[str, str]:
    name, separator, value = option.partition("=")
    if not separator or not value:
        raise ValueError(f"Invalid option {option!r}: expected NAME=VALUE or a count N.")
    return name, value


def _parse_action(action: str) -> tuple[FaultKind, dict[str, Any]]:
    name, separator, value = action.partition("=")
    if name.isdigit() and not separator:
        return FaultKind.STATUS, {"status_code": _parse_integer(name, "status code")}
    if name == FaultKind.STATUS.value:
        raise ValueError("Write a status fault as the code itself, for example list:503.")
    try:
        kind = FaultKind(name)
    except ValueError:
        names = ", ".join(kind.value for kind in FaultKind if kind is not FaultKind.STATUS)
        raise ValueError(f"Unknown action {name!r}: use a status code or one of {names}.") from None
    if separator and not value:
        raise ValueError(f"Missing value after {name}=.")

    required = {FaultKind.DELAY, FaultKind.TOKEN_LIFETIME, FaultKind.JOB_OUTCOME, FaultKind.NEWER_JOBS}
    optional = {FaultKind.HTML_ERROR, FaultKind.DROP_BODY}
    if kind in required and not separator:
        raise ValueError(f"Action {name!r} needs a value, for example {_ACTION_EXAMPLES[kind]}.")
    if separator and kind not in required | optional:
        raise ValueError(f"Action {name!r} takes no value.")

    if kind is FaultKind.HTML_ERROR:
        return kind, {"status_code": _parse_integer(value, "status code") if separator else 502}
    if kind is FaultKind.DROP_BODY:
        return kind, {"after_bytes": _parse_integer(value, "byte count")} if separator else {}
    if kind in (FaultKind.DELAY, FaultKind.TOKEN_LIFETIME):
        if not _SECONDS_TEXT.fullmatch(value):
            raise ValueError(f"Invalid seconds {value!r}: expected a number such as 30 or 2.5.")
        return kind, {"seconds": float(value)}
    if kind is FaultKind.JOB_OUTCOME:
        return kind, {"outcome": value}
    if kind is FaultKind.NEWER_JOBS:
        return kind, {"count": _parse_integer(value, "job count")}
    return kind, {}


_ACTION_EXAMPLES = {
    FaultKind.DELAY: "delay=30",
    FaultKind.TOKEN_LIFETIME: "lifetime=3",
    FaultKind.JOB_OUTCOME: "job=failed",
    FaultKind.NEWER_JOBS: "newer-jobs=20",
}


def _parse_integer(value: str, label: str) -> int:
    if not _INTEGER_TEXT.fullmatch(value):
        raise ValueError(f"Invalid {label} {value!r}: expected a whole number.")
    return int(value)
