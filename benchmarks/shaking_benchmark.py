# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The engine on incompressible shaking pages, against plain libvirt and what an operator tunes by hand.

Every guest rewrites a hot set with whole pages of fresh pseudo-random data
(the lab workload ``hot:TOTAL:HOT:RATE:fresh``), as a database buffer pool or
a compression job does: XBZRLE delta compression finds nothing to save there.
Five methods, the same bandwidth cap and time bound for all:

- ``baseline``: plain libvirt (live, peer-to-peer, nothing else);
- ``virsh_tuned``: plain libvirt with the auto-converge an operator types by
  hand (``virsh migrate --auto-converge --auto-converge-initial 60
  --auto-converge-increment 20``);
- ``engine``: ``run_live_migration`` (what ``live_migrate`` runs), strategy
  auto, no post-copy;
- ``virsh_postcopy``: plain libvirt post-copy, switched once the first pass is
  done (``virsh migrate --postcopy --postcopy-after-precopy``), the cap kept
  after the switch;
- ``engine_postcopy``: the engine with ``allow_postcopy=true``.

Run from the repository root with the lab up (``make bench`` runs it):

    .venv/bin/python benchmarks/shaking_benchmark.py [--quick] [--cases far,large]

Writes benchmarks/results/shaking.json, shaking.md and one figure per case
(shaking_CASE.png: memory left to send and the guest's CPU throttle over time).
"""

from __future__ import annotations

import argparse
import sys
import time
import typing as t
from pathlib import Path

import labkit
import live_migrate_benchmark as lmb
import migration_runner
import plot
from labkit import host_uri

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("baseline", "virsh_tuned", "engine", "virsh_postcopy", "engine_postcopy")
# What an operator types for a guest that does not converge (the hand-tuned command).
HAND_TUNED_AUTO_CONVERGE = (60, 20)
# case -> (guest memory MiB, vCPUs, lab workload, what it stands for, shaking)
CASES: t.Dict[str, t.Tuple[int, int, str, str, bool]] = {
    "below": (256, 1, "hot:160:128:4000:fresh",
              "128 MiB hot set rewritten with fresh data at 4000 pages/s (16 MiB/s): below the link", False),
    "near": (256, 1, "hot:160:128:16000:fresh",
             "128 MiB hot set rewritten with fresh data at 16000 pages/s (62 MiB/s): at the link", True),
    "far": (256, 1, "hot:160:128:0:fresh",
            "128 MiB hot set rewritten with fresh data as fast as the guest can: far above the link", True),
    "two_vcpus": (256, 2, "hot:160:128:0:fresh", "the far case on a 2-vCPU guest", True),
    "large": (1024, 1, "hot:512:384:0:fresh",
              "1 GiB guest, 384 MiB hot set rewritten with fresh data as fast as it can", True),
}
DEFAULT_BOUND_S = 60.0
QUICK_BOUND_S = 30.0
DEFAULT_RUNS = 2
MEDIAN_KEYS = ("job_ms", "wall_ms", "prepare_ms", "downtime_ms", "transferred_mib", "guest_memory_mib",
               "floor_s", "max_throttle_percent", "throttled_s", "vcpu_cap_percent", "vcpu_capped_s")


def create_guest(name: str, host: str, memory_mib: int, vcpus: int, workload: str) -> None:
    labkit.lab_retrying("guest", "delete", name)
    try:
        labkit.lab_retrying("guest", "create", name, "--host", host, "--memory-mib", str(memory_mib),
                            "--vcpus", str(vcpus), "--workload", workload)
    except SystemExit:
        labkit.delete_guest(name)
        raise


def throttle_figures(timeline: t.Sequence[t.Mapping[str, t.Any]]) -> t.Tuple[t.Optional[int], float]:
    """(highest throttle %, seconds the guest ran throttled) from a remaining_timeline."""
    highest: t.Optional[int] = None
    throttled_s = 0.0
    for before, after in zip(timeline, timeline[1:]):
        percent = before.get("throttle_percent")
        if percent:
            throttled_s += after["t_s"] - before["t_s"]
            highest = max(highest or 0, int(percent))
    return highest, round(throttled_s, 2)


def measure(case: str, method: str, run: int, args: argparse.Namespace, src_uri: str,
            dst_uri: str) -> t.Dict[str, t.Any]:
    memory_mib, vcpus, workload, _about, _shaking = CASES[case]
    name = "shake-%s-%s-%d" % (case.replace("_", "-"), method.replace("_", "-"), run)
    create_guest(name, args.src, memory_mib, vcpus, workload)
    try:
        time.sleep(lmb.SETTLE_S)
        guest_memory_mib, _used = lmb.guest_memory(src_uri, name)
        boot, console_offset = labkit.boot_id(name), labkit.console_size(name)
        if method == "baseline":
            row = lmb.run_baseline(args, src_uri, dst_uri, name)
        elif method == "virsh_tuned":
            row = lmb.run_baseline(args, src_uri, dst_uri, name, auto_converge=HAND_TUNED_AUTO_CONVERGE)
        elif method == "virsh_postcopy":
            row = lmb.run_baseline(args, src_uri, dst_uri, name, postcopy_after_first_pass=True,
                                   sample_period_s=0.05)
        else:
            row = lmb.run_engine(args, src_uri, dst_uri, name, allow_postcopy=method == "engine_postcopy")
            row.pop("timeline", None)
        running = migration_runner.domain_running_on([src_uri, dst_uri], name)
        # A job can complete with the guest's kernel dead (stale pages): such a run did not complete.
        failure = labkit.guest_failure(labkit.guest_health(name, boot, console_offset))
    finally:
        labkit.lab_retrying("guest", "delete", name)
    if failure:
        row.update(completed=False, error=failure)
    highest, throttled_s = throttle_figures(row.get("remaining_timeline") or [])
    cap = row.get("vcpu_cap") or {}
    for point in row.get("remaining_timeline") or []:
        point["vcpu_cap_percent"] = cap.get("percent")
    return dict({
        "case": case,
        "method": method,
        "run": run,
        "guest": name,
        "guest_memory_mib": guest_memory_mib,
        "floor_s": round(guest_memory_mib / args.bandwidth_mibps, 2),
        "max_throttle_percent": highest,
        "throttled_s": throttled_s,
        "vcpu_cap_percent": cap.get("percent"),
        "vcpu_capped_s": cap.get("held_s"),
        "running_on": "destination" if dst_uri in running else "source" if src_uri in running else None,
        "guest_failure": failure,
    }, **row)


def summarize(measurements: t.Sequence[t.Mapping[str, t.Any]], cases: t.Sequence[str]) -> t.List[t.Dict[str, t.Any]]:
    records = []
    for case in cases:
        for method in METHODS:
            runs = [m for m in measurements if m["case"] == case and m["method"] == method]
            if not runs:
                continue
            records.append({
                "case": case,
                "method": method,
                "runs_total": len(runs),
                "runs_completed": sum(1 for r in runs if r["completed"]),
                "strategies": sorted({r["strategy"] for r in runs if r.get("strategy")}),
                "features_used": sorted({name for r in runs for name in r.get("features_used") or []}),
                "medians": {key: labkit.median(r.get(key) for r in runs) for key in MEDIAN_KEYS},
                "runs": list(runs),
            })
    return records


def _record(records: t.Sequence[t.Mapping[str, t.Any]], case: str, method: str) -> t.Optional[t.Mapping[str, t.Any]]:
    return next((r for r in records if r["case"] == case and r["method"] == method), None)


def _all_completed(record: t.Mapping[str, t.Any], bound_ms: float) -> bool:
    return all(r["completed"] and r["job_ms"] is not None and r["job_ms"] <= bound_ms for r in record["runs"])


def check_targets(records: t.Sequence[t.Mapping[str, t.Any]], bound_s: float) -> t.List[t.Dict[str, t.Any]]:
    """The issue's targets per case: passed True/False, or None when a method they need did not run."""
    checks: t.List[t.Dict[str, t.Any]] = []
    bound_ms = bound_s * 1000.0

    def add(case: str, target: str, passed: t.Optional[bool], measured: str) -> None:
        checks.append({"case": case, "target": target, "passed": passed, "measured": measured})

    for case in dict.fromkeys(r["case"] for r in records):
        shaking = CASES[case][4]
        engine, tuned = _record(records, case, "engine"), _record(records, case, "virsh_tuned")
        base = _record(records, case, "baseline")
        if shaking and engine is not None:
            job, floor = engine["medians"]["job_ms"], engine["medians"]["floor_s"]
            done = _all_completed(engine, bound_ms)
            add(case, "engine completes every run, job <= 1.5 x floor (guest memory / bandwidth)",
                done and job is not None and job <= 1500.0 * floor,
                "%d/%d completed; job %s s, limit %.2f s (floor %.2f s)" % (
                    engine["runs_completed"], engine["runs_total"], labkit.seconds(job), 1.5 * floor, floor))
        if shaking and engine is not None and tuned is not None:
            mine, theirs = engine["medians"]["wall_ms"], tuned["medians"]["wall_ms"]
            tuned_done = tuned["runs_completed"] == tuned["runs_total"]
            passed = _all_completed(engine, bound_ms) and mine is not None and (
                not tuned_done or (theirs is not None and mine <= theirs))
            add(case, "engine wall time <= hand-tuned virsh's", passed,
                "engine %s s, virsh_tuned %s s (%d/%d completed)" % (
                    labkit.seconds(mine), labkit.seconds(theirs), tuned["runs_completed"], tuned["runs_total"]))
        if not shaking and engine is not None and base is not None:
            ratio = (engine["medians"]["job_ms"] / base["medians"]["job_ms"]
                     if engine["medians"]["job_ms"] and base["medians"]["job_ms"] else None)
            add(case, "engine completes every run, job <= 1.10 x the baseline's",
                _all_completed(engine, bound_ms) and ratio is not None and ratio <= 1.10,
                "job %s vs %s s (ratio %s)" % (labkit.seconds(engine["medians"]["job_ms"]),
                                               labkit.seconds(base["medians"]["job_ms"]), labkit.fmt(ratio, "%.2f")))
        mine_pc, theirs_pc = _record(records, case, "engine_postcopy"), _record(records, case, "virsh_postcopy")
        if shaking and mine_pc is not None and theirs_pc is not None:
            wall, their_wall = mine_pc["medians"]["wall_ms"], theirs_pc["medians"]["wall_ms"]
            sent, memory = mine_pc["medians"]["transferred_mib"], mine_pc["medians"]["guest_memory_mib"]
            passed = (_all_completed(mine_pc, bound_ms) and None not in (wall, their_wall, sent, memory)
                      and wall <= 1.2 * their_wall and sent <= 1.2 * memory)
            add(case, "engine_postcopy wall <= 1.2 x virsh_postcopy's, sent <= 1.2 x guest memory", passed,
                "wall %s vs %s s; sent %s MiB, limit %s" % (
                    labkit.seconds(wall), labkit.seconds(their_wall), labkit.fmt(sent, "%.1f"),
                    labkit.fmt(memory and 1.2 * memory, "%.1f")))
    return checks


def render_markdown(report: t.Mapping[str, t.Any]) -> str:
    params, env = report["parameters"], report["environment"]
    lines = [
        "# Incompressible shaking pages: the engine against plain libvirt and hand-tuned virsh",
        "",
        labkit.migration_intro("shaking_benchmark.py", env, params),
        "",
        "Methods: `baseline` plain libvirt; `virsh_tuned` plain libvirt with auto-converge %d%% + %d%% steps; "
        "`engine` live_migrate's engine without post-copy, with `cap_vcpus`; `virsh_postcopy` plain libvirt "
        "post-copy switched after the first pass; `engine_postcopy` the engine with allow_postcopy." % HAND_TUNED_AUTO_CONVERGE,
        "",
        "Cases: " + "; ".join("`%s` %d MiB, %d vCPU(s), `%s` (%s)" % ((case,) + CASES[case][:4])
                              for case in params["cases"]) + ".",
        "",
        "Job = libvirt's migration job; wall = the whole call (for the engine with its measurement and "
        "compaction). Floor = guest memory / bandwidth. Throttle = auto-converge's CPU throttle on the guest: "
        "the highest seen and for how long (the plots' lower panel adds the vCPU cap). vCPU cap = the engine's cap on the guest's vCPUs (share of a CPU) "
        "and how long it held, from before the job (its 1 s measurement included) to the job's end.",
        "",
        "| case | method | features used | completed | job s | wall s | downtime ms | MiB sent | floor s "
        "| throttle max % | throttled s | vCPU cap % | capped s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in report["results"]:
        med = record["medians"]
        lines.append("| %s | %s | %s | %d/%d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            record["case"], record["method"],
            labkit.features_cell(record["features_used"], engine=record["method"].startswith("engine")),
            record["runs_completed"], record["runs_total"],
            labkit.seconds(med["job_ms"]), labkit.seconds(med["wall_ms"]), labkit.fmt(med["downtime_ms"]),
            labkit.fmt(med["transferred_mib"], "%.1f"), labkit.fmt(med["floor_s"], "%.2f"),
            labkit.fmt(med["max_throttle_percent"]), labkit.fmt(med["throttled_s"], "%.1f"),
            labkit.fmt(med["vcpu_cap_percent"], "%g"), labkit.fmt(med["vcpu_capped_s"], "%.1f")))
    lines += [""] + labkit.features_lines(env)
    lines += ["", "## Targets", ""] + labkit.targets_table(report["targets"])
    lines += ["", "## Every measurement", "",
              "| case | method | run | completed | aborted by | job s | wall s | downtime ms | MiB sent "
              "| throttle max % | engine's plan |", "|---|---|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for record in report["results"]:
        for row in record["runs"]:
            lines.append("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                row["case"], row["method"], row["run"], "yes" if row["completed"] else "no",
                row["aborted_by"] or "-", labkit.seconds(row["job_ms"]), labkit.seconds(row["wall_ms"]),
                labkit.fmt(row["downtime_ms"]), labkit.fmt(row["transferred_mib"], "%.1f"),
                labkit.fmt(row["max_throttle_percent"]),
                ", ".join(row.get("flags") or []) if row.get("flags") else "-"))
    lines += ["", labkit.environment_sentence(env), ""]
    lines += ["![%s](%s)" % (case, figure) for case, figure in report["figures"].items()]
    lines += ["", "Made with: `%s`" % report["command"], ""]
    return "\n".join(lines)


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    parser = labkit.migration_parser(__doc__.split("\n\n", maxsplit=1)[0], DEFAULT_RUNS, DEFAULT_BOUND_S,
                                     QUICK_BOUND_S, "1 repetition of the far case", RESULTS)
    parser.add_argument("--cases", default=None, help="comma-separated subset of %s" % ", ".join(CASES))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of %s"
                        % ", ".join(METHODS))
    args = parser.parse_args(argv)
    runs = labkit.settle_migration_args(parser, args)
    cases = (args.cases or ("far" if args.quick else ",".join(CASES))).split(",")
    methods = [m for m in args.methods.split(",") if m]
    unknown = [c for c in cases if c not in CASES] + [m for m in methods if m not in METHODS]
    if unknown:
        parser.error("unknown case(s) or method(s): %s" % ", ".join(unknown))
    command = labkit.command_line("shaking_benchmark.py", argv)
    src_uri, dst_uri = host_uri(args.src), host_uri(args.dst)
    env = labkit.environment(src_uri, dst_uri)
    measurements = labkit.measure_all(
        runs, cases, methods, lambda case, method, run: measure(case, method, run, args, src_uri, dst_uri),
        lambda row: "throttle %s%%" % labkit.fmt(row["max_throttle_percent"]))
    results = summarize(measurements, cases)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    for case in cases:
        series = {row["method"]: row.get("remaining_timeline") or []
                  for row in measurements if row["case"] == case and row["run"] == 1}
        figure = args.out_dir / ("shaking_%s.png" % case)
        plot.plot_remaining_and_throttle(
            series, args.bound_s, "%s: %s, %d MiB/s cap" % (case, CASES[case][2], args.bandwidth_mibps), figure)
        figures[case] = figure.name
    report = {
        "benchmark": "shaking",
        "command": command,
        "parameters": {
            "runs": runs, "quick": args.quick, "cases": cases, "methods": methods, "src": args.src,
            "dst": args.dst, "bandwidth_mibps": args.bandwidth_mibps, "bound_s": args.bound_s,
            "max_downtime_ms": args.max_downtime_ms, "hand_tuned_auto_converge": list(HAND_TUNED_AUTO_CONVERGE),
            "guests": {case: {"memory_mib": CASES[case][0], "vcpus": CASES[case][1], "workload": CASES[case][2]}
                       for case in cases},
        },
        "environment": env,
        "results": results,
        "targets": check_targets(results, args.bound_s),
        "figures": figures,
    }
    labkit.write_report(args.out_dir, "shaking", report, render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
