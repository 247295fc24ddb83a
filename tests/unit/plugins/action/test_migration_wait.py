# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.strata.migration.tests.unit.plugins.action.fakes import FakeDisplay
from ansible_collections.strata.migration.plugins.action import migration_wait
from ansible_collections.strata.migration.plugins.action.migration_wait import ActionModule
from ansible_collections.strata.migration.plugins.module_utils._progress import (
    parse_progress,
    progress_line,
    read_progress,
)

ASYNC_DIR = "/home/tester/.ansible_async"
RUNNING = {"started": 1, "finished": 0, "ansible_job_id": "x", "results_file": "f", "_ansible_parsed": True}
NOT_FOUND = {"failed": True, "msg": "could not find job", "ansible_job_id": "x", "started": True, "finished": True}


def finished(**module_result):
    """What async_status returns for a job whose module ended with module_result."""
    raw = dict(module_result)
    raw.update({"finished": True, "ansible_job_id": "x", "stdout_lines": [], "stderr_lines": [],
                "_ansible_no_log": False, "results_file": "f", "started": True})
    return raw


class FakeAsync:
    """async_status on a fake host: each jid answers its scripted results in turn, the last one repeating."""

    def __init__(self, script):
        self.script = {jid: list(answers) for jid, answers in script.items()}
        self.calls = []
        self.module_names = set()

    def __call__(self, module_name=None, module_args=None, task_vars=None, **_kwargs):
        self.module_names.add(module_name)
        self.calls.append(dict(module_args))
        jid = module_args["jid"]
        if module_args["mode"] == "cleanup":
            return {"ansible_job_id": jid, "erased": module_args["_async_dir"] + "/" + jid}
        answers = self.script[jid]
        return dict(answers.pop(0) if len(answers) > 1 else answers[0])

    def status_polls(self, jid):
        return [args for args in self.calls if args["jid"] == jid and args["mode"] == "status"]

    def cleanups(self):
        return [args["jid"] for args in self.calls if args["mode"] == "cleanup"]


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def shown(monkeypatch):
    fake = FakeDisplay()
    monkeypatch.setattr(migration_wait, "display", fake)
    return fake


def make_action(args, fake_async, clock, check_mode=False):
    task = SimpleNamespace(args=args, async_val=0, check_mode=check_mode, action="strata.migration.migration_wait")
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/tmp/ansible-tmp-fake"))
    action = ActionModule(task, connection, play_context=None, loader=None, templar=None)
    action._execute_module = fake_async
    action.get_shell_option = lambda option, default=None: "~/.ansible_async" if option == "async_dir" else default
    action._remote_expand_user = lambda path: path.replace("~", "/home/tester", 1)
    action._clock = clock.clock
    action._sleep = clock.sleep
    return action


def run(args, script, check_mode=False):
    fake_async = FakeAsync(script)
    clock = FakeClock()
    result = make_action(args, fake_async, clock, check_mode).run(task_vars={})
    return SimpleNamespace(result=result, fake_async=fake_async, clock=clock)


def job(jid, label, progress_file=None):
    entry = {"jid": jid, "label": label}
    if progress_file is not None:
        entry["progress_file"] = str(progress_file)
    return entry


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


FULL_PROGRESS = {"domain": "web1", "phase": "migrating", "percent": 62.4, "remaining_mib": 98.2,
                 "transferred_mib": 300.0, "pass": 3, "elapsed_s": 12.3, "updated": "2024-05-01T12:00:00Z"}


def test_finished_and_failed_jobs_are_reported_in_input_order(shown):
    outcome = run(
        {"jobs": [job("j1", "web1 hv1 -> hv2"), job("j2", "db1 hv1 -> hv3")], "poll_interval_s": 5},
        {
            "j1": [RUNNING, RUNNING, finished(changed=True, domain="web1")],
            "j2": [RUNNING, finished(failed=True, changed=False, msg="aborted: stalled", domain="db1")],
        },
    )
    result = outcome.result
    fake_async = outcome.fake_async
    clock = outcome.clock
    assert not result.get("failed")
    assert result["changed"] is True
    assert [entry["jid"] for entry in result["jobs"]] == ["j1", "j2"]
    web1, db1 = result["jobs"]
    assert web1 == {"jid": "j1", "label": "web1 hv1 -> hv2", "status": "finished",
                    "result": {"changed": True, "domain": "web1"}, "msg": ""}
    assert db1["status"] == "failed"
    assert db1["msg"] == "aborted: stalled"
    assert db1["result"] == {"failed": True, "changed": False, "msg": "aborted: stalled", "domain": "db1"}
    # A finished job is no longer polled.
    assert len(fake_async.status_polls("j1")) == 3
    assert len(fake_async.status_polls("j2")) == 2
    assert clock.sleeps == [5, 5]
    assert "  db1 hv1 -> hv3: failed: aborted: stalled" in shown.lines
    assert "  web1 hv1 -> hv2: done in 10 s" in shown.lines


