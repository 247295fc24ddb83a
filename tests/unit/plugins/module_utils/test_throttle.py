# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import time

import pytest

from ansible_collections.strata.migration.plugins.module_utils import _migrate
from ansible_collections.strata.migration.plugins.module_utils._convergence import (
    MigrationInputs,
    auto_converge_percents,
    predict_capped,
    predict_throttled,
)
from ansible_collections.strata.migration.plugins.module_utils._engine import (
    HOT_LAYER_THROTTLE,
    engine_options,
    plan_migration,
)
from ansible_collections.strata.migration.plugins.module_utils._libvirt import StrataError
from ansible_collections.strata.migration.plugins.module_utils._preflight import preflight_options
from ansible_collections.strata.migration.plugins.module_utils._throttle import (
    AFFECT_LIVE,
    RECORD_NAMESPACE,
    SIZED_IN_PROPORTION,
    SIZED_ON_TARGET,
    SIZED_UNRESPONSIVE,
    VcpuBandwidth,
    apply_cap,
    cap_by_default,
    cap_period_us,
    corrected_cap_percent,
    first_cap_percent,
    lift_cap,
    parse_record,
    quota_us,
    read_bandwidth,
    render_record,
)
from ansible_collections.strata.migration.tests.unit.plugins.module_utils.fakes import FakeLibvirtError
from ansible_collections.strata.migration.tests.unit.plugins.module_utils.test_migrate import FakeClient

UNLIMITED = VcpuBandwidth(period_us=100000, quota_us=-1)
# The cap's period at the default max_downtime_ms (300).
CAP_PERIOD_US = 100000
# The lab's far case: a 128 MiB hot set rewritten with fresh pages as fast as the guest can, at 60 MiB/s.
FAR = MigrationInputs(memory_mib=225, dirty_rate_mibps=128, bandwidth_mibps=60, max_downtime_ms=300,
                      zero_page_mib=31)


# ---- sizing ------------------------------------------------------------------


def test_the_first_cap_brings_the_rate_to_a_quarter_of_the_bandwidth_as_if_linear():
    # 62 MiB/s on a 60 MiB/s link: 15 MiB/s is 24.2% of it, rounded up.
    assert first_cap_percent(62, 60, UNLIMITED, CAP_PERIOD_US) == 25


def test_the_first_cap_is_never_tighter_than_the_caps_period_allows():
    assert first_cap_percent(100000, 60, UNLIMITED, CAP_PERIOD_US) == 1.0
    assert first_cap_percent(100000, 60, UNLIMITED, 10000) == 10.0


@pytest.mark.parametrize("max_downtime_ms, period_us", [(300, 100000), (150, 100000), (90, 60000), (30, 20000),
                                                        (1, 1000)])
def test_the_caps_period_is_two_thirds_of_the_downtime_target_at_most_100_ms(max_downtime_ms, period_us):
    # The switchover may wait a period for the capped vCPU to stop; longer periods also stall QEMU's monitor.
    assert cap_period_us(max_downtime_ms) == period_us


def test_the_first_cap_is_never_looser_than_the_domains_own_limit():
    assert first_cap_percent(20, 60, VcpuBandwidth(period_us=100000, quota_us=30000), CAP_PERIOD_US) == 30.0


def test_a_guest_that_dirties_nothing_keeps_its_bandwidth():
    assert first_cap_percent(0, 60, UNLIMITED, CAP_PERIOD_US) == 100.0


def test_a_rate_on_target_under_the_cap_keeps_it():
    assert corrected_cap_percent(25, 62, 14, 60, 100000) == (25, SIZED_ON_TARGET)


def test_a_rate_that_fell_but_not_enough_tightens_the_cap_in_proportion():
    # Under 25% the rate fell from 62 to 30 MiB/s: half the cap brings it to the 15 MiB/s target.
    assert corrected_cap_percent(25, 62, 30, 60, 100000) == (12, SIZED_IN_PROPORTION)


def test_a_rate_that_did_not_fall_takes_the_strongest_cap():
    # The uncapped window saw only the hot set's size (128 MiB in 1 s): the real rate is unknown.
    assert corrected_cap_percent(12, 128, 126, 60, 100000) == (1.0, SIZED_UNRESPONSIVE)


