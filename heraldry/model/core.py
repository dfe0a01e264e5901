"""Reference model of the tagger core: the executable definition of its semantics.

Plain Python and numpy, no Amaranth: gateware tests, cocotb tests and host tests all compare
against these functions, and ``docs/semantics.md`` explains them with timing diagrams.

Times are integers in *bins* (``2**fine_bits`` bins per clock cycle) and unbounded: the model
never wraps. The hardware counts modulo ``2**time_bits(fine_bits)``; tests that cross a wrap
unwrap the hardware's times before comparing.

Channels are numbered from 0; bit ``c`` of a pattern or herald mask is channel ``c``.
"""

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
import operator

import numpy as np

__all__ = [
    "MAX_CHANNELS", "MAX_RULES", "MAX_DELAY", "MAX_WINDOW", "MAX_DEAD_TIME", "MAX_HERALD_WIDTH",
    "EDGES", "HERALD_MODES",
    "ChannelSettings", "HeraldRule", "CoreSettings",
    "input_events", "delay_events",
    "Windows", "coincidence_windows", "pattern_counts",
    "HERALD_DTYPE", "herald_records",
    "TAG_DTYPE", "tag_stream",
    "COINCIDENCE_DTYPE",
    "Result", "simulate", "counts_from_tags", "herald_pin",
]

# Limits restated from `heraldry.protocol`, which imports Amaranth and so cannot be imported
# here. tests/test_model.py checks that they agree with protocol.
MAX_CHANNELS = 8                # protocol.MAX_CHANNELS
MAX_RULES = 8                   # protocol.MAX_RULES
MAX_DELAY = 2**10 - 1           # 2**protocol.DELAY_BITS - 1
MAX_WINDOW = 2**10 - 1          # 2**protocol.WINDOW_BITS - 1
MAX_DEAD_TIME = 2**16 - 1       # 2**protocol.DEAD_TIME_BITS - 1
MAX_HERALD_WIDTH = 2**8 - 1     # 2**protocol.HERALD_WIDTH_BITS - 1
#: Edge selections, the lower-case names of `protocol.Edge`'s members.
EDGES = ("none", "rising", "falling", "both")
#: Herald rule modes (docs/semantics.md, "Heralds"): ``early`` decides at the completing event,
#: ``exact`` when the window closes.
HERALD_MODES = ("early", "exact")

HERALD_DTYPE = np.dtype([("time", np.int64), ("rule", np.uint8), ("pattern", np.uint16)])
TAG_DTYPE = np.dtype([("time", np.int64), ("channel", np.uint8)])
#: A recorded coincidence window; ``time`` is its ``t0``.
COINCIDENCE_DTYPE = np.dtype([("time", np.int64), ("pattern", np.uint16)])

_NEVER = np.iinfo(np.int64).max     # "no event of this channel in this window"


# --- validation helpers ------------------------------------------------------------------------

def _int(value, name, lo=None, hi=None):
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, not {value!r}") from None
    if lo is not None and value < lo or hi is not None and value > hi:
        bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {bounds}, not {value}")
    return value


