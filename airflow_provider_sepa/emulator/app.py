"""FastAPI application that serves the SEPA Export API and the token endpoint from an EmulatorState."""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from airflow_provider_sepa.emulator.config import SCOPE_JOB_MANAGE, SCOPE_JOB_VIEW, SCOPE_MEDIA_VIEW
from airflow_provider_sepa.emulator.fault_http import ConnectionCloser, Exchange, FaultRunner, add_fault_routes
from airflow_provider_sepa.emulator.fault_injector import FIRED_FAULTS
from airflow_provider_sepa.emulator.state import (
    EmulatorState,
    ExpiredTokenError,
    InjectedResponse,
    InvalidClientError,
    InvalidScopeError,
    InvalidTokenError,
    JobConflictError,
    RequestContext,
    TokenRecord,
    UnknownSiteError,
)

FILE_MEDIA_TYPE = "text/plain;charset=UTF-8"
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
JSON_MEDIA_TYPE = "application/json"

#: ``session_idle_time`` of token responses, in seconds, as in the contract's example.
SESSION_IDLE_TIME_SECONDS = 120
DEFAULT_PAGE_SIZE = 16
INT32_MAX = 2**31 - 1

FORBIDDEN_MESSAGE = "The access to the requested resource has been forbidden by the server."
NOT_FOUND_MESSAGE = "Given resource has not been found."

# Endpoint names for the request log and request hooks.
ENDPOINT_TOKEN = "token"
ENDPOINT_LIST_JOBS = "list_jobs"
ENDPOINT_CREATE_JOB = "create_job"
ENDPOINT_DOWNLOAD_FILE = "download_file"
ENDPOINT_ADMIN = "admin"
ENDPOINT_UNKNOWN = "unknown"

_JOBS_PATH = re.compile(r"/sepa-export/[^/]+/jobs/?")
_FILE_PATH = re.compile(r"/sepa-export/[^/]+/files/[^/]+/?")
_INTEGER = re.compile(r"[+-]?[0-9]{1,12}")

_NO_STORE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}

log = logging.getLogger(__name__)


def classify_endpoint(method: str, path: str) -> str:
    """Return the endpoint name of a request, as used in the request log and by request hooks."""
    if path.startswith("/_emulator/") or path == "/_emulator":
        return ENDPOINT_ADMIN
    if path.rstrip("/") == "/oauth/token":
        return ENDPOINT_TOKEN
    if _JOBS_PATH.fullmatch(path):
        return ENDPOINT_CREATE_JOB if method == "POST" else ENDPOINT_LIST_JOBS
    if _FILE_PATH.fullmatch(path):
        return ENDPOINT_DOWNLOAD_FILE
    return ENDPOINT_UNKNOWN


class RequestLogMiddleware:
    """ASGI middleware that runs the request hooks and fault rules and logs each API request.

    Requests to ``/_emulator/`` are neither hooked, faulted nor logged, so that inspection
    by tests does not show up in the log it inspects. A request hook that returns a
    response takes precedence over the fault rules, which then do not see the request.
    """

    def __init__(self, app: ASGIApp, state: EmulatorState, close_connection: ConnectionCloser | None = None) -> None:
        """Wrap ``app``, log into ``state`` and close connections for faults with ``close_connection``."""
        self.app = app
        self.state = state
        self.fault_runner = FaultRunner(state, close_connection)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        method: str = scope["method"]
        path: str = scope["path"]
        endpoint = classify_endpoint(method, path)
        if endpoint == ENDPOINT_ADMIN:
            await self.app(scope, receive, send)
            return

        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        # Collects the faults that act on this request, including token and job faults
        # that the state applies while the endpoint runs in this task.
        fired: list[str] = []

        def record(exchange: Exchange) -> None:
            if fired:
                log.info(
                    "Injected faults [%s] into %s %s, reply status %s",
                    ", ".join(fired),
                    method,
                    path,
                    exchange.status_code,
                )
            self.state.record_request(endpoint, method, path, query, exchange.status_code, faults=fired)

        exchange = Exchange(record=record)

        async def send_and_capture_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status_code = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Logged before the last body bytes go out, so that a client that has read
                # the whole reply always finds the request in the log.
                exchange.finish()
            await send(message)

        context_token = FIRED_FAULTS.set(fired)
        try:
            injected = self.state.run_request_hooks(RequestContext(endpoint, method, path, query))
            if injected is None:
                await self.fault_runner.run(
                    self.app, scope, receive, send_and_capture_status, endpoint, query, exchange
                )
            else:
                await _to_response(injected)(scope, receive, send_and_capture_status)
        finally:
            FIRED_FAULTS.reset(context_token)
            exchange.finish()


def _to_response(injected: InjectedResponse) -> Response:
    if isinstance(injected.body, bytes | str):
        return Response(content=injected.body, status_code=injected.status_code, headers=injected.headers)
    return JSONResponse(content=injected.body, status_code=injected.status_code, headers=injected.headers)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def bad_request(errors: list[tuple[str, str]]) -> JSONResponse:
    """Build a 400 response with the contract's BadRequest body from ``(message, path)`` pairs."""
    body = {
        "message": "Bad Request",
        "_embedded": {"errors": [{"message": message, "path": path} for message, path in errors]},
    }
    return JSONResponse(status_code=400, content=body)


