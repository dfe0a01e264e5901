"""Cross-checks of the reference model (`heraldry.model`) against naive implementations.

The naive versions below step through time one cycle / one bin at a time, the way the hardware
does, and share no code with the model. Hand-written boundary cases pin down the definitions in
docs/semantics.md, whose timing diagrams are re-rendered from the model and compared verbatim.
"""

from collections import defaultdict
from pathlib import Path
import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

import heraldry.model as model
from heraldry.model import ChannelSettings, CoreSettings, HeraldRule

SEMANTICS = Path(__file__).resolve().parent.parent / "docs" / "semantics.md"
EDGE_NAMES = ("none", "rising", "falling", "both")


# --- naive implementations ---------------------------------------------------------------------

def naive_input(rise, fall, ch, gate=None, fine_bits=0):
    """Input stage stepped cycle by cycle: first selected edge of the cycle, then enable, gate,
    dead time measured from the last accepted event."""
    edges = list(rise) + list(fall)
    if not edges:
        return []
    rise, fall = set(rise), set(fall)
    per_cycle = 1 << fine_bits
    accepted = []
    for cycle in range(min(edges) >> fine_bits, (max(edges) >> fine_bits) + 1):
        edge = None
        for b in range(cycle * per_cycle, (cycle + 1) * per_cycle):
            if ((b in rise and ch.edge in ("rising", "both"))
                    or (b in fall and ch.edge in ("falling", "both"))):
                edge = b
                break
        if edge is None or not ch.enable:
            continue
        if gate is not None and not any(start <= edge < stop for start, stop in gate):
            continue
        if accepted and edge - accepted[-1] < ch.dead_time:
            continue
        accepted.append(edge)
    return accepted


def naive_delay(times, delay, depth, fine_bits=0):
    """Delay line stepped cycle by cycle with an explicit buffer (one arrival per cycle) and an
    output that sends one event per cycle (a later event due in a cycle already taken is
    dropped at arrival)."""
    if not len(times):
        return [], 0
    arrivals = {t >> fine_bits: t for t in times}
    assert len(arrivals) == len(times), "the input stage gives at most one event per cycle"
    buffer = []         # leave cycles of the events held
    taken = set()       # output cycles of the kept events
    out, dropped = [], 0
    for cycle in range(min(arrivals), max(arrivals) + 1):
        buffer = [leave for leave in buffer if leave > cycle]   # due ones have left
        if cycle not in arrivals:
            continue
        t = arrivals[cycle]
        if (delay and len(buffer) >= depth) or (t + delay) >> fine_bits in taken:
            dropped += 1
            continue
        taken.add((t + delay) >> fine_bits)
        out.append(t + delay)
        if (t + delay) >> fine_bits > cycle:
            buffer.append((t + delay) >> fine_bits)
    return out, dropped


def naive_coincidence(delayed, window, masks, fine_bits=0):
    """Coincidence unit and herald rules stepped bin by bin. Returns (windows, heralds) as lists
    of (t0, pattern) and (time, rule, pattern). ``masks``: channel masks (early, no veto) or
    ``HeraldRule`` s; an exact rule's record is at the first cycle boundary at or after the
    window's end (cycles of ``2**fine_bits`` bins)."""
    rules = [m if isinstance(m, HeraldRule) else HeraldRule(m) for m in masks]
    events = defaultdict(list)
    for c, times in enumerate(delayed):
        for t in times:
            events[t].append(c)
    windows, heralds = [], []
    if not events:
        return windows, heralds
    is_open, t0, pattern, fired = False, None, 0, []
    for b in range(min(events), max(events) + window + 1):
        if is_open and b >= t0 + window:
            windows.append((t0, pattern))
            is_open = False
            decided = b
            while decided % 2**fine_bits:
                decided += 1
            for number, rule in enumerate(rules):
                if (rule.mode == "exact" and pattern & rule.require == rule.require
                        and not pattern & rule.veto):
                    heralds.append((decided, number, pattern))
        for c in events.get(b, []):
            if not is_open:
                is_open, t0, pattern, done = True, b, 0, [False] * len(rules)
            pattern |= 1 << c
        if b in events:
            for number, rule in enumerate(rules):
                if (rule.mode == "early" and not done[number]
                        and pattern & rule.require == rule.require):
                    done[number] = True         # vetoed or not, once per window
                    if not pattern & rule.veto:
                        heralds.append((b, number, pattern))
    assert not is_open
    return windows, sorted(heralds)


def naive_simulate(rise, fall, settings, gate=None):
    delayed, dropped = [], []
    for c in range(settings.channels):
        ch = settings.channel_settings(c)
        accepted = naive_input(rise[c], fall[c], ch, gate, settings.fine_bits)
        out, lost = naive_delay(accepted, ch.delay, settings.delay_depth, settings.fine_bits)
        delayed.append(out)
        dropped.append(lost)
    windows, heralds = naive_coincidence(delayed, settings.window, settings.herald_rules,
                                         settings.fine_bits)
    patterns = [0] * 2**settings.channels
    for _, pattern in windows:
        patterns[pattern] += 1
    return dict(
        tags=sorted((t, c) for c, times in enumerate(delayed) for t in times),
        singles=[len(times) for times in delayed],
        patterns=patterns,
        windows=windows,
        heralds=heralds,
        herald_counts=[sum(1 for h in heralds if h[1] == r)
                       for r in range(len(settings.herald_masks))],
        coincidence_records=[(t0, p) for t0, p in windows
                             if settings.coincidence_record_mask >> p & 1],
        delay_dropped=dropped,
    )


def as_lists(result):
    """A model Result as plain lists, comparable with naive_simulate."""
    return dict(
        tags=[(int(t), int(c)) for t, c in result.tags],
        singles=result.singles.tolist(),
        patterns=result.patterns.tolist(),
        windows=list(zip(result.windows.t0.tolist(), result.windows.pattern.tolist())),
        heralds=[(int(t), int(r), int(p)) for t, r, p in result.heralds],
        herald_counts=result.herald_counts.tolist(),
        coincidence_records=[(int(t), int(p)) for t, p in result.coincidence_records],
        delay_dropped=result.delay_dropped.tolist(),
    )


