# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible_collections.strata.migration.plugins.module_utils._cluster import (
    METADATA_NAMESPACE,
    ActiveCopy,
    ClusterError,
    ClusterHost,
    HostReading,
    MigrationMetadata,
    UnreachableHost,
    build_report,
    cluster_hosts,
    gather_cluster,
    has_blocking_host_device,
    host_uri_secrets,
    local_disk_targets,
    parse_migration_metadata,
    pinned_value,
)
from ansible_collections.strata.migration.plugins.module_utils._inventory import (
    InventoryParseError,
    domain_facts,
)
from ansible_collections.strata.migration.plugins.module_utils._planner import parse_input
from ansible_collections.strata.migration.plugins.module_utils._preflight import DiskPlacement
from ansible_collections.strata.migration.tests.unit.plugins.module_utils.fakes import FakeLibvirtError
from ansible_collections.strata.migration.tests.unit.plugins.module_utils.test_inventory import (
    NO_DOMAIN,
    FakeConn,
    FakeDomain,
)

ERR_NO_STORAGE_VOL = 50
ERR_SYSTEM_ERROR = 38

# As libvirt 9.0 returns it after `virsh metadata ... --key strata --set` (children qualified too).
STORED_METADATA = """<metadata>
    <strata:compaction xmlns:strata="https://strata-migration.github.io/xmlns/compaction/1" before_mib="512"/>
    <strata:migration xmlns:strata="%s">
      <strata:anti_affinity group="web"/>
      <strata:pinned reason="licence bound to host"/>
    </strata:migration>
  </metadata>""" % METADATA_NAMESPACE


def _domain_xml(name="web1", metadata="", devices=""):
    return """<domain type='qemu'>
  <name>%s</name>
  <uuid>uuid-%s</uuid>
  %s
  <memory unit='KiB'>524288</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
  <devices>%s<memballoon model='virtio'/></devices>
</domain>""" % (name, name, metadata, devices)


LOCAL_DISK = """<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
  <source file='/var/lib/libvirt/images/%s.qcow2'/><target dev='vda' bus='virtio'/></disk>"""
SHARED_DISK = """<disk type='network' device='disk'><source protocol='rbd' name='vms/data'/>
  <target dev='vdb' bus='virtio'/></disk>"""
EMPTY_CDROM = "<disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>"
PCI_HOSTDEV = """<hostdev mode='subsystem' type='pci' managed='yes'><source>
  <address domain='0x0000' bus='0x3b' slot='0x00' function='0x1'/></source></hostdev>"""
USB_HOSTDEV = """<hostdev mode='subsystem' type='usb'><source>
  <vendor id='0x0781'/><product id='0x5567'/></source></hostdev>"""
HOSTDEV_INTERFACE = """<interface type='hostdev' managed='yes'><source>
  <address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x0'/></source></interface>"""


# ---- options ------------------------------------------------------------------


def test_cluster_hosts_keeps_order_and_fills_defaults():
    specs = cluster_hosts([
        {"name": "hv1", "uri": "qemu+tcp://127.0.0.11/system", "memory_capacity_mib": 4096, "reserve_mib": 512},
        {"name": "hv2", "uri": "qemu+tcp://127.0.0.12/system"},
    ])
    assert specs == [
        ClusterHost("hv1", "qemu+tcp://127.0.0.11/system", 4096, 512),
        ClusterHost("hv2", "qemu+tcp://127.0.0.12/system", None, 0),
    ]


