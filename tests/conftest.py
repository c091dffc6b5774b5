"""Shared fixtures: ``impl`` runs a behavioural test once per implementation."""

from __future__ import annotations

import pytest

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
