"""Model of a two-node link: one seeded photon-pair source seen by two boards with own clocks.

Plain numpy (no Amaranth). The test bed of :mod:`heraldry.sync` (docs/sync.md).

Contract of :func:`two_node_source`:

* Pairs are emitted at true times from a Poisson process of ``pair_rate_hz``. Photon A of a
  pair reaches board 1 (channel 0) with probability ``efficiency_a``, photon B reaches board 2
  (channel 0) with probability ``efficiency_b``, ``fiber_delay_s`` later than A (the extra
  length of arm B). Each side also sees uncorrelated counts (darks and background) at
  ``dark_rate_a_hz`` / ``dark_rate_b_hz``. Every detection gets an independent Gaussian jitter
  of ``jitter_s`` (standard deviation).
* Board ``k`` reads a true time ``t`` on its own clock, :meth:`Clock.local`, and stores
  ``floor(local(t) / bin_s)``: an integer bin of its *nominal* bin size (the board does not know
  its crystal is off). Times are sorted per board; detections whose local time is negative are
  dropped (the board was not running yet).
* The same detections also come on one shared, ideal clock (``shared_a``, ``shared_b``:
  ``floor(t / bin_a_s)``, both in board 1's bin, B's fiber delay still in it): what one board
  carrying both detectors would record. This is the baseline a synchronised link is compared
  with; ``pair_a`` / ``pair_b`` give, for each detection, the index of its pair (-1: a dark count)
  so a test can tell which coincidences are real.

Nothing here uses :mod:`heraldry.sync`: tests compare sync's results against these truths.
"""

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Clock", "TwoNode", "two_node_source"]


@dataclass(frozen=True)
class Clock:
    """A board's crystal: how its local time (seconds) runs against true time.

    ``local(t) = start_s + t + 1e-6 * (ppm * t + drift_ppm_per_s * t**2 / 2
    + sum(step_ppm * max(0, t - at_s) for at_s, step_ppm in steps))``

    Members:
        ppm: frequency offset (parts per million; +20: the board's clock runs 20 ppm fast).
        drift_ppm_per_s: linear change of the frequency offset with time.
        steps: ``((at_s, step_ppm), ...)``: the frequency jumps by ``step_ppm`` at true time
            ``at_s`` (the local time stays continuous).
        start_s: local time at true time 0 (the boards were not started together).
    """
    ppm: float = 0.0
    drift_ppm_per_s: float = 0.0
    steps: tuple = ()
    start_s: float = 0.0

    def local(self, t):
        """Local time (seconds, float64) at true times ``t`` (seconds)."""
        t = np.asarray(t, np.float64)
        excess = self.ppm * t + 0.5 * self.drift_ppm_per_s * t * t
        for at_s, step_ppm in self.steps:
            excess = excess + step_ppm * np.maximum(0.0, t - at_s)
        return self.start_s + t + 1e-6 * excess

    def ppm_at(self, t):
        """Frequency offset (ppm) at true time ``t``."""
        return (self.ppm + self.drift_ppm_per_s * t
                + sum(step for at_s, step in self.steps if t >= at_s))


@dataclass
class TwoNode:
    """What :func:`two_node_source` made (see the module's contract).

    Members: ``a``, ``b`` (int64 bins of board 1 / board 2, sorted), ``pair_a``, ``pair_b``
    (pair index of each, -1 for a dark count), ``shared_a``, ``shared_b`` (the same detections on
    one ideal clock, in ``bin_a_s`` bins, same order as ``a``/``b``), ``true_a``, ``true_b``
    (true times, seconds), ``bin_a_s``, ``bin_b_s``, ``clock_a``, ``clock_b``,
    ``fiber_delay_s``, ``duration_s``."""
    a: np.ndarray
    b: np.ndarray
    pair_a: np.ndarray
    pair_b: np.ndarray
    shared_a: np.ndarray
    shared_b: np.ndarray
    true_a: np.ndarray
    true_b: np.ndarray
    bin_a_s: float
    bin_b_s: float
    clock_a: Clock
    clock_b: Clock
    fiber_delay_s: float
    duration_s: float
    pairs: int = field(default=0)

    def offset_s(self, t_a_local):
        """True offset of board 2's local time against board 1's at board-1 local times
        ``t_a_local`` (seconds) for a photon pair: ``b_local - a_local`` of B detected
        ``fiber_delay_s`` after A, without jitter. What a perfect tracker reports."""
        t_true = _invert(self.clock_a, np.asarray(t_a_local, np.float64))
        return self.clock_b.local(t_true + self.fiber_delay_s) - self.clock_a.local(t_true)


