"""Two-node time: offset search, offset and frequency tracking, and coincidences across boards.

Two boards with their own crystals see the two photons of the same pairs. Nothing but those
pairs ties their time bases together; this module finds and follows the relation

    ``b = a + offset(a)``,  ``offset(a) = offset_s + ppm * 1e-6 * (a - t_ref_s)``

between a pair's board-1 time ``a`` and board-2 time ``b`` (both the boards' *local* times in
seconds), and merges the two streams into board 1's time base so the reference model's window
semantics (:mod:`heraldry.model`) apply across the boards. docs/sync.md explains the method,
its figures and its limits. Plain numpy; ``import heraldry`` does not load it.

* :func:`find_offset`: acquisition over a wide range (default +-200 us, +-100 ppm) by FFT
  cross-correlation of binned streams in short chunks, summed along every frequency hypothesis,
  then refined on exact pair differences with smaller bins and a least-squares fit.
* :class:`Tracker`: fed block by block; a type-2 loop (proportional-integral on the mean
  residual of the pairs matched in a tracking window) follows offset and frequency; lock state
  ``searching`` / ``locked`` / ``lost``.
* :func:`link`: both, then the merge and the reference model's coincidences (and heralds).
"""

import bisect
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SEARCHING", "LOCKED", "LOST", "SyncError", "Fit", "find_offset", "Segment",
           "Tracker", "LinkResult", "link", "LiveLink", "window_misses", "ReferenceScale",
           "rescale", "LiveReference"]

SEARCHING, LOCKED, LOST = "searching", "locked", "lost"

#: Smallest peak significance (standard deviations of the summed correlation above its mean)
#: that :func:`find_offset` accepts.
MIN_SIGNIFICANCE = 8.0


class SyncError(ValueError):
    """No correlation peak where one was looked for (too few pairs, wrong range), or unusable
    input. A ``ValueError``: the message is one line for the user."""


@dataclass(frozen=True)
class Fit:
    """Relation of board 2's time to board 1's: ``b = a + offset_at(a)``, ``offset_at(a) =
    offset_s + 1e-6 * (ppm * (a - t_ref_s) + drift_ppm_per_s * (a - t_ref_s)**2 / 2)``.

    ``jitter_s``: standard deviation of the matched pairs' residuals; ``pairs``: pairs in the
    fit; ``significance``: the coarse peak's height in standard deviations (0 when not
    searched)."""
    offset_s: float
    ppm: float
    t_ref_s: float
    jitter_s: float = 0.0
    pairs: int = 0
    significance: float = 0.0
    drift_ppm_per_s: float = 0.0

    def offset_at(self, a):
        """Offset (seconds) at board-1 times ``a``."""
        x = np.asarray(a, np.float64) - self.t_ref_s
        return self.offset_s + 1e-6 * x * (self.ppm + 0.5 * self.drift_ppm_per_s * x)

    def ppm_at(self, a):
        """Frequency difference (ppm) at board-1 time ``a``."""
        return self.ppm + self.drift_ppm_per_s * (a - self.t_ref_s)

    def to_a(self, b):
        """Board-2 times ``b`` in board 1's time base (the inverse of the relation)."""
        b = np.asarray(b, np.float64)
        a = b - self.offset_s
        for _ in range(3):      # fixed point: each step gains a factor ppm * 1e-6
            a = b - self.offset_at(a)
        return a


def _sorted_seconds(values, name):
    array = np.asarray(values, np.float64)
    if array.ndim != 1:
        raise SyncError(f"{name} must be a 1-D array of times, not shape {array.shape}")
    if array.size and (not np.all(np.isfinite(array)) or np.any(np.diff(array) < 0)):
        raise SyncError(f"{name} must be finite times sorted in time")
    return array