def _times(values, name):
    """A 1-D, sorted int64 array of bin times."""
    array = np.asarray(values)
    if array.size == 0:
        return np.zeros(0, np.int64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of times, not shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer bin times, not {array.dtype}")
    if array.dtype.kind == "u" and array.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds times beyond int64")
    array = array.astype(np.int64)
    if np.any(array[1:] < array[:-1]):
        raise ValueError(f"{name} must be sorted in time (non-decreasing)")
    return array


def _channel_times(times_per_channel):
    if (isinstance(times_per_channel, np.ndarray) and times_per_channel.dtype != object
            and times_per_channel.ndim != 2):
        raise ValueError("times_per_channel must be a sequence of per-channel time arrays")
    tpc = [_times(t, f"times of channel {c}") for c, t in enumerate(times_per_channel)]
    if not 1 <= len(tpc) <= MAX_CHANNELS:
        raise ValueError(f"times_per_channel must have 1..{MAX_CHANNELS} channels, not {len(tpc)}")
    return tpc


def _mask(mask, r, channels):
    _int(mask, f"herald mask of rule {r}")
    if mask == 0:
        raise ValueError(f"herald mask of rule {r} is 0: it would never fire")
    if not 0 < mask < 2**channels:
        raise ValueError(f"herald mask of rule {r} ({mask:#b}) has bits beyond the "
                         f"{channels} channels")
    return int(mask)


def _masks(masks, channels):
    masks = tuple(masks)
    if len(masks) > MAX_RULES:
        raise ValueError(f"at most {MAX_RULES} herald rules, not {len(masks)}")
    return tuple(_mask(mask, r, channels) for r, mask in enumerate(masks))


def _rules(rules, channels):
    """Herald rules as :class:`HeraldRule` s, checked against ``channels``, pins filled in.

    A plain integer is a channel mask: ``HeraldRule(require=mask)`` (early, no veto)."""
    rules = tuple(rules)
    if len(rules) > MAX_RULES:
        raise ValueError(f"at most {MAX_RULES} herald rules, not {len(rules)}")
    out = []
    for r, rule in enumerate(rules):
        if not isinstance(rule, HeraldRule):
            rule = HeraldRule(require=_mask(rule, r, channels))
        if rule.require >> channels or rule.veto >> channels:
            raise ValueError(f"herald rule {r} ({rule}) names channels beyond the "
                             f"{channels} channels")
        out.append(rule if rule.pin is not None else
                   HeraldRule(rule.require, rule.veto, rule.mode, r))
    return tuple(out)


# --- settings ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChannelSettings:
    """Input settings of one channel.

    Members:
        enable: accept events at all.
        edge: ``"rising"``, ``"falling"``, ``"both"`` or ``"none"`` (see :data:`EDGES`).
        dead_time: bins; non-extending; 0 = none. 0..``MAX_DEAD_TIME``.
        delay: bins added to every event's time. 0..``MAX_DELAY``.

    Raises ``ValueError`` for anything out of range.
    """
    enable: bool = True
    edge: str = "rising"
    dead_time: int = 0
    delay: int = 0

    def __post_init__(self):
        if self.enable not in (True, False):
            raise ValueError(f"enable must be a bool, not {self.enable!r}")
        object.__setattr__(self, "enable", bool(self.enable))
        if self.edge not in EDGES:
            raise ValueError(f"edge must be one of {', '.join(EDGES)}, not {self.edge!r}")
        object.__setattr__(self, "dead_time",
                           _int(self.dead_time, "dead_time", 0, MAX_DEAD_TIME))
        object.__setattr__(self, "delay", _int(self.delay, "delay", 0, MAX_DELAY))


@dataclass(frozen=True)
class HeraldRule:
    """One herald rule (docs/semantics.md, "Heralds").

    Members:
        require: channels that must be in the window's pattern (non-zero bitmask).
        veto: channels that must not be in it (bitmask, disjoint from ``require``).
        mode: ``"early"``: decided at the completing event (the first event after which the
            window's pattern contains ``require``); fires iff the pattern at that moment
            (including every event at that same time) holds no ``veto`` channel. A veto
            channel arriving later in the window does not take the herald back.
            ``"exact"``: decided when the window closes; fires iff the closed pattern contains
            ``require`` and no ``veto`` channel.
        pin: herald output pin the rule drives (several rules may share one: their firings
            are OR'ed); ``None``: the pin of the rule's own number.

    ``str()`` gives the command-line form, e.g. ``D0&D3&!D1&!D2,exact``. Raises ``ValueError``
    for anything out of range (channel numbers are checked by :class:`CoreSettings`).
    """
    require: int
    veto: int = 0
    mode: str = "early"
    pin: int = None

    def __post_init__(self):
        require = _int(self.require, "herald require mask", 0, 2**MAX_CHANNELS - 1)
        veto = _int(self.veto, "herald veto mask", 0, 2**MAX_CHANNELS - 1)
        if require == 0:
            raise ValueError("herald require mask is 0: a rule needs at least one channel")
        if require & veto:
            raise ValueError(f"herald rule requires and vetoes the same channels "
                             f"({require & veto:#b}): it would never fire")
        if self.mode not in HERALD_MODES:
            raise ValueError(f"herald mode must be one of {', '.join(HERALD_MODES)}, "
                             f"not {self.mode!r}")
        pin = None if self.pin is None else _int(self.pin, "herald pin", 0, MAX_RULES - 1)
        object.__setattr__(self, "require", require)
        object.__setattr__(self, "veto", veto)
        object.__setattr__(self, "pin", pin)

    def __str__(self):
        terms = [f"D{c}" for c in range(MAX_CHANNELS) if self.require >> c & 1]
        terms += [f"!D{c}" for c in range(MAX_CHANNELS) if self.veto >> c & 1]
        text = "&".join(terms)
        if self.mode != "early":
            text += f",{self.mode}"
        if self.pin is not None:
            text += f",pin={self.pin}"
        return text


@dataclass(frozen=True)
class CoreSettings:
    """Everything the model needs to know about one core's configuration.

    Members:
        channels: 1..``MAX_CHANNELS``.
        fine_bits: PHY sub-clock bits F; ``2**F`` bins per cycle.
        window: coincidence window W in bins, 1..``MAX_WINDOW`` and ``>= 2**F``.
        channel: one :class:`ChannelSettings` per channel, or ``()`` for all defaults.
        herald_rules: the herald rules (at most ``MAX_RULES``): :class:`HeraldRule` s or
            plain channel masks (``HeraldRule(require=mask)``: early, no veto). Stored as
            :class:`HeraldRule` s with every ``pin`` filled in (default: the rule's number).
        herald_masks: the older way to give rules: one channel bitmask per rule, each
            non-zero and within the channel count. Give ``herald_rules`` or ``herald_masks``
            (or both, if they agree); afterwards ``herald_masks`` holds every rule's
            ``require`` mask.
        herald_width: herald pin pulse in cycles, 1..``MAX_HERALD_WIDTH``.
        coincidence_record_mask: bit ``p`` set: closed windows of pattern ``p`` are recorded.
        delay_depth: events one delay line holds (>= 1).

    Raises ``ValueError`` for anything out of range.
    """
    channels: int = 4
    fine_bits: int = 0
    window: int = 1
    channel: tuple = ()
    herald_masks: tuple = ()
    herald_width: int = 1
    coincidence_record_mask: int = 0
    delay_depth: int = 16
    herald_rules: tuple = ()

    def __post_init__(self):
        channels = _int(self.channels, "channels", 1, MAX_CHANNELS)
        fine_bits = _int(self.fine_bits, "fine_bits", 0)
        window = _int(self.window, "window", 1, MAX_WINDOW)
        if window < 2**fine_bits:
            # At most one window may close per cycle (architecture.md, coincidence unit).
            raise ValueError(f"window ({window} bins) must be at least one cycle "
                             f"(2**fine_bits = {2**fine_bits} bins)")
        channel = tuple(self.channel)
        if channel and len(channel) != channels:
            raise ValueError(f"channel must hold {channels} ChannelSettings (or be empty), "
                             f"not {len(channel)}")
        for c, ch in enumerate(channel):
            if not isinstance(ch, ChannelSettings):
                raise ValueError(f"channel[{c}] must be a ChannelSettings, not {ch!r}")
        herald_masks = _masks(self.herald_masks, channels)
        herald_rules = _rules(self.herald_rules, channels)
        if herald_rules and herald_masks:
            if herald_masks != tuple(r.require for r in herald_rules):
                raise ValueError("give herald_rules or herald_masks, not both (they disagree)")
        elif herald_masks:
            herald_rules = _rules(herald_masks, channels)
        herald_masks = tuple(r.require for r in herald_rules)
        herald_width = _int(self.herald_width, "herald_width", 1, MAX_HERALD_WIDTH)
        record_mask = _int(self.coincidence_record_mask, "coincidence_record_mask",
                           0, 2**(2**channels) - 1)
        delay_depth = _int(self.delay_depth, "delay_depth", 1)
        for name, value in (("channels", channels), ("fine_bits", fine_bits),
                            ("window", window), ("channel", channel),
                            ("herald_masks", herald_masks), ("herald_width", herald_width),
                            ("coincidence_record_mask", record_mask),
                            ("delay_depth", delay_depth), ("herald_rules", herald_rules)):
            object.__setattr__(self, name, value)

    def channel_settings(self, c):
        """The :class:`ChannelSettings` of channel ``c`` (defaults when ``channel == ()``)."""
        _int(c, "channel index", 0, self.channels - 1)
        return self.channel[c] if self.channel else ChannelSettings()


# --- input stage and delay line ----------------------------------------------------------------

def _gate(times, gate):
    if gate is None:
        return times
    keep = np.zeros(times.shape, bool)
    for i, interval in enumerate(gate):
        try:
            start, stop = interval
        except (TypeError, ValueError):
            raise ValueError(f"gate[{i}] must be a (start, stop) pair, not {interval!r}") \
                from None
        start = _int(start, f"gate[{i}] start")
        stop = _int(stop, f"gate[{i}] stop")
        if stop < start:
            raise ValueError(f"gate[{i}] = ({start}, {stop}) ends before it starts")
        keep |= (times >= start) & (times < stop)
    return times[keep]


def _dead_time(times, dead_time):
    if dead_time == 0 or np.all(np.diff(times) >= dead_time):
        return times
    kept = []
    last = None
    for t in times.tolist():
        # Non-extending: only accepted events (re)start the dead time.
        if last is None or t - last >= dead_time:
            kept.append(t)
            last = t
    return np.array(kept, np.int64)


def input_events(rise, fall, ch, gate=None, *, fine_bits=0):
    """Events one input stage accepts, in bins, before delay.

    Parameters:
        rise, fall: sorted integer arrays of the pin's rising / falling edge times (bins).
        ch: the channel's :class:`ChannelSettings`.
        gate: ``None`` (always open) or a list of half-open ``(start, stop)`` bin intervals
            on the edge time; an event is kept if it lies in any of them. ``[]`` = closed.
        fine_bits: F. The PHY reports at most one edge of each kind per cycle and the input
            stage picks the earlier of a rise and a fall in one cycle, so at most one event per
            cycle survives: the earliest selected edge of the cycle. With F = 0 this only merges
            a rise and a fall in the same bin.

    Order: edge selection (and the one-per-cycle rule), enable, gate, then non-extending dead
    time (discard ``t`` if ``t - last_accepted < dead_time``; discarded and gated events do not
    restart it).

    Returns a sorted int64 array of accepted times. Raises ``ValueError`` on bad input.
    """
    if not isinstance(ch, ChannelSettings):
        raise ValueError(f"ch must be a ChannelSettings, not {ch!r}")
    rise = _times(rise, "rise")
    fall = _times(fall, "fall")
    fine_bits = _int(fine_bits, "fine_bits", 0)
    if not ch.enable or ch.edge == "none":
        times = np.zeros(0, np.int64)
    elif ch.edge == "rising":
        times = rise
    elif ch.edge == "falling":
        times = fall
    else:
        times = np.sort(np.concatenate([rise, fall]))
    if times.size:
        cycle = times >> fine_bits
        times = times[np.r_[True, cycle[1:] != cycle[:-1]]]
    times = _gate(times, gate)
    return _dead_time(times, ch.dead_time)


def delay_events(times, delay, depth=16, fine_bits=0):
    """Pass one channel's events through its delay line.

    An event at time ``t`` arrives in cycle ``t >> F`` and leaves in cycle ``(t + delay) >> F``.
    It is dropped if, in its arrival cycle, the line already holds ``>= depth`` kept events that
    arrived in an earlier cycle and leave in a later cycle than this arrival (an event leaving
    in the arrival cycle has freed its slot). ``delay == 0`` never drops.

    Returns ``(kept times + delay, number dropped)``. Raises ``ValueError`` on bad input.
    """
    times = _times(times, "times")
    delay = _int(delay, "delay", 0, MAX_DELAY)
    depth = _int(depth, "depth", 1)
    fine_bits = _int(fine_bits, "fine_bits", 0)
    arrive = times >> fine_bits
    leave = (times + delay) >> fine_bits
    # Fast path: count what would be in flight if nothing were dropped. Arrivals and departures
    # are both monotonic, so "arrived earlier" and "already left" are prefixes of the events.
    earlier = np.searchsorted(arrive, arrive, "left")
    gone = np.searchsorted(leave, arrive, "right")
    in_flight = earlier - np.minimum(gone, earlier)
    if delay == 0 or times.size == 0 or in_flight.max() < depth:
        return times + delay, 0

    kept = []
    line = deque()       # (arrival cycle, leave cycle) of kept events still in the line
    dropped = 0
    for t, a, l in zip(times.tolist(), arrive.tolist(), leave.tolist()):
        while line and line[0][1] <= a:
            line.popleft()
        same_cycle = 0
        for arrival, _ in reversed(line):
            if arrival != a:
                break
            same_cycle += 1
        if len(line) - same_cycle >= depth:
            dropped += 1
            continue
        kept.append(t)
        if l > a:
            line.append((a, l))
    return np.array(kept, np.int64) + delay, dropped


# --- coincidence windows and heralds -----------------------------------------------------------

@dataclass
class Windows:
    """Closed coincidence windows, in time order: ``t0`` (int64) and ``pattern`` (int64)."""
    t0: np.ndarray
    pattern: np.ndarray

    def __len__(self):
        return len(self.t0)


def _merge(tpc):
    """All events as (times, channels) arrays sorted by (time, channel)."""
    times = np.concatenate(tpc)
    channels = np.concatenate([np.full(len(t), c, np.int64) for c, t in enumerate(tpc)])
    order = np.lexsort((channels, times))
    return times[order], channels[order]


def _window_starts(times, window):
    """Index of the first event of each window in the sorted ``times``."""
    values = times.tolist()
    starts = []
    i = 0
    while i < len(values):
        starts.append(i)
        # The first event at or after t0 + W opens the next window.
        i = bisect_left(values, values[i] + window, i + 1)
    return np.array(starts, np.int64)


def coincidence_windows(times_per_channel, window):
    """Group delayed events into coincidence windows.

    A window opens at the first event when none is open (``t0`` = its time); events with
    ``t0 <= t < t0 + W`` join it; an event at ``t >= t0 + W`` opens the next window. The
    pattern is the bitmask of channels with at least one event in the window.

    Parameters:
        times_per_channel: one sorted integer array of delayed times per channel (1..8).
        window: W in bins, 1..``MAX_WINDOW``.
    """
    tpc = _channel_times(times_per_channel)
    window = _int(window, "window", 1, MAX_WINDOW)
    times, channels = _merge(tpc)
    if times.size == 0:
        return Windows(np.zeros(0, np.int64), np.zeros(0, np.int64))
    starts = _window_starts(times, window)
    pattern = np.bitwise_or.reduceat(np.left_shift(1, channels), starts)
    return Windows(times[starts], pattern.astype(np.int64))


def pattern_counts(windows, channels):
    """Number of windows per pattern: int64 array of shape ``(2**channels,)``, ``[0] == 0``."""
    channels = _int(channels, "channels", 1, MAX_CHANNELS)
    pattern = np.asarray(windows.pattern, np.int64)
    if pattern.size and (pattern.min() < 1 or pattern.max() >= 2**channels):
        raise ValueError(f"window patterns must be 1..{2**channels - 1} for {channels} channels")
    return np.bincount(pattern, minlength=2**channels).astype(np.int64)


def herald_records(times_per_channel, window, rules, fine_bits=0):
    """Herald firings of every rule.

    ``rules``: :class:`HeraldRule` s, or channel masks (early rules without veto). Each rule
    fires at most once per window, and its record's time is when it decided:

    * ``early``: at the event whose time makes the window's pattern contain ``require`` (the
      completing event), if the pattern at that time (including every event at that same time)
      holds no ``veto`` channel. Record: that time, the rule, that pattern.
    * ``exact``: once the window has closed, if its pattern contains ``require`` and no
      ``veto`` channel. Record: the window's end ``t0 + W`` rounded up to a whole cycle of
      ``2**fine_bits`` bins (the first bin of the cycle in which the core decides), the rule,
      the closed pattern.

    So every rule's records, and all of them together, are in time order as the core sends them
    (the wire protocol refuses a herald earlier than the one before). Returns a
    :data:`HERALD_DTYPE` array sorted by (time, rule).
    """
    tpc = _channel_times(times_per_channel)
    window = _int(window, "window", 1, MAX_WINDOW)
    fine_bits = _int(fine_bits, "fine_bits", 0)
    channels = len(tpc)
    rules = _rules(rules, channels)
    times, chans = _merge(tpc)
    if times.size == 0 or not rules:
        return np.zeros(0, HERALD_DTYPE)
    starts = _window_starts(times, window)
    closed = np.bitwise_or.reduceat(np.left_shift(1, chans), starts)
    window_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(times)]))
    # first[w, c]: time of channel c's first event in window w. Events are in time order, so
    # np.unique's first occurrence of each (window, channel) is the earliest.
    first = np.full((len(starts), channels), _NEVER, np.int64)
    keys, index = np.unique(window_of * channels + chans, return_index=True)
    first.flat[keys] = times[index]
    bits = np.left_shift(1, np.arange(channels))
    parts = []
    for number, rule in enumerate(rules):
        mask = rule.require
        if rule.mode == "exact":
            fires = (closed & mask == mask) & (closed & rule.veto == 0)
            part = np.zeros(int(fires.sum()), HERALD_DTYPE)
            decided = (((times[starts[fires]] + window - 1) >> fine_bits) + 1) << fine_bits
            part["time"], part["rule"], part["pattern"] = decided, number, closed[fires]
            parts.append(part)
            continue
        columns = [c for c in range(channels) if mask >> c & 1]
        complete = (first[:, columns] != _NEVER).all(axis=1)
        fire = first[complete][:, columns].max(axis=1)
        pattern = ((first[complete] <= fire[:, None]) * bits).sum(axis=1)
        allowed = pattern & rule.veto == 0
        fire, pattern = fire[allowed], pattern[allowed]
        part = np.zeros(len(fire), HERALD_DTYPE)
        part["time"], part["rule"], part["pattern"] = fire, number, pattern
        parts.append(part)
    records = np.concatenate(parts)
    return records[np.lexsort((records["rule"], records["time"]))]