@pytest.mark.parametrize("hosts, option, text", [
    ([], "hosts", "at least one host"),
    ([{"name": "", "uri": "qemu:///system"}], "hosts[0].name", "must not be empty"),
    ([{"name": "hv1", "uri": "qemu+tcp://a/system"}, {"name": "hv1", "uri": "qemu+tcp://b/system"}],
     "hosts[1].name", r"host 'hv1' is listed twice \(also hosts\[0\]\)"),
    ([{"name": "hv1", "uri": "qemu+tcp://a/system"}, {"name": "hv2", "uri": "qemu+tcp://a/system"}],
     "hosts[1].uri", "host 'hv2' has the same URI as host 'hv1'"),
    ([{"name": "hv1", "uri": "xen:///system"}], "hosts[0].uri", r"hosts\[0\].uri \(host 'hv1'\): invalid libvirt URI"),
    ([{"name": "hv1", "uri": "qemu:///system", "memory_capacity_mib": 0}], "hosts[0].memory_capacity_mib",
     "at least 1 MiB"),
    ([{"name": "hv1", "uri": "qemu:///system", "reserve_mib": -1}], "hosts[0].reserve_mib", "must not be negative"),
])
def test_cluster_hosts_rejects(hosts, option, text):
    with pytest.raises(ClusterError, match=text) as caught:
        cluster_hosts(hosts)
    assert caught.value.details["option"] == option


def test_cluster_hosts_never_shows_a_uri_password():
    with pytest.raises(ClusterError) as caught:
        cluster_hosts([{"name": "hv1", "uri": "qemu+tcp://admin:s3cret@hv1/nowhere"}])
    assert "s3cret" not in str(caught.value)
    assert "admin@hv1" in str(caught.value)


def test_cluster_hosts_checks_the_connect_timeout():
    with pytest.raises(ClusterError, match="connect_timeout_s must be at least 1") as caught:
        cluster_hosts([{"name": "hv1", "uri": "qemu:///system"}], connect_timeout_s=0)
    assert caught.value.details["option"] == "connect_timeout_s"


def test_host_uri_secrets_reads_nested_uris_of_any_shape():
    hosts = [
        {"name": "hv1", "uri": "qemu+tcp://admin:p%40ss@hv1/system"},
        {"name": "hv2", "uri": "qemu+tcp://hv2/system"},
        {"name": "hv3", "uri": 7},
        "not a dict",
    ]
    assert host_uri_secrets(hosts) == ["p%40ss", "p@ss"]
    assert host_uri_secrets(None) == []


# ---- metadata -------------------------------------------------------------------


def test_metadata_as_libvirt_stores_it():
    assert parse_migration_metadata(_domain_xml(metadata=STORED_METADATA)) == MigrationMetadata(
        anti_affinity_group="web", pinned_reason="licence bound to host"
    )


def test_metadata_written_by_hand_without_prefixed_children():
    metadata = ("<metadata><strata:migration xmlns:strata='%s'><anti_affinity group=' db '/>"
                "</strata:migration></metadata>" % METADATA_NAMESPACE)
    assert parse_migration_metadata(_domain_xml(metadata=metadata)) == MigrationMetadata(anti_affinity_group="db")


def test_metadata_pinned_without_reason_still_pins():
    metadata = "<metadata><m:migration xmlns:m='%s'><m:pinned/></m:migration></metadata>" % METADATA_NAMESPACE
    assert parse_migration_metadata(_domain_xml(metadata=metadata)).pinned_reason == "pinned in the domain's metadata"


def test_metadata_of_other_namespaces_is_ignored():
    metadata = ("<metadata><strata:migration xmlns:strata='https://example.com/other'><strata:pinned reason='x'/>"
                "</strata:migration><m:migration xmlns:m='%s'><o:pinned xmlns:o='https://example.com/o' reason='y'/>"
                "<m:anti_affinity/></m:migration></metadata>" % METADATA_NAMESPACE)
    assert parse_migration_metadata(_domain_xml(metadata=metadata)) == MigrationMetadata()


def test_no_metadata():
    assert parse_migration_metadata(_domain_xml()) == MigrationMetadata()


def test_metadata_of_unreadable_xml():
    with pytest.raises(InventoryParseError, match="cannot parse domain XML"):
        parse_migration_metadata("<domain>")


# ---- why a VM cannot move -------------------------------------------------------------


def _facts(devices, name="web1"):
    return domain_facts(FakeDomain(name, xml=_domain_xml(name, devices=devices)))


