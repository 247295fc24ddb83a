# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import collections.abc as c

import pytest

from ansible_collections.strata.migration.plugins.module_utils._workflow import (
    WorkflowError,
    cluster_hosts,
    evacuation_remaining,
    host_list,
    migrate_uris,
    plan_lines,
    planner_hosts,
    planner_vms,
    recently_moved,
    return_waves,
    window_table,
)


class Undefined:
    """Stands for what Ansible's hostvars returns for a host it does not know: a value that fails when used."""

    def __getattr__(self, name):
        raise AssertionError("an undefined host's variables were used")


class HostVars(c.Mapping):
    """Behaves like Ansible's hostvars: an unknown host is not a KeyError but an undefined value; `in` is reliable."""

    def __init__(self, hosts):
        self._hosts = hosts

    def __getitem__(self, name):
        return self._hosts[name] if name in self._hosts else Undefined()

    def __contains__(self, name):
        return name in self._hosts

    def __iter__(self):
        return iter(self._hosts)

    def __len__(self):
        return len(self._hosts)


HOSTVARS = {
    "hv1": {"strata_libvirt_uri": "qemu+tcp://127.0.0.11/system", "strata_migration_address": "10.0.0.11"},
    "hv2": {"strata_libvirt_uri": "qemu+tcp://127.0.0.12/system", "strata_memory_capacity_mib": "4096",
            "strata_memory_reserve_mib": 512},
    "hv3": {"strata_libvirt_uri": "qemu+tcp://127.0.0.13/system", "strata_memory_capacity_mib": "",
            "strata_memory_reserve_mib": None, "strata_migration_address": ""},
}

MOVE = {"vm": "web1", "uuid": "u-web1", "from": "hv1", "to": "hv2", "wave": 1}
MOVE2 = {"vm": "db1", "uuid": "u-db1", "from": "hv1", "to": "hv3", "wave": 1}


def job(move, jid="j1", progress_file="/tmp/p/web1.json"):
    entry = {"vm": move["vm"], "uuid": move["uuid"], "from": move["from"], "to": move["to"], "jid": jid,
             "label": "%s %s -> %s" % (move["vm"], move["from"], move["to"])}
    if progress_file:
        entry["progress_file"] = progress_file
    return entry


# host_list


@pytest.mark.parametrize("value, expected", [
    (["hv1", "hv2"], ["hv1", "hv2"]),
    ((" hv1 ", "", "hv2"), ["hv1", "hv2"]),
    ("hv1,hv2", ["hv1", "hv2"]),
    (" hv1 , ,hv2, ", ["hv1", "hv2"]),
    ("hv1", ["hv1"]),
    ("", []),
    ([], []),
    (None, []),
])
def test_host_list_accepts_lists_and_comma_separated_strings(value, expected):
    assert host_list(value) == expected


@pytest.mark.parametrize("value", [["hv1", 2], {"hv1": True}, 3, [None]])
def test_host_list_refuses_other_values_naming_the_option(value):
    with pytest.raises(WorkflowError, match=r"^evacuate_hosts must be a list of host names or a comma-separated"):
        host_list(value, "evacuate_hosts")


def test_host_list_names_hosts_by_default():
    with pytest.raises(WorkflowError, match=r"^hosts must be"):
        host_list(42)


# cluster_hosts


@pytest.mark.parametrize("hostvars", [HOSTVARS, HostVars(HOSTVARS)], ids=["dict", "ansible-like"])
def test_cluster_hosts_passes_uri_and_whole_mib_of_capacity_and_reserve(hostvars):
    assert cluster_hosts(["hv1", "hv2", "hv3"], hostvars) == [
        {"name": "hv1", "uri": "qemu+tcp://127.0.0.11/system"},
        {"name": "hv2", "uri": "qemu+tcp://127.0.0.12/system", "memory_capacity_mib": 4096, "reserve_mib": 512},
        # Empty or null variables mean "not set": cluster_info then uses what the host reports.
        {"name": "hv3", "uri": "qemu+tcp://127.0.0.13/system"},
    ]


def test_cluster_hosts_keeps_the_order_asked_for():
    assert [host["name"] for host in cluster_hosts(["hv3", "hv1"], HOSTVARS)] == ["hv3", "hv1"]


@pytest.mark.parametrize("hostvars", [HOSTVARS, HostVars(HOSTVARS)], ids=["dict", "ansible-like"])
def test_cluster_hosts_refuses_a_host_missing_from_the_inventory(hostvars):
    with pytest.raises(WorkflowError, match=r"^Host hv9 is not in the inventory\.$"):
        cluster_hosts(["hv1", "hv9"], hostvars)


