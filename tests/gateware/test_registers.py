# amaranth: UnusedElaboratable=no
"""Command parser and register file against expectations written from docs/protocol.md and the
register map: every register read, written and read back, ok = 0 cases, the clear strobe, the
STATUS snapshot cadence and content, and replies under back-pressure of the side stream."""

import random

import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.sim import Simulator

import heraldry
from heraldry.wire import encode_command
from heraldry.gateware.registers import CAPABILITIES, CommandParser, RegisterFile
from heraldry.protocol import CAPABILITY_STREAM_FILTER
from heraldry.protocol import (
    CAPABILITY_GATES, CAPABILITY_REFERENCES, COMMAND_BYTES, COUNTER_BASE, MAGIC, PROTOCOL_VERSION, REGISTER_ADDRESS_BITS, WIRE_SEQ_BITS,
    Command, RegisterMap, WireKind,
)

READ, WRITE = Command.READ.value, Command.WRITE.value
CLOCK_HZ = 100_000_000
#: The benches' capabilities: every register is stored.
BENCH_CAPABILITIES = CAPABILITIES | CAPABILITY_GATES | CAPABILITY_STREAM_FILTER
BIN_FS = 10_000_000
FINE_BITS = 0


def spec_crc5(bits):
    """CRC-5 as docs/protocol.md spells it: x^5 + x^2 + 1, initial 0b11111, MSB-first shift
    register, no final XOR."""
    crc = 0b11111
    for bit in bits:
        feedback = (crc >> 4 & 1) ^ bit
        crc = (crc << 1) & 0b11111
        if feedback:
            crc ^= 0b00101
    return crc


def frame_bytes(op, seq, address, value):
    """A command frame as docs/protocol.md spells it: 0x80 | check << 2 | op, then 7 bytes of 7
    bits holding seq (5 bits), address (12), value (32), least significant first; check is the
    CRC-5 of op's 2 bits and then the 49 payload bits, least significant first."""
    payload = seq | address << 5 | value << 17
    check = spec_crc5([op >> i & 1 for i in range(2)] + [payload >> i & 1 for i in range(49)])
    return bytes([0x80 | check << 2 | op] + [payload >> (7 * k) & 0x7F for k in range(7)])


def expected_version():
    major, minor, patch = (int(x) for x in heraldry.__version__.split(".")[:3])
    return major << 16 | minor << 8 | patch


def expected_ident(channels, rules):
    """ident.* values for the benches' parameters, from the register docs."""
    cmap_size = sum((channels, 2 ** channels - 1, rules, channels, channels, rules, 1,
                     channels, channels, channels))  # ..., filtered, filter_dropped, gated_out
    return {
        "ident.magic": MAGIC, "ident.protocol": PROTOCOL_VERSION,
        "ident.gateware": expected_version(), "ident.channels": channels, "ident.rules": rules,
        "ident.fine_bits": FINE_BITS, "ident.bin_fs": BIN_FS, "ident.clock_hz": CLOCK_HZ,
        "ident.capabilities": BENCH_CAPABILITIES, "ident.counters": cmap_size,
    }


# -- command parser --------------------------------------------------------------------------

def run_parser(data, *, seed, ready_p=1.0, gap_p=0.0, max_cycles=None):
    """Feed ``data`` (bytes) with random gaps; take frames with random ready. Returns (frames as
    (op, seq, address, value), number of bad_frame pulses)."""
    dut = CommandParser()
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    frames, bad = [], [0]
    done = [False]

    async def feeder(ctx):
        for byte in data:
            while rng.random() < gap_p:
                await ctx.tick()
            ctx.set(dut.i.payload, byte)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)
        await ctx.tick().repeat(8)
        done[0] = True

    async def sink(ctx):
        while not done[0]:
            ctx.set(dut.o.ready, int(rng.random() < ready_p))
            _, _, valid, ready, payload, pulse = await ctx.tick().sample(
                dut.o.valid, dut.o.ready, dut.o.payload, dut.bad_frame)
            if valid and ready:
                frames.append((payload.op, payload.seq, payload.address, payload.value))
            bad[0] += pulse

    sim.add_testbench(feeder)
    sim.add_testbench(sink, background=True)
    sim.run()
    return frames, bad[0]


