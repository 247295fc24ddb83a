# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import itertools

import pytest

from ansible_collections.strata.migration.plugins.module_utils._compaction import (
    DOMAIN_AFFECT_CONFIG,
    DOMAIN_AFFECT_LIVE,
    DOMAIN_METADATA_ELEMENT,
    RECORD_NAMESPACE,
    RECORD_PREFIX,
    BalloonStatsError,
    CompactionRecord,
    CompactionShortfallError,
    NoBalloonError,
    compaction_params,
    compaction_target,
    describe_shortfall,
    ensure_compacted,
    ensure_restored,
    guest_used_mib,
    parse_compaction_record,
    render_compaction_record,
    restore_target,
    tolerance_mib,
)
from ansible_collections.strata.migration.plugins.module_utils._inventory import (
    DomainNotRunningError,
    InventoryParseError,
)
from ansible_collections.strata.migration.plugins.module_utils._libvirt import StrataError
from ansible_collections.strata.migration.tests.unit.plugins.module_utils.fakes import FakeClock, FakeLibvirtError

MIB = 1024


def stats(actual, usable=None, unused=None):
    found = {"actual_mib": actual}
    if usable is not None:
        found["usable_mib"] = usable
    if unused is not None:
        found["unused_mib"] = unused
    return found


# ---- pure policy ----------------------------------------------------------


@pytest.mark.parametrize("target, expected", [(0, 4), (100, 4), (200, 4), (201, 5), (1000, 20), (4096, 82)])
def test_tolerance_is_the_larger_of_4_mib_and_2_percent(target, expected):
    assert tolerance_mib(target) == expected


def test_compaction_params_defaults():
    params = compaction_params()
    assert params.state == "compacted"
    assert (params.headroom_mib, params.headroom_percent, params.min_memory_mib) == (64, 10.0, 128)
    assert (params.size_mib, params.timeout_s, params.require_target, params.enable_stats) == (None, 60, False, False)


def test_compaction_params_accepts_size_for_restore():
    assert compaction_params(state="restored", size_mib=512).size_mib == 512


@pytest.mark.parametrize("kwargs, option", [
    ({"state": "shrunk"}, "state"),
    ({"headroom_mib": -1}, "headroom_mib"),
    ({"headroom_percent": -0.5}, "headroom_percent"),
    ({"headroom_percent": 101}, "headroom_percent"),
    ({"min_memory_mib": 0}, "min_memory_mib"),
    ({"size_mib": 512}, "size_mib"),
    ({"state": "restored", "size_mib": 0}, "size_mib"),
    ({"timeout_s": 0}, "timeout_s"),
])
def test_compaction_params_errors_name_the_option(kwargs, option):
    with pytest.raises(StrataError) as caught:
        compaction_params(**kwargs)
    assert caught.value.details["option"] == option
    assert option in str(caught.value)


def test_used_from_usable():
    assert guest_used_mib(stats(256, usable=194, unused=190)) == (62, "usable")


def test_used_falls_back_to_unused_without_usable():
    assert guest_used_mib(stats(256, unused=150)) == (106, "unused")


def test_used_is_never_negative():
    assert guest_used_mib(stats(100, usable=120)) == (0, "usable")


@pytest.mark.parametrize("found", [{"actual_mib": 256}, {"usable_mib": 100}])
def test_used_needs_actual_and_a_free_figure(found):
    with pytest.raises(BalloonStatsError):
        guest_used_mib(found)


def test_target_is_working_set_plus_absolute_headroom():
    plan = compaction_target(stats(1024, usable=824), headroom_mib=64, headroom_percent=10, min_memory_mib=128)
    assert (plan.used_mib, plan.headroom_mib, plan.target_mib) == (200, 64, 264)
    assert plan.limited_by == "working_set"
    assert plan.used_source == "usable"
    assert not plan.at_target
    assert plan.tolerance_mib == 6


def test_proportional_headroom_wins_for_large_working_sets():
    plan = compaction_target(stats(16384, usable=8384), headroom_mib=64, headroom_percent=10, min_memory_mib=128)
    assert (plan.used_mib, plan.headroom_mib, plan.target_mib) == (8000, 800, 8800)


def test_proportional_headroom_rounds_up():
    plan = compaction_target(stats(4096, usable=3095), headroom_mib=0, headroom_percent=10, min_memory_mib=1)
    assert plan.used_mib == 1001
    assert plan.headroom_mib == 101


