# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The libvirt glue's own logic: where a domain runs, the prediction it asks for, the migration job."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import types

import pytest

from ansible_collections.strata.migration.plugins.module_utils._convergence import MigrationInputs, choose_strategy
from ansible_collections.strata.migration.plugins.module_utils._engine import (
    Timeline,
    engine_options,
    monitor,
    plan_migration,
)
from ansible_collections.strata.migration.plugins.module_utils._inventory import BalloonFacts, DomainFacts
from ansible_collections.strata.migration.plugins.module_utils import _engine, _migrate
from ansible_collections.strata.migration.plugins.module_utils._libvirt import ERR_NO_DOMAIN
from ansible_collections.strata.migration.plugins.module_utils._migrate import (
    LibvirtMigrationJob,
    _active,
    _prediction_dict,
    _prediction_for,
    _Predicted,
    _runs_on,
    placement,
)
from ansible_collections.strata.migration.plugins.module_utils._preflight import (
    DEFAULT_PREDICTION_BANDWIDTH_MIBPS,
    preflight_options,
)
from ansible_collections.strata.migration.plugins.module_utils._start_signal import (
    CANCEL,
    START,
    StartNotGivenError,
    StartSignal,
    write_start_signal,
)
from ansible_collections.strata.migration.tests.unit.plugins.module_utils.fakes import FakeClock, FakeLibvirtError

MIB = 1024 * 1024


def domain(memory_max_mib=512, memory_current_mib=512):
    return DomainFacts(
        name="web1", uuid="6f0c8a4e-0000-4000-8000-000000000001", state="running", persistent=True,
        job_running=False, domain_type="qemu", arch="x86_64", machine_type="pc-i440fx-7.2", vcpus=1,
        cpu_mode="custom", cpu_model="qemu64", memory_max_mib=memory_max_mib,
        memory_current_mib=memory_current_mib,
        balloon=BalloonFacts(has_device=True, model="virtio", stats_period_s=1), disks=[], interfaces=[],
        hostdevs=[],
    )


def where(state, defined=True, reason=1, persistent=True):
    return {"defined": defined if state is not None else False, "state": state, "reason": reason,
            "persistent": persistent}


# ---- where the domain runs ---------------------------------------------------


@pytest.mark.parametrize("state, active", [
    (None, False), ("shutoff", False), ("crashed", False),
    ("running", True), ("paused", True), ("blocked", True), ("shutdown", True), ("pmsuspended", True),
])
def test_active(state, active):
    assert _active(where(state)) is active


@pytest.mark.parametrize("source, destination, expected", [
    ("running", None, "is running on the source"),
    ("paused", "shutoff", "is paused on the source"),
    (None, "running", "is running on the destination"),
    ("shutoff", "paused", "is paused on the destination"),
    ("paused", "running", "is paused on the source and is running on the destination"),
    (None, None, "runs on neither host"),
    ("shutoff", "crashed", "runs on neither host"),
])
def test_runs_on(source, destination, expected):
    assert _runs_on({"source": where(source), "destination": where(destination)}) == expected


def test_runs_on_names_an_unreadable_host():
    unreadable = {"defined": None, "state": None, "reason": None, "persistent": None, "error": "socket closed"}
    assert _runs_on({"source": where("running"), "destination": unreadable}) == "is running on the source"
    assert _runs_on({"source": where(None), "destination": unreadable}) == (
        "could not be located: the destination host could not be read"
    )


class FakePlacedDomain:
    def __init__(self, state, reason, persistent):
        self._state, self._reason, self._persistent = state, reason, persistent

    def state(self):
        return [self._state, self._reason]

    def isPersistent(self):
        return int(self._persistent)


class FakeConn:
    def __init__(self, domains=None, error=None):
        self.domains = domains or {}
        self.error = error

    def lookupByName(self, name):
        if self.error is not None:
            raise self.error
        if name not in self.domains:
            raise FakeLibvirtError("Domain not found: no domain with matching name '%s'" % name, ERR_NO_DOMAIN)
        return self.domains[name]


def test_placement_of_a_defined_domain():
    conn = FakeConn({"web1": FakePlacedDomain(3, 2, False)})
    assert placement(conn, "web1") == {"defined": True, "state": "paused", "reason": 2, "persistent": False}