def unauthorized(faultstring: str, errorcode: str) -> JSONResponse:
    """Build a 401 response with the contract's fault body."""
    body = {"fault": {"faultstring": faultstring, "detail": {"errorcode": errorcode}}}
    return JSONResponse(status_code=401, content=body, headers={"WWW-Authenticate": "Bearer"})


def forbidden(detail: str) -> JSONResponse:
    """Build a 403 response with the contract's ErrorMessage body."""
    # "Bad request" as status text with code 403 is what the contract's example shows.
    body = {"status": "Bad request", "code": 403, "message": FORBIDDEN_MESSAGE, "details": [detail]}
    return JSONResponse(status_code=403, content=body)


def oauth_error(status_code: int, error: str, description: str) -> JSONResponse:
    """Build an OAuth 2.0 error response (RFC 6749, section 5.2)."""
    body = {"error": error, "error_description": description}
    return JSONResponse(status_code=status_code, content=body, headers=_NO_STORE_HEADERS)


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def authorize(state: EmulatorState, request: Request, tenant: str, required_scope: str) -> TokenRecord | JSONResponse:
    """Check the bearer token for ``tenant`` and ``required_scope``.

    Return the token record, or the 401 or 403 response to send. The checks run in this
    order: token valid (401), tenant lowercase and equal to the token's tenant (403),
    scope granted (403).
    """
    try:
        record = state.check_token(_bearer_token(request))
    except InvalidTokenError:
        return unauthorized("Invalid access token", "oauth.v2.InvalidAccessToken")
    except ExpiredTokenError:
        return unauthorized("Access Token expired", "keymanagement.service.access_token_expired")

    if tenant != tenant.lower():
        return forbidden(f"Tenant in the path must be lowercase: {tenant}")
    if tenant != record.tenant:
        return forbidden("Token tenant does not match the tenant in the path")
    if required_scope not in record.scopes:
        return forbidden("Missing required scopes")
    return record


