# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Recovery time: from a host's crash to each of its VMs running again elsewhere, through the collection's rulebook.

For each repetition, VMs with disk workloads on the shared pool run on one lab host;
their definitions are backed up (strata.migration.definitions_backup's function);
ansible-rulebook runs the collection's rulebook (strata.migration.recover_hosts) with
its event source watching every host at the default detection bounds; then the
host crashes (`strata-lab host crash`: libvirtd, sshd and every QEMU killed at
once). The rulebook's recover playbook fences the host with a tasks file that
confirms nothing answers on its ssh port and records when it ran, then restarts
the VMs on the survivors. The benchmark polls the survivors for each VM.

Phases per VM: detection (crash to the event source's host_down), playbook (that
event to the start of fencing: ansible-playbook starting, the role's checks and its
own test that the host is down), fencing, restart (end of fencing to the VM running
on a survivor); and when its guest's userspace was up again (its console's ready line).

Run from the repository root with the lab up (three hosts):

    .venv/bin/python benchmarks/recovery_benchmark.py [--quick]

Writes recovery.json, .md and .png in --out-dir (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing as t
import urllib.parse
from pathlib import Path

import labkit
import plot

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_S = 30.0
DEFAULT_RUNS = 3
DEFAULT_VMS = 4
RECOVERY_BOUND_S = 120.0
SOURCE_READY_BOUND_S = 60.0
# After the source says it started, time for its first connections to open.
CONNECT_SETTLE_S = 5.0
POLL_S = 0.25
READY_LINE = re.compile(rb"strata-workload: ready ")
PHASE_KEYS = ("detection_s", "playbook_s", "fencing_s", "restart_s", "running_s", "guest_ready_s")

FENCE_TASKS = """---
- name: Note when fencing starts
  ansible.builtin.shell: echo "start $(date +%s.%N) {{ ansible_eda.event.strata.detected_at | default('') }}" >> FENCE_LOG
  changed_when: true
  delegate_to: localhost
- name: Confirm that {{ recover_fence_host }} is off
  ansible.builtin.wait_for:
    host: "{{ hostvars[recover_fence_host].strata_migration_address }}"
    port: 22
    state: stopped
    timeout: 5
  delegate_to: localhost
- name: Note when fencing ends
  ansible.builtin.shell: echo "end $(date +%s.%N)" >> FENCE_LOG
  changed_when: true
  delegate_to: localhost
"""


def lab_hosts() -> t.List[t.Dict[str, t.Any]]:
    """The lab's running hosts, each with the address its sshd and libvirtd listen on."""
    return [dict(host, address=urllib.parse.urlsplit(host["uri"]).hostname)
            for host in labkit.lab("status", "--json") if host.get("up")]


def write_inventory(path: Path, hosts: t.Sequence[t.Mapping[str, t.Any]]) -> None:
    entries = {host["name"]: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                              "strata_libvirt_uri": host["uri"], "strata_migration_address": host["address"]}
               for host in hosts}
    # localhost explicitly: ansible-rulebook limits its playbooks to the rulebook's hosts (localhost).
    localhost = {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}
    path.write_text(json.dumps({"all": {"hosts": localhost, "children": {"hypervisors": {"hosts": entries}}}}))


def back_up(hosts: t.Sequence[t.Mapping[str, t.Any]], path: Path) -> None:
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.strata.migration.plugins.module_utils._cluster import ClusterHost
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.strata.migration.plugins.module_utils._definitions import back_up as collection_back_up

    collection_back_up([ClusterHost(name=host["name"], uri=host["uri"]) for host in hosts], str(path), 10)


