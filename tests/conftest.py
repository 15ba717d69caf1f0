"""Fixtures shared by every test package: a clean token cache and quiet Airflow settings."""

from __future__ import annotations

import os
import tempfile

import pytest

# Keep Airflow from touching ~/airflow when a test imports it.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="sepa-tests-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")


@pytest.fixture(autouse=True)
def clear_token_cache():
    """Give every test a process-wide token cache with no tokens in it."""
    from airflow_provider_sepa.core.payloads import TOKEN_CACHE

    TOKEN_CACHE.clear()
    yield
    TOKEN_CACHE.clear()
