# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible_collections.strata.migration.plugins.module_utils import _inventory as inventory
from ansible_collections.strata.migration.plugins.module_utils._inventory import (
    DirtyRateError,
    DomainNotFoundError,
    DomainNotRunningError,
    InventoryParseError,
    balloon_stats_mib,
    domain_request,
    domain_state_name,
    format_version,
    gather_domains,
    gather_host_facts,
    host_memory_from_stats,
    measure_dirty_rate,
    measure_dirty_rates,
    memory_to_kib,
    parse_capabilities,
    parse_domain_xml,
    parse_pool_type,
    resolve_dirty_rate_timeout,
)
from ansible_collections.strata.migration.plugins.module_utils._libvirt import StrataError
from ansible_collections.strata.migration.tests.unit.plugins.module_utils.fakes import FakeClock, FakeLibvirtError, FakeNetwork


# Trimmed from `virsh -c 'qemu:///embed?root=...' capabilities` on Debian 12 (libvirt 9.0, QEMU 7.2).
QEMU_CAPABILITIES = """<capabilities>
  <host>
    <uuid>749694bc-83d1-4c2f-8af3-e92c32444895</uuid>
    <cpu>
      <arch>x86_64</arch>
      <model>kvm64</model>
      <vendor>AMD</vendor>
      <microcode version='16777317'/>
      <topology sockets='1' dies='1' cores='2' threads='1'/>
      <feature name='vme'/>
      <feature name='avx2'/>
      <pages unit='KiB' size='4'/>
    </cpu>
    <power_management/>
    <iommu support='no'/>
    <migration_features>
      <live/>
      <uri_transports>
        <uri_transport>tcp</uri_transport>
        <uri_transport>rdma</uri_transport>
      </uri_transports>
    </migration_features>
    <topology>
      <cells num='1'>
        <cell id='0'>
          <memory unit='KiB'>4810956</memory>
          <cpus num='2'>
            <cpu id='0' socket_id='0' die_id='0' core_id='0' siblings='0'/>
            <cpu id='1' socket_id='0' die_id='0' core_id='1' siblings='1'/>
          </cpus>
        </cell>
      </cells>
    </topology>
    <secmodel>
      <model>none</model>
      <doi>0</doi>
    </secmodel>
  </host>
  <guest>
    <os_type>hvm</os_type>
    <arch name='i686'>
      <wordsize>32</wordsize>
      <emulator>/usr/bin/qemu-system-i386</emulator>
      <machine maxCpus='255'>pc-i440fx-7.2</machine>
      <machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>
      <domain type='qemu'/>
    </arch>
  </guest>
  <guest>
    <os_type>hvm</os_type>
    <arch name='x86_64'>
      <wordsize>64</wordsize>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <machine maxCpus='255'>pc-i440fx-7.2</machine>
      <machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>
      <machine maxCpus='288'>pc-q35-7.2</machine>
      <machine canonical='pc-q35-7.2' maxCpus='288'>q35</machine>
      <machine maxCpus='255' deprecated='yes'>pc-i440fx-1.5</machine>
      <machine maxCpus='288'>pc-q35-7.2</machine>
      <domain type='qemu'/>
      <domain type='kvm'/>
    </arch>
    <features>
      <acpi default='on' toggle='yes'/>
    </features>
  </guest>
</capabilities>
"""

# From `virsh -c test:///default capabilities` (libvirt 9.0), shortened.
TEST_DRIVER_CAPABILITIES = """<capabilities>
  <host>
    <cpu>
      <arch>i686</arch>
      <features><pae/><nonpae/></features>
    </cpu>
    <power_management/>
  </host>
  <guest>
    <os_type>hvm</os_type>
    <arch name='i686'>
      <wordsize>32</wordsize>
      <emulator>/usr/bin/test-hv</emulator>
      <domain type='test'/>
    </arch>
  </guest>
</capabilities>
"""

