# amaranth: UnusedElaboratable=no
"""Two-clock input paths: the word gearbox alone, and the board input blocks (iCE40 DDR at twice
the core clock, ECP5 gearboxes at four times it) through input stages against the model.

Both clocks run in the Amaranth simulator: ``fast`` with period T and ``sync`` with period R*T.
Aligned crossings (iCE40) get coinciding rising edges; elastic ones (ECP5) are run at several
phases of ``sync`` against ``fast``, since the real phase is unknown.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.sim import Simulator

from heraldry import model
from heraldry.gateware.channel import InputStage
from heraldry.gateware.core import TaggerCore
from heraldry.gateware.gearbox import WordGearbox
from heraldry.gateware.phy import WordEdges
from heraldry.gateware.phy_ecp5 import ECP5GearboxInputs
from heraldry.gateware.phy_ice40 import ICE40DDRInputs
from heraldry.protocol import COARSE_BITS, Edge, time_bits

T = 1e-8   # the fast clock's period in the simulator (any value)
EDGE_NAMES = {Edge.RISING: "rising", Edge.FALLING: "falling", Edge.BOTH: "both"}


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


def add_clocks(sim, ratio, fast, phase):
    """``fast`` rises at T/2 + kT; ``sync`` at T/2 + phase*T + k*R*T (phase in fast periods)."""
    sim.add_clock(T, phase=T / 2, domain=fast)
    sim.add_clock(ratio * T, phase=T / 2 + phase * T, domain="sync")


def run_gearbox(width, ratio, words, *, elastic, phase=0.0, lanes=1):
    """Feed ``words`` (one per fast cycle, from a fast register); returns ``o`` after every
    ``sync`` edge while ``running``."""
    dut = WordGearbox(width, ratio, fast="fast", elastic=elastic, lanes=lanes)
    m = Module()
    m.submodules.dut = dut
    source = Signal(width)
    feed = Signal(width)
    m.d.fast += source.eq(feed)
    m.d.comb += dut.i.eq(source)
    outputs = []

    async def driver(ctx):
        for word in words:
            ctx.set(feed, word)
            await ctx.tick("fast")

    async def watcher(ctx):
        for _ in range(len(words) // ratio):
            await ctx.tick("sync")
            if ctx.get(dut.running):
                outputs.append(ctx.get(dut.o))

    sim = Simulator(m)
    add_clocks(sim, ratio, "fast", phase)
    sim.add_testbench(driver)
    sim.add_testbench(watcher)
    sim.run()
    return outputs


def groups(words, width, ratio, start):
    """Consecutive groups of ``ratio`` words from index ``start``, the earliest lowest."""
    out = []
    for g in range(start, len(words) - ratio + 1, ratio):
        out.append(sum(words[g + j] << (j * width) for j in range(ratio)))
    return out


@pytest.mark.parametrize("ratio", [2, 4])
def test_aligned_gearbox_groups_the_words_before_each_edge(ratio):
    rng = random.Random(ratio)
    width = 3
    words = [rng.randrange(2 ** width) for _ in range(400)]
    outputs = run_gearbox(width, ratio, words, elastic=False)
    # `source` holds words[j] from fast edge j to edge j + 1; sync edge K (fast edge R*K)
    # captures the values of the R fast cycles before it: words R*(K-1) .. R*K - 1.
    expected = [0] + groups(words, width, ratio, 0)
    n = min(len(outputs), len(expected))
    assert n > 90
    assert outputs[:n] == expected[:n]


@pytest.mark.parametrize("phase,width,lanes", [(0.0, 5, 1), (0.25, 5, 1), (0.5, 5, 1),
                                               (1.0, 5, 1), (1.5, 5, 1), (2.75, 5, 1),
                                               (3.0, 5, 1), (3.5, 5, 1),
                                               (0.5, 6, 3), (2.75, 6, 6)])
def test_elastic_gearbox_keeps_every_word_at_any_phase(phase, width, lanes):
    """Whatever the phase: consecutive groups, none lost or repeated, one fixed start. With
    ``lanes``, each share of the word written through its own enable copy (the ULX3S: one per
    channel)."""
    rng = random.Random(int(phase * 4))
    ratio = 4
    words = [rng.randrange(1, 2 ** width) for _ in range(800)]   # never 0: a gap would show
    outputs = run_gearbox(width, ratio, words, elastic=True, phase=phase, lanes=lanes)
    assert len(outputs) > 150
    padded = [0] + words   # `source` is 0 during the first fast cycle
    starts = [s for s in range(ratio) if groups(padded, width, ratio, s)[:len(outputs)]
              == outputs]
    assert len(starts) == 1, "the output is not one run of consecutive groups"


def run_gearbox_relock(width, ratio, words, *, phase, lost_at, lost_for):
    """As the ULX3S runs the elastic gearbox: both domains held in reset while the PLL is not
    locked, each released by its own :class:`ResetSynchronizer` (so at different times); the
    lock is lost for ``lost_for`` fast cycles from fast cycle ``lost_at``. The source register
    is not reset (as the ``IDDRX2F`` outputs are not). Returns the runs of ``o`` (one list per
    stretch of ``running``)."""
    dut = WordGearbox(width, ratio, fast="fast", elastic=True)
    m = Module()
    m.domains.fast = ClockDomain("fast")
    m.domains.sync = ClockDomain("sync")
    m.submodules.dut = dut
    locked = Signal()
    m.submodules.reset_fast = ResetSynchronizer(~locked, domain="fast")
    m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")
    source = Signal(width, reset_less=True)
    feed = Signal(width)
    m.d.fast += source.eq(feed)
    m.d.comb += dut.i.eq(source)
    runs = [[]]

    async def driver(ctx):
        for k, word in enumerate(words):
            ctx.set(feed, word)
            ctx.set(locked, not (k < 3 or lost_at <= k < lost_at + lost_for))
            await ctx.tick("fast")

    async def watcher(ctx):
        for _ in range(len(words) // ratio):
            await ctx.tick("sync")
            if ctx.get(dut.running):
                runs[-1].append(ctx.get(dut.o))
            elif runs[-1]:
                runs.append([])

    sim = Simulator(m)
    add_clocks(sim, ratio, "fast", phase)
    sim.add_testbench(driver)
    sim.add_testbench(watcher)
    sim.run()
    return [run for run in runs if run]


@pytest.mark.parametrize("phase", [0.0, 0.75, 1.5, 2.25, 3.0, 3.75])
@pytest.mark.parametrize("lost_for", [1, 6, 40])
def test_elastic_gearbox_never_reads_a_slot_before_writing_it(phase, lost_for):
    """The ring's slots have no reset (a reset to the ULX3S's 128-bit slots at 8 channels was
    ``sclk``'s critical path): that is only right if the read side never reads a slot the
    write side has not written since the last reset. After the PLL loses its lock mid-run and
    the two domains leave reset at different times, the slots still hold the words of before;
    every run of the output must be consecutive groups of the words fed, none repeated from
    before the reset."""
    rng = random.Random(int(phase * 4) + 100 * lost_for)
    width, ratio = 8, 4
    words = [rng.randrange(1, 2 ** width) for _ in range(1200)]
    runs = run_gearbox_relock(width, ratio, words, phase=phase, lost_at=600, lost_for=lost_for)
    assert len(runs) == 2, "the lost lock must stop the output once and restart it"
    starts = []
    for run in runs:
        assert len(run) > 100
        found = [s for s in range(len(words))
                 if groups(words, width, ratio, s)[:len(run)] == run]
        assert len(found) == 1, "an output run is not consecutive groups of the words fed"
        starts += found
    assert starts[0] < 2 * ratio
    assert starts[1] >= 600, "the output after the reset repeats words from before it"


def test_word_edges_needs_fine_bits():
    with pytest.raises(ValueError):
        WordEdges(0)


def test_core_takes_prebuilt_phys():
    """TaggerCore(phys=...) as the boards use it (the input blocks' per-channel ``WordEdges``,
    each given its block's latency): fine bits and latency come from the PHYs; a wrong count,
    or PHYs that disagree, are refused."""
    phys = [WordEdges(4) for _ in range(2)]
    for phy in phys:
        phy.latency = 5
    core = TaggerCore(2, 1, phys=phys, test_signal=False)
    assert core.fine_bits == 4 and core.latency == 5 + TaggerCore.PIPELINE
    with pytest.raises(ValueError, match="phys must hold 2 PHYs, not 1"):
        TaggerCore(2, 1, phys=phys[:1])
    other = WordEdges(2)
    other.latency = 5
    with pytest.raises(ValueError, match="same fine_bits and latency"):
        TaggerCore(2, 1, phys=[phys[0], other])


def test_gearbox_rejects_bad_parameters():
    with pytest.raises(ValueError):
        WordGearbox(4, 1)
    with pytest.raises(ValueError):
        WordGearbox(4, 4, elastic=True, depth=6)
    with pytest.raises(ValueError, match="lanes"):
        WordGearbox(6, 4, elastic=True, lanes=4)


class InputsHarness(wiring.Component):
    """A board input block feeding one input stage per channel, ``now`` counting in ``sync``."""

    def __init__(self, inputs):
        self.inputs = inputs
        self.stages = [InputStage(inputs.fine_bits, inputs.latency) for _ in inputs.phys]
        super().__init__({"now": wiring.Out(COARSE_BITS)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.inputs = self.inputs
        for c, (phy, stage) in enumerate(zip(self.inputs.phys, self.stages)):
            m.submodules[f"phy{c}"] = phy
            m.submodules[f"stage{c}"] = stage
            wiring.connect(m, phy.phy, stage.phy)
            m.d.comb += [stage.now.eq(self.now), stage.run.eq(1)]
        m.d.sync += self.now.eq(self.now + 1)
        return m


def run_inputs(inputs, ratio, levels, *, edge, dead_time, phase=0.0):
    """``levels[c]``: channel c's pin level at every sample instant (``2**Fp`` per fast cycle).
    Returns per channel the accepted events as ``[(sync cycle, time)]``."""
    h = InputsHarness(inputs)
    per_fast = 2 ** inputs.sample_bits
    n_fast = len(levels[0]) // per_fast
    events = [[] for _ in levels]

    async def driver(ctx):
        for j in range(n_fast + 8 * ratio):
            word = 0
            for c, lv in enumerate(levels):
                for s in range(per_fast):
                    k = min(j * per_fast + s, len(lv) - 1)   # hold the last level: no edge
                    word |= lv[k] << (c * per_fast + s)
            ctx.set(inputs.samples, word)
            await ctx.tick(inputs.fast)

    async def watcher(ctx):
        for stage in h.stages:
            ctx.set(stage.config.enable, 1)
            ctx.set(stage.config.edge, edge)
            ctx.set(stage.config.dead_time, dead_time)
        for i in range(n_fast // ratio + 6):
            await ctx.tick("sync")
            for c, stage in enumerate(h.stages):
                if ctx.get(stage.event):
                    events[c].append((i, ctx.get(stage.time)))

    sim = Simulator(h)
    add_clocks(sim, ratio, inputs.fast, phase)
    sim.add_testbench(driver)
    sim.add_testbench(watcher)
    sim.run()
    return events


def random_levels(rng, n_samples, density):
    # Quiet for the first 256 samples: the elastic crossing delivers nothing before it starts.
    edges = sorted(rng.sample(range(256, n_samples - 64), int(n_samples * density)))
    return levels_from_edges(edges, n_samples)


def expected_times(levels, fine_bits, edge, dead_time):
    rise, fall = sample_edges(levels, 0)
    ch = model.ChannelSettings(edge=EDGE_NAMES[edge], dead_time=dead_time)
    return model.input_events(rise, fall, ch, fine_bits=fine_bits)


@pytest.mark.parametrize("edge", [Edge.RISING, Edge.FALLING, Edge.BOTH])
def test_ice40_ddr_inputs_match_the_model_exactly(edge):
    """Aligned: every time is the model's bin, plus the one fixed offset of the bin definition,
    and each event leaves the input stage ``latency + 1`` cycles after its bin's cycle."""
    rng = random.Random(40 + int(edge.value))
    inputs = ICE40DDRInputs(channels=2, sim=True)
    f = inputs.fine_bits
    assert f == 2
    n_samples = 2 * 1200
    levels = [random_levels(rng, n_samples, 0.25) for _ in range(2)]
    for dead_time in (0, rng.randrange(1, 12)):
        events = run_inputs(inputs, 2, levels, edge=edge, dead_time=dead_time)
        for c in range(2):
            # Sample b is taken in fast cycle b // 2: sync cycle b // 4 in the bin definition;
            # the bin's `now` is the sync cycle after the edge that starts its group: + 4 bins.
            times = expected_times(levels[c], f, edge, dead_time) + (1 << f)
            mask = 2 ** time_bits(f) - 1
            expected = [(int(t >> f) + inputs.latency, int(t) & mask) for t in times]
            assert events[c] == expected
            assert len(expected) > 50


def shifted_match(levels, got, fine_bits, edge, dead_time):
    """The offsets ``o`` (in samples) for which the model, run on the pin shifted by ``o``,
    gives exactly the times ``got``. The word boundaries matter (one event per cycle), so the
    shift is applied to the pin, not to the model's output."""
    matches = []
    rise, fall = sample_edges(levels, 0)
    ch = model.ChannelSettings(edge=EDGE_NAMES[edge], dead_time=dead_time)
    for sub in range(0, 2 ** fine_bits, 4):
        times = model.input_events(rise + sub, fall + sub, ch, fine_bits=fine_bits)
        if len(times) != len(got) or not len(got):
            continue
        coarse = got[0] - int(times[0])
        if coarse % 2 ** fine_bits == 0 and list(times + coarse) == list(got):
            matches.append(sub + coarse)
    return matches


@pytest.mark.parametrize("phase", [0.0, 0.5, 1.25, 2.0, 3.75])
def test_ecp5_gearbox_inputs_match_the_model_up_to_one_shared_offset(phase):
    """Elastic: the times are the model's for the pin shifted by one constant number of fast
    cycles, the same for every channel, less than one sync cycle either way."""
    rng = random.Random(int(phase * 100))
    inputs = ECP5GearboxInputs(channels=3, sim=True)
    f = inputs.fine_bits
    assert f == 4
    n_samples = 4 * 4 * 300
    levels = [random_levels(rng, n_samples, 0.08) for _ in range(3)]
    events = run_inputs(inputs, 4, levels, edge=Edge.BOTH, dead_time=5, phase=phase)
    offsets = []
    for c in range(3):
        got = [t for _, t in events[c]]
        assert len(got) > 50
        offsets.append(shifted_match(levels[c], got, f, Edge.BOTH, 5))
    assert len(offsets[0]) == 1 and offsets[0] == offsets[1] == offsets[2], offsets
    # The declared latency puts the offset within one sync cycle of the truth either way.
    assert -2 ** f < offsets[0][0] < 2 ** f


def herald_latency(inputs, ratio, sample, *, phase=0.0):
    """Pin -> herald through a whole core fed by ``inputs`` (channel 0 alone completes rule
    0): the pin rises just before sample instant ``sample`` (``2**Fp`` instants per fast cycle,
    the first at the first fast edge). Returns the time from that sample instant to the ``sync``
    edge after which the herald pin is high, in ``sync`` periods."""
    from heraldry.host.config import Acquisition

    per_fast = 2 ** inputs.sample_bits
    core = TaggerCore(inputs.channels, 1, phys=inputs.phys, test_signal=False)
    m = Module()
    m.submodules.inputs = inputs
    m.submodules.core = core
    acq = Acquisition(channels=inputs.channels, rules=1, fine_bits=inputs.fine_bits,
                      window_bins=2 ** inputs.fine_bits, herald_masks=[0b1], test_signal="off",
                      enabled=[True] + [False] * (inputs.channels - 1))
    found = []

    async def driver(ctx):
        for j in range(sample // per_fast + 40 * ratio):
            bits = 0
            for s in range(per_fast):
                bits |= int(j * per_fast + s >= sample) << s
            ctx.set(inputs.samples, bits)        # channel 0's samples; the others stay low
            await ctx.tick(inputs.fast)

    async def watcher(ctx):
        ctx.set(core.config, acq.gateware_config())
        ctx.set(core.run, 1)
        for k in range(sample // per_fast // ratio + 40):
            await ctx.tick("sync")
            if ctx.get(core.herald[0]):
                found.append(k)
                return

    sim = Simulator(m)
    add_clocks(sim, ratio, inputs.fast, phase)
    sim.add_testbench(driver)
    sim.add_testbench(watcher)
    sim.run()
    assert found, "the herald never rose"
    # sync edge k is at T/2 + phase*T + k*R*T; sample instant i at T/2 + i*T/per_fast.
    edge_time = phase + found[0] * ratio
    sample_time = sample / per_fast
    return (edge_time - sample_time) / ratio


def test_herald_latency_of_the_icebreaker_input_block():
    """docs/architecture.md: on the iCEBreaker the herald is high after the 4th core edge
    following the core edge that starts the sample's group (the 5th edge counting that one):
    3.25 to 4 core periods after the sample that first sees the pin, by its place in the group."""
    ice40 = [herald_latency(ICE40DDRInputs(channels=2, sim=True), 2, sample)
             for sample in range(64, 72)]             # two groups of four samples
    assert ice40 == [4.0, 3.75, 3.5, 3.25] * 2


@pytest.mark.parametrize("phase, low, high", [
    (0.0, 5.5625, 6.5),
    pytest.param(1.5, 5.9375, 6.875, marks=pytest.mark.slow),
    pytest.param(3.0, 6.3125, 7.25, marks=pytest.mark.slow)])
def test_herald_latency_of_the_ulx3s_input_block(phase, low, high):
    """The ULX3S adds its elastic crossing to the same path: fixed for a start, by the clocks'
    phase (three phases; the first in make test)."""
    ecp5 = [herald_latency(ECP5GearboxInputs(channels=2, sim=True), 4, sample, phase=phase)
            for sample in range(320, 337)]       # 17 samples: one group boundary
    # One group's samples share one herald edge: a sixteenth of a period less per sample,
    # one period more where the next group starts (wherever the crossing put its start).
    steps = [b - a for a, b in zip(ecp5, ecp5[1:])]
    assert sorted(set(steps)) == [-1 / 16, 15 / 16] and steps.count(15 / 16) == 1
    assert (min(ecp5), max(ecp5)) == (low, high)
