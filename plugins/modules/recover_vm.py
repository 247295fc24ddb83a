#!/usr/bin/python
# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: recover_vm
short_description: Restart a failed host's VM on another host from its backed-up definition
version_added: 0.2.0
description:
  - Defines the VM O(name) on the host of O(uri) from the definition M(strata.migration.definitions_backup) kept of
    it on O(failed_host), with the same UUID, devices and autostart setting, and starts it.
  - Nothing changes when the VM already runs on that host (a rerun); a VM defined there but stopped is started.
  - A copy that does not start (its disk is locked because the VM still runs elsewhere, a disk is missing) is
    undefined again, so the VM is never left defined on more hosts than before.
  - This module does not check that O(failed_host) is down. Restarting the VM of a host that still runs it starts a
    second copy on the same disks, unless the hosts hold disk leases. Use the P(strata.migration.recover#role) role,
    which confirms the failure and fences the host first.
author:
  - strata.migration developers (@strata-migration)
extends_documentation_fragment:
  - strata.migration.connection
options:
  name:
    description:
      - Name of the VM, as the backup has it under O(failed_host).
    type: str
    required: true
  failed_host:
    description:
      - The host the VM ran on, by the name the backup uses (the inventory name).
    type: str
    required: true
  definitions_path:
    description:
      - The backup file written by M(strata.migration.definitions_backup).
    type: path
    required: true
  state:
    description:
      - V(running) restarts the VM on the host of O(uri).
      - V(absent) removes the stopped copy of the VM (the same UUID) from the host of O(uri) - the failed host, once it
        came back - so that the copy never starts there again. A copy that runs there fails the task and is left as it
        is.
    type: str
    choices: [running, absent]
    default: running
attributes:
  check_mode:
    description: Reports whether it would define and start (or remove) the VM; changes nothing.
    support: full
  diff_mode:
    description: Returns no diff.
    support: none
seealso:
  - module: strata.migration.definitions_backup
  - module: strata.migration.migration_plan
"""

EXAMPLES = r"""
- name: Remove the stale copy of web1 from hv2, back after its failure
  strata.migration.recover_vm:
    uri: qemu+ssh://root@hv2.example.com/system
    name: web1
    failed_host: hv2
    definitions_path: ~/.strata-migration/definitions.json
    state: absent
  delegate_to: localhost

- name: Restart web1, which ran on hv2, on hv3
  strata.migration.recover_vm:
    uri: qemu+ssh://root@hv3.example.com/system
    name: web1
    failed_host: hv2
    definitions_path: ~/.strata-migration/definitions.json
  delegate_to: localhost
"""

RETURN = r"""
vm:
  description: O(name).
  returned: always
  type: str
  sample: web1
uuid:
  description: The VM's UUID, as the backup has it.
  returned: success
  type: str
  sample: 6695eb01-f6a4-8304-79aa-97f2502e193f
failed_host:
  description: O(failed_host).
  returned: always
  type: str
  sample: hv2
msg:
  description: What happened, for example C(restarted on qemu+ssh://root@hv3.example.com/system).
  returned: always
  type: str
"""

from ansible_collections.strata.migration.plugins.module_utils._base import StrataModule
from ansible_collections.strata.migration.plugins.module_utils._definitions import (
    definition_of,
    load_backup,
    remove_stale,
    restart_here,
)
from ansible_collections.strata.migration.plugins.module_utils._libvirt import LibvirtError, StrataError


def main() -> None:
    module = StrataModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "failed_host": {"type": "str", "required": True},
            "definitions_path": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["running", "absent"], "default": "running"},
        },
        supports_check_mode=True,
    )
    vm, failed_host = module.params["name"], module.params["failed_host"]
    try:
        definition = definition_of(load_backup(module.params["definitions_path"]), failed_host, vm)
        act = restart_here if module.params["state"] == "running" else remove_stale
        result = act(module.client.conn, definition, module.display_uri, module.check_mode)
    except (StrataError, LibvirtError) as exc:
        module.fail_from(exc, vm=vm, failed_host=failed_host)
    module.exit_json(vm=vm, uuid=definition.uuid, failed_host=failed_host, **result)


if __name__ == "__main__":
    main()
