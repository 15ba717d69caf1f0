"""Apache Airflow provider for the Emporix SEPA Export API.

The package root stays free of imports so that Airflow's provider discovery and DAG
parsing only pay for the modules a DAG actually uses.
"""

from __future__ import annotations

__version__ = "0.1.0"
