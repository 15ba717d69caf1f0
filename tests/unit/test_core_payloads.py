"""Tests of token parsing, the token cache, job list and create replies, and page walking."""

from __future__ import annotations

import pytest

from airflow_provider_sepa.core.endpoints import ConnectionSettings
from airflow_provider_sepa.core.errors import SepaExportResponseError
from airflow_provider_sepa.core.jobs import ExportJob
from airflow_provider_sepa.core.payloads import (
    FALLBACK_TOKEN_LIFETIME,
    MAX_REFRESH_MARGIN,
    AccessToken,
    PageWalk,
    TokenCache,
    find_job_in_page,
    parse_created_job_id,
    parse_job_list,
    parse_token_response,
)

NOW = 1000.0
TOKEN_VALUE = "tok-abc123xyz"
SITE_CODE = "main"
SETTINGS = ConnectionSettings(
    base_url="https://api.example.test", client_id="client-id", client_secret="s3cret-value", tenant="acme"
)


def make_jobs(*job_ids: str) -> list[ExportJob]:
    return [ExportJob.from_api({"jobId": job_id}) for job_id in job_ids]


def make_token(value: str = TOKEN_VALUE, refresh_at: float = 1e12) -> AccessToken:
    return AccessToken(value=value, refresh_at=refresh_at, lifetime=3600.0)


class TestParseTokenResponse:
    def test_parse_token_contract_example(self):
        payload = {
            "access_token": TOKEN_VALUE,
            "token_type": "Bearer",
            "expires_in": 14399,
            "session_idle_time": 120,
            "refresh_token": "",
            "refresh_token_expires_in": 0,
            "scope": "tenant=acme sepaexport.job_view",
        }

        token = parse_token_response(payload, now=NOW)

        assert token.value == TOKEN_VALUE
        assert token.lifetime == 14399.0
        assert token.refresh_at == NOW + 14399 - MAX_REFRESH_MARGIN

    @pytest.mark.parametrize(
        ("expires_in", "refresh_at"),
        [(14399, NOW + 14399 - 60), (600, NOW + 600 - 60), (300, NOW + 300 - 30), (10, NOW + 10 - 1)],
        ids=["4-hours-60s-margin", "10-minutes-60s-margin", "5-minutes-10-percent", "10-seconds-10-percent"],
    )
    def test_parse_token_refresh_margin(self, expires_in, refresh_at):
        token = parse_token_response({"access_token": TOKEN_VALUE, "expires_in": expires_in}, now=NOW)

        assert token.refresh_at == pytest.approx(refresh_at)

    @pytest.mark.parametrize(
        "expires_in",
        [None, 0, -5, "3600", True],
        ids=["missing", "zero", "negative", "string", "boolean"],
    )
    def test_parse_token_lifetime_fallback(self, expires_in):
        payload = {"access_token": TOKEN_VALUE}
        if expires_in is not None:
            payload["expires_in"] = expires_in

        token = parse_token_response(payload, now=NOW)

        assert token.lifetime == FALLBACK_TOKEN_LIFETIME
        assert token.refresh_at == NOW + FALLBACK_TOKEN_LIFETIME * 0.9

    @pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER"], ids=["title", "lower", "upper"])
    def test_parse_token_bearer_any_case(self, token_type):
        token = parse_token_response({"access_token": TOKEN_VALUE, "token_type": token_type}, now=NOW)

        assert token.value == TOKEN_VALUE

    @pytest.mark.parametrize(
        "payload",
        [{}, {"access_token": ""}, {"access_token": None}, {"access_token": 5}, [TOKEN_VALUE], None, "token"],
        ids=["empty-object", "empty-token", "null-token", "integer-token", "list", "null", "string"],
    )
    def test_parse_token_missing_token(self, payload):
        with pytest.raises(SepaExportResponseError, match="no access_token"):
            parse_token_response(payload)

    @pytest.mark.parametrize("token_type", ["mac", "", None, 1], ids=["mac", "empty", "null", "integer"])
    def test_parse_token_non_bearer(self, token_type):
        with pytest.raises(SepaExportResponseError, match="unsupported token_type"):
            parse_token_response({"access_token": TOKEN_VALUE, "token_type": token_type})

    def test_parse_token_error_hides_token(self):
        with pytest.raises(SepaExportResponseError) as caught:
            parse_token_response({"access_token": TOKEN_VALUE, "token_type": "mac"})

        assert TOKEN_VALUE not in str(caught.value)

    def test_access_token_repr_hides_value(self):
        assert TOKEN_VALUE not in repr(make_token())

    @pytest.mark.parametrize(
        ("now", "usable"), [(99.0, True), (100.0, False), (101.0, False)], ids=["before", "at", "after"]
    )
    def test_access_token_is_usable(self, now, usable):
        assert make_token(refresh_at=100.0).is_usable(now) is usable


