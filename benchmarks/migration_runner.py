# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Plain libvirt live migration with a sampled timeline, for the benchmarks.

Stdlib and libvirt-python only; no part of the collection. Benchmarks import it
as a sibling module (``import migration_runner``) and compare the collection's
behaviour with what plain libvirt does on its own.

Stable interface (other benchmarks rely on it; extend, do not rename):

``plain_migrate(src_uri, dst_uri, name, bandwidth_mibps=0, max_downtime_ms=300,
timeout_s=60, sample_period_s=0.2, auto_converge=None, postcopy_after_first_pass=False) -> dict``
    One live migration with flags LIVE | PEER2PEER | PERSIST_DEST |
    UNDEFINE_SOURCE, nothing else (no compression, no auto-converge, no
    post-copy) unless asked for what an operator types by hand:
    ``auto_converge=(initial, increment)`` adds AUTO_CONVERGE with those
    throttle percentages (``virsh migrate --auto-converge
    --auto-converge-initial I --auto-converge-increment N``), and
    ``postcopy_after_first_pass`` adds POSTCOPY with the cap kept after the
    switch and calls migrateStartPostCopy once the first pass is done
    (``virsh migrate --postcopy --postcopy-after-precopy --postcopy-bandwidth``).
    A job that switched to post-copy cannot be aborted: past ``timeout_s``
    the runner waits ``ABORT_GRACE_S`` more and then raises.
    ``bandwidth_mibps`` > 0 caps the migration stream (0 leaves
    libvirt's setting for the domain, unlimited by default);
    ``max_downtime_ms`` is set with migrateSetMaxDowntime before the start.
    ``dom.jobStats()`` is sampled every ``sample_period_s`` while the job
    runs; at ``timeout_s`` the job is aborted with ``abortJob()`` and the VM
    keeps running on its source. Keys of the result:

    - ``completed`` (bool), ``aborted`` (bool, the timeout fired),
      ``error`` (libvirt's message or None), ``running_on`` ("source",
      "destination" or None when the VM runs nowhere: a bug worth a look);
    - ``total_ms``, ``downtime_ms``, ``setup_ms`` from libvirt's completed
      job statistics (None when libvirt kept none);
    - ``transferred_mib`` (memory_processed), ``memory_normal_mib``
      (memory_normal_bytes), the same two in bytes (``memory_processed_bytes``,
      ``memory_normal_bytes``), ``memory_zero_pages`` and ``memory_zero_mib``
      (pages sent as "all zero", a few bytes each on the wire),
      ``iterations`` (QEMU's count of dirty-bitmap syncs: 1 during the first
      pass, k + 1 during pass k, live passes + 2 once completed),
      ``memory_bps`` (QEMU's measured throughput,
      bytes/s);
    - ``stats_source``: "destination" (completed incoming-job statistics,
      what libvirt 9.0 keeps after a successful peer-to-peer migration whose
      source domain was undefined), "source" (completed statistics of a
      failed job kept on the source) or "samples" (the last sample, when
      libvirt kept nothing: libvirt 9.0 keeps none for an aborted job);
    - ``completed_stats``: libvirt's raw completed statistics (dict or None);
    - ``timeline``: one dict per sample with ``t_s``, ``memory_processed_mib``,
      ``memory_remaining_mib``, ``iteration``, ``dirty_rate_mibps``
      (QEMU's rate of pages dirtied during the last pass), ``memory_bps``
      and ``throttle_percent`` (auto-converge's CPU throttle, None when off);
    - ``postcopy_switch_s``: when migrateStartPostCopy returned (None without a switch);
    - the arguments: ``name``, ``src_uri``, ``dst_uri``, ``bandwidth_mibps``,
      ``max_downtime_ms``, ``timeout_s``, ``wall_s`` (seconds this call took).

``qemu_rss_mib(uri, name) -> float or None``
    Host memory held by the domain's QEMU process (balloon statistic "rss"),
    None when the domain reports no balloon statistics.

``domain_running_on(uris, name) -> list``
    The URIs (of those given) where a domain of that name is running.
"""

from __future__ import annotations

import threading
import time
import typing as t

import libvirt

MIB = 1024 * 1024
MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)
# After abortJob() QEMU cancels at its next iteration; libvirt then tears down the
# incoming side. Bound the wait for the migrating thread to return.
ABORT_GRACE_S = 30.0
JOB_NONE = libvirt.VIR_DOMAIN_JOB_NONE


def _mib(value: t.Optional[float]) -> t.Optional[float]:
    return None if value is None else round(value / MIB, 3)


def _quiet_libvirt() -> None:
    # libvirt prints every error to stderr by default; the runner reports them itself.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _lookup(conn: t.Any, name: str) -> t.Optional[t.Any]:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


def _completed_stats(conn: t.Any, name: str) -> t.Optional[t.Dict[str, t.Any]]:
    dom = _lookup(conn, name)
    if dom is None:
        return None
    try:
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        return None
    # An empty dict or type NONE means libvirt kept no completed job.
    if not stats or stats.get("type", JOB_NONE) == JOB_NONE:
        return None
    return dict(stats)


def _sample(dom: t.Any, started: float) -> t.Optional[t.Dict[str, t.Any]]:
    try:
        stats = dom.jobStats()
    except libvirt.libvirtError:
        # The domain left the source between two samples (migration finished).
        return None
    if stats.get("type", JOB_NONE) == JOB_NONE or "memory_processed" not in stats:
        return None
    page_size = stats.get("memory_page_size", 4096)
    return {
        "t_s": round(time.monotonic() - started, 3),
        "memory_processed_mib": _mib(stats.get("memory_processed")),
        "memory_remaining_mib": _mib(stats.get("memory_remaining")),
        "iteration": stats.get("memory_iteration"),
        "dirty_rate_mibps": _mib(stats.get("memory_dirty_rate", 0) * page_size),
        "memory_bps": stats.get("memory_bps"),
        "throttle_percent": stats.get("auto_converge_throttle"),
    }


def domain_running_on(uris: t.Sequence[str], name: str) -> t.List[str]:
    """The URIs (of those given) where a domain called `name` is running."""
    found = []
    for uri in uris:
        conn = libvirt.open(uri)
        try:
            dom = _lookup(conn, name)
            if dom is not None and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                found.append(uri)
        finally:
            conn.close()
    return found


def qemu_rss_mib(uri: str, name: str) -> t.Optional[float]:
    """Host memory (MiB) the domain's QEMU process holds, from its balloon statistics."""
    _quiet_libvirt()
    conn = libvirt.open(uri)
    try:
        rss_kib = conn.lookupByName(name).memoryStats().get("rss")
    finally:
        conn.close()
    return None if rss_kib is None else round(rss_kib / 1024.0, 1)


def plain_migrate(
    src_uri: str,
    dst_uri: str,
    name: str,
    bandwidth_mibps: int = 0,
    max_downtime_ms: int = 300,
    timeout_s: float = 60,
    sample_period_s: float = 0.2,
    auto_converge: t.Optional[t.Tuple[int, int]] = None,
    postcopy_after_first_pass: bool = False,
) -> t.Dict[str, t.Any]:
    """Live-migrate `name` from src_uri to dst_uri with plain libvirt; see the module docstring."""
    if bandwidth_mibps < 0 or max_downtime_ms <= 0 or timeout_s <= 0 or sample_period_s <= 0:
        raise ValueError(
            "bandwidth_mibps must be >= 0 and max_downtime_ms, timeout_s, sample_period_s > 0 "
            "(got %s, %s, %s, %s)" % (bandwidth_mibps, max_downtime_ms, timeout_s, sample_period_s)
        )
    _quiet_libvirt()
    src = libvirt.open(src_uri)
    dst = libvirt.open(dst_uri)
    try:
        dom = src.lookupByName(name)
        if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            raise RuntimeError("domain %r is not running on %s" % (name, src_uri))
        dom.migrateSetMaxDowntime(int(max_downtime_ms), 0)
        params: t.Dict[str, t.Any] = {}
        flags = MIGRATE_FLAGS
        if bandwidth_mibps:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(bandwidth_mibps)
        if auto_converge is not None:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
            params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = int(auto_converge[0])
            params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = int(auto_converge[1])
        if postcopy_after_first_pass:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
            if bandwidth_mibps:
                params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = int(bandwidth_mibps)
        outcome: t.Dict[str, t.Any] = {"error": None}

        def migrate() -> None:
            try:
                dom.migrateToURI3(dst_uri, params, flags)
            except libvirt.libvirtError as exc:
                outcome["error"] = exc.get_error_message()

        timeline: t.List[t.Dict[str, t.Any]] = []
        worker = threading.Thread(target=migrate, name="migrate-%s" % name, daemon=True)
        started = time.monotonic()
        worker.start()
        aborted = False
        switched_s: t.Optional[float] = None
        while worker.is_alive():
            if not aborted and switched_s is None and time.monotonic() - started >= timeout_s:
                aborted = True
                try:
                    dom.abortJob()
                except libvirt.libvirtError as exc:
                    # The job ended between the check and the abort: nothing to stop.
                    outcome.setdefault("abort_error", exc.get_error_message())
            sample = _sample(dom, started) if not aborted else None
            if sample is not None:
                timeline.append(sample)
                if postcopy_after_first_pass and switched_s is None and (sample["iteration"] or 0) >= 2:
                    try:
                        dom.migrateStartPostCopy(0)
                        switched_s = round(time.monotonic() - started, 3)
                    except libvirt.libvirtError:
                        pass  # pre-copy may have just completed; the next sample tells
            worker.join(sample_period_s)
            if (aborted or switched_s is not None) and time.monotonic() - started >= timeout_s + ABORT_GRACE_S:
                raise RuntimeError(
                    "migration of %r did not end within %s s after its bound (%s)"
                    % (name, ABORT_GRACE_S, "post-copy" if switched_s is not None else "abortJob()")
                )
        wall_s = time.monotonic() - started

        completed = outcome["error"] is None
        stats = _completed_stats(dst, name) if completed else None
        stats_source = "destination" if stats else None
        if stats is None:
            stats = _completed_stats(src, name)
            stats_source = "source" if stats else "samples"
        running = domain_running_on([src_uri, dst_uri], name)
        result: t.Dict[str, t.Any] = {
            "name": name,
            "src_uri": src_uri,
            "dst_uri": dst_uri,
            "bandwidth_mibps": bandwidth_mibps,
            "max_downtime_ms": max_downtime_ms,
            "timeout_s": timeout_s,
            "completed": completed,
            "aborted": aborted,
            "error": outcome["error"],
            "running_on": ("destination" if dst_uri in running else "source" if src_uri in running else None),
            "wall_s": round(wall_s, 3),
            "postcopy_switch_s": switched_s,
            "stats_source": stats_source,
            "completed_stats": stats,
            "timeline": timeline,
        }
        last = timeline[-1] if timeline else {}
        source = stats or {}
        page_size = source.get("memory_page_size", 4096)
        zero_pages = source.get("memory_constant")
        result.update({
            "total_ms": source.get("time_elapsed"),
            "downtime_ms": source.get("downtime"),
            "setup_ms": source.get("setup_time"),
            "transferred_mib": _mib(source.get("memory_processed"))
            if stats else last.get("memory_processed_mib"),
            "memory_processed_bytes": source.get("memory_processed"),
            "memory_normal_mib": _mib(source.get("memory_normal_bytes")),
            "memory_normal_bytes": source.get("memory_normal_bytes"),
            "memory_zero_pages": zero_pages,
            "memory_zero_mib": _mib(zero_pages * page_size) if zero_pages is not None else None,
            "iterations": source.get("memory_iteration", last.get("iteration")),
            "memory_bps": source.get("memory_bps", last.get("memory_bps")),
        })
        return result
    finally:
        src.close()
        dst.close()