# Live XML of a running TCG guest from libvirt 9.0 / QEMU 7.2, with devices of
# every kind the parser handles added.
QEMU_DOMAIN_XML = """<domain type='qemu' id='7'>
  <name>web1</name>
  <uuid>9c678b0e-64d9-47be-be0e-0270edf3f097</uuid>
  <memory unit='KiB'>524288</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <resource>
    <partition>/machine</partition>
  </resource>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <kernel>/var/lib/strata/vmlinuz</kernel>
    <initrd>/var/lib/strata/initramfs.cpio.gz</initrd>
    <boot dev='hd'/>
  </os>
  <cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>qemu64</model>
    <feature policy='require' name='hypervisor'/>
  </cpu>
  <clock offset='utc'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/libvirt/images/web1.qcow2' index='2'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <alias name='sata0-0-0'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='writeback'/>
      <source protocol='rbd' name='vms/web1-data'>
        <host name='ceph-mon1.example.com' port='6789'/>
      </source>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/mapper/shared-lun0'/>
      <target dev='vdc' bus='virtio'/>
      <shareable/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='default' volume='web1-scratch.qcow2'/>
      <target dev='vdd' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/iso/tools.iso'/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci'>
      <alias name='usb'/>
    </controller>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:01'/>
      <source network='default' portid='5e1e5b4c-8d5e-4f8b-9a38-7b7c1e0f1a11' bridge='virbr0'/>
      <target dev='vnet3'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:02'/>
      <source bridge='br-storage'/>
      <model type='e1000e'/>
    </interface>
    <interface type='direct'>
      <mac address='52:54:00:aa:bb:03'/>
      <source dev='eno2' mode='bridge'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:aa:bb:04'/>
      <model type='virtio'/>
    </interface>
    <interface type='hostdev' managed='yes'>
      <mac address='52:54:00:aa:bb:05'/>
      <source>
        <address type='pci' domain='0x0000' bus='0x3b' slot='0x10' function='0x2'/>
      </source>
    </interface>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source>
        <address domain='0x0000' bus='0x06' slot='0x00' function='0x1'/>
      </source>
    </hostdev>
    <hostdev mode='subsystem' type='usb' managed='no'>
      <source>
        <vendor id='0x1234'/>
        <product id='0xbeef'/>
      </source>
    </hostdev>
    <hostdev mode='subsystem' type='usb'>
      <source>
        <address bus='1' device='5'/>
      </source>
    </hostdev>
    <hostdev mode='subsystem' type='mdev' model='vfio-pci'>
      <source>
        <address uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/>
      </source>
    </hostdev>
    <hostdev mode='subsystem' type='scsi'>
      <source>
        <adapter name='scsi_host0'/>
        <address bus='0' target='0' unit='1'/>
      </source>
    </hostdev>
    <hostdev mode='capabilities' type='storage'>
      <source>
        <block>/dev/sdf</block>
      </source>
    </hostdev>
    <memballoon model='virtio'>
      <stats period='1'/>
      <alias name='balloon0'/>
    </memballoon>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+0:+0</label>
  </seclabel>
</domain>
"""

# `virsh -c test:///default dumpxml test` (libvirt 9.0).
TEST_DOMAIN_XML = """<domain type='test' id='1'>
  <name>test</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <memory unit='KiB'>8388608</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='i686'>hvm</type>
    <boot dev='hd'/>
  </os>
  <clock offset='utc'/>
  <devices>
    <disk type='file' device='disk'>
      <source file='/guest/diskimage1'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='aa:bb:cc:dd:ee:ff'/>
      <source network='default'/>
      <target dev='testnet0'/>
    </interface>
    <memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </memballoon>
  </devices>
</domain>
"""

NO_BALLOON_XML = """<domain type='kvm'>
  <name>db1</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <memory unit='GiB'>4</memory>
  <currentMemory unit='MiB'>3072</currentMemory>
  <vcpu>8</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <cpu mode='host-passthrough'/>
  <devices>
    <memballoon model='none'/>
  </devices>
</domain>
"""

BARE_DOMAIN_XML = "<domain type='qemu'><name>bare</name></domain>"


NO_SUPPORT = FakeLibvirtError("this function is not supported by the connection driver", 3)
NOT_RUNNING = FakeLibvirtError("Requested operation is not valid: domain is not running", 55)
NO_DOMAIN = FakeLibvirtError("Domain not found", 42)
RPC_FAILED = FakeLibvirtError("End of file while reading data", 39)


