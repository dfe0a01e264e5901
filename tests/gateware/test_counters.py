# amaranth: UnusedElaboratable=no
"""Counters against a Python tally: random increments every cycle, clear, read latency, wrap."""

import random

import pytest
from amaranth.sim import Simulator

from heraldry.gateware.counters import Counters
from heraldry.protocol import COUNTER_BITS, CounterMap

WRAP = 2 ** COUNTER_BITS


class Tally:
    """Expected counter values, by address, from the increments a bench presents."""

    def __init__(self, cmap):
        self.cmap = cmap
        self.value = [0] * cmap.size

    def add(self, address):
        self.value[address] = (self.value[address] + 1) % WRAP

    def apply(self, inc, count_closes=True):
        cmap = self.cmap
        for c in range(cmap.channels):
            if inc["singles"] >> c & 1:
                self.add(cmap.singles(c))
            if inc["delay_dropped"] >> c & 1:
                self.add(cmap.delay_dropped(c))
            if inc["merger_dropped"] >> c & 1:
                self.add(cmap.merger_dropped(c))
        for r in range(cmap.rules):
            if inc["herald_fire"] >> r & 1:
                self.add(cmap.herald(r))
            if inc["herald_dropped"] >> r & 1:
                self.add(cmap.herald_dropped(r))
        if inc["coincidence_dropped"]:
            self.add(cmap.coincidence_dropped())
        if inc["closed"] and count_closes:
            self.add(cmap.pattern(inc["closed_pattern"]))


class Stimulus:
    """Random increments. Closes come in bursts on consecutive cycles, mostly repeating one of a
    few patterns, so that the read-modify-write pipeline must forward its own writes."""

    def __init__(self, rng, channels, rules):
        self.rng = rng
        self.channels = channels
        self.rules = rules
        top = 2 ** channels - 1
        self.favourites = [rng.randint(1, top) for _ in range(3)]
        self.pattern = self.favourites[0]

    def mask(self, width, p):
        return sum(1 << i for i in range(width) if self.rng.random() < p)

    def __call__(self):
        rng, n, r = self.rng, self.channels, self.rules
        closed = int(rng.random() < 0.75)
        if closed:
            x = rng.random()
            if x < 0.3:
                self.pattern = rng.randint(1, 2 ** n - 1)
            elif x < 0.6:
                self.pattern = rng.choice(self.favourites)
            # else: same pattern as the previous close
        return {
            "singles": self.mask(n, 0.5),
            "closed": closed,
            "closed_pattern": self.pattern,
            "herald_fire": self.mask(r, 0.5),
            "delay_dropped": self.mask(n, 0.2),
            "merger_dropped": self.mask(n, 0.2),
            "herald_dropped": self.mask(r, 0.2),
            "coincidence_dropped": int(rng.random() < 0.3),
        }


IDLE = {name: 0 for name in ("singles", "closed", "closed_pattern", "herald_fire",
                             "delay_dropped", "merger_dropped", "herald_dropped",
                             "coincidence_dropped", "gated_out")}


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


async def present(ctx, dut, inc):
    for name, value in inc.items():
        ctx.set(getattr(dut, name), value)


async def step_and_check(ctx, dut, tally, inc, addr, expect_prev, count_closes=True):
    """One cycle: present `inc` and `addr`, check `data` against the read set one cycle before,
    and return the expected value for this cycle's read (every increment before this cycle)."""
    await present(ctx, dut, inc)
    ctx.set(dut.addr, addr)
    if expect_prev is not None:
        prev_addr, prev_value = expect_prev
        assert ctx.get(dut.data) == prev_value, f"address {prev_addr}"
    expected = (addr, tally.value[addr])
    tally.apply(inc, count_closes)
    await ctx.tick()
    return expected


@pytest.mark.parametrize("channels, rules, cycles, seed", [
    (1, 1, 1500, 1),
    (2, 3, 1500, 2),
    (4, 2, 2000, 3),
    (8, 8, 2000, 4),
])
def test_random_increments_clear_and_read(channels, rules, cycles, seed):
    rng = random.Random(seed)
    dut = Counters(channels, rules)
    cmap = CounterMap(channels, rules)
    assert dut.map.size == cmap.size
    tally = Tally(cmap)
    stimulus = Stimulus(rng, channels, rules)
    patterns = list(cmap.range("patterns"))

    async def bench(ctx):
        expect = None
        for phase in range(2):
            for _ in range(cycles):
                # Read pattern counters half of the time: they are the pipelined ones.
                addr = rng.choice(patterns) if rng.random() < 0.5 else rng.randrange(cmap.size)
                expect = await step_and_check(ctx, dut, tally, stimulus(), addr, expect)
            # Drain the pipeline, then read every counter back.
            for addr in list(range(cmap.size)) + [0]:
                expect = await step_and_check(ctx, dut, tally, IDLE, addr, expect)
            assert any(tally.value[a] > 1 for a in patterns)
            if phase == 1:
                break

            # Clear: no increment in the clear cycle counts; busy for 2**N cycles.
            inc = stimulus()
            await present(ctx, dut, inc)
            ctx.set(dut.clear, 1)
            assert ctx.get(dut.busy) == 0
            await ctx.tick()
            ctx.set(dut.clear, 0)
            tally.value = [0] * cmap.size
            expect = None
            busy_cycles = 0
            while ctx.get(dut.busy):
                # Closes while busy are not counted; the other counters keep counting.
                inc = stimulus()
                addr = rng.choice([a for a in range(cmap.size) if a not in patterns] or [0])
                expect = await step_and_check(ctx, dut, tally, inc, addr, expect,
                                              count_closes=False)
                busy_cycles += 1
                assert busy_cycles <= 2 ** channels
            assert busy_cycles == 2 ** channels
            for addr in patterns:
                expect = await step_and_check(ctx, dut, tally, IDLE, addr, expect)

    run(dut, bench)


