# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A whole cluster in one reading: hosts, the VMs they run, definitions and conflicts.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

Checking the options (`cluster_hosts`), reading the collection's metadata from
a domain's XML (`parse_migration_metadata`), deciding why a VM cannot move
(`pinned_value`) and assembling the report (`build_report`) are pure functions.
`gather_cluster` opens the connections and reads each host into plain data.
"""

from __future__ import annotations

import dataclasses
import typing as t
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.strata.migration.plugins.module_utils._inventory import (
    DiskFacts,
    DomainFacts,
    InventoryParseError,
    domain_facts,
    gather_host_facts,
)
from ansible_collections.strata.migration.plugins.module_utils._libvirt import (
    ERR_NO_DOMAIN,
    LibvirtClient,
    LibvirtError,
    LibvirtUriError,
    StrataError,
    describe_libvirt_error,
    find_domain,
    libvirt_error_code,
    redact_uri,
    uri_secrets,
    validate_uri,
)
from ansible_collections.strata.migration.plugins.module_utils._preflight import (
    DiskPlacement,
    host_device_findings,
    locate_disks,
)

# The placement hints a domain carries in its <metadata>, so they move with it:
#   <strata:migration xmlns:strata="...migration/1">
#     <strata:anti_affinity group="web"/> <strata:pinned reason="licence bound to host"/>
#     <strata:restart priority="10"/>
#   </strata:migration>
# The version in the URI changes if the shape does.
METADATA_NAMESPACE = "https://strata-migration.github.io/xmlns/migration/1"
METADATA_ELEMENT = "migration"

PINNED_HOST_DEVICE = "host device"

# Documented by the strata.migration.cluster_hosts doc fragment.
CLUSTER_HOSTS_ARGSPEC: t.Dict[str, t.Dict[str, t.Any]] = {
    "hosts": {
        "type": "list",
        "elements": "dict",
        "required": True,
        "options": {
            "name": {"type": "str", "required": True},
            "uri": {"type": "str", "required": True},
            "memory_capacity_mib": {"type": "int"},
            "reserve_mib": {"type": "int", "default": 0},
        },
    },
    "connect_timeout_s": {"type": "int", "default": 10},
}

MIB = 1024 * 1024


class ClusterError(StrataError):
    """The options are wrong, or a host that must be read could not be."""


@dataclasses.dataclass
class ClusterHost:
    """One checked entry of the hosts option."""

    name: str
    uri: str
    memory_capacity_mib: t.Optional[int] = None
    reserve_mib: int = 0

    @property
    def display_uri(self) -> str:
        return redact_uri(self.uri)


@dataclasses.dataclass
class MigrationMetadata:
    """The collection's placement hints from a domain's metadata (None when absent)."""

    anti_affinity_group: t.Optional[str] = None
    pinned_reason: t.Optional[str] = None
    # Recovery restarts higher priorities first; a priority that is not a whole number >= 0 counts as 0.
    restart_priority: int = 0


@dataclasses.dataclass
class ActiveCopy:
    """One active domain as one host runs it.

    local_disks: targets of disks that no other host read can reach (see
    local_disk_targets); local_disk_mib: their size, what a storage copy
    carries; host_device: it holds a device the pre-flight refuses.
    """

    name: str
    uuid: str
    host: str
    state: str
    persistent: bool
    memory_mib: int
    vcpus: int
    metadata: MigrationMetadata = dataclasses.field(default_factory=MigrationMetadata)
    local_disks: t.List[str] = dataclasses.field(default_factory=list)
    local_disk_mib: float = 0.0
    host_device: bool = False


@dataclasses.dataclass
class HostReading:
    """What one reachable host is and holds."""

    name: str
    cpus: int
    memory_total_mib: int
    active: t.List[ActiveCopy]
    defined: t.List[str]


@dataclasses.dataclass
class UnreachableHost:
    name: str
    uri: str
    reason: str


@dataclasses.dataclass
class ClusterReport:
    hosts: t.List[t.Dict[str, t.Any]]
    vms: t.List[t.Dict[str, t.Any]]
    where: t.Dict[str, str]
    definitions: t.Dict[str, t.List[str]]
    conflicts: t.List[t.Dict[str, t.Any]]
    unreachable_hosts: t.List[UnreachableHost]

    def to_result(self) -> t.Dict[str, t.Any]:
        return {
            "hosts": self.hosts,
            "vms": self.vms,
            "where": self.where,
            "definitions": self.definitions,
            "conflicts": self.conflicts,
            "unreachable_hosts": [dataclasses.asdict(host) for host in self.unreachable_hosts],
        }


# ---- options ----------------------------------------------------------------


def host_uri_secrets(hosts: t.Any) -> t.List[str]:
    """The passwords in the hosts' URIs, for no_log; tolerates any shape of input."""
    secrets: t.List[str] = []
    if not isinstance(hosts, list):
        return secrets
    for host in hosts:
        if isinstance(host, dict) and isinstance(host.get("uri"), str):
            secrets.extend(uri_secrets(host["uri"]))
    return secrets


