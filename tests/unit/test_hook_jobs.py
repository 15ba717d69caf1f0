"""Tests of the sync hook's job requests: retries, create, list, paging and look-ups."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import urllib3

from airflow_provider_sepa.core import endpoints
from airflow_provider_sepa.core.errors import (
    SepaExportApiError,
    SepaExportBadRequestError,
    SepaExportConflictError,
    SepaExportCreateOutcomeUnknownError,
    SepaExportInputError,
    SepaExportJobNotFoundError,
    SepaExportResponseError,
    SepaExportServerError,
)
from airflow_provider_sepa.core.retry import RetryPolicy
from airflow_provider_sepa.hooks.sepa_export import SepaExportHook

SITE_CODE = "main"
JOB_ID = "884cf047-94a2-42ae-8a89-7084c3259ef2"
JOB_LIST = [{"jobId": JOB_ID, "status": "RUNNING", "siteCode": SITE_CODE, "active": True}]
BODY_400 = {
    "message": "Bad Request",
    "_embedded": {"errors": [{"message": "Required argument [String siteCode] not specified", "path": "/siteCode"}]},
}
BODY_409 = {"message": "Another job is in progress. You can have only one job at the same time."}
BODY_502 = "<html><body><h1>502 Bad Gateway</h1></body></html>"
UTC = timezone.utc


def connection_refused() -> requests.exceptions.ConnectionError:
    """Return the error requests raises when the TCP connection is refused, so no request was sent."""
    reason = urllib3.exceptions.NewConnectionError(
        None, "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/sepa-export/acme/jobs", reason))


def calls_to(requests_mock, method: str, url: str) -> list:
    """Return the recorded requests with the given method whose URL, without query, is ``url``."""
    return [call for call in requests_mock.request_history if call.method == method and call.url.split("?")[0] == url]


def query_of(request) -> dict[str, str]:
    """Return the query of a recorded request with its original case."""
    return {key: values[0] for key, values in parse_qs(urlsplit(request.url).query).items()}


def paged_jobs(pages: list[list[dict]]):
    """Return a response callback that serves ``pages`` by ``pageNumber`` and an empty list after them."""

    def respond(request, context):
        number = int(query_of(request)["pageNumber"])
        return pages[number - 1] if number <= len(pages) else []

    return respond


def job(job_id: str, created_at: str | None = None, **fields) -> dict:
    entry = {"jobId": job_id, "siteCode": SITE_CODE, "active": False, "fileId": f"file-{job_id}", "status": "DONE"}
    if created_at is not None:
        entry["createdAt"] = created_at
    entry.update(fields)
    return entry


class TestSepaExportHookRetries:
    @pytest.mark.parametrize("status", [429, 500, 502, 503, 504], ids=["429", "500", "502", "503", "504"])
    def test_retry_status_then_success(self, hook, api, requests_mock, token_endpoint, sleeps, status):
        requests_mock.get(api.jobs_url, [{"status_code": status, "text": BODY_502}, {"json": JOB_LIST}])

        jobs = hook.list_jobs(SITE_CODE)

        assert [item.job_id for item in jobs] == [JOB_ID]
        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 2
        assert len(sleeps) == 1
        assert 0.5 <= sleeps[0] <= 1.0

    def test_retry_429_waits_retry_after(self, hook, api, requests_mock, token_endpoint, sleeps):
        requests_mock.get(api.jobs_url, [{"status_code": 429, "headers": {"Retry-After": "7"}}, {"json": JOB_LIST}])

        hook.list_jobs(SITE_CODE)

        assert sleeps[0] >= 7.0

    def test_retry_503_waits_retry_after(self, hook, api, requests_mock, token_endpoint, sleeps):
        requests_mock.get(api.jobs_url, [{"status_code": 503, "headers": {"Retry-After": "12"}}, {"json": JOB_LIST}])

        hook.list_jobs(SITE_CODE)

        assert sleeps[0] >= 12.0

    def test_retry_429_http_date(self, hook, api, requests_mock, token_endpoint, sleeps):
        requests_mock.get(
            api.jobs_url,
            [{"status_code": 429, "headers": {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}}, {"json": JOB_LIST}],
        )

        hook.list_jobs(SITE_CODE)

        assert len(sleeps) == 1
        assert 0.5 <= sleeps[0] <= 1.0

    def test_retry_after_above_limit_stops(self, api, requests_mock, token_endpoint, sleeps):
        hook = SepaExportHook(retry_policy=RetryPolicy(max_retry_after=300.0), sleep=sleeps.append)
        requests_mock.get(api.jobs_url, status_code=429, headers={"Retry-After": "3600"})

        with pytest.raises(SepaExportServerError, match="longer than the 300 s limit"):
            hook.list_jobs(SITE_CODE)

        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 1
        assert sleeps == []

    def test_retry_exhausted_raises(self, hook, api, requests_mock, token_endpoint, sleeps):
        requests_mock.get(api.jobs_url, status_code=502, text=BODY_502)

        with pytest.raises(SepaExportServerError) as caught:
            hook.list_jobs(SITE_CODE)

        message = str(caught.value)
        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 3
        assert len(sleeps) == 2
        assert sleeps[1] >= 1.0
        assert endpoints.LIST_ENDPOINT in message
        assert "HTTP 502" in message
        assert f"site {SITE_CODE}" in message
        assert "after 3 attempts" in message
        assert "502 Bad Gateway" in message

    @pytest.mark.parametrize(
        "error",
        [
            requests.exceptions.ConnectionError,
            requests.exceptions.ConnectTimeout,
            requests.exceptions.ReadTimeout,
            requests.exceptions.ChunkedEncodingError,
            connection_refused(),
        ],
        ids=["connection-error", "connect-timeout", "read-timeout", "broken-body", "connection-refused"],
    )
    def test_retry_transport_failure_get(self, hook, api, requests_mock, token_endpoint, sleeps, error):
        requests_mock.get(api.jobs_url, [{"exc": error}, {"json": JOB_LIST}])

        jobs = hook.list_jobs(SITE_CODE)

        assert len(jobs) == 1
        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 2
        assert len(sleeps) == 1

    def test_retry_transport_exhausted(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, exc=requests.exceptions.ReadTimeout)

        with pytest.raises(SepaExportServerError) as caught:
            hook.list_jobs(SITE_CODE)

        assert "no response" in str(caught.value)
        assert "read timed out" in str(caught.value)
        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 3

    def test_retry_not_on_400(self, hook, api, requests_mock, token_endpoint, sleeps):
        requests_mock.get(api.jobs_url, status_code=400, json=BODY_400)

        with pytest.raises(SepaExportBadRequestError, match="Required argument"):
            hook.list_jobs(SITE_CODE)

        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 1
        assert sleeps == []

    def test_redirect_not_followed(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, status_code=302, headers={"Location": "https://elsewhere.example.test/jobs"})

        with pytest.raises(SepaExportApiError, match="HTTP 302"):
            hook.list_jobs(SITE_CODE)

        assert requests_mock.call_count == 2


class TestSepaExportHookCreateJob:
    def test_create_job_request(self, hook, api, requests_mock, token_endpoint):
        requests_mock.post(api.jobs_url, status_code=201, json={"id": JOB_ID})

        job_id = hook.create_job(SITE_CODE)
        request = calls_to(requests_mock, "POST", api.jobs_url)[0]

        assert job_id == JOB_ID
        assert request.json() == {"siteCode": SITE_CODE}
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Authorization"] == f"Bearer {token_endpoint.issued[0]}"

    @pytest.mark.parametrize("status", [500, 502, 503, 504], ids=["500", "502", "503", "504"])
    def test_create_job_5xx_outcome_unknown(self, hook, api, requests_mock, token_endpoint, sleeps, status):
        requests_mock.post(api.jobs_url, status_code=status, text=BODY_502)

        with pytest.raises(SepaExportCreateOutcomeUnknownError) as caught:
            hook.create_job(SITE_CODE)

        assert len(calls_to(requests_mock, "POST", api.jobs_url)) == 1
        assert sleeps == []
        assert f"HTTP {status}" in str(caught.value)
        assert endpoints.CREATE_ENDPOINT in str(caught.value)
        assert f"site {SITE_CODE}" in str(caught.value)

    @pytest.mark.parametrize(
        "error",
        [
            requests.exceptions.ReadTimeout,
            requests.exceptions.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
        ],
        ids=["read-timeout", "connection-dropped", "broken-body"],
    )
    def test_create_job_lost_reply_outcome_unknown(self, hook, api, requests_mock, token_endpoint, error):
        requests_mock.post(api.jobs_url, exc=error)

        with pytest.raises(SepaExportCreateOutcomeUnknownError, match="look it up"):
            hook.create_job(SITE_CODE)

        assert len(calls_to(requests_mock, "POST", api.jobs_url)) == 1

    @pytest.mark.parametrize(
        "error",
        [requests.exceptions.ConnectTimeout, connection_refused()],
        ids=["connect-timeout", "connection-refused"],
    )
    def test_create_job_connect_failure_retried(self, hook, api, requests_mock, token_endpoint, sleeps, error):
        requests_mock.post(api.jobs_url, [{"exc": error}, {"status_code": 201, "json": {"id": JOB_ID}}])

        assert hook.create_job(SITE_CODE) == JOB_ID
        assert len(calls_to(requests_mock, "POST", api.jobs_url)) == 2
        assert len(sleeps) == 1

    def test_create_job_429_retried(self, hook, api, requests_mock, token_endpoint, sleeps):
        requests_mock.post(
            api.jobs_url,
            [{"status_code": 429, "headers": {"Retry-After": "3"}}, {"status_code": 201, "json": {"id": JOB_ID}}],
        )

        assert hook.create_job(SITE_CODE) == JOB_ID
        assert len(calls_to(requests_mock, "POST", api.jobs_url)) == 2
        assert sleeps[0] >= 3.0

    def test_create_job_409_conflict(self, hook, api, requests_mock, token_endpoint, sleeps):
        requests_mock.post(api.jobs_url, status_code=409, json=BODY_409)

        with pytest.raises(SepaExportConflictError) as caught:
            hook.create_job(SITE_CODE)

        assert "Another job is in progress" in str(caught.value)
        assert "HTTP 409" in str(caught.value)
        assert f"site {SITE_CODE}" in str(caught.value)
        assert len(calls_to(requests_mock, "POST", api.jobs_url)) == 1
        assert sleeps == []

    @pytest.mark.parametrize(
        "response",
        [{"json": {}}, {"json": {"id": ""}}, {"text": "created"}],
        ids=["no-id", "empty-id", "not-json"],
    )
    def test_create_job_bad_reply(self, hook, api, requests_mock, token_endpoint, response):
        requests_mock.post(api.jobs_url, status_code=201, **response)

        with pytest.raises(SepaExportCreateOutcomeUnknownError) as caught:
            hook.create_job(SITE_CODE)

        assert f"site {SITE_CODE}" in str(caught.value)
        assert "HTTP 201" in str(caught.value)
        assert len(calls_to(requests_mock, "POST", api.jobs_url)) == 1

    @pytest.mark.parametrize(
        "site_code", ["", " main", "ma\nin", "..", None], ids=["empty", "leading-space", "newline", "dot-dot", "none"]
    )
    def test_create_job_invalid_site_before_request(self, hook, requests_mock, site_code):
        with pytest.raises(SepaExportInputError):
            hook.create_job(site_code)

        assert requests_mock.call_count == 0


class TestSepaExportHookListJobs:
    def test_list_jobs_query(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=JOB_LIST)

        hook.list_jobs("Main-Site", page_number=3, page_size=25, sort="ASC")

        assert query_of(requests_mock.last_request) == {
            "siteCode": "Main-Site",
            "pageNumber": "3",
            "pageSize": "25",
            "sort": "ASC",
        }

    def test_list_jobs_default_query(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=JOB_LIST)

        hook.list_jobs(SITE_CODE)

        assert query_of(requests_mock.last_request) == {
            "siteCode": SITE_CODE,
            "pageNumber": "1",
            "pageSize": "16",
            "sort": "DESC",
        }

    @pytest.mark.parametrize(
        "site_code", ["a&sort=ASC", "a/b", "a#b", "ü ß"], ids=["ampersand", "slash", "hash", "non-ascii"]
    )
    def test_list_jobs_site_code_encoded(self, hook, api, requests_mock, token_endpoint, site_code):
        requests_mock.get(api.jobs_url, json=[])

        hook.list_jobs(site_code)
        request = requests_mock.last_request

        assert urlsplit(request.url).path == "/sepa-export/acme/jobs"
        assert query_of(request)["siteCode"] == site_code
        assert query_of(request)["sort"] == "DESC"

    def test_list_jobs_parsed(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=[job("a", "2025-07-12T06:55:43.015Z"), job("b", active=True, fileId=None)])

        jobs = hook.list_jobs(SITE_CODE)

        assert [item.job_id for item in jobs] == ["a", "b"]
        assert jobs[0].created_at == datetime(2025, 7, 12, 6, 55, 43, 15000, tzinfo=UTC)
        assert jobs[1].active is True

    @pytest.mark.parametrize(
        ("response", "message"),
        [
            ({"json": {"jobs": []}}, "expected a JSON array"),
            ({"text": "<html>oops</html>"}, "not JSON"),
            ({"json": [{"id": 1}]}, "jobId"),
        ],
        ids=["envelope", "html", "item-without-job-id"],
    )
    def test_list_jobs_bad_reply(self, hook, api, requests_mock, token_endpoint, response, message):
        requests_mock.get(api.jobs_url, **response)

        with pytest.raises(SepaExportResponseError, match=message) as caught:
            hook.list_jobs(SITE_CODE)

        assert f"site {SITE_CODE}" in str(caught.value)
        assert "HTTP 200" in str(caught.value)

    @pytest.mark.parametrize(
        "arguments",
        [{"page_number": 0}, {"page_size": 0}, {"sort": "asc"}, {"site_code": ""}],
        ids=["page-zero", "size-zero", "sort-lowercase", "site-empty"],
    )
    def test_list_jobs_invalid_before_request(self, hook, requests_mock, arguments):
        call = {"site_code": SITE_CODE, **arguments}

        with pytest.raises(SepaExportInputError):
            hook.list_jobs(**call)

        assert requests_mock.call_count == 0


class TestSepaExportHookGetJob:
    def test_get_job_on_page_three(self, hook, api, requests_mock, token_endpoint):
        pages = [[job("a"), job("b")], [job("c"), job("d")], [job("e"), job(JOB_ID)], [job("f")]]
        requests_mock.get(api.jobs_url, json=paged_jobs(pages))

        found = hook.get_job(SITE_CODE, JOB_ID, page_size=2)
        numbers = [query_of(call)["pageNumber"] for call in calls_to(requests_mock, "GET", api.jobs_url)]

        assert found.job_id == JOB_ID
        assert numbers == ["1", "2", "3"]
        assert all(query_of(call)["pageSize"] == "2" for call in calls_to(requests_mock, "GET", api.jobs_url))

    def test_get_job_first_page(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=paged_jobs([[job(JOB_ID)]]))

        assert hook.get_job(SITE_CODE, JOB_ID).job_id == JOB_ID
        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 1

    def test_get_job_stops_on_short_page(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=paged_jobs([[job("a"), job("b")], [job("c")], [job(JOB_ID)]]))

        with pytest.raises(SepaExportJobNotFoundError):
            hook.get_job(SITE_CODE, JOB_ID, page_size=2)

        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 2

    def test_get_job_stops_on_empty_page(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=paged_jobs([[job("a"), job("b")]]))

        with pytest.raises(SepaExportJobNotFoundError):
            hook.get_job(SITE_CODE, JOB_ID, page_size=2)

        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 2

    def test_get_job_stops_on_repeated_page(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=[job("a"), job("b")])

        with pytest.raises(SepaExportJobNotFoundError):
            hook.get_job(SITE_CODE, JOB_ID, page_size=2)

        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 2

    def test_get_job_not_found_message(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=[])

        with pytest.raises(SepaExportJobNotFoundError) as caught:
            hook.get_job(SITE_CODE, JOB_ID)

        message = str(caught.value)
        assert JOB_ID in message
        assert f"site {SITE_CODE!r}" in message
        assert "/sepa-export/acme/jobs" in message

    @pytest.mark.parametrize("job_id", ["", " x", ".."], ids=["empty", "leading-space", "dot-dot"])
    def test_get_job_invalid_id_before_request(self, hook, requests_mock, job_id):
        with pytest.raises(SepaExportInputError):
            hook.get_job(SITE_CODE, job_id)

        assert requests_mock.call_count == 0

    def test_iter_jobs_max_pages(self, hook, api, requests_mock, token_endpoint):
        pages = [[job(f"job-{number}")] for number in range(10)]
        requests_mock.get(api.jobs_url, json=paged_jobs(pages))

        jobs = list(hook.iter_jobs(SITE_CODE, page_size=1, max_pages=4))

        assert [item.job_id for item in jobs] == ["job-0", "job-1", "job-2", "job-3"]

    def test_iter_jobs_yields_each_job_once(self, hook, api, requests_mock, token_endpoint):
        # A job created between the two requests pushes "b" from page 1 onto page 2.
        requests_mock.get(api.jobs_url, json=paged_jobs([[job("a"), job("b")], [job("b"), job("c")], [job("d")]]))

        jobs = list(hook.iter_jobs(SITE_CODE, page_size=2))

        assert [item.job_id for item in jobs] == ["a", "b", "c", "d"]

    def test_iter_jobs_repeated_page_yields_once(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=[job("a"), job("b")])

        jobs = list(hook.iter_jobs(SITE_CODE, page_size=2))

        assert [item.job_id for item in jobs] == ["a", "b"]


class TestSepaExportHookFindJobsCreatedSince:
    SINCE = datetime(2025, 7, 12, 6, 0, 0, tzinfo=UTC)

    def test_find_since_filters_and_stops(self, hook, api, requests_mock, token_endpoint):
        # The hook walks pages of 50, so page 1 is full and page 2 contains the boundary.
        first_page = [job(f"new-{number}", f"2025-07-12T07:{59 - number:02d}:00Z") for number in range(50)]
        second_page = [job("equal", "2025-07-12T06:00:00Z"), job("old", "2025-07-12T05:59:59.999Z")]
        second_page += [job(f"older-{number}", "2025-07-11T06:00:00Z") for number in range(48)]
        third_page = [job("never-fetched", "2025-07-12T07:00:00Z")]
        requests_mock.get(api.jobs_url, json=paged_jobs([first_page, second_page, third_page]))

        found = hook.find_jobs_created_since(SITE_CODE, self.SINCE)

        assert len(found) == 51
        assert found[0].job_id == "new-0"
        assert found[-1].job_id == "equal"
        assert len(calls_to(requests_mock, "GET", api.jobs_url)) == 2

    def test_find_since_sorted_newest_first(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=[job("a", "2025-07-12T06:10:00Z")])

        hook.find_jobs_created_since(SITE_CODE, self.SINCE)

        assert query_of(requests_mock.last_request)["sort"] == "DESC"

    def test_find_since_skips_undated(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=[job("undated"), job("dated", "2025-07-12T06:10:00Z")])

        found = hook.find_jobs_created_since(SITE_CODE, self.SINCE)

        assert [item.job_id for item in found] == ["dated"]

    def test_find_since_offset_timestamps(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(
            api.jobs_url, json=[job("later", "2025-07-12T08:00:01+02:00"), job("earlier", "2025-07-12T07:59:59+0200")]
        )

        found = hook.find_jobs_created_since(SITE_CODE, self.SINCE)

        assert [item.job_id for item in found] == ["later"]

    def test_find_since_naive_is_utc(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=[job("new", "2025-07-12T06:00:01Z"), job("old", "2025-07-12T05:59:59Z")])

        found = hook.find_jobs_created_since(SITE_CODE, datetime(2025, 7, 12, 6, 0, 0))

        assert [item.job_id for item in found] == ["new"]

    def test_find_since_none_found(self, hook, api, requests_mock, token_endpoint):
        requests_mock.get(api.jobs_url, json=[job("old", "2025-07-11T06:00:00Z")])

        assert hook.find_jobs_created_since(SITE_CODE, self.SINCE) == []

    def test_find_since_no_duplicates(self, hook, api, requests_mock, token_endpoint):
        page = [job(f"job-{number}", f"2025-07-12T06:{59 - number:02d}:00Z") for number in range(50)]
        requests_mock.get(api.jobs_url, json=page)

        found = hook.find_jobs_created_since(SITE_CODE, self.SINCE)

        assert len(found) == 50
        assert len({item.job_id for item in found}) == 50