def test_placement_of_an_absent_domain():
    assert placement(FakeConn(), "web1") == {"defined": False, "state": None, "reason": None, "persistent": False}


def test_placement_passes_other_libvirt_errors_on():
    error = FakeLibvirtError("Cannot recv data: connection reset", 38)
    with pytest.raises(FakeLibvirtError):
        placement(FakeConn(error=error), "web1")


# ---- the prediction ----------------------------------------------------------


def test_no_measurement_no_prediction():
    assert _prediction_for(domain(), 512.0, None, engine_options()) == _Predicted()
    assert _prediction_dict(None, None) is None


def test_prediction_for_auto_is_the_models_choice_with_its_inputs():
    options = engine_options(bandwidth_mibps=100, max_downtime_ms=250, allow_postcopy=True)
    predicted = _prediction_for(domain(memory_max_mib=512), 200.0, 5.0, options)
    prediction, inputs = predicted.prediction, predicted.inputs
    expected_inputs = MigrationInputs(memory_mib=200.0, dirty_rate_mibps=5.0, bandwidth_mibps=100,
                                      max_downtime_ms=250, zero_page_mib=312.0)
    assert prediction == choose_strategy(expected_inputs, True)[0]
    assert inputs == dict(expected_inputs.to_dict(), bandwidth_assumed=False)
    assert inputs["zero_page_mib"] == 312.0


def test_prediction_assumes_a_bandwidth_when_unlimited():
    predicted = _prediction_for(domain(), 512.0, 5.0, engine_options(bandwidth_mibps=0))
    prediction, inputs = predicted.prediction, predicted.inputs
    assert inputs["bandwidth_mibps"] == DEFAULT_PREDICTION_BANDWIDTH_MIBPS
    assert inputs["bandwidth_assumed"] is True
    assert prediction is not None


def test_prediction_zero_pages_never_negative():
    # The estimate can exceed the configured maximum (QEMU's own overhead).
    inputs = _prediction_for(domain(memory_max_mib=512), 600.0, 5.0, engine_options()).inputs
    assert inputs["zero_page_mib"] == 0


SHAKING = dict(bandwidth_mibps=60, max_downtime_ms=300)   # 200 MiB/s dirtied against 60 MiB/s sent


@pytest.mark.parametrize("allow_postcopy", [False, True])
def test_prediction_for_auto_when_precopy_does_not_converge(allow_postcopy):
    options = engine_options(allow_postcopy=allow_postcopy, **SHAKING)
    predicted = _prediction_for(domain(256, 256), 256.0, 200.0, options)
    prediction = predicted.prediction
    # The shaking detector learns about pre-copy even when a post-copy strategy (which converges) was chosen.
    assert predicted.precopy_converges is False
    if allow_postcopy:
        assert prediction.strategy in ("postcopy", "layered")
        assert prediction.converges is True
        assert predicted.auto_converge is None
    else:
        # What runs is pre-copy under a throttle sized from the dirty rate, and that is what is predicted.
        assert predicted.auto_converge == (99, 1)
        assert prediction.strategy == "layered"
        assert prediction.postcopy_s is None
        assert prediction.throttle_percents[:2] == (0, 0) and prediction.throttle_percents[2] == 99
        assert prediction.reason.startswith("Pre-copy alone would not converge")
        assert "auto-converge from 99%" in prediction.reason


@pytest.mark.parametrize("strategy, allow_postcopy", [("precopy", False), ("precopy", True),
                                                      ("postcopy", True), ("layered", True)])
def test_prediction_for_an_explicit_strategy_is_that_strategys(strategy, allow_postcopy):
    options = engine_options(strategy=strategy, allow_postcopy=allow_postcopy, **SHAKING)
    prediction = _prediction_for(domain(256, 256), 256.0, 200.0, options).prediction
    assert prediction.strategy == strategy
    expected = MigrationInputs(memory_mib=256.0, dirty_rate_mibps=200.0, bandwidth_mibps=60, max_downtime_ms=300)
    candidates = choose_strategy(expected, allow_postcopy)[1]
    assert prediction == [c for c in candidates if c.strategy == strategy][0]


