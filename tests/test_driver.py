"""The host driver (``host/driver.py``) against the full top level in the Amaranth simulator
(``SimTransport``), and against a scripted fake board for the failure paths.

Expected values come from ``heraldry.protocol`` (register map, counter map), from the reference
model (``heraldry.model.counts_from_tags``) and from the test signal's definition, never from
the driver itself.
"""

import threading

import numpy as np
import pytest

from heraldry import model, protocol
from heraldry.host.acquire import acquire_device
from heraldry.host.config import Acquisition, ConfigError
from heraldry.host.driver import Device, DeviceError
from heraldry.host.transport import SimTransport, Transport, TransportError
from heraldry.protocol import Command, Kind, LossCause
from heraldry.wire import decode_command, encode_records

N, R = 2, 2
CLOCK_HZ = 100_000_000


# -- a scripted board for identification and retry paths --------------------------------------

class FakeBoard(Transport):
    """Answers READs from a dict of register values, like a device would on the wire. The first
    ``drop`` frames are swallowed (a lost command); ``silent`` never answers."""

    name = "fake"

    def __init__(self, values, *, drop=0, silent=False, keep_bits=32, refuse=()):
        self.values = values
        self.drop = drop
        self.silent = silent
        self.keep_bits = keep_bits      # a faulty board keeps only this many bits of a write
        self.refuse = refuse            # addresses answered with ok = 0
        self.frames = []
        self._out = bytearray()
        self._cond = threading.Condition()
        self._closed = False

    def write(self, data):
        assert len(data) == protocol.COMMAND_BYTES      # the driver sends whole frames
        frame = decode_command(data)
        self.frames.append(frame)
        if self.silent or len(self.frames) <= self.drop:
            return
        if frame["op"] is Command.WRITE and frame["address"] not in self.refuse:
            self.values[frame["address"]] = frame["value"] & ((1 << self.keep_bits) - 1)
        reply = {"kind": "reply", "ok": int(frame["address"] not in self.refuse),
                 "seq": frame["seq"], "address": frame["address"],
                 "value": self.values.get(frame["address"], 0)}
        with self._cond:
            self._out += encode_records([reply], 1, 1)
            self._cond.notify_all()

    def read(self, max_bytes, timeout):
        with self._cond:
            if self._closed:
                raise TransportError("closed")
            if not self._out:
                self._cond.wait(timeout)
            out = bytes(self._out[:max_bytes])
            del self._out[:max_bytes]
            return out

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _ident_values(**changes):
    rmap = protocol.RegisterMap(N, R)
    values = {"ident.magic": protocol.MAGIC, "ident.protocol": protocol.PROTOCOL_VERSION,
              "ident.gateware": 0x000100, "ident.channels": N, "ident.rules": R,
              "ident.fine_bits": 0, "ident.bin_fs": 10_000_000, "ident.clock_hz": CLOCK_HZ,
              "ident.capabilities": 7, "ident.counters": rmap.counters.size}
    values.update({f"ident.{k}": v for k, v in changes.items()})
    return {rmap[name].address: value for name, value in values.items()}


def test_fake_board_identifies():
    with Device(FakeBoard(_ident_values()), timeout=0.2) as device:
        ident = device.identify()
    assert (ident.channels, ident.rules, ident.clock_hz, ident.bin_ps) == (N, R, CLOCK_HZ, 10_000)
    assert ident.gateware_version == "0.1.0"


@pytest.mark.parametrize("changes,fragment", [
    ({"magic": 0x484C5245}, "not a heraldry device"),
    ({"protocol": protocol.PROTOCOL_VERSION + 1}, "protocol version"),
    ({"channels": 0}, "ident.channels"),
    ({"counters": 5}, "counters"),
])
def test_wrong_identification_is_a_clear_error(changes, fragment):
    with Device(FakeBoard(_ident_values(**changes)), timeout=0.2) as device:
        with pytest.raises(DeviceError, match=fragment):
            device.identify()


