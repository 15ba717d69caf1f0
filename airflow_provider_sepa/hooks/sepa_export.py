"""Hooks for the Emporix SEPA Export API: the sync hook on ``requests`` and the async hook on ``httpx``."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol

from airflow.sdk import BaseHook

from airflow_provider_sepa.core import endpoints, payloads
from airflow_provider_sepa.core.errors import (
    SepaExportCreateOutcomeUnknownError,
    SepaExportDownloadError,
    SepaExportError,
    SepaExportResponseError,
    redact,
)
from airflow_provider_sepa.core.files import LOCAL_SCHEMES, DownloadedFile, check_destination, default_file_name
from airflow_provider_sepa.core.jobs import ExportJob
from airflow_provider_sepa.core.retry import (
    Action,
    RequestAttempts,
    RetryPolicy,
    TransportFailure,
    prepare_next_attempt,
)
from airflow_provider_sepa.core.staging import StagedFileWriter

if TYPE_CHECKING:
    import ssl

    import httpx
    import requests
    from airflow.sdk import ObjectStoragePath

#: Size of the chunks in which a compressed download is read, and in which a file already
#: on disk is read back for its SHA-256, in bytes. An uncompressed download is read
#: straight into the blocks of :class:`~airflow_provider_sepa.core.staging.StagedFileWriter`.
DOWNLOAD_CHUNK_SIZE = 64 * 1024


class _BufferedResponse(Protocol):
    """The members of a ``requests`` or ``httpx`` response with its body in memory that both hooks read."""

    @property
    def status_code(self) -> int: ...

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def _mask_secret(value: str) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret(value)


class SepaExportHook(BaseHook):
    """Talk to the Emporix SEPA Export API: tokens, export jobs and file downloads.

    The connection (type ``emporix``) contains the API host, the OAuth client id as login,
    the client secret as password and the tenant in the extra field ``tenant``.

    :param emporix_conn_id: id of the Airflow connection.
    :param connect_timeout: seconds to wait for a TCP connection.
    :param read_timeout: seconds to wait for the server between two reads.
    :param retry_policy: backoff for idempotent requests; the default sends each request at
        most five times.
    """

    conn_name_attr = "emporix_conn_id"
    default_conn_name = endpoints.DEFAULT_CONN_ID
    conn_type = endpoints.CONN_TYPE
    hook_name = "Emporix SEPA Export"

    def __init__(
        self,
        emporix_conn_id: str = endpoints.DEFAULT_CONN_ID,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        self.emporix_conn_id = emporix_conn_id
        self.timeout = (connect_timeout, read_timeout)
        self.retry_policy = retry_policy or RetryPolicy()
        self._sleep = sleep

    # -- connection form -------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel and hide the standard connection form fields (Airflow 3.0 and 3.1)."""
        from airflow_provider_sepa.get_provider_info import UI_FIELD_BEHAVIOUR

        return {key.replace("-", "_"): value for key, value in UI_FIELD_BEHAVIOUR.items()}

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Add the tenant and scope fields to the connection form (Airflow 3.0 and 3.1)."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import StringField

        from airflow_provider_sepa.get_provider_info import CONNECTION_FIELDS

        return {
            name: StringField(
                lazy_gettext(field["label"]), widget=BS3TextFieldWidget(), description=field["description"]
            )
            for name, field in CONNECTION_FIELDS.items()
        }

    # -- settings and session ----------------------------------------------------------

    @cached_property
    def settings(self) -> endpoints.ConnectionSettings:
        """The validated connection settings; raises before any request when they are invalid."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.emporix_conn_id)
        except AirflowNotFoundException:
            raise endpoints.missing_connection_error(self.emporix_conn_id) from None
        settings = endpoints.ConnectionSettings.from_connection(self.emporix_conn_id, conn)
        _mask_secret(settings.client_secret)
        return settings

    @cached_property
    def session(self) -> requests.Session:
        """The HTTP session; one connection pool per hook instance."""
        import requests

        session = requests.Session()
        session.headers["User-Agent"] = "airflow-provider-sepa"
        return session

    def close(self) -> None:
        """Close the HTTP session."""
        if "session" in self.__dict__:
            self.session.close()
            del self.__dict__["session"]

    # -- requests ---------------------------------------------------------------------

    def get_token(self) -> str:
        """Return a valid access token, fetching a new one when the cached one is close to expiry."""
        settings = self.settings
        cached = payloads.TOKEN_CACHE.get(settings)
        if cached is not None:
            return cached.value
        return self._fetch_token().value

    def _fetch_token(self) -> payloads.AccessToken:
        settings = self.settings
        response = self._send(
            "POST",
            settings.token_url,
            endpoints.TOKEN_ENDPOINT,
            idempotent=True,
            authenticated=False,
            resource_id=f"client {settings.client_id}",
            data=settings.token_form(),
        )
        payload = self._json(
            response, endpoints.TOKEN_ENDPOINT, resource_id=f"client {settings.client_id}", quote_body=False
        )
        token = payloads.parse_token_response(payload)
        _mask_secret(token.value)
        payloads.TOKEN_CACHE.put(settings, token)
        self.log.info("Fetched an access token for client %s, valid for %d s.", settings.client_id, token.lifetime)
        return token

    def _send(
        self,
        method: str,
        url: str,
        endpoint: str,
        *,
        idempotent: bool,
        resource_id: str | None = None,
        authenticated: bool = True,
        stream: bool = False,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send a request under the shared retry rules and return the 2xx response."""
        import requests

        attempts = RequestAttempts(
            self.retry_policy, endpoint, idempotent=idempotent, resource_id=resource_id, authenticated=authenticated
        )
        while True:
            attempts.start_attempt()
            token = self.get_token() if authenticated else None
            request_headers = dict(headers or {})
            if token:
                request_headers["Authorization"] = f"Bearer {token}"
            try:
                response = self.session.request(
                    method,
                    url,
                    headers=request_headers,
                    timeout=self.timeout,
                    stream=stream,
                    allow_redirects=False,
                    **kwargs,
                )
            except requests.exceptions.ConnectTimeout as error:
                decision = attempts.after_transport_failure(TransportFailure.CONNECT, type(error).__name__)
            except requests.exceptions.ReadTimeout as error:
                decision = attempts.after_transport_failure(TransportFailure.READ_TIMEOUT, type(error).__name__)
            except requests.exceptions.ConnectionError as error:
                decision = attempts.after_transport_failure(_classify_connection_error(error), type(error).__name__)
            except requests.exceptions.ChunkedEncodingError as error:
                # Raised when the body of a non-streamed response breaks off while requests reads it.
                decision = attempts.after_transport_failure(TransportFailure.DISCONNECTED, type(error).__name__)
            else:
                body = "" if response.ok else _read_error_body(response, stream)
                # A gateway may echo the request in its error page, and the body goes into the exception.
                body = redact(body, self.settings.client_secret, token)
                decision = attempts.after_response(response.status_code, body, response.headers.get("Retry-After"))
                if decision.action is Action.RETURN:
                    return response
                response.close()

            delay = prepare_next_attempt(attempts, decision, settings=self.settings, log=self.log, rejected_token=token)
            if delay is not None:
                self._sleep(delay)

    @staticmethod
    def _json(response: _BufferedResponse, endpoint: str, resource_id: str, *, quote_body: bool = True) -> Any:
        """Decode a JSON body. With ``quote_body=False`` the error leaves out the body, which may contain a token."""
        try:
            return response.json()
        except ValueError:
            body = response.text if quote_body else None
            raise payloads.not_json_error(endpoint, response.status_code, resource_id, body) from None

    # -- jobs -------------------------------------------------------------------------

    def create_job(self, site_code: str) -> str:
        """Start an export job for a site and return its job id.

        The request is never repeated after a reply that may have been lost: then
        :class:`~airflow_provider_sepa.core.errors.SepaExportCreateOutcomeUnknownError`
        is raised and the caller must look the job up before creating another.

        :raises SepaExportConflictError: when another job of the tenant is in progress (HTTP 409).
        """
        site_code = endpoints.validate_site_code(site_code)
        response = self._send(
            "POST",
            self.settings.jobs_url(),
            endpoints.CREATE_ENDPOINT,
            idempotent=False,
            resource_id=f"site {site_code}",
            json={"siteCode": site_code},
        )
        try:
            payload = self._json(response, endpoints.CREATE_ENDPOINT, resource_id=f"site {site_code}")
            job_id = payloads.parse_created_job_id(payload, site_code)
        except SepaExportResponseError as error:
            # The server accepted the request, so a job may exist although its id is unreadable.
            raise SepaExportCreateOutcomeUnknownError(
                endpoints.CREATE_ENDPOINT,
                response.status_code,
                error.detail,
                resource_id=f"site {site_code}",
                hint="The job may have been created; look it up before creating another.",
            ) from None
        self.log.info("Created export job %s for site %s.", job_id, site_code)
        return job_id

    def list_jobs(
        self, site_code: str, page_number: int = 1, page_size: int = 16, sort: str = "DESC"
    ) -> list[ExportJob]:
        """Return one page of the site's export jobs, newest first unless ``sort="ASC"``."""
        params = endpoints.list_params(site_code, page_number, page_size, sort)
        response = self._send(
            "GET",
            self.settings.jobs_url(),
            endpoints.LIST_ENDPOINT,
            idempotent=True,
            resource_id=f"site {site_code}",
            params=params,
        )
        payload = self._json(response, endpoints.LIST_ENDPOINT, resource_id=f"site {site_code}")
        return payloads.parse_job_list(payload, site_code)

    def iter_jobs(self, site_code: str, page_size: int = 50, max_pages: int = 200) -> Iterator[ExportJob]:
        """Yield the site's jobs newest first, following pages until the list ends.

        Each job is yielded once, even when a page repeats jobs of an earlier one: a job
        created during the walk shifts the newest-first list, and a server that ignores
        ``pageNumber`` returns the first page again.
        """
        walk = payloads.PageWalk(page_size=page_size, max_pages=max_pages)
        seen: set[str] = set()
        while True:
            page = self.list_jobs(site_code, page_number=walk.page_number, page_size=page_size)
            for job in page:
                if job.job_id not in seen:
                    seen.add(job.job_id)
                    yield job
            if not walk.next_page(page):
                return

    def get_job(self, site_code: str, job_id: str, page_size: int = 50) -> ExportJob:
        """Return one job of a site, following pages of the job list until it appears.

        :raises SepaExportJobNotFoundError: when no page lists the job.
        """
        job_id = endpoints.validate_job_id(job_id)
        for job in self.iter_jobs(site_code, page_size=page_size):
            if job.job_id == job_id:
                return job
        raise payloads.job_not_found_error(job_id, site_code, self.settings.tenant)

    def find_jobs_created_since(self, site_code: str, since: datetime) -> list[ExportJob]:
        """Return the site's jobs created at or after ``since``, newest first.

        A naive ``since`` is read as UTC, like a timestamp without zone from the API.
        """
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        found = []
        for job in self.iter_jobs(site_code):
            if job.created_at is not None and job.created_at < since:
                break
            if job.created_at is not None:
                found.append(job)
        return found

    # -- files ------------------------------------------------------------------------

    def download_file(self, file_id: str, destination: str | os.PathLike[str] | ObjectStoragePath) -> DownloadedFile:
        """Stream a SEPA file to a local path or an object-storage path.

        The body is written as bytes and never decoded as text; only an HTTP content
        encoding such as gzip is undone. A destination string ending with ``/`` is a folder
        that receives ``<file id>.xml``. The file appears at the destination only when the
        whole body has arrived. After a failure nothing is left there, unless only the sync
        of the folder failed after publishing, and then the error message names the file.
        An existing file with different content is never overwritten.

        :raises SepaExportDownloadError: when the body stays incomplete after the retries, a
            compressed body is invalid twice or has an encoding other than gzip or deflate,
            the disk fails, or the destination already contains a different file.
        """
        file_id = endpoints.validate_file_id(file_id)
        url = self.settings.file_url(file_id)
        target = _as_storage_path(destination, file_id)

        local_path = _local_path_of(target)
        staging_dir = os.path.dirname(local_path) if local_path else None
        if staging_dir:
            os.makedirs(staging_dir, exist_ok=True)

        staged, size, digest = self._download_to_temp(url, file_id, staging_dir)
        try:
            if local_path:
                final = _publish_local(staged, local_path, digest, file_id, self.log)
            else:
                final = _publish_storage(staged, target, digest, file_id)
        finally:
            if os.path.exists(staged):
                os.unlink(staged)

        self.log.info("Downloaded file %s to %s: %d bytes, sha256 %s.", file_id, final, size, digest)
        return DownloadedFile(path=final, size_bytes=size, sha256=digest, file_id=file_id)

    def _download_to_temp(self, url: str, file_id: str, staging_dir: str | None) -> tuple[str, int, str]:
        """Download into a temporary file, restarting from byte 0 after a broken body.

        A compressed body that is invalid gets one more download, because a proxy may have
        damaged it, and fails the second time without using up the retries.
        """
        import requests

        from airflow_provider_sepa.core.content_encoding import ACCEPT_ENCODING, BodyDecodingError

        resource_id = f"file {file_id}"
        attempts = RequestAttempts(
            self.retry_policy, endpoints.DOWNLOAD_ENDPOINT, idempotent=True, resource_id=resource_id
        )
        invalid_bodies = 0
        while True:
            response = self._send(
                "GET",
                url,
                endpoints.DOWNLOAD_ENDPOINT,
                idempotent=True,
                resource_id=resource_id,
                stream=True,
                headers={"Accept-Encoding": ACCEPT_ENCODING},
            )
            attempts.start_attempt()
            try:
                return _stage_body(response, staging_dir, file_id, attempts.attempts)
            except BodyDecodingError as error:
                invalid_bodies += 1
                if invalid_bodies > 1:
                    raise SepaExportDownloadError(
                        endpoints.DOWNLOAD_ENDPOINT,
                        200,
                        str(error),
                        attempts=attempts.attempts,
                        resource_id=resource_id,
                        hint="The body was invalid on two downloads, so a further one would not help. "
                        "No file was written.",
                    ) from error
                failure, reason = TransportFailure.INVALID_BODY, str(error)
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as error:
                failure, reason = TransportFailure.DISCONNECTED, str(error)
            except requests.exceptions.Timeout as error:
                failure, reason = TransportFailure.READ_TIMEOUT, type(error).__name__

            decision = attempts.after_transport_failure(failure, reason)
            if decision.action is Action.RETRY:
                self.log.warning(
                    "Download of file %s failed on attempt %d: %s (%s). Restarting from the first byte in %.1f s.",
                    file_id,
                    attempts.attempts,
                    failure.value,
                    reason,
                    decision.delay,
                )
                self._sleep(decision.delay)
                continue
            assert decision.error is not None
            raise SepaExportDownloadError(
                endpoints.DOWNLOAD_ENDPOINT,
                200 if failure is TransportFailure.INVALID_BODY else None,
                decision.error.detail,
                attempts=attempts.attempts,
                resource_id=resource_id,
                hint="No file was written; the task can be retried.",
            )

    # -- connection test ----------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """Fetch a token and list one job, as the Airflow UI's Test button does."""
        try:
            payloads.TOKEN_CACHE.discard(self.settings)
            self.get_token()
            self.list_jobs("main", page_number=1, page_size=1)
        except SepaExportError as error:
            return False, str(error)
        return True, f"Fetched a token and listed jobs of tenant {self.settings.tenant!r}."


