# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Evacuating one lab host: a plain virsh loop against the collection's evacuate playbook, before and after a change.

Each repetition starts the lab (three hosts, stock stack) and, for each method in turn, puts five fresh
256 MiB guests on the source host (hv1): two stale (160 MiB written once, then freed: contents kept), two
idle, one hot (a 128 MiB working set, its first 64 MiB rewritten at 3000 pages/s, about 12 MiB/s, which
converges under the cap). The methods, all at the same bandwidth cap per migration:

- ``virsh_loop``: what an operator types, one VM after the other, destinations round-robin among the
  other hosts: ``virsh -c SRC migrate --live --p2p --persistent --undefinesource --bandwidth CAP
  --migrateuri tcp://DEST_ADDRESS VM DEST`` (the migration address the role also uses);
- ``role_before``: ``ansible-playbook -i INVENTORY strata.migration.evacuate -e evacuate_hosts=hv1
  -e evacuate_bandwidth_mibps=CAP`` with the collection staged from git revision ``--before-rev``
  (``git archive``);
- ``role_after``: the same from the working tree as it is when the benchmark starts (staged as
  ``make stage`` does: the files ``git ls-files --cached --others --exclude-standard`` lists, as they
  are on disk), with ``--after-extra-vars KEY=VALUE`` added.

