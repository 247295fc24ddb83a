#!/usr/bin/python
# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: memory_compact
short_description: Balloon a running VM down to its working set before a migration, and give the memory back after
version_added: 0.1.0
description:
  - With O(state=compacted), inflates the memory balloon of a running domain until the guest keeps only its working
    set plus a headroom. Linux keeps the contents of memory it has freed, so a migration would otherwise send every
    page the guest ever used; memory taken by the balloon crosses the wire as zero pages instead.
  - The working set is the balloon size minus the memory the guest could still use without swapping (the guest's
    C(usable) statistic, its MemAvailable), or minus its free memory (C(unused)) when the guest does not report
    C(usable). Page cache the guest can drop counts as free, so compaction also drops the guest's page cache.
  - The target is the working set plus the larger of O(headroom_mib) and O(headroom_percent) of the working set, never
    below O(min_memory_mib) and never above the current size. The guest is never asked to go below its working set
    plus that headroom.
  - Compaction records the size from before it in the domain's metadata (namespace
    C(https://strata-migration.github.io/xmlns/compaction/1)), in the live definition and, for a persistent domain,
    the persistent one. The record travels with the domain when it migrates, so O(state=restored) on the destination
    host gives back the size the guest had on the source.
  - With O(state=restored), deflates the balloon to O(size_mib), else the recorded size, else the domain's maximum
    memory, and removes the record. A restore only gives memory back; a guest already at or above the size is left
    as it is.
  - The balloon moves with the guest's cooperation. The module waits, at most O(timeout_s) seconds, until the balloon
    reaches the target or stops moving (for 3 seconds). A guest that gives back less than asked (no balloon driver,
    memory pressure) is reported in RV(shortfall); the task fails for it only with O(require_target=true).
  - Compaction changes only the running guest; the persistent definition keeps its memory size, so a restart of the
    guest also gives it back its memory.
author:
  - strata.migration developers (@strata-migration)
extends_documentation_fragment:
  - strata.migration.connection
options:
  name:
    description:
      - Name of the domain. It must be running and have a memory balloon device.
    type: str
    required: true
  state:
    description:
      - V(compacted) balloons the guest down to its working set plus headroom.
      - V(restored) gives the memory back.
    type: str
    choices: [compacted, restored]
    default: compacted
  headroom_mib:
    description:
      - Memory, in MiB, left to the guest above its working set. The larger of this and O(headroom_percent) applies.
      - Must be V(0) or more.
    type: int
    default: 64
  headroom_percent:
    description:
      - Memory left to the guest above its working set, in percent of the working set. The larger of this and
        O(headroom_mib) applies.
      - Must be between V(0) and V(100).
    type: float
    default: 10
  min_memory_mib:
    description:
      - The guest is never compacted below this size, in MiB, whatever its working set.
      - Must be at least V(1).
    type: int
    default: 128
  size_mib:
    description:
      - With O(state=restored), the size in MiB to give the guest. It must not exceed the domain's maximum memory.
      - Defaults to the size recorded by the compaction, or the domain's maximum memory when there is no record.
      - Not allowed with O(state=compacted).
    type: int
  timeout_s:
    description:
      - Upper bound, in seconds, on the whole task, including the wait for current guest statistics and the wait for
        the balloon to reach its target.
      - Must be at least V(1).
    type: int
    default: 60
  require_target:
    description:
      - Fail when the balloon stops short of the target (beyond a tolerance of 4 MiB or 2% of the target, whichever is
        larger). The guest keeps whatever size it reached.
      - When V(false), a shortfall is reported in RV(shortfall) and the task succeeds.
    type: bool
    default: false
  enable_stats:
    description:
      - When the balloon reports no guest statistics (statistics period V(0)), turn them on for the running guest
        (a period of 1 second, like C(virsh dommemstat NAME --period 1 --live)) and wait for the first report.
      - When V(false), compaction of such a domain fails with a hint. O(state=restored) needs no statistics.
    type: bool
    default: false
attributes:
  check_mode:
    description: Reports the target and what would change, and changes nothing.
    support: full
  diff_mode:
    description: Shows the balloon size and the recorded pre-compaction size before and after.
    support: full
notes:
  - Compaction needs a balloon device with the guest's statistics, for example
    C(<memballoon model='virtio'><stats period='1'/></memballoon>), and the guest's balloon driver (C(virtio_balloon)
    on Linux).
  - Libvirt keeps reporting the guest's last statistics after the statistics period has been set to V(0); the module
    waits for a new report before sizing the guest, so it never sizes it from old figures.
