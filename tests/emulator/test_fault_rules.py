"""Fault model, string syntax and rule schedules, without a server."""

from __future__ import annotations

import threading

import pytest

from airflow_provider_sepa.emulator.config import EmulatorConfig
from airflow_provider_sepa.emulator.fault_injector import FIRED_FAULTS, FaultInjector
from airflow_provider_sepa.emulator.faults import DelayStage, Fault, FaultKind, JobOutcome, parse_fault


@pytest.mark.parametrize(
    ("text", "expected_spec"),
    [
        ("create:lose-reply", "create:lose-reply"),
        ("create:lose-reply:1", "create:lose-reply"),
        ("any:503:every=3", "any:503:every=3"),
        ("list:429", "list:429:retry-after=1"),
        ("list:429:retry-after=5:times=2", "list:429:retry-after=5:times=2"),
        ("token:500:4", "token:500:times=4"),
        ("any:html", "any:html=502"),
        ("download:html=504:retry-after=3", "download:html=504:retry-after=3"),
        ("list:malformed-json", "list:malformed-json"),
        ("token:drop", "token:drop"),
        ("download:drop-body", "download:drop-body"),
        ("download:drop-body=1000:file=abc-123", "download:drop-body=1000:file=abc-123"),
        ("list:delay=30", "list:delay=30"),
        ("create:delay=2.5:stage=reply", "create:delay=2.5:stage=reply"),
        ("list:revoke-tokens:every=5", "list:revoke-tokens:every=5"),
        ("any:expire-tokens", "any:expire-tokens"),
        ("download:bom:every=1", "download:bom:every=1"),
        ("download:no-charset", "download:no-charset"),
        ("token:lifetime=3:times=2", "token:lifetime=3:times=2"),
        ("create:job=failed:site=main", "create:job=failed:site=main"),
        ("create:job=unknown:status=PARTIAL", "create:job=unknown:status=PARTIAL"),
        ("create:newer-jobs=20", "create:newer-jobs=20"),
        ("list:503:site=shop-de:times=4:every=2", "list:503:site=shop-de:times=4:every=2"),
    ],
)
def test_parse_fault_canonical_spec(text: str, expected_spec: str) -> None:
    fault = parse_fault(text)

    assert fault.spec() == expected_spec
    assert parse_fault(fault.spec()).spec() == expected_spec


