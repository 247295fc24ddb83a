# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import dataclasses

import pytest

from ansible_collections.strata.migration.plugins.module_utils import _preflight as preflight
from ansible_collections.strata.migration.plugins.module_utils._inventory import (
    BalloonFacts,
    DiskFacts,
    DomainFacts,
    DomainNotFoundError,
    DomainSummary,
    GuestCapability,
    HostdevFacts,
    HostFacts,
    InterfaceFacts,
    InventoryParseError,
    NetworkSummary,
)
from ansible_collections.strata.migration.plugins.module_utils._libvirt import LibvirtClient, StrataError
from ansible_collections.strata.migration.plugins.module_utils._preflight import (
    FAIL,
    PASS,
    WARN,
    CapabilitiesProbe,
    CpuProbe,
    DiskPlacement,
    Finding,
    MigrationXml,
    PreflightData,
    PreflightError,
    PreflightOptions,
)
from ansible_collections.strata.migration.tests.unit.plugins.module_utils.fakes import FakeLibvirtError, FakeNetwork

MIB = 1024 * 1024

SOURCE_URI = "qemu+tcp://127.0.0.11/system"
DEST_URI = "qemu+tcp://127.0.0.12/system"
UUID = "95fa09b0-0f27-46c2-9e37-66c127a19081"


# ---- plain-data builders ----------------------------------------------------


def host(name="hv1", host_uuid=None, **overrides):
    values = dict(
        hostname=name,
        host_uuid=host_uuid or "00000000-0000-0000-0000-%012d" % (int(name[-1]) if name[-1].isdigit() else 9),
        libvirt_version="9.0.0",
        hypervisor_type="QEMU",
        hypervisor_version="7.2.0",
        arch="x86_64",
        cpu_count=2,
        cpu_model="EPYC",
        cpu_vendor="AMD",
        memory_total_mib=8192,
        memory_free_mib=3000,
        memory_available_mib=4000,
        memory_source="node_memory_stats",
        migration_live=True,
        migration_uri_transports=["tcp"],
        guests=[GuestCapability(os_type="hvm", arch="x86_64", domain_types=["qemu", "kvm"],
                                machines=["pc", "pc-i440fx-7.2"])],
        networks=[NetworkSummary(name="labnet", active=True, bridge="virbr1", autostart=True)],
        storage_pools=[],
        domains=[],
    )
    values.update(overrides)
    return HostFacts(**values)


def domain(**overrides):
    values = dict(
        name="web1",
        uuid=UUID,
        state="running",
        persistent=True,
        job_running=False,
        domain_type="qemu",
        arch="x86_64",
        machine_type="pc-i440fx-7.2",
        vcpus=1,
        cpu_mode="custom",
        cpu_model="qemu64",
        memory_max_mib=512,
        memory_current_mib=256,
        balloon=BalloonFacts(has_device=True, model="virtio", stats_period_s=1),
        disks=[],
        interfaces=[],
        hostdevs=[],
    )
    values.update(overrides)
    return DomainFacts(**values)


def summary(name="web1", uuid=UUID, state="running", memory_max_mib=512, memory_current_mib=256):
    return DomainSummary(name=name, uuid=uuid, state=state, persistent=True, vcpus=1,
                         memory_current_mib=memory_current_mib, memory_max_mib=memory_max_mib, job_running=False)


def data(dom="default", source=None, destination=None, **overrides):
    values = dict(
        source_uri=SOURCE_URI,
        dest_uri=DEST_URI,
        source=source or host("hv1"),
        destination=destination or host("hv2"),
        domain_name="web1",
        domain=domain() if dom == "default" else dom,
        cpu=CpuProbe(compared=True, result=preflight.CPU_COMPARE_SUPERSET),
        capabilities=CapabilitiesProbe(machine_checked=True),
        dest_interfaces=["eth0", "lo", "br0"],
    )
    values.update(overrides)
    return PreflightData(**values)


def options(**overrides):
    values = dict(name="web1")
    values.update(overrides)
    return PreflightOptions(**values)


def disk(target="vda", source="/var/lib/libvirt/images/web1.qcow2", disk_type="file", readonly=False,
         shared=False, empty=False, shareable=False):
    return DiskFacts(target=target, bus="virtio", device="disk", type=disk_type, driver_type="qcow2", cache="none",
                     source=source, protocol="rbd" if disk_type == "network" else None, readonly=readonly,
                     shareable=shareable, empty=empty, shared=shared, local_file=disk_type == "file" and not empty)


def placement(location, disk_type="file", readonly=False, pool=None, source="/var/lib/libvirt/images/web1.qcow2",
              target="vda", **details):
    return DiskPlacement(target=target, source=source, type=disk_type, readonly=readonly, location=location,
                         pool=pool, **details)


# ---- options ---------------------------------------------------------------


def test_options_defaults_and_dirty_rate_bound():
    opts = preflight.preflight_options(name="web1", dest_uri=DEST_URI)
    assert opts == PreflightOptions(name="web1")
    assert preflight.preflight_options(name="web1", dest_uri=DEST_URI, measure_dirty_rate_s=3).dirty_rate_timeout_s == 13


@pytest.mark.parametrize("kwargs, option, text", [
    ({"name": ""}, "name", "must name a domain"),
    ({"dest_uri": "http://hv2/system"}, "dest_uri", "dest_uri: invalid libvirt URI"),
    ({"dest_uri": "qemu+tcp://root:s3cret@hv2/nope"}, "dest_uri", "root@hv2"),
    ({"reserve_mib": -1}, "reserve_mib", "0 or more"),
    ({"bandwidth_mibps": -5}, "bandwidth_mibps", "0 or more"),
    ({"dest_capacity_mib": 0}, "dest_capacity_mib", "at least 1"),
    ({"max_downtime_ms": 0}, "max_downtime_ms", "at least 1"),
    ({"measure_dirty_rate_s": 61}, "measure_dirty_rate_s", "between 0"),
])
def test_options_reject_bad_input(kwargs, option, text):
    values = {"name": "web1", "dest_uri": DEST_URI}
    values.update(kwargs)
    with pytest.raises(StrataError, match=text) as error:
        preflight.preflight_options(**values)
    assert error.value.details["option"] == option
    assert "s3cret" not in str(error.value)


# ---- pure helpers -----------------------------------------------------------


@pytest.mark.parametrize("text, parsed", [("9.0.0", (9, 0, 0)), ("10.1", (10, 1)), ("7.2.0-rc1", (7, 2, 0)),
                                          ("x", (0,))])
def test_version_tuple(text, parsed):
    assert preflight.version_tuple(text) == parsed


RICH_XML = """<domain type='kvm'>
  <name>web1</name>
  <cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>Westmere</model>
    <feature policy='require' name='invtsc'/>
  </cpu>
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/></clock>
  <devices>
    <emulator> /usr/bin/qemu-system-x86_64 </emulator>
    <disk type='file' device='disk'><source file='/a.qcow2'/><target dev='vda'/><transient/></disk>
    <disk type='file' device='disk'><source file='/b.qcow2'/><target dev='vdb'/></disk>
    <filesystem type='mount'><driver type='virtiofs'/><source dir='/srv'/><target dir='share'/></filesystem>
    <filesystem type='mount'><driver type='path'/><source dir='/srv'/><target dir='ninep'/></filesystem>
    <shmem name='ivshmem0'><model type='ivshmem-plain'/></shmem>
    <shmem name='doorbell'><model type='ivshmem-doorbell'/><role type='master'/></shmem>
  </devices>
</domain>"""