def naive_herald_pin(fire_cycles, width, latency):
    """Cycles in which a reload-on-fire down-counter keeps the pin high."""
    if not fire_cycles:
        return set()
    loads = {f + latency for f in fire_cycles}
    count, high = 0, set()
    for cycle in range(min(loads), max(loads) + width + 2):
        if cycle in loads:
            count = width
        if count:
            high.add(cycle)
            count -= 1
    return high


# --- random stimulus ---------------------------------------------------------------------------

def random_pins(rng, channels, span, rate):
    """Per channel, pulses with rises at distinct bins and each fall in [rise, next rise)."""
    rise, fall = [], []
    for _ in range(channels):
        r = np.sort(rng.choice(span, rng.binomial(span, rate), replace=False)).astype(np.int64)
        gaps = np.diff(np.r_[r, r[-1] + 5 if len(r) else 0])
        f = r + (rng.random(len(r)) * gaps).astype(np.int64)
        rise.append(r)
        fall.append(np.sort(f))
    return rise, fall


def random_rules(rng, channels, count=None):
    """Rules with random require/veto masks, modes and pins (sometimes plain masks)."""
    count = int(rng.integers(0, 4)) if count is None else count
    rules = []
    for r in range(count):
        require = int(rng.integers(1, 2**channels))
        if rng.random() < 0.25:
            rules.append(require)
            continue
        veto = int(rng.integers(0, 2**channels)) & ~require if rng.random() < 0.6 else 0
        rules.append(HeraldRule(require, veto, str(rng.choice(model.HERALD_MODES)),
                                int(rng.integers(0, count))))
    return tuple(rules)


def random_settings(rng, channels, fine_bits=0):
    return CoreSettings(
        channels=channels,
        fine_bits=fine_bits,
        window=int(rng.integers(2**fine_bits, 2**fine_bits + 24)),
        channel=tuple(ChannelSettings(
            enable=bool(rng.random() < 0.9),
            edge=EDGE_NAMES[rng.choice(4, p=[0.05, 0.45, 0.2, 0.3])],
            dead_time=int(rng.choice([0, 0, 1, 2, 3, 7, 20])),
            delay=int(rng.choice([0, 0, 1, 3, 17, 40, 63])),
        ) for _ in range(channels)),
        herald_rules=random_rules(rng, channels),
        herald_width=int(rng.integers(1, 6)),
        coincidence_record_mask=sum(1 << p for p in range(2**channels) if rng.random() < 0.3),
        delay_depth=int(rng.integers(1, 5)),
    )


def random_gate(rng, span):
    if rng.random() < 0.5:
        return None
    edges = np.sort(rng.choice(span, 2 * int(rng.integers(0, 4)), replace=False))
    return [(int(a), int(b)) for a, b in edges.reshape(-1, 2)]


# --- whole pipeline against the naive one --------------------------------------------------------

@pytest.mark.parametrize("seed", range(32))
def test_simulate_matches_naive(seed):
    rng = np.random.default_rng(seed)
    channels = int(rng.integers(1, 5)) if seed % 6 else 8
    fine_bits = (0, 0, 1, 2)[seed % 4]
    span = 6000
    rise, fall = random_pins(rng, channels, span, rate=float(rng.choice([0.02, 0.1, 0.3])))
    settings = random_settings(rng, channels, fine_bits)
    gate = random_gate(rng, span)
    result = model.simulate(rise, fall, settings, gate)
    assert as_lists(result) == naive_simulate(rise, fall, settings, gate)
    assert result.tags.dtype == model.TAG_DTYPE
    assert result.heralds.dtype == model.HERALD_DTYPE
    assert result.coincidence_records.dtype == model.COINCIDENCE_DTYPE


def test_random_runs_exercise_the_interesting_paths():
    """The seeds above must actually hit drops, dead time, multi-bit patterns and heralds."""
    seen = defaultdict(int)
    for seed in range(24):
        rng = np.random.default_rng(seed)
        channels = int(rng.integers(1, 5)) if seed % 6 else 8
        fine_bits = (0, 0, 1, 2)[seed % 4]
        rise, fall = random_pins(rng, channels, 3000, rate=float(rng.choice([0.02, 0.1, 0.3])))
        settings = random_settings(rng, channels, fine_bits)
        result = model.simulate(rise, fall, settings, random_gate(rng, 3000))
        seen["dropped"] += int(result.delay_dropped.sum())
        seen["multi"] += int(sum(n for p, n in enumerate(result.patterns) if p & (p - 1)))
        seen["heralds"] += len(result.heralds)
        seen["records"] += len(result.coincidence_records)
        seen["fine"] += fine_bits * len(result.tags)
    assert all(seen[k] > 0 for k in ("dropped", "multi", "heralds", "records", "fine")), seen


@hsettings(max_examples=500, derandomize=True, database=None, deadline=None)
@given(
    times=st.lists(st.lists(st.integers(0, 60), max_size=12), min_size=1, max_size=5),
    window=st.integers(1, 12),
    raw_masks=st.lists(st.integers(1, 31), max_size=3),
)
def test_windows_and_heralds_match_naive(times, window, raw_masks):
    channels = len(times)
    tpc = [np.unique(t).astype(np.int64) for t in times]
    masks = tuple(m % 2**channels or 1 for m in raw_masks)
    windows, heralds = naive_coincidence(tpc, window, masks)
    got = model.coincidence_windows(tpc, window)
    assert list(zip(got.t0.tolist(), got.pattern.tolist())) == windows
    got_heralds = model.herald_records(tpc, window, masks)
    assert [tuple(int(x) for x in h) for h in got_heralds] == heralds


