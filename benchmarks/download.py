"""Measure download throughput and memory of SepaExportHook.download_file against curl.

The emulator serves generated pain.008 files of about 100 MiB and 1 GiB on 127.0.0.1.
For each size, every repeat downloads the file once with each downloader: curl, curl to
``/dev/null``, the hook to a local path and the hook to a ``file://`` ObjectStoragePath.
Each download runs in a new child process, and its result is deleted before the next one.
The goal compares the hook with curl writing to a file. Curl to ``/dev/null`` shows what
the emulator and the loopback deliver when no disk is involved.

- Throughput: file size divided by the time of the download alone, after ``os.sync()``
  has written back the dirty pages of earlier steps. For curl that is its
  ``time_total``; for the hook it is the ``download_file`` call, measured in the child
  after imports and after the token was fetched. The hook's time includes what curl
  does not do: the SHA-256 of the body, an fsync of the file, the hard link that
  publishes it and an fsync of its folder.
- RSS growth: the child resets its peak RSS (``/proc/self/clear_refs``) right before the
  download and reports VmHWM after it minus VmRSS before it. The "peak RSS" column is
  that VmHWM, imports included. For curl it is VmHWM sampled from
  ``/proc/<pid>/status`` every 10 ms, so a peak shorter than that can be missed.
  (``ru_maxrss`` from ``wait4`` is no use here: a child started with vfork and exec
  inherits the parent's peak.)

curl gets the bearer token through a config file on stdin (``curl -K -``), so it never
appears on a command line or in any output.

    .venv/bin/python benchmarks/download.py [--sizes-mib 100,1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_common
from bench_common import MIB, log, markdown_table, median

#: Prefix of the site codes. The site of a size is the prefix followed by the size in MiB.
SITE = "bench"
CALIBRATION_ORDERS = 20000

#: Goals: throughput as a ratio to curl, and the RSS growth of the downloading process.
GOAL_RATIO_TO_CURL = 0.8
GOAL_RSS_GROWTH_MIB = 64.0
#: RSS growth counts as flat when the largest and smallest size differ by at most this much.
FLAT_TOLERANCE_MIB = 8.0

CURL = "curl"
#: curl writing to /dev/null: what the emulator and the loopback can deliver without a disk.
CURL_NO_DISK = "curl to /dev/null"
HOOK_LOCAL = "hook, local path"
HOOK_OBJECT_STORAGE = "hook, file:// ObjectStoragePath"


def block_label(block_kib: int) -> str:
    """Return the downloader label of the hook with its staged file writer patched to ``block_kib`` blocks."""
    return f"{HOOK_LOCAL}, {block_kib} KiB blocks"


# -- child process ------------------------------------------------------------------------


def _proc_status_kib() -> dict[str, int]:
    values = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0 and later) and return whether that worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def run_child(
    file_id: str, destination: str, result_file: str, profile: str | None, block_size: int | None = None
) -> int:
    """Download one file with the hook and write timing and memory figures to ``result_file``.

    ``block_size`` replaces ``staging.BLOCK_SIZE`` for this process, to measure the
    download with other blocks without editing the package.
    """
    from airflow_provider_sepa.core import staging
    from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

    if block_size is not None:
        if not hasattr(staging, "BLOCK_SIZE"):
            raise SystemExit("The staging module has no BLOCK_SIZE any more; --block-size cannot patch it.")
        staging.BLOCK_SIZE = block_size

    hook = SepaExportHook()
    hook.get_token()  # fetched before the clock starts, as curl gets a ready token
    target: Any = destination
    if destination.startswith("file://"):
        from airflow.sdk import ObjectStoragePath

        target = ObjectStoragePath(destination)

    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    gc.collect()
    before = _proc_status_kib()
    peak_was_reset = _reset_peak_rss()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    downloaded = hook.download_file(file_id, target)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    after = _proc_status_kib()
    hook.close()
    if profiler is not None:
        profiler.dump_stats(profile)

    baseline = before["VmRSS"] if peak_was_reset else before["VmHWM"]
    result = {
        "seconds": seconds,
        "size_bytes": downloaded.size_bytes,
        "sha256": downloaded.sha256,
        "rss_growth_kib": max(after["VmHWM"] - baseline, 0),
        "peak_rss_kib": after["VmHWM"],
        "peak_was_reset": peak_was_reset,
        "user_seconds": cpu_after.ru_utime - cpu_before.ru_utime,
        "system_seconds": cpu_after.ru_stime - cpu_before.ru_stime,
    }
    Path(result_file).write_text(json.dumps(result), encoding="utf-8")
    return 0


# -- parent process -----------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    rss_growth_mib: float | None
    peak_rss_mib: float
    #: CPU time of the downloading process in user and kernel mode, all its threads.
    user_seconds: float
    system_seconds: float


@dataclass
class GeneratedFile:
    target_mib: int
    orders: int
    file_id: str
    size_bytes: int
    sha256: str
    generation_seconds: float


def _sample_peak_rss_mib(pid: int, interval: float = 0.01) -> float:
    """Poll a running child's VmHWM until it exits or turns zombie, and return the last value in MiB."""
    peak_kib = 0
    while True:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as handle:
                lines = [line for line in handle if line.startswith("VmHWM:")]
        except (FileNotFoundError, ProcessLookupError):
            break
        if not lines:  # a zombie has no memory lines left
            break
        peak_kib = max(peak_kib, int(lines[0].split()[1]))
        time.sleep(interval)
    return peak_kib / 1024


