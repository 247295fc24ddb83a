# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the benchmarks share: the lab tool, and the collection imported from this checkout."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import typing as t

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB_TOOL = os.path.join(REPO_ROOT, "lab", "strata-lab")


def lab(*args: str) -> t.Any:
    """Run lab/strata-lab; return its last JSON document on stdout (or {})."""
    done = subprocess.run([LAB_TOOL] + list(args), check=True, capture_output=True, text=True)
    if done.stdout.lstrip().startswith("["):
        return json.loads(done.stdout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


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
