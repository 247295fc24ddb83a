# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Check the convergence model against plain libvirt migrations on the lab.

    /work/main/.venv/bin/python benchmarks/convergence_validation.py [--quick]

For each workload and repetition: create a fresh 256 MiB guest on hv1, read
its balloon statistics, measure its dirty rate over 1 s and 4 s windows (the
collection's measure_dirty_rate), estimate the hot set, predict pre-copy with
the collection's model, migrate it to hv2 with plain libvirt
(migration_runner.plain_migrate) with the same bandwidth cap and downtime
target, check that the guest still runs (a new heartbeat on its console, no
kernel oops), and delete it. Medians over the repetitions go side by side
with the predictions in benchmarks/results/convergence_validation.{json,md}
(--quick: one repetition, results under benchmarks/results/tmp/).

Needs root and the lab (lab/strata-lab up is run first); creates at most one
guest at a time, named cv-<workload>, and deletes it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import time
import typing as t

import libvirt

import labkit
import migration_runner
from labkit import create_guest, delete_guest

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
SRC_URI = "qemu+tcp://127.0.0.11/system"
DST_URI = "qemu+tcp://127.0.0.12/system"
GUEST_MEMORY_MIB = 256
BANDWIDTH_MIBPS = 60
MAX_DOWNTIME_MS = 300
SAMPLE_PERIOD_S = 0.1
# Target of the validation: transferred MiB within this ratio where pre-copy converges.
TOLERANCE = 0.30
CALIBRATION_MEMORY_MIB = 512


labkit.use_collection()
# pylint: disable-next=wrong-import-position
from ansible_collections.strata.migration.plugins.module_utils import _convergence as convergence, _inventory as inventory  # noqa: E402

# label, workload spec, migration timeout (s). "steady" dirties 10 MiB/s of a 96 MiB
# set whose cycle (9.6 s) is longer than its migration; "hot" rewrites 48 MiB as fast
# as it can, which pre-copy at 60 MiB/s cannot follow.
WORKLOADS = (
    ("idle", "idle", 60),
    ("stale", "stale:150", 60),
    ("steady", "hot:128:96:2560", 60),
    ("hot", "hot:128:48:0", 30),
)


def balloon(dom: t.Any) -> t.Dict[str, float]:
    stats = dom.memoryStats()
    return {key: round(stats[key] / 1024.0, 1) for key in ("actual", "unused", "available", "rss") if key in stats}


def measure(dom: t.Any, windows: t.Sequence[int]) -> t.List[t.Tuple[float, float]]:
    return [(float(w), inventory.measure_dirty_rate(dom, w, timeout_s=w + 15)) for w in windows]


def first_pass_mib(result: t.Dict[str, t.Any]) -> float:
    """Non-zero memory QEMU sent in its first pass, read from the timeline.

    The first sample of the second pass holds the first pass plus what
    followed since the switch (half a sample period on average); a migration
    that finished within its first pass sent everything non-zero in it.
    """
    for sample in result["timeline"]:
        if (sample["iteration"] or 0) >= 2:
            return max(0.0, sample["memory_processed_mib"] - BANDWIDTH_MIBPS * SAMPLE_PERIOD_S / 2.0)
    return float(result["memory_normal_mib"] or result["transferred_mib"] or 0.0)


def actual_rounds(result: t.Dict[str, t.Any]) -> t.Optional[int]:
    """Live pre-copy rounds: QEMU counts one bitmap sync before round 0 and one while paused."""
    iterations = result["iterations"]
    if iterations is None:
        return None
    return int(iterations) - 2 if result["completed"] else int(iterations) - 1


def steady_round_mib(result: t.Dict[str, t.Any]) -> t.Optional[float]:
    """MiB per round after the first pass: what pre-copy kept re-sending."""
    later = [s for s in result["timeline"] if (s["iteration"] or 0) >= 2]
    if len(later) < 2 or later[-1]["iteration"] == later[0]["iteration"]:
        return None
    sent = later[-1]["memory_processed_mib"] - later[0]["memory_processed_mib"]
    return round(sent / (later[-1]["iteration"] - later[0]["iteration"]), 1)


def thin_timeline(timeline: t.List[t.Dict[str, t.Any]], keep_every: int = 5) -> t.List[t.Dict[str, t.Any]]:
    """Every keep_every-th sample, each first sample of a round and the last one: enough to plot."""
    kept = []
    for index, sample in enumerate(timeline):
        new_round = index == 0 or sample["iteration"] != timeline[index - 1]["iteration"]
        if new_round or index % keep_every == 0 or index == len(timeline) - 1:
            kept.append(sample)
    return kept


def calibrate_qemu_overhead() -> t.Dict[str, t.Any]:
    """QEMU's own resident memory on the source host, for the memory estimate.

    A fresh idle guest of another size than the measured ones: its QEMU's
    resident memory less the normal pages the first pass of its migration sent.
    """
    name = "cv-calibrate"
    delete_guest(name)
    create_guest(name, "hv1", CALIBRATION_MEMORY_MIB)
    try:
        time.sleep(2.0)
        conn = libvirt.open(SRC_URI)
        try:
            rss = balloon(conn.lookupByName(name))["rss"]
        finally:
            conn.close()
        result = migration_runner.plain_migrate(
            SRC_URI, DST_URI, name, bandwidth_mibps=BANDWIDTH_MIBPS, max_downtime_ms=MAX_DOWNTIME_MS,
            timeout_s=60, sample_period_s=SAMPLE_PERIOD_S,
        )
        sent = first_pass_mib(result)
        return {"guest_memory_mib": CALIBRATION_MEMORY_MIB, "qemu_rss_mib": rss, "first_pass_mib": round(sent, 1),
                "qemu_overhead_mib": round(rss - sent, 1)}
    finally:
        delete_guest(name)


def one_run(
    label: str, spec: str, timeout_s: float, windows: t.Sequence[int], qemu_overhead_mib: t.Optional[float]
) -> t.Dict[str, t.Any]:
    name = "cv-%s" % label
    delete_guest(name)
    create_guest(name, "hv1", GUEST_MEMORY_MIB, spec)
    try:
        time.sleep(2.0)  # a fresh balloon statistics period after the workload's setup
        conn = libvirt.open(SRC_URI)
        try:
            dom = conn.lookupByName(name)
            memory = balloon(dom)
            samples = measure(dom, windows)
        finally:
            conn.close()
        memory_estimate = convergence.estimate_memory_to_send(
            memory["actual"], max(0.0, memory["actual"] - memory["unused"]), memory.get("rss"), qemu_overhead_mib)
        memory_mib = memory_estimate.memory_mib
        estimate = convergence.estimate_hot_set(samples, memory_mib)
        inputs = convergence.MigrationInputs(
            memory_mib=memory_mib,
            dirty_rate_mibps=estimate.dirty_rate_mibps,
            bandwidth_mibps=BANDWIDTH_MIBPS,
            max_downtime_ms=MAX_DOWNTIME_MS,
            hot_set_mib=estimate.hot_set_mib,
            zero_page_mib=GUEST_MEMORY_MIB - memory_mib,
            dirty_rate_window_s=estimate.dirty_rate_window_s,
        )
        prediction = convergence.predict_precopy(inputs)
        boot = labkit.boot_id(name)
        offset = labkit.console_size(name)
        result = migration_runner.plain_migrate(
            SRC_URI, DST_URI, name, bandwidth_mibps=BANDWIDTH_MIBPS, max_downtime_ms=MAX_DOWNTIME_MS,
            timeout_s=timeout_s, sample_period_s=SAMPLE_PERIOD_S,
        )
        health = labkit.guest_health(name, boot, offset)
        measured_memory = first_pass_mib(result)
        check_inputs = convergence.MigrationInputs(**dict(
            inputs.to_dict(), memory_mib=measured_memory, zero_page_mib=GUEST_MEMORY_MIB - measured_memory))
        return {
            "balloon_mib": memory,
            "memory_estimate": memory_estimate.to_dict(),
            "dirty_rate_samples": [{"window_s": w, "dirty_rate_mibps": r} for w, r in samples],
            "hot_set_estimate": estimate.to_dict(),
            "inputs": inputs.to_dict(),
            "prediction": prediction.to_dict(),
            "first_pass_mib": round(measured_memory, 1),
            "prediction_with_first_pass": convergence.predict_precopy(check_inputs).to_dict(),
            "actual": dict(result, rounds=actual_rounds(result), steady_round_mib=steady_round_mib(result),
                           timeline=thin_timeline(result["timeline"])),
            "guest": health,
        }
    finally:
        delete_guest(name)


def _ratio(actual: t.Optional[float], predicted: t.Optional[float]) -> t.Optional[float]:
    if actual is None or not predicted:
        return None
    return round(actual / predicted, 2)


def summarize(runs: t.List[t.Dict[str, t.Any]]) -> t.Dict[str, t.Any]:
    def pred(key: str, which: str = "prediction") -> t.Optional[float]:
        return labkit.median([r[which][key] for r in runs])

    def act(key: str) -> t.Optional[float]:
        return labkit.median([r["actual"][key] for r in runs])

    total_s = labkit.median([r["actual"]["total_ms"] / 1000.0 if r["actual"]["total_ms"] is not None else None
                             for r in runs])
    summary = {
        "repetitions": len(runs),
        "memory_estimate_mib": labkit.median([r["inputs"]["memory_mib"] for r in runs]),
        "first_pass_mib": labkit.median([r["first_pass_mib"] for r in runs]),
        "dirty_rate_mibps": labkit.median([r["inputs"]["dirty_rate_mibps"] for r in runs]),
        "hot_set_mib": labkit.median([r["inputs"]["hot_set_mib"] for r in runs]),
        "predicted_converges": [r["prediction"]["converges"] for r in runs],
        "actual_converged": [r["actual"]["completed"] for r in runs],
        "predicted_rounds": pred("rounds"),
        "actual_rounds": act("rounds"),
        "predicted_transferred_mib": pred("transferred_mib"),
        "actual_transferred_mib": act("transferred_mib"),
        "predicted_transferred_mib_first_pass": pred("transferred_mib", "prediction_with_first_pass"),
        "predicted_total_s": pred("total_s"),
        "predicted_total_s_first_pass": pred("total_s", "prediction_with_first_pass"),
        "actual_total_s": total_s,
        "predicted_downtime_ms": pred("downtime_ms"),
        "actual_downtime_ms": act("downtime_ms"),
        "predicted_stop_copy_mib": pred("stop_copy_mib"),
        "actual_steady_round_mib": act("steady_round_mib"),
        "guest_ok": [r["guest"]["heartbeat_after"] and not r["guest"]["kernel_failure"] for r in runs],
    }
    predicted = sum(summary["predicted_converges"]) * 2 > len(runs)
    actual = sum(summary["actual_converged"]) * 2 > len(runs)
    summary["convergence_matches"] = predicted == actual
    # Without convergence both sides send bandwidth x time until a bound (max_rounds, the
    # timeout): their ratio says nothing about the model.
    both = predicted and actual
    summary["transferred_ratio"] = _ratio(summary["actual_transferred_mib"], summary["predicted_transferred_mib"]
                                          if both else None)
    summary["transferred_ratio_first_pass"] = _ratio(
        summary["actual_transferred_mib"], summary["predicted_transferred_mib_first_pass"] if both else None)
    summary["total_ratio"] = _ratio(summary["actual_total_s"], summary["predicted_total_s"] if both else None)
    summary["total_ratio_first_pass"] = _ratio(
        summary["actual_total_s"], summary["predicted_total_s_first_pass"] if both else None)
    summary["downtime_ratio"] = _ratio(summary["actual_downtime_ms"], summary["predicted_downtime_ms"]
                                       if both else None)
    summary["within_tolerance"] = (
        None if not (predicted and actual) or summary["transferred_ratio"] is None
        else abs(summary["transferred_ratio"] - 1.0) <= TOLERANCE
    )
    return summary


def _cell(value: t.Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "%d/%d" % (sum(bool(v) for v in value), len(value))
    if isinstance(value, float):
        return ("%.2f" % value).rstrip("0").rstrip(".") + suffix
    return "%s%s" % (value, suffix)


def markdown(report: t.Dict[str, t.Any]) -> str:
    meta = report["meta"]
    lines = [
        "# Convergence model vs plain libvirt pre-copy",
        "",
        "Generated by `benchmarks/convergence_validation.py%s` on %s: libvirt %s, QEMU %s, TCG guests of "
        "%d MiB on the lab, migrated hv1 -> hv2 with plain libvirt (LIVE, PEER2PEER), bandwidth capped at "
        "%d MiB/s, max downtime %d ms; %d repetition(s), medians. Ratios are actual / predicted."
        % (" --quick" if meta["quick"] else "", meta["date"], meta["libvirt_version"], meta["qemu_version"],
           GUEST_MEMORY_MIB, meta["bandwidth_mibps"], meta["max_downtime_ms"], meta["repetitions"]),
        "",
        "QEMU's own resident memory on hv1, for the memory estimate: %s MiB%s."
        % (_cell(meta.get("qemu_overhead", {}).get("qemu_overhead_mib")),
           " (given)" if meta.get("qemu_overhead", {}).get("given")
           else " (calibrated: a %s MiB idle guest's QEMU resident memory %s MiB less the %s MiB its first pass sent)"
           % (meta.get("qemu_overhead", {}).get("guest_memory_mib"), meta.get("qemu_overhead", {}).get("qemu_rss_mib"),
              meta.get("qemu_overhead", {}).get("first_pass_mib"))),
        "",
        "| workload | D MiB/s | hot set MiB | memory est. MiB (first pass) | converges pred / actual "
        "| rounds pred / actual | transferred MiB pred / actual (ratio) | with first-pass memory: MiB (ratio), s (ratio) "
        "| total s pred / actual (ratio) | downtime ms pred / actual | guest ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for workload in report["workloads"]:
        s = workload["summary"]
        lines.append(
            "| `%s` | %s | %s | %s (%s) | %s / %s | %s / %s | %s / %s (%s) | %s (%s), %s (%s) | %s / %s (%s) "
            "| %s / %s | %s |"
            % (workload["spec"], _cell(s["dirty_rate_mibps"]), _cell(s["hot_set_mib"]),
               _cell(s["memory_estimate_mib"]), _cell(s["first_pass_mib"]),
               _cell(s["predicted_converges"]), _cell(s["actual_converged"]),
               _cell(s["predicted_rounds"]), _cell(s["actual_rounds"]),
               _cell(s["predicted_transferred_mib"]), _cell(s["actual_transferred_mib"]),
               _cell(s["transferred_ratio"]),
               _cell(s["predicted_transferred_mib_first_pass"]), _cell(s["transferred_ratio_first_pass"]),
               _cell(s["predicted_total_s_first_pass"]), _cell(s["total_ratio_first_pass"]),
               _cell(s["predicted_total_s"]), _cell(s["actual_total_s"]), _cell(s["total_ratio"]),
               _cell(s["predicted_downtime_ms"]), _cell(s["actual_downtime_ms"]), _cell(s["guest_ok"]))
        )
    lines += ["", "Per workload:", ""]
    for workload in report["workloads"]:
        s = workload["summary"]
        verdict = "convergence predicted correctly" if s["convergence_matches"] else "CONVERGENCE MISPREDICTED"
        if s["within_tolerance"] is not None:
            verdict += ", transferred %s the +-%d%% target" % (
                "within" if s["within_tolerance"] else "OUTSIDE", int(TOLERANCE * 100))
            first_pass = s["transferred_ratio_first_pass"]
            if not s["within_tolerance"] and first_pass is not None and abs(first_pass - 1.0) <= TOLERANCE:
                verdict += " through the memory estimate (with the first-pass memory: ratio %s)" % _cell(first_pass)
        extra = ""
        if s["actual_steady_round_mib"] is not None and not any(s["predicted_converges"]):
            extra = "; after the first pass QEMU re-sent %s MiB per round (model's floor: %s MiB)" % (
                _cell(s["actual_steady_round_mib"]), _cell(s["predicted_stop_copy_mib"]))
        failures = [r["guest"]["kernel_failure"] or "no heartbeat" for r in workload["runs"]
                    if not r["guest"]["heartbeat_after"] or r["guest"]["kernel_failure"]]
        if failures:
            extra += "; the guest failed after %d of %d migrations (%s)" % (
                len(failures), len(workload["runs"]), failures[0].split("\r")[0].split("\n")[0])
        lines.append("- `%s`: %s%s. Model (first run): %s" % (
            workload["spec"], verdict, extra, workload["runs"][0]["prediction"]["reason"]))
    lines += ["", "Notes:", ""] + ["- %s" % note for note in report["notes"]]
    return "\n".join(lines) + "\n"


NOTES = (
    "Memory estimate: memory the guest used and freed keeps its contents and still crosses as normal pages, "
    "and the guest's balloon statistics cannot see it (`actual - unused` is only what it uses now: ~65 MiB "
    "for `idle` and `stale:150` alike). QEMU's resident memory (balloon statistic `rss`) holds every page the "
    "guest ever wrote plus QEMU's own share, so the estimate is `rss` less that share, kept between "
    "`actual - unused` and `actual` (`_convergence.estimate_memory_to_send`, the pre-flight's "
    "`qemu_overhead_mib`). The share is measured once per run with a calibration guest of another size "
    "(512 MiB, idle): its `rss` less the normal pages its first pass sent. After compaction `actual - unused` "
    "alone is exact.",
    "The column 'with first-pass memory' feeds the model the non-zero memory QEMU really sent in its first "
    "pass: it separates the error of the memory estimate from the error of the round model.",
    "Predicted downtime is an upper bound: the model sends the stop-and-copy rest at the capped bandwidth "
    "(stop_copy_bandwidth_mibps unset), QEMU lifts the cap while the guest is paused.",
    "QEMU 7.2 under TCG loses guest writes during migration: the fast path of "
    "cpu_physical_memory_sync_dirty_bitmap clears dirty bits without resetting the TCG TLB, so stores through "
    "TLB entries already marked dirty are not tracked (fixed upstream by 'system/physmem: Fix migration dirty "
    "bitmap coherency with TCG memory access', Feb 2024; not in Debian 12's 7.2). Lab guests now boot with "
    "`pti=on`, which reloads CR3 (and so flushes QEMU's TLB) on every kernel entry and exit. Before that, in "
    "other runs of this script the `hot:128:48:0` guest 'converged' 3 times out of 3 after 4-11 "
    "rounds with only ~25 MiB re-sent per round, and all three `hot:128:96:2560` guests hit a kernel BUG or "
    "panic right after the move (stale pages on the destination). The guest column checks for that. KVM hosts "
    "and fixed QEMU track every write.",
    "Without convergence, both sides send bandwidth x time until a bound (the model's max_rounds=30, the "
    "script's 30 s timeout and abortJob): transferred and time are not compared. QEMU re-syncs its dirty bitmap "
    "whenever less than bandwidth x downtime is left, so its 'iterations' are shorter than the model's rounds "
    "and re-send less than the whole hot set each (hot pages still waiting to be sent are not counted twice).",
)


def write(stem: str, report: t.Dict[str, t.Any]) -> None:
    with open(stem + ".json", "w") as handle:
        json.dump(report, handle, indent=1)
        handle.write("\n")
    with open(stem + ".md", "w") as handle:
        handle.write(markdown(report))
    print("wrote %s.json and %s.md" % (stem, stem))


def render(path: str) -> int:
    with open(path) as handle:
        report = json.load(handle)
    for workload in report["workloads"]:
        workload["summary"] = summarize(workload["runs"])
    report["notes"] = list(NOTES)
    write(os.path.splitext(path)[0], report)
    return 0


def versions() -> t.Tuple[str, str]:
    conn = libvirt.open(SRC_URI)
    try:
        return inventory.format_version(conn.getLibVersion()), inventory.format_version(conn.getVersion())
    finally:
        conn.close()


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, one 1 s and one 4 s window")
    parser.add_argument("--repetitions", type=int, default=None, help="repetitions per workload (default 3)")
    parser.add_argument("--qemu-overhead-mib", type=float, default=None,
                        help="QEMU's own resident memory on hv1; measured with a calibration guest when not given")
    parser.add_argument("--only", action="append", default=[], help="run only this workload label (repeatable)")
    parser.add_argument("--render-only", metavar="JSON",
                        help="summarize an earlier JSON result again and rewrite it and its .md; no lab needed")
    args = parser.parse_args(argv)
    if args.render_only:
        return render(args.render_only)
    # A plain kill still deletes the guest being measured (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    repetitions = args.repetitions or (1 if args.quick else 3)
    windows = (1, 4) if args.quick else (1, 1, 1, 4, 4)
    labkit.lab("up")
    libvirt_version, qemu_version = versions()
    report: t.Dict[str, t.Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": args.quick,
            "repetitions": repetitions,
            "libvirt_version": libvirt_version,
            "qemu_version": qemu_version,
            "guest_memory_mib": GUEST_MEMORY_MIB,
            "bandwidth_mibps": BANDWIDTH_MIBPS,
            "max_downtime_ms": MAX_DOWNTIME_MS,
            "dirty_rate_windows_s": list(windows),
            "src_uri": SRC_URI,
            "dst_uri": DST_URI,
        },
        "workloads": [],
        "notes": list(NOTES),
    }
    if args.qemu_overhead_mib is None:
        calibration = calibrate_qemu_overhead()
        print("calibration: QEMU's own resident memory %.1f MiB" % calibration["qemu_overhead_mib"], flush=True)
    else:
        calibration = {"qemu_overhead_mib": args.qemu_overhead_mib, "given": True}
    report["meta"]["qemu_overhead"] = calibration
    for label, spec, timeout_s in WORKLOADS:
        if args.only and label not in args.only:
            continue
        runs = []
        for repetition in range(repetitions):
            run = one_run(label, spec, timeout_s, windows, calibration["qemu_overhead_mib"])
            runs.append(run)
            actual = run["actual"]
            print("%-7s #%d predicted %s, %.0f MiB | actual %s, %.0f MiB, %s ms, downtime %s ms | guest %s" % (
                label, repetition + 1,
                "converges" if run["prediction"]["converges"] else "no convergence",
                run["prediction"]["transferred_mib"],
                "completed" if actual["completed"] else "aborted", actual["transferred_mib"] or 0,
                actual["total_ms"], actual["downtime_ms"],
                "ok" if run["guest"]["heartbeat_after"] and not run["guest"]["kernel_failure"] else run["guest"],
            ), flush=True)
        report["workloads"].append({"label": label, "spec": spec, "timeout_s": timeout_s,
                                    "summary": summarize(runs), "runs": runs})
    out_dir = os.path.join(BENCH_DIR, "results", "tmp") if args.quick else os.path.join(BENCH_DIR, "results")
    os.makedirs(out_dir, exist_ok=True)
    write(os.path.join(out_dir, "convergence_validation%s" % (".quick" if args.quick else "")), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
