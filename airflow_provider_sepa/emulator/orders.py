"""Deterministic fake orders that the emulator exports into SEPA direct debit files.

Every value comes from :class:`random.Random` seeded with a string built from the
configured seed and the site code. String seeds do not depend on ``PYTHONHASHSEED``,
so the same (seed, site) pair yields the same orders in every process.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from airflow_provider_sepa.emulator.config import EmulatorConfig
from airflow_provider_sepa.emulator.iban import (
    GENERATED_IBAN_COUNTRIES,
    generate_bic,
    generate_iban,
    make_creditor_identifier,
)

CENT = Decimal("0.01")

#: Debtor names with characters outside ASCII, to exercise UTF-8 handling end to end.
NON_ASCII_NAMES: tuple[str, ...] = (
    "Jürgen Müller",
    "Zoë Dubois",
    "Łukasz Wiśniewski",
    "Søren Ågård",
    "José Núñez",
    "Anaïs Lefèvre",
    "François Gérard",
    "Renée Brückner",
    "Małgorzata Kowalczyk",
    "Tomáš Dvořák",
    "Gülay Şahin",
    "Þóra Jónsdóttir",
    "Noël Côté",
    "Ágnes Szabó",
    "Nicolò Bianchi",
    "Mårten Ødegaard",
)
ASCII_NAMES: tuple[str, ...] = (
    "Anna Schmidt",
    "Lucas Bernard",
    "Sofia Rossi",
    "Daan de Vries",
    "Emma Peeters",
    "Pablo Garcia",
    "Lena Huber",
    "Marco Romano",
)
ALL_NAMES: tuple[str, ...] = NON_ASCII_NAMES + ASCII_NAMES

MIN_AMOUNT_CENTS = 500
MAX_AMOUNT_CENTS = 250_000
_MANDATE_EPOCH = date(2019, 1, 1)
_MANDATE_SPAN_DAYS = 2500


@dataclass(frozen=True)
class Order:
    """Invoiced order that becomes one direct debit transaction."""

    order_id: str
    amount: Decimal
    currency: str
    debtor_name: str
    debtor_iban: str
    debtor_bic: str
    mandate_id: str
    mandate_signed_on: date
    end_to_end_id: str


@dataclass(frozen=True)
class Creditor:
    """Shop that collects the direct debits."""

    name: str
    iban: str
    bic: str
    creditor_id: str


@dataclass(frozen=True)
class OrderTotals:
    """Number of orders and the sum of their amounts."""

    count: int
    amount_sum: Decimal


def site_order_count(config: EmulatorConfig, site_code: str) -> int:
    """Return how many orders ``site_code`` exports, from ``site_orders`` or ``orders_per_site``."""
    if site_code in config.site_orders:
        return config.site_orders[site_code]
    if isinstance(config.orders_per_site, int):
        return config.orders_per_site
    low, high = config.orders_per_site
    return random.Random(f"{config.seed}:{site_code}:count").randint(low, high)


def make_creditor(seed: int) -> Creditor:
    """Build the creditor that all files of an emulator with ``seed`` use."""
    rng = random.Random(f"{seed}:creditor")
    national_id = "".join(rng.choice("0123456789") for _ in range(11))
    return Creditor(
        name="SEPA Emulator Demo Shop GmbH",
        iban=generate_iban("DE", rng),
        bic=generate_bic("DE", rng),
        creditor_id=make_creditor_identifier("DE", national_id),
    )


def iter_amounts(seed: int, site_code: str, count: int) -> Iterator[Decimal]:
    """Yield the amounts of the first ``count`` orders of ``site_code``, in EUR with 2 decimals.

    Amounts come from their own random stream, so :func:`total_orders` can sum them
    without generating the rest of each order.
    """
    rng = random.Random(f"{seed}:{site_code}:amounts")
    for _ in range(count):
        yield (Decimal(rng.randint(MIN_AMOUNT_CENTS, MAX_AMOUNT_CENTS)) * CENT).quantize(CENT)


def iter_orders(seed: int, site_code: str, count: int) -> Iterator[Order]:
    """Yield ``count`` orders of ``site_code`` one at a time, so large sites fit in memory.

    The first order always has a debtor name with non-ASCII characters.
    """
    rng = random.Random(f"{seed}:{site_code}:orders")
    amounts = iter_amounts(seed, site_code, count)
    for index, amount in enumerate(amounts):
        number = index + 1
        country = rng.choice(GENERATED_IBAN_COUNTRIES)
        names = NON_ASCII_NAMES if index == 0 else ALL_NAMES
        order_id = f"{site_code}-{number:07d}"
        yield Order(
            order_id=order_id,
            amount=amount,
            currency="EUR",
            debtor_name=rng.choice(names),
            debtor_iban=generate_iban(country, rng),
            debtor_bic=generate_bic(country, rng),
            mandate_id=f"MNDT-{rng.randint(0, 99_999_999):08d}",
            mandate_signed_on=_MANDATE_EPOCH + timedelta(days=rng.randint(0, _MANDATE_SPAN_DAYS)),
            end_to_end_id=order_id,
        )


def total_orders(seed: int, site_code: str, count: int) -> OrderTotals:
    """Return the number of orders of ``site_code`` and the sum of their amounts."""
    amount_sum = sum(iter_amounts(seed, site_code, count), Decimal("0.00"))
    return OrderTotals(count=count, amount_sum=amount_sum)