def download_with_curl(url: str, token: str, output: str, expected: GeneratedFile) -> Sample:
    """Download ``url`` to ``output`` with curl, which reads the bearer token from its stdin."""
    command = ["curl", "--silent", "--show-error", "--fail", "--config", "-", "--output", output]
    command += ["--write-out", "%{time_total} %{size_download}", url]
    # Only curl is reaped while this function runs, so the children's CPU time grows by curl's alone.
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    assert stdin is not None
    assert stdout is not None
    assert stderr is not None

    stdin.write(f'header = "Authorization: Bearer {token}"\n'.encode())
    stdin.close()
    peak_rss = _sample_peak_rss_mib(process.pid)
    written = stdout.read().decode()
    error = stderr.read().decode()
    exit_code = process.wait()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)

    if exit_code != 0:
        raise RuntimeError(f"curl failed with exit code {exit_code}: {error.strip()}")
    seconds, size = written.split()
    on_disk = expected.size_bytes if output == os.devnull else os.path.getsize(output)
    if int(size) != expected.size_bytes or on_disk != expected.size_bytes:
        raise RuntimeError(f"curl wrote {size} bytes, expected {expected.size_bytes}.")
    return Sample(
        seconds=float(seconds),
        rss_growth_mib=None,
        peak_rss_mib=peak_rss,
        user_seconds=cpu_after.ru_utime - cpu_before.ru_utime,
        system_seconds=cpu_after.ru_stime - cpu_before.ru_stime,
    )


def download_with_hook(
    destination: str,
    expected: GeneratedFile,
    work_dir: str,
    profile: str | None = None,
    block_size: int | None = None,
) -> Sample:
    result_file = os.path.join(work_dir, "child-result.json")
    command = [sys.executable, __file__, "--child", expected.file_id, destination, result_file]
    if profile:
        command += ["--profile-out", profile]
    if block_size:
        command += ["--block-size", str(block_size)]
    exit_code = subprocess.run(command).returncode
    if exit_code != 0:
        raise RuntimeError(f"The download child process failed with exit code {exit_code}.")
    result = json.loads(Path(result_file).read_text(encoding="utf-8"))
    os.unlink(result_file)
    if result["size_bytes"] != expected.size_bytes or result["sha256"] != expected.sha256:
        raise RuntimeError(f"The hook's file does not match the emulator's: {result}")
    if not result["peak_was_reset"]:
        log("NOTE: /proc/self/clear_refs is not writable; RSS growth is measured against the peak before the download.")
    return Sample(
        seconds=result["seconds"],
        rss_growth_mib=result["rss_growth_kib"] / 1024,
        peak_rss_mib=result["peak_rss_kib"] / 1024,
        user_seconds=result["user_seconds"],
        system_seconds=result["system_seconds"],
    )


def bytes_per_order(site_code: str) -> float:
    """Generate the first orders of ``site_code`` into a calibration file and return its bytes per order.

    The emulator derives a site's orders from the seed and the site code alone, so the
    first orders of a large file are the same as those of the calibration file.
    """
    from airflow_provider_sepa.emulator.config import EmulatorConfig
    from airflow_provider_sepa.emulator.state import EmulatorState

    config = EmulatorConfig(sites=(site_code,), site_orders={site_code: CALIBRATION_ORDERS}, job_duration_seconds=0)
    state = EmulatorState(config)
    try:
        state.create_job(config.tenant, site_code)
        while not (jobs := state.jobs()) or jobs[0]["active"]:
            time.sleep(0.05)
        return state.file_info(jobs[0]["fileId"])["size"] / CALIBRATION_ORDERS
    finally:
        state.close()


