"""The lab's storage server: an NBD export every lab host reaches, as a SAN would be.

libvirt counts every `type='network'` disk as shared, so guests whose disk lives here
migrate without a storage copy and without `--unsafe`. nbdkit serves each image file of
one folder as an export of the same name, to any number of clients at once (during a
migration the source and destination QEMU both hold the disk open).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .config import LabError, LabState

# Its own loopback address, below the hosts' (127.0.0.11 and up).
NBD_ADDRESS = "127.0.0.10"
NBD_PORT = 10809
NBD_THREADS = 16
START_TIMEOUT_S = 10
STOP_TIMEOUT_S = 10


def nbd_dir(state: LabState) -> Path:
    return Path(state.lab_dir) / "nbd"


def _pid_file(state: LabState) -> Path:
    return nbd_dir(state) / "nbdkit.pid"


def nbd_server_pid(state: LabState) -> int | None:
    """The pid of the lab's nbdkit, if it runs (the pid file alone could name a reused pid)."""
    try:
        pid = int(_pid_file(state).read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if argv and argv[0].endswith(b"nbdkit") and str(nbd_dir(state)).encode() in b" ".join(argv) else None


def ensure_nbd_server(state: LabState) -> bool:
    """Start nbdkit unless it runs; True when it was started."""
    if nbd_server_pid(state) is not None:
        return False
    folder = nbd_dir(state)
    folder.mkdir(parents=True, exist_ok=True)
    _pid_file(state).unlink(missing_ok=True)
    log = folder / "nbdkit.log"
    with open(log, "ab") as log_stream:
        # nbdkit forks into the background once it listens, then writes its pid file.
        # cache=none: writes reach the image file before the guest's flush returns.
        subprocess.run(
            ["nbdkit", "--ipaddr", NBD_ADDRESS, "--port", str(NBD_PORT), "--pidfile", str(_pid_file(state)),
             "--threads", str(NBD_THREADS), "--log", "stderr", "file", f"dir={folder}", "cache=none"],
            stdin=subprocess.DEVNULL, stdout=log_stream, stderr=log_stream, check=False, timeout=START_TIMEOUT_S,
            cwd="/",  # the daemon outlives the caller's folder
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while nbd_server_pid(state) is None:
        if time.monotonic() >= deadline:
            raise LabError(f"nbdkit did not start within {START_TIMEOUT_S} s; see {log}")
        time.sleep(0.1)
    return True


def stop_nbd_server(state: LabState) -> bool:
    pid = nbd_server_pid(state)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while nbd_server_pid(state) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    if nbd_server_pid(state) == pid:
        os.kill(pid, signal.SIGKILL)
    _pid_file(state).unlink(missing_ok=True)
    return True


def create_nbd_image(state: LabState, name: str, size_mib: int) -> str:
    """A sparse raw image served as export `name`; a leftover of the same name is replaced."""
    image = nbd_dir(state) / name
    image.unlink(missing_ok=True)
    with open(image, "wb") as stream:
        stream.truncate(size_mib * 1024 * 1024)
    return name


def delete_nbd_image(state: LabState, name: str) -> None:
    (nbd_dir(state) / name).unlink(missing_ok=True)


def nbd_disk_xml(export: str) -> str:
    return (
        "<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/>"
        f"<source protocol='nbd' name='{export}'><host name='{NBD_ADDRESS}' port='{NBD_PORT}'/></source>"
        "<target dev='vda' bus='virtio'/></disk>"
    )