Measured per method: the wall time of the whole command, the span from the first move's start to the
last one's end, each move's start and end (virsh: around its command; the roles: when the manifest
first shows the move running and then done, polled every 0.1 s), libvirt's job time and the memory
sent per move (virsh: the destination's completed incoming job, which libvirt 9 keeps, the source
having undefined the domain; the roles: the manifest's figures), when libvirt's job ran on the source
(polled), and the per-move overhead (move time - job time). The floor is the memory the guests use
(balloon statistics: actual - unused, summed) divided by the cap. After each method every guest must
run exactly once, not on the source, with a heartbeat of the same boot after the move.

Run from the repository root (the lab is brought up if it is not):

    .venv/bin/python benchmarks/evacuation_benchmark.py [--repetitions 2] [--methods virsh_loop,role_before]

Writes evacuation.json, .md and .png in --out-dir (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
import urllib.parse
from pathlib import Path

import labkit
import libvirt
import plot

ROOT = Path(labkit.REPO_ROOT)
RESULTS = ROOT / "benchmarks" / "results"
LAB_INVENTORY = Path("/var/lib/strata-lab/inventory.yml")
METHODS = ("virsh_loop", "role_before", "role_after")
METHOD_CODES = {"virsh_loop": "vl", "role_before": "rb", "role_after": "ra"}
GUEST_MEMORY_MIB = 256
# kind -> lab workload; stale:192 does not fit a 256 MiB guest beside its initramfs (the OOM killer takes it).
GUESTS = (
    ("stale1", "stale:160"),
    ("stale2", "stale:160"),
    ("idle1", "idle"),
    ("idle2", "idle"),
    ("hot1", "hot:128:64:3000"),
)
# After the last guest is up: the stale guests have freed their memory and the balloon statistics are fresh.
SETTLE_S = 5.0
POLL_S = 0.1
VIRSH_MIGRATE_TIMEOUT_S = 180.0
PLAYBOOK_TIMEOUT_S = 900.0
SPAN_FACTOR, SPAN_SLACK_S, OVERHEAD_TARGET_S = 1.3, 2.0, 1.0

# A callback the roles run with: when each task started and ended, to say where their time goes.
TIMER_CALLBACK = '''
from __future__ import annotations
import json, os, time
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: strata_bench_timer
type: aggregate
short_description: task start and end times, for the evacuation benchmark
description: [task start and end times, for the evacuation benchmark]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "strata_bench_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._path = os.environ["STRATA_BENCH_TASK_LOG"]

    def _write(self, **entry):
        with open(self._path, "a") as handle:
            handle.write(json.dumps(dict(entry, t=time.time())) + "\\n")

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._write(event="start", task=task.get_name())

    def v2_playbook_on_stats(self, stats):
        self._write(event="end", task=None)
'''


# ---- the lab ------------------------------------------------------------------------------------


def lab_hosts() -> t.List[t.Dict[str, t.Any]]:
    return [dict(host, address=urllib.parse.urlsplit(host["uri"]).hostname)
            for host in labkit.lab("status", "--json") if host.get("up")]


def create_guests(names: t.Sequence[str], host: str) -> None:
    for name, (_kind, workload) in zip(names, GUESTS):
        labkit.delete_guest(name)
        labkit.lab_retrying("guest", "create", name, "--host", host, "--memory-mib", str(GUEST_MEMORY_MIB),
                            "--workload", workload)


def running_guests(uri: str) -> t.List[str]:
    conn = libvirt.openReadOnly(uri)
    try:
        return sorted(dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
    finally:
        conn.close()


def used_memory(uri: str, names: t.Sequence[str]) -> t.Dict[str, t.Optional[float]]:
    """MiB each guest uses: balloon actual - unused (None without guest statistics)."""
    conn = libvirt.open(uri)
    try:
        used = {}
        for name in names:
            stats = conn.lookupByName(name).memoryStats()
            used[name] = (round((stats["actual"] - stats["unused"]) / 1024.0, 1)
                          if "actual" in stats and "unused" in stats else None)
        return used
    finally:
        conn.close()


def placement(hosts: t.Sequence[t.Mapping[str, t.Any]], names: t.Sequence[str]) -> t.Dict[str, t.Dict[str, t.Any]]:
    """Where each guest runs and where it is defined (persistent), over every lab host."""
    where: t.Dict[str, t.Dict[str, t.Any]] = {name: {"running_on": [], "defined_on": []} for name in names}
    for host in hosts:
        conn = libvirt.openReadOnly(host["uri"])
        try:
            for dom in conn.listAllDomains():
                if dom.name() in where:
                    if dom.isActive():
                        where[dom.name()]["running_on"].append(host["name"])
                    if dom.isPersistent():
                        where[dom.name()]["defined_on"].append(host["name"])
        finally:
            conn.close()
    return where


def completed_job(uri: str, name: str) -> t.Dict[str, t.Any]:
    """The destination's completed incoming-migration statistics (libvirt 9 keeps them; the source has
    none after --undefinesource); {} when there are none."""
    conn = libvirt.open(uri)
    try:
        return dict(conn.lookupByName(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
    except libvirt.libvirtError:
        return {}
    finally:
        conn.close()


# ---- watching a run -----------------------------------------------------------------------------


class Watcher:
    """Polls, every POLL_S until stopped: the libvirt job of each guest on the source (when it was first
    seen active and when it was no longer), and a workflow manifest, when given (when each move was first
    seen running and first seen done or failed)."""

    def __init__(self, source_uri: str, names: t.Sequence[str], manifest: t.Optional[Path] = None) -> None:
        self.names = list(names)
        self.manifest = manifest
        self.jobs: t.Dict[str, t.Dict[str, t.Optional[float]]] = {n: {"start": None, "end": None} for n in names}
        self.moves: t.Dict[str, t.Dict[str, t.Any]] = {}
        self.errors: t.List[str] = []
        self._conn = libvirt.open(source_uri)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Watcher":
        self._thread.start()
        return self

    def __exit__(self, *_exc: t.Any) -> None:
        self._stop.set()
        self._thread.join(10)
        self._conn.close()

    def _poll_jobs(self, now: float) -> None:
        active = {dom.name(): dom for dom in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
        for name, job in self.jobs.items():
            if job["end"] is not None:
                continue
            dom = active.get(name)
            try:
                running = dom is not None and dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
            except libvirt.libvirtError:
                running = False  # it left between the listing and the question
            if running and job["start"] is None:
                job["start"] = now
            elif not running and job["start"] is not None:
                job["end"] = now

    def _poll_manifest(self, now: float) -> None:
        try:
            data = json.loads(self.manifest.read_text())  # type: ignore[union-attr]
        except (OSError, ValueError):
            return
        for move in data.get("moves") or []:
            seen = self.moves.setdefault(move["vm"], {"running": None, "finished": None, "state": None})
            seen["state"] = move.get("state")
            if move.get("state") == "running" and seen["running"] is None:
                seen["running"] = now
            if move.get("state") in ("done", "failed") and seen["finished"] is None:
                seen["finished"] = now
                if seen["running"] is None:
                    seen["running"] = now  # started and ended between two polls

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            try:
                self._poll_jobs(now)
            except libvirt.libvirtError as exc:
                if len(self.errors) < 5:
                    self.errors.append(str(exc))
            if self.manifest is not None:
                self._poll_manifest(now)
            self._stop.wait(POLL_S)


# ---- the methods --------------------------------------------------------------------------------


def run_virsh_loop(names: t.Sequence[str], source: t.Mapping[str, t.Any],
                   others: t.Sequence[t.Mapping[str, t.Any]], cap_mibps: int, work: Path) -> t.Dict[str, t.Any]:
    del work
    moves = []
    with Watcher(source["uri"], names) as watcher:
        started = time.time()
        for index, name in enumerate(names):
            dest = others[index % len(others)]
            argv = ["virsh", "-c", source["uri"], "migrate", "--live", "--p2p", "--persistent", "--undefinesource",
                    "--bandwidth", str(cap_mibps), "--migrateuri", "tcp://%s" % dest["address"], name, dest["uri"]]
            move_start = time.time()
            error = None
            try:
                done = subprocess.run(argv, check=False, capture_output=True, text=True,
                                      timeout=VIRSH_MIGRATE_TIMEOUT_S)
                if done.returncode:
                    error = (done.stderr or done.stdout).strip() or "virsh exited with %d" % done.returncode
            except subprocess.TimeoutExpired:
                error = "virsh migrate did not return within %g s; the job was aborted" % VIRSH_MIGRATE_TIMEOUT_S
                subprocess.run(["virsh", "-c", source["uri"], "domjobabort", name], check=False, capture_output=True)
            moves.append({"vm": name, "to_host": dest["name"], "start": move_start, "end": time.time(),
                          "ok": error is None, "error": error})
        ended = time.time()
    # Read after the loop, so the wall time is the loop's alone: nothing else runs a job on these domains.
    by_name = {host["name"]: host for host in others}
    for move in moves:
        stats = completed_job(by_name[move["to_host"]]["uri"], move["vm"]) if move["ok"] else {}
        move.update(
            job_ms=stats.get("time_elapsed"),
            sent_mib=round(stats["memory_processed"] / 2**20, 1) if "memory_processed" in stats else None,
            downtime_ms=stats.get("downtime"),
            stats_source="destination completed job" if stats else None,
        )
    return {"started": started, "ended": ended, "moves": moves, "watcher": watcher,
            "command": "virsh -c SRC migrate --live --p2p --persistent --undefinesource --bandwidth %d "
                       "--migrateuri tcp://DEST_ADDRESS VM DEST_URI, one VM after the other" % cap_mibps}


def stage_collection(method: str, before_rev: str, root: Path) -> t.Dict[str, t.Any]:
    """Stage the collection for a role method under root/ansible_collections/strata/migration."""
    target = root / "ansible_collections" / "strata" / "migration"
    target.mkdir(parents=True)
    if method == "role_before":
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", before_rev], check=True,
                             capture_output=True, text=True).stdout.strip()
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", rev], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-xf", "-", "-C", str(target)], stdin=archive.stdout, check=True)
        archive.stdout.close()  # type: ignore[union-attr]
        if archive.wait():
            raise SystemExit("git archive %s failed" % rev)
        return {"source": "git archive %s" % rev, "revision": rev}
    # As `make stage` does: the tracked and new files as they are on disk, no ignored caches.
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True).stdout
    packer = subprocess.Popen(["tar", "--null", "--ignore-failed-read", "-T", "-", "-cf", "-"], cwd=str(ROOT),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    unpacker = subprocess.Popen(["tar", "-xf", "-", "-C", str(target)], stdin=packer.stdout)
    packer.stdout.close()  # type: ignore[union-attr]
    packer.stdin.write(files)  # type: ignore[union-attr]
    packer.stdin.close()  # type: ignore[union-attr]
    if unpacker.wait() or packer.wait() not in (0, 1):
        raise SystemExit("staging the working tree failed")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "plugins", "roles", "playbooks",
                              "meta"], check=True, capture_output=True, text=True).stdout.splitlines()
    return {"source": "working tree at %s" % datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%SZ"),
            "revision": head, "changed_files": changed}


def parse_manifest_time(value: t.Optional[str]) -> t.Optional[float]:
    if not value:
        return None
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def task_times(path: Path) -> t.List[t.Dict[str, t.Any]]:
    """Each task of the play with its duration (from one task's start to the next's)."""
    entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [{"task": entry["task"], "start": entry["t"], "s": round(after["t"] - entry["t"], 2)}
            for entry, after in zip(entries, entries[1:])]


def run_role(names: t.Sequence[str], source: t.Mapping[str, t.Any], cap_mibps: int, work: Path,
             collections: Path, inventory: Path, extra_vars: t.Sequence[str]) -> t.Dict[str, t.Any]:
    paths = {key: work / name for key, name in (("manifest", "manifest.json"), ("report", "report.json"),
                                                ("junit", "junit.xml"), ("log", "playbook.log"),
                                                ("tasks", "tasks.jsonl"))}
    callbacks = work / "callbacks"
    callbacks.mkdir()
    (callbacks / "strata_bench_timer.py").write_text(TIMER_CALLBACK)
    bin_dir = ROOT / ".venv" / "bin"
    argv = [str(bin_dir / "ansible-playbook"), "-i", str(inventory), "strata.migration.evacuate",
            "-e", "evacuate_hosts=%s" % source["name"], "-e", "evacuate_bandwidth_mibps=%d" % cap_mibps,
            "-e", "evacuate_manifest_path=%s" % paths["manifest"], "-e", "evacuate_report_json=%s" % paths["report"],
            "-e", "evacuate_report_junit=%s" % paths["junit"]]
    for item in extra_vars:
        argv += ["-e", item]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_CALLBACK_PLUGINS=str(callbacks), ANSIBLE_CALLBACKS_ENABLED="strata_bench_timer",
               STRATA_BENCH_TASK_LOG=str(paths["tasks"]), PATH="%s:%s" % (bin_dir, os.environ.get("PATH", "")))
    with Watcher(source["uri"], names, paths["manifest"]) as watcher:
        started = time.time()
        with open(paths["log"], "wb") as log:
            try:
                done = subprocess.run(argv, cwd=str(work), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, timeout=PLAYBOOK_TIMEOUT_S, check=False)
                returncode: t.Optional[int] = done.returncode
            except subprocess.TimeoutExpired:
                returncode = None
        ended = time.time()
        time.sleep(2 * POLL_S)  # the watcher's last look at the manifest
    manifest = json.loads(paths["manifest"].read_text()) if paths["manifest"].exists() else {"moves": []}
    report = json.loads(paths["report"].read_text()) if paths["report"].exists() else None
    moves = []
    for move in manifest.get("moves") or []:
        seen = watcher.moves.get(move["vm"], {})
        figures = move.get("figures") or {}
        moves.append({
            "vm": move["vm"], "to_host": move.get("to_host"), "ok": move.get("state") == "done",
            "error": None if move.get("state") == "done" else move.get("result"),
            # Polled (0.1 s); the manifest's own times are to the second.
            "start": seen.get("running") or parse_manifest_time(move.get("started_at")),
            "end": seen.get("finished") or parse_manifest_time(move.get("ended_at")),
            "manifest_started_at": move.get("started_at"), "manifest_ended_at": move.get("ended_at"),
            "job_ms": figures.get("total_ms"), "sent_mib": figures.get("transferred_mib"),
            "downtime_ms": figures.get("downtime_ms"), "strategy": move.get("strategy"),
            "compaction_reclaimed_mib": figures.get("compaction_reclaimed_mib"), "stats_source": "manifest figures",
        })
    log_lines = paths["log"].read_text(errors="replace").splitlines()
    return {"started": started, "ended": ended, "moves": moves, "watcher": watcher, "returncode": returncode,
            "report_ok": report.get("ok") if report else None,
            "plan_waves": [[m["vm"] for m in (report or {}).get("plan", {}).get("moves", []) if m.get("wave") == wave]
                           for wave in sorted({m.get("wave") for m in (report or {}).get("plan", {}).get("moves", [])})],
            "tasks": task_times(paths["tasks"]),
            "log_tail": log_lines[-40:] if returncode != 0 else [line for line in log_lines if " -> " in line][-20:],
            "command": " ".join(["ansible-playbook -i INVENTORY strata.migration.evacuate",
                                 "-e evacuate_hosts=%s -e evacuate_bandwidth_mibps=%d" % (source["name"], cap_mibps)]
                                + ["-e %s" % item for item in extra_vars])}


