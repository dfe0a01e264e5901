"""The fast decoder on the byte stream of a core with gates (HERALD records with attempt and
sync_offset when synced: up to 100 payload bits, beyond the kernel's first 62-bit word) against
the reference decoder, clean and damaged, in any chunking: every herald's time, rule, pattern,
attempt and sync_offset (EVENT_DTYPE) equal to the reference decoder's."""

import numpy as np
import pytest

from heraldry.host.decoder import StreamDecoder
from heraldry.protocol import Kind
from heraldry.wire import encode_stream

from test_decoder import COUNTERS, damage, expected, random_cuts
from test_wire import random_records


def with_attempts(rng, records):
    out = []
    for rec in records:
        if rec["kind"] == Kind.HERALD:
            rec = dict(rec, attempt=int(rng.choice([0, 2**32 - 1, rng.integers(0, 2**32)])),
                       offset=int(rng.choice([0, 2**16 - 1, rng.integers(0, 2**16)])))
        out.append(rec)
    return out


def expected_gates(data, channels, rules, fine_bits):
    """The reference decoder's events, attempt and offset included."""
    return expected(data, channels, rules, fine_bits, gates=True)


def run_fast(data, channels, rules, fine_bits, cuts=()):
    dec = StreamDecoder(channels, rules, fine_bits, gates=True)
    bounds = [0] + sorted(cuts) + [len(data)]
    chunks = [dec.feed(data[a:b]) for a, b in zip(bounds, bounds[1:])] + [dec.close()]
    events = np.concatenate([c.events for c in chunks])
    replies = [r for c in chunks for r in c.replies]
    status = [s for c in chunks for s in c.status]
    lost = {}
    for c in chunks:
        for key, count in c.lost.items():
            lost[key] = lost.get(key, 0) + count
    errors = {name: sum(getattr(c, name) for c in chunks) for name in COUNTERS}
    return events, replies, status, lost, errors


def assert_same(data, channels, rules, fine_bits, cuts=()):
    want = expected_gates(data, channels, rules, fine_bits)
    got = run_fast(data, channels, rules, fine_bits, cuts)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1:] == want[1:]
    return got


@pytest.mark.parametrize("channels,rules,fine_bits,start", [
    (2, 1, 0, 0), (4, 2, 4, 2 ** 33 - 100), (8, 8, 8, 2 ** 47),
])
def test_gates_stream_matches_reference(channels, rules, fine_bits, start):
    rng = np.random.default_rng(channels + fine_bits)
    records = with_attempts(rng, random_records(rng, channels, rules, fine_bits, n=1500,
                                                start=start))
    data = encode_stream(records, channels, rules, fine_bits, anchor_interval=2 ** 12,
                         gates=True)
    events = assert_same(data, channels, rules, fine_bits)[0]
    heralds = sum(r["kind"] == Kind.HERALD for r in records)
    assert heralds > 50
    assert (events["kind"] == Kind.HERALD.value).sum() == heralds
    # the attempt clock as encoded, herald by herald; 0 on every other record
    got = events[events["kind"] == Kind.HERALD.value]
    sent = [r for r in records if r["kind"] == Kind.HERALD]
    assert got["attempt"].tolist() == [r["attempt"] for r in sent]
    assert got["sync_offset"].tolist() == [r["offset"] for r in sent]
    assert {0, 2**32 - 1} <= set(got["attempt"].tolist())
    others = events[events["kind"] != Kind.HERALD.value]
    assert not others["attempt"].any() and not others["sync_offset"].any()
    for mean in (1, 7, 300):
        assert_same(data, channels, rules, fine_bits, cuts=random_cuts(rng, len(data), mean))
    # (A decoder told the wrong layout misreads such a stream: the capability bit tells the
    # host which one to use.)


@pytest.mark.parametrize("op", ["flip", "drop", "duplicate"])
def test_gates_stream_under_damage(op):
    rng = np.random.default_rng(3)
    records = with_attempts(rng, random_records(rng, 4, 2, 4, n=2000, mean_gap=200))
    data = encode_stream(records, 4, 2, 4, anchor_interval=2 ** 13, gates=True)
    for rate in (0.001, 0.01):
        damaged = damage(rng, data, op, rate)
        got = assert_same(damaged, 4, 2, 4, cuts=random_cuts(rng, len(damaged), 200))
        assert got[4]["decode_errors"] + got[4]["skipped_bytes"] > 0