def _stage_body(
    response: requests.Response, staging_dir: str | None, file_id: str, attempt: int
) -> tuple[str, int, str]:
    """Write one response's body into a new staged file and return its path, size and SHA-256.

    The staged file is removed again after any error.

    :raises requests.exceptions.RequestException: when the body breaks off or times out.
    :raises BodyDecodingError: when a compressed body is invalid or incomplete.
    :raises SepaExportDownloadError: for a disk error or a Content-Encoding the hook cannot decode.
    """
    import requests

    from airflow_provider_sepa.core.content_encoding import UnsupportedEncodingError

    try:
        handle, staged = tempfile.mkstemp(prefix=".sepa-", suffix=".part", dir=staging_dir)
    except OSError as error:
        response.close()
        raise _staging_error(error, staging_dir, file_id, attempt) from error
    try:
        # Leaving the block stops the writer thread before the file is closed.
        with (
            response,
            os.fdopen(handle, "wb", buffering=0) as staged_file,
            StagedFileWriter(staged_file.fileno()) as writer,
        ):
            digest = _copy_body(response, writer)
            writer.finish()
        return staged, writer.size, digest
    except UnsupportedEncodingError as error:
        os.unlink(staged)
        raise SepaExportDownloadError(
            endpoints.DOWNLOAD_ENDPOINT,
            200,
            str(error),
            attempts=attempt,
            resource_id=f"file {file_id}",
            hint="No file was written.",
        ) from error
    except requests.exceptions.RequestException:
        # Also OSErrors, but of the network, not of the disk.
        os.unlink(staged)
        raise
    except OSError as error:
        os.unlink(staged)
        raise _staging_error(error, staging_dir, file_id, attempt) from error
    except BaseException:
        os.unlink(staged)
        raise