def generate(server: Any, hook: Any, site: str, target_mib: int, orders: int) -> GeneratedFile:
    """Create an export job on the emulator and wait until its file is written."""
    from airflow_provider_sepa.core.jobs import JobState

    started = time.monotonic()
    job_id = hook.create_job(site)
    while (job := hook.get_job(site, job_id)).state is JobState.RUNNING:
        time.sleep(0.2)
    seconds = time.monotonic() - started
    if job.state is not JobState.SUCCEEDED or not job.file_id:
        raise RuntimeError(f"The emulator job for {target_mib} MiB did not succeed: {job}")
    info = server.state.file_info(job.file_id)
    return GeneratedFile(target_mib, orders, job.file_id, info["size"], info["sha256"], seconds)


def check_disk_space(sizes_mib: list[int], *folders: str) -> None:
    """Raise when a folder lacks room for the generated files plus one download of the largest size."""
    needed = (sum(sizes_mib) + max(sizes_mib) + 512) * MIB
    for folder in folders:
        free = shutil.disk_usage(folder).free
        log(f"download: {free / 2**30:.1f} GiB free in {folder}, {needed / 2**30:.1f} GiB needed")
        if free < needed:
            raise SystemExit(
                f"Not enough disk space in {folder}: {free / 2**30:.1f} GiB free, {needed / 2**30:.1f} GiB "
                "needed. Free some space or pass smaller --sizes-mib."
            )


#: cProfile entries of the hook's copy loop, by the label they get in the breakdown table.
#: cProfile profiles only the reading thread. The file writes run in the writer thread, and
#: the reader's share of them is its wait for a free block and for the thread to end.
PROFILE_PARTS = {
    "socket reads": ("method 'recv_into' of '_socket.socket' objects",),
    "SHA-256": ("method 'update' of '_hashlib.HASH' objects",),
    "waits for the writer thread": (
        "method 'get' of '_queue.SimpleQueue' objects",
        "method 'acquire' of '_thread.lock' objects",
    ),
    "fsync": ("built-in method posix.fsync",),
}


