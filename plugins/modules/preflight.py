#!/usr/bin/python
# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: preflight
short_description: Check whether a running VM can live-migrate to a host, and if not why
version_added: 0.1.0
description:
  - Reads the source host (O(uri)), the domain and the destination host (O(dest_uri)), then runs a fixed set of
    checks. Each check reports a finding with a status (V(pass), V(warn) or V(fail)), a message saying why, and the
    option that changes its outcome (V(null) when only a change on the hosts or the domain does).
  - The task fails when a check fails, unless O(fail_on_findings=false); its message lists the failing checks with
    their overrides.
  - With O(measure_dirty_rate_s), also measures how fast the domain dirties its memory and predicts how a live
    migration would go (strategy, rounds, time, downtime) with the pre-copy model.
  - "The checks, by code (stable strings, in the order they are reported):"
  - "V(maintenance): the destination is not under maintenance. Fails when O(dest_in_maintenance=true).
    Override: O(dest_in_maintenance)."
  - "V(distinct_hosts): source and destination are different hosts. Fails when they have the same host UUID,
    hostname or URI. Override: none."
  - "V(domain_running): the domain is defined on the source, runs and has no job (migration, save, dump) in progress.
    Warns when it is paused (it migrates and stays paused); fails otherwise. Override: none."
  - "V(name_collision): no other domain on the destination has the domain's name or UUID. Fails for a different
    domain of that name or UUID, or when the domain is active on both hosts; warns when the destination holds an
    inactive definition of the same domain (the migration takes it over). When the domain already runs on the
    destination and not on the source it passes with V(already there) and RV(already_migrated=true). Override: none."
  - "V(hypervisor_type): both hosts run the same hypervisor (QEMU). Fails otherwise. Override: none."
  - "V(versions): the destination's libvirt and QEMU are not older than the source's. Warns otherwise.
    Override: none."
  - "V(domain_type): the destination can run the domain's type and architecture with its emulator
    (C(getDomainCapabilities)). Fails otherwise. Override: none."
  - "V(machine_type): the destination supports the domain's machine type (for example an older QEMU lacks newer
    C(pc-q35-*) types). Fails otherwise. Override: none."
  - "V(cpu): the domain's CPU definition (as it runs, with its features) is usable on the destination
    (C(compareHypervisorCPU) with the domain's emulator, architecture, machine and type). Fails when it is
    incompatible or unknown there, naming what is missing; warns for C(host-passthrough), which libvirt cannot
    verify. Override: none."
  - "V(memory): the domain fits the destination's memory: its available memory less O(reserve_mib) and, when
    O(dest_capacity_mib) is given, that capacity less the maximum memory of the destination's running domains less
    O(reserve_mib). The domain needs its current memory, or its maximum memory with O(compaction_restore=true).
    Fails otherwise. Override: O(dest_capacity_mib), O(reserve_mib) or O(compaction_restore), whichever alone would
    make it fit; none when only more free memory would."
  - "V(storage): every disk with a medium is shared (a network disk, a C(<shareable/>) disk, or a file, block device
    or pool volume that is a volume of a storage pool on the destination) or is copied. A local disk fails unless
    O(copy_storage) is V(all) or V(incremental), then it warns (it will be copied into the destination pool at the
    same path). It fails for read-only local disks, local disks without a destination pool to copy into, local
    C(dir)/C(nvme) disks, a local disk left out of O(migrate_disks), a disk in O(migrate_disks) the destination
    already reaches, and a destination pool with less free space than the size of the disks copied into it (libvirt
    creates each copy fully allocated). A disk image
    both hosts see in a C(dir) or C(fs) pool warns: libvirt migrates it only from a filesystem it knows is shared.
    Override: O(copy_storage) or O(migrate_disks) where that alone helps, otherwise none."
  - "V(networks): the libvirt networks, bridges and direct-attached host interfaces the domain's interfaces use exist
    and are active on the destination. Fails naming what to create or start there. Override: none."
  - "V(devices): nothing local-only blocks live migration: host devices other than USB (PCI, mdev, SCSI, capability
    devices), C(hostdev)/C(vdpa) interfaces, snapshots, the C(invtsc) CPU feature without a TSC frequency, shmem
    devices not in role C(master), virtiofs filesystems and transient disks. Fails naming them; warns for USB host
    devices, which must be plugged into the destination too. Override: none."
  - "V(convergence): only with a prediction; passes when the chosen strategy converges within O(max_downtime_ms),
    warns otherwise (a prediction never fails the task). Override: O(allow_postcopy); the prediction's reason also
    names the O(bandwidth_mibps) or O(max_downtime_ms) that would make pre-copy converge."
  - When the domain is not defined on the source but runs on the destination, only V(distinct_hosts) and
    V(name_collision) are reported. When the domain is not defined on the source and only defined (not running) on
    the destination, V(maintenance), V(distinct_hosts), V(domain_running) and V(name_collision) are reported.
  - Reads only. To find a disk that another host created in a shared directory, it may refresh (rescan) the
    destination's storage pool for that directory.
