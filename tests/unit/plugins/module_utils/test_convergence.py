# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The convergence model, checked against figures worked out by hand.

Defaults used below unless a test says otherwise: setup_s = 0.3 s, device
state while paused 20 ms, post-copy switch 50 ms, zero pages 16 bytes per
4 KiB page, max_rounds 30, dirty-rate window 1 s.
"""

from __future__ import annotations

import math

import pytest

from ansible_collections.strata.migration.plugins.module_utils._convergence import (
    AUTO_CONVERGE_MAX_PERCENT,
    DEVICE_STATE_MS,
    POSTCOPY_SWITCH_MS,
    THROTTLE_MARGIN_PERCENT,
    ZERO_PAGE_WIRE_FRACTION,
    MigrationInputs,
    Prediction,
    auto_converge_percents,
    choose_strategy,
    estimate_hot_set,
    estimate_memory_to_send,
    predict_layered,
    predict_postcopy,
    predict_precopy,
    predict_throttled,
    required_throttle_percent,
    with_storage_copy,
)


def approx(value):
    return pytest.approx(value, rel=1e-6, abs=1e-9)


def test_constants_match_the_figures_below():
    assert DEVICE_STATE_MS == 20.0
    assert POSTCOPY_SWITCH_MS == 50.0
    assert ZERO_PAGE_WIRE_FRACTION == 16.0 / 4096.0


# ---- pre-copy --------------------------------------------------------------


def test_precopy_geometric_rounds_with_known_hot_set():
    # 512 MiB, 10 MiB/s dirty, 100 MiB/s, 300 ms; hot set = all memory (steady dirtying).
    # threshold = 100 MiB/s * 0.3 s = 30 MiB may be left for the pause.
    # round 0: 512 / 100 = 5.12 s, sends 512 MiB; meanwhile 10 * 5.12 = 51.2 MiB dirtied.
    # 51.2 > 30, so round 1: 51.2 / 100 = 0.512 s, sends 51.2 MiB; 10 * 0.512 = 5.12 MiB dirtied.
    # 5.12 <= 30: stop and copy 5.12 MiB -> downtime 20 + 5.12 / 100 * 1000 = 20 + 51.2 = 71.2 ms.
    # transferred 512 + 51.2 + 5.12 = 568.32 MiB; total 0.3 + 5.12 + 0.512 + 0.0712 = 6.0032 s.
    prediction = predict_precopy(MigrationInputs(512, 10, 100, 300, hot_set_mib=512))
    assert prediction.strategy == "precopy"
    assert prediction.converges is True
    assert prediction.rounds == 2
    assert prediction.round_mib == approx((512.0, 51.2))
    assert prediction.stop_copy_mib == approx(5.12)
    assert prediction.transferred_mib == approx(568.32)
    assert prediction.downtime_ms == approx(71.2)
    assert prediction.total_s == approx(6.0032)
    assert prediction.postcopy_s is None
    assert prediction.required_bandwidth_mibps is None
    assert prediction.required_max_downtime_ms is None
    assert prediction.reason == (
        "Pre-copy converges after 2 rounds: 568.3 MiB in 6 s, with 5.1 MiB left for a pause of about 71 ms."
    )


def test_precopy_unknown_hot_set_is_conservative_for_short_rounds():
    # Same guest, hot set unknown: a round shorter than the 1 s window may have dirtied
    # all the window saw, dirtied(t) = min(512, 10 * max(t, 1)).
    # round 0: 5.12 s -> 10 * 5.12 = 51.2 MiB; round 1: 0.512 s -> 10 * max(0.512, 1) = 10 MiB.
    # 10 <= 30: pause with 10 MiB -> 20 + 100 = 120 ms; transferred 512 + 51.2 + 10 = 573.2;
    # total 0.3 + 5.12 + 0.512 + 0.12 = 6.052 s.
    prediction = predict_precopy(MigrationInputs(512, 10, 100, 300))
    assert prediction.converges is True
    assert prediction.round_mib == approx((512.0, 51.2))
    assert prediction.stop_copy_mib == approx(10.0)
    assert prediction.transferred_mib == approx(573.2)
    assert prediction.downtime_ms == approx(120.0)
    assert prediction.total_s == approx(6.052)


def test_precopy_idle_guest_one_round_then_stop():
    # 90 MiB non-zero, 166 MiB zero pages, nothing dirtied, 60 MiB/s.
    # zero pages on the wire: 166 * 16 / 4096 = 0.6484375 MiB.
    # round 0: (90 + 0.6484375) / 60 = 1.510807 s; nothing left: downtime = 20 ms.
    # total 0.3 + 1.510807 + 0.02 = 1.830807 s; transferred 90.6484375 MiB.
    prediction = predict_precopy(MigrationInputs(90, 0, 60, 300, zero_page_mib=166))
    assert prediction.converges is True
    assert prediction.rounds == 1
    assert prediction.round_mib == (90.0,)
    assert prediction.stop_copy_mib == 0.0
    assert prediction.downtime_ms == approx(20.0)
    assert prediction.transferred_mib == approx(90.6484375)
    assert prediction.total_s == approx(0.3 + 90.6484375 / 60 + 0.02)


def test_precopy_stop_copy_bandwidth_shortens_the_pause():
    # QEMU lifts the speed cap while the guest is paused: the 5.12 MiB rest of the first test
    # at 1000 MiB/s takes 5.12 ms -> downtime 25.12 ms; the rounds stay the same.
    fast = predict_precopy(MigrationInputs(512, 10, 100, 300, hot_set_mib=512, stop_copy_bandwidth_mibps=1000))
    assert fast.downtime_ms == approx(25.12)
    assert fast.round_mib == approx((512.0, 51.2))
    # A stop-copy speed below the cap cannot be: the cap (100 MiB/s) is used.
    slow = predict_precopy(MigrationInputs(512, 10, 100, 300, hot_set_mib=512, stop_copy_bandwidth_mibps=10))
    assert slow.downtime_ms == approx(71.2)


def test_precopy_does_not_converge_when_dirty_rate_reaches_bandwidth():
    # 100 MiB, 50 MiB/s dirty, 40 MiB/s, 300 ms (threshold 12 MiB), hot set unknown, max_rounds 5.
    # round 0: 100 / 40 = 2.5 s -> min(100, 50 * 2.5 = 125) = 100 MiB dirtied; every later round
    # also sends 100 MiB in 2.5 s and leaves 100: never <= 12.
    # 5 rounds: 500 MiB in 12.5 s; forced pause with 100 MiB: 20 + 2500 = 2520 ms.
    # transferred 600 MiB; total 0.3 + 12.5 + 2.52 = 15.32 s.
    prediction = predict_precopy(MigrationInputs(100, 50, 40, 300, max_rounds=5))
    assert prediction.converges is False
    assert prediction.rounds == 5
    assert prediction.round_mib == approx((100.0,) * 5)
    assert prediction.stop_copy_mib == approx(100.0)
    assert prediction.transferred_mib == approx(600.0)
    assert prediction.downtime_ms == approx(2520.0)
    assert prediction.total_s == approx(15.32)
    # Needed downtime: the smallest rest, 100 MiB at 40 MiB/s = 2500 ms.
    assert prediction.required_max_downtime_ms == 2500.0
    # Needed bandwidth: with B >= 100 round 0 lasts <= 1 s and leaves 50 * 1 = 50 MiB, which fits
    # when 50 <= 0.3 * B, B >= 166.7; below 100 MiB/s the rest never gets under 50 MiB -> 167.
    assert prediction.required_bandwidth_mibps == 167.0
    assert "not less than the 40 MiB/s bandwidth" in prediction.reason
    assert prediction.reason.startswith("Pre-copy does not converge: the guest dirties 50 MiB/s")
    assert "stopped after max_rounds=5 it would have sent 600 MiB in 15.3 s" in prediction.reason
    assert prediction.reason.endswith("pause the guest for about 2520 ms.")


def test_precopy_saturated_hot_set_floor_above_downtime():
    # 218 MiB, 45 MiB/s measured over 1 s, hot set 48 MiB, 60 MiB/s, 300 ms (threshold 18 MiB).
    # 45 * 1 >= 0.5 * 48 = 24: the hot set turns over within the window (saturated), so every
    # round re-dirties all 48 MiB: floor 48 / 60 = 0.8 s = 800 ms > 300 ms, no convergence.
    # round 0: 218 / 60 = 3.6333 s, then 29 rounds of 48 MiB at 0.8 s = 23.2 s (30 rounds).
    # forced pause: 48 MiB -> 20 + 800 = 820 ms. transferred 218 + 29 * 48 + 48 = 1658 MiB.
    # total 0.3 + 3.6333 + 23.2 + 0.82 = 27.9533 s.
    inputs = MigrationInputs(218, 45, 60, 300, hot_set_mib=48)
    assert inputs.saturated is True
    prediction = predict_precopy(inputs)
    assert prediction.converges is False
    assert prediction.rounds == 30
    assert prediction.round_mib == approx((218.0,) + (48.0,) * 29)
    assert prediction.transferred_mib == approx(1658.0)
    assert prediction.downtime_ms == approx(820.0)
    assert prediction.total_s == approx(0.3 + 218 / 60 + 23.2 + 0.82)
    # 48 <= B * 0.3 needs B >= 160; the floor needs 800 ms.
    assert prediction.required_bandwidth_mibps == 160.0
    assert prediction.required_max_downtime_ms == 800.0
    assert "the 48 MiB hot set is rewritten faster than the 1 s measurement window shows" in prediction.reason
    assert "it takes 800 ms at 60 MiB/s, more than max_downtime_ms=300" in prediction.reason


def test_precopy_small_saturated_hot_set_converges():
    # Same guest with a 10 MiB hot set: 45 >= 0.5 * 10, saturated; round 0 (3.6333 s) leaves
    # 10 MiB <= 18: pause 20 + 10 / 60 * 1000 = 186.667 ms; transferred 228 MiB.
    prediction = predict_precopy(MigrationInputs(218, 45, 60, 300, hot_set_mib=10))
    assert prediction.converges is True
    assert prediction.rounds == 1
    assert prediction.transferred_mib == approx(228.0)
    assert prediction.downtime_ms == approx(20 + 10 / 60 * 1000)
    assert prediction.total_s == approx(0.3 + 218 / 60 + (20 + 10 / 60 * 1000) / 1000)


def test_precopy_known_hot_set_not_saturated_grows_with_round_length():
    # 100 MiB/s dirty over a 0.5 s window, 100 MiB/s bandwidth, hot set 150 of 300 MiB, 1000 ms.
    # 100 * 0.5 = 50 < 0.5 * 150 = 75: not saturated, dirtied(t) = min(100 * t, 150).
    # round 0: 3 s -> min(300, 150) = 150 > threshold 100 MiB; round 1: 1.5 s -> 150 again:
    # the rounds never shrink (D >= B).
    inputs = MigrationInputs(300, 100, 100, 1000, hot_set_mib=150, dirty_rate_window_s=0.5)
    assert inputs.saturated is False
    prediction = predict_precopy(inputs)
    assert prediction.converges is False
    assert prediction.round_mib[:3] == approx((300.0, 150.0, 150.0))
    assert "not less than the 100 MiB/s bandwidth" in prediction.reason


def test_precopy_max_rounds_bound_on_slow_shrink():
    # 100 MiB, 50 MiB/s dirty (over 0.5 s: 25 MiB < 0.5 * 100, not saturated), 60 MiB/s,
    # 100 ms (threshold 6 MiB), hot set = all memory. Each round leaves 50/60 = 5/6 of the one before: d_k = 100 * (5/6)^k.
    # d_k <= 6 first at k = 16 ((5/6)^16 = 0.0541): 16 live rounds with max_rounds 30.
    converging = predict_precopy(MigrationInputs(100, 50, 60, 100, hot_set_mib=100, dirty_rate_window_s=0.5))
    assert converging.converges is True
    assert converging.rounds == 16
    assert converging.stop_copy_mib == approx(100 * (5 / 6) ** 16)
    # With max_rounds 10: rounds k = 0..9 send 100 * sum (5/6)^k = 600 * (1 - (5/6)^10) MiB and
    # d_10 = 100 * (5/6)^10 = 16.15 MiB is left: 16.15 / 60 = 269.2 ms > 100 ms.
    bounded = predict_precopy(MigrationInputs(100, 50, 60, 100, hot_set_mib=100, max_rounds=10, dirty_rate_window_s=0.5))
    rest = 100 * (5 / 6) ** 10
    assert bounded.converges is False
    assert bounded.rounds == 10
    assert bounded.stop_copy_mib == approx(rest)
    assert bounded.transferred_mib == approx(600 * (1 - (5 / 6) ** 10) + rest)
    assert bounded.downtime_ms == approx(20 + rest / 60 * 1000)
    assert bounded.required_max_downtime_ms == math.ceil(rest / 60 * 1000)
    assert bounded.reason.startswith(
        "Pre-copy does not converge: rounds shrink by only 17% each, at a dirty rate of 50 of 60 MiB/s,"
    )
    assert "within max_rounds=10, more than max_downtime_ms=100" in bounded.reason
    # More bandwidth makes the same 10 rounds enough: the bisection finds the smallest.
    needed = bounded.required_bandwidth_mibps
    ten_rounds = dict(memory_mib=100, dirty_rate_mibps=50, max_downtime_ms=100, hot_set_mib=100, max_rounds=10,
                      dirty_rate_window_s=0.5)
    assert predict_precopy(MigrationInputs(bandwidth_mibps=needed, **ten_rounds)).converges
    assert not predict_precopy(MigrationInputs(bandwidth_mibps=needed - 1, **ten_rounds)).converges


def test_precopy_unknown_hot_set_floor_is_the_window_volume():
    # 218 MiB, 30 MiB/s over 1 s, hot set unknown, 60 MiB/s, 300 ms (threshold 18 MiB).
    # round 0: 3.6333 s -> min(218, 30 * 3.6333 = 109) = 109 MiB; round 1: 1.8167 s -> 54.5 MiB;
    # round 2: 0.9083 s -> 30 * max(0.9083, 1) = 30 MiB; then 0.5 s rounds of 30 MiB forever:
    # 30 MiB takes 500 ms > 300 ms.
    prediction = predict_precopy(MigrationInputs(218, 30, 60, 300))
    assert prediction.converges is False
    assert prediction.round_mib[:4] == approx((218.0, 109.0, 54.5, 30.0))
    assert prediction.required_max_downtime_ms == 500.0
    # 30 MiB must fit B * 0.3 -> B >= 100 (round 0 then lasts 2.18 s and leaves 65.4 MiB,
    # 0.654 s -> 30 MiB <= 30).
    assert prediction.required_bandwidth_mibps == 100.0
    assert "with the hot set unknown, any round may re-dirty the 30 MiB the 1 s measurement window saw" in (
        prediction.reason)


def test_hot_set_larger_than_memory_is_capped():
    inputs = MigrationInputs(100, 10, 50, 300, hot_set_mib=400)
    assert inputs.hot_mib == 100.0
    assert predict_layered(inputs).rounds == 0


# ---- post-copy and layered ----------------------------------------------


def test_postcopy_figures_with_saturated_hot_set():
    # 218 MiB, hot set 48 MiB (saturated), 60 MiB/s.
    # one pre-copy pass: 218 / 60 = 3.6333 s; meanwhile the whole 48 MiB hot set is dirtied;
    # switch 50 ms; post-copy of 48 MiB: 0.8 s. transferred 218 + 48 = 266 MiB;
    # total 0.3 + 3.6333 + 0.05 + 0.8 = 4.7833 s.
    prediction = predict_postcopy(MigrationInputs(218, 45, 60, 300, hot_set_mib=48))
    assert prediction.strategy == "postcopy"
    assert prediction.converges is True
    assert prediction.rounds == 1
    assert prediction.downtime_ms == 50.0
    assert prediction.postcopy_s == approx(0.8)
    assert prediction.transferred_mib == approx(266.0)
    assert prediction.total_s == approx(0.3 + 218 / 60 + 0.05 + 0.8)
    assert prediction.reason.startswith("Post-copy: one pre-copy pass of 218 MiB (3.6 s), a switch of about 50 ms")


def test_postcopy_figures_with_unknown_hot_set():
    # 512 MiB, 10 MiB/s, 100 MiB/s: pass 5.12 s dirties min(512, 10 * 5.12) = 51.2 MiB,
    # sent after the switch in 0.512 s. total 0.3 + 5.12 + 0.05 + 0.512 = 5.982 s.
    prediction = predict_postcopy(MigrationInputs(512, 10, 100, 300))
    assert prediction.postcopy_s == approx(0.512)
    assert prediction.transferred_mib == approx(563.2)
    assert prediction.total_s == approx(5.982)


def test_layered_figures():
    # 218 MiB with a 48 MiB hot set at 60 MiB/s: the 170 MiB cold layer in one round (2.8333 s),
    # switch 50 ms, the hot layer once after it (0.8 s). Every page crosses once: 218 MiB;
    # with 38 MiB of zero pages: + 38 * 16 / 4096 = 0.1484375 MiB, sent in the cold round.
    prediction = predict_layered(MigrationInputs(218, 45, 60, 300, hot_set_mib=48, zero_page_mib=38))
    assert prediction.strategy == "layered"
    assert prediction.converges is True
    assert prediction.rounds == 1
    assert prediction.round_mib == (170.0,)
    assert prediction.postcopy_s == approx(0.8)
    assert prediction.downtime_ms == 50.0
    assert prediction.transferred_mib == approx(218.1484375)
    assert prediction.total_s == approx(0.3 + 170.1484375 / 60 + 0.05 + 0.8)
    assert prediction.reason.startswith("Layered: one pre-copy round of the 170 MiB cold layer (2.8 s)")


def test_layered_without_known_hot_set_is_all_postcopy():
    # Hot set unknown = all 218 MiB: nothing is cold, post-copy for 218 / 60 = 3.6333 s.
    prediction = predict_layered(MigrationInputs(218, 30, 60, 300))
    assert prediction.rounds == 0
    assert prediction.round_mib == ()
    assert prediction.postcopy_s == approx(218 / 60)
    assert prediction.transferred_mib == approx(218.0)
    assert prediction.reason.startswith("Layered: no cold layer to pre-copy, a switch of about 50 ms")


# ---- strategy choice ----------------------------------------------------


def test_choose_precopy_when_it_converges():
    inputs = MigrationInputs(512, 10, 100, 300, hot_set_mib=512)
    for allow_postcopy in (False, True):
        chosen, candidates = choose_strategy(inputs, allow_postcopy)
        assert chosen == predict_precopy(inputs)
        assert [c.strategy for c in candidates] == ["precopy", "postcopy", "layered"]


def test_choose_layered_for_a_known_hot_set():
    # Both post-copy strategies leave the guest on remote pages for 0.8 s (the 48 MiB hot set);
    # layered is faster (3.98 s against 4.78 s) and sends 218 MiB instead of 266.
    inputs = MigrationInputs(218, 45, 60, 300, hot_set_mib=48)
    chosen, candidates = choose_strategy(inputs, allow_postcopy=True)
    assert chosen.strategy == "layered"
    assert chosen.total_s == approx(candidates[2].total_s)
    assert chosen.reason.startswith(
        "Pre-copy would not converge (the 48 MiB hot set is rewritten faster than the 1 s measurement window "
        "shows"
    )
    assert "), so layered: one pre-copy round of the 170 MiB cold layer" in chosen.reason


def test_choose_postcopy_when_it_keeps_the_remote_window_shorter():
    # Hot set unknown: layered would run 3.63 s on remote pages (all memory), post-copy only
    # 109 / 60 = 1.82 s (what the first pass left dirty).
    inputs = MigrationInputs(218, 30, 60, 300)
    chosen, candidates = choose_strategy(inputs, allow_postcopy=True)
    assert chosen.strategy == "postcopy"
    assert chosen.postcopy_s == approx(109 / 60)
    assert candidates[2].postcopy_s == approx(218 / 60)
    assert "), so post-copy: one pre-copy pass of 218 MiB" in chosen.reason


def test_choose_precopy_with_options_when_postcopy_is_not_allowed():
    inputs = MigrationInputs(218, 45, 60, 300, hot_set_mib=48)
    chosen, candidates = choose_strategy(inputs, allow_postcopy=False)
    assert chosen.strategy == "precopy"
    assert chosen.converges is False
    assert chosen.transferred_mib == approx(candidates[0].transferred_mib)
    assert chosen.reason == (
        "Pre-copy will not converge: the 48 MiB hot set is rewritten faster than the 1 s measurement window "
        "shows, so every round sends it again, and it takes 800 ms at 60 MiB/s, more than max_downtime_ms=300; "
        "set allow_postcopy=true, raise bandwidth_mibps to at least 160 or max_downtime_ms to at least 800."
    )


def test_choose_strategy_is_deterministic():
    inputs = MigrationInputs(218, 30, 60, 300)
    assert choose_strategy(inputs, True) == choose_strategy(inputs, True)


# ---- to_dict ------------------------------------------------------------


def test_to_dict_rounds_and_lists():
    prediction = predict_precopy(MigrationInputs(100, 50, 60, 100, hot_set_mib=100, max_rounds=3, dirty_rate_window_s=0.5))
    as_dict = prediction.to_dict()
    assert as_dict["strategy"] == "precopy"
    assert as_dict["round_mib"] == [100.0, 83.333, 69.444]
    assert as_dict["transferred_mib"] == round(prediction.transferred_mib, 3)
    assert as_dict["postcopy_s"] is None
    assert MigrationInputs(1, 0, 1, 1).to_dict() == {
        "memory_mib": 1, "dirty_rate_mibps": 0, "bandwidth_mibps": 1, "max_downtime_ms": 1,
        "hot_set_mib": None, "max_rounds": 30, "zero_page_mib": 0.0, "dirty_rate_window_s": 1.0,
        "stop_copy_bandwidth_mibps": None, "setup_s": 0.3,
    }


# ---- hot set estimate ---------------------------------------------------


def test_estimate_hot_set_saturated():
    # Medians: 1 s window -> 44 MiB/s (44 MiB), 4 s window -> 12.5 MiB/s (50 MiB).
    # 44 >= 0.5 * 50: about the same volume in four times the time, a hot set of max(44, 50) = 50 MiB.
    estimate = estimate_hot_set([(1, 44), (1, 46), (1, 42), (4, 12), (4, 13)], memory_mib=218)
    assert estimate.saturated is True
    assert estimate.hot_set_mib == 50.0
    assert estimate.dirty_rate_mibps == 44.0
    assert estimate.dirty_rate_window_s == 1.0
    assert estimate.reason == (
        "44 MiB dirtied in 1 s and 50 MiB in 4 s: a hot set of about 50 MiB, rewritten faster than the 1 s "
        "window shows"
    )
    assert estimate.to_dict()["hot_set_mib"] == 50.0


def test_estimate_hot_set_is_capped_by_memory():
    assert estimate_hot_set([(1, 80), (4, 20)], memory_mib=50).hot_set_mib == 50.0


def test_estimate_hot_set_steady_dirtying():
    # 10 MiB in 1 s, 40 MiB in 4 s: 10 < 0.5 * 40, steady; no smaller hot set shows.
    estimate = estimate_hot_set([(1, 10), (4, 10)], memory_mib=218)
    assert estimate.saturated is False
    assert estimate.hot_set_mib == 218.0
    assert estimate.dirty_rate_mibps == 10.0
    assert "steady dirtying" in estimate.reason


def test_estimate_hot_set_idle_and_single_window():
    idle = estimate_hot_set([(1, 0), (4, 0)], memory_mib=90)
    assert (idle.hot_set_mib, idle.saturated, idle.dirty_rate_mibps) == (0.0, False, 0.0)
    single = estimate_hot_set([(1, 12), (1, 14)], memory_mib=90)
    assert single.hot_set_mib is None
    assert single.dirty_rate_mibps == 13.0
    assert single.reason == "one window (1 s) cannot tell a hot set from steady dirtying"


@pytest.mark.parametrize("samples, memory_mib, message", [
    ([], 10, "needs at least one"),
    ([(0, 5)], 10, "window_s must be greater than 0, got 0"),
    ([(1, -5)], 10, "dirty_rate_mibps must be 0 or more, got -5"),
    ([(1, 5)], -1, "memory_mib must be 0 or more, got -1"),
])
def test_estimate_hot_set_rejects_bad_samples(samples, memory_mib, message):
    with pytest.raises(ValueError, match=message):
        estimate_hot_set(samples, memory_mib)


# ---- validation ---------------------------------------------------------


GOOD = dict(memory_mib=256, dirty_rate_mibps=10, bandwidth_mibps=60, max_downtime_ms=300)


@pytest.mark.parametrize("field, value, message", [
    ("memory_mib", -1, "memory_mib must be 0 or more, got -1"),
    ("memory_mib", "256", "memory_mib must be a number, got '256'"),
    ("memory_mib", True, "memory_mib must be a number, got True"),
    ("memory_mib", float("nan"), "memory_mib must be a finite number, got nan"),
    ("dirty_rate_mibps", -0.5, "dirty_rate_mibps must be 0 or more, got -0.5"),
    ("bandwidth_mibps", 0, "bandwidth_mibps must be greater than 0, got 0"),
    ("bandwidth_mibps", float("inf"), "bandwidth_mibps must be a finite number, got inf"),
    ("max_downtime_ms", 0, "max_downtime_ms must be greater than 0, got 0"),
    ("hot_set_mib", -3, "hot_set_mib must be 0 or more, got -3"),
    ("max_rounds", 0, "max_rounds must be a whole number of 1 or more, got 0"),
    ("max_rounds", 2.5, "max_rounds must be a whole number of 1 or more, got 2.5"),
    ("max_rounds", True, "max_rounds must be a whole number of 1 or more, got True"),
    ("zero_page_mib", -1, "zero_page_mib must be 0 or more, got -1"),
    ("dirty_rate_window_s", 0, "dirty_rate_window_s must be greater than 0, got 0"),
    ("stop_copy_bandwidth_mibps", 0, "stop_copy_bandwidth_mibps must be greater than 0, got 0"),
    ("setup_s", -0.1, "setup_s must be 0 or more, got -0.1"),
])
def test_inputs_reject_bad_values(field, value, message):
    with pytest.raises(ValueError) as caught:
        MigrationInputs(**dict(GOOD, **{field: value}))
    assert str(caught.value) == message


def test_inputs_accept_edges():
    inputs = MigrationInputs(0, 0, 0.5, 1, hot_set_mib=0, max_rounds=1, zero_page_mib=0, setup_s=0)
    assert inputs.threshold_mib == approx(0.0005)
    assert inputs.saturated is False
    prediction = predict_precopy(inputs)
    assert prediction.converges is True
    assert prediction.total_s == approx(0.02)


# ---- estimate_memory_to_send ------------------------------------------------


def test_memory_estimate_without_overhead_is_what_the_guest_uses():
    # 256 MiB guest, 191 MiB unused: it uses 65 MiB now; nothing says more.
    estimate = estimate_memory_to_send(256, 65, qemu_rss_mib=328)
    assert (estimate.memory_mib, estimate.lower_mib, estimate.upper_mib) == (65, 65, 256)
    assert estimate.source == "guest_used"
    assert "qemu_overhead_mib" in estimate.reason


def test_memory_estimate_from_qemu_rss_sees_freed_memory():
    # Lab stale:150 guest: QEMU resident 328.4 MiB, QEMU's own 118 MiB -> 210.4 MiB hold data
    # (the migration sent 217 MiB); the guest itself reports only 64.6 MiB in use.
    estimate = estimate_memory_to_send(256, 64.6, qemu_rss_mib=328.4, qemu_overhead_mib=118)
    assert estimate.memory_mib == pytest.approx(210.4)
    assert estimate.source == "qemu_rss"


@pytest.mark.parametrize(
    "rss, expected",
    [
        (150.0, 65.0),   # 150 - 118 = 32 is below what the guest uses: the lower bound holds
        (500.0, 256.0),  # 500 - 118 = 382 is above the guest's size: the upper bound holds
    ],
)
def test_memory_estimate_stays_within_bounds(rss, expected):
    assert estimate_memory_to_send(256, 65, rss, 118).memory_mib == expected


def test_memory_estimate_used_above_current_is_capped():
    assert estimate_memory_to_send(128, 200).memory_mib == 128


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"current_mib": -1, "guest_used_mib": 0}, "current_mib"),
        ({"current_mib": 1, "guest_used_mib": -1}, "guest_used_mib"),
        ({"current_mib": 1, "guest_used_mib": 0, "qemu_rss_mib": -5, "qemu_overhead_mib": 1}, "qemu_rss_mib"),
        ({"current_mib": 1, "guest_used_mib": 0, "qemu_rss_mib": 5, "qemu_overhead_mib": -1}, "qemu_overhead_mib"),
    ],
)
def test_memory_estimate_rejects_negative_figures(kwargs, field):
    with pytest.raises(ValueError, match=field):
        estimate_memory_to_send(**kwargs)


def test_a_storage_copy_adds_its_bytes_and_time_before_memory():
    base = Prediction(strategy="precopy", converges=True, rounds=2, transferred_mib=300.0, total_s=3.0,
                      downtime_ms=40.0, reason="Pre-copy: 2 rounds.")
    with_copy = with_storage_copy(base, 1024.0, 128.0)
    assert (with_copy.transferred_mib, with_copy.total_s) == (1324.0, 11.0)
    assert (with_copy.disk_copy_mib, with_copy.disk_copy_s) == (1024.0, 8.0)
    assert (with_copy.downtime_ms, with_copy.converges) == (40.0, True)
    assert with_storage_copy(base, 0.0, 128.0) is base
    # Under a cap QEMU paces the copy by the disk's whole size: 64 MiB of data in a 1 GiB disk.
    capped = with_storage_copy(base, 64.0, 128.0, paced_mib=1024.0)
    assert (capped.transferred_mib, capped.disk_copy_s) == (364.0, 8.0)
    with pytest.raises(ValueError, match="bandwidth_mibps must be greater than 0"):
        with_storage_copy(base, 10.0, 0.0)


# ---- pre-copy under auto-converge (the hot layer without post-copy) ---------------------


def incompressible(dirty_rate_mibps, memory_mib=200.0, bandwidth_mibps=60.0):
    """The lab's 256 MiB guest with 200 MiB in use, a 60 MiB/s cap and the default 300 ms target."""
    return MigrationInputs(memory_mib=memory_mib, dirty_rate_mibps=dirty_rate_mibps, bandwidth_mibps=bandwidth_mibps,
                           max_downtime_ms=300, zero_page_mib=56.0)


