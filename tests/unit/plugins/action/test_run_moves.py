# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.strata.migration.tests.unit.plugins.action.fakes import FakeDisplay
from ansible_collections.strata.migration.plugins.action import run_moves
from ansible_collections.strata.migration.plugins.action.run_moves import ActionModule
from ansible_collections.strata.migration.plugins.module_utils._manifest import new_manifest, read_manifest, save_manifest
from ansible_collections.strata.migration.plugins.module_utils._manifest import mark_running, record_planned
from ansible_collections.strata.migration.plugins.module_utils._start_signal import read_start_signal

HOSTS = [{"name": name, "uri": "qemu+tcp://%s/system" % name} for name in ("hv1", "hv2", "hv3")]


class FakeSpeeds:
    """Records bandwidth changes instead of calling libvirt."""

    made = []

    def __init__(self, connect_timeout_s):
        self.calls = []
        self.errors = SimpleNamespace(empty=lambda: True)
        FakeSpeeds.made.append(self)

    def set(self, uri, vm, bandwidth_mibps):
        self.calls.append((vm, bandwidth_mibps))

    def close(self):
        pass


class Lab:
    """Background jobs as live_migrate runs them under run_moves, their files written as async_wrapper writes them.

    A job waits for its start file to say start (a cancel ends it, failed, having changed nothing), copies
    for its duration in phase migrating, switches over for `switch_s` in phase switching, then tidies up for
    `tail_s` in phase finishing.
    """

    def __init__(self, tmp_path, durations, failing=(), job_file_after_s=0, tail_s=0, failing_early=(), switch_s=0):
        self.async_dir = str(tmp_path / "async")
        os.makedirs(self.async_dir)
        self.durations = durations
        self.failing = set(failing)
        self.failing_early = set(failing_early)  # fail while they prepare, before any start
        self.job_file_after_s = job_file_after_s
        self.tail_s = tail_s
        self.switch_s = switch_s  # libvirt's switch-over, after the copy and before finishing
        self.late_files = {}  # path -> when async_wrapper's job writes it
        self.now = 1000.0
        self.jobs = {}  # jid -> the job's state
        self.launched = []  # (time, vm, module_args)
        self.started = []  # (time, vm, bandwidth the start file gave)

    def clock(self):
        return self.now

    def _write(self, path, record):
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(record, handle)

    def sleep(self, seconds):
        self.now += seconds
        for path, when in list(self.late_files.items()):
            if self.now >= when:
                self._write(path, {"started": 1, "finished": 0})
                del self.late_files[path]
        for jid, job in list(self.jobs.items()):
            path = os.path.join(self.async_dir, jid)
            if path in self.late_files:
                continue
            vm = job["vm"]
            if job["started_at"] is None:
                signal = read_start_signal(job["start_file"])
                if vm in self.failing_early:
                    self._write(path, {"failed": True, "msg": "cannot connect to libvirt for %s" % vm, "domain": vm})
                    del self.jobs[jid]
                elif signal is None or signal.state == "cancel":
                    self._write(path, {"failed": True, "msg": "%s was not started" % vm, "domain": vm})
                    del self.jobs[jid]
                elif signal.state == "start":
                    job["started_at"] = self.now
                    self.started.append((self.now, vm, signal.bandwidth_mibps))
                else:
                    self._write(job["progress_file"], {"domain": vm, "phase": "ready"})
                continue
            elapsed = self.now - job["started_at"]
            if elapsed >= self.durations[vm] + self.switch_s + self.tail_s:
                result = {"changed": True, "domain": vm, "stats": {"total_ms": 1500}, "strategy": {"name": "precopy"}}
                if vm in self.failing:
                    result = {"failed": True, "msg": "migration of %s failed" % vm, "domain": vm}
                self._write(path, result)
                del self.jobs[jid]
            else:
                phase = "migrating" if elapsed < self.durations[vm] else "finishing"
                if self.durations[vm] <= elapsed < self.durations[vm] + self.switch_s:
                    phase = "switching"
                self._write(job["progress_file"], {"domain": vm, "phase": phase, "percent": 50})

    def execute_module(self, module_name=None, module_args=None, task_vars=None, wrap_async=False, **_kwargs):
        assert module_name == "strata.migration.live_migrate" and wrap_async
        vm = module_args["name"]
        jid = "j%d" % (len(self.launched) + 1)
        self.launched.append((self.now, vm, dict(module_args)))
        self.jobs[jid] = {"vm": vm, "started_at": None, "progress_file": module_args["progress_file"],
                          "start_file": module_args["start_file"]}
        path = os.path.join(self.async_dir, jid)
        if self.job_file_after_s:
            self.late_files[path] = self.now + self.job_file_after_s
        else:
            self._write(path, {"started": 1, "finished": 0, "ansible_job_id": jid})
        return {"started": 1, "finished": 0, "ansible_job_id": jid, "changed": True}

    def started_at(self):
        return {vm: round(when - 1000.0, 2) for when, vm, _bandwidth in self.started}


