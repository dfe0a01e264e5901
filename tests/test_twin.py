"""The Verilated virtual board (``sim/twin.py``, ``sim/twin/main.cpp``) driven over its pty.

The board is the full top level (``Tagger(link="uart")``), built once per session. Each test
talks to it with pyserial and the reference codec (:mod:`heraldry.wire`) only, not with the host
driver, so a failure here is the board's or the harness's: command frames are built with
``wire.encode_command``, REPLY records found by their fixed length and decoded with
``WireFormat.well_formed``, and the whole stream checked with ``wire.decode_bytes``. Expected
values come from :mod:`heraldry.protocol` (identification, register map), from the hardware
counters read over the same link (tags + losses = singles), from the pins file (exact bins), or
from the herald records (herald pin rises).
"""

import random
import shutil
import subprocess
import time

import numpy as np
import pytest

import serial  # noqa: E402  (pyserial is a dependency: never skip for want of it)

from heraldry import protocol, wire  # noqa: E402
from heraldry.host.config import Acquisition  # noqa: E402
from heraldry.protocol import (  # noqa: E402
    CONFIG_BASE, COUNTER_BASE, MAGIC, PROTOCOL_VERSION, WIRE_START, Command, Edge, Kind, LossCause,
    RegisterMap, WireKind,
)
from heraldry.gateware.phy import GenericPHY  # noqa: E402
from heraldry.gateware.core import TaggerCore  # noqa: E402
from heraldry.sim.twin import Twin, TwinError, build_twin, convert_top  # noqa: E402

# `now` during reset and cycle 0 (TaggerCore.latency = GenericPHY.latency + TaggerCore.PIPELINE).
NOW_AT_RESET = GenericPHY.latency + TaggerCore.PIPELINE
CHANNELS, RULES = 4, 2
#: The virtual board is built with the gates option: HERALD records carry attempt and offset.
GATES = True
CLOCK_HZ, BAUD = 100_000_000, 12_000_000
WRAP = 2 ** protocol.COARSE_BITS
MAP = RegisterMap(CHANNELS, RULES)
#: An address between the config registers and the counters that no register uses.
UNUSED_ADDRESS = next(a for a in range(CONFIG_BASE, COUNTER_BASE) if a not in MAP.by_address)


@pytest.fixture(scope="module")
def verilog():
    return convert_top(CHANNELS, RULES, CLOCK_HZ, BAUD)


@pytest.fixture(scope="module")
def binary(verilog):
    return build_twin(CHANNELS, RULES, CLOCK_HZ, BAUD)   # g++ and make are required: no skip


