"""Injected faults as HTTP clients see them, through the Python API, the admin endpoints and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from airflow_provider_sepa.emulator.app import create_app
from airflow_provider_sepa.emulator.config import EmulatorConfig
from airflow_provider_sepa.emulator.faults import JobOutcome
from airflow_provider_sepa.emulator.server import EmulatorServer
from airflow_provider_sepa.emulator.state import EmulatorState, InjectedResponse, RequestContext

from .conftest import FakeClock, bearer, create_job, request_token, run_job, wait_for_job

JOBS_PATH = "/sepa-export/demo/jobs"
UTF8_BOM = b"\xef\xbb\xbf"
# Read timeout of clients that must give up on a delayed reply. The delays are far longer.
SHORT_READ_TIMEOUT = httpx.Timeout(10.0, read=0.5)
LONG_DELAY_SECONDS = 30.0


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it is true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition still false after {timeout} s"
        time.sleep(0.02)


def last_log_entry(server: EmulatorServer) -> dict[str, Any]:
    return server.state.request_log()[-1]


def list_main(client: httpx.Client, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
    return client.get(JOBS_PATH, params={"siteCode": "main"}, headers=headers, **kwargs)


def completed_file(
    server: EmulatorServer, client: httpx.Client, headers: dict[str, str], site_code: str
) -> tuple[str, bytes]:
    """Run a job for ``site_code`` and return its file id and the file's bytes on disk."""
    job = run_job(client, headers, site_code)
    file_id = job["fileId"]
    return file_id, Path(server.state.file_info(file_id)["path"]).read_bytes()


# Error statuses