@pytest.mark.parametrize("facts", [{}, {"strata_libvirt_uri": ""}, {"strata_libvirt_uri": None}])
def test_cluster_hosts_refuses_a_host_without_a_libvirt_uri(facts):
    with pytest.raises(WorkflowError, match=r"^Host hv4 has no strata_libvirt_uri in the inventory\.$"):
        cluster_hosts(["hv4"], {"hv4": facts})


@pytest.mark.parametrize("value", ["lots", "4096.5", [4096]])
def test_cluster_hosts_refuses_a_capacity_that_is_not_whole_mib_naming_host_and_variable(value):
    hostvars = {"hv4": {"strata_libvirt_uri": "qemu:///system", "strata_memory_capacity_mib": value}}
    with pytest.raises(WorkflowError, match=r"^Host hv4: strata_memory_capacity_mib must be a whole number of MiB"):
        cluster_hosts(["hv4"], hostvars)


def test_cluster_hosts_of_no_hosts_is_empty():
    assert cluster_hosts([], HOSTVARS) == []


# migrate_uris


@pytest.mark.parametrize("hostvars", [HOSTVARS, HostVars(HOSTVARS)], ids=["dict", "ansible-like"])
def test_migrate_uris_only_for_hosts_with_a_migration_address(hostvars):
    # hv2 has no address, hv3 an empty one, hv9 is not in the inventory: libvirt picks the channel for those.
    assert migrate_uris(["hv1", "hv2", "hv3", "hv9"], hostvars) == {"hv1": "tcp://10.0.0.11"}


def test_migrate_uris_only_for_the_hosts_asked_for():
    assert migrate_uris(["hv2"], HOSTVARS) == {}


# planner_hosts

CLUSTER_HOSTS = [
    {"name": "hv1", "uri": "qemu+tcp://127.0.0.11/system", "memory_capacity_mib": 4096, "reserve_mib": 512,
     "cpus": 4, "reachable": True, "vms": ["web1"], "memory_used_mib": 1024},
    {"name": "hv2", "memory_capacity_mib": 2048},
]


def test_planner_hosts_keeps_only_what_migration_plan_accepts_and_marks_excluded():
    assert planner_hosts(CLUSTER_HOSTS, ["hv2", "hv7"]) == [
        {"name": "hv1", "memory_capacity_mib": 4096, "reserve_mib": 512, "cpus": 4, "excluded": False},
        {"name": "hv2", "memory_capacity_mib": 2048, "excluded": True},
    ]


def test_planner_hosts_excludes_nothing_by_default():
    assert [host["excluded"] for host in planner_hosts(CLUSTER_HOSTS)] == [False, False]


def test_planner_hosts_does_not_change_its_input():
    planner_hosts(CLUSTER_HOSTS, ["hv1"])
    assert "excluded" not in CLUSTER_HOSTS[0] and "uri" in CLUSTER_HOSTS[0]


# planner_vms

CLUSTER_VMS = [
    {"name": "web1", "uuid": "u-web1", "host": "hv1", "memory_mib": 512, "vcpus": 1, "pinned": None,
     "anti_affinity_group": "web", "state": "running", "definitions": ["hv1"]},
    {"name": "db1", "uuid": "u-db1", "host": "hv1", "memory_mib": 1024, "vcpus": 2, "pinned": "local disk",
     "anti_affinity_group": ""},
    {"name": "tiny", "host": "hv2", "memory_mib": 128},
]


def test_planner_vms_keeps_planner_keys_and_defaults_pinned_to_false():
    assert planner_vms(CLUSTER_VMS) == [
        {"name": "web1", "uuid": "u-web1", "host": "hv1", "memory_mib": 512, "vcpus": 1, "pinned": False,
         "anti_affinity_group": "web"},
        {"name": "db1", "uuid": "u-db1", "host": "hv1", "memory_mib": 1024, "vcpus": 2, "pinned": "local disk"},
        {"name": "tiny", "host": "hv2", "memory_mib": 128, "pinned": False},
    ]


def test_planner_vms_counts_the_local_disks_of_movable_vms_only():
    vms = planner_vms([
        {"name": "copied", "host": "hv1", "memory_mib": 512, "pinned": False, "local_disks": ["vda"], "local_disk_mib": 2048.0},
        {"name": "stuck", "host": "hv1", "memory_mib": 512, "pinned": "local disk vda", "local_disks": ["vda"],
         "local_disk_mib": 2048.0},
        {"name": "shared", "host": "hv1", "memory_mib": 512, "pinned": False, "local_disks": [], "local_disk_mib": 0.0},
    ])
    assert [vm.get("disk_mib") for vm in vms] == [2048.0, None, None]


def test_planner_vms_marks_only_the_recently_moved():
    vms = planner_vms(CLUSTER_VMS, ["db1", "gone"])
    assert [vm.get("recently_moved", False) for vm in vms] == [False, True, False]


# recently_moved

