# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The start file of one migration, defined once: the workflow's controller writes it, live_migrate waits on it.

A workflow launches a move's job before the move's slot is free, so that connecting and measuring
happen while other moves copy. The job then waits for this file to say `start` (with the bandwidth
the move gets now) or `cancel`. The record is a JSON object: `state` (one of START_STATES),
`bandwidth_mibps` (a number or null) and `wait_until` (UNIX time: the job gives up waiting then).
While the controller lives it refreshes the file's modification time (its heartbeat); a job whose
file has not been refreshed for HEARTBEAT_STALE_S gives up too, so a killed controller never leaves
a migration to start later.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import typing as t

from ansible_collections.strata.migration.plugins.module_utils._libvirt import StrataError
from ansible_collections.strata.migration.plugins.module_utils._progress import write_json_file

WAIT, START, CANCEL = "wait", "start", "cancel"
START_STATES = (WAIT, START, CANCEL)
# The controller refreshes the file every loop (a fraction of a second); this long without means it is gone.
HEARTBEAT_STALE_S = 15.0
# How often a waiting job looks at the file: a local stat and a small read.
START_POLL_S = 0.05


class StartNotGivenError(StrataError):
    """The job was launched to wait for a start that did not come; nothing was changed."""


@dataclasses.dataclass(frozen=True)
class StartSignal:
    state: str
    bandwidth_mibps: t.Optional[int] = None
    wait_until: float = 0.0


def write_start_signal(path: str, signal: StartSignal) -> bool:
    """Write the record atomically; False when that failed (the job then sees the old record or none)."""
    return write_json_file(path, dataclasses.asdict(signal))


def refresh_start_signal(path: str) -> None:
    """The controller's heartbeat: the file's modification time is now."""
    try:
        os.utime(path)
    except OSError:
        pass  # the job reads a stale heartbeat and gives up, as it should when the file is gone


def read_start_signal(path: str) -> t.Optional[StartSignal]:
    """The record, or None when the file is missing, partial or not a start record."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("state") not in START_STATES:
        return None
    bandwidth = data.get("bandwidth_mibps")
    wait_until = data.get("wait_until")
    if bandwidth is not None and (isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or bandwidth < 0):
        return None
    if isinstance(wait_until, bool) or not isinstance(wait_until, (int, float)):
        return None
    return StartSignal(data["state"], bandwidth, float(wait_until))


def wait_for_start(
    path: str,
    domain: str,
    clock: t.Callable[[], float] = time.time,
    sleep: t.Callable[[float], None] = time.sleep,
    modified_at: t.Callable[[str], float] = os.path.getmtime,
) -> StartSignal:
    """Wait until the file says start; StartNotGivenError when it says cancel, goes stale, or wait_until passes.

    `clock` is UNIX time, the clock of wait_until and of the file's modification time.
    """
    while True:
        signal = read_start_signal(path)
        if signal is not None and signal.state == START:
            return signal
        if signal is not None and signal.state == CANCEL:
            raise StartNotGivenError(
                "live migration of domain '%s' was not started: the workflow that launched it cancelled it (its "
                "playbook stopped); nothing was changed" % domain,
                domain=domain,
            )
        now = clock()
        try:
            age_s = now - modified_at(path)
        except OSError:
            age_s = None
        if age_s is None or age_s > HEARTBEAT_STALE_S:
            raise StartNotGivenError(
                "live migration of domain '%s' was not started: the workflow that launched it stopped giving signs "
                "of life (start_file %s %s); nothing was changed"
                % (domain, path, "is gone" if age_s is None else "not refreshed for %.0f s" % age_s),
                domain=domain,
            )
        if signal is not None and now >= signal.wait_until:
            raise StartNotGivenError(
                "live migration of domain '%s' was not started: the workflow that launched it gave no start by the "
                "time its start_file set; nothing was changed" % domain,
                domain=domain,
            )
        sleep(START_POLL_S)
