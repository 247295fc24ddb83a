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
    ALREADY_ON_DESTINATION,
    Outcome,
    Updates,
    apply_updates,
    ensure_manifest,
    manifest_from_dict,
    manifest_view,
    manifest_to_dict,
    mark_done,
    mark_failed,
    mark_running,
    mark_skipped,
    new_manifest,
    outcome_of,
    pending,
    read_manifest,
    reconcile,
    record_outcome,
    record_planned,
    returns_home,
    save_manifest,
    set_job_id,
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
        "strategy": "precopy", "figures": {"total_ms": 1200, "downtime_ms": 40}, "attempt": 1, "job_id": None,
    }


# --- load and save ---------------------------------------------------------------------------

def test_reading_a_missing_file_gives_none_and_creates_nothing(tmp_path):
    path = str(tmp_path / "absent.json")
    assert read_manifest(path) is None
    assert not os.path.exists(path)


def test_save_then_load_returns_the_same_manifest(tmp_path, clock):
    path = str(tmp_path / "m.json")
    manifest = started(clock, ("web", "hv1", "hv2", "u-web"))
    save_manifest(path, manifest)
    assert read_manifest(path) == manifest


def test_a_read_manifest_keeps_its_recorded_workflow(tmp_path, clock):
    path = str(tmp_path / "m.json")
    save_manifest(path, started(clock, ("web", "hv1", "hv2"), workflow="maintenance_window"))
    assert read_manifest(path).workflow == "maintenance_window"


def test_save_creates_a_private_file(tmp_path, clock):
    path = str(tmp_path / "m.json")
    save_manifest(path, started(clock, ("web", "hv1", "hv2")))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(str(tmp_path)) == ["m.json"]


def test_save_refuses_a_missing_directory(tmp_path, clock):
    path = str(tmp_path / "a" / "m.json")
    with pytest.raises(ManifestError) as info:
        save_manifest(path, started(clock, ("web", "hv1", "hv2")))
    assert str(info.value) == (
        "Cannot write the manifest %s: its directory %s does not exist. Create the directory first, or pass "
        "another manifest path." % (path, tmp_path / "a"))
    assert info.value.details == {"path": path}
    assert not os.path.exists(str(tmp_path / "a"))


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
    assert read_manifest(path) == old


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
    assert len(read_manifest(path).moves) == 1


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
        read_manifest(str(path))
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
    (lambda d: d["moves"][0].update(job_id=42), "job_id of the move of VM 'web'"),
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
        read_manifest(str(path))


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
    rerun = read_manifest(path)
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


# --- job ids ---------------------------------------------------------------------------------

def test_mark_running_records_the_job(clock):
    manifest = mark_running(started(clock, ("web", "hv1", "hv2")), "web", job_id="j1.1", clock=clock)
    assert (manifest.moves[0].state, manifest.moves[0].job_id) == (RUNNING, "j1.1")


def test_a_new_attempt_does_not_keep_the_job_of_the_last(clock):
    manifest = mark_running(started(clock, ("web", "hv1", "hv2")), "web", job_id="j1.1", clock=clock)
    manifest = mark_failed(manifest, "web", "stalled", clock=clock)
    assert manifest.moves[0].job_id == "j1.1"
    manifest = record_planned(manifest, plan(("web", "hv1", "hv2")), clock=clock)
    assert mark_running(manifest, "web", clock=clock).moves[0].job_id is None
    assert mark_running(manifest, "web", job_id="j2.2", clock=clock).moves[0].job_id == "j2.2"


def test_set_job_id_on_a_running_move(clock):
    manifest = mark_running(started(clock, ("web", "hv1", "hv2")), "web", clock=clock)
    with_job = set_job_id(manifest, "web", "j1.1", uuid="u-web", clock=clock)
    move = with_job.moves[0]
    assert (move.state, move.job_id, move.uuid, move.attempt) == (RUNNING, "j1.1", "u-web", 1)
    assert move.started_at == manifest.moves[0].started_at
    assert with_job.updated_at == "2024-05-01T12:00:04Z"
    assert set_job_id(with_job, "web", "j1.1", clock=clock) is with_job


