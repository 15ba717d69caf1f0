"""Measure many SepaExportJobTriggers waiting in one event loop, against a naive poller.

For each count N, two pollers wait for N running export jobs, each in a new process with
one asyncio event loop:

- "trigger": N ``SepaExportJobTrigger`` instances, each run to its first event as the
  triggerer runs them.
- "baseline": N trivial pollers that create a new ``httpx.AsyncClient`` for every request,
  fetch their own token once and then list the job's site at every poll.

Every measurement gets its own emulator process (benchmarks/triggers_emulator.py) on
127.0.0.1, so that the emulator's CPU time and memory never count as the pollers'. Its
jobs keep running for ``--hold-seconds`` after the pollers start. Then the emulator's
clock jumps forward, every job completes, and each poller should end with success.

Figures per measurement:

- RSS growth: VmHWM at the end minus VmRSS before the first poller starts. Before that
  the worker imports the modules, defines the connections, resolves one connection and
  sends one request with httpx, so that one-time costs of the process do not count, and
  resets VmHWM through /proc/self/clear_refs. "At hold
  end" is VmRSS when the hold ends, while every poller still waits.
- Loop lag: a ticker task sleeps 10 ms in a loop and records how much later than that it
  wakes up, from the start of the first poller until the last one ends. For the worst
  tick it also records the CPU time the event loop's thread used meanwhile: a lag much
  longer than that CPU time means the machine ran other processes, not the loop's work.
- Garbage collection: the longest pause of Python's cyclic garbage collector and the
  number of full (generation 2) collections, timed with ``gc.callbacks``. "Before start"
  is one full collection of the warmed-up process before the first poller starts. "Max
  lag outside full GCs" leaves out the ticks during which a full collection ran.
- TCP connections: connections the emulator's uvicorn server accepted after the warm-up.
- Requests: entries in the emulator's request log after the warm-up, per endpoint.

    .venv/bin/python benchmarks/triggers.py [--counts 10,100,1000] [--poll-interval 30] \\
        [--hold-seconds 35] [--clients one|per-job] [--variants trigger,baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_common
from bench_common import log, markdown_table

EMULATOR_SCRIPT = Path(__file__).resolve().parent / "triggers_emulator.py"
SECRET_ENV = "SEPA_BENCH_CLIENT_SECRET"
VARIANTS = ("trigger", "baseline")
#: Seconds between two wake-ups of the loop lag ticker.
TICK_SECONDS = 0.01
#: Seconds the pollers get to end after the jobs complete.
END_TIMEOUT_SECONDS = 300.0
#: Seconds the emulator gets to start and create its jobs.
EMULATOR_START_TIMEOUT_SECONDS = 300.0
#: The trigger's default page size, so that both pollers send the same query.
PAGE_SIZE = 50
#: The default poll interval of the sensor and the create operator, in seconds.
DEFAULT_POLL_INTERVAL = 30.0
#: Long enough for every poller to poll at least twice while the jobs run.
DEFAULT_HOLD_SECONDS = 35.0


# -- worker: one poller variant in one event loop -----------------------------------------


def read_proc_status_kib() -> dict[str, int]:
    """Return VmRSS and VmHWM of this process in KiB."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0 and later) and return whether that worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def connection_id(job: dict[str, Any]) -> str:
    return f"bench_sepa_{job['client_id'].replace('-', '_')}"


def define_connections(setup: dict[str, Any], secret: str) -> None:
    """Define one Airflow connection per client, and one for the warm-up, as AIRFLOW_CONN_* variables."""
    for job in setup["jobs"]:
        name = f"AIRFLOW_CONN_{connection_id(job).upper()}"
        os.environ[name] = bench_common.connection_json(
            setup["url"], job["client_id"], secret + job["secret_suffix"], job["tenant"]
        )
    os.environ["AIRFLOW_CONN_BENCH_SEPA_WARMUP"] = bench_common.connection_json(
        setup["url"], "warm-up-client", secret + "-warm-up", "warmup"
    )


