# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Where VMs should go: the placement planner behind strata.migration.migration_plan.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

Plain data in, a Plan out; it never imports libvirt. Sizes are MiB, rates
MiB/s, durations s. The same input always gives the same plan: every tie is
broken by name.

Three modes:

- evacuate: every VM on the evacuated hosts, largest memory first, goes to
  the eligible host with the most free memory, which spreads the load. A VM
  no host can take stays where it is and is reported as unplaceable, with
  the constraint that ruled out the last candidates.
- rebalance: greedy. While the memory-utilisation spread (the most loaded
  host's percentage minus the least loaded one's) exceeds the threshold, the
  planner takes the move off the most loaded host that lowers the spread
  most, and stops when no move lowers it.
- recover: the VMs of failed hosts are restarted elsewhere, placed as an
  evacuation places them but highest restart_priority first, so a shortage
  of capacity leaves the least important ones unplaced.

A target host is never under maintenance, excluded or being evacuated, and
must keep memory_capacity_mib - reserve_mib >= committed memory, committed
vCPUs <= vcpu_overcommit_ratio * cpus, and no two VMs of one anti-affinity
group. Pinned VMs never move; no VM moves twice in one plan.

Moves run in waves: within a wave a host sends at most max_parallel_per_host
VMs and receives at most as many, the wave holds at most max_parallel_total
moves, and a move into a host comes after the moves out of that host that
were planned before it, since the planner counted the memory they free.
A restart copies nothing and its dead source sends nothing: only the limits
on receiving hosts and on the wave apply, and its estimate is the per-move
overhead.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import math
import typing as t

from ansible_collections.strata.migration.plugins.module_utils._convergence import (
    DEFAULT_MAX_DOWNTIME_MS,
    MigrationInputs,
    choose_strategy,
    with_storage_copy,
)

MODES = ("evacuate", "rebalance", "recover")
DEFAULT_VCPU_OVERCOMMIT_RATIO = 4.0
DEFAULT_SPREAD_THRESHOLD_PERCENT = 10.0
DEFAULT_MAX_PARALLEL_PER_HOST = 1
DEFAULT_MAX_PARALLEL_TOTAL = 2
DEFAULT_BANDWIDTH_MIBPS = 1000.0
# Time each move takes besides the copy: pre-flight with its dirty-rate sample, compaction, the
# async start and the progress polls. 16 moves of the lab's main job took 5.1-8.6 s more than
# their migration jobs, 6.1 s at the median; a window planned on the copy alone overran.
DEFAULT_MOVE_OVERHEAD_S = 6.0
# Rebalance looks at this many of the least loaded hosts that can take a VM: the
# best move almost always lands on one of them, and it keeps planning linear.
TARGET_CANDIDATES = 4

_EPSILON = 1e-9


