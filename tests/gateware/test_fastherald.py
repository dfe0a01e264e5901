# amaranth: UnusedElaboratable=no
"""The ULX3S's fast herald path (gateware/fastherald.py) beside the whole core, both fed by one
ECP5 input block (the behavioural IDDRX2F, as in test_gearbox.py), at several phases of the core
clock against sclk: the fast pins against the reference model's herald pins at sclk resolution
(the same firings, one constant latency), the core's records against the model on the same
stimulus, the fallback to the core's pins, and the eligibility rule against the host's."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from heraldry import model
from heraldry.gateware.core import TaggerCore
from heraldry.gateware.fastherald import FastHerald
from heraldry.gateware.phy_ecp5 import ECP5GearboxInputs
from heraldry.host.config import Acquisition, fast_herald_pins
from heraldry.model import HeraldRule
from heraldry.protocol import Kind

from test_gearbox import add_clocks, levels_from_edges, sample_edges

QUIET_SAMPLES = 4 * 4 * 90        # no edge before: clear, counter clearing and run start


def build(channels, rules, gates=False):
    inputs = ECP5GearboxInputs(channels=channels, sim=True)
    core = TaggerCore(channels, rules, phys=inputs.phys, test_signal=False,
                      stream_filter=False, gates=gates, herald_stage=True)
    fast = FastHerald(channels, rules, gates=gates)
    m = Module()
    m.submodules.inputs = inputs
    m.submodules.core = core
    m.submodules.fast = fast
    fast.attach(m, inputs, core)
    return m, inputs, core, fast


def run_board(acq, levels, *, phase, lossless=True, gap=None, run_at=None):
    """Runs the stimulus (``levels[c]``: channel c's level at every sample instant). Returns
    ``(records, fast_pins, pins, core_pins, mask, events)``: the core's HERALD records ``(time,
    rule, pattern)``, per sclk cycle the fast path's own pins, the output pins and the core's
    pins (as integers), the eligibility mask the gateware computed, and per channel the events
    the fast path's input stage took (``4 * sclk cycle + fine``). ``gap``: ``(off, on)``, core
    cycles after the run starts at which ``run`` goes low and high again; the core's ``now``
    at each change is appended to ``run_at`` (a list)."""
    m, inputs, core, fast = build(acq.channels, acq.rules)
    n_fast = len(levels[0]) // 4
    records, fast_pins, pins, core_pins, mask = [], [], [], [], []
    events = [[] for _ in range(acq.channels)]

    async def driver(ctx):
        for j in range(n_fast + 64):
            word = 0
            for c, lv in enumerate(levels):
                for s in range(4):
                    k = min(4 * j + s, len(lv) - 1)
                    word |= lv[k] << (4 * c + s)
            ctx.set(inputs.samples, word)
            await ctx.tick("sclk")
            fast_pins.append(ctx.get(fast.fast_herald))
            pins.append(ctx.get(fast.herald))
            core_pins.append(ctx.get(core.herald))
            took = ctx.get(fast.events)
            for c in range(acq.channels):
                if took >> c & 1:
                    events[c].append(4 * j + ctx.get(fast.fines[c]))

    async def watcher(ctx):
        ctx.set(core.config, acq.gateware_config())
        ctx.set(core.records.ready, 1)
        await ctx.tick()
        ctx.set(core.clear, 1)
        await ctx.tick()
        ctx.set(core.clear, 0)
        await ctx.tick().until(~core.busy)
        ctx.set(core.run, 1)
        mask.append(ctx.get(fast.fast))
        k = idle = 0
        while k < n_fast // 4 + 10 or idle < 40:     # the stimulus, then drain the merger
            if gap is not None and k in gap:
                ctx.set(core.run, k == gap[1])
                run_at.append(ctx.get(core.now))
            await ctx.tick()
            k += 1
            if ctx.get(core.records.valid):
                idle = 0
                rec = ctx.get(core.records.payload)
                assert not (lossless and rec.kind == Kind.LOSS)
                if rec.kind == Kind.HERALD:
                    records.append((int(rec.time), int(rec.payload.herald.rule),
                                    int(rec.payload.herald.pattern)))
            else:
                idle += 1

    sim = Simulator(m)
    add_clocks(sim, 4, "sclk", phase)
    sim.add_testbench(driver)
    sim.add_testbench(watcher)
    sim.run()
    return records, fast_pins, pins, core_pins, mask[0], events


def intervals(levels):
    """Half-open ``(start, stop)`` runs of a 0/1 sequence."""
    out, start = [], None
    for k, level in enumerate(list(levels) + [0]):
        if level and start is None:
            start = k
        elif not level and start is not None:
            out.append((start, k))
            start = None
    return out


def model_events(acq, levels, sub):
    """The model's input events per channel for the pins shifted by ``sub`` samples (the word
    boundaries matter: one edge of each kind per 16-sample group)."""
    settings = acq.model_settings()
    times = []
    for c, lv in enumerate(levels):
        rise, fall = sample_edges(lv, sub)
        times.append(model.input_events(rise, fall, settings.channel_settings(c),
                                        fine_bits=4))
    return times


def model_heralds(acq, levels, sub):
    """The model's herald records for the pins shifted by ``sub`` samples."""
    return model.herald_records(model_events(acq, levels, sub), acq.window_bins,
                                list(acq.herald_rules), fine_bits=4)