# ---- one measurement ----------------------------------------------------------------------------


def _rel(value: t.Optional[float], zero: float) -> t.Optional[float]:
    return None if value is None else round(value - zero, 2)


def measure(method: str, run: int, args: argparse.Namespace, hosts: t.Sequence[t.Mapping[str, t.Any]],
            staged: t.Mapping[str, t.Mapping[str, t.Any]], work_root: Path) -> t.Dict[str, t.Any]:
    source = next(host for host in hosts if host["name"] == args.source)
    others = sorted((host for host in hosts if host["name"] != args.source), key=lambda host: host["name"])
    work = Path(tempfile.mkdtemp(prefix="%s-%d-" % (method, run), dir=str(work_root)))
    names = ["evac%d-%s-%s" % (run, METHOD_CODES[method], kind) for kind, _workload in GUESTS]
    strangers = running_guests(source["uri"])
    if strangers:
        # The playbook would move them too, and whoever runs them (a test on the same lab) would see ours move.
        raise SystemExit("%s runs guests this benchmark did not make (%s): the evacuation would move them too; "
                         "wait for whatever uses the lab to finish" % (source["name"], ", ".join(strangers)))
    try:
        create_guests(names, source["name"])
        time.sleep(SETTLE_S)
        used = used_memory(source["uri"], names)
        boots = {name: labkit.boot_id(name) for name in names}
        offsets = {name: labkit.console_size(name) for name in names}
        print("run %d %-11s guests up, %s MiB used; moving" % (run, method, sum(v or 0 for v in used.values())),
              file=sys.stderr, flush=True)
        if method == "virsh_loop":
            outcome = run_virsh_loop(names, source, others, args.cap_mibps, work)
        else:
            outcome = run_role(names, source, args.cap_mibps, work, staged[method]["collections"], args.inventory,
                               args.after_extra_vars if method == "role_after" else [])
        where = placement(hosts, names)
        health = {name: labkit.guest_health(name, boots[name], offsets[name]) for name in names}
    finally:
        for name in names:
            labkit.delete_guest(name)
        shutil.rmtree(work, ignore_errors=True)
    return summarize_method(method, run, args, source["name"], names, used, outcome, where, health)


