"""The reference wire codec (heraldry/wire.py) against hand-computed bytes and the spec's rules.

Also home of the random record-stream generator shared with tests/test_decoder.py.
"""

import binascii

import numpy as np
import pytest

from heraldry import wire
from heraldry.protocol import (
    COMMAND_BYTES, WIRE_START, Command, Kind, LossCause, WireKind, time_bits, wire_channel_bits,
)
from heraldry.wire import (
    WireFormat, command_check, decode_bytes, decode_command, encode_command, encode_records,
    encode_stream, crc16, split_records, unzigzag, zigzag,
)

SIDE = ("status", "reply")


# -- Random record streams (also used by test_decoder.py) --------------------------------------

def random_records(rng, channels, rules, fine_bits=0, n=300, start=0, big_gaps=True, sides=True,
                   mean_gap=40):
    """A record stream as the merger and register file would produce it: tags in time order,
    coincidence records with t0 before (rarely after) the running time, heralds at (with fine
    bits: up to a cycle before) the last tag, loss, status and reply records; occasional gaps
    longer than an anchor interval and across multiples of 2**32."""
    window = 60 << fine_bits
    t = start
    last_coinc = last_herald = -1
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            if big_gaps and rng.random() < 0.02:
                gap = int(2 ** rng.uniform(15, 36))
            else:
                gap = int(rng.geometric(1 / mean_gap)) - 1
            t += gap
            out.append({"kind": Kind.TAG, "channel": int(rng.integers(channels)), "time": t})
        elif r < 0.72:
            if rng.random() < 0.1:     # the window's tags were lost: t0 after T
                t0 = t + int(rng.integers(1, window))
                t = t0 + window
            else:
                t0 = t - int(rng.integers(0, window))
            t0 = max(t0, last_coinc, 0)
            last_coinc = t0
            out.append({"kind": Kind.COINCIDENCE,
                        "pattern": int(rng.integers(1, 2 ** channels)), "time": t0})
        elif r < 0.82:
            back = int(rng.integers(0, 2 ** fine_bits)) if fine_bits else 0
            th = max(t - back, last_herald, 0)
            last_herald = th
            out.append({"kind": Kind.HERALD, "rule": int(rng.integers(rules)),
                        "pattern": int(rng.integers(1, 2 ** channels)), "time": th})
        elif r < 0.88:
            cause = LossCause(int(rng.integers(4)))
            limit = {LossCause.MERGER_FULL: channels, LossCause.DELAY_FULL: channels,
                     LossCause.HERALD_RECORD: rules, LossCause.COINCIDENCE_RECORD: 1}[cause]
            out.append({"kind": Kind.LOSS, "cause": cause, "index": int(rng.integers(limit)),
                        "count": int(rng.integers(1, 2 ** 16)), "time": t})
        elif sides:
            out.append({"kind": SIDE[int(rng.integers(2))], "ok": int(rng.integers(2)),
                        "seq": int(rng.integers(32)), "address": int(rng.integers(4096)),
                        "value": int(rng.integers(2 ** 32))})
    return out


def strip(records):
    """Data and side records without anchors/times/checks; LOSS without its (wire-less) time."""
    out = []
    for rec in records:
        if rec["kind"] in ("anchor", "time", "check"):
            continue
        rec = dict(rec)
        if rec["kind"] == Kind.LOSS:
            rec.pop("time", None)
            rec["cause"] = LossCause(rec["cause"])
        out.append(rec)
    return out


def segments_of(data, channels, rules, fine_bits=0):
    """Byte ranges ``[(start, end), ...]`` of the segments of a clean stream (ANCHOR .. CHECK)."""
    fmt = WireFormat(channels, rules, fine_bits)
    out, offset, start = [], 0, None
    for record in split_records(data):
        kind = fmt.record_kind(record[0])
        if kind is WireKind.ANCHOR:
            start = offset
        offset += len(record)
        if kind is WireKind.CHECK:
            out.append((start, offset))
    return out


def groups_of(data, channels, rules, fine_bits=0):
    """The groups of a clean stream: ``[(start, end, segment, opener_end), ...]`` byte ranges
    from an ANCHOR or TIME up to the next TIME (excluded) or CHECK (included), the index of
    their segment, and the end of their opening record. Written from docs/protocol.md, without
    the decoder."""
    fmt = WireFormat(channels, rules, fine_bits)
    out, offset, start, segment, opener_end = [], 0, None, -1, None
    for record in split_records(data):
        kind = fmt.record_kind(record[0])
        if kind in (WireKind.TIME, WireKind.CHECK) and start is not None:
            end = offset + len(record) if kind is WireKind.CHECK else offset
            out.append((start, end, segment, opener_end))
            start = None
        if kind is WireKind.ANCHOR:
            segment += 1
        if kind in (WireKind.ANCHOR, WireKind.TIME):
            start, opener_end = offset, offset + len(record)
        offset += len(record)
    return out


