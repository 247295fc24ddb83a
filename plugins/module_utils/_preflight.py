# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pre-flight checks: can a domain live-migrate to a host, and if not, why.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

Gathering (`gather_preflight`) reads both hosts into plain data; the checks
(`check_*`) and their aggregation (`evaluate`) are pure functions over that
data returning findings. Each finding names the option that changes its
outcome, or none when only a change on the hosts or the domain does.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import time
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.strata.migration.plugins.module_utils._convergence import (
    DEFAULT_MAX_DOWNTIME_MS,
    MemoryEstimate,
    MigrationInputs,
    choose_strategy,
    estimate_memory_to_send,
)
from ansible_collections.strata.migration.plugins.module_utils._engine import COPY_STORAGE_CHOICES
from ansible_collections.strata.migration.plugins.module_utils._features import version_tuple
from ansible_collections.strata.migration.plugins.module_utils._inventory import (
    DirtyRateMeasurement,
    DomainFacts,
    DomainNotFoundError,
    DomainSummary,
    HostFacts,
    InventoryParseError,
    domain_facts,
    gather_host_facts,
    resolve_dirty_rate_timeout,
)
from ansible_collections.strata.migration.plugins.module_utils._libvirt import (
    LibvirtClient,
    LibvirtError,
    LibvirtUriError,
    StrataError,
    describe_libvirt_error,
    is_unsupported,
    libvirt_error_code,
    find_domain,
    redact_uri,
    validate_uri,
)

PASS = "pass"
WARN = "warn"
FAIL = "fail"

# The stable check codes, in the order findings are reported.
CHECKS = (
    "maintenance",
    "distinct_hosts",
    "domain_running",
    "name_collision",
    "hypervisor_type",
    "versions",
    "domain_type",
    "machine_type",
    "cpu",
    "memory",
    "storage",
    "networks",
    "devices",
    "convergence",
)

# libvirt values (stable ABI), spelled out so the pure code needs no binding.
CPU_COMPARE_ERROR = -1
CPU_COMPARE_INCOMPATIBLE = 0
CPU_COMPARE_IDENTICAL = 1
CPU_COMPARE_SUPERSET = 2
COMPARE_CPU_FAIL_INCOMPATIBLE = 1
ERR_CPU_INCOMPATIBLE = 91
ERR_NO_STORAGE_POOL = 49
ERR_NO_STORAGE_VOL = 50
MIB = 1024 * 1024
LIST_INTERFACES_ACTIVE = 2

# Bandwidth assumed for the prediction when bandwidth_mibps is 0: a 10 Gbit/s link.
DEFAULT_PREDICTION_BANDWIDTH_MIBPS = 1192

_ACTIVE_STATES = ("running", "blocked", "paused", "shutdown", "pmsuspended")
# Disk source types libvirt cannot create on the destination for a storage copy.
_UNCOPYABLE_DISK_TYPES = ("dir", "nvme", "vhostuser", "vhostvdpa")
# Pool types whose volumes every host attached to the pool sees: libvirt migrates their disks
# without a copy. A dir or fs pool is shared only when its folder is on a filesystem libvirt
# recognizes as shared (NFS, GFS2, OCFS2, CephFS, GlusterFS, GPFS ...), which only the hosts know.
_SHARED_POOL_TYPES = ("netfs", "gluster", "rbd", "iscsi", "iscsi-direct", "sheepdog", "vstorage")
# Interfaces whose source is handled by the devices check (host hardware).
_DEVICE_INTERFACE_TYPES = ("hostdev", "vdpa")


class PreflightError(StrataError):
    """The pre-flight could not gather what it needs (bad options, unreachable host)."""