def test_set_job_id_refuses_a_second_job(clock):
    manifest = mark_running(started(clock, ("web", "hv1", "hv2")), "web", job_id="j1.1", clock=clock)
    with pytest.raises(ManifestError) as info:
        set_job_id(manifest, "web", "j2.2", clock=clock)
    assert str(info.value) == (
        "The running move of VM 'web' from hv1 to hv2 already has job j1.1; it cannot take job j2.2 as well. "
        "Wait for job j1.1 and record how it ended first.")
    assert info.value.details == {"vm": "web"}


def test_set_job_id_needs_a_running_move(clock):
    manifest = started(clock, ("web", "hv1", "hv2"))
    with pytest.raises(ManifestError, match="from hv1 to hv2 is planned; only a running move can take a job id"):
        set_job_id(manifest, "web", "j1.1", clock=clock)
    with pytest.raises(ManifestError, match="no move of VM 'db' to record job j1.1 for"):
        set_job_id(manifest, "db", "j1.1", clock=clock)


def test_finishing_keeps_the_job_for_the_record(clock):
    manifest = mark_running(started(clock, ("web", "hv1", "hv2")), "web", job_id="j1.1", clock=clock)
    assert mark_done(manifest, "web", clock=clock).moves[0].job_id == "j1.1"


def test_a_manifest_written_before_job_ids_loads(tmp_path, clock):
    path = tmp_path / "old.json"
    data = valid_data()
    data["moves"][0].update(state=RUNNING, attempt=1, started_at="s", figures={})
    path.write_text(json.dumps(data))
    manifest = read_manifest(str(path))
    assert manifest.moves[0].job_id is None
    assert manifest_to_dict(manifest)["moves"][0]["job_id"] is None


def test_read_manifest_tells_a_missing_file(tmp_path, clock):
    assert read_manifest(str(tmp_path / "absent.json")) is None
    path = str(tmp_path / "m.json")
    save_manifest(path, started(clock, ("web", "hv1", "hv2")))
    assert read_manifest(path).moves[0].vm == "web"


# --- outcomes of live_migrate ----------------------------------------------------------------

MIGRATED = {
    "changed": True,
    "domain": "web",
    "already_migrated": False,
    "strategy": {"name": "layered", "reason": "hot set predicted", "hot_layer": "throttle"},
    "stats": {"total_ms": 1840, "downtime_ms": 35, "setup_ms": 4, "transferred_mib": 71.7, "memory_total_mib": 512.0,
              "iterations": 3, "zero_pages": 97000, "sources": {"total_ms": "completed_job"}},
    "compaction": {"before_mib": 512, "after_mib": 132, "reclaimed_mib": 380},
    "timeline": [{"t_s": 0.1, "event": "complete"}],
}

FAILED_RESULT = {
    "failed": True,
    "changed": False,
    "msg": "aborted by the stall guard: no progress for 30 s; the domain is running on the source",
    "strategy": {"name": "precopy"},
    "stats": {"total_ms": 30000, "downtime_ms": None, "transferred_mib": 900.5, "iterations": True},
    "compaction": None,
    "aborted_by": "stall",
}


def test_outcome_of_a_migration_keeps_strategy_and_main_figures():
    assert outcome_of(MIGRATED) == Outcome(
        state=DONE, result="migrated", strategy="layered",
        figures={"total_ms": 1840, "downtime_ms": 35, "transferred_mib": 71.7, "memory_mib": 512.0, "iterations": 3,
                 "compaction_reclaimed_mib": 380},
    )


def test_outcome_of_a_migration_with_a_storage_copy_keeps_the_disk_figure():
    result = dict(MIGRATED, stats=dict(MIGRATED["stats"], disk_total_mib=64.0, disk_transferred_mib=64.2))
    assert outcome_of(result).figures["disk_transferred_mib"] == 64.2
    without_copy = dict(MIGRATED, stats=dict(MIGRATED["stats"], disk_transferred_mib=None))
    assert "disk_transferred_mib" not in outcome_of(without_copy).figures


def test_outcome_of_a_migration_with_a_message_keeps_it():
    assert outcome_of(dict(MIGRATED, msg="migrated after post-copy")).result == "migrated after post-copy"


