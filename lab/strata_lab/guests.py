"""Lab guests: small busybox initramfs VMs running a memory workload."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from .config import HostSpec, LabError, LabState
from .hosts import define_from_xml, guest_qemu_pid, run_in_host, virsh
from .storage import create_nbd_image, delete_nbd_image, nbd_dir, nbd_disk_xml

FILL_TIMEOUT_S = 600
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_WORKLOAD_RE = re.compile(r"^[a-z0-9:,]+$")
READY_MARKER = "STRATA-READY name={name} "
# The collection's placement hints (plugins/module_utils/_cluster.py, METADATA_NAMESPACE).
MIGRATION_METADATA_NAMESPACE = "https://strata-migration.github.io/xmlns/migration/1"
# local: the host's own pool; small: a small pool of its own on a tmpfs; shared: a folder every
# host sees, which libvirt cannot know is shared; nbd: an export of the lab's storage server, a
# network disk libvirt treats as shared.
DISK_POOLS = ("local", "small", "shared", "nbd")
DISK_FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class GuestSpec:
    name: str
    memory_mib: int = 256
    vcpus: int = 1
    workload: str = "idle"
    network: str | None = None
    disk_mib: int = 0
    disk_pool: str = "local"
    disk_format: str = "qcow2"
    disk_fill_mib: int = 0
    cpu_model: str = "qemu64"
    anti_affinity_group: str | None = None
    pinned_reason: str | None = None
    # "pc" is the newest i440fx type of the QEMU that starts the guest; a versioned one such as
    # pc-i440fx-7.2 lets a guest started on QEMU 10 move to QEMU 7.2.
    machine: str = "pc"

    def validate(self) -> None:
        if not _NAME_RE.match(self.name):
            raise LabError(f"guest name {self.name!r} must be 1-63 letters, digits, '.', '_' or '-'")
        if not 64 <= self.memory_mib <= 8192:
            raise LabError(f"guest {self.name}: memory_mib {self.memory_mib} is outside 64..8192")
        if not 1 <= self.vcpus <= 4:
            raise LabError(f"guest {self.name}: vcpus {self.vcpus} is outside 1..4")
        if not _NAME_RE.match(self.machine):
            raise LabError(f"guest {self.name}: machine type {self.machine!r} is not a plain name")
        if not _WORKLOAD_RE.match(self.workload):
            raise LabError(f"guest {self.name}: workload {self.workload!r} has characters other than a-z 0-9 : ,")
        if self.network is not None and not _NAME_RE.match(self.network):
            raise LabError(f"guest {self.name}: network name {self.network!r} is not a plain name")
        if self.disk_mib and not 1 <= self.disk_mib <= 4096:
            raise LabError(f"guest {self.name}: disk_mib {self.disk_mib} is outside 1..4096")
        if self.disk_pool not in DISK_POOLS:
            raise LabError(f"guest {self.name}: disk pool must be one of {', '.join(DISK_POOLS)}, not {self.disk_pool!r}")
        if self.disk_format not in DISK_FORMATS:
            raise LabError(f"guest {self.name}: disk format must be one of {', '.join(DISK_FORMATS)}, not {self.disk_format!r}")
        if not 0 <= self.disk_fill_mib <= self.disk_mib:
            raise LabError(f"guest {self.name}: disk_fill_mib {self.disk_fill_mib} is outside 0..disk_mib ({self.disk_mib})")
        if self.disk_pool == "nbd" and self.disk_format != "raw":
            raise LabError(f"guest {self.name}: the lab's NBD server serves raw images only (--disk-format raw)")
        if not _NAME_RE.match(self.cpu_model):
            raise LabError(f"guest {self.name}: CPU model {self.cpu_model!r} is not a plain name")
        if self.anti_affinity_group is not None and not _NAME_RE.match(self.anti_affinity_group):
            raise LabError(f"guest {self.name}: anti-affinity group {self.anti_affinity_group!r} is not a plain name")
        if self.pinned_reason is not None and not (
            self.pinned_reason.strip() and self.pinned_reason.isprintable() and len(self.pinned_reason) <= 200
        ):
            raise LabError(f"guest {self.name}: pinned reason {self.pinned_reason!r} must be 1-200 printable characters")


def console_path(state: LabState, name: str) -> Path:
    return state.consoles_dir / f"{name}.log"


def domain_xml(state: LabState, guest: GuestSpec, disk_xml: str = "") -> str:
    # pti=on: QEMU 7.2's TCG misses guest writes made through TLB entries that were already
    # dirty when migration cleared its bitmap (fixed upstream in 2024), which can corrupt a
    # migrated guest. Page-table isolation switches CR3, and so flushes QEMU's TLB, on every
    # kernel entry and exit, so writes are tracked again within milliseconds.
    cmdline = f"console=ttyS0 quiet pti=on strata.name={guest.name} strata.workload={guest.workload}"
    cpu = (
        "<cpu mode='host-passthrough'/>"
        if state.domain_type == "kvm"
        else f"<cpu mode='custom' match='exact'><model fallback='forbid'>{guest.cpu_model}</model></cpu>"
    )
    extra_devices = disk_xml
    if guest.network:
        extra_devices += (
            f"<interface type='network'><source network={quoteattr(guest.network)}/><model type='virtio'/></interface>"
        )
    console = quoteattr(str(console_path(state, guest.name)))
    return f"""<domain type='{state.domain_type}'>
  <name>{escape(guest.name)}</name>
  {migration_metadata(guest)}
  <memory unit='MiB'>{guest.memory_mib}</memory>
  <currentMemory unit='MiB'>{guest.memory_mib}</currentMemory>
  <vcpu>{guest.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine={quoteattr(guest.machine)}>hvm</type>
    <kernel>{escape(state.kernel)}</kernel>
    <initrd>{escape(state.initrd)}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  {cpu}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {extra_devices}
    <serial type='file'>
      <source path={console} append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path={console} append='on'/>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='virtio'>
      <stats period='1'/>
    </memballoon>
  </devices>
</domain>
"""


def migration_metadata(guest: GuestSpec) -> str:
    """The <metadata> with the guest's placement hints, or nothing; defined with the guest, so it is
    in the persistent definition and in the running domain alike."""
    hints = ""
    if guest.anti_affinity_group:
        hints += f"<strata:anti_affinity group={quoteattr(guest.anti_affinity_group)}/>"
    if guest.pinned_reason:
        hints += f"<strata:pinned reason={quoteattr(guest.pinned_reason)}/>"
    if not hints:
        return ""
    namespace = quoteattr(MIGRATION_METADATA_NAMESPACE)
    return f"<metadata><strata:migration xmlns:strata={namespace}>{hints}</strata:migration></metadata>"


def create_guest(state: LabState, host_name: str, guest: GuestSpec, wait: bool = True, timeout_s: float = 90) -> dict:
    """Define a persistent guest on a lab host, start it, and wait for its userspace."""
    guest.validate()
    host = state.host(host_name)
    existing = find_guest(state, guest.name)
    if existing:
        raise LabError(f"guest {guest.name} already exists on {', '.join(existing)}; delete it first")
    state.consoles_dir.mkdir(parents=True, exist_ok=True)
    disk_xml = _create_disk(state, host, guest) if guest.disk_mib else ""
    define_from_xml(host.uri, "define", domain_xml(state, guest, disk_xml))
    try:
        boot_s = _start(state, host, guest.name, wait, timeout_s)
    except LabError:
        if "running" not in virsh(host.uri, "domstate", guest.name, check=False):
            # It never ran: leave nothing behind, so the same command can be tried again.
            virsh(host.uri, "undefine", guest.name, "--remove-all-storage", check=False)
            delete_nbd_image(state, nbd_export(guest.name))
        raise
    return {
        "name": guest.name,
        "host": host.name,
        "uri": host.uri,
        "memory_mib": guest.memory_mib,
        "workload": guest.workload,
        "disk": {"pool": guest.disk_pool, "format": guest.disk_format, "mib": guest.disk_mib} if guest.disk_mib else None,
        "console": str(console_path(state, guest.name)),
        "boot_s": boot_s,
    }


def nbd_export(name: str) -> str:
    return f"{name}.raw"


def _create_disk(state: LabState, host: HostSpec, guest: GuestSpec) -> str:
    """The guest's disk as domain XML, its image created; the disk is vda on virtio-blk."""
    if guest.disk_pool == "nbd":
        export = create_nbd_image(state, nbd_export(guest.name), guest.disk_mib)
        _fill_disk(guest, str(nbd_dir(state) / export))
        return nbd_disk_xml(export)
    volume = f"{guest.name}.{guest.disk_format}"
    # A volume of this name belongs to no guest (the name is free): a failed earlier run left it.
    virsh(host.uri, "vol-delete", "--pool", guest.disk_pool, volume, check=False)
    virsh(host.uri, "vol-create-as", guest.disk_pool, volume, f"{guest.disk_mib}M", "--format", guest.disk_format)
    path = virsh(host.uri, "vol-path", "--pool", guest.disk_pool, volume).strip()
    _fill_disk(guest, path, host)
    if guest.disk_pool == "shared":
        _refresh_shared_pools(state)
    # cache='none': libvirt refuses to live-migrate shared disks with host caching as unsafe. A
    # disk that is copied is exempt; the small pool's tmpfs takes O_DIRECT only on Linux 6.6 and later.
    cache = "writethrough" if guest.disk_pool == "small" else "none"
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='{guest.disk_format}' cache='{cache}'/>"
        f"<source file={quoteattr(path)}/><target dev='vda' bus='virtio'/></disk>"
    )


