"""Export one site's invoiced orders on demand, from the Airflow UI's trigger form."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag

from airflow_provider_sepa.operators.sepa_export import SepaExportCreateJobOperator, SepaExportDownloadOperator
from airflow_provider_sepa.sensors.sepa_export import SepaExportJobSensor

POLL_SECONDS = float(os.environ.get("SEPA_EXPORT_POLL_SECONDS", "30"))


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    tags=["sepa", "emporix"],
    params={
        "site_code": Param(
            "main",
            type="string",
            minLength=1,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
            title="Site code",
            description="The Emporix site whose invoiced orders are exported: letters, digits, - and _.",
        ),
    },
)
def sepa_export_on_demand():
    # [START howto_operator_sepa_export_create_job]
    create = SepaExportCreateJobOperator(
        task_id="create_job", site_code="{{ params.site_code }}", poll_interval=POLL_SECONDS, pool="sepa_export"
    )
    # [END howto_operator_sepa_export_create_job]
    # [START howto_sensor_sepa_export_job]
    wait = SepaExportJobSensor(
        task_id="wait_for_job",
        site_code="{{ params.site_code }}",
        job_id=create.output,
        poke_interval=POLL_SECONDS,
        timeout=timedelta(hours=6),
        deferrable=True,
    )
    # [END howto_sensor_sepa_export_job]
    # [START howto_operator_sepa_export_download]
    SepaExportDownloadOperator(
        task_id="download_file",
        file_id=wait.output["file_id"],
        destination=(
            "{{ var.value.get('sepa_export_dir', '/tmp/sepa-exports') }}/on-demand/"
            "{{ params.site_code }}/{{ dag_run.run_after | ts_nodash }}/"
        ),
    )
    # [END howto_operator_sepa_export_download]


sepa_export_on_demand()
