"""Metric maths on hand-built records: pass@k, vote and branch accuracy, latency, duplicate
discovery, FLOPs for known configs, optional method-specific metrics."""

from __future__ import annotations

import math

import pytest
from evalhelpers import make_record

from collabthink.evaluation import metrics as M


def test_pass_at_k_by_hand():
    assert M.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert M.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert M.pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert M.pass_at_k(5, 2, 4) == 1.0  # fewer wrong samples than k
    assert M.pass_at_k(4, 0, 2) == 0.0 and M.pass_at_k(4, 4, 1) == 1.0


def test_pass_at_k_matches_the_binomial_formula():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert M.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


@pytest.mark.parametrize("n, c, k", [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        M.pass_at_k(n, c, k)


def _records():
    return [
        make_record("parallel", 4, 64, "a", True, [True, True, False, False], wall=2.0, decode=1.5, generated=200),
        make_record("parallel", 4, 64, "b", False, [True, False, False, False], wall=4.0, decode=3.0, generated=100),
        make_record("parallel", 4, 64, "c", True, [True, True, True, True], wall=9.0, decode=6.0, generated=300),
    ]


def test_vote_branch_accuracy_and_mean_pass_at_k():
    recs = _records()
    assert M.vote_accuracy(recs) == pytest.approx(2 / 3)
    assert M.mean_branch_accuracy(recs) == pytest.approx((0.5 + 0.25 + 1.0) / 3)
    assert M.mean_pass_at_k(recs, 1) == pytest.approx(M.mean_branch_accuracy(recs))
    expected2 = ((1 - math.comb(2, 2) / math.comb(4, 2)) + (1 - math.comb(3, 2) / math.comb(4, 2)) + 1.0) / 3
    assert M.mean_pass_at_k(recs, 2) == pytest.approx(expected2)
    assert M.mean_pass_at_k(recs, 5) is None  # no record has 5 branches
    # without the harness's grading fields, the trace's own grading is used
    bare = [{k: v for k, v in r.items() if k not in ("correct", "branch_correct")} for r in recs]
    assert M.vote_accuracy(bare) == pytest.approx(2 / 3)
    assert M.mean_branch_accuracy(bare) == pytest.approx(M.mean_branch_accuracy(recs))


def test_latency_and_tokens():
    lat = M.latency(_records())
    assert lat["wall"]["mean"] == pytest.approx(5.0) and lat["wall"]["median"] == pytest.approx(4.0)
    assert lat["decode"]["mean"] == pytest.approx(3.5) and lat["decode"]["median"] == pytest.approx(3.0)
    assert lat["other"]["mean"] == pytest.approx((0.5 + 1.0 + 3.0) / 3)
    tok = M.tokens(_records())
    assert tok["generated_tokens"] == {"mean": pytest.approx(200.0), "total": 600}


def test_duplicate_discovery_per_round_and_overall():
    rounds = [
        {"round": 0, "notes_extracted": 4, "new_entries": [1, 2, 3, 4]},
        {"round": 1, "notes_extracted": 5, "new_entries": [5, 6]},
        {"round": 2, "notes_extracted": 0, "new_entries": []},
        {"round": 3, "notes_extracted": 2, "new_entries": 0},
        {"round": 4},  # a round without extraction (finalize)
    ]
    per, overall = M.duplicate_discovery(rounds)
    assert per == [(0, 0.0), (1, pytest.approx(0.6)), (3, 1.0)]
    assert overall == pytest.approx(1 - 6 / 11)
    assert M.duplicate_discovery([{"round": 0}]) == ([], None)


def test_cpt_metrics_pool_phases_and_duplicates():
    r1 = make_record("cpt", 2, 64, "a", True, [True, False], rounds=[
        {"round": 0, "phase": "explore", "notes_extracted": 4, "new_entries": [1, 2, 3, 4], "pool_size": 4},
        {"round": 1, "phase": "broadcast", "notes_extracted": 4, "new_entries": [5], "pool_size": 5},
        {"round": 2, "phase": "finalize", "pool_size": 5},
    ], extra={"pool": [{}] * 5, "schedule": [], "phase_changes": {"broadcast": 0, "finalize": 1},
              "extraction_tokens": 30})
    r2 = make_record("cpt", 2, 64, "b", False, [False, False], rounds=[
        {"round": 0, "phase": "explore", "notes_extracted": 2, "new_entries": [1, 2], "pool_size": 2},
        {"round": 1, "phase": "explore", "notes_extracted": 2, "new_entries": [], "pool_size": 2},
    ], extra={"pool": [{}] * 2, "schedule": [], "phase_changes": {}, "extraction_tokens": 10})
    c = M.cpt_metrics([r1, r2])
    assert c["pool_size"] == {"mean": 3.5, "max": 5}
    assert c["rounds_per_phase"] == {"broadcast": 0.5, "explore": 1.5, "finalize": 0.5}
    assert c["duplicate_rate"]["overall"] == pytest.approx(1 - 7 / 12)
    assert c["duplicate_rate"]["per_round"] == {0: 0.0, 1: pytest.approx((0.75 + 1.0) / 2)}
    assert c["duplicate_rate"]["per_question"] == [pytest.approx(1 - 5 / 8), pytest.approx(0.5)]
    assert c["extraction_tokens"]["mean"] == 20
    assert M.cpt_metrics(_records()) is None  # optional: absent for other methods


def test_deepconf_metrics_are_read_when_present_and_optional():
    # as DeepConf writes them: a `deepconf` block in the trace
    a = make_record("deepconf", 4, 64, "a", True, [True, True, False, False],
                    extra={"deepconf": {"stopped_early": 2, "skipped": 1, "tokens_saved": 120}})
    b = make_record("deepconf", 4, 64, "b", True, [True, True, True, True],
                    extra={"deepconf": {"stopped_early": 0, "skipped": 0, "tokens_saved": 30}})
    assert M.deepconf_metrics([a, b]) == {"stopped_early": 2, "skipped": 1, "branches": 8, "stopped_share": 0.25,
                                          "tokens_saved": 150}
    # a method without the block: early-stop finish reasons and a top-level tokens_saved
    c = make_record("other", 4, 64, "a", True, [True, True, False, False], extra={"tokens_saved": 55})
    c["trace"]["branches"][1]["extra"] = {"stopped_early": True}
    c["trace"]["branches"][3]["finish_reason"] = "consensus"
    c["trace"]["branches"][0]["finish_reason"] = "skipped"
    assert M.deepconf_metrics([c]) == {"stopped_early": 2, "skipped": 1, "branches": 4, "stopped_share": 0.5,
                                       "tokens_saved": 55}
    assert M.deepconf_metrics(_records()) is None


def test_dense_params_of_a_known_model():
    # SmolLM2-135M: 30 layers, hidden 576, 9 heads (3 KV), FFN 1536, vocab 49152, tied embeddings;
    # 134,515,008 parameters, of which 35,136 are RMSNorm weights that the count leaves out.
    n = M.dense_params(n_layer=30, n_embd=576, n_head=9, n_head_kv=3, n_ff=1536, n_vocab=49152)
    assert n == 134_515_008 - 35_136
    assert M.dense_params(1, 4, 2, 1, 8, 10) == 2 * 16 + 2 * 8 + 3 * 4 * 8 + 10 * 4
    assert M.dense_params(1, 4, 2, 1, 8, 10, tied_embeddings=False, gated_ffn=False) == 32 + 16 + 64 + 80


def test_flops_of_known_segments():
    model = {"n_params": 1000, "n_layer": 2, "n_embd": 8}
    f = M.transformer_flops(model, prefill=[(0, 10)], decode=[(10, 3)])
    # prefill: 2*1000*10 + 4*2*8 * (1+...+10); decode: 2*1000*3 + 64 * (11+12+13)
    assert f["prefill"] == 20_000 + 64 * 55
    assert f["decode"] == 6_000 + 64 * 36
    assert f["total"] == f["prefill"] + f["decode"]
    # without n_params the count comes from the config
    cfg = {"n_layer": 1, "n_embd": 4, "n_head": 2, "n_head_kv": 1, "n_ff": 8, "n_vocab": 10}
    assert M.transformer_flops(cfg, [], [(0, 1)])["decode"] == 2 * 184 + 4 * 1 * 4 * 1
    assert M.transformer_flops({"name": "fake"}, [(0, 1)], []) is None


def test_flops_of_a_trace():
    rec = make_record("parallel", 2, 64, "a", True, [True, True], generated=8, prefill_computed=20)
    rec["trace"]["branches"][0]["tokens"], rec["trace"]["branches"][1]["tokens"] = 3, 5
    f = M.trace_flops(rec["trace"])  # prompt 10 per branch, both computed from position 0
    assert f["prefill"] == 2 * (2 * 1000 * 10 + 64 * 55)
    assert f["decode"] == (2 * 1000 * 3 + 64 * (3 * 10 + 6)) + (2 * 1000 * 5 + 64 * (5 * 10 + 15))
    # per-round prefill counts, when they add up to the total, place reused tokens before computed ones
    rec["trace"]["rounds"] = [{"round": 0, "prefill_computed": 20, "prefill_reused": 0},
                              {"round": 1, "prefill_computed": 0, "prefill_reused": 30}]
    assert M.trace_flops(rec["trace"])["prefill"] == f["prefill"]
    rec["trace"]["rounds"] = [{"round": 0, "prefill_computed": 12, "prefill_reused": 0},
                              {"round": 1, "prefill_computed": 8, "prefill_reused": 12}]
    g = M.trace_flops(rec["trace"])  # per branch: 6 from 0, then 4 from 6
    assert g["prefill"] == 2 * (2 * 1000 * 10 + 64 * (21 + (4 * 6 + 10)))
    # extraction (CPT) and summary (LeaP) tokens count as decode at mid-length context
    rec["trace"]["extraction_tokens"] = 6
    assert M.trace_flops(rec["trace"])["decode"] == f["decode"] + 2 * 1000 * 6 + 64 * (6 * 12 + 21)
    del rec["trace"]["extraction_tokens"]
    rec["trace"]["summary_tokens"] = 6
    assert M.trace_flops(rec["trace"])["decode"] == f["decode"] + 2 * 1000 * 6 + 64 * (6 * 12 + 21)


def test_summarize_groups_by_method_and_setting():
    recs = _records() + [make_record("parallel", 2, 64, "a", False, [False, False])]
    groups = M.summarize_all(recs)
    assert [(g["method"], g["setting"]["branches"], g["questions"]) for g in groups] == [("parallel", 2, 1), ("parallel", 4, 3)]
    four = groups[1]
    assert four["vote_accuracy"] == pytest.approx(2 / 3) and set(four["pass_at_k"]) == {1, 4}
    assert four["pass_at_k"][4] == pytest.approx(1.0)
    assert [q["id"] for q in four["per_question"]] == ["a", "b", "c"]
    assert [q["correct"] for q in four["per_question"]] == [True, False, True]
    assert four["flops"]["total"] > 0 and four["cpt"] is None
