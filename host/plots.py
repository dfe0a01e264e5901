"""PNG plots of one acquisition (``heraldry acquire --plot DIR``), drawn with matplotlib (Agg).

Files written into ``DIR`` (:data:`PLOT_FILES`):

* ``rates.png``: count rate per channel over the run, a binned trace (:func:`rates_data`).
* ``g2.png``: cross-correlation histogram of channels 0 and 1, +-200 bins of one time bin
  each, as coincidence counts and normalised g2 (:func:`g2_data`).
* ``patterns.png``: closed coincidence windows per pattern, the hardware pattern counters
  (:func:`patterns_data`).

Each ``*_data`` function returns exactly the arrays its plot draws, so tests check those against
the measurement classes instead of pixels.
"""

import os

import numpy as np

from .measure import Correlation, CountRates

__all__ = ["PLOT_FILES", "rates_data", "g2_data", "patterns_data", "write_plots"]

PLOT_FILES = {"rates": "rates.png", "g2": "g2.png", "patterns": "patterns.png"}

#: Trace bins over the run (fewer if a bin would be shorter than one time bin).
TRACE_BINS = 100
#: The g2 histogram spans -G2_HALF_BINS .. G2_HALF_BINS bins around zero delay.
G2_HALF_BINS = 200


def rates_data(tags, channels, duration_ps, bin_ps):
    """Rate trace: ``(edges_ps, rates_hz)`` with ``rates_hz`` of shape (channels, bins).

    The trace bin ``w`` is ``duration_ps / TRACE_BINS`` rounded up to a whole number of time
    bins (``bin_ps``); bin ``k`` of channel ``c`` holds its tags with ``k*w <= t < (k+1)*w``
    divided by ``w`` in seconds. Times are from the run start (tags before it are left out);
    the trace covers ``[0, duration_ps)`` and every later tag (a device's gate may stay open a
    poll longer than asked), in whole trace bins: the last bin may be partly outside the run."""
    width = max(1, -(-int(duration_ps) // (TRACE_BINS * bin_ps))) * bin_ps
    tags = tags[tags["time_ps"] >= 0]
    span = max(int(duration_ps), int(tags["time_ps"].max()) + 1 if len(tags) else 0)
    bins = max(1, -(-span // width))
    rates = CountRates(channels, bin_ps=width).feed(tags).result()
    trace = np.zeros((channels, bins), np.int64)
    trace[:, :rates.trace.shape[1]] = rates.trace
    edges = width * np.arange(bins + 1, dtype=np.int64)
    return edges, trace / (width * 1e-12)


def g2_data(tags, bin_ps, duration_ps, channel1=0, channel2=1):
    """g2 of ``channel1`` (start) against ``channel2`` (stop): a
    :class:`~heraldry.host.measure.CorrelationResult` over ``+-G2_HALF_BINS * bin_ps`` in bins of
    ``bin_ps``, normalised with ``duration_ps``."""
    corr = Correlation(channel1, channel2, bin_ps=bin_ps, range_ps=G2_HALF_BINS * bin_ps)
    return corr.feed(tags).result(duration_ps)


def patterns_data(patterns):
    """``(pattern numbers, window counts)`` of every pattern, from the summary's
    ``{"pattern": count}`` (the hardware counters)."""
    keys = sorted(int(p) for p in patterns)
    return np.array(keys, np.int64), np.array([patterns[str(p)] for p in keys], np.int64)


def write_plots(result, summary, folder):
    """Write the three PNGs of :data:`PLOT_FILES` for ``result`` (an
    :class:`~heraldry.host.acquire.AcquisitionResult`) and its ``summary`` into ``folder``
    (created if missing); returns their paths in that order. Each file is written whole or not
    at all (:func:`heraldry.host.outputs.write_atomically`): on ``OSError`` (e.g. a full disk)
    the ones written before stay, the failing one is not left behind."""
    from ..extras import require
    matplotlib = require("matplotlib", "plots")
    matplotlib.use("Agg")       # files only: never a window, whatever the environment says
    from matplotlib.figure import Figure

    from .outputs import write_atomically

    acq = result.acquisition
    n = acq.channels
    duration_ps = int(round((result.device_seconds or result.duration_s) * 1e12))
    tags = result.tags
    os.makedirs(folder, exist_ok=True)
    paths = []

    def save(fig, key):
        # Whole or not at all (a full disk leaves no truncated PNG): see host.outputs.
        path = os.path.join(folder, PLOT_FILES[key])
        write_atomically(path, lambda f: fig.savefig(f, dpi=80, format="png"))
        paths.append(path)

    edges, rates = rates_data(tags, n, int(round(result.duration_s * 1e12)), acq.bin_ps)
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for ch in range(n):
        ax.stairs(rates[ch], edges * 1e-9, label=f"channel {ch}")
    ax.set_xlabel("time from run start (ms)")
    ax.set_ylabel("rate (Hz)")
    ax.set_title(f"count rates, {(edges[1] - edges[0]) * 1e-6:g} us bins")
    ax.legend(fontsize="small")
    save(fig, "rates")

    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    if n >= 2:
        g2 = g2_data(tags, acq.bin_ps, duration_ps)
        ax.stairs(g2.counts, g2.edges_ps * 1e-3)
        ax.set_ylabel("pairs per bin")
        ax.set_title(f"correlation of channels 0 and 1 ({g2.n1} x {g2.n2} tags, "
                     f"bin {acq.bin_ps / 1000:g} ns)")
        right = ax.twinx()      # the same curve normalised: g2 = 1 for uncorrelated streams
        ylo, yhi = ax.get_ylim()
        scale = g2.g2[np.nonzero(g2.counts)][0] / g2.counts[np.nonzero(g2.counts)][0] \
            if g2.counts.any() and np.isfinite(g2.g2).all() else None
        if scale:
            right.set_ylim(ylo * scale, yhi * scale)
            right.set_ylabel("g2")
        else:
            right.set_axis_off()
    else:
        ax.text(0.5, 0.5, "one channel: no correlation", ha="center", va="center")
    ax.set_xlabel("t(ch1) - t(ch0) (ns)")
    save(fig, "g2")

    keys, counts = patterns_data(summary["patterns"])
    fig = Figure(figsize=(max(4, 0.3 * len(keys) + 1.5), 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(np.arange(len(keys)), counts)
    ax.set_xticks(np.arange(len(keys)), [f"{p:0{n}b}" for p in keys],
                  rotation=90 if n > 3 else 0, fontsize="small")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(0, max(2, 2 * int(counts.max(initial=0))))
    ax.set_xlabel("pattern (bit c = channel c)")
    ax.set_ylabel("windows")
    ax.set_title("coincidence windows per pattern (hardware counters)")
    save(fig, "patterns")
    return paths