def _invert(clock, local):
    """True times at which ``clock`` reads ``local`` (Newton steps; the clock is monotonic)."""
    t = local - clock.start_s
    for _ in range(4):
        eps = 1e-9
        slope = (clock.local(t + eps) - clock.local(t)) / eps
        t = t - (clock.local(t) - local) / slope
    return t


def two_node_source(duration_s, *, pair_rate_hz=1e5, efficiency_a=0.3, efficiency_b=0.3,
                    dark_rate_a_hz=1e3, dark_rate_b_hz=1e3, fiber_delay_s=50e-6,
                    jitter_s=1e-9, clock_a=Clock(), clock_b=Clock(), bin_a_s=1e-9,
                    bin_b_s=1e-9, seed=0):
    """Seeded detections of a photon-pair source split over two boards (see the module's
    contract). All rates in Hz, times in seconds. Raises ``ValueError`` for a negative rate or
    time, an efficiency outside 0..1 or a bin that is not positive."""
    for name, value in (("duration_s", duration_s), ("pair_rate_hz", pair_rate_hz),
                        ("dark_rate_a_hz", dark_rate_a_hz), ("dark_rate_b_hz", dark_rate_b_hz),
                        ("fiber_delay_s", fiber_delay_s), ("jitter_s", jitter_s)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, not {value}")
    for name, value in (("efficiency_a", efficiency_a), ("efficiency_b", efficiency_b)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be 0..1, not {value}")
    for name, value in (("bin_a_s", bin_a_s), ("bin_b_s", bin_b_s)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, not {value}")
    rng = np.random.default_rng(seed)
    n_pairs = rng.poisson(pair_rate_hz * duration_s)
    emitted = np.sort(rng.uniform(0.0, duration_s, n_pairs))
    seen_a = rng.random(n_pairs) < efficiency_a
    seen_b = rng.random(n_pairs) < efficiency_b
    index = np.arange(n_pairs)

    def side(seen, delay, dark_rate):
        darks = rng.uniform(0.0, duration_s, rng.poisson(dark_rate * duration_s))
        true = np.concatenate((emitted[seen] + delay, darks))
        true = true + rng.normal(0.0, jitter_s, len(true))
        pair = np.concatenate((index[seen], np.full(len(darks), -1, np.int64)))
        order = np.argsort(true, kind="stable")
        return true[order], pair[order]

    true_a, pair_a = side(seen_a, 0.0, dark_rate_a_hz)
    true_b, pair_b = side(seen_b, fiber_delay_s, dark_rate_b_hz)
    local_a, local_b = clock_a.local(true_a), clock_b.local(true_b)
    keep_a, keep_b = local_a >= 0, local_b >= 0
    # Sorting by true time keeps local times sorted (the clocks are monotonic), bar the last
    # float rounding: sort the bins again to be safe.
    a = np.floor(local_a[keep_a] / bin_a_s).astype(np.int64)
    b = np.floor(local_b[keep_b] / bin_b_s).astype(np.int64)
    order_a, order_b = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    true_a, pair_a = true_a[keep_a][order_a], pair_a[keep_a][order_a]
    true_b, pair_b = true_b[keep_b][order_b], pair_b[keep_b][order_b]
    return TwoNode(a=a[order_a], b=b[order_b], pair_a=pair_a, pair_b=pair_b,
                   shared_a=np.floor(np.maximum(true_a, 0) / bin_a_s).astype(np.int64),
                   shared_b=np.floor(np.maximum(true_b, 0) / bin_a_s).astype(np.int64),
                   true_a=true_a, true_b=true_b, bin_a_s=bin_a_s, bin_b_s=bin_b_s,
                   clock_a=clock_a, clock_b=clock_b, fiber_delay_s=fiber_delay_s,
                   duration_s=duration_s, pairs=int(n_pairs))