@dataclasses.dataclass
class Finding:
    """The outcome of one check; override names the option that changes it, if any."""

    check: str
    status: str
    message: str
    override: t.Optional[str] = None

    def to_dict(self) -> t.Dict[str, t.Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PreflightOptions:
    name: str
    reserve_mib: int = 0
    dest_capacity_mib: t.Optional[int] = None
    compaction_restore: bool = False
    copy_storage: str = "none"
    migrate_disks: t.Optional[t.Tuple[str, ...]] = None
    allow_unsafe: bool = False
    dest_in_maintenance: bool = False
    measure_dirty_rate_s: int = 0
    dirty_rate_timeout_s: t.Optional[int] = None
    bandwidth_mibps: int = 0
    max_downtime_ms: int = DEFAULT_MAX_DOWNTIME_MS
    allow_postcopy: bool = False
    qemu_overhead_mib: t.Optional[int] = None


@dataclasses.dataclass
class MigrationXml:
    """What the pre-flight reads from a domain's XML beyond DomainFacts.

    cpu_xml: the <cpu> element as libvirt reports it (for a running domain,
    with the features QEMU was started with), for compareHypervisorCPU.
    """

    emulator: t.Optional[str] = None
    cpu_xml: t.Optional[str] = None
    invtsc_without_frequency: bool = False
    shmems: t.List[t.Tuple[str, t.Optional[str]]] = dataclasses.field(default_factory=list)
    virtiofs_targets: t.List[str] = dataclasses.field(default_factory=list)
    transient_disks: t.List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CpuProbe:
    """compareHypervisorCPU on the destination: result code or the error text."""

    compared: bool
    result: t.Optional[int] = None
    error: t.Optional[str] = None


@dataclasses.dataclass
class CapabilitiesProbe:
    """getDomainCapabilities on the destination, without and then with the machine type."""

    domain_type_error: t.Optional[str] = None
    machine_checked: bool = False
    machine_error: t.Optional[str] = None


@dataclasses.dataclass
class DiskPlacement:
    """Where one non-empty disk lives as seen from the destination.

    location: shared (network disk or <shareable/>), destination (the path or
    pool volume is a volume of a storage pool on the destination) or local.
    pool: the destination pool holding it, or for a local disk the pool a
    storage copy would be created in (None when there is none); pool_type its
    type (dir, netfs ...) and pool_available_bytes its free space. allocation_bytes:
    what the disk holds on the source, what a copy writes; capacity_bytes: its size
    as the guest sees it (both None when unread).
    """

    target: t.Optional[str]
    source: t.Optional[str]
    type: t.Optional[str]
    readonly: bool
    location: str
    pool: t.Optional[str] = None
    pool_type: t.Optional[str] = None
    pool_available_bytes: t.Optional[int] = None
    allocation_bytes: t.Optional[int] = None
    capacity_bytes: t.Optional[int] = None


@dataclasses.dataclass
class PreflightData:
    """Everything the checks read, as plain data."""

    source_uri: str
    dest_uri: str
    source: HostFacts
    destination: HostFacts
    domain_name: str
    domain: t.Optional[DomainFacts] = None
    xml: MigrationXml = dataclasses.field(default_factory=MigrationXml)
    snapshot_count: int = 0
    cpu: CpuProbe = dataclasses.field(default_factory=lambda: CpuProbe(compared=False))
    capabilities: CapabilitiesProbe = dataclasses.field(default_factory=CapabilitiesProbe)
    disks: t.List[DiskPlacement] = dataclasses.field(default_factory=list)
    dest_interfaces: t.Optional[t.List[str]] = None
    dirty_rate_mibps: t.Optional[float] = None


@dataclasses.dataclass
class PreflightReport:
    domain: str
    passed: bool
    already_migrated: bool
    findings: t.List[Finding]
    prediction: t.Optional[t.Dict[str, t.Any]]
    source: t.Dict[str, t.Any]
    destination: t.Dict[str, t.Any]

    @property
    def failed_checks(self) -> t.List[str]:
        return [f.check for f in self.findings if f.status == FAIL]

    @property
    def warned_checks(self) -> t.List[str]:
        return [f.check for f in self.findings if f.status == WARN]

    def to_result(self) -> t.Dict[str, t.Any]:
        return {
            "passed": self.passed,
            "already_migrated": self.already_migrated,
            "findings": [f.to_dict() for f in self.findings],
            "failed_checks": self.failed_checks,
            "warned_checks": self.warned_checks,
            "prediction": self.prediction,
            "source": self.source,
            "destination": self.destination,
        }

    def failure_message(self) -> str:
        """One line per failing check, each with the option that overrides it (or none)."""
        failing = [f for f in self.findings if f.status == FAIL]
        parts = []
        for finding in failing:
            how = "override: %s" % finding.override if finding.override else "no option overrides it"
            parts.append("%s (%s): %s" % (finding.check, how, finding.message))
        return "domain '%s' cannot live-migrate from %s to %s; %d check(s) failed: %s" % (
            self.domain,
            _label(self.source),
            _label(self.destination),
            len(failing),
            "; ".join(parts),
        )


# ---- options ---------------------------------------------------------------


def _non_negative(value: int, option: str) -> None:
    if value < 0:
        raise PreflightError("%s must be 0 or more, got %d" % (option, value), option=option)


def preflight_options(
    name: str,
    dest_uri: str,
    reserve_mib: int = 0,
    dest_capacity_mib: t.Optional[int] = None,
    compaction_restore: bool = False,
    copy_storage: str = "none",
    migrate_disks: t.Optional[t.Sequence[str]] = None,
    allow_unsafe: bool = False,
    dest_in_maintenance: bool = False,
    measure_dirty_rate_s: int = 0,
    bandwidth_mibps: int = 0,
    max_downtime_ms: int = DEFAULT_MAX_DOWNTIME_MS,
    allow_postcopy: bool = False,
    qemu_overhead_mib: t.Optional[int] = None,
) -> PreflightOptions:
    """Check the options before any connection is opened."""
    if not name:
        raise PreflightError("the name option must name a domain", option="name")
    try:
        validate_uri(dest_uri)
    except LibvirtUriError as exc:
        raise PreflightError("dest_uri: %s" % exc, option="dest_uri", **exc.details) from exc
    _non_negative(reserve_mib, "reserve_mib")
    _non_negative(bandwidth_mibps, "bandwidth_mibps")
    if qemu_overhead_mib is not None:
        _non_negative(qemu_overhead_mib, "qemu_overhead_mib")
    if dest_capacity_mib is not None and dest_capacity_mib < 1:
        raise PreflightError(
            "dest_capacity_mib must be at least 1 (MiB) when given, got %d" % dest_capacity_mib,
            option="dest_capacity_mib",
        )
    if copy_storage not in COPY_STORAGE_CHOICES:
        raise PreflightError(
            "copy_storage must be one of %s, got '%s'" % (", ".join(COPY_STORAGE_CHOICES), copy_storage),
            option="copy_storage",
        )
    if migrate_disks is not None and copy_storage == "none":
        raise PreflightError(
            "migrate_disks names the disks a storage copy takes along: set copy_storage to all or incremental",
            option="migrate_disks",
        )
    if max_downtime_ms < 1:
        raise PreflightError(
            "max_downtime_ms must be at least 1, got %d" % max_downtime_ms, option="max_downtime_ms"
        )
    return PreflightOptions(
        name=name,
        reserve_mib=reserve_mib,
        dest_capacity_mib=dest_capacity_mib,
        compaction_restore=compaction_restore,
        copy_storage=copy_storage,
        migrate_disks=tuple(migrate_disks) if migrate_disks is not None else None,
        allow_unsafe=allow_unsafe,
        dest_in_maintenance=dest_in_maintenance,
        measure_dirty_rate_s=measure_dirty_rate_s,
        dirty_rate_timeout_s=resolve_dirty_rate_timeout(measure_dirty_rate_s),
        bandwidth_mibps=bandwidth_mibps,
        max_downtime_ms=max_downtime_ms,
        allow_postcopy=allow_postcopy,
        qemu_overhead_mib=qemu_overhead_mib,
    )


# ---- pure helpers ----------------------------------------------------------


def _label(summary: t.Mapping[str, t.Any]) -> str:
    return "host '%s' (%s)" % (summary.get("hostname") or "unknown", summary.get("uri"))


def host_summary(facts: HostFacts, uri: str) -> t.Dict[str, t.Any]:
    """What the result says about a host: who it is, without credentials."""
    return {
        "hostname": facts.hostname,
        "uri": redact_uri(uri),
        "host_uuid": facts.host_uuid,
        "libvirt_version": facts.libvirt_version,
        "hypervisor_version": facts.hypervisor_version,
        "memory_available_mib": facts.memory_available_mib,
    }


def _active(state: t.Optional[str]) -> bool:
    return state in _ACTIVE_STATES


def parse_migration_xml(document: str) -> MigrationXml:
    """Read the emulator, the <cpu> element and live-migration blockers from domain XML."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise InventoryParseError("cannot parse domain XML from libvirt: %s" % exc) from exc
    emulator = root.find("devices/emulator")
    cpu = root.find("cpu")
    cpu_xml = None
    invtsc = False
    if cpu is not None:
        cpu_xml = ET.tostring(cpu, encoding="unicode").strip()
        invtsc = any(
            feature.get("name") == "invtsc" and feature.get("policy", "require") in ("require", "force")
            for feature in cpu.findall("feature")
        )
    tsc_frequency = any(
        timer.get("name") == "tsc" and timer.get("frequency") not in (None, "", "0")
        for timer in root.findall("clock/timer")
    )
    shmems = []
    for shmem in root.findall("devices/shmem"):
        role = shmem.find("role")
        shmems.append((shmem.get("name") or "?", role.get("type") if role is not None else shmem.get("role")))
    virtiofs = []
    for filesystem in root.findall("devices/filesystem"):
        driver = filesystem.find("driver")
        if driver is not None and driver.get("type") == "virtiofs":
            target = filesystem.find("target")
            virtiofs.append((target.get("dir") if target is not None else None) or "?")
    transient = []
    for disk in root.findall("devices/disk"):
        if disk.find("transient") is not None:
            target = disk.find("target")
            transient.append((target.get("dev") if target is not None else None) or "?")
    emulator_path = (emulator.text or "").strip() if emulator is not None else ""
    return MigrationXml(
        emulator=emulator_path or None,
        cpu_xml=cpu_xml,
        invtsc_without_frequency=invtsc and not tsc_frequency,
        shmems=shmems,
        virtiofs_targets=virtiofs,
        transient_disks=transient,
    )


def parse_pool_target_path(document: str) -> t.Optional[str]:
    """Return the target path of a storage pool's XML, normalised, or None."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise InventoryParseError("cannot parse storage pool XML from libvirt: %s" % exc) from exc
    path = root.find("target/path")
    text = (path.text or "").strip() if path is not None else ""
    return posixpath.normpath(text) if text else None


def memory_to_send(domain: DomainFacts, qemu_overhead_mib: t.Optional[int] = None) -> MemoryEstimate:
    """Guest memory a migration would send as normal pages (see estimate_memory_to_send).

    Without balloon statistics nothing better than the current memory is known.
    """
    balloon = domain.balloon
    if balloon.actual_mib and balloon.unused_mib is not None:
        used = max(balloon.actual_mib - balloon.unused_mib, 0)
        return estimate_memory_to_send(balloon.actual_mib, used, balloon.rss_mib, qemu_overhead_mib)
    current = domain.memory_current_mib
    return MemoryEstimate(current, current, current, "current", "no balloon statistics: the current memory")


def _dest_domains(data: PreflightData) -> t.Tuple[t.List[DomainSummary], t.List[DomainSummary]]:
    """Destination domains with the domain's UUID, and with its name."""
    uuid = data.domain.uuid if data.domain is not None else None
    by_uuid = [d for d in data.destination.domains if uuid is not None and d.uuid == uuid]
    by_name = [d for d in data.destination.domains if d.name == data.domain_name]
    return by_uuid, by_name


def _same_host_reasons(data: PreflightData) -> t.List[str]:
    source, destination = data.source, data.destination
    reasons = []
    if source.host_uuid and source.host_uuid == destination.host_uuid:
        reasons.append("the same host UUID %s" % source.host_uuid)
    if source.hostname and source.hostname == destination.hostname:
        reasons.append("the same hostname '%s'" % source.hostname)
    if redact_uri(data.source_uri) == redact_uri(data.dest_uri):
        reasons.append("the same URI")
    return reasons


def already_migrated(data: PreflightData) -> t.Optional[DomainSummary]:
    """The destination's copy when the domain already runs there and not on the source.

    Matched by UUID, or by name when the source no longer defines the domain.
    """
    if _same_host_reasons(data):
        return None
    if data.domain is not None and _active(data.domain.state):
        return None
    by_uuid, by_name = _dest_domains(data)
    candidates = by_uuid if data.domain is not None else by_name
    for candidate in candidates:
        if candidate.state == "running":
            return candidate
    return None


# ---- checks: pure functions over PreflightData -----------------------------


def check_maintenance(data: PreflightData, options: PreflightOptions) -> Finding:
    if options.dest_in_maintenance:
        return Finding(
            "maintenance", FAIL,
            "host '%s' is under maintenance (dest_in_maintenance); choose another destination"
            % data.destination.hostname,
            "dest_in_maintenance",
        )
    return Finding("maintenance", PASS, "host '%s' is not under maintenance" % data.destination.hostname)


def check_distinct_hosts(data: PreflightData, options: PreflightOptions) -> Finding:
    reasons = _same_host_reasons(data)
    if reasons:
        return Finding(
            "distinct_hosts", FAIL,
            "source and destination are the same host (%s); a domain cannot migrate to where it is"
            % ", ".join(reasons),
        )
    return Finding(
        "distinct_hosts", PASS,
        "source '%s' and destination '%s' are different hosts" % (data.source.hostname, data.destination.hostname),
    )


def check_domain_running(data: PreflightData, options: PreflightOptions) -> Finding:
    domain = data.domain
    if domain is None:
        return Finding(
            "domain_running", FAIL,
            "domain '%s' is not defined on the source host '%s'" % (data.domain_name, data.source.hostname),
        )
    if domain.job_running:
        return Finding(
            "domain_running", FAIL,
            "domain '%s' has a job in progress (a migration, save or dump); wait for it to end" % domain.name,
        )
    if domain.state == "running":
        return Finding("domain_running", PASS, "domain '%s' is running with no job in progress" % domain.name)
    if domain.state == "paused":
        return Finding(
            "domain_running", WARN,
            "domain '%s' is paused; it migrates live and stays paused on the destination" % domain.name,
        )
    return Finding(
        "domain_running", FAIL,
        "domain '%s' is %s, not running: live migration needs a running domain" % (domain.name, domain.state),
    )


def check_name_collision(data: PreflightData, options: PreflightOptions) -> Finding:
    dest_host = data.destination.hostname
    if _same_host_reasons(data):
        return Finding("name_collision", PASS, "not checked: source and destination are the same host")
    there = already_migrated(data)
    if there is not None:
        if data.domain is not None:
            return Finding(
                "name_collision", WARN,
                "already there: domain '%s' runs on '%s'; the source still holds a %s definition of it, "
                "undefine it there so it is defined on one host only" % (there.name, dest_host, data.domain.state),
            )
        return Finding("name_collision", PASS, "already there: domain '%s' runs on '%s'" % (there.name, dest_host))
    by_uuid, by_name = _dest_domains(data)
    domain = data.domain
    for other in by_name:
        if domain is None or other.uuid != domain.uuid:
            return Finding(
                "name_collision", FAIL,
                "host '%s' already has a domain named '%s' (UUID %s, %s)%s; remove or rename it there"
                % (dest_host, other.name, other.uuid, other.state,
                   "" if domain is None else ", a different domain from the source's (UUID %s)" % domain.uuid),
            )
    for other in by_uuid:
        if other.name != data.domain_name:
            return Finding(
                "name_collision", FAIL,
                "host '%s' already has domain '%s' with this domain's UUID %s; remove it there"
                % (dest_host, other.name, other.uuid),
            )
        if _active(other.state):
            return Finding(
                "name_collision", FAIL,
                "domain '%s' is %s on '%s' while it is %s on the source; a migration may be in progress"
                % (other.name, other.state, dest_host, domain.state if domain is not None else "absent"),
            )
        return Finding(
            "name_collision", WARN,
            "host '%s' holds an inactive definition of domain '%s' (same UUID); the migration takes it over"
            % (dest_host, other.name),
        )
    return Finding(
        "name_collision", PASS,
        "no domain on '%s' has the name '%s'%s" % (
            dest_host, data.domain_name, " or the UUID %s" % domain.uuid if domain is not None else ""),
    )


def check_hypervisor_type(data: PreflightData, options: PreflightOptions) -> Finding:
    source, destination = data.source.hypervisor_type, data.destination.hypervisor_type
    if source != destination:
        return Finding(
            "hypervisor_type", FAIL,
            "the source runs %s and the destination %s; live migration needs the same hypervisor"
            % (source, destination),
        )
    return Finding("hypervisor_type", PASS, "both hosts run %s" % source)


def check_versions(data: PreflightData, options: PreflightOptions) -> Finding:
    source, destination = data.source, data.destination
    older = []
    if version_tuple(destination.libvirt_version) < version_tuple(source.libvirt_version):
        older.append("libvirt %s < %s" % (destination.libvirt_version, source.libvirt_version))
    if version_tuple(destination.hypervisor_version) < version_tuple(source.hypervisor_version):
        older.append("%s %s < %s" % (
            destination.hypervisor_type, destination.hypervisor_version, source.hypervisor_version))
    if older:
        return Finding(
            "versions", WARN,
            "the destination is older than the source (%s); migrating to an older version is not always "
            "supported" % ", ".join(older),
        )
    return Finding(
        "versions", PASS,
        "destination libvirt %s and %s %s are not older than the source's (%s, %s)" % (
            destination.libvirt_version, destination.hypervisor_type, destination.hypervisor_version,
            source.libvirt_version, source.hypervisor_version),
    )


def check_domain_type(data: PreflightData, options: PreflightOptions) -> Finding:
    domain = data.domain
    kind = "%s/%s" % (domain.domain_type, domain.arch) if domain is not None else "?"
    if data.capabilities.domain_type_error:
        return Finding(
            "domain_type", FAIL,
            "the destination cannot run domain type %s (emulator %s): %s"
            % (kind, data.xml.emulator or "default", data.capabilities.domain_type_error),
        )
    if domain is not None and domain.domain_type and domain.arch:
        offered = [
            guest for guest in data.destination.guests
            if guest.arch == domain.arch and domain.domain_type in guest.domain_types
        ]
        if not offered:
            return Finding(
                "domain_type", FAIL,
                "the destination offers no domain type %s in its capabilities" % kind,
            )
    return Finding("domain_type", PASS, "the destination supports domain type %s" % kind)


_VERSIONED_MACHINE = re.compile(r"^(?P<family>.+-)(?P<version>\d+(?:\.\d+)*)$")


def newest_machine_of_family(machine: str, offered: t.Iterable[str]) -> t.Optional[str]:
    """The newest versioned machine type of machine's family among offered ("pc-i440fx-7.2" for
    "pc-i440fx-10.0"), or None when machine is not versioned or none of its family is offered."""
    wanted = _VERSIONED_MACHINE.match(machine)
    if wanted is None:
        return None
    family = [m for m in (_VERSIONED_MACHINE.match(name) for name in offered)
              if m is not None and m.group("family") == wanted.group("family")]
    if not family:
        return None
    newest = max(family, key=lambda m: tuple(int(part) for part in m.group("version").split(".")))
    return newest.group(0)


def check_machine_type(data: PreflightData, options: PreflightOptions) -> Finding:
    machine = data.domain.machine_type if data.domain is not None else None
    probe = data.capabilities
    if machine is None:
        return Finding("machine_type", PASS, "the domain names no machine type; the destination's default is used")
    if probe.machine_error:
        arch = data.domain.arch if data.domain is not None else None
        offered = [name for guest in data.destination.guests if guest.arch == arch for name in guest.machines]
        pinned = newest_machine_of_family(machine, offered)
        if pinned == machine:  # offered but refused: the version is not the problem
            pinned = None
        remedy = (
            "; its QEMU (%s) is older than the one the guest was started on: pin a machine type both hosts run, "
            "such as '%s' (the newest of that family there), in the domain's <os><type machine=...>, which the "
            "guest takes at its next cold boot" % (data.destination.hypervisor_version or "unknown", pinned)
            if pinned else ""
        )
        return Finding(
            "machine_type", FAIL,
            "machine type '%s' is not supported on the destination: %s%s" % (machine, probe.machine_error, remedy),
        )
    if not probe.machine_checked:
        return Finding(
            "machine_type", WARN,
            "machine type '%s' was not checked: the destination cannot run the domain type" % machine,
        )
    return Finding("machine_type", PASS, "the destination supports machine type '%s'" % machine)


def check_cpu(data: PreflightData, options: PreflightOptions) -> Finding:
    domain = data.domain
    probe = data.cpu
    model = domain.cpu_model if domain is not None and domain.cpu_model else None
    what = "CPU model '%s'" % model if model else "the domain's CPU definition"
    if not probe.compared:
        return Finding("cpu", PASS, "the domain has no <cpu> definition; QEMU's default CPU is used")
    if probe.error and data.capabilities.machine_error:
        # libvirt compares CPUs for a machine type; one the destination lacks fails the comparison too.
        return Finding("cpu", WARN, "%s was not checked: the destination does not run machine type '%s' "
                       "(see machine_type)" % (what, domain.machine_type if domain is not None else None))
    if probe.error:
        return Finding("cpu", FAIL, "%s cannot be provided on the destination: %s" % (what, probe.error))
    if probe.result in (CPU_COMPARE_INCOMPATIBLE, CPU_COMPARE_ERROR, None):
        return Finding("cpu", FAIL, "%s is incompatible with the destination" % what)
    if domain is not None and domain.cpu_mode == "host-passthrough":
        return Finding(
            "cpu", WARN,
            "host-passthrough CPU: the guest sees the source host's CPU, so the destination needs an identical "
            "CPU, microcode and kernel; libvirt cannot verify that",
        )
    return Finding("cpu", PASS, "%s is usable on the destination" % what)


def committed_memory_mib(data: PreflightData) -> t.Tuple[int, int]:
    """(MiB, count) committed to the destination's active domains, at their maximum memory."""
    own_uuid = data.domain.uuid if data.domain is not None else None
    active = [d for d in data.destination.domains if _active(d.state) and d.uuid != own_uuid]
    return sum(d.memory_max_mib for d in active), len(active)


def check_memory(data: PreflightData, options: PreflightOptions) -> Finding:
    domain = data.domain
    if domain is None:
        return Finding("memory", WARN, "not checked: the domain is not on the source")
    if options.compaction_restore:
        needed, basis = domain.memory_max_mib, "maximum memory, restored after compaction"
    else:
        needed, basis = domain.memory_current_mib, "current memory"
    reserve = options.reserve_mib
    available = data.destination.memory_available_mib
    free_room = available - reserve
    limits = ["%d MiB available less %d MiB reserve = %d MiB" % (available, reserve, free_room)]
    capacity_room = None
    if options.dest_capacity_mib is not None:
        committed, count = committed_memory_mib(data)
        capacity_room = options.dest_capacity_mib - committed - reserve
        limits.append(
            "declared capacity %d MiB less %d MiB committed to %d running domain(s) less %d MiB reserve = %d MiB"
            % (options.dest_capacity_mib, committed, count, reserve, capacity_room)
        )
    room = free_room if capacity_room is None else min(free_room, capacity_room)
    summary = "domain '%s' needs %d MiB (%s); destination room: %s" % (domain.name, needed, basis, "; ".join(limits))
    if needed <= room:
        return Finding("memory", PASS, summary)
    override = None
    if capacity_room is not None and capacity_room < needed <= free_room:
        override = "dest_capacity_mib"
    elif reserve and needed <= min(available, capacity_room + reserve if capacity_room is not None else available):
        override = "reserve_mib"
    elif options.compaction_restore and domain.memory_current_mib <= room:
        override = "compaction_restore"
    return Finding("memory", FAIL, "too little memory: " + summary, override)


def _disk_name(disk: DiskPlacement) -> str:
    return "%s (%s)" % (disk.target or "?", disk.source)


def disks_to_copy(disks: t.Sequence[DiskPlacement], options: PreflightOptions) -> t.List[str]:
    """Targets of the disks a storage copy takes along: those named in migrate_disks, else every
    local writable disk; none without copy_storage."""
    if options.copy_storage == "none":
        return []
    if options.migrate_disks is not None:
        return list(options.migrate_disks)
    return [d.target for d in disks if d.location == "local" and not d.readonly and d.target]


def _mib_text(value: t.Optional[int]) -> str:
    return "?" if value is None else "%d MiB" % -(-value // MIB)


def _disk_verdict(disk: DiskPlacement, options: PreflightOptions) -> t.Tuple[str, str, t.Optional[str]]:
    """(status, note, override) for one disk."""
    name = _disk_name(disk)
    named = options.migrate_disks is not None and disk.target in options.migrate_disks
    if named and (disk.location == "shared" or disk.pool_type in _SHARED_POOL_TYPES):
        return FAIL, (
            "%s is in migrate_disks, but the destination already reaches it: a copy would write over the disk "
            "the guest is using; leave it out of migrate_disks" % name
        ), None
    if named and disk.location == "destination":
        return WARN, (
            "%s is in migrate_disks and an image at the same path is in pool '%s' on the destination: the copy "
            "writes over it, which is right only when it is a stale copy, not the image the guest uses seen "
            "through storage both hosts share (then leave it out)" % (name, disk.pool)
        ), None
    if disk.location == "shared":
        return PASS, "%s is shared storage" % name, None
    if disk.location == "destination":
        if disk.pool_type in _SHARED_POOL_TYPES:
            return PASS, "%s is a volume of %s pool '%s', shared with the destination" % (name, disk.pool_type, disk.pool), None
        if options.allow_unsafe:
            return WARN, (
                "%s is a volume of pool '%s' on the destination too; allow_unsafe=true tells libvirt not to check "
                "that its storage is shared: it must really be, or the guest's disk is corrupted" % (name, disk.pool)
            ), None
        return WARN, (
            "%s is a volume of %s pool '%s' on the destination too: libvirt migrates it only when the folder is on "
            "a filesystem it knows is shared (NFS, GFS2, OCFS2, CephFS, GlusterFS, GPFS) and refuses otherwise; "
            "allow_unsafe=true overrides that, for storage both hosts really share"
            % (name, disk.pool_type or "a", disk.pool)
        ), None
    if disk.readonly:
        return FAIL, (
            "%s is a read-only local %s: storage copies skip read-only disks, so the image must exist at the same "
            "path on the destination (in one of its storage pools)" % (name, disk.type)
        ), None
    if options.copy_storage == "none":
        return FAIL, "%s is local to the source (%s)" % (name, disk.type), "copy_storage"
    if options.migrate_disks is not None and not named:
        return FAIL, "%s is local to the source and not in migrate_disks, so it would be left behind" % name, (
            "migrate_disks")
    if disk.type in _UNCOPYABLE_DISK_TYPES:
        return FAIL, "%s is a local %s disk, which a storage copy cannot create on the destination" % (
            name, disk.type), None
    if disk.type == "block":
        return WARN, "%s is a local block device: copied, but the device must exist on the destination" % name, None
    if disk.pool is None:
        if disk.type == "volume":
            need = "storage pool '%s'" % (disk.source or "").split("/")[0]
        else:
            need = "a storage pool with target path '%s'" % posixpath.dirname(disk.source or "")
        return FAIL, (
            "%s is local, and libvirt creates the copy in a storage pool of the destination: define %s there"
            % (name, need)
        ), None
    return WARN, "%s is local: %s copied into pool '%s' on the destination (copy_storage=%s)" % (
        name, _mib_text(disk.allocation_bytes), disk.pool, options.copy_storage), None


def _pool_space_verdicts(disks: t.Sequence[DiskPlacement], options: PreflightOptions) -> t.List[t.Tuple[str, str, t.Optional[str]]]:
    """A FAIL for each destination pool with less free space than the copies need.

    libvirt creates each copy fully allocated (qemu-img preallocation=falloc) before it copies, so
    a copy needs the disk's whole size; once created, the copy cannot run out of space.
    """
    copied = set(disks_to_copy(disks, options))
    needs: t.Dict[str, t.List[DiskPlacement]] = {}
    for disk in disks:
        if disk.target in copied and disk.location == "local" and disk.pool and disk.capacity_bytes is not None:
            needs.setdefault(disk.pool, []).append(disk)
    verdicts: t.List[t.Tuple[str, str, t.Optional[str]]] = []
    for pool, pool_disks in sorted(needs.items()):
        needed = sum(d.capacity_bytes or 0 for d in pool_disks)
        available = pool_disks[0].pool_available_bytes
        if available is not None and needed > available:
            verdicts.append((FAIL, (
                "pool '%s' on the destination has %s free, and the copy of %s needs %s (libvirt creates it fully "
                "allocated)" % (pool, _mib_text(available), ", ".join(d.target or "?" for d in pool_disks),
                                _mib_text(needed))), None))
    return verdicts


def check_storage(data: PreflightData, options: PreflightOptions) -> Finding:
    if not data.disks:
        if options.migrate_disks:
            return Finding("storage", FAIL, "migrate_disks names %s, but the domain has no disk with a medium"
                           % ", ".join(options.migrate_disks), "migrate_disks")
        return Finding("storage", PASS, "the domain has no disks with a medium")
    verdicts = [_disk_verdict(disk, options) for disk in data.disks]
    known = {disk.target for disk in data.disks}
    unknown = [target for target in options.migrate_disks or () if target not in known]
    if unknown:
        verdicts.append((FAIL, "migrate_disks names %s, which the domain has no disk with a medium for (it has %s)"
                         % (", ".join(unknown), ", ".join(sorted(t for t in known if t))), "migrate_disks"))
    verdicts.extend(_pool_space_verdicts(data.disks, options))
    notes = "; ".join(note for _status, note, _override in verdicts)
    failing = [v for v in verdicts if v[0] == FAIL]
    if failing:
        overrides = {override for _status, _note, override in failing}
        override = overrides.pop() if len(overrides) == 1 else None
        return Finding("storage", FAIL, notes, override)
    if any(v[0] == WARN for v in verdicts):
        return Finding("storage", WARN, notes)
    return Finding("storage", PASS, notes)


def check_networks(data: PreflightData, options: PreflightOptions) -> Finding:
    domain = data.domain
    interfaces = domain.interfaces if domain is not None else []
    networks = {n.name: n for n in data.destination.networks}
    bridges = {n.bridge for n in data.destination.networks if n.bridge and n.active}
    host_interfaces = set(data.dest_interfaces) if data.dest_interfaces is not None else None
    problems: t.List[str] = []
    unverified: t.List[str] = []
    used: t.List[str] = []
    for interface in interfaces:
        source = interface.source
        if interface.type in _DEVICE_INTERFACE_TYPES or not source:
            continue
        if interface.type == "network":
            used.append("network '%s'" % source)
            network = networks.get(source)
            if network is None:
                problems.append("network '%s' does not exist on the destination: define it there with the same "
                                "name" % source)
            elif not network.active:
                problems.append("network '%s' is not active on the destination: start it there" % source)
        elif interface.type in ("bridge", "direct"):
            kind = "bridge" if interface.type == "bridge" else "host interface"
            used.append("%s '%s'" % (kind, source))
            if source in bridges or (host_interfaces is not None and source in host_interfaces):
                continue
            if host_interfaces is None:
                unverified.append("%s '%s' (the destination cannot list its interfaces)" % (kind, source))
            else:
                problems.append("%s '%s' does not exist or is down on the destination: create it there"
                                % (kind, source))
    if problems:
        return Finding("networks", FAIL, "; ".join(problems))
    if unverified:
        return Finding("networks", WARN, "not verified: %s" % "; ".join(unverified))
    if not used:
        return Finding("networks", PASS, "the domain uses no networks or bridges")
    return Finding("networks", PASS, "present and active on the destination: %s" % ", ".join(used))


def host_device_findings(domain: DomainFacts) -> t.Tuple[t.List[str], t.List[str]]:
    """The domain's host devices that block a migration, and those that only need care (USB)."""
    blockers: t.List[str] = []
    cautions: t.List[str] = []
    for hostdev in domain.hostdevs:
        what = "host device %s %s" % (hostdev.type or "?", hostdev.address or "")
        if hostdev.mode == "subsystem" and hostdev.type == "usb":
            cautions.append("%s must be plugged into the destination too" % what.strip())
        else:
            blockers.append("%s (mode %s)" % (what.strip(), hostdev.mode))
    for interface in domain.interfaces:
        if interface.type in _DEVICE_INTERFACE_TYPES:
            blockers.append("interface type '%s' %s" % (interface.type, interface.source or ""))
    return blockers, cautions


def check_devices(data: PreflightData, options: PreflightOptions) -> Finding:
    domain = data.domain
    blockers: t.List[str] = []
    cautions: t.List[str] = []
    if domain is not None:
        blockers, cautions = host_device_findings(domain)
    if data.snapshot_count:
        blockers.append("%d snapshot(s): libvirt does not migrate domains with snapshots" % data.snapshot_count)
    if data.xml.invtsc_without_frequency:
        blockers.append("CPU feature 'invtsc' without a TSC frequency in <clock>")
    for name, role in data.xml.shmems:
        if role != "master":
            blockers.append("shmem device '%s' (only role='master' migrates)" % name)
    for target in data.xml.virtiofs_targets:
        blockers.append("virtiofs filesystem '%s'" % target)
    for target in data.xml.transient_disks:
        blockers.append("transient disk '%s'" % target)
    if blockers:
        return Finding(
            "devices", FAIL,
            "live migration is blocked by: %s" % "; ".join(b.strip() for b in blockers + cautions),
        )
    if cautions:
        return Finding("devices", WARN, "; ".join(cautions))
    return Finding("devices", PASS, "no host devices or other local-only devices")


def check_convergence(prediction: t.Mapping[str, t.Any], options: PreflightOptions) -> Finding:
    """Judge the predicted migration; a prediction never fails the pre-flight, it warns."""
    summary = "predicted %s: %s round(s), %.0f MiB sent, %.1f s, %.0f ms downtime" % (
        prediction.get("strategy"), prediction.get("rounds"), float(prediction.get("transferred_mib") or 0),
        float(prediction.get("total_s") or 0), float(prediction.get("downtime_ms") or 0),
    )
    if prediction.get("converges"):
        return Finding("convergence", PASS, summary)
    if not options.allow_postcopy:
        override = "allow_postcopy"
    elif prediction.get("required_max_downtime_ms") is not None:
        override = "max_downtime_ms"
    elif prediction.get("required_bandwidth_mibps") is not None:
        override = "bandwidth_mibps"
    else:
        override = None
    reason = prediction.get("reason")
    return Finding(
        "convergence", WARN,
        "%s; does not converge within max_downtime_ms=%d%s" % (
            summary, options.max_downtime_ms, " (%s)" % reason if reason else ""),
        override,
    )


_CHECKS: t.Tuple[t.Callable[[PreflightData, PreflightOptions], Finding], ...] = (
    check_maintenance,
    check_distinct_hosts,
    check_domain_running,
    check_name_collision,
    check_hypervisor_type,
    check_versions,
    check_domain_type,
    check_machine_type,
    check_cpu,
    check_memory,
    check_storage,
    check_networks,
    check_devices,
)
# Without the domain on the source, only these can be judged.
_CHECKS_WITHOUT_DOMAIN = (check_maintenance, check_distinct_hosts, check_domain_running, check_name_collision)


def prediction_inputs(
    memory_max_mib: float,
    memory_mib: float,
    dirty_rate_mibps: float,
    bandwidth_mibps: float,
    max_downtime_ms: float,
) -> MigrationInputs:
    """The models' inputs for a domain.

    The rest of the guest's RAM is free in the guest or ballooned out: counted
    as zero pages. An uncapped migration (bandwidth 0) is predicted at
    DEFAULT_PREDICTION_BANDWIDTH_MIBPS.
    """
    return MigrationInputs(
        memory_mib=memory_mib,
        dirty_rate_mibps=dirty_rate_mibps,
        bandwidth_mibps=bandwidth_mibps or DEFAULT_PREDICTION_BANDWIDTH_MIBPS,
        max_downtime_ms=max_downtime_ms,
        zero_page_mib=max(memory_max_mib - memory_mib, 0),
    )


def predict(data: PreflightData, options: PreflightOptions) -> t.Optional[t.Dict[str, t.Any]]:
    """The pre-copy model's prediction from the measured dirty rate, or None without one."""
    if data.domain is None or data.dirty_rate_mibps is None:
        return None
    memory = memory_to_send(data.domain, options.qemu_overhead_mib)
    inputs = prediction_inputs(data.domain.memory_max_mib, memory.memory_mib, data.dirty_rate_mibps,
                               options.bandwidth_mibps, options.max_downtime_ms)
    chosen, candidates = choose_strategy(inputs, options.allow_postcopy)
    prediction = chosen.to_dict()
    prediction["candidates"] = [candidate.to_dict() for candidate in candidates]
    prediction["inputs"] = {
        "memory_mib": inputs.memory_mib,
        "memory_estimate": memory.to_dict(),
        "zero_page_mib": inputs.zero_page_mib,
        "dirty_rate_mibps": data.dirty_rate_mibps,
        "bandwidth_mibps": inputs.bandwidth_mibps,
        "bandwidth_assumed": not options.bandwidth_mibps,
        "max_downtime_ms": options.max_downtime_ms,
        "allow_postcopy": options.allow_postcopy,
    }
    return prediction


def evaluate(
    data: PreflightData,
    options: PreflightOptions,
    prediction: t.Optional[t.Mapping[str, t.Any]] = None,
) -> PreflightReport:
    """Run the checks over the gathered data and aggregate them.

    A domain already migrated is reported with only distinct_hosts and
    name_collision ("already there"): nothing else matters for it.
    """
    there = already_migrated(data)
    if there is not None:
        findings = [check_distinct_hosts(data, options), check_name_collision(data, options)]
        prediction = None
    elif data.domain is None:
        findings = [check(data, options) for check in _CHECKS_WITHOUT_DOMAIN]
    else:
        findings = [check(data, options) for check in _CHECKS]
        if prediction is not None:
            findings.append(check_convergence(prediction, options))
    return PreflightReport(
        domain=data.domain_name,
        passed=all(f.status != FAIL for f in findings),
        already_migrated=there is not None,
        findings=findings,
        prediction=dict(prediction) if prediction is not None else None,
        source=host_summary(data.source, data.source_uri),
        destination=host_summary(data.destination, data.dest_uri),
    )


# ---- gathering from the two connections -----------------------------------


def _connect(client: LibvirtClient, role: str, option: str) -> t.Any:
    try:
        return client.conn
    except StrataError as exc:
        raise PreflightError("%s host: %s (option %s)" % (role, exc, option), option=option, **exc.details) from exc


def _libvirt_failure(role: str, uri: str, exc: BaseException) -> PreflightError:
    shown = redact_uri(uri)
    return PreflightError(
        "libvirt at %s (%s host): %s" % (shown, role, describe_libvirt_error(exc)),
        uri=shown,
        libvirt_error_code=libvirt_error_code(exc),
    )


def probe_cpu(dest_conn: t.Any, domain: DomainFacts, xml: MigrationXml) -> CpuProbe:
    """Ask the destination whether it can provide the domain's CPU."""
    if xml.cpu_xml is None:
        return CpuProbe(compared=False)
    try:
        result = dest_conn.compareHypervisorCPU(
            xml.emulator, domain.arch, domain.machine_type, domain.domain_type, xml.cpu_xml,
            COMPARE_CPU_FAIL_INCOMPATIBLE,
        )
    except LibvirtError as exc:
        # With FAIL_INCOMPATIBLE, libvirt names the missing features in its error.
        result = CPU_COMPARE_INCOMPATIBLE if libvirt_error_code(exc) == ERR_CPU_INCOMPATIBLE else None
        return CpuProbe(compared=True, result=result, error=describe_libvirt_error(exc))
    return CpuProbe(compared=True, result=int(result))


def probe_capabilities(dest_conn: t.Any, domain: DomainFacts, xml: MigrationXml) -> CapabilitiesProbe:
    """Ask the destination for domain capabilities: first the type, then the machine type."""
    try:
        dest_conn.getDomainCapabilities(xml.emulator, domain.arch, None, domain.domain_type, 0)
    except LibvirtError as exc:
        return CapabilitiesProbe(domain_type_error=describe_libvirt_error(exc))
    if domain.machine_type is None:
        return CapabilitiesProbe()
    try:
        dest_conn.getDomainCapabilities(xml.emulator, domain.arch, domain.machine_type, domain.domain_type, 0)
    except LibvirtError as exc:
        return CapabilitiesProbe(machine_checked=True, machine_error=describe_libvirt_error(exc))
    return CapabilitiesProbe(machine_checked=True)


def _pool_target_paths(dest_conn: t.Any) -> t.Dict[str, t.Any]:
    """Active destination pools by target path."""
    try:
        pools = dest_conn.listAllStoragePools(0)
    except LibvirtError as exc:
        if not is_unsupported(exc):
            raise
        return {}
    paths = {}
    for pool in pools:
        if not pool.isActive():
            continue
        path = parse_pool_target_path(pool.XMLDesc(0))
        if path:
            paths[path] = pool
    return paths


def _volume_pool_by_path(dest_conn: t.Any, path: str) -> t.Optional[str]:
    try:
        volume = dest_conn.storageVolLookupByPath(path)
    except LibvirtError as exc:
        if libvirt_error_code(exc) == ERR_NO_STORAGE_VOL or is_unsupported(exc):
            return None
        raise
    return volume.storagePoolLookupByVolume().name()


def _pool_details(dest_conn: t.Any, pool_name: t.Optional[str]) -> t.Tuple[t.Optional[str], t.Optional[int]]:
    """(type, free bytes) of a destination pool; (None, None) when it cannot be read."""
    if pool_name is None:
        return None, None
    try:
        pool = dest_conn.storagePoolLookupByName(pool_name)
        pool_type = ET.fromstring(pool.XMLDesc(0)).get("type")
        return pool_type, int(pool.info()[3])
    except (LibvirtError, ET.ParseError, IndexError, TypeError, ValueError):
        return None, None


def _disk_sizes(source_dom: t.Any, target: t.Optional[str]) -> t.Tuple[t.Optional[int], t.Optional[int]]:
    """(capacity, allocation) of a disk on the source, from blockInfo; (None, None) when unread."""
    if source_dom is None or not target:
        return None, None
    try:
        info = source_dom.blockInfo(target, 0)
        return int(info[0]), int(info[1])
    except (LibvirtError, IndexError, TypeError, ValueError):
        return None, None


def _locate_path(dest_conn: t.Any, path: str, pools: t.Mapping[str, t.Any]) -> t.Tuple[bool, t.Optional[str]]:
    """(found on the destination, pool name) for a file or block path."""
    pool_name = _volume_pool_by_path(dest_conn, path)
    if pool_name is not None:
        return True, pool_name
    directory = posixpath.normpath(posixpath.dirname(path))
    pool = pools.get(directory)
    if pool is None:
        return False, None
    # A dir pool lists the volumes it saw at its last refresh; a file another host created since
    # in a shared directory is only found after one. Refreshing rescans, it changes nothing.
    try:
        pool.refresh(0)
    except LibvirtError:
        return False, pool.name()
    pool_name = _volume_pool_by_path(dest_conn, path)
    if pool_name is not None:
        return True, pool_name
    return False, pool.name()


def _locate_volume(dest_conn: t.Any, source: str) -> t.Tuple[bool, t.Optional[str]]:
    pool_name, _sep, volume_name = source.partition("/")
    try:
        pool = dest_conn.storagePoolLookupByName(pool_name)
    except LibvirtError as exc:
        if libvirt_error_code(exc) == ERR_NO_STORAGE_POOL or is_unsupported(exc):
            return False, None
        raise
    try:
        pool.storageVolLookupByName(volume_name)
    except LibvirtError as exc:
        if libvirt_error_code(exc) == ERR_NO_STORAGE_VOL:
            return False, pool_name
        raise
    return True, pool_name


def locate_disks(dest_conn: t.Any, domain: DomainFacts, source_dom: t.Any = None) -> t.List[DiskPlacement]:
    """Place every disk with a medium: shared, on the destination, or local.

    With source_dom (the pre-flight's view), each disk also gets its destination pool's type and free
    space, and a local disk its allocation on the source, for the storage check.
    """
    placements = []
    pools: t.Optional[t.Dict[str, t.Any]] = None
    for disk in domain.disks:
        if disk.empty:
            continue
        found, pool = False, None
        if disk.shared:
            location = "shared"
        else:
            if disk.type in ("file", "block") and disk.source:
                if pools is None:
                    pools = _pool_target_paths(dest_conn)
                found, pool = _locate_path(dest_conn, disk.source, pools)
            elif disk.type == "volume" and disk.source:
                found, pool = _locate_volume(dest_conn, disk.source)
            location = "destination" if found else "local"
        pool_type, available = _pool_details(dest_conn, pool) if source_dom is not None else (None, None)
        capacity, allocation = _disk_sizes(source_dom, disk.target) if location == "local" else (None, None)
        placements.append(DiskPlacement(
            target=disk.target, source=disk.source, type=disk.type, readonly=disk.readonly,
            location=location, pool=pool, pool_type=pool_type, pool_available_bytes=available,
            allocation_bytes=allocation, capacity_bytes=capacity,
        ))
    return placements


def list_active_interfaces(dest_conn: t.Any) -> t.Optional[t.List[str]]:
    """Names of the destination's active host interfaces; None when it cannot list them."""
    try:
        interfaces = dest_conn.listAllInterfaces(LIST_INTERFACES_ACTIVE)
    except LibvirtError as exc:
        if not is_unsupported(exc):
            raise
        return None
    return sorted(interface.name() for interface in interfaces)


def _snapshot_count(dom: t.Any) -> int:
    try:
        return int(dom.snapshotNum(0))
    except LibvirtError as exc:
        if not is_unsupported(exc):
            raise
        return 0


def gather_preflight(
    source_conn: t.Any,
    dest_conn: t.Any,
    options: PreflightOptions,
    source_uri: str,
    dest_uri: str,
    sleep: t.Callable[[float], None] = time.sleep,
    clock: t.Callable[[], float] = time.monotonic,
    dirty_rate_mibps: t.Optional[float] = None,
) -> PreflightData:
    """Read both hosts into PreflightData.

    A domain missing from the source is only an error when the destination
    does not have it either (otherwise it may already have migrated).
    dirty_rate_mibps: a rate the caller measured moments ago; then none is measured here.
    """
    try:
        source = gather_host_facts(source_conn, identity_only=True)
        dom = find_domain(source_conn, options.name)
        facts, xml, snapshots = None, MigrationXml(), 0
        measurement = None
        if dom is not None:
            # One read of the domain's XML serves its facts and the migration details.
            document = dom.XMLDesc(0)
            facts = domain_facts(dom, document)
            # The dirty-rate window runs while the rest is read. A domain busy with another job (a migration,
            # a dump) holds libvirt's lock: measuring would wait for it.
            if (dirty_rate_mibps is None and options.measure_dirty_rate_s and options.dirty_rate_timeout_s
                    and facts.state == "running" and not facts.job_running):
                measurement = DirtyRateMeasurement(source_conn, [dom], options.measure_dirty_rate_s,
                                                   options.dirty_rate_timeout_s, sleep=sleep, clock=clock)
            xml = parse_migration_xml(document)
            snapshots = _snapshot_count(dom)
    except LibvirtError as exc:
        raise _libvirt_failure("source", source_uri, exc) from exc
    try:
        destination = gather_host_facts(dest_conn)
    except LibvirtError as exc:
        raise _libvirt_failure("destination", dest_uri, exc) from exc
    data = PreflightData(
        source_uri=source_uri, dest_uri=dest_uri, source=source, destination=destination,
        domain_name=options.name, domain=facts, xml=xml, snapshot_count=snapshots,
    )
    if facts is None:
        if not any(d.name == options.name for d in destination.domains):
            raise DomainNotFoundError(
                "domain '%s' is defined neither on the source host '%s' (%s) nor on the destination host '%s' "
                "(%s); check the name option" % (options.name, source.hostname, redact_uri(source_uri),
                                                 destination.hostname, redact_uri(dest_uri)),
                domain=options.name,
            )
        return data
    if already_migrated(data) is not None:
        return data
    try:
        data.cpu = probe_cpu(dest_conn, facts, xml)
        data.capabilities = probe_capabilities(dest_conn, facts, xml)
        data.disks = locate_disks(dest_conn, facts, dom)
        data.dest_interfaces = list_active_interfaces(dest_conn)
    except LibvirtError as exc:
        raise _libvirt_failure("destination", dest_uri, exc) from exc
    if measurement is not None:
        data.dirty_rate_mibps = measurement.rates()[options.name]
    elif dirty_rate_mibps is not None and facts.state == "running":
        data.dirty_rate_mibps = dirty_rate_mibps
    return data


def run_preflight(
    source_client: LibvirtClient,
    dest_client: LibvirtClient,
    options: PreflightOptions,
    sleep: t.Callable[[float], None] = time.sleep,
    clock: t.Callable[[], float] = time.monotonic,
) -> PreflightReport:
    """Connect to both hosts (each bounded by its connect timeout), gather, check, predict."""
    source_conn = _connect(source_client, "source", "uri")
    dest_conn = _connect(dest_client, "destination", "dest_uri")
    data = gather_preflight(
        source_conn, dest_conn, options, source_client.uri, dest_client.uri, sleep=sleep, clock=clock
    )
    prediction = None
    if already_migrated(data) is None:
        prediction = predict(data, options)
    return evaluate(data, options, prediction)
