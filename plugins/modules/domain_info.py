#!/usr/bin/python
# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: domain_info
short_description: Describe libvirt domains (VMs) and, optionally, measure their dirty-page rate
version_added: 0.1.0
description:
  - Reports, for each named domain, its state, CPU and memory configuration, memory balloon and guest memory
    statistics, disks, network interfaces and host devices, as plain data for pre-flight checks and migration
    planning.
  - With O(measure_dirty_rate_s), also measures how fast each running domain dirties its memory, the figure that
    decides whether a pre-copy migration converges.
  - Reads only; the dirty-rate measurement does not change the domain.
author:
  - strata.migration developers (@strata-migration)
extends_documentation_fragment:
  - strata.migration.connection
  - strata.migration.attributes.read_only
options:
  name:
    description:
      - Names of the domains to describe. Each is reported once, in the order given.
      - The task fails when a domain is not defined on the host.
    type: list
    elements: str
    required: true
    aliases: [names]
  measure_dirty_rate_s:
    description:
      - Measure the dirty-page rate of the running domains over this many seconds (all domains at once).
        V(0) turns the measurement off.
      - Must be between V(0) and V(60). Domains that are not running are not measured.
      - Needs QEMU's dirty-rate calculation (libvirt 7.2 or later); the task fails with the reason when the host
        cannot measure.
    type: int
    default: 0
  dirty_rate_timeout_s:
    description:
      - Upper bound, in seconds, on the whole dirty-rate measurement, counted from its start.
      - Must be longer than O(measure_dirty_rate_s). Defaults to O(measure_dirty_rate_s) plus 10 seconds.
    type: int
seealso:
  - module: strata.migration.host_info
"""

EXAMPLES = r"""
- name: Describe two VMs on hv1
  strata.migration.domain_info:
    uri: qemu+ssh://root@hv1.example.com/system
    name:
      - web1
      - db1
  delegate_to: localhost
  register: vms

- name: Measure how fast web1 dirties its memory, over 5 seconds
  strata.migration.domain_info:
    uri: qemu+ssh://root@hv1.example.com/system
    name: web1
    measure_dirty_rate_s: 5
  delegate_to: localhost
  register: web1

- name: Show the dirty rate and the guest's unused memory
  ansible.builtin.debug:
    msg: >-
      web1 dirties {{ web1.domains[0].dirty_rate_mibps }} MiB/s,
      {{ web1.domains[0].balloon.unused_mib }} MiB unused in the guest
