"""Collaborative Parallel Thinking: the controller on a scripted fake engine, and once on the tiny real model."""

from __future__ import annotations

import pytest
from fakes import CPTScript, FakeEngine, branch_of_slot, is_extraction

from collabthink.engines.chat import THINK_CLOSE
from collabthink.methods.cpt import CPTConfig, run_cpt
from collabthink.prompts import chat_ids, question_messages
from collabthink.sharing import BROADCAST_RULES, SHARED_OPEN

PROBLEM = "What is 2 + 2?"
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def fact(i: int) -> str:
    """Distinct note texts that text-only dedup never merges."""
    return f"fact {WORDS[i % 26]} {WORDS[i // 26]} holds"


def cfg(**kw) -> CPTConfig:
    base = dict(branches=2, budget=200, chunk_tokens=40, embeddings=False, extract_max_tokens=400)
    base.update(kw)
    return CPTConfig(**base)


def run(config: CPTConfig, script: CPTScript, n_ctx: int = 100_000):
    engine = FakeEngine(script, n_ctx=n_ctx)
    return run_cpt(engine, PROBLEM, config), engine


def decodes(engine: FakeEngine, branch: int):
    """(request, completion) of a branch's decode calls, in order."""
    return [(r, c) for r, c in engine.log() if branch_of_slot(r.slot) == branch and not is_extraction(r, engine)]


def extractions(engine: FakeEngine, branch: int | None = None):
    return [(r, c) for r, c in engine.log()
            if is_extraction(r, engine) and (branch is None or branch_of_slot(r.slot) == branch)]


def prompt_len(engine: FakeEngine) -> int:
    return len(chat_ids(engine, question_messages(PROBLEM)))


# ------------------------------------------------------------------------------------ the fake itself


def test_fake_engine_behaves_like_a_prefix_cached_engine():
    from collabthink.engines.base import Engine, Request, SamplingParams

    replies = iter(["hello world", "abc</notes>rest", "short"])
    engine = FakeEngine(lambda r, e: next(replies), n_ctx=64)
    assert isinstance(engine, Engine)
    assert engine.detokenize(engine.tokenize("x <|im_end|> é")) == "x <|im_end|> é"
    p = engine.tokenize("prompt")
    a = engine.generate([Request(p, SamplingParams(max_tokens=5), slot="s")])[0]
    assert (a.text, a.finish_reason, a.prompt_computed, a.prompt_reused) == ("hello", "length", 6, 0)
    b = engine.generate([Request(p + a.token_ids, SamplingParams(max_tokens=50, stop=("</notes>",)), slot="s")])[0]
    assert (b.text, b.finish_reason, b.n_tokens) == ("abc", "stop", 11)
    assert (b.prompt_reused, b.prompt_computed) == (10, 1)  # the last sampled token was never cached
    c = engine.generate([Request(p, SamplingParams(max_tokens=50))])[0]
    assert (c.text, c.finish_reason, c.prompt_reused) == ("short", "eos", 0)
    assert len(engine.calls) == 3 and engine.calls[1].requests[0].prompt == p + a.token_ids


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("options, field", [
    (dict(placement="middle"), "placement"),
    (dict(extraction="copy"), "extraction"),
    (dict(selection="best"), "selection"),
    (dict(tau_start=0.2, tau_stop=0.3), "tau_stop"),
    (dict(chunk_tokens=0), "chunk_tokens"),
])
def test_config_rejects_bad_values_by_name(options, field):
    with pytest.raises(ValueError, match=field):
        CPTConfig(**options)


# ------------------------------------------------------------------------------------ schedule


