"""Connection settings, input validation and URL building for the SEPA Export API.

Every value that goes into a URL path is checked here and then percent-quoted, so a site
code, tenant or file id can never change which endpoint a request reaches.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from airflow_provider_sepa.core.errors import SepaExportConfigError, SepaExportInputError

DEFAULT_HOST = "https://api.emporix.io"
CONN_TYPE = "emporix"
DEFAULT_CONN_ID = "emporix_default"

SCOPE_JOB_VIEW = "sepaexport.job_view"
SCOPE_JOB_MANAGE = "sepaexport.job_manage"
SCOPE_MEDIA_VIEW = "sepaexport.media_view"

#: Scope each endpoint requires, used to name the missing scope when the API returns 403.
REQUIRED_SCOPES = {
    "GET /sepa-export/{tenant}/jobs": SCOPE_JOB_VIEW,
    "POST /sepa-export/{tenant}/jobs": SCOPE_JOB_MANAGE,
    "GET /sepa-export/{tenant}/files/{fileId}": SCOPE_MEDIA_VIEW,
}

TOKEN_ENDPOINT = "POST /oauth/token"
LIST_ENDPOINT = "GET /sepa-export/{tenant}/jobs"
CREATE_ENDPOINT = "POST /sepa-export/{tenant}/jobs"
DOWNLOAD_ENDPOINT = "GET /sepa-export/{tenant}/files/{fileId}"

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_tenant(tenant: Any) -> str:
    """Check a tenant name: non-empty, lowercase letters, digits, ``-`` or ``_``.

    :raises SepaExportConfigError: naming the value and the fix.
    """
    if not isinstance(tenant, str) or not tenant.strip():
        raise SepaExportConfigError(
            "The connection has no tenant. Set the extra field 'tenant' to your Emporix tenant name, "
            'for example {"tenant": "mytenant"}.'
        )
    if tenant != tenant.lower():
        raise SepaExportConfigError(
            f"Invalid tenant {tenant!r}: Emporix tenant names are lowercase. Set 'tenant' to {tenant.lower()!r}."
        )
    if not _TENANT.fullmatch(tenant):
        raise SepaExportConfigError(
            f"Invalid tenant {tenant!r}: use only lowercase letters, digits, '-' and '_', with no spaces."
        )
    return tenant


def validate_site_code(site_code: Any) -> str:
    """Check a site code: a non-blank string without control characters or surrounding spaces.

    :raises SepaExportInputError: naming the value and the fix.
    """
    return _validate_identifier(site_code, "site code", "site_code", "main")


def validate_job_id(job_id: Any) -> str:
    """Check a job id as returned by the create endpoint."""
    return _validate_identifier(job_id, "job id", "job_id", "884cf047-94a2-42ae-8a89-7084c3259ef2")


def validate_file_id(file_id: Any) -> str:
    """Check a file id as returned in a finished job's ``fileId``."""
    return _validate_identifier(file_id, "file id", "file_id", "the fileId of a finished job")


def _validate_identifier(value: Any, label: str, argument: str, example: str) -> str:
    if not isinstance(value, str):
        raise SepaExportInputError(f"Invalid {label} {value!r}: {argument} must be a string such as {example!r}.")
    if not value.strip():
        raise SepaExportInputError(f"Invalid {label} {value!r}: {argument} is empty. Pass a value such as {example!r}.")
    if value != value.strip() or _CONTROL.search(value):
        raise SepaExportInputError(
            f"Invalid {label} {value!r}: remove the surrounding spaces or control characters from {argument}."
        )
    if value in (".", ".."):
        raise SepaExportInputError(
            f"Invalid {label} {value!r}: {argument} cannot be a path segment such as '.' or '..'."
        )
    return value


def normalize_base_url(host: str | None, port: int | None = None) -> str:
    """Build the API base URL from a connection's host and port.

    A host without a scheme gets ``https://``; an empty host means the public Emporix API.

    :raises SepaExportConfigError: when the host is not an http(s) URL without path, query or credentials.
    """
    raw = (host or "").strip() or DEFAULT_HOST
    if "://" not in raw:
        raw = "https://" + raw
    try:
        parts = urlsplit(raw)
        host_port = parts.port
    except ValueError:
        # urlsplit rejects a malformed IPv6 address, and .port a non-numeric or out-of-range port.
        raise SepaExportConfigError(
            "Invalid host: the host field is not a valid URL or its port is not a number from 1 to 65535. "
            f"Use a value such as {DEFAULT_HOST!r} or http://127.0.0.1:8765."
        ) from None
    # Checked before any message quotes the host, so that a password in it is never repeated.
    if parts.username or parts.password:
        raise SepaExportConfigError(
            "Invalid host: the host field must not contain a user name or password. "
            "Put the client id into Login and the client secret into Password."
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SepaExportConfigError(
            f"Invalid host {host!r}: expected an http(s) URL such as {DEFAULT_HOST!r} or http://127.0.0.1:8765."
        )
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise SepaExportConfigError(
            f"Invalid host {parts.scheme}://{parts.hostname}: the host field must hold only scheme, host and port, "
            "without a path, query or user name."
        )
    if port is not None and not 0 <= port <= 65535:
        raise SepaExportConfigError(f"Invalid port {port!r}: use a number from 1 to 65535.")
    netloc = parts.netloc
    if port and host_port is None:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}"


