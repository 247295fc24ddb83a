#!/usr/bin/python
# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: live_migrate
short_description: Live-migrate a running VM to another libvirt host with the layered engine
version_added: 0.1.0
description:
  - Moves a running domain from the host O(uri) connects to, to the host O(dest_uri) connects to, while it runs
    (peer-to-peer live migration, where the source libvirtd talks to the destination directly and the module watches
    the job from its connection to the source).
  - "Layer 0, measure: reads both hosts, runs the pre-flight checks of M(strata.migration.preflight) (the task
    refuses when one fails, unless O(preflight=false)), measures the domain's dirty rate for
    O(measure_dirty_rate_s) and predicts the migration with the convergence model; O(strategy=auto) picks the
    strategy from that prediction."
  - "Layer 1, compaction: with O(compact), the guest is ballooned down to its working set first (as
    M(strata.migration.memory_compact) does) and its memory is given back on the destination afterwards, or on the
    source when the migration fails."
  - "Layer 2, cold pre-copy: QEMU's pre-copy rounds within the downtime target."
  - "Layer 3, the hot layer: pages rewritten again and again ('shaking') are detected from the live job
    statistics: what is left stops shrinking over O(shaking_iterations) passes, the guest dirties as fast as QEMU
    sends in two passes, or the model predicted no convergence once the first pass is done. With
    O(allow_postcopy=true) the job then switches to post-copy, so each hot page crosses once; when the model
    predicted a layered course it switches as soon as the predicted cold layer has crossed (at once when all of the
    guest is hot) rather than waiting for the first pass to end. Without post-copy, what was enabled at the start
    for hot pages does the work (auto-converge throttling sized from the dirty rate: 99% at once for a guest
    dirtying half the link or more; XBZRLE delta compression with a cache of twice the measured hot set for a
    predicted hot layer, its cache shrunk to 16 MiB when the live statistics show it saves less than a quarter) and
    the downtime target, which starts at a quarter of O(max_downtime_ms) for a predicted hot layer, rises one step
    per pass (half, three quarters, all of it)."
  - "Guards: more than O(max_transfer_ratio) times the guest's memory sent, O(timeout_s) reached, or nothing sent
    for O(stall_timeout_s) aborts the job; the domain keeps running on its source, and the failure says why and
    which option to change. After post-copy started nothing can abort the job (the guest already runs on the
    destination); the module then waits up to 120 s past O(timeout_s)."
  - "After success: the domain runs on the destination, is defined there and no longer on the source (with
    O(persist=true)); the module checks each of these and fails naming what does not hold."
  - When the domain already runs on the destination and not on the source, nothing is done (C(changed=false)).
  - In check mode, runs layer 0 and the compaction plan only, and returns the strategy and prediction.
author:
  - strata.migration developers (@strata-migration)
extends_documentation_fragment:
  - strata.migration.connection
  - strata.migration.migration_options
attributes:
  check_mode:
    description: Measures, checks and predicts; migrates nothing and changes no balloon.
    support: full
  diff_mode:
    description: Returns no diff; RV(placement) shows where the domain ended.
    support: none
notes:
  - The hosts need libvirt's peer-to-peer migration between them (the source libvirtd opens O(peer_uri)).
  - Disks must be shared between the hosts; the pre-flight V(storage) check refuses local disks.
seealso:
  - module: strata.migration.preflight
  - module: strata.migration.memory_compact
"""

EXAMPLES = r"""
- name: Move web1 from hv1 to hv2, letting the engine pick the strategy
  strata.migration.live_migrate:
    uri: qemu+ssh://root@hv1.example.com/system
    dest_uri: qemu+ssh://root@hv2.example.com/system
    peer_uri: qemu+tls://hv2.example.com/system
    name: web1
    bandwidth_mibps: 1000
    timeout_s: 300
  delegate_to: localhost
  register: moved

- name: A write-heavy database, allowing post-copy to finish it
  strata.migration.live_migrate:
    uri: qemu+ssh://root@hv1.example.com/system
    dest_uri: qemu+ssh://root@hv3.example.com/system
    name: db1
    allow_postcopy: true
    max_downtime_ms: 200
  delegate_to: localhost

- name: Show what would happen
  strata.migration.live_migrate:
    uri: qemu+ssh://root@hv1.example.com/system
    dest_uri: qemu+ssh://root@hv2.example.com/system
    name: web1
  check_mode: true
  delegate_to: localhost
  register: plan