def cluster_hosts(hosts: t.Sequence[t.Mapping[str, t.Any]], connect_timeout_s: int = 10) -> t.List[ClusterHost]:
    """Check the hosts and connect_timeout_s options before any connection opens."""
    if connect_timeout_s < 1:
        raise ClusterError(
            "connect_timeout_s must be at least 1 (seconds), got %d" % connect_timeout_s, option="connect_timeout_s"
        )
    if not hosts:
        raise ClusterError("the hosts option must list at least one host", option="hosts")
    checked: t.List[ClusterHost] = []
    by_name: t.Dict[str, int] = {}
    by_uri: t.Dict[str, str] = {}
    for index, entry in enumerate(hosts):
        option = "hosts[%d]" % index
        name = entry.get("name")
        if not name:
            raise ClusterError("%s.name must not be empty" % option, option=option + ".name")
        if name in by_name:
            raise ClusterError(
                "%s.name: host '%s' is listed twice (also hosts[%d]); give every host a unique name"
                % (option, name, by_name[name]),
                option=option + ".name",
            )
        by_name[name] = index
        uri = entry.get("uri") or ""
        try:
            validate_uri(uri)
        except LibvirtUriError as exc:
            raise ClusterError("%s.uri (host '%s'): %s" % (option, name, exc), option=option + ".uri",
                               host=name) from exc
        if uri in by_uri:
            raise ClusterError(
                "%s.uri: host '%s' has the same URI as host '%s' (%s); one host read twice would show every VM "
                "on it as running twice" % (option, name, by_uri[uri], redact_uri(uri)),
                option=option + ".uri",
                host=name,
            )
        by_uri[uri] = name
        capacity = entry.get("memory_capacity_mib")
        if capacity is not None and capacity < 1:
            raise ClusterError(
                "%s.memory_capacity_mib (host '%s') must be at least 1 MiB, got %d; leave it out to use the "
                "host's memory" % (option, name, capacity),
                option=option + ".memory_capacity_mib",
            )
        reserve = entry.get("reserve_mib") or 0
        if reserve < 0:
            raise ClusterError(
                "%s.reserve_mib (host '%s') must not be negative, got %d" % (option, name, reserve),
                option=option + ".reserve_mib",
            )
        checked.append(ClusterHost(name=name, uri=uri, memory_capacity_mib=capacity, reserve_mib=reserve))
    return checked


# ---- pure reading and assembly -------------------------------------------------


def _split_tag(tag: str) -> t.Tuple[t.Optional[str], str]:
    """(namespace or None, local name) of an ElementTree tag such as {uri}name."""
    if tag.startswith("{"):
        namespace, _brace, local = tag[1:].partition("}")
        return namespace, local
    return None, tag