class Link:
    """Command/reply over the pty, keeping every byte the board sent in ``stream``."""

    def __init__(self, port):
        self.serial = serial.Serial(port, timeout=0.02)
        self.stream = bytearray()
        self.fmt = wire.WireFormat(CHANNELS, RULES, gates=GATES)
        self._reply_bytes = self.fmt.fixed_bytes[WireKind.REPLY]
        self._scan = 0
        self._replies = {}
        self._seq = 0
        #: (offset, kind) of the last record start that is not a REPLY or STATUS.
        self.last_record = None

    def pump(self):
        self.stream += self.serial.read(max(1, self.serial.in_waiting))
        buf, i = self.stream, self._scan
        while i < len(buf):
            if buf[i] >= WIRE_START:
                kind = self.fmt.record_kind(buf[i])
                if kind is WireKind.REPLY:
                    if i + self._reply_bytes > len(buf):
                        break
                    parsed = self.fmt.well_formed(bytes(buf[i:i + self._reply_bytes]))
                    if parsed is not None:
                        self._replies[parsed[1]["seq"]] = parsed[1]
                        i += self._reply_bytes
                        continue
                elif kind is not WireKind.STATUS:
                    self.last_record = (i, kind)
            i += 1
        self._scan = i

    def command(self, op, address, value=0, timeout=5.0):
        # seq 0 is what STATUS records carry; use 1 .. 2**WIRE_SEQ_BITS - 1.
        self._seq = self._seq % (2 ** protocol.WIRE_SEQ_BITS - 1) + 1
        seq = self._seq
        self._replies.pop(seq, None)
        self.serial.write(wire.encode_command(op, address, value, seq))
        deadline = time.monotonic() + timeout
        while seq not in self._replies:
            assert time.monotonic() < deadline, f"no REPLY to {op} {address:#05x}"
            self.pump()
        reply = self._replies.pop(seq)
        assert reply["address"] == address
        return reply

    def read(self, name):
        reply = self.command(Command.READ, MAP[name].address)
        assert reply["ok"], name
        return reply["value"]

    def write(self, name, value):
        reply = self.command(Command.WRITE, MAP[name].address, value)
        assert reply["ok"], name
        return reply["value"]

    def configure(self, acq):
        """Every config register from an Acquisition's config bits; each write read back."""
        bits = acq.gateware_config().as_value().value
        for reg in MAP.config_registers():
            value = bits >> reg.config_offset & ((1 << reg.width) - 1)
            assert self.write(reg.name, value) == value, reg.name

    def wait_cycles(self, cycles, since, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            now = self.read("control.now")
            if (now - since) % WRAP >= cycles:
                return now
            assert time.monotonic() < deadline, f"device time stuck at {now}"

    def drain(self, interval):
        """After the run gate closed: wait until the encoder is idle, i.e. the last record (not
        counting replies) is a CHECK and still is ``interval`` cycles later. The encoder takes a
        queued item as soon as it can (docs/protocol.md), so a backlog cannot hide behind it."""
        seen = None
        now = self.read("control.now")
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "the encoder did not go idle"
            now = self.wait_cycles(interval, now)
            if self.last_record is not None and self.last_record[1] is WireKind.CHECK:
                if self.last_record == seen:
                    return
                seen = self.last_record
            else:
                seen = None

    def clear(self):
        self.write("control.clear", 1)
        while self.read("control.busy"):
            pass

    def counters(self, group):
        return [self.read(MAP.by_address[COUNTER_BASE + a].name)
                for a in MAP.counters.range(group)]

    def close(self):
        self.serial.close()


def _verified_records(stream):
    """Decode the stream up to its last CHECK; every segment must verify and nothing be skipped.

    Closing the port cuts the stream anywhere, possibly inside a segment (or a record) that
    began after the run; the records of a run are those up to the last CHECK, which
    :meth:`Link.drain` waits for.
    """
    fmt = wire.WireFormat(CHANNELS, RULES, gates=GATES)
    end, position = 0, 0
    for record in wire.split_records(bytes(stream)):
        position += len(record)
        if record[0] >= WIRE_START and fmt.record_kind(record[0]) is WireKind.CHECK:
            end = position
    assert end, "no CHECK in the stream"
    records, errors = wire.decode_bytes(bytes(stream[:end]), CHANNELS, RULES, gates=GATES)
    assert errors == {"decode_errors": 0, "skipped_bytes": 0, "unverified": 0}
    return records


def _closed_cleanly(twin):
    """The port is closed: the harness must exit by itself, cleanly, with its figures."""
    assert twin.wait(10) == 0
    assert twin.stats["exit"] == "hangup"
    assert twin.stats["framing_errors"] == 0
    assert twin.stats["cycles"] > 0 and twin.cycles_per_s > 0


def test_identification_and_registers(binary):
    with Twin(binary) as twin:
        assert twin.port.startswith("/dev/")
        link = Link(twin.port)
        assert link.read("ident.magic") == MAGIC
        assert link.read("ident.protocol") == PROTOCOL_VERSION
        assert link.read("ident.channels") == CHANNELS
        assert link.read("ident.rules") == RULES
        assert link.read("ident.clock_hz") == CLOCK_HZ
        assert link.read("ident.counters") == MAP.counters.size
        # Resets as the register map states them.
        for name in ("window", "herald_width", "control.anchor_interval", "channel[2].edge"):
            assert link.read(name) == MAP[name].reset, name
        # Write/read back, boundaries of the field's width.
        for name, value in (("window", 2 ** protocol.WINDOW_BITS - 1), ("window", 1),
                            ("channel[3].delay", 2 ** protocol.DELAY_BITS - 1),
                            ("test.seed", 0xDEADBEEF), ("control.status_period", 0)):
            assert link.write(name, value) == value
            assert link.read(name) == value
        # Refused: a write to a read-only register, an address that does not exist.
        reply = link.command(Command.WRITE, MAP["ident.magic"].address, 5)
        assert not reply["ok"]
        assert link.read("ident.magic") == MAGIC
        assert not link.command(Command.READ, UNUSED_ADDRESS)["ok"]
        # Device time advances between reads.
        first = link.read("control.now")
        assert (link.read("control.now") - first) % WRAP > 0
        link.close()
        _closed_cleanly(twin)
        assert twin.stats["bytes_from_host"] % protocol.COMMAND_BYTES == 0


def test_pairs_stream_accounts_for_every_single(binary):
    # Pair rate above what 12 Mbaud carries: the merger FIFO fills and loss records appear, so
    # both the lossless start and the lossy steady state go through the accounting.
    acq = Acquisition(channels=CHANNELS, rules=RULES, window_bins=4,
                      herald_masks=[0b0011, 0b0100], herald_width=4, test_signal="pairs",
                      pair_rate_hz=1e6, dark_rate_hz=5e4, efficiency=0.5, seed=12345)
    run_cycles = 100_000
    with Twin(binary) as twin:
        link = Link(twin.port)
        link.configure(acq)
        interval = MAP["control.anchor_interval"].minimum
        link.write("control.anchor_interval", interval)
        link.clear()
        before = link.read("control.now")
        link.write("control.run", 1)
        link.wait_cycles(run_cycles, before)
        link.write("control.run", 0)
        after = link.read("control.now")
        link.drain(interval)
        singles = link.counters("singles")
        merger_dropped = link.counters("merger_dropped")
        delay_dropped = link.counters("delay_dropped")
        heralds = link.counters("heralds")
        herald_dropped = link.counters("herald_dropped")
        link.close()
        _closed_cleanly(twin)

    records = _verified_records(link.stream)
    tags = [0] * CHANNELS
    herald_times = [[] for _ in range(RULES)]
    lost = {}
    for rec in records:
        if rec["kind"] is Kind.TAG:
            tags[rec["channel"]] += 1
            # Accepted only while the gate was open (PHY and input-stage latency: a few cycles;
            # modulo the coarse counter, as in the pins test).
            assert before - 8 <= rec["time"] % WRAP <= after, rec
        elif rec["kind"] is Kind.HERALD:
            herald_times[rec["rule"]].append(rec["time"])
        elif rec["kind"] is Kind.LOSS:
            key = (rec["cause"], rec["index"])
            lost[key] = lost.get(key, 0) + rec["count"]
    assert sum(singles) > 1000 and min(singles) > 0
    assert sum(merger_dropped) > 0, "the run was meant to overflow the link"
    for c in range(CHANNELS):
        assert tags[c] + lost.get((LossCause.MERGER_FULL, c), 0) == singles[c], c
        assert lost.get((LossCause.MERGER_FULL, c), 0) == merger_dropped[c], c
        assert lost.get((LossCause.DELAY_FULL, c), 0) == delay_dropped[c] == 0, c
    for r in range(RULES):
        assert len(herald_times[r]) + lost.get((LossCause.HERALD_RECORD, r), 0) == heralds[r]
        assert lost.get((LossCause.HERALD_RECORD, r), 0) == herald_dropped[r]
        # The harness counts rises of the herald pins (checked exactly in the pins test).
        assert 0 < twin.stats["herald_rises"][r] <= heralds[r]


HERALD_WIDTH = 4
HERALD_MASKS = [0b0001, 0b0110]


def _pin_edges(first, seed=7):
    """Rising/falling edges on every channel from cycle ``first`` on: random pulses (1-4 cycles
    high, 2-40 low) plus hand-written cases: all channels rising in one cycle, 1-cycle pulses,
    channel 0 rising HERALD_WIDTH and HERALD_WIDTH + 1 cycles after its previous rise. Under 256
    cycles with events, so the merger FIFO holds them all while the link catches up: this test
    is about bins, not losses."""
    rnd = random.Random(seed)
    edges = []
    for c in range(CHANNELS):
        t = first + c
        for _ in range(30):
            high = rnd.randint(1, 4)
            edges += [(t, c, 1), (t + high, c, 0)]
            t += high + rnd.randint(2, 40)
    end = max(e[0] for e in edges) + 10
    for c in range(CHANNELS):                       # all at once, then 1-cycle pulses
        edges += [(end, c, 1), (end + 1, c, 0), (end + 3, c, 1), (end + 4, c, 0)]
    end += 20
    for t in (end, end + HERALD_WIDTH, end + 2 * HERALD_WIDTH + 1):
        edges += [(t, 0, 1), (t + 1, 0, 0)]
    return edges


def test_pins_file_edges_get_their_bins(binary):
    # Device time runs from power-up, the host cannot hold it: the edges start late enough that
    # the run gate is open well before them (checked below, not assumed). Opening the gate takes
    # about 10 round trips of a few ms; 8 * 10^6 cycles are seconds of simulation.
    first = 8_000_000
    edges = _pin_edges(first)
    with Twin(binary, pins=edges) as twin:
        link = Link(twin.port)
        link.write("control.anchor_interval", MAP["control.anchor_interval"].minimum)
        link.write("channel[3].edge", Edge.BOTH.value)
        link.write("herald_width", HERALD_WIDTH)
        for r, mask in enumerate(HERALD_MASKS):
            link.write(f"herald_mask[{r}]", mask)
        assert link.read("window") == 1
        link.clear()
        link.write("control.run", 1)
        started = link.read("control.now")
        assert started < first - 1000, f"device at cycle {started} before the run opened"
        last = max(e[0] for e in edges)
        link.wait_cycles(last + 5000 - started, started)
        link.write("control.run", 0)
        link.drain(MAP["control.anchor_interval"].minimum)
        singles = link.counters("singles")
        heralds = link.counters("heralds")
        link.close()
        _closed_cleanly(twin)
    records = _verified_records(link.stream)
    got = [[] for _ in range(CHANNELS)]
    herald_times = [[] for _ in range(RULES)]
    for rec in records:
        if rec["kind"] is Kind.TAG:
            got[rec["channel"]].append(rec["time"] % WRAP)
        elif rec["kind"] is Kind.HERALD:
            herald_times[rec["rule"]].append(rec["time"] % WRAP)
    # A level set up for cycle k is sampled at that cycle's rising edge; `now` after that edge
    # (the edge's bin by the architecture's definition) is k + 1 + NOW_AT_RESET: the core's `now`
    # starts `latency` ahead so that its time reference `ref` starts at 0.
    # Compared modulo the coarse counter: the harness decides the cycle, the encoder's epoch
    # above it is the encoder's business (tested there).
    channels_at = {}
    for c in range(CHANNELS):
        wanted = sorted(k + 1 + NOW_AT_RESET for k, ch, level in edges
                        if ch == c and (level == 1 or c == 3))
        assert got[c] == wanted, c
        assert singles[c] == len(wanted)
        for b in wanted:
            channels_at.setdefault(b, 0)
            channels_at[b] |= 1 << c
    # Window 1: every bin is its own window, and rule r fires at the bins whose channels include
    # its mask. The pin goes high for HERALD_WIDTH cycles after a firing and a firing while it
    # is high extends the pulse, so the harness sees a rise per firing more than HERALD_WIDTH
    # cycles after the previous one (and at the first).
    for r, mask in enumerate(HERALD_MASKS):
        fired = sorted(b for b, pattern in channels_at.items() if pattern & mask == mask)
        assert len(fired) >= 3 and herald_times[r] == fired and heralds[r] == len(fired), r
        rises = 1 + sum(b - a > HERALD_WIDTH for a, b in zip(fired, fired[1:]))
        assert twin.stats["herald_rises"][r] == rises, r


def test_herald_rules_on_the_virtual_board(binary):
    """Veto masks, an exact and an early rule, both on pin 0, written through the new registers:
    the herald records (in stream order) are the model's for the streamed tags, the counters
    agree, and pin 1 never rises."""
    from heraldry import model
    first = 8_000_000
    edges = _pin_edges(first, seed=11)
    window = 3
    rules = [model.HeraldRule(0b0011, 0b0100, "exact", 0), model.HeraldRule(0b0100, 0b1000,
                                                                           "early", 0)]
    with Twin(binary, pins=edges) as twin:
        link = Link(twin.port)
        link.write("control.anchor_interval", MAP["control.anchor_interval"].minimum)
        link.write("window", window)
        link.write("herald_width", 1)
        for r, rule in enumerate(rules):
            link.write(f"herald_mask[{r}]", rule.require)
            link.write(f"herald_veto[{r}]", rule.veto)
            link.write(f"herald_pin[{r}]", rule.pin)
        link.write("herald_exact", 0b01)
        assert link.read("herald_pin[1]") == 0 and link.read("herald_exact") == 0b01
        link.clear()
        link.write("control.run", 1)
        started = link.read("control.now")
        assert started < first - 1000, f"device at cycle {started} before the run opened"
        last = max(e[0] for e in edges)
        link.wait_cycles(last + 5000 - started, started)
        link.write("control.run", 0)
        link.drain(MAP["control.anchor_interval"].minimum)
        heralds = link.counters("heralds")
        link.close()
        _closed_cleanly(twin)
    records = _verified_records(link.stream)
    tags = [[] for _ in range(CHANNELS)]
    got = []
    for rec in records:
        if rec["kind"] is Kind.TAG:
            tags[rec["channel"]].append(rec["time"] % WRAP)
        elif rec["kind"] is Kind.HERALD:
            got.append((rec["time"] % WRAP, rec["rule"], rec["pattern"]))
    expected = model.herald_records(tags, window, rules)
    assert got == [(int(t), int(r), int(p)) for t, r, p in expected.tolist()]
    counts = np.bincount(expected["rule"], minlength=2)
    assert heralds == counts.tolist() and counts.min() >= 3
    pins = model.herald_pin(expected, 1, 0, rules=2, herald_rules=rules)
    assert twin.stats["herald_rises"] == [len(pins[0]), 0]


def test_max_cycles_and_sigterm(binary, tmp_path):
    with Twin(binary, max_cycles=50_000) as twin:
        assert twin.wait(10) == 0
    assert twin.stats["exit"] == "max-cycles" and twin.stats["cycles"] == 50_000
    with Twin(binary) as twin:
        time.sleep(0.1)
        assert twin.stop() == 0
    assert twin.stats["exit"] == "signal" and twin.stats["cycles"] > 0
    # A bad pins file is refused before the port opens, with a message naming the line.
    bad = tmp_path / "pins.txt"
    bad.write_text("10 0 1\n5 0 0\n")
    with pytest.raises(TwinError, match="line 2"):
        Twin(binary, pins=bad).start()


def test_build_cache_and_missing_compiler(binary, verilog, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    # Nothing changed: the cached executable, no compiler needed.
    assert build_twin(CHANNELS, RULES, CLOCK_HZ, BAUD) == binary
    # Changed Verilog (or harness) means a rebuild, which needs the compiler: a one-line error.
    changed = tmp_path / "heraldry_top.v"
    changed.write_text(verilog.read_text() + "\n// changed\n")
    with pytest.raises(TwinError) as info:
        build_twin(CHANNELS, RULES, CLOCK_HZ, BAUD, verilog=changed, cache_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "g++" in message and "make" in message
    assert not list(tmp_path.glob("twin-*/heraldry_twin"))
    # Running the built executable needs no tool on PATH at all.
    with Twin(binary, max_cycles=1000) as twin:
        assert twin.wait(10) == 0


def test_harness_rejects_bad_arguments(binary):
    result = subprocess.run([str(binary), "--baud", "0"], capture_output=True, text=True,
                            timeout=10)
    assert result.returncode == 2 and "--baud" in result.stderr


def test_loopback_jumpers(binary):
    """Simulated jumpers (``Twin(loopback=...)``, no rebuild): herald pin 0 wired to input 1
    directly and to input 2 through 7 cycles of wire, pin 1 (no rule) to input 3. Each pulse of
    rule 0 (channel 0 alone, early) comes back as a rise and a fall on inputs 1 and 2 at the
    pin-to-pin latency the Amaranth simulation measured for this input block, plus the cycle
    in which the harness hands the pin to the input, plus the wire; input 3 stays dark."""
    from heraldry.sim.latency import MEASURED
    first, wire_delay = 8_000_000, 7
    sources = [first + 300 * i for i in range(20)]
    edges = [e for k in sources for e in ((k, 0, 1), (k + 2, 0, 0))]
    with Twin(binary, pins=edges, loopback=[(0, 1), (0, 2, wire_delay), (1, 3)]) as twin:
        assert twin.loopback == [(0, 1, 0), (0, 2, wire_delay), (1, 3, 0)]
        link = Link(twin.port)
        link.write("control.anchor_interval", MAP["control.anchor_interval"].minimum)
        link.write("herald_width", HERALD_WIDTH)
        link.write("herald_mask[0]", 0b0001)
        for c in (1, 2, 3):
            link.write(f"channel[{c}].edge", Edge.BOTH.value)
        link.clear()
        link.write("control.run", 1)
        started = link.read("control.now")
        assert started < first - 1000, f"device at cycle {started} before the run opened"
        link.wait_cycles(sources[-1] + 5000 - started, started)
        link.write("control.run", 0)
        link.drain(MAP["control.anchor_interval"].minimum)
        singles = link.counters("singles")
        heralds = link.counters("heralds")
        link.close()
        _closed_cleanly(twin)
    got = [[] for _ in range(CHANNELS)]
    for rec in _verified_records(link.stream):
        if rec["kind"] is Kind.TAG:
            got[rec["channel"]].append(rec["time"] % WRAP)
    early = MEASURED["GenericPHY"]["early"][0]
    assert early.denominator == 1      # one sample a cycle: whole cycles
    bins = [k + 1 + NOW_AT_RESET for k in sources]
    assert got[0] == bins and heralds == [len(sources), 0]
    for channel, delay in ((1, 0), (2, wire_delay)):
        back = int(early) + 1 + delay
        wanted = sorted(b + back + w for b in bins for w in (0, HERALD_WIDTH))
        assert got[channel] == wanted, channel
        assert singles[channel] == 2 * len(sources)
    assert got[3] == [] and singles[3] == 0
    assert twin.stats["herald_rises"] == [len(sources), 0]


def test_loopback_refused_where_the_board_has_no_such_pin(binary):
    for bad in ([(2, 1)], [(0, 4)], [(0, 1, 1024)], [(0,)], {0: "1"}):
        with pytest.raises(ValueError):
            Twin(binary, loopback=bad)
    # The harness itself refuses what Twin would not pass.
    result = subprocess.run([str(binary), "--loopback", "0:9"], capture_output=True, text=True,
                            timeout=10)
    assert result.returncode == 2 and "--loopback 0:9" in result.stderr
