"""Start, stop and inspect the lab's libvirtd hosts."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .config import LIBVIRTD_TCP_PORT, PRIVATE_DIRS, HostSpec, LabError

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20


def render_libvirtd_conf(host: HostSpec) -> str:
    return "\n".join(
        [
            "# Written by strata-lab: one lab host, TCP on its own loopback address.",
            "listen_tls = 0",
            "listen_tcp = 1",
            f'listen_addr = "{host.address}"',
            f'tcp_port = "{LIBVIRTD_TCP_PORT}"',
            'auth_tcp = "none"',
            'auth_unix_rw = "none"',
            f'host_uuid = "{host.host_uuid}"',
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
            "",
        ]
    )


def render_qemu_conf(host: HostSpec) -> str:
    return "\n".join(
        [
            "# Written by strata-lab.",
            # No virtlogd in the lab: QEMU writes its own log files.
            'stdio_handler = "file"',
            f'migration_address = "{host.address}"',
            f'migration_host = "{host.address}"',
            f"migration_port_min = {host.migration_port_min}",
            f"migration_port_max = {host.migration_port_max}",
            'user = "root"',
            'group = "root"',
            'security_driver = "none"',
            "dynamic_ownership = 0",
            "remember_owner = 0",
            # All hosts share one cgroup tree; a migrating domain would collide with
            # its own source copy there, so the lab does not use cgroups.
            "cgroup_controllers = [ ]",
            "",
        ]
    )


def prepare_host_dirs(host: HostSpec) -> None:
    for key in PRIVATE_DIRS:
        host.private_dir(key).mkdir(parents=True, exist_ok=True)
    etc = host.private_dir("etc")
    _write_if_changed(etc / "libvirtd.conf", render_libvirtd_conf(host))
    _write_if_changed(etc / "qemu.conf", render_qemu_conf(host))
    _write_if_changed(host.etc_hosts, f"127.0.0.1 localhost\n{host.address} {host.name}\n")
    # Stale sockets and pid files of a killed run would make libvirtd refuse to start.
    run = host.private_dir("run")
    for entry in run.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    host.pid_file.unlink(missing_ok=True)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _start_script(host: HostSpec) -> str:
    mounts = " && ".join(
        f"mkdir -p {target} && mount --bind {host.private_dir(key)} {target}"
        for key, target in PRIVATE_DIRS.items()
    )
    # A private /etc/hosts lets libvirt resolve its own hostname inside the namespace.
    return (
        f"set -e; {mounts}; mount --bind {host.etc_hosts} /etc/hosts; hostname {host.name}; "
        f"exec libvirtd --listen --pid-file {host.pid_file} "
        f"--config {PRIVATE_DIRS['etc']}/libvirtd.conf"
    )


def start_host(host: HostSpec) -> int:
    """Start the host's libvirtd in fresh namespaces and wait until it answers."""
    prepare_host_dirs(host)
    for target in PRIVATE_DIRS.values():
        # Mount points must exist on the real filesystem before the bind mounts.
        Path(target).mkdir(parents=True, exist_ok=True)
    log = open(host.daemon_log, "ab")  # noqa: SIM115 - handed to the daemon
    try:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--propagation", "private", "--", "/bin/sh", "-c", _start_script(host)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    finally:
        log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(
                f"libvirtd for {host.name} exited with {proc.returncode}; see {host.daemon_log} "
                f"and {host.private_dir('log')}/libvirtd.log"
            )
        if tcp_answers(host.address, LIBVIRTD_TCP_PORT) and virsh_ok(host.uri):
            return proc.pid
        time.sleep(0.2)
    _kill_tree([proc.pid])
    raise LabError(f"libvirtd for {host.name} did not answer on {host.uri} within {START_TIMEOUT_S} s")


def tcp_answers(address: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def virsh(uri: str, *args: str, timeout_s: float = 30, check: bool = True) -> str:
    try:
        result = subprocess.run(
            ["virsh", "-q", "-c", uri, *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"virsh {' '.join(args)} on {uri} did not finish within {timeout_s} s") from exc
    if check and result.returncode != 0:
        raise LabError(f"virsh {' '.join(args)} on {uri} failed: {result.stderr.strip()}")
    return result.stdout


def virsh_ok(uri: str) -> bool:
    try:
        virsh(uri, "hostname", timeout_s=5)
        return True
    except LabError:
        return False


def libvirtd_pids(host: HostSpec) -> list[int]:
    """libvirtd processes of this host, found by their pid-file argument (survives a lost pid file)."""
    marker = str(host.pid_file)
    return [pid for pid, argv in _processes() if argv and argv[0].endswith("libvirtd") and marker in argv]


def lab_qemu_pids(lab_paths: list[str]) -> list[int]:
    """QEMU processes started for lab guests: their command line names a lab path."""
    return [
        pid
        for pid, argv in _processes()
        if argv and "qemu-system" in os.path.basename(argv[0]) and any(p in arg for arg in argv for p in lab_paths)
    ]


def _processes() -> list[tuple[int, list[str]]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        found.append((int(entry.name), [a.decode(errors="replace") for a in raw.split(b"\0") if a]))
    return found


def host_is_up(host: HostSpec) -> bool:
    return bool(libvirtd_pids(host)) and virsh_ok(host.uri)


def stop_host(host: HostSpec) -> None:
    """Destroy the host's running guests (definitions stay), then stop its libvirtd."""
    pids = libvirtd_pids(host)
    if pids and virsh_ok(host.uri):
        for name in virsh(host.uri, "list", "--name", check=False).split():
            virsh(host.uri, "destroy", name, check=False)
    _kill_tree(pids)
    host.pid_file.unlink(missing_ok=True)


def _kill_tree(pids: list[int]) -> None:
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)


def kill_pids(pids: list[int]) -> None:
    _kill_tree(pids)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
