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
    "EDGES", "HERALD_MODES", "ROLES", "MAX_GATE_END", "OFFSET_NONE", "MAX_MARKER_EVERY",
    "ChannelSettings", "HeraldRule", "CoreSettings",
    "input_events", "delay_events",
    "Windows", "coincidence_windows", "pattern_counts",
    "HERALD_DTYPE", "herald_records",
    "TAG_DTYPE", "tag_stream", "STREAM_MODES", "STREAM_HOLD", "stream_filter",
    "COINCIDENCE_DTYPE",
    "SYNC_DTYPE", "sync_position", "gate_events",
    "Result", "simulate", "counts_from_tags", "herald_pin",
    "gate_duty", "expected_heralds_per_attempt",
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
#: Stream modes of a channel (docs/semantics.md, "Stream filters"): which of its events are sent
#: as tags. Counters count every event whatever the mode.
STREAM_MODES = ("all", "coincident", "none")
#: Slots of the core's stream filter: events it can hold while their window is single-channel.
STREAM_HOLD = 2
#: Channel roles (docs/semantics.md, "Sync, gates and reference markers"): a ``detector`` takes
#: part in windows; the ``sync`` channel (at most one) is the attempt clock; a ``reference``
#: channel's edges are streamed as markers (PPS or a divided 10 MHz).
ROLES = ("detector", "sync", "reference")
#: A gate's end ``offset + width`` is at most this (2**protocol.GATE_BITS - 1), so that the
#: hardware's saturated offset (``OFFSET_NONE``) is never inside a gate.
MAX_GATE_END = 2**16 - 1
#: A herald record's ``offset`` when no sync edge came before it, or when it came
#: ``OFFSET_NONE`` bins or more before it (the offset saturates).
OFFSET_NONE = 2**16 - 1
#: Largest ``sync_marker_every`` (2**protocol.MARKER_EVERY_BITS - 1).
MAX_MARKER_EVERY = 2**16 - 1

