# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the benchmarks share: the lab tool, and the collection imported from this checkout."""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB_TOOL = os.path.join(REPO_ROOT, "lab", "strata-lab")
# A lab command that fails (a guest slow to boot on a busy machine) is tried again this many times.
LAB_ATTEMPTS = 3
LAB_RETRY_S = 5.0


def lab(*args: str) -> t.Any:
    """Run lab/strata-lab; return its last JSON document on stdout (or {})."""
    done = subprocess.run([LAB_TOOL] + list(args), check=True, capture_output=True, text=True)
    if done.stdout.lstrip().startswith("["):
        return json.loads(done.stdout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def lab_retrying(*args: str) -> t.Any:
    """lab() with a few attempts; the last failure ends the benchmark with the lab's message."""
    for attempt in range(1, LAB_ATTEMPTS + 1):
        try:
            return lab(*args)
        except subprocess.CalledProcessError as exc:
            message = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            print("strata-lab %s failed (attempt %d/%d): %s"
                  % (" ".join(args), attempt, LAB_ATTEMPTS, message[0]), file=sys.stderr, flush=True)
            if attempt == LAB_ATTEMPTS:
                raise SystemExit("strata-lab %s failed %d times; last: %s" % (" ".join(args), LAB_ATTEMPTS, message[0]))
            time.sleep(LAB_RETRY_S)
    return None


def create_guest(name: str, host: str, memory_mib: int, workload: str = "idle") -> t.Dict[str, t.Any]:
    return lab("guest", "create", name, "--host", host, "--memory-mib", str(memory_mib), "--workload", workload)


# Where the lab keeps each guest's serial console, and what a guest kernel that failed prints there.
CONSOLES_DIR = "/var/lib/strata-lab/consoles"
GUEST_FAILURE = re.compile(r"Kernel panic|Oops:|BUG: ")


# The lab guest's workload prints "alive boot=<id>" every 5 s; wait a little longer for one after a move.
HEARTBEAT_WAIT_S = 8.0


def console_size(name: str) -> int:
    try:
        return os.path.getsize(os.path.join(CONSOLES_DIR, "%s.log" % name))
    except OSError:
        return 0


def console_since(name: str, offset: int) -> str:
    """The guest's console from byte offset on; empty when it has none (read it before the guest is deleted)."""
    try:
        with open(os.path.join(CONSOLES_DIR, "%s.log" % name), "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def boot_id(name: str) -> t.Optional[str]:
    """The id the guest's workload printed when it started: a guest that rebooted prints another."""
    found = re.findall(r"strata-workload: ready spec=\S+ boot=([0-9a-f]+)", console_since(name, 0))
    return found[-1] if found else None


def guest_health(name: str, boot: t.Optional[str], offset: int) -> t.Dict[str, t.Any]:
    """After a move: a heartbeat of the same boot must follow offset, and no oops or panic (bounded wait)."""
    deadline = time.monotonic() + HEARTBEAT_WAIT_S
    text = ""
    while time.monotonic() < deadline:
        text = console_since(name, offset)
        if GUEST_FAILURE.search(text) or (boot and "alive boot=%s" % boot in text):
            break
        time.sleep(0.5)
    failure = GUEST_FAILURE.search(text)
    return {
        "heartbeat_after": bool(boot and "alive boot=%s" % boot in text),
        "kernel_failure": text[failure.start():failure.start() + 120].strip() if failure else None,
    }


def guest_failure(health: t.Mapping[str, t.Any]) -> t.Optional[str]:
    """Why a guest did not come through its move whole, from guest_health; None when it did."""
    if health["kernel_failure"]:
        return "the guest's kernel failed: %s" % health["kernel_failure"]
    if not health["heartbeat_after"]:
        return "the guest printed no heartbeat of the same boot within %g s after the move" % HEARTBEAT_WAIT_S
    return None


def delete_guest(name: str) -> None:
    subprocess.run([LAB_TOOL, "guest", "delete", name], check=False, capture_output=True, text=True)


def host_uri(name: str) -> str:
    for host in lab("status", "--json"):
        if host.get("name") == name:
            return host["uri"]
    raise SystemExit("lab host %s is not in `strata-lab status`; run `lab/strata-lab up`" % name)


_COLLECTION_ROOT: t.List[str] = []


def use_collection() -> str:
    """Make `ansible_collections.strata.migration` importable from this checkout, staged or not; return the
    folder holding that ansible_collections tree (for ANSIBLE_COLLECTIONS_PATH of a child process).

    A temporary ansible_collections/strata/migration symlink to the checkout, made
    once per process, gives Python the package path the collection's imports use.
    """
    if not _COLLECTION_ROOT:
        root = tempfile.mkdtemp(prefix="strata-bench-")
        atexit.register(shutil.rmtree, root, True)
        link = os.path.join(root, "ansible_collections", "strata", "migration")
        os.makedirs(os.path.dirname(link))
        os.symlink(REPO_ROOT, link)
        sys.path.insert(0, root)
        _COLLECTION_ROOT.append(root)
    return _COLLECTION_ROOT[0]


def environment(src_uri: str, dst_uri: str) -> t.Dict[str, t.Any]:
    """Versions of both hosts, the newer migration features the pair offers, machine, load and the other
    guests running on the two hosts, for a results file. libvirt and qemu at the top are the source's."""
    import libvirt  # pylint: disable=import-outside-toplevel

    use_collection()
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.strata.migration.plugins.module_utils._features import HostVersions, pair_features
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.strata.migration.plugins.module_utils._inventory import format_version

    others = {}
    hosts = {}
    for side, uri in (("source", src_uri), ("destination", dst_uri)):
        conn = libvirt.open(uri)
        try:
            hosts[side] = {"libvirt": format_version(conn.getLibVersion()), "qemu": format_version(conn.getVersion())}
            others[uri] = sorted(d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
        finally:
            conn.close()
    return dict(
        hosts["source"],
        hosts=hosts,
        pair_features=pair_features(HostVersions(**hosts["source"]), HostVersions(**hosts["destination"])),
        python=platform.python_version(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        load_average=[round(v, 2) for v in os.getloadavg()],
        other_guests_running=others,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def features_used(result: t.Mapping[str, t.Any]) -> t.List[str]:
    """The newer features (_features.FEATURES) an engine result says its migration used."""
    features = (result.get("strategy") or {}).get("features") or {}
    return sorted(name for name, feature in features.items() if feature.get("used"))


def features_cell(features: t.Sequence[str], engine: bool) -> str:
    """A table cell for the features a row used: "none" for an engine row that used none, "-" for a
    method that does not report them (plain libvirt, virsh)."""
    return ", ".join(features) or ("none" if engine else "-")


def features_lines(env: t.Mapping[str, t.Any]) -> t.List[str]:
    """The results' section on the pair's newer migration features: available or not, and why."""
    features = env.get("pair_features") or {}
    lines = ["## Newer migration features of this pair", "",
             "What the engine may use from both hosts' versions (`strategy.features` of its result); the tables "
             "above say which each engine run used.", "",
             "| feature | available | why |", "|---|---|---|"]
    for name, feature in sorted(features.items()):
        lines.append("| %s | %s | %s |" % (name, "yes" if feature["available"] else "no", feature["why"]))
    return lines if features else []


def median(values: t.Iterable[t.Optional[float]]) -> t.Optional[float]:
    """Median of the values present (None skipped), to 3 decimals; None when none is."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def fmt(value: t.Optional[float], pattern: str = "%.0f") -> str:
    """A table cell: the value in the pattern, or "-" when it is missing."""
    return "-" if value is None else pattern % value


def environment_sentence(env: t.Mapping[str, t.Any]) -> str:
    """The results' environment line, from environment()."""
    others = ", ".join(n for names in env["other_guests_running"].values() for n in names) or "none"
    hosts = env.get("hosts") or {}
    destination = hosts.get("destination") or {}
    versions = "libvirt %s, QEMU %s" % (env["libvirt"], env["qemu"])
    if destination and destination != hosts.get("source"):
        versions = "source libvirt %s, QEMU %s; destination libvirt %s, QEMU %s" % (
            env["libvirt"], env["qemu"], destination["libvirt"], destination["qemu"])
    return (
        "Environment: %s, TCG guests on %d CPUs shared with the other lab guests running at the "
        "time (%s), load average %s at the start, loopback network. Times vary with that load; bytes sent vary "
        "less." % (versions, env["cpus"], others, " ".join(str(v) for v in env["load_average"]))
    )


def seconds(value_ms: t.Optional[float]) -> str:
    """A table cell in seconds from milliseconds, or "-"."""
    return "-" if value_ms is None else "%.2f" % (value_ms / 1000.0)


# ---- the migration benchmarks' command line and report --------------------------------------


def migration_parser(description: str, default_runs: int, default_bound_s: float, quick_bound_s: float,
                     quick_help: str, results: Path) -> argparse.ArgumentParser:
    """The options every migration benchmark takes: repetitions, bound, hosts, cap, downtime, output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=default_runs, help="repetitions (default %d)" % default_runs)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: %s, bound %g s, results under results/tmp/" % (quick_help, quick_bound_s))
    parser.add_argument("--bound-s", type=float, default=None,
                        help="time bound of every migration (default %g s, %g s with --quick)"
                        % (default_bound_s, quick_bound_s))
    parser.add_argument("--src", default="hv1")
    parser.add_argument("--dst", default="hv2")
    parser.add_argument("--bandwidth-mibps", type=int, default=60)
    parser.add_argument("--max-downtime-ms", type=int, default=300)
    parser.add_argument("--out-dir", type=Path, default=results)
    parser.set_defaults(default_bound_s=default_bound_s, quick_bound_s=quick_bound_s, results=results)
    return parser


def settle_migration_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Fill the --quick defaults in args, check the numbers; return the number of repetitions."""
    runs = 1 if args.quick else args.runs
    if args.bound_s is None:
        args.bound_s = args.quick_bound_s if args.quick else args.default_bound_s
    args.out_dir = smoke_out_dir(args.out_dir, args.results, args.quick)
    if runs < 1 or args.bound_s < 1 or args.bandwidth_mibps < 1:
        parser.error("--runs, --bound-s and --bandwidth-mibps must be at least 1")
    return runs


def smoke_out_dir(out_dir: Path, results: Path, quick: bool) -> Path:
    """Where a run writes: a smoke run (quick) aimed at the committed results (results/ or a stack's
    folder in it, such as results/trixie/) writes to tmp/ beside them instead, never over them."""
    if quick and (out_dir.resolve() == results.resolve() or results.resolve() in out_dir.resolve().parents):
        return out_dir / "tmp"
    return out_dir


def command_line(script: str, argv: t.Optional[t.Sequence[str]]) -> str:
    """How the results were made, as one would type it from the repository root."""
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/" + script]
                    + list(sys.argv[1:] if argv is None else argv))


def migration_intro(script: str, env: t.Mapping[str, t.Any], params: t.Mapping[str, t.Any]) -> str:
    """The results' first sentence: when, which hosts, and the limits every method shared."""
    return (
        "`benchmarks/%s`, %s. %s -> %s, bandwidth capped at %d MiB/s for every method, time bound %g s, max "
        "downtime %d ms; a fresh guest per measurement, the methods alternating within each repetition; %d "
        "repetition(s), medians below."
        % (script, env["date"], params["src"], params["dst"], params["bandwidth_mibps"], params["bound_s"],
           params["max_downtime_ms"], params["runs"])
    )


def targets_table(checks: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[str]:
    """The targets as table lines (case, target, PASS / FAIL / not run, what was measured)."""
    lines = ["| case | target | result | measured |", "|---|---|---|---|"]
    for check in checks:
        verdict = {True: "PASS", False: "FAIL", None: "not run"}[check["passed"]]
        lines.append("| %s | %s | %s | %s |" % (check["case"], check["target"], verdict, check["measured"]))
    return lines


def write_report(out_dir: Path, stem: str, report: t.Mapping[str, t.Any], markdown: str) -> None:
    """STEM.json and STEM.md in out_dir, and the table on stdout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / (stem + ".json")).write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / (stem + ".md")).write_text(markdown)
    print(markdown)


def measure_all(runs: int, cases: t.Sequence[str], methods: t.Sequence[str],
                measure: t.Callable[[str, str, int], t.Dict[str, t.Any]],
                more: t.Callable[[t.Mapping[str, t.Any]], str]) -> t.List[t.Dict[str, t.Any]]:
    """Every method on every case, the methods alternating within each repetition; a line per
    measurement on stderr (`more` adds the benchmark's own figures)."""
    measurements = []
    for run in range(1, runs + 1):
        for case in cases:
            for method in methods:
                row = measure(case, method, run)
                print("run %d %-10s %-15s %-9s job %6s s  wall %6s s  downtime %5s ms  sent %7s MiB  %s"
                      % (run, case, method, "completed" if row["completed"] else "FAILED", seconds(row["job_ms"]),
                         seconds(row["wall_ms"]), fmt(row["downtime_ms"]), fmt(row["transferred_mib"], "%.1f"),
                         more(row)), file=sys.stderr, flush=True)
                measurements.append(row)
    return measurements
