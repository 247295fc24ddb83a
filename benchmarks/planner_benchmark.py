# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Placement planner: planning time and number of moves on synthetic clusters.

Clusters of 100 and 1,000 hosts with 20 VMs each, drawn from a seeded random
generator: hosts of 256 GiB (4 GiB reserved) and 64 CPUs, VMs of 512-8192 MiB
and 1-8 vCPUs; one VM in a hundred is pinned, and one in twenty belongs to an
anti-affinity group of five VMs on five hosts. Two scenarios per size:

- evacuate: every tenth host is emptied, on a cluster with an even load.
- rebalance: a fifth of the hosts carry VMs of 4096-8192 MiB and the others
  VMs of 512-4096 MiB; the spread threshold is 10 percentage points.

Reported: planning time (parsing included; median of 5 runs, 1 with --quick),
moves, and a simple lower bound on moves. Evacuate: the movable VMs on the
evacuated hosts. Rebalance: for each host above the mean utilisation plus
half the threshold, its excess divided by its largest movable VM, rounded up,
summed over hosts. No lab needed.

Run from the repository root:

    .venv/bin/python benchmarks/planner_benchmark.py [--quick]

Writes benchmarks/results/planner.json and planner.md (with --quick, under results/tmp/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import typing as t
from pathlib import Path

import labkit

labkit.use_collection()
# pylint: disable-next=wrong-import-position
from ansible_collections.strata.migration.plugins.module_utils._planner import plan_from_data  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SIZES = (100, 1000)
VMS_PER_HOST = 20
HOST_MEMORY_MIB = 262144
HOST_RESERVE_MIB = 4096
HOST_CPUS = 64
THRESHOLD_PERCENT = 10.0
TARGET_S = 2.0
SEED = 20261124

Data = t.List[t.Dict[str, t.Any]]


def synthetic_cluster(hosts: int, skewed: bool, seed: int) -> t.Tuple[Data, Data]:
    """Hosts and VMs as a playbook would pass them; skewed puts large VMs on a fifth of the hosts."""
    rng = random.Random(seed)
    host_list = [
        {"name": "hv%04d" % index, "memory_capacity_mib": HOST_MEMORY_MIB, "reserve_mib": HOST_RESERVE_MIB,
         "cpus": HOST_CPUS}
        for index in range(hosts)
    ]
    vm_list = []
    for index in range(hosts):
        if skewed and index % 5 == 0:
            low, high = 4096, 8192
        elif skewed:
            low, high = 512, 4096
        else:
            low, high = 512, 8192
        for number in range(VMS_PER_HOST):
            name = "vm%04d-%02d" % (index, number)
            entry: t.Dict[str, t.Any] = {
                "name": name,
                "uuid": "00000000-0000-4000-8000-%012d" % (index * VMS_PER_HOST + number),
                "host": "hv%04d" % index,
                "memory_mib": rng.randint(low, high),
                "vcpus": rng.randint(1, 8),
                "pinned": rng.random() < 0.01,
            }
            if number == 0:
                # One group of five VMs on five consecutive hosts.
                entry["anti_affinity_group"] = "group-%d" % (index // 5)
            vm_list.append(entry)
    return host_list, vm_list


def lower_bound(mode: str, hosts: Data, vms: Data, evacuate_hosts: t.Sequence[str]) -> int:
    if mode == "evacuate":
        emptied = set(evacuate_hosts)
        return sum(1 for vm in vms if vm["host"] in emptied and not vm["pinned"])
    committed = {host["name"]: 0 for host in hosts}
    largest = {host["name"]: 0 for host in hosts}
    for vm in vms:
        committed[vm["host"]] += vm["memory_mib"]
        if not vm["pinned"]:
            largest[vm["host"]] = max(largest[vm["host"]], vm["memory_mib"])
    capacity = {host["name"]: host["memory_capacity_mib"] for host in hosts}
    mean_percent = statistics.mean(committed[name] / capacity[name] * 100.0 for name in committed)
    bound = 0
    for name, memory in committed.items():
        ceiling_mib = (mean_percent + THRESHOLD_PERCENT / 2.0) / 100.0 * capacity[name]
        if memory > ceiling_mib and largest[name]:
            bound += math.ceil((memory - ceiling_mib) / largest[name])
    return bound


def run_case(hosts_count: int, mode: str, runs: int) -> t.Dict[str, t.Any]:
    hosts, vms = synthetic_cluster(hosts_count, skewed=(mode == "rebalance"), seed=SEED + hosts_count)
    options: t.Dict[str, t.Any] = {"mode": mode, "spread_threshold_percent": THRESHOLD_PERCENT}
    evacuate_hosts: t.List[str] = []
    if mode == "evacuate":
        evacuate_hosts = [host["name"] for host in hosts[::10]]
        options["evacuate_hosts"] = evacuate_hosts
    times = []
    plan = None
    for _run in range(runs):
        started = time.perf_counter()
        plan = plan_from_data(hosts, vms, options).to_dict()
        times.append(time.perf_counter() - started)
    assert plan is not None
    bound = lower_bound(mode, hosts, vms, evacuate_hosts)
    return {
        "mode": mode,
        "hosts": hosts_count,
        "vms": len(vms),
        "evacuated_hosts": len(evacuate_hosts),
        "planning_s": [round(value, 4) for value in times],
        "planning_median_s": round(statistics.median(times), 4),
        "moves": len(plan["moves"]),
        "moves_lower_bound": bound,
        "waves": len(plan["waves"]),
        "unplaceable": len(plan["unplaceable"]),
        "not_moved": len(plan["not_moved"]),
        "spread_before_percent": plan["spread_before_percent"],
        "spread_after_percent": plan["spread_after_percent"],
        "estimated_total_s": plan["estimated_total_s"],
        "summary": plan["summary"],
    }


def render_markdown(report: t.Dict[str, t.Any]) -> str:
    lines = [
        "# Placement planner",
        "",
        "`benchmarks/planner_benchmark.py`, %s. Synthetic clusters (seeded): hosts of %d GiB (%d GiB reserved) and %d "
        "CPUs, %d VMs per host of 512-8192 MiB, 1%% pinned, 5%% in anti-affinity groups; evacuate empties every tenth "
        "host of an evenly loaded cluster, rebalance evens out a cluster where a fifth of the hosts carry the large "
        "VMs (threshold %s points). Planning time is the median of %d run(s), parsing included; the target is %s s "
        "for 1,000 hosts."
        % (report["environment"]["date"], HOST_MEMORY_MIB // 1024, HOST_RESERVE_MIB // 1024, HOST_CPUS,
           VMS_PER_HOST, _fmt(THRESHOLD_PERCENT), report["runs"], _fmt(TARGET_S)),
        "",
        "| hosts | VMs | scenario | planning (s) | moves | lower bound | moves / bound | waves | unplaceable "
        "| spread before -> after (points) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case in report["cases"]:
        ratio = case["moves"] / case["moves_lower_bound"] if case["moves_lower_bound"] else float("nan")
        scenario = case["mode"]
        if case["mode"] == "evacuate":
            scenario = "evacuate %d hosts" % case["evacuated_hosts"]
        lines.append(
            "| %d | %d | %s | %.3f | %d | %d | %.2f | %d | %d | %s -> %s |"
            % (case["hosts"], case["vms"], scenario, case["planning_median_s"], case["moves"],
               case["moves_lower_bound"], ratio, case["waves"], case["unplaceable"],
               _fmt(case["spread_before_percent"]), _fmt(case["spread_after_percent"])))
    lines += [
        "",
        "Lower bounds: evacuate, the movable VMs on the evacuated hosts; rebalance, for each host above the mean "
        "utilisation plus half the threshold, its excess over that level divided by its largest movable VM, rounded "
        "up. Waves use the defaults (one move in and one out per host, two in total).",
        "",
        "Environment: Python %s on %s, %d CPUs."
        % (report["environment"]["python"], report["environment"]["machine"], report["environment"]["cpus"]),
        "",
    ]
    return "\n".join(lines)


def _fmt(value: float) -> str:
    text = "%.1f" % value
    return text[:-2] if text.endswith(".0") else text


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="one run per case, results under results/tmp")
    parser.add_argument("--runs", type=int, default=5, help="runs per case (median reported)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    if args.quick and args.out_dir == RESULTS:
        args.out_dir = RESULTS / "tmp"  # a smoke run never replaces the committed results
    cases = []
    for hosts_count in SIZES:
        for mode in ("evacuate", "rebalance"):
            case = run_case(hosts_count, mode, runs)
            print("%5d hosts %-9s %.3f s, %d moves (lower bound %d), %s"
                  % (hosts_count, mode, case["planning_median_s"], case["moves"], case["moves_lower_bound"],
                     case["summary"]))
            cases.append(case)
    report = {
        "benchmark": "planner",
        "runs": runs,
        "seed": SEED,
        "target_s": TARGET_S,
        "environment": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "python": platform.python_version(),
            "machine": platform.platform(),
            "cpus": os.cpu_count() or 0,
        },
        "cases": cases,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "planner.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "planner.md").write_text(render_markdown(report))
    slowest = max(case["planning_median_s"] for case in cases if case["hosts"] == max(SIZES))
    return 0 if slowest <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
