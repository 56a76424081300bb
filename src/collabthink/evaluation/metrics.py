"""Metrics over run-file records: pure functions, no model, no I/O.

A record is one finished (question, method, setting) as `collabthink eval` writes it: `record["trace"]`
is the method's `Trace.to_dict()` (method-specific data such as CPT's `pool` and `schedule` sits at its
top level), `record["correct"]` the graded vote, `record["branch_correct"]` the graded branches.
Method-specific metrics are optional: a method that does not write the keys they read gets `None`.

Formulas
--------
- Majority-vote accuracy: share of questions whose voted answer is correct (no answer = wrong).
- Mean per-branch accuracy: mean over questions of c/n (c correct branches out of n).
- pass@k, unbiased (Chen et al., 2021): per question 1 - C(n-c, k) / C(n, k), averaged over questions;
  computed as 1 - prod_{i=n-c+1..n} (1 - k/i) for numerical stability.
- FLOPs (forward passes only, dense decoder-only transformer), per processed token at position p
  (0-based, so it attends to p+1 positions):
      FLOPs(p) = 2 * N_params  +  4 * n_layer * n_embd * (p + 1)
  2*N_params counts every weight matrix once as a multiply-add (2 FLOPs); the attention term counts
  QK^T and attention-times-V, each 2 * (p+1) * head_dim FLOPs per query head, n_head * head_dim =
  n_embd. Grouped-query attention (n_head_kv < n_head) shrinks the K/V projections, which N_params
  already reflects, not the score computation. N_params is the GGUF's count (embeddings included);
  when it is missing it is derived from the config (see `dense_params`).
  Positions: a prompt of P tokens per branch; the i-th generated token of a branch (0-based) sits
  at P + i. Prefill computes `prefill_computed` tokens after `prefill_reused` cached ones, spread
  evenly over the branches, per round when the trace has per-round counts. CPT's extraction tokens
  and LeaP's summary tokens count as decode at the branch's mid-length context (P + n/2). Softmax,
  norms and sampling are ignored (lower order).
- DeepConf (when present): traces stopped early and skipped, tokens saved, from `trace["deepconf"]`.
- Duplicate-discovery rate (CPT): share of extracted notes that were already in the pool,
  1 - new/extracted, per round (rounds that extracted something) and overall (sums over rounds).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

__all__ = [
    "pass_at_k", "vote_accuracy", "mean_branch_accuracy", "mean_pass_at_k", "latency", "tokens",
    "dense_params", "transformer_flops", "trace_flops", "duplicate_discovery", "cpt_metrics",
    "deepconf_metrics", "summarize", "summarize_all", "group_key", "setting_label", "is_cpt", "fmt_flops",
]


# ----------------------------------------------------------------------------- accuracy

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def branch_correct(record: dict) -> list[bool]:
    if "branch_correct" in record:
        return [bool(x) for x in record["branch_correct"]]
    return [bool(b.get("correct")) for b in record.get("trace", {}).get("branches", [])]


def record_correct(record: dict) -> bool:
    if "correct" in record:
        return bool(record["correct"])
    return bool(record.get("trace", {}).get("vote", {}).get("correct"))


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def vote_accuracy(records: Sequence[dict]) -> float | None:
    return _mean(1.0 if record_correct(r) else 0.0 for r in records)


def mean_branch_accuracy(records: Sequence[dict]) -> float | None:
    per = [sum(bc) / len(bc) for bc in map(branch_correct, records) if bc]
    return _mean(per)


def mean_pass_at_k(records: Sequence[dict], k: int) -> float | None:
    """Mean pass@k over the records with at least k branches (None when none has)."""
    per = [pass_at_k(len(bc), sum(bc), k) for bc in map(branch_correct, records) if len(bc) >= k]
    return _mean(per)


# ----------------------------------------------------------------------------- cost

def _cost(record: dict) -> dict:
    return record.get("trace", {}).get("cost", {}) or {}


def latency(records: Sequence[dict]) -> dict:
    """Wall-clock seconds per question, mean and median, split into decode / extraction / other."""
    out = {}
    for part in ("wall_s", "decode_s", "extraction_s", "other_s"):
        values = [float(_cost(r).get(part, 0.0) or 0.0) for r in records]
        out[part[:-2]] = {"mean": _mean(values), "median": statistics.median(values) if values else None}
    return out


def tokens(records: Sequence[dict]) -> dict:
    """Generated and prefill tokens per question (means) and in total."""
    out = {}
    for name in ("generated_tokens", "prefill_computed", "prefill_reused", "injected_tokens"):
        values = [int(_cost(r).get(name, 0) or 0) for r in records]
        out[name] = {"mean": _mean(values), "total": sum(values)}
    return out


def dense_params(n_layer: int, n_embd: int, n_head: int, n_head_kv: int, n_ff: int, n_vocab: int,
                 tied_embeddings: bool = True, gated_ffn: bool = True) -> int:
    """Weights of a decoder-only transformer from its config (norms and biases ignored):
    per layer Q and O (n_embd^2 each), K and V (n_embd * n_embd * n_head_kv / n_head each), the FFN
    (3 * n_embd * n_ff gated, 2 * n_embd * n_ff plain); the embedding matrix (twice if untied)."""
    kv = n_embd * n_embd * n_head_kv // n_head
    ffn = (3 if gated_ffn else 2) * n_embd * n_ff
    per_layer = 2 * n_embd * n_embd + 2 * kv + ffn
    return n_layer * per_layer + (1 if tied_embeddings else 2) * n_vocab * n_embd


def _attended(start: float, n: float) -> float:
    """Sum of (p + 1) over n tokens at positions start .. start+n-1."""
    return n * start + n * (n + 1) / 2


def transformer_flops(model: dict, prefill: Sequence[tuple[float, float]], decode: Sequence[tuple[float, float]]
                      ) -> dict | None:
    """FLOPs of prefill and decode segments `(start_position, n_tokens)` (see the module doc).
    None when the model config lacks what the count needs."""
    n_params = model.get("n_params")
    if not n_params and all(model.get(k) for k in ("n_layer", "n_embd", "n_head", "n_ff", "n_vocab")):
        n_params = dense_params(model["n_layer"], model["n_embd"], model["n_head"],
                                model.get("n_head_kv") or model["n_head"], model["n_ff"], model["n_vocab"])
    n_layer, n_embd = model.get("n_layer"), model.get("n_embd")
    if not n_params or not n_layer or not n_embd:
        return None

    def count(segments):
        n = sum(s[1] for s in segments)
        return 2.0 * n_params * n + 4.0 * n_layer * n_embd * sum(_attended(s, k) for s, k in segments)

    p, d = count(prefill), count(decode)
    return {"prefill": p, "decode": d, "total": p + d}


def trace_flops(trace: dict) -> dict | None:
    """FLOPs estimate of one run from its trace (see the module doc for the positions assumed)."""
    model = trace.get("model", {}) or {}
    cost = trace.get("cost", {}) or {}
    branches = trace.get("branches", []) or []
    b = max(1, len(branches))
    prompt = (cost.get("initial_prompt_tokens", 0) or 0) / b
    gen = [int(x.get("tokens", 0) or 0) for x in branches]
    decode = [(prompt, n) for n in gen if n]
    # tokens a method generates outside the branches: CPT's note extraction, LeaP's summaries
    extraction = sum(int(trace.get(k, 0) or 0) for k in ("extraction_tokens", "summary_tokens"))
    if extraction:
        decode.append((prompt + (sum(gen) / b) / 2, extraction))
    computed_total = int(cost.get("prefill_computed", 0) or 0)
    reused_total = int(cost.get("prefill_reused", 0) or 0)
    rounds = [r for r in trace.get("rounds", []) or [] if "prefill_computed" in r]
    if rounds and sum(int(r["prefill_computed"] or 0) for r in rounds) == computed_total:
        pairs = [(int(r.get("prefill_reused", 0) or 0), int(r["prefill_computed"] or 0)) for r in rounds]
    else:
        pairs = [(reused_total, computed_total)]
    prefill = []
    for reused, computed in pairs:
        if computed:
            prefill += [(reused / b, computed / b)] * b
    return transformer_flops(model, prefill, decode)


# ----------------------------------------------------------------------------- CPT

def _count(value: Any) -> int:
    if isinstance(value, (list, tuple, set, dict)):
        return len(value)
    return int(value or 0)


def duplicate_discovery(rounds: Sequence[dict]) -> tuple[list[tuple[int, float]], float | None]:
    """Per round (round, 1 - new/extracted) for rounds that extracted notes, and the overall rate
    1 - sum(new)/sum(extracted). `new_entries` may be a count or the list of new ids."""
    per: list[tuple[int, float]] = []
    extracted_total = new_total = 0
    for i, r in enumerate(rounds):
        extracted = _count(r.get("notes_extracted"))
        if extracted <= 0:
            continue
        new = min(_count(r.get("new_entries")), extracted)
        per.append((int(r.get("round", i)), 1.0 - new / extracted))
        extracted_total += extracted
        new_total += new
    overall = 1.0 - new_total / extracted_total if extracted_total else None
    return per, overall


def is_cpt(record: dict) -> bool:
    t = record.get("trace", {})
    return "pool" in t or "schedule" in t


def cpt_metrics(records: Sequence[dict]) -> dict | None:
    """Pool size, rounds per phase, duplicate-discovery rate (per round, averaged over questions, and
    overall), and the extraction tokens, over the records that carry CPT data; None when none does."""
    cpt = [r for r in records if is_cpt(r)]
    if not cpt:
        return None
    pools = [len(r["trace"].get("pool", []) or []) for r in cpt]
    phases: dict[str, list[int]] = defaultdict(list)
    names: set[str] = set()
    counts = []
    for r in cpt:
        c = Counter(str(x.get("phase")) for x in r["trace"].get("rounds", []) if x.get("phase") is not None)
        counts.append(c)
        names |= set(c)
    for name in sorted(names):
        phases[name] = [c.get(name, 0) for c in counts]
    by_round: dict[int, list[float]] = defaultdict(list)
    extracted = new = 0
    per_question = []
    for r in cpt:
        rounds = r["trace"].get("rounds", [])
        per, overall = duplicate_discovery(rounds)
        per_question.append(overall)
        for rnd, rate in per:
            by_round[rnd].append(rate)
        for x in rounds:
            e = _count(x.get("notes_extracted"))
            if e > 0:
                extracted += e
                new += min(_count(x.get("new_entries")), e)
    return {
        "records": len(cpt),
        "pool_size": {"mean": _mean(pools), "max": max(pools)},
        "rounds": {"mean": _mean(len(r["trace"].get("rounds", [])) for r in cpt)},
        "rounds_per_phase": {k: _mean(v) for k, v in phases.items()},
        "duplicate_rate": {
            "overall": 1.0 - new / extracted if extracted else None,
            "per_round": {rnd: _mean(v) for rnd, v in sorted(by_round.items())},
            "per_question": per_question,
        },
        "notes_extracted": extracted,
        "extraction_tokens": {"mean": _mean(int(r["trace"].get("extraction_tokens", 0) or 0) for r in cpt)},
    }


# ----------------------------------------------------------------------------- DeepConf

# finish reasons of traces a method stopped before their end (DeepConf: "confidence", "consensus")
_STOP_REASONS = {"confidence", "consensus", "early_stop", "early_stopped", "stopped_early", "pruned"}


def _stopped_early(branch: dict) -> bool:
    extra = branch.get("extra", {}) or {}
    if extra.get("stopped_early") or extra.get("early_stopped"):
        return True
    return str(branch.get("finish_reason") or "") in _STOP_REASONS


def deepconf_metrics(records: Sequence[dict]) -> dict | None:
    """Traces stopped early, traces never launched and tokens saved, over the records that carry
    DeepConf data: the trace's `deepconf` block (`stopped_early`, `skipped`, `tokens_saved`), or
    failing that, branches whose finish_reason is an early-stop reason (or `extra.stopped_early`) and a
    top-level `tokens_saved`. None when no record has any of these."""
    found = False
    stopped = skipped = total = saved = 0
    for r in records:
        t = r.get("trace", {})
        branches = t.get("branches", []) or []
        block = t.get("deepconf") if isinstance(t.get("deepconf"), dict) else None
        marks = [_stopped_early(b) for b in branches]
        if block is None and not (any(marks) or "tokens_saved" in t or "stopped_early" in t):
            continue
        found = True
        total += len(branches)
        src = block if block is not None else t
        stopped += _count(src["stopped_early"]) if "stopped_early" in src else sum(marks)
        skipped += _count(src.get("skipped")) if "skipped" in src else sum(
            b.get("finish_reason") == "skipped" for b in branches)
        saved += int(src.get("tokens_saved", 0) or 0)
    if not found:
        return None
    return {"stopped_early": stopped, "skipped": skipped, "branches": total,
            "stopped_share": stopped / total if total else None, "tokens_saved": saved}


# ----------------------------------------------------------------------------- grouping

def setting_label(setting: dict) -> str:
    parts = []
    if "branches" in setting:
        parts.append(f"n={setting['branches']}")
    if "budget" in setting:
        parts.append(f"T={setting['budget']}")
    parts += [f"{k}={v}" for k, v in sorted(setting.items()) if k not in ("branches", "budget")]
    return ",".join(parts)


def group_key(record: dict) -> tuple:
    """(dataset, model, method, branches, budget) — what one row of the report aggregates."""
    s = record.get("setting", {})
    return (record.get("dataset", ""), record.get("model", ""), record.get("method", ""),
            s.get("branches", 0), s.get("budget", 0))


def summarize(records: Sequence[dict]) -> dict:
    """Every metric of one group of records (one method x setting), with the per-question values."""
    records = list(records)
    n_branches = max((len(branch_correct(r)) for r in records), default=0)
    flops = [trace_flops(r.get("trace", {})) for r in records]
    known = [f for f in flops if f is not None]
    ks = sorted({1, n_branches} - {0})
    first = records[0] if records else {}
    return {
        "method": first.get("method"),
        "setting": first.get("setting", {}),
        "dataset": first.get("dataset", ""),
        "model": first.get("model", ""),
        "questions": len(records),
        "vote_accuracy": vote_accuracy(records),
        "branch_accuracy": mean_branch_accuracy(records),
        "pass_at_k": {k: mean_pass_at_k(records, k) for k in ks},
        "latency_s": latency(records),
        "tokens": tokens(records),
        "flops": {
            "prefill": _mean(f["prefill"] for f in known),
            "decode": _mean(f["decode"] for f in known),
            "total": _mean(f["total"] for f in known),
        } if known else None,
        "cpt": cpt_metrics(records),
        "deepconf": deepconf_metrics(records),
        "per_question": [
            {
                "id": r.get("question", {}).get("id"),
                "correct": record_correct(r),
                "branch_correct": branch_correct(r),
                "answer": r.get("answer"),
                "reference": r.get("question", {}).get("answer"),
                "wall_s": _cost(r).get("wall_s"),
                "generated_tokens": _cost(r).get("generated_tokens"),
                "flops": f["total"] if f else None,
            }
            for r, f in zip(records, flops)
        ],
    }


def summarize_all(records: Iterable[dict]) -> list[dict]:
    """One summary per (dataset, model, method, setting), sorted by method then setting."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[group_key(r)].append(r)
    return [summarize(groups[k]) for k in sorted(groups, key=lambda k: tuple(str(x) if not isinstance(x, int)
                                                                                else f"{x:012d}" for x in k))]


def fmt_flops(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"
