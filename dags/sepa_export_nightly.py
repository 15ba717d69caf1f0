"""Export every site's invoiced orders as SEPA-XML files, every night.

Each site gets its own branch: create the export job, wait for it, download the file
into ``<export folder>/<date>/<site code>/``. Settings live in Airflow Variables, so the
site list changes without editing this file:

- ``sepa_export_sites``: JSON list of site codes, for example ``["main", "shop-de"]``.
- ``sepa_export_dir``: absolute folder or object-storage URL that receives the files.

The API runs one export job per tenant at a time, so the create tasks share the pool
``sepa_export``, which needs one slot. A create that still meets a running job of another
site waits and tries again.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta

import pendulum
from airflow.sdk import AssetAlias, CronTriggerTimetable, Variable, dag, task, task_group

from airflow_provider_sepa.operators.sepa_export import SepaExportCreateJobOperator, SepaExportDownloadOperator
from airflow_provider_sepa.sensors.sepa_export import SepaExportJobSensor

TIMEZONE = "Europe/Berlin"
POOL = "sepa_export"
# Each download adds an event for the asset sepa-export://<tenant>/<site code> to this alias.
NEW_FILES = AssetAlias("sepa_export_files")
SITE_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# Seconds between two checks of a running job or a busy job slot; the demo lowers it.
POLL_SECONDS = float(os.environ.get("SEPA_EXPORT_POLL_SECONDS", "60"))


@dag(
    schedule=CronTriggerTimetable("30 1 * * *", timezone=TIMEZONE),
    start_date=pendulum.datetime(2026, 1, 1, tz=TIMEZONE),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    tags=["sepa", "emporix"],
)
def sepa_export_nightly():
    @task
    def plan_exports(dag_run=None) -> list[dict[str, str]]:
        """Return one ``{site_code, destination}`` entry per configured site."""
        sites = Variable.get("sepa_export_sites", default=["main"], deserialize_json=True)
        if (
            not isinstance(sites, list)
            or not sites
            or not all(isinstance(s, str) and SITE_CODE.match(s) for s in sites)
        ):
            raise ValueError(
                f"Invalid Variable sepa_export_sites {sites!r}: set it to a JSON list of site codes "
                'such as ["main", "shop-de"] (letters, digits, - and _, because each code names a folder).'
            )
        export_dir = Variable.get("sepa_export_dir", default="/tmp/sepa-exports").rstrip("/")
        day = pendulum.instance(dag_run.run_after).in_timezone(TIMEZONE).to_date_string()
        return [{"site_code": site, "destination": f"{export_dir}/{day}/{site}/"} for site in sites]

    @task_group
    def export_site(site_code: str, destination: str):
        create = SepaExportCreateJobOperator(
            task_id="create_job", site_code=site_code, poll_interval=POLL_SECONDS, pool=POOL
        )
        wait = SepaExportJobSensor(
            task_id="wait_for_job",
            site_code=site_code,
            job_id=create.output,
            poke_interval=POLL_SECONDS,
            timeout=timedelta(hours=6),
            deferrable=True,
        )
        SepaExportDownloadOperator(
            task_id="download_file",
            file_id=wait.output["file_id"],
            destination=destination,
            site_code=site_code,
            outlets=[NEW_FILES],
        )

    export_site.expand_kwargs(plan_exports())


sepa_export_nightly()
