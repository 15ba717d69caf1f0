"""Command line entry point, run as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from airflow_provider_sepa.emulator.cli import build_parser

from .conftest import bearer, run_job

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 30.0


def _start(tmp_path: Path, *args: str, secret: str | None = None) -> tuple[subprocess.Popen[str], str]:
    """Start the CLI with ``--port 0`` and return the process and its base URL."""
    port_file = tmp_path / "port"
    env = {key: value for key, value in os.environ.items() if key != "SEPA_EMULATOR_CLIENT_SECRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), env.get("PYTHONPATH")]))
    if secret is not None:
        env["SEPA_EMULATOR_CLIENT_SECRET"] = secret
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_sepa.emulator", "--port", "0", "--port-file", str(port_file), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"emulator CLI did not start: exit {process.returncode}\n{stdout}\n{stderr}")
        time.sleep(0.05)
    return process, f"http://127.0.0.1:{int(port_file.read_text())}"


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Collect started processes and kill any that a test left running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _stop(process: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=15)
    return stdout, stderr


def _token(url: str, client_id: str, secret: str) -> str:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    response = httpx.post(f"{url}/oauth/token", data=form, timeout=10.0)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def test_cli_serves_and_stops_on_sigterm(tmp_path: Path, processes: list) -> None:
    secret = "cli-test-secret-0123456789"
    process, url = _start(
        tmp_path,
        "--tenant",
        "acme",
        "--client-id",
        "cli-client",
        "--job-duration",
        "0.1",
        "--sites",
        "north,south",
        secret=secret,
    )
    processes.append(process)

    headers = bearer(_token(url, "cli-client", secret))
    with httpx.Client(base_url=url, timeout=10.0) as client:
        job = run_job(client, headers, "south", tenant="acme")
        unknown_site = client.post("/sepa-export/acme/jobs", json={"siteCode": "main"}, headers=headers)
    stdout, stderr = _stop(process, signal.SIGTERM)

    assert job["status"] == "COMPLETED"
    assert unknown_site.status_code == 400
    assert process.returncode == 0
    assert stdout.splitlines()[0] == f"SEPA emulator serving at {url} (tenant acme, client id cli-client)"
    assert "stopped" in stdout
    assert secret not in stdout
    assert secret not in stderr


def test_cli_print_secret_and_sigint(tmp_path: Path, processes: list) -> None:
    process, url = _start(tmp_path, "--print-secret")
    processes.append(process)

    health = httpx.get(f"{url}/_emulator/health", timeout=10.0)
    stdout, _ = _stop(process, signal.SIGINT)

    label = "Client secret (local development only): "
    secret_lines = [line for line in stdout.splitlines() if line.startswith(label)]
    assert health.json()["tenant"] == "demo"
    assert process.returncode == 0
    assert len(secret_lines) == 1
    assert len(secret_lines[0].removeprefix(label)) >= 32


def test_cli_invalid_tenant_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_sepa.emulator", "--port", "0", "--tenant", "ACME"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert "Invalid tenant 'ACME'" in result.stderr


def test_cli_parses_order_options() -> None:
    argv = ["--site-orders", "big=500000", "--site-orders", "tiny=1", "--orders-per-site", "3-7"]

    args = build_parser().parse_args(argv)

    assert dict(args.site_orders) == {"big": 500000, "tiny": 1}
    assert args.orders_per_site == (3, 7)
    assert args.port == 8765


@pytest.mark.parametrize("option", [["--site-orders", "big"], ["--orders-per-site", "a-b"], ["--job-duration", "-1"]])
def test_cli_rejects_invalid_options(option: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(option)

    assert exit_info.value.code == 2