def match_core(acq, levels, records):
    """``(sub, coarse)``: the one group alignment (``sub`` samples, a multiple of 4) and
    constant time offset for which the model gives exactly the core's records."""
    got = np.array(records, model.HERALD_DTYPE)
    found = []
    for sub in range(0, 16, 4):
        expected = model_heralds(acq, levels, sub)
        if len(expected) != len(got) or not len(got):
            continue
        coarse = int(got["time"][0]) - int(expected["time"][0])
        shifted = expected.copy()
        shifted["time"] += coarse
        if coarse % 16 == 0 and shifted.tolist() == got.tolist():
            found.append((sub, coarse, expected))
    assert len(found) == 1, f"the core's records match the model at {len(found)} alignments"
    return found[0]


def check_fast_pins(acq, levels, result):
    """Every fast pin equals the model's herald pin at sclk resolution (pulse 4 x
    herald_width sclk cycles, a firing while high restarts it) for the model's firings of the
    rules on that pin, at one latency for every firing and pin; the output pins are the fast
    ones where eligible, the core's elsewhere. Returns (latency offset, firings on fast pins)."""
    records, fast_pins, pins, core_pins, mask, events = result
    assert mask == fast_herald_pins(acq)
    sub, coarse, expected = match_core(acq, levels, records)
    # The fast path's input stages take exactly the model's (so the core's) events, one
    # constant offset for every channel.
    shifts = set()
    for c, times in enumerate(model_events(acq, levels, sub)):
        got = events[c]
        assert len(got) == len(times), f"channel {c}"
        if len(got):
            shifts.add(got[0] - int(times[0]))
            assert [t - got[0] for t in got] == (times - times[0]).tolist(), f"channel {c}"
    assert len(shifts) == 1 and shifts.pop() % 4 == 0
    rules = list(acq.herald_rules)
    early = expected[[rules[r].mode == "early" for r in expected["rule"]]]
    want = model.herald_pin(early, 4 * acq.herald_width, 0, rules=acq.rules, fine_bits=2,
                            herald_rules=rules)
    offsets = set()
    fired = 0
    for p in range(acq.rules):
        seen = intervals((v >> p) & 1 for v in fast_pins)
        if not want[p]:
            assert seen == [], f"pin {p} rose with no early firing"
            continue
        # sample s is in model sclk cycle (s + sub) // 4 (sample_edges adds sub); the
        # fast pin's sclk cycles count from the first sclk edge.
        shift = seen[0][0] - want[p][0][0] if seen else None
        assert seen == [(a + shift, b + shift) for a, b in want[p]], f"pin {p}"
        offsets.add(shift)
        fired += len(early[[rules[r].pin == p for r in early["rule"]]])
        if mask >> p & 1:
            assert [(v >> p) & 1 for v in pins] == [(v >> p) & 1 for v in fast_pins]
    for p in range(acq.rules):
        if not mask >> p & 1:
            assert [(v >> p) & 1 for v in pins] == [(v >> p) & 1 for v in core_pins]
    assert len(offsets) <= 1, f"the fast pins' latency differs between pins: {offsets}"
    return (offsets.pop() if offsets else None), sub, fired, coarse


