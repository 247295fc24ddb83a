# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import inspect

from ansible_collections.strata.migration.plugins.module_utils._compaction import DEFAULT_TIMEOUT_S
from ansible_collections.strata.migration.plugins.module_utils._convergence import DEFAULT_MAX_DOWNTIME_MS
from ansible_collections.strata.migration.plugins.module_utils._engine import engine_options
from ansible_collections.strata.migration.plugins.module_utils._migrate import compaction_settings
from ansible_collections.strata.migration.plugins.module_utils._migration_options import (
    MIGRATION_OPTIONS,
    argument_spec,
    given,
    per_move_option_names,
    workflow_option_names,
)
from ansible_collections.strata.migration.plugins.module_utils._preflight import preflight_options


def test_each_option_is_declared_once_and_documented():
    names = [option.name for option in MIGRATION_OPTIONS]
    assert len(names) == len(set(names))
    assert all(option.description and all(part.strip() for part in option.description) for option in MIGRATION_OPTIONS)


def test_one_default_downtime():
    assert argument_spec()["max_downtime_ms"]["default"] == DEFAULT_MAX_DOWNTIME_MS


def test_every_option_reaches_a_part_of_the_migration_or_the_module():
    # An option nothing reads would be dead: each is taken by the engine, the pre-flight, the compaction,
    # or the module's own run (the destination, the progress file, post-copy recovery, enforcing the checks).
    taken = set()
    for part in (engine_options, preflight_options, compaction_settings):
        taken |= set(inspect.signature(part).parameters)
    module_own = {"dest_uri", "peer_uri", "preflight", "progress_file", "start_file", "postcopy_recovery_timeout_s"}
    assert set(argument_spec()) - taken - module_own == set()


def test_the_parts_get_the_options_their_signatures_name():
    params = {option.name: option.default for option in MIGRATION_OPTIONS}
    params.update(name="web1", dest_uri="qemu:///system", compact=None, compact_timeout_s=DEFAULT_TIMEOUT_S)
    assert set(given(params, compaction_settings)) == {"compact", "compact_headroom_mib", "compact_timeout_s"}
    assert "bandwidth_mibps" in given(params, engine_options) and "name" not in given(params, engine_options)
    assert {"name", "dest_uri", "reserve_mib"} <= set(given(params, preflight_options))


def test_a_workflow_passes_on_every_option_it_does_not_set_per_move():
    assert workflow_option_names() | per_move_option_names() == set(argument_spec())
    assert not workflow_option_names() & per_move_option_names()
    assert {"name", "dest_uri", "timeout_s", "progress_file"} <= per_move_option_names()
    assert {"bandwidth_mibps", "parallel_connections", "postcopy_bandwidth_mibps"} <= workflow_option_names()