def test_explicit_layered_without_postcopy_predicts_like_auto():
    auto = _prediction_for(domain(256, 256), 256.0, 200.0, engine_options(**SHAKING))
    layered = _prediction_for(domain(256, 256), 256.0, 200.0, engine_options(strategy="layered", **SHAKING))
    # Both run the same plan: pre-copy with the throttle set, sized alike.
    assert plan_migration(engine_options(**SHAKING), auto.prediction, 256, 200.0).strategy == "layered"
    assert layered == auto
    assert layered.prediction.postcopy_s is None


def test_prediction_dict_carries_the_inputs():
    predicted = _prediction_for(domain(), 512.0, 5.0, engine_options())
    prediction, inputs = predicted.prediction, predicted.inputs
    described = _prediction_dict(prediction, inputs)
    assert described == dict(prediction.to_dict(), inputs=inputs)
    assert described["strategy"] == prediction.strategy


# ---- LibvirtMigrationJob -----------------------------------------------------


class FakeMigratingDomain:
    """Records calls; migrateToURI3 blocks until `release` is set, then raises `migrate_error` if any."""

    def __init__(self, migrate_error=None, stats=None, stats_error=None, block=False):
        self.calls = []
        self.migrate_error = migrate_error
        self.job_stats = stats if stats is not None else {"type": 0}
        self.stats_error = stats_error
        self.events = FakeEventConn()
        self.release = threading.Event()
        if not block:
            self.release.set()

    def migrateToURI3(self, uri, params, flags):
        self.calls.append(("migrateToURI3", uri, params, flags, threading.current_thread().name))
        self.release.wait(10)
        if self.migrate_error is not None:
            raise self.migrate_error
        return 0

    def jobStats(self, flags):
        self.calls.append(("jobStats", flags))
        if self.stats_error is not None:
            raise self.stats_error
        return self.job_stats

    def migrateSetMaxDowntime(self, downtime_ms, flags):
        self.calls.append(("migrateSetMaxDowntime", downtime_ms, flags))

    def migrateStartPostCopy(self, flags):
        self.calls.append(("migrateStartPostCopy", flags))

    def abortJob(self):
        self.calls.append(("abortJob",))

    def connect(self):
        return self.events


class FakeEventConn:
    """Registers domain event callbacks; fire() delivers the job-completed event."""

    def __init__(self, refuse=None):
        self.callbacks = {}
        self.refuse = refuse
        self.deregistered = []

    def domainEventRegisterAny(self, dom, event_id, callback, opaque):
        if self.refuse is not None:
            raise self.refuse
        self.callbacks[len(self.callbacks) + 1] = (dom, event_id, callback, opaque)
        return len(self.callbacks)

    def domainEventDeregisterAny(self, callback_id):
        self.deregistered.append(callback_id)

    def fire(self, stats):
        for dom, event_id, callback, opaque in self.callbacks.values():
            if event_id == _migrate.EVENT_ID_JOB_COMPLETED:
                callback(self, dom, stats, opaque)

    def lifecycle(self, event, detail):
        for dom, event_id, callback, opaque in self.callbacks.values():
            if event_id == _migrate.EVENT_ID_LIFECYCLE:
                callback(self, dom, event, detail, opaque)


PEER = "qemu+tcp://127.0.0.12/system"


def test_job_runs_migrate_to_uri3_in_a_thread_with_a_copy_of_the_params():
    dom = FakeMigratingDomain()
    job = LibvirtMigrationJob(dom, dom, PEER)
    params = {"bandwidth": 60}
    job.start(1 | 2, params)
    assert job.wait(10) is True
    assert job.error() is None
    (name, uri, sent, flags, thread), = dom.calls
    assert (name, uri, sent, flags) == ("migrateToURI3", PEER, {"bandwidth": 60}, 3)
    assert sent is not params
    assert thread != threading.current_thread().name


def test_job_wait_is_false_while_libvirt_has_not_returned():
    dom = FakeMigratingDomain(block=True)
    job = LibvirtMigrationJob(dom, dom, PEER)
    job.start(1, {})
    try:
        assert job.wait(0.01) is False
        assert job.error() is None
    finally:
        dom.release.set()
    assert job.wait(10) is True