def test_parser_boundary_frames():
    """Extreme field values, and frames back to back with no gap."""
    cases = [(READ, 0, 0, 0), (WRITE, 2 ** WIRE_SEQ_BITS - 1, 2 ** REGISTER_ADDRESS_BITS - 1,
                                2 ** 32 - 1), (WRITE, 0b10101, 0x555, 0xA5A5A5A5), (3, 1, 2, 3)]
    data = b"".join(frame_bytes(*c) for c in cases)
    # The bench's reading of the spec agrees with the reference codec's.
    for op, seq, address, value in cases[:3]:
        assert frame_bytes(op, seq, address, value) == encode_command(op, address, value, seq)
    frames, bad = run_parser(data, seed=1)
    assert frames == cases
    assert bad == 0


def test_parser_drops_frames_with_a_damaged_check():
    """Every single flipped payload bit of a frame (in any of its 8 bytes, bit 7 excluded: that
    tears the frame instead) makes the parser drop it and count it once; the good frames around
    the damaged ones come out unchanged. Then random multi-bit damage: a damaged frame comes out
    only if its check happens to match (the spec's CRC says which)."""
    rng = random.Random(11)
    good_frame = (WRITE, 9, 0x104, 0xDEADBEEF)
    template = frame_bytes(*good_frame)
    data, good, lost = bytearray(), [], 0
    for index in range(COMMAND_BYTES):
        for bit in range(7):
            damaged = bytearray(template)
            damaged[index] ^= 1 << bit
            data += damaged
            lost += 1
            cmd = (rng.choice([READ, WRITE]), rng.randrange(2 ** WIRE_SEQ_BITS),
                   rng.randrange(2 ** REGISTER_ADDRESS_BITS), rng.randrange(2 ** 32))
            data += frame_bytes(*cmd)
            good.append(cmd)
    for _ in range(40):
        damaged = bytearray(template)
        for _ in range(rng.randint(2, 6)):
            damaged[rng.randrange(COMMAND_BYTES)] ^= 1 << rng.randrange(7)
        op = damaged[0] & 3
        payload = sum((damaged[1 + k] & 0x7F) << (7 * k) for k in range(7))
        check = spec_crc5([op >> i & 1 for i in range(2)] + [payload >> i & 1 for i in range(49)])
        data += damaged
        if check == damaged[0] >> 2 & 0x1F:
            good.append((op, payload & 31, payload >> 5 & 0xFFF, payload >> 17))
        else:
            lost += 1
    frames, bad = run_parser(bytes(data), seed=12, ready_p=0.5, gap_p=0.2)
    assert frames == good
    assert bad == lost


def test_parser_torn_and_stray_bytes_random():
    """Random mix of good frames, torn frames (a start byte and fewer than 7 payload bytes) and
    runs of stray payload bytes, with input gaps and output back-pressure: exactly the good
    frames come out, in order, and every lost frame is counted once."""
    rng = random.Random(7)
    data = bytearray()
    good, lost = [], 0
    after_frame = True      # stray bytes right after a torn frame would complete it: avoid
    for _ in range(120):
        x = rng.random()
        if x < 0.6:
            cmd = (rng.choice([READ, WRITE]), rng.randrange(2 ** WIRE_SEQ_BITS),
                   rng.randrange(2 ** REGISTER_ADDRESS_BITS), rng.randrange(2 ** 32))
            data += frame_bytes(*cmd)
            good.append(cmd)
            after_frame = True
        elif x < 0.85 or not after_frame:
            torn = frame_bytes(READ, rng.randrange(32), rng.randrange(4096), rng.randrange(2 ** 32))
            data += torn[:rng.randint(1, COMMAND_BYTES - 1)]
            lost += 1
            after_frame = False
        else:
            data += bytes(rng.randrange(0x80) for _ in range(rng.randint(1, 10)))
            lost += 1
            after_frame = False
    final = (READ, 3, 0x123, 0x456)
    data += frame_bytes(*final)
    good.append(final)
    frames, bad = run_parser(bytes(data), seed=8, ready_p=0.3, gap_p=0.3)
    assert frames == good
    assert bad == lost == expected_bad(bytes(data))
    assert lost > 20