def _staging_error(error: OSError, staging_dir: str | None, file_id: str, attempt: int) -> SepaExportDownloadError:
    """Return the error for a staged file that could not be created or written, naming its folder."""
    folder = staging_dir or tempfile.gettempdir()
    return SepaExportDownloadError(
        endpoints.DOWNLOAD_ENDPOINT,
        200,
        f"writing the download to a staged file in {folder} failed: {error.strerror or error}",
        attempts=attempt,
        resource_id=f"file {file_id}",
        hint="No file was written. Free disk space or fix the folder's permissions, then retry the task.",
    )


def _classify_connection_error(error: Exception) -> TransportFailure:
    """Tell a refused connection (request never sent) from one dropped after sending."""
    import urllib3.exceptions

    reason: Any = error.args[0] if error.args else None
    reason = getattr(reason, "reason", reason)
    if isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.NameResolutionError)):
        return TransportFailure.CONNECT
    return TransportFailure.DISCONNECTED


def _read_error_body(response: requests.Response, streamed: bool, limit: int = 4096) -> str:
    """Return at most ``limit`` bytes of an error body as text, without reading a large body whole."""
    if not streamed:
        return _buffered_error_body(response, limit)
    try:
        raw = response.raw.read(limit, decode_content=True)
    except Exception:  # noqa: BLE001 - an unreadable error body must not hide the status
        return ""
    return (raw or b"").decode("utf-8", errors="replace")


