"""Which pool entries a branch receives, and how they are shown to it."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from collabthink.sharing.dedup import normalize_note
from collabthink.sharing.pool import PoolEntry

__all__ = [
    "select_randomk",
    "select_novel",
    "novelty",
    "content_words",
    "render_broadcast",
    "BROADCAST_RULES",
    "SHARED_OPEN",
    "SHARED_CLOSE",
]

SHARED_OPEN = "<shared_notes>"
SHARED_CLOSE = "</shared_notes>"

BROADCAST_RULES = (
    "Other workers are solving the same problem in parallel. Now and then you may see a "
    f"{SHARED_OPEN} block with notes from them. The notes are optional hints, not facts: "
    "verify a note before you use it, be sceptical of strong or numeric claims, "
    "and keep your own line of reasoning; ignore notes that do not help."
)


def select_randomk(pool_entries: Iterable[PoolEntry], branch: int, k: int, rng: random.Random) -> list[PoolEntry]:
    """``k`` entries uniformly at random (all if fewer), in id order.

    The baseline: nothing is excluded.  ``branch`` is unused but kept so both
    selectors share a call shape; independence across branches comes from the
    caller passing one rng per branch.  Input is sorted by id first so the draw
    does not depend on the order the caller happens to pass.
    """
    entries = sorted(pool_entries, key=lambda e: e.id)
    if k <= 0:
        return []
    if k >= len(entries):
        return entries
    return sorted(rng.sample(entries, k), key=lambda e: e.id)


_TOKEN_RE = re.compile(r"[^\W_]+")
# Words that carry no mathematical content; kept tiny on purpose.
_STOPWORDS = frozenset(
    """a an the and or of to in on at by for with from as is are be been being was were it its
    this that these those then than so thus hence we our us i you can must may might should would
    will not no if when where which who whose has have had do does did into onto over under
    each every any all some such also there here both either neither only just let""".split()
)


def content_words(text: str) -> set[str]:
    """Normalised alphanumeric tokens of ``text`` without stopwords."""
    return {t for t in _TOKEN_RE.findall(normalize_note(text)) if t not in _STOPWORDS}


def novelty(entry_text: str, own_words: set[str]) -> float:
    """Share of the entry's content words absent from the branch's own text (0..1)."""
    words = content_words(entry_text)
    if not words:
        return 0.0
    return len(words - own_words) / len(words)


def select_novel(
    pool_entries: Iterable[PoolEntry],
    branch: int,
    k: int,
    own_text: str,
    seen_ids: set[int],
    *,
    min_novelty: float = 0.0,
) -> list[PoolEntry]:
    """Up to ``k`` entries the branch most likely does not know yet, in id order.

    Excluded: entries this branch found (its own, or ones it rediscovered:
    ``author``/``found_by``), entries it was already shown (``seen_ids`` or
    ``received_by``), and entries whose novelty is <= ``min_novelty`` (by
    default: every content word already appears in the branch's text).

    Ranking: novelty (share of content words absent from ``own_text``) high
    first; ties go to more ``hits`` (found independently by more branches, so
    more likely correct), then to the lower id (older, deterministic).
    """
    if k <= 0:
        return []
    own_words = content_words(own_text)
    scored: list[tuple[float, int, int, PoolEntry]] = []
    for e in pool_entries:
        if e.author == branch or branch in e.found_by:
            continue
        if e.id in seen_ids or branch in e.received_by:
            continue
        score = novelty(e.text, own_words)
        if score <= min_novelty:
            continue
        scored.append((-score, -e.hits, e.id, e))
    scored.sort(key=lambda t: t[:3])
    return sorted((t[3] for t in scored[:k]), key=lambda e: e.id)


def render_broadcast(entries: Iterable[PoolEntry]) -> str:
    """Delimited block of entries, e.g. ``<shared_notes>\\n- (#3, insight) text\\n</shared_notes>``.

    Returns "" for no entries so the caller injects nothing.  Texts are put on
    one line and stripped of the block's tags so a note cannot close the block.
    """
    lines = []
    for e in entries:
        text = " ".join(e.text.split())
        text = text.replace(SHARED_OPEN, "").replace(SHARED_CLOSE, "").strip()
        lines.append(f"- (#{e.id}, {e.kind}) {text}")
    if not lines:
        return ""
    return "\n".join([SHARED_OPEN, *lines, SHARED_CLOSE])