def test_outcome_of_a_failure_keeps_its_message_and_only_real_figures():
    # A failure that changed nothing is still a failure; null and boolean figures are left out.
    assert outcome_of(FAILED_RESULT) == Outcome(
        state=FAILED, result=FAILED_RESULT["msg"], strategy="precopy",
        figures={"total_ms": 30000, "transferred_mib": 900.5},
    )


def test_outcome_of_a_failure_without_a_message():
    assert outcome_of({"failed": True}) == Outcome(state=FAILED, result="failed without a message")


@pytest.mark.parametrize("result", [
    {"changed": False, "already_migrated": True, "domain": "web", "timeline": []},
    {"changed": False, "domain": "web"},
    {"changed": True, "already_migrated": True},
])
def test_outcome_of_a_vm_already_on_its_destination(result):
    assert outcome_of(result) == Outcome(state=DONE, result=ALREADY_ON_DESTINATION)


@pytest.mark.parametrize("strategy, expected", [
    ("postcopy", "postcopy"),
    ({"reason": "no name"}, None),
    ({"name": 3}, None),
    (None, None),
])
def test_outcome_of_reads_the_strategy_name(strategy, expected):
    assert outcome_of({"changed": True, "strategy": strategy}).strategy == expected


def test_outcome_of_a_result_without_figures():
    assert outcome_of({"changed": True, "stats": "n/a"}) == Outcome(state=DONE, result="migrated")


def test_record_outcome_marks_the_running_move(clock):
    manifest = mark_running(started(clock, ("web", "hv1", "hv2")), "web", job_id="j1.1", clock=clock)
    done = record_outcome(manifest, "web", outcome_of(MIGRATED), clock=clock)
    move = done.moves[0]
    assert (move.state, move.result, move.strategy, move.job_id) == (DONE, "migrated", "layered", "j1.1")
    assert move.figures["downtime_ms"] == 35
    failed = record_outcome(manifest, "web", Outcome(state=FAILED, result="no route"), clock=clock)
    assert (failed.moves[0].state, failed.moves[0].result, failed.moves[0].figures) == (FAILED, "no route", {})


def test_record_outcome_leaves_a_move_already_recorded_so(clock):
    manifest = mark_running(started(clock, ("web", "hv1", "hv2")), "web", clock=clock)
    done = record_outcome(manifest, "web", outcome_of(MIGRATED), clock=clock)
    assert record_outcome(done, "web", outcome_of(MIGRATED), clock=clock) is done
    failed = record_outcome(manifest, "web", outcome_of(FAILED_RESULT), clock=clock)
    assert record_outcome(failed, "web", outcome_of(FAILED_RESULT), clock=clock) is failed


def test_record_outcome_refuses_to_turn_a_done_move_failed(clock):
    done = mark_done(started(clock, ("web", "hv1", "hv2")), "web", clock=clock)
    with pytest.raises(ManifestError, match="is done; only a running or planned move can be marked failed"):
        record_outcome(done, "web", outcome_of(FAILED_RESULT), clock=clock)


# --- apply_updates ---------------------------------------------------------------------------

def wave(*vms):
    """Moves as migration_plan returns them, with keys the manifest ignores."""
    return [dict(move, memory_mib=256, estimated_s=1.5, wave=1) for move in plan(*vms)]


def test_no_updates_change_nothing(clock):
    manifest = started(clock, ("web", "hv1", "hv2"))
    assert apply_updates(manifest, Updates(), clock=clock) is manifest


def test_plan_records_migration_plan_moves(clock):
    manifest = apply_updates(new_manifest("evacuate", clock=clock),
                             Updates(plan=wave(("web", "hv1", "hv2", "u-web"), ("db", "hv1", "hv3", None))),
                             clock=clock)
    assert manifest.moves == (
        Move(vm="web", uuid="u-web", from_host="hv1", to_host="hv2"),
        Move(vm="db", uuid=None, from_host="hv1", to_host="hv3"),
    )