author:
  - strata.migration developers (@strata-migration)
extends_documentation_fragment:
  - strata.migration.connection
  - strata.migration.attributes.read_only
options:
  name:
    description:
      - Name of the domain to check. It runs on the source host, the one O(uri) connects to.
    type: str
    required: true
  dest_uri:
    description:
      - libvirt connection URI of the destination host, in the same form as O(uri).
      - It is opened with the same O(connect_timeout_s). A password in it is never shown in output.
    type: str
    required: true
  reserve_mib:
    description:
      - Memory in MiB to keep free on the destination for its host OS, on top of what the domain needs.
    type: int
    default: 0
  dest_capacity_mib:
    description:
      - Declared memory capacity of the destination in MiB, for hosts whose memory is shared or overcommitted
        (the workflow roles pass the host variable C(strata_memory_capacity_mib)). The maximum memory of the
        destination's running domains counts against it.
      - When not set, only the destination's available memory bounds the V(memory) check.
    type: int
  compaction_restore:
    description:
      - The domain's memory was compacted (balloon inflated) before the migration and will be restored on the
        destination, so the V(memory) check needs its maximum memory there rather than its current memory.
    type: bool
    default: false
  copy_storage:
    description:
      - The storage copy the migration will make, as in M(strata.migration.live_migrate). With V(all) or
        V(incremental) the V(storage) check warns about local disks instead of failing, and checks the
        destination pools' free space.
    type: str
    choices: [none, all, incremental]
    default: none
  migrate_disks:
    description:
      - The local disks the copy takes along, as in M(strata.migration.live_migrate); default every local writable
        disk.
    type: list
    elements: str
  allow_unsafe:
    description:
      - The migration will run with libvirt's C(--unsafe), as in M(strata.migration.live_migrate); the V(storage)
        check's warning for a disk image both hosts see then says so.
    type: bool
    default: false
  dest_in_maintenance:
    description:
      - The destination is under maintenance; the V(maintenance) check fails.
      - The workflow roles do not use it; they keep VMs off hosts under maintenance by leaving them out of the
        plan (their C(*_excluded_hosts) variables, or the host being evacuated).
    type: bool
    default: false
  measure_dirty_rate_s:
    description:
      - Measure the domain's dirty-page rate over this many seconds and predict the migration. V(0) turns the
        measurement and the prediction off.
      - Must be between V(0) and V(60). A domain that is not running is not measured. The whole measurement is
        bounded by O(measure_dirty_rate_s) plus 10 seconds.
    type: int
    default: 0
  bandwidth_mibps:
    description:
      - Migration bandwidth in MiB/s for the prediction.
      - V(0) means unknown or unlimited; the prediction then assumes a 10 Gbit/s link, 1192 MiB/s, and says so in
        RV(prediction.inputs.bandwidth_assumed).
    type: int
    default: 0
  max_downtime_ms:
    description:
      - Longest acceptable pause of the guest at the switch-over, in milliseconds, for the prediction.
    type: int
    default: 300
  allow_postcopy:
    description:
      - Whether the prediction may choose a post-copy switch when pre-copy alone does not converge.
    type: bool
    default: false
  qemu_overhead_mib:
    description:
      - QEMU's own resident memory on the source host, in MiB, for the prediction's estimate of the memory a
        migration sends.
      - Memory a guest used and freed keeps its contents and still crosses the wire, and the guest's statistics do
        not show it. QEMU's resident memory does, together with QEMU's own share. With this option the estimate is
        the domain's QEMU resident memory (balloon statistic C(rss)) less this share, kept between what the guest
        uses now and its current size; without it, the estimate is what the guest uses now, which is exact after
        M(strata.migration.memory_compact) and a lower bound otherwise.
      - QEMU's share depends on the host and the accelerator; measure it once per host, for example as a guest's
        QEMU resident memory less the normal pages its first migration pass sent. On the project's TCG lab it is
        about 118 MiB.
    type: int
  fail_on_findings:
    description:
      - Fail the task when a check fails. With V(false) the task succeeds and returns the findings, and RV(passed)
        says whether the migration can go.
    type: bool
    default: true
