# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:

    # Modules that only read: strata.migration.attributes.read_only
    DOCUMENTATION = r"""
options: {}
"""

    READ_ONLY = r"""
attributes:
  check_mode:
    description: Runs normally in check mode; it only reads.
    support: full
  diff_mode:
    description: Returns no diff; nothing changes.
    support: none
"""
