"""cocotb testbenches of the converted :class:`~heraldry.gateware.core.TaggerCore` (Verilator).

Run by ``tests/cocotb/test_core_cocotb.py``; not collected by pytest itself. The scoreboard is the
reference model (:mod:`heraldry.model`): every expectation is computed from pin edge times and
the configuration, never from the gateware under test.

Time in this testbench: the clock starts high at simulation time 0 with period ``PERIOD_PS``, so
rising edges are at multiples of ``PERIOD_PS``. Pins are driven at arbitrary picoseconds, never
on a clock edge. By docs/architecture.md an edge's bin is the value of ``now`` in the cycle after
the first rising clock edge that samples it; in cocotb time: an edge at ``t`` with
``(k - 1) * P < t < k * P`` gets the value ``now`` shows (at ``ReadOnly``) after the edge at
``k * P``, i.e. one more than ``now`` reads while the pin changes (:meth:`CoreBench.bin_of`;
checked against the counter itself by :func:`edge_bins_follow_the_definition`).
"""

import math
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge, Timer

from heraldry import model, protocol
from heraldry.gateware.core import TaggerCore
from heraldry.gateware.phy import GenericPHY
from heraldry.host.config import Acquisition
from heraldry.model import testsignal as tsmodel
from heraldry.protocol import Kind, LossCause

#: Clock period (100 MHz).
PERIOD_PS = 10_000
#: Cycles from an edge's bin cycle to the cycle its PHY reports it (the core converts the
#: generic PHY).
PHY_LATENCY = GenericPHY.latency
#: Cycles from an edge's bin cycle to the cycle its (undelayed) event reaches the coincidence
#: unit: PHY, then the input-stage register and the register behind the delay lines
#: (``TaggerCore.latency``).
CORE_LATENCY = PHY_LATENCY + TaggerCore.PIPELINE
#: Cycles from a firing's bin cycle to the first cycle its herald pin is high: the herald
#: register adds one clock edge after the coincidence unit (``model.herald_pin``'s ``latency``).
HERALD_PIN_LATENCY = CORE_LATENCY + 1
#: Rising clock edges from a pin edge up to and including the one after which the herald pin is
#: high: the edge that samples the pin (synchroniser flop 1; the bin is `now` after it), then
#: ``HERALD_PIN_LATENCY`` more (flop 2 + combinational edge detect, input-stage register,
#: delay-line output register, herald register) = 1 + 1 + 1 + 1 + 1.
HERALD_EDGES = 1 + HERALD_PIN_LATENCY
#: The figure docs/architecture.md states ("the herald pin rises at the 5th rising clock edge").
DOCUMENTED_HERALD_EDGES = 5


def _now_ps():
    return round(get_sim_time("ps"))


def _pulse_ok(pulses, rise, fall):
    """Whether pulse ``(rise, fall)`` (ps) fits among ``pulses`` of one pin: every level lasts
    longer than a period, so each level is sampled by at least one clock edge."""
    if fall - rise <= PERIOD_PS:
        return False
    return all(rise - f > PERIOD_PS or r - fall > PERIOD_PS for r, f in pulses)


def _off_edge(t):
    """Move ``t`` (ps) off a clock edge: an edge and a pin change at the same instant race."""
    return t + 1 if t % PERIOD_PS == 0 else t