def _buffered_error_body(response: _BufferedResponse, limit: int = 4096) -> str:
    """Return at most ``limit`` bytes of a body that is already in memory, as text."""
    return response.content[:limit].decode("utf-8", errors="replace")


def _copy_body(response: requests.Response, writer: StagedFileWriter) -> str:
    """Write the decoded body through ``writer`` and return its SHA-256.

    A compressed body is decoded here, not by urllib3, so that a body that ends inside its
    compressed stream is an error. Content-Length counts the bytes on the wire, before
    decoding, and is checked before the end of a compressed stream is: a connection that
    closed early is a broken connection, not an invalid body.

    :raises requests.exceptions.ChunkedEncodingError: when fewer or more bytes arrived than
        Content-Length announced.
    :raises UnsupportedEncodingError: for a Content-Encoding other than gzip or deflate.
    :raises BodyDecodingError: for a compressed body that is invalid or incomplete.
    """
    from airflow_provider_sepa.core.content_encoding import parse_content_encoding

    encoding = parse_content_encoding(response.headers.get("Content-Encoding"))
    read_into = _body_reader(response)
    expected = _content_length(response)
    if encoding is not None:
        return _copy_encoded_body(read_into, encoding, writer, expected)

    # Without an encoding the body goes straight into the writer's blocks.
    digest = hashlib.sha256()
    while True:
        space = writer.space()
        count = read_into(space)
        if not count:
            _check_length(writer.size, expected)
            return digest.hexdigest()
        digest.update(space[:count])
        writer.commit(count)


def _copy_encoded_body(
    read_into: Callable[[memoryview], int], encoding: str, writer: StagedFileWriter, expected: int | None
) -> str:
    from airflow_provider_sepa.core.content_encoding import BodyDecoder

    digest = hashlib.sha256()
    decoder = BodyDecoder(encoding)
    buffer = memoryview(bytearray(DOWNLOAD_CHUNK_SIZE))
    received = 0
    while count := read_into(buffer):
        received += count
        for piece in decoder.decode(buffer[:count]):
            digest.update(piece)
            writer.write(piece)
    _check_length(received, expected)
    decoder.finish()
    return digest.hexdigest()


def _content_length(response: requests.Response) -> int | None:
    """Return the Content-Length header as a number, or ``None`` when it is missing or not a number."""
    value = response.headers.get("Content-Length", "").strip()
    # isascii(): str.isdigit() also accepts digits such as '²' that int() rejects.
    return int(value) if value.isascii() and value.isdigit() else None


def _check_length(received: int, expected: int | None) -> None:
    import requests

    if expected is not None and received != expected:
        # http.client's readinto() returns 0, not IncompleteRead, when the server closes early.
        raise requests.exceptions.ChunkedEncodingError(f"got {received} of {expected} bytes")


def _body_reader(response: requests.Response) -> Callable[[memoryview], int]:
    """Return a function that reads the next part of the body, as sent, into a buffer and returns its length.

    It reads with ``readinto`` from the stream below urllib3, which skips urllib3's
    decoding layer, a new bytes object per chunk and a copy: about 0.2 s of a 1 GiB
    download in the profile in docs/benchmarks.md.

    NOTE: that stream is urllib3's private ``_fp``, the ``http.client`` response, checked
    with urllib3 2.8. Without it, the body is read with urllib3's public ``read``.
    """
    body = getattr(response.raw, "_fp", None)
    if body is not None and callable(getattr(body, "readinto", None)):
        return functools.partial(_read_into, body)
    return functools.partial(_read_raw_into, response.raw)