def test_schedule_phases_follow_new_entries_and_finalize_in_one_call():
    # New entries per round: 4, 4, 4, 2, 1, 0, 0 (T = 40). Round 3 also re-finds a round-0 note and
    # round 5 only re-finds one: duplicates are extracted notes but not new entries.
    #   D3 = (4+4+2)/12 = 0.833, D4 = 7/12 = 0.583, D5 = 3/12 = 0.25 < 0.4 -> broadcast after round 5,
    #   D6 = 1/12 = 0.083 < 0.1 in a round that began in broadcast -> finalize after round 6.
    notes = {
        0: [[fact(0), fact(1)], [fact(4), fact(5)], [fact(8), fact(9)], [fact(12), fact(13)], [fact(14)], [], []],
        1: [[fact(2), fact(3)], [fact(6), fact(7)], [fact(10), fact(11)], [fact(0)], [], [fact(12)], []],
    }
    result, engine = run(cfg(budget=400), CPTScript(notes=notes))
    t = result.trace
    assert [r["phase"] for r in t.rounds] == ["explore"] * 6 + ["broadcast", "finalize"]
    assert t.extra["phase_changes"] == {"broadcast": 5, "finalize": 6}
    assert [len(r["new_entries"]) for r in t.rounds[:7]] == [4, 4, 4, 2, 1, 0, 0]
    assert [r["notes_extracted"] for r in t.rounds[:7]] == [4, 4, 4, 3, 1, 1, 0]
    assert [r["ig"] for r in t.rounds[:7]] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.025, 0, 0])
    assert [r["d"] for r in t.rounds[:3]] == [None] * 3
    assert [r["d"] for r in t.rounds[3:7]] == pytest.approx([10 / 12, 7 / 12, 3 / 12, 1 / 12])
    # Broadcast only at the end of round 5, seen by round 6's decode.
    assert [bool(r["broadcast"]) for r in t.rounds] == [False] * 5 + [True, False, False]
    for b in (0, 1):
        prompts = [engine.text(r.prompt) for r, _ in decodes(engine, b)]
        assert [SHARED_OPEN in p for p in prompts] == [False] * 6 + [True, True]
    # Finalize: the last call decodes both branches, each with its whole remaining budget (400 - 7 * 40).
    last = engine.calls[-1]
    assert [branch_of_slot(r.slot) for r in last.requests] == [0, 1]
    assert [r.params.max_tokens for r in last.requests] == [120, 120]
    assert not any(is_extraction(r, engine) for r in last.requests)
    assert sum(1 for call in engine.calls for r in call.requests if not is_extraction(r, engine)) == 16
    assert [b.n_tokens for b in result.branches] == [400, 400]
    assert "ig" not in t.rounds[7] and t.rounds[7]["broadcast"] == {}


def test_schedule_disabled_broadcasts_from_round_zero():
    notes = {0: [[fact(0)], [fact(1)]], 1: [[fact(2)], [fact(3)]]}
    result, engine = run(cfg(budget=120, schedule=False), CPTScript(notes=notes))
    t = result.trace
    assert [r["phase"] for r in t.rounds] == ["broadcast"] * 3
    assert t.extra["phase_changes"] == {}
    assert t.rounds[0]["broadcast"] == {0: 1, 1: 1}
    for b in (0, 1):
        assert [SHARED_OPEN in engine.text(r.prompt) for r, _ in decodes(engine, b)] == [False, True, True]


# ------------------------------------------------------------------------------------ layouts


def test_tail_broadcast_is_appended_to_the_branch_context():
    notes = {0: [[fact(0)], [fact(2)]], 1: [[fact(1)], [fact(3)]]}
    result, engine = run(cfg(schedule=False), CPTScript(notes=notes))
    (d0, c0), (d1, c1), (d2, _), *_ = decodes(engine, 0)
    # Ids: round 0 -> fact(0) #0 (branch 0), fact(1) #1; round 1 -> fact(2) #2, fact(3) #3.
    first = ("\n\n" + BROADCAST_RULES + "\n<shared_notes>\n- (#1, insight) " + fact(1)
             + "\n</shared_notes>\n\n")
    second = "\n\n<shared_notes>\n- (#3, insight) " + fact(3) + "\n</shared_notes>\n\n"  # rules only once
    assert d0.prompt == chat_ids(engine, question_messages(PROBLEM))
    assert d1.prompt == d0.prompt + c0.token_ids + engine.tokenize(first)
    assert d2.prompt == d1.prompt + c1.token_ids + engine.tokenize(second)
    assert engine.text(d2.prompt).count(BROADCAST_RULES) == 1
    # Only the appended tokens (and the last sampled one) are prefilled.
    _, c1_ = decodes(engine, 0)[1]
    assert c1_.prompt_computed <= len(first) + 1
    assert c1_.prompt_reused >= len(d0.prompt) + c0.n_tokens - 1
    assert result.trace.rounds[0]["injected"] > len(first)  # the broadcast and the extraction instructions


