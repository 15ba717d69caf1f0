"""List and create endpoints: validation, paging, sorting, the 409 rule and job completion."""

from __future__ import annotations

import re
import shutil
import time

import httpx
import pytest

from airflow_provider_sepa.emulator.server import EmulatorServer

from .conftest import FakeClock, bearer, create_job, request_token, run_job, wait_for_job

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def shared_auth(shared_server: EmulatorServer) -> dict[str, str]:
    return bearer(request_token(shared_server))


def _errors(response: httpx.Response) -> list[dict[str, str]]:
    body = response.json()
    assert body["message"] == "Bad Request"
    return body["_embedded"]["errors"]


def test_list_missing_site_code_body(shared_client: httpx.Client, shared_auth: dict[str, str]) -> None:
    response = shared_client.get("/sepa-export/demo/jobs", headers=shared_auth)

    assert response.status_code == 400
    assert response.json() == {
        "message": "Bad Request",
        "_embedded": {
            "errors": [{"message": "Required argument [String siteCode] not specified", "path": "/siteCode"}]
        },
    }


@pytest.mark.parametrize(
    ("params", "error_path"),
    [
        ({"siteCode": ""}, "/siteCode"),
        ({"siteCode": "main", "pageNumber": "0", "pageSize": "5"}, "/pageNumber"),
        ({"siteCode": "main", "pageNumber": "-1", "pageSize": "5"}, "/pageNumber"),
        ({"siteCode": "main", "pageNumber": "abc", "pageSize": "5"}, "/pageNumber"),
        ({"siteCode": "main", "pageNumber": "1.5", "pageSize": "5"}, "/pageNumber"),
        ({"siteCode": "main", "pageSize": "0"}, "/pageSize"),
        ({"siteCode": "main", "pageSize": "2147483648"}, "/pageSize"),
        ({"siteCode": "main", "pageNumber": "2"}, "/pageSize"),
        ({"siteCode": "main", "sort": "asc"}, "/sort"),
        ({"siteCode": "main", "sort": "RANDOM"}, "/sort"),
    ],
    ids=[
        "empty siteCode",
        "pageNumber zero",
        "pageNumber negative",
        "pageNumber text",
        "pageNumber decimal",
        "pageSize zero",
        "pageSize above int32",
        "pageNumber without pageSize",
        "sort lowercase",
        "sort unknown",
    ],
)
def test_list_invalid_query_400(
    shared_client: httpx.Client, shared_auth: dict[str, str], params: dict[str, str], error_path: str
) -> None:
    response = shared_client.get("/sepa-export/demo/jobs", params=params, headers=shared_auth)

    assert response.status_code == 400
    assert [error["path"] for error in _errors(response)] == [error_path]


def test_list_error_message_names_argument(shared_client: httpx.Client, shared_auth: dict[str, str]) -> None:
    params = {"siteCode": "main", "pageNumber": "x", "pageSize": "5"}

    response = shared_client.get("/sepa-export/demo/jobs", params=params, headers=shared_auth)

    assert "[pageNumber]" in _errors(response)[0]["message"]
    assert "[x]" in _errors(response)[0]["message"]


def test_list_reports_all_errors(shared_client: httpx.Client, shared_auth: dict[str, str]) -> None:
    params = {"pageSize": "0", "sort": "up"}

    response = shared_client.get("/sepa-export/demo/jobs", params=params, headers=shared_auth)

    assert response.status_code == 400
    assert [error["path"] for error in _errors(response)] == ["/siteCode", "/pageSize", "/sort"]


def test_list_unknown_site_empty(shared_client: httpx.Client, shared_auth: dict[str, str]) -> None:
    response = shared_client.get("/sepa-export/demo/jobs", params={"siteCode": "nowhere"}, headers=shared_auth)

    assert response.status_code == 200
    assert response.json() == []


