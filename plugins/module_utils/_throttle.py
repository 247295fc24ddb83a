# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The vCPU cap: a shaking guest's vCPUs held to a share of a CPU while it migrates.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

QEMU's auto-converge throttles a guest only from its third pass (two passes
that dirtied too much come first), so a hot set rewritten faster than the link
is sent whole at least twice before anything slows it. libvirt's vCPU
bandwidth (the cgroup cpu controller's quota, `vcpu_quota`) slows the guest
from the first page instead. libvirt refuses to change it while a migration
job runs, so the cap is set before the job and held to its end; auto-converge
stays on top of it as the escalation for passes that still do not shrink.

The cap is sized from the ratio of dirty rate to bandwidth, then checked by
one measurement under the cap: a dirty rate measured in a 1 s window counts
each page once, so a hot set rewritten many times a second shows only its own
size, and a cap sized from that would barely slow it. A rate that did not
fall under the cap reveals that, and the cap goes to the smallest quota.

The cap runs with a period of its own (see MAX_CAP_PERIOD_US). The destination
starts without the cap (the migration carries the domain's XML from before it),
and a failed migration lifts it on the source. The domain's live metadata
records the original period and quota, so a run cut short (a killed
controller) leaves a record the next run lifts the cap from. Unless asked for
or refused (live_migrate's cap_vcpus), the cap runs only where the source is
known to track guest writes exactly while a vCPU is stopped (cap_by_default).
"""

from __future__ import annotations

import dataclasses
import math
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.strata.migration.plugins.module_utils._features import version_tuple
from ansible_collections.strata.migration.plugins.module_utils._libvirt import LibvirtError, StrataError

# The dirty rate the cap aims for, as a share of the bandwidth: each pass then re-dirties at most a
# quarter of what it sent, so pre-copy ends within about a third of a pass after the first.
CAP_TARGET_FRACTION = 0.25
# The kernel's smallest CFS quota (libvirt refuses less).
MIN_QUOTA_US = 1000
# The cap sets its own period. A vCPU that has used its quota waits up to a period to run again, and
# the switchover must stop it: with 200 ms periods nearly every capped job's downtime was 215-231 ms
# (35-130 ms with 100 ms periods). A TCG vCPU stopped while it holds QEMU's big lock also holds up
# QEMU's monitor and each dirty-bitmap sync, so the paced near case took 6.3 and 8.4 s of job at
# 200 ms against 4.9 and 6.8 s at 100 ms, though the 0.5% floor sent less (246-270 MiB against
# 265-309). So the kernel's default period at most, and two thirds of the downtime target.
MAX_CAP_PERIOD_US = 100000
# A rate measured under the cap that is still above this share of the uncapped one did not respond:
# the uncapped measurement saw only the hot set's size, not how often it is rewritten.
RESPONSE_FRACTION = 0.8
# A cap tightened in proportion to this share of a CPU or less goes to the floor instead: the guest is nearly
# stopped either way, and a paced writer's rate falls less than in proportion. On the lab's paced near case
# (62 MiB/s), caps of 4-10% in proportion took 7.3-10.5 s of job (11 moves on QEMU 7.2 and 10) where those at
# the 1% floor took a median of 5.8 s (71 moves on QEMU 10, benchmarks/vcpu_cap_soak.py).
NEAR_FLOOR_PERCENT = 10.0
# libvirt's bandwidth for a domain that sets none: the kernel's default period, no quota.
DEFAULT_PERIOD_US = 100000
NO_QUOTA = -1
# virDomainModificationImpact and virDomainMetadataType (numeric, so this imports without libvirt).
AFFECT_LIVE = 1
METADATA_ELEMENT = 2
RECORD_NAMESPACE = "https://strata-migration.github.io/xmlns/vcpu-cap/1"
RECORD_PREFIX = "strata-cap"
RECORD_ELEMENT = "vcpu-cap"
# The first QEMU whose TCG keeps dirty tracking exact across a dirty-bitmap sync (upstream commit 03bfc2188f,
# "physmem: Fix migration dirty bitmap coherency with TCG memory access", March 2024). Before it a guest
# write could be lost on the destination, the likely cause of two guest kernel crashes in about 150 capped
# migrations on QEMU 7.2 (a vCPU the cap stops mid-kernel widens the window); none in 243 on QEMU 10.0
# (benchmarks/vcpu_cap_soak.py).
TCG_EXACT_DIRTY_TRACKING_QEMU = "9.0.0"


@dataclasses.dataclass(frozen=True)
class VcpuBandwidth:
    """A domain's live vCPU bandwidth: quota_us of CPU per period_us for each vCPU (quota <= 0: no limit)."""

    period_us: int
    quota_us: int

    def percent(self) -> float:
        """The share of a CPU each vCPU may use, 100 when unlimited."""
        if self.quota_us <= 0 or self.period_us <= 0:
            return 100.0
        return min(100.0, 100.0 * self.quota_us / self.period_us)


def cap_by_default(domain_type: t.Optional[str], source_qemu: str) -> t.Tuple[bool, str]:
    """Whether a migration that leaves cap_vcpus unset caps the vCPUs, and why."""
    if domain_type == "kvm":
        return True, "KVM tracks guest writes in the host kernel"
    if domain_type == "qemu":
        if version_tuple(source_qemu or "0") >= version_tuple(TCG_EXACT_DIRTY_TRACKING_QEMU):
            return True, "the source runs QEMU %s, whose TCG emulation tracks guest writes exactly" % source_qemu
        return False, (
            "the source runs QEMU %s under TCG emulation, which can lose a guest write a capped vCPU makes while "
            "the migration syncs its dirty bitmap (fixed in QEMU %s); cap_vcpus=true caps anyway"
            % (source_qemu or "of an unknown version", TCG_EXACT_DIRTY_TRACKING_QEMU))
    return False, "the cap is known safe only for kvm and qemu domains, not %s; cap_vcpus=true caps anyway" % (
        domain_type or "one of an unknown type")


def cap_period_us(max_downtime_ms: int) -> int:
    """The period the cap runs with, for a migration allowed max_downtime_ms of downtime."""
    return max(MIN_QUOTA_US, min(MAX_CAP_PERIOD_US, max_downtime_ms * 1000 * 2 // 3))


def min_cap_percent(period_us: int) -> float:
    """The strongest cap the period allows (MIN_QUOTA_US of each period)."""
    return min(100.0, 100.0 * MIN_QUOTA_US / period_us)


def quota_us(period_us: int, percent: float) -> int:
    """The quota giving `percent` of each period, never below MIN_QUOTA_US."""
    return max(MIN_QUOTA_US, int(period_us * percent / 100.0))


def first_cap_percent(
    dirty_rate_mibps: float, bandwidth_mibps: float, original: VcpuBandwidth, period_us: int
) -> float:
    """The cap that brings the measured dirty rate to CAP_TARGET_FRACTION of the bandwidth, as if linear.

    Never looser than the domain's own limit, never tighter than the cap's period allows.
    """
    ceiling = original.percent()
    if dirty_rate_mibps <= 0:
        return ceiling
    wanted = math.ceil(100.0 * CAP_TARGET_FRACTION * bandwidth_mibps / dirty_rate_mibps)
    return max(min(float(wanted), ceiling), min_cap_percent(period_us))


# How corrected_cap_percent sized the cap.
SIZED_ON_TARGET = "on_target"
SIZED_IN_PROPORTION = "in_proportion"
SIZED_UNRESPONSIVE = "unresponsive"


def corrected_cap_percent(
    cap_percent: float, uncapped_mibps: float, capped_mibps: float, bandwidth_mibps: float, period_us: int
) -> t.Tuple[float, str]:
    """The cap to migrate with, from the rate measured under cap_percent, and how it was sized.

    On target: kept. Fallen but still above target: tightened in proportion (below
    NEAR_FLOOR_PERCENT or the floor, or at it, to the strongest cap). Not fallen (the uncapped measurement saw only
    the hot set's size): the strongest cap.
    """
    target = CAP_TARGET_FRACTION * bandwidth_mibps
    if capped_mibps <= target:
        return cap_percent, SIZED_ON_TARGET
    floor = min_cap_percent(period_us)
    if capped_mibps < RESPONSE_FRACTION * uncapped_mibps:
        proportional = min(cap_percent, math.floor(cap_percent * target / capped_mibps))
        return (floor if proportional <= max(NEAR_FLOOR_PERCENT, floor) else proportional), SIZED_IN_PROPORTION
    return floor, SIZED_UNRESPONSIVE


def capped_rate_mibps(cap_percent: float, probe_percent: float, probe_mibps: float) -> float:
    """The dirty rate expected under cap_percent, in proportion to the one measured under probe_percent.

    When the probe's rate did not respond this is a lower bound: the probe saw only the hot set's size.
    """
    return probe_mibps * cap_percent / probe_percent


# ---- the record in the domain's metadata -------------------------------------


def render_record(original: VcpuBandwidth, cap_percent: float) -> str:
    element = ET.Element(RECORD_ELEMENT)
    element.set("period_us", str(original.period_us))
    element.set("quota_us", str(original.quota_us))
    element.set("cap_percent", "%g" % cap_percent)
    return ET.tostring(element, encoding="unicode")


def parse_record(domain_xml: str) -> t.Optional[VcpuBandwidth]:
    """The original bandwidth recorded in a domain's XML description; None without a record."""
    element = ET.fromstring(domain_xml).find("metadata/{%s}%s" % (RECORD_NAMESPACE, RECORD_ELEMENT))
    if element is None:
        return None
    try:
        return VcpuBandwidth(period_us=int(element.get("period_us", "")), quota_us=int(element.get("quota_us", "")))
    except ValueError as exc:
        raise StrataError(
            "the vCPU cap record in the domain's metadata (%s) is not readable: %s; set the bandwidth the domain "
            "should have with `virsh schedinfo <domain> --live vcpu_period=%d vcpu_quota=%d`, then remove the "
            "record with `virsh metadata <domain> %s --live --remove`"
            % (RECORD_NAMESPACE, exc, DEFAULT_PERIOD_US, NO_QUOTA, RECORD_NAMESPACE)
        ) from exc


# ---- libvirt ----------------------------------------------------------------------


def read_bandwidth(dom: t.Any) -> t.Optional[VcpuBandwidth]:
    """The domain's live vCPU bandwidth; None when the host cannot limit it (no cgroup cpu controller)."""
    try:
        params = dom.schedulerParametersFlags(AFFECT_LIVE)
    except LibvirtError:  # libvirt: "cgroup CPU controller is not mounted"
        return None
    if "vcpu_quota" not in params or "vcpu_period" not in params:
        return None
    return VcpuBandwidth(period_us=int(params["vcpu_period"]), quota_us=int(params["vcpu_quota"]))


def apply_cap(dom: t.Any, original: VcpuBandwidth, cap_percent: float, period_us: int) -> None:
    """Record the original bandwidth, then cap the vCPUs (live only: the persistent definition keeps its own)."""
    dom.setMetadata(METADATA_ELEMENT, render_record(original, cap_percent), RECORD_PREFIX, RECORD_NAMESPACE,
                    AFFECT_LIVE)
    dom.setSchedulerParametersFlags({"vcpu_period": period_us, "vcpu_quota": quota_us(period_us, cap_percent)},
                                    AFFECT_LIVE)


def lift_cap(dom: t.Any) -> t.Optional[VcpuBandwidth]:
    """Give the vCPUs back the bandwidth the record names and drop the record; None when there was none."""
    original = parse_record(dom.XMLDesc(0))
    if original is None:
        return None
    dom.setSchedulerParametersFlags({"vcpu_period": original.period_us, "vcpu_quota": original.quota_us},
                                    AFFECT_LIVE)
    dom.setMetadata(METADATA_ELEMENT, None, None, RECORD_NAMESPACE, AFFECT_LIVE)
    return original
