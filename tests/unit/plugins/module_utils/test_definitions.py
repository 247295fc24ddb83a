# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The definitions backup: readings replace a host's entry, a failed host's VMs to restart, and the restart itself."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.strata.migration.plugins.module_utils._definitions import (
    BackupError,
    Definition,
    check_backup,
    definition_of,
    empty_backup,
    load_backup,
    restart_candidates,
    restart_here,
    save_backup,
    with_reading,
)

from ansible_collections.strata.migration.tests.unit.plugins.module_utils.fakes import FakeLibvirtError

T0, T1, T2 = "2026-12-07T10:00:00Z", "2026-12-07T10:03:00Z", "2026-12-07T10:05:00Z"


def domain_xml(name, memory_kib=262144, vcpus=1, metadata=""):
    return ("<domain type='kvm'><name>%s</name><uuid>uuid-%s</uuid><memory unit='KiB'>%d</memory>"
            "<currentMemory unit='KiB'>%d</currentMemory><vcpu>%d</vcpu><metadata>%s</metadata></domain>"
            % (name, name, memory_kib, memory_kib, vcpus, metadata))


def definition(name, active=True, autostart=False, **xml):
    return Definition(name=name, uuid="uuid-" + name, xml=domain_xml(name, **xml), autostart=autostart, active=active)


def backup_of(*readings):
    backup = empty_backup()
    for host, now, definitions in readings:
        backup, _changed = with_reading(backup, host, definitions, now)
    return backup


def test_a_reading_replaces_its_hosts_entry_and_keeps_the_others():
    backup = backup_of(("hv1", T0, [definition("a"), definition("b")]), ("hv2", T0, [definition("c")]),
                       ("hv1", T2, [definition("a")]))
    assert sorted(backup["hosts"]["hv1"]["domains"]) == ["a"]
    assert backup["hosts"]["hv1"]["changed_at"] == T2
    assert sorted(backup["hosts"]["hv2"]["domains"]) == ["c"]
    assert check_backup(backup, "backup.json") is backup


def test_a_reading_that_finds_nothing_new_changes_nothing_not_even_the_time():
    backup = backup_of(("hv1", T0, [definition("a")]))
    again, changed = with_reading(backup, "hv1", [definition("a")], T2)
    assert not changed and again == backup
    _moved, changed = with_reading(backup, "hv1", [definition("a", active=False)], T2)
    assert changed


def test_a_failed_hosts_running_vms_are_candidates_in_the_planners_terms():
    metadata = ("<strata:migration xmlns:strata='https://strata-migration.github.io/xmlns/migration/1'>"
                "<strata:restart priority='7'/><strata:anti_affinity group='web'/></strata:migration>")
    backup = backup_of(("hv1", T0, [definition("web", memory_kib=524288, vcpus=2, metadata=metadata),
                                    definition("spare", active=False)]))
    found = restart_candidates(backup, ["hv1"], definitions={}, where={})
    assert found == {"vms": [{"name": "web", "uuid": "uuid-web", "host": "hv1", "memory_mib": 512, "vcpus": 2,
                              "anti_affinity_group": "web", "pinned": False, "restart_priority": 7}],
                     "left_out": []}


def test_a_vm_a_survivor_holds_is_left_out_so_a_rerun_restarts_nothing():
    backup = backup_of(("hv1", T0, [definition("restarted"), definition("stopped_copy"), definition("todo")]))
    found = restart_candidates(backup, ["hv1"], definitions={"restarted": ["hv3"], "stopped_copy": ["hv2"]},
                               where={"uuid-restarted": "hv3", "restarted": "hv3"})
    assert [vm["name"] for vm in found["vms"]] == ["todo"]
    assert found["left_out"] == [{"vm": "restarted", "host": "hv1", "reason": "runs on hv3"},
                                 {"vm": "stopped_copy", "host": "hv1", "reason": "defined on hv2"}]


def test_a_vm_in_a_later_reading_of_an_unreachable_host_is_never_restarted_from_the_older_one():
    # It migrated to hv2 after hv1's last reading; hv1 died, and hv2 cannot be reached now either.
    backup = backup_of(("hv1", T0, [definition("moved"), definition("stayed")]), ("hv2", T1, [definition("moved")]))
    found = restart_candidates(backup, ["hv1"], definitions={}, where={})
    assert [vm["name"] for vm in found["vms"]] == ["stayed"]
    assert found["left_out"] == [{"vm": "moved", "host": "hv1", "reason": "in a later reading of hv2, which is not "
                                  "reachable now"}]
    # An earlier reading elsewhere (the VM came from hv2 to hv1) does not hide it.
    backup = backup_of(("hv2", T0, [definition("came")]), ("hv1", T1, [definition("came")]))
    assert [vm["name"] for vm in restart_candidates(backup, ["hv1"], {}, {})["vms"]] == ["came"]


def test_a_host_never_backed_up_cannot_be_recovered_and_says_why():
    with pytest.raises(BackupError, match="no reading of host hv9.*read it while all hosts run"):
        restart_candidates(empty_backup(), ["hv9"], {}, {})
    with pytest.raises(BackupError, match="no VM ghost on host hv1"):
        definition_of(backup_of(("hv1", T0, [definition("a")])), "hv1", "ghost")


