"""Measurements on streamed tags: rates, coincidences, g2, CAR, heralding efficiency, delays.

Every measurement is an object fed block by block: ``m.feed(block)`` then ``m.result()``. Feeding
the tags in any number of blocks gives exactly the result of feeding them all at once, so the
same object serves a live acquisition (one block per driver read) and a saved file. A block is
either a :data:`heraldry.host.events.EVENT_DTYPE` array (records of other kinds than TAG are
ignored) or ``feed(times, channels)`` with two plain arrays. Times are integers in one unit
(picoseconds for decoded blocks); every time parameter (``window_ps``, ``bin_ps``, ...) is in the
same unit. Blocks must come in time order: each block's earliest tag is not earlier than the
latest tag of the blocks before (the merged stream guarantees this for tags); inside a block the
order is free. ``result()`` can be called at any time and reports the stream as if it ended there.

``duration_ps`` (the acquisition time ``T_acq`` used by normalisations) defaults to the span from
the first to the last tag fed; pass the real acquisition time when known.

**Bound to a run.** ``Correlation``, ``Coincidences``, ``Counter`` (:class:`CountRates`) and
``HeraldRate`` also take a *source* as their first argument: a :class:`heraldry.host.tagger.Run`
(a board's or a replay's), e.g. ``Correlation(run, 0, 1, bin_ps=..., range_ps=...)``. The
object is then attached to the run (``run.attach``), which feeds it every block it collects,
and ``duration_ps`` defaults to the run's device time so far (``run.elapsed_ps``) instead of
the tag span. Any other measurement is attached with ``run.attach(obj)``. The results are the
ones the same object gives fed the same blocks by hand.
"""

from dataclasses import dataclass

import numba
import numpy as np

from ..protocol import MAX_CHANNELS, Kind

__all__ = [
    "tags_of", "correlate", "CountRates", "Counter", "Coincidences", "Correlation", "StartStop",
    "HeraldRate",
    "SlidingCoincidences", "HeraldedG2", "CoincidenceToAccidental", "KlyshkoEfficiency",
    "DelayCalibration", "delays_to_apply",
]

_TAG = Kind.TAG.value


def tags_of(block, channels=None):
    """``(times int64, channels int64)`` of the tags in ``block``, sorted by (time, channel).

    ``block``: an array with fields ``time_ps`` and ``channel`` (and optionally ``kind``: only
    TAG records are kept), a :class:`heraldry.host.events.Block` (its ``events``), or plain
    times with ``channels`` given separately.
    """
    if channels is None:
        if hasattr(block, "events") and not isinstance(block, np.ndarray):
            block = block.events        # an events.Block, as the driver and a Run yield them
        block = np.asarray(block)
        names = block.dtype.names or ()
        if "kind" in names:
            block = block[block["kind"] == _TAG]
        if "time_ps" in names:
            times = block["time_ps"]
        elif "time" in names:
            times = block["time"]
        else:
            raise ValueError("a block needs time_ps (or time) and channel fields, or feed(times, "
                             "channels)")
        channels = block["channel"]
    else:
        times = block
    times = np.asarray(times, np.int64).ravel()
    channels = np.asarray(channels).astype(np.int64).ravel()
    if times.shape != channels.shape:
        raise ValueError(f"{times.size} times but {channels.size} channels")
    if channels.size and (channels.min() < 0 or channels.max() >= MAX_CHANNELS):
        raise ValueError(f"channels must be 0..{MAX_CHANNELS - 1}")
    if times.size > 1 and not (np.all(np.diff(times) >= 0)
                               and np.all((np.diff(times) > 0) | (np.diff(channels) >= 0))):
        order = np.lexsort((channels, times))
        times, channels = times[order], channels[order]
    return times, channels


def _is_source(value):
    """A run (or anything) measurements can be bound to: it has ``attach`` and ``elapsed_ps``."""
    return hasattr(value, "attach") and hasattr(value, "elapsed_ps")