def test_target_never_below_min_memory():
    plan = compaction_target(stats(256, usable=194), headroom_mib=64, headroom_percent=10, min_memory_mib=128)
    assert plan.target_mib == 128
    assert plan.limited_by == "min_memory"


def test_target_never_above_current_size():
    plan = compaction_target(stats(256, usable=30), headroom_mib=64, headroom_percent=10, min_memory_mib=128)
    assert plan.target_mib == 256
    assert plan.limited_by == "current"
    assert plan.at_target


def test_min_memory_above_current_size_keeps_current_size():
    plan = compaction_target(stats(256, usable=200), min_memory_mib=512)
    assert (plan.target_mib, plan.limited_by, plan.at_target) == (256, "current", True)


def test_at_target_within_tolerance():
    # used 60 + 64 = 124; 127 - 124 = 3 <= 4
    plan = compaction_target(stats(127, usable=67), headroom_mib=64, headroom_percent=0, min_memory_mib=1)
    assert plan.target_mib == 124
    assert plan.at_target


def test_not_at_target_just_beyond_tolerance():
    plan = compaction_target(stats(129, usable=69), headroom_mib=64, headroom_percent=0, min_memory_mib=1)
    assert plan.target_mib == 124
    assert not plan.at_target


def test_target_from_unused_is_reported():
    plan = compaction_target(stats(512, unused=300), headroom_mib=64, headroom_percent=10, min_memory_mib=128)
    assert plan.used_source == "unused"
    assert plan.target_mib == 212 + 64


def test_to_dict_has_the_plan():
    found = compaction_target(stats(1024, usable=824)).to_dict()
    assert found["target_mib"] == 264
    assert found["limited_by"] == "working_set"


@pytest.mark.parametrize("actual, used, headroom_mib, headroom_percent, min_memory_mib", list(itertools.product(
    (256, 8192),
    (0, 1, 120, 255, 4000, 8192),
    (0, 64),
    (0, 10, 100),
    (1, 128, 2048),
)))
def test_never_starves_the_guest(actual, used, headroom_mib, headroom_percent, min_memory_mib):
    if used > actual:
        return
    plan = compaction_target(
        stats(actual, usable=actual - used), headroom_mib=headroom_mib, headroom_percent=headroom_percent,
        min_memory_mib=min_memory_mib,
    )
    headroom = max(headroom_mib, used * headroom_percent / 100.0)
    # Either the guest keeps its working set plus headroom and min_memory, or it is not shrunk at all.
    assert plan.target_mib == actual or (
        plan.target_mib >= used + headroom and plan.target_mib >= min_memory_mib
    )
    assert plan.target_mib <= actual
    assert plan.headroom_mib >= headroom


def test_restore_to_size_mib():
    plan = restore_target(128, 1024, size_mib=512, recorded_mib=256)
    assert (plan.target_mib, plan.size_source, plan.at_target) == (512, "size_mib", False)


def test_restore_size_above_maximum_is_refused():
    with pytest.raises(StrataError) as caught:
        restore_target(128, 256, size_mib=300)
    assert caught.value.details["option"] == "size_mib"
    assert "256 MiB" in str(caught.value)


def test_restore_to_recorded_size():
    plan = restore_target(128, 1024, recorded_mib=256)
    assert (plan.target_mib, plan.size_source, plan.memory_max_mib) == (256, "recorded", 1024)


def test_restore_caps_recorded_size_at_maximum():
    plan = restore_target(128, 200, recorded_mib=256)
    assert (plan.target_mib, plan.size_source) == (200, "recorded")


def test_restore_defaults_to_maximum():
    plan = restore_target(128, 1024)
    assert (plan.target_mib, plan.size_source, plan.tolerance_mib) == (1024, "maximum", 21)


@pytest.mark.parametrize("actual, at_target", [(249, False), (250, True), (256, True), (300, True)])
def test_restore_only_gives_memory_back(actual, at_target):
    assert restore_target(actual, 1024, size_mib=256).at_target is at_target


def test_restore_target_to_dict():
    assert restore_target(128, 256).to_dict()["size_source"] == "maximum"


def domain_xml_with(metadata=""):
    return "<domain type='qemu'><name>web1</name><metadata>%s</metadata></domain>" % metadata


