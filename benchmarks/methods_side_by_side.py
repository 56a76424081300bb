"""One problem solved by every method on the same engine, budget and seed, side by side.

    python benchmarks/methods_side_by_side.py [--model NAME_OR_PATH] [--item 0] [-n 4] [--budget 384]
                                             [--methods parallel,deepconf,leap,cpt]

Prints per method: answer (and whether it is right), generated tokens, extra tokens the method's own
calls wrote (notes, summaries), prefill computed / reused, and wall time split into decode and other.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from collabthink import make_engine, method_config, solve
from collabthink.methods import METHODS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--item", type=int, default=0)
    ap.add_argument("-n", "--branches", type=int, default=4)
    ap.add_argument("--budget", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    item = json.loads(Path(args.data).read_text().splitlines()[args.item])
    common = dict(branches=args.branches, budget=args.budget, seed=args.seed)
    methods = args.methods.split(",")
    biggest = max((method_config(m, **common) for m in methods), key=lambda c: c.context_tokens())
    engine = make_engine(model=args.model, config=biggest)
    print(f"{item['id']} (reference {item['answer']}): N={args.branches}, budget {args.budget}, seed {args.seed}, "
          f"model {engine.model_info['name']}")
    print(f"{'method':<9} {'answer':>8} {'ok':>3} {'generated':>9} {'side':>6} {'computed':>9} {'reused':>8} "
          f"{'wall s':>7} {'decode s':>8} {'other s':>8}")
    # DeepConf's warm-up is capped at N; at N = 4 warm up on half, so its online early stop has traces to stop.
    own = {"deepconf": dict(warmup=max(1, args.branches // 2))}
    for m in methods:
        r = solve(item["problem"], method=m, engine=engine, reference=item["answer"], **common, **own.get(m, {}))
        c, extra = r.trace.cost, r.trace.extra
        side = extra.get("extraction_tokens", extra.get("summary_tokens", 0))
        print(f"{m:<9} {str(r.answer):>8} {'y' if r.correct else 'n':>3} {c.generated_tokens:>9} {side:>6} "
              f"{c.prefill_computed:>9} {c.prefill_reused:>8} {c.wall_s:>7.0f} {c.decode_s:>8.0f} "
              f"{c.wall_s - c.decode_s:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
