"""Collaborative Parallel Thinking: branches decode in lock-step rounds and share verified notes.

Each round: every active branch decodes a chunk; the same model extracts notes from each branch;
notes are deduplicated into a shared pool; the schedule measures how much new information the
round produced and decides when broadcasting starts and when branches just finish.

Two cost-saving options against the paper's layout, measured side by side in the trace:
- `placement="tail"` appends broadcasts inside the branch's reasoning, so the cached prefix stays
  valid; `"head"` (the paper's) rewrites a block at the start of the context every round.
- `extraction="fork"` writes notes on the branch's own cached sequence (the instruction is appended,
  the notes decoded, and that tail is dropped from the cache before the branch resumes, so the
  branch never sees it); `"fresh"` (the paper's) re-reads the whole transcript in a new conversation.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import asdict, dataclass, field

from ..engines.base import Completion, Engine, Request, SamplingParams
from ..engines.chat import THINK_CLOSE
from ..prompts import chat_ids, question_messages
from ..sharing import (
    BROADCAST,
    BROADCAST_RULES,
    FINALIZE,
    NOTES_CLOSE,
    NOTES_OPEN,
    Note,
    PoolConfig,
    ScheduleConfig,
    SharedPool,
    SharingSchedule,
    extraction_instruction,
    fresh_extraction_messages,
    load_default_embedder,
    parse_notes,
    render_broadcast,
    select_novel,
    select_randomk,
)
from .base import Branch, MethodConfig, ProgressCallback, Result, Trace, config_dict, finish, model_info

PLACEMENTS = ("tail", "head")
EXTRACTIONS = ("fork", "fresh")
SELECTIONS = ("novel", "randomk")


@dataclass(frozen=True)
class CPTConfig(MethodConfig):
    """CPT settings. Defaults suit a small CPU model; `PAPER_SETTINGS` holds the paper's scale."""

    chunk_tokens: int = 192  # T: tokens per branch per round
    placement: str = "tail"
    extraction: str = "fork"
    selection: str = "novel"
    broadcast_k: int = 512  # entries a branch receives per broadcast, at most
    schedule: bool = True  # False: broadcast from round 0 and never finalize early
    tau_start: float = 0.40
    tau_stop: float = 0.10
    extract_max_tokens: int = 160  # the paper allows 500
    extract_temperature: float = 0.3
    extract_top_p: float = 0.95
    max_notes: int = 5
    pool_max: int = 10_000
    cosine_threshold: float = 0.75
    embeddings: bool = True  # cosine dedup with all-MiniLM-L6-v2 when installed

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in (("placement", PLACEMENTS), ("extraction", EXTRACTIONS), ("selection", SELECTIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got '{getattr(self, name)}'")
        for name in ("chunk_tokens", "broadcast_k", "extract_max_tokens", "max_notes", "pool_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.tau_stop <= self.tau_start:
            raise ValueError(f"need 0 <= tau_stop <= tau_start, got tau_stop={self.tau_stop}, tau_start={self.tau_start}")


# The paper's scale (Qwen3 thinking models on GPUs), for runs on a scaled-out engine.
PAPER_SETTINGS = dict(chunk_tokens=2048, budget=38_912, extract_max_tokens=500, placement="head",
                      extraction="fresh", selection="randomk", broadcast_k=512)


@dataclass
class _BranchState:
    branch: Branch
    slot: str
    context: list[int] = field(default_factory=list)  # everything after the prompt: generated + injected
    generated: list[int] = field(default_factory=list)  # the model's own tokens only
    segments: list[dict] = field(default_factory=list)  # for the viewer: generated / broadcast pieces
    notes: list[Note] = field(default_factory=list)  # what this branch contributed, as extracted
    seen: set[int] = field(default_factory=set)  # pool ids this branch has been shown
    head_block: str = ""  # head placement: the block currently at the start of its context
    done: bool = False
    thinking_done: bool = False  # passed `</think>`: no more sharing, just finish
    rules_shown: bool = False
    rng: random.Random = field(default_factory=random.Random)

    @property
    def used(self) -> int:
        return len(self.generated)


class CPTRun:
    """One question solved with CPT. A class because a run has a lot of state; use `run_cpt`."""

    def __init__(self, engine: Engine, problem: str, config: CPTConfig, reference: str | None,
                 progress: ProgressCallback | None):
        self.engine, self.problem, self.config, self.progress = engine, problem, config, progress
        self.trace = Trace("cpt", problem, config_dict(config), model_info(engine), reference=reference)
        embedder = load_default_embedder() if config.embeddings else None
        self.pool = SharedPool(PoolConfig(config.pool_max, config.cosine_threshold, config.seed), embedder)
        self.schedule = SharingSchedule(ScheduleConfig(enabled=config.schedule, tau_start=config.tau_start,
                                                       tau_stop=config.tau_stop))
        run_id = uuid.uuid4().hex[:8]
        self.states = [
            _BranchState(Branch(i, config.sampling(i, 1).seed), f"{run_id}/b{i}", rng=random.Random(config.seed * 1000 + i))
            for i in range(config.branches)
        ]
        self.trace.branches = [s.branch for s in self.states]
        self.think_close_ids = engine.tokenize(THINK_CLOSE, special=True)
        self.extraction_tokens = 0
        self.phase_changes: dict[str, int] = {}
        self._prompts: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ prompts
    def prompt_of(self, s: _BranchState) -> list[int]:
        """The branch's question prompt (with its head block, in head placement); memoised per block."""
        block = s.head_block if self.config.placement == "head" else ""
        ids = self._prompts.get(block)
        if ids is None:
            system = self.config.system_prompt or ""
            if block:
                system = (system + "\n\n" if system else "") + block
            ids = self._prompts[block] = chat_ids(self.engine, question_messages(self.problem, system or None))
        return ids

    def room(self, s: _BranchState, extra: int = 0) -> int:
        """Tokens the branch may still generate within its budget and the context window."""
        return min(self.config.budget - s.used, self.engine.n_ctx - 1 - len(self.prompt_of(s)) - len(s.context) - extra)

    # ------------------------------------------------------------------ the loop
    def run(self) -> Result:
        started = time.perf_counter()
        cost = self.trace.cost
        cost.initial_prompt_tokens = sum(len(self.prompt_of(s)) for s in self.states)
        try:
            round_ = 0
            while any(not s.done for s in self.states):
                self.round(round_)
                round_ += 1
        finally:
            for s in self.states:
                self.engine.release(s.slot)
        for s in self.states:
            s.branch.token_ids = s.generated
            s.branch.text = self.engine.detokenize(s.generated)
            s.branch.extra = {"segments": s.segments, "notes": [asdict(n) for n in s.notes],
                              "received": sorted(s.seen), "thinking_done": s.thinking_done}
        self.trace.extra = {
            "pool": [e.to_dict() for e in self.pool.entries],
            "schedule": [st.to_dict() for st in self.schedule.steps],
            "phase_changes": self.phase_changes,
            "extraction_tokens": self.extraction_tokens,
            "embeddings": self.pool.uses_embeddings,
        }
        return finish(self.trace, started)

    def round(self, r: int) -> None:
        cfg, cost = self.config, self.trace.cost
        phase = self.schedule.phase
        rec: dict = {"round": r, "phase": phase, "prefill_computed": 0, "prefill_reused": 0, "injected": 0,
                     "trims": []}
        t_round = time.perf_counter()

        # 1. Chunk decode: every active branch continues in one batched call.
        active = [s for s in self.states if not s.done]
        requests, decoding = [], []
        for s in active:
            room = self.room(s)
            if room <= 0:
                s.done = True
                s.branch.finish_reason = s.branch.finish_reason or "length"
                continue
            n = room if phase == FINALIZE else min(cfg.chunk_tokens, room)
            requests.append(Request(self.prompt_of(s) + s.context, cfg.sampling(s.branch.index, n), slot=s.slot))
            decoding.append(s)
        t0 = time.perf_counter()
        completions = self.engine.generate(requests, progress=self._progress(r, phase, decoding)) if requests else []
        rec["decode_s"] = time.perf_counter() - t0
        cost.decode_s += rec["decode_s"]
        self.trace.cost.add_prefill(completions, rec)
        rec["tokens"] = {s.branch.index: c.n_tokens for s, c in zip(decoding, completions)}
        for s, c in zip(decoding, completions):
            self._absorb(s, c, r, last_round=phase == FINALIZE)

        # 2-4. Extract, deduplicate, schedule — only while sharing can still matter.
        sharing = phase != FINALIZE and any(not s.done for s in self.states)
        extract_from = [s for s in decoding if not s.thinking_done] if sharing else []
        new_entries = 0
        if extract_from:
            t0 = time.perf_counter()
            found = self.extract(extract_from, rec)
            rec["extraction_s"] = time.perf_counter() - t0
            cost.extraction_s += rec["extraction_s"]
            t0 = time.perf_counter()
            added = self.pool.add_round(found, r)
            rec["dedup_s"] = time.perf_counter() - t0
            rec["notes_extracted"], new_entries = added.extracted, added.new_entries
            rec["new_entries"], rec["duplicates"] = added.new_ids, added.duplicate_ids
            step = self.schedule.record(new_entries, cfg.chunk_tokens)
            rec["ig"], rec["d"] = step.ig, step.d
            if step.changed:
                self.phase_changes[step.phase_after] = r
        rec["pool_size"] = len(self.pool)
        rec["phase_after"] = self.schedule.phase

        # 5. Broadcast for the next round.
        rec["broadcast"] = {}
        if self.schedule.phase == BROADCAST and sharing:
            self.broadcast(r, rec)
        rec["wall_s"] = time.perf_counter() - t_round
        self.trace.rounds.append(rec)

    def _progress(self, r: int, phase: str, decoding: list[_BranchState]):
        if self.progress is None:
            return None
        base = {s.branch.index: s.used for s in self.states}

        def report(counts):
            tokens = dict(base)
            for s, n in zip(decoding, counts):
                tokens[s.branch.index] = s.used + n
            self.progress({"phase": phase, "round": r, "tokens": [tokens[i] for i in sorted(tokens)],
                           "pool": len(self.pool), "budget": self.config.budget})

        return report

    def _absorb(self, s: _BranchState, c: Completion, r: int, last_round: bool) -> None:
        """Add a decoded chunk to a branch; cut at `</think>` so the answer is written next round."""
        ids = list(c.token_ids)
        cut = _find(ids, self.think_close_ids) if self.think_close_ids and not s.thinking_done else -1
        if cut >= 0 and not last_round and c.finish_reason != "eos" and self.config.budget - s.used - cut > 0:
            ids = ids[:cut]
            s.thinking_done = True
            s.segments.append({"kind": "cut", "round": r, "text": THINK_CLOSE})
        elif cut >= 0:
            s.thinking_done = True
        s.context += ids
        s.generated += ids
        s.segments.append({"kind": "generated", "round": r, "text": self.engine.detokenize(ids)})
        self.trace.cost.generated_tokens += len(ids)
        if c.finish_reason in ("eos", "stop") and len(ids) == len(c.token_ids):
            s.done, s.branch.finish_reason = True, c.finish_reason
        elif s.used >= self.config.budget:
            s.done, s.branch.finish_reason = True, "length"

    # ------------------------------------------------------------------ extraction
    def extract(self, states: list[_BranchState], rec: dict) -> list[tuple[int, Note]]:
        cfg, cost = self.config, self.trace.cost
        params = SamplingParams(max_tokens=cfg.extract_max_tokens, temperature=cfg.extract_temperature,
                                top_p=cfg.extract_top_p, top_k=cfg.top_k, stop=(NOTES_CLOSE,))
        requests, asked = [], []
        for s in states:
            seeded = params.but(seed=cfg.seed * 1000 + s.branch.index + 500_000 + len(self.trace.rounds))
            if cfg.extraction == "fork":
                instruction = self.engine.tokenize(
                    "\n\n" + extraction_instruction(s.notes, cfg.max_notes) + "\n" + NOTES_OPEN + "\n", special=False)
                injected = len(instruction)
                # Extraction tokens are not part of the branch's budget: only the context window limits them.
                room = self.engine.n_ctx - 1 - len(self.prompt_of(s)) - len(s.context) - injected
                if room <= 0:
                    rec["trims"].append({"branch": s.branch.index, "extraction_skipped": "context"})
                    continue
                requests.append(Request(self.prompt_of(s) + s.context + instruction,
                                        seeded.but(max_tokens=min(cfg.extract_max_tokens, room)), slot=s.slot))
            else:
                transcript = self.engine.detokenize(s.generated)
                messages = fresh_extraction_messages(self.problem, transcript, s.notes, cfg.max_notes)
                prompt = chat_ids(self.engine, messages) + self.engine.tokenize(NOTES_OPEN + "\n", special=False)
                injected = max(0, len(prompt) - len(s.generated))
                room = self.engine.n_ctx - 1 - len(prompt)
                if room <= 0:
                    rec["trims"].append({"branch": s.branch.index, "extraction_skipped": "context"})
                    continue
                requests.append(Request(prompt, seeded.but(max_tokens=min(cfg.extract_max_tokens, room))))
            asked.append(s)
            rec["injected"] += injected
            cost.injected_tokens += injected
        # Progress while notes are written too: the display stays live and a cancelled run stops here.
        completions = self.engine.generate(requests, progress=self._progress(rec["round"], "extract", []))
        self.trace.cost.add_prefill(completions, rec)
        found = []
        rec["extracted_by_branch"] = {}
        for s, c in zip(asked, completions):
            self.extraction_tokens += c.n_tokens
            notes = parse_notes(c.text, finished=c.finish_reason in ("stop", "eos"), max_notes=cfg.max_notes)
            s.notes += notes
            found += [(s.branch.index, n) for n in notes]
            rec["extracted_by_branch"][s.branch.index] = len(notes)
        return found

    # ------------------------------------------------------------------ broadcast
    def broadcast(self, r: int, rec: dict) -> None:
        cfg, cost = self.config, self.trace.cost
        entries = self.pool.entries
        for s in self.states:
            if s.done or s.thinking_done:
                continue
            if cfg.selection == "novel":
                chosen = select_novel(entries, s.branch.index, cfg.broadcast_k, self.engine.detokenize(s.generated), s.seen)
            elif cfg.placement == "tail":  # tail appends: only entries the branch has not been shown
                chosen = select_randomk([e for e in entries if e.id not in s.seen], s.branch.index, cfg.broadcast_k, s.rng)
            else:
                chosen = select_randomk(entries, s.branch.index, cfg.broadcast_k, s.rng)
            if cfg.placement == "tail" and not chosen:
                rec["broadcast"][s.branch.index] = 0
                continue
            chosen, dropped, ids = self._fit(s, chosen)
            if dropped:
                rec["trims"].append({"branch": s.branch.index, "dropped": dropped})
            rec["broadcast"][s.branch.index] = len(chosen)
            if not chosen and cfg.placement == "tail":
                continue
            if cfg.placement == "tail":
                s.context += ids
                s.rules_shown = True
            else:
                s.head_block = self._block(chosen, rules=True) if chosen else ""
            if chosen:
                s.segments.append({"kind": "broadcast", "round": r, "ids": [e.id for e in chosen],
                                   "text": self.engine.detokenize(ids)})
            rec["injected"] += len(ids)
            cost.injected_tokens += len(ids)
            s.seen.update(e.id for e in chosen)
            self.pool.mark_received(s.branch.index, [e.id for e in chosen])

    def _block(self, chosen, rules: bool) -> str:
        return (BROADCAST_RULES + "\n" if rules else "") + render_broadcast(chosen)

    def _render_ids(self, s: _BranchState, chosen) -> list[int]:
        if self.config.placement == "tail":
            return self.engine.tokenize("\n\n" + self._block(chosen, rules=not s.rules_shown) + "\n\n", special=False)
        return self.engine.tokenize(self._block(chosen, rules=True), special=False)

    def _fit(self, s: _BranchState, chosen):
        """Trim the oldest entries until the broadcast and one more chunk fit the context window."""
        chosen = list(chosen)
        dropped: list[int] = []
        need = min(self.config.chunk_tokens, self.config.budget - s.used)
        while chosen:
            ids = self._render_ids(s, chosen)
            if self.config.placement == "tail":
                fits = len(self.prompt_of(s)) + len(s.context) + len(ids) + need < self.engine.n_ctx
            else:
                base = len(self.prompt_of(s)) - (len(self.engine.tokenize(s.head_block, special=False)) if s.head_block else 0)
                fits = base + len(ids) + len(s.context) + need + 8 < self.engine.n_ctx
            if fits:
                return chosen, dropped, ids
            dropped.append(chosen.pop(0).id)
        return [], dropped, []


def _find(haystack: list[int], needle: list[int]) -> int:
    n = len(needle)
    for i in range(len(haystack) - n + 1):
        if haystack[i : i + n] == needle:
            return i
    return -1


def run_cpt(
    engine: Engine,
    problem: str,
    config: CPTConfig | None = None,
    reference: str | None = None,
    progress: ProgressCallback | None = None,
) -> Result:
    return CPTRun(engine, problem, config or CPTConfig(), reference, progress).run()