def test_a_proportional_cap_stops_at_the_strongest():
    assert corrected_cap_percent(4, 400, 200, 60, 100000) == (1.0, SIZED_IN_PROPORTION)


def test_a_proportional_cap_near_the_floor_goes_to_it():
    # The lab's paced near case: from 90 MiB/s uncapped to 62 under 19%; in proportion that is 4%.
    assert corrected_cap_percent(19, 90, 62, 60, 100000) == (1.0, SIZED_IN_PROPORTION)
    percent, sized = corrected_cap_percent(19, 90, 62, 60, 60000)
    assert percent == pytest.approx(1.667, abs=0.001) and sized == SIZED_IN_PROPORTION
    # 10% is the floor too; 12% is kept.
    assert corrected_cap_percent(40, 90, 60, 60, 100000) == (1.0, SIZED_IN_PROPORTION)
    assert corrected_cap_percent(50, 90, 60, 60, 100000) == (12, SIZED_IN_PROPORTION)
    # With a short period the floor itself is above 10%: a cap in proportion at or below it is the floor.
    assert corrected_cap_percent(40, 90, 60, 60, 6000) == (pytest.approx(16.667, abs=0.001), SIZED_IN_PROPORTION)


def test_the_quota_never_goes_below_the_kernels_smallest():
    assert quota_us(100000, 1.0) == 1000
    assert quota_us(100000, 0.2) == 1000
    assert quota_us(100000, 25) == 25000


@pytest.mark.parametrize("bandwidth, expected", [(UNLIMITED, 100.0), (VcpuBandwidth(100000, 0), 100.0),
                                                 (VcpuBandwidth(100000, 25000), 25.0)])
def test_percent_of_a_bandwidth(bandwidth, expected):
    assert bandwidth.percent() == expected


# ---- the model -----------------------------------------------------------------


def test_the_capped_prediction_converges_where_auto_converge_alone_is_slow():
    auto_converge = auto_converge_percents(FAR)
    throttled = predict_throttled(FAR, *auto_converge)
    capped = predict_capped(FAR, 1.0, 10.7, auto_converge, rate_is_lower_bound=True)
    assert capped.converges
    assert capped.total_s < throttled.total_s
    assert capped.strategy == "layered"
    assert "capped at 1% of a CPU from the first page" in capped.reason
    assert "at least 10.7 MiB/s" in capped.reason
    # The first pass sends all memory; what the capped guest dirtied then follows.
    assert capped.round_mib[0] == 225
    assert capped.transferred_mib < 1.5 * 256


def test_a_cap_too_weak_for_the_link_is_predicted_not_to_converge():
    # Even auto-converge's 99% on top leaves 100 MiB/s against a 60 MiB/s link.
    capped = predict_capped(FAR, 100, 10000, (99, 1))
    assert not capped.converges
    assert "allow_postcopy=true" in capped.reason


# ---- the record ------------------------------------------------------------------


def xml_with(record_xml=""):
    metadata = "<metadata>%s</metadata>" % record_xml if record_xml else ""
    return "<domain type='qemu'><name>web1</name>%s</domain>" % metadata


def namespaced(record_xml):
    return record_xml.replace("<vcpu-cap ", "<cap:vcpu-cap xmlns:cap='%s' " % RECORD_NAMESPACE)


def test_the_record_reads_back_what_was_written():
    written = namespaced(render_record(VcpuBandwidth(200000, 50000), 1.0))
    assert parse_record(xml_with(written)) == VcpuBandwidth(200000, 50000)


def test_no_record_no_original():
    assert parse_record(xml_with()) is None


def test_a_damaged_record_is_refused_with_the_way_out():
    damaged = "<cap:vcpu-cap xmlns:cap='%s' period_us='x' quota_us='-1'/>" % RECORD_NAMESPACE
    with pytest.raises(StrataError, match="vcpu_quota=-1.*--live --remove"):
        parse_record(xml_with(damaged))