seealso:
  - module: strata.migration.domain_info
"""

EXAMPLES = r"""
- name: Compact web1 before migrating it
  strata.migration.memory_compact:
    uri: qemu+ssh://root@hv1.example.com/system
    name: web1
  delegate_to: localhost
  register: compaction

- name: Show what the migration no longer has to send
  ansible.builtin.debug:
    msg: "web1 went from {{ compaction.before_mib }} to {{ compaction.after_mib }} MiB"

- name: Compact a large guest with 20% headroom, failing if it cannot give the memory back
  strata.migration.memory_compact:
    uri: qemu+ssh://root@hv1.example.com/system
    name: db1
    headroom_percent: 20
    min_memory_mib: 1024
    require_target: true
    timeout_s: 120
  delegate_to: localhost

- name: After the migration, give web1 its memory back on the destination host
  strata.migration.memory_compact:
    uri: qemu+ssh://root@hv2.example.com/system
    name: web1
    state: restored
  delegate_to: localhost
"""

RETURN = r"""
domain:
  description: Name of the domain.
  returned: success
  type: str
  sample: web1
host:
  description: Hostname of the hypervisor host the domain runs on.
  returned: success
  type: str
  sample: hv1
state:
  description: The state the task brought the domain to, O(state).
  returned: success
  type: str
  sample: compacted
before_mib:
  description: Balloon size (the memory the guest has) in MiB when the task started.
  returned: success
  type: int
  sample: 4096
target_mib:
  description:
    - The size the task aimed for, in MiB.
    - V(null) in check mode when the guest's statistics would have to be turned on (O(enable_stats)) before a target
      can be known.
  returned: success
  type: int
  sample: 1210
after_mib:
  description: Balloon size in MiB when the task ended; in check mode, the size the task would aim for.
  returned: success
  type: int
  sample: 1210
reclaimed_mib:
  description: Memory taken from the guest by this task, in MiB (RV(before_mib) minus RV(after_mib), or V(0)).
  returned: success
  type: int
  sample: 2886
restored_mib:
  description: Memory given back to the guest by this task, in MiB (RV(after_mib) minus RV(before_mib), or V(0)).
  returned: success
  type: int
  sample: 0
reached_target:
  description:
    - Whether the balloon ended within the tolerance (4 MiB or 2% of the target, whichever is larger) of the target.
    - V(null) in check mode.
  returned: success
  type: bool
  sample: true
