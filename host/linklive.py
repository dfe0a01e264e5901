"""Live coincidences across two boards: two :class:`~heraldry.host.tagger.Tagger` s run
together and their tags merged as they come by :class:`heraldry.sync.LiveLink` (docs/sync.md).

Time bases (``time_base``):

* ``"device"``: each tag at its board's device count since reset, in seconds (the run's
  ``start_cycles`` plus its time). Right for boards whose counts are related within the search
  range: the virtual boards of :class:`heraldry.sim.twonode.TwoBoards`, whose pins files are
  written in those counts.
* ``"start"``: each tag at its time from its run's start, board 2's shifted by the wall time
  between the two starts (the middle of each start call). The start calls' own durations make
  this uncertain by milliseconds on a serial link: the offset search must cover it
  (``max_offset_s``; :func:`link_taggers` refuses a range smaller than the measured
  uncertainty plus 100 us). For two real boards, whose counts since power-up are unrelated.

:func:`link_streams` takes the same from two ``heraldry serve`` event streams (ZeroMQ
subscribers): their times are the boards' device times, as with ``"device"``.
"""

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from ..protocol import Kind

__all__ = ["BoardRun", "StreamSide", "link_taggers", "link_streams", "LinkMetrics",
           "LINK_METRIC_NAMES", "TIME_BASES"]

TIME_BASES = ("device", "start")


@dataclass
class BoardRun:
    """One board's side of :func:`link_taggers`: ``name``, ``start_cycles`` (device count at
    the run's start), ``start_bounds``/``stop_bounds`` (the driver's ``control.now`` reads
    around the start and stop commands), ``shift_s`` (added to its times: the ``"start"``
    base's wall-time shift, 0 for board 1), ``device_seconds``, ``tags`` (number streamed),
    ``times``/``channels`` (every tag, in the time base's seconds, with ``keep_tags``),
    ``markers`` (``{channel: [arrays of seconds]}``: the tags of the board's ``reference`` and
    ``sync`` channels, which are markers and stay out of the merge; :meth:`marker_times`),
    ``reference`` (with ``reference_period_s``: the :class:`heraldry.sync.LiveReference` that
    puts the board's tags on its reference's time scale; its ``scale()`` gives the board's
    ppm against the reference, missing and extra markers)."""
    name: str
    start_cycles: int = 0
    start_bounds: tuple = None
    stop_bounds: tuple = None
    shift_s: float = 0.0
    device_seconds: float = 0.0
    tags: int = 0
    times: list = field(default_factory=list)
    channels: list = field(default_factory=list)
    markers: dict = field(default_factory=dict)
    reference: object = None

    def marker_times(self, channel):
        """Every marker of ``channel`` so far (seconds of the time base), e.g. for
        :func:`heraldry.sync.rescale`."""
        parts = self.markers.get(channel, [])
        return np.concatenate(parts) if parts else np.zeros(0)


def _marker_channels(run):
    """Channels whose tags are markers (role ``reference`` or ``sync``) in ``run``."""
    roles = getattr(run.acquisition, "roles", None) or []
    return [c for c, role in enumerate(roles) if role in ("reference", "sync")]


def _tags(block, run, side, time_base, keep):
    events = block.events
    tags = events[events["kind"] == Kind.TAG.value]
    seconds = tags["time_ps"].astype(np.float64) * 1e-12
    if time_base == "device":
        seconds = seconds + run.start_cycles / run.tagger.clock_hz
    else:
        seconds = seconds + side.shift_s
    order = np.argsort(seconds, kind="stable")
    seconds, channels = seconds[order], tags["channel"][order].astype(np.int64)
    side.tags += len(seconds)
    if keep:
        side.times.append(seconds)
        side.channels.append(channels)
    marker = np.zeros(len(seconds), bool)
    for c in _marker_channels(run):
        these = channels == c
        side.markers.setdefault(c, []).append(seconds[these])
        marker |= these
    seconds, channels = seconds[~marker], channels[~marker]
    if side.reference is not None:
        return side.reference.feed(seconds, channels, side.markers[_reference_channel(run)][-1])
    return seconds, channels


def _reference_channel(run):
    roles = getattr(run.acquisition, "roles", None) or []
    return next((c for c, role in enumerate(roles) if role == "reference"), None)


