"""Progress of an evaluation: one bar over (question x setting) with running accuracy and tokens/s.

On a terminal it is a rich progress bar whose line also shows the live tokens of the method at work;
elsewhere (logs, CI) a plain line per finished unit, plus the `solve` progress line every 10 s
while a long method runs.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

from .metrics import record_correct, setting_label


class EvalProgress:
    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = 0
        self.done = 0
        self.correct: dict[str, int] = defaultdict(int)
        self.count: dict[str, int] = defaultdict(int)
        self.methods: list[str] = []
        self.tokens = 0  # generated in this session
        self.solve_s = 0.0  # wall-clock seconds of this session's method runs (model loading aside)
        self.started = time.monotonic()
        self.current = ""
        self.live = ""
        self._bar = None
        self._task = None
        self._last_event = 0.0
        self._solve_display = None

    # ------------------------------------------------------------------ state
    def begin(self, total: int, methods: list[str], records: list[dict]) -> None:
        self.total, self.methods = total, list(methods)
        for r in records:
            self._count(r)
        if not self.enabled:
            return
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.table import Column

            fixed = dict(no_wrap=True)
            self._bar = Progress(
                TextColumn("[bold]eval", table_column=Column(**fixed)),
                BarColumn(bar_width=20, table_column=Column(**fixed)),
                MofNCompleteColumn(table_column=Column(min_width=2 * len(str(total)) + 1, **fixed)),
                TimeElapsedColumn(table_column=Column(min_width=7, **fixed)),
                TextColumn("{task.description}", table_column=Column(ratio=1, overflow="ellipsis", **fixed)),
                console=Console(file=self.stream), transient=False, expand=True)
            self._bar.start()
            self._task = self._bar.add_task(self.status(), total=max(total, 1))
        else:
            from ..cli import ProgressDisplay

            self._solve_display = ProgressDisplay(enabled=True, stream=self.stream)
            resumed = sum(self.count.values())
            if resumed:
                self._line(f"resuming: {resumed} finished record(s) in the run file | {self.status()}")

    def _count(self, record: dict) -> None:
        m = record.get("method", "")
        self.count[m] += 1
        self.correct[m] += 1 if record_correct(record) else 0

    def accuracy(self) -> str:
        parts = []
        for m in self.methods:
            n = self.count.get(m, 0)
            parts.append(f"{m} {self.correct.get(m, 0)}/{n}" + (f" ({100 * self.correct[m] / n:.0f}%)" if n else ""))
        return "acc " + " · ".join(parts)

    def rate(self) -> float:
        """Generated tokens per second of method runs in this session."""
        return self.tokens / self.solve_s if self.solve_s > 0 else 0.0

    def status(self) -> str:
        text = f"{self.rate():.1f} tok/s | {self.accuracy()}"
        if self.current:
            text += f" | {self.current}"
        if self.live:
            text += f" {self.live}"
        return text

    # ------------------------------------------------------------------ events from the runner
    def skip(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=self.status())

    def start(self, question, setting: dict) -> None:
        self.current = f"q {question.id} {setting_label(setting)}"
        self.live = ""
        self._refresh()

    def method(self, name: str) -> None:
        self.current = self.current.split(" [")[0] + f" [{name}]"
        self.live = ""
        self._refresh()

    def event(self, ev: dict) -> None:
        """The method's own progress callback (tokens per branch while it decodes)."""
        if not self.enabled:
            return
        if self._solve_display is not None:
            self._solve_display(ev)
            return
        now = time.monotonic()
        if now - self._last_event < 0.25:
            return
        self._last_event = now
        toks = ev.get("tokens", [])
        phase = ev.get("phase", "")
        self.live = f"{phase} {sum(toks)} tok"
        self._refresh()

    def record(self, record: dict) -> None:
        self._count(record)
        cost = record.get("trace", {}).get("cost", {}) or {}
        self.tokens += int(cost.get("generated_tokens", 0) or 0)
        self.solve_s += float(cost.get("wall_s", 0.0) or 0.0)
        self._refresh()

    def advance(self) -> None:
        self.done += 1
        self.live = ""
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=self.status())
        elif self.enabled:
            width = len(str(self.total))
            self._line(f"[{self.done:>{width}}/{self.total}] {self.status()}")

    def close(self) -> None:
        if self._bar is not None:
            self.current = self.live = ""
            self._bar.update(self._task, completed=self.done, description=self.status())
            self._bar.stop()
            self._bar = None
        if self._solve_display is not None:
            self._solve_display.close()

    # ------------------------------------------------------------------ output
    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=self.status())

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
