"""Run a DAG end to end against the local emulator with ``airflow dags test``.

The runner starts the emulator on a free loopback port and creates a throwaway
``AIRFLOW_HOME`` with a SQLite database. It points the ``emporix_default`` connection at
the emulator through ``AIRFLOW_CONN_EMPORIX_DEFAULT`` and runs the DAG. Then it checks
every file the DAG wrote: the bytes must match the emulator's copy (SHA-256), and the
pain.008 document must be well-formed with NbOfTxs and CtrlSum matching its transactions. The DAG's output is
scanned for the client secret and every issued access token.

Usage::

    python -m airflow_provider_sepa.emulator.demo --dags-folder dags --output exports
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_sepa.emulator.state import EmulatorState

DEFAULT_SITES = ("main", "shop-de", "shop-at", "shop-fr")
#: Marker file that lets the demo clear its own earlier output, and nothing else.
OUTPUT_MARKER = ".sepa-demo-output"


@dataclass
class ExportCheck:
    """Result of checking one exported file."""

    site_code: str
    path: Path
    size_bytes: int
    sha256: str
    transactions: int
    ctrl_sum: str
    problems: list[str]


def _airflow_env(
    home: Path, dags_folder: Path, output: Path, connection: dict[str, Any], sites: list[str]
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW_", "AIRFLOW__"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_EMPORIX_DEFAULT": json.dumps(connection),
            "AIRFLOW_VAR_SEPA_EXPORT_SITES": json.dumps(sites),
            "AIRFLOW_VAR_SEPA_EXPORT_DIR": str(output),
            "SEPA_EXPORT_POLL_SECONDS": "1",
        }
    )
    return env


def _run(command: list[str], env: dict[str, str], log: Path) -> str:
    """Run an Airflow CLI command, append its output to ``log`` and return the output."""
    started = time.monotonic()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    output = completed.stdout + completed.stderr
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(command)}\n{output}\n")
    print(f"  {' '.join(command[2:5])}: exit {completed.returncode} after {time.monotonic() - started:.1f} s")
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} exited with {completed.returncode}; see {log}")
    return output


def _prepare_output(output: Path) -> None:
    if output.exists() and any(output.iterdir()):
        if not (output / OUTPUT_MARKER).exists():
            raise SystemExit(
                f"Output folder {output} is not empty and was not written by the demo; choose another --output."
            )
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / OUTPUT_MARKER).write_text(
        "Written by the SEPA export demo; the demo clears this folder on its next run.\n"
    )


def check_exports(output: Path, sites: list[str], state: EmulatorState) -> list[ExportCheck]:
    """Check the file of every site under ``output`` against the emulator's copy."""
    from airflow_provider_sepa.emulator.sepa_xml import summarize_pain008

    checks = []
    for site in sites:
        files = sorted(output.glob(f"**/{site}/**/*.xml"))
        if len(files) != 1:
            checks.append(ExportCheck(site, output, 0, "", 0, "", [f"expected one file, found {len(files)}"]))
            continue
        path = files[0]
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        problems = []
        try:
            info = state.file_info(path.stem)
        except KeyError:
            problems.append(f"the emulator has no file {path.stem}")
        else:
            if info["sha256"] != digest:
                problems.append("SHA-256 differs from the emulator's file")
        summary = summarize_pain008(data)
        if summary["nb_of_txs_declared"] != summary["nb_of_txs_counted"]:
            problems.append("NbOfTxs does not match the transactions")
        if summary["ctrl_sum_declared"] != summary["ctrl_sum_computed"]:
            problems.append("CtrlSum does not match the transactions")
        if not summary["all_ibans_valid"]:
            problems.append("an IBAN has a wrong check digit")
        checks.append(
            ExportCheck(
                site,
                path,
                len(data),
                digest,
                summary["nb_of_txs_counted"],
                str(summary["ctrl_sum_computed"]),
                problems,
            )
        )
    return checks