@hsettings(max_examples=500, derandomize=True, database=None, deadline=None)
@given(
    times=st.lists(st.lists(st.integers(0, 60), max_size=12), min_size=1, max_size=5),
    window=st.integers(1, 12),
    raw_rules=st.lists(st.tuples(st.integers(1, 31), st.integers(0, 31), st.booleans()),
                       max_size=4),
)
def test_herald_rules_match_naive(times, window, raw_rules):
    """Require/veto masks, early and exact modes, against the bin-by-bin definition."""
    channels = len(times)
    tpc = [np.unique(t).astype(np.int64) for t in times]
    rules = []
    for require, veto, exact in raw_rules:
        require = require % 2**channels or 1
        rules.append(HeraldRule(require, veto % 2**channels & ~require,
                                "exact" if exact else "early"))
    _, heralds = naive_coincidence(tpc, window, rules)
    got = model.herald_records(tpc, window, rules)
    assert [tuple(int(x) for x in h) for h in got] == heralds


def test_random_rules_exercise_veto_and_exact():
    """The random settings of test_simulate_matches_naive fire exact rules and veto some."""
    fired_exact = vetoed = 0
    for seed in range(32):
        rng = np.random.default_rng(seed)
        channels = int(rng.integers(1, 5)) if seed % 6 else 8
        fine_bits = (0, 0, 1, 2)[seed % 4]
        rise, fall = random_pins(rng, channels, 6000, rate=float(rng.choice([0.02, 0.1, 0.3])))
        settings = random_settings(rng, channels, fine_bits)
        result = model.simulate(rise, fall, settings, random_gate(rng, 6000))
        for number, rule in enumerate(settings.herald_rules):
            count = int(result.herald_counts[number])
            fired_exact += count if rule.mode == "exact" else 0
            if rule.veto:
                unvetoed = HeraldRule(rule.require, 0, rule.mode)
                again = model.herald_records(
                    [result.tags["time"][result.tags["channel"] == c]
                     for c in range(channels)], settings.window, [unvetoed])
                vetoed += len(again) - count
    assert fired_exact > 0 and vetoed > 0


@pytest.mark.parametrize("seed", range(4))
def test_window_definition_quadratic(seed):
    """Check the windows against the definition directly, event against event."""
    rng = np.random.default_rng(100 + seed)
    window = int(rng.integers(1, 30))
    tpc = [np.unique(rng.integers(0, 1500, 200)) for _ in range(3)]
    got = model.coincidence_windows(tpc, window)
    events = sorted((int(t), c) for c, ts in enumerate(tpc) for t in ts)
    t0s = got.t0.tolist()
    assert t0s == sorted(set(t0s)) and t0s[0] == events[0][0]
    for i, t0 in enumerate(t0s):
        members = [(t, c) for t, c in events if t0 <= t < t0 + window]
        assert members and members[0][0] == t0, "a window opens at an event"
        assert got.pattern[i] == sum({1 << c for _, c in members})
        later = [t for t, _ in events if t >= t0 + window]
        if i + 1 < len(t0s):
            assert t0s[i + 1] == later[0], "the next window opens at the first event past t0+W"
        else:
            assert not later
    # every event belongs to exactly one window
    for t, _ in events:
        assert sum(t0 <= t < t0 + window for t0 in t0s) == 1


@pytest.mark.parametrize("seed", range(6))
def test_delay_drop_definition_quadratic(seed):
    """Each event is dropped iff >= depth kept earlier-cycle events leave after its arrival."""
    rng = np.random.default_rng(200 + seed)
    fine_bits = seed % 3
    depth = int(rng.integers(1, 6))
    delay = int(rng.integers(1, 200))
    cycles = np.unique(rng.integers(0, 600, 300))
    times = (cycles << fine_bits) + rng.integers(0, 2**fine_bits, len(cycles))
    kept, dropped = model.delay_events(times, delay, depth, fine_bits)
    kept_set = set((kept - delay).tolist())
    held = []
    for t in times.tolist():
        a = t >> fine_bits
        in_flight = sum(1 for u in held if u >> fine_bits < a and (u + delay) >> fine_bits > a)
        assert (t in kept_set) == (in_flight < depth)
        if in_flight < depth:
            held.append(t)
    assert dropped == len(times) - len(kept_set) > 0
    assert kept.tolist() == [t + delay for t in held]


@pytest.mark.parametrize("seed", range(4))
def test_counts_from_tags_reproduces_lossless_runs(seed):
    rng = np.random.default_rng(300 + seed)
    channels = int(rng.integers(2, 6))
    rise, fall = random_pins(rng, channels, 20000, rate=0.05)
    settings = random_settings(rng, channels, fine_bits=seed % 2)
    settings = CoreSettings(**{**settings.__dict__, "delay_depth": 1000})
    result = model.simulate(rise, fall, settings)
    assert result.delay_dropped.sum() == 0
    shuffled = result.tags[rng.permutation(len(result.tags))]
    again = model.counts_from_tags(shuffled, settings)
    assert as_lists(again) == as_lists(result)


def test_counts_from_tags_is_not_told_about_delay_loss():
    settings = CoreSettings(channels=1, channel=(ChannelSettings(delay=10),), delay_depth=1)
    result = model.simulate([[0, 1, 2]], [[]], settings)
    assert result.delay_dropped.tolist() == [2] and result.singles.tolist() == [1]
    again = model.counts_from_tags(result.tags, settings)
    assert again.singles.tolist() == [1] and again.delay_dropped.tolist() == [0]


@pytest.mark.parametrize("seed", range(6))
def test_herald_pin_matches_counter(seed):
    rng = np.random.default_rng(400 + seed)
    rules = int(rng.integers(1, 4))
    width = int(rng.integers(1, 10))
    latency = int(rng.integers(0, 5))
    heralds = np.zeros(60, model.HERALD_DTYPE)
    heralds["time"] = np.sort(rng.integers(0, 300, 60))
    heralds["rule"] = rng.integers(0, rules, 60)
    pins = model.herald_pin(heralds, width, latency, rules=rules)
    assert len(pins) == rules
    for rule, intervals in enumerate(pins):
        high = set()
        for (start, stop), following in zip(intervals, intervals[1:] + [(None, None)]):
            assert start < stop and (following[0] is None or stop < following[0])
            high |= set(range(start, stop))
        fires = heralds["time"][heralds["rule"] == rule].tolist()
        assert high == naive_herald_pin(fires, width, latency)


# --- hand-written boundary cases ------------------------------------------------------------------