class PlanError(ValueError):
    """Invalid planner input; `option` names the option (or element) to fix."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option


def _number(option: str, value: t.Any, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlanError("%s must be a number, got %r" % (option, value), option)
    if (strict and value <= minimum) or (not strict and value < minimum):
        raise PlanError(
            "%s must be %s %s, got %s" % (option, "more than" if strict else "at least", _fmt(minimum), _fmt(value)),
            option,
        )
    return value


def _whole(option: str, value: t.Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError("%s must be a whole number, got %r" % (option, value), option)
    if value < minimum:
        raise PlanError("%s must be at least %d, got %d" % (option, minimum, value), option)
    return value


def _flag(option: str, value: t.Any) -> bool:
    if not isinstance(value, bool):
        raise PlanError("%s must be true or false, got %r" % (option, value), option)
    return value


def _name(option: str, value: t.Any) -> str:
    if not isinstance(value, str) or not value:
        raise PlanError("%s must be a non-empty string, got %r" % (option, value), option)
    return value


def _fmt(value: float, digits: int = 1) -> str:
    """A number for a sentence: 60 rather than 60.0."""
    text = ("%." + str(digits) + "f") % value
    return text.rstrip("0").rstrip(".") if "." in text else text


def _plain(value: float) -> t.Union[int, float]:
    """A figure for the result: whole numbers as int, others to 0.1."""
    rounded = round(value, 1)
    return int(rounded) if rounded == int(rounded) else rounded


@dataclasses.dataclass(frozen=True)
class HostSpec:
    """A hypervisor as the planner sees it: declared capacity, reserve and CPUs."""

    name: str
    memory_capacity_mib: float
    cpus: int
    reserve_mib: float = 0.0
    maintenance: bool = False
    excluded: bool = False

    @classmethod
    def from_dict(cls, data: t.Mapping[str, t.Any], option: str) -> "HostSpec":
        if not isinstance(data, t.Mapping):
            raise PlanError("%s must be a dictionary, got %r" % (option, data), option)
        name = _name(option + ".name", data.get("name"))
        return cls(
            name=name,
            memory_capacity_mib=_number(option + ".memory_capacity_mib", data.get("memory_capacity_mib"), strict=True),
            cpus=_whole(option + ".cpus", data.get("cpus"), 1),
            reserve_mib=_number(option + ".reserve_mib", data.get("reserve_mib", 0) or 0),
            maintenance=_flag(option + ".maintenance", data.get("maintenance", False) or False),
            excluded=_flag(option + ".excluded", data.get("excluded", False) or False),
        )


@dataclasses.dataclass(frozen=True)
class VmSpec:
    """A VM as the planner sees it. pinned: False, True or the reason it cannot migrate."""

    name: str
    host: str
    memory_mib: float
    vcpus: int
    uuid: t.Optional[str] = None
    anti_affinity_group: t.Optional[str] = None
    pinned: t.Union[bool, str] = False
    recently_moved: bool = False
    dirty_rate_mibps: t.Optional[float] = None
    # Local disks a storage copy takes along, in MiB: they lengthen the move.
    disk_mib: float = 0.0
    # In a recovery, higher is restarted (and placed) first.
    restart_priority: int = 0

    @property
    def pinned_reason(self) -> t.Optional[str]:
        if self.pinned is True:
            return "pinned"
        if isinstance(self.pinned, str) and self.pinned:
            return "not migratable: %s" % self.pinned
        return None

    @classmethod
    def from_dict(cls, data: t.Mapping[str, t.Any], option: str) -> "VmSpec":
        if not isinstance(data, t.Mapping):
            raise PlanError("%s must be a dictionary, got %r" % (option, data), option)
        pinned = data.get("pinned", False)
        if pinned is None:
            pinned = False
        if not isinstance(pinned, (bool, str)):
            raise PlanError("%s.pinned must be true, false or a reason, got %r" % (option, pinned), option + ".pinned")
        group = data.get("anti_affinity_group")
        dirty = data.get("dirty_rate_mibps")
        uuid = data.get("uuid")
        return cls(
            name=_name(option + ".name", data.get("name")),
            host=_name(option + ".host", data.get("host")),
            memory_mib=_number(option + ".memory_mib", data.get("memory_mib"), strict=True),
            vcpus=_whole(option + ".vcpus", data.get("vcpus"), 1),
            uuid=None if uuid is None else _name(option + ".uuid", uuid),
            anti_affinity_group=None if group in (None, "") else _name(option + ".anti_affinity_group", group),
            pinned=pinned,
            recently_moved=_flag(option + ".recently_moved", data.get("recently_moved", False) or False),
            dirty_rate_mibps=None if dirty is None else _number(option + ".dirty_rate_mibps", dirty),
            disk_mib=_number(option + ".disk_mib", data.get("disk_mib") or 0),
            restart_priority=_whole(option + ".restart_priority", data.get("restart_priority") or 0, 0),
        )


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    """How to plan; from_dict validates and names the option at fault."""

    mode: str
    evacuate_hosts: t.Tuple[str, ...] = ()
    failed_hosts: t.Tuple[str, ...] = ()
    vcpu_overcommit_ratio: float = DEFAULT_VCPU_OVERCOMMIT_RATIO
    spread_threshold_percent: float = DEFAULT_SPREAD_THRESHOLD_PERCENT
    hold_recently_moved: bool = True
    max_parallel_per_host: int = DEFAULT_MAX_PARALLEL_PER_HOST
    max_parallel_total: int = DEFAULT_MAX_PARALLEL_TOTAL
    bandwidth_mibps: float = DEFAULT_BANDWIDTH_MIBPS
    max_downtime_ms: float = DEFAULT_MAX_DOWNTIME_MS
    window_s: t.Optional[float] = None
    move_overhead_s: float = DEFAULT_MOVE_OVERHEAD_S
    anti_affinity_groups: t.Tuple[t.Tuple[str, t.Tuple[str, ...]], ...] = ()

    @classmethod
    def from_dict(cls, data: t.Mapping[str, t.Any]) -> "PlanOptions":
        def get(key: str, default: t.Any) -> t.Any:
            value = data.get(key)
            return default if value is None else value

        mode = data.get("mode")
        if mode not in MODES:
            raise PlanError("mode must be one of %s, got %r" % (", ".join(MODES), mode), "mode")
        evacuate_hosts, failed_hosts = _host_names(data, "evacuate_hosts"), _host_names(data, "failed_hosts")
        if mode == "evacuate" and not evacuate_hosts:
            raise PlanError("mode=evacuate needs the hosts to empty in evacuate_hosts", "evacuate_hosts")
        if mode != "evacuate" and evacuate_hosts:
            raise PlanError("evacuate_hosts applies to mode=evacuate only; leave it empty to %s" % mode,
                            "evacuate_hosts")
        if mode == "recover" and not failed_hosts:
            raise PlanError("mode=recover needs the hosts whose VMs to restart in failed_hosts", "failed_hosts")
        if mode != "recover" and failed_hosts:
            raise PlanError("failed_hosts applies to mode=recover only; leave it empty to %s" % mode, "failed_hosts")
        groups = get("anti_affinity_groups", {})
        if not isinstance(groups, t.Mapping):
            raise PlanError("anti_affinity_groups must map a group name to a list of VM names",
                            "anti_affinity_groups")
        group_items = []
        for group in sorted(groups):
            members = groups[group]
            option = "anti_affinity_groups.%s" % group
            if not isinstance(members, (list, tuple)):
                raise PlanError("%s must be a list of VM names, got %r" % (option, members), option)
            group_items.append((_name(option, group), tuple(sorted(_name(option, name) for name in members))))
        window_s = data.get("window_s")
        return cls(
            mode=mode,
            evacuate_hosts=tuple(sorted(set(evacuate_hosts))),
            failed_hosts=tuple(sorted(set(failed_hosts))),
            vcpu_overcommit_ratio=_number("vcpu_overcommit_ratio",
                                          get("vcpu_overcommit_ratio", DEFAULT_VCPU_OVERCOMMIT_RATIO), strict=True),
            spread_threshold_percent=_number("spread_threshold_percent",
                                             get("spread_threshold_percent", DEFAULT_SPREAD_THRESHOLD_PERCENT)),
            hold_recently_moved=_flag("hold_recently_moved", get("hold_recently_moved", True)),
            max_parallel_per_host=_whole("max_parallel_per_host",
                                         get("max_parallel_per_host", DEFAULT_MAX_PARALLEL_PER_HOST), 1),
            max_parallel_total=_whole("max_parallel_total", get("max_parallel_total", DEFAULT_MAX_PARALLEL_TOTAL), 1),
            bandwidth_mibps=_number("bandwidth_mibps", get("bandwidth_mibps", DEFAULT_BANDWIDTH_MIBPS), strict=True),
            max_downtime_ms=_number("max_downtime_ms", get("max_downtime_ms", DEFAULT_MAX_DOWNTIME_MS), strict=True),
            window_s=None if window_s is None else _number("window_s", window_s),
            move_overhead_s=_number("move_overhead_s", get("move_overhead_s", DEFAULT_MOVE_OVERHEAD_S)),
            anti_affinity_groups=tuple(group_items),
        )


def _host_names(data: t.Mapping[str, t.Any], option: str) -> t.List[str]:
    names = data.get(option) or []
    if not isinstance(names, (list, tuple)):
        raise PlanError("%s must be a list of host names" % option, option)
    return [_name("%s[%d]" % (option, index), name) for index, name in enumerate(names)]


@dataclasses.dataclass(frozen=True)
class Move:
    vm: str
    uuid: t.Optional[str]
    from_host: str
    to_host: str
    memory_mib: float
    estimated_s: float
    wave: int
    disk_mib: float = 0.0

    def to_dict(self) -> t.Dict[str, t.Any]:
        return {
            "vm": self.vm,
            "uuid": self.uuid,
            "from": self.from_host,
            "to": self.to_host,
            "memory_mib": _plain(self.memory_mib),
            "disk_mib": _plain(self.disk_mib),
            "estimated_s": round(self.estimated_s, 1),
            "wave": self.wave,
        }


@dataclasses.dataclass(frozen=True)
class HostLoad:
    memory_committed_mib: float
    memory_capacity_mib: float
    memory_free_mib: float
    memory_percent: float
    vcpus_committed: int
    vcpu_ratio: float

    def to_dict(self) -> t.Dict[str, t.Any]:
        return {
            "memory_committed_mib": _plain(self.memory_committed_mib),
            "memory_capacity_mib": _plain(self.memory_capacity_mib),
            "memory_free_mib": _plain(self.memory_free_mib),
            "memory_percent": round(self.memory_percent, 1),
            "vcpus_committed": self.vcpus_committed,
            "vcpu_ratio": round(self.vcpu_ratio, 2),
        }


@dataclasses.dataclass(frozen=True)
class Plan:
    """A placement plan. moves are in wave order; waves hold VM names."""

    mode: str
    moves: t.Tuple[Move, ...]
    waves: t.Tuple[t.Tuple[str, ...], ...]
    wave_estimated_s: t.Tuple[float, ...]
    load_before: t.Mapping[str, HostLoad]
    load_after: t.Mapping[str, HostLoad]
    spread_before_percent: float
    spread_after_percent: float
    spread_threshold_percent: float
    unplaceable: t.Tuple[t.Mapping[str, str], ...]
    not_moved: t.Tuple[t.Mapping[str, str], ...]
    estimated_total_s: float
    window_s: t.Optional[float]
    fits_window: t.Optional[bool]
    summary: str

    def to_dict(self) -> t.Dict[str, t.Any]:
        return {
            "mode": self.mode,
            "moves": [move.to_dict() for move in self.moves],
            "waves": [list(wave) for wave in self.waves],
            "wave_estimated_s": [round(value, 1) for value in self.wave_estimated_s],
            "load_before": {name: load.to_dict() for name, load in self.load_before.items()},
            "load_after": {name: load.to_dict() for name, load in self.load_after.items()},
            "spread_before_percent": round(self.spread_before_percent, 1),
            "spread_after_percent": round(self.spread_after_percent, 1),
            "spread_threshold_percent": self.spread_threshold_percent,
            "unplaceable": [dict(item) for item in self.unplaceable],
            "not_moved": [dict(item) for item in self.not_moved],
            "estimated_total_s": round(self.estimated_total_s, 1),
            "window_s": self.window_s,
            "fits_window": self.fits_window,
            "summary": self.summary,
        }


def parse_input(
    hosts: t.Sequence[t.Mapping[str, t.Any]],
    vms: t.Sequence[t.Mapping[str, t.Any]],
    options: t.Mapping[str, t.Any],
) -> t.Tuple[t.List[HostSpec], t.List[VmSpec], PlanOptions]:
    """Validate plain data (as a playbook builds it); PlanError names the option at fault."""
    if not isinstance(hosts, (list, tuple)) or not hosts:
        raise PlanError("hosts must be a non-empty list", "hosts")
    if not isinstance(vms, (list, tuple)):
        raise PlanError("vms must be a list", "vms")
    host_specs = [HostSpec.from_dict(item, "hosts[%d]" % index) for index, item in enumerate(hosts)]
    vm_specs = [VmSpec.from_dict(item, "vms[%d]" % index) for index, item in enumerate(vms)]
    return host_specs, vm_specs, PlanOptions.from_dict(options)


class _Cluster:
    """The mutable state a plan is built on: what each host holds."""

    def __init__(self, hosts: t.Sequence[HostSpec], vms: t.Sequence[VmSpec], options: PlanOptions) -> None:
        self.options = options
        self.hosts: t.Dict[str, HostSpec] = {}
        for index, host in enumerate(hosts):
            if host.name in self.hosts:
                raise PlanError("hosts[%d].name: host %s is listed twice" % (index, host.name),
                                "hosts[%d].name" % index)
            self.hosts[host.name] = host
        self.vms: t.Dict[str, VmSpec] = {}
        self.memory: t.Dict[str, float] = {name: 0.0 for name in self.hosts}
        self.vcpus: t.Dict[str, int] = {name: 0 for name in self.hosts}
        self.on_host: t.Dict[str, t.List[str]] = {name: [] for name in self.hosts}
        for index, vm in enumerate(vms):
            if vm.name in self.vms:
                raise PlanError("vms[%d].name: VM %s is listed twice" % (index, vm.name), "vms[%d].name" % index)
            if vm.host not in self.hosts:
                raise PlanError("vms[%d].host: VM %s runs on host %s, which is not in hosts"
                                % (index, vm.name, vm.host), "vms[%d].host" % index)
            self.vms[vm.name] = vm
            self.memory[vm.host] += vm.memory_mib
            self.vcpus[vm.host] += vm.vcpus
            self.on_host[vm.host].append(vm.name)
        for option, names in (("evacuate_hosts", options.evacuate_hosts), ("failed_hosts", options.failed_hosts)):
            for name in names:
                if name not in self.hosts:
                    raise PlanError("%s names %s, which is not in hosts" % (option, name), option)
        self.groups: t.Dict[str, t.Set[str]] = {name: set() for name in self.vms}
        for vm in self.vms.values():
            if vm.anti_affinity_group:
                self.groups[vm.name].add(vm.anti_affinity_group)
        for group, members in options.anti_affinity_groups:
            for member in members:
                if member not in self.vms:
                    raise PlanError("anti_affinity_groups.%s names VM %s, which is not in vms" % (group, member),
                                    "anti_affinity_groups.%s" % group)
                self.groups[member].add(group)
        self.group_count: t.Dict[str, t.Dict[str, int]] = {name: {} for name in self.hosts}
        for vm in self.vms.values():
            for group in self.groups[vm.name]:
                counts = self.group_count[vm.host]
                counts[group] = counts.get(group, 0) + 1
        self.location: t.Dict[str, str] = {name: vm.host for name, vm in self.vms.items()}
        leaving = set(options.evacuate_hosts) | set(options.failed_hosts)
        self.targets = sorted(
            name for name, host in self.hosts.items()
            if not host.maintenance and not host.excluded and name not in leaving
        )

    def free_mib(self, host: str) -> float:
        spec = self.hosts[host]
        return spec.memory_capacity_mib - spec.reserve_mib - self.memory[host]

    def percent(self, host: str) -> float:
        return self.memory[host] / self.hosts[host].memory_capacity_mib * 100.0

    def vcpus_fit(self, vm: VmSpec, host: str) -> bool:
        limit = self.options.vcpu_overcommit_ratio * self.hosts[host].cpus
        return self.vcpus[host] + vm.vcpus <= limit + _EPSILON

    def group_conflict(self, vm: VmSpec, host: str) -> t.Optional[str]:
        counts = self.group_count[host]
        for group in sorted(self.groups[vm.name]):
            if counts.get(group, 0):
                return group
        return None

    def fits(self, vm: VmSpec, host: str) -> bool:
        return (self.free_mib(host) + _EPSILON >= vm.memory_mib and self.vcpus_fit(vm, host)
                and self.group_conflict(vm, host) is None)

    def move(self, vm: VmSpec, target: str) -> None:
        source = self.location[vm.name]
        self.memory[source] -= vm.memory_mib
        self.memory[target] += vm.memory_mib
        self.vcpus[source] -= vm.vcpus
        self.vcpus[target] += vm.vcpus
        for group in self.groups[vm.name]:
            self.group_count[source][group] -= 1
            self.group_count[target][group] = self.group_count[target].get(group, 0) + 1
        self.location[vm.name] = target

    def loads(self) -> t.Dict[str, HostLoad]:
        return {
            name: HostLoad(
                memory_committed_mib=self.memory[name],
                memory_capacity_mib=host.memory_capacity_mib,
                memory_free_mib=self.free_mib(name),
                memory_percent=self.percent(name),
                vcpus_committed=self.vcpus[name],
                vcpu_ratio=self.vcpus[name] / host.cpus,
            )
            for name, host in sorted(self.hosts.items())
        }

    def spread(self) -> float:
        if not self.targets:
            return 0.0
        percents = [self.percent(name) for name in self.targets]
        return max(percents) - min(percents)


def _unplaceable_reason(cluster: _Cluster, vm: VmSpec) -> t.Tuple[str, str]:
    """(constraint, sentence) for a VM no eligible host takes: the check that ruled out the last hosts."""
    if not cluster.targets:
        return "no_eligible_host", "no host can take VMs: every other host is under maintenance, excluded or evacuated"
    roomy = [name for name in cluster.targets if cluster.free_mib(name) + _EPSILON >= vm.memory_mib]
    if not roomy:
        most_free = max(cluster.free_mib(name) for name in cluster.targets)
        return "memory", "needs %s MiB; the eligible host with the most free memory has %s MiB (after reserve)" % (
            _fmt(vm.memory_mib), _fmt(most_free))
    cpu_ok = [name for name in roomy if cluster.vcpus_fit(vm, name)]
    if not cpu_ok:
        return "vcpus", (
            "its %d vCPUs would exceed vcpu_overcommit_ratio=%s on each of the %d hosts with room for its memory"
            % (vm.vcpus, _fmt(cluster.options.vcpu_overcommit_ratio, 2), len(roomy)))
    groups = sorted({cluster.group_conflict(vm, name) or "" for name in cpu_ok})
    return "anti_affinity", (
        "each of the %d hosts with room for it already holds a VM of its anti-affinity group %s"
        % (len(cpu_ok), ", ".join(groups)))


def _plan_evacuate(cluster: _Cluster) -> t.Tuple[t.List[t.Tuple[VmSpec, str, str]], list, list]:
    """Every VM of the evacuated or failed hosts to the eligible host with the most free memory; largest
    first, and in a recovery highest restart priority first."""
    recover = cluster.options.mode == "recover"
    moves: t.List[t.Tuple[VmSpec, str, str]] = []
    unplaceable: t.List[t.Dict[str, str]] = []
    not_moved: t.List[t.Dict[str, str]] = []
    leaving: t.List[VmSpec] = []
    for host in cluster.options.failed_hosts if recover else cluster.options.evacuate_hosts:
        for name in sorted(cluster.on_host[host]):
            vm = cluster.vms[name]
            if vm.pinned_reason:
                not_moved.append({"vm": name, "host": host, "reason": vm.pinned_reason})
            else:
                leaving.append(vm)
    leaving.sort(key=lambda vm: (-vm.restart_priority if recover else 0, -vm.memory_mib, vm.name))
    # Most free memory first; entries go stale when a host takes a VM and are skipped.
    heap = [(-cluster.free_mib(name), name) for name in cluster.targets]
    heapq.heapify(heap)
    for vm in leaving:
        rejected = []
        chosen = None
        while heap:
            free_key, name = heapq.heappop(heap)
            if -free_key != cluster.free_mib(name):
                heapq.heappush(heap, (-cluster.free_mib(name), name))
                continue
            if -free_key + _EPSILON < vm.memory_mib:
                rejected.append((free_key, name))
                break
            if cluster.vcpus_fit(vm, name) and cluster.group_conflict(vm, name) is None:
                chosen = name
                break
            rejected.append((free_key, name))
        for entry in rejected:
            heapq.heappush(heap, entry)
        source = cluster.location[vm.name]
        if chosen is None:
            constraint, reason = _unplaceable_reason(cluster, vm)
            unplaceable.append({"vm": vm.name, "host": source, "constraint": constraint, "reason": reason})
            continue
        cluster.move(vm, chosen)
        heapq.heappush(heap, (-cluster.free_mib(chosen), chosen))
        moves.append((vm, source, chosen))
    return moves, unplaceable, not_moved


class _LoadOrder:
    """The balanced hosts sorted by (memory percent, name), kept sorted as VMs move."""

    def __init__(self, cluster: _Cluster) -> None:
        self.cluster = cluster
        self.entries = sorted((cluster.percent(name), name) for name in cluster.targets)
        self.key = {name: percent for percent, name in self.entries}

    def update(self, host: str) -> None:
        del self.entries[bisect.bisect_left(self.entries, (self.key[host], host))]
        self.key[host] = self.cluster.percent(host)
        bisect.insort(self.entries, (self.key[host], host))

    def highest_except(self, skip: t.Tuple[str, str]) -> t.Optional[float]:
        for percent, name in reversed(self.entries):
            if name not in skip:
                return percent
        return None

    def lowest_except(self, skip: t.Tuple[str, str]) -> t.Optional[float]:
        for percent, name in self.entries:
            if name not in skip:
                return percent
        return None


def _spread_after(order: _LoadOrder, source: str, target: str, memory_mib: float) -> t.Tuple[float, float, float]:
    """(spread, |source - target|, max(source, target)) in percent if memory_mib moved from source to target."""
    cluster = order.cluster
    new_source = (cluster.memory[source] - memory_mib) / cluster.hosts[source].memory_capacity_mib * 100.0
    new_target = (cluster.memory[target] + memory_mib) / cluster.hosts[target].memory_capacity_mib * 100.0
    values = [new_source, new_target]
    skip = (source, target)
    highest = order.highest_except(skip)
    if highest is not None:
        values.append(highest)
        values.append(t.cast(float, order.lowest_except(skip)))
    return max(values) - min(values), abs(new_source - new_target), max(new_source, new_target)


def _plan_rebalance(cluster: _Cluster) -> t.Tuple[t.List[t.Tuple[VmSpec, str, str]], list, list]:
    options = cluster.options
    moves: t.List[t.Tuple[VmSpec, str, str]] = []
    not_moved: t.List[t.Dict[str, str]] = []
    movable: t.Dict[str, t.List[VmSpec]] = {}
    for host in cluster.targets:
        candidates = []
        for name in sorted(cluster.on_host[host]):
            vm = cluster.vms[name]
            if vm.pinned_reason:
                not_moved.append({"vm": name, "host": host, "reason": vm.pinned_reason})
            elif vm.recently_moved and options.hold_recently_moved:
                not_moved.append({"vm": name, "host": host,
                                  "reason": "moved recently; hold_recently_moved=true holds it back"})
            else:
                candidates.append(vm)
        movable[host] = candidates
    if len(cluster.targets) < 2:
        return moves, [], not_moved
    order = _LoadOrder(cluster)
    threshold = options.spread_threshold_percent
    while True:
        entries = order.entries
        spread = entries[-1][0] - entries[0][0]
        if spread <= threshold + _EPSILON:
            break
        top_percent = entries[-1][0]
        unique_min = entries[1][0] > entries[0][0] + _EPSILON
        best: t.Optional[t.Tuple[t.Tuple[float, float, str, str], VmSpec, str, str]] = None
        for source_percent, source in reversed(entries):
            at_top = source_percent >= top_percent - _EPSILON
            if at_top:
                # A host at the top may send a VM to any host below it.
                pool = [name for percent, name in entries if percent < source_percent - _EPSILON]
            elif unique_min and source != entries[0][1]:
                # Below the top, only raising the least loaded host lowers the spread.
                pool = [entries[0][1]]
            else:
                break
            for vm in movable[source]:
                found = 0
                for target in pool:
                    if found == TARGET_CANDIDATES:
                        break
                    if not cluster.fits(vm, target):
                        continue
                    found += 1
                    new_spread, gap, peak = _spread_after(order, source, target, vm.memory_mib)
                    if at_top:
                        # With several hosts at the top no single move lowers the spread: lowering one of
                        # them without raising the target to its level is progress, if the spread does not grow.
                        useful = peak < source_percent - _EPSILON and new_spread <= spread + _EPSILON
                    else:
                        useful = new_spread < spread - _EPSILON
                    if useful:
                        key = (round(new_spread, 9), round(gap, 9), vm.name, target)
                        if best is None or key < best[0]:
                            best = (key, vm, source, target)
            if best is not None:
                break
        if best is None:
            break
        _key, vm, source, target = best
        cluster.move(vm, target)
        movable[source].remove(vm)
        order.update(source)
        order.update(target)
        moves.append((vm, source, target))
    return moves, [], not_moved


def _assign_waves(moves: t.Sequence[t.Tuple[VmSpec, str, str]], options: PlanOptions) -> t.List[int]:
    """A wave (0-based) per move, in plan order; first fit within the limits and the freeing order."""
    per_host = options.max_parallel_per_host
    # A failed host sends nothing: its VMs restart elsewhere.
    sources_limited = options.mode != "recover"
    outgoing: t.Dict[t.Tuple[str, int], int] = {}
    incoming: t.Dict[t.Tuple[str, int], int] = {}
    sizes: t.List[int] = []
    last_departure: t.Dict[str, int] = {}
    waves = []
    first_open = 0
    for _vm, source, target in moves:
        # A move into a host waits for the moves out of it planned before: the plan counted their memory as free.
        wave = max(first_open, last_departure.get(target, -1) + 1)
        while True:
            if wave == len(sizes):
                sizes.append(0)
            if (sizes[wave] < options.max_parallel_total
                    and (not sources_limited or outgoing.get((source, wave), 0) < per_host)
                    and incoming.get((target, wave), 0) < per_host):
                break
            wave += 1
        sizes[wave] += 1
        outgoing[(source, wave)] = outgoing.get((source, wave), 0) + 1
        incoming[(target, wave)] = incoming.get((target, wave), 0) + 1
        last_departure[source] = max(last_departure.get(source, -1), wave)
        while first_open < len(sizes) and sizes[first_open] >= options.max_parallel_total:
            first_open += 1
        waves.append(wave)
    return waves


def estimate_move_s(vm: VmSpec, options: PlanOptions) -> float:
    """The fixed per-move overhead plus the pre-copy time from the convergence model (dirty rate 0 when unknown),
    after the copy of the VM's local disks (their whole size: libvirt copies unwritten ranges too)."""
    inputs = MigrationInputs(
        memory_mib=vm.memory_mib,
        dirty_rate_mibps=vm.dirty_rate_mibps or 0.0,
        bandwidth_mibps=options.bandwidth_mibps,
        max_downtime_ms=options.max_downtime_ms,
    )
    prediction, _candidates = choose_strategy(inputs, allow_postcopy=False)
    prediction = with_storage_copy(prediction, vm.disk_mib, options.bandwidth_mibps)
    return options.move_overhead_s + prediction.total_s


