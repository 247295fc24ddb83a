# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import json
import os
import stat

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.strata.migration.plugins.modules import migration_manifest

PLAN = [
    {"vm": "web", "uuid": "u-web", "from": "hv1", "to": "hv2", "memory_mib": 256, "estimated_s": 1.2, "wave": 1},
    {"vm": "db", "uuid": None, "from": "hv1", "to": "hv3", "memory_mib": 512, "estimated_s": 2.4, "wave": 2},
]

MIGRATED = {
    "changed": True, "domain": "web", "already_migrated": False,
    "strategy": {"name": "precopy", "reason": "converges"},
    "stats": {"total_ms": 900, "downtime_ms": 20, "transferred_mib": 80.5, "memory_total_mib": 256.0, "iterations": 2},
    "compaction": None, "timeline": [],
}


def run(capsys, check_mode=False, diff=False, **args):
    """Run the module's main() with `args`; return its result and whether it failed."""
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    with patch_module_args(args):
        with pytest.raises(SystemExit) as info:
            migration_manifest.main()
    result = json.loads(capsys.readouterr().out)
    assert (info.value.code != 0) == bool(result.get("failed"))
    return result


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "manifest.json")


def read(path):
    with open(path, "r", encoding="utf-8") as stream:
        return json.load(stream)


def test_plan_creates_the_manifest(capsys, path):
    result = run(capsys, path=path, workflow="evacuate", plan=PLAN)
    assert result["changed"] is True
    assert result["pending"] == [
        {"vm": "web", "uuid": "u-web", "from": "hv1", "to": "hv2"},
        {"vm": "db", "uuid": None, "from": "hv1", "to": "hv3"},
    ]
    assert result["running"] == [] and result["returns_home"] == []
    assert result["counts"] == {"planned": 2, "running": 0, "done": 0, "failed": 0, "skipped": 0}
    assert result["manifest"] == read(path)
    assert result["manifest"]["workflow"] == "evacuate"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "diff" not in result


def test_a_rerun_reports_no_change_and_leaves_the_file(capsys, path):
    run(capsys, path=path, workflow="evacuate", plan=PLAN)
    mtime = os.stat(path).st_mtime_ns
    result = run(capsys, path=path, workflow="evacuate", plan=PLAN)
    assert result["changed"] is False
    assert os.stat(path).st_mtime_ns == mtime
    assert result["manifest"] == read(path)


def test_a_wave_from_start_to_finish(capsys, path):
    run(capsys, path=path, workflow="evacuate", plan=PLAN)
    result = run(capsys, path=path, workflow="evacuate", started=PLAN[:1])
    assert result["running"] == [{"vm": "web", "uuid": "u-web", "from": "hv1", "to": "hv2", "job_id": None}]
    result = run(capsys, path=path, workflow="evacuate", started=[{"vm": "web", "uuid": "u-web", "job_id": "j9.1"}])
    assert result["changed"] is True
    assert result["running"][0]["job_id"] == "j9.1"
    result = run(capsys, path=path, workflow="evacuate",
                 finished=[{"vm": "web", "uuid": "u-web", "result": MIGRATED},
                           {"vm": "db", "result": {"failed": True, "msg": "no route to hv3"}}],
                 skipped=[])
    web, db = result["manifest"]["moves"]
    assert (web["state"], web["result"], web["strategy"], web["job_id"], web["figures"]) == (
        "done", "migrated", "precopy", "j9.1",
        {"total_ms": 900, "downtime_ms": 20, "transferred_mib": 80.5, "memory_mib": 256.0, "iterations": 2})
    assert (db["state"], db["result"]) == ("failed", "no route to hv3")
    assert result["returns_home"] == [{"vm": "web", "uuid": "u-web", "from": "hv2", "to": "hv1"}]
    assert run(capsys, path=path, workflow="evacuate", home_hosts=["hv3"])["returns_home"] == []


def test_where_settles_an_interrupted_move(capsys, path):
    run(capsys, path=path, workflow="rebalance", plan=PLAN)
    run(capsys, path=path, workflow="rebalance", started=[{"vm": "web"}])
    result = run(capsys, path=path, workflow="rebalance", where={"u-web": "hv2", "db": "hv1"})
    assert result["changed"] is True
    assert result["manifest"]["moves"][0]["state"] == "done"
    assert result["counts"]["done"] == 1 and result["counts"]["planned"] == 1


