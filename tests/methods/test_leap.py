"""LeaP (Learning from Peers): pure parts, the controller on the scripted fake, once on the tiny real model."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict

import pytest
from fakes import FakeEngine, branch_of_slot

from collabthink.engines.chat import THINK_CLOSE
from collabthink.methods.leap import (
    INVITATION,
    NUDGE,
    PEERS_CLOSE,
    PEERS_OPEN,
    SUMMARY_CLOSE,
    SUMMARY_OPEN,
    SUMMARY_PROMPT,
    LeaPConfig,
    levenshtein,
    render_peer_block,
    route,
    run_leap,
    similarity,
    trim_partial_paragraph,
)
from collabthink.methods.parallel import ParallelConfig, run_parallel
from collabthink.prompts import chat_ids, question_messages

PROBLEM = "What is 2 + 2?"
SUMMARY_TAIL = SUMMARY_OPEN + "\n"


# ------------------------------------------------------------------------------------ a LeaP script


def is_summary(r, engine) -> bool:
    return engine.detokenize(r.prompt[-len(SUMMARY_TAIL):]) == SUMMARY_TAIL


class LeaPScript:
    """`chunks[b][k]`: branch b's k-th decode text (then `thinking ...`); `summaries[b][k]` its k-th summary."""

    def __init__(self, chunks: dict | None = None, summaries: dict | None = None):
        self.chunks, self.summaries = chunks or {}, summaries or {}
        self.decodes: dict[int, int] = defaultdict(int)
        self.summarised: dict[int, int] = defaultdict(int)

    def __call__(self, r, engine) -> str:
        b = branch_of_slot(r.slot)
        if is_summary(r, engine):
            k = self.summarised[b]
            self.summarised[b] += 1
            items = self.summaries.get(b, [])
            text = items[k] if k < len(items) else f"path {b} summary {k}"
            return text + SUMMARY_CLOSE + "\nnever seen"
        k = self.decodes[b]
        self.decodes[b] += 1
        items = self.chunks.get(b, [])
        return items[k] if k < len(items) else "thinking " * 200


def cfg(**kw) -> LeaPConfig:
    base = dict(branches=2, budget=80, interval=40, answer_reserve=0, summary_max_tokens=200)
    base.update(kw)
    return LeaPConfig(**base)


def run(config: LeaPConfig, script: LeaPScript, n_ctx: int = 100_000, engine_cls=FakeEngine, **kw):
    engine = engine_cls(script, n_ctx=n_ctx)
    return run_leap(engine, PROBLEM, config, **kw), engine


def decodes(engine, b: int):
    return [(r, c) for r, c in engine.log() if branch_of_slot(r.slot) == b and not is_summary(r, engine)]


def summaries(engine, b: int | None = None):
    return [(r, c) for r, c in engine.log() if is_summary(r, engine) and (b is None or branch_of_slot(r.slot) == b)]


def tok(engine, text: str) -> list[int]:
    return engine.tokenize(text)


# ------------------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize("a, b, d", [
    ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("intention", "execution", 5), ("", "abc", 3),
    ("abc", "", 3), ("same", "same", 0), ("", "", 0), ([1, 2, 3, 4], [1, 3, 4, 5], 2), ("ab", "ba", 2),
])
def test_levenshtein_on_known_pairs(a, b, d):
    assert levenshtein(a, b) == d == levenshtein(b, a)


def test_similarity_is_normalised_by_the_longer_sequence():
    assert similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert similarity("abcd", "wxyz") == 0.0
    assert similarity("", "") == 1.0 and similarity("", "x") == 0.0
    assert similarity([7, 8], [7, 8]) == 1.0


# Summaries whose similarities are easy by hand (length 4, so sim = 1 - d / 4):
#   sim(0,1) = .75  sim(0,2) = .5  sim(0,3) = 0
#   sim(1,2) = .75  sim(1,3) = .25 sim(2,3) = .5
HAND = ["aaaa", "aaab", "aabb", "bbbb"]