HERALD_DTYPE = np.dtype([("time", np.int64), ("rule", np.uint8), ("pattern", np.uint16)])
TAG_DTYPE = np.dtype([("time", np.int64), ("channel", np.uint8)])
#: A herald record's place in the attempt clock, as in PicoQuant's T3 mode: ``attempt`` = the
#: number of sync edges at or before the record's time, ``offset`` = bins from the latest of
#: them (``OFFSET_NONE`` if none, saturating there).
SYNC_DTYPE = np.dtype([("attempt", np.int64), ("offset", np.int64)])
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
        role: ``"detector"`` (default), ``"sync"`` or ``"reference"`` (see :data:`ROLES`).
        gate: ``None`` (no gate) or ``(offset, width)`` in bins: a detector event is kept only
            if ``offset <= t - s < offset + width``, ``s`` the latest sync edge at or before
            its (delayed) time ``t``. ``width >= 1``, ``offset + width <= MAX_GATE_END``.
            Detector channels only.

    Raises ``ValueError`` for anything out of range.
    """
    enable: bool = True
    edge: str = "rising"
    dead_time: int = 0
    delay: int = 0
    role: str = "detector"
    gate: tuple = None

    def __post_init__(self):
        if self.enable not in (True, False):
            raise ValueError(f"enable must be a bool, not {self.enable!r}")
        object.__setattr__(self, "enable", bool(self.enable))
        if self.edge not in EDGES:
            raise ValueError(f"edge must be one of {', '.join(EDGES)}, not {self.edge!r}")
        object.__setattr__(self, "dead_time",
                           _int(self.dead_time, "dead_time", 0, MAX_DEAD_TIME))
        object.__setattr__(self, "delay", _int(self.delay, "delay", 0, MAX_DELAY))
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if self.gate is not None:
            try:
                offset, width = self.gate
            except (TypeError, ValueError):
                raise ValueError(f"gate must be None or an (offset, width) pair, "
                                 f"not {self.gate!r}") from None
            offset = _int(offset, "gate offset", 0, MAX_GATE_END - 1)
            width = _int(width, "gate width", 1, MAX_GATE_END)
            if offset + width > MAX_GATE_END:
                raise ValueError(f"gate offset + width ({offset} + {width}) must be at most "
                                 f"{MAX_GATE_END} bins")
            if self.role != "detector":
                raise ValueError(f"a gate belongs to a detector channel, not a {self.role} "
                                 f"channel")
            object.__setattr__(self, "gate", (offset, width))


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
        sync_marker_every: N: stream the sync edges with attempt numbers N, 2N, ... as tags
            of the sync channel (markers); 0 (default) streams none. 0..``MAX_MARKER_EVERY``.
        stream: one stream mode per channel (:data:`STREAM_MODES`), or ``()`` (default): every
            channel ``all``. Stored as one mode per channel. Applies to detector events; a
            sync or reference channel's markers are always streamed.
        stream_hold: the stream filter's slots (>= 1, :func:`stream_filter`).

    At most one channel has the role ``sync``; a channel with a gate needs one. Herald rules
    name detector channels only. Raises ``ValueError`` for anything out of range.
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
    sync_marker_every: int = 0
    stream: tuple = ()
    stream_hold: int = STREAM_HOLD

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
        marker_every = _int(self.sync_marker_every, "sync_marker_every", 0, MAX_MARKER_EVERY)
        roles = [ch.role for ch in channel] if channel else ["detector"] * channels
        syncs = [c for c, role in enumerate(roles) if role == "sync"]
        if len(syncs) > 1:
            raise ValueError(f"at most one sync channel, not {len(syncs)} "
                             f"(channels {', '.join(map(str, syncs))})")
        gated = [c for c, ch in enumerate(channel) if ch.gate is not None]
        if gated and not syncs:
            raise ValueError(f"channel {gated[0]} has a gate but no channel is the sync")
        others = sum(1 << c for c, role in enumerate(roles) if role != "detector")
        for r, rule in enumerate(herald_rules):
            if (rule.require | rule.veto) & others:
                c = ((rule.require | rule.veto) & others).bit_length() - 1
                raise ValueError(f"herald rule {r} ({rule}) names channel {c}, a "
                                 f"{roles[c]} channel")
        object.__setattr__(self, "sync_marker_every", marker_every)
        object.__setattr__(self, "stream", _stream_modes(self.stream, channels))
        object.__setattr__(self, "stream_hold", _int(self.stream_hold, "stream_hold", 1))
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

    @property
    def sync_channel(self):
        """The sync channel's number, or ``None``."""
        return next((c for c, ch in enumerate(self.channel) if ch.role == "sync"), None)

    def role_mask(self, role):
        """Bitmask of the channels with ``role``."""
        return sum(1 << c for c in range(self.channels)
                   if self.channel_settings(c).role == role)


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
    in the arrival cycle has freed its slot), or if it would leave in the same cycle as the
    previous kept event (a *collision*: the line sends one event per cycle; only with F > 0 and
    a delay that is not a whole number of cycles, for events less than ``2**F`` bins apart).
    ``delay == 0`` never drops.

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
    if delay == 0 or times.size == 0 or (in_flight.max() < depth
                                         and not np.any(leave[1:] == leave[:-1])):
        return times + delay, 0

    kept = []
    line = deque()       # (arrival cycle, leave cycle) of kept events still in the line
    dropped = 0
    last_leave = None    # leave cycle of the previous kept event
    for t, a, l in zip(times.tolist(), arrive.tolist(), leave.tolist()):
        if l == last_leave:
            dropped += 1
            continue
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
        last_leave = l
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


