"""Helpers shared by the benchmarks: Poisson streams, a vectorised TAG-stream encoder, PTU T2
writing, timing."""

import binascii
import struct
import time
import uuid

import numpy as np

from heraldry.protocol import (
    WIRE_BITS_PER_BYTE, WIRE_GROUP_RECORDS, WIRE_START, WIRE_TAG_FIRST_BITS, Kind, WireKind,
)
from heraldry.wire import CHECK_CRC_INIT, CHECK_FIELD_BITS, WireFormat, encode_stream

__all__ = ["poisson_tags", "tag_records", "encode_tags", "check_encode_tags", "best_of",
           "write_ptu_t2"]


def poisson_tags(n, rate_hz, channels, *, clock_hz=100e6, fine_bits=0, seed=0, start=0):
    """``n`` events of a Poisson process of ``rate_hz`` (all channels together), each on a
    uniformly random channel, in bins of ``1 / (clock_hz * 2**fine_bits)``. Returns
    ``(times, channels)``: int64 bins (non-decreasing), uint8 channels."""
    rng = np.random.default_rng(seed)
    p = rate_hz / (clock_hz * 2 ** fine_bits)        # probability of an event per bin
    gaps = rng.geometric(p, n) - 1
    gaps[0] = 0
    times = start + np.cumsum(gaps, dtype=np.int64)
    return times, rng.integers(0, channels, n).astype(np.uint8)


def tag_records(times, channels):
    """Record dicts (for :func:`heraldry.wire.encode_stream`) of TAGs."""
    return [{"kind": Kind.TAG, "channel": c, "time": t}
            for t, c in zip(times.tolist(), channels.tolist())]


def encode_tags(times, channels, n_channels, *, fine_bits=0, anchor_interval=2 ** 20):
    """The bytes :func:`heraldry.wire.encode_stream` gives for a stream of TAGs only (default
    take cycles), computed with numpy so 10^7 events take seconds, not minutes. Checked against
    the reference by :func:`check_encode_tags`."""
    fmt = WireFormat(n_channels, 1, fine_bits)
    n = len(times)
    times = np.asarray(times, np.int64)
    cycles = times >> fine_bits
    # segment starts: the first record taken anchor_interval cycles after the last ANCHOR
    starts = [0]
    while True:
        j = int(np.searchsorted(cycles, cycles[starts[-1]] + anchor_interval, side="left"))
        if j >= n:
            break
        starts.append(j)
    starts = np.array(starts)
    segment = np.zeros(n, np.int64)
    segment[starts[1:]] = 1
    segment = np.cumsum(segment)                    # segment index of each record
    first = starts[segment]                         # the record each one's ANCHOR carries
    opens = (np.arange(n) - first) % WIRE_GROUP_RECORDS == 0     # a TIME comes before it
    delta = np.diff(times, prepend=times[0])
    delta[opens] = times[opens] - times[first[opens]]   # TIME: T = the ANCHOR's time
    payload = channels.astype(np.int64) | (delta << fmt.channel_bits)
    first_bits, bpb = WIRE_TAG_FIRST_BITS, WIRE_BITS_PER_BYTE
    length = np.ones(n, np.int64)
    limit = 1 << first_bits
    while True:
        longer = payload >= limit
        if not longer.any():
            break
        length += longer
        limit <<= bpb
    anchor_len = fmt.fixed_bytes[WireKind.ANCHOR]
    time_len = fmt.fixed_bytes[WireKind.TIME]
    check_len = fmt.fixed_bytes[WireKind.CHECK]
    # offset of each record: tag bytes before it, plus the ANCHORs, TIMEs and CHECKs before it
    offset = ((np.cumsum(length) - length) + anchor_len * (segment + 1) + check_len * segment
              + time_len * np.cumsum(opens))
    total = int(length.sum()) + (anchor_len + check_len) * len(starts) + time_len * int(opens.sum())
    out = np.zeros(total, np.uint8)
    out[offset] = WIRE_START | (payload & ((1 << first_bits) - 1))
    shift = first_bits
    for j in range(1, int(length.max())):
        more = length > j
        out[offset[more] + j] = (payload[more] >> shift) & ((1 << bpb) - 1)
        shift += bpb
    ends = np.append(starts[1:], n)
    for a, b in zip(starts.tolist(), ends.tolist()):
        anchor_at = int(offset[a]) - time_len - anchor_len
        out[anchor_at:anchor_at + anchor_len] = np.frombuffer(fmt.record_bytes(
            WireKind.ANCHOR, fmt.pack(WireKind.ANCHOR, {"time": int(times[a])})), np.uint8)
        seed = crc = binascii.crc_hqx(out[anchor_at:anchor_at + anchor_len].tobytes(),
                                      CHECK_CRC_INIT)
        seg_end = int(offset[b - 1] + length[b - 1])
        group_starts = (np.flatnonzero(opens[a:b]) + a).tolist()
        for g, r in enumerate(group_starts):
            time_at = int(offset[r]) - time_len
            out[time_at:time_at + time_len] = np.frombuffer(fmt.record_bytes(
                WireKind.TIME, fmt.pack(WireKind.TIME, {"crc": crc})), np.uint8)
            group_end = (int(offset[group_starts[g + 1]]) - time_len
                         if g + 1 < len(group_starts) else seg_end)
            crc = binascii.crc_hqx(out[time_at:group_end].tobytes(), seed)
        check = fmt.record_bytes(WireKind.CHECK, fmt.pack(WireKind.CHECK, {
            "bytes": (seg_end - time_at) & ((1 << CHECK_FIELD_BITS) - 1), "crc": crc}))
        out[seg_end:seg_end + check_len] = np.frombuffer(check, np.uint8)
    return out.tobytes()