class FakeSchedDomain:
    """vCPU bandwidth and live metadata as libvirt keeps them; calls are recorded in order."""

    def __init__(self, params=None, cgroups=True, quota_error=None):
        self.params = {"vcpu_period": 100000, "vcpu_quota": -1} if params is None else dict(params)
        self.cgroups = cgroups
        # Raised by the next quota change (a libvirtd gone, say).
        self.quota_error = quota_error
        self.metadata = None
        self.calls = []

    def name(self):
        return "web1"

    def schedulerParametersFlags(self, flags):
        assert flags == AFFECT_LIVE
        if not self.cgroups:
            raise FakeLibvirtError("Requested operation is not valid: cgroup CPU controller is not mounted", 55)
        return dict(self.params, cpu_shares=1024)

    def setSchedulerParametersFlags(self, params, flags):
        assert flags == AFFECT_LIVE
        if self.quota_error is not None:
            raise self.quota_error
        self.calls.append(("quota", dict(params)))
        self.params.update(params)

    def setMetadata(self, kind, xml, prefix, uri, flags):
        assert (uri, flags) == (RECORD_NAMESPACE, AFFECT_LIVE)
        self.calls.append(("record", xml is not None))
        declared = "<%s:vcpu-cap xmlns:%s='%s' " % (prefix, prefix, uri)
        self.metadata = None if xml is None else xml.replace("<vcpu-cap ", declared)

    def XMLDesc(self, flags):
        return xml_with(self.metadata or "")


def test_a_host_without_vcpu_bandwidth_reads_none():
    # libvirt refuses the call where the cgroup cpu controller is missing.
    assert read_bandwidth(FakeSchedDomain(cgroups=False)) is None
    assert read_bandwidth(FakeSchedDomain()) == UNLIMITED


def test_the_record_is_written_before_the_cap_and_the_lift_restores_both_figures():
    dom = FakeSchedDomain({"vcpu_period": 50000, "vcpu_quota": 40000})
    apply_cap(dom, read_bandwidth(dom), 1.0, CAP_PERIOD_US)
    assert dom.calls == [("record", True), ("quota", {"vcpu_period": 100000, "vcpu_quota": 1000})]
    assert lift_cap(dom) == VcpuBandwidth(50000, 40000)
    assert dom.params == {"vcpu_period": 50000, "vcpu_quota": 40000}
    assert dom.metadata is None
    assert lift_cap(dom) is None


# ---- the plan ------------------------------------------------------------------------


def throttled_plan(**option_values):
    options = engine_options(bandwidth_mibps=60, **dict({"cap_vcpus": True}, **option_values))
    prediction = predict_throttled(FAR, *auto_converge_percents(FAR))
    return plan_migration(options, prediction, 256, 128.0, option_values.pop("copied", ()))


def test_a_throttled_layered_plan_caps_the_vcpus():
    plan = throttled_plan()
    assert plan.hot_layer == HOT_LAYER_THROTTLE and plan.cap_vcpus
    assert plan.to_dict()["cap_vcpus"] is True


def test_a_refused_cap_is_never_planned():
    plan = throttled_plan(cap_vcpus=False)
    assert plan.hot_layer == HOT_LAYER_THROTTLE and not plan.cap_vcpus


def test_an_unset_cap_is_planned_for_the_run_to_judge_the_source():
    assert throttled_plan(cap_vcpus=None).cap_vcpus


@pytest.mark.parametrize("domain_type, qemu", [("kvm", "7.2.0"), ("kvm", ""), ("qemu", "9.0.0"), ("qemu", "10.0.13")])
def test_unset_the_cap_runs_where_guest_writes_are_tracked_exactly(domain_type, qemu):
    safe, why = cap_by_default(domain_type, qemu)
    assert safe
    assert ("KVM" in why) if domain_type == "kvm" else ("QEMU %s" % qemu in why)


@pytest.mark.parametrize("qemu, named", [("7.2.19", "QEMU 7.2.19 under TCG"), ("8.2.0", "QEMU 8.2.0 under TCG"),
                                         ("", "QEMU of an unknown version under TCG")])