def _parse_int_parameter(request: Request, name: str, errors: list[tuple[str, str]], default: int) -> int:
    """Parse an optional int32 query parameter that must be >= 1, appending errors to ``errors``."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw) or int(raw) > INT32_MAX:
        errors.append((f"Failed to convert argument [{name}] for value [{raw}]: expected an integer", f"/{name}"))
        return default
    value = int(raw)
    if value < 1:
        errors.append((f"{name}: must be greater than or equal to 1", f"/{name}"))
        return default
    return value


def _parse_list_parameters(request: Request) -> tuple[str, int, int, bool] | JSONResponse:
    """Validate the query of the list endpoint and return site code, page number, page size, descending."""
    errors: list[tuple[str, str]] = []
    query = request.query_params
    site_code = query.get("siteCode", "")
    if not site_code:
        errors.append(("Required argument [String siteCode] not specified", "/siteCode"))
    page_number = _parse_int_parameter(request, "pageNumber", errors, default=1)
    page_size = _parse_int_parameter(request, "pageSize", errors, default=DEFAULT_PAGE_SIZE)
    if "pageNumber" in query and "pageSize" not in query:
        errors.append(("Required argument [Integer pageSize] not specified: pass it with pageNumber", "/pageSize"))
    sort = query.get("sort", "DESC")
    if sort not in ("ASC", "DESC"):
        errors.append((f"Failed to convert argument [sort] for value [{sort}]: expected ASC or DESC", "/sort"))
    if errors:
        return bad_request(errors)
    return site_code, page_number, page_size, sort == "DESC"


async def _parse_create_body(request: Request) -> str | JSONResponse:
    """Validate the CreateJob body and return its site code, or the error response to send."""
    media_type = _media_type(request)
    if media_type != JSON_MEDIA_TYPE:
        message = f"Content-Type [{media_type}] is not supported: use {JSON_MEDIA_TYPE}"
        body = {"message": "Unsupported Media Type", "_embedded": {"errors": [{"message": message}]}}
        return JSONResponse(status_code=415, content=body)

    raw = await request.body()
    if not raw.strip():
        return bad_request([("Required request body not specified", "/")])
    try:
        payload: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return bad_request([(f"Invalid JSON: {error}", "/")])
    if not isinstance(payload, dict):
        return bad_request([("The request body must be a JSON object", "/")])

    site_code = payload.get("siteCode")
    if site_code is None:
        return bad_request([("Required property [siteCode] not specified", "/siteCode")])
    if not isinstance(site_code, str):
        return bad_request([("siteCode: must be a string", "/siteCode")])
    if len(site_code) < 1:
        return bad_request([("siteCode: size must be at least 1", "/siteCode")])
    return site_code


def _add_api_routes(app: FastAPI, state: EmulatorState) -> None:
    @app.post("/oauth/token")
    async def issue_token(request: Request) -> Response:
        if _media_type(request) != FORM_MEDIA_TYPE:
            return oauth_error(400, "invalid_request", f"Content-Type must be {FORM_MEDIA_TYPE}.")
        form = await request.form()
        grant_type = form.get("grant_type")
        if not grant_type:
            return oauth_error(400, "invalid_request", "Missing grant_type: use client_credentials.")
        if grant_type != "client_credentials":
            description = f"Unsupported grant_type {grant_type}: use client_credentials."
            return oauth_error(400, "unsupported_grant_type", description)

        client_id = form.get("client_id")
        client_secret = form.get("client_secret")
        scope = form.get("scope")
        try:
            record = state.issue_token(
                client_id if isinstance(client_id, str) else "",
                client_secret if isinstance(client_secret, str) else "",
                scope if isinstance(scope, str) else None,
            )
        except InvalidClientError:
            response = unauthorized("Invalid client identifier", "oauth.v2.InvalidClientIdentifier")
            response.headers.update(_NO_STORE_HEADERS)
            return response
        except InvalidScopeError as error:
            return oauth_error(400, "invalid_scope", str(error))

        body = {
            "access_token": record.token,
            "token_type": "Bearer",
            "expires_in": int(record.lifetime_seconds),
            "session_idle_time": SESSION_IDLE_TIME_SECONDS,
            "refresh_token": "",
            "refresh_token_expires_in": 0,
            "scope": " ".join((f"tenant={record.tenant}", *record.scopes)),
        }
        return JSONResponse(content=body, headers=_NO_STORE_HEADERS)

    @app.get("/sepa-export/{tenant}/jobs")
    async def list_jobs(tenant: str, request: Request) -> Response:
        authorized = authorize(state, request, tenant, SCOPE_JOB_VIEW)
        if isinstance(authorized, Response):
            return authorized
        parsed = _parse_list_parameters(request)
        if isinstance(parsed, Response):
            return parsed
        site_code, page_number, page_size, descending = parsed
        return JSONResponse(content=state.list_jobs(tenant, site_code, page_number, page_size, descending))

    @app.post("/sepa-export/{tenant}/jobs")
    async def create_job(tenant: str, request: Request) -> Response:
        authorized = authorize(state, request, tenant, SCOPE_JOB_MANAGE)
        if isinstance(authorized, Response):
            return authorized
        site_code = await _parse_create_body(request)
        if isinstance(site_code, Response):
            return site_code
        try:
            job = state.create_job(tenant, site_code)
        except UnknownSiteError as error:
            return bad_request([(str(error), "/siteCode")])
        except JobConflictError as error:
            return JSONResponse(status_code=409, content={"message": str(error)})
        return JSONResponse(status_code=201, content={"id": job.job_id})

    @app.get("/sepa-export/{tenant}/files/{file_id}")
    async def download_file(tenant: str, file_id: str, request: Request) -> Response:
        authorized = authorize(state, request, tenant, SCOPE_MEDIA_VIEW)
        if isinstance(authorized, Response):
            return authorized
        record = state.get_file(tenant, file_id)
        if record is None or not record.path.is_file():
            return JSONResponse(status_code=404, content={"message": NOT_FOUND_MESSAGE})
        # FileResponse streams the file in chunks and sets Content-Length from its size.
        return _LargeChunkFileResponse(record.path, media_type=FILE_MEDIA_TYPE)


class _LargeChunkFileResponse(FileResponse):
    """A FileResponse that reads 1 MiB per chunk instead of Starlette's 64 KiB.

    Each chunk is read in a worker thread, so small chunks cost the server one thread
    handoff per 64 KiB and left it less CPU for a 1 GiB download on 2 cores.
    """

    chunk_size = 1024 * 1024


def _add_admin_routes(app: FastAPI, state: EmulatorState) -> None:
    @app.get("/_emulator/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "tenant": state.config.tenant, "sites": list(state.config.site_codes())}

    @app.get("/_emulator/jobs")
    async def admin_jobs() -> list[dict[str, Any]]:
        return state.jobs()

    @app.get("/_emulator/files/{file_id}")
    async def admin_file(file_id: str) -> Response:
        try:
            info = state.file_info(file_id)
        except KeyError:
            return JSONResponse(status_code=404, content={"message": NOT_FOUND_MESSAGE})
        return JSONResponse(content={**info, "path": str(info["path"]), "ctrl_sum": str(info["ctrl_sum"])})

    @app.get("/_emulator/requests")
    async def admin_requests() -> list[dict[str, Any]]:
        return state.request_log(redact=True)


def create_app(state: EmulatorState, close_connection: ConnectionCloser | None = None) -> FastAPI:
    """Create the FastAPI application that serves ``state``.

    The application has the token endpoint, the three SEPA Export endpoints and the
    ``/_emulator/`` endpoints. None of them returns tokens or client secrets, except the
    token endpoint returning the token it issues. ``close_connection`` closes a client
    connection for the drop, drop-body and lose-reply faults; EmulatorServer passes it.
    """
    app = FastAPI(title="SEPA Export API emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = state
    _add_api_routes(app, state)
    _add_admin_routes(app, state)
    add_fault_routes(app, state)
    app.add_middleware(RequestLogMiddleware, state=state, close_connection=close_connection)
    return app
