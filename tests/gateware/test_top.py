# amaranth: UnusedElaboratable=no
"""The whole tagger in the Amaranth simulator, driven only through its byte streams the way a
host drives a board: command frames from ``heraldry.wire.encode_command`` in, the record stream
out, decoded with ``heraldry.wire.decode_bytes`` and checked against the reference model.
Plus a smoke test that the UART build converts to Verilog with the board's port names."""

import random
import re
from collections import Counter

import numpy as np
import pytest
from amaranth.sim import Simulator

import heraldry
from heraldry import model, wire
from heraldry.gateware.top import Tagger
from heraldry.host.config import Acquisition
from heraldry.protocol import GATES_REGISTERS
from heraldry.model import testsignal as tsmodel
from heraldry.protocol import (
    COARSE_BITS, COUNTER_BASE, MAGIC, PROTOCOL_VERSION, WIRE_SEQ_BITS, Command, Kind, LossCause,
    RegisterMap, WireKind,
)

CHANNELS, RULES = 4, 2
CLOCK_HZ = 100_000_000
PHY_LATENCY = 1          # GenericPHY.latency (checked in tests/test_core_sim.py)
ANCHOR_INTERVAL = 1024   # the smallest the host allows: segments close soon after a run


def version_word():
    major, minor, patch = (int(x) for x in heraldry.__version__.split(".")[:3])
    return major << 16 | minor << 8 | patch


class StreamHost:
    """A host on ``Tagger(link="stream")``: queues command bytes on ``rx``, takes ``tx`` bytes
    (ready with probability ``ready_p`` per cycle), and picks REPLY and STATUS records out of
    the byte stream as they complete. Also watches the core's ``clear``, ``run`` and ``now`` to
    know the run gate (only to build the model's input; the host itself never needs them)."""

    def __init__(self, tagger, *, ready_p=1.0, seed=0):
        self.tagger = tagger
        self.map = RegisterMap(tagger.channels, tagger.rules)
        self.fmt = wire.WireFormat(tagger.channels, tagger.rules)
        self.rng = random.Random(seed)
        self.ready_p = ready_p
        self.sending = bytearray()
        self.data = bytearray()
        self.scan = 0                 # start of the first record not yet examined
        self.side = []                # ("reply" | "status", ok, seq, address, value)
        self.replies = []
        self.seq = 0
        self.clears = []              # `now` in each cycle with clear high
        self.run_edges = []           # (`now`, run) at each change of the run gate
        self.cycles = 0
        self.led = 0

    # -- link model (background) -------------------------------------------------------------

    async def link(self, ctx):
        t, core = self.tagger, self.tagger.core
        run = 0
        ctx.set(t.tx.ready, 1)
        async for sample in ctx.tick().sample(
                t.rx.valid, t.rx.ready, t.tx.valid, t.tx.ready, t.tx.payload,
                core.clear, core.run, core.now, t.led):
            _, _, rx_valid, rx_ready, tx_valid, tx_ready, byte, clear, run_now, now, led = sample
            self.cycles += 1
            self.led = led
            if rx_valid and rx_ready:
                del self.sending[0]
            if tx_valid and tx_ready:
                self.data.append(byte)
            if clear:
                self.clears.append(now)
            if run_now != run:
                self.run_edges.append((now, run_now))
                run = run_now
            ctx.set(t.rx.valid, int(bool(self.sending)))
            if self.sending:
                ctx.set(t.rx.payload, self.sending[0])
            ctx.set(t.tx.ready, int(self.rng.random() < self.ready_p))

    def poll(self):
        """Examine the records completed since the last call; keep STATUS and REPLY ones."""
        data = self.data
        while self.scan < len(data):
            start = self.scan
            assert data[start] & 0x80, "the stream lost record framing"
            kind = self.fmt.record_kind(data[start])
            fixed = self.fmt.fixed_bytes[kind]
            if fixed is not None:
                if len(data) < start + fixed:
                    return
                end = start + fixed
            else:
                end = start + 1
                while end < len(data) and not data[end] & 0x80:
                    end += 1
                if end == len(data):
                    return            # a variable-length record is complete at the next start
            if kind in (WireKind.REPLY, WireKind.STATUS):
                parsed = self.fmt.well_formed(bytes(data[start:end]))
                assert parsed is not None
                v = parsed[1]
                entry = ("reply" if kind is WireKind.REPLY else "status",
                         v["ok"], v["seq"], v["address"], v["value"])
                self.side.append(entry)
                if kind is WireKind.REPLY:
                    self.replies.append(entry)
            self.scan = end

    # -- commands ---------------------------------------------------------------------------

    async def wait(self, ctx, cycles):
        for _ in range(cycles):
            await ctx.tick()

    async def command(self, ctx, op, address, value=0):
        """Send one frame, wait for its REPLY; return (ok, value)."""
        seq = self.seq
        self.seq = (self.seq + 1) % 2 ** WIRE_SEQ_BITS
        self.sending += wire.encode_command(op, address, value, seq)
        before = len(self.replies)
        seen = len(self.data)
        for _ in range(10_000):
            await ctx.tick()
            if len(self.data) != seen:
                seen = len(self.data)
                self.poll()
                if len(self.replies) > before:
                    break
        else:
            raise AssertionError(f"no reply to command {op} {address:#x}")
        assert len(self.replies) == before + 1
        _, ok, rseq, raddress, rvalue = self.replies[-1]
        assert (rseq, raddress) == (seq, address)
        return ok, rvalue

    async def read(self, ctx, name_or_address):
        address = (self.map[name_or_address].address if isinstance(name_or_address, str)
                   else name_or_address)
        ok, value = await self.command(ctx, Command.READ, address)
        assert ok == 1, name_or_address
        return value

    async def write(self, ctx, name, value):
        ok, back = await self.command(ctx, Command.WRITE, self.map[name].address, value)
        assert ok == 1, name
        return back

    def status_count(self):
        return sum(1 for s in self.side if s[0] == "status")

    async def until(self, ctx, condition, limit=20_000):
        """Tick (examining new records) until ``condition()`` holds; fail after ``limit``."""
        for _ in range(limit):
            if condition():
                return
            await ctx.tick()
            self.poll()
        raise AssertionError(f"condition not met within {limit} cycles")