class TestTokenCache:
    def test_token_cache_put_get(self):
        cache = TokenCache()
        token = make_token()
        cache.put(SETTINGS, token)

        assert cache.get(SETTINGS) is token

    def test_token_cache_empty(self):
        assert TokenCache().get(SETTINGS) is None

    def test_token_cache_expired_not_returned(self):
        cache = TokenCache()
        cache.put(SETTINGS, make_token(refresh_at=0.0))

        assert cache.get(SETTINGS) is None

    def test_token_cache_key_has_no_secret(self):
        key = TokenCache.key(SETTINGS)

        assert SETTINGS.client_secret not in repr(key)

    @pytest.mark.parametrize(
        "changes",
        [
            {"client_secret": "other-secret"},
            {"client_id": "other-client"},
            {"scope": "sepaexport.job_view"},
            {"base_url": "http://127.0.0.1:8765"},
        ],
        ids=["secret", "client-id", "scope", "host"],
    )
    def test_token_cache_separate_keys(self, changes):
        cache = TokenCache()
        cache.put(SETTINGS, make_token())
        other = ConnectionSettings(**{**SETTINGS.__dict__, **changes})

        assert cache.get(other) is None

    def test_token_cache_same_values_share_token(self):
        cache = TokenCache()
        token = make_token()
        cache.put(SETTINGS, token)
        same = ConnectionSettings(**SETTINGS.__dict__)

        assert cache.get(same) is token

    def test_token_cache_discard(self):
        cache = TokenCache()
        cache.put(SETTINGS, make_token())
        cache.discard(SETTINGS)

        assert cache.get(SETTINGS) is None

    def test_token_cache_discard_keeps_replacement(self):
        cache = TokenCache()
        old = make_token("old")
        new = make_token("new")
        cache.put(SETTINGS, new)
        cache.discard(SETTINGS, old)

        assert cache.get(SETTINGS) is new

    def test_token_cache_discard_matching_token(self):
        cache = TokenCache()
        token = make_token()
        cache.put(SETTINGS, token)
        cache.discard(SETTINGS, token)

        assert cache.get(SETTINGS) is None

    def test_token_cache_clear(self):
        cache = TokenCache()
        cache.put(SETTINGS, make_token())
        cache.clear()

        assert cache.get(SETTINGS) is None


class TestParseJobList:
    def test_parse_job_list_valid(self):
        jobs = parse_job_list(
            [{"jobId": "a", "active": True}, {"jobId": "b", "active": False, "fileId": "f"}], SITE_CODE
        )

        assert [job.job_id for job in jobs] == ["a", "b"]

    def test_parse_job_list_empty(self):
        assert parse_job_list([], SITE_CODE) == []

    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            ({"jobs": []}, "expected a JSON array of jobs, got dict"),
            (None, "expected a JSON array of jobs, got NoneType"),
            ("[]", "expected a JSON array of jobs, got str"),
            ([{"jobId": "a"}, "b"], "expected a JSON object"),
            ([{"status": "DONE"}], "missing or empty jobId"),
            ([{"jobId": "a", "active": "no"}], "active is 'no'"),
            ([{"jobId": "a", "createdAt": "noon"}], "Invalid date-time"),
        ],
        ids=["envelope-object", "null", "string", "non-object-item", "missing-job-id", "bad-active", "bad-created-at"],
    )
    def test_parse_job_list_invalid(self, payload, message):
        with pytest.raises(SepaExportResponseError, match=message) as caught:
            parse_job_list(payload, SITE_CODE)

        assert "GET /sepa-export/{tenant}/jobs" in str(caught.value)
        assert f"site {SITE_CODE}" in str(caught.value)