def test_record_round_trip():
    record = CompactionRecord(before_mib=4096, target_mib=1210, host="hv1", compacted_at="2024-01-02T03:04:05Z")
    element = render_compaction_record(record)
    stored = element.replace("<compaction ", "<strata:compaction xmlns:strata='%s' " % RECORD_NAMESPACE)
    assert parse_compaction_record(domain_xml_with(stored)) == record


def test_minimal_record():
    element = render_compaction_record(CompactionRecord(before_mib=256))
    assert element == '<compaction before_mib="256" />'
    stored = "<s:compaction xmlns:s='%s' before_mib='256'/>" % RECORD_NAMESPACE
    assert parse_compaction_record(domain_xml_with(stored)) == CompactionRecord(before_mib=256)


@pytest.mark.parametrize("document", [
    "<domain><name>web1</name></domain>",
    domain_xml_with(""),
    domain_xml_with("<o:compaction xmlns:o='https://example.com/other' before_mib='256'/>"),
])
def test_no_record(document):
    assert parse_compaction_record(document) is None


@pytest.mark.parametrize("attributes", ["before_mib='lots'", "", "before_mib='256' target_mib='x'"])
def test_unreadable_record(attributes):
    stored = "<s:compaction xmlns:s='%s' %s/>" % (RECORD_NAMESPACE, attributes)
    with pytest.raises(InventoryParseError) as caught:
        parse_compaction_record(domain_xml_with(stored))
    assert "--remove" in str(caught.value)


def test_record_from_broken_xml():
    with pytest.raises(InventoryParseError):
        parse_compaction_record("<domain>")


@pytest.mark.parametrize("args, expected", [
    (("compacted", 256, 128, 200, "timeout", 30), ["gave back 56 of the 128 MiB asked", "timeout_s (30 s)"]),
    (("compacted", 256, 128, 256, "stalled", 30), ["gave back 0 of the 128 MiB", "virtio_balloon"]),
    (("compacted", 256, 128, 200, "stalled", 30), ["gave back 56", "short of free memory"]),
    (("restored", 128, 256, 200, "stalled", 30), ["took back 72 of the 128 MiB offered", "did not release"]),
])
def test_describe_shortfall(args, expected):
    message = describe_shortfall(*args)
    for part in expected:
        assert part in message


# ---- ensure_* with a fake domain --------------------------------------------


class FakeConn:
    def __init__(self, hostname="hv1", uri="qemu+tcp://admin:secret@127.0.0.11/system"):
        self.hostname = hostname
        self.uri = uri

    def _answer(self, value):
        if value is None:
            raise FakeLibvirtError("not supported", 3)
        return value

    def getHostname(self):
        return self._answer(self.hostname)

    def getURI(self):
        return self._answer(self.uri)


