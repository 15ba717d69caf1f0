"""Fixtures that run the provider against the emulator on a free loopback port."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest

from airflow_provider_sepa.emulator.config import EmulatorConfig
from airflow_provider_sepa.emulator.server import EmulatorServer

SITES = ("main", "shop-de", "shop-at")


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """Emulator settings with short jobs, so tests wait well under a second per job."""
    return EmulatorConfig(sites=SITES, job_duration_seconds=0.3)


@pytest.fixture
def emulator(emulator_config: EmulatorConfig):
    """A running emulator; stopped after the test."""
    with EmulatorServer(emulator_config) as server:
        yield server


@pytest.fixture
def emporix_conn(monkeypatch: pytest.MonkeyPatch, emulator: EmulatorServer) -> dict[str, Any]:
    """Point the ``emporix_default`` connection at the emulator through the environment."""
    connection = {
        "conn_type": "emporix",
        "host": emulator.url,
        "login": emulator.config.client_id,
        "password": emulator.config.client_secret,
        "extra": {"tenant": emulator.config.tenant},
    }
    monkeypatch.setenv("AIRFLOW_CONN_EMPORIX_DEFAULT", json.dumps(connection))
    return connection


@dataclass
class FakeTaskInstance:
    """The parts of a task instance the operators use: XCom push and try number."""

    try_number: int = 1
    start_date: datetime | None = None
    xcom: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


@dataclass
class FakeDagRun:
    start_date: datetime


def make_context(try_number: int = 1, run_started: datetime | None = None) -> dict[str, Any]:
    """Build the minimal task context the operators read."""
    started = run_started or datetime.now(timezone.utc)
    return {"ti": FakeTaskInstance(try_number=try_number, start_date=started), "dag_run": FakeDagRun(started)}