def test_simultaneous_events_on_all_channels():
    channels = model.MAX_CHANNELS
    settings = CoreSettings(channels=channels, window=1, herald_masks=(0xFF, 0b1),
                            coincidence_record_mask=1 << 0xFF)
    result = model.simulate([[5]] * channels, [[6]] * channels, settings)
    assert [(t, c) for t, c in result.tags.tolist()] == [(5, c) for c in range(channels)]
    assert result.windows.t0.tolist() == [5] and result.windows.pattern.tolist() == [0xFF]
    assert result.patterns[0xFF] == 1 and result.patterns.sum() == 1
    assert result.heralds.tolist() == [(5, 0, 0xFF), (5, 1, 0xFF)]
    assert result.coincidence_records.tolist() == [(5, 0xFF)]


def test_window_edge_t0_plus_w_minus_1_joins_t0_plus_w_opens():
    w = 5
    windows = model.coincidence_windows([[10], [10 + w - 1], [10 + w]], w)
    assert windows.t0.tolist() == [10, 15] and windows.pattern.tolist() == [0b011, 0b100]


def test_back_to_back_windows():
    w = 4
    windows = model.coincidence_windows([[0, 4, 8, 12], [3, 7]], w)
    assert windows.t0.tolist() == [0, 4, 8, 12]
    assert windows.pattern.tolist() == [0b11, 0b11, 0b01, 0b01]
    heralds = model.herald_records([[0, 4, 8, 12], [3, 7]], w, [0b11])
    assert heralds.tolist() == [(3, 0, 0b11), (7, 0, 0b11)]


def test_window_of_one_bin():
    windows = model.coincidence_windows([[0, 1, 3], [1, 2]], 1)
    assert windows.t0.tolist() == [0, 1, 2, 3]
    assert windows.pattern.tolist() == [0b01, 0b11, 0b10, 0b01]


def test_window_after_a_gap_opens_at_the_next_event():
    windows = model.coincidence_windows([[0, 2, 9, 11]], 4)
    assert windows.t0.tolist() == [0, 9]


def test_dead_time_boundaries():
    ch = ChannelSettings(dead_time=3)
    # 2: gap D-1 from 0, discarded; 3: gap D, accepted; 5: gap D-1, discarded; 6: gap D.
    assert model.input_events([0, 2, 3, 5, 6], [], ch).tolist() == [0, 3, 6]
    # Non-extending: 2 is discarded and does not restart the dead time, so 4 is accepted.
    assert model.input_events([0, 2, 4], [], ChannelSettings(dead_time=4)).tolist() == [0, 4]
    # Gated events do not start it either.
    assert model.input_events([0, 1, 2], [], ch, gate=[(1, 10)]).tolist() == [1]
    assert model.input_events([0, 1, 2], [], ChannelSettings(dead_time=1)).tolist() == [0, 1, 2]
    biggest = ChannelSettings(dead_time=model.MAX_DEAD_TIME)
    assert model.input_events([0, 65534, 65535], [], biggest).tolist() == [0, 65535]


def test_edge_selection():
    rise, fall = [0, 4, 8], [2, 4, 9]
    assert model.input_events(rise, fall, ChannelSettings(edge="rising")).tolist() == [0, 4, 8]
    assert model.input_events(rise, fall, ChannelSettings(edge="falling")).tolist() == [2, 4, 9]
    # A rise and a fall in the same bin count once.
    assert model.input_events(rise, fall, ChannelSettings(edge="both")).tolist() \
        == [0, 2, 4, 8, 9]
    assert model.input_events(rise, fall, ChannelSettings(edge="none")).size == 0
    assert model.input_events(rise, fall, ChannelSettings(enable=False)).size == 0


def test_one_event_per_cycle_with_fine_bits():
    both = ChannelSettings(edge="both")
    # F = 2: cycle 0 = bins 0..3, cycle 1 = bins 4..7. The earliest edge of a cycle wins.
    assert model.input_events([1, 6], [3, 5], both, fine_bits=2).tolist() == [1, 5]
    assert model.input_events([1, 6], [3, 5], both).tolist() == [1, 3, 5, 6]
    assert model.input_events([1, 3, 4], [], ChannelSettings(), fine_bits=2).tolist() == [1, 4]


def test_gate_intervals_are_half_open():
    ch = ChannelSettings()
    times = list(range(10))
    assert model.input_events(times, [], ch, gate=[(2, 4), (7, 8)]).tolist() == [2, 3, 7]
    assert model.input_events(times, [], ch, gate=[]).size == 0
    assert model.input_events(times, [], ch, gate=None).tolist() == times


def test_delay_reorders_channels():
    settings = CoreSettings(channels=2, window=4, herald_masks=(0b11,),
                            channel=(ChannelSettings(delay=5), ChannelSettings()))
    result = model.simulate([[10], [12]], [[11], [13]], settings)
    assert result.tags.tolist() == [(12, 1), (15, 0)]
    assert result.windows.t0.tolist() == [12] and result.windows.pattern.tolist() == [0b11]
    assert result.heralds.tolist() == [(15, 0, 0b11)]


def test_delay_line_overflow_at_depth():
    depth = 4
    # Events in cycles 0..3 leave in cycles 100..103: all held. The fifth, in cycle 4, finds
    # `depth` in flight and is dropped; the sixth (cycle 100) arrives as the first leaves.
    kept, dropped = model.delay_events([0, 1, 2, 3, 4, 100], 100, depth)
    assert kept.tolist() == [100, 101, 102, 103, 200] and dropped == 1
    # With delay 4 the first event leaves in cycle 4 and frees its slot for the arrival.
    kept, dropped = model.delay_events([0, 1, 2, 3, 4], 4, depth)
    assert kept.tolist() == [4, 5, 6, 7, 8] and dropped == 0
    # With delay 5 it is still in flight in cycle 4.
    kept, dropped = model.delay_events([0, 1, 2, 3, 4, 5], 5, depth)
    assert kept.tolist() == [5, 6, 7, 8, 10] and dropped == 1
    # Dropped events hold no slot. Depth 2, delay 3: 2 finds 0 and 1 in flight and is dropped;
    # 3 arrives as 0 leaves, 4 as 1 leaves.
    kept, dropped = model.delay_events([0, 1, 2, 3, 4], 3, 2)
    assert kept.tolist() == [3, 4, 6, 7] and dropped == 1
    # delay 0 never drops, whatever the depth.
    kept, dropped = model.delay_events(np.arange(50), 0, 1)
    assert kept.tolist() == list(range(50)) and dropped == 0


