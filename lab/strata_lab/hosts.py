"""Start, stop and inspect the lab's libvirtd hosts."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

from . import transports
from .config import LIBVIRTD_TCP_PORT, PRIVATE_DIRS, HostSpec, LabError, write_if_changed

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
SYSTEM_CPU_MAP = Path("/usr/share/libvirt/cpu_map")
LAB_NETWORK = "labnet"
# A small pool on a tmpfs of its own in each host's namespace, for the tests that fill a
# destination pool during a storage copy; its volumes do not survive `down`.
SMALL_POOL = "small"
SMALL_POOL_DIR = "/var/lib/libvirt/small"
SMALL_POOL_MIB = 192
# Each host's libvirtd runs in a cgroup of its own below this one, in cgroup v1's cpu hierarchy where
# the machine has it, so its guests' cgroups never meet another host's copy of the same guest and
# vCPU bandwidth limits (vcpu_quota) work as on a real host.
CPU_CGROUP_PARENT = "strata-lab"
# systemd's "hybrid" layout mounts an empty cgroup v2 hierarchy here beside v1's.
UNIFIED_CGROUP_MOUNT = "/sys/fs/cgroup/unified"
# The qemu.conf line of libvirt's lockd lock manager (disk leases): set by the operator, kept by the lab.
LOCKD_SETTING = 'lock_manager = "lockd"'


def render_libvirtd_conf(host: HostSpec) -> str:
    return "\n".join(
        [
            "# Written by strata-lab: one lab host, TCP and TLS on its own loopback address.",
            *transports.libvirtd_tls_settings(host),
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
            # Only the cpu controller (vcpu_quota), and only where each host has a cgroup of its own.
            "cgroup_controllers = [ %s ]" % ('"cpu"' if cpu_cgroup(host) else ""),
            *transports.qemu_tls_settings(host),
            # Disk leases are the operator's (strata.migration.hypervisor sets them): kept as found.
            *([LOCKD_SETTING] if uses_lockd(host) else []),
            "",
        ]
    )


def uses_lockd(host: HostSpec) -> bool:
    """Whether the host's own qemu.conf names libvirt's lockd lock manager (then it runs a virtlockd)."""
    path = host.private_dir("etc") / "qemu.conf"
    return path.exists() and any(line.split() == LOCKD_SETTING.split() for line in path.read_text().splitlines())


def refuse_lockd_without_virtlockd(host: HostSpec) -> None:
    """A host whose qemu.conf names lockd needs a virtlockd, which only the stock stack has."""
    if uses_lockd(host) and host.stack_root:
        raise LabError(f"{host.name}'s qemu.conf names the lockd lock manager: the {host.stack} root has no "
                       "virtlockd; take the setting out first (strata.migration.hypervisor with leases off)")


def forget_operator_settings(host: HostSpec) -> None:
    """A host new to the lab starts from the lab's settings alone, not from an earlier host of its name."""
    for name in ("qemu.conf", "qemu-lockd.conf"):
        (host.private_dir("etc") / name).unlink(missing_ok=True)


def cpu_hierarchy() -> tuple[Path, str] | None:
    """Mount point and controllers of the machine's cgroup v1 hierarchy with cpu; None without one.

    Under cgroup v2 alone a cgroup holding libvirtd cannot hand the cpu controller on to its guests'
    cgroups below it, so there the lab runs without cgroups and vcpu_quota is unavailable.
    """
    found = cpu_hierarchy_in(Path("/proc/self/mounts").read_text())
    return found if found and os.access(found[0], os.W_OK) else None


def cpu_hierarchy_in(mounts: str) -> tuple[Path, str] | None:
    """The cgroup v1 hierarchy with the cpu controller in a mount table (/proc/self/mounts)."""
    for line in mounts.splitlines():
        _source, mount, fstype, options, *_rest = line.split()
        # Mounted with cpuacct on many distributions; a remount must name the same controllers.
        controllers = [o for o in options.split(",") if o in ("cpu", "cpuacct")]
        if fstype == "cgroup" and "cpu" in controllers:
            return Path(mount), ",".join(controllers)
    return None


