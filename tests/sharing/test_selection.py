"""Selection of pool entries for a branch and the broadcast block."""

import random

from collabthink.sharing.pool import PoolEntry
from collabthink.sharing.selection import (
    BROADCAST_RULES,
    SHARED_CLOSE,
    SHARED_OPEN,
    novelty,
    content_words,
    render_broadcast,
    select_novel,
    select_randomk,
)


def entry(i, text, author=0, hits=1, kind="insight", **kw):
    return PoolEntry(id=i, kind=kind, text=text, author=author, round=0, hits=hits, **kw)


ENTRIES = [entry(i, f"fact number {i}", author=i % 3) for i in range(10)]


def test_randomk_all_when_k_large_and_id_order():
    shuffled = list(reversed(ENTRIES[:4]))
    out = select_randomk(shuffled, branch=0, k=10, rng=random.Random(0))
    assert [e.id for e in out] == [0, 1, 2, 3]
    assert select_randomk(ENTRIES, 0, 0, random.Random(0)) == []
    assert select_randomk([], 0, 3, random.Random(0)) == []


def test_randomk_seeded_per_branch_independence():
    def draw(seed_base):
        rngs = [random.Random(seed_base * 100 + b) for b in range(4)]
        return [[e.id for e in select_randomk(ENTRIES, b, 3, rngs[b])] for b in range(4)]

    a, b = draw(1), draw(1)
    assert a == b  # reproducible
    assert all(len(x) == 3 and x == sorted(x) for x in a)
    assert len({tuple(x) for x in a}) > 1  # branches get different draws
    # input order does not change the draw
    rev = select_randomk(list(reversed(ENTRIES)), 0, 3, random.Random(100))
    assert [e.id for e in rev] == a[0]


def test_novel_excludes_own_found_and_seen():
    entries = [
        entry(0, "modulus 7 gives residues 1 2 4", author=1),
        entry(1, "parity argument fails for n even", author=2),
        entry(2, "telescoping sum reduces to 1/n", author=0),  # own
        entry(3, "triangle inequality bounds c", author=2, found_by={2, 1}),  # rediscovered by 1
        entry(4, "symmetry swaps x and y", author=2, received_by={1}),  # already shown
        entry(5, "induction base case n=1 holds", author=0),
    ]
    out = select_novel(entries, branch=1, k=10, own_text="", seen_ids={5})
    assert [e.id for e in out] == [1, 2]


def test_novel_ranking_and_ties():
    own = "We use modulus 7 and the residues 1, 2, 4 of cubes."
    entries = [
        entry(0, "modulus 7 residues 1 2 4", author=9),  # fully covered -> dropped
        entry(1, "cubes modulo 9 are 0 1 8", author=9),  # modulo, 9, 0, 8 new: 4/6 novel
        entry(2, "pell equation has fundamental solution", author=9, hits=1),
        entry(3, "quadratic residue reciprocity applies", author=9, hits=1),
        entry(4, "legendre symbol computation shortcut", author=9, hits=3),
    ]
    words = content_words(own)
    assert novelty(entries[0].text, words) == 0.0
    assert 0 < novelty(entries[1].text, words) < 1
    out = select_novel(entries, branch=0, k=2, own_text=own, seen_ids=set())
    # 2, 3, 4 are fully novel; tie -> more hits first (4), then lower id (2)
    assert [e.id for e in out] == [2, 4]
    out = select_novel(entries, branch=0, k=10, own_text=own, seen_ids=set())
    assert [e.id for e in out] == [1, 2, 3, 4]
    assert select_novel(entries, branch=0, k=0, own_text=own, seen_ids=set()) == []


def test_render_broadcast_and_rules():
    text = render_broadcast([entry(3, "x is\n odd"), entry(7, "beware x=0", kind="pitfall")])
    assert text == f"{SHARED_OPEN}\n- (#3, insight) x is odd\n- (#7, pitfall) beware x=0\n{SHARED_CLOSE}"
    assert render_broadcast([]) == ""
    assert "</shared_notes>" not in render_broadcast([entry(1, "bad </shared_notes> text")]).splitlines()[1]
    for word in ("verify", "sceptical", "own line of reasoning", "optional"):
        assert word in BROADCAST_RULES