def link_taggers(tagger_a, tagger_b, settings_a=None, settings_b=None, duration=None, *,
                 time_base="device", sync_a=(0,), sync_b=(0,), update_s=0.25, on_update=None,
                 keep_tags=False, idle_s=0.005, reference_period_s=None, **link):
    """Run both taggers for ``duration`` device seconds each (their own) and merge them live.

    ``settings_a``/``settings_b``: each board's :class:`~heraldry.host.tagger.Settings` (or
    Acquisition); ``sync_a``/``sync_b``: the channels that see the pairs (default 0 on both;
    ``None``: every channel). ``link``: :class:`heraldry.sync.LiveLink`'s keywords
    (``window_s``, ``bin_s``, ``rules``, ``block_s``, ``acquire_s``, ``max_offset_s``,
    ``max_ppm``, ``keep``, ...). ``on_update(metrics, boards)`` is called every ``update_s``
    wall seconds with :meth:`LiveLink.metrics` and the two :class:`BoardRun` s, and once at
    the end. Board 1 is started first; both are polled in turn (``Run.poll``) until both
    have ended and delivered their last records. The tags of a board's ``reference`` and
    ``sync`` channels (its settings' roles) are markers: kept on its :class:`BoardRun`, not
    merged.

    ``reference_period_s`` (PPS: 1; a 10 MHz reference divided by N: ``N * 1e-7``): each
    board's first ``reference`` channel (both settings need one) puts its tags on the
    reference's time scale before the merge (:class:`heraldry.sync.LiveReference`: the
    board's local time of its first accepted marker plus SI seconds since it), so the link sees
    the references' frequency difference (0 for one shared reference) instead of the
    crystals'. A tag then waits for the next marker: the link runs about one period behind.

    Returns ``(live, boards)``: the :class:`heraldry.sync.LiveLink` after its final feed and
    the two :class:`BoardRun` s. A stop signal (``KeyboardInterrupt``, e.g. Ctrl-C) while the
    boards run ends both runs and the link, which is returned with ``live.interrupted`` set to
    that exception. Raises ``ValueError`` (a :class:`heraldry.sync.SyncError` or
    a :class:`~heraldry.host.config.ConfigError`) for settings that cannot work, and what
    :meth:`Tagger.run` raises when a board fails.
    """
    from ..sync import LiveLink, LiveReference, SyncError
    if time_base not in TIME_BASES:
        raise SyncError(f"time_base must be one of {', '.join(TIME_BASES)}, not {time_base!r}")
    if reference_period_s is not None and not reference_period_s > 0:
        raise SyncError(f"reference_period_s must be > 0, not {reference_period_s!r}")
    live = LiveLink(tagger_a.channels, tagger_b.channels, sync_a=sync_a, sync_b=sync_b,
                    **link)
    boards = (BoardRun(tagger_a.name), BoardRun(tagger_b.name))
    runs = (tagger_a.run(settings_a, duration), tagger_b.run(settings_b, duration))
    if reference_period_s is not None:
        for k, (side, run) in enumerate(zip(boards, runs)):
            if _reference_channel(run) is None:
                raise SyncError(f"board {k + 1} ({side.name}) has no reference channel: give "
                                f"its settings references=[CH] to rescale by its markers")
            side.reference = LiveReference(reference_period_s)
    with contextlib.ExitStack() as stack:
        middles, spans = [], []
        for run in runs:
            before = time.monotonic()
            stack.enter_context(run)
            middles.append((before + time.monotonic()) / 2)
            spans.append(time.monotonic() - before)
        if time_base == "start":
            boards[1].shift_s = middles[1] - middles[0]
            uncertain = (spans[0] + spans[1]) / 2 + 1e-4
            if live.tracker.max_offset_s < uncertain:
                raise SyncError(f"the runs' starts are known to {uncertain * 1e3:.1f} ms in wall "
                                f"time (with 0.1 ms of fiber): search offsets of at least that "
                                f"(max_offset_s)")
        for side, run in zip(boards, runs):
            side.start_cycles = run.start_cycles
            side.start_bounds = run.tagger.device.start_bounds
        next_update = time.monotonic() + update_s
        try:
            while True:
                fed = False
                for k, run in enumerate(runs):
                    block = run.poll()
                    if block is None:
                        continue
                    fed = True
                    seconds, channels = _tags(block, run, boards[k], time_base, keep_tags)
                    if k == 0:
                        live.feed(seconds, channels)
                    else:
                        live.feed(b=seconds, channels_b=channels)
                if not fed:
                    if all(run.ended for run in runs):
                        break
                    time.sleep(idle_s)
                if on_update is not None and time.monotonic() >= next_update:
                    next_update = time.monotonic() + update_s
                    on_update(live.metrics(), boards)
        except KeyboardInterrupt as error:      # a stop signal: both runs end, the link too
            live.interrupted = error
    for side, run in zip(boards, runs):
        side.device_seconds = run.device_seconds
        side.stop_bounds = run.tagger.device.stop_bounds
    if reference_period_s is not None:
        # the tags after each board's last marker, at its fitted rate (SyncError: a board
        # whose markers never made a grid)
        for k, side in enumerate(boards):
            try:
                seconds, channels = side.reference.close()
            except SyncError as error:
                raise SyncError(f"board {k + 1} ({side.name}): {error}: its tags cannot be "
                                f"put on the reference's time scale") from None
            if k == 0:
                live.feed(seconds, channels)
            else:
                live.feed(b=seconds, channels_b=channels)
    live.feed(final=True)
    if on_update is not None:
        on_update(live.metrics(), boards)
    return live, boards


