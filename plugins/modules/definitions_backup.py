#!/usr/bin/python
# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: definitions_backup
short_description: Keep every VM's persistent definition in a file on the controller, to restart it if its host dies
version_added: 0.2.0
description:
  - Reads the persistent definition (domain XML, autostart, whether it runs) of every VM on every reachable host of
    O(hosts) and keeps it in the backup file O(path), one entry per host. A host that cannot be reached keeps its
    last entry, so the backup still holds what a host that died last ran.
    M(strata.migration.recover_vm) and the P(strata.migration.recover#role) role restart a failed host's VMs from it.
  - A reading that finds a host's VMs as the backup has them changes nothing. The evacuate, rebalance,
    maintenance_window and recover roles refresh the backup each time they read the cluster.
  - The file is written atomically and readable by its owner only (mode 0600). The definitions include console
    passwords, so that a restarted VM is the same VM.
  - O(hosts[].memory_capacity_mib) and O(hosts[].reserve_mib) are not used here; they are accepted so that one list
    of hosts serves this module and M(strata.migration.cluster_info).
author:
  - strata.migration developers (@strata-migration)
extends_documentation_fragment:
  - strata.migration.cluster_hosts
options:
  path:
    description:
      - The backup file. It is created when missing; its directory must exist.
    type: path
    required: true
attributes:
  check_mode:
    description: Reads the hosts and reports what would change; writes nothing.
    support: full
  diff_mode:
    description: Returns no diff; RV(changed_hosts) names the hosts whose entries change.
    support: none
seealso:
  - module: strata.migration.recover_vm
  - module: strata.migration.cluster_info
notes:
  - Run it on the controller (C(delegate_to) V(localhost)).
"""

EXAMPLES = r"""
- name: Keep the cluster's definitions where a recovery finds them
  strata.migration.definitions_backup:
    hosts:
      - {name: hv1, uri: "qemu+ssh://root@hv1.example.com/system"}
      - {name: hv2, uri: "qemu+ssh://root@hv2.example.com/system"}
    path: ~/.strata-migration/definitions.json
  delegate_to: localhost
"""

RETURN = r"""
path:
  description: The backup file.
  returned: success
  type: str
  sample: /home/ops/.strata-migration/definitions.json
changed_hosts:
  description: Hosts whose entry this reading changed (or would change, in check mode).
  returned: success
  type: list
  elements: str
  sample: [hv2]
hosts:
  description: Each host of O(hosts), as the backup now holds it.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: O(hosts[].name).
      type: str
      sample: hv1
    changed_at:
      description: When the reading that last changed the host's entry ran (UTC); V(null) when it was never read.
      type: str
      sample: "2026-12-07T15:04:05Z"
    vms:
      description: The VMs defined on the host at that reading.
      type: list
      elements: str
      sample: [web1, db1]
unreachable_hosts:
  description: Hosts that could not be read; their entries stay as they were.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: O(hosts[].name).
      type: str
    uri:
      description: O(hosts[].uri) without credentials.
      type: str
    reason:
      description: What went wrong.
      type: str
"""

from ansible_collections.strata.migration.plugins.module_utils._base import StrataClusterModule
from ansible_collections.strata.migration.plugins.module_utils._definitions import back_up
from ansible_collections.strata.migration.plugins.module_utils._libvirt import StrataError


def main() -> None:
    module = StrataClusterModule(
        argument_spec={"path": {"type": "path", "required": True}},
        supports_check_mode=True,
    )
    try:
        specs = module.checked_hosts()
        result = back_up(specs, module.params["path"], module.params["connect_timeout_s"], check_mode=module.check_mode)
    except StrataError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
