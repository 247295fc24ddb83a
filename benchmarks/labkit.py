# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the benchmarks share: the lab tool, and the collection imported from this checkout."""

from __future__ import annotations

import atexit
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

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


def delete_guest(name: str) -> None:
    subprocess.run([LAB_TOOL, "guest", "delete", name], check=False, capture_output=True, text=True)


def host_uri(name: str) -> str:
    for host in lab("status", "--json"):
        if host.get("name") == name:
            return host["uri"]
    raise SystemExit("lab host %s is not in `strata-lab status`; run `lab/strata-lab up`" % name)


def use_collection() -> None:
    """Make `ansible_collections.strata.migration` importable from this checkout, staged or not.

    A temporary ansible_collections/strata/migration symlink to the checkout
    gives Python the package path the collection's imports use.
    """
    root = tempfile.mkdtemp(prefix="strata-bench-")
    atexit.register(shutil.rmtree, root, True)
    link = os.path.join(root, "ansible_collections", "strata", "migration")
    os.makedirs(os.path.dirname(link))
    os.symlink(REPO_ROOT, link)
    sys.path.insert(0, root)


def environment(src_uri: str, dst_uri: str) -> t.Dict[str, t.Any]:
    """Versions, machine, load and the other guests running on the two hosts, for a results file."""
    import libvirt  # pylint: disable=import-outside-toplevel

    use_collection()
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.strata.migration.plugins.module_utils._inventory import format_version

    others = {}
    versions = {}
    for uri in (src_uri, dst_uri):
        conn = libvirt.open(uri)
        try:
            versions.setdefault("libvirt", format_version(conn.getLibVersion()))
            versions.setdefault("qemu", format_version(conn.getVersion()))
            others[uri] = sorted(d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
        finally:
            conn.close()
    return dict(
        versions,
        python=platform.python_version(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        load_average=[round(v, 2) for v in os.getloadavg()],
        other_guests_running=others,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


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
    return (
        "Environment: libvirt %s, QEMU %s, TCG guests on %d CPUs shared with the other lab guests running at the "
        "time (%s), load average %s at the start, loopback network. Times vary with that load; bytes sent vary "
        "less." % (env["libvirt"], env["qemu"], env["cpus"], others, " ".join(str(v) for v in env["load_average"]))
    )
