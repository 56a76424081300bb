"""The default model end to end (minutes on 2 cores): run with `pytest -m slow`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collabthink import make_engine, solve
from collabthink.methods.cpt import CPTConfig

pytestmark = pytest.mark.slow

GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k.jsonl"


@pytest.fixture(scope="module")
def item():
    return json.loads(GSM8K.read_text().splitlines()[0])


@pytest.fixture(scope="module")
def default_engine():
    engine = make_engine(config=CPTConfig(branches=4, budget=512))
    yield engine
    engine.close()


def test_parallel_on_the_default_model_answers_a_gsm8k_item(default_engine, item):
    result = solve(item["problem"], engine=default_engine, reference=item["answer"], branches=4, budget=512)
    assert result.trace.vote["valid"] >= 3  # the default model boxes its answers
    assert result.correct  # the first GSM8K item is one the 1.5B model gets right


def test_cpt_tail_fork_keeps_the_cache(default_engine, item):
    result = solve(item["problem"], method="cpt", engine=default_engine, reference=item["answer"], branches=4,
                   budget=384, chunk_tokens=96, schedule=False, placement="tail", extraction="fork")
    c = result.trace.cost
    assert len(result.trace.extra["pool"]) > 0  # the real model writes parseable notes
    assert c.prefill_computed <= 1.15 * (c.initial_prompt_tokens + c.injected_tokens)
