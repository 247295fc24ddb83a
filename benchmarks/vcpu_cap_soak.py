# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Many capped engine migrations of shaking TCG guests, each checked for a guest kernel failure.

The engine's vCPU cap runs by default only where the source tracks guest writes
exactly while a vCPU is stopped (docs/engine.md, "Where the cap runs by default,
and why"): two guest kernels crashed in about 150 capped migrations on QEMU 7.2
under TCG, a rate too low to see in a benchmark's few runs. This soak gives the
evidence behind that rule: for each repetition and shaking case of the shaking
benchmark (near, far, two_vcpus), a fresh guest moves back and forth between two
hosts several times with ``cap_vcpus=true`` and no post-copy; after each move its
console must show a heartbeat of the same boot and no kernel failure
(labkit.guest_health). A guest whose kernel failed keeps its console in the
results and makes no further moves; the next repetition starts fresh guests.

Run from the repository root with the lab up, on the stack to judge:

    lab/strata-lab up --hosts 2 --stack all=trixie
    .venv/bin/python benchmarks/vcpu_cap_soak.py --out-dir benchmarks/results/trixie [--quick]

Writes vcpu_cap_soak.json, .md and .png (each move's job time by case, failures
marked) in --out-dir.
"""

from __future__ import annotations

import sys
import time
import typing as t

import labkit
import live_migrate_benchmark as lmb
import migration_runner
import plot
import shaking_benchmark as shaking
from labkit import host_uri

RESULTS = shaking.RESULTS
CASES = ("near", "far", "two_vcpus")
DEFAULT_RUNS = 27
MOVES_PER_GUEST = 3
# The rate seen on QEMU 7.2 under TCG (2 failed guests in about 150 capped migrations): how likely a soak
# without a failure would be if that rate still held.
OLD_FAILURES, OLD_MIGRATIONS = 2, 150
# What the results keep of a failed guest's console: the end of it, where the oops is.
CONSOLE_TAIL_CHARS = 4000


def move(args: t.Any, name: str, case: str, run: int, index: int, uris: t.Sequence[str]) -> t.Dict[str, t.Any]:
    """One capped move of the guest, uris[0] -> uris[1], and the guest's health after it."""
    boot, offset = labkit.boot_id(name), labkit.console_size(name)
    row = lmb.run_engine(args, uris[0], uris[1], name, allow_postcopy=False)
    health = labkit.guest_health(name, boot, offset)
    failure = labkit.guest_failure(health)
    running = migration_runner.domain_running_on(list(uris), name)
    cap = row.get("vcpu_cap") or {}
    return {
        "case": case, "run": run, "move": index, "guest": name,
        "completed": row["completed"], "error": row["error"],
        "capped": cap.get("percent") is not None, "vcpu_cap_percent": cap.get("percent"),
        "vcpu_capped_s": cap.get("held_s"), "job_ms": row["job_ms"], "wall_ms": row["wall_ms"],
        "downtime_ms": row["downtime_ms"], "transferred_mib": row["transferred_mib"],
        "running_on": "destination" if uris[1] in running else "source" if uris[0] in running else None,
        "guest_failure": failure,
        "console_tail": labkit.console_since(name, offset)[-CONSOLE_TAIL_CHARS:] if failure else None,
    }


def soak_case(args: t.Any, case: str, run: int, uris: t.Sequence[str]) -> t.List[t.Dict[str, t.Any]]:
    """A fresh guest of the case moved MOVES_PER_GUEST times, stopping at the first failure."""
    memory_mib, vcpus, workload = shaking.CASES[case][:3]
    name = "soak-%s-%d" % (case.replace("_", "-"), run)
    shaking.create_guest(name, args.src, memory_mib, vcpus, workload)
    rows = []
    try:
        time.sleep(lmb.SETTLE_S)
        here_there = list(uris)
        for index in range(1, MOVES_PER_GUEST + 1):
            row = move(args, name, case, run, index, here_there)
            rows.append(row)
            print("run %d %-9s move %d %-9s capped %-5s job %6s s  downtime %5s ms  %s" % (
                run, case, index, "completed" if row["completed"] else "FAILED", row["vcpu_cap_percent"],
                labkit.seconds(row["job_ms"]), labkit.fmt(row["downtime_ms"]), row["guest_failure"] or "guest ok"),
                file=sys.stderr, flush=True)
            if row["guest_failure"] or row["running_on"] is None:
                break
            if row["running_on"] == "destination":
                here_there.reverse()
    finally:
        labkit.lab_retrying("guest", "delete", name)
    return rows


def summarize(rows: t.Sequence[t.Mapping[str, t.Any]]) -> t.Dict[str, t.Any]:
    capped = [r for r in rows if r["capped"]]
    failed = [r for r in rows if r["guest_failure"]]
    per_case = {}
    for case in CASES:
        mine = [r for r in rows if r["case"] == case]
        if mine:
            per_case[case] = {
                "moves": len(mine), "capped": sum(r["capped"] for r in mine),
                "completed": sum(r["completed"] for r in mine), "guest_failures": sum(bool(r["guest_failure"]) for r in mine),
                "median_job_ms": labkit.median(r["job_ms"] for r in mine if r["completed"]),
                "median_downtime_ms": labkit.median(r["downtime_ms"] for r in mine if r["completed"]),
                "median_vcpu_cap_percent": labkit.median(r["vcpu_cap_percent"] for r in mine),
            }
    old_rate = OLD_FAILURES / OLD_MIGRATIONS
    return {
        "moves": len(rows), "capped": len(capped), "completed": sum(r["completed"] for r in rows),
        "guest_failures": len(failed), "capped_guest_failures": sum(bool(r["guest_failure"]) for r in capped),
        "per_case": per_case,
        # Probability of seeing no failure in this many capped moves if QEMU 7.2's rate still held.
        "chance_of_none_at_old_rate": round((1.0 - old_rate) ** len(capped), 4),
    }


def render_markdown(report: t.Mapping[str, t.Any]) -> str:
    params, env, summary = report["parameters"], report["environment"], report["summary"]
    lines = [
        "# The vCPU cap under soak: capped migrations of shaking guests, each guest checked after its move",
        "",
        "`benchmarks/vcpu_cap_soak.py`, %s. %s <-> %s, libvirt %s, QEMU %s, lab guests under TCG, bandwidth %d MiB/s, bound %g s, "
        "max downtime %d ms, `cap_vcpus=true`, no post-copy; %d repetition(s) of each case, a fresh guest each, "
        "moved %d times back and forth." % (
            env["date"], params["src"], params["dst"], env["libvirt"], env["qemu"],
            params["bandwidth_mibps"], params["bound_s"], params["max_downtime_ms"], params["runs"],
            MOVES_PER_GUEST),
        "",
        "A move's guest is ok when its console shows a heartbeat of the same boot within %g s and no "
        "`Kernel panic`, `Oops:` or `BUG: ` line." % labkit.HEARTBEAT_WAIT_S,
        "",
        "| case | moves | capped | completed | guest failures | median job s | median downtime ms "
        "| median vCPU cap % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, figures in summary["per_case"].items():
        lines.append("| %s | %d | %d | %d | %d | %s | %s | %s |" % (
            case, figures["moves"], figures["capped"], figures["completed"], figures["guest_failures"],
            labkit.seconds(figures["median_job_ms"]), labkit.fmt(figures["median_downtime_ms"]),
            labkit.fmt(figures["median_vcpu_cap_percent"], "%g")))
    lines += [
        "| all | %d | %d | %d | %d | | | |" % (
            summary["moves"], summary["capped"], summary["completed"], summary["guest_failures"]),
        "",
        "Guest kernel failures after capped moves: %d of %d. Had the rate seen on QEMU 7.2 (%d in about %d) "
        "held, a soak this long would show none with probability %.3f." % (
            summary["capped_guest_failures"], summary["capped"], OLD_FAILURES, OLD_MIGRATIONS,
            summary["chance_of_none_at_old_rate"]),
        "",
    ]
    for row in report["moves"]:
        if row["guest_failure"]:
            lines += ["- %s move %d: %s" % (row["guest"], row["move"], row["guest_failure"])]
    lines += ["", labkit.environment_sentence(env), "", "![moves](%s)" % report["figure"], "",
              "Made with: `%s`" % report["command"], ""]
    return "\n".join(lines)


def plot_moves(rows: t.Sequence[t.Mapping[str, t.Any]], path: t.Any) -> None:
    figure, axes = plot.plt.subplots(figsize=(8, 4.5))
    for number, case in enumerate(CASES):
        mine = [i for i, r in enumerate(rows) if r["case"] == case and r["job_ms"] is not None]
        axes.scatter(mine, [rows[i]["job_ms"] / 1000.0 for i in mine], s=12, color="C%d" % number, label=case)
    failed = [i for i, r in enumerate(rows) if r["guest_failure"]]
    if failed:
        axes.scatter(failed, [(rows[i]["job_ms"] or 0) / 1000.0 for i in failed], s=80, marker="x",
                     color="red", label="guest kernel failed")
    axes.set_xlabel("capped move, in order")
    axes.set_ylabel("migration job (s)")
    axes.set_title("vCPU cap soak: %d capped moves, %d guest failures"
                   % (sum(r["capped"] for r in rows), len(failed)))
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plot.plt.close(figure)


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    parser = labkit.migration_parser(__doc__.split("\n\n", maxsplit=1)[0], DEFAULT_RUNS, shaking.DEFAULT_BOUND_S,
                                     shaking.QUICK_BOUND_S, "1 repetition", RESULTS)
    args = parser.parse_args(argv)
    runs = labkit.settle_migration_args(parser, args)
    uris = [host_uri(args.src), host_uri(args.dst)]
    env = labkit.environment(*uris)
    rows: t.List[t.Dict[str, t.Any]] = []
    for run in range(1, runs + 1):
        for case in CASES:
            rows += soak_case(args, case, run, uris)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    figure = args.out_dir / "vcpu_cap_soak.png"
    plot_moves(rows, figure)
    report = {
        "benchmark": "vcpu_cap_soak",
        "command": labkit.command_line("vcpu_cap_soak.py", argv),
        "parameters": {
            "runs": runs, "quick": args.quick, "cases": list(CASES), "moves_per_guest": MOVES_PER_GUEST,
            "src": args.src, "dst": args.dst, "bandwidth_mibps": args.bandwidth_mibps, "bound_s": args.bound_s,
            "max_downtime_ms": args.max_downtime_ms,
        },
        "environment": env,
        "summary": summarize(rows),
        "moves": rows,
        "figure": figure.name,
    }
    labkit.write_report(args.out_dir, "vcpu_cap_soak", report, render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
