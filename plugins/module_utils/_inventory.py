# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Host and domain facts as plain data, gathered from a libvirt connection.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

Parsing (`parse_*`) and unit conversion are pure functions; `gather_*` and
`measure_*` take a libvirt connection or domain (or a fake with the same
methods) and never import libvirt themselves.
"""

from __future__ import annotations

import dataclasses
import time
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.strata.migration.plugins.module_utils._libvirt import (
    ERR_NO_DOMAIN,
    ERR_NO_SUPPORT,
    ERR_OPERATION_INVALID,
    ERR_OPERATION_UNSUPPORTED,
    LibvirtError,
    StrataError,
    describe_libvirt_error,
    find_domain,
    is_unsupported,
    libvirt_error_code,
    redact_uri,
)

KIB_PER_MIB = 1024

# libvirt enum values (stable ABI), spelled out so this module needs no binding.
DOMAIN_STATE_NAMES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}
JOB_BOUNDED = 1
JOB_UNBOUNDED = 2
NODE_MEMORY_STATS_ALL_CELLS = -1
DOMAIN_STATS_DIRTYRATE = 1 << 9
DIRTYRATE_MEASURED = 2

DIRTY_RATE_MAX_S = 60
DIRTY_RATE_DEFAULT_GRACE_S = 10
DIRTY_RATE_POLL_S = 0.25

# Keys of virDomainMemoryStats (KiB) reported as <key>_mib.
BALLOON_STAT_KEYS = ("actual", "unused", "available", "usable", "disk_caches", "rss")

# Errors that mean "no job information here" rather than a failure.
_NO_JOB_ERRORS = (ERR_NO_SUPPORT, ERR_OPERATION_INVALID, ERR_OPERATION_UNSUPPORTED, ERR_NO_DOMAIN)

_UNIT_BYTES = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000 ** 2, "m": 1024 ** 2, "mib": 1024 ** 2,
    "gb": 1000 ** 3, "g": 1024 ** 3, "gib": 1024 ** 3,
    "tb": 1000 ** 4, "t": 1024 ** 4, "tib": 1024 ** 4,
    "pb": 1000 ** 5, "p": 1024 ** 5, "pib": 1024 ** 5,
    "eb": 1000 ** 6, "e": 1024 ** 6, "eib": 1024 ** 6,
}


class DomainNotFoundError(StrataError):
    """No domain of that name is defined on the host."""


class DomainNotRunningError(StrataError):
    """The operation needs a running domain."""


class DirtyRateError(StrataError):
    """The dirty-page rate could not be measured."""


class InventoryParseError(StrataError):
    """libvirt returned XML this module cannot read."""


def _to_dict(obj: t.Any) -> t.Dict[str, t.Any]:
    return dataclasses.asdict(obj)


@dataclasses.dataclass
class GuestCapability:
    os_type: str
    arch: str
    domain_types: t.List[str]
    machines: t.List[str]


@dataclasses.dataclass
class HostCapabilities:
    arch: t.Optional[str]
    cpu_model: t.Optional[str]
    cpu_vendor: t.Optional[str]
    host_uuid: t.Optional[str]
    migration_live: bool
    migration_uri_transports: t.List[str]
    guests: t.List[GuestCapability]


@dataclasses.dataclass
class NetworkSummary:
    name: str
    active: bool
    bridge: t.Optional[str]
    autostart: bool


@dataclasses.dataclass
class StoragePoolSummary:
    name: str
    active: bool
    type: t.Optional[str]


@dataclasses.dataclass
class DomainSummary:
    name: str
    uuid: str
    state: str
    persistent: bool
    vcpus: int
    memory_current_mib: int
    memory_max_mib: int
    job_running: bool


@dataclasses.dataclass
class HostFacts:
    """What a hypervisor host is and holds.

    memory_free_mib is the kernel's free memory; memory_available_mib adds
    buffers and page cache, which the host can reclaim for guests. When the
    driver has no node memory statistics (memory_source == "node_info"),
    total comes from the node info, free from the free-memory call, and
    available equals free.
    """

    hostname: str
    host_uuid: t.Optional[str]
    libvirt_version: str
    hypervisor_type: str
    hypervisor_version: str
    arch: str
    cpu_count: int
    cpu_model: t.Optional[str]
    cpu_vendor: t.Optional[str]
    memory_total_mib: int
    memory_free_mib: int
    memory_available_mib: int
    memory_source: str
    migration_live: bool
    migration_uri_transports: t.List[str]
    guests: t.List[GuestCapability]
    networks: t.List[NetworkSummary]
    storage_pools: t.List[StoragePoolSummary]
    domains: t.List[DomainSummary]

    def to_dict(self) -> t.Dict[str, t.Any]:
        return _to_dict(self)


@dataclasses.dataclass
class DiskFacts:
    """One <disk>.

    shared: reachable from any host by construction (a network disk) or
    marked <shareable/>. local_file: backed by a file path on the host,
    which must exist on (or be shared with) the destination. empty: no
    medium (a CD-ROM or floppy without source), nothing to move.
    """

    target: t.Optional[str]
    bus: t.Optional[str]
    device: str
    type: t.Optional[str]
    driver_type: t.Optional[str]
    cache: t.Optional[str]
    source: t.Optional[str]
    protocol: t.Optional[str]
    readonly: bool
    shareable: bool
    empty: bool
    shared: bool
    local_file: bool


@dataclasses.dataclass
class InterfaceFacts:
    type: t.Optional[str]
    source: t.Optional[str]
    mac: t.Optional[str]
    model: t.Optional[str]


@dataclasses.dataclass
class HostdevFacts:
    type: t.Optional[str]
    mode: t.Optional[str]
    address: t.Optional[str]


@dataclasses.dataclass
class BalloonFacts:
    """The memory balloon and its guest statistics in MiB (None when not reported).

    actual: current balloon size (guest memory); unused: free in the guest;
    available: memory the guest sees in total; usable: what the guest could
    use without swapping; disk_caches: reclaimable page cache; rss: host
    memory the guest process holds.
    """

    has_device: bool
    model: t.Optional[str]
    stats_period_s: t.Optional[int]
    actual_mib: t.Optional[int] = None
    unused_mib: t.Optional[int] = None
    available_mib: t.Optional[int] = None
    usable_mib: t.Optional[int] = None
    disk_caches_mib: t.Optional[int] = None
    rss_mib: t.Optional[int] = None


@dataclasses.dataclass
class DomainXml:
    """The parts of a domain's XML description the collection uses."""

    name: t.Optional[str]
    uuid: t.Optional[str]
    domain_type: t.Optional[str]
    arch: t.Optional[str]
    machine_type: t.Optional[str]
    vcpus: t.Optional[int]
    cpu_mode: t.Optional[str]
    cpu_model: t.Optional[str]
    memory_max_kib: t.Optional[int]
    memory_current_kib: t.Optional[int]
    balloon_model: t.Optional[str]
    balloon_stats_period_s: t.Optional[int]
    disks: t.List[DiskFacts]
    interfaces: t.List[InterfaceFacts]
    hostdevs: t.List[HostdevFacts]