def _fill_disk(guest: GuestSpec, path: str, host: HostSpec | None = None) -> None:
    """Write disk_fill_mib MiB of data from the start of the new disk, before the guest boots.

    host: the host whose private pool holds the path (only its mount namespace has it); None for
    an image this machine sees (the NBD server's).
    """
    if not guest.disk_fill_mib:
        return
    # A non-zero pattern: data every copy must carry, unlike unwritten or zero ranges.
    argv = ["qemu-io", "-f", guest.disk_format, "-c", f"write -P 0x5a 0 {guest.disk_fill_mib}M", path]
    if host is None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=FILL_TIMEOUT_S, check=False)
    else:
        done = run_in_host(host, argv, FILL_TIMEOUT_S)
    if done.returncode:
        raise LabError(f"guest {guest.name}: filling its disk failed: {done.stderr.strip() or done.stdout.strip()}")


def _refresh_shared_pools(state: LabState) -> None:
    """Other hosts list a volume another host created only after a refresh, as with NFS."""
    for other in state.hosts:
        virsh(other.uri, "pool-refresh", "shared", check=False)


def _start(state: LabState, host: HostSpec, name: str, wait: bool, timeout_s: float) -> float | None:
    """Start a defined guest; with `wait`, the seconds until its userspace said it is ready."""
    console = console_path(state, name)
    console.touch()
    offset = console.stat().st_size
    virsh(host.uri, "start", name)
    return round(wait_ready(console, name, offset, timeout_s), 2) if wait else None


