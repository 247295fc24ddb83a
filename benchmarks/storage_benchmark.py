# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Storage migration: the engine against plain ``virsh migrate --copy-storage-all``, side by side.

A guest whose qcow2 disk lives only in its host's own pool ('local') moves
live to another host with a copy of the disk, two ways:

- ``virsh``: ``virsh -c SRC migrate --live --p2p --persistent --undefinesource
  --copy-storage-all NAME DST`` as a subprocess, nothing else set;
- ``live_migrate``: the collection's ``run_live_migration`` (what
  ``strata.migration.live_migrate`` runs) with copy_storage=all and the
  module's defaults otherwise: strategy auto, no bandwidth cap, a 1 s
  dirty-rate measurement, balloon compaction before and restore after, and
  the source's stale image deleted after success.

Each measurement uses a fresh guest (256 MiB of memory, a 1 GiB disk with
768 MiB written before boot, workload ``disk:16:50``: checksummed, numbered
blocks written with O_DSYNC and read back); the modes alternate. After each
move the guest's workload reads its blocks back (``strata-lab guest
check-disk``): a lost or torn block fails the benchmark. Reported per run and
as medians: the call's wall time, libvirt's job time, downtime, MiB sent
(disk + memory), the destination image's size, whether the source's image
was left behind, and the live_migrate / virsh ratios.

Run from the repository root, with the lab up (or `make bench`):

    .venv/bin/python benchmarks/storage_benchmark.py [--quick]

Writes benchmarks/results/storage.json, storage.md and storage.png (with
--quick: one run per mode, a 256 MiB disk with 192 MiB written, under
results/tmp/). Exits 1 when a move failed or a disk check found a lost or
torn block, after writing the results.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import libvirt

import labkit
import migration_runner
from labkit import host_uri
from plot import plt

labkit.use_collection()
# pylint: disable=wrong-import-position
from ansible_collections.strata.migration.plugins.module_utils._engine import engine_options  # noqa: E402
from ansible_collections.strata.migration.plugins.module_utils._libvirt import (  # noqa: E402
    LibvirtClient,
    StrataError,
    ensure_event_loop,
    redact_uri,
)
from ansible_collections.strata.migration.plugins.module_utils._migrate import (  # noqa: E402
    COMPLETED_EVENT_WAIT_S,
    run_live_migration,
)
from ansible_collections.strata.migration.plugins.module_utils._preflight import preflight_options  # noqa: E402

# pylint: enable=wrong-import-position

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODES = ("virsh", "live_migrate")
# The lab's per-host pool: the image exists on the source host only.
POOL = "local"
DISK_FORMAT = "qcow2"
# (disk MiB, MiB written before boot): the full run, and --quick so CI stays short.
FULL_DISK = (1024, 768)
QUICK_DISK = (256, 192)
# Seconds between the guest's ready marker and the move: the disk workload has written a few passes.
SETTLE_S = 3.0
CONNECT_TIMEOUT_S = 30
# The module's default; the engine measures before it plans.
MEASURE_DIRTY_RATE_S = 1
# check-disk waits for two fresh heartbeats (5 s apart); this bounds the wait.
CHECK_DISK_TIMEOUT_S = 60
MIB = 1024 * 1024
# key, label, format: medians per mode, and live_migrate / virsh for each.
METRICS = (
    ("wall_s", "wall time of the call (s)", "%.2f"),
    ("job_ms", "libvirt job time (ms)", "%.0f"),
    ("downtime_ms", "downtime (ms)", "%.0f"),
    ("sent_mib", "MiB sent (disk + memory)", "%.1f"),
    ("disk_mib", "disk MiB sent", "%.1f"),
    ("memory_mib", "memory MiB sent", "%.1f"),
    ("dst_image_mib", "destination image allocation (MiB)", "%.1f"),
)


# ---- the lab ----------------------------------------------------------------


def volume_name(name: str) -> str:
    return "%s.%s" % (name, DISK_FORMAT)