def _summary(plan_mode: str, moves: int, waves: int, total_s: float, window_s: t.Optional[float],
             fits: t.Optional[bool], unplaceable: int, not_moved: int, before: float, after: float) -> str:
    noun, verb = ("restart", "restarted") if plan_mode == "recover" else ("move", "moved")
    text = "%s: %d %s%s in %d wave%s, about %s s" % (
        plan_mode, moves, noun, "" if moves == 1 else "s", waves, "" if waves == 1 else "s", _fmt(total_s))
    if window_s is not None:
        text += " (%s the %s s window)" % ("fits" if fits else "does not fit", _fmt(window_s))
    text += "; %d unplaceable, %d not %s; memory spread %s%% -> %s%%" % (
        unplaceable, not_moved, verb, _fmt(before), _fmt(after))
    return text


def plan_placement(hosts: t.Sequence[HostSpec], vms: t.Sequence[VmSpec], options: PlanOptions) -> Plan:
    """Plan the moves of one evacuation or rebalance, or the restarts of a recovery; PlanError names the input
    at fault."""
    cluster = _Cluster(hosts, vms, options)
    load_before = cluster.loads()
    spread_before = cluster.spread()
    if options.mode in ("evacuate", "recover"):
        planned, unplaceable, not_moved = _plan_evacuate(cluster)
    else:
        planned, unplaceable, not_moved = _plan_rebalance(cluster)
    wave_of = _assign_waves(planned, options)
    estimates: t.Dict[t.Tuple[float, float, float], float] = {}
    moves = []
    for (vm, source, target), wave in zip(planned, wave_of):
        key = (vm.memory_mib, vm.dirty_rate_mibps or 0.0, vm.disk_mib)
        if key not in estimates:
            estimates[key] = options.move_overhead_s if options.mode == "recover" else estimate_move_s(vm, options)
        moves.append(Move(vm.name, vm.uuid, source, target, vm.memory_mib, estimates[key], wave + 1, vm.disk_mib))
    ordered = [move for _index, move in sorted(enumerate(moves), key=lambda item: (item[1].wave, item[0]))]
    wave_count = max(wave_of) + 1 if wave_of else 0
    waves: t.List[t.List[str]] = [[] for _wave in range(wave_count)]
    wave_s = [0.0] * wave_count
    # Moves through one host at once share its bandwidth: their copies add up on that host.
    copying: t.List[t.Dict[str, float]] = [{} for _wave in range(wave_count)]
    for move in ordered:
        waves[move.wave - 1].append(move.vm)
        wave_s[move.wave - 1] = max(wave_s[move.wave - 1], move.estimated_s)
        copy_s = max(move.estimated_s - options.move_overhead_s, 0.0)
        for host in (move.from_host, move.to_host):
            copying[move.wave - 1][host] = copying[move.wave - 1].get(host, 0.0) + copy_s
    for index, per_host in enumerate(copying):
        if per_host:
            wave_s[index] = max(wave_s[index], options.move_overhead_s + max(per_host.values()))
    total_s = sum(wave_s)
    fits = None if options.window_s is None else total_s <= options.window_s
    spread_after = cluster.spread()
    return Plan(
        mode=options.mode,
        moves=tuple(ordered),
        waves=tuple(tuple(wave) for wave in waves),
        wave_estimated_s=tuple(wave_s),
        load_before=load_before,
        load_after=cluster.loads(),
        spread_before_percent=spread_before,
        spread_after_percent=spread_after,
        spread_threshold_percent=options.spread_threshold_percent,
        unplaceable=tuple(unplaceable),
        not_moved=tuple(not_moved),
        estimated_total_s=total_s,
        window_s=options.window_s,
        fits_window=fits,
        summary=_summary(options.mode, len(ordered), wave_count, total_s, options.window_s, fits,
                         len(unplaceable), len(not_moved), spread_before, spread_after),
    )


def plan_from_data(
    hosts: t.Sequence[t.Mapping[str, t.Any]],
    vms: t.Sequence[t.Mapping[str, t.Any]],
    options: t.Mapping[str, t.Any],
) -> Plan:
    """parse_input then plan_placement: what the module calls."""
    host_specs, vm_specs, plan_options = parse_input(hosts, vms, options)
    return plan_placement(host_specs, vm_specs, plan_options)