@pytest.mark.parametrize("strategy, k, expected", [
    ("dispersed", 2, [[3, 2], [3, 0], [0, 3], [0, 1]]),
    ("clustered", 2, [[1, 2], [0, 2], [1, 0], [2, 1]]),
    ("hybrid", 2, [[1, 3], [0, 3], [1, 0], [2, 0]]),
    ("hybrid", 3, [[1, 3, 2], [0, 3, 2], [1, 0, 3], [2, 0, 1]]),
    ("dispersed", 1, [[3], [3], [0], [0]]),
    ("clustered", 9, [[1, 2, 3], [0, 2, 3], [1, 0, 3], [2, 1, 0]]),  # k > peers: everyone, best first
])
def test_route_on_given_summaries(strategy, k, expected):
    assert route(HAND, k, strategy) == expected


def test_random_route_is_seeded_and_never_picks_itself():
    summaries = [f"summary {i}" for i in range(8)]
    a = route(summaries, 3, "random", random.Random(5))
    assert a == route(summaries, 3, "random", random.Random(5))
    assert a != route(summaries, 3, "random", random.Random(6))
    assert all(len(p) == 3 == len(set(p)) and i not in p for i, p in enumerate(a))
    assert route(summaries[:2], 4, "random", random.Random(1)) == [[1], [0]]


def test_route_never_sends_empty_summaries():
    assert route(["abc", "", "abd", "xyz"], 2, "dispersed") == [[3, 2], [0, 2], [3, 0], [0, 2]]  # "" is 0-similar to all
    assert route(["abc", ""], 4, "clustered") == [[], [0]]
    with pytest.raises(ValueError, match="routing"):
        route(HAND, 2, "nearest")


@pytest.mark.parametrize("text, min_keep, kept", [
    ("First idea.\n\nSecond idea is half", 0.0, "First idea.\n\n"),
    ("First idea.\n\nSecond idea.\n\n", 0.5, "First idea.\n\nSecond idea.\n\n"),  # ends at a break: whole
    ("One.\n\nTwo.\n  \nThree is cut", 0.0, "One.\n\nTwo.\n  \n"),  # a blank line may hold spaces
    ("A long first paragraph here.\nmore of it\n\nx", 0.5, "A long first paragraph here.\nmore of it\n\n"),
    # The last blank line is before the minimum: fall back to a line break, then a sentence end.
    ("ab\n\nThe rest goes on.\nand on without end", 0.5, "ab\n\nThe rest goes on.\n"),
    ("ab\n\nThe rest goes on. And on without end", 0.5, "ab\n\nThe rest goes on."),
    ("We know x = 3.5 and y is 2. So x + y is", 0.5, "We know x = 3.5 and y is 2."),
    ("Done. All of it.", 0.5, "Done. All of it."),
    # No boundary at all past the minimum: keep everything.
    ("ab\n\nno break and no sentence end at all here", 0.5, "ab\n\nno break and no sentence end at all here"),
    ("", 0.5, ""),
])
def test_trim_partial_paragraph(text, min_keep, kept):
    assert trim_partial_paragraph(text, min_keep) == kept


def test_peer_block_layout():
    block = render_peer_block(["x is 4.", "first line\n  second   line"])
    assert block == f"{PEERS_OPEN}\nPeer 1: x is 4.\nPeer 2: first line second line\n{PEERS_CLOSE}\n{INVITATION}\n\n"


@pytest.mark.parametrize("options, field", [
    (dict(routing="nearest"), "routing"),
    (dict(interval=0), "interval"),
    (dict(peers=0), "peers"),
    (dict(summary_max_tokens=0), "summary_max_tokens"),
    (dict(answer_reserve=-1), "answer_reserve"),
    (dict(trim_min_keep=1.5), "trim_min_keep"),
    (dict(branches=0), "branches"),
])
def test_config_rejects_bad_values_by_name(options, field):
    with pytest.raises(ValueError, match=field):
        LeaPConfig(**options)


def test_a_reserve_beyond_a_small_budget_is_capped_at_a_quarter():
    assert LeaPConfig(budget=40).answer_reserve == 10
    assert LeaPConfig(budget=1024).answer_reserve == 64


def test_config_sizes_the_context_for_its_exchanges():
    c = LeaPConfig()  # 1024 budget, 64 reserve, 192 interval: 5 chunks, 4 exchanges, 3 peers of 4 paths
    assert c.exchanges() == 4
    assert c.context_tokens() == 1024 + 1024 + 4 * (128 + 256 * 4)
    assert LeaPConfig(branches=1).context_tokens() == 2048