def summarize_method(method: str, run: int, args: argparse.Namespace, source: str, names: t.Sequence[str],
                     used: t.Mapping[str, t.Optional[float]], outcome: t.Mapping[str, t.Any],
                     where: t.Mapping[str, t.Mapping[str, t.Any]],
                     health: t.Mapping[str, t.Mapping[str, t.Any]]) -> t.Dict[str, t.Any]:
    zero = outcome["started"]
    watcher: Watcher = outcome["watcher"]
    moves = []
    for move in outcome["moves"]:
        job = watcher.jobs.get(move["vm"], {})
        duration = None if move["start"] is None or move["end"] is None else move["end"] - move["start"]
        moves.append(dict(
            {key: value for key, value in move.items() if key not in ("start", "end")},
            start_s=_rel(move["start"], zero), end_s=_rel(move["end"], zero),
            job_seen_start_s=_rel(job.get("start"), zero), job_seen_end_s=_rel(job.get("end"), zero),
            overhead_s=(round(duration - move["job_ms"] / 1000.0, 2)
                        if duration is not None and move.get("job_ms") is not None else None),
        ))
    guests = []
    for name in names:
        failure = labkit.guest_failure(health[name])
        running_on = list(where[name]["running_on"])
        guests.append({"vm": name, "used_mib": used[name], "running_on": running_on,
                       "defined_on": list(where[name]["defined_on"]), "heartbeat_after": health[name]["heartbeat_after"],
                       "guest_failure": failure,
                       "placed_right": len(running_on) == 1 and running_on[0] != source and failure is None})
    starts = [m["start_s"] for m in moves if m["start_s"] is not None]
    ends = [m["end_s"] for m in moves if m["end_s"] is not None]
    used_total = sum(v for v in used.values() if v is not None)
    moved = {m["vm"] for m in moves if m["ok"]}
    row = {
        "method": method, "run": run,
        "completed": len(moved) == len(names) and all(g["placed_right"] for g in guests)
        and outcome.get("returncode", 0) == 0,
        "wall_s": round(outcome["ended"] - outcome["started"], 2),
        "span_s": round(max(ends) - min(starts), 2) if starts and ends else None,
        "lead_s": min(starts) if starts else None,
        "tail_s": max(0.0, round(outcome["ended"] - outcome["started"] - max(ends), 2)) if ends else None,
        "used_mib": round(used_total, 1),
        "floor_s": round(used_total / args.cap_mibps, 2),
        "sent_mib": round(sum(m["sent_mib"] or 0 for m in moves), 1),
        "job_s_sum": round(sum(m["job_ms"] or 0 for m in moves) / 1000.0, 2),
        "move_overhead_s_median": labkit.median(m["overhead_s"] for m in moves),
        "job_s_median": labkit.median(m["job_ms"] / 1000.0 for m in moves if m.get("job_ms") is not None),
        # Move start to libvirt's job seen on the source, and the job's end to the move's end (polled).
        "before_job_s_median": labkit.median(
            m["job_seen_start_s"] - m["start_s"] for m in moves if None not in (m["job_seen_start_s"], m["start_s"])),
        "after_job_s_median": labkit.median(
            m["end_s"] - m["job_seen_end_s"] for m in moves if None not in (m["job_seen_end_s"], m["end_s"])),
        "max_concurrent_moves": max_concurrent(moves),
        "moves": moves, "guests": guests,
        "guests_placed_right": sum(1 for g in guests if g["placed_right"]),
        "command": outcome["command"],
        "watcher_errors": watcher.errors,
    }
    for key in ("returncode", "report_ok", "plan_waves", "tasks", "log_tail"):
        if key in outcome:
            row[key] = outcome[key]
    if "tasks" in outcome:
        row["tasks"] = [dict(task, start=_rel(task["start"], zero)) for task in outcome["tasks"]]
    print("run %d %-11s %s wall %6.1f s  span %6s s  floor %5.1f s  sent %6.1f MiB  overhead/move %s s  placed %d/%d"
          % (run, method, "ok    " if row["completed"] else "FAILED", row["wall_s"], labkit.fmt(row["span_s"], "%.1f"),
             row["floor_s"], row["sent_mib"], labkit.fmt(row["move_overhead_s_median"], "%.2f"),
             row["guests_placed_right"], len(guests)), file=sys.stderr, flush=True)
    return row