def test_head_broadcast_lives_in_the_system_message_and_is_replaced():
    notes = {0: [[fact(0)], [fact(2)], [fact(4)], [fact(6)]], 1: [[fact(1)], [fact(3)], [fact(5)], [fact(7)]]}
    result, engine = run(cfg(schedule=False, placement="head"), CPTScript(notes=notes))
    (d0, c0), (d1, c1), (d2, c2), *_ = decodes(engine, 0)

    def head(entry: int, text: str) -> str:
        block = BROADCAST_RULES + f"\n<shared_notes>\n- (#{entry}, insight) {text}\n</shared_notes>"
        return engine.render_chat(question_messages(PROBLEM, block))

    assert engine.text(d1.prompt) == head(1, fact(1)) + engine.text(c0.token_ids)
    assert engine.text(d2.prompt) == head(3, fact(3)) + engine.text(c0.token_ids + c1.token_ids)
    for r, _ in decodes(engine, 0)[1:]:
        assert engine.text(r.prompt).count(SHARED_OPEN + "\n") == 1 and engine.text(r.prompt).count(BROADCAST_RULES) == 1
    # The prefix changed inside the system message: the whole context is prefilled again.
    common = next(i for i, (x, y) in enumerate(zip(d1.prompt, d2.prompt)) if x != y)
    assert common < engine.text(d1.prompt).index("<|im_start|>user")
    assert c2.prompt_computed > c0.n_tokens + c1.n_tokens + len(fact(3))


# ------------------------------------------------------------------------------------ extraction


def test_fork_extraction_extends_the_branch_and_is_dropped_afterwards():
    notes = {0: [[fact(0)], [fact(2)], [fact(4)]], 1: [[fact(1)], [fact(3)], [fact(5)]]}
    script = CPTScript(notes=notes)
    result, engine = run(cfg(schedule=False), script)
    for b in (0, 1):
        slot = decodes(engine, b)[0][0].slot
        dec, ext = decodes(engine, b), extractions(engine, b)
        assert len(ext) == 4  # every round but the last (all done: nothing left to share with)
        for k, (r, _) in enumerate(ext):
            assert r.slot == slot
            before = dec[k][0].prompt + dec[k][1].token_ids
            assert r.prompt[: len(before)] == before
            tail = engine.text(r.prompt[len(before):])
            assert tail.startswith("\n\nPause.") and tail.endswith("<notes>\n")
            nxt = dec[k + 1][0].prompt
            assert nxt[: len(before)] == before  # the branch resumes from its own context
            assert "Pause." not in engine.text(nxt[len(before):])
        for r, _ in dec:
            assert not any(own in engine.text(r.prompt) for own in script.written[b])
    assert {e["author"] for e in result.trace.extra["pool"]} == {0, 1}


def test_fresh_extraction_is_a_separate_conversation_with_the_transcript():
    notes = {0: [[fact(0)], [fact(2)]], 1: [[fact(1)], [fact(3)]]}
    script = CPTScript(notes=notes)
    result, engine = run(cfg(schedule=False, extraction="fresh", budget=120), script)
    ext = extractions(engine)
    assert len(ext) == 4 and all(r.slot is None for r, _ in ext)
    for b in (0, 1):
        dec = decodes(engine, b)
        for k in range(2):
            transcript = "".join(engine.text(c.token_ids) for _, c in dec[: k + 1]).strip()
            mine = [engine.text(r.prompt) for r, _ in ext if f"<reasoning>\n{transcript}\n</reasoning>" in engine.text(r.prompt)]
            assert len(mine) == 1 and PROBLEM in mine[0]
        for r, _ in dec:
            text = engine.text(r.prompt)
            assert "<reasoning>" not in text and not any(own in text for own in script.written[b])
    pool = {e["text"]: e["author"] for e in result.trace.extra["pool"]}
    assert pool == {fact(0): 0, fact(1): 1, fact(2): 0, fact(3): 1}


