"""InputStage against ``heraldry.model.input_events``.

The PHY is replaced by stimulus on the ``phy`` port (rise/fall pulses, fine positions), so the
edge streams are arbitrary, including a rise and a fall in the same cycle. ``now`` comes from a
free-running counter whose initial value is chosen per test (near the 2**32 wrap for some).
Model times are unbounded; the hardware's are compared modulo ``2**time_bits``.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from heraldry import model
from heraldry.gateware.channel import InputStage
from heraldry.protocol import COARSE_BITS, DEAD_TIME_BITS, Edge, time_bits

EDGE_NAMES = {Edge.NONE: "none", Edge.RISING: "rising", Edge.FALLING: "falling",
              Edge.BOTH: "both"}


class Harness(wiring.Component):
    """InputStage with its ``now`` fed by a free-running counter starting at ``counter_init``."""

    def __init__(self, fine_bits, latency, counter_init):
        self.dut = InputStage(fine_bits, latency)
        super().__init__({"now": wiring.Out(COARSE_BITS, init=counter_init)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        m.d.comb += self.dut.now.eq(self.now)
        m.d.sync += self.now.eq(self.now + 1)
        return m


def simulate(cycles, *, fine_bits=0, latency=1, counter_init=0, enable=True, edge=Edge.RISING,
             dead_time=0, run=None, clear=()):
    """Run the input stage for ``len(cycles)`` cycles.

    ``cycles[i]`` = (rise, rise_fine, fall, fall_fine) presented in cycle i; ``run[i]`` the run
    gate (default always 1); ``clear``: cycles in which the clear strobe is high.
    Returns [(i, time)] of accepted events, i = the cycle in which the PHY reported them.
    """
    n = len(cycles)
    run = [1] * n if run is None else run
    clear = set(clear)
    h = Harness(fine_bits, latency, counter_init)
    dut = h.dut
    out = []

    async def bench(ctx):
        ctx.set(dut.config.enable, enable)
        ctx.set(dut.config.edge, edge)
        ctx.set(dut.config.dead_time, dead_time)
        for i, (rise, rise_fine, fall, fall_fine) in enumerate(cycles):
            ctx.set(dut.phy.rise, rise)
            ctx.set(dut.phy.rise_fine, rise_fine)
            ctx.set(dut.phy.fall, fall)
            ctx.set(dut.phy.fall_fine, fall_fine)
            ctx.set(dut.run, run[i])
            ctx.set(dut.clear, i in clear)
            await ctx.tick()
            # Registered outputs: what the stage made of cycle i's inputs.
            if ctx.get(dut.event):
                out.append((i, ctx.get(dut.time)))

    sim = Simulator(h)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


def edge_times(cycles, counter_init, latency, fine_bits):
    """Unbounded bin times of the rise and fall reports: bin = (now - latency, fine)."""
    rise, fall = [], []
    for i, (r, rf, f, ff) in enumerate(cycles):
        coarse = counter_init + i - latency
        if r:
            rise.append((coarse << fine_bits) + rf)
        if f:
            fall.append((coarse << fine_bits) + ff)
    return np.array(rise, np.int64), np.array(fall, np.int64)


def gate_intervals(run, counter_init, latency, fine_bits):
    """Half-open bin intervals of the edge times that see ``run`` high."""
    intervals = []
    start = None
    for i, level in enumerate(list(run) + [0]):
        if level and start is None:
            start = i
        elif not level and start is not None:
            intervals.append((start, i))
            start = None
    return [((counter_init + a - latency) << fine_bits, (counter_init + b - latency) << fine_bits)
            for a, b in intervals]


def expected_out(model_times, counter_init, latency, fine_bits):
    """[(i, time mod 2**T)]: each accepted event is reported by the PHY in cycle
    ``(t >> F) + latency - counter_init`` and its registered time is ``t``."""
    mask = 2**time_bits(fine_bits) - 1
    return [(int(t >> fine_bits) + latency - counter_init, int(t) & mask) for t in model_times]


def random_cycles(rng, n, p_rise, p_fall, fine_bits=0):
    return [(int(rng.random() < p_rise), rng.randrange(2**fine_bits),
             int(rng.random() < p_fall), rng.randrange(2**fine_bits)) for _ in range(n)]


def check(cycles, *, fine_bits=0, latency=1, counter_init=0, enable=True, edge=Edge.RISING,
          dead_time=0, run=None):
    """Simulate and compare with the model; returns the model's accepted times."""
    out = simulate(cycles, fine_bits=fine_bits, latency=latency, counter_init=counter_init,
                   enable=enable, edge=edge, dead_time=dead_time, run=run)
    rise, fall = edge_times(cycles, counter_init, latency, fine_bits)
    gate = None if run is None else gate_intervals(run, counter_init, latency, fine_bits)
    settings = model.ChannelSettings(enable=enable, edge=EDGE_NAMES[edge], dead_time=dead_time)
    times = model.input_events(rise, fall, settings, gate, fine_bits=fine_bits)
    assert out == expected_out(times, counter_init, latency, fine_bits)
    return times


