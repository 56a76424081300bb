"""DeepConf (Deep Think with Confidence): parallel traces filtered and weighted by the model's confidence.

Confidence comes from the top-k logprobs the engine returns for every generated token:

- token confidence C_i = -mean of the top-k logprobs at position i (k = `logprobs`, 20);
- group confidence: mean C_i over a sliding window of `window` tokens, stride 1 (a trace shorter
  than the window has one group: all its tokens);
- trace scores: `mean` (all tokens), `lowest` (lowest group), `bottom10` (mean of the lowest
  ceil(10%) of the groups), `tail` (mean C over the last `window` tokens).

Offline (`mode="offline"`): all `branches` traces decode to the end in one batch (like `parallel`,
with logprobs); every vote variant is computed and kept in the trace: `majority`, the four
confidence-weighted ones (`mean`, `lowest`, `bottom10`, `tail`) and the four filtered + weighted
ones (`filtered_<score>`: keep the traces whose score is >= the (100 - eta)th percentile of the
scores, i.e. the top eta%, then weight by that score).

Online (`mode="online"`, the default):
1. warm-up: min(`warmup`, `branches`) traces decode to the end in one batch;
2. threshold s = percentile of their lowest-group confidences. `variant="low"` (DeepConf-low)
   keeps the top 10% (s = 90th percentile); `variant="high"` (DeepConf-high, the default) keeps the
   top 90% (s = 10th percentile). The trace records which one ran (`deepconf.variant`, `percentile`);
3. the remaining traces decode together in chunks of `chunk_tokens` on their slots (each chunk
   only prefills what the slot has not cached). A trace stops as soon as its window confidence (mean
   C over its last `window` tokens) falls below s. Granularity: after every chunk the window is
   evaluated at *every* token position of that chunk, so the stop point is exact to the token
   (`stop_token`), but the engine only halts at the chunk's end: the tokens generated past the stop
   point are counted as generated and reported as `overshoot_tokens` (what an in-engine check would
   also save). Before a trace has `window` tokens its window is not full and it is never stopped
   (the first few tokens alone are too noisy to judge a trace, and the public implementation also
   waits for a full window);
4. consensus stop (`consensus=True`, tau = `tau`): after the warm-up and after every chunk, if the
   leader's share of the confidence-weighted vote among the traces that can vote reaches tau, the
   running traces stop (finish "consensus") and traces not yet started are never launched
   (finish "skipped").

Early-stopped traces (confidence or consensus) and skipped ones never vote. In online mode the
answer (`vote="auto"` -> `"online"`) is the paper's online vote: the finished traces (warm-up and
later) whose lowest-group confidence is >= s, weighted by that confidence. In offline mode
`"auto"` -> `"filtered_lowest"`, the same rule with s taken from all traces. Any variant can be
chosen with `vote`; all of them are recorded under `deepconf.votes`, computed over the traces that
ran to their end.

Budget accounting is the common one: `budget` caps the generated tokens of each trace, `trace.cost`
is filled like `parallel`'s, and `deepconf.tokens_saved` = branches x budget - generated tokens.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..answers import final_answer, majority_vote
from ..engines.base import Completion, Engine, EngineError, Request
from ..prompts import chat_ids, question_messages
from .base import Branch, MethodConfig, ProgressCallback, Result, Trace, config_dict, finish, model_info

MODES = ("online", "offline")
VARIANTS = ("low", "high")  # DeepConf-low keeps the top 10%, DeepConf-high the top 90%
SCORES = ("mean", "lowest", "bottom10", "tail")
VOTES = ("majority", *SCORES, *(f"filtered_{s}" for s in SCORES), "online")
KEEP_PERCENT = {"low": 10.0, "high": 90.0}


@dataclass(frozen=True)
class DeepConfConfig(MethodConfig):
    """DeepConf settings. Defaults suit a small CPU model; `PAPER_SETTINGS` holds the paper's scale.

    `window` defaults to 128 rather than the paper's 2048: the paper's traces run to 10-60k tokens,
    so a 2048 window is a local slice of them, while a CPU model here writes a few hundred tokens
    under a 1024-token budget; with 2048 every trace would be a single group (lowest = mean) and the
    online stop could never fire. 128 keeps roughly the paper's ratio of window to trace (1/8-1/16)
    and is still long enough to smooth single-token dips.
    """

    mode: str = "online"  # "online" (warm-up, threshold, early stop) or "offline" (all traces, then vote)
    variant: str = "high"  # "low": keep top 10% (s = 90th pct), "high": top 90% (s = 10th); also eta offline
    window: int = 128  # w: tokens per group (sliding, stride 1) and of the tail score
    logprobs: int = 20  # k: top-k logprobs per token behind the token confidence
    warmup: int = 16  # N_init: warm-up traces of online mode (capped at `branches`)
    chunk_tokens: int = 64  # online: tokens per trace between two confidence checks
    consensus: bool = True  # online: stop when the weighted leader's share reaches tau
    tau: float = 0.95
    vote: str = "auto"  # which variant decides the answer; "auto": "online" online, "filtered_lowest" offline

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in (("mode", MODES), ("variant", VARIANTS), ("vote", ("auto", *VOTES))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got '{getattr(self, name)}'")
        for name in ("window", "logprobs", "warmup", "chunk_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.vote == "online" and self.mode != "online":
            raise ValueError("vote 'online' needs mode 'online' (it uses the warm-up threshold)")

    @property
    def keep_percent(self) -> float:
        """eta: the share of traces kept, in percent (10 for DeepConf-low, 90 for DeepConf-high)."""
        return KEEP_PERCENT[self.variant]

    @property
    def deciding_vote(self) -> str:
        if self.vote != "auto":
            return self.vote
        return "online" if self.mode == "online" else "filtered_lowest"


# The paper's scale (thinking models on GPUs, 512 traces), for runs on a scaled-out engine.
PAPER_SETTINGS = dict(window=2048, logprobs=20, warmup=16, branches=512, budget=64_000, tau=0.95)


# ----------------------------------------------------------------------------------------- the maths


def token_confidence(top: Sequence) -> float:
    """C_i = -mean of the top-k logprobs at one position; entries are (token, logprob) or logprobs."""
    if not top:
        raise ValueError("token_confidence needs at least one logprob")
    values = [float(x[1]) if isinstance(x, (tuple, list)) else float(x) for x in top]
    return -sum(values) / len(values)


def token_confidences(logprobs: Iterable[Sequence]) -> list[float]:
    """Token confidences of a whole trace from the engine's per-token top-k lists."""
    return [token_confidence(top) for top in logprobs]


