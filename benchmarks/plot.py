# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Figures for the benchmarks (matplotlib, see benchmarks/requirements.txt)."""

from __future__ import annotations

import typing as t
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on the lab machine
# pylint: disable-next=wrong-import-position
import matplotlib.pyplot as plt  # noqa: E402

# Method -> (label, line style); the baseline is sampled densely, the engine once per pass.
STYLES = {
    "baseline": ("plain libvirt", {"color": "tab:red", "linestyle": "-"}),
    "engine": ("engine, no post-copy", {"color": "tab:blue", "linestyle": "-", "marker": "o", "markersize": 4}),
    "engine_postcopy": ("engine, post-copy allowed",
                        {"color": "tab:green", "linestyle": "--", "marker": "s", "markersize": 4}),
    "virsh_tuned": ("virsh, hand-tuned auto-converge", {"color": "tab:orange", "linestyle": "-"}),
    "virsh_postcopy": ("virsh, post-copy after the first pass", {"color": "tab:purple", "linestyle": "--"}),
}


def plot_remaining(
    series: t.Mapping[str, t.Sequence[t.Mapping[str, float]]],
    bound_s: float,
    title: str,
    path: Path,
) -> None:
    """Remaining memory (MiB) over the migration's time (s), one line per method.

    series: method -> [{t_s, remaining_mib}], t_s counted from the start of the
    migration job. bound_s: the time bound, drawn as a vertical line.
    """
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for method, points in series.items():
        label, style = STYLES.get(method, (method, {}))
        if not points:
            label += " (no samples)"
        axes.plot([p["t_s"] for p in points], [p["remaining_mib"] for p in points], label=label, **style)
    axes.axvline(bound_s, color="grey", linestyle=":", label="time bound (%g s)" % bound_s)
    axes.set_xlabel("time since the migration job started (s)")
    axes.set_ylabel("memory remaining to send (MiB)")
    axes.set_title(title)
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _cpu_taken_percent(point: t.Mapping[str, t.Any]) -> float:
    kept = (point.get("vcpu_cap_percent") or 100.0) * (100.0 - (point.get("throttle_percent") or 0)) / 100.0
    return 100.0 - kept


def plot_remaining_and_throttle(
    series: t.Mapping[str, t.Sequence[t.Mapping[str, t.Any]]],
    bound_s: float,
    title: str,
    path: Path,
) -> None:
    """Remaining memory (MiB, above) and the CPU taken from the guest (%, below) over the job's time, per method.

    series: method -> [{t_s, remaining_mib, throttle_percent, vcpu_cap_percent}]; a missing throttle counts
    as 0, a missing cap as none. Under both, the guest keeps cap% of a CPU less what auto-converge takes.
    """
    figure, (upper, lower) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=(2, 1))
    for method, points in series.items():
        label, style = STYLES.get(method, (method, {}))
        if not points:
            label += " (no samples)"
        times = [p["t_s"] for p in points]
        upper.plot(times, [p["remaining_mib"] for p in points], label=label, **style)
        lower.plot(times, [_cpu_taken_percent(p) for p in points], label=label, **style)
    for axes in (upper, lower):
        axes.axvline(bound_s, color="grey", linestyle=":")
        axes.set_xlim(left=0)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
    upper.set_ylabel("memory left to send (MiB)")
    upper.set_title(title)
    upper.legend(fontsize="small")
    lower.set_ylabel("guest CPU taken (%)")
    lower.set_ylim(0, 100)
    lower.set_xlabel("time since the migration job started (s); dotted: the time bound (%g s)" % bound_s)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