MANIFEST_MOVES = [
    {"vm": "web1", "state": "done", "ended_at": "2024-05-01T10:00:00Z"},
    {"vm": "web1", "state": "done", "ended_at": "2024-05-01T12:00:00Z"},
    {"vm": "db1", "state": "done", "ended_at": "2024-05-01T09:59:59Z"},
    {"vm": "app1", "state": "failed", "ended_at": "2024-05-01T11:00:00Z"},
    {"vm": "app2", "state": "running", "ended_at": None},
    {"vm": "app3", "state": "done"},
    {"vm": "app4", "state": "done", "ended_at": "2024-05-01T10:00:00Z"},
]


def test_recently_moved_lists_done_moves_ending_at_or_after_since_once_each():
    assert recently_moved(MANIFEST_MOVES, "2024-05-01T10:00:00Z") == ["app4", "web1"]


def test_recently_moved_compares_the_manifest_times_in_time_order():
    # Text order equals time order for this format, across day and month boundaries.
    moves = [{"vm": "a", "state": "done", "ended_at": "2024-09-30T23:59:59Z"},
             {"vm": "b", "state": "done", "ended_at": "2024-10-01T00:00:00Z"}]
    assert recently_moved(moves, "2024-10-01T00:00:00Z") == ["b"]
    assert recently_moved(moves, "2024-09-30T00:00:00Z") == ["a", "b"]


def test_recently_moved_of_an_empty_manifest_is_empty():
    assert recently_moved([], "2024-05-01T10:00:00Z") == []


# plan_lines

EVACUATE_PLAN = {
    "mode": "evacuate",
    "summary": "2 moves in 1 wave",
    "moves": [
        {"wave": 1, "vm": "web1", "from": "hv1", "to": "hv2", "memory_mib": 512, "estimated_s": 4.2},
        {"wave": 2, "vm": "app1", "from": "hv1", "to": "hv3", "memory_mib": 256, "estimated_s": 2.0},
    ],
    "unplaceable": [{"vm": "big1", "host": "hv1", "constraint": "memory", "reason": "no host has 8192 MiB free"}],
    "not_moved": [{"vm": "db1", "host": "hv1", "reason": "pinned: local disk"}],
    "spread_before_percent": 40.0,
}


def test_plan_lines_for_an_evacuation():
    assert plan_lines(EVACUATE_PLAN) == [
        "2 moves in 1 wave",
        "wave 1: web1 hv1 -> hv2 (512 MiB, about 4.2 s)",
        "wave 2: app1 hv1 -> hv3 (256 MiB, about 2.0 s)",
        "stays: big1 on hv1 (no host has 8192 MiB free)",
        "stays: db1 on hv1 (pinned: local disk)",
    ]


def test_plan_lines_for_a_rebalance_show_the_spread():
    plan = {"mode": "rebalance", "summary": "1 move", "spread_before_percent": 42.5, "spread_after_percent": 10.1,
            "spread_threshold_percent": 15, "moves": [EVACUATE_PLAN["moves"][0]], "unplaceable": [],
            "not_moved": [{"vm": "db1", "host": "hv1", "reason": "moved recently"}]}
    assert plan_lines(plan) == [
        "1 move",
        "memory spread: 42.5% now, 10.1% after the plan, threshold 15%",
        "wave 1: web1 hv1 -> hv2 (512 MiB, about 4.2 s)",
        "stays: db1 on hv1 (moved recently)",
    ]


def test_plan_lines_name_the_disk_a_move_copies():
    move = dict(EVACUATE_PLAN["moves"][0], disk_mib=64)
    assert plan_lines({"summary": "1 move", "moves": [move]})[1] == (
        "wave 1: web1 hv1 -> hv2 (512 MiB + 64 MiB of disk copied, about 4.2 s)")


def test_plan_lines_of_an_empty_plan_is_its_summary_line():
    assert plan_lines({}) == [""]


# evacuation_remaining


def test_evacuation_remaining_in_check_mode_is_what_the_plan_leaves():
    assert evacuation_remaining(EVACUATE_PLAN, [], [], ["hv1"], check_mode=True) == [
        {"vm": "big1", "host": "hv1", "reason": "no host has 8192 MiB free"},
        {"vm": "db1", "host": "hv1", "reason": "pinned: local disk"},
    ]