class FakeDomain:
    """A running guest with a balloon. The guest follows balloon requests per `behaviour`.

    behaviour: "instant" (next stats read shows the target), "floor" (stops at
    floor_mib), "none" (no balloon driver: nothing moves), "slow" (moves
    step_mib per read). Each memoryStats() call is one guest report
    (last_update advances) while the stats period is above 0.
    """

    def __init__(self, actual_mib=256, usable_mib=194, max_mib=256, state=1, persistent=True,
                 balloon="<memballoon model='virtio'><stats period='1'/></memballoon>", record=None,
                 behaviour="instant", floor_mib=0, step_mib=8, reports=True, last_update=True, unused_mib=None,
                 conn=None):
        self.actual_kib = actual_mib * MIB
        self.requested_kib = self.actual_kib
        self.usable_mib = usable_mib
        self.unused_mib = unused_mib
        self.max_mib = max_mib
        self.state_code = state
        self.persistent = persistent
        self.balloon = balloon
        self.record = record
        self.behaviour = behaviour
        self.floor_kib = floor_mib * MIB
        self.step_kib = step_mib * MIB
        self.reports = reports
        self.with_last_update = last_update
        self.last_update = 500
        self.conn = conn or FakeConn()
        self.calls = []

    # virDomain methods used by _compaction
    def name(self):
        return "web1"

    def connect(self):
        return self.conn

    def state(self):
        return [self.state_code, 0]

    def isPersistent(self):
        return 1 if self.persistent else 0

    def info(self):
        return [self.state_code, self.max_mib * MIB, self.actual_kib, 1, 0]

    def maxMemory(self):
        return self.max_mib * MIB

    def XMLDesc(self, flags=0):
        metadata = ""
        if self.record is not None:
            metadata = "<metadata>%s</metadata>" % self.record.replace(
                "<compaction ", "<%s:compaction xmlns:%s='%s' " % (RECORD_PREFIX, RECORD_PREFIX, RECORD_NAMESPACE))
        return ("<domain type='qemu'><name>web1</name>%s<memory unit='MiB'>%d</memory><devices>%s</devices>"
                "</domain>" % (metadata, self.max_mib, self.balloon))

    def _guest_step(self):
        if self.behaviour == "none" or self.actual_kib == self.requested_kib:
            return
        if self.requested_kib > self.actual_kib:
            wanted = self.requested_kib
            if self.behaviour == "slow":
                wanted = min(self.requested_kib, self.actual_kib + self.step_kib)
        else:
            wanted = max(self.requested_kib, self.floor_kib if self.behaviour == "floor" else 0)
            if self.behaviour == "slow":
                wanted = max(wanted, self.actual_kib - self.step_kib)
        freed = (self.actual_kib - wanted) // MIB
        self.actual_kib = wanted
        self.usable_mib -= freed

    def memoryStats(self):
        self._guest_step()
        found = {"actual": self.actual_kib, "rss": self.actual_kib}
        if self.reports and "period='0'" not in self.balloon:
            self.last_update += 1
            found["usable"] = self.usable_mib * MIB
            if self.unused_mib is not None:
                found["unused"] = self.unused_mib * MIB
        if self.with_last_update and self.reports:
            found["last_update"] = self.last_update
        return found

    def setMemoryFlags(self, kib, flags):
        self.calls.append(("setMemoryFlags", kib, flags))
        self.requested_kib = kib

    def setMetadata(self, kind, xml, prefix, uri, flags):
        self.calls.append(("setMetadata", kind, xml, prefix, uri, flags))
        self.record = xml

    def setMemoryStatsPeriod(self, period, flags):
        self.calls.append(("setMemoryStatsPeriod", period, flags))
        self.balloon = self.balloon.replace("period='0'", "period='%d'" % period)

    def call_names(self):
        return [call[0] for call in self.calls]


def run(ensure, dom, check_mode=False, **options):
    clock = FakeClock()
    params = compaction_params(state="compacted" if ensure is ensure_compacted else "restored", **options)
    return ensure(dom, params, check_mode=check_mode, sleep=clock.sleep, clock=clock)


STOPPED = [(5, "shutoff"), (3, "paused"), (7, "pmsuspended")]


@pytest.mark.parametrize("ensure", [ensure_compacted, ensure_restored])
@pytest.mark.parametrize("code, name", STOPPED)
def test_refuses_a_domain_that_is_not_running(ensure, code, name):
    dom = FakeDomain(state=code)
    with pytest.raises(DomainNotRunningError) as caught:
        run(ensure, dom)
    message = str(caught.value)
    assert "'web1'" in message and "host 'hv1'" in message and name in message
    assert "secret" not in message
    assert caught.value.details == {"domain": "web1", "host": "hv1", "domain_state": name}
    assert dom.calls == []


@pytest.mark.parametrize("hostname, uri, label, host", [
    ("hv1", "qemu+tcp://admin:secret@127.0.0.11/system", "host 'hv1' (qemu+tcp://admin@127.0.0.11/system)", "hv1"),
    (None, "qemu+tcp://127.0.0.11/system", "host 'qemu+tcp://127.0.0.11/system'", None),
    ("hv1", None, "host 'hv1'", "hv1"),
    (None, None, "host 'unknown'", None),
])
def test_messages_name_the_host_without_credentials(hostname, uri, label, host):
    dom = FakeDomain(state=5, conn=FakeConn(hostname, uri))
    with pytest.raises(DomainNotRunningError) as caught:
        run(ensure_compacted, dom)
    assert label in str(caught.value)
    assert caught.value.details["host"] == host