@dataclass(frozen=True)
class LagSample:
    """One wake-up of the ticker: when, how late, and the loop thread's CPU time since it slept.

    ``slept_at`` and ``woke_at`` are ``time.perf_counter()`` values.
    """

    elapsed: float
    lag: float
    loop_cpu: float
    slept_at: float
    woke_at: float


class LoopLagTicker:
    """Task that sleeps TICK_SECONDS in a loop and records how late each wake-up comes."""

    def __init__(self) -> None:
        self.samples: list[LagSample] = []
        self._stop = asyncio.Event()

    async def run(self, limit_seconds: float) -> None:
        started = time.perf_counter()
        while not self._stop.is_set() and time.perf_counter() - started < limit_seconds:
            before = time.perf_counter()
            cpu_before = time.thread_time()
            await asyncio.sleep(TICK_SECONDS)
            woke = time.perf_counter()
            self.samples.append(
                LagSample(woke - started, woke - before - TICK_SECONDS, time.thread_time() - cpu_before, before, woke)
            )

    def stop(self) -> None:
        self._stop.set()


@dataclass(frozen=True)
class GcPause:
    """One garbage collection: its generation, and its start and end as ``time.perf_counter()`` values."""

    generation: int
    started_at: float
    ended_at: float

    @property
    def seconds(self) -> float:
        return self.ended_at - self.started_at


class GcTimer:
    """Record each garbage collection with its generation, while installed."""

    def __init__(self) -> None:
        self.pauses: list[GcPause] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(GcPause(info["generation"], self._started, time.perf_counter()))

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self)


def make_trigger_waiter(setup: dict[str, Any]) -> Callable[[dict[str, Any]], Awaitable[str]]:
    from airflow_provider_sepa.triggers.sepa_export import SepaExportJobTrigger

    async def wait_with_trigger(job: dict[str, Any]) -> str:
        now = time.time()
        trigger = SepaExportJobTrigger(
            site_code=job["site_code"],
            job_id=job["job_id"],
            deadline=now + setup["hold_seconds"] + END_TIMEOUT_SECONDS,
            started_at=now,
            emporix_conn_id=connection_id(job),
            poll_interval=setup["poll_interval"],
        )
        events = trigger.run()
        try:
            event = await events.__anext__()
        finally:
            await events.aclose()
        return str(event.payload["status"])

    return wait_with_trigger


def make_baseline_waiter(setup: dict[str, Any], secret: str) -> Callable[[dict[str, Any]], Awaitable[str]]:
    import httpx

    url = setup["url"]

    async def wait_naively(job: dict[str, Any]) -> str:
        form = {
            "grant_type": "client_credentials",
            "client_id": job["client_id"],
            "client_secret": secret + job["secret_suffix"],
        }
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{url}/oauth/token", data=form)
        response.raise_for_status()
        headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        params = {"siteCode": job["site_code"], "pageNumber": 1, "pageSize": PAGE_SIZE, "sort": "DESC"}
        deadline = time.monotonic() + setup["hold_seconds"] + END_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{url}/sepa-export/{job['tenant']}/jobs", params=params, headers=headers)
            response.raise_for_status()
            listed = [item for item in response.json() if item["jobId"] == job["job_id"]]
            if listed and not listed[0]["active"]:
                return "success" if listed[0]["status"] == "COMPLETED" else f"failed: {listed[0]['status']}"
            await asyncio.sleep(setup["poll_interval"])
        return "timeout"

    return wait_naively


async def warm_up(url: str) -> None:
    """Load what every poller needs once per process: modules, the secrets backend, httpx's lazy imports.

    The request goes to the emulator's health endpoint, which the request log leaves out.
    """
    import httpx

    from airflow_provider_sepa.hooks.sepa_export import SepaExportAsyncHook

    await SepaExportAsyncHook("bench_sepa_warmup").get_settings()
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{url}/_emulator/health")
    response.raise_for_status()