def _print_summary(checks: list[ExportCheck], root: Path) -> None:
    print(f"{'site':<10} {'file':<62} {'bytes':>8} {'txs':>4} {'ctrl sum':>10}  sha256")
    for check in checks:
        try:
            display_path = check.path.relative_to(root)
        except ValueError:
            display_path = check.path
        print(
            f"{check.site_code:<10} {display_path!s:<62} {check.size_bytes:>8} {check.transactions:>4} "
            f"{check.ctrl_sum:>10}  {check.sha256}"
        )
        for problem in check.problems:
            print(f"  PROBLEM: {problem}")


def run_demo(
    dags_folder: Path,
    output: Path,
    dag_id: str,
    sites: list[str],
    job_duration: float,
    conf: str | None = None,
    faults: list[str] | None = None,
) -> int:
    """Run the demo and return the process exit code."""
    from airflow_provider_sepa.emulator.config import EmulatorConfig
    from airflow_provider_sepa.emulator.server import EmulatorServer

    dags_folder = dags_folder.resolve()
    output = output.resolve()
    _prepare_output(output)

    config = EmulatorConfig(sites=tuple(sites), job_duration_seconds=job_duration, faults=tuple(faults or ()))
    home = Path(tempfile.mkdtemp(prefix="sepa-demo-airflow-"))
    log = home / "airflow-output.log"
    with EmulatorServer(config) as server:
        print(f"Emulator listening on {server.url} (tenant {config.tenant}, client {config.client_id}).")
        connection = {
            "conn_type": "emporix",
            "host": server.url,
            "login": config.client_id,
            "password": config.client_secret,
            "extra": {"tenant": config.tenant},
        }
        env = _airflow_env(home, dags_folder, output, connection, sites)
        airflow = [sys.executable, "-m", "airflow"]
        try:
            print(f"Migrating a throwaway Airflow database in {home} ...")
            _run([*airflow, "db", "migrate"], env, log)
            _run([*airflow, "pools", "set", "sepa_export", "1", "One SEPA export job per tenant at a time"], env, log)
            print(f"Running `airflow dags test {dag_id}` ...")
            conf_args = ["--conf", conf] if conf else []
            dag_output = _run([*airflow, "dags", "test", dag_id, *conf_args], env, log)
        except RuntimeError as error:
            print(f"FAILED: {error}")
            return 1

        leaked = [secret for secret in [config.client_secret, *server.state.issued_tokens()] if secret in dag_output]
        checks = check_exports(output, sites, server.state)
        jobs = server.state.job_count()
        fired = Counter(spec for entry in server.state.request_log() for spec in entry["faults"])

    print()
    _print_summary(checks, Path.cwd())
    print()
    print(f"Export jobs created on the emulator: {jobs} for {len(sites)} sites.")
    if faults:
        print("Injected faults: " + ", ".join(f"{spec} acted {fired[spec]} times" for spec in faults) + ".")
    failed = any(check.problems for check in checks) or jobs != len(sites)
    if leaked:
        print(f"FAILED: the DAG output contains {len(leaked)} secret value(s); see {log}")
        return 1
    print("No client secret or access token appears in the DAG output.")
    if failed:
        print(f"FAILED: see the problems above and the Airflow output in {log}")
        return 1
    shutil.rmtree(home, ignore_errors=True)
    print(f"OK: {len(checks)} SEPA files under {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the demo."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dags-folder", type=Path, default=Path("dags"), help="folder with the DAG files")
    parser.add_argument("--output", type=Path, default=Path("exports"), help="folder that receives the files")
    parser.add_argument("--dag-id", default="sepa_export_nightly", help="DAG to run")
    parser.add_argument("--sites", default=",".join(DEFAULT_SITES), help="comma-separated site codes")
    parser.add_argument("--job-duration", type=float, default=2.0, help="seconds an export job runs")
    parser.add_argument("--conf", help="JSON run configuration passed to `airflow dags test --conf`")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        help="fault for the emulator to inject, such as any:503:every=3 (repeatable; see docs/emulator.md)",
    )
    args = parser.parse_args(argv)
    sites = [site.strip() for site in args.sites.split(",") if site.strip()]
    return run_demo(args.dags_folder, args.output, args.dag_id, sites, args.job_duration, args.conf, args.fault)


if __name__ == "__main__":
    sys.exit(main())