def test_create_returns_uuid(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    response = client.post("/sepa-export/demo/jobs", json={"siteCode": "main"}, headers=auth)

    assert response.status_code == 201
    assert set(response.json()) == {"id"}
    assert UUID4.fullmatch(response.json()["id"])
    assert server.state.job_count(tenant="demo", site_code="main") == 1


def test_job_in_progress_details(client: httpx.Client, auth: dict[str, str]) -> None:
    job_id = create_job(client, auth, "main")

    jobs = client.get("/sepa-export/demo/jobs", params={"siteCode": "main"}, headers=auth).json()

    assert len(jobs) == 1
    job = jobs[0]
    assert job["jobId"] == job_id
    assert job["status"] == "IN_PROGRESS"
    assert job["active"] is True
    assert job["siteCode"] == "main"
    assert job["ordersExportedCount"] == 0
    assert TIMESTAMP.fullmatch(job["createdAt"])
    assert "fileId" not in job
    assert "completedAt" not in job


def test_job_completes_after_duration(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    started = time.monotonic()

    job = run_job(client, auth, "shop-de")

    assert time.monotonic() - started >= server.config.job_duration_seconds
    assert job["status"] == "COMPLETED"
    assert job["active"] is False
    assert UUID4.fullmatch(job["fileId"])
    assert TIMESTAMP.fullmatch(job["completedAt"])
    assert job["completedAt"] > job["createdAt"]
    info = server.state.file_info(job["fileId"])
    assert job["ordersExportedCount"] == info["nb_of_txs"]
    assert 5 <= job["ordersExportedCount"] <= 40


def test_job_completion_follows_clock(start_server) -> None:
    clock = FakeClock()
    server = start_server(clock=clock, job_duration_seconds=30)
    headers = bearer(request_token(server))
    with httpx.Client(base_url=server.url) as client:
        job_id = create_job(client, headers, "main")
        time.sleep(0.3)
        assert server.state.jobs()[0]["active"] is True

        clock.advance(30)
        job = wait_for_job(client, headers, "demo", "main", job_id)

    assert job["status"] == "COMPLETED"
    assert job["completedAt"] == "2026-05-28T20:27:10.000Z"
    assert job["createdAt"] == "2026-05-28T20:26:40.000Z"


def test_create_conflict_409(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    create_job(client, auth, "main")

    same_site = client.post("/sepa-export/demo/jobs", json={"siteCode": "main"}, headers=auth)
    other_site = client.post("/sepa-export/demo/jobs", json={"siteCode": "shop-at"}, headers=auth)

    expected = {"message": "Another job is in progress. You can have only one job at the same time."}
    assert same_site.status_code == 409
    assert same_site.json() == expected
    assert other_site.status_code == 409
    assert other_site.json() == expected
    assert server.state.job_count() == 1


def test_create_allowed_after_completion(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    run_job(client, auth, "main")

    response = client.post("/sepa-export/demo/jobs", json={"siteCode": "main"}, headers=auth)

    assert response.status_code == 201
    assert server.state.job_count(site_code="main") == 2


def test_conflict_is_per_tenant(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    server.state.add_client("other-client", "other-secret", tenant="other")
    form = {"grant_type": "client_credentials", "client_id": "other-client", "client_secret": "other-secret"}
    other_headers = bearer(client.post("/oauth/token", data=form).json()["access_token"])
    create_job(client, auth, "main")

    response = client.post("/sepa-export/other/jobs", json={"siteCode": "main"}, headers=other_headers)

    assert response.status_code == 201
    assert server.state.job_count(tenant="demo") == 1
    assert server.state.job_count(tenant="other") == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Required property [siteCode] not specified"),
        ({"siteCode": None}, "Required property [siteCode] not specified"),
        ({"siteCode": ""}, "siteCode: size must be at least 1"),
        ({"siteCode": 42}, "siteCode: must be a string"),
        ({"siteCode": "atlantis"}, "Unknown site code [atlantis]"),
    ],
    ids=["missing", "null", "empty", "number", "unknown site"],
)
def test_create_invalid_body_400(
    shared_server: EmulatorServer,
    shared_client: httpx.Client,
    shared_auth: dict[str, str],
    body: dict[str, object],
    message: str,
) -> None:
    jobs_before = shared_server.state.job_count()

    response = shared_client.post("/sepa-export/demo/jobs", json=body, headers=shared_auth)

    assert response.status_code == 400
    assert _errors(response) == [{"message": message, "path": "/siteCode"}]
    assert shared_server.state.job_count() == jobs_before


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b"[1, 2]", b'"main"'], ids=["empty", "broken", "array", "string"]
)
def test_create_malformed_json_400(
    shared_server: EmulatorServer, shared_client: httpx.Client, shared_auth: dict[str, str], content: bytes
) -> None:
    headers = {**shared_auth, "Content-Type": "application/json"}
    jobs_before = shared_server.state.job_count()

    response = shared_client.post("/sepa-export/demo/jobs", content=content, headers=headers)

    assert response.status_code == 400
    assert _errors(response)[0]["path"] == "/"
    assert shared_server.state.job_count() == jobs_before


def test_create_form_body_415(
    shared_server: EmulatorServer, shared_client: httpx.Client, shared_auth: dict[str, str]
) -> None:
    jobs_before = shared_server.state.job_count()

    response = shared_client.post("/sepa-export/demo/jobs", data={"siteCode": "main"}, headers=shared_auth)

    assert response.status_code == 415
    assert shared_server.state.job_count() == jobs_before


def test_list_paging_and_sorting(start_server) -> None:
    clock = FakeClock()
    server = start_server(clock=clock, job_duration_seconds=0)
    headers = bearer(request_token(server))
    job_ids = []
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            job_ids.append(create_job(client, headers, "main"))
            wait_for_job(client, headers, "demo", "main", job_ids[-1])
            clock.advance(1)
        create_job(client, headers, "shop-fr")

        def page(**params: object) -> list[str]:
            response = client.get("/sepa-export/demo/jobs", params={"siteCode": "main", **params}, headers=headers)
            assert response.status_code == 200
            return [job["jobId"] for job in response.json()]

        assert page() == job_ids[::-1]
        assert page(sort="DESC") == job_ids[::-1]
        assert page(sort="ASC") == job_ids
        assert page(pageNumber=1, pageSize=2) == [job_ids[2], job_ids[1]]
        assert page(pageNumber=2, pageSize=2) == [job_ids[0]]
        assert page(pageNumber=2, pageSize=2, sort="ASC") == [job_ids[2]]
        assert page(pageNumber=3, pageSize=2) == []
        assert page(pageSize=1) == [job_ids[2]]


def test_list_default_page_size_16(start_server) -> None:
    server = start_server(job_duration_seconds=0, orders_per_site=1)
    headers = bearer(request_token(server))
    with httpx.Client(base_url=server.url) as client:
        for _ in range(17):
            run_job(client, headers, "main")

        response = client.get("/sepa-export/demo/jobs", params={"siteCode": "main"}, headers=headers)

    assert len(response.json()) == 16
    assert server.state.job_count(site_code="main") == 17


def test_site_without_orders_has_no_file(start_server) -> None:
    server = start_server(site_orders={"empty": 0})
    headers = bearer(request_token(server))
    with httpx.Client(base_url=server.url) as client:
        job = run_job(client, headers, "empty")

    assert job["status"] == "COMPLETED"
    assert job["ordersExportedCount"] == 0
    assert "fileId" not in job


def test_failed_file_generation_ends_job(start_server, tmp_path) -> None:
    data_dir = tmp_path / "files"
    server = start_server(data_dir=data_dir)
    headers = bearer(request_token(server))
    shutil.rmtree(data_dir)
    with httpx.Client(base_url=server.url) as client:
        job = run_job(client, headers, "main")

    assert job["status"] == "FAILED"
    assert job["active"] is False
    assert job["ordersExportedCount"] == 0
    assert "fileId" not in job
    assert "completedAt" in job