def test_delay_with_fine_bits_uses_cycles():
    # F = 1, depth 1. Time 1 (cycle 0) + delay 2 leaves in cycle 1, the cycle in which time 2
    # arrives: the slot is free. With delay 3 it leaves in cycle 2 and time 2 is dropped.
    kept, dropped = model.delay_events([1, 2], 2, 1, fine_bits=1)
    assert kept.tolist() == [3, 4] and dropped == 0
    kept, dropped = model.delay_events([1, 2], 3, 1, fine_bits=1)
    assert kept.tolist() == [4] and dropped == 1
    # Two events of one cycle: the second does not wait for the first.
    kept, dropped = model.delay_events([0, 1], 9, 1, fine_bits=1)
    assert kept.tolist() == [9, 10] and dropped == 0
    kept, dropped = model.delay_events([0, 1, 4], 9, 1, fine_bits=1)
    assert kept.tolist() == [9, 10] and dropped == 1


def test_herald_fires_once_per_window_at_the_completing_event():
    # Rule 0b011 completes at 2 (ch1); ch2 at the same time is in the record's pattern.
    tpc = [[0, 3], [2, 4], [2]]
    assert model.herald_records(tpc, 10, [0b011]).tolist() == [(2, 0, 0b111)]
    tpc = [[0, 3], [2, 4], [3]]
    assert model.herald_records(tpc, 10, [0b011, 0b100, 0b001]).tolist() \
        == [(0, 2, 0b001), (2, 0, 0b011), (3, 1, 0b111)]
    # A mask never completed in a window does not fire; the next window fires again.
    tpc = [[0, 10], [5, 12], []]
    assert model.herald_records(tpc, 10, [0b011, 0b100]).tolist() \
        == [(5, 0, 0b011), (12, 0, 0b011)]


PSI_MINUS = (HeraldRule(0b1001, 0b0110, "exact", 0), HeraldRule(0b0110, 0b1001, "exact", 0))


@pytest.mark.parametrize("pattern", range(1, 16))
def test_psi_minus_exact_fires_on_1001_and_0110_only(pattern):
    """psi-: D0&D3 or D1&D2, no third click, both rules on pin 0. Clicks spread over the window
    in channel order or reversed; a second window far later proves the state is per window."""
    for order in (1, -1):
        channels = [c for c in range(4) if pattern >> c & 1][::order]
        tpc = [[] for _ in range(4)]
        for k, c in enumerate(channels):
            tpc[c] += [10 + 2 * k, 100 + k]
        heralds = model.herald_records(tpc, 8, PSI_MINUS)
        if pattern in (0b1001, 0b0110):
            rule = 0 if pattern == 0b1001 else 1        # decided at each window's end
            assert heralds.tolist() == [(18, rule, pattern), (108, rule, pattern)]
        else:
            assert heralds.tolist() == []
    settings = CoreSettings(channels=4, window=8, herald_rules=PSI_MINUS)
    assert settings.herald_masks == (0b1001, 0b0110)


def test_early_veto_is_decided_at_the_completing_event():
    rule = HeraldRule(0b011, 0b100)                       # D0&D1&!D2, early
    # The veto channel before the completing event, or at its very time: no herald.
    assert model.herald_records([[0], [4], [2]], 10, [rule]).tolist() == []
    assert model.herald_records([[0], [4], [4]], 10, [rule]).tolist() == []
    # After it: the herald stands (an early rule cannot see the future), pattern without D2.
    assert model.herald_records([[0], [4], [5]], 10, [rule]).tolist() == [(4, 0, 0b011)]
    # Vetoed once, the window does not fire later either; the next window does.
    assert model.herald_records([[0, 3, 20], [1, 6, 22], [0]], 10, [rule]).tolist() \
        == [(22, 0, 0b011)]
    # The same clicks, exact: the late veto click takes the herald back.
    exact = HeraldRule(0b011, 0b100, "exact")
    assert model.herald_records([[0], [4], [5]], 10, [exact]).tolist() == []
    assert model.herald_records([[0], [4], []], 10, [exact]).tolist() == [(10, 0, 0b011)]
    # Its record is at the window's end, rounded up to a whole cycle (here 4 bins).
    assert model.herald_records([[1], [4], []], 10, [exact], 2).tolist() == [(12, 0, 0b011)]
    assert model.herald_records([[2], [4], []], 10, [exact], 2).tolist() == [(12, 0, 0b011)]


def test_herald_pin_modes_and_shared_pins():
    rules = (HeraldRule(0b01, pin=1), HeraldRule(0b10, mode="exact", pin=1), HeraldRule(0b11))
    h = np.zeros(3, model.HERALD_DTYPE)
    h["time"], h["rule"] = [9, 20, 40], [0, 1, 2]
    # F = 2: rule 0 decides in cycle 9 >> 2 = 2, rule 1 in cycle 5 (its record is at its
    # decision), rule 2 (its own pin 2) in cycle 10. Latency 3.
    pins = model.herald_pin(h, 2, 3, fine_bits=2, herald_rules=rules)
    assert pins == [[], [(5, 7), (8, 10)], [(13, 15)]]
    # Width 4: the two firings on pin 1 merge.
    assert model.herald_pin(h, 4, 3, fine_bits=2, herald_rules=rules)[1] == [(5, 12)]
    with pytest.raises(ValueError, match="rules are given"):
        model.herald_pin(h, 2, 3, herald_rules=rules[:2])


