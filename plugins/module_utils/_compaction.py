# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Balloon compaction: shrink a guest to just above its working set, and give memory back.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

Linux keeps the contents of pages it has freed, so memory a guest used once is
sent by a migration like any other page. Inflating the balloon to just above
the guest's working set turns that memory into pages the guest no longer has,
which a migration sends as zero pages or not at all.

The target policy (`compaction_target`, `restore_target`) and the compaction
record (`parse_compaction_record`, `render_compaction_record`) are pure
functions on plain data. `ensure_compacted` and `ensure_restored` take a
virDomain (or a fake with the same methods) and never import libvirt.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.strata.migration.plugins.module_utils._inventory import (
    KIB_PER_MIB,
    DomainNotRunningError,
    DomainXml,
    InventoryParseError,
    balloon_stats_mib,
    describe_host,
    domain_state_name,
    host_label,
    kib_to_mib,
    parse_domain_xml,
)
from ansible_collections.strata.migration.plugins.module_utils._libvirt import StrataError

# libvirt enum values (stable ABI), spelled out so this module needs no binding.
DOMAIN_AFFECT_LIVE = 1
DOMAIN_AFFECT_CONFIG = 2
DOMAIN_METADATA_ELEMENT = 2

# The compaction record lives in the domain's <metadata>, so it moves with the
# domain when it migrates; the version in the URI changes if its shape does.
RECORD_NAMESPACE = "https://strata-migration.github.io/xmlns/compaction/1"
RECORD_PREFIX = "strata"
RECORD_ELEMENT = "compaction"

DEFAULT_HEADROOM_MIB = 64
DEFAULT_HEADROOM_PERCENT = 10.0
DEFAULT_MIN_MEMORY_MIB = 128
DEFAULT_TIMEOUT_S = 60
ENABLED_STATS_PERIOD_S = 1

# "Already at target" within max(TOLERANCE_MIN_MIB, TOLERANCE_PERCENT of the target).
TOLERANCE_MIN_MIB = 4
TOLERANCE_PERCENT = 2.0

POLL_S = 0.25
# A small guest's balloon moves in tenths of a second: the first looks come sooner, then every POLL_S.
FIRST_POLL_S = 0.05
# The balloon has settled when its size has not changed for this long.
SETTLE_S = 3.0
# A fresh statistics report is awaited for at most this many stats periods (plus the slack).
STATS_FRESH_PERIODS = 2
STATS_FRESH_SLACK_S = 2.0

STATES = ("compacted", "restored")


class NoBalloonError(StrataError):
    """The domain has no balloon device."""


class BalloonStatsError(StrataError):
    """The guest reports no (or no current) memory statistics."""


class CompactionShortfallError(StrataError):
    """The guest did not reach the target and require_target is set."""


@dataclasses.dataclass
class CompactionParams:
    """Checked options of a compaction or restore."""

    state: str = "compacted"
    headroom_mib: int = DEFAULT_HEADROOM_MIB
    headroom_percent: float = DEFAULT_HEADROOM_PERCENT
    min_memory_mib: int = DEFAULT_MIN_MEMORY_MIB
    size_mib: t.Optional[int] = None
    timeout_s: int = DEFAULT_TIMEOUT_S
    require_target: bool = False
    enable_stats: bool = False