class FakeDomain:
    def __init__(self, name="web1", state=1, xml=QEMU_DOMAIN_XML, persistent=True, info=None,
                 job_type=0, job_error=None, memory_stats=None, memory_stats_error=None,
                 info_error=None, clock=None, dirty_rate=None, measure_lag_s=0.0, start_error=None):
        self._name = name
        self._state = state
        self._xml = xml
        self._persistent = persistent
        self._info = info or [state, 524288, 262144, 2, 123456789]
        self._job_type = job_type
        self._job_error = job_error
        self._memory_stats = memory_stats if memory_stats is not None else {}
        self._memory_stats_error = memory_stats_error
        self._info_error = info_error
        self._clock = clock
        self._dirty_rate = dirty_rate
        self._lag = measure_lag_s
        self._start_error = start_error
        self.calls = []
        self.measure_started = None
        self.disk_capacity_bytes = 1 << 30
        self.measure_seconds = None
        self.conn = None

    def blockInfo(self, target, flags):
        # capacity, allocation, physical
        return [self.disk_capacity_bytes, self.disk_capacity_bytes // 4, self.disk_capacity_bytes // 4]

    def name(self):
        return self._name

    def UUIDString(self):
        return "uuid-%s" % self._name

    def state(self):
        return [self._state, 1]

    def info(self):
        if self._info_error is not None:
            raise self._info_error
        return self._info

    def isActive(self):
        return int(self._state in (1, 2, 3, 4, 7))

    def isPersistent(self):
        return int(self._persistent)

    def XMLDesc(self, flags):
        return self._xml

    def jobInfo(self):
        self.calls.append("jobInfo")
        if self._job_error is not None:
            raise self._job_error
        return [self._job_type] + [0] * 11

    def memoryStats(self):
        self.calls.append("memoryStats")
        if self._memory_stats_error is not None:
            raise self._memory_stats_error
        return self._memory_stats

    def startDirtyRateCalc(self, seconds, flags):
        self.calls.append(("startDirtyRateCalc", seconds, flags))
        if self._start_error is not None:
            raise self._start_error
        self.measure_started = self._clock()
        self.measure_seconds = seconds

    def dirty_rate_stats(self):
        if self._dirty_rate is None:
            return {}
        if self.measure_started is None:
            return {"dirtyrate.calc_status": 0, "dirtyrate.calc_mode": "page-sampling"}
        if self._clock() < self.measure_started + self.measure_seconds + self._lag:
            return {"dirtyrate.calc_status": 1, "dirtyrate.calc_period": self.measure_seconds}
        return {
            "dirtyrate.calc_status": 2,
            "dirtyrate.calc_period": self.measure_seconds,
            "dirtyrate.megabytes_per_second": self._dirty_rate,
        }

    def connect(self):
        return self.conn


class FakePool:
    def __init__(self, name, pool_type="dir", active=True):
        self._name, self._type, self._active = name, pool_type, active

    def name(self):
        return self._name

    def isActive(self):
        return int(self._active)

    def XMLDesc(self, flags):
        return "<pool type='%s'><name>%s</name></pool>" % (self._type, self._name)


class FakeConn:
    def __init__(self, domains=(), networks=(), pools=(), memory_stats=None, memory_stats_error=None,
                 capabilities=QEMU_CAPABILITIES, uri="qemu+tcp://127.0.0.2/system", hostname="hv1",
                 list_networks_error=None, list_pools_error=None, lookup_error=None, hostname_error=None):
        self.domains = list(domains)
        for dom in self.domains:
            dom.conn = self
        self._networks = list(networks)
        self._pools = list(pools)
        self._memory_stats = memory_stats
        self._memory_stats_error = memory_stats_error
        self._capabilities = capabilities
        self._uri = uri
        self._hostname = hostname
        self._list_networks_error = list_networks_error
        self._list_pools_error = list_pools_error
        self._lookup_error = lookup_error
        self._hostname_error = hostname_error
        self.stats_requests = []

    def getInfo(self):
        return ["x86_64", 24105, 2, 2596, 1, 1, 2, 1]

    def getCapabilities(self):
        return self._capabilities

    def getMemoryStats(self, cell, flags=0):
        assert cell == -1
        if self._memory_stats_error is not None:
            raise self._memory_stats_error
        return self._memory_stats

    def getFreeMemory(self):
        return 3 * 1024 * 1024 * 1024

    def getHostname(self):
        if self._hostname_error is not None:
            raise self._hostname_error
        return self._hostname

    def getURI(self):
        return self._uri

    def getLibVersion(self):
        return 9000000

    def getVersion(self):
        return 7002000

    def getType(self):
        return "QEMU"

    def listAllNetworks(self, flags):
        if self._list_networks_error is not None:
            raise self._list_networks_error
        return self._networks

    def listAllStoragePools(self, flags):
        if self._list_pools_error is not None:
            raise self._list_pools_error
        return self._pools

    def listAllDomains(self, flags):
        return self.domains

    def lookupByName(self, name):
        if self._lookup_error is not None:
            raise self._lookup_error
        for dom in self.domains:
            if dom.name() == name:
                return dom
        raise NO_DOMAIN

    def domainListGetStats(self, doms, stats):
        assert stats == 1 << 9
        self.stats_requests.append([dom.name() for dom in doms])
        return [(dom, dom.dirty_rate_stats()) for dom in doms]


# ---- pure helpers ---------------------------------------------------------


@pytest.mark.parametrize("state, name", [
    (0, "nostate"), (1, "running"), (2, "blocked"), (3, "paused"), (4, "shutdown"),
    (5, "shutoff"), (6, "crashed"), (7, "pmsuspended"), (42, "unknown(42)"),
])
def test_domain_state_name(state, name):
    assert domain_state_name(state) == name


@pytest.mark.parametrize("number, text", [(9000000, "9.0.0"), (7002000, "7.2.0"), (7002022, "7.2.22"), (2, "0.0.2"), (10010001, "10.10.1")])
def test_format_version(number, text):
    assert format_version(number) == text


@pytest.mark.parametrize("value, unit, kib", [
    ("131072", None, 131072),
    ("131072", "KiB", 131072),
    ("128", "MiB", 131072),
    ("128", "M", 131072),
    ("4", "GiB", 4194304),
    ("4", "G", 4194304),
    ("1", "TiB", 1073741824),
    ("1048576", "bytes", 1024),
    ("1048576", "b", 1024),
    ("1024000", "KB", 1000000),
    ("1", "GB", 976562),
])
def test_memory_to_kib(value, unit, kib):
    assert memory_to_kib(value, unit) == kib


def test_memory_to_kib_rejects_unknown_units():
    with pytest.raises(InventoryParseError, match="unknown memory unit 'parsecs'"):
        memory_to_kib("3", "parsecs")


def test_host_memory_available_adds_buffers_and_cache():
    stats = {"total": 24683520, "free": 20000000, "buffers": 102400, "cached": 1048576}
    assert host_memory_from_stats(stats) == (24105, 19531, 20655)


def test_host_memory_without_buffers_or_cache():
    assert host_memory_from_stats({"total": 2097152, "free": 1048576}) == (2048, 1024, 1024)


def test_host_memory_needs_total_and_free():
    with pytest.raises(InventoryParseError, match="lack total or free .got buffers, free"):
        host_memory_from_stats({"free": 1, "buffers": 2})


def test_balloon_stats_only_reported_keys_in_whole_mib():
    stats = {"actual": 262144, "rss": 42000, "swap_in": 5, "unused": 1023, "last_update": 99}
    assert balloon_stats_mib(stats) == {"actual_mib": 256, "rss_mib": 41, "unused_mib": 0}
    assert balloon_stats_mib({}) == {}


# ---- XML parsing ------------------------------------------------------------


def test_parse_qemu_capabilities():
    caps = parse_capabilities(QEMU_CAPABILITIES)
    assert caps.arch == "x86_64"
    assert caps.cpu_model == "kvm64"
    assert caps.cpu_vendor == "AMD"
    assert caps.host_uuid == "749694bc-83d1-4c2f-8af3-e92c32444895"
    assert caps.migration_live is True
    assert caps.migration_uri_transports == ["tcp", "rdma"]
    assert [(g.os_type, g.arch, g.domain_types) for g in caps.guests] == [
        ("hvm", "i686", ["qemu"]),
        ("hvm", "x86_64", ["qemu", "kvm"]),
    ]
    assert caps.guests[1].machines == ["pc", "pc-i440fx-1.5", "pc-i440fx-7.2", "pc-q35-7.2", "q35"]


def test_parse_test_driver_capabilities_leaves_unknowns_empty():
    caps = parse_capabilities(TEST_DRIVER_CAPABILITIES)
    assert caps.arch == "i686"
    assert caps.cpu_model is None and caps.cpu_vendor is None and caps.host_uuid is None
    assert caps.migration_live is False and caps.migration_uri_transports == []
    assert caps.guests[0].machines == [] and caps.guests[0].domain_types == ["test"]


def test_parse_capabilities_without_host_or_guest_arch():
    caps = parse_capabilities("<capabilities><guest><os_type>hvm</os_type></guest></capabilities>")
    assert caps.arch is None and caps.host_uuid is None and caps.guests == []


def test_parse_rich_domain_xml():
    parsed = parse_domain_xml(QEMU_DOMAIN_XML)
    assert (parsed.name, parsed.uuid, parsed.domain_type) == ("web1", "9c678b0e-64d9-47be-be0e-0270edf3f097", "qemu")
    assert (parsed.arch, parsed.machine_type) == ("x86_64", "pc-q35-7.2")
    assert parsed.vcpus == 2
    assert (parsed.cpu_mode, parsed.cpu_model) == ("custom", "qemu64")
    assert (parsed.memory_max_kib, parsed.memory_current_kib) == (524288, 262144)
    assert (parsed.balloon_model, parsed.balloon_stats_period_s) == ("virtio", 1)


def _disk(parsed, target):
    return next(disk for disk in parsed.disks if disk.target == target)


def test_parse_domain_disks():
    parsed = parse_domain_xml(QEMU_DOMAIN_XML)
    assert [d.target for d in parsed.disks] == ["vda", "sda", "vdb", "vdc", "vdd", "sdb"]

    root = _disk(parsed, "vda")
    assert (root.type, root.device, root.bus, root.driver_type, root.cache) == ("file", "disk", "virtio", "qcow2", "none")
    assert root.source == "/var/lib/libvirt/images/web1.qcow2"
    assert root.local_file and not root.shared and not root.empty and not root.readonly and root.protocol is None

    empty_cdrom = _disk(parsed, "sda")
    assert empty_cdrom.device == "cdrom" and empty_cdrom.readonly and empty_cdrom.empty
    assert empty_cdrom.source is None and not empty_cdrom.local_file and not empty_cdrom.shared

    rbd = _disk(parsed, "vdb")
    assert (rbd.type, rbd.protocol, rbd.source, rbd.cache) == ("network", "rbd", "vms/web1-data", "writeback")
    assert rbd.shared and not rbd.local_file and not rbd.shareable

    lun = _disk(parsed, "vdc")
    assert (lun.type, lun.source) == ("block", "/dev/mapper/shared-lun0")
    assert lun.shareable and lun.shared and not lun.local_file

    volume = _disk(parsed, "vdd")
    assert (volume.type, volume.source) == ("volume", "default/web1-scratch.qcow2")
    assert not volume.shared and not volume.local_file

    iso = _disk(parsed, "sdb")
    assert iso.readonly and iso.local_file and not iso.empty and iso.source == "/srv/iso/tools.iso"


def test_parse_domain_interfaces():
    parsed = parse_domain_xml(QEMU_DOMAIN_XML)
    assert [(i.type, i.source, i.mac, i.model) for i in parsed.interfaces] == [
        ("network", "default", "52:54:00:aa:bb:01", "virtio"),
        ("bridge", "br-storage", "52:54:00:aa:bb:02", "e1000e"),
        ("direct", "eno2", "52:54:00:aa:bb:03", None),
        ("user", None, "52:54:00:aa:bb:04", "virtio"),
        ("hostdev", "0000:3b:10.2", "52:54:00:aa:bb:05", None),
    ]


def test_parse_domain_hostdevs():
    parsed = parse_domain_xml(QEMU_DOMAIN_XML)
    assert [(h.type, h.mode, h.address) for h in parsed.hostdevs] == [
        ("pci", "subsystem", "0000:06:00.1"),
        ("usb", "subsystem", "vendor 0x1234 product 0xbeef"),
        ("usb", "subsystem", "bus 1 device 5"),
        ("mdev", "subsystem", "uuid c2177883-f1bb-47f0-914d-32a22e3a8804"),
        ("scsi", "subsystem", "scsi_host0 0:0:1"),
        ("storage", "capabilities", "/dev/sdf"),
    ]


def test_parse_domain_memory_units_and_host_passthrough():
    parsed = parse_domain_xml(NO_BALLOON_XML)
    assert (parsed.memory_max_kib, parsed.memory_current_kib) == (4194304, 3145728)
    assert (parsed.cpu_mode, parsed.cpu_model, parsed.vcpus) == ("host-passthrough", None, 8)
    assert parsed.balloon_model == "none" and parsed.balloon_stats_period_s is None


def test_parse_bare_domain_xml():
    parsed = parse_domain_xml(BARE_DOMAIN_XML)
    assert parsed.name == "bare" and parsed.uuid is None
    assert parsed.arch is None and parsed.machine_type is None and parsed.vcpus is None
    assert parsed.cpu_mode is None and parsed.memory_max_kib is None
    assert parsed.balloon_model is None
    assert parsed.disks == [] and parsed.interfaces == [] and parsed.hostdevs == []


def test_parse_domain_xml_errors():
    with pytest.raises(InventoryParseError, match="cannot parse domain XML"):
        parse_domain_xml("<domain><name>broken</domain>")
    with pytest.raises(InventoryParseError, match="expected a <domain> document, got <network>"):
        parse_domain_xml("<network/>")
    with pytest.raises(InventoryParseError, match="cannot parse capabilities XML"):
        parse_capabilities("")


def test_parse_pool_type():
    assert parse_pool_type("<pool type='logical'><name>vg0</name></pool>") == "logical"
    assert parse_pool_type("<pool><name>odd</name></pool>") is None


# ---- option checks ------------------------------------------------------------


def test_resolve_dirty_rate_timeout():
    assert resolve_dirty_rate_timeout(0) is None
    assert resolve_dirty_rate_timeout(0, 5) is None
    assert resolve_dirty_rate_timeout(5) == 15
    assert resolve_dirty_rate_timeout(60) == 70
    assert resolve_dirty_rate_timeout(5, 6) == 6


@pytest.mark.parametrize("seconds, timeout, option, text", [
    (-1, None, "measure_dirty_rate_s", "between 0 (off) and 60 seconds, got -1"),
    (61, None, "measure_dirty_rate_s", "between 0 (off) and 60 seconds, got 61"),
    (5, 5, "dirty_rate_timeout_s", "dirty_rate_timeout_s (5) must be longer than measure_dirty_rate_s (5)"),
    (5, 0, "dirty_rate_timeout_s", "dirty_rate_timeout_s (0) must be longer"),
])
def test_resolve_dirty_rate_timeout_rejects(seconds, timeout, option, text):
    with pytest.raises(StrataError) as raised:
        resolve_dirty_rate_timeout(seconds, timeout)
    assert text in str(raised.value)
    assert raised.value.details == {"option": option}


def test_domain_request_keeps_order_and_drops_repeats():
    request = domain_request(["b", "a", "b"], measure_dirty_rate_s=3)
    assert request.names == ["b", "a"]
    assert (request.measure_dirty_rate_s, request.dirty_rate_timeout_s) == (3, 13)


@pytest.mark.parametrize("names, text", [
    ([], "must list at least one domain"),
    (["a", ""], "must not be empty"),
])
def test_domain_request_rejects_bad_names(names, text):
    with pytest.raises(StrataError, match=text):
        domain_request(names)


# ---- gathering with fakes -----------------------------------------------------


def _host_conn(**kwargs):
    defaults = dict(
        domains=[
            FakeDomain("web1", state=1, job_type=2),
            FakeDomain("db1", state=5, xml=NO_BALLOON_XML, info=[5, 4194304, 4194304, 8, 0]),
        ],
        networks=[FakeNetwork("default"), FakeNetwork("br-ext", active=False, bridge="", autostart=False)],
        pools=[FakePool("images"), FakePool("ceph", "rbd", active=False)],
        memory_stats={"total": 24683520, "free": 20000000, "buffers": 102400, "cached": 1048576},
    )
    defaults.update(kwargs)
    return FakeConn(**defaults)


def test_gather_host_facts():
    facts = gather_host_facts(_host_conn()).to_dict()
    assert facts["hostname"] == "hv1"
    assert facts["host_uuid"] == "749694bc-83d1-4c2f-8af3-e92c32444895"
    assert (facts["libvirt_version"], facts["hypervisor_type"], facts["hypervisor_version"]) == ("9.0.0", "QEMU", "7.2.0")
    assert (facts["arch"], facts["cpu_count"], facts["cpu_model"], facts["cpu_vendor"]) == ("x86_64", 2, "kvm64", "AMD")
    assert (facts["memory_total_mib"], facts["memory_free_mib"], facts["memory_available_mib"]) == (24105, 19531, 20655)
    assert facts["memory_source"] == "node_memory_stats"
    assert facts["migration_live"] is True and facts["migration_uri_transports"] == ["tcp", "rdma"]
    assert [g["arch"] for g in facts["guests"]] == ["i686", "x86_64"]
    assert facts["networks"] == [
        {"name": "br-ext", "active": False, "bridge": None, "autostart": False},
        {"name": "default", "active": True, "bridge": "virbr0", "autostart": True},
    ]
    assert facts["storage_pools"] == [
        {"name": "ceph", "active": False, "type": "rbd"},
        {"name": "images", "active": True, "type": "dir"},
    ]
    assert facts["domains"] == [
        {"name": "db1", "uuid": "uuid-db1", "state": "shutoff", "persistent": True, "vcpus": 8,
         "memory_current_mib": 4096, "memory_max_mib": 4096, "job_running": False},
        {"name": "web1", "uuid": "uuid-web1", "state": "running", "persistent": True, "vcpus": 2,
         "memory_current_mib": 256, "memory_max_mib": 512, "job_running": True},
    ]


def test_gather_host_facts_falls_back_when_memory_stats_are_unsupported():
    facts = gather_host_facts(_host_conn(memory_stats_error=NO_SUPPORT))
    assert (facts.memory_total_mib, facts.memory_free_mib, facts.memory_available_mib) == (24105, 3072, 3072)
    assert facts.memory_source == "node_info"


def test_gather_host_facts_reports_other_memory_errors():
    with pytest.raises(FakeLibvirtError):
        gather_host_facts(_host_conn(memory_stats_error=RPC_FAILED))


def test_gather_host_facts_without_network_and_storage_drivers():
    facts = gather_host_facts(_host_conn(list_networks_error=NO_SUPPORT, list_pools_error=NO_SUPPORT))
    assert facts.networks == [] and facts.storage_pools == []


@pytest.mark.parametrize("which", ["list_networks_error", "list_pools_error"])
def test_gather_host_facts_reports_real_listing_failures(which):
    with pytest.raises(FakeLibvirtError):
        gather_host_facts(_host_conn(**{which: RPC_FAILED}))


def test_network_without_bridge():
    conn = _host_conn(networks=[FakeNetwork("sriov", bridge_error=FakeLibvirtError("network has no bridge", 1))])
    assert gather_host_facts(conn).networks[0].bridge is None


def test_domain_that_vanishes_while_listing_is_skipped():
    conn = _host_conn()
    conn.domains.append(FakeDomain("gone", info_error=NO_DOMAIN))
    assert [d.name for d in gather_host_facts(conn).domains] == ["db1", "web1"]


def test_domain_listing_reports_other_errors():
    conn = _host_conn()
    conn.domains.append(FakeDomain("broken", info_error=RPC_FAILED))
    with pytest.raises(FakeLibvirtError):
        gather_host_facts(conn)


@pytest.mark.parametrize("dom, running", [
    (FakeDomain(state=5), False),
    (FakeDomain(state=1, job_type=0), False),
    (FakeDomain(state=1, job_type=1), True),
    (FakeDomain(state=3, job_type=2), True),
    (FakeDomain(state=1, job_type=3), False),
    (FakeDomain(state=1, job_error=NO_SUPPORT), False),
    (FakeDomain(state=1, job_error=NOT_RUNNING), False),
])
def test_job_running(dom, running):
    assert inventory._job_running(dom) is running


def test_job_running_reports_unexpected_errors():
    with pytest.raises(FakeLibvirtError):
        inventory._job_running(FakeDomain(state=1, job_error=RPC_FAILED))


def test_inactive_domain_is_not_asked_for_jobs():
    dom = FakeDomain(state=5)
    inventory._job_running(dom)
    assert dom.calls == []


def test_gather_running_domain_facts():
    stats = {"actual": 262144, "unused": 180000, "available": 250000, "usable": 200000,
             "disk_caches": 20480, "rss": 150000, "swap_in": 0, "last_update": 1}
    conn = FakeConn(domains=[FakeDomain("web1", memory_stats=stats)])
    facts = inventory.domain_facts(inventory.lookup_domain(conn, "web1")).to_dict()
    assert (facts["name"], facts["uuid"], facts["state"], facts["persistent"]) == ("web1", "uuid-web1", "running", True)
    assert (facts["domain_type"], facts["arch"], facts["machine_type"]) == ("qemu", "x86_64", "pc-q35-7.2")
    assert (facts["vcpus"], facts["cpu_mode"], facts["cpu_model"]) == (2, "custom", "qemu64")
    assert (facts["memory_max_mib"], facts["memory_current_mib"]) == (512, 256)
    assert facts["job_running"] is False
    assert facts["balloon"] == {
        "has_device": True, "model": "virtio", "stats_period_s": 1,
        "actual_mib": 256, "unused_mib": 175, "available_mib": 244, "usable_mib": 195,
        "disk_caches_mib": 20, "rss_mib": 146,
    }
    assert len(facts["disks"]) == 6 and len(facts["interfaces"]) == 5 and len(facts["hostdevs"]) == 6
    assert facts["disks"][0]["source"] == "/var/lib/libvirt/images/web1.qcow2"
    assert facts["dirty_rate_mibps"] is None


def test_shutoff_domain_has_no_balloon_stats_and_is_not_asked():
    dom = FakeDomain("web1", state=5, persistent=False)
    facts = inventory.domain_facts(dom)
    assert facts.state == "shutoff" and facts.persistent is False
    assert facts.balloon.has_device and facts.balloon.actual_mib is None
    assert dom.calls == []


def test_domain_without_balloon_device_is_not_asked_for_stats():
    dom = FakeDomain("db1", xml=NO_BALLOON_XML)
    facts = inventory.domain_facts(dom)
    assert facts.balloon.has_device is False and facts.balloon.model == "none"
    assert "memoryStats" not in dom.calls


def test_domain_stopping_during_stats_is_tolerated():
    facts = inventory.domain_facts(FakeDomain("web1", memory_stats_error=NOT_RUNNING))
    assert facts.balloon.actual_mib is None


def test_domain_stats_failure_is_reported():
    with pytest.raises(FakeLibvirtError):
        inventory.domain_facts(FakeDomain("web1", memory_stats_error=RPC_FAILED))


def test_unknown_domain_names_domain_host_and_uri_without_password():
    conn = FakeConn(domains=[FakeDomain("web1")], uri="qemu+tcp://admin:hunter2@127.0.0.2/system")
    with pytest.raises(DomainNotFoundError) as raised:
        inventory.domain_facts(inventory.lookup_domain(conn, "web9"))
    message = str(raised.value)
    assert message.startswith("domain 'web9' is not defined on host 'hv1' (qemu+tcp://admin@127.0.0.2/system)")
    assert "hunter2" not in message
    assert raised.value.details == {"domain": "web9", "host": "hv1", "uri": "qemu+tcp://admin@127.0.0.2/system"}


def test_unknown_domain_when_hostname_is_unavailable():
    conn = FakeConn(hostname_error=RPC_FAILED)
    with pytest.raises(DomainNotFoundError, match=r"not defined on host 'qemu\+tcp://127.0.0.2/system'"):
        inventory.domain_facts(inventory.lookup_domain(conn, "web9"))


def test_lookup_errors_other_than_not_found_are_reported():
    with pytest.raises(FakeLibvirtError):
        inventory.domain_facts(inventory.lookup_domain(FakeConn(lookup_error=RPC_FAILED), "web1"))


# ---- dirty rate ---------------------------------------------------------------


def _conn_with(*domains):
    return FakeConn(domains=list(domains))


def test_measure_dirty_rate_polls_until_measured():
    clock = FakeClock()
    dom = FakeDomain("web1", clock=clock, dirty_rate=57, measure_lag_s=0.6)
    _conn_with(dom)
    rate = measure_dirty_rate(dom, 2, 12, sleep=clock.sleep, clock=clock)
    assert rate == 57.0 and isinstance(rate, float)
    assert dom.calls == [("startDirtyRateCalc", 2, 0)]
    assert clock.sleeps == [2, 0.25, 0.25, 0.25]


def test_measure_dirty_rates_measures_all_domains_at_once():
    clock = FakeClock()
    web = FakeDomain("web1", clock=clock, dirty_rate=10)
    db = FakeDomain("db1", clock=clock, dirty_rate=250, measure_lag_s=0.3)
    conn = _conn_with(web, db)
    assert measure_dirty_rates(conn, [web, db], 3, 13, sleep=clock.sleep, clock=clock) == {"web1": 10.0, "db1": 250.0}
    assert web.measure_started == db.measure_started == 1000.0
    assert clock.sleeps[0] == 3
    assert conn.stats_requests == [["web1", "db1"], ["db1"], ["db1"]]


def test_measure_dirty_rate_times_out():
    clock = FakeClock()
    dom = FakeDomain("web1", clock=clock, dirty_rate=5, measure_lag_s=100)
    conn = _conn_with(dom)
    with pytest.raises(DirtyRateError) as raised:
        measure_dirty_rates(conn, [dom], 2, 4, sleep=clock.sleep, clock=clock)
    assert "domain(s) 'web1' on host 'hv1' (qemu+tcp://127.0.0.2/system) was not measured within 4 s (dirty_rate_timeout_s)" in str(raised.value)
    assert clock.now == pytest.approx(1004.0)
    assert sum(clock.sleeps) == pytest.approx(4.0)


def test_measure_dirty_rate_needs_a_running_domain():
    clock = FakeClock()
    dom = FakeDomain("web1", state=3, clock=clock, dirty_rate=5)
    conn = _conn_with(dom)
    with pytest.raises(DomainNotRunningError, match="domain 'web1' on host 'hv1' .*: it is paused, not running"):
        measure_dirty_rates(conn, [dom], 2, 10, sleep=clock.sleep, clock=clock)
    assert dom.calls == []


def test_measure_dirty_rate_start_failure_names_the_way_out():
    clock = FakeClock()
    dom = FakeDomain("web1", clock=clock, start_error=NO_SUPPORT)
    conn = _conn_with(dom)
    with pytest.raises(DirtyRateError) as raised:
        measure_dirty_rates(conn, [dom], 2, 10, sleep=clock.sleep, clock=clock)
    message = str(raised.value)
    assert "cannot start measuring the dirty-page rate of domain 'web1'" in message
    assert "not supported" in message and "set measure_dirty_rate_s to 0" in message
    assert raised.value.details == {"domain": "web1", "libvirt_error_code": 3}


def test_measure_dirty_rate_without_statistics():
    clock = FakeClock()
    dom = FakeDomain("web1", clock=clock, dirty_rate=None)
    conn = _conn_with(dom)
    with pytest.raises(DirtyRateError, match="reported no dirty-rate statistics for domain 'web1'"):
        measure_dirty_rates(conn, [dom], 1, 5, sleep=clock.sleep, clock=clock)


@pytest.mark.parametrize("seconds, timeout, text", [
    (0, 5, "window must be 1 to 60 seconds, got 0"),
    (61, 100, "window must be 1 to 60 seconds, got 61"),
    (5, 5, "timeout (5 s) must be longer than the window (5 s)"),
])
def test_measure_dirty_rate_checks_its_bounds(seconds, timeout, text):
    with pytest.raises(DirtyRateError, match=text.replace("(", r"\(").replace(")", r"\)")):
        measure_dirty_rates(FakeConn(), [], seconds, timeout)


def test_gather_domains_measures_running_domains_only():
    clock = FakeClock()
    web = FakeDomain("web1", clock=clock, dirty_rate=33)
    db = FakeDomain("db1", state=5, xml=NO_BALLOON_XML, clock=clock, dirty_rate=1)
    conn = _conn_with(web, db)
    request = domain_request(["db1", "web1", "db1"], measure_dirty_rate_s=2)
    facts = gather_domains(conn, request, sleep=clock.sleep, clock=clock)
    assert [(f.name, f.dirty_rate_mibps) for f in facts] == [("db1", None), ("web1", 33.0)]
    assert db.calls == []


def test_gather_domains_without_measurement_never_starts_one():
    clock = FakeClock()
    web = FakeDomain("web1", clock=clock, dirty_rate=33)
    facts = gather_domains(_conn_with(web), domain_request(["web1"]), sleep=clock.sleep, clock=clock)
    assert facts[0].dirty_rate_mibps is None
    assert not any(isinstance(call, tuple) for call in web.calls)
    assert clock.sleeps == []


def test_gather_domains_with_no_running_domain_skips_measurement():
    clock = FakeClock()
    db = FakeDomain("db1", state=5, clock=clock, dirty_rate=1)
    facts = gather_domains(_conn_with(db), domain_request(["db1"], 2), sleep=clock.sleep, clock=clock)
    assert facts[0].dirty_rate_mibps is None and clock.sleeps == []


def test_gather_domains_fails_on_unknown_domain_before_measuring():
    clock = FakeClock()
    web = FakeDomain("web1", clock=clock, dirty_rate=33)
    with pytest.raises(DomainNotFoundError, match="domain 'nope'"):
        gather_domains(_conn_with(web), domain_request(["web1", "nope"], 2), sleep=clock.sleep, clock=clock)
    assert web.calls == []