def test_job_error_is_libvirts_message():
    dom = FakeMigratingDomain(migrate_error=FakeLibvirtError("operation failed: client socket is closed", 1))
    job = LibvirtMigrationJob(dom, dom, PEER)
    job.start(1, {})
    assert job.wait(10) is True
    assert job.error().startswith("operation failed: client socket is closed")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_job_error_when_the_call_raises_something_else():
    dom = FakeMigratingDomain(migrate_error=TypeError("migrateToURI3() argument 2 must be dict"))
    job = LibvirtMigrationJob(dom, dom, PEER)
    job.start(1, {})
    assert job.wait(10) is True
    assert job.error() is not None


def test_job_stats_reads_the_running_job():
    dom = FakeMigratingDomain(stats={"type": 2, "memory_processed": 1})
    job = LibvirtMigrationJob(dom, dom, PEER)
    assert job.stats() == {"type": 2, "memory_processed": 1}
    assert dom.calls == [("jobStats", 0)]


def test_job_stats_none_when_libvirt_cannot_read_them():
    dom = FakeMigratingDomain(stats_error=FakeLibvirtError("Domain not found", ERR_NO_DOMAIN))
    assert LibvirtMigrationJob(dom, dom, PEER).stats() is None


def test_job_controls_go_to_the_domain():
    dom = FakeMigratingDomain()
    job = LibvirtMigrationJob(dom, dom, PEER)
    job.set_max_downtime(75)
    job.start_postcopy()
    job.abort()
    assert dom.calls == [("migrateSetMaxDowntime", 75, 0), ("migrateStartPostCopy", 0), ("abortJob",)]


def test_monitor_drives_the_libvirt_job():
    options = engine_options(strategy="precopy")
    the_plan = plan_migration(options, None, 256, None)
    dom = FakeMigratingDomain()
    timeline = Timeline(FakeClock())
    outcome = monitor(LibvirtMigrationJob(dom, dom, PEER), the_plan, options, None, timeline)
    assert outcome.completed is True
    assert outcome.error is None
    assert dom.calls[0][:4] == ("migrateToURI3", PEER, {}, the_plan.flags)
    assert timeline.events[-1]["event"] == "complete"


def test_monitor_reports_the_libvirt_failure():
    options = engine_options(strategy="precopy")
    the_plan = plan_migration(options, None, 256, None)
    dom = FakeMigratingDomain(migrate_error=FakeLibvirtError("unable to connect to server", 38))
    outcome = monitor(LibvirtMigrationJob(dom, dom, PEER), the_plan, options, None, Timeline(FakeClock()))
    assert outcome.completed is False
    assert outcome.error.startswith("unable to connect to server")
    assert outcome.aborted_by is None


def test_job_migrates_on_its_own_connection_and_watches_on_the_other():
    migrating, watched = FakeMigratingDomain(), FakeMigratingDomain()
    job = LibvirtMigrationJob(migrating, watched, PEER)
    job.start(1, {})
    assert job.wait(10) is True
    job.stats()
    job.abort()
    assert [c[0] for c in migrating.calls] == ["migrateToURI3"]
    assert [c[0] for c in watched.calls] == ["jobStats", "abortJob"]


def test_job_completed_event_gives_the_final_statistics():
    dom = FakeMigratingDomain()
    job = LibvirtMigrationJob(dom, dom, PEER)
    job.start(1, {})
    assert job.wait(10) is True
    assert [registration[1] for registration in dom.events.callbacks.values()] == [
        _migrate.EVENT_ID_JOB_COMPLETED, _migrate.EVENT_ID_LIFECYCLE]
    dom.events.fire({"time_elapsed": 5794, "downtime": 19})
    assert job.completed_stats(0.01) == {"time_elapsed": 5794, "downtime": 19}
    job.close()
    assert dom.events.deregistered == [1, 2]


def test_the_source_pausing_for_the_migration_tells_the_switch():
    dom = FakeMigratingDomain()
    job = LibvirtMigrationJob(dom, dom, PEER)
    told = []
    job.start(1, {}, on_switch=lambda: told.append("switch"))
    dom.events.lifecycle(3, 0)  # paused by the user: not the switch
    assert not job.switching_over() and told == []
    dom.events.lifecycle(3, 1)  # paused for the migration's end
    assert job.switching_over() and told == ["switch"]
    dom.events.lifecycle(4, 1)  # running again on the source: the switch failed
    assert not job.switching_over()
    job.wait(10)
    job.close()