# ------------------------------------------------------------------------------------ layout


def test_insertion_layout_and_only_new_tokens_are_prefilled():
    chunk0 = "I add 2 and 2 and get 4 here.\n\nNow check the sum again"  # 40 tokens end in "Now check"
    chunk1 = "Two plus two makes four. Let me verify it by counting"  # no blank line: back to "four."
    script = LeaPScript(chunks={0: [chunk0], 1: [chunk1]},
                        summaries={0: ["The sum is 4."], 1: ["I believe the answer is four."]})
    result, engine = run(cfg(), script)
    p = chat_ids(engine, question_messages(PROBLEM))
    kept = {0: "I add 2 and 2 and get 4 here.\n\n", 1: "Two plus two makes four."}
    instr = {0: tok(engine, SUMMARY_PROMPT + "\n" + SUMMARY_TAIL),
             1: tok(engine, "\n\n" + SUMMARY_PROMPT + "\n" + SUMMARY_TAIL)}
    own = {0: "The sum is 4.", 1: "I believe the answer is four."}
    for b, other in ((0, 1), (1, 0)):
        (d0, c0), (d1, c1) = decodes(engine, b)
        [(s, sc)] = summaries(engine, b)
        assert d0.prompt == p and c0.n_tokens == 40
        # The summary request: prompt + kept text + instruction, on the path's own slot.
        assert s.slot == d0.slot and s.prompt == p + tok(engine, kept[b]) + instr[b]
        assert (sc.prompt_computed, sc.prompt_reused) == (len(instr[b]), len(p) + len(kept[b]))
        assert s.params.stop == (SUMMARY_CLOSE,)
        # The next decode: ... + summary (through its closing tag) + peer block + invitation.
        block = tok(engine, "\n\n" + render_peer_block([own[other]]))
        assert d1.prompt == s.prompt + tok(engine, own[b] + SUMMARY_CLOSE) + block
        assert (c1.prompt_computed, c1.prompt_reused) == (len(block) + 1, len(d1.prompt) - len(block) - 1)
        text = engine.text(d1.prompt)
        assert text.count(PEERS_OPEN) == 1 and own[other] in text and text.count(own[b]) == 1
        assert result.branches[b].text == kept[b] + engine.text(c1.token_ids)
        assert result.branches[b].extra["summaries"] == [{"round": 0, "text": own[b]}]
        assert result.branches[b].extra["received"] == {0: [other]}
    rec = result.trace.rounds[0]
    assert rec["dropped"] == {0: 9, 1: 16} and rec["peers"] == {0: [1], 1: [0]}
    assert rec["summary_tokens"] == {0: len(own[0] + SUMMARY_CLOSE), 1: len(own[1] + SUMMARY_CLOSE)}
    blocks = sum(len("\n\n" + render_peer_block([own[o]])) for o in (0, 1))
    assert rec["injected"] == len(instr[0]) + len(instr[1]) + blocks
    assert [r["peers"] for r in result.trace.rounds[1:]] == [{}]
    assert [b.finish_reason for b in result.branches] == ["length", "length"]
    assert [b.extra["decoded_tokens"] for b in result.branches] == [80, 80]
    assert [b.n_tokens for b in result.branches] == [80 - 9, 80 - 16]


def test_a_summary_cut_by_its_limit_is_closed_by_the_controller():
    script = LeaPScript(summaries={0: ["a summary far longer than fifteen tokens"], 1: ["short"]})
    result, engine = run(cfg(summary_max_tokens=15), script)  # "short</summary>" is exactly 15
    (_, _), (d1, _) = decodes(engine, 0)
    text = engine.text(d1.prompt)
    assert SUMMARY_TAIL + "a summary far l\n" + SUMMARY_CLOSE + "\n\n" + PEERS_OPEN in text
    assert engine.text(decodes(engine, 1)[1][0].prompt).count(SUMMARY_CLOSE) == 2  # the instruction's + its own
    assert result.branches[1].extra["summaries"][0]["text"] == "short"
    assert "Peer 1: a summary far l\n" in engine.text(decodes(engine, 1)[1][0].prompt)
    assert result.trace.rounds[0]["summary_tokens"] == {0: 15, 1: 15}
    assert [s["kind"] for s in result.branches[0].extra["segments"]].count("summary_close") == 1
    assert [s["kind"] for s in result.branches[1].extra["segments"]].count("summary_close") == 0


