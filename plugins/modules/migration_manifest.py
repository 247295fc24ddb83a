#!/usr/bin/python
# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: migration_manifest
short_description: Record the moves of a workflow run in a manifest file, for resume and return
version_added: 0.1.0
description:
  - Keeps the manifest of one run of a workflow (evacuation, rebalance, maintenance window) in a JSON file on the
    machine the module runs on (the controller, with C(delegate_to=localhost)). It records which VM moves from which
    host to which, and how far each move went (V(planned), V(running), V(done), V(failed), V(skipped)). A rerun with the
    same file finishes an interrupted run without moving a VM twice, and the file tells where each VM came from, so
    VMs can go home after maintenance.
  - Each option records facts; they are applied in this order in one task. O(finished) records how moves ended,
    O(where) settles the moves still V(running) from where their VMs run now, O(skipped) marks moves not attempted,
    O(plan) merges a new plan, O(started) marks moves as started.
  - Without any of those options the module only reads the manifest (and creates an empty one when there is no
    file).
  - The file is written only when its moves change, atomically (a new file replaces the old one in one rename,
    so an interrupted task leaves the old manifest or the new one) and readable by its owner only. Hosts are
    recorded by name, never by URI, so no credential reaches the file.
  - It needs no libvirt connection.
author:
  - strata.migration developers (@strata-migration)
seealso:
  - module: strata.migration.migration_plan
  - module: strata.migration.live_migrate
  - module: strata.migration.cluster_info
