#!/usr/bin/python
# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: migration_wait
short_description: Wait for background migrations and show their progress
version_added: 0.1.0
description:
  - Waits for jobs started with C(async) and C(poll) set to C(0), typically several M(strata.migration.live_migrate) tasks
    started side by side, and prints a progress line per running job at each poll, so long migrations are not
    silent.
  - Each job's state comes from M(ansible.builtin.async_status) on the host the task runs on (or is delegated to),
    which must be the host that started the job. A finished job's result is the result of the module that ran,
    without the async bookkeeping keys.
  - Progress comes from the job's O(jobs[].progress_file), the JSON file M(strata.migration.live_migrate) keeps up to
    date while it runs, read on the controller. A file that does not exist yet or cannot be read is shown as
    C(waiting for progress); it never fails the task.
  - A migration that fails is reported in RV(jobs) with status C(failed) and does not fail this task; the caller
    decides what a failed migration means. The task fails only on invalid options or when O(timeout_s) passes with
    jobs still running. Nothing is aborted then; the migrations go on on their own, and a later run of the
    workflow picks them up.
  - This is an action plugin; it runs on the controller and reads only.
author:
  - strata.migration developers (@strata-migration)
extends_documentation_fragment:
  - strata.migration.attributes.read_only
seealso:
  - module: strata.migration.live_migrate
  - module: ansible.builtin.async_status
options:
  jobs:
    description:
      - The jobs to wait for, in the order RV(jobs) returns them.
    type: list
    elements: dict
    required: true
    suboptions:
      jid:
        description: The job id, the C(ansible_job_id) that the task started with C(async) and C(poll) set to C(0) returned.
        type: str
        required: true
      label:
        description: What the job is, as printed in the progress lines (for example C(web1 hv1 -> hv2)).
        type: str
        required: true
      progress_file:
        description:
          - Path on the controller of the job's progress file, the C(progress_file) option of
            M(strata.migration.live_migrate).
          - Without it, a running job is shown as C(running).
        type: path
  timeout_s:
    description:
      - How long to wait for all jobs, in seconds, greater than 0. Jobs still running then make the task fail; they
        are not aborted.
      - Give it more than the largest O(strata.migration.live_migrate#module:timeout_s) of the jobs.
    type: float
    default: 3600
  poll_interval_s:
    description: Seconds between two polls of the jobs, at least 0.5.
    type: float
    default: 5
  cleanup:
    description:
      - Remove the async job file of each job once it has finished (M(ansible.builtin.async_status) with
        C(mode=cleanup)). Those files are Ansible's bookkeeping, not part of the managed hosts, so this also happens
        in check mode.
    type: bool
    default: true
notes:
  - The jobs must have been started on the host this task runs on; with C(delegate_to=localhost) for the
    migrations, delegate this task to localhost too.
"""

EXAMPLES = r"""
- name: Start the migrations of a wave side by side
  strata.migration.live_migrate:
    name: "{{ item.vm }}"
    uri: "{{ item.source_uri }}"
    dest_uri: "{{ item.dest_uri }}"
    progress_file: "/tmp/strata-progress/{{ item.vm }}.json"
  loop: "{{ wave }}"
  delegate_to: localhost
  async: 3600
  poll: 0
  register: started

- name: List the started jobs
  ansible.builtin.set_fact:
    wave_jobs: >-
      {{ wave_jobs | default([]) + [{
           'jid': item.ansible_job_id,
           'label': item.item.vm ~ ' ' ~ item.item.source ~ ' -> ' ~ item.item.dest,
           'progress_file': '/tmp/strata-progress/' ~ item.item.vm ~ '.json'}] }}
  loop: "{{ started.results }}"

- name: Wait for them, printing progress
  strata.migration.migration_wait:
    jobs: "{{ wave_jobs }}"
    timeout_s: 1800
    poll_interval_s: 10
  delegate_to: localhost
  register: waited

- name: Show the migrations that did not finish well
  ansible.builtin.debug:
    msg: "{{ item.label }}: {{ item.status }}: {{ item.msg }}"
  loop: "{{ waited.jobs | rejectattr('status', 'eq', 'finished') | list }}"
"""

RETURN = r"""
jobs:
  description: One entry per job of O(jobs), in the same order.
  returned: always
  type: list
  elements: dict
  contains:
    jid:
      description: The job id.
      type: str
      sample: "j811449186826.2840"
    label:
      description: The job's label.
      type: str
      sample: web1 hv1 -> hv2
    status:
      description:
        - V(finished) when the job ended and its module succeeded; V(failed) when it ended and its module failed;
          V(unknown) when no job file exists for this id (for example, it was started on another controller, or
          already cleaned up); V(running) when O(timeout_s) passed first.
      type: str
      choices: [finished, failed, unknown, running]
      sample: finished
    result:
      description:
        - The result of the module the job ran (for M(strata.migration.live_migrate), its documented return
          values), without C(ansible_job_id), C(started), C(finished), C(results_file), C(stdout_lines),
          C(stderr_lines) and C(_ansible_*) keys. Empty unless the job is V(finished) or V(failed).
      type: dict
      sample: {"changed": true, "domain": "web1"}
    msg:
      description: The module's message for a failed job, why the status is unknown, or empty.
      type: str
      sample: ""
"""

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = {
    "jobs": {
        "type": "list",
        "elements": "dict",
        "required": True,
        "options": {
            "jid": {"type": "str", "required": True},
            "label": {"type": "str", "required": True},
            "progress_file": {"type": "path"},
        },
    },
    "timeout_s": {"type": "float", "default": 3600},
    "poll_interval_s": {"type": "float", "default": 5},
    "cleanup": {"type": "bool", "default": True},
}


def main() -> None:
    # The action plugin of the same name does the work on the controller; this only runs when the
    # module is called without it (for example as ansible.legacy.migration_wait from a custom action).
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.fail_json(msg="strata.migration.migration_wait runs as an action plugin on the controller; call it by "
                         "its full name, strata.migration.migration_wait, from a task")


if __name__ == "__main__":
    main()