def _placement(target, location):
    return DiskPlacement(target=target, source="/images/%s" % target, type="file", readonly=False, location=location)


def test_local_disks_are_those_no_other_host_reaches():
    disks = _facts(LOCAL_DISK % "web1" + SHARED_DISK + EMPTY_CDROM).disks
    assert local_disk_targets(disks, [[_placement("vda", "local")], [_placement("vda", "local")]]) == ["vda"]


def test_a_disk_one_other_host_reaches_is_not_local():
    disks = _facts(LOCAL_DISK % "web1").disks
    assert local_disk_targets(disks, [[_placement("vda", "local")], [_placement("vda", "destination")]]) == []


def test_local_disks_are_not_judged_without_another_host():
    assert local_disk_targets(_facts(LOCAL_DISK % "web1").disks, []) == []


@pytest.mark.parametrize("devices, blocking", [
    ("", False),
    (PCI_HOSTDEV, True),
    (USB_HOSTDEV, False),
    (HOSTDEV_INTERFACE, True),
    (USB_HOSTDEV + PCI_HOSTDEV, True),
])
def test_blocking_host_devices(devices, blocking):
    assert has_blocking_host_device(_facts(devices)) is blocking


def _copy(name="web1", host="hv1", state="running", persistent=True, memory_mib=1024, vcpus=2, **kwargs):
    return ActiveCopy(name=name, uuid="uuid-%s" % name, host=host, state=state, persistent=persistent,
                      memory_mib=memory_mib, vcpus=vcpus, **kwargs)


def test_not_pinned():
    assert pinned_value(_copy()) is False


def test_automatic_pin_reasons():
    copy = _copy(local_disks=["vda", "vdb"], host_device=True)
    assert pinned_value(copy) == "local disk vda; local disk vdb; host device"


def test_metadata_reason_wins_over_automatic_ones():
    copy = _copy(metadata=MigrationMetadata(pinned_reason="licence"), local_disks=["vda"], host_device=True)
    assert pinned_value(copy) == "licence"


def test_a_vm_active_on_several_hosts_is_pinned_first():
    copy = _copy(metadata=MigrationMetadata(pinned_reason="licence"))
    assert pinned_value(copy, ["hv1", "hv2"]) == "active on several hosts (hv1, hv2); licence"
    assert pinned_value(_copy(), ["hv1", "hv2"]) == "active on several hosts (hv1, hv2)"


# ---- the report ------------------------------------------------------------------------

SPECS = [
    ClusterHost("hv1", "qemu+tcp://127.0.0.11/system", None, 512),
    ClusterHost("hv2", "qemu+tcp://127.0.0.12/system", 3072, 0),
    ClusterHost("hv3", "qemu+tcp://127.0.0.13/system", None, 0),
]


def _reading(name, active=(), defined=(), cpus=4, memory_total_mib=8192):
    return HostReading(name=name, cpus=cpus, memory_total_mib=memory_total_mib, active=list(active),
                       defined=list(defined))