def parse_migration_metadata(domain_xml: str) -> MigrationMetadata:
    """Read the collection's placement hints from a domain's XML description.

    libvirt qualifies the children with the namespace when it stores them
    (setMetadata); children written by hand without a prefix count too.
    """
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        raise InventoryParseError("cannot parse domain XML from libvirt: %s" % exc) from exc
    element = root.find("metadata/{%s}%s" % (METADATA_NAMESPACE, METADATA_ELEMENT))
    metadata = MigrationMetadata()
    if element is None:
        return metadata
    for child in element:
        namespace, kind = _split_tag(child.tag)
        if namespace not in (None, METADATA_NAMESPACE):
            continue
        if kind == "anti_affinity":
            metadata.anti_affinity_group = (child.get("group") or "").strip() or metadata.anti_affinity_group
        elif kind == "pinned":
            # <pinned/> without a reason still pins; the reason says so.
            metadata.pinned_reason = (child.get("reason") or "").strip() or "pinned in the domain's metadata"
        elif kind == "restart":
            priority = (child.get("priority") or "").strip()
            metadata.restart_priority = int(priority) if priority.isdigit() else 0
    return metadata


def _disk_label(target: t.Optional[str], source: t.Optional[str]) -> str:
    return target or source or "?"


def local_disk_targets(disks: t.Sequence[DiskFacts], placements: t.Iterable[t.Sequence[DiskPlacement]]) -> t.List[str]:
    """Disks (by target) that are neither shared nor found on any other host.

    placements: for each other host read, where the pre-flight's locate_disks
    puts the domain's disks as seen from that host. A disk that some host
    reaches (shared, or a volume of one of its pools) leaves that host as a
    possible target; one that no host reaches pins the VM. With no other host
    read there is nothing to tell, and no disk is reported.
    """
    placements = list(placements)
    if not placements:
        return []
    reachable = set()
    for host_placements in placements:
        for placement in host_placements:
            if placement.location != "local":
                reachable.add(_disk_label(placement.target, placement.source))
    return [
        _disk_label(disk.target, disk.source)
        for disk in disks
        if not disk.empty and not disk.shared and _disk_label(disk.target, disk.source) not in reachable
    ]


def has_blocking_host_device(facts: DomainFacts) -> bool:
    """True for the host devices the pre-flight's devices check refuses (USB devices only warn there)."""
    blockers, _cautions = host_device_findings(facts)
    return bool(blockers)


def pinned_value(copy: ActiveCopy, running_on: t.Sequence[str] = (), copy_storage: str = "none") -> t.Union[bool, str]:
    """False, or why the VM must not move (the planner's pinned).

    The metadata's reason wins over the automatic ones (local disks, unless a
    storage copy takes them along, and host devices); a VM active on several
    hosts is never moved, whatever else holds.
    """
    reasons: t.List[str] = []
    if len(running_on) > 1:
        reasons.append("active on several hosts (%s)" % ", ".join(running_on))
    if copy.metadata.pinned_reason:
        reasons.append(copy.metadata.pinned_reason)
    else:
        if copy_storage == "none":
            reasons.extend("local disk %s" % target for target in copy.local_disks)
        if copy.host_device:
            reasons.append(PINNED_HOST_DEVICE)
    return "; ".join(reasons) if reasons else False


_STATE_RANK = {"running": 0, "paused": 1}


def _primary(copies: t.Sequence[ActiveCopy], host_order: t.Mapping[str, int]) -> ActiveCopy:
    """The copy that counts when one VM is active on several hosts.

    During a migration the source runs and the incoming copy waits paused and
    transient, so a running, persistent copy comes first.
    """
    return min(copies, key=lambda c: (_STATE_RANK.get(c.state, 2), not c.persistent, host_order.get(c.host, 0)))