def simulate(tagger, host, body):
    sim = Simulator(tagger)
    sim.add_clock(1e-8)
    sim.add_testbench(host.link, background=True)

    async def main(ctx):
        await body(ctx)

    sim.add_testbench(main)
    sim.run()


@pytest.mark.parametrize("gates", [False, True])
def test_every_core_block_has_its_own_clear_register(gates):
    """The Tagger gives each block of its core a `clear` register of its own, loaded from the
    register file's `clear_next` (TaggerCore.clear_next; the ULX3S build keeps them apart): one
    per block, each high in exactly the cycles the register file's `clear` is, through writes
    of control.clear 1 and 0 between other commands."""
    channels = 3
    tagger = Tagger(channels, 1, clock_hz=CLOCK_HZ, link="stream", gates=gates)
    host = StreamHost(tagger, seed=5)
    regs, core = tagger.registers, tagger.core
    blocks = {"test_signal", "core", "coincidence", "heralds", "stream_filter", "merger",
              "counters", *(f"input{c}" for c in range(channels)),
              *(f"delay{c}" for c in range(channels))} | ({"gates"} if gates else set())
    cycles = {"high": 0, "differ": 0}

    async def watch(ctx):
        assert set(core.clear_copies) == blocks
        copies = list(core.clear_copies.values())
        async for _, _, clear, *mine in ctx.tick().sample(regs.clear, *copies):
            cycles["high"] += clear
            cycles["differ"] += sum(copy != clear for copy in mine)

    async def body(ctx):
        for value in (1, 0, 1, 1):
            await host.write(ctx, "control.clear", value)
            await host.read(ctx, "control.busy")
        await host.wait(ctx, 10)

    sim = Simulator(tagger)
    sim.add_clock(1e-8)
    sim.add_testbench(host.link, background=True)
    sim.add_testbench(watch, background=True)
    sim.add_testbench(body)
    sim.run()
    assert cycles["high"] == 3          # one cycle per write of 1
    assert cycles["differ"] == 0


