"""Run ``airflow standalone`` with the SEPA emulator, for ``make airflow`` and the system tests.

:class:`AirflowStandalone` starts the emulator in this process and ``airflow standalone`` in
its own process group, on SQLite in the given ``AIRFLOW_HOME``. The api-server listens on
127.0.0.1 only. Once every component is healthy, it creates through the REST API the
connection ``emporix_default`` (pointing at the emulator), the pool ``sepa_export`` and
the Variables that the sample DAGs read. It then waits until the DAG processor has parsed
the sample DAGs.

Usage::

    python -m tests.system.standalone             # what `make airflow` runs; Ctrl+C stops it
    python -m tests.system.standalone --help

The system tests use the same class as a context manager with a temporary home.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from airflow_provider_sepa.emulator.config import EmulatorConfig
from airflow_provider_sepa.emulator.server import EmulatorServer

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = PROJECT_ROOT / "dags"
LOOPBACK = "127.0.0.1"
SAMPLE_DAG_IDS = ("sepa_export_nightly", "sepa_export_on_demand", "sepa_export_outbox")
DEFAULT_SITES = ("main", "shop-de")
ADMIN_USER = "admin"

#: Maximum seconds to wait for every Airflow component to report healthy. Startup with a new
#: database took 11 to 16 s in the system tests on 2 cores, so the limit leaves wide room.
START_TIMEOUT_SECONDS = 300.0
#: Maximum seconds to wait for the DAG processor to store the sample DAGs.
PARSE_TIMEOUT_SECONDS = 180.0
#: Seconds between two checks while waiting.
POLL_SECONDS = 2.0
#: Maximum seconds that a graceful stop may take before the process group is killed.
STOP_TIMEOUT_SECONDS = 45.0


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Return whether a server could listen on 127.0.0.1:``port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do, so that connections in TIME_WAIT after a stop do not count as a listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def wait_until(
    check: Callable[[], Any], timeout: float, condition: str, describe: Callable[[], str] | None = None
) -> Any:
    """Call ``check`` every :data:`POLL_SECONDS` until it returns a true value, and return that value.

    Raise TimeoutError naming ``condition`` after ``timeout`` seconds, with the text of
    ``describe()`` appended when it is given.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            details = f"\n{describe()}" if describe is not None else ""
            raise TimeoutError(f"Timed out after {timeout:.0f} s waiting for {condition}.{details}")
        time.sleep(POLL_SECONDS)