def tag_stream(times_per_channel):
    """Every event as a tag: a :data:`TAG_DTYPE` array sorted by (time, channel)."""
    times, channels = _merge(_channel_times(times_per_channel))
    tags = np.zeros(len(times), TAG_DTYPE)
    tags["time"], tags["channel"] = times, channels
    return tags


# --- whole core --------------------------------------------------------------------------------

@dataclass
class Result:
    """Everything one run of the core produces.

    Members:
        tags: :data:`TAG_DTYPE`, delayed times, sorted by (time, channel).
        singles: int64 per channel, events entering the coincidence unit.
        patterns: :func:`pattern_counts` of the windows.
        windows: :class:`Windows`.
        heralds: :data:`HERALD_DTYPE`, sorted by (time, rule).
        herald_counts: int64 per rule.
        coincidence_records: :data:`COINCIDENCE_DTYPE`, windows whose pattern bit is set in
            ``coincidence_record_mask``, in time order.
        delay_dropped: int64 per channel, events lost to a full delay line.
    """
    tags: np.ndarray
    singles: np.ndarray
    patterns: np.ndarray
    windows: Windows
    heralds: np.ndarray
    herald_counts: np.ndarray
    coincidence_records: np.ndarray
    delay_dropped: np.ndarray


def _result(tpc, settings, delay_dropped):
    windows = coincidence_windows(tpc, settings.window)
    heralds = herald_records(tpc, settings.window, settings.herald_rules, settings.fine_bits)
    # The mask has 2**channels bits (256 for 8 channels): look it up per pattern, not by shift.
    selected = np.array([settings.coincidence_record_mask >> p & 1
                         for p in range(2**settings.channels)], bool)
    recorded = selected[windows.pattern]
    records = np.zeros(int(recorded.sum()), COINCIDENCE_DTYPE)
    records["time"], records["pattern"] = windows.t0[recorded], windows.pattern[recorded]
    return Result(
        tags=tag_stream(tpc),
        singles=np.array([len(t) for t in tpc], np.int64),
        patterns=pattern_counts(windows, settings.channels),
        windows=windows,
        heralds=heralds,
        herald_counts=np.bincount(heralds["rule"].astype(np.int64),
                                  minlength=len(settings.herald_rules)).astype(np.int64),
        coincidence_records=records,
        delay_dropped=np.asarray(delay_dropped, np.int64),
    )