def expected_bad(data):
    """Lost frames by the spec: a start byte ends any incomplete frame (lost); a maximal run of
    payload bytes outside a frame is one lost frame."""
    bad = 0
    state = "none"          # "none", "stray", or the number of bytes of the open frame
    for byte in data:
        if byte & 0x80:
            if state not in ("none", "stray"):
                bad += 1
            state = 1
        elif state == "none":
            bad += 1
            state = "stray"
        elif state == "stray":
            pass
        else:
            state += 1
            if state == COMMAND_BYTES:
                state = "none"
    return bad


def test_parser_completing_byte_waits_for_ready():
    """With the output not taken, the first frame is held, the second is assembled up to its
    last byte, and that byte is refused until the first frame is taken (in the same cycle)."""
    dut = CommandParser()
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    first, second = frame_bytes(WRITE, 1, 2, 3), frame_bytes(READ, 4, 5, 6)

    async def bench(ctx):
        accepted = 0
        for byte in first + second:
            ctx.set(dut.i.payload, byte)
            ctx.set(dut.i.valid, 1)
            for _ in range(5):
                _, _, ready = await ctx.tick().sample(dut.i.ready)
                if ready:
                    accepted += 1
                    break
            else:
                break
        # 8 bytes of the first frame and 7 of the second were taken; the 8th waits.
        assert accepted == 2 * COMMAND_BYTES - 1
        assert ctx.get(dut.o.valid)
        assert ctx.get(dut.o.payload.value) == 3
        ctx.set(dut.o.ready, 1)
        _, _, ready = await ctx.tick().sample(dut.i.ready)
        assert ready                      # taken in the same cycle as the first frame
        ctx.set(dut.i.valid, 0)
        ctx.set(dut.o.ready, 0)
        await ctx.tick()
        assert ctx.get(dut.o.valid)
        assert (ctx.get(dut.o.payload.seq), ctx.get(dut.o.payload.address),
                ctx.get(dut.o.payload.value)) == (4, 5, 6)

    sim.add_testbench(bench)
    sim.run()


# -- register file ---------------------------------------------------------------------------

class _Clocked(Elaboratable):
    """The register file with a cycle counter driving its ``now``: every log entry is stamped
    with the value of ``cycle`` in the cycle it happened."""

    def __init__(self, dut, base):
        self.dut = dut
        self.cycle = Signal(32, init=base)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        m.d.sync += self.cycle.eq(self.cycle + 1)
        m.d.comb += self.dut.now.eq(self.cycle)
        return m


