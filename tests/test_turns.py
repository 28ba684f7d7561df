"""Long work in bounded turns of the event loop (kdp_host/turns.py): a turn ends after a
number of steps, and a later turn also once it has run its time budget (by the pace's own
clock: these tests give it one, so nothing here depends on the machine's speed)."""

from __future__ import annotations

from kdp_host.turns import Pace


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def turns_of(pace: Pace, clock: Clock, steps: int, step_seconds: float) -> list[int]:
    """The steps each turn took: `steps` steps of `step_seconds` each, through `pace`."""
    lengths, current = [], 0
    for _ in range(steps):
        current += 1
        clock.now += step_seconds
        if pace.due():
            lengths.append(current)
            current = 0
    return [*lengths, current] if current else lengths


def test_without_a_budget_a_turn_is_its_count_of_steps() -> None:
    clock = Clock()
    assert turns_of(Pace(10, clock=clock), clock, 35, 1.0) == [10, 10, 10, 5]


def test_a_later_turn_ends_at_its_budget_the_first_at_its_count() -> None:
    """Slow steps (a busy machine): the first turn runs its 10 steps, whatever they cost (it
    runs where the work arrives: a short list is done there at once); each later turn ends
    once it has run its budget (3 steps of 1 s past its first, for 2.5 s)."""
    clock = Clock()
    assert turns_of(Pace(10, budget=2.5, clock=clock), clock, 30, 1.0) == [10, 4, 4, 4, 4, 4]


def test_fast_steps_end_a_turn_at_its_count() -> None:
    clock = Clock()
    pace = Pace(10, budget=2.5, clock=clock)
    assert turns_of(pace, clock, 35, 0.001) == [10, 10, 10, 5]
    assert pace.steps == 35