class TestParseCreatedJobId:
    def test_parse_created_job_id_valid(self):
        assert parse_created_job_id({"id": "884cf047"}, SITE_CODE) == "884cf047"

    @pytest.mark.parametrize(
        "payload",
        [{}, {"id": ""}, {"id": "   "}, {"id": 7}, {"jobId": "884cf047"}, ["884cf047"], None],
        ids=["empty-object", "empty-id", "blank-id", "integer-id", "other-key", "list", "null"],
    )
    def test_parse_created_job_id_invalid(self, payload):
        with pytest.raises(SepaExportResponseError, match="no job id") as caught:
            parse_created_job_id(payload, SITE_CODE)

        assert "POST /sepa-export/{tenant}/jobs" in str(caught.value)
        assert "check the job list" in str(caught.value)


class TestFindJobInPage:
    def test_find_job_in_page_found(self):
        assert find_job_in_page(make_jobs("a", "b"), "b").job_id == "b"

    def test_find_job_in_page_missing(self):
        assert find_job_in_page(make_jobs("a", "b"), "c") is None


class TestPageWalk:
    def test_page_walk_full_page_continues(self):
        walk = PageWalk(page_size=2)

        assert walk.next_page(make_jobs("a", "b")) is True
        assert walk.page_number == 2

    def test_page_walk_short_page_stops(self):
        walk = PageWalk(page_size=2)

        assert walk.next_page(make_jobs("a")) is False
        assert walk.page_number == 1

    def test_page_walk_empty_page_stops(self):
        assert PageWalk(page_size=2).next_page([]) is False

    def test_page_walk_repeated_page_stops(self):
        walk = PageWalk(page_size=2)
        walk.next_page(make_jobs("a", "b"))

        assert walk.next_page(make_jobs("a", "b")) is False

    def test_page_walk_shifted_page_continues(self):
        walk = PageWalk(page_size=2)
        walk.next_page(make_jobs("a", "b"))

        assert walk.next_page(make_jobs("b", "c")) is True
        assert walk.page_number == 3

    def test_page_walk_max_pages_stops(self):
        walk = PageWalk(page_size=1, max_pages=3)
        results = [walk.next_page(make_jobs(f"job-{number}")) for number in range(5)]

        assert results == [True, True, False, False, False]
        assert walk.page_number == 3


class TestTokenCacheDiscardByValue:
    def test_discard_matching_value(self):
        from airflow_provider_sepa.core.endpoints import ConnectionSettings
        from airflow_provider_sepa.core.payloads import AccessToken, TokenCache

        cache = TokenCache()
        settings = ConnectionSettings("https://api.example.test", "id", "secret", "acme")
        cache.put(settings, AccessToken("first-token", refresh_at=float("inf"), lifetime=100.0))

        cache.discard(settings, value="first-token")

        assert cache.get(settings) is None

    def test_late_401_keeps_newer_token(self):
        from airflow_provider_sepa.core.endpoints import ConnectionSettings
        from airflow_provider_sepa.core.payloads import AccessToken, TokenCache

        cache = TokenCache()
        settings = ConnectionSettings("https://api.example.test", "id", "secret", "acme")
        newer = AccessToken("second-token", refresh_at=float("inf"), lifetime=100.0)
        cache.put(settings, newer)

        cache.discard(settings, value="first-token")

        assert cache.get(settings) is newer