@dataclasses.dataclass
class DomainFacts:
    name: str
    uuid: str
    state: str
    persistent: bool
    job_running: bool
    domain_type: t.Optional[str]
    arch: t.Optional[str]
    machine_type: t.Optional[str]
    vcpus: int
    cpu_mode: t.Optional[str]
    cpu_model: t.Optional[str]
    memory_max_mib: int
    memory_current_mib: int
    balloon: BalloonFacts
    disks: t.List[DiskFacts]
    interfaces: t.List[InterfaceFacts]
    hostdevs: t.List[HostdevFacts]
    dirty_rate_mibps: t.Optional[float] = None

    def to_dict(self) -> t.Dict[str, t.Any]:
        return _to_dict(self)


# ---- pure helpers -------------------------------------------------------


def domain_state_name(state: int) -> str:
    """Map a virDomainState number to its name (running, paused, shutoff, ...)."""
    return DOMAIN_STATE_NAMES.get(state, "unknown(%s)" % state)


def format_version(number: int) -> str:
    """Turn libvirt's packed version (major * 1000000 + minor * 1000 + micro) into "9.0.0"."""
    return "%d.%d.%d" % (number // 1000000, (number // 1000) % 1000, number % 1000)


def kib_to_mib(kib: int) -> int:
    return int(kib) // KIB_PER_MIB


def memory_to_kib(value: str, unit: t.Optional[str] = None) -> int:
    """Convert a libvirt XML memory amount to KiB (libvirt's default unit is KiB)."""
    factor = _UNIT_BYTES.get((unit or "KiB").lower())
    if factor is None:
        raise InventoryParseError("unknown memory unit '%s'" % unit)
    return int(value) * factor // 1024


def host_memory_from_stats(stats: t.Mapping[str, int]) -> t.Tuple[int, int, int]:
    """Return (total, free, available) MiB from node memory stats in KiB.

    available = free + buffers + cached: memory the host can give guests
    without swapping.
    """
    total = stats.get("total")
    free = stats.get("free")
    if total is None or free is None:
        raise InventoryParseError(
            "node memory statistics lack total or free (got %s)" % ", ".join(sorted(stats))
        )
    available = free + stats.get("buffers", 0) + stats.get("cached", 0)
    return kib_to_mib(total), kib_to_mib(free), kib_to_mib(available)


def balloon_stats_mib(stats: t.Mapping[str, int]) -> t.Dict[str, int]:
    """Pick the balloon statistics the collection uses and convert KiB to MiB."""
    return {
        "%s_mib" % key: kib_to_mib(stats[key]) for key in BALLOON_STAT_KEYS if key in stats
    }


def _parse_xml(document: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(document)
    except ET.ParseError as exc:
        raise InventoryParseError("cannot parse %s XML from libvirt: %s" % (what, exc)) from exc


def _text(element: t.Optional[ET.Element]) -> t.Optional[str]:
    if element is None or element.text is None:
        return None
    return element.text.strip() or None


def _int_or_none(value: t.Optional[str]) -> t.Optional[int]:
    return int(value) if value not in (None, "") else None


def parse_capabilities(document: str) -> HostCapabilities:
    """Read the host CPU, UUID, migration support and guest types from capabilities XML."""
    root = _parse_xml(document, "capabilities")
    host = root.find("host")
    cpu = host.find("cpu") if host is not None else None
    migration = host.find("migration_features") if host is not None else None
    guests = []
    for guest in root.findall("guest"):
        arch = guest.find("arch")
        if arch is None:
            continue
        machines: t.List[str] = []
        for machine in arch.findall("machine"):
            name = _text(machine)
            if name and name not in machines:
                machines.append(name)
        domain_types = [d.get("type", "") for d in arch.findall("domain") if d.get("type")]
        guests.append(GuestCapability(
            os_type=_text(guest.find("os_type")) or "",
            arch=arch.get("name", ""),
            domain_types=domain_types,
            machines=sorted(machines),
        ))
    return HostCapabilities(
        arch=_text(cpu.find("arch")) if cpu is not None else None,
        cpu_model=_text(cpu.find("model")) if cpu is not None else None,
        cpu_vendor=_text(cpu.find("vendor")) if cpu is not None else None,
        host_uuid=_text(host.find("uuid")) if host is not None else None,
        migration_live=migration is not None and migration.find("live") is not None,
        migration_uri_transports=[
            text for text in (_text(e) for e in root.iterfind("host/migration_features/uri_transports/uri_transport"))
            if text
        ],
        guests=guests,
    )


def parse_pool_type(document: str) -> t.Optional[str]:
    """Return the type attribute of a storage pool's XML (dir, logical, rbd, ...)."""
    return _parse_xml(document, "storage pool").get("type")


def _disk_source(disk_type: t.Optional[str], source: t.Optional[ET.Element]) -> t.Optional[str]:
    if source is None:
        return None
    if disk_type == "volume":
        pool, volume = source.get("pool"), source.get("volume")
        return "%s/%s" % (pool, volume) if pool and volume else None
    if disk_type == "network":
        return source.get("name")
    for attribute in ("file", "dev", "dir", "path"):
        if source.get(attribute):
            return source.get(attribute)
    return None


def _parse_disk(disk: ET.Element) -> DiskFacts:
    disk_type = disk.get("type")
    source_element = disk.find("source")
    source = _disk_source(disk_type, source_element)
    target = disk.find("target")
    driver = disk.find("driver")
    shareable = disk.find("shareable") is not None
    return DiskFacts(
        target=target.get("dev") if target is not None else None,
        bus=target.get("bus") if target is not None else None,
        device=disk.get("device", "disk"),
        type=disk_type,
        driver_type=driver.get("type") if driver is not None else None,
        cache=driver.get("cache") if driver is not None else None,
        source=source,
        protocol=source_element.get("protocol") if source_element is not None and disk_type == "network" else None,
        readonly=disk.find("readonly") is not None,
        shareable=shareable,
        empty=source is None,
        shared=disk_type == "network" or shareable,
        local_file=disk_type == "file" and source is not None,
    )


_INTERFACE_SOURCE_ATTRIBUTE = {
    "network": "network",
    "bridge": "bridge",
    "direct": "dev",
    "ethernet": "dev",
    "vhostuser": "path",
}


def _pci_address(address: ET.Element) -> t.Optional[str]:
    try:
        return "%04x:%02x:%02x.%x" % tuple(
            int(address.get(key, "0"), 0) for key in ("domain", "bus", "slot", "function")
        )
    except ValueError:
        return None


def _parse_interface(interface: ET.Element) -> InterfaceFacts:
    interface_type = interface.get("type")
    source = interface.find("source")
    source_name = None
    if source is not None:
        attribute = _INTERFACE_SOURCE_ATTRIBUTE.get(interface_type or "")
        if attribute:
            source_name = source.get(attribute)
        elif interface_type == "hostdev":
            address = source.find("address")
            source_name = _pci_address(address) if address is not None else None
    mac = interface.find("mac")
    model = interface.find("model")
    return InterfaceFacts(
        type=interface_type,
        source=source_name,
        mac=mac.get("address") if mac is not None else None,
        model=model.get("type") if model is not None else None,
    )


def _hostdev_address(hostdev_type: t.Optional[str], source: t.Optional[ET.Element]) -> t.Optional[str]:
    if source is None:
        return None
    address = source.find("address")
    if hostdev_type == "pci" and address is not None:
        return _pci_address(address)
    if hostdev_type == "usb":
        vendor, product = source.find("vendor"), source.find("product")
        if vendor is not None and product is not None:
            return "vendor %s product %s" % (vendor.get("id"), product.get("id"))
        if address is not None:
            return "bus %s device %s" % (address.get("bus"), address.get("device"))
    if hostdev_type == "mdev" and address is not None:
        return "uuid %s" % address.get("uuid")
    if hostdev_type == "scsi" and address is not None:
        adapter = source.find("adapter")
        return "%s %s:%s:%s" % (
            adapter.get("name") if adapter is not None else "?",
            address.get("bus"), address.get("target"), address.get("unit"),
        )
    for path in ("block", "char"):
        if _text(source.find(path)):
            return _text(source.find(path))
    if address is not None:
        return " ".join("%s=%s" % item for item in sorted(address.attrib.items())) or None
    return None


def _parse_hostdev(hostdev: ET.Element) -> HostdevFacts:
    hostdev_type = hostdev.get("type")
    return HostdevFacts(
        type=hostdev_type,
        mode=hostdev.get("mode"),
        address=_hostdev_address(hostdev_type, hostdev.find("source")),
    )


def _memory_kib(element: t.Optional[ET.Element]) -> t.Optional[int]:
    value = _text(element)
    if element is None or value is None:
        return None
    return memory_to_kib(value, element.get("unit"))


def parse_domain_xml(document: str) -> DomainXml:
    """Read a domain's XML description into plain data."""
    root = _parse_xml(document, "domain")
    if root.tag != "domain":
        raise InventoryParseError("expected a <domain> document, got <%s>" % root.tag)
    os_type = root.find("os/type")
    cpu = root.find("cpu")
    vcpu = root.find("vcpu")
    vcpus = None
    if vcpu is not None:
        vcpus = _int_or_none(vcpu.get("current")) or _int_or_none(_text(vcpu))
    balloon = root.find("devices/memballoon")
    stats = balloon.find("stats") if balloon is not None else None
    return DomainXml(
        name=_text(root.find("name")),
        uuid=_text(root.find("uuid")),
        domain_type=root.get("type"),
        arch=os_type.get("arch") if os_type is not None else None,
        machine_type=os_type.get("machine") if os_type is not None else None,
        vcpus=vcpus,
        cpu_mode=cpu.get("mode") if cpu is not None else None,
        cpu_model=_text(cpu.find("model")) if cpu is not None else None,
        memory_max_kib=_memory_kib(root.find("memory")),
        memory_current_kib=_memory_kib(root.find("currentMemory")),
        balloon_model=balloon.get("model") if balloon is not None else None,
        balloon_stats_period_s=_int_or_none(stats.get("period")) if stats is not None else None,
        disks=[_parse_disk(disk) for disk in root.findall("devices/disk")],
        interfaces=[_parse_interface(i) for i in root.findall("devices/interface")],
        hostdevs=[_parse_hostdev(h) for h in root.findall("devices/hostdev")],
    )


def resolve_dirty_rate_timeout(measure_dirty_rate_s: int, timeout_s: t.Optional[int] = None) -> t.Optional[int]:
    """Check the dirty-rate options; return the total wait bound, or None when off.

    The default bound is the measurement window plus DIRTY_RATE_DEFAULT_GRACE_S.
    """
    if measure_dirty_rate_s < 0 or measure_dirty_rate_s > DIRTY_RATE_MAX_S:
        raise StrataError(
            "measure_dirty_rate_s must be between 0 (off) and %d seconds, got %d"
            % (DIRTY_RATE_MAX_S, measure_dirty_rate_s),
            option="measure_dirty_rate_s",
        )
    if measure_dirty_rate_s == 0:
        return None
    if timeout_s is None:
        return measure_dirty_rate_s + DIRTY_RATE_DEFAULT_GRACE_S
    if timeout_s <= measure_dirty_rate_s:
        raise StrataError(
            "dirty_rate_timeout_s (%d) must be longer than measure_dirty_rate_s (%d): it bounds "
            "the whole measurement" % (timeout_s, measure_dirty_rate_s),
            option="dirty_rate_timeout_s",
        )
    return timeout_s


# ---- gathering from a connection -----------------------------------------


def describe_host(conn: t.Any) -> t.Tuple[t.Optional[str], t.Optional[str]]:
    """Return (hostname, URI without credentials) for messages; either may be None."""
    try:
        hostname = conn.getHostname()
    except LibvirtError:
        hostname = None
    try:
        uri = redact_uri(conn.getURI())
    except LibvirtError:
        uri = None
    return hostname, uri


def host_label(conn: t.Any) -> str:
    hostname, uri = describe_host(conn)
    if hostname and uri:
        return "host '%s' (%s)" % (hostname, uri)
    return "host '%s'" % (hostname or uri or "unknown")


def _job_running(dom: t.Any) -> bool:
    """True while a job (migration, save, dump) runs on the domain.

    Inactive domains have no jobs, and drivers without job reporting (the test
    driver) count as no job.
    """
    if not dom.isActive():
        return False
    try:
        return dom.jobInfo()[0] in (JOB_BOUNDED, JOB_UNBOUNDED)
    except LibvirtError as exc:
        if libvirt_error_code(exc) in _NO_JOB_ERRORS:
            return False
        raise


def _host_memory(conn: t.Any, info: t.Sequence[t.Any]) -> t.Tuple[int, int, int, str]:
    try:
        stats = conn.getMemoryStats(NODE_MEMORY_STATS_ALL_CELLS)
    except LibvirtError as exc:
        if not is_unsupported(exc):
            raise
        free_mib = int(conn.getFreeMemory()) // (KIB_PER_MIB * KIB_PER_MIB)
        return int(info[1]), free_mib, free_mib, "node_info"
    total, free, available = host_memory_from_stats(stats)
    return total, free, available, "node_memory_stats"


def _summarize_domain(dom: t.Any) -> DomainSummary:
    state, max_kib, current_kib, vcpus = dom.info()[:4]
    return DomainSummary(
        name=dom.name(),
        uuid=dom.UUIDString(),
        state=domain_state_name(state),
        persistent=bool(dom.isPersistent()),
        vcpus=int(vcpus),
        memory_current_mib=kib_to_mib(current_kib),
        memory_max_mib=kib_to_mib(max_kib),
        job_running=_job_running(dom),
    )


def _vanished(exc: BaseException) -> bool:
    return libvirt_error_code(exc) == ERR_NO_DOMAIN


def _gather_networks(conn: t.Any) -> t.List[NetworkSummary]:
    try:
        all_networks = conn.listAllNetworks(0)
    except LibvirtError as exc:
        # A connection without a network driver (embedded QEMU) has no networks to list.
        if not is_unsupported(exc):
            raise
        return []
    networks = []
    for network in all_networks:
        try:
            bridge = network.bridgeName() or None
        except LibvirtError:
            # Networks that forward to a device pool (macvtap, hostdev) have no bridge.
            bridge = None
        networks.append(NetworkSummary(
            name=network.name(),
            active=bool(network.isActive()),
            bridge=bridge,
            autostart=bool(network.autostart()),
        ))
    return sorted(networks, key=lambda n: n.name)


def _gather_storage_pools(conn: t.Any) -> t.List[StoragePoolSummary]:
    try:
        all_pools = conn.listAllStoragePools(0)
    except LibvirtError as exc:
        if not is_unsupported(exc):
            raise
        return []
    pools = [
        StoragePoolSummary(
            name=pool.name(),
            active=bool(pool.isActive()),
            type=parse_pool_type(pool.XMLDesc(0)),
        )
        for pool in all_pools
    ]
    return sorted(pools, key=lambda p: p.name)


def _gather_domain_summaries(conn: t.Any) -> t.List[DomainSummary]:
    summaries = []
    for dom in conn.listAllDomains(0):
        try:
            summaries.append(_summarize_domain(dom))
        except LibvirtError as exc:
            # A domain that migrated away or was undefined while we listed is skipped.
            if not _vanished(exc):
                raise
    return sorted(summaries, key=lambda d: d.name)


def gather_host_facts(conn: t.Any, identity_only: bool = False) -> HostFacts:
    """Collect HostFacts through an open libvirt connection.

    identity_only: who the host is, its versions and memory, without its domains, networks and pools
    (empty lists): what a migration needs of its source. Listing the domains would wait for any of
    them libvirt holds, such as one another migration is tearing down.
    """
    info = conn.getInfo()
    caps = parse_capabilities(conn.getCapabilities())
    total, free, available, source = _host_memory(conn, info)
    return HostFacts(
        hostname=conn.getHostname(),
        host_uuid=caps.host_uuid,
        libvirt_version=format_version(conn.getLibVersion()),
        hypervisor_type=conn.getType(),
        hypervisor_version=format_version(conn.getVersion()),
        arch=caps.arch or info[0],
        cpu_count=int(info[2]),
        cpu_model=caps.cpu_model,
        cpu_vendor=caps.cpu_vendor,
        memory_total_mib=total,
        memory_free_mib=free,
        memory_available_mib=available,
        memory_source=source,
        migration_live=caps.migration_live,
        migration_uri_transports=caps.migration_uri_transports,
        guests=caps.guests,
        networks=[] if identity_only else _gather_networks(conn),
        storage_pools=[] if identity_only else _gather_storage_pools(conn),
        domains=[] if identity_only else _gather_domain_summaries(conn),
    )


def lookup_domain(conn: t.Any, name: str) -> t.Any:
    """Return the virDomain called `name`; DomainNotFoundError names domain and host."""
    dom = find_domain(conn, name)
    if dom is not None:
        return dom
    hostname, uri = describe_host(conn)
    raise DomainNotFoundError(
        "domain '%s' is not defined on %s; check the name option or the uri option" % (name, host_label(conn)),
        domain=name,
        host=hostname,
        uri=uri,
    )


def _balloon_facts(dom: t.Any, parsed: DomainXml, active: bool) -> BalloonFacts:
    has_device = parsed.balloon_model not in (None, "none")
    stats: t.Mapping[str, int] = {}
    if has_device and active:
        try:
            stats = dom.memoryStats()
        except LibvirtError as exc:
            # The domain stopped between the state check and the stats call.
            if libvirt_error_code(exc) != ERR_OPERATION_INVALID:
                raise
    return BalloonFacts(
        has_device=has_device,
        model=parsed.balloon_model,
        stats_period_s=parsed.balloon_stats_period_s,
        **balloon_stats_mib(stats)
    )


def domain_facts(dom: t.Any, domain_xml: t.Optional[str] = None) -> DomainFacts:
    """Collect DomainFacts for one virDomain (live XML when it runs).

    domain_xml: the domain's XML when the caller has already read it (it reads more from it).
    """
    state = dom.state()[0]
    max_kib, current_kib, vcpus = dom.info()[1:4]
    active = bool(dom.isActive())
    parsed = parse_domain_xml(domain_xml if domain_xml is not None else dom.XMLDesc(0))
    return DomainFacts(
        name=dom.name(),
        uuid=dom.UUIDString(),
        state=domain_state_name(state),
        persistent=bool(dom.isPersistent()),
        job_running=_job_running(dom),
        domain_type=parsed.domain_type,
        arch=parsed.arch,
        machine_type=parsed.machine_type,
        vcpus=int(vcpus),
        cpu_mode=parsed.cpu_mode,
        cpu_model=parsed.cpu_model,
        memory_max_mib=kib_to_mib(max_kib),
        memory_current_mib=kib_to_mib(current_kib),
        balloon=_balloon_facts(dom, parsed, active),
        disks=parsed.disks,
        interfaces=parsed.interfaces,
        hostdevs=parsed.hostdevs,
    )


class DirtyRateMeasurement:
    """QEMU's dirty-page rate calculation, started on running domains and read when it ends.

    Started at once on every domain; the caller may do other work during the
    window and then call rates(), which waits out the rest of it. The whole
    wait is bounded by `timeout_s` seconds from the start.
    """

    def __init__(
        self,
        conn: t.Any,
        domains: t.Sequence[t.Any],
        seconds: int,
        timeout_s: float,
        sleep: t.Callable[[float], None] = time.sleep,
        clock: t.Callable[[], float] = time.monotonic,
    ) -> None:
        if seconds < 1 or seconds > DIRTY_RATE_MAX_S:
            raise DirtyRateError(
                "the dirty-rate window must be 1 to %d seconds, got %s" % (DIRTY_RATE_MAX_S, seconds),
                option="measure_dirty_rate_s",
            )
        if timeout_s <= seconds:
            raise DirtyRateError(
                "the dirty-rate timeout (%s s) must be longer than the window (%s s)" % (timeout_s, seconds),
                option="dirty_rate_timeout_s",
            )
        for dom in domains:
            state = domain_state_name(dom.state()[0])
            if state != "running":
                raise DomainNotRunningError(
                    "cannot measure the dirty-page rate of domain '%s' on %s: it is %s, not running"
                    % (dom.name(), host_label(conn), state),
                    domain=dom.name(),
                    state=state,
                )
        self.conn = conn
        self.domains = list(domains)
        self.seconds = seconds
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.clock = clock
        self.started = clock()
        for dom in domains:
            try:
                dom.startDirtyRateCalc(seconds, 0)
            except LibvirtError as exc:
                raise DirtyRateError(
                    "cannot start measuring the dirty-page rate of domain '%s' on %s: %s; "
                    "set measure_dirty_rate_s to 0 to skip the measurement"
                    % (dom.name(), host_label(conn), describe_libvirt_error(exc)),
                    domain=dom.name(),
                    libvirt_error_code=libvirt_error_code(exc),
                ) from exc

    def rates(self) -> t.Dict[str, float]:
        """The rates in MiB/s by domain name, once every calculation has ended."""
        window_left_s = self.started + self.seconds - self.clock()
        if window_left_s > 0:
            self.sleep(window_left_s)
        pending = {dom.name(): dom for dom in self.domains}
        rates: t.Dict[str, float] = {}
        while True:
            for dom, stats in self.conn.domainListGetStats(list(pending.values()), DOMAIN_STATS_DIRTYRATE):
                name = dom.name()
                status = stats.get("dirtyrate.calc_status")
                if status is None:
                    raise DirtyRateError(
                        "%s reported no dirty-rate statistics for domain '%s' (did it stop?); "
                        "set measure_dirty_rate_s to 0 to skip the measurement" % (host_label(self.conn), name),
                        domain=name,
                    )
                if status == DIRTYRATE_MEASURED:
                    rates[name] = float(stats.get("dirtyrate.megabytes_per_second", 0))
                    pending.pop(name, None)
            if not pending:
                return rates
            remaining = self.started + self.timeout_s - self.clock()
            if remaining <= 0:
                raise DirtyRateError(
                    "the dirty-page rate of domain(s) %s on %s was not measured within %s s (dirty_rate_timeout_s)"
                    % (", ".join("'%s'" % n for n in sorted(pending)), host_label(self.conn), self.timeout_s),
                    domains=sorted(pending),
                )
            self.sleep(min(DIRTY_RATE_POLL_S, remaining))


def measure_dirty_rates(
    conn: t.Any,
    domains: t.Sequence[t.Any],
    seconds: int,
    timeout_s: float,
    sleep: t.Callable[[float], None] = time.sleep,
    clock: t.Callable[[], float] = time.monotonic,
) -> t.Dict[str, float]:
    """Measure the dirty-page rate (MiB/s) of running domains, all at once (see DirtyRateMeasurement)."""
    return DirtyRateMeasurement(conn, domains, seconds, timeout_s, sleep=sleep, clock=clock).rates()


def measure_dirty_rate(
    dom: t.Any,
    seconds: int,
    timeout_s: float,
    sleep: t.Callable[[float], None] = time.sleep,
    clock: t.Callable[[], float] = time.monotonic,
) -> float:
    """Measure one running domain's dirty-page rate in MiB/s (see DirtyRateMeasurement)."""
    return measure_dirty_rates(dom.connect(), [dom], seconds, timeout_s, sleep=sleep, clock=clock)[dom.name()]


@dataclasses.dataclass
class DomainRequest:
    """Checked domain_info options: unique names in order and the dirty-rate bounds."""

    names: t.List[str]
    measure_dirty_rate_s: int = 0
    dirty_rate_timeout_s: t.Optional[int] = None


def domain_request(
    names: t.Sequence[str],
    measure_dirty_rate_s: int = 0,
    dirty_rate_timeout_s: t.Optional[int] = None,
) -> DomainRequest:
    """Check the options of a domain query before any connection is opened."""
    unique_names: t.List[str] = []
    for name in names:
        if not name:
            raise StrataError("domain names in the name option must not be empty", option="name")
        if name not in unique_names:
            unique_names.append(name)
    if not unique_names:
        raise StrataError("the name option must list at least one domain", option="name")
    return DomainRequest(
        names=unique_names,
        measure_dirty_rate_s=measure_dirty_rate_s,
        dirty_rate_timeout_s=resolve_dirty_rate_timeout(measure_dirty_rate_s, dirty_rate_timeout_s),
    )


def gather_domains(
    conn: t.Any,
    request: DomainRequest,
    sleep: t.Callable[[float], None] = time.sleep,
    clock: t.Callable[[], float] = time.monotonic,
) -> t.List[DomainFacts]:
    """Facts for the requested domains, in order; optionally with dirty rates.

    With a dirty-rate measurement requested the running domains are measured
    together; the others keep dirty_rate_mibps None.
    """
    domains = [lookup_domain(conn, name) for name in request.names]
    facts = [domain_facts(dom) for dom in domains]
    if request.measure_dirty_rate_s and request.dirty_rate_timeout_s:
        running = [dom for dom, fact in zip(domains, facts) if fact.state == "running"]
        if running:
            rates = measure_dirty_rates(
                conn, running, request.measure_dirty_rate_s, request.dirty_rate_timeout_s, sleep=sleep, clock=clock
            )
            for fact in facts:
                fact.dirty_rate_mibps = rates.get(fact.name)
    return facts