def random_levels(rng, n_samples, density, pairs_with=None):
    edges = set(rng.sample(range(QUIET_SAMPLES, n_samples - 256), int(n_samples * density)))
    if pairs_with is not None:
        # Coincidences: near-copies of another channel's edges (a few bins apart).
        for e in pairs_with:
            if rng.random() < 0.5:
                edges.add(e + rng.randrange(-6, 7))
    edges = sorted(e for e in edges if QUIET_SAMPLES <= e < n_samples - 256)
    return levels_from_edges(edges, n_samples), edges


def random_setup(rng, channels=4, n_samples=4 * 4 * 600):
    """Random stimulus and settings: dead times, edge kinds, two early rules (one with a
    veto) on pin 0, an exact rule on pin 2 (that pin falls back to the core's)."""
    levels, edges = [], []
    for c in range(channels):
        lv, e = random_levels(rng, n_samples, 0.012, edges[0] if c else None)
        levels.append(lv)
        edges.append(e)
    acq = Acquisition(
        channels=channels, rules=3, fine_bits=4, bin_ps=1250, clock_hz=50e6,
        window_bins=rng.choice([16, 23, 40]), test_signal="off", herald_width=1,
        edges=rng.sample(["both", "both", "rising", "falling"], channels),
        dead_time_bins=rng.sample([0, 0, 9, 30], channels),
        herald_rules=[HeraldRule(0b0011, 0b0100, "early", 0),
                      HeraldRule(0b1001, 0, "early", 0),
                      HeraldRule(0b0110, 0, "exact", 2)])
    acq.validate()
    return acq, levels


@pytest.mark.parametrize("phase", [0.0, pytest.param(1.25, marks=pytest.mark.slow),
                                   pytest.param(2.5, marks=pytest.mark.slow),
                                   pytest.param(3.75, marks=pytest.mark.slow)])
def test_fast_pins_match_the_model_and_the_core(phase):
    rng = random.Random(int(phase * 4) + 13)
    acq, levels = random_setup(rng)
    result = run_board(acq, levels, phase=phase)
    assert fast_herald_pins(acq) == 0b011
    shift, sub, fired, _ = check_fast_pins(acq, levels, result)
    assert fired > 20, "too few firings on the fast pin to test anything"
    assert shift is not None


@pytest.mark.parametrize("case", ["delay", "test signal"])
def test_ineligible_settings_give_the_core_pins(case):
    """A delayed channel (its delay line is the core's), or a channel fed by the test signal
    (it enters the core, not the fast path): every pin is the core's, event for event, though
    the fast path's own pins differ from them."""
    rng = random.Random(7)
    acq, levels = random_setup(rng)
    if case == "delay":
        acq.delays_bins = [0, 0, 0, 37]
    else:
        acq.test_signal, acq.pin_channels = "pairs", [2, 3]   # channels 0, 1 from the signal
    acq.validate()
    records, fast_pins, pins, core_pins, mask, _ = run_board(acq, levels, phase=0.5,
                                                                   lossless=False)
    assert mask == fast_herald_pins(acq) == 0
    assert pins == core_pins
    early = [(v & 0b011) for v in core_pins]
    if case == "delay":
        assert any(early), "the core's early pins never rose"
    assert [v & 0b011 for v in fast_pins] != early, "the fast path would have been the same"