@pytest.mark.parametrize("ensure", [ensure_compacted, ensure_restored])
@pytest.mark.parametrize("balloon", ["<memballoon model='none'/>", ""])
def test_refuses_a_domain_without_balloon(ensure, balloon):
    dom = FakeDomain(balloon=balloon)
    with pytest.raises(NoBalloonError) as caught:
        run(ensure, dom)
    assert "no memory balloon device" in str(caught.value)
    assert "'web1'" in str(caught.value) and "hv1" in str(caught.value)
    assert dom.calls == []


@pytest.mark.parametrize("balloon", [
    "<memballoon model='virtio'><stats period='0'/></memballoon>",
    "<memballoon model='virtio'/>",
])
def test_compaction_refuses_without_stats_and_says_how_to_enable_them(balloon):
    dom = FakeDomain(balloon=balloon)
    with pytest.raises(BalloonStatsError) as caught:
        run(ensure_compacted, dom)
    message = str(caught.value)
    assert "virsh dommemstat web1 --period 1 --live" in message
    assert "enable_stats: true in memory_compact" in message
    assert "in live_migrate, compact: false migrates without compaction" in message
    assert caught.value.details["option"] == "enable_stats"
    assert dom.calls == []


def test_enable_stats_in_check_mode_changes_nothing():
    dom = FakeDomain(balloon="<memballoon model='virtio'><stats period='0'/></memballoon>")
    changed, result = run(ensure_compacted, dom, check_mode=True, enable_stats=True)
    assert changed
    assert result.target_mib is None and result.plan is None
    assert (result.before_mib, result.after_mib, result.settled) == (256, 256, "check_mode")
    assert dom.calls == []


def test_enable_stats_turns_them_on_and_compacts():
    dom = FakeDomain(balloon="<memballoon model='virtio'><stats period='0'/></memballoon>")
    changed, result = run(ensure_compacted, dom, enable_stats=True)
    assert changed
    assert result.stats_enabled
    assert dom.calls[0] == ("setMemoryStatsPeriod", 1, DOMAIN_AFFECT_LIVE)
    assert result.after_mib == 128


def test_enable_stats_when_already_at_target_still_reports_the_change():
    dom = FakeDomain(actual_mib=128, usable_mib=66, balloon="<memballoon model='virtio'><stats period='0'/></memballoon>")
    changed, result = run(ensure_compacted, dom, enable_stats=True)
    assert changed and result.stats_enabled
    assert result.settled == "already"
    assert dom.call_names() == ["setMemoryStatsPeriod"]


def test_enable_stats_but_the_guest_never_reports():
    dom = FakeDomain(balloon="<memballoon model='virtio'><stats period='0'/></memballoon>", reports=False)
    with pytest.raises(BalloonStatsError) as caught:
        run(ensure_compacted, dom, enable_stats=True)
    assert "virtio_balloon" in str(caught.value)
    assert caught.value.details["changed"] is True
    assert dom.call_names() == ["setMemoryStatsPeriod"]


def test_stale_statistics_are_refused():
    dom = FakeDomain()
    dom.memoryStats = lambda: {"actual": 256 * MIB, "usable": 194 * MIB, "last_update": 42}
    with pytest.raises(BalloonStatsError) as caught:
        run(ensure_compacted, dom)
    assert "no new balloon statistics within 4 s" in str(caught.value)
    assert caught.value.details["changed"] is False
    assert dom.calls == []


def test_stale_statistics_wait_is_bounded_by_timeout():
    dom = FakeDomain(balloon="<memballoon model='virtio'><stats period='30'/></memballoon>")
    dom.memoryStats = lambda: {"actual": 256 * MIB, "usable": 194 * MIB, "last_update": 42}
    with pytest.raises(BalloonStatsError) as caught:
        run(ensure_compacted, dom, timeout_s=5)
    assert "within 5 s (statistics period 30 s)" in str(caught.value)


def compact_after_seeing(dom, seen_last_update):
    clock = FakeClock()
    params = compaction_params(state="compacted")
    return ensure_compacted(dom, params, sleep=clock.sleep, clock=clock, seen_last_update=seen_last_update)


def test_a_report_newer_than_one_seen_before_needs_no_wait():
    dom = FakeDomain()
    dom.memoryStats = lambda: {"actual": 256 * MIB, "usable": 194 * MIB, "unused": 150 * MIB, "last_update": 43}
    # This report never changes: without the earlier sight of 42 the wait for a new one would fail.
    changed, result = compact_after_seeing(dom, 42)
    assert changed and result.target_mib < 256


