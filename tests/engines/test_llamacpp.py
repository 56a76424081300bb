"""The embedded llama.cpp engine on a real (tiny) model."""

from __future__ import annotations

import pytest

from collabthink.engines.base import EngineError, Request, SamplingParams

GREEDY = SamplingParams(max_tokens=24, temperature=0)
QUESTIONS = ["What is 2 + 3?", "Name a colour of the sky.", "Count from one to five.", "What is the capital of France?"]


def prompt(engine, text):
    return engine.tokenize(engine.render_chat([{"role": "user", "content": text}]))


def test_system_info_shows_the_cpu_features_in_use(engine):
    # A build without AVX2/FMA is several times slower; a source build must pick them up.
    assert "AVX2 = 1" in engine.system_info and "FMA = 1" in engine.system_info


@pytest.fixture(scope="module")
def exact_engine():
    """One KV stream per sequence and no flash attention: batching and caching change no arithmetic,
    so greedy tokens must be identical. (The defaults — a unified KV buffer and flash attention, chosen
    for speed — sum attention in another order, so a near-tie can flip after some tokens: a numerical,
    not a logical, difference.)"""
    from collabthink.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine("smollm2-135m", n_ctx=512, n_seq_max=4, kv_unified=False, flash_attn=False)
    yield engine
    engine.close()