def test_a_board_with_gates_gets_a_decoder_for_its_herald_records():
    for capabilities, gates in ((7, False), (7 | protocol.CAPABILITY_GATES, True)):
        with Device(FakeBoard(_ident_values(capabilities=capabilities)), timeout=0.2) as device:
            device.identify()
            assert device._decoder.format.gates is gates


def test_lost_command_is_resent_with_a_new_seq():
    board = FakeBoard(_ident_values(), drop=2)
    with Device(board, timeout=0.1, retries=3) as device:
        assert device.read("ident.magic") == protocol.MAGIC
        assert device.resends == 2
    seqs = [f["seq"] for f in board.frames]     # 3 attempts, the last one answered
    assert len(seqs) == 3 and len(set(seqs)) == 3 and all(0 < s < 2 ** protocol.WIRE_SEQ_BITS
                                                          for s in seqs)


def test_silent_board_fails_after_the_retries():
    board = FakeBoard({}, silent=True)
    with Device(board, timeout=0.05, retries=2) as device:
        with pytest.raises(DeviceError, match="no reply .* after 3 attempts"):
            device.read("ident.magic")
    assert len(board.frames) == 3


def test_write_is_verified_by_its_read_back():
    rmap = protocol.RegisterMap(N, R)
    board = FakeBoard(_ident_values(), keep_bits=8,
                      refuse=(rmap["control.status_period"].address,))
    with Device(board, timeout=0.2) as device:
        assert device.write("window", 200) == 200
        with pytest.raises(DeviceError, match="write of 300 to window read back 44"):
            device.write("window", 300)
        with pytest.raises(DeviceError, match="refused the write of 5 to control.status_period"):
            device.write("control.status_period", 5)
    assert device.resends == 0


def test_serial_transport_refuses_a_missing_port():
    from heraldry.host.transport import SerialTransport
    with pytest.raises(TransportError, match="/dev/no-such-port"):
        SerialTransport("/dev/no-such-port")


# -- the real top level in the Amaranth simulator ---------------------------------------------

@pytest.fixture(scope="module")
def device():
    with Device(SimTransport(N, R, clock_hz=CLOCK_HZ), timeout=2.0) as device:
        yield device


def test_identify(device):
    ident = device.identify()
    assert ident.magic == protocol.MAGIC and ident.protocol == protocol.PROTOCOL_VERSION
    assert (ident.channels, ident.rules, ident.fine_bits) == (N, R, 0)
    assert ident.clock_hz == CLOCK_HZ and ident.bin_fs == 10 ** 15 // CLOCK_HZ
    assert ident.counters == protocol.CounterMap(N, R).size


def test_every_config_register_round_trips(device):
    """Boundary values and a random one per register, each read back with a separate READ."""
    device.identify()
    rng = np.random.default_rng(5)
    # (the gates.* registers are not stored on a board without gates: tests/gateware/
    # test_registers.py reads them back as their reset)
    regs = [reg for reg in protocol.RegisterMap(N, R).config_registers()
            if not reg.name.startswith(protocol.GATES_REGISTERS)]
    assert regs
    for values in ("minimum", "maximum", "random"):
        expected = {}
        for reg in regs:
            value = (getattr(reg, values) if values != "random"
                     else int(rng.integers(reg.minimum, reg.maximum, endpoint=True)))
            assert device.write(reg.name, value) == value
            expected[reg.name] = value
        # Read back after all writes: each value landed in its own field only.
        assert {name: device.read(name) for name in expected} == expected
    for reg in regs:
        device.write(reg.name, reg.reset)


def test_values_refused_before_sending(device):
    device.identify()
    sent = []
    write = device.transport.write
    device.transport.write = lambda data: (sent.append(data), write(data))
    try:
        cases = [("window", 0, r"window must be 1\.\.1023"),
                 ("window", 1024, r"window must be 1\.\.1023"),
                 ("test.pair_delay", 2 ** protocol.PAIR_DELAY_BITS, "test.pair_delay"),
                 ("channel[1].dead_time", -1, "channel.1..dead_time"),
                 ("control.anchor_interval", 2 ** 10 - 1, "control.anchor_interval"),
                 ("herald_mask[0]", 2 ** N, "herald_mask"),
                 ("control.run", 1.0, "integer"),
                 ("ident.magic", 0, "read-only"),
                 ("counter.singles[0]", 0, "read-only"),
                 ("no.such.register", 0, "no register")]
        for name, value, fragment in cases:
            with pytest.raises(ConfigError, match=fragment):
                device.write(name, value)
        with pytest.raises(ConfigError, match="channels 4 .board: 2."):
            device.configure(Acquisition(channels=4, rules=R))
    finally:
        device.transport.write = write
    assert sent == []


