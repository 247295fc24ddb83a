# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible's async job files, as the controller steps that watch background migrations read them."""

from __future__ import annotations

import json
import typing as t

# What async_wrapper and async_status add about the job itself; the caller wants the module's own result.
ASYNC_KEYS = frozenset(("ansible_job_id", "started", "finished", "results_file", "stdout_lines", "stderr_lines"))
# What a job file says while its module runs.
RUNNING_RECORD: t.Mapping[str, t.Any] = {"started": True, "finished": False}


def module_result(record: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The job's module result without the async bookkeeping."""
    return {key: value for key, value in record.items() if key not in ASYNC_KEYS and not key.startswith("_ansible_")}


def read_job_file(path: str) -> t.Optional[t.Dict[str, t.Any]]:
    """The job file's record; None when there is no file. A file being rewritten reads as running."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError:
        return dict(RUNNING_RECORD)
    try:
        data = json.loads(text)
    except ValueError:
        return dict(RUNNING_RECORD)
    return data if isinstance(data, dict) else dict(RUNNING_RECORD)


def job_finished(record: t.Mapping[str, t.Any]) -> bool:
    """async_wrapper's record is {started, finished: false} until the module's own result replaces it."""
    return "started" not in record or bool(record.get("finished"))


def missing_job_message(jid: t.Optional[str], async_dir: str) -> str:
    """Why a job's status is unknown when its file is not in the async directory."""
    return ("no job file for job id %s in %s: the job was started on another controller or host, or its file was "
            "already cleaned up" % (jid, async_dir))