def test_the_backup_file_is_private_atomic_and_checked_on_load(tmp_path):
    path = str(tmp_path / "definitions.json")
    assert load_backup(path) == empty_backup()
    backup = backup_of(("hv1", T0, [definition("a")]))
    save_backup(path, backup)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_backup(path) == backup
    assert os.listdir(str(tmp_path)) == ["definitions.json"]
    (tmp_path / "definitions.json").write_text("{not json")
    with pytest.raises(BackupError, match="not valid JSON.*move it aside"):
        load_backup(path)
    (tmp_path / "definitions.json").write_text(json.dumps({"version": 1, "hosts": {"hv1": {"domains": {}}}}))
    with pytest.raises(BackupError, match="host hv1 needs changed_at and domains"):
        load_backup(path)
    with pytest.raises(BackupError, match="cannot write the definitions backup .*nowhere"):
        save_backup(str(tmp_path / "nowhere" / "definitions.json"), backup)


class FakeDomain:
    def __init__(self, name, uuid, active=False, start_error=None):
        self._name, self._uuid, self.active, self.start_error = name, uuid, active, start_error
        self.autostart_set = None
        self.undefined = False

    def UUIDString(self):
        return self._uuid

    def isActive(self):
        return self.active

    def setAutostart(self, flag):
        self.autostart_set = flag

    def create(self):
        if self.start_error:
            raise self.start_error
        self.active = True

    def state(self):
        return [1 if self.active else 5, 0]

    def undefine(self):
        self.undefined = True


class FakeConn:
    def __init__(self, domains=(), start_error=None):
        self.domains = {dom.UUIDString(): dom for dom in domains}
        self.start_error = start_error
        self.defined = []

    def _find(self, match):
        for dom in self.domains.values():
            if match(dom):
                return dom
        raise FakeLibvirtError("Domain not found", 42)

    def lookupByUUIDString(self, uuid):
        return self._find(lambda dom: dom.UUIDString() == uuid)

    def lookupByName(self, name):
        return self._find(lambda dom: dom._name == name)

    def defineXML(self, xml):
        dom = FakeDomain(xml.split("<name>")[1].split("<")[0], xml.split("<uuid>")[1].split("<")[0],
                         start_error=self.start_error)
        self.domains[dom.UUIDString()] = dom
        self.defined.append(dom)
        return dom


def test_a_restart_defines_with_the_recorded_autostart_and_starts():
    conn = FakeConn()
    result = restart_here(conn, definition("web", autostart=True), "hv3", check_mode=False)
    assert result == {"changed": True, "msg": "restarted on hv3"}
    assert conn.defined[0].active and conn.defined[0].autostart_set == 1


def test_a_restart_where_the_vm_runs_changes_nothing_and_check_mode_defines_nothing():
    running = FakeConn([FakeDomain("web", "uuid-web", active=True)])
    assert restart_here(running, definition("web"), "hv3", check_mode=False) == {
        "changed": False, "msg": "web already runs on hv3"}
    empty = FakeConn()
    assert restart_here(empty, definition("web"), "hv3", check_mode=True) == {
        "changed": True, "msg": "would define and start web on hv3"}
    assert empty.defined == []


def test_a_copy_that_cannot_start_because_its_lease_is_held_is_undefined_again():
    conn = FakeConn(start_error=FakeLibvirtError(
        "resource busy: Lockspace resource '/var/lib/strata-lab/shared/web.qcow2' is locked", 87))
    with pytest.raises(BackupError, match="disk is locked.*definition was removed again. Fence that host"):
        restart_here(conn, definition("web"), "hv3", check_mode=False)
    assert conn.defined[0].undefined and not conn.defined[0].active
    # QEMU's own image lock, the guard where the lease comes later (a domain starts paused, leases are taken
    # when its CPUs start).
    conn = FakeConn(start_error=FakeLibvirtError(
        'internal error: process exited while connecting to monitor: Failed to get "write" lock', 1))
    with pytest.raises(BackupError, match="disk is locked"):
        restart_here(conn, definition("web"), "hv3", check_mode=False)


def test_a_stopped_copy_already_defined_is_started_and_kept_defined_when_it_fails():
    stopped = FakeDomain("web", "uuid-web", start_error=FakeLibvirtError("Cannot access storage file", 38))
    with pytest.raises(BackupError, match="Cannot access storage file. Nothing was started$"):
        restart_here(FakeConn([stopped]), definition("web"), "hv3", check_mode=False)
    assert not stopped.undefined


def test_another_vm_of_the_same_name_is_never_replaced():
    conn = FakeConn([FakeDomain("web", "uuid-other")])
    with pytest.raises(BackupError, match="already has another VM named web .UUID uuid-other"):
        restart_here(conn, definition("web"), "hv3", check_mode=False)
    assert conn.defined == []


def test_recovery_input_gives_the_planner_the_failed_hosts_and_the_priorities_the_operator_set():
    from ansible_collections.strata.migration.plugins.module_utils._definitions import recovery_input

    backup = backup_of(("hv2", T0, [definition("web", memory_kib=524288, vcpus=2), definition("db")]))
    found = recovery_input(backup, ["hv2"], {"definitions": {}, "where": {}}, {"db": 9})
    assert found["hosts"] == [{"name": "hv2", "memory_capacity_mib": 768, "cpus": 3, "excluded": True}]
    assert {vm["name"]: vm["restart_priority"] for vm in found["vms"]} == {"db": 9, "web": 0}
    with pytest.raises(BackupError, match="not a definitions backup"):
        recovery_input({"hosts": {}}, ["hv2"], {"definitions": {}, "where": {}})
