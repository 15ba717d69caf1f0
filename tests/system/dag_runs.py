"""Trigger DAG runs through Airflow's REST API, wait for them, and describe them when they fail."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.system.standalone import wait_until

#: Maximum seconds a sample DAG run may take. A run takes 10 to 30 seconds with the emulator.
RUN_TIMEOUT_SECONDS = 240.0
FINISHED_STATES = {"success", "failed"}
#: Lines of each task's log in a failure message.
LOG_LINES_PER_TASK = 40


def trigger(client: httpx.Client, dag_id: str, conf: dict[str, Any] | None = None) -> str:
    """Start a manual run of ``dag_id`` with ``conf`` and return its run id."""
    response = client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
    response.raise_for_status()
    return str(response.json()["dag_run_id"])


def wait_for_run(client: httpx.Client, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT_SECONDS) -> str:
    """Wait until the run has finished and return its state, or raise TimeoutError with its task logs."""

    def finished_state() -> str | None:
        response = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        state = response.json()["state"]
        return state if state in FINISHED_STATES else None

    state: str = wait_until(
        finished_state, timeout, f"run {run_id} of {dag_id} to finish", lambda: describe_run(client, dag_id, run_id)
    )
    return state


def describe_run(client: httpx.Client, dag_id: str, run_id: str) -> str:
    """Return the state of each task instance of the run, with the end of each started task's log."""
    response = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
    if response.status_code != 200:
        return f"Listing the task instances of {run_id} failed with HTTP {response.status_code}: {response.text}"
    parts = [f"Task instances of {dag_id} run {run_id}:"]
    for instance in response.json()["task_instances"]:
        name = instance["task_id"] if instance["map_index"] < 0 else f"{instance['task_id']}[{instance['map_index']}]"
        parts.append(f"- {name}: {instance['state']} (try {instance['try_number']})")
    for instance in response.json()["task_instances"]:
        if instance["try_number"] >= 1:
            parts.append(task_log(client, dag_id, run_id, instance))
    return "\n".join(parts)


def task_log(client: httpx.Client, dag_id: str, run_id: str, instance: dict[str, Any]) -> str:
    """Return the last :data:`LOG_LINES_PER_TASK` lines of the latest try of a task instance."""
    task_id = instance["task_id"]
    try_number = instance["try_number"]
    response = client.get(
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
        params={"full_content": True, "map_index": instance["map_index"]},
        headers={"Accept": "application/json"},
    )
    header = f"--- log of {task_id} (map index {instance['map_index']}, try {try_number})"
    if response.status_code != 200:
        return f"{header}: reading it failed with HTTP {response.status_code}"
    lines = [_format_log_entry(entry) for entry in response.json()["content"]]
    return "\n".join([header, *lines[-LOG_LINES_PER_TASK:]])


def _format_log_entry(entry: Any) -> str:
    if not isinstance(entry, dict):
        return str(entry)
    line = " ".join(str(entry[key]) for key in ("timestamp", "level", "event") if entry.get(key))
    if entry.get("error_detail"):
        line += " " + json.dumps(entry["error_detail"])[:2000]
    return line
