"""The OpenAI-compatible server engine against the stub server (fast; no model, no real server)."""

from __future__ import annotations

import threading
import time

import pytest

from collabthink.engines.base import EngineError, Request, SamplingParams
from collabthink.engines.openai import OpenAIConfig, OpenAIEngine

from openai_stub import EOS, StubServer, detokenize, render_chat, tokenize

FAST = dict(backoff_s=0.01, backoff_max_s=0.05)


@pytest.fixture
def stub():
    with StubServer() as s:
        yield s


def make(*urls, **options) -> OpenAIEngine:
    return OpenAIEngine(base_urls=tuple(u.url if isinstance(u, StubServer) else u for u in urls), **{**FAST, **options})


def prompt(text="What is 2 + 2?") -> list[int]:
    return tokenize(render_chat([{"role": "user", "content": text}]))


# ----------------------------------------------------------------------------- config
def test_config_normalises_urls_and_names_bad_fields():
    cfg = OpenAIConfig(base_urls=("http://h:1/v1/", "http://h:2"))
    assert cfg.base_urls == ("http://h:1", "http://h:2")
    assert OpenAIConfig(base_urls="http://h:1/v1").base_urls == ("http://h:1",)
    with pytest.raises(ValueError, match="base_urls is empty"):
        OpenAIConfig()
    with pytest.raises(ValueError, match="not an http"):
        OpenAIConfig(base_urls=("h:1",))
    with pytest.raises(ValueError, match="max_in_flight"):
        OpenAIConfig(base_urls=("http://h:1",), max_in_flight=0)
    with pytest.raises(ValueError, match="prompt_format"):
        OpenAIConfig(base_urls=("http://h:1",), prompt_format="bytes")


def test_unknown_option_is_named(stub):
    with pytest.raises(ValueError, match="n_threads"):
        make(stub, n_threads=2)


def test_model_discovery_and_info(stub):
    engine = make(stub)
    info = engine.model_info
    assert info["name"] == "stub-model" and info["server"] == "vllm" and info["urls"] == [stub.root]
    assert info["tokenizer"].startswith("server:") and engine.n_ctx == 2048 and info["n_ctx_source"] == "server"
    assert info["reports_cached"] is None  # nothing answered yet
    assert make(stub, n_ctx=512).n_ctx == 512
    with pytest.raises(EngineError, match="it serves: stub-model"):
        make(stub, model="other")


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(EngineError, match="no server answered at http://127.0.0.1:9"):
        make("http://127.0.0.1:9/v1", retries=0, connect_timeout_s=0.5)


def test_generic_server_without_tokenizer_asks_for_one():
    with StubServer(owned_by="someone") as s:
        with pytest.raises(EngineError, match="--tokenizer"):
            make(s)


def test_a_local_gguf_tokenizer_replaces_the_servers(stub):
    from collabthink.engines.tokenizers import load_tokenizer

    engine = make(stub, tokenizer="smollm2-135m")
    local = load_tokenizer("smollm2-135m")
    assert engine.model_info["tokenizer"] == local.source and local.source.startswith("gguf:")
    messages = [{"role": "user", "content": "hi"}]
    assert engine.render_chat(messages) == local.render_chat(messages)
    assert engine.tokenize("Hello <|im_end|>") == local.tokenize("Hello <|im_end|>") != tokenize("Hello <|im_end|>")
    with pytest.raises(EngineError, match="--tokenizer 'no-such-model'"):
        make(stub, tokenizer="no-such-model")


# ----------------------------------------------------------------------------- protocol semantics
def test_text_tokens_and_chat_go_through_the_server(stub):
    engine = make(stub)
    assert engine.tokenize("a<|im_end|>") == [ord("a") + 16, 2]
    assert engine.detokenize([ord("h") + 16, 2]) == "h<|im_end|>"
    messages = [{"role": "user", "content": "hi"}]
    assert engine.render_chat(messages) == render_chat(messages)