def _read_into(body: IO[bytes], buffer: memoryview) -> int:
    """Read the next part of the body into ``buffer`` and return its length, 0 at the end."""
    try:
        return int(body.readinto(buffer))  # type: ignore[attr-defined]
    except Exception as error:
        mapped = _read_error(error)
        if mapped is None:
            raise
        raise mapped from error


def _read_raw_into(raw: Any, buffer: memoryview) -> int:
    """Read the next part of the body through urllib3's ``read``, undecoded, into ``buffer``."""
    try:
        data = raw.read(len(buffer), decode_content=False)
    except Exception as error:
        mapped = _read_error(error)
        if mapped is None:
            raise
        raise mapped from error
    buffer[: len(data)] = data
    return len(data)


def _read_error(error: Exception) -> Exception | None:
    """Return the requests exception for an error of reading a body, so that the download's retry rules apply.

    An early end becomes ChunkedEncodingError, a read timeout ReadTimeout, and any other
    socket error ConnectionError. ``http.client`` and urllib3 report the same faults with
    exceptions of their own, so both are mapped. Any other error gives ``None``.
    """
    import http.client

    import requests
    import urllib3.exceptions

    if isinstance(error, (http.client.HTTPException, urllib3.exceptions.ProtocolError)):
        # IncompleteRead: the connection closed before Content-Length bytes or the last chunk.
        return requests.exceptions.ChunkedEncodingError(
            f"the connection closed before the whole body arrived: {error!r}"
        )
    if isinstance(error, (TimeoutError, urllib3.exceptions.ReadTimeoutError)):
        return requests.exceptions.ReadTimeout(f"reading the body timed out: {error}")
    if isinstance(error, OSError):
        return requests.exceptions.ConnectionError(f"reading the body failed: {error}")
    return None


def _as_storage_path(destination: Any, file_id: str) -> Any:
    """Return a local path string or an ``ObjectStoragePath`` for a destination.

    A destination string ending with ``/`` is a folder, and the file goes into it as
    :func:`default_file_name`.
    """
    if type(destination).__name__ == "ObjectStoragePath":
        return destination
    text = check_destination(os.fspath(destination) if isinstance(destination, os.PathLike) else destination)
    if text.endswith("/"):
        text += default_file_name(file_id)
    if "://" not in text:
        return text
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(text)


def _local_path_of(target: Any) -> str | None:
    """Return the local file path behind a destination, or ``None`` for remote storage."""
    if isinstance(target, str):
        return target
    if getattr(target, "protocol", None) in LOCAL_SCHEMES:
        return "/" + str(target.path).lstrip("/")
    return None


def _sha256_of(path: str) -> str:
    with open(path, "rb") as handle:
        return _sha256_of_stream(handle)


def _sha256_of_stream(stream: IO[bytes]) -> str:
    # hashlib.file_digest does the same, but only from Python 3.11 on.
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(DOWNLOAD_CHUNK_SIZE), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _publish_local(staged: str, destination: str, digest: str, file_id: str, log: Any) -> str:
    """Move a complete download into place atomically; keep an identical existing file."""
    if os.path.isdir(destination):
        raise SepaExportDownloadError(
            endpoints.DOWNLOAD_ENDPOINT,
            200,
            f"the destination {destination} is a folder",
            resource_id=f"file {file_id}",
            hint="End the destination with '/' to save the file inside it, or name a file.",
        )
    published = False
    try:
        # A hard link publishes the complete file atomically and, unlike os.replace,
        # fails instead of overwriting a file that appeared in the meantime.
        os.link(staged, destination)
        published = True
    except FileExistsError:
        pass
    except OSError:
        # Some file systems (FUSE mounts, some network shares) have no hard links.
        if not os.path.exists(destination):
            os.replace(staged, destination)
            published = True
    if published:
        _sync_published(destination, file_id, log)
        return destination

    if _sha256_of(destination) == digest:
        # The identical file may come from a download whose folder sync failed.
        _sync_published(destination, file_id, log)
        return destination
    raise SepaExportDownloadError(
        endpoints.DOWNLOAD_ENDPOINT,
        200,
        f"{destination} already exists with different content",
        resource_id=f"file {file_id}",
        hint="A bank file is never overwritten; move the old file away or choose another destination.",
    )


def _sync_published(destination: str, file_id: str, log: Any) -> None:
    """Sync the folder of a published file, so that its name survives a power loss.

    A failed sync leaves the file in place: its content is synced, and another download
    of the same file may already have reported it as written.
    """
    folder = os.path.dirname(destination) or "."
    try:
        skipped = _fsync_folder(folder)
    except OSError as error:
        raise SepaExportDownloadError(
            endpoints.DOWNLOAD_ENDPOINT,
            200,
            f"syncing the folder {folder} after publishing the file failed: {error.strerror or error}",
            resource_id=f"file {file_id}",
            hint=f"{destination} is complete, but its name may be missing after a power loss. Check the disk, "
            "then retry the task, which keeps the identical file and syncs the folder again.",
        ) from error
    if skipped:
        log.warning(
            "Could not sync the folder %s (%s), so %s may be missing after a power loss.", folder, skipped, destination
        )


