"""Merger: record order against the reference model, loss accounting, throughput, latency."""

import gc
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator

from heraldry.gateware.merger import Merger
from heraldry.model import tag_stream
from heraldry.protocol import (
    COARSE_BITS, LOSS_COUNT_BITS, WINDOW_BITS, Kind, LossCause, decode_record, time_bits,
)

MAX_LOSS = 2 ** LOSS_COUNT_BITS - 1
# Largest closed_t0 offset the merger's contract accepts (Merger.t0_offset_bits, restated here
# from its docstring so that the test does not read it back from the code under test).
MAX_T0_OFFSET = 2 ** (WINDOW_BITS + 1) - 1


@dataclass
class Stimulus:
    """Per-cycle inputs. Times are absolute (unwrapped) bins; the bench reduces them modulo."""
    channels: int
    rules: int
    fine_bits: int
    base: int                 # absolute coarse time (ref) of cycle 0
    record_mask: int          # coincidence_record_mask
    exact: int                # herald_exact: rules whose records take the bundle's close
    events: np.ndarray        # (S,) channel mask
    fine: np.ndarray          # (S, N) fine time of each channel's event
    herald: np.ndarray        # (S,) rule mask
    herald_fine: np.ndarray   # (S, R): each rule's own fine time
    herald_pattern: np.ndarray  # (S, R): each rule's own pattern
    closed: np.ndarray        # (S,) 0/1
    closed_pattern: np.ndarray
    closed_t0: np.ndarray     # (S,) absolute bins
    overflow: np.ndarray      # (S,) channel mask

    @property
    def cycles(self):
        return len(self.events)

    def ref(self, k):
        return self.base + k

    def recorded(self, k):
        return bool(self.closed[k]) and bool((self.record_mask >> int(self.closed_pattern[k])) & 1)

    def bundle_records(self, k):
        """The records cycle k's bundle must produce, in the documented order (no loss)."""
        f, mod = self.fine_bits, 2 ** time_bits(self.fine_bits)
        start = self.ref(k) << f
        tags = sorted((int(self.fine[k, c]), c) for c in range(self.channels)
                      if (self.events[k] >> c) & 1)
        out = [(Kind.TAG, (start + fine) % mod, c) for fine, c in tags]
        # Heralds in (time, rule) order; an exact rule's at the cycle's first bin, with the
        # pattern of the bundle's close.
        heralds = []
        for i in range(self.rules):
            if (self.herald[k] >> i) & 1:
                if self.exact >> i & 1:
                    heralds.append((0, i, int(self.closed_pattern[k])))
                else:
                    heralds.append((int(self.herald_fine[k, i]), i, int(self.herald_pattern[k, i])))
        out += [(Kind.HERALD, (start + fine) % mod, i, pattern)
                for fine, i, pattern in sorted(heralds)]
        if self.recorded(k):
            out.append((Kind.COINCIDENCE, int(self.closed_t0[k]) % mod,
                        int(self.closed_pattern[k])))
        return out

    def event_times(self):
        """Absolute event times per channel, for the reference model."""
        cycles = np.arange(self.cycles, dtype=np.int64)
        start = (self.base + cycles) << self.fine_bits
        return [start[(self.events >> c) & 1 == 1] + self.fine[(self.events >> c) & 1 == 1, c]
                for c in range(self.channels)]


