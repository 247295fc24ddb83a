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