def lost_groups(groups, data, position, op):
    """Indices of the groups that one fault costs by docs/protocol.md: ``op`` ("drop", "flip",
    "duplicate", or "insert": a byte added after it) at byte ``position`` of the clean stream
    ``data``. The group holding the damage is lost; so is the group before it if the damage is
    in the TIME that opens the group (the TIME's CRC verifies the group before); and every group
    of a segment whose ANCHOR group is lost. A duplicated start byte is a lone byte just before
    its record (outside every group before an ANCHOR); a byte duplicated or added after a
    CHECK's last byte is outside every group, after an ANCHOR's or TIME's last byte it is an
    orphan in its group."""
    if op == "duplicate" and data[position] < WIRE_START:
        # Duplicating a byte equal to the next one gives the same bytes as duplicating that one
        # (e.g. the middle byte of a TIME ending in two equal bytes): take the last of the run.
        while position + 1 < len(data) and data[position + 1] == data[position]:
            position += 1
    g = next((g for g, (start, end, _, _) in enumerate(groups) if start <= position < end),
             None)
    if g is None:
        return set()                # outside segments: a lone or orphan byte, skipped
    start, end, segment, opener_end = groups[g]
    first = g == 0 or groups[g - 1][2] != segment            # the ANCHOR's group
    last = g + 1 == len(groups) or groups[g + 1][2] != segment
    in_time = not first and position < opener_end
    if op == "duplicate" and data[position] >= WIRE_START:
        if position == start:
            lost = set() if first else {g - 1}
        else:
            lost = {g}
    elif op in ("duplicate", "insert"):
        if position == end - 1 and last:
            lost = set()
        elif in_time and position < opener_end - 1:
            lost = {g - 1, g}
        else:
            lost = {g}
    else:
        lost = {g - 1, g} if in_time else {g}
    for h in list(lost):
        if h == 0 or groups[h - 1][2] != groups[h][2]:
            lost |= {k for k, group in enumerate(groups) if group[2] == groups[h][2]}
    return lost


# -- Hand-computed bytes -----------------------------------------------------------------------

def test_bytes_of_a_small_segment_by_hand():
    # N = 4 (2 channel bits), F = 0. ANCHOR 0x123: 1 1 100 011, then 0x123 >> 3 = 0x24, then
    # zeros up to the fixed 9 bytes. TAG ch 1 delta 5: payload 1 | 5 << 2 = 0x15 in one byte.
    # TAG ch 3 delta 16: payload 3 | 16 << 2 = 0x43: 0x80 | 0x03, then 0x01.
    # CHECK: 12 bytes and their CRC-16/CCITT-FALSE (binascii.crc_hqx with initial 0xFFFF):
    # payload 12 | crc << 16, i.e. 1 1 101 100, then (payload >> 3) in 7-bit groups.
    records = [{"kind": "anchor", "time": 0x123},
               {"kind": Kind.TAG, "channel": 1, "time": 0x123 + 5},
               {"kind": Kind.TAG, "channel": 3, "time": 0x123 + 21},
               {"kind": "check"}]
    segment = bytes([0xE3, 0x24, 0, 0, 0, 0, 0, 0, 0, 0x95, 0x83, 0x01])
    crc = binascii.crc_hqx(segment, 0xFFFF)
    payload = 12 | crc << 16
    check = bytes([0xEC] + [(payload >> (3 + 7 * i)) & 0x7F for i in range(5)])
    assert encode_records(records, 4, 2) == segment + check
    decoded, errors = decode_bytes(segment + check, 4, 2)
    assert errors == {"decode_errors": 0, "skipped_bytes": 0, "unverified": 0}
    assert decoded == records[:3] + [{"kind": "check", "bytes": 12, "crc": crc}]


def test_crc_is_crc16_ccitt_false():
    rng = np.random.default_rng(5)
    assert crc16(b"123456789") == 0x29B1          # the catalogue's check value
    for n in (0, 1, 7, 100):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc16(data) == binascii.crc_hqx(data, 0xFFFF)


