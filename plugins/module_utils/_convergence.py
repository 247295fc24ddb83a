# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""How a live migration will go: the pre-copy, post-copy and layered models.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

Plain arithmetic on plain data; it never imports libvirt. All sizes are MiB,
rates MiB/s, durations s unless a name says _ms.

Pre-copy (QEMU's default). Round 0 sends all non-zero memory M (zero pages
cost a few bytes each). Every later round sends what the guest dirtied during
the previous round, of length t:

    hot set H known:     dirtied(t) = min(D * t, H)
    hot set unknown:     dirtied(t) = min(M, D * max(t, W))

D is the dirty rate measured over a window of W seconds; libvirt counts the
distinct pages dirtied in the window, so D * W is a volume. Pages rewritten
several times within a round are sent once, so the dirtied volume levels off
at the hot set. A hot set of which the window saw at least half
(D * W >= SATURATION_FRACTION * H, "saturated") turns over within about two
windows, faster than the measurement can resolve, so every round is taken to
re-dirty all of it: dirtied(t) = H. With the hot set unknown the estimate is conservative: the
distinct volume grows ever more slowly with time, so a round shorter than W
can have dirtied at most what the whole window saw (D * W), and a longer one
at most D * t. QEMU stops the guest once what is left fits the downtime
target, remaining <= B * max_downtime, and sends it paused with its speed cap
lifted (stop_copy_bandwidth_mibps). Rounds shrink while the dirtied volume
is smaller than the round before; when they level off (the floor) above
B * max_downtime, or run past max_rounds, pre-copy does not converge.

Post-copy: one pre-copy pass, then the guest moves and runs on the
destination while the pages dirtied during that pass follow on demand.

Layered: pre-copy of the cold layer (M - H), which the model never sees
dirtied, then post-copy of the hot layer, so each hot page crosses once.