def describe_outcome(outcome: object) -> str:
    if isinstance(outcome, BaseException):
        message = str(outcome)
        return f"{type(outcome).__name__}: {message}" if message else type(outcome).__name__
    return str(outcome)


async def measure_pollers(variant: str, setup: dict[str, Any], secret: str) -> dict[str, Any]:
    """Run one poller per job until all have ended, and return the worker's figures."""
    await warm_up(setup["url"])
    waiter = make_trigger_waiter(setup) if variant == "trigger" else make_baseline_waiter(setup, secret)
    hold = setup["hold_seconds"]
    ticker = LoopLagTicker()

    os.kill(setup["emulator_pid"], signal.SIGUSR2)
    gc_started, gc_cpu_started = time.perf_counter(), time.thread_time()
    gc.collect()
    warm_full_gc = (time.perf_counter() - gc_started, time.thread_time() - gc_cpu_started)
    before = read_proc_status_kib()
    peak_was_reset = reset_peak_rss()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    with GcTimer() as gc_timer:
        ticker_task = asyncio.create_task(ticker.run(hold + END_TIMEOUT_SECONDS))
        tasks = [asyncio.create_task(waiter(job)) for job in setup["jobs"]]
        await asyncio.sleep(hold)
        at_hold_end = read_proc_status_kib()
        os.kill(setup["emulator_pid"], signal.SIGUSR1)
        log(f"{variant}: held {time.monotonic() - started:.1f} s; the jobs complete now.")
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), END_TIMEOUT_SECONDS)
        seconds = time.monotonic() - started
        ticker.stop()
        await ticker_task
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    after = read_proc_status_kib()

    baseline_kib = before["VmRSS"] if peak_was_reset else before["VmHWM"]
    samples = sorted(ticker.samples, key=lambda sample: sample.lag)
    worst = samples[-1]
    # After start-up: from two poll intervals on, when every poller has polled, until the hold ends.
    steady = [sample.lag for sample in samples if 2 * setup["poll_interval"] <= sample.elapsed <= hold]
    full_gcs = [pause for pause in gc_timer.pauses if pause.generation == 2]
    # Ticks during which no full collection ran: their lag is the pollers' own work and the machine's.
    outside_full_gc = [
        sample.lag
        for sample in samples
        if not any(pause.started_at < sample.woke_at and pause.ended_at > sample.slept_at for pause in full_gcs)
    ]
    return {
        "variant": variant,
        "pollers": len(setup["jobs"]),
        "rss_growth_peak_mib": max(after["VmHWM"] - baseline_kib, 0) / 1024,
        "rss_growth_hold_end_mib": (at_hold_end["VmRSS"] - before["VmRSS"]) / 1024,
        "peak_was_reset": peak_was_reset,
        "max_lag_ms": worst.lag * 1000,
        "max_lag_loop_cpu_ms": worst.loop_cpu * 1000,
        "max_lag_at_s": worst.elapsed,
        "max_steady_lag_ms": max(steady) * 1000 if steady else None,
        "p99_lag_ms": samples[int(len(samples) * 0.99)].lag * 1000,
        "warm_full_gc_ms": warm_full_gc[0] * 1000,
        "warm_full_gc_cpu_ms": warm_full_gc[1] * 1000,
        "max_lag_outside_full_gc_ms": max(outside_full_gc, default=0.0) * 1000,
        "max_gc_pause_ms": max((pause.seconds for pause in gc_timer.pauses), default=0.0) * 1000,
        "full_collections": len(full_gcs),
        "cpu_seconds": usage_after.ru_utime - usage_before.ru_utime + usage_after.ru_stime - usage_before.ru_stime,
        "seconds": seconds,
        "outcomes": dict(Counter(describe_outcome(outcome) for outcome in outcomes)),
    }