def _fsync_folder(folder: str) -> str | None:
    """Write a folder's entries to disk, so that a file name just published survives a power loss.

    :return: ``None`` once synced, or why the folder cannot be synced: a folder that the
        worker may write to but not open (EACCES, EPERM), or a file system that cannot sync
        a folder (EINVAL, EOPNOTSUPP, as some network file systems).
    :raises OSError: for any other error.
    """
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM):
            return f"opening it failed: {error.strerror}"
        raise
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return f"the file system does not support it: {error.strerror}"
        raise
    finally:
        os.close(descriptor)
    return None


def _publish_storage(staged: str, target: Any, digest: str, file_id: str) -> str:
    """Copy a complete download to object storage; delete the object again if the copy fails."""
    if target.exists():
        with target.open("rb") as existing:
            same = _sha256_of_stream(existing) == digest
        if same:
            return str(target)
        raise SepaExportDownloadError(
            endpoints.DOWNLOAD_ENDPOINT,
            200,
            f"{target} already exists with different content",
            resource_id=f"file {file_id}",
            hint="A bank file is never overwritten; move the old object away or choose another destination.",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(staged, "rb") as source, target.open("wb") as sink:
            for chunk in iter(lambda: source.read(DOWNLOAD_CHUNK_SIZE), b""):
                sink.write(chunk)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        raise
    return str(target)


async def _amask_secret(value: str) -> None:
    from airflow.sdk.log import amask_secret

    await amask_secret(value)


_TokenKey = tuple[str, str, str, str]

#: Token requests in progress, per event loop and token cache key. Each loop has its own
#: futures because an asyncio future belongs to the loop that created it.
_TOKEN_FETCHES: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[_TokenKey, asyncio.Future[payloads.AccessToken]]
] = weakref.WeakKeyDictionary()
_TOKEN_FETCHES_LOCK = threading.Lock()


def _token_fetches_of_running_loop() -> dict[_TokenKey, asyncio.Future[payloads.AccessToken]]:
    loop = asyncio.get_running_loop()
    with _TOKEN_FETCHES_LOCK:
        return _TOKEN_FETCHES.setdefault(loop, {})


_ClientKey = tuple[object, ...]


@dataclass
class _SharedClient:
    """An httpx client and the number of async hooks that use it."""

    client: httpx.AsyncClient
    users: int = 0


@dataclass
class _LoopClients:
    """The shared httpx clients of one event loop, by client key.

    It holds no reference to its loop, so that the registry below can drop it with the loop.
    """

    by_key: dict[_ClientKey, list[_SharedClient]] = field(default_factory=dict)

    def acquire(self, key: _ClientKey, build: Callable[[], httpx.AsyncClient]) -> _SharedClient:
        """Count one more user of a client for ``key`` that has room, building one if none has."""
        shared_list = self.by_key.setdefault(key, [])
        shared = next((item for item in shared_list if item.users < HOOKS_PER_CLIENT), None)
        if shared is None:
            shared = _SharedClient(build())
            shared_list.append(shared)
        shared.users += 1
        return shared

    def release(self, key: _ClientKey, shared: _SharedClient) -> bool:
        """Count one user less, and return whether it was the last one."""
        shared.users -= 1
        if shared.users > 0:
            return False
        shared_list = self.by_key.get(key, [])
        if shared in shared_list:
            shared_list.remove(shared)
        if not shared_list:
            self.by_key.pop(key, None)
        return True


#: Async hooks that share one httpx client at most. httpcore's connection pool walks all
#: its requests and connections for every request it starts or ends, so a pool for many
#: busy hooks costs more CPU per request. With 1,000 triggers polling every second, a poll
#: cost 1.4 ms of CPU with 20 hooks per client, 1.1 ms with 8 and 1.0 ms with one client
#: per hook. With 30-second polls, 8 per client halved the memory (docs/benchmarks.md).
HOOKS_PER_CLIENT = 8


#: httpx clients of the async hooks, per event loop and client key. An httpx client belongs
#: to the loop it first sends on, so each loop has its own.
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = weakref.WeakKeyDictionary()
_CLIENTS_LOCK = threading.Lock()


class _HeldClient(NamedTuple):
    """A shared client that one hook uses, with its key and the registry of its event loop."""

    loop_clients: _LoopClients
    key: _ClientKey
    shared: _SharedClient


def _clients_of_running_loop() -> _LoopClients:
    loop = asyncio.get_running_loop()
    with _CLIENTS_LOCK:
        clients = _CLIENTS.get(loop)
        if clients is None:
            clients = _CLIENTS[loop] = _LoopClients()
        return clients


_SSL_CONTEXT: ssl.SSLContext | None = None
_SSL_CONTEXT_LOCK = threading.Lock()
_HTTP_CLIENT_READY = False


def _shared_ssl_context() -> ssl.SSLContext:
    """Return the SSL context that every async hook's client uses, creating it on the first call.

    httpx otherwise builds a context per client. Loading the CA bundle into one took about
    20 ms of CPU and 0.8 MiB with httpx 0.29 on the machine in docs/benchmarks.md, so a
    thousand triggers paid for a thousand copies. The shared context reads SSL_CERT_FILE
    and SSL_CERT_DIR once, when it is created.
    """
    global _SSL_CONTEXT
    with _SSL_CONTEXT_LOCK:
        if _SSL_CONTEXT is None:
            import httpx

            _SSL_CONTEXT = httpx.create_ssl_context()
        return _SSL_CONTEXT


def _prepare_http_client() -> None:
    """Do the blocking one-time work of the first httpx client: load the CA bundle and httpcore."""
    global _HTTP_CLIENT_READY
    _shared_ssl_context()
    import httpcore  # noqa: F401 - httpx imports it when it builds the first client

    _HTTP_CLIENT_READY = True


