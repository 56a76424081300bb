"""`collabthink serve`: real servers on 127.0.0.1 (uvicorn in a thread), the real `openai` client on the
default model, and every 4xx / 429 / 504 / disconnect path on the tiny model.

The engines use one thread: on a shared 2-core machine two llama.cpp threads spin against other
processes and run 10-20x slower.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from collabthink.engines.llamacpp import LlamaCppEngine
from collabthink.server import ServerConfig, create_app

KEY = "test-key"
BRIEF = "Be extremely brief: one short sentence, then the answer in \\boxed{}."


class Endless:
    """The real tiny model, made to run to its budget (no end of sequence) and paced per step, so a run
    lasts long enough to be queued behind, timed out or abandoned."""

    def __init__(self, engine: LlamaCppEngine, step_s: float = 0.01):
        self._engine, self._step_s = engine, step_s

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, requests, progress=None):
        for r in requests:
            r.params = r.params.but(ignore_eos=True)

        def paced(counts):
            time.sleep(self._step_s)
            if progress is not None:
                progress(counts)

        return self._engine.generate(requests, progress=paced)


@pytest.fixture(scope="module")
def tiny():
    engine = LlamaCppEngine("smollm2-135m", n_ctx=1024, n_seq_max=8, n_threads=1)
    yield engine
    engine.close()


def chat(model="parallel-2", content="What is 2+3?", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def wait_idle(base: str, engine, timeout: float = 10.0) -> float:
    """Seconds until no run is active and the engine holds no slot; fails if that takes over `timeout`."""
    t0 = time.monotonic()
    while True:
        h = httpx.get(base + "/health").json()
        if h["running"] == 0 and h["queued"] == 0 and not engine.slots:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"still busy: {h}, slots {engine.slots}"
        time.sleep(0.02)


# ------------------------------------------------------------------------------ the default model, openai client
@pytest.fixture(scope="module")
def default_server(serve_on_loopback):
    engine = LlamaCppEngine("qwen2.5-1.5b", n_ctx=1024, n_seq_max=4, n_threads=1)
    with serve_on_loopback(engine, api_key=KEY, max_branches=2, max_budget=128) as base:
        yield base, engine
    engine.close()


def test_openai_client_non_streaming(default_server):
    import openai

    base, engine = default_server
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)
    resp = client.chat.completions.create(
        model="parallel-2", max_tokens=96,
        messages=[{"role": "system", "content": BRIEF}, {"role": "user", "content": "What is 2 + 3?"}])
    ext = resp.model_extra["collabthink"]
    assert ext["answer"] == "5" and ext["votes"].get("5", 0) >= 1
    assert "\\boxed{5}" in resp.choices[0].message.content and resp.choices[0].finish_reason == "stop"
    assert [b["index"] for b in ext["branches"]] == [0, 1] and ext["config"]["system_prompt"] == BRIEF
    u = resp.usage
    assert u.completion_tokens == sum(b["tokens"] for b in ext["branches"]) == ext["cost"]["generated_tokens"]
    assert u.prompt_tokens == ext["cost"]["prefill_computed"] + ext["cost"]["prefill_reused"] > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens == ext["cost"]["prefill_reused"]
    assert resp.model == "parallel-2" and resp.id.startswith("chatcmpl-")
    assert not engine.slots  # nothing of this request stays in the engine


def test_openai_client_streaming_cpt(default_server):
    import openai

    base, engine = default_server
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model="cpt-2", max_tokens=96, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": BRIEF}, {"role": "user", "content": "What is 2 + 3?"}],
        extra_body={"collabthink": {"chunk_tokens": 48, "extract_max_tokens": 24, "embeddings": False}})
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    ext = next(c.model_extra["collabthink"] for c in chunks if (c.model_extra or {}).get("collabthink"))
    usage = chunks[-1].usage
    assert ext["method"] == "cpt" and ext["rounds"] >= 1 and ext["pool_size"] is not None
    assert ext["answer"] == "5" and "\\boxed{5}" in content and finish == ["stop"]
    extraction = ext["cost"]["generated_tokens"] < usage.completion_tokens  # notes are counted too
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens and extraction
    assert not chunks[-1].choices and not engine.slots


def test_streaming_sends_progress_comments_and_done(default_server):
    base, _ = default_server
    lines = []
    with httpx.stream("POST", base + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json=chat(max_tokens=16, stream=True), timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    progress = [json.loads(line.removeprefix(": collabthink ")) for line in lines if line.startswith(": collabthink")]
    assert any(p.get("event") == "progress" and len(p["tokens"]) == 2 for p in progress)
    assert lines[-1] == "data: [DONE]" and r.headers["x-request-id"].startswith("req-")


# ------------------------------------------------------------------------------ bad requests on the tiny model
@pytest.fixture(scope="module")
def tiny_server(serve_on_loopback, tiny):
    with serve_on_loopback(tiny, api_key=KEY, max_branches=4, max_budget=64, max_body_bytes=4096) as base:
        yield base


@pytest.mark.parametrize("body, status, code, words", [
    (b"{not json", 400, "invalid_json", "not valid JSON"),
    (json.dumps(chat("magic-2")), 404, "model_not_found", "unknown model 'magic-2'"),
    (json.dumps(chat("cpt", collabthink={"method": "magic"})), 400, "invalid_value", "unknown method 'magic'"),
    (json.dumps(chat("cpt-0")), 400, "invalid_value", "branches must be >= 1, got 0"),
    (json.dumps(chat("cpt", collabthink={"branches": 0})), 400, "invalid_value", "branches must be >= 1, got 0"),
    (json.dumps(chat("cpt-8")), 400, "invalid_value", "branches must be <= 4 on this server"),
    (json.dumps(chat(max_tokens=1000)), 400, "invalid_value", "must be <= 64 on this server"),
    (json.dumps(chat(colour="red")), 400, "unknown_field", "unknown field 'colour'"),
    (json.dumps(chat(collabthink={"bogus": 1})), 400, "unknown_field", "unknown field 'collabthink.bogus'"),
    (json.dumps(chat(collabthink={"placement": "head"})), 400, "unknown_field",
     "collabthink.placement does not apply to method parallel"),
    (json.dumps(chat("cpt", collabthink={"placement": "middle"})), 400, "invalid_value", "placement must be one of"),
    (json.dumps(chat(n=2)), 400, "unsupported_parameter", "n must be 1"),
    (json.dumps({"model": "cpt", "messages": []}), 400, "invalid_value", "messages"),
    (json.dumps({"model": "cpt", "messages": [{"role": "assistant", "content": "hi"}]}), 400, "invalid_value",
     "the last message must be a non-empty user message"),
    (json.dumps(chat(content="x" * 5000)), 413, "request_too_large", "larger than 4096 bytes"),
    (json.dumps({"model": "cpt", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
     400, "unsupported_parameter", "only text parts are supported"),
])
def test_bad_requests_get_a_clear_4xx(tiny_server, body, status, code, words):
    r = httpx.post(tiny_server + "/v1/chat/completions", content=body,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    err = r.json()["error"]
    assert r.status_code == status and err["code"] == code and words in err["message"], err
    assert set(err) == {"message", "type", "param", "code"} and r.headers["x-request-id"]


def test_api_key_is_required(tiny_server):
    r = httpx.post(tiny_server + "/v1/chat/completions", json=chat())
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    r = httpx.get(tiny_server + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "invalid API key" in r.json()["error"]["message"]
    assert httpx.get(tiny_server + "/health").status_code == 200  # liveness needs no key


def test_models_unknown_route_and_request_id(tiny_server):
    r = httpx.get(tiny_server + "/v1/models", headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": "abc-1"})
    ids = [m["id"] for m in r.json()["data"]]
    assert {"cpt", "cpt-4", "parallel-2", "deepconf", "leap"} <= set(ids) and "cpt-8" not in ids
    assert r.headers["x-request-id"] == "abc-1"
    r = httpx.get(tiny_server + "/v1/nothing")
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]


def test_conversation_and_sampling_fields_reach_the_method(tiny_server):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Let x = 4."},
                {"role": "assistant", "content": "Noted."}, {"role": "user", "content": [{"type": "text", "text": "What is x+1?"}]}]
    r = httpx.post(tiny_server + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                   json={"model": "parallel-2", "messages": messages, "max_tokens": 8, "temperature": 0.0, "seed": 3,
                         "collabthink": {"branches": 1}})
    cfg = r.json()["collabthink"]["config"]
    assert r.status_code == 200 and cfg["branches"] == 1 and cfg["budget"] == 8 and cfg["seed"] == 3
    assert cfg["temperature"] == 0.0 and cfg["system_prompt"] == "You are terse."


# ------------------------------------------------------------------------------ queue, timeout, disconnect
def test_full_queue_gets_429_and_a_slow_run_504_then_the_engine_is_free(serve_on_loopback, tiny):
    with serve_on_loopback(Endless(tiny), max_queue=0, request_timeout_s=1.5) as base:
        first = {}
        t = threading.Thread(target=lambda: first.update(r=httpx.post(base + "/v1/chat/completions", timeout=30,
                                                                      json=chat(max_tokens=400))))
        t.start()
        deadline = time.monotonic() + 10
        while httpx.get(base + "/health").json()["running"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        busy = httpx.post(base + "/v1/chat/completions", json=chat(max_tokens=8))
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "queue_full"
        assert int(busy.headers["retry-after"]) >= 1
        t.join(timeout=20)
        slow = first["r"]
        assert slow.status_code == 504 and "timeout" in slow.json()["error"]["message"]
        wait_idle(base, tiny, timeout=5)
        ok = httpx.post(base + "/v1/chat/completions", json=chat(max_tokens=4), timeout=30)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 8


def run_ends(caplog) -> list[dict]:
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "collabthink.server"]
    return [r for r in records if r["event"] == "run_end"]


def test_client_disconnect_cancels_the_run(serve_on_loopback, tiny, caplog):
    caplog.set_level("INFO", logger="collabthink.server")
    with serve_on_loopback(Endless(tiny), request_timeout_s=60) as base:
        # Each run would take over 6 s: 400 paced steps.
        # Streaming: read the first progress comment, then hang up.
        with httpx.stream("POST", base + "/v1/chat/completions", json=chat(max_tokens=400, stream=True), timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith(": collabthink") and '"progress"' in line:
                    break
        assert wait_idle(base, tiny, timeout=2) < 2
        # Non-streaming: the client gives up after 0.5 s.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + "/v1/chat/completions", json=chat(max_tokens=400), timeout=0.5)
        assert wait_idle(base, tiny, timeout=2) < 2
    ends = run_ends(caplog)
    assert [e["outcome"] for e in ends] == ["cancelled", "cancelled"]
    assert all("client disconnected" in e["error"] and e["wall_s"] < 3 for e in ends)
    assert len({e["request_id"] for e in ends}) == 2


def test_several_concurrent_runs_need_an_engine_with_sessions(tiny):
    with pytest.raises(ValueError, match="needs an engine with session"):
        create_app(tiny, ServerConfig(max_concurrent_runs=2))


def test_an_engine_with_sessions_runs_requests_concurrently_one_session_each(serve_on_loopback):
    from concurrent.futures import ThreadPoolExecutor

    from fakes import FakeEngine

    class Sessions:
        """A multi-run engine: every run gets its own fake engine; the second waits for the first to start."""

        name, n_ctx = "fake-sessions", 100_000
        model_info = {"name": "fake"}

        def __init__(self):
            self.sessions, self.both = [], threading.Barrier(2, timeout=10)

        def generate(self, requests, progress=None):  # the server only uses sessions
            raise AssertionError("runs must use session()")

        def session(self):
            def script(request, engine):
                self.both.wait()  # only passes when two runs are in flight at once
                return "So \\boxed{7}"

            self.sessions.append(FakeEngine(script))
            return self.sessions[-1]

    engine = Sessions()
    with serve_on_loopback(engine, max_concurrent_runs=2, max_queue=0) as base:
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda _: httpx.post(base + "/v1/chat/completions", timeout=20,
                                                         json=chat("parallel-1")), range(2)))
    assert [r.status_code for r in replies] == [200, 200] and len(engine.sessions) == 2
    assert all(r.json()["collabthink"]["answer"] == "7" for r in replies)


def test_cli_serve_refuses_bad_settings_in_one_line(capsys):
    from collabthink.cli import main

    assert main(["serve", "--max-queue", "-1"]) == 2
    assert "max_queue must be >= 0" in capsys.readouterr().err
    assert main(["serve", "--api-key", "k", "--engine", "openai", "--base-url", "http://127.0.0.1:1/v1",
                 "--threads", "1"]) == 2
    assert "--threads applies to --engine llama.cpp" in capsys.readouterr().err
