"""A newer hypervisor stack for lab hosts: libvirt and QEMU from a newer Debian suite in a root folder.

The stock stack is the machine's own libvirt and QEMU. The ``trixie`` stack (libvirt 11.3,
QEMU 10.0 on Debian 12 machines) is installed by debootstrap into a root folder under the
cache, never on the machine itself, and a host of that stack runs its libvirtd chrooted into
the root (see hosts.py). The root is kept as a zstd tarball named after the digest of its
package list and libvirt and QEMU versions, with a manifest beside it; a lab restores it in
seconds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from .config import LabError
from .packages import ensure_packages

STOCK = "stock"
MIRROR = "http://deb.debian.org/debian"
# Without recommends: no dnsmasq, firewall or virtlogd, which the lab does not use.
STACK_PACKAGES = (
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-daemon-driver-network",
    "libvirt-daemon-driver-storage",
    "libvirt-clients",
    "qemu-system-x86",
    # qemu-img: libvirt creates the destination's qcow2 volume of a storage copy with it.
    "qemu-utils",
    # A peer-to-peer migration from this host reaches the destination's libvirtd over ssh itself.
    "openssh-client",
    # The same root is the Debian 13 controller (controller.py): Python 3.13 for ansible-core 2.20 and
    # later, virtualenvs, Debian's libvirt binding for them, git, which ansible-test lists files with,
    # and procps, whose kill and ps the tests use (minbase has neither).
    "python3",
    "python3-venv",
    "python3-libvirt",
    "ca-certificates",
    "git",
    "procps",
)
# Packages whose versions name the root (the rest follows from them).
VERSIONED_PACKAGES = ("libvirt-daemon", "qemu-system-x86")
STACKS = {"trixie": "trixie"}  # stack name -> Debian suite
BUILD_TIMEOUT_S = 900
TOOL_PACKAGES = ("debootstrap", "zstd")


@dataclasses.dataclass(frozen=True)
class StackRoot:
    """A restored root: its folder and the versions of its packages."""

    name: str
    root: Path
    versions: dict

    @property
    def libvirt_version(self) -> str:
        return self.versions.get("libvirt-daemon", "")

    @property
    def qemu_version(self) -> str:
        return self.versions.get("qemu-system-x86", "")


def known_stacks() -> list[str]:
    return [STOCK, *STACKS]


def check_stack(name: str) -> None:
    if name not in known_stacks():
        raise LabError(f"unknown stack {name!r}: choose from {', '.join(known_stacks())}")


def _run(command: list[str], what: str, timeout_s: float = BUILD_TIMEOUT_S) -> str:
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{what} did not finish within {timeout_s} s") from exc
    if result.returncode != 0:
        raise LabError(f"{what} failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-800:]}")
    return result.stdout


def _manifest_path(cache_dir: Path, name: str) -> Path:
    return cache_dir / "stacks" / f"{name}.json"


def _installed_versions(root: Path) -> dict:
    out = _run(["chroot", str(root), "dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *STACK_PACKAGES],
               "reading the stack's package versions", timeout_s=60)
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def _digest(versions: dict) -> str:
    text = "\n".join([*STACK_PACKAGES, *(f"{p} {versions.get(p, '')}" for p in VERSIONED_PACKAGES)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _build_root(name: str, root: Path) -> None:
    """debootstrap the suite into root and install the stack's packages, services kept from starting."""
    suite = STACKS[name]
    _run(["debootstrap", "--variant=minbase", suite, str(root), MIRROR], f"debootstrap {suite}")
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    proc = root / "proc"
    _run(["mount", "-t", "proc", "proc", str(proc)], "mounting proc in the stack root", timeout_s=30)
    try:
        _run(["chroot", str(root), "apt-get", "update", "-q"], f"apt-get update in the {name} root")
        _run(["chroot", str(root), "apt-get", "install", "-y", "-q", "--no-install-recommends", *STACK_PACKAGES],
             f"installing libvirt and QEMU in the {name} root")
        _run(["chroot", str(root), "apt-get", "clean"], "apt-get clean", timeout_s=60)
    finally:
        subprocess.run(["umount", "-l", str(proc)], capture_output=True, check=False)


