"""Provider metadata that Airflow reads through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_sepa import __version__

INTEGRATION = "Emporix SEPA Export"

#: Labels, hidden fields and placeholders of the standard connection form fields. Airflow 3.2 and
#: newer read it from here; older versions call ``SepaExportHook.get_ui_field_behaviour``,
#: which returns the same content with underscore keys.
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "port"],
    "relabeling": {"login": "Client ID", "password": "Client secret", "host": "API URL"},
    "placeholders": {
        "host": "https://api.emporix.io",
        "login": "OAuth client id of the Emporix API key",
        "password": "OAuth client secret",
        "tenant": "mytenant",
        "scope": "sepaexport.job_view sepaexport.job_manage sepaexport.media_view",
    },
}

#: Extra fields of the connection form, stored in ``Connection.extra``. Airflow 3.2 and
#: newer read them from here; older versions call ``SepaExportHook.get_connection_form_widgets``.
CONNECTION_FIELDS: dict[str, Any] = {
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
}


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
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
                "conn-fields": CONNECTION_FIELDS,
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