def random_stimulus(seed, channels, rules, fine_bits=0, cycles=1000, p_event=0.1, p_herald=0.05,
                    p_close=0.05, p_overflow=0.0, base=2 ** COARSE_BITS - 300, exact=None):
    rng = np.random.default_rng(seed)
    n, r, f = channels, rules, fine_bits
    events = np.zeros(cycles, np.int64)
    for c in range(n):
        events |= (rng.random(cycles) < p_event).astype(np.int64) << c
    fine = rng.integers(0, 2 ** f, (cycles, n)).astype(np.int64)
    herald = np.zeros(cycles, np.int64)
    for i in range(r):
        herald |= (rng.random(cycles) < p_herald).astype(np.int64) << i
    overflow = np.zeros(cycles, np.int64)
    for c in range(n):
        overflow |= (rng.random(cycles) < p_overflow).astype(np.int64) << c
    closed = (rng.random(cycles) < p_close).astype(np.int64)
    closed_pattern = rng.integers(1, 2 ** n, cycles).astype(np.int64)
    closed_t0 = np.zeros(cycles, np.int64)
    last_t0 = -1
    for k in np.flatnonzero(closed):
        start = (base + int(k)) << f
        # Real windows close in t0 order; unique t0s also make every bundle identifiable.
        offset = int(rng.choice([0, MAX_T0_OFFSET, rng.integers(0, MAX_T0_OFFSET + 1)]))
        t0 = max(start - offset, last_t0 + 1)
        closed_t0[k] = last_t0 = t0
    # About half the patterns are recorded, always including the full and a single-channel one.
    record_mask = int.from_bytes(rng.bytes(2 ** n // 8 + 1)) % 2 ** (2 ** n)
    record_mask |= 2 ** (2 ** n - 1) | 2
    if n == 1:
        record_mask = 0b10
    # Exact rules fire with a close only (the core's), in about half of them.
    exact = int(rng.integers(0, 2 ** r)) if exact is None else exact
    for i in range(r):
        if exact >> i & 1 and p_herald:
            fires = closed & (rng.random(cycles) < 0.5).astype(np.int64)
            herald = (herald & ~(1 << i)) | (fires << i)
    return Stimulus(
        channels=n, rules=r, fine_bits=f, base=base, record_mask=record_mask, exact=exact,
        events=events, fine=fine, herald=herald,
        herald_fine=rng.integers(0, 2 ** f, (cycles, r)).astype(np.int64),
        herald_pattern=rng.integers(1, 2 ** n, (cycles, r)).astype(np.int64),
        closed=closed, closed_pattern=closed_pattern, closed_t0=closed_t0, overflow=overflow)


def as_tuple(rec):
    kind = rec["kind"]
    if kind == Kind.TAG:
        return (kind, rec["time"], rec["channel"])
    if kind == Kind.HERALD:
        return (kind, rec["time"], rec["rule"], rec["pattern"])
    if kind == Kind.COINCIDENCE:
        return (kind, rec["time"], rec["pattern"])
    return (kind, rec["time"], rec["cause"], rec["index"], rec["count"])


@dataclass
class Run:
    records: list          # (cycle accepted, tuple)
    valid: np.ndarray      # o.valid per cycle
    merger_dropped: np.ndarray
    herald_dropped: np.ndarray
    coincidence_dropped: int
    idle: np.ndarray = None  # merger.idle per cycle


def run(stim, ready, depth, extra_cycles=0, herald_late=False):
    """Drive ``stim`` one bundle per cycle, then idle inputs for ``extra_cycles``.

    ``ready[k]`` is ``o.ready`` in cycle k (length ``stim.cycles + extra_cycles``).
    ``herald_late``: ``Merger(herald_late=True)``, bundle k's herald times and patterns are
    presented in cycle k + 1.
    """
    n, r, f = stim.channels, stim.rules, stim.fine_bits
    dut = Merger(n, r, fine_bits=f, depth=depth, herald_late=herald_late)
    total = stim.cycles + extra_cycles
    assert len(ready) == total
    tmod, cmod = 2 ** time_bits(f), 2 ** COARSE_BITS
    out = Run([], np.zeros(total, np.int64), np.zeros(n, np.int64), np.zeros(r, np.int64), 0,
              np.zeros(total, np.int64))

    async def bench(ctx):
        last = {}

        def put(name, sig, value):
            if last.get(name) != value:
                ctx.set(sig, value)
                last[name] = value

        ctx.set(dut.coincidence_record_mask, stim.record_mask)
        ctx.set(dut.herald_exact, stim.exact)
        for k in range(total):
            ctx.set(dut.ref, stim.ref(k) % cmod)
            fields = k - 1 if herald_late else k      # the bundle whose herald fields go in
            if 0 <= fields < stim.cycles:
                start = stim.ref(fields) << f
                for i in range(r):
                    if (int(stim.herald[fields]) >> i) & 1:
                        put(f"htime{i}", dut.herald_time[i],
                            (start + int(stim.herald_fine[fields, i])) % tmod)
                        put(f"hpattern{i}", dut.herald_pattern[i],
                            int(stim.herald_pattern[fields, i]))
            if k < stim.cycles:
                start = stim.ref(k) << f
                events = int(stim.events[k])
                put("events", dut.events, events)
                for c in range(n):
                    if (events >> c) & 1:
                        put(f"time{c}", dut.times[c], (start + int(stim.fine[k, c])) % tmod)
                put("herald", dut.herald_fire, int(stim.herald[k]))
                closed = int(stim.closed[k])
                put("closed", dut.closed, closed)
                if closed:
                    put("cpattern", dut.closed_pattern, int(stim.closed_pattern[k]))
                    put("closed_t0", dut.closed_t0, int(stim.closed_t0[k]) % tmod)
                put("overflow", dut.delay_overflow, int(stim.overflow[k]))
            else:
                for name, sig in (("events", dut.events), ("herald", dut.herald_fire),
                                  ("closed", dut.closed), ("overflow", dut.delay_overflow)):
                    put(name, sig, 0)
            put("ready", dut.o.ready, int(ready[k]))
            _, _, valid, raw, md, hd, cd, idle = await ctx.tick().sample(
                dut.o.valid, dut.o.payload.as_value(), dut.merger_dropped, dut.herald_dropped,
                dut.coincidence_dropped, dut.idle)
            out.valid[k] = valid
            out.idle[k] = idle
            if valid and ready[k]:
                out.records.append((k, as_tuple(decode_record(raw, f))))
            for c in range(n):
                out.merger_dropped[c] += (md >> c) & 1
            for i in range(r):
                out.herald_dropped[i] += (hd >> i) & 1
            out.coincidence_dropped += cd

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


def unwrap(time, reference, bits):
    """Absolute time nearest after ``reference - 2**(bits-1)`` congruent to ``time``."""
    half = 2 ** (bits - 1)
    return reference - half + (time - (reference - half)) % 2 ** bits


def check_accounting(stim, result):
    """The loss invariant; returns (kept bundle indices, loss records)."""
    n, r, f = stim.channels, stim.rules, stim.fine_bits
    records = [rec for _, rec in result.records]
    losses = [rec for rec in records if rec[0] == Kind.LOSS]
    others = [rec for rec in records if rec[0] != Kind.LOSS]

    # The stream is the fed bundles minus whole dropped bundles, in order. Every bundle's first
    # record carries a time no other bundle has, so a greedy match is unambiguous.
    kept, dropped, i = [], [], 0
    for k in range(stim.cycles):
        expected = stim.bundle_records(k)
        if not expected:
            continue
        if others[i:i + len(expected)] == expected:
            kept.append(k)
            i += len(expected)
        else:
            dropped.append(k)
    assert i == len(others), f"unmatched records from {others[i:i + 3]}"

    loss = {cause: np.zeros(n if cause in (LossCause.MERGER_FULL, LossCause.DELAY_FULL)
                            else r if cause == LossCause.HERALD_RECORD else 1, np.int64)
            for cause in LossCause}
    for _, _, cause, index, count in losses:
        assert 1 <= count <= MAX_LOSS
        loss[cause][index] += count
    dropped = np.array(dropped, np.int64)
    for c in range(n):
        fed = int(np.sum((stim.events >> c) & 1))
        lost = int(np.sum((stim.events[dropped] >> c) & 1)) if len(dropped) else 0
        streamed = sum(1 for rec in others if rec[0] == Kind.TAG and rec[2] == c)
        assert streamed + loss[LossCause.MERGER_FULL][c] == fed
        assert loss[LossCause.MERGER_FULL][c] == lost == result.merger_dropped[c]
        assert loss[LossCause.DELAY_FULL][c] == int(np.sum((stim.overflow >> c) & 1))
    for i in range(r):
        fed = int(np.sum((stim.herald >> i) & 1))
        lost = int(np.sum((stim.herald[dropped] >> i) & 1)) if len(dropped) else 0
        streamed = sum(1 for rec in others if rec[0] == Kind.HERALD and rec[2] == i)
        assert streamed + loss[LossCause.HERALD_RECORD][i] == fed
        assert loss[LossCause.HERALD_RECORD][i] == lost == result.herald_dropped[i]
    fed = sum(stim.recorded(k) for k in range(stim.cycles))
    lost = sum(stim.recorded(k) for k in dropped)
    streamed = sum(1 for rec in others if rec[0] == Kind.COINCIDENCE)
    assert streamed + loss[LossCause.COINCIDENCE_RECORD][0] == fed
    assert loss[LossCause.COINCIDENCE_RECORD][0] == lost == result.coincidence_dropped

    # Loss records: time = coarse time of the cycle they were written, so strictly increasing.
    tb = time_bits(f)
    times = [unwrap(rec[1], stim.base << f, tb) for rec in losses]
    assert all(t % 2 ** f == 0 for t in times)
    assert all(a < b for a, b in zip(times, times[1:]))
    return kept, losses


@pytest.mark.parametrize("channels,rules,seed", [(1, 1, 1), (4, 2, 2), (8, 8, 3)])
def test_lossless_matches_model(channels, rules, seed):
    # ~0.5 records per cycle on average with ready always high: nothing may be lost.
    p_event = 0.3 / channels
    stim = random_stimulus(seed, channels, rules, cycles=1200, p_event=p_event,
                           p_herald=0.1 / rules, p_close=0.1)
    result = run(stim, np.ones(stim.cycles + 60, bool), depth=256, extra_cycles=60)
    records = [rec for _, rec in result.records]
    assert all(rec[0] != Kind.LOSS for rec in records)
    assert not result.merger_dropped.any() and not result.herald_dropped.any()
    expected = [rec for k in range(stim.cycles) for rec in stim.bundle_records(k)]
    assert records == expected
    model = tag_stream(stim.event_times())
    mod = 2 ** time_bits(0)
    tags = [(rec[1], rec[2]) for rec in records if rec[0] == Kind.TAG]
    assert tags == [(int(t) % mod, int(c)) for t, c in zip(model["time"], model["channel"])]
    assert len(tags) > 100


def test_lossless_fine_bits():
    # F = 2: tags of one cycle leave in (fine, channel) order, i.e. the model's time order.
    stim = random_stimulus(4, 4, 2, fine_bits=2, cycles=800, p_event=0.15, p_close=0.1)
    result = run(stim, np.ones(stim.cycles + 60, bool), depth=256, extra_cycles=60)
    records = [rec for _, rec in result.records]
    assert records == [rec for k in range(stim.cycles) for rec in stim.bundle_records(k)]
    model = tag_stream(stim.event_times())
    mod = 2 ** time_bits(2)
    tags = [(rec[1], rec[2]) for rec in records if rec[0] == Kind.TAG]
    assert tags == [(int(t) % mod, int(c)) for t, c in zip(model["time"], model["channel"])]
    # The stimulus really has cycles where a later channel has an earlier fine time.
    assert any(stim.fine[k, d] < stim.fine[k, c] for k in range(stim.cycles)
               for c in range(4) for d in range(c + 1, 4)
               if (stim.events[k] >> c) & (stim.events[k] >> d) & 1)


def drain_bound(stim, depth, losses):
    """Cycles after the stimulus by which everything, losses included, must have left."""
    per_bundle = stim.channels + stim.rules + 2
    return (depth + 2) * per_bundle + len(losses) + 8


@pytest.mark.parametrize("channels,rules,fine_bits,seed,herald_late", [
    (1, 1, 0, 10, False), (4, 2, 0, 11, False), (8, 8, 0, 12, False), (4, 3, 2, 13, False),
    (4, 2, 4, 14, False), (4, 3, 2, 13, True), (8, 2, 4, 15, True)])
def test_backpressure_accounting(channels, rules, fine_bits, seed, herald_late):
    """Losses under backpressure are accounted; with ``herald_late`` the herald fields arrive a
    cycle after their firing (the core's herald record stage) and the records are the same."""
    stim = random_stimulus(seed, channels, rules, fine_bits=fine_bits, cycles=1500,
                           p_event=0.4, p_herald=0.1, p_close=0.2, p_overflow=0.01)
    rng = np.random.default_rng(seed + 100)
    extra = 400
    ready = rng.random(stim.cycles + extra) < 0.5
    ready[200:450] = False           # long stall: FIFO full, everything pending
    ready[900:960] = True            # room again while events keep coming
    ready[stim.cycles:] = True       # drain
    depth = 4
    result = run(stim, ready, depth=depth, extra_cycles=extra, herald_late=herald_late)
    kept, losses = check_accounting(stim, result)
    assert len(kept) > 100 and len(losses) > 20
    assert result.merger_dropped.sum() > 100
    # Everything, losses included, has left promptly after the stimulus ended.
    assert result.records[-1][0] < stim.cycles + drain_bound(stim, depth, losses)
    assert not result.valid[-1]


def test_no_starvation():
    # Every channel fires every cycle and the consumer is slow, so MERGER_FULL[0] is non-zero
    # whenever there is room; the delay-line losses of the last channel must still be reported
    # while the stimulus runs, not only at the end.
    n, r, cycles = 4, 1, 1200
    stim = random_stimulus(20, n, r, cycles=cycles, p_event=1.0, p_herald=0.0, p_close=0.0)
    stim.overflow[::7] = 1 << (n - 1)
    rng = np.random.default_rng(21)
    ready = np.concatenate([rng.random(cycles) < 0.5, np.ones(300, bool)])
    result = run(stim, ready, depth=4, extra_cycles=300)
    check_accounting(stim, result)
    during = [(cycle, rec) for cycle, rec in result.records
              if rec[0] == Kind.LOSS and cycle < cycles]
    delay = [cycle for cycle, rec in during if rec[2] == LossCause.DELAY_FULL]
    merger = {rec[3] for _, rec in during if rec[2] == LossCause.MERGER_FULL}
    assert merger == set(range(n))
    assert len(delay) > 15
    assert max(np.diff([0] + delay + [cycles])) < 200


def test_full_bundles_without_bubbles():
    # A full bundle (N tags, R heralds, a recorded close) every N + R + 1 cycles is exactly the
    # serialiser's throughput: with the smallest FIFO nothing may be lost and o.valid, once up,
    # must never drop (a bubble between bundles would back up and overflow the FIFO).
    n, r = 8, 8
    per = n + r + 1
    count = 40
    cycles = per * count
    stim = random_stimulus(30, n, r, cycles=cycles, p_event=0, p_herald=0, p_close=0)
    stim.events[::per] = 2 ** n - 1
    stim.herald[::per] = 2 ** r - 1
    stim.closed[::per] = 1
    stim.closed_pattern[::per] = 2 ** n - 1
    stim.closed_t0[::per] = (stim.base + np.arange(0, cycles, per)) - 7
    result = run(stim, np.ones(cycles + 30, bool), depth=2, extra_cycles=30)
    records = [rec for _, rec in result.records]
    assert records == [rec for k in range(cycles) for rec in stim.bundle_records(k)]
    up = np.flatnonzero(result.valid)
    assert len(up) == per * count and up[-1] - up[0] == per * count - 1


def test_single_record_bundles_back_to_back():
    # One tag every cycle: one record per cycle through a depth-3 FIFO, no loss, no bubble.
    # (Depth 2 accepts only every other cycle: a full FIFO refuses a write while it is popped.)
    stim = random_stimulus(31, 2, 1, cycles=300, p_event=0, p_herald=0, p_close=0)
    stim.events[:] = 1 << np.arange(300) % 2
    result = run(stim, np.ones(330, bool), depth=3, extra_cycles=30)
    records = [rec for _, rec in result.records]
    assert records == [rec for k in range(300) for rec in stim.bundle_records(k)]
    up = np.flatnonzero(result.valid)
    assert len(up) == 300 and up[-1] - up[0] == 299


def test_idle_lossless():
    # Without loss, the merger is idle in cycle k exactly when every record of the bundles
    # presented before cycle k has been taken before cycle k.
    stim = random_stimulus(40, 4, 2, cycles=1500, p_event=0.08, p_herald=0.02, p_close=0.05)
    stim.events[300:500] = 0          # quiet stretches: idle must come back
    stim.herald[300:500] = 0
    stim.closed[300:500] = 0
    rng = np.random.default_rng(41)
    ready = rng.random(stim.cycles + 100) < 0.6
    result = run(stim, ready, depth=256, extra_cycles=100)
    assert not any(rec[0] == Kind.LOSS for _, rec in result.records)
    expected_before = np.cumsum([0] + [len(stim.bundle_records(k)) for k in range(stim.cycles)]
                                + [0] * 99)
    taken_cycles = np.array([cycle for cycle, _ in result.records])
    taken_before = np.searchsorted(taken_cycles, np.arange(len(ready)), side="left")
    assert np.array_equal(result.idle.astype(bool), taken_before == expected_before)
    assert 0.1 < result.idle.mean() < 0.9


def test_idle_low_while_loss_pending():
    # Loss: once idle, no later tag, herald or loss record may belong to an earlier cycle; a
    # lone delay-line overflow keeps the merger busy until its loss record is taken.
    stim = random_stimulus(42, 4, 2, cycles=800, p_event=0.4, p_herald=0.1, p_close=0.2)
    stim.events[600:] = 0
    stim.herald[600:] = 0
    stim.closed[600:] = 0
    stim.overflow[700] = 0b0100
    ready = np.random.default_rng(43).random(stim.cycles + 200) < 0.5
    ready[100:300] = False
    ready[695:720] = False
    result = run(stim, ready, depth=4, extra_cycles=200)
    kept, losses = check_accounting(stim, result)
    assert losses and result.merger_dropped.sum() > 0
    f = stim.fine_bits
    for k in np.flatnonzero(result.idle):
        later = [rec for cycle, rec in result.records if cycle >= k and rec[0] != Kind.COINCIDENCE]
        assert all(unwrap(rec[1], stim.ref(k) << f, time_bits(f)) >= stim.ref(k) << f
                   for rec in later)
    delay_loss = [cycle for cycle, rec in result.records
                  if rec[0] == Kind.LOSS and rec[2] == LossCause.DELAY_FULL]
    assert len(delay_loss) == 1 and delay_loss[0] >= 720
    assert not result.idle[701:delay_loss[0] + 1].any()
    assert result.idle[delay_loss[0] + 1:].all()


def test_latency():
    stim = random_stimulus(32, 2, 1, cycles=20, p_event=0, p_herald=0, p_close=0)
    stim.events[5] = 0b10
    result = run(stim, np.ones(20, bool), depth=8)
    assert [cycle for cycle, _ in result.records] == [5 + 4]


def test_loss_count_split():
    # More than 2**LOSS_COUNT_BITS - 1 drops on one counter are reported in several records.
    # A stalled merger keeps depth + 1 bundles (FIFO plus serialiser); every later one is dropped.
    depth, extra = 3, 10
    stall, drain = MAX_LOSS + depth + 1 + extra, 40
    dut = Merger(1, 1, depth=depth)
    records = []

    async def bench(ctx):
        ctx.set(dut.events, 1)
        await ctx.tick().repeat(stall)
        ctx.set(dut.events, 0)
        ctx.set(dut.o.ready, 1)
        for k in range(drain):
            ctx.set(dut.ref, 1000 + k)
            _, _, valid, raw = await ctx.tick().sample(dut.o.valid, dut.o.payload.as_value())
            if valid:
                records.append(decode_record(raw))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    tags = [rec for rec in records if rec["kind"] == Kind.TAG]
    losses = [rec for rec in records if rec["kind"] == Kind.LOSS]
    assert len(tags) == depth + 1
    assert [(rec["cause"], rec["index"], rec["count"]) for rec in losses] == [
        (LossCause.MERGER_FULL, 0, MAX_LOSS), (LossCause.MERGER_FULL, 0, extra)]
    # Reported at the first two cycles with room, which come after the stored tags drain.
    assert [rec["time"] for rec in losses] == sorted(rec["time"] for rec in losses)


def test_clear_zeroes_pending():
    # Drops pending while the FIFO is full are forgotten by clear (as the counters are); drops
    # after clear are reported from zero.
    dut = Merger(2, 1, depth=3)
    records = []

    async def bench(ctx):
        ctx.set(dut.events, 0b11)
        await ctx.tick().repeat(10)                 # 4 bundles kept, 6 dropped
        ctx.set(dut.events, 0)
        ctx.set(dut.delay_overflow, 0b10)
        await ctx.tick().repeat(3)
        ctx.set(dut.delay_overflow, 0)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        await ctx.tick().repeat(3)
        ctx.set(dut.events, 0b01)
        await ctx.tick().repeat(5)                  # FIFO still full: 5 more dropped
        ctx.set(dut.events, 0)
        ctx.set(dut.o.ready, 1)
        for _ in range(30):
            _, _, valid, raw = await ctx.tick().sample(dut.o.valid, dut.o.payload.as_value())
            if valid:
                records.append(decode_record(raw))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert [rec["channel"] for rec in records if rec["kind"] == Kind.TAG] == [0, 1] * 4
    assert [(rec["cause"], rec["index"], rec["count"]) for rec in records
            if rec["kind"] == Kind.LOSS] == [(LossCause.MERGER_FULL, 0, 5)]


@pytest.mark.parametrize("kwargs", [
    dict(channels=0, rules=1), dict(channels=9, rules=1), dict(channels=2, rules=0),
    dict(channels=2, rules=9), dict(channels=2, rules=1, depth=1),
    dict(channels=2, rules=1, fine_bits=-1)])
def test_bad_parameters(kwargs):
    # The half-built component is never elaborated: collect it here, without its warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError):
            Merger(**kwargs)
        gc.collect()