def group_confidences(confs: Sequence[float], window: int) -> list[float]:
    """Mean confidence of every window of `window` consecutive tokens (stride 1).

    A trace shorter than the window has one group, all its tokens; an empty trace has none.
    Exactly `window` tokens give one group too.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = len(confs)
    if n == 0:
        return []
    if n < window:
        return [sum(confs) / n]
    prefix = _prefix_sums(confs)
    return [(prefix[i + window] - prefix[i]) / window for i in range(n - window + 1)]


def bottom_percent_mean(groups: Sequence[float], percent: float = 10.0) -> float:
    """Mean of the lowest ceil(percent% of the groups) group confidences (at least one group)."""
    if not groups:
        raise ValueError("bottom_percent_mean needs at least one group")
    n = max(1, math.ceil(len(groups) * percent / 100 - 1e-9))
    return sum(sorted(groups)[:n]) / n


def trace_scores(confs: Sequence[float], window: int) -> dict[str, float | None]:
    """The four trace scores: mean, lowest group, bottom-10% groups, tail (last `window` tokens).

    All None for a trace without tokens (it has no confidence to judge it by).
    """
    if not confs:
        return {s: None for s in SCORES}
    groups = group_confidences(confs, window)
    tail = confs[-window:]
    return {
        "mean": sum(confs) / len(confs),
        "lowest": min(groups),
        "bottom10": bottom_percent_mean(groups, 10.0),
        "tail": sum(tail) / len(tail),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    xs = sorted(float(v) for v in values)
    rank = q / 100 * (len(xs) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def confidence_threshold(lowest: Sequence[float], variant: str) -> float:
    """The online stop threshold s from warm-up lowest-group confidences.

    "low" keeps the top 10% (s = 90th percentile), "high" keeps the top 90% (s = 10th percentile).
    """
    if variant not in KEEP_PERCENT:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got '{variant}'")
    return percentile(lowest, 100 - KEEP_PERCENT[variant])


def first_window_below(confs: Sequence[float], window: int, threshold: float, start: int = 0) -> int | None:
    """The first trace length n > start (n >= window) whose last-`window`-token mean is < threshold.

    That is where a token-level check would have stopped the trace (n tokens generated); None if the
    window confidence never falls below the threshold. Lengths below `window` are never checked.
    """
    prefix = _prefix_sums(confs)
    for n in range(max(start + 1, window), len(confs) + 1):
        if (prefix[n] - prefix[n - window]) / window < threshold:
            return n
    return None


def window_confidence(confs: Sequence[float], window: int) -> float | None:
    """Mean C over the last `window` tokens, or None while the window is not full."""
    if len(confs) < window:
        return None
    return sum(confs[-window:]) / window


def ballot(
    name: str,
    scores: Sequence[dict],
    eligible: Iterable[int],
    keep_percent: float = 90.0,
    threshold: float | None = None,
) -> tuple[list[float], list[int]]:
    """Weights (one per trace) and the traces that vote for one vote variant.

    `scores[i]` are trace i's scores (`trace_scores`), `eligible` the traces that may vote at all
    (finished ones). `majority`: every eligible trace, weight 1. `<score>`: eligible traces with a
    score, weighted by it. `filtered_<score>`: of those, the ones whose score is >= the
    (100 - keep_percent)th percentile, weighted by it. `online`: eligible traces whose lowest-group
    confidence is >= `threshold` (all with a score when the threshold is None), weighted by it.
    """
    if name not in VOTES:
        raise ValueError(f"vote must be one of {', '.join(VOTES)}, got '{name}'")
    eligible = sorted(set(eligible))
    weights = [0.0] * len(scores)
    if name == "majority":
        for i in eligible:
            weights[i] = 1.0
        return weights, eligible
    key = "lowest" if name == "online" else name.removeprefix("filtered_")
    pool = [i for i in eligible if scores[i].get(key) is not None]
    if name == "online":
        voters = [i for i in pool if threshold is None or scores[i][key] >= threshold]
    elif name.startswith("filtered_") and pool:
        cut = percentile([scores[i][key] for i in pool], 100 - keep_percent)
        voters = [i for i in pool if scores[i][key] >= cut]
    else:
        voters = pool
    for i in voters:
        weights[i] = float(scores[i][key])
    return weights, voters


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float], voters: Iterable[int]):
    """The vote of `voters` only (others count as no answer), each with its weight."""
    voting = set(voters)
    return majority_vote([a if i in voting else None for i, a in enumerate(answers)], weights)


def leader_share(answers: Sequence[str | None], weights: Sequence[float], voters: Iterable[int]) -> float:
    """beta: the leading answer's share of the total weight of the answers cast (0 when none)."""
    vote = weighted_vote(answers, weights, voters)
    total = sum(vote.counts.values())
    return vote.counts[vote.winner] / total if vote.winner is not None and total > 0 else 0.0


