"""Run the emulator: ``python -m airflow_provider_sepa.emulator --help``."""

from __future__ import annotations

import sys

from airflow_provider_sepa.emulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
