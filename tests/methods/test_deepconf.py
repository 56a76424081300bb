"""DeepConf: the confidence maths on hand-computed examples, the controller on a scripted engine with
given logprobs, and once end to end on the tiny real model."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
from fakes import FakeEngine, branch_of_slot

from collabthink.engines.base import EngineError
from collabthink.methods.deepconf import (
    DeepConfConfig,
    ballot,
    bottom_percent_mean,
    confidence_threshold,
    first_window_below,
    group_confidences,
    leader_share,
    percentile,
    run_deepconf,
    token_confidence,
    token_confidences,
    trace_scores,
    vote_variants,
    window_confidence,
)
from collabthink.methods.parallel import ParallelConfig, run_parallel
from collabthink.prompts import chat_ids, question_messages

PROBLEM = "What is 3 + 4?"


# ------------------------------------------------------------------------------------ a scripted engine


class ConfEngine(FakeEngine):
    """FakeEngine (one token per character) that also returns scripted top-k logprobs.

    Branch b's whole trace is `texts[b]`; a request continues it from where the branch is (its prompt
    minus the question prompt). The token at position j (0-based) of branch b has confidence
    `confs[b][j]` (the last value repeats): its k logprobs (k even, 20 here) are -c - 0.5 and -c + 0.5
    alternately, so their negated mean is exactly c while no single one of them is.
    """

    def __init__(self, texts: dict[int, str], confs: dict[int, list[float]], **kw):
        self.texts, self.confs = texts, confs
        self.question = None
        super().__init__(self._script, **kw)
        self.question = len(chat_ids(self, question_messages(PROBLEM)))

    def _script(self, r, engine) -> str:
        return self.texts[branch_of_slot(r.slot)][len(r.prompt) - self.question:]

    def generate(self, requests, progress=None):
        completions = super().generate(requests, progress)
        for r, c in zip(requests, completions):
            if not r.params.logprobs:
                continue
            b, start = branch_of_slot(r.slot), len(r.prompt) - self.question
            series = self.confs[b]
            lps = []
            for j in range(start, start + c.n_tokens):
                conf = series[min(j, len(series) - 1)]
                lps.append([(t, -conf - (0.5 if t % 2 else -0.5)) for t in range(r.params.logprobs)])
            c.logprobs = lps
        return completions

    def decodes(self, branch: int):
        return [(r, c) for r, c in self.log() if branch_of_slot(r.slot) == branch]


def boxed(answer: str, length: int, filler: str = "x") -> str:
    """A text of exactly `length` characters (tokens) ending with \\boxed{answer}."""
    tail = f"\\boxed{{{answer}}}"
    assert length >= len(tail)
    return filler * (length - len(tail)) + tail


# ------------------------------------------------------------------------------------ the maths


def test_token_confidence_is_the_negated_mean_of_the_top_k_logprobs():
    assert token_confidence([(11, -0.1), (12, -2.0), (13, -3.9)]) == pytest.approx(2.0)
    assert token_confidence([-1.0, -3.0]) == pytest.approx(2.0)  # bare logprobs too
    assert token_confidences([[(1, -0.5)], [(1, -1.0), (2, -2.0)]]) == pytest.approx([0.5, 1.5])
    with pytest.raises(ValueError):
        token_confidence([])


def test_group_confidences_slide_with_stride_one_and_handle_short_traces():
    assert group_confidences([1, 2, 3, 6], 2) == pytest.approx([1.5, 2.5, 4.5])
    assert group_confidences([1, 2, 3, 6], 4) == pytest.approx([3.0])  # exactly w: one group
    assert group_confidences([1, 2, 3, 6], 9) == pytest.approx([3.0])  # shorter than w: one group, all tokens
    assert group_confidences([1, 2, 3, 6], 1) == pytest.approx([1, 2, 3, 6])
    assert group_confidences([], 4) == []


def test_trace_scores_on_hand_computed_examples():
    # w = 3: groups 2, 3, 4, 5; bottom 10% of 4 groups is ceil(0.4) = 1 group; tail = mean(4, 5, 6).
    assert trace_scores([1, 2, 3, 4, 5, 6], 3) == pytest.approx(
        {"mean": 3.5, "lowest": 2.0, "bottom10": 2.0, "tail": 5.0})
    # w = 1: 11 groups (the tokens); bottom 10% = the lowest ceil(1.1) = 2 groups = mean(1, 2).
    confs = [5, 1, 2, 5, 5, 5, 5, 5, 5, 5, 5]
    assert trace_scores(confs, 1) == pytest.approx({"mean": 48 / 11, "lowest": 1.0, "bottom10": 1.5, "tail": 5.0})
    # 21 groups -> the lowest 3.
    assert bottom_percent_mean(list(range(21, 0, -1)), 10) == pytest.approx(2.0)
    # Shorter than the window: one group, every score is the mean.
    assert trace_scores([1, 2, 3], 5) == pytest.approx({"mean": 2.0, "lowest": 2.0, "bottom10": 2.0, "tail": 2.0})
    # Exactly the window: one group as well; the tail is the whole trace.
    assert trace_scores([1, 3, 8], 3) == pytest.approx({"mean": 4.0, "lowest": 4.0, "bottom10": 4.0, "tail": 4.0})
    assert trace_scores([], 3) == {"mean": None, "lowest": None, "bottom10": None, "tail": None}


def test_percentile_matches_numpy_and_the_two_modes_pick_opposite_ends():
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([4, 3, 2, 1], 10) == pytest.approx(1.3)
    assert percentile([7.5], 90) == 7.5
    rng = np.random.default_rng(0)
    for n in (2, 5, 16):
        xs = rng.normal(10, 3, n).tolist()
        for q in (0, 10, 37.5, 90, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    warm = [9.0, 1.0, 5.0, 3.0, 7.0]
    assert confidence_threshold(warm, "low") == pytest.approx(8.2)  # keep top 10%: s = 90th percentile
    assert confidence_threshold(warm, "high") == pytest.approx(1.8)  # keep top 90%: s = 10th percentile
    with pytest.raises(ValueError, match="variant"):
        confidence_threshold(warm, "medium")


def test_window_check_starts_only_once_the_window_is_full():
    confs = [0.0, 10, 10, 10, 10, 1, 1, 1, 1]
    # n = 1..3: the window (w = 4) is not full, the 0.0 is never judged alone; n = 4: mean 7.5.
    # Windows ending at n = 5: 10, 6: 7.75, 7: 5.5, 8: 3.25 < 5.
    assert first_window_below(confs, 4, 5.0) == 8
    assert first_window_below(confs, 4, 5.0, start=8) == 9  # only lengths after `start` are checked
    assert first_window_below(confs[:4], 4, 5.0) is None  # exactly w tokens: one check, above s
    assert first_window_below([1.0, 1.0], 4, 5.0) is None  # shorter than w: never stopped
    assert first_window_below([1.0] * 4, 4, 5.0) == 4  # the first full window already below
    assert window_confidence([1.0, 2.0, 3.0], 4) is None
    assert window_confidence([9.0, 1.0, 2.0, 3.0, 6.0], 4) == pytest.approx(3.0)


# Hand-built traces where every variant matters: answers and scores per trace.
ANSWERS = ["A", "A", "B", "B", "B"]
SCORES = [
    {"mean": 10, "lowest": 9, "bottom10": 9, "tail": 1},
    {"mean": 10, "lowest": 1, "bottom10": 1, "tail": 1},
    {"mean": 1, "lowest": 5, "bottom10": 5, "tail": 5},
    {"mean": 1, "lowest": 5, "bottom10": 1, "tail": 5},
    {"mean": 1, "lowest": 1, "bottom10": 2, "tail": 5},
]


def test_every_vote_variant_on_hand_built_traces():
    low = vote_variants(ANSWERS, SCORES, range(5), keep_percent=10)
    winners = {k: v["winner"] for k, v in low.items()}
    assert winners == {
        "majority": "B",  # 3 vs 2
        "mean": "A",  # 20 vs 3
        "lowest": "B",  # 10 vs 11
        "bottom10": "A",  # 10 vs 8
        "tail": "B",  # 2 vs 15
        "filtered_mean": "A",  # 90th pct of (1,1,1,10,10) = 10: traces 0, 1
        "filtered_lowest": "A",  # 90th pct of (1,1,5,5,9) = 7.4: trace 0 only
        "filtered_bottom10": "A",  # 90th pct of (1,1,2,5,9) = 7.4: trace 0 only
        "filtered_tail": "B",  # 90th pct of (1,1,5,5,5) = 5: traces 2, 3, 4
    }
    assert low["lowest"]["counts"] == {"A": 10.0, "B": 11.0}
    assert low["filtered_lowest"]["voters"] == [0] and low["filtered_tail"]["voters"] == [2, 3, 4]
    assert "online" not in low
    high = vote_variants(ANSWERS, SCORES, range(5), keep_percent=90)
    # 10th percentile of the lowest-group scores is 1: every trace stays, as in the unfiltered vote.
    assert high["filtered_lowest"]["voters"] == [0, 1, 2, 3, 4] and high["filtered_lowest"]["winner"] == "B"
    assert high["filtered_mean"]["counts"] == {"A": 20.0, "B": 3.0}


def test_excluded_traces_never_vote_and_online_uses_the_threshold():
    # Traces 2 and 3 stopped early: the plain majority flips to A.
    out = vote_variants(ANSWERS, SCORES, [0, 1, 4], keep_percent=90, threshold=5.0, online=True)
    assert out["majority"]["counts"] == {"A": 2.0, "B": 1.0} and out["majority"]["winner"] == "A"
    assert all(set(v["voters"]) <= {0, 1, 4} for v in out.values())
    assert out["online"]["voters"] == [0]  # lowest >= 5 among the eligible ones
    weights, voters = ballot("online", SCORES, range(5), threshold=5.0)
    assert voters == [0, 2, 3] and weights == [9.0, 0.0, 5.0, 5.0, 0.0]
    assert ballot("online", SCORES, range(5), threshold=6.0)[1] == [0]
    assert leader_share(["A", "A", "B"], [3.0, 1.0, 1.0], [0, 1, 2]) == pytest.approx(0.8)
    assert leader_share(["A", "A", "B"], [3.0, 1.0, 1.0], [0, 2]) == pytest.approx(0.75)
    assert leader_share([None, None], [1.0, 1.0], [0, 1]) == 0.0


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("options, field", [
    (dict(mode="streaming"), "mode"),
    (dict(variant="medium"), "variant"),
    (dict(vote="loudest"), "vote"),
    (dict(vote="online", mode="offline"), "vote"),
    (dict(window=0), "window"),
    (dict(logprobs=0), "logprobs"),
    (dict(warmup=0), "warmup"),
    (dict(chunk_tokens=0), "chunk_tokens"),
    (dict(tau=0.0), "tau"),
    (dict(tau=1.5), "tau"),
    (dict(budget=0), "budget"),
])
def test_config_rejects_bad_values_by_name(options, field):
    with pytest.raises(ValueError, match=field):
        DeepConfConfig(**options)


def test_config_defaults_and_options():
    c = DeepConfConfig()
    assert (c.mode, c.variant, c.window, c.logprobs, c.warmup, c.tau, c.consensus) == ("online", "high", 128, 20, 16, 0.95, True)
    assert c.keep_percent == 90 and c.deciding_vote == "online"
    assert DeepConfConfig(mode="offline").deciding_vote == "filtered_lowest"
    assert DeepConfConfig(variant="low").keep_percent == 10
    with pytest.raises(ValueError, match="windw"):
        DeepConfConfig.from_options(windw=8)


# ------------------------------------------------------------------------------------ offline runs


OFFLINE_TEXTS = {0: boxed("7", 20), 1: boxed("7", 24), 2: boxed("8", 16), 3: boxed("9", 30)}
OFFLINE_CONFS = {0: [2.0], 1: [1.0], 2: [6.0], 3: [3.0]}


def test_offline_votes_every_variant_and_the_default_decides():
    engine = ConfEngine(OFFLINE_TEXTS, OFFLINE_CONFS)
    cfg = DeepConfConfig(mode="offline", variant="low", branches=4, budget=64, window=4)
    result = run_deepconf(engine, PROBLEM, cfg, reference="7")
    dc = result.trace.extra["deepconf"]
    assert [r.params.logprobs for r in engine.requests()] == [20] * 4
    assert len(engine.calls) == 1  # one batched call, like parallel
    assert set(dc["votes"]) == {"majority", "mean", "lowest", "bottom10", "tail", "filtered_mean",
                                "filtered_lowest", "filtered_bottom10", "filtered_tail"}
    assert dc["votes"]["majority"]["winner"] == "7"  # two 7s
    assert dc["votes"]["mean"]["counts"] == pytest.approx({"7": 3.0, "8": 6.0, "9": 3.0})
    # low keeps the top 10%: 90th percentile of (1, 2, 3, 6) = 5.1 -> trace 2 alone.
    assert dc["decided_by"] == "filtered_lowest" and dc["votes"]["filtered_lowest"]["voters"] == [2]
    assert result.answer == "8" and result.correct is False
    assert result.trace.vote["excluded"] == [0, 1, 3] and result.votes == pytest.approx({"8": 6.0})
    assert [b.extra["votes"] for b in result.branches] == [False, False, True, False]
    assert result.branches[2].extra["confidence"] == pytest.approx({"mean": 6.0, "lowest": 6.0, "bottom10": 6.0, "tail": 6.0})
    assert dc["threshold"] is None and dc["stopped_early"] == 0 and dc["variant"] == "low" and dc["keep_percent"] == 10

    majority = run_deepconf(ConfEngine(OFFLINE_TEXTS, OFFLINE_CONFS), PROBLEM,
                            DeepConfConfig(mode="offline", branches=4, budget=64, window=4, vote="majority"))
    assert majority.answer == "7" and majority.votes == {"7": 2.0, "8": 1.0, "9": 1.0}
    high = run_deepconf(ConfEngine(OFFLINE_TEXTS, OFFLINE_CONFS), PROBLEM,
                        DeepConfConfig(mode="offline", variant="high", branches=4, budget=64, window=4))
    # high keeps the top 90%: 10th percentile = 1.3 drops trace 1; 7: 2 + 0, 8: 6, 9: 3.
    assert high.trace.extra["deepconf"]["votes"]["filtered_lowest"]["voters"] == [0, 2, 3] and high.answer == "8"
    json.dumps(result.to_dict())  # the trace is JSON-serialisable


def test_budget_accounting_matches_parallel():
    texts = {0: boxed("7", 20), 1: boxed("7", 90), 2: boxed("8", 16)}  # branch 1 runs into the budget
    confs = {0: [1.0], 1: [2.0], 2: [3.0]}
    events_p, events_d = [], []
    par = run_parallel(ConfEngine(texts, confs), PROBLEM, ParallelConfig(branches=3, budget=40), progress=events_p.append)
    engine = ConfEngine(texts, confs)
    dc = run_deepconf(engine, PROBLEM, DeepConfConfig(mode="offline", branches=3, budget=40, window=4),
                      progress=events_d.append)
    cp, cd = asdict(par.trace.cost), asdict(dc.trace.cost)
    assert cp.keys() == cd.keys()
    for k in ("generated_tokens", "initial_prompt_tokens", "prefill_computed", "prefill_reused", "injected_tokens"):
        assert cp[k] == cd[k], k
    assert cd["generated_tokens"] == sum(b.n_tokens for b in dc.branches) == 20 + 40 + 16
    assert cd["decode_s"] > 0 and cd["wall_s"] >= cd["decode_s"]
    assert [b.finish_reason for b in dc.branches] == [b.finish_reason for b in par.branches] == ["eos", "length", "eos"]
    assert [b.seed for b in dc.branches] == [b.seed for b in par.branches]
    assert set(par.trace.rounds[0]) <= set(dc.trace.rounds[0])
    assert dc.trace.rounds[0]["tokens"] == par.trace.rounds[0]["tokens"] == [20, 40, 16]
    assert events_d[-1] == events_p[-1]  # same progress event: phase, round, tokens, budget
    assert dc.trace.extra["deepconf"]["tokens_saved"] == 3 * 40 - 76
    assert sorted(engine.released) == sorted({r.slot for r in engine.requests()}) and not engine.slots
    assert len({r.slot for r in engine.requests()}) == 3 and all(r.slot.endswith(f"/b{i}") for i, r in
                                                                 enumerate(engine.requests()))


def test_an_engine_without_logprobs_is_a_clear_error():
    engine = FakeEngine(lambda r, e: "\\boxed{7}")
    with pytest.raises(EngineError, match="logprobs"):
        run_deepconf(engine, PROBLEM, DeepConfConfig(mode="offline", branches=2, budget=16))
    assert not engine.slots  # released even on failure


# ------------------------------------------------------------------------------------ online runs


def online_case():
    """Warm-up: branch 0 (answer 1, confidence 5) and 1 (answer 2, confidence 3).
    Branch 2 (answer 2) is confident throughout and ends at 22 tokens; branch 3 boxes 9 early, is
    confident for 12 tokens and then drops to 1."""
    texts = {0: boxed("1", 12), 1: boxed("2", 12), 2: boxed("2", 22), 3: "\\boxed{9}" + "y" * 60}
    confs = {0: [5.0], 1: [3.0], 2: [6.0], 3: [6.0] * 12 + [1.0]}
    return texts, confs


def online(variant: str, **kw) -> DeepConfConfig:
    base = dict(mode="online", variant=variant, branches=4, warmup=2, budget=40, window=4, chunk_tokens=5,
                consensus=False)
    base.update(kw)
    return DeepConfConfig(**base)


@pytest.mark.parametrize("variant, threshold, stop_token", [
    ("high", 3.2, 15),  # s = 10th percentile of (5, 3); windows: n=14 (6,6,1,1)=3.5, n=15 (6,1,1,1)=2.25
    ("low", 4.8, 13),  # s = 90th percentile; n=13 (6,6,6,1)=4.75 < 4.8
])
def test_online_stops_a_trace_where_its_window_confidence_drops(variant, threshold, stop_token):
    texts, confs = online_case()
    engine = ConfEngine(texts, confs)
    events = []
    result = run_deepconf(engine, PROBLEM, online(variant), reference="2", progress=events.append)
    t, dc = result.trace, result.trace.extra["deepconf"]
    assert dc["variant"] == variant and dc["threshold"] == pytest.approx(threshold)
    assert dc["percentile"] == (90 if variant == "low" else 10) and "chunk" in dc["granularity"]
    assert t.rounds[0]["phase"] == "warmup" and t.rounds[0]["threshold"] == pytest.approx(threshold)
    # Warm-up: one call decoding branches 0 and 1 to the end; then 5-token chunks for 2 and 3 only.
    assert [branch_of_slot(r.slot) for r in engine.calls[0].requests] == [0, 1]
    assert [len(c.requests) for c in engine.calls[1:]] == [2, 2, 2, 1, 1][: len(engine.calls) - 1]
    assert all(r.params.max_tokens <= 5 for c in engine.calls[1:] for r in c.requests)
    # Branch 3 stops at the end of round 3 (tokens 11-15), the chunk in which its window dropped.
    b3 = result.branches[3]
    assert b3.finish_reason == "confidence" and b3.extra["stop_token"] == stop_token
    assert b3.n_tokens == 15 and b3.extra["overshoot_tokens"] == 15 - stop_token
    assert len(engine.decodes(3)) == 3 and 3 in t.rounds[3]["stopped"]
    assert t.rounds[1]["stopped"] == t.rounds[2]["stopped"] == []
    # Continuations only prefill what the slot has not cached (the last sampled token).
    for r, c in engine.decodes(3)[1:]:
        assert c.prompt_computed == 1 and c.prompt_reused == len(r.prompt) - 1
    # Branch 2 ends on its own in round 5 (22 tokens) and votes.
    assert result.branches[2].finish_reason == "eos" and result.branches[2].n_tokens == 22
    # The early-stopped trace boxed 9 but never votes; warm-up traces below s do not vote either.
    assert b3.answer == "9" and "9" not in result.votes and 3 in t.vote["excluded"]
    # Branch 1's lowest group (3) is below both thresholds: the voters are 0 (5) and 2 (6).
    assert result.votes == pytest.approx({"1": 5.0, "2": 6.0}) and result.answer == "2"
    assert t.vote["excluded"] == [1, 3] and result.correct is True
    assert dc["stopped_early"] == dc["stopped_confidence"] == 1 and dc["stopped_consensus"] == 0
    assert dc["overshoot_tokens"] == 15 - stop_token
    # Accounting.
    gen = sum(b.n_tokens for b in result.branches)
    assert t.cost.generated_tokens == gen == 12 + 12 + 22 + 15
    assert dc["full_budget_tokens"] == 4 * 40 and dc["tokens_saved"] == 160 - gen
    assert t.cost.initial_prompt_tokens == 4 * engine.question
    assert t.cost.prefill_computed + t.cost.prefill_reused == sum(len(r.prompt) for r in engine.requests())
    assert sum(sum(r["tokens"]) for r in t.rounds) == gen
    assert events[-1]["tokens"] == [b.n_tokens for b in result.branches] and events[-1]["budget"] == 40
    assert {e["phase"] for e in events} == {"warmup", "online"}
    assert not engine.slots and len(set(engine.released)) == 4


def test_no_stop_before_the_window_is_full():
    # Branch 3's first token has confidence 0 (far below s) but the window of 4 is only full from token 4 on.
    texts, confs = online_case()
    confs[3] = [0.0] + [6.0]
    texts[3] = boxed("2", 18)
    result = run_deepconf(ConfEngine(texts, confs), PROBLEM, online("high", chunk_tokens=1))
    b3 = result.branches[3]
    assert b3.finish_reason == "eos" and b3.extra["stop_token"] is None and b3.extra["votes"]


def test_window_of_exactly_the_trace_length():
    # Branch 3 writes exactly w = 9 tokens; its single window ((5 x 6 + 4 x 1) / 9 = 3.78) is checked once.
    texts, confs = online_case()
    texts[3] = boxed("2", 9)
    confs[3] = [6.0] * 5 + [1.0] * 4
    stopped = run_deepconf(ConfEngine(texts, confs), PROBLEM, online("low", window=9, chunk_tokens=9)).branches[3]
    assert stopped.finish_reason == "confidence" and stopped.extra["stop_token"] == 9  # 3.78 < s_low = 4.8
    kept = run_deepconf(ConfEngine(texts, confs), PROBLEM, online("high", window=9, chunk_tokens=9))
    assert kept.branches[3].finish_reason == "eos" and kept.branches[3].extra["votes"]  # 3.78 >= s_high = 3.2
    assert kept.branches[3].extra["confidence"]["lowest"] == pytest.approx(34 / 9)


def test_consensus_after_warmup_skips_the_remaining_traces():
    texts = {0: boxed("7", 12), 1: boxed("7", 14), 2: boxed("8", 30), 3: boxed("8", 30)}
    confs = {0: [5.0], 1: [5.0], 2: [6.0], 3: [6.0]}
    engine = ConfEngine(texts, confs)
    result = run_deepconf(engine, PROBLEM, online("high", consensus=True))
    dc = result.trace.extra["deepconf"]
    assert dc["consensus"]["reached"] and dc["consensus"]["round"] == 0 and dc["consensus"]["share"] == 1.0
    assert len(engine.calls) == 1  # branches 2 and 3 were never launched
    assert [b.finish_reason for b in result.branches] == ["eos", "eos", "skipped", "skipped"]
    assert dc["skipped"] == 2 and dc["stopped_early"] == 0 and result.answer == "7"
    assert result.trace.cost.initial_prompt_tokens == 2 * engine.question
    assert dc["tokens_saved"] == 160 - 26 and result.trace.cost.generated_tokens == 26


def test_consensus_mid_run_stops_the_running_traces():
    # Warm-up traces box nothing (no votes, no consensus). Branch 2 boxes 7 in round 1: share 1.0.
    texts = {0: "z" * 12, 1: "z" * 12, 2: boxed("7", 9), 3: "y" * 60}
    confs = {0: [5.0], 1: [5.0], 2: [6.0], 3: [6.0]}
    engine = ConfEngine(texts, confs)
    result = run_deepconf(engine, PROBLEM, online("high", consensus=True, chunk_tokens=10))
    dc = result.trace.extra["deepconf"]
    assert dc["consensus"]["reached"] and dc["consensus"]["round"] == 1
    assert result.branches[3].finish_reason == "consensus" and result.branches[3].n_tokens == 10
    assert len(engine.decodes(3)) == 1
    assert dc["stopped_consensus"] == 1 and dc["stopped_early"] == 1 and result.answer == "7"
    assert result.trace.vote["excluded"] == [3]  # 0 and 1 vote but boxed nothing
    # Without the consensus stop branch 3 runs to its budget.
    off = run_deepconf(ConfEngine(texts, confs), PROBLEM, online("high", consensus=False, chunk_tokens=10))
    assert off.branches[3].finish_reason == "length" and off.branches[3].n_tokens == 40
    assert not off.trace.extra["deepconf"]["consensus"]["reached"]


def test_warmup_is_capped_at_the_branch_count():
    texts, confs = online_case()
    engine = ConfEngine(texts, confs)
    result = run_deepconf(engine, PROBLEM, online("high", warmup=16))
    assert result.trace.extra["deepconf"]["warmup"] == 4 and len(engine.calls) == 1
    assert [b.extra["role"] for b in result.branches] == ["warmup"] * 4
    assert result.branches[3].finish_reason == "length"  # warm-up traces are never stopped


# ------------------------------------------------------------------------------------ the real model


class Recording:
    """Wraps an engine and keeps every completion, to check the logprobs that came back."""

    def __init__(self, engine):
        self.inner, self.completions, self.by_branch = engine, [], {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, requests, progress=None):
        out = self.inner.generate(requests, progress)
        self.completions += out
        for r, c in zip(requests, out):
            self.by_branch.setdefault(branch_of_slot(r.slot), []).extend(c.logprobs or [])
        return out


def test_online_on_the_tiny_model(engine):
    rec = Recording(engine)
    cfg = DeepConfConfig(branches=4, warmup=2, budget=32, window=8, chunk_tokens=16, variant="low", consensus=False, seed=2)
    result = run_deepconf(rec, PROBLEM, cfg, reference="7")
    t, dc = result.trace, result.trace.extra["deepconf"]
    assert all(c.logprobs is not None and len(c.logprobs) == c.n_tokens for c in rec.completions)
    assert all(len(top) == 20 and all(lp <= 0 for _, lp in top) for c in rec.completions for top in c.logprobs)
    assert [b.extra["role"] for b in result.branches] == ["warmup", "warmup", "online", "online"]
    assert all(0 < b.n_tokens <= 32 for b in result.branches)
    for b in result.branches:  # the scores are those of the logprobs the engine returned for that slot
        assert b.extra["confidence"] == pytest.approx(trace_scores(token_confidences(rec.by_branch[b.index]), 8))
        assert b.extra["confidence"]["mean"] > 0
    assert dc["threshold"] == pytest.approx(
        percentile([b.extra["confidence"]["lowest"] for b in result.branches[:2]], 90))
    for b in result.branches[2:]:
        if b.finish_reason == "confidence":
            assert cfg.window <= b.extra["stop_token"] <= b.n_tokens and not b.extra["votes"]
        else:
            assert b.finish_reason in ("eos", "stop", "length")
            assert b.n_tokens < cfg.window or b.extra["confidence"]["lowest"] >= dc["threshold"]
    assert t.cost.generated_tokens == sum(b.n_tokens for b in result.branches) == sum(len(c.token_ids) for c in rec.completions)
    assert dc["tokens_saved"] == 4 * 32 - t.cost.generated_tokens
    assert t.rounds[0]["phase"] == "warmup" and all(r["phase"] == "online" for r in t.rounds[1:])
    if len(t.rounds) > 2:  # continuations reuse their slot's cache
        assert all(r["prefill_reused"] > 0 for r in t.rounds[2:] if sum(r["tokens"]))
    assert not engine.slots
    json.dumps(result.to_dict())