def test_parse_migration_xml_finds_emulator_cpu_and_blockers():
    parsed = preflight.parse_migration_xml(RICH_XML)
    assert parsed.emulator == "/usr/bin/qemu-system-x86_64"
    assert parsed.cpu_xml.startswith("<cpu mode=\"custom\"") and "Westmere" in parsed.cpu_xml
    assert parsed.invtsc_without_frequency
    assert parsed.shmems == [("ivshmem0", None), ("doorbell", "master")]
    assert parsed.virtiofs_targets == ["share"]
    assert parsed.transient_disks == ["vda"]


def test_parse_migration_xml_invtsc_with_tsc_frequency_and_disabled_invtsc():
    with_frequency = RICH_XML.replace("<timer name='rtc' tickpolicy='catchup'/>",
                                      "<timer name='tsc' frequency='2500000000'/>")
    assert not preflight.parse_migration_xml(with_frequency).invtsc_without_frequency
    disabled = RICH_XML.replace("policy='require' name='invtsc'", "policy='disable' name='invtsc'")
    assert not preflight.parse_migration_xml(disabled).invtsc_without_frequency


def test_parse_bare_migration_xml():
    assert preflight.parse_migration_xml("<domain type='qemu'><name>x</name></domain>") == MigrationXml()


def test_parse_errors():
    for parser in (preflight.parse_migration_xml, preflight.parse_pool_target_path):
        with pytest.raises(InventoryParseError, match="cannot parse"):
            parser("<broken")


def test_parse_pool_target_path():
    assert preflight.parse_pool_target_path(
        "<pool type='dir'><target><path>/srv/shared/</path></target></pool>") == "/srv/shared"
    assert preflight.parse_pool_target_path("<pool type='rbd'><name>ceph</name></pool>") is None
    assert preflight.parse_pool_target_path("<pool type='dir'><target><path> </path></target></pool>") is None


@pytest.mark.parametrize("balloon, overhead, expected, source", [
    (BalloonFacts(True, "virtio", 1, actual_mib=256, unused_mib=200), None, 56, "guest_used"),
    (BalloonFacts(True, "virtio", 1, actual_mib=256, unused_mib=300), None, 0, "guest_used"),
    (BalloonFacts(True, "virtio", 1, actual_mib=256, unused_mib=200, rss_mib=300), None, 56, "guest_used"),
    (BalloonFacts(True, "virtio", 1, actual_mib=256, unused_mib=200, rss_mib=300), 118, 182, "qemu_rss"),
    (BalloonFacts(True, "virtio", 1, actual_mib=0, unused_mib=0), None, 256, "current"),
    (BalloonFacts(True, "virtio", 1, actual_mib=256), None, 256, "current"),
    (BalloonFacts(False, None, None), None, 256, "current"),
])
def test_memory_to_send(balloon, overhead, expected, source):
    estimate = preflight.memory_to_send(domain(balloon=balloon), overhead)
    assert (estimate.memory_mib, estimate.source) == (expected, source)


def test_qemu_overhead_must_not_be_negative():
    with pytest.raises(preflight.PreflightError, match="qemu_overhead_mib"):
        preflight.preflight_options(name="vm", dest_uri="qemu+tcp://127.0.0.12/system", qemu_overhead_mib=-1)


def test_host_summary_hides_the_password():
    result = preflight.host_summary(host("hv2"), "qemu+tcp://root:s3cret@127.0.0.12/system")
    assert result["uri"] == "qemu+tcp://root@127.0.0.12/system"
    assert result["hostname"] == "hv2" and result["libvirt_version"] == "9.0.0"


# ---- checks -------------------------------------------------------------------


def test_maintenance():
    assert preflight.check_maintenance(data(), options()).status == PASS
    finding = preflight.check_maintenance(data(), options(dest_in_maintenance=True))
    assert (finding.status, finding.override) == (FAIL, "dest_in_maintenance")
    assert "hv2" in finding.message


def test_distinct_hosts_pass():
    finding = preflight.check_distinct_hosts(data(), options())
    assert finding == Finding("distinct_hosts", PASS, "source 'hv1' and destination 'hv2' are different hosts")


@pytest.mark.parametrize("destination, dest_uri, reason", [
    (host("hv2", host_uuid="00000000-0000-0000-0000-000000000001"), DEST_URI, "the same host UUID"),
    (host("hv1", host_uuid="11111111-0000-0000-0000-000000000001"), DEST_URI, "the same hostname 'hv1'"),
    (host("hv2"), SOURCE_URI, "the same URI"),
])
def test_distinct_hosts_fail(destination, dest_uri, reason):
    finding = preflight.check_distinct_hosts(data(destination=destination, dest_uri=dest_uri), options())
    assert finding.status == FAIL and reason in finding.message and finding.override is None


@pytest.mark.parametrize("dom, status, text", [
    (domain(), PASS, "is running with no job"),
    (domain(job_running=True), FAIL, "has a job in progress"),
    (domain(state="paused"), WARN, "stays paused"),
    (domain(state="shutoff"), FAIL, "is shutoff, not running"),
    (None, FAIL, "is not defined on the source host 'hv1'"),
])
def test_domain_running(dom, status, text):
    finding = preflight.check_domain_running(data(dom=dom), options())
    assert finding.status == status and text in finding.message and finding.override is None


def test_name_collision_pass():
    finding = preflight.check_name_collision(data(), options())
    assert finding.status == PASS and "no domain on 'hv2' has the name 'web1' or the UUID" in finding.message


def test_name_collision_same_name_other_domain():
    dest = host("hv2", domains=[summary(uuid="other-uuid", state="shutoff")])
    finding = preflight.check_name_collision(data(destination=dest), options())
    assert finding.status == FAIL and "already has a domain named 'web1' (UUID other-uuid, shutoff)" in finding.message
    assert "a different domain" in finding.message and finding.override is None


def test_name_collision_same_uuid_other_name():
    dest = host("hv2", domains=[summary(name="web1-copy", state="shutoff")])
    finding = preflight.check_name_collision(data(destination=dest), options())
    assert finding.status == FAIL and "domain 'web1-copy' with this domain's UUID" in finding.message


def test_name_collision_active_on_both_hosts():
    dest = host("hv2", domains=[summary(state="paused")])
    finding = preflight.check_name_collision(data(destination=dest), options())
    assert finding.status == FAIL and "a migration may be in progress" in finding.message


def test_name_collision_inactive_definition_is_taken_over():
    dest = host("hv2", domains=[summary(state="shutoff")])
    finding = preflight.check_name_collision(data(destination=dest), options())
    assert finding.status == WARN and "inactive definition" in finding.message


def test_name_collision_already_there_without_source_definition():
    dest = host("hv2", domains=[summary()])
    finding = preflight.check_name_collision(data(dom=None, destination=dest), options())
    assert finding == Finding("name_collision", PASS, "already there: domain 'web1' runs on 'hv2'")