def test_the_report_seen_before_is_still_stale():
    dom = FakeDomain()
    dom.memoryStats = lambda: {"actual": 256 * MIB, "usable": 194 * MIB, "unused": 150 * MIB, "last_update": 43}
    with pytest.raises(BalloonStatsError) as caught:
        compact_after_seeing(dom, 43)
    assert "no new balloon statistics" in str(caught.value)


def test_statistics_without_last_update_are_taken_as_they_are():
    dom = FakeDomain(last_update=False)
    changed, result = run(ensure_compacted, dom)
    assert changed and result.after_mib == 128


def test_statistics_without_guest_figures_are_refused():
    dom = FakeDomain()
    ticks = itertools.count()
    dom.memoryStats = lambda: {"actual": 256 * MIB, "last_update": next(ticks)}
    with pytest.raises(BalloonStatsError) as caught:
        run(ensure_compacted, dom)
    assert "virtio_balloon" in str(caught.value)


def test_working_set_from_unused_when_the_guest_has_no_usable():
    dom = FakeDomain(usable_mib=None, unused_mib=150)
    ticks = itertools.count()
    dom.memoryStats = lambda: {"actual": 256 * MIB, "unused": 150 * MIB, "last_update": next(ticks)}
    changed, result = run(ensure_compacted, dom)
    assert result.plan["used_source"] == "unused"
    assert result.target_mib == 106 + 64


def test_statistics_without_the_balloon_size_are_refused_naming_the_domain():
    dom = FakeDomain()
    ticks = itertools.count()
    dom.memoryStats = lambda: {"usable": 100 * MIB, "last_update": next(ticks)}
    with pytest.raises(BalloonStatsError) as caught:
        run(ensure_compacted, dom)
    assert "'web1'" in str(caught.value) and "balloon size" in str(caught.value)
    assert dom.calls == []


def test_already_compacted_changes_nothing():
    dom = FakeDomain(actual_mib=128, usable_mib=66, record='<compaction before_mib="256" />')
    changed, result = run(ensure_compacted, dom)
    assert not changed
    assert (result.before_mib, result.after_mib, result.target_mib) == (128, 128, 128)
    assert (result.settled, result.reached_target, result.recorded_mib) == ("already", True, 256)
    assert result.samples == []
    assert dom.calls == []


def test_check_mode_reports_the_target_and_changes_nothing():
    dom = FakeDomain()
    changed, result = run(ensure_compacted, dom, check_mode=True)
    assert changed
    assert (result.before_mib, result.target_mib, result.after_mib, result.reclaimed_mib) == (256, 128, 128, 128)
    assert result.reached_target is None
    assert result.settled == "check_mode"
    assert (result.recorded_mib, result.recorded_before_mib) == (256, None)
    assert dom.calls == []
    assert dom.actual_kib == 256 * MIB


def test_compaction_records_the_size_then_inflates():
    dom = FakeDomain(actual_mib=1024, usable_mib=824, max_mib=1024)
    changed, result = run(ensure_compacted, dom)
    assert changed
    assert dom.call_names() == ["setMetadata", "setMemoryFlags"]
    name, kind, xml, prefix, uri, flags = dom.calls[0]
    assert name == "setMetadata"
    assert (kind, prefix, uri, flags) == (DOMAIN_METADATA_ELEMENT, RECORD_PREFIX, RECORD_NAMESPACE,
                                          DOMAIN_AFFECT_LIVE | DOMAIN_AFFECT_CONFIG)
    assert 'before_mib="1024"' in xml and 'target_mib="264"' in xml and 'host="hv1"' in xml
    assert dom.calls[1] == ("setMemoryFlags", 264 * MIB, DOMAIN_AFFECT_LIVE)
    assert (result.before_mib, result.target_mib, result.after_mib, result.reclaimed_mib) == (1024, 264, 264, 760)
    assert (result.reached_target, result.shortfall, result.settled) == (True, None, "target")
    assert (result.recorded_mib, result.recorded_before_mib, result.restored_mib) == (1024, None, 0)
    assert [(s.elapsed_s, s.actual_mib) for s in result.samples] == [(0.0, 264)]
    assert result.settle_s == 0.0
    assert result.to_dict()["plan"]["used_mib"] == 200


