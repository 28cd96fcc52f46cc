"""The failover journal of confirmations and releases (gate.marks) stays bounded: by age
(FINISHED_WINDOW_S) under a steady load, and by count."""

from __future__ import annotations

import pytest

from gate import marks as marks_module
from gate.marks import FINISHED_WINDOW_S, Marks


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_finishes_older_than_the_window_are_forgotten_under_a_steady_load() -> None:
    clock = Clock()
    marks = Marks(clock=clock)
    per_s = 50
    sizes = []
    for second in range(int(FINISHED_WINDOW_S * 3)):
        for n in range(per_s):
            marks.finished("c", f"r{second * per_s + n}-x", "confirm", ("core",), audit_n=1)
        clock.now += 1.0
        sizes.append(len(marks.of("c").finished))
    # flat once the window is full: what one window holds, not everything ever confirmed
    window = int(FINISHED_WINDOW_S) * per_s
    assert max(sizes) <= window + per_s
    assert sizes[-1] == sizes[int(FINISHED_WINDOW_S) * 2]
    journal = marks.of("c")
    assert list(journal.finished) == list(journal.finished_at)
    # the newest are kept, with their script and arguments
    newest = f"r{int(FINISHED_WINDOW_S * 3) * per_s - 1}-x"
    assert journal.finished[newest] == ("confirm", ("core",))


def test_a_recent_finish_is_kept_and_a_repeat_moves_to_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    marks = Marks(clock=clock)
    monkeypatch.setattr(marks_module, "FINISHED_KEPT", 3)
    for rid in ("r1-a", "r2-a", "r3-a"):
        marks.finished("c", rid, "confirm", (), audit_n=1)
    marks.finished("c", "r1-a", "release", ("core", "why"), audit_n=2)
    marks.finished("c", "r4-a", "confirm", (), audit_n=3)
    journal = marks.of("c")
    assert list(journal.finished) == ["r3-a", "r1-a", "r4-a"]
    assert journal.finished["r1-a"] == ("release", ("core", "why"))
    assert journal.audit_n == 3