def test_name_collision_already_there_with_leftover_source_definition():
    dest = host("hv2", domains=[summary()])
    finding = preflight.check_name_collision(data(dom=domain(state="shutoff"), destination=dest), options())
    assert finding.status == WARN and finding.message.startswith("already there")
    assert "shutoff definition" in finding.message


def test_name_collision_defined_only_on_destination():
    dest = host("hv2", domains=[summary(state="shutoff")])
    finding = preflight.check_name_collision(data(dom=None, destination=dest), options())
    assert finding.status == FAIL and "already has a domain named 'web1'" in finding.message


def test_name_collision_is_not_checked_on_the_same_host():
    same = data(destination=host("hv1", domains=[summary()]), dest_uri=SOURCE_URI)
    finding = preflight.check_name_collision(same, options())
    assert finding.status == PASS and finding.message.startswith("not checked")


def test_already_migrated_needs_distinct_hosts_and_an_inactive_source():
    dest = host("hv2", domains=[summary()])
    assert preflight.already_migrated(data(dom=domain(state="shutoff"), destination=dest)) is not None
    assert preflight.already_migrated(data(destination=dest)) is None
    assert preflight.already_migrated(data(dom=None, destination=dest, dest_uri=SOURCE_URI)) is None
    shut_off_there = host("hv2", domains=[summary(state="shutoff")])
    assert preflight.already_migrated(data(dom=None, destination=shut_off_there)) is None


def test_hypervisor_type():
    assert preflight.check_hypervisor_type(data(), options()).status == PASS
    finding = preflight.check_hypervisor_type(data(destination=host("hv2", hypervisor_type="Xen")), options())
    assert finding.status == FAIL and "QEMU and the destination Xen" in finding.message


@pytest.mark.parametrize("overrides, status, text", [
    ({}, PASS, "not older"),
    ({"libvirt_version": "10.0.0", "hypervisor_version": "8.2.0"}, PASS, "not older"),
    ({"libvirt_version": "8.0.0"}, WARN, "libvirt 8.0.0 < 9.0.0"),
    ({"hypervisor_version": "6.2.0"}, WARN, "QEMU 6.2.0 < 7.2.0"),
])
def test_versions(overrides, status, text):
    finding = preflight.check_versions(data(destination=host("hv2", **overrides)), options())
    assert finding.status == status and text in finding.message and finding.override is None


def test_domain_type():
    assert preflight.check_domain_type(data(), options()).status == PASS
    error = data(capabilities=CapabilitiesProbe(domain_type_error="does not support virt type 'kvm'"))
    finding = preflight.check_domain_type(error, options())
    assert finding.status == FAIL and "qemu/x86_64" in finding.message and "virt type 'kvm'" in finding.message
    no_guest = data(destination=host("hv2", guests=[GuestCapability("hvm", "x86_64", ["kvm"], ["pc"])]))
    assert "offers no domain type qemu/x86_64" in preflight.check_domain_type(no_guest, options()).message


def test_machine_type():
    assert preflight.check_machine_type(data(), options()).status == PASS
    missing = data(capabilities=CapabilitiesProbe(machine_checked=True, machine_error="the machine 'pc-q35-9.9' is not "
                                                                                      "supported"))
    finding = preflight.check_machine_type(missing, options())
    assert finding.status == FAIL and "'pc-i440fx-7.2' is not supported" in finding.message
    assert "pin" not in finding.message  # the destination lists that very machine type
    unchecked = data(capabilities=CapabilitiesProbe(domain_type_error="no emulator"))
    assert preflight.check_machine_type(unchecked, options()).status == WARN
    default = data(dom=domain(machine_type=None))
    assert "default is used" in preflight.check_machine_type(default, options()).message


def test_a_machine_type_from_a_newer_qemu_names_the_one_to_pin():
    older = host("hv2", hypervisor_version="7.2.0", guests=[GuestCapability(
        "hvm", "x86_64", ["qemu"], ["pc", "pc-i440fx-2.12", "pc-i440fx-7.1", "pc-i440fx-7.2", "pc-q35-7.2", "q35"])])
    refused = data(dom=domain(machine_type="pc-i440fx-10.0"), destination=older, capabilities=CapabilitiesProbe(
        machine_checked=True, machine_error="the machine 'pc-i440fx-10.0' is not supported by emulator"))
    finding = preflight.check_machine_type(refused, options())
    assert finding.status == FAIL
    assert "its QEMU (7.2.0) is older" in finding.message
    assert "such as 'pc-i440fx-7.2'" in finding.message and "next cold boot" in finding.message


def test_a_cpu_comparison_that_fails_on_the_machine_type_is_not_reported_twice():
    both = data(dom=domain(machine_type="pc-i440fx-10.0"),
                capabilities=CapabilitiesProbe(machine_checked=True, machine_error="machine not supported"),
                cpu=CpuProbe(compared=True, result=None, error="the machine 'pc-i440fx-10.0' is not supported"))
    finding = preflight.check_cpu(both, options())
    assert finding.status == WARN
    assert "not checked" in finding.message and "machine type 'pc-i440fx-10.0'" in finding.message


@pytest.mark.parametrize("machine, offered, expected", [
    ("pc-i440fx-10.0", ["pc-i440fx-7.2", "pc-i440fx-2.12", "pc-q35-9.0", "pc"], "pc-i440fx-7.2"),
    ("pc-q35-10.0", ["pc-i440fx-7.2", "pc-q35-7.1", "pc-q35-7.2", "q35"], "pc-q35-7.2"),
    ("pc-q35-10.0", ["pc-i440fx-7.2", "pc"], None),
    ("pc", ["pc-i440fx-7.2"], None),
    ("pc-i440fx-7.10", ["pc-i440fx-7.9", "pc-i440fx-7.10"], "pc-i440fx-7.10"),
])
def test_newest_machine_of_family(machine, offered, expected):
    assert preflight.newest_machine_of_family(machine, offered) == expected


@pytest.mark.parametrize("dom, probe, status, text", [
    (domain(), CpuProbe(compared=True, result=2), PASS, "CPU model 'qemu64' is usable"),
    (domain(), CpuProbe(compared=True, result=1), PASS, "usable"),
    (domain(cpu_model="Westmere"), CpuProbe(compared=True, result=0, error="Host CPU does not provide required "
                                                                           "features: sse4.2"),
     FAIL, "CPU model 'Westmere' cannot be provided on the destination: Host CPU does not provide"),
    (domain(cpu_model="Westmere"), CpuProbe(compared=True, error="Unknown CPU model Westmere"),
     FAIL, "Unknown CPU model Westmere"),
    (domain(), CpuProbe(compared=True, result=0), FAIL, "is incompatible"),
    (domain(), CpuProbe(compared=True, result=-1), FAIL, "is incompatible"),
    (domain(cpu_mode=None, cpu_model=None), CpuProbe(compared=False), PASS, "no <cpu> definition"),
    (domain(cpu_mode="host-passthrough", cpu_model=None), CpuProbe(compared=True, result=2), WARN, "identical CPU"),
])
def test_cpu(dom, probe, status, text):
    finding = preflight.check_cpu(data(dom=dom, cpu=probe), options())
    assert finding.status == status and text in finding.message and finding.override is None


def test_memory_fits_available_memory():
    finding = preflight.check_memory(data(), options())
    assert finding.status == PASS
    assert "needs 256 MiB (current memory)" in finding.message
    assert "4000 MiB available less 0 MiB reserve = 4000 MiB" in finding.message