def test_report_in_planner_format():
    readings = [
        _reading("hv2", [_copy("db1", "hv2", memory_mib=2048, vcpus=4, local_disks=["vda"])], ["db1", "spare"]),
        _reading("hv1", [
            _copy("web2", "hv1", metadata=MigrationMetadata(anti_affinity_group="web")),
            _copy("web1", "hv1", state="paused", metadata=MigrationMetadata(anti_affinity_group="web")),
        ], ["web1", "web2"], cpus=2, memory_total_mib=16000),
    ]
    report = build_report(SPECS, readings)
    assert report.hosts == [
        {"name": "hv1", "memory_capacity_mib": 16000, "reserve_mib": 512, "cpus": 2, "memory_total_mib": 16000,
         "running_vms": 2},
        {"name": "hv2", "memory_capacity_mib": 3072, "reserve_mib": 0, "cpus": 4, "memory_total_mib": 8192,
         "running_vms": 1},
    ]
    assert report.vms == [
        {"name": "db1", "uuid": "uuid-db1", "host": "hv2", "memory_mib": 2048, "vcpus": 4,
         "anti_affinity_group": None, "pinned": "local disk vda", "local_disks": ["vda"], "local_disk_mib": 0.0,
         "state": "running"},
        {"name": "web1", "uuid": "uuid-web1", "host": "hv1", "memory_mib": 1024, "vcpus": 2,
         "anti_affinity_group": "web", "pinned": False, "local_disks": [], "local_disk_mib": 0.0, "state": "paused"},
        {"name": "web2", "uuid": "uuid-web2", "host": "hv1", "memory_mib": 1024, "vcpus": 2,
         "anti_affinity_group": "web", "pinned": False, "local_disks": [], "local_disk_mib": 0.0, "state": "running"},
    ]
    assert report.where == {
        "db1": "hv2", "uuid-db1": "hv2", "web1": "hv1", "uuid-web1": "hv1", "web2": "hv1", "uuid-web2": "hv1",
    }
    assert report.definitions == {"db1": ["hv2"], "spare": ["hv2"], "web1": ["hv1"], "web2": ["hv1"]}
    assert report.conflicts == []
    assert report.to_result()["unreachable_hosts"] == []


def test_report_feeds_the_planner_with_its_planner_keys():
    readings = [_reading("hv1", [_copy("web1", "hv1", metadata=MigrationMetadata(pinned_reason="licence"))]),
                _reading("hv2")]
    report = build_report(SPECS, readings)
    hosts = [{key: host[key] for key in ("name", "memory_capacity_mib", "reserve_mib", "cpus")}
             for host in report.hosts]
    vms = [{key: vm[key] for key in ("name", "uuid", "host", "memory_mib", "vcpus", "anti_affinity_group", "pinned")}
           for vm in report.vms]
    host_specs, vm_specs, _options = parse_input(hosts, vms, {"mode": "rebalance"})
    assert [host.memory_capacity_mib for host in host_specs] == [8192, 3072]
    assert vm_specs[0].pinned_reason == "not migratable: licence"


def test_a_vm_active_on_two_hosts_is_a_conflict_listed_once_on_its_running_persistent_copy():
    # Mid-migration: the source runs and is persistent, the incoming copy waits paused and transient.
    readings = [
        _reading("hv1", [_copy("web1", "hv1", state="paused", persistent=False)]),
        _reading("hv2", [_copy("web1", "hv2", state="running", persistent=True)], ["web1"]),
    ]
    report = build_report(SPECS, readings)
    assert report.conflicts == [{"vm": "web1", "uuid": "uuid-web1", "running_on": ["hv1", "hv2"],
                                 "defined_on": ["hv2"]}]
    assert [(vm["name"], vm["host"], vm["pinned"]) for vm in report.vms] == [
        ("web1", "hv2", "active on several hosts (hv1, hv2)")
    ]
    assert report.where == {"web1": "hv2", "uuid-web1": "hv2"}
    assert [host["running_vms"] for host in report.hosts] == [1, 1]


def test_between_equal_copies_the_first_host_of_the_option_counts():
    readings = [_reading("hv3", [_copy("web1", "hv3")]), _reading("hv2", [_copy("web1", "hv2")])]
    assert build_report(SPECS, readings).where["web1"] == "hv2"


def test_a_vm_defined_on_two_hosts_is_a_conflict():
    readings = [
        _reading("hv1", [_copy("web1", "hv1")], ["web1", "db1"]),
        _reading("hv2", [], ["web1"]),
        _reading("hv3", [], ["db1"]),
    ]
    report = build_report(SPECS, readings)
    assert report.conflicts == [
        {"vm": "db1", "uuid": None, "running_on": [], "defined_on": ["hv1", "hv3"]},
        {"vm": "web1", "uuid": "uuid-web1", "running_on": ["hv1"], "defined_on": ["hv1", "hv2"]},
    ]
    # Only running twice pins: a move may take over the other definition.
    assert [vm["pinned"] for vm in report.vms] == [False]


