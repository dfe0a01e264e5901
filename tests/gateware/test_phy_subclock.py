# amaranth: UnusedElaboratable=no
"""Sub-clock PHYs (iCE40 DDR, ECP5 gearbox) in their simulation models, against the model, and
the iCE40 PHY through the real toolchain (the ECP5 one is built in ``tests/test_ulx3s.py``).

The pin is described by its level at every sample instant (``2**F`` per clock cycle). The
expected edge bins come from that level sequence alone, using the bin definition of
``gateware/phy.py``: the sample word set before clock edge ``k`` is taken at edge ``k`` and the
following sub-clock instants, so its sample ``j`` has bin ``(now after edge k) * 2**F + j``.
PHY + InputStage run in the Amaranth simulator; accepted events are compared with
``heraldry.model.input_events`` (which applies the one-event-per-cycle rule and dead time), both
their times and the cycle in which they leave the input stage (which checks the declared
``latency``).
"""

import random

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import (Cat, ClockDomain, ClockSignal, Const, Elaboratable, Instance, IOPort,
                          Module, Signal)
from amaranth.lib import io, wiring
from amaranth.sim import Simulator

from heraldry import model
from heraldry.boards.build import parse_nextpnr, tool_env
from heraldry.boards.icebreaker import HeraldryICEBreakerPlatform, ice40_pll_params
from heraldry.gateware.channel import InputStage
from heraldry.gateware.core import TaggerCore
from heraldry.gateware.phy_ecp5 import ECP5GearboxPHY
from heraldry.gateware.phy import WordEdges
from heraldry.gateware.phy_ice40 import ICE40DDRPHY
from heraldry.protocol import COARSE_BITS, Edge, Kind, Source, time_bits

PHYS = [ICE40DDRPHY, ECP5GearboxPHY]
EDGE_NAMES = {Edge.RISING: "rising", Edge.FALLING: "falling", Edge.BOTH: "both"}