notes:
  - The destination's memory comes from libvirt's node memory statistics. Where several hosts share one machine, or
    memory is reserved for other uses, declare the capacity with O(dest_capacity_mib).
  - The V(cpu) check asks libvirt to fail incompatible comparisons (C(VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)) so
    that its message names the missing CPU features. A CPU model the destination's libvirt does not know fails too.
seealso:
  - module: strata.migration.host_info
  - module: strata.migration.domain_info
"""

EXAMPLES = r"""
- name: Can web1 go from hv1 to hv2?
  strata.migration.preflight:
    uri: qemu+ssh://root@hv1.example.com/system
    dest_uri: qemu+ssh://root@hv2.example.com/system
    name: web1
  delegate_to: localhost

- name: Check without failing, with local disks copied and 2 GiB kept for the host
  strata.migration.preflight:
    uri: qemu+ssh://root@hv1.example.com/system
    dest_uri: qemu+ssh://root@hv2.example.com/system
    name: db1
    copy_storage: all
    reserve_mib: 2048
    dest_capacity_mib: "{{ hostvars['hv2'].strata_memory_capacity_mib }}"
    dest_in_maintenance: "{{ hostvars['hv2'].strata_maintenance | default(false) }}"
    fail_on_findings: false
  delegate_to: localhost
  register: db1_check

- name: Say why not
  ansible.builtin.debug:
    msg: "{{ db1_check.findings | selectattr('status', 'equalto', 'fail') | map(attribute='message') | list }}"
  when: not db1_check.passed

- name: Predict the migration of a busy VM over a 1 GiB/s link
  strata.migration.preflight:
    uri: qemu+ssh://root@hv1.example.com/system
    dest_uri: qemu+ssh://root@hv2.example.com/system
    name: web1
    measure_dirty_rate_s: 5
    bandwidth_mibps: 1024
    max_downtime_ms: 300
    allow_postcopy: true
  delegate_to: localhost
  register: web1_check
"""

RETURN = r"""
passed:
  description: Whether no check failed, so the domain can live-migrate to the destination (warnings allowed).
  returned: always
  type: bool
  sample: false
already_migrated:
  description: Whether the domain already runs on the destination and not on the source.
  returned: always
  type: bool
  sample: false
findings:
  description: One finding per check, in the order of the check codes in the description.
  returned: always
  type: list
  elements: dict
  contains:
    check:
      description: The check code.
      type: str
      choices: [maintenance, distinct_hosts, domain_running, name_collision, hypervisor_type, versions, domain_type,
                machine_type, cpu, memory, storage, networks, devices, convergence]
      sample: memory
    status:
      description: The outcome.
      type: str
      choices: [pass, warn, fail]
      sample: fail
    message:
      description: What was found and, for a failure, what would change it.
      type: str
      sample: "too little memory: domain 'web1' needs 2048 MiB (current memory); destination room: ..."
    override:
      description: The option of this module that changes the outcome, or V(null) when none does.
      type: str
      sample: dest_capacity_mib
