"""IBAN helpers, seeded orders, the streaming pain.008 writer and summarize_pain008."""

from __future__ import annotations

import io
import random
from datetime import date, datetime, timezone
from decimal import Decimal
from threading import Event

import pytest

from airflow_provider_sepa.emulator import iban as iban_module
from airflow_provider_sepa.emulator.config import EmulatorConfig
from airflow_provider_sepa.emulator.orders import (
    NON_ASCII_NAMES,
    iter_orders,
    make_creditor,
    site_order_count,
    total_orders,
)
from airflow_provider_sepa.emulator.sepa_xml import (
    Pain008Header,
    WriteCancelledError,
    build_pain008,
    summarize_pain008,
    summarize_pain008_file,
    write_pain008,
)

# Published example IBANs, one per country the emulator generates.
KNOWN_VALID_IBANS = [
    "DE89370400440532013000",
    "AT611904300234573201",
    "FR7630006000011234567890189",
    "NL91ABNA0417164300",
    "BE68539007547034",
    "ES9121000418450200051332",
    "IT60X0542811101000000123456",
]


def _header() -> Pain008Header:
    return Pain008Header(
        message_id="MSG-1",
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        initiating_party="Test Shop",
        payment_info_id="PMT-1",
        collection_date=date(2026, 1, 5),
        creditor=make_creditor(1),
    )


@pytest.mark.parametrize("iban", KNOWN_VALID_IBANS)
def test_iban_known_examples_valid(iban: str) -> None:
    assert iban_module.iban_is_valid(iban) is True


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013001",
        "DE8937040044053201300",
        "de89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "XX89370400440532013000",
        "DEAB370400440532013000",
        "",
        "DE",
    ],
    ids=[
        "wrong check",
        "too short",
        "lowercase",
        "spaces",
        "unknown country",
        "letters as check",
        "empty",
        "country only",
    ],
)
def test_iban_invalid_examples(iban: str) -> None:
    assert iban_module.iban_is_valid(iban) is False


def test_national_check_digits_match_examples() -> None:
    assert iban_module._italian_cin("05428", "11101", "000000123456") == "X"
    assert iban_module._spanish_check_digit("21000418") + iban_module._spanish_check_digit("0200051332") == "45"
    assert iban_module._french_rib_key("30006", "00001", "12345678901") == "89"
    assert iban_module._belgian_check_digits("5390075470") == "34"


def test_creditor_identifier_check_digits() -> None:
    assert iban_module.make_creditor_identifier("DE", "09999999999") == "DE98ZZZ09999999999"


@pytest.mark.parametrize("country", iban_module.GENERATED_IBAN_COUNTRIES)
def test_generated_ibans_valid(country: str) -> None:
    rng = random.Random(country)
    for _ in range(200):
        iban = iban_module.generate_iban(country, rng)
        assert iban.startswith(country)
        assert len(iban) == iban_module.IBAN_LENGTHS[country]
        assert iban_module.iban_is_valid(iban), iban


def test_orders_deterministic_per_seed_and_site() -> None:
    first = list(iter_orders(7, "main", 30))
    again = list(iter_orders(7, "main", 30))
    other_seed = list(iter_orders(8, "main", 30))
    other_site = list(iter_orders(7, "shop-de", 30))

    assert first == again
    assert first != other_seed
    assert [order.amount for order in first] != [order.amount for order in other_site]


def test_order_prefix_stable_across_counts() -> None:
    assert list(iter_orders(7, "main", 5)) == list(iter_orders(7, "main", 10))[:5]


def test_order_fields_valid() -> None:
    orders = list(iter_orders(20261204, "shop-fr", 300))

    assert orders[0].debtor_name in NON_ASCII_NAMES
    assert any(not order.debtor_name.isascii() for order in orders[1:])
    assert len({order.order_id for order in orders}) == 300
    for order in orders:
        assert order.amount == order.amount.quantize(Decimal("0.01"))
        assert order.amount > 0
        assert iban_module.iban_is_valid(order.debtor_iban)
        assert order.debtor_bic[4:6] == order.debtor_iban[:2]
        assert len(order.end_to_end_id) <= 35
        assert len(order.mandate_id) <= 35


def test_total_orders_matches_orders() -> None:
    totals = total_orders(3, "main", 50)

    assert totals.count == 50
    assert totals.amount_sum == sum((order.amount for order in iter_orders(3, "main", 50)), Decimal("0"))