def test_async_status_gets_the_expanded_async_dir_and_the_jid():
    fake_async = run({"jobs": [job("j1", "web1")]}, {"j1": [finished(changed=False)]}).fake_async
    assert fake_async.module_names == {"ansible.builtin.async_status"}
    assert fake_async.calls[0] == {"jid": "j1", "mode": "status", "_async_dir": ASYNC_DIR}


def test_changed_only_counts_finished_jobs():
    result = run(
        {"jobs": [job("j1", "web1"), job("j2", "db1")]},
        {"j1": [finished(changed=False)], "j2": [finished(changed=True, failed=True, msg="boom")]},
    ).result
    assert result["changed"] is False
    assert not result.get("failed")


def test_unknown_job_is_reported_without_failing_the_task(shown):
    outcome = run(
        {"jobs": [job("j1", "web1"), job("gone", "db1")]},
        {"j1": [RUNNING, finished(changed=True)], "gone": [NOT_FOUND]},
    )
    result = outcome.result
    fake_async = outcome.fake_async
    assert not result.get("failed")
    gone = result["jobs"][1]
    assert gone["status"] == "unknown"
    assert gone["result"] == {}
    assert "gone" in gone["msg"] and ASYNC_DIR in gone["msg"]
    assert len(fake_async.status_polls("gone")) == 1
    assert fake_async.cleanups() == ["j1"]
    assert any(line.startswith("  db1: status unknown: ") for line in shown.lines)


def test_async_status_that_does_not_run_gives_unknown():
    result = run({"jobs": [job("j1", "web1")]}, {"j1": [{"failed": True, "msg": "MODULE FAILURE: no python"}]}).result
    assert result["jobs"][0]["status"] == "unknown"
    assert "MODULE FAILURE: no python" in result["jobs"][0]["msg"]


def test_timeout_fails_naming_the_running_jobs_and_aborts_nothing(shown):
    outcome = run(
        {"jobs": [job("j1", "web1 hv1 -> hv2"), job("j2", "db1 hv1 -> hv3")], "timeout_s": 12, "poll_interval_s": 5},
        {"j1": [RUNNING], "j2": [RUNNING, finished(changed=True)]},
    )
    result = outcome.result
    fake_async = outcome.fake_async
    clock = outcome.clock
    assert result["failed"] is True
    assert result["changed"] is True
    assert [entry["status"] for entry in result["jobs"]] == ["running", "finished"]
    assert result["jobs"][0]["result"] == {}
    assert "web1 hv1 -> hv2 (job j1)" in result["msg"]
    assert "db1" not in result["msg"]
    assert "Nothing was aborted" in result["msg"] and "rerun" in result["msg"]
    # The last sleep is cut to the deadline, and the jobs are polled once more at it.
    assert clock.sleeps == [5, 5, 2]
    assert len(fake_async.status_polls("j1")) == 4
    # Only async_status ran: no job was stopped, and the running job's file stays.
    assert fake_async.module_names == {"ansible.builtin.async_status"}
    assert fake_async.cleanups() == ["j2"]


def test_progress_lines_while_running_and_elapsed_time_when_done(tmp_path, shown):
    progress = write_json(tmp_path / "web1.json", FULL_PROGRESS)
    fake_async = FakeAsync({"j1": [RUNNING, RUNNING, finished(changed=True)]})
    clock = FakeClock()
    action = make_action({"jobs": [job("j1", "web1 hv1 -> hv2", progress)]}, fake_async, clock)
    first_sleep = clock.sleep

    def sleep_then_advance_progress(seconds):
        first_sleep(seconds)
        write_json(progress, dict(FULL_PROGRESS, phase="done", percent=100, remaining_mib=0, elapsed_s=31.6))

    action._sleep = sleep_then_advance_progress
    action.run(task_vars={})
    assert shown.lines == [
        "  web1 hv1 -> hv2: migrating 62%, 98 MiB left, pass 3, 12 s",
        "  web1 hv1 -> hv2: done 100%, 0 MiB left, pass 3, 32 s",
        "  web1 hv1 -> hv2: done in 32 s",
    ]


def test_progress_line_leaves_out_unknown_values():
    progress = parse_progress({"phase": "preparing", "percent": None, "remaining_mib": None, "pass": None,
                               "elapsed_s": 2})
    assert progress_line("web1", progress) == "  web1: preparing, 2 s"
    assert progress_line("web1", parse_progress({"phase": "postcopy", "percent": 90})) == "  web1: postcopy 90%"