class Bench:
    """A RegisterFile with a model of the core around it: a counter read port (data one cycle
    after the address) over ``counters``, ``now`` counting cycles, ``busy`` set by the test, and
    a side-stream consumer with a random ``ready``. Replies and STATUS records are logged as
    (cycle of the handshake, ok, seq, address, value); cycles are values of ``now``."""

    def __init__(self, channels=4, rules=2, *, ready_p=1.0, seed=0,
                 capabilities=BENCH_CAPABILITIES):
        self.dut = RegisterFile(channels, rules, clock_hz=CLOCK_HZ, bin_fs=BIN_FS,
                                fine_bits=FINE_BITS, capabilities=capabilities)
        self.top = _Clocked(self.dut, base=12345)
        self.map = RegisterMap(channels, rules)
        self.channels, self.rules = channels, rules
        rng = random.Random(seed)
        self.counters = [rng.randrange(2 ** 32) for _ in range(self.map.counters.size)]
        self.ready_p = ready_p
        self.rng = rng
        self.replies = []
        self.status = []
        self.clear_cycles = []

    def run(self, body):
        dut, cycle = self.dut, self.top.cycle
        sim = Simulator(self.top)
        sim.add_clock(1e-8)

        async def model(ctx):
            ctx.set(dut.side.ready, int(self.rng.random() < self.ready_p))
            async for _, _, now, addr, valid, ready, payload, clear in ctx.tick().sample(
                    cycle, dut.counter_addr, dut.side.valid, dut.side.ready, dut.side.payload,
                    dut.clear):
                # Counters' read port reads 0 outside the map.
                ctx.set(dut.counter_data,
                        self.counters[addr] if addr < len(self.counters) else 0)
                if valid and ready:
                    entry = (now, payload.ok, payload.seq, payload.address, payload.value)
                    if payload.kind == WireKind.REPLY:
                        self.replies.append(entry)
                    else:
                        assert payload.kind == WireKind.STATUS
                        self.status.append(entry)
                if clear:
                    self.clear_cycles.append(now)
                ctx.set(dut.side.ready, int(self.rng.random() < self.ready_p))

        sim.add_testbench(model, background=True)
        async def main(ctx):
            await body(self, ctx)

        sim.add_testbench(main)
        sim.run()

    async def send(self, ctx, op, address, value=0, seq=None):
        """Offer one command; return (the cycle in which it was taken, its seq)."""
        if seq is None:
            seq = self.rng.randrange(2 ** WIRE_SEQ_BITS)
        dut = self.dut
        ctx.set(dut.command.payload, {"op": op, "seq": seq, "address": address, "value": value})
        ctx.set(dut.command.valid, 1)
        while True:
            _, _, ready, now = await ctx.tick().sample(dut.command.ready, self.top.cycle)
            if ready:
                break
        ctx.set(dut.command.valid, 0)
        return now, seq

    async def command(self, ctx, op, address, value=0):
        """Send one command and wait for its reply; return (ok, value)."""
        before = len(self.replies)
        _, seq = await self.send(ctx, op, address, value)
        while len(self.replies) == before:
            await ctx.tick()
        _, ok, rseq, raddress, rvalue = self.replies[-1]
        assert (rseq, raddress) == (seq, address)
        return ok, rvalue

    async def read(self, ctx, address):
        return await self.command(ctx, READ, address)

    async def write(self, ctx, address, value):
        return await self.command(ctx, WRITE, address, value)


def unknown_addresses(rmap):
    used = {r.address for r in rmap}
    candidates = ([a for a in range(0, COUNTER_BASE + 64) if a not in used][:40]
                  + [max(used) + 1, 2 ** REGISTER_ADDRESS_BITS - 1, COUNTER_BASE - 1])
    return sorted(set(a for a in candidates if a not in used))


@pytest.mark.parametrize("channels,rules", [(4, 2), (1, 1)])
def test_every_register_reads_its_reset_value(channels, rules):
    bench = Bench(channels, rules)
    ident = expected_ident(channels, rules)
    fixed_reset = {"control.run": 0, "control.clear": 0, "control.busy": 1,
                   "control.status_period": 0, "control.anchor_interval": 2 ** 20,
                   "control.bad_frames": 0}
    seen = {}

    async def body(b, ctx):
        ctx.set(b.dut.busy, 1)
        for reg in b.map:
            before = len(b.replies)
            taken, seq = await b.send(ctx, READ, reg.address)
            while len(b.replies) == before:
                await ctx.tick()
            replied, ok, rseq, address, value = b.replies[-1]
            assert (ok, rseq, address) == (1, seq, reg.address), reg.name
            assert replied == taken + 5                  # side stream always ready
            if reg.name == "control.now":
                assert value == taken + 3                # `now` in the cycle the reply is formed
            seen[reg.name] = value
        for address in unknown_addresses(b.map):
            assert await b.read(ctx, address) == (0, 0), hex(address)

    bench.run(body)
    for reg in bench.map:
        if reg.name in ident:
            assert seen[reg.name] == ident[reg.name], reg.name
        elif reg.name in fixed_reset:
            assert seen[reg.name] == fixed_reset[reg.name], reg.name
        elif reg.address >= COUNTER_BASE:
            assert seen[reg.name] == bench.counters[reg.address - COUNTER_BASE], reg.name
        elif reg.name != "control.now":
            assert reg.config_offset is not None, reg.name
            assert seen[reg.name] == reg.reset, reg.name
    assert not bench.status and not bench.clear_cycles