@pytest.fixture
def shown(monkeypatch):
    fake = FakeDisplay()
    monkeypatch.setattr(run_moves, "display", fake)
    return fake


def make_action(args, lab, check_mode=False):
    task = SimpleNamespace(args=args, async_val=0, check_mode=check_mode, action="strata.migration.run_moves",
                           environment=[])
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir=None), transport="local")
    action = ActionModule(task, connection, play_context=None, loader=None, templar=None)
    action._execute_module = lab.execute_module
    action.get_shell_option = lambda option, default=None: lab.async_dir if option == "async_dir" else default
    action._remote_expand_user = lambda path: path
    action._speed_setter = FakeSpeeds
    action._clock = lab.clock
    action._sleep = lab.sleep
    return action


def move(vm, source, target, wave):
    return {"vm": vm, "uuid": None, "from": source, "to": target, "wave": wave}


def arguments(tmp_path, moves, **extra):
    args = {"moves": moves, "hosts": HOSTS, "manifest_path": str(tmp_path / "manifest.json"), "workflow": "evacuate",
            "max_parallel_per_host": 2, "max_parallel_total": 4}
    args.update(extra)
    return args


def test_moves_stream_through_the_slots_and_are_recorded(tmp_path, shown):
    lab = Lab(tmp_path, {"a": 10, "b": 2, "c": 2, "d": 2})
    moves = [move("a", "hv1", "hv2", 1), move("b", "hv1", "hv3", 1), move("c", "hv1", "hv2", 2),
             move("d", "hv1", "hv3", 2)]
    args = arguments(tmp_path, moves)
    save_manifest(args["manifest_path"], record_planned(new_manifest("evacuate"), moves))
    result = make_action(args, lab).run(task_vars={})

    assert not result.get("failed")
    assert result["changed"] is True
    started_at = lab.started_at()
    assert started_at["a"] < 0.5 and started_at["b"] < 0.5
    # c and d start as slots free up while a, the slow one, still runs: no waiting for a's wave to end.
    assert started_at["c"] < 10 and started_at["d"] < 10
    # Their jobs were launched at the outset and waited, prepared, for their start.
    assert {vm: when - 1000.0 for when, vm, _args in lab.launched} == dict.fromkeys("abcd", 0.0)
    assert [entry["status"] for entry in result["moves"]] == ["finished"] * 4
    assert {entry["vm"]: entry["job_s"] for entry in result["moves"]} == dict.fromkeys("abcd", 1.5)
    manifest = read_manifest(args["manifest_path"])
    assert [(m.vm, m.state, m.job_id is not None) for m in manifest.moves] == [
        ("a", "done", True), ("b", "done", True), ("c", "done", True), ("d", "done", True)]
    assert not os.listdir(lab.async_dir)  # the job files are cleaned up


def test_a_failed_move_is_reported_and_the_others_go_on(tmp_path, shown):
    lab = Lab(tmp_path, {"a": 3, "b": 3}, failing={"a"})
    moves = [move("a", "hv1", "hv2", 1), move("b", "hv1", "hv3", 2)]
    args = arguments(tmp_path, moves, max_parallel_per_host=1)
    save_manifest(args["manifest_path"], record_planned(new_manifest("evacuate"), moves))
    result = make_action(args, lab).run(task_vars={})
    assert not result.get("failed")
    assert [(entry["vm"], entry["status"]) for entry in result["moves"]] == [("a", "failed"), ("b", "finished")]
    assert result["moves"][0]["msg"] == "migration of a failed"
    assert [m.state for m in read_manifest(args["manifest_path"]).moves] == ["failed", "done"]


