"""Note extraction: the instruction shown to a branch and the parser for its reply.

A *note* is one short, locally verified, reusable intermediate fact taken from a
branch's reasoning.  The same model that reasons also writes the notes, so the
instruction is short (small models read it, and every token costs prefill) and
the parser is forgiving (small models do not follow formats exactly).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Note",
    "NOTE_KINDS",
    "NOTES_OPEN",
    "NOTES_CLOSE",
    "MAX_NOTE_CHARS",
    "extraction_instruction",
    "fresh_extraction_messages",
    "parse_notes",
]

NOTES_OPEN = "<notes>"
NOTES_CLOSE = "</notes>"
NOTE_KINDS: tuple[str, ...] = ("insight", "pitfall")

#: Notes longer than this are dropped, not truncated: a cut sentence is no
#: longer the fact the branch verified, and a long note is rarely "one sentence".
MAX_NOTE_CHARS = 300


@dataclass(frozen=True)
class Note:
    """One extracted information unit."""

    kind: str  # "insight" | "pitfall"
    text: str


def _render_own_note(note: str | Note) -> str:
    if isinstance(note, Note):
        return f"(type={note.kind}) {note.text}"
    return str(note)


def extraction_instruction(own_notes: Sequence[str | Note], max_notes: int = 5) -> str:
    """Instruction asking for up to ``max_notes`` new notes about the reasoning so far.

    Phrased neutrally ("Pause. ...") because it is used both inside the model's
    own reasoning (fork mode) and as a user message after a transcript (fresh
    mode).  The branch's earlier notes are listed so it does not repeat them.
    """
    # Measured on Qwen2.5-1.5B: a format shown with "..." placeholders is copied literally, so the
    # format is described in words and the note text is left for the model to write.
    lines = [
        f"Pause. Before continuing, write up to {max_notes} notes for other workers solving the same problem.",
        "Each note is one sentence: a specific intermediate result from the work above that you have checked "
        "(type=insight: a fact, relation, invariant or reduction), or a step to avoid "
        "(type=pitfall: an unsafe step, a missing case or a dead end).",
        "Use concrete quantities. Do not restate facts given in the problem. Never write a final answer, "
        "a count of solutions, or a claim that something is unique or impossible.",
    ]
    own = [_render_own_note(n).strip() for n in own_notes]
    own = [n for n in own if n]
    if own:
        lines.append("Your earlier notes (do not repeat them):")
        lines.extend(f"- {n}" for n in own)
    lines += [
        'Write each note on its own line, starting with "- (type=insight)" or "- (type=pitfall)", '
        f"then end with {NOTES_CLOSE}. If nothing new is verified, write {NOTES_CLOSE} at once.",
    ]
    return "\n".join(lines)


def fresh_extraction_messages(
    problem: str,
    transcript: str,
    own_notes: Sequence[str | Note],
    max_notes: int = 5,
) -> list[dict[str, str]]:
    """Chat messages (system + user) for fresh-mode extraction.

    Fresh mode runs extraction as a separate conversation, so the problem and
    the branch transcript are given explicitly, delimited so the model does not
    continue the transcript instead of writing notes.
    """
    system = (
        "You read one worker's partial solution to a maths problem and write short, "
        "verified notes about it. You do not solve the problem."
    )
    user = (
        f"Problem:\n{problem.strip()}\n\n"
        f"Worker's reasoning so far:\n<reasoning>\n{transcript.strip()}\n</reasoning>\n\n"
        f"{extraction_instruction(own_notes, max_notes=max_notes)}"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --- parsing -----------------------------------------------------------------

# Tolerant to `<notes>`, `<note>`, `< Notes >`.
_OPEN_RE = re.compile(r"<\s*notes?\s*>", re.IGNORECASE)
_CLOSE_RE = re.compile(r"<\s*/\s*notes?\s*>", re.IGNORECASE)

# Optional bullet, then a type tag in () or [], optional "type=" / "type:".
_NOTE_RE = re.compile(
    r"""^\s*
        (?:[-*+\u2022\u2013\u2014]|\d{1,2}[.)])?\s*     # optional bullet
        [(\[]\s*(?:type\s*[=:]\s*)?([A-Za-z_]+)\s*[)\]] # (type=insight) / [pitfall]
        \s*[:\-\u2013\u2014]?\s*                          # optional separator
        (.*?)\s*$""",
    re.VERBOSE,
)
# A line that *starts* a bullet, even a malformed or cut one.
_BULLET_START_RE = re.compile(r"^\s*(?:[-*+\u2022\u2013\u2014]|\d{1,2}[.)]|[(\[])")

_FINAL_ANSWER_RE = re.compile(
    r"\\boxed"
    r"|\bfinal\s+answer\b"
    r"|\bthe\s+answer\s+(?:is|was|=|would\s+be|should\s+be|must\s+be|equals)\b"
    r"|\banswer\s*[:=]",
    re.IGNORECASE,
)


_WRAPPER_TAG_RE = re.compile(r"^<\s*([A-Za-z_]+)\s*>(.*?)<\s*/\s*\1\s*>$")
_HAS_CONTENT_RE = re.compile(r"[^\W_]")


def _clean_text(text: str) -> str:
    text = " ".join(text.split())
    # Small models wrap the sentence in the placeholder's tag (`<fact>...</fact>`): unwrap it.
    wrapped = _WRAPPER_TAG_RE.match(text)
    if wrapped:
        text = wrapped.group(2).strip()
    # Models sometimes quote the sentence; the quotes carry no information.
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def parse_notes(text: str, finished: bool, *, max_notes: int | None = None) -> list[Note]:
    """Parse notes from a model reply; never raises.

    - Parsing starts after the first opening tag if there is one (otherwise at
      the start) and stops at the first closing tag; text after it is ignored.
      ``<note>``/``</note>`` are accepted as tags too.
    - ``finished=False`` (cut by max_tokens) with no closing tag: the last
      bullet-like line, possibly partial, and anything after it are dropped.
      When a closing tag was written, the block is complete and nothing is dropped.
    - Accepted lines: ``- (type=insight) text``, ``* (type = Insight) text``,
      ``- (insight) text``, ``- [pitfall] text``, numbered bullets; kinds are
      case-insensitive.  Malformed lines, unknown kinds and empty texts are skipped.
    - Notes longer than :data:`MAX_NOTE_CHARS` are dropped (see there), as are
      notes that look like final answers (``\\boxed``, "the answer is", ...).
    - ``max_notes`` keeps only the first N accepted notes.
    """
    if not isinstance(text, str) or not text:
        return []
    opening = _OPEN_RE.search(text)
    if opening is not None:
        text = text[opening.end():]
    closing = _CLOSE_RE.search(text)
    complete = finished
    if closing is not None:
        text = text[: closing.start()]
        complete = True

    lines = text.splitlines()
    if not complete:
        last = max((i for i, ln in enumerate(lines) if _BULLET_START_RE.match(ln)), default=None)
        if last is not None:
            lines = lines[:last]

    notes: list[Note] = []
    for line in lines:
        m = _NOTE_RE.match(line)
        if m is None:
            continue
        kind = m.group(1).lower()
        if kind not in NOTE_KINDS:
            continue
        body = _clean_text(m.group(2))
        if not _HAS_CONTENT_RE.search(body) or len(body) > MAX_NOTE_CHARS:  # "..." is a placeholder, not a note
            continue
        if _FINAL_ANSWER_RE.search(body):
            continue
        notes.append(Note(kind=kind, text=body))
        if max_notes is not None and len(notes) >= max_notes:
            break
    return notes