def image_mib(uri: str, volume: str) -> t.Optional[float]:
    """Allocation (MiB) of a volume of the pool on that host, None when the pool has no such volume."""
    conn = libvirt.open(uri)
    try:
        pool = conn.storagePoolLookupByName(POOL)
        pool.refresh(0)
        try:
            return round(pool.storageVolLookupByName(volume).info()[2] / MIB, 1)
        except libvirt.libvirtError:
            return None
    finally:
        conn.close()


def delete_image_quietly(uri: str, volume: str) -> None:
    subprocess.run(["virsh", "-c", uri, "vol-delete", "--pool", POOL, volume], check=False, capture_output=True, text=True)


def remove_guest(name: str, uris: t.Sequence[str]) -> None:
    """The guest wherever it is, and an image of its name in either host's pool (a copy's leftovers)."""
    labkit.delete_guest(name)
    for uri in uris:
        delete_image_quietly(uri, volume_name(name))


def create_guest(name: str, args: argparse.Namespace, uris: t.Sequence[str]) -> None:
    remove_guest(name, uris)
    try:
        labkit.lab_retrying(
            "guest", "create", name, "--host", args.src, "--memory-mib", str(args.memory_mib),
            "--disk-mib", str(args.disk_mib), "--disk-pool", POOL, "--disk-format", DISK_FORMAT,
            "--disk-fill-mib", str(args.disk_fill_mib), "--workload", args.workload,
        )
    except SystemExit:
        remove_guest(name, uris)  # whatever a failed create left behind
        raise


def check_disk(name: str) -> t.Dict[str, t.Any]:
    """strata-lab guest check-disk's report; it exits 1 on a lost or torn block and still prints the report."""
    done = subprocess.run(
        [labkit.LAB_TOOL, "guest", "check-disk", name, "--timeout-s", str(CHECK_DISK_TIMEOUT_S)],
        check=False, capture_output=True, text=True,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line), exit_code=done.returncode)
    last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"intact": None, "exit_code": done.returncode, "error": last[0]}


# ---- the two modes ----------------------------------------------------------


def _mib(value: t.Optional[float]) -> t.Optional[float]:
    return None if value is None else round(value / MIB, 1)


