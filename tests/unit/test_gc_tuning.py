"""The services' garbage-collector tuning (metering/gc_tuning.py)."""

import gc

from prometheus_client import REGISTRY

from metering.gc_tuning import OLDER_THRESHOLDS, YOUNG_THRESHOLD, tune_for_long_lived_state


def test_what_exists_is_frozen_and_collections_are_rarer() -> None:
    before = gc.get_threshold()
    try:
        held = [[n] for n in range(1000)]  # long-lived state a service has loaded
        tune_for_long_lived_state()
        assert gc.get_freeze_count() >= len(held)
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
        tune_for_long_lived_state()  # again, after more was loaded: still the same thresholds
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _pauses(generation: str) -> float:
    count = REGISTRY.get_sample_value("metering_gc_pause_seconds_count", {"generation": generation})
    return count or 0.0


def test_every_collection_is_timed_once() -> None:
    before = gc.get_threshold()
    try:
        tune_for_long_lived_state()
        tune_for_long_lived_state()  # installs its timer once
        young, full = _pauses("0"), _pauses("2")
        gc.collect(0)
        gc.collect()
        assert (_pauses("0"), _pauses("2")) == (young + 1, full + 1)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
