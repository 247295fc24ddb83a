# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The features a pair of hosts offers, and which of them a migration plan uses."""

from __future__ import annotations

import pytest

from ansible_collections.strata.migration.plugins.module_utils._engine import (
    MIGRATE_PARALLEL,
    MigrationError,
    engine_options,
    plan_migration,
)
from ansible_collections.strata.migration.plugins.module_utils._features import (
    HostVersions,
    pair_features,
    version_tuple,
)

# The lab's two generations: Debian 12's stack and the trixie root's.
OLD = HostVersions("9.0.0", "7.2.22")
NEW = HostVersions("11.3.0", "10.0.13")


@pytest.mark.parametrize("text, parsed", [("11.3.0", (11, 3, 0)), ("10.0.13", (10, 0, 13)), ("9.4", (9, 4)),
                                          ("8.2.0-rc1", (8, 2, 0)), ("", (0,))])
def test_version_tuple(text, parsed):
    assert version_tuple(text) == parsed


def test_new_pair_offers_every_feature():
    features = pair_features(NEW, NEW)
    assert {name: feature["available"] for name, feature in features.items()} == {
        "postcopy_preempt": True, "switchover_bandwidth": True, "multifd_compression": True}


def test_old_pair_offers_none_and_says_what_is_missing():
    features = pair_features(OLD, OLD)
    assert not any(feature["available"] for feature in features.values())
    assert features["postcopy_preempt"]["why"] == (
        "the source runs libvirt 9.0.0 (needs 10.0.0); the source runs QEMU 7.2.22 (needs 8.0.0); "
        "the destination runs libvirt 9.0.0 (needs 10.0.0); the destination runs QEMU 7.2.22 (needs 8.0.0)")
    assert features["switchover_bandwidth"]["why"] == (
        "the source runs libvirt 9.0.0 (needs 11.1.0); the source runs QEMU 7.2.22 (needs 8.2.0)")


def test_mixed_pair_offers_source_only_features_from_a_new_source():
    old_to_new = pair_features(OLD, NEW)
    new_to_old = pair_features(NEW, OLD)
    # Preempt changes the stream, so both sides need it; the switchover bandwidth is the source's business.
    assert not old_to_new["postcopy_preempt"]["available"]
    assert not new_to_old["postcopy_preempt"]["available"]
    assert "the destination runs libvirt 9.0.0" in new_to_old["postcopy_preempt"]["why"]
    assert not old_to_new["switchover_bandwidth"]["available"]
    assert new_to_old["switchover_bandwidth"]["available"]


def test_unknown_versions_offer_nothing():
    features = pair_features(HostVersions("", ""), NEW)
    assert not any(feature["available"] for feature in features.values())
    assert "libvirt unknown" in features["switchover_bandwidth"]["why"]


def test_plan_passes_the_guaranteed_switchover_bandwidth_where_the_source_has_it():
    options = engine_options(bandwidth_mibps=60, switchover_bandwidth_mibps=100)
    new = plan_migration(options, None, 256, None, features=pair_features(NEW, OLD))
    old = plan_migration(options, None, 256, None, features=pair_features(OLD, NEW))
    assert new.params["bandwidth.avail.switchover"] == 100
    assert new.params["bandwidth"] == 60
    assert new.features["switchover_bandwidth"]["used"]
    assert "bandwidth.avail.switchover" not in old.params
    assert not old.features["switchover_bandwidth"]["used"]
    assert "libvirt 9.0.0 (needs 11.1.0)" in old.features["switchover_bandwidth"]["why"]


def test_a_cap_alone_is_no_switchover_bandwidth():
    # A cap is an upper bound: a switchover judged at it on a slower link would overrun the downtime.
    capped = plan_migration(engine_options(bandwidth_mibps=60), None, 256, None, features=pair_features(NEW, NEW))
    assert "bandwidth.avail.switchover" not in capped.params
    assert capped.features["switchover_bandwidth"] == dict(pair_features(NEW, NEW)["switchover_bandwidth"],
                                                           used=False)


def test_without_a_probe_no_newer_feature_is_used():
    unprobed = plan_migration(engine_options(switchover_bandwidth_mibps=100, allow_postcopy=True), None, 256, None)
    assert "bandwidth.avail.switchover" not in unprobed.params
    assert unprobed.features == {}
    assert unprobed.to_dict()["features"] == {}


def test_switchover_bandwidth_must_not_be_negative():
    with pytest.raises(MigrationError, match="switchover_bandwidth_mibps must be at least 0"):
        engine_options(switchover_bandwidth_mibps=-1)


def test_plan_reports_preempt_used_only_with_postcopy_on_a_pair_that_has_it():
    features = pair_features(NEW, NEW)
    postcopy = plan_migration(engine_options(allow_postcopy=True), None, 256, None, features=features)
    precopy = plan_migration(engine_options(), None, 256, None, features=features)
    old_postcopy = plan_migration(engine_options(allow_postcopy=True), None, 256, None,
                                  features=pair_features(OLD, NEW))
    assert postcopy.features["postcopy_preempt"] == dict(features["postcopy_preempt"], used=True)
    assert not precopy.features["postcopy_preempt"]["used"]
    assert not old_postcopy.features["postcopy_preempt"]["used"]


def test_plan_reports_multifd_compression_used_with_zstd_over_parallel_connections():
    options = engine_options(compression=["zstd"], parallel_connections=4)
    plan = plan_migration(options, None, 256, None, features=pair_features(NEW, NEW))
    assert plan.flags & MIGRATE_PARALLEL
    assert plan.features["multifd_compression"]["used"]
    single = plan_migration(engine_options(compression=["zstd"]), None, 256, None, features=pair_features(NEW, NEW))
    assert not single.features["multifd_compression"]["used"]
    # Asked for on a pair without it: reported as used, with what is missing (libvirt then refuses it).
    old = plan_migration(options, None, 256, None, features=pair_features(OLD, OLD))
    assert old.features["multifd_compression"]["used"]
    assert not old.features["multifd_compression"]["available"]
    assert "libvirt 9.0.0 (needs 9.4.0)" in old.features["multifd_compression"]["why"]