"""

RETURN = r"""
domains:
  description: Facts of each named domain, in the order of O(name).
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
    state:
      description: Domain state.
      type: str
      choices: [nostate, running, blocked, paused, shutdown, shutoff, crashed, pmsuspended]
      sample: running
    persistent:
      description: Whether the domain has a persistent definition on this host.
      type: bool
      sample: true
    job_running:
      description: Whether a job (migration, save, dump) runs on the domain. V(false) for inactive domains and for
        drivers that do not report jobs.
      type: bool
      sample: false
    domain_type:
      description: Domain type (accelerator) from the domain XML.
      type: str
      sample: kvm
    arch:
      description: Guest architecture.
      type: str
      sample: x86_64
    machine_type:
      description: Machine type from the domain XML, V(null) when not set.
      type: str
      sample: pc-q35-7.2
    vcpus:
      description: Number of virtual CPUs in use.
      type: int
      sample: 2
    cpu_mode:
      description: CPU mode from the domain XML (V(custom), V(host-model), V(host-passthrough), V(maximum)),
        V(null) without a C(<cpu>) element.
      type: str
      sample: custom
    cpu_model:
      description: CPU model from the domain XML, V(null) when not set.
      type: str
      sample: qemu64
    memory_max_mib:
      description: Maximum memory in MiB.
      type: int
      sample: 4096
    memory_current_mib:
      description: Current memory (balloon size) in MiB.
      type: int
      sample: 2048
    balloon:
      description:
        - The memory balloon device and the guest memory statistics it reports, in MiB.
        - Statistics are only reported for running domains with a balloon device, and only those the guest
          provides; the others are V(null). Guest statistics need a C(<stats period>) on the balloon.
      type: dict
      contains:
        has_device:
          description: Whether the domain has a balloon device (model other than V(none)).
          type: bool
          sample: true
        model:
          description: Balloon model, V(null) without a C(<memballoon>) element.
          type: str
          sample: virtio
        stats_period_s:
          description: Guest statistics period in seconds, V(null) when not set.
          type: int
          sample: 1
        actual_mib:
          description: Current balloon size, the memory the guest has.
          type: int
          sample: 2048
        unused_mib:
          description: Memory the guest leaves unused (its free memory).
          type: int
          sample: 1500
        available_mib:
          description: Total memory the guest sees.
          type: int
          sample: 1990
        usable_mib:
          description: Memory the guest could use without swapping (its available memory).
          type: int
          sample: 1700
        disk_caches_mib:
          description: Guest page cache that can be reclaimed.
          type: int
          sample: 150
        rss_mib:
          description: Host memory held by the guest's QEMU process.
          type: int
          sample: 600
    disks:
      description: Disks of the domain, in XML order.
      type: list
      elements: dict
      contains:
        target:
          description: Target device name in the guest.
          type: str
          sample: vda
        bus:
          description: Target bus.
          type: str
          sample: virtio
        device:
          description: Device kind.
          type: str
          sample: disk
        type:
          description: Source type (V(file), V(block), V(dir), V(volume), V(network), ...).
          type: str
          sample: file
        driver_type:
          description: Image format, V(null) when not set.
          type: str
          sample: qcow2
        cache:
          description: Cache mode, V(null) when not set.
          type: str
          sample: none
        source:
          description: The source path (file, block, dir), C(pool/volume) for volumes, or the image name for network
            disks; V(null) when the disk has no medium.
          type: str
          sample: /var/lib/libvirt/images/web1.qcow2
        protocol:
          description: Network protocol of network disks (V(rbd), V(iscsi), V(nbd), ...), V(null) otherwise.
          type: str
          sample: null
        readonly:
          description: Whether the disk is read-only.
          type: bool
          sample: false
        shareable:
          description: Whether the disk is marked shareable between domains.
          type: bool
          sample: false
        empty:
          description: Whether the disk has no medium (a CD-ROM or floppy without source); nothing to move.
          type: bool
          sample: false
        shared:
          description: Whether the storage is reachable from other hosts by construction (a network disk) or marked
            shareable.
          type: bool
          sample: false
        local_file:
          description: Whether the disk is a file on the host, which must exist on, or be shared with, the destination.
          type: bool
          sample: true
    interfaces:
      description: Network interfaces, in XML order.
      type: list
      elements: dict
      contains:
        type:
          description: Interface type (V(network), V(bridge), V(direct), V(hostdev), V(user), ...).
          type: str
          sample: network
        source:
          description: Network name, bridge name, host device name, vhost-user socket path or PCI address,
            depending on the type; V(null) when there is none.
          type: str
          sample: default
        mac:
          description: MAC address.
          type: str
          sample: "52:54:00:12:34:56"
        model:
          description: Device model, V(null) when not set.
          type: str
          sample: virtio
    hostdevs:
      description: Host devices passed through to the domain (these usually prevent live migration).
      type: list
      elements: dict
      contains:
        type:
          description: Host device type (V(pci), V(usb), V(scsi), V(mdev), ...).
          type: str
          sample: pci
        mode:
          description: Host device mode.
          type: str
          sample: subsystem
        address:
          description: Where the device is on the host, for example a PCI address or USB vendor and product.
          type: str
          sample: "0000:06:00.1"
    dirty_rate_mibps:
      description: Measured dirty-page rate in MiB/s; V(null) when O(measure_dirty_rate_s=0) or the domain is not
        running.
      type: float
      sample: 42.0
"""

from ansible_collections.strata.migration.plugins.module_utils._base import StrataModule
from ansible_collections.strata.migration.plugins.module_utils._inventory import domain_request, gather_domains
from ansible_collections.strata.migration.plugins.module_utils._libvirt import LibvirtError, StrataError


def main() -> None:
    module = StrataModule(
        argument_spec={
            "name": {"type": "list", "elements": "str", "required": True, "aliases": ["names"]},
            "measure_dirty_rate_s": {"type": "int", "default": 0},
            "dirty_rate_timeout_s": {"type": "int"},
        },
        supports_check_mode=True,
    )
    try:
        request = domain_request(
            module.params["name"],
            measure_dirty_rate_s=module.params["measure_dirty_rate_s"],
            dirty_rate_timeout_s=module.params["dirty_rate_timeout_s"],
        )
        domains = gather_domains(module.client.conn, request)
    except (StrataError, LibvirtError) as exc:
        module.fail_from(exc)
    module.exit_json(changed=False, domains=[domain.to_dict() for domain in domains])


if __name__ == "__main__":
    main()