def test_required_throttle_is_zero_when_precopy_converges_alone():
    assert required_throttle_percent(incompressible(5.0)) == 0
    assert auto_converge_percents(incompressible(5.0)) is None


def test_required_throttle_is_the_smallest_that_converges():
    inputs = incompressible(62.0)
    needed = required_throttle_percent(inputs)
    # Rounds shorter than the 1 s window re-dirty D' * 1 s; that must fit 60 MiB/s * 0.3 s = 18 MiB.
    assert needed == math.ceil(100 * (1 - 18.0 / 62.0))
    slowed = MigrationInputs(memory_mib=200.0, dirty_rate_mibps=62.0 * (100 - needed) / 100.0, bandwidth_mibps=60.0,
                             max_downtime_ms=300, zero_page_mib=56.0)
    assert predict_precopy(slowed).converges
    less = MigrationInputs(memory_mib=200.0, dirty_rate_mibps=62.0 * (100 - needed + 1) / 100.0,
                           bandwidth_mibps=60.0, max_downtime_ms=300, zero_page_mib=56.0)
    assert not predict_precopy(less).converges


def test_auto_converge_for_a_slow_dirtier_starts_above_what_is_needed():
    # 25 MiB/s, under half the link: rounds shrink, but each short one re-dirties 25 MiB, more than the 18 that fit.
    inputs = incompressible(25.0)
    needed = required_throttle_percent(inputs)
    assert needed == 28  # 25 MiB/s * 72% = 18 MiB per short round
    initial, increment = auto_converge_percents(inputs)
    assert initial == needed + THROTTLE_MARGIN_PERCENT
    assert initial + increment == AUTO_CONVERGE_MAX_PERCENT


