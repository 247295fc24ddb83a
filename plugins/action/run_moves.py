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
    TRANSFER_PHASES,
    Progress,
    progress_line,
    read_progress,
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
CHECK_INTERVAL_S = 0.25
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

    def _start(self, move: ScheduledMove, transferring: t.Sequence[ScheduledMove]) -> Job:
        """Record the move running, start its job, record the job's id."""
        refused = self._record(Updates(started=[{"vm": move.vm, "uuid": move.uuid}]))
        if refused is not None:
            job = Job(move, None, None, 0, started_s=None, status="failed",
                      msg="not started, the manifest cannot record it: %s" % refused)
            display.display("  %s: %s" % (job.label, job.msg))
            return job
        progress_file = os.path.join(self.progress_dir, "%s.json" % move.vm)
        share = bandwidth_share_mibps(self.budget_mibps, move, list(transferring) + [move])
        target = self.hosts[move.target]
        module_args = dict(self.migration)
        module_args.update(
            name=move.vm,
            uri=self.hosts[move.source]["uri"],
            dest_uri=target["uri"],
            connect_timeout_s=self.args["connect_timeout_s"],
            timeout_s=self.args["migration_timeout_s"],
            progress_file=progress_file,
        )
        if share:
            module_args["bandwidth_mibps"] = share
        if self.args["migrate_uris"].get(move.target):
            module_args["migrate_uri"] = self.args["migrate_uris"][move.target]
        for option, key in (("dest_capacity_mib", "memory_capacity_mib"), ("reserve_mib", "reserve_mib")):
            if target.get(key) is not None:
                module_args[option] = target[key]
        bound_s = self.args["migration_timeout_s"] + JOB_GRACE_S
        job = Job(move, None, progress_file, deadline=self._clock() + bound_s + 60, started_s=self._elapsed(),
                  bandwidth_mibps=share)
        job.launched_at = self._clock()
        raw = self._start_background(module_args, bound_s)
        job.jid = raw.get("ansible_job_id")
        if raw.get("failed") or not job.jid:
            self._end(job, {"failed": True, "msg": "the migration did not start: %s" % raw.get("msg", "no message")})
            return job
        refused = self._record(Updates(started=[{"vm": move.vm, "uuid": move.uuid, "job_id": job.jid}]))
        if refused is not None:
            display.warning("%s: the manifest cannot record job %s: %s" % (job.label, job.jid, refused))
        display.display("  %s: started%s" % (job.label, " at %s MiB/s" % share if share else ""))
        return job

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
        self._end(job, module_result(record))
        try:
            os.unlink(os.path.join(self.async_dir, job.jid or ""))
        except OSError as exc:
            display.warning("could not remove the job file of %s (job %s): %s" % (job.label, job.jid, exc))

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
        """Start the scheduler's moves as slots free up (none without one), until every job has ended."""
        running = [job for job in jobs if job.status == "running"]
        shown_at = self._clock()
        while True:
            if self._playbook_gone():
                return
            if scheduler is not None:
                transferring = [job.move for job in running]
                for move in scheduler.startable():
                    scheduler.start(move)
                    job = self._start(move, transferring)
                    jobs.append(job)
                    transferring.append(move)
                    if job.status == "running":
                        running.append(job)
                    else:
                        scheduler.end(move)
            for job in list(running):
                self._poll(job)
                if job.status != "running":
                    running.remove(job)
                    if scheduler is not None and job.move in scheduler.running:
                        scheduler.end(job.move)
            self._share_bandwidth(running)
            if not running and (scheduler is None or scheduler.finished):
                break
            if scheduler is not None and not running and not scheduler.startable():
                # Cannot happen (the earliest wave never waits), but a loop that cannot end must not spin.
                for move in list(scheduler.waiting):
                    jobs.append(Job(move, None, None, 0, status="failed", msg="not started: its plan order could not be met"))
                break
            if self._clock() - shown_at >= self.args["progress_interval_s"]:
                shown_at = self._clock()
                for job in running:
                    display.display(progress_line(job.label, job.progress))
            self._sleep(CHECK_INTERVAL_S)
        for job in jobs:
            if job.status == "past_bound":
                job.status = "running"
                job.msg = "still running past its bound; not aborted"
