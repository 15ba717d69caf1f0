"""The hook, both operators and the sensor against the emulator on loopback."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import timedelta

import pytest
from airflow.sdk import PokeReturnValue

from airflow_provider_sepa.core.errors import (
    SepaExportConfigError,
    SepaExportInputError,
    SepaExportJobNotFoundError,
    SepaExportNotFoundError,
    SepaExportTimeoutError,
)
from airflow_provider_sepa.core.jobs import JobState
from airflow_provider_sepa.emulator.config import EmulatorConfig
from airflow_provider_sepa.emulator.sepa_xml import summarize_pain008
from airflow_provider_sepa.hooks.sepa_export import SepaExportHook
from airflow_provider_sepa.operators.sepa_export import SepaExportCreateJobOperator, SepaExportDownloadOperator
from airflow_provider_sepa.sensors.sepa_export import SepaExportJobSensor
from tests.integration.conftest import SITES, make_context

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("emporix_conn")]


def wait_until_done(hook: SepaExportHook, site_code: str, job_id: str, limit: float = 10.0):
    """Poll the job list until the job has finished; fail the test after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        job = hook.get_job(site_code, job_id)
        if job.state is not JobState.RUNNING:
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} still running after {limit} s")


class TestSepaExportHookAgainstEmulator:
    def test_create_list_get_download(self, emulator, tmp_path):
        hook = SepaExportHook()
        job_id = hook.create_job("main")
        listed = hook.list_jobs("main")
        job = wait_until_done(hook, "main", job_id)
        target = tmp_path / "main.xml"

        downloaded = hook.download_file(job.file_id, str(target))

        assert [entry.job_id for entry in listed] == [job_id]
        assert job.state is JobState.SUCCEEDED
        assert job.created_at is not None and job.created_at.tzinfo is not None
        assert downloaded.sha256 == emulator.state.file_info(job.file_id)["sha256"]
        assert downloaded.size_bytes == target.stat().st_size
        assert hashlib.sha256(target.read_bytes()).hexdigest() == downloaded.sha256

    def test_token_reused_across_calls(self, emulator):
        hook = SepaExportHook()
        hook.list_jobs("main")
        hook.list_jobs("shop-de")
        SepaExportHook().list_jobs("shop-at")

        token_requests = [entry for entry in emulator.state.request_log() if entry["path"] == "/oauth/token"]

        assert len(token_requests) == 1

    def test_get_job_follows_pages(self, emulator):
        hook = SepaExportHook()
        first = hook.create_job("main")
        wait_until_done(hook, "main", first)
        for _ in range(4):
            wait_until_done(hook, "main", hook.create_job("main"))

        job = hook.get_job("main", first, page_size=2)
        list_requests = [entry for entry in emulator.state.request_log() if entry["path"].endswith("/jobs")]

        assert job.job_id == first
        assert list_requests[-1]["query"]["pageNumber"] == "3"

    def test_get_job_unknown_id(self):
        with pytest.raises(SepaExportJobNotFoundError, match="no-such-job"):
            SepaExportHook().get_job("main", "no-such-job")

    def test_download_unknown_file(self, tmp_path):
        with pytest.raises(SepaExportNotFoundError, match="404"):
            SepaExportHook().download_file("missing", str(tmp_path / "x.xml"))
        assert list(tmp_path.iterdir()) == []

    def test_test_connection_succeeds(self):
        ok, message = SepaExportHook().test_connection()

        assert ok is True
        assert "demo" in message

    def test_test_connection_wrong_secret(self, monkeypatch, emporix_conn, emulator):
        import json

        monkeypatch.setenv("AIRFLOW_CONN_EMPORIX_DEFAULT", json.dumps({**emporix_conn, "password": "wrong"}))

        ok, message = SepaExportHook().test_connection()

        assert ok is False
        assert "401" in message
        assert emulator.config.client_secret not in message

    def test_uppercase_tenant_rejected_before_request(self, monkeypatch, emporix_conn, emulator):
        import json

        monkeypatch.setenv("AIRFLOW_CONN_EMPORIX_DEFAULT", json.dumps({**emporix_conn, "extra": {"tenant": "Demo"}}))

        with pytest.raises(SepaExportConfigError, match="'demo'"):
            SepaExportHook().list_jobs("main")
        assert emulator.state.request_log() == []