def test_finish_reasons_text_and_ids_match_the_embedded_semantics(stub):
    engine = make(stub)
    p = prompt()
    eos, length, stop = engine.generate([
        Request(p, SamplingParams(max_tokens=200)),
        Request(p, SamplingParams(max_tokens=5)),
        Request(p, SamplingParams(max_tokens=200, stop=("= 4", "never"))),
    ])
    assert eos.finish_reason == "eos" and eos.text == stub.reply and eos.stop_string is None
    assert EOS not in eos.token_ids and detokenize(eos.token_ids) == stub.reply  # end token not returned
    assert length.finish_reason == "length" and length.n_tokens == 5 and length.text == stub.reply[:5]
    assert stop.finish_reason == "stop" and stop.stop_string == "= 4"
    assert stop.text == stub.reply[: stub.reply.index("= 4")]  # text stops before the stop string...
    assert detokenize(stop.token_ids).endswith("= 4")  # ...the ids run up to the token that completed it
    assert all(c.prompt_tokens == len(p) for c in (eos, length, stop))


def test_ids_fall_back_to_tokenizing_the_text_when_the_server_sends_none():
    with StubServer(return_ids=False) as s:
        c = make(s).generate([Request(prompt(), SamplingParams(max_tokens=200))])[0]
        assert c.finish_reason == "eos" and c.token_ids == tokenize(s.reply, special=False)


def test_logprobs_are_top_k_with_ids(stub):
    c = make(stub).generate([Request(prompt(), SamplingParams(max_tokens=6, logprobs=3))])[0]
    assert len(c.logprobs) == c.n_tokens == 6
    for tok, top in zip(c.token_ids, c.logprobs):
        assert top == [(tok, -0.25), (tok + 1, -1.5), (tok + 2, -2.5)]
    eos = make(stub).generate([Request(prompt(), SamplingParams(max_tokens=200, logprobs=2))])[0]
    assert eos.finish_reason == "eos" and len(eos.logprobs) == eos.n_tokens  # none for the end token


def test_cached_prompt_tokens_are_reported(stub):
    engine = make(stub)
    p = prompt()
    first = engine.generate([Request(p, SamplingParams(max_tokens=4))])[0]
    second = engine.generate([Request(p + first.token_ids, SamplingParams(max_tokens=4))])[0]
    assert first.prompt_reused == 0 and first.prompt_computed == len(p)
    assert second.prompt_reused == len(p) and second.prompt_computed == second.prompt_tokens - len(p)
    assert engine.model_info["reports_cached"] is True
    assert engine.endpoints[0]["cached_tokens"] == len(p)


def test_servers_that_do_not_report_cached_tokens():
    with StubServer(report_cached=False) as s:
        engine = make(s)
        c = engine.generate([Request(prompt(), SamplingParams(max_tokens=4))] * 1)[0]
        assert c.prompt_reused == 0 and engine.model_info["reports_cached"] is False


def test_request_body_carries_ids_and_sampling(stub):
    params = SamplingParams(max_tokens=7, temperature=0.3, top_p=0.9, top_k=0, seed=11, stop=("x",), ignore_eos=True)
    make(stub).generate([Request(prompt(), params)])
    body = stub.completions[-1]
    assert body["prompt"] == prompt() and body["model"] == "stub-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"], body["seed"]) == (7, 0.3, 0.9, -1, 11)
    assert body["stop"] == ["x"] and body["ignore_eos"] is True and body["return_token_ids"] is True


def test_non_streaming_mode(stub):
    seen = []
    c = make(stub, stream=False).generate([Request(prompt(), SamplingParams(max_tokens=200, logprobs=1))],
                                          progress=seen.append)
    assert c[0].finish_reason == "eos" and c[0].text == stub.reply and len(c[0].logprobs) == c[0].n_tokens
    assert seen[-1] == [c[0].n_tokens]


def test_progress_reports_tokens_per_request(stub):
    seen = []
    out = make(stub).generate([Request(prompt(), SamplingParams(max_tokens=n)) for n in (3, 9)], progress=seen.append)
    assert seen[-1] == [3, 9] and [c.n_tokens for c in out] == [3, 9]
    assert all(a <= b for x, y in zip(seen, seen[1:]) for a, b in zip(x, y))