def _per_channel(values, name, channels):
    values = list(values)
    if len(values) != channels:
        raise ValueError(f"{name} must hold one edge-time array per channel ({channels}), "
                         f"not {len(values)}")
    return values


def simulate(rise, fall, settings, gate=None):
    """Run the whole core: input stage, delay line, coincidences, heralds, tags, counters.

    Parameters:
        rise, fall: one sorted integer array of edge times (bins) per channel.
        settings: :class:`CoreSettings`.
        gate: the run gate, as for :func:`input_events` (shared by all channels).

    Returns a :class:`Result`. Raises ``ValueError`` on bad input.
    """
    if not isinstance(settings, CoreSettings):
        raise ValueError(f"settings must be a CoreSettings, not {settings!r}")
    rise = _per_channel(rise, "rise", settings.channels)
    fall = _per_channel(fall, "fall", settings.channels)
    delayed = []
    dropped = []
    for c in range(settings.channels):
        ch = settings.channel_settings(c)
        events = input_events(rise[c], fall[c], ch, gate, fine_bits=settings.fine_bits)
        times, lost = delay_events(events, ch.delay, settings.delay_depth, settings.fine_bits)
        delayed.append(times)
        dropped.append(lost)
    return _result(delayed, settings, dropped)


def counts_from_tags(tags, settings):
    """Recompute the core's outputs from a streamed tag array (delays already applied).

    This is what a host uses to check the hardware counters of a lossless run. ``tags`` needs
    ``time`` and ``channel`` fields (:data:`TAG_DTYPE`); any order is accepted. The result's
    ``delay_dropped`` is all zero: tags carry no loss information (loss records do).
    """
    if not isinstance(settings, CoreSettings):
        raise ValueError(f"settings must be a CoreSettings, not {settings!r}")
    tags = np.asarray(tags)
    if tags.dtype.names is None or not {"time", "channel"} <= set(tags.dtype.names):
        raise ValueError("tags must be a structured array with 'time' and 'channel' fields")
    if tags.ndim != 1:
        raise ValueError(f"tags must be 1-D, not shape {tags.shape}")
    times = tags["time"]
    channels = tags["channel"].astype(np.int64)
    if tags.size and (times.dtype.kind not in "iu" or channels.min() < 0
                      or channels.max() >= settings.channels):
        raise ValueError(f"tags must have integer times and channels 0..{settings.channels - 1}")
    times = times.astype(np.int64)
    tpc = [np.sort(times[channels == c]) for c in range(settings.channels)]
    return _result(tpc, settings, np.zeros(settings.channels, np.int64))