def check_encode_tags(times, channels, n_channels, **kwargs):
    """Raise if :func:`encode_tags` and the reference encoder disagree on these events."""
    fast = encode_tags(times, channels, n_channels, **kwargs)
    reference = encode_stream(tag_records(times, channels), n_channels, 1, **kwargs)
    if fast != reference:
        at = next(i for i, (a, b) in enumerate(zip(fast, reference)) if a != b)
        raise AssertionError(f"encode_tags differs from encode_stream at byte {at}")


def best_of(fn, repeat=3):
    """``(best seconds, last result)`` of ``repeat`` calls of ``fn()`` (time.perf_counter)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


# -- PTU T2 (record layout: host/ptu.py) -------------------------------------------------

_PTU_TYPES = {"empty": 0xFFFF0008, "int": 0x10000008, "float": 0x20000008,
              "string": 0x4001FFFF}
_T2_WRAP = 2 ** 25
_HYDRAHARP_V2_T2 = 0x01010204


def _ptu_tag(ident, kind, value=0):
    head = ident.encode().ljust(32, b"\0") + struct.pack("<iI", -1, _PTU_TYPES[kind])
    if kind == "string":
        text = value.encode() + b"\0"
        text = text.ljust(-(-len(text) // 8) * 8, b"\0")
        return head + struct.pack("<q", len(text)) + text
    if kind == "float":
        return head + struct.pack("<d", value)
    return head + struct.pack("<q", value)


def write_ptu_t2(path, times, channels, resolution_s):
    """A minimal valid PTU file, record type HydraHarp V2 T2, of photon records at ``times``
    (int, in units of ``resolution_s``, non-decreasing) on ``channels``; overflow records are
    inserted whenever ``time >> 25`` advances. Returns the number of records."""
    times = np.asarray(times, np.int64)
    wraps = times >> 25
    step = np.diff(wraps, prepend=0)                # wraps to announce before each photon
    per = _T2_WRAP - 1                              # most wraps one overflow record carries
    count = -(-step // per)                         # overflow records before each photon
    position = np.arange(len(times)) + np.cumsum(count)
    records = np.full(len(times) + int(count.sum()), (1 << 31) | (63 << 25) | per, np.uint32)
    records[position] = (channels.astype(np.uint32) << 25) | (times & (_T2_WRAP - 1))
    last = count > 0
    records[position[last] - 1] = ((1 << 31) | (63 << 25)
                                   | (step[last] - (count[last] - 1) * per)).astype(np.uint32)
    header = b"PQTTTR\0\0" + b"1.0.00\0\0" + b"".join([
        _ptu_tag("File_GUID", "string", "{" + str(uuid.uuid4()) + "}"),
        _ptu_tag("Measurement_Mode", "int", 2),
        _ptu_tag("Measurement_SubMode", "int", 1),
        _ptu_tag("MeasDesc_GlobalResolution", "float", resolution_s),
        _ptu_tag("MeasDesc_Resolution", "float", resolution_s),
        _ptu_tag("MeasDesc_BinningFactor", "int", 1),
        _ptu_tag("HW_InpChannels", "int", int(channels.max()) + 1 if len(channels) else 1),
        _ptu_tag("TTResult_SyncRate", "int", 0),
        _ptu_tag("TTResult_NumberOfRecords", "int", len(records)),
        _ptu_tag("TTResultFormat_BitsPerRecord", "int", 32),
        _ptu_tag("TTResultFormat_TTTRRecType", "int", _HYDRAHARP_V2_T2),
        _ptu_tag("CreatorSW_Name", "string", "heraldry bench"),
        _ptu_tag("Header_End", "empty"),
    ])
    with open(path, "wb") as f:
        f.write(header)
        f.write(records.astype("<u4").tobytes())
    return len(records)