def test_plan_treats_an_empty_uuid_as_unknown(clock):
    manifest = apply_updates(new_manifest("evacuate", clock=clock),
                             Updates(plan=wave(("web", "hv1", "hv2", ""))), clock=clock)
    assert manifest.moves[0].uuid is None


def test_an_empty_plan_skips_what_was_planned(clock):
    manifest = apply_updates(started(clock, ("web", "hv1", "hv2")), Updates(plan=[]), clock=clock)
    assert states(manifest) == [("web", "hv1", "hv2", SKIPPED)]


@pytest.mark.parametrize("item, expected", [
    ({"vm": "web", "to": "hv2"}, "plan[0]: The source host of VM 'web' must be a host name."),
    ({"vm": "web", "from": "hv1", "to": "hv1"}, "plan[0]: The move of VM 'web' has the same source and destination"),
    ({"from": "hv1", "to": "hv2"}, "plan[0]: vm must be the name of the VM, got None."),
    ("web", "plan[0]: expected a mapping with vm, got 'web'."),
    ({"vm": "web", "uuid": 7, "from": "hv1", "to": "hv2"}, "plan[0]: uuid must be a string or null, got 7."),
])
def test_plan_errors_name_the_option_and_item(clock, item, expected):
    with pytest.raises(ManifestError) as info:
        apply_updates(new_manifest("evacuate", clock=clock), Updates(plan=[item]), clock=clock)
    assert str(info.value).startswith(expected)
    assert info.value.details["option"] == "plan"


def test_a_plan_moving_a_vm_twice_names_the_option(clock):
    with pytest.raises(ManifestError) as info:
        apply_updates(new_manifest("evacuate", clock=clock),
                      Updates(plan=wave(("web", "hv1", "hv2"), ("web", "hv1", "hv3"))), clock=clock)
    assert str(info.value) == "plan: The plan moves VM 'web' more than once."
    assert info.value.details == {"option": "plan", "vm": "web"}


def test_started_marks_planned_moves_running_with_their_jobs(clock):
    manifest = started(clock, ("web", "hv1", "hv2"), ("db", "hv1", "hv3"))
    manifest = apply_updates(manifest, Updates(started=[{"vm": "web", "uuid": "u-web", "job_id": "j1.1"},
                                                        {"vm": "db", "job_id": None}]), clock=clock)
    assert [(move.state, move.job_id, move.attempt) for move in manifest.moves] == [
        (RUNNING, "j1.1", 1), (RUNNING, None, 1)]
    assert manifest.moves[0].uuid == "u-web"


def test_started_takes_plan_moves_as_they_are_then_their_jobs(clock):
    manifest = started(clock, ("web", "hv1", "hv2"))
    manifest = apply_updates(manifest, Updates(started=wave(("web", "hv1", "hv2"))), clock=clock)
    assert (manifest.moves[0].state, manifest.moves[0].job_id) == (RUNNING, None)
    again = apply_updates(manifest, Updates(started=wave(("web", "hv1", "hv2"))), clock=clock)
    assert again is manifest
    with_job = apply_updates(manifest, Updates(started=[{"vm": "web", "job_id": "j1.1"}]), clock=clock)
    assert (with_job.moves[0].job_id, with_job.moves[0].attempt) == ("j1.1", 1)
    assert apply_updates(with_job, Updates(started=[{"vm": "web", "job_id": "j1.1"}]), clock=clock) is with_job


@pytest.mark.parametrize("prepare, item, expected", [
    (lambda m, c: mark_running(m, "web", job_id="j1.1", clock=c), {"vm": "web", "job_id": "j2.2"},
     "started[0]: The running move of VM 'web' from hv1 to hv2 already has job j1.1"),
    (lambda m, c: mark_done(m, "web", clock=c), {"vm": "web"},
     "started[0]: The move of VM 'web' from hv1 to hv2 is done; only a planned move can be marked running."),
    (lambda m, c: m, {"vm": "db"}, "started[0]: The manifest has no move of VM 'db' to mark running."),
    (lambda m, c: m, {"vm": "web", "job_id": 12}, "started[0]: job_id must be a string or null, got 12."),
])
def test_started_errors_name_the_option_and_item(clock, prepare, item, expected):
    manifest = prepare(started(clock, ("web", "hv1", "hv2")), clock)
    with pytest.raises(ManifestError) as info:
        apply_updates(manifest, Updates(started=[item]), clock=clock)
    assert str(info.value).startswith(expected)
    assert info.value.details == {"option": "started", "vm": item["vm"]}