class CoreBench:
    """Drives the core's ports like a host does and logs what it emits, cycle by cycle.

    Members filled by the monitor (one entry per clock cycle, read at ``ReadOnly`` after the
    rising edge that starts the cycle): ``records`` (``(now, raw)`` of every record handed over;
    ``ready`` is held high) and ``heralds`` (``(now, herald bits)``).
    """

    def __init__(self, dut, gates=False):
        self.dut = dut
        self.gates = gates       # a TaggerCore(gates=True): herald records carry attempt/offset
        self.channels = len(dut.pins)
        self.rules = len(dut.herald)
        self.map = protocol.CounterMap(self.channels, self.rules)
        self.layout = protocol.config_layout(self.channels, self.rules)
        self.records = []
        self.heralds = []
        self.pin_state = 0
        self.anchor = None       # (time of a rising edge in ps, `now` after it)

    async def start(self):
        dut = self.dut
        Clock(dut.clk, PERIOD_PS, unit="ps").start(start_high=True)
        dut.pins.value = 0
        dut.run.value = 0
        dut.clear.value = 0
        dut.records__ready.value = 1
        dut.counter_addr.value = 0
        dut["config"].value = 0
        dut.rst.value = 1
        for _ in range(2):
            await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
        dut.rst.value = 0
        await RisingEdge(dut.clk)
        edge_time = _now_ps()
        await ReadOnly()
        assert edge_time % PERIOD_PS == 0, f"rising edge at {edge_time} ps, not on the grid"
        self.anchor = (edge_time, dut.now.value.to_unsigned())
        cocotb.start_soon(self._monitor())

    async def _monitor(self):
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            now = dut.now.value.to_unsigned()
            if dut.records__valid.value:
                self.records.append((now, dut.records__payload.value.to_unsigned()))
            self.heralds.append((now, dut.herald.value.to_unsigned()))

    # -- time ---------------------------------------------------------------------------------

    def bin_of(self, t):
        """Bin of a pin edge at ``t`` ps (not on a clock edge): ``now`` after the first rising
        edge at or after ``t``."""
        edge_time, now = self.anchor
        assert t % PERIOD_PS, f"pin edge at {t} ps coincides with a clock edge"
        return now + math.ceil((t - edge_time) / PERIOD_PS)

    def time_of_cycle(self, now):
        """Time (ps) of the rising edge that starts the cycle in which ``now`` reads ``now``."""
        edge_time, anchor_now = self.anchor
        return edge_time + (now - anchor_now) * PERIOD_PS

    async def now_at_falling_edge(self):
        await FallingEdge(self.dut.clk)
        return self.dut.now.value.to_unsigned()

    # -- host operations (all at falling edges, away from the sampling edges) ---------------

    async def configure(self, config):
        await FallingEdge(self.dut.clk)
        self.dut["config"].value = config.as_bits()

    async def clear(self):
        """Strobe ``clear`` for one cycle, wait for ``busy`` to fall. Returns the test signal's
        cycle ``k = 0`` as a ``now`` value (the first cycle with ``clear`` low again)."""
        dut = self.dut
        cleared_in = await self.now_at_falling_edge()
        dut.clear.value = 1
        await FallingEdge(dut.clk)
        dut.clear.value = 0
        while True:
            await FallingEdge(dut.clk)
            if not dut.busy.value:
                break
        return cleared_in + 1

    async def set_run(self, level, at_now=None):
        """Set ``run`` at the falling edge of the cycle where ``now == at_now`` (default: the
        next one). Returns that ``now``: ``run`` has the new level from this cycle on."""
        while True:
            now = await self.now_at_falling_edge()
            if at_now is None or now >= at_now:
                break
        assert at_now is None or now == at_now, f"missed cycle {at_now}, now {now}"
        self.dut.run.value = level
        return now

    async def drive(self, edges, log=None):
        """Drive pin edges: ``edges`` is a list of ``(time_ps, channel, level)``, all in the
        future and off the clock edges; same-time edges change the pins together. With a list
        ``log``, append ``(time_ps, now)`` for every change (``now`` as it reads then)."""
        dut = self.dut
        by_time = {}
        for t, c, level in edges:
            by_time.setdefault(int(t), []).append((c, level))
        for t in sorted(by_time):
            delta = t - _now_ps()
            assert delta > 0, f"edge at {t} ps is in the past"
            await Timer(delta, unit="ps")
            for c, level in by_time[t]:
                if level:
                    self.pin_state |= 1 << c
                else:
                    self.pin_state &= ~(1 << c)
            dut.pins.value = self.pin_state
            if log is not None:
                log.append((t, dut.now.value.to_unsigned()))

    async def drain(self, quiet_cycles, at_least=0):
        """Wait ``at_least`` cycles, then until no record has been valid for ``quiet_cycles``."""
        dut = self.dut
        idle = 0
        cycles = 0
        while cycles < at_least or idle < quiet_cycles:
            await RisingEdge(dut.clk)
            await ReadOnly()
            idle = 0 if dut.records__valid.value else idle + 1
            cycles += 1

    async def read_counters(self):
        """Every counter through the read port (data valid one cycle after the address)."""
        dut = self.dut
        values = np.zeros(self.map.size, np.int64)
        for address in range(self.map.size):
            await FallingEdge(dut.clk)
            dut.counter_addr.value = address
            await RisingEdge(dut.clk)
            await ReadOnly()
            values[address] = dut.counter_data.value.to_unsigned()
        return {name: values[list(self.map.range(name))] for name in
                ("singles", "patterns", "heralds", "delay_dropped", "merger_dropped",
                 "herald_dropped", "coincidence_dropped", "gated_out", "filtered",
                 "filter_dropped")}

    # -- decoded output -----------------------------------------------------------------------

    def decoded(self):
        return [protocol.decode_record(raw, gates=self.gates) for _, raw in self.records]

    def herald_intervals(self):
        """Per rule, half-open intervals of ``now`` values in which the herald pin was high."""
        pins = []
        for rule in range(self.rules):
            intervals, start = [], None
            for now, bits in self.heralds:
                high = bits >> rule & 1
                if high and start is None:
                    start = now
                elif not high and start is not None:
                    intervals.append((start, now))
                    start = None
            assert start is None, f"herald pin {rule} still high at the end of the log"
            pins.append(intervals)
        return pins


