"""One board, many watchers: a ZeroMQ event/rates publisher, a control socket and ``/metrics``.

:class:`Server` owns one opened board (a :class:`heraldry.host.tagger.Tagger`) and, in one
loop on the calling thread, does three things. Its acquisition is the API's: every ``start``
is a new :meth:`~heraldry.host.tagger.Tagger.run` without a duration, stepped with
:meth:`~heraldry.host.tagger.Run.poll` between control requests, its counters following the
board's STATUS snapshots (no counter is read while it runs).

* **Publishes** on a ZeroMQ PUB socket (``tcp://BIND:PUB_PORT``), as multipart messages:

  - ``[b"events", header, data]``: ``header`` is JSON ``{"seq", "first", "dtype", "count",
    "lost"}``, ``data`` the raw bytes of ``count`` records of ``events.EVENT_DTYPE`` (times in
    the board's device time: the run's start count plus the run's time, so they go on
    increasing across restarts; ``dtype`` is its ``numpy.lib.format`` description;
    :func:`decode_events` turns the frames back into an array). ``seq`` counts every events
    message the server produced (0, 1, 2, ...) and ``first`` every record it produced before
    this message's, so a subscriber sees any message it did not get as a gap, and knows
    exactly how many records were in it (:class:`SequenceTracker`).
  - ``[b"rates", json]`` every ``1 / rates_hz`` s (1..10 Hz): ``seq``, ``device_time_s``,
    ``running``, ``link_up``, per-channel ``channel_rates_hz``, ``pattern_rates_hz`` (pattern
    -> Hz, every pattern of 2 or more channels), ``herald_rates_hz`` per rule and their sum
    ``herald_rate_hz``, ``dropped`` (cumulative, by cause, see :data:`DROP_CAUSES`),
    ``decode_errors``, ``events_messages`` (events messages produced), ``events_published``
    (records in them) and ``publish_refused``.
    Rates are per second of *device* time, from differences of the hardware counters between
    the latest STATUS snapshots seen at two ticks (at the snapshots' own device times; a tick
    without a new snapshot repeats the rates). ``dropped`` adds up every run since the server
    started (each ``start`` clears the board's counters), so it never decreases.

  Sends never block (``NOBLOCK``, send high-water mark ``hwm``): a slow subscriber cannot stall
  acquisition. ZeroMQ's PUB socket drops a message for a subscriber whose queue is at its
  high-water mark *without telling the sender* (``XPUB_NODROP`` would instead refuse the message
  for every subscriber as soon as one is full), so per-subscriber losses are counted by the
  subscriber, exactly, from ``seq`` and ``first``; the server counts what it drops itself: the
  sends its socket refused (``publish_refused``, metric ``heraldry_publish_refused_total``, and
  their records as ``dropped["publish"]``) and the blocks its own queue could not hold
  (``dropped["host_queue"]``).

* **Answers** a REP control socket (``tcp://BIND:CONTROL_PORT``): each request is one JSON object
  ``{"command": C, ...}``, each reply ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
  Commands: ``status`` (anyone), ``acquire_control`` (returns a ``lease``; refused while another
  client holds one), ``release_control``, ``start``, ``stop``, ``configure`` (``"config"``: an
  object of ``heraldry acquire`` options by their long name with ``_``, e.g. ``{"window": 20,
  "herald": ["0b011"]}``; applied on top of the command line's, restarting a running board).
  ``start``, ``stop``, ``configure`` and ``release_control`` need the holder's ``"lease"``. With
  a ``token`` every request must carry ``"token"`` (a non-loopback bind requires one,
  :func:`check_bind`).

* **Exports** Prometheus metrics on ``http://BIND:METRICS_PORT/metrics`` (:data:`METRIC_NAMES`).

The board is stopped when :meth:`Server.close` runs (Ctrl-C, SIGTERM, or an exception).
"""

import ipaddress
import json
import secrets
import socket
import threading
import time

import numpy as np

from ..protocol import CAPABILITY_FAST_HERALD, CAPABILITY_GATE_STAGE, Kind, LossCause
from ..sim.latency import herald_latency_seconds
from .config import ConfigError, fast_herald_pins
from .events import EVENT_DTYPE

__all__ = ["Server", "ServeError", "SequenceTracker", "check_bind", "is_loopback",
           "decode_events", "request", "early_latency_seconds",
           "DEFAULT_PUB_PORT", "DEFAULT_CONTROL_PORT",
           "DEFAULT_METRICS_PORT", "DROP_CAUSES", "METRIC_NAMES", "CONTROL_COMMANDS",
           "LATENCY_BUCKETS_S", "PAIR_DELAY_BUCKETS_S", "PAIR_DELAY_RANGE_S", "pair_delays",
           "LOOPBACK_BUCKET_PERIODS", "LOOPBACK_GUARD_CYCLES", "loopback_latencies",
           "with_loopback"]

DEFAULT_PUB_PORT = 5560
DEFAULT_CONTROL_PORT = 5561
DEFAULT_METRICS_PORT = 9560


#: Causes of dropped events, the ``cause`` label of ``heraldry_events_dropped_total``: the four
#: in-band loss causes (hardware counters), the host's decoded-block queue, and events messages
#: the PUB socket refused.
DROP_CAUSES = tuple(cause.name.lower() for cause in LossCause) + ("host_queue", "publish")