def test_a_hosts_bandwidth_is_shared_and_given_back(tmp_path, shown):
    lab = Lab(tmp_path, {"a": 2, "b": 6})
    moves = [move("a", "hv1", "hv2", 1), move("b", "hv1", "hv3", 1)]
    args = arguments(tmp_path, moves, migration={"bandwidth_mibps": 60})
    save_manifest(args["manifest_path"], record_planned(new_manifest("evacuate"), moves))
    FakeSpeeds.made.clear()
    make_action(args, lab).run(task_vars={})
    given = {vm: bandwidth for _when, vm, bandwidth in lab.started}
    assert given == {"a": 60, "b": 30}  # b starts beside a, which hv1 already sends
    # Once a is done, b copies alone and gets hv1's whole budget.
    assert FakeSpeeds.made[0].calls[-1] == ("b", 60)


def test_a_job_an_interrupted_run_left_is_waited_for_first(tmp_path, shown):
    lab = Lab(tmp_path, {"a": 4, "b": 1})
    args = arguments(tmp_path, [move("b", "hv1", "hv3", 1)])
    manifest = record_planned(new_manifest("evacuate"), [move("a", "hv1", "hv2", 1), move("b", "hv1", "hv3", 1)])
    save_manifest(args["manifest_path"], mark_running(manifest, "a", job_id="j0"))
    lab.jobs["j0"] = {"vm": "a", "started_at": lab.now, "progress_file": str(tmp_path / "unused.json"),
                      "start_file": None}
    with open(os.path.join(lab.async_dir, "j0"), "w", encoding="utf-8") as handle:
        json.dump({"started": 1, "finished": 0, "ansible_job_id": "j0"}, handle)
    result = make_action(args, lab).run(task_vars={})
    assert [(entry["vm"], entry["status"]) for entry in result["moves"]] == [("a", "finished"), ("b", "finished")]
    assert lab.started_at()["b"] >= 4  # b started once a had ended
    assert "left running by an interrupted run" in " ".join(shown.lines)


def test_check_mode_starts_and_writes_nothing(tmp_path, shown):
    lab = Lab(tmp_path, {"a": 1})
    args = arguments(tmp_path, [move("a", "hv1", "hv2", 1)])
    result = make_action(args, lab, check_mode=True).run(task_vars={})
    assert result["changed"] is True and result["moves"][0]["status"] == "would_run"
    assert lab.launched == [] and not os.path.exists(args["manifest_path"])


@pytest.mark.parametrize("extra, message", [
    ({"migration": {"bandwith_mibps": 10}}, "migration: unknown option bandwith_mibps"),
    ({"migration": {"timeout_s": 10}}, "timeout_s is set for each move by the workflow"),
    ({"migration": {"max_downtime_ms": "soon"}}, "migration: .*max_downtime_ms"),
    ({"migration": {"bandwidth_mibps": -1}}, "bandwidth_mibps must be 0"),
    ({"moves": [move("a", "hv1", "hv9", 1)]}, "names host hv9 .to., which the hosts option does not have"),
    ({"max_parallel_total": 0}, "at least 1"),
    ({"progress_interval_s": 0.1}, "progress_interval_s must be at least 1"),
])
def test_bad_input_is_refused_before_anything_starts(tmp_path, shown, extra, message):
    lab = Lab(tmp_path, {"a": 1})
    args = arguments(tmp_path, [move("a", "hv1", "hv2", 1)])
    args.update(extra)
    with pytest.raises(AnsibleActionFail, match=message):
        make_action(args, lab).run(task_vars={})
    assert lab.launched == [] and not os.path.exists(args["manifest_path"])


def test_a_job_whose_file_comes_late_still_holds_its_slot(tmp_path, shown):
    # async_wrapper can return before its job has written the job file (a loaded controller).
    lab = Lab(tmp_path, {"a": 5, "b": 1}, job_file_after_s=3)
    moves = [move("a", "hv1", "hv2", 1), move("b", "hv1", "hv3", 2)]
    args = arguments(tmp_path, moves, max_parallel_per_host=1)
    save_manifest(args["manifest_path"], record_planned(new_manifest("evacuate"), moves))
    result = make_action(args, lab).run(task_vars={})
    assert [(entry["vm"], entry["status"]) for entry in result["moves"]] == [("a", "finished"), ("b", "finished")]
    assert lab.started_at()["b"] >= 5  # b waited for a: a was starting, not lost


