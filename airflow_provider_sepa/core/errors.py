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
            message += f" {hint}"
        super().__init__(message)


class SepaExportAuthError(SepaExportApiError):
    """The token endpoint rejected the client credentials, or the API rejected a fresh token."""


class SepaExportScopeError(SepaExportApiError):
    """The API answered 403: the token lacks the scope the endpoint requires."""


class SepaExportBadRequestError(SepaExportApiError):
    """The API answered 400: the request is invalid and repeating it cannot help."""


class SepaExportNotFoundError(SepaExportApiError):
    """The API answered 404 for a file id or path."""


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