class TestSepaExportCreateJobOperator:
    def test_returns_job_id_and_pushes_it(self, emulator):
        context = make_context()
        operator = SepaExportCreateJobOperator(task_id="create", site_code="main")

        job_id = operator.execute(context)

        assert context["ti"].xcom["job_id"] == job_id
        assert emulator.state.job_count() == 1

    def test_task_retry_adopts_job(self, emulator):
        first_try = make_context(try_number=1)
        operator = SepaExportCreateJobOperator(task_id="create", site_code="main")
        job_id = operator.execute(first_try)

        second_try = make_context(try_number=2, run_started=first_try["dag_run"].start_date)
        adopted = operator.execute(second_try)

        assert adopted == job_id
        assert emulator.state.job_count() == 1

    def test_retry_in_new_run_creates_job(self, emulator):
        operator = SepaExportCreateJobOperator(task_id="create", site_code="main", clock_skew=0.001)
        first = operator.execute(make_context())
        wait_until_done(SepaExportHook(), "main", first)

        later_run = make_context(try_number=2)
        second = operator.execute(later_run)

        assert second != first
        assert emulator.state.job_count() == 2

    def test_conflict_same_site_adopts_running_job(self, emulator):
        running = SepaExportHook().create_job("main")
        operator = SepaExportCreateJobOperator(task_id="create", site_code="main")

        job_id = operator.execute(make_context())

        assert job_id == running
        assert emulator.state.job_count() == 1

    def test_conflict_other_site_waits_then_creates(self, emulator):
        other = SepaExportHook().create_job("shop-de")
        operator = SepaExportCreateJobOperator(task_id="create", site_code="main", poll_interval=0.1, timeout=10)

        job_id = operator.execute(make_context())
        conflicts = [entry for entry in emulator.state.request_log() if entry["status_code"] == 409]

        assert job_id != other
        assert len(conflicts) >= 1
        assert emulator.state.job_count() == 2
        assert emulator.state.job_count(site_code="main") == 1

    @pytest.mark.parametrize(
        "emulator_config", [EmulatorConfig(sites=SITES, job_duration_seconds=30)], ids=["slow-job"]
    )
    def test_conflict_times_out(self, emulator):
        SepaExportHook().create_job("shop-de")
        operator = SepaExportCreateJobOperator(task_id="create", site_code="main", poll_interval=0.1, timeout=0.5)

        with pytest.raises(SepaExportTimeoutError, match="'main'"):
            operator.execute(make_context())
        assert emulator.state.job_count(site_code="main") == 0

    def test_wait_for_completion_pushes_job(self, emulator):
        context = make_context()
        operator = SepaExportCreateJobOperator(
            task_id="create", site_code="shop-at", wait_for_completion=True, poll_interval=0.1, timeout=10
        )

        job_id = operator.execute(context)

        assert context["ti"].xcom["job"]["job_id"] == job_id
        assert context["ti"].xcom["job"]["state"] == "succeeded"
        assert context["ti"].xcom["job"]["file_id"]

    @pytest.mark.parametrize(
        "site_code", ["", "   ", " main", "..", "ma\nin"], ids=["empty", "blank", "space", "dots", "newline"]
    )
    def test_bad_site_code_rejected_before_request(self, emulator, site_code):
        operator = SepaExportCreateJobOperator(task_id="create", site_code=site_code)

        with pytest.raises(SepaExportInputError):
            operator.execute(make_context())
        assert emulator.state.request_log() == []

    def test_bad_poll_interval_rejected(self):
        with pytest.raises(SepaExportInputError, match="poll_interval"):
            SepaExportCreateJobOperator(task_id="create", site_code="main", poll_interval=0)


class TestSepaExportJobSensor:
    def test_poke_until_success(self, emulator):
        job_id = SepaExportHook().create_job("main")
        sensor = SepaExportJobSensor(task_id="wait", site_code="main", job_id=job_id, poke_interval=0.1)

        first = sensor.poke(make_context())
        time.sleep(emulator.config.job_duration_seconds + 0.1)
        done = sensor.poke(make_context())

        assert first is False
        assert isinstance(done, PokeReturnValue)
        assert done.xcom_value["job_id"] == job_id
        assert done.xcom_value["file_id"] == emulator.state.jobs()[0]["fileId"]

    def test_execute_returns_job_details(self, emulator):
        job_id = SepaExportHook().create_job("shop-de")
        sensor = SepaExportJobSensor(task_id="wait", site_code="shop-de", job_id=job_id, poke_interval=0.1, timeout=10)

        details = sensor.execute(make_context())

        assert details["state"] == "succeeded"
        assert details["site_code"] == "shop-de"

    def test_missing_job_fails_after_grace(self):
        sensor = SepaExportJobSensor(
            task_id="wait", site_code="main", job_id="never-created", poke_interval=0.05, job_not_found_timeout=0.2
        )

        with pytest.raises(SepaExportJobNotFoundError, match="never-created"):
            sensor.execute(make_context())