def test_evacuation_remaining_for_real_is_what_still_runs_on_the_hosts_with_the_reason():
    results = [
        {"vm": "web1", "to": "hv2", "status": "finished", "msg": "done"},
        {"vm": "app1", "to": "hv3", "status": "failed", "msg": "destination refused"},
        {"vm": "app2", "to": "hv3", "status": "running", "msg": ""},
        {"vm": "app3", "to": "hv2", "status": "unknown", "msg": ""},
    ]
    vms = [
        {"name": "web1", "host": "hv2"},
        {"name": "big1", "host": "hv1"},
        {"name": "db1", "host": "hv1"},
        {"name": "app1", "host": "hv1"},
        {"name": "app2", "host": "hv4"},
        {"name": "app3", "host": "hv4"},
        {"name": "new1", "host": "hv1"},
        {"name": "other", "host": "hv3"},
    ]
    assert evacuation_remaining(EVACUATE_PLAN, results, vms, ["hv1", "hv4"]) == [
        {"vm": "big1", "host": "hv1", "reason": "no host has 8192 MiB free"},
        {"vm": "db1", "host": "hv1", "reason": "pinned: local disk"},
        {"vm": "app1", "host": "hv1", "reason": "migration to hv3 failed: destination refused"},
        {"vm": "app2", "host": "hv4", "reason": "migration to hv3 did not end in time: no message"},
        {"vm": "app3", "host": "hv4", "reason": "migration to hv2 failed: no message"},
        # Not in the plan and no migration of its own: it arrived (or was started) during the run.
        {"vm": "new1", "host": "hv1", "reason": "still running there"},
    ]


def test_evacuation_remaining_a_failed_move_explains_more_than_the_plan():
    plan = {"not_moved": [{"vm": "db1", "host": "hv1", "reason": "pinned"}]}
    results = [{"vm": "db1", "to": "hv2", "status": "failed", "msg": "boom"}]
    assert evacuation_remaining(plan, results, [{"name": "db1", "host": "hv1"}], ["hv1"]) == [
        {"vm": "db1", "host": "hv1", "reason": "migration to hv2 failed: boom"}]


def test_evacuation_remaining_is_empty_when_the_hosts_are_empty():
    vms = [{"name": "web1", "host": "hv2"}]
    assert evacuation_remaining(EVACUATE_PLAN, [], vms, ["hv1"]) == []


# return_waves

RETURNS = [{"vm": "web1", "from": "hv2", "to": "hv1"}, {"vm": "db1", "from": "hv3", "to": "hv1"},
           {"vm": "app1", "from": "hv2", "to": "hv1"}]


def test_return_waves_one_per_wave():
    assert [move["wave"] for move in return_waves(RETURNS, 1)] == [1, 2, 3]


def test_return_waves_two_per_wave_keeps_the_moves():
    assert return_waves(RETURNS, "2") == [dict(RETURNS[0], wave=1), dict(RETURNS[1], wave=1), dict(RETURNS[2], wave=2)]


def test_return_waves_does_not_change_its_input():
    return_waves(RETURNS, 1)
    assert all("wave" not in move for move in RETURNS)


def test_return_waves_of_nothing_is_empty():
    assert return_waves([], 2) == []


@pytest.mark.parametrize("per_host", [0, -1, "0", "two", None])
def test_return_waves_refuses_fewer_than_one_per_wave(per_host):
    with pytest.raises(WorkflowError, match=r"^max_parallel_per_host must be a whole number of at least 1, got "):
        return_waves(RETURNS, per_host)


# window_table


def test_window_table_a_row_per_host_aligned_with_the_header():
    lines = window_table([
        {"host": "hv1", "result": "maintained", "evacuated": 3, "maintenance": "ok", "returned": 3, "duration_s": 61.26},
        {"host": "hv2", "result": "skipped", "evacuated": 0, "maintenance": "not run", "returned": 0,
         "duration_s": "0", "detail": ""},
    ])
    assert len(lines) == 3
    header, first, second = lines
    assert header.split() == ["host", "result", "evacuated", "maintenance", "returned", "time", "(s)"]
    assert first.split() == ["hv1", "maintained", "3", "ok", "3", "61.3"]
    assert second.split() == ["hv2", "skipped", "0", "not", "run", "0", "0.0"]
    # Columns line up: each value ends where its heading ends (numbers right-aligned).
    assert first.index("maintained") == header.index("result")
    assert first.rindex("61.3") + len("61.3") == len(header)
    assert len({len(line) for line in lines}) == 1


def test_window_table_puts_the_detail_on_its_own_line_under_the_host():
    lines = window_table([
        {"host": "hv1", "result": "evacuation incomplete", "evacuated": 1, "maintenance": "not run", "returned": 1,
         "duration_s": 12, "detail": "1 VM(s) could not leave, so the maintenance did not run"},
        {"host": "hv2", "result": "maintained", "evacuated": 0, "maintenance": "ok", "returned": 0, "duration_s": 1},
    ])
    assert len(lines) == 4
    assert lines[1].startswith("hv1 ")
    assert lines[2].strip() == "1 VM(s) could not leave, so the maintenance did not run"
    assert lines[2].index("1 VM(s)") == lines[0].index("result")
    assert lines[3].startswith("hv2 ")


def test_window_table_of_no_hosts_is_the_header():
    assert len(window_table([])) == 1
