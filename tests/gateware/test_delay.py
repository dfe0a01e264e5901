"""DelayLine against ``heraldry.model.delay_events`` and the timing contract.

Stimulus: in cycle i (``now = counter_init + i``) an event may arrive with time
``Cat(fine, now - age)``; ``age`` is the pipeline age of the event when it reaches the line (2 in
the core: PHY latency 1 + input-stage register). Each test checks, for every event that leaves,
the cycle it leaves in (contract: ``arrival + ((t + delay) >> F) - (t >> F)``) and its time
(``t + delay`` modulo ``2**time_bits``), and the cycles of the ``overflow`` pulses.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from heraldry import model
from heraldry.gateware.delay import DelayLine
from heraldry.protocol import COARSE_BITS, DELAY_BITS, time_bits

MAX_DELAY = 2**DELAY_BITS - 1


class Harness(wiring.Component):
    """Delay lines (one per channel) sharing a free-running ``now`` counter."""

    def __init__(self, channels, fine_bits, depth, counter_init):
        self.duts = [DelayLine(fine_bits, depth) for _ in range(channels)]
        super().__init__({"now": wiring.Out(COARSE_BITS, init=counter_init)})

    def elaborate(self, platform):
        m = Module()
        for c, dut in enumerate(self.duts):
            m.submodules[f"dut{c}"] = dut
            m.d.comb += dut.now.eq(self.now)
        m.d.sync += self.now.eq(self.now + 1)
        return m


def simulate(arrivals, delays, cycles, *, fine_bits=0, depth=16, counter_init=0, clear=()):
    """``arrivals[c]``: {cycle i: time} of channel c. Returns per channel (outputs, overflows):
    outputs = [(i, time)] of leaving events, overflows = [i] of overflow pulses."""
    h = Harness(len(delays), fine_bits, depth, counter_init)
    clear = set(clear)
    result = [([], []) for _ in delays]

    async def bench(ctx):
        for dut, delay in zip(h.duts, delays):
            ctx.set(dut.delay, delay)
        for i in range(cycles):
            for c, dut in enumerate(h.duts):
                if i in arrivals[c]:
                    ctx.set(dut.i.event, 1)
                    ctx.set(dut.i.time, arrivals[c][i])
                else:
                    ctx.set(dut.i.event, 0)
                ctx.set(dut.clear, i in clear)
            # Outputs are combinational: read them in the cycle they belong to.
            for c, dut in enumerate(h.duts):
                if ctx.get(dut.o.event):
                    result[c][0].append((i, ctx.get(dut.o.time)))
                if ctx.get(dut.overflow):
                    result[c][1].append(i)
            await ctx.tick()

    sim = Simulator(h)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return result


def make_arrivals(events, counter_init, fine_bits, age=2):
    """events: [(cycle i, fine)] -> ({i: hardware time}, unbounded model times)."""
    mask = 2**time_bits(fine_bits) - 1
    hw, times = {}, []
    for i, fine in events:
        t = ((counter_init + i - age) << fine_bits) + fine
        hw[i] = t & mask
        times.append(t)
    return hw, np.array(times, np.int64)


def expected(times, delay, depth, fine_bits, counter_init, age=2):
    """Model's kept events as [(leave cycle, time mod 2**T)], the dropped arrival cycles, and the
    model's drop count. Leave cycle = (td >> F) + age - counter_init (the contract, since
    an event at t arrives in cycle (t >> F) + age - counter_init)."""
    kept, dropped = model.delay_events(times, delay, depth=depth, fine_bits=fine_bits)
    mask = 2**time_bits(fine_bits) - 1
    out = [(int(td >> fine_bits) + age - counter_init, int(td) & mask) for td in kept]
    lost = list(times)
    for td in kept:
        lost.remove(td - delay)
    drop_cycles = [int(t >> fine_bits) + age - counter_init for t in lost]
    assert len(drop_cycles) == dropped
    return out, drop_cycles


def check(events, delay, *, fine_bits=0, depth=16, counter_init=0, extra=None):
    """One channel: simulate and compare with the model. Returns the model's drop count."""
    hw, times = make_arrivals(events, counter_init, fine_bits)
    tail = (MAX_DELAY >> fine_bits) + 4 if extra is None else extra
    cycles = (events[-1][0] if events else 0) + tail
    [(out, overflow)] = simulate([hw], [delay], cycles, fine_bits=fine_bits, depth=depth,
                                 counter_init=counter_init)
    want_out, want_drop = expected(times, delay, depth, fine_bits, counter_init)
    assert out == want_out
    assert overflow == want_drop
    return len(want_drop)


def random_events(rng, n, p, fine_bits=0, min_gap=0):
    """Arrival cycles with probability p per cycle, random fine; events closer than ``min_gap``
    bins to the previous one are left out."""
    events = []
    last = None
    for i in range(n):
        if rng.random() < p:
            fine = rng.randrange(2**fine_bits)
            t = (i << fine_bits) + fine
            if last is None or t - last >= min_gap:
                events.append((i, fine))
                last = t
    return events


