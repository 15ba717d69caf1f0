"""Measure what importing an operator or sensor module costs on top of ``airflow.sdk``.

Each measurement runs ``python -X importtime -c "import airflow.sdk; import MODULE"`` in a
fresh process and reads the cumulative microseconds of MODULE's own line, which include
its parent packages and everything it imports that ``airflow.sdk`` had not loaded yet.
The figure is the median of ``--runs`` runs, taken round-robin over the modules after one
warm-up run each that writes the bytecode caches.

The dbt Cloud and http providers are the references. They are measured in .venv-bench,
which this script builds from constraints.txt and benchmarks/requirements.txt, never in
the project's .venv.

    .venv/bin/python benchmarks/import_cost.py [--runs 5] [--markdown-out FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import bench_common
from bench_common import log, markdown_table, median

#: Goal for this provider's modules, in milliseconds.
GOAL_MS = 10.0


@dataclass(frozen=True)
class Target:
    provider: str
    role: str
    module: str
    ours: bool = False


TARGETS = (
    Target("airflow-provider-sepa", "operators", "airflow_provider_sepa.operators.sepa_export", ours=True),
    Target("airflow-provider-sepa", "sensors", "airflow_provider_sepa.sensors.sepa_export", ours=True),
    Target("dbt Cloud 4.11.1", "operators", "airflow.providers.dbt.cloud.operators.dbt"),
    Target("dbt Cloud 4.11.1", "hook", "airflow.providers.dbt.cloud.hooks.dbt"),
    Target("http 6.3.0", "operators", "airflow.providers.http.operators.http"),
)
#: The module that the ratio column divides by.
RATIO_BASE = "airflow.providers.dbt.cloud.operators.dbt"


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="sepa-bench-import-home-")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def is_importable(python: str, module: str, env: dict[str, str]) -> bool:
    """Return whether ``module`` imports without error under ``python``."""
    result = subprocess.run([python, "-c", f"import {module}"], env=env, capture_output=True, timeout=300)
    return result.returncode == 0


def parse_cumulative_us(importtime_output: str, module: str) -> int:
    """Return the cumulative microseconds of ``module``'s line in ``-X importtime`` output.

    Lines read ``import time: <self us> | <cumulative us> | <indent><module>``. A module
    inside an import cycle can also appear nested in its own import, so the last line
    for ``module``, which closes the outermost import, is the one that counts.
    :raises ValueError: when the output has no line for ``module``.
    """
    cumulative: int | None = None
    for line in importtime_output.splitlines():
        if not line.startswith("import time:"):
            continue
        fields = line[len("import time:") :].split("|")
        if len(fields) == 3 and fields[2].strip() == module:
            cumulative = int(fields[1])
    if cumulative is None:
        raise ValueError(
            f"-X importtime printed no line for {module}. Check that importing airflow.sdk does not import it already."
        )
    return cumulative


def measure_once(python: str, module: str, env: dict[str, str]) -> int:
    """Run one fresh interpreter and return the module's cumulative import time in microseconds."""
    result = subprocess.run(
        [python, "-X", "importtime", "-c", f"import airflow.sdk; import {module}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"Importing {module} failed:\n{result.stderr[-2000:]}")
    return parse_cumulative_us(result.stderr, module)


def run(python: str, runs: int) -> str:
    """Measure every importable target and return the Markdown result."""
    env = _environment()
    targets = [target for target in TARGETS if is_importable(python, target.module, env)]
    missing = [target for target in TARGETS if target not in targets]
    samples: dict[str, list[int]] = {target.module: [] for target in targets}
    airflow_sdk_samples: list[int] = []

    for target in targets:
        measure_once(python, target.module, env)  # warm-up: writes bytecode caches
    for round_number in range(1, runs + 1):
        log(f"import cost: round {round_number} of {runs}")
        for target in targets:
            samples[target.module].append(measure_once(python, target.module, env))
        airflow_sdk_samples.append(_airflow_sdk_us(python, env))

    medians_ms = {module: median(values) / 1000 for module, values in samples.items()}
    base_ms = medians_ms.get(RATIO_BASE)
    rows = []
    for target in targets:
        value = medians_ms[target.module]
        low, high = min(samples[target.module]) / 1000, max(samples[target.module]) / 1000
        ratio = f"{value / base_ms:.3f}" if base_ms else "n/a"
        goal = "reference"
        if target.ours:
            goal = f"≤ {GOAL_MS:.0f} ms: {'met' if value <= GOAL_MS else 'NOT met'}"
        rows.append(
            [target.provider, target.role, f"`{target.module}`", f"{value:.1f}", f"{low:.1f}-{high:.1f}", ratio, goal]
        )
    for target in missing:
        rows.append([target.provider, target.role, f"`{target.module}`", "not installed", "", "", ""])

    table = markdown_table(
        ["provider", "module", "import", "median ms", "min-max ms", "ratio to dbt Cloud operators", "goal"], rows
    )
    sdk_ms = median(airflow_sdk_samples) / 1000
    notes = (
        f"Median of {runs} fresh processes per module after one warm-up run each, "
        f"interpreter `{os.path.relpath(python, bench_common.REPO_ROOT)}`. "
        f"For scale, `import airflow.sdk` itself took {sdk_ms:.0f} ms (median) in the same runs."
    )
    return f"{table}\n\n{notes}"


def _airflow_sdk_us(python: str, env: dict[str, str]) -> int:
    result = subprocess.run(
        [python, "-X", "importtime", "-c", "import airflow.sdk"], env=env, capture_output=True, text=True, timeout=300
    )
    return parse_cumulative_us(result.stderr, "airflow.sdk")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per module (default 5)")
    parser.add_argument(
        "--python",
        help="interpreter to measure with; default: .venv-bench, built when missing, else this interpreter",
    )
    parser.add_argument(
        "--base-python", default="python3", help="interpreter that builds .venv-bench (default python3)"
    )
    parser.add_argument("--markdown-out", help="also write the Markdown result to this file")
    args = parser.parse_args()

    python = args.python
    if python is None:
        bench_python = bench_common.ensure_bench_venv(args.base_python)
        python = str(bench_python) if bench_python else sys.executable
    markdown = run(python, args.runs)
    print(markdown)
    bench_common.write_markdown(args.markdown_out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