def stream_filter(times_per_channel, window, modes, hold=STREAM_HOLD, fine_bits=0):
    """Which events the stream filter sends as tags (docs/semantics.md, "Stream filters").

    Each channel has a stream mode (:data:`STREAM_MODES`): ``all`` streams every event,
    ``none`` none, and ``coincident`` the events of windows whose closed pattern holds two or
    more channels (whatever those channels' stream modes). A ``coincident`` event is known to
    belong to such a window only once a second channel joins it, so until then the filter holds
    it: an event of channel ``c`` in cycle ``k`` (``t >> fine_bits``) of window ``w`` *needs a
    slot* if the window's pattern, counting its events in cycles ``<= k``, is ``{c}`` alone and
    ``k`` is not the window's last cycle ``(t0 + W - 1) >> fine_bits`` (the decision is then
    known at once). With ``fine_bits > 0`` a window can open in the last cycle of the window
    before: its events of that cycle that would need a slot are streamed at once instead (held,
    they would come after that window's exact herald records, timed at the next cycle's first
    bin). The filter has ``hold`` slots: the first ``hold`` events of a window that need one
    are held; later ones are dropped. When the window turns out coincident the held
    events are streamed and the dropped ones are lost (``filter_dropped``, reported in-band as
    ``FILTER_FULL`` loss); otherwise both are filtered.

    Parameters:
        times_per_channel: one sorted integer array of delayed times per channel (the events
            entering the coincidence unit).
        window: W in bins.
        modes: one stream mode per channel (or ``()``: every channel ``all``).
        hold: the filter's slots, >= 1.
        fine_bits: F.

    Returns ``(tags, filtered, filter_dropped)``: the streamed events as a :data:`TAG_DTYPE`
    array sorted by (time, channel), and per channel (int64) the events withheld by the stream
    mode and those lost to a full hold buffer. Per channel, streamed + filtered +
    filter_dropped = events.
    """
    tpc = _channel_times(times_per_channel)
    window = _int(window, "window", 1, MAX_WINDOW)
    hold = _int(hold, "hold", 1)
    fine_bits = _int(fine_bits, "fine_bits", 0)
    n = len(tpc)
    modes = _stream_modes(modes, n)
    times, chans = _merge(tpc)
    filtered = np.zeros(n, np.int64)
    dropped = np.zeros(n, np.int64)
    if times.size == 0 or all(mode == "all" for mode in modes):
        return tag_stream(tpc), filtered, dropped
    starts = _window_starts(times, window)
    closed = np.bitwise_or.reduceat(np.left_shift(1, chans), starts)
    window_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(times)]))
    # first[w, c]: the cycle of channel c's first event in window w.
    first = np.full((len(starts), n), _NEVER, np.int64)
    keys, index = np.unique(window_of * n + chans, return_index=True)
    first.flat[keys] = times[index] >> fine_bits
    cycle = times >> fine_bits
    # The window's pattern after every event of it in cycles up to the event's own.
    channels_so_far = (first[window_of] <= cycle[:, None]).sum(axis=1)
    last_cycle = (times[starts] + window - 1) >> fine_bits
    mode_of = np.array([STREAM_MODES.index(m) for m in modes])[chans]
    coincident = mode_of == STREAM_MODES.index("coincident")
    undecided = coincident & (channels_so_far == 1) & (cycle < last_cycle[window_of])
    # With F > 0 a window can open in the last cycle of the one before: its events of that cycle
    # are streamed at once (held, they would follow the old window's exact herald records).
    previous_last = np.r_[-1, last_cycle[:-1]][window_of]
    at_once = undecided & (cycle == previous_last)
    needs_slot = undecided & ~at_once
    # Rank of each slot-needing event among those of its window (0 for the first).
    before = np.cumsum(needs_slot) - needs_slot
    rank = before - before[starts][window_of]
    multi = np.array([bin(p).count("1") >= 2 for p in closed.tolist()], bool)[window_of]
    lost = needs_slot & (rank >= hold) & multi
    streamed = ((mode_of == STREAM_MODES.index("all")) | (coincident & multi & ~lost)
                | at_once)
    withheld = ~streamed & ~lost
    filtered += np.bincount(chans[withheld], minlength=n)
    dropped += np.bincount(chans[lost], minlength=n)
    tags = np.zeros(int(streamed.sum()), TAG_DTYPE)
    tags["time"], tags["channel"] = times[streamed], chans[streamed]
    return tags, filtered, dropped


def _stream_modes(modes, channels):
    modes = tuple(modes)
    if not modes:
        return ("all",) * channels
    if len(modes) != channels:
        raise ValueError(f"stream modes must be one per channel ({channels}), not {len(modes)}")
    for c, mode in enumerate(modes):
        if mode not in STREAM_MODES:
            raise ValueError(f"stream mode of channel {c} must be one of "
                             f"{', '.join(STREAM_MODES)}, not {mode!r}")
    return modes


# --- sync, gates and markers -------------------------------------------------------------------

