"""Emulator process for benchmarks/triggers.py: running jobs, a TCP connection counter and a control pipe.

benchmarks/triggers.py starts this script once per measurement, so that the emulator's
CPU time and memory never count as the pollers' own. It serves the emulator application
with uvicorn on 127.0.0.1 and creates ``--jobs`` export jobs through the emulator state
before it prints anything. Each job belongs to its own site, so that it is the only job in
its site's job list and a poller finds it on the first page:

- ``--clients one``: one tenant and one client whose jobs all run at once, which needs
  ``EmulatorConfig.max_active_jobs_per_tenant``. The real API runs one job per tenant.
- ``--clients per-job``: one tenant and one client per job, so every job follows the
  API's one-job-per-tenant rule and every poller needs its own token.

Client secrets come from the environment variable SEPA_BENCH_CLIENT_SECRET: the client of
job ``i`` has the secret ``<value>-<i>`` in ``per-job`` mode and ``<value>`` in ``one``
mode. Nothing this script prints contains a secret.

Control protocol, with one JSON object per line on stdout:

1. At start: ``{"url": ..., "pid": ..., "jobs": [{"job_id", "site_code", "tenant", "client_id",
   "secret_suffix"}, ...]}``.
2. SIGUSR2 sets the connection count to zero and clears the request log, so that the
   poller's warm-up does not count.
3. SIGUSR1 moves the emulator's clock forward by the job duration, so every running
   job reports ``COMPLETED`` at its next read.
4. The line ``stats`` on stdin returns ``{"connections": ..., "requests": {endpoint: count},
   "statuses": {status: count}}``: TCP connections accepted and requests logged since
   start or since the last SIGUSR2.
5. End of stdin stops the server and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from airflow_provider_sepa.emulator import EmulatorConfig
from airflow_provider_sepa.emulator.app import create_app
from airflow_provider_sepa.emulator.state import EmulatorState

SECRET_ENV = "SEPA_BENCH_CLIENT_SECRET"
#: Seconds a job runs. SIGUSR1 moves the clock on by this much, which ends every job.
JOB_DURATION_SECONDS = 3600.0
#: Longer than JOB_DURATION_SECONDS, so that the clock jump expires no token.
TOKEN_LIFETIME_SECONDS = 4 * 3600
START_TIMEOUT_SECONDS = 20.0


class ConnectionCounter:
    """Number of TCP connections the server accepted, counted in the protocol's ``connection_made``."""

    def __init__(self) -> None:
        self._count = 0
        # Reentrant, because the SIGUSR2 handler may interrupt the main thread inside ``count``.
        self._lock = threading.RLock()

    def increment(self) -> None:
        with self._lock:
            self._count += 1

    def reset(self) -> None:
        with self._lock:
            self._count = 0

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


CONNECTIONS = ConnectionCounter()


class CountingHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's default HTTP protocol (httptools when installed, else h11), counting each connection."""

    def connection_made(self, transport: Any) -> None:
        CONNECTIONS.increment()
        super().connection_made(transport)


class JumpingClock:
    """Wall clock plus an offset that SIGUSR1 increases by the job duration."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def jump(self, signum: int, frame: Any) -> None:
        self.offset += JOB_DURATION_SECONDS


def site_code(index: int) -> str:
    return f"s{index:05d}"


def create_jobs(state: EmulatorState, config: EmulatorConfig, jobs: int, clients: str) -> list[dict[str, Any]]:
    """Register the clients, create ``jobs`` running jobs and return what a poller needs to find each."""
    created = []
    for index in range(jobs):
        site = site_code(index)
        if clients == "one":
            tenant, client_id, suffix = config.tenant, config.client_id, ""
        else:
            tenant, client_id, suffix = f"bench-{index:05d}", f"bench-client-{index:05d}", f"-{index}"
            state.add_client(client_id, config.client_secret + suffix, tenant=tenant)
        job = state.create_job(tenant, site)
        created.append(
            {"job_id": job.job_id, "site_code": site, "tenant": tenant, "client_id": client_id, "secret_suffix": suffix}
        )
    return created


def serve(jobs: int, clients: str) -> int:
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        print(f"Missing environment variable {SECRET_ENV}: set it to the client secret to use.", file=sys.stderr)
        return 2
    clock = JumpingClock()
    config = EmulatorConfig(
        tenant="bench",
        client_id="bench-client",
        client_secret=secret,
        token_lifetime_seconds=TOKEN_LIFETIME_SECONDS,
        job_duration_seconds=JOB_DURATION_SECONDS,
        max_active_jobs_per_tenant=max(jobs, 1) if clients == "one" else 1,
        sites=tuple(site_code(index) for index in range(jobs)),
        orders_per_site=1,
        request_log_limit=10_000_000,
        clock=clock,
    )
    state = EmulatorState(config)
    signal.signal(signal.SIGUSR1, clock.jump)

    def reset_counts(signum: int, frame: Any) -> None:
        CONNECTIONS.reset()
        state.clear_request_log()

    signal.signal(signal.SIGUSR2, reset_counts)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # No fault closes a connection in this benchmark, so the application needs no connection closer.
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(state),
            http=CountingHTTPProtocol,
            log_level="warning",
            access_log=False,
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="bench-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            print(f"The emulator did not start on 127.0.0.1:{port}.", file=sys.stderr)
            return 1
        time.sleep(0.01)

    try:
        created = create_jobs(state, config, jobs, clients)
        print(json.dumps({"url": f"http://127.0.0.1:{port}", "pid": os.getpid(), "jobs": created}), flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                log = state.request_log()
                stats = {
                    "connections": CONNECTIONS.count,
                    "requests": dict(Counter(entry["endpoint"] for entry in log)),
                    "statuses": dict(Counter(str(entry["status_code"]) for entry in log)),
                }
                print(json.dumps(stats), flush=True)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        state.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, required=True, help="number of running jobs to create")
    parser.add_argument(
        "--clients", choices=("one", "per-job"), default="one", help="one client for all jobs, or one per job"
    )
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"invalid --jobs {args.jobs}: use 1 or more")
    return serve(args.jobs, args.clients)


if __name__ == "__main__":
    sys.exit(main())
