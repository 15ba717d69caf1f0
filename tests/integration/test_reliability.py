"""Fault and bad-input scenarios, run through the operators and the sensor as a DAG uses them.

Every scenario ends with the same three checks. The emulator has no duplicate job for a
site, and no destination contains a partial or temporary file. No log line, XCom value,
rendered template field or exception text contains the client secret or an issued token.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from airflow_provider_sepa.core.errors import (
    SepaExportAuthError,
    SepaExportConfigError,
    SepaExportDownloadError,
    SepaExportError,
    SepaExportInputError,
    SepaExportJobFailedError,
    SepaExportNotFoundError,
    SepaExportResponseError,
    SepaExportScopeError,
    SepaExportServerError,
)
from airflow_provider_sepa.core.retry import RetryPolicy
from airflow_provider_sepa.hooks.sepa_export import SepaExportHook
from airflow_provider_sepa.operators.sepa_export import SepaExportCreateJobOperator, SepaExportDownloadOperator
from airflow_provider_sepa.sensors.sepa_export import SepaExportJobSensor
from tests.integration.conftest import make_context

pytestmark = pytest.mark.integration

SITE = "main"
#: Read timeout of the hooks in these tests, so that a delay fault outlasts it quickly.
READ_TIMEOUT = 1.0


@pytest.fixture(autouse=True)
def fast_client(monkeypatch):
    """Shorten backoff waits and the read timeout; every retry decision stays the same."""
    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, attempt: 0.02)
    monkeypatch.setitem(SepaExportHook.__init__.__kwdefaults__, "read_timeout", READ_TIMEOUT)


@dataclass
class ExportRun:
    """What one create, wait and download sequence produced."""

    job_id: str | None = None
    job: dict[str, Any] | None = None
    download: dict[str, Any] | None = None
    error: BaseException | None = None
    xcom: list[Any] = field(default_factory=list)
    rendered: list[Any] = field(default_factory=list)


class LeakWatch:
    """Collects every text a user could see, for a final scan for secrets."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, value: Any) -> None:
        self.texts.append(value if isinstance(value, str) else json.dumps(value, default=str))

    def find(self, secrets: list[str]) -> list[str]:
        return [secret for secret in secrets for text in self.texts if secret and secret in text]


@pytest.fixture
def leak_watch(emulator, caplog):
    """Capture structlog and stdlib logs at DEBUG; after the test, assert no secret leaked."""
    watch = LeakWatch()
    caplog.set_level(logging.DEBUG)
    with capture_logs() as structlog_events:
        yield watch
    for event in structlog_events:
        watch.add(event)
    watch.add(caplog.text)
    secrets = [emulator.config.client_secret, *emulator.state.issued_tokens()]

    assert watch.find(secrets) == []
    if emulator.state.issued_tokens():
        # Proves the capture works, so that the scan above could fail.
        assert any("Fetched an access token" in text for text in watch.texts)


@pytest.fixture
def export_dir(tmp_path) -> Path:
    return tmp_path / "exports"


@pytest.fixture(autouse=True)
def no_duplicates_or_partials(request, emulator, export_dir):
    """After each scenario: at most one job per site, no partial or temporary files.

    A scenario marked ``injected_jobs`` lets the emulator add finished jobs of its own,
    so there only the jobs created through the create endpoint count.
    """
    yield
    creates = [
        entry for entry in emulator.state.request_log() if entry["method"] == "POST" and entry["path"].endswith("/jobs")
    ]
    if request.node.get_closest_marker("injected_jobs"):
        assert len([entry for entry in creates if entry["status_code"] == 201]) <= 1
    else:
        for site in {job["siteCode"] for job in emulator.state.jobs()}:
            assert emulator.state.job_count(site_code=site) <= 1, f"duplicate jobs for site {site}"
    if export_dir.exists():
        leftovers = [path.name for path in export_dir.rglob("*") if path.is_file() and path.suffix != ".xml"]
        assert leftovers == []
        for path in export_dir.rglob("*.xml"):
            served = Path(emulator.state.file_info(path.stem)["path"]).read_bytes()
            written = path.read_bytes()
            assert written in (served, b"\xef\xbb\xbf" + served), f"partial or altered file {path}"


