# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The progress file of one migration, defined once: live_migrate writes it, the controller's watchers read it.

A record is a JSON object: domain, phase (one of PROGRESS_PHASES), the numbers of PROGRESS_NUMBERS
(each a number or null), and `updated`, the UTC time as ISO 8601.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing as t

PROGRESS_PHASES = ("preparing", "ready", "migrating", "switching", "postcopy", "finishing", "verifying", "done", "failed")
# The phases in which the migration's memory copy runs: it uses its hosts' bandwidth. In `switching`
# the copy is over and the source is paused while libvirt hands the guest over.
TRANSFER_PHASES = ("migrating", "postcopy")
# The phases after a completed job: the domain runs on the destination, the job only tidies up.
MIGRATED_PHASES = ("finishing", "done")
PROGRESS_NUMBERS = ("percent", "remaining_mib", "transferred_mib", "pass", "elapsed_s")


@dataclasses.dataclass
class Progress:
    """What a progress file says, once checked."""

    phase: str
    percent: t.Optional[float] = None
    remaining_mib: t.Optional[float] = None
    transferred_mib: t.Optional[float] = None
    pass_number: t.Optional[float] = None
    elapsed_s: t.Optional[float] = None


def progress_record(domain: str, phase: str, numbers: t.Mapping[str, t.Any], updated: str) -> t.Dict[str, t.Any]:
    """The record written for `domain` in `phase`; `numbers` holds PROGRESS_NUMBERS (missing ones are null)."""
    if phase not in PROGRESS_PHASES:
        raise ValueError("unknown progress phase %r" % phase)
    record: t.Dict[str, t.Any] = {"domain": domain, "phase": phase}
    record.update((key, numbers.get(key)) for key in PROGRESS_NUMBERS)
    record["updated"] = updated
    return record


def _is_number(value: t.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_progress(data: t.Any) -> t.Optional[Progress]:
    """A Progress from a decoded progress file, or None when it is not one (partial, foreign, wrong types)."""
    if not isinstance(data, dict):
        return None
    phase = data.get("phase")
    if not isinstance(phase, str) or not phase:
        return None
    numbers: t.Dict[str, t.Optional[float]] = {}
    for key in PROGRESS_NUMBERS:
        value = data.get(key)
        if value is not None and not _is_number(value):
            return None
        numbers[key] = value
    return Progress(
        phase=phase,
        percent=numbers["percent"],
        remaining_mib=numbers["remaining_mib"],
        transferred_mib=numbers["transferred_mib"],
        pass_number=numbers["pass"],
        elapsed_s=numbers["elapsed_s"],
    )


def read_progress(path: str) -> t.Optional[Progress]:
    """The migration's progress, or None when the file is missing, unreadable or not (yet) a whole record."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return parse_progress(data)


def write_json_file(path: str, record: t.Mapping[str, t.Any]) -> bool:
    """Replace the file at `path` with `record` as JSON, atomically; False when that failed (nothing is raised).

    A temporary file in the same directory is renamed over the old one, so a
    reader sees the previous record or the new one, never a partial one.
    """
    directory, name = os.path.split(path)
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".%s." % name, suffix=".tmp")
    except OSError:
        return False
    try:
        # Readable by a watcher running as another user (a task with become); progress holds no secret.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, sort_keys=True)
        os.replace(temporary, path)
    except (OSError, TypeError, ValueError):
        try:
            os.unlink(temporary)
        except OSError:
            pass
        return False
    return True


def progress_line(label: str, progress: t.Optional[Progress]) -> str:
    """One progress line, for example '  web1 hv1 -> hv2: migrating 62%, 98 MiB left, pass 3, 12 s'."""
    if progress is None:
        return "  %s: waiting for progress" % label
    head = progress.phase
    if progress.percent is not None:
        head += " %.0f%%" % progress.percent
    parts = [head]
    if progress.remaining_mib is not None:
        parts.append("%.0f MiB left" % progress.remaining_mib)
    if progress.pass_number is not None:
        parts.append("pass %.0f" % progress.pass_number)
    if progress.elapsed_s is not None:
        parts.append("%.0f s" % progress.elapsed_s)
    return "  %s: %s" % (label, ", ".join(parts))