def test_memory_compaction_restore_needs_maximum_memory():
    finding = preflight.check_memory(data(), options(compaction_restore=True))
    assert finding.status == PASS and "needs 512 MiB (maximum memory" in finding.message


def test_memory_capacity_counts_running_domains_at_maximum_memory():
    dest = host("hv2", domains=[
        summary(name="a", uuid="a", memory_max_mib=1024, memory_current_mib=256),
        summary(name="b", uuid="b", state="paused", memory_max_mib=512),
        summary(name="c", uuid="c", state="shutoff", memory_max_mib=4096),
        summary(name="web1", uuid=UUID, state="shutoff"),
    ])
    finding = preflight.check_memory(data(destination=dest), options(dest_capacity_mib=2000, reserve_mib=100))
    assert finding.status == PASS
    assert "declared capacity 2000 MiB less 1536 MiB committed to 2 running domain(s) less 100 MiB reserve = 364 MiB" \
        in finding.message


def test_memory_capacity_too_small_names_dest_capacity_mib():
    finding = preflight.check_memory(data(), options(dest_capacity_mib=128))
    assert (finding.status, finding.override) == (FAIL, "dest_capacity_mib")
    assert finding.message.startswith("too little memory")


def test_memory_reserve_too_large_names_reserve_mib():
    finding = preflight.check_memory(data(), options(reserve_mib=3900))
    assert (finding.status, finding.override) == (FAIL, "reserve_mib")


def test_memory_restore_too_large_names_compaction_restore():
    dest = host("hv2", memory_available_mib=300)
    finding = preflight.check_memory(data(destination=dest), options(compaction_restore=True))
    assert (finding.status, finding.override) == (FAIL, "compaction_restore")


def test_memory_without_free_memory_has_no_override():
    dest = host("hv2", memory_available_mib=100)
    finding = preflight.check_memory(data(destination=dest), options(dest_capacity_mib=100))
    assert (finding.status, finding.override) == (FAIL, None)


def test_memory_without_domain():
    assert preflight.check_memory(data(dom=None), options()).status == WARN


@pytest.mark.parametrize("disks, opts, status, override, text", [
    ([], {}, PASS, None, "no disks"),
    ([placement("shared", "network", source="vms/web1")], {}, PASS, None, "vda (vms/web1) is shared storage"),
    ([placement("destination", pool="shared", pool_type="netfs")], {}, PASS, None,
     "is a volume of netfs pool 'shared', shared with the destination"),
    # libvirt decides from the filesystem, which only the hosts see: a warning that names the override.
    ([placement("destination", pool="shared", pool_type="dir")], {}, WARN, None, "allow_unsafe=true overrides"),
    ([placement("destination", pool="shared", pool_type="dir")], {"allow_unsafe": True}, WARN, None,
     "it must really be, or the guest's disk is corrupted"),
    ([placement("destination", pool="shared", pool_type="netfs")], {"copy_storage": "all", "migrate_disks": ["vda"]},
     FAIL, None, "a copy would write over the disk the guest is using"),
    ([placement("shared", "network", source="vms/web1")], {"copy_storage": "all", "migrate_disks": ["vda"]},
     FAIL, None, "a copy would write over the disk the guest is using"),
    # The same path in a dir pool of the destination may be a stale copy: named, it is written over.
    ([placement("destination", pool="local", pool_type="dir")], {"copy_storage": "all", "migrate_disks": ["vda"]},
     WARN, None, "the copy writes over it, which is right only when it is a stale copy"),
    ([placement("local", pool="local")], {}, FAIL, "copy_storage", "is local to the source (file)"),
    ([placement("local", pool="local", allocation_bytes=300 * MIB)], {"copy_storage": "all"}, WARN, None,
     "300 MiB copied into pool 'local' on the destination (copy_storage=all)"),
    # libvirt creates the copy fully allocated: the disk's size counts, not what it holds.
    ([placement("local", pool="local", allocation_bytes=30 * MIB, capacity_bytes=300 * MIB, pool_available_bytes=200 * MIB)],
     {"copy_storage": "all"}, FAIL, None,
     "pool 'local' on the destination has 200 MiB free, and the copy of vda needs 300 MiB (libvirt creates it fully allocated)"),
    ([placement("local", pool="local", allocation_bytes=30 * MIB, capacity_bytes=200 * MIB, pool_available_bytes=200 * MIB)],
     {"copy_storage": "all"}, WARN, None, "30 MiB copied into pool 'local'"),
    # Two disks into one pool: their sum counts.
    ([placement("local", pool="local", capacity_bytes=150 * MIB, pool_available_bytes=200 * MIB),
      placement("local", pool="local", target="vdb", capacity_bytes=100 * MIB, pool_available_bytes=200 * MIB)],
     {"copy_storage": "all"}, FAIL, None, "the copy of vda, vdb needs 250 MiB"),
    # A disk left out of the copy is not counted, and fails as left behind.
    ([placement("local", pool="local", capacity_bytes=150 * MIB, pool_available_bytes=200 * MIB),
      placement("local", pool="local", target="vdb", capacity_bytes=100 * MIB, pool_available_bytes=200 * MIB)],
     {"copy_storage": "all", "migrate_disks": ["vda"]}, FAIL, "migrate_disks", "vdb (/var/lib/libvirt/images/web1.qcow2) is "
     "local to the source and not in migrate_disks"),
    ([placement("local", pool="local")], {"copy_storage": "all", "migrate_disks": ["vdz"]}, FAIL, "migrate_disks",
     "migrate_disks names vdz, which the domain has no disk with a medium for (it has vda)"),
    ([], {"copy_storage": "all", "migrate_disks": ["vda"]}, FAIL, "migrate_disks", "the domain has no disk"),
    ([placement("local", pool=None)], {"copy_storage": "all"}, FAIL, None,
     "define a storage pool with target path '/var/lib/libvirt/images' there"),
    ([placement("local", "volume", source="default/web1.qcow2")], {"copy_storage": "all"}, FAIL, None,
     "define storage pool 'default' there"),
    ([placement("local", readonly=True, pool="local")], {"copy_storage": "all"}, FAIL, None, "read-only local file"),
    ([placement("local", "block", source="/dev/sdb")], {"copy_storage": "all"}, WARN, None,
     "the device must exist on the destination"),
    ([placement("local", "dir", source="/srv/vfat")], {"copy_storage": "all"}, FAIL, None, "cannot create"),
    ([placement("local"), placement("local", readonly=True)], {}, FAIL, None, "read-only"),
    ([placement("local"), placement("local", pool="local")], {}, FAIL, "copy_storage", "local to the source"),
    ([placement("shared", "network", source="vms/a"), placement("local", pool="local")], {"copy_storage": "all"},
     WARN, None, "shared storage; vda"),
])
def test_storage(disks, opts, status, override, text):
    finding = preflight.check_storage(data(disks=disks), options(**opts))
    assert (finding.status, finding.override) == (status, override)
    assert text in finding.message


def _with_interfaces(*interfaces, **overrides):
    return data(dom=domain(interfaces=list(interfaces)), **overrides)


