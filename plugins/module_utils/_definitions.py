# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Each VM's persistent definition kept off its host: what a recovery restarts a failed host's VMs from.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

The backup (a JSON file on the controller, version 1) holds the last reading of
each host:

    {"version": 1, "hosts": {HOST: {"changed_at": ISO-8601 UTC, "domains":
        {NAME: {"uuid": ..., "xml": ..., "autostart": bool, "active": bool}}}}}

A reading replaces the host's entry whole, so a VM that left the host leaves it
too; `changed_at` is the time of the reading that last changed the entry, so a
reading that finds nothing new changes nothing. A dead host's entry stays as
last read. A VM that left it before it died then also appears under its new
host, in an entry changed later: the later entry wins.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import typing as t

from ansible_collections.strata.migration.plugins.module_utils._cluster import (
    ClusterHost,
    parse_migration_metadata,
    read_each,
)
from ansible_collections.strata.migration.plugins.module_utils._inventory import kib_to_mib, parse_domain_xml
from ansible_collections.strata.migration.plugins.module_utils._libvirt import (
    ERR_NO_DOMAIN,
    LibvirtClient,
    LibvirtError,
    StrataError,
    find_domain,
    find_domain_by_uuid,
    libvirt_error_code,
)
from ansible_collections.strata.migration.plugins.module_utils._manifest import utc_now, write_private_file

BACKUP_VERSION = 1

# libvirt's flag values, fixed by its ABI.
LIST_PERSISTENT = 4  # VIR_CONNECT_LIST_DOMAINS_PERSISTENT
XML_SECURE = 1  # VIR_DOMAIN_XML_SECURE: keeps passwords (VNC, SPICE), so the file is the owner's only
XML_INACTIVE = 2  # VIR_DOMAIN_XML_INACTIVE: the persistent definition, not the running state


class BackupError(StrataError):
    """A backup that cannot be read, written or used, with what to do about it."""


@dataclasses.dataclass(frozen=True)
class Definition:
    """One VM's persistent definition on one host, as last read."""

    name: str
    uuid: str
    xml: str
    autostart: bool
    active: bool

    def to_dict(self) -> t.Dict[str, t.Any]:
        return {"uuid": self.uuid, "xml": self.xml, "autostart": self.autostart, "active": self.active}


def empty_backup() -> t.Dict[str, t.Any]:
    return {"version": BACKUP_VERSION, "hosts": {}}


def with_reading(
    backup: t.Mapping[str, t.Any], host: str, domains: t.Iterable[Definition], now: str
) -> t.Tuple[t.Dict[str, t.Any], bool]:
    """(the backup with the host's entry replaced by this reading, whether that changed anything)."""
    hosts = dict(backup.get("hosts") or {})
    read = {item.name: item.to_dict() for item in sorted(domains, key=lambda item: item.name)}
    old = hosts.get(host)
    if old is not None and old.get("domains") == read:
        return {"version": BACKUP_VERSION, "hosts": hosts}, False
    hosts[host] = {"changed_at": now, "domains": read}
    return {"version": BACKUP_VERSION, "hosts": hosts}, True


def _definition(name: str, data: t.Any, where: str) -> Definition:
    try:
        return Definition(name=name, uuid=str(data["uuid"]), xml=str(data["xml"]), autostart=bool(data["autostart"]),
                          active=bool(data["active"]))
    except (KeyError, TypeError) as exc:
        raise BackupError("%s: the entry of VM %s lacks %s" % (where, name, exc)) from None


def check_backup(backup: t.Any, where: str) -> t.Dict[str, t.Any]:
    """The backup if it has the shape this version writes; BackupError naming where otherwise."""
    if not isinstance(backup, dict) or backup.get("version") != BACKUP_VERSION:
        raise BackupError("%s is not a definitions backup of version %d" % (where, BACKUP_VERSION))
    hosts = backup.get("hosts")
    if not isinstance(hosts, dict):
        raise BackupError("%s has no hosts mapping" % where)
    for host, entry in hosts.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("changed_at"), str) \
                or not isinstance(entry.get("domains"), dict):
            raise BackupError("%s: the entry of host %s needs changed_at and domains" % (where, host))
        for name, data in entry["domains"].items():
            _definition(name, data, "%s, host %s" % (where, host))
    return backup


