"""Which build of the core the tests run (metering/native_core.py)."""

import pytest

import metering.core

patches_the_core = pytest.mark.skipif(
    metering.core.NATIVE,
    reason="patches a function of the core, which compiled calls bypass; make test runs the "
    "unit tests again on the pure core (METERING_PURE_CORE=1), where this one runs",
)
"""For a test that injects a fault by monkeypatching a module of the core."""
