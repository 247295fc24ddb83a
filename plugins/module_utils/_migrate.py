# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""One live migration end to end: measure, check, compact, migrate, verify, restore.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

`run_live_migration` drives the steps through two libvirt connections; the
decisions are made by the pure code in _engine, _convergence, _preflight and
_compaction. Whatever happens, the domain ends running on exactly one host:
on the destination after success, on its source after any failure before
post-copy (a domain libvirt left paused by the failed migration is resumed,
and compacted memory is given back there).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
import typing as t

from ansible_collections.strata.migration.plugins.module_utils._compaction import (
    compaction_params,
    ensure_compacted,
    ensure_restored,
    parse_compaction_record,
)
from ansible_collections.strata.migration.plugins.module_utils._convergence import (
    AUTO_CONVERGE_MAX_PERCENT,
    MigrationInputs,
    Prediction,
    auto_converge_percents,
    choose_strategy,
    predict_capped,
    predict_throttled,
    with_storage_copy,
)
from ansible_collections.strata.migration.plugins.module_utils._engine import (
    ABORT_GRACE_S,
    JOB_NONE,
    POLL_S,
    POSTCOPY_GRACE_S,
    EngineOptions,
    MigrationError,
    MigrationPlan,
    MonitorOutcome,
    ProgressReporter,
    Timeline,
    completed_figures,
    monitor,
    parse_job_stats,
    plan_migration,
    summarize_stats,
)
from ansible_collections.strata.migration.plugins.module_utils._features import HostVersions, pair_features
from ansible_collections.strata.migration.plugins.module_utils._inventory import (
    DIRTY_RATE_DEFAULT_GRACE_S,
    DomainFacts,
    domain_state_name,
    measure_dirty_rate,
)
from ansible_collections.strata.migration.plugins.module_utils._libvirt import (
    LibvirtClient,
    LibvirtError,
    StrataError,
    connect_all,
    describe_libvirt_error,
    libvirt_error_code,
    find_domain,
    redact_uri,
)
from ansible_collections.strata.migration.plugins.module_utils._progress import write_json_file
from ansible_collections.strata.migration.plugins.module_utils._start_signal import wait_for_start
from ansible_collections.strata.migration.plugins.module_utils._throttle import (
    DEFAULT_PERIOD_US,
    NO_QUOTA,
    SIZED_UNRESPONSIVE,
    VcpuBandwidth,
    apply_cap,
    cap_by_default,
    cap_period_us,
    capped_rate_mibps,
    corrected_cap_percent,
    first_cap_percent,
    lift_cap,
    min_cap_percent,
    parse_record,
    quota_us,
    read_bandwidth,
)
from ansible_collections.strata.migration.plugins.module_utils._preflight import (
    PreflightData,
    PreflightOptions,
    PreflightReport,
    disks_to_copy,
    evaluate,
    gather_preflight,
    memory_to_send,
    prediction_inputs,
)

# Checks that hold even with preflight=false: without them libvirt would be asked something absurd.
ALWAYS_ENFORCED_CHECKS = ("distinct_hosts", "domain_running")
JOB_STATS_COMPLETED = 1
EVENT_ID_JOB_COMPLETED = 21  # VIR_DOMAIN_EVENT_ID_JOB_COMPLETED
EVENT_ID_LIFECYCLE = 0  # VIR_DOMAIN_EVENT_ID_LIFECYCLE
# (event, detail) of the source pausing for a migration's final switch, and of it running again.
EVENT_SUSPENDED, EVENT_SUSPENDED_MIGRATED = 3, 1
EVENT_RESUMED = 4
MIGRATE_POSTCOPY_RESUME = 524288
ABORT_JOB_POSTCOPY = 1
DOMAIN_PAUSED = 3
PAUSED_POSTCOPY_FAILED = 13
POSTCOPY_RECOVERY_RETRY_S = 5.0
DEFAULT_POSTCOPY_RECOVERY_TIMEOUT_S = 300
# libvirt sends the job-completed event as the job ends; the migration call may return first.
COMPLETED_EVENT_WAIT_S = 2.0
# A dirty rate measured before a start_file's start plans the migration while it is at most this old.
DIRTY_RATE_FRESH_S = 30.0
DOMAIN_RUNNING = 1
PAUSED_MIGRATION = 2
ERR_MIGRATE_UNSAFE = 81
# virDomainXMLFlags: the XML the destination starts from (secure: with any passwords the guest uses).
XML_SECURE_MIGRATABLE = 1 | 8
ERR_NO_STORAGE_VOL = 50
LIST_POOLS_ACTIVE = 2
UNSAFE_HINT = (
    "libvirt cannot tell that every disk is safe to use from both hosts (a filesystem it does not know is shared, "
    "or a cache mode other than none or directsync): copy local disks with copy_storage=all (and name in "
    "migrate_disks a disk whose path holds a stale image on the destination), or set allow_unsafe=true only when "
    "the storage really is shared by both hosts"
)
# libvirt's words when the source's connection to the destination closes under a peer-to-peer migration.
PEER_CONNECTION_LOST = ("End of file while reading data", "Cannot recv data")
PEER_CONNECTION_NOTE = (
    "the source's libvirtd lost its connection to the destination's; libvirt 9 sometimes reports that in place "
    "of the destination's own error (seen when a storage copy could not create its volume), so the "
    "destination's libvirtd log may name the cause"
)
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class CompactionSettings:
    """compact: True (required), False (off) or None (on when the balloon reports guest statistics)."""

    compact: t.Optional[bool] = None
    headroom_mib: int = 64
    timeout_s: int = 60


def compaction_settings(compact: t.Optional[bool] = None, compact_headroom_mib: int = 64,
                        compact_timeout_s: int = 60) -> CompactionSettings:
    """The compaction around a migration, from live_migrate's option names."""
    return CompactionSettings(compact=compact, headroom_mib=compact_headroom_mib, timeout_s=compact_timeout_s)