def test_identification_and_config_round_trip():
    """ident.* from the build's parameters; every config register written with a random value
    in the host's range reads back, and all hold together; a torn frame is dropped and counted;
    an unknown address gets ok = 0; led[0] lights with the first command."""
    tagger = Tagger(CHANNELS, RULES, clock_hz=CLOCK_HZ, link="stream")
    host = StreamHost(tagger, seed=1)
    rng = random.Random(2)
    cmap_size = (CHANNELS + 2 ** CHANNELS - 1 + RULES + CHANNELS + CHANNELS + RULES + 1
                 + 3 * CHANNELS)        # gated_out, filtered, filter_dropped
    expected_ident = {
        "ident.magic": MAGIC, "ident.protocol": PROTOCOL_VERSION,
        "ident.gateware": version_word(), "ident.channels": CHANNELS, "ident.rules": RULES,
        "ident.fine_bits": 0, "ident.bin_fs": 10 ** 15 // CLOCK_HZ, "ident.clock_hz": CLOCK_HZ,
        "ident.capabilities": 0b10111, "ident.counters": cmap_size,   # bit 4: stream filter
    }
    got = {}

    async def body(ctx):
        await host.wait(ctx, 4)
        assert host.led == 0
        for name in expected_ident:
            got[name] = await host.read(ctx, name)
        assert host.led & 1
        written = {}
        for reg in host.map.config_registers():
            value = rng.randint(reg.minimum, reg.maximum)
            # This core is built without gates (capability bit 3 clear): its gates.* registers
            # are not stored and read their reset value, 0, whatever is written.
            stored = not reg.name.startswith(GATES_REGISTERS)
            assert await host.write(ctx, reg.name, value) == (value if stored else 0), reg.name
            written[reg.name] = value if stored else 0
        for reg in host.map.config_registers():
            assert await host.read(ctx, reg.name) == written[reg.name], reg.name
        # A torn frame (3 bytes of a write to window), then a good frame: one reply, one loss.
        host.sending += wire.encode_command(Command.WRITE, host.map["window"].address, 7, 9)[:3]
        assert await host.read(ctx, "window") == written["window"]
        assert await host.read(ctx, "control.bad_frames") == 1
        unknown = max(r.address for r in host.map) + 1
        assert await host.command(ctx, Command.READ, unknown) == (0, 0)
        assert await host.command(ctx, Command.WRITE, host.map["ident.magic"].address, 1) \
            == (0, MAGIC)

    simulate(tagger, host, body)
    assert got == expected_ident
    records, errors = wire.decode_bytes(bytes(host.data), CHANNELS, RULES)
    # Nothing but replies: no segment was opened, nothing skipped.
    assert [r["kind"] for r in records] == ["reply"] * len(host.replies)
    assert errors == {"decode_errors": 0, "skipped_bytes": 0, "unverified": 0}


def _acquisition(pair_rate_hz):
    return Acquisition(channels=CHANNELS, rules=RULES, test_signal="pairs",
                       pair_rate_hz=pair_rate_hz, efficiency=0.6, dark_rate_hz=3e5,
                       pair_delay_bins=5, delays_bins=[5, 0, 0, 2], window_bins=2,
                       herald_masks=[0b0011, 0b0110], herald_width=2,
                       coincidence_record_mask=(1 << 0b0011) | (1 << 0b0111), seed=11)