def _tags(records):
    """Streamed tags as a ``model.TAG_DTYPE`` array, in stream order."""
    tags = [(r["time"], r["channel"]) for r in records if r["kind"] == Kind.TAG]
    return np.array(tags, model.TAG_DTYPE)


def _check_against(bench, records, counters, expected, settings):
    """Compare everything the core emitted with a model :class:`~heraldry.model.Result`."""
    rules = len(settings.herald_rules)
    tags = [(r["time"], r["channel"]) for r in records if r["kind"] == Kind.TAG]
    assert tags == [(int(t), int(c)) for t, c in expected.tags[["time", "channel"]].tolist()], \
        "streamed tags (in stream order) differ from the model"
    heralds = [(r["time"], r["rule"], r["pattern"]) for r in records if r["kind"] == Kind.HERALD]
    assert heralds == [tuple(map(int, h)) for h in expected.heralds.tolist()], \
        "herald records differ from the model"
    coincidences = [(r["time"], r["pattern"]) for r in records
                    if r["kind"] == Kind.COINCIDENCE]
    assert coincidences == [tuple(map(int, c)) for c in expected.coincidence_records.tolist()], \
        "coincidence records differ from the model"
    lost = {}
    for r in records:
        if r["kind"] == Kind.LOSS:
            key = (r["cause"], r["index"])
            lost[key] = lost.get(key, 0) + r["count"]
    delay_lost = [lost.pop((LossCause.DELAY_FULL, c), 0) for c in range(settings.channels)]
    assert delay_lost == expected.delay_dropped.tolist()
    filter_lost = [lost.pop((LossCause.FILTER_FULL, c), 0) for c in range(settings.channels)]
    assert filter_lost == expected.filter_dropped.tolist(), "FILTER_FULL loss records"
    assert not lost, f"unexpected loss records {lost}"

    assert counters["singles"].tolist() == expected.singles.tolist()
    assert counters["patterns"].tolist() == expected.patterns[1:].tolist()
    assert counters["heralds"][:rules].tolist() == expected.herald_counts.tolist()
    assert not counters["heralds"][rules:].any()
    assert counters["delay_dropped"].tolist() == expected.delay_dropped.tolist()
    for name in ("gated_out", "filtered", "filter_dropped"):
        assert counters[name].tolist() == getattr(expected, name).tolist(), \
            f"{name} counters differ from the model"
    for name in ("merger_dropped", "herald_dropped", "coincidence_dropped"):
        assert not counters[name].any(), f"{name} = {counters[name].tolist()}"

    pins = model.herald_pin(expected.heralds, settings.herald_width, HERALD_PIN_LATENCY,
                            rules=bench.rules, herald_rules=settings.herald_rules)
    assert bench.herald_intervals() == pins, "herald pin waveforms differ from the model"


# -- stimulus -------------------------------------------------------------------------------------

