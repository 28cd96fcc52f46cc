"""What this process has acknowledged, per campaign: the marks a failover is checked against.

After a write's durability wait succeeded and its answer is on its way, the script calls
(gate.room.calls) raise the campaign's marks: the highest seq, reservation number and
audit index this process has told anyone about. The failover watch (gate.failover) also
records here the sealed size it saw (a signed checkpoint that may have been served) and
the last entry of the segment files on disk. A new primary whose counters are below a
mark lacks something that was acknowledged.

Per process and in memory only: a gate process restarted after a failover has no marks,
and reconciles with those of the processes that kept running.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

# Confirmations and releases remembered per campaign, to restore after a failover that
# lost them: those acknowledged in the last FINISHED_WINDOW_S, and never more than
# FINISHED_KEPT (the newest; a few hundred bytes each). A new primary lacks only what had
# not reached it when the old one died (with `redis_wait_replicas` > 0: nothing that was
# acknowledged), and the watch notices a new primary within a second: a finish older than
# two minutes that it lacks is not one a failover lost. The window keeps the journal's
# memory flat under a steady load (it grew with every confirmation of a long campaign).
FINISHED_WINDOW_S = 120.0
FINISHED_KEPT = 100_000


@dataclass
class CampaignMarks:
    seq: int = 0  # the highest seq acknowledged (a ticket, a retried join's ticket)
    res_n: int = 0  # the highest reservation number acknowledged (r<n>)
    audit_n: int = 0  # the highest audit index of an acknowledged change
    sealed: int = 0  # the largest log size seen sealed (checkpoint) or in a segment file
    # reservation id -> (script, its arguments after the id): confirm/release acknowledged
    finished: OrderedDict[str, tuple[str, tuple[str, ...]]] = field(default_factory=OrderedDict)
    # when each of `finished` was acknowledged (the clock of Marks), oldest first
    finished_at: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def encode(self, previous_primary: str) -> str:
        """The form reconcile.lua reads: "seq,res_n,audit_n,sealed,previous run id"."""
        return f"{self.seq},{self.res_n},{self.audit_n},{self.sealed},{previous_primary}"


class Marks:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.campaigns: dict[str, CampaignMarks] = {}
        self.clock = clock

    def of(self, campaign: str) -> CampaignMarks:
        return self.campaigns.setdefault(campaign, CampaignMarks())

    def acknowledged(
        self, campaign: str, *, seq: int = 0, res_n: int = 0, audit_n: int = 0
    ) -> None:
        marks = self.of(campaign)
        marks.seq = max(marks.seq, seq)
        marks.res_n = max(marks.res_n, res_n)
        marks.audit_n = max(marks.audit_n, audit_n)

    def sealed(self, campaign: str, size: int) -> None:
        marks = self.of(campaign)
        marks.sealed = max(marks.sealed, size)

    def finished(
        self, campaign: str, reservation: str, script: str, args: tuple[str, ...], audit_n: int
    ) -> None:
        """A confirmation or release acknowledged to the core system."""
        marks = self.of(campaign)
        marks.audit_n = max(marks.audit_n, audit_n)
        now = self.clock()
        marks.finished[reservation] = (script, args)
        marks.finished.move_to_end(reservation)
        marks.finished_at[reservation] = now
        marks.finished_at.move_to_end(reservation)
        oldest = next(iter(marks.finished_at.values()))
        while len(marks.finished) > FINISHED_KEPT or oldest < now - FINISHED_WINDOW_S:
            gone, _ = marks.finished_at.popitem(last=False)
            del marks.finished[gone]
            if not marks.finished_at:
                break
            oldest = next(iter(marks.finished_at.values()))

    def reservation(self, campaign: str, reservation: str, audit_n: int = 0) -> None:
        """A reservation id ("r17", or "r17-<random part>") acknowledged."""
        number = reservation[1:].partition("-")[0]
        self.acknowledged(campaign, res_n=int(number) if number.isdigit() else 0, audit_n=audit_n)