def max_concurrent(moves: t.Sequence[t.Mapping[str, t.Any]]) -> int:
    edges = sorted([(m["start_s"], 1) for m in moves if m["start_s"] is not None]
                   + [(m["end_s"], -1) for m in moves if m["end_s"] is not None])
    level = highest = 0
    for _when, step in edges:
        level += step
        highest = max(highest, level)
    return highest


# ---- summary and report -------------------------------------------------------------------------

SUMMARY_KEYS = ("wall_s", "span_s", "lead_s", "tail_s", "floor_s", "used_mib", "sent_mib", "job_s_sum",
                "job_s_median", "move_overhead_s_median", "before_job_s_median", "after_job_s_median",
                "max_concurrent_moves")


def summarize(rows: t.Sequence[t.Mapping[str, t.Any]], methods: t.Sequence[str]) -> t.Dict[str, t.Dict[str, t.Any]]:
    summary = {}
    for method in methods:
        runs = [row for row in rows if row["method"] == method]
        summary[method] = dict(
            {key: labkit.median(row[key] for row in runs) for key in SUMMARY_KEYS},
            runs=len(runs), runs_completed=sum(1 for row in runs if row["completed"]),
            guests_placed_right=sum(row["guests_placed_right"] for row in runs),
            guests=sum(len(row["guests"]) for row in runs),
        )
    return summary