@pytest.mark.parametrize("edge", list(Edge))
def test_random_edges(edge):
    """Random rise/fall streams (both in one cycle included), each edge mode, gate toggling."""
    rng = random.Random(1000 + edge.value)
    n = 1500
    cycles = random_cycles(rng, n, 0.3, 0.3)
    run = []
    while len(run) < n:
        run += [rng.randrange(2)] * rng.randrange(1, 60)
    times = check(cycles, edge=edge, dead_time=3, run=run[:n])
    if edge != Edge.NONE:
        assert len(times) > 100
    else:
        assert len(times) == 0


@pytest.mark.parametrize("edge", [Edge.RISING, Edge.FALLING, Edge.BOTH])
def test_enable_off(edge):
    rng = random.Random(7)
    cycles = random_cycles(rng, 200, 0.5, 0.5)
    assert check(cycles, edge=edge, enable=False).size == 0
    assert check(cycles, edge=edge, enable=True).size > 50


def test_both_same_cycle():
    """BOTH: a rise and a fall in one cycle make one event (F = 0: same bin)."""
    cycles = [(0, 0, 0, 0)] * 3 + [(1, 0, 1, 0), (0, 0, 1, 0), (1, 0, 0, 0), (1, 0, 1, 0)]
    times = check(cycles, edge=Edge.BOTH, counter_init=100)
    assert list(times) == [102, 103, 104, 105]


@pytest.mark.parametrize("dead_time", [1, 2, 5, 1000])
def test_dead_time_boundaries(dead_time):
    """Gaps of dead - 1, dead and dead + 1 bins; rejected events do not restart the dead time."""
    d = dead_time
    # Accepted at 10; 10 + d - 1 rejected; 10 + d accepted; then + d + 1 accepted; then a
    # rejected event at + 1 and one at exactly d after the accepted one (not after the rejected).
    e0 = 10
    e1 = e0 + d - 1
    e2 = e0 + d
    e3 = e2 + d + 1
    e4 = e3 + 1
    e5 = e3 + d
    events = sorted({e0, e1, e2, e3, e4, e5})
    cycles = [(0, 0, 0, 0)] * (events[-1] + 3)
    for e in events:
        cycles[e] = (1, 0, 0, 0)
    counter_init = 500
    times = check(cycles, dead_time=d, counter_init=counter_init)
    accepted = {e0, e2, e3, e5}
    if d == 1:
        accepted |= {e1, e4}    # gaps of 0 are impossible here: every gap >= d
    assert list(times) == [counter_init + e - 1 for e in sorted(accepted)]


def test_dead_time_zero_accepts_everything():
    cycles = [(1, 0, 0, 0)] * 50
    assert check(cycles, dead_time=0).size == 50