def start_existing_guest(state: LabState, name: str, timeout_s: float = 90) -> dict:
    """Start an existing guest where it is defined, unless it already runs."""
    hosts = find_guest(state, name)
    if len(hosts) != 1:
        raise LabError(f"guest {name} is defined on {len(hosts)} hosts ({', '.join(hosts)}); expected exactly one")
    host = state.host(hosts[0])
    if virsh(host.uri, "domstate", name).strip() == "running":
        return {"name": name, "host": host.name, "started": False}
    return {"name": name, "host": host.name, "started": True, "boot_s": _start(state, host, name, True, timeout_s)}


def wait_ready(console: Path, name: str, offset: int, timeout_s: float) -> float:
    """Seconds until the guest printed its ready marker after `offset` in its console file."""
    marker = READY_MARKER.format(name=name)
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with open(console, "rb") as stream:
            stream.seek(offset)
            if marker.encode() in stream.read():
                return time.monotonic() - started
        time.sleep(0.2)
    raise LabError(f"guest {name} did not reach userspace within {timeout_s} s; see {console}")


# The disk workload's block format (lab/guest/workload.c): 4 KiB blocks of little-endian u64s, magic,
# boot id, write seq, block index, payload, then an FNV-1a 64 checksum of the rest in the last 8 bytes.
DISK_BLOCK = 4096
DISK_MAGIC = 0x4B44415441525453


