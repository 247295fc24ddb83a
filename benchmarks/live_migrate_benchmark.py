# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The live-migration engine against plain libvirt migration, side by side.

Three methods, the same bandwidth cap and the same time bound for all:

- ``baseline``: plain libvirt (``migration_runner.plain_migrate``: live,
  peer-to-peer, persist on the destination, undefine the source, nothing
  else), aborted with abortJob() at the bound;
- ``engine``: the collection's ``run_live_migration`` (what
  ``strata.migration.live_migrate`` runs) with strategy auto, no post-copy,
  ``cap_vcpus=true`` (the vCPU cap on every stack), ``timeout_s`` = the bound;
- ``engine_postcopy``: the same with ``allow_postcopy=true``.

Three guests: ``stale`` (idle, most of its memory written once and freed),
``converging`` (moderate dirtying that pre-copy handles) and ``shaking`` (a
hot set rewritten far faster than the link sends). Each measurement uses a
fresh guest; the methods alternate within each repetition. Reported per run and
as medians: whether the job completed, libvirt's job time, the whole call's
time, downtime, MiB sent, the guest's used memory and the floor it sets
(used memory / bandwidth), and checks of the engine's targets.

Run from the repository root, with the lab up (or `make bench`):

    .venv/bin/python benchmarks/live_migrate_benchmark.py [--quick]

