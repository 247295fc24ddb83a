# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible_collections.strata.migration.plugins.plugin_utils._scheduler import (
    MoveScheduler,
    ScheduleError,
    bandwidth_share_mibps,
    scheduled_moves,
)


def plan(*moves):
    return scheduled_moves([{"vm": vm, "from": source, "to": target, "wave": wave} for vm, source, target, wave in moves])


def names(moves):
    return [move.vm for move in moves]


def test_a_free_slot_is_filled_at_once_without_waiting_for_the_wave():
    moves = plan(("a", "hv1", "hv2", 1), ("b", "hv1", "hv3", 1), ("c", "hv1", "hv2", 2), ("d", "hv1", "hv3", 2))
    scheduler = MoveScheduler(moves, max_parallel_per_host=2, max_parallel_total=4)
    first = scheduler.startable()
    assert names(first) == ["a", "b"]  # hv1 sends two at most
    for move in first:
        scheduler.start(move)
    assert scheduler.startable() == []
    scheduler.end(first[1])  # b ends, a still runs: c starts (wave 2) without waiting for a
    assert names(scheduler.startable()) == ["c"]


def test_limits_on_receiving_hosts_and_in_total():
    moves = plan(("a", "hv1", "hv3", 1), ("b", "hv2", "hv3", 1), ("c", "hv4", "hv5", 1), ("d", "hv6", "hv7", 1))
    assert names(MoveScheduler(moves, 1, 4).startable()) == ["a", "c", "d"]  # hv3 receives one at a time
    assert names(MoveScheduler(moves, 2, 2).startable()) == ["a", "b"]


def test_a_move_into_a_host_waits_for_its_departures_of_earlier_waves():
    # The planner counted the memory b frees on hv2 when it placed c there.
    moves = plan(("a", "hv1", "hv3", 1), ("b", "hv2", "hv3", 1), ("c", "hv1", "hv2", 2))
    scheduler = MoveScheduler(moves, 2, 4)
    started = scheduler.startable()
    assert names(started) == ["a", "b"]
    for move in started:
        scheduler.start(move)
    scheduler.end(started[0])
    assert scheduler.startable() == []  # b still leaves hv2
    scheduler.end(started[1])
    assert names(scheduler.startable()) == ["c"]


def test_every_move_runs_once_and_the_schedule_ends():
    moves = plan(*[("vm%d" % n, "hv%d" % (n % 3), "hv%d" % ((n + 1) % 3), 1 + n // 3) for n in range(9)])
    scheduler = MoveScheduler(moves, 1, 2)
    ran = []
    while not scheduler.finished:
        ready = scheduler.startable()
        assert ready or scheduler.running
        for move in ready:
            scheduler.start(move)
        oldest = scheduler.running[0]
        scheduler.end(oldest)
        ran.append(oldest.vm)
    assert sorted(ran) == sorted(names(moves))


@pytest.mark.parametrize("moves, message", [
    ([{"vm": "a", "from": "hv1", "to": "hv1", "wave": 1}], "from hv1 to itself"),
    ([{"vm": "a", "from": "hv1", "to": "hv2", "wave": 0}], "wave must be a whole number of at least 1"),
    ([{"vm": "", "from": "hv1", "to": "hv2"}], "vm must be a non-empty string"),
    ([{"vm": "a", "from": "hv1", "to": "hv2"}, {"vm": "a", "from": "hv2", "to": "hv3"}], "listed more than once"),
    (["a"], "expected a mapping"),
])
def test_bad_moves_are_refused(moves, message):
    with pytest.raises(ScheduleError, match=message):
        scheduled_moves(moves)


def test_limits_below_one_are_refused():
    with pytest.raises(ScheduleError, match="at least 1"):
        MoveScheduler([], 0, 2)


def test_a_hosts_bandwidth_is_shared_by_the_moves_copying_through_it():
    a, b, c = plan(("a", "hv1", "hv2", 1), ("b", "hv1", "hv3", 1), ("c", "hv4", "hv3", 1))
    assert bandwidth_share_mibps(60, a, [a]) == 60
    assert bandwidth_share_mibps(60, a, [a, b]) == 30  # hv1 sends two
    assert bandwidth_share_mibps(60, c, [a, b, c]) == 30  # hv3 receives two
    assert bandwidth_share_mibps(60, c, [a]) == 60  # a shares no host with c
    assert bandwidth_share_mibps(60, a, [b]) == 30  # the move counts itself once, listed or not
    assert bandwidth_share_mibps(0, a, [a, b]) == 0  # no budget: unlimited
    assert bandwidth_share_mibps(1, a, [a, b]) == 1  # never 0, which libvirt reads as unlimited


def test_a_released_move_frees_its_slots_but_still_holds_back_arrivals_into_its_source():
    leave, other, arrive = plan(("a", "hv1", "hv2", 1), ("b", "hv1", "hv3", 1), ("c", "hv3", "hv1", 2))
    scheduler = MoveScheduler([leave, other, arrive], 1, 4)
    assert scheduler.startable() == [leave]
    scheduler.start(leave)
    scheduler.release(leave)
    assert scheduler.startable() == [other]  # hv1's sending slot is free again
    scheduler.start(other)
    scheduler.end(other)
    assert scheduler.startable() == [] and not scheduler.finished  # c waits for a to arrive
    scheduler.end(leave)
    assert scheduler.startable() == [arrive]