failed_checks:
  description: Codes of the checks that failed.
  returned: always
  type: list
  elements: str
  sample: [cpu, memory]
warned_checks:
  description: Codes of the checks that warned.
  returned: always
  type: list
  elements: str
  sample: [versions]
prediction:
  description:
    - The prediction of the pre-copy / post-copy model from the measured dirty rate, for the strategy it chose;
      V(null) without O(measure_dirty_rate_s), when the domain is not running, or when it is already migrated.
    - The hot set (memory rewritten again and again) is not measured here, so the model takes the worst case, all
      of the memory to send.
  returned: always
  type: dict
  contains:
    strategy:
      description: The strategy chosen. V(precopy) when pre-copy converges or post-copy is not allowed, otherwise
        V(postcopy) or V(layered) (pre-copy of the cold memory, then post-copy of the hot set).
      type: str
      choices: [precopy, postcopy, layered]
      sample: precopy
    converges:
      description: Whether the migration ends within O(max_downtime_ms) with that strategy.
      type: bool
      sample: true
    rounds:
      description: Live pre-copy rounds.
      type: int
      sample: 4
    round_mib:
      description: What each live round sends, in MiB.
      type: list
      elements: float
    stop_copy_mib:
      description: What is sent while the guest is paused (pre-copy), in MiB.
      type: float
    transferred_mib:
      description: Memory sent in total, in MiB.
      type: float
      sample: 312.5
    total_s:
      description: Duration in seconds.
      type: float
      sample: 2.8
    downtime_ms:
      description: Pause of the guest at the switch-over, in milliseconds.
      type: float
      sample: 120.0
    postcopy_s:
      description: How long the guest runs on the destination while pages still arrive from the source
        (post-copy and layered), V(null) for pre-copy.
      type: float
    throttle_percents:
      description: For pre-copy under an auto-converge throttle (what M(strata.migration.live_migrate) predicts
        for a shaking guest without post-copy), the throttle in each live round; empty here.
      type: list
      elements: int
    disk_copy_mib:
      description: Data of the disks a storage copy takes along (O(copy_storage)), in MiB, counted in
        RV(prediction.transferred_mib); V(0) without a storage copy.
      type: float
      sample: 64.0
    disk_copy_s:
      description: Time of that disk copy, in seconds, counted in RV(prediction.total_s); V(0) without one.
      type: float
      sample: 0.6
    required_bandwidth_mibps:
      description: For pre-copy that does not converge, the smallest O(bandwidth_mibps) with which it would.
      type: float
    required_max_downtime_ms:
      description: For pre-copy that does not converge, the smallest O(max_downtime_ms) with which it would.
      type: float
    reason:
      description: The prediction in words, and for pre-copy that does not converge the options that would change
        that.
      type: str
    candidates:
      description: The predictions of every strategy the model weighed (V(precopy), V(postcopy), V(layered)), with
        the same fields.
      type: list
      elements: dict
    inputs:
      description: What the prediction used.
      type: dict
      contains:
        memory_mib:
          description: Non-zero memory to send, in MiB, as RV(prediction.inputs.memory_estimate) estimated it.
          type: float
        memory_estimate:
          description: How the memory to send was estimated (see O(qemu_overhead_mib)).
          type: dict
          contains:
            memory_mib:
              description: The estimate, in MiB.
              type: float
            lower_mib:
              description: What the guest uses now (balloon size less unused memory), in MiB.
              type: float
            upper_mib:
              description: The guest's current size, in MiB.
              type: float
            source:
              description: V(qemu_rss) (from QEMU's resident memory), V(guest_used) (what the guest uses now), or
                V(current) (no balloon statistics).
              type: str
            reason:
              description: The estimate in a sentence.
              type: str
        zero_page_mib:
          description: The rest of the guest's maximum memory (unused or ballooned out), sent as zero pages.
          type: float
        dirty_rate_mibps:
          description: Measured dirty-page rate, in MiB/s.
          type: float
        bandwidth_mibps:
          description: Bandwidth used, in MiB/s.
          type: int
        bandwidth_assumed:
          description: Whether the bandwidth is the assumed default because O(bandwidth_mibps=0).
          type: bool
        max_downtime_ms:
          description: O(max_downtime_ms).
          type: int
        allow_postcopy:
          description: O(allow_postcopy).
          type: bool
source:
  description: The source host.
  returned: always
  type: dict
  contains:
    hostname:
      description: Host name as libvirt reports it.
      type: str
      sample: hv1
    uri:
      description: O(uri) without credentials.
      type: str
      sample: qemu+tcp://127.0.0.11/system
    host_uuid:
      description: The host UUID.
      type: str
    libvirt_version:
      description: libvirt version.
      type: str
      sample: 9.0.0
    hypervisor_version:
      description: Hypervisor (QEMU) version.
      type: str
      sample: 7.2.0
    memory_available_mib:
      description: Memory the host can give guests, in MiB.
      type: int
destination:
  description: The destination host, with the same fields as RV(source); its C(uri) is O(dest_uri) without
    credentials.
  returned: always
  type: dict
"""

from ansible_collections.strata.migration.plugins.module_utils._base import StrataModule
from ansible_collections.strata.migration.plugins.module_utils._engine import COPY_STORAGE_CHOICES
from ansible_collections.strata.migration.plugins.module_utils._libvirt import (
    LibvirtClient,
    LibvirtError,
    StrataError,
)
from ansible_collections.strata.migration.plugins.module_utils._preflight import preflight_options, run_preflight


def main() -> None:
    module = StrataModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "dest_uri": {"type": "str", "required": True},
            "reserve_mib": {"type": "int", "default": 0},
            "dest_capacity_mib": {"type": "int"},
            "compaction_restore": {"type": "bool", "default": False},
            "copy_storage": {"type": "str", "default": "none", "choices": list(COPY_STORAGE_CHOICES)},
            "migrate_disks": {"type": "list", "elements": "str"},
            "allow_unsafe": {"type": "bool", "default": False},
            "dest_in_maintenance": {"type": "bool", "default": False},
            "measure_dirty_rate_s": {"type": "int", "default": 0},
            "bandwidth_mibps": {"type": "int", "default": 0},
            "max_downtime_ms": {"type": "int", "default": 300},
            "allow_postcopy": {"type": "bool", "default": False},
            "qemu_overhead_mib": {"type": "int"},
            "fail_on_findings": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        options = preflight_options(
            name=params["name"],
            dest_uri=params["dest_uri"],
            reserve_mib=params["reserve_mib"],
            dest_capacity_mib=params["dest_capacity_mib"],
            compaction_restore=params["compaction_restore"],
            copy_storage=params["copy_storage"],
            migrate_disks=params["migrate_disks"],
            allow_unsafe=params["allow_unsafe"],
            dest_in_maintenance=params["dest_in_maintenance"],
            measure_dirty_rate_s=params["measure_dirty_rate_s"],
            bandwidth_mibps=params["bandwidth_mibps"],
            max_downtime_ms=params["max_downtime_ms"],
            allow_postcopy=params["allow_postcopy"],
            qemu_overhead_mib=params["qemu_overhead_mib"],
        )
        with LibvirtClient(params["dest_uri"], params["connect_timeout_s"]) as destination:
            report = run_preflight(module.client, destination, options)
    except (StrataError, LibvirtError) as exc:
        module.fail_from(exc)
    result = report.to_result()
    if not report.passed and params["fail_on_findings"]:
        module.fail_json(msg=report.failure_message(), changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