def test_networks_pass_and_nothing_used():
    assert "uses no networks" in preflight.check_networks(data(), options()).message
    both = _with_interfaces(InterfaceFacts("network", "labnet", None, None), InterfaceFacts("bridge", "br0", None, None),
                            InterfaceFacts("bridge", "virbr1", None, None), InterfaceFacts("direct", "eth0", None, None),
                            InterfaceFacts("user", None, None, None), InterfaceFacts("hostdev", "0000:3b:10.2", None, None))
    finding = preflight.check_networks(both, options())
    assert finding.status == PASS
    assert "network 'labnet', bridge 'br0', bridge 'virbr1', host interface 'eth0'" in finding.message


def test_networks_missing_and_inactive():
    dest = host("hv2", networks=[NetworkSummary("labnet", False, "virbr1", False)])
    finding = preflight.check_networks(_with_interfaces(
        InterfaceFacts("network", "labnet", None, None), InterfaceFacts("network", "only-on-hv1", None, None),
        InterfaceFacts("bridge", "br-missing", None, None), destination=dest), options())
    assert finding.status == FAIL and finding.override is None
    assert "network 'labnet' is not active on the destination: start it there" in finding.message
    assert "network 'only-on-hv1' does not exist on the destination: define it there" in finding.message
    assert "bridge 'br-missing' does not exist or is down on the destination" in finding.message


def test_networks_unverifiable_without_interface_listing():
    finding = preflight.check_networks(_with_interfaces(InterfaceFacts("direct", "eno2", None, None),
                                                        dest_interfaces=None), options())
    assert finding.status == WARN and "host interface 'eno2'" in finding.message


def test_devices_pass():
    assert preflight.check_devices(data(), options()).status == PASS


def test_devices_usb_warns():
    dom = domain(hostdevs=[HostdevFacts("usb", "subsystem", "vendor 0x1234 product 0xbeef")])
    finding = preflight.check_devices(data(dom=dom), options())
    assert finding.status == WARN and "usb vendor 0x1234 product 0xbeef must be plugged" in finding.message


def test_devices_blockers_are_named():
    dom = domain(
        hostdevs=[HostdevFacts("pci", "subsystem", "0000:06:00.1"), HostdevFacts("usb", "subsystem", "bus 1 device 5")],
        interfaces=[InterfaceFacts("hostdev", "0000:3b:10.2", None, None)],
    )
    xml = MigrationXml(invtsc_without_frequency=True, shmems=[("ivshmem0", None), ("ok", "master")],
                       virtiofs_targets=["share"], transient_disks=["vdb"])
    finding = preflight.check_devices(data(dom=dom, xml=xml, snapshot_count=2), options())
    assert finding.status == FAIL and finding.override is None
    for text in ("host device pci 0000:06:00.1 (mode subsystem)", "interface type 'hostdev' 0000:3b:10.2",
                 "2 snapshot(s)", "invtsc", "shmem device 'ivshmem0'", "virtiofs filesystem 'share'",
                 "transient disk 'vdb'", "usb bus 1 device 5 must be plugged"):
        assert text in finding.message
    assert "'ok'" not in finding.message


def test_convergence():
    good = {"strategy": "precopy", "converges": True, "rounds": 3, "transferred_mib": 300.0, "total_s": 1.5,
            "downtime_ms": 40.0, "reason": None}
    assert preflight.check_convergence(good, options()).status == PASS
    bad = dict(good, converges=False, reason="dirty rate above bandwidth")
    finding = preflight.check_convergence(bad, options())
    assert (finding.status, finding.override) == (WARN, "allow_postcopy")
    assert "dirty rate above bandwidth" in finding.message
    assert preflight.check_convergence(dict(bad, required_max_downtime_ms=900.0),
                                       options(allow_postcopy=True)).override == "max_downtime_ms"
    assert preflight.check_convergence(dict(bad, required_bandwidth_mibps=900.0),
                                       options(allow_postcopy=True)).override == "bandwidth_mibps"
    assert preflight.check_convergence(bad, options(allow_postcopy=True)).override is None


# ---- aggregation -----------------------------------------------------------------


def test_evaluate_clean_case_runs_every_check_in_order():
    report = preflight.evaluate(data(), options())
    assert [f.check for f in report.findings] == list(preflight.CHECKS[:-1])
    assert report.passed and not report.already_migrated
    assert report.failed_checks == [] and report.warned_checks == []
    result = report.to_result()
    assert result["prediction"] is None
    assert result["source"]["hostname"] == "hv1" and result["destination"]["uri"] == DEST_URI
    assert result["findings"][0] == {"check": "maintenance", "status": "pass",
                                     "message": "host 'hv2' is not under maintenance", "override": None}


def test_evaluate_collects_failures_warnings_and_the_message():
    report = preflight.evaluate(
        data(destination=host("hv2", libvirt_version="8.0.0"), cpu=CpuProbe(compared=True, result=0)),
        options(dest_in_maintenance=True, dest_capacity_mib=64),
    )
    assert not report.passed
    assert report.failed_checks == ["maintenance", "cpu", "memory"]
    assert report.warned_checks == ["versions"]
    message = report.failure_message()
    assert message.startswith("domain 'web1' cannot live-migrate from host 'hv1' (%s) to host 'hv2' (%s); 3 check(s)"
                              % (SOURCE_URI, DEST_URI))
    assert "maintenance (override: dest_in_maintenance)" in message
    assert "cpu (no option overrides it)" in message
    assert "memory (override: dest_capacity_mib)" in message


def test_evaluate_adds_convergence_with_a_prediction():
    prediction = {"strategy": "precopy", "converges": False, "rounds": 30, "transferred_mib": 9000.0,
                  "total_s": 30.0, "downtime_ms": 900.0, "reason": "too hot"}
    report = preflight.evaluate(data(), options(), prediction)
    assert report.findings[-1].check == "convergence" and report.warned_checks == ["convergence"]
    assert report.passed and report.prediction == prediction


def test_evaluate_already_migrated_short_circuits():
    dest = host("hv2", domains=[summary()])
    report = preflight.evaluate(data(dom=None, destination=dest), options(dest_in_maintenance=True), {"x": 1})
    assert report.already_migrated and report.passed
    assert [f.check for f in report.findings] == ["distinct_hosts", "name_collision"]
    assert report.prediction is None


def test_evaluate_without_domain_on_source():
    dest = host("hv2", domains=[summary(state="shutoff")])
    report = preflight.evaluate(data(dom=None, destination=dest), options())
    assert [f.check for f in report.findings] == ["maintenance", "distinct_hosts", "domain_running", "name_collision"]
    assert report.failed_checks == ["domain_running", "name_collision"]


# ---- prediction --------------------------------------------------------------------


@dataclasses.dataclass
class FakePrediction:
    strategy: str
    converges: bool = True

    def to_dict(self):
        return {"strategy": self.strategy, "converges": self.converges, "rounds": 2, "transferred_mib": 10.0,
                "total_s": 0.1, "downtime_ms": 5.0, "reason": None}


