# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a plan's moves on the controller: each a background live_migrate job, started as slots free up."""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
import typing as t
from dataclasses import dataclass, field

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.strata.migration.plugins.module_utils._engine import JOB_NONE
from ansible_collections.strata.migration.plugins.module_utils._libvirt import (
    LibvirtClient,
    describe_libvirt_error,
    find_domain,
)
from ansible_collections.strata.migration.plugins.module_utils._manifest import (
    RUNNING,
    ManifestError,
    Updates,
    ensure_manifest,
)
from ansible_collections.strata.migration.plugins.module_utils._migration_options import (
    argument_spec,
    per_move_option_names,
)
from ansible_collections.strata.migration.plugins.module_utils._progress import (
    MIGRATED_PHASES,
    TRANSFER_PHASES,
    Progress,
    progress_line,
    read_progress,
)
from ansible_collections.strata.migration.plugins.module_utils._start_signal import (
    CANCEL,
    HEARTBEAT_STALE_S,
    START,
    WAIT,
    StartSignal,
    refresh_start_signal,
    write_start_signal,
)
from ansible_collections.strata.migration.plugins.modules.run_moves import ARGUMENT_SPEC
from ansible_collections.strata.migration.plugins.plugin_utils._async_jobs import (
    job_finished,
    missing_job_message,
    module_result,
    read_job_file,
)
from ansible_collections.strata.migration.plugins.plugin_utils._scheduler import (
    MoveScheduler,
    ScheduledMove,
    ScheduleError,
    bandwidth_share_mibps,
    scheduled_moves,
)

display = Display()

# live_migrate's options, declared once; the controller sets the per-move ones (and the connection's).
MIGRATE_SPEC = argument_spec()
PER_MOVE_OPTIONS = per_move_option_names() | {"uri", "connect_timeout_s"}
# A background job may outlive the migration's own bound by this much (preparation, post-copy recovery, restore).
JOB_GRACE_S = 900
# How often the jobs' files are looked at: cheap local reads, so that a free slot is filled at once.
CHECK_INTERVAL_S = 0.1
# async_wrapper may return before its job writes the job file (it waits 2.5 s at most): a job this
# task started counts as starting, not lost, for this long without its file.
JOB_FILE_GRACE_S = 60
# Poll period while waiting for a migration job no manifest entry has an id for.
UNRECORDED_POLL_S = 1.0


@dataclass
class Job:
    """One background migration this task watches."""

    move: ScheduledMove
    jid: t.Optional[str]
    progress_file: t.Optional[str]
    deadline: float
    started_s: t.Optional[float] = None
    bandwidth_mibps: int = 0
    interrupted: bool = False
    status: str = "running"
    msg: str = ""
    result: t.Dict[str, t.Any] = field(default_factory=dict)
    ended_s: t.Optional[float] = None
    progress: t.Optional[Progress] = None
    launched_at: t.Optional[float] = None
    # Launched ahead of its slot: the job prepares, then waits for its start file to say start.
    start_file: t.Optional[str] = None
    parked: bool = False
    # The migration has completed (the job only tidies up): its slot went to the next move.
    slot_freed: bool = False

    @property
    def label(self) -> str:
        return self.move.label + (" (left running by an interrupted run)" if self.interrupted else "")

    def report(self) -> t.Dict[str, t.Any]:
        strategy = self.result.get("strategy")
        stats = self.result.get("stats")
        total_ms = stats.get("total_ms") if isinstance(stats, t.Mapping) else None
        return {
            "vm": self.move.vm,
            "uuid": self.move.uuid,
            "from": self.move.source,
            "to": self.move.target,
            "status": self.status,
            "msg": self.msg,
            "strategy": strategy.get("name") if isinstance(strategy, t.Mapping) else strategy,
            "started_s": self.started_s,
            "ended_s": self.ended_s,
            "job_s": round(total_ms / 1000.0, 2) if isinstance(total_ms, (int, float)) else None,
        }


