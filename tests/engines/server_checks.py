"""The check both server-engine tests make against a reference engine on the same model (the embedded
engine for llama-server, vLLM in-process for vLLM's server)."""

from __future__ import annotations

from collabthink.engines.base import Request, SamplingParams


def generate_like_reference(engine, reference, ids: list[int]):
    """Greedy completions of `ids` through `engine` match `reference` (ids, text, finish reason); a stop
    string ends with "stop" and the text before it; logprobs come per token. Returns the logprob
    completion and a resume of the greedy one, for the caller's engine-specific checks."""
    greedy = SamplingParams(max_tokens=40, temperature=0)
    eos, stop, logp = engine.generate([Request(ids, greedy), Request(ids, greedy.but(stop=(" is",))),
                                       Request(ids, greedy.but(max_tokens=4, logprobs=3))])
    ref = reference.generate([Request(ids, greedy)])[0]
    assert (eos.finish_reason, eos.text, eos.token_ids) == (ref.finish_reason, ref.text, ref.token_ids)
    if " is" in ref.text:
        assert (stop.finish_reason, stop.stop_string) == ("stop", " is")
        assert stop.text == ref.text[: ref.text.index(" is")]
    assert logp.finish_reason == "length" and len(logp.logprobs) == 4
    again = engine.generate([Request(ids + eos.token_ids, greedy.but(max_tokens=4))])[0]
    return logp, again
