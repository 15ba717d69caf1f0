"""The sample DAGs: they import cleanly and run end to end with `airflow dags test`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_sepa.emulator import demo

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(DAGS_FOLDER.glob("*.py"))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


class TestSampleDagImport:
    def test_no_import_errors(self, dagbag):
        assert dagbag.import_errors == {}

    def test_every_file_defines_a_dag(self, dagbag):
        files_with_dags = {Path(dag.fileloc).name for dag in dagbag.dags.values()}

        assert files_with_dags == {path.name for path in DAG_FILES}

    def test_nightly_schedule_in_named_timezone(self, dagbag):
        dag = dagbag.dags["sepa_export_nightly"]

        assert dag.timetable.expression == "30 1 * * *"
        assert str(getattr(dag.timetable.timezone, "name", dag.timetable.timezone)) == "Europe/Berlin"

    @pytest.mark.parametrize("dag_id", ["sepa_export_nightly", "sepa_export_on_demand"])
    def test_creates_share_one_pool(self, dagbag, dag_id):
        dag = dagbag.dags[dag_id]
        creates = [task for task in dag.tasks if task.task_id.endswith("create_job")]

        assert len(creates) == 1
        assert creates[0].pool == "sepa_export"

    @pytest.mark.parametrize("dag_id", ["sepa_export_nightly", "sepa_export_on_demand"])
    def test_sensor_waits_deferred(self, dagbag, dag_id):
        dag = dagbag.dags[dag_id]
        sensors = [task for task in dag.tasks if task.task_id.endswith("wait_for_job")]

        assert len(sensors) == 1
        assert sensors[0].deferrable is True

    def test_on_demand_has_site_param(self, dagbag):
        dag = dagbag.dags["sepa_export_on_demand"]

        assert dag.schedule is None
        assert dag.params["site_code"] == "main"


@pytest.mark.dagrun
class TestSampleDagRun:
    def test_nightly_downloads_every_site(self, tmp_path, capsys):
        sites = ["main", "shop-de", "shop-at"]

        exit_code = demo.run_demo(DAGS_FOLDER, tmp_path / "out", "sepa_export_nightly", sites, job_duration=0.5)
        printed = capsys.readouterr().out

        assert exit_code == 0, printed
        for site in sites:
            assert len(list((tmp_path / "out").glob(f"*/{site}/*.xml"))) == 1
        assert "Export jobs created on the emulator: 3 for 3 sites." in printed

    def test_on_demand_exports_one_site(self, tmp_path, capsys):
        conf = json.dumps({"site_code": "shop-at"})

        exit_code = demo.run_demo(
            DAGS_FOLDER, tmp_path / "out", "sepa_export_on_demand", ["shop-at"], job_duration=0.5, conf=conf
        )
        printed = capsys.readouterr().out

        assert exit_code == 0, printed
        assert len(list((tmp_path / "out").glob("on-demand/shop-at/*/*.xml"))) == 1

    def test_nightly_survives_faults(self, tmp_path, capsys):
        sites = ["main", "shop-de", "shop-at"]
        faults = ["any:503:every=3", "create:lose-reply", "list:revoke-tokens"]

        exit_code = demo.run_demo(
            DAGS_FOLDER, tmp_path / "out", "sepa_export_nightly", sites, job_duration=0.5, faults=faults
        )
        printed = capsys.readouterr().out

        assert exit_code == 0, printed
        assert "Export jobs created on the emulator: 3 for 3 sites." in printed
        for spec in faults:
            assert f"{spec} acted 0 times" not in printed
            assert f"{spec} acted" in printed