def test_predict_uses_memory_to_send_and_the_assumed_bandwidth(monkeypatch):
    calls = []

    def choose(inputs, allow_postcopy):
        calls.append((inputs, allow_postcopy))
        return FakePrediction("precopy"), [FakePrediction("postcopy", False)]

    monkeypatch.setattr(preflight, "choose_strategy", choose)
    balloon = BalloonFacts(True, "virtio", 1, actual_mib=256, unused_mib=200)
    prediction = preflight.predict(data(dom=domain(balloon=balloon), dirty_rate_mibps=3.5), options())
    inputs, allow_postcopy = calls[0]
    assert (inputs.memory_mib, inputs.dirty_rate_mibps, inputs.bandwidth_mibps, inputs.max_downtime_ms) == \
        (56, 3.5, preflight.DEFAULT_PREDICTION_BANDWIDTH_MIBPS, 300)
    assert inputs.zero_page_mib == 512 - 56 and inputs.hot_set_mib is None
    assert allow_postcopy is False
    assert prediction["strategy"] == "precopy"
    assert prediction["candidates"][0]["strategy"] == "postcopy"
    assert prediction["inputs"]["bandwidth_assumed"] is True
    assert prediction["inputs"]["zero_page_mib"] == 456


def test_predict_with_given_bandwidth(monkeypatch):
    monkeypatch.setattr(preflight, "choose_strategy", lambda inputs, allow: (FakePrediction("precopy"), []))
    prediction = preflight.predict(data(dirty_rate_mibps=1.0), options(bandwidth_mibps=100, allow_postcopy=True))
    assert prediction["inputs"]["bandwidth_mibps"] == 100 and not prediction["inputs"]["bandwidth_assumed"]
    assert prediction["inputs"]["allow_postcopy"] is True


def test_predict_with_the_model_a_quiet_guest_converges_with_precopy():
    report = preflight.evaluate(data(dirty_rate_mibps=0.5), options(bandwidth_mibps=100),
                                preflight.predict(data(dirty_rate_mibps=0.5), options(bandwidth_mibps=100)))
    assert report.prediction["strategy"] == "precopy" and report.prediction["converges"]
    assert [c["strategy"] for c in report.prediction["candidates"]] == ["precopy", "postcopy", "layered"]
    assert report.findings[-1].check == "convergence" and report.findings[-1].status == PASS


def test_predict_with_the_model_a_busy_guest_needs_postcopy():
    busy = data(dirty_rate_mibps=400.0)
    precopy_only = preflight.predict(busy, options(bandwidth_mibps=100))
    assert precopy_only["strategy"] == "precopy" and not precopy_only["converges"]
    assert "allow_postcopy=true" in precopy_only["reason"]
    finding = preflight.check_convergence(precopy_only, options(bandwidth_mibps=100))
    assert (finding.status, finding.override) == (WARN, "allow_postcopy")
    with_postcopy = preflight.predict(busy, options(bandwidth_mibps=100, allow_postcopy=True))
    assert with_postcopy["strategy"] in ("postcopy", "layered") and with_postcopy["converges"]


def test_no_prediction_without_a_dirty_rate():
    assert preflight.predict(data(), options()) is None
    assert preflight.predict(data(dom=None, dirty_rate_mibps=1.0), options()) is None


# ---- gathering with fakes ---------------------------------------------------------------

CPU_INCOMPATIBLE = FakeLibvirtError("the CPU is incompatible with host CPU: Host CPU does not provide required "
                                    "features: sse4.2, popcnt", 91)
NO_VOL = FakeLibvirtError("Storage volume not found: no storage vol with matching path", 50)
NO_POOL = FakeLibvirtError("Storage pool not found", 49)
NO_DOMAIN = FakeLibvirtError("Domain not found", 42)
NO_SUPPORT = FakeLibvirtError("this function is not supported by the connection driver", 3)
RPC_FAILED = FakeLibvirtError("End of file while reading data", 39)

LAB_XML = """<domain type='qemu'>
  <name>web1</name>
  <uuid>%s</uuid>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
  <cpu mode='custom' match='exact' check='full'><model fallback='forbid'>Westmere</model></cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
      <source file='/srv/shared/web1-data.qcow2'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='volume' device='disk'><source pool='scratch' volume='web1.img'/><target dev='vdc'/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='vms/web1'/><target dev='vdd'/></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
    <interface type='network'><source network='labnet'/></interface>
    <memballoon model='virtio'><stats period='1'/></memballoon>
  </devices>
</domain>""" % UUID


class FakeDom:
    def __init__(self, state=1, snapshots=0, snapshot_error=None, job_type=0):
        self._state = state
        self._snapshots = snapshots
        self._snapshot_error = snapshot_error
        self.job_type = job_type
        self.conn = None

    def name(self):
        return "web1"

    def UUIDString(self):
        return UUID

    def state(self):
        return [self._state, 1]

    def info(self):
        return [self._state, 524288, 262144, 1, 0]

    def isActive(self):
        return int(self._state == 1)

    def isPersistent(self):
        return 1

    def XMLDesc(self, flags):
        return LAB_XML

    def jobInfo(self):
        return [self.job_type] + [0] * 11

    def memoryStats(self):
        return {"actual": 262144, "unused": 131072}

    def snapshotNum(self, flags):
        if self._snapshot_error is not None:
            raise self._snapshot_error
        return self._snapshots

    def startDirtyRateCalc(self, seconds, flags):
        self.started = seconds

    def connect(self):
        return self.conn

    def blockInfo(self, target, flags):
        # capacity, allocation, physical: a 1 GiB disk holding 300 MiB
        return [1 << 30, 300 * MIB, 310 * MIB]


class FakeVolume:
    def __init__(self, pool):
        self._pool = pool

    def storagePoolLookupByVolume(self):
        return self._pool


class FakePool:
    def __init__(self, name, path, volumes=(), active=True, visible_after_refresh=(), refresh_error=None,
                 pool_type="dir", available_mib=10240):
        self._name, self._path, self._active = name, path, active
        self._type, self._available = pool_type, available_mib * MIB
        self.volumes = set(volumes)
        self._hidden = set(visible_after_refresh)
        self._refresh_error = refresh_error
        self.refreshed = 0

    def name(self):
        return self._name

    def isActive(self):
        return int(self._active)

    def XMLDesc(self, flags):
        return "<pool type='%s'><name>%s</name><target><path>%s</path></target></pool>" % (
            self._type, self._name, self._path)

    def info(self):
        return [2, 20480 * MIB, 0, self._available]

    def refresh(self, flags):
        if self._refresh_error is not None:
            raise self._refresh_error
        self.refreshed += 1
        self.volumes |= self._hidden

    def storageVolLookupByName(self, name):
        if name in self.volumes:
            return FakeVolume(self)
        raise NO_VOL


class FakeInterface:
    def __init__(self, name):
        self._name = name

    def name(self):
        return self._name