@dataclass(frozen=True)
class ConnectionSettings:
    """Everything the API client needs from an Airflow connection of type ``emporix``.

    :param base_url: scheme, host and optional port, without a trailing slash.
    :param client_id: the OAuth client id (connection login).
    :param client_secret: the OAuth client secret (connection password).
    :param tenant: the lowercase Emporix tenant name (connection extra ``tenant``).
    :param scope: space-separated scopes to request, or ``None`` for all the client's scopes.
    """

    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    tenant: str
    scope: str | None = None

    @classmethod
    def from_fields(
        cls,
        *,
        conn_id: str,
        host: str | None,
        port: int | None,
        login: str | None,
        password: str | None,
        extra: str | dict[str, Any] | None,
    ) -> ConnectionSettings:
        """Validate the fields of an Airflow connection and build the settings.

        Takes plain values so that the sync hook and the async trigger share it without
        touching Airflow's connection object in an event loop.

        :raises SepaExportConfigError: naming the connection, the field and the fix.
        """
        extras = _parse_extra(conn_id, extra)
        try:
            tenant = validate_tenant(extras.get("tenant"))
        except SepaExportConfigError as error:
            raise SepaExportConfigError(f"Connection {conn_id!r}: {error}") from None
        if not login or not login.strip():
            raise SepaExportConfigError(
                f"Connection {conn_id!r} has no client id. Put the Emporix client id into the Login field."
            )
        if not password:
            raise SepaExportConfigError(
                f"Connection {conn_id!r} has no client secret. Put the Emporix client secret into the Password field."
            )
        scope = extras.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise SepaExportConfigError(
                f"Connection {conn_id!r}: extra 'scope' must be a space-separated string, got {type(scope).__name__}."
            )
        try:
            base_url = normalize_base_url(host, port)
        except SepaExportConfigError as error:
            raise SepaExportConfigError(f"Connection {conn_id!r}: {error}") from None
        return cls(
            base_url=base_url,
            client_id=login.strip(),
            client_secret=password,
            tenant=tenant,
            scope=" ".join(scope.split()) or None if scope else None,
        )

    @classmethod
    def from_connection(cls, conn_id: str, conn: Any) -> ConnectionSettings:
        """Validate an Airflow ``Connection`` and build the settings.

        Reads only the plain fields and the raw ``extra`` string, never ``extra_dejson``,
        which masks secrets with a blocking call that must not run in an event loop.
        """
        return cls.from_fields(
            conn_id=conn_id,
            host=conn.host,
            port=conn.port,
            login=conn.login,
            password=conn.password,
            extra=conn.extra,
        )

    @property
    def token_url(self) -> str:
        """URL of the OAuth token endpoint."""
        return f"{self.base_url}/oauth/token"

    def jobs_url(self) -> str:
        """URL of the list and create endpoint of the tenant."""
        return f"{self.base_url}/sepa-export/{quote(self.tenant, safe='')}/jobs"

    def file_url(self, file_id: str) -> str:
        """URL of a file download; the file id is validated and percent-quoted."""
        checked = validate_file_id(file_id)
        return f"{self.base_url}/sepa-export/{quote(self.tenant, safe='')}/files/{quote(checked, safe='')}"

    def token_form(self) -> dict[str, str]:
        """Form body of the client-credentials token request, the same on every fetch."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }
        if self.scope:
            form["scope"] = self.scope
        return form


def missing_connection_error(conn_id: str) -> SepaExportConfigError:
    """Build the error for a connection id that no secrets backend defines.

    :param conn_id: the Airflow connection id that was looked up.
    """
    return SepaExportConfigError(
        f"Connection {conn_id!r} is not defined. Create it in the Airflow UI "
        f"(type 'emporix') or set AIRFLOW_CONN_{conn_id.upper()} to its JSON form."
    )


def _parse_extra(conn_id: str, extra: str | dict[str, Any] | None) -> dict[str, Any]:
    if extra is None or extra == "":
        return {}
    if isinstance(extra, dict):
        return extra
    try:
        parsed = json.loads(extra)
    except ValueError:
        raise SepaExportConfigError(
            f"Connection {conn_id!r}: the Extra field is not valid JSON. "
            'Use an object such as {"tenant": "mytenant"}.'
        ) from None
    if not isinstance(parsed, dict):
        raise SepaExportConfigError(
            f'Connection {conn_id!r}: the Extra field must be a JSON object such as {{"tenant": "mytenant"}}.'
        )
    return parsed


def list_params(site_code: str, page_number: int, page_size: int, sort: str) -> dict[str, str]:
    """Build the query of a list request, validating the paging arguments."""
    validate_site_code(site_code)
    if isinstance(page_number, bool) or not isinstance(page_number, int) or page_number < 1:
        raise SepaExportInputError(f"Invalid page_number {page_number!r}: the first page is 1.")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise SepaExportInputError(f"Invalid page_size {page_size!r}: use a whole number of at least 1.")
    if sort not in ("ASC", "DESC"):
        raise SepaExportInputError(f"Invalid sort {sort!r}: use 'ASC' or 'DESC'.")
    # The API requires pageSize whenever pageNumber is sent, so both always go together.
    return {"siteCode": site_code, "pageNumber": str(page_number), "pageSize": str(page_size), "sort": sort}