def evaluate(summary: t.Mapping[str, t.Mapping[str, t.Any]]) -> t.List[t.Dict[str, t.Any]]:
    after, loop = summary.get("role_after"), summary.get("virsh_loop")
    checks = []

    def add(target: str, passed: t.Optional[bool], measured: str) -> None:
        checks.append({"case": "role_after", "target": target, "passed": passed, "measured": measured})

    complete = after is not None and after["runs_completed"] == after["runs"]
    if after and after["span_s"] is not None:
        limit = SPAN_FACTOR * after["floor_s"] + SPAN_SLACK_S
        add("span <= %g x floor + %g s" % (SPAN_FACTOR, SPAN_SLACK_S), complete and after["span_s"] <= limit,
            "span %.1f s, floor %.1f s, limit %.1f s" % (after["span_s"], after["floor_s"], limit))
    else:
        add("span <= %g x floor + %g s" % (SPAN_FACTOR, SPAN_SLACK_S), None, "not run")
    if after and loop:
        add("wall < virsh_loop's wall", complete and after["wall_s"] < loop["wall_s"],
            "role_after %.1f s, virsh_loop %.1f s" % (after["wall_s"], loop["wall_s"]))
    else:
        add("wall < virsh_loop's wall", None, "not run")
    overhead = after["move_overhead_s_median"] if after else None
    add("median per-move overhead <= %g s" % OVERHEAD_TARGET_S,
        None if overhead is None else complete and overhead <= OVERHEAD_TARGET_S,
        "not run" if overhead is None else "%.2f s" % overhead)
    return checks


ROWS = (
    ("runs completed (all moved, placed right, heartbeat kept)", None),
    ("wall time of the command (s)", ("wall_s", "%.1f")),
    ("span: first move start to last move end (s)", ("span_s", "%.1f")),
    ("command start to first move (s)", ("lead_s", "%.1f")),
    ("last move end to command end (s)", ("tail_s", "%.1f")),
    ("floor: used memory / cap (s)", ("floor_s", "%.1f")),
    ("guests' used memory (MiB)", ("used_mib", "%.0f")),
    ("memory sent, all moves (MiB)", ("sent_mib", "%.0f")),
    ("libvirt job time, sum of moves (s)", ("job_s_sum", "%.1f")),
    ("job time per move, median (s)", ("job_s_median", "%.2f")),
    ("overhead per move (move - job), median (s)", ("move_overhead_s_median", "%.2f")),
    ("  move start to job seen on the source, median (s)", ("before_job_s_median", "%.2f")),
    ("  job seen ended to move end, median (s)", ("after_job_s_median", "%.2f")),
    ("moves at once, at most", ("max_concurrent_moves", "%.0f")),
)