def test_parse_fault_fields() -> None:
    fault = parse_fault("create:delay=2.5:stage=reply:site=main:times=3:every=2")

    assert fault.endpoint == "create"
    assert fault.kind is FaultKind.DELAY
    assert fault.seconds == 2.5
    assert fault.stage is DelayStage.REPLY
    assert fault.site_code == "main"
    assert fault.times == 3
    assert fault.every == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("list", "expected ENDPOINT:ACTION"),
        ("list::503", "expected ENDPOINT:ACTION"),
        ("jobs:503", "unknown endpoint 'jobs'"),
        ("list:teapot", "unknown action 'teapot'"),
        ("list:status", "as the code itself"),
        ("list:200", "invalid status code 200"),
        ("list:600", "invalid status code 600"),
        ("list:bom", "does not apply to the list endpoint"),
        ("download:malformed-json", "does not apply to the download endpoint"),
        ("list:lifetime=3", "does not apply to the list endpoint"),
        ("list:drop:retry-after=3", "invalid parameter retry_after for fault 'drop'"),
        ("list:delay", "needs a value"),
        ("list:delay=", "missing value after delay="),
        ("list:delay=soon", "invalid seconds 'soon'"),
        ("list:delay=0", "expected a number > 0"),
        ("list:drop=3", "takes no value"),
        ("list:503:times=0", "invalid times 0"),
        ("list:503:every=x", "invalid every 'x'"),
        ("list:503:times=2:3", "given twice"),
        ("list:503:colour=red", "unknown option 'colour'"),
        ("list:503:site", "expected NAME=VALUE"),
        ("token:503:site=main", "token requests have no site"),
        ("list:503:file=abc", "use it with download"),
        ("list:503:stage=reply", "only delay takes a stage"),
        ("list:delay=1:stage=later", "invalid delay stage 'later'"),
        ("create:job=nope", "invalid job outcome 'nope'"),
        ("create:job=completed-no-file:status=DONE", "its status is always COMPLETED"),
        ("create:job=failed:status=has space", "invalid job status"),
        ("create:newer-jobs=0", "invalid count 0"),
    ],
)
def test_parse_fault_rejects_invalid(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_fault(text)

    assert str(raised.value).startswith(f"Invalid fault {text!r}: ")
    assert message in str(raised.value)


def test_fault_validates_python_fields() -> None:
    with pytest.raises(ValueError, match="expected an error status"):
        Fault("list", FaultKind.STATUS, status_code=302)
    with pytest.raises(ValueError, match="Missing outcome"):
        Fault("create", FaultKind.JOB_OUTCOME)
    with pytest.raises(ValueError, match="Invalid times True"):
        Fault("list", FaultKind.DROP, times=True)
    with pytest.raises(ValueError, match="Invalid fault kind"):
        Fault("list", "explode")  # type: ignore[arg-type]


def test_fault_effective_job_status() -> None:
    assert Fault("create", "job", outcome="failed").effective_job_status() == "FAILED"
    assert Fault("create", "job", outcome="unknown").effective_job_status() == "WEIRD_STATE"
    assert Fault("create", "job", outcome="unknown-no-file").effective_job_status() == "WEIRD_STATE"
    assert Fault("create", "job", outcome="completed-no-file").effective_job_status() == "COMPLETED"
    assert Fault("create", "job", outcome=JobOutcome.FAILED, job_status="ERROR").effective_job_status() == "ERROR"


def _faulted_calls(
    injector: FaultInjector, calls: int, endpoint: str = "list", site_code: str | None = None
) -> list[int]:
    """Make ``calls`` requests and return the 1-based numbers of those that got a terminal fault."""
    fired = []
    for number in range(1, calls + 1):
        if injector.take_request_faults(endpoint, site_code, None).terminal is not None:
            fired.append(number)
    return fired


def test_schedule_default_next_call_only() -> None:
    injector = FaultInjector()
    rule = injector.drop_connection("list")

    assert _faulted_calls(injector, 4) == [1]
    assert rule.fired == 1
    assert rule.exhausted


def test_schedule_times() -> None:
    injector = FaultInjector()
    rule = injector.respond_with_status("list", 503, times=3)

    assert _faulted_calls(injector, 6) == [1, 2, 3]
    assert rule.fired == 3


def test_schedule_every_without_end() -> None:
    injector = FaultInjector()
    rule = injector.respond_with_status("any", 503, every=3)

    assert _faulted_calls(injector, 10) == [3, 6, 9]
    assert rule.seen == 10
    assert not rule.exhausted


def test_schedule_every_with_times() -> None:
    injector = FaultInjector()
    injector.respond_with_status("list", 500, every=2, times=2)

    assert _faulted_calls(injector, 10) == [2, 4]


def test_schedule_counts_only_matching_calls() -> None:
    injector = FaultInjector()
    rule = injector.respond_with_status("list", 503, every=2, site_code="shop-de")

    assert _faulted_calls(injector, 3, site_code="main") == []
    assert _faulted_calls(injector, 3, endpoint="create", site_code="shop-de") == []
    assert _faulted_calls(injector, 4, site_code="shop-de") == [2, 4]
    assert rule.seen == 4


def test_first_terminal_rule_wins() -> None:
    injector = FaultInjector()
    first = injector.respond_with_status("list", 503)
    second = injector.drop_connection("any")

    chosen = injector.take_request_faults("list", None, None)
    assert chosen.terminal == first.fault
    assert second.seen == 0

    chosen = injector.take_request_faults("list", None, None)
    assert chosen.terminal == second.fault


def test_modifiers_combine_with_terminal() -> None:
    injector = FaultInjector()
    injector.delay("download", 2)
    injector.delay("any", 1, stage="reply")
    injector.add_utf8_bom()
    injector.drop_charset()
    injector.drop_during_body(after_bytes=10)
    injector.revoke_tokens_before("download")

    chosen = injector.take_request_faults("download", None, "file-1")

    assert chosen.delay_before_seconds == 2
    assert chosen.delay_reply_seconds == 1
    assert chosen.bom
    assert chosen.no_charset
    assert chosen.revoke_tokens
    assert chosen.terminal is not None
    assert chosen.terminal.kind is FaultKind.DROP_BODY
    assert len(chosen.specs) == 6


def test_file_filter() -> None:
    injector = FaultInjector()
    injector.add_utf8_bom(file_id="wanted", every=1)

    assert not injector.take_request_faults("download", None, "other").bom
    assert injector.take_request_faults("download", None, "wanted").bom
    assert injector.take_request_faults("download", None, "wanted").bom


def test_state_faults_not_taken_by_requests() -> None:
    injector = FaultInjector()
    lifetime = injector.shorten_token_lifetime(3)
    outcome = injector.end_jobs_with("failed")

    assert injector.take_request_faults("token", None, None).specs == []
    assert injector.take_request_faults("create", "main", None).specs == []
    assert lifetime.seen == 0
    assert outcome.seen == 0


def test_take_token_lifetime() -> None:
    injector = FaultInjector()
    injector.shorten_token_lifetime(2.5, times=2)

    assert [injector.take_token_lifetime() for _ in range(3)] == [2.5, 2.5, None]


def test_job_faults_first_outcome_wins() -> None:
    injector = FaultInjector()
    failed = injector.end_jobs_with("failed", site_code="shop-de")
    unknown = injector.end_jobs_with("unknown")
    injector.add_newer_jobs(3)
    injector.add_newer_jobs(2, site_code="shop-de")

    main_job = injector.take_job_faults("main")
    assert main_job.outcome == unknown.fault
    assert main_job.newer_jobs == 3

    shop_job = injector.take_job_faults("shop-de")
    assert shop_job.outcome == failed.fault
    assert shop_job.newer_jobs == 2


def test_fired_faults_recorded_in_context() -> None:
    injector = FaultInjector()
    injector.respond_with_status("list", 503)
    injector.end_jobs_with("failed")
    fired: list[str] = []

    token = FIRED_FAULTS.set(fired)
    try:
        injector.take_request_faults("list", None, None)
        injector.take_job_faults("main")
    finally:
        FIRED_FAULTS.reset(token)

    assert fired == ["list:503", "create:job=failed"]


def test_clear_and_remove() -> None:
    injector = FaultInjector()
    first = injector.respond_with_status("list", 503, every=1)
    injector.add("create:lose-reply")

    assert injector.remove(first)
    assert not injector.remove(first.id)
    assert [rule.fault.spec() for rule in injector.rules()] == ["create:lose-reply"]
    assert injector.clear() == 1
    assert injector.rules() == []
    assert not injector.has_rules()
    assert injector.take_request_faults("list", None, None).specs == []


def test_add_all_adds_nothing_when_one_is_invalid() -> None:
    injector = FaultInjector()

    with pytest.raises(ValueError, match="list:bom"):
        injector.add_all(["list:503", "list:bom"])

    assert injector.rules() == []


def test_rule_ids_increase() -> None:
    injector = FaultInjector()

    rules = injector.add_all(["list:503", "token:drop"])
    third = injector.add("create:lose-reply")

    assert [rule.id for rule in rules] == [1, 2]
    assert third.id == 3
    assert third.to_dict()["spec"] == "create:lose-reply"
    assert third.to_dict()["kind"] == "lose-reply"


def test_rules_thread_safe_counts() -> None:
    injector = FaultInjector()
    limited = injector.respond_with_status("list", 503, times=100)
    rate = injector.delay("list", 1, every=7)
    threads_count = 8
    calls_per_thread = 250
    barrier = threading.Barrier(threads_count)

    def call_many() -> None:
        barrier.wait()
        for _ in range(calls_per_thread):
            injector.take_request_faults("list", None, None)

    threads = [threading.Thread(target=call_many) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    total = threads_count * calls_per_thread
    assert limited.fired == 100
    assert rate.seen == total
    assert rate.fired == total // 7


def test_config_faults_parsed() -> None:
    config = EmulatorConfig(faults=["list:503", Fault("token", FaultKind.DROP)])

    assert [fault.spec() for fault in config.faults] == ["list:503", "token:drop"]


def test_config_faults_invalid() -> None:
    with pytest.raises(ValueError, match="Invalid fault 'list:bom'"):
        EmulatorConfig(faults=["list:bom"])
    with pytest.raises(ValueError, match="not a single one"):
        EmulatorConfig(faults="list:503")  # type: ignore[arg-type]
