# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The options of one live migration, declared once.

live_migrate's argument spec comes from here, and so does its documentation (the doc fragment
strata.migration.migration_options, which tests/ecosystem/migration_options.py writes and checks).
A workflow passes every option not marked per_move through its role's `*_migration` dict and
run_moves, which checks the dict against this declaration; options marked per_move the workflow
sets for each move. A new option is declared here and read by the engine: nothing else names it.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing as t

from ansible_collections.strata.migration.plugins.module_utils._convergence import DEFAULT_MAX_DOWNTIME_MS
from ansible_collections.strata.migration.plugins.module_utils._engine import (
    COPY_STORAGE_CHOICES,
    DEFAULT_MAX_TRANSFER_RATIO,
    DEFAULT_SHAKING_ITERATIONS,
    DEFAULT_STALL_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    STRATEGY_CHOICES,
)


@dataclasses.dataclass(frozen=True)
class MigrationOption:
    """One option: its Ansible type, its documentation (paragraphs with Ansible markup) and its default."""

    name: str
    type: str
    description: t.Tuple[str, ...]
    default: t.Any = None
    required: bool = False
    choices: t.Optional[t.Tuple[str, ...]] = None
    elements: t.Optional[str] = None
    # Set for each move by a workflow (its VM, its hosts, its files), never in a role's *_migration dict.
    per_move: bool = False

    def spec(self) -> t.Dict[str, t.Any]:
        """The option in an Ansible argument spec."""
        entry: t.Dict[str, t.Any] = {"type": self.type}
        if self.required:
            entry["required"] = True
        if self.default is not None:
            entry["default"] = self.default
        if self.choices is not None:
            entry["choices"] = list(self.choices)
        if self.elements is not None:
            entry["elements"] = self.elements
        return entry

    def documentation(self) -> t.Dict[str, t.Any]:
        """The option in a module's DOCUMENTATION."""
        entry: t.Dict[str, t.Any] = {"description": list(self.description)}
        entry.update(self.spec())
        return entry


