"""A real Airflow 3 (``airflow standalone``) with the emulator, shared by the system tests."""

from __future__ import annotations

import pytest

from tests.system.standalone import AirflowStandalone, port_is_free, wait_until

#: Sites of the emulator and of the Variable sepa_export_sites: two keep the nightly run short.
SITES = ("main", "shop-de")


@pytest.fixture(scope="session")
def airflow(tmp_path_factory: pytest.TempPathFactory):
    """Airflow and the emulator on free loopback ports, stopped after the last system test."""
    home = tmp_path_factory.mktemp("airflow-home")
    server = AirflowStandalone(home, sites=SITES)
    with server:
        yield server
    for port in (server.api_port, server.emulator.port):
        wait_until(lambda port=port: port_is_free(port), 30, f"port {port} on 127.0.0.1 to be free again")
