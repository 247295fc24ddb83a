# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import os

import pytest

from ansible_collections.strata.migration.plugins.module_utils._start_signal import (
    CANCEL,
    HEARTBEAT_STALE_S,
    START,
    WAIT,
    StartNotGivenError,
    StartSignal,
    read_start_signal,
    refresh_start_signal,
    wait_for_start,
    write_start_signal,
)

NOW = 1_700_000_000.0


class Controller:
    """The file's other side: what it writes when, on a fake UNIX clock; the file's mtime follows the clock."""

    def __init__(self, path, changes=(), heartbeat=True):
        self.path = path
        self.now = NOW
        self.changes = list(changes)  # (at seconds from NOW, StartSignal or None to delete)
        self.heartbeat = heartbeat
        self.touched_at = NOW
        self.slept = 0.0

    def clock(self):
        return self.now

    def modified_at(self, path):
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        return self.touched_at

    def sleep(self, seconds):
        self.now += seconds
        self.slept += seconds
        if self.heartbeat:
            self.touched_at = self.now
        while self.changes and self.now - NOW >= self.changes[0][0]:
            _at, signal = self.changes.pop(0)
            if signal is None:
                os.unlink(self.path)
            else:
                write_start_signal(self.path, signal)

    def wait(self):
        return wait_for_start(self.path, "web1", clock=self.clock, sleep=self.sleep, modified_at=self.modified_at)


def test_the_job_goes_once_the_file_says_start_with_the_bandwidth_it_gets(tmp_path):
    path = str(tmp_path / "web1.start")
    write_start_signal(path, StartSignal(WAIT, None, NOW + 600))
    controller = Controller(path, changes=[(2.0, StartSignal(START, 30, NOW + 600))])
    signal = controller.wait()
    assert (signal.state, signal.bandwidth_mibps) == (START, 30)
    assert 2.0 <= controller.slept < 2.1  # seen within one look of being written


def test_a_file_that_already_says_start_is_not_waited_for(tmp_path):
    path = str(tmp_path / "web1.start")
    write_start_signal(path, StartSignal(START, None, NOW + 600))
    controller = Controller(path)
    assert controller.wait().bandwidth_mibps is None and controller.slept == 0


def test_cancel_stops_the_wait_and_says_nothing_changed(tmp_path):
    path = str(tmp_path / "web1.start")
    write_start_signal(path, StartSignal(WAIT, None, NOW + 600))
    with pytest.raises(StartNotGivenError, match="cancelled it .its playbook stopped.; nothing was changed"):
        Controller(path, changes=[(1.0, StartSignal(CANCEL, None, NOW + 600))]).wait()


def test_a_controller_that_stops_refreshing_the_file_is_given_up_on(tmp_path):
    path = str(tmp_path / "web1.start")
    write_start_signal(path, StartSignal(WAIT, None, NOW + 600))
    controller = Controller(path, heartbeat=False)
    with pytest.raises(StartNotGivenError, match="stopped giving signs of life .start_file .* not refreshed for 15 s"):
        controller.wait()
    assert HEARTBEAT_STALE_S <= controller.slept < HEARTBEAT_STALE_S + 0.1


def test_a_missing_or_removed_file_is_given_up_on(tmp_path):
    path = str(tmp_path / "web1.start")
    with pytest.raises(StartNotGivenError, match="web1.start is gone"):
        Controller(path).wait()
    write_start_signal(path, StartSignal(WAIT, None, NOW + 600))
    with pytest.raises(StartNotGivenError, match="is gone"):
        Controller(path, changes=[(1.0, None)]).wait()


def test_no_start_by_wait_until_is_given_up_on(tmp_path):
    path = str(tmp_path / "web1.start")
    write_start_signal(path, StartSignal(WAIT, None, NOW + 5))
    controller = Controller(path)
    with pytest.raises(StartNotGivenError, match="gave no start by the time its start_file set"):
        controller.wait()
    assert 5.0 <= controller.slept < 5.1


def test_a_partial_record_is_waited_past_while_the_controller_lives(tmp_path):
    path = str(tmp_path / "web1.start")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write('{"state": "wa')
    controller = Controller(path, changes=[(1.0, StartSignal(START, 10, NOW + 600))])
    assert controller.wait().bandwidth_mibps == 10


@pytest.mark.parametrize("text", [
    '{"state": "go", "bandwidth_mibps": null, "wait_until": 1}',
    '{"state": "start", "bandwidth_mibps": -1, "wait_until": 1}',
    '{"state": "start", "bandwidth_mibps": true, "wait_until": 1}',
    '{"state": "start", "bandwidth_mibps": null, "wait_until": "soon"}',
    '["start"]',
])
def test_records_that_are_not_start_records_read_as_none(tmp_path, text):
    path = str(tmp_path / "web1.start")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    assert read_start_signal(path) is None


def test_the_heartbeat_refreshes_the_modification_time_and_ignores_a_missing_file(tmp_path):
    path = str(tmp_path / "web1.start")
    write_start_signal(path, StartSignal(WAIT, None, NOW))
    os.utime(path, (1000, 1000))
    refresh_start_signal(path)
    assert os.path.getmtime(path) > 1000
    refresh_start_signal(str(tmp_path / "missing.start"))