def test_a_killed_playbook_starts_nothing_more(tmp_path, shown, monkeypatch):
    # Ansible's worker runs in a session of its own: a kill of the playbook's process group leaves it.
    lab = Lab(tmp_path, {"a": 4, "b": 1})
    moves = [move("a", "hv1", "hv2", 1), move("b", "hv1", "hv3", 2)]
    args = arguments(tmp_path, moves, max_parallel_per_host=1)
    save_manifest(args["manifest_path"], record_planned(new_manifest("evacuate"), moves))
    action = make_action(args, lab)
    action._parent_pid = lambda: 4242 if lab.now < 1002 else 1  # reparented to init two seconds in
    written = []
    real_write = run_moves.write_start_signal

    def write(path, signal):
        written.append((os.path.basename(path), signal.state))
        return real_write(path, signal)

    monkeypatch.setattr(run_moves, "write_start_signal", write)
    action.run(task_vars={})
    assert [vm for _when, vm, _bandwidth in lab.started] == ["a"]
    # b's job, launched ahead, is told it will not start: it ends at once, having changed nothing.
    assert [state for name, state in written if name == "b.start"] == ["wait", "cancel"]
    # a's job was told to start and is recorded running: its start file stays for it to read, however late.
    assert read_start_signal(lab.launched[0][2]["start_file"]).state == "start"
    a_move = read_manifest(args["manifest_path"]).moves[0]
    assert (a_move.vm, a_move.state, a_move.job_id) == ("a", "running", "j1")  # for a rerun to wait for


def test_a_completed_migration_gives_its_slot_to_the_next_move_while_it_tidies_up(tmp_path, shown):
    lab = Lab(tmp_path, {"a": 4, "b": 2}, tail_s=3)
    moves = [move("a", "hv1", "hv2", 1), move("b", "hv1", "hv3", 1)]
    args = arguments(tmp_path, moves, max_parallel_per_host=1)
    save_manifest(args["manifest_path"], record_planned(new_manifest("evacuate"), moves))
    result = make_action(args, lab).run(task_vars={})
    assert [(entry["vm"], entry["status"]) for entry in result["moves"]] == [("a", "finished"), ("b", "finished")]
    # b starts as a's job enters finishing (4 s), not when a's job ends (7 s).
    assert 4 <= lab.started_at()["b"] < 4.5


def test_a_job_that_fails_while_it_prepares_fails_its_move_only(tmp_path, shown):
    lab = Lab(tmp_path, {"a": 2, "b": 2, "c": 2}, failing_early={"b"})
    moves = [move("a", "hv1", "hv2", 1), move("b", "hv1", "hv3", 1), move("c", "hv1", "hv2", 1)]
    args = arguments(tmp_path, moves, max_parallel_per_host=1)
    save_manifest(args["manifest_path"], record_planned(new_manifest("evacuate"), moves))
    result = make_action(args, lab).run(task_vars={})
    by_vm = {entry["vm"]: entry for entry in result["moves"]}
    assert {vm: entry["status"] for vm, entry in by_vm.items()} == {"a": "finished", "b": "failed", "c": "finished"}
    assert by_vm["b"]["msg"] == "cannot connect to libvirt for b"
    assert [vm for _when, vm, _bandwidth in lab.started] == ["a", "c"]
    manifest = read_manifest(args["manifest_path"])
    assert [(m.vm, m.state) for m in manifest.moves] == [("a", "done"), ("b", "failed"), ("c", "done")]


def test_a_switching_move_gives_up_its_slot_but_holds_back_moves_into_its_source(tmp_path, shown):
    lab = Lab(tmp_path, {"a": 4, "b": 2, "c": 2}, switch_s=2, tail_s=2)
    # c goes into hv1, which a leaves in an earlier wave: the planner counted a's memory as free there.
    moves = [move("a", "hv1", "hv2", 1), move("b", "hv1", "hv3", 1), move("c", "hv3", "hv1", 2)]
    args = arguments(tmp_path, moves, max_parallel_per_host=1, max_parallel_total=1)
    save_manifest(args["manifest_path"], record_planned(new_manifest("evacuate"), moves))
    result = make_action(args, lab).run(task_vars={})
    assert [entry["status"] for entry in result["moves"]] == ["finished"] * 3
    started = lab.started_at()
    assert 4 <= started["b"] < 4.5  # a's copy is over at 4 s: b gets the slot while a switches over
    assert started["c"] >= 6  # but c waits until a has arrived on hv2 (6 s), not just stopped copying