def sync_position(times, sync_times):
    """Where ``times`` fall in the attempt clock: a :data:`SYNC_DTYPE` array.

    ``attempt`` = number of ``sync_times`` at or before each time (a sync edge at the same bin
    counts: it starts the attempt the time belongs to); ``offset`` = bins since the latest of
    them, saturating at ``OFFSET_NONE``, and ``OFFSET_NONE`` when there is none.
    """
    times = np.asarray(times, np.int64).reshape(-1)
    sync_times = _times(sync_times, "sync_times")
    attempt = np.searchsorted(sync_times, times, "right")
    out = np.zeros(len(times), SYNC_DTYPE)
    out["attempt"] = attempt
    latest = sync_times[np.maximum(attempt - 1, 0)] if sync_times.size else times
    out["offset"] = np.where(attempt > 0, np.minimum(times - latest, OFFSET_NONE), OFFSET_NONE)
    return out


def gate_events(times, gate, sync_times):
    """One detector channel's delayed events through its gate.

    ``gate``: ``None`` (keep everything) or ``(offset, width)``; an event at ``t`` is kept iff
    some sync edge ``s <= t`` exists and ``offset <= t - s < offset + width`` for the latest
    one (:func:`sync_position`). Returns ``(kept times, number gated out)``.
    """
    times = _times(times, "times")
    if gate is None:
        return times, 0
    offset, width = gate
    where = sync_position(times, sync_times)
    keep = ((where["attempt"] > 0) & (where["offset"] >= offset)
            & (where["offset"] < offset + width))
    return times[keep], int((~keep).sum())


def _sync_markers(sync_times, every):
    """The sync edges streamed as markers: attempt numbers every, 2 * every, ..."""
    if every == 0:
        return np.zeros(0, np.int64)
    return sync_times[every - 1::every]


def gate_duty(gate, period):
    """Fraction of a sync period of ``period`` bins inside ``gate`` (``None``: 1.0): the factor
    by which a gate scales a channel's uncorrelated (dark) count rate."""
    period = _int(period, "period", 1)
    if gate is None:
        return 1.0
    offset, width = gate
    return max(0, min(offset + width, period) - offset) / period


def expected_heralds_per_attempt(probability, settings, period):
    """Expected herald firings per rule in one attempt, for independent dark counts.

    Every detector channel ``c`` clicks in each bin independently with ``probability[c]``
    (Bernoulli; a Poisson rate ``r`` per bin gives ``1 - exp(-r)``) and the sync is periodic
    with ``period`` bins. Exact for the core's window and rule semantics (F = 0, no dead time
    beyond one bin), computed by stepping the window's state (bins left, pattern) through one
    attempt as a Markov chain: the false-herald rate from dark counts is the result divided by
    the period (times the bin).

    Every channel with ``probability > 0`` must have a gate, and every window must close before
    the next attempt's first gated bin (``max gate end + window <= period + min gate offset``),
    so attempts are independent. Returns a float64 array, one entry per rule.
    """
    if not isinstance(settings, CoreSettings):
        raise ValueError(f"settings must be a CoreSettings, not {settings!r}")
    if settings.fine_bits:
        raise ValueError("expected_heralds_per_attempt needs fine_bits = 0")
    period = _int(period, "period", 1)
    n, window = settings.channels, settings.window
    probability = [float(x) for x in probability]
    if len(probability) != n:
        raise ValueError(f"probability must hold one value per channel ({n})")
    gates = {}
    for c, p in enumerate(probability):
        if not 0 <= p <= 1:
            raise ValueError(f"probability of channel {c} must be 0..1, not {p}")
        ch = settings.channel_settings(c)
        if p == 0 or ch.role != "detector":
            continue
        if ch.gate is None:
            raise ValueError(f"channel {c} clicks but has no gate: attempts are not independent")
        if ch.dead_time > 1:
            raise ValueError(f"channel {c} has a dead time: the clicks are not independent")
        gates[c] = ch.gate
    if not gates:
        return np.zeros(len(settings.herald_rules))
    first = min(g[0] for g in gates.values())
    last = max(g[0] + g[1] for g in gates.values())
    if last + window > period + first:
        raise ValueError(f"windows may run into the next attempt: gate end {last} + window "
                         f"{window} > period {period} + first gate offset {first}")
    size = 2**n
    states = (window + 1) * size            # index: left * 2**N + pattern
    rules = settings.herald_rules

    def step(active):
        """Transition matrix and expected firings per rule from each state, for one bin."""
        matrix = np.zeros((states, states))
        fires = np.zeros((states, len(rules)))
        subsets = [e for e in range(size) if e & ~active == 0]
        for left in range(window + 1):
            for pattern in range(size):
                if left == 0 and pattern:
                    continue
                i = left * size + pattern
                for e in subsets:
                    pe = 1.0
                    for c in range(n):
                        if active >> c & 1:
                            pe *= probability[c] if e >> c & 1 else 1 - probability[c]
                    if left:
                        prev, new, remain = pattern, pattern | e, left - 1
                    elif e:
                        prev, new, remain = 0, e, window - 1
                    else:
                        matrix[0, i] += pe
                        continue
                    for r, rule in enumerate(rules):
                        req, veto = rule.require, rule.veto
                        if rule.mode == "early":
                            hit = prev & req != req and new & req == req and not new & veto
                        else:
                            hit = remain == 0 and new & req == req and not new & veto
                        fires[i, r] += pe * hit
                    j = remain * size + new if remain else 0
                    matrix[j, i] += pe
        return matrix, fires

    cache = {}
    state = np.zeros(states)
    state[0] = 1.0
    expected = np.zeros(len(rules))
    for b in range(period + window):
        active = 0
        if b < period:
            active = sum(1 << c for c, (o, w) in gates.items() if o <= b < o + w)
        if active not in cache:
            cache[active] = step(active)
        matrix, fires = cache[active]
        expected += state @ fires
        state = matrix @ state
    return expected