def test_skipped(capsys, path):
    run(capsys, path=path, workflow="evacuate", plan=PLAN)
    result = run(capsys, path=path, skipped=[{"vm": "db", "reason": "does not fit the window"}])
    assert result["manifest"]["moves"][1]["result"] == "does not fit the window"
    assert result["pending"] == [{"vm": "web", "uuid": "u-web", "from": "hv1", "to": "hv2"}]


def test_check_mode_returns_everything_and_writes_nothing(capsys, path):
    result = run(capsys, check_mode=True, path=path, workflow="evacuate", plan=PLAN)
    assert result["changed"] is True
    assert len(result["pending"]) == 2
    assert not os.path.exists(path)


def test_check_mode_on_an_existing_manifest(capsys, path):
    run(capsys, path=path, workflow="evacuate", plan=PLAN)
    before = read(path)
    result = run(capsys, check_mode=True, path=path, started=PLAN)
    assert result["changed"] is True and result["counts"]["running"] == 2
    assert read(path) == before


def test_diff_shows_the_moves_before_and_after(capsys, path):
    result = run(capsys, diff=True, path=path, workflow="evacuate", plan=PLAN[:1])
    assert result["diff"]["before"] == {}
    assert result["diff"]["after"] == {"workflow": "evacuate", "moves": result["manifest"]["moves"]}
    result = run(capsys, diff=True, path=path, started=[{"vm": "web"}])
    assert result["diff"]["before"]["moves"][0]["state"] == "planned"
    assert result["diff"]["after"]["moves"][0]["state"] == "running"
    assert "diff" not in run(capsys, diff=True, path=path, started=[{"vm": "web"}])


def test_a_missing_manifest_needs_a_workflow(capsys, path):
    result = run(capsys, path=path)
    assert result["failed"] is True
    assert result["option"] == "workflow" and result["path"] == path
    assert "set workflow to start it" in result["msg"]
    assert not os.path.exists(path)


def test_another_workflow_is_refused(capsys, path):
    run(capsys, path=path, workflow="evacuate", plan=PLAN)
    result = run(capsys, path=path, workflow="maintenance_window")
    assert result["failed"] is True
    assert result["msg"].startswith("The manifest %s belongs to workflow evacuate, not maintenance_window." % path)


def test_a_missing_directory_fails_clearly(capsys, tmp_path):
    path = str(tmp_path / "absent" / "m.json")
    result = run(capsys, path=path, workflow="evacuate")
    assert result["failed"] is True
    assert "its directory %s does not exist" % (tmp_path / "absent") in result["msg"]


def test_update_errors_name_the_option_and_write_nothing(capsys, path):
    run(capsys, path=path, workflow="evacuate", plan=PLAN)
    before = read(path)
    result = run(capsys, path=path, started=[{"vm": "web"}, {"vm": "mail"}])
    assert result["failed"] is True
    assert result["msg"] == "started[1]: The manifest has no move of VM 'mail' to mark running."
    assert (result["option"], result["vm"]) == ("started", "mail")
    assert read(path) == before


def test_a_corrupt_manifest_is_reported_and_kept(capsys, path):
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("{\"version\": 1, ")
    result = run(capsys, path=path, workflow="evacuate", plan=PLAN)
    assert result["failed"] is True
    assert "is not valid JSON" in result["msg"]
    with open(path, "r", encoding="utf-8") as stream:
        assert stream.read() == "{\"version\": 1, "


@pytest.mark.parametrize("args, expected", [
    ({"workflow": "drain"}, "value of workflow must be one of"),
    ({"workflow": "evacuate", "finished": [{"vm": "web"}]}, "missing required arguments: result"),
    ({"workflow": "evacuate", "skipped": [{"vm": "web", "reason": "x", "note": 1}]}, "note"),
])
def test_the_argument_spec_is_checked(capsys, path, args, expected):
    result = run(capsys, path=path, **args)
    assert result["failed"] is True
    assert expected in result["msg"]
    assert not os.path.exists(path)
