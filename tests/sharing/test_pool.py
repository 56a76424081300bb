"""Shared pool: dedup rules, ids, hits, cap."""

import numpy as np
import pytest

from collabthink.sharing.dedup import normalize_note
from collabthink.sharing.notes import Note
from collabthink.sharing.pool import PoolConfig, PoolEntry, SharedPool

I = "insight"


class FakeEmbedder:
    """Deterministic embedder: texts in the same topic get the same direction.

    Keys are normalised texts (the pool embeds normalised text).  Unknown
    texts get their own axis, so they are orthogonal to everything else.
    """

    def __init__(self, topics, dim=32):
        self.topics = {normalize_note(t): k for t, k in topics.items()}
        self.dim = dim
        self.calls = []
        self._axes = {}

    def embed(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            topic = self.topics.get(t)
            if isinstance(topic, tuple):  # (axis, mix): partial similarity
                axis, mix = topic
                out[i, axis] = mix
                out[i, self.dim - 1] = np.sqrt(1 - mix**2)
                continue
            if topic is None:
                topic = self._axes.setdefault(t, 10 + len(self._axes))
            out[i, topic] = 1.0
        return out


def notes(*items):
    """items: (author, text) or (author, kind, text)."""
    out = []
    for it in items:
        if len(it) == 2:
            out.append((it[0], Note(I, it[1])))
        else:
            out.append((it[0], Note(it[1], it[2])))
    return out


def test_new_entries_and_ids():
    pool = SharedPool(PoolConfig())
    r = pool.add_round(notes((0, "a+b = 7"), (1, "ab = 12")), round=0)
    assert r.extracted == 2 and r.new_ids == [0, 1] and r.duplicate_ids == []
    assert [e.id for e in pool.entries] == [0, 1] and len(pool) == 2
    e = pool.get(1)
    assert (e.author, e.round, e.hits, e.text) == (1, 0, 1, "ab = 12")
    assert pool.get(99) is None
    assert not pool.uses_embeddings


def test_containment_both_ways_and_shorter_text_rule():
    pool = SharedPool()
    pool.add_round(notes((0, "n is odd")), round=0)
    # longer note containing the entry -> duplicate, entry keeps the shorter text
    r = pool.add_round(notes((1, "N is odd because $n^2$ is odd.")), round=1)
    assert r.new_ids == [] and r.duplicate_ids == [0]
    assert pool.get(0).text == "n is odd" and pool.get(0).hits == 2
    # longer entry first, shorter note later -> text replaced by the shorter one
    pool.add_round(notes((2, "the triangle is right-angled at C since a^2+b^2=c^2")), round=1)
    r = pool.add_round(notes((3, "The triangle is right-angled at C.")), round=2)
    assert r.duplicate_ids == [1]
    assert pool.get(1).text == "The triangle is right-angled at C."
    assert pool.get(1).author == 2 and pool.get(1).round == 1  # identity unchanged
    assert pool.get(1).found_by == {2, 3}


def test_containment_is_token_aligned():
    pool = SharedPool()
    pool.add_round(notes((0, "a = 1")), round=0)
    r = pool.add_round(notes((1, "a = 12")), round=0)
    assert r.new_ids == [1]


def test_normalised_exact_duplicates_in_batch_first_author_keeps():
    pool = SharedPool()
    r = pool.add_round(notes((2, "x=3"), (0, "$x\\,=\\,3$."), (1, "X=3")), round=0)
    assert r.new_ids == [0] and r.duplicate_ids == []
    e = pool.get(0)
    assert e.author == 2 and e.hits == 3 and e.found_by == {0, 1, 2}


def test_batch_internal_paraphrases_with_embedder():
    emb = FakeEmbedder({"the roots sum to 5": 0, "by vieta the two roots add up to 5": 0})
    pool = SharedPool(PoolConfig(), emb)
    r = pool.add_round(notes((0, "the roots sum to 5"), (1, "by Vieta the two roots add up to 5")), round=0)
    assert r.new_ids == [0] and len(pool) == 1
    assert pool.get(0).hits == 2
    assert len(emb.calls) == 1 and len(emb.calls[0]) == 2  # one embed call per batch


def test_cosine_threshold_rule():
    emb = FakeEmbedder({"alpha fact": 0, "alpha rephrased here": (0, 0.8), "alpha far": (0, 0.7)})
    pool = SharedPool(PoolConfig(cosine_threshold=0.75), emb)
    pool.add_round(notes((0, "alpha fact")), round=0)
    r = pool.add_round(notes((1, "alpha rephrased here"), (2, "alpha far")), round=1)
    # cos(fact, rephrased) = .8 >= .75 -> duplicate; cos(fact, far) = .7 -> new;
    # cos(rephrased, far) is not compared since rephrased merged into entry 0
    assert r.duplicate_ids == [0] and r.new_ids == [1]
    assert pool.get(0).hits == 2 and pool.get(0).text == "alpha fact"
    # without an embedder the same notes are all new
    plain = SharedPool()
    plain.add_round(notes((0, "alpha fact")), round=0)
    assert plain.add_round(notes((1, "alpha rephrased here")), round=1).new_ids == [1]


def test_shorter_paraphrase_updates_embedding():
    # entry 0 "long alpha statement" (axis 0); shorter paraphrase "alpha" (axis 0, cos 1)
    # replaces text and vector; then "beta-ish" similar only to the new vector.
    emb = FakeEmbedder({"long alpha statement": 0, "alpha!": (0, 0.9), "gamma": (0, 0.6)})
    pool = SharedPool(PoolConfig(), emb)
    pool.add_round(notes((0, "long alpha statement")), round=0)
    pool.add_round(notes((1, "alpha!")), round=1)
    assert pool.get(0).text == "alpha!"
    # cos(gamma, alpha!) = .6*.9 + .8*.436 ~ .89 with the new vector, .6 with the old one
    r = pool.add_round(notes((2, "gamma")), round=2)
    assert r.duplicate_ids == [0]


def test_ids_monotonic_after_eviction_and_seeded_reproducibility():
    def build(seed):
        pool = SharedPool(PoolConfig(max_entries=5, seed=seed))
        evicted = []
        for rnd in range(4):
            r = pool.add_round(notes(*[(b, f"fact {rnd} {b} q") for b in range(3)]), round=rnd)
            evicted.append(r.evicted_ids)
        return pool, evicted

    pool, ev = build(7)
    assert len(pool) == 5
    assert sum(len(e) for e in ev) == 12 - 5
    ids = [e.id for e in pool.entries]
    assert ids == sorted(ids) and max(ids) <= 11
    r = pool.add_round(notes((0, "brand new")), round=9)
    assert r.new_ids == [12]  # never reuses evicted ids
    pool2, ev2 = build(7)
    assert ev2 == ev and [e.id for e in pool2.entries] == [e.id for e in build(7)[0].entries]
    assert any(build(s)[1] != ev for s in range(8, 14))  # other seeds evict differently


def test_eviction_keeps_vectors_consistent():
    # four orthogonal entries, two evicted (swap-remove in the vector store);
    # a paraphrase must then hit exactly the surviving entry on its axis.
    base = ["zero", "one", "two", "three"]
    para = ["nil", "single", "pair", "triple"]
    emb = FakeEmbedder({**{t: i for i, t in enumerate(base)}, **{t: i for i, t in enumerate(para)}})
    pool = SharedPool(PoolConfig(max_entries=2, seed=1), emb)
    r = pool.add_round(notes(*[(0, t) for t in base]), round=0)
    survivors = [e.id for e in pool.entries]
    assert len(r.evicted_ids) == 2 and sorted(survivors + r.evicted_ids) == [0, 1, 2, 3]
    for i in survivors:
        r = pool.add_round(notes((1, para[i])), round=1)
        assert r.duplicate_ids == [i] and r.new_ids == []
        assert pool.get(i).text == min(base[i], para[i], key=len)
    r = pool.add_round(notes((1, para[min(set(range(4)) - set(survivors))])), round=2)
    assert r.duplicate_ids == [] and r.new_ids == [4]


def test_hits_counting_and_mark_received():
    pool = SharedPool()
    pool.add_round(notes((0, "p is prime"), (1, "p is prime"), (1, "q is even")), round=0)
    r = pool.add_round(notes((2, "p is prime"), (2, "P is prime.")), round=1)
    assert r.duplicate_ids == [0]  # listed once
    assert pool.get(0).hits == 4 and pool.get(1).hits == 1
    assert sum(e.hits for e in pool.entries) == 5
    pool.mark_received(3, [0, 1, 42])
    assert pool.get(0).received_by == {3}
    d = pool.get(0).to_dict()
    assert d["received_by"] == [3] and d["found_by"] == [0, 1, 2] and d["hits"] == 4


def test_empty_notes_skipped_and_round_add_dict():
    pool = SharedPool()
    r = pool.add_round(notes((0, "   "), (1, "$.$")), round=0)
    assert r.extracted == 2 and r.new_ids == [] and len(pool) == 0
    assert r.to_dict() == {"extracted": 2, "new_ids": [], "duplicate_ids": [], "evicted_ids": []}


def test_pool_entry_defaults():
    e = PoolEntry(id=1, kind=I, text="t", author=0, round=0)
    assert e.hits == 1 and e.received_by == set()
    assert e.to_dict()["found_by"] == [0]


def test_bad_embedder_shape():
    class Bad:
        def embed(self, texts):
            return np.ones((1, 4))

    with pytest.raises(ValueError):
        SharedPool(PoolConfig(), Bad()).add_round(notes((0, "a"), (1, "b")), round=0)


def test_cosine_match_needs_the_same_numbers():
    # Real Qwen2.5-1.5B notes: a paraphrase with a different (wrong) number must not merge into the right one.
    class Same:
        def embed(self, texts):
            return np.ones((len(texts), 4), dtype=np.float32)  # every pair has cosine 1

    pool = SharedPool(PoolConfig(), embedder=Same())
    right = Note("insight", "Therefore, the number of eggs left for the market is \\(13 - 4 = 9\\) eggs.")
    wrong = Note("insight", "The number of eggs left for the farmers' market is \\(13\\) eggs.")
    same = Note("insight", "So 13 - 4 = 9 eggs remain for the market.")
    pool.add_round([(0, right)], round=0)
    added = pool.add_round([(1, wrong), (2, same)], round=1)
    assert added.new_ids == [1] and added.duplicate_ids == [0]
    assert "9" in pool.get(0).text and pool.get(1).text == wrong.text
    assert not SharedPool(PoolConfig(numbers_must_match=False), embedder=Same()).add_round(
        [(0, right), (1, wrong)], round=0).new_ids == [0, 1]