# --- whole core --------------------------------------------------------------------------------

@dataclass
class Result:
    """Everything one run of the core produces.

    Members:
        tags: :data:`TAG_DTYPE`, delayed times, sorted by (time, channel): the detector events
            that entered the coincidence unit, every reference edge and the sync edges chosen
            by ``sync_marker_every`` (markers: tags of a sync or reference channel).
        singles: int64 per channel: detector events entering the coincidence unit (after the
            gate); for the sync channel its edges (the attempts), for a reference channel its
            edges (the markers).
        patterns: :func:`pattern_counts` of the windows.
        windows: :class:`Windows`.
        heralds: :data:`HERALD_DTYPE`, sorted by (time, rule).
        herald_counts: int64 per rule.
        coincidence_records: :data:`COINCIDENCE_DTYPE`, windows whose pattern bit is set in
            ``coincidence_record_mask``, in time order.
        delay_dropped: int64 per channel, events lost to a full delay line.
        gated_out: int64 per channel, detector events outside their channel's gate.
        attempts: sync edges (0 without a sync channel).
        herald_sync: :data:`SYNC_DTYPE`, one per herald record: its attempt and offset
            (:func:`sync_position` of its time); ``None`` when the sync edges are unknown
            (:func:`counts_from_tags` with a sync channel).
        filtered, filter_dropped: int64 per channel: detector events the stream filter
            withheld (by the channel's stream mode) and lost (hold buffer full), see
            :func:`stream_filter`; ``tags`` holds the others. All zero when every channel
            streams ``all``.
    """
    tags: np.ndarray
    singles: np.ndarray
    patterns: np.ndarray
    windows: Windows
    heralds: np.ndarray
    herald_counts: np.ndarray
    coincidence_records: np.ndarray
    delay_dropped: np.ndarray
    gated_out: np.ndarray = None
    attempts: int = 0
    herald_sync: np.ndarray = None
    filtered: np.ndarray = None
    filter_dropped: np.ndarray = None


