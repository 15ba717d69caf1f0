"""A single-site export sends exactly the minimum number of requests to the API."""

from __future__ import annotations

from collections import Counter

import pytest

from airflow_provider_sepa.operators.sepa_export import SepaExportCreateJobOperator, SepaExportDownloadOperator
from airflow_provider_sepa.sensors.sepa_export import SepaExportJobSensor
from tests.integration.conftest import make_context

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("emporix_conn")]


def test_single_site_export_sends_minimum(emulator, tmp_path, monkeypatch):
    pokes = 0
    original_poke = SepaExportJobSensor.poke

    def counting_poke(self, context):
        nonlocal pokes
        pokes += 1
        return original_poke(self, context)

    monkeypatch.setattr(SepaExportJobSensor, "poke", counting_poke)
    context = make_context()

    job_id = SepaExportCreateJobOperator(task_id="create", site_code="main").execute(context)
    job = SepaExportJobSensor(task_id="wait", site_code="main", job_id=job_id, poke_interval=0.1, timeout=20).execute(
        context
    )
    SepaExportDownloadOperator(task_id="download", file_id=job["file_id"], destination=f"{tmp_path}/").execute(context)
    sent = Counter(entry["endpoint"] for entry in emulator.state.request_log())

    # Minimum: one token, one create, one list request per poll and one download.
    assert sent["token"] == 1
    assert sent["create_job"] == 1
    assert sent["list_jobs"] == pokes
    assert sent["download_file"] == 1
    assert sum(sent.values()) == 3 + pokes