#: Every metric name ``/metrics`` exposes (counters with their ``_total`` suffix). Counts are
#: Prometheus counters (never decreasing: the totals of every run since the server started, as
#: each ``start`` clears the board's counters); rates come from ``rate()`` over them, and the
#: derived figures (CAR, accidental-subtracted herald rate, SLOs) are recording rules
#: (docs/slo-rules.yml). Gauges are states and settings only.
METRIC_NAMES = (
    "heraldry_detections_total",            # counter, label channel
    "heraldry_coincidences_total",          # counter, label pattern (2 or more channels)
    "heraldry_heralds_total",               # counter, label rule
    "heraldry_attempts_total",              # counter: sync edges (attempts) of the sync channel
    "heraldry_gated_out_total",             # counter, label channel: outside the gate
    "heraldry_stream_filtered_total",       # counter, label channel: counted, not streamed
    "heraldry_events_dropped_total",        # counter, label cause (DROP_CAUSES)
    "heraldry_decode_errors_total",         # counter
    "heraldry_control_commands_total",      # counter, labels command, result (ok/failed)
    "heraldry_link_up_seconds_total",       # counter, wall seconds with the link up
    "heraldry_link_down_seconds_total",     # counter, wall seconds with the link down
    "heraldry_publish_refused_total",       # counter, label topic
    "heraldry_published_messages_total",    # counter, label topic
    "heraldry_herald_publish_latency_seconds",  # histogram: a herald's device time to its
                                                # publication (LATENCY_BUCKETS_S)
    "heraldry_pair_delay_seconds",          # histogram: channel 1's tag time minus channel
                                            # 0's, every pair within +-100 ns (the g2 peak)
    "heraldry_pair_delay_seconds_squared_total",  # counter: the sum of the squares of those
                                                  # delays (s^2): the peak's width (rules)
    "heraldry_pair_delay_shifted_seconds_total",  # counter: the sum of (delay + range), each
                                                  # >= 0 (the histogram can have no _sum)
    "heraldry_pair_delay_range_seconds",    # gauge (setting): the pairs' range, 100 ns
    "heraldry_loopback_latency_seconds",    # histogram, labels herald, channel: --loopback, a
                                            # herald record to its pulse back on the input
    "heraldry_herald_rate_floor_hz",        # gauge (setting), --herald-floor (0: no floor)
    "heraldry_car_floor",                   # gauge (setting), --car-floor (0: no floor)
    "heraldry_coincidence_window_seconds",  # gauge (setting), the coincidence window
    "heraldry_herald_latency_seconds",      # gauge, early rule, worst case (sim.latency)
    "heraldry_link_up",                     # gauge 1/0
    "heraldry_running",                     # gauge 1/0: run gate open
    "heraldry_uptime_seconds",              # gauge, wall seconds since the server started
    "heraldry_device_time_seconds",         # gauge, device time of the last rates tick
    "heraldry_counters_device_time_seconds",  # gauge, device time of the board's counter
                                              # snapshot that the counts are from
)

#: Upper bounds (seconds) of the buckets of ``heraldry_herald_publish_latency_seconds``.
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

#: Upper bounds (seconds) of the buckets of ``heraldry_pair_delay_seconds``: 10 ns wide,
#: centred on the multiples of 10 ns from -90 to +90 ns (the virtual board's bins), so that
#: ``histogram_quantile(0.5, ...)`` finds the coincidence peak within a bucket's interpolation.
PAIR_DELAY_BUCKETS_S = tuple(round((k + 0.5) * 10e-9, 12) for k in range(-10, 10))
#: Tags further apart than this are not counted in ``heraldry_pair_delay_seconds``.
PAIR_DELAY_RANGE_S = 100e-9

#: Upper bounds of the buckets of ``heraldry_loopback_latency_seconds``, in core clock periods
#: (each bucket one period wide).
LOOPBACK_BUCKET_PERIODS = tuple(range(1, 33))
#: A herald record is timed through the loopback only if no herald of the same pin came within
#: this many core cycles before it (its pulse could hide the herald's own rising edge), and
#: its pulse must come back within as many cycles.
LOOPBACK_GUARD_CYCLES = 64

#: Control commands counted in ``heraldry_control_commands_total`` (anything else: "other").
CONTROL_COMMANDS = ("status", "acquire_control", "release_control", "start", "stop",
                    "configure")

#: ``configure`` keys a client may set: the ``heraldry acquire`` configuration options.
CONFIG_KEYS = ("channels", "window", "delay", "dead_time", "edge", "disable", "herald",
               "herald_width", "record_coincidences", "test_signal", "pair_rate", "efficiency",
               "dark_rate", "pair_delay", "period", "seed", "bsm_offset", "bsm_event",
               "bsm_psi_minus", "stream", "sync", "gate", "reference", "sync_marker_every")
_LIST_KEYS = ("delay", "dead_time", "edge", "disable", "herald", "record_coincidences",
              "stream", "gate", "reference")

_MAX_EVENTS_PER_MESSAGE = 1 << 16

#: Default wall seconds between a run's ``control.now`` polls: each costs one read (17 bytes on
#: the link), so 20 per second.
RUN_POLL_S = 0.05

# Hardware drop causes and the counter group of each.
_HARDWARE_DROPS = {"merger_full": "merger_dropped", "delay_full": "delay_dropped",
                   "herald_record": "herald_dropped", "coincidence_record": "coincidence_dropped"}


class ServeError(ValueError):
    """A serve option that cannot work. The message is one line, for the user."""