def test_dead_time_gated_events_do_not_restart():
    """Events outside the gate are not accepted and so do not start a dead time."""
    cycles = [(1, 0, 0, 0) if i % 3 == 0 else (0, 0, 0, 0) for i in range(90)]
    run = [int((i // 10) % 2 == 0) for i in range(90)]
    times = check(cycles, dead_time=4, run=run)
    assert len(times) > 5


def test_dead_time_random():
    rng = random.Random(99)
    cycles = random_cycles(rng, 1500, 0.4, 0.2)
    for dead_time in (7, 64):
        check(cycles, edge=Edge.BOTH, dead_time=dead_time)


@pytest.mark.parametrize("latency", [0, 1, 3])
def test_wrap(latency):
    """Counter starting 50 cycles before its wrap: times and dead time across it."""
    rng = random.Random(5 + latency)
    counter_init = 2**COARSE_BITS - 50
    cycles = random_cycles(rng, 120, 0.3, 0.3)
    times = check(cycles, edge=Edge.BOTH, dead_time=3, latency=latency,
                  counter_init=counter_init)
    assert times.min() < 2**COARSE_BITS <= times.max()
    # One event just before the wrap and one just after, exactly dead_time apart: accepted.
    cycles = [(0, 0, 0, 0)] * 80
    cycles[47] = cycles[47 + 5] = cycles[47 + 9] = (1, 0, 0, 0)
    times = check(cycles, dead_time=5, latency=latency, counter_init=counter_init)
    assert list(times - counter_init + latency) == [47, 52]


def test_long_quiet_gap():
    """A gap of 2**(DEAD_TIME_BITS + 1) + 2 bins must not alias into the dead time.

    Catches an implementation that compares only the low bits of the last accepted time without
    noticing that a long silence has passed (it would see a gap of 2 here).
    """
    gap = 2**(DEAD_TIME_BITS + 1) + 1
    dead_time = 2**DEAD_TIME_BITS - 1
    counter_init = 2**COARSE_BITS - 3
    h = Harness(0, 1, counter_init)
    dut = h.dut
    reported = []

    async def bench(ctx):
        ctx.set(dut.config.enable, 1)
        ctx.set(dut.config.edge, Edge.RISING)
        ctx.set(dut.config.dead_time, dead_time)
        ctx.set(dut.run, 1)

        async def pulse():
            ctx.set(dut.phy.rise, 1)
            await ctx.tick()
            ctx.set(dut.phy.rise, 0)
            reported.append((ctx.get(dut.event), ctx.get(dut.time)))

        await pulse()                       # bin counter_init - 1
        await ctx.tick().repeat(gap)
        await pulse()                       # bin counter_init + gap
        await ctx.tick().repeat(2)
        await pulse()                       # bin counter_init + gap + 3: inside the dead time

    sim = Simulator(h)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    rise = [counter_init - 1, counter_init + gap, counter_init + gap + 3]
    times = model.input_events(rise, [], model.ChannelSettings(dead_time=dead_time))
    assert list(times) == rise[:2]
    mask = 2**COARSE_BITS - 1
    assert [(e, t) for e, t in reported if e] == [(1, int(t) & mask) for t in times]
    assert len(reported) == 3 and reported[2][0] == 0


def test_clear_forgets_last():
    """After ``clear`` the first event is accepted even inside the previous dead time."""
    cycles = [(0, 0, 0, 0)] * 40
    for i in (5, 8, 12, 20, 22):
        cycles[i] = (1, 0, 0, 0)
    run = [1] * 40
    run[10] = run[11] = 0   # the core clears only while stopped
    out = simulate(cycles, dead_time=10, run=run, clear=[11], counter_init=0)
    # Model: the run before the clear and the run after it are independent.
    before = model.input_events([4, 7], [], model.ChannelSettings(dead_time=10))
    after = model.input_events([11, 19, 21], [], model.ChannelSettings(dead_time=10))
    assert [t for _, t in out] == list(before) + list(after) == [4, 11, 21]


@pytest.mark.parametrize("edge", [Edge.RISING, Edge.BOTH])
def test_fine_bits(edge):
    """F = 2: fine positions in the timestamp, earliest edge of a cycle wins (rise on a tie)."""
    rng = random.Random(31 + edge.value)
    cycles = random_cycles(rng, 800, 0.4, 0.4, fine_bits=2)
    check(cycles, fine_bits=2, edge=edge, dead_time=9, counter_init=2**COARSE_BITS - 40)
    # Hand cases: a tie, a fall before a rise, a rise before a fall, a fall alone.
    cycles = [(1, 2, 1, 2), (1, 3, 1, 1), (1, 0, 1, 3), (0, 0, 1, 0)]
    times = check(cycles, fine_bits=2, edge=edge, counter_init=10)
    if edge == Edge.BOTH:
        assert list(times) == [4 * 9 + 2, 4 * 10 + 1, 4 * 11 + 0, 4 * 12 + 0]
    else:
        assert list(times) == [4 * 9 + 2, 4 * 10 + 3, 4 * 11 + 0]