def run_export(
    leak_watch: LeakWatch,
    export_dir: Path,
    site: str = SITE,
    *,
    try_number: int = 1,
    run_started=None,
    create_kwargs: dict[str, Any] | None = None,
    sensor_kwargs: dict[str, Any] | None = None,
) -> ExportRun:
    """Run create, wait and download with fresh operator instances, as three DAG tasks do."""
    run = ExportRun()
    context = make_context(try_number=try_number, run_started=run_started)
    try:
        create = SepaExportCreateJobOperator(
            task_id="create_job", site_code=site, poll_interval=0.05, timeout=20, **(create_kwargs or {})
        )
        run.job_id = create.execute(context)
        run.rendered.append({name: getattr(create, name) for name in create.template_fields})

        sensor_settings = {"poke_interval": 0.05, "timeout": 20, **(sensor_kwargs or {})}
        sensor = SepaExportJobSensor(task_id="wait_for_job", site_code=site, job_id=run.job_id, **sensor_settings)
        run.job = sensor.execute(context)
        run.rendered.append({name: getattr(sensor, name) for name in sensor.template_fields})

        download = SepaExportDownloadOperator(
            task_id="download_file", file_id=run.job["file_id"], destination=f"{export_dir}/{site}/"
        )
        run.download = download.execute(context)
        run.rendered.append({name: getattr(download, name) for name in download.template_fields})
    except SepaExportError as error:
        run.error = error
        leak_watch.add(str(error))
        leak_watch.add(repr(error))
    run.xcom = list(context["ti"].xcom.values())
    for value in [*run.xcom, *run.rendered, run.job_id, run.job, run.download]:
        leak_watch.add(value)
    return run


def assert_file_matches_server(run: ExportRun, emulator) -> None:
    """The downloaded file exists and is byte-identical to the emulator's copy."""
    assert run.error is None, run.error
    info = emulator.state.file_info(run.job["file_id"])
    path = Path(run.download["path"])

    assert path.read_bytes() == Path(info["path"]).read_bytes()
    assert run.download["sha256"] == info["sha256"]


def statuses(emulator, path_suffix: str) -> list[int]:
    return [entry["status_code"] for entry in emulator.state.request_log() if entry["path"].endswith(path_suffix)]


@pytest.mark.usefixtures("emporix_conn")
class TestTransientFaults:
    @pytest.mark.parametrize("status", [500, 502, 503, 504], ids=["500", "502", "503", "504"])
    def test_list_5xx_retried(self, emulator, leak_watch, export_dir, status):
        emulator.faults.add(f"list:{status}:2")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert statuses(emulator, "/jobs").count(status) == 2

    def test_list_429_honours_retry_after(self, emulator, leak_watch, export_dir):
        emulator.faults.add("list:429:retry-after=1")

        run = run_export(leak_watch, export_dir)
        limited = [entry for entry in emulator.state.request_log() if entry["status_code"] == 429]
        following = emulator.state.request_log()[emulator.state.request_log().index(limited[0]) + 1]

        assert_file_matches_server(run, emulator)
        assert following["timestamp"] - limited[0]["timestamp"] >= 1.0

    def test_token_503_retried(self, emulator, leak_watch, export_dir):
        emulator.faults.add("token:503")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert statuses(emulator, "/oauth/token") == [503, 200]

    def test_token_connection_dropped(self, emulator, leak_watch, export_dir):
        emulator.faults.add("token:drop")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)

    def test_list_html_gateway_page(self, emulator, leak_watch, export_dir):
        emulator.faults.add("list:html=502:2")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)

    def test_list_slower_than_read_timeout(self, emulator, leak_watch, export_dir):
        emulator.faults.add(f"list:delay={READ_TIMEOUT + 1}")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)

    def test_503_every_third_request(self, emulator, leak_watch, export_dir):
        emulator.faults.add("any:503:every=3")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert 503 in [entry["status_code"] for entry in emulator.state.request_log()]

    def test_persistent_5xx_names_endpoint_and_attempts(self, emulator, leak_watch, export_dir):
        emulator.faults.add("list:html=503:times=50")

        run = run_export(leak_watch, export_dir)

        assert isinstance(run.error, SepaExportServerError)
        assert "GET /sepa-export/{tenant}/jobs" in str(run.error)
        assert "HTTP 503" in str(run.error)
        assert "after 5 attempts" in str(run.error)
        assert len(str(run.error)) < 1000


