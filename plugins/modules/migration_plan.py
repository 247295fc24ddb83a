#!/usr/bin/python
# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: migration_plan
short_description: Plan where VMs go to empty hosts, to balance memory load, or to restart those of failed hosts
version_added: 0.1.0
description:
  - Plans live migrations from plain data, for example built from M(strata.migration.host_info) and
    M(strata.migration.domain_info) results plus each host's declared capacity and reserve. It needs no libvirt
    connection and changes nothing.
  - With O(mode=evacuate), every VM on O(evacuate_hosts), largest memory first, goes to the eligible host with the
    most free memory. A VM no host can take stays where it is and is listed in RV(plan.unplaceable) with the
    constraint that ruled out the last candidate hosts.
  - With O(mode=rebalance), while the memory spread (most loaded host's percentage minus the least loaded one's)
    exceeds O(spread_threshold_percent), the VM on the most loaded host whose move lowers the spread most moves to
    a less loaded host; planning stops when no move helps. Only hosts neither under maintenance nor excluded take
    part.
  - With O(mode=recover), the VMs of O(failed_hosts) are placed as an evacuation places them, but highest
    O(vms[].restart_priority) first, so when capacity runs short the least important ones are the ones listed in
    RV(plan.unplaceable). A restart copies nothing and its failed source sends nothing, so only the limits on the
    receiving hosts and on each wave apply, and each restart is estimated at O(move_overhead_s). The plan does not
    say whether a host has failed or whether a VM's disks can be reached elsewhere; give a VM whose disks were on
    the failed host O(vms[].pinned) with that reason.
  - A target host is never under maintenance, excluded, evacuated or failed; it must keep its reserve free, stay within
    O(vcpu_overcommit_ratio), and never hold two VMs of one anti-affinity group. Pinned VMs are reported in
    RV(plan.not_moved) and never move. No VM moves twice in one plan.
  - Moves come in waves within O(max_parallel_per_host) and O(max_parallel_total); a move into a host comes after
    the moves out of it that free the memory it needs. Durations come from the collection's convergence model
    (pre-copy, dirty rate 0 when unknown).
  - The same input always gives the same plan; ties are broken by name.
author:
  - strata.migration developers (@strata-migration)
extends_documentation_fragment:
  - strata.migration.attributes.read_only
seealso:
  - module: strata.migration.host_info
  - module: strata.migration.domain_info
  - module: strata.migration.live_migrate
