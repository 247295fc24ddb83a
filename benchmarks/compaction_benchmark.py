# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Plain libvirt live migration with and without balloon compaction first.

The guest has used most of its memory once and freed it (lab workload
``stale:N``): Linux keeps the contents of freed pages, so a plain migration
sends them. Compaction (the collection's ``_compaction.ensure_compacted``, what
``strata.migration.memory_compact`` runs) balloons the guest down to its
working set plus headroom first, so that memory goes as zero pages.

Each measurement uses a fresh guest, so both sides start from the same memory
state; the two modes alternate within a run. Reported per measurement and as
medians: bytes sent, migration time, downtime, the destination QEMU's resident
memory after the migration, and for compaction its own time.

Run from the repository root, with the lab up:

    .venv/bin/python benchmarks/compaction_benchmark.py [--quick]

Writes benchmarks/results/compaction.json and compaction.md (with --quick, under results/tmp/).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import typing as t
from pathlib import Path

import libvirt

import labkit
import migration_runner
from labkit import create_guest, delete_guest, host_uri

labkit.use_collection()
# pylint: disable-next=wrong-import-position
from ansible_collections.strata.migration.plugins.module_utils._compaction import (  # noqa: E402
    compaction_params,
    ensure_compacted,
    ensure_restored,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODES = ("plain", "compacted")
# Seconds between the guest's ready marker and the measurement: a few balloon
# statistics reports, the same for both modes.
SETTLE_S = 3.0
# Seconds after the migration before the destination's RSS is read.
RSS_SETTLE_S = 1.0


def compact(uri: str, name: str) -> t.Dict[str, t.Any]:
    conn = libvirt.open(uri)
    try:
        changed, result = ensure_compacted(conn.lookupByName(name), compaction_params())
    finally:
        conn.close()
    return result.to_dict()


def restore(uri: str, name: str) -> t.Dict[str, t.Any]:
    conn = libvirt.open(uri)
    try:
        changed, result = ensure_restored(conn.lookupByName(name), compaction_params(state="restored"))
    finally:
        conn.close()
    return result.to_dict()


def measure(mode: str, run: int, args: argparse.Namespace, src_uri: str, dst_uri: str) -> t.Dict[str, t.Any]:
    name = "mc-bench-%s-%d" % (mode, run)
    delete_guest(name)
    create_guest(name, args.src, args.memory_mib, args.workload)
    try:
        time.sleep(SETTLE_S)
        src_rss_mib = migration_runner.qemu_rss_mib(src_uri, name)
        compaction = compact(src_uri, name) if mode == "compacted" else None
        migration = migration_runner.plain_migrate(
            src_uri, dst_uri, name, max_downtime_ms=args.max_downtime_ms, timeout_s=args.timeout_s,
        )
        if not migration["completed"]:
            raise SystemExit("%s: migration did not complete: %s" % (name, migration["error"]))
        time.sleep(RSS_SETTLE_S)
        dst_rss_mib = migration_runner.qemu_rss_mib(dst_uri, name)
        restoration = restore(dst_uri, name) if mode == "compacted" else None
    finally:
        delete_guest(name)
    compaction_s = compaction["elapsed_s"] if compaction else 0.0
    return {
        "mode": mode,
        "run": run,
        "guest": name,
        "transferred_mib": migration["transferred_mib"],
        "memory_normal_mib": migration["memory_normal_mib"],
        "memory_zero_mib": migration["memory_zero_mib"],
        "total_ms": migration["total_ms"],
        "downtime_ms": migration["downtime_ms"],
        "iterations": migration["iterations"],
        "src_rss_mib": src_rss_mib,
        "dst_rss_mib": dst_rss_mib,
        "compaction_s": compaction_s,
        "end_to_end_s": round(compaction_s + (migration["total_ms"] or 0) / 1000.0, 3),
        "compaction": None if compaction is None else {
            key: compaction[key]
            for key in ("before_mib", "target_mib", "after_mib", "reclaimed_mib", "settle_s", "elapsed_s", "plan")
        },
        "restore": None if restoration is None else {
            key: restoration[key] for key in ("before_mib", "after_mib", "settle_s", "elapsed_s", "reached_target")
        },
        "migration": {key: value for key, value in migration.items() if key not in ("completed_stats",)},
    }


METRICS = (
    ("transferred_mib", "MiB sent", "%.1f"),
    ("memory_normal_mib", "MiB sent as normal pages", "%.1f"),
    ("total_ms", "migration time (ms)", "%.0f"),
    ("downtime_ms", "downtime (ms)", "%.0f"),
    ("dst_rss_mib", "destination QEMU RSS (MiB)", "%.1f"),
    ("compaction_s", "compaction time (s)", "%.2f"),
    ("end_to_end_s", "compaction + migration (s)", "%.2f"),
)


def summarize(measurements: t.List[t.Dict[str, t.Any]]) -> t.Dict[str, t.Any]:
    medians: t.Dict[str, t.Dict[str, t.Optional[float]]] = {}
    for mode in MODES:
        rows = [m for m in measurements if m["mode"] == mode]
        medians[mode] = {}
        for key, _label, _fmt in METRICS:
            values = [row[key] for row in rows if row[key] is not None]
            medians[mode][key] = round(statistics.median(values), 3) if values else None
    ratios = {}
    for key, _label, _fmt in METRICS:
        plain, compacted = medians["plain"][key], medians["compacted"][key]
        ratios[key] = round(plain / compacted, 2) if plain and compacted else None
    reclaimed = [m["compaction"]["reclaimed_mib"] for m in measurements if m["compaction"]]
    settle = [m["compaction"]["settle_s"] for m in measurements if m["compaction"]]
    return {
        "medians": medians,
        "plain_over_compacted": ratios,
        "reclaimed_mib_median": statistics.median(reclaimed) if reclaimed else None,
        "balloon_settle_s_median": statistics.median(settle) if settle else None,
    }


def render_markdown(report: t.Dict[str, t.Any]) -> str:
    params, summary = report["parameters"], report["summary"]
    lines = [
        "# Balloon compaction before migration",
        "",
        "`benchmarks/compaction_benchmark.py`, %s. A %d MiB guest that wrote %s MiB and freed it (workload "
        "`%s`), migrated %s -> %s by plain libvirt (`migration_runner.plain_migrate`: live, peer-to-peer, "
        "max downtime %d ms, no compression), with and without `memory_compact` (defaults: headroom 64 MiB or "
        "10%%, at least 128 MiB) first. A fresh guest per measurement; %d run(s) of each, medians below."
        % (report["environment"]["date"], params["memory_mib"], params["workload"].split(":")[1],
           params["workload"], params["src"], params["dst"], params["max_downtime_ms"], params["runs"]),
        "",
        "| | plain libvirt | compacted first | plain / compacted |",
        "|---|---:|---:|---:|",
    ]
    for key, label, fmt in METRICS:
        plain = summary["medians"]["plain"][key]
        compacted = summary["medians"]["compacted"][key]
        ratio = summary["plain_over_compacted"][key]
        lines.append("| %s | %s | %s | %s |" % (
            label,
            fmt % plain if plain is not None else "-",
            fmt % compacted if compacted is not None else "-",
            "%.2fx" % ratio if ratio else "-",
        ))
    lines += [
        "",
        "Compaction reclaimed %s MiB (median); the balloon settled %s s after the request. "
        "The compaction time includes waiting for one fresh balloon statistics report (period 1 s)."
        % (summary["reclaimed_mib_median"], summary["balloon_settle_s_median"]),
        "",
        "## Every measurement",
        "",
        "| run | mode | MiB sent | normal MiB | migration ms | downtime ms | dst RSS MiB | compaction s | balloon MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["measurements"]:
        balloon = "-"
        if row["compaction"]:
            balloon = "%d -> %d" % (row["compaction"]["before_mib"], row["compaction"]["after_mib"])
        lines.append("| %d | %s | %.1f | %.1f | %s | %s | %s | %.2f | %s |" % (
            row["run"], row["mode"], row["transferred_mib"], row["memory_normal_mib"] or 0, row["total_ms"],
            row["downtime_ms"], row["dst_rss_mib"], row["compaction_s"], balloon,
        ))
    lines += [
        "",
        "Environment: libvirt %s, QEMU %s, TCG guests on %d CPUs shared with the other lab guests running at the "
        "time, loopback network. Times vary with that load; bytes sent do not."
        % (report["environment"]["libvirt"], report["environment"]["qemu"], report["environment"]["cpus"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3, help="measurements per mode (default 3)")
    parser.add_argument("--quick", action="store_true", help="one measurement per mode")
    parser.add_argument("--src", default="hv1")
    parser.add_argument("--dst", default="hv2")
    parser.add_argument("--memory-mib", type=int, default=512)
    parser.add_argument("--workload", default="stale:380")
    parser.add_argument("--max-downtime-ms", type=int, default=300)
    parser.add_argument("--timeout-s", type=float, default=60)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    if args.quick and args.out_dir == RESULTS:
        args.out_dir = RESULTS / "tmp"  # a smoke run never replaces the committed results
    if runs < 1:
        parser.error("--runs must be at least 1")
    src_uri, dst_uri = host_uri(args.src), host_uri(args.dst)
    measurements = []
    for run in range(1, runs + 1):
        for mode in MODES:
            row = measure(mode, run, args, src_uri, dst_uri)
            print("run %d %-9s sent %7.1f MiB  %5s ms  downtime %4s ms  dst rss %6s MiB  compaction %.2f s"
                  % (run, mode, row["transferred_mib"], row["total_ms"], row["downtime_ms"], row["dst_rss_mib"],
                     row["compaction_s"]), file=sys.stderr)
            measurements.append(row)
    report = {
        "benchmark": "compaction",
        "parameters": {
            "runs": runs, "src": args.src, "dst": args.dst, "memory_mib": args.memory_mib,
            "workload": args.workload, "max_downtime_ms": args.max_downtime_ms, "timeout_s": args.timeout_s,
            "compaction": {
                key: value for key, value in dataclasses.asdict(compaction_params()).items()
                if key in ("headroom_mib", "headroom_percent", "min_memory_mib", "timeout_s")
            },
        },
        "environment": labkit.environment(src_uri, dst_uri),
        "summary": summarize(measurements),
        "measurements": measurements,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "compaction.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    (args.out_dir / "compaction.md").write_text(render_markdown(report))
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