def start_rulebook(work: Path, inventory: Path, collections: str) -> subprocess.Popen:
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections,
               PATH=bin_dir + ":" + os.environ.get("PATH", ""), ANSIBLE_NOCOLOR="1")
    log = open(work / "rulebook.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [os.path.join(bin_dir, "ansible-rulebook"), "-i", str(inventory), "-r", "strata.migration.recover_hosts",
             "-e", str(work / "rulebook-vars.yml"), "-v", "--print-events"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        log.close()


def wait_for_source(work: Path, rulebook: subprocess.Popen) -> None:
    deadline = time.monotonic() + SOURCE_READY_BOUND_S
    while time.monotonic() < deadline:
        if rulebook.poll() is not None:
            raise SystemExit("ansible-rulebook exited with %s; see %s" % (rulebook.returncode, work / "rulebook.log"))
        if b"Waiting for events" in (work / "rulebook.log").read_bytes():
            time.sleep(CONNECT_SETTLE_S)
            return
        time.sleep(0.5)
    raise SystemExit("the event source did not start within %g s; see %s"
                     % (SOURCE_READY_BOUND_S, work / "rulebook.log"))


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def watch_restarts(guests: t.Sequence[str], survivors: t.Sequence[t.Mapping[str, t.Any]],
                   offsets: t.Mapping[str, int]) -> t.Dict[str, t.Dict[str, t.Optional[float]]]:
    """When each guest ran on a survivor and when its userspace printed ready again (wall clock), bounded."""
    import libvirt  # pylint: disable=import-outside-toplevel

    conns = [(host["name"], libvirt.openReadOnly(host["uri"])) for host in survivors]
    seen: t.Dict[str, t.Dict[str, t.Optional[float]]] = {name: {"running_at": None, "ready_at": None, "host": None}
                                                         for name in guests}
    deadline = time.monotonic() + RECOVERY_BOUND_S
    try:
        while time.monotonic() < deadline and any(v["ready_at"] is None for v in seen.values()):
            now = time.time()
            for name, mark in seen.items():
                if mark["running_at"] is None:
                    for host, conn in conns:
                        if name in {dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}:
                            mark["running_at"], mark["host"] = now, host
                if mark["ready_at"] is None and READY_LINE.search(labkit.console_since(name, offsets[name]).encode()):
                    mark["ready_at"] = now
            time.sleep(POLL_S)
    finally:
        for _host, conn in conns:
            conn.close()
    return seen


def fence_times(path: Path) -> t.Dict[str, float]:
    times: t.Dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            fields = line.split()
            if fields and fields[0] == "start" and "fence_start" not in times:
                times["fence_start"] = float(fields[1])
                if len(fields) > 2 and fields[2]:
                    times["detected_at"] = float(fields[2])
            elif fields and fields[0] == "end" and "fence_end" not in times:
                times["fence_end"] = float(fields[1])
    return times


def one_run(run: int, vms: int, failed: t.Mapping[str, t.Any], hosts: t.Sequence[t.Mapping[str, t.Any]],
            collections: str) -> t.List[t.Dict[str, t.Any]]:
    work = Path(tempfile.mkdtemp(prefix="strata-bench-recovery-"))
    guests = ["recovery-%d-%d" % (run, index) for index in range(1, vms + 1)]
    rulebook = None
    try:
        for name in guests:
            labkit.lab_retrying("guest", "create", name, "--host", failed["name"], "--memory-mib", "128",
                                "--workload", "disk:4:20", "--disk-mib", "16", "--disk-pool", "shared")
        back_up(hosts, work / "definitions.json")
        write_inventory(work / "inventory.json", hosts)
        (work / "fence.yml").write_text(FENCE_TASKS.replace("FENCE_LOG", str(work / "fence.log")))
        (work / "rulebook-vars.yml").write_text(json.dumps({
            "strata_hypervisors": [{"name": host["name"], "uri": host["uri"]} for host in hosts],
            "recover_fence_tasks": str(work / "fence.yml"),
            **{"recover_%s" % key: str(work / name) for key, name in (
                ("definitions_path", "definitions.json"), ("manifest_path", "recover-manifest.json"),
                ("report_json", "recover-report.json"), ("report_junit", "recover-junit.xml"))}}))
        rulebook = start_rulebook(work, work / "inventory.json", collections)
        wait_for_source(work, rulebook)
        offsets = {name: labkit.console_size(name) for name in guests}
        crashed_at = time.time()
        labkit.lab("host", "crash", failed["name"])
        seen = watch_restarts(guests, [host for host in hosts if host["name"] != failed["name"]], offsets)
        fence = fence_times(work / "fence.log")
    finally:
        if rulebook is not None:
            stop(rulebook)
        labkit.lab("host", "start", failed["name"])
        for name in guests:
            labkit.delete_guest(name)
    rows = []
    detected = fence.get("detected_at")
    for name in guests:
        mark = seen[name]

        def since(value: t.Optional[float], start: t.Optional[float]) -> t.Optional[float]:
            return None if value is None or start is None else round(value - start, 2)

        rows.append({
            "run": run, "vm": name, "restarted_on": mark["host"],
            "detection_s": since(detected, crashed_at),
            "playbook_s": since(fence.get("fence_start"), detected),
            "fencing_s": since(fence.get("fence_end"), fence.get("fence_start")),
            "restart_s": since(mark["running_at"], fence.get("fence_end")),
            "running_s": since(mark["running_at"], crashed_at),
            "guest_ready_s": since(mark["ready_at"], crashed_at),
        })
    if not all(row["running_s"] is not None for row in rows):
        print((work / "rulebook.log").read_text()[-4000:], file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return rows


def summarize(rows: t.Sequence[t.Mapping[str, t.Any]], vms: int) -> t.Dict[str, t.Any]:
    running = [row["running_s"] for row in rows]
    worst = None if any(value is None for value in running) else max(running)
    return {
        "vms": len(rows),
        "restarted": sum(1 for value in running if value is not None),
        "median": {key: labkit.median(row[key] for row in rows) for key in PHASE_KEYS},
        "worst_running_s": worst,
        "target": {"all running within s": TARGET_S, "vms per run": vms,
                   "passed": worst is not None and worst <= TARGET_S},
    }


def render_markdown(report: t.Mapping[str, t.Any]) -> str:
    summary = report["summary"]
    env = report["environment"]
    lines = [
        "# Recovery time: a crashed host's VMs running again elsewhere",
        "",
        "`benchmarks/recovery_benchmark.py`, %s. %d VM(s) per run (128 MiB, a disk workload on the shared pool) on "
        "%s, which crashes; the collection's rulebook (ansible-rulebook %s, the event source at its default bounds: "
        "keepalive every 2 s, 2 probes, host down after 5 s without a new connection) runs the recover playbook; "
        "libvirt %s, QEMU %s (TCG). %d repetition(s). Command: `%s`."
        % (env["date"], report["parameters"]["vms"], report["parameters"]["failed_host"], report["rulebook_version"],
           env["libvirt"], env["qemu"], report["parameters"]["runs"], report["command"]),
        "",
    ]
    lines += labkit.targets_table([{"case": "%d VMs" % report["parameters"]["vms"],
                                    "target": "all running within %g s of the crash" % TARGET_S,
                                    "passed": summary["target"]["passed"],
                                    "measured": "worst %s s, %d of %d restarted" % (
                                        labkit.fmt(summary["worst_running_s"], "%.1f"), summary["restarted"],
                                        summary["vms"])}])
    lines += ["", "Seconds from the crash; phases as in the script's description.", "",
              "| run | VM | on | detection | playbook | fencing | restart | running | guest ready |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            row["run"], row["vm"], row["restarted_on"] or "-",
            *(labkit.fmt(row[key], "%.1f") for key in PHASE_KEYS)))
    median = summary["median"]
    lines.append("| median | | | %s |" % " | ".join(labkit.fmt(median[key], "%.1f") for key in PHASE_KEYS))
    lines += ["", "![recovery timeline](%s)" % report["figure"], ""]
    return "\n".join(lines)


def plot_timeline(rows: t.Sequence[t.Mapping[str, t.Any]], path: Path) -> None:
    figure, axes = plot.plt.subplots(figsize=(8, 0.45 * len(rows) + 1.6))
    phases = (("detection_s", "detection"), ("playbook_s", "playbook"), ("fencing_s", "fencing"),
              ("restart_s", "restart"))
    for index, row in enumerate(rows):
        left = 0.0
        for key, label in phases:
            width = row[key] or 0.0
            axes.barh(index, width, left=left, color="C%d" % phases.index((key, label)),
                      label=label if index == 0 else None)
            left += width
        if row["guest_ready_s"] is not None:
            axes.plot(row["guest_ready_s"], index, "k|", markersize=12, label="guest ready" if index == 0 else None)
    axes.axvline(TARGET_S, color="red", linestyle="--", label="target %g s" % TARGET_S)
    axes.set_yticks(range(len(rows)), ["run %d %s" % (row["run"], row["vm"].rsplit("-", 1)[1]) for row in rows])
    axes.set_xlabel("seconds since the host crashed")
    axes.set_title("Recovery of a crashed host's VMs, through the rulebook")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plot.plt.close(figure)


def rulebook_version() -> str:
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-rulebook"), "--version"],
                          capture_output=True, text=True, check=False)
    found = re.search(r"ansible-rulebook \[([^\]]+)\]", done.stdout)
    return found.group(1) if found else "unknown"


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--vms", type=int, default=DEFAULT_VMS)
    parser.add_argument("--failed-host", default="hv2")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repetition of 2 VMs, results under tmp/")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs, vms = (1, 2) if args.quick else (args.runs, args.vms)
    out_dir = labkit.smoke_out_dir(args.out_dir, RESULTS, args.quick)
    hosts = lab_hosts()
    failed = next((host for host in hosts if host["name"] == args.failed_host), None)
    if failed is None or len(hosts) < 2:
        raise SystemExit("the lab needs host %s and at least one other: lab/strata-lab up --hosts 3" % args.failed_host)
    collections = labkit.use_collection()
    survivor = next(host for host in hosts if host["name"] != args.failed_host)
    env = labkit.environment(failed["uri"], survivor["uri"])
    rows: t.List[t.Dict[str, t.Any]] = []
    for run in range(1, runs + 1):
        rows += one_run(run, vms, failed, hosts, collections)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = out_dir / "recovery.png"
    plot_timeline(rows, figure)
    report = {
        "benchmark": "recovery",
        "command": labkit.command_line("recovery_benchmark.py", argv),
        "parameters": {"runs": runs, "vms": vms, "failed_host": args.failed_host, "quick": args.quick,
                       "target_s": TARGET_S},
        "rulebook_version": rulebook_version(),
        "environment": env,
        "summary": summarize(rows, vms),
        "rows": rows,
        "figure": figure.name,
    }
    labkit.write_report(out_dir, "recovery", report, render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