def test_unset_no_cap_on_a_tcg_source_that_can_lose_guest_writes(qemu, named):
    safe, why = cap_by_default("qemu", qemu)
    assert not safe
    assert named in why and "fixed in QEMU 9.0.0" in why and "cap_vcpus=true caps anyway" in why


@pytest.mark.parametrize("domain_type, named", [("xen", "not xen"), (None, "not one of an unknown type")])
def test_unset_no_cap_for_a_domain_type_never_tried(domain_type, named):
    safe, why = cap_by_default(domain_type, "10.0.0")
    assert not safe and named in why and "cap_vcpus=true caps anyway" in why


@pytest.mark.parametrize("option_values", [{"allow_postcopy": True}, {"strategy": "precopy"}])
def test_post_copy_or_plain_pre_copy_never_caps(option_values):
    assert not throttled_plan(**option_values).cap_vcpus


def test_no_cap_during_a_storage_copy():
    options = engine_options(bandwidth_mibps=60, copy_storage="all", cap_vcpus=True)
    plan = plan_migration(options, predict_throttled(FAR, 99, 1), 256, 128.0, ["vda"])
    assert not plan.cap_vcpus


def test_no_cap_without_a_prediction():
    assert not plan_migration(engine_options(bandwidth_mibps=60, cap_vcpus=True), None, 256, None).cap_vcpus


# ---- the run ---------------------------------------------------------------------------


class FakeSourceConn:
    """The source's connection: the domain, or an error for every lookup."""

    def __init__(self, dom=None, error=None):
        self.dom, self.error = dom, error

    def lookupByName(self, name):
        if self.error is not None:
            raise self.error
        return self.dom


def cap_run(monkeypatch, probe_rates, source_conn=None, max_downtime_ms=300):
    rates = list(probe_rates)

    def measured(dom, seconds, timeout_s, sleep, clock):
        assert seconds == 1
        rate = rates.pop(0)
        if isinstance(rate, Exception):
            raise rate
        return rate

    monkeypatch.setattr(_migrate, "measure_dirty_rate", measured)
    run = _migrate._Run(
        FakeClient("qemu+tcp://127.0.0.11/system", source_conn), FakeClient("qemu+tcp://127.0.0.12/system"),
        "web1", engine_options(bandwidth_mibps=60, max_downtime_ms=max_downtime_ms), preflight_options("web1", "qemu+tcp://127.0.0.12/system"),
        True, _migrate.CompactionSettings(), None, 0, time.monotonic, lambda s: None,
    )
    run.result["strategy"] = {"downtime_steps_ms": [75, 150, 225, 300]}
    auto_converge = auto_converge_percents(FAR)
    predicted = _migrate._Predicted(predict_throttled(FAR, *auto_converge), FAR.to_dict(), False,
                                    auto_converge, FAR)
    return run, predicted, throttled_plan()


def test_a_probe_that_shows_no_response_caps_at_the_floor_and_the_destination_starts_uncapped(monkeypatch):
    run, predicted, plan = cap_run(monkeypatch, [126.0])
    dom = FakeSchedDomain()
    capped_plan = run.cap_vcpus(dom, plan, predicted)
    # 1 ms of each 100 ms period.
    assert (dom.params["vcpu_period"], dom.params["vcpu_quota"]) == (100000, 1000)
    assert parse_record(dom.XMLDesc(0)) == UNLIMITED
    # The destination's XML is the domain's from before the cap: no record in it.
    assert parse_record(capped_plan.params["destination_xml"]) is None
    assert capped_plan.downtime_steps_ms == (300,)
    assert run.cap["probe_percent"] == 12 and run.cap["percent"] == 1.0
    assert (run.cap["period_us"], run.cap["quota_us"]) == (100000, 1000)
    assert (run.cap["original_period_us"], run.cap["original_quota_us"]) == (100000, -1)
    assert "at least" in run.result["prediction"]["reason"]
    run.finish_cap(lifted_on="destination")
    assert run.result["vcpu_cap"]["lifted_on"] == "destination"
    assert run.result["vcpu_cap"]["held_s"] >= 0


