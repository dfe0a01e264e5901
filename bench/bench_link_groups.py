"""The group size trade-off: link bytes against what byte faults cost, for several
``WIRE_GROUP_RECORDS`` values, through the reference encoder (``wire.encode_stream``, whose
``group_records`` argument stands for the constant the gateware is built with) and the fast
decoder (``host.decoder.StreamDecoder``, record for record the reference's).

Figures (keys ``link_groups_<K>``, K = records per group; ``K = 1000000`` is a segment without
TIME records in practice, the protocol-3 behaviour): ``bytes_per_event`` for Poisson traffic of
10^5 events/s on 4 channels at 100 MHz, and ``recovered_1e-4`` / ``recovered_1e-3``: the fraction
of tags emitted after independent byte faults at that rate per byte (drop, flip of one bit,
duplicate and delay equally likely; a delay changes no byte, so 3/4 of the rate damages) on
0.2 s of the pairs traffic of ``bench_fault_recovery`` (2 * 10^5 pairs/s, 50 % detection per
arm, a HERALD per coincidence), mean of 3 seeds. Every emitted tag is checked to be one that was
sent, at its exact time.
"""

from collections import Counter

import numpy as np

from heraldry.protocol import Kind
from heraldry.wire import DEFAULT_ANCHOR_INTERVAL, encode_stream

from .common import poisson_tags, tag_records

GROUPS = (8, 12, 16, 24, 32, 1_000_000)
RATES = (1e-4, 1e-3)
SEEDS = 3


def pairs_records(seconds, seed, rate_hz=2e5, clock_hz=100e6, delay=3):
    """Records of the pairs test signal, in the merger's order (a HERALD after the later tag)."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.integers(1000, int(seconds * clock_hz), rng.poisson(rate_hz * seconds)))
    out = []
    for t in times.tolist():
        a, b = rng.random() < 0.5, rng.random() < 0.5
        if a:
            out.append((t, 0, {"kind": Kind.TAG, "channel": 0, "time": t}))
        if b:
            out.append((t + delay, 0, {"kind": Kind.TAG, "channel": 1, "time": t + delay}))
        if a and b:
            out.append((t + delay, 1, {"kind": Kind.HERALD, "rule": 0, "pattern": 3,
                                       "time": t + delay}))
    out.sort(key=lambda item: item[:2])
    return [rec for _, _, rec in out]


def damage(data, rate, rng):
    """``data`` with each byte hit with probability ``rate`` by a drop, a flip of one bit, a
    duplicate or a delay (no change), equally likely."""
    hit = np.flatnonzero(rng.random(len(data)) < rate)
    kinds = rng.integers(4, size=len(hit))
    bits = rng.integers(8, size=len(hit))
    out, last = bytearray(), 0
    for at, kind, bit in zip(hit.tolist(), kinds.tolist(), bits.tolist()):
        out += data[last:at]
        last = at + 1
        if kind == 0:
            continue
        if kind == 1:
            out.append(data[at] ^ (1 << bit))
        elif kind == 2:
            out += bytes([data[at], data[at]])
        else:
            out.append(data[at])
    out += data[last:]
    return bytes(out)


def recovered(records, group_records, rate, seed):
    from heraldry.host.decoder import StreamDecoder
    data = encode_stream(records, 4, 2, anchor_interval=DEFAULT_ANCHOR_INTERVAL,
                         group_records=group_records)
    sent = Counter((r["channel"], r["time"] * 10_000) for r in records
                   if r["kind"] is Kind.TAG)
    decoder = StreamDecoder(4, 2)
    damaged = damage(data, rate, np.random.default_rng(seed))
    events = np.concatenate([decoder.feed(damaged).events, decoder.close().events])
    tags = events[events["kind"] == Kind.TAG.value]
    got = Counter(zip(tags["channel"].tolist(), tags["time_ps"].tolist()))
    if got - sent:
        raise AssertionError(f"K = {group_records}: tags emitted that were never sent")
    return len(tags) / sum(sent.values())


def run():
    times, channels = poisson_tags(100_000, 1e5, 4, clock_hz=100e6, seed=0)
    poisson = tag_records(times, channels)
    pairs = pairs_records(0.2, seed=1)
    out = {}
    print(f"  {'K':>8} {'bytes/event 1e5':>15} " + " ".join(f"{'recovered ' + format(r, '.0e'):>16}"
                                                          for r in RATES))
    for k in GROUPS:
        size = len(encode_stream(poisson, 4, 1, group_records=k)) / len(poisson)
        row = {"bytes_per_event": round(size, 4)}
        for i, rate in enumerate(RATES):
            row[f"recovered_{rate:.0e}"] = round(float(np.mean(
                [recovered(pairs, k, rate, 100 * i + s) for s in range(SEEDS)])), 4)
        print(f"  {k:8d} {size:15.4f} " + " ".join(f"{row[f'recovered_{r:.0e}']:16.4f}"
                                                   for r in RATES), flush=True)
        out[f"link_groups_{k}"] = row
    return out


if __name__ == "__main__":
    print(run())
