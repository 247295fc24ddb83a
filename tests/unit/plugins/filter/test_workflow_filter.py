# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import os

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.strata.migration.plugins.filter import workflow
from ansible_collections.strata.migration.plugins.module_utils import _workflow

FILTER_DIR = os.path.dirname(workflow.__file__)
FILTERS = workflow.FilterModule().filters()


def test_every_filter_is_a_public_workflow_function_under_its_own_name():
    assert FILTERS
    for name, function in FILTERS.items():
        assert not name.startswith("_")
        assert callable(getattr(_workflow, name))
        assert function.__name__ == name
        assert function.__doc__ == getattr(_workflow, name).__doc__


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_every_filter_has_its_documentation_file(name):
    # ansible-doc finds a filter's documentation in plugins/filter/<name>.yml; without it the filter is UNDOCUMENTED.
    with open(os.path.join(FILTER_DIR, name + ".yml"), encoding="utf-8") as stream:
        doc = yaml.safe_load(stream)
    assert doc["DOCUMENTATION"]["name"] == name
    assert "strata.migration.%s" % name in doc["EXAMPLES"]
    assert doc["RETURN"]["_value"]["description"]


def test_a_filter_returns_what_the_function_returns():
    assert FILTERS["host_list"]("hv1, hv2") == ["hv1", "hv2"]
    assert FILTERS["return_waves"]([{"vm": "a"}], per_host=1) == [{"vm": "a", "wave": 1}]


@pytest.mark.parametrize("name, args, cause", [
    ("host_list", ([1], "evacuate_hosts"), _workflow.WorkflowError),
    ("cluster_hosts", (["hv1"], {"hv2": {}}), _workflow.WorkflowError),
    ("plan_lines", ({"moves": [{"vm": "web1"}]},), KeyError),
    ("planner_vms", (None,), TypeError),
])
def test_a_failing_filter_raises_a_filter_error_naming_itself_and_the_cause(name, args, cause):
    with pytest.raises(AnsibleFilterError) as raised:
        FILTERS[name](*args)
    assert str(raised.value.message).startswith("strata.migration.%s: " % name)
    assert isinstance(raised.value.__cause__, cause)
    assert str(raised.value.__cause__) in str(raised.value.message)


def test_the_filter_error_keeps_the_workflow_message():
    with pytest.raises(AnsibleFilterError, match="evacuate_hosts must be a list of host names"):
        FILTERS["host_list"]({"hv1": 1}, "evacuate_hosts")
