"""Tests for grading against references with math-verify."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from collabthink.grading import _run_with_deadline, is_correct

# (predicted, reference, expected)
GRADING_CASES = [
    ("18", "18", True),
    ("18.0", "18", True),
    ("\\$18", "18", True),
    ("\\$18.00", "18", True),
    ("1,000", "1000", True),
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{14}{3}", "\\frac{14}{3}", True),
    ("\\frac{28}{6}", "\\frac{14}{3}", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("x^2+1", "1 + x^2", True),
    ("30^\\circ", "30", True),
    ("[0, \\infty)", "[0,\\infty)", True),
    ("(-\\infty, 3]", "(-\\infty, 3)", False),
    ("(1, 2)", "(1,2)", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\text{Evelyn}", "Evelyn", True),
    ("\\text{Evelyn}", "\\text{Bob}", False),
    ("Nelyve", "Evelyn", False),
    ("\\text{(C)}", "\\text{(C)}", True),
    ("C", "\\text{(C)}", True),
    ("B", "\\text{(C)}", False),
    ("17", "18", False),
    ("\\frac{1}{3}", "0.5", False),
    ("$18$", "18", True),
    (None, "18", False),
    ("", "18", False),
    ("\\boxed{", "18", False),
    ("\\frac{", "\\frac{1}{2}", False),
    ("", "", False),
]


@pytest.mark.parametrize(("predicted", "reference", "expected"), GRADING_CASES)
def test_is_correct(predicted: str | None, reference: str, expected: bool) -> None:
    assert is_correct(predicted, reference) is expected


def test_is_correct_off_main_thread() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(is_correct, p, r) for p, r, _ in GRADING_CASES]
        results = [f.result(timeout=60) for f in futures]
    assert results == [expected for _, _, expected in GRADING_CASES]


def test_deadline_stops_runaway_worker() -> None:
    def spin() -> int:
        while True:
            pass

    start = time.monotonic()
    assert _run_with_deadline(spin, 0.2) is None
    assert time.monotonic() - start < 2.0
    # The worker is interrupted, so it does not keep running forever.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(
        t.name == "collabthink-grading" for t in threading.enumerate()
    ):
        time.sleep(0.01)
    assert not any(t.name == "collabthink-grading" for t in threading.enumerate())


def test_deadline_passes_result_and_errors() -> None:
    assert _run_with_deadline(lambda: 42, 5.0) == 42
    with pytest.raises(ZeroDivisionError):
        _run_with_deadline(lambda: 1 / 0, 5.0)