class SepaExportAsyncHook(BaseHook):
    """Read the job list of the Emporix SEPA Export API from an asyncio event loop.

    The trigger uses this hook. The async hooks of one event loop that use the same API
    client (URL, client id and secret, timeouts) share ``httpx.AsyncClient`` instances,
    up to :data:`HOOKS_PER_CLIENT` hooks each. So a thousand triggers of one connection
    use 125 connection pools instead of a thousand, and one access token. The token comes
    from the same process-wide cache as the sync hook's. Each request follows the retry
    rules of :class:`SepaExportHook`, through the same :class:`RequestAttempts`.

    No method blocks the event loop: the connection comes from ``aget_connection``, its
    Extra field is parsed from the raw JSON instead of ``extra_dejson`` (which masks
    secrets with a blocking call), secrets are masked with ``amask_secret``, and the HTTP
    client, whose TLS setup reads certificate files, is built in a worker thread.

    Use it as an async context manager, or await :meth:`aclose` when done.

    :param emporix_conn_id: id of the Airflow connection.
    :param connect_timeout: seconds to wait for a TCP connection.
    :param read_timeout: seconds to wait for the server between two reads.
    :param retry_policy: backoff for the requests; the default sends each request at most
        five times, like the sync hook.
    :param sleep: coroutine function that waits the given seconds between retries.
    :param transport: the httpx transport to send requests through, such as
        ``httpx.MockTransport`` in tests; ``None`` uses the network.
    """

    def __init__(
        self,
        emporix_conn_id: str = endpoints.DEFAULT_CONN_ID,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__()
        self.emporix_conn_id = emporix_conn_id
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self._sleep = sleep
        self._transport = transport
        self._settings: endpoints.ConnectionSettings | None = None
        self._held: _HeldClient | None = None

    async def __aenter__(self) -> SepaExportAsyncHook:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the shared HTTP client. The last hook that uses it closes it and its pool."""
        client = self._release_client()
        if client is not None:
            await client.aclose()

    @property
    def _client(self) -> httpx.AsyncClient | None:
        """The HTTP client this hook uses, or ``None``."""
        return self._held.shared.client if self._held is not None else None

    def _release_client(self) -> httpx.AsyncClient | None:
        """Stop using the shared client, and return it when this hook must close it."""
        held, self._held = self._held, None
        if held is None:
            return None
        last = held.loop_clients.release(held.key, held.shared)
        # A client of another, finished event loop cannot close its connections from this one.
        return held.shared.client if last and held.loop_clients is _clients_of_running_loop() else None

    async def get_settings(self) -> endpoints.ConnectionSettings:
        """Return the validated connection settings, looking the connection up on the first call.

        :raises SepaExportConfigError: when the connection is missing or invalid.
        """
        if self._settings is not None:
            return self._settings
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = await self.aget_connection(self.emporix_conn_id)
        except AirflowNotFoundException:
            raise endpoints.missing_connection_error(self.emporix_conn_id) from None
        settings = endpoints.ConnectionSettings.from_connection(self.emporix_conn_id, conn)
        await _amask_secret(settings.client_secret)
        self._settings = settings
        return settings

    async def _get_client(self) -> httpx.AsyncClient:
        """Return this hook's HTTP client, shared with the loop's other hooks of the same API client."""
        loop_clients = _clients_of_running_loop()
        if self._held is not None and self._held.loop_clients is not loop_clients:
            # Used before in another event loop, whose client cannot serve this one.
            self._release_client()
        if self._held is None:
            settings = await self.get_settings()
            if not _HTTP_CLIENT_READY:
                await asyncio.to_thread(_prepare_http_client)
            # A concurrent call on this hook may have taken a client during the awaits. From
            # here on nothing awaits, so the check and the count cannot interleave.
            if self._held is None:
                # Cookies and connections stay within one API client, because the key contains its credentials.
                key: _ClientKey = (
                    settings.base_url,
                    payloads.TOKEN_CACHE.key(settings),
                    self.connect_timeout,
                    self.read_timeout,
                    self._transport,
                )
                self._held = _HeldClient(loop_clients, key, loop_clients.acquire(key, self._build_client))
        return self._held.shared.client

    def _build_client(self) -> httpx.AsyncClient:
        import httpx

        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
            headers={"User-Agent": "airflow-provider-sepa"},
            follow_redirects=False,
            verify=_shared_ssl_context(),
            transport=self._transport,
            # Each hook sends one request at a time, so requests never queue for a connection.
            limits=httpx.Limits(max_connections=HOOKS_PER_CLIENT, max_keepalive_connections=HOOKS_PER_CLIENT),
        )

    # -- requests ---------------------------------------------------------------------

    async def get_token(self) -> str:
        """Return a valid access token, fetching a new one when the cached one is close to expiry.

        Hooks in one event loop that need a new token for the same client at the same time
        send one token request. The first hook sends it, and the others await its outcome,
        its error included. When the hook that sends it is cancelled, a waiting hook sends
        the next one.
        """
        settings = await self.get_settings()
        key = payloads.TOKEN_CACHE.key(settings)
        fetches = _token_fetches_of_running_loop()
        while True:
            cached = payloads.TOKEN_CACHE.get(settings)
            if cached is not None:
                return cached.value
            pending = fetches.get(key)
            if pending is None:
                break
            # asyncio.wait returns when the fetch ends, and cancelling this task does not cancel the fetch.
            await asyncio.wait({pending})
            if not pending.cancelled():
                return pending.result().value
        return (await self._fetch_shared_token(fetches, key)).value

    async def _fetch_shared_token(
        self, fetches: dict[_TokenKey, asyncio.Future[payloads.AccessToken]], key: _TokenKey
    ) -> payloads.AccessToken:
        """Fetch a token and publish the outcome to the hooks of this loop that wait for it."""
        future: asyncio.Future[payloads.AccessToken] = asyncio.get_running_loop().create_future()
        fetches[key] = future
        try:
            token = await self._fetch_token()
        except Exception as error:
            future.set_exception(error)
            # Reading the exception marks it as retrieved, so asyncio logs nothing when no hook waits.
            future.exception()
            raise
        except BaseException:
            # Cancelled: the waiting hooks see a cancelled future, and one of them fetches instead.
            future.cancel()
            raise
        else:
            future.set_result(token)
            return token
        finally:
            if fetches.get(key) is future:
                del fetches[key]

    async def _fetch_token(self) -> payloads.AccessToken:
        settings = await self.get_settings()
        resource_id = f"client {settings.client_id}"
        response = await self._send(
            "POST",
            settings.token_url,
            endpoints.TOKEN_ENDPOINT,
            idempotent=True,
            authenticated=False,
            resource_id=resource_id,
            data=settings.token_form(),
        )
        # SepaExportHook._json reads only json() and text, which httpx responses have too.
        payload = SepaExportHook._json(response, endpoints.TOKEN_ENDPOINT, resource_id=resource_id, quote_body=False)
        token = payloads.parse_token_response(payload)
        # NOTE: Airflow 3.3.2's secrets masker compiles one regular expression of all masked
        # values again for each new value, so a triggerer that serves many clients spends
        # time quadratic in their number here (docs/benchmarks.md, "Deferrable waiting").
        await _amask_secret(token.value)
        payloads.TOKEN_CACHE.put(settings, token)
        self.log.info("Fetched an access token for client %s, valid for %d s.", settings.client_id, token.lifetime)
        return token

    async def _send(
        self,
        method: str,
        url: str,
        endpoint: str,
        *,
        idempotent: bool,
        resource_id: str | None = None,
        authenticated: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request under the shared retry rules and return the 2xx response."""
        import httpx

        settings = await self.get_settings()
        client = await self._get_client()
        attempts = RequestAttempts(
            self.retry_policy, endpoint, idempotent=idempotent, resource_id=resource_id, authenticated=authenticated
        )
        while True:
            attempts.start_attempt()
            token = await self.get_token() if authenticated else None
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                response = await client.request(method, url, headers=headers, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
                decision = attempts.after_transport_failure(TransportFailure.CONNECT, type(error).__name__)
            except (httpx.ReadTimeout, httpx.WriteTimeout) as error:
                decision = attempts.after_transport_failure(TransportFailure.READ_TIMEOUT, type(error).__name__)
            except httpx.TransportError as error:
                # ReadError, WriteError, RemoteProtocolError: the connection broke while or after sending.
                decision = attempts.after_transport_failure(TransportFailure.DISCONNECTED, type(error).__name__)
            else:
                # The sync hook reads the body unless Response.ok (status < 400), so both quote the same bodies.
                failed = response.status_code >= 400
                body = _buffered_error_body(response) if failed else ""
                body = redact(body, settings.client_secret, token)
                decision = attempts.after_response(response.status_code, body, response.headers.get("Retry-After"))
                if decision.action is Action.RETURN:
                    return response
                await response.aclose()

            delay = prepare_next_attempt(attempts, decision, settings=settings, log=self.log, rejected_token=token)
            if delay is not None:
                await self._sleep(delay)

    # -- jobs -------------------------------------------------------------------------

    async def list_jobs(
        self, site_code: str, page_number: int = 1, page_size: int = 16, sort: str = "DESC"
    ) -> list[ExportJob]:
        """Return one page of the site's export jobs, newest first unless ``sort="ASC"``.

        :param site_code: the site whose jobs are listed.
        :param page_number: the page, starting at 1.
        :param page_size: jobs per page.
        :param sort: ``"DESC"`` for newest first or ``"ASC"`` for oldest first.
        """
        params = endpoints.list_params(site_code, page_number, page_size, sort)
        settings = await self.get_settings()
        resource_id = f"site {site_code}"
        response = await self._send(
            "GET", settings.jobs_url(), endpoints.LIST_ENDPOINT, idempotent=True, resource_id=resource_id, params=params
        )
        payload = SepaExportHook._json(response, endpoints.LIST_ENDPOINT, resource_id=resource_id)
        return payloads.parse_job_list(payload, site_code)

    async def get_job(self, site_code: str, job_id: str, page_size: int = 50) -> ExportJob:
        """Return one job of a site, following pages of the job list until it appears.

        :param site_code: the site the job belongs to.
        :param job_id: the id returned by the create endpoint.
        :param page_size: jobs per page. :class:`payloads.PageWalk` decides when the walk ends.
        :raises SepaExportJobNotFoundError: when no page lists the job.
        """
        job_id = endpoints.validate_job_id(job_id)
        walk = payloads.PageWalk(page_size=page_size)
        while True:
            page = await self.list_jobs(site_code, page_number=walk.page_number, page_size=page_size)
            job = payloads.find_job_in_page(page, job_id)
            if job is not None:
                return job
            if not walk.next_page(page):
                break
        settings = await self.get_settings()
        raise payloads.job_not_found_error(job_id, site_code, settings.tenant)