def test_compaction_of_a_transient_domain_records_live_only():
    dom = FakeDomain(persistent=False)
    run(ensure_compacted, dom)
    assert dom.calls[0][5] == DOMAIN_AFFECT_LIVE


def test_second_compaction_keeps_the_first_recorded_size():
    # Compacted once to 600 MiB; the working set shrank since.
    dom = FakeDomain(actual_mib=600, usable_mib=500, max_mib=1024, record='<compaction before_mib="1024" />')
    changed, result = run(ensure_compacted, dom)
    assert changed
    assert 'before_mib="1024"' in dom.calls[0][2]
    assert (result.recorded_mib, result.recorded_before_mib) == (1024, 1024)


def test_record_below_current_size_is_replaced_by_the_current_size():
    dom = FakeDomain(actual_mib=1024, usable_mib=824, max_mib=1024, record='<compaction before_mib="512" />')
    run(ensure_compacted, dom)
    assert 'before_mib="1024"' in dom.calls[0][2]


def test_compaction_never_asks_below_working_set_plus_headroom():
    dom = FakeDomain(actual_mib=4096, usable_mib=1096, max_mib=4096)
    run(ensure_compacted, dom, headroom_mib=32, headroom_percent=5, min_memory_mib=64)
    requested_kib = dom.calls[1][1]
    assert requested_kib >= (3000 + 150) * MIB


def test_slow_guest_is_followed_to_the_target():
    dom = FakeDomain(behaviour="slow", step_mib=32)
    changed, result = run(ensure_compacted, dom)
    assert result.settled == "target" and result.reached_target
    assert [s.actual_mib for s in result.samples] == [224, 192, 160, 128]
    # One step per look; the looks come at 0.05, 0.15 and 0.35 s, then every 0.25 s.
    assert [s.elapsed_s for s in result.samples] == [0.0, 0.05, 0.15, 0.35]
    assert result.settle_s == 0.35


def test_shortfall_when_the_guest_stops_early():
    dom = FakeDomain(behaviour="floor", floor_mib=200)
    changed, result = run(ensure_compacted, dom)
    assert changed
    assert (result.after_mib, result.reached_target, result.settled) == (200, False, "stalled")
    assert "gave back 56 of the 128 MiB asked" in result.shortfall
    assert "domain 'web1' on host 'hv1'" in result.shortfall
    assert result.reclaimed_mib == 56
    assert result.recorded_mib == 256


def test_shortfall_within_tolerance_counts_as_reached():
    dom = FakeDomain(behaviour="floor", floor_mib=131)
    changed, result = run(ensure_compacted, dom)
    assert (result.settled, result.reached_target, result.shortfall) == ("stalled", True, None)


def test_shortfall_fails_with_require_target():
    dom = FakeDomain(behaviour="floor", floor_mib=200)
    with pytest.raises(CompactionShortfallError) as caught:
        run(ensure_compacted, dom, require_target=True)
    assert "require_target" in str(caught.value)
    details = caught.value.details
    assert details["changed"] is True
    assert (details["after_mib"], details["reached_target"], details["recorded_mib"]) == (200, False, 256)


def test_no_balloon_driver_is_named():
    dom = FakeDomain(behaviour="none")
    changed, result = run(ensure_compacted, dom)
    assert result.settled == "stalled"
    assert result.after_mib == 256
    assert "virtio_balloon" in result.shortfall


def test_timeout_while_the_balloon_still_moves():
    dom = FakeDomain(actual_mib=1024, usable_mib=824, max_mib=1024, behaviour="slow", step_mib=1)
    changed, result = run(ensure_compacted, dom, timeout_s=5)
    assert result.settled == "timeout"
    assert not result.reached_target
    assert "timeout_s (5 s)" in result.shortfall
    assert result.elapsed_s <= 5.3


def test_restore_gives_back_the_recorded_size_and_clears_the_record():
    dom = FakeDomain(actual_mib=128, usable_mib=66, max_mib=512, record='<compaction before_mib="256" />')
    changed, result = run(ensure_restored, dom)
    assert changed
    assert dom.calls[0] == ("setMemoryFlags", 256 * MIB, DOMAIN_AFFECT_LIVE)
    assert dom.calls[1] == ("setMetadata", DOMAIN_METADATA_ELEMENT, None, None, RECORD_NAMESPACE,
                            DOMAIN_AFFECT_LIVE | DOMAIN_AFFECT_CONFIG)
    assert (result.before_mib, result.target_mib, result.after_mib, result.restored_mib) == (128, 256, 256, 128)
    assert (result.recorded_mib, result.recorded_before_mib) == (None, 256)
    assert result.plan["size_source"] == "recorded"
    assert result.reached_target and result.settled == "target"