Writes benchmarks/results/live_migrate.json, live_migrate.md and
live_migrate_shaking.png (with --quick, under results/tmp/).
"""

from __future__ import annotations

import argparse
import sys
import time
import typing as t
from pathlib import Path

import libvirt

import labkit
import migration_runner
import plot
from labkit import host_uri

labkit.use_collection()
# pylint: disable=wrong-import-position
from ansible_collections.strata.migration.plugins.module_utils._engine import engine_options  # noqa: E402
from ansible_collections.strata.migration.plugins.module_utils._libvirt import (  # noqa: E402
    LibvirtClient,
    StrataError,
)
from ansible_collections.strata.migration.plugins.module_utils._migrate import run_live_migration  # noqa: E402
from ansible_collections.strata.migration.plugins.module_utils._preflight import preflight_options  # noqa: E402

# pylint: enable=wrong-import-position

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("baseline", "engine", "engine_postcopy")
# case -> (guest memory MiB, lab workload, what it stands for)
CASES = {
    "stale": (512, "stale:380", "idle, 380 MiB written once and freed"),
    "converging": (256, "hot:64:32:2000", "32 MiB hot set rewritten at 2000 pages/s: pre-copy converges"),
    "shaking": (256, "hot:128:48:0", "48 MiB hot set rewritten as fast as the guest can: far above the cap"),
}
# Seconds between the guest's ready marker and the measurement: a few balloon statistics reports.
SETTLE_S = 3.0
CONNECT_TIMEOUT_S = 30
MEASURE_DIRTY_RATE_S = 1
DEFAULT_BOUND_S = 40.0
QUICK_BOUND_S = 20.0
# Medians reported per case and method.
MEDIAN_KEYS = (
    "job_ms", "job_call_ms", "wall_ms", "prepare_ms", "downtime_ms", "transferred_mib",
    "guest_memory_mib", "used_memory_mib", "floor_s",
)
RATIO_KEYS = ("transferred_mib", "job_ms", "downtime_ms")


# ---- one measurement --------------------------------------------------------


def create_guest(name: str, host: str, memory_mib: int, workload: str) -> None:
    labkit.lab_retrying("guest", "delete", name)
    try:
        labkit.lab_retrying("guest", "create", name, "--host", host, "--memory-mib", str(memory_mib), "--workload", workload)
    except SystemExit:
        labkit.delete_guest(name)  # whatever a failed create left behind
        raise


def delete_guest(name: str) -> None:
    labkit.lab_retrying("guest", "delete", name)


def guest_memory(uri: str, name: str) -> t.Tuple[float, t.Optional[float]]:
    """(guest memory, used memory) in MiB; used = balloon actual - unused, None without guest statistics."""
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName(name)
        stats = dom.memoryStats()
        maximum_mib = dom.maxMemory() / 1024.0
    finally:
        conn.close()
    if "actual" not in stats or "unused" not in stats:
        return maximum_mib, None
    return maximum_mib, round((stats["actual"] - stats["unused"]) / 1024.0, 1)


def run_baseline(
    args: argparse.Namespace, src_uri: str, dst_uri: str, name: str, **by_hand: t.Any,
) -> t.Dict[str, t.Any]:
    """Plain libvirt; by_hand: what an operator adds by hand (migration_runner.plain_migrate's auto_converge, ...)."""
    started = time.monotonic()
    migration = migration_runner.plain_migrate(
        src_uri, dst_uri, name, bandwidth_mibps=args.bandwidth_mibps, max_downtime_ms=args.max_downtime_ms,
        timeout_s=args.bound_s, **by_hand,
    )
    wall_ms = (time.monotonic() - started) * 1000.0
    job_ms, job_ms_source = migration["total_ms"], "completed_job"
    if job_ms is None and migration["aborted"]:
        # libvirt 9.0 keeps no statistics of an aborted job; plain_migrate aborts at the bound.
        job_ms, job_ms_source = args.bound_s * 1000.0, "bound"
    samples = migration["timeline"]
    # Samples taken while the job was still setting up report nothing remaining.
    while samples and not samples[0].get("memory_remaining_mib"):
        samples = samples[1:]
    return {
        "completed": migration["completed"],
        "aborted_by": "timeout" if migration["aborted"] and not migration["completed"] else None,
        "error": migration["error"],
        "job_ms": job_ms,
        "job_ms_source": job_ms_source,
        "job_call_ms": round(migration["wall_s"] * 1000.0),
        "wall_ms": round(wall_ms),
        "prepare_ms": 0,
        "downtime_ms": migration["downtime_ms"],
        "transferred_mib": migration["transferred_mib"],
        "strategy": None,
        "hot_layer": None,
        "iterations": migration["iterations"],
        "stats_source": migration["stats_source"],
        "postcopy_switch_s": migration["postcopy_switch_s"],
        "remaining_timeline": [
            {"t_s": s["t_s"], "remaining_mib": s["memory_remaining_mib"], "throttle_percent": s["throttle_percent"]}
            for s in samples if s.get("memory_remaining_mib") is not None
        ],
    }


def _event_s(timeline: t.Sequence[t.Mapping[str, t.Any]], event: str, **match: t.Any) -> t.Optional[float]:
    for entry in timeline:
        if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
            return float(entry["t_s"])
    return None


def run_engine(
    args: argparse.Namespace, src_uri: str, dst_uri: str, name: str, allow_postcopy: bool, **engine_extra: t.Any,
) -> t.Dict[str, t.Any]:
    """run_live_migration with strategy auto; engine_extra: further engine options (a diagnosis, not a method)."""
    # cap_vcpus true: the benchmarks measure the vCPU cap on every stack (unset, live_migrate caps a TCG guest
    # only on QEMU 9.0 or later).
    options = engine_options(
        strategy="auto", bandwidth_mibps=args.bandwidth_mibps, max_downtime_ms=args.max_downtime_ms,
        timeout_s=int(args.bound_s), allow_postcopy=allow_postcopy, **dict({"cap_vcpus": True}, **engine_extra),
    )
    checks = preflight_options(
        name, dst_uri, measure_dirty_rate_s=MEASURE_DIRTY_RATE_S, bandwidth_mibps=args.bandwidth_mibps,
        max_downtime_ms=args.max_downtime_ms, allow_postcopy=allow_postcopy, compaction_restore=True,
    )
    error = None
    started = time.monotonic()
    with LibvirtClient(src_uri, CONNECT_TIMEOUT_S) as source, LibvirtClient(dst_uri, CONNECT_TIMEOUT_S) as dest:
        try:
            result = run_live_migration(source, dest, name, options, checks)
        except StrataError as exc:
            result, error = dict(exc.details), str(exc)
    wall_ms = (time.monotonic() - started) * 1000.0
    timeline = result.get("timeline") or []
    stats = result.get("stats") or {}
    plan = result.get("strategy") or {}
    # Timeline times count from the start of the call; the job starts with the pre-copy layer.
    job_start_s = _event_s(timeline, "layer", layer=2)
    # Until the migration call returned, or until the abort.
    ends = [e["t_s"] for e in timeline if e.get("event") in ("complete", "abort", "failed", "guard")]
    job_call_ms = round((max(ends) - job_start_s) * 1000.0) if ends and job_start_s is not None else None
    job_ms, job_ms_source = job_call_ms, "engine_timeline"
    guard_s = _event_s(timeline, "guard")
    if result.get("aborted_by") and guard_s is not None and job_start_s is not None:
        job_ms, job_ms_source = round((guard_s - job_start_s) * 1000.0), "engine_abort"
    if error is None and (stats.get("sources") or {}).get("total_ms") == "completed_job":
        job_ms, job_ms_source = stats["total_ms"], "completed_job"
    postcopy_s = next(
        (e["t_s"] for e in timeline if e.get("event") == "layer" and e.get("action") == "postcopy"
         and "error" not in e), None,
    )
    offset_s = job_start_s or 0.0
    return {
        "completed": error is None,
        "aborted_by": result.get("aborted_by"),
        "error": error,
        "job_ms": job_ms,
        "job_ms_source": job_ms_source,
        "job_call_ms": job_call_ms,
        "wall_ms": round(wall_ms),
        "prepare_ms": round(job_start_s * 1000.0) if job_start_s is not None else None,
        "downtime_ms": stats.get("downtime_ms"),
        "transferred_mib": stats.get("transferred_mib"),
        "strategy": plan.get("name"),
        "hot_layer": plan.get("hot_layer"),
        "strategy_reason": plan.get("reason"),
        "flags": plan.get("flags"),
        "features_used": labkit.features_used(result),
        "iterations": stats.get("iterations"),
        "stats_sources": stats.get("sources"),
        "shaking": [s.get("rule") for s in result.get("shaking") or []],
        "postcopy_switch_s": round(postcopy_s - offset_s, 3) if postcopy_s is not None else None,
        "compaction": _picked(result.get("compaction"), ("before_mib", "target_mib", "after_mib", "elapsed_s")),
        "restore": _picked(result.get("restore"), ("before_mib", "after_mib", "elapsed_s", "reached_target")),
        "vcpu_cap": _picked(result.get("vcpu_cap"), ("percent", "probe_percent", "probe_dirty_rate_mibps", "held_s")),
        "prediction": _picked(result.get("prediction"), ("strategy", "converges", "total_s", "downtime_ms")),
        "remaining_timeline": [
            {"t_s": round(e["t_s"] - offset_s, 3), "remaining_mib": e["remaining_mib"],
             "throttle_percent": e.get("throttle_percent")}
            for e in timeline if e.get("remaining_mib") is not None
        ],
        "timeline": timeline,
    }


def _picked(source: t.Optional[t.Mapping[str, t.Any]], keys: t.Sequence[str]) -> t.Optional[t.Dict[str, t.Any]]:
    return None if source is None else {key: source.get(key) for key in keys}


def measure(
    case: str, method: str, run: int, args: argparse.Namespace, src_uri: str, dst_uri: str,
) -> t.Dict[str, t.Any]:
    memory_mib, workload, _about = CASES[case]
    name = "bench-%s-%s-%d" % (case, method.replace("_", "-"), run)
    create_guest(name, args.src, memory_mib, workload)
    try:
        time.sleep(SETTLE_S)
        guest_memory_mib, used_memory_mib = guest_memory(src_uri, name)
        boot, console_offset = labkit.boot_id(name), labkit.console_size(name)
        if method == "baseline":
            row = run_baseline(args, src_uri, dst_uri, name)
        else:
            row = run_engine(args, src_uri, dst_uri, name, allow_postcopy=method == "engine_postcopy")
        running = migration_runner.domain_running_on([src_uri, dst_uri], name)
        # A job can complete with the guest's kernel dead (stale pages): such a run did not complete.
        failure = labkit.guest_failure(labkit.guest_health(name, boot, console_offset))
    finally:
        delete_guest(name)
    if failure:
        row.update(completed=False, error=failure)
    if case != "shaking":
        # The engine's full timeline is kept for the case that exercises its layers.
        row.pop("remaining_timeline")
        row.pop("timeline", None)
    return dict({
        "case": case,
        "method": method,
        "run": run,
        "guest": name,
        "guest_memory_mib": guest_memory_mib,
        "used_memory_mib": used_memory_mib,
        "floor_s": round(used_memory_mib / args.bandwidth_mibps, 2) if used_memory_mib is not None else None,
        "running_on": "destination" if dst_uri in running else "source" if src_uri in running else None,
        "guest_failure": failure,
    }, **row)


# ---- summary and targets ----------------------------------------------------


def summarize(measurements: t.Sequence[t.Mapping[str, t.Any]], cases: t.Sequence[str]) -> t.List[t.Dict[str, t.Any]]:
    records = []
    for case in cases:
        baseline_medians = None
        for method in METHODS:
            runs = [m for m in measurements if m["case"] == case and m["method"] == method]
            medians = {key: labkit.median(r.get(key) for r in runs) for key in MEDIAN_KEYS}
            if method == "baseline":
                baseline_medians = medians
            ratios = {}
            for key in RATIO_KEYS:
                base = baseline_medians[key] if baseline_medians else None
                mine = medians[key]
                ratios[key] = round(mine / base, 3) if base and mine is not None else None
            records.append({
                "case": case,
                "method": method,
                "runs_total": len(runs),
                "runs_completed": sum(1 for r in runs if r["completed"]),
                "strategies": sorted({r["strategy"] for r in runs if r.get("strategy")}),
                "hot_layers": sorted({r["hot_layer"] for r in runs if r.get("hot_layer")}),
                "features_used": sorted({name for r in runs for name in r.get("features_used") or []}),
                "medians": medians,
                "ratio_to_baseline": ratios,
                "runs": list(runs),
            })
    return records


def _record(records: t.Sequence[t.Mapping[str, t.Any]], case: str, method: str) -> t.Optional[t.Mapping[str, t.Any]]:
    return next((r for r in records if r["case"] == case and r["method"] == method), None)


def check_targets(
    records: t.Sequence[t.Mapping[str, t.Any]], bound_s: float, max_downtime_ms: int,
) -> t.List[t.Dict[str, t.Any]]:
    """Each target with what was measured and passed: True, False, or None when its case did not run.

    Completion checks hold for every run; the numeric thresholds apply to the medians.
    """
    bound_ms = bound_s * 1000.0
    checks: t.List[t.Dict[str, t.Any]] = []

    def add(case: str, target: str, needs: t.Sequence[str], judge: t.Callable[..., t.Tuple[bool, str]]) -> None:
        found = [_record(records, case, method) for method in needs]
        if any(r is None or not r["runs"] for r in found):
            checks.append({"case": case, "target": target, "passed": None, "measured": "case not run"})
            return
        passed, measured = judge(*found)
        checks.append({"case": case, "target": target, "passed": bool(passed), "measured": measured})

    def within_bound(run: t.Mapping[str, t.Any]) -> bool:
        return bool(run["completed"]) and run["job_ms"] is not None and run["job_ms"] <= bound_ms

    def baseline_stuck(base: t.Mapping[str, t.Any]) -> t.Tuple[bool, str]:
        done = sum(1 for r in base["runs"] if within_bound(r))
        return done == 0, "%d/%d runs completed within %g s" % (done, len(base["runs"]), bound_s)

    def engine_bounded(engine: t.Mapping[str, t.Any]) -> t.Tuple[bool, str]:
        done = sum(1 for r in engine["runs"] if within_bound(r))
        downtime = engine["medians"]["downtime_ms"]
        passed = done == len(engine["runs"]) and downtime is not None and downtime <= max_downtime_ms
        return passed, "%d/%d runs completed within %g s; median downtime %s ms" % (
            done, len(engine["runs"]), bound_s, labkit.fmt(downtime))

    def postcopy_cheap(engine: t.Mapping[str, t.Any]) -> t.Tuple[bool, str]:
        medians = engine["medians"]
        done = engine["runs_completed"]
        sent, memory = medians["transferred_mib"], medians["guest_memory_mib"]
        job_ms, floor_s = medians["job_ms"], medians["floor_s"]
        passed = (
            done == engine["runs_total"] and None not in (sent, memory, job_ms, floor_s)
            and sent <= 1.5 * memory and job_ms <= 2.5 * floor_s * 1000.0
        )
        return passed, (
            "%d/%d runs completed; sent %s MiB (limit %s = 1.5 x %s); job %s s (limit %s = 2.5 x floor %s s)"
        ) % (
            done, engine["runs_total"], labkit.fmt(sent, "%.1f"), labkit.fmt(memory and 1.5 * memory, "%.1f"),
            labkit.fmt(memory), labkit.fmt(job_ms and job_ms / 1000.0, "%.2f"),
            labkit.fmt(floor_s and 2.5 * floor_s, "%.2f"), labkit.fmt(floor_s, "%.2f"))

    def stale_saves(base: t.Mapping[str, t.Any], engine: t.Mapping[str, t.Any]) -> t.Tuple[bool, str]:
        sent, base_sent = engine["medians"]["transferred_mib"], base["medians"]["transferred_mib"]
        complete = engine["runs_completed"] == engine["runs_total"] and base["runs_completed"] == base["runs_total"]
        passed = complete and sent is not None and bool(base_sent) and sent <= 0.25 * base_sent
        return passed, "engine %s MiB vs baseline %s MiB (ratio %s; completed %d/%d and %d/%d)" % (
            labkit.fmt(sent, "%.1f"), labkit.fmt(base_sent, "%.1f"), labkit.fmt(engine["ratio_to_baseline"]["transferred_mib"], "%.3f"),
            engine["runs_completed"], engine["runs_total"], base["runs_completed"], base["runs_total"])

    def converging_no_worse(base: t.Mapping[str, t.Any], engine: t.Mapping[str, t.Any]) -> t.Tuple[bool, str]:
        ratios = engine["ratio_to_baseline"]
        complete = engine["runs_completed"] == engine["runs_total"] and base["runs_completed"] == base["runs_total"]
        passed = (
            complete and ratios["job_ms"] is not None and ratios["downtime_ms"] is not None
            and ratios["job_ms"] <= 1.10 and ratios["downtime_ms"] <= 1.10
        )
        return passed, "job %s vs %s ms (ratio %s); downtime %s vs %s ms (ratio %s); completed %d/%d and %d/%d" % (
            labkit.fmt(engine["medians"]["job_ms"]), labkit.fmt(base["medians"]["job_ms"]), labkit.fmt(ratios["job_ms"], "%.2f"),
            labkit.fmt(engine["medians"]["downtime_ms"]), labkit.fmt(base["medians"]["downtime_ms"]),
            labkit.fmt(ratios["downtime_ms"], "%.2f"),
            engine["runs_completed"], engine["runs_total"], base["runs_completed"], base["runs_total"])

    add("shaking", "baseline does not complete within the bound", ("baseline",), baseline_stuck)
    add("shaking", "engine completes within the bound with downtime <= %d ms" % max_downtime_ms, ("engine",),
        engine_bounded)
    add("shaking", "engine_postcopy completes, sends <= 1.5 x guest memory, job time <= 2.5 x floor",
        ("engine_postcopy",), postcopy_cheap)
    add("stale", "engine sends <= 0.25 x what the baseline sends", ("baseline", "engine"), stale_saves)
    add("converging", "engine job time and downtime each <= 1.10 x the baseline's", ("baseline", "engine"),
        converging_no_worse)
    return checks


def preparation_overhead(records: t.Sequence[t.Mapping[str, t.Any]]) -> t.Optional[t.Dict[str, t.Any]]:
    """The engine's cost outside the job on the converging case: medians of wall - job, and of the preparation."""
    base, engine = _record(records, "converging", "baseline"), _record(records, "converging", "engine")
    if base is None or engine is None or not engine["runs"]:
        return None
    outside = [r["wall_ms"] - r["job_ms"] for r in engine["runs"] if r["job_ms"] is not None]
    return {
        "engine_wall_ms": engine["medians"]["wall_ms"],
        "baseline_wall_ms": base["medians"]["wall_ms"],
        "engine_prepare_ms": engine["medians"]["prepare_ms"],
        "engine_outside_job_ms": labkit.median(outside),
    }


# ---- report -----------------------------------------------------------------


def _ratio(value: t.Optional[float]) -> str:
    return "-" if value is None else "%.2fx" % value


def _runs(report: t.Mapping[str, t.Any]) -> t.List[t.Mapping[str, t.Any]]:
    return [run for record in report["results"] for run in record["runs"]]


def render_markdown(report: t.Dict[str, t.Any]) -> str:
    params, env = report["parameters"], report["environment"]
    lines = [
        "# Live migration: the engine against plain libvirt",
        "",
        labkit.migration_intro("live_migrate_benchmark.py", env, params),
        "",
        "- `baseline`: plain libvirt (`migration_runner.plain_migrate`: live, peer-to-peer, persist on the "
        "destination, undefine the source, nothing else), abortJob() at the bound.",
        "- `engine`: `run_live_migration` (what `strata.migration.live_migrate` runs), strategy auto, "
        "timeout_s = the bound, allow_postcopy false, cap_vcpus true (used only where pre-copy alone would not "
        "converge); it measures the dirty rate (%d s) and compacts the balloon "
        "first, and gives the memory back on the destination after." % MEASURE_DIRTY_RATE_S,
        "- `engine_postcopy`: the same with allow_postcopy true.",
        "",
        "Cases: " + "; ".join(
            "`%s` %d MiB guest, workload `%s` (%s)" % (case, CASES[case][0], CASES[case][1], CASES[case][2])
            for case in params["cases"]) + ".",
        "",
        "Job = libvirt's migration job (completed job's time_elapsed, or the time until the abort); wall = the "
        "whole call, for the engine including measurement, compaction and restore. Where libvirt kept no "
        "completed job statistics, job is the engine's timeline from the job's start "
        "until the migration call returned (libvirt's finish phase included), MiB sent is the engine's last "
        "sample before the end, and there is no downtime figure. Floor = used memory / bandwidth: the shortest "
        "job that sends the guest's used memory once.",
        "",
        "| case | method | strategy (hot layer) | features used | completed | job s | wall s | downtime ms | MiB sent "
        "| floor s | sent / baseline | job / baseline | downtime / baseline |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in report["results"]:
        medians, ratios = record["medians"], record["ratio_to_baseline"]
        strategy = "-"
        if record["strategies"]:
            strategy = "%s (%s)" % (", ".join(record["strategies"]), ", ".join(record["hot_layers"]))
        features = labkit.features_cell(record["features_used"], engine=record["method"] != "baseline")
        lines.append("| %s | %s | %s | %s | %d/%d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            record["case"], record["method"], strategy, features, record["runs_completed"], record["runs_total"],
            labkit.seconds(medians["job_ms"]), labkit.seconds(medians["wall_ms"]), labkit.fmt(medians["downtime_ms"]),
            labkit.fmt(medians["transferred_mib"], "%.1f"), labkit.fmt(medians["floor_s"], "%.2f"),
            _ratio(ratios["transferred_mib"]) if record["method"] != "baseline" else "",
            _ratio(ratios["job_ms"]) if record["method"] != "baseline" else "",
            _ratio(ratios["downtime_ms"]) if record["method"] != "baseline" else "",
        ))
    lines += [""] + labkit.features_lines(env)
    lines += ["", "## Targets", "", "Completion holds for every run; thresholds apply to the medians.", ""]
    lines += labkit.targets_table(report["targets"])
    overhead = report["engine_preparation_overhead"]
    if overhead:
        lines += [
            "",
            "Engine overhead on the converging case (medians): the whole call took %s s against the baseline's "
            "%s s; %s s of it came before the job (dirty-rate measurement, compaction) and %s s outside the job "
            "in all (with the balloon restore on the destination)."
            % (labkit.seconds(overhead["engine_wall_ms"]), labkit.seconds(overhead["baseline_wall_ms"]),
               labkit.seconds(overhead["engine_prepare_ms"]), labkit.seconds(overhead["engine_outside_job_ms"])),
        ]
    lines += [
        "",
        "## Every measurement",
        "",
        "| case | method | run | completed | aborted by | job s | wall s | downtime ms | MiB sent | used MiB "
        "| post-copy at s | shaking seen | job from |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in _runs(report):
        lines.append("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            row["case"], row["method"], row["run"], "yes" if row["completed"] else "no",
            row["aborted_by"] or "-", labkit.seconds(row["job_ms"]), labkit.seconds(row["wall_ms"]), labkit.fmt(row["downtime_ms"]),
            labkit.fmt(row["transferred_mib"], "%.1f"), labkit.fmt(row["used_memory_mib"], "%.1f"),
            labkit.fmt(row.get("postcopy_switch_s"), "%.2f"), ", ".join(row.get("shaking") or []) or "-",
            row["job_ms_source"],
        ))
    lines += [
        "",
        labkit.environment_sentence(env),
        "",
        "Made with: `%s`" % report["command"],
        "",
    ]
    if report.get("figure"):
        lines[-1:-1] = ["", "![remaining memory on the shaking case](%s)" % report["figure"]]
    return "\n".join(lines)


def write_figure(report: t.Dict[str, t.Any], path: Path) -> bool:
    first = {}
    for row in _runs(report):
        if row["case"] == "shaking" and row["run"] == 1:
            first[row["method"]] = row.get("remaining_timeline") or []
    if not first:
        return False
    plot.plot_remaining(
        {method: first[method] for method in METHODS if method in first},
        report["parameters"]["bound_s"],
        "Shaking guest (%s), %d MiB/s cap: memory left to send"
        % (CASES["shaking"][1], report["parameters"]["bandwidth_mibps"]),
        path,
    )
    return True


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    parser = labkit.migration_parser(__doc__.split("\n\n", maxsplit=1)[0], 3, DEFAULT_BOUND_S, QUICK_BOUND_S,
                                     "1 repetition", RESULTS)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of %s" % ", ".join(CASES))
    args = parser.parse_args(argv)
    runs = labkit.settle_migration_args(parser, args)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error("unknown case(s) %s; choose from %s" % (", ".join(unknown), ", ".join(CASES)))
    command = labkit.command_line("live_migrate_benchmark.py", argv)
    src_uri, dst_uri = host_uri(args.src), host_uri(args.dst)
    env = labkit.environment(src_uri, dst_uri)
    measurements = labkit.measure_all(
        runs, cases, METHODS, lambda case, method, run: measure(case, method, run, args, src_uri, dst_uri),
        lambda row: "used %6s MiB%s" % (labkit.fmt(row["used_memory_mib"], "%.1f"),
                                        "  (%s)" % row["strategy"] if row.get("strategy") else ""))
    results = summarize(measurements, cases)
    report: t.Dict[str, t.Any] = {
        "benchmark": "live_migrate",
        "command": command,
        "parameters": {
            "runs": runs, "quick": args.quick, "cases": cases, "src": args.src, "dst": args.dst,
            "bandwidth_mibps": args.bandwidth_mibps, "bound_s": args.bound_s,
            "max_downtime_ms": args.max_downtime_ms, "measure_dirty_rate_s": MEASURE_DIRTY_RATE_S,
            "settle_s": SETTLE_S,
            "guests": {case: {"memory_mib": CASES[case][0], "workload": CASES[case][1]} for case in cases},
        },
        "environment": env,
        "results": results,
        "targets": check_targets(results, args.bound_s, args.max_downtime_ms),
        "engine_preparation_overhead": preparation_overhead(results),
        "figure": None,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    figure = args.out_dir / "live_migrate_shaking.png"
    if write_figure(report, figure):
        report["figure"] = figure.name
    labkit.write_report(args.out_dir, "live_migrate", report, render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
