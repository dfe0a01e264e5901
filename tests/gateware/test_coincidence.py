# amaranth: UnusedElaboratable=no
"""CoincidenceUnit + HeraldGenerator against the reference model, cycle by cycle.

Events are fed in the cycle matching their (delayed) coarse time, as the delay lines deliver
them. Checked against ``heraldry.model``: closed windows (t0, pattern) and the cycle each close is
reported, pattern counts, herald records (time, rule, pattern) and the cycle each fires, herald
pin intervals (``model.herald_pin`` with latency 1), and for F = 0 the per-cycle
``prev_pattern``/``pattern`` derived from the model's windows.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from heraldry import model
from heraldry.gateware.coincidence import CoincidenceUnit, HeraldGenerator
from heraldry.model import HeraldRule
from heraldry.protocol import COARSE_BITS, time_bits

LATENCY = 1   # herald pin rises one clock edge after the completing events


class Dut:
    def __init__(self, channels, rules, fine_bits, record_stage=False):
        self.channels, self.rules, self.fine_bits = channels, rules, fine_bits
        self.unit = unit = CoincidenceUnit(channels, fine_bits)
        self.herald = herald = HeraldGenerator(channels, rules, fine_bits,
                                               record_stage=record_stage)
        self.top = m = Module()
        m.submodules.unit = unit
        m.submodules.herald = herald
        m.d.comb += [
            herald.events.eq(unit.events),
            herald.times.eq(unit.times),
            herald.ref.eq(unit.ref),
            herald.clear.eq(unit.clear),
            herald.join.eq(unit.join),
            herald.prev_pattern.eq(unit.prev_pattern),
            herald.closed.eq(unit.closed),
            herald.closed_pattern.eq(unit.closed_pattern),
        ]


class Trace:
    """What the gateware did, in absolute cycles (cycle = coarse time without wrapping)."""

    def __init__(self, rules):
        self.closes = []       # (cycle, t0, pattern)
        self.heralds = []      # (cycle, time, rule, pattern)
        self.pins = [[] for _ in range(rules)]   # per pin: cycles with the pin high
        self.per_cycle = {}    # cycle -> (prev_pattern, join, pattern)

    def pin_intervals(self, rule):
        intervals = []
        for cycle in self.pins[rule]:
            if intervals and intervals[-1][1] == cycle:
                intervals[-1][1] = cycle + 1
            else:
                intervals.append([cycle, cycle + 1])
        return [tuple(i) for i in intervals]


def as_rules(channels, masks):
    """Masks or HeraldRules as the model's HeraldRules, pins filled in."""
    return model.CoreSettings(channels=channels, herald_rules=tuple(masks)).herald_rules


