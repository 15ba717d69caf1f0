"""Local loopback-only emulator of the Emporix SEPA Export API, for tests and demos.

This module stays light: FastAPI, uvicorn and the XML code load only when one of the
names below is first used. Start a server with::

    from airflow_provider_sepa.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(EmulatorConfig(job_duration_seconds=0.2)) as server:
        print(server.url, server.config.client_id, server.config.client_secret)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from airflow_provider_sepa.emulator.config import ALL_SCOPES, EmulatorConfig
from airflow_provider_sepa.emulator.faults import DelayStage, Fault, FaultKind, JobOutcome, parse_fault

if TYPE_CHECKING:
    # The "name as name" form marks each import as a re-export for linters and type checkers.
    from airflow_provider_sepa.emulator.app import create_app as create_app
    from airflow_provider_sepa.emulator.cli import main as main
    from airflow_provider_sepa.emulator.fault_injector import FaultInjector as FaultInjector
    from airflow_provider_sepa.emulator.fault_injector import FaultRule as FaultRule
    from airflow_provider_sepa.emulator.iban import iban_is_valid as iban_is_valid
    from airflow_provider_sepa.emulator.sepa_xml import summarize_pain008 as summarize_pain008
    from airflow_provider_sepa.emulator.sepa_xml import summarize_pain008_file as summarize_pain008_file
    from airflow_provider_sepa.emulator.server import EmulatorServer as EmulatorServer
    from airflow_provider_sepa.emulator.state import JOB_STATUS_COMPLETED as JOB_STATUS_COMPLETED
    from airflow_provider_sepa.emulator.state import JOB_STATUS_FAILED as JOB_STATUS_FAILED
    from airflow_provider_sepa.emulator.state import JOB_STATUS_IN_PROGRESS as JOB_STATUS_IN_PROGRESS
    from airflow_provider_sepa.emulator.state import EmulatorState as EmulatorState

# Public name -> submodule that defines it, loaded on first attribute access.
_LAZY_EXPORTS = {
    "EmulatorServer": "server",
    "EmulatorState": "state",
    "FaultInjector": "fault_injector",
    "FaultRule": "fault_injector",
    "JOB_STATUS_COMPLETED": "state",
    "JOB_STATUS_FAILED": "state",
    "JOB_STATUS_IN_PROGRESS": "state",
    "create_app": "app",
    "iban_is_valid": "iban",
    "main": "cli",
    "summarize_pain008": "sepa_xml",
    "summarize_pain008_file": "sepa_xml",
}

__all__ = [
    "ALL_SCOPES",
    "DelayStage",
    "EmulatorConfig",
    "Fault",
    "FaultKind",
    "JobOutcome",
    "parse_fault",
    *_LAZY_EXPORTS,
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access."""
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, name)