def test_unsynced_heralds_leave_the_fields_out():
    """docs/protocol.md: a HERALD with attempt 0 and sync offset 65535 (no sync edge since
    clear: no sync channel) has its synced bit clear and no attempt or offset on the wire, so it
    costs what it costs a core without gates; any other attempt or offset sends both. Lengths
    from the layout: rule (3) + pattern (4) + synced (1) + zigzag(100) = 200 (8 bits) is 16
    payload bits, 3 payload bits in the first byte and 7 in each next: 3 bytes; with the 48
    bits of attempt and offset, 64 bits: 10 bytes; without gates, 15 bits: 3 bytes."""
    from heraldry import wire
    from heraldry.protocol import HERALD_UNSYNCED_OFFSET
    assert HERALD_UNSYNCED_OFFSET == 2 ** 16 - 1

    def herald_bytes(attempt, offset, gates=True):
        rec = {"kind": Kind.HERALD, "rule": 1, "pattern": 0b1001, "time": 1100}
        if gates:
            rec |= {"attempt": attempt, "offset": offset}
        data = wire.encode_records([{"kind": "anchor", "time": 1000}, rec], 4, 2, 4, gates)
        return wire.split_records(data)[1]

    assert len(herald_bytes(0, 2 ** 16 - 1)) == len(herald_bytes(0, 0, gates=False)) == 3
    for attempt, offset in ((0, 0), (1, 2 ** 16 - 1), (2 ** 32 - 1, 12), (0, 2 ** 16 - 2)):
        assert len(herald_bytes(attempt, offset)) == 10
    # both decoders give back what was sent, the unsynced herald's attempt 0 and offset 65535
    rng = np.random.default_rng(11)
    records = random_records(rng, 4, 2, 4, n=1200, mean_gap=300)
    sent = []
    for i, rec in enumerate(records):
        if rec["kind"] == Kind.HERALD:
            rec = dict(rec, attempt=0, offset=2 ** 16 - 1) if i % 2 else dict(
                rec, attempt=int(rng.integers(0, 2 ** 32)), offset=int(rng.integers(0, 2 ** 16)))
            sent.append(rec)
        records[i] = rec
    data = encode_stream(records, 4, 2, 4, gates=True)
    got = assert_same(data, 4, 2, 4)[0]
    heralds = got[got["kind"] == Kind.HERALD.value]
    assert heralds["attempt"].tolist() == [r["attempt"] for r in sent]
    assert heralds["sync_offset"].tolist() == [r["offset"] for r in sent]
    assert {(0, 2 ** 16 - 1)} < {(r["attempt"], r["offset"]) for r in sent}
    # an unsynced HERALD with a bit above its narrower layout (3 + 4 + 1 + 36 time bits = 44;
    # 8 bytes carry 52) is malformed for both decoders, though as long as a synced one may be
    # (bit 52: read as time it would be a valid delta of 2**43 bins, far in the future)
    bad = herald_bytes(0, 2 ** 16 - 1) + bytes([0, 0, 0, 0, 1])
    assert len(bad) == 8 and wire.WireFormat(4, 2, 4, gates=True).well_formed(bad) is None
    assert wire.WireFormat(4, 2, 4, gates=True).well_formed(herald_bytes(7, 7)) is not None
    anchor = wire.encode_records([{"kind": "anchor", "time": 1000}], 4, 2, 4, True)
    for herald, errors, events in ((bad, 3, 0), (herald_bytes(0, 2 ** 16 - 1), 0, 1)):
        group = anchor + herald        # a segment of its own, its CHECK right for its bytes
        data = group + wire.encode_records(
            [{"kind": "check", "bytes": len(group), "crc": wire.crc16(group)}], 4, 2, 4, True)
        got = assert_same(data, 4, 2, 4)
        # the damaged segment's three records (ANCHOR, HERALD, CHECK) are decode errors
        assert got[4]["decode_errors"] == errors and len(got[0]) == events
