"""Command line entry point: ``python -m airflow_provider_sepa.emulator`` or ``sepa-emulator``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from airflow_provider_sepa.emulator.config import DEFAULT_SEED, DEFAULT_SITES, EmulatorConfig, generate_client_secret
from airflow_provider_sepa.emulator.faults import Fault, parse_fault

DEFAULT_PORT = 8765
CLIENT_SECRET_ENV = "SEPA_EMULATOR_CLIENT_SECRET"

log = logging.getLogger(__name__)


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text}: expected seconds >= 0")
    return value


def _site_list(text: str) -> tuple[str, ...]:
    sites = tuple(part.strip() for part in text.split(",") if part.strip())
    if not sites:
        raise argparse.ArgumentTypeError(f"invalid site list {text!r}: expected comma-separated site codes")
    return sites


def _site_order_count(text: str) -> tuple[str, int]:
    site_code, separator, count = text.partition("=")
    if not separator or not site_code or not count.isdigit():
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected SITE=COUNT, for example big=500000")
    return site_code, int(count)


def _orders_per_site(text: str) -> int | tuple[int, int]:
    low, separator, high = text.partition("-")
    if low.isdigit() and not separator:
        return int(low)
    if low.isdigit() and high.isdigit():
        return int(low), int(high)
    raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected COUNT or MIN-MAX, for example 5-40")


def _fault(text: str) -> Fault:
    try:
        return parse_fault(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


_FAULT_EPILOG = """\
fault syntax: ENDPOINT:ACTION[:OPTION...]
  ENDPOINT  token, list, create, download or any
  ACTION    429, 500, 502, 503, 504 (or another status from 400 to 599),
            html[=CODE], malformed-json, drop, drop-body[=BYTES], lose-reply,
            delay=SECONDS, revoke-tokens, expire-tokens,
            bom, no-charset (download), lifetime=SECONDS (token),
            job=failed|completed-no-file|unknown|unknown-no-file (create),
            newer-jobs=COUNT (create)
  OPTION    N or times=N (next N matching calls), every=K (every K-th call,
            without end unless times is given), site=CODE, file=FILE_ID,
            retry-after=SECONDS, stage=request|reply (delay), status=STRING (job)
examples:
  --fault create:lose-reply:1 --fault any:503:every=3 --fault list:429:retry-after=2:times=3
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the emulator command."""
    parser = argparse.ArgumentParser(
        prog="sepa-emulator",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_FAULT_EPILOG,
        description=(
            "Run a local emulator of the Emporix SEPA Export API and its OAuth token endpoint "
            "on 127.0.0.1, for tests and demos. The client secret is read from "
            f"{CLIENT_SECRET_ENV} or generated."
        ),
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TCP port; 0 picks a free port (default {DEFAULT_PORT})"
    )
    parser.add_argument("--port-file", type=Path, help="write the bound port to this file once the server serves")

    parser.add_argument("--tenant", default="demo", help="tenant name, lowercase (default demo)")
    parser.add_argument("--client-id", default="sepa-demo-client", help="OAuth client id (default sepa-demo-client)")
    parser.add_argument(
        "--token-lifetime",
        type=_positive_float,
        default=14399,
        help="access token lifetime in seconds (default 14399)",
    )
    parser.add_argument(
        "--job-duration", type=_positive_float, default=2.0, help="seconds until a job completes (default 2.0)"
    )

    parser.add_argument(
        "--sites",
        type=_site_list,
        default=DEFAULT_SITES,
        help=f"comma-separated site codes (default {','.join(DEFAULT_SITES)})",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"seed of the generated orders (default {DEFAULT_SEED})"
    )
    parser.add_argument(
        "--orders-per-site",
        type=_orders_per_site,
        default=(5, 40),
        help="orders per site: COUNT, or MIN-MAX drawn per site with the seed (default 5-40)",
    )
    parser.add_argument(
        "--site-orders",
        type=_site_order_count,
        action="append",
        default=[],
        metavar="SITE=COUNT",
        help="fixed order count for one site, added to the sites if missing; repeatable (example: big=500000)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="directory for generated files (default: a temporary directory removed at exit)",
    )

    parser.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="SPEC",
        help="inject a fault, repeatable; see the fault syntax below and docs/emulator.md",
    )

    parser.add_argument(
        "--print-secret",
        action="store_true",
        help="print the client secret to stdout once, for local development only",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level of the emulator and uvicorn (default warning)",
    )
    return parser


def _write_port_file(path: Path, port: int) -> None:
    """Write the port atomically, so a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(f"{port}\n", encoding="utf-8")
    partial.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT or SIGTERM and return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # Imported here so that --help works without loading uvicorn and FastAPI.
    from airflow_provider_sepa.emulator.server import EmulatorServer

    try:
        config = EmulatorConfig(
            tenant=args.tenant,
            client_id=args.client_id,
            client_secret=os.environ.get(CLIENT_SECRET_ENV) or generate_client_secret(),
            token_lifetime_seconds=args.token_lifetime,
            job_duration_seconds=args.job_duration,
            sites=args.sites,
            seed=args.seed,
            orders_per_site=args.orders_per_site,
            site_orders=dict(args.site_orders),
            data_dir=args.data_dir,
            faults=args.fault,
        )
        server = EmulatorServer(config, port=args.port, log_level=args.log_level)
    except ValueError as error:
        print(f"sepa-emulator: error: {error}", file=sys.stderr)
        return 2

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    try:
        server.start()
    except OSError as error:
        print(f"sepa-emulator: error: cannot listen on port {args.port}: {error}", file=sys.stderr)
        return 1
    try:
        banner = f"SEPA emulator serving at {server.url} (tenant {config.tenant}, client id {config.client_id})"
        print(banner, flush=True)
        if args.print_secret:
            print(f"Client secret (local development only): {config.client_secret}", flush=True)
        if args.port_file is not None:
            _write_port_file(args.port_file, server.port)
        # Wait in short steps so that the signal handler runs promptly on every platform.
        while not stop_requested.wait(0.5):
            pass
    finally:
        server.stop()
    print("SEPA emulator stopped", flush=True)
    return 0