def config_field_values(rmap):
    """Named config fields -> how to read them from the config port's view, per register."""
    def getter(name):
        def get(view):
            obj = view
            for part in name.replace("]", "").replace("[", ".").split("."):
                obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
            return obj.as_value() if hasattr(obj, "as_value") else obj
        return get
    return {reg.name: getter(reg.name) for reg in rmap.config_registers()}


def test_gates_registers_not_stored_without_the_capability():
    """Without CAPABILITY_GATES a write to a gates.* register replies its reset value (0: a
    detector without gate) and the config keeps it; with it the value is stored. With
    CAPABILITY_REFERENCES alone only the role registers are stored."""
    for capabilities, stored, roles in ((CAPABILITIES, False, False),
                                        (BENCH_CAPABILITIES, True, True),
                                        (CAPABILITIES | CAPABILITY_REFERENCES, False, True)):
        bench = Bench(2, 1, capabilities=capabilities)
        got = {}

        async def body(b, ctx):
            for name, value in (("gates.role[0]", 1), ("gates.gate_width[1]", 77),
                                ("gates.marker_every", 5), ("window", 9)):
                got[name] = await b.write(ctx, b.map[name].address, value)
            got["config"] = ctx.get(b.dut.config.gates.gate_width[1])

        bench.run(body)
        assert got["window"] == (1, 9)
        assert got["gates.role[0]"] == (1, 1 if roles else 0)
        assert got["gates.gate_width[1]"] == (1, 77 if stored else 0)
        assert got["gates.marker_every"] == (1, 5 if stored else 0)
        assert got["config"] == (77 if stored else 0)
    # (without the capability they are read as 0, which is every one's reset)
    assert all(reg.reset == 0 for reg in RegisterMap(2, 1) if reg.name.startswith("gates."))


@pytest.mark.parametrize("channels,rules,seed", [(4, 2, 1), (3, 3, 2)])
def test_write_and_read_back_every_writable_register(channels, rules, seed):
    """Random values (with bits above each register's width set) round-trip as value & mask;
    the config port's named fields hold them; read-only registers refuse writes."""
    bench = Bench(channels, rules, seed=seed)
    rng = random.Random(seed)
    getters = config_field_values(bench.map)
    written = {}

    async def body(b, ctx):
        dut = b.dut
        for reg in b.map:
            if reg.access != "rw":
                continue
            value = rng.randrange(2 ** 32) | 1 << 31     # bits beyond any narrower field
            mask = 1 if reg.name == "control.run" else 2 ** reg.width - 1
            ok, back = await b.write(ctx, reg.address, value)
            assert (ok, back) == (1, value & mask), reg.name
            written[reg.name] = value & mask
            if reg.config_offset is not None:
                assert ctx.get(getters[reg.name](dut.config)) == value & mask, reg.name
        # Everything written stays put (no write spilled into a neighbour).
        for name, value in written.items():
            assert await b.read(ctx, b.map[name].address) == (1, value), name
        config = ctx.get(dut.config.as_value())
        for reg in b.map.config_registers():
            assert (config >> reg.config_offset) & (2 ** reg.width - 1) == written[reg.name]
        assert ctx.get(dut.run) == written["control.run"]
        assert ctx.get(dut.status_period) == written["control.status_period"]
        assert ctx.get(dut.anchor_interval) == written["control.anchor_interval"]
        # Writes to read-only registers and unknown addresses: ok = 0, nothing changes.
        for reg in b.map:
            if reg.access == "ro" and reg.name != "control.now" and rng.random() < 0.5:
                expected = (bench.counters[reg.address - COUNTER_BASE]
                            if reg.address >= COUNTER_BASE else None)
                ok, back = await b.write(ctx, reg.address, 0x5A5A5A5A)
                assert ok == 0, reg.name
                if expected is not None:
                    assert back == expected
                elif reg.name.startswith("ident."):
                    assert back == expected_ident(channels, rules)[reg.name]
        for address in unknown_addresses(b.map)[:10]:
            assert await b.write(ctx, address, 0xFFFFFFFF) == (0, 0)
        # Operations that are not commands: ok = 0, value 0, no write.
        target = b.map["window"]
        for op in (2, 3, 0x7F):
            assert await b.command(ctx, op, target.address, 5) == (0, 0)
        assert await b.read(ctx, target.address) == (1, written["window"])
        assert ctx.get(dut.config.as_value()) == config
        # Registers still hold what they held.
        ident = expected_ident(channels, rules)
        for name, value in ident.items():
            assert await b.read(ctx, b.map[name].address) == (1, value)

    bench.run(body)
    assert not bench.clear_cycles


