"""Where the lab lives and how its hosts are laid out.

Every lab host is a libvirtd in its own mount and UTS namespace, reachable on a
loopback address of its own. Only loopback addresses are ever used.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

DEFAULT_LAB_DIR = Path(os.environ.get("STRATA_LAB_DIR", "/var/lib/strata-lab"))
DEFAULT_CACHE_DIR = Path(os.environ.get("STRATA_LAB_CACHE", "/var/cache/strata-lab"))

# Fixed namespace so a host's UUID is stable across `down`/`up`: libvirt refuses to
# migrate between hosts with the same UUID, and persistent domains survive restarts.
_HOST_UUID_NAMESPACE = uuid.UUID("5f3b7c1e-2a4d-4b8e-9c61-7d2e0f4a9b30")
_FIRST_ADDRESS_OCTET = 11
_MIGRATION_PORT_BASE = 50000
_MIGRATION_PORTS_PER_HOST = 100
LIBVIRTD_TCP_PORT = 16509
LIBVIRTD_TLS_PORT = 16514
# Each host's sshd listens on the standard port and on another, for URIs that name a port.
SSH_PORTS = (22, 2222)
# Directories libvirtd writes to; each host gets private copies bind-mounted over them.
PRIVATE_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}


@dataclass(frozen=True)
class HostSpec:
    name: str
    index: int
    address: str
    host_uuid: str
    migration_port_min: int
    migration_port_max: int
    memory_capacity_mib: int
    root: str
    # CPU models this host's libvirt does not know: the lab's "legacy" host refuses guests
    # that use them, so pre-flight CPU checks can be exercised for real.
    cpu_models_missing: tuple = ()
    # "stock" runs the machine's libvirtd; another stack (stack.py) runs libvirtd chrooted into
    # stack_root, a newer libvirt and QEMU.
    stack: str = "stock"
    stack_root: str = ""
    # The folders domain XML and the lab's certificates name; a chrooted host sees them at the same paths.
    shared_paths: tuple = ()

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.address}/system"

    @property
    def pid_file(self) -> Path:
        return Path(self.root) / "libvirtd.pid"

    @property
    def virtlockd_pid_file(self) -> Path:
        return Path(self.root) / "virtlockd.pid"

    @property
    def etc_hosts(self) -> Path:
        return Path(self.root) / "etc-hosts"

    @property
    def daemon_log(self) -> Path:
        return Path(self.root) / "daemon.log"

    def private_dir(self, key: str) -> Path:
        return Path(self.root) / key


LEGACY_CPU_MODELS = ("Westmere", "Westmere-IBRS")


def make_host_spec(lab_dir: Path, index: int, memory_capacity_mib: int, legacy: bool = False,
                   stack: str = "stock", stack_root: str = "", shared_paths: tuple = ()) -> HostSpec:
    name = f"hv{index}"
    port_min = _MIGRATION_PORT_BASE + index * _MIGRATION_PORTS_PER_HOST
    return HostSpec(
        name=name,
        index=index,
        address=f"127.0.0.{_FIRST_ADDRESS_OCTET + index - 1}",
        host_uuid=str(uuid.uuid5(_HOST_UUID_NAMESPACE, name)),
        migration_port_min=port_min,
        migration_port_max=port_min + _MIGRATION_PORTS_PER_HOST - 1,
        memory_capacity_mib=memory_capacity_mib,
        root=str(lab_dir / "hosts" / name),
        cpu_models_missing=LEGACY_CPU_MODELS if legacy else (),
        stack=stack,
        stack_root=stack_root,
        shared_paths=shared_paths,
    )


@dataclass
class LabState:
    """What `up` built; saved as lab.json so every later command sees the same lab."""

    lab_dir: str
    cache_dir: str
    domain_type: str
    hosts: list[HostSpec] = field(default_factory=list)
    kernel: str = ""
    initrd: str = ""
    # How the inventory reaches the hosts: tcp, ssh or tls (every host offers all three).
    transport: str = "ssh"

    @property
    def shared_pool_dir(self) -> Path:
        """Storage every lab host sees, as NFS would be: disks here are shared."""
        return Path(self.lab_dir) / "shared"

    @property
    def ssh_dir(self) -> Path:
        return Path(self.lab_dir) / "ssh"

    @property
    def pki_dir(self) -> Path:
        return Path(self.lab_dir) / "pki"

    @property
    def consoles_dir(self) -> Path:
        return Path(self.lab_dir) / "consoles"

    def host(self, name: str) -> HostSpec:
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise LabError(f"no lab host named {name!r} (lab hosts: {known})")

    def save(self) -> None:
        path = Path(self.lab_dir) / "lab.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, lab_dir: Path) -> "LabState":
        path = lab_dir / "lab.json"
        if not path.exists():
            raise LabError(f"no lab at {lab_dir}: run `strata-lab up` first")
        data = json.loads(path.read_text())
        known = {f.name for f in fields(HostSpec)}  # a field of an older lab is dropped
        hosts = [
            HostSpec(**{**{key: value for key, value in h.items() if key in known},
                        "cpu_models_missing": tuple(h.get("cpu_models_missing", ())),
                        "shared_paths": tuple(h.get("shared_paths", ()))})
            for h in data.pop("hosts")
        ]
        return cls(hosts=hosts, **data)


def write_if_changed(path: Path, content: str | bytes) -> None:
    data = content.encode() if isinstance(content, str) else content
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


class LabError(Exception):
    """A lab operation failed; the message says what and what to do."""
