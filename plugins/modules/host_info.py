#!/usr/bin/python
# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: host_info
short_description: Describe a libvirt hypervisor host
version_added: 0.1.0
description:
  - Reports what a libvirt host is (hypervisor, CPU, memory, migration support, guest machine types) and what it
    holds (networks, storage pools, domains), as plain data for placement and pre-flight checks.
  - Reads only; it never changes the host.
author:
  - strata.migration developers (@strata-migration)
extends_documentation_fragment:
  - strata.migration.connection
  - strata.migration.attributes.read_only
seealso:
  - module: strata.migration.domain_info
"""

EXAMPLES = r"""
- name: Describe the hypervisor hv1
  strata.migration.host_info:
    uri: qemu+ssh://root@hv1.example.com/system
  delegate_to: localhost
  register: hv1

- name: Show free memory and the running domains
  ansible.builtin.debug:
    msg: >-
      {{ hv1.host.hostname }} has {{ hv1.host.memory_available_mib }} MiB available,
      running {{ hv1.host.domains | selectattr('state', 'eq', 'running') | map(attribute='name') | list }}

- name: Describe a host through a TCP listener that may be slow to answer
  strata.migration.host_info:
    uri: qemu+tcp://hv2.example.com/system
    connect_timeout_s: 30
  delegate_to: localhost
"""

RETURN = r"""
host:
  description: The host's facts.
  returned: success
  type: dict
  contains:
    hostname:
      description: Host name reported by libvirt.
      type: str
      sample: hv1
    host_uuid:
      description: Host UUID from the capabilities (libvirt refuses to migrate between hosts with the same UUID).
        V(null) when the driver does not report one.
      type: str
      sample: 749694bc-83d1-4c2f-8af3-e92c32444895
    libvirt_version:
      description: Version of libvirt on the host.
      type: str
      sample: 9.0.0
    hypervisor_type:
      description: Hypervisor driver name as reported by libvirt.
      type: str
      sample: QEMU
    hypervisor_version:
      description: Hypervisor version (the QEMU version for the qemu driver).
      type: str
      sample: 7.2.0
    arch:
      description: Host CPU architecture.
      type: str
      sample: x86_64
    cpu_count:
      description: Number of active host CPUs.
      type: int
      sample: 16
    cpu_model:
      description: Host CPU model from the capabilities, V(null) when not reported.
      type: str
      sample: Skylake-Client-IBRS
    cpu_vendor:
      description: Host CPU vendor from the capabilities, V(null) when not reported.
      type: str
      sample: Intel
    memory_total_mib:
      description: Host memory in MiB.
      type: int
      sample: 64213
    memory_free_mib:
      description: Memory the host kernel reports as free, in MiB.
      type: int
      sample: 20480
    memory_available_mib:
      description:
        - Free memory plus buffers and page cache, in MiB; what the host can give to guests without swapping.
        - Equals RV(host.memory_free_mib) when RV(host.memory_source) is V(node_info).
      type: int
      sample: 41200
    memory_source:
      description:
        - Where the memory figures come from. V(node_memory_stats) is the node's memory statistics
          (total, free, buffers, cached).
        - V(node_info) is the fallback for drivers without memory statistics (such as the test driver)
          - total from the node info, free from the free-memory call.
      type: str
      choices: [node_memory_stats, node_info]
      sample: node_memory_stats
    migration_live:
      description: Whether the host advertises live migration.
      type: bool
      sample: true
    migration_uri_transports:
      description: Migration URI transports the hypervisor supports.
      type: list
      elements: str
      sample: [tcp, rdma]
    guests:
      description: Guest types the host can run, one entry per OS type and architecture.
      type: list
      elements: dict
      contains:
        os_type:
          description: Guest OS type.
          type: str
          sample: hvm
        arch:
          description: Guest architecture.
          type: str
          sample: x86_64
        domain_types:
          description: Domain types (accelerators) libvirt offers for this architecture; V(kvm) appears when the host has a usable C(/dev/kvm).
          type: list
          elements: str
          sample: [qemu, kvm]
        machines:
          description: Machine types, including aliases such as V(pc) and V(q35), sorted.
          type: list
          elements: str
          sample: [pc, pc-i440fx-7.2, pc-q35-7.2, q35]
    networks:
      description: Virtual networks defined on the host, sorted by name; empty when the connection has no network driver.
      type: list
      elements: dict
      contains:
        name:
          description: Network name.
          type: str
          sample: default
        active:
          description: Whether the network is started.
          type: bool
          sample: true
        bridge:
          description: Bridge device of the network, V(null) for networks without one.
          type: str
          sample: virbr0
        autostart:
          description: Whether the network starts with libvirtd.
          type: bool
          sample: true
    storage_pools:
      description: Storage pools defined on the host, sorted by name; empty when the connection has no storage driver.
      type: list
      elements: dict
      contains:
        name:
          description: Pool name.
          type: str
          sample: default
        active:
          description: Whether the pool is started.
          type: bool
          sample: true
        type:
          description: Pool type.
          type: str
          sample: dir
    domains:
      description: Domains (VMs) defined or running on the host, sorted by name.
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
        state:
          description: Domain state.
          type: str
          choices: [nostate, running, blocked, paused, shutdown, shutoff, crashed, pmsuspended]
          sample: running
        persistent:
          description: Whether the domain has a persistent definition on this host.
          type: bool
          sample: true
        vcpus:
          description: Number of virtual CPUs in use.
          type: int
          sample: 2
        memory_current_mib:
          description: Current memory (balloon size) in MiB.
          type: int
          sample: 2048
        memory_max_mib:
          description: Maximum memory in MiB.
          type: int
          sample: 4096
        job_running:
          description: Whether a job (migration, save, dump) runs on the domain. V(false) for inactive domains and
            for drivers that do not report jobs.
          type: bool
          sample: false
"""

from ansible_collections.strata.migration.plugins.module_utils._base import StrataModule
from ansible_collections.strata.migration.plugins.module_utils._inventory import gather_host_facts
from ansible_collections.strata.migration.plugins.module_utils._libvirt import LibvirtError, StrataError


def main() -> None:
    module = StrataModule(argument_spec={}, supports_check_mode=True)
    try:
        host = gather_host_facts(module.client.conn)
    except (StrataError, LibvirtError) as exc:
        module.fail_from(exc)
    module.exit_json(changed=False, host=host.to_dict())


if __name__ == "__main__":
    main()