def _split_source(args, names):
    """``(source or None, args without it)``; TypeError naming ``names`` if the count is wrong."""
    source = args[0] if args and _is_source(args[0]) else None
    rest = args[1:] if source is not None else args
    if len(rest) != len(names):
        raise TypeError(f"expected ([source,] {', '.join(names)}), got {len(args)} positional "
                        f"arguments")
    return source, rest


class _Bound:
    """Binding to a source: ``source.attach(self)``; the default duration is its device time."""

    source = None

    def _bind(self, source):
        if source is not None:
            self.source = source
            source.attach(self)

    def _source_duration(self, duration_ps):
        if duration_ps is None and self.source is not None:
            return float(self.source.elapsed_ps)
        return duration_ps


class _Streaming(_Bound):
    """Common part: input normalisation, time-order check, first/last time."""

    def __init__(self):
        self.first = None
        self.last = None

    def feed(self, block, channels=None):
        times, chans = tags_of(block, channels)
        if not times.size:
            return self
        if self.last is not None and times[0] < self.last:
            raise ValueError(f"blocks must come in time order: this block starts at {times[0]}, "
                             f"before the previous block's last tag at {self.last}")
        if self.first is None:
            self.first = int(times[0])
        self._feed(times, chans)
        self.last = int(times[-1])
        return self

    def _duration(self, duration_ps):
        duration_ps = self._source_duration(duration_ps)
        if duration_ps is not None:
            return float(duration_ps)
        if self.first is None:
            return 0.0
        return float(self.last - self.first)


# --- rates ------------------------------------------------------------------------------------

@dataclass
class Rates:
    counts: np.ndarray      #: tags per channel
    duration_ps: float
    rates_hz: np.ndarray    #: counts / duration
    trace: np.ndarray       #: (channels, bins) counts per time bin, or None
    trace_edges_ps: np.ndarray


class CountRates(_Streaming):
    """Tags per channel and, with ``bin_ps``, a binned time trace: ``CountRates([source,]
    channels, *, bin_ps=None, start_ps=0)`` (``Counter`` is the same class).

    ``counts[c] = #{tags of channel c}``; ``rates_hz[c] = counts[c] / T_acq`` (T_acq in s =
    ``duration_ps * 1e-12``). Trace bin ``k`` of channel ``c`` counts its tags with
    ``start_ps + k * bin_ps <= t < start_ps + (k + 1) * bin_ps``; tags before ``start_ps`` are
    refused. The trace has as many bins as needed to hold the last tag.
    """

    def __init__(self, *args, bin_ps=None, start_ps=0):
        super().__init__()
        source, (channels,) = _split_source(args, ["channels"])
        self.channels = int(channels)
        self.bin_ps = bin_ps
        self.start_ps = int(start_ps)
        self._counts = np.zeros(self.channels, np.int64)
        self._trace = np.zeros((self.channels, 0), np.int64)
        self._bind(source)

    def _feed(self, times, chans):
        if chans.max() >= self.channels:
            raise ValueError(f"tag of channel {chans.max()} but only {self.channels} channels")
        self._counts += np.bincount(chans, minlength=self.channels)
        if self.bin_ps is None:
            return
        if times[0] < self.start_ps:
            raise ValueError(f"tag at {times[0]} before the trace start {self.start_ps}")
        k = (times - self.start_ps) // self.bin_ps
        bins = int(k[-1]) + 1
        if bins > self._trace.shape[1]:
            grown = np.zeros((self.channels, bins), np.int64)
            grown[:, :self._trace.shape[1]] = self._trace
            self._trace = grown
        bins = self._trace.shape[1]
        self._trace += np.bincount(chans * bins + k, minlength=self.channels * bins).reshape(
            self.channels, bins)

    def result(self, duration_ps=None):
        duration = self._duration(duration_ps)
        rates = self._counts / (duration * 1e-12) if duration > 0 else self._counts * np.nan
        trace = edges = None
        if self.bin_ps is not None:
            trace = self._trace.copy()
            edges = self.start_ps + self.bin_ps * np.arange(trace.shape[1] + 1)
        return Rates(self._counts.copy(), duration, rates, trace, edges)


