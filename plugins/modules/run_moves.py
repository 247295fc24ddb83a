#!/usr/bin/python
# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: run_moves
short_description: Run a migration plan's moves as slots free up, recorded in the manifest, with progress
version_added: 0.2.0
description:
  - The step of the evacuate, rebalance and maintenance_window workflows that runs the moves of a plan made by
    M(strata.migration.migration_plan). Each move is a M(strata.migration.live_migrate) job started in the
    background on the controller.
  - A move starts as soon as its hosts have a free slot (O(max_parallel_per_host) moves sending from a host and as
    many receiving, O(max_parallel_total) in all) and every move out of its destination from an earlier wave has
    ended, since the plan counted the memory those moves free. No move waits for the slowest move of a wave.
  - "The C(bandwidth_mibps) of O(migration) is each host's bandwidth for migration: the moves copying through a host share it
    equally, and a share is raised or lowered while its migration runs as others start and end."
  - Each move is recorded in the manifest at O(manifest_path) as running before it starts, with its job id once
    started, and with its outcome when it ends. A move the manifest records as running with a job id, left by an
    interrupted run, is waited for first and recorded; the background jobs outlive a killed playbook.
  - A migration that fails leaves its VM running on its source and does not fail this task; RV(moves) says how
    each move ended. The task fails on invalid options, or when a move is still running past its bound (it is not
    aborted; a rerun of the workflow picks it up).
  - This is an action plugin; it runs on the controller, which must be where the task runs (C(delegate_to=localhost)).
author:
  - strata.migration developers (@strata-migration)
attributes:
  check_mode:
    description: Can run in check mode and return what it would do.
    support: full
    details: Starts nothing and writes nothing; RV(moves) lists the moves with status V(would_run).
  diff_mode:
    description: Returns no diff; the manifest records the changes.
    support: none
seealso:
  - module: strata.migration.migration_plan
  - module: strata.migration.live_migrate
  - module: strata.migration.migration_manifest
options:
  moves:
    description:
      - The moves to run, the C(moves) of M(strata.migration.migration_plan)'s plan, each with C(vm), C(uuid),
        C(from), C(to) and C(wave). An empty list only finishes what an interrupted run left going.
    type: list
    elements: dict
    required: true
  hosts:
    description:
      - How each host is reached, the output of the P(strata.migration.cluster_hosts#filter) filter; C(uri) per host,
        and the optional C(memory_capacity_mib) and C(reserve_mib) each move passes on for its destination.
      - Every host a move names must be here.
    type: list
    elements: dict
    default: []
  migrate_uris:
    description: The migration data channel per destination host (the P(strata.migration.migrate_uris#filter) filter).
    type: dict
    default: {}
  migration:
    description:
      - Options of M(strata.migration.live_migrate) every move gets, for example C(strategy), C(max_downtime_ms),
        C(bandwidth_mibps), C(allow_postcopy) or C(compact). Checked before anything starts.
      - C(bandwidth_mibps) is each host's bandwidth for migration, shared by the moves copying through it; unset or
        C(0) is unlimited.
      - The options the controller sets per move (C(name), C(uri), C(dest_uri), C(migrate_uri), C(timeout_s),
        C(connect_timeout_s), C(progress_file), C(dest_capacity_mib), C(reserve_mib)) are not accepted here.
    type: dict
    default: {}
  manifest_path:
    description: The workflow's manifest.
    type: path
    required: true
  workflow:
    description: The workflow the manifest belongs to.
    type: str
    required: true
    choices: [evacuate, rebalance, maintenance_window]
  max_parallel_per_host:
    description: How many moves a host sends at once, and how many it receives, at least 1.
    type: int
    default: 2
  max_parallel_total:
    description: How many moves run at once in all, at least 1.
    type: int
    default: 4
  migration_timeout_s:
    description:
      - Each migration's bound (O(strata.migration.live_migrate#module:timeout_s)). Its background job is bounded
        15 minutes beyond, for preparation, post-copy recovery and the restore; this task waits for it that long.
    type: int
    default: 600
  connect_timeout_s:
    description: Bound of each libvirt connection, in seconds.
    type: int
    default: 30
  progress_interval_s:
    description: Seconds between two progress reports of the running moves, at least 1. Starts and ends are shown at once.
    type: float
    default: 5
notes:
  - Runs on the controller and starts the migrations there, as background jobs in Ansible's async directory.
"""

EXAMPLES = r"""
- name: Run the planned moves
  strata.migration.run_moves:
    moves: "{{ plan.plan.moves }}"
    hosts: "{{ groups['hypervisors'] | strata.migration.cluster_hosts(hostvars) }}"
    migrate_uris: "{{ groups['hypervisors'] | strata.migration.migrate_uris(hostvars) }}"
    migration:
      max_downtime_ms: 300
      bandwidth_mibps: 100
    manifest_path: ~/.strata-migration/evacuate-manifest.json
    workflow: evacuate
  delegate_to: localhost
  register: ran
"""

RETURN = r"""
moves:
  description: One entry per move, the moves an interrupted run left going first, then the plan's in the order they started.
  returned: always
  type: list
  elements: dict
  contains:
    vm:
      description: The VM.
      type: str
    from:
      description: Its source host.
      type: str
    to:
      description: Its destination host.
      type: str
    status:
      description:
        - V(finished) when the migration ended well (or found the VM already moved), V(failed) when it failed or did
          not start, V(unknown) when its job cannot be found, V(running) when it outlived its bound, V(would_run) in
          check mode.
      type: str
      choices: [finished, failed, unknown, running, would_run]
    msg:
      description: The migration's message, or why the status is what it is.
      type: str
    strategy:
      description: The strategy the migration used, when it reported one.
      type: str
    started_s:
      description: When the move started, in seconds since this task started; null when it did not start here.
      type: float
    ended_s:
      description: When this task saw the move end, in seconds since it started; null when it did not end.
      type: float
    job_s:
      description: The migration job's own time in seconds, when the migration reported it.
      type: float
"""

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = {
    "moves": {"type": "list", "elements": "dict", "required": True},
    "hosts": {"type": "list", "elements": "dict", "default": []},
    "migrate_uris": {"type": "dict", "default": {}},
    "migration": {"type": "dict", "default": {}},
    "manifest_path": {"type": "path", "required": True},
    "workflow": {"type": "str", "required": True, "choices": ["evacuate", "rebalance", "maintenance_window"]},
    "max_parallel_per_host": {"type": "int", "default": 2},
    "max_parallel_total": {"type": "int", "default": 4},
    "migration_timeout_s": {"type": "int", "default": 600},
    "connect_timeout_s": {"type": "int", "default": 30},
    "progress_interval_s": {"type": "float", "default": 5},
}


def main() -> None:
    # The action plugin of the same name does the work on the controller; this only runs without it.
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.fail_json(msg="strata.migration.run_moves runs as an action plugin on the controller; call it by its "
                         "full name, strata.migration.run_moves, from a task")


if __name__ == "__main__":
    main()