@pytest.mark.parametrize("dirty_rate_mibps", [30.0, 62.0, 146.0])
def test_auto_converge_starts_at_the_maximum_from_half_the_link(dirty_rate_mibps):
    inputs = incompressible(dirty_rate_mibps, memory_mib=225.0)
    assert required_throttle_percent(inputs) < AUTO_CONVERGE_MAX_PERCENT - THROTTLE_MARGIN_PERCENT
    assert auto_converge_percents(inputs) == (AUTO_CONVERGE_MAX_PERCENT, 1)


def test_auto_converge_at_the_maximum_when_even_that_is_not_enough():
    inputs = incompressible(5000.0, memory_mib=4000.0)
    assert required_throttle_percent(inputs) is None
    assert auto_converge_percents(inputs) == (AUTO_CONVERGE_MAX_PERCENT, 1)


def test_predict_throttled_follows_qemus_two_pass_trigger():
    inputs = incompressible(62.0)
    prediction = predict_throttled(inputs, 81, 18)
    # Passes 0 and 1 run unthrottled; QEMU throttles from the third pass.
    assert prediction.throttle_percents[:3] == (0, 0, 81)
    assert prediction.converges
    assert prediction.strategy == "layered" and prediction.postcopy_s is None
    assert prediction.stop_copy_mib <= inputs.threshold_mib
    assert prediction.transferred_mib == approx(sum(prediction.round_mib) + prediction.stop_copy_mib
                                                + 56.0 * ZERO_PAGE_WIRE_FRACTION)
    assert prediction.reason.startswith("Pre-copy alone would not converge (the guest dirties 62 MiB/s")
    assert "with auto-converge from 81% in 18% steps it converges after" in prediction.reason


def test_predict_throttled_steps_up_every_second_pass_that_dirties_too_much():
    # A throttle too weak at first: 62 MiB/s at 20% still dirties more than half of each pass.
    prediction = predict_throttled(incompressible(62.0), 20, 20)
    percents = prediction.throttle_percents
    assert percents[:4] == (0, 0, 20, 20)
    assert percents[4] == 40
    assert prediction.converges
    # Each step waits for two more passes, so a weak start costs rounds.
    assert prediction.rounds > predict_throttled(incompressible(62.0), 81, 18).rounds


def test_predict_throttled_that_cannot_converge_says_what_would():
    prediction = predict_throttled(incompressible(5000.0, memory_mib=4000.0), 99, 1)
    assert not prediction.converges
    assert "allow_postcopy=true" in prediction.reason and "bandwidth_mibps" in prediction.reason
    assert prediction.to_dict()["throttle_percents"] == list(prediction.throttle_percents)