def run_worker(variant: str, setup_path: str) -> int:
    setup = json.loads(Path(setup_path).read_text(encoding="utf-8"))
    secret = os.environ[SECRET_ENV]
    define_connections(setup, secret)
    profile_path = setup.get("profile_path")
    if profile_path:
        import cProfile

        # cProfile profiles only the thread that enables it, here the event loop's thread.
        profiler = cProfile.Profile()
        result = profiler.runcall(asyncio.run, measure_pollers(variant, setup, secret))
        profiler.dump_stats(profile_path)
    else:
        result = asyncio.run(measure_pollers(variant, setup, secret))
    print(json.dumps(result), flush=True)
    return 0


# -- orchestrator -------------------------------------------------------------------------


def read_json_line(process: subprocess.Popen[str], timeout: float, what: str) -> dict[str, Any]:
    """Read one JSON line from the emulator's stdout, or raise RuntimeError when none comes within ``timeout``."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"The emulator sent no {what} within {timeout:.0f} s (exit code {process.poll()}).")
    return json.loads(line)


def stop_emulator(emulator: subprocess.Popen[str]) -> None:
    if emulator.stdin is not None:
        emulator.stdin.close()
    try:
        emulator.wait(timeout=30)
    except subprocess.TimeoutExpired:
        log(f"The emulator process {emulator.pid} did not stop within 30 s; killing it.")
        emulator.kill()
        emulator.wait(timeout=30)


def measure(variant: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start an emulator with ``count`` running jobs, run one worker against it and return all figures."""
    env = {**os.environ, SECRET_ENV: secrets.token_urlsafe(24)}
    load_before = os.getloadavg()[0]
    command = [sys.executable, str(EMULATOR_SCRIPT), "--jobs", str(count), "--clients", args.clients]
    emulator = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        setup = read_json_line(emulator, EMULATOR_START_TIMEOUT_SECONDS, "job list")
        setup.update(emulator_pid=setup["pid"], poll_interval=args.poll_interval, hold_seconds=args.hold_seconds)
        if args.profile_dir:
            os.makedirs(args.profile_dir, exist_ok=True)
            setup["profile_path"] = os.path.join(args.profile_dir, f"{variant}-{count}.prof")
        with tempfile.TemporaryDirectory(prefix="sepa-bench-triggers-") as folder:
            setup_path = os.path.join(folder, "setup.json")
            Path(setup_path).write_text(json.dumps(setup), encoding="utf-8")
            worker = subprocess.run(
                [sys.executable, __file__, "--worker", variant, "--setup", setup_path],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                timeout=args.hold_seconds + 2 * END_TIMEOUT_SECONDS,
            )
        if worker.returncode != 0:
            raise RuntimeError(f"The {variant} worker for N={count} failed with exit code {worker.returncode}.")
        result: dict[str, Any] = json.loads(worker.stdout.strip().splitlines()[-1])

        assert emulator.stdin is not None
        emulator.stdin.write("stats\n")
        emulator.stdin.flush()
        result["emulator"] = read_json_line(emulator, 60, "statistics")
    finally:
        stop_emulator(emulator)
    result["load_before"] = load_before
    result["load_after"] = os.getloadavg()[0]
    return result


