"""Answer extraction from model outputs and majority voting over branches.

A branch only counts as answering when it writes its answer inside
``\\boxed{...}``: guessing from plain text would let half-finished reasoning
vote, so unboxed outputs are treated as invalid (``None``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Vote",
    "extract_boxed",
    "final_answer",
    "majority_vote",
    "normalize_answer",
]

# `\boxed{`, `\boxed {` and `\fbox{`; the match ends on the opening brace.
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str) -> str | None:
    """Return the content of the last complete ``\\boxed{...}`` in ``text``.

    Braces are matched so nested groups such as ``\\frac{1}{2}`` stay intact;
    escaped braces (``\\{``) do not count. "Last" means the box that closes
    last, so a box cut off by the token limit is ignored and the previous
    complete one is used. Empty boxes are skipped. The result is stripped of
    surrounding whitespace and of one trailing period.
    """
    box_braces = {m.end() - 1 for m in _BOX_OPEN.finditer(text)}
    if not box_braces:
        return None
    # One linear pass with a stack of open braces (position, is_box), so
    # pathological inputs full of unclosed boxes stay cheap.
    stack: list[tuple[int, bool]] = []
    found: str | None = None
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character (`\{`, `\}`, `\\`)
            continue
        if ch == "{":
            stack.append((i, i in box_braces))
        elif ch == "}" and stack:
            start, is_box = stack.pop()
            if is_box:
                content = _clean(text[start + 1 : i])
                if content:
                    found = content
        i += 1
    return found


def _clean(content: str) -> str:
    """Strip whitespace and a single sentence-ending period (not an ellipsis)."""
    content = content.strip()
    if content.endswith(".") and not content.endswith(".."):
        content = content[:-1].rstrip()
    return content


def final_answer(text: str, think_end: str | None = "</think>") -> str | None:
    """Return the boxed answer of one branch, or ``None`` if it has none.

    Boxes after the last ``think_end`` marker are preferred because the
    reasoning part often contains tentative boxes that were later revised;
    if the text after the marker has no box we fall back to the whole text.
    """
    if think_end and think_end in text:
        tail = text[text.rindex(think_end) + len(think_end) :]
        answer = extract_boxed(tail)
        if answer is not None:
            return answer
    return extract_boxed(text)


# --- normalisation ---------------------------------------------------------

_UNWRAP_OPEN = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{")
_NULL_DELIMITER = re.compile(r"\\(?:left|right)\.")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
# A `\\` line break is matched first so its second backslash is not
# mistaken for the start of a `\ ` spacing command.
_SPACING = re.compile(r"(\\\\)|\\[!,;: ]|\\q?quad(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])")
_FRAC_VARIANT = re.compile(r"\\[dt]frac(?![A-Za-z])")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"[-+]?\d+\.\d+")
_TEXT_CHARS = re.compile(r"[A-Za-z .,'()\-]+")
_LETTER = re.compile(r"[A-Za-z]")
_WHITESPACE = re.compile(r"\s+")


def normalize_answer(ans: str) -> str:
    """Return a canonical key so differently typeset equal answers vote together.

    Only formatting is removed (dollars, ``\\left``/``\\right``, spacing
    commands, ``\\text{}`` wrappers, degree signs, ``\\dfrac``, thousands
    separators and trailing zeros of plain numbers, whitespace); no maths is
    evaluated. Pure text answers are lowercased. Never raises: on any
    internal error the stripped input is returned.
    """
    try:
        return _normalize(ans)
    except Exception:  # a voting key must always be produced
        return str(ans).strip()


def _normalize(ans: str) -> str:
    s = ans.strip()
    s = s.replace("\\$", "").replace("$", "")
    s = _unwrap_commands(s)
    s = _NULL_DELIMITER.sub("", s)
    s = _LEFT_RIGHT.sub("", s)
    s = _SPACING.sub(lambda m: m.group(1) or "", s)
    s = _DEGREES.sub("", s)
    s = _FRAC_VARIANT.sub(r"\\frac", s)
    s = s.replace("{,}", ",")
    s = _clean(s)

    if _TEXT_CHARS.fullmatch(s) and _LETTER.search(s):  # pure text answer
        return _WHITESPACE.sub(" ", s).strip().lower()

    s = _WHITESPACE.sub("", s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if _DECIMAL.fullmatch(s):
        s = s.rstrip("0").rstrip(".")
    return s


def _unwrap_commands(s: str) -> str:
    """Replace ``\\text{X}`` (and similar) by ``X``, respecting nested braces.

    One pass with a stack that remembers, for every open brace, whether its
    closing brace belongs to an unwrapped command and must be dropped. An
    unclosed command just loses its ``\\text{`` prefix.
    """
    out: list[str] = []
    keep_close: list[bool] = []
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch == "\\":
            m = _UNWRAP_OPEN.match(s, i)
            if m is not None:
                keep_close.append(False)
                i = m.end()
            else:
                out.append(s[i : i + 2])
                i += 2
            continue
        if ch == "{":
            keep_close.append(True)
        elif ch == "}" and keep_close and not keep_close.pop():
            i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


# --- voting ----------------------------------------------------------------


@dataclass(frozen=True)
class Vote:
    """Outcome of a vote.

    ``counts`` maps each group's representative spelling (its first original
    spelling) to its summed weight; ``valid`` is the number of non-None
    answers and ``total`` the number of branches.
    """

    winner: str | None
    counts: dict[str, float]
    valid: int
    total: int


def majority_vote(
    answers: Sequence[str | None], weights: Sequence[float] | None = None
) -> Vote:
    """Weighted majority vote over branch answers.

    Answers are grouped by :func:`normalize_answer`; ``None`` answers count
    in ``total`` but never win, so the winner is ``None`` only when every
    answer is ``None``. Each answer adds its weight (1 when ``weights`` is
    None) to its group.

    Tie-break: among groups with equal summed weight, the group whose first
    member has the lowest branch index wins. This keeps results reproducible
    without needing randomness.
    """
    if weights is not None and len(weights) != len(answers):
        raise ValueError(
            f"got {len(weights)} weights for {len(answers)} answers"
        )
    representative: dict[str, str] = {}  # key -> first spelling, in first-seen order
    totals: dict[str, float] = {}
    valid = 0
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        valid += 1
        key = normalize_answer(answer)
        weight = 1.0 if weights is None else float(weights[i])
        if key not in totals:
            representative[key] = answer
            totals[key] = 0.0
        totals[key] += weight

    winner_key: str | None = None
    for key, total in totals.items():  # first-seen order, so strict > keeps the earliest on ties
        if winner_key is None or total > totals[winner_key]:
            winner_key = key

    counts = {representative[key]: total for key, total in totals.items()}
    winner = representative[winner_key] if winner_key is not None else None
    return Vote(winner=winner, counts=counts, valid=valid, total=len(answers))
