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


def plot_move_lanes(panels: t.Mapping[str, t.Mapping[str, t.Any]], title: str, path: Path) -> None:
    """Moves over time: one panel per method, one lane per VM, sharing the time axis.

    panels: method -> {moves: [{vm, start_s, end_s, job_seen_start_s, job_seen_end_s}], wall_s}; times in
    seconds since the method's command started. A move is a light bar from its start to its end, the
    libvirt job seen in it a dark one inside; a dashed line marks the end of the command.
    """
    figure, axes_list = plt.subplots(len(panels), 1, figsize=(9, 1.0 + 1.5 * len(panels)), sharex=True,
                                     squeeze=False)
    for axes, (method, panel) in zip((row[0] for row in axes_list), panels.items()):
        moves = panel.get("moves") or []
        lanes = sorted({move["vm"].split("-", 2)[-1] for move in moves})
        for move in moves:
            lane = lanes.index(move["vm"].split("-", 2)[-1])
            if move.get("start_s") is not None and move.get("end_s") is not None:
                axes.barh(lane, move["end_s"] - move["start_s"], left=move["start_s"], height=0.7, color="tab:blue",
                          alpha=0.35, label="move" if lane == 0 else None)
            if move.get("job_seen_start_s") is not None and move.get("job_seen_end_s") is not None:
                axes.barh(lane, move["job_seen_end_s"] - move["job_seen_start_s"], left=move["job_seen_start_s"],
                          height=0.35, color="tab:blue", label="libvirt job" if lane == 0 else None)
        if panel.get("wall_s") is not None:
            axes.axvline(panel["wall_s"], color="grey", linestyle="--", label="command ends")
        axes.set_yticks(range(len(lanes)), lanes)
        axes.set_ylim(-0.6, len(lanes) - 0.4)
        axes.set_title(method, fontsize="medium", loc="left")
        axes.grid(True, axis="x", alpha=0.3)
    axes_list[0][0].legend(fontsize="small", loc="upper right")
    axes_list[0][0].figure.suptitle(title)
    axes_list[-1][0].set_xlabel("seconds since the method's command started")
    axes_list[-1][0].set_xlim(left=0)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
