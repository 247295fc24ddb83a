# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Filters the workflow roles use to pass data from one task to the next (logic in module_utils/_workflow.py)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.strata.migration.plugins.module_utils import _workflow


def _wrap(function):
    def filter_function(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (_workflow.WorkflowError, KeyError, TypeError) as exc:
            raise AnsibleFilterError("strata.migration.%s: %s" % (function.__name__, exc)) from exc

    filter_function.__name__ = function.__name__
    filter_function.__doc__ = function.__doc__
    return filter_function


class FilterModule:
    """Workflow filters."""

    def filters(self):
        return {
            name: _wrap(getattr(_workflow, name))
            for name in (
                "host_list",
                "cluster_hosts",
                "migrate_uris",
                "planner_hosts",
                "planner_vms",
                "recently_moved",
                "plan_lines",
                "evacuation_remaining",
                "return_waves",
                "window_table",
                "recovery_input",
            )
        }