# --- coincidence windows (hardware semantics) -------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _windows_kernel(times, bits, window, state, out_t0, out_pattern):
    """Greedy windows of the core (see heraldry.model.coincidence_windows). ``state`` =
    [open, t0, pattern] is carried between calls; closed windows go to out_*; returns their
    number."""
    n_out = 0
    is_open, t0, pattern = state[0], state[1], state[2]
    for i in range(len(times)):
        t = times[i]
        if is_open and t >= t0 + window:
            out_t0[n_out] = t0
            out_pattern[n_out] = pattern
            n_out += 1
            is_open = 0
        if not is_open:
            is_open, t0, pattern = 1, t, 0
        pattern |= bits[i]
    state[0], state[1], state[2] = is_open, t0, pattern
    return n_out


@dataclass
class CoincidenceCounts:
    windows: int            #: closed windows (the open one included: the stream ends here)
    patterns: np.ndarray    #: windows per pattern, index = pattern (bit c = channel c)
    groups: dict            #: {mask: windows whose pattern contains every channel of mask}
    t0: np.ndarray          #: window start times (only with keep_windows=True)
    pattern: np.ndarray     #: window patterns (only with keep_windows=True)

    def containing(self, mask):
        """Windows whose pattern contains ``mask``: sum of ``patterns[p]`` over ``p & mask ==
        mask``."""
        p = np.arange(len(self.patterns))
        return int(self.patterns[(p & mask) == mask].sum())


class Coincidences(_Streaming):
    """Software coincidence windows with the core's semantics, over the tags of ``channels``.

    Exactly :func:`heraldry.model.coincidence_windows` applied to the tags of the selected
    channels (others are ignored): a window opens at the first tag when none is open (``t0``),
    tags with ``t0 <= t < t0 + window_ps`` join it, a tag at ``t >= t0 + window_ps`` opens the
    next; the pattern is the bitmask of channels in it. Unlike the hardware, ``window_ps`` is
    not limited to ``2**WINDOW_BITS - 1`` bins. ``groups``: channel masks whose windows to count
    (pattern contains the mask). ``keep_windows``: also keep every window's ``t0`` and pattern.
    ``Coincidences(source, channels, window_ps=None, ...)``: bound to a run, whose window
    (``source.window_ps``) is the default.
    """

    def __init__(self, *args, window_ps=None, groups=(), keep_windows=False):
        super().__init__()
        source = args[0] if args and _is_source(args[0]) else None
        rest = args[1:] if source is not None else args
        if not 1 <= len(rest) <= 2 or (len(rest) == 2 and window_ps is not None):
            raise TypeError("expected ([source,] channels, window_ps)")
        channels = rest[0]
        if len(rest) == 2:
            window_ps = rest[1]
        if window_ps is None:
            if source is None:
                raise TypeError("window_ps is needed without a source")
            window_ps = source.window_ps
        self.channels = sorted(set(int(c) for c in channels))
        if not self.channels:
            raise ValueError("select at least one channel")
        if window_ps < 1:
            raise ValueError(f"window must be at least 1, not {window_ps}")
        self.window = int(window_ps)
        self.mask = sum(1 << c for c in self.channels)
        self.groups = [int(g) for g in groups]
        for g in self.groups:
            if g <= 0 or g & ~self.mask:
                raise ValueError(f"group mask {g:#b} is not within channels {self.channels}")
        self.keep_windows = keep_windows
        self._state = np.zeros(3, np.int64)
        self._patterns = np.zeros(1 << MAX_CHANNELS, np.int64)
        self._t0, self._pattern = [], []
        self._bind(source)

    def _feed(self, times, chans):
        keep = (self.mask >> chans) & 1 == 1
        times, chans = times[keep], chans[keep]
        if not times.size:
            return
        out_t0 = np.empty(times.size, np.int64)
        out_pattern = np.empty(times.size, np.int64)
        n = _windows_kernel(times, np.left_shift(1, chans), self.window, self._state,
                            out_t0, out_pattern)
        self._patterns += np.bincount(out_pattern[:n], minlength=len(self._patterns))
        if self.keep_windows:
            self._t0.append(out_t0[:n].copy())
            self._pattern.append(out_pattern[:n].copy())

    def result(self):
        patterns = self._patterns.copy()
        t0 = np.concatenate(self._t0 + [np.zeros(0, np.int64)])
        pattern = np.concatenate(self._pattern + [np.zeros(0, np.int64)])
        if self._state[0]:
            patterns[self._state[2]] += 1
            if self.keep_windows:
                t0 = np.append(t0, self._state[1])
                pattern = np.append(pattern, self._state[2])
        counts = CoincidenceCounts(int(patterns.sum()), patterns, {}, t0, pattern)
        counts.groups = {g: counts.containing(g) for g in self.groups}
        return counts


