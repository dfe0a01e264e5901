"""UART: transmitter bit timing against ideal edges, receiver against an independent line model,
TX -> RX loopback at non-integer clock/baud ratios with random back-pressure."""

import gc
import warnings
from fractions import Fraction

import numpy as np
import pytest
from amaranth.hdl import Module, UnusedElaboratable
from amaranth.sim import Simulator

from heraldry.gateware.uart import UARTRx, UARTTx

# (clock_hz, baud): 8.33, 16 and 33.3 cycles per bit, and the smallest ratio allowed (4).
RATES = [(100_000_000, 12_000_000), (48_000_000, 3_000_000), (100_000_000, 3_000_000),
         (40_000_000, 10_000_000)]


def frame_bits(byte):
    """Line levels of one 8N1 frame: start, data LSB first, stop."""
    return [0] + [(byte >> b) & 1 for b in range(8)] + [1]


def line_model(frames, period, length, phase=Fraction(0)):
    """Per-cycle samples of an ideal line: ``frames`` is ``[(start, byte)]`` with real-valued
    start times in cycles; bits last ``period`` cycles (any real). Cycle ``t`` samples the line
    at time ``t + phase``; idle is high."""
    line = np.ones(length, np.int64)
    for start, byte in frames:
        for b, level in enumerate(frame_bits(byte)):
            lo, hi = start + b * period, start + (b + 1) * period
            # Cycles t with lo <= t + phase < hi.
            first = max(0, int(np.ceil(lo - phase)))
            last = min(length, int(np.ceil(hi - phase)))
            line[first:last] = level
    return line


def simulate(dut, length, drive, watch):
    """Run ``length`` cycles; ``drive(ctx, t)`` sets inputs for cycle t; returns a dict of
    per-cycle sampled values of each ``watch`` signal (their values during cycle t)."""
    out = {name: np.zeros(length, np.int64) for name in watch}
    sigs = list(watch.values())

    async def bench(ctx):
        for t in range(length):
            drive(ctx, t)
            _, _, *values = await ctx.tick().sample(*sigs)
            for name, value in zip(watch, values):
                out[name][t] = value

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