- name: Print the predicted strategy
  ansible.builtin.debug:
    msg: "{{ plan.strategy.name }}: {{ plan.strategy.reason }}"
"""

RETURN = r"""
domain:
  description: Name of the domain.
  returned: always
  type: str
  sample: web1
already_migrated:
  description: Whether the domain already ran on the destination and not on the source, so nothing was done.
  returned: always
  type: bool
  sample: false
source:
  description: The source host (hostname, URI without credentials, libvirt and QEMU versions, memory).
  returned: success
  type: dict
  sample: {"hostname": "hv1", "uri": "qemu+tcp://127.0.0.11/system"}
destination:
  description: The destination host, in the form of RV(source).
  returned: success
  type: dict
  sample: {"hostname": "hv2", "uri": "qemu+tcp://127.0.0.12/system"}
strategy:
  description: The strategy that ran (or would run in check mode), why, and what was asked of libvirt.
  returned: unless already migrated
  type: dict
  contains:
    name:
      description: V(precopy), V(layered) or V(postcopy).
      type: str
      sample: layered
    reason:
      description: Why this strategy, from the prediction or the options.
      type: str
    hot_layer:
      description:
        - What happens once shaking is detected. V(postcopy) switches to post-copy. V(throttle) relies on
          auto-converge, plus, for a predicted hot layer (strategy V(layered)), XBZRLE and the downtime ramp.
          V(none) does nothing (strategy V(precopy) requested).
      type: str
      choices: [postcopy, throttle, none]
    flags:
      description: libvirt migration flags set.
      type: list
      elements: str
      sample: [live, peer2peer, persist_dest, undefine_source, compressed, auto_converge]
    params:
      description: libvirt migration parameters set.
      type: dict
    downtime_steps_ms:
      description: The downtime targets, in order.
      type: list
      elements: int
      sample: [75, 150, 225, 300]
    xbzrle_cache_mib:
      description: Size of the XBZRLE cache, or null without XBZRLE.
      type: int
    switch_after_first_pass:
      description: Whether post-copy starts once the first pass is done whatever the statistics show.
      type: bool
    switch_after_mib:
      description:
        - With post-copy allowed and a predicted V(layered) course, post-copy starts once this much memory has crossed
          (the model's cold layer), or at the end of the first pass if that comes first, so each hot page crosses
          once. V(0) switches as soon as the first pass runs.
        - Null when the shaking detector decides the switch.
      type: float
    copied_disks:
      description: Targets of the disks the storage copy takes along (O(copy_storage)); empty without one.
      type: list
      elements: str
    cap_vcpus:
      description:
        - Whether the guest's vCPUs are capped before the job where the source can (O(cap_vcpus) not V(false) and,
          unset, a source known safe for it; pre-copy alone predicted not to converge, no post-copy, no storage
          copy); RV(vcpu_cap) says what was done.
      type: bool
    features:
      description:
        - The newer migration features, by name, decided from the libvirt and QEMU versions both hosts report (libvirt
          has no call that lists QEMU's migration capabilities, and a parameter an older libvirt does not know fails
          the migration). Each has C(available) (bool), C(why) (the versions it needs, or what a host lacks) and
          C(used) (this migration uses it).
        - V(postcopy_preempt) (libvirt 10.0 and QEMU 8.0 on both hosts) sends the pages the destination waits for
          on a channel of their own; libvirt turns it on with post-copy, so it is used with post-copy where offered.
          V(switchover_bandwidth) (libvirt 11.1 and QEMU 8.2 on the source) makes QEMU judge the switchover at
          O(switchover_bandwidth_mibps), used when that is set and offered. V(multifd_compression) (libvirt 9.4 and
          QEMU 5.0 on both hosts) compresses parallel connections with zstd or zlib, used when O(compression) names
          one with O(parallel_connections) above 1; libvirt refuses it where it is not offered.
        - Empty when resuming an interrupted post-copy migration.
      type: dict
prediction:
  description:
    - The convergence model's prediction for the strategy that ran, with its inputs, to set beside RV(stats).
    - Without post-copy, a guest that pre-copy alone cannot move is predicted as pre-copy under the auto-converge
      throttle the engine sized from the dirty rate (C(strategy) V(layered), C(throttle_percents) the throttle in
      each live round; QEMU throttles from the third round). Where the source caps the vCPUs (RV(vcpu_cap)), the
      prediction is redone once the cap is sized, as pre-copy at the dirty rate measured under the cap from the
      first page.
    - With a storage copy, C(disk_copy_mib) and C(disk_copy_s) are the disks' data and its copy time, counted in
      C(transferred_mib) and C(total_s).
    - Null when the dirty rate was not measured.
  returned: unless already migrated
  type: dict
  sample: {"strategy": "precopy", "converges": true, "total_s": 3.1, "transferred_mib": 182.0, "downtime_ms": 40}