def is_loopback(host):
    """True if ``host`` (an address or ``localhost``) only accepts connections from this
    machine. ``*``, ``0.0.0.0`` and names that resolve elsewhere are not loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host, token):
    """Refuse (:class:`ServeError`) a non-loopback ``host`` without a ``token``."""
    if not is_loopback(host) and not token:
        raise ServeError(f"--bind {host} is reachable from other machines: give --token SECRET "
                         f"(every control command must then carry it), or bind 127.0.0.1")


def decode_events(frames):
    """``(header dict, numpy array of EVENT_DTYPE)`` from the frames of an ``events`` message."""
    topic, header, data = frames
    if bytes(topic) != b"events":
        raise ValueError(f"not an events message: topic {bytes(topic)!r}")
    header = json.loads(bytes(header))
    dtype = np.lib.format.descr_to_dtype([tuple(field) for field in header["dtype"]])
    events = np.frombuffer(bytes(data), dtype)
    if len(events) != header["count"]:
        raise ValueError(f"events message {header['seq']}: {len(events)} records, header says "
                         f"{header['count']}")
    return header, events


class SequenceTracker:
    """Counts, for one subscriber, the messages of a topic it received and those it missed.

    ``feed(seq)`` for every message in arrival order (``feed(seq, first, count)`` for events
    messages: the header's ``first`` and ``count``). ``missed`` counts sequence numbers skipped
    after the first message seen (a subscriber that joins late misses nothing before it).
    ``gaps`` lists ``(first missing, count)``. With ``first`` and ``count``: ``events`` counts the
    records received and ``missed_events`` the records in the messages missed."""

    def __init__(self):
        self.first = None
        self.last = None
        self.received = 0
        self.missed = 0
        self.gaps = []
        self.events = 0
        self.missed_events = 0
        self._next_event = None

    def feed(self, seq, first=None, count=None):
        if self.last is not None:
            if seq <= self.last:
                raise ValueError(f"sequence number {seq} after {self.last}: not increasing")
            if seq != self.last + 1:
                self.gaps.append((self.last + 1, seq - self.last - 1))
                self.missed += seq - self.last - 1
        else:
            self.first = seq
        if first is not None:
            if self._next_event is not None:
                if first < self._next_event:
                    raise ValueError(f"message {seq} starts at record {first}, before "
                                     f"{self._next_event}")
                self.missed_events += first - self._next_event
            self._next_event = first + count
            self.events += count
        self.last = seq
        self.received += 1


def request(socket_, command, **fields):
    """Send one control request on a REQ socket and return the reply dict (a client helper)."""
    socket_.send_json(dict(fields, command=command))
    return socket_.recv_json()


def _group(counters, group, size):
    """A counter group of a run's counters; zeros for a group the run has none of (a board or
    a recording without gates or stream filter counters)."""
    counts = counters.get(group)
    return [0] * size if counts is None else counts


def early_latency_seconds(identity, acq):
    """``heraldry_herald_latency_seconds``: the worst-case pin latency of an early rule on the
    device ``identity`` (its clock, fine bits and capabilities), run with ``acq``: the fast
    herald path's figure only if the device has one (``CAPABILITY_FAST_HERALD``) and it drives
    the pin of every early rule of ``acq`` (:func:`~.config.fast_herald_pins`), else the
    core's (one core period more on a device with the gate stage, ``CAPABILITY_GATE_STAGE``);
    None for an input block not measured."""
    fast = False
    if acq is not None and identity.capabilities & CAPABILITY_FAST_HERALD:
        early = 0
        for rule in acq.herald_rules:
            if rule.mode == "early":
                early |= 1 << rule.pin
        fast = bool(early) and fast_herald_pins(acq) & early == early
    return herald_latency_seconds(identity.clock_hz, identity.fine_bits, fast=fast,
                                  gate_stage=bool(identity.capabilities & CAPABILITY_GATE_STAGE))


def _attempts(acq, counters):
    """Attempts of a run: its sync channel's edges (singles counter), 0 without a sync."""
    sync = getattr(acq, "sync_channel", None)
    return 0 if sync is None else int(counters["singles"][sync])


class _Collector:
    """Prometheus collector over the server's latest figures (read under its lock)."""

    def __init__(self, server):
        self.server = server

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        from prometheus_client.utils import floatToGoString
        s = self.server
        with s._lock:
            rates = dict(s.rates)
            dropped = dict(s.dropped)
            decode_errors = s.decode_errors
            refused = dict(s.publish_refused)
            published = dict(s.published)
            link_up, running = s.link_up, s.running
            counters_time_s = s.counters_time_s
            totals = {group: list(counts) for group, counts in s.totals.items()}
            attempts = s.attempts
            commands = dict(s.commands)
            link_seconds = list(s.link_seconds)
            latency_counts, latency_sum = list(s.latency_counts), s.latency_sum
            delay_counts, delay_sum = list(s.pair_delay_counts), s.pair_delay_sum
            delay_squares, delay_shifted = s.pair_delay_squares, s.pair_delay_shifted
            loop_counts, loop_sum = list(s.loopback_counts), s.loopback_sum
        window_s = s.window_s()
        c = CounterMetricFamily("heraldry_detections", "detections, per channel",
                                labels=["channel"])
        for ch, count in enumerate(totals["singles"]):
            c.add_metric([str(ch)], count)
        yield c
        c = CounterMetricFamily("heraldry_coincidences",
                                "closed windows, per pattern of 2+ channels", labels=["pattern"])
        for pattern, count in enumerate(totals["patterns"], start=1):
            if bin(pattern).count("1") > 1:
                c.add_metric([str(pattern)], count)
        yield c
        c = CounterMetricFamily("heraldry_heralds", "herald firings, per rule", labels=["rule"])
        for rule, count in enumerate(totals["heralds"]):
            c.add_metric([str(rule)], count)
        yield c
        yield CounterMetricFamily("heraldry_attempts", "attempts: edges of the sync channel "
                                  "(0 while no channel has the sync role)", value=attempts)
        for name, group, text in (
                ("heraldry_gated_out", "gated_out", "detections outside their channel's gate "
                                                    "after the sync (counted, never in windows)"),
                ("heraldry_stream_filtered", "filtered", "detections counted but not streamed "
                                                         "(stream mode coincident or none)")):
            c = CounterMetricFamily(name, text, labels=["channel"])
            for ch, count in enumerate(totals[group]):
                c.add_metric([str(ch)], count)
            yield c
        c = CounterMetricFamily("heraldry_control_commands", "control requests answered",
                                labels=["command", "result"])
        for (command, result), count in sorted(commands.items()):
            c.add_metric([command, result], count)
        yield c
        yield CounterMetricFamily("heraldry_link_up_seconds",
                                  "wall seconds the board answered", value=link_seconds[1])
        yield CounterMetricFamily("heraldry_link_down_seconds",
                                  "wall seconds the board did not answer", value=link_seconds[0])
        cumulative = np.cumsum(latency_counts).tolist()
        yield HistogramMetricFamily(
            "heraldry_herald_publish_latency_seconds",
            "a herald record's device time to its publication, seconds",
            buckets=[(floatToGoString(bound), count)
                     for bound, count in zip(LATENCY_BUCKETS_S, cumulative)]
            + [("+Inf", cumulative[-1])], sum_value=latency_sum)
        cumulative = np.cumsum(delay_counts).tolist()
        yield HistogramMetricFamily(
            "heraldry_pair_delay_seconds",
            "channel 1's tag time minus channel 0's, every pair of tags within 100 ns",
            buckets=[(floatToGoString(bound), count)
                     for bound, count in zip(PAIR_DELAY_BUCKETS_S, cumulative)]
            + [("+Inf", cumulative[-1])], sum_value=delay_sum)
        yield CounterMetricFamily("heraldry_pair_delay_seconds_squared",
                                  "sum of the squares of heraldry_pair_delay_seconds' delays, "
                                  "s^2", value=delay_squares)
        yield CounterMetricFamily("heraldry_pair_delay_shifted_seconds",
                                  "sum of (delay + heraldry_pair_delay_range_seconds) over "
                                  "heraldry_pair_delay_seconds' pairs, s", value=delay_shifted)
        yield GaugeMetricFamily("heraldry_pair_delay_range_seconds",
                                "heraldry_pair_delay_seconds counts the pairs within this "
                                "either side", value=PAIR_DELAY_RANGE_S)
        h = HistogramMetricFamily(
            "heraldry_loopback_latency_seconds",
            "--loopback: a herald record's time to its pulse's rising edge back on the input",
            labels=["herald", "channel"])
        if s.loopback is not None:
            cumulative = np.cumsum(loop_counts).tolist()
            h.add_metric([str(c) for c in s.loopback],
                         [(floatToGoString(k / s.identity.clock_hz), count)
                          for k, count in zip(LOOPBACK_BUCKET_PERIODS, cumulative)]
                         + [("+Inf", cumulative[-1])], sum_value=loop_sum)
        yield h
        yield GaugeMetricFamily("heraldry_car_floor",
                                "coincidence-to-accidental ratio to alert below (0: none)",
                                value=s.car_floor)
        yield GaugeMetricFamily("heraldry_coincidence_window_seconds",
                                "the coincidence window (CAR's accidental estimate)",
                                value=window_s)
        yield GaugeMetricFamily("heraldry_herald_rate_floor_hz",
                                "herald rate below which to alert (0: none)",
                                value=s.herald_floor_hz)
        # The board's simulated figure (its input block, told by the fine bits; its fast
        # herald path's where that drives the early rules' pins); none for an input block
        # not measured.
        latency = early_latency_seconds(s.identity, s.acq)
        g = GaugeMetricFamily("heraldry_herald_latency_seconds",
                              "detector edge to herald pin, early rule, worst case (simulated)")
        if latency is not None:
            g.add_metric([], latency)
        yield g
        c = CounterMetricFamily("heraldry_events_dropped", "events dropped, by cause",
                                labels=["cause"])
        for cause in DROP_CAUSES:
            c.add_metric([cause], dropped[cause])
        yield c
        yield CounterMetricFamily("heraldry_decode_errors", "link stream decode errors",
                                  value=decode_errors)
        c = CounterMetricFamily("heraldry_publish_refused", "messages the PUB socket refused",
                                labels=["topic"])
        for topic, count in refused.items():
            c.add_metric([topic], count)
        yield c
        c = CounterMetricFamily("heraldry_published_messages", "messages published",
                                labels=["topic"])
        for topic, count in published.items():
            c.add_metric([topic], count)
        yield c
        yield GaugeMetricFamily("heraldry_link_up", "1 while the board answers", value=link_up)
        yield GaugeMetricFamily("heraldry_running", "1 while the run gate is open",
                                value=running)
        yield GaugeMetricFamily("heraldry_uptime_seconds", "wall seconds since serve started",
                                value=time.monotonic() - s.started)
        yield GaugeMetricFamily("heraldry_counters_device_time_seconds",
                                "device time of the counter snapshot the counts are from",
                                value=counters_time_s)
        yield GaugeMetricFamily("heraldry_device_time_seconds",
                                "device time of the last rates tick",
                                value=rates.get("device_time_s", 0.0))


