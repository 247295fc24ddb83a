# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The layered live-migration engine: plan, monitor loop, layers and guards.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

The planning (`plan_migration`), the statistics parsing (`parse_job_stats`),
the shaking detector (`ShakingDetector`) and the monitor loop (`monitor`) are
plain Python over plain data; the loop drives a `MigrationJob`, whose libvirt
implementation lives in `_migrate.py`, so all of it runs in unit tests against
a scripted job.

Layers, in the order a migration meets them:

0. measure: balloon statistics and the dirty rate, the prediction from the
   convergence model, the strategy for `auto` (done by the caller);
1. compaction (done by the caller);
2. cold pre-copy: QEMU's pre-copy rounds within the downtime target;
3. the hot layer: once pages that keep being rewritten ("shaking") are
   detected, either switch to post-copy (each hot page then crosses once), or
   rely on what was enabled at the start for hot pages (XBZRLE delta
   compression with a cache sized from the measured hot set, auto-converge
   throttling) and raise the downtime target one step at a time up to
   max_downtime_ms.

Guards end every migration: too many bytes sent for the guest's size,
timeout_s, or no progress for stall_timeout_s abort the job, and the domain
keeps running on its source. Post-copy cannot be aborted (the guest already
runs on the destination), so the guards only report once it started.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import typing as t

from ansible_collections.strata.migration.plugins.module_utils._convergence import DEFAULT_MAX_DOWNTIME_MS, Prediction
from ansible_collections.strata.migration.plugins.module_utils._features import available
from ansible_collections.strata.migration.plugins.module_utils._libvirt import StrataError
from ansible_collections.strata.migration.plugins.module_utils._progress import PROGRESS_PHASES, progress_record

# virDomainMigrateFlags (numeric, so this module imports without libvirt).
MIGRATE_LIVE = 1
MIGRATE_PEER2PEER = 2
MIGRATE_PERSIST_DEST = 8
MIGRATE_UNDEFINE_SOURCE = 16
MIGRATE_NON_SHARED_DISK = 64
MIGRATE_NON_SHARED_INC = 128
MIGRATE_UNSAFE = 512
MIGRATE_COMPRESSED = 2048
MIGRATE_AUTO_CONVERGE = 8192
MIGRATE_POSTCOPY = 32768
MIGRATE_TLS = 65536
MIGRATE_PARALLEL = 131072
FLAG_NAMES = (
    (MIGRATE_LIVE, "live"),
    (MIGRATE_PEER2PEER, "peer2peer"),
    (MIGRATE_PERSIST_DEST, "persist_dest"),
    (MIGRATE_UNDEFINE_SOURCE, "undefine_source"),
    (MIGRATE_NON_SHARED_DISK, "non_shared_disk"),
    (MIGRATE_NON_SHARED_INC, "non_shared_inc"),
    (MIGRATE_UNSAFE, "unsafe"),
    (MIGRATE_COMPRESSED, "compressed"),
    (MIGRATE_AUTO_CONVERGE, "auto_converge"),
    (MIGRATE_POSTCOPY, "postcopy"),
    (MIGRATE_TLS, "tls"),
    (MIGRATE_PARALLEL, "parallel"),
)
# copy_storage: none (every disk is shared or already on the destination), all (copy the whole
# disk), incremental (copy the top image only; its backing files are on the destination).
COPY_STORAGE_CHOICES = ("none", "all", "incremental")
COPY_STORAGE_FLAGS = {"all": MIGRATE_NON_SHARED_DISK, "incremental": MIGRATE_NON_SHARED_INC}
# virDomainJobType values jobStats() reports.
JOB_NONE = 0

MIB = 1024 * 1024
STRATEGY_CHOICES = ("auto", "precopy", "layered", "postcopy")
COMPRESSION_METHODS = ("xbzrle", "mt", "zlib", "zstd")

DEFAULT_TIMEOUT_S = 600
DEFAULT_STALL_TIMEOUT_S = 30
DEFAULT_MAX_TRANSFER_RATIO = 8.0
DEFAULT_SHAKING_ITERATIONS = 3
# Auto-converge throttling for the hot layer: QEMU's default (20% then +10%)
# needs many rounds before it bites; starting at 60% in 20% steps brought a
# shaking 256 MiB lab guest from 30 s to under 5 s.
AUTO_CONVERGE_INITIAL_PERCENT = 60
AUTO_CONVERGE_INCREMENT_PERCENT = 20
# The XBZRLE cache holds about twice the hot set: pages rewritten between two
# rounds must still be cached when they come round again.
XBZRLE_CACHE_HOT_SET_FACTOR = 2.0
XBZRLE_CACHE_MIN_MIB = 16
# XBZRLE is judged once it has tried to encode this many cached pages (8 MiB of 4 KiB pages),
# and pays when the encoded pages saved at least this share of what they would have cost whole.
# Pages rewritten with fresh data overflow the encoder: they cross whole and save nothing.
XBZRLE_JUDGE_MIN_PAGES = 2048
XBZRLE_PAYING_SAVED_FRACTION = 0.25
# The downtime target starts at a quarter of max_downtime_ms for the hot layer
# and rises in these fractions each time shaking persists.
DOWNTIME_RAMP_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
# Remaining memory that fell by less than this over the detection window has "stopped shrinking".
SHRINK_FRACTION = 0.9
# Poll period of the monitor loop; jobStats() is cheap.
POLL_S = 0.2
# After abortJob() QEMU cancels at its next chance and libvirt cleans the destination.
ABORT_GRACE_S = 30.0
# Post-copy cannot be aborted; past timeout_s the loop waits this much longer for it.
POSTCOPY_GRACE_S = 120.0
# Phases of the progress record, in the order a task meets them (failed can follow any of them).
# Within a phase the progress record is handed on at most this often: a watcher polls every few seconds.
PROGRESS_INTERVAL_S = 1.0


class MigrationError(StrataError):
    """A live migration could not start or did not complete; details say where the domain runs."""


# ---- options -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How one live migration runs; see the live_migrate module for each option."""

    strategy: str = "auto"
    max_downtime_ms: int = DEFAULT_MAX_DOWNTIME_MS
    bandwidth_mibps: int = 0
    switchover_bandwidth_mibps: int = 0
    postcopy_bandwidth_mibps: int = 0
    timeout_s: int = DEFAULT_TIMEOUT_S
    allow_postcopy: bool = False
    # None: where the source is known safe for it (_throttle.cap_by_default).
    cap_vcpus: t.Optional[bool] = None
    parallel_connections: int = 1
    compression: t.Optional[t.Tuple[str, ...]] = None
    tls: bool = False
    migrate_uri: t.Optional[str] = None
    persist: bool = True
    stall_timeout_s: int = DEFAULT_STALL_TIMEOUT_S
    max_transfer_ratio: float = DEFAULT_MAX_TRANSFER_RATIO
    shaking_iterations: int = DEFAULT_SHAKING_ITERATIONS
    copy_storage: str = "none"
    migrate_disks: t.Optional[t.Tuple[str, ...]] = None
    allow_unsafe: bool = False
    keep_source_disks: bool = False