def test_unreachable_hosts_are_reported_and_left_out():
    unreachable = [UnreachableHost("hv3", "qemu+tcp://127.0.0.13/system", "did not answer")]
    report = build_report(SPECS, [_reading("hv1")], unreachable)
    assert [host["name"] for host in report.hosts] == ["hv1"]
    assert report.to_result()["unreachable_hosts"] == [
        {"name": "hv3", "uri": "qemu+tcp://127.0.0.13/system", "reason": "did not answer"}
    ]


# ---- gathering with fakes ------------------------------------------------------------------


class FakeVolume:
    def __init__(self, pool_name):
        self._pool_name = pool_name

    def storagePoolLookupByVolume(self):
        return self

    def name(self):
        return self._pool_name


class FakeClusterConn(FakeConn):
    """A host whose storage pools hold the given paths (path -> pool name)."""

    def __init__(self, hostname, domains=(), volumes=None, lookup_error=None):
        super().__init__(domains=domains, hostname=hostname, memory_stats={"total": 8388608, "free": 4194304},
                         uri="qemu+tcp://%s/system" % hostname, lookup_error=lookup_error)
        self.volumes = volumes or {}
        self.closed = False

    def storageVolLookupByPath(self, path):
        if path not in self.volumes:
            raise FakeLibvirtError("Storage volume not found", ERR_NO_STORAGE_VOL)
        return FakeVolume(self.volumes[path])

    def setKeepAlive(self, interval, count):
        return 0

    def close(self):
        self.closed = True
        return 0


def _opener(conns):
    def open_uri(uri):
        conn = conns.get(uri)
        if conn is None:
            raise FakeLibvirtError("unable to connect to server: Connection refused", ERR_SYSTEM_ERROR)
        return conn
    return open_uri


def _specs(*names):
    return cluster_hosts([{"name": name, "uri": "qemu+tcp://%s/system" % name} for name in names])


def _cluster_conns():
    return {
        "qemu+tcp://hv1/system": FakeClusterConn("hv1", [
            FakeDomain("web1", state=1, xml=_domain_xml("web1", STORED_METADATA, LOCAL_DISK % "web1")),
            FakeDomain("db1", state=1, xml=_domain_xml("db1", devices=LOCAL_DISK % "db1")),
            FakeDomain("old", state=5, xml=_domain_xml("old")),
        ]),
        "qemu+tcp://hv2/system": FakeClusterConn("hv2", [
            FakeDomain("old", state=5, xml=_domain_xml("old"), persistent=True),
            FakeDomain("gpu1", state=3, xml=_domain_xml("gpu1", devices=PCI_HOSTDEV)),
        ], volumes={"/var/lib/libvirt/images/db1.qcow2": "shared"}),
    }


def test_gather_cluster_reads_every_host():
    conns = _cluster_conns()
    report = gather_cluster(_specs("hv1", "hv2"), 5, opener=_opener(conns))
    assert [(h["name"], h["cpus"], h["memory_total_mib"], h["running_vms"]) for h in report.hosts] == [
        ("hv1", 2, 8192, 2), ("hv2", 2, 8192, 1),
    ]
    assert [(vm["name"], vm["host"], vm["memory_mib"], vm["vcpus"], vm["anti_affinity_group"], vm["pinned"],
             vm["state"]) for vm in report.vms] == [
        ("db1", "hv1", 256, 2, None, False, "running"),
        ("gpu1", "hv2", 256, 2, None, "host device", "paused"),
        ("web1", "hv1", 256, 2, "web", "licence bound to host", "running"),
    ]
    assert report.definitions == {"db1": ["hv1"], "gpu1": ["hv2"], "old": ["hv1", "hv2"], "web1": ["hv1"]}
    assert report.conflicts == [{"vm": "old", "uuid": None, "running_on": [], "defined_on": ["hv1", "hv2"]}]
    assert all(conn.closed for conn in conns.values())