@dataclass
class StreamSide:
    """One ``heraldry serve`` stream of :func:`link_streams`: ``endpoint``, ``messages`` and
    ``tags`` received, ``missed_messages`` and ``missed_events`` (the publisher's ``seq`` and
    ``first`` skipped: records this subscriber never got; their pairs are missing from the
    merge), ``times``/``channels`` (every tag, seconds of device time, with ``keep_tags``)."""
    endpoint: str
    messages: int = 0
    tags: int = 0
    missed_messages: int = 0
    missed_events: int = 0
    times: list = field(default_factory=list)
    channels: list = field(default_factory=list)


def link_streams(endpoint_a, endpoint_b, duration_s, *, channels_a=4, channels_b=4,
                 sync_a=(0,), sync_b=(0,), update_s=0.25, on_update=None, keep_tags=False,
                 stop=None, **link):
    """Subscribe to two ``heraldry serve`` event streams (``tcp://HOST:PUB_PORT``) and merge
    their tags live for ``duration_s`` wall seconds (or until ``stop()`` returns true).

    The tags (``kind`` TAG) of each ``events`` message are taken at their device time
    (seconds); a message lost on the way (a gap in ``seq``/``first``) is counted on its
    :class:`StreamSide`. ``channels_a``/``channels_b``: the boards' input counts (the stream
    does not carry them; default 4, the virtual board's). The rest as :func:`link_taggers`.
    Returns ``(live, sides)``; a stop signal ends the link as in :func:`link_taggers`
    (``live.interrupted``). Raises :class:`heraldry.extras.MissingExtra` without pyzmq,
    :class:`heraldry.sync.SyncError` for settings that cannot work, ``ValueError`` for a
    message that is not a valid events message."""
    from ..extras import require
    from ..sync import LiveLink, SyncError
    from .serve import SequenceTracker
    zmq = require("zmq", "linking two heraldry serve streams")
    live = LiveLink(channels_a, channels_b, sync_a=sync_a, sync_b=sync_b, **link)
    sides = (StreamSide(endpoint_a), StreamSide(endpoint_b))
    seqs = (SequenceTracker(), SequenceTracker())
    context = zmq.Context.instance()
    sockets = []
    try:
        poller = zmq.Poller()
        for endpoint in (endpoint_a, endpoint_b):
            sub = context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"events")
            try:
                sub.connect(endpoint)
            except zmq.ZMQError as error:
                sub.close()
                raise SyncError(f"cannot subscribe to {endpoint}: {error}") from None
            poller.register(sub, zmq.POLLIN)
            sockets.append(sub)
        end = time.monotonic() + duration_s
        next_update = time.monotonic() + update_s
        try:
            _subscribe_loop(live, sockets, poller, sides, seqs, end, stop, keep_tags,
                            update_s, on_update, next_update, zmq)
        except KeyboardInterrupt as error:      # a stop signal ends the link
            live.interrupted = error
    finally:
        for sub in sockets:
            sub.close()
    live.feed(final=True)
    if on_update is not None:
        on_update(live.metrics(), sides)
    return live, sides


def _subscribe_loop(live, sockets, poller, sides, seqs, end, stop, keep_tags, update_s,
                    on_update, next_update, zmq):
    """link_streams' receive loop: until ``end`` (monotonic) or ``stop()``."""
    from .serve import decode_events
    while time.monotonic() < end and not (stop is not None and stop()):
        ready = dict(poller.poll(timeout=50))
        for k, sub in enumerate(sockets):
            while sub in ready:
                try:
                    frames = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                header, events = decode_events(frames)
                seqs[k].feed(header["seq"], header["first"], header["count"])
                side = sides[k]
                side.messages += 1
                side.missed_messages = seqs[k].missed
                side.missed_events = seqs[k].missed_events
                tags = events[events["kind"] == Kind.TAG.value]
                seconds = tags["time_ps"].astype(np.float64) * 1e-12
                order = np.argsort(seconds, kind="stable")
                seconds = seconds[order]
                channels = tags["channel"][order].astype(np.int64)
                side.tags += len(seconds)
                if keep_tags:
                    side.times.append(seconds)
                    side.channels.append(channels)
                if k == 0:
                    live.feed(seconds, channels)
                else:
                    live.feed(b=seconds, channels_b=channels)
        if on_update is not None and time.monotonic() >= next_update:
            next_update = time.monotonic() + update_s
            on_update(live.metrics(), sides)