def cpu_cgroup(host: HostSpec) -> Path | None:
    """The cgroup the host's libvirtd runs in (the root of its cgroup namespace); None without cgroup v1 cpu."""
    hierarchy = cpu_hierarchy()
    return hierarchy[0] / CPU_CGROUP_PARENT / host.name if hierarchy else None


def remove_cpu_cgroup(host: HostSpec) -> None:
    """Remove the host's cgroups that no process uses any more, deepest first (guests' left by a kill)."""
    top = cpu_cgroup(host)
    if top is None or not top.is_dir():
        return
    for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        _remove_empty_cgroup(path)
    _remove_empty_cgroup(top)
    _remove_empty_cgroup(top.parent)  # the lab's own, once its last host is gone


def _remove_empty_cgroup(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass  # still used (a guest that outlived its libvirtd): kept, as the guest is


# Runtime state a restarted libvirtd needs to take back the guests and networks still running.
KEPT_RUNTIME_DIRS = ("qemu", "network")
# virtlockd outlives a killed libvirtd, holding the leases of the guests still running: its sockets stay.
KEPT_VIRTLOCKD_SOCKETS = ("virtlockd-sock", "virtlockd-admin-sock")


def prepare_host_dirs(host: HostSpec, keep_running: bool = False) -> None:
    """Write the host's configuration and clear what a killed run left behind.

    keep_running: keep the runtime state of guests and networks, so the new libvirtd
    reconnects to the QEMU processes that outlived the old one, as a restarted libvirtd does.
    """
    refuse_lockd_without_virtlockd(host)
    for key in PRIVATE_DIRS:
        host.private_dir(key).mkdir(parents=True, exist_ok=True)
    etc = host.private_dir("etc")
    write_if_changed(etc / "libvirtd.conf", render_libvirtd_conf(host))
    write_if_changed(etc / "qemu.conf", render_qemu_conf(host))
    write_if_changed(host.etc_hosts, f"127.0.0.1 localhost\n{host.address} {host.name}\n")
    # Stale sockets and pid files of a killed run would make libvirtd refuse to start.
    run = host.private_dir("run")
    for entry in run.iterdir():
        if keep_running and entry.name in KEPT_RUNTIME_DIRS:
            continue
        if entry.name in KEPT_VIRTLOCKD_SOCKETS and virtlockd_pids(host):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    host.pid_file.unlink(missing_ok=True)
    if host.cpu_models_missing:
        _write_legacy_cpu_map(host)
    if not keep_running:
        remove_stale_bridges(host)


def _write_legacy_cpu_map(host: HostSpec) -> None:
    """A copy of libvirt's CPU map without some models, as an older libvirt would have."""
    target = Path(host.root) / "cpu_map"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(Path(host.stack_root or "/") / SYSTEM_CPU_MAP.relative_to("/"), target)
    index = target / "index.xml"
    lines = index.read_text().splitlines(keepends=True)
    # With its variants: libvirt 11's versioned models (Westmere-v1) name the base model as their
    # ancestor, and one model whose ancestor is missing disables every CPU model of the host.
    dropped = {path.name for model in host.cpu_models_missing
               for path in [*target.glob(f"x86_{model}.xml"), *target.glob(f"x86_{model}-*.xml")]}
    index.write_text("".join(line for line in lines if not any(f"'{name}'" in line for name in dropped)))
    for name in dropped:
        (target / name).unlink()


def bridge_name(host: HostSpec, network: str) -> str:
    """A bridge name unique on the machine (all lab hosts share one network namespace)."""
    return f"stl{host.index}-{zlib.crc32(network.encode()) % 100000:05d}"


def remove_stale_bridges(host: HostSpec) -> None:
    """Bridges left by a killed libvirtd of this host would stop its networks from starting."""
    listing = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True, check=False)
    for name in re.findall(rf"^\d+: (stl{host.index}-\d{{5}})[:@]", listing.stdout, re.MULTILINE):
        subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)


