"""The stream filter in the whole TaggerCore (Amaranth simulator) against the reference model
(``heraldry.model.stream_filter``, docs/semantics.md "Stream filters"): streamed tags, their
order with herald records, FILTER_FULL loss records, the filtered/filter_dropped/merger_dropped
counters; random and boundary stimulus, F = 0 and F = 2, with and without back-pressure."""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
import numpy as np
import pytest

from heraldry import model
from heraldry.gateware.core import TaggerCore
from heraldry.gateware.phy import PHYSignature
from heraldry.gateware.streamfilter import StreamFilter
from heraldry.protocol import CounterMap, Kind, LossCause, StreamMode, config_layout

MODES = {"all": StreamMode.ALL, "coincident": StreamMode.COINCIDENT, "none": StreamMode.NONE}


class DrivenPHY(wiring.Component):
    """A PHY the testbench drives: an edge reported while ``now`` reads k has bin
    ``k * 2**F + fine`` (latency 0)."""

    latency = 0

    def __init__(self, fine_bits):
        self.fine_bits = fine_bits
        super().__init__({"pin": In(1), "phy": Out(PHYSignature(fine_bits)),
                          "edge": In(1), "fine": In(fine_bits)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.phy.rise.eq(self.edge), self.phy.rise_fine.eq(self.fine)]
        return m


def run_core(events, *, fine_bits, window, modes, rules=(), ready_p=1.0, seed=0,
             start_cycle=300, hold=2):
    """Drive ``events[c]`` (absolute bins, at most one per cycle) into a core; return the record
    stream [(kind, time, a, b)] and the counters of ``names``."""
    n = len(events)
    phys = [DrivenPHY(fine_bits) for _ in range(n)]
    r = max(1, len(rules))
    rules = [rule if isinstance(rule, model.HeraldRule) else model.HeraldRule(rule)
             for rule in rules]
    core = TaggerCore(n, r, phys=phys, counter_init=start_cycle - 200, test_signal=False,
                      fifo_depth=4 if ready_p < 1 else 64, stream_hold=hold)
    layout = config_layout(n, r)
    config = layout.const({
        "channel": [{"enable": 1, "edge": 1} for _ in range(n)],
        "window": window,
        "herald_mask": [rule.require for rule in rules] + [0] * (r - len(rules)),
        "herald_veto": [rule.veto for rule in rules] + [0] * (r - len(rules)),
        "herald_exact": sum(1 << i for i, rule in enumerate(rules) if rule.mode == "exact"),
        "herald_width": 1,
        "herald_pin": list(range(r)),
        "stream": [MODES[mode] for mode in modes],
    })
    cmap = CounterMap(n, r)
    per_cycle = {}
    for c, times in enumerate(events):
        for t in np.asarray(times).tolist():
            per_cycle.setdefault(t >> fine_bits, []).append((c, t & (2 ** fine_bits - 1)))
    last = max(per_cycle, default=start_cycle)
    records, counters = [], {}
    rng = np.random.default_rng(seed)

    def take(rec):
        kind = Kind(rec.kind)
        if kind == Kind.TAG:
            records.append((kind, int(rec.time), int(rec.payload.tag.channel), 0))
        elif kind == Kind.HERALD:
            records.append((kind, int(rec.time), int(rec.payload.herald.rule), 0))
        elif kind == Kind.LOSS:
            records.append((kind, 0, (LossCause(rec.payload.loss.cause),
                                      int(rec.payload.loss.index)), int(rec.payload.loss.count)))
        else:
            records.append((kind, int(rec.time), 0, 0))

    async def bench(ctx):
        ctx.set(core.config, config)
        ctx.set(core.clear, 1)
        await ctx.tick()
        ctx.set(core.clear, 0)
        await ctx.tick().until(~core.busy)
        ctx.set(core.run, 1)
        now = ctx.get(core.now)
        assert now < start_cycle
        idle = 0
        while now <= last + window + 64 or idle < 60:
            for c in range(n):
                ctx.set(phys[c].edge, 0)
            for c, fine in per_cycle.get(now, ()):
                ctx.set(phys[c].edge, 1)
                ctx.set(phys[c].fine, fine)
            ready = bool(rng.random() < ready_p) or now > last + window + 64
            ctx.set(core.records.ready, ready)
            valid = ctx.get(core.records.valid)
            payload = ctx.get(core.records.payload)
            await ctx.tick()
            now = ctx.get(core.now)
            if valid and ready:
                take(payload)
                idle = 0
            else:
                idle += 1
        assert ctx.get(core.idle)
        for name in ("singles", "filtered", "filter_dropped", "merger_dropped"):
            values = []
            for address in cmap.range(name):
                ctx.set(core.counter_addr, address)
                await ctx.tick()
                values.append(ctx.get(core.counter_data))
            counters[name] = values

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return records, counters


def check(events, *, fine_bits, window, modes, rules=(), ready_p=1.0, seed=0, hold=2):
    n = len(events)
    records, counters = run_core(events, fine_bits=fine_bits, window=window, modes=modes,
                                 rules=rules, ready_p=ready_p, seed=seed, hold=hold)
    settings = model.CoreSettings(channels=n, fine_bits=fine_bits, window=window,
                                  herald_rules=list(rules), stream=modes, stream_hold=hold)
    empty = [np.zeros(0, np.int64)] * n
    expected = model.simulate(events, empty, settings)
    tags = [(t, c) for kind, t, c, _ in records if kind == Kind.TAG]
    lost = {}
    for kind, _, key, count in records:
        if kind == Kind.LOSS:
            lost[key] = lost.get(key, 0) + count
    # The wire's rules (docs/protocol.md): tag times never go back, nor herald times, and a
    # tag is never earlier than the herald record before it (a TAG is a delta >= 0 from it).
    last_tag = last_herald = -1
    for kind, t, _, _ in records:
        if kind == Kind.TAG:
            assert t >= max(last_tag, last_herald), (t, last_tag, last_herald)
            last_tag = t
        elif kind == Kind.HERALD:
            assert t >= last_herald, (t, last_herald)
            last_herald = t
    want = [(int(t), int(c)) for t, c in zip(expected.tags["time"], expected.tags["channel"])]
    assert counters["singles"] == expected.singles.tolist()
    assert counters["filtered"] == expected.filtered.tolist()
    assert counters["filter_dropped"] == expected.filter_dropped.tolist()
    filter_lost = [lost.get((LossCause.FILTER_FULL, c), 0) for c in range(n)]
    assert filter_lost == expected.filter_dropped.tolist()
    merger_lost = [lost.get((LossCause.MERGER_FULL, c), 0) for c in range(n)]
    assert counters["merger_dropped"] == merger_lost
    if ready_p == 1:
        assert tags == want
        assert not any(merger_lost)
    else:
        # Whole bundles are dropped: what arrives is the model's stream with gaps, and per
        # channel arrived + MERGER_FULL = the model's streamed tags.
        it = iter(want)
        assert all(tag in it for tag in tags)
        arrived = np.bincount([c for _, c in tags], minlength=n)
        per_channel = np.bincount(expected.tags["channel"].astype(int), minlength=n)
        assert (arrived + merger_lost).tolist() == per_channel.tolist()
    return expected, records


def random_events(rng, n, fine_bits, start, cycles, rates):
    out = []
    for c in range(n):
        busy = np.flatnonzero(rng.random(cycles) < rates[c]) + start
        out.append((busy << fine_bits) + rng.integers(0, 2 ** fine_bits, len(busy)))
    return out


@pytest.mark.parametrize("fine_bits,window,seed", [(0, 4, 1), (0, 9, 2), (2, 6, 3),
                                                   (2, 17, 4), (0, 1, 5)])
def test_random_against_model(fine_bits, window, seed):
    rng = np.random.default_rng(seed)
    n = 4
    modes = ("coincident", "coincident", "all", "none") if seed % 2 else \
        ("coincident", "none", "coincident", "coincident")
    # Channel 0 clicks often (several events per window: the hold buffer fills), the others
    # rarely (most windows stay single-channel and are filtered).
    events = random_events(rng, n, fine_bits, 400, 700, [0.35, 0.06, 0.05, 0.04])
    expected, _ = check(events, fine_bits=fine_bits, window=window, modes=modes,
                        rules=(0b0011, 0b0001), hold=2)
    assert expected.filtered.sum() > 20 and len(expected.tags) > 20
    if window >> fine_bits >= 4:
        assert expected.filter_dropped.sum() > 0        # the stimulus reached the full buffer


@pytest.mark.parametrize("fine_bits", [0, 2])
def test_random_with_backpressure(fine_bits):
    rng = np.random.default_rng(11 + fine_bits)
    events = random_events(rng, 3, fine_bits, 400, 600, [0.3, 0.2, 0.1])
    check(events, fine_bits=fine_bits, window=6, modes=("coincident", "all", "coincident"),
          ready_p=0.3, seed=fine_bits)


def test_boundaries_by_hand():
    """W = 5, hold 1, F = 0, from bin 400: a held tag released by the window's last bin
    (404), an event in the last cycle of a single window decided at once (no slot needed, so
    no loss), a full buffer in a coincident window (lost), back-to-back windows (the event at
    t0 + W opens the next one while the held ones are discarded)."""
    b = 400
    events = [np.array([b, b + 1, b + 10, b + 14, b + 15, b + 20, b + 21, b + 22]),
              np.array([b + 4, b + 24])]
    expected, records = check(events, fine_bits=0, window=5,
                              modes=("coincident", "coincident"), hold=1)
    tags = [(t - b, c) for kind, t, c, _ in records if kind == Kind.TAG]
    # [400, 405): 0@0 held, 0@1 lost, 1@4 releases. [410, 415): 0@10 held, 0@14 in the last
    # cycle, single: filtered. [415, 420): 0@15 held, filtered. [420, 425): 0@20 held, 0@21
    # lost, 0@22 lost, 1@24 in the last cycle releases.
    assert tags == [(0, 0), (4, 1), (20, 0), (24, 1)]
    assert expected.filter_dropped.tolist() == [3, 0]
    assert expected.filtered.tolist() == [3, 0]


def test_stream_filter_block_alone_holds_and_releases():
    """The block's own outputs for a window that a second channel joins two cycles later:
    held in cycle 0, released in cycle 2 with offset 2, nothing filtered."""
    dut = StreamFilter(2, 0, hold=2)
    seen = []

    async def bench(ctx):
        ctx.set(dut.mode[0], StreamMode.COINCIDENT)
        ctx.set(dut.mode[1], StreamMode.ALL)
        # Cycle 0: channel 0 opens a window of 5 bins (no window open before).
        for cycle, (events, join, was_open, prev) in enumerate(
                [(0b01, 0b00, 0, 0b00), (0b00, 0b00, 1, 0b01), (0b10, 0b10, 1, 0b01)]):
            ctx.set(dut.ref, 100 + cycle)
            for c in range(2):
                ctx.set(dut.times[c], 100 + cycle)          # F = 0: an event's time is ref
            ctx.set(dut.events, events)
            ctx.set(dut.join, join)
            ctx.set(dut.was_open, was_open)
            ctx.set(dut.prev_pattern, prev)
            ctx.set(dut.last_cycle, 0)
            ctx.set(dut.opened_last_cycle, 0)
            seen.append((ctx.get(dut.stream), ctx.get(dut.held), ctx.get(dut.held_offset[0]),
                         ctx.get(dut.idle), [ctx.get(dut.filtered[c]) for c in range(2)]))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert [s[0] for s in seen] == [0b00, 0b00, 0b10]
    assert [s[1] for s in seen] == [0b00, 0b00, 0b01]
    assert seen[2][2] == 2 and [s[3] for s in seen] == [1, 0, 0]
    assert all(s[4] == [0, 0] for s in seen)


def test_without_the_filter_every_event_is_streamed():
    """``stream_filter=False``: the stream registers are ignored."""
    rng = np.random.default_rng(3)
    events = random_events(rng, 2, 0, 400, 200, [0.2, 0.2])
    phys = [DrivenPHY(0) for _ in range(2)]
    core = TaggerCore(2, 1, phys=phys, test_signal=False, stream_filter=False)
    assert core.stream_hold == 0
    # Built and elaborated without the filter's members.
    from amaranth.back import rtlil
    assert "stream_filter" not in rtlil.convert(core)


def test_counters_take_several_filtered_and_dropped_in_one_cycle():
    """A discard adds a window's held events at once; dropped released tags add to
    merger_dropped with the cycle's own."""
    from heraldry.gateware.counters import Counters
    dut = Counters(2, 1, hold=2)
    cmap = dut.map
    got = {}

    async def bench(ctx):
        ctx.set(dut.filtered[0], 5)
        ctx.set(dut.filter_dropped[1], 3)
        ctx.set(dut.merger_dropped, 0b10)
        ctx.set(dut.held_dropped[1], 2)
        await ctx.tick()
        ctx.set(dut.filtered[0], 1)
        ctx.set(dut.filter_dropped[1], 0)
        ctx.set(dut.merger_dropped, 0)
        ctx.set(dut.held_dropped[1], 0)
        await ctx.tick()
        ctx.set(dut.filtered[0], 0)
        for name in ("filtered", "filter_dropped", "merger_dropped"):
            got[name] = []
            for address in cmap.range(name):
                ctx.set(dut.addr, address)
                await ctx.tick()
                got[name].append(ctx.get(dut.data))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == {"filtered": [6, 0], "filter_dropped": [0, 3], "merger_dropped": [0, 3]}


@pytest.mark.parametrize("fine_bits", [0, 2])
def test_exact_and_vetoed_rules_keep_the_stream_in_order(fine_bits):
    """Exact rules decide when the window closes, after every release of the window; an early
    rule on one channel fires at a held event's own time. The records stay in wire order and
    the tags equal the model's."""
    rng = np.random.default_rng(21 + fine_bits)
    events = random_events(rng, 3, fine_bits, 400, 600, [0.3, 0.08, 0.08])
    rules = (model.HeraldRule(0b011, 0b100, "exact"), model.HeraldRule(0b001))
    expected, records = check(events, fine_bits=fine_bits, window=3 << fine_bits,
                              modes=("coincident", "coincident", "none"), rules=rules)
    heralds = [rec for rec in records if rec[0] == Kind.HERALD]
    assert len(heralds) == len(expected.heralds) > 20
    assert [(t, rule) for _, t, rule, _ in heralds] == \
        [(int(t), int(r)) for t, r in zip(expected.heralds["time"], expected.heralds["rule"])]