timeline:
  description:
    - What happened, in order, each entry with C(t_s) (seconds since the task started) and C(event).
    - "Events: V(layer) (C(layer) 0 measure, 1 compaction, 2 pre-copy start with flags and parameters, 3 post-copy
      switch), V(downtime) (a new target), V(iteration) (a pass began: C(iteration), C(remaining_mib),
      C(processed_mib), C(dirty_rate_mibps), C(throughput_mibps), C(throttle_percent)), V(layer) with C(layer) 3
      and C(action) V(xbzrle) (the verdict on XBZRLE: C(paying), C(detail)), V(layer) with C(layer) 3 and
      C(action) V(vcpu_cap) (the cap set before the job, or why none), V(shaking) (C(rule),
      C(detail)), V(guard) and V(abort), V(complete) or V(failed), V(postcopy_recovery) (an attempt to resume a
      broken post-copy), V(resume) (a source left paused by the failure was resumed), V(restore), V(preflight)."
    - "A storage copy adds V(layer) events with C(layer) V(storage) (C(action) V(plan), then V(disks in sync)),
      V(bandwidth) (the whole cap handed back to memory) and V(cleanup) (volumes removed after a failed copy)."
  returned: always
  type: list
  elements: dict
  sample: [{"t_s": 1.2, "event": "iteration", "iteration": 2, "remaining_mib": 48.0}]
shaking:
  description: Each detection of shaking (C(iteration), C(rule), C(detail)).
  returned: when a migration ran
  type: list
  elements: dict
stats:
  description:
    - Figures of the finished job, from libvirt's completed job statistics where it kept them, else from the
      monitor's last reading. libvirt 9.0 with QEMU 7.2 kept every figure (downtime and bytes included) in every
      post-copy run measured; C(sources) says where each came from. A figure neither has is null.
  returned: when a migration ran
  type: dict
  contains:
    sources:
      description: For each figure, V(completed_job) or V(last_sample).
      type: dict
    total_ms:
      description: Duration of the job.
      type: int
    downtime_ms:
      description: How long the guest was paused.
      type: int
    setup_ms:
      description: Time before the first page was sent.
      type: int
    transferred_mib:
      description: Memory sent (after compression).
      type: float
    memory_total_mib:
      description: The guest's memory.
      type: float
    memory_normal_mib:
      description: Memory sent as whole pages.
      type: float
    zero_pages:
      description: Pages sent as all-zero (a few bytes each).
      type: int
    iterations:
      description: QEMU's pass count (dirty-bitmap syncs).
      type: int
    postcopy_requests:
      description: Pages the destination requested during post-copy.
      type: int
    throughput_mibps:
      description: QEMU's measured throughput.
      type: float
    dirty_rate_mibps:
      description: Dirty rate during the last pass.
      type: float
    auto_converge_throttle_percent:
      description: How much auto-converge slowed the guest's vCPUs at the end, or null.
      type: int
    throttle:
      description: How auto-converge slowed the guest over the job, from the monitor's readings, or null when it
        never did. C(max_percent) is the highest throttle, C(throttled_s) how long the guest ran throttled.
      type: dict
    disk_total_mib:
      description: Size of the disks the storage copy took along, or null without one.
      type: float
    disk_transferred_mib:
      description: What the storage copy sent, or null without one.
      type: float
    compression:
      description:
        - XBZRLE figures (C(cache_mib), C(compressed_mib), C(compressed_pages), C(cache_misses),
          C(overflow_pages)) where libvirt kept them, or null.
        - C(verdict) is the engine's judgement once XBZRLE had tried 2048 cached pages; C(paying), C(saved_percent),
          C(tried_pages), C(overflow_pages), C(cache_misses), and C(cache_shrunk_to_mib) when it did not pay.
      type: dict
compaction:
  description: The balloon compaction before the migration, as M(strata.migration.memory_compact) returns it; null
    when it did not run.
  returned: unless already migrated
  type: dict