def test_back_to_back_same_pattern_and_latency():
    """Hand-written: a run of closes of one pattern, then alternating patterns, then one read
    per cycle of the same counter, which must lag the increments by exactly one cycle."""
    dut = Counters(3, 1)
    cmap = dut.map
    p5 = cmap.pattern(5)

    async def bench(ctx):
        ctx.set(dut.closed, 1)
        ctx.set(dut.closed_pattern, 5)
        for _ in range(7):
            await ctx.tick()
        for pattern in (3, 5, 3, 5, 5, 3):
            ctx.set(dut.closed_pattern, pattern)
            await ctx.tick()
        ctx.set(dut.closed, 0)
        ctx.set(dut.addr, p5)
        await ctx.tick()
        assert ctx.get(dut.data) == 10
        ctx.set(dut.addr, cmap.pattern(3))
        await ctx.tick()
        assert ctx.get(dut.data) == 3
        # Increments of singles[1] in cycles 0, 1, 2 of this loop; reads set in cycle k see
        # only the increments before cycle k.
        ctx.set(dut.addr, cmap.singles(1))
        seen = []
        for k in range(5):
            ctx.set(dut.singles, 0b010 if k < 3 else 0)
            await ctx.tick()
            seen.append(ctx.get(dut.data))
        assert seen == [0, 1, 2, 3, 3]
        # A close in cycle k is readable by a read set in cycle k + 1.
        ctx.set(dut.addr, p5)
        ctx.set(dut.closed, 1)
        ctx.set(dut.closed_pattern, 5)
        await ctx.tick()
        assert ctx.get(dut.data) == 10       # read set in the close's cycle
        ctx.set(dut.closed, 0)
        await ctx.tick()
        assert ctx.get(dut.data) == 11

    run(dut, bench)


def test_wrap():
    """Counters wrap modulo 2**COUNTER_BITS (the host extends them), never saturate."""
    channels, rules = 2, 2
    # with the stream filter's counters and the gates' gated_out
    dut = Counters(channels, rules, hold=2, gates=True)
    cmap = dut.map

    async def bench(ctx):
        for address, register in dut.registers.items():
            ctx.set(register, WRAP - 2)
        for pattern in range(1, 2 ** channels):
            ctx.set(dut.pattern_data[pattern], WRAP - 2)
        await ctx.tick()
        for k in range(3):
            ctx.set(dut.singles, 0b11)
            ctx.set(dut.herald_fire, 0b11)
            ctx.set(dut.delay_dropped, 0b11)
            ctx.set(dut.merger_dropped, 0b11)
            ctx.set(dut.herald_dropped, 0b11)
            ctx.set(dut.coincidence_dropped, 1)
            ctx.set(dut.gated_out, 0b11)
            for c in range(channels):
                ctx.set(dut.filtered[c], 1)
                ctx.set(dut.filter_dropped[c], 1)
            ctx.set(dut.closed, 1)
            ctx.set(dut.closed_pattern, 3)
            await ctx.tick()
        for name in IDLE:
            ctx.set(getattr(dut, name), 0)
        for c in range(channels):
            ctx.set(dut.filtered[c], 0)
            ctx.set(dut.filter_dropped[c], 0)
        await ctx.tick()
        values = []
        for address in range(cmap.size):
            ctx.set(dut.addr, address)
            await ctx.tick()
            values.append(ctx.get(dut.data))
        expected = [1] * cmap.size
        for pattern in (1, 2):
            expected[cmap.pattern(pattern)] = WRAP - 2
        assert values == expected

    run(dut, bench)


def test_reject_bad_parameters():
    with pytest.raises(ValueError):
        Counters(0, 1)
    with pytest.raises(ValueError):
        Counters(9, 1)
    with pytest.raises(ValueError):
        Counters(4, 9)


def test_gated_out_counted_only_with_gates():
    """gated_out pulses count with ``gates``; without, those counters are not built (read 0)."""
    for gates in (False, True):
        dut = Counters(2, 1, gates=gates)
        got = []

        async def bench(ctx):
            for _ in range(3):
                ctx.set(dut.gated_out, 0b10)
                await ctx.tick()
            ctx.set(dut.gated_out, 0)
            for address in dut.map.range("gated_out"):
                ctx.set(dut.addr, address)
                await ctx.tick()
                got.append(ctx.get(dut.data))

        run(dut, bench)
        assert got == ([0, 3] if gates else [0, 0])