def _pairs(**changes):
    settings = dict(channels=N, rules=R, window_bins=2, test_signal="pairs", pair_rate_hz=4e6,
                    efficiency=0.6, dark_rate_hz=2e5, pair_delay_bins=3, delays_bins=[3, 0],
                    herald_masks=[0b11, 0b01], coincidence_record_mask=1 << 0b11, seed=11)
    settings.update(changes)
    return Acquisition(**settings)


def test_short_run_tags_match_counters(device):
    acq = _pairs()
    # 4000 cycles: about 200 tags, so that the stimulus check below does not depend on how
    # long the host took between its start and stop commands.
    result = acquire_device(device, acq, 4000 / CLOCK_HZ, anchor_interval=2 ** 10, poll=0)
    c = result.counters
    link = result.link
    assert link["decode_errors"] == 0 and link["unverified"] == 0 and link["skipped_bytes"] == 0
    tags = result.tags
    assert len(tags) > 100                          # the stimulus did something
    assert not result.lost and not any(result.host_dropped_tags)
    # Independent recount of every counter from the streamed tags by the reference model.
    tag_bins = np.zeros(len(tags), model.TAG_DTYPE)
    tag_bins["time"] = tags["time_ps"] // 10_000
    tag_bins["channel"] = tags["channel"]
    recount = model.counts_from_tags(tag_bins, acq.model_settings())
    assert c["singles"] == recount.singles.tolist()
    assert c["patterns"] == recount.patterns[1:].tolist()
    assert c["heralds"] == recount.herald_counts.tolist()
    assert c["patterns"][0b11 - 1] > 10
    heralds = result.events[result.events["kind"] == Kind.HERALD.value]
    assert np.bincount(heralds["channel"], minlength=R).tolist() == c["heralds"]
    coinc = result.events[result.events["kind"] == Kind.COINCIDENCE.value]
    assert len(coinc) == c["patterns"][0b11 - 1]
    assert np.all(coinc["pattern"] == 0b11)
    # The run gate was open between the start and stop commands, and for about the duration.
    start, stop = result.device_cycles["start"], result.device_cycles["stop"]
    assert 0 == start[0] < start[1] <= stop[0] < stop[1]
    assert stop[0] - start[0] >= 4000
    bins = tags["time_ps"] // 10_000
    assert bins.min() >= start[0] - 1 and bins.max() <= stop[1] + max(acq.delays_bins)


def test_status_snapshots(device):
    """After a run (counters frozen), periodic STATUS records carry every counter's value."""
    counters = device.counters()
    device.write("control.status_period", 300)
    try:
        device.wait_cycles(1200, poll=0)
    finally:
        device.write("control.status_period", 0)
    rmap = device.map
    snapshot = device.status()
    expected = {f"counter.{group}[{i + (group == 'patterns')}]": v
                for group, values in counters.items() for i, v in enumerate(values)}
    assert snapshot == expected
    assert set(snapshot) == {r.name for r in rmap if r.name.startswith("counter.")}