@pytest.mark.usefixtures("emporix_conn")
class TestCreateFaults:
    def test_lost_reply_adopts_created_job(self, emulator, leak_watch, export_dir):
        emulator.faults.add("create:lose-reply")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert emulator.state.job_count(site_code=SITE) == 1
        assert run.job_id == emulator.state.jobs()[0]["jobId"]

    def test_reply_slower_than_read_timeout(self, emulator, leak_watch, export_dir):
        emulator.faults.add(f"create:delay={READ_TIMEOUT + 1}:stage=reply")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert emulator.state.job_count(site_code=SITE) == 1

    def test_malformed_reply_adopts_created_job(self, emulator, leak_watch, export_dir):
        emulator.faults.add("create:malformed-json")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert emulator.state.job_count(site_code=SITE) == 1

    @pytest.mark.parametrize("status", [500, 503], ids=["500", "503"])
    def test_5xx_without_job_creates_once(self, emulator, leak_watch, export_dir, status):
        emulator.faults.add(f"create:{status}")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert statuses(emulator, "/jobs").count(status) == 1
        assert emulator.state.job_count(site_code=SITE) == 1

    def test_connection_dropped_creates_once(self, emulator, leak_watch, export_dir):
        emulator.faults.add("create:drop")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert emulator.state.job_count(site_code=SITE) == 1

    def test_429_retried(self, emulator, leak_watch, export_dir):
        emulator.faults.add("create:429:retry-after=0")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert emulator.state.job_count(site_code=SITE) == 1

    def test_task_retry_after_lost_reply(self, emulator, leak_watch, export_dir):
        emulator.faults.add("create:lose-reply")
        emulator.faults.add("list:503:times=20")
        first = run_export(leak_watch, export_dir)
        emulator.faults.clear()

        second = run_export(leak_watch, export_dir, try_number=2)

        assert first.error is not None
        assert_file_matches_server(second, emulator)
        assert emulator.state.job_count(site_code=SITE) == 1

    def test_other_site_running_waits(self, emulator, leak_watch, export_dir):
        SepaExportHook().create_job("shop-de")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert 409 in statuses(emulator, "/jobs")
        assert emulator.state.job_count(site_code=SITE) == 1


@pytest.mark.usefixtures("emporix_conn")
class TestTokenFaults:
    def test_revoked_token_replaced_once(self, emulator, leak_watch, export_dir):
        emulator.faults.add("list:revoke-tokens")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert statuses(emulator, "/oauth/token") == [200, 200]

    def test_expired_token_replaced_once(self, emulator, leak_watch, export_dir):
        emulator.faults.add("download:expire-tokens")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert statuses(emulator, "/oauth/token") == [200, 200]

    def test_short_token_lifetime(self, emulator, leak_watch, export_dir):
        emulator.faults.add("token:lifetime=1:times=10")

        run = run_export(leak_watch, export_dir, sensor_kwargs={"poke_interval": 0.4})

        assert_file_matches_server(run, emulator)
        assert 401 not in [entry["status_code"] for entry in emulator.state.request_log()]

    def test_wrong_secret_fails_without_loop(self, emulator, leak_watch, export_dir, monkeypatch, emporix_conn):
        monkeypatch.setenv("AIRFLOW_CONN_EMPORIX_DEFAULT", json.dumps({**emporix_conn, "password": "not-the-secret"}))

        run = run_export(leak_watch, export_dir)

        assert isinstance(run.error, SepaExportAuthError)
        assert "Client secret" in str(run.error) or "client secret" in str(run.error)
        assert len(statuses(emulator, "/oauth/token")) == 1

    def test_token_always_rejected_fails_after_one_repeat(self, emulator, leak_watch, export_dir):
        emulator.faults.add("list:revoke-tokens:times=10")

        run = run_export(leak_watch, export_dir)

        assert isinstance(run.error, SepaExportAuthError)
        assert statuses(emulator, "/jobs").count(401) == 2

    def test_missing_scope_names_scope(self, emulator, leak_watch, export_dir, monkeypatch, emporix_conn):
        extra = {"tenant": "demo", "scope": "sepaexport.job_view"}
        monkeypatch.setenv("AIRFLOW_CONN_EMPORIX_DEFAULT", json.dumps({**emporix_conn, "extra": extra}))

        run = run_export(leak_watch, export_dir)

        assert isinstance(run.error, SepaExportScopeError)
        assert "sepaexport.job_manage" in str(run.error)
        assert emulator.state.job_count() == 0


