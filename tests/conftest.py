"""Shared fixtures (``impl`` runs a behavioural test once per implementation) and the
Hypothesis profiles (dev, ci, nightly)."""

from __future__ import annotations

import os

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