@dataclasses.dataclass
class CompactionTarget:
    """Where compaction would take the balloon, and why.

    used_mib is the guest's working set: actual minus what the guest could
    still use without swapping (`usable`, the guest's MemAvailable), or minus
    its free memory (`unused`) when the guest does not report `usable`; the
    latter counts page cache as used and so errs on the generous side.
    headroom_mib is the larger of the absolute and the proportional headroom.
    limited_by says which bound set the target: the working set plus
    headroom, min_memory_mib, or the current size (never grow a guest here).
    """

    actual_mib: int
    used_mib: int
    used_source: str
    headroom_mib: int
    target_mib: int
    tolerance_mib: int
    limited_by: str
    at_target: bool

    def to_dict(self) -> t.Dict[str, t.Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RestoreTarget:
    """Where a restore takes the balloon: size_source is size_mib, recorded or maximum."""

    actual_mib: int
    target_mib: int
    size_source: str
    memory_max_mib: int
    tolerance_mib: int
    at_target: bool

    def to_dict(self) -> t.Dict[str, t.Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CompactionRecord:
    """What the domain's metadata remembers of its compaction."""

    before_mib: int
    target_mib: t.Optional[int] = None
    host: t.Optional[str] = None
    compacted_at: t.Optional[str] = None


@dataclasses.dataclass
class BalloonSample:
    elapsed_s: float
    actual_mib: int


@dataclasses.dataclass
class CompactionResult:
    """The outcome of ensure_compacted or ensure_restored, as the module returns it.

    before_mib and after_mib are the balloon size (the guest's memory) when the
    task started and ended. recorded_mib and recorded_before_mib are the
    pre-compaction size held in the domain's metadata after and before the
    task, None when there is no record.
    settled: already, target, stalled, timeout, or check_mode.
    """

    domain: str
    host: t.Optional[str]
    state: str
    before_mib: int
    target_mib: t.Optional[int]
    after_mib: int
    reclaimed_mib: int
    restored_mib: int
    reached_target: t.Optional[bool]
    shortfall: t.Optional[str]
    settled: str
    elapsed_s: float
    settle_s: t.Optional[float]
    recorded_mib: t.Optional[int]
    recorded_before_mib: t.Optional[int]
    stats_enabled: bool
    plan: t.Optional[t.Dict[str, t.Any]]
    samples: t.List[BalloonSample]

    def to_dict(self) -> t.Dict[str, t.Any]:
        return dataclasses.asdict(self)


# ---- pure policy --------------------------------------------------------


def tolerance_mib(target_mib: int) -> int:
    """How far from the target still counts as there: max(4 MiB, 2% of the target)."""
    return max(TOLERANCE_MIN_MIB, int(math.ceil(target_mib * TOLERANCE_PERCENT / 100.0)))


def compaction_params(
    state: str = "compacted",
    headroom_mib: int = DEFAULT_HEADROOM_MIB,
    headroom_percent: float = DEFAULT_HEADROOM_PERCENT,
    min_memory_mib: int = DEFAULT_MIN_MEMORY_MIB,
    size_mib: t.Optional[int] = None,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    require_target: bool = False,
    enable_stats: bool = False,
) -> CompactionParams:
    """Check the options before any connection is opened; errors name the option."""
    if state not in STATES:
        raise StrataError("state must be one of %s, got '%s'" % (", ".join(STATES), state), option="state")
    if headroom_mib < 0:
        raise StrataError("headroom_mib must be 0 or more, got %d" % headroom_mib, option="headroom_mib")
    if not 0 <= headroom_percent <= 100:
        raise StrataError(
            "headroom_percent must be between 0 and 100, got %s" % headroom_percent, option="headroom_percent"
        )
    if min_memory_mib < 1:
        raise StrataError("min_memory_mib must be at least 1, got %d" % min_memory_mib, option="min_memory_mib")
    if size_mib is not None:
        if state != "restored":
            raise StrataError(
                "size_mib applies to state=restored only; compaction sizes the guest from its working set "
                "(see headroom_mib, headroom_percent and min_memory_mib)",
                option="size_mib",
            )
        if size_mib < 1:
            raise StrataError("size_mib must be at least 1, got %d" % size_mib, option="size_mib")
    if timeout_s < 1:
        raise StrataError("timeout_s must be at least 1 (seconds), got %d" % timeout_s, option="timeout_s")
    return CompactionParams(
        state=state,
        headroom_mib=headroom_mib,
        headroom_percent=float(headroom_percent),
        min_memory_mib=min_memory_mib,
        size_mib=size_mib,
        timeout_s=timeout_s,
        require_target=require_target,
        enable_stats=enable_stats,
    )


def guest_used_mib(stats: t.Mapping[str, int]) -> t.Tuple[int, str]:
    """Return (used MiB, source) from balloon statistics in MiB (see balloon_stats_mib).

    Raises BalloonStatsError when the statistics hold neither usable nor unused.
    """
    actual = stats.get("actual_mib")
    if actual is None:
        raise BalloonStatsError("the balloon statistics lack the balloon size (actual)")
    for key in ("usable", "unused"):
        free = stats.get("%s_mib" % key)
        if free is not None:
            return max(0, actual - free), key
    raise BalloonStatsError("the balloon statistics hold neither usable nor unused guest memory")


def compaction_target(
    stats: t.Mapping[str, int],
    headroom_mib: int = DEFAULT_HEADROOM_MIB,
    headroom_percent: float = DEFAULT_HEADROOM_PERCENT,
    min_memory_mib: int = DEFAULT_MIN_MEMORY_MIB,
) -> CompactionTarget:
    """Plan a compaction from balloon statistics in MiB (the output of balloon_stats_mib).

    target = used + max(headroom_mib, used * headroom_percent / 100): the
    absolute headroom protects small guests, the proportional one large guests
    whose allocations come in bigger bursts; taking the larger of the two means
    neither setting can shrink the margin the other asks for. The target is
    never below min_memory_mib and never above the current size.
    """
    used, source = guest_used_mib(stats)
    actual = stats["actual_mib"]
    headroom = max(headroom_mib, int(math.ceil(used * headroom_percent / 100.0)))
    target = used + headroom
    limited_by = "working_set"
    if target < min_memory_mib:
        target, limited_by = min_memory_mib, "min_memory"
    if target >= actual:
        target, limited_by = actual, "current"
    tolerance = tolerance_mib(target)
    return CompactionTarget(
        actual_mib=actual,
        used_mib=used,
        used_source=source,
        headroom_mib=headroom,
        target_mib=target,
        tolerance_mib=tolerance,
        limited_by=limited_by,
        at_target=actual - target <= tolerance,
    )


def restore_target(
    actual_mib: int,
    memory_max_mib: int,
    size_mib: t.Optional[int] = None,
    recorded_mib: t.Optional[int] = None,
) -> RestoreTarget:
    """Plan a restore: to size_mib, else the recorded pre-compaction size, else the maximum.

    A restore only gives memory back: a guest already at or above the size
    (within the tolerance) is left alone. A recorded size above the maximum
    (the maximum was lowered since) is capped at the maximum; an explicit
    size_mib above it is refused.
    """
    if size_mib is not None:
        if size_mib > memory_max_mib:
            raise StrataError(
                "size_mib %d is above the domain's maximum memory of %d MiB; lower size_mib or raise the maximum "
                "(virsh setmaxmem --config, effective after a restart)" % (size_mib, memory_max_mib),
                option="size_mib",
            )
        target, source = size_mib, "size_mib"
    elif recorded_mib is not None:
        target, source = min(recorded_mib, memory_max_mib), "recorded"
    else:
        target, source = memory_max_mib, "maximum"
    tolerance = tolerance_mib(target)
    return RestoreTarget(
        actual_mib=actual_mib,
        target_mib=target,
        size_source=source,
        memory_max_mib=memory_max_mib,
        tolerance_mib=tolerance,
        at_target=actual_mib >= target - tolerance,
    )


def parse_compaction_record(domain_xml: str) -> t.Optional[CompactionRecord]:
    """Read the compaction record from a domain's XML description; None when there is none."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        raise InventoryParseError("cannot parse domain XML from libvirt: %s" % exc) from exc
    element = root.find("metadata/{%s}%s" % (RECORD_NAMESPACE, RECORD_ELEMENT))
    if element is None:
        return None
    try:
        before = int(element.get("before_mib", ""))
        target = element.get("target_mib")
        return CompactionRecord(
            before_mib=before,
            target_mib=int(target) if target else None,
            host=element.get("host"),
            compacted_at=element.get("compacted_at"),
        )
    except ValueError as exc:
        raise InventoryParseError(
            "the compaction record in the domain's metadata (%s) is not readable: %s; remove it with "
            "`virsh metadata NAME %s --remove`" % (RECORD_NAMESPACE, exc, RECORD_NAMESPACE)
        ) from exc


def render_compaction_record(record: CompactionRecord) -> str:
    """The record as the XML element that setMetadata stores under RECORD_NAMESPACE."""
    element = ET.Element(RECORD_ELEMENT)
    element.set("before_mib", str(record.before_mib))
    if record.target_mib is not None:
        element.set("target_mib", str(record.target_mib))
    if record.host:
        element.set("host", record.host)
    if record.compacted_at:
        element.set("compacted_at", record.compacted_at)
    return ET.tostring(element, encoding="unicode")


def describe_shortfall(state: str, before_mib: int, target_mib: int, after_mib: int, settled: str, timeout_s: int) -> str:
    """Say why the balloon stopped short of the target, and what to do about it."""
    asked = abs(before_mib - target_mib)
    moved = abs(before_mib - after_mib)
    if state == "compacted":
        action = "gave back %d of the %d MiB asked (balloon at %d MiB, target %d MiB)" % (moved, asked, after_mib, target_mib)
    else:
        action = "took back %d of the %d MiB offered (balloon at %d MiB, target %d MiB)" % (moved, asked, after_mib, target_mib)
    if settled == "timeout":
        cause = "it was still moving when timeout_s (%d s) ran out; raise timeout_s" % timeout_s
    elif moved == 0:
        cause = "the balloon did not move: the guest's balloon driver (virtio_balloon) is probably not loaded"
    elif state == "compacted":
        cause = "the balloon stopped moving: the guest is probably short of free memory (its working set grew)"
    else:
        cause = "the balloon stopped moving: the guest's balloon driver did not release the rest"
    return "%s; %s" % (action, cause)


# ---- libvirt actions ----------------------------------------------------


def _host_of(dom: t.Any) -> t.Tuple[t.Optional[str], str]:
    """Return (hostname or None, label for messages) of the host that holds `dom`."""
    conn = dom.connect()
    return describe_host(conn)[0], host_label(conn)


def _actual_kib(dom: t.Any) -> int:
    """The balloon size; memoryStats() reports it from QEMU even without guest statistics."""
    actual = dom.memoryStats().get("actual")
    if actual is None:
        actual = dom.info()[2]
    return int(actual)


def _has_guest_stats(stats: t.Mapping[str, int]) -> bool:
    return "usable" in stats or "unused" in stats


class _Balloon:
    """One domain's balloon during one ensure_* call: checks, statistics, moves."""

    def __init__(
        self,
        dom: t.Any,
        params: CompactionParams,
        sleep: t.Callable[[float], None],
        clock: t.Callable[[], float],
    ) -> None:
        self.dom = dom
        self.params = params
        self.sleep = sleep
        self.clock = clock
        self.started = clock()
        self.deadline = self.started + params.timeout_s
        self.name = dom.name()
        self.hostname, self.where = _host_of(dom)
        self.stats_enabled = False

    def require_running_with_balloon(self, action: str) -> t.Tuple[DomainXml, t.Optional[CompactionRecord]]:
        """Refuse a domain that is not running or has no balloon; return its parsed XML and record."""
        state = domain_state_name(self.dom.state()[0])
        if state != "running":
            raise DomainNotRunningError(
                "cannot %s domain '%s' on %s: it is %s, not running; the balloon works only in a running guest"
                % (action, self.name, self.where, state),
                domain=self.name,
                host=self.hostname,
                domain_state=state,
            )
        document = self.dom.XMLDesc(0)
        parsed = parse_domain_xml(document)
        if parsed.balloon_model in (None, "none"):
            raise NoBalloonError(
                "cannot %s domain '%s' on %s: it has no memory balloon device (<memballoon model='none'>); add "
                "<memballoon model='virtio'><stats period='1'/></memballoon> to its definition and restart it"
                % (action, self.name, self.where),
                domain=self.name,
                host=self.hostname,
            )
        return parsed, parse_compaction_record(document)

    def _metadata_flags(self) -> int:
        # CONFIG too when persistent, so the record survives a restart of the guest
        # and a migration that persists the inactive definition.
        return DOMAIN_AFFECT_LIVE | (DOMAIN_AFFECT_CONFIG if self.dom.isPersistent() else 0)

    def write_record(self, record: CompactionRecord) -> None:
        self.dom.setMetadata(
            DOMAIN_METADATA_ELEMENT, render_compaction_record(record), RECORD_PREFIX, RECORD_NAMESPACE,
            self._metadata_flags(),
        )

    def clear_record(self) -> None:
        self.dom.setMetadata(DOMAIN_METADATA_ELEMENT, None, None, RECORD_NAMESPACE, self._metadata_flags())

    def enable_stats(self) -> None:
        self.dom.setMemoryStatsPeriod(ENABLED_STATS_PERIOD_S, DOMAIN_AFFECT_LIVE)
        self.stats_enabled = True

    def fresh_stats(self, period_s: int, seen_last_update: t.Optional[int] = None) -> t.Dict[str, int]:
        """Wait for the guest's next statistics report and return it in MiB.

        Statistics are the guest's last report, and libvirt keeps the last one
        even after reporting stopped; sizing from an old report could starve a
        guest whose working set grew since, so one new report is awaited.
        seen_last_update: the report's timestamp the caller read earlier; a
        report newer than that is already new, and nothing is awaited.
        """
        first = self.dom.memoryStats()
        last_update = first.get("last_update")
        if last_update is None and _has_guest_stats(first):
            return balloon_stats_mib(first)
        if seen_last_update is not None and last_update not in (None, seen_last_update) and _has_guest_stats(first):
            return balloon_stats_mib(first)
        waited_from = self.clock()
        bound = min(self.deadline, waited_from + STATS_FRESH_PERIODS * period_s + STATS_FRESH_SLACK_S)
        while True:
            self.sleep(POLL_S)
            stats = self.dom.memoryStats()
            if _has_guest_stats(stats) and stats.get("last_update") != last_update:
                return balloon_stats_mib(stats)
            if self.clock() >= bound:
                raise BalloonStatsError(
                    "domain '%s' on %s sent no new balloon statistics within %.0f s (statistics period %d s): the "
                    "guest's balloon driver (virtio_balloon) is probably not loaded or not running; compaction needs "
                    "current figures to size the guest safely"
                    % (self.name, self.where, bound - waited_from, period_s),
                    domain=self.name,
                    host=self.hostname,
                    changed=self.stats_enabled,
                )

    def move(self, target_mib: int) -> t.Tuple[int, str, t.Optional[float], t.List[BalloonSample]]:
        """Ask for target_mib and wait until the balloon gets there, stops moving, or time runs out.

        Returns (final KiB, how it settled, seconds until the last change, samples).
        """
        target_kib = target_mib * KIB_PER_MIB
        self.dom.setMemoryFlags(target_kib, DOMAIN_AFFECT_LIVE)
        requested = self.clock()
        samples: t.List[BalloonSample] = []
        last_kib: t.Optional[int] = None
        last_change = requested
        poll_s = FIRST_POLL_S
        while True:
            now = self.clock()
            actual_kib = _actual_kib(self.dom)
            if actual_kib != last_kib:
                samples.append(BalloonSample(round(now - requested, 2), kib_to_mib(actual_kib)))
                last_kib, last_change = actual_kib, now
            settle_s = round(last_change - requested, 2)
            # Within one MiB: guests with large balloon pages cannot land on every KiB.
            if abs(actual_kib - target_kib) < KIB_PER_MIB:
                return actual_kib, "target", settle_s, samples
            if now - last_change >= SETTLE_S:
                return actual_kib, "stalled", settle_s, samples
            if now >= self.deadline:
                return actual_kib, "timeout", settle_s, samples
            self.sleep(min(poll_s, max(self.deadline - now, 0.0)))
            poll_s = min(poll_s * 2, POLL_S)

    def elapsed_s(self) -> float:
        return round(self.clock() - self.started, 2)


def _finish(
    balloon: _Balloon,
    state: str,
    *,
    before_mib: int,
    target_mib: int,
    tolerance: int,
    outcome: t.Tuple[int, str, t.Optional[float], t.List[BalloonSample]],
    recorded_mib: t.Optional[int],
    recorded_before_mib: t.Optional[int],
    plan: t.Dict[str, t.Any],
) -> CompactionResult:
    after_kib, settled, settle_s, samples = outcome
    after_mib = kib_to_mib(after_kib)
    reached = abs(after_mib - target_mib) <= tolerance
    shortfall = None
    if not reached:
        shortfall = "domain '%s' on %s %s" % (
            balloon.name, balloon.where,
            describe_shortfall(state, before_mib, target_mib, after_mib, settled, balloon.params.timeout_s),
        )
    result = _report(
        balloon,
        state,
        before_mib=before_mib,
        after_mib=after_mib,
        target_mib=target_mib,
        settled=settled,
        recorded_mib=recorded_mib,
        recorded_before_mib=recorded_before_mib,
        plan=plan,
        reached=reached,
        shortfall=shortfall,
        settle_s=settle_s,
        samples=samples,
    )
    if shortfall and balloon.params.require_target:
        raise CompactionShortfallError(
            "%s (require_target is set; set it to false to accept what the guest gave)" % shortfall,
            changed=True,
            **result.to_dict()
        )
    return result


def _report(
    balloon: _Balloon,
    state: str,
    *,
    before_mib: int,
    after_mib: int,
    target_mib: t.Optional[int],
    settled: str,
    recorded_mib: t.Optional[int],
    recorded_before_mib: t.Optional[int],
    plan: t.Optional[t.Dict[str, t.Any]],
    reached: t.Optional[bool],
    shortfall: t.Optional[str] = None,
    settle_s: t.Optional[float] = None,
    samples: t.Optional[t.List[BalloonSample]] = None,
) -> CompactionResult:
    """The result of a compaction or restore; without a balloon move, only the first fields."""
    return CompactionResult(
        domain=balloon.name,
        host=balloon.hostname,
        state=state,
        before_mib=before_mib,
        target_mib=target_mib,
        after_mib=after_mib,
        reclaimed_mib=max(0, before_mib - after_mib),
        restored_mib=max(0, after_mib - before_mib),
        reached_target=reached,
        shortfall=shortfall,
        settled=settled,
        elapsed_s=balloon.elapsed_s(),
        settle_s=settle_s,
        recorded_mib=recorded_mib,
        recorded_before_mib=recorded_before_mib,
        stats_enabled=balloon.stats_enabled,
        plan=plan,
        samples=samples or [],
    )


def ensure_compacted(
    dom: t.Any,
    params: CompactionParams,
    check_mode: bool = False,
    sleep: t.Callable[[float], None] = time.sleep,
    clock: t.Callable[[], float] = time.monotonic,
    seen_last_update: t.Optional[int] = None,
) -> t.Tuple[bool, CompactionResult]:
    """Balloon a running domain down to its working set plus headroom.

    seen_last_update: the timestamp of a statistics report read earlier (see
    _Balloon.fresh_stats); live_migrate reads it before its dirty-rate
    measurement, so the report the guest sent meanwhile needs no wait.

    Already within the tolerance of the target: nothing changes. Check mode:
    report the target and stop. Otherwise record the pre-compaction size in
    the domain's metadata, ask for the target and wait, bounded by timeout_s,
    until the balloon reaches it or stops moving.
    """
    balloon = _Balloon(dom, params, sleep, clock)
    parsed, record = balloon.require_running_with_balloon("compact the memory of")
    period_s = parsed.balloon_stats_period_s or 0
    recorded_mib = record.before_mib if record else None
    if period_s <= 0:
        if not params.enable_stats:
            raise BalloonStatsError(
                "cannot compact the memory of domain '%s' on %s: its balloon reports no guest statistics "
                "(statistics period 0), and compaction needs the guest's memory use; enable them with "
                "`virsh dommemstat %s --period 1 --live`, or set enable_stats: true in memory_compact (in "
                "live_migrate, compact: false migrates without compaction)"
                % (balloon.name, balloon.where, balloon.name),
                domain=balloon.name,
                host=balloon.hostname,
                option="enable_stats",
            )
        if check_mode:
            actual_mib = kib_to_mib(_actual_kib(dom))
            return True, _report(
                balloon, "compacted", before_mib=actual_mib, after_mib=actual_mib, target_mib=None,
                settled="check_mode", recorded_mib=recorded_mib, recorded_before_mib=recorded_mib, plan=None,
                reached=None,
            )
        balloon.enable_stats()
        period_s = ENABLED_STATS_PERIOD_S
    stats = balloon.fresh_stats(period_s, seen_last_update)
    try:
        plan = compaction_target(stats, params.headroom_mib, params.headroom_percent, params.min_memory_mib)
    except BalloonStatsError as exc:
        raise BalloonStatsError(
            "cannot compact the memory of domain '%s' on %s: %s; is the guest's balloon driver (virtio_balloon) "
            "loaded?" % (balloon.name, balloon.where, exc),
            domain=balloon.name,
            host=balloon.hostname,
        ) from exc
    if plan.at_target:
        return balloon.stats_enabled, _report(
            balloon, "compacted", before_mib=plan.actual_mib, after_mib=plan.actual_mib, target_mib=plan.target_mib,
            settled="already", recorded_mib=recorded_mib, recorded_before_mib=recorded_mib, plan=plan.to_dict(),
            reached=True,
        )
    # A second compaction keeps the size from before the first one.
    before_compaction_mib = max(recorded_mib or 0, plan.actual_mib)
    if check_mode:
        return True, _report(
            balloon, "compacted", before_mib=plan.actual_mib, after_mib=plan.target_mib, target_mib=plan.target_mib,
            settled="check_mode", recorded_mib=before_compaction_mib, recorded_before_mib=recorded_mib,
            plan=plan.to_dict(), reached=None,
        )
    balloon.write_record(CompactionRecord(
        before_mib=before_compaction_mib,
        target_mib=plan.target_mib,
        host=balloon.hostname,
        compacted_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    ))
    outcome = balloon.move(plan.target_mib)
    return True, _finish(
        balloon, "compacted", before_mib=plan.actual_mib, target_mib=plan.target_mib, tolerance=plan.tolerance_mib,
        outcome=outcome, recorded_mib=before_compaction_mib, recorded_before_mib=recorded_mib, plan=plan.to_dict(),
    )


def ensure_restored(
    dom: t.Any,
    params: CompactionParams,
    check_mode: bool = False,
    sleep: t.Callable[[float], None] = time.sleep,
    clock: t.Callable[[], float] = time.monotonic,
) -> t.Tuple[bool, CompactionResult]:
    """Give a running domain its memory back and clear the compaction record.

    The size is params.size_mib, else the recorded pre-compaction size, else
    the domain's maximum. A domain already at or above it changes only by
    losing a leftover record. Needs a balloon but no guest statistics.
    """
    balloon = _Balloon(dom, params, sleep, clock)
    record = balloon.require_running_with_balloon("restore the memory of")[1]
    recorded_mib = record.before_mib if record else None
    actual_mib = kib_to_mib(_actual_kib(dom))
    plan = restore_target(actual_mib, kib_to_mib(dom.maxMemory()), params.size_mib, recorded_mib)
    if plan.at_target:
        if record is not None and not check_mode:
            balloon.clear_record()
        return record is not None, _report(
            balloon, "restored", before_mib=actual_mib, after_mib=actual_mib, target_mib=plan.target_mib,
            settled="already", recorded_mib=None, recorded_before_mib=recorded_mib, plan=plan.to_dict(), reached=True,
        )
    if check_mode:
        return True, _report(
            balloon, "restored", before_mib=actual_mib, after_mib=plan.target_mib, target_mib=plan.target_mib,
            settled="check_mode", recorded_mib=None, recorded_before_mib=recorded_mib, plan=plan.to_dict(),
            reached=None,
        )
    outcome = balloon.move(plan.target_mib)
    after_mib = kib_to_mib(outcome[0])
    reached = abs(after_mib - plan.target_mib) <= plan.tolerance_mib
    # The record stays until the memory is back, so a re-run finishes the job.
    if reached and record is not None:
        balloon.clear_record()
    return True, _finish(
        balloon, "restored", before_mib=actual_mib, target_mib=plan.target_mib, tolerance=plan.tolerance_mib,
        outcome=outcome, recorded_mib=None if reached else recorded_mib, recorded_before_mib=recorded_mib,
        plan=plan.to_dict(),
    )