def test_herald_rule_text_and_validation():
    assert str(HeraldRule(0b1001, 0b0110, "exact")) == "D0&D3&!D1&!D2,exact"
    assert str(HeraldRule(0b11, pin=1)) == "D0&D1,pin=1"
    for make, match in [
            (lambda: HeraldRule(0), "require"),
            (lambda: HeraldRule(0b11, 0b10), "never fire"),
            (lambda: HeraldRule(1, mode="late"), "mode"),
            (lambda: HeraldRule(1, pin=model.MAX_RULES), "pin"),
            (lambda: CoreSettings(channels=2, herald_rules=(HeraldRule(1, 0b100),)), "beyond"),
            (lambda: CoreSettings(channels=2, herald_rules=(1,), herald_masks=(2,)), "not both")]:
        with pytest.raises(ValueError, match=match):
            make()
    settings = CoreSettings(channels=2, herald_masks=(0b11, 0b01))
    assert settings.herald_rules == (HeraldRule(0b11, pin=0), HeraldRule(0b01, pin=1))


def test_herald_pin_retrigger():
    def fire(*times, rule=0):
        h = np.zeros(len(times), model.HERALD_DTYPE)
        h["time"], h["rule"] = times, rule
        return h
    assert model.herald_pin(fire(0), 4, 3) == [[(3, 7)]]
    assert model.herald_pin(fire(0, 2), 4, 3) == [[(3, 9)]]       # restarted while high
    assert model.herald_pin(fire(0, 4), 4, 3) == [[(3, 11)]]      # touching: never low
    assert model.herald_pin(fire(0, 5), 4, 3) == [[(3, 7), (8, 12)]]
    assert model.herald_pin(fire(0, 5, rule=1), 1, 0, rules=3) == [[], [(0, 1), (5, 6)], []]
    assert model.herald_pin(fire(4, 7), 2, 1, fine_bits=2) == [[(2, 4)]]


def test_coincidence_records_follow_the_mask():
    settings = CoreSettings(channels=2, window=2, coincidence_record_mask=(1 << 0b11) | 1)
    result = model.simulate([[0, 10], [1, 20]], [[], []], settings)
    # pattern 0 never occurs, so mask bit 0 selects nothing.
    assert result.windows.pattern.tolist() == [0b11, 0b01, 0b10]
    assert result.coincidence_records.tolist() == [(0, 0b11)]


def test_pattern_counts_include_single_channel_patterns():
    windows = model.coincidence_windows([[0, 10, 20], [0, 30], [40]], 5)
    counts = model.pattern_counts(windows, 3)
    # windows: 0 -> 0b011, 10 -> 0b001, 20 -> 0b001, 30 -> 0b010, 40 -> 0b100
    assert counts.tolist() == [0, 2, 1, 1, 1, 0, 0, 0]
    assert counts.dtype == np.int64


def test_empty_runs():
    settings = CoreSettings(channels=3, herald_masks=(0b101,))
    result = model.simulate([[], [], []], [[], [], []], settings)
    assert len(result.tags) == 0 and len(result.windows) == 0 and len(result.heralds) == 0
    assert result.patterns.tolist() == [0] * 8 and result.herald_counts.tolist() == [0]
    assert model.herald_pin(result.heralds, 1, 3, rules=1) == [[]]


# --- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: CoreSettings(window=0), "window"),
    (lambda: CoreSettings(window=model.MAX_WINDOW + 1), "window"),
    (lambda: CoreSettings(fine_bits=2, window=3), "window"),
    (lambda: CoreSettings(channels=0), "channels"),
    (lambda: CoreSettings(channels=9), "channels"),
    (lambda: CoreSettings(channels=2, herald_masks=(0,)), "mask"),
    (lambda: CoreSettings(channels=2, herald_masks=(0b100,)), "beyond"),
    (lambda: CoreSettings(channels=2, herald_masks=(1,) * 9), "rules"),
    (lambda: CoreSettings(herald_width=0), "herald_width"),
    (lambda: CoreSettings(herald_width=256), "herald_width"),
    (lambda: CoreSettings(channels=2, coincidence_record_mask=1 << 4), "coincidence_record"),
    (lambda: CoreSettings(delay_depth=0), "delay_depth"),
    (lambda: CoreSettings(channels=2, channel=(ChannelSettings(),)), "channel"),
    (lambda: CoreSettings(channels=1, channel=("rising",)), "ChannelSettings"),
    (lambda: CoreSettings(window=2.5), "integer"),
    (lambda: ChannelSettings(edge="up"), "edge"),
    (lambda: ChannelSettings(delay=-1), "delay"),
    (lambda: ChannelSettings(delay=model.MAX_DELAY + 1), "delay"),
    (lambda: ChannelSettings(dead_time=-1), "dead_time"),
    (lambda: ChannelSettings(dead_time=model.MAX_DEAD_TIME + 1), "dead_time"),
    (lambda: ChannelSettings(enable="yes"), "enable"),
    (lambda: model.input_events([3, 1], [], ChannelSettings()), "sorted"),
    (lambda: model.input_events([1.5], [], ChannelSettings()), "integer"),
    (lambda: model.input_events([[1]], [], ChannelSettings()), "1-D"),
    (lambda: model.input_events([1], [], ChannelSettings(), gate=[(5, 2)]), "gate"),
    (lambda: model.input_events([1], [], ChannelSettings(), gate=[5]), "gate"),
    (lambda: model.input_events([1], [], "rising"), "ChannelSettings"),
    (lambda: model.delay_events([1], 1024), "delay"),
    (lambda: model.delay_events([1], -1), "delay"),
    (lambda: model.delay_events([1], 1, depth=0), "depth"),
    (lambda: model.delay_events([2, 1], 1), "sorted"),
    (lambda: model.coincidence_windows([[1]], 0), "window"),
    (lambda: model.coincidence_windows([[2, 1]], 1), "sorted"),
    (lambda: model.coincidence_windows([], 1), "channels"),
    (lambda: model.coincidence_windows([[]] * 9, 1), "channels"),
    (lambda: model.herald_records([[1], [2]], 1, [0b100]), "beyond"),
    (lambda: model.herald_records([[1], [2]], 1, [0]), "never fire"),
    (lambda: model.pattern_counts(model.Windows(np.array([0]), np.array([4])), 2), "pattern"),
    (lambda: model.simulate([[]], [[]], CoreSettings(channels=2)), "per channel"),
    (lambda: model.simulate([[]], [[]], None), "CoreSettings"),
    (lambda: model.counts_from_tags(np.array([1, 2]), CoreSettings()), "fields"),
    (lambda: model.counts_from_tags(np.array([(0, 4)], model.TAG_DTYPE),
                                    CoreSettings(channels=4)), "channels"),
    (lambda: model.herald_pin(np.zeros(0, model.HERALD_DTYPE), 0, 3), "width"),
    (lambda: model.herald_pin(np.zeros(0, model.HERALD_DTYPE), 1, -1), "latency"),
    (lambda: model.herald_pin(np.array([(0, 2, 1)], model.HERALD_DTYPE), 1, 0, rules=2),
     "rule"),
])
def test_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_settings_defaults_and_normalisation():
    settings = CoreSettings(channels=2, channel=[ChannelSettings(delay=3), ChannelSettings()],
                            herald_masks=[np.int64(3)])
    assert settings.channel_settings(0).delay == 3 and settings.herald_masks == (3,)
    assert CoreSettings().channel_settings(3) == ChannelSettings()
    with pytest.raises(ValueError):
        CoreSettings().channel_settings(4)


