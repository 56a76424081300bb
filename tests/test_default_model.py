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


def test_parallel_on_the_default_model_boxes_and_votes(default_engine, item):
    result = solve(item["problem"], engine=default_engine, reference=item["answer"], branches=4, budget=512)
    assert result.trace.vote["valid"] >= 3  # the default model boxes its answers
    assert result.answer is not None and result.correct in (True, False)


def test_the_default_model_solves_easy_arithmetic(default_engine):
    result = solve("A shop sells 15 apples in the morning and 27 in the afternoon. How many apples in all?",
                   engine=default_engine, reference="42", branches=2, budget=256, temperature=0)
    assert result.correct


def test_cpt_tail_fork_keeps_the_cache(default_engine, item):
    result = solve(item["problem"], method="cpt", engine=default_engine, reference=item["answer"], branches=4,
                   budget=384, chunk_tokens=96, schedule=False, placement="tail", extraction="fork")
    t, c = result.trace, result.trace.cost
    assert len(t.extra["pool"]) > 0  # the real model writes parseable notes
    assert c.generated_tokens == sum(b.n_tokens for b in result.branches)
    assert all(b.n_tokens <= 384 and b.finish_reason for b in result.branches)
    assert sum(r["prefill_computed"] for r in t.rounds) == c.prefill_computed
    assert c.prefill_computed <= 1.15 * (c.initial_prompt_tokens + c.injected_tokens)