@pytest.mark.parametrize("lossy", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["lossless", "backpressure"])
def test_acquisition_end_to_end(lossy):
    """Configure the pairs test signal by commands, clear, run ~3000 cycles with STATUS
    snapshots on, stop, wait for the last segment to close, read every counter by command and
    take a snapshot. Lossless: the streamed tags, heralds and coincidence records equal the
    bit-exact model's, and the counters equal ``model.counts_from_tags`` of the tags. With a
    link that takes a byte a quarter of the time and an 8-bundle FIFO: every streamed tag is a
    model tag, tags + MERGER_FULL losses = singles exactly, the counters upstream of the merger
    equal the model's, and led[1] shows the loss until control.clear. The host checks every
    write's read-back value."""
    acq = _acquisition(2e7 if lossy else 5e6)
    settings = acq.model_settings()
    tagger = Tagger(CHANNELS, RULES, clock_hz=CLOCK_HZ, link="stream",
                    fifo_depth=8 if lossy else 256)
    host = StreamHost(tagger, seed=3)
    rmap = host.map
    size = rmap.counters.size
    bits = acq.gateware_config().as_bits()
    result = {}

    async def body(ctx):
        for reg in rmap.config_registers():
            value = bits >> reg.config_offset & (2 ** reg.width - 1)
            assert await host.write(ctx, reg.name, value) == value
        await host.write(ctx, "control.anchor_interval", ANCHOR_INTERVAL)
        await host.write(ctx, "control.clear", 1)
        for _ in range(100):
            if not await host.read(ctx, "control.busy"):
                break
        else:
            raise AssertionError("busy stuck after clear")
        await host.write(ctx, "control.status_period", 1500)
        # The slow link (if any) during the run and the drain; set-up and read-out at full speed.
        host.ready_p = 0.25 if lossy else 1.0
        await host.write(ctx, "control.run", 1)
        await host.wait(ctx, 3000)
        await host.write(ctx, "control.run", 0)
        # Drain: the pipeline (delay + window + merger), then an idle anchor interval, after
        # which the encoder closes the last segment with a CHECK.
        await host.wait(ctx, ANCHOR_INTERVAL + 300)
        host.ready_p = 1.0
        await host.write(ctx, "control.status_period", 0)
        await host.until(ctx, lambda: host.status_count() % size == 0)
        result["counters"] = [await host.read(ctx, COUNTER_BASE + i) for i in range(size)]
        # One more snapshot, now that the counters stand still.
        await host.write(ctx, "control.status_period", 64)
        result["snapshot_from"] = len(host.side)
        await host.until(ctx, lambda: host.status_count() % size == 0
                         and len(host.side) >= result["snapshot_from"] + size)
        await host.write(ctx, "control.status_period", 0)
        await host.until(ctx, lambda: host.status_count() % size == 0)
        result["led_after_run"] = host.led
        await host.write(ctx, "control.clear", 1)
        await host.wait(ctx, 2)
        result["led_after_clear"] = host.led

    simulate(tagger, host, body)
    counters = np.array(result["counters"], np.int64)
    cmap = rmap.counters
    group = {name: counters[list(cmap.range(name))] for name in
             ("singles", "patterns", "heralds", "delay_dropped", "merger_dropped",
              "herald_dropped", "coincidence_dropped")}

    # The whole stream decodes cleanly with the reference decoder.
    records, errors = wire.decode_bytes(bytes(host.data), CHANNELS, RULES)
    assert errors["decode_errors"] == 0 and errors["skipped_bytes"] == 0
    side = [(r["kind"], r["ok"], r["seq"], r["address"], r["value"]) for r in records
            if r["kind"] in ("reply", "status")]
    assert side == host.side
    assert all(r[1] == 1 for r in host.replies)

    # Snapshots: complete, in address order; the last equals the counters read by command.
    status = [s for s in host.side if s[0] == "status"]
    assert len(status) % size == 0 and len(status) >= 2 * size
    for k in range(0, len(status), size):
        assert [s[3] for s in status[k:k + size]] == [COUNTER_BASE + i for i in range(size)]
        assert all(s[1] == 1 and s[2] == 0 for s in status[k:k + size])
    last = [s for s in host.side[result["snapshot_from"]:] if s[0] == "status"][:size]
    assert [s[4] for s in last] == counters.tolist()

    # The run gate as the core saw it, and the bit-exact test-signal model.
    (start, up), (stop, down) = host.run_edges
    assert (up, down) == (1, 0) and 3000 <= stop - start <= 3400
    origin = host.clears[0] + 1          # cycle k = 0 of the re-seeded test signal
    ts = tsmodel.TestSignalSettings(
        seed=acq.seed, period=0, pair_threshold=acq.pair_threshold(),
        eta_a=acq.efficiency_threshold(), eta_b=acq.efficiency_threshold(),
        pair_delay=acq.pair_delay_cycles(), dark=(acq.dark_threshold(),) * CHANNELS,
        sources=tuple(s.name.lower() for s in acq.sources()))
    ks = tsmodel.generate(ts, stop - origin + 8)
    rise = [k + origin - PHY_LATENCY for k in ks]
    fall = [np.zeros(0, np.int64)] * CHANNELS
    expected = model.simulate(rise, fall, settings,
                              gate=[(start - PHY_LATENCY, stop - PHY_LATENCY)])

    # Device time starts at 0 at reset (`ref` starts at 0 and has not wrapped in so short a
    # run), so the absolute times the encoder sends equal the coarse times.
    anchors = [r["time"] for r in records if r["kind"] == "anchor"]
    assert anchors and all(a >> COARSE_BITS == 0 for a in anchors)
    tag_records = [r for r in records if r["kind"] == Kind.TAG]
    tags = np.zeros(len(tag_records), model.TAG_DTYPE)
    tags["time"] = [r["time"] for r in tag_records]
    tags["channel"] = [r["channel"] for r in tag_records]
    lost = Counter()
    for r in records:
        if r["kind"] == Kind.LOSS:
            lost[(r["cause"], r["index"])] += r["count"]
    merger_lost = np.array([lost[(LossCause.MERGER_FULL, c)] for c in range(CHANNELS)])
    per_channel = np.bincount(tags["channel"].astype(np.int64), minlength=CHANNELS)

    # Counters upstream of the merger equal the model's, lossy or not.
    assert group["singles"].tolist() == expected.singles.tolist()
    assert group["patterns"].tolist() == expected.patterns[1:].tolist()
    assert group["heralds"].tolist() == expected.herald_counts.tolist()
    assert group["delay_dropped"].tolist() == expected.delay_dropped.tolist() == [0] * CHANNELS
    # Streamed tags + MERGER_FULL losses = singles, exactly; losses = the drop counters.
    np.testing.assert_array_equal(per_channel + merger_lost, group["singles"])
    np.testing.assert_array_equal(merger_lost, group["merger_dropped"])
    heralds = [r for r in records if r["kind"] == Kind.HERALD]
    for rule in range(RULES):
        assert (sum(1 for h in heralds if h["rule"] == rule)
                + lost[(LossCause.HERALD_RECORD, rule)] == group["heralds"][rule])
        assert lost[(LossCause.HERALD_RECORD, rule)] == group["herald_dropped"][rule]
    coinc = [r for r in records if r["kind"] == Kind.COINCIDENCE]
    assert (len(coinc) + lost[(LossCause.COINCIDENCE_RECORD, 0)]
            == len(expected.coincidence_records))
    assert lost[(LossCause.COINCIDENCE_RECORD, 0)] == group["coincidence_dropped"][0]
    assert np.all(np.diff(tags["time"]) >= 0)

    if lossy:
        assert merger_lost.sum() > 50
        # Every streamed tag is one of the model's (bundles are dropped whole, never altered).
        model_tags = Counter(zip(expected.tags["time"].tolist(),
                                 expected.tags["channel"].tolist()))
        streamed = Counter(zip(tags["time"].tolist(), tags["channel"].tolist()))
        assert not streamed - model_tags
        assert result["led_after_run"] >> 1 & 1
    else:
        assert merger_lost.sum() == 0 and not lost
        np.testing.assert_array_equal(tags, expected.tags)
        assert [(h["time"], h["rule"], h["pattern"]) for h in heralds] == \
            list(zip(*(expected.heralds[f].tolist() for f in ("time", "rule", "pattern"))))
        assert [(c["time"], c["pattern"]) for c in coinc] == \
            list(zip(*(expected.coincidence_records[f].tolist() for f in ("time", "pattern"))))
        from_tags = model.counts_from_tags(tags, settings)
        assert group["singles"].tolist() == from_tags.singles.tolist()
        assert group["patterns"].tolist() == from_tags.patterns[1:].tolist()
        assert group["heralds"].tolist() == from_tags.herald_counts.tolist()
        assert group["patterns"][0b0011 - 1] > 20 and group["heralds"][0] > 20
        assert not result["led_after_run"] >> 1 & 1
    assert result["led_after_run"] & 1
    assert not result["led_after_clear"] >> 1 & 1