def summarize_profile(path: str) -> dict[str, float]:
    """Return the seconds of each PROFILE_PARTS entry and the total of a cProfile dump."""
    import pstats

    stats = pstats.Stats(path)
    parts = dict.fromkeys(PROFILE_PARTS, 0.0)
    for (_, _, function), (_, _, own_seconds, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        for label, names in PROFILE_PARTS.items():
            if any(name in function for name in names):
                parts[label] += own_seconds
    parts["total"] = stats.total_tt  # type: ignore[attr-defined]
    return parts


def download_all(
    hook: Any, file: GeneratedFile, repeats: int, work_dir: str, block_kib: list[int]
) -> tuple[dict[str, list[Sample]], dict[str, float]]:
    """Download one file ``repeats`` times with every downloader, then once more with the hook under cProfile."""
    url = hook.settings.file_url(file.file_id)
    tools = downloaders(block_kib)
    samples: dict[str, list[Sample]] = {tool: [] for tool in tools}
    output = os.path.join(work_dir, f"{file.target_mib}.xml")
    for repeat in range(1, repeats + 1):
        # Each repeat starts with another downloader, so none of them always runs first.
        shift = (repeat - 1) % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            # Write back dirty pages (the generated file, earlier downloads) first, so that no
            # download pays for the disk writes of another.
            os.sync()
            if tool == CURL:
                sample = download_with_curl(url, hook.get_token(), output, file)
            elif tool == CURL_NO_DISK:
                sample = download_with_curl(url, hook.get_token(), os.devnull, file)
            elif tool == HOOK_LOCAL:
                sample = download_with_hook(output, file, work_dir)
            elif tool == HOOK_OBJECT_STORAGE:
                sample = download_with_hook("file://" + output, file, work_dir)
            else:
                kib = next(kib for kib in block_kib if block_label(kib) == tool)
                sample = download_with_hook(output, file, work_dir, block_size=kib * 1024)
            if os.path.exists(output):
                os.unlink(output)
            log(f"download: {file.target_mib} MiB, repeat {repeat} of {repeats}, {tool}: {sample.seconds:.2f} s")
            samples[tool].append(sample)

    profile = os.path.join(work_dir, "hook.prof")
    os.sync()
    download_with_hook(output, file, work_dir, profile=profile)
    os.unlink(output)
    breakdown = summarize_profile(profile)
    os.unlink(profile)
    return samples, breakdown


def downloaders(block_kib: list[int]) -> list[str]:
    """Return the labels of the downloaders to compare, curl first."""
    return [CURL, CURL_NO_DISK, HOOK_LOCAL, HOOK_OBJECT_STORAGE, *(block_label(kib) for kib in block_kib)]


def run(sizes_mib: list[int], repeats: int, block_kib: list[int], output_root: str | None = None) -> str:
    """Generate the files, download each size ``repeats`` times with every tool and return Markdown."""
    from airflow_provider_sepa.emulator.config import EmulatorConfig
    from airflow_provider_sepa.emulator.server import EmulatorServer

    bench_common.isolate_airflow_home()
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed; the download benchmark compares against it.")
    work_dir = tempfile.mkdtemp(prefix="sepa-bench-download-", dir=output_root)
    check_disk_space(sizes_mib, tempfile.gettempdir(), work_dir)

    orders = {size: math.ceil(size * MIB / bytes_per_order(f"{SITE}{size}")) for size in sizes_mib}
    log(f"download: orders per size in MiB: {orders}")
    config = EmulatorConfig(
        sites=tuple(f"{SITE}{size}" for size in sizes_mib),
        site_orders={f"{SITE}{size}": count for size, count in orders.items()},
        job_duration_seconds=0,
    )
    measured: list[tuple[GeneratedFile, dict[str, list[Sample]], dict[str, float]]] = []
    try:
        with EmulatorServer(config) as server:
            os.environ["AIRFLOW_CONN_EMPORIX_DEFAULT"] = bench_common.connection_json(
                server.url, config.client_id, config.client_secret, config.tenant
            )
            from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

            hook = SepaExportHook()
            try:
                for size in sizes_mib:
                    log(f"download: generating about {size} MiB ({orders[size]} orders)")
                    file = generate(server, hook, f"{SITE}{size}", size, orders[size])
                    samples, breakdown = download_all(hook, file, repeats, work_dir, block_kib)
                    measured.append((file, samples, breakdown))
            finally:
                hook.close()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return _format(measured, repeats, downloaders(block_kib))


def _throughputs(file: GeneratedFile, samples: list[Sample]) -> list[float]:
    return [file.size_bytes / MIB / sample.seconds for sample in samples]


def _format(
    measured: list[tuple[GeneratedFile, dict[str, list[Sample]], dict[str, float]]], repeats: int, tools: list[str]
) -> str:
    rows = []
    growth_by_size: dict[int, float] = {}
    for file, samples, _ in measured:
        curl_mib_s = median(_throughputs(file, samples[CURL]))
        for tool in tools:
            speeds = _throughputs(file, samples[tool])
            mib_s = median(speeds)
            peak = max(sample.peak_rss_mib for sample in samples[tool])
            if tool == CURL:
                ratio, growth, goal = "1.00", "", "reference"
            elif tool == CURL_NO_DISK:
                ratio, growth, goal = f"{mib_s / curl_mib_s:.2f}", "", "ceiling without a disk"
            elif tool not in (HOOK_LOCAL, HOOK_OBJECT_STORAGE):
                ratio = f"{median(speeds) / curl_mib_s:.2f}"
                growth = f"{max(sample.rss_growth_mib or 0.0 for sample in samples[tool]):.1f}"
                goal = "experiment, not the shipped hook"
            else:
                growth_mib = max(sample.rss_growth_mib or 0.0 for sample in samples[tool])
                growth_by_size[file.target_mib] = max(growth_by_size.get(file.target_mib, 0.0), growth_mib)
                ratio_value = mib_s / curl_mib_s
                ratio, growth = f"{ratio_value:.2f}", f"{growth_mib:.1f}"
                speed = "met" if ratio_value >= GOAL_RATIO_TO_CURL else "NOT met"
                memory = "met" if growth_mib <= GOAL_RSS_GROWTH_MIB else "NOT met"
                goal = f"speed {speed}, memory {memory}"
            rows.append(
                [
                    f"{file.size_bytes / MIB:.1f} MiB",
                    tool,
                    f"{mib_s:.0f}",
                    f"{min(speeds):.0f}-{max(speeds):.0f}",
                    ratio,
                    growth,
                    f"{peak:.0f}",
                    f"{median([sample.user_seconds for sample in samples[tool]]):.2f}",
                    f"{median([sample.system_seconds for sample in samples[tool]]):.2f}",
                    goal,
                ]
            )
    table = markdown_table(
        [
            "file",
            "downloader",
            "median MiB/s",
            "min-max MiB/s",
            "ratio to curl",
            "RSS growth MiB (max)",
            "peak RSS MiB",
            "user CPU s",
            "system CPU s",
            "goal",
        ],
        rows,
    )

    breakdown_rows = []
    for file, _, parts in measured:
        total = parts["total"]
        cells = [f"{parts[label]:.2f} ({100 * parts[label] / total:.0f} %)" for label in PROFILE_PARTS]
        other = total - sum(parts[label] for label in PROFILE_PARTS)
        breakdown_rows.append([f"{file.size_bytes / MIB:.1f} MiB", f"{total:.2f}", *cells, f"{other:.2f}"])
    breakdown = markdown_table(["file", "total s", *PROFILE_PARTS, "other s"], breakdown_rows)

    generation = "; ".join(
        f"{file.orders} orders gave {file.size_bytes / MIB:.1f} MiB in {file.generation_seconds:.1f} s"
        for file, _, _ in measured
    )
    notes = [
        f"Median of {repeats} downloads per row, each in a new process. The CPU columns are medians as well, "
        "and count all threads of the downloading process. Goals: at least "
        f"{GOAL_RATIO_TO_CURL}x curl's throughput and at most {GOAL_RSS_GROWTH_MIB:.0f} MiB RSS growth, "
        f"flat across sizes (within {FLAT_TOLERANCE_MIB:.0f} MiB). Emulator file generation: {generation}.",
        "A `file://` ObjectStoragePath is published like a local path (hard link), so this run does not "
        "exercise the copy to remote object storage.",
    ]
    if len(growth_by_size) >= 2:
        smallest, largest = min(growth_by_size), max(growth_by_size)
        spread = abs(growth_by_size[largest] - growth_by_size[smallest])
        flat = "flat" if spread <= FLAT_TOLERANCE_MIB else "NOT flat"
        notes.append(
            f"RSS growth from {smallest} MiB to {largest} MiB: {growth_by_size[smallest]:.1f} → "
            f"{growth_by_size[largest]:.1f} MiB ({flat})."
        )
    notes.append(
        "Where the hook's time goes: one more download per size to a local path under cProfile, "
        "own time of the calls in its copy loop (seconds and share of the call):\n\n" + breakdown
    )
    return table + "\n\n" + "\n\n".join(notes)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child = argparse.ArgumentParser(prog="download.py --child")
        child.add_argument("file_id")
        child.add_argument("destination")
        child.add_argument("result_file")
        child.add_argument("--profile-out")
        child.add_argument("--block-size", type=int)
        child_args = child.parse_args(sys.argv[2:])
        return run_child(
            child_args.file_id,
            child_args.destination,
            child_args.result_file,
            child_args.profile_out,
            child_args.block_size,
        )

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", default="100,1024", help="file sizes in MiB, comma-separated (default 100,1024)")
    parser.add_argument("--repeats", type=int, default=5, help="downloads per size and downloader (default 5)")
    parser.add_argument(
        "--hook-block-kib",
        default="",
        help="comma-separated block sizes in KiB, each a multiple of the page size (4 KiB). Each adds a hook "
        "downloader whose staged file writer uses that block size instead of staging.BLOCK_SIZE (default: none)",
    )
    parser.add_argument("--output-root", help="folder for the downloaded files (default: the system temp folder)")
    parser.add_argument("--markdown-out", help="also write the Markdown result to this file")
    args = parser.parse_args()

    sizes = [int(size) for size in args.sizes_mib.split(",") if size.strip()]
    block_kib = [int(kib) for kib in args.hook_block_kib.split(",") if kib.strip()]
    markdown = run(sizes, args.repeats, block_kib, args.output_root)
    print(markdown)
    bench_common.write_markdown(args.markdown_out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