def _destination_completed_stats(uri: str, name: str) -> t.Optional[t.Dict[str, t.Any]]:
    with LibvirtClient(uri, CONNECT_TIMEOUT_S) as dest:
        try:
            return dict(dest.conn.lookupByName(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
        except libvirt.libvirtError:
            return None


def run_virsh(args: argparse.Namespace, src_uri: str, dst_uri: str, name: str) -> t.Dict[str, t.Any]:
    """virsh migrate as a subprocess; libvirt's figures from the source's job-completed event.

    The destination keeps completed statistics too, but without the disk
    figures; the source's event has both, and is where the engine reads them.
    """
    argv = ["virsh", "-c", src_uri, "migrate", "--live", "--p2p", "--persistent", "--undefinesource",
            "--copy-storage-all", name, dst_uri]
    event_stats: t.Dict[str, t.Any] = {}
    event_seen = threading.Event()

    def on_job_completed(_conn: t.Any, _dom: t.Any, stats: t.Mapping[str, t.Any], _opaque: t.Any) -> None:
        event_stats.update(stats)
        event_seen.set()

    error = None
    with LibvirtClient(src_uri, CONNECT_TIMEOUT_S) as source:
        callback = source.conn.domainEventRegisterAny(
            source.conn.lookupByName(name), libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_job_completed, None,
        )
        try:
            started = time.monotonic()
            try:
                done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=args.timeout_s)
                if done.returncode:
                    error = (done.stderr or done.stdout).strip() or "virsh exited with status %d" % done.returncode
            except subprocess.TimeoutExpired:
                error = "virsh migrate did not return within %g s; the job was aborted" % args.timeout_s
                subprocess.run(["virsh", "-c", src_uri, "domjobabort", name], check=False, capture_output=True, text=True)
            wall_s = time.monotonic() - started
            if error is None:
                event_seen.wait(COMPLETED_EVENT_WAIT_S)
        finally:
            try:
                source.conn.domainEventDeregisterAny(callback)
            except libvirt.libvirtError:
                pass  # the connection went with the domain's job; nothing left to deregister
    dest_stats = _destination_completed_stats(dst_uri, name) if error is None else None
    stats, stats_source = (event_stats, "source_job_completed_event") if event_stats else (
        dest_stats or {}, "destination_completed_job" if dest_stats else None)
    return {
        "completed": error is None,
        "error": error,
        "command": " ".join(shlex.quote(redact_uri(a)) for a in argv),
        "wall_s": round(wall_s, 3),
        "job_ms": stats.get("time_elapsed"),
        "downtime_ms": stats.get("downtime"),
        "memory_mib": _mib(stats.get("memory_processed")),
        "disk_mib": _mib(stats.get("disk_processed")) if stats.get("disk_total") else None,
        "disk_total_mib": _mib(stats.get("disk_total")) if stats.get("disk_total") else None,
        "stats_source": stats_source,
        "completed_stats": event_stats or None,
        "destination_completed_stats": dest_stats,
    }


def _event_s(timeline: t.Sequence[t.Mapping[str, t.Any]], event: str, **match: t.Any) -> t.Optional[float]:
    for entry in timeline:
        if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
            return float(entry["t_s"])
    return None


def _picked(source: t.Optional[t.Mapping[str, t.Any]], keys: t.Sequence[str]) -> t.Optional[t.Dict[str, t.Any]]:
    return None if source is None else {key: source.get(key) for key in keys}


def run_engine(args: argparse.Namespace, src_uri: str, dst_uri: str, name: str) -> t.Dict[str, t.Any]:
    options = engine_options(copy_storage="all", timeout_s=int(args.timeout_s))
    checks = preflight_options(
        name, dst_uri, measure_dirty_rate_s=MEASURE_DIRTY_RATE_S, compaction_restore=True, copy_storage="all",
    )
    error = None
    started = time.monotonic()
    with LibvirtClient(src_uri, CONNECT_TIMEOUT_S) as source, LibvirtClient(dst_uri, CONNECT_TIMEOUT_S) as dest:
        try:
            result = run_live_migration(source, dest, name, options, checks)
        except StrataError as exc:
            result, error = dict(exc.details), str(exc)
    wall_s = time.monotonic() - started
    stats = result.get("stats") or {}
    plan = result.get("strategy") or {}
    timeline = result.get("timeline") or []
    sources = stats.get("sources") or {}
    # Timeline times count from the start of the call; libvirt's job starts with the pre-copy layer and
    # "complete" is when the migration call returned.
    job_start_s = _event_s(timeline, "layer", layer=2)
    returned_s = _event_s(timeline, "complete")
    phases_s = None
    if job_start_s is not None and returned_s is not None:
        phases_s = {
            "before_job": round(job_start_s, 3),
            "migration_call": round(returned_s - job_start_s, 3),
            "after_call": round(wall_s - returned_s, 3),
        }
    return {
        "completed": error is None,
        "error": error,
        "wall_s": round(wall_s, 3),
        "job_ms": stats.get("total_ms"),
        "downtime_ms": stats.get("downtime_ms"),
        "memory_mib": stats.get("transferred_mib"),
        "disk_mib": stats.get("disk_transferred_mib"),
        "disk_total_mib": stats.get("disk_total_mib"),
        "stats_source": sources.get("disk_transferred_mib"),
        "stats_sources": sources,
        "phases_s": phases_s,
        "strategy": plan.get("name"),
        "flags": plan.get("flags"),
        "features_used": labkit.features_used(result),
        "removed_volumes": result.get("removed_volumes") or [],
        "compaction": _picked(result.get("compaction"), ("before_mib", "target_mib", "after_mib", "elapsed_s")),
        "restore": _picked(result.get("restore"), ("before_mib", "after_mib", "elapsed_s", "reached_target")),
        "timeline": timeline,
    }


def measure(mode: str, run: int, args: argparse.Namespace, src_uri: str, dst_uri: str) -> t.Dict[str, t.Any]:
    name = "sb-%s-%d" % (mode.replace("_", "-"), run)
    volume = volume_name(name)
    uris = (src_uri, dst_uri)
    create_guest(name, args, uris)
    try:
        time.sleep(SETTLE_S)
        src_image_mib = image_mib(src_uri, volume)
        moved = run_virsh(args, src_uri, dst_uri, name) if mode == "virsh" else run_engine(args, src_uri, dst_uri, name)
        running = migration_runner.domain_running_on(uris, name)
        running_on = "destination" if dst_uri in running else "source" if src_uri in running else None
        # Measured the same way for both modes, before anything here deletes it.
        source_image_left = image_mib(src_uri, volume) is not None
        dst_image_mib = image_mib(dst_uri, volume) if running_on == "destination" else None
        removed_by, removal_error = None, None
        if mode == "live_migrate" and any(v.get("host") == "source" for v in moved.get("removed_volumes", [])):
            removed_by = "engine"
        elif source_image_left and running_on == "destination":
            # libvirt leaves the source's copy behind; without this the pool fills up run after run.
            done = subprocess.run(["virsh", "-c", src_uri, "vol-delete", "--pool", POOL, volume],
                                  check=False, capture_output=True, text=True)
            removed_by = "benchmark" if done.returncode == 0 else None
            removal_error = (done.stderr or done.stdout).strip() if done.returncode else None
        integrity = check_disk(name) if running_on else {"intact": None, "error": "the guest runs on neither host"}
    finally:
        remove_guest(name, uris)
    sent_mib = None
    if moved["disk_mib"] is not None and moved["memory_mib"] is not None:
        sent_mib = round(moved["disk_mib"] + moved["memory_mib"], 1)
    return dict({
        "mode": mode,
        "run": run,
        "guest": name,
        "running_on": running_on,
        "sent_mib": sent_mib,
        "src_image_mib": src_image_mib,
        "dst_image_mib": dst_image_mib,
        "source_image_left": source_image_left,
        "source_image_removed_by": removed_by,
        "source_image_removal_error": removal_error,
        "integrity": {key: integrity.get(key) for key in (
            "intact", "disk_errors", "disk_writes", "disk_checks", "boots_seen", "error_lines", "exit_code", "error",
        ) if key in integrity},
    }, **moved)


def failures_of(row: t.Mapping[str, t.Any]) -> t.List[str]:
    """What went wrong in one measurement; an empty list when the move completed and the disk read back intact."""
    found = []
    if not row["completed"]:
        found.append("%s: the move failed: %s" % (row["guest"], row["error"]))
    elif row["running_on"] != "destination":
        found.append("%s: the move reported success but the guest runs on %s" % (row["guest"], row["running_on"]))
    integrity = row["integrity"]
    if integrity.get("intact") is not True:
        found.append("%s: disk check: %s" % (row["guest"], integrity.get("error") or "%s disk error(s): %s" % (
            integrity.get("disk_errors"), "; ".join((integrity.get("error_lines") or [])[:3]))))
    if len(integrity.get("boots_seen") or []) > 1:
        found.append("%s: the guest booted %d times" % (row["guest"], len(integrity["boots_seen"])))
    return found


# ---- summary and report -----------------------------------------------------


def summarize(measurements: t.Sequence[t.Mapping[str, t.Any]]) -> t.Tuple[t.List[t.Dict[str, t.Any]], t.Dict[str, t.Any]]:
    """Per mode: counts and medians of the completed runs; and live_migrate / virsh of each median."""
    results = []
    for mode in MODES:
        runs = [m for m in measurements if m["mode"] == mode]
        completed = [r for r in runs if r["completed"]]
        results.append({
            "mode": mode,
            "runs_total": len(runs),
            "runs_completed": len(completed),
            "runs_intact": sum(1 for r in runs if r["integrity"].get("intact") is True),
            "source_image_left": sum(1 for r in runs if r["source_image_left"]),
            "source_image_removed_by": sorted({r["source_image_removed_by"] for r in runs if r["source_image_removed_by"]}),
            "medians": {key: labkit.median(r[key] for r in completed) for key, _label, _fmt in METRICS},
            "src_image_mib_median": labkit.median(r["src_image_mib"] for r in runs),
            "disk_total_mib_median": labkit.median(r["disk_total_mib"] for r in completed),
            # The engine only: where its wall time went.
            "phases_s_median": {
                phase: labkit.median((r.get("phases_s") or {}).get(phase) for r in completed)
                for phase in ("before_job", "migration_call", "after_call")
            } if mode == "live_migrate" else None,
            "runs": list(runs),
        })
    base, engine = results[0]["medians"], results[1]["medians"]
    ratios = {
        key: round(engine[key] / base[key], 3) if base[key] and engine[key] is not None else None
        for key, _label, _fmt in METRICS
    }
    return results, ratios


def _disk_workload_mib(workload: str) -> t.Optional[int]:
    for part in workload.split(","):
        fields = part.split(":")
        if fields[0] == "disk" and len(fields) == 3:
            return int(fields[1])
    return None


def _per_run(record: t.Mapping[str, t.Any], key: str) -> str:
    return ", ".join(labkit.fmt(row[key]) for row in sorted(record["runs"], key=lambda row: row["run"]))


def _downtime_note(virsh: t.Mapping[str, t.Any], engine: t.Mapping[str, t.Any]) -> str:
    """What the per-run downtimes say beyond the medians: the 300 ms target, and a spread larger than the gap."""
    per_mode = [[r["downtime_ms"] for r in record["runs"] if r["downtime_ms"] is not None] for record in (virsh, engine)]
    if not all(per_mode):
        return ""
    everything = per_mode[0] + per_mode[1]
    within = sum(1 for value in everything if value <= 300)
    note = " %s stayed within the 300 ms maximum downtime." % (
        "All %d runs" % len(everything) if within == len(everything) else "%d of the %d runs" % (within, len(everything)))
    gap = abs(engine["medians"]["downtime_ms"] - virsh["medians"]["downtime_ms"])
    if max(max(values) - min(values) for values in per_mode) >= gap:
        note += " The runs of one mode spread wider than the gap between the two medians, so the downtime ratio says little."
    return note


def _source_image(row: t.Mapping[str, t.Any]) -> str:
    if not row["source_image_left"]:
        return "deleted by the engine" if row["source_image_removed_by"] == "engine" else "gone"
    if row["source_image_removed_by"] == "benchmark":
        return "left; deleted by the benchmark"
    return "left"


def _runs(report: t.Mapping[str, t.Any]) -> t.List[t.Mapping[str, t.Any]]:
    """Every measurement, in the order they ran."""
    rows = [row for record in report["results"] for row in record["runs"]]
    return sorted(rows, key=lambda row: (row["run"], MODES.index(row["mode"])))


def render_markdown(report: t.Mapping[str, t.Any]) -> str:
    params, env = report["parameters"], report["environment"]
    by_mode = {record["mode"]: record for record in report["results"]}
    virsh, engine = by_mode["virsh"], by_mode["live_migrate"]
    workload_mib = _disk_workload_mib(params["workload"])
    lines = ["# Storage migration: the engine against plain virsh", ""]
    if report["failures"]:
        lines += ["**FAILED: %d problem(s); the figures below include only the moves that completed.**" % len(
            report["failures"]), ""] + ["- %s" % failure for failure in report["failures"]] + [""]
    lines += [
        "`benchmarks/storage_benchmark.py`, %s. A %d MiB guest with a %d MiB qcow2 disk in %s's own pool '%s' "
        "(%d MiB written into it before boot; workload `%s`) moved live %s -> %s with a copy of its disk; a fresh "
        "guest per measurement, the two modes alternating; %d run(s) of each, medians of the completed runs below."
        % (env["date"], params["memory_mib"], params["disk_mib"], params["src"], POOL, params["disk_fill_mib"],
           params["workload"], params["src"], params["dst"], params["runs"]),
        "",
        "- `virsh`: `virsh -c SRC migrate --live --p2p --persistent --undefinesource --copy-storage-all NAME DST`, "
        "nothing else set (no bandwidth cap, libvirt's default maximum downtime of 300 ms).",
        "- `live_migrate`: `run_live_migration` (what `strata.migration.live_migrate` runs) with copy_storage=all "
        "and the module's defaults otherwise: strategy auto, no bandwidth cap, max downtime 300 ms, a %d s "
        "dirty-rate measurement and balloon compaction before the move, the balloon restored on the destination "
        "and the source's image deleted after it." % MEASURE_DIRTY_RATE_S,
        "",
        "Wall time is the whole call: for virsh the subprocess (it connects, migrates, returns); for the engine "
        "also its pre-flight checks, the measurement, compaction, restore and the image deletion. Job time, "
        "downtime and MiB sent are libvirt's figures for the migration job on the source (time_elapsed, downtime, "
        "disk_processed and memory_processed of its job-completed event, the same figures for both modes); the "
        "job covers the disk copy and the memory passes. The ratio column is live_migrate's median divided by "
        "virsh's: below 1 the engine took less time, sent less or paused the guest for less; above 1, more.",
        "",
        "| | virsh | live_migrate | live_migrate / virsh |",
        "|---|---:|---:|---:|",
        "| moves completed | %d/%d | %d/%d | |" % (
            virsh["runs_completed"], virsh["runs_total"], engine["runs_completed"], engine["runs_total"]),
        "| disk read back intact afterwards | %d/%d | %d/%d | |" % (
            virsh["runs_intact"], virsh["runs_total"], engine["runs_intact"], engine["runs_total"]),
    ]
    for key, label, fmt in METRICS:
        ratio = report["live_migrate_over_virsh"][key]
        lines.append("| %s | %s | %s | %s |" % (
            label, labkit.fmt(virsh["medians"][key], fmt), labkit.fmt(engine["medians"][key], fmt),
            "%.2fx" % ratio if ratio is not None else "-",
        ))
    lines += [
        "| source image left on %s after the move | %d/%d | %d/%d | |" % (
            params["src"], virsh["source_image_left"], virsh["runs_total"], engine["source_image_left"],
            engine["runs_total"]),
        "",
        "Downtime per run: virsh %s ms; live_migrate %s ms.%s" % (
            _per_run(virsh, "downtime_ms"), _per_run(engine, "downtime_ms"), _downtime_note(virsh, engine)),
        "",
        "Disk copy: libvirt counted %s MiB of disk to copy (disk_total, median) for a %d MiB disk whose source "
        "image had %s MiB allocated; the destination image had %s (virsh) and %s (live_migrate) MiB allocated "
        "afterwards." % (
            labkit.fmt(labkit.median([virsh["disk_total_mib_median"], engine["disk_total_mib_median"]]), "%.1f"),
            params["disk_mib"], labkit.fmt(labkit.median([virsh["src_image_mib_median"], engine["src_image_mib_median"]]), "%.1f"),
            labkit.fmt(virsh["medians"]["dst_image_mib"], "%.1f"), labkit.fmt(engine["medians"]["dst_image_mib"], "%.1f")),
        "",
        "Where the engine's wall time went (medians): %s s before libvirt's job started (pre-flight checks, the "
        "dirty-rate measurement, compaction), %s s in the migration call (virsh's whole call: %s s) and %s s after "
        "it returned (balloon restore, checks of where the domain runs, deleting the source image)." % (
            labkit.fmt(engine["phases_s_median"]["before_job"], "%.2f"),
            labkit.fmt(engine["phases_s_median"]["migration_call"], "%.2f"),
            labkit.fmt(virsh["medians"]["wall_s"], "%.2f"), labkit.fmt(engine["phases_s_median"]["after_call"], "%.2f")),
        "",
        "Source image: libvirt leaves the source's image in %s's pool after a move with --copy-storage-all and "
        "--undefinesource (the domain is gone from %s, its disk is not); the benchmark deleted it after each virsh "
        "run with `virsh -c SRC vol-delete --pool %s NAME.qcow2`. The engine deletes it itself once the domain "
        "runs and is defined on the destination only (RV removed_volumes; keep_source_disks=true keeps it)."
        % (params["src"], params["src"], POOL),
        "",
        "Integrity: after each move `strata-lab guest check-disk` waited for the guest's workload to read back "
        "every block it had written %s; a lost or torn block fails the benchmark. It does not compare the data "
        "written before boot." % ("in the disk's first %d MiB" % workload_mib if workload_mib else "in this boot"),
        "",
        "## Every measurement",
        "",
        "| mode | run | completed | disk intact | wall s | job ms | downtime ms | disk MiB | memory MiB | sent MiB "
        "| source image MiB | destination image MiB | source image after | strategy | features used |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for row in _runs(report):
        intact = row["integrity"].get("intact")
        lines.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            row["mode"], row["run"], "yes" if row["completed"] else "no",
            {True: "yes", False: "NO", None: "not checked"}[intact],
            labkit.fmt(row["wall_s"], "%.2f"), labkit.fmt(row["job_ms"]), labkit.fmt(row["downtime_ms"]),
            labkit.fmt(row["disk_mib"], "%.1f"), labkit.fmt(row["memory_mib"], "%.1f"), labkit.fmt(row["sent_mib"], "%.1f"),
            labkit.fmt(row["src_image_mib"], "%.1f"), labkit.fmt(row["dst_image_mib"], "%.1f"), _source_image(row),
            row.get("strategy") or "-",
            labkit.features_cell(row.get("features_used") or [], engine=row["mode"] == "live_migrate"),
        ))
    lines += [""] + labkit.features_lines(env)
    lines += [
        "",
        labkit.environment_sentence(env),
        "",
        "Made with: `%s` (%.0f s)" % (report["command"], report["elapsed_s"]),
        "",
    ]
    if report.get("figure"):
        lines[-1:-1] = ["", "![time and MiB sent per mode](%s)" % report["figure"]]
    return "\n".join(lines)