class LibvirtMigrationJob:
    """A peer-to-peer migrateToURI3 call running in a thread, watched through the source domain.

    The call runs on a connection of its own (`migrating_dom`): on libvirt 9.0
    a second call on the connection that is busy migrating (domain state, say)
    can block for as long as the migration, and the monitor must stay free to
    abort. libvirt's job-completed event, caught on the watching connection,
    carries the final statistics, the only ones left after post-copy.
    """

    def __init__(self, migrating_dom: t.Any, watched_dom: t.Any, peer_uri: str) -> None:
        self.migrating_dom = migrating_dom
        self.dom = watched_dom
        self.peer_uri = peer_uri
        self._thread: t.Optional[threading.Thread] = None
        self._error: t.Optional[str] = None
        self.error_code: t.Optional[int] = None
        self._completed = threading.Event()
        self._completed_stats: t.Optional[t.Dict[str, t.Any]] = None
        self._callback_id: t.Optional[int] = None
        self._lifecycle_id: t.Optional[int] = None
        self._switching = threading.Event()
        self._on_switch: t.Optional[t.Callable[[], None]] = None

    def _on_job_completed(self, _conn: t.Any, _dom: t.Any, stats: t.Mapping[str, t.Any], _opaque: t.Any) -> None:
        self._completed_stats = dict(stats)
        self._completed.set()

    def _on_lifecycle(self, _conn: t.Any, _dom: t.Any, event: int, detail: int, _opaque: t.Any) -> None:
        if event == EVENT_SUSPENDED and detail == EVENT_SUSPENDED_MIGRATED:
            self._switching.set()
            if self._on_switch is not None:
                self._on_switch()
        elif event == EVENT_RESUMED:
            self._switching.clear()

    def start(self, flags: int, params: t.Mapping[str, t.Any],
              on_switch: t.Optional[t.Callable[[], None]] = None) -> None:
        self._on_switch = on_switch
        try:
            self._callback_id = self.dom.connect().domainEventRegisterAny(
                self.dom, EVENT_ID_JOB_COMPLETED, self._on_job_completed, None
            )
        except LibvirtError:
            self._callback_id = None  # the statistics then come from the destination or the last sample
        try:
            self._lifecycle_id = self.dom.connect().domainEventRegisterAny(
                self.dom, EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
        except LibvirtError:
            self._lifecycle_id = None  # the switch then goes untold: the move keeps its slot until it ends

        def migrate() -> None:
            try:
                self.migrating_dom.migrateToURI3(self.peer_uri, dict(params), flags)
            except Exception as exc:  # handed to the monitor; a bad parameter type raises TypeError
                self.error_code = libvirt_error_code(exc) if isinstance(exc, LibvirtError) else None
                self._error = describe_libvirt_error(exc)

        # A daemon thread: should libvirt never return, the module still exits at its bounds.
        self._thread = threading.Thread(target=migrate, name="strata-migrate", daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float) -> bool:
        if self._thread is None:
            raise RuntimeError("wait() before start()")
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def error(self) -> t.Optional[str]:
        return self._error

    def stats(self) -> t.Optional[t.Mapping[str, t.Any]]:
        try:
            return self.dom.jobStats(0)
        except LibvirtError:
            return None

    def set_max_downtime(self, downtime_ms: int) -> None:
        self.dom.migrateSetMaxDowntime(downtime_ms, 0)

    def start_postcopy(self) -> None:
        self.dom.migrateStartPostCopy(0)

    def set_max_speed(self, bandwidth_mibps: int) -> None:
        self.dom.migrateSetMaxSpeed(bandwidth_mibps, 0)

    def set_compression_cache(self, cache_mib: int) -> None:
        self.dom.migrateSetCompressionCache(cache_mib * MIB, 0)

    def abort(self) -> None:
        self.dom.abortJob()

    def switching_over(self) -> bool:
        return self._switching.is_set()

    def abort_postcopy(self) -> None:
        """Pause a post-copy migration (or its resume): it can be resumed again later."""
        self.dom.abortJobFlags(ABORT_JOB_POSTCOPY)

    def completed_stats(self, wait_s: float) -> t.Optional[t.Dict[str, t.Any]]:
        """The job-completed event's statistics, waiting up to wait_s for the event."""
        if self._callback_id is None:
            return None
        self._completed.wait(wait_s)
        return self._completed_stats

    def close(self) -> None:
        for callback_id in (self._callback_id, self._lifecycle_id):
            if callback_id is not None:
                try:
                    self.dom.connect().domainEventDeregisterAny(callback_id)
                except LibvirtError:
                    pass
        self._callback_id = self._lifecycle_id = None


# ---- the progress file --------------------------------------------------------


def check_progress_file(path: str) -> str:
    """The progress file's absolute path, once its directory is known to exist and be writable."""
    full = os.path.abspath(path)
    directory = os.path.dirname(full)
    if os.path.isdir(full):
        raise MigrationError("progress_file '%s' is a directory; give the path of a file in it" % path,
                             option="progress_file")
    if not os.path.isdir(directory):
        raise MigrationError(
            "progress_file '%s': its directory %s does not exist; create it first or choose another path"
            % (path, directory),
            option="progress_file",
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise MigrationError(
            "progress_file '%s': its directory %s is not writable by the user the module runs as; choose another "
            "path" % (path, directory),
            option="progress_file",
        )
    return full


# ---- prediction ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Predicted:
    """The model's view of the run: the prediction of what will run and its inputs (None without a
    measured dirty rate), whether plain pre-copy converges (for the shaking detector's model rule),
    and the auto-converge throttle (initial, increment) the model asks for (None: the defaults)."""

    prediction: t.Optional[Prediction] = None
    inputs: t.Optional[t.Dict[str, t.Any]] = None
    precopy_converges: t.Optional[bool] = None
    auto_converge: t.Optional[t.Tuple[int, int]] = None
    model_inputs: t.Optional[MigrationInputs] = None


def _prediction_for(
    domain: DomainFacts,
    memory_mib: float,
    dirty_rate_mibps: t.Optional[float],
    options: EngineOptions,
) -> _Predicted:
    """The model's prediction for the strategy that will run (see _Predicted)."""
    if dirty_rate_mibps is None:
        return _Predicted()
    inputs = prediction_inputs(domain.memory_max_mib, memory_mib, dirty_rate_mibps, options.bandwidth_mibps,
                               options.max_downtime_ms)
    chosen, candidates = choose_strategy(inputs, options.allow_postcopy)
    precopy = candidates[0]
    auto_converge = None
    if options.strategy in ("auto", "layered") and not options.allow_postcopy and not precopy.converges:
        # The hot layer without post-copy is pre-copy under a throttle sized from the dirty rate.
        auto_converge = auto_converge_percents(inputs)
        if auto_converge is not None:
            chosen = predict_throttled(inputs, *auto_converge)
    elif options.strategy != "auto":
        wanted = "precopy" if options.strategy == "layered" and not options.allow_postcopy else options.strategy
        chosen = next(c for c in candidates if c.strategy == wanted)
    described = inputs.to_dict()
    described["bandwidth_assumed"] = not options.bandwidth_mibps
    return _Predicted(chosen, described, precopy.converges, auto_converge, inputs)


def _storage_copy_mib(disks: t.Sequence[t.Any], copied: t.Sequence[str], field: str = "allocation_bytes") -> float:
    return sum((getattr(d, field) or 0) for d in disks if d.target in copied) / MIB


def _prediction_dict(prediction: t.Optional[Prediction], inputs: t.Optional[t.Dict[str, t.Any]]) -> t.Optional[t.Dict[str, t.Any]]:
    if prediction is None:
        return None
    result = prediction.to_dict()
    result["inputs"] = inputs
    return result


# ---- where the domain is ----------------------------------------------------


def placement(conn: t.Any, name: str) -> t.Dict[str, t.Any]:
    """{defined, state, reason, persistent} of a domain on one host (state None when absent)."""
    dom = find_domain(conn, name)
    if dom is None:
        return {"defined": False, "state": None, "reason": None, "persistent": False}
    state, reason = dom.state()
    return {
        "defined": True,
        "state": domain_state_name(state),
        "reason": reason,
        "persistent": bool(dom.isPersistent()),
    }


def _stats_timestamp(dom: t.Any) -> t.Optional[int]:
    """The timestamp of the guest's last balloon statistics report, None without one (or without the domain)."""
    if dom is None:
        return None
    try:
        return dom.memoryStats().get("last_update")
    except LibvirtError:
        return None


def _active(where: t.Mapping[str, t.Any]) -> bool:
    return where["state"] not in (None, "shutoff", "crashed")


# ---- the steps --------------------------------------------------------------


class _Run:
    def __init__(
        self,
        source: LibvirtClient,
        destination: LibvirtClient,
        name: str,
        options: EngineOptions,
        preflight_options: PreflightOptions,
        enforce_preflight: bool,
        compaction: CompactionSettings,
        peer_uri: t.Optional[str],
        postcopy_recovery_timeout_s: int,
        clock: t.Callable[[], float],
        sleep: t.Callable[[float], None],
        progress_sink: t.Optional[t.Callable[[t.Dict[str, t.Any]], t.Any]] = None,
        start_file: t.Optional[str] = None,
    ) -> None:
        self.postcopy_recovery_timeout_s = postcopy_recovery_timeout_s
        self.start_file = start_file
        # Measured before the start (prepare_and_wait): the rate and when, and the balloon report seen before it.
        self.early_dirty_rate: t.Optional[t.Tuple[float, float]] = None
        self.stats_seen: t.Optional[int] = None
        self.source = source
        self.destination = destination
        self.name = name
        self.options = options
        self.preflight_options = preflight_options
        self.enforce_preflight = enforce_preflight
        self.compaction = compaction
        self.peer_uri = peer_uri or destination.uri
        self.clock = clock
        self.sleep = sleep
        self.timeline = Timeline(clock)
        self.event = self.timeline.add
        self.progress = ProgressReporter(name, progress_sink, self.timeline)
        self.migration_client = source.another()
        # The vCPU cap in force, while it is (see cap_vcpus).
        self.cap: t.Optional[t.Dict[str, t.Any]] = None
        # The bandwidth a cap replaced: this run's (see cap_vcpus) or an earlier run's, from its record.
        self.replaced_bandwidth: t.Optional[VcpuBandwidth] = None
        self.result: t.Dict[str, t.Any] = {
            "changed": False,
            "domain": name,
            "already_migrated": False,
            "strategy": None,
            "timeline": self.timeline.events,
            "stats": None,
            "compaction": None,
            "restore": None,
            "prediction": None,
            "preflight": None,
            "placement": None,
            "removed_volumes": [],
            "vcpu_cap": None,
        }

    def fail(self, msg: str, **details: t.Any) -> MigrationError:
        self.result.update(details)
        return MigrationError(msg, **self.result)

    # Layer 0 -----------------------------------------------------------------

    def measure(self, dirty_rate_mibps: t.Optional[float] = None) -> t.Tuple[PreflightData, PreflightReport]:
        source_conn = self.source.conn
        dest_conn = self.destination.conn
        data = gather_preflight(
            source_conn, dest_conn, self.preflight_options, self.source.uri, self.destination.uri,
            sleep=self.sleep, clock=self.clock, dirty_rate_mibps=dirty_rate_mibps,
        )
        report = evaluate(data, self.preflight_options)
        self.result["source"] = report.source
        self.result["destination"] = report.destination
        self.result["preflight"] = {
            "enforced": self.enforce_preflight,
            "passed": report.passed,
            "findings": [f.to_dict() for f in report.findings],
            "failed_checks": report.failed_checks,
            "warned_checks": report.warned_checks,
        }
        return data, report

    def refuse_on_findings(self, report: PreflightReport) -> None:
        failed = report.failed_checks
        blocking = failed if self.enforce_preflight else [c for c in failed if c in ALWAYS_ENFORCED_CHECKS]
        if blocking:
            raise self.fail(report.failure_message() + "; nothing was changed")
        if failed:
            self.event("preflight", failed_checks=failed, note="preflight=false: failed checks do not stop the migration")

    def wants_compaction(self, domain: DomainFacts) -> bool:
        if self.compaction.compact is not None:
            return self.compaction.compact
        return domain.balloon.has_device and bool(domain.balloon.stats_period_s)

    # The run ---------------------------------------------------------------------

    def run(self, check_mode: bool) -> t.Dict[str, t.Any]:
        self.progress("preparing")
        connect_all([self.source, self.destination])
        # The job runs on a connection of its own (see migrate); it opens while the dirty rate is measured.
        self.migration_client.connect_in_background()
        try:
            if self.start_file is not None and not check_mode:
                self.prepare_and_wait(self.start_file)
            return self.run_connected(check_mode)
        finally:
            self.migration_client.close()

    def prepare_and_wait(self, start_file: str) -> None:
        """Measure the dirty rate while the workflow's other moves copy, then wait for its start (_start_signal).

        Nothing changes before the start: the checks, compaction and the migration follow it.
        """
        dom = find_domain(self.source.conn, self.name)
        window_s = self.preflight_options.measure_dirty_rate_s
        timeout_s = self.preflight_options.dirty_rate_timeout_s
        if (dom is not None and window_s and timeout_s and dom.state()[0] == DOMAIN_RUNNING
                and dom.jobInfo()[0] == JOB_NONE):
            self.stats_seen = _stats_timestamp(dom)
            rate = measure_dirty_rate(dom, window_s, timeout_s, sleep=self.sleep, clock=self.clock)
            self.early_dirty_rate = (rate, self.clock())
        self.progress("ready")
        signal = wait_for_start(start_file, self.name, sleep=self.sleep)
        if signal.bandwidth_mibps is not None:
            self.options = dataclasses.replace(self.options, bandwidth_mibps=signal.bandwidth_mibps)
            self.preflight_options = dataclasses.replace(self.preflight_options, bandwidth_mibps=signal.bandwidth_mibps)
        self.event("start", waited_for="start_file", bandwidth_mibps=self.options.bandwidth_mibps,
                   dirty_rate_mibps=self.early_dirty_rate[0] if self.early_dirty_rate else None)

    def known_dirty_rate(self) -> t.Optional[float]:
        """The rate measured before the start, while it is fresh enough to plan with."""
        if self.early_dirty_rate is None:
            return None
        rate, measured_at = self.early_dirty_rate
        return rate if self.clock() - measured_at <= DIRTY_RATE_FRESH_S else None

    def cap_where_known_safe(self, plan: MigrationPlan, domain_type: t.Optional[str],
                             source_qemu: str) -> MigrationPlan:
        """The plan, its vCPU cap dropped when cap_vcpus is unset and the source is not known safe for it."""
        if not plan.cap_vcpus or self.options.cap_vcpus is not None:
            return plan
        safe, why = cap_by_default(domain_type, source_qemu)
        if safe:
            return plan
        self.event("layer", layer=3, action="vcpu_cap", applied=False, note="not capped, auto-converge alone: " + why)
        return dataclasses.replace(plan, cap_vcpus=False)

    def run_connected(self, check_mode: bool) -> t.Dict[str, t.Any]:
        dom = find_domain(self.source.conn, self.name)
        if dom is not None and tuple(dom.state()) == (DOMAIN_PAUSED, PAUSED_POSTCOPY_FAILED):
            return self.resume_broken_postcopy(dom, check_mode)
        leftover = parse_record(dom.XMLDesc(0)) if dom is not None else None
        if dom is not None and leftover is not None and dom.jobInfo()[0] == JOB_NONE:
            self.lift_leftover_cap(dom, leftover, check_mode)
        # The guest's balloon report before the dirty-rate measurement: the one it sends during it is new
        # enough for compaction, which then waits for none.
        known_rate = self.known_dirty_rate()
        seen_last_update = self.stats_seen if known_rate is not None else _stats_timestamp(dom)
        data, report = self.measure(known_rate)
        if report.already_migrated:
            self.result["already_migrated"] = True
            self.result["placement"] = {
                "source": placement(self.source.conn, self.name),
                "destination": placement(self.destination.conn, self.name),
            }
            return self.result
        self.refuse_on_findings(report)
        domain = data.domain
        if domain is None:  # evaluate() fails domain_running then; kept for the type checker
            raise self.fail("domain '%s' is not defined on the source" % self.name)
        dom = self.source.conn.lookupByName(self.name)
        estimate = memory_to_send(domain, self.preflight_options.qemu_overhead_mib)
        self.event(
            "layer", layer=0, action="measure", dirty_rate_mibps=data.dirty_rate_mibps,
            memory_mib=estimate.memory_mib, memory_estimate=estimate.source,
        )
        compact = self.wants_compaction(domain)
        params = compaction_params(state="compacted", headroom_mib=self.compaction.headroom_mib,
                                   timeout_s=self.compaction.timeout_s)
        memory_mib = float(estimate.memory_mib)
        if compact:
            changed, compacted = ensure_compacted(dom, params, check_mode=check_mode, sleep=self.sleep,
                                                  clock=self.clock, seen_last_update=seen_last_update)
            self.result["compaction"] = compacted.to_dict()
            self.event("layer", layer=1, action="compaction", before_mib=compacted.before_mib,
                       after_mib=compacted.after_mib, settled=compacted.settled, changed=changed)
            # Balloon statistics lag the balloon's move; what the guest uses was measured before it.
            memory_mib = min(memory_mib, float(compacted.after_mib))
        predicted = _prediction_for(domain, memory_mib, data.dirty_rate_mibps, self.options)
        prediction, inputs = predicted.prediction, predicted.inputs
        copied = disks_to_copy(data.disks, self.preflight_options)
        if prediction is not None and inputs is not None and copied:
            paced = _storage_copy_mib(data.disks, copied, "capacity_bytes") if self.options.bandwidth_mibps else None
            prediction = with_storage_copy(prediction, _storage_copy_mib(data.disks, copied), inputs["bandwidth_mibps"],
                                           paced)
        self.result["prediction"] = _prediction_dict(prediction, inputs)
        hot_set_mib = data.dirty_rate_mibps * 1.0 if data.dirty_rate_mibps is not None else None
        features = pair_features(HostVersions(data.source.libvirt_version, data.source.hypervisor_version),
                                 HostVersions(data.destination.libvirt_version, data.destination.hypervisor_version))
        plan = plan_migration(self.options, prediction, domain.memory_max_mib, hot_set_mib, copied,
                              auto_converge=predicted.auto_converge, features=features)
        plan = self.cap_where_known_safe(plan, domain.domain_type, data.source.hypervisor_version)
        if copied:
            self.event("layer", layer="storage", action="plan", disks=copied, copy_storage=self.options.copy_storage,
                       disk_mib=round(_storage_copy_mib(data.disks, copied), 1))
        self.result["strategy"] = plan.to_dict()
        self.result["changed"] = True
        if check_mode:
            return self.result
        try:
            if plan.cap_vcpus:
                plan = self.cap_vcpus(dom, plan, predicted)
            self.migrate(dom, plan, predicted.precopy_converges, compact and self.result["compaction"] is not None,
                         [d for d in data.disks if d.target in copied])
        except BaseException:
            self.lift_cap_after_error()
            raise
        return self.result

    def resume_broken_postcopy(self, dom: t.Any, check_mode: bool) -> t.Dict[str, t.Any]:
        """A post-copy migration of this domain broke earlier (an earlier run, or libvirt's own): finish it."""
        self.event("postcopy_recovery", note="the domain waits on its source for an interrupted post-copy migration")
        self.result["changed"] = True
        options = dataclasses.replace(self.options, strategy="postcopy", allow_postcopy=True)
        plan = plan_migration(options, None, 0, None)
        self.result["strategy"] = dict(plan.to_dict(), reason="resume the interrupted post-copy migration")
        if check_mode:
            return self.result
        self.progress("postcopy")
        with self.migration_client as migration_connection:
            migrating_dom = migration_connection.conn.lookupByName(self.name)
            failed = MonitorOutcome(
                completed=False, error="post-copy interrupted before this run", aborted_by=None, hint=None,
                postcopy_started=True, still_running=False, last_sample=None, shaking=[], downtime_ms=0,
            )
            outcome, completed_stats = self.recover_postcopy(migrating_dom, dom, plan, failed)
        if outcome.completed:
            # Memory compacted by the interrupted run is given back: its record travelled with the domain.
            dest_dom = self.destination.conn.lookupByName(self.name)
            compacted = parse_compaction_record(dest_dom.XMLDesc(0)) is not None
            self.finish_success(completed_stats, None, compacted=compacted)
            return self.result
        self.finish_failure(dom, outcome, was_running=False, compacted=False)
        return self.result

    # The vCPU cap (see _throttle) ---------------------------------------------------

    def cap_vcpus(self, dom: t.Any, plan: MigrationPlan, predicted: _Predicted) -> MigrationPlan:
        """Cap the vCPUs before the job, sized from the dirty rate and checked by one measurement under it.

        Returns the plan the job runs: it carries the domain's XML from before the cap, so the
        destination starts without it. A source that cannot limit vCPUs keeps auto-converge alone.
        From the first change on, self.cap says a cap may be in force (see lift_cap_after_error).
        """
        inputs = predicted.model_inputs
        original = read_bandwidth(dom)
        if original is None or inputs is None:
            self.event("layer", layer=3, action="vcpu_cap", applied=False,
                       note="the source cannot limit vCPU bandwidth (no cgroup cpu controller): auto-converge alone")
            return plan
        destination_xml = dom.XMLDesc(XML_SECURE_MIGRATABLE)
        period = cap_period_us(self.options.max_downtime_ms)
        if original.percent() <= min_cap_percent(period):
            self.event("layer", layer=3, action="vcpu_cap", applied=False,
                       note="the domain's own limit (%.2f%% of a CPU) is already at or below the strongest cap a %d us "
                            "period allows: auto-converge alone" % (original.percent(), period))
            return plan
        probe_percent = first_cap_percent(inputs.dirty_rate_mibps, inputs.bandwidth_mibps, original, period)
        self.replaced_bandwidth = original
        self.cap = {"percent": round(probe_percent, 2), "original_quota_us": original.quota_us,
                    "original_period_us": original.period_us, "capped_at": self.clock()}
        apply_cap(dom, original, probe_percent, period)
        # The same window as the uncapped measurement, so the two rates compare.
        window_s = max(self.preflight_options.measure_dirty_rate_s, 1)
        probe_mibps = measure_dirty_rate(dom, window_s, window_s + DIRTY_RATE_DEFAULT_GRACE_S,
                                         sleep=self.sleep, clock=self.clock)
        percent, sized = corrected_cap_percent(probe_percent, inputs.dirty_rate_mibps, probe_mibps,
                                               inputs.bandwidth_mibps, period)
        if percent != probe_percent:
            apply_cap(dom, original, percent, period)
        expected = capped_rate_mibps(percent, probe_percent, probe_mibps)
        auto_converge = predicted.auto_converge or (AUTO_CONVERGE_MAX_PERCENT, 1)
        prediction = predict_capped(inputs, percent, expected, auto_converge,
                                    rate_is_lower_bound=sized == SIZED_UNRESPONSIVE)
        self.result["prediction"] = _prediction_dict(prediction, predicted.inputs)
        self.cap.update(
            percent=round(percent, 2),
            quota_us=quota_us(period, percent),
            period_us=period,
            probe_percent=round(probe_percent, 2),
            probe_dirty_rate_mibps=probe_mibps,
            sized=sized,
            expected_dirty_rate_mibps=round(expected, 1),
        )
        self.event("layer", layer=3, action="vcpu_cap", applied=True,
                   **{k: v for k, v in self.cap.items() if k != "capped_at"})
        # Capped, rounds shrink fast: the downtime ramp would only add passes (seen: two more, 0.8 s).
        steps = (self.options.max_downtime_ms,)
        self.result["strategy"]["downtime_steps_ms"] = list(steps)
        return dataclasses.replace(plan, params=dict(plan.params, destination_xml=destination_xml),
                                   downtime_steps_ms=steps)

    def lift_cap(self, dom: t.Any, host: str, why: str) -> bool:
        """Give the vCPUs their bandwidth back where the domain still runs; False (and said) when that failed."""
        try:
            original = lift_cap(dom)
        except (LibvirtError, StrataError) as exc:
            self.cap_left_in_force(host, exc)
            return False
        if original is not None:
            self.event("restore", host=host, what="vcpu_cap", period_us=original.period_us,
                       quota_us=original.quota_us, why=why)
        self.finish_cap(lifted_on=host)
        return True

    def lift_cap_after_error(self) -> None:
        """An exception stops the run: lift a cap still in force on the source, never hiding the exception."""
        if self.cap is None or "held_s" in self.cap:
            return
        why = "the migration did not complete" if "sized" in self.cap else "the cap could not be sized"
        try:
            dom = find_domain(self.source.conn, self.name)
        except (LibvirtError, StrataError) as exc:
            self.cap_left_in_force("source", exc)
            return
        if dom is not None:
            self.lift_cap(dom, "source", why)

    def cap_original(self) -> VcpuBandwidth:
        """The bandwidth a cap replaced (libvirt's default when no record said)."""
        return self.replaced_bandwidth or VcpuBandwidth(period_us=DEFAULT_PERIOD_US, quota_us=NO_QUOTA)

    def cap_left_in_force(self, host: str, exc: Exception) -> None:
        original = self.cap_original()
        self.event("restore", host=host, what="vcpu_cap", error=str(exc),
                   note="lift it with `virsh schedinfo %s --live vcpu_period=%d vcpu_quota=%d`"
                   % (self.name, original.period_us, original.quota_us))
        self.finish_cap(lifted_on=None)

    def lift_leftover_cap(self, dom: t.Any, leftover: VcpuBandwidth, check_mode: bool) -> None:
        self.replaced_bandwidth = leftover
        why = "an earlier run was cut short while the domain's vCPUs were capped"
        if check_mode:
            self.event("restore", host="source", what="vcpu_cap", why=why, note="check mode: left as it is")
            return
        self.result["changed"] = True
        if not self.lift_cap(dom, "source", why):
            # Sizing a new cap now would take the capped quota for the domain's own.
            raise self.fail(
                "domain '%s' still has the vCPU cap of an earlier run that was cut short, and lifting it failed "
                "(see the timeline); lift it with `virsh schedinfo %s --live vcpu_period=%d vcpu_quota=%d` (what "
                "the cap's record names), then run the task again; nothing was migrated"
                % (self.name, self.name, leftover.period_us, leftover.quota_us)
            )

    def finish_cap(self, lifted_on: t.Optional[str]) -> None:
        """How long the guest was capped, and where it runs at full speed again (None: nowhere yet)."""
        if self.cap is None or "held_s" in self.cap:
            return
        self.cap["held_s"] = round(self.clock() - self.cap.pop("capped_at"), 2)
        self.cap["lifted_on"] = lifted_on
        self.result["vcpu_cap"] = self.cap

    def migrate(
        self, dom: t.Any, plan: MigrationPlan, precopy_converges: t.Optional[bool], compacted: bool,
        copied_disks: t.Sequence[t.Any] = (),
    ) -> None:
        was_running = dom.state()[0] == DOMAIN_RUNNING
        # A connection of the job's own: the migration call holds it, while the monitor reads statistics
        # on the source's.
        with self.migration_client as migration_connection:
            migrating_dom = migration_connection.conn.lookupByName(self.name)
            job = LibvirtMigrationJob(migrating_dom, dom, self.peer_uri)
            try:
                outcome = monitor(job, plan, self.options, precopy_converges, self.timeline, self.progress)
                completed_stats = job.completed_stats(COMPLETED_EVENT_WAIT_S) if outcome.completed else None
                if not outcome.completed and outcome.postcopy_started and not outcome.still_running:
                    outcome, completed_stats = self.recover_postcopy(migrating_dom, dom, plan, outcome)
            finally:
                job.close()
        if outcome.completed and self.cap is not None:
            # The destination started from the XML of before the cap; what it runs with is reported.
            self.finish_cap(lifted_on="destination")
            started_with = read_bandwidth(self.destination.conn.lookupByName(self.name))
            self.cap["destination_quota_us"] = started_with.quota_us if started_with else None
        self.result["shaking"] = outcome.shaking
        if outcome.completed:
            self.finish_success(completed_stats, outcome, compacted)
            if copied_disks and self.options.persist and not self.options.keep_source_disks:
                # The domain now runs and is defined on the destination only: the source's images are stale.
                self.remove_images("source", self.source, copied_disks)
            return
        if job.error_code == ERR_MIGRATE_UNSAFE and not outcome.hint:
            outcome = dataclasses.replace(outcome, hint=UNSAFE_HINT)
        made_here = [d for d in copied_disks if d.location == "local"]
        if made_here and not outcome.postcopy_started:
            # These images were not on the destination before: the copy made them.
            self.remove_images("destination", self.destination, made_here)
        self.finish_failure(dom, outcome, was_running, compacted)

    def remove_images(self, role: str, client: LibvirtClient, disks: t.Sequence[t.Any]) -> None:
        """Delete the disks' images on the host where the domain no longer is (or never came).

        Never while the domain is defined or active there: the image it uses is never touched.
        Only file images that are volumes of a pool; anything else is the operator's to manage.
        """
        if find_domain(client.conn, self.name) is not None:
            self.event("cleanup", host=role, note="the domain is on the %s: its images stay" % role)
            return
        removed, failed = [], []
        for disk in disks:
            if disk.type != "file":
                continue
            try:
                volume = _volume_at(client.conn, disk.source)
                if volume is None:
                    continue
                volume.delete(0)
                removed.append(disk.source)
            except LibvirtError as exc:
                failed.append("%s: %s" % (disk.source, describe_libvirt_error(exc)))
        self.result["removed_volumes"].extend({"host": role, "path": path} for path in removed)
        if removed or failed:
            self.event("cleanup", host=role, removed=removed, errors=failed)

    def recover_postcopy(
        self, migrating_dom: t.Any, dom: t.Any, plan: MigrationPlan, failed: MonitorOutcome
    ) -> t.Tuple[MonitorOutcome, t.Optional[t.Dict[str, t.Any]]]:
        """Resume a post-copy migration whose connection broke, until it completes or the recovery bound passes.

        The guest then runs on the destination, paused waiting for pages, and
        the source holds them: neither side can be given up, so the only way
        forward is to reconnect the two and finish (libvirt's post-copy resume).
        Each attempt that stops making progress for stall_timeout_s is paused
        again (abort with the post-copy flag: libvirt keeps the migration
        resumable), so a hung attempt never holds the domain's job lock.
        Returns the outcome and, on success, the job's final statistics.
        """
        bound_s = self.postcopy_recovery_timeout_s
        if bound_s <= 0:
            return failed, None
        deadline = self.clock() + bound_s
        attempt = 0
        outcome = failed
        # libvirt marks the failure as soon as the destination reports it; the source QEMU needs a
        # moment more to notice, and a resume before that is refused ("migration is still running").
        self.sleep(min(POSTCOPY_RECOVERY_RETRY_S, bound_s))
        while self.clock() < deadline:
            state, reason = dom.state()
            if not (state == DOMAIN_PAUSED and reason == PAUSED_POSTCOPY_FAILED):
                self.event("postcopy_recovery", attempt=attempt, note="the source is not waiting for recovery",
                           state=domain_state_name(state), reason=reason)
                return outcome, None
            attempt += 1
            self.event("postcopy_recovery", attempt=attempt)
            job = LibvirtMigrationJob(migrating_dom, dom, self.peer_uri)
            job.start(plan.flags | MIGRATE_POSTCOPY_RESUME, plan.params)
            try:
                finished, why = self.watch_recovery(job, deadline)
                completed_stats = job.completed_stats(COMPLETED_EVENT_WAIT_S) if finished and not job.error() else None
            finally:
                job.close()
            if finished and job.error() is None:
                self.event("complete", note="post-copy recovered (attempt %d)" % attempt)
                return dataclasses.replace(failed, completed=True, error=None), completed_stats
            # Why the module gave up on the attempt (if it did), then what libvirt answered.
            error = "; ".join(text for text in (why, job.error()) if text)
            self.event("failed", error=error, note="post-copy recovery attempt %d" % attempt)
            outcome = dataclasses.replace(failed, error=error, still_running=not finished)
            if not finished:
                return outcome, None
            self.sleep(min(POSTCOPY_RECOVERY_RETRY_S, max(deadline - self.clock(), 0.0)))
        return outcome, None

    def watch_recovery(self, job: LibvirtMigrationJob, deadline: float) -> t.Tuple[bool, str]:
        """Wait for one resume attempt; pause it again when it stalls or the bound passes. (finished, why)."""
        progress, progress_at = -1.0, self.clock()
        while not job.wait(POLL_S):
            sample = parse_job_stats(job.stats(), 0.0)
            if sample is not None and sample.processed_mib > progress:
                progress, progress_at = sample.processed_mib, self.clock()
            self.progress("postcopy", sample)
            now = self.clock()
            if now < deadline and now - progress_at < self.options.stall_timeout_s:
                continue
            why = ("the attempt sent nothing for %s s (stall_timeout_s)" % self.options.stall_timeout_s
                   if now < deadline else "post-copy recovery did not finish within postcopy_recovery_timeout_s")
            try:
                job.abort_postcopy()
            except LibvirtError as exc:
                why += ("; pausing it again failed: %s; the source libvirtd may hold the domain's job until it "
                        "is restarted" % describe_libvirt_error(exc))
            else:
                why += "; the attempt was paused again, the migration stays resumable"
            return job.wait(ABORT_GRACE_S), why
        return True, ""

    def finish_success(
        self, completed: t.Optional[t.Dict[str, t.Any]], outcome: t.Optional[MonitorOutcome], compacted: bool,
    ) -> None:
        dest_dom = self.destination.conn.lookupByName(self.name)
        if not completed or "time_elapsed" not in completed:
            try:
                completed = dest_dom.jobStats(JOB_STATS_COMPLETED)
            except LibvirtError:
                completed = None
        if outcome is None:  # a resumed post-copy: this run watched no job of its own
            self.result["stats"] = summarize_stats(completed, None)
        else:
            self.result["stats"] = summarize_stats(completed, outcome.last_sample, outcome.throttle, outcome.xbzrle)
        self.progress.report("finishing", completed_figures(self.result["stats"]))
        if compacted:
            params = compaction_params(state="restored", timeout_s=self.compaction.timeout_s)
            changed, restored = ensure_restored(dest_dom, params, sleep=self.sleep, clock=self.clock)
            self.result["restore"] = restored.to_dict()
            self.event("restore", host="destination", before_mib=restored.before_mib, after_mib=restored.after_mib,
                       settled=restored.settled, changed=changed)
        where = self.verify()
        problems = []
        if not _active(where["destination"]):
            problems.append("it is not running on the destination (%s)" % where["destination"]["state"])
        if _active(where["source"]):
            problems.append("it is still active on the source (%s)" % where["source"]["state"])
        if self.options.persist:
            if not where["destination"]["persistent"]:
                problems.append("it has no persistent definition on the destination")
            if where["source"]["defined"]:
                problems.append("it is still defined on the source")
        if problems:
            raise self.fail(
                "domain '%s' migrated to %s, but the check afterwards found that %s"
                % (self.name, redact_uri(self.destination.uri), "; ".join(problems))
            )

    def verify(self) -> t.Dict[str, t.Any]:
        """Where the domain is on each host; a host that cannot be read is reported as such."""
        where = {}
        for role, client in (("source", self.source), ("destination", self.destination)):
            try:
                where[role] = placement(client.conn, self.name)
            except (LibvirtError, StrataError) as exc:
                where[role] = {"defined": None, "state": None, "reason": None, "persistent": None,
                               "error": str(exc)}
        self.result["placement"] = where
        return where

    def finish_failure(self, dom: t.Any, outcome: t.Any, was_running: bool, compacted: bool) -> None:
        self.progress("verifying")
        where = self.verify()
        if self.cap is not None and _active(where["source"]) and not outcome.still_running:
            self.lift_cap(dom, "source", "the migration did not complete")
        elif self.cap is not None:
            # A job libvirt still runs holds the domain: a change of quota would wait for it. The record
            # stays, so the next run lifts the cap if the guest is still on its source then.
            self.finish_cap(lifted_on=None)
        source = where["source"]
        if (
            was_running and not outcome.postcopy_started and source["state"] == "paused"
            and source["reason"] == PAUSED_MIGRATION and not _active(where["destination"])
        ):
            # libvirt resumes the source after a failed migration; this covers a job cut short before that.
            dom.resume()
            self.event("resume", host="source", why="the failed migration left the domain paused on its source")
            where = self.verify()
        if compacted and where["source"]["state"] == "running":
            params = compaction_params(state="restored", timeout_s=self.compaction.timeout_s)
            changed, restored = ensure_restored(dom, params, sleep=self.sleep, clock=self.clock)
            self.result["restore"] = restored.to_dict()
            self.event("restore", host="source", before_mib=restored.before_mib, after_mib=restored.after_mib,
                       settled=restored.settled, changed=changed)
        self.result["stats"] = summarize_stats(None, outcome.last_sample, outcome.throttle, outcome.xbzrle)
        self.result["aborted_by"] = outcome.aborted_by
        # Back where it started (memory given back too), unless post-copy already moved the guest's execution.
        self.result["changed"] = outcome.postcopy_started
        runs_on = _runs_on(where)
        cause = explain_libvirt_error(outcome.error)
        if outcome.error and outcome.still_running:
            cause += "; libvirt had not ended the job when the module stopped waiting: check placement before acting"
        if outcome.aborted_by:
            guard = [e for e in self.timeline.events if e.get("event") == "guard"][-1]
            cause = "aborted by the %s guard: %s" % (outcome.aborted_by, guard["detail"])
            if outcome.still_running:
                cause += (", but libvirt had not ended the job %d s after the abort; it may still cancel or "
                          "finish it: check placement before acting" % ABORT_GRACE_S)
        elif outcome.still_running and not outcome.error:
            cause = ("post-copy did not finish within timeout_s plus %d s; it cannot be aborted and goes on in "
                     "libvirt" % POSTCOPY_GRACE_S)
        msg = "live migration of domain '%s' from %s to %s failed: %s; the domain %s" % (
            self.name, redact_uri(self.source.uri), redact_uri(self.destination.uri), cause, runs_on,
        )
        if self.cap is not None and self.cap.get("lifted_on") is None and _active(where["source"]):
            msg += ("; its vCPUs are still capped at %s%% of a CPU (vcpu_cap): once libvirt has ended the job, run "
                    "the task again (it lifts the cap first) or lift it with `virsh schedinfo %s --live "
                    "vcpu_period=%d vcpu_quota=%d`"
                    % (self.cap["percent"], self.name, self.cap_original().period_us, self.cap_original().quota_us))
        if outcome.hint:
            msg += "; to change the outcome: %s" % outcome.hint
        elif outcome.postcopy_started:
            msg += (
                "; it failed during post-copy, so the guest's memory is split between the hosts and neither copy "
                "can run alone: bring both hosts and the network between them back, then run the task again (it "
                "resumes the migration), or raise postcopy_recovery_timeout_s"
            )
        else:
            msg += "; once the cause is fixed, run the task again"
        raise self.fail(msg, running_on=runs_on)


def explain_libvirt_error(error: t.Optional[str]) -> str:
    """libvirt's message for a failed migration, with what it may hide."""
    if not error:
        return "no error from libvirt"
    if any(words in error for words in PEER_CONNECTION_LOST):
        return "%s (%s)" % (error, PEER_CONNECTION_NOTE)
    return error


def _volume_at(conn: t.Any, path: str) -> t.Any:
    """The host's storage volume at this path, None when no active pool holds one (pools rescanned first)."""
    for pool in conn.listAllStoragePools(LIST_POOLS_ACTIVE):
        pool.refresh(0)
    try:
        return conn.storageVolLookupByPath(path)
    except LibvirtError as exc:
        if libvirt_error_code(exc) == ERR_NO_STORAGE_VOL:
            return None
        raise


def _runs_on(where: t.Mapping[str, t.Mapping[str, t.Any]]) -> str:
    source, destination = where["source"], where["destination"]
    states = []
    if _active(source):
        states.append("is %s on the source" % source["state"])
    if _active(destination):
        states.append("is %s on the destination" % destination["state"])
    unreadable = [role for role in ("source", "destination") if where[role].get("error")]
    if unreadable and not states:
        return "could not be located: the %s host could not be read" % " and ".join(unreadable)
    if not states:
        return "runs on neither host"
    return " and ".join(states)


def run_live_migration(
    source: LibvirtClient,
    destination: LibvirtClient,
    name: str,
    options: EngineOptions,
    preflight_options: PreflightOptions,
    enforce_preflight: bool = True,
    compaction: CompactionSettings = CompactionSettings(),
    peer_uri: t.Optional[str] = None,
    postcopy_recovery_timeout_s: int = DEFAULT_POSTCOPY_RECOVERY_TIMEOUT_S,
    progress_file: t.Optional[str] = None,
    check_mode: bool = False,
    clock: t.Callable[[], float] = time.monotonic,
    sleep: t.Callable[[float], None] = time.sleep,
    start_file: t.Optional[str] = None,
) -> t.Dict[str, t.Any]:
    """Migrate one domain live; return the module result or raise MigrationError carrying it.

    peer_uri: the destination as the source host reaches it (peer-to-peer),
    default the destination's URI. postcopy_recovery_timeout_s: how long to
    keep resuming a post-copy migration whose connection broke (0: not at all).
    progress_file: where to keep the progress record (see ProgressReporter),
    already checked with check_progress_file; nothing is written in check mode.
    start_file: prepare, then wait for the workflow's start (see _start_signal); ignored in check mode.
    """
    sink = None if progress_file is None or check_mode else functools.partial(write_json_file, progress_file)
    run = _Run(source, destination, name, options, preflight_options, enforce_preflight, compaction, peer_uri,
               postcopy_recovery_timeout_s, clock, sleep, sink, start_file)
    try:
        try:
            result = run.run(check_mode)
        except LibvirtError as exc:
            raise run.fail(
                "live migration of domain '%s' stopped on a libvirt error: %s; its timeline shows the last step "
                "taken (after a 'complete' event the domain runs on the destination); run the task again once "
                "libvirt answers" % (name, describe_libvirt_error(exc)),
                libvirt_error_code=libvirt_error_code(exc),
            ) from exc
    except BaseException:
        # Whatever ends the task early, the watcher must not be left reading a phase that will never change.
        if run.progress.started:
            run.progress.report("failed")
        raise
    run.progress.report("done")
    return result