def test_extraction_is_not_limited_by_the_branch_budget():
    # After round 0 only 40 generation tokens are left to the branch; its notes block is longer.
    notes = {0: [["a rather long note that does not fit in forty tokens at all"]], 1: []}
    result, engine = run(cfg(budget=80, schedule=False, extract_max_tokens=100), CPTScript(notes=notes))
    assert [r.params.max_tokens for r, _ in extractions(engine, 0)] == [100]
    assert [e["text"] for e in result.trace.extra["pool"]] == [notes[0][0][0]]
    assert result.trace.extra["extraction_tokens"] == sum(c.n_tokens for _, c in extractions(engine))


def test_skipped_fresh_extraction_keeps_notes_with_their_authors():
    # Branch 0's earlier notes are long, so from round 1 its fresh extraction prompt no longer fits.
    long = [f"long note {w} " + "detail " * 40 for w in ("alpha", "bravo", "charlie")]
    notes = {0: [long, [fact(0)], [fact(1)]], 1: [[fact(2)], [fact(3)], [fact(4)]]}
    result, engine = run(cfg(budget=160, extraction="fresh", extract_max_tokens=2000), CPTScript(notes=notes),
                         n_ctx=2000)
    rounds = result.trace.rounds
    assert rounds[1]["trims"] == [{"branch": 0, "extraction_skipped": "context"}]
    assert rounds[1]["extracted_by_branch"] == {1: 1}
    pool = {e["text"]: e["author"] for e in result.trace.extra["pool"]}
    assert pool[fact(3)] == 1 and fact(0) not in pool


# ------------------------------------------------------------------------------------ </think>


def test_think_close_cuts_the_chunk_and_ends_sharing_for_that_branch():
    chunks = {0: [None, "[b0.1] so x = 4. " + THINK_CLOSE + "The answer is 4, written too early.",
                  THINK_CLOSE + "\nThe answer is \\boxed{4}."]}
    chunks[0][0] = "[b0.0] " + "thinking " * 10
    notes = {b: [[fact(10 * b + k)] for k in range(5)] for b in (0, 1, 2)}
    result, engine = run(cfg(branches=3, schedule=False, budget=200), CPTScript(chunks=chunks, notes=notes))
    b0 = result.branches[0]
    assert b0.text == chunks[0][0][:40] + "[b0.1] so x = 4. " + THINK_CLOSE + "\nThe answer is \\boxed{4}."
    assert b0.text.count(THINK_CLOSE) == 1 and b0.finish_reason == "eos" and b0.answer == "4"
    assert b0.extra["thinking_done"] and any(seg["kind"] == "cut" and seg["round"] == 1 for seg in b0.extra["segments"])
    assert len(decodes(engine, 0)) == 3  # finished the round after the cut
    assert len(extractions(engine, 0)) == 1  # round 0 only
    rounds = result.trace.rounds
    assert 0 in rounds[0]["broadcast"]
    assert rounds[-1]["broadcast"] == {}  # all done: nothing left to share
    for r in rounds[1:-1]:
        assert 0 not in r["broadcast"]
        assert r["broadcast"].get(1, 0) > 0  # the others still share
    # The third decode resumes right after the cut: no broadcast in between.
    (d1, c1), (d2, _) = decodes(engine, 0)[1:3]
    assert d2.prompt == d1.prompt + engine.tokenize("[b0.1] so x = 4. ")