@pytest.mark.parametrize("routing, expected", [
    ("clustered", {0: [1], 1: [0], 2: [0]}),
    ("dispersed", {0: [2], 1: [2], 2: [0]}),
])
def test_routing_decides_which_summary_each_path_reads(routing, expected):
    said = {0: "aaaa aaaa", 1: "aaaa aaab", 2: "zzzz zzzz"}
    script = LeaPScript(summaries={b: [s] for b, s in said.items()})
    result, engine = run(cfg(branches=3, peers=1, routing=routing), script)
    assert result.trace.rounds[0]["peers"] == expected
    for b, [peer] in expected.items():
        text = engine.text(decodes(engine, b)[1][0].prompt)
        assert f"Peer 1: {said[peer]}\n" in text and text.count("Peer ") == 1


def test_peers_that_do_not_fit_the_context_are_dropped_least_wanted_first():
    script = LeaPScript(summaries={b: [f"path {b} reached a partial result"] for b in range(3)})
    config = cfg(branches=3, peers=2)
    probe, probe_engine = run(config, LeaPScript(summaries=script.summaries))
    s0, _ = summaries(probe_engine, 0)[0]
    context = len(s0.prompt) + len(f"path 0 reached a partial result{SUMMARY_CLOSE}")
    one = len("\n\n" + render_peer_block(["path 1 reached a partial result"]))
    n_ctx = context + one + 40 + 1  # room for one peer and the next 40-token chunk, not two peers
    result, engine = run(config, script, n_ctx=n_ctx)
    rec = result.trace.rounds[0]
    assert rec["peers"] == {0: [1], 1: [0], 2: [0]}
    assert {t["branch"]: t["dropped_peers"] for t in rec["trims"]} == {0: [2], 1: [2], 2: [1]}
    for r, c in engine.log():
        assert len(r.prompt) + c.n_tokens <= n_ctx
    assert [b.extra["decoded_tokens"] for b in result.branches] == [80, 80, 80]


# ------------------------------------------------------------------------------------ ends of paths


def test_final_answer_nudge_after_the_last_exchange():
    answers = {b: ["thinking " * 10] * 3 + ["\\boxed{4}"] for b in (0, 1)}
    result, engine = run(cfg(budget=100, interval=30, answer_reserve=20), LeaPScript(chunks=answers))
    t = result.trace
    assert [r["phase"] for r in t.rounds] == ["decode", "decode", "decode", "answer"]
    assert [sorted(r["peers"]) for r in t.rounds] == [[0, 1], [0, 1], [], []]
    assert [r["nudged"] for r in t.rounds] == [[], [], [0, 1], []]
    for b in (0, 1):
        ds = decodes(engine, b)
        assert [r.params.max_tokens for r, _ in ds] == [30, 30, 20, 20]
        last, prev = ds[3][0], ds[2]
        assert last.prompt == prev[0].prompt + prev[1].token_ids + tok(engine, "\n\n" + NUDGE + "\n")
        assert all(NUDGE not in engine.text(r.prompt) for r, _ in ds[:3])
        assert len(summaries(engine, b)) == 2
        branch = result.branches[b]
        assert branch.answer == "4" and branch.finish_reason == "eos" and branch.extra["nudged"]
        assert branch.extra["decoded_tokens"] == 80 + len("\\boxed{4}")
    assert result.answer == "4"


def test_no_nudge_without_an_answer_reserve():
    result, engine = run(cfg(budget=100, interval=30, answer_reserve=0), LeaPScript())
    assert all(NUDGE not in engine.text(r.prompt) for r in engine.requests())
    assert [r.params.max_tokens for r, _ in decodes(engine, 0)] == [30, 30, 30, 10]
    assert [sorted(r["peers"]) for r in result.trace.rounds] == [[0, 1]] * 3 + [[]]
    assert not any(b.extra["nudged"] for b in result.branches)