def test_limits_agree_with_protocol():
    from heraldry import protocol
    assert model.MAX_CHANNELS == protocol.MAX_CHANNELS
    assert model.MAX_RULES == protocol.MAX_RULES
    assert model.MAX_DELAY == 2**protocol.DELAY_BITS - 1
    assert model.MAX_WINDOW == 2**protocol.WINDOW_BITS - 1
    assert model.MAX_DEAD_TIME == 2**protocol.DEAD_TIME_BITS - 1
    assert model.MAX_HERALD_WIDTH == 2**protocol.HERALD_WIDTH_BITS - 1
    assert set(model.EDGES) == {e.name.lower() for e in protocol.Edge}
    assert 2**(8 * model.TAG_DTYPE["channel"].itemsize) >= protocol.MAX_CHANNELS
    assert 2**(8 * model.HERALD_DTYPE["rule"].itemsize) >= protocol.MAX_RULES
    for dtype in (model.HERALD_DTYPE, model.COINCIDENCE_DTYPE):
        assert 8 * dtype["pattern"].itemsize >= protocol.PATTERN_BITS


def test_model_does_not_import_amaranth():
    import subprocess
    import sys
    code = "import sys, heraldry.model; print('amaranth' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the diagrams of docs/semantics.md -------------------------------------------------------

LABEL = 14      # label column width
COLUMN = 4      # characters per bin / cycle


def _row(label, cells):
    return (label.ljust(LABEL) + "".join(cells)).rstrip()


def _pin_row(label, rise, fall, bins):
    level, high = [], False
    edges = {t: True for t in rise} | {t: False for t in fall}
    for b in range(bins + 1):
        high = edges.get(b, high)
        level.append(high)
    cells = []
    for b in range(bins):
        cell = list("----" if level[b] else "____")
        if level[b + 1] != level[b]:
            # the pin changes just before the clock edge that first samples it
            cell[-1] = "/" if level[b + 1] else "\\"
        cells.append("".join(cell))
    return _row(label, cells)


def _event_row(label, times, bins):
    times = set(int(t) for t in times)
    return _row(label, ["x   " if b in times else ".   " for b in range(bins)])


def _level_row(label, intervals, bins):
    high = {c for start, stop in intervals for c in range(start, stop)}
    cells = []
    for b in range(bins):
        if b in high:
            cells.append("----" if b - 1 in high else "/---")
        else:
            cells.append("\\___" if b - 1 in high else "____")
    return _row(label, cells)


def _span_row(label, starts, length, bins):
    """Half-open spans [start, start + length) drawn as [====)."""
    cells = [" " * COLUMN] * bins
    for start in starts:
        for b in range(start, min(start + length, bins)):
            cells[b] = ("[" if b == start else "=") + "==" + (")" if b == start + length - 1
                                                             else "=")
    return _row(label, cells)