def test_restore_without_record_goes_to_the_maximum():
    dom = FakeDomain(actual_mib=128, usable_mib=66, max_mib=512)
    changed, result = run(ensure_restored, dom)
    assert changed
    assert dom.call_names() == ["setMemoryFlags"]
    assert (result.after_mib, result.plan["size_source"]) == (512, "maximum")


def test_restore_to_size_mib():
    dom = FakeDomain(actual_mib=128, usable_mib=66, max_mib=512, record='<compaction before_mib="256" />')
    changed, result = run(ensure_restored, dom, size_mib=384)
    assert result.after_mib == 384
    assert result.plan["size_source"] == "size_mib"


def test_restore_size_above_maximum_names_the_option():
    dom = FakeDomain(actual_mib=128, max_mib=256)
    with pytest.raises(StrataError) as caught:
        run(ensure_restored, dom, size_mib=1024)
    assert caught.value.details["option"] == "size_mib"
    assert dom.calls == []


def test_restore_needs_no_statistics():
    dom = FakeDomain(actual_mib=128, balloon="<memballoon model='virtio'><stats period='0'/></memballoon>",
                     record='<compaction before_mib="256" />')
    changed, result = run(ensure_restored, dom)
    assert changed and result.after_mib == 256


def test_restore_reads_the_size_from_info_when_stats_lack_it():
    dom = FakeDomain(actual_mib=256, record=None)
    dom.memoryStats = lambda: {}
    changed, result = run(ensure_restored, dom)
    assert not changed and result.before_mib == 256


def test_restore_when_already_restored_changes_nothing():
    dom = FakeDomain(actual_mib=256)
    changed, result = run(ensure_restored, dom)
    assert not changed
    assert (result.settled, result.reached_target, result.after_mib) == ("already", True, 256)
    assert dom.calls == []


def test_restore_never_takes_memory_away():
    dom = FakeDomain(actual_mib=512, max_mib=512)
    changed, result = run(ensure_restored, dom, size_mib=256)
    assert not changed and result.after_mib == 512
    assert dom.calls == []


def test_restore_clears_a_leftover_record():
    dom = FakeDomain(actual_mib=256, record='<compaction before_mib="256" />', persistent=False)
    changed, result = run(ensure_restored, dom)
    assert changed
    assert dom.calls == [("setMetadata", DOMAIN_METADATA_ELEMENT, None, None, RECORD_NAMESPACE, DOMAIN_AFFECT_LIVE)]
    assert (result.recorded_mib, result.recorded_before_mib) == (None, 256)


def test_restore_leftover_record_in_check_mode():
    dom = FakeDomain(actual_mib=256, record='<compaction before_mib="256" />')
    changed, result = run(ensure_restored, dom, check_mode=True)
    assert changed and result.recorded_mib is None
    assert dom.calls == []


def test_restore_check_mode_changes_nothing():
    dom = FakeDomain(actual_mib=128, record='<compaction before_mib="256" />')
    changed, result = run(ensure_restored, dom, check_mode=True)
    assert changed
    assert (result.before_mib, result.after_mib, result.restored_mib, result.settled) == (128, 256, 128, "check_mode")
    assert dom.calls == []


def test_restore_shortfall_keeps_the_record():
    dom = FakeDomain(actual_mib=128, record='<compaction before_mib="256" />', behaviour="none")
    changed, result = run(ensure_restored, dom)
    assert changed
    assert dom.call_names() == ["setMemoryFlags"]
    assert result.recorded_mib == 256
    assert "took back 0 of the 128 MiB offered" in result.shortfall


def test_restore_shortfall_with_require_target_fails():
    dom = FakeDomain(actual_mib=128, record='<compaction before_mib="256" />', behaviour="none")
    with pytest.raises(CompactionShortfallError) as caught:
        run(ensure_restored, dom, require_target=True)
    assert caught.value.details["recorded_mib"] == 256
