"""Provider metadata that Airflow reads through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_sepa import __version__

INTEGRATION = "Emporix SEPA Export"


def get_provider_info() -> dict[str, Any]:
    """Return the provider's metadata: connection type, hooks, operators, sensors and triggers."""
    return {
        "package-name": "airflow-provider-sepa",
        "name": "Emporix SEPA Export",
        "description": "Create, wait for and download SEPA-XML exports of the Emporix SEPA Export API.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://developer.emporix.io/",
                "tags": ["service"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "emporix",
                "hook-class-name": "airflow_provider_sepa.hooks.sepa_export.SepaExportHook",
                "hook-name": "Emporix SEPA Export",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"login": "Client ID", "password": "Client secret", "host": "API URL"},
                    "placeholders": {
                        "host": "https://api.emporix.io",
                        "login": "OAuth client id of the Emporix API key",
                        "password": "OAuth client secret",
                        "tenant": "mytenant",
                        "scope": "sepaexport.job_view sepaexport.job_manage sepaexport.media_view",
                    },
                },
                "conn-fields": {
                    "tenant": {
                        "label": "Tenant",
                        "description": "Emporix tenant name, in lowercase.",
                        "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
                    },
                    "scope": {
                        "label": "Scope",
                        "description": "Space-separated scopes to request; empty requests all of the client's scopes.",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_sepa.hooks.sepa_export"]}],
        "operators": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_provider_sepa.operators.sepa_export"]}
        ],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_sepa.sensors.sepa_export"]}],
        "triggers": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_provider_sepa.triggers.sepa_export"]}
        ],
    }
