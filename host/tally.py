"""Hardware counters extended beyond their 32 bits.

Every hardware counter (``protocol.CounterMap``: singles, pattern, herald and drop counters) is
``COUNTER_BITS`` = 32 bits wide and wraps (it never saturates): at a million detections per
second a singles counter wraps every 72 minutes, at the gateware's limit of one increment per
clock cycle every 43 s (100 MHz). :class:`CounterTally` turns successive reads into counts
that do not wrap, by adding each counter's difference modulo ``2**32`` since the previous
read. That is exact as long as every counter is read before it has counted ``2**32`` more
increments; a counter adds at most one per cycle, so reading every counter at least once per
:data:`READ_INTERVAL_CYCLES` (``2**30`` cycles: 10.7 s at 100 MHz, a quarter of the limit)
is enough, whatever the rates. :func:`heraldry.host.acquire.acquire_device` does that while it
runs; ``heraldry serve`` extends its rates the same way (differences modulo ``2**32``).
"""

from ..protocol import COUNTER_BITS

__all__ = ["CounterTally", "READ_INTERVAL_CYCLES"]

#: Read every counter at least this often (device cycles) for :class:`CounterTally` to be exact.
READ_INTERVAL_CYCLES = 2 ** 30

_WRAP = 2 ** COUNTER_BITS


class CounterTally:
    """Counts since a baseline read, from raw 32-bit reads.

    ``CounterTally(baseline)`` with the counters as read right after a clear (``{group: [raw
    values]}``, :meth:`heraldry.host.driver.Device.counters`; a clear zeroes them, the read makes
    the tally independent of that); :meth:`update` with every later read returns the extended
    counts ``{group: [counts since the baseline]}`` (Python ints, unbounded). ``reads`` counts
    the updates."""

    def __init__(self, baseline):
        self._last = {group: [int(v) for v in values] for group, values in baseline.items()}
        self.counts = {group: [0] * len(values) for group, values in baseline.items()}
        self.reads = 0

    def update(self, raw):
        """Add the differences (modulo ``2**32``) since the previous read; return the counts."""
        if set(raw) != set(self._last):
            raise ValueError(f"counter groups {sorted(raw)} differ from the baseline's "
                             f"{sorted(self._last)}")
        for group, values in raw.items():
            last, counts = self._last[group], self.counts[group]
            if len(values) != len(last):
                raise ValueError(f"{group}: {len(values)} counters, the baseline has {len(last)}")
            for i, value in enumerate(values):
                value = int(value)
                if not 0 <= value < _WRAP:
                    raise ValueError(f"{group}[{i}] = {value} is not a {COUNTER_BITS}-bit count")
                counts[i] += (value - last[i]) % _WRAP
                last[i] = value
        self.reads += 1
        return {group: list(counts) for group, counts in self.counts.items()}