def test_clear_strobe():
    """Writing control.clear with bit 0 set pulses clear for one cycle, 3 cycles after the
    command is taken; bit 0 clear: no pulse. The register reads 0."""
    bench = Bench()
    taken = []

    async def body(b, ctx):
        address = b.map["control.clear"].address
        for value in (1, 0, 2, 0xFFFFFFFF):
            before = len(b.replies)
            cycle, _ = await b.send(ctx, WRITE, address, value)
            taken.append((cycle, value))
            while len(b.replies) == before:
                await ctx.tick()
            assert b.replies[-1][1:2] == (1,) and b.replies[-1][4] == 0
            await ctx.tick().repeat(3)
        assert await b.read(ctx, address) == (1, 0)

    bench.run(body)
    assert bench.clear_cycles == [c + 3 for c, v in taken if v & 1]
    assert [r[0] for r in bench.replies[:4]] == [c + 5 for c, _ in taken]


def test_bad_frames_counter():
    bench = Bench()

    async def body(b, ctx):
        address = b.map["control.bad_frames"].address
        for pulses in (1, 3, 0, 7):
            for _ in range(pulses):
                ctx.set(b.dut.bad_frame, 1)
                await ctx.tick()
                ctx.set(b.dut.bad_frame, 0)
                for _ in range(b.rng.randrange(3)):
                    await ctx.tick()
            ok, value = await b.read(ctx, address)
            assert ok == 1
            results.append(value)

    results = []
    bench.run(body)
    assert results == [1, 4, 4, 11]


def check_snapshots(bench, records):
    """Split STATUS records into complete snapshots (address order, every counter); returns the
    handshake cycle of each snapshot's first record."""
    size = bench.map.counters.size
    assert len(records) % size == 0
    starts = []
    for k in range(0, len(records), size):
        snap = records[k:k + size]
        assert [r[3] for r in snap] == [COUNTER_BASE + i for i in range(size)]
        assert [r[4] for r in snap] == bench.counters
        assert all(r[1] == 1 and r[2] == 0 for r in snap)
        starts.append(snap[0][0])
    return starts


@pytest.mark.parametrize("period", [200, 1])
def test_status_snapshot_cadence_and_content(period):
    """Snapshots start exactly every P cycles (P = 200) or back to back (P = 1, shorter than a
    snapshot), hold every counter, and stop after writing 0."""
    bench = Bench()
    marks = {}

    async def body(b, ctx):
        address = b.map["control.status_period"].address
        taken, _ = await b.send(ctx, WRITE, address, period)
        marks["written"] = taken
        await ctx.tick().repeat(1000)
        while len(b.status) % b.map.counters.size:
            await ctx.tick()
        await b.write(ctx, address, 0)
        marks["stopped"] = b.replies[-1][0]
        while len(b.status) % b.map.counters.size:
            await ctx.tick()
        marks["last"] = len(b.status)
        await ctx.tick().repeat(3 * max(period, 200))

    bench.run(body)
    assert len(bench.status) == marks["last"]            # none after period = 0
    starts = check_snapshots(bench, bench.status)
    per_record = 4               # cycles per STATUS record with the side stream always ready
    size = bench.map.counters.size
    if period == 1:
        gaps = set(b - a for a, b in zip(starts, starts[1:]))
        assert gaps == {per_record * size}
        assert len(starts) >= 1000 // (per_record * size)
    else:
        assert set(b - a for a, b in zip(starts, starts[1:])) == {period}
        # RegisterFile's documented timing: the k-th snapshot's first record is valid in cycle
        # c + k P + 5 after the write taken in cycle c.
        assert starts[0] == marks["written"] + period + 6
        # About 1000 cycles ran before period = 0 (a request due just then is withdrawn).
        assert 1000 // period - 1 <= len(starts) <= 1000 // period + 1


