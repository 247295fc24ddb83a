# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Plain-data steps of the workflow roles (evacuate, rebalance, maintenance_window).

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

The roles call these through the collection's filter plugin (plugins/filter/
workflow.py): they turn inventory variables, module results and the manifest
into the next task's input. Everything is pure; nothing here talks to libvirt.
"""

from __future__ import annotations

import typing as t

Data = t.Dict[str, t.Any]

# Inventory variables a hypervisor may set, and the cluster_info option each feeds.
_HOST_VARIABLES = (
    ("strata_memory_capacity_mib", "memory_capacity_mib"),
    ("strata_memory_reserve_mib", "reserve_mib"),
)

# The keys migration_plan accepts; cluster_info returns more.
_PLANNER_HOST_KEYS = ("name", "memory_capacity_mib", "reserve_mib", "cpus")
_PLANNER_VM_KEYS = ("name", "uuid", "host", "memory_mib", "vcpus", "pinned")


class WorkflowError(ValueError):
    """The input of a workflow step is not what the roles expect."""


def host_list(value: t.Any, option: str = "hosts") -> t.List[str]:
    """Return a list of host names from a list or a comma-separated string (AWX surveys, -e)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value):
        return [name.strip() for name in value if name.strip()]
    raise WorkflowError("%s must be a list of host names or a comma-separated string, got %r." % (option, value))


