"""HTTP side of fault injection: the ASGI code that carries out request faults, and admin routes.

Closing a connection without a response needs the connection's transport, which ASGI
does not hand to applications. :class:`~airflow_provider_sepa.emulator.server.EmulatorServer`
passes a ``close_connection`` callable that finds it in uvicorn. Without one, the
drop, drop-body and lose-reply faults raise RuntimeError.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from airflow_provider_sepa.emulator.fault_injector import RequestFaults
from airflow_provider_sepa.emulator.faults import FAULT_SYNTAX, Fault, FaultKind, parse_fault
from airflow_provider_sepa.emulator.state import EmulatorState

log = logging.getLogger(__name__)

#: Closes the client connection of an ASGI scope and returns whether it found it.
ConnectionCloser = Callable[[Scope], bool]

UTF8_BOM = b"\xef\xbb\xbf"
#: Content-Type of downloads under the no-charset fault.
PLAIN_TEXT_WITHOUT_CHARSET = b"text/plain"

# Request log endpoint names (see app.classify_endpoint) -> endpoint names of fault rules.
_FAULT_ENDPOINTS = {"token": "token", "list_jobs": "list", "create_job": "create", "download_file": "download"}
_FILE_PATH = re.compile(r"/sepa-export/(?P<tenant>[^/]+)/files/(?P<file_id>[^/]+)/?")
# Maximum seconds to wait for uvicorn to report a closed connection. A client that does not
# read the rest of a partial body can hold the close back.
_DISCONNECT_TIMEOUT_SECONDS = 10.0

# NOTE: The contract publishes no bodies for 429 and 5xx responses. These follow the
# gateway fault format of the contract's 401 bodies, with made-up error codes, so that
# clients meet a realistic shape, not the real wording.
_GATEWAY_FAULTS = {
    429: ("Rate limit exceeded: too many requests for this client", "gateway.ratelimit.QuotaViolation"),
    502: ("Bad gateway: the upstream service sent an invalid response", "gateway.BadGateway"),
    503: ("The service is temporarily unavailable", "gateway.ServiceUnavailable"),
    504: ("Gateway timeout: the upstream service did not respond in time", "gateway.GatewayTimeout"),
}


@dataclass
class Exchange:
    """Reply of one request as the client sees it, and the hook that logs it once."""

    #: None when the client got no status line. It starts at 500, because uvicorn sends 500
    #: when the application fails before a response starts.
    status_code: int | None = 500
    #: Callable that writes the request log entry. finish() calls it at most once.
    record: Callable[[Exchange], None] | None = None
    finished: bool = False

    def finish(self) -> None:
        """Log the request now, before the client can see the end of the reply."""
        if not self.finished and self.record is not None:
            self.finished = True
            self.record(self)


# Bodies of the error statuses that the contract lists, in its shapes.
_CONTRACT_BODIES: dict[int, dict[str, Any]] = {
    400: {"message": "Bad Request", "_embedded": {"errors": [{"message": "Bad Request", "path": "/"}]}},
    401: {"fault": {"faultstring": "Invalid access token", "detail": {"errorcode": "oauth.v2.InvalidAccessToken"}}},
    403: {
        "status": "Bad request",
        "code": 403,
        "message": "The access to the requested resource has been forbidden by the server.",
        "details": ["Missing required scopes"],
    },
    404: {"message": "Given resource has not been found."},
    409: {"message": "Another job is in progress. You can have only one job at the same time."},
}


def error_body(status_code: int) -> dict[str, Any]:
    """Return the default JSON body of an injected error status."""
    contract_body = _CONTRACT_BODIES.get(status_code)
    if contract_body is not None:
        # A deep copy, so that a caller cannot change the shared default.
        body: dict[str, Any] = json.loads(json.dumps(contract_body))
        return body
    gateway_fault = _GATEWAY_FAULTS.get(status_code)
    if gateway_fault is not None:
        faultstring, errorcode = gateway_fault
        return {"fault": {"faultstring": faultstring, "detail": {"errorcode": errorcode}}}
    phrase = _reason_phrase(status_code)
    # Other statuses get the contract's ErrorMessage schema, as the 403 responses do.
    return {"status": phrase, "code": status_code, "message": f"{phrase}: the request could not be processed."}


def html_error_page(status_code: int) -> str:
    """Return a gateway error page such as a reverse proxy sends when the upstream fails."""
    title = f"{status_code} {_reason_phrase(status_code)}"
    return (
        "<!DOCTYPE html>\n<html>\n"
        f"<head><title>{title}</title></head>\n"
        f"<body>\n<h1>{title}</h1>\n"
        "<p>The gateway could not get a valid response from the upstream server.</p>\n"
        "</body>\n</html>\n"
    )


def _reason_phrase(status_code: int) -> str:
    try:
        return http.HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"


def build_error_response(fault: Fault) -> Response:
    """Build the response of a status or html fault."""
    assert fault.status_code is not None
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    if fault.kind is FaultKind.HTML_ERROR:
        return HTMLResponse(html_error_page(fault.status_code), status_code=fault.status_code, headers=headers)
    if isinstance(fault.body, bytes | str):
        return Response(fault.body, status_code=fault.status_code, headers=headers)
    body = error_body(fault.status_code) if fault.body is None else fault.body
    return JSONResponse(body, status_code=fault.status_code, headers=headers)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value)
    return None


def _replace_header(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    other_headers = [(key, old) for key, old in headers if key.lower() != name]
    return [*other_headers, (name, value)]


def _partial_length(content_length: int | None, after_bytes: int | None) -> int:
    """Return how many body bytes a drop-body fault sends: by default half, always fewer than all."""
    if content_length is None:
        return after_bytes or 0
    requested = content_length // 2 if after_bytes is None else after_bytes
    return max(0, min(requested, content_length - 1))


async def _buffer_request_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read the whole request body and return it with a receive callable that replays it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def _site_code_of_create_body(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    site_code = payload.get("siteCode") if isinstance(payload, dict) else None
    return site_code if isinstance(site_code, str) else None


async def _wait_for_disconnect(receive: Receive) -> None:
    """Wait until uvicorn reports the closed connection, so that it sends no 500 of its own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _DISCONNECT_TIMEOUT_SECONDS
    try:
        while True:
            message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
            if message["type"] == "http.disconnect":
                return
    except asyncio.TimeoutError:
        log.warning(
            "The connection did not close within %s seconds after a fault closed it", _DISCONNECT_TIMEOUT_SECONDS
        )


