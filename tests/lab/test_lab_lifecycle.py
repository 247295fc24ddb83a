# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The lab tool against the real machine: up, use, down, up again, recovery after a kill.

These tests start real libvirtd daemons and QEMU guests; `make test` runs them as root
after the integration targets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

LAB_TOOL = Path(__file__).resolve().parents[2] / "lab" / "strata-lab"
LAB_DIR = Path(os.environ.get("STRATA_LAB_DIR", "/var/lib/strata-lab"))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")


def lab(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAB_TOOL), *args], capture_output=True, text=True, timeout=300, check=check)


def lab_processes() -> list[tuple[int, str]]:
    """libvirtd, QEMU, listening sshd and nbdkit processes that belong to the lab (their command line names a lab path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        command = " ".join(a.decode(errors="replace") for a in argv if a)
        lab_daemon = "libvirtd" in command or "qemu-system" in command or "nbdkit" in command or command.startswith("sshd:")
        if lab_daemon and "strata-lab" in command:
            found.append((int(entry.name), command))
    return found


def lab_mounts() -> list[str]:
    """Mounts of lab directories visible in any process's mount namespace."""
    mounts = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for line in (entry / "mountinfo").read_text().splitlines():
                if str(LAB_DIR) in line.split()[3]:
                    mounts.add(line.split()[3])
        except OSError:
            continue
    return sorted(mounts)


def lab_bridges() -> list[str]:
    """Bridges of lab networks (stl<host>-<n>), which live in the machine's network namespace."""
    listing = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True, check=True)
    return [line.split(":")[1].strip() for line in listing.stdout.splitlines() if line.split(":")[1].strip().startswith("stl")]


def status() -> list[dict]:
    return json.loads(lab("status", "--json").stdout)


@pytest.fixture(name="lab_down_after")
def fixture_lab_down_after():
    yield
    lab("down", check=False)


def test_up_use_down_up_again(lab_down_after):
    lab("up")
    hosts = status()
    assert [h["name"] for h in hosts] == ["hv1", "hv2", "hv3"]
    assert all(h["up"] for h in hosts)
    assert len({h["uri"] for h in hosts}) == 3

    lab("up")  # idempotent: nothing restarts
    created = json.loads(lab("guest", "create", "lc-guest", "--host", "hv2", "--memory-mib", "128").stdout)
    assert created["host"] == "hv2"
    assert {"host": "hv2", "name": "lc-guest", "state": "running"} in status()[1]["guests"]
    assert lab_processes(), "a running lab has libvirtd and QEMU processes"

    assert len(lab_bridges()) >= 3, "every host runs the isolated network labnet"

    lab("down")
    assert lab_processes() == []
    assert lab_mounts() == []
    assert lab_bridges() == []

    lab("up")
    hosts = status()
    assert all(h["up"] for h in hosts)
    # The persistent guest survives down/up, shut off, and is removed cleanly.
    assert {"host": "hv2", "name": "lc-guest", "state": "shut off"} in hosts[1]["guests"]
    reused = json.loads(lab("guest", "create", "lc-guest", "--host", "hv2", "--reuse").stdout)
    assert reused["started"] is True
    assert {"host": "hv2", "name": "lc-guest", "state": "running"} in status()[1]["guests"]
    again = json.loads(lab("guest", "create", "lc-guest", "--host", "hv2", "--reuse").stdout)
    assert again["started"] is False
    deleted = json.loads(lab("guest", "delete", "lc-guest").stdout)
    assert deleted["deleted_from"] == ["hv2"]


def test_every_host_answers_on_every_transport(lab_down_after):
    lab("up", "--transport", "tls")
    inventory = (LAB_DIR / "inventory.yml").read_text()
    assert inventory.count("strata_libvirt_uri: qemu+tls://") == 3
    lab("up")
    inventory = (LAB_DIR / "inventory.yml").read_text()
    assert inventory.count("strata_libvirt_uri: qemu+ssh://root@") == 3
    config = json.loads((LAB_DIR / "integration_config.yml").read_text())
    for host in config["strata_lab_hosts"]:
        assert sorted(host["uris"]) == ["ssh", "tcp", "tls"]
        for transport, uri in host["uris"].items():
            answer = subprocess.run(["virsh", "-c", uri, "hostname"], capture_output=True, text=True, timeout=30, check=False)
            assert (transport, answer.stdout.strip()) == (transport, host["name"]), answer.stderr


def test_up_recovers_after_a_killed_run(lab_down_after):
    lab("up")
    lab("guest", "create", "lc-killed", "--host", "hv1", "--memory-mib", "128")
    # A run killed hard: daemons and guests gone, stale pid files and sockets left behind.
    for pid, _command in lab_processes():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while lab_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lab_processes() == []
    assert (LAB_DIR / "hosts" / "hv1" / "libvirtd.pid").exists()

    lab("up")
    hosts = status()
    assert all(h["up"] for h in hosts)
    assert {"host": "hv1", "name": "lc-killed", "state": "shut off"} in hosts[0]["guests"]
    lab("guest", "delete", "lc-killed")
    lab("down")
    assert lab_processes() == []


def test_guest_errors_are_clear(lab_down_after):
    lab("up")
    unknown_host = lab("guest", "create", "lc-x", "--host", "hv9", check=False)
    assert unknown_host.returncode == 1
    assert "no lab host named 'hv9'" in unknown_host.stderr
    bad_name = lab("guest", "create", "bad name", check=False)
    assert bad_name.returncode == 1
    assert "guest name" in bad_name.stderr