@pytest.mark.parametrize("content", [
    "",
    '{"domain": "web1", "phase": "migr',
    "[1, 2]",
    '{"domain": "web1"}',
    '{"phase": 3}',
    '{"phase": "migrating", "percent": "62"}',
    '{"phase": "migrating", "pass": true}',
    "\xff\xfe not text",
])
def test_invalid_progress_file_shows_waiting(tmp_path, shown, content):
    progress = tmp_path / "web1.json"
    progress.write_bytes(content.encode("latin-1"))
    assert read_progress(str(progress)) is None
    result = run({"jobs": [job("j1", "web1", progress)]}, {"j1": [RUNNING, finished(changed=True)]}).result
    assert not result.get("failed")
    assert shown.lines[0] == "  web1: waiting for progress"


def test_missing_progress_file_shows_waiting_and_done_uses_the_wait_time(tmp_path, shown):
    result = run({"jobs": [job("j1", "web1", tmp_path / "absent.json")], "poll_interval_s": 2},
                 {"j1": [RUNNING, finished(changed=True)]}).result
    assert result["jobs"][0]["status"] == "finished"
    assert shown.lines == ["  web1: waiting for progress", "  web1: done in 2 s"]


def test_job_without_progress_file_shows_running(shown):
    run({"jobs": [job("j1", "web1")]}, {"j1": [RUNNING, finished(changed=True)]})
    assert shown.lines[0] == "  web1: running"


def test_cleanup_removes_the_job_files_of_ended_jobs_only():
    fake_async = run(
        {"jobs": [job("j1", "web1"), job("j2", "db1"), job("j3", "app1")]},
        {"j1": [finished(changed=True)], "j2": [finished(failed=True, msg="boom")], "j3": [NOT_FOUND]},
    ).fake_async
    assert fake_async.cleanups() == ["j1", "j2"]
    assert all(args["_async_dir"] == ASYNC_DIR for args in fake_async.calls)


def test_no_cleanup_when_disabled():
    fake_async = run({"jobs": [job("j1", "web1")], "cleanup": False}, {"j1": [finished(changed=True)]}).fake_async
    assert fake_async.cleanups() == []


def test_cleanup_failure_is_a_warning(shown):
    fake_async = FakeAsync({"j1": [finished(changed=True)]})
    answer = fake_async.__call__

    def cleanup_fails(module_name=None, module_args=None, task_vars=None, **kwargs):
        if module_args["mode"] == "cleanup":
            return {"failed": True, "msg": "could not find job"}
        return answer(module_name=module_name, module_args=module_args, task_vars=task_vars)

    result = make_action({"jobs": [job("j1", "web1")]}, cleanup_fails, FakeClock()).run(task_vars={})
    assert not result.get("failed")
    assert len(shown.warnings) == 1 and "web1" in shown.warnings[0]


def test_check_mode_waits_the_same_way():
    result = run({"jobs": [job("j1", "web1")]}, {"j1": [RUNNING, finished(changed=True)]}, check_mode=True).result
    assert result["jobs"][0]["status"] == "finished"


def test_no_jobs_returns_at_once():
    outcome = run({"jobs": []}, {})
    result = outcome.result
    fake_async = outcome.fake_async
    clock = outcome.clock
    assert result["jobs"] == [] and result["changed"] is False
    assert fake_async.calls == [] and clock.sleeps == []


@pytest.mark.parametrize("args, option", [
    ({}, "jobs"),
    ({"jobs": "j1"}, "jobs"),
    ({"jobs": [{"jid": "j1"}]}, "label"),
    ({"jobs": [{"label": "web1"}]}, "jid"),
    ({"jobs": [{"jid": "j1", "label": "web1", "progress": "/tmp/x"}]}, "progress"),
    ({"jobs": [], "timeout_s": "soon"}, "timeout_s"),
    ({"jobs": [], "timeout_s": 0}, "timeout_s"),
    ({"jobs": [], "timeout_s": -5}, "timeout_s"),
    ({"jobs": [], "poll_interval_s": 0.1}, "poll_interval_s"),
    ({"jobs": [], "cleanup": "perhaps"}, "cleanup"),
    ({"jobs": [], "wait": 3}, "wait"),
    ({"jobs": [job("j1", "web1"), job("j1", "db1")]}, "j1"),
])
def test_option_errors_name_the_option(args, option):
    with pytest.raises(AnsibleActionFail) as failure:
        run(args, {"j1": [RUNNING]})
    assert option in str(failure.value)