class FaultRunner:
    """Wrapper around the application that carries out the request faults of an :class:`EmulatorState`."""

    def __init__(self, state: EmulatorState, close_connection: ConnectionCloser | None) -> None:
        """Use ``state.faults`` and close connections with ``close_connection``."""
        self.state = state
        self._close_connection = close_connection

    async def run(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        endpoint: str,
        query: dict[str, str],
        exchange: Exchange,
    ) -> None:
        """Handle one request to ``endpoint`` (a request log name) with the faults that match it."""
        fault_endpoint = _FAULT_ENDPOINTS.get(endpoint)
        if fault_endpoint is None or not self.state.faults.has_rules():
            await app(scope, receive, send)
            return

        site_code: str | None = None
        file_id: str | None = None
        if fault_endpoint == "list":
            site_code = query.get("siteCode")
        elif fault_endpoint == "create":
            body, receive = await _buffer_request_body(receive)
            site_code = _site_code_of_create_body(body)
        elif fault_endpoint == "download":
            site_code, file_id = self._download_filters(scope["path"])

        chosen = self.state.faults.take_request_faults(fault_endpoint, site_code, file_id)
        if not chosen.specs:
            await app(scope, receive, send)
            return
        await self._apply(app, scope, receive, send, chosen, exchange)

    def _download_filters(self, path: str) -> tuple[str | None, str | None]:
        match = _FILE_PATH.fullmatch(path)
        if match is None:
            return None, None
        record = self.state.get_file(match["tenant"], match["file_id"])
        return (record.site_code if record is not None else None), match["file_id"]

    async def _apply(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, chosen: RequestFaults, exchange: Exchange
    ) -> None:
        faults = self.state.faults
        if chosen.delay_before_seconds:
            await faults.sleep(chosen.delay_before_seconds)
        if chosen.revoke_tokens:
            self.state.revoke_tokens()
        if chosen.expire_tokens:
            self.state.expire_tokens()
        send = self._wrap_send(send, chosen)

        terminal = chosen.terminal
        kind = terminal.kind if terminal is not None else None
        if terminal is None:
            await app(scope, receive, send)
        elif kind in (FaultKind.STATUS, FaultKind.HTML_ERROR):
            await build_error_response(terminal)(scope, receive, send)
        elif kind is FaultKind.DROP:
            await faults.sleep(chosen.delay_reply_seconds)
            await self._drop(scope, receive, exchange)
        elif kind is FaultKind.LOSE_REPLY:
            await app(scope, receive, _discard)
            await faults.sleep(chosen.delay_reply_seconds)
            await self._drop(scope, receive, exchange)
        elif kind is FaultKind.DROP_BODY:
            await self._send_partial_body(app, scope, receive, send, terminal, exchange)
        elif kind is FaultKind.MALFORMED_JSON:
            await self._send_cut_json(app, scope, receive, send)
        else:
            raise AssertionError(f"Unhandled terminal fault {terminal.spec()}")

    def _wrap_send(self, send: Send, chosen: RequestFaults) -> Send:
        """Wrap ``send`` with the reply delay and the changes to a download's headers and body."""
        wrapped = send
        if chosen.delay_reply_seconds:
            wrapped = _delay_reply(wrapped, lambda: self.state.faults.sleep(chosen.delay_reply_seconds))
        if chosen.no_charset:
            wrapped = _without_charset(wrapped)
        if chosen.bom:
            wrapped = _with_bom(wrapped)
        return wrapped

    async def _drop(self, scope: Scope, receive: Receive, exchange: Exchange) -> None:
        """Close the connection before any response and wait until uvicorn notices."""
        exchange.status_code = None
        exchange.finish()
        self._close(scope)
        await _wait_for_disconnect(receive)

    def _close(self, scope: Scope) -> None:
        if self._close_connection is None or not self._close_connection(scope):
            raise RuntimeError(
                "Cannot close the client connection: drop, drop-body and lose-reply faults need "
                "the emulator to run in EmulatorServer."
            )

    async def _send_partial_body(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, fault: Fault, exchange: Exchange
    ) -> None:
        """Run the endpoint, pass on its headers and part of its body, then close the connection."""
        limit = 0
        sent = 0
        closed = False

        async def truncate(message: Message) -> None:
            nonlocal limit, sent, closed
            if closed:
                return
            if message["type"] == "http.response.start":
                limit = _partial_length(_content_length(list(message.get("headers", []))), fault.after_bytes)
                await send(message)
                return
            body: bytes = message.get("body", b"")
            more_body: bool = message.get("more_body", False)
            if sent + len(body) < limit or (not more_body and sent + len(body) <= limit):
                # Only a response without Content-Length can end before the limit.
                sent += len(body)
                await send(message)
                return
            part = body[: limit - sent]
            if part:
                await send({"type": "http.response.body", "body": part, "more_body": True})
            closed = True
            exchange.finish()
            self._close(scope)

        await app(scope, receive, truncate)
        if closed:
            await _wait_for_disconnect(receive)

    async def _send_cut_json(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the endpoint and send its status with the first half of its body."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def collect(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            else:
                chunks.append(message.get("body", b""))

        await app(scope, receive, collect)
        if start is None:
            raise RuntimeError("The endpoint sent no response to cut.")
        body = b"".join(chunks)
        cut = body[: len(body) // 2]
        headers = _replace_header(list(start.get("headers", [])), b"content-length", str(len(cut)).encode())
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": cut, "more_body": False})


async def _discard(message: Message) -> None:
    """Drop a response message, for the lose-reply fault."""


def _delay_reply(send: Send, sleep: Callable[[], Awaitable[None]]) -> Send:
    async def delayed(message: Message) -> None:
        if message["type"] == "http.response.start":
            await sleep()
        await send(message)

    return delayed


def _without_charset(send: Send) -> Send:
    async def plain(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 200:
            headers = _replace_header(list(message.get("headers", [])), b"content-type", PLAIN_TEXT_WITHOUT_CHARSET)
            message = {**message, "headers": headers}
        await send(message)

    return plain


def _with_bom(send: Send) -> Send:
    active = False
    bom_sent = False

    async def prefixed(message: Message) -> None:
        nonlocal active, bom_sent
        if message["type"] == "http.response.start" and message["status"] == 200:
            active = True
            headers = list(message.get("headers", []))
            length = _content_length(headers)
            if length is not None:
                headers = _replace_header(headers, b"content-length", str(length + len(UTF8_BOM)).encode())
            message = {**message, "headers": headers}
        elif message["type"] == "http.response.body" and active and not bom_sent:
            bom_sent = True
            message = {**message, "body": UTF8_BOM + message.get("body", b"")}
        await send(message)

    return prefixed


def _admin_error(status_code: int, errors: list[tuple[str, str]]) -> JSONResponse:
    body = {
        "message": _reason_phrase(status_code),
        "_embedded": {"errors": [{"message": message, "path": path} for message, path in errors]},
    }
    return JSONResponse(status_code=status_code, content=body)


def add_fault_routes(app: FastAPI, state: EmulatorState) -> None:
    """Add ``GET``, ``POST`` and ``DELETE /_emulator/faults`` and ``DELETE /_emulator/faults/{id}``."""

    @app.get("/_emulator/faults")
    async def list_faults() -> list[dict[str, Any]]:
        return [rule.to_dict() for rule in state.faults.rules()]

    @app.post("/_emulator/faults")
    async def add_faults(request: Request) -> Response:
        usage = f'Send a JSON object {{"faults": ["{FAULT_SYNTAX.split(", ")[0]}", ...]}}.'
        try:
            payload = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            log.warning("Rejected a fault request with invalid JSON: %s", error)
            return _admin_error(400, [(f"Invalid JSON: {error}. {usage}", "/")])
        specs = payload.get("faults") if isinstance(payload, dict) else None
        if not isinstance(specs, list) or not specs:
            log.warning("Rejected a fault request without a list of faults")
            return _admin_error(400, [(f"Missing or empty list 'faults'. {usage}", "/faults")])

        parsed: list[Fault] = []
        errors: list[tuple[str, str]] = []
        for index, spec in enumerate(specs):
            if not isinstance(spec, str):
                errors.append((f"Invalid fault {spec!r}: expected a string such as {FAULT_SYNTAX}", f"/faults/{index}"))
                continue
            try:
                parsed.append(parse_fault(spec))
            except ValueError as error:
                errors.append((str(error), f"/faults/{index}"))
        if errors:
            log.warning("Rejected invalid fault rules: %s", "; ".join(message for message, _ in errors))
            return _admin_error(400, errors)
        rules = state.faults.add_all(parsed)
        return JSONResponse(status_code=201, content=[rule.to_dict() for rule in rules])

    @app.delete("/_emulator/faults")
    async def clear_faults() -> dict[str, int]:
        return {"removed": state.faults.clear()}

    @app.delete("/_emulator/faults/{rule_id}")
    async def remove_fault(rule_id: int) -> Response:
        if not state.faults.remove(rule_id):
            return _admin_error(404, [(f"Fault rule {rule_id} not found", f"/{rule_id}")])
        return JSONResponse(content={"removed": 1})
