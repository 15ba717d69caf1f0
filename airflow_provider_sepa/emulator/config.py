"""Configuration of the SEPA Export API emulator."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from airflow_provider_sepa.emulator.faults import Fault, parse_fault

SCOPE_JOB_VIEW = "sepaexport.job_view"
SCOPE_JOB_MANAGE = "sepaexport.job_manage"
SCOPE_MEDIA_VIEW = "sepaexport.media_view"

#: Every scope that the SEPA Export API defines, in the order the token endpoint grants them.
ALL_SCOPES: tuple[str, ...] = (SCOPE_JOB_VIEW, SCOPE_JOB_MANAGE, SCOPE_MEDIA_VIEW)

DEFAULT_SITES: tuple[str, ...] = ("main", "shop-de", "shop-at", "shop-fr")
DEFAULT_SEED = 20261204
DEFAULT_ORDERS_PER_SITE: tuple[int, int] = (5, 40)

# The emulator puts site codes into file names, order ids and EndToEndId (max 35 characters),
# so it accepts only short codes made of letters, digits, "-" and "_".
SITE_CODE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,24}")
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def generate_client_secret() -> str:
    """Generate a random client secret for one emulator instance."""
    return secrets.token_urlsafe(24)


@dataclass
class EmulatorConfig:
    """Settings of one emulator instance.

    Times are in seconds. ``clock`` returns wall-clock seconds since the epoch and drives
    token expiry, job completion and the ``createdAt``/``completedAt`` timestamps, so tests
    can replace it with a controllable clock.
    """

    tenant: str = "demo"
    client_id: str = "sepa-demo-client"
    client_secret: str = field(default_factory=generate_client_secret, repr=False)
    client_scopes: tuple[str, ...] = ALL_SCOPES
    token_lifetime_seconds: float = 14399
    job_duration_seconds: float = 2.0
    #: Jobs of one tenant that may run at the same time before creation gets 409. The API
    #: allows one. A higher value departs from the contract, so that benchmarks can poll
    #: many running jobs with one client.
    max_active_jobs_per_tenant: int = 1
    sites: tuple[str, ...] = DEFAULT_SITES
    seed: int = DEFAULT_SEED
    #: Number of orders per site: a fixed count, or an inclusive ``(min, max)`` range from
    #: which each site draws its count with the seeded generator.
    orders_per_site: int | tuple[int, int] = DEFAULT_ORDERS_PER_SITE
    #: Fixed order counts for single sites, for example ``{"big": 500000}`` for a large file.
    #: A site listed here is accepted even when it is missing from ``sites``.
    site_orders: Mapping[str, int] = field(default_factory=dict)
    #: Directory for generated files. ``None`` makes the state create a temporary directory
    #: and remove it on close. A given directory is created if missing and never emptied.
    data_dir: str | Path | None = None
    #: Maximum number of entries that the request log keeps; older entries are dropped.
    request_log_limit: int = 10000
    clock: Callable[[], float] = field(default=time.time, repr=False)
    #: Fault rules in place from the start, as Fault objects or strings such as
    #: ``"create:lose-reply"`` in the syntax of :func:`~airflow_provider_sepa.emulator.faults.parse_fault`.
    faults: Sequence[Fault | str] = ()

    def __post_init__(self) -> None:
        """Normalise the collection fields and raise ValueError on invalid settings."""
        self.client_scopes = tuple(self.client_scopes)
        self.sites = tuple(self.sites)
        self.site_orders = dict(self.site_orders)
        if isinstance(self.orders_per_site, list):
            self.orders_per_site = (self.orders_per_site[0], self.orders_per_site[1])
        if isinstance(self.faults, str | Fault):
            raise ValueError("Invalid faults: pass a list of faults, not a single one.")
        self.faults = tuple(parse_fault(item) if isinstance(item, str) else item for item in self.faults)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError when a setting is out of range, naming the setting."""
        if not TENANT_PATTERN.fullmatch(self.tenant):
            raise ValueError(f"Invalid tenant {self.tenant!r}: use lowercase letters, digits, '-' or '_'.")
        if not self.client_id:
            raise ValueError("Invalid client_id: it must not be empty.")
        if not self.client_secret:
            raise ValueError("Invalid client_secret: it must not be empty.")
        unknown_scopes = [scope for scope in self.client_scopes if scope not in ALL_SCOPES]
        if unknown_scopes:
            raise ValueError(f"Invalid client_scopes {unknown_scopes}: known scopes are {list(ALL_SCOPES)}.")
        if self.token_lifetime_seconds <= 0:
            raise ValueError(f"Invalid token_lifetime_seconds {self.token_lifetime_seconds}: it must be > 0.")
        if self.job_duration_seconds < 0:
            raise ValueError(f"Invalid job_duration_seconds {self.job_duration_seconds}: it must be >= 0.")
        if self.max_active_jobs_per_tenant < 1:
            raise ValueError(f"Invalid max_active_jobs_per_tenant {self.max_active_jobs_per_tenant}: it must be >= 1.")
        if not self.site_codes():
            raise ValueError("Invalid sites: configure at least one site code.")
        for site_code in self.site_codes():
            if not SITE_CODE_PATTERN.fullmatch(site_code):
                raise ValueError(f"Invalid site code {site_code!r}: use 1 to 24 letters, digits, '-' or '_'.")
        self._validate_order_counts()
        if self.request_log_limit < 1:
            raise ValueError(f"Invalid request_log_limit {self.request_log_limit}: it must be >= 1.")

    def _validate_order_counts(self) -> None:
        if isinstance(self.orders_per_site, int):
            if self.orders_per_site < 0:
                raise ValueError(f"Invalid orders_per_site {self.orders_per_site}: it must be >= 0.")
        else:
            low, high = self.orders_per_site
            if low < 0 or high < low:
                raise ValueError(f"Invalid orders_per_site range {self.orders_per_site}: expected 0 <= min <= max.")
        for site_code, count in self.site_orders.items():
            if count < 0:
                raise ValueError(f"Invalid site_orders[{site_code!r}] {count}: it must be >= 0.")

    def site_codes(self) -> tuple[str, ...]:
        """Return the accepted site codes: ``sites`` followed by extra ``site_orders`` keys."""
        extra = tuple(code for code in self.site_orders if code not in self.sites)
        return self.sites + extra