def test_job_without_the_event_waits_for_nothing():
    dom = FakeMigratingDomain()
    dom.events = FakeEventConn(refuse=FakeLibvirtError("no events", 3))
    job = LibvirtMigrationJob(dom, dom, PEER)
    job.start(1, {})
    assert job.wait(10) is True
    assert job.completed_stats(5.0) is None
    job.close()
    assert dom.events.deregistered == []


def test_job_completed_event_that_never_comes_is_waited_for_boundedly():
    dom = FakeMigratingDomain()
    job = LibvirtMigrationJob(dom, dom, PEER)
    job.start(1, {})
    assert job.wait(10) is True
    assert job.completed_stats(0.01) is None


# ---- post-copy recovery ----------------------------------------------------------


class FakeBrokenPostcopyDomain(FakeMigratingDomain):
    """Paused on its source after a broken post-copy; each resume attempt follows `attempts`.

    An attempt is an exception to raise at once, "ok", or "hang" (blocks until abortJobFlags).
    """

    def __init__(self, attempts, state=(3, 13)):
        super().__init__(stats={"type": 2, "memory_processed": 5 * MIB})
        self.attempts = list(attempts)
        self.current_state = state
        self.unpaused = threading.Event()

    def state(self):
        return list(self.current_state)

    def migrateToURI3(self, uri, params, flags):
        self.calls.append(("migrateToURI3", uri, params, flags, threading.current_thread().name))
        attempt = self.attempts.pop(0)
        if attempt == "hang":
            self.unpaused.wait(10)
            raise FakeLibvirtError("operation failed: migration was paused", 9)
        if attempt != "ok":
            raise attempt
        self.current_state = (5, 3)
        return 0

    def abortJobFlags(self, flags):
        self.calls.append(("abortJobFlags", flags))
        self.unpaused.set()


class FakeClient:
    """A LibvirtClient already connected to `conn`."""

    def __init__(self, uri, conn=None):
        self.uri, self.conn, self.connect_timeout_s = uri, conn, 5
        self.closed = False

    def another(self):
        return FakeClient(self.uri, self.conn)

    def connect_in_background(self):
        pass

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def recovery_run(recovery_timeout_s=60, stall_timeout_s=30):
    slept = []
    run = _migrate._Run(
        FakeClient("qemu+tcp://127.0.0.11/system"), FakeClient(PEER), "web1",
        engine_options(allow_postcopy=True, stall_timeout_s=stall_timeout_s), None, True,
        _migrate.CompactionSettings(), None, recovery_timeout_s, time.monotonic, slept.append,
    )
    the_plan = plan_migration(engine_options(strategy="postcopy", allow_postcopy=True), None, 256, None)
    failed = _engine.MonitorOutcome(
        completed=False, error="broken", aborted_by=None, hint=None, postcopy_started=True,
        still_running=False, last_sample=None, shaking=[], downtime_ms=300,
    )
    return run, the_plan, failed, slept


def recovery_events(run):
    return [(e["event"], e.get("attempt")) for e in run.timeline.events]


def test_recovery_waits_then_retries_a_refused_resume_until_it_completes():
    dom = FakeBrokenPostcopyDomain([FakeLibvirtError("QEMU reports migration is still running", 55), "ok"])
    run, the_plan, failed, slept = recovery_run()
    outcome, _stats = run.recover_postcopy(dom, dom, the_plan, failed)
    assert outcome.completed and outcome.error is None
    resumes = [c for c in dom.calls if c[0] == "migrateToURI3"]
    assert len(resumes) == 2
    assert all(c[3] == the_plan.flags | _migrate.MIGRATE_POSTCOPY_RESUME for c in resumes)
    # A first wait for the source to notice the break, then one between the attempts.
    assert slept == [_migrate.POSTCOPY_RECOVERY_RETRY_S, _migrate.POSTCOPY_RECOVERY_RETRY_S]
    assert recovery_events(run) == [
        ("postcopy_recovery", 1), ("failed", None), ("postcopy_recovery", 2), ("complete", None)
    ]


