"""GateUnit (roles, sync, gates, markers, attempt clock) against ``heraldry.model``.

Random per-cycle events on every channel (at most one per channel and cycle, any fine
position), random roles and gates (offsets and widths around the sync period and the cycle's
2**F bins, gates longer than the period, none), sync clocks with jitter and gaps; each cycle
also a probe time whose attempt and offset the unit's outputs give (``attempt_offset``, what the
merger computes for a herald record) against ``model.sync_position``.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from heraldry import model
from heraldry.gateware.gates import GateUnit, attempt_offset
from heraldry.protocol import ATTEMPT_BITS, GATE_BITS, Role

ROLES = {"detector": Role.DETECTOR, "sync": Role.SYNC, "reference": Role.REFERENCE}


class Harness(wiring.Component):
    def __init__(self, channels, fine_bits):
        self.dut = GateUnit(channels, fine_bits)
        self.fine_bits = fine_bits
        super().__init__({"probe": wiring.In(max(fine_bits, 1)),
                          "attempt": wiring.Out(ATTEMPT_BITS),
                          "offset": wiring.Out(GATE_BITS)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = d = self.dut
        attempt, offset = attempt_offset(d.attempt, d.base, d.synced, d.sync_now, d.sync_fine,
                                         self.probe[:self.fine_bits], self.fine_bits)
        m.d.comb += [self.attempt.eq(attempt), self.offset.eq(offset)]
        return m


def run_unit(settings, events, probes, clear=()):
    """events[i]: {channel: fine} of cycle i. Returns streamed (time, channel), gated-out
    counts, count increments per channel, and (attempt, offset) per probe."""
    n, f = settings.channels, settings.fine_bits
    h = Harness(n, f)
    dut = h.dut
    out = {"stream": [], "gated": [0] * n, "count": [0] * n, "probes": []}

    async def bench(ctx):
        for c in range(n):
            ch = settings.channel_settings(c)
            ctx.set(dut.config.role[c], ROLES[ch.role])
            if ch.gate is not None:
                ctx.set(dut.config.gate_offset[c], ch.gate[0])
                ctx.set(dut.config.gate_width[c], ch.gate[1])
        ctx.set(dut.config.marker_every, settings.sync_marker_every)
        await ctx.tick()        # the configuration's registered flags
        for i, cycle in enumerate(events):
            ctx.set(dut.clear, i in clear)
            ctx.set(dut.events, sum(1 << c for c in cycle))
            for c in range(n):
                ctx.set(dut.fine[c], cycle.get(c, 0))
            ctx.set(h.probe, probes[i])
            stream, gated, count = (ctx.get(dut.stream), ctx.get(dut.gated_out),
                                    ctx.get(dut.count))
            for c in range(n):
                if stream >> c & 1:
                    out["stream"].append(((i << f) + cycle[c], c))
                out["gated"][c] += gated >> c & 1
                out["count"][c] += count >> c & 1
            out["probes"].append((ctx.get(h.attempt), ctx.get(h.offset)))
            await ctx.tick()

    sim = Simulator(h)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    out["stream"].sort()
    return out


def random_case(rng, f):
    n = rng.randint(2, 5)
    roles = ["detector"] * n
    has_sync = rng.random() < 0.9
    if has_sync:
        roles[rng.randrange(n)] = "sync"
    if rng.random() < 0.4:
        free = [c for c in range(n) if roles[c] == "detector"]
        roles[rng.choice(free)] = "reference"
    period = rng.randint(1, 12) << f        # bins
    chans = []
    for c in range(n):
        gate = None
        if has_sync and roles[c] == "detector" and rng.random() < 0.8:
            offset = rng.choice([0, 1, rng.randrange(2 << f), rng.randrange(period + 4)])
            width = rng.choice([1, 2, rng.randint(1, 2 << f), rng.randint(1, 2 * period)])
            gate = (offset, width)
        chans.append(model.ChannelSettings(role=roles[c], gate=gate))
    settings = model.CoreSettings(channels=n, fine_bits=f, window=1 << f, channel=tuple(chans),
                                  sync_marker_every=rng.choice([0, 1, 2, 3]))
    cycles = 400
    events = [{} for _ in range(cycles)]
    rate = rng.choice([0.1, 0.3, 0.7])
    sync_start = rng.randrange(0, 40)
    for c in range(n):
        if roles[c] == "sync":
            t = sync_start << f
            while t < cycles << f:
                events[t >> f][c] = t & ((1 << f) - 1)
                # jitter of a bin either way, and now and then a missing edge
                t += period + (rng.choice([0, 0, 1, -1, period]) if period > 1 else 0)
        else:
            for i in range(cycles):
                if rng.random() < rate:
                    events[i][c] = rng.randrange(1 << f)
    probes = [rng.randrange(1 << f) for _ in range(cycles)]
    return settings, events, probes


def model_run(settings, events, probes):
    n, f = settings.channels, settings.fine_bits
    rise = [np.array([(i << f) + cyc[c] for i, cyc in enumerate(events) if c in cyc], np.int64)
            for c in range(n)]
    result = model.simulate(rise, [r + 1 for r in rise], settings)
    sync = settings.sync_channel
    syncs = rise[sync] if sync is not None else np.zeros(0, np.int64)
    probe_times = np.array([(i << f) + p for i, p in enumerate(probes)], np.int64)
    where = model.sync_position(probe_times, syncs)
    return result, where


@pytest.mark.parametrize("fine_bits", [0, 2])
@pytest.mark.parametrize("seed", range(12))
def test_gate_unit_matches_model(seed, fine_bits):
    rng = random.Random(seed * 10 + fine_bits)
    settings, events, probes = random_case(rng, fine_bits)
    got = run_unit(settings, events, probes)
    result, where = model_run(settings, events, probes)
    assert got["stream"] == [tuple(x) for x in result.tags.tolist()]
    assert got["gated"] == result.gated_out.tolist()
    assert got["count"] == result.singles.tolist()
    assert got["probes"] == [tuple(x) for x in where.tolist()]


def test_random_cases_exercise_the_paths():
    kept = gated = markers = same_cycle = 0
    for seed in range(12):
        for f in (0, 2):
            settings, events, probes = random_case(random.Random(seed * 10 + f), f)
            result, where = model_run(settings, events, probes)
            kept += int(result.singles.sum())
            gated += int(result.gated_out.sum())
            sync = settings.sync_channel
            if sync is not None and settings.sync_marker_every:
                markers += int((result.tags["channel"] == sync).sum())
            same_cycle += sum(1 for cyc in events if sync in cyc and len(cyc) > 1)
    assert kept > 1000 and gated > 1000 and markers > 50 and same_cycle > 100


@pytest.mark.parametrize("fine_bits", [0, 3])
def test_boundaries_by_hand(fine_bits):
    """Gate (5, 3) on four detectors after sync edges: events at offsets 4, 5, 7, 8 (one per
    channel, so that they may share a cycle), in the sync's own bin and before any sync; a
    clear forgets the sync."""
    f = fine_bits
    gate = model.ChannelSettings(gate=(5, 3))
    settings = model.CoreSettings(channels=5, fine_bits=f, window=1 << f, channel=(
        gate, gate, gate, gate, model.ChannelSettings(role="sync")))
    cycles = 60
    events = [{} for _ in range(cycles)]

    def put(t, c):
        assert c not in events[t >> f]
        events[t >> f][c] = t & ((1 << f) - 1)

    put(1, 0)                                   # before any sync
    s = (10 << f) + (1 if f else 0)             # off the cycle's first bin if f > 0
    put(s, 4)
    for c, offset in enumerate((4, 5, 7, 8)):
        put(s + offset, c)
    s2 = 30 << f
    put(s2, 4)
    put(s2, 0)                                  # offset 0: the new attempt, outside the gate
    put(s2 + 5, 1)
    put(s2 + 7, 2)
    probes = [(1 << f) - 1] * cycles
    got = run_unit(settings, events, probes)
    result, where = model_run(settings, events, probes)
    assert got["stream"] == [tuple(x) for x in result.tags.tolist()]
    assert got["gated"] == result.gated_out.tolist() == [3, 0, 0, 1, 0]
    assert got["probes"] == [tuple(x) for x in where.tolist()]
    assert got["stream"] == [(s + 5, 1), (s + 7, 2), (s2 + 5, 1), (s2 + 7, 2)]
    assert got["probes"][5] == (0, 2**GATE_BITS - 1)
    assert got["probes"][31] == (2, (2 << f) - 1)

    # clear in cycle 20: the events after it are gated out until the next sync edge
    events[22][0] = 0
    got = run_unit(settings, events, probes, clear={20})
    assert [t for t, c in got["stream"] if t >= 20 << f] == [(s2 + 5), (s2 + 7)]
    assert got["probes"][25] == (0, 2**GATE_BITS - 1)
    assert got["probes"][31] == (1, (2 << f) - 1)