def test_host_queue_overflow_is_counted():
    """A consumer that never reads: blocks beyond the queue are dropped and counted per channel,
    so tags read + tags dropped on the host + loss records = singles still holds exactly."""
    acq = _pairs(pair_rate_hz=8e6, efficiency=0.9)
    with Device(SimTransport(N, R, clock_hz=CLOCK_HZ), timeout=2.0, queue_blocks=1) as device:
        device.identify()
        device.configure(acq)
        device.write("control.anchor_interval", 2 ** 10)
        device.clear()
        device.start()
        device.wait_cycles(1500, poll=0)
        device.stop()
        device.drain(64, poll=0)
        device.flush()
        counters = device.counters()
        kept = device.drain_blocks()
        assert device.host_dropped_blocks > 0
        tags = kept.events[kept.events["kind"] == Kind.TAG.value]
        per_channel = np.bincount(tags["channel"], minlength=N)[:N]
        lost = [device.lost.get((LossCause.MERGER_FULL, ch), 0) for ch in range(N)]
        assert (per_channel + device.host_dropped_tags[:N] + lost).tolist() == \
            counters["singles"]
        assert device.host_dropped_tags[:N].sum() > 0 and device.unverified == 0
        assert device.stats()["host_dropped_events"] >= device.host_dropped_tags.sum()


@pytest.mark.slow
def test_slow_link_losses_account_for_every_event():
    """The tx stream ready one cycle in 8 (12.5 MB/s at 100 MHz) against a periodic signal
    on both channels every 3 cycles: the merger drops, and loss records account for every
    event (tags + MERGER_FULL = singles; heralds + HERALD_RECORD = herald counter)."""
    acq = Acquisition(channels=N, rules=R, window_bins=1, test_signal="periodic", period_cycles=3,
                      dark_rate_hz=0, herald_masks=[0b11])
    transport = SimTransport(N, R, clock_hz=CLOCK_HZ, fifo_depth=8, tx_period=8)
    with Device(transport, timeout=5.0) as device:
        result = acquire_device(device, acq, 900 / CLOCK_HZ, anchor_interval=2 ** 10, poll=0)
    c = result.counters
    assert result.link["decode_errors"] == 0 and result.link["unverified"] == 0
    tags = result.tags
    per_channel = np.bincount(tags["channel"], minlength=N)[:N]
    lost = [result.lost.get((LossCause.MERGER_FULL, ch), 0) for ch in range(N)]
    assert sum(lost) > 0
    assert (per_channel + lost).tolist() == c["singles"] and lost == c["merger_dropped"]
    # Independent expectation: one event per channel every 3 cycles while the gate was open.
    start, stop = result.device_cycles["start"], result.device_cycles["stop"]
    assert c["singles"][0] == c["singles"][1]
    assert (stop[0] - start[1]) // 3 - 1 <= c["singles"][0] <= (stop[1] - start[0]) // 3 + 1
    heralds = np.count_nonzero(result.events["kind"] == Kind.HERALD.value)
    assert heralds + result.lost.get((LossCause.HERALD_RECORD, 0), 0) == c["heralds"][0] \
        == c["singles"][0]
    # Kept tags are periodic events: one phase modulo 3 for all of them.
    assert len(set((tags["time_ps"] // 10_000 % 3).tolist())) == 1


def test_board_without_test_signal_refuses_test_sources_and_skips_its_registers():
    """The iCEBreaker's gateware has no test-signal generator: its test.* registers are not
    stored (a write replies with the reset value), so the driver must not write them, and an
    acquisition that selects a test source is a one-line ConfigError, not an empty run."""
    transport = SimTransport(2, 1, clock_hz=CLOCK_HZ, test_signal=False)
    with Device(transport, timeout=2.0) as device:
        ident = device.identify()
        assert not ident.capabilities & protocol.CAPABILITY_TEST_SIGNAL
        seed = device.map["test.seed"]
        with pytest.raises(ConfigError, match="no built-in test signal"):
            device.configure(Acquisition(channels=2, rules=1, test_signal="pairs"))
        # nor sync and gates: roles and gates are refused before anything is written
        with pytest.raises(ConfigError, match="no sync, gates or reference inputs"):
            device.configure(Acquisition(channels=2, rules=1, roles=["detector", "sync"],
                                         gates_bins=[(2, 5), None]))
        sent = []
        real_write = device.write
        device.write = lambda name, value: (sent.append(name), real_write(name, value))[1]
        device.configure(Acquisition(channels=2, rules=1, test_signal="off", seed=12345))
        assert sent and not any(name.startswith("test.") for name in sent)
        assert any(name.startswith("channel") for name in sent)
        # Not stored: reads the reset value whatever was asked.
        assert device.read("test.seed") == seed.reset