def test_status_for_next_calls(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    rule = server.faults.respond_with_status("list", 503, times=2)

    statuses = [list_main(client, auth).status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    assert rule.fired == 2
    assert rule.exhausted
    log = server.state.request_log()
    assert [entry["faults"] for entry in log[-3:]] == [["list:503:times=2"], ["list:503:times=2"], []]
    assert [entry["status_code"] for entry in log[-3:]] == [503, 503, 200]


def test_429_has_retry_after(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.faults.respond_with_status("list", 429)
    server.faults.respond_with_status("list", 429, retry_after=7)

    first = list_main(client, auth)
    second = list_main(client, auth)

    assert first.status_code == 429
    assert first.headers["Retry-After"] == "1"
    assert first.json()["fault"]["detail"]["errorcode"] == "gateway.ratelimit.QuotaViolation"
    assert second.status_code == 429
    assert second.headers["Retry-After"] == "7"


@pytest.mark.parametrize("status_code", [502, 503, 504])
def test_gateway_status_body(
    server: EmulatorServer, client: httpx.Client, auth: dict[str, str], status_code: int
) -> None:
    server.faults.respond_with_status("any", status_code)

    response = client.post(JOBS_PATH, json={"siteCode": "main"}, headers=auth)

    assert response.status_code == status_code
    assert response.headers["content-type"] == "application/json"
    fault = response.json()["fault"]
    assert fault["faultstring"]
    assert fault["detail"]["errorcode"].startswith("gateway.")
    assert server.state.job_count() == 0


def test_500_has_error_message_body(server: EmulatorServer, client: httpx.Client) -> None:
    server.faults.respond_with_status("token", 500, retry_after=2)

    response = client.post("/oauth/token", data={"grant_type": "client_credentials"})

    assert response.status_code == 500
    assert response.headers["Retry-After"] == "2"
    body = response.json()
    assert body["status"] == "Internal Server Error"
    assert body["code"] == 500
    assert body["message"]


@pytest.mark.parametrize(
    ("status_code", "key"),
    [(400, "_embedded"), (401, "fault"), (403, "details"), (404, "message"), (409, "message"), (418, "code")],
)
def test_contract_shaped_error_bodies(
    server: EmulatorServer, client: httpx.Client, auth: dict[str, str], status_code: int, key: str
) -> None:
    server.faults.respond_with_status("list", status_code)

    response = list_main(client, auth)

    assert response.status_code == status_code
    assert key in response.json()


def test_status_custom_body(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.faults.respond_with_status("list", 503, body={"message": "maintenance"})
    server.faults.respond_with_status("list", 503, body="upstream down")

    assert list_main(client, auth).json() == {"message": "maintenance"}
    assert list_main(client, auth).text == "upstream down"


def test_status_every_third_call(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.faults.respond_with_status("any", 503, every=3)

    statuses = [list_main(client, auth).status_code for _ in range(7)]

    assert statuses == [200, 200, 503, 200, 200, 503, 200]


def test_status_site_filter(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    rule = server.faults.respond_with_status("any", 503, site_code="shop-de", every=1)

    main_list = list_main(client, auth)
    shop_list = client.get(JOBS_PATH, params={"siteCode": "shop-de"}, headers=auth)
    main_create = client.post(JOBS_PATH, json={"siteCode": "main"}, headers=auth)
    wait_for_job(client, auth, "demo", "main", main_create.json()["id"])
    shop_create = client.post(JOBS_PATH, json={"siteCode": "shop-de"}, headers=auth)

    assert main_list.status_code == 200
    assert shop_list.status_code == 503
    assert main_create.status_code == 201
    assert shop_create.status_code == 503
    assert rule.fired == 2


def test_html_error_page(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.faults.respond_with_html_error("list", retry_after=4)
    server.faults.respond_with_html_error("list", 504)

    first = list_main(client, auth)
    second = list_main(client, auth)

    assert first.status_code == 502
    assert first.headers["content-type"].startswith("text/html")
    assert first.headers["Retry-After"] == "4"
    assert "<h1>502 Bad Gateway</h1>" in first.text
    with pytest.raises(json.JSONDecodeError):
        first.json()
    assert second.status_code == 504
    assert "504 Gateway Timeout" in second.text


def test_request_hook_takes_precedence(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    def teapot(context: RequestContext) -> InjectedResponse | None:
        return InjectedResponse(418, {"message": "hook"}) if context.endpoint == "list_jobs" else None

    server.state.add_request_hook(teapot)
    rule = server.faults.respond_with_status("list", 503)

    assert list_main(client, auth).status_code == 418
    assert rule.fired == 0


# Delays


def test_delay_exceeds_read_timeout(server: EmulatorServer, auth: dict[str, str]) -> None:
    server.faults.delay("list", LONG_DELAY_SECONDS, times=2)

    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{server.url}{JOBS_PATH}", params={"siteCode": "main"}, headers=auth, timeout=SHORT_READ_TIMEOUT)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{server.url}{JOBS_PATH}", params={"siteCode": "main"}, headers=auth, timeout=(10.0, 0.5))


def test_delay_does_not_block_other_requests(
    server: EmulatorServer, client: httpx.Client, auth: dict[str, str]
) -> None:
    rule = server.faults.delay("list", LONG_DELAY_SECONDS, site_code="shop-de")
    slow_url = f"{server.url}{JOBS_PATH}"

    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(httpx.get, slow_url, params={"siteCode": "shop-de"}, headers=auth, timeout=60.0)
        wait_until(lambda: rule.fired == 1)

        fast = list_main(client, auth)
        assert fast.status_code == 200
        assert not slow.done()

        server.faults.clear()
        assert slow.result(timeout=10.0).status_code == 200


def test_delay_before_create_runs_endpoint_later(
    server: EmulatorServer, client: httpx.Client, auth: dict[str, str]
) -> None:
    server.faults.delay("create", LONG_DELAY_SECONDS)

    with pytest.raises(httpx.ReadTimeout):
        client.post(JOBS_PATH, json={"siteCode": "main"}, headers=auth, timeout=SHORT_READ_TIMEOUT)
    assert server.state.job_count() == 0

    server.faults.clear()
    wait_until(lambda: server.state.job_count() == 1)


def test_delay_reply_after_create(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.faults.delay("create", LONG_DELAY_SECONDS, stage="reply")

    with pytest.raises(httpx.ReadTimeout):
        client.post(JOBS_PATH, json={"siteCode": "main"}, headers=auth, timeout=SHORT_READ_TIMEOUT)

    wait_until(lambda: server.state.job_count() == 1)


def test_delay_combines_with_status(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.faults.delay("list", 0.3)
    server.faults.respond_with_status("list", 503)

    started = time.monotonic()
    response = list_main(client, auth)
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert elapsed >= 0.25
    assert last_log_entry(server)["faults"] == ["list:delay=0.3", "list:503"]


# Dropped connections


def test_drop_before_reply(server: EmulatorServer, auth: dict[str, str]) -> None:
    server.faults.drop_connection("list", times=2)
    url = f"{server.url}{JOBS_PATH}"

    with pytest.raises(requests.exceptions.ConnectionError) as raised:
        requests.get(url, params={"siteCode": "main"}, headers=auth, timeout=10.0)
    with pytest.raises(httpx.RemoteProtocolError) as httpx_raised:
        httpx.get(url, params={"siteCode": "main"}, headers=auth, timeout=10.0)

    assert "without response" in str(raised.value)
    assert "without sending a response" in str(httpx_raised.value)
    entry = last_log_entry(server)
    assert entry["status_code"] is None
    assert entry["faults"] == ["list:drop:times=2"]
    assert requests.get(url, params={"siteCode": "main"}, headers=auth, timeout=10.0).status_code == 200


def test_drop_create_creates_no_job(server: EmulatorServer, auth: dict[str, str]) -> None:
    server.faults.drop_connection("create")

    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{server.url}{JOBS_PATH}", json={"siteCode": "main"}, headers=auth, timeout=10.0)

    assert server.state.job_count() == 0


def test_drop_token_request(server: EmulatorServer) -> None:
    server.faults.drop_connection("token")

    # The closed socket reaches the client as a clean close or, when the server had not read
    # the whole form body yet, as a reset; both mean no reply.
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        request_token(server)

    assert request_token(server)


def test_drop_during_file_body(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    file_id, data = completed_file(server, client, auth, "main")
    server.faults.drop_during_body(after_bytes=1000)
    received = bytearray()

    with (
        pytest.raises(httpx.RemoteProtocolError, match="without sending complete message body"),
        client.stream("GET", f"/sepa-export/demo/files/{file_id}", headers=auth) as response,
    ):
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == len(data)
        for chunk in response.iter_raw():
            received += chunk

    assert bytes(received) == data[:1000]
    entry = last_log_entry(server)
    assert entry["status_code"] == 200
    assert entry["faults"] == ["download:drop-body=1000"]


def test_drop_during_body_default_half(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    file_id, data = completed_file(server, client, auth, "main")
    server.faults.drop_during_body()

    with pytest.raises(requests.exceptions.ChunkedEncodingError) as raised:
        requests.get(f"{server.url}/sepa-export/demo/files/{file_id}", headers=auth, timeout=10.0)

    half = len(data) // 2
    assert f"IncompleteRead({half} bytes read, {len(data) - half} more expected)" in str(raised.value)


def test_drop_during_body_never_sends_all(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    file_id, data = completed_file(server, client, auth, "main")
    server.faults.drop_during_body(after_bytes=len(data) + 100)
    received = bytearray()

    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("GET", f"/sepa-export/demo/files/{file_id}", headers=auth) as response,
    ):
        for chunk in response.iter_raw():
            received += chunk

    assert bytes(received) == data[:-1]


def test_drop_during_json_body(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.faults.drop_during_body("list", after_bytes=1)

    with pytest.raises(httpx.RemoteProtocolError):
        list_main(client, auth)


def test_lose_create_reply(server: EmulatorServer, auth: dict[str, str]) -> None:
    rule = server.faults.lose_reply("create")
    url = f"{server.url}{JOBS_PATH}"

    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(url, json={"siteCode": "main"}, headers=auth, timeout=10.0)

    jobs = server.state.jobs()
    assert len(jobs) == 1
    assert jobs[0]["siteCode"] == "main"
    assert rule.fired == 1
    entry = last_log_entry(server)
    assert entry["endpoint"] == "create_job"
    assert entry["status_code"] is None
    assert entry["faults"] == ["create:lose-reply"]
    retry = requests.post(url, json={"siteCode": "main"}, headers=auth, timeout=10.0)
    assert retry.status_code == 409


def test_lose_token_reply_issues_token(server: EmulatorServer) -> None:
    server.faults.lose_reply("token")

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        request_token(server)

    assert len(server.state.issued_tokens()) == 1


def test_drop_without_server_raises() -> None:
    state = EmulatorState(EmulatorConfig())
    state.faults.drop_connection("token")
    app = create_app(state)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/oauth/token",
        "raw_path": b"/oauth/token",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        with pytest.raises(RuntimeError, match="need the emulator to run in EmulatorServer"):
            asyncio.run(app(scope, receive, send))
    finally:
        state.close()
    # Starlette's error middleware sends 500 before it re-raises.
    assert sent[0]["status"] == 500


# Malformed bodies


def test_malformed_json_list(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    run_job(client, auth, "main")
    complete_body = list_main(client, auth).content
    server.faults.send_malformed_json("list")

    response = list_main(client, auth)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.content == complete_body[: len(complete_body) // 2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)


def test_malformed_json_create_creates_job(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.faults.send_malformed_json("create")

    response = client.post(JOBS_PATH, json={"siteCode": "main"}, headers=auth)

    assert response.status_code == 201
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert server.state.job_count() == 1
    assert response.text.startswith('{"id":')


def test_malformed_json_token(server: EmulatorServer, client: httpx.Client) -> None:
    server.faults.send_malformed_json("token")
    form = {
        "grant_type": "client_credentials",
        "client_id": server.config.client_id,
        "client_secret": server.config.client_secret,
    }

    response = client.post("/oauth/token", data=form)

    assert response.status_code == 200
    assert response.text.startswith('{"access_token":')
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert len(server.state.issued_tokens()) == 1


# File body and headers


def test_bom_on_download(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    file_id, data = completed_file(server, client, auth, "main")
    server.faults.add_utf8_bom()

    first = client.get(f"/sepa-export/demo/files/{file_id}", headers=auth)
    second = client.get(f"/sepa-export/demo/files/{file_id}", headers=auth)

    assert first.status_code == 200
    assert first.content == UTF8_BOM + data
    assert int(first.headers["content-length"]) == len(data) + 3
    assert first.headers["content-type"] == "text/plain;charset=UTF-8"
    assert second.content == data


def test_bom_per_file(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    main_file, main_data = completed_file(server, client, auth, "main")
    shop_file, shop_data = completed_file(server, client, auth, "shop-de")
    server.faults.add_utf8_bom(file_id=shop_file, every=1)

    for _ in range(2):
        assert client.get(f"/sepa-export/demo/files/{main_file}", headers=auth).content == main_data
        assert client.get(f"/sepa-export/demo/files/{shop_file}", headers=auth).content == UTF8_BOM + shop_data


def test_no_charset_on_download(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    file_id, data = completed_file(server, client, auth, "main")
    server.faults.drop_charset(times=2)

    responses = [client.get(f"/sepa-export/demo/files/{file_id}", headers=auth) for _ in range(3)]

    assert [response.headers["content-type"] for response in responses] == [
        "text/plain",
        "text/plain",
        "text/plain;charset=UTF-8",
    ]
    assert all(response.content == data for response in responses)


def test_bom_and_no_charset_combine(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    file_id, data = completed_file(server, client, auth, "main")
    server.faults.add_utf8_bom()
    server.faults.drop_charset()

    response = client.get(f"/sepa-export/demo/files/{file_id}", headers=auth)

    assert response.headers["content-type"] == "text/plain"
    assert response.content == UTF8_BOM + data
    assert last_log_entry(server)["faults"] == ["download:bom", "download:no-charset"]


def test_bom_with_drop_during_body(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    file_id, data = completed_file(server, client, auth, "main")
    server.faults.add_utf8_bom()
    server.faults.drop_during_body(after_bytes=100)
    received = bytearray()

    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("GET", f"/sepa-export/demo/files/{file_id}", headers=auth) as response,
    ):
        assert int(response.headers["content-length"]) == len(data) + 3
        for chunk in response.iter_raw():
            received += chunk

    assert bytes(received) == UTF8_BOM + data[:100]


def test_bom_skips_error_responses(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    rule = server.faults.add_utf8_bom()

    response = client.get("/sepa-export/demo/files/unknown-file", headers=auth)

    assert response.status_code == 404
    assert response.json() == {"message": "Given resource has not been found."}
    assert rule.fired == 1


# Tokens


def test_shorten_token_lifetime(start_server: Callable[..., EmulatorServer]) -> None:
    clock = FakeClock()
    server = start_server(clock=clock)
    server.faults.shorten_token_lifetime(3)
    form = {
        "grant_type": "client_credentials",
        "client_id": server.config.client_id,
        "client_secret": server.config.client_secret,
    }

    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        short = client.post("/oauth/token", data=form).json()
        normal = client.post("/oauth/token", data=form).json()
        assert short["expires_in"] == 3
        assert normal["expires_in"] == 14399
        assert list_main(client, bearer(short["access_token"])).status_code == 200

        clock.advance(3)
        expired = list_main(client, bearer(short["access_token"]))
        assert expired.status_code == 401
        assert expired.json()["fault"]["faultstring"] == "Access Token expired"
        assert list_main(client, bearer(normal["access_token"])).status_code == 200
    assert server.state.request_log()[0]["faults"] == ["token:lifetime=3"]


def test_set_token_lifetime(start_server: Callable[..., EmulatorServer]) -> None:
    clock = FakeClock()
    server = start_server(clock=clock)
    old_token = request_token(server)

    server.state.set_token_lifetime(5)
    new_token = request_token(server)
    clock.advance(5)

    assert server.state.token_lifetime_seconds == 5
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        assert list_main(client, bearer(new_token)).status_code == 401
        assert list_main(client, bearer(old_token)).status_code == 200
    with pytest.raises(ValueError, match="Invalid token lifetime"):
        server.state.set_token_lifetime(0)


def test_revoke_tokens_before_request(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.faults.revoke_tokens_before("list")

    revoked = list_main(client, auth)
    fresh = list_main(client, bearer(request_token(server)))

    assert revoked.status_code == 401
    assert revoked.json()["fault"]["faultstring"] == "Invalid access token"
    assert fresh.status_code == 200


def test_expire_tokens_before_request(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.faults.expire_tokens_before("any")

    expired = client.post(JOBS_PATH, json={"siteCode": "main"}, headers=auth)

    assert expired.status_code == 401
    assert expired.json()["fault"]["faultstring"] == "Access Token expired"
    assert server.state.job_count() == 0


# Jobs


@pytest.mark.parametrize(
    ("outcome", "status", "has_file"),
    [
        (JobOutcome.FAILED, "FAILED", False),
        (JobOutcome.COMPLETED_WITHOUT_FILE, "COMPLETED", False),
        (JobOutcome.UNKNOWN_STATUS, "WEIRD_STATE", True),
        (JobOutcome.UNKNOWN_STATUS_WITHOUT_FILE, "WEIRD_STATE", False),
    ],
)
def test_job_outcome(
    server: EmulatorServer,
    client: httpx.Client,
    auth: dict[str, str],
    outcome: JobOutcome,
    status: str,
    has_file: bool,
) -> None:
    server.faults.end_jobs_with(outcome)

    faulted = run_job(client, auth, "main")
    normal = run_job(client, auth, "main")

    assert faulted["status"] == status
    assert faulted["active"] is False
    assert "completedAt" in faulted
    assert ("fileId" in faulted) is has_file
    if outcome is JobOutcome.FAILED:
        assert faulted["ordersExportedCount"] == 0
    else:
        assert faulted["ordersExportedCount"] == normal["ordersExportedCount"] > 0
    if has_file:
        download = client.get(f"/sepa-export/demo/files/{faulted['fileId']}", headers=auth)
        assert download.status_code == 200
    assert normal["status"] == "COMPLETED"
    assert "fileId" in normal
    create_entries = [entry for entry in server.state.request_log() if entry["endpoint"] == "create_job"]
    assert create_entries[0]["faults"] == [f"create:job={outcome.value}"]
    assert create_entries[1]["faults"] == []


def test_job_outcome_custom_status_per_site(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    rule = server.faults.end_jobs_with("failed", status="ERROR", site_code="shop-de", times=2)

    main_job = run_job(client, auth, "main")
    shop_jobs = [run_job(client, auth, "shop-de") for _ in range(3)]

    assert main_job["status"] == "COMPLETED"
    assert [job["status"] for job in shop_jobs] == ["ERROR", "ERROR", "COMPLETED"]
    assert rule.fired == 2


def test_job_outcome_direct_state_call(server: EmulatorServer) -> None:
    server.faults.end_jobs_with("unknown-no-file", status="PARTIAL")

    job = server.state.create_job("demo", "main")

    wait_until(lambda: not server.state.jobs()[0]["active"])
    details = server.state.jobs()[0]
    assert details["jobId"] == job.job_id
    assert details["status"] == "PARTIAL"
    assert "fileId" not in details


def test_newer_jobs_push_job_off_first_page(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.faults.add_newer_jobs(16)

    job_id = create_job(client, auth, "main")

    first_page = client.get(JOBS_PATH, params={"siteCode": "main", "pageNumber": 1, "pageSize": 16}, headers=auth)
    second_page = client.get(JOBS_PATH, params={"siteCode": "main", "pageNumber": 2, "pageSize": 16}, headers=auth)
    assert len(first_page.json()) == 16
    assert job_id not in [job["jobId"] for job in first_page.json()]
    assert [job["jobId"] for job in second_page.json()] == [job_id]
    job_created_at = second_page.json()[0]["createdAt"]
    for newer in first_page.json():
        assert newer["status"] == "COMPLETED"
        assert newer["active"] is False
        assert "fileId" not in newer
        assert newer["createdAt"] >= job_created_at
    assert server.state.job_count(site_code="main") == 17
    # The added jobs are finished, so the new job still completes and blocks nothing else.
    assert wait_for_job(client, auth, "demo", "main", job_id)["status"] == "COMPLETED"


def test_insert_newer_jobs(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    job = run_job(client, auth, "shop-at")

    added = server.state.insert_newer_jobs(job["jobId"], 3)

    listed = client.get(JOBS_PATH, params={"siteCode": "shop-at"}, headers=auth).json()
    assert [item["jobId"] for item in listed] == [*reversed(added), job["jobId"]]
    with pytest.raises(KeyError):
        server.state.insert_newer_jobs("no-such-job", 1)
    with pytest.raises(ValueError, match="Invalid count"):
        server.state.insert_newer_jobs(job["jobId"], 0)


# Reset and configuration


def test_clear_resets(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.faults.respond_with_status("any", 503, every=1)
    server.faults.end_jobs_with("failed", every=1)
    assert list_main(client, auth).status_code == 503

    assert server.faults.clear() == 2

    assert list_main(client, auth).status_code == 200
    assert run_job(client, auth, "main")["status"] == "COMPLETED"
    assert last_log_entry(server)["faults"] == []


def test_config_faults_active_from_start(start_server: Callable[..., EmulatorServer]) -> None:
    server = start_server(faults=["list:503", "create:job=failed"])
    headers = bearer(request_token(server))

    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        assert list_main(client, headers).status_code == 503
        assert run_job(client, headers, "main")["status"] == "FAILED"


def test_admin_requests_not_faulted(server: EmulatorServer, client: httpx.Client) -> None:
    server.faults.drop_connection("any", every=1)

    response = client.get("/_emulator/health")

    assert response.status_code == 200
    assert server.state.request_log() == []


# Admin endpoints


def test_admin_add_and_list_faults(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    added = client.post("/_emulator/faults", json={"faults": ["list:503:times=2", "create:lose-reply"]})

    assert added.status_code == 201
    assert [rule["spec"] for rule in added.json()] == ["list:503:times=2", "create:lose-reply"]
    assert [list_main(client, auth).status_code for _ in range(3)] == [503, 503, 200]
    listed = client.get("/_emulator/faults").json()
    assert listed[0]["fired"] == 2
    assert listed[0]["exhausted"] is True
    assert listed[1]["fired"] == 0
    assert listed[1]["kind"] == "lose-reply"


def test_admin_rejects_invalid_faults(server: EmulatorServer, client: httpx.Client) -> None:
    response = client.post("/_emulator/faults", json={"faults": ["list:503", "list:bom", 7]})

    assert response.status_code == 400
    errors = response.json()["_embedded"]["errors"]
    assert [error["path"] for error in errors] == ["/faults/1", "/faults/2"]
    assert "does not apply to the list endpoint" in errors[0]["message"]
    assert server.faults.rules() == []


@pytest.mark.parametrize(
    "content",
    [b"not json", b'["list:503"]', b'{"faults": []}', b'{"faults": "list:503"}'],
)
def test_admin_rejects_invalid_body(server: EmulatorServer, client: httpx.Client, content: bytes) -> None:
    response = client.post("/_emulator/faults", content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert '{"faults": ["ENDPOINT:ACTION[:OPTION...]", ...]}' in response.json()["_embedded"]["errors"][0]["message"]


def test_admin_delete_faults(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    rules = server.faults.add_all(["list:503:every=1", "token:drop", "create:job=failed"])

    removed_one = client.delete(f"/_emulator/faults/{rules[0].id}")
    removed_again = client.delete(f"/_emulator/faults/{rules[0].id}")

    assert removed_one.status_code == 200
    assert removed_again.status_code == 404
    assert list_main(client, auth).status_code == 200
    assert client.delete("/_emulator/faults").json() == {"removed": 2}
    assert client.get("/_emulator/faults").json() == []


# Command line

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
CLI_START_TIMEOUT_SECONDS = 30.0
CLI_SECRET = "fault-test-secret"


@pytest.fixture
def cli_processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Collect started emulator processes and stop any that a test left running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _cli_command(tmp_path: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), env.get("PYTHONPATH")]))
    env["SEPA_EMULATOR_CLIENT_SECRET"] = CLI_SECRET
    command = [sys.executable, "-m", "airflow_provider_sepa.emulator", "--port", "0", *args]
    return command, env


def test_cli_faults(tmp_path: Path, cli_processes: list[subprocess.Popen[str]]) -> None:
    port_file = tmp_path / "port"
    command, env = _cli_command(
        tmp_path,
        "--port-file",
        str(port_file),
        "--job-duration",
        "0.2",
        "--fault",
        "list:503:times=2",
        "--fault",
        "create:lose-reply:1",
    )
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    cli_processes.append(process)
    deadline = time.monotonic() + CLI_START_TIMEOUT_SECONDS
    while not port_file.exists():
        assert process.poll() is None, "emulator CLI exited before serving"
        assert time.monotonic() < deadline, "emulator CLI did not write its port file"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{int(port_file.read_text())}"

    form = {"grant_type": "client_credentials", "client_id": "sepa-demo-client", "client_secret": CLI_SECRET}
    headers = bearer(httpx.post(f"{url}/oauth/token", data=form, timeout=10.0).json()["access_token"])
    statuses = [
        httpx.get(f"{url}{JOBS_PATH}", params={"siteCode": "main"}, headers=headers, timeout=10.0).status_code
        for _ in range(3)
    ]
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{url}{JOBS_PATH}", json={"siteCode": "main"}, headers=headers, timeout=10.0)
    jobs = httpx.get(f"{url}/_emulator/jobs", timeout=10.0).json()
    rules = httpx.get(f"{url}/_emulator/faults", timeout=10.0).json()

    assert statuses == [503, 503, 200]
    assert len(jobs) == 1
    assert [rule["spec"] for rule in rules] == ["list:503:times=2", "create:lose-reply"]
    assert all(rule["exhausted"] for rule in rules)


def test_cli_rejects_invalid_fault(tmp_path: Path) -> None:
    command, env = _cli_command(tmp_path, "--fault", "list:bom")

    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    assert completed.returncode == 2
    assert "argument --fault: Invalid fault 'list:bom'" in completed.stderr
    assert "use download" in completed.stderr
