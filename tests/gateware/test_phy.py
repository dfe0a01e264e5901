"""GenericPHY: edges driven at times not aligned to the clock, latency measured.

The expected bins come from the definition in docs/architecture.md, computed here from the pin
waveform alone: an edge's bin is the value of ``now`` in the cycle after the first rising clock
edge that samples the pin in its new state.
"""

import math
import random

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Shape
from amaranth.lib import wiring
from amaranth.sim import Simulator

from heraldry.gateware.phy import GenericPHY, PHYSignature
from heraldry.protocol import COARSE_BITS

PERIOD = 10e-9


class Harness(wiring.Component):
    """GenericPHY plus a free-running coarse counter ``now`` (as in the core)."""

    def __init__(self, counter_init=0):
        self.counter_init = counter_init
        self.dut = GenericPHY()
        super().__init__({
            "pin": wiring.In(1),
            "now": wiring.Out(COARSE_BITS, init=counter_init),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        m.d.comb += self.dut.pin.eq(self.pin)
        m.d.sync += self.now.eq(self.now + 1)
        return m


def sampled_edges(transitions, cycles):
    """Rising/falling edges of the pin as seen by clock edges 1..cycles (edge 0 = reference).

    ``transitions``: (time in cycles after edge 0, level), times not integers, pin low before.
    Returns two lists of edge indices n: the first clock edge sampling the pin high (low).
    """
    rises, falls = [], []
    previous = 0
    for n in range(1, cycles + 1):
        level = 0
        for x, value in transitions:
            if x < n:
                level = value
        if level and not previous:
            rises.append(n)
        if previous and not level:
            falls.append(n)
        previous = level
    return rises, falls


def run_phy(transitions, cycles, counter_init=0):
    """Drive the pin with ``transitions``; return (expected rise/fall bins, reported cycles)."""
    h = Harness(counter_init)
    reported = {"rise": [], "fall": []}
    reference = {}

    async def driver(ctx):
        await ctx.tick()
        # Now exactly at clock edge 0: `now` holds the value of the cycle after it.
        reference["now"] = ctx.get(h.now)
        t = 0.0
        for x, level in transitions:
            await ctx.delay((x - t) * PERIOD)
            t = x
            ctx.set(h.pin, level)

    async def monitor(ctx):
        for _ in range(cycles + 4):
            await ctx.tick()
            now = ctx.get(h.now)
            if ctx.get(h.dut.phy.rise):
                reported["rise"].append(now)
            if ctx.get(h.dut.phy.fall):
                reported["fall"].append(now)
            # Invariant of the generic PHY: one sampled level, so never both in one cycle.
            assert not (ctx.get(h.dut.phy.rise) and ctx.get(h.dut.phy.fall))

    sim = Simulator(h)
    sim.add_clock(PERIOD)
    sim.add_testbench(driver)
    sim.add_testbench(monitor)
    sim.run()

    rises, falls = sampled_edges(transitions, cycles)
    mask = 2**COARSE_BITS - 1
    # Bin of an edge first sampled at clock edge n: `now` in the cycle after edge n.
    expected = {
        "rise": [(reference["now"] + n) & mask for n in rises],
        "fall": [(reference["now"] + n) & mask for n in falls],
    }
    return expected, reported, reference["now"]


def latencies(expected, reported):
    """Cycles between each edge's bin and its report (mod 2**32), after matching them in order."""
    assert len(reported) == len(expected)
    return {(r - e) % 2**COARSE_BITS for e, r in zip(expected, reported)}


def test_signature():
    phy = GenericPHY()
    assert phy.fine_bits == 0
    assert phy.signature.members["phy"].signature == PHYSignature(0)
    # The herald budget in docs/architecture.md (flop 1 at edge k, flop 2 at k + 1, input-stage
    # register at k + 2) needs the report one cycle after the bin's cycle.
    assert phy.latency == 1
    rtlil.convert(phy)      # elaborates and converts (what a board build will do)
    sig = PHYSignature(3)
    assert Shape.cast(sig.members["rise_fine"].shape).width == 3
    assert Shape.cast(sig.members["fall_fine"].shape).width == 3
    assert PHYSignature(3) == PHYSignature(3) and PHYSignature(3) != PHYSignature(2)
    with pytest.raises(TypeError):
        PHYSignature(-1)


@pytest.mark.parametrize("frac", [0.05, 0.3, 0.5, 0.7, 0.95])
def test_single_pulse_latency(frac):
    """One pulse, rising at a fraction of a cycle after a clock edge; latency is declared."""
    transitions = [(3 + frac, 1), (8 + frac, 0)]
    expected, reported, ref = run_phy(transitions, 16)
    # Spelled out: the pin rises between clock edges 3 and 4, so edge 4 samples it first and its
    # bin is now-after-edge-0 + 4; it falls between edges 8 and 9: bin + 9.
    assert expected == {"rise": [ref + 4], "fall": [ref + 9]}
    assert latencies(expected["rise"], reported["rise"]) == {GenericPHY.latency}
    assert latencies(expected["fall"], reported["fall"]) == {GenericPHY.latency}


@pytest.mark.parametrize("width", [1, 2, 3])
def test_pulse_widths(width):
    """Pulses spanning 1..3 sampling edges give a rise and a fall ``width`` cycles apart."""
    transitions = []
    x = 2.0
    for frac_rise, frac_fall in [(0.2, 0.1), (0.5, 0.6), (0.9, 0.85), (0.15, 0.95)]:
        rise = x + frac_rise
        # Sampling edges inside (rise, fall): ceil(rise) .. ceil(fall) - 1.
        fall = math.ceil(rise) + width - 1 + frac_fall
        transitions += [(rise, 1), (fall, 0)]
        x = math.ceil(fall) + 2
    expected, reported, _ = run_phy(transitions, int(x) + 2)
    assert len(reported["rise"]) == 4
    assert latencies(expected["rise"], reported["rise"]) == {GenericPHY.latency}
    assert latencies(expected["fall"], reported["fall"]) == {GenericPHY.latency}
    assert [f - r for r, f in zip(reported["rise"], reported["fall"])] == [width] * 4


def test_short_pulses():
    """A pulse between two clock edges is not seen; one straddling an edge is one cycle long."""
    transitions = [(3.2, 1), (3.8, 0),      # no sampling edge inside: lost
                   (6.7, 1), (7.1, 0)]      # edge 7 samples it high
    expected, reported, _ = run_phy(transitions, 12)
    assert len(expected["rise"]) == 1 and len(reported["rise"]) == 1
    assert latencies(expected["rise"], reported["rise"]) == {GenericPHY.latency}
    assert latencies(expected["fall"], reported["fall"]) == {GenericPHY.latency}
    assert reported["fall"][0] - reported["rise"][0] == 1


def test_random_unaligned():
    """Random pin waveform (fixed seed), transitions at arbitrary sub-cycle times."""
    rng = random.Random(20240611)
    transitions = []
    x = 1.0
    level = 0
    while x < 300:
        x += rng.uniform(0.02, 3.5)
        if abs(x - round(x)) < 0.01:      # keep transitions unambiguously between clock edges
            continue
        level ^= 1
        transitions.append((x, level))
    if level:
        transitions.append((x + 1.5, 0))
    cycles = int(x) + 4
    expected, reported, _ = run_phy(transitions, cycles)
    assert len(expected["rise"]) > 40
    assert latencies(expected["rise"], reported["rise"]) == {GenericPHY.latency}
    assert latencies(expected["fall"], reported["fall"]) == {GenericPHY.latency}


def test_counter_wrap():
    """Bins are the coarse counter's values; a pulse across its wrap is reported normally."""
    transitions = [(4.4, 1), (6.6, 0), (9.5, 1), (10.2, 0)]
    expected, reported, _ = run_phy(transitions, 14, counter_init=2**COARSE_BITS - 8)
    assert any(b > 2**COARSE_BITS - 8 for b in expected["rise"])
    assert any(b < 8 for b in expected["rise"] + expected["fall"])
    assert latencies(expected["rise"], reported["rise"]) == {GenericPHY.latency}
    assert latencies(expected["fall"], reported["fall"]) == {GenericPHY.latency}
