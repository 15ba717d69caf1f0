"""Helpers shared by the benchmark scripts: tables, machine facts, Airflow settings, .venv-bench."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = REPO_ROOT / ".venv-bench"
BENCH_REQUIREMENTS = REPO_ROOT / "benchmarks" / "requirements.txt"
#: The pip version that the Makefile installs into .venv, so both venvs resolve alike.
PIP_VERSION = "26.3"
MIB = 1024 * 1024


def log(message: str) -> None:
    """Print a progress line to stderr, so that stdout carries only the result tables."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Format rows as a GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    """Return the median of a non-empty sequence."""
    return statistics.median(values)


def write_markdown(path: str | None, text: str) -> None:
    """Write a script's Markdown result to ``path`` for the runner, when a path is given."""
    if path:
        Path(path).write_text(text + "\n", encoding="utf-8")


# -- Airflow environment ------------------------------------------------------------------


def isolate_airflow_home() -> str:
    """Point AIRFLOW_HOME at a fresh temporary folder, so no benchmark touches ~/airflow.

    Airflow's task logs go to stdout outside a task runner, so the level defaults to ERROR
    here and the result tables stay readable. Set AIRFLOW__LOGGING__LOGGING_LEVEL=INFO
    to see every request the operators log.
    """
    home = tempfile.mkdtemp(prefix="sepa-bench-airflow-home-")
    os.environ["AIRFLOW_HOME"] = home
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
    return home


def connection_json(url: str, client_id: str, client_secret: str, tenant: str) -> str:
    """Return the ``emporix`` connection in Airflow's JSON form for an AIRFLOW_CONN_* variable."""
    return json.dumps(
        {
            "conn_type": "emporix",
            "host": url,
            "login": client_id,
            "password": client_secret,
            "extra": {"tenant": tenant},
        }
    )


# -- machine facts ------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / (1024 * 1024):.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version_of(python: str, distribution: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    try:
        result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    except (subprocess.SubprocessError, OSError):
        return "not installed"
    return result.stdout.strip()


def machine_info(python: str = sys.executable) -> dict[str, str]:
    """Return the facts a recorded run needs: CPU, cores, RAM, OS, Python, Airflow, curl, date."""
    try:
        curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, timeout=30).stdout.split()[1]
    except (OSError, IndexError, subprocess.SubprocessError):
        curl = "not installed"
    python_version = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "RAM": _memory_gib(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": python_version,
        "Airflow": _version_of(python, "apache-airflow"),
        "curl": curl,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# -- .venv-bench --------------------------------------------------------------------------


def _bench_venv_fingerprint() -> str:
    digest = hashlib.sha256(PIP_VERSION.encode())
    for name in ("constraints.txt", "pyproject.toml", "benchmarks/requirements.txt"):
        digest.update((REPO_ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_bench_venv(base_python: str = "python3") -> Path | None:
    """Build .venv-bench with the project, constraints.txt and the reference providers.

    The venv is rebuilt only when constraints.txt, pyproject.toml or
    benchmarks/requirements.txt changed. Returns its interpreter, or ``None`` when the
    build failed (for example without access to the package index); the caller then
    measures only this project's modules.
    """
    stamp = BENCH_VENV / ".installed"
    python = BENCH_VENV / "bin" / "python"
    fingerprint = _bench_venv_fingerprint()
    if stamp.is_file() and python.exists() and stamp.read_text().strip() == fingerprint:
        return python

    log(f"Building {BENCH_VENV.name} with the reference providers; this takes a few minutes once.")
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    steps = [
        [base_python, "-m", "venv", "--clear", str(BENCH_VENV)],
        [*pip, "install", f"pip=={PIP_VERSION}"],
        [*pip, "install", "-c", "constraints.txt", "-e", ".", "-r", str(BENCH_REQUIREMENTS)],
    ]
    for step in steps:
        result = subprocess.run(step, cwd=REPO_ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            log(f"Building {BENCH_VENV.name} failed at: {' '.join(step)} (exit code {result.returncode}):")
            log(result.stderr[-4000:])
            return None
    stamp.write_text(fingerprint + "\n")
    return python
