# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Wait for async jobs (typically live_migrate tasks started with poll: 0) and print their progress."""

from __future__ import annotations

import time
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass, field

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.strata.migration.plugins.module_utils._progress import progress_line, read_progress
from ansible_collections.strata.migration.plugins.modules.migration_wait import ARGUMENT_SPEC
from ansible_collections.strata.migration.plugins.plugin_utils._async_jobs import missing_job_message, module_result

display = Display()

# async_status's message when no job file exists for the id.
JOB_NOT_FOUND_MSG = "could not find job"
MIN_POLL_INTERVAL_S = 0.5


@dataclass
class Job:
    jid: str
    label: str
    progress_file: str | None
    status: str = "running"
    result: dict[str, t.Any] = field(default_factory=dict)
    msg: str = ""

    def report(self) -> dict[str, t.Any]:
        return {"jid": self.jid, "label": self.label, "status": self.status, "result": self.result, "msg": self.msg}


def timeout_message(timeout_s: float, total: int, running: list[Job]) -> str:
    names = ", ".join("%s (job %s)" % (job.label, job.jid) for job in running)
    return (
        "%d of %d jobs still running after timeout_s=%s s: %s. Nothing was aborted: they keep running on their own, "
        "and a rerun of the workflow picks them up; raise timeout_s to wait longer." % (len(running), total, timeout_s, names)
    )


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    # Replaced by the unit tests, so they never really wait.
    _clock: t.Callable[[], float] = staticmethod(time.monotonic)
    _sleep: t.Callable[[float], None] = staticmethod(time.sleep)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp

        # The argument spec's own message for these does not name the option.
        given_jobs = self._task.args.get("jobs")
        if isinstance(given_jobs, str) or (
            isinstance(given_jobs, list) and not all(isinstance(item, Mapping) for item in given_jobs)
        ):
            raise AnsibleActionFail("jobs must be a list of dicts, each with jid and label, got %r" % (given_jobs,))
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        timeout_s = args["timeout_s"]
        poll_interval_s = args["poll_interval_s"]
        if timeout_s <= 0:
            raise AnsibleActionFail("timeout_s must be greater than 0, got %s" % timeout_s)
        if poll_interval_s < MIN_POLL_INTERVAL_S:
            raise AnsibleActionFail(
                "poll_interval_s must be at least %s, got %s" % (MIN_POLL_INTERVAL_S, poll_interval_s)
            )
        jobs = [Job(jid=item["jid"], label=item["label"], progress_file=item["progress_file"]) for item in args["jobs"]]
        seen: set[str] = set()
        for job in jobs:
            if job.jid in seen:
                raise AnsibleActionFail("jobs: job id %s is listed more than once; list each job once" % job.jid)
            seen.add(job.jid)

        # The same directory ansible.builtin.async_status looks in.
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        started_at = self._clock()
        deadline = started_at + timeout_s
        running = list(jobs)
        while True:
            for job in running:
                self._poll(job, async_dir, task_vars, started_at)
            running = [job for job in running if job.status == "running"]
            remaining_s = deadline - self._clock()
            if not running or remaining_s <= 0:
                break
            self._sleep(min(poll_interval_s, remaining_s))

        if args["cleanup"]:
            for job in jobs:
                if job.status in ("finished", "failed"):
                    self._cleanup(job, async_dir, task_vars)

        result["jobs"] = [job.report() for job in jobs]
        result["changed"] = any(job.status == "finished" and bool(job.result.get("changed")) for job in jobs)
        if running:
            result["failed"] = True
            result["msg"] = timeout_message(timeout_s, len(jobs), running)
        return result

    def _async_status(self, jid: str, mode: str, async_dir: str, task_vars) -> dict[str, t.Any]:
        return self._execute_module(
            module_name="ansible.builtin.async_status",
            module_args={"jid": jid, "mode": mode, "_async_dir": async_dir},
            task_vars=task_vars,
        )

    def _poll(self, job: Job, async_dir: str, task_vars, started_at: float) -> None:
        """Update the job from async_status and print its line."""
        raw = self._async_status(job.jid, "status", async_dir, task_vars)
        if raw.get("failed") and raw.get("msg") == JOB_NOT_FOUND_MSG:
            job.status = "unknown"
            job.msg = missing_job_message(job.jid, async_dir)
            display.display("  %s: status unknown: %s" % (job.label, job.msg))
            return
        if not raw.get("finished"):
            if raw.get("failed"):
                # async_status itself did not run (it always reports 'finished' when it does).
                job.status = "unknown"
                job.msg = "could not get the status of job %s: %s" % (job.jid, raw.get("msg", "no message"))
                display.display("  %s: status unknown: %s" % (job.label, job.msg))
                return
            if job.progress_file is None:
                display.display("  %s: running" % job.label)
            else:
                display.display(progress_line(job.label, read_progress(job.progress_file)))
            return
        job.result = module_result(raw)
        if raw.get("failed"):
            job.status = "failed"
            job.msg = str(raw.get("msg", ""))
            display.display("  %s: failed: %s" % (job.label, job.msg or "no message"))
            return
        job.status = "finished"
        final = read_progress(job.progress_file) if job.progress_file is not None else None
        # The migration's own elapsed time when known; otherwise how long this task waited for it.
        elapsed_s = final.elapsed_s if final is not None and final.elapsed_s is not None else self._clock() - started_at
        display.display("  %s: done in %.0f s" % (job.label, elapsed_s))

    def _cleanup(self, job: Job, async_dir: str, task_vars) -> None:
        raw = self._async_status(job.jid, "cleanup", async_dir, task_vars)
        if raw.get("failed"):
            display.warning(
                "could not remove the job file of %s (job %s): %s" % (job.label, job.jid, raw.get("msg", "no message"))
            )