def vote_variants(
    answers: Sequence[str | None],
    scores: Sequence[dict],
    eligible: Iterable[int],
    keep_percent: float = 90.0,
    threshold: float | None = None,
    online: bool = False,
) -> dict[str, dict]:
    """Every vote variant (plus `online` when asked) as {"winner", "counts", "voters"}."""
    eligible = list(eligible)
    out = {}
    for name in VOTES:
        if name == "online" and not online:
            continue
        weights, voters = ballot(name, scores, eligible, keep_percent, threshold)
        vote = weighted_vote(answers, weights, voters)
        out[name] = {"winner": vote.winner, "counts": vote.counts, "voters": voters}
    return out


def _prefix_sums(values: Sequence[float]) -> list[float]:
    out = [0.0]
    for v in values:
        out.append(out[-1] + v)
    return out


# ----------------------------------------------------------------------------------------- the run

# How a trace ended, beyond the engine's own reasons ("eos", "stop", "length").
STOPPED_CONFIDENCE = "confidence"
STOPPED_CONSENSUS = "consensus"
SKIPPED = "skipped"


@dataclass
class _Path:
    branch: Branch
    slot: str
    role: str  # "offline", "warmup" or "online"
    generated: list[int] = field(default_factory=list)
    confs: list[float] = field(default_factory=list)
    launched: bool = False
    done: bool = False
    stop_token: int | None = None  # trace length at which the window first fell below s

    @property
    def used(self) -> int:
        return len(self.generated)

    @property
    def finished(self) -> bool:
        """Ran to its own end (eos, stop string or budget): may vote."""
        return self.done and self.branch.finish_reason in ("eos", "stop", "length")