class AirflowStandalone:
    """``airflow standalone`` on SQLite in ``home``, with the emulator and the sample DAGs' settings.

    ``api_port=0`` and ``emulator_port=0`` pick free loopback ports. The console output of
    ``standalone`` and of every component goes to ``home/standalone.log``.
    """

    def __init__(
        self,
        home: Path,
        *,
        api_port: int = 0,
        emulator_port: int = 0,
        sites: Iterable[str] = DEFAULT_SITES,
        job_duration_seconds: float = 1.0,
        export_dir: Path | None = None,
        outbox_dir: Path | None = None,
        dags_folder: Path = DAGS_FOLDER,
    ) -> None:
        self.home = home.resolve()
        self.api_port = api_port or free_port()
        self.sites = tuple(sites)
        self.export_dir = (export_dir or self.home / "exports").resolve()
        self.outbox_dir = (outbox_dir or self.home / "outbox").resolve()
        self.dags_folder = dags_folder.resolve()
        self.log_path = self.home / "standalone.log"
        self.emulator = EmulatorServer(
            EmulatorConfig(sites=self.sites, job_duration_seconds=job_duration_seconds), port=emulator_port
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    @property
    def url(self) -> str:
        """Base URL of the api-server and the UI."""
        return f"http://{LOOPBACK}:{self.api_port}"

    @property
    def password_file(self) -> Path:
        """File in which the simple auth manager stores the generated admin password."""
        return self.home / "simple_auth_manager_passwords.json.generated"

    @property
    def client(self) -> httpx.Client:
        """HTTP client for the api-server that sends the admin's JWT, available after :meth:`start`."""
        if self._client is None:
            raise RuntimeError("Airflow is not started: call start() first.")
        return self._client

    def environment(self) -> dict[str, str]:
        """Return the environment of ``airflow standalone`` and of every component it starts."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
        # standalone starts each component as a plain `airflow` command, found on PATH.
        bin_dir = str(Path(sys.executable).parent)
        env.update(
            {
                "PATH": os.pathsep.join([bin_dir, env.get("PATH", "")]),
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__API__HOST": LOOPBACK,
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                # Tasks check a running job or a busy job slot every second, not every minute.
                "SEPA_EXPORT_POLL_SECONDS": "1",
                # The LocalExecutor starts one worker process per slot; the default is 32.
                "AIRFLOW__CORE__PARALLELISM": "4",
                "NO_COLOR": "1",
            }
        )
        return env

    def start(self) -> None:
        """Start the emulator and Airflow, then create the connection, pool and Variables."""
        if not port_is_free(self.api_port):
            raise RuntimeError(f"Port {self.api_port} on {LOOPBACK} is in use: choose another api-server port.")
        self.home.mkdir(parents=True, exist_ok=True)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        self.emulator.start()
        try:
            self._start_airflow()
            self._wait_until_healthy()
            self._client = self._login()
            self.configure()
            wait_until(self._sample_dags_parsed, PARSE_TIMEOUT_SECONDS, "the sample DAGs to be parsed", self.log_tail)
        except BaseException:
            self.stop()
            raise

    def _start_airflow(self) -> None:
        airflow = Path(sys.executable).parent / "airflow"
        with self.log_path.open("ab") as log:
            # A session of its own makes standalone the leader of a process group that contains
            # every component and task process, so stop() can end all of them and nothing else.
            self._process = subprocess.Popen(
                [str(airflow), "standalone"],
                cwd=self.home,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_restore_interrupt_signal,
            )

    def _health(self) -> dict[str, Any] | None:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"airflow standalone exited with status {self._process.returncode}.\n{self.log_tail()}")
        try:
            response = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5)
        except httpx.TransportError:
            return None
        if response.status_code != 200:
            return None
        health: dict[str, Any] = response.json()
        return health

    def _wait_until_healthy(self) -> None:
        def all_healthy() -> bool:
            health = self._health()
            if health is None:
                return False
            components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            return all((health.get(name) or {}).get("status") == "healthy" for name in components)

        wait_until(all_healthy, START_TIMEOUT_SECONDS, "every Airflow component to be healthy", self.log_tail)

    def admin_password(self) -> str:
        """Return the admin password that the simple auth manager generated into :attr:`password_file`."""
        passwords: dict[str, str] = json.loads(self.password_file.read_text(encoding="utf-8"))
        return passwords[ADMIN_USER]

    def _login(self) -> httpx.Client:
        response = httpx.post(
            f"{self.url}/auth/token",
            json={"username": ADMIN_USER, "password": self.admin_password()},
            timeout=30,
        )
        response.raise_for_status()
        token = response.json()["access_token"]
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def access_token(self) -> str:
        """Return the admin's JWT that :attr:`client` sends."""
        return self.client.headers["Authorization"].removeprefix("Bearer ")

    def connection_body(self, password: str | None = None) -> dict[str, Any]:
        """Return the REST body of the ``emporix_default`` connection to the emulator."""
        config = self.emulator.config
        return {
            "connection_id": "emporix_default",
            "conn_type": "emporix",
            "description": "Local SEPA Export API emulator",
            "host": self.emulator.url,
            "login": config.client_id,
            "password": config.client_secret if password is None else password,
            "extra": json.dumps({"tenant": config.tenant}),
        }

    def configure(self) -> None:
        """Create or overwrite the connection, the pool and the Variables through the REST API."""
        self._bulk_overwrite("connections", [self.connection_body()])
        self._bulk_overwrite(
            "pools",
            [
                {
                    "name": "sepa_export",
                    "slots": 1,
                    "description": "One SEPA export job per tenant at a time",
                    "include_deferred": False,
                }
            ],
        )
        self._bulk_overwrite(
            "variables",
            [
                {"key": "sepa_export_sites", "value": json.dumps(list(self.sites))},
                {"key": "sepa_export_dir", "value": str(self.export_dir)},
                {"key": "sepa_export_outbox_dir", "value": str(self.outbox_dir)},
            ],
        )

    def _bulk_overwrite(self, resource: str, entities: list[dict[str, Any]]) -> None:
        body = {"actions": [{"action": "create", "action_on_existence": "overwrite", "entities": entities}]}
        response = self.client.patch(f"/api/v2/{resource}", json=body)
        response.raise_for_status()
        errors = response.json()["create"]["errors"]
        if errors:
            raise RuntimeError(f"Creating {resource} through the REST API failed: {errors}")

    def _sample_dags_parsed(self) -> bool:
        response = self.client.get("/api/v2/dags", params={"dag_id_pattern": "sepa_export%", "limit": 100})
        response.raise_for_status()
        parsed = {dag["dag_id"] for dag in response.json()["dags"]}
        return parsed >= set(SAMPLE_DAG_IDS)

    def unpause(self, dag_id: str) -> None:
        """Unpause ``dag_id`` through the REST API."""
        self.client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def log_tail(self, lines: int = 60) -> str:
        """Return the last ``lines`` lines of standalone's console output."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return f"{self.log_path} does not exist."
        tail = "\n".join(text.splitlines()[-lines:])
        return f"Last {lines} lines of {self.log_path}:\n{tail}"

    def stop(self) -> None:
        """Stop Airflow and the emulator, and kill what has not stopped after :data:`STOP_TIMEOUT_SECONDS`."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._process is not None:
            self._stop_process_group(self._process)
            self._process = None
        self.emulator.stop()

    @staticmethod
    def _stop_process_group(process: subprocess.Popen[bytes]) -> None:
        group = process.pid
        # On SIGINT, standalone sends SIGTERM to each component, and the scheduler then stops
        # its executor's workers. A SIGINT to the whole group, as Ctrl+C in a terminal sends,
        # can instead hang the scheduler while its workers exit under it. SIGTERM and SIGKILL
        # to the group follow for whatever is still running after the grace period.
        steps = (
            (signal.SIGINT, STOP_TIMEOUT_SECONDS, lambda sig: os.kill(group, sig)),
            (signal.SIGTERM, 10.0, lambda sig: os.killpg(group, sig)),
            (signal.SIGKILL, 5.0, lambda sig: os.killpg(group, sig)),
        )
        for sig, grace, send in steps:
            members = _live_group_members(group, process)
            if not members:
                break
            if sig == signal.SIGINT and process.poll() is not None:
                continue
            if sig != signal.SIGINT:
                log.warning("Sending %s to Airflow processes still running: %s", sig.name, _describe(members))
            with contextlib.suppress(ProcessLookupError):
                send(sig)
            deadline = time.monotonic() + grace
            while _live_group_members(group, process) and time.monotonic() < deadline:
                time.sleep(0.2)
        process.wait(timeout=5)

    def __enter__(self) -> AirflowStandalone:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _describe(pids: list[int]) -> str:
    commands = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            command = "?"
        commands.append(f"{pid} ({command.strip()[:80]})")
    return ", ".join(commands)


def _restore_interrupt_signal() -> None:
    # A shell starts background commands with SIGINT ignored, and children inherit that.
    # standalone needs the default handler, or it ignores the SIGINT that stop() sends.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _live_group_members(group: int, leader: subprocess.Popen[bytes]) -> list[int]:
    """Return the ids of the processes in process group ``group`` that have not exited.

    Zombies do not count: an orphaned task process that exited stays a zombie in the group
    where no init process reaps it, as in some containers.
    """
    leader.poll()
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # The command name in brackets may contain spaces; the fields after it are fixed.
        fields = text[text.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(stat.parent.name))
    return members


def main(argv: list[str] | None = None) -> int:
    """Start Airflow with the emulator, print how to log in, and run until Ctrl+C."""
    parser = argparse.ArgumentParser(description="Run Airflow 3 standalone with the SEPA emulator on 127.0.0.1.")
    parser.add_argument("--home", type=Path, default=PROJECT_ROOT / ".airflow", help="AIRFLOW_HOME folder")
    parser.add_argument("--port", type=int, default=8080, help="api-server port; 0 picks a free port")
    parser.add_argument("--emulator-port", type=int, default=8765, help="emulator port; 0 picks a free port")
    parser.add_argument("--sites", default="main,shop-de,shop-at,shop-fr", help="comma-separated site codes")
    args = parser.parse_args(argv)

    api_port = args.port if args.port and port_is_free(args.port) else free_port()
    emulator_port = args.emulator_port if args.emulator_port and port_is_free(args.emulator_port) else 0
    sites = [site.strip() for site in args.sites.split(",") if site.strip()]
    airflow = AirflowStandalone(args.home, api_port=api_port, emulator_port=emulator_port, sites=sites)

    print(f"Starting Airflow in {airflow.home}; its output goes to {airflow.log_path}.")
    print("Startup takes 15 to 60 seconds; the first one also creates the database.")
    started = time.monotonic()
    try:
        airflow.start()
    except KeyboardInterrupt:
        print("Interrupted; Airflow is stopped.")
        return 130
    except (RuntimeError, TimeoutError, httpx.HTTPError) as error:
        print(f"Airflow did not start: {error}", file=sys.stderr)
        return 1
    try:
        airflow.unpause("sepa_export_on_demand")
        airflow.unpause("sepa_export_outbox")
        print(
            f"\nAirflow is ready after {time.monotonic() - started:.0f} s.\n"
            f"  UI:         {airflow.url}\n"
            f"  Log in as:  {ADMIN_USER}, with the password stored in {airflow.password_file}\n"
            f"  Emulator:   {airflow.emulator.url} (connection emporix_default, tenant "
            f"{airflow.emulator.config.tenant})\n"
            f"  Files:      {airflow.export_dir} (sepa_export_dir), {airflow.outbox_dir} (sepa_export_outbox_dir)\n"
            "sepa_export_on_demand and sepa_export_outbox are unpaused; sepa_export_nightly stays paused.\n"
            "Press Ctrl+C to stop Airflow and the emulator."
        )
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nStopping Airflow ...")
    finally:
        airflow.stop()
    print("Stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
