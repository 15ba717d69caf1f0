"""Tests of input validation, connection settings and URL building."""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_sepa.core.endpoints import (
    DEFAULT_HOST,
    ConnectionSettings,
    list_params,
    normalize_base_url,
    validate_file_id,
    validate_job_id,
    validate_site_code,
    validate_tenant,
)
from airflow_provider_sepa.core.errors import SepaExportConfigError, SepaExportInputError

CONN_ID = "emporix_test"
HOST = "https://api.example.test"
CLIENT_ID = "client-id"
CLIENT_SECRET = "s3cret-value"
TENANT = "acme"
VALID_FIELDS = {
    "conn_id": CONN_ID,
    "host": HOST,
    "port": None,
    "login": CLIENT_ID,
    "password": CLIENT_SECRET,
    "extra": json.dumps({"tenant": TENANT}),
}

# Values that would change the path, query or fragment of a URL if they were not quoted.
HOSTILE_VALUES = ["../x", "a/b", "?q", "#f", "%2F", "ü-ß", "a b", "..%2F..", "x;y", "\\evil"]
HOSTILE_IDS = [
    "dot-dot-slash",
    "slash",
    "query",
    "fragment",
    "encoded-slash",
    "non-ascii",
    "space",
    "encoded-dots",
    "semicolon",
    "backslash",
]


def settings_for(**fields) -> ConnectionSettings:
    """Build settings from the valid connection fields with ``fields`` replaced."""
    return ConnectionSettings.from_fields(**{**VALID_FIELDS, **fields})


class TestValidateTenant:
    @pytest.mark.parametrize(
        "tenant",
        ["acme", "a", "acme-shop_2", "0tenant"],
        ids=["word", "one-letter", "dash-underscore-digit", "leading-digit"],
    )
    def test_validate_tenant_valid(self, tenant):
        assert validate_tenant(tenant) == tenant

    @pytest.mark.parametrize("tenant", [None, "", "   ", 5], ids=["none", "empty", "blank", "integer"])
    def test_validate_tenant_missing(self, tenant):
        with pytest.raises(SepaExportConfigError, match="has no tenant"):
            validate_tenant(tenant)

    def test_validate_tenant_uppercase_suggests_lowercase(self):
        with pytest.raises(SepaExportConfigError) as caught:
            validate_tenant("AcmeShop")

        assert "lowercase" in str(caught.value)
        assert "'acmeshop'" in str(caught.value)

    @pytest.mark.parametrize(
        "tenant",
        [
            "acme shop",
            " acme",
            "acme/x",
            "../acme",
            "acme?x",
            "acme#x",
            "-acme",
            "_acme",
            "acmé",
            "acme\n",
            "acme\x00",
        ],
        ids=[
            "space",
            "leading-space",
            "slash",
            "dot-dot",
            "query",
            "fragment",
            "leading-dash",
            "leading-underscore",
            "non-ascii",
            "trailing-newline",
            "nul",
        ],
    )
    def test_validate_tenant_bad_characters(self, tenant):
        with pytest.raises(SepaExportConfigError, match="use only lowercase letters"):
            validate_tenant(tenant)


IDENTIFIER_VALIDATORS = [validate_site_code, validate_job_id, validate_file_id]
IDENTIFIER_IDS = ["site-code", "job-id", "file-id"]


class TestValidateIdentifiers:
    @pytest.mark.parametrize("validate", IDENTIFIER_VALIDATORS, ids=IDENTIFIER_IDS)
    @pytest.mark.parametrize(
        "value",
        ["main", "884cf047-94a2", "a b", "ü", "a/b", "..x"],
        ids=["word", "uuid-part", "inner-space", "non-ascii", "slash", "dot-dot-prefix"],
    )
    def test_identifier_valid(self, validate, value):
        assert validate(value) == value

    @pytest.mark.parametrize("validate", IDENTIFIER_VALIDATORS, ids=IDENTIFIER_IDS)
    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (None, "must be a string"),
            (12, "must be a string"),
            ("", "is empty"),
            ("   ", "is empty"),
            ("\t", "is empty"),
            (" main", "surrounding spaces"),
            ("main ", "surrounding spaces"),
            ("ma\x00in", "control characters"),
            ("ma\nin", "control characters"),
            ("main\x7f", "control characters"),
            (".", "path segment"),
            ("..", "path segment"),
        ],
        ids=[
            "none",
            "integer",
            "empty",
            "blank",
            "tab",
            "leading-space",
            "trailing-space",
            "nul",
            "newline",
            "delete",
            "dot",
            "dot-dot",
        ],
    )
    def test_identifier_invalid(self, validate, value, message):
        with pytest.raises(SepaExportInputError, match=message):
            validate(value)

    @pytest.mark.parametrize("validate", IDENTIFIER_VALIDATORS, ids=IDENTIFIER_IDS)
    def test_identifier_error_is_not_retried(self, validate):
        with pytest.raises(AirflowFailException):
            validate("")


