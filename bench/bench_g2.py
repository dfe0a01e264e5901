"""Speed of the g2 histogram (``host.measure.correlate``) against ``pycorrelate.pcorrelate``.

Data: two channels of 5 x 10^6 tags each in 1 ps units over 5 s (10^6 tags/s per channel),
a tenth of channel 2 being partners of channel-1 tags 3.2 ns later (+-100 ps), the rest
independent; histogram of t2 - t1 over [-500 ns, 500 ns) in 1000 bins of 1 ns.

Figures: ``g2_seconds`` ours (numba sorted merge, best of 3 after a warm-up call that compiles
or loads the kernel), ``g2_pycorrelate_seconds`` pycorrelate on the same arrays and edges (one
timed call after a warm-up on a small slice: it is O(tags x bins)), ``g2_ratio_vs_pycorrelate``
= baseline / ours (higher is better). The counts must be identical (pycorrelate returns counts
divided by the bin width: multiplied back and rounded). ``g2_streaming_seconds``: the same
histogram by ``measure.Correlation`` fed the merged tags in 100 blocks (as from the driver), one
call; its counts must be identical too.
"""

import time

import numpy as np

from .common import best_of

TAGS = 5_000_000
SPAN_PS = 5 * 10**12
BIN_PS = 1000
RANGE_PS = 500_000


def data(seed=3):
    rng = np.random.default_rng(seed)
    t1 = np.sort(rng.integers(0, SPAN_PS, TAGS))
    partners = rng.choice(t1, TAGS // 10, replace=False) + 3200 + rng.integers(-100, 101,
                                                                                 TAGS // 10)
    t2 = np.sort(np.r_[rng.integers(0, SPAN_PS, TAGS - TAGS // 10), partners])
    return t1.astype(np.int64), t2.astype(np.int64)


def run():
    import pycorrelate
    from heraldry.host.measure import correlate
    t1, t2 = data()
    edges = np.arange(-RANGE_PS, RANGE_PS + 1, BIN_PS, dtype=np.int64)
    correlate(t1[:1000], t2[:1000], BIN_PS, -RANGE_PS, RANGE_PS)        # compile / load
    ours_s, counts = best_of(lambda: correlate(t1, t2, BIN_PS, -RANGE_PS, RANGE_PS), 3)
    pycorrelate.pcorrelate(t1[:1000], t2[:1000], edges)                 # compile
    start = time.perf_counter()
    theirs = pycorrelate.pcorrelate(t1, t2, edges)
    theirs_s = time.perf_counter() - start
    theirs = np.rint(theirs * np.diff(edges)).astype(np.int64)
    assert np.array_equal(counts, theirs), "correlate and pycorrelate disagree"
    times = np.concatenate((t1, t2))
    chans = np.repeat(np.array([0, 1], np.uint8), [len(t1), len(t2)])
    order = np.lexsort((chans, times))
    times, chans = times[order], chans[order]
    del order
    from heraldry.host.measure import Correlation

    def streaming():
        corr = Correlation(0, 1, bin_ps=BIN_PS, range_ps=RANGE_PS)
        for part in np.array_split(np.arange(len(times)), 100):
            corr.feed(times[part[0]:part[-1] + 1], chans[part[0]:part[-1] + 1])
        return corr.result()
    stream_s, result = best_of(streaming, 1)
    assert np.array_equal(result.counts, counts), "streaming and whole-array counts differ"
    peak = (3200 + RANGE_PS) // BIN_PS
    assert counts[peak] > 10 * np.median(counts), "the partner peak is missing"
    print(f"  {TAGS:,} tags per channel, {len(counts)} bins, {int(counts.sum()):,} pairs; "
          f"ours {ours_s:.3f} s ({stream_s:.2f} s streamed in 100 blocks), pycorrelate "
          f"{theirs_s:.2f} s")
    return {"g2_seconds": ours_s, "g2_pycorrelate_seconds": theirs_s,
            "g2_ratio_vs_pycorrelate": theirs_s / ours_s, "g2_streaming_seconds": stream_s}