def _coarse(a, b, t0, span, bin_s, max_offset_s, max_ppm):
    """FFT stage: correlation of ``a`` (in ``[t0, t0+span)``) and ``b`` in chunks short enough
    that ``max_ppm`` smears a chunk's peak by at most one bin, summed over the chunks along each
    frequency hypothesis (grid step: half a bin over the span). Returns (offset, rho, z)."""
    rho_max = max_ppm * 1e-6
    chunk = min(span, bin_s / max(rho_max, 1e-12))
    n_chunks = max(1, int(span // chunk))
    chunk = span / n_chunks
    t_ref = t0 + span / 2
    lag0 = int(np.ceil(max_offset_s / bin_s))
    shift_max = int(np.ceil(rho_max * span / 2 / bin_s)) + 1
    lag_max = lag0 + shift_max
    chunk_bins = int(np.ceil(chunk / bin_s))
    nfft = 1 << int(np.ceil(np.log2(chunk_bins + 3 * lag_max + 2)))
    corr = np.zeros((n_chunks, 2 * lag_max + 1))
    centres = t0 + (np.arange(n_chunks) + 0.5) * chunk
    for k in range(n_chunks):
        start = t0 + k * chunk
        origin = start - lag_max * bin_s
        ia = slice(*np.searchsorted(a, [start, start + chunk]))
        ib = slice(*np.searchsorted(b, [origin, start + chunk + lag_max * bin_s]))
        ha = np.bincount(((a[ia] - origin) / bin_s).astype(np.int64), minlength=nfft)[:nfft]
        hb = np.bincount(((b[ib] - origin) / bin_s).astype(np.int64), minlength=nfft)[:nfft]
        c = np.fft.irfft(np.conj(np.fft.rfft(ha)) * np.fft.rfft(hb), nfft)
        corr[k] = np.concatenate((c[nfft - lag_max:], c[:lag_max + 1]))
    step = bin_s / (2 * span)
    rhos = np.arange(-rho_max, rho_max + step / 2, step) if rho_max > 0 else np.zeros(1)
    lags = np.arange(-lag0, lag0 + 1)
    summed = np.zeros((len(rhos), len(lags)))
    rows = np.arange(n_chunks)[:, None]
    for j, rho in enumerate(rhos):
        shifts = np.rint(rho * (centres - t_ref) / bin_s).astype(np.int64)
        summed[j] = corr[rows, lag_max + lags[None, :] + shifts[:, None]].sum(axis=0)
    j, l = np.unravel_index(np.argmax(summed), summed.shape)
    sd = summed.std()
    z = (summed[j, l] - summed.mean()) / sd if sd > 0 else 0.0
    return lags[l] * bin_s, rhos[j], float(z), step


def _differences(a, b, fit, half_s):
    """Pairs (a_i, b_j - offset(a_i)) with ``|b_j - a_i - offset(a_i)| <= half_s``."""
    centre = a + fit.offset_at(a)
    lo = np.searchsorted(b, centre - half_s, "left")
    hi = np.searchsorted(b, centre + half_s, "right")
    counts = hi - lo
    if counts.sum() == 0:
        return np.zeros(0), np.zeros(0)
    owner = np.repeat(np.arange(len(a)), counts)
    idx = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + lo[owner]
    return a[owner], b[idx] - centre[owner]


def _fine(a, b, fit, bin_s, half_lag_s, half_rho):
    """Difference-histogram stage around ``fit``: the best (offset, rho) cell."""
    t, d = _differences(a, b, fit, half_lag_s + half_rho * (a[-1] - a[0]))
    if len(d) == 0:
        return fit
    step = bin_s / (2 * max(a[-1] - a[0], bin_s))
    rhos = np.arange(-half_rho, half_rho + step / 2, step)
    n_lag = int(np.ceil(half_lag_s / bin_s))
    best = (-1, 0.0, 0.0)
    for rho in rhos:
        idx = np.floor((d - rho * (t - fit.t_ref_s)) / bin_s).astype(np.int64) + n_lag
        ok = (idx >= 0) & (idx < 2 * n_lag)
        h = np.bincount(idx[ok], minlength=2 * n_lag)
        k = int(np.argmax(h))
        if h[k] > best[0]:
            best = (h[k], (k - n_lag + 0.5) * bin_s, rho)
    return Fit(fit.offset_s + best[1], fit.ppm + best[2] * 1e6, fit.t_ref_s,
               significance=fit.significance)


def _least_squares(a, b, fit, half_s):
    """Refit offset, frequency and its drift (a quadratic in time) on the pairs within
    ``half_s`` of ``fit``, trimming at 3 sigma."""
    t, d = _differences(a, b, fit, half_s)
    if len(d) < 4 or np.ptp(t) <= 0:
        return fit, t, d
    keep = np.ones(len(d), bool)
    x = t - fit.t_ref_s
    for _ in range(3):
        curve, slope, intercept = np.polyfit(x[keep], d[keep], 2)
        resid = d - np.polyval((curve, slope, intercept), x)
        sigma = max(resid[keep].std(), 1e-15)
        keep = np.abs(resid) <= max(3 * sigma, 1e-12)
    return (Fit(fit.offset_s + intercept, fit.ppm + slope * 1e6, fit.t_ref_s,
                jitter_s=float(resid[keep].std()), pairs=int(keep.sum()),
                significance=fit.significance,
                drift_ppm_per_s=fit.drift_ppm_per_s + 2 * curve * 1e6), t[keep], resid[keep])


def find_offset(a, b, *, max_offset_s=200e-6, max_ppm=100.0, start_s=None, span_s=0.5,
                bins_s=(2e-6, 64e-9, 4e-9), min_significance=MIN_SIGNIFICANCE):
    """Find the relation of ``b`` (board 2's tag times) to ``a`` (board 1's) from their common
    photon pairs, over offsets within ``+-max_offset_s`` and frequency differences within
    ``+-max_ppm``.

    Uses ``a`` in ``[start_s, start_s + span_s)`` (default: from the first tag). Stage 1 bins
    both streams in ``bins_s[0]`` and cross-correlates them by FFT in chunks of
    ``bins_s[0] / (max_ppm * 1e-6)`` (20 ms by default; each FFT ``2**14`` points for the
    default range), then sums the chunks' correlations along every frequency hypothesis (step:
    half a bin over the span). Each further bin refines around the last estimate on the exact
    pair differences (no FFT); a least-squares fit on the pairs within a few final bins gives
    the result. Memory: chunks x (2 x lags) floats for stage 1 (25 x 2.3e2 by default), the
    pair differences of the fine stages (about ``len(a) x rate_b x 4 bins`` values).

    Returns a :class:`Fit` with ``t_ref_s`` the middle of the span. Raises :class:`SyncError`
    when the coarse peak is below ``min_significance`` standard deviations or there are no tags.
    """
    a = _sorted_seconds(a, "board 1's times")
    b = _sorted_seconds(b, "board 2's times")
    if not (max_offset_s > 0 and max_ppm >= 0 and span_s > 0 and len(bins_s) >= 1):
        raise SyncError("max_offset_s and span_s must be > 0, max_ppm >= 0, bins_s not empty")
    if len(a) == 0 or len(b) == 0:
        raise SyncError("no tags on one of the boards: nothing to correlate")
    t0 = a[0] if start_s is None else float(start_s)
    span = min(span_s, a[-1] - t0)
    a = a[np.searchsorted(a, t0):np.searchsorted(a, t0 + span)]
    if len(a) < 2 or span <= 0:
        raise SyncError("no tags of board 1 in the span searched")
    offset, rho, z, step = _coarse(a, b, t0, span, bins_s[0], max_offset_s, max_ppm)
    if not z >= min_significance:
        raise SyncError(f"no correlation peak within +-{max_offset_s * 1e6:g} us and "
                        f"+-{max_ppm:g} ppm (best {z:.1f} sigma, {min_significance:g} needed)")
    fit = Fit(offset, rho * 1e6, t0 + span / 2, significance=z)
    previous = bins_s[0]
    for bin_s in bins_s[1:]:
        fit = _fine(a, b, fit, bin_s, 2 * previous, 2 * previous / (2 * span))
        previous = bin_s
    # Least squares within a window that grows to four jitters of the line (a peak much wider
    # than the last bin is cut at first, which underestimates its width).
    half = 2 * previous
    for _ in range(6):
        fit, _, _ = _least_squares(a, b, fit, half)
        if half >= 4 * fit.jitter_s:
            break
        half = 4 * fit.jitter_s
    return fit


@dataclass(frozen=True)
class Segment:
    """A stretch of board-1 time ``[start_s, end_s)`` processed by the :class:`Tracker`.

    ``state``: lock state after it; ``fit``: the relation valid in it (``None`` while
    searching or lost: its tags are not merged); ``matched``: pairs matched in the tracking
    window; ``jitter_s``: their residuals' standard deviation."""
    start_s: float
    end_s: float
    state: str
    fit: Fit = None
    matched: int = 0
    jitter_s: float = 0.0


class Tracker:
    """Follows offset and frequency between two boards, fed block by block.

    Parameters:
        block_s: board-1 time processed per loop update (default 10 ms).
        window_s: half-width of the tracking window around the predicted offset (default
            ``max(10 ns, 5 x the acquisition's residual jitter)`` once locked).
        acquire_s: data collected for an acquisition (also after a loss) by
            :func:`find_offset` (default 0.5 s).
        loss_fraction: lock is lost when two blocks in a row match fewer than this fraction
            (default 0.5) of the pairs expected from the rate seen while locked.
        gain_offset, gain_frequency: the loop's proportional and integral gains per block
            (default 0.3 and 0.03: poles at radius 0.84, settling within ~15 blocks).
        track: ``False``: keep the first acquisition's offset and no frequency (what a single
            fixed calibration does; the untracked baseline).
        search: further keywords for :func:`find_offset` (``max_offset_s``, ``max_ppm``,
            ``bins_s``, ``min_significance``).

    Members: ``state``, ``fit`` (latest :class:`Fit`), ``segments`` (every processed
    :class:`Segment`, in order), ``losses`` (times lock was lost, board-1 seconds),
    ``locks`` (times lock was (re)gained: the end of the acquisition span).
    """

    def __init__(self, *, block_s=0.01, window_s=None, acquire_s=0.5, loss_fraction=0.5,
                 gain_offset=0.3, gain_frequency=0.03, track=True, **search):
        if not (block_s > 0 and acquire_s > 0 and 0 < loss_fraction < 1):
            raise SyncError("block_s and acquire_s must be > 0, loss_fraction 0..1")
        self.block_s, self.window_s, self.acquire_s = block_s, window_s, acquire_s
        self.loss_fraction, self.track = loss_fraction, track
        self.gain_offset, self.gain_frequency = gain_offset, gain_frequency
        self.search = search
        self.max_offset_s = search.get("max_offset_s", 200e-6)
        self.state, self.fit = SEARCHING, None
        self.segments, self.losses, self.locks = [], [], []
        self._a = np.zeros(0)
        self._b = np.zeros(0)
        self._at = None             # board-1 time processed up to
        self._rate = 0.0            # matched pairs per second while locked
        self._short = 0             # blocks in a row below loss_fraction
        self._window = None

    def feed(self, a, b, *, final=False):
        """Add the next tags of both boards (seconds, sorted, later than those fed before) and
        process what they cover. ``final``: no more tags come; process the rest. Returns the
        :class:`Segment` s processed by this call."""
        self._a = np.concatenate((self._a, _sorted_seconds(a, "board 1's times")))
        self._b = np.concatenate((self._b, _sorted_seconds(b, "board 2's times")))
        if self._at is None and len(self._a):
            self._at = self._a[0]
        done = []
        while self._at is not None:
            segment = self._step(final)
            if segment is None:
                break
            done.append(segment)
            self.segments.append(segment)
        return done

    def truncate(self, end_s):
        """Forget the buffered board-1 tags at or after ``end_s`` (board-2's stream ended
        earlier: a final block beyond it would look like a lost lock)."""
        self._a = self._a[:np.searchsorted(self._a, end_s)]

    def _covered(self, end, final):
        """Whether both buffers reach past board-1 time ``end`` (with the offset's slack)."""
        if final:
            return len(self._a) and self._at < self._a[-1]
        slack = self.max_offset_s + 1e-3
        return (len(self._a) and self._a[-1] >= end and len(self._b)
                and self._b[-1] >= end + slack)

    def _last(self, end, final):
        """The end of the next block: at the streams' end, just after board 1's last tag (a
        block beyond it would count time without tags)."""
        if final and len(self._a):
            return min(end, float(np.nextafter(self._a[-1], np.inf)))
        return end

    def _drop(self, before):
        self._a = self._a[np.searchsorted(self._a, before):]
        self._b = self._b[np.searchsorted(self._b, before - 2 * self.max_offset_s - 1e-3):]

    def _step(self, final):
        if self.state == LOCKED:
            end = self._last(self._at + self.block_s, final)
            if not self._covered(end, final):
                return None
            return self._track(end)
        end = self._last(self._at + self.acquire_s, final)
        if not self._covered(end, final):
            return None
        a = self._a[:np.searchsorted(self._a, end)]
        start, self._at = self._at, end
        if final and len(a) and a[-1] - start < self.acquire_s / 2:
            # The streams' last stretch is too short for an acquisition to be trusted.
            self._drop(end)
            return Segment(start, end, self.state)
        try:
            fit = find_offset(a, self._b, start_s=start, span_s=end - start, **self.search)
        except SyncError:
            self._drop(end)
            return Segment(start, end, self.state)
        if not self.track:
            fit = Fit(fit.offset_at(start), 0.0, start, fit.jitter_s, fit.pairs,
                      fit.significance)
        # The span is corrected by the fit (with its drift); the loop starts from the fit's
        # value and slope at the span's end.
        self.state = LOCKED
        self.fit = Fit(fit.offset_at(end), fit.ppm_at(end), end, fit.jitter_s, fit.pairs,
                       fit.significance)
        self._offset, self._t = self.fit.offset_s, end
        self._rho, self._residual = self.fit.ppm * 1e-6, 0.0
        self._window = self.window_s or max(10e-9, 5 * fit.jitter_s)
        self._rate = fit.pairs / (end - start)
        self._short = 0
        self.locks.append(end)
        self._drop(end)
        return Segment(start, end, LOCKED, fit, fit.pairs, fit.jitter_s)

    def _track(self, end):
        start, self._at = self._at, end
        a = self._a[:np.searchsorted(self._a, end)]
        fit = self.fit
        if not self.track:
            self._drop(end)
            return Segment(start, end, LOCKED, fit)
        loop = Fit(self._offset, self._rho * 1e6, self._t, fit.jitter_s)
        t, d = _differences(a, self._b, loop, self._window) if len(a) else ((), ())
        t, d = np.asarray(t), np.asarray(d)
        self._drop(end)
        expected = self._rate * (end - start)
        if len(d) < self.loss_fraction * expected:
            self._short += 1
            if self._short >= 2:
                self.state, self.fit = LOST, None
                self.losses.append(start)
                return Segment(start, end, LOST, None, len(d))
        else:
            self._short = 0
        if len(d) == 0:
            return Segment(start, end, LOCKED, fit, 0)
        # Trimmed mean: accidentals in the window are few but not none.
        median = np.median(d)
        sigma = max(fit.jitter_s, 1e-12)
        near = np.abs(d - median) <= 3 * sigma
        residual = d[near].mean() if near.any() else median
        t_mid = t.mean()
        here = self._offset + self._rho * (t_mid - self._t)
        jitter = float(d[near].std()) if near.sum() > 1 else fit.jitter_s
        # Loop state: offset and integrator move by the gains. The integrator alone lags a
        # drifting frequency by gain_offset/gain_frequency blocks' worth of the drift (the
        # proportional term makes up for it): the frequency reported adds that term, on the
        # residual averaged over ~10 blocks.
        self._offset, self._t = here + self.gain_offset * residual, t_mid
        self._rho += self.gain_frequency * residual / self.block_s
        self._residual = 0.9 * self._residual + 0.1 * residual
        ppm = (self._rho + self.gain_offset * self._residual / self.block_s) * 1e6
        # The block's own estimate (a posteriori) corrects its tags.
        seen = Fit(here + residual, ppm, t_mid, jitter, int(near.sum()), fit.significance)
        self.fit = Fit(self._offset, ppm, t_mid, 0.9 * fit.jitter_s + 0.1 * jitter,
                       int(near.sum()), fit.significance)
        if len(d) >= self.loss_fraction * expected:
            self._rate = 0.9 * self._rate + 0.1 * len(d) / (end - start)
        return Segment(start, end, LOCKED, seen, len(d), jitter)


def window_misses(a, b, window_s, *, span_s=None):
    """Estimated fraction of the correlated pairs between ``a`` and ``b`` (same time base,
    seconds) whose difference lies outside ``+-window_s``: the correlation peak's counts outside
    the window over all its counts, accidentals subtracted (their density taken from
    ``span_s/2 < |d| < span_s``, default ``span_s = max(40 window, 2 us)``). ``nan`` without a
    peak."""
    span = span_s or max(40 * window_s, 2e-6)
    t, d = _differences(np.asarray(a, np.float64), np.asarray(b, np.float64),
                        Fit(0.0, 0.0, 0.0), span)
    if len(d) == 0:
        return float("nan")
    density = np.count_nonzero(np.abs(d) > span / 2) / span      # per second of difference
    inside = np.count_nonzero(np.abs(d) < window_s) - density * 2 * window_s
    peak = np.count_nonzero(np.abs(d) <= span / 2) - density * span
    if peak <= 0:
        return float("nan")
    return float(min(1.0, max(0.0, 1.0 - inside / peak)))


@dataclass
class LinkResult:
    """What :func:`link` found.

    Members: ``state`` (lock state at the end), ``fit`` (last relation, ``None`` if never
    locked), ``segments`` (the tracker's), ``losses``, ``locks`` (board-1 seconds),
    ``synced_s`` (board-1 time covered by a relation), ``tags`` (merged stream,
    :data:`heraldry.model.TAG_DTYPE` in ``bin_s`` bins of board 1's time from ``origin_s``;
    board 2's channels after board 1's), ``windows`` (the reference model's coincidence
    windows), ``cross`` (windows holding channels of both boards), ``heralds``, ``misses``
    (:func:`window_misses` on the corrected sync tags), ``bin_s``, ``origin_s``,
    ``channels_a``, ``channels_b``."""
    state: str
    fit: Fit
    segments: list
    losses: list
    locks: list
    synced_s: float
    tags: np.ndarray
    windows: object
    cross: int
    heralds: np.ndarray
    misses: float
    bin_s: float
    origin_s: float
    channels_a: int
    channels_b: int
    extra: dict = field(default_factory=dict)

    @property
    def cross_rate_hz(self):
        """Cross-node coincidence windows per second of synchronised time."""
        return self.cross / self.synced_s if self.synced_s > 0 else 0.0


def _channels(channels, n, name):
    if channels is None:
        return np.zeros(n, np.int64)
    channels = np.asarray(channels, np.int64)
    if channels.shape != (n,):
        raise SyncError(f"{name} must give one channel per tag")
    if n and (channels.min() < 0):
        raise SyncError(f"{name} must be channel numbers >= 0")
    return channels


def link(a, b, *, channels_a=None, channels_b=None, sync_a=None, sync_b=None, window_s=20e-9,
         bin_s=1e-9, rules=(), block_s=0.01, **tracker):
    """Synchronise board 2 to board 1 and find the coincidences across them.

    ``a``, ``b``: each board's tag times (local seconds, sorted); ``channels_a``/``channels_b``:
    their channels (default all 0); ``sync_a``/``sync_b``: channels whose tags carry the pairs
    (default: all). The :class:`Tracker` (keywords ``tracker``) runs on the sync tags in blocks
    of ``block_s``; every tag of a segment with a relation is merged, board 2's through
    :meth:`Fit.to_a`, into ``bin_s`` bins (the reference model's integer time), board 2's
    channel ``c`` becoming ``channels_a + c``. Coincidence windows of ``window_s``
    (``round(window_s / bin_s)`` bins, 1..``MAX_WINDOW``) and the ``rules`` (herald rules or
    channel masks over the merged channels) are the reference model's. Tags of segments
    without a relation are left out. Raises :class:`SyncError` for bad input."""
    from .model import MAX_WINDOW, coincidence_windows, herald_records, tag_stream
    a = _sorted_seconds(a, "board 1's times")
    b = _sorted_seconds(b, "board 2's times")
    ca, cb = _channels(channels_a, len(a), "channels_a"), _channels(channels_b, len(b),
                                                                   "channels_b")
    n_a = int(ca.max()) + 1 if len(ca) else 1
    n_b = int(cb.max()) + 1 if len(cb) else 1
    if n_a + n_b > 8:
        raise SyncError(f"{n_a} + {n_b} channels: the merged stream holds at most 8")
    window = int(round(window_s / bin_s))
    if not 1 <= window <= MAX_WINDOW:
        raise SyncError(f"a {window_s * 1e9:g} ns window is {window} bins of "
                        f"{bin_s * 1e12:g} ps: 1..{MAX_WINDOW} needed")
    ma = np.isin(ca, sync_a) if sync_a is not None else np.ones(len(a), bool)
    mb = np.isin(cb, sync_b) if sync_b is not None else np.ones(len(b), bool)
    sa, sb = a[ma], b[mb]
    tr = Tracker(block_s=block_s, **tracker)
    # Feed in blocks, as a live source would.
    if len(sa):
        edges = np.arange(sa[0], sa[-1] + block_s, block_s)
        ia = np.searchsorted(sa, edges)
        ib = np.searchsorted(sb, edges)
        for k in range(len(edges) - 1):
            tr.feed(sa[ia[k]:ia[k + 1]], sb[ib[k]:ib[k + 1]])
        tr.feed(sa[ia[-1]:], sb[ib[-1]:], final=True)
    origin = a[0] if len(a) else 0.0
    parts_a, parts_b, chans_a, chans_b, corr_a, corr_b = [], [], [], [], [], []
    synced, j_done = 0.0, 0
    for seg in tr.segments:
        if seg.fit is None:
            continue
        synced += seg.end_s - seg.start_s
        i = slice(*np.searchsorted(a, [seg.start_s, seg.end_s]))
        ends = np.array([seg.start_s, seg.end_s])
        lo, hi = np.searchsorted(b, ends + seg.fit.offset_at(ends))
        # Consecutive relations meet within picoseconds: no board-2 tag is taken twice.
        j = slice(max(lo, j_done), max(hi, j_done))
        j_done = j.stop
        parts_a.append(a[i])
        chans_a.append(ca[i])
        parts_b.append(seg.fit.to_a(b[j]))
        chans_b.append(cb[j])
        corr_a.append(a[i][ma[i]])
        corr_b.append(parts_b[-1][mb[j]])
    times_a = np.concatenate(parts_a) if parts_a else np.zeros(0)
    times_b = np.concatenate(parts_b) if parts_b else np.zeros(0)
    ch_a = np.concatenate(chans_a) if chans_a else np.zeros(0, np.int64)
    ch_b = np.concatenate(chans_b) if chans_b else np.zeros(0, np.int64)
    tpc = []
    for c in range(n_a):
        tpc.append(np.floor((times_a[ch_a == c] - origin) / bin_s).astype(np.int64))
    for c in range(n_b):
        tpc.append(np.sort(np.floor((times_b[ch_b == c] - origin) / bin_s).astype(np.int64)))
    windows = coincidence_windows(tpc, window)
    both = ((windows.pattern & ((1 << n_a) - 1)) != 0) & ((windows.pattern >> n_a) != 0)
    heralds = herald_records(tpc, window, rules) if rules else np.zeros(0)
    ra = np.concatenate(corr_a) if corr_a else np.zeros(0)
    rb = np.sort(np.concatenate(corr_b)) if corr_b else np.zeros(0)
    misses = window_misses(ra, rb, window_s) if len(ra) and len(rb) else float("nan")
    return LinkResult(state=tr.state, fit=tr.fit or next(
        (s.fit for s in reversed(tr.segments) if s.fit is not None), None),
        segments=tr.segments, losses=tr.losses, locks=tr.locks, synced_s=synced,
        tags=tag_stream(tpc), windows=windows, cross=int(both.sum()), heralds=heralds,
        misses=misses, bin_s=bin_s, origin_s=origin, channels_a=n_a, channels_b=n_b)


class LiveLink:
    """Coincidences across two boards as their tags come: the :class:`Tracker` fed block by
    block and every segment it finishes merged into board 1's time and put through the reference
    model's windows at once (the live form of :func:`link`, with the same result).

    Parameters: as :func:`link` (``channels_a``/``channels_b``: how many channels each board
    has; ``sync_a``/``sync_b``: channels that carry the pairs, default all; ``window_s``,
    ``bin_s``, ``rules``, ``block_s``, tracker keywords), plus ``origin_s`` (board-1 time of
    merged bin 0, default the first tag fed), ``keep`` (keep the merged tags and windows for
    :meth:`result`; counts only otherwise, so a long run holds no more than a few blocks) and
    ``misses_span_s`` (the window-miss estimate runs on the corrected pairs of the latest
    ``misses_span_s`` of board-1 time, default 1 s).

    :meth:`feed` takes the next tags of either board or both (times in each board's local
    seconds, sorted, later than those fed before; channels). Windows are exact: one that may
    still gain a tag (it closes after the end of the last finished segment) waits for the next
    segment, so counting in pieces gives the windows of the whole stream.

    Members (live): ``tracker``, ``windows`` (closed windows counted), ``cross`` (those with
    channels of both boards), ``patterns`` (windows per pattern, an array of ``2**(na+nb)``),
    ``heralds`` (firings per rule), ``singles`` (merged tags per merged channel), ``synced_s``,
    ``misses``; :meth:`metrics` gives them with the lock state, offset, ppm and jitter.
    """

    def __init__(self, channels_a=1, channels_b=1, *, sync_a=None, sync_b=None, window_s=20e-9,
                 bin_s=1e-9, rules=(), block_s=0.01, origin_s=None, keep=False,
                 misses_span_s=1.0, **tracker):
        from .model import MAX_WINDOW
        if channels_a < 1 or channels_b < 1 or channels_a + channels_b > 8:
            raise SyncError(f"{channels_a} + {channels_b} channels: each board needs one, the "
                            f"merged stream holds at most 8")
        self.window = int(round(window_s / bin_s))
        if not 1 <= self.window <= MAX_WINDOW:
            raise SyncError(f"a {window_s * 1e9:g} ns window is {self.window} bins of "
                            f"{bin_s * 1e12:g} ps: 1..{MAX_WINDOW} needed")
        self.na, self.nb = int(channels_a), int(channels_b)
        self.sync_a, self.sync_b = sync_a, sync_b
        self.window_s, self.bin_s, self.rules = window_s, bin_s, tuple(rules)
        self.origin_s, self.keep, self.misses_span_s = origin_s, keep, misses_span_s
        self.tracker = Tracker(block_s=block_s, **tracker)
        n = self.na + self.nb
        self.windows, self.cross, self.synced_s = 0, 0, 0.0
        self.patterns = np.zeros(1 << n, np.int64)
        self.heralds = np.zeros(len(self.rules), np.int64)
        self.singles = np.zeros(n, np.int64)
        self._a, self._ca = np.zeros(0), np.zeros(0, np.int64)
        self._b, self._cb = np.zeros(0), np.zeros(0, np.int64)
        self._b_done = -np.inf          # board-2 time merged (or passed) up to
        self._pending = [np.zeros(0, np.int64) for _ in range(n)]
        self._cut = None                # merged bin up to which every tag is in
        self._pairs = []                # (end_s, corrected sync a, corrected sync b)
        self._kept_tags, self._kept_windows, self._kept_heralds = [], [], []
        #: Set by a source that ended the link on a stop signal (the ``KeyboardInterrupt``).
        self.interrupted = None

    def _channels(self, times, channels, n, name):
        times = _sorted_seconds(times, f"board {name}'s times")
        channels = _channels(channels, len(times), f"channels_{name}")
        if len(channels) and channels.max() >= n:
            raise SyncError(f"board {name} has channels 0..{n - 1}, not {channels.max()}")
        return times, channels

    def feed(self, a=(), channels_a=None, b=(), channels_b=None, *, final=False):
        """Add tags of board 1 (``a``, ``channels_a``) and board 2 (``b``, ``channels_b``);
        ``final``: no more come. Returns the :class:`Segment` s finished by this call."""
        a, ca = self._channels(a, channels_a, self.na, "a")
        b, cb = self._channels(b, channels_b, self.nb, "b")
        if self.origin_s is None and len(a):
            self.origin_s = float(a[0])
        self._a, self._ca = np.concatenate((self._a, a)), np.concatenate((self._ca, ca))
        self._b, self._cb = np.concatenate((self._b, b)), np.concatenate((self._cb, cb))
        ma = np.isin(ca, self.sync_a) if self.sync_a is not None else np.ones(len(a), bool)
        mb = np.isin(cb, self.sync_b) if self.sync_b is not None else np.ones(len(b), bool)
        if final and self.tracker.fit is not None and len(self.tracker._b):
            # Process board 1 only as far as board 2 was running.
            end = float(self.tracker.fit.to_a(self.tracker._b[-1]))
            if len(a[ma]) and a[ma][-1] >= end:
                ma = ma & (a < end)
            self.tracker.truncate(end)
        segments = self.tracker.feed(a[ma], b[mb], final=final)
        for seg in segments:
            self._merge(seg)
        if final:
            self._windows(None)
        return segments

    def _merge(self, seg):
        i = np.searchsorted(self._a, seg.end_s)
        a, ca = self._a[:i], self._ca[:i]
        keep_a = a >= seg.start_s
        a, ca = a[keep_a], ca[keep_a]
        self._a, self._ca = self._a[i:], self._ca[i:]
        if seg.fit is None:
            # Board-2 tags this early cannot belong to a later segment.
            j = np.searchsorted(self._b, seg.end_s - self.tracker.max_offset_s - 1e-3)
            self._b, self._cb = self._b[j:], self._cb[j:]
            self._windows(seg.end_s)
            return
        self.synced_s += seg.end_s - seg.start_s
        ends = np.array([seg.start_s, seg.end_s])
        lo, hi = seg.fit.offset_at(ends) + ends
        lo = max(lo, self._b_done)
        j0, j1 = np.searchsorted(self._b, [lo, max(lo, hi)])
        b, cb = seg.fit.to_a(self._b[j0:j1]), self._cb[j0:j1]
        self._b, self._cb = self._b[j1:], self._cb[j1:]
        self._b_done = max(lo, hi)
        for c in range(self.na):
            self._pending[c] = np.concatenate((self._pending[c], self._bins(a[ca == c])))
        for c in range(self.nb):
            self._pending[self.na + c] = np.sort(np.concatenate(
                (self._pending[self.na + c], self._bins(b[cb == c]))))
        sa = a[np.isin(ca, self.sync_a)] if self.sync_a is not None else a
        sb = b[np.isin(cb, self.sync_b)] if self.sync_b is not None else b
        self._pairs.append((seg.end_s, sa, np.sort(sb)))
        while self._pairs and self._pairs[0][0] < seg.end_s - self.misses_span_s:
            self._pairs.pop(0)
        # The last merged bins wait: the next relation may place a board-2 tag a few
        # picoseconds before this segment's end.
        self._windows(seg.end_s - max(self.bin_s, 1e-9))

    @property
    def misses(self):
        """:func:`window_misses` of the corrected sync tags of the latest ``misses_span_s``
        (``nan`` without a peak or before the first lock)."""
        if not self._pairs:
            return float("nan")
        pa = np.concatenate([p[1] for p in self._pairs])
        pb = np.sort(np.concatenate([p[2] for p in self._pairs]))
        return window_misses(pa, pb, self.window_s) if len(pa) and len(pb) else float("nan")

    def _bins(self, times):
        return np.floor((times - self.origin_s) / self.bin_s).astype(np.int64)

    def _windows(self, end_s):
        """Close the windows that can gain no more tags: all whose end is at or before merged
        bin ``end_s`` (every tag before it is in); ``None``: all."""
        from .model import coincidence_windows, herald_records
        pending = self._pending
        if not sum(len(p) for p in pending):
            return
        windows = coincidence_windows(pending, self.window)
        if end_s is None:
            closed = len(windows)
        else:
            cut = int(np.floor((end_s - self.origin_s) / self.bin_s))
            closed = int(np.searchsorted(windows.t0 + self.window, cut, "right"))
        if closed == 0:
            return
        # Every tag before the first open window belongs to a closed one.
        first_open = windows.t0[closed] if closed < len(windows) else None
        taken = [p if first_open is None else p[:np.searchsorted(p, first_open)]
                 for p in pending]
        self._pending = [p[len(t):] for p, t in zip(pending, taken)]
        pattern = windows.pattern[:closed]
        self.windows += closed
        both = ((pattern & ((1 << self.na) - 1)) != 0) & ((pattern >> self.na) != 0)
        self.cross += int(both.sum())
        self.patterns += np.bincount(pattern, minlength=len(self.patterns))
        self.singles += [len(t) for t in taken]
        heralds = herald_records(taken, self.window, self.rules) if self.rules else None
        if heralds is not None:
            self.heralds += np.bincount(heralds["rule"], minlength=len(self.rules))[
                :len(self.rules)]
        if self.keep:
            from .model import tag_stream
            self._kept_tags.append(tag_stream(taken))
            self._kept_windows.append((windows.t0[:closed], pattern))
            if heralds is not None:
                self._kept_heralds.append(heralds)

    @property
    def cross_rate_hz(self):
        """Cross-node coincidence windows per second of synchronised time."""
        return self.cross / self.synced_s if self.synced_s > 0 else 0.0

    def metrics(self):
        """The live figures as a dict: ``state``, ``offset_s``, ``ppm``, ``jitter_s`` (None
        before the first lock), ``losses``, ``locks`` (counts), ``synced_s``, ``windows``,
        ``cross``, ``cross_rate_hz``, ``misses``, ``singles`` and ``singles_hz`` (merged tags
        per merged channel, and over the synchronised time), ``heralds``, ``at_s`` (board-1 time
        processed up to)."""
        tr = self.tracker
        fit = tr.fit
        span = self.synced_s if self.synced_s > 0 else float("nan")
        def number(value):
            return None if value is None else float(value)
        return {
            "state": tr.state, "at_s": number(tr._at),
            "offset_s": number(fit and fit.offset_s), "ppm": number(fit and fit.ppm),
            "jitter_s": number(fit and fit.jitter_s),
            "losses": len(tr.losses), "locks": len(tr.locks), "synced_s": float(self.synced_s),
            "windows": self.windows, "cross": self.cross,
            "cross_rate_hz": float(self.cross_rate_hz), "misses": self.misses,
            "singles": self.singles.tolist(), "singles_hz": (self.singles / span).tolist(),
            "heralds": self.heralds.tolist(),
        }

    def result(self):
        """A :class:`LinkResult` of what was fed (call after ``feed(..., final=True)``; the
        merged tags, windows and heralds need ``keep=True``, else they are empty)."""
        from .model import TAG_DTYPE
        from .model.core import HERALD_DTYPE, Windows
        tr = self.tracker
        tags = np.concatenate(self._kept_tags) if self._kept_tags else np.zeros(0, TAG_DTYPE)
        t0 = np.concatenate([w[0] for w in self._kept_windows]) if self._kept_windows \
            else np.zeros(0, np.int64)
        pattern = np.concatenate([w[1] for w in self._kept_windows]) if self._kept_windows \
            else np.zeros(0, np.int64)
        heralds = np.concatenate(self._kept_heralds) if self._kept_heralds \
            else np.zeros(0, HERALD_DTYPE)
        return LinkResult(state=tr.state, fit=tr.fit or next(
            (s.fit for s in reversed(tr.segments) if s.fit is not None), None),
            segments=tr.segments, losses=tr.losses, locks=tr.locks, synced_s=self.synced_s,
            tags=tags, windows=Windows(t0, pattern), cross=self.cross, heralds=heralds,
            misses=self.misses, bin_s=self.bin_s, origin_s=self.origin_s or 0.0,
            channels_a=self.na, channels_b=self.nb, extra={"metrics": self.metrics()})


# --- reference inputs (software-defined reference clock) -----------------------------------------

@dataclass(frozen=True)
class ReferenceScale:
    """A board's time base measured against its reference markers (made by
    :func:`rescale`).

    Members: ``period_s`` (the reference's nominal period in SI seconds), ``local_period_s``
    (the same period on the board's clock, fitted), ``ppm`` (the board's clock against the
    reference: ``+20``: it counts 20 ppm fast), ``drift_ppm_per_s`` (its change over the
    markers: 0 unless fitted, see :func:`rescale`), ``residual_s`` (rms of the accepted markers
    about the fit), ``markers_s`` (accepted markers, board seconds) with ``index`` (their
    period numbers from the first, gaps where markers were missing), ``missing`` (periods with
    no marker between the first and the last), ``extra`` (markers rejected: not on the
    period's grid). SI time 0 is the first accepted marker."""
    period_s: float
    local_period_s: float
    ppm: float
    residual_s: float
    markers_s: np.ndarray
    index: np.ndarray
    missing: int
    extra: int
    drift_ppm_per_s: float = 0.0

    def to_si(self, local_s):
        """SI seconds (from the first accepted marker) of board times ``local_s``: linear
        between neighbouring markers (so a drifting crystal is followed marker by marker),
        the fitted period beyond the first and the last."""
        t = np.asarray(local_s, np.float64)
        si = np.interp(t, self.markers_s, self.index * self.period_s)
        rate = self.period_s / self.local_period_s
        before, after = t < self.markers_s[0], t > self.markers_s[-1]
        si = np.where(before, (t - self.markers_s[0]) * rate, si)
        return np.where(after, self.index[-1] * self.period_s
                        + (t - self.markers_s[-1]) * rate, si)


def rescale(markers_s, period_s=1.0, *, tolerance_s=None, max_ppm=200.0):
    """Measure a board's clock from the markers of its reference input (PPS: ``period_s`` 1;
    a 10 MHz reference divided by N: ``N * 1e-7``).

    ``markers_s``: the marker times in the board's seconds (sorted). Markers are placed on the
    reference's grid one by one: a marker ``k`` periods after the last accepted one (``k >= 1``,
    more than one when markers are missing) within ``tolerance_s`` (default a thousandth of the
    period, at least 100 ns) of where the grid predicts it is accepted and numbered; any other
    (a glitch, a bounce, a second edge) is counted as ``extra`` and left out. The grid starts
    at the first marker followed by one at a whole number of periods (within ``max_ppm`` and
    the tolerance). A least-squares line through the accepted markers gives the board's
    period and ppm; a quadratic term its drift when there are more than ten markers.

    Returns a :class:`ReferenceScale`. Raises :class:`SyncError` with fewer than two markers on
    the grid."""
    markers = _sorted_seconds(markers_s, "the markers")
    grid = _Grid(period_s, tolerance_s, max_ppm)
    for t in markers.tolist():
        grid.add(t)
    grid.finish()
    return grid.scale()


class _Grid:
    """The reference's grid as markers come (:func:`rescale`'s rules, one marker at a time, so
    that :func:`rescale` and :class:`LiveReference` place every marker alike)."""

    def __init__(self, period_s, tolerance_s, max_ppm):
        if not (period_s > 0 and max_ppm >= 0):
            raise SyncError("period_s must be > 0 and max_ppm >= 0")
        self.period_s = float(period_s)
        self.tol = max(period_s * 1e-3, 100e-9) if tolerance_s is None else float(tolerance_s)
        self.slack = max_ppm * 1e-6
        self.max_ppm = max_ppm
        self.unplaced = []          # markers before the grid's start, still in question
        self.accepted, self.index = [], []
        self.extra = 0
        self.local_period = self.period_s

    def add(self, t):
        """The next marker (board seconds, not earlier than the previous one)."""
        if self.accepted:
            self._place(t)
        else:
            self.unplaced.append(t)
            self._start(final=False)

    def finish(self):
        """No marker follows: settle the start with the markers there are."""
        if not self.accepted:
            self._start(final=True)

    def _start(self, final):
        # The grid starts at the first marker followed by one a whole number of periods later;
        # a marker with none within 2.5 periods (or, at the end, none at all) is extra.
        period = self.period_s
        while self.unplaced:
            first = self.unplaced[0]
            decided = False
            for t in self.unplaced[1:]:
                d = t - first
                if d > 2.5 * period:        # one missing marker at most between the first two
                    decided = True
                    break
                k = round(d / period)
                if k >= 1 and abs(d - k * period) <= k * period * self.slack + self.tol:
                    rest = self.unplaced[1:]
                    self.unplaced = []
                    self.accepted, self.index = [first], [0]
                    for later in rest:
                        self._place(later)
                    return
            if not decided and not final:
                return                      # a later marker may still start it here
            self.unplaced.pop(0)
            self.extra += 1

    def _place(self, t):
        d = t - self.accepted[-1]
        k = int(round(d / self.local_period))
        allowance = self.tol + (k * self.period_s * self.slack if len(self.accepted) < 2 else 0.0)
        if k >= 1 and abs(d - k * self.local_period) <= allowance:
            self.accepted.append(t)
            self.index.append(self.index[-1] + k)
            self.local_period = (self.accepted[-1] - self.accepted[0]) / (self.index[-1]
                                                                         - self.index[0])
        else:
            self.extra += 1

    def scale(self):
        """The :class:`ReferenceScale` of the markers accepted so far."""
        if len(self.accepted) < 2:
            raise SyncError(f"fewer than two markers {self.period_s:g} s apart (within "
                            f"{self.max_ppm:g} ppm): no reference period found")
        period_s = self.period_s
        t, n = np.array(self.accepted), np.array(self.index, np.int64)
        x = n - n.mean()
        degree = 2 if len(t) > 10 else 1
        coef = np.polyfit(x, t, degree)
        resid = t - np.polyval(coef, x)
        slope = np.polyval(np.polyder(coef), 0.0)          # local seconds per period, mid-span
        curve = coef[0] if degree == 2 else 0.0
        ppm = (slope / period_s - 1) * 1e6
        # d(ppm)/d(SI second) = 2 * curve / period_s / period_s * 1e6
        drift = 2 * curve / period_s ** 2 * 1e6
        return ReferenceScale(period_s=float(period_s), local_period_s=float(slope),
                              ppm=float(ppm), residual_s=float(resid.std()), markers_s=t, index=n,
                              missing=int(n[-1] - n[0] + 1 - len(n)),
                              extra=int(self.extra + len(self.unplaced)),
                              drift_ppm_per_s=float(drift))


class LiveReference:
    """:func:`rescale` and :meth:`ReferenceScale.to_si` as a board's tags and markers come
    (the live form of ``heraldry link --reference-a/-b``).

    :meth:`feed` takes the next tags (board seconds, sorted, later than those fed before; their
    channels) and the reference markers that came with them; it returns the tags that are now on
    the reference's time scale: the board's local time of its first accepted marker plus SI
    seconds since it, as :func:`rescale` and ``to_si`` give them offline. A tag waits for the
    next accepted marker (at most about one period: a PPS holds a second of tags) and is then
    placed linearly between its two neighbouring markers, exactly as offline; tags before the
    first accepted marker go out with the second, at the rate of the first period (offline:
    the fitted rate of the whole run). :meth:`close` places the tags after the last marker at
    the fitted rate (as offline) and returns them.

    Members: ``markers`` (accepted), ``extra``, ``waiting`` (tags held), :meth:`scale` (the
    :class:`ReferenceScale` of the markers so far: ``ppm``, ``missing``, ``residual_s``, ...).
    Every accepted marker is kept for :meth:`scale`'s fit: 3600 an hour for a PPS, 3.6 * 10^7
    (some hundreds of MB) for a 10 kHz reference.
    """

    def __init__(self, period_s=1.0, *, tolerance_s=None, max_ppm=200.0):
        self._grid = _Grid(period_s, tolerance_s, max_ppm)
        self._times, self._channels = [], []
        self._last = -np.inf

    @property
    def markers(self):
        return len(self._grid.accepted)

    @property
    def extra(self):
        return self._grid.extra

    @property
    def waiting(self):
        return int(sum(len(t) for t in self._times))

    def scale(self):
        """The :class:`ReferenceScale` of the markers so far (SyncError with fewer than two)."""
        return self._grid.scale()

    def feed(self, times, channels, markers=()):
        """Returns ``(times, channels)`` placed on the reference's scale (maybe empty)."""
        times = _sorted_seconds(times, "the tags")
        channels = np.asarray(channels, np.int64)
        if len(channels) != len(times):
            raise SyncError(f"{len(times)} times but {len(channels)} channels")
        if len(times):
            if times[0] < self._last:
                raise SyncError("tags must come in time order")
            self._last = times[-1]
            self._times.append(times)
            self._channels.append(channels)
        for t in _sorted_seconds(markers, "the markers").tolist():
            self._grid.add(t)
        grid = self._grid
        if len(grid.accepted) < 2 or not self._times:
            return np.zeros(0), np.zeros(0, np.int64)
        t = np.concatenate(self._times)
        c = np.concatenate(self._channels)
        ready = int(np.searchsorted(t, grid.accepted[-1], "right"))
        self._times, self._channels = ([t[ready:]], [c[ready:]]) if ready < len(t) else ([], [])
        return self._place(t[:ready]), c[:ready]

    def close(self):
        """The tags still held, placed (the ones after the last marker at the fitted rate).
        SyncError if fewer than two markers ever came on the grid (the tags cannot be placed)."""
        self._grid.finish()
        t = np.concatenate(self._times) if self._times else np.zeros(0)
        c = np.concatenate(self._channels) if self._channels else np.zeros(0, np.int64)
        self._times, self._channels = [], []
        if not len(t):
            return t, c
        scale = self._grid.scale()
        a = np.asarray(self._grid.accepted)
        inside = t <= a[-1]
        out = np.empty(len(t))
        out[inside] = self._place(t[inside])
        rate = scale.period_s / scale.local_period_s
        out[~inside] = a[0] + scale.index[-1] * scale.period_s + (t[~inside] - a[-1]) * rate
        return out, c

    def _place(self, t):
        # Only the markers from the one at or before the earliest tag on take part (the same
        # piecewise line as all of them): a feed costs its own span, not the run's markers.
        grid = self._grid
        acc, first = grid.accepted, grid.accepted[0]
        lo = max(bisect.bisect_right(acc, t[0]) - 1, 0) if len(t) else 0
        si = np.interp(t, np.asarray(acc[lo:]),
                       np.asarray(grid.index[lo:], np.float64) * grid.period_s)
        before = t < first
        if before.any():
            rate = (grid.index[1] - grid.index[0]) * grid.period_s / (acc[1] - first)
            si = np.where(before, (t - first) * rate, si)
        return first + si