def test_site_order_count_rules() -> None:
    config = EmulatorConfig(site_orders={"big": 500000})
    counts = [site_order_count(config, site) for site in config.sites]

    assert all(5 <= count <= 40 for count in counts)
    assert counts == [site_order_count(EmulatorConfig(), site) for site in config.sites]
    assert site_order_count(config, "big") == 500000
    assert "big" in config.site_codes()
    assert site_order_count(EmulatorConfig(orders_per_site=3), "main") == 3


def test_build_pain008_consistent() -> None:
    data = build_pain008(_header(), iter_orders(1, "main", 12))
    summary = summarize_pain008(data)

    assert summary["msg_id"] == "MSG-1"
    assert summary["creation_date_time"] == "2026-01-02T03:04:05Z"
    assert summary["nb_of_txs_declared"] == 12
    assert summary["nb_of_txs_counted"] == 12
    assert summary["ctrl_sum_declared"] == total_orders(1, "main", 12).amount_sum
    assert summary["is_consistent"] is True


def test_summary_detects_count_mismatch() -> None:
    data = build_pain008(_header(), iter_orders(1, "main", 3))
    tampered = data.replace(b"<NbOfTxs>3</NbOfTxs>", b"<NbOfTxs>4</NbOfTxs>", 1)

    summary = summarize_pain008(tampered)

    assert summary["nb_of_txs_declared"] == 4
    assert summary["nb_of_txs_counted"] == 3
    assert summary["is_consistent"] is False


def test_summary_detects_ctrl_sum_mismatch() -> None:
    orders = list(iter_orders(1, "main", 3))
    data = build_pain008(_header(), orders)
    first_amount = f">{orders[0].amount:.2f}<".encode()
    tampered = data.replace(first_amount, b">0.01<", 1)

    summary = summarize_pain008(tampered)

    assert summary["ctrl_sum_computed"] != summary["ctrl_sum_declared"]
    assert summary["is_consistent"] is False


def test_summary_detects_invalid_iban() -> None:
    orders = list(iter_orders(1, "main", 3))
    data = build_pain008(_header(), orders)
    broken_iban = orders[1].debtor_iban[:-1] + ("0" if orders[1].debtor_iban[-1] != "0" else "1")
    tampered = data.replace(orders[1].debtor_iban.encode(), broken_iban.encode())

    summary = summarize_pain008(tampered)

    assert summary["all_ibans_valid"] is False
    assert summary["invalid_ibans"] == [broken_iban]
    assert summary["is_consistent"] is False


@pytest.mark.parametrize(
    "data",
    [
        b"<Document",
        b'<?xml version="1.0"?><Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"/>',
        b"<Document/>",
    ],
    ids=["malformed", "pain.001 namespace", "no namespace"],
)
def test_summary_rejects_other_documents(data: bytes) -> None:
    with pytest.raises(ValueError):
        summarize_pain008(data)


def test_summary_of_file_path(tmp_path) -> None:
    path = tmp_path / "export.xml"
    path.write_bytes(build_pain008(_header(), iter_orders(1, "main", 4)))

    assert summarize_pain008_file(path)["nb_of_txs_counted"] == 4
    assert summarize_pain008_file(str(path))["is_consistent"] is True


def test_writer_rejects_wrong_totals() -> None:
    with pytest.raises(ValueError, match="do not match"):
        write_pain008(io.BytesIO(), _header(), iter_orders(1, "main", 3), nb_of_txs=4, ctrl_sum=Decimal("1.00"))


def test_writer_stops_when_cancelled() -> None:
    cancel = Event()
    cancel.set()
    totals = total_orders(1, "main", 3000)

    with pytest.raises(WriteCancelledError):
        write_pain008(io.BytesIO(), _header(), iter_orders(1, "main", 3000), totals.count, totals.amount_sum, cancel)


def test_writer_escapes_markup() -> None:
    header = Pain008Header(
        message_id="MSG-<1>",
        created_at=datetime(2026, 1, 2, tzinfo=timezone.utc),
        initiating_party="Smith & Söhne <GmbH>",
        payment_info_id="PMT-1",
        collection_date=date(2026, 1, 5),
        creditor=make_creditor(1),
    )

    data = build_pain008(header, iter_orders(1, "main", 1))

    assert "<Nm>Smith &amp; Söhne &lt;GmbH&gt;</Nm>".encode() in data
    assert summarize_pain008(data)["msg_id"] == "MSG-<1>"
