"""Parallel sampling + majority vote, end to end on the tiny real model."""

from __future__ import annotations

from collabthink import solve
from collabthink.methods.parallel import ParallelConfig, run_parallel


def test_parallel_runs_branches_and_votes(engine):
    events = []
    result = run_parallel(engine, "What is 3 + 4?", ParallelConfig(branches=3, budget=32, seed=1),
                          reference="7", progress=events.append)
    t = result.trace
    assert len(result.branches) == 3 and [b.index for b in result.branches] == [0, 1, 2]
    assert len({b.seed for b in result.branches}) == 3  # each branch samples differently
    assert all(0 < b.n_tokens <= 32 and b.finish_reason in ("eos", "length", "stop") for b in result.branches)
    assert t.cost.generated_tokens == sum(b.n_tokens for b in result.branches)
    assert t.cost.initial_prompt_tokens == t.cost.prefill_computed + t.cost.prefill_reused
    assert t.cost.prefill_reused > 0  # the shared question prompt is prefilled once
    assert t.vote["total"] == 3 and result.correct in (True, False)
    assert events and events[-1]["tokens"] == [b.n_tokens for b in result.branches]
    assert not engine.slots  # branch caches are released after the run


def test_solve_is_reproducible_with_a_seed(engine):
    a = solve("Name a prime number.", engine=engine, branches=2, budget=16, seed=3)
    b = solve("Name a prime number.", engine=engine, branches=2, budget=16, seed=3)
    assert [x.text for x in a.branches] == [x.text for x in b.branches]


def test_unknown_options_are_named(engine):
    import pytest

    with pytest.raises(ValueError, match="unknown option.*brnches"):
        solve("x", engine=engine, brnches=2)