restore:
  description: Giving the memory back after compaction (on the destination, or on the source after a failure);
    null when it did not run.
  returned: when a migration ran
  type: dict
vcpu_cap:
  description:
    - How much and for how long the guest was slowed by the vCPU cap (O(cap_vcpus)), set before the job when
      pre-copy alone would not converge and post-copy is not allowed (the source needs libvirt's vCPU bandwidth, a
      cgroup cpu controller); null when no cap was set.
    - C(percent) of a CPU each vCPU got (C(quota_us) per C(period_us), a period of the cap's own, two thirds of
      O(max_downtime_ms) and at most 100 ms; C(original_period_us) and C(original_quota_us) what it had, -1 for
      no limit), C(probe_percent) and C(probe_dirty_rate_mibps) the measurement under the first cap that sized
      it, C(sized) how (V(on_target), V(in_proportion), or V(unresponsive) when the rate did not fall and the
      cap went to the smallest quota), C(expected_dirty_rate_mibps), C(held_s) from the cap to the end of the
      job, C(lifted_on) (V(destination), which started from the domain's XML of before the cap, V(source) after
      a failure, or null when the cap is still in force because lifting it failed or libvirt still held the
      job; the next run lifts it first) and, after success, C(destination_quota_us), the quota the domain runs
      with there.
  returned: when a migration ran
  type: dict
  sample: {"percent": 1.0, "quota_us": 1000, "period_us": 100000, "original_quota_us": -1,
           "original_period_us": 100000, "probe_percent": 12.0, "probe_dirty_rate_mibps": 128.0,
           "sized": "unresponsive", "expected_dirty_rate_mibps": 10.7, "held_s": 7.4, "lifted_on": "destination",
           "destination_quota_us": -1}
preflight:
  description: The pre-flight findings (C(enforced), C(passed), C(findings), C(failed_checks), C(warned_checks)).
  returned: always
  type: dict
placement:
  description: Where the domain is on each host afterwards (C(source), C(destination), each with C(defined),
    C(state), C(reason), C(persistent)).
  returned: when a migration ran or it was already migrated
  type: dict
aborted_by:
  description: The guard that aborted the job (V(timeout), V(transfer), V(stall)), or null.
  returned: on failure
  type: str
removed_volumes:
  description:
    - Disk images the module deleted, each with C(host) (V(source) or V(destination)) and C(path). After a failed
      storage copy, those the copy had created on the destination; after a successful one, the source's stale
      images (see O(keep_source_disks)).
  returned: always
  type: list
  elements: dict
  sample: [{"host": "source", "path": "/var/lib/libvirt/images/web1.qcow2"}]
running_on:
  description: Where the domain runs after a failure, in words.
  returned: on failure
  type: str
  sample: is running on the source
"""

from ansible_collections.strata.migration.plugins.module_utils._base import StrataModule
from ansible_collections.strata.migration.plugins.module_utils._engine import engine_options
from ansible_collections.strata.migration.plugins.module_utils._libvirt import (
    LibvirtClient,
    LibvirtError,
    StrataError,
)
from ansible_collections.strata.migration.plugins.module_utils._migrate import (
    check_progress_file,
    compaction_settings,
    run_live_migration,
)
from ansible_collections.strata.migration.plugins.module_utils._migration_options import argument_spec, given
from ansible_collections.strata.migration.plugins.module_utils._preflight import preflight_options

ARGUMENT_SPEC = argument_spec()


def main() -> None:
    module = StrataModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    result = {"domain": params["name"], "timeline": []}
    try:
        # Each part takes the declared options its signature names (_migration_options).
        options = engine_options(**given(params, engine_options))
        compaction = compaction_settings(**given(params, compaction_settings))
        checks = preflight_options(compaction_restore=params["compact"] is not False,
                                   **given(params, preflight_options))
        progress_file = check_progress_file(params["progress_file"]) if params["progress_file"] else None
        with LibvirtClient(params["dest_uri"], params["connect_timeout_s"]) as destination:
            result = run_live_migration(
                module.client,
                destination,
                params["name"],
                options,
                checks,
                enforce_preflight=params["preflight"],
                compaction=compaction,
                peer_uri=params["peer_uri"],
                postcopy_recovery_timeout_s=params["postcopy_recovery_timeout_s"],
                progress_file=progress_file,
                check_mode=module.check_mode,
                start_file=params["start_file"],
            )
    except (StrataError, LibvirtError) as exc:
        module.fail_from(exc, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