def test_think_close_in_a_chunk_that_ends_the_branch_is_kept():
    chunks = {0: ["[b0.0] 2 + 2 = 4. " + THINK_CLOSE + " \\boxed{4}"]}
    result, engine = run(cfg(schedule=False), CPTScript(chunks=chunks))
    b0 = result.branches[0]
    assert b0.text == chunks[0][0] and b0.finish_reason == "eos" and b0.extra["thinking_done"]
    assert not any(seg["kind"] == "cut" for seg in b0.extra["segments"])
    assert len(decodes(engine, 0)) == 1


# ------------------------------------------------------------------------------------ context limit


def test_context_limit_trims_oldest_entries_and_never_overflows():
    # Every branch writes two long notes in round 0: four entries of ~280 tokens each do not fit.
    def long(i: int) -> str:
        return f"{fact(i)} because " + "detail " * 35

    notes = {b: [[long(10 * b + k + 5 * j) for j in range(2)] for k in range(10)] for b in (0, 1, 2)}
    n_ctx = 1500
    result, engine = run(cfg(branches=3, schedule=False, budget=400, extract_max_tokens=800), CPTScript(notes=notes),
                         n_ctx=n_ctx)
    pool = [e["id"] for e in result.trace.extra["pool"]]
    assert len(pool) == 6
    trims = [(r["round"], t) for r in result.trace.rounds for t in r["trims"] if "dropped" in t]
    checked = 0
    for rnd, t in trims:
        b = result.branches[t["branch"]]
        assert t["dropped"] == sorted(t["dropped"])
        sent = [i for seg in b.extra["segments"] if seg["kind"] == "broadcast" and seg["round"] == rnd
                for i in seg["ids"]]
        assert all(d < i for d in t["dropped"] for i in sent)  # oldest first
        checked += bool(sent and t["dropped"])
    assert checked == 3  # round 0: every branch got a trimmed broadcast
    assert all(len(b.extra["received"]) == 3 for b in result.branches)
    # Later extractions no longer fit: skipped and recorded, not sent.
    assert {"branch": 0, "extraction_skipped": "context"} in result.trace.rounds[1]["trims"]
    for r, c in engine.log():
        assert len(r.prompt) + c.n_tokens <= n_ctx
    # The branches finish with what they have, at the context limit, below their budget.
    assert all(b.finish_reason == "length" and b.n_tokens < 400 for b in result.branches)


# ------------------------------------------------------------------------------------ accounting


def test_budget_and_prefill_accounting():
    chunks = {2: [None, None, "[b2.2] done: " + THINK_CLOSE + " the text after the marker is dropped", THINK_CLOSE + " \\boxed{4}"]}
    chunks[2][0], chunks[2][1] = "[b2.0] " + "x " * 30, "[b2.1] " + "y " * 30
    notes = {b: [[fact(10 * b + k), fact(10 * b + k + 5)] if k < 3 else [] for k in range(10)] for b in (0, 1, 2)}
    config = cfg(branches=3, budget=300)
    result, engine = run(config, CPTScript(chunks=chunks, notes=notes))
    t, cost = result.trace, result.trace.cost
    assert "broadcast" in t.extra["phase_changes"]  # the run did share
    assert any(seg["kind"] == "cut" for seg in result.branches[2].extra["segments"])  # and cut at </think>
    assert not engine.slots and sorted(set(engine.released)) == sorted({r.slot for r, _ in engine.log() if r.slot})
    assert sum(b.n_tokens for b in result.branches) == cost.generated_tokens > 0
    assert all(b.n_tokens <= config.budget for b in result.branches)
    assert [b.n_tokens for b in result.branches[:2]] == [300, 300]
    assert cost.initial_prompt_tokens == 3 * prompt_len(engine)
    assert sum(r["prefill_computed"] for r in t.rounds) == cost.prefill_computed
    assert sum(r["prefill_reused"] for r in t.rounds) == cost.prefill_reused
    assert sum(r["injected"] for r in t.rounds) == cost.injected_tokens
    log = engine.log()
    assert sum(c.prompt_computed for _, c in log) == cost.prefill_computed
    assert sum(c.prompt_reused for _, c in log) == cost.prefill_reused
    assert t.extra["extraction_tokens"] == sum(c.n_tokens for _, c in extractions(engine)) > 0
    for b in range(3):
        assert sum(r.params.max_tokens for r, _ in decodes(engine, b)) >= result.branches[b].n_tokens
    assert cost.prefill_computed <= 1.15 * (cost.initial_prompt_tokens + cost.injected_tokens)