def herald_pin(heralds, width, latency, *, rules=None, fine_bits=0, herald_rules=None):
    """When each herald output pin is high.

    A firing whose record time falls in cycle ``d = time >> fine_bits`` (the cycle its rule
    decided in: an early rule's completing event, an exact rule's window end rounded up to a
    cycle) drives its pin high for cycles ``[d + latency, d + latency + width)``; a firing while
    the pin is high restarts the width, so overlapping or touching intervals merge (also between
    rules that share a pin). For the core with the generic PHY and the completing channel's
    delay already in the record time, ``latency = phy.latency + 2`` (input-stage register,
    herald register) = 3.

    Parameters:
        heralds: :data:`HERALD_DTYPE` array.
        width: pulse width in cycles, 1..``MAX_HERALD_WIDTH``.
        latency: cycles, >= 0.
        rules: number of pins; ``None`` = highest pin used + 1.
        herald_rules: the :class:`HeraldRule` s (or masks) the records come from, for their
            pins (``CoreSettings.herald_rules``); ``None``: rule ``r`` on pin ``r``.

    Returns, per pin, a sorted list of disjoint, non-touching half-open ``(start, stop)``
    cycle intervals.
    """
    width = _int(width, "width", 1, MAX_HERALD_WIDTH)
    latency = _int(latency, "latency", 0)
    fine_bits = _int(fine_bits, "fine_bits", 0)
    heralds = np.asarray(heralds)
    if heralds.dtype.names is None or not {"time", "rule"} <= set(heralds.dtype.names):
        raise ValueError("heralds must be a structured array with 'time' and 'rule' fields")
    rule_of = heralds["rule"].astype(np.int64)
    decided = heralds["time"].astype(np.int64) >> fine_bits
    pin_of = rule_of
    if herald_rules is not None:
        herald_rules = _rules(herald_rules, MAX_CHANNELS)
        if rule_of.size and rule_of.max() >= len(herald_rules):
            raise ValueError(f"heralds hold rule {rule_of.max()} but only "
                             f"{len(herald_rules)} rules are given")
        pin_of = np.array([r.pin for r in herald_rules], np.int64)[rule_of]
    if rules is None:
        rules = int(pin_of.max()) + 1 if pin_of.size else 0
    rules = _int(rules, "rules", 0, MAX_RULES)
    if pin_of.size and pin_of.max() >= rules:
        raise ValueError(f"heralds drive pin {pin_of.max()} but rules = {rules}")
    pins = []
    for pin in range(rules):
        starts = np.sort(decided[pin_of == pin])
        intervals = []
        for start in (starts + latency).tolist():
            if intervals and start <= intervals[-1][1]:
                intervals[-1] = (intervals[-1][0], start + width)
            else:
                intervals.append((start, start + width))
        pins.append(intervals)
    return pins