shortfall:
  description: Why the balloon stopped short of the target, naming the domain and host; V(null) when it reached it.
  returned: success
  type: str
  sample: >-
    domain 'web1' on host 'hv1' (qemu+ssh://root@hv1.example.com/system) gave back 900 of the 2886 MiB asked
    (balloon at 3196 MiB, target 1210 MiB); the balloon stopped moving: the guest is probably short of free memory
    (its working set grew)
settled:
  description:
    - How the task ended. V(already) the domain was at the target and nothing moved; V(target) the balloon reached the
      target; V(stalled) it stopped moving before; V(timeout) O(timeout_s) ran out while it moved; V(check_mode)
      nothing was done.
  returned: success
  type: str
  choices: [already, target, stalled, timeout, check_mode]
  sample: target
elapsed_s:
  description: Seconds the whole task took, including the wait for current guest statistics.
  returned: success
  type: float
  sample: 1.6
settle_s:
  description: Seconds from the balloon request until the balloon size last changed; V(null) when nothing moved.
  returned: success
  type: float
  sample: 0.27
recorded_mib:
  description:
    - The pre-compaction size recorded in the domain's metadata after the task, in MiB; what O(state=restored) gives
      back by default. V(null) when there is no record (after a restore, or when the domain was never compacted).
  returned: success
  type: int
  sample: 4096
recorded_before_mib:
  description: The pre-compaction size recorded in the domain's metadata when the task started, in MiB; V(null)
    when there was no record.
  returned: success
  type: int
  sample: null
stats_enabled:
  description: Whether the task turned the guest's balloon statistics on (O(enable_stats)).
  returned: success
  type: bool
  sample: false
plan:
  description:
    - How the target was chosen. Its keys depend on O(state); V(null) when no target could be computed (check mode
      with statistics still off).
  returned: success
  type: dict
  contains:
    actual_mib:
      description: Balloon size in MiB when the target was computed.
      type: int
      sample: 4096
    used_mib:
      description: The guest's working set in MiB. Only with O(state=compacted).
      returned: when state=compacted
      type: int
      sample: 1100
    used_source:
      description: >-
        The statistic the working set was computed from. V(usable) actual minus the memory the guest could use
        without swapping; V(unused) actual minus the guest's free memory, for guests that do not report V(usable).
        Only with O(state=compacted).
      returned: when state=compacted
      type: str
      choices: [usable, unused]
      sample: usable
    headroom_mib:
      description: Memory left above the working set in MiB, the larger of O(headroom_mib) and O(headroom_percent).
        Only with O(state=compacted).
      returned: when state=compacted
      type: int
      sample: 110
    limited_by:
      description: >-
        What set the target. V(working_set) the working set plus headroom; V(min_memory) O(min_memory_mib);
        V(current) the current size (the working set plus headroom is not smaller). Only with O(state=compacted).
      returned: when state=compacted
      type: str
      choices: [working_set, min_memory, current]
      sample: working_set
    size_source:
      description: >-
        Where the restored size came from. V(size_mib) the option; V(recorded) the compaction record; V(maximum) the
        domain's maximum memory. Only with O(state=restored).
      returned: when state=restored
      type: str
      choices: [size_mib, recorded, maximum]
      sample: recorded
    memory_max_mib:
      description: The domain's maximum memory in MiB. Only with O(state=restored).
      returned: when state=restored
      type: int
      sample: 4096
    target_mib:
      description: The target in MiB.
      type: int
      sample: 1210
    tolerance_mib:
      description: How far from the target still counts as reached, in MiB.
      type: int
      sample: 25
    at_target:
      description: Whether the domain was already at the target when the task started.
      type: bool
      sample: false
samples:
  description: The balloon size each time it changed while the task waited, from the balloon request on.
  returned: success
  type: list
  elements: dict
  contains:
    elapsed_s:
      description: Seconds since the balloon request.
      type: float
      sample: 0.25
    actual_mib:
      description: Balloon size in MiB.
      type: int
      sample: 1210
"""

from ansible_collections.strata.migration.plugins.module_utils._base import StrataModule
from ansible_collections.strata.migration.plugins.module_utils._compaction import (
    compaction_params,
    ensure_compacted,
    ensure_restored,
)
from ansible_collections.strata.migration.plugins.module_utils._inventory import lookup_domain
from ansible_collections.strata.migration.plugins.module_utils._libvirt import LibvirtError, StrataError


def main() -> None:
    module = StrataModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["compacted", "restored"], "default": "compacted"},
            "headroom_mib": {"type": "int", "default": 64},
            "headroom_percent": {"type": "float", "default": 10.0},
            "min_memory_mib": {"type": "int", "default": 128},
            "size_mib": {"type": "int"},
            "timeout_s": {"type": "int", "default": 60},
            "require_target": {"type": "bool", "default": False},
            "enable_stats": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    options = ("state", "headroom_mib", "headroom_percent", "min_memory_mib", "size_mib", "timeout_s",
               "require_target", "enable_stats")
    try:
        params = compaction_params(**{key: module.params[key] for key in options})
        dom = lookup_domain(module.client.conn, module.params["name"])
        ensure = ensure_compacted if params.state == "compacted" else ensure_restored
        changed, result = ensure(dom, params, check_mode=module.check_mode)
    except (StrataError, LibvirtError) as exc:
        module.fail_from(exc)
    outcome = result.to_dict()
    diff = {
        "before": {"actual_mib": result.before_mib, "recorded_mib": result.recorded_before_mib},
        "after": {"actual_mib": result.after_mib, "recorded_mib": result.recorded_mib},
    }
    module.exit_json(changed=changed, diff=diff, **outcome)


if __name__ == "__main__":
    main()