def test_uart_top_converts_to_verilog(monkeypatch):
    """The board build converts (built-in Yosys) with exactly the board's ports."""
    from amaranth.back import verilog
    monkeypatch.setenv("AMARANTH_USE_YOSYS", "builtin")
    text = verilog.convert(Tagger(link="uart"), name="heraldry_top")
    header = re.search(r"module heraldry_top\s*\((.*?)\);", text, re.S)
    assert header is not None
    ports = {p.strip() for p in header.group(1).split(",")}
    assert ports == {"clk", "rst", "pins", "herald", "led", "uart_rx", "uart_tx"}
    for port, direction, width in (("pins", "input", CHANNELS), ("herald", "output", RULES),
                                   ("led", "output", 2), ("uart_rx", "input", 1),
                                   ("uart_tx", "output", 1)):
        decl = rf"{direction}\s+(?:wire\s+)?" + (rf"\[{width - 1}:0\]\s*" if width > 1 else "")
        assert re.search(decl + rf"{port}\s*;", text), port


def test_uart_link_answers_a_command():
    """The board build over its serial lines: 8N1 at 12 Mbaud from 100 MHz, bit-banged by the
    bench (ideal bit edges every 100/12 cycles, rounded to a cycle; the line asynchronous to the
    tagger's clock is not modelled beyond that). A READ of ident.magic and a WRITE of window get
    their REPLYs on uart_tx; uart_tx idles high."""
    baud = 12_000_000
    tagger = Tagger(CHANNELS, RULES, clock_hz=CLOCK_HZ, baud=baud, link="uart")
    rmap = RegisterMap(CHANNELS, RULES)
    bit = CLOCK_HZ / baud
    commands = (wire.encode_command(Command.READ, rmap["ident.magic"].address, 0, 5)
                + wire.encode_command(Command.WRITE, rmap["window"].address, 9, 6))
    # Line level per cycle: idle, then each byte as start, 8 data bits (LSB first), stop.
    levels = [1] * 20
    for byte in commands:
        frame = [0] + [byte >> i & 1 for i in range(8)] + [1]
        start = len(levels)
        for k, level in enumerate(frame):
            levels += [level] * (round(start + (k + 1) * bit) - len(levels))
    levels += [1] * 1600
    line = []

    async def bench(ctx):
        for level in levels:
            ctx.set(tagger.uart_rx, level)
            _, _, tx = await ctx.tick().sample(tagger.uart_tx)
            line.append(tx)

    sim = Simulator(tagger)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()

    # Receive 8N1 from the sampled line: a falling edge, then the middle of each bit.
    received, k = bytearray(), 0
    assert line[0] == 1
    while k < len(line):
        if line[k] == 0:
            bits = [line[int(k + (i + 0.5) * bit)] for i in range(10)
                    if int(k + (i + 0.5) * bit) < len(line)]
            assert len(bits) == 10 and bits[0] == 0 and bits[9] == 1, "framing"
            received.append(sum(b << i for i, b in enumerate(bits[1:9])))
            k = int(k + 9.5 * bit)
            while k < len(line) and line[k] == 0:
                k += 1
        else:
            k += 1
    assert line[-1] == 1
    records, errors = wire.decode_bytes(bytes(received), CHANNELS, RULES)
    assert [(r["kind"], r["ok"], r["seq"], r["address"], r["value"]) for r in records] == [
        ("reply", 1, 5, rmap["ident.magic"].address, MAGIC),
        ("reply", 1, 6, rmap["window"].address, 9)]
    assert errors == {"decode_errors": 0, "skipped_bytes": 0, "unverified": 0}