def network_xml(host: HostSpec, network: str) -> str:
    # Isolated: no forwarding and no address, so no dnsmasq and nothing leaves the machine.
    return f"<network><name>{network}</name><bridge name='{bridge_name(host, network)}' stp='off'/></network>"


def ensure_network(host: HostSpec, network: str) -> bool:
    """Define, start and autostart an isolated network on the host; True when it was created."""
    if network in virsh(host.uri, "net-list", "--all", "--name").split():
        if network not in virsh(host.uri, "net-list", "--name").split():
            virsh(host.uri, "net-start", network)
        return False
    define_from_xml(host.uri, "net-define", network_xml(host, network))
    virsh(host.uri, "net-start", network)
    virsh(host.uri, "net-autostart", network)
    return True


def delete_network(host: HostSpec, network: str) -> bool:
    if network not in virsh(host.uri, "net-list", "--all", "--name").split():
        return False
    virsh(host.uri, "net-destroy", network, check=False)
    virsh(host.uri, "net-undefine", network)
    return True


def ensure_pool(host: HostSpec, pool: str, target: str) -> None:
    if pool not in virsh(host.uri, "pool-list", "--all", "--name").split():
        virsh(host.uri, "pool-define-as", pool, "dir", "--target", target)
        virsh(host.uri, "pool-build", pool)
        virsh(host.uri, "pool-autostart", pool)
    if pool not in virsh(host.uri, "pool-list", "--name").split():
        virsh(host.uri, "pool-start", pool)


def configure_host(host: HostSpec, shared_pool_dir: Path) -> None:
    """The resources every lab host offers: network labnet, pools `local`, `small` and `shared`."""
    shared_pool_dir.mkdir(parents=True, exist_ok=True)
    ensure_network(host, LAB_NETWORK)
    # /var/lib/libvirt is private to each host: a disk there exists on that host only.
    ensure_pool(host, "local", "/var/lib/libvirt/images")
    ensure_pool(host, SMALL_POOL, SMALL_POOL_DIR)
    ensure_pool(host, "shared", str(shared_pool_dir))