@pytest.mark.parametrize("delay", [0, 1, 2, 37, MAX_DELAY])
def test_random(delay):
    """Random arrivals at a rate that overflows the line for long delays."""
    rng = random.Random(4000 + delay)
    events = random_events(rng, 1500 if delay < MAX_DELAY else 2500, 0.3)
    dropped = check(events, delay)
    if delay >= 37:
        assert dropped > 0
    else:
        assert dropped == 0


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("fine_bits", [0, 2])
def test_random_small_depth(depth, fine_bits):
    """Dense random arrivals through short lines (the head slot rewritten as it is read, an
    event due the cycle after it arrives, an empty line refilled as its last event leaves);
    delays around the depth overflow some of the time."""
    rng = random.Random(700 + 10 * depth + fine_bits)
    for delay in (1, 2, 3, 5, 4 * depth + 3):
        events = random_events(rng, 600, 0.6, fine_bits, min_gap=2**fine_bits)
        check(events, delay << fine_bits, fine_bits=fine_bits, depth=depth,
              extra=delay + 4)


def test_delay_zero_is_combinational():
    """delay = 0: every event leaves in its arrival cycle, even one per cycle, never dropped."""
    events = [(i, 0) for i in range(5, 60)]
    assert check(events, 0, extra=3) == 0


def test_delay_one():
    events = [(i, 0) for i in range(5, 60)] + [(70, 0), (72, 0)]
    assert check(events, 1, extra=4) == 0


@pytest.mark.parametrize("depth", [1, 4, 16])
def test_depth(depth):
    """depth events in flight fit; the next one is dropped and pulses ``overflow``."""
    events = [(10 + i, 0) for i in range(depth)]
    assert check(events, 100, depth=depth, extra=110) == 0
    events = [(10 + i, 0) for i in range(depth + 1)]
    assert check(events, 100, depth=depth, extra=110) == 1
    # Back to back with delay = depth: the oldest leaves as each new one arrives (slot reuse).
    events = [(10 + i, 0) for i in range(3 * depth)]
    assert check(events, depth, depth=depth, extra=depth + 4) == 0
    # delay = depth + 1: arrival k = depth finds depth events held, none leaving: dropped. Its
    # empty slot in the departures means the same happens depth + 1 arrivals later, and so on.
    want = len([k for k in range(3 * depth) if k % (depth + 1) == depth])
    assert check(events, depth + 1, depth=depth, extra=depth + 5) == want


def test_depth_refill():
    """Burst, drain while more arrive, burst again: the line's bookkeeping across wrap of its
    ring buffer, compared with the model."""
    events = ([(i, 0) for i in range(0, 30)] + [(i, 0) for i in range(60, 70)]
              + [(i, 0) for i in range(75, 120, 2)])
    for delay in (15, 16, 17, 40):
        check(events, delay, extra=50)


def test_counter_wrap():
    """now starts 300 cycles before the 2**32 wrap; events delayed across it."""
    rng = random.Random(77)
    counter_init = 2**COARSE_BITS - 300
    events = random_events(rng, 1200, 0.05)
    check(events, MAX_DELAY, counter_init=counter_init)
    check(events, 250, counter_init=counter_init, extra=260)


def test_channel_reordering():
    """Two channels with different delays: a later arrival on the short channel leaves first,
    and both stay aligned to their delayed coarse time."""
    counter_init = 1000
    arrivals = [{10: counter_init + 8}, {13: counter_init + 11}]
    [(out0, ovf0), (out1, ovf1)] = simulate(arrivals, [20, 3], 40, counter_init=counter_init)
    assert out0 == [(30, counter_init + 28)]
    assert out1 == [(16, counter_init + 14)]
    assert ovf0 == ovf1 == []

    rng = random.Random(12)
    delays = [0, 5, 300, MAX_DELAY]
    events = [random_events(rng, 800, 0.1) for _ in delays]
    made = [make_arrivals(e, counter_init, 0) for e in events]
    results = simulate([hw for hw, _ in made], delays, 800 + MAX_DELAY + 4,
                       counter_init=counter_init)
    merged_hw, merged_model = [], []
    for (hw, times), delay, (out, overflow) in zip(made, delays, results):
        want_out, want_drop = expected(times, delay, 16, 0, counter_init)
        assert out == want_out
        assert overflow == want_drop
        merged_hw += [i for i, _ in out]
        merged_model += [t for _, t in want_out]
    # Across channels, events leave in the order of their delayed times.
    order = np.argsort(merged_hw, kind="stable")
    assert list(np.array(merged_model)[order]) == sorted(merged_model)


@pytest.mark.parametrize("delay", [0, 1, 3, 4, 6, 21, MAX_DELAY])
def test_fine_bits_random(delay):
    """F = 2, events at least one cycle (4 bins) apart, so no two share a delayed cycle."""
    rng = random.Random(500 + delay)
    events = random_events(rng, 1200 if delay < MAX_DELAY else 1600, 0.5, fine_bits=2,
                           min_gap=4)
    counter_init = 2**COARSE_BITS - 100
    dropped = check(events, delay, fine_bits=2, counter_init=counter_init)
    if delay >= 21 * 4:
        assert dropped > 0


