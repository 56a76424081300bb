"""Schedule transitions on hand-computed IG sequences."""

import pytest

from collabthink.sharing.schedule import (
    BROADCAST,
    EXPLORE,
    FINALIZE,
    ScheduleConfig,
    SharingSchedule,
)


def run(news, T=100, config=None):
    sch = SharingSchedule(config or ScheduleConfig())
    steps = [sch.record(n, T) for n in news]
    return sch, steps


def test_hand_computed_start_and_stop():
    # IG = [.10 .10 .10 .10 .02 .02 .01 0 0]; first-window mean = .10
    # r0..r2: fewer than min_rounds=4 rounds -> d None
    # r3: mean(r1..r3) = .10            -> D = 1.000  explore
    # r4: mean(.10 .10 .02) = .0733     -> D = 0.733  explore
    # r5: mean(.10 .02 .02) = .0467     -> D = 0.467  explore (>= .40)
    # r6: mean(.02 .02 .01) = .01667    -> D = 0.167  < .40 -> broadcast
    # r7: mean(.02 .01 0)   = .01       -> D = 0.100  not < .10 -> stays broadcast
    # r8: mean(.01 0 0)     = .00333    -> D = 0.033  < .10 -> finalize
    sch, steps = run([10, 10, 10, 10, 2, 2, 1, 0, 0])
    assert [s.d for s in steps[:3]] == [None, None, None]
    assert steps[3].d == pytest.approx(1.0)
    assert steps[4].d == pytest.approx(0.7333333)
    assert steps[5].d == pytest.approx(0.4666667)
    assert steps[6].d == pytest.approx(1 / 6)
    assert steps[7].d == pytest.approx(0.1)
    assert steps[8].d == pytest.approx(1 / 30)
    assert [s.phase_after for s in steps] == [EXPLORE] * 6 + [BROADCAST, BROADCAST, FINALIZE]
    assert [s.ig for s in steps[:2]] == [0.1, 0.1]
    assert sch.broadcast_round == 6 and sch.finalize_round == 8
    assert sch.phase == FINALIZE
    assert len(sch.steps) == 9 and [s.round for s in sch.steps] == list(range(9))


def test_finalize_only_in_round_that_began_in_broadcast():
    # IG = [.1 .1 .1 .1 0 0 0]; r4: D = mean(.1 .1 0)/.1 = .667 -> explore
    # r5: D = mean(.1 0 0)/.1 = .333 < tau_start -> broadcast.  With tau_stop = .5,
    # D < tau_stop already holds at r5, but r5 began in explore: no finalize yet.
    cfg = ScheduleConfig(tau_start=0.40, tau_stop=0.50)
    sch, steps = run([10, 10, 10, 10, 0, 0, 0], config=cfg)
    assert steps[5].phase_before == EXPLORE and steps[5].phase_after == BROADCAST
    assert steps[5].d < cfg.tau_stop
    # r6 began in broadcast: D = 0 < .5 -> finalize
    assert steps[6].phase_before == BROADCAST and steps[6].phase_after == FINALIZE


def test_never_goes_back_and_stays_final():
    sch, steps = run([10, 10, 10, 0, 0, 50, 50, 50, 50])
    # IG = [.1 .1 .1 0 0 .5 .5 .5 .5]
    # r3: D = mean(.1 .1 0)/.1 = .667; r4: D = .333 -> broadcast; r5: D = mean(0 0 .5)/.1 = 1.67
    assert steps[4].phase_after == BROADCAST
    assert all(s.phase_after == BROADCAST for s in steps[4:])
    # r4 -> broadcast, r5: D = 0 -> finalize; later IG does not reopen
    sch2, _ = run([10, 10, 10, 0, 0, 0, 50, 50, 50])
    assert sch2.phase == FINALIZE and sch2.finalize_round == 5


def test_zero_first_window_denominator():
    # first window all zero -> denominator 1e-8
    sch, steps = run([0, 0, 0, 1])
    assert steps[3].d == pytest.approx((0.01 / 3) / 1e-8)  # huge: keep exploring
    assert sch.phase == EXPLORE
    sch, steps = run([0, 0, 0, 0, 0])
    assert steps[3].d == 0.0 and steps[3].phase_after == BROADCAST
    assert steps[4].phase_after == FINALIZE


def test_disabled_always_broadcasts_and_never_finalizes():
    sch = SharingSchedule(ScheduleConfig(enabled=False))
    assert sch.phase == BROADCAST
    steps = [sch.record(n, 50) for n in [5, 5, 5, 0, 0, 0, 0]]
    assert all(s.phase_before == s.phase_after == BROADCAST for s in steps)
    assert steps[3].d == pytest.approx(2 / 3) and steps[-1].d == 0.0
    assert sch.broadcast_round is None and sch.finalize_round is None


def test_chunk_size_varies_and_validation():
    sch = SharingSchedule()
    assert sch.record(4, 200).ig == 0.02
    with pytest.raises(ValueError):
        sch.record(1, 0)
    with pytest.raises(ValueError):
        ScheduleConfig(window=3, min_rounds=2)
    assert sch.steps[0].to_dict()["phase_after"] == EXPLORE
