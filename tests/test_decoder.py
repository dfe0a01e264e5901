"""The fast stream decoder (host/decoder.py) against the reference decoder (heraldry/wire.py).

Every comparison is exact: events (times in ps, channels, kinds, patterns, counts), replies,
status records, lost counts and the three damage counters, whatever the chunking.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heraldry.host.events import EVENT_DTYPE
from heraldry.host.decoder import StreamDecoder
from heraldry.protocol import Kind, LossCause
from heraldry.wire import decode_bytes, encode_records, encode_stream
from test_wire import random_records

COUNTERS = ("decode_errors", "skipped_bytes", "unverified")


def expected(data, channels, rules, fine_bits=0, bin_fs=10_000_000, gates=False):
    """What the fast decoder must give, computed from the reference decoder's records (with
    ``gates``, a herald's attempt and sync offset from the wire; 0 and 0 elsewhere)."""
    records, errors = decode_bytes(data, channels, rules, fine_bits, gates=gates)
    rows, replies, status, lost = [], [], [], {}
    for rec in records:
        kind = rec["kind"]
        if kind == "reply":
            replies.append({k: rec[k] for k in ("ok", "seq", "address", "value")})
        elif kind == "status":
            status.append((rec["address"], rec["value"]))
        elif kind in ("anchor", "time", "check"):
            continue
        else:
            ps = rec["time"] * bin_fs // 1000
            ps = (ps + 2 ** 63) % 2 ** 64 - 2 ** 63          # int64 wraps beyond 106 days
            if kind == Kind.TAG:
                rows.append((ps, rec["channel"], kind.value, 0, 1, 0, 0))
            elif kind == Kind.COINCIDENCE:
                rows.append((ps, 0, kind.value, rec["pattern"], 1, 0, 0))
            elif kind == Kind.HERALD:
                rows.append((ps, rec["rule"], kind.value, rec["pattern"], 1,
                             rec["attempt"] if gates else 0, rec["offset"] if gates else 0))
            else:
                rows.append((ps, rec["index"], kind.value, rec["cause"].value, rec["count"],
                             0, 0))
                key = (rec["cause"], rec["index"])
                lost[key] = lost.get(key, 0) + rec["count"]
    return np.array(rows, EVENT_DTYPE), replies, status, lost, errors


def run_fast(data, channels, rules, fine_bits=0, bin_fs=10_000_000, cuts=()):
    """Feed ``data`` cut at ``cuts``, then close; gather everything the chunks gave."""
    dec = StreamDecoder(channels, rules, fine_bits, bin_fs)
    bounds = [0] + sorted(cuts) + [len(data)]
    chunks = [dec.feed(data[a:b]) for a, b in zip(bounds, bounds[1:])] + [dec.close()]
    events = np.concatenate([c.events for c in chunks]) if chunks else None
    replies = [r for c in chunks for r in c.replies]
    status = [s for c in chunks for s in c.status]
    lost = {}
    for c in chunks:
        for key, count in c.lost.items():
            lost[key] = lost.get(key, 0) + count
    errors = {name: sum(getattr(c, name) for c in chunks) for name in COUNTERS}
    assert errors == {name: getattr(dec, name) for name in COUNTERS}
    assert dec.lost == lost and dec.emitted == len(events)
    return events, replies, status, lost, errors


def assert_same(data, channels, rules, fine_bits=0, bin_fs=10_000_000, cuts=()):
    want = expected(data, channels, rules, fine_bits, bin_fs)
    got = run_fast(data, channels, rules, fine_bits, bin_fs, cuts)
    assert got[0].dtype == EVENT_DTYPE
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1:] == want[1:]
    return got


def random_cuts(rng, n, mean):
    """Cut points for chunks of random sizes (1 byte up to ~4 * mean)."""
    cuts, pos = [], 0
    while True:
        pos += 1 + int(rng.geometric(1 / mean)) if rng.random() < 0.8 else 1
        if pos >= n:
            return cuts
        cuts.append(pos)


# -- Clean streams -------------------------------------------------------------------------------

