"""Parallel sampling with majority vote (self-consistency): the baseline every method must beat."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from ..engines.base import Engine, Request
from ..prompts import chat_ids, question_messages
from .base import Branch, MethodConfig, ProgressCallback, Result, Trace, config_dict, finish, model_info


@dataclass(frozen=True)
class ParallelConfig(MethodConfig):
    """Independent branches decoded together; nothing beyond the common settings."""


def run_parallel(
    engine: Engine,
    problem: str,
    config: ParallelConfig | None = None,
    reference: str | None = None,
    progress: ProgressCallback | None = None,
) -> Result:
    config = config or ParallelConfig()
    started = time.perf_counter()
    prompt = chat_ids(engine, question_messages(problem, config.system_prompt))
    trace = Trace("parallel", problem, config_dict(config), model_info(engine), reference=reference)
    run_id = uuid.uuid4().hex[:8]
    requests = [
        Request(prompt, config.sampling(i, config.budget), slot=f"{run_id}/b{i}") for i in range(config.branches)
    ]
    trace.branches = [Branch(i, r.params.seed) for i, r in enumerate(requests)]
    trace.cost.initial_prompt_tokens = len(prompt) * config.branches

    def on_tokens(counts):
        if progress:
            progress({"phase": "decode", "round": 0, "tokens": list(counts), "budget": config.budget})

    t0 = time.perf_counter()
    try:
        completions = engine.generate(requests, progress=on_tokens)
    finally:
        for r in requests:
            engine.release(r.slot)
    trace.cost.decode_s = time.perf_counter() - t0
    trace.cost.add_completions(completions)
    for b, c in zip(trace.branches, completions):
        b.token_ids, b.text, b.finish_reason = c.token_ids, c.text, c.finish_reason
    trace.rounds.append({
        "round": 0,
        "phase": "decode",
        "tokens": [c.n_tokens for c in completions],
        "prefill_computed": sum(c.prompt_computed for c in completions),
        "prefill_reused": sum(c.prompt_reused for c in completions),
        "decode_s": trace.cost.decode_s,
    })
    return finish(trace, started)