def format_optional(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def format_results(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Return the settings line and two Markdown tables: resources, and event-loop lag."""
    resource_rows = []
    lag_rows = []
    for result in results:
        requests = result["emulator"]["requests"]
        tokens, lists = requests.get("token", 0), requests.get("list_jobs", 0)
        outcomes = ", ".join(f"{count} {outcome}" for outcome, count in sorted(result["outcomes"].items()))
        resource_rows.append(
            [
                f"{result['pollers']:,}",
                result["variant"],
                f"{result['rss_growth_peak_mib']:.1f}",
                f"{result['rss_growth_hold_end_mib']:.1f}",
                f"{result['emulator']['connections']:,}",
                f"{tokens:,}",
                f"{lists:,}",
                f"{lists / result['pollers']:.1f}",
                f"{result['cpu_seconds']:.1f}",
                f"{result['seconds']:.1f}",
                f"{result['load_before']:.1f} / {result['load_after']:.1f}",
                outcomes,
            ]
        )
        lag_rows.append(
            [
                f"{result['pollers']:,}",
                result["variant"],
                f"{result['max_lag_ms']:.0f}",
                f"{result['max_lag_loop_cpu_ms']:.0f}",
                f"{result['max_lag_at_s']:.1f}",
                format_optional(result["max_steady_lag_ms"]),
                f"{result['p99_lag_ms']:.1f}",
                f"{result['max_lag_outside_full_gc_ms']:.0f}",
                f"{result['max_gc_pause_ms']:.0f}",
                str(result["full_collections"]),
                f"{result['warm_full_gc_ms']:.0f} ({result['warm_full_gc_cpu_ms']:.0f})",
            ]
        )
    settings = (
        f"Poll interval {args.poll_interval:g} s, jobs held running for {args.hold_seconds:g} s after the "
        f"pollers start, clients: {args.clients}."
    )
    resource_table = markdown_table(
        [
            "N",
            "poller",
            "RSS growth, peak (MiB)",
            "RSS growth at hold end (MiB)",
            "TCP connections",
            "token requests",
            "list requests",
            "list requests per poller",
            "CPU (s)",
            "wall (s)",
            "load average before / after",
            "outcomes",
        ],
        resource_rows,
    )
    lag_table = markdown_table(
        [
            "N",
            "poller",
            "max loop lag (ms)",
            "loop CPU in that tick (ms)",
            "at (s)",
            "max lag after start-up (ms)",
            "p99 lag (ms)",
            "max lag outside full GCs (ms)",
            "longest GC pause (ms)",
            "full GCs",
            "full GC before start, wall (CPU) (ms)",
        ],
        lag_rows,
    )
    return f"{settings}\n\n{resource_table}\n\n{lag_table}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--counts", default="10,100,1000", help="comma-separated numbers of pollers (default 10,100,1000)"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_INTERVAL,
        help=f"seconds between two polls (default {DEFAULT_POLL_INTERVAL:g}, as in the sensor)",
    )
    parser.add_argument(
        "--hold-seconds",
        type=float,
        default=DEFAULT_HOLD_SECONDS,
        help=f"seconds the jobs keep running after the pollers start (default {DEFAULT_HOLD_SECONDS:g})",
    )
    parser.add_argument(
        "--clients",
        choices=("one", "per-job"),
        default="one",
        help="one Airflow connection and API client for all jobs, or one per job with its own tenant (default one)",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated pollers to run (default trigger,baseline)"
    )
    parser.add_argument("--markdown-out", help="also write the Markdown result to this file")
    parser.add_argument("--profile-dir", help="write a cProfile file of each worker's event loop thread to this folder")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        return run_worker(args.worker, args.setup)

    counts = [int(text) for text in args.counts.split(",")]
    variants = [text.strip() for text in args.variants.split(",")]
    if any(variant not in VARIANTS for variant in variants):
        parser.error(f"invalid --variants {args.variants!r}: use {' or '.join(VARIANTS)}, comma-separated")
    if any(count < 1 for count in counts):
        parser.error(f"invalid --counts {args.counts!r}: every count must be 1 or more")
    if args.poll_interval <= 0 or args.hold_seconds <= 0:
        parser.error("invalid --poll-interval or --hold-seconds: both must be greater than 0")
    bench_common.isolate_airflow_home()

    results = []
    for count in counts:
        for variant in variants:
            log(f"N={count}: {variant}")
            result = measure(variant, count, args)
            log(
                f"N={count} {variant}: peak RSS growth {result['rss_growth_peak_mib']:.1f} MiB, "
                f"max loop lag {result['max_lag_ms']:.0f} ms at {result['max_lag_at_s']:.1f} s, "
                f"{result['emulator']['connections']} connections, requests {result['emulator']['requests']}, "
                f"outcomes {result['outcomes']}"
            )
            results.append(result)

    text = format_results(results, args)
    print(text)
    bench_common.write_markdown(args.markdown_out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