def eligibility_cases():
    """Acquisitions and the pins the fast path may drive, worked out by hand."""
    rules3 = [HeraldRule(0b0011, 0, "early", 0), HeraldRule(0b0101, 0b1000, "early", 0),
              HeraldRule(0b1100, 0, "exact", 2)]
    base = dict(channels=4, rules=3, fine_bits=4, bin_ps=1250, clock_hz=50e6, window_bins=16,
                test_signal="off", herald_rules=rules3)
    yield Acquisition(**base), 0b011
    yield Acquisition(**base | {"herald_rules": rules3[:2]}), 0b111
    yield Acquisition(**base | {"herald_rules": [HeraldRule(0b11, 0, "exact", 1)]}), 0b101
    yield Acquisition(**base | {"delays_bins": [0, 0, 5, 0]}), 0
    # A delayed channel that is disabled does not matter.
    yield Acquisition(**base | {"delays_bins": [0, 0, 5, 0],
                                "enabled": [True, True, False, True]}), 0b011
    yield Acquisition(**base | {"test_signal": "pairs"}), 0
    yield Acquisition(**base | {"test_signal": "pairs", "pin_channels": [0, 1, 2, 3]}), 0b011
    # Roles: channel 3 not in any rule.
    base |= {"herald_rules": [HeraldRule(0b0011, 0, "early", 0),
                              HeraldRule(0b0110, 0, "exact", 2)]}
    yield Acquisition(**base), 0b011
    yield Acquisition(**base | {"roles": ["detector", "detector", "detector", "reference"]}), 0
    yield Acquisition(**base | {"roles": ["detector", "detector", "detector", "sync"],
                                "enabled": [True, True, True, False]}), 0b011
    yield Acquisition(**base | {"roles": ["detector", "detector", "detector", "sync"],
                                "gates_bins": [(0, 100), None, None, None]}), 0


def test_eligibility_in_gateware_matches_the_host():
    """The gateware's mask (registered in sync from the configuration) against
    ``fast_herald_pins`` and the hand-worked value, for each case."""
    cases = list(eligibility_cases())
    fast = FastHerald(4, 3, gates=True)
    got = []

    async def bench(ctx):
        for acq, _ in cases:
            acq.validate()
            ctx.set(fast.config, acq.gateware_config())
            await ctx.tick().repeat(2)
            got.append(ctx.get(fast.fast))

    sim = Simulator(fast)
    sim.add_clock(2e-8)
    sim.add_clock(5e-9, domain="sclk")
    sim.add_testbench(bench)
    sim.run()
    assert got == [fast_herald_pins(acq) for acq, _ in cases] == [want for _, want in cases]


def test_run_stop_and_start_differ_only_near_the_edges():
    """``run`` low for a while in the middle of a run: the core and the fast path gate it at
    different samples (the core when a group reaches its input stage, behind the crossing; the
    fast path two sclk cycles after the synchroniser), so firings near a run edge may differ
    (docs/boards.md). Away from the edges (80 ns plus a window, a dead time and a pulse) both
    the fast pins and the core's records are those of the same stimulus without the gap, and
    nothing fires in the gap."""
    rng = random.Random(29)
    acq, levels = random_setup(rng)
    acq.window_bins = 16
    acq.validate()
    full = run_board(acq, levels, phase=1.5)
    shift, sub, fired, coarse = check_fast_pins(acq, levels, full)
    run_at = []
    gapped = run_board(acq, levels, phase=1.5, gap=(250, 400), run_at=run_at)
    latency = 4                            # ECP5GearboxInputs.latency: bin 16 * (now - 4) + i
    edges_bins = [16 * (now - latency) for now in run_at]       # core time of the run edges
    margin_bins = 64 + acq.window_bins + max(acq.dead_time_bins) + 16

    def far(t):
        return all(abs(t - e) > margin_bins for e in edges_bins)

    def in_gap(t):
        return edges_bins[0] <= t < edges_bins[1]

    want = [r for r in full[0] if far(r[0]) and not in_gap(r[0])]
    got = [r for r in gapped[0] if far(r[0])]
    assert got == want
    assert any(in_gap(r[0]) and far(r[0]) for r in full[0]), "nothing to gate in the gap"
    assert any(r[0] > edges_bins[1] + margin_bins for r in got), "nothing after the restart"
    # The fast pins: a firing at core time t is at model time t - coarse, in model sclk cycle
    # (t - coarse) >> 2, and raises the pin in sclk cycle that + shift.
    edges_j = [((e - coarse) >> 2) + shift for e in edges_bins]
    margin_j = margin_bins // 4 + 4 * acq.herald_width
    for j, (a, b) in enumerate(zip(full[1], gapped[1])):
        if all(abs(j - e) > margin_j for e in edges_j):
            assert b == (0 if edges_j[0] <= j < edges_j[1] else a), f"sclk cycle {j}"
    assert any(full[1][j] for j in range(edges_j[0] + margin_j, edges_j[1] - margin_j))