class DeepConfRun:
    """One question solved with DeepConf; use `run_deepconf`."""

    def __init__(self, engine: Engine, problem: str, config: DeepConfConfig, reference: str | None,
                 progress: ProgressCallback | None):
        self.engine, self.config, self.progress = engine, config, progress
        self.trace = Trace("deepconf", problem, config_dict(config), model_info(engine), reference=reference)
        self.prompt = chat_ids(engine, question_messages(problem, config.system_prompt))
        run_id = uuid.uuid4().hex[:8]
        n_init = min(config.warmup, config.branches) if config.mode == "online" else 0
        self.paths = [
            _Path(Branch(i, config.sampling(i, 1).seed), f"{run_id}/b{i}",
                  "offline" if config.mode == "offline" else ("warmup" if i < n_init else "online"))
            for i in range(config.branches)
        ]
        self.trace.branches = [p.branch for p in self.paths]
        self.n_init = n_init
        self.threshold: float | None = None
        self.consensus: dict = {"enabled": config.consensus and config.mode == "online", "tau": config.tau,
                                "reached": False, "share": None, "round": None}

    # ------------------------------------------------------------------ the loop
    def run(self) -> Result:
        started = time.perf_counter()
        cfg = self.config
        try:
            if cfg.mode == "offline":
                self.decode(self.paths, 0, "decode", chunk=None)
            else:
                self.decode(self.paths[: self.n_init], 0, "warmup", chunk=None)
                lowest = [s for s in (self.score(p)["lowest"] for p in self.paths[: self.n_init]) if s is not None]
                self.threshold = confidence_threshold(lowest, cfg.variant) if lowest else None
                self.trace.rounds[-1]["threshold"] = self.threshold
                self.check_consensus(0)
                round_ = 1
                while any(not p.done for p in self.paths):
                    self.decode([p for p in self.paths if not p.done], round_, "online", chunk=cfg.chunk_tokens)
                    self.check_consensus(round_)
                    round_ += 1
        finally:
            for p in self.paths:
                self.engine.release(p.slot)
        return self.close(started)

    def room(self, p: _Path) -> int:
        """Tokens the trace may still generate within its budget and the context window."""
        return min(self.config.budget - p.used, self.engine.n_ctx - 1 - len(self.prompt) - p.used)

    def decode(self, paths: list[_Path], r: int, phase: str, chunk: int | None) -> None:
        """One batched call: every path continues (to its end when `chunk` is None)."""
        cfg, cost = self.config, self.trace.cost
        requests, decoding = [], []
        for p in paths:
            room = self.room(p)
            if room <= 0:
                p.done, p.branch.finish_reason = True, p.branch.finish_reason or "length"
                continue
            n = room if chunk is None else min(chunk, room)
            if not p.launched:
                p.launched = True
                cost.initial_prompt_tokens += len(self.prompt)
            params = cfg.sampling(p.branch.index, n, logprobs=cfg.logprobs)
            requests.append(Request(self.prompt + p.generated, params, slot=p.slot))
            decoding.append(p)
        t0 = time.perf_counter()
        completions = self.engine.generate(requests, progress=self._progress(r, phase, decoding)) if requests else []
        decode_s = time.perf_counter() - t0
        cost.decode_s += decode_s
        cost.add_completions(completions)
        tokens = [0] * len(self.paths)
        rec: dict = {"round": r, "phase": phase, "tokens": tokens,
                     "prefill_computed": sum(c.prompt_computed for c in completions),
                     "prefill_reused": sum(c.prompt_reused for c in completions), "decode_s": decode_s}
        stopped = []
        for p, c in zip(decoding, completions):
            tokens[p.branch.index] = c.n_tokens
            if self._absorb(p, c, check=chunk is not None):
                stopped.append(p.branch.index)
        if chunk is not None:
            rec["stopped"] = stopped
            rec["window_confidence"] = {p.branch.index: window_confidence(p.confs, cfg.window) for p in decoding}
        self.trace.rounds.append(rec)

    def _absorb(self, p: _Path, c: Completion, check: bool) -> bool:
        """Add a decoded piece to a trace; True when the confidence check stops it."""
        if c.n_tokens and (c.logprobs is None or len(c.logprobs) != c.n_tokens):
            raise EngineError(
                f"engine '{getattr(self.engine, 'name', '?')}' returned no logprobs for {c.n_tokens} tokens: "
                "DeepConf needs an engine that honours SamplingParams.logprobs"
            )
        before = p.used
        p.generated += list(c.token_ids)
        p.confs += token_confidences(c.logprobs or [])
        if check and self.threshold is not None:
            n = first_window_below(p.confs, self.config.window, self.threshold, start=before)
            if n is not None:
                p.done, p.stop_token, p.branch.finish_reason = True, n, STOPPED_CONFIDENCE
                return True
        if c.finish_reason in ("eos", "stop"):
            p.done, p.branch.finish_reason = True, c.finish_reason
        elif p.used >= self.config.budget or self.room(p) <= 0:
            p.done, p.branch.finish_reason = True, "length"
        return False

    def _progress(self, r: int, phase: str, decoding: list[_Path]):
        if self.progress is None:
            return None
        base = [p.used for p in self.paths]

        def report(counts):
            tokens = list(base)
            for p, n in zip(decoding, counts):
                tokens[p.branch.index] = p.used + n
            self.progress({"phase": phase, "round": r, "tokens": tokens, "budget": self.config.budget})

        return report

    # ------------------------------------------------------------------ confidence and votes
    def score(self, p: _Path) -> dict:
        return trace_scores(p.confs, self.config.window)

    def check_consensus(self, r: int) -> None:
        """Stop everything once the confidence-weighted leader holds a share >= tau."""
        if not self.consensus["enabled"] or self.consensus["reached"]:
            return
        eligible = [p.branch.index for p in self.paths if p.finished]
        if not eligible:
            return
        scores = [self.score(p) for p in self.paths]
        weights, voters = ballot("online", scores, eligible, threshold=self.threshold)
        share = leader_share(self._answers_of(voters), weights, voters)
        self.consensus["share"] = share
        self.trace.rounds[-1]["consensus_share"] = share
        if share >= self.config.tau:
            self.consensus.update(reached=True, round=r)
            for p in self.paths:
                if not p.done:
                    p.done = True
                    p.branch.finish_reason = STOPPED_CONSENSUS if p.launched else SKIPPED

    def _answers_of(self, indices: Iterable[int]) -> list[str | None]:
        """Answers of the given traces (extracted once, from their text so far); None for the others."""
        wanted = set(indices)
        for p in self.paths:
            if p.branch.index in wanted and p.branch.answer is None:
                p.branch.text = self.engine.detokenize(p.generated)
                p.branch.answer = final_answer(p.branch.text)
        return [p.branch.answer if p.branch.index in wanted else None for p in self.paths]

    def close(self, started: float) -> Result:
        cfg, cost = self.config, self.trace.cost
        for p in self.paths:
            p.branch.token_ids = p.generated
            p.branch.text = self.engine.detokenize(p.generated)
            p.branch.answer = final_answer(p.branch.text)
        answers = [p.branch.answer for p in self.paths]
        scores = [self.score(p) for p in self.paths]
        eligible = [p.branch.index for p in self.paths if p.finished]
        online = cfg.mode == "online"
        variants = vote_variants(answers, scores, eligible, cfg.keep_percent, self.threshold, online=online)
        deciding = cfg.deciding_vote
        weights, voters = ballot(deciding, scores, eligible, cfg.keep_percent, self.threshold)
        for p, s in zip(self.paths, scores):
            p.branch.extra = {
                "role": p.role,
                "confidence": s,
                "stop_token": p.stop_token,
                "overshoot_tokens": p.used - p.stop_token if p.stop_token is not None else 0,
                "votes": p.branch.index in voters,
            }
        stopped_conf = sum(p.branch.finish_reason == STOPPED_CONFIDENCE for p in self.paths)
        stopped_cons = sum(p.branch.finish_reason == STOPPED_CONSENSUS for p in self.paths)
        full = cfg.branches * cfg.budget
        self.trace.extra = {"deepconf": {
            "mode": cfg.mode,
            "variant": cfg.variant,  # online: the threshold percentile; both modes: the share kept (eta)
            "keep_percent": cfg.keep_percent,
            "percentile": 100 - cfg.keep_percent,
            "window": cfg.window,
            "logprobs": cfg.logprobs,
            "warmup": self.n_init,
            "threshold": self.threshold,
            "granularity": (f"checked after every chunk of {cfg.chunk_tokens} tokens at every token position; "
                            f"decoding halts at the chunk's end; no check before {cfg.window} tokens")
            if online else None,
            "consensus": self.consensus,
            "decided_by": deciding,
            "votes": variants,
            "stopped_early": stopped_conf + stopped_cons,
            "stopped_confidence": stopped_conf,
            "stopped_consensus": stopped_cons,
            "skipped": sum(p.branch.finish_reason == SKIPPED for p in self.paths),
            "overshoot_tokens": sum(p.branch.extra["overshoot_tokens"] for p in self.paths),
            "full_budget_tokens": full,
            "tokens_saved": full - cost.generated_tokens,
        }}
        excluded = [i for i in range(len(self.paths)) if i not in set(voters)]
        return finish(self.trace, started, weights=weights, exclude=excluded)


def run_deepconf(
    engine: Engine,
    problem: str,
    config: DeepConfConfig | None = None,
    reference: str | None = None,
    progress: ProgressCallback | None = None,
) -> Result:
    return DeepConfRun(engine, problem, config or DeepConfConfig(), reference, progress).run()
