"""The whole TaggerCore built with gates (roles, sync, gates, markers, attempt numbers) in the
Amaranth simulator, against the reference model: every streamed tag and marker, every herald
record with its attempt and offset, and the singles, herald and gated_out counters, at F = 0, 2
and 4, with delays on the sync and the detectors."""

from amaranth.sim import Simulator
import numpy as np
import pytest

from heraldry import model, protocol
from heraldry.gateware.core import TaggerCore
from heraldry.host.config import Acquisition
from heraldry.protocol import Kind, LossCause, Role

from test_core_sim import _DrivenPHY

ROLES = {"detector": Role.DETECTOR, "sync": Role.SYNC, "reference": Role.REFERENCE}


def run_core(settings, events, start_cycle, rules, *, gates=True, roles=None, gate_stage=False,
             herald_pins=None, lead=200):
    """``events[c]``: absolute bins of channel c (at most one per cycle). Returns tags, heralds
    (time, rule, pattern, attempt, offset) in stream order and the counters. ``gates=False``:
    the core with the reference role alone (``references=True``), heralds (time, rule,
    pattern); ``roles``: the ``Role`` written to each channel instead of the settings' own.
    ``gate_stage``: the core's register stage in front of the gate unit. ``herald_pins``: a
    list that receives ``(now, herald pins)`` after every clock edge from the first stimulus
    cycle on (the stimulus of bin cycle ``b`` is on the pins while ``now == b``). ``lead``:
    cycles from the core's ``ref`` after reset to ``start_cycle`` (clear takes longer with more
    counters)."""
    n, f = settings.channels, settings.fine_bits
    acq = Acquisition(channels=n, rules=rules, fine_bits=f, window_bins=settings.window,
                      test_signal="off", herald_rules=list(settings.herald_rules),
                      delays_bins=[settings.channel_settings(c).delay for c in range(n)])
    phys = [_DrivenPHY(f) for _ in range(n)]
    core = TaggerCore(n, rules, phys=phys, counter_init=start_cycle - lead, test_signal=False,
                      gates=gates, references=not gates, gate_stage=gate_stage)
    cmap = core.map
    last = max((int(t[-1]) >> f for t in events if len(t)), default=start_cycle)
    per_cycle = {}
    for c, times in enumerate(events):
        for t in times.tolist():
            per_cycle.setdefault(t >> f, []).append((c, t & (2 ** f - 1)))
    tags, heralds, counters, losses = [], [], {}, {}

    async def bench(ctx):
        ctx.set(core.config, acq.gateware_config())
        for c in range(n):
            ch = settings.channel_settings(c)
            ctx.set(core.config.gates.role[c], ROLES[ch.role] if roles is None else roles[c])
            if ch.gate is not None:
                ctx.set(core.config.gates.gate_offset[c], ch.gate[0])
                ctx.set(core.config.gates.gate_width[c], ch.gate[1])
        ctx.set(core.config.gates.marker_every, settings.sync_marker_every)
        ctx.set(core.records.ready, 1)
        ctx.set(core.clear, 1)
        await ctx.tick()
        ctx.set(core.clear, 0)
        await ctx.tick().until(~core.busy)
        ctx.set(core.run, 1)
        now = ctx.get(core.now)
        assert now < start_cycle, "the stimulus starts before the core can take it"
        idle = 0
        while now <= last + 64 or idle < 40:
            for c in range(n):
                ctx.set(phys[c].edge, 0)
            for c, fine in per_cycle.get(now, ()):
                ctx.set(phys[c].edge, 1)
                ctx.set(phys[c].fine, fine)
            await ctx.tick()
            now = ctx.get(core.now)
            if herald_pins is not None:
                herald_pins.append((now, ctx.get(core.herald)))
            if ctx.get(core.records.valid):
                rec = ctx.get(core.records.payload)
                if rec.kind == Kind.TAG:
                    tags.append((int(rec.time), int(rec.payload.tag.channel)))
                elif rec.kind == Kind.HERALD:
                    h = rec.payload.herald
                    heralds.append((int(rec.time), int(h.rule), int(h.pattern))
                                   + ((int(h.attempt), int(h.offset)) if gates else ()))
                elif rec.kind == Kind.LOSS and rec.payload.loss.cause == LossCause.DELAY_FULL:
                    c = int(rec.payload.loss.index)
                    losses[c] = losses.get(c, 0) + int(rec.payload.loss.count)
                else:
                    raise AssertionError(f"unexpected record {rec.kind}")
                idle = 0
            else:
                idle += 1
        counters["delay_lost"] = [losses.get(c, 0) for c in range(n)]
        for name in ("singles", "heralds", "gated_out", "delay_dropped"):
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
    return tags, heralds, counters