def run_gateware(channels, fine_bits, window, masks, width, times, start, stop,
                 clears=(), check=None, record_stage=False):
    """Simulate cycles ``start .. stop - 1`` (absolute coarse times) with the events of
    ``times`` (per channel, absolute bins) presented in their cycles. ``masks``: channel masks
    or ``HeraldRule`` s. ``clears``: cycles in which ``clear`` is high. ``check(ctx, dut,
    cycle)`` runs in each cycle after the inputs are set. An exact rule's herald record is
    traced as the merger makes it: the cycle's first bin and the pattern of the close it fires
    with. ``record_stage``: an early rule's time and pattern are read one cycle after it
    fires."""
    rule_list = as_rules(channels, masks)
    rules = len(masks)
    dut = Dut(channels, rules, fine_bits, record_stage)
    unit, herald = dut.unit, dut.herald
    tmod = 2 ** time_bits(fine_bits)
    by_cycle = {}
    for c, ts in enumerate(times):
        for t in ts:
            t = int(t)
            slot = by_cycle.setdefault(t >> fine_bits, [0, [0] * channels])
            assert not slot[0] >> c & 1, "one event per channel per cycle"
            slot[0] |= 1 << c
            slot[1][c] = t % tmod
    assert all(start <= cycle < stop for cycle in by_cycle)
    trace = Trace(rules)
    clears = set(clears)

    async def bench(ctx):
        ctx.set(unit.window, window)
        ctx.set(herald.herald_mask, [r.require for r in rule_list])
        ctx.set(herald.herald_veto, [r.veto for r in rule_list])
        ctx.set(herald.herald_exact, sum(1 << i for i, r in enumerate(rule_list)
                                         if r.mode == "exact"))
        ctx.set(herald.herald_pin, [r.pin for r in rule_list])
        ctx.set(herald.herald_width, width)
        late = []     # (cycle, rule) of early firings whose fields come a cycle later
        for cycle in range(start, stop):
            for fired, r in late:
                trace.heralds.append((fired, ctx.get(herald.herald_time[r]), r,
                                      ctx.get(herald.herald_pattern[r])))
            late = []
            mask, cycle_times = by_cycle.get(cycle, (0, None))
            ctx.set(unit.ref, cycle % 2 ** COARSE_BITS)
            ctx.set(unit.events, mask)
            if cycle_times is not None:
                ctx.set(unit.times, cycle_times)
            ctx.set(unit.clear, cycle in clears)
            if check is not None:
                check(ctx, dut, cycle)
            trace.per_cycle[cycle] = (ctx.get(unit.prev_pattern), ctx.get(unit.join),
                                      ctx.get(unit.pattern))
            fire = ctx.get(herald.fire)
            for r in range(rules):
                if fire >> r & 1 and rule_list[r].mode == "exact":
                    assert ctx.get(unit.closed)
                    trace.heralds.append((cycle, (cycle << fine_bits) % tmod, r,
                                          ctx.get(unit.closed_pattern)))
                elif fire >> r & 1 and record_stage:
                    late.append((cycle, r))
                elif fire >> r & 1:
                    trace.heralds.append((cycle, ctx.get(herald.herald_time[r]), r,
                                          ctx.get(herald.herald_pattern[r])))
            if ctx.get(unit.closed):
                trace.closes.append((cycle, ctx.get(unit.closed_t0),
                                     ctx.get(unit.closed_pattern)))
            pins = ctx.get(herald.herald)
            for r in range(rules):
                if pins >> r & 1:
                    trace.pins[r].append(cycle)
            await ctx.tick()

    sim = Simulator(dut.top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return trace


def as_arrays(times):
    return [np.array(sorted(ts), dtype=np.int64) for ts in times]


def compare_with_model(channels, fine_bits, window, masks, width, times, trace):
    """Assert that the trace equals the model for the events in ``times``."""
    f = fine_bits
    tmod = 2 ** time_bits(f)
    arrays = as_arrays(times)

    windows = model.coincidence_windows(arrays, window)
    expected = [(((int(t0) + window - 1) >> f) + 1, int(t0) % tmod, int(p))
                for t0, p in zip(windows.t0, windows.pattern)]
    assert trace.closes == expected

    counts = np.zeros(2 ** channels, dtype=np.int64)
    for _, _, p in trace.closes:
        counts[p] += 1
    assert np.array_equal(counts, model.pattern_counts(windows, channels))

    rules = as_rules(channels, masks)
    records = model.herald_records(arrays, window, rules, f)
    # A rule decides in the cycle of its record time (an exact rule's: its window's end).
    expected = sorted((int(t) >> f, int(t) % tmod, int(r), int(p))
                      for t, r, p in zip(records["time"], records["rule"], records["pattern"]))
    # Within a cycle (F > 0) the gateware reports in rule order, the model in time order.
    assert sorted(trace.heralds) == expected

    pins = model.herald_pin(records, width, LATENCY, rules=len(masks), fine_bits=f,
                            herald_rules=rules)
    for r in range(len(masks)):
        assert trace.pin_intervals(r) == [tuple(map(int, i)) for i in pins[r]], f"pin {r}"

    if f == 0:
        check_per_cycle(channels, window, arrays, windows, trace)
    return windows, records


def check_per_cycle(channels, window, arrays, windows, trace):
    """F = 0: prev_pattern is the pattern of the model's window still open at the start of the
    cycle (events from its t0 up to the previous cycle), 0 if none; pattern adds this cycle's
    events (to that window, or to the new one they open)."""
    events = {}
    for c, ts in enumerate(arrays):
        for t in ts:
            events.setdefault(int(t), []).append(c)
    t0s = [int(t) for t in windows.t0]
    current, acc = None, 0     # model window of the cycle, its pattern so far
    for cycle in sorted(trace.per_cycle):
        prev, join, pattern = trace.per_cycle[cycle]
        now = sum(1 << c for c in events.get(cycle, ()))
        w = int(np.searchsorted(t0s, cycle, side="right")) - 1
        if w != current:
            current, acc = w, 0
        inside = w >= 0 and t0s[w] <= cycle < t0s[w] + window
        expected_prev = acc if inside and t0s[w] < cycle else 0
        assert prev == expected_prev, f"cycle {cycle}"
        assert join == (now if expected_prev else 0), f"cycle {cycle}"
        assert pattern == expected_prev | now, f"cycle {cycle}"
        if inside:
            acc |= now


def random_times(rng, channels, fine_bits, start, cycles, rate, burst=0.0):
    """Per channel sorted event times (bins), at most one per cycle per channel. With
    probability ``burst`` a cycle has events on all channels (simultaneous arrivals)."""
    times = [[] for _ in range(channels)]
    for cycle in range(start, start + cycles):
        everyone = rng.random() < burst
        for c in range(channels):
            if everyone or rng.random() < rate:
                times[c].append((cycle << fine_bits) + rng.randrange(2 ** fine_bits))
    return times


def random_masks(rng, channels, rules):
    return [rng.randint(1, 2 ** channels - 1) for _ in range(rules)]


def run_and_compare(channels, fine_bits, window, masks, width, times, start, cycles,
                    record_stage=False):
    tail = (window >> fine_bits) + width + 3
    trace = run_gateware(channels, fine_bits, window, masks, width, times, start,
                         start + cycles + tail, record_stage=record_stage)
    windows, records = compare_with_model(channels, fine_bits, window, masks, width, times, trace)
    return trace, windows, records


# Near the coarse counter's wrap: times keep counting up in the model (int64) and are compared
# modulo 2**time_bits with the gateware's.
NEAR_WRAP = 2 ** COARSE_BITS - 700


@pytest.mark.parametrize("channels, window, rate, cycles, start, seed", [
    (1, 1, 0.5, 800, 5, 11),
    (1, 3, 0.4, 800, NEAR_WRAP, 12),
    (2, 1, 0.5, 1000, NEAR_WRAP, 13),
    (2, 4, 0.15, 1000, 5, 14),
    (4, 1, 0.4, 1000, 5, 15),
    (4, 2, 0.2, 1000, NEAR_WRAP, 16),
    (4, 9, 0.05, 1500, 5, 17),
    (8, 1, 0.3, 1000, NEAR_WRAP, 18),
    (8, 5, 0.04, 1500, 5, 19),
    (8, 1023, 0.0015, 4000, NEAR_WRAP - 2000, 20),
    (3, 1023, 0.0004, 4500, 5, 21),
])
def test_random_f0(channels, window, rate, cycles, start, seed):
    rng = random.Random(seed)
    rules = rng.randint(1, 3)
    masks = random_masks(rng, channels, rules)
    width = rng.choice([1, 2, 4, 9])
    times = random_times(rng, channels, 0, start, cycles, rate, burst=0.02)
    _, windows, records = run_and_compare(channels, 0, window, masks, width, times, start,
                                          cycles)
    # The stimulus is meaningful: several windows, some heralds.
    assert len(windows.t0) >= 3
    assert len(records) >= 1


@pytest.mark.parametrize("fine_bits, channels, window, seed", [
    (2, 2, 4, 31), (2, 2, 5, 32), (2, 4, 4, 33), (2, 4, 13, 34), (2, 3, 7, 35),
    (4, 2, 16, 41), (4, 4, 37, 42), (4, 3, 100, 43),   # F = 4: the ULX3S's 16 samples a cycle
])
def test_random_fine(fine_bits, channels, window, seed):
    rng = random.Random(seed)
    rules = 3
    masks = random_masks(rng, channels, rules)
    width = rng.choice([1, 3])
    start = 2 ** COARSE_BITS - 300 if seed % 2 else 7
    times = random_times(rng, channels, fine_bits, start, 600, 0.3, burst=0.02)
    _, windows, records = run_and_compare(channels, fine_bits, window, masks, width, times,
                                          start, 600)
    assert len(windows.t0) >= 3 and len(records) >= 3


def test_f2_window_closes_and_opens_in_one_cycle():
    """W = 2**F: the window at bin 2 takes bin 5 and closes in cycle 1 where bin 6 opens the next
    one. Rule 0 (ch0 | ch1) completes at bin 5 in the old window, rule 1 (ch0) at bin 6 in the
    new one: two rules, two windows, one cycle."""
    times = [[2, 6], [5]]
    trace, windows, records = run_and_compare(2, 2, 4, [0b11, 0b01], 2, times, 0, 4)
    assert trace.closes == [(2, 2, 0b11), (3, 6, 0b01)]
    assert trace.heralds == [(0, 2, 1, 0b01), (1, 5, 0, 0b11), (1, 6, 1, 0b01)]


def test_simultaneous_on_all_channels():
    # Every channel at cycle 10, window 1: one window, all bits; closes in cycle 11. Rules on
    # disjoint and overlapping masks all fire at once.
    times = [[10] for _ in range(8)]
    masks = [0xFF, 0x01, 0x81]
    trace, _, _ = run_and_compare(8, 0, 1, masks, 3, times, 0, 15)
    assert trace.closes == [(11, 10, 0xFF)]
    assert trace.heralds == [(10, 10, r, 0xFF) for r in range(3)]
    assert trace.pin_intervals(0) == [(11, 14)]


def test_window_edge():
    # W = 5 from t0 = 100: 104 joins, 105 opens the next window.
    times = [[100], [104], [105]]
    trace, _, _ = run_and_compare(3, 0, 5, [0b011, 0b110], 1, times, 95, 20)
    assert trace.closes == [(105, 100, 0b011), (110, 105, 0b100)]
    assert trace.heralds == [(104, 104, 0, 0b011)]
    assert trace.per_cycle[105] == (0, 0, 0b100)


def test_back_to_back_windows():
    # Each event lands exactly on the previous window's end: the close of one and the opening
    # of the next are in the same cycle, every window has one channel.
    w = 3
    times = [[10, 16], [13, 19]]
    trace, _, _ = run_and_compare(2, 0, w, [0b11], 1, times, 0, 30)
    assert trace.closes == [(13, 10, 1), (16, 13, 2), (19, 16, 1), (22, 19, 2)]
    assert trace.heralds == []


def test_close_by_timeout():
    # A lone event: the window closes at t0 + W with nothing else happening.
    times = [[50], []]
    trace, _, _ = run_and_compare(2, 0, 17, [0b01], 1, times, 40, 10)
    assert trace.closes == [(67, 50, 0b01)]
    assert all(trace.per_cycle[c][0] == 0b01 for c in range(51, 67))
    assert trace.per_cycle[67] == (0, 0, 0)


def test_herald_once_per_window_and_two_rules_in_one_cycle():
    # Rule 0 (ch0) fires at 10 and not again in the same window; rules 1 (ch0, ch1) and
    # 2 (ch1, ch2) are both completed by ch1 at 12 in one cycle; a new window refires rule 0.
    times = [[10, 11, 13, 30], [12], [11]]
    masks = [0b001, 0b011, 0b110]
    trace, _, _ = run_and_compare(3, 0, 10, masks, 4, times, 0, 40)
    assert trace.heralds == [(10, 10, 0, 0b001), (12, 12, 1, 0b111), (12, 12, 2, 0b111),
                             (30, 30, 0, 0b001)]
    assert trace.pin_intervals(0) == [(11, 15), (31, 35)]
    assert trace.pin_intervals(1) == [(13, 17)]


def test_herald_pin_retrigger():
    # W = 1: every event is its own window. Firings at 10 and 13 with width 5: the second
    # restarts the count (pin 11 .. 18); firings on consecutive cycles with width 1 keep it high.
    times = [[10, 13, 30, 31, 32]]
    trace, _, _ = run_and_compare(1, 0, 1, [1], 5, times, 0, 40)
    assert trace.pin_intervals(0) == [(11, 19), (31, 38)]
    trace, _, _ = run_and_compare(1, 0, 1, [1], 1, times, 0, 40)
    assert trace.pin_intervals(0) == [(11, 12), (14, 15), (31, 34)]


def test_window_across_counter_wrap():
    # t0 = 2**32 - 2, W = 4: 2**32 + 1 (coarse 1) joins, 2**32 + 2 (coarse 2) opens the next.
    top = 2 ** COARSE_BITS
    times = [[top - 2, top + 2], [top + 1]]
    trace, _, _ = run_and_compare(2, 0, 4, [0b11], 2, times, top - 5, 10)
    assert trace.closes == [(top + 2, top - 2, 0b11), (top + 6, 2, 0b01)]
    assert trace.heralds == [(top + 1, 1, 0, 0b11)]


def test_clear_drops_window_and_pins():
    # Window opened at 10 (W = 20) and rule fired; clear at 15 drops both without a close;
    # an event at 15 (ignored, clear) and at 18 (a new window with prev_pattern 0).
    times = [[10, 15], [10, 18]]

    def check(ctx, dut, cycle):
        if cycle == 16:
            assert ctx.get(dut.herald.herald) == 0

    trace = run_gateware(2, 0, 20, [0b11], 30, times, 0, 45, clears=[15], check=check)
    assert trace.closes == [(38, 18, 0b10)]
    assert trace.heralds == [(10, 10, 0, 0b11)]
    assert trace.pin_intervals(0) == [(11, 16)]
    assert trace.per_cycle[15] == (0b11, 0, 0b11)
    assert trace.per_cycle[18] == (0, 0, 0b10)


def random_rules(rng, channels):
    """Four rules: an early and an exact one with a veto, two more of any kind; rules 0 and 3
    share a pin. Masks of one or two channels (they fire often), vetoes among the others."""
    out = []
    for r in range(4):
        require = 0
        for c in rng.sample(range(channels), rng.randint(1, 2)):
            require |= 1 << c
        others = [c for c in range(channels) if not require >> c & 1]
        veto = sum(1 << c for c in rng.sample(others, rng.randint(1, len(others))))
        if r >= 2 and rng.random() < 0.3:
            veto = 0
        mode = ("early", "exact")[r] if r < 2 else rng.choice(model.HERALD_MODES)
        pin = out[0].pin if r == 3 else rng.randrange(2)
        out.append(HeraldRule(require, veto, mode, pin))
    return out


@pytest.mark.parametrize("fine_bits, channels, window, rate, seed, record_stage", [
    (0, 4, 1, 0.4, 51, False), (0, 4, 6, 0.1, 52, False), (0, 3, 3, 0.3, 53, False),
    (0, 8, 4, 0.1, 54, False), (2, 4, 4, 0.3, 55, False), (2, 4, 11, 0.2, 56, False),
    (4, 4, 16, 0.3, 57, False), (4, 4, 45, 0.15, 58, False),
    (0, 8, 4, 0.1, 54, True), (2, 4, 11, 0.2, 56, True), (4, 8, 16, 0.2, 59, True),
    (4, 8, 45, 0.1, 60, True),
])
def test_random_rules_veto_exact_shared_pins(fine_bits, channels, window, rate, seed,
                                             record_stage):
    """Require/veto masks, early and exact rules, several rules on one pin, against the model;
    half the runs start near the counter's wrap. ``record_stage``: the time and pattern of an
    early rule's record read a cycle after it fires (``HeraldGenerator(record_stage=True)``),
    8 channels at F = 4 as on the ULX3S."""
    rng = random.Random(seed)
    rules = random_rules(rng, channels)
    start = NEAR_WRAP if seed % 2 else 7
    times = random_times(rng, channels, fine_bits, start, 700, rate, burst=0.02)
    trace, windows, records = run_and_compare(channels, fine_bits, window, rules,
                                              rng.choice([1, 2, 5]), times, start, 700,
                                              record_stage)
    fired = {int(r) for r in records["rule"]}
    assert len(windows.t0) >= 20 and len(records) >= 10
    assert any(rules[r].mode == "exact" for r in fired), "an exact rule fired"
    assert any(rules[r].veto for r in fired), "a rule with a veto fired"
    unvetoed = model.herald_records(as_arrays(times), window,
                                    [HeraldRule(r.require, 0, r.mode) for r in rules], fine_bits)
    assert len(unvetoed) > len(records), "some firings were vetoed"


PSI_MINUS = [HeraldRule(0b1001, 0b0110, "exact", 0), HeraldRule(0b0110, 0b1001, "exact", 0)]


@pytest.mark.parametrize("fine_bits, window", [(0, 6), (2, 9), (4, 30)])
def test_psi_minus_fires_on_1001_and_0110_only(fine_bits, window):
    """psi- (exact, both rules on pin 0): each of the 15 patterns in its own window, clicks
    spread over the window (the last one in the window's last bin) or all in one bin; the pin
    fires for 1001 and 0110 and never for 1011, 0111, 1101, 1111 (or any other)."""
    times = [[] for _ in range(4)]
    windows = []
    t = 40 << fine_bits
    for spread in (True, False):
        for pattern in range(1, 16):
            channels = [c for c in range(4) if pattern >> c & 1]
            for k, c in enumerate(channels):
                offset = 0 if not spread or k == 0 else (window - 1) * k // (len(channels) - 1)
                times[c].append(t + offset)
            windows.append((t, pattern))
            t += (window + 3) << fine_bits
    start = 35
    cycles = (t >> fine_bits) - start
    trace, got_windows, records = run_and_compare(4, fine_bits, window, PSI_MINUS, 2, times,
                                                  start, cycles)
    assert list(zip(got_windows.t0.tolist(), got_windows.pattern.tolist())) == windows
    # Each decided at its window's end, rounded up to a cycle.
    fired = [(int(t), int(p)) for t, _, p in records.tolist()]
    assert fired == [((((t0 + window - 1) >> fine_bits) + 1) << fine_bits, p)
                     for t0, p in windows if p in (0b1001, 0b0110)]
    assert len(fired) == 4
    assert [h[2] for h in trace.heralds] == [1, 0, 1, 0]     # 0110 comes before 1001
    assert len(trace.pin_intervals(0)) == 4 and trace.pins[1] == []   # both on pin 0


def test_early_veto_in_the_completing_cycle():
    """F = 2, rule D0&D1&!D2 early: the veto click at the completing bin, or earlier in the same
    cycle, suppresses the herald; one bin later in that cycle it does not."""
    rule = [HeraldRule(0b011, 0b100)]
    for veto_bin, fires in ((41, False), (42, False), (43, True)):
        times = [[40], [42], [veto_bin]]
        trace, _, records = run_and_compare(3, 2, 8, rule, 1, times, 5, 10)
        assert (len(records) == 1) == fires and len(trace.heralds) == len(records)


def test_reject_bad_parameters():
    with pytest.raises(ValueError):
        CoincidenceUnit(0)
    with pytest.raises(ValueError):
        CoincidenceUnit(9)
    with pytest.raises(ValueError):
        HeraldGenerator(4, 0)
    with pytest.raises(ValueError):
        HeraldGenerator(4, 9)
