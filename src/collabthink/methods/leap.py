"""LeaP (Learning from Peers): parallel paths that swap short summaries every few hundred tokens.

Every `interval` tokens each path that is still reasoning
1. drops the paragraph it was in the middle of (back to its last blank line, see
   `trim_partial_paragraph`), so it is interrupted at a clean boundary;
2. is asked, inside its own reasoning and on its own cache slot, to sum up its current
   conclusions between `<summary>` and `</summary>` (at most `summary_max_tokens`); the summary
   stays in its context, as in the paper, where it is simply part of the reasoning;
3. receives the summaries of up to `peers` other paths, chosen by normalised Levenshtein
   similarity of the summaries (`routing`): `dispersed` (least similar), `clustered` (most
   similar), `hybrid` (half each) or `random`; they are appended as a `<peers>` block followed by
   a sentence inviting it to check them against its own conclusions, and decoding continues.
Everything is appended, so each step prefills only its new tokens; the slot's cache stays valid.
Similarity is measured on the summaries' token ids (the same normalised distance as on characters,
on sequences ~4x shorter, which matters for a quadratic pure-Python distance). Only paths still
reasoning take part: a path that ended (or closed `</think>` itself) neither writes nor receives
summaries, empty summaries are not sent, and with fewer than two paths left there is no exchange.

Budget (same meaning as for every method): `budget` bounds the reasoning tokens a path decodes,
dropped partial paragraphs included (they were decoded). Summary tokens are not part of it — like
CPT's note extraction they are counted apart, in `trace.extra["summary_tokens"]`, with their time
in `cost.extraction_s`; only the context window limits them. The last `answer_reserve` tokens of
the budget are kept for the answer: when a path has used the rest without finishing, a short
sentence nudging it to write its final boxed answer is appended (and, for thinking models, the
reasoning block is closed) and it decodes the reserve.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Sequence

from ..engines.base import Engine, Request
from ..engines.chat import THINK_CLOSE, THINK_OPEN
from ..prompts import chat_ids, question_messages
from .base import Branch, MethodConfig, ProgressCallback, Result, Trace, config_dict, finish, model_info

ROUTINGS = ("dispersed", "clustered", "hybrid", "random")

SUMMARY_OPEN = "<summary>"
SUMMARY_CLOSE = "</summary>"
PEERS_OPEN = "<peers>"
PEERS_CLOSE = "</peers>"

# Written in the path's own voice: they sit inside its reasoning.
SUMMARY_PROMPT = (
    "Let me stop for a moment and sum up where I stand, in a few sentences: the approach I am "
    f"following, the results I have established so far, and my current answer if I have one. "
    f"I will end the summary with {SUMMARY_CLOSE}."
)
INVITATION = (
    "Those are the current conclusions of other solvers working on the same problem. Let me compare "
    "them with mine: where we agree, good; where we differ, I will work out which one is right "
    "before I go on."
)
NUDGE = (
    "I have almost used up my thinking budget, so I will stop exploring now and state my final "
    "answer in the form \\boxed{answer}."
)


@dataclass(frozen=True)
class LeaPConfig(MethodConfig):
    """LeaP settings. Defaults suit a small CPU model; `PAPER_SETTINGS` holds the paper's scale.

    `interval` is 192 rather than the paper's 2048 because the default budget is 1024, not 16-32k:
    192 is CPT's chunk, so both methods communicate at the same points of the same budget (four
    exchanges per path at the defaults).
    """

    interval: int = 192  # T: reasoning tokens a path decodes between two exchanges
    peers: int = 4  # k: summaries a path receives per exchange (fewer when fewer paths remain)
    routing: str = "dispersed"
    summary_max_tokens: int = 256
    answer_reserve: int = 64  # budget kept for the final answer, decoded after the nudge; 0 = no nudge
    trim_min_keep: float = 0.5  # trimming keeps at least this fraction of the chunk (see trim_partial_paragraph)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got '{self.routing}'")
        for name in ("interval", "peers", "summary_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.answer_reserve < 0:
            raise ValueError(f"answer_reserve must be >= 0, got {self.answer_reserve}")
        if self.answer_reserve >= self.budget:  # small budgets keep the default usable: cap at a quarter
            object.__setattr__(self, "answer_reserve", self.budget // 4)
        if not 0 <= self.trim_min_keep <= 1:
            raise ValueError(f"trim_min_keep must be in [0, 1], got {self.trim_min_keep}")

    def exchanges(self) -> int:
        """Exchanges a path that reasons through its whole budget takes part in."""
        reasoning = self.budget - self.answer_reserve
        return max(0, -(-reasoning // self.interval) - 1)

    def context_tokens(self) -> int:
        """Prompt + budget + what every exchange appends: instruction, summary, peer block."""
        k = min(self.peers, self.branches - 1)
        per_exchange = 128 + self.summary_max_tokens * (1 + k) if k else 0
        return self.budget + 1024 + self.exchanges() * per_exchange


# The paper's scale (thinking models on GPUs), for runs on a scaled-out engine.
PAPER_SETTINGS = dict(interval=2048, peers=4, routing="dispersed", summary_max_tokens=256)


# ---------------------------------------------------------------------------------------- pure parts


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance (insertions, deletions, substitutions of one item) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def similarity(a: Sequence, b: Sequence) -> float:
    """1 - levenshtein / max(len): 1 for equal sequences (two empty ones included), 0 for disjoint ones."""
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def similarity_matrix(summaries: Sequence[Sequence]) -> list[list[float]]:
    n = len(summaries)
    m = [[1.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            m[i][j] = m[j][i] = similarity(summaries[i], summaries[j])
    return m


def route(
    summaries: Sequence[Sequence],
    k: int,
    strategy: str = "dispersed",
    rng: random.Random | None = None,
    matrix: Sequence[Sequence[float]] | None = None,
) -> list[list[int]]:
    """For every path, the positions of the peers whose summaries it receives, most wanted first.

    Empty summaries are never sent. Ties in similarity go to the lower position. `hybrid` takes the
    k // 2 most similar, then the k - k // 2 least similar of the rest (the odd one goes to the
    dispersed half, the default's). `random` draws from `rng` (seeded by the caller).
    """
    if strategy not in ROUTINGS:
        raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got '{strategy}'")
    matrix = matrix if matrix is not None else similarity_matrix(summaries)
    rng = rng or random.Random(0)
    out = []
    for i in range(len(summaries)):
        candidates = [j for j in range(len(summaries)) if j != i and len(summaries[j]) > 0]
        n = min(max(k, 0), len(candidates))
        far = sorted(candidates, key=lambda j: (matrix[i][j], j))
        near = sorted(candidates, key=lambda j: (-matrix[i][j], j))
        if strategy == "dispersed":
            chosen = far[:n]
        elif strategy == "clustered":
            chosen = near[:n]
        elif strategy == "hybrid":
            chosen = near[: n // 2]
            chosen += [j for j in far if j not in chosen][: n - n // 2]
        else:
            chosen = rng.sample(candidates, n)
        out.append(chosen)
    return out


_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def trim_partial_paragraph(text: str, min_keep: float = 0.5) -> str:
    """`text` without its unfinished last paragraph.

    Cuts right after the last blank line. A path is interrupted every `interval` tokens, usually in
    mid-paragraph; resuming after a clean break reads better for the summary prompt that follows.
    At least `min_keep` of the text is kept, since a small model's paragraphs can fill a whole
    chunk: when the last blank line lies before that minimum (or there is none), the cut falls back
    to the last line break, then to the last sentence end after the minimum, and when there is none
    of those the text is kept whole. Text that ends at a blank line is kept whole.
    """
    floor = min_keep * len(text)
    blanks = [m.end() for m in _BLANK_LINE.finditer(text)]
    if blanks and blanks[-1] >= floor and not text[blanks[-1]:].strip():
        return text  # ends at a paragraph break: nothing unfinished
    if blanks and blanks[-1] >= floor:
        return text[: blanks[-1]]
    line = text.rfind("\n")
    if line >= 0 and line + 1 >= floor:
        return text[: line + 1]
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if ends and ends[-1] >= floor:
        return text[: ends[-1]]
    return text


def render_peer_block(summaries: Sequence[str]) -> str:
    """The block a path receives: one peer summary per line, then the invitation to compare."""
    lines = [PEERS_OPEN]
    lines += [f"Peer {n}: {' '.join(s.split())}" for n, s in enumerate(summaries, 1)]
    lines += [PEERS_CLOSE, INVITATION]
    return "\n".join(lines) + "\n\n"


def separator(before: str) -> str:
    """What to put between `before` and an appended block so that a blank line separates them."""
    if before.endswith("\n\n"):
        return ""
    return "\n" if before.endswith("\n") else "\n\n"


# ---------------------------------------------------------------------------------------- the run


@dataclass
class _Path:
    branch: Branch
    slot: str
    context: list[int] = field(default_factory=list)  # everything after the prompt
    generated: list[int] = field(default_factory=list)  # kept reasoning tokens (the branch's text)
    decoded: int = 0  # reasoning tokens decoded, dropped ones included: what the budget bounds
    dropped: int = 0
    summary_tokens: int = 0
    segments: list[dict] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)
    received: dict[int, list[int]] = field(default_factory=dict)
    done: bool = False
    thinking_done: bool = False  # wrote `</think>` itself: no more exchanges, decodes to the end
    answering: bool = False  # nudged: decodes the answer reserve, then done


class LeaPRun:
    """One question solved with LeaP. Use `run_leap`."""

    def __init__(self, engine: Engine, problem: str, config: LeaPConfig, reference: str | None,
                 progress: ProgressCallback | None):
        self.engine, self.problem, self.config, self.progress = engine, problem, config, progress
        self.trace = Trace("leap", problem, config_dict(config), model_info(engine), reference=reference)
        self.prompt = chat_ids(engine, question_messages(problem, config.system_prompt))
        self.opens_thinking = engine.detokenize(self.prompt).rstrip().endswith(THINK_OPEN)
        run_id = uuid.uuid4().hex[:8]
        self.paths = [
            _Path(Branch(i, config.sampling(i, 1).seed), f"{run_id}/b{i}") for i in range(config.branches)
        ]
        self.trace.branches = [p.branch for p in self.paths]
        self.route_rng = random.Random(config.seed * 1000 + 777)

    # ------------------------------------------------------------------ helpers
    def room(self, p: _Path, extra: int = 0) -> int:
        """Tokens that still fit the context window after the path's prompt, context and `extra`."""
        return self.engine.n_ctx - 1 - len(self.prompt) - len(p.context) - extra

    def tail_text(self, p: _Path) -> str:
        return self.engine.detokenize((self.prompt + p.context)[-8:])

    def inject(self, p: _Path, ids: list[int], rec: dict, kind: str, r: int, **info) -> None:
        p.context += ids
        rec["injected"] += len(ids)
        self.trace.cost.injected_tokens += len(ids)
        p.segments.append({"kind": kind, "round": r, "text": self.engine.detokenize(ids), **info})

    def report(self, phase: str, r: int, decoding: list[_Path] | None = None):
        if self.progress is None:
            return None

        def send(counts=()):
            extra = {p.branch.index: n for p, n in zip(decoding or [], counts)}
            self.progress({"phase": phase, "round": r,
                           "tokens": [p.decoded + extra.get(p.branch.index, 0) for p in self.paths],
                           "budget": self.config.budget})

        return send

    # ------------------------------------------------------------------ the loop
    def run(self) -> Result:
        started = time.perf_counter()
        self.trace.cost.initial_prompt_tokens = len(self.prompt) * len(self.paths)
        try:
            r = 0
            while any(not p.done for p in self.paths):
                self.round(r)
                r += 1
        finally:
            for p in self.paths:
                self.engine.release(p.slot)
        for p in self.paths:
            b = p.branch
            b.token_ids, b.text = p.generated, self.engine.detokenize(p.generated)
            b.extra = {"decoded_tokens": p.decoded, "dropped_tokens": p.dropped, "summary_tokens": p.summary_tokens,
                       "summaries": p.summaries, "received": p.received, "segments": p.segments,
                       "nudged": p.answering, "thinking_done": p.thinking_done}
        self.trace.extra = {
            "summary_tokens": sum(p.summary_tokens for p in self.paths),
            "dropped_tokens": sum(p.dropped for p in self.paths),
            "exchanges": sum(1 for rec in self.trace.rounds if any(rec["peers"].values())),
            "opens_thinking": self.opens_thinking,
        }
        return finish(self.trace, started)

    def round(self, r: int) -> None:
        cfg, cost = self.config, self.trace.cost
        rec: dict = {"round": r, "phase": "decode", "tokens": {}, "dropped": {}, "summary_tokens": {}, "peers": {},
                     "nudged": [], "prefill_computed": 0, "prefill_reused": 0, "injected": 0, "trims": []}
        t_round = time.perf_counter()

        # 1. Decode: every path that is not done continues in one batched call.
        requests, decoding = [], []
        for p in self.paths:
            if p.done:
                continue
            final = p.answering or p.thinking_done
            left = cfg.budget - p.decoded - (0 if final else cfg.answer_reserve)
            n = min(left if final else min(cfg.interval, left), self.room(p))
            if n <= 0:
                p.done, p.branch.finish_reason = True, p.branch.finish_reason or "length"
                continue
            requests.append(Request(self.prompt + p.context, cfg.sampling(p.branch.index, n), slot=p.slot))
            decoding.append(p)
        if decoding and all(p.answering or p.thinking_done for p in decoding):
            rec["phase"] = "answer"
        t0 = time.perf_counter()
        completions = self.engine.generate(requests, progress=self.report(rec["phase"], r, decoding)) if requests else []
        rec["decode_s"] = time.perf_counter() - t0
        cost.decode_s += rec["decode_s"]
        self.trace.cost.add_prefill(completions, rec)

        exchange, chunks = [], {}
        for p, c in zip(decoding, completions):
            ids = list(c.token_ids)
            p.context += ids
            p.generated += ids
            p.decoded += len(ids)
            cost.generated_tokens += len(ids)
            rec["tokens"][p.branch.index] = len(ids)
            text = self.engine.detokenize(ids)
            p.segments.append({"kind": "generated", "round": r, "text": text})
            if c.finish_reason in ("eos", "stop") or p.answering or p.thinking_done:
                p.done, p.branch.finish_reason = True, c.finish_reason
                continue
            if THINK_CLOSE in text:
                p.thinking_done = True  # it closed its reasoning itself: let it write the answer
            elif cfg.budget - cfg.answer_reserve - p.decoded > 0 and self.room(p) > 0:
                exchange.append(p)
                chunks[p.branch.index] = ids
            elif cfg.answer_reserve > 0 and self.room(p) > 0:
                self.nudge(p, r, rec)
            else:
                p.done, p.branch.finish_reason = True, "length"

        # 2. Exchange: trim, summarise, route, append the peers' summaries.
        rec["exchanged"] = []
        if len(exchange) >= 2:
            self.exchange(exchange, chunks, r, rec)
        rec["wall_s"] = time.perf_counter() - t_round
        self.trace.rounds.append(rec)

    # ------------------------------------------------------------------ steps
    def nudge(self, p: _Path, r: int, rec: dict) -> None:
        text = separator(self.tail_text(p)) + NUDGE + "\n"
        if self.opens_thinking:
            text += THINK_CLOSE + "\n\n"
        ids = self.engine.tokenize(text, special=True)
        if self.room(p, len(ids)) <= 0:
            p.done, p.branch.finish_reason = True, "length"
            rec["trims"].append({"branch": p.branch.index, "nudge_skipped": "context"})
            return
        p.answering = True
        rec["nudged"].append(p.branch.index)
        self.inject(p, ids, rec, "nudge", r)

    def trim(self, p: _Path, chunk: list[int], r: int, rec: dict) -> None:
        text = self.engine.detokenize(chunk)
        kept_chars = len(trim_partial_paragraph(text, self.config.trim_min_keep))
        lo, hi = 0, len(chunk)  # the longest token prefix whose text fits in the kept characters
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self.engine.detokenize(chunk[:mid])) <= kept_chars:
                lo = mid
            else:
                hi = mid - 1
        drop = len(chunk) - lo
        rec["dropped"][p.branch.index] = drop
        if not drop:
            return
        del p.context[-drop:]
        del p.generated[-drop:]
        p.dropped += drop
        p.segments[-1]["text"] = self.engine.detokenize(chunk[:lo])
        p.segments.append({"kind": "dropped", "round": r, "text": self.engine.detokenize(chunk[lo:])})

    def exchange(self, paths: list[_Path], chunks: dict[int, list[int]], r: int, rec: dict) -> None:
        cfg, cost = self.config, self.trace.cost
        for p in paths:
            self.trim(p, chunks[p.branch.index], r, rec)

        # Summaries, on each path's own slot: only the instruction is prefilled.
        requests, asked, instructions = [], [], []
        for p in paths:
            ids = self.engine.tokenize(separator(self.tail_text(p)) + SUMMARY_PROMPT + "\n" + SUMMARY_OPEN + "\n",
                                       special=False)
            room = self.room(p, len(ids))
            if room <= 0:
                rec["trims"].append({"branch": p.branch.index, "summary_skipped": "context"})
                continue
            params = cfg.sampling(p.branch.index, min(cfg.summary_max_tokens, room), stop=(SUMMARY_CLOSE,))
            params = params.but(seed=params.seed + 500_000 + r)
            requests.append(Request(self.prompt + p.context + ids, params, slot=p.slot))
            asked.append(p)
            instructions.append(ids)
        t0 = time.perf_counter()
        completions = self.engine.generate(requests, progress=self.report("summary", r)) if requests else []
        rec["summary_s"] = time.perf_counter() - t0
        cost.extraction_s += rec["summary_s"]
        self.trace.cost.add_prefill(completions, rec)

        texts, units = [], []
        for p, ids, c in zip(asked, instructions, completions):
            self.inject(p, ids, rec, "summary_prompt", r)
            p.context += c.token_ids
            p.summary_tokens += c.n_tokens
            rec["summary_tokens"][p.branch.index] = c.n_tokens
            summary = c.text.strip()
            p.segments.append({"kind": "summary", "round": r, "text": self.engine.detokenize(c.token_ids)})
            if c.finish_reason != "stop":  # cut by the limit or ended: close the block ourselves
                close = ("" if c.text.endswith("\n") else "\n") + SUMMARY_CLOSE
                self.inject(p, self.engine.tokenize(close, special=False), rec, "summary_close", r)
            p.summaries.append({"round": r, "text": summary})
            texts.append(summary)
            units.append(self.engine.tokenize(summary, special=False) if summary else [])

        # Routing on the summaries' tokens (same similarity, ~4x shorter than characters).
        if len(asked) < 2:
            return
        matrix = similarity_matrix(units)
        chosen = route(units, cfg.peers, cfg.routing, self.route_rng, matrix)
        rec["exchanged"] = [p.branch.index for p in asked]
        rec["similarity"] = [[round(x, 4) for x in row] for row in matrix]
        for p, picks in zip(asked, chosen):
            need = min(cfg.interval, cfg.budget - p.decoded)
            ids: list[int] = []
            dropped: list[int] = []
            while picks:
                ids = self.engine.tokenize(separator(self.tail_text(p)) + render_peer_block([texts[j] for j in picks]),
                                           special=False)
                if self.room(p, len(ids)) >= need:
                    break
                dropped.insert(0, asked[picks.pop()].branch.index)
            if dropped:
                rec["trims"].append({"branch": p.branch.index, "dropped_peers": dropped})
            peers = [asked[j].branch.index for j in picks]
            rec["peers"][p.branch.index] = peers
            if peers:
                p.received[r] = peers
                self.inject(p, ids, rec, "peers", r, peers=peers)


def run_leap(
    engine: Engine,
    problem: str,
    config: LeaPConfig | None = None,
    reference: str | None = None,
    progress: ProgressCallback | None = None,
) -> Result:
    return LeaPRun(engine, problem, config or LeaPConfig(), reference, progress).run()
