"""Load test of `collabthink serve`: N concurrent chat completions against a server on 127.0.0.1.

Starts the server as a subprocess (loopback only), sends every request at once, and prints how many
completed, were rejected by the bounded queue (429) or failed, with latency percentiles. Everything is
bounded: the request count, a per-request timeout and a total time limit; the server is stopped at the
end whatever happens.

    python benchmarks/serve_load.py                      # 32 requests, tiny model, parallel-2, 32 tokens
    python benchmarks/serve_load.py --model qwen2.5-1.5b --method cpt --branches 2 --budget 96
    python benchmarks/serve_load.py --upstream 2 --max-concurrent-runs 4   # serve over 2 llama-servers
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx

from collabthink.engines.llama_server import LlamaServer, free_port


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def one(client: httpx.AsyncClient, i: int, args) -> tuple[str, float, str]:
    body = {"model": f"{args.method}-{args.branches}", "max_tokens": args.budget,
            "messages": [{"role": "user", "content": f"What is {i} + {i + 1}?"}]}
    if args.method == "cpt":
        body["collabthink"] = {"embeddings": False, "chunk_tokens": max(8, args.budget // 2), "extract_max_tokens": 24}
    t0 = time.monotonic()
    try:
        r = await client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as e:
        return "failed", time.monotonic() - t0, type(e).__name__
    dt = time.monotonic() - t0
    if r.status_code == 200:
        return "completed", dt, str(r.json()["collabthink"]["answer"])
    if r.status_code == 429:
        return "rejected", dt, r.headers.get("retry-after", "")
    return "failed", dt, f"{r.status_code} {r.json().get('error', {}).get('message', '')[:80]}"


async def load(base: str, args) -> list[tuple[str, float, str]]:
    limits = httpx.Limits(max_connections=args.requests)
    async with httpx.AsyncClient(base_url=base, timeout=args.request_timeout, limits=limits) as client:
        tasks = [asyncio.create_task(one(client, i, args)) for i in range(args.requests)]
        done, pending = await asyncio.wait(tasks, timeout=args.time_limit)
        for t in pending:
            t.cancel()
        return [t.result() for t in done] + [("failed", args.time_limit, "client time limit")] * len(pending)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--model", default="smollm2-135m", help="embedded model name or GGUF path")
    p.add_argument("--method", default="parallel")
    p.add_argument("--branches", type=int, default=2)
    p.add_argument("--budget", type=int, default=32, help="max_tokens per branch")
    p.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--run-timeout", type=float, default=60.0, help="the server's per-request timeout")
    p.add_argument("--request-timeout", type=float, default=120.0, help="the client's per-request timeout")
    p.add_argument("--time-limit", type=float, default=180.0, help="seconds for the whole load")
    p.add_argument("--upstream", type=int, default=0,
                   help="serve over this many llama-servers (--engine openai) instead of the embedded engine")
    p.add_argument("--max-concurrent-runs", type=int, default=1, help="runs at once (> 1 needs --upstream)")
    args = p.parse_args()
    if not 1 <= args.requests <= 256:
        p.error("--requests must be in 1..256")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "collabthink.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--max-branches", str(args.branches), "--max-budget", str(args.budget), "--max-queue", str(args.max_queue),
           "--run-timeout", str(args.run_timeout), "--max-concurrent-runs", str(args.max_concurrent_runs),
           "--log-level", "warning"]
    upstream = [LlamaServer(args.model, parallel=2 * args.branches, ctx_per_slot=1024, threads=args.threads).start()
                for _ in range(args.upstream)]
    if upstream:
        cmd += ["--engine", "openai", *[a for u in upstream for a in ("--base-url", u.url)]]
    else:
        cmd += ["--model", args.model, "--threads", str(args.threads)]
    env = {k: v for k, v in os.environ.items() if k != "COLLABTHINK_API_KEY"}
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                print(f"server exited with {server.returncode}: {server.stderr.read().strip()}", file=sys.stderr)
                return 1
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print("server did not start within 120 s", file=sys.stderr)
                return 1
            time.sleep(0.2)

        t0 = time.monotonic()
        results = asyncio.run(load(base, args))
        wall = time.monotonic() - t0
        health = httpx.get(base + "/health", timeout=5).json()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for u in upstream:
            u.stop()

    by = {k: [r for r in results if r[0] == k] for k in ("completed", "rejected", "failed")}
    ok = [dt for _, dt, _ in by["completed"]]
    rejected = [dt for _, dt, _ in by["rejected"]]
    print(f"serve load: {args.requests} concurrent requests, model {args.model}, {args.method}-{args.branches}, "
          f"max_tokens {args.budget}, queue {args.max_queue}, {args.max_concurrent_runs} run(s) at a time, "
          + (f"engine openai over {args.upstream} llama-server(s)" if upstream else "embedded engine"))
    print(f"completed {len(by['completed'])} / rejected (429) {len(by['rejected'])} / failed {len(by['failed'])} "
          f"in {wall:.1f} s")
    print(f"completed latency: p50 {percentile(ok, 0.5):.2f} s, p95 {percentile(ok, 0.95):.2f} s, "
          f"max {max(ok, default=float('nan')):.2f} s")
    print(f"rejected latency: p50 {percentile(rejected, 0.5) * 1000:.0f} ms, p95 {percentile(rejected, 0.95) * 1000:.0f} ms")
    if by["failed"]:
        print("failures:", "; ".join(sorted({why for _, _, why in by["failed"]})[:5]))
    answers = [a for _, _, a in by["completed"]]
    print(f"answers boxed: {sum(a != 'None' for a in answers)}/{len(answers)}; server afterwards: "
          f"running {health['running']}, queued {health['queued']}")
    return 0 if not by["failed"] and health["running"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