@pytest.mark.parametrize("clock_hz,baud", RATES)
def test_tx_edges_within_one_cycle_of_ideal(clock_hz, baud):
    # Back-to-back frames: the phase runs on across frames, so every edge of the whole burst
    # is within one cycle after its ideal position (start + k * clock/baud), never accumulating.
    rng = np.random.default_rng(clock_hz // baud)
    period = Fraction(clock_hz, baud)
    data = [0x00, 0xFF, 0x55, 0xAA] + [int(x) for x in rng.integers(0, 256, 8)]
    length = int(period * 10 * (len(data) + 1)) + 20
    dut = UARTTx(clock_hz, baud)
    tx = np.zeros(length, np.int64)
    taken = []

    async def bench(ctx):
        k = 0
        for t in range(length):
            ctx.set(dut.i.valid, 3 <= t and k < len(data))
            ctx.set(dut.i.payload, data[k] if k < len(data) else 0)
            _, _, line, ready, valid = await ctx.tick().sample(dut.tx, dut.i.ready, dut.i.valid)
            tx[t] = line
            if ready and valid:
                taken.append(t)
                k += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()

    assert len(taken) == len(data) and taken[0] == 3
    start = taken[0] + 1
    ideal = line_model([(start + 10 * j * period, b) for j, b in enumerate(data)], period, length)
    # Ideal edge positions (real cycles) of every bit boundary in the burst.
    edges = [start + k * period for k in range(10 * len(data) + 1)]
    for t in np.flatnonzero(tx != ideal):
        # A cycle may still show the previous bit only within one cycle after an ideal edge.
        assert any(0 <= t - e < 1 for e in edges), f"cycle {t}: line {tx[t]} far from any edge"
    assert tx[:start].all() and tx[int(edges[-1]) + 2:].all()
    # Each edge of the line is within one cycle after an ideal edge (none is missing: the
    # line equals the ideal one everywhere else).
    for t in np.flatnonzero(np.diff(tx)) + 1:
        assert any(0 <= t - e < 1 for e in edges), f"edge at cycle {t}"
    # Takes happen exactly one frame apart on average: the phase is not restarted.
    assert taken[-1] - taken[0] <= 10 * (len(data) - 1) * period + 1
    assert taken[-1] - taken[0] > 10 * (len(data) - 1) * period - 1


def test_tx_idle_restart():
    # A byte after the line went idle starts one cycle after it is taken.
    clock_hz, baud = 100_000_000, 12_000_000
    period = Fraction(clock_hz, baud)
    dut = UARTTx(clock_hz, baud)
    length = 400
    offers = {5: 0x3C, 200: 0xC3}
    taken = []
    tx_line = np.zeros(length, np.int64)

    async def bench(ctx):
        pending = None
        for t in range(length):
            if t in offers:
                pending = offers[t]
            ctx.set(dut.i.valid, pending is not None)
            if pending is not None:
                ctx.set(dut.i.payload, pending)
            _, _, tx, ready, valid = await ctx.tick().sample(dut.tx, dut.i.ready, dut.i.valid)
            tx_line[t] = tx
            if ready and valid:
                taken.append(t)
                pending = None

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert taken == [5, 200]
    ideal = line_model([(6, 0x3C), (201, 0xC3)], period, length)
    edges = [s + k * period for s in (6, 201) for k in range(11)]
    for t in np.flatnonzero(tx_line != ideal):
        assert any(0 <= t - e < 1 for e in edges)


def run_rx(clock_hz, baud, line, ready=None):
    """Feed per-cycle ``line`` samples into a UARTRx; returns (bytes with their cycles,
    framing error cycles)."""
    dut = UARTRx(clock_hz, baud)
    length = len(line)
    ready = np.ones(length, bool) if ready is None else ready

    def drive(ctx, t):
        ctx.set(dut.rx, int(line[t]))
        ctx.set(dut.o.ready, int(ready[t]))

    got = simulate(dut, length, drive, {"valid": dut.o.valid, "data": dut.o.payload,
                                        "error": dut.framing_error})
    taken = np.flatnonzero(got["valid"].astype(bool) & ready)
    return [int(got["data"][t]) for t in taken], list(np.flatnonzero(got["error"])), taken


@pytest.mark.parametrize("clock_hz,baud", RATES)
@pytest.mark.parametrize("mismatch", [Fraction(-2, 100), Fraction(0), Fraction(25, 1000)])
def test_rx_against_line_model(clock_hz, baud, mismatch):
    # The sender's baud is off by `mismatch`; frames are back to back or separated by random
    # idle time, and start at arbitrary sub-cycle phases: the receiver re-aligns on each start
    # bit, so the error never accumulates across frames.
    rng = np.random.default_rng(int(clock_hz // baud) * 100 + int(mismatch * 1000) + 50)
    period = Fraction(clock_hz, baud) * (1 + mismatch)
    count = 14
    data = [0x00, 0xFF, 0x80, 0x01] + [int(x) for x in rng.integers(0, 256, count - 4)]
    frames, start = [], Fraction(7) + Fraction(int(rng.integers(0, 100)), 100)
    for j, byte in enumerate(data):
        frames.append((start, byte))
        gap = 0 if j % 3 == 0 else Fraction(int(rng.integers(0, 300)), 100) * period
        start += 10 * period + gap
    length = int(start) + 20
    line = line_model(frames, period, length, phase=Fraction(int(rng.integers(0, 100)), 100))
    received, errors, _ = run_rx(clock_hz, baud, line)
    assert received == data
    assert errors == []


def test_rx_framing_error_break_and_glitch():
    clock_hz, baud = 100_000_000, 12_000_000
    period = Fraction(clock_hz, baud)
    length = 700
    line = line_model([(10, 0x5A)], period, length)
    # Bad frame: stop bit low, the line held low (a break) for several frames' time.
    bad_start = 150
    bad = line_model([(bad_start, 0x0F)], period, length)
    stop_lo = int(np.ceil(bad_start + 9 * period))
    bad[stop_lo:400] = 0
    line = np.minimum(line, bad)
    # One-cycle glitch on an idle line, then a good frame.
    line[430] = 0
    line = np.minimum(line, line_model([(500, 0xA5)], period, length))
    received, errors, taken = run_rx(clock_hz, baud, line)
    assert received == [0x5A, 0xA5]
    # One pulse, in the cycle after the middle of the bad frame's stop bit (within a cycle).
    assert len(errors) == 1
    assert abs(errors[0] - (bad_start + Fraction(19, 2) * period)) <= 2
    assert taken[1] > 500 + 9 * period


def test_rx_holds_byte_until_ready_and_drops_overrun():
    clock_hz, baud = 100_000_000, 12_000_000
    period = Fraction(clock_hz, baud)
    length = 600
    frames = [(10, 0x11), (10 + 10 * period, 0x22), (300, 0x33)]
    line = line_model(frames, period, length)
    ready = np.zeros(length, bool)
    ready[250:] = True           # 0x11 waits; 0x22 completes while it waits and is dropped
    received, errors, taken = run_rx(clock_hz, baud, line, ready)
    assert received == [0x11, 0x33]
    assert taken[0] == 250 and errors == []


@pytest.mark.parametrize("clock_hz,baud", RATES[:3])
def test_loopback_random_handshakes(clock_hz, baud):
    # TX -> RX on one line: random bytes offered at random times, RX consumer randomly ready.
    rng = np.random.default_rng(clock_hz // baud + 7)
    period = Fraction(clock_hz, baud)
    data = [0x00, 0xFF] + [int(x) for x in rng.integers(0, 256, 30)]
    tx, rx = UARTTx(clock_hz, baud), UARTRx(clock_hz, baud)
    m = Module()
    m.submodules.tx = tx
    m.submodules.rx = rx
    m.d.comb += rx.rx.eq(tx.tx)
    length = int(period * 10 * len(data) * 1.6) + 100
    offer = rng.random(length) < 0.02 * float(Fraction(33) / period)
    ready = rng.random(length) < 0.5
    received, errors, sent = [], [], []

    async def bench(ctx):
        k = 0
        offering = False
        for t in range(length):
            if not offering and k < len(data) and offer[t]:
                offering = True
            ctx.set(tx.i.valid, offering)
            ctx.set(tx.i.payload, data[k] if k < len(data) else 0)
            ctx.set(rx.o.ready, int(ready[t]))
            _, _, tv, tr, rv, rd, err = await ctx.tick().sample(
                tx.i.valid, tx.i.ready, rx.o.valid, rx.o.payload, rx.framing_error)
            if tv and tr:
                sent.append(data[k])
                k += 1
                # Sometimes keep offering at once (back to back), sometimes wait.
                offering = k < len(data) and rng.random() < 0.5
            if rv and ready[t]:
                received.append(rd)
            if err:
                errors.append(t)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert sent == data
    assert received == data
    assert errors == []


@pytest.mark.parametrize("cls", [UARTTx, UARTRx])
@pytest.mark.parametrize("clock_hz,baud", [(100, 26), (100, 0), (0, 10)])
def test_bad_rates(cls, clock_hz, baud):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError):
            cls(clock_hz, baud)
        gc.collect()
