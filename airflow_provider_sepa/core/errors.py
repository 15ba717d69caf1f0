"""Exception classes shared by the sync hook, the operators, the sensor and the trigger.

Every message names the endpoint, the HTTP status and the id involved where there is one.
No message ever contains a client secret or an access token: response bodies are cut to
:data:`MAX_BODY_CHARS` characters, and headers are never included.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException

#: Maximum number of characters of a response body quoted in an error message.
MAX_BODY_CHARS = 300


def truncate_body(text: str | None) -> str:
    """Shorten an error body for a message, collapsing whitespace."""
    if not text:
        return ""
    flat = " ".join(text.split())
    if len(flat) <= MAX_BODY_CHARS:
        return flat
    return flat[:MAX_BODY_CHARS] + f"... ({len(flat) - MAX_BODY_CHARS} more characters)"


def redact(text: str, *secrets: str | None) -> str:
    """Replace every occurrence of the given secrets in ``text`` with ``***``.

    :param text: a response body or message that may echo a secret.
    :param secrets: the client secret, access tokens and other values to hide; ``None`` and
        empty values are skipped.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class SepaExportError(AirflowException):
    """Base class of every error raised by this provider."""


class SepaExportConfigError(SepaExportError, ValueError):
    """Invalid connection settings or task arguments, detected before any request."""


class SepaExportInputError(SepaExportConfigError, AirflowFailException):
    """Invalid task argument; retrying the task with the same argument cannot help."""


class SepaExportApiError(SepaExportError):
    """An API request failed.

    :param endpoint: the endpoint, as ``METHOD /path`` without query string.
    :param status: the HTTP status of the last response, or ``None`` when no response came.
    :param attempts: how many times the request was sent.
    :param detail: what went wrong, already free of secrets.
    :param resource_id: the site code, job id or file id the request was about.
    """

    def __init__(
        self,
        endpoint: str,
        status: int | None,
        detail: str,
        *,
        attempts: int = 1,
        resource_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.status = status
        self.attempts = attempts
        self.resource_id = resource_id
        self.detail = detail
        status_text = f"HTTP {status}" if status is not None else "no response"
        parts = [f"{endpoint} failed with {status_text}"]
        if resource_id:
            parts.append(f"for {resource_id}")
        message = " ".join(parts) + f" after {attempts} attempt{'s' if attempts != 1 else ''}: {detail}"
        if hint:
            # The hint is a sentence of its own, so the detail before it needs its full stop.
            if not message.endswith((".", "!", "?")):
                message += "."
            message += f" {hint}"
        super().__init__(message)


class SepaExportAuthError(SepaExportApiError):
    """The token endpoint rejected the client credentials, or the API rejected a fresh token."""


class SepaExportScopeError(SepaExportApiError):
    """The API returned 403: the token lacks the scope the endpoint requires."""


class SepaExportBadRequestError(SepaExportApiError):
    """The API returned 400: the request is invalid and repeating it cannot help."""


class SepaExportNotFoundError(SepaExportApiError):
    """The API returned 404 for a file id or path."""


class SepaExportConflictError(SepaExportApiError):
    """The API answered 409: another export job of the tenant is in progress."""


class SepaExportServerError(SepaExportApiError):
    """The API kept failing with 429, 5xx or network errors until the retries ran out."""


class SepaExportResponseError(SepaExportApiError):
    """The API answered 2xx with a body that does not follow the contract."""


class SepaExportCreateOutcomeUnknownError(SepaExportApiError):
    """The create request may or may not have started a job (reply lost or 5xx).

    The caller must look the job up before it sends another create request.
    """


class SepaExportDownloadError(SepaExportApiError):
    """A file download ended early or could not be written; no file was left behind."""


class SepaExportJobFailedError(SepaExportError, AirflowFailException):
    """The export job ended without a usable file. Retrying the task cannot change that."""


class SepaExportJobNotFoundError(SepaExportError):
    """The job id is not in the job list of the site."""


class SepaExportTimeoutError(SepaExportError):
    """Waiting for an export job or for a free job slot took longer than the timeout."""


def restore_error(error_type: object, message: str) -> SepaExportError:
    """Rebuild an exception that a trigger reported by class name, keeping its message.

    The trigger runs in another process, so it reports an error as the class name and the
    message. A name that is not a subclass of :class:`SepaExportError` gives a plain
    :class:`SepaExportError` that names the original class, so a resumed task still fails.

    :param error_type: the class name from the event, such as ``"SepaExportServerError"``.
    :param message: the exception message from the event.
    """
    classes = {cls.__name__: cls for cls in _subclasses(SepaExportError)}
    cls = classes.get(error_type) if isinstance(error_type, str) else None
    if cls is None:
        return SepaExportError(f"The trigger failed with {error_type}: {message}")
    if issubclass(cls, SepaExportApiError):
        # The event carries only the finished message, so the fields that built it stay unknown.
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        error.endpoint = ""
        error.status = None
        error.attempts = 0
        error.resource_id = None
        error.detail = message
        return error
    return cls(message)


def _subclasses(base: type[SepaExportError]) -> list[type[SepaExportError]]:
    found = [base]
    for sub in base.__subclasses__():
        found.extend(_subclasses(sub))
    return found