estimate_hot_set reads H from rates measured over two windows (1 s and 4 s):
a saturated hot set shows the same volume in both, steady dirtying four times
the volume in four times the time (then no hot set smaller than memory:
H = M).
"""

from __future__ import annotations

import dataclasses
import math
import typing as t

DEFAULT_MAX_ROUNDS = 30
# QEMU's own default downtime limit; every module offering max_downtime_ms defaults to it.
DEFAULT_MAX_DOWNTIME_MS = 300
# libvirt measures dirty rates over whole seconds; 1 s is the shortest window.
DEFAULT_DIRTY_RATE_WINDOW_S = 1.0
# Before the first page moves and after the last: the destination QEMU starts, the
# hosts shake hands, the domain is defined on the destination. Measured 0.2-0.3 s
# with libvirt 9.0 / QEMU 7.2 over loopback; real networks and hosts add more.
DEFAULT_SETUP_S = 0.3
# A zero page crosses as a page header and a marker byte: about 13 bytes per 4 KiB
# page measured on QEMU 7.2; 16 bytes rounds that up.
ZERO_PAGE_WIRE_FRACTION = 16.0 / 4096.0
# Device state, stopping the vCPUs and starting them on the destination, on top of
# the memory sent while paused: 8-20 ms measured on the lab with ~1 MiB left.
DEVICE_STATE_MS = 20.0
# Post-copy switch: the source stops, device state and the pages the vCPUs touch
# first cross, the destination starts. A constant, since no memory volume bounds it.
POSTCOPY_SWITCH_MS = 50.0
# A hot set is "saturated" when the measurement window saw at least this share of
# it, i.e. it turns over within about two windows. With windows of 1 s and 4 s a
# steady dirtier shows 0.25 and a saturated one 1.0; 0.5 is their geometric mean,
# robust to libvirt's page sampling (512 sampled pages per GiB: +-20% on 256 MiB).
SATURATION_FRACTION = 0.5

# QEMU's auto-converge (7.2 to 10.0): at each bitmap sync, a pass in which the guest dirtied more
# than this share of what was sent counts; the second such pass in a row starts the CPU throttle
# at its initial percentage, and each second one after that raises it by the increment, up to
# AUTO_CONVERGE_MAX_PERCENT (QEMU's max-cpu-throttle default, which libvirt does not expose).
AUTO_CONVERGE_TRIGGER_FRACTION = 0.5
AUTO_CONVERGE_MAX_PERCENT = 99
# The engine starts the throttle this many points above what the model says pre-copy needs: the
# dirty rate is a sample, and a guest held just under the line converges slowly.
THROTTLE_MARGIN_PERCENT = 10
# Lowest initial throttle the engine asks for (QEMU's own default initial).
THROTTLE_MIN_PERCENT = 20

_EPSILON = 1e-9
_BISECT_STEPS = 60


def _check_number(name: str, value: t.Any, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("%s must be a number, got %r" % (name, value))
    if not math.isfinite(value):
        raise ValueError("%s must be a finite number, got %r" % (name, value))
    if strict and value <= minimum:
        raise ValueError("%s must be greater than %s, got %s" % (name, _fmt(minimum), _fmt(value)))
    if not strict and value < minimum:
        raise ValueError("%s must be %s or more, got %s" % (name, _fmt(minimum), _fmt(value)))
    return float(value)


def _fmt(value: float, digits: int = 1) -> str:
    """A number for a sentence: 60 rather than 60.0, 0.8 rather than 0.8000001."""
    text = ("%." + str(digits) + "f") % value
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclasses.dataclass(frozen=True)
class MigrationInputs:
    """What the models need; validated on creation (ValueError names the field).

    memory_mib: non-zero memory to send. Balloon "actual - unused" estimates
    it well after compaction; before, memory the guest freed still holds data
    and crosses too, so that is a lower bound and "actual" an upper one.
    zero_page_mib: memory known to be zero or ballooned out, sent almost
    free. dirty_rate_mibps: measured over dirty_rate_window_s (libvirt counts
    distinct pages per window). hot_set_mib: the repeatedly rewritten part,
    None when unknown (see the module docstring for the conservative rule).
    stop_copy_bandwidth_mibps: speed while the guest is paused (QEMU lifts
    its speed cap then); None = bandwidth_mibps. setup_s: fixed cost of a
    migration.
    """

    memory_mib: float
    dirty_rate_mibps: float
    bandwidth_mibps: float
    max_downtime_ms: float
    hot_set_mib: t.Optional[float] = None
    max_rounds: int = DEFAULT_MAX_ROUNDS
    zero_page_mib: float = 0.0
    dirty_rate_window_s: float = DEFAULT_DIRTY_RATE_WINDOW_S
    stop_copy_bandwidth_mibps: t.Optional[float] = None
    setup_s: float = DEFAULT_SETUP_S

    def __post_init__(self) -> None:
        _check_number("memory_mib", self.memory_mib)
        _check_number("dirty_rate_mibps", self.dirty_rate_mibps)
        _check_number("bandwidth_mibps", self.bandwidth_mibps, strict=True)
        _check_number("max_downtime_ms", self.max_downtime_ms, strict=True)
        if self.hot_set_mib is not None:
            _check_number("hot_set_mib", self.hot_set_mib)
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or self.max_rounds < 1:
            raise ValueError("max_rounds must be a whole number of 1 or more, got %r" % (self.max_rounds,))
        _check_number("zero_page_mib", self.zero_page_mib)
        _check_number("dirty_rate_window_s", self.dirty_rate_window_s, strict=True)
        if self.stop_copy_bandwidth_mibps is not None:
            _check_number("stop_copy_bandwidth_mibps", self.stop_copy_bandwidth_mibps, strict=True)
        _check_number("setup_s", self.setup_s)

    @property
    def hot_mib(self) -> float:
        """The hot set the models use: all of memory when unknown, never more than memory."""
        if self.hot_set_mib is None:
            return float(self.memory_mib)
        return float(min(self.hot_set_mib, self.memory_mib))

    @property
    def window_mib(self) -> float:
        """What the measurement window saw dirtied: D * W."""
        return self.dirty_rate_mibps * self.dirty_rate_window_s

    @property
    def saturated(self) -> bool:
        """True when the window saw at least SATURATION_FRACTION of a known hot set (module docstring)."""
        hot = self.hot_mib
        return self.hot_set_mib is not None and hot > 0 and self.window_mib >= SATURATION_FRACTION * hot

    @property
    def threshold_mib(self) -> float:
        """What may be left for the pause: QEMU stops the guest at remaining <= bandwidth * downtime."""
        return self.bandwidth_mibps * self.max_downtime_ms / 1000.0

    @property
    def stop_copy_mibps(self) -> float:
        return max(self.stop_copy_bandwidth_mibps or 0.0, self.bandwidth_mibps)

    def dirtied_mib(self, seconds: float) -> float:
        """Distinct memory the guest dirties in `seconds`, which the next round must send."""
        if self.hot_set_mib is None:
            return min(float(self.memory_mib), self.dirty_rate_mibps * max(seconds, self.dirty_rate_window_s))
        if self.saturated:
            return self.hot_mib
        return min(self.dirty_rate_mibps * seconds, self.hot_mib)

    def to_dict(self) -> t.Dict[str, t.Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The predicted course of one strategy.

    rounds: live pre-copy rounds (round 0 included, the paused copy not; 0
    when a layered migration has no cold layer).
    round_mib: what each live round sends. stop_copy_mib: what is sent while
    the guest is paused (pre-copy). postcopy_s: how long the guest runs on the
    destination while pages still arrive on demand (post-copy and layered;
    None for pre-copy). throttle_percents: for a throttled pre-copy, the CPU
    throttle in force during each live round (empty otherwise).
    required_bandwidth_mibps / required_max_downtime_ms:
    for pre-copy that does not converge, the smallest value of that option
    (the other unchanged) with which it would; None otherwise.
    """

    strategy: str
    converges: bool
    rounds: int
    transferred_mib: float
    total_s: float
    downtime_ms: float
    reason: str
    postcopy_s: t.Optional[float] = None
    round_mib: t.Tuple[float, ...] = ()
    stop_copy_mib: float = 0.0
    required_bandwidth_mibps: t.Optional[float] = None
    required_max_downtime_ms: t.Optional[float] = None
    disk_copy_mib: float = 0.0
    disk_copy_s: float = 0.0
    throttle_percents: t.Tuple[int, ...] = ()

    def to_dict(self) -> t.Dict[str, t.Any]:
        result = dataclasses.asdict(self)
        for key, value in result.items():
            if isinstance(value, float):
                result[key] = round(value, 3)
        result["round_mib"] = [round(value, 3) for value in self.round_mib]
        result["throttle_percents"] = list(self.throttle_percents)
        return result