def stimulus(rng, settings, start, cycles, rate, period):
    f = settings.fine_bits
    events = []
    for c in range(settings.channels):
        role = settings.channel_settings(c).role
        if role == "sync":
            bins = np.arange(start << f, (start + cycles) << f, period)
            bins = bins + rng.integers(0, 2, len(bins))          # a bin of jitter
            bins = bins[rng.random(len(bins)) > 0.05]           # now and then a missed edge
        elif role == "reference":
            bins = np.arange((start + 7) << f, (start + cycles) << f, 97 << f)
        else:
            busy = np.flatnonzero(rng.random(cycles) < rate) + start
            bins = (busy << f) + rng.integers(0, 2 ** f, len(busy))
        events.append(_one_per_cycle(bins, f))
    return events


def _one_per_cycle(bins, f):
    bins = np.sort(bins)
    cycle = bins >> f
    return bins[np.r_[True, cycle[1:] != cycle[:-1]]]


@pytest.mark.parametrize("fine_bits,window,seed", [(0, 3, 1), (2, 7, 2), (4, 16, 3),
                                                   (4, 29, 4)])
def test_gates_through_the_whole_core(fine_bits, window, seed):
    rng = np.random.default_rng(seed)
    f = fine_bits
    cycle = 2 ** f
    period = 23 * cycle + 3 if f else 23          # bins, not a whole number of cycles
    gate = (4 * cycle + 1, 9 * cycle)
    rules = (model.HeraldRule(0b10001, 0b00110, "exact", 0),     # D0&D4 (channel 3 is sync)
             model.HeraldRule(0b00110, 0b10001, "exact", 0),
             model.HeraldRule(0b00011, 0, "early", 1))
    channels = (model.ChannelSettings(gate=gate),
                model.ChannelSettings(gate=(gate[0] - cycle, gate[1]), delay=cycle),
                model.ChannelSettings(gate=gate),
                model.ChannelSettings(role="sync", delay=2 * cycle),
                model.ChannelSettings(),                          # no gate
                model.ChannelSettings(role="reference"))
    settings = model.CoreSettings(channels=6, fine_bits=f, window=window, channel=channels,
                                  herald_rules=rules, sync_marker_every=4)
    start = 200 + int(rng.integers(0, 50))
    events = stimulus(rng, settings, start, 700, 0.3, period)
    tags, heralds, counters = run_core(settings, events, start, 3)
    empty = [np.zeros(0, np.int64)] * settings.channels
    expected = model.simulate(events, empty, settings)
    assert tags == [tuple(x) for x in expected.tags.tolist()]
    want = [tuple(h) + tuple(s) for h, s in zip(expected.heralds.tolist(),
                                                 expected.herald_sync.tolist())]
    assert heralds == want
    assert counters["singles"] == expected.singles.tolist()
    assert counters["gated_out"] == expected.gated_out.tolist()
    assert counters["heralds"] == expected.herald_counts.tolist()
    # the stimulus holds what the test is about
    assert expected.gated_out[:3].min() > 30 and expected.singles[:3].min() > 30
    assert np.bincount(expected.heralds["rule"], minlength=3).min() >= 2
    assert (expected.tags["channel"] == 3).sum() > 3 and (expected.tags["channel"] == 5).sum() > 3