def test_bytes_of_other_kinds_by_hand():
    t = 1000
    base = [{"kind": "anchor", "time": t}]
    anchor = encode_records(base, 4, 2)
    # COINCIDENCE pattern 0b0101, t0 = T - 3: payload 5 | zigzag(-3) = 5 << 4 = 85.
    coinc = {"kind": Kind.COINCIDENCE, "pattern": 0b0101, "time": t - 3}
    assert encode_records(base + [coinc], 4, 2)[len(anchor):] == bytes([0xC5, 0x0A])
    # HERALD rule 1 pattern 0b0011 at T: payload 1 | 3 << 3 = 25.
    herald = {"kind": Kind.HERALD, "rule": 1, "pattern": 0b0011, "time": t}
    assert encode_records(base + [herald], 4, 2)[len(anchor):] == bytes([0xC9, 0x03])
    # LOSS DELAY_FULL index 2 count 300: payload 1 | 2 << 3 | 300 << 6 = 19217 (protocol 5: a
    # 3-bit cause): 19217 & 7 = 1, (19217 >> 3) & 127 = 98, 19217 >> 10 = 18.
    loss = {"kind": Kind.LOSS, "cause": LossCause.DELAY_FULL, "index": 2, "count": 300}
    assert encode_records([loss], 4, 2) == bytes([0xD1, 0x62, 0x12])
    # REPLY ok 1, seq 3, address 0x800, value 0xDEADBEEF: 50 field bits and their CRC-8 check,
    # 58 payload bits, always 9 bytes.
    reply = {"kind": "reply", "ok": 1, "seq": 3, "address": 0x800, "value": 0xDEADBEEF}
    fields = 1 | 3 << 1 | 0x800 << 6 | 0xDEADBEEF << 18
    payload = fields | _crc8_by_division(fields) << 50
    expected = [0xF8 | (payload & 7)] + [(payload >> (3 + 7 * i)) & 0x7F for i in range(8)]
    assert encode_records([reply], 4, 2) == bytes(expected)
    # STATUS with value 0 is still 9 bytes (its check is not 0).
    status = {"kind": "status", "ok": 1, "seq": 0, "address": 0, "value": 0}
    check = _crc8_by_division(1)
    payload = 1 | check << 50
    assert encode_records([status], 4, 2) == bytes(
        [0xF0 | (payload & 7)] + [(payload >> (3 + 7 * i)) & 0x7F for i in range(8)])
    assert check != 0


def _crc8_by_division(fields, n=50):
    """The REPLY check of docs/protocol.md computed as polynomial division, not as a shift
    register: the remainder of ``0xFF * x**n + M(x) * x**8`` modulo ``x^8 + x^2 + x + 1``, where
    ``M`` has the field bits, least significant first, as its coefficients from x**(n-1) down."""
    message = 0
    for i in range(n):
        message = message << 1 | (fields >> i) & 1
    dividend = (0xFF << n) ^ (message << 8)
    poly = 0x107
    for bit in range(dividend.bit_length() - 1, 7, -1):
        if dividend >> bit & 1:
            dividend ^= poly << (bit - 8)
    return dividend


def test_reply_check_catches_every_error_of_up_to_three_bits():
    from heraldry.protocol import reply_check
    fmt = WireFormat(4, 2)
    reply = {"kind": "reply", "ok": 1, "seq": 9, "address": 0x123, "value": 0x89ABCDEF}
    data = encode_records([reply], 4, 2)
    assert fmt.well_formed(data) == (WireKind.REPLY, {**{k: v for k, v in reply.items()
                                                         if k != "kind"},
                                                      "check": reply_check(
                                                          fmt.pack(WireKind.REPLY,
                                                                   {**reply, "check": 0}))})
    payload_positions = [(0, b) for b in range(3)] + [(i, b) for i in range(1, 9)
                                                      for b in range(7)]
    payload_positions = payload_positions[:58]
    rng = np.random.default_rng(5)
    flips = [[i] for i in range(len(payload_positions))]
    flips += [rng.choice(len(payload_positions), k, replace=False).tolist() for k in (2, 3)
              for _ in range(3000)]
    for flip in flips:
        damaged = bytearray(data)
        for index in flip:
            at, bit = payload_positions[index]
            damaged[at] ^= 1 << bit
        assert fmt.well_formed(bytes(damaged)) is None, flip
    # a wrong check given to the encoder goes out as it is, and the decoder does not take it
    bad = encode_records([dict(reply, check=reply_check(0) ^ 1)], 4, 2)
    assert decode_bytes(bad, 4, 2) == ([], {"decode_errors": 0, "skipped_bytes": 9,
                                            "unverified": 0})


def test_tag_widths_follow_channel_bits():
    # One channel: no channel bits, the first byte holds 6 delta bits. Eight: 3 channel bits.
    assert wire_channel_bits(1) == 0 and wire_channel_bits(8) == 3
    one = encode_records([{"kind": Kind.TAG, "channel": 0, "time": 63}], 1, 1)
    assert one == bytes([0x80 | 63])
    two = encode_records([{"kind": Kind.TAG, "channel": 0, "time": 64}], 1, 1)
    assert two == bytes([0x80, 0x01])
    eight = encode_records([{"kind": Kind.TAG, "channel": 5, "time": 7}], 8, 1)
    assert eight == bytes([0x80 | 5 | 7 << 3])


