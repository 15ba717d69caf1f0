"""IBAN validation and generation of valid test IBANs (ISO 13616 mod-97 check digits)."""

from __future__ import annotations

import random
import string

#: IBAN length per SEPA country. Other countries are rejected by :func:`iban_is_valid`.
IBAN_LENGTHS: dict[str, int] = {
    "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28,
    "IE": 22, "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27,
    "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27,
}  # fmt: skip

#: Countries for which :func:`generate_iban` can build an IBAN.
GENERATED_IBAN_COUNTRIES: tuple[str, ...] = ("DE", "AT", "FR", "NL", "BE", "ES", "IT")

_ALPHANUMERIC = frozenset(string.ascii_uppercase + string.digits)

# Character values of the Italian CIN check letter for characters at odd positions
# (1-based), indexed by digit. Characters at even positions count with their digit value.
_IT_CIN_ODD_DIGIT_VALUES = (1, 0, 5, 7, 9, 13, 15, 17, 19, 21)

# Fictitious bank codes for the Dutch BBAN, which starts with four letters.
_NL_BANK_CODES = ("ABNA", "INGB", "RABO", "TRIO", "KNAB", "SNSB")


def _to_digits(text: str) -> str:
    """Replace each letter with its two-digit value (A=10 ... Z=35), as ISO 7064 mod 97-10 requires."""
    return "".join(str(int(char, 36)) for char in text)


def iban_is_valid(iban: str) -> bool:
    """Return whether ``iban`` is a valid IBAN in electronic format.

    The electronic format has no spaces and upper-case letters only, as pain.008 requires.
    The country must be one of :data:`IBAN_LENGTHS` and the length must match it. The check
    digits must satisfy mod 97 = 1. National check digits inside the BBAN are not checked.
    """
    if not isinstance(iban, str) or len(iban) < 5:
        return False
    country = iban[:2]
    expected_length = IBAN_LENGTHS.get(country)
    if expected_length is None or len(iban) != expected_length:
        return False
    if not iban[2:4].isdigit() or not set(iban) <= _ALPHANUMERIC:
        return False
    rearranged = iban[4:] + iban[:4]
    return int(_to_digits(rearranged)) % 97 == 1


def iban_check_digits(country: str, bban: str) -> str:
    """Compute the two IBAN check digits for ``country`` and ``bban``."""
    remainder = int(_to_digits(bban + country + "00")) % 97
    return f"{98 - remainder:02d}"


def make_iban(country: str, bban: str) -> str:
    """Build an IBAN from a country code and a BBAN by adding the check digits."""
    return country + iban_check_digits(country, bban) + bban


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(count))


def _french_rib_key(bank: str, branch: str, account: str) -> str:
    """Compute the French RIB key for an all-digit bank code, branch code and account number."""
    remainder = (89 * int(bank) + 15 * int(branch) + 3 * int(account)) % 97
    return f"{97 - remainder:02d}"


def _spanish_check_digit(digits: str) -> str:
    """Compute one Spanish CCC control digit over ten digits (a shorter input is zero-padded)."""
    weights = (1, 2, 4, 8, 5, 10, 9, 7, 3, 6)
    total = sum(int(digit) * weight for digit, weight in zip(digits.zfill(10), weights, strict=True))
    value = 11 - total % 11
    if value == 11:
        return "0"
    if value == 10:
        return "1"
    return str(value)


def _italian_cin(abi: str, cab: str, account: str) -> str:
    """Compute the Italian CIN check letter for all-digit ABI, CAB and account numbers."""
    total = 0
    for position, char in enumerate(abi + cab + account, start=1):
        digit = int(char)
        total += _IT_CIN_ODD_DIGIT_VALUES[digit] if position % 2 == 1 else digit
    return string.ascii_uppercase[total % 26]


def _belgian_check_digits(first_ten_digits: str) -> str:
    remainder = int(first_ten_digits) % 97
    return f"{remainder or 97:02d}"


def generate_bban(country: str, rng: random.Random) -> str:
    """Generate a random BBAN for ``country`` with the national check digits where they exist.

    Account numbers are digits only. Supported countries are :data:`GENERATED_IBAN_COUNTRIES`.
    """
    if country == "DE":
        return _digits(rng, 8) + _digits(rng, 10)
    if country == "AT":
        return _digits(rng, 5) + _digits(rng, 11)
    if country == "FR":
        bank, branch, account = _digits(rng, 5), _digits(rng, 5), _digits(rng, 11)
        return bank + branch + account + _french_rib_key(bank, branch, account)
    if country == "NL":
        return rng.choice(_NL_BANK_CODES) + _digits(rng, 10)
    if country == "BE":
        first_ten = _digits(rng, 10)
        return first_ten + _belgian_check_digits(first_ten)
    if country == "ES":
        bank, branch, account = _digits(rng, 4), _digits(rng, 4), _digits(rng, 10)
        control = _spanish_check_digit(bank + branch) + _spanish_check_digit(account)
        return bank + branch + control + account
    if country == "IT":
        abi, cab, account = _digits(rng, 5), _digits(rng, 5), _digits(rng, 12)
        return _italian_cin(abi, cab, account) + abi + cab + account
    raise ValueError(f"Unsupported country {country!r} for generated IBANs: use one of {GENERATED_IBAN_COUNTRIES}.")


def generate_iban(country: str, rng: random.Random) -> str:
    """Generate a random valid IBAN for ``country`` from ``rng``."""
    return make_iban(country, generate_bban(country, rng))


def generate_bic(country: str, rng: random.Random) -> str:
    """Generate a random 8-character BIC (bank code, ``country``, location code)."""
    bank_code = "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
    location = rng.choice(string.ascii_uppercase) + rng.choice(string.ascii_uppercase + string.digits)
    return bank_code + country + location


def make_creditor_identifier(country: str, national_id: str, business_code: str = "ZZZ") -> str:
    """Build a SEPA creditor identifier with its check digits.

    The check digits are computed like IBAN check digits over the national identifier and
    the country, while the business code is left out of the computation.
    """
    return country + iban_check_digits(country, national_id) + business_code + national_id
