"""Run the four benchmarks, print their tables and append a record to docs/benchmarks.md.

Each benchmark runs as its own process, so that no emulator, token cache or imported
module of one benchmark affects another. ``make bench`` runs

    .venv/bin/python benchmarks/run_all.py --record docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_common
from bench_common import REPO_ROOT, log, markdown_table

BENCHMARKS_DIR = Path(__file__).resolve().parent
#: Share of all cores that other processes may use during a run before the record calls the machine busy.
BUSY_SHARE = 0.1

#: (title, script, extra arguments) of each benchmark, in the order they run.
BENCHMARKS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Import cost", "import_cost.py", ()),
    ("Requests per export", "requests_per_export.py", ()),
    ("Download throughput and memory", "download.py", ()),
    ("Deferrable waiting", "triggers.py", ()),
)


def run_benchmark(script: str, arguments: list[str]) -> tuple[str, float]:
    """Run one benchmark script and return its Markdown result and its wall time in seconds."""
    with tempfile.TemporaryDirectory(prefix="sepa-bench-run-") as folder:
        markdown_file = os.path.join(folder, "result.md")
        command = [sys.executable, str(BENCHMARKS_DIR / script), *arguments, "--markdown-out", markdown_file]
        started = time.monotonic()
        # Progress lines go to stderr and stay visible. Stdout repeats the table, with Airflow's log lines.
        result = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        seconds = time.monotonic() - started
        if result.returncode != 0:
            print(result.stdout, file=sys.stderr)
            raise SystemExit(f"{script} failed with exit code {result.returncode}.")
        return Path(markdown_file).read_text(encoding="utf-8").strip(), seconds


def git_revision() -> str:
    """Return the checked-out commit, marked when the working tree has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} with uncommitted changes" if dirty else commit


def _kernel_thread_seconds(clock_ticks: int) -> float:
    """Return the CPU seconds of the kernel's threads (kthreadd, PID 2, and its children) so far."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as handle:
                # The command name in brackets may contain spaces, so split after its closing bracket.
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent, user_ticks, system_ticks = int(fields[1]), int(fields[11]), int(fields[12])
        if entry.name == "2" or parent == 2:
            total += user_ticks + system_ticks
    return total / clock_ticks


def cpu_seconds() -> tuple[float, float, float]:
    """Return busy CPU seconds so far: the machine's, this process tree's and the kernel threads'.

    The machine's figure is user, nice, system and steal time from /proc/stat. Interrupt
    time is left out, because the benchmarks' own network and disk traffic cause most of
    it. All three are 0 where /proc is missing.
    """
    own = 0.0
    for scope in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(scope)
        own += usage.ru_utime + usage.ru_stime
    try:
        clock_ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat", encoding="ascii") as handle:
            user, nice, system, _, _, _, _, steal = (int(value) for value in handle.readline().split()[1:9])
        machine = (user + nice + system + steal) / clock_ticks
        kernel = _kernel_thread_seconds(clock_ticks)
    except (OSError, ValueError):
        return 0.0, own, 0.0
    return machine, own, kernel


def record(command: str, sections: list[tuple[str, str, float]], total_seconds: float, others_share: float) -> str:
    """Build the Markdown record of one run: command, machine, competing load and every result."""
    machine = bench_common.machine_info()
    machine["commit"] = git_revision()
    machine["CPU used by other processes during the run"] = f"{100 * others_share:.0f} % of all cores"
    lines = [
        f"### Run of {machine['date']}",
        "",
        f"Command: `{command}`, {total_seconds / 60:.1f} minutes in all.",
        "",
        markdown_table(["machine", "value"], [[key, value] for key, value in machine.items()]),
    ]
    if others_share > BUSY_SHARE:
        lines += [
            "",
            f"NOTE: other processes used more than {100 * BUSY_SHARE:.0f} % of the CPU during this run, so "
            "the timings are likely slower and noisier than on an idle machine.",
        ]
    for title, markdown, seconds in sections:
        lines += ["", f"#### {title}", "", f"Wall time: {seconds:.0f} s.", "", markdown]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", help="append the results to this Markdown file, for example docs/benchmarks.md")
    parser.add_argument("--command", default="make bench", help="command named in the record (default: make bench)")
    parser.add_argument(
        "--base-python", default="python3", help="interpreter that builds .venv-bench (default python3)"
    )
    args = parser.parse_args()

    started = time.monotonic()
    machine_before, own_before, kernel_before = cpu_seconds()
    sections = []
    for title, script, extra in BENCHMARKS:
        arguments = list(extra)
        if script == "import_cost.py":
            arguments += ["--base-python", args.base_python]
        log(f"running {script}")
        markdown, seconds = run_benchmark(script, arguments)
        sections.append((title, markdown, seconds))
    total = time.monotonic() - started

    machine_after, own_after, kernel_after = cpu_seconds()
    # Kernel threads are left out of "other processes", because most of their time here is the
    # writeback of the files that the download benchmark writes.
    others = (machine_after - machine_before) - (own_after - own_before) - (kernel_after - kernel_before)
    others_share = max(others, 0.0) / (total * (os.cpu_count() or 1))
    text = record(args.command, sections, total, others_share)
    print(text)
    if args.record:
        path = REPO_ROOT / args.record
        existing = path.read_text(encoding="utf-8") if path.exists() else ""
        # One blank line between the old text and the new record.
        existing = existing.rstrip("\n") + "\n\n" if existing else ""
        path.write_text(existing + text, encoding="utf-8")
        log(f"appended the results to {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