@contextlib.contextmanager
def build_lock(cache_dir: Path) -> Iterator[None]:
    """Held while a root is built: two builds at once would each pay for it, and the last would win."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".stack-lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_stack(cache_dir: Path, name: str) -> dict:
    """Build the stack's root and store it as a tarball in the cache; return its manifest."""
    ensure_packages(TOOL_PACKAGES)
    stacks_dir = cache_dir / "stacks"
    stacks_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".build-{name}-", dir=stacks_dir) as tmp:
        root = Path(tmp) / "root"
        _build_root(name, root)
        versions = _installed_versions(root)
        tarball = stacks_dir / f"{name}-{_digest(versions)}.tar.zst"
        partial = tarball.with_suffix(".partial")
        _run(["tar", "--zstd", "-C", str(root), "-cf", str(partial), "."], f"packing the {name} root")
        partial.replace(tarball)
    manifest = {"name": name, "suite": STACKS[name], "packages": list(STACK_PACKAGES), "tarball": tarball.name,
                "versions": versions}
    path = _manifest_path(cache_dir, name)
    path.with_suffix(".tmp").write_text(json.dumps(manifest, indent=2) + "\n")
    path.with_suffix(".tmp").replace(path)
    for old in stacks_dir.glob(f"{name}-*.tar.zst"):
        if old.name != tarball.name:
            old.unlink()
    return manifest


def _cached_manifest(cache_dir: Path, name: str) -> dict | None:
    try:
        manifest = json.loads(_manifest_path(cache_dir, name).read_text())
    except (OSError, ValueError):
        return None
    if not (cache_dir / "stacks" / manifest.get("tarball", "")).is_file():
        return None
    if manifest.get("packages") != list(STACK_PACKAGES):  # built by an older lab tool
        return None
    return manifest


def ensure_stack(cache_dir: Path, lab_dir: Path, name: str) -> StackRoot:
    """The stack's root under lab_dir, restored from the cache (built into it first when missing)."""
    check_stack(name)
    if name == STOCK:
        raise LabError("the stock stack is the machine's own libvirt: it has no root")
    with build_lock(cache_dir):
        manifest = _cached_manifest(cache_dir, name) or build_stack(cache_dir, name)
    root = lab_dir / "stacks" / name
    stamp = root.parent / f"{name}.restored"
    if not (stamp.exists() and stamp.read_text() == manifest["tarball"] and (root / "usr/sbin/libvirtd").exists()):
        ensure_packages(TOOL_PACKAGES)
        with _root_lock(lab_dir, name, fcntl.LOCK_EX | fcntl.LOCK_NB) as taken:
            users = _processes_rooted_in(root)
            if not taken or users:
                held_by = f"processes {users} run in it, a lab host's libvirtd among them" if users else \
                    "a `strata-lab controller run` uses it"
                raise LabError(f"the {name} root {root} is in use ({held_by}): let it end, or run "
                               "`strata-lab down`, first")
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            _run(["tar", "--zstd", "-C", str(root), "-xf", str(cache_dir / "stacks" / manifest["tarball"])],
                 f"restoring the {name} root")
            stamp.write_text(manifest["tarball"])
    return StackRoot(name=name, root=root, versions=manifest["versions"])


@contextlib.contextmanager
def using_stack(cache_dir: Path, lab_dir: Path, name: str) -> Iterator[StackRoot]:
    """The stack's root, kept from being restored until the block ends: for runs whose processes live in
    an overlay of the root, where _processes_rooted_in cannot see them (the controller)."""
    root = ensure_stack(cache_dir, lab_dir, name)
    with _root_lock(lab_dir, name, fcntl.LOCK_SH):  # blocking: waits for a restore under way
        # Restored by another command between the two steps? This call finds it current, or fails clearly.
        yield ensure_stack(cache_dir, lab_dir, name)


@contextlib.contextmanager
def _root_lock(lab_dir: Path, name: str, operation: int) -> Iterator[bool]:
    """flock on the root's lock file: shared by users in overlays, exclusive for a restore; yields
    whether it was taken (a non-blocking request may not be)."""
    path = lab_dir / "stacks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, operation)
        except BlockingIOError:
            yield False
            return
        yield True


def _processes_rooted_in(root: Path) -> list[int]:
    """Processes chrooted into root (a lab host's libvirtd and its QEMUs); its bind mounts live in the
    hosts' private mount namespaces, invisible from here, but /proc/PID/root names the folder."""
    pids = []
    wanted = os.path.realpath(root)
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "root") == wanted:
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return sorted(pids)