def _whole_mib(host: str, variable: str, value: t.Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise WorkflowError("Host %s: %s must be a whole number of MiB, got %r." % (host, variable, value)) from None


def cluster_hosts(names: t.Sequence[str], hostvars: t.Mapping[str, t.Mapping[str, t.Any]]) -> t.List[Data]:
    """Return the `hosts` option of cluster_info for the inventory hosts `names`."""
    hosts = []
    for name in names:
        # Ansible's hostvars answers an unknown host with an undefined value, not None: ask with `in`.
        if name not in hostvars:
            raise WorkflowError("Host %s is not in the inventory." % name)
        facts = hostvars[name]
        if not facts.get("strata_libvirt_uri"):
            raise WorkflowError("Host %s has no strata_libvirt_uri in the inventory." % name)
        host: Data = {"name": name, "uri": facts["strata_libvirt_uri"]}
        for variable, option in _HOST_VARIABLES:
            if facts.get(variable) not in (None, ""):
                host[option] = _whole_mib(name, variable, facts[variable])
        hosts.append(host)
    return hosts


def migrate_uris(names: t.Sequence[str], hostvars: t.Mapping[str, t.Mapping[str, t.Any]]) -> t.Dict[str, str]:
    """Return `tcp://<strata_migration_address>` per host that sets it (the migration data channel)."""
    return {
        name: "tcp://%s" % hostvars[name]["strata_migration_address"]
        for name in names
        if name in hostvars and hostvars[name].get("strata_migration_address")
    }


def planner_hosts(hosts: t.Sequence[t.Mapping[str, t.Any]], excluded: t.Iterable[str] = ()) -> t.List[Data]:
    """Return cluster_info's hosts in migration_plan's terms, marking `excluded` hosts."""
    excluded_names = set(excluded)
    return [
        dict({key: host[key] for key in _PLANNER_HOST_KEYS if key in host}, excluded=host["name"] in excluded_names)
        for host in hosts
    ]


def planner_vms(vms: t.Sequence[t.Mapping[str, t.Any]], recently_moved: t.Iterable[str] = ()) -> t.List[Data]:
    """Return cluster_info's VMs in migration_plan's terms; `recently_moved` names VMs to mark so."""
    recent = set(recently_moved)
    result = []
    for vm in vms:
        entry = {key: vm[key] for key in _PLANNER_VM_KEYS if key in vm}
        entry["pinned"] = entry.get("pinned") or False
        if vm.get("anti_affinity_group"):
            entry["anti_affinity_group"] = vm["anti_affinity_group"]
        if vm["name"] in recent:
            entry["recently_moved"] = True
        if vm.get("local_disk_mib") and not entry["pinned"]:
            # Not pinned with local disks: the moves copy them (copy_storage), which takes time.
            entry["disk_mib"] = vm["local_disk_mib"]
        result.append(entry)
    return result


def recently_moved(moves: t.Sequence[t.Mapping[str, t.Any]], since: str) -> t.List[str]:
    """Return the VMs with a done move in the manifest that ended at or after `since` (ISO 8601 UTC)."""
    # The manifest writes times as YYYY-MM-DDTHH:MM:SSZ, which sort as text.
    return sorted({move["vm"] for move in moves if move.get("state") == "done" and (move.get("ended_at") or "") >= since})


def plan_lines(plan: t.Mapping[str, t.Any]) -> t.List[str]:
    """Return the plan as lines for the play's output."""
    lines = [plan.get("summary", "")]
    if plan.get("mode") == "rebalance":
        lines.append("memory spread: %s%% now, %s%% after the plan, threshold %s%%" % (
            plan.get("spread_before_percent"), plan.get("spread_after_percent"), plan.get("spread_threshold_percent")))
    for move in plan.get("moves", []):
        disk = " + %s MiB of disk copied" % move["disk_mib"] if move.get("disk_mib") else ""
        lines.append("wave %s: %s %s -> %s (%s MiB%s, about %s s)" % (
            move["wave"], move["vm"], move["from"], move["to"], move["memory_mib"], disk, move["estimated_s"]))
    for vm in list(plan.get("unplaceable", [])) + list(plan.get("not_moved", [])):
        lines.append("stays: %s on %s (%s)" % (vm["vm"], vm["host"], vm["reason"]))
    return lines


def evacuation_remaining(
    plan: t.Mapping[str, t.Any],
    results: t.Sequence[t.Mapping[str, t.Any]],
    vms: t.Sequence[t.Mapping[str, t.Any]],
    hosts: t.Sequence[str],
    check_mode: bool = False,
) -> t.List[Data]:
    """Return the VMs that stay on the evacuated `hosts`, each `{vm, host, reason}`.

    In check mode, what the plan leaves there; otherwise what runs there now
    (`vms` from a fresh cluster_info), with the reason from the plan or from
    the failed migration.
    """
    planned_to_stay = list(plan.get("unplaceable", [])) + list(plan.get("not_moved", []))
    if check_mode:
        return [{"vm": vm["vm"], "host": vm["host"], "reason": vm["reason"]} for vm in planned_to_stay]
    reasons = {vm["vm"]: vm["reason"] for vm in planned_to_stay}
    for result in results:
        if result.get("status") != "finished":
            reasons[result["vm"]] = "migration to %s %s: %s" % (
                result["to"], "did not end in time" if result.get("status") == "running" else "failed",
                result.get("msg") or "no message")
    return [
        {"vm": vm["name"], "host": vm["host"], "reason": reasons.get(vm["name"], "still running there")}
        for vm in vms
        if vm["host"] in hosts
    ]


def return_waves(returns: t.Sequence[t.Mapping[str, t.Any]], per_host: int) -> t.List[Data]:
    """Put the moves home into waves: all go into one host, so at most `per_host` per wave."""
    try:
        per_wave = int(per_host)
    except (TypeError, ValueError):
        per_wave = 0
    if per_wave < 1:
        raise WorkflowError("max_parallel_per_host must be a whole number of at least 1, got %r." % (per_host,))
    return [dict(move, wave=index // per_wave + 1) for index, move in enumerate(returns)]


def window_table(hosts: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[str]:
    """Return the maintenance window's per-host report as the lines of a table."""
    row = "%-10s %-30s %9s %-11s %8s %9s"
    lines = [row % ("host", "result", "evacuated", "maintenance", "returned", "time (s)")]
    for host in hosts:
        lines.append(row % (host["host"], host["result"], host["evacuated"], host["maintenance"], host["returned"],
                            "%.1f" % float(host["duration_s"])))
        if host.get("detail"):
            lines.append("%-10s %s" % ("", host["detail"]))
    return lines


def recovery_input(
    backup: t.Any,
    failed_hosts: t.Any,
    cluster: t.Mapping[str, t.Any],
    restart_priorities: t.Optional[t.Mapping[str, int]] = None,
) -> Data:
    """The failed hosts and their VMs to restart in migration_plan's terms, and the VMs left out with why."""
    # Imported here: the other filters need no libvirt-side code.
    from ansible_collections.strata.migration.plugins.module_utils import _definitions

    try:
        return _definitions.recovery_input(backup, host_list(failed_hosts, "failed_hosts"), cluster, restart_priorities)
    except _definitions.BackupError as exc:
        raise WorkflowError(str(exc)) from None