#: The live link's Prometheus metrics (:class:`LinkMetrics`).
LINK_METRIC_NAMES = (
    "heraldry_link_locked",                     # gauge: 1 locked, 0 searching or lost
    "heraldry_link_state",                      # gauge 1, label state (searching/locked/lost)
    "heraldry_link_offset_seconds",             # gauge: board 2's time minus board 1's (NaN)
    "heraldry_link_frequency_ppm",              # gauge: board 2's clock against board 1's
    "heraldry_link_jitter_seconds",             # gauge: residual jitter of the matched pairs
    "heraldry_link_window_misses_ratio",        # gauge: pairs estimated outside the window
    "heraldry_link_losses_total",               # counter: locks lost
    "heraldry_link_locks_total",                # counter: locks gained
    "heraldry_link_synchronised_seconds_total",  # counter: board-1 time merged
    "heraldry_link_windows_total",              # counter: merged coincidence windows closed
    "heraldry_link_cross_coincidences_total",   # counter: windows with both boards' channels
    "heraldry_link_singles_total",              # counter, labels board, channel: merged tags
    "heraldry_link_tags_total",                 # counter, label board: tags received
)


class LinkMetrics:
    """The live link's figures on ``http://BIND:PORT/metrics`` (Prometheus text format,
    :data:`LINK_METRIC_NAMES`), for :func:`link_taggers` or :func:`link_streams` run as a
    service: pass :meth:`update` as (or call it from) their ``on_update``. ``port`` 0 picks a
    free port (``port`` says which). Raises :class:`heraldry.extras.MissingExtra` without
    prometheus_client and ``OSError`` when the port cannot be served. :meth:`close` stops it.

    The offset, ppm and jitter are NaN before the first lock and while lost; counters only
    grow during one link."""

    def __init__(self, port=0, bind="127.0.0.1", channels_a=1):
        from ..extras import require
        client = require("prometheus_client", "the live link's /metrics")
        self.registry = client.CollectorRegistry()
        self.registry.register(self)
        self.channels_a = channels_a
        self._metrics, self._boards = None, None
        self._http, _ = client.start_http_server(port, addr=bind, registry=self.registry)
        self.port = self._http.server_address[1]

    def update(self, metrics, boards):
        """Take :meth:`heraldry.sync.LiveLink.metrics` and the two sides' records."""
        self._metrics, self._boards = dict(metrics), [side.tags for side in boards]

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        m = self._metrics
        if m is None:
            return
        nan = float("nan")

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], nan if value is None else float(value))
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(name[:-len("_total")], doc)
            c.add_metric([], float(value))
            return c
        locked = m["state"] == "locked"
        yield gauge("heraldry_link_locked", "1 while the tracker is locked", int(locked))
        state = GaugeMetricFamily("heraldry_link_state", "the tracker's state", labels=["state"])
        for name in ("searching", "locked", "lost"):
            state.add_metric([name], float(m["state"] == name))
        yield state
        yield gauge("heraldry_link_offset_seconds", "board 2's time minus board 1's for a pair",
                    m["offset_s"] if locked else None)
        yield gauge("heraldry_link_frequency_ppm", "board 2's clock against board 1's",
                    m["ppm"] if locked else None)
        yield gauge("heraldry_link_jitter_seconds", "rms residual of the matched pairs",
                    m["jitter_s"] if locked else None)
        yield gauge("heraldry_link_window_misses_ratio",
                    "pairs estimated outside the coincidence window", m["misses"])
        yield counter("heraldry_link_losses_total", "locks lost", m["losses"])
        yield counter("heraldry_link_locks_total", "locks gained", m["locks"])
        yield counter("heraldry_link_synchronised_seconds_total", "board-1 time merged",
                      m["synced_s"])
        yield counter("heraldry_link_windows_total", "merged coincidence windows", m["windows"])
        yield counter("heraldry_link_cross_coincidences_total",
                      "windows holding channels of both boards", m["cross"])
        singles = CounterMetricFamily("heraldry_link_singles", "merged tags",
                                      labels=["board", "channel"])
        for c, count in enumerate(m["singles"]):
            board, ch = (1, c) if c < self.channels_a else (2, c - self.channels_a)
            singles.add_metric([str(board), str(ch)], float(count))
        yield singles
        tags = CounterMetricFamily("heraldry_link_tags", "tags received", labels=["board"])
        for k, count in enumerate(self._boards):
            tags.add_metric([str(k + 1)], float(count))
        yield tags

    def close(self):
        self._http.shutdown()
        self._http.server_close()