class SpeedSetter:
    """Changes the bandwidth of running migrations from a thread of its own, so that a slow libvirt never holds the loop."""

    def __init__(self, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.requests: "queue.Queue[t.Tuple[str, str, int]]" = queue.Queue()
        self.errors: "queue.Queue[str]" = queue.Queue()
        self.clients: t.Dict[str, LibvirtClient] = {}
        self.thread: t.Optional[threading.Thread] = None

    def set(self, uri: str, vm: str, bandwidth_mibps: int) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, name="strata-bandwidth", daemon=True)
            self.thread.start()
        self.requests.put((uri, vm, bandwidth_mibps))

    def _work(self) -> None:
        while True:
            uri, vm, bandwidth_mibps = self.requests.get()
            try:
                client = self.clients.setdefault(uri, LibvirtClient(uri, self.connect_timeout_s))
                client.conn.lookupByName(vm).migrateSetMaxSpeed(bandwidth_mibps, 0)
            except Exception as exc:  # the move keeps its earlier share; nothing else depends on it
                self.errors.put("could not set the bandwidth of %s to %s MiB/s: %s" % (
                    vm, bandwidth_mibps, describe_libvirt_error(exc)))

    def close(self) -> None:
        # Clients in use by a blocked call stay open: the thread is a daemon and dies with the process.
        if self.thread is None or self.requests.empty():
            for client in self.clients.values():
                client.close()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    # Replaced by the unit tests, so they never really wait or connect.
    _speed_setter = SpeedSetter
    _parent_pid: t.Callable[[], int] = staticmethod(os.getppid)
    _clock: t.Callable[[], float] = staticmethod(time.monotonic)
    _sleep: t.Callable[[float], None] = staticmethod(time.sleep)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        try:
            plan = scheduled_moves(args["moves"])
            scheduler = MoveScheduler(plan, args["max_parallel_per_host"], args["max_parallel_total"])
        except ScheduleError as exc:
            raise AnsibleActionFail(str(exc)) from None
        self.args = args
        self.task_vars = task_vars
        self.hosts = self._hosts(args["hosts"], plan)
        self.migration = self._migration(args["migration"])
        for name in ("migration_timeout_s", "connect_timeout_s"):
            if args[name] <= 0:
                raise AnsibleActionFail("%s must be greater than 0, got %s" % (name, args[name]))
        if args["progress_interval_s"] < 1:
            raise AnsibleActionFail("progress_interval_s must be at least 1, got %s" % args["progress_interval_s"])

        if self._task.check_mode:
            result["moves"] = [dict(Job(move, None, None, 0, status="would_run").report(), msg="would migrate")
                               for move in plan]
            result["changed"] = bool(plan)
            result["msg"] = "Would run %d move%s." % (len(plan), "" if len(plan) == 1 else "s")
            return result

        if getattr(self._connection, "transport", "local") != "local":
            raise AnsibleActionFail("strata.migration.run_moves runs the migrations on the controller: delegate the "
                                    "task to localhost")
        self.async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        self.budget_mibps = int(self.migration.get("bandwidth_mibps") or 0)
        self.speeds = self._speed_setter(args["connect_timeout_s"])
        self.parent_pid = self._parent_pid()
        self.started_at = self._clock()
        self.progress_dir = tempfile.mkdtemp(prefix="strata-progress-")
        jobs: t.List[Job] = []
        try:
            interrupted = self._interrupted_jobs()
            jobs.extend(interrupted)
            self._watch(interrupted, None)
            self._watch(jobs, scheduler)
        finally:
            # A job told to start may not have read its start file yet (a killed playbook ends the
            # watch at any time): the directory stays while jobs run, in the temporary directory.
            if not any(job.status in ("running", "past_bound") for job in jobs):
                shutil.rmtree(self.progress_dir, ignore_errors=True)
            self.speeds.close()
        result["moves"] = [job.report() for job in jobs]
        result["changed"] = any(job.status == "finished" and bool(job.result.get("changed")) for job in jobs)
        running = [job for job in jobs if job.status == "running"]
        if running:
            result["failed"] = True
            result["msg"] = (
                "%d move%s still running past %s s beyond its migration bound: %s. Nothing was aborted: a rerun of "
                "the workflow picks them up." % (len(running), "" if len(running) == 1 else "s", JOB_GRACE_S,
                                                 ", ".join("%s (job %s)" % (job.label, job.jid) for job in running)))
        return result

    # Input

    def _hosts(self, hosts: t.Sequence[t.Mapping[str, t.Any]], plan: t.Sequence[ScheduledMove]) -> t.Dict[str, t.Mapping[str, t.Any]]:
        by_name: t.Dict[str, t.Mapping[str, t.Any]] = {}
        for index, host in enumerate(hosts):
            if not isinstance(host.get("name"), str) or not host["name"] or not isinstance(host.get("uri"), str):
                raise AnsibleActionFail("hosts[%d]: each host needs a name and a uri, got %r" % (index, dict(host)))
            by_name[host["name"]] = host
        for move in plan:
            for role, name in (("from", move.source), ("to", move.target)):
                if name not in by_name:
                    raise AnsibleActionFail(
                        "the move of %s names host %s (%s), which the hosts option does not have; known: %s"
                        % (move.vm, name, role, ", ".join(sorted(by_name)) or "none"))
        return by_name

    def _migration(self, given: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
        """The live_migrate options every move gets, checked against live_migrate's own specification."""
        given = {key: value for key, value in given.items() if value is not None}
        unknown = sorted(set(given) - set(MIGRATE_SPEC))
        per_move = sorted(set(given) & PER_MOVE_OPTIONS)
        if unknown:
            raise AnsibleActionFail("migration: unknown option%s %s; live_migrate's options are: %s" % (
                "s" if len(unknown) > 1 else "", ", ".join(unknown),
                ", ".join(sorted(set(MIGRATE_SPEC) - PER_MOVE_OPTIONS))))
        if per_move:
            raise AnsibleActionFail("migration: %s %s set for each move by the workflow, not here" % (
                ", ".join(per_move), "is" if len(per_move) == 1 else "are"))
        spec = {key: dict(MIGRATE_SPEC[key], required=False) for key in given}
        for option in spec.values():
            option.pop("default", None)
        checked = ArgumentSpecValidator(spec).validate(dict(given))
        if checked.error_messages:
            raise AnsibleActionFail("migration: %s" % "; ".join(checked.error_messages))
        migration = {key: checked.validated_parameters[key] for key in given}
        if migration.get("bandwidth_mibps", 0) < 0:
            raise AnsibleActionFail("migration: bandwidth_mibps must be 0 (unlimited) or more, got %s"
                                    % migration["bandwidth_mibps"])
        return migration

    # Jobs

    def _interrupted_jobs(self) -> t.List[Job]:
        """The moves the manifest records running with a job id: an interrupted run left them going."""
        try:
            # Also starts the manifest of a first run, and refuses the manifest of another workflow.
            manifest = ensure_manifest(self.args["manifest_path"], self.args["workflow"], Updates()).after
        except ManifestError as exc:
            raise AnsibleActionFail(str(exc)) from None
        deadline = self._clock() + self.args["migration_timeout_s"] + JOB_GRACE_S
        # Killed between recording a move running and recording its job: its migration may be going on.
        for move in manifest.moves:
            if move.state == RUNNING and not move.job_id:
                self._wait_for_libvirt_job(move.vm, move.from_host, deadline)
        return [
            Job(ScheduledMove(index, move.vm, move.uuid, move.from_host, move.to_host, 1), move.job_id, None,
                deadline=deadline, interrupted=True)
            for index, move in enumerate(manifest.moves)
            if move.state == RUNNING and move.job_id
        ]

    def _wait_for_libvirt_job(self, vm: str, host: str, deadline: float) -> None:
        """Wait until `vm` runs no job on `host`, so that the caller settles its move from where it ends up."""
        if host not in self.hosts:
            display.warning("%s was left running on %s with no job recorded; %s is not in the hosts option, so its "
                            "migration cannot be waited for" % (vm, host, host))
            return
        label = "%s (left running by an interrupted run, no job recorded)" % vm
        try:
            with LibvirtClient(self.hosts[host]["uri"], self.args["connect_timeout_s"]) as client:
                dom = find_domain(client.conn, vm)
                shown = False
                while dom is not None and dom.isActive() and dom.jobInfo()[0] != JOB_NONE and not self._playbook_gone():
                    if self._clock() > deadline:
                        display.warning("%s: its job on %s still runs past the bound; not waiting longer" % (label, host))
                        return
                    if not shown:
                        display.display("  %s: waiting for its job on %s" % (label, host))
                        shown = True
                    self._sleep(UNRECORDED_POLL_S)
        except Exception as exc:  # the workflow's checks still refuse to migrate a VM with a job in progress
            display.warning("%s: could not look at its job on %s: %s" % (label, host, describe_libvirt_error(exc)))

    def _record(self, updates: Updates) -> t.Optional[str]:
        """Record in the manifest; the manifest's refusal, or None. Running jobs are never left for a manifest error."""
        try:
            ensure_manifest(self.args["manifest_path"], self.args["workflow"], updates)
        except (ManifestError, OSError) as exc:
            return str(exc)
        return None

    def _elapsed(self) -> float:
        return round(self._clock() - self.started_at, 2)

    def _launch(self, move: ScheduledMove) -> Job:
        """Start the move's job ahead of its slot: it connects and measures, then waits for _go."""
        start_file = os.path.join(self.progress_dir, "%s.start" % move.vm)
        progress_file = os.path.join(self.progress_dir, "%s.json" % move.vm)
        bound_s = self.args["migration_timeout_s"] + JOB_GRACE_S
        # The job waits for its start at most one migration's bound: the slot it waits for frees by then.
        if not write_start_signal(start_file, StartSignal(WAIT, None, time.time() + bound_s)):
            return Job(move, None, None, 0, status="failed", msg="not started: its start file %s cannot be written "
                       "(is the controller's temporary directory full?)" % start_file)
        target = self.hosts[move.target]
        module_args = dict(self.migration)
        module_args.update(
            name=move.vm,
            uri=self.hosts[move.source]["uri"],
            dest_uri=target["uri"],
            connect_timeout_s=self.args["connect_timeout_s"],
            timeout_s=self.args["migration_timeout_s"],
            progress_file=progress_file,
            start_file=start_file,
        )
        if self.args["migrate_uris"].get(move.target):
            module_args["migrate_uri"] = self.args["migrate_uris"][move.target]
        for option, key in (("dest_capacity_mib", "memory_capacity_mib"), ("reserve_mib", "reserve_mib")):
            if target.get(key) is not None:
                module_args[option] = target[key]
        job = Job(move, None, progress_file, deadline=self._clock() + 2 * bound_s + 60, start_file=start_file,
                  parked=True)
        job.launched_at = self._clock()
        raw = self._start_background(module_args, 2 * bound_s)
        job.jid = raw.get("ansible_job_id")
        if raw.get("failed") or not job.jid:
            job.status = "failed"
            job.msg = "not started: its job could not be launched: %s" % raw.get("msg", "no message")
        return job

    def _go(self, job: Job, holding_slots: t.Sequence[Job]) -> None:
        """Record the move running with its job, then tell the job to start, with its share of the bandwidth."""
        move = job.move
        refused = self._record(Updates(started=[{"vm": move.vm, "uuid": move.uuid, "job_id": job.jid}]))
        if refused is not None:
            self._cancel([job])
            job.status = "failed"
            job.msg = "not started, the manifest cannot record it: %s" % refused
            return
        share = bandwidth_share_mibps(self.budget_mibps, move, [other.move for other in holding_slots] + [move])
        job.parked = False
        job.started_s = self._elapsed()
        job.bandwidth_mibps = share
        signal = StartSignal(START, share if self.budget_mibps else None, time.time() + JOB_GRACE_S)
        if not write_start_signal(t.cast(str, job.start_file), signal):
            # The job gives up once its file goes stale; the manifest then records how it ended.
            display.warning("%s: its start file %s cannot be written; the job gives up within %d s"
                            % (job.label, job.start_file, HEARTBEAT_STALE_S))
        display.display("  %s: started%s" % (job.label, " at %s MiB/s" % share if share else ""))

    def _cancel(self, jobs: t.Iterable[Job]) -> None:
        """Jobs launched ahead that will not start: they end at once, having changed nothing."""
        for job in jobs:
            if job.start_file is not None:
                write_start_signal(job.start_file, StartSignal(CANCEL, None, time.time()))

    def _start_background(self, module_args: t.Dict[str, t.Any], bound_s: int) -> t.Dict[str, t.Any]:
        """live_migrate as an async job (async_wrapper), as a task with async and poll 0 would start it."""
        saved = self._task.async_val
        self._task.async_val = bound_s
        try:
            return self._execute_module(module_name="strata.migration.live_migrate", module_args=module_args,
                                        task_vars=self.task_vars, wrap_async=True)
        except Exception as exc:  # the moves already running must still be watched to their end
            return {"failed": True, "msg": str(exc)}
        finally:
            self._task.async_val = saved

    def _end(self, job: Job, result: t.Dict[str, t.Any]) -> None:
        job.result = result
        job.ended_s = self._elapsed()
        job.status = "failed" if result.get("failed") else "finished"
        job.msg = str(result.get("msg") or ("migrated" if job.status == "finished" else "failed without a message"))
        refused = self._record(Updates(finished=[{"vm": job.move.vm, "uuid": job.move.uuid, "result": result}]))
        if refused is not None:
            display.warning("%s: the manifest cannot record how it ended: %s" % (job.label, refused))
        if job.status == "failed":
            display.display("  %s: failed: %s" % (job.label, job.msg))
        else:
            report = job.report()
            took = " (job %.1f s)" % report["job_s"] if report["job_s"] is not None else ""
            since = " in %.1f s" % (job.ended_s - job.started_s) if job.started_s is not None else ""
            display.display("  %s: done%s%s" % (job.label, since, took))

    def _poll(self, job: Job) -> None:
        record = read_job_file(os.path.join(self.async_dir, job.jid or ""))
        if record is None and job.launched_at is not None and self._clock() - job.launched_at < JOB_FILE_GRACE_S:
            return  # still starting
        if record is None and job.parked:
            # A job that never had its start changed nothing: the move fails without guessing.
            job.status = "failed"
            job.msg = "not started: %s" % missing_job_message(job.jid, self.async_dir)
            return
        if record is None:
            job.status = "unknown"
            job.ended_s = self._elapsed()
            job.msg = missing_job_message(job.jid, self.async_dir)
            display.display("  %s: status unknown: %s" % (job.label, job.msg))
            return
        if not job_finished(record):
            if job.progress_file:
                job.progress = read_progress(job.progress_file) or job.progress
            if self._clock() > job.deadline:
                job.ended_s = self._elapsed()
                display.display("  %s: still running past its bound" % job.label)
                job.status = "past_bound"
            return
        if job.parked:
            job.result = module_result(record)
            job.status = "failed"
            job.msg = str(job.result.get("msg") or "ended before its start without a message")
        else:
            self._end(job, module_result(record))
        try:
            os.unlink(os.path.join(self.async_dir, job.jid or ""))
        except OSError as exc:
            display.warning("could not remove the job file of %s (job %s): %s" % (job.label, job.jid, exc))

    def _free_slot(self, job: Job, scheduler: MoveScheduler) -> None:
        """Once a move's copy is over its slot goes to the next move; once its guest has arrived (or its job
        ended) it no longer holds back moves into its source."""
        phase = job.progress.phase if job.progress is not None else None
        ended = job.status != "running" or phase in MIGRATED_PHASES
        if not job.slot_freed and (ended or phase == "switching") and job.move in scheduler.running:
            scheduler.release(job.move)
            job.slot_freed = True
        if ended and job.move in scheduler.released:
            scheduler.end(job.move)

    def _start_free_slots(self, scheduler: MoveScheduler, jobs: t.List[Job], running: t.List[Job],
                          parked: t.Dict[str, Job]) -> None:
        """Start every move a slot is free for: its job launched ahead if there is one, else launched now."""
        for move in scheduler.startable():
            scheduler.start(move)
            job = parked.pop(move.vm, None) or self._launch(move)
            if job.status == "running":
                self._go(job, [other for other in running if not other.slot_freed])
            jobs.append(job)
            if job.status == "running":
                running.append(job)
            else:
                self._record_unstarted(job)
                scheduler.end(move)

    def _launch_ahead(self, scheduler: MoveScheduler, jobs: t.List[Job], parked: t.Dict[str, Job]) -> None:
        """Launch the next waiting moves' jobs, at most as many per source host and in all as may run at once."""
        per_source: t.Dict[str, int] = {}
        for job in parked.values():
            per_source[job.move.source] = per_source.get(job.move.source, 0) + 1
        for move in list(scheduler.waiting):
            if len(parked) >= self.args["max_parallel_total"]:
                return
            if move.vm in parked or per_source.get(move.source, 0) >= self.args["max_parallel_per_host"]:
                continue
            job = self._launch(move)
            if job.status != "running":
                self._ended_unstarted(job, scheduler, jobs)
                continue
            parked[move.vm] = job
            per_source[move.source] = per_source.get(move.source, 0) + 1

    def _ended_unstarted(self, job: Job, scheduler: MoveScheduler, jobs: t.List[Job]) -> None:
        """A move whose job could not be launched, or ended before its start: it fails, the others go on."""
        if job.move in scheduler.waiting:
            scheduler.start(job.move)
            scheduler.end(job.move)
        jobs.append(job)
        self._record_unstarted(job)

    def _record_unstarted(self, job: Job) -> None:
        if job.ended_s is None:
            job.ended_s = self._elapsed()
        refused = self._record(Updates(finished=[{"vm": job.move.vm, "uuid": job.move.uuid,
                                                  "result": job.result or {"failed": True, "msg": job.msg}}]))
        if refused is not None:
            display.warning("%s: the manifest cannot record that it did not start: %s" % (job.label, refused))
        display.display("  %s: %s" % (job.label, job.msg))

    def _share_bandwidth(self, running: t.Sequence[Job]) -> None:
        """Give each copying move its share of its hosts' bandwidth as moves start and end."""
        if not self.budget_mibps:
            return
        transferring = [job for job in running if job.progress is not None and job.progress.phase in TRANSFER_PHASES]
        moves = [job.move for job in transferring]
        for job in transferring:
            if job.progress is None or job.progress.phase != "migrating":
                continue  # post-copy has a bandwidth of its own; the job set it
            share = bandwidth_share_mibps(self.budget_mibps, job.move, moves)
            if share != job.bandwidth_mibps:
                job.bandwidth_mibps = share
                self.speeds.set(self.hosts[job.move.source]["uri"], job.move.vm, share)
                display.vvv("  %s: bandwidth now %s MiB/s" % (job.label, share))
        while not self.speeds.errors.empty():
            display.vvv("  %s" % self.speeds.errors.get())

    def _playbook_gone(self) -> bool:
        """Ansible's workers run in sessions of their own, so a killed playbook leaves this task going:
        it must then start nothing more. Its jobs go on, recorded in the manifest for a rerun."""
        return self._parent_pid() != self.parent_pid

    def _watch(self, jobs: t.List[Job], scheduler: t.Optional[MoveScheduler]) -> None:
        """Start the scheduler's moves as slots free up (none without one), until every job has ended.

        The next moves' jobs are launched ahead and wait, prepared, for their start (_launch, _go): a
        free slot is filled within one look at the files, not after a job's start-up and measurement.
        """
        running = [job for job in jobs if job.status == "running"]
        parked: t.Dict[str, Job] = {}
        shown_at = self._clock()
        try:
            while True:
                if self._playbook_gone():
                    return
                if scheduler is not None:
                    self._start_free_slots(scheduler, jobs, running, parked)
                    self._launch_ahead(scheduler, jobs, parked)
                for job in list(parked.values()):
                    refresh_start_signal(t.cast(str, job.start_file))
                    self._poll(job)
                    if job.status != "running":  # it ended before its start: it changed nothing
                        del parked[job.move.vm]
                        self._ended_unstarted(job, t.cast(MoveScheduler, scheduler), jobs)
                for job in list(running):
                    self._poll(job)
                    if scheduler is not None:
                        self._free_slot(job, scheduler)
                    if job.status != "running":
                        running.remove(job)
                self._share_bandwidth(running)
                if not running and (scheduler is None or scheduler.finished):
                    break
                if scheduler is not None and not running and not scheduler.startable():
                    # Cannot happen (the earliest wave never waits), but a loop that cannot end must not spin.
                    for move in list(scheduler.waiting):
                        jobs.append(Job(move, None, None, 0, status="failed",
                                        msg="not started: its plan order could not be met"))
                    break
                if self._clock() - shown_at >= self.args["progress_interval_s"]:
                    shown_at = self._clock()
                    for job in running:
                        display.display(progress_line(job.label, job.progress))
                self._sleep(CHECK_INTERVAL_S)
        finally:
            self._cancel(parked.values())
        for job in jobs:
            if job.status == "past_bound":
                job.status = "running"
                job.msg = "still running past its bound; not aborted"