def test_replies_and_snapshots_under_backpressure():
    """Side stream ready 30 % of the time, a snapshot every 60 cycles (shorter than a snapshot
    under this back-pressure), and a stream of random reads and writes issued without waiting
    for the replies: every command gets exactly one reply, in order, with the right value, and
    every snapshot is complete and in order, the replies falling between its records."""
    bench = Bench(ready_p=0.3, seed=5)
    rng = random.Random(11)
    sent = []

    async def body(b, ctx):
        address = b.map["control.status_period"].address
        await b.write(ctx, address, 60)
        regs = [r for r in b.map if r.name not in ("control.now", "control.status_period",
                                                   "control.clear")]
        model = {r.name: r.reset for r in b.map.config_registers()}
        for _ in range(150):
            reg = rng.choice(regs)
            if reg.access == "rw" and rng.random() < 0.5:
                value = rng.randrange(2 ** 32)
                _, seq = await b.send(ctx, WRITE, reg.address, value)
                if reg.config_offset is not None:
                    model[reg.name] = value & (2 ** reg.width - 1)
                    expected = (1, model[reg.name])
                elif reg.name == "control.run":
                    expected = (1, value & 1)
                else:
                    expected = (1, value)
            else:
                _, seq = await b.send(ctx, READ, reg.address)
                expected = (1, reading(b, reg, model))
            if reg.name in ("control.anchor_interval", "control.run") and expected[0]:
                model[reg.name] = expected[1]
            sent.append((seq, reg.address, expected))
            for _ in range(rng.randrange(4)):
                await ctx.tick()
        while len(b.replies) < len(sent) + 1:
            await ctx.tick()
        await b.write(ctx, address, 0)
        while len(b.status) % b.map.counters.size:
            await ctx.tick()

    def reading(b, reg, model):
        if reg.address >= COUNTER_BASE:
            return b.counters[reg.address - COUNTER_BASE]
        if reg.name.startswith("ident."):
            return expected_ident(b.channels, b.rules)[reg.name]
        if reg.name in model:
            return model[reg.name]
        return {"control.run": 0, "control.busy": 0, "control.anchor_interval": 2 ** 20,
                "control.bad_frames": 0}[reg.name]

    bench.run(body)
    replies = bench.replies[1:-1]
    assert [(seq, addr, (ok, value)) for _, ok, seq, addr, value in replies] == sent
    starts = check_snapshots(bench, bench.status)
    assert len(starts) >= 4
    # Replies were interleaved with snapshots, not held back until a snapshot ended.
    size = bench.map.counters.size
    status_cycles = [r[0] for r in bench.status]
    inside = sum(1 for r in replies
                 if any(status_cycles[k] < r[0] < status_cycles[k + size - 1]
                        for k in range(0, len(status_cycles), size)))
    assert inside > 10


def test_committed_register_doc_is_current():
    """docs/registers.md is what heraldry.registers_doc generates from the current map."""
    from pathlib import Path

    from heraldry import registers_doc
    page = Path(__file__).resolve().parents[2] / "docs" / "registers.md"
    assert page.read_text(encoding="utf-8") == registers_doc.render(), \
        "docs/registers.md is stale: run python -m heraldry.registers_doc -o docs/registers.md"
    # Every register of the default build is in it, by name and address.
    for reg in RegisterMap(registers_doc.DEFAULT_CHANNELS, registers_doc.DEFAULT_RULES):
        assert f"| `{reg.address:#05x}` | `{reg.name}` |" in page.read_text(encoding="utf-8")