def _fnv1a64(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def check_image(state: LabState, name: str, timeout_s: float = 60) -> dict:
    """Read the shared disk image of a guest that is not running and check every block its workload wrote.

    A block with the workload's magic must have its own index and a good checksum: a torn or
    corrupted block fails. Blocks never written (the fill pattern, zeros) are not counted.
    """
    images = sorted(state.shared_pool_dir.glob(f"{name}.*"))
    if len(images) != 1:
        raise LabError(f"guest {name}: expected one disk image {name}.* in {state.shared_pool_dir}, found {len(images)}")
    with tempfile.TemporaryDirectory(prefix="strata-lab-image.") as work:
        raw = Path(work) / "disk.raw"
        done = subprocess.run(["qemu-img", "convert", "-O", "raw", str(images[0]), str(raw)],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode:
            raise LabError(f"guest {name}: cannot read {images[0]} (is it running?): {done.stderr.strip()}")
        data = raw.read_bytes()
    written, bad, boots = 0, [], set()
    for index in range(len(data) // DISK_BLOCK):
        block = data[index * DISK_BLOCK:(index + 1) * DISK_BLOCK]
        if int.from_bytes(block[0:8], "little") != DISK_MAGIC:
            continue
        written += 1
        boots.add(int.from_bytes(block[8:16], "little"))
        checksum_ok = int.from_bytes(block[-8:], "little") == _fnv1a64(block[:-8])
        if not checksum_ok or int.from_bytes(block[24:32], "little") != index:
            bad.append(index)
    return {"name": name, "image": str(images[0]), "blocks_written": written, "boots": len(boots),
            "bad_blocks": bad[:20], "intact": written > 0 and not bad}


def crash_guest(state: LabState, name: str) -> dict:
    """SIGKILL the QEMU of a running guest, as a QEMU crash would; its libvirtd sees it fail."""
    for host in state.hosts:
        pid = guest_qemu_pid(host, name)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            return {"name": name, "host": host.name, "killed_pid": pid, "changed": True}
    raise LabError(f"guest {name} runs on no lab host")


def find_guest(state: LabState, name: str) -> list[str]:
    """Names of the lab hosts that have a domain of this name, defined or running."""
    return [host.name for host in state.hosts if name in virsh(host.uri, "list", "--all", "--name").split()]


def delete_guest(state: LabState, name: str) -> list[str]:
    """Destroy and undefine the guest wherever it is; returns the hosts it was on."""
    hosts = find_guest(state, name)
    if hosts:
        _refresh_shared_pools(state)
    for host_name in hosts:
        uri = state.host(host_name).uri
        virsh(uri, "destroy", name, check=False)
        virsh(uri, "undefine", name, "--remove-all-storage", check=False)
    # A network disk is not a volume of any pool; its image is the lab's to remove.
    delete_nbd_image(state, nbd_export(name))
    console_path(state, name).unlink(missing_ok=True)
    return hosts


def list_guests_on(host: HostSpec) -> list[dict]:
    found = []
    for line in virsh(host.uri, "list", "--all").splitlines():
        fields = line.split(None, 2)
        if len(fields) == 3:
            found.append({"host": host.name, "name": fields[1], "state": fields[2].strip()})
    return found


def list_guests(state: LabState) -> list[dict]:
    return [guest for host in state.hosts for guest in list_guests_on(host)]


_HEARTBEAT_RE = re.compile(
    rb"strata-workload: alive boot=(?P<boot>[0-9a-f]+) seq=(?P<seq>\d+) pages_written=\d+"
    rb"(?: disk_writes=(?P<writes>\d+) disk_checks=(?P<checks>\d+) disk_errors=(?P<errors>\d+))?"
)
_DISK_ERROR_RE = re.compile(rb"strata-workload: disk (?:io )?error [^\r\n]*")
# A pass that began before the command may have read the disk before the question was asked;
# the second heartbeat after it reports a pass that ran entirely afterwards.
_FRESH_HEARTBEATS = 2


def check_disk(state: LabState, name: str, timeout_s: float = 30) -> dict:
    """Wait for a disk check the guest made after this call, and report its disk's integrity.

    The guest's disk workload reads back every block it wrote at each heartbeat: a block with
    a bad checksum was torn or corrupted, one older than its last completed write was lost.
    """
    console = console_path(state, name)
    if not console.exists():
        raise LabError(f"guest {name} has no console file {console}")
    offset = console.stat().st_size
    deadline = time.monotonic() + timeout_s
    while True:
        with open(console, "rb") as stream:
            stream.seek(offset)
            fresh = list(_HEARTBEAT_RE.finditer(stream.read()))
        if len(fresh) >= _FRESH_HEARTBEATS:
            break
        if time.monotonic() >= deadline:
            raise LabError(f"guest {name} printed no {_FRESH_HEARTBEATS} heartbeats within {timeout_s} s; see {console}")
        time.sleep(0.5)
    last = fresh[-1]
    if last.group("writes") is None:
        raise LabError(f"guest {name} runs no disk workload (create it with --workload disk:MIB:RATE)")
    whole = console.read_bytes()
    boots = sorted({m.group("boot").decode() for m in _HEARTBEAT_RE.finditer(whole)})
    errors = int(last.group("errors"))
    return {
        "name": name,
        "boot": last.group("boot").decode(),
        "boots_seen": boots,
        "heartbeat_seq": int(last.group("seq")),
        "disk_writes": int(last.group("writes")),
        "disk_checks": int(last.group("checks")),
        "disk_errors": errors,
        "error_lines": [m.group(0).decode(errors="replace") for m in _DISK_ERROR_RE.finditer(whole)][-10:],
        "intact": errors == 0,
    }