@pytest.mark.usefixtures("emporix_conn")
class TestJobOutcomes:
    @pytest.mark.parametrize(
        "outcome, status",
        [("failed", "FAILED"), ("completed-no-file", "COMPLETED"), ("unknown-no-file", "WEIRD_STATE")],
        ids=["failed", "completed-no-file", "unknown-no-file"],
    )
    def test_job_without_file_fails_sensor(self, emulator, leak_watch, export_dir, outcome, status):
        emulator.faults.add(f"create:job={outcome}")

        run = run_export(leak_watch, export_dir)

        assert isinstance(run.error, SepaExportJobFailedError)
        assert run.job_id in str(run.error)
        assert status in str(run.error)
        assert not export_dir.exists()

    def test_unknown_status_with_file_succeeds(self, emulator, leak_watch, export_dir):
        emulator.faults.add("create:job=unknown")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert run.job["status"] == "WEIRD_STATE"

    @pytest.mark.injected_jobs
    def test_job_pushed_off_first_page(self, emulator, leak_watch, export_dir):
        emulator.faults.add("create:newer-jobs=60")

        run = run_export(leak_watch, export_dir)
        pages = {
            entry["query"].get("pageNumber")
            for entry in emulator.state.request_log()
            if entry["path"].endswith("/jobs")
        }

        assert_file_matches_server(run, emulator)
        assert "2" in pages


@pytest.mark.usefixtures("emporix_conn")
class TestDownloadFaults:
    def test_dropped_body_restarts_clean(self, emulator, leak_watch, export_dir):
        emulator.faults.add("download:drop-body:2")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        assert statuses(emulator, "/files/" + run.job["file_id"]).count(200) == 3

    def test_always_dropped_body_leaves_no_file(self, emulator, leak_watch, export_dir):
        emulator.faults.add("download:drop-body:times=20")

        run = run_export(leak_watch, export_dir)

        assert isinstance(run.error, SepaExportDownloadError)
        assert "No file was written" in str(run.error)
        assert list(export_dir.rglob("*")) in ([], [export_dir / SITE])

    def test_connection_dropped_before_reply(self, emulator, leak_watch, export_dir):
        emulator.faults.add("download:drop")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)

    def test_body_with_bom_kept(self, emulator, leak_watch, export_dir):
        emulator.faults.add("download:bom")

        run = run_export(leak_watch, export_dir)
        served = Path(emulator.state.file_info(run.job["file_id"])["path"]).read_bytes()
        written = Path(run.download["path"]).read_bytes()

        assert written.startswith(b"\xef\xbb\xbf")
        assert written[3:] == served

    def test_text_plain_without_charset(self, emulator, leak_watch, export_dir):
        emulator.faults.add("download:no-charset")

        run = run_export(leak_watch, export_dir)

        assert_file_matches_server(run, emulator)
        # Multi-byte UTF-8 (the debtor names) arrives undecoded, whatever the missing charset implies.
        assert any(byte >= 0x80 for byte in Path(run.download["path"]).read_bytes())


