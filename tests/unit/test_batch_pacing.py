"""``SubmitPacer``: 429s halve the submits on the wire and widen the gap; accepted submits recover.

Pure arithmetic on a clock the test passes in (``now``), so nothing here sleeps.
"""

from __future__ import annotations

import pytest

from airflow_provider_runcomfy.batch.pacing import (
    DEFAULT_CONCURRENCY,
    FIRST_GAP,
    GROW_AFTER,
    MAX_GAP,
    MAX_PAUSE,
    SubmitPacer,
)


def test_unrefused_submits_start_at_once() -> None:
    pacer = SubmitPacer()
    assert [pacer.delay(now=100.0) for _ in range(50)] == [0.0] * 50
    assert pacer.concurrency == DEFAULT_CONCURRENCY


def test_a_429_halves_the_concurrency_down_to_one() -> None:
    pacer = SubmitPacer(max_concurrency=8)
    seen = []
    for _ in range(5):
        pacer.refused(retry_after=0.0, now=0.0)
        seen.append(pacer.concurrency)
    assert seen == [4, 2, 1, 1, 1]
    assert pacer.refusals == 5


def test_the_gap_doubles_from_first_gap_up_to_max_gap() -> None:
    pacer = SubmitPacer()
    gaps = []
    for _ in range(12):
        pacer.refused(retry_after=0.0, now=0.0)
        gaps.append(pacer.gap)
    assert gaps[:3] == [FIRST_GAP, FIRST_GAP * 2, FIRST_GAP * 4]
    assert max(gaps) == MAX_GAP
    assert gaps[-1] == MAX_GAP


def test_retry_after_pauses_every_submit() -> None:
    pacer = SubmitPacer()
    assert pacer.refused(retry_after=3.0, now=100.0) == 3.0
    assert pacer.delay(now=100.0) == pytest.approx(3.0)
    assert pacer.delay(now=100.0) == pytest.approx(3.0 + FIRST_GAP)  # and the gap after it
    assert pacer.delay(now=104.0) == 0.0


def test_the_next_starts_are_spread_by_the_gap() -> None:
    pacer = SubmitPacer()
    pacer.refused(retry_after=0.0, now=100.0)  # gap FIRST_GAP, no pause
    delays = [pacer.delay(now=100.0) for _ in range(3)]
    assert delays == pytest.approx([0.0, FIRST_GAP, 2 * FIRST_GAP])


def test_a_huge_retry_after_is_cut_to_max_pause() -> None:
    pacer = SubmitPacer()
    assert pacer.refused(retry_after=86_400.0, now=0.0) == MAX_PAUSE
    assert pacer.paused_until == MAX_PAUSE


def test_without_retry_after_the_pause_is_a_jittered_gap() -> None:
    pacer = SubmitPacer()
    pauses = [pacer.refused(now=0.0) for _ in range(3)]
    gaps = [FIRST_GAP, FIRST_GAP * 2, FIRST_GAP * 4]
    assert all(gap <= pause <= 2 * gap for pause, gap in zip(pauses, gaps, strict=True))


def test_a_pause_never_shrinks_an_earlier_longer_one() -> None:
    pacer = SubmitPacer()
    pacer.refused(retry_after=10.0, now=0.0)
    pacer.refused(retry_after=1.0, now=0.0)
    assert pacer.paused_until == 10.0


def test_accepted_submits_narrow_the_gap_back_to_none() -> None:
    pacer = SubmitPacer()
    for _ in range(6):
        pacer.refused(retry_after=0.0, now=0.0)
    widest = pacer.gap
    pacer.accepted()
    assert pacer.gap == pytest.approx(widest * 0.8)
    for _ in range(100):
        pacer.accepted()
    assert pacer.gap == 0.0


def test_a_run_of_accepted_submits_allows_one_more_on_the_wire() -> None:
    pacer = SubmitPacer(max_concurrency=8)
    pacer.refused(retry_after=0.0, now=0.0)
    assert pacer.concurrency == 4
    for _ in range(GROW_AFTER - 1):
        pacer.accepted()
    assert pacer.concurrency == 4
    pacer.accepted()
    assert pacer.concurrency == 5
    for _ in range(GROW_AFTER * 20):
        pacer.accepted()
    assert pacer.concurrency == 8  # never beyond max_concurrency


def test_a_refusal_restarts_the_run() -> None:
    pacer = SubmitPacer(max_concurrency=8, concurrency=2)
    for _ in range(GROW_AFTER - 1):
        pacer.accepted()
    pacer.refused(retry_after=0.0, now=0.0)
    for _ in range(GROW_AFTER - 1):
        pacer.accepted()
    assert pacer.concurrency == 1


def test_the_starting_concurrency_is_clamped() -> None:
    assert SubmitPacer(max_concurrency=3).concurrency == 3
    assert SubmitPacer(max_concurrency=3, concurrency=0).concurrency == 1