def test_invalid_requests_fail_before_any_call(stub):
    engine = make(stub)
    with pytest.raises(EngineError, match="empty prompt"):
        engine.generate([Request([], SamplingParams())])
    with pytest.raises(EngineError, match="context window of 2048"):
        engine.generate([Request([20] * 2048, SamplingParams())])
    with pytest.raises(EngineError, match="same slot"):
        engine.generate([Request([20], slot="a"), Request([21], slot="a")])
    assert stub.calls == 0


# ----------------------------------------------------------------------------- failures
@pytest.mark.parametrize("mode", ["500", "429", "drop"])
def test_transient_failures_are_retried(mode):
    with StubServer(fail_first=2, fail_mode=mode) as s:
        engine = make(s, retries=3)
        c = engine.generate([Request(prompt(), SamplingParams(max_tokens=200))])[0]
        assert c.finish_reason == "eos" and c.text == s.reply  # restarted from scratch: nothing doubled
        assert s.calls == 3 and engine.endpoints[0]["failures"] == 2 and engine.endpoints[0]["healthy"]


def test_retries_back_off_exponentially():
    with StubServer(fail_first=3, fail_mode="500") as s:
        engine = make(s, retries=3, backoff_s=0.1, backoff_max_s=1.0)
        t0 = time.monotonic()
        engine.generate([Request(prompt(), SamplingParams(max_tokens=3))])
        # jittered delays of 0.1, 0.2, 0.4 s, each at least half its nominal value
        assert 0.35 <= time.monotonic() - t0 < 2.0


def test_a_rejected_request_fails_at_once_with_the_servers_message():
    with StubServer(fail_first=5, fail_mode="400") as s:
        engine = make(s, retries=3)
        with pytest.raises(EngineError) as e:
            engine.generate([Request(prompt(), SamplingParams(max_tokens=3))])
        assert f"server {s.root}/v1/completions rejected the request (400): max_tokens is too large" in str(e.value)
        assert s.calls == 1 and engine.endpoints[0]["healthy"]


def test_exhausted_retries_name_the_servers_and_the_last_error():
    with StubServer(fail_first=99, fail_mode="500") as s:
        engine = make(s, retries=1)
        with pytest.raises(EngineError, match=rf"every server failed \({s.root}\).*500.*injected"):
            engine.generate([Request(prompt(), SamplingParams(max_tokens=3))])
        assert s.calls == 2 and not engine.endpoints[0]["healthy"]


def test_a_request_past_its_timeout_is_retried_then_fails():
    with StubServer(fail_first=9, fail_mode="sleep", sleep_s=2.0) as s:
        engine = make(s, retries=1, timeout_s=0.3)
        t0 = time.monotonic()
        with pytest.raises(EngineError, match="timed out"):
            engine.generate([Request(prompt(), SamplingParams(max_tokens=3))])
        assert time.monotonic() - t0 < 1.8 and s.calls == 2


def test_cancellation_closes_every_stream():
    with StubServer(reply="x" * 400, token_delay_s=0.01) as s:
        engine = make(s)

        def progress(counts):
            if max(counts) >= 5:
                raise KeyboardInterrupt("stop")

        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            engine.generate([Request(prompt(), SamplingParams(max_tokens=400)) for _ in range(3)], progress=progress)
        assert time.monotonic() - t0 < 2.0  # 400 tokens would take 4 s
        deadline = time.monotonic() + 3
        while s.aborted < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.aborted == 3  # the server saw every client go away
        assert engine.endpoints[0]["in_flight"] == 0
        # the engine is still usable afterwards
        assert engine.generate([Request(prompt(), SamplingParams(max_tokens=2))])[0].n_tokens == 2