def _at_least(value: t.Any, minimum: float, option: str, unit: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise MigrationError(
            "%s must be at least %s%s, got %r" % (option, minimum, unit, value), option=option
        )


def engine_options(
    strategy: str = "auto",
    max_downtime_ms: int = DEFAULT_MAX_DOWNTIME_MS,
    bandwidth_mibps: int = 0,
    switchover_bandwidth_mibps: int = 0,
    postcopy_bandwidth_mibps: int = 0,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    allow_postcopy: bool = False,
    cap_vcpus: t.Optional[bool] = None,
    parallel_connections: int = 1,
    compression: t.Optional[t.Sequence[str]] = None,
    tls: bool = False,
    migrate_uri: t.Optional[str] = None,
    persist: bool = True,
    stall_timeout_s: int = DEFAULT_STALL_TIMEOUT_S,
    max_transfer_ratio: float = DEFAULT_MAX_TRANSFER_RATIO,
    shaking_iterations: int = DEFAULT_SHAKING_ITERATIONS,
    copy_storage: str = "none",
    migrate_disks: t.Optional[t.Sequence[str]] = None,
    allow_unsafe: bool = False,
    keep_source_disks: bool = False,
) -> EngineOptions:
    """Check the options before anything connects; each error names its option."""
    if strategy not in STRATEGY_CHOICES:
        raise MigrationError(
            "strategy must be one of %s, got '%s'" % (", ".join(STRATEGY_CHOICES), strategy), option="strategy"
        )
    if strategy == "postcopy" and not allow_postcopy:
        raise MigrationError(
            "strategy=postcopy needs allow_postcopy=true: while post-copy runs the guest depends on both hosts, "
            "and a failure of either loses it",
            option="allow_postcopy",
        )
    _at_least(max_downtime_ms, 1, "max_downtime_ms", " ms")
    _at_least(bandwidth_mibps, 0, "bandwidth_mibps", " MiB/s (0 = unlimited)")
    _at_least(switchover_bandwidth_mibps, 0, "switchover_bandwidth_mibps", " MiB/s (0 = QEMU's own estimate)")
    _at_least(postcopy_bandwidth_mibps, 0, "postcopy_bandwidth_mibps", " MiB/s (0 = as bandwidth_mibps)")
    _at_least(timeout_s, 1, "timeout_s", " s")
    _at_least(parallel_connections, 1, "parallel_connections")
    _at_least(stall_timeout_s, 1, "stall_timeout_s", " s")
    _at_least(max_transfer_ratio, 1, "max_transfer_ratio", " (times the guest's memory)")
    _at_least(shaking_iterations, 2, "shaking_iterations")
    methods = None
    if compression is not None:
        unknown = [m for m in compression if m not in COMPRESSION_METHODS]
        if unknown:
            raise MigrationError(
                "compression: unknown method(s) %s; choose from %s"
                % (", ".join(sorted(set(unknown))), ", ".join(COMPRESSION_METHODS)),
                option="compression",
            )
        methods = tuple(dict.fromkeys(compression))
    if methods and "xbzrle" in methods and parallel_connections > 1:
        raise MigrationError(
            "compression xbzrle cannot be combined with parallel_connections > 1 (QEMU's multifd); "
            "choose one of them",
            option="compression",
        )
    if copy_storage not in COPY_STORAGE_CHOICES:
        raise MigrationError(
            "copy_storage must be one of %s, got '%s'" % (", ".join(COPY_STORAGE_CHOICES), copy_storage),
            option="copy_storage",
        )
    disks = None
    if migrate_disks is not None:
        if copy_storage == "none":
            raise MigrationError(
                "migrate_disks names the disks a storage copy takes along: set copy_storage to all or incremental",
                option="migrate_disks",
            )
        if not migrate_disks or not all(isinstance(d, str) and d.strip() for d in migrate_disks):
            raise MigrationError(
                "migrate_disks must list disk targets such as vda, got %r" % (list(migrate_disks),), option="migrate_disks"
            )
        disks = tuple(dict.fromkeys(d.strip() for d in migrate_disks))
    if migrate_uri is not None and "://" not in migrate_uri:
        raise MigrationError(
            "migrate_uri must look like tcp://ADDRESS[:PORT], got '%s'" % migrate_uri, option="migrate_uri"
        )
    return EngineOptions(
        strategy=strategy,
        max_downtime_ms=int(max_downtime_ms),
        bandwidth_mibps=int(bandwidth_mibps),
        switchover_bandwidth_mibps=int(switchover_bandwidth_mibps),
        postcopy_bandwidth_mibps=int(postcopy_bandwidth_mibps),
        timeout_s=int(timeout_s),
        allow_postcopy=bool(allow_postcopy),
        cap_vcpus=None if cap_vcpus is None else bool(cap_vcpus),
        parallel_connections=int(parallel_connections),
        compression=methods,
        tls=bool(tls),
        migrate_uri=migrate_uri,
        persist=bool(persist),
        stall_timeout_s=int(stall_timeout_s),
        max_transfer_ratio=float(max_transfer_ratio),
        shaking_iterations=int(shaking_iterations),
        copy_storage=copy_storage,
        migrate_disks=disks,
        allow_unsafe=bool(allow_unsafe),
        keep_source_disks=bool(keep_source_disks),
    )


# ---- the plan ------------------------------------------------------------


HOT_LAYER_POSTCOPY = "postcopy"
HOT_LAYER_THROTTLE = "throttle"
HOT_LAYER_NONE = "none"


@dataclasses.dataclass(frozen=True)
class MigrationPlan:
    """What the engine asks libvirt for, and how it treats the hot layer.

    strategy: precopy, layered or postcopy (auto resolved). hot_layer: what
    happens once shaking is detected: postcopy (switch), the throttle set
    (XBZRLE, auto-converge and the downtime ramp), or none (pre-copy alone:
    the guards decide). switch_after_first_pass: post-copy strategy, switch
    once the first pass is done whatever the rounds show. switch_after_mib:
    layered with post-copy, switch once this much memory has crossed (the
    model's cold layer; 0: as soon as the job runs), so each hot page crosses
    once; None leaves the switch to the shaking detector. copied_disks: the
    disk targets the storage copy takes along, before memory. memory_bandwidth_mibps:
    the cap to restore for memory once the disks are in sync, when the copy of
    several disks started with the cap shared among them. features: the pair's
    newer features (_features.pair_features), each with whether this plan uses it.
    cap_vcpus: a layered pre-copy predicted not to converge caps the guest's
    vCPUs from the first page where the source can (see _throttle).
    """

    strategy: str
    reason: str
    hot_layer: str
    flags: int
    params: t.Dict[str, t.Any]
    downtime_steps_ms: t.Tuple[int, ...]
    xbzrle_cache_mib: t.Optional[int]
    switch_after_first_pass: bool
    switch_after_mib: t.Optional[float] = None
    copied_disks: t.Tuple[str, ...] = ()
    memory_bandwidth_mibps: t.Optional[int] = None
    features: t.Dict[str, t.Dict[str, t.Any]] = dataclasses.field(default_factory=dict)
    cap_vcpus: bool = False

    @property
    def flag_names(self) -> t.List[str]:
        return [name for bit, name in FLAG_NAMES if self.flags & bit]

    def to_dict(self) -> t.Dict[str, t.Any]:
        return {
            "name": self.strategy,
            "reason": self.reason,
            "hot_layer": self.hot_layer,
            "flags": self.flag_names,
            "params": dict(self.params),
            "downtime_steps_ms": list(self.downtime_steps_ms),
            "xbzrle_cache_mib": self.xbzrle_cache_mib,
            "switch_after_first_pass": self.switch_after_first_pass,
            "switch_after_mib": None if self.switch_after_mib is None else round(self.switch_after_mib, 1),
            "copied_disks": list(self.copied_disks),
            "features": {name: dict(feature) for name, feature in self.features.items()},
            "cap_vcpus": self.cap_vcpus,
        }


def xbzrle_cache_mib(hot_set_mib: t.Optional[float], memory_mib: float) -> int:
    """Twice the hot set, a power of two (QEMU rounds the cache down to one), at most half the guest."""
    ceiling = max(XBZRLE_CACHE_MIN_MIB, int(memory_mib) // 2)
    wanted = XBZRLE_CACHE_HOT_SET_FACTOR * (hot_set_mib or 0.0)
    size = XBZRLE_CACHE_MIN_MIB
    while size < wanted and size * 2 <= ceiling:
        size *= 2
    return size


def downtime_steps(max_downtime_ms: int, ramp: bool) -> t.Tuple[int, ...]:
    """The downtime targets in order; a single step (the maximum) without a ramp."""
    if not ramp:
        return (max_downtime_ms,)
    steps: t.List[int] = []
    for fraction in DOWNTIME_RAMP_FRACTIONS:
        step = max(1, int(round(max_downtime_ms * fraction)))
        if not steps or step > steps[-1]:
            steps.append(step)
    return tuple(steps)


def plan_migration(
    options: EngineOptions,
    prediction: t.Optional[Prediction],
    memory_mib: float,
    hot_set_mib: t.Optional[float],
    copied_disks: t.Sequence[str] = (),
    auto_converge: t.Optional[t.Tuple[int, int]] = None,
    features: t.Optional[t.Mapping[str, t.Mapping[str, t.Any]]] = None,
) -> MigrationPlan:
    """Resolve the strategy and turn it into flags, parameters and a hot-layer treatment.

    prediction: the convergence model's choice for these options (None when
    the dirty rate was not measured). memory_mib: the guest's memory.
    hot_set_mib: the measured volume of pages rewritten within the
    measurement window, used to size the XBZRLE cache. copied_disks: the
    targets of the local disks a storage copy takes along (see disks_to_copy).
    auto_converge: (initial, increment) throttle percentages the model sized
    from the dirty rate (_convergence.auto_converge_percents); None keeps
    AUTO_CONVERGE_INITIAL_PERCENT and AUTO_CONVERGE_INCREMENT_PERCENT.
    features: what the pair of hosts offers (_features.pair_features); None
    (no probe, as for a resumed post-copy) uses none of the newer features.
    """
    strategy = options.strategy
    if strategy == "auto":
        if prediction is None:
            strategy = "layered"
            reason = (
                "No dirty-rate measurement (measure_dirty_rate_s=0), so layered: pre-copy while rounds shrink, "
                "with the hot layer handled once shaking shows in the live statistics."
            )
        elif prediction.strategy == "precopy" and prediction.converges:
            strategy = "precopy"
            reason = prediction.reason
        else:
            strategy = "postcopy" if prediction.strategy == "postcopy" else "layered"
            reason = prediction.reason
    else:
        reason = "strategy=%s was requested." % strategy

    flags = MIGRATE_LIVE | MIGRATE_PEER2PEER
    if options.persist:
        flags |= MIGRATE_PERSIST_DEST | MIGRATE_UNDEFINE_SOURCE
    params: t.Dict[str, t.Any] = {}
    memory_bandwidth = None
    if options.bandwidth_mibps:
        params["bandwidth"] = options.bandwidth_mibps
    if options.switchover_bandwidth_mibps and available(features, "switchover_bandwidth"):
        # Only what the caller guarantees: a cap is an upper bound, and a switchover judged at more
        # bandwidth than the link gives would overrun the downtime target.
        params["bandwidth.avail.switchover"] = options.switchover_bandwidth_mibps
    if copied_disks:
        flags |= COPY_STORAGE_FLAGS[options.copy_storage]
        params["migrate_disks"] = list(copied_disks)
        if options.bandwidth_mibps and len(copied_disks) > 1:
            # libvirt gives every disk's copy the whole cap, all at once: the cap is shared among
            # them, then given back to memory, which moves once the disks are in sync.
            params["bandwidth"] = max(1, options.bandwidth_mibps // len(copied_disks))
            memory_bandwidth = options.bandwidth_mibps
    if options.allow_unsafe:
        flags |= MIGRATE_UNSAFE
    if options.migrate_uri:
        params["migrate_uri"] = options.migrate_uri
    if options.tls:
        flags |= MIGRATE_TLS
    if options.parallel_connections > 1:
        flags |= MIGRATE_PARALLEL
        params["parallel.connections"] = options.parallel_connections

    compression = list(options.compression) if options.compression is not None else []
    xbzrle_cache = None
    if options.strategy == "precopy":
        hot_layer = HOT_LAYER_NONE
    elif options.allow_postcopy:
        hot_layer = HOT_LAYER_POSTCOPY
    else:
        hot_layer = HOT_LAYER_THROTTLE

    if hot_layer == HOT_LAYER_POSTCOPY:
        flags |= MIGRATE_POSTCOPY
        # The cap holds after the switch too unless post-copy has its own; QEMU's is unlimited by default.
        if options.postcopy_bandwidth_mibps or options.bandwidth_mibps:
            params["bandwidth.postcopy"] = options.postcopy_bandwidth_mibps or options.bandwidth_mibps
    elif hot_layer == HOT_LAYER_THROTTLE:
        # Auto-converge throttles only a guest that dirties faster than half of what is sent,
        # so it is a safety net for a predicted pre-copy too.
        flags |= MIGRATE_AUTO_CONVERGE
        initial, increment = auto_converge or (AUTO_CONVERGE_INITIAL_PERCENT, AUTO_CONVERGE_INCREMENT_PERCENT)
        params["auto_converge.initial"] = initial
        params["auto_converge.increment"] = increment
        # XBZRLE costs source CPU on every resent page, worth it for a predicted hot layer only;
        # multifd (parallel connections) cannot use it.
        if options.compression is None and strategy == "layered" and options.parallel_connections <= 1:
            compression = ["xbzrle"]
    switch_after_mib = None
    if hot_layer == HOT_LAYER_POSTCOPY and strategy == "layered" and prediction is not None \
            and prediction.strategy == "layered":
        # The model's layered course: its one pre-copy round is the cold layer, then the switch.
        switch_after_mib = prediction.round_mib[0] if prediction.round_mib else 0.0
    # A predicted pre-copy keeps the full downtime target from the start; the ramp is for the hot layer.
    ramp = hot_layer == HOT_LAYER_THROTTLE and strategy == "layered"
    if compression:
        flags |= MIGRATE_COMPRESSED
        params["compression"] = compression[0] if len(compression) == 1 else compression
        if "xbzrle" in compression:
            xbzrle_cache = xbzrle_cache_mib(hot_set_mib, memory_mib)
            params["compression.xbzrle.cache"] = xbzrle_cache * MIB
    used = {
        "postcopy_preempt": bool(flags & MIGRATE_POSTCOPY),
        "switchover_bandwidth": "bandwidth.avail.switchover" in params,
        "multifd_compression": bool(set(compression) & {"zlib", "zstd"}) and options.parallel_connections > 1,
    }
    # Preempt is libvirt's to turn on, so it is used only where offered; the others are used when asked
    # for (a pair without multifd compression then fails in libvirt, and `why` says what is missing).
    used["postcopy_preempt"] = used["postcopy_preempt"] and available(features, "postcopy_preempt")
    return MigrationPlan(
        strategy=strategy,
        reason=reason,
        hot_layer=hot_layer,
        flags=flags,
        params=params,
        downtime_steps_ms=downtime_steps(options.max_downtime_ms, ramp),
        xbzrle_cache_mib=xbzrle_cache,
        switch_after_first_pass=strategy == "postcopy",
        switch_after_mib=switch_after_mib,
        copied_disks=tuple(copied_disks),
        memory_bandwidth_mibps=memory_bandwidth,
        features={name: dict(feature, used=used.get(name, False)) for name, feature in (features or {}).items()},
        # Not refused (unset is for the caller to judge: cap_by_default), and only where the model sized a
        # throttle (pre-copy alone would not converge), and not during a storage copy: the guest would be
        # slowed for the whole disk copy, before memory moves.
        cap_vcpus=options.cap_vcpus is not False and ramp and prediction is not None
        and prediction.strategy == "layered" and not copied_disks,
    )


# ---- live statistics -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobSample:
    """One jobStats() reading of a running migration, in MiB and MiB/s.

    iteration: QEMU's count of dirty-bitmap syncs (1 during the first pass,
    n + 1 during pass n). dirty_rate_mibps: what the guest dirtied during the
    last pass, per second. throughput_mibps: what QEMU sends per second.
    disk_*: the storage copy, which runs before memory moves (0 without one).
    """

    elapsed_s: float
    iteration: int
    processed_mib: float
    remaining_mib: float
    total_mib: float
    dirty_rate_mibps: float
    throughput_mibps: float
    postcopy_requests: int = 0
    throttle_percent: t.Optional[int] = None
    job_elapsed_ms: t.Optional[int] = None
    disk_total_mib: float = 0.0
    disk_processed_mib: float = 0.0
    disk_remaining_mib: float = 0.0
    xbzrle_pages: int = 0
    xbzrle_bytes: int = 0
    xbzrle_overflow_pages: int = 0
    xbzrle_cache_misses: int = 0
    page_size: int = 4096


def _mib(value: t.Any) -> float:
    return float(value or 0) / MIB


def parse_job_stats(stats: t.Optional[t.Mapping[str, t.Any]], elapsed_s: float) -> t.Optional[JobSample]:
    """A JobSample from jobStats(), or None when no migration job is running (yet or any more)."""
    if not stats or stats.get("type", JOB_NONE) == JOB_NONE or "memory_processed" not in stats:
        return None
    page_size = stats.get("memory_page_size") or 4096
    return JobSample(
        elapsed_s=round(elapsed_s, 3),
        iteration=int(stats.get("memory_iteration") or 0),
        processed_mib=_mib(stats.get("memory_processed")),
        remaining_mib=_mib(stats.get("memory_remaining")),
        total_mib=_mib(stats.get("memory_total")),
        dirty_rate_mibps=_mib(int(stats.get("memory_dirty_rate") or 0) * page_size),
        throughput_mibps=_mib(stats.get("memory_bps")),
        postcopy_requests=int(stats.get("memory_postcopy_requests") or 0),
        throttle_percent=stats.get("auto_converge_throttle"),
        job_elapsed_ms=stats.get("time_elapsed"),
        disk_total_mib=_mib(stats.get("disk_total")),
        disk_processed_mib=_mib(stats.get("disk_processed")),
        disk_remaining_mib=_mib(stats.get("disk_remaining")),
        xbzrle_pages=int(stats.get("compression_pages") or 0),
        xbzrle_bytes=int(stats.get("compression_bytes") or 0),
        xbzrle_overflow_pages=int(stats.get("compression_overflow") or 0),
        xbzrle_cache_misses=int(stats.get("compression_cache_misses") or 0),
        page_size=int(page_size),
    )


@dataclasses.dataclass(frozen=True)
class XbzrleVerdict:
    """Whether XBZRLE pays: saved_fraction of what its cache hits would have cost sent whole."""

    paying: bool
    saved_fraction: float
    tried_pages: int
    overflow_pages: int
    cache_misses: int

    @property
    def detail(self) -> str:
        return (
            "XBZRLE %s: of %d cached pages it tried to encode, %d overflowed (changed too much) and the rest saved "
            "%.0f%% of what they would have cost whole; %d pages missed the cache"
            % ("pays" if self.paying else "does not pay", self.tried_pages, self.overflow_pages,
               100.0 * self.saved_fraction, self.cache_misses)
        )

    def to_dict(self) -> t.Dict[str, t.Any]:
        return {"paying": self.paying, "saved_percent": round(100.0 * self.saved_fraction, 1),
                "tried_pages": self.tried_pages, "overflow_pages": self.overflow_pages,
                "cache_misses": self.cache_misses}


def judge_xbzrle(sample: JobSample) -> t.Optional[XbzrleVerdict]:
    """The verdict on XBZRLE from one reading, None until it has tried XBZRLE_JUDGE_MIN_PAGES cached pages.

    Counters are the job's totals: the verdict covers everything XBZRLE did so far.
    """
    tried = sample.xbzrle_pages + sample.xbzrle_overflow_pages
    if tried < XBZRLE_JUDGE_MIN_PAGES:
        return None
    whole = tried * sample.page_size
    saved = max(sample.xbzrle_pages * sample.page_size - sample.xbzrle_bytes, 0)
    fraction = saved / whole
    return XbzrleVerdict(
        paying=fraction >= XBZRLE_PAYING_SAVED_FRACTION,
        saved_fraction=fraction,
        tried_pages=tried,
        overflow_pages=sample.xbzrle_overflow_pages,
        cache_misses=sample.xbzrle_cache_misses,
    )


@dataclasses.dataclass(frozen=True)
class IterationRecord:
    """A pre-copy pass as first seen by the monitor: what was left and how fast it moved."""

    iteration: int
    started_s: float
    remaining_mib: float
    dirty_rate_mibps: float
    throughput_mibps: float


class ShakingDetector:
    """Tells, pass by pass, when pre-copy has stopped making headway.

    Rules, each over the passes since the last detection (a detection starts
    a new window, so shaking that persists is reported again every `window`
    passes, and each report can take one more step of the hot layer):

    - model: the convergence model predicted no convergence; reported once,
      as soon as the first pass (the cold layer) is done;
    - dirty_outpaces_send: in two consecutive passes the guest dirtied at
      least as much per second as QEMU sent;
    - not_shrinking: over `window` passes, what was left at the start of a
      pass never fell below SHRINK_FRACTION of what was left before them.
    """

    def __init__(self, window: int, predicted_to_converge: t.Optional[bool]) -> None:
        self.window = window
        self.model_pending = predicted_to_converge is False
        self.records: t.List[IterationRecord] = []
        self.window_start = 0

    def observe(self, record: IterationRecord) -> t.Optional[t.Tuple[str, str]]:
        """Feed the first sight of a pass; return (rule, detail) when shaking is detected."""
        if record.iteration < 2:
            return None
        self.records.append(record)
        verdict = self._verdict()
        if verdict is not None:
            self.window_start = len(self.records)
        return verdict

    def _verdict(self) -> t.Optional[t.Tuple[str, str]]:
        if self.model_pending:
            self.model_pending = False
            return "model", "the convergence model predicted that pre-copy does not converge; first pass done"
        recent = self.records[self.window_start:]
        pair = recent[-2:]
        if len(pair) == 2 and all(r.throughput_mibps > 0 and r.dirty_rate_mibps >= r.throughput_mibps for r in pair):
            return "dirty_outpaces_send", (
                "passes %d and %d: the guest dirtied %.1f and %.1f MiB/s while %.1f and %.1f MiB/s were sent"
                % (pair[0].iteration - 1, pair[1].iteration - 1, pair[0].dirty_rate_mibps, pair[1].dirty_rate_mibps,
                   pair[0].throughput_mibps, pair[1].throughput_mibps)
            )
        # The reference is the pass just before the window, or the window's own first pass.
        history = self.records[max(self.window_start - 1, 0):]
        if len(history) > self.window:
            reference = history[-self.window - 1]
            lowest = min(r.remaining_mib for r in history[-self.window:])
            if lowest >= SHRINK_FRACTION * reference.remaining_mib:
                return "not_shrinking", (
                    "over %d passes what was left stayed at %.1f MiB or more (it was %.1f MiB at pass %d)"
                    % (self.window, lowest, reference.remaining_mib, reference.iteration - 1)
                )
        return None


# ---- the monitor loop ----------------------------------------------------


class MigrationJob(t.Protocol):
    """One migration as the monitor drives it; _migrate.LibvirtMigrationJob runs it on libvirt."""

    def start(self, flags: int, params: t.Mapping[str, t.Any],
              on_switch: t.Optional[t.Callable[[], None]] = None) -> None:
        """Start the migration in the background and return at once.

        on_switch: called (from another thread) as the source pauses for the final switch.
        """

    def wait(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for the migration call to return; True when it has."""

    def error(self) -> t.Optional[str]:
        """libvirt's message when the migration call failed, None when it succeeded or still runs."""

    def stats(self) -> t.Optional[t.Mapping[str, t.Any]]:
        """jobStats() of the source domain, None when it cannot be read."""

    def set_max_downtime(self, downtime_ms: int) -> None:
        """Set the downtime target of the running job."""

    def start_postcopy(self) -> None:
        """Switch the running job to post-copy."""

    def set_max_speed(self, bandwidth_mibps: int) -> None:
        """Set the memory bandwidth cap of the running job."""

    def set_compression_cache(self, cache_mib: int) -> None:
        """Resize the XBZRLE cache of the running job (QEMU drops what it held)."""

    def abort(self) -> None:
        """Abort the running job; the domain stays on its source."""

    def switching_over(self) -> bool:
        """True once the source paused for the final switch (the memory copy is over), until it resumes."""


@dataclasses.dataclass
class MonitorOutcome:
    """How the job ended.

    completed: the migration call returned success. aborted_by: the guard
    that aborted it (timeout, transfer, stall) or None. error: libvirt's
    message. postcopy_started: the switch happened (the guest ran on the
    destination before the end). hint: which option to change. throttle:
    how auto-converge slowed the guest ({max_percent, throttled_s}, None when
    it never did). xbzrle: the verdict on XBZRLE (XbzrleVerdict.to_dict()
    plus cache_shrunk_to_mib), None when it did not run or was not judged.
    """

    completed: bool
    error: t.Optional[str]
    aborted_by: t.Optional[str]
    hint: t.Optional[str]
    postcopy_started: bool
    still_running: bool
    last_sample: t.Optional[JobSample]
    shaking: t.List[t.Dict[str, t.Any]]
    downtime_ms: int
    throttle: t.Optional[t.Dict[str, t.Any]] = None
    xbzrle: t.Optional[t.Dict[str, t.Any]] = None


class Timeline:
    """The events of one task, in order, each with `t_s` (seconds since `started`) and `event` (its name)."""

    def __init__(self, clock: t.Callable[[], float], started: t.Optional[float] = None) -> None:
        self.clock = clock
        self.started = clock() if started is None else started
        self.events: t.List[t.Dict[str, t.Any]] = []

    def now(self) -> float:
        return round(self.clock() - self.started, 3)

    def add(self, name: str, **fields: t.Any) -> None:
        entry: t.Dict[str, t.Any] = {"t_s": self.now(), "event": name}
        entry.update(fields)
        self.events.append(entry)


ProgressHook = t.Callable[[str, t.Optional[JobSample]], None]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def progress_figures(sample: t.Optional[JobSample]) -> t.Dict[str, t.Any]:
    """percent, remaining_mib, transferred_mib and pass of a job reading; each None when the reading lacks it.

    percent is the share of guest memory not left to send, (total - remaining) / total, within 0..100:
    it reaches 100 as the job completes, whatever zero pages and resent pages do to the bytes sent.
    """
    if sample is None:
        return {"percent": None, "remaining_mib": None, "transferred_mib": None, "pass": None}
    percent = None
    if sample.total_mib > 0:
        percent = round(min(max(100.0 * (sample.total_mib - sample.remaining_mib) / sample.total_mib, 0.0), 100.0), 1)
    return {
        "percent": percent,
        "remaining_mib": round(sample.remaining_mib, 1),
        "transferred_mib": round(sample.processed_mib, 1),
        "pass": sample.iteration or None,
    }


def completed_figures(stats: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The progress figures of a completed job, from summarize_stats(): nothing remains."""
    transferred = stats.get("transferred_mib")
    return {
        "percent": 100.0,
        "remaining_mib": 0.0,
        "transferred_mib": transferred,
        "pass": stats.get("iterations"),
    }


class ProgressReporter:
    """The progress record of one task, handed to `sink` at each phase change and at most every `interval_s` within one.

    A record: domain, phase (one of PROGRESS_PHASES), the figures of the last
    job reading (progress_figures), elapsed_s since the timeline started and
    `updated`, the UTC time as ISO 8601. Without a sink nothing happens.
    Progress is advisory: an error of the sink is ignored.
    """

    def __init__(
        self,
        domain: str,
        sink: t.Optional[t.Callable[[t.Dict[str, t.Any]], t.Any]],
        timeline: Timeline,
        interval_s: float = PROGRESS_INTERVAL_S,
        utcnow: t.Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        self.domain = domain
        self.sink = sink
        self.timeline = timeline
        self.interval_s = interval_s
        self.utcnow = utcnow
        self.phase: t.Optional[str] = None
        self.figures = progress_figures(None)
        self.handed_at: t.Optional[float] = None
        # libvirt's event thread reports the switch while the monitor may report too.
        self.lock = threading.Lock()

    def __call__(self, phase: str, sample: t.Optional[JobSample] = None) -> None:
        """A ProgressHook: the task is in `phase`, and `sample` (when not None) is the job's latest reading."""
        if sample is not None:
            self.figures = progress_figures(sample)
        self.report(phase)

    def report(self, phase: str, figures: t.Optional[t.Mapping[str, t.Any]] = None) -> None:
        """Hand the record on now if the phase changed, else if `interval_s` passed since the last one."""
        if phase not in PROGRESS_PHASES:
            raise ValueError("unknown progress phase %r" % phase)
        with self.lock:
            if figures is not None:
                self.figures = dict(figures)
            if self.sink is None:
                return
            now = self.timeline.clock()
            if phase == self.phase and self.handed_at is not None and now - self.handed_at < self.interval_s:
                return
            self.phase, self.handed_at = phase, now
            record = progress_record(
                self.domain, phase, dict(self.figures, elapsed_s=round(now - self.timeline.started, 1)),
                self.utcnow().astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            try:
                self.sink(record)
            except Exception:  # progress is advisory: it never ends a migration
                pass

    @property
    def started(self) -> bool:
        """Whether a record was handed on."""
        return self.handed_at is not None


class _Monitor:
    def __init__(
        self,
        job: MigrationJob,
        plan: MigrationPlan,
        options: EngineOptions,
        predicted_to_converge: t.Optional[bool],
        timeline: Timeline,
    ) -> None:
        self.job = job
        self.plan = plan
        self.options = options
        self.clock = timeline.clock
        self.now = timeline.now
        self.event = timeline.add
        self.detector = ShakingDetector(options.shaking_iterations, predicted_to_converge)
        self.step = 0
        self.iteration = 0
        self.postcopy_started = False
        self.layered_switch_tried = False
        self.last_sample: t.Optional[JobSample] = None
        self.progress_mib = 0.0
        self.progress_at = 0.0
        self.shaking: t.List[t.Dict[str, t.Any]] = []
        self.downtime_applied = False
        self.ramping = False
        self.rules_seen: t.Set[str] = set()
        self.job_started = timeline.clock()
        self.disks_in_sync = False
        self.throttle_max_percent: t.Optional[int] = None
        self.throttled_s = 0.0
        self.xbzrle: t.Optional[t.Dict[str, t.Any]] = None

    def job_s(self) -> float:
        """Seconds since the migration job started: what timeout_s bounds."""
        return self.clock() - self.job_started

    @property
    def downtime_ms(self) -> int:
        return self.plan.downtime_steps_ms[self.step]

    def set_downtime(self, why: str) -> None:
        try:
            self.job.set_max_downtime(self.downtime_ms)
        except Exception as exc:  # the job may be ending; the timeline says so
            self.event("downtime", max_downtime_ms=self.downtime_ms, why=why, error=str(exc))
            return
        self.event("downtime", max_downtime_ms=self.downtime_ms, why=why)

    def on_sample(self, sample: JobSample) -> None:
        previous, self.last_sample = self.last_sample, sample
        if sample.throttle_percent:
            # The guest ran slowed from the reading before this one (or from this one on).
            self.throttle_max_percent = max(self.throttle_max_percent or 0, int(sample.throttle_percent))
            if previous is not None and previous.throttle_percent:
                self.throttled_s += sample.elapsed_s - previous.elapsed_s
        if self.plan.xbzrle_cache_mib is not None and self.xbzrle is None:
            self.judge_xbzrle(sample)
        if not self.downtime_applied:
            self.downtime_applied = True
            self.set_downtime("initial target")
        # The storage copy is progress too: memory does not move until the disks are in sync.
        sent_mib = sample.processed_mib + sample.disk_processed_mib
        if sent_mib > self.progress_mib:
            self.progress_mib = sent_mib
            self.progress_at = sample.elapsed_s
        if self.plan.copied_disks and not self.disks_in_sync and sample.disk_total_mib > 0 and (
            sample.disk_remaining_mib <= 0 or sample.processed_mib > 0
        ):
            self.on_disks_in_sync(sample)
        if self.plan.switch_after_mib is not None and not self.layered_switch_tried \
                and sample.iteration >= 1 and sample.processed_mib >= self.plan.switch_after_mib \
                and (self.disks_in_sync or not self.plan.copied_disks):
            # QEMU refuses the switch until its first pass runs (iteration 1). Tried once: should it
            # fail, the shaking detector still switches at the end of the pass.
            self.layered_switch_tried = True
            if self.plan.switch_after_mib > 0:
                self.switch_to_postcopy("layered: the %s MiB cold layer has crossed"
                                        % round(self.plan.switch_after_mib, 1))
            else:
                self.switch_to_postcopy("layered: no cold layer, the hot layer goes by post-copy from the start")
        if sample.iteration <= self.iteration:
            return
        self.iteration = sample.iteration
        record = IterationRecord(
            iteration=sample.iteration,
            started_s=sample.elapsed_s,
            remaining_mib=sample.remaining_mib,
            dirty_rate_mibps=sample.dirty_rate_mibps,
            throughput_mibps=sample.throughput_mibps,
        )
        self.event(
            "iteration",
            iteration=sample.iteration,
            remaining_mib=round(sample.remaining_mib, 1),
            processed_mib=round(sample.processed_mib, 1),
            dirty_rate_mibps=round(sample.dirty_rate_mibps, 1),
            throughput_mibps=round(sample.throughput_mibps, 1),
            throttle_percent=sample.throttle_percent,
        )
        if self.postcopy_started:
            return
        if self.plan.switch_after_first_pass and sample.iteration >= 2:
            self.switch_to_postcopy("strategy postcopy: the first pass is done")
            return
        verdict = self.detector.observe(record)
        if verdict is None:
            if self.ramping:
                self.ramp_step("the hot layer is still being resent: next step of the downtime ramp")
            return
        rule, detail = verdict
        self.shaking.append({"iteration": sample.iteration, "rule": rule, "detail": detail})
        # The timeline keeps the first report of each rule; repeats are in the shaking list.
        if rule not in self.rules_seen:
            self.rules_seen.add(rule)
            self.event("shaking", rule=rule, detail=detail)
        self.treat_hot_layer(rule)

    def on_disks_in_sync(self, sample: JobSample) -> None:
        self.disks_in_sync = True
        self.event("layer", layer="storage", action="disks in sync", disks=list(self.plan.copied_disks),
                   disk_mib=round(sample.disk_total_mib, 1))
        if self.plan.memory_bandwidth_mibps:
            try:
                self.job.set_max_speed(self.plan.memory_bandwidth_mibps)
            except Exception as exc:  # the job may be ending; memory then moved at the shared cap
                self.event("bandwidth", bandwidth_mibps=self.plan.memory_bandwidth_mibps, error=str(exc))
                return
            self.event("bandwidth", bandwidth_mibps=self.plan.memory_bandwidth_mibps,
                       why="the disks are in sync: memory gets the whole cap")

    def judge_xbzrle(self, sample: JobSample) -> None:
        verdict = judge_xbzrle(sample)
        if verdict is None:
            return
        self.xbzrle = dict(verdict.to_dict(), cache_shrunk_to_mib=None)
        cache_mib = self.plan.xbzrle_cache_mib or 0
        if verdict.paying or cache_mib <= XBZRLE_CACHE_MIN_MIB:
            self.event("layer", layer=3, action="xbzrle", paying=verdict.paying, detail=verdict.detail)
            return
        # XBZRLE cannot be turned off in a running job. Shrinking its cache gives the source host
        # that memory back, and the pages it dropped cross whole, as they did anyway.
        try:
            self.job.set_compression_cache(XBZRLE_CACHE_MIN_MIB)
        except Exception as exc:  # the job may be ending; the verdict stands
            self.event("layer", layer=3, action="xbzrle", paying=False, detail=verdict.detail, error=str(exc))
            return
        self.xbzrle["cache_shrunk_to_mib"] = XBZRLE_CACHE_MIN_MIB
        self.event("layer", layer=3, action="xbzrle", paying=False, detail=verdict.detail,
                   why="cache shrunk from %d to %d MiB: the source host gets the rest back"
                   % (cache_mib, XBZRLE_CACHE_MIN_MIB))

    def throttle(self) -> t.Optional[t.Dict[str, t.Any]]:
        if self.throttle_max_percent is None:
            return None
        return {"max_percent": self.throttle_max_percent, "throttled_s": round(self.throttled_s, 1)}

    def timeout_hint(self) -> str:
        """Every option that would change a timed-out pre-copy, compression included."""
        options = ["raise timeout_s", "set allow_postcopy=true", "raise max_downtime_ms or bandwidth_mibps"]
        if self.xbzrle is not None and not self.xbzrle["paying"]:
            options.append("set compression: [] (XBZRLE saved %s%% here: the hot pages change too much)"
                           % self.xbzrle["saved_percent"])
        elif self.plan.xbzrle_cache_mib is None and self.plan.hot_layer != HOT_LAYER_POSTCOPY:
            options.append("set compression: [xbzrle] if the hot pages change little between passes")
        return ", ".join(options[:-1]) + ", or " + options[-1]

    def treat_hot_layer(self, rule: str) -> None:
        if self.plan.hot_layer == HOT_LAYER_POSTCOPY:
            self.switch_to_postcopy("shaking detected (%s)" % rule)
        elif self.plan.hot_layer == HOT_LAYER_THROTTLE:
            # From now on each pass takes one step, up to max_downtime_ms: XBZRLE passes are short, so the
            # ramp tries each lower target for one pass rather than a whole detection window.
            self.ramping = True
            self.ramp_step("shaking detected (%s): next step of the downtime ramp" % rule)

    def ramp_step(self, why: str) -> None:
        if self.step + 1 >= len(self.plan.downtime_steps_ms):
            self.ramping = False
            return
        self.step += 1
        self.set_downtime(why)

    def switch_to_postcopy(self, why: str) -> None:
        try:
            self.job.start_postcopy()
        except Exception as exc:  # e.g. pre-copy just converged; the loop sees the outcome
            self.event("layer", layer=3, action="postcopy", why=why, error=str(exc))
            return
        self.postcopy_started = True
        self.event("layer", layer=3, action="postcopy", why=why)

    def guard(self) -> t.Optional[t.Tuple[str, str, str]]:
        """(guard, detail, hint) when the job must be aborted."""
        now = self.now()
        options = self.options
        if self.job_s() >= options.timeout_s:
            return "timeout", "the migration ran for %s s (timeout_s)" % options.timeout_s, self.timeout_hint()
        sample = self.last_sample
        if sample is not None and sample.total_mib > 0:
            limit = options.max_transfer_ratio * sample.total_mib
            if sample.processed_mib > limit:
                return "transfer", (
                    "%.0f MiB sent for a %.0f MiB guest, more than max_transfer_ratio=%s times its memory"
                    % (sample.processed_mib, sample.total_mib, options.max_transfer_ratio)
                ), "set allow_postcopy=true, raise max_downtime_ms, or raise max_transfer_ratio"
        if now - self.progress_at >= options.stall_timeout_s:
            return "stall", "nothing was sent for %s s (stall_timeout_s)" % options.stall_timeout_s, (
                "check the network between the hosts (migrate_uri) and the destination's libvirtd, "
                "or raise stall_timeout_s"
            )
        return None


def _phase(job: MigrationJob, postcopy_started: bool) -> str:
    """The progress phase of a running job."""
    if postcopy_started:
        return "postcopy"
    return "switching" if job.switching_over() else "migrating"


def monitor(
    job: MigrationJob,
    plan: MigrationPlan,
    options: EngineOptions,
    predicted_to_converge: t.Optional[bool],
    timeline: Timeline,
    on_progress: t.Optional[ProgressHook] = None,
) -> MonitorOutcome:
    """Start the job and watch it until it ends, applying the layers and the guards; events go to `timeline`.

    Every wait is bounded: the loop ends with the job, with an abort by a guard (plus
    ABORT_GRACE_S for the job to wind down), or, once post-copy runs (it
    cannot be aborted), POSTCOPY_GRACE_S after timeout_s.

    on_progress: called with phase "migrating" as the job starts, then at
    every poll while it runs with "migrating" or, after the switch,
    "postcopy", and the poll's reading (None when there was none).
    """
    state = _Monitor(job, plan, options, predicted_to_converge, timeline)
    state.progress_at = state.now()
    state.event("layer", layer=2, action="precopy", flags=plan.flag_names, params=_shown_params(plan.params))
    state.job_started = timeline.clock()
    if on_progress is not None:
        on_progress("migrating", None)
    # libvirt answers no statistics while it switches the guest over (seconds on a busy host): the
    # switch is told by libvirt's event, so that a watcher can give the copy's bandwidth to other moves.
    job.start(plan.flags, plan.params,
              on_switch=(lambda: on_progress("switching", None)) if on_progress is not None else None)
    aborted_by = hint = None
    finished = False
    while not finished:
        finished = job.wait(POLL_S)
        sample = parse_job_stats(job.stats(), state.now()) if not finished else None
        if sample is not None:
            state.on_sample(sample)
        if finished:
            break
        if on_progress is not None:
            on_progress(_phase(job, state.postcopy_started), sample)
        if state.postcopy_started:
            if state.job_s() >= options.timeout_s + POSTCOPY_GRACE_S:
                state.event("guard", guard="postcopy_timeout", detail=(
                    "post-copy still running %s s after timeout_s; it cannot be aborted" % POSTCOPY_GRACE_S))
                break
            continue
        tripped = state.guard()
        if tripped is None:
            continue
        aborted_by, detail, hint = tripped
        state.event("guard", guard=aborted_by, detail=detail)
        try:
            job.abort()
        except Exception as exc:  # the job may have ended meanwhile; wait() tells
            state.event("abort", error=str(exc))
        else:
            state.event("abort")
        finished = job.wait(ABORT_GRACE_S)
        break
    error = job.error() if finished else None
    completed = finished and error is None
    if completed:
        if aborted_by is not None:
            state.event("complete", note="the job completed before the abort took effect")
            aborted_by = hint = None
        else:
            state.event("complete")
    elif finished:
        state.event("failed", error=error)
    return MonitorOutcome(
        completed=completed,
        error=error,
        aborted_by=aborted_by,
        hint=hint,
        postcopy_started=state.postcopy_started,
        still_running=not finished,
        last_sample=state.last_sample,
        shaking=state.shaking,
        downtime_ms=state.downtime_ms,
        throttle=state.throttle(),
        xbzrle=state.xbzrle,
    )


def _shown_params(params: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    shown = dict(params)
    if "compression.xbzrle.cache" in shown:
        shown["compression.xbzrle.cache"] = "%d MiB" % (shown["compression.xbzrle.cache"] // MIB)
    if "destination_xml" in shown:
        shown["destination_xml"] = "the domain's XML from before the vCPU cap"
    return shown


# ---- figures -------------------------------------------------------------


def summarize_stats(
    completed: t.Optional[t.Mapping[str, t.Any]],
    last: t.Optional[JobSample],
    throttle: t.Optional[t.Mapping[str, t.Any]] = None,
    xbzrle: t.Optional[t.Mapping[str, t.Any]] = None,
) -> t.Dict[str, t.Any]:
    """The figures of a finished job.

    libvirt's completed statistics where it kept them, the monitor's last
    sample for the rest. `sources` says which figure came from where.
    throttle and xbzrle: the monitor's account of auto-converge and its
    verdict on XBZRLE (MonitorOutcome), kept as `throttle` and
    `compression.verdict`.
    """
    completed = completed or {}
    page_size = completed.get("memory_page_size") or 4096
    from_job: t.Dict[str, t.Any] = {
        "total_ms": completed.get("time_elapsed"),
        "downtime_ms": completed.get("downtime"),
        "setup_ms": completed.get("setup_time"),
        "transferred_mib": _rounded_mib(completed.get("memory_processed")),
        "memory_total_mib": _rounded_mib(completed.get("memory_total")),
        "memory_normal_mib": _rounded_mib(completed.get("memory_normal_bytes")),
        "zero_pages": completed.get("memory_constant"),
        "iterations": completed.get("memory_iteration"),
        "postcopy_requests": completed.get("memory_postcopy_requests"),
        "throughput_mibps": _rounded_mib(completed.get("memory_bps")),
        "dirty_rate_mibps": (
            _rounded_mib(int(completed["memory_dirty_rate"]) * page_size)
            if completed.get("memory_dirty_rate") is not None else None
        ),
        "auto_converge_throttle_percent": completed.get("auto_converge_throttle"),
        # libvirt reports 0 disk bytes for a migration without a storage copy: no copy, no figure.
        "disk_total_mib": _rounded_mib(completed.get("disk_total")) if completed.get("disk_total") else None,
        "disk_transferred_mib": _rounded_mib(completed.get("disk_processed")) if completed.get("disk_total") else None,
    }
    from_sample: t.Dict[str, t.Any] = {}
    if last is not None:
        from_sample = {
            "total_ms": last.job_elapsed_ms,
            "transferred_mib": round(last.processed_mib, 1),
            "memory_total_mib": round(last.total_mib, 1),
            "iterations": last.iteration,
            "postcopy_requests": last.postcopy_requests,
            "throughput_mibps": round(last.throughput_mibps, 1),
            "dirty_rate_mibps": round(last.dirty_rate_mibps, 1),
            "auto_converge_throttle_percent": last.throttle_percent,
            "disk_total_mib": round(last.disk_total_mib, 1) if last.disk_total_mib else None,
            "disk_transferred_mib": round(last.disk_processed_mib, 1) if last.disk_total_mib else None,
        }
    stats: t.Dict[str, t.Any] = {}
    sources: t.Dict[str, str] = {}
    for key, value in from_job.items():
        if value is not None:
            stats[key], sources[key] = value, "completed_job"
        elif from_sample.get(key) is not None:
            stats[key], sources[key] = from_sample[key], "last_sample"
        else:
            stats[key] = None
    stats["compression"] = None
    if "compression_cache" in completed:
        stats["compression"] = {
            "cache_mib": _rounded_mib(completed.get("compression_cache")),
            "compressed_mib": _rounded_mib(completed.get("compression_bytes")),
            "compressed_pages": completed.get("compression_pages"),
            "cache_misses": completed.get("compression_cache_misses"),
            "overflow_pages": completed.get("compression_overflow"),
        }
    if xbzrle is not None:
        stats["compression"] = dict(stats["compression"] or {}, verdict=dict(xbzrle))
    stats["throttle"] = dict(throttle) if throttle is not None else None
    stats["sources"] = sources
    return stats


def _rounded_mib(value: t.Any) -> t.Optional[float]:
    return None if value is None else round(_mib(value), 1)