def test_a_small_downtime_target_shortens_the_caps_period_and_raises_its_floor(monkeypatch):
    # The switchover waits up to a period for the capped vCPU: 60 ms of a 90 ms target at most.
    run, predicted, plan = cap_run(monkeypatch, [126.0], max_downtime_ms=90)
    dom = FakeSchedDomain()
    run.cap_vcpus(dom, plan, predicted)
    assert (dom.params["vcpu_period"], dom.params["vcpu_quota"]) == (60000, 1000)
    assert run.cap["percent"] == 1.67


def test_a_domain_already_limited_below_the_floor_keeps_its_own_limit(monkeypatch):
    # 0.5% of its own: the strongest cap a 100 ms period allows (1%) would loosen it.
    run, predicted, plan = cap_run(monkeypatch, [])
    dom = FakeSchedDomain({"vcpu_period": 200000, "vcpu_quota": 1000})
    assert run.cap_vcpus(dom, plan, predicted) is plan
    assert run.cap is None and dom.calls == []
    assert [e["applied"] for e in run.timeline.events if e.get("action") == "vcpu_cap"] == [False]


def test_a_probe_on_target_keeps_the_first_cap(monkeypatch):
    run, predicted, plan = cap_run(monkeypatch, [10.0])
    dom = FakeSchedDomain()
    run.cap_vcpus(dom, plan, predicted)
    assert dom.params["vcpu_quota"] == 12000
    assert [c for c in dom.calls if c[0] == "quota"] == [("quota", {"vcpu_period": 100000, "vcpu_quota": 12000})]


def test_a_failed_probe_leaves_the_cap_to_the_runs_error_path_which_lifts_it(monkeypatch):
    dom = FakeSchedDomain()
    run, predicted, plan = cap_run(monkeypatch, [StrataError("no dirty rate")], FakeSourceConn(dom))
    with pytest.raises(StrataError, match="no dirty rate"):
        run.cap_vcpus(dom, plan, predicted)
    run.lift_cap_after_error()
    assert dom.params == {"vcpu_period": 100000, "vcpu_quota": -1}
    assert dom.metadata is None
    assert [e.get("why") for e in run.timeline.events if e["event"] == "restore"] == ["the cap could not be sized"]
    assert run.result["vcpu_cap"]["lifted_on"] == "source"


def test_an_error_during_the_job_lifts_the_cap_on_the_source(monkeypatch):
    dom = FakeSchedDomain()
    run, predicted, plan = cap_run(monkeypatch, [126.0], FakeSourceConn(dom))
    run.cap_vcpus(dom, plan, predicted)
    run.lift_cap_after_error()
    assert dom.params["vcpu_quota"] == -1
    assert run.result["vcpu_cap"]["lifted_on"] == "source"
    assert [e.get("why") for e in run.timeline.events if e["event"] == "restore"] == ["the migration did not complete"]
    # Once lifted, a second call changes nothing.
    run.lift_cap_after_error()
    assert len([e for e in run.timeline.events if e["event"] == "restore"]) == 1


def test_a_lift_that_fails_is_reported_never_raised(monkeypatch):
    dom = FakeSchedDomain()
    run, predicted, plan = cap_run(monkeypatch, [126.0], FakeSourceConn(dom))
    run.cap_vcpus(dom, plan, predicted)
    dom.quota_error = FakeLibvirtError("Cannot recv data: End of file", 38)
    run.lift_cap_after_error()
    assert run.result["vcpu_cap"]["lifted_on"] is None
    failed = [e for e in run.timeline.events if e["event"] == "restore"]
    assert "End of file" in failed[0]["error"]
    assert "virsh schedinfo web1 --live vcpu_period=100000 vcpu_quota=-1" in failed[0]["note"]


def test_a_lift_that_fails_names_the_bandwidth_the_domain_had(monkeypatch):
    dom = FakeSchedDomain({"vcpu_period": 50000, "vcpu_quota": 40000})
    run, predicted, plan = cap_run(monkeypatch, [126.0], FakeSourceConn(dom))
    run.cap_vcpus(dom, plan, predicted)
    dom.quota_error = FakeLibvirtError("Cannot recv data: End of file", 38)
    run.lift_cap_after_error()
    failed = [e for e in run.timeline.events if e["event"] == "restore"]
    assert "virsh schedinfo web1 --live vcpu_period=50000 vcpu_quota=40000" in failed[0]["note"]