@pytest.mark.parametrize("channels,rules,fine_bits,start", [
    (1, 1, 0, 0), (2, 1, 0, 2 ** 32 - 3000), (4, 2, 0, 2 ** 33 - 100), (8, 8, 0, 2 ** 44),
    (3, 5, 3, 2 ** 35), (4, 2, 8, 2 ** 47),
])
def test_matches_reference_on_clean_streams_in_any_chunking(channels, rules, fine_bits, start):
    rng = np.random.default_rng(channels + 10 * fine_bits)
    records = random_records(rng, channels, rules, fine_bits, n=1500, start=start)
    data = encode_stream(records, channels, rules, fine_bits, anchor_interval=2 ** 12)
    events = assert_same(data, channels, rules, fine_bits)[0]
    assert len(events) == sum(r["kind"] in tuple(Kind) for r in records)
    for mean in (1, 3, 50, 2000):
        assert_same(data, channels, rules, fine_bits, cuts=random_cuts(rng, len(data), mean))
    assert_same(data[:600], channels, rules, fine_bits, cuts=range(1, 600))   # byte by byte


@pytest.mark.parametrize("bin_fs", [1, 999, 1000, 1_250_000, 10_000_000, 2 ** 32 - 1])
def test_times_in_ps_are_exact(bin_fs):
    rng = np.random.default_rng(bin_fs % 1000)
    for start in (0, 2 ** 31, 2 ** 41 + 12345, 2 ** 55):      # the last ones wrap int64 ps
        records = random_records(rng, 4, 2, 0, n=200, start=start, big_gaps=False)
        data = encode_stream(records, 4, 2)
        assert_same(data, 4, 2, bin_fs=bin_fs)


def test_events_come_with_the_check_and_replies_at_their_last_byte():
    tag = {"kind": Kind.TAG, "channel": 1}
    reply = {"kind": "reply", "ok": 1, "seq": 4, "address": 0x10, "value": 1}
    data = encode_records([{"kind": "anchor", "time": 7}, dict(tag, time=7), dict(tag, time=9),
                           {"kind": "check"}, reply], 2, 1)
    check_end = len(data) - 9                      # the REPLY (9 bytes) follows the CHECK
    dec = StreamDecoder(2, 1, bin_fs=1000)
    for i in range(len(data)):
        chunk = dec.feed(data[i:i + 1])
        assert chunk.events["time_ps"].tolist() == ([7, 9] if i == check_end - 1 else [])
        assert chunk.replies == ([{k: reply[k] for k in ("ok", "seq", "address", "value")}]
                                 if i == len(data) - 1 else [])
    assert dec.close().events.size == 0 and dec.unverified == 0


def test_lost_counts_and_loss_events():
    loss = {"kind": Kind.LOSS}
    records = [{"kind": Kind.TAG, "channel": 0, "time": 100},
               dict(loss, cause=LossCause.MERGER_FULL, index=1, count=5, time=100),
               dict(loss, cause=LossCause.MERGER_FULL, index=1, count=2 ** 16 - 1, time=100),
               dict(loss, cause=LossCause.HERALD_RECORD, index=0, count=3, time=100),
               {"kind": Kind.TAG, "channel": 1, "time": 150},
               dict(loss, cause=LossCause.COINCIDENCE_RECORD, index=0, count=1, time=150)]
    data = encode_stream(records, 2, 1)
    events, _, _, lost, _ = assert_same(data, 2, 1, bin_fs=1000)
    assert lost == {(LossCause.MERGER_FULL, 1): 5 + 2 ** 16 - 1,
                    (LossCause.HERALD_RECORD, 0): 3, (LossCause.COINCIDENCE_RECORD, 0): 1}
    losses = events[events["kind"] == Kind.LOSS.value]
    assert losses["time_ps"].tolist() == [100, 100, 100, 150]
    assert losses["count"].tolist() == [5, 2 ** 16 - 1, 3, 1]


def test_close_then_a_new_stream():
    tag = {"kind": Kind.TAG, "channel": 0}
    dec = StreamDecoder(1, 1, bin_fs=1000)
    first = encode_stream([dict(tag, time=5)], 1, 1, final_check=False)
    assert dec.feed(first).events.size == 0
    assert dec.close().unverified == 2
    second = dec.feed(encode_stream([dict(tag, time=8)], 1, 1))
    assert second.events["time_ps"].tolist() == [8]
    assert (dec.unverified, dec.decode_errors, dec.skipped_bytes) == (2, 0, 0)