options:
  mode:
    description:
      - V(evacuate) empties O(evacuate_hosts); V(rebalance) evens out memory load across hosts; V(recover) places the
        VMs of O(failed_hosts) for a restart elsewhere.
    type: str
    required: true
    choices: [evacuate, rebalance, recover]
  hosts:
    description:
      - Every host of the cluster, with its declared capacity.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Host name, as used in O(vms[].host), O(evacuate_hosts) and O(failed_hosts).
        type: str
        required: true
      memory_capacity_mib:
        description: Memory the host offers to VMs, in MiB.
        type: int
        required: true
      reserve_mib:
        description: Memory kept free for the host itself, in MiB; no target goes below it.
        type: int
        default: 0
      cpus:
        description: Physical CPUs (threads) of the host, for O(vcpu_overcommit_ratio).
        type: int
        required: true
      maintenance:
        description: The host is under maintenance and never takes a VM.
        type: bool
        default: false
      excluded:
        description: The host never takes a VM (for example, it is being retired).
        type: bool
        default: false
  vms:
    description:
      - Every VM of the cluster and where it runs.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Domain name, unique in the cluster.
        type: str
        required: true
      uuid:
        description: Domain UUID, copied into each move.
        type: str
      host:
        description: Host the VM runs on, one of O(hosts[].name).
        type: str
        required: true
      memory_mib:
        description: Memory the VM holds on its host, in MiB.
        type: int
        required: true
      vcpus:
        description: Virtual CPUs of the VM.
        type: int
        required: true
      anti_affinity_group:
        description: No two VMs of this group may share a host. See also O(anti_affinity_groups).
        type: str
      pinned:
        description:
          - V(true), or a reason such as V(local disk), when the VM must not move. It is reported in
            RV(plan.not_moved).
          - Strings that read as booleans (such as V(true), V(false), V(yes), V(no)), as templating may
            produce, count as booleans.
        type: raw
        default: false
      recently_moved:
        description: The VM moved recently; O(hold_recently_moved) keeps it in place during a rebalance.
        type: bool
        default: false
      dirty_rate_mibps:
        description: Measured dirty rate in MiB/s, for the duration estimate; V(0) when unknown.
        type: float
      disk_mib:
        description:
          - Size in MiB of the local disks a storage copy takes along with the VM, for the duration estimate; the
            copy runs before memory moves. M(strata.migration.cluster_info) reports it as C(local_disk_mib).
        type: float
        default: 0
      restart_priority:
        description:
          - With O(mode=recover), VMs of a higher priority are placed first; ties go largest memory first.
        type: int
        default: 0
  evacuate_hosts:
    description:
      - Hosts to empty. Required with O(mode=evacuate), not allowed otherwise.
    type: list
    elements: str
    default: []
  failed_hosts:
    description:
      - Hosts whose VMs to restart elsewhere. Required with O(mode=recover), not allowed otherwise.
    type: list
    elements: str
    default: []
  anti_affinity_groups:
    description:
      - Further anti-affinity groups, each a list of VM names. A VM may belong to several groups.
    type: dict
    default: {}
  vcpu_overcommit_ratio:
    description:
      - Most vCPUs a host may carry per CPU.
    type: float
    default: 4.0
  spread_threshold_percent:
    description:
      - With O(mode=rebalance), the memory spread (in percentage points) at or below which the cluster counts as
        balanced.
    type: float
    default: 10.0
  hold_recently_moved:
    description:
      - With O(mode=rebalance), keep VMs with O(vms[].recently_moved=true) where they are. An evacuation moves them
        anyway.
    type: bool
    default: true
  max_parallel_per_host:
    description:
      - Most migrations out of one host in one wave, and separately most migrations into one host.
    type: int
    default: 1
  max_parallel_total:
    description:
      - Most migrations in one wave.
    type: int
    default: 2
  bandwidth_mibps:
    description:
      - Migration bandwidth assumed for the duration estimates, in MiB/s.
    type: float
    default: 1000.0
  max_downtime_ms:
    description:
      - Downtime target assumed for the duration estimates, in milliseconds.
    type: int
    default: 300
  window_s:
    description:
      - Length of the maintenance window in seconds; RV(plan.fits_window) tells whether the plan fits.
    type: float
  move_overhead_s:
    description:
      - Seconds each move takes besides copying memory, added to its estimate. It covers the pre-flight with its
        dirty-rate sample, compaction, starting the job and waiting for it. The default is what moves of small VMs
        took on the lab; measure your own from the C(started_at) and C(ended_at) of a workflow report's moves
        against their C(figures.total_ms).
      - Must be at least V(0).
    type: float
    default: 6.0
"""

EXAMPLES = r"""
- name: Plan the evacuation of hv1
  strata.migration.migration_plan:
    mode: evacuate
    evacuate_hosts: [hv1]
    hosts:
      - {name: hv1, memory_capacity_mib: 65536, reserve_mib: 4096, cpus: 16}
      - {name: hv2, memory_capacity_mib: 65536, reserve_mib: 4096, cpus: 16}
      - {name: hv3, memory_capacity_mib: 32768, reserve_mib: 2048, cpus: 8, maintenance: true}
    vms:
      - {name: web1, host: hv1, memory_mib: 4096, vcpus: 2, anti_affinity_group: web}
      - {name: web2, host: hv2, memory_mib: 4096, vcpus: 2, anti_affinity_group: web}
      - {name: db1, host: hv1, memory_mib: 16384, vcpus: 8, pinned: local disk}
    window_s: 1800
  register: evacuation

- name: Show the plan
  ansible.builtin.debug:
    msg: "{{ evacuation.plan.summary }}"

