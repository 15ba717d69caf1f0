"""Hand each new SEPA file to the bank outbox, with its SHA-256 beside it.

Runs whenever ``sepa_export_nightly`` records new files on the asset alias
``sepa_export_files``. To react to one site only, schedule on its asset instead:
``schedule=sepa_file_asset("mytenant", "main")``.

- ``sepa_export_outbox_dir``: Airflow Variable with the absolute outbox folder.

The sample expects the nightly DAG to write to local paths that this DAG's worker can read.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pendulum
from airflow.sdk import AssetAlias, Variable, dag, task

NEW_FILES = AssetAlias("sepa_export_files")


@dag(schedule=[NEW_FILES], start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"), catchup=False, tags=["sepa"])
def sepa_export_outbox():
    @task
    def hand_over(triggering_asset_events=None) -> list[str]:
        """Copy every new file whose SHA-256 still matches into the outbox, with a .sha256 file."""
        outbox = Path(Variable.get("sepa_export_outbox_dir", default="/tmp/sepa-outbox"))
        outbox.mkdir(parents=True, exist_ok=True)
        handed_over = []
        for events in (triggering_asset_events or {}).values():
            for event in events:
                source = Path(event.extra["path"])
                with source.open("rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
                if digest != event.extra["sha256"]:
                    expected = event.extra["sha256"]
                    raise ValueError(f"{source} changed after its download: SHA-256 {digest}, expected {expected}.")
                target = outbox / f"{event.extra['site_code']}-{source.name}"
                shutil.copyfile(source, target)
                target.with_name(target.name + ".sha256").write_text(f"{digest}  {target.name}\n")
                handed_over.append(str(target))
        return handed_over

    hand_over()


sepa_export_outbox()