def render_markdown(report: t.Mapping[str, t.Any]) -> str:
    params, summary, env = report["parameters"], report["summary"], report["environment"]
    methods = [m for m in params["methods"] if m in summary]
    staged = report["staged"]
    lines = [
        "# Evacuating a host: a virsh loop against the evacuate playbook, before and after",
        "",
        "`benchmarks/evacuation_benchmark.py`, %s. Five fresh %d MiB guests on %s per method (%s), moved to the "
        "other %d hosts; every migration capped at %d MiB/s; %d repetition(s), the methods' order rotating, "
        "medians below. Command: `%s`."
        % (env["date"], GUEST_MEMORY_MIB, params["source"], ", ".join("%s `%s`" % g for g in GUESTS),
           params["hosts"] - 1, params["cap_mibps"], params["repetitions"], report["command"]),
        "",
        labkit.environment_sentence(env),
        "",
    ]
    for method in methods:
        if method in staged:
            lines.append("- `%s`: collection from %s%s." % (
                method, staged[method]["source"],
                (" (HEAD %s and %d changed file(s) under plugins/, roles/, playbooks/, meta/: `staged` in the JSON)"
                 % (staged[method]["revision"], len(staged[method]["changed_files"])))
                if "changed_files" in staged[method] else ""))
    for method in methods:
        commands = {row["command"] for row in report["rows"] if row["method"] == method}
        lines.append("- `%s` runs: `%s`" % (method, "`, `".join(sorted(commands))))
    lines += ["", "## Targets", ""] + labkit.targets_table(report["targets"])
    lines += ["", "## Side by side (medians)", "",
              "| | %s |" % " | ".join(methods), "|---|%s" % ("---|" * len(methods))]
    for label, spec in ROWS:
        if spec is None:
            cells = ["%d/%d (%d/%d guests)" % (summary[m]["runs_completed"], summary[m]["runs"],
                                               summary[m]["guests_placed_right"], summary[m]["guests"]) for m in methods]
        else:
            cells = [labkit.fmt(summary[m][spec[0]], spec[1]) for m in methods]
        lines.append("| %s | %s |" % (label, " | ".join(cells)))
    lines += [
        "",
        "Floor: the guests' used memory (balloon statistics, actual - unused, summed over the five guests just "
        "before the method) / the cap. A move starts and ends: for virsh around its command; for the roles "
        "when the manifest first shows it running and then done (polled every %.1f s). Job time: libvirt's "
        "completed-job time (virsh: the destination's incoming job; the roles: the manifest's figures, "
        "`total_ms`). \"Job seen\": libvirt's job on the source, polled every %.1f s." % (POLL_S, POLL_S),
        "",
        "## Moves", "",
        "| run | method | VM | to | start (s) | end (s) | job (s) | overhead (s) | sent (MiB) | job seen (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        for move in row["moves"]:
            lines.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s-%s |" % (
                row["run"], row["method"], move["vm"].split("-", 2)[-1], move["to_host"] or "-",
                labkit.fmt(move["start_s"], "%.1f"), labkit.fmt(move["end_s"], "%.1f"), labkit.seconds(move["job_ms"]),
                labkit.fmt(move["overhead_s"], "%.2f"), labkit.fmt(move["sent_mib"], "%.1f"),
                labkit.fmt(move["job_seen_start_s"], "%.1f"), labkit.fmt(move["job_seen_end_s"], "%.1f")))
    slow = slowest_tasks(report["rows"])
    if slow:
        lines += ["", "## Where the roles' time goes", "",
                  "The play's tasks by seconds (from the task's start to the next one's, summed over every pass "
                  "of a task in a loop or an included file; median over the repetitions), the ten longest per "
                  "method.", "",
                  "| method | task | s |", "|---|---|---|"]
        for method, tasks in slow.items():
            for task, seconds in tasks:
                lines.append("| %s | %s | %.1f |" % (method, task.replace("|", "/"), seconds))
    failures = [(row["run"], row["method"], g["vm"], g) for row in report["rows"] for g in row["guests"]
                if not g["placed_right"]]
    if failures:
        lines += ["", "## Guests not placed right", ""]
        for run, method, vm, guest in failures:
            lines.append("- run %d %s %s: running on %s, defined on %s, %s" % (
                run, method, vm, guest["running_on"] or "nothing", guest["defined_on"] or "nothing",
                guest["guest_failure"] or "heartbeat kept"))
    lines += ["", "![moves over time](%s)" % report["figure"], ""]
    return "\n".join(lines)


def slowest_tasks(rows: t.Sequence[t.Mapping[str, t.Any]]) -> t.Dict[str, t.List[t.Tuple[str, float]]]:
    out = {}
    for method in sorted({row["method"] for row in rows if row.get("tasks")}):
        per_run: t.List[t.Dict[str, float]] = []
        for row in rows:
            if row["method"] == method and row.get("tasks"):
                totals: t.Dict[str, float] = {}
                for task in row["tasks"]:
                    totals[task["task"]] = totals.get(task["task"], 0.0) + task["s"]
                per_run.append(totals)
        names = {name for totals in per_run for name in totals}
        medians = {name: labkit.median(totals.get(name, 0.0) for totals in per_run) or 0.0 for name in names}
        out[method] = sorted(medians.items(), key=lambda item: -item[1])[:10]
    return out