class ThinkingFake(FakeEngine):
    """A thinking model: its generation prompt opens the reasoning block."""

    def render_chat(self, messages, add_generation_prompt=True):
        return super().render_chat(messages, add_generation_prompt) + ("<think>\n" if add_generation_prompt else "")


def test_nudge_closes_the_reasoning_of_a_thinking_model():
    answers = {b: ["thinking " * 10, "\\boxed{4}"] for b in (0, 1)}
    result, engine = run(cfg(budget=50, interval=30, answer_reserve=20), LeaPScript(chunks=answers),
                         engine_cls=ThinkingFake)
    (d0, c0), (d1, _) = decodes(engine, 0)
    assert d1.prompt == d0.prompt + c0.token_ids + tok(engine, "\n\n" + NUDGE + "\n" + THINK_CLOSE + "\n\n")
    assert result.trace.extra["opens_thinking"] and result.answer == "4"


def test_a_path_that_closes_its_reasoning_stops_exchanging_and_finishes():
    chunks = {0: ["2 + 2 = 4. " + THINK_CLOSE + " The answer is", " \\boxed{4} and nothing more"]}
    result, engine = run(cfg(branches=3, budget=200, interval=25, answer_reserve=20), LeaPScript(chunks=chunks))
    assert len(decodes(engine, 0)) == 2 and summaries(engine, 0) == []
    assert decodes(engine, 0)[1][0].params.max_tokens == 200 - 25  # the whole rest, reserve included
    assert result.branches[0].extra["thinking_done"] and result.branches[0].answer == "4"
    rounds = result.trace.rounds
    assert rounds[0]["peers"] == {1: [2], 2: [1]}
    assert all(0 not in r["peers"] and 0 not in sum(r["peers"].values(), []) for r in rounds)


def test_paths_that_end_leave_the_exchange_and_a_lone_path_just_decodes():
    chunks = {0: ["\\boxed{4}"], 2: ["thinking " * 5, "\\boxed{5}"]}
    result, engine = run(cfg(branches=3, budget=160), LeaPScript(chunks=chunks))
    rounds = result.trace.rounds
    assert rounds[0]["peers"] == {1: [2], 2: [1]}  # path 0 ended: two left, one peer each
    assert rounds[1]["peers"] == {} and rounds[1]["exchanged"] == []  # path 2 ended: nobody to exchange with
    assert [len(summaries(engine, b)) for b in range(3)] == [0, 1, 1]
    assert [b.finish_reason for b in result.branches] == ["eos", "length", "eos"]
    assert result.branches[1].extra["decoded_tokens"] == 160


# ------------------------------------------------------------------------------------ accounting


