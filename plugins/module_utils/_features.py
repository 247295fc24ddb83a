# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Migration features a pair of hosts offers, from the libvirt and QEMU versions each side runs.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

libvirt has no call that lists QEMU's migration capabilities, and a migration parameter an older
libvirt does not know fails the whole migration, so the engine decides from the versions both hosts
report (virConnectGetLibVersion, virConnectGetVersion) which of the newer features it may use, and
reports each: available or not and why, and whether this migration used it.
"""

from __future__ import annotations

import dataclasses
import re
import typing as t


def version_tuple(version: str) -> t.Tuple[int, ...]:
    """Turn "9.0.0" into (9, 0, 0); each part counts by its leading digits (none: 0)."""
    parts = []
    for part in version.split("."):
        digits = re.match(r"\d*", part).group()  # type: ignore[union-attr]  # \d* matches every string
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@dataclasses.dataclass(frozen=True)
class HostVersions:
    """What one host runs: libvirt's and QEMU's versions ("" when unknown)."""

    libvirt: str
    qemu: str


@dataclasses.dataclass(frozen=True)
class Feature:
    """A migration feature, the versions it needs, and on which side."""

    name: str
    description: str
    min_libvirt: str
    min_qemu: str
    # True: both hosts need the versions (the feature changes the stream); False: the source only.
    both_sides: bool


FEATURES = (
    Feature(
        "postcopy_preempt",
        "post-copy sends the pages the destination waits for on a channel of their own, ahead of the background "
        "copy; libvirt turns it on with post-copy when both sides offer it",
        "10.0.0", "8.0.0", both_sides=True,
    ),
    Feature(
        "switchover_bandwidth",
        "QEMU judges whether the rest fits the downtime at the bandwidth the caller guarantees "
        "(switchover_bandwidth_mibps) instead of its own estimate of what it sent (libvirt's bandwidth.avail.switchover)",
        "11.1.0", "8.2.0", both_sides=False,
    ),
    Feature(
        "multifd_compression",
        "zstd or zlib compression of parallel connections (compression with parallel_connections > 1)",
        "9.4.0", "5.0.0", both_sides=True,
    ),
)


def _missing(feature: Feature, side: str, host: HostVersions) -> t.List[str]:
    missing = []
    if version_tuple(host.libvirt or "0") < version_tuple(feature.min_libvirt):
        missing.append("the %s runs libvirt %s (needs %s)" % (side, host.libvirt or "unknown", feature.min_libvirt))
    if version_tuple(host.qemu or "0") < version_tuple(feature.min_qemu):
        missing.append("the %s runs QEMU %s (needs %s)" % (side, host.qemu or "unknown", feature.min_qemu))
    return missing


def pair_features(source: HostVersions, destination: HostVersions) -> t.Dict[str, t.Dict[str, t.Any]]:
    """{feature name: {available, why}} for a migration from source to destination."""
    features = {}
    for feature in FEATURES:
        missing = _missing(feature, "source", source)
        if feature.both_sides:
            missing += _missing(feature, "destination", destination)
        sides = "both hosts run" if feature.both_sides else "the source runs"
        features[feature.name] = {
            "available": not missing,
            "why": ("%s libvirt >= %s and QEMU >= %s" % (sides, feature.min_libvirt, feature.min_qemu)
                    if not missing else "; ".join(missing)),
        }
    return features


def available(features: t.Optional[t.Mapping[str, t.Mapping[str, t.Any]]], name: str) -> bool:
    """Whether a feature is available; without a probe (features None) none of the newer ones is."""
    return bool(features and features.get(name, {}).get("available"))
