# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Fakes shared by the unit tests of module_utils."""

from __future__ import annotations

from ansible_collections.strata.migration.plugins.module_utils._libvirt import LibvirtError


class FakeLibvirtError(LibvirtError):
    """A libvirt error with a chosen code, whether or not the binding is installed."""

    def __init__(self, message, code):
        super().__init__(message)
        self._message = message
        self._code = code

    def get_error_code(self):
        return self._code

    def get_error_message(self):
        return self._message


class FakeClock:
    """A monotonic clock whose sleep only advances it, recording each sleep."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class FakeNetwork:
    def __init__(self, name, active=True, bridge="virbr0", autostart=True, bridge_error=None):
        self._name, self._active, self._bridge, self._autostart = name, active, bridge, autostart
        self._bridge_error = bridge_error

    def name(self):
        return self._name

    def isActive(self):
        return int(self._active)

    def bridgeName(self):
        if self._bridge_error is not None:
            raise self._bridge_error
        return self._bridge

    def autostart(self):
        return int(self._autostart)