def test_a_stalled_resume_is_paused_again_and_the_failure_says_so():
    dom = FakeBrokenPostcopyDomain(["hang"])
    run, the_plan, failed, _slept = recovery_run(recovery_timeout_s=60, stall_timeout_s=1)
    dom.attempts.append("ok")  # the next attempt, after the pause, completes
    outcome, _stats = run.recover_postcopy(dom, dom, the_plan, failed)
    assert ("abortJobFlags", _migrate.ABORT_JOB_POSTCOPY) in dom.calls
    failures = [e for e in run.timeline.events if e["event"] == "failed"]
    assert "sent nothing for 1 s" in failures[0]["error"]
    assert "paused again" in failures[0]["error"]
    assert outcome.completed


def test_no_recovery_when_its_bound_is_zero():
    dom = FakeBrokenPostcopyDomain(["ok"])
    run, the_plan, failed, slept = recovery_run(recovery_timeout_s=0)
    outcome, stats = run.recover_postcopy(dom, dom, the_plan, failed)
    assert outcome is failed and stats is None
    assert dom.calls == [] and slept == []


def test_no_resume_when_the_source_is_not_waiting_for_one():
    dom = FakeBrokenPostcopyDomain(["ok"], state=(1, 1))
    run, the_plan, failed, _slept = recovery_run()
    outcome, _stats = run.recover_postcopy(dom, dom, the_plan, failed)
    assert not outcome.completed
    assert [c for c in dom.calls if c[0] == "migrateToURI3"] == []
    assert run.timeline.events[-1]["note"] == "the source is not waiting for recovery"


# ---- the progress file -------------------------------------------------------------


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_progress_file_holds_the_record_as_json(tmp_path):
    path = str(tmp_path / "web1.json")
    assert _migrate.write_json_file(path, {"phase": "migrating", "percent": 12.5, "pass": None}) is True
    assert read_json(path) == {"phase": "migrating", "percent": 12.5, "pass": None}
    # Readable by a watcher running as another user.
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_progress_file_is_replaced_whole_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "web1.json")
    _migrate.write_json_file(path, {"phase": "migrating", "detail": "x" * 10000})
    _migrate.write_json_file(path, {"phase": "done"})
    assert read_json(path) == {"phase": "done"}
    assert os.listdir(str(tmp_path)) == ["web1.json"]


def test_a_reader_sees_the_old_record_until_the_new_one_is_complete(tmp_path, monkeypatch):
    path = str(tmp_path / "web1.json")
    _migrate.write_json_file(path, {"phase": "preparing"})
    seen = []
    real_replace = os.replace

    def replace(source, target):
        # Just before the rename: the file still holds the old record, the new one waits whole beside it.
        seen.append((read_json(target), read_json(source), os.path.dirname(source)))
        real_replace(source, target)

    monkeypatch.setattr(_migrate.os, "replace", replace)
    _migrate.write_json_file(path, {"phase": "migrating"})
    assert seen == [({"phase": "preparing"}, {"phase": "migrating"}, str(tmp_path))]
    assert read_json(path) == {"phase": "migrating"}


def test_a_record_that_cannot_be_written_is_ignored_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "web1.json")
    _migrate.write_json_file(path, {"phase": "preparing"})
    assert _migrate.write_json_file(path, {"phase": object()}) is False
    assert os.listdir(str(tmp_path)) == ["web1.json"]
    assert read_json(path) == {"phase": "preparing"}


def test_a_failed_rename_is_ignored_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = str(tmp_path / "web1.json")

    def replace(_source, _target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_migrate.os, "replace", replace)
    assert _migrate.write_json_file(path, {"phase": "preparing"}) is False
    assert os.listdir(str(tmp_path)) == []


def test_a_directory_removed_meanwhile_is_ignored(tmp_path):
    assert _migrate.write_json_file(str(tmp_path / "gone" / "web1.json"), {"phase": "preparing"}) is False


def test_check_progress_file_gives_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _migrate.check_progress_file("web1.json") == str(tmp_path / "web1.json")
    assert _migrate.check_progress_file(str(tmp_path / "web1.json")) == str(tmp_path / "web1.json")


