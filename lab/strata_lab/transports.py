"""How the controller and the hosts reach each lab host's libvirtd: TCP, ssh or TLS.

ssh: every host runs its own sshd inside its namespaces, on its own loopback address (ports 22
and 2222), so `qemu+ssh://root@ADDRESS/system` reaches that host's libvirtd and no other. The
lab's client key, known_hosts and ssh configuration live in LAB/ssh; the URIs name a wrapper
(`command=`) that runs ssh with that configuration, so host keys are checked strictly without
touching the user's own ~/.ssh. A source libvirtd opening a peer-to-peer migration runs the same
wrapper.

TLS: a lab CA signs one server certificate per host (IP SAN: its loopback address), used by
libvirtd (`listen_tls`) and by QEMU for TLS migration streams, and one client certificate, which
the controller and the hosts' libvirtds present (`pkipath=` in the URI).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .config import LIBVIRTD_TLS_PORT, SSH_PORTS, HostSpec, LabError, LabState, write_if_changed

TRANSPORTS = ("tcp", "ssh", "tls")
SSHD = "/usr/sbin/sshd"
CERT_DAYS = 3650


def host_uri(state: LabState, host: HostSpec, transport: str) -> str:
    if transport == "tcp":
        return host.uri
    if transport == "ssh":
        return f"qemu+ssh://root@{host.address}/system?{ssh_uri_query(state)}"
    if transport == "tls":
        return f"qemu+tls://{host.address}/system?pkipath={client_pki_dir(state)}"
    raise LabError(f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}")


def ssh_uri_query(state: LabState) -> str:
    ssh_dir = state.ssh_dir
    return f"command={ssh_dir / 'ssh'}&keyfile={ssh_dir / 'id_ed25519'}"


def client_pki_dir(state: LabState, name: str = "client") -> Path:
    return state.pki_dir / name


# ---- ssh ----------------------------------------------------------------------


def sshd_dir(host: HostSpec) -> Path:
    return Path(host.root) / "sshd"


def sshd_config_path(host: HostSpec) -> Path:
    return sshd_dir(host) / "sshd_config"


def sshd_pid_file(host: HostSpec) -> Path:
    return sshd_dir(host) / "sshd.pid"


def render_sshd_config(state: LabState, host: HostSpec) -> str:
    directory = sshd_dir(host)
    lines = ["# Written by strata-lab: this host's sshd, on its own loopback address only."]
    lines += [f"ListenAddress {host.address}:{port}" for port in SSH_PORTS]
    lines += [
        f"HostKey {directory / 'host_key'}",
        f"PidFile {sshd_pid_file(host)}",
        f"AuthorizedKeysFile {state.ssh_dir / 'authorized_keys'}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        # No PAM session in a lab namespace; the lab's folders are world-readable.
        "UsePAM no",
        "StrictModes no",
        "PrintMotd no",
        # Ansible copies files to a host over sftp (the hypervisor role's settings).
        "Subsystem sftp internal-sftp",
        "",
    ]
    return "\n".join(lines)


def render_ssh_config(state: LabState) -> str:
    return "\n".join(
        [
            "# Written by strata-lab: how the controller and the hosts reach lab hosts over ssh.",
            "Host *",
            f"  UserKnownHostsFile {state.ssh_dir / 'known_hosts'}",
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
            "  IdentitiesOnly yes",
            "  ConnectTimeout 10",
            "  ServerAliveInterval 5",
            "  ServerAliveCountMax 3",
            "",
        ]
    )


def ensure_ssh(state: LabState) -> None:
    """The client key, every host's key and sshd configuration, known_hosts and the ssh wrapper."""
    ssh_dir = state.ssh_dir
    ssh_dir.mkdir(parents=True, exist_ok=True)
    client_key = ssh_dir / "id_ed25519"
    _ensure_ssh_key(client_key, "strata-lab controller")
    write_if_changed(ssh_dir / "authorized_keys", client_key.with_suffix(".pub").read_text())
    write_if_changed(ssh_dir / "config", render_ssh_config(state))
    wrapper = ssh_dir / "ssh"
    write_if_changed(wrapper, f'#!/bin/sh\nexec ssh -F {ssh_dir / "config"} "$@"\n')
    wrapper.chmod(0o755)
    known = []
    for host in state.hosts:
        directory = sshd_dir(host)
        directory.mkdir(parents=True, exist_ok=True)
        _ensure_ssh_key(directory / "host_key", f"strata-lab {host.name}")
        write_if_changed(sshd_config_path(host), render_sshd_config(state, host))
        key_type, key = (directory / "host_key.pub").read_text().split()[:2]
        known += [
            f"{host.address if port == 22 else f'[{host.address}]:{port}'} {key_type} {key}" for port in SSH_PORTS
        ]
    write_if_changed(ssh_dir / "known_hosts", "\n".join(known) + "\n")


def _ensure_ssh_key(path: Path, comment: str) -> None:
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def sshd_start_command(host: HostSpec) -> str:
    """Shell words that start the host's sshd inside its namespaces (sshd detaches itself)."""
    return f"mkdir -p /run/sshd && {SSHD} -f {sshd_config_path(host)} -E {sshd_dir(host) / 'sshd.log'}"


def sshd_pids(host: HostSpec, processes: list[tuple[int, list[str]]]) -> list[int]:
    """The host's listening sshd, found by its configuration argument (connection children do not name it).

    sshd rewrites its command line into one title, "sshd: /usr/sbin/sshd -f CONFIG ... [listener] ...".
    """
    marker = f"{SSHD} -f {sshd_config_path(host)} "
    return [pid for pid, argv in processes if marker in " ".join(argv) + " "]


