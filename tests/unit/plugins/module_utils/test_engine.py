# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The engine's pure logic: options, plan, statistics, shaking detection, the monitor loop and the figures.

The monitor runs against ScriptedJob, a MigrationJob that plays jobStats()
readings from a script and advances a FakeClock by each wait, so every guard
and every layer can be reached without libvirt and without real time.
"""

from __future__ import annotations

import dataclasses
import datetime

import pytest

from ansible_collections.strata.migration.plugins.module_utils._convergence import Prediction
from ansible_collections.strata.migration.plugins.module_utils._engine import (
    ABORT_GRACE_S,
    AUTO_CONVERGE_INCREMENT_PERCENT,
    AUTO_CONVERGE_INITIAL_PERCENT,
    HOT_LAYER_NONE,
    HOT_LAYER_POSTCOPY,
    HOT_LAYER_THROTTLE,
    MIB,
    MIGRATE_AUTO_CONVERGE,
    MIGRATE_COMPRESSED,
    MIGRATE_LIVE,
    MIGRATE_PARALLEL,
    MIGRATE_PEER2PEER,
    MIGRATE_PERSIST_DEST,
    MIGRATE_POSTCOPY,
    MIGRATE_TLS,
    MIGRATE_UNDEFINE_SOURCE,
    POLL_S,
    POSTCOPY_GRACE_S,
    PROGRESS_INTERVAL_S,
    XBZRLE_CACHE_MIN_MIB,
    XBZRLE_JUDGE_MIN_PAGES,
    XBZRLE_PAYING_SAVED_FRACTION,
    EngineOptions,
    IterationRecord,
    JobSample,
    MigrationError,
    ProgressReporter,
    Timeline,
    ShakingDetector,
    completed_figures,
    downtime_steps,
    engine_options,
    judge_xbzrle,
    monitor,
    parse_job_stats,
    plan_migration,
    progress_figures,
    summarize_stats,
    xbzrle_cache_mib,
)

from ansible_collections.strata.migration.tests.unit.plugins.module_utils.fakes import FakeClock

PAGE = 4096


def prediction(strategy="precopy", converges=True, reason="model says so"):
    return Prediction(strategy=strategy, converges=converges, rounds=2, transferred_mib=300.0, total_s=3.0,
                      downtime_ms=50.0, reason=reason)


CONVERGING = prediction("precopy", True, "pre-copy converges in 2 rounds")
NOT_CONVERGING = prediction("precopy", False, "pre-copy will not converge")
PREDICTED_POSTCOPY = prediction("postcopy", True, "post-copy is quickest")
PREDICTED_LAYERED = prediction("layered", True, "layered is quickest")


# ---- engine_options ------------------------------------------------------


def test_engine_options_defaults():
    options = engine_options()
    assert options == EngineOptions()
    assert options.strategy == "auto"
    assert options.compression is None
    assert options.migrate_uri is None


def test_engine_options_normalises_types_and_keeps_values():
    options = engine_options(
        strategy="postcopy", max_downtime_ms=500, bandwidth_mibps=100, timeout_s=60, allow_postcopy=1,
        parallel_connections=4, compression=["zstd"], tls=1, migrate_uri="tcp://10.0.0.12", persist=0,
        stall_timeout_s=5, max_transfer_ratio=2, shaking_iterations=2,
    )
    assert options == EngineOptions(
        strategy="postcopy", max_downtime_ms=500, bandwidth_mibps=100, timeout_s=60, allow_postcopy=True,
        parallel_connections=4, compression=("zstd",), tls=True, migrate_uri="tcp://10.0.0.12", persist=False,
        stall_timeout_s=5, max_transfer_ratio=2.0, shaking_iterations=2,
    )
    assert isinstance(options.max_transfer_ratio, float)
    assert options.allow_postcopy is True and options.tls is True and options.persist is False


def test_engine_options_accepts_the_minimum_of_each_bound():
    options = engine_options(max_downtime_ms=1, bandwidth_mibps=0, timeout_s=1, parallel_connections=1,
                             stall_timeout_s=1, max_transfer_ratio=1.0, shaking_iterations=2)
    assert options.max_downtime_ms == 1 and options.shaking_iterations == 2


@pytest.mark.parametrize("strategy", ["auto", "precopy", "layered"])
def test_engine_options_accepts_each_strategy_without_postcopy(strategy):
    assert engine_options(strategy=strategy).strategy == strategy


def test_engine_options_unknown_strategy_names_strategy():
    with pytest.raises(MigrationError) as err:
        engine_options(strategy="fast")
    assert err.value.details["option"] == "strategy"
    assert "'fast'" in str(err.value)
    assert "auto, precopy, layered, postcopy" in str(err.value)


def test_engine_options_postcopy_strategy_needs_allow_postcopy():
    with pytest.raises(MigrationError) as err:
        engine_options(strategy="postcopy")
    assert err.value.details["option"] == "allow_postcopy"
    assert "allow_postcopy=true" in str(err.value)


@pytest.mark.parametrize("option, value", [
    ("max_downtime_ms", 0),
    ("max_downtime_ms", -5),
    ("bandwidth_mibps", -1),
    ("timeout_s", 0),
    ("timeout_s", 0.5),
    ("parallel_connections", 0),
    ("stall_timeout_s", 0),
    ("max_transfer_ratio", 0.99),
    ("shaking_iterations", 1),
    ("timeout_s", True),
    ("max_downtime_ms", "300"),
    ("max_transfer_ratio", None),
])
def test_engine_options_each_bound_names_its_option(option, value):
    with pytest.raises(MigrationError) as err:
        engine_options(**{option: value})
    assert err.value.details["option"] == option
    assert str(err.value).startswith(option + " must be at least")
    assert repr(value) in str(err.value)


def test_engine_options_unknown_compression_names_compression_and_each_unknown_method_once():
    with pytest.raises(MigrationError) as err:
        engine_options(compression=["zstd", "lz4", "gzip", "lz4"])
    assert err.value.details["option"] == "compression"
    message = str(err.value)
    assert "gzip, lz4;" in message
    assert "xbzrle, mt, zlib, zstd" in message


def test_engine_options_compression_deduplicated_in_order():
    assert engine_options(compression=["zstd", "xbzrle", "zstd"]).compression == ("zstd", "xbzrle")


def test_engine_options_empty_compression_stays_distinct_from_default():
    assert engine_options(compression=[]).compression == ()
    assert engine_options(compression=None).compression is None


def test_engine_options_migrate_uri_needs_a_scheme():
    with pytest.raises(MigrationError) as err:
        engine_options(migrate_uri="10.0.0.12")
    assert err.value.details["option"] == "migrate_uri"
    assert "'10.0.0.12'" in str(err.value)


# ---- xbzrle_cache_mib and downtime_steps -----------------------------------


@pytest.mark.parametrize("hot_set_mib, memory_mib, expected", [
    (None, 1024, 16),     # unknown hot set: the floor
    (0.0, 1024, 16),
    (8.0, 1024, 16),      # twice the hot set is exactly the floor
    (8.5, 1024, 32),      # a little more: next power of two
    (64.0, 1024, 128),    # twice the hot set, already a power of two
    (100.0, 1024, 256),   # 200 rounds up to 256
    (1000.0, 1024, 512),  # capped at half the guest
    (1000.0, 1000, 256),  # half the guest is 500: the largest power of two not above it
    (100.0, 20, 16),      # a tiny guest still gets the floor
    (100.0, 8, 16),
])
def test_xbzrle_cache_mib(hot_set_mib, memory_mib, expected):
    assert xbzrle_cache_mib(hot_set_mib, memory_mib) == expected


@pytest.mark.parametrize("max_downtime_ms, ramp, expected", [
    (300, False, (300,)),
    (300, True, (75, 150, 225, 300)),
    (10, True, (2, 5, 8, 10)),
    (2, True, (1, 2)),     # steps that round to the same value are kept once
    (1, True, (1,)),       # never below 1 ms
    (1, False, (1,)),
])
def test_downtime_steps(max_downtime_ms, ramp, expected):
    assert downtime_steps(max_downtime_ms, ramp) == expected


def test_downtime_steps_strictly_increase_and_end_at_the_maximum():
    for maximum in range(1, 400):
        steps = downtime_steps(maximum, True)
        assert steps[-1] == maximum
        assert all(a < b for a, b in zip(steps, steps[1:]))
        assert steps[0] >= 1


# ---- plan_migration --------------------------------------------------------


def plan(prediction=None, memory_mib=1024, hot_set_mib=64.0, **option_values):
    return plan_migration(engine_options(**option_values), prediction, memory_mib, hot_set_mib)


BASE_FLAGS = MIGRATE_LIVE | MIGRATE_PEER2PEER | MIGRATE_PERSIST_DEST | MIGRATE_UNDEFINE_SOURCE


@pytest.mark.parametrize("allow_postcopy", [False, True])
@pytest.mark.parametrize("pred, expected_strategy, expected_reason", [
    (None, "layered", "measure_dirty_rate_s=0"),
    (CONVERGING, "precopy", CONVERGING.reason),
    (NOT_CONVERGING, "layered", NOT_CONVERGING.reason),
    (PREDICTED_LAYERED, "layered", PREDICTED_LAYERED.reason),
])
def test_auto_resolves_the_strategy_from_the_prediction(allow_postcopy, pred, expected_strategy, expected_reason):
    result = plan(pred, strategy="auto", allow_postcopy=allow_postcopy)
    assert result.strategy == expected_strategy
    assert expected_reason in result.reason
    assert result.switch_after_first_pass is False
    # With post-copy allowed it is the hot layer even for a predicted pre-copy; without, the throttle set.
    assert result.hot_layer == (HOT_LAYER_POSTCOPY if allow_postcopy else HOT_LAYER_THROTTLE)


def test_auto_with_a_postcopy_prediction_switches_after_the_first_pass():
    result = plan(PREDICTED_POSTCOPY, strategy="auto", allow_postcopy=True)
    assert result.strategy == "postcopy"
    assert result.reason == PREDICTED_POSTCOPY.reason
    assert result.hot_layer == HOT_LAYER_POSTCOPY
    assert result.switch_after_first_pass is True
    assert result.flags & MIGRATE_POSTCOPY
    assert result.downtime_steps_ms == (300,)


@pytest.mark.parametrize("strategy", ["precopy", "layered"])
@pytest.mark.parametrize("pred", [None, CONVERGING, NOT_CONVERGING])
@pytest.mark.parametrize("allow_postcopy", [False, True])
def test_an_explicit_strategy_is_kept_whatever_the_prediction(strategy, pred, allow_postcopy):
    result = plan(pred, strategy=strategy, allow_postcopy=allow_postcopy)
    assert result.strategy == strategy
    assert result.reason == "strategy=%s was requested." % strategy
    assert result.switch_after_first_pass is False


@pytest.mark.parametrize("pred", [None, CONVERGING, NOT_CONVERGING])
def test_explicit_postcopy(pred):
    result = plan(pred, strategy="postcopy", allow_postcopy=True)
    assert result.strategy == "postcopy"
    assert result.reason == "strategy=postcopy was requested."
    assert result.hot_layer == HOT_LAYER_POSTCOPY
    assert result.switch_after_first_pass is True
    assert result.flags & MIGRATE_POSTCOPY
    assert not result.flags & MIGRATE_AUTO_CONVERGE
    assert result.xbzrle_cache_mib is None
    assert "compression" not in result.params


@pytest.mark.parametrize("allow_postcopy", [False, True])
@pytest.mark.parametrize("pred", [None, CONVERGING, NOT_CONVERGING])
def test_explicit_precopy_has_no_hot_layer(allow_postcopy, pred):
    result = plan(pred, strategy="precopy", allow_postcopy=allow_postcopy)
    assert result.hot_layer == HOT_LAYER_NONE
    assert result.flags == BASE_FLAGS
    assert result.params == {}
    assert result.downtime_steps_ms == (300,)
    assert result.xbzrle_cache_mib is None


@pytest.mark.parametrize("strategy, pred", [
    ("layered", None), ("layered", CONVERGING), ("layered", NOT_CONVERGING),
    ("auto", None), ("auto", NOT_CONVERGING),
])
def test_layered_without_postcopy_gets_the_whole_throttle_set(strategy, pred):
    result = plan(pred, strategy=strategy, max_downtime_ms=400, hot_set_mib=64.0)
    assert result.strategy == "layered"
    assert result.hot_layer == HOT_LAYER_THROTTLE
    assert result.flags == BASE_FLAGS | MIGRATE_AUTO_CONVERGE | MIGRATE_COMPRESSED
    assert result.params == {
        "auto_converge.initial": AUTO_CONVERGE_INITIAL_PERCENT,
        "auto_converge.increment": AUTO_CONVERGE_INCREMENT_PERCENT,
        "compression": "xbzrle",
        "compression.xbzrle.cache": 128 * MIB,
    }
    assert result.xbzrle_cache_mib == 128
    assert result.downtime_steps_ms == (100, 200, 300, 400)
    assert not result.flags & MIGRATE_POSTCOPY


def test_predicted_precopy_without_postcopy_keeps_auto_converge_but_no_xbzrle_and_no_ramp():
    result = plan(CONVERGING, strategy="auto", max_downtime_ms=400)
    assert result.strategy == "precopy"
    assert result.hot_layer == HOT_LAYER_THROTTLE
    assert result.flags == BASE_FLAGS | MIGRATE_AUTO_CONVERGE
    assert "compression" not in result.params
    assert result.xbzrle_cache_mib is None
    assert result.downtime_steps_ms == (400,)


@pytest.mark.parametrize("strategy, pred", [("layered", None), ("auto", None), ("auto", NOT_CONVERGING),
                                            ("auto", CONVERGING)])
def test_postcopy_hot_layer_has_no_throttle_and_no_ramp(strategy, pred):
    result = plan(pred, strategy=strategy, allow_postcopy=True, max_downtime_ms=400)
    assert result.hot_layer == HOT_LAYER_POSTCOPY
    assert result.flags == BASE_FLAGS | MIGRATE_POSTCOPY
    assert result.params == {}
    assert result.downtime_steps_ms == (400,)
    assert result.xbzrle_cache_mib is None


def test_postcopy_keeps_the_bandwidth_cap_after_the_switch():
    result = plan(None, strategy="layered", allow_postcopy=True, bandwidth_mibps=60)
    assert result.params == {"bandwidth": 60, "bandwidth.postcopy": 60}


def test_postcopy_can_have_a_bandwidth_of_its_own():
    result = plan(None, strategy="layered", allow_postcopy=True, bandwidth_mibps=60, postcopy_bandwidth_mibps=200)
    assert result.params == {"bandwidth": 60, "bandwidth.postcopy": 200}
    # Without a pre-copy cap, post-copy still gets its own.
    result = plan(None, strategy="layered", allow_postcopy=True, postcopy_bandwidth_mibps=200)
    assert result.params == {"bandwidth.postcopy": 200}


def test_bandwidth_without_postcopy_caps_pre_copy_only():
    result = plan(None, strategy="precopy", bandwidth_mibps=60)
    assert result.params == {"bandwidth": 60}


def test_unlimited_bandwidth_sets_no_parameter():
    for allow_postcopy in (False, True):
        params = plan(None, strategy="layered", allow_postcopy=allow_postcopy, bandwidth_mibps=0).params
        assert "bandwidth" not in params and "bandwidth.postcopy" not in params


def test_persist_false_leaves_the_definitions_alone():
    result = plan(None, strategy="precopy", persist=False)
    assert result.flags == MIGRATE_LIVE | MIGRATE_PEER2PEER


def test_tls_and_migrate_uri():
    result = plan(None, strategy="precopy", tls=True, migrate_uri="tcp://10.0.0.12:49152")
    assert result.flags == BASE_FLAGS | MIGRATE_TLS
    assert result.params == {"migrate_uri": "tcp://10.0.0.12:49152"}


@pytest.mark.parametrize("strategy, allow_postcopy", [("precopy", False), ("layered", False), ("layered", True)])
def test_parallel_connections(strategy, allow_postcopy):
    result = plan(None, strategy=strategy, allow_postcopy=allow_postcopy, parallel_connections=4)
    assert result.flags & MIGRATE_PARALLEL
    assert result.params["parallel.connections"] == 4
    # multifd cannot use XBZRLE: the engine does not pick it on its own.
    assert "compression" not in result.params
    assert not result.flags & MIGRATE_COMPRESSED
    assert result.xbzrle_cache_mib is None


def test_one_connection_is_not_parallel():
    result = plan(None, strategy="precopy", parallel_connections=1)
    assert not result.flags & MIGRATE_PARALLEL
    assert "parallel.connections" not in result.params


@pytest.mark.parametrize("strategy, allow_postcopy, pred", [
    ("layered", False, None), ("auto", False, NOT_CONVERGING), ("auto", False, CONVERGING),
    ("layered", True, None), ("precopy", False, None), ("postcopy", True, None),
])
def test_empty_compression_turns_compression_off(strategy, allow_postcopy, pred):
    result = plan(pred, strategy=strategy, allow_postcopy=allow_postcopy, compression=[])
    assert not result.flags & MIGRATE_COMPRESSED
    assert "compression" not in result.params
    assert "compression.xbzrle.cache" not in result.params
    assert result.xbzrle_cache_mib is None


@pytest.mark.parametrize("strategy, allow_postcopy, pred", [
    ("layered", False, None), ("auto", False, CONVERGING), ("layered", True, None), ("precopy", False, None),
    ("postcopy", True, None),
])
def test_explicit_compression_is_used_for_every_strategy(strategy, allow_postcopy, pred):
    result = plan(pred, strategy=strategy, allow_postcopy=allow_postcopy, compression=["zstd"])
    assert result.flags & MIGRATE_COMPRESSED
    assert result.params["compression"] == "zstd"
    assert "compression.xbzrle.cache" not in result.params
    assert result.xbzrle_cache_mib is None


def test_explicit_xbzrle_gets_a_cache_sized_from_the_hot_set():
    result = plan(None, strategy="precopy", compression=["xbzrle"], memory_mib=512, hot_set_mib=20.0)
    assert result.params["compression"] == "xbzrle"
    assert result.xbzrle_cache_mib == 64
    assert result.params["compression.xbzrle.cache"] == 64 * MIB


def test_several_compression_methods_are_passed_as_a_list():
    result = plan(None, strategy="layered", compression=["mt", "xbzrle"], memory_mib=1024, hot_set_mib=None)
    assert result.params["compression"] == ["mt", "xbzrle"]
    assert result.xbzrle_cache_mib == 16
    assert result.params["compression.xbzrle.cache"] == 16 * MIB


def test_plan_to_dict_names_flags_and_params():
    result = plan(None, strategy="layered", bandwidth_mibps=50, memory_mib=1024, hot_set_mib=64.0)
    described = result.to_dict()
    assert described == {
        "name": "layered",
        "reason": result.reason,
        "hot_layer": HOT_LAYER_THROTTLE,
        "flags": ["live", "peer2peer", "persist_dest", "undefine_source", "compressed", "auto_converge"],
        "params": dict(result.params),
        "downtime_steps_ms": [75, 150, 225, 300],
        "xbzrle_cache_mib": 128,
        "switch_after_first_pass": False,
        "switch_after_mib": None,
        "copied_disks": [],
        "features": {},
        "cap_vcpus": False,
    }
    assert described["params"]["bandwidth"] == 50


def test_flag_names_cover_every_flag():
    result = plan(None, strategy="postcopy", allow_postcopy=True, tls=True, parallel_connections=2,
                  compression=["zstd"])
    assert result.flag_names == ["live", "peer2peer", "persist_dest", "undefine_source", "compressed", "postcopy",
                                 "tls", "parallel"]


# ---- parse_job_stats -------------------------------------------------------


@pytest.mark.parametrize("stats", [None, {}, {"type": 0, "memory_processed": 1}, {"memory_processed": 1},
                                   {"type": 2, "time_elapsed": 10}])
def test_parse_job_stats_without_a_running_migration(stats):
    assert parse_job_stats(stats, 1.0) is None


def test_parse_job_stats_converts_units():
    sample = parse_job_stats({
        "type": 2,
        "time_elapsed": 1234,
        "memory_processed": 300 * MIB,
        "memory_remaining": 12 * MIB + MIB // 2,
        "memory_total": 256 * MIB,
        "memory_dirty_rate": 2560,   # pages per second
        "memory_page_size": 4096,
        "memory_bps": 100 * MIB,
        "memory_iteration": 3,
        "memory_postcopy_requests": 7,
        "auto_converge_throttle": 60,
    }, 2.34567)
    assert sample == JobSample(elapsed_s=2.346, iteration=3, processed_mib=300.0, remaining_mib=12.5,
                               total_mib=256.0, dirty_rate_mibps=10.0, throughput_mibps=100.0,
                               postcopy_requests=7, throttle_percent=60, job_elapsed_ms=1234)


def test_parse_job_stats_uses_the_reported_page_size():
    sample = parse_job_stats({"type": 2, "memory_processed": 0, "memory_dirty_rate": 10,
                              "memory_page_size": 2 * MIB}, 0.0)
    assert sample.dirty_rate_mibps == 20.0


def test_parse_job_stats_missing_keys_default_to_zero_or_none():
    sample = parse_job_stats({"type": 2, "memory_processed": 5 * MIB, "memory_page_size": 0,
                              "memory_dirty_rate": 256}, 0.5)
    assert sample == JobSample(elapsed_s=0.5, iteration=0, processed_mib=5.0, remaining_mib=0.0, total_mib=0.0,
                               dirty_rate_mibps=1.0, throughput_mibps=0.0, postcopy_requests=0,
                               throttle_percent=None, job_elapsed_ms=None)


# ---- ShakingDetector -------------------------------------------------------


def record(iteration, remaining_mib=100.0, dirty=10.0, sent=100.0):
    return IterationRecord(iteration=iteration, started_s=float(iteration), remaining_mib=remaining_mib,
                           dirty_rate_mibps=dirty, throughput_mibps=sent)


def feed(detector, records):
    """The verdicts by iteration, for the records that produced one."""
    verdicts = {}
    for rec in records:
        verdict = detector.observe(rec)
        if verdict is not None:
            verdicts[rec.iteration] = verdict
    return verdicts


def test_detector_ignores_the_first_pass():
    detector = ShakingDetector(2, predicted_to_converge=False)
    # Iteration 1 (and 0) is the first pass: no verdict, even with the model pending and dirty > sent.
    assert detector.observe(record(0, dirty=500.0)) is None
    assert detector.observe(record(1, dirty=500.0)) is None
    rule, detail = detector.observe(record(2))
    assert rule == "model"
    assert "first pass done" in detail


def test_detector_first_pass_is_not_a_reference_for_not_shrinking():
    detector = ShakingDetector(2, None)
    # Were pass 1 recorded, passes 2-3 would not have shrunk from it and shaking would show at pass 3;
    # pass 1 is ignored, so the first window is 3-4 against pass 2.
    verdicts = feed(detector, [record(1, 100.0), record(2, 100.0), record(3, 100.0), record(4, 100.0)])
    assert list(verdicts) == [4]
    assert verdicts[4][0] == "not_shrinking"


def test_model_rule_fires_once_and_only_when_predicted_not_to_converge():
    steady = [record(i, remaining_mib=1000.0 / i) for i in range(1, 12)]  # always shrinking, dirty < sent
    verdicts = feed(ShakingDetector(3, False), steady)
    assert list(verdicts) == [2]
    assert verdicts[2][0] == "model"
    assert feed(ShakingDetector(3, True), steady) == {}
    assert feed(ShakingDetector(3, None), steady) == {}


def test_dirty_outpaces_send_needs_two_consecutive_passes():
    detector = ShakingDetector(5, None)
    shrinking = [
        record(2, 900.0, dirty=120.0, sent=100.0),
        record(3, 800.0, dirty=50.0, sent=100.0),
        record(4, 700.0, dirty=100.0, sent=100.0),   # equal counts as outpacing
        record(5, 600.0, dirty=130.0, sent=100.0),
    ]
    verdicts = feed(detector, shrinking)
    assert list(verdicts) == [5]
    rule, detail = verdicts[5]
    assert rule == "dirty_outpaces_send"
    assert detail == ("passes 3 and 4: the guest dirtied 100.0 and 130.0 MiB/s while 100.0 and 100.0 MiB/s "
                      "were sent")


def test_dirty_outpaces_send_ignores_passes_with_nothing_sent():
    detector = ShakingDetector(5, None)
    verdicts = feed(detector, [record(i, 1000.0 - 100 * i, dirty=50.0, sent=0.0) for i in range(2, 6)])
    assert verdicts == {}


def test_not_shrinking_over_the_window():
    detector = ShakingDetector(3, None)
    # Reference pass 2 left 100; passes 3-5 stay at or above 90 (the 10% shrink threshold).
    verdicts = feed(detector, [record(2, 100.0), record(3, 95.0), record(4, 90.0), record(5, 99.0)])
    assert list(verdicts) == [5]
    rule, detail = verdicts[5]
    assert rule == "not_shrinking"
    assert detail == "over 3 passes what was left stayed at 90.0 MiB or more (it was 100.0 MiB at pass 1)"


def test_shrinking_by_more_than_ten_percent_once_in_the_window_is_not_shaking():
    detector = ShakingDetector(3, None)
    verdicts = feed(detector, [record(2, 100.0), record(3, 95.0), record(4, 89.9), record(5, 99.0)])
    assert verdicts == {}


def test_not_shrinking_reported_again_every_window_passes():
    detector = ShakingDetector(3, None)
    verdicts = feed(detector, [record(i, 100.0) for i in range(2, 15)])
    assert list(verdicts) == [5, 8, 11, 14]
    assert all(rule == "not_shrinking" for rule, _detail in verdicts.values())


def test_dirty_outpaces_send_reported_again_every_two_passes():
    detector = ShakingDetector(10, None)
    verdicts = feed(detector, [record(i, 1000.0 - 50 * i, dirty=200.0) for i in range(2, 9)])
    assert list(verdicts) == [3, 5, 7]


def test_a_detection_starts_a_new_window():
    detector = ShakingDetector(3, None)
    # Pass 2-3 outpace: detected at 3. The window restarts, so pass 3 does not pair with pass 4.
    verdicts = feed(detector, [
        record(2, 900.0, dirty=200.0), record(3, 800.0, dirty=200.0),
        record(4, 700.0, dirty=200.0), record(5, 100.0, dirty=10.0), record(6, 50.0, dirty=200.0),
    ])
    assert list(verdicts) == [3]


def test_not_shrinking_after_a_detection_measures_from_the_last_pass_before_the_window():
    detector = ShakingDetector(2, False)
    # Model at 2; the window then compares passes 3-4 with pass 2, which left 500.
    verdicts = feed(detector, [record(2, 500.0), record(3, 100.0), record(4, 100.0), record(5, 100.0),
                               record(6, 100.0)])
    assert verdicts[2][0] == "model"
    assert 4 not in verdicts
    assert verdicts[5] == ("not_shrinking", verdicts[5][1])
    assert "it was 100.0 MiB at pass 2" in verdicts[5][1]


# ---- the monitor loop --------------------------------------------------------


def job_stats(iteration, processed_mib, remaining_mib=100.0, total_mib=256.0, dirty_mibps=10.0,
              sent_mibps=100.0, **extra):
    stats = {
        "type": 2,
        "time_elapsed": 0,
        "memory_iteration": iteration,
        "memory_processed": int(processed_mib * MIB),
        "memory_remaining": int(remaining_mib * MIB),
        "memory_total": int(total_mib * MIB),
        "memory_dirty_rate": int(dirty_mibps * MIB / PAGE),
        "memory_page_size": PAGE,
        "memory_bps": int(sent_mibps * MIB),
    }
    stats.update(extra)
    return stats


class ScriptedJob:
    """A MigrationJob playing a script on a FakeClock.

    Each wait() advances the clock by its timeout. Poll n (the n-th wait
    before any abort) reads script[n - 1] (the last entry once the script is
    exhausted; a callable script gets n). The job ends at poll `ends_at`
    (never when None) with `error`. After abort(), wait() ends the job with
    `abort_error` ("aborted"), completes it ("completes") or not at all
    ("hangs"), as `on_abort` says. `fail_*` raise from that call.
    """

    def __init__(self, clock, script, ends_at=None, error=None, on_abort="aborted",
                 fail_abort=None, fail_postcopy=(), fail_downtime=None, switching_from=None):
        self.clock = clock
        self.switching_from = switching_from  # the poll from which the source is paused for the switch
        self.script = script
        self.ends_at = ends_at
        self.final_error = error
        self.on_abort = on_abort
        self.fail_abort = fail_abort
        self.fail_postcopy = list(fail_postcopy)
        self.fail_downtime = fail_downtime
        self.calls = []
        self.waits = []
        self.polls = 0
        self.postcopy_asked_at_polls = []
        self.aborted = False
        self.ended = False
        self._error = None

    def start(self, flags, params, on_switch=None):
        self.calls.append(("start", flags, dict(params)))
        self.on_switch = on_switch

    def wait(self, timeout_s):
        self.waits.append(timeout_s)
        self.clock.now += timeout_s
        if self.aborted:
            if self.on_abort == "aborted":
                self.ended, self._error = True, "operation aborted: migration out job: canceled by client"
            elif self.on_abort == "completes":
                self.ended, self._error = True, None
            return self.ended
        self.polls += 1
        if self.switching_from is not None and self.polls == self.switching_from and self.on_switch is not None:
            self.on_switch()  # libvirt's event, from its own thread, while the statistics call waits
        if self.ends_at is not None and self.polls >= self.ends_at:
            self.ended, self._error = True, self.final_error
        return self.ended

    def error(self):
        return self._error

    def stats(self):
        assert not self.ended, "stats read after the job ended"
        if callable(self.script):
            return self.script(self.polls)
        return self.script[min(self.polls, len(self.script)) - 1]

    def set_max_downtime(self, downtime_ms):
        self.calls.append(("set_max_downtime", downtime_ms))
        if self.fail_downtime is not None:
            raise self.fail_downtime

    def set_max_speed(self, bandwidth_mibps):
        self.calls.append(("set_max_speed", bandwidth_mibps))

    def set_compression_cache(self, cache_mib):
        self.calls.append(("set_compression_cache", cache_mib))

    def start_postcopy(self):
        self.calls.append(("start_postcopy",))
        self.postcopy_asked_at_polls.append(self.polls)
        if self.fail_postcopy:
            raise self.fail_postcopy.pop(0)

    def switching_over(self):
        return self.switching_from is not None and self.polls >= self.switching_from

    def abort(self):
        self.calls.append(("abort",))
        if self.fail_abort is not None:
            raise self.fail_abort
        self.aborted = True

    def called(self, name):
        return [c for c in self.calls if c[0] == name]


def run_monitor(job, clock, plan, options, predicted=None, started=None):
    timeline = Timeline(clock, clock.now if started is None else started)
    outcome = monitor(job, plan, options, predicted, timeline)
    return outcome, timeline.events


def events(timeline, name=None):
    return [e for e in timeline if name is None or e["event"] == name]


def setup(strategy="precopy", allow_postcopy=False, max_downtime_ms=300, pred=None, memory_mib=256,
          **option_values):
    options = engine_options(strategy=strategy, allow_postcopy=allow_postcopy, max_downtime_ms=max_downtime_ms,
                             **option_values)
    return FakeClock(), options, plan_migration(options, pred, memory_mib, 32.0)


def rising(iteration_every=1, step_mib=10.0, remaining_mib=100.0, **kwargs):
    """A script where something is sent at every poll and a new pass starts every `iteration_every` polls."""
    def script(poll):
        return job_stats(1 + (poll - 1) // iteration_every, poll * step_mib, remaining_mib, **kwargs)
    return script


def test_monitor_completion():
    clock, options, the_plan = setup("precopy")
    job = ScriptedJob(clock, [job_stats(1, 50.0, 200.0), job_stats(1, 150.0, 100.0), job_stats(2, 250.0, 10.0)],
                      ends_at=4)
    outcome, timeline = run_monitor(job, clock, the_plan, options, predicted=True)
    assert outcome.completed is True
    assert outcome.error is None and outcome.aborted_by is None and outcome.hint is None
    assert outcome.still_running is False and outcome.postcopy_started is False
    assert outcome.downtime_ms == 300
    assert outcome.shaking == []
    assert outcome.last_sample.iteration == 2 and outcome.last_sample.processed_mib == 250.0
    assert job.calls == [("start", the_plan.flags, the_plan.params), ("set_max_downtime", 300)]
    assert [e["event"] for e in timeline] == ["layer", "downtime", "iteration", "iteration", "complete"]
    assert timeline[0] == {"t_s": 0.0, "event": "layer", "layer": 2, "action": "precopy",
                           "flags": the_plan.flag_names, "params": {}}
    assert [e["iteration"] for e in events(timeline, "iteration")] == [1, 2]
    assert events(timeline, "downtime")[0]["why"] == "initial target"
    assert all(w == POLL_S for w in job.waits)


def test_monitor_timeline_shows_the_xbzrle_cache_in_mib():
    clock, options, the_plan = setup("layered", memory_mib=1024)
    assert the_plan.params["compression.xbzrle.cache"] == 64 * MIB
    job = ScriptedJob(clock, [job_stats(1, 1.0)], ends_at=1)
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert timeline[0]["params"]["compression.xbzrle.cache"] == "64 MiB"
    assert job.calls[0][2]["compression.xbzrle.cache"] == 64 * MIB
    assert outcome.completed is True


def test_monitor_job_that_ends_at_once_reads_no_statistics():
    clock, options, the_plan = setup("precopy")
    job = ScriptedJob(clock, [], ends_at=1)
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.completed is True
    assert outcome.last_sample is None
    # No sample: the downtime target was never set.
    assert job.called("set_max_downtime") == []
    assert [e["event"] for e in timeline] == ["layer", "complete"]


def test_monitor_failure_reported_by_libvirt():
    clock, options, the_plan = setup("precopy")
    job = ScriptedJob(clock, rising(), ends_at=3, error="client socket is closed")
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.completed is False
    assert outcome.error == "client socket is closed"
    assert outcome.aborted_by is None and outcome.hint is None
    assert outcome.still_running is False
    assert job.called("abort") == []
    assert timeline[-1]["event"] == "failed" and timeline[-1]["error"] == "client socket is closed"


def test_monitor_no_statistics_yet_is_not_a_sample():
    clock, options, the_plan = setup("precopy")
    job = ScriptedJob(clock, [None, {"type": 0}, job_stats(1, 5.0)], ends_at=4)
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.completed is True
    assert job.called("set_max_downtime") == [("set_max_downtime", 300)]
    assert len(events(timeline, "iteration")) == 1


def assert_aborted_on_source(outcome, timeline, job, guard, hint_names, postcopy_attempts=0):
    assert outcome.completed is False
    assert outcome.aborted_by == guard
    assert hint_names in outcome.hint
    assert outcome.postcopy_started is False
    assert outcome.still_running is False
    assert outcome.error.startswith("operation aborted")
    assert job.called("abort") == [("abort",)]
    assert len(job.called("start_postcopy")) == postcopy_attempts
    assert job.waits[-1] == ABORT_GRACE_S
    names = [e["event"] for e in timeline]
    assert names[-3:] == ["guard", "abort", "failed"]
    assert timeline[-3]["guard"] == guard
    assert "error" not in timeline[-2]


def test_timeout_guard_aborts():
    clock, options, the_plan = setup("precopy", timeout_s=2)
    job = ScriptedJob(clock, rising())
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert_aborted_on_source(outcome, timeline, job, "timeout", "timeout_s")
    assert events(timeline, "guard")[0]["detail"] == "the migration ran for 2 s (timeout_s)"
    assert events(timeline, "guard")[0]["t_s"] >= 2
    assert job.polls == 10  # 2 s of 0.2 s polls, then no more polling


def test_transfer_guard_aborts():
    clock, options, the_plan = setup("precopy", max_transfer_ratio=2.0)
    # 256 MiB guest, 100 MiB sent per poll: 300 MiB <= 512, 400 <= 512, 500 <= 512, 600 > 512 at poll 6.
    job = ScriptedJob(clock, rising(step_mib=100.0, total_mib=256.0))
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert_aborted_on_source(outcome, timeline, job, "transfer", "max_transfer_ratio")
    assert job.polls == 6
    assert events(timeline, "guard")[0]["detail"] == (
        "600 MiB sent for a 256 MiB guest, more than max_transfer_ratio=2.0 times its memory")


def test_transfer_guard_ignores_a_sample_without_memory_total():
    clock, options, the_plan = setup("precopy", max_transfer_ratio=1.0)
    job = ScriptedJob(clock, rising(step_mib=1000.0, total_mib=0.0), ends_at=5)
    outcome, _timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.completed is True
    assert job.called("abort") == []


def test_stall_guard_aborts_when_nothing_is_sent():
    clock, options, the_plan = setup("precopy", stall_timeout_s=1)
    job = ScriptedJob(clock, [job_stats(1, 10.0), job_stats(1, 20.0)] + [job_stats(1, 20.0)] * 20)
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert_aborted_on_source(outcome, timeline, job, "stall", "stall_timeout_s")
    # Last progress at poll 2 (0.4 s); a stall of 1 s trips at 1.4 s (poll 7), or one poll later by rounding.
    assert 7 <= job.polls <= 8
    assert events(timeline, "guard")[0]["detail"] == "nothing was sent for 1 s (stall_timeout_s)"


def test_stall_guard_when_statistics_never_come():
    clock, options, the_plan = setup("precopy", stall_timeout_s=1)
    job = ScriptedJob(clock, [None])
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert_aborted_on_source(outcome, timeline, job, "stall", "stall_timeout_s")
    assert outcome.last_sample is None
    assert job.polls == 5


def test_the_switch_libvirt_tells_is_reported_at_once_and_kept():
    # libvirt's final switch: the copy is over and the source paused for it; the controller then gives
    # the copy's bandwidth and slot to other moves.
    clock, options, the_plan = setup("precopy")
    script = [job_stats(1, 100.0, 150.0), job_stats(2, 250.0, 0.0), job_stats(2, 256.0, 0.0)]
    job = ScriptedJob(clock, script, ends_at=5, switching_from=3)
    phases = []
    monitor(job, the_plan, options, True, Timeline(clock), lambda phase, sample: phases.append(phase))
    # The first as the job starts; at poll 3 the event, then the poll's own report, then poll 4's.
    assert phases == ["migrating"] * 3 + ["switching"] * 3


def test_steady_progress_never_trips_the_stall_guard():
    clock, options, the_plan = setup("precopy", stall_timeout_s=1, timeout_s=100)
    job = ScriptedJob(clock, rising(), ends_at=100)  # 20 s, well past stall_timeout_s, always sending
    outcome, _timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.completed is True
    assert job.called("abort") == []


def test_abort_that_raises_is_recorded_and_the_job_still_ends():
    clock, options, the_plan = setup("precopy", timeout_s=1)
    # The abort call fails, so the job runs on; it then ends on its own with an error.
    job = ScriptedJob(clock, rising(), ends_at=6, error="migration failed",
                      fail_abort=RuntimeError("no job running"))
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert job.called("abort") == [("abort",)]
    assert outcome.aborted_by == "timeout"
    assert outcome.completed is False
    assert outcome.error == "migration failed"
    assert [e["event"] for e in timeline][-3:] == ["guard", "abort", "failed"]
    assert timeline[-2]["error"] == "no job running"


def test_completion_racing_the_abort_is_a_success():
    clock, options, the_plan = setup("precopy", timeout_s=1)
    job = ScriptedJob(clock, rising(), on_abort="completes")
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert job.called("abort") == [("abort",)]
    assert outcome.completed is True
    assert outcome.aborted_by is None and outcome.hint is None and outcome.error is None
    assert timeline[-1]["event"] == "complete"
    assert "before the abort took effect" in timeline[-1]["note"]


def test_abort_raising_because_the_job_just_completed_is_a_success():
    clock, options, the_plan = setup("precopy", timeout_s=1)
    job = ScriptedJob(clock, rising(), ends_at=6, fail_abort=RuntimeError("migration already finished"))
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.completed is True
    assert outcome.aborted_by is None
    assert [e["event"] for e in timeline][-3:] == ["guard", "abort", "complete"]


def test_abort_that_does_not_take_effect_is_bounded():
    clock, options, the_plan = setup("precopy", timeout_s=1)
    job = ScriptedJob(clock, rising(), on_abort="hangs")
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.completed is False
    assert outcome.still_running is True
    assert outcome.aborted_by == "timeout"
    assert outcome.error is None
    assert job.waits[-1] == ABORT_GRACE_S
    assert [e["event"] for e in timeline][-2:] == ["guard", "abort"]


def test_strategy_postcopy_switches_once_the_first_pass_is_done():
    clock, options, the_plan = setup("postcopy", allow_postcopy=True)
    job = ScriptedJob(clock, rising(iteration_every=3), ends_at=12)
    outcome, timeline = run_monitor(job, clock, the_plan, options, predicted=True)
    assert outcome.completed is True
    assert outcome.postcopy_started is True
    assert job.called("start_postcopy") == [("start_postcopy",)]
    switch = events(timeline, "layer")[1]
    assert switch["layer"] == 3 and switch["action"] == "postcopy" and "error" not in switch
    assert "first pass" in switch["why"]
    # The switch comes with the first sight of pass 2 (iteration 2, poll 4), not before.
    first_pass_2 = [e for e in events(timeline, "iteration") if e["iteration"] == 2][0]
    assert timeline.index(switch) == timeline.index(first_pass_2) + 1
    assert outcome.shaking == []


LAYERED_WITH_COLD = dataclasses.replace(PREDICTED_LAYERED, rounds=1, round_mib=(40.0,))
LAYERED_ALL_HOT = dataclasses.replace(PREDICTED_LAYERED, rounds=0, round_mib=())


@pytest.mark.parametrize("pred, expected_mib", [(LAYERED_WITH_COLD, 40.0), (LAYERED_ALL_HOT, 0.0)])
def test_a_predicted_layered_course_switches_once_its_cold_layer_crossed(pred, expected_mib):
    with_postcopy = plan(pred, strategy="auto", allow_postcopy=True)
    assert with_postcopy.switch_after_mib == expected_mib
    assert with_postcopy.to_dict()["switch_after_mib"] == expected_mib
    # Without post-copy, or with another prediction, the shaking detector decides.
    assert plan(pred, strategy="auto", allow_postcopy=False).switch_after_mib is None
    for other in (None, CONVERGING, NOT_CONVERGING, PREDICTED_POSTCOPY):
        assert plan(other, strategy="auto", allow_postcopy=True).switch_after_mib is None


def test_layered_switches_when_the_cold_layer_has_crossed_not_at_the_end_of_the_pass():
    options = engine_options(allow_postcopy=True)
    clock, the_plan = FakeClock(), plan_migration(options, LAYERED_WITH_COLD, 256, 200.0)
    # Poll 1: libvirt's job before QEMU's pass; then 15 MiB a poll, all in pass 1.
    job = ScriptedJob(clock, lambda poll: job_stats(min(poll - 1, 1), (poll - 1) * 15.0), ends_at=12)
    outcome, timeline = run_monitor(job, clock, the_plan, options, predicted=False)
    assert outcome.completed is True and outcome.postcopy_started is True
    assert job.called("start_postcopy") == [("start_postcopy",)]
    switch = [e for e in events(timeline, "layer") if e["layer"] == 3][0]
    assert switch["why"] == "layered: the 40.0 MiB cold layer has crossed"
    # 45 MiB at poll 4 is the first reading at or past 40 MiB; pass 2 never began.
    assert job.postcopy_asked_at_polls == [4]
    assert outcome.shaking == []


def test_layered_without_a_cold_layer_switches_once_the_first_pass_runs():
    options = engine_options(allow_postcopy=True)
    clock, the_plan = FakeClock(), plan_migration(options, LAYERED_ALL_HOT, 256, 256.0)
    script = [job_stats(0, 0.0), job_stats(0, 0.0), job_stats(1, 6.0), job_stats(1, 20.0)]
    job = ScriptedJob(clock, script, ends_at=6)
    outcome, timeline = run_monitor(job, clock, the_plan, options, predicted=False)
    assert outcome.postcopy_started is True
    # QEMU refuses the switch before its first pass: none is asked at iteration 0 (polls 1 and 2).
    assert job.postcopy_asked_at_polls == [3]
    switch = [e for e in events(timeline, "layer") if e["layer"] == 3][0]
    assert "no cold layer" in switch["why"]


def test_a_refused_layered_switch_is_tried_once_then_left_to_the_shaking_detector():
    options = engine_options(allow_postcopy=True)
    clock, the_plan = FakeClock(), plan_migration(options, LAYERED_ALL_HOT, 256, 256.0)
    job = ScriptedJob(clock, rising(iteration_every=3), ends_at=12, fail_postcopy=[RuntimeError("too early")])
    outcome, timeline = run_monitor(job, clock, the_plan, options, predicted=False)
    switches = [e for e in events(timeline, "layer") if e["layer"] == 3]
    assert switches[0]["error"] == "too early" and "no cold layer" in switches[0]["why"]
    assert "error" not in switches[1] and switches[1]["why"] == "shaking detected (model)"
    assert len(job.called("start_postcopy")) == 2
    assert outcome.postcopy_started is True


def test_layered_switch_waits_for_the_disks_to_be_in_sync():
    options = engine_options(allow_postcopy=True, copy_storage="all")
    clock, the_plan = FakeClock(), plan_migration(options, LAYERED_ALL_HOT, 256, 256.0, ["vda"])
    job = ScriptedJob(clock, disk_phase(100.0, 10.0), ends_at=20)
    outcome, timeline = run_monitor(job, clock, the_plan, options, predicted=False)
    assert outcome.postcopy_started is True
    # The disks are in sync at poll 10, memory's first pass runs from poll 11.
    assert job.postcopy_asked_at_polls == [11]


def test_shaking_switches_to_postcopy_when_allowed():
    clock, options, the_plan = setup("layered", allow_postcopy=True)
    job = ScriptedJob(clock, rising(), ends_at=8)
    outcome, timeline = run_monitor(job, clock, the_plan, options, predicted=False)
    assert outcome.completed is True and outcome.postcopy_started is True
    assert outcome.shaking == [{"iteration": 2, "rule": "model", "detail": outcome.shaking[0]["detail"]}]
    assert job.called("start_postcopy") == [("start_postcopy",)]
    names = [e["event"] for e in timeline]
    assert names.index("shaking") + 1 == names.index("layer", 1)
    assert "shaking detected (model)" in events(timeline, "layer")[1]["why"]
    # The downtime target is not ramped for a post-copy hot layer.
    assert job.called("set_max_downtime") == [("set_max_downtime", 300)]


def test_no_switch_before_shaking_is_detected():
    clock, options, the_plan = setup("layered", allow_postcopy=True)
    job = ScriptedJob(clock, lambda poll: job_stats(poll, poll * 10.0, 1000.0 / poll), ends_at=8)
    outcome, _timeline = run_monitor(job, clock, the_plan, options, predicted=True)
    assert outcome.completed is True
    assert outcome.postcopy_started is False
    assert job.called("start_postcopy") == []


def test_failed_postcopy_switch_is_recorded_and_retried_at_the_next_pass():
    clock, options, the_plan = setup("postcopy", allow_postcopy=True)
    job = ScriptedJob(clock, rising(), ends_at=6, fail_postcopy=[RuntimeError("not in pre-copy")])
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    switches = [e for e in events(timeline, "layer") if e["layer"] == 3]
    assert switches[0]["error"] == "not in pre-copy"
    assert "error" not in switches[1]
    assert len(job.called("start_postcopy")) == 2
    assert outcome.postcopy_started is True
    assert outcome.completed is True


def test_failed_postcopy_switch_leaves_the_guards_on():
    clock, options, the_plan = setup("layered", allow_postcopy=True, timeout_s=2)
    job = ScriptedJob(clock, rising(), fail_postcopy=[RuntimeError("postcopy not enabled")] * 100)
    outcome, timeline = run_monitor(job, clock, the_plan, options, predicted=False)
    # Each detection (model at pass 2, not_shrinking at pass 5, 8) tries the switch again.
    assert [s["iteration"] for s in outcome.shaking] == [2, 5, 8]
    switches = [e for e in events(timeline, "layer") if e["layer"] == 3]
    assert [e["error"] for e in switches] == ["postcopy not enabled"] * 3
    assert outcome.postcopy_started is False
    assert_aborted_on_source(outcome, timeline, job, "timeout", "timeout_s", postcopy_attempts=3)


def test_postcopy_is_not_aborted_by_the_guards():
    clock, options, the_plan = setup("postcopy", allow_postcopy=True, timeout_s=2, max_transfer_ratio=1.0,
                                     stall_timeout_s=1)
    # After the switch: far past timeout_s, more than the guest's size sent, and nothing sent for 20 s.
    job = ScriptedJob(clock, lambda poll: job_stats(min(poll, 2), min(poll, 3) * 200.0, total_mib=256.0),
                      ends_at=100)
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.completed is True
    assert outcome.postcopy_started is True
    assert outcome.aborted_by is None
    assert job.called("abort") == []
    assert events(timeline, "guard") == []


def test_postcopy_that_never_ends_is_bounded_by_the_grace_period():
    clock, options, the_plan = setup("postcopy", allow_postcopy=True, timeout_s=5)
    job = ScriptedJob(clock, rising())
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.postcopy_started is True
    assert outcome.still_running is True
    assert outcome.completed is False
    assert outcome.aborted_by is None and outcome.error is None
    assert job.called("abort") == []
    guard = events(timeline, "guard")
    assert len(guard) == 1 and guard[0]["guard"] == "postcopy_timeout"
    assert guard[0]["t_s"] >= 5 + POSTCOPY_GRACE_S
    assert guard[0]["t_s"] < 5 + POSTCOPY_GRACE_S + 1
    assert timeline[-1] is guard[0]


def test_postcopy_may_finish_after_timeout_within_the_grace_period():
    clock, options, the_plan = setup("postcopy", allow_postcopy=True, timeout_s=1)
    job = ScriptedJob(clock, rising(), ends_at=300)  # 60 s
    outcome, _timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.completed is True
    assert job.called("abort") == []


def test_downtime_ramp_steps_in_order_and_capped():
    clock, options, the_plan = setup("layered", max_downtime_ms=400, shaking_iterations=2)
    assert the_plan.downtime_steps_ms == (100, 200, 300, 400)
    # A new pass every poll; what is left never shrinks: not_shrinking at passes 4, 6, 8, 10, 12.
    job = ScriptedJob(clock, rising(remaining_mib=100.0), ends_at=12)
    outcome, timeline = run_monitor(job, clock, the_plan, options, predicted=True)
    assert outcome.completed is True
    assert [s["iteration"] for s in outcome.shaking] == [4, 6, 8, 10]
    assert all(s["rule"] == "not_shrinking" for s in outcome.shaking)
    assert job.called("set_max_downtime") == [
        ("set_max_downtime", 100), ("set_max_downtime", 200), ("set_max_downtime", 300), ("set_max_downtime", 400),
    ]
    assert outcome.downtime_ms == 400
    ramps = events(timeline, "downtime")
    assert [e["max_downtime_ms"] for e in ramps] == [100, 200, 300, 400]
    assert ramps[0]["why"] == "initial target"
    assert all("next step of the downtime ramp" in e["why"] for e in ramps[1:])
    assert job.called("start_postcopy") == []


def test_model_rule_starts_the_ramp_and_each_later_pass_takes_one_step():
    clock, options, the_plan = setup("layered", max_downtime_ms=400)
    job = ScriptedJob(clock, lambda poll: job_stats(poll, poll * 10.0, 1000.0 / poll), ends_at=4)
    outcome, timeline = run_monitor(job, clock, the_plan, options, predicted=False)
    assert [s["rule"] for s in outcome.shaking] == ["model"]
    # Pass 1 (poll 1): initial target; pass 2: the model rule, first step; pass 3: one more step.
    assert job.called("set_max_downtime") == [
        ("set_max_downtime", 100), ("set_max_downtime", 200), ("set_max_downtime", 300)
    ]
    assert "still being resent" in events(timeline, "downtime")[-1]["why"]
    assert outcome.downtime_ms == 300


def test_ramp_stops_at_the_maximum_however_many_passes_follow():
    clock, options, the_plan = setup("layered", max_downtime_ms=400)
    job = ScriptedJob(clock, lambda poll: job_stats(poll, poll * 10.0, 1000.0 / poll), ends_at=12)
    outcome, _timeline = run_monitor(job, clock, the_plan, options, predicted=False)
    assert [c[1] for c in job.called("set_max_downtime")] == [100, 200, 300, 400]
    assert outcome.downtime_ms == 400


def test_failed_downtime_change_is_recorded_and_the_migration_goes_on():
    clock, options, the_plan = setup("precopy")
    job = ScriptedJob(clock, rising(), ends_at=3, fail_downtime=RuntimeError("job is ending"))
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.completed is True
    assert events(timeline, "downtime")[0]["error"] == "job is ending"


def test_precopy_reports_shaking_and_does_nothing_about_it():
    clock, options, the_plan = setup("precopy", shaking_iterations=2)
    job = ScriptedJob(clock, rising(dirty_mibps=200.0, sent_mibps=100.0), ends_at=8)
    outcome, timeline = run_monitor(job, clock, the_plan, options, predicted=False)
    assert outcome.completed is True
    assert [s["rule"] for s in outcome.shaking] == ["model", "dirty_outpaces_send", "dirty_outpaces_send"]
    # The timeline shows each rule once; the repeat is only in the shaking list.
    assert [e["rule"] for e in events(timeline, "shaking")] == ["model", "dirty_outpaces_send"]
    assert job.called("set_max_downtime") == [("set_max_downtime", 300)]
    assert job.called("start_postcopy") == []
    assert outcome.downtime_ms == 300


def test_each_pass_is_recorded_once():
    clock, options, the_plan = setup("precopy")
    job = ScriptedJob(clock, rising(iteration_every=4, dirty_mibps=12.34, sent_mibps=98.76), ends_at=9)
    _outcome, timeline = run_monitor(job, clock, the_plan, options)
    iterations = events(timeline, "iteration")
    assert [e["iteration"] for e in iterations] == [1, 2]
    assert iterations[1]["processed_mib"] == 50.0
    assert iterations[1]["remaining_mib"] == 100.0
    assert iterations[1]["dirty_rate_mibps"] == 12.3
    assert iterations[1]["throughput_mibps"] == 98.8


def test_timeout_counts_the_job_only():
    clock, options, the_plan = setup("precopy", timeout_s=60)
    started = clock.now
    clock.now += 45.0  # dirty-rate measurement and compaction before the job starts
    job = ScriptedJob(clock, rising(), ends_at=150)  # the job itself takes 30 s
    outcome, _timeline = run_monitor(job, clock, the_plan, options, started=started)
    assert job.called("abort") == []
    assert outcome.completed is True


# ---- summarize_stats ---------------------------------------------------------


COMPLETED = {
    "type": 3,
    "time_elapsed": 4600,
    "downtime": 16,
    "setup_time": 12,
    "memory_processed": 263 * MIB,
    "memory_total": 256 * MIB,
    "memory_normal_bytes": 200 * MIB,
    "memory_constant": 1000,
    "memory_iteration": 9,
    "memory_postcopy_requests": 0,
    "memory_bps": 60 * MIB,
    "memory_dirty_rate": 2560,
    "memory_page_size": 4096,
    "auto_converge_throttle": 80,
}

SAMPLE = JobSample(elapsed_s=5.0, iteration=4, processed_mib=300.04, remaining_mib=20.0, total_mib=512.0,
                   dirty_rate_mibps=33.33, throughput_mibps=55.55, postcopy_requests=12, throttle_percent=None,
                   job_elapsed_ms=4900)

KEYS = ["total_ms", "downtime_ms", "setup_ms", "transferred_mib", "memory_total_mib", "memory_normal_mib",
        "zero_pages", "iterations", "postcopy_requests", "throughput_mibps", "dirty_rate_mibps",
        "auto_converge_throttle_percent"]


def test_summarize_completed_statistics_only():
    stats = summarize_stats(COMPLETED, None)
    assert stats == {
        "total_ms": 4600, "downtime_ms": 16, "setup_ms": 12, "transferred_mib": 263.0, "memory_total_mib": 256.0,
        "memory_normal_mib": 200.0, "zero_pages": 1000, "iterations": 9, "postcopy_requests": 0,
        "throughput_mibps": 60.0, "dirty_rate_mibps": 10.0, "auto_converge_throttle_percent": 80,
        "disk_total_mib": None, "disk_transferred_mib": None,
        "compression": None, "throttle": None, "sources": {key: "completed_job" for key in KEYS},
    }


def test_summarize_dirty_rate_uses_the_page_size():
    stats = summarize_stats({"memory_dirty_rate": 10, "memory_page_size": 2 * MIB}, None)
    assert stats["dirty_rate_mibps"] == 20.0
    assert summarize_stats({"memory_dirty_rate": 256}, None)["dirty_rate_mibps"] == 1.0


@pytest.mark.parametrize("completed", [None, {}])
def test_summarize_last_sample_only(completed):
    stats = summarize_stats(completed, SAMPLE)
    assert stats == {
        "total_ms": 4900, "downtime_ms": None, "setup_ms": None, "transferred_mib": 300.0,
        "memory_total_mib": 512.0, "memory_normal_mib": None, "zero_pages": None, "iterations": 4,
        "postcopy_requests": 12, "throughput_mibps": 55.5, "dirty_rate_mibps": 33.3,
        "auto_converge_throttle_percent": None, "compression": None, "throttle": None,
        "disk_total_mib": None, "disk_transferred_mib": None,
        "sources": {key: "last_sample" for key in ["total_ms", "transferred_mib", "memory_total_mib", "iterations",
                                                   "postcopy_requests", "throughput_mibps", "dirty_rate_mibps"]},
    }


def test_summarize_nothing_at_all():
    stats = summarize_stats(None, None)
    assert all(stats[key] is None for key in KEYS)
    assert stats["compression"] is None
    assert stats["sources"] == {}


def test_summarize_merges_times_from_the_job_with_memory_from_the_sample():
    # After post-copy the destination keeps the times only.
    stats = summarize_stats({"type": 3, "time_elapsed": 5700, "downtime": 50, "setup_time": 9}, SAMPLE)
    assert stats["total_ms"] == 5700 and stats["downtime_ms"] == 50 and stats["setup_ms"] == 9
    assert stats["transferred_mib"] == 300.0 and stats["iterations"] == 4 and stats["postcopy_requests"] == 12
    assert stats["sources"]["total_ms"] == "completed_job"
    assert stats["sources"]["downtime_ms"] == "completed_job"
    assert stats["sources"]["transferred_mib"] == "last_sample"
    assert stats["sources"]["dirty_rate_mibps"] == "last_sample"
    assert "memory_normal_mib" not in stats["sources"] and stats["memory_normal_mib"] is None


def test_summarize_a_zero_from_the_job_is_a_figure_not_a_gap():
    stats = summarize_stats({"memory_postcopy_requests": 0, "memory_iteration": 0}, SAMPLE)
    assert stats["postcopy_requests"] == 0 and stats["sources"]["postcopy_requests"] == "completed_job"
    assert stats["iterations"] == 0 and stats["sources"]["iterations"] == "completed_job"


def test_summarize_compression_block():
    completed = dict(COMPLETED, compression_cache=128 * MIB, compression_bytes=40 * MIB + MIB // 4,
                     compression_pages=5000, compression_cache_misses=321, compression_overflow=7)
    assert summarize_stats(completed, None)["compression"] == {
        "cache_mib": 128.0, "compressed_mib": 40.2, "compressed_pages": 5000, "cache_misses": 321,
        "overflow_pages": 7,
    }


def test_summarize_compression_block_with_missing_figures():
    assert summarize_stats({"compression_cache": 16 * MIB}, None)["compression"] == {
        "cache_mib": 16.0, "compressed_mib": None, "compressed_pages": None, "cache_misses": None,
        "overflow_pages": None,
    }


def test_xbzrle_with_parallel_connections_is_refused():
    with pytest.raises(MigrationError) as caught:
        engine_options(compression=["xbzrle"], parallel_connections=4)
    assert caught.value.details["option"] == "compression"
    assert "parallel_connections" in str(caught.value)


# ---- progress ------------------------------------------------------------------


PROGRESS_KEYS = ["domain", "phase", "percent", "remaining_mib", "transferred_mib", "pass", "elapsed_s", "updated"]
NOON = datetime.datetime(2024, 5, 6, 12, 0, 0, 250000, tzinfo=datetime.timezone.utc)


def reading(iteration=2, processed_mib=128.0, remaining_mib=64.25, total_mib=256.0):
    return JobSample(elapsed_s=0.0, iteration=iteration, processed_mib=processed_mib, remaining_mib=remaining_mib,
                     total_mib=total_mib, dirty_rate_mibps=0.0, throughput_mibps=0.0)


def reporter(clock=None, utcnow=lambda: NOON):
    """A ProgressReporter for web1 on a FakeClock (started at its current time) and the records it handed on."""
    clock = clock or FakeClock()
    records = []
    return ProgressReporter("web1", records.append, Timeline(clock), utcnow=utcnow), records, clock


def test_progress_figures_of_a_reading():
    # 64.25 of 256 MiB left: 74.9% done, whatever was sent.
    assert progress_figures(reading()) == {"percent": 74.9, "remaining_mib": 64.2, "transferred_mib": 128.0,
                                           "pass": 2}


def test_progress_figures_without_a_reading_are_unknown():
    assert progress_figures(None) == {"percent": None, "remaining_mib": None, "transferred_mib": None, "pass": None}


def test_progress_percent_counts_what_is_left_not_what_was_resent():
    assert progress_figures(reading(processed_mib=700.0, remaining_mib=32.0, total_mib=256.0))["percent"] == 87.5
    assert progress_figures(reading(remaining_mib=300.0, total_mib=256.0))["percent"] == 0.0


def test_progress_percent_unknown_without_a_memory_total_and_pass_unknown_before_the_first():
    figures = progress_figures(reading(iteration=0, total_mib=0.0))
    assert figures["percent"] is None and figures["pass"] is None
    assert figures["transferred_mib"] == 128.0


def test_completed_figures_leave_nothing_remaining():
    stats = summarize_stats(None, reading(iteration=4, processed_mib=96.0, total_mib=256.0))
    assert completed_figures(stats) == {"percent": 100.0, "remaining_mib": 0.0, "transferred_mib": 96.0, "pass": 4}
    assert completed_figures(summarize_stats(None, None)) == {"percent": 100.0, "remaining_mib": 0.0,
                                                              "transferred_mib": None, "pass": None}


def test_progress_record_has_the_documented_keys():
    progress, records, clock = reporter()
    clock.now += 2.46
    progress("migrating", reading())
    assert records == [{
        "domain": "web1", "phase": "migrating", "percent": 74.9, "remaining_mib": 64.2, "transferred_mib": 128.0,
        "pass": 2, "elapsed_s": 2.5, "updated": "2024-05-06T12:00:00Z",
    }]
    assert sorted(records[0]) == sorted(PROGRESS_KEYS)


def test_progress_updated_is_utc_whatever_the_zone_of_the_clock():
    paris = datetime.timezone(datetime.timedelta(hours=2))
    progress, records, _clock = reporter(utcnow=lambda: datetime.datetime(2024, 5, 6, 14, 0, 0, tzinfo=paris))
    progress("preparing")
    assert records[0]["updated"] == "2024-05-06T12:00:00Z"


def test_each_phase_change_is_handed_on_at_once():
    progress, records, _clock = reporter()
    for phase in ("preparing", "migrating", "postcopy", "verifying", "done"):
        progress(phase)
    assert [r["phase"] for r in records] == ["preparing", "migrating", "postcopy", "verifying", "done"]
    assert all(r["elapsed_s"] == 0.0 for r in records)


def test_within_a_phase_records_are_handed_on_at_most_once_per_interval():
    progress, records, clock = reporter()
    progress("migrating")
    # 20 readings 0.2 s apart: 4 s.
    for poll in range(1, 21):
        clock.now += 0.2
        progress("migrating", reading(processed_mib=poll * 10.0))
    times = [r["elapsed_s"] for r in records]
    assert times == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert records[-1]["transferred_mib"] == 200.0


def test_a_phase_change_within_the_interval_is_not_held_back():
    progress, records, clock = reporter()
    progress("migrating", reading())
    clock.now += 0.2
    progress("postcopy", reading(iteration=3))
    assert [(r["phase"], r["pass"]) for r in records] == [("migrating", 2), ("postcopy", 3)]


def test_the_figures_of_skipped_readings_are_kept_for_the_next_record():
    progress, records, clock = reporter()
    progress("migrating", reading(processed_mib=10.0))
    clock.now += 0.5
    progress("migrating", reading(processed_mib=20.0))
    progress.report("verifying", None)
    assert [r["transferred_mib"] for r in records] == [10.0, 20.0]


def test_a_reading_of_none_keeps_the_last_figures():
    progress, records, clock = reporter()
    progress("migrating", reading())
    clock.now += PROGRESS_INTERVAL_S
    progress("migrating", None)
    assert records[1]["transferred_mib"] == records[0]["transferred_mib"] == 128.0


def test_failed_after_any_phase_carries_the_last_figures():
    progress, records, clock = reporter()
    progress("migrating", reading())
    clock.now += 0.1
    progress.report("failed")
    assert records[-1]["phase"] == "failed"
    assert records[-1]["transferred_mib"] == 128.0


def test_without_a_sink_nothing_is_handed_on():
    progress = ProgressReporter("web1", None, Timeline(FakeClock()))
    progress("preparing")
    progress("migrating", reading())
    assert progress.started is False


def test_an_error_of_the_sink_is_ignored():
    def broken(_record):
        raise OSError(28, "No space left on device")
    progress = ProgressReporter("web1", broken, Timeline(FakeClock()))
    progress("preparing")
    progress.report("done")
    assert progress.started is True


def test_an_unknown_phase_is_a_bug():
    progress, _records, _clock = reporter()
    with pytest.raises(ValueError):
        progress("copying")


def test_monitor_reports_migrating_as_the_job_starts_then_at_most_once_per_second():
    clock, options, the_plan = setup("precopy")
    progress, records, _clock = reporter(clock)
    job = ScriptedJob(clock, rising(iteration_every=5), ends_at=21)
    outcome = monitor(job, the_plan, options, True, progress.timeline, progress)
    assert outcome.completed is True
    assert records[0]["phase"] == "migrating"
    assert records[0]["transferred_mib"] is None and records[0]["elapsed_s"] == 0.0
    assert {r["phase"] for r in records} == {"migrating"}
    # 20 polls 0.2 s apart: one record at the start, then one per second.
    assert [r["elapsed_s"] for r in records] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [r["pass"] for r in records[1:]] == [1, 2, 3, 4]
    # 100 of 256 MiB still to send.
    assert records[-1]["transferred_mib"] == 200.0 and records[-1]["percent"] == 60.9


def test_monitor_reports_postcopy_at_the_poll_after_the_switch():
    clock, options, the_plan = setup("postcopy", allow_postcopy=True)
    progress, records, _clock = reporter(clock)
    job = ScriptedJob(clock, rising(iteration_every=3), ends_at=12)
    outcome = monitor(job, the_plan, options, True, progress.timeline, progress)
    assert outcome.postcopy_started is True
    phases = [r["phase"] for r in records]
    assert phases[0] == "migrating" and phases[-1] == "postcopy"
    assert phases == sorted(phases, key=["migrating", "postcopy"].index)
    first_postcopy = records[phases.index("postcopy")]
    # The switch happens at the first sight of pass 2 (poll 4), and is reported with that reading.
    assert first_postcopy["pass"] == 2 and first_postcopy["elapsed_s"] == 0.8


# ---- storage copy ------------------------------------------------------------


def test_copy_storage_options_are_checked():
    with pytest.raises(MigrationError, match="copy_storage must be one of none, all, incremental, got 'some'"):
        engine_options(copy_storage="some")
    with pytest.raises(MigrationError, match="set copy_storage to all or incremental") as raised:
        engine_options(migrate_disks=["vda"])
    assert raised.value.details["option"] == "migrate_disks"
    with pytest.raises(MigrationError, match="migrate_disks must list disk targets"):
        engine_options(copy_storage="all", migrate_disks=[" "])
    assert engine_options(copy_storage="all", migrate_disks=["vda", "vdb", "vda"]).migrate_disks == ("vda", "vdb")


@pytest.mark.parametrize("copy_storage, flag", [("all", "non_shared_disk"), ("incremental", "non_shared_inc")])
def test_plan_with_copied_disks_asks_for_the_storage_copy(copy_storage, flag):
    options = engine_options(strategy="precopy", copy_storage=copy_storage, bandwidth_mibps=100)
    plan = plan_migration(options, None, 256, None, ["vda"])
    assert flag in plan.flag_names
    assert plan.params["migrate_disks"] == ["vda"]
    # One disk: the copy and then memory run one after the other at the whole cap.
    assert (plan.params["bandwidth"], plan.memory_bandwidth_mibps) == (100, None)
    assert plan.to_dict()["copied_disks"] == ["vda"]


def test_plan_without_disks_to_copy_sets_no_storage_flag():
    plan = plan_migration(engine_options(copy_storage="all"), None, 256, None, [])
    assert not {"non_shared_disk", "non_shared_inc"} & set(plan.flag_names)
    assert "migrate_disks" not in plan.params


def test_plan_shares_the_cap_among_disks_and_gives_it_back_to_memory():
    options = engine_options(strategy="precopy", copy_storage="all", bandwidth_mibps=100)
    plan = plan_migration(options, None, 256, None, ["vda", "vdb", "vdc"])
    assert (plan.params["bandwidth"], plan.memory_bandwidth_mibps) == (33, 100)


def test_allow_unsafe_sets_libvirts_unsafe_flag():
    assert "unsafe" in plan_migration(engine_options(allow_unsafe=True), None, 256, None).flag_names
    assert "unsafe" not in plan_migration(engine_options(), None, 256, None).flag_names


def disk_phase(total_mib, step_mib):
    """Polls of a storage copy of total_mib, step_mib a poll, then memory moving."""
    def script(poll):
        copied = min(total_mib, poll * step_mib)
        memory = max(0.0, poll * step_mib - total_mib)
        return job_stats(1 if memory else 0, memory, remaining_mib=max(0.0, 256.0 - memory),
                         disk_total=int(total_mib * MIB), disk_processed=int(copied * MIB),
                         disk_remaining=int((total_mib - copied) * MIB))
    return script


def test_a_long_storage_copy_is_progress_for_the_stall_guard():
    options = engine_options(strategy="precopy", stall_timeout_s=1, timeout_s=100, copy_storage="all")
    clock, the_plan = FakeClock(), plan_migration(options, None, 256, None, ["vda"])
    # 20 s of disk copy, memory not moving at all meanwhile: stall_timeout_s is 1 s.
    job = ScriptedJob(clock, disk_phase(1024.0, 10.0), ends_at=110)
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.completed is True
    assert job.called("abort") == []
    in_sync = [e for e in events(timeline, "layer") if e.get("layer") == "storage"]
    assert [(e["action"], e["disks"], e["disk_mib"]) for e in in_sync] == [("disks in sync", ["vda"], 1024.0)]
    assert job.called("set_max_speed") == []


def test_a_storage_copy_that_stops_trips_the_stall_guard():
    options = engine_options(strategy="precopy", stall_timeout_s=1, copy_storage="all")
    clock, the_plan = FakeClock(), plan_migration(options, None, 256, None, ["vda"])
    job = ScriptedJob(clock, lambda poll: disk_phase(1024.0, 10.0)(min(poll, 3)))
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert_aborted_on_source(outcome, timeline, job, "stall", "stall_timeout_s")


def test_memory_gets_the_whole_cap_once_several_disks_are_in_sync():
    options = engine_options(strategy="precopy", timeout_s=100, copy_storage="all", bandwidth_mibps=90)
    clock, the_plan = FakeClock(), plan_migration(options, None, 256, None, ["vda", "vdb"])
    job = ScriptedJob(clock, disk_phase(100.0, 10.0), ends_at=30)
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.completed is True
    assert job.calls[0][2]["bandwidth"] == 45
    assert job.called("set_max_speed") == [("set_max_speed", 90)]
    # Raised once, as the disks came in sync (poll 10), not before.
    bandwidth = events(timeline, "bandwidth")
    assert [e["bandwidth_mibps"] for e in bandwidth] == [90]
    assert bandwidth[0]["t_s"] >= 10 * POLL_S - 1e-6


def test_summary_counts_the_storage_copy():
    stats = summarize_stats({"disk_total": 1024 * MIB, "disk_processed": 1030 * MIB}, None)
    assert (stats["disk_total_mib"], stats["disk_transferred_mib"]) == (1024.0, 1030.0)
    without_copy = summarize_stats({"disk_total": 0, "disk_processed": 0}, None)
    assert (without_copy["disk_total_mib"], without_copy["disk_transferred_mib"]) == (None, None)


# ---- the hot layer on incompressible pages: throttle sizing and the XBZRLE verdict --------------


def xbzrle_stats(iteration, processed_mib, pages, overflow, encoded_bytes=0, misses=0, throttle=None):
    extra = {"compression_pages": pages, "compression_overflow": overflow, "compression_bytes": encoded_bytes,
             "compression_cache_misses": misses, "compression_cache": 128 * MIB}
    if throttle is not None:
        extra["auto_converge_throttle"] = throttle
    return job_stats(iteration, processed_mib, **extra)


def test_plan_takes_the_throttle_the_model_sized():
    options = engine_options(bandwidth_mibps=60)
    sized = plan_migration(options, None, 256, None, auto_converge=(99, 1))
    assert sized.params["auto_converge.initial"] == 99 and sized.params["auto_converge.increment"] == 1
    default = plan_migration(options, None, 256, None)
    assert (default.params["auto_converge.initial"], default.params["auto_converge.increment"]) == (
        AUTO_CONVERGE_INITIAL_PERCENT, AUTO_CONVERGE_INCREMENT_PERCENT)


def test_judge_xbzrle_waits_for_enough_cached_pages():
    sample = parse_job_stats(xbzrle_stats(3, 300.0, pages=1000, overflow=1000), 1.0)
    assert judge_xbzrle(sample) is None
    sample = parse_job_stats(xbzrle_stats(3, 300.0, pages=1000, overflow=1048), 1.0)
    assert judge_xbzrle(sample) is not None


def test_judge_xbzrle_pays_on_pages_that_change_little():
    # One changed word per page: each page encodes to about 20 bytes.
    sample = parse_job_stats(xbzrle_stats(4, 300.0, pages=30000, overflow=0, encoded_bytes=30000 * 20), 1.0)
    verdict = judge_xbzrle(sample)
    assert verdict.paying is True
    assert verdict.saved_fraction > 0.99
    assert "XBZRLE pays" in verdict.detail


def test_judge_xbzrle_does_not_pay_on_fresh_pages():
    # Fresh whole pages overflow the encoder; the few that encode save little.
    sample = parse_job_stats(xbzrle_stats(4, 300.0, pages=200, overflow=30000, encoded_bytes=200 * 4000), 1.0)
    verdict = judge_xbzrle(sample)
    assert verdict.paying is False
    assert verdict.overflow_pages == 30000 and verdict.tried_pages == 30200
    assert verdict.to_dict()["saved_percent"] == 0.0
    assert "30000 overflowed" in verdict.detail


def test_judge_xbzrle_at_the_paying_line():
    whole = XBZRLE_JUDGE_MIN_PAGES * PAGE
    paying = int(XBZRLE_JUDGE_MIN_PAGES * PAGE - XBZRLE_PAYING_SAVED_FRACTION * whole)
    sample = parse_job_stats(xbzrle_stats(3, 1.0, pages=XBZRLE_JUDGE_MIN_PAGES, overflow=0, encoded_bytes=paying), 1.0)
    assert judge_xbzrle(sample).paying is True
    sample = parse_job_stats(xbzrle_stats(3, 1.0, pages=XBZRLE_JUDGE_MIN_PAGES, overflow=0,
                                          encoded_bytes=paying + 1), 1.0)
    assert judge_xbzrle(sample).paying is False


def test_monitor_shrinks_the_xbzrle_cache_once_it_does_not_pay():
    clock, options, the_plan = setup("layered", memory_mib=1024)
    assert the_plan.xbzrle_cache_mib == 64
    script = [xbzrle_stats(2, 300.0, pages=0, overflow=0, misses=30000),
              xbzrle_stats(3, 400.0, pages=100, overflow=5000),
              xbzrle_stats(4, 500.0, pages=100, overflow=9000)]
    job = ScriptedJob(clock, script, ends_at=4)
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert job.called("set_compression_cache") == [("set_compression_cache", XBZRLE_CACHE_MIN_MIB)]
    xbzrle = [e for e in events(timeline, "layer") if e.get("action") == "xbzrle"]
    assert len(xbzrle) == 1 and xbzrle[0]["paying"] is False
    assert xbzrle[0]["why"] == "cache shrunk from 64 to 16 MiB: the source host gets the rest back"
    assert outcome.xbzrle["paying"] is False and outcome.xbzrle["cache_shrunk_to_mib"] == XBZRLE_CACHE_MIN_MIB
    assert outcome.completed is True


def test_monitor_keeps_a_paying_xbzrle_cache():
    clock, options, the_plan = setup("layered", memory_mib=1024)
    job = ScriptedJob(clock, [xbzrle_stats(3, 400.0, pages=9000, overflow=10, encoded_bytes=9000 * 30)], ends_at=3)
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    assert job.called("set_compression_cache") == []
    assert outcome.xbzrle["paying"] is True and outcome.xbzrle["cache_shrunk_to_mib"] is None
    assert [e["paying"] for e in events(timeline, "layer") if e.get("action") == "xbzrle"] == [True]


def test_monitor_xbzrle_verdict_stands_when_the_resize_fails():
    clock, options, the_plan = setup("layered", memory_mib=1024)

    class Refusing(ScriptedJob):
        def set_compression_cache(self, cache_mib):
            super().set_compression_cache(cache_mib)
            raise RuntimeError("migration is finishing")

    job = Refusing(clock, [xbzrle_stats(3, 400.0, pages=0, overflow=9000)], ends_at=3)
    outcome, timeline = run_monitor(job, clock, the_plan, options)
    event = [e for e in events(timeline, "layer") if e.get("action") == "xbzrle"][0]
    assert event["error"] == "migration is finishing"
    assert outcome.xbzrle["paying"] is False and outcome.xbzrle["cache_shrunk_to_mib"] is None
    assert len(job.called("set_compression_cache")) == 1  # judged once, not retried every poll


def test_monitor_without_xbzrle_never_judges_it():
    clock, options, the_plan = setup("precopy")
    job = ScriptedJob(clock, [xbzrle_stats(3, 400.0, pages=0, overflow=9000)], ends_at=3)
    outcome, _timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.xbzrle is None and job.called("set_compression_cache") == []


def test_monitor_reports_how_long_the_guest_was_throttled():
    clock, options, the_plan = setup("layered")
    script = [job_stats(1, 10.0), job_stats(2, 20.0), job_stats(3, 30.0, auto_converge_throttle=60),
              job_stats(3, 40.0, auto_converge_throttle=60), job_stats(4, 50.0, auto_converge_throttle=99),
              job_stats(5, 60.0)]
    job = ScriptedJob(clock, script, ends_at=7)
    outcome, _timeline = run_monitor(job, clock, the_plan, options)
    # Throttled from the third reading to the fifth: two polls of POLL_S.
    assert outcome.throttle == {"max_percent": 99, "throttled_s": round(2 * POLL_S, 1)}


def test_monitor_without_a_throttle_reports_none():
    clock, options, the_plan = setup("precopy")
    job = ScriptedJob(clock, [job_stats(1, 10.0), job_stats(2, 20.0)], ends_at=3)
    assert run_monitor(job, clock, the_plan, options)[0].throttle is None


def test_timeout_hint_names_compression_when_xbzrle_did_not_pay():
    clock, options, the_plan = setup("layered", memory_mib=1024, timeout_s=2)
    job = ScriptedJob(clock, lambda poll: xbzrle_stats(2 + poll, 100.0 + poll, pages=0, overflow=3000 + poll))
    outcome, _timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.aborted_by == "timeout"
    assert outcome.hint == ("raise timeout_s, set allow_postcopy=true, raise max_downtime_ms or bandwidth_mibps, "
                            "or set compression: [] (XBZRLE saved 0.0% here: the hot pages change too much)")


def test_timeout_hint_offers_xbzrle_when_it_did_not_run():
    clock, options, the_plan = setup("precopy", timeout_s=2)
    job = ScriptedJob(clock, rising())
    outcome, _timeline = run_monitor(job, clock, the_plan, options)
    assert outcome.hint.endswith("or set compression: [xbzrle] if the hot pages change little between passes")
    assert "allow_postcopy=true" in outcome.hint and "raise timeout_s" in outcome.hint


def test_summarize_keeps_the_throttle_and_the_xbzrle_verdict():
    verdict = {"paying": False, "saved_percent": 2.0, "tried_pages": 4000, "overflow_pages": 3900,
               "cache_misses": 100, "cache_shrunk_to_mib": 16}
    completed = {"type": 3, "time_elapsed": 900, "compression_cache": 128 * MIB, "compression_overflow": 3900}
    stats = summarize_stats(completed, None, {"max_percent": 99, "throttled_s": 3.2}, verdict)
    assert stats["throttle"] == {"max_percent": 99, "throttled_s": 3.2}
    assert stats["compression"]["verdict"] == verdict and stats["compression"]["cache_mib"] == 128.0
    # A failed job keeps no completed statistics: the verdict still reaches the result.
    assert summarize_stats(None, None, None, verdict)["compression"] == {"verdict": verdict}