def test_fine_bits_depth():
    """F = 2: the model's in-flight rule with cycles = t >> F."""
    events = [(10 + i, (3 * i) % 4) for i in range(40)]
    events = [e for k, e in enumerate(events) if k == 0 or e[1] >= events[k - 1][1]]
    for delay in (4 * 16 - 1, 4 * 16, 4 * 16 + 1, 4 * 17 + 2):
        check(events, delay, fine_bits=2, extra=30)


def collision_reference(times, delay, fine_bits):
    """Events kept when two may not share a delayed cycle (the earlier one wins), for a line
    that is never full: the model's collision rule, written independently."""
    kept = []
    for t in times:
        if kept and (t + delay) >> fine_bits == (kept[-1] + delay) >> fine_bits:
            continue
        kept.append(t)
    return kept


def test_fine_bits_collisions():
    """F = 2: events less than 4 bins apart may land in one delayed cycle; the later is dropped
    (``overflow`` in its arrival cycle), the earlier leaves on time."""
    F = 2
    counter_init = 100
    # Hand cases. Event A at fine 3 then B one cycle later at fine 0 (1 bin apart).
    # delay 1: A waits one cycle, B passes through: both due in B's cycle.
    # delay 5: A waits two cycles, B one: both due in the cycle after B.
    for delay, leave in ((1, 21), (5, 22)):
        hw, times = make_arrivals([(20, 3), (21, 0)], counter_init, F)
        [(out, overflow)] = simulate([hw], [delay], 30, fine_bits=F, counter_init=counter_init)
        assert out == [(leave, int(times[0]) + delay)]
        assert overflow == [21]
    # Random, dense, never full: compare with the reference rule above.
    rng = random.Random(8)
    events = random_events(rng, 1500, 0.6, fine_bits=F)
    hw, times = make_arrivals(events, counter_init, F)
    for delay in (1, 2, 5, 7):
        kept = collision_reference(list(times), delay, F)
        assert len(kept) < len(times)
        [(out, overflow)] = simulate([hw], [delay], 1510, fine_bits=F, counter_init=counter_init)
        model_kept, model_dropped = model.delay_events(times, delay, fine_bits=F)
        assert (model_kept - delay).tolist() == kept
        assert model_dropped == len(times) - len(kept)
        assert out == [(int(td >> F) + 2 - counter_init, int(td)) for td in model_kept]
        lost = sorted(set(times.tolist()) - set(kept))
        assert overflow == [(t >> F) + 2 - counter_init for t in lost]


def test_any_age():
    """The stored age rebuilds the time whatever the event's age at arrival (0..15 cycles);
    expected cycles and times come straight from the contract."""
    rng = random.Random(3)
    counter_init = 2**COARSE_BITS - 20
    mask = 2**COARSE_BITS - 1
    for delay in (0, 1, 9, 75):     # 75: 15 events in flight, below depth
        arrivals = {}
        want = []
        for i in range(0, 150, 5):
            age = rng.randrange(16)
            t = counter_init + i - age
            arrivals[i] = t & mask
            want.append((i + delay, (t + delay) & mask))
        [(out, overflow)] = simulate([arrivals], [delay], 160 + delay, counter_init=counter_init)
        assert out == want
        assert overflow == []


def test_clear():
    """``clear`` empties the line: held events never leave; later events are delayed normally."""
    counter_init = 0
    events = [(i, 0) for i in range(5, 25)]         # 20 arrivals, 4 of them dropped (full)
    later = [(i, 0) for i in range(40, 45)]
    hw, _ = make_arrivals(events + later, counter_init, 0)
    [(out, overflow)] = simulate([hw], [30], 90, counter_init=counter_init, clear=[30])
    _, later_times = make_arrivals(later, counter_init, 0)
    want_out, want_drop = expected(later_times, 30, 16, 0, counter_init)
    _, first_times = make_arrivals(events, counter_init, 0)
    _, first_drop = expected(first_times, 30, 16, 0, counter_init)
    assert first_drop == [21, 22, 23, 24]
    assert out == want_out == [(i + 30, i - 2 + 30) for i in range(40, 45)]
    assert overflow == first_drop


def test_passing_event_collides_with_the_head():
    """F = 2, delay 1: an event of fine 3 waits a cycle (k = 1); one of fine 0 in the next cycle
    passes straight through (k = 0) into the same delayed cycle and is dropped: the held one
    leaves then (the line's `o.event` relies on that: a dropped passing event always meets a
    held event due now), with its own time, and one overflow."""
    events = [(10, 3), (11, 0), (20, 3), (21, 1), (30, 2)]
    dropped = check(events, 1, fine_bits=2, extra=10)
    # Delayed bins 4i + fine + 1: 44 and 45 share cycle 11, 84 and 86 cycle 21, 123 is alone.
    assert dropped == 2