options:
  path:
    description:
      - The manifest file. It is created when missing; its directory must exist (except in check mode, which writes
        nothing).
    type: path
    required: true
  workflow:
    description:
      - The workflow the manifest records. Required when O(path) does not exist. When the file exists, it must
        record this workflow; leave it out to accept whatever the file records.
    type: str
    choices: [evacuate, rebalance, maintenance_window, recover]
  finished:
    description:
      - Moves that ended, each with the result of its M(strata.migration.live_migrate) task (or of the failed task).
      - A failed result marks the move V(failed) with its C(msg). A result that changed nothing (the VM already ran on
        its destination) marks it V(done), C(already on the destination). Any other result marks it V(done),
        C(migrated), with the strategy that ran and the main figures of RV(manifest.moves[].figures).
      - A move already recorded in the state a result gives is left as it is, so the same task can run again.
    type: list
    elements: dict
    suboptions:
      vm:
        description: Name of the VM.
        type: str
        required: true
      uuid:
        description: UUID of the VM; when both this and the manifest know it, it identifies the VM.
        type: str
      result:
        description: The registered result of the task that ran the move.
        type: dict
        required: true
  where:
    description:
      - Where each VM runs now, as a VM name or UUID mapped to a host name, or to V(null) when it runs on no host (as
        RV(strata.migration.cluster_info#module:where) returns it).
      - Settles each move still V(running) (left so by an interrupted run, after O(finished)); a VM on its
        destination is V(done), one on its source is V(planned) again, one elsewhere or on no host (or not in
        O(where)) is V(failed) for the operator to look at.
    type: dict
  skipped:
    description:
      - Planned moves that will not be attempted, with the reason. A move already skipped is left as it is.
    type: list
    elements: dict
    suboptions:
      vm:
        description: Name of the VM.
        type: str
        required: true
      uuid:
        description: UUID of the VM.
        type: str
      reason:
        description: Why the move is not attempted.
        type: str
        required: true
  plan:
    description:
      - A new plan, as the moves of RV(strata.migration.migration_plan#module:plan.moves) (C(vm), C(uuid), C(from),
        C(to); other keys are ignored), in the order they should run.
      - "For each VM, its latest recorded move decides: none, or done from another host: the move is added; done from
        the same host: the VM is not moved again; running: kept as it is; planned, failed or skipped: planned again as
        the new plan says, keeping its attempt count. Planned moves the new plan no longer holds become skipped."
      - An empty list records an empty plan (every planned move becomes skipped); leave the option out to keep the
        plan.
    type: list
    elements: dict
  started:
    description:
      - Moves being started, each with C(vm), C(uuid) (optional) and C(job_id) (optional, the async job of the
        migration, so that a rerun can wait for a migration an interrupted run left going); other keys are ignored,
        so the moves of a plan can be passed as they are.
      - A planned move becomes V(running), one attempt more. A move already V(running) only takes the C(job_id), when
        it has none yet; a move running with another job fails the task.
    type: list
    elements: dict
  home_hosts:
    description:
      - Limits RV(returns_home) to VMs that first came from these hosts.
    type: list
    elements: str
  maintained:
    description:
      - Hosts a maintenance window finished (evacuated, maintained, VMs brought home), recorded with the time so a
        rerun with this manifest skips them. A host already recorded keeps its first time.
    type: list
    elements: str
attributes:
  check_mode:
    description: Computes and returns the manifest as it would be, and writes nothing.
    support: full
  diff_mode:
    description: Shows the workflow and the moves before and after.
    support: full
notes:
  - A VM can have several moves in one manifest (a maintenance window that empties one host after another); its
    latest move is the one the options update.
  - The task reports a change when the file is created or its moves change; a rerun that records nothing new
    reports none and leaves the file as it is.
"""

EXAMPLES = r"""
- name: Record the plan, after settling what an interrupted run left running
  strata.migration.migration_manifest:
    path: ~/.strata-migration/evacuate-manifest.json
    workflow: evacuate
    where: "{{ cluster.where }}"
    plan: "{{ evacuation.plan.moves }}"
  delegate_to: localhost
  register: manifest

- name: Record a wave as started, with the async job of each migration
  strata.migration.migration_manifest:
    path: ~/.strata-migration/evacuate-manifest.json
    started:
      - {vm: web1, uuid: 0b3c5c2e-2f6d-4c1e-9d55-3f1d2a7b9e10, job_id: "j412345678901.4242"}
  delegate_to: localhost

- name: Record how a migration ended
  strata.migration.migration_manifest:
    path: ~/.strata-migration/evacuate-manifest.json
    finished:
      - {vm: web1, result: "{{ web1_migration }}"}
  delegate_to: localhost

- name: Find the VMs that left hv1, to bring them back
  strata.migration.migration_manifest:
    path: ~/.strata-migration/maintenance-manifest.json
    workflow: maintenance_window
    home_hosts: [hv1]
  delegate_to: localhost
  register: homeward
"""

RETURN = r"""
manifest:
  description: The whole manifest as the file holds it (or would hold it, in check mode).
  returned: success
  type: dict
  contains:
    version:
      description: Format version of the file.
      type: int
      sample: 1
    run_id:
      description: Identifier of the run, set when the manifest was created.
      type: str
      sample: 5f0c8e0a9b3d4f6e8a1b2c3d4e5f6a7b
    created_at:
      description: When the manifest was created, ISO 8601 UTC.
      type: str
      sample: "2024-05-01T12:00:00Z"
    updated_at:
      description: When its moves last changed, ISO 8601 UTC.
      type: str
      sample: "2024-05-01T12:03:10Z"
    workflow:
      description: The workflow recorded.
      type: str
      sample: evacuate
    moves:
      description: Every move, oldest first.
      type: list
      elements: dict
      contains:
        vm:
          description: VM name.
          type: str
        uuid:
          description: VM UUID, or V(null) when unknown.
          type: str
        from_host:
          description: Source host.
          type: str
        to_host:
          description: Destination host.
          type: str
        state:
          description: V(planned), V(running), V(done), V(failed) or V(skipped).
          type: str
        started_at:
          description: When the latest attempt started, ISO 8601 UTC.
          type: str
        ended_at:
          description: When the move ended, ISO 8601 UTC.
          type: str
        result:
          description: How it ended, in words (the error of a failed move).
          type: str
          sample: migrated
        strategy:
          description: The strategy that ran.
          type: str
          sample: precopy
        figures:
          description:
            - Figures of the migration, those the result had among C(total_ms), C(downtime_ms),
              C(transferred_mib), C(memory_mib) (guest memory), C(iterations) (pre-copy passes),
              C(compaction_reclaimed_mib) (memory the balloon took before the move) and
              C(disk_transferred_mib) (disk data a storage copy sent).
          type: dict
          sample: {total_ms: 1840, downtime_ms: 35, transferred_mib: 71.7, memory_mib: 512.0, iterations: 3}
        attempt:
          description: How many times the move was started.
          type: int
        job_id:
          description: The async job of the latest attempt, or V(null).
          type: str
    maintained:
      description: Hosts a maintenance window finished, with the time each was recorded (ISO 8601 UTC).
      type: dict
      sample: {hv1: "2026-11-25T03:40:00Z"}
pending:
  description: The planned moves, in order, ready to feed M(strata.migration.live_migrate) tasks.
  returned: success
  type: list
  elements: dict
  sample: [{vm: web1, uuid: null, from: hv1, to: hv2}]
running:
  description: The running moves (C(vm), C(uuid), C(from), C(to), C(job_id)).
  returned: success
  type: list
  elements: dict
  sample: [{vm: db1, uuid: null, from: hv1, to: hv3, job_id: "j412345678901.4242"}]
returns_home:
  description:
    - The moves that bring each moved VM back to the host it first left (C(vm), C(uuid), C(from), C(to)), in the
      order the VMs first moved; only VMs that first left O(home_hosts), when given. A VM already home, or whose
      latest move is running, has none.
  returned: success
  type: list
  elements: dict
  sample: [{vm: web1, uuid: null, from: hv2, to: hv1}]
counts:
  description: How many moves are in each state.
  returned: success
  type: dict
  sample: {planned: 1, running: 0, done: 3, failed: 1, skipped: 0}
maintained:
  description: Hosts a maintenance window finished, with the time each was recorded (ISO 8601 UTC).
  returned: success
  type: dict
  sample: {hv1: "2026-11-25T03:40:00Z"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.strata.migration.plugins.module_utils._manifest import (
    WORKFLOWS,
    Manifest,
    ManifestError,
    Updates,
    ensure_manifest,
    manifest_to_dict,
    manifest_view,
)

ARGUMENT_SPEC = {
    "path": {"type": "path", "required": True},
    "workflow": {"type": "str", "choices": list(WORKFLOWS)},
    "finished": {
        "type": "list",
        "elements": "dict",
        "options": {
            "vm": {"type": "str", "required": True},
            "uuid": {"type": "str"},
            "result": {"type": "dict", "required": True},
        },
    },
    "where": {"type": "dict"},
    "skipped": {
        "type": "list",
        "elements": "dict",
        "options": {
            "vm": {"type": "str", "required": True},
            "uuid": {"type": "str"},
            "reason": {"type": "str", "required": True},
        },
    },
    "plan": {"type": "list", "elements": "dict"},
    "started": {"type": "list", "elements": "dict"},
    "home_hosts": {"type": "list", "elements": "str"},
    "maintained": {"type": "list", "elements": "str"},
}


def _diff_side(manifest: Manifest) -> dict:
    data = manifest_to_dict(manifest)
    return {"workflow": data["workflow"], "moves": data["moves"]}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    updates = Updates(
        finished=params["finished"],
        where=params["where"],
        skipped=params["skipped"],
        plan=params["plan"],
        started=params["started"],
        maintained=params["maintained"],
    )
    try:
        state = ensure_manifest(params["path"], params["workflow"], updates, check_mode=module.check_mode)
    except ManifestError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    result = dict(manifest_view(state.after, home_hosts=params["home_hosts"]), changed=state.changed)
    if module._diff and state.changed:
        result["diff"] = {
            "before": _diff_side(state.before) if state.before is not None else {},
            "after": _diff_side(state.after),
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