def test_command_bytes_by_hand():
    # WRITE, seq 17, address 0x14, value 2**31: payload 17 | 0x14 << 5 | 2**31 << 17; check
    # 0b11110 (CRC-5 x^5+x^2+1, init 0b11111, over op's 2 bits then the 49 payload bits, least
    # significant first: worked by hand with the shift register of docs/protocol.md).
    frame = encode_command(Command.WRITE, 0x14, 2 ** 31, 17)
    assert frame == bytes([0x80 | 0b11110 << 2 | 1, 0x11, 0x05, 0, 0, 0, 0, 0x40])
    assert decode_command(frame) == {"op": Command.WRITE, "seq": 17, "address": 0x14,
                                     "value": 2 ** 31}


def test_commands_round_trip_and_reject_malformed_frames():
    rng = np.random.default_rng(7)
    for _ in range(200):
        op = Command(int(rng.integers(2)))
        seq, address, value = (int(rng.integers(32)), int(rng.integers(4096)),
                               int(rng.integers(2 ** 32)))
        frame = encode_command(op, address, value, seq)
        assert len(frame) == COMMAND_BYTES
        assert frame[0] & 0x83 == 0x80 | op.value and all(b < 0x80 for b in frame[1:])
        assert decode_command(frame) == {"op": op, "seq": seq, "address": address,
                                         "value": value}
    good = encode_command(Command.READ, 5, 0, 1)
    flipped = [bytes([good[0] ^ 1 << bit]) + good[1:] for bit in range(7)]
    flipped += [good[:k] + bytes([good[k] ^ 1 << bit]) + good[k + 1:]
                for k in range(1, COMMAND_BYTES) for bit in range(7)]
    payload = 1 | 5 << 5
    undefined_op = bytes([0x80 | command_check(2, payload) << 2 | 2]) + good[1:]
    for bad in (undefined_op, good[:-1], good + b"\x00", good[:3] + bytes([0x80]) + good[4:],
                bytes([good[0] & 0x7F]) + good[1:], *flipped):
        with pytest.raises(ValueError):
            decode_command(bad)
    with pytest.raises(ValueError):
        encode_command(Command.READ, 4096, 0, 0)


def test_zigzag():
    assert [zigzag(d) for d in (0, -1, 1, -2, 2)] == [0, 1, 2, 3, 4]
    for d in range(-1000, 1000):
        assert unzigzag(zigzag(d)) == d


def test_encoder_refuses_what_the_format_cannot_carry():
    with pytest.raises(ValueError):   # TAG earlier than T
        encode_records([{"kind": "anchor", "time": 10},
                        {"kind": Kind.TAG, "channel": 0, "time": 9}], 4, 2)
    with pytest.raises(ValueError):   # channel field is 2 bits for N = 4
        encode_records([{"kind": Kind.TAG, "channel": 4, "time": 0}], 4, 2)
    with pytest.raises(ValueError):   # loss count is LOSS_COUNT_BITS wide
        encode_records([{"kind": Kind.LOSS, "cause": 0, "index": 0, "count": 2 ** 16}], 4, 2)
    with pytest.raises(ValueError):   # delta wider than time_bits(F)
        encode_records([{"kind": Kind.TAG, "channel": 0, "time": 2 ** time_bits(0)}], 4, 2)


# -- Round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("channels,rules,fine_bits,start", [
    (1, 1, 0, 0), (2, 1, 0, 2 ** 32 - 3000), (4, 2, 0, 2 ** 32 - 3000), (8, 8, 0, 2 ** 40),
    (3, 3, 3, 2 ** 35 - 5000), (4, 2, 8, 2 ** 45 + 17),
])
def test_reference_round_trip(channels, rules, fine_bits, start):
    rng = np.random.default_rng(channels * 100 + fine_bits)
    for interval in (2 ** 10, 2 ** 20):
        records = random_records(rng, channels, rules, fine_bits, n=400, start=start)
        data = encode_stream(records, channels, rules, fine_bits, anchor_interval=interval)
        decoded, errors = decode_bytes(data, channels, rules, fine_bits)
        assert errors == {"decode_errors": 0, "skipped_bytes": 0, "unverified": 0}
        assert strip(decoded) == strip(records)
        assert max(r["time"] for r in records if r["kind"] == Kind.TAG) >= start
        # every anchor is followed by a TIME, and its time is that of the data record after it
        for i, rec in enumerate(decoded):
            if rec["kind"] == "anchor":
                after = [r for r in decoded[i + 1:] if r["kind"] not in SIDE]
                assert after[0]["kind"] == "time"
                assert after[1]["kind"] in tuple(Kind) and after[1]["time"] == rec["time"]
        # groups: a TIME comes before the 17th data record of a group, never before a LOSS
        run = 0
        for i, rec in enumerate(decoded):
            if rec["kind"] in ("anchor", "time", "check"):
                if rec["kind"] == "time" and decoded[i - 1]["kind"] != "anchor":
                    assert run >= wire.WIRE_GROUP_RECORDS
                    nxt = next(r for r in decoded[i + 1:] if r["kind"] not in SIDE)
                    assert nxt["kind"] in (Kind.TAG, Kind.COINCIDENCE, Kind.HERALD)
                run = 0
            elif rec["kind"] not in SIDE:
                run += 1
                assert run <= wire.WIRE_GROUP_RECORDS or rec["kind"] == Kind.LOSS
        # encode_records reproduces the same bytes from the decoded list (anchors, checks kept)
        assert encode_records(decoded, channels, rules, fine_bits) == data


