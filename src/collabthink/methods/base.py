"""What every method shares: its base config, budget accounting, the trace it emits and the result.

One trace format for all methods lets the evaluation harness, the report and the viewer treat
parallel sampling, DeepConf, LeaP and CPT alike.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Collection, Sequence

from ..answers import Vote, final_answer, majority_vote
from ..engines.base import Engine, SamplingParams
from ..grading import is_correct

ProgressCallback = Callable[[dict], None]


@dataclass(frozen=True)
class MethodConfig:
    """Settings common to every method. Subclasses add their own; defaults live here only."""

    branches: int = 4
    budget: int = 1024  # generated tokens per branch, everything included
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 20
    seed: int = 0
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.branches < 1:
            raise ValueError(f"branches must be >= 1, got {self.branches}: ask for at least one branch")
        if self.budget <= 0:
            raise ValueError(f"budget (max tokens) must be > 0, got {self.budget}: pass a positive token budget")
        SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)  # validates them

    def sampling(self, branch: int, max_tokens: int, **changes) -> SamplingParams:
        """Sampling for one branch: distinct seeds per branch, the same across methods."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed * 1000 + branch,
            **changes,
        )

    def context_tokens(self) -> int:
        """The context window a branch needs: the question prompt and the whole budget."""
        return self.budget + 1024

    @classmethod
    def from_options(cls, **options: Any) -> "MethodConfig":
        """Build from keyword options, rejecting unknown ones by name (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown option(s) for this method: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**options)


@dataclass
class Branch:
    """One reasoning path: everything it generated, and how it ended."""

    index: int
    seed: int | None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    answer: str | None = None
    correct: bool | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "token_ids"}
        d["tokens"] = self.n_tokens
        return d


@dataclass
class Cost:
    """Token and time accounting, identical for every method."""

    generated_tokens: int = 0
    initial_prompt_tokens: int = 0  # the branches' first prompts
    prefill_computed: int = 0  # prompt tokens the engine had to compute
    prefill_reused: int = 0  # prompt tokens served from its cache
    injected_tokens: int = 0  # tokens a method adds that the model has not seen (broadcasts, instructions)
    wall_s: float = 0.0
    decode_s: float = 0.0
    extraction_s: float = 0.0
    other_s: float = 0.0

    def add_completions(self, completions) -> None:
        for c in completions:
            self.generated_tokens += c.n_tokens
        self.add_prefill(completions)

    def add_prefill(self, completions, round_record: dict | None = None) -> None:
        """Prompt tokens computed vs reused, into the totals and, when given, a round's record."""
        for c in completions:
            self.prefill_computed += c.prompt_computed
            self.prefill_reused += c.prompt_reused
            if round_record is not None:
                round_record["prefill_computed"] += c.prompt_computed
                round_record["prefill_reused"] += c.prompt_reused


@dataclass
class Trace:
    """The full record of one run; JSON-serialisable through to_dict()."""

    method: str
    problem: str
    config: dict
    model: dict
    branches: list[Branch] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    vote: dict = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)
    reference: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "problem": self.problem,
            "reference": self.reference,
            "config": self.config,
            "model": self.model,
            "branches": [b.to_dict() for b in self.branches],
            "rounds": self.rounds,
            "vote": self.vote,
            "cost": asdict(self.cost),
            **self.extra,
        }


@dataclass
class Result:
    """What `solve` returns: the voted answer and everything behind it."""

    answer: str | None
    votes: dict[str, float]
    branches: list[Branch]
    trace: Trace
    correct: bool | None = None

    @property
    def wall_s(self) -> float:
        return self.trace.cost.wall_s

    def to_dict(self) -> dict:
        return {"answer": self.answer, "votes": self.votes, "correct": self.correct, "trace": self.trace.to_dict()}


def config_dict(config: Any) -> dict:
    return asdict(config) if is_dataclass(config) else dict(config)


def finish(
    trace: Trace,
    started: float,
    think_end: str | None = "</think>",
    weights: Sequence[float] | None = None,
    exclude: Collection[int] = (),
) -> Result:
    """Extract answers, vote, grade against the reference if known, and close the trace.

    By default every branch has one vote. A method with its own ballot passes `weights` (one per
    branch, in `trace.branches` order) and/or `exclude` (positions in `trace.branches` whose answers
    do not vote, e.g. branches stopped early); excluded branches still get their answer extracted
    and graded, and count in the vote's `total` but not in `valid`.
    """
    for b in trace.branches:
        if b.answer is None:
            b.answer = final_answer(b.text, think_end=think_end)
    excluded = set(exclude)
    vote: Vote = majority_vote([None if i in excluded else b.answer for i, b in enumerate(trace.branches)], weights)
    correct = None
    if trace.reference is not None:
        for b in trace.branches:
            b.correct = is_correct(b.answer, trace.reference)
        # The winner is some branch's spelling: reuse its grade rather than run math-verify again.
        correct = next((b.correct for b in trace.branches if vote.winner is not None and b.answer == vote.winner),
                       False)
    trace.vote = {"winner": vote.winner, "counts": vote.counts, "valid": vote.valid, "total": vote.total,
                  "correct": correct}
    if weights is not None:
        trace.vote["weights"] = [float(w) for w in weights]
    if excluded:
        trace.vote["excluded"] = sorted(excluded)
    trace.cost.wall_s = time.perf_counter() - started
    trace.cost.other_s = max(0.0, trace.cost.wall_s - trace.cost.decode_s - trace.cost.extraction_s)
    return Result(answer=vote.winner, votes=dict(vote.counts), branches=trace.branches, trace=trace, correct=correct)


def model_info(engine: Engine) -> dict:
    return dict(getattr(engine, "model_info", {"name": getattr(engine, "name", "unknown")}))
