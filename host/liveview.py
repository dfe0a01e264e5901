"""Live view of a running acquisition on the terminal (``heraldry acquire``).

:class:`LiveView` is both the ``sink(events)`` and the ``progress(done, total[, stats])`` callback
of :func:`heraldry.host.acquire.acquire_device` (and of the in-process and replay paths). It
aggregates each streamed block with numpy (per-channel tag counts, herald and loss records) and
:class:`heraldry.host.measure.Coincidences` (software windows with the hardware semantics), so the
cost per block is a few vectorised passes; it renders only on ``progress`` calls and at most once
per ``interval`` of wall time.

* On a terminal (``tty=True``) it redraws a table in place (ANSI cursor-up + clear-line) every
  ``interval`` (default 0.25 s): device time elapsed/remaining, per-channel rates, the top
  coincidence patterns, herald records per rule, dropped items (loss records), with a sync
  channel or gates the attempts and gated-out events, and, over a link, the link figures.
  Rates are measured on the stream's own clock, because a link hands over records a verified
  segment at a time while the polled device time runs ahead: "rate now" = the tags
  that came since the last rendering that brought any / the stream time they advanced (from the
  latest record time then to the latest now); "average" = all tags / the latest record time
  (after :meth:`finish`: / the device time done, which is then complete).
* Attempts and gated-out events are the board's counters (the sync channel's singles and
  ``gated_out``) when a ``progress`` call's ``stats`` brings them (``stats["counters"]``, the
  run's latest counter read) or :meth:`finish` is given the run's counters; until then the
  attempts are the latest the stream proves, "at least": the highest ``attempt`` of a herald
  record and the sync markers received times ``sync_marker_every`` (marker k is attempt kN),
  and gated-out events are not known ("-").
* Piped (``tty=False``) it writes one plain line at most once per ``interval`` (default 1 s), the
  first one ``interval`` after the start: every run longer than that shows progress, shorter
  runs stay silent apart from the summary.
"""

import sys
import time

import numpy as np

from ..protocol import Kind
from .config import rule_text
from .measure import Coincidences

__all__ = ["LiveView"]

_TAG, _HERALD, _LOSS = Kind.TAG.value, Kind.HERALD.value, Kind.LOSS.value

#: Terminal control: cursor up N lines, clear the whole line.
_UP = "\x1b[{}A"
_CLEAR = "\x1b[2K"


def _si(value, unit=""):
    """``value`` with an SI prefix, 4 significant figures (``12.35 k``)."""
    if value != value:     # NaN: nothing measured yet
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.4g} {prefix}{unit}"
    return f"{value:.4g} {unit}".rstrip()


