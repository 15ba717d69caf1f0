"""Request log, admin endpoints, request hooks, seeding and the server lifecycle."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import httpx
import pytest

from airflow_provider_sepa.emulator.config import EmulatorConfig
from airflow_provider_sepa.emulator.orders import iter_orders
from airflow_provider_sepa.emulator.sepa_xml import PAIN_008_NAMESPACE, summarize_pain008
from airflow_provider_sepa.emulator.server import EmulatorServer
from airflow_provider_sepa.emulator.state import EmulatorState, InjectedResponse, JobConflictError, RequestContext

from .conftest import bearer, request_token, run_job

NS = {"p": PAIN_008_NAMESPACE}


def test_request_log_entries(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    client.get("/sepa-export/demo/jobs", params={"siteCode": "main", "sort": "ASC"}, headers=auth)
    client.post("/sepa-export/demo/jobs", json={"siteCode": "main"}, headers=auth)

    log = server.state.request_log()

    assert [entry["endpoint"] for entry in log] == ["token", "list_jobs", "create_job"]
    assert [entry["status_code"] for entry in log] == [200, 200, 201]
    assert log[1]["method"] == "GET"
    assert log[1]["path"] == "/sepa-export/demo/jobs"
    assert log[1]["query"] == {"siteCode": "main", "sort": "ASC"}
    assert all(isinstance(entry["timestamp"], float) for entry in log)


def test_request_log_has_no_secrets(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    job = run_job(client, auth, "main")
    client.get(f"/sepa-export/demo/files/{job['fileId']}", headers=auth)
    secrets = [server.config.client_secret, *server.state.issued_tokens()]

    python_view = repr(server.state.request_log())
    http_view = client.get("/_emulator/requests").text
    admin_views = client.get("/_emulator/jobs").text + client.get("/_emulator/health").text

    for secret in secrets:
        assert secret not in python_view
        assert secret not in http_view
        assert secret not in admin_views


def test_http_request_log_redacts_query(server: EmulatorServer, client: httpx.Client) -> None:
    token = request_token(server)
    client.get("/sepa-export/demo/jobs", params={"siteCode": "main", "hint": token, "client_secret": "x"})

    entries = client.get("/_emulator/requests").json()

    assert entries[-1]["query"] == {"siteCode": "main", "hint": "[REDACTED]", "client_secret": "[REDACTED]"}
    assert server.state.request_log()[-1]["query"]["hint"] == token


def test_admin_requests_not_logged(server: EmulatorServer, client: httpx.Client) -> None:
    client.get("/_emulator/health")
    client.get("/_emulator/jobs")

    assert server.state.request_log() == []


def test_admin_health(server: EmulatorServer, client: httpx.Client) -> None:
    response = client.get("/_emulator/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "tenant": "demo", "sites": ["main", "shop-de", "shop-at", "shop-fr"]}


def test_admin_jobs_and_file(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    job = run_job(client, auth, "shop-at")

    jobs = client.get("/_emulator/jobs").json()
    file_response = client.get(f"/_emulator/files/{job['fileId']}")

    assert jobs == [{**job, "tenant": "demo"}]
    assert file_response.status_code == 200
    metadata = file_response.json()
    info = server.state.file_info(job["fileId"])
    assert metadata["sha256"] == info["sha256"]
    assert metadata["size"] == info["size"]
    assert metadata["nb_of_txs"] == job["ordersExportedCount"]
    assert metadata["ctrl_sum"] == str(info["ctrl_sum"])
    assert metadata["site_code"] == "shop-at"
    assert metadata["job_id"] == job["jobId"]


def test_admin_unknown_file_404(client: httpx.Client) -> None:
    response = client.get("/_emulator/files/missing")

    assert response.status_code == 404


def test_file_info_unknown_raises(server: EmulatorServer) -> None:
    with pytest.raises(KeyError):
        server.state.file_info("missing")


def test_jobs_accessors_filter(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    run_job(client, auth, "main")
    run_job(client, auth, "shop-de")

    assert server.state.job_count() == 2
    assert server.state.job_count(tenant="demo", site_code="shop-de") == 1
    assert server.state.job_count(tenant="other") == 0
    assert [job["siteCode"] for job in server.state.jobs(tenant="demo")] == ["main", "shop-de"]
    assert server.state.jobs(tenant="other") == []


def test_request_hook_injects_response(server: EmulatorServer, client: httpx.Client, auth: dict[str, str]) -> None:
    seen: list[RequestContext] = []

    def fail_list(context: RequestContext) -> InjectedResponse | None:
        seen.append(context)
        if context.endpoint == "list_jobs":
            return InjectedResponse(503, {"message": "injected"}, {"Retry-After": "1"})
        return None

    server.state.add_request_hook(fail_list)
    failed = client.get("/sepa-export/demo/jobs", params={"siteCode": "main"}, headers=auth)
    created = client.post("/sepa-export/demo/jobs", json={"siteCode": "main"}, headers=auth)
    server.state.clear_request_hooks()
    recovered = client.get("/sepa-export/demo/jobs", params={"siteCode": "main"}, headers=auth)

    assert failed.status_code == 503
    assert failed.json() == {"message": "injected"}
    assert failed.headers["retry-after"] == "1"
    assert created.status_code == 201
    assert recovered.status_code == 200
    assert [context.endpoint for context in seen] == ["list_jobs", "create_job"]
    assert [entry["status_code"] for entry in server.state.request_log()[-3:]] == [503, 201, 200]


def test_same_seed_same_transactions(start_server) -> None:
    exports = []
    for _ in range(2):
        server = start_server(seed=99)
        headers = bearer(request_token(server))
        with httpx.Client(base_url=server.url) as client:
            job = run_job(client, headers, "shop-fr")
            content = client.get(f"/sepa-export/demo/files/{job['fileId']}", headers=headers).content
        exports.append(_transactions(content))

    expected = [
        (order.end_to_end_id, f"{order.amount:.2f}", order.debtor_name, order.debtor_iban)
        for order in iter_orders(99, "shop-fr", len(exports[0]))
    ]
    assert exports[0] == exports[1]
    assert exports[0] == expected


def test_other_seed_other_transactions(start_server) -> None:
    exports = []
    for seed in (1, 2):
        server = start_server(seed=seed, orders_per_site=10)
        headers = bearer(request_token(server))
        with httpx.Client(base_url=server.url) as client:
            job = run_job(client, headers, "main")
            content = client.get(f"/sepa-export/demo/files/{job['fileId']}", headers=headers).content
        exports.append(_transactions(content))

    assert len(exports[0]) == len(exports[1]) == 10
    assert exports[0] != exports[1]


def _transactions(content: bytes) -> list[tuple[str, str, str, str]]:
    """Return (EndToEndId, amount, debtor name, debtor IBAN) of each transaction in a file."""
    root = ElementTree.fromstring(content)
    return [
        (
            transaction.findtext("p:PmtId/p:EndToEndId", namespaces=NS) or "",
            transaction.findtext("p:InstdAmt", namespaces=NS) or "",
            transaction.findtext("p:Dbtr/p:Nm", namespaces=NS) or "",
            transaction.findtext("p:DbtrAcct/p:Id/p:IBAN", namespaces=NS) or "",
        )
        for transaction in root.iterfind(".//p:DrctDbtTxInf", NS)
    ]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com", "localhost"])
def test_server_rejects_non_loopback_host(host: str) -> None:
    with pytest.raises(ValueError, match="host"):
        EmulatorServer(host=host)


def test_server_url_and_stop(tmp_path) -> None:
    server = EmulatorServer(EmulatorConfig(job_duration_seconds=0.1))
    with pytest.raises(RuntimeError):
        _ = server.url

    with server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{server.url}/_emulator/health").status_code == 200
        data_dir = server.state.data_dir
        assert data_dir.is_dir()

    assert not data_dir.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/_emulator/health", timeout=2.0)


def test_given_data_dir_kept(start_server, tmp_path) -> None:
    server = start_server(data_dir=tmp_path / "exports")
    headers = bearer(request_token(server))
    with httpx.Client(base_url=server.url) as client:
        job = run_job(client, headers, "main")
    server.stop()

    kept_file = tmp_path / "exports" / f"{job['fileId']}.xml"
    assert kept_file.is_file()
    assert summarize_pain008(kept_file.read_bytes())["is_consistent"] is True


def test_state_close_removes_temp_dir() -> None:
    state = EmulatorState(EmulatorConfig())
    data_dir = state.data_dir
    assert data_dir.is_dir()

    state.close()

    assert not data_dir.exists()


@pytest.mark.parametrize(
    "overrides",
    [
        {"tenant": "Demo"},
        {"tenant": ""},
        {"client_scopes": ("sepaexport.admin",)},
        {"sites": ()},
        {"sites": ("bad site",)},
        {"orders_per_site": (10, 5)},
        {"site_orders": {"big": -1}},
        {"token_lifetime_seconds": 0},
        {"job_duration_seconds": -1},
        {"max_active_jobs_per_tenant": 0},
    ],
    ids=lambda overrides: json.dumps(overrides),
)
def test_config_rejects_invalid_values(overrides: dict) -> None:
    with pytest.raises(ValueError):
        EmulatorConfig(**overrides)


def test_active_job_limit_raised() -> None:
    state = EmulatorState(EmulatorConfig(job_duration_seconds=60, max_active_jobs_per_tenant=3))
    try:
        jobs = [state.create_job("demo", "main") for _ in range(3)]

        with pytest.raises(JobConflictError):
            state.create_job("demo", "shop-de")
        other_tenant_job = state.create_job("other", "main")
    finally:
        state.close()

    assert len({job.job_id for job in jobs}) == 3
    assert all(job.active for job in jobs)
    assert other_tenant_job.active
    assert state.job_count(tenant="demo") == 3


def test_config_secret_random_and_hidden() -> None:
    first, second = EmulatorConfig(), EmulatorConfig()

    assert first.client_secret != second.client_secret
    assert len(first.client_secret) >= 32
    assert first.client_secret not in repr(first)