@dataclasses.dataclass(frozen=True)
class HotSetEstimate:
    """A hot set read from dirty rates measured over two windows (see estimate_hot_set).

    hot_set_mib, dirty_rate_mibps and dirty_rate_window_s feed MigrationInputs;
    saturated says the short window saw most of the hot set (see SATURATION_FRACTION).
    """

    hot_set_mib: t.Optional[float]
    saturated: bool
    dirty_rate_mibps: float
    dirty_rate_window_s: float
    reason: str

    def to_dict(self) -> t.Dict[str, t.Any]:
        return dataclasses.asdict(self)


def _median(values: t.Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2.0


def estimate_hot_set(samples: t.Sequence[t.Tuple[float, float]], memory_mib: float) -> HotSetEstimate:
    """Estimate the hot set from (window_s, dirty_rate_mibps) measurements.

    libvirt's dirty rate is the distinct memory dirtied in a window divided
    by the window. Steady dirtying shows the same rate in a 1 s and a 4 s
    window (four times the volume in four times the time); a hot set
    rewritten faster than the window shows the same volume in both (a
    quarter of the rate in the longer window). Per window the median of its samples counts. When the
    short window saw at least SATURATION_FRACTION of the long one's volume,
    the hot set is the larger volume (saturated); otherwise dirtying is
    steady and no hot set smaller than memory_mib shows (H = memory_mib).
    With one window the shape is unknown (None). The dirty rate returned is
    the short window's.
    """
    memory_mib = _check_number("memory_mib", memory_mib)
    by_window: t.Dict[float, t.List[float]] = {}
    for window_s, rate in samples:
        window_s = _check_number("window_s", window_s, strict=True)
        by_window.setdefault(window_s, []).append(_check_number("dirty_rate_mibps", rate))
    if not by_window:
        raise ValueError("estimate_hot_set needs at least one (window_s, dirty_rate_mibps) sample")
    windows = sorted(by_window)
    short_window, long_window = windows[0], windows[-1]
    short_rate = _median(by_window[short_window])
    short_volume = short_rate * short_window
    long_volume = _median(by_window[long_window]) * long_window
    if short_volume == 0 and long_volume == 0:
        return HotSetEstimate(0.0, False, 0.0, short_window, "no memory was dirtied in any window")
    if len(windows) < 2:
        return HotSetEstimate(
            None, False, short_rate, short_window,
            "one window (%s s) cannot tell a hot set from steady dirtying" % _fmt(short_window),
        )
    volumes = "%s MiB dirtied in %s s and %s MiB in %s s" % (
        _fmt(short_volume), _fmt(short_window), _fmt(long_volume), _fmt(long_window))
    if short_volume >= SATURATION_FRACTION * long_volume:
        hot = min(max(short_volume, long_volume), memory_mib)
        return HotSetEstimate(
            hot, True, short_rate, short_window,
            "%s: a hot set of about %s MiB, rewritten faster than the %s s window shows"
            % (volumes, _fmt(hot), _fmt(short_window)),
        )
    return HotSetEstimate(
        memory_mib, False, short_rate, short_window,
        "%s: steady dirtying, no hot set smaller than the %s MiB of memory" % (volumes, _fmt(memory_mib)),
    )


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """How much guest memory holds data, which a pre-copy sends as normal pages.

    lower_mib: what the guest uses now (balloon actual - unused); exact after compaction.
    upper_mib: the guest's current size (balloon actual).
    source: "qemu_rss" when estimated from the host's view, else "guest_used".
    """

    memory_mib: float
    lower_mib: float
    upper_mib: float
    source: str
    reason: str

    def to_dict(self) -> t.Dict[str, t.Any]:
        return dataclasses.asdict(self)


def estimate_memory_to_send(
    current_mib: float,
    guest_used_mib: float,
    qemu_rss_mib: t.Optional[float] = None,
    qemu_overhead_mib: t.Optional[float] = None,
) -> MemoryEstimate:
    """Estimate the memory a plain pre-copy sends as normal pages.

    The guest's own statistics show only what it uses now: memory it used and
    freed keeps its contents (Linux does not clear freed pages) and still
    crosses the wire. The host sees it: QEMU's resident memory holds every guest
    page ever written, plus QEMU's own memory. Given that own share on the
    source host (qemu_overhead_mib), the estimate is rss - overhead, kept
    between what the guest uses and its current size; without it, the
    estimate is what the guest uses, a lower bound (exact after compaction).
    """
    current_mib = _check_number("current_mib", current_mib)
    lower = min(_check_number("guest_used_mib", guest_used_mib), current_mib)
    if qemu_rss_mib is None or qemu_overhead_mib is None:
        return MemoryEstimate(
            lower, lower, current_mib, "guest_used",
            "%s MiB the guest uses now; memory it used and freed also crosses unless it is compacted first "
            "(give qemu_overhead_mib to estimate it from QEMU's resident memory)" % _fmt(lower),
        )
    rss = _check_number("qemu_rss_mib", qemu_rss_mib)
    overhead = _check_number("qemu_overhead_mib", qemu_overhead_mib)
    touched = min(max(rss - overhead, lower), current_mib)
    return MemoryEstimate(
        touched, lower, current_mib, "qemu_rss",
        "%s MiB: QEMU's %s MiB resident less its own %s MiB, within %s-%s MiB (used now - current size)"
        % (_fmt(touched), _fmt(rss), _fmt(overhead), _fmt(lower), _fmt(current_mib)),
    )


@dataclasses.dataclass
class _Precopy:
    """The raw course of pre-copy: live rounds and what is left after the last one."""

    round_mib: t.List[float]
    round_s: t.List[float]
    remaining_mib: float
    converges: bool
    smallest_remaining_mib: float


def _zero_wire_mib(inputs: MigrationInputs) -> float:
    return inputs.zero_page_mib * ZERO_PAGE_WIRE_FRACTION


def _simulate_precopy(inputs: MigrationInputs) -> _Precopy:
    first_s = (inputs.memory_mib + _zero_wire_mib(inputs)) / inputs.bandwidth_mibps
    round_mib = [float(inputs.memory_mib)]
    round_s = [first_s]
    remaining = inputs.dirtied_mib(first_s)
    smallest = remaining
    while remaining > inputs.threshold_mib + _EPSILON and len(round_mib) < inputs.max_rounds:
        seconds = remaining / inputs.bandwidth_mibps
        round_mib.append(remaining)
        round_s.append(seconds)
        remaining = inputs.dirtied_mib(seconds)
        smallest = min(smallest, remaining)
    return _Precopy(
        round_mib=round_mib,
        round_s=round_s,
        remaining_mib=remaining,
        converges=remaining <= inputs.threshold_mib + _EPSILON,
        smallest_remaining_mib=smallest,
    )


def _slowed(inputs: MigrationInputs, throttle_percent: int) -> MigrationInputs:
    """The inputs of a guest whose vCPUs are throttled: its dirty rate falls in proportion."""
    return dataclasses.replace(inputs, dirty_rate_mibps=inputs.dirty_rate_mibps * (100 - throttle_percent) / 100.0)


def _stop_and_totals(inputs: MigrationInputs, course: _Precopy) -> t.Tuple[float, float, float]:
    """(downtime_ms, transferred_mib, total_s) of a pre-copy course: the paused copy of what is left, all sent."""
    downtime_ms = DEVICE_STATE_MS + course.remaining_mib / inputs.stop_copy_mibps * 1000.0
    transferred = sum(course.round_mib) + course.remaining_mib + _zero_wire_mib(inputs)
    total_s = inputs.setup_s + sum(course.round_s) + downtime_ms / 1000.0
    return downtime_ms, transferred, total_s


def _simulate_throttled(inputs: MigrationInputs, initial_percent: int, increment_percent: int) -> t.Tuple[_Precopy, t.List[int]]:
    """Pre-copy under auto-converge: the course and the throttle (%) in force during each live round.

    The throttle slows the guest's vCPUs, so its dirty rate falls in proportion: D * (100 - p) / 100.
    """
    first_s = (inputs.memory_mib + _zero_wire_mib(inputs)) / inputs.bandwidth_mibps
    round_mib, round_s, percents = [float(inputs.memory_mib)], [first_s], [0]
    percent = high_passes = 0
    remaining = inputs.dirtied_mib(first_s)
    smallest = remaining
    sent = float(inputs.memory_mib)
    while True:
        if remaining > AUTO_CONVERGE_TRIGGER_FRACTION * sent:
            high_passes += 1
            if high_passes >= 2:
                high_passes = 0
                percent = initial_percent if percent == 0 else min(percent + increment_percent,
                                                                   AUTO_CONVERGE_MAX_PERCENT)
        if remaining <= inputs.threshold_mib + _EPSILON or len(round_mib) >= inputs.max_rounds:
            break
        seconds = remaining / inputs.bandwidth_mibps
        round_mib.append(remaining)
        round_s.append(seconds)
        percents.append(percent)
        sent = remaining
        remaining = _slowed(inputs, percent).dirtied_mib(seconds)
        smallest = min(smallest, remaining)
    course = _Precopy(round_mib=round_mib, round_s=round_s, remaining_mib=remaining,
                      converges=remaining <= inputs.threshold_mib + _EPSILON, smallest_remaining_mib=smallest)
    return course, percents


def required_throttle_percent(inputs: MigrationInputs) -> t.Optional[int]:
    """The smallest whole CPU throttle (%) with which pre-copy converges: 0 when it does unthrottled,
    None when even AUTO_CONVERGE_MAX_PERCENT is not enough (the guest dirties more than the link
    sends even at 1% of its CPU)."""
    for percent in range(0, AUTO_CONVERGE_MAX_PERCENT + 1):
        if _simulate_precopy(_slowed(inputs, percent)).converges:
            return percent
    return None


def auto_converge_percents(inputs: MigrationInputs) -> t.Optional[t.Tuple[int, int]]:
    """(initial, increment) of the CPU throttle for a pre-copy that needs one; None when it does not.

    The throttle starts THROTTLE_MARGIN_PERCENT above what the model needs (at the maximum
    when even that is not enough), and the increment reaches the maximum in one more step:
    QEMU steps only every second pass that still dirties too much, so each step costs two passes.
    A guest that dirties at least AUTO_CONVERGE_TRIGGER_FRACTION of the link starts at the
    maximum: a workload paced by the clock (requests, a timer) catches up after each throttle
    pause, so the dirty rate does not fall with the CPU share the model assumes (the lab's paced
    62 MiB/s guest still rewrote 114 MiB per pass at 86%), and each step that follows costs two
    passes. The throttle holds only for the last passes, so starting at the maximum also takes
    the least CPU from the guest in all. Slower dirtiers, which QEMU does not throttle unless the
    dirty rate grows, get what the model needs plus a margin.
    """
    if _simulate_precopy(inputs).converges:
        return None
    needed = None
    if inputs.dirty_rate_mibps < AUTO_CONVERGE_TRIGGER_FRACTION * inputs.bandwidth_mibps:
        needed = required_throttle_percent(inputs)
    if needed is None:
        initial = AUTO_CONVERGE_MAX_PERCENT
    else:
        initial = min(max(needed + THROTTLE_MARGIN_PERCENT, THROTTLE_MIN_PERCENT), AUTO_CONVERGE_MAX_PERCENT)
    return initial, max(AUTO_CONVERGE_MAX_PERCENT - initial, 1)


def _throttled_course(inputs: MigrationInputs, auto_converge: t.Tuple[int, int]) -> t.Tuple[Prediction, float]:
    """Pre-copy under auto-converge (initial, increment) as a prediction without its reason, and how
    long the guest runs throttled."""
    course, percents = _simulate_throttled(inputs, *auto_converge)
    downtime_ms, transferred, total_s = _stop_and_totals(inputs, course)
    prediction = Prediction(
        strategy="layered",
        converges=course.converges,
        rounds=len(course.round_mib),
        transferred_mib=transferred,
        total_s=total_s,
        downtime_ms=downtime_ms,
        reason="",
        postcopy_s=None,
        round_mib=tuple(course.round_mib),
        stop_copy_mib=course.remaining_mib,
        throttle_percents=tuple(percents),
    )
    return prediction, sum(s for s, p in zip(course.round_s, percents) if p)


def predict_throttled(inputs: MigrationInputs, initial_percent: int, increment_percent: int) -> Prediction:
    """Pre-copy with auto-converge from initial_percent in increment_percent steps (no post-copy).

    QEMU throttles from the third pass (two passes that dirtied too much come first), so the
    first two passes run at the guest's full dirty rate.
    """
    unthrottled = _simulate_precopy(inputs)
    course, throttled_s = _throttled_course(inputs, (initial_percent, increment_percent))
    highest = max(course.throttle_percents)
    if unthrottled.converges:
        lead = "Pre-copy converges without a throttle, which stays as a safety net"
    else:
        lead = "Pre-copy alone would not converge (%s)" % _why_not(inputs, unthrottled)
    if course.converges:
        body = (
            "with auto-converge from %d%% in %d%% steps it converges after %d rounds: %s MiB in %s s, the guest "
            "throttled for %s s (up to %d%%), %s MiB left for a pause of about %s ms."
            % (initial_percent, increment_percent, course.rounds, _fmt(course.transferred_mib),
               _fmt(course.total_s), _fmt(throttled_s), highest, _fmt(course.stop_copy_mib),
               _fmt(course.downtime_ms, 0))
        )
    else:
        body = (
            "even with auto-converge from %d%% in %d%% steps (up to %d%%) rounds never fit max_downtime_ms=%s: "
            "the guest dirties more than the link sends at 1%% of its CPU; allow_postcopy=true or a higher "
            "bandwidth_mibps would finish it."
            % (initial_percent, increment_percent, highest, _fmt(inputs.max_downtime_ms, 0))
        )
    return dataclasses.replace(course, reason="%s; %s" % (lead, body))


def predict_capped(
    inputs: MigrationInputs,
    cap_percent: float,
    capped_rate_mibps: float,
    auto_converge: t.Tuple[int, int],
    rate_is_lower_bound: bool = False,
) -> Prediction:
    """Pre-copy with the vCPUs capped at cap_percent of a CPU from the first page (see _throttle).

    The capped guest dirties capped_rate_mibps (measured under a cap, in proportion); auto-converge
    from auto_converge (initial, increment) stays on top for passes that still do not shrink. The cap
    holds for the whole migration: the guest is slowed for all of total_s.
    """
    course, _throttled_s = _throttled_course(dataclasses.replace(inputs, dirty_rate_mibps=capped_rate_mibps),
                                             auto_converge)
    lead = (
        "Pre-copy alone would not converge (%s); with the vCPUs capped at %s%% of a CPU from the first page "
        "(the guest then dirties %s%s MiB/s) and auto-converge on top"
        % (_why_not(inputs, _simulate_precopy(inputs)), _fmt(cap_percent),
           "at least " if rate_is_lower_bound else "about ", _fmt(capped_rate_mibps))
    )
    if course.converges:
        body = (
            "it converges after %d rounds: %s MiB in %s s, the guest capped for all of it, %s MiB left for a "
            "pause of about %s ms." % (course.rounds, _fmt(course.transferred_mib), _fmt(course.total_s),
                                       _fmt(course.stop_copy_mib), _fmt(course.downtime_ms, 0))
        )
    else:
        body = ("rounds still never fit max_downtime_ms=%s; allow_postcopy=true or a higher bandwidth_mibps would "
                "finish it." % _fmt(inputs.max_downtime_ms, 0))
    return dataclasses.replace(course, reason="%s, %s" % (lead, body))


def _required_bandwidth_mibps(inputs: MigrationInputs) -> float:
    """The smallest whole MiB/s at which pre-copy converges (more speed never hurts: bisection)."""
    # At this speed whatever round 0 leaves (at most all memory) fits the downtime at once.
    high = max(inputs.memory_mib, 1.0) * 1000.0 / inputs.max_downtime_ms + inputs.bandwidth_mibps
    low = inputs.bandwidth_mibps
    for _step in range(_BISECT_STEPS):
        middle = (low + high) / 2.0
        if _simulate_precopy(dataclasses.replace(inputs, bandwidth_mibps=middle)).converges:
            high = middle
        else:
            low = middle
    return float(math.ceil(high - _EPSILON))


def _required_max_downtime_ms(inputs: MigrationInputs, course: _Precopy) -> float:
    """The smallest whole ms that fits the smallest rest any round leaves."""
    return float(math.ceil(course.smallest_remaining_mib / inputs.bandwidth_mibps * 1000.0 - _EPSILON))


def _why_not(inputs: MigrationInputs, course: _Precopy) -> str:
    """Why pre-copy does not converge, in one clause."""
    floor_ms = course.smallest_remaining_mib / inputs.bandwidth_mibps * 1000.0
    if inputs.saturated:
        return (
            "the %s MiB hot set is rewritten faster than the %s s measurement window shows, so every "
            "round sends it again, and it takes %s ms at %s MiB/s, more than max_downtime_ms=%s"
            % (_fmt(inputs.hot_mib), _fmt(inputs.dirty_rate_window_s), _fmt(floor_ms, 0),
               _fmt(inputs.bandwidth_mibps), _fmt(inputs.max_downtime_ms, 0))
        )
    if inputs.dirty_rate_mibps >= inputs.bandwidth_mibps:
        return (
            "the guest dirties %s MiB/s, not less than the %s MiB/s bandwidth, so rounds never shrink "
            "below %s MiB, which takes %s ms, more than max_downtime_ms=%s"
            % (_fmt(inputs.dirty_rate_mibps), _fmt(inputs.bandwidth_mibps),
               _fmt(course.smallest_remaining_mib), _fmt(floor_ms, 0), _fmt(inputs.max_downtime_ms, 0))
        )
    if inputs.hot_set_mib is None and course.smallest_remaining_mib <= inputs.window_mib + _EPSILON:
        return (
            "with the hot set unknown, any round may re-dirty the %s MiB the %s s measurement window saw, "
            "which takes %s ms at %s MiB/s, more than max_downtime_ms=%s"
            % (_fmt(course.smallest_remaining_mib), _fmt(inputs.dirty_rate_window_s), _fmt(floor_ms, 0),
               _fmt(inputs.bandwidth_mibps), _fmt(inputs.max_downtime_ms, 0))
        )
    return (
        "rounds shrink by only %s%% each, at a dirty rate of %s of %s MiB/s, and the smallest, %s MiB, "
        "takes %s ms within max_rounds=%d, more than max_downtime_ms=%s"
        % (_fmt(100.0 * (1.0 - inputs.dirty_rate_mibps / inputs.bandwidth_mibps), 0),
           _fmt(inputs.dirty_rate_mibps), _fmt(inputs.bandwidth_mibps), _fmt(course.smallest_remaining_mib),
           _fmt(floor_ms, 0), inputs.max_rounds, _fmt(inputs.max_downtime_ms, 0))
    )


def predict_precopy(inputs: MigrationInputs) -> Prediction:
    """Pre-copy rounds until the rest fits the downtime target, or max_rounds.

    Without convergence the prediction describes a migration forced to stop
    after max_rounds: its bytes, its time and the pause the rest would need.
    """
    course = _simulate_precopy(inputs)
    downtime_ms, transferred, total_s = _stop_and_totals(inputs, course)
    rounds = len(course.round_mib)
    required_bandwidth = required_downtime = None
    if course.converges:
        reason = (
            "Pre-copy converges after %d round%s: %s MiB in %s s, with %s MiB left for a pause of about %s ms."
            % (rounds, "" if rounds == 1 else "s", _fmt(transferred), _fmt(total_s),
               _fmt(course.remaining_mib), _fmt(downtime_ms, 0))
        )
    else:
        required_bandwidth = _required_bandwidth_mibps(inputs)
        required_downtime = _required_max_downtime_ms(inputs, course)
        reason = (
            "Pre-copy does not converge: %s; stopped after max_rounds=%d it would have sent %s MiB in %s s "
            "and pause the guest for about %s ms." % (_why_not(inputs, course), inputs.max_rounds,
                                                      _fmt(transferred), _fmt(total_s), _fmt(downtime_ms, 0))
        )
    return Prediction(
        strategy="precopy",
        converges=course.converges,
        rounds=rounds,
        transferred_mib=transferred,
        total_s=total_s,
        downtime_ms=downtime_ms,
        reason=reason,
        postcopy_s=None,
        round_mib=tuple(course.round_mib),
        stop_copy_mib=course.remaining_mib,
        required_bandwidth_mibps=required_bandwidth,
        required_max_downtime_ms=required_downtime,
    )


def predict_postcopy(inputs: MigrationInputs) -> Prediction:
    """One pre-copy pass, then the switch: the pages dirtied meanwhile follow on demand."""
    first_s = (inputs.memory_mib + _zero_wire_mib(inputs)) / inputs.bandwidth_mibps
    dirtied = inputs.dirtied_mib(first_s)
    postcopy_s = dirtied / inputs.bandwidth_mibps
    transferred = inputs.memory_mib + dirtied + _zero_wire_mib(inputs)
    total_s = inputs.setup_s + first_s + POSTCOPY_SWITCH_MS / 1000.0 + postcopy_s
    reason = "Post-copy: " + (
        "one pre-copy pass of %s MiB (%s s), a switch of about %s ms, then the guest runs on the destination "
        "for %s s while the %s MiB it dirtied meanwhile follow on demand; %s MiB in %s s."
        % (_fmt(inputs.memory_mib), _fmt(first_s), _fmt(POSTCOPY_SWITCH_MS, 0), _fmt(postcopy_s),
           _fmt(dirtied), _fmt(transferred), _fmt(total_s))
    )
    return Prediction(
        strategy="postcopy",
        converges=True,
        rounds=1,
        transferred_mib=transferred,
        total_s=total_s,
        downtime_ms=POSTCOPY_SWITCH_MS,
        reason=reason,
        postcopy_s=postcopy_s,
        round_mib=(float(inputs.memory_mib),),
    )


def predict_layered(inputs: MigrationInputs) -> Prediction:
    """Pre-copy of the cold layer, then post-copy of the hot layer.

    The model puts all dirtying inside the hot set (dirtied(t) <= H), so the
    cold layer (M - H) crosses once, in one pre-copy round, and the hot layer
    crosses once, after the switch. With the hot set unknown (all of memory)
    nothing is cold and the whole memory goes by post-copy.
    """
    hot = inputs.hot_mib
    cold = inputs.memory_mib - hot
    live_s = (cold + _zero_wire_mib(inputs)) / inputs.bandwidth_mibps
    postcopy_s = hot / inputs.bandwidth_mibps
    transferred = inputs.memory_mib + _zero_wire_mib(inputs)
    total_s = inputs.setup_s + live_s + POSTCOPY_SWITCH_MS / 1000.0 + postcopy_s
    rounds = 1 if cold > _EPSILON else 0
    if rounds:
        precopy_text = "one pre-copy round of the %s MiB cold layer (%s s)" % (_fmt(cold), _fmt(live_s))
    else:
        precopy_text = "no cold layer to pre-copy"
    reason = "Layered: " + (
        "%s, a switch of about %s ms, then the guest runs on the destination for %s s while the %s MiB hot "
        "layer crosses once; %s MiB in %s s."
        % (precopy_text, _fmt(POSTCOPY_SWITCH_MS, 0), _fmt(postcopy_s), _fmt(hot), _fmt(transferred),
           _fmt(total_s))
    )
    return Prediction(
        strategy="layered",
        converges=True,
        rounds=rounds,
        transferred_mib=transferred,
        total_s=total_s,
        downtime_ms=POSTCOPY_SWITCH_MS,
        reason=reason,
        postcopy_s=postcopy_s,
        round_mib=(cold,) if rounds else (),
    )


def choose_strategy(inputs: MigrationInputs, allow_postcopy: bool) -> t.Tuple[Prediction, t.List[Prediction]]:
    """Pick a strategy; return it and every candidate (precopy, postcopy, layered), in that order.

    Pre-copy when it converges within the downtime target. Otherwise, when
    post-copy is allowed, the post-copy strategy that keeps the guest
    dependent on its source for the shortest time (postcopy_s), then the
    faster one, layered on a tie: a failure during post-copy loses the
    guest, so that window is the risk to keep small. Otherwise pre-copy,
    with a reason naming the options that would make it converge.
    """
    precopy = predict_precopy(inputs)
    postcopy = predict_postcopy(inputs)
    layered = predict_layered(inputs)
    candidates = [precopy, postcopy, layered]
    if precopy.converges:
        return precopy, candidates
    why = _why_not(inputs, _simulate_precopy(inputs))
    if allow_postcopy:
        # min() keeps the first of equals: layered wins a tie.
        best = min((layered, postcopy), key=lambda p: (round(p.postcopy_s or 0.0, 6), round(p.total_s, 6)))
        # "Layered: 2 rounds ..." becomes "..., so layered: 2 rounds ...".
        label, body = best.reason.split(": ", 1)
        reason = "Pre-copy would not converge (%s), so %s: %s" % (why, label.lower(), body)
        return dataclasses.replace(best, reason=reason), candidates
    reason = (
        "Pre-copy will not converge: %s; set allow_postcopy=true, raise bandwidth_mibps to at least %s or "
        "max_downtime_ms to at least %s." % (why, _fmt(precopy.required_bandwidth_mibps or 0.0, 0),
                                             _fmt(precopy.required_max_downtime_ms or 0.0, 0))
    )
    return dataclasses.replace(precopy, reason=reason), candidates


def with_storage_copy(
    prediction: Prediction, disk_mib: float, bandwidth_mibps: float, paced_mib: t.Optional[float] = None
) -> Prediction:
    """The prediction with a storage copy of disk_mib before memory moves, at bandwidth_mibps.

    libvirt copies the disks first and moves memory once they are in sync; guest writes
    meanwhile are mirrored as they happen, small next to the copy, and not modelled.
    paced_mib: what the copy's pace counts when it differs from what crosses the wire: under a
    bandwidth cap QEMU counts a disk's unallocated ranges too, so its whole size.
    """
    _check_number("disk_mib", disk_mib)
    _check_number("bandwidth_mibps", bandwidth_mibps, strict=True)
    paced = disk_mib if paced_mib is None else _check_number("paced_mib", paced_mib)
    if not disk_mib and not paced:
        return prediction
    copy_s = paced / bandwidth_mibps
    return dataclasses.replace(
        prediction,
        transferred_mib=prediction.transferred_mib + disk_mib,
        total_s=prediction.total_s + copy_s,
        disk_copy_mib=disk_mib,
        disk_copy_s=copy_s,
    )