def render(spec):
    """The model-derived rows of one diagram."""
    channels, bins = spec["channels"], spec["bins"]
    settings = CoreSettings(
        channels=channels, window=spec["window"], herald_masks=spec.get("masks", ()),
        herald_rules=spec.get("rules", ()),
        herald_width=spec.get("width", 1),
        channel=tuple(ChannelSettings(dead_time=spec.get("dead_time", [0] * channels)[c],
                                      delay=spec.get("delay", [0] * channels)[c],
                                      role=spec.get("roles", ["detector"] * channels)[c],
                                      gate=spec.get("gates", [None] * channels)[c])
                      for c in range(channels)),
        stream=spec.get("stream", ()), stream_hold=spec.get("hold", model.STREAM_HOLD))
    result = model.simulate(spec["rise"], spec["fall"], settings)
    # Every event, streamed or not (the windows' patterns are made of all of them).
    events = model.simulate(spec["rise"], spec["fall"],
                            dataclasses.replace(settings, stream=())).tags
    rows = [_row("bin", [f"{b:<{COLUMN}}" for b in range(bins)]),
            _row("clk", ["/-\\_"] * bins)]
    for c in range(channels):
        rows.append(_pin_row(f"ch{c} pin", spec["rise"][c], spec["fall"][c], bins))
    if "dead_time" in spec:
        for c in range(channels):
            events = model.input_events(spec["rise"][c], spec["fall"][c],
                                        settings.channel_settings(c))
            rows.append(_event_row(f"ch{c} accepted", events, bins))
            rows.append(_span_row(f"ch{c} dead", events, spec["dead_time"][c], bins))
    if "delay" in spec:
        for c in range(channels):
            rows.append(_event_row(f"ch{c} delayed",
                                   result.tags["time"][result.tags["channel"] == c], bins))
    if "gates" in spec:
        sync = settings.channel_settings(settings.sync_channel)
        syncs = (model.input_events(spec["rise"][settings.sync_channel],
                                    spec["fall"][settings.sync_channel], sync)
                 + sync.delay).tolist()
        for c, gate in enumerate(spec["gates"]):
            if gate is not None:
                rows.append(_span_row(f"ch{c} gate", [s + gate[0] for s in syncs], gate[1],
                                      bins))
                rows.append(_event_row(f"ch{c} kept",
                                       result.tags["time"][result.tags["channel"] == c], bins))
        attempt = [" " * COLUMN] * bins
        for n, s in enumerate(syncs, 1):
            attempt[s] = f"{n}".ljust(COLUMN)
        rows.append(_row("attempt", attempt))
    if spec.get("windows", True):
        window = settings.window
        pattern, closed = [" " * COLUMN] * bins, [""] * bins
        for t0, p in zip(result.windows.t0.tolist(), result.windows.pattern.tolist()):
            running = 0
            for t, c in events.tolist():
                if t0 <= t < t0 + window:
                    running |= 1 << c
                    pattern[t] = f"{running:0{channels}b}".ljust(COLUMN)
            if t0 + window < bins:
                closed[t0 + window] = f"{p:0{channels}b}"
        rows.append(_span_row("window", result.windows.t0.tolist(), window, bins))
        rows.append(_row("pattern", pattern))
        rows.append(_row("closed", [c.ljust(COLUMN) for c in closed]))
    if "stream" in spec:
        # Per channel: each event streamed (x) or not (-), and the cycle the filter hands each
        # streamed tag on: a coincident channel's tag once a second channel is in its window.
        window = settings.window
        for c, mode in enumerate(settings.stream):
            streamed = result.tags["time"][result.tags["channel"] == c].tolist()
            cells = [".   "] * bins
            for t in events["time"][events["channel"] == c].tolist():
                cells[t] = "x   " if t in streamed else "-   "
            rows.append(_row(f"ch{c} {mode[:5]}", cells))
            sent = []
            for t in streamed:
                t0 = result.windows.t0[result.windows.t0 <= t].max()
                members = events[(events["time"] >= t0) & (events["time"] < t0 + window)]
                second = min(int(u) for u, d in members.tolist() if d != c) \
                    if mode == "coincident" else t
                sent.append(max(t, second))
            rows.append(_event_row(f"ch{c} sent", sent, bins))
    for rule in range(len(settings.herald_rules)):
        fires = result.heralds["time"][result.heralds["rule"] == rule]
        rows.append(_event_row(f"fire {rule}", fires, bins))
        if "gates" in spec:
            where = result.herald_sync[result.heralds["rule"] == rule]
            offset = [" " * COLUMN] * bins
            for t, a, o in zip(fires.tolist(), where["attempt"].tolist(),
                               where["offset"].tolist()):
                offset[t] = f"{a}/{o}".ljust(COLUMN)
            rows.append(_row(f"attempt/off {rule}", offset))
    pins = model.herald_pin(result.heralds, settings.herald_width, spec.get("latency", 4),
                            herald_rules=settings.herald_rules,
                            rules=max((r.pin + 1 for r in settings.herald_rules), default=0))
    for pin, intervals in enumerate(pins):
        rows.append(_level_row(f"herald {pin}", intervals, bins))
    return rows


DIAGRAMS = {
    "stream": dict(channels=3, bins=21, window=5, hold=1,
                   stream=("coincident", "coincident", "all"),
                   rise=[[1, 3, 8, 15], [4], [14]], fall=[[2, 4, 9, 16], [5], [15]]),
    "two-fold": dict(channels=2, bins=12, window=4, masks=(0b11,), width=2,
                     rise=[[2, 5], [4]], fall=[[3, 6], [7]]),
    "window-edge": dict(channels=3, bins=12, window=4, rise=[[2], [5], [6]],
                        fall=[[4], [7], [8]]),
    "back-to-back": dict(channels=2, bins=16, window=3, masks=(0b11,), width=4,
                         rise=[[1, 4, 7], [3, 6]], fall=[[2, 5, 8], [4, 8]]),
    "dead-time": dict(channels=1, bins=12, window=1, dead_time=[4], windows=False,
                      rise=[[1, 3, 5, 8]], fall=[[2, 4, 6, 9]]),
    "delay": dict(channels=2, bins=10, window=3, masks=(0b11,), width=2, delay=[3, 0],
                  rise=[[1], [2]], fall=[[3], [4]]),
    "latency": dict(channels=2, bins=10, window=2, masks=(0b11,), width=2,
                    rise=[[1], [2]], fall=[[6], [5]]),
    "veto": dict(channels=3, bins=20, window=5, width=2,
                 rules=(HeraldRule(0b011, 0b100), HeraldRule(0b011, 0b100, "exact")),
                 rise=[[1, 8], [2, 10], [4]], fall=[[2, 9], [3, 11], [5]]),
    "psi-minus": dict(channels=4, bins=27, window=5, width=2, rules=PSI_MINUS,
                      rise=[[1, 8], [12, 15], [17], [3, 10]],
                      fall=[[2, 9], [13, 16], [18], [4, 11]]),
    "sync-gate": dict(channels=3, bins=20, window=2, masks=(0b011,), width=2,
                      roles=["detector", "detector", "sync"], gates=[(2, 3), (2, 3), None],
                      rise=[[3, 5, 15], [1, 6, 17], [2, 12]],
                      fall=[[4, 6, 16], [2, 7, 18], [3, 13]]),
}


def diagram_blocks():
    text = SEMANTICS.read_text()
    blocks = dict(re.findall(r"<!-- diagram: ([\w-]+) -->\n```text\n(.*?)```", text, re.S))
    return {name: [line.rstrip() for line in body.splitlines()] for name, body in blocks.items()}


def test_semantics_lists_every_diagram():
    assert set(diagram_blocks()) == set(DIAGRAMS)


@pytest.mark.parametrize("name", sorted(DIAGRAMS))
def test_semantics_diagram_matches_model(name):
    """Every model-derived row of the diagram appears verbatim in docs/semantics.md."""
    block = diagram_blocks()[name]
    for row in render(DIAGRAMS[name]):
        assert row in block, f"diagram {name!r} disagrees with the model; expected row:\n{row}"


if __name__ == "__main__":
    for name, spec in DIAGRAMS.items():
        print(f"<!-- diagram: {name} -->\n```text")
        print("\n".join(render(spec)))
        print("```\n")
