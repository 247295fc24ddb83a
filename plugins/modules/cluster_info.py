#!/usr/bin/python
# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster_info
short_description: Read every hypervisor of a cluster, its VMs and where they are defined, in one task
version_added: 0.1.0
description:
  - Connects to every host of O(hosts) at once and reads its CPUs, memory and domains. Returns the hosts and the
    active VMs in the input format of M(strata.migration.migration_plan), where each VM runs, which hosts hold a
    persistent definition of each VM, and the VMs that break the collection's safety rules (active on more than one
    host, or defined on more than one).
  - "A VM can carry placement hints in its domain metadata, in the namespace
    C(https://strata-migration.github.io/xmlns/migration/1):
    C(<strata:migration xmlns:strata=\"...\"><strata:anti_affinity group=\"web\"/><strata:pinned reason=\"licence
    bound to host\"/></strata:migration>). Set them with
    C(virsh metadata NAME https://strata-migration.github.io/xmlns/migration/1 --key strata --set '<migration>...</migration>'
    --live --config)."
  - Without a C(pinned) hint, a VM is reported as pinned when the live-migration pre-flight
    (M(strata.migration.preflight)) would refuse every move of it - a disk that is neither shared nor found in a
    storage pool of any other host read (V(local disk vda); not judged when only one host is read, and not a reason
    with O(copy_storage)), or a host device other than USB (V(host device)). A VM active on several hosts is always
    pinned.
  - Reads only. To find a disk that another host created in a shared directory, it may refresh (rescan) the storage
    pool for that directory on the other hosts, as M(strata.migration.preflight) does.
author:
  - strata.migration developers (@strata-migration)
extends_documentation_fragment:
  - strata.migration.cluster_hosts
  - strata.migration.attributes.read_only
options:
  required:
    description:
      - With V(true), a host that cannot be connected to or read fails the task, with a message naming the host.
      - With V(false), such a host is listed in RV(unreachable_hosts) and left out of the other results.
    type: bool
    default: true
  copy_storage:
    description:
      - The storage copy the moves of these VMs will make, as O(strata.migration.live_migrate#module:copy_storage).
        With V(all) or V(incremental), a disk no other host reaches no longer pins its VM; RV(vms[].local_disks)
        and RV(vms[].local_disk_mib) still list it.
    type: str
    choices: [none, all, incremental]
    default: none
requirements:
  - libvirt-python (the C(libvirt) Python binding) on the host that runs the module, usually the controller
notes:
  - Run it on the controller (C(delegate_to) V(localhost)); it reaches each hypervisor through its O(hosts[].uri).
  - The hosts are read one after the other, so a VM that migrates during the reading can show on both hosts (as a
    conflict) or on neither.
seealso:
  - module: strata.migration.migration_plan
  - module: strata.migration.host_info
  - module: strata.migration.preflight
"""

EXAMPLES = r"""
- name: Read the cluster
  strata.migration.cluster_info:
    hosts:
      - {name: hv1, uri: qemu+ssh://root@hv1.example.com/system, reserve_mib: 4096}
      - {name: hv2, uri: qemu+ssh://root@hv2.example.com/system, reserve_mib: 4096}
      - {name: hv3, uri: qemu+ssh://root@hv3.example.com/system, memory_capacity_mib: 32768}
  delegate_to: localhost
  register: cluster

- name: Stop when a VM runs or is defined on two hosts
  ansible.builtin.assert:
    that: cluster.conflicts | length == 0
    fail_msg: "{{ cluster.conflicts }}"

- name: Plan the evacuation of hv1 (the planner takes the planner keys only)
  strata.migration.migration_plan:
    mode: evacuate
    evacuate_hosts: [hv1]
    hosts: >-
      {% set hosts = [] %}
      {% for host in cluster.hosts %}
      {%   set _ = hosts.append({'name': host.name, 'memory_capacity_mib': host.memory_capacity_mib,
                                 'reserve_mib': host.reserve_mib, 'cpus': host.cpus}) %}
      {% endfor %}
      {{ hosts }}
    vms: >-
      {% set vms = [] %}
      {% for vm in cluster.vms %}
      {%   set _ = vms.append({'name': vm.name, 'uuid': vm.uuid, 'host': vm.host, 'memory_mib': vm.memory_mib,
                               'vcpus': vm.vcpus, 'anti_affinity_group': vm.anti_affinity_group,
                               'pinned': vm.pinned}) %}
      {% endfor %}
      {{ vms }}

- name: Read the hypervisors of the inventory that answer within 5 s
  strata.migration.cluster_info:
    hosts: >-
      {% set hosts = [] %}
      {% for name in groups['hypervisors'] %}
      {%   set _ = hosts.append({'name': name, 'uri': hostvars[name].strata_libvirt_uri}) %}
      {% endfor %}
      {{ hosts }}
    connect_timeout_s: 5
    required: false
  delegate_to: localhost
  register: reachable

- name: Say which hosts did not answer
  ansible.builtin.debug:
    msg: "{{ reachable.unreachable_hosts | map(attribute='name') | list }}"
"""

RETURN = r"""
hosts:
  description: The hosts read, in the order of O(hosts), in the planner's format plus two facts.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: O(hosts[].name).
      type: str
      sample: hv1
    memory_capacity_mib:
      description: O(hosts[].memory_capacity_mib), or the host's memory when not given.
      type: int
      sample: 65536
    reserve_mib:
      description: O(hosts[].reserve_mib).
      type: int
      sample: 4096
    cpus:
      description: Active host CPUs (threads).
      type: int
      sample: 16
    memory_total_mib:
      description: The host's memory as libvirt reports it, in MiB.
      type: int
      sample: 64213
    running_vms:
      description: Active domains (running, paused or otherwise not shut off) on the host.
      type: int
      sample: 12
vms:
  description:
    - Every active domain, once, sorted by name, in the planner's format plus its state.
    - A VM active on several hosts is listed once, on its running persistent copy (the source of a migration in
      progress), and pinned.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
      sample: web1
    uuid:
      description: Domain UUID.
      type: str
      sample: 6695eb01-f6a4-8304-79aa-97f2502e193f
    host:
      description: Host it runs on.
      type: str
      sample: hv1
    memory_mib:
      description: Current memory (balloon size), in MiB.
      type: int
      sample: 4096
    vcpus:
      description: Virtual CPUs in use.
      type: int
      sample: 2
    anti_affinity_group:
      description: The anti-affinity group from the domain's metadata, V(null) when it has none.
      type: str
      sample: web
    pinned:
      description:
        - V(false), or why the VM must not move, reasons joined by C(; ). The metadata's reason when it has one;
          otherwise V(local disk TARGET) for each disk no other host reaches and V(host device). A VM active on
          several hosts gets V(active on several hosts (HOSTS)) first.
      type: raw
      sample: local disk vda
    local_disks:
      description: Targets of the VM's disks that no other host read reaches (see RV(vms[].pinned)).
      type: list
      elements: str
      sample: [vda]
    local_disk_mib:
      description: Size of those disks in MiB, what a storage copy carries; V(0) without any.
      type: float
      sample: 10240.0
    state:
      description: Domain state.
      type: str
      choices: [nostate, running, blocked, paused, shutdown, crashed, pmsuspended]
      sample: running
where:
  description: The host each active VM runs on, keyed by VM name and by UUID.
  returned: success
  type: dict
  sample: {web1: hv1, 6695eb01-f6a4-8304-79aa-97f2502e193f: hv1}
definitions:
  description: For each VM with a persistent definition (active or not), the hosts that hold one, sorted.
  returned: success
  type: dict
  sample: {web1: [hv1], db1: [hv2, hv3]}
conflicts:
  description:
    - VMs active on more than one host or persistently defined on more than one host. Not a failure; the caller
      decides. During a live migration the VM is briefly active on both hosts.
  returned: success
  type: list
  elements: dict
  contains:
    vm:
      description: VM name.
      type: str
    uuid:
      description: UUID of the copy listed in RV(vms); V(null) for a VM that is not active anywhere.
      type: str
    running_on:
      description: Hosts where the VM is active, sorted.
      type: list
      elements: str
    defined_on:
      description: Hosts holding a persistent definition of it, sorted.
      type: list
      elements: str
  sample:
    - {vm: db1, uuid: null, running_on: [], defined_on: [hv2, hv3]}
unreachable_hosts:
  description:
    - Hosts that could not be connected to or read, with O(required=false); empty otherwise.
    - Not named C(unreachable), which Ansible reads as the task's own host being unreachable.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: O(hosts[].name).
      type: str
      sample: hv3
    uri:
      description: O(hosts[].uri) without credentials.
      type: str
      sample: qemu+ssh://root@hv3.example.com/system
    reason:
      description: What went wrong.
      type: str
      sample: "libvirt at qemu+ssh://root@hv3.example.com/system did not answer within 10 s (connect_timeout_s); ..."
"""

from ansible_collections.strata.migration.plugins.module_utils._base import StrataClusterModule
from ansible_collections.strata.migration.plugins.module_utils._cluster import gather_cluster
from ansible_collections.strata.migration.plugins.module_utils._engine import COPY_STORAGE_CHOICES
from ansible_collections.strata.migration.plugins.module_utils._libvirt import StrataError


def main() -> None:
    module = StrataClusterModule(
        argument_spec={
            "required": {"type": "bool", "default": True},
            "copy_storage": {"type": "str", "default": "none", "choices": list(COPY_STORAGE_CHOICES)},
        },
        supports_check_mode=True,
    )
    try:
        specs = module.checked_hosts()
        report = gather_cluster(specs, module.params["connect_timeout_s"], required=module.params["required"],
                                copy_storage=module.params["copy_storage"])
    except StrataError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    module.exit_json(changed=False, **report.to_result())


if __name__ == "__main__":
    main()