def test_finished_records_how_each_move_ended(clock):
    manifest = started(clock, ("web", "hv1", "hv2"), ("db", "hv1", "hv3"), ("cache", "hv1", "hv2"))
    for vm in ("web", "db", "cache"):
        manifest = mark_running(manifest, vm, clock=clock)
    manifest = apply_updates(manifest, Updates(finished=[
        {"vm": "web", "uuid": None, "result": MIGRATED},
        {"vm": "db", "result": FAILED_RESULT},
        {"vm": "cache", "result": {"changed": False, "already_migrated": True}},
    ]), clock=clock)
    assert [(move.state, move.result) for move in manifest.moves] == [
        (DONE, "migrated"), (FAILED, FAILED_RESULT["msg"]), (DONE, ALREADY_ON_DESTINATION)]
    assert again_is_same(manifest, Updates(finished=[{"vm": "web", "result": MIGRATED}]), clock)


def again_is_same(manifest, updates, clock):
    return apply_updates(manifest, updates, clock=clock) is manifest


@pytest.mark.parametrize("item, expected", [
    ({"vm": "web", "result": "ok"}, "finished[0]: result must be the result of the task, got 'ok'."),
    ({"vm": "db", "result": MIGRATED}, "finished[0]: The manifest has no move of VM 'db' to mark done."),
])
def test_finished_errors_name_the_option_and_item(clock, item, expected):
    with pytest.raises(ManifestError) as info:
        apply_updates(started(clock, ("web", "hv1", "hv2")), Updates(finished=[item]), clock=clock)
    assert str(info.value) == expected
    assert info.value.details == {"option": "finished", "vm": item["vm"]}


def test_where_settles_moves_left_running(clock):
    manifest = mark_running(started(clock, ("web", "hv1", "hv2"), ("db", "hv1", "hv3")), "web", clock=clock)
    manifest = mark_running(manifest, "db", clock=clock)
    settled = apply_updates(manifest, Updates(where={"web": "hv2", "db": "hv1"}), clock=clock)
    assert [(move.state, move.result) for move in settled.moves] == [
        (DONE, FINISHED_BY_INTERRUPTED_RUN), (PLANNED, "interrupted; still on its source, planned again")]


def test_finished_comes_before_where(clock):
    # The VM is still seen on its source, but its result says it moved: the result counts, with its figures.
    manifest = mark_running(started(clock, ("web", "hv1", "hv2")), "web", clock=clock)
    settled = apply_updates(manifest, Updates(where={"web": "hv1"}, finished=[{"vm": "web", "result": MIGRATED}]),
                            clock=clock)
    assert (settled.moves[0].state, settled.moves[0].result) == (DONE, "migrated")
    assert settled.moves[0].figures["total_ms"] == 1840


def test_where_comes_before_plan_and_plan_before_started(clock):
    manifest = mark_running(started(clock, ("web", "hv1", "hv2")), "web", clock=clock)
    updated = apply_updates(manifest, Updates(where={"web": "hv1"}, plan=wave(("web", "hv1", "hv3")),
                                              started=[{"vm": "web", "job_id": "j2.2"}]), clock=clock)
    assert [(move.to_host, move.state, move.attempt, move.job_id) for move in updated.moves] == [
        ("hv3", RUNNING, 2, "j2.2")]


@pytest.mark.parametrize("where, expected", [
    (["web"], "where must map VM names or UUIDs to host names, got ['web']."),
    ({"web": 3}, "where: VM 'web' runs on 3; give the name of its host, or null when it runs on no host."),
    ({"web": ""}, "where: VM 'web' runs on ''"),
    ({"": "hv1"}, "where: the key '' is not a VM name or UUID."),
])
def test_where_errors_name_the_option(clock, where, expected):
    with pytest.raises(ManifestError) as info:
        apply_updates(started(clock, ("web", "hv1", "hv2")), Updates(where=where), clock=clock)
    assert str(info.value).startswith(expected)
    assert info.value.details == {"option": "where"}