def _random_pulses(rng, channels, spans, mean_gap, pulses):
    """Add Poisson-ish correlated pulses (ps) to ``pulses`` (per channel lists of (rise, fall))
    within the ``(first, last)`` time ``spans``; returns how many were added.

    Emissions arrive with exponential gaps (mean ``mean_gap`` ps); each hits a random group of
    channels (singles, pairs, triples, all four) with a jitter of up to 2.5 cycles per channel
    and a width of 1..3 cycles. Hits that would violate :func:`_pulse_ok` are skipped.
    """
    groups = [(0,), (1,), (2,), (3,), (0, 1), (0, 1), (2, 3), (2, 3), (1, 2), (0, 1, 2),
              (0, 1, 2, 3)]
    added = 0
    for first, last in spans:
        t = first
        while True:
            t += int(rng.expovariate(1 / mean_gap))
            if t > last:
                break
            for c in rng.choice(groups):
                if c >= channels:
                    continue
                rise = _off_edge(t + rng.randrange(0, 25 * PERIOD_PS // 10))
                fall = _off_edge(rise + rng.randrange(PERIOD_PS + 1, 3 * PERIOD_PS))
                if fall < last and _pulse_ok(pulses[c], rise, fall):
                    pulses[c].append((rise, fall))
                    added += 1
    return added


def _edges(pulses):
    return [(t, c, level) for c, ps in enumerate(pulses) for r, f in ps
            for t, level in ((r, 1), (f, 0))]


def _edge_bins(bench, pulses):
    rise = [np.array(sorted(bench.bin_of(r) for r, _ in ps), np.int64) for ps in pulses]
    fall = [np.array(sorted(bench.bin_of(f) for _, f in ps), np.int64) for ps in pulses]
    return rise, fall


# -- tests --------------------------------------------------------------------------------------

@cocotb.test()
async def edge_bins_follow_the_definition(dut):
    """Directed: pin edges at sub-cycle offsets from 1 ps to P - 1 ps after a rising clock edge,
    rising and falling, on every channel. Each tag's time must be the bin of the definition
    (``now`` after the first rising edge that samples the edge), which must also equal one more
    than ``now`` reads while the pin changes."""
    bench = CoreBench(dut)
    await bench.start()
    edges = ["rising", "falling", "both", "rising"][:bench.channels]
    acq = Acquisition(channels=bench.channels, rules=bench.rules, test_signal="off",
                      window_bins=1, edges=edges)
    await bench.configure(acq.gateware_config())
    await bench.clear()
    started = await bench.set_run(1)

    offsets = [1, 2, PERIOD_PS // 4, PERIOD_PS // 2, 3 * PERIOD_PS // 4, PERIOD_PS - 2,
               PERIOD_PS - 1]
    # Pulse j of channel c rises offsets[(j + c) % 7] after the edge of cycle base + 6j and
    # falls offsets[(j + 2c + 3) % 7] after the edge 2 cycles later.
    base = started + 4
    pulses = [[] for _ in range(bench.channels)]
    for c in range(bench.channels):
        for j in range(2 * len(offsets)):
            start = bench.time_of_cycle(base + 6 * j)
            rise = start + offsets[(j + c) % len(offsets)]
            fall = start + 2 * PERIOD_PS + offsets[(j + 2 * c + 3) % len(offsets)]
            pulses[c].append((rise, fall))

    # Direct check of the mapping: while the pin changes, `now` reads one less than its bin.
    edges_seen = []
    await bench.drive(_edges(pulses), log=edges_seen)
    assert len(edges_seen) == 2 * sum(len(p) for p in pulses)
    for t, now in edges_seen:
        assert bench.bin_of(t) == now + 1, f"edge at {t} ps: bin {bench.bin_of(t)}, now {now}"

    # The last edges are stamped after the cycle they are driven in: keep the gate open for them.
    stopped = await bench.set_run(0, at_now=edges_seen[-1][1] + 4)
    await bench.drain(quiet_cycles=32, at_least=16)
    counters = await bench.read_counters()

    settings = acq.model_settings()
    rise, fall = _edge_bins(bench, pulses)
    gate = [(started - PHY_LATENCY, stopped - PHY_LATENCY)]
    expected = model.simulate(rise, fall, settings, gate=gate)
    assert expected.tags.size == sum(2 if e == "both" else 1 for e in edges) * 2 * len(offsets)
    _check_against(bench, bench.decoded(), counters, expected, settings)


@cocotb.test()
async def random_pins_against_model(dut):
    """Random correlated pulses on 4 channels at random picosecond times (a few hundred events),
    plus hand-written boundary cases, with delays, dead time, mixed edge modes, a 5-bin window,
    two herald rules and coincidence records; every output against ``model.simulate``.

    Boundary cases: all channels switching at the same picosecond; edges 1 ps after and 1 ps
    before a clock edge; delayed times exactly ``W - 1`` and ``W`` bins after a window's t0;
    dead-time spacings of ``dead_time - 1`` and ``dead_time`` bins; events one bin either side
    of both ends of the run gate.
    """
    rng = random.Random(20240611)
    bench = CoreBench(dut)
    await bench.start()
    n = bench.channels
    assert n == 4
    window, delays, dead = 5, [0, 3, 7, 2], [0, 0, 4, 0]
    acq = Acquisition(channels=n, rules=bench.rules, test_signal="off", window_bins=window,
                      delays_bins=delays, dead_time_bins=dead,
                      edges=["rising", "both", "rising", "falling"],
                      herald_masks=[0b0011, 0b1100], herald_width=3,
                      coincidence_record_mask=(1 << 0b0011) | (1 << 0b0111) | (1 << 0b1111))
    settings = acq.model_settings()
    await bench.configure(acq.gateware_config())
    await bench.clear()
    n0 = await bench.now_at_falling_edge()
    run_from = n0 + 40
    run_cycles = 1500
    run_to = run_from + run_cycles
    gate_from, gate_to = run_from - PHY_LATENCY, run_to - PHY_LATENCY

    def at(b, offset):
        """Time of an edge with bin ``b``, ``offset`` ps after the previous clock edge."""
        assert 0 < offset < PERIOD_PS
        return bench.time_of_cycle(b - 1) + offset

    pulses = [[] for _ in range(n)]

    def add(c, rise, fall):
        assert _pulse_ok(pulses[c], rise, fall), (c, rise, fall)
        pulses[c].append((rise, fall))

    P = PERIOD_PS
    # Run gate: bins gate_from - 1 (rejected) and gate_from (accepted), likewise at the end.
    add(0, at(gate_from - 1, 7000), at(gate_from + 1, 3000))
    add(2, at(gate_from, 1), at(gate_from + 2, 5000))
    add(0, at(gate_to - 1, P - 1), at(gate_to + 1, 2000))
    add(2, at(gate_to, 4000), at(gate_to + 2, 1))
    # Simultaneous: all four pins rise at one picosecond and fall together 1.5 cycles later.
    b = gate_from + 40
    for c in range(n):
        add(c, at(b, 4321), at(b, 4321) + 3 * P // 2)
    # 1 ps after / 1 ps before clock edges on every channel.
    b = gate_from + 60
    for c in range(n):
        add(c, at(b + 4 * c, 1), at(b + 4 * c + 2, P - 1))
    # Window edges on delayed times: t0 on channel 0 (delay 0) at D; channel 3 (falling edge,
    # delay 2) at D + W - 1 joins; channel 1 (both, delay 3) rising at D + W opens the next.
    d1 = d = gate_from + 100
    add(0, at(d, 2500), at(d + 3, 100))
    add(3, at(d - 8, 600), at(d + window - 1 - delays[3], 9000))
    add(1, at(d + window - delays[1], 5555), at(d + window - delays[1] + 4, 5555))
    # Same again with W - 1 -> W: channel 3 at D' + W opens a window, channel 2 at D' + W - 1.
    d2 = d = gate_from + 130
    add(0, at(d, 8000), at(d + 2, 8000))
    add(2, at(d + window - 1 - delays[2], 1234), at(d + window - delays[2] + 2, 1))
    add(3, at(d - 10, 50), at(d + window - delays[3], 50))
    # Dead time 4 on channel 2: rises at B, B + 3 (discarded), B + 6, B + 10 (exactly 4 later).
    dead_from = b = gate_from + 170
    for k, step in enumerate((0, 3, 6, 10)):
        add(2, at(b + step, 3000 + 1000 * k), at(b + step + 1, 3000 + 1000 * k + 500))
    manual = sum(len(p) for p in pulses)

    # Random pulses before and after the hand-written ones, which they leave alone (the ones
    # before the gate opens and after it closes are gated out by both the core and the model).
    spans = [(bench.time_of_cycle(n0 + 8), bench.time_of_cycle(gate_from + 28)),
             (bench.time_of_cycle(gate_from + 195), bench.time_of_cycle(run_to + 20))]
    added = _random_pulses(rng, n, spans, 5 * PERIOD_PS, pulses)
    assert added >= 300, added

    driver = cocotb.start_soon(bench.drive(_edges(pulses)))
    started = await bench.set_run(1, at_now=run_from)
    stopped = await bench.set_run(0, at_now=run_to)
    await driver
    await bench.drain(quiet_cycles=2 * n + bench.rules + 16, at_least=max(delays) + window + 16)
    counters = await bench.read_counters()

    rise, fall = _edge_bins(bench, pulses)
    expected = model.simulate(rise, fall, settings, gate=[(started - PHY_LATENCY,
                                                             stopped - PHY_LATENCY)])
    dut._log.info("%d hand-written + %d random pulses -> %d tags, %d windows, %d heralds",
                  manual, added, expected.tags.size, len(expected.windows),
                  expected.heralds.size)
    # The stimulus exercised what it is meant to (a check of the test, not of the core).
    windows = dict(zip(expected.windows.t0.tolist(), expected.windows.pattern.tolist()))
    assert windows[d1] == 0b1001 and windows[d1 + window] & 0b0010
    assert windows[d2] == 0b0101 and windows[d2 + window] & 0b1000
    tags = set(expected.tags.tolist())
    assert all((dead_from + step + delays[2], 2) in tags for step in (0, 6, 10))
    assert (dead_from + 3 + delays[2], 2) not in tags
    assert (gate_from - 1, 0) not in tags and (gate_from + delays[2], 2) in tags
    assert (gate_to - 1, 0) in tags and (gate_to + delays[2], 2) not in tags
    assert expected.tags.size > 300
    assert expected.patterns[0b0011] > 5 and expected.patterns[0b1100] > 5
    assert (expected.herald_counts > 5).all() and expected.coincidence_records.size > 5
    _check_against(bench, bench.decoded(), counters, expected, settings)


@cocotb.test()
async def herald_rules_against_model(dut):
    """Herald rules with veto masks, early and exact, two on one pin: psi- (exact, rules 0 and 1
    on pin 0: D0&D3 or D1&D2 with no third click) as the issue's Bell-state herald, against
    ``model.simulate`` on random correlated pulses (pairs, triples, all four) plus one window
    of each psi- pattern with and without a third click; every record, counter and pin."""
    rng = random.Random(20261204)
    bench = CoreBench(dut)
    await bench.start()
    n = bench.channels
    window = 4
    rules = [model.HeraldRule(0b1001, 0b0110, "exact", 0),
             model.HeraldRule(0b0110, 0b1001, "exact", 0)]
    acq = Acquisition(channels=n, rules=bench.rules, test_signal="off", window_bins=window,
                      herald_rules=rules, herald_width=2)
    settings = acq.model_settings()
    await bench.configure(acq.gateware_config())
    await bench.clear()
    n0 = await bench.now_at_falling_edge()
    run_from = n0 + 40
    run_to = run_from + 1500
    gate_from = run_from - PHY_LATENCY

    pulses = [[] for _ in range(n)]
    # psi- patterns 1001 and 0110, then with a third click (1011, 0111, 1101, 1110) and all four:
    # clicks one bin apart from the window's first bin on.
    manual = [0b1001, 0b0110, 0b1011, 0b0111, 0b1101, 0b1110, 0b1111]
    for k, pattern in enumerate(manual):
        b = gate_from + 20 + 12 * k
        for j, c in enumerate(c for c in range(n) if pattern >> c & 1):
            rise = bench.time_of_cycle(b + j - 1) + 2500
            pulses[c].append((rise, rise + 3 * PERIOD_PS // 2))
    spans = [(bench.time_of_cycle(gate_from + 20 + 12 * len(manual) + 10),
              bench.time_of_cycle(run_to - 20))]
    added = _random_pulses(rng, n, spans, 4 * PERIOD_PS, pulses)
    assert added >= 300, added

    driver = cocotb.start_soon(bench.drive(_edges(pulses)))
    started = await bench.set_run(1, at_now=run_from)
    stopped = await bench.set_run(0, at_now=run_to)
    await driver
    await bench.drain(quiet_cycles=2 * n + bench.rules + 16, at_least=window + 16)
    counters = await bench.read_counters()

    rise, fall = _edge_bins(bench, pulses)
    expected = model.simulate(rise, fall, settings, gate=[(started - PHY_LATENCY,
                                                             stopped - PHY_LATENCY)])
    # The hand-written windows: only 1001 and 0110 herald, at their windows' ends.
    first = [(int(t), int(r), int(p)) for t, r, p in expected.heralds.tolist()][:2]
    assert first == [(gate_from + 20 + window, 0, 0b1001), (gate_from + 32 + window, 1, 0b0110)]
    assert set(expected.heralds["pattern"].tolist()) == {0b1001, 0b0110}
    assert (expected.herald_counts >= 3).all()
    assert expected.patterns[[0b1011, 0b0111, 0b1101, 0b1110, 0b1111]].min() >= 1
    _check_against(bench, bench.decoded(), counters, expected, settings)
    assert bench.herald_intervals()[1] == []


@cocotb.test()
async def herald_latency_is_constant(dut):
    """Herald rule 0b011, channel 1 completing it 2..3 cycles after channel 0: count rising
    clock edges from channel 1's pin edge up to and including the one after which ``herald[0]``
    is high, for pin edges at sub-cycle offsets from 1 ps to P - 1 ps and several pulse widths.

    Expected: ``HERALD_EDGES`` = 5 every time (the edge that samples the pin in synchroniser flop
    1, then flop 2 with combinational edge detection, the input-stage register, the register
    behind the delay lines and the herald register), equal to docs/architecture.md's figure;
    and the pin stays high exactly ``herald_width`` cycles. Each firing's herald record carries
    channel 1's bin.
    """
    assert HERALD_EDGES == DOCUMENTED_HERALD_EDGES <= 5
    rng = random.Random(77)
    bench = CoreBench(dut)
    await bench.start()
    dut = bench.dut
    offsets = [1, PERIOD_PS - 1, 2, PERIOD_PS - 2] + [rng.randrange(1, PERIOD_PS)
                                                      for _ in range(20)]
    widths = [1, 2, 3, 5, 8]
    measured, expected_records = [], []
    for trial, offset in enumerate(offsets):
        width = widths[trial % len(widths)]
        acq = Acquisition(channels=bench.channels, rules=bench.rules, test_signal="off",
                          window_bins=8, herald_masks=[0b011], herald_width=width)
        await bench.set_run(0)
        await bench.configure(acq.gateware_config())
        now = await bench.set_run(1)
        gap = rng.choice((2, 3))
        t0 = bench.time_of_cycle(now + 2) + rng.randrange(1, PERIOD_PS)
        t1 = bench.time_of_cycle(now + 2 + gap) + offset
        await Timer(t0 - _now_ps(), unit="ps")
        dut.pins.value = 0b01
        await Timer(t1 - _now_ps(), unit="ps")
        assert not dut.herald.value.to_unsigned(), f"trial {trial}: herald high too early"
        dut.pins.value = 0b11
        expected_records.append(bench.bin_of(t1))
        edges = 0
        while True:
            await RisingEdge(dut.clk)
            edges += 1
            await ReadOnly()
            if dut.herald.value.to_unsigned() & 1:
                break
            assert edges < 10, f"trial {trial}: no herald after {edges} edges"
        high = 1
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if not dut.herald.value.to_unsigned() & 1:
                break
            high += 1
            assert high <= width, f"trial {trial}: herald high for more than {width} cycles"
        assert high == width, f"trial {trial}: herald high {high} cycles, width {width}"
        await FallingEdge(dut.clk)
        dut.pins.value = 0
        measured.append(edges)
        # Let the window (8 bins) close before the next trial.
        for _ in range(12):
            await RisingEdge(dut.clk)

    dut._log.info("herald latency in rising edges, per trial: %s", measured)
    assert set(measured) == {HERALD_EDGES}, f"herald latency varies or is wrong: {measured}"
    await bench.set_run(0)
    await bench.drain(quiet_cycles=32)
    heralds = [r for r in bench.decoded() if r["kind"] == Kind.HERALD]
    assert [(r["time"], r["rule"], r["pattern"]) for r in heralds] == \
        [(b, 0, 0b011) for b in expected_records]


@cocotb.test()
async def test_signal_counters_match_streamed_tags(dut):
    """Built-in photon-pair test signal (no pins): the hardware counters, herald and coincidence
    records and herald pins must equal ``model.counts_from_tags`` of the streamed tags, and the
    tags must be the bit-exact test-signal model's (``heraldry.model.testsignal``)."""
    bench = CoreBench(dut)
    await bench.start()
    n = bench.channels
    cycles = 3000
    acq = Acquisition(channels=n, rules=bench.rules, test_signal="pairs", pair_rate_hz=5e6,
                      efficiency=0.6, dark_rate_hz=3e5, pair_delay_bins=5,
                      delays_bins=[5, 0, 0, 2][:n], window_bins=2,
                      herald_masks=[0b0011, 0b0110][:bench.rules], herald_width=2,
                      coincidence_record_mask=(1 << 0b0011) | (1 << 0b0111), seed=11)
    settings = acq.model_settings()
    await bench.configure(acq.gateware_config())
    origin = await bench.clear()
    started = await bench.set_run(1)
    stopped = await bench.set_run(0, at_now=started + cycles)
    await bench.drain(quiet_cycles=2 * n + bench.rules + 16, at_least=5 + 2 + 16)
    counters = await bench.read_counters()
    records = bench.decoded()

    tags = _tags(records)
    from_tags = model.counts_from_tags(tags, settings)
    _check_against(bench, records, counters, from_tags, settings)

    sources = tuple(s.name.lower() for s in acq.sources())
    ts = tsmodel.TestSignalSettings(
        seed=acq.seed, period=0, pair_threshold=acq.pair_threshold(),
        eta_a=acq.efficiency_threshold(), eta_b=acq.efficiency_threshold(),
        pair_delay=acq.pair_delay_cycles(), dark=(acq.dark_threshold(),) * n, sources=sources)
    ks = tsmodel.generate(ts, stopped - origin + 8)
    rise = [k + origin - PHY_LATENCY for k in ks]
    fall = [np.zeros(0, np.int64)] * n
    bit_exact = model.simulate(rise, fall, settings,
                               gate=[(started - PHY_LATENCY, stopped - PHY_LATENCY)])
    np.testing.assert_array_equal(tags, bit_exact.tags)
    assert counters["patterns"][0b0011 - 1] > 20 and counters["heralds"][0] > 20


@cocotb.test()
async def bsm_signal_psi_minus_heralds(dut):
    """The test signal's BSM source (D0..D3 on channels 0..3, dark counts) with the two exact
    psi- rules on pin 0: every streamed tag, herald and coincidence record, counter and herald
    pin equals the model fed the bit-exact source model (``heraldry.model.testsignal``); the
    rules fire, and three-folds happen that they do not fire on."""
    from heraldry.host.config import parse_herald
    bench = CoreBench(dut)
    await bench.start()
    n = bench.channels
    assert n >= 4 and bench.rules >= 2
    cycles = 4000
    rules = [parse_herald(text, n, bench.rules)
             for text in ("D0&D3&!D1&!D2,exact,pin=0", "D1&D2&!D0&!D3,exact,pin=0")]
    acq = Acquisition(channels=n, rules=bench.rules, test_signal="bsm", period_cycles=20,
                      bsm_offset_cycles=7, bsm_event_probability=0.8, bsm_psi_minus=0.5,
                      efficiency=0.8, dark_rate_hz=3e6, window_bins=2, herald_rules=rules,
                      herald_width=2, coincidence_record_mask=1 << 0b1011, seed=13)
    settings = acq.model_settings()
    await bench.configure(acq.gateware_config())
    origin = await bench.clear()
    started = await bench.set_run(1)
    stopped = await bench.set_run(0, at_now=started + cycles)
    await bench.drain(quiet_cycles=2 * n + bench.rules + 16, at_least=5 + 2 + 16)
    counters = await bench.read_counters()
    records = bench.decoded()

    ks = tsmodel.generate(acq.test_signal_settings(), stopped - origin + 8)
    rise = [k + origin - PHY_LATENCY for k in ks]
    fall = [np.zeros(0, np.int64)] * n
    bit_exact = model.simulate(rise, fall, settings,
                               gate=[(started - PHY_LATENCY, stopped - PHY_LATENCY)])
    _check_against(bench, records, counters, bit_exact, settings)
    assert counters["heralds"][0] > 20 and counters["heralds"][1] > 20
    three_folds = sum(int(counters["patterns"][p - 1]) for p in (0b1011, 0b0111, 0b1101, 0b1110))
    assert three_folds > 5