class TestNormalizeBaseUrl:
    @pytest.mark.parametrize(
        ("host", "port", "expected"),
        [
            (None, None, DEFAULT_HOST),
            ("", None, DEFAULT_HOST),
            ("   ", None, DEFAULT_HOST),
            ("api.example.test", None, "https://api.example.test"),
            ("https://api.example.test", None, "https://api.example.test"),
            ("https://api.example.test/", None, "https://api.example.test"),
            (" http://127.0.0.1:8765 ", None, "http://127.0.0.1:8765"),
            ("http://127.0.0.1", 8765, "http://127.0.0.1:8765"),
            ("http://127.0.0.1:9000", 8765, "http://127.0.0.1:9000"),
            ("HTTPS://api.example.test", None, "https://api.example.test"),
            ("http://[::1]:8765", None, "http://[::1]:8765"),
        ],
        ids=[
            "none-default",
            "empty-default",
            "blank-default",
            "no-scheme",
            "https",
            "trailing-slash",
            "spaces-with-port",
            "port-field",
            "host-port-wins",
            "uppercase-scheme",
            "ipv6",
        ],
    )
    def test_normalize_base_url_valid(self, host, port, expected):
        assert normalize_base_url(host, port) == expected

    @pytest.mark.parametrize(
        ("host", "message"),
        [
            ("ftp://api.example.test", "expected an http"),
            ("https://", "expected an http"),
            ("https://api.example.test/v1", "without a path"),
            ("https://api.example.test?x=1", "without a path"),
            ("https://api.example.test#x", "without a path"),
            ("https://api.example.test:99999", "port"),
            ("https://api.example.test:abc", "port"),
            ("https://[::1", "not a valid URL"),
        ],
        ids=["ftp", "no-host", "path", "query", "fragment", "port-out-of-range", "port-not-number", "broken-ipv6"],
    )
    def test_normalize_base_url_invalid(self, host, message):
        with pytest.raises(SepaExportConfigError, match=message):
            normalize_base_url(host)

    def test_normalize_base_url_port_field_out_of_range(self):
        with pytest.raises(SepaExportConfigError, match="Invalid port 70000"):
            normalize_base_url("https://api.example.test", 70000)

    @pytest.mark.parametrize(
        "host",
        [
            "https://user:hunter2pass@api.example.test",
            "ftp://user:hunter2pass@api.example.test",
            "user:hunter2pass@api.example.test",
        ],
        ids=["https", "other-scheme", "no-scheme"],
    )
    def test_normalize_base_url_credentials_rejected(self, host):
        with pytest.raises(SepaExportConfigError) as caught:
            normalize_base_url(host)

        assert "user name or password" in str(caught.value)
        assert "hunter2pass" not in str(caught.value)


class TestConnectionSettingsFromFields:
    def test_from_fields_valid(self):
        settings = settings_for()

        assert settings.base_url == HOST
        assert settings.client_id == CLIENT_ID
        assert settings.client_secret == CLIENT_SECRET
        assert settings.tenant == TENANT
        assert settings.scope is None

    def test_from_fields_extra_as_dict(self):
        settings = settings_for(extra={"tenant": TENANT})

        assert settings.tenant == TENANT

    def test_from_fields_login_stripped(self):
        assert settings_for(login="  client-id ").client_id == CLIENT_ID

    def test_from_fields_scope_whitespace_collapsed(self):
        settings = settings_for(extra={"tenant": TENANT, "scope": "  sepaexport.job_view \n sepaexport.job_manage "})

        assert settings.scope == "sepaexport.job_view sepaexport.job_manage"

    @pytest.mark.parametrize("scope", ["", "   "], ids=["empty", "blank"])
    def test_from_fields_blank_scope_is_none(self, scope):
        assert settings_for(extra={"tenant": TENANT, "scope": scope}).scope is None

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"login": None}, "has no client id"),
            ({"login": ""}, "has no client id"),
            ({"login": "   "}, "has no client id"),
            ({"password": None}, "has no client secret"),
            ({"password": ""}, "has no client secret"),
            ({"extra": None}, "has no tenant"),
            ({"extra": ""}, "has no tenant"),
            ({"extra": "{}"}, "has no tenant"),
            ({"extra": '{"tenant": ""}'}, "has no tenant"),
            ({"extra": '{"tenant": "Acme"}'}, "lowercase"),
            ({"extra": '{"tenant": "ac me"}'}, "use only lowercase letters"),
            ({"extra": "tenant=acme"}, "not valid JSON"),
            ({"extra": '["acme"]'}, "must be a JSON object"),
            (
                {"extra": '{"tenant": "acme", "scope": ["sepaexport.job_view"]}'},
                "must be a space-separated string, got list",
            ),
            ({"extra": '{"tenant": "acme", "scope": 1}'}, "must be a space-separated string, got int"),
            ({"host": "ftp://api.example.test"}, "expected an http"),
        ],
        ids=[
            "login-none",
            "login-empty",
            "login-blank",
            "password-none",
            "password-empty",
            "extra-none",
            "extra-empty",
            "extra-no-tenant",
            "tenant-empty",
            "tenant-uppercase",
            "tenant-space",
            "extra-not-json",
            "extra-json-list",
            "scope-list",
            "scope-integer",
            "host-bad-scheme",
        ],
    )
    def test_from_fields_invalid(self, fields, message):
        with pytest.raises(SepaExportConfigError, match=message) as caught:
            settings_for(**fields)

        assert CONN_ID in str(caught.value)

    def test_from_fields_error_hides_secret(self):
        with pytest.raises(SepaExportConfigError) as caught:
            settings_for(extra="{broken")

        assert CLIENT_SECRET not in str(caught.value)

    def test_settings_repr_hides_secret(self):
        settings = settings_for()

        assert CLIENT_SECRET not in repr(settings)
        assert CLIENT_SECRET not in str(settings)