def test_skipped_marks_planned_moves_once(clock):
    manifest = started(clock, ("web", "hv1", "hv2"))
    skipped = apply_updates(manifest, Updates(skipped=[{"vm": "web", "uuid": None, "reason": "no room"}]), clock=clock)
    assert (skipped.moves[0].state, skipped.moves[0].result) == (SKIPPED, "no room")
    assert again_is_same(skipped, Updates(skipped=[{"vm": "web", "reason": "still no room"}]), clock)


@pytest.mark.parametrize("prepare, item, expected", [
    (lambda m, c: m, {"vm": "web", "reason": ""}, "skipped[0]: reason must say why VM 'web' is not moved."),
    (lambda m, c: mark_running(m, "web", clock=c), {"vm": "web", "reason": "late"},
     "skipped[0]: The move of VM 'web' from hv1 to hv2 is running; only a planned move can be marked skipped."),
])
def test_skipped_errors_name_the_option_and_item(clock, prepare, item, expected):
    manifest = prepare(started(clock, ("web", "hv1", "hv2")), clock)
    with pytest.raises(ManifestError) as info:
        apply_updates(manifest, Updates(skipped=[item]), clock=clock)
    assert str(info.value) == expected
    assert info.value.details == {"option": "skipped", "vm": "web"}


def test_skipped_comes_before_plan(clock):
    manifest = started(clock, ("web", "hv1", "hv2"))
    updated = apply_updates(manifest, Updates(skipped=[{"vm": "web", "reason": "too big"}],
                                              plan=wave(("web", "hv1", "hv3"))), clock=clock)
    assert states(updated) == [("web", "hv1", "hv3", PLANNED)]


# --- ensure_manifest -------------------------------------------------------------------------

def file_bytes(path):
    with open(path, "rb") as stream:
        return stream.read()


def test_ensure_creates_a_missing_manifest(tmp_path, clock):
    path = str(tmp_path / "m.json")
    state = ensure_manifest(path, "evacuate", Updates(plan=wave(("web", "hv1", "hv2"))), clock=clock)
    assert state.changed and state.before is None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_manifest(path) == state.after
    assert states(state.after) == [("web", "hv1", "hv2", PLANNED)]


def test_ensure_creates_an_empty_manifest_when_only_reading(tmp_path, clock):
    path = str(tmp_path / "m.json")
    state = ensure_manifest(path, "rebalance", Updates(), clock=clock)
    assert state.changed
    assert read_manifest(path) == state.after
    assert state.after.workflow == "rebalance"
    again = ensure_manifest(path, "rebalance", Updates(), clock=clock)
    assert not again.changed
    assert again.after.run_id == state.after.run_id


def test_ensure_needs_a_workflow_to_start_a_manifest(tmp_path, clock):
    path = str(tmp_path / "m.json")
    with pytest.raises(ManifestError) as info:
        ensure_manifest(path, None, Updates(), clock=clock)
    assert str(info.value) == (
        "The manifest %s does not exist yet; set workflow to start it (evacuate, rebalance or maintenance_window), "
        "or pass the path of an existing manifest." % path)
    assert info.value.details == {"option": "workflow", "path": path}
    assert not os.path.exists(path)


def test_ensure_refuses_the_manifest_of_another_workflow(tmp_path, clock):
    path = str(tmp_path / "m.json")
    save_manifest(path, started(clock, ("web", "hv1", "hv2"), workflow="rebalance"))
    before = file_bytes(path)
    with pytest.raises(ManifestError) as info:
        ensure_manifest(path, "evacuate", Updates(plan=[]), clock=clock)
    assert str(info.value) == (
        "The manifest %s belongs to workflow rebalance, not evacuate. Pass the manifest path of the evacuate run, "
        "or move %s aside to start a new record." % (path, path))
    assert info.value.details == {"option": "workflow", "path": path}
    assert file_bytes(path) == before