def test_loss_records_get_the_running_time():
    records = [{"kind": "anchor", "time": 50},
               {"kind": Kind.LOSS, "cause": LossCause.MERGER_FULL, "index": 1, "count": 3},
               {"kind": Kind.TAG, "channel": 0, "time": 70},
               {"kind": Kind.LOSS, "cause": LossCause.COINCIDENCE_RECORD, "index": 0, "count": 9},
               {"kind": "check"}]
    decoded, _ = decode_bytes(encode_records(records, 2, 1), 2, 1)
    losses = [r for r in decoded if r["kind"] == Kind.LOSS]
    assert [r["time"] for r in losses] == [50, 70]


def _cycles(items, fine_bits):
    cycles, k = [], None
    for rec in items:
        if rec["kind"] in SIDE:
            k = 0 if k is None else k
        else:
            k = rec["time"] >> fine_bits if k is None else max(k, rec["time"] >> fine_bits)
        cycles.append(k)
    return cycles


@pytest.mark.parametrize("interval", [2 ** 10, 2 ** 14])
def test_encoder_policy_places_anchors_and_checks(interval):
    """Each segment closes before the first item taken ``interval`` cycles after its ANCHOR
    (or at the end), and a new one opens right before the next data record, at its time."""
    rng = np.random.default_rng(interval)
    records = random_records(rng, 4, 2, 0, n=2000, start=2 ** 32 - 10 ** 5, mean_gap=20)
    cycles = _cycles(records, 0)
    data = encode_stream(records, 4, 2, anchor_interval=interval)
    decoded, errors = decode_bytes(data, 4, 2)
    assert errors["decode_errors"] == errors["skipped_bytes"] == errors["unverified"] == 0
    is_open, anchor_cycle, item = False, None, 0
    for i, rec in enumerate(decoded):
        if rec["kind"] == "check":
            assert is_open
            # the next item is the first taken interval cycles or more after the ANCHOR
            assert item == len(records) or cycles[item] - anchor_cycle >= interval
            is_open = False
        elif rec["kind"] == "anchor":
            assert not is_open and records[item]["kind"] not in SIDE
            assert rec["time"] == records[item]["time"]
            is_open, anchor_cycle = True, cycles[item]
        elif rec["kind"] == "time":
            assert is_open
        else:
            if is_open:
                assert cycles[item] - anchor_cycle < interval
            else:
                assert rec["kind"] in SIDE
            item += 1
    assert item == len(records) and not is_open
    assert sum(r["kind"] == "anchor" for r in decoded) > 5


def test_clear_closes_the_segment_before_the_next_item():
    tag = {"kind": Kind.TAG, "channel": 0}
    records = [dict(tag, time=10), {"kind": "clear"},
               {"kind": "reply", "ok": 1, "seq": 1, "address": 0x11, "value": 0},
               dict(tag, time=20)]
    decoded, _ = decode_bytes(encode_stream(records, 1, 1), 1, 1)
    assert [r["kind"] for r in decoded] == ["anchor", "time", Kind.TAG, "check", "reply",
                                            "anchor", "time", Kind.TAG, "check"]


def test_explicit_cycles_drive_the_anchor_interval():
    # Records close in time but taken late (a stalled link): the take cycle decides.
    tag = {"kind": Kind.TAG, "channel": 0}
    records = [dict(tag, time=0, cycle=0), dict(tag, time=1, cycle=2000),
               dict(tag, time=2, cycle=2000)]
    decoded, _ = decode_bytes(encode_stream(records, 1, 1, anchor_interval=1024), 1, 1)
    assert [r["kind"] for r in decoded] == ["anchor", "time", Kind.TAG, "check", "anchor",
                                            "time", Kind.TAG, Kind.TAG, "check"]
    with pytest.raises(ValueError):
        encode_stream([dict(tag, time=0, cycle=5), dict(tag, time=1, cycle=4)], 1, 1)
    # boundary: taken 1023 cycles after the ANCHOR stays in the segment, 1024 starts a new one
    records = [dict(tag, time=5), dict(tag, time=5 + 1023), dict(tag, time=5 + 1024),
               dict(tag, time=5 + 2047), dict(tag, time=5 + 2048)]
    decoded, _ = decode_bytes(encode_stream(records, 1, 1, anchor_interval=1024), 1, 1)
    assert [r["kind"] for r in decoded] == ["anchor", "time", Kind.TAG, Kind.TAG, "check",
                                            "anchor", "time", Kind.TAG, Kind.TAG, "check",
                                            "anchor", "time", Kind.TAG, "check"]


