"""Bytes per event on the link, through the reference encoder policy (``wire.encode_stream``,
which the gateware reproduces byte for byte), ANCHOR, TIME and CHECK overhead included.

Figures: ``bytes_per_event`` for Poisson traffic of 10^5 events/s on 4 channels at 100 MHz
(10 ns bins), and the same at 10^4 and 10^6 events/s (``bytes_per_event_1e4``,
``bytes_per_event_1e6``), with the default anchor interval (2^20 cycles).
"""

from heraldry.wire import DEFAULT_ANCHOR_INTERVAL, encode_records, encode_stream

from .common import poisson_tags, tag_records

EVENTS = 100_000
CHANNELS = 4
CLOCK_HZ = 100e6


def bytes_per_event(rate_hz, seed=0):
    times, channels = poisson_tags(EVENTS, rate_hz, CHANNELS, clock_hz=CLOCK_HZ, seed=seed)
    records = tag_records(times, channels)
    data = encode_stream(records, CHANNELS, 1, anchor_interval=DEFAULT_ANCHOR_INTERVAL)
    # the same tags with one ANCHOR in front and no CHECK: the cost of the tags alone
    bare = encode_records([{"kind": "anchor", "time": int(times[0])}] + records, CHANNELS, 1)
    seconds = (int(times[-1]) - int(times[0])) / CLOCK_HZ
    return len(data) / EVENTS, (len(bare) - 9) / EVENTS, (len(data) - len(bare)) / seconds


def run():
    out = {}
    for rate, key in ((1e4, "bytes_per_event_1e4"), (1e5, "bytes_per_event"),
                      (1e6, "bytes_per_event_1e6")):
        total, tags, overhead = bytes_per_event(rate)
        print(f"  {rate:.0e} events/s: {total:.4f} bytes/event ({tags:.4f} for the tags, "
              f"ANCHOR+TIME+CHECK {overhead:,.0f} bytes/s)")
        out[key] = round(total, 4)
    return out


if __name__ == "__main__":
    print(run())