def test_in_flight_requests_per_server_are_bounded():
    with StubServer(token_delay_s=0.01) as s:
        engine = make(s, max_in_flight=2)
        peak = []

        def progress(counts):
            peak.append(engine.endpoints[0]["in_flight"])

        out = engine.generate([Request(prompt(), SamplingParams(max_tokens=10)) for _ in range(6)], progress=progress)
        assert [c.n_tokens for c in out] == [10] * 6 and max(peak) <= 2


# ----------------------------------------------------------------------------- several servers
def test_sessions_stick_to_one_server_and_spread_by_load():
    with StubServer() as a, StubServer() as b:
        engine = make(a, b)
        s1, s2 = engine.session(), engine.session()
        assert {s1.url, s2.url} == {a.root, b.root}
        for _ in range(3):
            s1.generate([Request(prompt(), SamplingParams(max_tokens=3)) for _ in range(4)])
        stub1 = a if s1.url == a.root else b
        other = b if stub1 is a else a
        assert len(stub1.completions) == 12 and len(other.completions) == 0
        assert sorted(e["sessions"] for e in engine.endpoints) == [1, 1]
        s2.close()
        s3 = engine.session()  # the least loaded server is the one s2 left
        assert s3.url == other.root
        assert s3.model_info == engine.model_info and s3.n_ctx == engine.n_ctx


def test_concurrent_questions_on_one_engine():
    with StubServer(token_delay_s=0.001) as a, StubServer(token_delay_s=0.001) as b:
        engine = make(a, b)
        results, errors = {}, []

        def question(q):
            try:
                with engine.session() as s:
                    out = s.generate([Request(prompt(f"q{q}"), SamplingParams(max_tokens=20)) for _ in range(3)])
                    results[q] = (s.url, [c.n_tokens for c in out])
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=question, args=(q,)) for q in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and all(n == [20, 20, 20] for _, n in results.values())
        assert len(a.completions) + len(b.completions) == 18 and a.completions and b.completions
        assert all(e["sessions"] == 0 and e["in_flight"] == 0 for e in engine.endpoints)


def test_failover_when_a_server_dies_mid_run():
    with StubServer(token_delay_s=0.01) as a, StubServer(token_delay_s=0.01) as b:
        engine = make(a, b, retries=1, down_s=30)
        session = engine.session()
        first = a if session.url == a.root else b
        second = b if first is a else a
        seen = []

        def progress(counts):
            seen.append(list(counts))
            if max(counts) >= 10 and not first.killed.is_set():
                first.kill()

        out = session.generate([Request(prompt(), SamplingParams(max_tokens=40)) for _ in range(4)], progress=progress)
        assert [c.n_tokens for c in out] == [40] * 4 and all(c.text == second.reply[:40] for c in out)
        assert len(second.completions) == 4  # every request restarted there from scratch
        assert session.url == second.root
        info = {e["url"]: e for e in engine.endpoints}
        assert not info[first.root]["healthy"] and info[second.root]["healthy"]
        assert info[first.root]["sessions"] == 0 and info[second.root]["sessions"] == 1
        # new sessions avoid the dead server while it is marked down
        assert engine.session().url == second.root


def test_all_servers_down_is_one_clear_error():
    with StubServer() as a, StubServer() as b:
        engine = make(a, b, retries=0)
        a.kill()
        b.kill()
        with pytest.raises(EngineError, match="every server failed") as e:
            engine.generate([Request(prompt(), SamplingParams(max_tokens=3))])
        assert a.root in str(e.value) and b.root in str(e.value)


# ----------------------------------------------------------------------------- a method end to end
def test_cpt_runs_end_to_end_on_the_stub():
    from collabthink.api import solve

    with StubServer(reply="So \\boxed{4}") as stub:
        engine = make(stub)
        result = solve("What is 2 + 2?", method="cpt", engine=engine, branches=2, budget=60, chunk_tokens=16,
                       embeddings=False)
        assert result.answer == "4" and all(b.finish_reason == "eos" for b in result.branches)
        assert result.trace.model["server"] == "vllm"
        assert stub.completions and all(isinstance(b["prompt"], list) for b in stub.completions)