def parse_args(argv: t.Optional[t.Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of %s" % ", ".join(METHODS))
    parser.add_argument("--cap-mibps", type=int, default=60, help="bandwidth cap of every migration (MiB/s)")
    parser.add_argument("--before-rev", default="e1de8fe", help="git revision role_before runs (default e1de8fe)")
    parser.add_argument("--after-extra-vars", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra variable for role_after's playbook (repeatable)")
    parser.add_argument("--source", default="hv1", help="the host to evacuate")
    parser.add_argument("--hosts", type=int, default=3, help="lab hosts (strata-lab up --hosts)")
    parser.add_argument("--inventory", type=Path, default=LAB_INVENTORY, help="the roles' inventory (the lab's)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        parser.error("unknown method(s) %s; choose among %s" % (", ".join(unknown), ", ".join(METHODS)))
    if args.repetitions < 1 or args.cap_mibps < 1 or args.hosts < 2:
        parser.error("--repetitions and --cap-mibps must be at least 1, --hosts at least 2")
    if any("=" not in item for item in args.after_extra_vars):
        parser.error("--after-extra-vars takes KEY=VALUE")
    return args


def environment(source_uri: str, dest_uri: str) -> t.Dict[str, t.Any]:
    try:
        return labkit.environment(source_uri, dest_uri)
    # The collection under edit may not import: fall back to asking libvirt directly.
    except Exception as exc:  # pylint: disable=broad-except
        conn = libvirt.open(source_uri)
        try:
            version = [conn.getLibVersion(), conn.getVersion()]
        finally:
            conn.close()
        return {"libvirt": "%d.%d.%d" % (version[0] // 1000000, version[0] // 1000 % 1000, version[0] % 1000),
                "qemu": "%d.%d.%d" % (version[1] // 1000000, version[1] // 1000 % 1000, version[1] % 1000),
                "cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
                "other_guests_running": {}, "note": "labkit.environment failed: %s" % exc,
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    args = parse_args(argv)
    labkit.lab_retrying("up", "--hosts", str(args.hosts), "--stack", "all=stock")
    hosts = lab_hosts()
    if args.source not in {host["name"] for host in hosts} or len(hosts) < 2:
        raise SystemExit("the lab needs host %s and another: lab/strata-lab up --hosts 3" % args.source)
    work_root = Path(tempfile.mkdtemp(prefix="strata-bench-evacuation-"))
    try:
        staged: t.Dict[str, t.Dict[str, t.Any]] = {}
        for method in args.methods:
            if method != "virsh_loop":
                collections = work_root / ("collections-" + method)
                staged[method] = dict(stage_collection(method, args.before_rev, collections), collections=collections)
        env = environment(hosts[0]["uri"], hosts[1]["uri"])
        rows = []
        for run in range(1, args.repetitions + 1):
            if run > 1:
                labkit.lab_retrying("up", "--hosts", str(args.hosts), "--stack", "all=stock")
                hosts = lab_hosts()
            turn = (run - 1) % len(args.methods)
            for method in args.methods[turn:] + args.methods[:turn]:
                rows.append(measure(method, run, args, hosts, staged, work_root))
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    summary = summarize(rows, args.methods)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    figure = args.out_dir / "evacuation.png"
    plot.plot_move_lanes({row["method"]: {"moves": row["moves"], "wall_s": row["wall_s"]}
                          for row in rows if row["run"] == rows[-1]["run"]},
                         "Evacuating %s at %d MiB/s per migration: moves over time (run %d)"
                         % (args.source, args.cap_mibps, rows[-1]["run"]), figure)
    report = {
        "benchmark": "evacuation",
        "command": labkit.command_line("evacuation_benchmark.py", argv),
        "parameters": {"repetitions": args.repetitions, "methods": args.methods, "cap_mibps": args.cap_mibps,
                       "before_rev": args.before_rev, "after_extra_vars": args.after_extra_vars,
                       "source": args.source, "hosts": len(hosts), "guest_memory_mib": GUEST_MEMORY_MIB,
                       "guests": [{"kind": kind, "workload": workload} for kind, workload in GUESTS],
                       "targets": {"span_factor": SPAN_FACTOR, "span_slack_s": SPAN_SLACK_S,
                                   "overhead_s": OVERHEAD_TARGET_S}},
        "staged": {method: {k: v for k, v in info.items() if k != "collections"} for method, info in staged.items()},
        "environment": env,
        "summary": summary,
        "targets": evaluate(summary),
        "rows": rows,
        "figure": figure.name,
    }
    labkit.write_report(args.out_dir, "evacuation", report, render_markdown(report).replace("\r", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