def test_check_progress_file_refuses_a_missing_directory(tmp_path):
    with pytest.raises(_engine.MigrationError) as caught:
        _migrate.check_progress_file(str(tmp_path / "missing" / "web1.json"))
    assert caught.value.details["option"] == "progress_file"
    assert str(caught.value).startswith("progress_file ")
    assert "%s does not exist" % (tmp_path / "missing") in str(caught.value)


def test_check_progress_file_refuses_a_directory(tmp_path):
    with pytest.raises(_engine.MigrationError) as caught:
        _migrate.check_progress_file(str(tmp_path))
    assert caught.value.details["option"] == "progress_file"
    assert "is a directory" in str(caught.value)


def test_check_progress_file_refuses_a_directory_it_cannot_write(tmp_path, monkeypatch):
    # The tests may run as root, whom file modes do not stop: the access check is faked.
    monkeypatch.setattr(_migrate.os, "access", lambda path, mode: path != str(tmp_path))
    with pytest.raises(_engine.MigrationError) as caught:
        _migrate.check_progress_file(str(tmp_path / "web1.json"))
    assert caught.value.details["option"] == "progress_file"
    assert "not writable" in str(caught.value)


def progress_records(monkeypatch):
    """Every record run_live_migration writes, in order (they are written too)."""
    records = []
    real_write = _migrate.write_json_file

    def write(path, record):
        records.append(record)
        return real_write(path, record)

    monkeypatch.setattr(_migrate, "write_json_file", write)
    return records


def run_with_progress(path, source_conn, destination_conn=None, check_mode=False):
    return _migrate.run_live_migration(
        FakeClient("qemu+tcp://127.0.0.11/system", source_conn), FakeClient(PEER, destination_conn or FakeConn()),
        "web1", engine_options(), None, progress_file=path, check_mode=check_mode,
    )


def test_a_task_that_fails_leaves_failed_in_the_progress_file(tmp_path, monkeypatch):
    records = progress_records(monkeypatch)
    path = str(tmp_path / "web1.json")
    broken = FakeConn(error=FakeLibvirtError("Cannot recv data: connection reset", 38))
    with pytest.raises(_engine.MigrationError):
        run_with_progress(path, broken)
    assert [r["phase"] for r in records] == ["preparing", "failed"]
    assert read_json(path)["phase"] == "failed"
    assert os.listdir(str(tmp_path)) == ["web1.json"]


def test_a_libvirt_error_names_the_domain_the_cause_and_what_to_do(tmp_path):
    broken = FakeConn(error=FakeLibvirtError("Cannot recv data: connection reset", 38))
    with pytest.raises(_engine.MigrationError) as caught:
        run_with_progress(str(tmp_path / "web1.json"), broken)
    message = str(caught.value)
    assert message.startswith("live migration of domain 'web1' stopped on a libvirt error: Cannot recv data")
    assert "its timeline shows the last step taken" in message
    assert message.endswith("run the task again once libvirt answers")
    assert caught.value.details["libvirt_error_code"] == 38
    assert caught.value.details["timeline"] == []


def test_a_bug_also_leaves_failed_and_is_not_disguised(tmp_path):
    path = str(tmp_path / "web1.json")
    with pytest.raises(RuntimeError):
        run_with_progress(path, FakeConn(error=RuntimeError("a bug")))
    assert read_json(path)["phase"] == "failed"


def test_check_mode_writes_no_progress(tmp_path):
    broken = FakeConn(error=FakeLibvirtError("Cannot recv data: connection reset", 38))
    with pytest.raises(_engine.MigrationError):
        run_with_progress(str(tmp_path / "web1.json"), broken, check_mode=True)
    assert os.listdir(str(tmp_path)) == []


def test_a_domain_already_on_the_destination_goes_from_preparing_to_done(tmp_path, monkeypatch):
    records = progress_records(monkeypatch)
    monkeypatch.setattr(_migrate._Run, "measure", lambda self, dirty_rate_mibps=None: (None, types.SimpleNamespace(already_migrated=True)))
    path = str(tmp_path / "web1.json")
    result = run_with_progress(path, FakeConn(), FakeConn({"web1": FakePlacedDomain(1, 1, True)}))
    assert result["already_migrated"] is True
    assert [r["phase"] for r in records] == ["preparing", "done"]
    assert read_json(path)["domain"] == "web1"