# --- pair correlation -------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _correlate_kernel(starts, stops, lo, hi, width, counts):
    """counts[k] += #{(i, j): lo + k*width <= stops[j] - starts[i] < lo + (k+1)*width, dt < hi}
    for sorted starts and stops: one pass, O(len(starts) + len(stops) + pairs)."""
    n = len(stops)
    j0 = 0
    for i in range(len(starts)):
        a = starts[i] + lo
        while j0 < n and stops[j0] < a:
            j0 += 1
        b = starts[i] + hi
        j = j0
        while j < n and stops[j] < b:
            counts[(stops[j] - a) // width] += 1
            j += 1


def correlate(starts, stops, bin_ps, lo_ps, hi_ps):
    """Multi-start multi-stop histogram of ``stops[j] - starts[i]`` over ``[lo_ps, hi_ps)`` in
    bins of ``bin_ps`` (``hi_ps - lo_ps`` a multiple of ``bin_ps``); both inputs sorted
    integers. Bin ``k`` counts pairs with ``lo + k*bin <= dt < lo + (k+1)*bin``: the counts of
    ``pycorrelate.pcorrelate(starts, stops, edges) * bin`` with the same edges."""
    counts = np.zeros(_bins(bin_ps, lo_ps, hi_ps), np.int64)
    _correlate_kernel(np.ascontiguousarray(starts, np.int64),
                      np.ascontiguousarray(stops, np.int64), int(lo_ps), int(hi_ps), int(bin_ps),
                      counts)
    return counts


def _bins(bin_ps, lo, hi):
    if bin_ps < 1 or hi <= lo or (hi - lo) % bin_ps:
        raise ValueError(f"the range [{lo}, {hi}) must be a positive whole number of bins of "
                         f"{bin_ps}")
    return (hi - lo) // bin_ps


class _PairCounter(_Streaming):
    """Streaming :func:`correlate` of channel ``a`` (starts) against ``b`` (stops).

    Keeps the starts and stops that can still pair with a later tag (within the range of the
    latest tag); each feed counts new starts against all kept-and-new stops and kept starts
    against new stops, so every pair is counted exactly once whatever the block boundaries.
    """

    def __init__(self, a, b, bin_ps, lo_ps, hi_ps):
        super().__init__()
        if a == b:
            raise ValueError("the two channels must differ")
        self.a, self.b = int(a), int(b)
        self.bin, self.lo, self.hi = int(bin_ps), int(lo_ps), int(hi_ps)
        self.counts = np.zeros(_bins(self.bin, self.lo, self.hi), np.int64)
        self.n_a = self.n_b = 0
        self._starts = np.zeros(0, np.int64)
        self._stops = np.zeros(0, np.int64)

    def _feed(self, times, chans):
        new_starts, new_stops = times[chans == self.a], times[chans == self.b]
        self.n_a += new_starts.size
        self.n_b += new_stops.size
        stops = np.concatenate((self._stops, new_stops))
        _correlate_kernel(new_starts, stops, self.lo, self.hi, self.bin, self.counts)
        _correlate_kernel(self._starts, new_stops, self.lo, self.hi, self.bin, self.counts)
        horizon = times[-1]
        # Later tags are >= horizon: a start pairs with them only if t > horizon - hi, a stop
        # only if t >= horizon + lo.
        starts = np.concatenate((self._starts, new_starts))
        self._starts = starts[starts > horizon - self.hi]
        self._stops = stops[stops >= horizon + self.lo]


@dataclass
class CorrelationResult:
    edges_ps: np.ndarray    #: bin edges, len(counts) + 1
    counts: np.ndarray      #: pairs per bin
    n1: int                 #: tags of the start channel
    n2: int                 #: tags of the stop channel
    duration_ps: float
    g2: np.ndarray          #: counts / (n1 * n2 * bin / duration)


class Correlation(_Bound):
    """Cross-correlation (g2) histogram of two channels, multi-start multi-stop:
    ``Correlation([source,] channel1, channel2, *, bin_ps, range_ps)``.

    ``counts[k] = #{(i, j): -T + k*b <= t2[j] - t1[i] < -T + (k+1)*b}`` over ``[-T, T)``
    (``T = range_ps``, ``b = bin_ps``, ``2T`` a multiple of ``b``), t1 the tags of ``channel1``,
    t2 of ``channel2``. ``g2 = counts / (N1 * N2 * b / T_acq)``: 1 for uncorrelated Poisson
    streams.
    """

    def __init__(self, *args, bin_ps, range_ps):
        source, (channel1, channel2) = _split_source(args, ["channel1", "channel2"])
        self._pairs = _PairCounter(channel1, channel2, bin_ps, -int(range_ps), int(range_ps))
        self._bind(source)

    def feed(self, block, channels=None):
        self._pairs.feed(block, channels)
        return self

    def result(self, duration_ps=None):
        p = self._pairs
        duration = p._duration(self._source_duration(duration_ps))
        edges = p.lo + p.bin * np.arange(len(p.counts) + 1)
        expected = p.n_a * p.n_b * p.bin / duration if duration > 0 else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            g2 = p.counts / expected if expected else p.counts * np.nan
        return CorrelationResult(edges, p.counts.copy(), p.n_a, p.n_b, duration, g2)


@dataclass
class StartStopResult:
    edges_ps: np.ndarray
    counts: np.ndarray      #: starts per bin of (first stop - start)
    starts: int
    unmatched: int          #: starts whose first stop is T or later (or has not come)


class StartStop(_Streaming):
    """Start-stop histogram: for each tag of ``start`` at t1, the first tag of ``stop`` at
    ``t2 >= t1``; ``counts[k] = #{starts: k*b <= t2 - t1 < (k+1)*b}`` over ``[0, T)``
    (``T = range_ps`` a multiple of ``b = bin_ps``). Several starts may share one stop."""

    def __init__(self, start, stop, *, bin_ps, range_ps):
        super().__init__()
        if start == stop:
            raise ValueError("the two channels must differ")
        self.start, self.stop = int(start), int(stop)
        self.bin, self.range = int(bin_ps), int(range_ps)
        self.counts = np.zeros(_bins(self.bin, 0, self.range), np.int64)
        self.n_start = 0
        self.unmatched = 0
        self._pending = np.zeros(0, np.int64)   # starts later than every stop so far
        self._last_stop = None

    def _feed(self, times, chans):
        new_starts, stops = times[chans == self.start], times[chans == self.stop]
        self.n_start += new_starts.size
        starts = np.concatenate((self._pending, new_starts))
        if self._last_stop is not None:
            # A start at the previous block's last time may pair with a stop at that time.
            stops = np.concatenate(([self._last_stop], stops))
        j = np.searchsorted(stops, starts, side="left")
        matched = j < stops.size
        dt = stops[j[matched]] - starts[matched]
        inside = dt < self.range
        np.add.at(self.counts, dt[inside] // self.bin, 1)
        self.unmatched += int((~inside).sum())
        pending = starts[~matched]
        # Later stops are >= the latest tag: a start that far back can only be unmatched.
        stale = pending <= times[-1] - self.range
        self.unmatched += int(stale.sum())
        self._pending = pending[~stale]
        if stops.size:
            self._last_stop = int(stops[-1])

    def result(self):
        edges = self.bin * np.arange(len(self.counts) + 1)
        return StartStopResult(edges, self.counts.copy(), self.n_start,
                               self.unmatched + self._pending.size)


# --- sliding-window coincidences, CAR, heralding ----------------------------------------------

def _window_width(window_ps, resolution_ps):
    """Length of the delays ``|dt| <= W`` covers for times that are multiples of the
    resolution q: ``(2 * floor(W / q) + 1) * q``."""
    return (2 * (int(window_ps) // int(resolution_ps)) + 1) * int(resolution_ps)


class SlidingCoincidences:
    """Pairs within ``+-window_ps``: ``C = #{(i, j): |t_b[j] - t_a[i] - offset_ps| <= W}``."""

    def __init__(self, a, b, window_ps, *, offset_ps=0):
        w, d = int(window_ps), int(offset_ps)
        if w < 0:
            raise ValueError(f"window must be >= 0, not {w}")
        self._pairs = _PairCounter(a, b, 2 * w + 1, d - w, d + w + 1)

    def feed(self, block, channels=None):
        self._pairs.feed(block, channels)
        return self

    @property
    def n_a(self):
        return self._pairs.n_a

    @property
    def n_b(self):
        return self._pairs.n_b

    def result(self):
        return int(self._pairs.counts[0])


@dataclass
class CARResult:
    coincidences: int       #: C: pairs with |dt - delay| <= W
    accidentals_offset: int     #: pairs with |dt - delay - offset| <= W
    accidentals_singles: float  #: N_a * N_b * width / T_acq
    car: float              #: C / accidentals (of ``method``)
    car_net: float          #: (C - accidentals) / accidentals
    method: str             #: "offset" or "singles"
    offset_ps: int
    width_ps: int
    duration_ps: float


class CoincidenceToAccidental:
    """Coincidence-to-accidental ratio of channels ``a`` and ``b``.

    ``C`` = pairs with ``|t_b - t_a - delay_ps| <= W``. Accidentals, two estimates:
    ``A_offset`` = the same count in a window shifted by ``offset_ps`` (default ``10 *
    width``, away from any correlation), and ``A_singles = N_a * N_b * width / T_acq`` with
    ``width = (2 floor(W/q) + 1) q`` the delays the window covers for times quantised to
    ``resolution_ps = q`` (e.g. one bin). ``car = C / A`` and ``car_net = (C - A) / A`` with the
    estimate chosen by ``method``.
    """

    def __init__(self, a, b, window_ps, *, delay_ps=0, offset_ps=None, method="offset",
                 resolution_ps=1):
        if method not in ("offset", "singles"):
            raise ValueError(f"method must be 'offset' or 'singles', not {method!r}")
        self.width = _window_width(window_ps, resolution_ps)
        self.offset = int(offset_ps) if offset_ps is not None else 10 * self.width
        self.method = method
        self._c = SlidingCoincidences(a, b, window_ps, offset_ps=delay_ps)
        self._acc = SlidingCoincidences(a, b, window_ps, offset_ps=int(delay_ps) + self.offset)

    def feed(self, block, channels=None):
        self._c.feed(block, channels)
        self._acc.feed(block, channels)
        return self

    def result(self, duration_ps=None):
        duration = self._c._pairs._duration(duration_ps)
        c, a_off = self._c.result(), self._acc.result()
        a_sing = self._c.n_a * self._c.n_b * self.width / duration if duration > 0 else np.nan
        acc = a_off if self.method == "offset" else a_sing
        with np.errstate(divide="ignore", invalid="ignore"):
            car = np.float64(c) / acc
            net = (np.float64(c) - acc) / acc
        return CARResult(c, a_off, float(a_sing), float(car), float(net), self.method,
                         self.offset, self.width, duration)


@dataclass
class KlyshkoResult:
    heralds: int            #: N_h
    coincidences: int       #: N_c: pairs herald-signal within the window
    accidentals: int        #: the same count in the offset window
    efficiency_raw: float   #: N_c / N_h
    efficiency: float       #: (N_c - accidentals) / (N_h - herald_dark_counts)


class KlyshkoEfficiency:
    """Klyshko heralding efficiency of ``signal`` heralded by ``herald``.

    ``eta_raw = N_c / N_h`` with ``N_c`` the pairs with ``|t_s - t_h - delay_ps| <= W`` and
    ``N_h`` the herald tags; corrected ``eta = (N_c - N_acc) / (N_h - D_h)`` with ``N_acc`` the
    same pair count shifted by ``offset_ps`` (default 10 window widths) and ``D_h`` the herald
    channel's dark counts (``herald_dark_counts``, default 0).
    """

    def __init__(self, herald, signal, window_ps, *, delay_ps=0, offset_ps=None,
                 herald_dark_counts=0):
        self._car = CoincidenceToAccidental(herald, signal, window_ps, delay_ps=delay_ps,
                                            offset_ps=offset_ps)
        self.dark = herald_dark_counts

    def feed(self, block, channels=None):
        self._car.feed(block, channels)
        return self

    def result(self):
        c, acc = self._car._c.result(), self._car._acc.result()
        n_h = self._car._c.n_a
        with np.errstate(divide="ignore", invalid="ignore"):
            raw = np.float64(c) / n_h
            eta = (np.float64(c) - acc) / (n_h - self.dark)
        return KlyshkoResult(n_h, c, acc, float(raw), float(eta))


@dataclass
class HeraldedG2Result:
    n_h: int                #: windows with the herald
    n_h1: int               #: windows with herald and signal 1
    n_h2: int               #: windows with herald and signal 2
    n_h12: int              #: windows with all three
    g2: float               #: n_h * n_h12 / (n_h1 * n_h2)


class HeraldedG2:
    """Heralded g2 of ``signal1``/``signal2`` conditioned on ``herald``, counted in coincidence
    windows with the core's semantics over those three channels (:class:`Coincidences`):
    ``g2_h = N_h * N_h12 / (N_h1 * N_h2)``, ``N_x`` = windows whose pattern contains x. Align
    the channels first (delays), and choose ``window_ps`` to cover the herald-signal jitter.
    """

    def __init__(self, herald, signal1, signal2, window_ps):
        if len({herald, signal1, signal2}) != 3:
            raise ValueError("herald and signal channels must be three different channels")
        h, s1, s2 = 1 << herald, 1 << signal1, 1 << signal2
        self._masks = (h, h | s1, h | s2, h | s1 | s2)
        self._c = Coincidences((herald, signal1, signal2), window_ps, groups=self._masks)

    def feed(self, block, channels=None):
        self._c.feed(block, channels)
        return self

    def result(self):
        groups = self._c.result().groups
        n_h, n_h1, n_h2, n_h12 = (groups[m] for m in self._masks)
        with np.errstate(divide="ignore", invalid="ignore"):
            g2 = np.float64(n_h) * n_h12 / (np.float64(n_h1) * n_h2)
        return HeraldedG2Result(n_h, n_h1, n_h2, n_h12, float(g2))


@dataclass
class HeraldRateResult:
    mask: int               #: the rule's channel mask
    heralds: int            #: windows whose pattern contains the mask
    duration_ps: float
    rate_hz: float          #: heralds / T_acq


class HeraldRate(_Bound):
    """How often a herald rule fires, counted from the tags with the core's semantics:
    ``HeraldRate([source,] mask, *, window_ps=None, channels=None)``.

    A rule fires at most once per coincidence window, when the window's pattern comes to
    contain ``mask`` (:func:`heraldry.model.herald_records`); windows are the core's over the
    tags of ``channels`` (default: every channel of the source's board), so on a lossless run
    ``heralds`` equals the board's herald counter of a rule with this mask. ``window_ps``
    defaults to the source's window. ``rate_hz = heralds / T_acq``. On a recording without
    herald records (another vendor's file) this is the herald rate the core would have given.
    """

    def __init__(self, *args, window_ps=None, channels=None):
        source, (mask,) = _split_source(args, ["mask"])
        if isinstance(mask, str):
            mask = int(mask, 0)
        if channels is None:
            if source is None:
                raise TypeError("channels are needed without a source")
            channels = range(source.tagger.channels)
        if window_ps is None:
            if source is None:
                raise TypeError("window_ps is needed without a source")
            window_ps = source.window_ps
        self.mask = int(mask)
        self._c = Coincidences(channels, window_ps, groups=(self.mask,))
        self._bind(source)

    def feed(self, block, channels=None):
        self._c.feed(block, channels)
        return self

    def result(self, duration_ps=None):
        duration = self._c._duration(self._source_duration(duration_ps))
        heralds = self._c.result().groups[self.mask]
        rate = heralds / (duration * 1e-12) if duration > 0 else float("nan")
        return HeraldRateResult(self.mask, heralds, duration, rate)


#: Swabian-style name of :class:`CountRates`.
Counter = CountRates


# --- delay calibration ------------------------------------------------------------------------

@dataclass
class ChannelDelay:
    channel: int
    delay_ps: float         #: t_channel - t_reference at the correlation peak (None: no peak)
    peak_counts: int
    background: float       #: median counts per bin
    found: bool


class DelayCalibration:
    """Each channel's delay relative to ``reference`` from its correlation peak.

    One :class:`Correlation` (reference as start) per channel over ``[-range_ps, range_ps)`` in
    bins of ``bin_ps``. The delay is the background-subtracted centroid of the highest bin and
    its two neighbours, each bin at its first delay plus ``(bin_ps - resolution_ps) / 2`` (the
    mean delay inside it for times quantised to ``resolution_ps``); a neighbour counts only if it
    too exceeds the background by the threshold below. A peak is *found* when the highest bin
    holds at least ``min_counts`` and exceeds the median bin by 5 sigma (``5 * sqrt(median +
    1)``); otherwise ``delay_ps`` is None.
    """

    def __init__(self, reference, channels, *, bin_ps, range_ps, resolution_ps=1, min_counts=10):
        self.reference = int(reference)
        self.channels = [int(c) for c in channels if int(c) != self.reference]
        self.resolution = int(resolution_ps)
        self.min_counts = min_counts
        self._corr = {c: Correlation(self.reference, c, bin_ps=bin_ps, range_ps=range_ps)
                      for c in self.channels}

    def feed(self, block, channels=None):
        times, chans = tags_of(block, channels)
        for corr in self._corr.values():
            corr.feed(times, chans)
        return self

    def result(self):
        out = {}
        for c, corr in self._corr.items():
            r = corr.result()
            counts = r.counts
            k = int(np.argmax(counts))
            peak = int(counts[k])
            background = float(np.median(counts))
            threshold = 5 * np.sqrt(background + 1)
            found = bool(peak >= self.min_counts and peak - background > threshold)
            delay = None
            if found:
                lo, hi = max(0, k - 1), min(len(counts), k + 2)
                # only significant neighbours: a lone accidental must not pull a sharp peak
                excess = counts[lo:hi] - background
                weight = np.where(excess > threshold, excess, 0)
                width = r.edges_ps[1] - r.edges_ps[0]
                centre = r.edges_ps[lo:hi] + (width - self.resolution) / 2
                delay = float((weight * centre).sum() / weight.sum())
            out[c] = ChannelDelay(c, delay, peak, background, found)
        return out


def delays_to_apply(measured, reference):
    """Non-negative input delays that align every channel with a found peak to ``reference``.

    ``measured``: ``{channel: ChannelDelay}`` from :meth:`DelayCalibration.result`. A channel
    whose tags come ``d`` after the reference's needs ``d`` less delay: ``apply[c] = D - d_c``
    with ``d_ref = 0`` and ``D = max(d)``, so the smallest applied delay is 0.
    """
    d = {reference: 0.0}
    d.update({c: m.delay_ps for c, m in measured.items() if m.found})
    top = max(d.values())
    return {c: top - v for c, v in sorted(d.items())}