class TestConnectionSettingsUrls:
    def test_token_url(self):
        assert settings_for().token_url == f"{HOST}/oauth/token"

    def test_jobs_url(self):
        assert settings_for().jobs_url() == f"{HOST}/sepa-export/{TENANT}/jobs"

    def test_file_url(self):
        assert settings_for().file_url("file-1") == f"{HOST}/sepa-export/{TENANT}/files/file-1"

    def test_urls_keep_port(self):
        settings = settings_for(host="http://127.0.0.1:8765")

        assert settings.jobs_url() == f"http://127.0.0.1:8765/sepa-export/{TENANT}/jobs"

    @pytest.mark.parametrize("file_id", HOSTILE_VALUES, ids=HOSTILE_IDS)
    def test_file_url_quotes_file_id(self, file_id):
        parts = urlsplit(settings_for().file_url(file_id))
        segments = parts.path.split("/")

        assert parts.netloc == "api.example.test"
        assert parts.query == ""
        assert parts.fragment == ""
        assert segments[:-1] == ["", "sepa-export", TENANT, "files"]
        assert unquote(segments[-1]) == file_id

    @pytest.mark.parametrize(
        "file_id", ["", " x", ".", "..", "a\nb"], ids=["empty", "leading-space", "dot", "dot-dot", "newline"]
    )
    def test_file_url_rejects_invalid_file_id(self, file_id):
        with pytest.raises(SepaExportInputError):
            settings_for().file_url(file_id)

    @pytest.mark.parametrize("tenant", HOSTILE_VALUES, ids=HOSTILE_IDS)
    def test_jobs_url_quotes_tenant(self, tenant):
        # The dataclass does not validate, so this checks that quoting alone keeps the path intact.
        settings = ConnectionSettings(base_url=HOST, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, tenant=tenant)

        parts = urlsplit(settings.jobs_url())
        segments = parts.path.split("/")

        assert parts.query == ""
        assert parts.fragment == ""
        assert len(segments) == 4
        assert unquote(segments[2]) == tenant
        assert segments[3] == "jobs"

    def test_token_form_without_scope(self):
        assert settings_for().token_form() == {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }

    def test_token_form_with_scope(self):
        settings = settings_for(extra={"tenant": TENANT, "scope": "sepaexport.job_view"})

        assert settings.token_form()["scope"] == "sepaexport.job_view"


class TestListParams:
    def test_list_params_all_values(self):
        assert list_params("main", 3, 25, "ASC") == {
            "siteCode": "main",
            "pageNumber": "3",
            "pageSize": "25",
            "sort": "ASC",
        }

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            (("", 1, 16, "DESC"), "site code"),
            ((" main", 1, 16, "DESC"), "site code"),
            (("main", 0, 16, "DESC"), "Invalid page_number 0"),
            (("main", -1, 16, "DESC"), "Invalid page_number -1"),
            (("main", True, 16, "DESC"), "Invalid page_number True"),
            (("main", "1", 16, "DESC"), "Invalid page_number '1'"),
            (("main", 1.0, 16, "DESC"), "Invalid page_number 1.0"),
            (("main", 1, 0, "DESC"), "Invalid page_size 0"),
            (("main", 1, False, "DESC"), "Invalid page_size False"),
            (("main", 1, "16", "DESC"), "Invalid page_size '16'"),
            (("main", 1, 16, "desc"), "Invalid sort 'desc'"),
            (("main", 1, 16, ""), "Invalid sort ''"),
        ],
        ids=[
            "site-empty",
            "site-leading-space",
            "page-zero",
            "page-negative",
            "page-boolean",
            "page-string",
            "page-float",
            "size-zero",
            "size-boolean",
            "size-string",
            "sort-lowercase",
            "sort-empty",
        ],
    )
    def test_list_params_invalid(self, arguments, message):
        with pytest.raises(SepaExportInputError, match=message):
            list_params(*arguments)
