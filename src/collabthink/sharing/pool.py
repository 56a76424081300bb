"""The per-question shared pool of deduplicated notes.

Every round, the notes extracted from all branches are merged into the pool:
a note that restates an existing entry only raises that entry's ``hits``, so
the number of *new* entries per round measures how much new information the
branches still produce (the sharing schedule is driven by it).
"""

from __future__ import annotations

import re

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from collabthink.sharing.dedup import Embedder, normalize_note
from collabthink.sharing.notes import Note

__all__ = ["PoolEntry", "PoolConfig", "RoundAdd", "SharedPool"]


@dataclass
class PoolEntry:
    """One deduplicated note.

    ``hits`` counts every extracted note merged into this entry, the first one
    included.  ``found_by`` holds the author and every branch that later
    produced a duplicate (used so a branch is not sent its own facts back).
    """

    id: int
    kind: str
    text: str
    author: int
    round: int
    hits: int = 1
    received_by: set[int] = field(default_factory=set)
    found_by: set[int] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "text": self.text,
            "author": self.author,
            "round": self.round,
            "hits": self.hits,
            "received_by": sorted(self.received_by),
            "found_by": sorted(self.found_by | {self.author}),
        }


@dataclass(frozen=True)
class PoolConfig:
    max_entries: int = 10_000
    cosine_threshold: float = 0.75
    seed: int = 0
    # Sentence embeddings barely see numbers: measured on Qwen2.5-1.5B notes, "eggs left is 13 - 4 = 9"
    # and "eggs left is 13" passed the cosine rule and the shorter, wrong one replaced the right one.
    # So a cosine match also needs the same numbers.
    numbers_must_match: bool = True


_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def _numbers(text: str) -> list[str]:
    return sorted(_NUMBER_RE.findall(text))


@dataclass
class RoundAdd:
    """What one :meth:`SharedPool.add_round` call did.

    ``new_ids`` lists the entries created this round (even one evicted again by
    the cap in the same call, which then also appears in ``evicted_ids``);
    ``duplicate_ids`` lists, once each, the entries that existed before this
    round and were hit again.  Merges between notes of the same batch only raise
    the new entry's ``hits``.
    """

    extracted: int
    new_ids: list[int] = field(default_factory=list)
    duplicate_ids: list[int] = field(default_factory=list)
    evicted_ids: list[int] = field(default_factory=list)

    @property
    def new_entries(self) -> int:
        return len(self.new_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "extracted": self.extracted,
            "new_ids": list(self.new_ids),
            "duplicate_ids": list(self.duplicate_ids),
            "evicted_ids": list(self.evicted_ids),
        }


def _contains_token_aligned(longer: str, shorter: str) -> bool:
    """``shorter`` occurs in ``longer`` without cutting an alphanumeric token.

    Plain substring tests make ``"a = 1"`` a duplicate of ``"a = 12"``; requiring
    token edges keeps containment meaning "says the same thing, and more".
    """
    if not shorter:
        return False
    n = len(shorter)
    start = longer.find(shorter)
    while start >= 0:
        before_ok = start == 0 or not (longer[start - 1].isalnum() and shorter[0].isalnum())
        end = start + n
        after_ok = end == len(longer) or not (longer[end].isalnum() and shorter[-1].isalnum())
        if before_ok and after_ok:
            return True
        start = longer.find(shorter, start + 1)
    return False


def _contained_either_way(a: str, b: str) -> bool:
    if len(a) >= len(b):
        return _contains_token_aligned(a, b)
    return _contains_token_aligned(b, a)


class _VectorStore:
    """Embeddings of pool entries in a growable matrix (cosine = one mat-vec)."""

    def __init__(self) -> None:
        self._mat: np.ndarray | None = None
        self._ids: list[int] = []
        self._row: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def put(self, entry_id: int, vec: np.ndarray) -> None:
        row = self._row.get(entry_id)
        if row is not None:
            assert self._mat is not None
            self._mat[row] = vec
            return
        if self._mat is None:
            self._mat = np.zeros((16, vec.shape[0]), dtype=np.float32)
        elif len(self._ids) == self._mat.shape[0]:
            grown = np.zeros((2 * self._mat.shape[0], self._mat.shape[1]), dtype=np.float32)
            grown[: len(self._ids)] = self._mat
            self._mat = grown
        self._row[entry_id] = len(self._ids)
        self._mat[len(self._ids)] = vec
        self._ids.append(entry_id)

    def remove(self, entry_id: int) -> None:
        row = self._row.pop(entry_id, None)
        if row is None:
            return
        assert self._mat is not None
        last = len(self._ids) - 1
        if row != last:
            moved = self._ids[last]
            self._mat[row] = self._mat[last]
            self._ids[row] = moved
            self._row[moved] = row
        self._ids.pop()

    def similarities(self, vec: np.ndarray) -> tuple[list[int], np.ndarray]:
        if self._mat is None or not self._ids:
            return [], np.zeros(0, dtype=np.float32)
        return self._ids, self._mat[: len(self._ids)] @ vec