@pytest.mark.usefixtures("emporix_conn")
class TestBadInput:
    @pytest.mark.parametrize(
        "site", ["", "   ", "..", "main\r\nX-Injected: 1"], ids=["empty", "blank", "dot-dot", "crlf"]
    )
    def test_bad_site_code(self, emulator, leak_watch, export_dir, site):
        run = run_export(leak_watch, export_dir, site=site)

        assert isinstance(run.error, SepaExportInputError)
        assert emulator.state.request_log() == []

    def test_site_code_with_slash_stays_in_query(self, emulator, leak_watch, export_dir):
        run = run_export(leak_watch, export_dir, site="main/../../x")

        assert run.error is not None
        assert all(
            entry["path"] in ("/oauth/token", "/sepa-export/demo/jobs") for entry in emulator.state.request_log()
        )

    @pytest.mark.parametrize(
        "file_id", ["../jobs", "a/b", "x?y=1", "%2e%2e"], ids=["dot-dot", "slash", "query", "encoded"]
    )
    def test_file_id_cannot_change_path(self, emulator, leak_watch, export_dir, file_id):
        operator = SepaExportDownloadOperator(task_id="download", file_id=file_id, destination=f"{export_dir}/x.xml")

        with pytest.raises(SepaExportNotFoundError) as caught:
            operator.execute(make_context())
        leak_watch.add(str(caught.value))
        api_requests = [entry for entry in emulator.state.request_log() if entry["path"] != "/oauth/token"]

        # The emulator logs the decoded path; the unit tests check the percent-quoted URL.
        assert len(api_requests) == 1
        assert api_requests[0]["method"] == "GET"
        assert api_requests[0]["path"] == f"/sepa-export/demo/files/{file_id}"
        assert emulator.state.job_count() == 0

    @pytest.mark.parametrize(
        "destination", ["", "exports/main.xml", "http://127.0.0.1/x.xml"], ids=["empty", "relative", "http"]
    )
    def test_bad_destination(self, emulator, leak_watch, destination):
        operator = SepaExportDownloadOperator(task_id="download", file_id="abc", destination=destination)

        with pytest.raises(SepaExportInputError, match="destination"):
            operator.execute(make_context())
        assert emulator.state.request_log() == []

    @pytest.mark.parametrize(
        "change, message",
        [
            ({"extra": {"tenant": "Demo"}}, "lowercase"),
            ({"extra": {"tenant": ""}}, "no tenant"),
            ({"extra": {}}, "no tenant"),
            ({"login": ""}, "client id"),
            ({"password": ""}, "client secret"),
            ({"host": "ftp://127.0.0.1"}, "http"),
        ],
        ids=["upper-tenant", "empty-tenant", "no-tenant", "no-client-id", "no-secret", "bad-scheme"],
    )
    def test_bad_connection(self, emulator, leak_watch, export_dir, monkeypatch, emporix_conn, change, message):
        monkeypatch.setenv("AIRFLOW_CONN_EMPORIX_DEFAULT", json.dumps({**emporix_conn, **change}))

        run = run_export(leak_watch, export_dir)

        assert isinstance(run.error, SepaExportConfigError)
        assert message in str(run.error)
        assert emulator.state.request_log() == []

    def test_unknown_connection_id(self, emulator, leak_watch, export_dir):
        run = run_export(leak_watch, export_dir, create_kwargs={"emporix_conn_id": "no_such_connection"})

        assert isinstance(run.error, SepaExportConfigError)
        assert "AIRFLOW_CONN_NO_SUCH_CONNECTION" in str(run.error)
        assert emulator.state.request_log() == []

    def test_list_malformed_json_fails_clearly(self, emulator, leak_watch, export_dir):
        emulator.faults.add("list:malformed-json:times=20")

        run = run_export(leak_watch, export_dir)

        assert isinstance(run.error, SepaExportResponseError)
        assert "not JSON" in str(run.error)
        assert emulator.state.job_count(site_code=SITE) == 1