def test_budget_and_prefill_accounting_match_parallel():
    para = "A step of the work is written here.\n\n"
    chunks = {b: [(f"[b{b}.{k}] " + para * 6) for k in range(10)] for b in range(3)}
    chunks[2] = chunks[2][:2] + ["Found it: \\boxed{4}"]
    events = []
    config = cfg(branches=3, budget=300, interval=50, answer_reserve=40)
    result, engine = run(config, LeaPScript(chunks=chunks), progress=events.append)
    t, cost = result.trace, result.trace.cost
    decoded = [b.extra["decoded_tokens"] for b in result.branches]
    assert decoded[:2] == [300, 300] and 0 < decoded[2] < 300
    assert cost.generated_tokens == sum(decoded) == sum(b.n_tokens + b.extra["dropped_tokens"] for b in result.branches)
    assert t.extra["dropped_tokens"] > 0
    assert sum(sum(r["tokens"].values()) for r in t.rounds) == cost.generated_tokens
    for b in range(3):
        ds = decodes(engine, b)
        assert sum(c.n_tokens for _, c in ds) == decoded[b]
        assert all(r.params.max_tokens <= config.interval for r, _ in ds if NUDGE not in engine.text(r.prompt))
    assert t.extra["summary_tokens"] == sum(c.n_tokens for _, c in summaries(engine)) > 0
    assert t.extra["summary_tokens"] == sum(b.extra["summary_tokens"] for b in result.branches)
    # Prefill: per round, in total, and as the engine saw it.
    p = chat_ids(engine, question_messages(PROBLEM))
    assert cost.initial_prompt_tokens == 3 * len(p)
    log = engine.log()
    assert sum(r["prefill_computed"] for r in t.rounds) == cost.prefill_computed == sum(c.prompt_computed for _, c in log)
    assert sum(r["prefill_reused"] for r in t.rounds) == cost.prefill_reused == sum(c.prompt_reused for _, c in log)
    assert sum(r["injected"] for r in t.rounds) == cost.injected_tokens
    injected_kinds = ("summary_prompt", "summary_close", "peers", "nudge")
    assert cost.injected_tokens == sum(len(s["text"]) for b in result.branches for s in b.extra["segments"]
                                       if s["kind"] in injected_kinds) > 0
    # Appending keeps the cache: only the prompt once per path, the injected text and one token per call.
    assert cost.initial_prompt_tokens + cost.injected_tokens <= cost.prefill_computed
    assert cost.prefill_computed <= cost.initial_prompt_tokens + cost.injected_tokens + len(log)
    assert cost.decode_s > 0 and cost.extraction_s > 0 and cost.wall_s >= cost.decode_s + cost.extraction_s
    # Rounds, slots, progress.
    assert [r["round"] for r in t.rounds] == list(range(len(t.rounds)))
    assert not engine.slots and sorted(set(engine.released)) == sorted({r.slot for r, _ in log})
    assert {r.slot for r, _ in log} == {f"{log[0][0].slot.split('/')[0]}/b{i}" for i in range(3)}
    assert events and all(set(e) == {"phase", "round", "tokens", "budget"} for e in events)
    assert {e["phase"] for e in events} == {"decode", "summary", "answer"}
    assert events[-1]["tokens"] == decoded and events[-1]["budget"] == 300
    # The same trace shape as parallel's.
    par = run_parallel(FakeEngine(LeaPScript(chunks=chunks)), PROBLEM, ParallelConfig(branches=3, budget=300))
    assert set(t.to_dict()) == set(par.trace.to_dict()) | set(t.extra)
    assert set(asdict(cost)) == set(asdict(par.trace.cost))
    assert all(set(par.trace.rounds[0]) <= set(r) for r in t.rounds)
    assert par.trace.cost.generated_tokens == sum(b.n_tokens for b in par.branches)


# ------------------------------------------------------------------------------------ real model


def test_leap_on_the_tiny_real_model(engine):
    config = LeaPConfig(branches=2, budget=64, interval=24, summary_max_tokens=32, answer_reserve=16, seed=1)
    events = []
    result = run_leap(engine, "What is 12 + 30?", config, progress=events.append)
    t = result.trace
    assert t.method == "leap" and len(result.branches) == 2 and t.vote["total"] == 2
    assert [r["round"] for r in t.rounds] == list(range(len(t.rounds))) and t.rounds
    decoded = [b.extra["decoded_tokens"] for b in result.branches]
    assert all(0 < d <= 64 for d in decoded)
    assert all(b.finish_reason in ("eos", "length", "stop") for b in result.branches)
    assert t.cost.generated_tokens == sum(decoded) == sum(b.n_tokens + b.extra["dropped_tokens"] for b in result.branches)
    assert sum(sum(r["tokens"].values()) for r in t.rounds) == t.cost.generated_tokens
    assert sum(r["prefill_computed"] for r in t.rounds) == t.cost.prefill_computed > 0
    assert sum(r["prefill_reused"] for r in t.rounds) == t.cost.prefill_reused
    assert sum(r["injected"] for r in t.rounds) == t.cost.injected_tokens
    assert t.extra["summary_tokens"] == sum(b.extra["summary_tokens"] for b in result.branches)
    for r in t.rounds:
        if r["peers"]:  # an exchange: each path read the other's summary, both summaries are on record
            assert r["peers"] == {0: [1], 1: [0]} and r["summary_tokens"].keys() == {0, 1}
            assert all(0 < n <= 32 for n in r["summary_tokens"].values())
            assert t.cost.prefill_reused > t.cost.initial_prompt_tokens  # appended, not re-read
    assert t.extra["exchanges"] == sum(1 for r in t.rounds if r["peers"])
    assert events and events[-1]["tokens"] == decoded
    assert not engine.slots
