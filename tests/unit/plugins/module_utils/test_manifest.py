# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from ansible_collections.strata.migration.plugins.module_utils import _manifest
from ansible_collections.strata.migration.plugins.module_utils._libvirt import StrataError
from ansible_collections.strata.migration.plugins.module_utils._manifest import (
    DONE,
    FAILED,
    FINISHED_BY_INTERRUPTED_RUN,
    PLANNED,
    RUNNING,
    SKIPPED,
    Manifest,
    ManifestError,
    Move,
    load_manifest,
    manifest_from_dict,
    manifest_to_dict,
    mark_done,
    mark_failed,
    mark_running,
    mark_skipped,
    new_manifest,
    pending,
    reconcile,
    record_planned,
    returns_home,
    save_manifest,
    utc_now,
)


class TickClock:
    """Returns a new ISO 8601 UTC timestamp at each call."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return "2024-05-01T12:00:%02dZ" % self.calls


@pytest.fixture
def clock():
    return TickClock()


def plan(*moves):
    return [dict(zip(("vm", "from", "to", "uuid"), move)) for move in moves]


def states(manifest):
    return [(move.vm, move.from_host, move.to_host, move.state) for move in manifest.moves]


def started(clock, *moves, workflow="evacuate"):
    return record_planned(new_manifest(workflow, clock=clock, run_id="run-1"), plan(*moves), clock=clock)


# --- data and clock --------------------------------------------------------------------------

def test_utc_now_is_iso_8601_utc():
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", utc_now())


def test_new_manifest_is_empty_and_stamped(clock):
    manifest = new_manifest("rebalance", clock=clock, run_id="r")
    assert manifest == Manifest(run_id="r", created_at="2024-05-01T12:00:01Z",
                                updated_at="2024-05-01T12:00:01Z", workflow="rebalance", moves=(), version=1)


def test_new_manifest_gets_a_run_id_of_its_own(clock):
    assert new_manifest("evacuate", clock=clock).run_id != new_manifest("evacuate", clock=clock).run_id


def test_new_manifest_rejects_unknown_workflow(clock):
    with pytest.raises(ManifestError, match="Unknown workflow 'drain'"):
        new_manifest("drain", clock=clock)


def test_manifest_error_is_a_strata_error():
    assert issubclass(ManifestError, StrataError)


def test_dict_round_trip(clock):
    manifest = started(clock, ("web", "hv1", "hv2", "u-web"), ("db", "hv1", "hv3"))
    manifest = mark_running(manifest, "web", strategy="precopy", clock=clock)
    manifest = mark_done(manifest, "web", figures={"total_ms": 1200, "downtime_ms": 40}, clock=clock)
    data = manifest_to_dict(manifest)
    assert json.loads(json.dumps(data)) == data
    assert manifest_from_dict(data) == manifest
    assert data["moves"][0] == {
        "vm": "web", "uuid": "u-web", "from_host": "hv1", "to_host": "hv2", "state": DONE,
        "started_at": "2024-05-01T12:00:03Z", "ended_at": "2024-05-01T12:00:04Z", "result": None,
        "strategy": "precopy", "figures": {"total_ms": 1200, "downtime_ms": 40}, "attempt": 1,
    }


# --- load and save ---------------------------------------------------------------------------

def test_load_missing_file_gives_a_new_manifest(tmp_path, clock):
    path = str(tmp_path / "absent.json")
    manifest = load_manifest(path, "maintenance_window", clock=clock, run_id="new")
    assert manifest.workflow == "maintenance_window"
    assert manifest.run_id == "new"
    assert manifest.moves == ()
    assert not os.path.exists(path)


def test_save_then_load_returns_the_same_manifest(tmp_path, clock):
    path = str(tmp_path / "m.json")
    manifest = started(clock, ("web", "hv1", "hv2", "u-web"))
    save_manifest(path, manifest)
    assert load_manifest(path, "rebalance", clock=clock) == manifest


def test_load_keeps_the_recorded_workflow(tmp_path, clock):
    path = str(tmp_path / "m.json")
    save_manifest(path, started(clock, ("web", "hv1", "hv2"), workflow="maintenance_window"))
    assert load_manifest(path, "evacuate", clock=clock).workflow == "maintenance_window"


def test_save_creates_parent_directories_and_a_private_file(tmp_path, clock):
    path = str(tmp_path / "a" / "b" / "m.json")
    save_manifest(path, started(clock, ("web", "hv1", "hv2")))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(str(tmp_path / "a" / "b")) == ["m.json"]


def test_save_over_a_world_readable_file_leaves_it_private(tmp_path, clock):
    path = tmp_path / "m.json"
    path.write_text("{}")
    os.chmod(str(path), 0o644)
    save_manifest(str(path), started(clock, ("web", "hv1", "hv2")))
    assert stat.S_IMODE(os.stat(str(path)).st_mode) == 0o600


def test_crash_between_write_and_replace_keeps_the_old_file(tmp_path, clock, monkeypatch):
    path = str(tmp_path / "m.json")
    old = started(clock, ("web", "hv1", "hv2"))
    save_manifest(path, old)
    with open(path, "rb") as stream:
        old_bytes = stream.read()

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_manifest.os, "replace", crash)
    new = mark_running(old, "web", clock=clock)
    with pytest.raises(ManifestError) as info:
        save_manifest(path, new)
    assert path in str(info.value)
    assert "unchanged" in str(info.value)
    assert info.value.details == {"path": path}
    with open(path, "rb") as stream:
        assert stream.read() == old_bytes
    assert os.listdir(str(tmp_path)) == ["m.json"]
    monkeypatch.undo()
    assert load_manifest(path, "evacuate", clock=clock) == old


def test_save_reports_a_directory_it_cannot_create(tmp_path, clock):
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = str(blocker / "m.json")
    with pytest.raises(ManifestError, match="Cannot write the manifest %s" % re.escape(path)):
        save_manifest(path, started(clock, ("web", "hv1", "hv2")))


def test_save_survives_a_directory_that_cannot_be_synced(tmp_path, clock, monkeypatch):
    real_open = os.open

    def no_directory_open(name, flags, *args):
        if os.path.isdir(name):
            raise OSError(13, "Permission denied")
        return real_open(name, flags, *args)

    monkeypatch.setattr(_manifest.os, "open", no_directory_open)
    path = str(tmp_path / "m.json")
    save_manifest(path, started(clock, ("web", "hv1", "hv2")))
    assert len(load_manifest(path, "evacuate", clock=clock).moves) == 1


def test_save_refuses_a_move_with_a_uri_host(tmp_path, clock):
    manifest = new_manifest("evacuate", clock=clock)
    bad = Move(vm="web", uuid=None, from_host="qemu+tcp://admin:s3cret@10.0.0.1/system", to_host="hv2")
    path = tmp_path / "m.json"
    with pytest.raises(ManifestError) as info:
        save_manifest(str(path), Manifest(manifest.run_id, manifest.created_at, manifest.updated_at,
                                          manifest.workflow, (bad,)))
    assert "s3cret" not in str(info.value)
    assert not path.exists()


@pytest.mark.parametrize("text, expected", [
    ("{\"version\": 1, \"moves\": [", "is not valid JSON"),
    ("", "is not valid JSON"),
    ("[]", "must be a JSON object"),
    ("{\"version\": 2}", "has version 2; this collection reads and writes version 1"),
    ("{\"version\": true}", "has version True"),
    ("{\"moves\": []}", "has version None"),
    ("{\"version\": 1.0}", "has version 1.0"),
])
def test_load_refuses_a_corrupt_or_foreign_file(tmp_path, clock, text, expected):
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(ManifestError) as info:
        load_manifest(str(path), "evacuate", clock=clock)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "move it aside" in message
    assert info.value.details == {"path": str(path)}
    assert path.read_text() == text


def valid_data():
    return {
        "version": 1, "run_id": "r", "created_at": "c", "updated_at": "u", "workflow": "evacuate",
        "moves": [{"vm": "web", "uuid": "u-web", "from_host": "hv1", "to_host": "hv2", "state": PLANNED}],
    }


def test_load_fills_optional_move_fields():
    manifest = manifest_from_dict(valid_data())
    assert manifest.moves[0] == Move(vm="web", uuid="u-web", from_host="hv1", to_host="hv2")


def test_load_ignores_unknown_move_fields():
    data = valid_data()
    data["moves"][0]["note"] = "added by hand"
    assert manifest_from_dict(data).moves[0].vm == "web"


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(run_id=7), "has no run_id string"),
    (lambda d: d.pop("created_at"), "has no created_at string"),
    (lambda d: d.update(workflow="drain"), "unknown workflow 'drain'"),
    (lambda d: d.update(moves={}), "has no list of moves"),
    (lambda d: d["moves"].append("web"), "Move 1 of the manifest is not an object"),
    (lambda d: d["moves"][0].pop("to_host"), "Move 0 of the manifest lacks to_host"),
    (lambda d: d["moves"][0].update(state="lost"), "has state 'lost'"),
    (lambda d: d["moves"][0].update(vm=""), "needs the name of its VM"),
    (lambda d: d["moves"][0].update(uuid=""), "UUID of VM 'web'"),
    (lambda d: d["moves"][0].update(to_host="hv1"), "same source and destination host 'hv1'"),
    (lambda d: d["moves"][0].update(to_host=""), "destination host of VM 'web' must be a host name"),
    (lambda d: d["moves"][0].update(figures=[1]), "figures of the move of VM 'web'"),
    (lambda d: d["moves"][0].update(attempt=-1), "attempt count"),
    (lambda d: d["moves"][0].update(attempt=True), "attempt count"),
    (lambda d: d["moves"][0].update(result=3), "result of the move of VM 'web'"),
])
def test_load_refuses_malformed_content(change, expected):
    data = valid_data()
    change(data)
    with pytest.raises(ManifestError, match=re.escape(expected)):
        manifest_from_dict(data)


def test_load_reports_an_unreadable_file(tmp_path, clock):
    path = tmp_path / "m.json"
    path.mkdir()
    with pytest.raises(ManifestError, match="Cannot read the manifest %s" % re.escape(str(path))):
        load_manifest(str(path), "evacuate", clock=clock)


# --- no credentials --------------------------------------------------------------------------

@pytest.mark.parametrize("host", [
    "qemu+ssh://root:hunter2@10.0.0.1/system",
    "qemu+tcp://admin:hunter2@hv1/system",
])
def test_a_uri_with_a_password_is_rejected_without_echoing_it(clock, host):
    with pytest.raises(ManifestError) as info:
        record_planned(new_manifest("evacuate", clock=clock), plan(("web", host, "hv2")), clock=clock)
    assert "hunter2" not in str(info.value)
    assert "not a host name" in str(info.value)
    assert "@" in str(info.value)


@pytest.mark.parametrize("host", ["root:hunter2@hv1", "hv1/system"])
def test_a_host_with_userinfo_or_path_is_rejected_and_not_shown(clock, host):
    with pytest.raises(ManifestError) as info:
        record_planned(new_manifest("evacuate", clock=clock), plan(("web", "hv1", host)), clock=clock)
    assert "hunter2" not in str(info.value)
    assert "not shown" in str(info.value)


def test_a_plain_uri_is_rejected_too(clock):
    with pytest.raises(ManifestError, match="qemu:///system, not a host name"):
        record_planned(new_manifest("evacuate", clock=clock), plan(("web", "qemu:///system", "hv2")), clock=clock)


def test_a_move_without_hosts_is_rejected(clock):
    with pytest.raises(ManifestError, match="source host of VM 'web' must be a host name"):
        record_planned(new_manifest("evacuate", clock=clock), [{"vm": "web", "to": "hv2"}], clock=clock)


# --- record_planned --------------------------------------------------------------------------

def test_a_new_plan_is_recorded_in_order(clock):
    manifest = started(clock, ("web", "hv1", "hv2", "u-web"), ("db", "hv1", "hv3"))
    assert states(manifest) == [("web", "hv1", "hv2", PLANNED), ("db", "hv1", "hv3", PLANNED)]
    assert manifest.moves[0].uuid == "u-web"
    assert manifest.moves[1].uuid is None
    assert manifest.updated_at == "2024-05-01T12:00:02Z"
    assert manifest.created_at == "2024-05-01T12:00:01Z"
    assert [move.vm for move in pending(manifest)] == ["web", "db"]


def test_plan_accepts_moves_and_long_key_names(clock):
    manifest = record_planned(new_manifest("evacuate", clock=clock), [
        Move(vm="web", uuid="u", from_host="hv1", to_host="hv2", state=DONE, attempt=3, strategy="postcopy"),
        {"vm": "db", "from_host": "hv1", "to_host": "hv3", "strategy": "auto"},
    ], clock=clock)
    assert manifest.moves == (
        Move(vm="web", uuid="u", from_host="hv1", to_host="hv2", strategy="postcopy"),
        Move(vm="db", uuid=None, from_host="hv1", to_host="hv3", strategy="auto"),
    )


def test_a_plan_moving_a_vm_twice_is_rejected(clock):
    with pytest.raises(ManifestError, match="moves VM 'web' more than once"):
        started(clock, ("web", "hv1", "hv2"), ("web", "hv2", "hv3"))


def test_a_done_vm_keeps_its_record_and_is_not_moved_again(clock):
    manifest = started(clock, ("web", "hv1", "hv2", "u-web"), ("db", "hv1", "hv3"))
    manifest = mark_running(manifest, "web", clock=clock)
    manifest = mark_done(manifest, "web", figures={"total_ms": 900}, clock=clock)
    done_record = manifest.moves[0]
    again = record_planned(manifest, plan(("web", "hv1", "hv3", "u-web"), ("db", "hv1", "hv3")), clock=clock)
    assert again.moves[0] == done_record
    assert [move.vm for move in pending(again)] == ["db"]


def test_a_done_vm_that_moved_on_gets_a_new_move(clock):
    manifest = started(clock, ("web", "hv1", "hv2", "u-web"), workflow="maintenance_window")
    manifest = mark_done(mark_running(manifest, "web", clock=clock), "web", clock=clock)
    manifest = record_planned(manifest, [{"vm": "web", "from": "hv2", "to": "hv3"}], clock=clock)
    assert states(manifest) == [("web", "hv1", "hv2", DONE), ("web", "hv2", "hv3", PLANNED)]
    assert manifest.moves[1].uuid == "u-web"
    assert manifest.moves[1].attempt == 0


def test_a_running_vm_stays_for_reconcile(clock):
    manifest = started(clock, ("web", "hv1", "hv2"), ("db", "hv1", "hv3"))
    manifest = mark_running(manifest, "web", clock=clock)
    running_record = manifest.moves[0]
    again = record_planned(manifest, plan(("web", "hv1", "hv3"), ("db", "hv1", "hv3")), clock=clock)
    assert again.moves[0] == running_record
    assert [move.vm for move in pending(again)] == ["db"]


@pytest.mark.parametrize("finish", [
    lambda m, c: mark_failed(mark_running(m, "web", clock=c), "web", "timed out", clock=c),
    lambda m, c: mark_skipped(m, "web", "does not fit the window", clock=c),
])
def test_a_failed_or_skipped_vm_is_planned_again_keeping_its_attempts(clock, finish):
    manifest = finish(started(clock, ("web", "hv1", "hv2")), clock)
    attempts = manifest.moves[0].attempt
    again = record_planned(manifest, plan(("web", "hv1", "hv3", "u-web")), clock=clock)
    assert again.moves == (Move(vm="web", uuid="u-web", from_host="hv1", to_host="hv3", attempt=attempts),)


def test_a_replanned_move_follows_the_order_of_the_new_plan(clock):
    manifest = started(clock, ("web", "hv1", "hv2"), ("db", "hv1", "hv3"), ("cache", "hv1", "hv2"))
    manifest = mark_done(manifest, "cache", clock=clock)
    again = record_planned(manifest, plan(("db", "hv1", "hv3"), ("web", "hv1", "hv2"), ("mail", "hv1", "hv3")),
                           clock=clock)
    assert states(again) == [
        ("cache", "hv1", "hv2", DONE),
        ("db", "hv1", "hv3", PLANNED),
        ("web", "hv1", "hv2", PLANNED),
        ("mail", "hv1", "hv3", PLANNED),
    ]


def test_planned_moves_left_out_of_a_new_plan_are_skipped(clock):
    manifest = started(clock, ("web", "hv1", "hv2"), ("db", "hv1", "hv3"))
    again = record_planned(manifest, plan(("db", "hv1", "hv3")), clock=clock)
    assert states(again) == [("web", "hv1", "hv2", SKIPPED), ("db", "hv1", "hv3", PLANNED)]
    assert again.moves[0].result == "no longer in the plan"
    assert pending(again) == [again.moves[1]]


def test_identity_is_the_uuid_when_both_sides_know_it(clock):
    manifest = started(clock, ("web", "hv1", "hv2", "u-old"))
    manifest = mark_done(manifest, "web", clock=clock)
    # Same name, another domain (recreated): its move is a new one.
    again = record_planned(manifest, plan(("web", "hv1", "hv2", "u-new")), clock=clock)
    assert [(move.uuid, move.state) for move in again.moves] == [("u-old", DONE), ("u-new", PLANNED)]
    # Renamed domain, same UUID: still the same VM, already moved.
    renamed = record_planned(manifest, plan(("web-renamed", "hv1", "hv2", "u-old")), clock=clock)
    assert pending(renamed) == []


def test_identity_falls_back_to_the_name(clock):
    manifest = mark_done(started(clock, ("web", "hv1", "hv2")), "web", clock=clock)
    again = record_planned(manifest, plan(("web", "hv1", "hv2", "u-web")), clock=clock)
    assert pending(again) == []


def test_record_planned_does_not_change_its_input(clock):
    manifest = started(clock, ("web", "hv1", "hv2"))
    before = manifest_to_dict(manifest)
    record_planned(manifest, plan(("db", "hv1", "hv3")), clock=clock)
    assert manifest_to_dict(manifest) == before


# --- mark_* ----------------------------------------------------------------------------------

def test_mark_running_counts_attempts_and_stamps_the_start(clock):
    manifest = started(clock, ("web", "hv1", "hv2"))
    manifest = mark_running(manifest, "web", uuid="u-web", strategy="postcopy", clock=clock)
    move = manifest.moves[0]
    assert (move.state, move.attempt, move.started_at, move.strategy, move.uuid) == (
        RUNNING, 1, "2024-05-01T12:00:03Z", "postcopy", "u-web")
    assert manifest.updated_at == "2024-05-01T12:00:03Z"
    assert pending(manifest) == []


def test_a_retried_move_counts_its_second_attempt(clock):
    manifest = started(clock, ("web", "hv1", "hv2"))
    manifest = mark_failed(mark_running(manifest, "web", clock=clock), "web", "stalled", clock=clock)
    manifest = record_planned(manifest, plan(("web", "hv1", "hv2")), clock=clock)
    manifest = mark_running(manifest, "web", clock=clock)
    assert manifest.moves[0].attempt == 2
    assert manifest.moves[0].result is None
    assert manifest.moves[0].ended_at is None


def test_mark_done_records_result_strategy_and_figures(clock):
    manifest = mark_running(started(clock, ("web", "hv1", "hv2")), "web", strategy="auto", clock=clock)
    manifest = mark_done(manifest, "web", result="migrated", strategy="precopy",
                         figures={"total_ms": 800, "downtime_ms": 30, "transferred_mib": 210.5}, clock=clock)
    move = manifest.moves[0]
    assert (move.state, move.started_at, move.ended_at, move.result, move.strategy) == (
        DONE, "2024-05-01T12:00:03Z", "2024-05-01T12:00:04Z", "migrated", "precopy")
    assert move.figures == {"total_ms": 800, "downtime_ms": 30, "transferred_mib": 210.5}


def test_mark_done_on_a_planned_move_found_already_made(clock):
    manifest = mark_done(started(clock, ("web", "hv1", "hv2")), "web", result="already there", clock=clock)
    move = manifest.moves[0]
    assert (move.state, move.attempt, move.started_at, move.ended_at) == (
        DONE, 0, "2024-05-01T12:00:03Z", "2024-05-01T12:00:03Z")


def test_mark_failed_keeps_figures_and_strategy_when_not_given(clock):
    manifest = mark_running(started(clock, ("web", "hv1", "hv2")), "web", strategy="postcopy", clock=clock)
    manifest = mark_failed(manifest, "web", "aborted: no progress for 60 s", clock=clock)
    move = manifest.moves[0]
    assert (move.state, move.result, move.strategy, move.figures) == (
        FAILED, "aborted: no progress for 60 s", "postcopy", {})


def test_mark_skipped_leaves_no_start(clock):
    manifest = mark_skipped(started(clock, ("web", "hv1", "hv2")), "web", "no room on any host", clock=clock)
    move = manifest.moves[0]
    assert (move.state, move.started_at, move.ended_at, move.result) == (
        SKIPPED, None, "2024-05-01T12:00:03Z", "no room on any host")


@pytest.mark.parametrize("mark, expected", [
    (lambda m, c: mark_running(m, "web", clock=c), "is done; only a planned move can be marked running"),
    (lambda m, c: mark_done(m, "web", clock=c), "is done; only a running or planned move can be marked done"),
    (lambda m, c: mark_failed(m, "web", "x", clock=c), "only a running or planned move can be marked failed"),
    (lambda m, c: mark_skipped(m, "web", "x", clock=c), "only a planned move can be marked skipped"),
])
def test_a_done_move_cannot_be_marked_again(clock, mark, expected):
    manifest = mark_done(started(clock, ("web", "hv1", "hv2")), "web", clock=clock)
    with pytest.raises(ManifestError, match=re.escape(expected)) as info:
        mark(manifest, clock)
    assert "from hv1 to hv2" in str(info.value)
    assert info.value.details == {"vm": "web"}


def test_a_running_move_cannot_be_started_or_skipped(clock):
    manifest = mark_running(started(clock, ("web", "hv1", "hv2")), "web", clock=clock)
    with pytest.raises(ManifestError, match="is running"):
        mark_running(manifest, "web", clock=clock)
    with pytest.raises(ManifestError, match="is running"):
        mark_skipped(manifest, "web", "late", clock=clock)


def test_marking_an_unknown_vm_fails(clock):
    manifest = started(clock, ("web", "hv1", "hv2"))
    with pytest.raises(ManifestError, match="no move of VM 'db' to mark running"):
        mark_running(manifest, "db", clock=clock)
    with pytest.raises(ManifestError, match="no move of VM 'db' to mark done"):
        mark_done(manifest, "db", clock=clock)


def test_marks_apply_to_the_latest_move_of_the_vm(clock):
    manifest = mark_done(started(clock, ("web", "hv1", "hv2")), "web", clock=clock)
    manifest = record_planned(manifest, plan(("web", "hv2", "hv3")), clock=clock)
    manifest = mark_running(manifest, "web", clock=clock)
    assert states(manifest) == [("web", "hv1", "hv2", DONE), ("web", "hv2", "hv3", RUNNING)]


def test_marks_find_the_vm_by_uuid(clock):
    manifest = started(clock, ("web", "hv1", "hv2", "u-web"))
    manifest = mark_running(manifest, "renamed", uuid="u-web", clock=clock)
    assert manifest.moves[0].state == RUNNING


def test_marks_do_not_change_their_input(clock):
    manifest = started(clock, ("web", "hv1", "hv2"))
    mark_running(manifest, "web", clock=clock)
    assert manifest.moves[0].state == PLANNED


# --- reconcile -------------------------------------------------------------------------------

def interrupted(clock):
    manifest = started(clock, ("web", "hv1", "hv2", "u-web"), ("db", "hv1", "hv3"), ("cache", "hv1", "hv2"),
                       ("mail", "hv1", "hv3"))
    for vm in ("web", "db", "cache", "mail"):
        manifest = mark_running(manifest, vm, clock=clock)
    return manifest


def test_reconcile_settles_each_interrupted_move(clock):
    manifest = interrupted(clock)
    settled = reconcile(manifest, {"u-web": "hv2", "db": "hv1", "cache": None, "mail": "hv9"}, clock=clock)
    now = "2024-05-01T12:00:07Z"
    web, db, cache, mail = settled.moves
    assert (web.state, web.result, web.ended_at, web.attempt) == (DONE, FINISHED_BY_INTERRUPTED_RUN, now, 1)
    assert (db.state, db.started_at, db.ended_at, db.attempt) == (PLANNED, None, None, 1)
    assert "planned again" in db.result
    assert (cache.state, cache.ended_at) == (FAILED, now)
    assert "look at both hv1 and hv2" in cache.result
    assert mail.state == FAILED
    assert "running on hv9, neither its source hv1 nor its destination hv3" in mail.result
    assert settled.updated_at == now
    assert pending(settled) == [db]
    retried = mark_running(settled, "db", clock=clock)
    assert retried.moves[1].attempt == 2


def test_reconcile_treats_a_vm_missing_from_where_as_nowhere(clock):
    settled = reconcile(interrupted(clock), {}, clock=clock)
    assert [move.state for move in settled.moves] == [FAILED] * 4


def test_reconcile_looks_up_by_name_when_the_uuid_is_not_given(clock):
    settled = reconcile(interrupted(clock), {"web": "hv2"}, clock=clock)
    assert settled.moves[0].state == DONE


def test_reconcile_prefers_the_uuid_over_the_name(clock):
    settled = reconcile(interrupted(clock), {"u-web": "hv1", "web": "hv2"}, clock=clock)
    assert settled.moves[0].state == PLANNED


def test_reconcile_leaves_settled_moves_alone(clock):
    manifest = started(clock, ("web", "hv1", "hv2"), ("db", "hv1", "hv3"), ("cache", "hv1", "hv2"))
    manifest = mark_done(manifest, "web", clock=clock)
    manifest = mark_failed(manifest, "db", "no route", clock=clock)
    settled = reconcile(manifest, {"web": "hv1", "db": None, "cache": "hv2"}, clock=clock)
    assert settled.moves == manifest.moves


def test_an_interrupted_run_finishes_without_moving_a_vm_twice(clock, tmp_path):
    # First run: web done, db killed mid-move, cache not started.
    path = str(tmp_path / "m.json")
    first = started(clock, ("web", "hv1", "hv2"), ("db", "hv1", "hv3"), ("cache", "hv1", "hv2"))
    first = mark_done(mark_running(first, "web", clock=clock), "web", clock=clock)
    first = mark_running(first, "db", clock=clock)
    save_manifest(path, first)
    # Rerun: db finished on its destination; the planner now sees only cache on hv1.
    rerun = load_manifest(path, "evacuate", clock=clock)
    rerun = reconcile(rerun, {"web": "hv2", "db": "hv3", "cache": "hv1"}, clock=clock)
    rerun = record_planned(rerun, plan(("cache", "hv1", "hv2")), clock=clock)
    assert [move.vm for move in pending(rerun)] == ["cache"]
    rerun = mark_done(mark_running(rerun, "cache", clock=clock), "cache", clock=clock)
    assert states(rerun) == [("web", "hv1", "hv2", DONE), ("db", "hv1", "hv3", DONE), ("cache", "hv1", "hv2", DONE)]


# --- returns_home ----------------------------------------------------------------------------

def test_returns_home_sends_done_moves_back(clock):
    manifest = started(clock, ("web", "hv1", "hv2", "u-web"), ("db", "hv1", "hv3"), ("cache", "hv1", "hv2"))
    manifest = mark_done(manifest, "web", clock=clock)
    manifest = mark_done(manifest, "db", clock=clock)
    manifest = mark_failed(manifest, "cache", "stalled", clock=clock)
    assert returns_home(manifest) == [
        {"vm": "web", "uuid": "u-web", "from": "hv2", "to": "hv1"},
        {"vm": "db", "uuid": None, "from": "hv3", "to": "hv1"},
    ]


def test_returns_home_only_for_the_given_hosts(clock):
    manifest = started(clock, ("web", "hv1", "hv2"), ("db", "hv3", "hv2"))
    manifest = mark_done(mark_done(manifest, "web", clock=clock), "db", clock=clock)
    assert returns_home(manifest, hosts=["hv3"]) == [{"vm": "db", "uuid": None, "from": "hv2", "to": "hv3"}]
    assert returns_home(manifest, hosts=[]) == []


def test_a_vm_moved_twice_goes_back_to_where_it_first_was(clock):
    manifest = mark_done(started(clock, ("web", "hv1", "hv2"), workflow="maintenance_window"), "web", clock=clock)
    manifest = record_planned(manifest, plan(("web", "hv2", "hv3", "u-web")), clock=clock)
    manifest = mark_done(manifest, "web", clock=clock)
    assert returns_home(manifest) == [{"vm": "web", "uuid": "u-web", "from": "hv3", "to": "hv1"}]
    assert returns_home(manifest, hosts=["hv2"]) == []


def test_a_failed_later_move_leaves_the_vm_where_the_last_done_move_put_it(clock):
    manifest = mark_done(started(clock, ("web", "hv1", "hv2")), "web", clock=clock)
    manifest = record_planned(manifest, plan(("web", "hv2", "hv3")), clock=clock)
    manifest = mark_failed(manifest, "web", "no room", clock=clock)
    assert returns_home(manifest) == [{"vm": "web", "uuid": None, "from": "hv2", "to": "hv1"}]


def test_a_vm_already_home_has_no_return(clock):
    manifest = mark_done(started(clock, ("web", "hv1", "hv2")), "web", clock=clock)
    back = record_planned(manifest, returns_home(manifest), clock=clock)
    assert pending(back) == [Move(vm="web", uuid=None, from_host="hv2", to_host="hv1")]
    back = mark_done(mark_running(back, "web", clock=clock), "web", clock=clock)
    assert returns_home(back) == []


def test_a_vm_whose_latest_move_is_running_has_no_return(clock):
    manifest = mark_done(started(clock, ("web", "hv1", "hv2")), "web", clock=clock)
    manifest = mark_running(record_planned(manifest, plan(("web", "hv2", "hv3")), clock=clock), "web", clock=clock)
    assert returns_home(manifest) == []


def test_returns_home_is_empty_without_done_moves(clock):
    assert returns_home(started(clock, ("web", "hv1", "hv2"))) == []