def test_a_source_that_cannot_be_read_after_an_error_is_reported_never_raised(monkeypatch):
    dom = FakeSchedDomain()
    run, predicted, plan = cap_run(monkeypatch, [126.0], FakeSourceConn(error=FakeLibvirtError("gone", 38)))
    run.cap_vcpus(dom, plan, predicted)
    run.lift_cap_after_error()
    assert run.result["vcpu_cap"]["lifted_on"] is None
    assert dom.params["vcpu_quota"] == 1000


def test_a_leftover_cap_that_cannot_be_lifted_stops_the_run_before_anything_moves(monkeypatch):
    run, _predicted, _plan = cap_run(monkeypatch, [])
    dom = FakeSchedDomain()
    own = VcpuBandwidth(period_us=50000, quota_us=40000)
    apply_cap(dom, own, 1.0, CAP_PERIOD_US)
    dom.quota_error = FakeLibvirtError("Timed out during operation: cannot acquire state change lock", 68)
    # The command names what the record holds: the domain's own bandwidth, not libvirt's defaults.
    with pytest.raises(StrataError, match="still has the vCPU cap of an earlier run.*vcpu_period=50000 vcpu_quota=40000"
                                          ".*nothing was migrated"):
        run.lift_leftover_cap(dom, parse_record(dom.XMLDesc(0)), check_mode=False)
    failed = [e for e in run.timeline.events if e["event"] == "restore"]
    assert "vcpu_period=50000 vcpu_quota=40000" in failed[0]["note"]


def test_a_source_without_vcpu_bandwidth_keeps_the_plan(monkeypatch):
    run, predicted, plan = cap_run(monkeypatch, [])
    assert run.cap_vcpus(FakeSchedDomain(cgroups=False), plan, predicted) is plan
    assert run.cap is None
    assert [e["applied"] for e in run.timeline.events if e.get("action") == "vcpu_cap"] == [False]


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_cap_left_by_a_run_cut_short_is_lifted_first_except_in_check_mode(monkeypatch, check_mode):
    run, _predicted, _plan = cap_run(monkeypatch, [])
    dom = FakeSchedDomain()
    apply_cap(dom, UNLIMITED, 1.0, CAP_PERIOD_US)
    run.lift_leftover_cap(dom, UNLIMITED, check_mode)
    assert (dom.params == {"vcpu_period": 100000, "vcpu_quota": -1}) is not check_mode
    assert run.result["changed"] is not check_mode


def test_unset_a_tcg_source_before_qemu_9_drops_the_planned_cap_and_says_why(monkeypatch):
    run, _predicted, plan = cap_run(monkeypatch, [])
    judged = run.cap_where_known_safe(plan, "qemu", "7.2.19")
    assert plan.cap_vcpus and not judged.cap_vcpus
    [event] = [e for e in run.timeline.events if e.get("action") == "vcpu_cap"]
    assert not event["applied"]
    assert "QEMU 7.2.19 under TCG" in event["note"] and "cap_vcpus=true caps anyway" in event["note"]


@pytest.mark.parametrize("domain_type, qemu", [("qemu", "10.0.13"), ("kvm", "7.2.19")])
def test_unset_a_source_known_safe_keeps_the_planned_cap(monkeypatch, domain_type, qemu):
    run, _predicted, plan = cap_run(monkeypatch, [])
    assert run.cap_where_known_safe(plan, domain_type, qemu) is plan
    assert not [e for e in run.timeline.events if e.get("action") == "vcpu_cap"]


def test_an_explicit_cap_is_kept_on_any_source(monkeypatch):
    run, _predicted, plan = cap_run(monkeypatch, [])
    run.options = engine_options(bandwidth_mibps=60, cap_vcpus=True)
    assert run.cap_where_known_safe(plan, "qemu", "7.2.19") is plan
    assert not [e for e in run.timeline.events if e.get("action") == "vcpu_cap"]
