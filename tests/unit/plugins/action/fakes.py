# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Fakes shared by the unit tests of the action plugins."""

from __future__ import annotations


class FakeDisplay:
    """Keeps what an action would print, instead of printing it."""

    def __init__(self):
        self.lines = []
        self.warnings = []

    def display(self, msg):
        self.lines.append(msg)

    def warning(self, msg):
        self.warnings.append(msg)

    def vvv(self, msg):
        self.lines.append(msg)
