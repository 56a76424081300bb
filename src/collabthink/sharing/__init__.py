"""Engine-independent sharing layer of Collaborative Parallel Thinking.

notes (extract) -> pool (deduplicate) -> schedule (when) -> selection (what).
Importing this package does not import torch or sentence-transformers.
"""

from collabthink.sharing.dedup import (
    MINILM_PACKAGE,
    Embedder,
    MiniLMEmbedder,
    load_default_embedder,
    normalize_note,
)
from collabthink.sharing.notes import (
    MAX_NOTE_CHARS,
    NOTE_KINDS,
    NOTES_CLOSE,
    NOTES_OPEN,
    Note,
    extraction_instruction,
    fresh_extraction_messages,
    parse_notes,
)
from collabthink.sharing.pool import PoolConfig, PoolEntry, RoundAdd, SharedPool
from collabthink.sharing.schedule import (
    BROADCAST,
    EXPLORE,
    FINALIZE,
    Phase,
    ScheduleConfig,
    ScheduleStep,
    SharingSchedule,
)
from collabthink.sharing.selection import (
    BROADCAST_RULES,
    SHARED_CLOSE,
    SHARED_OPEN,
    content_words,
    novelty,
    render_broadcast,
    select_novel,
    select_randomk,
)

__all__ = [
    "BROADCAST",
    "BROADCAST_RULES",
    "EXPLORE",
    "FINALIZE",
    "MAX_NOTE_CHARS",
    "MINILM_PACKAGE",
    "NOTE_KINDS",
    "NOTES_CLOSE",
    "NOTES_OPEN",
    "SHARED_CLOSE",
    "SHARED_OPEN",
    "Embedder",
    "MiniLMEmbedder",
    "Note",
    "Phase",
    "PoolConfig",
    "PoolEntry",
    "RoundAdd",
    "ScheduleConfig",
    "ScheduleStep",
    "SharedPool",
    "SharingSchedule",
    "content_words",
    "extraction_instruction",
    "fresh_extraction_messages",
    "load_default_embedder",
    "normalize_note",
    "novelty",
    "parse_notes",
    "render_broadcast",
    "select_novel",
    "select_randomk",
]
