"""Test configuration shared by ``tests/`` and ``proofs/``.

Hypothesis profiles
-------------------
``ci`` (default)
    Derandomised (the same examples on every run, so CI is reproducible) and
    small enough that the whole suite runs in a few minutes on 2 cores.
``thorough``
    Many more random examples; select it with
    ``REFERENCE_HYPOTHESIS_PROFILE=thorough python -m pytest``.

Slow tests
----------
Tests marked ``@pytest.mark.slow`` are skipped unless ``--runslow`` is given
or ``REFERENCE_SLOW=1`` is set.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("REFERENCE_HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow", action="store_true", default=False, help="also run tests marked slow"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow") or os.environ.get("REFERENCE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or REFERENCE_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
