"""Debian packages the lab and the collection's tests need, installed only when missing."""
from __future__ import annotations

import subprocess

from .config import LabError

LAB_PACKAGES = (
    "qemu-system-x86",
    "qemu-utils",
    "libvirt-daemon-system",
    "libvirt-clients",
    "busybox-static",
    "gcc",
    "libc6-dev",
    # ss: the post-copy recovery test cuts a migration stream with `ss -K`.
    "iproute2",
    # Each lab host runs its own sshd (qemu+ssh); certtool makes the lab's TLS certificates.
    "openssh-server",
    "openssh-client",
    "gnutls-bin",
    # The lab's storage server: network disks (NBD) every host reaches.
    "nbdkit",
)
# Needed to build libvirt-python into the virtualenv, by the sanity tests, and by ansible-rulebook (Java 17
# or later: Debian 12's default is 17, Debian 13's 21).
BUILD_PACKAGES = ("libvirt-dev", "pkg-config", "python3-dev", "python3-venv", "git", "make", "shellcheck",
                  "default-jre-headless")


def missing_packages(names: tuple[str, ...]) -> list[str]:
    missing = []
    for name in names:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in result.stdout:
            missing.append(name)
    return missing


def ensure_packages(names: tuple[str, ...]) -> list[str]:
    """Install the packages that are missing; returns what was installed."""
    missing = missing_packages(names)
    if not missing:
        return []
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    install = ["apt-get", "install", "-y", "-q", *missing]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LabError(f"apt-get could not install {' '.join(missing)}: {result.stderr.strip()[-800:]}")
    return missing