# ---- TLS ----------------------------------------------------------------------


def host_pki_dir(host: HostSpec) -> Path:
    """The host's certificates, named as QEMU expects them; libvirtd is pointed at the same files."""
    return Path(host.root) / "pki"


def ensure_pki(state: LabState) -> None:
    """The lab CA, a server certificate per host, the client certificates and their folders."""
    pki = state.pki_dir
    pki.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = pki / "ca-key.pem", pki / "ca-cert.pem"
    if not ca_cert.exists():
        _self_signed_ca(pki, "strata-lab CA", ca_key, ca_cert)
    client = client_pki_dir(state)
    _client_certificate(pki, client, ca_key, ca_cert, "strata-lab client", CERT_DAYS)
    # Faults the tests meet: a client certificate past its end, and a client that trusts another CA.
    _client_certificate(pki, client_pki_dir(state, "client-expired"), ca_key, ca_cert, "strata-lab expired", -1)
    other = client_pki_dir(state, "client-other-ca")
    other_ca_key, other_ca_cert = pki / "other-ca-key.pem", pki / "other-ca-cert.pem"
    if not other_ca_cert.exists():
        _self_signed_ca(pki, "another CA", other_ca_key, other_ca_cert)
    if not (other / "cacert.pem").exists():
        other.mkdir(parents=True, exist_ok=True)
        for name in ("clientcert.pem", "clientkey.pem"):
            (other / name).write_bytes((client / name).read_bytes())
        (other / "cacert.pem").write_bytes(other_ca_cert.read_bytes())
    for host in state.hosts:
        directory = host_pki_dir(host)
        directory.mkdir(parents=True, exist_ok=True)
        # A certificate signed by an earlier CA (its lab folder was removed) is made anew.
        host_ca = directory / "ca-cert.pem"
        if not (directory / "server-cert.pem").exists() or not host_ca.exists() or host_ca.read_bytes() != ca_cert.read_bytes():
            template = (
                f"organization = strata-lab\ncn = {host.name}\ndns_name = {host.name}\nip_address = {host.address}\n"
                f"tls_www_server\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = {CERT_DAYS}\n"
            )
            _signed_certificate(pki, template, directory / "server-key.pem", directory / "server-cert.pem",
                                ca_key, ca_cert)
        # QEMU is a client too when it sends a migration stream.
        for name, source in (("ca-cert.pem", ca_cert), ("client-cert.pem", client / "clientcert.pem"),
                             ("client-key.pem", client / "clientkey.pem")):
            write_if_changed(directory / name, source.read_bytes())


def _self_signed_ca(pki: Path, name: str, key: Path, cert: Path) -> None:
    _generate_key(key)
    template = pki / f".{key.stem}.info"
    template.write_text(f"cn = {name}\nca\ncert_signing_key\nexpiration_days = {CERT_DAYS}\n")
    _run(["certtool", "--generate-self-signed", "--load-privkey", str(key), "--template", str(template),
          "--outfile", str(cert)])
    template.unlink()


def _client_certificate(pki: Path, directory: Path, ca_key: Path, ca_cert: Path, name: str, days: int) -> None:
    """A client certificate valid for `days`; a negative number makes one that ended in 2020, as one nobody renewed."""
    if (directory / "clientcert.pem").exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    lifetime = (
        f"expiration_days = {days}\n" if days > 0
        else 'activation_date = "2020-01-01 00:00:00"\nexpiration_date = "2020-01-02 00:00:00"\n'
    )
    template = f"organization = strata-lab\ncn = {name}\ntls_www_client\nencryption_key\nsigning_key\n{lifetime}"
    _signed_certificate(pki, template, directory / "clientkey.pem", directory / "clientcert.pem", ca_key, ca_cert)
    (directory / "cacert.pem").write_bytes(ca_cert.read_bytes())


def _signed_certificate(pki: Path, template_text: str, key: Path, cert: Path, ca_key: Path, ca_cert: Path) -> None:
    _generate_key(key)
    template = pki / f".{cert.parent.name}-{cert.stem}.info"
    template.write_text(template_text)
    _run(["certtool", "--generate-certificate", "--load-privkey", str(key), "--load-ca-certificate", str(ca_cert),
          "--load-ca-privkey", str(ca_key), "--template", str(template), "--outfile", str(cert)])
    template.unlink()


def _generate_key(path: Path) -> None:
    _run(["certtool", "--generate-privkey", "--key-type=rsa", "--bits=2048", "--outfile", str(path)])
    os.chmod(path, 0o600)


def libvirtd_tls_settings(host: HostSpec) -> list[str]:
    directory = host_pki_dir(host)
    return [
        "listen_tls = 1",
        f'tls_port = "{LIBVIRTD_TLS_PORT}"',
        f'key_file = "{directory / "server-key.pem"}"',
        f'cert_file = "{directory / "server-cert.pem"}"',
        f'ca_file = "{directory / "ca-cert.pem"}"',
    ]


def qemu_tls_settings(host: HostSpec) -> list[str]:
    return [f'migrate_tls_x509_cert_dir = "{host_pki_dir(host)}"', "migrate_tls_x509_verify = 1"]


# ---- helpers ------------------------------------------------------------------


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise LabError(f"{' '.join(argv[:2])} failed: {result.stderr.strip()[-400:]}")
