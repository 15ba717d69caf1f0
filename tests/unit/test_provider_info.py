"""Provider metadata: schema-valid, importable, and in sync with the hook's form methods."""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import airflow
import pytest

from airflow_provider_sepa.get_provider_info import CONNECTION_FIELDS, UI_FIELD_BEHAVIOUR, get_provider_info
from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

AIRFLOW_PACKAGE = Path(airflow.__file__).parent


@pytest.fixture
def fake_form_libraries(monkeypatch):
    """Stand in for wtforms, flask_appbuilder and flask_babel, as Airflow's API server does."""

    class StringField:
        def __init__(self, label, widget=None, description=""):
            self.label = label
            self.description = description

    modules = {
        "wtforms": types.SimpleNamespace(StringField=StringField),
        "flask_appbuilder": types.SimpleNamespace(),
        "flask_appbuilder.fieldwidgets": types.SimpleNamespace(BS3TextFieldWidget=lambda: None),
        "flask_babel": types.SimpleNamespace(lazy_gettext=lambda text: text),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


class TestProviderInfo:
    def test_matches_airflow_schema(self):
        jsonschema = pytest.importorskip("jsonschema")
        schema = json.loads((AIRFLOW_PACKAGE / "provider_info.schema.json").read_text())

        jsonschema.validate(get_provider_info(), schema)

    def test_package_name_matches_distribution(self):
        from importlib.metadata import distribution

        assert get_provider_info()["package-name"] == distribution("airflow-provider-sepa").metadata["Name"]

    @pytest.mark.parametrize("role", ["hooks", "operators", "sensors", "triggers"])
    def test_listed_modules_import(self, role):
        for entry in get_provider_info()[role]:
            for module in entry["python-modules"]:
                assert importlib.import_module(module) is not None

    def test_connection_type_matches_hook(self):
        connection = get_provider_info()["connection-types"][0]

        assert connection["connection-type"] == SepaExportHook.conn_type
        assert connection["hook-class-name"] == f"{SepaExportHook.__module__}.{SepaExportHook.__name__}"
        assert connection["hook-name"] == SepaExportHook.hook_name


class TestConnectionFormInSync:
    def test_widgets_match_conn_fields(self, fake_form_libraries):
        widgets = SepaExportHook.get_connection_form_widgets()

        assert set(widgets) == set(CONNECTION_FIELDS)
        for name, widget in widgets.items():
            assert widget.label == CONNECTION_FIELDS[name]["label"]

    def test_field_behaviour_matches_provider_info(self):
        behaviour = SepaExportHook.get_ui_field_behaviour()

        assert behaviour["hidden_fields"] == UI_FIELD_BEHAVIOUR["hidden-fields"]
        assert behaviour["relabeling"] == UI_FIELD_BEHAVIOUR["relabeling"]
        assert behaviour["placeholders"] == UI_FIELD_BEHAVIOUR["placeholders"]

    def test_field_behaviour_matches_airflow_schema(self):
        jsonschema = pytest.importorskip("jsonschema")
        schema_path = AIRFLOW_PACKAGE / "customized_form_field_behaviours.schema.json"
        if not schema_path.exists():
            pytest.skip(f"{schema_path.name} is not shipped with this Airflow version")

        jsonschema.validate(SepaExportHook.get_ui_field_behaviour(), json.loads(schema_path.read_text()))

    def test_placeholders_cover_extra_fields(self):
        assert set(CONNECTION_FIELDS) <= set(UI_FIELD_BEHAVIOUR["placeholders"])