def test_novel_selection_never_sends_own_or_already_sent_entries():
    notes = {
        0: [[fact(0)], [fact(3)], [fact(6)], [fact(8)]],
        1: [[fact(0)], [fact(4)], [], [fact(9)]],  # fact(0) re-found in the same round: not sent to 0 or 1
        2: [[fact(2)], [fact(5)], [fact(7)], []],
    }
    script = CPTScript(notes=notes)
    result, engine = run(cfg(branches=3, schedule=False, budget=240), script)
    pool = {e["id"]: e for e in result.trace.extra["pool"]}
    zero = next(i for i, e in pool.items() if e["text"] == fact(0))
    assert pool[zero]["found_by"] == [0, 1]
    for b in range(3):
        branch = result.branches[b]
        sent = [i for seg in branch.extra["segments"] if seg["kind"] == "broadcast" for i in seg["ids"]]
        assert sent and len(sent) == len(set(sent))
        assert all(b not in pool[i]["found_by"] for i in sent)
        for r, _ in decodes(engine, b):
            text = engine.text(r.prompt)
            assert not any(own in text for own in script.written[b])
            assert all(text.count(f"(#{i},") <= 1 for i in pool)
    assert zero in result.branches[2].extra["received"]


# ------------------------------------------------------------------------------------ real model


def test_cpt_on_the_tiny_real_model(engine):
    config = CPTConfig(branches=2, budget=96, chunk_tokens=32, extract_max_tokens=48, schedule=False, embeddings=False)
    result = run_cpt(engine, "What is 12 + 30?", config)
    t = result.trace
    assert t.rounds and [r["round"] for r in t.rounds] == list(range(len(t.rounds)))
    assert all(r["phase"] == "broadcast" for r in t.rounds)
    assert len(result.branches) == 2
    assert all(0 < b.n_tokens <= 96 and b.finish_reason in ("eos", "length", "stop") for b in result.branches)
    assert sum(b.n_tokens for b in result.branches) == t.cost.generated_tokens
    assert t.cost.initial_prompt_tokens > 0 and t.cost.prefill_computed > 0
    assert sum(r["prefill_computed"] for r in t.rounds) == t.cost.prefill_computed
    assert sum(r["prefill_reused"] for r in t.rounds) == t.cost.prefill_reused
    assert sum(r["injected"] for r in t.rounds) == t.cost.injected_tokens
    assert t.extra["extraction_tokens"] >= 0 and t.extra["embeddings"] is False
    assert {"pool", "schedule", "phase_changes"} <= set(t.extra)
    assert t.vote["total"] == 2
    assert not engine.slots  # every branch slot released


def test_note_writing_reports_progress_so_a_run_can_be_stopped_there():
    events = []
    engine = FakeEngine(CPTScript(notes={0: [[fact(0)]], 1: [[fact(1)]]}))
    run_cpt(engine, "What is 2 + 2?", cfg(budget=80), progress=events.append)
    extract = [e for e in events if e["phase"] == "extract"]
    assert extract and extract[0]["round"] == 0 and len(extract[0]["tokens"]) == 2

    class Stop(Exception):
        pass

    def stop_at_extraction(event):
        if event["phase"] == "extract":
            raise Stop

    with pytest.raises(Stop):
        run_cpt(FakeEngine(CPTScript(notes={0: [[fact(0)]], 1: [[fact(1)]]})), "What is 2 + 2?", cfg(budget=80),
                progress=stop_at_extraction)