def test_finishing_carries_the_figures_of_the_completed_job():
    records = []
    run = _migrate._Run(
        FakeClient("qemu+tcp://127.0.0.11/system", FakeConn()),
        FakeClient(PEER, FakeConn({"web1": FakePlacedDomain(1, 1, True)})),
        "web1", engine_options(), None, True, _migrate.CompactionSettings(), None, 0, time.monotonic, time.sleep,
        records.append,
    )
    completed = {"type": 3, "time_elapsed": 900, "memory_processed": 64 * MIB, "memory_total": 256 * MIB,
                 "memory_iteration": 3}
    run.finish_success(completed, None, compacted=False)
    assert [r["phase"] for r in records] == ["finishing"]
    assert {key: records[0][key] for key in ("percent", "remaining_mib", "transferred_mib", "pass")} == {
        "percent": 100.0, "remaining_mib": 0.0, "transferred_mib": 64.0, "pass": 3,
    }


@pytest.mark.parametrize("error", [
    "End of file while reading data: : Input/output error",
    "Cannot recv data: Connection reset by peer",
])
def test_a_lost_peer_connection_says_it_may_hide_the_destinations_error(error):
    explained = _migrate.explain_libvirt_error(error)
    assert explained.startswith(error)
    assert "lost its connection to the destination" in explained
    assert "destination's libvirtd log" in explained


def test_other_libvirt_errors_are_given_as_they_are():
    assert _migrate.explain_libvirt_error("operation failed: migration out job: canceled by client") == (
        "operation failed: migration out job: canceled by client")
    assert _migrate.explain_libvirt_error(None) == "no error from libvirt"


class FakeWaitingDomain:
    """A running domain with no job, whose balloon last reported at 7."""

    def state(self):
        return [1, 1]

    def jobInfo(self):
        return [0]

    def memoryStats(self):
        return {"last_update": 7}


def waiting_run(monkeypatch, records, clock):
    measured = []

    def measure(dom, seconds, timeout_s, sleep, clock):
        measured.append(seconds)
        return 42.0

    monkeypatch.setattr(_migrate, "measure_dirty_rate", measure)
    run = _migrate._Run(
        FakeClient("qemu+tcp://127.0.0.11/system", FakeConn({"web1": FakeWaitingDomain()})), FakeClient(PEER, FakeConn()),
        "web1", engine_options(bandwidth_mibps=60), preflight_options("web1", PEER, measure_dirty_rate_s=1,
                                                                      bandwidth_mibps=60),
        True, _migrate.CompactionSettings(), None, 0, clock, clock.sleep, records.append,
    )
    return run, measured


def test_a_job_with_a_start_file_measures_then_waits_for_the_start_and_takes_its_bandwidth(tmp_path, monkeypatch):
    path = str(tmp_path / "web1.start")
    write_start_signal(path, StartSignal(START, 20, time.time() + 600))
    records, clock = [], FakeClock()
    run, measured = waiting_run(monkeypatch, records, clock)
    run.prepare_and_wait(path)
    assert measured == [1]
    assert [r["phase"] for r in records] == ["ready"]
    assert run.options.bandwidth_mibps == 20 and run.preflight_options.bandwidth_mibps == 20
    assert run.stats_seen == 7
    assert run.known_dirty_rate() == 42.0
    clock.sleep(_migrate.DIRTY_RATE_FRESH_S + 1)
    assert run.known_dirty_rate() is None  # too old to plan with: measured again


def test_a_cancelled_start_changes_nothing(tmp_path, monkeypatch):
    path = str(tmp_path / "web1.start")
    write_start_signal(path, StartSignal(CANCEL, None, time.time() + 600))
    records, clock = [], FakeClock()
    run, _measured = waiting_run(monkeypatch, records, clock)
    with pytest.raises(StartNotGivenError, match="was not started"):
        run.prepare_and_wait(path)
    assert run.options.bandwidth_mibps == 60
