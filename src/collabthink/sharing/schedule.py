"""Adaptive sharing schedule: when to start and stop broadcasting pool entries.

Early on, branches should explore independently (sharing too soon makes them
converge on one line of attack).  Once they stop producing new information,
sharing what the others found helps; once even that dries up, broadcasting only
costs prefill, so it stops.  The signal is the information gain per round,

    IG_t = new pool entries in round t / T,

where T is the chunk size of the round: the tokens *each* branch decodes per
round (passed in by the caller), not the sum over branches, so IG does not
depend on the number of branches.  After ``min_rounds`` rounds,

    D_t = mean(IG of the last ``window`` rounds)
          / max(mean(IG of the first ``window`` rounds), 1e-8)

and the phases move explore -> broadcast when D_t < tau_start, and
broadcast -> finalize when D_t < tau_stop in a round that *began* in broadcast
(so each phase lasts at least one round).  Phases never go back.

Edge case: if the first ``window`` rounds produced nothing, the denominator is
1e-8, so D_t is huge (stay exploring) as soon as later rounds find something,
and 0 while they find nothing (start broadcasting, then finalize a round later).

D_t is computed with exact fractions and the thresholds are read as the decimals
they print as, so boundary cases (D_t == tau) behave as computed by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Literal

__all__ = [
    "EXPLORE",
    "BROADCAST",
    "FINALIZE",
    "Phase",
    "ScheduleConfig",
    "ScheduleStep",
    "SharingSchedule",
]

Phase = Literal["explore", "broadcast", "finalize"]
EXPLORE: Phase = "explore"
BROADCAST: Phase = "broadcast"
FINALIZE: Phase = "finalize"

_EPS = Fraction(1, 10**8)


@dataclass(frozen=True)
class ScheduleConfig:
    enabled: bool = True
    tau_start: float = 0.40
    tau_stop: float = 0.10
    window: int = 3
    min_rounds: int = 4

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be >= 1")
        if self.min_rounds < self.window:
            raise ValueError("min_rounds must be >= window (the first window must be complete)")
        if self.tau_start < 0 or self.tau_stop < 0:
            raise ValueError("thresholds must be >= 0")


@dataclass(frozen=True)
class ScheduleStep:
    """One recorded round.  ``phase_after`` is the phase for the next round."""

    round: int
    ig: float
    d: float | None
    phase_before: Phase
    phase_after: Phase
    new_entries: int = 0
    chunk_tokens: int = 0

    @property
    def changed(self) -> bool:
        return self.phase_before != self.phase_after

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SharingSchedule:
    """Phase machine driven by :meth:`record`, called once per round after dedup.

    With ``enabled=False`` the phase is "broadcast" from round 0 and never
    finalizes by itself (always-share baseline); D_t is still computed and
    reported.
    """

    def __init__(self, config: ScheduleConfig | None = None):
        self.config = config or ScheduleConfig()
        self._phase: Phase = EXPLORE if self.config.enabled else BROADCAST
        self._igs: list[Fraction] = []
        self.steps: list[ScheduleStep] = []

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def rounds_recorded(self) -> int:
        return len(self.steps)

    def _round_of_change(self, after: Phase) -> int | None:
        for step in self.steps:
            if step.changed and step.phase_after == after:
                return step.round
        return None

    @property
    def broadcast_round(self) -> int | None:
        """Round at whose end broadcasting was switched on (None if never / disabled)."""
        return self._round_of_change(BROADCAST)

    @property
    def finalize_round(self) -> int | None:
        """Round at whose end broadcasting was switched off (None if never)."""
        return self._round_of_change(FINALIZE)

    def _current_d(self) -> Fraction | None:
        w, n = self.config.window, len(self._igs)
        if n < self.config.min_rounds:
            return None
        first = sum(self._igs[:w], Fraction(0)) / w
        last = sum(self._igs[n - w:], Fraction(0)) / w
        return last / max(first, _EPS)

    def record(self, new_entries: int, chunk_tokens: int) -> ScheduleStep:
        """Record one round: ``new_entries`` new pool entries, chunk size ``chunk_tokens`` (T)."""
        if chunk_tokens <= 0:
            raise ValueError("chunk_tokens must be > 0")
        if new_entries < 0:
            raise ValueError("new_entries must be >= 0")
        ig = Fraction(new_entries, chunk_tokens)
        self._igs.append(ig)
        d = self._current_d()

        before = self._phase
        after = before
        if self.config.enabled and d is not None:
            if before == EXPLORE and d < Fraction(str(self.config.tau_start)):
                after = BROADCAST
            elif before == BROADCAST and d < Fraction(str(self.config.tau_stop)):
                after = FINALIZE
        self._phase = after

        step = ScheduleStep(
            round=len(self.steps),
            ig=float(ig),
            d=None if d is None else float(d),
            phase_before=before,
            phase_after=after,
            new_entries=new_entries,
            chunk_tokens=chunk_tokens,
        )
        self.steps.append(step)
        return step