class Server:
    """Serve one identified ``device`` (module docstring).

    Parameters
    ----------
    tagger : heraldry.host.tagger.Tagger
        An opened board (not a replay); the server owns its runs from now on.
    config : dict
        ``heraldry acquire`` configuration options by their long name with ``_`` (the keys of
        :data:`CONFIG_KEYS`; others are ignored); ``configure`` requests override them.
    acquisition_for : callable
        ``acquisition_for(config) -> (Acquisition, notes)`` (raises ConfigError).
    bind, pub_port, control_port, metrics_port : str, int
        Where to listen. Port 0 picks a free port (see the ``*_port`` members after start).
    token : str or None
        Required in every request when given; :func:`check_bind` refuses a non-loopback bind
        without one.
    rates_hz : float
        Rates messages per wall second, 1..10.
    hwm : int
        Send high-water mark of the PUB socket (messages queued per subscriber).
    sndbuf : int or None
        Kernel send buffer per connection, bytes (default: the system's). A small one makes the
        high-water mark, not the kernel, bound what a stalled subscriber holds.
    start : bool
        Open the run gate at once.
    herald_floor_hz : float
        Exported as ``heraldry_herald_rate_floor_hz`` for the alert rule (0: no floor).
    car_floor : float
        Exported as ``heraldry_car_floor`` for the CAR alert rule (0: no floor).
    status_interval : float or None
        Device seconds between the board's counter snapshots (None: the rates period, one
        snapshot per rates message on a board whose device time keeps pace with the wall's).
        Checked by :meth:`~heraldry.host.tagger.Tagger.run` (ConfigError).
    poll_s : float
        Wall seconds between the run's ``control.now`` polls (each collects the blocks that
        came in and the latest snapshot).
    log : callable
        ``log(message)`` for one-line notes (link down, a board that would not stop).
    loopback : (int, int) or None
        ``(herald, channel)``: herald output ``herald`` is wired to input ``channel`` (on the
        virtual board, its simulated jumper). Every acquisition then reads that input's pin
        (rising edges; whatever the test signal), and ``heraldry_loopback_latency_seconds``
        times the pulses that come back (:func:`loopback_latencies`). ConfigError if no rule
        drives that pin or the input is in a rule (a loop), at the start and on ``configure``.
    """

    def __init__(self, tagger, config, acquisition_for, *, bind="127.0.0.1",
                 pub_port=DEFAULT_PUB_PORT, control_port=DEFAULT_CONTROL_PORT,
                 metrics_port=DEFAULT_METRICS_PORT, token=None, rates_hz=2.0, hwm=1000,
                 sndbuf=None, start=True, herald_floor_hz=0.0, status_interval=None,
                 poll_s=RUN_POLL_S, log=None, car_floor=0.0, loopback=None):
        from ..extras import require
        zmq = require("zmq", "heraldry serve")
        CollectorRegistry = require("prometheus_client", "heraldry serve").CollectorRegistry
        check_bind(bind, token)
        if not 1 <= rates_hz <= 10:
            raise ServeError(f"--rates-hz must be 1..10, not {rates_hz:g}")
        if hwm < 1:
            raise ServeError(f"--hwm must be at least 1, not {hwm}")
        if tagger.is_replay:
            raise ServeError("serve needs a board, not a replay")
        self.tagger = tagger
        self.device = device = tagger.device
        self.identity = tagger.identity
        self.status_interval = 1.0 / rates_hz if status_interval is None else status_interval
        self.poll_s = poll_s
        self.run = None             # the run going on, or the last one
        self.config = {key: config[key] for key in CONFIG_KEYS if key in config}
        self.loopback = None if loopback is None else tuple(int(x) for x in loopback)
        self.acquisition_for = lambda config: self._with_loopback(*acquisition_for(config))
        self.acq, _ = self.acquisition_for(dict(self.config))
        self.token = token
        self.herald_floor_hz = float(herald_floor_hz)
        if not car_floor >= 0:
            raise ServeError(f"--car-floor must be 0 or more, not {car_floor:g}")
        self.car_floor = float(car_floor)
        self.rates_period = 1.0 / rates_hz
        self.log = log or (lambda message: None)
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.rates = self._zero_rates(0.0)
        self.counters_time_s = 0.0   # device time of the snapshot self.totals are from
        self.dropped = {cause: 0 for cause in DROP_CAUSES}
        self.decode_errors = 0
        self.publish_refused = {"events": 0, "rates": 0}
        self.published = {"events": 0, "rates": 0}
        self.link_up = 1
        self.running = 0
        self.lease = None
        self.events_seq = 0
        self.events_published = 0
        self.rates_seq = 0
        self._stopping = False
        self._last = None           # (counters_seconds, counters) of the run at the last tick
        self._done = {cause: 0 for cause in _HARDWARE_DROPS}   # drops of the runs that ended
        # Counts of every run (the ended runs' plus the one going on) and of the ended runs.
        ident = self.identity
        sizes = {"singles": ident.channels, "patterns": 2 ** ident.channels - 1,
                 "heralds": ident.rules, "gated_out": ident.channels,
                 "filtered": ident.channels}
        self.totals = {group: [0] * size for group, size in sizes.items()}
        self._done_counts = {group: [0] * size for group, size in sizes.items()}
        # Attempts: the sync channel's edges of each run that had one (its singles counter).
        self.attempts = self._done_attempts = 0
        # (command, "ok" or "failed") -> requests answered (every pair exported from zero)
        self.commands = {(command, result): 0 for command in CONTROL_COMMANDS + ("other",)
                         for result in ("ok", "failed")}
        self.link_seconds = [0.0, 0.0]  # wall seconds with the link down, up
        self._link_at = time.monotonic()
        # Herald publication latency: counts per bucket (the last: above every bound), sum.
        self.latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_sum = 0.0
        # Channel 1 minus channel 0 tag times: counts per bucket (the last: above every bound).
        self.pair_delay_counts = [0] * (len(PAIR_DELAY_BUCKETS_S) + 1)
        self.pair_delay_sum = 0.0
        self.pair_delay_squares = 0.0
        self.pair_delay_shifted = 0.0   # the sum of (delay + range): never decreases
        # --loopback: herald record to returned rise, per bucket (the last: above every bound).
        self.loopback_counts = [0] * (len(LOOPBACK_BUCKET_PERIODS) + 1)
        self.loopback_sum = 0.0
        self._run_for(self.acq)     # the status interval and poll checked before any socket
        self._host_dropped = device.stats()["host_dropped_events"]
        self._decode_errors = device.stats()["decode_errors"]
        self._zmq = zmq
        self._context = zmq.Context()
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, hwm)
        if sndbuf:
            self._pub.setsockopt(zmq.SNDBUF, sndbuf)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._control = self._context.socket(zmq.REP)
        self._control.setsockopt(zmq.LINGER, 0)
        self._http = None
        try:
            self.pub_port = self._bind(self._pub, bind, pub_port)
            self.control_port = self._bind(self._control, bind, control_port)
            self.registry = CollectorRegistry()
            self.registry.register(_Collector(self))
            self.metrics_port = self._start_http(bind, metrics_port)
        except Exception:
            self._close_sockets()
            raise
        self._poller = zmq.Poller()
        self._poller.register(self._control, zmq.POLLIN)
        if start:
            self.start()

    def _with_loopback(self, acq, notes):
        """``(acq, notes)`` with the loopback's input reading its pin (:func:`with_loopback`)."""
        if self.loopback is None or acq is None:
            return acq, notes
        return with_loopback(acq, self.loopback, self.identity.channels,
                             self.identity.rules), notes

    def _bind(self, sock, host, port):
        try:
            if port == 0:
                return sock.bind_to_random_port(f"tcp://{host}")
            sock.bind(f"tcp://{host}:{port}")
            return port
        except self._zmq.ZMQError as error:
            raise ServeError(f"cannot listen on {host}:{port}: {error}") from None

    def _start_http(self, host, port):
        from prometheus_client import start_http_server
        try:
            self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise ServeError(f"cannot serve /metrics on {host}:{port}: {error.strerror}") \
                from None
        return self._http.server_address[1]

    # -- board -----------------------------------------------------------------------------

    def _zero_rates(self, device_time_s):
        n, rules = self.identity.channels, self.identity.rules
        return {"device_time_s": device_time_s, "channel_rates_hz": [0.0] * n,
                "pattern_rates_hz": {str(p): 0.0 for p in range(1, 2 ** n)
                                     if bin(p).count("1") > 1},
                "herald_rates_hz": [0.0] * rules, "herald_rate_hz": 0.0}

    def _run_for(self, acq):
        """A new run of ``acq`` without a duration (not started; ConfigError if it cannot)."""
        from .acquire import anchor_interval_for
        reg = self.device.map["control.anchor_interval"]
        # Events are held by the decoder until their segment's CHECK: short segments keep the
        # stream's latency low (2**16 cycles, 2 % of the link for CHECK + ANCHOR).
        return self.tagger.run(acq, status_interval=self.status_interval, poll=self.poll_s,
                               anchor_interval=anchor_interval_for(0, reg.minimum, reg.maximum))

    def _going(self):
        return self.run is not None and self.run.started and not self.run.ended

    def _device_time_s(self):
        """The board's device time as far as the current (or last) run has seen."""
        run = self.run
        return run.start_cycles / self.identity.clock_hz + run.device_seconds

    def start(self):
        """End the run going on (if any) and start a new one: configure, clear (counters from
        zero; the rates read 0 until the first snapshot), snapshots on, run gate open."""
        self.stop()
        run = self._run_for(self.acq)
        run.start()
        self.run, self._last = run, (0.0, run.counters)
        self._loop_previous = None      # the last herald on the loopback's pin (run time, ps)
        with self._lock:
            self.rates = self._zero_rates(self._device_time_s())
        self.running = 1
        self._count_link_time()
        self.link_up = 1

    def stop(self):
        """End the run going on: stop the board, wait for the last records (published) and
        take the final counters; with no run going, close the run gate all the same."""
        if not self._going():
            self.device.write("control.run", 0)
            self.running = 0
            return
        try:
            self.run.stop()
        finally:
            self._run_ended()

    def _run_ended(self):
        """The run has ended (stopped, or cut short by a lost link): publish what it still
        holds, add its drops to the server's totals, rates to zero."""
        run = self.run
        self.running = 0
        self._publish_blocks()
        with self._lock:
            self._update_drops(run.counters)
            self.counters_time_s = run.start_cycles / self.identity.clock_hz \
                + run.counters_seconds
            for cause, group in _HARDWARE_DROPS.items():
                self._done[cause] += sum(run.counters[group])
            for group, done in self._done_counts.items():
                for i, count in enumerate(_group(run.counters, group, len(done))):
                    done[i] += count
            self._done_attempts += _attempts(run.acquisition, run.counters)
            self.rates = self._zero_rates(self._device_time_s())

    def _update_drops(self, counters):
        """Drops and counts so far: the ended runs' plus this run's ``counters`` (under the
        lock)."""
        for cause, group in _HARDWARE_DROPS.items():
            self.dropped[cause] = self._done[cause] + sum(counters[group])
        for group, done in self._done_counts.items():
            self.totals[group] = [d + c for d, c in zip(done, _group(counters, group, len(done)))]
        run = self.run
        self.attempts = self._done_attempts + (
            _attempts(run.acquisition, counters) if run is not None else 0)

    def window_s(self):
        """The coincidence window of the acquisition in use, seconds."""
        return getattr(self.acq, "window_bins", 0) * self.identity.bin_fs / 1e15

    def _count_link_time(self):
        """Add the wall time since the last call to the link's up or down seconds."""
        now = time.monotonic()
        with self._lock:
            self.link_seconds[1 if self.link_up else 0] += now - self._link_at
            self._link_at = now

    def _configure(self, overrides):
        if not isinstance(overrides, dict):
            raise ConfigError("configure needs \"config\": an object of acquire options")
        unknown = sorted(set(overrides) - set(CONFIG_KEYS))
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; use "
                              f"{', '.join(CONFIG_KEYS)}")
        config = dict(self.config)
        for key, value in overrides.items():
            if key in _LIST_KEYS and not isinstance(value, list):
                value = [value]
            config[key] = value
        try:
            acq, notes = self.acquisition_for(dict(config))
        except (TypeError, AttributeError) as error:
            raise ConfigError(f"bad configure value: {error}") from None
        self.config, self.acq = config, acq
        if self.running:
            self.start()        # a stopped board takes it at the next start
        return notes

    # -- publishing ------------------------------------------------------------------------

    def _send(self, topic, frames):
        try:
            self._pub.send_multipart([topic.encode()] + frames, flags=self._zmq.NOBLOCK)
        except self._zmq.Again:
            with self._lock:
                self.publish_refused[topic] += 1
            return False
        with self._lock:
            self.published[topic] += 1
        return True

    def publish_events(self, events, lost):
        """Publish ``events`` (EVENT_DTYPE) as one or more sequence-numbered messages."""
        descr = np.lib.format.dtype_to_descr(EVENT_DTYPE)
        for first in range(0, len(events), _MAX_EVENTS_PER_MESSAGE):
            part = np.ascontiguousarray(events[first:first + _MAX_EVENTS_PER_MESSAGE])
            header = {"seq": self.events_seq, "first": self.events_published, "dtype": descr,
                      "count": len(part),
                      "lost": {f"{cause.name.lower()}[{index}]": count
                               for (cause, index), count in lost.items()} if not first else {}}
            self.events_seq += 1
            self.events_published += len(part)
            if not self._send("events", [json.dumps(header).encode(), part.tobytes()]):
                with self._lock:
                    self.dropped["publish"] += len(part)

    def _publish_blocks(self):
        """Publish every block the run has for us now, in the board's device time, and time
        the publication of its herald records (:meth:`_herald_latency`)."""
        run = self.run
        ident = self.identity
        offset_ps = (run.start_cycles << ident.fine_bits) * ident.bin_fs // 1000
        while True:
            polled_at = time.monotonic()
            block = run.poll()
            if block is None:
                break
            if len(block.events):
                heralds = block.events["time_ps"][block.events["kind"] == Kind.HERALD.value]
                events = block.events.copy()
                events["time_ps"] += offset_ps
                self.publish_events(events, block.lost)
                self._count_pair_delays(block.events)
                if self.loopback is not None:
                    self._count_loopback(block.events)
                if len(heralds):
                    self._herald_latency(heralds, run.device_seconds, polled_at)

    def _herald_latency(self, times_ps, device_s, polled_at):
        """Count the publication latency of herald records at run times ``times_ps``: the
        device seconds from each to ``device_s`` (the run's device time at the poll that
        brought them, begun at wall ``polled_at``) plus the wall seconds from that poll to
        now, when they have been sent. An upper bound by at most the poll's own round trip;
        on a board whose device time keeps pace with the wall's, the herald's wall latency."""
        latency = np.maximum(device_s - times_ps / 1e12, 0.0) + (time.monotonic() - polled_at)
        index = np.searchsorted(LATENCY_BUCKETS_S, latency, side="left")   # le: bound inclusive
        counts = np.bincount(index, minlength=len(LATENCY_BUCKETS_S) + 1)
        with self._lock:
            for i, count in enumerate(counts):
                self.latency_counts[i] += int(count)
            self.latency_sum += float(latency.sum())

    def _count_pair_delays(self, events):
        """Add the block's channel 0 / channel 1 tag pairs to ``heraldry_pair_delay_seconds``
        (pairs split over two blocks are not counted: a few per block)."""
        if self.identity.channels < 2:
            return
        delays = pair_delays(events, PAIR_DELAY_RANGE_S)
        if not len(delays):
            return
        index = np.searchsorted(PAIR_DELAY_BUCKETS_S, delays, side="left")
        counts = np.bincount(index, minlength=len(PAIR_DELAY_BUCKETS_S) + 1)
        with self._lock:
            for i, count in enumerate(counts):
                self.pair_delay_counts[i] += int(count)
            self.pair_delay_sum += float(delays.sum())
            self.pair_delay_squares += float(np.square(delays).sum())
            self.pair_delay_shifted += float(np.maximum(delays + PAIR_DELAY_RANGE_S, 0.0).sum())

    def _count_loopback(self, events):
        """Add the block's herald pulses that came back through the loopback to
        ``heraldry_loopback_latency_seconds`` (:func:`loopback_latencies`)."""
        herald, channel = self.loopback
        ident = self.identity
        rules = [r for r, rule in enumerate(self.run.acquisition.herald_rules)
                 if rule.pin == herald]
        period_fs = ident.bin_fs << ident.fine_bits
        latencies, self._loop_previous = loopback_latencies(
            events, rules, channel, LOOPBACK_GUARD_CYCLES * period_fs // 1000,
            self._loop_previous)
        if not len(latencies):
            return
        # Whole bins in ps against bounds in ps (exact for bins of whole picoseconds).
        bounds = [k * period_fs / 1000 for k in LOOPBACK_BUCKET_PERIODS]
        index = np.searchsorted(bounds, latencies, side="left")
        counts = np.bincount(index, minlength=len(bounds) + 1)
        with self._lock:
            for i, count in enumerate(counts):
                self.loopback_counts[i] += int(count)
            self.loopback_sum += float(latencies.sum()) / 1e12

    def _step(self):
        """One step of the run going on (nothing if none): publish what came in. A lost link
        ends the run (``link_up`` 0, said once in the log)."""
        from .driver import DeviceError
        if not self._going():
            return
        try:
            self._publish_blocks()
        except DeviceError as error:
            self._link_down(error)
            self._run_ended()

    def _link_down(self, error):
        self._count_link_time()
        if self.link_up:
            self.log(f"link down: {error}")
        self.link_up = 0

    def _tick(self):
        """Update rates and cumulative drops from the run's latest snapshot. With no run going
        the board is asked its time (one read), so a lost link is seen while stopped too."""
        from .driver import DeviceError
        self._count_link_time()             # the state of the interval that ended
        stats = self.device.stats()         # host-side figures: no link traffic
        with self._lock:
            self.decode_errors += stats["decode_errors"] - self._decode_errors
            self._decode_errors = stats["decode_errors"]
            self.dropped["host_queue"] += stats["host_dropped_events"] - self._host_dropped
            self._host_dropped = stats["host_dropped_events"]
        if not self._going():
            try:
                now = self.device.now()
            except DeviceError as error:
                self._link_down(error)
                return
            self.link_up = 1
            with self._lock:
                self.rates["device_time_s"] = now / self.identity.clock_hz
            return
        run = self.run
        counts, at = run.counters, run.counters_seconds
        n = self.identity.channels
        with self._lock:
            self._update_drops(counts)
            self.counters_time_s = run.start_cycles / self.identity.clock_hz + at
            self.rates["device_time_s"] = self._device_time_s()
            last_at, last = self._last
            seconds = at - last_at
            if seconds > 0:
                # Counters extended past 32 bits by the run: plain differences.
                def hz(group, i):
                    return (counts[group][i] - last[group][i]) / seconds
                self.rates = {
                    "device_time_s": self._device_time_s(),
                    "channel_rates_hz": [hz("singles", c) for c in range(n)],
                    "pattern_rates_hz": {str(p): hz("patterns", p - 1)
                                         for p in range(1, 2 ** n) if bin(p).count("1") > 1},
                    "herald_rates_hz": [hz("heralds", r) for r in range(len(counts["heralds"]))],
                }
                self.rates["herald_rate_hz"] = sum(self.rates["herald_rates_hz"])
                self._last = (at, counts)

    def publish_rates(self):
        """Publish one ``rates`` message from the latest snapshot (also refreshes the
        metrics)."""
        self._tick()
        with self._lock:
            message = dict(self.rates, seq=self.rates_seq, running=self.running,
                           link_up=self.link_up, dropped=dict(self.dropped),
                           decode_errors=self.decode_errors, events_messages=self.events_seq,
                           events_published=self.events_published,
                           publish_refused=dict(self.publish_refused))
        self.rates_seq += 1
        self._send("rates", [json.dumps(message).encode()])     # a refusal is counted there

    # -- control ---------------------------------------------------------------------------

    def status(self):
        ident = self.identity
        with self._lock:
            rates = dict(self.rates)
        return {"running": bool(self.running), "link_up": bool(self.link_up),
                "control_held": self.lease is not None,
                "board": {"channels": ident.channels, "rules": ident.rules,
                          "clock_hz": ident.clock_hz, "bin_fs": ident.bin_fs,
                          "gateware": ident.gateware_version},
                "config": {key: self.config.get(key) for key in CONFIG_KEYS},
                "events_messages": self.events_seq, "events_published": self.events_published,
                "rates": rates,
                "uptime_s": time.monotonic() - self.started}

    def handle(self, req):
        """The reply (a dict) to one control request (a dict), counted by command and result
        in ``heraldry_control_commands_total``."""
        reply = self._handle(req)
        command = req.get("command") if isinstance(req, dict) else None
        key = (command if command in CONTROL_COMMANDS else "other",
               "ok" if reply.get("ok") else "failed")
        with self._lock:
            self.commands[key] = self.commands.get(key, 0) + 1
        return reply

    def _handle(self, req):
        from .driver import DeviceError
        if not isinstance(req, dict):
            return {"ok": False, "error": "a request is a JSON object {\"command\": ...}"}
        if self.token is not None and not secrets.compare_digest(
                str(req.get("token", "")), self.token):
            return {"ok": False, "error": "missing or wrong token"}
        command = req.get("command")
        if command == "status":
            return {"ok": True, **self.status()}
        if command == "acquire_control":
            if self.lease is not None:
                return {"ok": False, "error": "control is held by another client"}
            self.lease = secrets.token_hex(16)
            return {"ok": True, "lease": self.lease}
        if command not in ("release_control", "start", "stop", "configure"):
            return {"ok": False, "error": f"unknown command {command!r}; use status, "
                                          f"acquire_control, release_control, start, stop, "
                                          f"configure"}
        if self.lease is None or not secrets.compare_digest(str(req.get("lease", "")),
                                                            self.lease):
            return {"ok": False, "error": f"{command} needs control: acquire_control first, "
                                          f"and send its lease"}
        try:
            if command == "release_control":
                self.lease = None
                return {"ok": True}
            if command == "start":
                self.start()
            elif command == "stop":
                self.stop()
            else:
                notes = self._configure(req.get("config"))
                return {"ok": True, "notes": notes, "running": bool(self.running)}
        except ConfigError as error:
            return {"ok": False, "error": str(error)}
        except DeviceError as error:
            self._link_down(error)      # (a run it cut short has ended: stop() saw to it)
            return {"ok": False, "error": f"board: {error}"}
        return {"ok": True, "running": bool(self.running)}

    def _serve_control(self, timeout_s):
        zmq = self._zmq
        events = dict(self._poller.poll(timeout_s * 1000))
        while events.get(self._control):
            try:
                req = json.loads(self._control.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            except ValueError:
                req = None
            self._control.send_json(self.handle(req))
            events = dict(self._poller.poll(0))

    # -- main loop -------------------------------------------------------------------------

    def serve_forever(self, poll_s=0.01):
        """Publish and answer until :meth:`shutdown` (or KeyboardInterrupt)."""
        next_rates = time.monotonic() + self.rates_period
        while not self._stopping:
            self._serve_control(poll_s)
            self._step()
            if time.monotonic() >= next_rates:
                self.publish_rates()
                next_rates = max(next_rates + self.rates_period, time.monotonic())

    def shutdown(self):
        """Make :meth:`serve_forever` return after its current step (any thread, signals)."""
        self._stopping = True

    def _close_sockets(self):
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self._pub.close()
        self._control.close()
        self._context.term()

    def close(self):
        """End the run (the board stopped, its last records published; best effort) and close
        every socket."""
        try:
            self.stop()
        except Exception as error:      # the link may be what failed
            self.log(f"could not stop the board: {error}")
        self._close_sockets()


def pair_delays(events, range_s, channels=(0, 1)):
    """Seconds from each tag of ``channels[0]`` to every tag of ``channels[1]`` within
    ``range_s`` of it (either side), from records of ``EVENT_DTYPE``: the cross-correlation whose
    peak is the pairs' delay (a flat floor of accidentals under it)."""
    tags = events[events["kind"] == Kind.TAG.value]
    a = np.sort(tags["time_ps"][tags["channel"] == channels[0]])
    b = np.sort(tags["time_ps"][tags["channel"] == channels[1]])
    reach = int(round(range_s * 1e12))
    lo = np.searchsorted(b, a - reach, side="left")
    hi = np.searchsorted(b, a + reach, side="right")
    n = hi - lo
    if not n.sum():
        return np.zeros(0)
    starts = np.repeat(lo, n)
    offsets = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    return (b[starts + offsets] - np.repeat(a, n)) / 1e12


def with_loopback(acq, loopback, channels, rules):
    """``acq`` (an :class:`~heraldry.host.config.Acquisition`) with input ``loopback[1]``
    reading its pin, rising edges (whatever the test signal), for a loopback from herald output
    ``loopback[0]`` on a board of ``channels`` inputs and ``rules`` herald outputs. ConfigError
    (one line) if there is no such pin or input, no rule drives the pin, or the input is in a
    rule (its returned pulses would herald again)."""
    herald, channel = loopback
    where = f"--loopback {herald}:{channel}"
    if not 0 <= herald < rules or not 0 <= channel < channels:
        raise ConfigError(f"{where}: this board has herald outputs 0..{rules - 1} and inputs "
                          f"0..{channels - 1}")
    if not any(rule.pin == herald for rule in acq.herald_rules):
        raise ConfigError(f"{where}: no herald rule drives herald output {herald} (give one "
                          f"with --herald)")
    for r, rule in enumerate(acq.herald_rules):
        if (rule.require | rule.veto) >> channel & 1:
            raise ConfigError(f"{where}: input {channel} is in herald rule {r}; the loopback "
                              f"needs a spare input")
    acq.pin_channels = sorted(set(acq.pin_channels) | {channel})
    acq.edges = list(acq.edges)
    acq.edges[channel] = "rising"
    return acq


def loopback_latencies(events, rules, channel, guard_ps, previous=None):
    """``(latencies in ps, last herald time)`` of a loopback from the herald pin that ``rules``
    drive to input ``channel``, from records of ``EVENT_DTYPE`` in time order: for each herald
    record of those rules, the first tag of ``channel`` at or after its time, if that comes
    within ``guard_ps`` and no herald of those rules came within ``guard_ps`` before it (a
    pulse still up, or rising, would hide this herald's own edge). ``previous``: the time of
    the last such herald before these records (None: there was none). Returns, besides the
    latencies, the time of the last herald seen (``previous`` if none), for the next call. A
    herald whose pulse comes back in a later block is not timed."""
    kinds, times = events["kind"], events["time_ps"]
    heralds = times[(kinds == Kind.HERALD.value) & np.isin(events["channel"], list(rules))]
    back = np.sort(times[(kinds == Kind.TAG.value) & (events["channel"] == channel)])
    if not len(heralds) or not len(back):
        return np.zeros(0, np.int64), (int(heralds[-1]) if len(heralds) else previous)
    isolated = np.ones(len(heralds), bool)
    isolated[1:] = np.diff(heralds) > guard_ps
    isolated[0] = previous is None or heralds[0] - previous > guard_ps
    first = np.searchsorted(back, heralds, side="left")
    found = first < len(back)
    latency = back[np.minimum(first, len(back) - 1)] - heralds
    keep = isolated & found & (latency < guard_ps)
    return latency[keep].astype(np.int64), int(heralds[-1])


def free_port(host="127.0.0.1"):
    """A TCP port free on ``host`` right now (for tests and examples)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]