@pytest.mark.parametrize("fine_bits,window,seed", [(4, 16, 5), (0, 3, 6)])
def test_gate_stage_same_records_pins_one_cycle_later(fine_bits, window, seed):
    """``TaggerCore(gate_stage=True)`` (the ULX3S's 8-channel build: 8 channels, F = 4, gates):
    every tag, herald record (attempt, offset), singles/gated_out/herald/delay counter equals the
    model's, as without the stage; the herald pins are those of the core without the stage one
    cycle later, and ``latency`` is one higher."""
    rng = np.random.default_rng(seed)
    f = fine_bits
    cycle = 2 ** f
    period = 19 * cycle + 5 if f else 19
    gate = (3 * cycle + 2, 7 * cycle)
    rules = (model.HeraldRule(0b00010001, 0b00000100, "exact", 0),
             model.HeraldRule(0b01000010, 0, "early", 1))
    channels = (model.ChannelSettings(gate=gate),
                model.ChannelSettings(gate=(gate[0] - cycle, gate[1]), delay=cycle),
                model.ChannelSettings(gate=gate),
                model.ChannelSettings(role="sync", delay=2 * cycle),
                model.ChannelSettings(),                          # no gate
                model.ChannelSettings(role="reference"),
                model.ChannelSettings(gate=gate, delay=3 * cycle),
                model.ChannelSettings(gate=(0, 5 * cycle + 1)))
    settings = model.CoreSettings(channels=8, fine_bits=f, window=window, channel=channels,
                                  herald_rules=rules, sync_marker_every=3)
    start = 200 + int(rng.integers(0, 50))
    events = stimulus(rng, settings, start, 400, 0.3, period)
    plain_pins, staged_pins = [], []
    plain = run_core(settings, events, start, 2, herald_pins=plain_pins, lead=400)
    staged = run_core(settings, events, start, 2, gate_stage=True, herald_pins=staged_pins,
                      lead=400)
    empty = [np.zeros(0, np.int64)] * settings.channels
    expected = model.simulate(events, empty, settings)
    tags, heralds, counters = staged
    assert tags == [tuple(x) for x in expected.tags.tolist()]
    assert heralds == [tuple(h) + tuple(s) for h, s in zip(expected.heralds.tolist(),
                                                           expected.herald_sync.tolist())]
    assert counters["singles"] == expected.singles.tolist()
    assert counters["gated_out"] == expected.gated_out.tolist()
    assert counters["heralds"] == expected.herald_counts.tolist()
    assert staged == plain
    # The pins by `now` (the stimulus' cycle): the staged core's at now + 1 are the plain's at now.
    by_now = dict(staged_pins)
    shifted = [(now, pins) for now, pins in plain_pins if now + 1 in by_now]
    assert [by_now[now + 1] for now, _ in shifted] == [pins for _, pins in shifted]
    assert len(shifted) > 300 and sum(1 for _, p in shifted if p & 1) >= 2 \
        and sum(1 for _, p in shifted if p & 2) >= 2
    assert np.bincount(expected.heralds["rule"], minlength=2).min() >= 2
    assert expected.gated_out[[0, 1, 2, 6, 7]].min() > 10
    core = TaggerCore(8, 2, gates=True, gate_stage=True)
    assert core.latency == TaggerCore(8, 2, gates=True).latency + 1


def test_references_alone_through_the_whole_core():
    """``TaggerCore(references=True)`` (no gates; the iCEBreaker's build): a reference
    channel's events are streamed and counted, never in windows, exactly as the model says; a
    SYNC role written to such a core is a detector (only REFERENCE is honoured)."""
    rng = np.random.default_rng(11)
    f = 2
    rules = (model.HeraldRule(0b0011, 0b0100, "exact", 0),
             model.HeraldRule(0b0101, 0, "early", 1))
    # a delay of less than a cycle: it brings some events of channel 1 into one cycle, and the
    # delay line drops the later one (a collision), as the model does
    channels = (model.ChannelSettings(), model.ChannelSettings(delay=3),
                model.ChannelSettings(), model.ChannelSettings(role="reference"))
    settings = model.CoreSettings(channels=4, fine_bits=f, window=9, channel=channels,
                                  herald_rules=rules)
    start = 200 + int(rng.integers(0, 50))
    events = stimulus(rng, settings, start, 600, 0.2, 0)
    # the reference's edges land inside detector windows too (97 cycles apart, 20 % busy)
    roles = [Role.DETECTOR, Role.DETECTOR, Role.SYNC, Role.REFERENCE]
    tags, heralds, counters = run_core(settings, events, start, 2, gates=False, roles=roles)
    expected = model.simulate(events, [np.zeros(0, np.int64)] * 4, settings)
    assert tags == [tuple(x) for x in expected.tags.tolist()]
    assert heralds == [tuple(h) for h in expected.heralds.tolist()]
    assert counters["singles"] == expected.singles.tolist()
    assert counters["heralds"] == expected.herald_counts.tolist()
    assert counters["gated_out"] == [0] * 4
    assert counters["delay_dropped"] == counters["delay_lost"] == expected.delay_dropped.tolist()
    assert expected.delay_dropped[1] >= 3            # collisions happened
    # the stimulus holds what the test is about: markers, and heralds of both rules
    assert (expected.tags["channel"] == 3).sum() >= 5
    assert np.bincount(expected.heralds["rule"], minlength=2).min() >= 2
    # a core without the role would put the reference's events into windows: the model of
    # that differs on this stimulus (so the comparison above can fail)
    plain = model.CoreSettings(channels=4, fine_bits=f, window=9, herald_rules=rules,
                               channel=channels[:3] + (model.ChannelSettings(),))
    other = model.simulate(events, [np.zeros(0, np.int64)] * 4, plain)
    assert [tuple(h) for h in other.heralds.tolist()] != heralds or \
        other.singles.tolist() != counters["singles"]