def test_accepts_every_bytes_like_input():
    data = encode_stream([{"kind": Kind.TAG, "channel": 0, "time": 3}], 1, 1)
    for form in (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        dec = StreamDecoder(1, 1)
        assert len(dec.feed(form).events) == 1
    dec = StreamDecoder(1, 1)
    assert dec.feed(b"").events.size == 0 and dec.close().events.size == 0


def _hand_streams():
    """Small streams, each breaking (or just respecting) one rule of the reader, with the number
    of records the reader must count as damaged."""
    tag = {"kind": Kind.TAG, "channel": 0}
    herald = {"kind": Kind.HERALD, "rule": 0, "pattern": 1}
    coinc = {"kind": Kind.COINCIDENCE, "pattern": 1}
    loss = {"kind": Kind.LOSS, "count": 1}
    check = {"kind": "check"}

    def seg(*records, at=100):
        return encode_records([{"kind": "anchor", "time": at}, *records, check], 3, 2)

    yield "ok", seg(dict(tag, time=100), dict(herald, time=98), dict(tag, time=100)), 0
    yield "tag before tag", seg(dict(tag, time=100), dict(herald, time=98),
                                dict(tag, time=99)), 5
    yield "herald before herald", seg(dict(herald, time=105), dict(herald, time=104)), 4
    yield "coincidence before coincidence", seg(dict(coinc, time=90), dict(coinc, time=89)), 4
    yield "equal times", seg(dict(tag, time=100), dict(tag, time=100), dict(coinc, time=97),
                             dict(coinc, time=97), dict(herald, time=100),
                             dict(herald, time=100)), 0
    for name, rec in (("tag", tag), ("herald", herald), ("coincidence", coinc)):
        yield (f"{name} before previous segment",
               seg(dict(rec, time=500), at=500) + seg(dict(rec, time=400), at=400), 3)
    damaged = bytearray(seg(dict(tag, time=900), at=900))
    damaged[-1] ^= 1
    yield ("a damaged segment's times are forgotten",
           seg(dict(tag, time=100)) + bytes(damaged) + seg(dict(tag, time=500), at=500), 3)
    yield "negative t0", seg(dict(coinc, time=-1), at=0), 3
    yield "negative herald", seg(dict(herald, time=-3), at=0), 3
    yield "time at the limit", seg(dict(tag, time=2 ** 56 - 1), at=2 ** 56 - 10), 0
    yield "time past the limit", seg(dict(tag, time=2 ** 56), at=2 ** 56 - 10), 3
    for channel, bad in ((2, 0), (3, 3)):
        yield f"channel {channel} of 3", seg(dict(tag, channel=channel, time=100)), bad
    for rule, bad in ((1, 0), (2, 3), (7, 3)):
        yield f"rule {rule} of 2", seg(dict(herald, rule=rule, time=100)), bad
    for cause, limit in ((LossCause.MERGER_FULL, 3), (LossCause.DELAY_FULL, 3),
                         (LossCause.HERALD_RECORD, 2), (LossCause.COINCIDENCE_RECORD, 1)):
        for index, bad in ((limit - 1, 0), (limit, 3)):
            yield f"loss {cause.name} {index}", seg(dict(loss, cause=cause, index=index)), bad


@pytest.mark.parametrize("name,data,damaged", list(_hand_streams()))
def test_matches_reference_on_hand_made_streams(name, data, damaged):
    events, _, _, _, errors = assert_same(data, 3, 2, bin_fs=1000)
    assert errors == {"decode_errors": damaged, "skipped_bytes": 0, "unverified": 0}
    if name == "a damaged segment's times are forgotten":
        assert events["time_ps"].tolist() == [100, 500]
    for cut in range(1, len(data)):
        assert_same(data, 3, 2, bin_fs=1000, cuts=[cut])


# -- Damage --------------------------------------------------------------------------------------

def damage(rng, data, op, rate):
    out = bytearray()
    for byte in data:
        if rng.random() >= rate:
            out.append(byte)
        elif op == "flip":
            out.append(byte ^ (1 << int(rng.integers(8))))
        elif op == "duplicate":
            out += bytes([byte, byte])
        elif op == "insert":
            out += bytes([byte, int(rng.integers(256))])
        # drop: nothing
    return bytes(out)


@pytest.mark.parametrize("op", ["drop", "flip", "duplicate", "insert", "mixed"])
def test_matches_reference_under_damage(op):
    rng = np.random.default_rng(["drop", "flip", "duplicate", "insert", "mixed"].index(op))
    records = random_records(rng, 4, 2, 0, n=3000, start=2 ** 32 - 10 ** 4, mean_gap=200)
    data = encode_stream(records, 4, 2, anchor_interval=2 ** 13)
    originals = {(r["kind"].value, r.get("channel", r.get("rule", 0)), r["time"] * 10_000)
                 for r in records if r["kind"] in (Kind.TAG, Kind.HERALD, Kind.COINCIDENCE)}
    for rate in (0.0003, 0.003, 0.03):
        damaged = data
        for this in (("drop", "flip", "duplicate", "insert") if op == "mixed" else (op,)):
            damaged = damage(rng, damaged, this, rate)
        events, _, _, _, errors = assert_same(damaged, 4, 2,
                                              cuts=random_cuts(rng, len(damaged), 500))
        assert errors["decode_errors"] + errors["skipped_bytes"] > 0
        timed = events[events["kind"] != Kind.LOSS.value]
        for kind in (Kind.TAG, Kind.HERALD, Kind.COINCIDENCE):
            times = timed["time_ps"][timed["kind"] == kind.value]
            assert np.all(np.diff(times) >= 0)
        got = {(int(e["kind"]), int(e["channel"]), int(e["time_ps"])) for e in timed}
        assert got <= originals


def test_a_group_verifies_only_under_its_own_anchor():
    """The CHECK of one segment and the ANCHOR of the next both lost: the next segment's groups
    then follow the first segment's last group, and their TIMEs' CRCs match their bytes. They
    must not be emitted at times measured from the first segment's ANCHOR: every group's CRC
    starts from its ANCHOR group's, so under another ANCHOR none verifies (found by
    test_matches_reference_under_damage, drop)."""
    tag = {"kind": Kind.TAG, "channel": 1}
    first = [dict(tag, time=1000 + k) for k in range(40)]
    # (spread so that, measured from the wrong ANCHOR, its later groups' times still go forward)
    second = [dict(tag, time=900_000 + 100 * k) for k in range(40)]
    one = encode_stream(first, 2, 1)
    two = encode_stream(second, 2, 1)
    check, anchor = 6, 9                          # the first's CHECK, the second's ANCHOR
    data = one[:-check] + two[anchor:]
    events, _, _, _, errors = assert_same(data, 2, 1, bin_fs=1000)
    # the first segment's groups but its last (ended by the lost CHECK); nothing of the second
    groups = [first[:16], first[16:32], first[32:]]
    assert events["time_ps"].tolist() == [r["time"] for r in groups[0] + groups[1]]
    assert errors["decode_errors"] > 0
    # with both ANCHORs, everything
    assert len(assert_same(one + two, 2, 1, bin_fs=1000)[0]) == 80


def test_truncation_at_every_position():
    rng = np.random.default_rng(3)
    records = random_records(rng, 4, 2, 0, n=40, big_gaps=False)
    data = encode_stream(records, 4, 2, anchor_interval=2 ** 9)
    for cut in range(len(data) + 1):
        assert_same(data[:cut], 4, 2)
        assert_same(data[cut:], 4, 2)                   # joining late
        assert_same(data[:cut], 4, 2, cuts=[cut // 2])


# -- Fuzz ----------------------------------------------------------------------------------------

FAST = settings(max_examples=1500, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=5))
def test_fuzz_arbitrary_bytes(data, cuts):
    assert_same(data, 3, 2, cuts=[c for c in set(cuts) if 0 < c < len(data)])


_VALID = encode_stream(random_records(np.random.default_rng(9), 3, 2, 0, n=60, big_gaps=False),
                       3, 2, anchor_interval=2 ** 8)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["drop", "flip", "insert", "duplicate"]),
                          st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=6),
       st.lists(st.integers(0, len(_VALID)), max_size=4))
def test_fuzz_damaged_valid_stream(ops, cuts):
    data = bytearray(_VALID)
    for op, pos, value in ops:
        pos = min(pos, len(data) - 1)
        if pos < 0:
            break
        if op == "drop":
            del data[pos]
        elif op == "flip":
            data[pos] ^= 1 << (value & 7)
        elif op == "insert":
            data.insert(pos, value)
        else:
            data.insert(pos, data[pos])
    data = bytes(data)
    assert_same(data, 3, 2, cuts=[c for c in set(cuts) if 0 < c < len(data)])