MIGRATION_OPTIONS: t.Tuple[MigrationOption, ...] = (
    MigrationOption(
        "name", "str",
        description=(
            "Name of the domain to migrate. It runs on the source host, the one O(uri) connects to.",
        ),
        required=True, per_move=True,
    ),
    MigrationOption(
        "dest_uri", "str",
        description=(
            "libvirt connection URI of the destination host, in the same form as O(uri), opened with the same "
            "O(connect_timeout_s). A password in it is never shown in output.",
        ),
        required=True, per_move=True,
    ),
    MigrationOption(
        "peer_uri", "str",
        description=(
            "The destination's libvirt URI as the source host reaches it, for the peer-to-peer migration. Defaults to "
            "O(dest_uri); set it when the controller and the source host reach the destination differently (for "
            "example V(qemu+tls://hv2.internal/system) between hypervisors).",
        ),
        per_move=True,
    ),
    MigrationOption(
        "migrate_uri", "str",
        description=(
            "Address of the migration data channel, for example V(tcp://10.0.0.12) for a dedicated migration network. "
            "Default is the destination's C(migration_address) from its C(qemu.conf), or its hostname.",
        ),
        per_move=True,
    ),
    MigrationOption(
        "strategy", "str",
        description=(
            "V(auto) picks from the prediction; V(precopy) when it converges within O(max_downtime_ms), otherwise "
            "V(layered) (or V(postcopy) when that keeps the guest dependent on both hosts for less time, with "
            "O(allow_postcopy=true)). Without a measurement (O(measure_dirty_rate_s=0)) it is V(layered).",
            "V(precopy) is QEMU's pre-copy alone; shaking is reported but nothing is done about it, and the guards "
            "end a migration that does not converge.",
            "V(layered) is pre-copy with the hot layer as the description says.",
            "V(postcopy) switches to post-copy as soon as the first pass is done; it needs O(allow_postcopy=true).",
        ),
        default='auto', choices=STRATEGY_CHOICES,
    ),
    MigrationOption(
        "max_downtime_ms", "int",
        description=(
            "The pause of the guest aimed for at the switch-over, in milliseconds (QEMU's downtime limit). QEMU "
            "switches over once it estimates the rest can be sent within it, so the measured downtime "
            "(RV(stats.downtime_ms)) can be somewhat longer (up to 350 ms against 300 on the lab).",
        ),
        default=DEFAULT_MAX_DOWNTIME_MS,
    ),
    MigrationOption(
        "bandwidth_mibps", "int",
        description=(
            "Cap on the migration stream in MiB/s, also after a post-copy switch. V(0) leaves the domain's libvirt "
            "setting (unlimited by default).",
        ),
        default=0,
    ),
    MigrationOption(
        "switchover_bandwidth_mibps", "int",
        description=(
            "The bandwidth in MiB/s the link guarantees for the final phase. QEMU then judges whether the rest fits "
            "O(max_downtime_ms) at that bandwidth instead of at its own estimate of what it sent, which zero pages or "
            "a busy migration thread can make far lower, keeping a job going that could end.",
            "Give only what the link really delivers, not a cap above it; judged at more, the pause overruns its "
            "target.",
            "Passed where the source runs libvirt 11.1 and QEMU 8.2 or newer (libvirt's "
            "C(bandwidth.avail.switchover)); elsewhere it is left out and RV(strategy.features) says why. V(0) leaves "
            "QEMU's estimate.",
        ),
        default=0,
    ),
    MigrationOption(
        "postcopy_bandwidth_mibps", "int",
        description=(
            "Cap on the memory stream in MiB/s once the migration has switched to post-copy, when the guest runs on "
            "the destination and waits for each page it touches that is still on the source. V(0) keeps "
            "O(bandwidth_mibps) after the switch. Give post-copy more than pre-copy to shorten the time the guest "
            "depends on both hosts.",
        ),
        default=0,
    ),
    MigrationOption(
        "timeout_s", "int",
        description=(
            "Bound on the whole migration job in seconds; reaching it before post-copy aborts the job and the domain "
            "stays on its source.",
        ),
        default=DEFAULT_TIMEOUT_S, per_move=True,
    ),
    MigrationOption(
        "stall_timeout_s", "int",
        description=(
            "Abort the job when no memory was sent for this many seconds (a hung network or destination).",
        ),
        default=DEFAULT_STALL_TIMEOUT_S,
    ),
    MigrationOption(
        "max_transfer_ratio", "float",
        description=(
            "Abort the job when it has sent more than this many times the guest's memory.",
        ),
        default=DEFAULT_MAX_TRANSFER_RATIO,
    ),
    MigrationOption(
        "shaking_iterations", "int",
        description=(
            "How many passes what is left must fail to shrink (by 10%) before shaking is declared.",
        ),
        default=DEFAULT_SHAKING_ITERATIONS,
    ),
    MigrationOption(
        "compact", "bool",
        description=(
            "Balloon the guest down to its working set plus O(compact_headroom_mib) before migrating, and give the "
            "memory back on the destination afterwards.",
            "Default is on when the domain has a balloon that reports guest statistics, off otherwise. V(true) makes "
            "a domain without them fail; V(false) never compacts.",
        ),
    ),
    MigrationOption(
        "compact_headroom_mib", "int",
        description=(
            "Memory left free in the guest by compaction, beyond what it uses (MiB).",
        ),
        default=64,
    ),
    MigrationOption(
        "compact_timeout_s", "int",
        description=(
            "Bound on the balloon's move, before and after the migration, in seconds.",
        ),
        default=60,
    ),
    MigrationOption(
        "allow_postcopy", "bool",
        description=(
            "Allow switching to post-copy. While post-copy runs the guest executes on the destination and fetches "
            "missing pages from the source; if either host or the network between them fails then, the guest is lost. "
            "So it is off unless you choose it.",
        ),
        default=False,
    ),
    MigrationOption(
        "cap_vcpus", "bool",
        description=(
            "Without post-copy, cap the guest's vCPUs (libvirt's vCPU bandwidth, which needs the cgroup cpu "
            "controller on the source) from before the job to its end when pre-copy alone would not converge, so the "
            "hot set is slowed from the first page instead of from auto-converge's third pass; see C(vcpu_cap) in the "
            "result.",
            "Unset, the cap runs where the source is known to track guest writes exactly while a vCPU is stopped, "
            "that is for C(kvm) domains, and for C(qemu) (TCG-emulated) domains on QEMU 9.0 or later. Older QEMU "
            "under TCG can lose a guest write made while the migration syncs its dirty bitmap (fixed upstream in QEMU "
            "9.0), the likely cause of two guest kernel crashes in about 150 capped migrations of such guests; none "
            "in 243 on QEMU 10.0. On such a source the timeline says why the guest was not capped.",
            "The QEMU version is the one libvirt reports for the source host's binary; a guest started before an "
            "upgrade in place runs the old QEMU until it is restarted or migrated, so give it V(false).",
            "V(true) caps wherever the source can, V(false) never.",
        ),
    ),
    MigrationOption(
        "postcopy_recovery_timeout_s", "int",
        description=(
            "When the connection between the hosts breaks during post-copy, the guest waits on the destination for "
            "pages that only the source holds, and libvirt pauses the source. The module then keeps trying to resume "
            "the migration (libvirt's post-copy resume, every 5 s) for up to this many seconds; V(0) does not try.",
            "A later run of the task on a domain left in that state resumes the migration instead of starting one.",
        ),
        default=300,
    ),
    MigrationOption(
        "parallel_connections", "int",
        description=(
            "Number of parallel connections for the memory stream (QEMU multifd). V(1) is one stream. Parallel "
            "connections exclude XBZRLE.",
        ),
        default=1,
    ),
    MigrationOption(
        "compression", "list",
        description=(
            "Compression methods for the memory stream (V(xbzrle), V(mt), V(zlib), V(zstd); not all combinations are "
            "valid in QEMU). Default lets the engine choose (XBZRLE for a predicted hot layer without post-copy; once "
            "the live statistics show it saving less than a quarter of what its pages would cost whole, as with pages "
            "rewritten with fresh data, its cache shrinks to 16 MiB and C(verdict) in RV(stats.compression) says so); "
            "an empty list turns compression off.",
        ),
        elements="str",
    ),
    MigrationOption(
        "tls", "bool",
        description=(
            "Encrypt the migration data channel with TLS. Both hosts need libvirt's migration TLS certificates.",
        ),
        default=False,
    ),
    MigrationOption(
        "copy_storage", "str",
        description=(
            "Take local disks along (storage migration). libvirt first copies each disk into the destination pool "
            "whose folder holds the same path (it creates the volume there), keeps the copy in step with the guest's "
            "writes, then moves memory. libvirt creates each copy fully allocated before copying, so a copy never "
            "runs out of space once started; the pre-flight V(storage) check fails for a destination pool with less "
            "free space than the size of the disks copied into it, and for a local disk while this is V(none).",
            "V(none) copies nothing; every disk must be shared or already on the destination. V(all) copies the whole "
            "of each disk. V(incremental) copies only the top image of each disk, whose backing files must already be "
            "on the destination.",
            "O(bandwidth_mibps) caps the disk copy too; with several disks, it is shared among them, then handed back "
            "whole to memory once the disks are in sync.",
            "When the copy fails, the domain keeps running on its source, and the volumes the copy created on the "
            "destination are deleted. After success, the source's images of the copied disks are deleted (with "
            "O(persist=true), once the domain is verified running and defined on the destination only), unless "
            "O(keep_source_disks=true). Either way RV(removed_volumes) lists them.",
        ),
        default='none', choices=COPY_STORAGE_CHOICES,
    ),
    MigrationOption(
        "keep_source_disks", "bool",
        description=(
            "Keep the source's images of the disks a storage copy took along (libvirt's own behaviour). They are "
            "stale copies once the domain runs on the destination, and an image left at the same path makes a later "
            "move back to that host see it as already there.",
        ),
        default=False,
    ),
    MigrationOption(
        "migrate_disks", "list",
        description=(
            "Targets (such as V(vda)) of the local disks to copy with O(copy_storage). Default every local writable "
            "disk. A local disk left out fails the V(storage) check, since the guest would lose it; a disk the "
            "destination already reaches must not be named, since the copy would write over it.",
        ),
        elements="str",
    ),
    MigrationOption(
        "allow_unsafe", "bool",
        description=(
            "Let libvirt migrate disks it cannot prove safe (its C(--unsafe)). libvirt refuses a disk image in a "
            "folder both hosts see unless it knows the filesystem is shared (NFS, GFS2, OCFS2, CephFS, GlusterFS, "
            "GPFS), and a disk whose cache mode is not C(none) or C(directsync).",
            "Only for storage both hosts really share with a consistent cache, such as a cluster filesystem libvirt "
            "does not recognize. Otherwise the guest's disk is corrupted.",
        ),
        default=False,
    ),
    MigrationOption(
        "persist", "bool",
        description=(
            "Define the domain on the destination and undefine it on the source. With V(false) the domain is "
            "transient on the destination and its definition stays on the source (shut off).",
        ),
        default=True,
    ),
    MigrationOption(
        "preflight", "bool",
        description=(
            "Refuse to start when a pre-flight check fails (see M(strata.migration.preflight)). With V(false) failed "
            "checks are reported and the migration is tried anyway, except V(distinct_hosts) and V(domain_running).",
        ),
        default=True,
    ),
    MigrationOption(
        "measure_dirty_rate_s", "int",
        description=(
            "Seconds to measure the dirty rate before migrating (V(0) skips it, and the prediction with it).",
        ),
        default=1,
    ),
    MigrationOption(
        "dest_capacity_mib", "int",
        description=(
            "Memory of the destination that guests may use (MiB), for the pre-flight memory check.",
        ),
        per_move=True,
    ),
    MigrationOption(
        "reserve_mib", "int",
        description=(
            "Memory the pre-flight memory check keeps free on the destination (MiB).",
        ),
        default=0, per_move=True,
    ),
    MigrationOption(
        "qemu_overhead_mib", "int",
        description=(
            "QEMU's own share of a domain's resident memory on this host kind (MiB), to estimate the memory a "
            "migration sends from the resident memory; see M(strata.migration.preflight).",
        ),
    ),
    MigrationOption(
        "progress_file", "path",
        description=(
            "Keep a small JSON record of the migration's progress in this file, for a task that watches a migration "
            "started with C(async) and C(poll=0) (such as M(strata.migration.migration_wait)). The file is on the "
            "host the module runs on (the controller with C(delegate_to=localhost)); use an absolute path.",
            "The record: C(domain); C(phase), one of V(preparing) (measure, pre-flight checks, compaction), "
            "V(ready) (prepared, waiting for O(start_file) to say start), V(migrating) (pre-copy), V(postcopy) (after "
            "the switch), V(finishing) (the job completed: memory given back on the destination, placement check), "
            "V(verifying) (the job did not complete: placement check, memory given back on the source), V(done) or "
            "V(failed); C(percent) (share of guest memory not left to send, 0 to 100; 100 once "
            "done), C(remaining_mib), C(transferred_mib) and C(pass) (the job's memory iteration), each null when "
            "unknown; C(elapsed_s) since the task started; C(updated), the UTC time of the record in ISO 8601.",
            "It is rewritten atomically (a temporary file in the same directory, then a rename) at each phase change "
            "and at most once per second while the job runs. A task that fails for any reason leaves V(failed).",
            "The directory must exist and be writable, or the task fails before anything is done. Errors while "
            "writing later are ignored, since progress is advisory and never stops a migration.",
            "In check mode the file is not written.",
        ),
        per_move=True,
    ),
    MigrationOption(
        "start_file", "path",
        description=(
            "Prepare, then wait for this file to say start before anything changes. M(strata.migration.run_moves) "
            "sets it: it launches a move's job while other moves still copy, so that opening the connections and "
            "measuring the dirty rate cost the workflow no time, and starts it once the move's slot is free.",
            "The job connects to both hosts and measures the dirty rate (O(measure_dirty_rate_s)), then waits. Only "
            "after the start come the pre-flight checks, compaction and the migration; a rate older than 30 s by then "
            "is measured again.",
            "The file is a JSON record written by the controller: C(state) (V(wait), V(start) or V(cancel)), "
            "C(bandwidth_mibps) (the move's share of its hosts' bandwidth at its start, replacing "
            "O(bandwidth_mibps); null keeps it) and C(wait_until) (UNIX time). The controller refreshes the file's "
            "modification time while it runs. The task fails with nothing changed when the file says V(cancel), is "
            "missing, is not refreshed for 15 s, or still says V(wait) at C(wait_until).",
            "Ignored in check mode.",
        ),
        per_move=True,
    ),
)


def argument_spec() -> t.Dict[str, t.Dict[str, t.Any]]:
    """live_migrate's argument spec (besides the connection options every module of the collection has)."""
    return {option.name: option.spec() for option in MIGRATION_OPTIONS}


def workflow_option_names() -> t.FrozenSet[str]:
    """The options a workflow passes on from its *_migration dict."""
    return frozenset(option.name for option in MIGRATION_OPTIONS if not option.per_move)


def per_move_option_names() -> t.FrozenSet[str]:
    """The options a workflow sets for each move."""
    return frozenset(option.name for option in MIGRATION_OPTIONS if option.per_move)


def given(params: t.Mapping[str, t.Any], accepting: t.Callable[..., t.Any]) -> t.Dict[str, t.Any]:
    """The declared options in `params` that `accepting` takes as keyword arguments, by name."""
    names = set(inspect.signature(accepting).parameters)
    return {option.name: params[option.name] for option in MIGRATION_OPTIONS
            if option.name in names and option.name in params}