class FakeConn:
    """Just enough of virConnect for gather_host_facts and the pre-flight probes."""

    def __init__(self, hostname, domains=(), pools=(), cpu_result=2, cpu_error=None, caps_errors=None,
                 interfaces=("eth0", "lo"), interfaces_error=None, networks=(), vol_error=None, pool_error=None):
        self._hostname = hostname
        self.domains = list(domains)
        for dom in self.domains:
            dom.conn = self
        self.pools = list(pools)
        self._cpu_result, self._cpu_error = cpu_result, cpu_error
        self._caps_errors = caps_errors or {}
        self._interfaces, self._interfaces_error = interfaces, interfaces_error
        self._networks = list(networks)
        self._vol_error = vol_error
        self._pool_error = pool_error
        self.calls = []

    def getInfo(self):
        return ["x86_64", 8000, 2, 2596, 1, 1, 2, 1]

    def getCapabilities(self):
        return ("<capabilities><host><uuid>uuid-%s</uuid><cpu><arch>x86_64</arch></cpu></host>"
                "<guest><os_type>hvm</os_type><arch name='x86_64'><machine>pc-i440fx-7.2</machine>"
                "<domain type='qemu'/></arch></guest></capabilities>" % self._hostname)

    def getMemoryStats(self, cell, flags=0):
        return {"total": 8 * 1024 * 1024, "free": 4 * 1024 * 1024}

    def getHostname(self):
        return self._hostname

    def getURI(self):
        return "qemu+tcp://%s/system" % self._hostname

    def getLibVersion(self):
        return 9000000

    def getVersion(self):
        return 7002000

    def getType(self):
        return "QEMU"

    def listAllNetworks(self, flags):
        return self._networks

    def listAllStoragePools(self, flags):
        if self._pool_error is not None:
            raise self._pool_error
        return self.pools

    def listAllDomains(self, flags):
        return self.domains

    def lookupByName(self, name):
        for dom in self.domains:
            if dom.name() == name:
                return dom
        raise NO_DOMAIN

    def compareHypervisorCPU(self, emulator, arch, machine, virttype, xml, flags):
        self.calls.append(("compareHypervisorCPU", emulator, arch, machine, virttype, flags))
        assert xml.startswith("<cpu")
        if self._cpu_error is not None:
            raise self._cpu_error
        return self._cpu_result

    def getDomainCapabilities(self, emulator, arch, machine, virttype, flags):
        self.calls.append(("getDomainCapabilities", machine))
        error = self._caps_errors.get(machine)
        if error is not None:
            raise error
        return "<domainCapabilities><machine>%s</machine></domainCapabilities>" % (machine or "pc-i440fx-7.2")

    def storageVolLookupByPath(self, path):
        if self._vol_error is not None:
            raise self._vol_error
        for pool in self.pools:
            if path.startswith(pool._path + "/") and path.rsplit("/", 1)[1] in pool.volumes:
                return FakeVolume(pool)
        raise NO_VOL

    def storagePoolLookupByName(self, name):
        for pool in self.pools:
            if pool.name() == name:
                return pool
        raise NO_POOL

    def listAllInterfaces(self, flags):
        assert flags == preflight.LIST_INTERFACES_ACTIVE
        if self._interfaces_error is not None:
            raise self._interfaces_error
        return [FakeInterface(name) for name in self._interfaces]

    def domainListGetStats(self, doms, stats):
        return [(dom, {"dirtyrate.calc_status": 2, "dirtyrate.megabytes_per_second": 12}) for dom in doms]


def _gather(source, dest, **opts):
    return preflight.gather_preflight(source, dest, options(**opts), SOURCE_URI, DEST_URI,
                                      sleep=lambda s: None, clock=lambda: 0.0)


def test_gather_reads_both_hosts_and_probes_the_destination():
    shared = FakePool("shared", "/srv/shared", visible_after_refresh=["web1-data.qcow2"])
    local = FakePool("local", "/var/lib/libvirt/images")
    dest = FakeConn("hv2", pools=[local, shared], networks=[])
    gathered = _gather(FakeConn("hv1", domains=[FakeDom()]), dest)
    assert gathered.domain.name == "web1" and gathered.source.hostname == "hv1"
    assert gathered.destination.hostname == "hv2"
    assert gathered.xml.emulator == "/usr/bin/qemu-system-x86_64"
    assert gathered.cpu == CpuProbe(compared=True, result=2)
    assert dest.calls[0] == ("compareHypervisorCPU", "/usr/bin/qemu-system-x86_64", "x86_64", "pc-i440fx-7.2",
                             "qemu", preflight.COMPARE_CPU_FAIL_INCOMPATIBLE)
    assert gathered.capabilities == CapabilitiesProbe(machine_checked=True)
    assert [(d.target, d.location, d.pool) for d in gathered.disks] == [
        ("vda", "local", "local"),
        ("vdb", "destination", "shared"),
        ("vdc", "local", None),
        ("vdd", "shared", None),
    ]
    assert shared.refreshed == 1 and local.refreshed == 1
    assert gathered.dest_interfaces == ["eth0", "lo"]
    assert gathered.snapshot_count == 0 and gathered.dirty_rate_mibps is None


def test_gather_volume_disks_by_pool_and_name():
    scratch = FakePool("scratch", "/srv/scratch", volumes=["web1.img"])
    gathered = _gather(FakeConn("hv1", domains=[FakeDom()]), FakeConn("hv2", pools=[scratch]))
    assert [(d.target, d.location, d.pool) for d in gathered.disks if d.type == "volume"] == [
        ("vdc", "destination", "scratch")]
    empty = FakePool("scratch", "/srv/scratch")
    gathered = _gather(FakeConn("hv1", domains=[FakeDom()]), FakeConn("hv2", pools=[empty]))
    assert [(d.location, d.pool) for d in gathered.disks if d.type == "volume"] == [("local", "scratch")]


def test_gather_tolerates_a_failing_refresh_and_missing_drivers():
    busy = FakePool("local", "/var/lib/libvirt/images", refresh_error=RPC_FAILED)
    dest = FakeConn("hv2", pools=[busy], interfaces_error=NO_SUPPORT)
    gathered = _gather(FakeConn("hv1", domains=[FakeDom(snapshot_error=NO_SUPPORT)]), dest)
    assert gathered.disks[0].location == "local" and gathered.disks[0].pool == "local"
    assert gathered.dest_interfaces is None and gathered.snapshot_count == 0


def test_gather_without_storage_driver_on_destination():
    dest = FakeConn("hv2", pool_error=NO_SUPPORT, vol_error=NO_SUPPORT)
    gathered = _gather(FakeConn("hv1", domains=[FakeDom()]), dest)
    assert [d.location for d in gathered.disks] == ["local", "local", "local", "shared"]


def test_gather_cpu_and_capability_errors_become_probe_results():
    dest = FakeConn("hv2", cpu_error=CPU_INCOMPATIBLE, caps_errors={"pc-i440fx-7.2": FakeLibvirtError("no machine", 8)})
    gathered = _gather(FakeConn("hv1", domains=[FakeDom(snapshots=1)]), dest)
    assert gathered.cpu.result == preflight.CPU_COMPARE_INCOMPATIBLE
    assert "sse4.2, popcnt" in gathered.cpu.error
    assert gathered.capabilities.machine_checked and "no machine" in gathered.capabilities.machine_error
    assert gathered.snapshot_count == 1
    unknown = FakeConn("hv2", cpu_error=FakeLibvirtError("Unknown CPU model Westmere", 1),
                       caps_errors={None: FakeLibvirtError("no emulator", 38)})
    gathered = _gather(FakeConn("hv1", domains=[FakeDom()]), unknown)
    assert gathered.cpu.result is None and "Unknown CPU model Westmere" in gathered.cpu.error
    assert gathered.capabilities.domain_type_error.startswith("no emulator")
    assert not gathered.capabilities.machine_checked