def _result(tpc, settings, delay_dropped, *, sync_times=None, gated_out=None, singles=None,
            markers=None):
    """Windows, heralds, records and counters of the detector events ``tpc`` (one array per
    channel; empty for sync and reference channels); ``markers``: the streamed times of the
    sync and reference channels ({channel: times})."""
    windows = coincidence_windows(tpc, settings.window)
    heralds = herald_records(tpc, settings.window, settings.herald_rules, settings.fine_bits)
    # The mask has 2**channels bits (256 for 8 channels): look it up per pattern, not by shift.
    selected = np.array([settings.coincidence_record_mask >> p & 1
                         for p in range(2**settings.channels)], bool)
    recorded = selected[windows.pattern]
    records = np.zeros(int(recorded.sum()), COINCIDENCE_DTYPE)
    records["time"], records["pattern"] = windows.t0[recorded], windows.pattern[recorded]
    streamed = list(tpc)
    for c, times in (markers or {}).items():
        streamed[c] = times
    if singles is None:
        singles = [len(t) for t in streamed]
    kept, filtered, filter_dropped = stream_filter(tpc, settings.window, settings.stream,
                                                   settings.stream_hold, settings.fine_bits)
    for c in range(settings.channels):
        if c not in (markers or {}):
            streamed[c] = kept["time"][kept["channel"] == c]
    # sync_times None: unknown (the sync channel's edges were not all streamed).
    known = sync_times is not None or settings.sync_channel is None or not len(heralds)
    if sync_times is None:
        sync_times = np.zeros(0, np.int64)
    herald_sync = sync_position(heralds["time"], sync_times) if known else None
    return Result(
        tags=tag_stream(streamed),
        singles=np.array(singles, np.int64),
        patterns=pattern_counts(windows, settings.channels),
        windows=windows,
        heralds=heralds,
        herald_counts=np.bincount(heralds["rule"].astype(np.int64),
                                  minlength=len(settings.herald_rules)).astype(np.int64),
        coincidence_records=records,
        delay_dropped=np.asarray(delay_dropped, np.int64),
        gated_out=(np.zeros(settings.channels, np.int64) if gated_out is None
                   else np.asarray(gated_out, np.int64)),
        attempts=int(len(sync_times)),
        herald_sync=herald_sync,
        filtered=filtered,
        filter_dropped=filter_dropped,
    )


def _per_channel(values, name, channels):
    values = list(values)
    if len(values) != channels:
        raise ValueError(f"{name} must hold one edge-time array per channel ({channels}), "
                         f"not {len(values)}")
    return values


def simulate(rise, fall, settings, gate=None):
    """Run the whole core: input stage, delay line, sync and gates, coincidences, heralds, tags,
    counters.

    Parameters:
        rise, fall: one sorted integer array of edge times (bins) per channel.
        settings: :class:`CoreSettings`.
        gate: the run gate, as for :func:`input_events` (shared by all channels).

    Every channel's edges pass its input stage and delay line. The sync channel's delayed
    events are the sync edges; each detector event then passes its channel's gate
    (:func:`gate_events`) or is counted in ``gated_out``. Returns a :class:`Result`. Raises
    ``ValueError`` on bad input.
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
    sync = settings.sync_channel
    sync_times = delayed[sync] if sync is not None else np.zeros(0, np.int64)
    tpc, gated_out, singles, markers = [], [], [], {}
    for c in range(settings.channels):
        ch = settings.channel_settings(c)
        if ch.role == "detector":
            kept, out = gate_events(delayed[c], ch.gate, sync_times)
            tpc.append(kept)
            gated_out.append(out)
            singles.append(len(kept))
            continue
        tpc.append(np.zeros(0, np.int64))
        gated_out.append(0)
        singles.append(len(delayed[c]))
        markers[c] = (delayed[c] if ch.role == "reference"
                      else _sync_markers(delayed[c], settings.sync_marker_every))
    return _result(tpc, settings, dropped, sync_times=sync_times, gated_out=gated_out,
                   singles=singles, markers=markers)


def counts_from_tags(tags, settings):
    """Recompute the core's outputs from a streamed tag array (delays already applied).

    This is what a host uses to check the hardware counters of a lossless run. ``tags`` needs
    ``time`` and ``channel`` fields (:data:`TAG_DTYPE`); any order is accepted. The result's
    ``delay_dropped`` and ``gated_out`` are all zero: tags carry no loss information (loss
    records do) and gated-out events are not streamed. Tags of sync and reference channels are
    markers: they form no windows. With a sync channel only its markers are streamed, so its
    ``singles`` count the markers, ``attempts`` is 0 and ``herald_sync`` is ``None`` (unless
    there are no heralds).
    """
    if not isinstance(settings, CoreSettings):
        raise ValueError(f"settings must be a CoreSettings, not {settings!r}")
    if any(mode != "all" for mode in settings.stream):
        # Filtered tags cannot give back the windows they were filtered by.
        raise ValueError("counts_from_tags needs every channel streaming all (stream modes "
                         f"{', '.join(settings.stream)})")
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
    tpc, markers = [], {}
    for c in range(settings.channels):
        these = np.sort(times[channels == c])
        if settings.channel_settings(c).role == "detector":
            tpc.append(these)
        else:
            tpc.append(np.zeros(0, np.int64))
            markers[c] = these
    return _result(tpc, settings, np.zeros(settings.channels, np.int64), markers=markers)


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