class Harness(wiring.Component):
    """A PHY in simulation mode feeding an InputStage, ``now`` from a free-running counter."""

    def __init__(self, phy_cls, counter_init):
        self.phy = phy_cls(sim=True)
        self.stage = InputStage(phy_cls.fine_bits, phy_cls.latency)
        super().__init__({"now": wiring.Out(COARSE_BITS, init=counter_init)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.phy = self.phy
        m.submodules.stage = self.stage
        wiring.connect(m, self.phy.phy, self.stage.phy)
        m.d.comb += [self.stage.now.eq(self.now), self.stage.run.eq(1)]
        m.d.sync += self.now.eq(self.now + 1)
        return m


def words_of(levels, fine_bits):
    """Pack per-sample pin levels into per-cycle sample words (bit 0 the earliest)."""
    width = 2 ** fine_bits
    assert len(levels) % width == 0
    return [sum(levels[i + j] << j for j in range(width)) for i in range(0, len(levels), width)]


def sample_edges(levels, offset):
    """Rise and fall bins of a level sequence (pin low before it), ``offset`` added."""
    rise, fall = [], []
    previous = 0
    for b, level in enumerate(levels):
        if level and not previous:
            rise.append(b + offset)
        if previous and not level:
            fall.append(b + offset)
        previous = level
    return np.array(rise, np.int64), np.array(fall, np.int64)


def levels_from_edges(edges, n_samples):
    """Pin levels of ``n_samples`` samples that toggle at each of the sorted sample indices."""
    levels, level, k = [], 0, 0
    for b in range(n_samples):
        while k < len(edges) and edges[k] == b:
            level ^= 1
            k += 1
        levels.append(level)
    return levels


def run(phy_cls, levels, *, edge=Edge.RISING, dead_time=0, counter_init=0):
    """Simulate; returns (reports, events): per-cycle PHY reports and [(cycle, time)] accepted.

    Word ``i`` is set before clock edge ``i``; ``cycle`` of an event is the edge after which the
    input stage's registered output shows it.
    """
    h = Harness(phy_cls, counter_init)
    words = words_of(levels, phy_cls.fine_bits)
    reports, events = [], []
    # Flush with the last level held, so the flush itself makes no edge.
    hold = (2 ** 2 ** phy_cls.fine_bits - 1) * levels[-1]

    async def bench(ctx):
        ctx.set(h.stage.config.enable, 1)
        ctx.set(h.stage.config.edge, edge)
        ctx.set(h.stage.config.dead_time, dead_time)
        for i in range(len(words) + 3):
            ctx.set(h.phy.samples, words[i] if i < len(words) else hold)
            await ctx.tick()
            reports.append((ctx.get(h.phy.phy.rise), ctx.get(h.phy.phy.rise_fine),
                            ctx.get(h.phy.phy.fall), ctx.get(h.phy.phy.fall_fine)))
            if ctx.get(h.stage.event):
                events.append((i, ctx.get(h.stage.time)))

    sim = Simulator(h)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return reports, events


def check(phy_cls, levels, *, edge=Edge.RISING, dead_time=0, counter_init=0):
    """Simulate and compare accepted events with the model; returns the model's times."""
    f = phy_cls.fine_bits
    # The word set before edge i has now = counter_init + i + 1 after that edge.
    rise, fall = sample_edges(levels, (counter_init + 1) << f)
    ch = model.ChannelSettings(edge=EDGE_NAMES[edge], dead_time=dead_time)
    expected_times = model.input_events(rise, fall, ch, fine_bits=f)
    # Reported `latency` cycles after the bin's cycle, registered by the input stage one later.
    mask = 2 ** time_bits(f) - 1
    expected = [(int(t >> f) - (counter_init + 1) + phy_cls.latency + 1, int(t) & mask)
                for t in expected_times]
    _, events = run(phy_cls, levels, edge=edge, dead_time=dead_time, counter_init=counter_init)
    assert events == expected
    return expected_times


def first_edges(levels, fine_bits):
    """Independent per-word first-edge encoding: [(rise, rise_fine, fall, fall_fine)]."""
    width = 2 ** fine_bits
    out, previous = [], 0
    for i in range(0, len(levels), width):
        rise = fall = None
        for j in range(width):
            level = levels[i + j]
            if level and not previous and rise is None:
                rise = j
            if previous and not level and fall is None:
                fall = j
            previous = level
        out.append((int(rise is not None), rise or 0, int(fall is not None), fall or 0))
    return out


@pytest.mark.parametrize("phy_cls", PHYS)
def test_reports_match_first_edges(phy_cls):
    """Per-cycle PHY outputs: first rise/fall per word, reported `latency` cycles later."""
    f = phy_cls.fine_bits
    rng = random.Random(11 + f)
    levels = [int(rng.random() < 0.5) for _ in range(400 * 2 ** f)]
    reports, _ = run(phy_cls, levels)
    expected = first_edges(levels, f)
    # Word i is registered by the model at edge i, by the fabric at i + 1: visible after i + 1.
    lag = phy_cls.latency
    assert reports[lag:lag + len(expected)] == expected
    assert any(r[0] and r[2] for r in expected)   # a rise and a fall in one word occurred
    assert all(r == (0, 0, 0, 0) for r in reports[:lag])


@pytest.mark.parametrize("phy_cls", PHYS)
def test_boundary_cases(phy_cls):
    """Hand-written words: edges at word boundaries, sub-cycle pulses, several edges per word."""
    f = phy_cls.fine_bits
    w = 2 ** f
    quiet = [0] * (2 * w)
    cases = [
        [1] * w + [0] * w,                            # rise at fine 0, fall at next fine 0
        [0] * (w - 1) + [1] + [0] + [0] * (w - 1),    # 1-bin pulse across a word boundary
        [0] * (w - 1) + [1] + [1] * w + [0] * w,      # rise at last fine, long pulse
        [0, 1] + [0] * (w - 2),                       # 1-bin pulse inside one word
        ([0, 1, 0, 1] if w == 4 else [1, 0]) + [0] * w,   # several edges in one word
        [1, 0] * w,                                   # an edge at every sample
    ]
    levels = []
    for case in cases:
        levels += case + quiet
    for edge in (Edge.RISING, Edge.FALLING, Edge.BOTH):
        times = check(phy_cls, levels, edge=edge)
        assert len(times) > 0


@pytest.mark.parametrize("phy_cls", PHYS)
@pytest.mark.parametrize("edge", [Edge.RISING, Edge.FALLING, Edge.BOTH])
def test_random_edges(phy_cls, edge):
    """Random edge positions (dense enough for several per word), random dead time."""
    f = phy_cls.fine_bits
    rng = random.Random(1000 * f + int(edge.value))
    n_samples = 1500 * 2 ** f
    edges = sorted(rng.sample(range(n_samples), n_samples // 3))
    levels = levels_from_edges(edges, n_samples)
    for dead_time in (0, rng.randrange(1, 3 * 2 ** f)):
        times = check(phy_cls, levels, edge=edge, dead_time=dead_time)
        assert len(times) > 100


@pytest.mark.parametrize("phy_cls", PHYS)
def test_counter_wrap(phy_cls):
    """Times modulo 2**time_bits across the coarse counter's wrap."""
    f = phy_cls.fine_bits
    rng = random.Random(7 + f)
    levels = [int(rng.random() < 0.4) for _ in range(60 * 2 ** f)]
    times = check(phy_cls, levels, edge=Edge.BOTH, counter_init=2 ** COARSE_BITS - 20)
    assert times[0] < 2 ** time_bits(f) <= times[-1]


def test_word_edges_needs_fine_bits():
    with pytest.raises(ValueError):
        WordEdges(0)


@pytest.mark.parametrize("phy_cls,primitive,needle", [
    (ICE40DDRPHY, "SB_IO", "PIN_TYPE 6'000000"),
    (ECP5GearboxPHY, "IDDRX2F", "ECLK"),
])
def test_hardware_primitive(phy_cls, primitive, needle):
    """Without ``sim`` the PHY instantiates the vendor primitive on the raw pin."""
    with pytest.raises(ValueError):
        phy_cls()
    phy = phy_cls(IOPort(1, name="pin"))
    assert not hasattr(phy, "samples")
    text = rtlil.convert(phy, ports=None)
    assert f"cell \\{primitive}" in text
    assert needle in text


def test_core_with_prebuilt_phys():
    """TaggerCore(phys=...): the core uses the given PHYs; a TAG's time is the edge's bin."""
    phys = [ECP5GearboxPHY(sim=True) for _ in range(2)]
    core = TaggerCore(2, 1, phys=phys)
    assert core.fine_bits == 2 and core.latency == ECP5GearboxPHY.latency + TaggerCore.PIPELINE
    with pytest.raises(ValueError):
        TaggerCore(2, 1, phys=phys[:1])
    with pytest.raises(ValueError):
        TaggerCore(2, 1, phys=[phys[0], ICE40DDRPHY(sim=True)])

    # Channel 0 rises at sample 2 of word 5, channel 1 at sample 0 of word 7; both stay high.
    first = {0: (5, 2), 1: (7, 0)}
    expected = {}
    tags = []

    async def bench(ctx):
        for c in range(2):
            ctx.set(core.config.channel[c].enable, 1)
            ctx.set(core.config.channel[c].edge, Edge.RISING)
            ctx.set(core.config.channel[c].source, Source.PIN)
        ctx.set(core.config.window, 1)
        ctx.set(core.config.herald_width, 1)
        ctx.set(core.records.ready, 1)
        ctx.set(core.run, 1)
        for i in range(40):
            for c, (word, fine) in first.items():
                ctx.set(phys[c].samples, 0 if i < word else 0b1111 << fine if i == word else 15)
            await ctx.tick()
            for c, (word, fine) in first.items():
                if i == word:
                    expected[c] = (ctx.get(core.now) << 2) + fine
            if ctx.get(core.records.valid):
                record = ctx.get(core.records.payload)
                if record.kind == Kind.TAG:
                    tags.append((int(record.payload.tag.channel), int(record.time)))

    sim = Simulator(core)
    sim.add_clock(5e-9)
    sim.add_testbench(bench)
    sim.run()
    assert tags == sorted(expected.items(), key=lambda item: item[1])


class ICE40Probe(Elaboratable):
    """iCEBreaker: PLL to ``clock_hz``, one ICE40DDRPHY per detector pin, reports registered
    (as the input stage does) and folded into one register driving an LED."""

    def __init__(self, channels, clock_hz):
        self.channels = channels
        self.clock_hz = clock_hz

    def elaborate(self, platform):
        m = Module()
        pll = ice40_pll_params(int(platform.default_clk_frequency), self.clock_hz)
        m.domains.sync = ClockDomain("sync")
        clk = Signal(name="pll_clk")
        m.submodules.pll = Instance(
            "SB_PLL40_PAD", p_FEEDBACK_PATH="SIMPLE",
            p_DIVR=pll["DIVR"], p_DIVF=pll["DIVF"], p_DIVQ=pll["DIVQ"],
            p_FILTER_RANGE=pll["FILTER_RANGE"],
            i_PACKAGEPIN=platform.request(platform.default_clk, dir="-").io,
            i_RESETB=Const(1), i_BYPASS=Const(0), o_PLLOUTGLOBAL=clk)
        # No explicit constraint: nextpnr derives it from the 12 MHz pin through the PLL (one
        # on `clk` is dropped with "net does not exist" once synthesis renames it).
        m.d.comb += ClockSignal("sync").eq(clk)
        fold = Signal(2)
        value = fold
        for c in range(self.channels):
            phy = ICE40DDRPHY(platform.request("det", c, dir="-").io)
            m.submodules[f"phy{c}"] = phy
            report = Signal(2, name=f"report{c}")
            m.d.sync += report.eq(Cat(phy.phy.rise_fine ^ phy.phy.fall_fine,
                                      phy.phy.rise ^ phy.phy.fall))
            value = value ^ report
        m.d.sync += fold.eq(value)
        m.submodules.led = led = io.Buffer("o", platform.request("led_g", 0, dir="-"))
        m.d.comb += led.o.eq(fold.xor())
        return m


@pytest.mark.slow
def test_ice40_build(tmp_path):
    """Full iCE40 toolchain run: four SB_IO DDR PHYs at 96 MHz (5.2 ns bins) place, route, meet
    timing (no --timing-allow-fail: nextpnr fails otherwise) and pack."""
    plan = HeraldryICEBreakerPlatform().prepare(ICE40Probe(4, 96_000_000), name="probe",
                                                nextpnr_opts="--report probe.report.json")
    plan.execute_local(str(tmp_path), env=tool_env())
    clocks, resources = parse_nextpnr(tmp_path / "probe.report.json")
    (sync,) = clocks.values()
    assert sync["target_mhz"] == pytest.approx(96, abs=0.01)
    assert sync["achieved_mhz"] >= sync["target_mhz"]
    assert resources["SB_IO"]["used"] >= 4 + 1   # detector pins (DDR) + LED
    assert (tmp_path / "probe.bin").stat().st_size > 0
