"""A Debian 13 controller on this machine: commands run on the trixie root's Python 3.13.

ansible-core 2.20 and later need Python 3.12 or newer, which Debian 12 lacks. The trixie stack's root
(stack.py) carries Python 3.13, its venv module and Debian's libvirt binding too, so it doubles as a
controller's system. A command runs chrooted into an overlay of that root in a private mount
namespace: the root itself is never written. What a command leaves there (virtualenvs, ansible-test's
caches under /root) stays in the overlay's upper folder under the cache for the next run on this
machine, until the root's packages change. The network is the machine's own: package registries and
the lab hosts' loopback addresses are reachable.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TextIO

from . import stack
from .config import LabError

CONTROLLER_STACK = "trixie"
CHECKOUT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 3600.0
LOCK_TIMEOUT_S = 600.0
STOP_GRACE_S = 10.0
# The machine's resolver and CA bundle (pip here may rely on a local CA), seen at the same paths inside.
HOST_FILES = ("/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt")
CONTROLLER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The shell in the root: its first argument is the folder, the rest the command, none of them script text.
ENTER_FOLDER = 'cd "$1" && shift && exec "$@"'


@dataclasses.dataclass(frozen=True)
class ControllerLayout:
    """The overlay: the stack root below, and under base what runs leave above it."""

    lower: Path
    base: Path

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def merged(self) -> Path:
        return self.base / "merged"

    @property
    def lock(self) -> Path:
        return self.base / ".lock"

    @property
    def versions_stamp(self) -> Path:
        """The root's package versions the upper folder was written against."""
        return self.base / "root-versions.json"


def controller_layout(cache_dir: Path, stack_root: Path) -> ControllerLayout:
    return ControllerLayout(lower=stack_root, base=cache_dir / "controller" / CONTROLLER_STACK)


def shared_paths(checkout: Path, lab_dir: Path, cache_dir: Path) -> list[str]:
    """The machine's folders a command sees at the same paths, parents first (so their binds come first)."""
    return sorted({str(path.absolute()) for path in (checkout, lab_dir, cache_dir)}, key=len)


def visible_inside(path: Path, paths: list[str]) -> bool:
    return any(path == Path(shared) or Path(shared) in path.parents for shared in paths)


def controller_environment(lab_dir: Path, cache_dir: Path) -> dict[str, str]:
    """A clean environment: the machine's own (PIP_* variables, for one) names paths the root lacks.

    The lab's folders are passed on, so the lab tool run inside finds the same lab.
    """
    return {
        "PATH": CONTROLLER_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "STRATA_LAB_DIR": str(lab_dir.absolute()),
        "STRATA_LAB_CACHE": str(cache_dir.absolute()),
    }


def mount_script(layout: ControllerLayout, paths: list[str], host_files: list[str]) -> str:
    """Shell commands, for a fresh private mount namespace, that assemble the controller's root at merged."""
    merged = shlex.quote(str(layout.merged))
    options = f"lowerdir={layout.lower},upperdir={layout.upper},workdir={layout.work}"
    commands = [
        "set -e",
        f"mount -t overlay strata-controller -o {shlex.quote(options)} {merged}",
        f"mount --rbind /proc {merged}/proc",
        f"mount --rbind /sys {merged}/sys",
        f"mount --rbind /dev {merged}/dev",
        f"mount -t tmpfs strata-controller-tmp {merged}/tmp",
        f"mount -t tmpfs strata-controller-run {merged}/run",
    ]
    for path in paths:
        inside = shlex.quote(f"{layout.merged}{path}")
        commands.append(f"mkdir -p {inside} && mount --bind {shlex.quote(path)} {inside}")
    if any(visible_inside(layout.lower, [path]) for path in paths):
        # The stack root shows through the lab's folder: read-only there, as the overlay keeps it.
        inside = shlex.quote(f"{layout.merged}{layout.lower}")
        commands.append(f"mount --bind {shlex.quote(str(layout.lower))} {inside} && mount -o remount,bind,ro {inside}")
    for path in host_files:
        inside = shlex.quote(f"{layout.merged}{path}")
        folder = shlex.quote(f"{layout.merged}{os.path.dirname(path)}")
        # A symlink in the root would lead the bind to a path outside it: a plain file takes its place.
        commands.append(f"mkdir -p {folder} && rm -f {inside} && : > {inside} && mount --bind {shlex.quote(path)} {inside}")
    return "\n".join(commands)


def controller_argv(layout: ControllerLayout, paths: list[str], host_files: list[str],
                    environment: dict[str, str], cwd: Path, command: list[str]) -> list[str]:
    """The machine's command line that runs command in the controller, in folder cwd.

    cwd and command reach the inner shell as arguments, never as script text, so any word survives.
    """
    env_words = " ".join(shlex.quote(f"{name}={value}") for name, value in environment.items())
    script = (
        mount_script(layout, paths, host_files)
        + f"\nexec chroot {shlex.quote(str(layout.merged))} /usr/bin/env -i {env_words} "
        + f'/bin/sh -c {shlex.quote(ENTER_FOLDER)} strata-controller "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
            "strata-controller", str(cwd), *command]


def _prepare_overlay(layout: ControllerLayout, versions: dict) -> None:
    """Make the overlay's folders; an upper folder written against other package versions starts afresh."""
    wanted = json.dumps(versions, sort_keys=True)
    try:
        current = layout.versions_stamp.read_text()
    except OSError:
        current = ""
    if current != wanted:
        shutil.rmtree(layout.upper, ignore_errors=True)
        shutil.rmtree(layout.work, ignore_errors=True)
    for folder in (layout.upper, layout.work, layout.merged):
        folder.mkdir(parents=True, exist_ok=True)
    layout.versions_stamp.write_text(wanted)


def _lock(layout: ControllerLayout, timeout_s: float) -> TextIO:
    """The overlay's lock: two mounts of one upper folder at once would corrupt it."""
    layout.base.mkdir(parents=True, exist_ok=True)
    lock = open(layout.lock, "w", encoding="utf-8")  # noqa: SIM115 - held until the run ends
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                raise LabError(f"another controller run held {layout.lock} for {timeout_s:.0f} s") from None
            time.sleep(1)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group, then SIGKILL what is left after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_in_controller(cache_dir: Path, lab_dir: Path, command: list[str], cwd: Path,
                      timeout_s: float = RUN_TIMEOUT_S) -> int:
    """Run command in the Debian 13 controller, in folder cwd; returns its exit status."""
    paths = shared_paths(CHECKOUT, lab_dir, cache_dir)
    cwd = cwd.absolute()
    if not visible_inside(cwd, paths):
        raise LabError(f"{cwd} is not visible in the controller, only {', '.join(paths)} are: use --cwd")
    # Held for the whole run: its processes live in an overlay of the root, where a restore of the root
    # (another lab command's) could not see them.
    with stack.using_stack(cache_dir, lab_dir, CONTROLLER_STACK) as root:
        layout = controller_layout(cache_dir, root.root)
        host_files = [path for path in HOST_FILES if Path(path).is_file()]
        argv = controller_argv(layout, paths, host_files, controller_environment(lab_dir, cache_dir), cwd, command)
        with _lock(layout, LOCK_TIMEOUT_S):
            _prepare_overlay(layout, root.versions)
            # A session of its own, so a timeout or an interrupt stops the command's every process; without
            # the terminal, so no standard input.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                return proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise LabError(f"{shlex.join(command)} did not finish within {timeout_s:.0f} s in the controller") \
                    from None
            finally:
                if proc.poll() is None:
                    _stop_group(proc)