def write_figure(report: t.Mapping[str, t.Any], path: Path) -> None:
    """Two panels, bars of the medians with each completed run as a dot: time (s), and MiB sent (disk + memory)."""
    records = report["results"]
    figure, (time_axes, sent_axes) = plt.subplots(1, 2, figsize=(9, 4.5))
    width = 0.38
    for offset, key, label, color in ((-width / 2, "job_ms", "libvirt job", "tab:blue"),
                                      (width / 2, "wall_s", "whole call", "tab:orange")):
        scale = 1000.0 if key == "job_ms" else 1.0
        for position, record in enumerate(records):
            median = record["medians"][key]
            x = position + offset
            time_axes.bar(x, (median or 0) / scale, width, color=color, label=label if position == 0 else None)
            values = [r[key] / scale for r in record["runs"] if r["completed"] and r[key] is not None]
            time_axes.plot([x] * len(values), values, "k.", markersize=5)
    for position, record in enumerate(records):
        disk, memory = record["medians"]["disk_mib"] or 0, record["medians"]["memory_mib"] or 0
        sent_axes.bar(position, disk, 0.6, color="tab:green", label="disk" if position == 0 else None)
        sent_axes.bar(position, memory, 0.6, bottom=disk, color="tab:purple", label="memory" if position == 0 else None)
        values = [r["sent_mib"] for r in record["runs"] if r["completed"] and r["sent_mib"] is not None]
        sent_axes.plot([position] * len(values), values, "k.", markersize=5)
    for axes, ylabel in ((time_axes, "seconds (median; dots: runs)"), (sent_axes, "MiB sent (median; dots: runs)")):
        axes.set_xticks(range(len(records)))
        axes.set_xticklabels([record["mode"] for record in records])
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0)
        axes.grid(True, axis="y", alpha=0.3)
        axes.legend()
    params = report["parameters"]
    figure.suptitle("Live move with a storage copy: %d MiB disk (%d MiB written), %d MiB guest, %s -> %s"
                    % (params["disk_mib"], params["disk_fill_mib"], params["memory_mib"], params["src"], params["dst"]))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3, help="measurements per mode (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 measurement per mode, a %d MiB disk with %d MiB written, results under "
                        "results/tmp/" % QUICK_DISK)
    parser.add_argument("--src", default="hv1")
    parser.add_argument("--dst", default="hv2")
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--disk-mib", type=int, default=None,
                        help="default %d (%d with --quick)" % (FULL_DISK[0], QUICK_DISK[0]))
    parser.add_argument("--disk-fill-mib", type=int, default=None,
                        help="MiB written into the disk before boot, default %d (%d with --quick)"
                        % (FULL_DISK[1], QUICK_DISK[1]))
    parser.add_argument("--workload", default="disk:16:50")
    parser.add_argument("--timeout-s", type=float, default=600, help="bound of each move (default 600 s)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    disk_mib, disk_fill_mib = QUICK_DISK if args.quick else FULL_DISK
    args.disk_mib = disk_mib if args.disk_mib is None else args.disk_mib
    args.disk_fill_mib = disk_fill_mib if args.disk_fill_mib is None else args.disk_fill_mib
    args.out_dir = labkit.smoke_out_dir(args.out_dir, RESULTS, args.quick)
    if runs < 1 or args.timeout_s < 1 or args.disk_mib < 1:
        parser.error("--runs, --timeout-s and --disk-mib must be at least 1")
    if not 0 <= args.disk_fill_mib <= args.disk_mib:
        parser.error("--disk-fill-mib must be between 0 and --disk-mib")
    if _disk_workload_mib(args.workload) is None:
        parser.error("--workload needs a disk part (disk:MIB:RATE): the integrity check reads it")
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/storage_benchmark.py"]
                       + list(sys.argv[1:] if argv is None else argv))
    # libvirt prints every error to stderr by default; failures are reported here with their cause.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    # Before the first connection: the job-completed events need the event loop.
    ensure_event_loop()
    started = time.monotonic()
    src_uri, dst_uri = host_uri(args.src), host_uri(args.dst)
    env = labkit.environment(src_uri, dst_uri)
    env["other_guests_running"] = {redact_uri(uri): names for uri, names in env["other_guests_running"].items()}
    measurements = []
    for run in range(1, runs + 1):
        for mode in MODES:
            row = measure(mode, run, args, src_uri, dst_uri)
            print("run %d %-12s %-9s wall %6s s  job %6s ms  downtime %4s ms  sent %7s MiB (disk %s)  intact %s  "
                  "source image %s" % (
                      run, mode, "completed" if row["completed"] else "FAILED", labkit.fmt(row["wall_s"], "%.2f"),
                      labkit.fmt(row["job_ms"]), labkit.fmt(row["downtime_ms"]), labkit.fmt(row["sent_mib"], "%.1f"),
                      labkit.fmt(row["disk_mib"], "%.1f"), row["integrity"].get("intact"), _source_image(row),
                  ), file=sys.stderr, flush=True)
            measurements.append(row)
    results, ratios = summarize(measurements)
    report: t.Dict[str, t.Any] = {
        "benchmark": "storage",
        "command": command,
        "parameters": {
            "runs": runs, "quick": args.quick, "src": args.src, "dst": args.dst, "memory_mib": args.memory_mib,
            "disk_mib": args.disk_mib, "disk_fill_mib": args.disk_fill_mib, "disk_pool": POOL,
            "disk_format": DISK_FORMAT, "workload": args.workload, "timeout_s": args.timeout_s,
            "measure_dirty_rate_s": MEASURE_DIRTY_RATE_S, "settle_s": SETTLE_S,
        },
        "environment": env,
        "results": results,
        "live_migrate_over_virsh": ratios,
        "failures": [failure for row in measurements for failure in failures_of(row)],
        "figure": "storage.png",
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_figure(report, args.out_dir / "storage.png")
    markdown = render_markdown(report)
    (args.out_dir / "storage.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "storage.md").write_text(markdown)
    print(markdown)
    if report["failures"]:
        print("storage benchmark FAILED:\n  " + "\n  ".join(report["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
