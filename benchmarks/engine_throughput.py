"""Engine throughput against a minimal raw llama-cpp-python loop, measured side by side in one run.

Prints, per N parallel sequences, the aggregate decode tokens/s of the engine and of a raw batched
decode loop (no engine logic: greedy argmax, no stop checks), and their ratio (target >= 0.90).
Then the prefill rate, and the cost of resuming a paused sequence with 32 appended tokens against
re-prefilling its whole context (target: reuse >= 10x cheaper at 1,500 tokens of context).

    python benchmarks/engine_throughput.py [--model NAME_OR_PATH] [--tokens 96] [--ns 1,4,8,16] [--trials 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from collabthink.engines.base import Request, SamplingParams
from collabthink.engines.llamacpp import LlamaCppEngine

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a strange map."


class RawLoop:
    """The least code that decodes N sequences in one batch with llama-cpp-python."""

    def __init__(self, path: str, n_ctx: int, n_seq: int, kv_unified: bool):
        import llama_cpp as ll

        self.ll = ll
        self.model = ll.llama_model_load_from_file(path.encode(), ll.llama_model_default_params())
        p = ll.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx * n_seq, 512, 512, n_seq
        p.n_threads = p.n_threads_batch = os.cpu_count()
        p.kv_unified = kv_unified
        self.ctx = ll.llama_init_from_model(self.model, p)
        self.mem = ll.llama_get_memory(self.ctx)
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.batch = ll.llama_batch_init(512, 0, 1)

    def _decode(self, items):
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        assert self.ll.llama_decode(self.ctx, b) == 0

    def run(self, prompt: list[int], n: int, tokens: int) -> tuple[int, float]:
        """Prefill the prompt per sequence, then time `tokens` batched greedy steps."""
        self.ll.llama_memory_clear(self.mem, True)
        last = []
        for s in range(n):
            self._decode([(t, i, s, i == len(prompt) - 1) for i, t in enumerate(prompt)])
            row = np.ctypeslib.as_array(self.ll.llama_get_logits_ith(self.ctx, len(prompt) - 1), shape=(self.n_vocab,))
            last.append(int(np.argmax(row)))
        t0 = time.perf_counter()
        for step in range(tokens - 1):
            self._decode([(last[s], len(prompt) + step, s, True) for s in range(n)])
            for s in range(n):
                row = np.ctypeslib.as_array(self.ll.llama_get_logits_ith(self.ctx, s), shape=(self.n_vocab,))
                last[s] = int(np.argmax(row))
        return n * (tokens - 1), time.perf_counter() - t0


def engine_decode(engine: LlamaCppEngine, prompt: list[int], n: int, tokens: int) -> tuple[int, float]:
    """Decode-only rate: from the first progress callback (prefill done) to the end."""
    engine.reset()
    marks: list[float] = []
    params = SamplingParams(max_tokens=tokens, seed=1, ignore_eos=True)  # the raw loop never stops early
    reqs = [Request(prompt, params.but(seed=i), slot=f"s{i}") for i in range(n)]
    out = engine.generate(reqs, progress=lambda counts: marks.append(time.perf_counter()) if not marks else None)
    end = time.perf_counter()
    generated = sum(c.n_tokens for c in out) - n  # the first token of each came from prefill
    return generated, end - marks[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--ns", default="1,4,8,16")
    ap.add_argument("--context", type=int, default=1500)
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    ns = [int(x) for x in args.ns.split(",")]

    engine = LlamaCppEngine(args.model, n_ctx=2048, n_seq_max=max(ns))
    print(f"model: {engine.model_info['name']} ({engine.model_path.name}), threads {os.cpu_count()}")
    print(f"llama.cpp: {engine.system_info.strip()}")
    raw = RawLoop(str(engine.model_path), 2048, max(ns), engine.config.kv_unified)
    prompt = engine.tokenize(engine.render_chat([{"role": "user", "content": PROMPT}]))
    engine_decode(engine, prompt, 1, 4)  # warm-up both
    raw.run(prompt, 1, 4)

    print(f"\ndecode, {args.tokens} tokens per sequence, median of {args.trials} interleaved trials "
          "(aggregate tokens/s):")
    print(f"{'N':>3} {'engine':>9} {'raw':>9} {'ratio':>6}")
    for n in ns:
        e_rates, r_rates = [], []
        for _ in range(args.trials):  # alternate so drift in machine speed hits both alike
            e_tok, e_s = engine_decode(engine, prompt, n, args.tokens)
            r_tok, r_s = raw.run(prompt, n, args.tokens)
            e_rates.append(e_tok / e_s)
            r_rates.append(r_tok / r_s)
        e_rate, r_rate = statistics.median(e_rates), statistics.median(r_rates)
        print(f"{n:>3} {e_rate:9.1f} {r_rate:9.1f} {e_rate / r_rate:6.2f}", flush=True)

    # Prefill rate and resume cost at `context` tokens.
    engine.reset()
    filler = engine.tokenize(" ".join(f"Fact {i}: the number {i} squared is {i * i}." for i in range(400)))
    context = (prompt + filler)[: args.context]
    one = SamplingParams(max_tokens=1, temperature=0)
    t0 = time.perf_counter()
    engine.generate([Request(context, one, slot="paused")])
    cold_s = time.perf_counter() - t0
    print(f"\nprefill: {len(context)} tokens in {cold_s:.2f}s = {len(context) / cold_s:.1f} tok/s")
    appended = context + engine.tokenize(" " + "Now continue the story with a new chapter about the sea " * 4)[:32]
    t0 = time.perf_counter()
    warm = engine.generate([Request(appended, one, slot="paused")])[0]
    warm_s = time.perf_counter() - t0
    engine.release("paused")
    t0 = time.perf_counter()
    cold = engine.generate([Request(appended, one, slot="fresh")])[0]
    recompute_s = time.perf_counter() - t0
    print(f"resume with {len(appended) - len(context)} appended tokens: {warm_s * 1000:.0f} ms "
          f"(computed {warm.prompt_computed}, reused {warm.prompt_reused}); "
          f"re-prefill of all {len(appended)}: {recompute_s * 1000:.0f} ms (computed {cold.prompt_computed}); "
          f"reuse is {recompute_s / warm_s:.1f}x cheaper")


if __name__ == "__main__":
    main()