def test_batched_decode_matches_each_sequence_alone(exact_engine):
    engine = exact_engine
    engine.reset()
    prompts = [prompt(engine, q) for q in QUESTIONS]
    batched = engine.generate([Request(p, GREEDY) for p in prompts])
    alone = [engine.generate([Request(p, GREEDY)])[0] for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    assert all(c.n_tokens > 0 for c in batched)
    assert sum(c.prompt_reused for c in batched) > 0  # the shared system prompt was copied, not recomputed


def test_prefix_reuse_continues_like_a_cold_prefill(exact_engine):
    engine = exact_engine
    engine.reset()
    first = prompt(engine, "Tell me a short fact about the moon.")
    part = engine.generate([Request(first, GREEDY, slot="branch")])[0]
    assert part.prompt_reused == 0 and part.prompt_computed == len(first)
    appended = engine.tokenize(" Also, in one sentence:")
    resumed_prompt = first + part.token_ids + appended
    warm = engine.generate([Request(resumed_prompt, GREEDY, slot="branch")])[0]
    # Everything but the last sampled token (never fed to the model) was served from the cache.
    assert warm.prompt_reused == len(first) + part.n_tokens - 1
    assert warm.prompt_computed == len(appended) + 1
    engine.reset()
    cold = engine.generate([Request(resumed_prompt, GREEDY, slot="other")])[0]
    assert cold.prompt_reused == 0
    assert warm.token_ids == cold.token_ids


def test_branches_of_one_question_prefill_the_shared_prompt_once(engine):
    p = prompt(engine, "Explain why the sum of two even numbers is even.")
    out = engine.generate([Request(p, GREEDY.but(max_tokens=4), slot=f"b{i}") for i in range(4)])
    assert out[0].prompt_computed == len(p)
    for c in out[1:]:
        assert c.prompt_reused == len(p) - 1 and c.prompt_computed == 1
    assert len({tuple(c.token_ids) for c in out}) == 1  # greedy: the copies continue identically


def test_a_shorter_prompt_on_a_slot_drops_the_cached_tail(engine):
    p = prompt(engine, "Write two words.")
    long = engine.generate([Request(p, GREEDY, slot="s")])[0]
    again = engine.generate([Request(p, GREEDY, slot="s")])[0]
    assert again.prompt_reused == len(p) - 1
    assert again.token_ids == long.token_ids
    assert engine.slots["s"] == len(p) + again.n_tokens - 1


def test_stop_strings_end_the_text_before_the_stop(engine):
    p = prompt(engine, "Count from one to ten, separated by commas.")
    free = engine.generate([Request(p, SamplingParams(max_tokens=40, temperature=0))])[0]
    assert "," in free.text
    stop = free.text[free.text.index(",") :][:1]
    out = engine.generate([Request(p, SamplingParams(max_tokens=40, temperature=0, stop=(stop,)))])[0]
    assert out.finish_reason == "stop" and out.stop_string == stop
    assert out.text == free.text[: free.text.index(stop)]


def test_logprobs_have_one_top_k_list_per_token(engine):
    p = prompt(engine, "Say hello.")
    out = engine.generate([Request(p, SamplingParams(max_tokens=8, temperature=0, logprobs=5))])[0]
    assert out.logprobs is not None and len(out.logprobs) == out.n_tokens
    for step, token in zip(out.logprobs, out.token_ids):
        assert len(step) == 5
        values = [lp for _, lp in step]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert step[0][0] == token  # greedy picks the most likely token
    plain = engine.generate([Request(p, SamplingParams(max_tokens=8, temperature=0))])[0]
    assert plain.logprobs is None


def test_same_seed_same_sample_different_seed_differs(engine):
    p = prompt(engine, "Write a random list of animals.")
    params = SamplingParams(max_tokens=32, temperature=1.0, top_k=0, top_p=1.0, seed=7)
    a = engine.generate([Request(p, params)])[0]
    b = engine.generate([Request(p, params)])[0]
    c = engine.generate([Request(p, params.but(seed=8))])[0]
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_max_tokens_ends_with_length(engine):
    out = engine.generate([Request(prompt(engine, "Write a long essay about rivers."), GREEDY.but(max_tokens=5))])[0]
    assert out.finish_reason == "length" and out.n_tokens == 5


def test_running_past_the_context_window_ends_with_length_not_a_crash(engine):
    p = prompt(engine, "Write a very long essay about the history of mathematics.")
    room = engine.n_ctx - len(p)
    out = engine.generate([Request(p, SamplingParams(max_tokens=5000, temperature=0.8, seed=1), slot="long")])[0]
    assert out.finish_reason in ("length", "eos")
    assert out.n_tokens <= room
    if out.finish_reason == "length":
        assert len(p) + out.n_tokens == engine.n_ctx


def test_prompt_longer_than_the_context_is_a_clear_error(engine):
    with pytest.raises(EngineError, match="does not fit the context window"):
        engine.generate([Request([1] * engine.n_ctx, GREEDY)])


def test_two_requests_cannot_share_a_slot(engine):
    p = prompt(engine, "Hi")
    with pytest.raises(EngineError, match="same slot"):
        engine.generate([Request(p, GREEDY, slot="x"), Request(p, GREEDY, slot="x")])


def test_release_frees_the_slot(engine):
    engine.generate([Request(prompt(engine, "Hi"), GREEDY.but(max_tokens=2), slot="gone")])
    assert "gone" in engine.slots
    engine.release("gone")
    assert "gone" not in engine.slots


def test_slots_beyond_the_sequence_limit_evict_the_least_recently_used(engine):
    p = prompt(engine, "Hi")
    for i in range(engine.config.n_seq_max + 2):
        engine.generate([Request(p, GREEDY.but(max_tokens=1), slot=f"s{i}")])
    assert len(engine.slots) == engine.config.n_seq_max
    assert "s0" not in engine.slots and f"s{engine.config.n_seq_max + 1}" in engine.slots


def test_tokenize_detokenize_round_trip(engine):
    text = "Hello, world! 2 + 2 = 4. Ünïcödé ✓"
    assert engine.detokenize(engine.tokenize(text, special=False)) == text


def test_progress_reports_tokens_per_request(engine):
    seen = []
    p = prompt(engine, "Write a sentence.")
    engine.generate([Request(p, GREEDY.but(max_tokens=6)), Request(p, GREEDY.but(max_tokens=3))], progress=seen.append)
    assert seen[-1] == [6, 3] or seen[-1][1] <= 3
    assert all(len(s) == 2 for s in seen)
