"""CPT's context cost: our layout (tail placement + fork extraction) beside the paper's (head + fresh),
on the same problem, same engine, same seeds, in one run.

Prints prompt tokens computed and reused, injected tokens, the ratio computed / (initial prompts +
injected) — 1.0 means nothing already cached was computed again — and wall time per layout.

    python benchmarks/cpt_prefill.py [--model NAME_OR_PATH] [--item 0] [-n 4] [--budget 512] [--chunk 96]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from collabthink import make_engine, solve
from collabthink.methods.cpt import CPTConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k.jsonl"
LAYOUTS = [("tail", "fork"), ("head", "fresh"), ("tail", "fresh"), ("head", "fork")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--item", type=int, default=0)
    ap.add_argument("-n", "--branches", type=int, default=4)
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=96)
    ap.add_argument("--layouts", default="tail/fork,head/fresh")
    ap.add_argument("--save", default=None, help="folder to write each run's JSON trace to")
    args = ap.parse_args()
    item = json.loads(Path(args.data).read_text().splitlines()[args.item])
    options = dict(branches=args.branches, budget=args.budget, chunk_tokens=args.chunk, schedule=False)
    engine = make_engine(model=args.model, config=CPTConfig(**options))
    print(f"{item['id']}: N={args.branches}, budget {args.budget}, chunk {args.chunk}, broadcast every round "
          f"(--no-schedule), model {engine.model_info['name']}")
    print(f"{'layout':<11} {'rounds':>6} {'pool':>5} {'initial':>8} {'injected':>9} {'computed':>9} {'reused':>8} "
          f"{'ratio':>6} {'wall s':>7} {'answer':>8}")
    for layout in args.layouts.split(","):
        placement, extraction = layout.split("/")
        t0 = time.perf_counter()
        r = solve(item["problem"], method="cpt", engine=engine, reference=item["answer"], placement=placement,
                  extraction=extraction, **options)
        wall = time.perf_counter() - t0
        c = r.trace.cost
        ratio = c.prefill_computed / (c.initial_prompt_tokens + c.injected_tokens)
        print(f"{layout:<11} {len(r.trace.rounds):>6} {len(r.trace.extra['pool']):>5} {c.initial_prompt_tokens:>8} "
              f"{c.injected_tokens:>9} {c.prefill_computed:>9} {c.prefill_reused:>8} {ratio:>6.2f} {wall:>7.0f} "
              f"{str(r.answer):>8}", flush=True)
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            Path(args.save, f"cpt_{placement}_{extraction}.json").write_text(json.dumps(r.to_dict(), indent=1))


if __name__ == "__main__":
    main()
