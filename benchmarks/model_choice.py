"""How the default model was chosen: GSM8K accuracy and aggregate decode speed of each packaged model.

Greedy decoding, one branch per problem, all problems of the sample decoded together in one batch.

    python benchmarks/model_choice.py [--n 20] [--models qwen2.5-1.5b,qwen2.5-0.5b,gemma3-270m,smollm2-135m]

Models that are not installed are skipped (install them with the command printed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from collabthink.answers import final_answer
from collabthink.engines.base import Request, SamplingParams
from collabthink.engines.llamacpp import LlamaCppEngine
from collabthink.engines.models import PACKAGED_MODELS, ModelNotFound
from collabthink.grading import is_correct
from collabthink.prompts import chat_ids, question_messages

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--models", default=",".join(PACKAGED_MODELS))
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args()
    items = [json.loads(line) for line in open(args.data)][: args.n]
    print(f"{len(items)} problems from {args.data}, greedy, max {args.max_tokens} tokens, all decoded together")
    print(f"{'model':<14} {'correct':>8} {'boxed':>6} {'tokens':>7} {'seconds':>8} {'tok/s':>7}")
    for name in args.models.split(","):
        try:
            engine = LlamaCppEngine(name, n_ctx=1024, n_seq_max=len(items))
        except ModelNotFound as e:
            print(f"{name:<14} skipped: {e}")
            continue
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
        requests = [Request(chat_ids(engine, question_messages(it["problem"])), params) for it in items]
        t0 = time.perf_counter()
        out = engine.generate(requests)
        seconds = time.perf_counter() - t0
        answers = [final_answer(c.text) for c in out]
        correct = sum(is_correct(a, it["answer"]) for a, it in zip(answers, items))
        tokens = sum(c.n_tokens for c in out)
        boxed = sum(a is not None for a in answers)
        print(f"{name:<14} {correct:>5}/{len(items):<2} {boxed:>6} {tokens:>7} {seconds:>8.0f} {tokens / seconds:>7.1f}",
              flush=True)
        engine.close()


if __name__ == "__main__":
    main()
