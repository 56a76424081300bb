"""Tests for answer extraction, normalisation and voting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collabthink.answers import (
    Vote,
    extract_boxed,
    final_answer,
    majority_vote,
    normalize_answer,
)

# (model output, expected final_answer)
FINAL_ANSWER_CASES = [
    ("Adding the two numbers, 7 + 11 = 18. So the answer is \\boxed{18}.", "18"),
    ("She has 3 apples left.\n\n**Final Answer**\n\\boxed{3}", "3"),
    ("The probability is one half, so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("Simplifying, we get $\\boxed{\\dfrac{3}{4}}$.", "\\dfrac{3}{4}"),
    ("Thus the length is $\\boxed{2\\sqrt{3}}$.", "2\\sqrt{3}"),
    ("So the answer is \\boxed{\\frac{\\sqrt{2}}{2}}.", "\\frac{\\sqrt{2}}{2}"),
    ("Evelyn had the highest rate, so \\boxed{\\text{Evelyn}}", "\\text{Evelyn}"),
    ("First I guessed \\boxed{12}, but recounting gives \\boxed{14}.", "14"),
    ("Try x = 2: \\boxed{4}. Try x = 3: \\boxed{9}. Final: \\boxed{9}", "9"),
    ("<think>Maybe it is \\boxed{5}? Let me check again.</think>\nThe answer is \\boxed{6}.", "6"),
    ("<think>Checking... yes it is \\boxed{7}.</think>\nTherefore the answer is 7.", "7"),
    ("<think>a \\boxed{1}</think> b \\boxed{2} </think> final \\boxed{3}", "3"),
    ("<think>wrong \\boxed{1}</think> b \\boxed{2} </think> no box here", "2"),
    ("Hence \\boxed{42}. Actually, let me double check: \\boxed{\\frac{84", "42"),
    ("The sum is \\boxed{10}. Wait, I think it should be \\boxed{", "10"),
    ("The answer is 18.", None),
    ("I am not sure how to proceed with this problem.", None),
    ("", None),
    ("The point is \\boxed{(1, 2)}.", "(1, 2)"),
    ("Expanding, $f(x) = \\boxed{x^2+1}$", "x^2+1"),
    (
        "The vector is $\\boxed{\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}}$.",
        "\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}",
    ),
    ("The domain is $\\boxed{[0, \\infty)}$.", "[0, \\infty)"),
    ("So $x \\in \\boxed{(-\\infty, 3]}$", "(-\\infty, 3]"),
    ("Total cost: $\\boxed{\\$18}$", "\\$18"),
    ("The angle measures \\boxed{30^\\circ}.", "30^\\circ"),
    ("Therefore $\\angle ABC = \\boxed{45^{\\circ}}$.", "45^{\\circ}"),
    ("The roots are \\boxed{\\{1, 2\\}}.", "\\{1, 2\\}"),
    ("Using a space: \\boxed {7}", "7"),
    ("Some models use fbox: \\fbox{11}", "11"),
    ("Nested groups: \\boxed{\\frac{\\frac{1}{2}}{3}}", "\\frac{\\frac{1}{2}}{3}"),
    ("The answer is \\boxed{ 25 }", "25"),
    ("Final answer: \\boxed{-3}.", "-3"),
    ("The answer is \\boxed{3.5}.", "3.5"),
    ("The choice is \\boxed{\\text{(C)}}", "\\text{(C)}"),
    ("So the total is \\boxed{1,000} dollars.", "1,000"),
    ("$y = \\boxed{2x + 3}$", "2x + 3"),
    ("Empty box \\boxed{} ignored, answer \\boxed{8}", "8"),
    ("Answer \\boxed{8} then empty \\boxed{ }", "8"),
    ("The pattern continues \\boxed{1, 2, 3, ...}", "1, 2, 3, ..."),
    ("Therefore, $\\boxed{\\left( \\frac{1}{2}, 3 \\right)}$", "\\left( \\frac{1}{2}, 3 \\right)"),
    ("\\boxed{\\pi}", "\\pi"),
    ("So $|x| = \\boxed{5}$ and we are done. }}}", "5"),
]


@pytest.mark.parametrize(("text", "expected"), FINAL_ANSWER_CASES)
def test_final_answer(text: str, expected: str | None) -> None:
    assert final_answer(text) == expected


def test_enough_extraction_cases() -> None:
    assert len(FINAL_ANSWER_CASES) >= 35


def test_extract_boxed_ignores_think_marker() -> None:
    text = "<think>\\boxed{1}</think> \\boxed{2} and later \\boxed{3}"
    assert extract_boxed(text) == "3"


def test_final_answer_prefers_after_think_end() -> None:
    # A box left open in the reasoning swallows the marker when the whole
    # text is scanned; looking after the marker first avoids that.
    text = "<think>maybe \\boxed{1 </think> The answer is \\boxed{2} }"
    assert extract_boxed(text) == "1 </think> The answer is \\boxed{2}"
    assert final_answer(text) == "2"


def test_final_answer_without_think_end() -> None:
    text = "<think>\\boxed{1}</think> the end"
    assert final_answer(text, think_end=None) == "1"
    assert final_answer("a END \\boxed{4}", think_end="END") == "4"


def test_extract_boxed_none() -> None:
    assert extract_boxed("no answer") is None
    assert extract_boxed("\\boxed{unclosed") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("18", "18"),
        ("$18$", "18"),
        ("\\$18", "18"),
        ("18.00", "18"),
        ("2.50", "2.5"),
        ("-3.0", "-3"),
        ("1,000", "1000"),
        ("1{,}000", "1000"),
        ("1\\,000", "1000"),
        ("12,345,678", "12345678"),
        ("(1,2)", "(1,2)"),
        ("(1, 2)", "(1,2)"),
        ("\\dfrac{3}{4}", "\\frac{3}{4}"),
        ("\\tfrac{3}{4}", "\\frac{3}{4}"),
        ("\\frac{3}{4}", "\\frac{3}{4}"),
        ("30^\\circ", "30"),
        ("30^{\\circ}", "30"),
        ("\\text{Evelyn}", "evelyn"),
        ("\\textbf{Evelyn}", "evelyn"),
        ("\\mathrm{Yes}", "yes"),
        ("New   York", "new york"),
        ("\\text{(C)}", "(c)"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("\\left[0, \\infty\\right)", "[0,\\infty)"),
        ("x^2 + 1", "x^2+1"),
        ("2\\!x", "2x"),
        ("2\\;x", "2x"),
        ("2\\ x", "2x"),
        ("\\rightarrow", "\\rightarrow"),
        ("\\text{5 cm}", "5cm"),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
        ("5.", "5"),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_normalize_groups_equivalent_spellings() -> None:
    spellings = ["\\dfrac{1}{2}", "$\\frac{1}{2}$", "\\frac {1}{2}", "\\tfrac{1}{2}"]
    assert len({normalize_answer(s) for s in spellings}) == 1


def test_majority_vote_basic() -> None:
    vote = majority_vote(["18", "17", "18.0", "$18$"])
    assert vote == Vote(winner="18", counts={"18": 3.0, "17": 1.0}, valid=4, total=4)


def test_majority_vote_groups_by_normalized_form() -> None:
    vote = majority_vote(["\\frac{1}{2}", "\\dfrac{1}{2}", "0.5", "0.5"])
    # 0.5 and \frac{1}{2} are not merged: normalisation evaluates nothing.
    assert vote.winner == "\\frac{1}{2}"
    assert vote.counts == {"\\frac{1}{2}": 2.0, "0.5": 2.0}


def test_majority_vote_tie_lowest_index_wins() -> None:
    assert majority_vote(["7", "8", "8", "7"]).winner == "7"
    assert majority_vote(["8", "7", "7", "8"]).winner == "8"
    assert majority_vote([None, "b", "a"]).winner == "b"


def test_majority_vote_none_handling() -> None:
    vote = majority_vote([None, None, "5", None])
    assert vote == Vote(winner="5", counts={"5": 1.0}, valid=1, total=4)
    all_none = majority_vote([None, None])
    assert all_none == Vote(winner=None, counts={}, valid=0, total=2)
    empty = majority_vote([])
    assert empty == Vote(winner=None, counts={}, valid=0, total=0)


def test_majority_vote_weights() -> None:
    vote = majority_vote(["1", "2", "2"], weights=[3.0, 1.0, 1.0])
    assert vote.winner == "1"
    assert vote.counts == {"1": 3.0, "2": 2.0}
    tie = majority_vote(["1", "2", "2"], weights=[2.0, 1.0, 1.0])
    assert tie.winner == "1"
    ignored = majority_vote([None, "2"], weights=[10.0, 0.5])
    assert ignored.winner == "2" and ignored.counts == {"2": 0.5}


def test_majority_vote_weight_length_mismatch() -> None:
    with pytest.raises(ValueError):
        majority_vote(["1", "2"], weights=[1.0])


def test_majority_vote_keeps_first_spelling() -> None:
    vote = majority_vote(["\\$1,000", "1000", "1000"])
    assert vote.winner == "\\$1,000"
    assert vote.counts == {"\\$1,000": 3.0}


_FRAGMENTS = st.sampled_from(
    [
        "\\boxed{",
        "\\boxed {",
        "\\fbox{",
        "{",
        "}",
        "\\{",
        "\\}",
        "\\",
        "</think>",
        "\\text{",
        "\\left(",
        "\\right.",
        "$",
        "^\\circ",
        "\\dfrac",
        "1,000",
        "5.00",
        ".",
        " ",
        "x",
        "\\\\",
    ]
)
_FRAGMENT_TEXT = st.lists(st.one_of(_FRAGMENTS, st.text(max_size=5)), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), _FRAGMENT_TEXT))
def test_never_raises(text: str) -> None:
    boxed = extract_boxed(text)
    answer = final_answer(text)
    assert boxed is None or isinstance(boxed, str)
    assert answer is None or isinstance(answer, str)
    assert isinstance(normalize_answer(text), str)
    if answer is not None:
        assert isinstance(normalize_answer(answer), str)
        assert majority_vote([answer, None]).winner == answer
