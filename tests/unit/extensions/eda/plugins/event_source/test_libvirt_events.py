# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The event source's decisions: which lifecycle events are crashes, when a host counts as down, its arguments."""

from __future__ import annotations

import pytest

from ansible_collections.strata.migration.extensions.eda.plugins.event_source.libvirt_events import (
    HostWatch,
    check_args,
    crash_cause,
)


@pytest.mark.parametrize("event, detail, cause", [
    (5, 5, "failed"),  # STOPPED/FAILED: QEMU died
    (5, 2, "crashed"),  # STOPPED/CRASHED
    (8, 0, "crashed"),  # CRASHED/PANICKED
    (5, 0, None),  # STOPPED/SHUTDOWN: the guest shut down
    (5, 1, None),  # STOPPED/DESTROYED: an operator
    (5, 3, None),  # STOPPED/MIGRATED
    (5, 4, None),  # STOPPED/SAVED
    (2, 0, None),  # STARTED
])
def test_only_a_stop_nobody_asked_for_is_a_crash(event, detail, cause):
    assert crash_cause(event, detail) == cause


def test_a_lost_host_is_down_only_when_no_connection_opens_within_the_bound():
    watch = HostWatch("hv2", "qemu+ssh://hv2/system", down_after_s=5)
    assert watch.connected() == []
    assert watch.closed("keepalive timeout", now=100.0) == []
    assert watch.connect_failed("Connection refused", now=102.0, wall_now=1002.0) == []
    assert watch.connect_failed("Connection refused", now=105.0, wall_now=1005.0) == [
        {"strata": {"type": "host_down", "host": "hv2", "uri": "qemu+ssh://hv2/system",
                    "reason": "keepalive timeout", "lost_at": 1000.0, "detected_at": 1005.0}}]
    # Reported once, then up again when it answers.
    assert watch.connect_failed("Connection refused", now=110.0, wall_now=1010.0) == []
    assert watch.connected() == [{"strata": {"type": "host_up", "host": "hv2", "uri": "qemu+ssh://hv2/system"}}]


def test_a_libvirtd_restart_within_the_bound_is_no_event():
    watch = HostWatch("hv2", "qemu:///system", down_after_s=5)
    watch.connected()
    watch.closed("libvirtd closed the connection", now=10.0)
    assert watch.connect_failed("Connection refused", now=12.0, wall_now=12.0) == []
    assert watch.connected() == []
    assert watch.state == "up"


def test_a_host_never_reached_is_down_after_the_bound_with_the_error():
    watch = HostWatch("hv3", "qemu:///system", down_after_s=5)
    assert watch.connect_failed("No route to host", now=0.0, wall_now=50.0) == []
    [event] = watch.connect_failed("No route to host", now=6.0, wall_now=56.0)
    assert event["strata"]["reason"] == "unreachable: No route to host" and event["strata"]["lost_at"] == 50.0


@pytest.mark.parametrize("args, message", [
    ({}, "hosts must list the hypervisors"),
    ({"hosts": [{"name": "hv1"}]}, r"hosts\[0\] needs a name and a uri"),
    ({"hosts": [{"name": "hv1", "uri": "qemu:///system"}, {"name": "hv1", "uri": "qemu+ssh://b/system"}]},
     "host hv1 is listed twice"),
    ({"hosts": [{"name": "hv1", "uri": "qemu+tcp://ops:secret@hv1/system"}]}, "holds a password"),
    ({"hosts": [{"name": "hv1", "uri": "qemu:///system"}], "down_after_s": 0}, "down_after_s must be a number above 0"),
    ({"hosts": [{"name": "hv1", "uri": "qemu:///system"}], "keepalive_count": True}, "keepalive_count must be"),
])
def test_bad_arguments_are_refused_naming_the_argument(args, message):
    with pytest.raises(ValueError, match=message):
        check_args(args)


def test_good_arguments_keep_the_defaults_not_given():
    hosts, bounds = check_args({"hosts": [{"name": "hv1", "uri": "qemu:///system"}], "down_after_s": 8})
    assert hosts == [{"name": "hv1", "uri": "qemu:///system"}]
    assert bounds == {"keepalive_interval_s": 2, "keepalive_count": 2, "down_after_s": 8, "connect_timeout_s": 5,
                      "reconnect_interval_s": 1}