def build_report(
    specs: t.Sequence[ClusterHost],
    readings: t.Sequence[HostReading],
    unreachable: t.Sequence[UnreachableHost] = (),
    copy_storage: str = "none",
) -> ClusterReport:
    """Assemble the planner's hosts and VMs, where each VM runs, definitions and conflicts.

    copy_storage: the moves will copy local disks (all, incremental), so they do not pin a VM.
    """
    spec_by_name = {spec.name: spec for spec in specs}
    host_order = {spec.name: index for index, spec in enumerate(specs)}
    hosts = []
    copies_by_name: t.Dict[str, t.List[ActiveCopy]] = {}
    definitions: t.Dict[str, t.List[str]] = {}
    for reading in sorted(readings, key=lambda r: host_order.get(r.name, 0)):
        spec = spec_by_name[reading.name]
        capacity = spec.memory_capacity_mib if spec.memory_capacity_mib is not None else reading.memory_total_mib
        hosts.append({
            "name": reading.name,
            "memory_capacity_mib": capacity,
            "reserve_mib": spec.reserve_mib,
            "cpus": reading.cpus,
            "memory_total_mib": reading.memory_total_mib,
            "running_vms": len(reading.active),
        })
        for copy in reading.active:
            copies_by_name.setdefault(copy.name, []).append(copy)
        for name in reading.defined:
            definitions.setdefault(name, []).append(reading.name)
    vms = []
    where: t.Dict[str, str] = {}
    conflicts = []
    for name in sorted(set(copies_by_name) | set(definitions)):
        copies = copies_by_name.get(name, [])
        running_on = sorted(copy.host for copy in copies)
        defined_on = sorted(definitions.get(name, []))
        primary = _primary(copies, host_order) if copies else None
        if len(running_on) > 1 or len(defined_on) > 1:
            conflicts.append({
                "vm": name,
                "uuid": primary.uuid if primary is not None else None,
                "running_on": running_on,
                "defined_on": defined_on,
            })
        if primary is None:
            continue
        vms.append({
            "name": name,
            "uuid": primary.uuid,
            "host": primary.host,
            "memory_mib": primary.memory_mib,
            "vcpus": primary.vcpus,
            "anti_affinity_group": primary.metadata.anti_affinity_group,
            "pinned": pinned_value(primary, running_on, copy_storage),
            "local_disks": list(primary.local_disks),
            "local_disk_mib": round(primary.local_disk_mib, 1),
            "state": primary.state,
        })
        where[name] = primary.host
        where[primary.uuid] = primary.host
    for name in definitions:
        definitions[name].sort()
    return ClusterReport(
        hosts=hosts,
        vms=vms,
        where=where,
        definitions=dict(sorted(definitions.items())),
        conflicts=conflicts,
        unreachable_hosts=list(unreachable),
    )


# ---- reading the hosts -------------------------------------------------------


@dataclasses.dataclass
class _Gathered:
    """A host's reading with the domain facts kept for the disk lookups."""

    reading: HostReading
    facts: t.List[DomainFacts]


def _read_host(conn: t.Any, name: str) -> _Gathered:
    host = gather_host_facts(conn)
    copies: t.List[ActiveCopy] = []
    facts_list: t.List[DomainFacts] = []
    for summary in host.domains:
        if summary.state == "shutoff":
            continue
        dom = find_domain(conn, summary.name)
        if dom is None:
            continue
        try:
            document = dom.XMLDesc(0)
            facts = domain_facts(dom, document)
        except LibvirtError as exc:
            # It migrated away or was undefined since the listing.
            if libvirt_error_code(exc) == ERR_NO_DOMAIN:
                continue
            raise
        if facts.state == "shutoff":
            continue
        copies.append(ActiveCopy(
            name=facts.name,
            uuid=facts.uuid,
            host=name,
            state=facts.state,
            persistent=facts.persistent,
            memory_mib=facts.memory_current_mib,
            vcpus=facts.vcpus,
            metadata=parse_migration_metadata(document),
            host_device=has_blocking_host_device(facts),
        ))
        facts_list.append(facts)
    return _Gathered(
        reading=HostReading(
            name=name,
            cpus=host.cpu_count,
            memory_total_mib=host.memory_total_mib,
            active=copies,
            defined=sorted(summary.name for summary in host.domains if summary.persistent),
        ),
        facts=facts_list,
    )


def _cause(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, StrataError) else describe_libvirt_error(exc)


def _connect_all(clients: t.Sequence[LibvirtClient]) -> t.List[t.Optional[BaseException]]:
    """Open every connection at once, so unreachable hosts cost one timeout, not one each."""

    def attempt(client: LibvirtClient) -> t.Optional[BaseException]:
        try:
            client.conn
        except (StrataError, LibvirtError) as exc:
            return exc
        return None

    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        return list(pool.map(attempt, clients))