@pytest.mark.slow      # 23 s in the Amaranth simulator; the fast tier keeps the F = 0/2/4 cores
def test_dark_count_heralds_with_gates_match_the_prediction():
    """The done-when of issue 13 item 2 on the in-process virtual board (``CoreSimulation``,
    the core in the Amaranth simulator, seeded test signal): the BSM source with no photon
    events, so four detectors see dark counts only (p = 0.03 per cycle each), the sync every 40
    cycles on channel 4, every detector gated to offsets 4..27, the two exact psi- rules. The
    false heralds per rule match ``expected_heralds_per_attempt`` times the attempts within
    3 sigma, and the run is bit-exact against the model (tags, heralds with attempt and
    offset, counters)."""
    from heraldry.model import testsignal as tsmodel
    from heraldry.sim.harness import CoreSimulation

    period, p = 40, 0.03
    psi_minus = [model.HeraldRule(0b1001, 0b0110, "exact", 0),
                 model.HeraldRule(0b0110, 0b1001, "exact", 0)]
    acq = Acquisition(channels=5, rules=2, window_bins=4, test_signal="bsm",
                      period_cycles=period, bsm_event_probability=0.0, dark_rate_hz=p * 100e6,
                      seed=2026, herald_rules=psi_minus,
                      roles=["detector"] * 4 + ["sync"], gates_bins=[(4, 24)] * 4 + [None])
    cycles = 40000
    sim = CoreSimulation(channels=5, rules=2, gates=True)
    run = sim.acquire(acq.gateware_config(), cycles)
    cmap = sim.map
    counters = {name: run.counters[list(cmap.range(name))].tolist()
                for name in ("singles", "heralds", "gated_out")}
    records = [protocol.decode_record(raw, 0, gates=True) for raw in run.records]
    heralds = [(r["time"], r["rule"], r["pattern"], r["attempt"], r["offset"])
               for r in records if r["kind"] == Kind.HERALD]

    # Against the model, event for event.
    settings = acq.model_settings()
    ts = acq.test_signal_settings()
    ks = tsmodel.generate(ts, run.start_time - run.test_origin + cycles + 10)
    rise = [k + run.test_origin - 1 for k in ks]       # GenericPHY latency 1
    gate = [(run.start_time - 1, run.start_time - 1 + cycles)]
    expected = model.simulate(rise, [np.zeros(0, np.int64)] * 5, settings, gate=gate)
    tags = [(r["time"], r["channel"]) for r in records if r["kind"] == Kind.TAG]
    assert tags == [tuple(x) for x in expected.tags.tolist()]
    assert heralds == [tuple(h) + tuple(s) for h, s in zip(expected.heralds.tolist(),
                                                            expected.herald_sync.tolist())]
    assert counters["singles"] == expected.singles.tolist()
    assert counters["gated_out"] == expected.gated_out.tolist()

    # Against the prediction from the dark-count probability and the duty factor.
    attempts = counters["singles"][4]
    assert abs(attempts - cycles / period) <= 1
    q = acq.dark_threshold() / 2**32                    # the generator's exact probability
    per_attempt = model.expected_heralds_per_attempt([q] * 4 + [0], settings, period)
    predicted = per_attempt * attempts
    got = np.array(counters["heralds"])
    assert np.all(np.abs(got - predicted) < 3 * np.sqrt(predicted)), (got, predicted)
    assert predicted.min() > 50
    # The gates kept 60 % of the darks (duty factor 24/40) and dropped the rest.
    duty = model.gate_duty((4, 24), period)
    kept = np.array(counters["singles"][:4])
    total = kept + np.array(counters["gated_out"][:4])
    assert np.all(np.abs(kept - duty * total) < 3 * np.sqrt(duty * (1 - duty) * total))