class LiveView:
    """Live table (terminal) or progress lines (pipe) of one acquisition.

    Parameters: ``duration_s`` the run's device time; ``stream`` where to write (default
    stderr); ``tty`` redraw in place (default: ``stream.isatty()``); ``clock`` wall-clock function
    in seconds (default ``time.monotonic``, a fake in tests); ``interval`` the minimum wall time
    between two renderings (default 0.25 s on a terminal, 1 s piped); ``top`` how many
    coincidence patterns to show.

    :meth:`start` (``acq``: an :class:`heraldry.host.config.Acquisition`) must come before the
    first :meth:`feed`; it is the ``sink_for(acq)`` of the CLI and returns :meth:`feed`.
    Members after any feed: ``tags`` (per channel, whole run), ``heralds`` (records per rule),
    ``dropped`` (sum of loss-record counts), ``attempts_seen`` (the latest attempt the stream
    proves: herald ``attempt`` fields, sync markers), ``counters`` (the latest board counters
    given, or ``None``), ``coincidences`` (the
    :class:`~heraldry.host.measure.Coincidences` fed with every tag; ``None`` once a block
    came out of time order), ``frames`` (renderings written so far).
    """

    def __init__(self, duration_s, *, stream=None, tty=None, clock=time.monotonic, interval=None,
                 top=5):
        self.duration_s = float(duration_s)
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty() if tty is None else bool(tty)
        self.clock = clock
        self.interval = (0.25 if self.tty else 1.0) if interval is None else float(interval)
        self.top = int(top)
        self.acq = None
        self.frames = 0
        self._start = clock()
        self._shown = self._start       # wall time of the last rendering (the start: none yet)
        self._lines = 0                 # lines of the frame on screen (tty)
        self._fraction = 0.0            # device time done / duration
        self._stats = None
        self._finished = False
        # Rates use the streamed records' own times: a link delivers tags in bursts (a segment
        # at a time, once verified), so the polled device time leads the data.
        self._last_ps = 0               # latest record time fed (times from the run start)
        self._mark_ps = 0               # ... at the last rendering that saw new records
        self._mark_tags = None          # tags per channel at that rendering
        self._recent_hz = None          # per channel: rate of the last interval with new records

    def start(self, acq):
        """Set up the per-channel tallies for ``acq``; returns :meth:`feed` (a ``sink``)."""
        self.acq = acq
        n = acq.channels
        self.tags = np.zeros(n, np.int64)
        self.heralds = np.zeros(max(acq.rules, 1), np.int64)
        self.dropped = 0
        self.attempts_seen = 0
        self.counters = None
        self.coincidences = Coincidences(range(n), acq.window_bins * acq.bin_ps)
        self._mark_tags = np.zeros(n, np.int64)
        self._recent_hz = np.full(n, np.nan)
        return self.feed

    def feed(self, events):
        """Aggregate one block of decoded records (``events.EVENT_DTYPE``)."""
        if not len(events):
            return
        kind = events["kind"]
        n = len(self.tags)
        tags = events[kind == _TAG]
        if len(tags):
            self.tags += np.bincount(tags["channel"], minlength=n)[:n]
            if self.coincidences is not None:
                try:
                    self.coincidences.feed(tags)
                except ValueError:
                    # Tags out of time order (a damaged stream or file): the display must not
                    # end the run; the summary's checks report the damage.
                    self.coincidences = None
        heralds = events["channel"][kind == _HERALD]
        if len(heralds):
            self.heralds += np.bincount(heralds, minlength=len(self.heralds))[:len(self.heralds)]
            # (attempt numbers wrap at 2**32: only the latest herald's counts)
            self.attempts_seen = max(self.attempts_seen,
                                     int(events["attempt"][kind == _HERALD][-1]))
        sync = self.acq.sync_channel
        if sync is not None and self.acq.sync_marker_every:
            self.attempts_seen = max(self.attempts_seen,
                                     int(self.tags[sync]) * self.acq.sync_marker_every)
        self.dropped += int(events["count"][kind == _LOSS].sum(dtype=np.int64))
        self._last_ps = max(self._last_ps, int(events["time_ps"].max()))

    def progress(self, done, total, stats=None):
        """Progress callback: ``done`` of ``total`` (cycles or ps) of device time; renders if the
        last rendering is at least ``interval`` old."""
        self._fraction = min(done / total, 1.0) if total else 1.0
        self._stats = stats
        if stats is not None and stats.get("counters") is not None:
            self.counters = stats["counters"]
        now = self.clock()
        if now - self._shown >= self.interval:
            self._render(now)

    def finish(self, counters=None):
        """Final rendering (on a terminal always; piped only if progress was shown). Call it
        once the acquisition has returned: every record is in, so averages use the device time
        done rather than the latest record time; ``counters`` (the run's, by group name) give
        the final attempts and gated-out events."""
        self._finished = True
        if counters is not None:
            self.counters = counters
        if self.tty or self.frames:
            self._render(self.clock())

    def _render(self, now):
        if self.acq is not None and self._last_ps > self._mark_ps:
            # Rates of the last update interval: tags since the last rendering over the span of
            # stream time they brought (kept until new records come).
            span_s = (self._last_ps - self._mark_ps) * 1e-12
            self._recent_hz = (self.tags - self._mark_tags) / span_s
            self._mark_tags = self.tags.copy()
            self._mark_ps = self._last_ps
        lines = self.render(now)
        if self.tty:
            out = _UP.format(self._lines) if self._lines else ""
            out += "".join(f"\r{_CLEAR}{line}\n" for line in lines)
            self._lines = len(lines)
        else:
            out = lines[0] + "\n"
        self.stream.write(out)
        self.stream.flush()
        self._shown = now
        self.frames += 1

    def render(self, now=None):
        """The lines of one frame (no control characters); the first is the progress line."""
        now = self.clock() if now is None else now
        wall = now - self._start
        done_s = self._fraction * self.duration_s
        left = f"{wall / self._fraction - wall:.0f}" if self._fraction > 0 else "?"
        head = (f"heraldry: {done_s * 1e3:.3f} of {self.duration_s * 1e3:g} ms device time "
                f"({100 * self._fraction:.1f}%), {(self.duration_s - done_s) * 1e3:.3f} ms to "
                f"go; {wall:.1f} s elapsed, ~{left} s left")
        if self.acq is None:
            return [head]
        if not self.tty:
            return [head + f"; tags {int(self.tags.sum())}, dropped {self.dropped}"]
        lines = [head, "  channel    rate now     average        tags"]
        streamed_s = self._last_ps * 1e-12
        if self._finished:
            streamed_s = max(streamed_s, done_s)
        for ch in range(len(self.tags)):
            avg_hz = self.tags[ch] / streamed_s if streamed_s > 0 else float("nan")
            lines.append(f"  {ch:7d} {_si(self._recent_hz[ch], 'Hz'):>11} {_si(avg_hz, 'Hz'):>11} "
                         f"{int(self.tags[ch]):11d}")
        n = len(self.tags)
        if self.coincidences is None:
            patterns = np.zeros(1 << n, np.int64)
        else:
            patterns = self.coincidences.result().patterns
        multi = [(int(p), int(patterns[p])) for p in range(1, 1 << n)
                 if bin(p).count("1") > 1 and patterns[p]]
        multi.sort(key=lambda pv: (-pv[1], pv[0]))
        shown = ", ".join(f"{p:0{n}b}: {v}" for p, v in multi[:self.top]) or (
            "none yet" if self.coincidences is not None else "n/a (tags out of time order)")
        lines.append(f"  coincidences (window {self.acq.window_bins} bins): {shown}")
        rules = len(self.acq.herald_rules)
        lines.append("  heralds: " + (", ".join(
            f"rule {r} ({rule_text(rule, r, n)}) {int(self.heralds[r])}"
            for r, rule in enumerate(self.acq.herald_rules)) if rules else "no rules"))
        lines.append(f"  dropped (loss records): {self.dropped}")
        clock = self._attempt_clock()
        if clock:
            lines.append(clock)
        if self._stats is not None and wall > 0:
            s = self._stats
            lines.append(f"  link: {_si(s['tags'] / wall, 'tags/s')}, "
                         f"{_si(s['link_bytes'] / wall, 'B/s')}, "
                         f"{s['decode_errors']} decode errors")
        return lines

    def _attempt_clock(self):
        """The attempts and gated-out line, or ``None`` without a sync channel or gates."""
        acq = self.acq
        gated = [c for c, gate in enumerate(acq.gates_bins or ()) if gate is not None]
        if acq.sync_channel is None and not gated:
            return None
        c = self.counters
        parts = []
        if acq.sync_channel is not None:
            if c is not None and c.get("singles") is not None:
                parts.append(f"attempts {int(c['singles'][acq.sync_channel])} (counted)")
            else:
                parts.append(f"attempts >= {self.attempts_seen} (from the stream)")
        if gated:
            if c is not None and c.get("gated_out") is not None:
                counts = ", ".join(f"ch{ch} {int(c['gated_out'][ch])}" for ch in gated)
            else:
                counts = ", ".join(f"ch{ch} -" for ch in gated)
            parts.append(f"gated out: {counts}")
        return "  " + "; ".join(parts)
