"""Grading a predicted answer against a reference with ``math-verify``.

math-verify's own timeouts use ``signal.alarm``, which only works on the
main thread, so we disable them (``parsing_timeout=None`` for ``parse``,
``timeout_seconds=None`` for ``verify``) and enforce our own deadline by
running the check in a daemon worker thread. A worker that overruns is sent
an asynchronous exception so it stops at its next Python bytecode instead of
burning CPU forever (sympy is pure Python, so this lands quickly).
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Callable
from typing import TypeVar

from collabthink.answers import normalize_answer

__all__ = ["is_correct"]

T = TypeVar("T")

# ANTLR's shared parser caches and sympy's caches are not documented as
# thread-safe, so math-verify calls are serialised.
_MATH_VERIFY_LOCK = threading.Lock()

# Plain words ("Evelyn", "New York") would otherwise be parsed as a product
# of single-letter symbols, which makes anagrams compare equal.
_PLAIN_WORDS = re.compile(r"[A-Za-z]{2,}(?: [A-Za-z]+)*")


class _GradingTimeout(BaseException):
    """Raised inside an overrunning worker thread to stop it.

    A BaseException so the broad ``except Exception`` blocks inside
    math-verify and sympy cannot swallow it and carry on computing.
    """


class _DropDisabledTimeoutWarning(logging.Filter):
    """Hide math-verify's warning that its timeout is off: we provide one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropDisabledTimeoutWarning())


def is_correct(predicted: str | None, reference: str, timeout_s: float = 5.0) -> bool:
    """Return True if ``predicted`` is mathematically equal to ``reference``.

    ``predicted`` is the content of a ``\\boxed{}`` (or None when the branch
    gave no answer, which is always wrong). Identical answers after
    :func:`normalize_answer` are accepted without calling math-verify; other
    pairs get at most ``timeout_s`` seconds of math-verify and count as wrong
    on timeout. Safe to call from any thread; never raises.
    """
    if predicted is None:
        return False
    try:
        # Cheap exact match first; it is also the fallback when math-verify fails.
        if _normalized_equal(predicted, reference):
            return True
        ok = _run_with_deadline(
            lambda: _math_verify_equal(predicted, reference), timeout_s
        )
        return bool(ok)
    except Exception:
        return False


def _normalized_equal(predicted: str, reference: str) -> bool:
    key = normalize_answer(predicted)
    return bool(key) and key == normalize_answer(reference)


def _math_verify_equal(predicted: str, reference: str) -> bool:
    # Imported lazily: it pulls in sympy and ANTLR, which is slow.
    from math_verify import parse, verify

    with _MATH_VERIFY_LOCK:
        gold = parse(_as_latex(reference), parsing_timeout=None)
        pred = parse(_as_latex(predicted), parsing_timeout=None)
        if not gold or not pred:
            return False
        return verify(gold, pred, timeout_seconds=None)


def _as_latex(answer: str) -> str:
    """Wrap a bare answer as ``\\boxed{...}`` so math-verify extracts it whole."""
    s = answer.strip()
    if "\\boxed" in s:
        return s
    while s.startswith("$"):
        s = s[1:]
    while s.endswith("$") and not s.endswith("\\$"):
        s = s[:-1]
    s = s.strip()
    if _PLAIN_WORDS.fullmatch(s):
        s = f"\\text{{{s}}}"
    return f"\\boxed{{{s}}}"


def _run_with_deadline(fn: Callable[[], T], timeout_s: float) -> T | None:
    """Run ``fn()`` in a daemon thread; return its result, or None on timeout.

    Exceptions from ``fn`` are re-raised in the caller. On timeout the worker
    is asked to stop via an asynchronous exception; being a daemon, it can
    never block interpreter exit even if it ignores that request.
    """
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # includes _GradingTimeout
            result["error"] = exc

    worker = threading.Thread(target=work, name="collabthink-grading", daemon=True)
    worker.start()
    worker.join(max(timeout_s, 0.0))
    if worker.is_alive():
        _interrupt(worker)
        return None
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


def _interrupt(thread: threading.Thread) -> None:
    """Raise ``_GradingTimeout`` inside ``thread`` at its next bytecode."""
    if thread.ident is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(_GradingTimeout)
    )