def define_from_xml(uri: str, command: str, xml: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as xml_file:
        xml_file.write(xml)
    try:
        virsh(uri, command, xml_file.name)
    finally:
        Path(xml_file.name).unlink()


def _private_mounts(host: HostSpec, prefix: str) -> str:
    """Shell words binding the host's private folders (and cpu_map, /etc/hosts, the small pool) under prefix."""
    mounts = _private_dir_binds(host, prefix)
    if host.cpu_models_missing:
        mounts.append(f"mount --bind {Path(host.root) / 'cpu_map'} {prefix}{SYSTEM_CPU_MAP}")
    mounts += [
        f"mkdir -p {prefix}{SMALL_POOL_DIR}",
        f"mount -t tmpfs -o size={SMALL_POOL_MIB}m strata-lab-small {prefix}{SMALL_POOL_DIR}",
        # A private /etc/hosts lets libvirt resolve its own hostname inside the namespace.
        f"mount --bind {host.etc_hosts} {prefix}/etc/hosts",
    ]
    return "; ".join(mounts)


def _stack_mounts(host: HostSpec) -> str:
    """Make the stack root a mount point of its own with proc, sys, dev and run, and the lab's folders in it.

    libvirt 11 gives each QEMU a private mount namespace and fails unless / is a mount point.
    The host's private folders are bound both outside (for sshd's libvirt socket) and inside.
    """
    root = host.stack_root
    words = [
        f"mount --bind {root} {root}",
        f"mount -t proc proc {root}/proc",
        f"mount --rbind /sys {root}/sys",
        f"mount --rbind /dev {root}/dev",
        f"mount -t tmpfs strata-lab-run {root}/run",
    ]
    for path in host.shared_paths:
        words.append(f"mkdir -p {root}{path} && mount --bind {path} {root}{path}")
    # The small pool's tmpfs is mounted inside the root only: the chrooted libvirtd is the one that uses it.
    words += _private_dir_binds(host, "")
    return "; ".join(words) + "; " + _private_mounts(host, root)


def _private_dir_binds(host: HostSpec, prefix: str) -> list[str]:
    return [
        f"mkdir -p {prefix}{target} && mount --bind {host.private_dir(key)} {prefix}{target}"
        for key, target in PRIVATE_DIRS.items()
    ]


def _start_script(host: HostSpec) -> str:
    libvirtd = f"libvirtd --listen --pid-file {host.pid_file} --config {PRIVATE_DIRS['etc']}/libvirtd.conf"
    if host.stack_root:
        mounts, libvirtd = _stack_mounts(host), f"chroot {host.stack_root} /usr/sbin/{libvirtd}"
    else:
        mounts = _private_mounts(host, "")
    hierarchy = cpu_hierarchy()
    # The host's shell starts in its own cgroup namespace (see _start_command). Remounted there, the cpu
    # hierarchy's root is the host's cgroup, where libvirt creates /machine and finds it again after a restart.
    # libvirt 9 takes the empty v2 hierarchy of the hybrid layout for a usable one and then fails to start
    # guests ("v2 controller '(null)' is not available"): the host's namespace goes without it.
    placement = (
        f"umount {hierarchy[0]}; mount -t cgroup -o {hierarchy[1]} strata-lab-cpu {hierarchy[0]}; "
        f"if mountpoint -q {UNIFIED_CGROUP_MOUNT}; then umount {UNIFIED_CGROUP_MOUNT}; fi; "
        if hierarchy else ""
    )
    # libvirtd reaches virtlockd by its socket in the host's private /run/libvirt: one per host, started
    # first. One that outlived a killed libvirtd still holds the running guests' leases: it stays.
    virtlockd = (
        f"if ! kill -0 \"$(cat {host.virtlockd_pid_file} 2>/dev/null)\" 2>/dev/null; then "
        f"virtlockd --daemon --pid-file {host.virtlockd_pid_file}; fi; "
        if uses_lockd(host) else ""
    )
    return (
        f"set -e; {placement}{mounts}; hostname {host.name}; "
        f"{transports.sshd_start_command(host)}; {virtlockd}exec {libvirtd}"
    )


def _start_command(host: HostSpec) -> list[str]:
    """The host's start script in private mount and UTS namespaces, and a cgroup namespace where it has one."""
    unshare = ["unshare", "--mount", "--uts", "--propagation", "private"]
    cgroup = cpu_cgroup(host)
    if cgroup is None:
        return [*unshare, "--", "/bin/sh", "-c", _start_script(host)]
    # Moved into its cgroup first, the shell unshares the cgroup namespace rooted there.
    enter = f'mkdir -p {cgroup} && echo $$ > {cgroup}/cgroup.procs && exec {" ".join(unshare)} --cgroup -- /bin/sh -c "$1"'
    return ["/bin/sh", "-c", enter, "sh", _start_script(host)]


def config_stamp(host: HostSpec) -> str:
    """What a running host was started with; `up` restarts a host whose stamp is out of date."""
    return "\n".join([render_libvirtd_conf(host), render_qemu_conf(host), _start_script(host)])


def _stamp_path(host: HostSpec) -> Path:
    return Path(host.root) / "started-with"


def host_config_current(host: HostSpec) -> bool:
    path = _stamp_path(host)
    return path.exists() and path.read_text() == config_stamp(host)


def start_host(host: HostSpec, keep_running: bool = False) -> int:
    """Start the host's libvirtd in fresh namespaces and wait until it answers.

    keep_running: see prepare_host_dirs (for a restart after `kill_host`).
    """
    prepare_host_dirs(host, keep_running)
    _stamp_path(host).write_text(config_stamp(host))
    for target in PRIVATE_DIRS.values():
        # Mount points must exist on the real filesystem before the bind mounts.
        Path(target).mkdir(parents=True, exist_ok=True)
    # An sshd of an earlier start would hold the ports the new one needs.
    _kill_tree(transports.sshd_pids(host, _processes()))
    log = open(host.daemon_log, "ab")  # noqa: SIM115 - handed to the daemon
    try:
        proc = subprocess.Popen(
            _start_command(host),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            # Not the caller's folder: a test's folder is deleted while libvirtd lives on, and the shell
            # libvirtd runs for ssh then writes "getcwd() failed" where libvirt reads the peer's errors.
            cwd="/",
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


def run_in_host(host: HostSpec, command: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess:
    """Run a command in the host's mount namespace (its libvirtd's, where its private pools are mounted)."""
    pids = libvirtd_pids(host)
    if not pids:
        raise LabError(f"host {host.name} is down")
    return subprocess.run(["nsenter", "-t", str(pids[0]), "-m", "--", *command],
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def fill_pool(host: HostSpec, leave_mib: int) -> dict:
    """Fill the host's small pool until leave_mib MiB are free, with one file libvirt sees as a volume."""
    filler = f"{SMALL_POOL_DIR}/filler.raw"
    run_in_host(host, ["rm", "-f", filler])
    df = run_in_host(host, ["df", "-B1", "--output=avail", SMALL_POOL_DIR])
    free = int(df.stdout.split()[-1])
    size = max(0, free - leave_mib * 1024 * 1024)
    if size:
        done = run_in_host(host, ["fallocate", "-l", str(size), filler])
        if done.returncode:
            raise LabError(f"cannot fill pool {SMALL_POOL} on {host.name}: {done.stderr.strip()}")
    virsh(host.uri, "pool-refresh", SMALL_POOL)
    left = int(run_in_host(host, ["df", "-B1", "--output=avail", SMALL_POOL_DIR]).stdout.split()[-1])
    return {"host": host.name, "pool": SMALL_POOL, "filled_mib": size // 1048576, "free_mib": left // 1048576, "changed": True}


def free_pool(host: HostSpec) -> dict:
    done = run_in_host(host, ["rm", "-f", f"{SMALL_POOL_DIR}/filler.raw"])
    if done.returncode:
        raise LabError(f"cannot empty pool {SMALL_POOL} on {host.name}: {done.stderr.strip()}")
    virsh(host.uri, "pool-refresh", SMALL_POOL)
    return {"host": host.name, "pool": SMALL_POOL, "changed": True}


def libvirtd_pids(host: HostSpec, processes: list[tuple[int, list[str]]] | None = None) -> list[int]:
    """libvirtd processes of this host, found by their pid-file argument (survives a lost pid file)."""
    marker = str(host.pid_file)
    return [pid for pid, argv in (processes if processes is not None else _processes())
            if argv and argv[0].endswith("libvirtd") and marker in argv]


def virtlockd_pids(host: HostSpec, processes: list[tuple[int, list[str]]] | None = None) -> list[int]:
    """The host's virtlockd, found by its pid-file argument."""
    marker = str(host.virtlockd_pid_file)
    return [pid for pid, argv in (processes if processes is not None else _processes())
            if argv and argv[0].endswith("virtlockd") and marker in argv]


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


def guest_qemu_pids(host: HostSpec) -> list[int]:
    """The QEMU processes of the host's running guests, from the pid files libvirtd keeps in the host's
    private run folder: they are there whether or not that libvirtd still runs."""
    pids = (_qemu_pid(pid_file) for pid_file in (host.private_dir("run") / "qemu").glob("*.pid"))
    return sorted(pid for pid in pids if pid is not None)


def guest_qemu_pid(host: HostSpec, name: str) -> int | None:
    """The QEMU pid of the host's guest `name`, None when it does not run there."""
    return _qemu_pid(host.private_dir("run") / "qemu" / f"{name}.pid")


def _qemu_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        command = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except (OSError, ValueError):  # libvirtd's own pid file, or a guest gone meanwhile
        return None
    return pid if b"qemu-system" in command else None


def orphaned_guests(host: HostSpec) -> list[int]:
    """QEMU pids of the host's guests running while its libvirtd is gone (crashed or killed); [] otherwise."""
    return [] if libvirtd_pids(host) else guest_qemu_pids(host)


def host_is_up(host: HostSpec) -> bool:
    processes = _processes()
    return bool(libvirtd_pids(host, processes)) and bool(transports.sshd_pids(host, processes)) and virsh_ok(host.uri)


def stop_host(host: HostSpec) -> None:
    """Destroy the host's running guests (definitions stay), then stop its libvirtd."""
    pids = libvirtd_pids(host)
    if pids and virsh_ok(host.uri):
        for name in virsh(host.uri, "list", "--name", check=False).split():
            virsh(host.uri, "destroy", name, check=False)
        # Active networks outlive libvirtd; their bridges would stay on the machine.
        for network in virsh(host.uri, "net-list", "--name", check=False).split():
            virsh(host.uri, "net-destroy", network, check=False)
    # virtlockd after its guests are gone: it releases their leases as it ends.
    _kill_tree(pids + transports.sshd_pids(host, _processes()) + virtlockd_pids(host))
    remove_stale_bridges(host)
    remove_cpu_cgroup(host)
    host.pid_file.unlink(missing_ok=True)


def kill_host(host: HostSpec) -> list[int]:
    """SIGKILL the host's libvirtd, as a crash would; its guests' QEMU processes keep running."""
    pids = libvirtd_pids(host)
    _kill_now(pids)
    return pids


def _kill_now(pids: list[int]) -> None:
    """SIGKILL every one at once and wait (bounded) until they are gone."""
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)


def crash_host(host: HostSpec) -> dict:
    """SIGKILL the host's libvirtd, sshd, virtlockd and every guest QEMU at once, as a power loss would.

    Definitions and disks stay; `start_host(keep_running=True)` brings the host back with its guests shut off.
    """
    daemons = _daemon_pids(host)
    guests = guest_qemu_pids(host)
    _kill_now(daemons + guests)
    return {"host": host.name, "killed_daemon_pids": daemons, "killed_guest_pids": guests,
            "changed": bool(daemons or guests)}


def _daemon_pids(host: HostSpec) -> list[int]:
    """The host's libvirtd, sshd and virtlockd: what a power loss kills and a cut-off stops."""
    processes = _processes()
    return libvirtd_pids(host, processes) + transports.sshd_pids(host, processes) + virtlockd_pids(host, processes)


def isolate_host(host: HostSpec, sig: int) -> dict:
    """SIGSTOP (or SIGCONT) the host's libvirtd, sshd and virtlockd: cut off from the cluster, its guests keep
    running and its virtlockd keeps holding their leases, as on a host whose management network failed."""
    pids = _daemon_pids(host)
    for pid in pids:
        _signal(pid, sig)
    return {"host": host.name, "pids": pids, "changed": bool(pids)}


def signal_sshd(host: HostSpec, sig: int) -> list[int]:
    """Send `sig` to the host's listening sshd (SIGSTOP: new ssh connections hang, as with a stalled sshd)."""
    pids = transports.sshd_pids(host, _processes())
    for pid in pids:
        _signal(pid, sig)
    return pids


def _kill_tree(pids: list[int]) -> None:
    for pid in pids:
        _signal(pid, signal.SIGTERM)
        # A process a fault test stopped acts on SIGTERM only once continued.
        _signal(pid, signal.SIGCONT)
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