class TestSepaExportDownloadOperator:
    def test_download_to_folder(self, emulator, tmp_path):
        hook = SepaExportHook()
        job = wait_until_done(hook, "main", hook.create_job("main"))
        operator = SepaExportDownloadOperator(task_id="download", file_id=job.file_id, destination=f"{tmp_path}/out/")

        result = operator.execute(make_context())
        written = tmp_path / "out" / f"{job.file_id}.xml"
        summary = summarize_pain008(written.read_bytes())

        assert result["path"] == str(written)
        assert result["sha256"] == emulator.state.file_info(job.file_id)["sha256"]
        assert summary["nb_of_txs_declared"] == summary["nb_of_txs_counted"]
        assert summary["ctrl_sum_declared"] == summary["ctrl_sum_computed"]

    def test_download_to_file_url(self, emulator, tmp_path):
        hook = SepaExportHook()
        job = wait_until_done(hook, "shop-de", hook.create_job("shop-de"))
        operator = SepaExportDownloadOperator(
            task_id="download", file_id=job.file_id, destination=f"file://{tmp_path}/sepa/shop-de.xml"
        )

        result = operator.execute(make_context())

        assert (tmp_path / "sepa" / "shop-de.xml").read_bytes() == emulator.state.file_info(job.file_id)[
            "path"
        ].read_bytes()
        assert result["size_bytes"] == emulator.state.file_info(job.file_id)["size"]

    @pytest.mark.parametrize(
        "destination",
        ["", "relative/file.xml", "https://example.test/file.xml"],
        ids=["empty", "relative", "http-url"],
    )
    def test_bad_destination_rejected_before_request(self, emulator, destination):
        operator = SepaExportDownloadOperator(task_id="download", file_id="abc", destination=destination)

        with pytest.raises(SepaExportInputError, match="destination"):
            operator.execute(make_context())
        assert emulator.state.request_log() == []


def test_creates_in_parallel_start_one_job_per_site(emulator):
    """Two sites created at once: one meets the other's job, waits and still gets its own job."""
    results: dict[str, str] = {}

    def run(site: str) -> None:
        operator = SepaExportCreateJobOperator(
            task_id=f"create_{site}", site_code=site, poll_interval=0.1, timeout=timedelta(seconds=10)
        )
        results[site] = operator.execute(make_context())

    threads = [threading.Thread(target=run, args=(site,)) for site in ("main", "shop-de")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert set(results) == {"main", "shop-de"}
    assert emulator.state.job_count(site_code="main") == 1
    assert emulator.state.job_count(site_code="shop-de") == 1


class TestDownloadAssetEvents:
    def test_alias_outlet_gets_site_asset(self, emulator, tmp_path):
        from airflow.sdk import AssetAlias
        from airflow.sdk.execution_time.context import OutletEventAccessors

        from airflow_provider_sepa.operators.sepa_export import sepa_file_asset

        hook = SepaExportHook()
        job = wait_until_done(hook, "main", hook.create_job("main"))
        alias = AssetAlias("sepa_export_files")
        context = make_context()
        context["outlet_events"] = OutletEventAccessors()
        operator = SepaExportDownloadOperator(
            task_id="download", file_id=job.file_id, destination=f"{tmp_path}/", site_code="main", outlets=[alias]
        )

        result = operator.execute(context)
        events = context["outlet_events"][alias].asset_alias_events

        assert len(events) == 1
        assert events[0].dest_asset_key.uri == sepa_file_asset("demo", "main").uri == "sepa-export://demo/main"
        assert events[0].extra["sha256"] == result["sha256"]
        assert events[0].extra["site_code"] == "main"

    def test_no_alias_no_event(self, emulator, tmp_path):
        from airflow.sdk.execution_time.context import OutletEventAccessors

        hook = SepaExportHook()
        job = wait_until_done(hook, "main", hook.create_job("main"))
        context = make_context()
        context["outlet_events"] = OutletEventAccessors()
        operator = SepaExportDownloadOperator(
            task_id="download", file_id=job.file_id, destination=f"{tmp_path}/", site_code="main"
        )

        operator.execute(context)

        assert dict(context["outlet_events"]._dict) == {}