def test_ensure_without_workflow_takes_the_recorded_one(tmp_path, clock):
    path = str(tmp_path / "m.json")
    save_manifest(path, started(clock, ("web", "hv1", "hv2"), workflow="maintenance_window"))
    state = ensure_manifest(path, None, Updates(started=[{"vm": "web"}]), clock=clock)
    assert state.changed and state.after.workflow == "maintenance_window"
    assert read_manifest(path).moves[0].state == RUNNING


def test_ensure_leaves_the_file_alone_when_the_moves_do_not_change(tmp_path, clock):
    path = str(tmp_path / "m.json")
    ensure_manifest(path, "evacuate", Updates(plan=wave(("web", "hv1", "hv2"))), clock=clock)
    before = file_bytes(path)
    # The same plan again, and where facts with nothing running: only updated_at would move.
    state = ensure_manifest(path, "evacuate", Updates(plan=wave(("web", "hv1", "hv2")), where={"web": "hv1"}),
                            clock=clock)
    assert not state.changed
    assert state.after == state.before
    assert file_bytes(path) == before


def test_ensure_in_check_mode_writes_nothing(tmp_path, clock):
    path = str(tmp_path / "m.json")
    state = ensure_manifest(path, "evacuate", Updates(plan=wave(("web", "hv1", "hv2"))), check_mode=True, clock=clock)
    assert state.changed
    assert states(state.after) == [("web", "hv1", "hv2", PLANNED)]
    assert not os.path.exists(path)
    ensure_manifest(path, "evacuate", Updates(plan=wave(("web", "hv1", "hv2"))), clock=clock)
    before = file_bytes(path)
    state = ensure_manifest(path, "evacuate", Updates(started=[{"vm": "web"}]), check_mode=True, clock=clock)
    assert state.changed and state.after.moves[0].state == RUNNING
    assert file_bytes(path) == before


def test_ensure_in_check_mode_accepts_a_directory_not_made_yet(tmp_path, clock):
    path = str(tmp_path / "later" / "m.json")
    state = ensure_manifest(path, "evacuate", Updates(), check_mode=True, clock=clock)
    assert state.changed
    assert not os.path.exists(str(tmp_path / "later"))


def test_ensure_reports_a_missing_directory(tmp_path, clock):
    path = str(tmp_path / "later" / "m.json")
    with pytest.raises(ManifestError, match="its directory %s does not exist" % re.escape(str(tmp_path / "later"))):
        ensure_manifest(path, "evacuate", Updates(), clock=clock)


def test_ensure_writes_nothing_when_an_update_fails(tmp_path, clock):
    path = str(tmp_path / "m.json")
    ensure_manifest(path, "evacuate", Updates(plan=wave(("web", "hv1", "hv2"), ("db", "hv1", "hv3"))), clock=clock)
    before = file_bytes(path)
    with pytest.raises(ManifestError, match=re.escape("started[1]")):
        ensure_manifest(path, "evacuate", Updates(started=[{"vm": "web"}, {"vm": "mail"}]), clock=clock)
    assert file_bytes(path) == before


def test_a_whole_wave_recorded_twice_changes_nothing_the_second_time(tmp_path, clock):
    path = str(tmp_path / "m.json")
    steps = [
        Updates(plan=wave(("web", "hv1", "hv2"))),
        Updates(started=wave(("web", "hv1", "hv2"))),
        Updates(started=[{"vm": "web", "job_id": "j1.1"}]),
        Updates(finished=[{"vm": "web", "result": MIGRATED}]),
    ]
    for updates in steps:
        assert ensure_manifest(path, "evacuate", updates, clock=clock).changed
        assert not ensure_manifest(path, "evacuate", updates, clock=clock).changed
    # The rerun of the whole workflow: the VM is where the move put it and the planner has nothing left.
    assert not ensure_manifest(path, "evacuate", Updates(where={"web": "hv2"}, plan=[]), clock=clock).changed
    move = read_manifest(path).moves[0]
    assert (move.state, move.job_id, move.attempt, move.result) == (DONE, "j1.1", 1, "migrated")