def load_backup(path: str) -> t.Dict[str, t.Any]:
    """The backup at path (an empty one when there is no file yet)."""
    try:
        with open(path, "r", encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return empty_backup()
        raise BackupError("cannot read the definitions backup %s: %s" % (path, exc.strerror), path=path) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BackupError("the definitions backup %s is not valid JSON (%s); repair it, or move it aside and read "
                          "the cluster again to start a new one (a host that is down then has no backup)"
                          % (path, exc), path=path) from None
    try:
        return check_backup(data, "the definitions backup %s" % path)
    except BackupError as exc:
        raise BackupError("%s; repair it, or move it aside and read the cluster again to start a new one"
                          % exc, path=path) from None


def save_backup(path: str, backup: t.Mapping[str, t.Any]) -> None:
    """Write the backup atomically, readable by its owner only (the XML keeps console passwords)."""
    try:
        write_private_file(path, json.dumps(backup, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise BackupError("cannot write the definitions backup %s: %s; the previous one, if any, is unchanged"
                          % (path, exc.strerror or exc), path=path) from None


def read_definitions(conn: t.Any) -> t.List[Definition]:
    """Every persistent domain of the connected host, with its persistent XML (passwords included)."""
    found = []
    for dom in conn.listAllDomains(LIST_PERSISTENT):
        try:
            found.append(Definition(name=dom.name(), uuid=dom.UUIDString(), xml=dom.XMLDesc(XML_INACTIVE | XML_SECURE),
                                    autostart=bool(dom.autostart()), active=bool(dom.isActive())))
        except LibvirtError as exc:
            if libvirt_error_code(exc) == ERR_NO_DOMAIN:  # undefined since the listing
                continue
            raise
    return found


def back_up(
    specs: t.Sequence[ClusterHost],
    path: str,
    connect_timeout_s: float,
    check_mode: bool = False,
    opener: t.Optional[t.Callable[[str], t.Any]] = None,
    clock: t.Callable[[], str] = utc_now,
) -> t.Dict[str, t.Any]:
    """Read every reachable host's definitions into the backup at path; an unreachable host keeps its last entry.

    Returns the module's result: changed, each host's VMs and when its entry last changed, the unreachable hosts.
    """
    backup = load_backup(path)
    changed_hosts: t.List[str] = []
    clients = [LibvirtClient(spec.uri, connect_timeout_s, opener=opener) for spec in specs]
    try:
        readings, unreachable = read_each(specs, clients, lambda client, _spec: read_definitions(client.conn),
                                          required=False)
    finally:
        for client in clients:
            client.close()
    now = clock()
    for spec, _client, definitions in readings:
        backup, changed = with_reading(backup, spec.name, definitions, now)
        if changed:
            changed_hosts.append(spec.name)
    if changed_hosts and not check_mode:
        save_backup(path, backup)
    entries = backup["hosts"]
    return {
        "changed": bool(changed_hosts),
        "path": path,
        "changed_hosts": changed_hosts,
        "hosts": [{"name": spec.name, "changed_at": entries[spec.name]["changed_at"] if spec.name in entries else None,
                   "vms": sorted(entries.get(spec.name, {}).get("domains", {}))} for spec in specs],
        "unreachable_hosts": [dataclasses.asdict(host) for host in unreachable],
    }


def definition_of(backup: t.Mapping[str, t.Any], host: str, vm: str) -> Definition:
    entry = (backup.get("hosts") or {}).get(host)
    if entry is None:
        raise BackupError("the definitions backup has no reading of host %s: read the cluster while the host runs "
                          "(every workflow does) so that its VMs can be restarted" % host, host=host)
    if vm not in entry["domains"]:
        raise BackupError("the definitions backup has no VM %s on host %s (last changed %s)"
                          % (vm, host, entry["changed_at"]), host=host)
    return _definition(vm, entry["domains"][vm], "host %s" % host)


def restart_candidates(
    backup: t.Mapping[str, t.Any],
    failed_hosts: t.Sequence[str],
    definitions: t.Mapping[str, t.Sequence[str]],
    where: t.Mapping[str, t.Optional[str]],
) -> t.Dict[str, t.Any]:
    """The VMs of failed_hosts to restart elsewhere, in the planner's terms, and those left out with why.

    definitions and where are what the survivors hold now (cluster_info's results,
    by name or UUID). A VM that ran on a failed host at its last reading is a
    candidate unless a survivor already holds it (restarted by an earlier run,
    or moved away before the host failed) or a later reading of another host
    has it: restarting it would run it twice.
    """
    hosts = backup.get("hosts") or {}
    vms: t.List[t.Dict[str, t.Any]] = []
    left_out: t.List[t.Dict[str, str]] = []
    for failed in failed_hosts:
        entry = hosts.get(failed)
        if entry is None:
            raise BackupError("the definitions backup has no reading of host %s: its VMs cannot be restarted from it. "
                              "Every workflow reads the cluster into the backup; read it while all hosts run" % failed,
                              host=failed)
        later_elsewhere: t.Dict[str, str] = {}
        for host, other in hosts.items():
            if host not in failed_hosts and other["changed_at"] > entry["changed_at"]:
                for data in other["domains"].values():
                    later_elsewhere.setdefault(str(data["uuid"]), host)
        for name in sorted(entry["domains"]):
            definition = _definition(name, entry["domains"][name], "host %s" % failed)
            if not definition.active:
                continue
            held = list(definitions.get(definition.uuid) or definitions.get(name) or [])
            running = where.get(definition.uuid) or where.get(name)
            if running or held:
                left_out.append({"vm": name, "host": failed,
                                 "reason": "runs on %s" % running if running else "defined on %s" % ", ".join(held)})
                continue
            if definition.uuid in later_elsewhere:
                left_out.append({"vm": name, "host": failed, "reason": "in a later reading of %s, which is not "
                                 "reachable now" % later_elsewhere[definition.uuid]})
                continue
            vms.append(_planner_vm(definition, failed))
    return {"vms": vms, "left_out": left_out}


def _planner_vm(definition: Definition, host: str) -> t.Dict[str, t.Any]:
    parsed = parse_domain_xml(definition.xml)
    memory_kib = parsed.memory_current_kib or parsed.memory_max_kib or 0
    metadata = parse_migration_metadata(definition.xml)
    return {
        "name": definition.name,
        "uuid": definition.uuid,
        "host": host,
        "memory_mib": kib_to_mib(memory_kib),
        "vcpus": parsed.vcpus or 1,
        "anti_affinity_group": metadata.anti_affinity_group,
        "pinned": metadata.pinned_reason or False,
        "restart_priority": metadata.restart_priority,
    }


STATE_RUNNING = 1  # VIR_DOMAIN_RUNNING
# How a start refused because another process holds the disk reads: libvirt's lockd ("resource busy:
# Lockspace resource '...' is locked"), sanlock, or QEMU's image locking ('Failed to get "write" lock').
DISK_HELD_SIGNS = ("is locked", "resource busy", 'failed to get "write" lock')


def restart_here(conn: t.Any, definition: Definition, host: str, check_mode: bool) -> t.Dict[str, t.Any]:
    """Define the VM from its backed-up definition on the connected host and start it; nothing when it runs there.

    A copy that will not start (its disk is locked, a disk is missing) is
    undefined again when this call defined it, so the VM stays defined on no
    more hosts than before.
    """
    existing = find_domain_by_uuid(conn, definition.uuid)
    if existing is None:
        namesake = find_domain(conn, definition.name)
        if namesake is not None:
            raise BackupError("host %s already has another VM named %s (UUID %s, not %s): restarting would replace "
                              "it; rename one of them first" % (host, definition.name, namesake.UUIDString(),
                                                                definition.uuid), host=host)
    elif existing.isActive():
        return {"changed": False, "msg": "%s already runs on %s" % (definition.name, host)}
    if check_mode:
        return {"changed": True, "msg": "would %s %s on %s" % (
            "start" if existing is not None else "define and start", definition.name, host)}
    dom = existing
    if dom is None:
        dom = conn.defineXML(definition.xml)
    try:
        if existing is None and definition.autostart:
            dom.setAutostart(1)
        dom.create()
    except LibvirtError as exc:
        cause = str(exc)
        if existing is None:
            try:
                dom.undefine()
            except LibvirtError:
                pass  # the message below says where it was defined
        if any(sign in cause.lower() for sign in DISK_HELD_SIGNS):
            raise BackupError("cannot start %s on %s: its disk is locked (a disk lease, or QEMU's own image lock), so "
                              "a copy of it still runs, probably on the host that seems failed. Nothing was "
                              "started%s. Fence that host, then rerun"
                              % (definition.name, host, "" if existing is not None else " and the definition was "
                                 "removed again"), host=host) from None
        raise BackupError("cannot start %s on %s: %s. Nothing was started%s" % (
            definition.name, host, cause, "" if existing is not None else "; the definition was removed again"),
            host=host) from None
    state = dom.state()[0]
    if state != STATE_RUNNING:
        raise BackupError("%s was started on %s but is not running (state %s); look at its log there"
                          % (definition.name, host, state), host=host)
    return {"changed": True, "msg": "restarted on %s" % host}


def recovery_input(
    backup: t.Any,
    failed_hosts: t.Sequence[str],
    cluster: t.Mapping[str, t.Any],
    restart_priorities: t.Optional[t.Mapping[str, int]] = None,
) -> t.Dict[str, t.Any]:
    """What migration_plan (mode=recover) needs beside the survivors: the failed hosts and the VMs to restart.

    cluster: cluster_info's result for the survivors. restart_priorities: per VM name,
    overriding the priority in the domain's metadata.
    """
    found = restart_candidates(check_backup(backup, "the definitions backup"), failed_hosts,
                               cluster.get("definitions") or {}, cluster.get("where") or {})
    priorities = restart_priorities or {}
    for vm in found["vms"]:
        if vm["name"] in priorities:
            vm["restart_priority"] = int(priorities[vm["name"]])
    hosts = []
    for failed in failed_hosts:
        own = [vm for vm in found["vms"] if vm["host"] == failed]
        # The planner takes the failed host as the source of its VMs; it never places anything there.
        hosts.append({"name": failed, "memory_capacity_mib": max(1, sum(vm["memory_mib"] for vm in own)),
                      "cpus": max(1, sum(vm["vcpus"] for vm in own)), "excluded": True})
    return {"hosts": hosts, "vms": found["vms"], "left_out": found["left_out"]}


def remove_stale(conn: t.Any, definition: Definition, host: str, check_mode: bool) -> t.Dict[str, t.Any]:
    """Undefine the VM's stopped copy from the connected host, a failed host that came back after its VMs restarted
    elsewhere; nothing when it has none. A copy that runs there is never touched: the caller must look."""
    existing = find_domain_by_uuid(conn, definition.uuid)
    if existing is None:
        return {"changed": False, "msg": "%s has no copy of %s" % (host, definition.name)}
    if existing.isActive():
        raise BackupError("%s runs on %s, which came back after it was restarted elsewhere: two copies may run on the "
                          "same disks. Keep one (virsh destroy the other), then rerun" % (definition.name, host),
                          host=host)
    if not check_mode:
        existing.undefine()
    return {"changed": True, "msg": "%s the stale definition of %s from %s" % (
        "would remove" if check_mode else "removed", definition.name, host)}