Reading = t.TypeVar("Reading")


def read_each(
    specs: t.Sequence[ClusterHost],
    clients: t.Sequence[LibvirtClient],
    read: t.Callable[[LibvirtClient, ClusterHost], Reading],
    required: bool,
) -> t.Tuple[t.List[t.Tuple[ClusterHost, LibvirtClient, Reading]], t.List[UnreachableHost]]:
    """Connect to every host at once and read each one that answers: (the readings, the hosts left out).

    A host that cannot be connected to or read fails with ClusterError when `required`,
    and is otherwise left out with the reason. The caller closes the clients.
    """
    readings: t.List[t.Tuple[ClusterHost, LibvirtClient, Reading]] = []
    unreachable: t.List[UnreachableHost] = []
    for spec, client, error in zip(specs, clients, _connect_all(clients)):
        if error is None:
            try:
                readings.append((spec, client, read(client, spec)))
                continue
            except (StrataError, LibvirtError) as exc:
                error = exc
        if required:
            raise ClusterError(
                "cannot read host '%s' (%s): %s; fix the host or its uri, or set required to false to leave "
                "it out" % (spec.name, spec.display_uri, _cause(error)),
                host=spec.name,
                uri=spec.display_uri,
            ) from error
        unreachable.append(UnreachableHost(name=spec.name, uri=spec.display_uri, reason=_cause(error)))
    return readings, unreachable


def gather_cluster(
    specs: t.Sequence[ClusterHost],
    connect_timeout_s: float,
    required: bool = True,
    opener: t.Optional[t.Callable[[str], t.Any]] = None,
    copy_storage: str = "none",
) -> ClusterReport:
    """Read every host and assemble the report.

    A host that cannot be connected to or read fails the whole reading when
    `required`, and is otherwise reported in unreachable_hosts and left out.
    `opener` replaces libvirt.open (tests). copy_storage: see build_report.
    """
    clients = [LibvirtClient(spec.uri, connect_timeout_s, opener=opener) for spec in specs]
    try:
        gathered, unreachable = read_each(
            specs, clients, lambda client, spec: _read_host(client.conn, spec.name), required=required)
        _find_local_disks(gathered)
        return build_report(specs, [item.reading for _spec, _client, item in gathered], unreachable, copy_storage)
    finally:
        for client in clients:
            client.close()


def _local_disk_mib(conn: t.Any, name: str, targets: t.Sequence[str]) -> float:
    """Size of the VM's local disks in MiB (blockInfo's capacity), 0 for a disk it cannot read."""
    dom = find_domain(conn, name)
    if dom is None:  # gone since it was read: the next reading tells
        return 0.0
    total = 0
    for target in targets:
        try:
            total += int(dom.blockInfo(target, 0)[0])
        except (LibvirtError, IndexError, TypeError, ValueError):
            continue
    return total / MIB


def _find_local_disks(gathered: t.Sequence[t.Tuple[ClusterHost, LibvirtClient, _Gathered]]) -> None:
    """Mark the disks of each active VM that no other host reaches (the pre-flight's storage view)."""
    for spec, client, item in gathered:
        for copy, facts in zip(item.reading.active, item.facts):
            if not any(not disk.empty and not disk.shared for disk in facts.disks):
                continue
            placements = []
            for other_spec, other_client, _other in gathered:
                if other_spec.name == spec.name:
                    continue
                try:
                    placements.append(locate_disks(other_client.conn, facts))
                except LibvirtError as exc:
                    raise ClusterError(
                        "cannot look up the disks of VM '%s' (on host '%s') on host '%s' (%s): %s"
                        % (copy.name, spec.name, other_spec.name, other_spec.display_uri,
                           describe_libvirt_error(exc)),
                        host=other_spec.name,
                        uri=other_spec.display_uri,
                    ) from exc
            copy.local_disks = local_disk_targets(facts.disks, placements)
            if copy.local_disks:
                copy.local_disk_mib = _local_disk_mib(client.conn, copy.name, copy.local_disks)