def _normalise_rows(mat: np.ndarray) -> np.ndarray:
    mat = np.asarray(mat, dtype=np.float32)
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return mat / norms


class SharedPool:
    """Deduplicating store of notes for one question.

    Two notes are duplicates when one's normalised text contains the other's
    (token-aligned, either way) or, with an embedder, when their cosine is at
    least ``config.cosine_threshold``.  Without an embedder only the text rules
    apply (``uses_embeddings`` is then False, for the run record).
    """

    def __init__(self, config: PoolConfig | None = None, embedder: Embedder | None = None):
        self.config = config or PoolConfig()
        if self.config.max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.embedder = embedder
        self._entries: dict[int, PoolEntry] = {}  # insertion order == id order
        self._norm: dict[int, str] = {}
        self._vectors = _VectorStore()
        self._next_id = 0
        self._rng = random.Random(self.config.seed)

    # -- read access ---------------------------------------------------------

    @property
    def uses_embeddings(self) -> bool:
        return self.embedder is not None

    @property
    def entries(self) -> list[PoolEntry]:
        """Entries in id order."""
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._entries

    def get(self, entry_id: int) -> PoolEntry | None:
        return self._entries.get(entry_id)

    def mark_received(self, branch: int, ids: Sequence[int]) -> None:
        """Record that ``branch`` was shown ``ids`` (evicted ids are ignored)."""
        for entry_id in ids:
            entry = self._entries.get(entry_id)
            if entry is not None:
                entry.received_by.add(branch)

    # -- adding --------------------------------------------------------------

    def _find_duplicate(self, norm: str, vec: np.ndarray | None) -> int | None:
        # Text rule first (cheap, exact); the lowest matching id wins.
        for entry_id, other in self._norm.items():
            if other == norm or _contained_either_way(other, norm):
                return entry_id
        if vec is None:
            return None
        ids, sims = self._vectors.similarities(vec)
        numbers = _numbers(norm) if self.config.numbers_must_match else None
        for i in np.argsort(-sims, kind="stable"):
            if float(sims[i]) < self.config.cosine_threshold:
                break
            if numbers is None or _numbers(self._norm[ids[i]]) == numbers:
                return ids[i]
        return None

    def add_round(self, notes: Sequence[tuple[int, Note]], round: int) -> RoundAdd:
        """Merge one round of ``(author_branch, note)`` pairs into the pool.

        Notes are handled in the given order, each against the pool *including*
        entries created earlier in the same batch, so two paraphrases in one
        batch yield one entry and the first author keeps it.  A duplicate keeps
        the existing id and kind and takes the shorter text.
        """
        result = RoundAdd(extracted=len(notes))
        items = [(author, note, normalize_note(note.text)) for author, note in notes]
        items = [it for it in items if it[2]]
        if not items:
            return result

        vectors: dict[str, np.ndarray] = {}
        if self.embedder is not None:
            unique = list(dict.fromkeys(norm for _, _, norm in items))
            mat = _normalise_rows(self.embedder.embed(unique))
            if mat.shape[0] != len(unique):
                raise ValueError(f"embedder returned {mat.shape[0]} rows for {len(unique)} texts")
            vectors = {norm: mat[i] for i, norm in enumerate(unique)}

        existing_before = set(self._entries)
        duplicate_seen: set[int] = set()
        for author, note, norm in items:
            vec = vectors.get(norm)
            dup = self._find_duplicate(norm, vec)
            if dup is None:
                entry = PoolEntry(
                    id=self._next_id,
                    kind=note.kind,
                    text=note.text.strip(),
                    author=author,
                    round=round,
                    found_by={author},
                )
                self._next_id += 1
                self._entries[entry.id] = entry
                self._norm[entry.id] = norm
                if vec is not None:
                    self._vectors.put(entry.id, vec)
                result.new_ids.append(entry.id)
                continue
            entry = self._entries[dup]
            entry.hits += 1
            entry.found_by.add(author)
            text = note.text.strip()
            if len(text) < len(entry.text):
                entry.text = text
                self._norm[dup] = norm
                if vec is not None:
                    self._vectors.put(dup, vec)
            if dup in existing_before and dup not in duplicate_seen:
                duplicate_seen.add(dup)
                result.duplicate_ids.append(dup)

        result.evicted_ids = self._evict()
        return result

    def _evict(self) -> list[int]:
        excess = len(self._entries) - self.config.max_entries
        if excess <= 0:
            return []
        victims = sorted(self._rng.sample(list(self._entries), excess))
        for entry_id in victims:
            del self._entries[entry_id]
            del self._norm[entry_id]
            self._vectors.remove(entry_id)
        return victims
