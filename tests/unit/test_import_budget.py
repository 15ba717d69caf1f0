"""DAG files import the operators and sensor at every parse, so those modules stay light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LIGHT_MODULES = ["airflow_provider_sepa.operators.sepa_export", "airflow_provider_sepa.sensors.sepa_export"]
# Modules that only a running task, the triggerer or the emulator may load.
HEAVY_PREFIXES = (
    "requests",
    "urllib3",
    "fastapi",
    "starlette",
    "uvicorn",
    "xml",
    "lxml",
    "airflow_provider_sepa.emulator",
)

PROBE = """
import json, sys
import airflow.sdk
before = set(sys.modules)
import {module}
print(json.dumps(sorted(set(sys.modules) - before)))
"""


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_module_imports_no_heavy_dependency(module):
    completed = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True, check=True
    )
    added = json.loads(completed.stdout.strip().splitlines()[-1])
    heavy = [name for name in added if name.split(".")[0] in HEAVY_PREFIXES or name.startswith(HEAVY_PREFIXES)]

    assert module in added
    assert heavy == []
    assert "airflow_provider_sepa.hooks.sepa_export" not in added