- name: Plan a rebalance from facts gathered earlier
  strata.migration.migration_plan:
    mode: rebalance
    hosts: "{{ cluster_hosts }}"
    vms: "{{ cluster_vms }}"
    spread_threshold_percent: 15
    max_parallel_total: 4
    anti_affinity_groups:
      databases: [db1, db2]
  register: rebalance

- name: Plan the restart of hv3's VMs after hv3 failed, the databases first
  strata.migration.migration_plan:
    mode: recover
    failed_hosts: [hv3]
    hosts: "{{ cluster_hosts }}"
    vms:
      - {name: db3, host: hv3, memory_mib: 8192, vcpus: 4, restart_priority: 10}
      - {name: web3, host: hv3, memory_mib: 2048, vcpus: 1, anti_affinity_group: web}
      - {name: batch1, host: hv3, memory_mib: 4096, vcpus: 2, pinned: disk on the failed host}
  register: restarts

- name: Stop when a VM cannot be placed
  ansible.builtin.assert:
    that: evacuation.plan.unplaceable | length == 0
    fail_msg: "{{ evacuation.plan.unplaceable | map(attribute='reason') | list }}"
"""

RETURN = r"""
plan:
  description: The plan.
  returned: success
  type: dict
  contains:
    mode:
      description: The O(mode) planned.
      type: str
      sample: evacuate
    moves:
      description: The moves, in wave order; with O(mode=recover), the restarts, each from its failed host.
      type: list
      elements: dict
      contains:
        vm:
          description: VM name.
          type: str
        uuid:
          description: VM UUID, V(null) when not given.
          type: str
        from:
          description: Source host.
          type: str
        to:
          description: Target host.
          type: str
        memory_mib:
          description: VM memory in MiB.
          type: int
        disk_mib:
          description: Disk data the move copies (the VM's O(vms[].disk_mib)), in MiB; V(0) without a storage copy.
          type: float
        estimated_s:
          description: Estimated time of the move in seconds, O(move_overhead_s) plus the pre-copy time from the
            convergence model; O(move_overhead_s) alone for a restart.
          type: float
        wave:
          description: Wave number, from 1.
          type: int
      sample:
        - {vm: web1, uuid: null, from: hv1, to: hv2, memory_mib: 4096, disk_mib: 0, estimated_s: 10.4, wave: 1}
    waves:
      description: The VM names moved in each wave; waves run one after the other.
      type: list
      elements: list
      sample: [[web1], [db2]]
    wave_estimated_s:
      description: Estimated time of each wave, its longest move, in seconds.
      type: list
      elements: float
      sample: [4.4, 2.3]
    load_before:
      description:
        - Load per host before the plan, keyed by host name, each with V(memory_committed_mib),
          V(memory_capacity_mib), V(memory_free_mib) (after reserve), V(memory_percent) (of capacity),
          V(vcpus_committed) and V(vcpu_ratio) (vCPUs per CPU).
      type: dict
      sample:
        hv1: {memory_committed_mib: 24576, memory_capacity_mib: 65536, memory_free_mib: 36864,
              memory_percent: 37.5, vcpus_committed: 12, vcpu_ratio: 0.75}
    load_after:
      description: Load per host once every move is done, as RV(plan.load_before).
      type: dict
    spread_before_percent:
      description:
        - Memory spread before the plan in percentage points, over the hosts that may take VMs (not under
          maintenance, excluded, evacuated or failed).
      type: float
      sample: 37.5
    spread_after_percent:
      description: Memory spread once every move is done, over the same hosts.
      type: float
      sample: 6.3
    spread_threshold_percent:
      description: The O(spread_threshold_percent) used.
      type: float
      sample: 10.0
    unplaceable:
      description:
        - VMs that no host can take, which stay where they are. V(constraint) is V(no_eligible_host), V(memory),
          V(vcpus) or V(anti_affinity), the check that ruled out the last candidate hosts.
      type: list
      elements: dict
      sample:
        - {vm: db9, host: hv1, constraint: memory,
           reason: needs 32768 MiB; the eligible host with the most free memory has 20480 MiB (after reserve)}
    not_moved:
      description: Pinned or non-migratable VMs (and, in a rebalance, recently moved ones held back), with the reason.
      type: list
      elements: dict
      sample:
        - {vm: db1, host: hv1, reason: "not migratable: local disk"}
    estimated_total_s:
      description: Estimated time of the whole plan, the sum of the waves, in seconds.
      type: float
      sample: 6.7
    window_s:
      description: The O(window_s) given, or V(null).
      type: float
    fits_window:
      description: Whether RV(plan.estimated_total_s) fits O(window_s); V(null) without O(window_s).
      type: bool
      sample: true
    summary:
      description: The plan in one line.
      type: str
      sample: "evacuate: 2 moves in 2 waves, about 6.7 s (fits the 1800 s window); 0 unplaceable, 1 not moved;
        memory spread 37.5% -> 6.3%"
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.parsing.convert_bool import BOOLEANS, boolean

from ansible_collections.strata.migration.plugins.module_utils._planner import PlanError, plan_from_data

HOST_SPEC = {
    "name": {"type": "str", "required": True},
    "memory_capacity_mib": {"type": "int", "required": True},
    "reserve_mib": {"type": "int", "default": 0},
    "cpus": {"type": "int", "required": True},
    "maintenance": {"type": "bool", "default": False},
    "excluded": {"type": "bool", "default": False},
}

VM_SPEC = {
    "name": {"type": "str", "required": True},
    "uuid": {"type": "str"},
    "host": {"type": "str", "required": True},
    "memory_mib": {"type": "int", "required": True},
    "vcpus": {"type": "int", "required": True},
    "anti_affinity_group": {"type": "str"},
    "pinned": {"type": "raw", "default": False},
    "recently_moved": {"type": "bool", "default": False},
    "dirty_rate_mibps": {"type": "float"},
    "disk_mib": {"type": "float", "default": 0},
    "restart_priority": {"type": "int", "default": 0},
}

PLAN_OPTIONS = (
    "mode", "evacuate_hosts", "failed_hosts", "anti_affinity_groups", "vcpu_overcommit_ratio", "spread_threshold_percent",
    "hold_recently_moved", "max_parallel_per_host", "max_parallel_total", "bandwidth_mibps", "max_downtime_ms",
    "window_s", "move_overhead_s",
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "required": True, "choices": ["evacuate", "rebalance", "recover"]},
            "hosts": {"type": "list", "elements": "dict", "required": True, "options": HOST_SPEC},
            "vms": {"type": "list", "elements": "dict", "required": True, "options": VM_SPEC},
            "evacuate_hosts": {"type": "list", "elements": "str", "default": []},
            "failed_hosts": {"type": "list", "elements": "str", "default": []},
            "anti_affinity_groups": {"type": "dict", "default": {}},
            "vcpu_overcommit_ratio": {"type": "float", "default": 4.0},
            "spread_threshold_percent": {"type": "float", "default": 10.0},
            "hold_recently_moved": {"type": "bool", "default": True},
            "max_parallel_per_host": {"type": "int", "default": 1},
            "max_parallel_total": {"type": "int", "default": 2},
            "bandwidth_mibps": {"type": "float", "default": 1000.0},
            "max_downtime_ms": {"type": "int", "default": 300},
            "window_s": {"type": "float"},
            "move_overhead_s": {"type": "float", "default": 6.0},
        },
        supports_check_mode=True,
    )
    options = {name: module.params[name] for name in PLAN_OPTIONS}
    for vm in module.params["vms"]:
        if isinstance(vm["pinned"], str) and vm["pinned"].lower() in BOOLEANS:
            vm["pinned"] = boolean(vm["pinned"])
    try:
        plan = plan_from_data(module.params["hosts"], module.params["vms"], options)
    except PlanError as exc:
        module.fail_json(msg=str(exc), option=exc.option)
    module.exit_json(changed=False, plan=plan.to_dict())


if __name__ == "__main__":
    main()