def test_gather_reads_only_who_the_source_is_not_its_other_domains():
    # Listing the source's domains would wait for one another migration is tearing down there.
    source = FakeConn("hv1", domains=[FakeDom()])

    def refuse(*_args):
        raise AssertionError("the source's domains were listed")

    source.listAllDomains = refuse
    gathered = _gather(source, FakeConn("hv2"))
    assert gathered.source.hostname == "hv1" and gathered.source.domains == []
    assert gathered.domain.name == "web1"


def test_gather_measures_the_dirty_rate_of_a_running_domain():
    gathered = _gather(FakeConn("hv1", domains=[FakeDom()]), FakeConn("hv2"), measure_dirty_rate_s=2,
                       dirty_rate_timeout_s=12)
    assert gathered.dirty_rate_mibps == 12.0
    paused = _gather(FakeConn("hv1", domains=[FakeDom(state=3)]), FakeConn("hv2"), measure_dirty_rate_s=2,
                     dirty_rate_timeout_s=12)
    assert paused.dirty_rate_mibps is None


def test_gather_reads_the_destination_during_the_dirty_rate_window():
    # The window's seconds pass while the destination is read: only what is left of them is slept.
    now = [0.0]
    slept = []

    class SlowDestination(FakeConn):
        def compareHypervisorCPU(self, *args):
            now[0] += 0.75
            return super().compareHypervisorCPU(*args)

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    gathered = preflight.gather_preflight(
        FakeConn("hv1", domains=[FakeDom()]), SlowDestination("hv2"),
        options(measure_dirty_rate_s=2, dirty_rate_timeout_s=12), SOURCE_URI, DEST_URI, sleep=sleep,
        clock=lambda: now[0],
    )
    assert gathered.dirty_rate_mibps == 12.0 and gathered.cpu.compared
    assert slept == [1.25]


def test_gather_does_not_measure_a_domain_busy_with_another_job():
    # The other job holds libvirt's lock: a measurement would wait for it and then fail.
    busy = FakeDom(job_type=2)
    gathered = _gather(FakeConn("hv1", domains=[busy]), FakeConn("hv2"), measure_dirty_rate_s=2,
                       dirty_rate_timeout_s=12)
    assert gathered.domain.job_running
    assert gathered.dirty_rate_mibps is None


def test_gather_domain_already_on_the_destination_skips_the_probes():
    running_there = FakeDom()
    dest = FakeConn("hv2", domains=[running_there])
    gathered = _gather(FakeConn("hv1"), dest)
    assert gathered.domain is None and dest.calls == []
    assert preflight.already_migrated(gathered).name == "web1"


def test_gather_unknown_domain_names_both_hosts():
    with pytest.raises(DomainNotFoundError, match="defined neither on the source host 'hv1'.*nor on the destination "
                                                  "host 'hv2'"):
        _gather(FakeConn("hv1"), FakeConn("hv2"))


@pytest.mark.parametrize("side", ["source", "destination"])
def test_gather_names_the_host_whose_libvirt_failed(side):
    broken = FakeConn("hv1" if side == "source" else "hv2", domains=[FakeDom()] if side == "source" else [])

    def fail(*_args):
        raise RPC_FAILED

    broken.getInfo = fail
    source = broken if side == "source" else FakeConn("hv1", domains=[FakeDom()])
    dest = broken if side == "destination" else FakeConn("hv2")
    with pytest.raises(PreflightError, match=r"\(%s host\): End of file" % side) as error:
        _gather(source, dest)
    assert error.value.details["libvirt_error_code"] == 39


def test_run_preflight_connects_both_and_reports(monkeypatch):
    monkeypatch.setattr(preflight, "choose_strategy", lambda inputs, allow: (FakePrediction("precopy"), []))
    source = LibvirtClient(SOURCE_URI, 5, opener=lambda uri: FakeConn("hv1", domains=[FakeDom()]))
    pools = [
        FakePool("local", "/var/lib/libvirt/images"),
        FakePool("shared", "/srv/shared", volumes=["web1-data.qcow2"]),
        FakePool("scratch", "/srv/scratch", volumes=["web1.img"]),
    ]
    dest_networks = [FakeNetwork("labnet", bridge="virbr-labnet")]
    dest = LibvirtClient(DEST_URI, 5, opener=lambda uri: FakeConn("hv2", pools=pools, networks=dest_networks))
    report = preflight.run_preflight(source, dest, options(copy_storage=True, measure_dirty_rate_s=1,
                                                           dirty_rate_timeout_s=11),
                                     sleep=lambda s: None, clock=lambda: 0.0)
    assert report.passed, report.failure_message()
    assert report.warned_checks == ["storage"]
    assert report.prediction["inputs"]["memory_mib"] == 128
    assert report.findings[-1].check == "convergence"


def test_run_preflight_names_the_destination_it_cannot_reach():
    source = LibvirtClient(SOURCE_URI, 5, opener=lambda uri: FakeConn("hv1", domains=[FakeDom()]))

    def refuse(uri):
        raise FakeLibvirtError("unable to connect to server at '127.0.0.12:16509': Connection refused", 38)

    dest = LibvirtClient("qemu+tcp://root:s3cret@127.0.0.12/system", 5, opener=refuse)
    with pytest.raises(PreflightError, match="destination host: cannot connect to libvirt at "
                                             "qemu\\+tcp://root@127.0.0.12/system.*option dest_uri") as error:
        preflight.run_preflight(source, dest, options())
    assert error.value.details["option"] == "dest_uri"
    assert "s3cret" not in str(error.value)


def _raise(error):
    def fail(*args):
        raise error
    return fail


@pytest.mark.parametrize("side, method", [
    ("destination", "storageVolLookupByPath"),
    ("destination", "listAllInterfaces"),
    ("destination", "listAllStoragePools"),
    ("source", "snapshotNum"),
])
def test_gather_reports_unexpected_probe_errors(side, method):
    source = FakeConn("hv1", domains=[FakeDom()])
    dest = FakeConn("hv2", pools=[FakePool("scratch", "/srv/scratch")])
    target = dest if side == "destination" else source.domains[0]
    setattr(target, method, _raise(RPC_FAILED))
    with pytest.raises(PreflightError, match=r"\(%s host\): End of file" % side):
        _gather(source, dest)


def test_gather_reports_unexpected_volume_lookup_errors():
    scratch = FakePool("scratch", "/srv/scratch")
    scratch.storageVolLookupByName = _raise(RPC_FAILED)
    with pytest.raises(PreflightError, match=r"\(destination host\)"):
        _gather(FakeConn("hv1", domains=[FakeDom()]), FakeConn("hv2", pools=[scratch]))
    dest = FakeConn("hv2")
    dest.storagePoolLookupByName = _raise(RPC_FAILED)
    with pytest.raises(PreflightError, match=r"\(destination host\)"):
        _gather(FakeConn("hv1", domains=[FakeDom()]), dest)


def test_gather_ignores_inactive_pools_when_looking_for_a_copy_target():
    inactive = FakePool("local", "/var/lib/libvirt/images", active=False)
    gathered = _gather(FakeConn("hv1", domains=[FakeDom()]), FakeConn("hv2", pools=[inactive]))
    assert (gathered.disks[0].location, gathered.disks[0].pool) == ("local", None)
    assert inactive.refreshed == 0
