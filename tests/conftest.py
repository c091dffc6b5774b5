"""Shared fixtures (``impl`` runs a behavioural test once per implementation) and the
Hypothesis profiles (dev, ci, nightly)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings

from pudthp_ref.spec import Config, Impl

IMPLEMENTATIONS = ("ref", "fast")


def make_model(impl: str, cfg: Config) -> Impl:
    """A fresh model of implementation ``impl`` ("ref" or "fast")."""
    if impl == "ref":
        from pudthp_ref.model import RefModel

        return RefModel(cfg)
    from pudthp_fast.model import FastModel

    return FastModel(cfg)


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --------------------------------------------------------------------------------------
# Hypothesis profiles: HYPOTHESIS_PROFILE=dev|ci|nightly (or --hypothesis-profile NAME);
# default dev, or ci when the CI environment variable is set (CI=true).  None has the
# explain phase: it costs seconds per failure and the program JSON says more.  dev and ci
# shrink one failure (the smallest) rather than every distinct signature: one bug of the
# fast side shows under dozens of signatures, and shrinking each takes minutes.
# --------------------------------------------------------------------------------------

_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)

settings.register_profile(
    "dev",
    max_examples=25,
    stateful_step_count=40,
    deadline=None,
    phases=_PHASES,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=15,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,  # the same programs on every CI run
    database=None,
    print_blob=True,
    phases=_PHASES,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "nightly",
    max_examples=2000,
    stateful_step_count=200,
    deadline=None,
    phases=_PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def hypothesis_profile() -> str:
    chosen = os.environ.get("HYPOTHESIS_PROFILE")
    if chosen:
        return chosen
    return "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev"


settings.load_profile(hypothesis_profile())


# --------------------------------------------------------------------------------------
# The live kernel: a test that changes THP settings, adds a swap device or runs a
# reproducer as root carries the `live` marker (`pytest -m "not live"` leaves them out).
# Any other test that reaches the live kernel fails here, so the marker cannot fall
# behind: every live-kernel run takes the machine's conformance lock and changes settings
# (a /sys or /proc knob, a swap device) through ``harness.conform.live``; a test starts a
# reproducer binary only where ``PUDTHP_TEST_LIVE`` is set (``test_export_c.run_binary``).
# --------------------------------------------------------------------------------------

UNMARKED = "uses the live kernel without the `live` marker (pytest.mark.live)"


@pytest.fixture(autouse=True)
def _live_kernel_guard(request: pytest.FixtureRequest,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("live") is not None:
        monkeypatch.setenv("PUDTHP_TEST_LIVE", "1")
        return
    monkeypatch.delenv("PUDTHP_TEST_LIVE", raising=False)
    from harness.conform import live

    machine_lock, run_lock, settings_set = live.LOCK_PATH, live.run_lock, live.Settings.set

    def guarded_lock(*args: Any, **kwargs: Any) -> Any:
        # a test's private lock file (monkeypatched LOCK_PATH) is not the machine's
        if machine_lock == live.LOCK_PATH:
            raise AssertionError(f"run_lock(): this test {UNMARKED}")
        return run_lock(*args, **kwargs)

    def guarded_set(self: Any, path: str, value: str) -> None:
        # a test's own files stand in for knobs; /sys and /proc are the kernel's
        if path.startswith(("/sys/", "/proc/")):
            raise AssertionError(f"Settings.set({path}): this test {UNMARKED}")
        settings_set(self, path, value)

    def refuse_swap(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"setup_swap(): this test {UNMARKED}")

    monkeypatch.setattr(live, "run_lock", guarded_lock)
    monkeypatch.setattr(live.Settings, "set", guarded_set)
    monkeypatch.setattr(live, "setup_swap", refuse_swap)