def test_gather_cluster_finds_local_disks_through_the_other_hosts():
    conns = _cluster_conns()
    conns["qemu+tcp://hv1/system"].domains[0] = FakeDomain("web1", state=1, xml=_domain_xml("web1", devices=LOCAL_DISK % "web1"))
    conns["qemu+tcp://hv1/system"].domains[0].conn = conns["qemu+tcp://hv1/system"]
    report = gather_cluster(_specs("hv1", "hv2"), 5, opener=_opener(conns))
    web1 = {vm["name"]: vm for vm in report.vms}["web1"]
    assert (web1["pinned"], web1["local_disks"], web1["local_disk_mib"]) == ("local disk vda", ["vda"], 1024.0)
    # When the moves copy local disks, they no longer pin the VM; they are still listed, with their size.
    copying = gather_cluster(_specs("hv1", "hv2"), 5, opener=_opener(conns), copy_storage="all")
    web1 = {vm["name"]: vm for vm in copying.vms}["web1"]
    assert (web1["pinned"], web1["local_disks"], web1["local_disk_mib"]) == (False, ["vda"], 1024.0)


def test_an_unreachable_required_host_fails_naming_it_without_password():
    conns = _cluster_conns()
    with pytest.raises(ClusterError) as caught:
        specs = cluster_hosts([{"name": "hv1", "uri": "qemu+tcp://hv1/system"},
                               {"name": "hv3", "uri": "qemu+tcp://admin:s3cret@hv3/system"}])
        gather_cluster(specs, 5, opener=_opener(conns))
    message = str(caught.value)
    assert "cannot read host 'hv3' (qemu+tcp://admin@hv3/system)" in message
    assert "Connection refused" in message and "required" in message
    assert "s3cret" not in message
    assert caught.value.details == {"host": "hv3", "uri": "qemu+tcp://admin@hv3/system"}
    assert conns["qemu+tcp://hv1/system"].closed


def test_an_unreachable_host_is_left_out_when_not_required():
    report = gather_cluster(_specs("hv1", "hv3"), 5, required=False, opener=_opener(_cluster_conns()))
    assert [host["name"] for host in report.hosts] == ["hv1"]
    [unreachable] = report.unreachable_hosts
    assert (unreachable.name, unreachable.uri) == ("hv3", "qemu+tcp://hv3/system")
    assert "Connection refused" in unreachable.reason


def test_a_host_that_fails_while_read_counts_as_unreachable():
    conns = _cluster_conns()
    conns["qemu+tcp://hv2/system"] = FakeClusterConn(
        "hv2", [FakeDomain("gpu1", state=1)], lookup_error=FakeLibvirtError("connection reset", ERR_SYSTEM_ERROR)
    )
    report = gather_cluster(_specs("hv1", "hv2"), 5, required=False, opener=_opener(conns))
    assert [host["name"] for host in report.hosts] == ["hv1"]
    assert "connection reset" in report.unreachable_hosts[0].reason


class VanishingDomain(FakeDomain):
    """Listed, then gone (migrated away) when its XML is asked for."""

    def XMLDesc(self, flags):
        raise NO_DOMAIN


class BrokenDomain(FakeDomain):
    def XMLDesc(self, flags):
        raise FakeLibvirtError("internal error", 1)


def test_a_domain_that_vanishes_while_read_is_skipped():
    conns = {"qemu+tcp://hv1/system": FakeClusterConn("hv1", [VanishingDomain("web1", state=1), FakeDomain("db1")])}
    report = gather_cluster(_specs("hv1"), 5, opener=_opener(conns))
    assert [vm["name"] for vm in report.vms] == ["db1"]
    assert report.hosts[0]["running_vms"] == 1


def test_other_domain_errors_fail_the_host():
    conns = {"qemu+tcp://hv1/system": FakeClusterConn("hv1", [BrokenDomain("web1", state=1)])}
    with pytest.raises(ClusterError, match="cannot read host 'hv1'.*internal error"):
        gather_cluster(_specs("hv1"), 5, opener=_opener(conns))
