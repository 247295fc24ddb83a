# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which planned moves may start now, and each running move's share of its hosts' migration bandwidth.

Pure logic for the run_moves action. A move starts as soon as its hosts have a free slot (at most
max_parallel_per_host moves sending from a host and as many receiving, at most max_parallel_total in
all) and every move out of its destination from an earlier wave has ended: the planner counted the
memory those moves free. Nothing waits for the slowest move of a wave.
"""

from __future__ import annotations

import dataclasses
import typing as t


class ScheduleError(ValueError):
    """The moves or limits cannot be scheduled."""


@dataclasses.dataclass(frozen=True)
class ScheduledMove:
    """One planned move: `wave` is the planner's (1-based); `index` its place in the plan."""

    index: int
    vm: str
    uuid: t.Optional[str]
    source: str
    target: str
    wave: int

    @property
    def label(self) -> str:
        return "%s %s -> %s" % (self.vm, self.source, self.target)


def scheduled_moves(moves: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[ScheduledMove]:
    """Check the planner's moves ({vm, uuid, from, to, wave}) and return them in plan order."""
    result = []
    seen: t.Set[str] = set()
    for index, move in enumerate(moves):
        if not isinstance(move, t.Mapping):
            raise ScheduleError("moves[%d]: expected a mapping with vm, from, to and wave, got %r" % (index, move))
        vm, source, target, wave = move.get("vm"), move.get("from"), move.get("to"), move.get("wave", 1)
        for key, value in (("vm", vm), ("from", source), ("to", target)):
            if not isinstance(value, str) or not value:
                raise ScheduleError("moves[%d]: %s must be a non-empty string, got %r" % (index, key, value))
        if source == target:
            raise ScheduleError("moves[%d]: VM %s would move from %s to itself" % (index, vm, source))
        if isinstance(wave, bool) or not isinstance(wave, int) or wave < 1:
            raise ScheduleError("moves[%d]: wave must be a whole number of at least 1, got %r" % (index, wave))
        name = t.cast(str, vm)
        if name in seen:
            raise ScheduleError("moves[%d]: VM %s is listed more than once; a plan moves a VM once" % (index, name))
        seen.add(name)
        uuid = move.get("uuid") or None
        result.append(ScheduledMove(index, name, uuid, t.cast(str, source), t.cast(str, target), wave))
    return sorted(result, key=lambda item: (item.wave, item.index))


class MoveScheduler:
    """Hands out the moves of a plan as slots free up; the caller says when each starts and ends."""

    def __init__(self, moves: t.Sequence[ScheduledMove], max_parallel_per_host: int, max_parallel_total: int) -> None:
        if max_parallel_per_host < 1 or max_parallel_total < 1:
            raise ScheduleError(
                "max_parallel_per_host and max_parallel_total must be at least 1, got %s and %s"
                % (max_parallel_per_host, max_parallel_total)
            )
        self.per_host = max_parallel_per_host
        self.total = max_parallel_total
        self.waiting: t.List[ScheduledMove] = list(moves)
        self.running: t.List[ScheduledMove] = []
        # Started moves whose copy is over (libvirt switches the guest over): no slot, but not gone yet.
        self.released: t.List[ScheduledMove] = []
        self.ended: t.List[ScheduledMove] = []

    def _blocked(self, move: ScheduledMove) -> bool:
        """A move into a host waits for that host's departures of earlier waves."""
        unfinished = self.waiting + self.running + self.released
        return any(other.source == move.target and other.wave < move.wave for other in unfinished)

    def startable(self) -> t.List[ScheduledMove]:
        """The moves that may start now, in plan order, each counted against the limits before the next."""
        sending: t.Dict[str, int] = {}
        receiving: t.Dict[str, int] = {}
        for move in self.running:
            sending[move.source] = sending.get(move.source, 0) + 1
            receiving[move.target] = receiving.get(move.target, 0) + 1
        count = len(self.running)
        chosen = []
        for move in self.waiting:
            if count >= self.total:
                break
            if sending.get(move.source, 0) >= self.per_host or receiving.get(move.target, 0) >= self.per_host:
                continue
            if self._blocked(move):
                continue
            chosen.append(move)
            count += 1
            sending[move.source] = sending.get(move.source, 0) + 1
            receiving[move.target] = receiving.get(move.target, 0) + 1
        return chosen

    def start(self, move: ScheduledMove) -> None:
        self.waiting.remove(move)
        self.running.append(move)

    def release(self, move: ScheduledMove) -> None:
        """The move's copy is over: its slots go to the next moves; it still counts as a departure until end()."""
        self.running.remove(move)
        self.released.append(move)

    def end(self, move: ScheduledMove) -> None:
        """The move ended (its guest runs where it will stay): running or released."""
        (self.running if move in self.running else self.released).remove(move)
        self.ended.append(move)

    @property
    def finished(self) -> bool:
        return not self.waiting and not self.running and not self.released


def bandwidth_share_mibps(budget_mibps: int, move: ScheduledMove, transferring: t.Iterable[ScheduledMove]) -> int:
    """The move's share of a host's migration bandwidth (0: unlimited).

    Each host sends and receives at most `budget_mibps` in all; the moves copying through a host
    share it equally, and a move gets the smaller share of its two hosts. `transferring` may or
    may not hold `move` itself: it counts once.
    """
    if budget_mibps <= 0:
        return 0
    others = [other for other in transferring if other.vm != move.vm]
    busiest = max(
        1 + sum(1 for other in others if host in (other.source, other.target)) for host in (move.source, move.target)
    )
    return max(1, budget_mibps // busiest)