def test_an_interrupted_wave_is_resumed_from_the_manifest(tmp_path, clock):
    path = str(tmp_path / "m.json")
    ensure_manifest(path, "evacuate", Updates(plan=wave(("web", "hv1", "hv2"), ("db", "hv1", "hv3"))), clock=clock)
    ensure_manifest(path, "evacuate", Updates(started=[{"vm": "web", "job_id": "j1.1"}, {"vm": "db"}]), clock=clock)
    # Killed here. The rerun waits for job j1.1 (running says so), records it, then settles db from where it runs.
    state = ensure_manifest(path, "evacuate", Updates(), clock=clock)
    assert manifest_view(state.after)["running"] == [
        {"vm": "web", "uuid": None, "from": "hv1", "to": "hv2", "job_id": "j1.1"},
        {"vm": "db", "uuid": None, "from": "hv1", "to": "hv3", "job_id": None},
    ]
    ensure_manifest(path, "evacuate", Updates(finished=[{"vm": "web", "result": MIGRATED}]), clock=clock)
    state = ensure_manifest(path, "evacuate", Updates(where={"web": "hv2", "db": "hv1"},
                                                      plan=wave(("db", "hv1", "hv3"))), clock=clock)
    view = manifest_view(state.after)
    assert view["pending"] == [{"vm": "db", "uuid": None, "from": "hv1", "to": "hv3"}]
    assert view["running"] == []


# --- manifest_view ---------------------------------------------------------------------------

def test_manifest_view(clock):
    manifest = started(clock, ("web", "hv1", "hv2", "u-web"), ("db", "hv3", "hv2"), ("cache", "hv1", "hv3"),
                       ("mail", "hv1", "hv2"), ("dns", "hv1", "hv3"))
    manifest = mark_done(manifest, "web", clock=clock)
    manifest = mark_done(manifest, "db", clock=clock)
    manifest = mark_running(manifest, "cache", job_id="j1.1", clock=clock)
    manifest = mark_failed(manifest, "mail", "stalled", clock=clock)
    view = manifest_view(manifest)
    assert view["manifest"] == manifest_to_dict(manifest)
    assert view["pending"] == [{"vm": "dns", "uuid": None, "from": "hv1", "to": "hv3"}]
    assert view["running"] == [{"vm": "cache", "uuid": None, "from": "hv1", "to": "hv3", "job_id": "j1.1"}]
    assert view["counts"] == {PLANNED: 1, RUNNING: 1, DONE: 2, FAILED: 1, SKIPPED: 0}
    assert view["returns_home"] == [
        {"vm": "web", "uuid": "u-web", "from": "hv2", "to": "hv1"},
        {"vm": "db", "uuid": None, "from": "hv2", "to": "hv3"},
    ]
    assert manifest_view(manifest, home_hosts=["hv3"])["returns_home"] == [
        {"vm": "db", "uuid": None, "from": "hv2", "to": "hv3"}]


def test_maintained_hosts_are_recorded_once_with_their_first_time_and_survive_a_round_trip(tmp_path):
    path = str(tmp_path / "window.json")
    first = _manifest.ensure_manifest(path, "maintenance_window", _manifest.Updates(maintained=["hv1"]),
                                      clock=lambda: "2026-11-25T03:00:00Z")
    assert first.changed and first.after.maintained == {"hv1": "2026-11-25T03:00:00Z"}
    again = _manifest.ensure_manifest(path, "maintenance_window", _manifest.Updates(maintained=["hv1"]),
                                      clock=lambda: "2026-11-25T04:00:00Z")
    assert not again.changed and again.after.maintained == {"hv1": "2026-11-25T03:00:00Z"}
    more = _manifest.ensure_manifest(path, None, _manifest.Updates(maintained=["hv2"]),
                                     clock=lambda: "2026-11-25T05:00:00Z")
    assert more.changed
    assert _manifest.read_manifest(path).maintained == {"hv1": "2026-11-25T03:00:00Z", "hv2": "2026-11-25T05:00:00Z"}


def test_a_maintained_host_must_be_a_host_name():
    manifest = _manifest.new_manifest("maintenance_window", clock=lambda: "t")
    with pytest.raises(_manifest.ManifestError):
        _manifest.mark_maintained(manifest, ["qemu+ssh://root:pw@hv1/system"])