def test_final_check_can_be_left_open():
    records = [{"kind": Kind.TAG, "channel": 0, "time": 3}]
    data = encode_stream(records, 1, 1, final_check=False)
    assert decode_bytes(data, 1, 1)[1] == {"decode_errors": 0, "skipped_bytes": 0,
                                           "unverified": 2}


# -- Damage ------------------------------------------------------------------------------------

def _stream(n=60, seed=1, channels=4):
    rng = np.random.default_rng(seed)
    records = random_records(rng, channels, 2, 0, n=n, big_gaps=False, sides=False,
                             mean_gap=100)
    cycles = _cycles(records, 0)
    # about 5 segments
    interval = max(1, (cycles[-1] - cycles[0]) // 5)
    data = encode_stream(records, channels, 2, anchor_interval=interval)
    return records, data


def _group_of_records(clean):
    """The group index of each record of a clean decode (ANCHOR and TIME open a group)."""
    index, out = -1, []
    for rec in clean:
        if rec["kind"] in ("anchor", "time"):
            index += 1
        out.append(index)
    return out


def _faulted(data, position, op, bit=0):
    out = bytearray(data)
    if op == "drop":
        del out[position]
    elif op == "duplicate":
        out.insert(position, out[position])
    else:
        out[position] ^= 1 << bit
    return bytes(out)


def test_one_fault_costs_its_group():
    """A drop, a duplicate or a flipped bit at any byte costs exactly the groups
    :func:`lost_groups` names (the one it hits; the one before if it hits a TIME; the whole
    segment if it hits the ANCHOR's group) and leaves a trace in the counts."""
    records, data = _stream(n=120)
    groups = groups_of(data, 4, 2)
    clean, _ = decode_bytes(data, 4, 2)
    group_of = _group_of_records(clean)
    assert len(groups) == group_of[-1] + 1
    assert len({segment for *_, segment, _ in groups}) >= 4
    assert max(end - start for start, end, *_ in groups) < 80          # groups are small
    cases = [(p, op, 0) for p in range(len(data)) for op in ("drop", "duplicate")]
    cases += [(p, "flip", bit) for p in range(len(data)) for bit in range(8)]
    for position, op, bit in cases:
        decoded, errors = decode_bytes(_faulted(data, position, op, bit), 4, 2)
        lost = lost_groups(groups, data, position, op)
        want = [rec for rec, g in zip(clean, group_of) if g not in lost]
        assert strip(decoded) == strip(want), (position, op, bit, lost)
        if lost:
            assert sum(errors.values()) > 0
    # a flip inside a group that is neither a segment's first nor its last costs that group only
    middle = next(g for g in range(1, len(groups) - 1)
                  if groups[g - 1][2] == groups[g][2] == groups[g + 1][2])
    assert lost_groups(groups, data, groups[middle][1] - 2, "flip") == {middle}


def test_late_join_skips_to_the_first_anchor_and_takes_replies():
    reply = {"kind": "reply", "ok": 1, "seq": 9, "address": 3, "value": 4}
    tags = [{"kind": Kind.TAG, "channel": 1, "time": t} for t in (5, 9, 400)]
    data = encode_records([{"kind": "anchor", "time": 5}, tags[0], tags[1], {"kind": "check"},
                           reply, {"kind": "anchor", "time": 400}, tags[2], {"kind": "check"}],
                          2, 1)
    first_segment = segments_of(data, 2, 1)[0][1]
    for cut in range(1, first_segment):
        decoded, errors = decode_bytes(data[cut:], 2, 1)
        assert errors == {"decode_errors": 0, "skipped_bytes": first_segment - cut,
                          "unverified": 0}
        assert strip(decoded) == [reply, tags[2]]


def test_second_anchor_damages_the_open_segment_only():
    tag = {"kind": Kind.TAG, "channel": 0}
    data = encode_records([{"kind": "anchor", "time": 0}, dict(tag, time=1), dict(tag, time=2),
                           {"kind": "anchor", "time": 10}, dict(tag, time=11), {"kind": "check"}],
                          1, 1)
    decoded, errors = decode_bytes(data, 1, 1)
    assert errors == {"decode_errors": 3, "skipped_bytes": 0, "unverified": 0}
    assert strip(decoded) == [dict(tag, time=11)]


def test_replies_in_a_damaged_segment_are_still_taken():
    reply = {"kind": "reply", "ok": 0, "seq": 2, "address": 0xFFF, "value": 1}
    data = bytearray(encode_records([{"kind": "anchor", "time": 0}, reply,
                                     {"kind": Kind.TAG, "channel": 0, "time": 5},
                                     {"kind": "check"}], 1, 1))
    data[-3] ^= 1                                         # inside the CHECK
    decoded, errors = decode_bytes(bytes(data), 1, 1)
    assert decoded == [reply]
    assert errors["decode_errors"] == 4


@pytest.mark.parametrize("name,record", [
    ("channel 3 of 3", {"kind": Kind.TAG, "channel": 3, "time": 100}),
    ("rule 2 of 2", {"kind": Kind.HERALD, "rule": 2, "pattern": 1, "time": 100}),
    ("loss of channel 3", {"kind": Kind.LOSS, "cause": LossCause.DELAY_FULL, "index": 3,
                           "count": 1}),
    ("loss of rule 2", {"kind": Kind.LOSS, "cause": LossCause.HERALD_RECORD, "index": 2,
                        "count": 1}),
    ("coincidence loss index 1", {"kind": Kind.LOSS, "cause": LossCause.COINCIDENCE_RECORD,
                                  "index": 1, "count": 1}),
    ("negative herald time", {"kind": Kind.HERALD, "rule": 0, "pattern": 1, "time": -1}),
    ("negative t0", {"kind": Kind.COINCIDENCE, "pattern": 1, "time": -5}),
])
def test_malformed_records_damage_their_segment(name, record):
    before = {"kind": Kind.TAG, "channel": 0, "time": 0}
    data = encode_records([{"kind": "anchor", "time": 0}, before, record, {"kind": "check"}],
                          3, 2)
    decoded, errors = decode_bytes(data, 3, 2)
    assert decoded == [] and errors["decode_errors"] == 4, name


def test_malformed_framing_damages_the_segment():
    fmt = WireFormat(4, 2)
    anchor = encode_records([{"kind": "anchor", "time": 0}], 4, 2)
    tag = fmt.record_bytes(Kind.TAG, fmt.pack(Kind.TAG, {"channel": 1, "delta": 3}))
    too_long = tag + bytes(fmt.max_bytes[Kind.TAG])           # zero-padded past the maximum
    padded = tag + b"\x00"                                     # non-minimal but within range
    reserved = bytes([0xC0 | WireKind.TIME.value << 3])
    short_reply = encode_records([{"kind": "reply", "ok": 1, "seq": 0, "address": 0,
                                   "value": 0}], 4, 2)[:5]
    orphan = bytes([0x05])                                     # after a complete fixed record

    def with_check(body):
        check = fmt.record_bytes(WireKind.CHECK, fmt.pack(WireKind.CHECK, {
            "bytes": len(body) & 0xFFFF, "crc": binascii.crc_hqx(body, 0xFFFF)}))
        return body + check

    ok, errors = decode_bytes(with_check(anchor + padded), 4, 2)
    assert errors["decode_errors"] == 0 and strip(ok) == [
        {"kind": Kind.TAG, "channel": 1, "time": 3}]
    for body in (too_long, reserved, short_reply, anchor[:4], orphan):
        decoded, errors = decode_bytes(with_check(anchor + body), 4, 2)
        assert decoded == [] and errors["decode_errors"] == 3, body


def test_backwards_times_damage_the_segment():
    # A herald may lie before T (zigzag), but a TAG may not go before the previous TAG, nor a
    # herald before the previous herald; checked across segments too.
    herald = {"kind": Kind.HERALD, "rule": 0, "pattern": 1}
    tag = {"kind": Kind.TAG, "channel": 0}
    data = encode_records([{"kind": "anchor", "time": 100}, dict(tag, time=100),
                           dict(herald, time=98), dict(tag, time=99), {"kind": "check"}], 1, 1)
    assert decode_bytes(data, 1, 1)[1]["decode_errors"] == 5
    fine = encode_records([{"kind": "anchor", "time": 100}, dict(tag, time=100),
                           dict(herald, time=98), dict(tag, time=100), {"kind": "check"}], 1, 1)
    assert decode_bytes(fine, 1, 1)[1]["decode_errors"] == 0
    seg1 = encode_records([{"kind": "anchor", "time": 500}, dict(tag, time=500),
                           {"kind": "check"}], 1, 1)
    seg2 = encode_records([{"kind": "anchor", "time": 400}, dict(tag, time=400),
                           {"kind": "check"}], 1, 1)
    decoded, errors = decode_bytes(seg1 + seg2, 1, 1)
    assert strip(decoded) == [dict(tag, time=500)] and errors["decode_errors"] == 3


def test_truncation_leaves_unverified_or_skipped_never_wrong():
    records, data = _stream(n=60, seed=3)
    clean, _ = decode_bytes(data, 4, 2)
    group_of = _group_of_records(clean)
    groups = groups_of(data, 4, 2)
    time_bytes = WireFormat(4, 2).fixed_bytes[WireKind.TIME]
    # a group's records come out once the record that closes it is complete
    closed_at = [end if g + 1 == len(groups) or groups[g + 1][2] != segment else end + time_bytes
                 for g, (_, end, segment, _) in enumerate(groups)]
    segment_ends = {end for g, (_, end, segment, _) in enumerate(groups)
                    if g + 1 == len(groups) or groups[g + 1][2] != segment}
    assert len(segment_ends) >= 3 and len(groups) > len(segment_ends)
    for cut in range(len(data) + 1):
        decoded, errors = decode_bytes(data[:cut], 4, 2)
        assert errors["decode_errors"] == 0
        done = {g for g, at in enumerate(closed_at) if at <= cut}
        assert strip(decoded) == strip([r for r, g in zip(clean, group_of) if g in done])
        if cut in segment_ends or cut == 0:
            assert errors["unverified"] == errors["skipped_bytes"] == 0
        else:
            assert errors["unverified"] + errors["skipped_bytes"] > 0


@pytest.mark.parametrize("op", ["drop", "flip", "duplicate", "insert"])
def test_random_damage_emits_only_original_records(op):
    rng = np.random.default_rng(["drop", "flip", "duplicate", "insert"].index(op))
    records, data = _stream(n=400, seed=11)
    originals = {(r["kind"], r.get("channel"), r["time"]) for r in records
                 if r["kind"] in (Kind.TAG, Kind.HERALD, Kind.COINCIDENCE)}
    groups = groups_of(data, 4, 2)
    group_of = _group_of_records(decode_bytes(data, 4, 2)[0])
    clean = decode_bytes(data, 4, 2)[0]
    for rate in (0.001, 0.01, 0.05):
        damaged, touched = bytearray(), set()
        for i, byte in enumerate(data):
            if rng.random() < rate:
                touched.add(i)
                if op == "flip":
                    damaged.append(byte ^ (1 << int(rng.integers(8))))
                elif op == "duplicate":
                    damaged += bytes([byte, byte])
                elif op == "insert":
                    damaged += bytes([byte, int(rng.integers(256))])
                continue
            damaged.append(byte)
        decoded, errors = decode_bytes(bytes(damaged), 4, 2)
        got = [r for r in decoded if r["kind"] in (Kind.TAG, Kind.HERALD, Kind.COINCIDENCE)]
        for kind in (Kind.TAG, Kind.HERALD, Kind.COINCIDENCE):
            times = [r["time"] for r in got if r["kind"] == kind]
            assert times == sorted(times)
        assert {(r["kind"], r.get("channel"), r["time"]) for r in got} <= originals
        # untouched segments come out whole; touched ones not at all (a byte inserted or
        # duplicated after a segment's last byte is outside it: the CHECK has a fixed length)
        emitted = strip(decoded)
        segment_range = {}
        for start, end, segment, _ in groups:
            first, _ = segment_range.get(segment, (start, end))
            segment_range[segment] = (first, end)
        for start, end, segment, _ in groups:
            group = [r for r, g in zip(clean, group_of) if groups[g][:2] == (start, end)]
            present = [r in emitted for r in strip(group)]
            first, last = segment_range[segment]
            # a duplicated start byte damages the record before it (or nothing, before the
            # ANCHOR); a byte duplicated or added after the CHECK is outside the segment
            def damage(begin, end):
                hit = touched & set(range(begin, end))
                if op == "duplicate" and data[begin] >= WIRE_START:
                    hit.discard(begin)
                if op in ("insert", "duplicate"):
                    hit.discard(last - 1)
                return hit
            if not damage(first, last):
                assert all(present)
            elif damage(start, end):
                assert not any(present)
        if touched:
            assert errors["decode_errors"] + errors["skipped_bytes"] > 0


def test_loss_cause_filter_full_and_reserved_causes():
    """FILTER_FULL names a channel (index < N); causes 5..7 are reserved: malformed."""
    fmt = WireFormat(4, 2)
    for cause, index, good in ((LossCause.FILTER_FULL, 3, True), (LossCause.FILTER_FULL, 4, False),
                               (5, 0, False), (7, 0, False)):
        value = cause.value if isinstance(cause, LossCause) else cause
        payload = value | index << 3 | 9 << 6
        record = bytes([0xD0 | payload & 7, payload >> 3 & 127, payload >> 10])
        assert (fmt.well_formed(record) is not None) == good, (cause, index)
    loss = {"kind": Kind.LOSS, "cause": LossCause.FILTER_FULL, "index": 3, "count": 9}
    assert encode_records([loss], 4, 2) == bytes([0xD4, 0x4B])     # 4 | 3 << 3 | 9 << 6 = 604
