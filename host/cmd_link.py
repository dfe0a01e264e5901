"""``heraldry link A B``: coincidences across two boards with their own clocks.

Offline, ``A`` and ``B`` are two T2 PTU files (board 1 and board 2); live, two boards run
together: two virtual boards fed from one seeded photon-pair source, ``sim:+20ppm sim:-15ppm``
(each with its clock's ppm; :class:`heraldry.sim.twonode.TwoBoards`), or two serial ports.
Either way board 2's time base is found and tracked against board 1's from the photon pairs
both see (:mod:`heraldry.sync`), and the lock state, offset, ppm, residual jitter, estimated
window misses and the cross-node coincidence rates (the reference model's windows on the merged
stream) are printed, live as one line per update when the boards run. Exit status 0 when
locked at the end, 1 when lock was never gained or is lost at the end, 2 for bad options or a
file that cannot be read, 4 when a board goes away or stops answering, 128 + the signal's
number when a live link is stopped by SIGINT, SIGTERM or SIGHUP (after its summary).
"""

import os
import re
import sys

import numpy as np

from .cli import _error

__all__ = ["register", "cmd_link"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOST = 0, 1, 2, 4

#: ``sim`` or ``sim:<ppm>ppm``: a virtual board and its clock's frequency offset.
SIM_TARGET = re.compile(r"^sim(?::([+-]?\d+(?:\.\d*)?)ppm)?$")
#: Tracking defaults per kind of input: (acquire_s, block_ms). The virtual boards run tens of
#: milliseconds of device time per test, so they acquire on 10 ms and track in 1 ms blocks.
DEFAULTS = {"files": (0.5, 10.0), "sim": (0.01, 1.0), "ports": (0.5, 10.0),
            "streams": (0.5, 10.0)}
#: A ``heraldry serve`` event stream (its PUB endpoint).
STREAM_TARGET = re.compile(r"^(tcp|ipc)://\S+$")


def _channel_list(text):
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"channels must be comma-separated numbers, not {text!r}") from None


def register(subparsers):
    """Add ``link`` to the ``heraldry`` sub-parsers."""
    p = subparsers.add_parser(
        "link", help="coincidences across two boards (PTU files, or two boards live: "
        "sim:+20ppm sim:-15ppm, two ports), offset and drift tracked")
    p.add_argument("file_a", metavar="A",
                   help="board 1 (its time base is kept): a PTU file, sim[:PPMppm], a port or "
                   "a heraldry serve event stream tcp://HOST:PORT")
    p.add_argument("file_b", metavar="B", help="board 2 (rescaled onto board 1's): the same kind")
    p.add_argument("--window-ns", type=float, default=20.0,
                   help="coincidence window (default 20 ns)")
    p.add_argument("--bin-ps", type=float, default=1000.0,
                   help="time bin of the merged stream (default 1000 ps; window/bin <= 1023)")
    p.add_argument("--sync-a", default=None, metavar="CH,...",
                   help="board 1's channels that see the pairs (default: all in files, 0 live)")
    p.add_argument("--sync-b", default=None, metavar="CH,...",
                   help="board 2's channels that see the pairs (default: all in files, 0 live)")
    p.add_argument("--max-offset-us", type=float, default=None,
                   help="offset search range +- (default 200 us; 20000 us for two ports, "
                   "whose runs are aligned by their start times)")
    p.add_argument("--max-ppm", type=float, default=100.0,
                   help="frequency search range +- (default 100 ppm)")
    p.add_argument("--acquire-s", type=float, default=None,
                   help="data per acquisition (default 0.5 s; 0.01 s on virtual boards)")
    p.add_argument("--block-ms", type=float, default=None,
                   help="tracking loop block (default 10 ms; 1 ms on virtual boards)")
    p.add_argument("--untracked", action="store_true",
                   help="keep the first offset, no frequency tracking (a fixed calibration)")
    ref = p.add_argument_group("reference inputs (PTU files; live: both boards, built with "
                               "reference inputs)")
    ref.add_argument("--reference-a", type=int, default=None, metavar="CH",
                     help="board 1's reference channel (PPS or a divided 10 MHz): its markers "
                     "rescale board 1's times to SI seconds and are left out of the merge")
    ref.add_argument("--reference-b", type=int, default=None, metavar="CH",
                     help="board 2's reference channel (the same)")
    ref.add_argument("--reference-period-s", type=float, default=1.0,
                     help="the reference markers' period (default 1 s: PPS; a 10 MHz "
                     "reference divided by N: N * 1e-7)")
    live = p.add_argument_group("two boards live")
    live.add_argument("--duration", type=float, default=None,
                      help="device seconds each board runs (default 0.06 virtual, 10 ports); "
                      "wall seconds of two serve streams (default 10)")
    live.add_argument("--metrics-port", type=int, default=None,
                      help="also serve the link's figures on http://127.0.0.1:PORT/metrics "
                      "(Prometheus; 0: a free port, printed)")
    live.add_argument("--channels-a", type=int, default=4,
                      help="inputs of board 1 behind a serve stream (default 4)")
    live.add_argument("--channels-b", type=int, default=4,
                      help="inputs of board 2 behind a serve stream (default 4)")
    live.add_argument("--update-s", type=float, default=0.5,
                      help="wall seconds between the live lines (default 0.5)")
    sim = p.add_argument_group("virtual boards (sim:PPMppm): the photon-pair source")
    sim.add_argument("--fiber-us", type=float, default=50.0,
                     help="extra fiber of arm B (default 50 us)")
    sim.add_argument("--skew-us", type=float, default=37.0,
                     help="board 2 started this much later than board 1 (default 37 us)")
    sim.add_argument("--pair-rate", type=float, default=2.5e5,
                     help="pairs emitted per second (default 2.5e5)")
    sim.add_argument("--efficiency", type=float, default=0.45,
                     help="detection efficiency of each arm (default 0.45)")
    sim.add_argument("--dark-rate", type=float, default=2e4,
                     help="uncorrelated counts per second on each board (default 2e4)")
    sim.add_argument("--jitter-ps", type=float, default=1000.0,
                     help="timing jitter of each detection, rms (default 1000 ps)")
    sim.add_argument("--seed", type=int, default=1, help="source seed (default 1)")
    return [("link", cmd_link)]


def _read(path):
    """Tag times (seconds) and input channels of a PTU file. In our files the header's channel
    map tells inputs from herald and coincidence records (left out); in others every photon
    record is a tag of its channel."""
    from .ptu import read_ptu
    from .replay import _channel_map, _json_tag
    data = read_ptu(path)
    keep = data.photons
    channel = data.channel.astype(np.int64)
    cmap = _json_tag(data.tags, "Heraldry_ChannelMap")
    if cmap:
        inputs, _, _ = _channel_map(cmap)
        number = np.full(64, -1, np.int64)
        for c, ptu_channel in inputs.items():
            number[ptu_channel] = c
        channel = number[channel]
        keep = keep & (channel >= 0)
    return data.time_ps[keep].astype(np.float64) * 1e-12, channel[keep]


def _kind(target):
    """``"sim"`` (``sim[:PPMppm]``), ``"streams"`` (``tcp://HOST:PORT``: a ``heraldry serve``
    event stream), ``"ports"`` (a serial device path) or ``"files"``."""
    from .cli import _is_port
    if SIM_TARGET.match(target):
        return "sim"
    if STREAM_TARGET.match(target):
        return "streams"
    if _is_port(target) and not target.lower().endswith(".ptu") and not os.path.isfile(target):
        return "ports"
    return "files"


def _check(args, kind):
    """The options' values (ValueError, one line); fills in the defaults of ``kind``."""
    sync_a = _channel_list(args.sync_a) if args.sync_a else None
    sync_b = _channel_list(args.sync_b) if args.sync_b else None
    acquire, block = DEFAULTS[kind]
    args.acquire_s = acquire if args.acquire_s is None else args.acquire_s
    args.block_ms = block if args.block_ms is None else args.block_ms
    if args.max_offset_us is None:
        args.max_offset_us = 20000.0 if kind == "ports" else 200.0
    if args.duration is None:
        args.duration = 0.06 if kind == "sim" else 10.0
    positive = [("--window-ns", args.window_ns), ("--bin-ps", args.bin_ps),
                ("--max-offset-us", args.max_offset_us), ("--acquire-s", args.acquire_s),
                ("--block-ms", args.block_ms), ("--duration", args.duration),
                ("--update-s", args.update_s), ("--pair-rate", args.pair_rate)]
    for name, value in positive:
        if not value > 0:
            raise ValueError(f"{name} must be > 0, not {value:g}")
    for name, value in (("--max-ppm", args.max_ppm), ("--fiber-us", args.fiber_us),
                        ("--dark-rate", args.dark_rate), ("--jitter-ps", args.jitter_ps)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, not {value:g}")
    for name, value in (("--channels-a", args.channels_a), ("--channels-b", args.channels_b)):
        if not 1 <= value <= 7:
            raise ValueError(f"{name} must be 1..7, not {value}")
    if args.channels_a + args.channels_b > 8:
        raise ValueError(f"--channels-a + --channels-b: {args.channels_a + args.channels_b} "
                         f"channels, the merged stream holds at most 8")
    references = (args.reference_a, args.reference_b)
    if kind == "streams" and references != (None, None):
        raise ValueError("--reference-a/-b rescale PTU files and live boards; a serve stream "
                         "does not say which of its channels is a reference")
    if kind in ("sim", "ports") and (None in references) != (references == (None, None)):
        raise ValueError("live, give both --reference-a and --reference-b (each board's "
                         "reference channel)")
    if kind == "sim" and references != (None, None) and args.reference_a != args.reference_b:
        raise ValueError("two virtual boards share one reference on one channel: "
                         "--reference-a and --reference-b must be the same")
    if not args.reference_period_s > 0:
        raise ValueError(f"--reference-period-s must be > 0, not {args.reference_period_s:g}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise ValueError(f"--metrics-port must be 0..65535, not {args.metrics_port}")
    if not 0 < args.efficiency <= 1:
        raise ValueError(f"--efficiency must be in (0, 1], not {args.efficiency:g}")
    return sync_a, sync_b


def _tracking(args):
    return dict(window_s=args.window_ns * 1e-9, bin_s=args.bin_ps * 1e-12,
                block_s=args.block_ms * 1e-3, acquire_s=args.acquire_s,
                track=not args.untracked, max_offset_s=args.max_offset_us * 1e-6,
                max_ppm=args.max_ppm)


def cmd_link(args):
    from ..sync import SyncError
    kinds = (_kind(args.file_a), _kind(args.file_b))
    try:
        if kinds[0] != kinds[1]:
            raise ValueError(f"{args.file_a} and {args.file_b}: link two files, two virtual "
                             f"boards (sim:PPMppm), two ports or two serve streams "
                             f"(tcp://HOST:PORT), not one of each")
        sync_a, sync_b = _check(args, kinds[0])
    except ValueError as error:
        _error(error)
        return EXIT_USAGE
    try:
        if kinds[0] == "files":
            return _files(args, sync_a, sync_b)
        from .interrupt import stop_on_signals
        with stop_on_signals():
            try:
                if kinds[0] == "streams":
                    return _streams(args, sync_a, sync_b)
                return _live(args, kinds[0], sync_a, sync_b)
            except KeyboardInterrupt as error:      # before the boards ran, or after
                _error(f"interrupted by {getattr(error, 'name', 'SIGINT')}")
                return 128 + getattr(error, "signum", 2)
    except SyncError as error:
        _error(error)
        return EXIT_USAGE


def _files(args, sync_a, sync_b):
    from ..sync import link
    streams = []
    for path in (args.file_a, args.file_b):
        try:
            streams.append(_read(path))
        except (OSError, ValueError) as error:
            _error(f"cannot read {path}: {getattr(error, 'strerror', None) or error}")
            return EXIT_USAGE
    (a, ca), (b, cb) = streams
    (a, ca), (b, cb) = (_referenced(t, c, ch, args.reference_period_s, board)
                        for t, c, ch, board in ((a, ca, args.reference_a, 1),
                                                (b, cb, args.reference_b, 2)))
    result = link(a, b, channels_a=ca, channels_b=cb, sync_a=sync_a, sync_b=sync_b,
                  **_tracking(args))
    na = result.channels_a
    counts = [int(np.count_nonzero(result.tags["channel"] == c))
              for c in range(na + result.channels_b)]
    return _summary(sys.stdout, result.state, result.fit, len(result.losses),
                    len(result.locks), result.synced_s, result.misses, counts, na, result.cross)


def _referenced(times, channels, reference, period_s, board):
    """The board's tags without its reference channel's, on its reference's time scale: local
    time of the first accepted marker plus SI seconds since it (``heraldry.sync.rescale``);
    unchanged without ``reference``. Prints what the markers say."""
    from ..sync import rescale
    if reference is None:
        return times, channels
    marker = channels == reference
    scale = rescale(times[marker], period_s)
    _say_reference(scale, board, reference, period_s)
    keep = ~marker
    return scale.markers_s[0] + scale.to_si(times[keep]), channels[keep]


def _say_reference(scale, board, reference, period_s):
    sys.stdout.write(
        f"reference board {board} (ch {reference}, period {period_s:g} s): clock "
        f"{scale.ppm:+.4f} ppm, drift {scale.drift_ppm_per_s:+.4f} ppm/s, "
        f"{len(scale.markers_s):,} markers, {scale.missing:,} missing, {scale.extra:,} extra, "
        f"residual {scale.residual_s * 1e9:.2f} ns rms\n")


def _ended(live, status):
    """``status``, or after a stop signal its shell status (128 + the signal) with one line."""
    error = live.interrupted
    if error is None:
        return status
    _error(f"interrupted by {getattr(error, 'name', 'SIGINT')}: the link's figures up to then "
           f"are above")
    return 128 + getattr(error, "signum", 2)


def _summary(out, state, fit, losses, locks, synced_s, misses, counts, na, cross):
    out.write(f"lock state: {state} (losses {losses}, locks {locks}; synchronised "
              f"{synced_s:.3f} s)\n")
    if fit is None:
        out.write("no correlation peak found: no offset, nothing merged\n")
        return EXIT_FAILED
    out.write(f"offset: {fit.offset_s * 1e6:.6f} us at board-1 time {fit.t_ref_s:.6f} s\n")
    out.write(f"frequency: {fit.ppm:+.4f} ppm (board 2 against board 1)\n")
    out.write(f"residual jitter: {fit.jitter_s * 1e12:.0f} ps rms\n")
    out.write(f"window misses (estimated): {misses * 100:.2f} %\n")
    span = max(synced_s, 1e-12)
    for c, count in enumerate(counts):
        board, ch = (1, c) if c < na else (2, c - na)
        out.write(f"singles board {board} ch {ch} (merged ch {c}): {count / span:,.1f} /s\n")
    rate = cross / synced_s if synced_s > 0 else 0.0
    out.write(f"cross-node coincidences: {cross:,} ({rate:,.1f} /s)\n")
    return EXIT_OK if state == "locked" else EXIT_FAILED


def _updates(args, channels_a):
    """``(on_update, close)``: the live line, and the /metrics exporter with
    ``--metrics-port`` (``ValueError`` naming the port when it cannot be served).
    ``channels_a``: board 1's channel count (a callable is asked at the first update)."""
    if args.metrics_port is None:
        return (lambda m, b: _live_line(sys.stdout, m, b)), (lambda: None)
    from .linklive import LinkMetrics
    try:
        exporter = LinkMetrics(args.metrics_port,
                               channels_a=1 if callable(channels_a) else channels_a)
    except OSError as error:
        raise ValueError(f"cannot serve /metrics on 127.0.0.1:{args.metrics_port}: "
                         f"{error.strerror}") from None
    sys.stdout.write(f"metrics: http://127.0.0.1:{exporter.port}/metrics\n")

    def update(m, b):
        if callable(channels_a):
            exporter.channels_a = channels_a()
        exporter.update(m, b)
        _live_line(sys.stdout, m, b)
    return update, exporter.close


def _live_line(out, metrics, boards):
    m = metrics
    if m["ppm"] is None:
        what = "no relation yet" if m["state"] != "lost" else "no relation"
    else:
        what = (f"offset {m['offset_s'] * 1e6:12.6f} us  {m['ppm']:+10.4f} ppm  jitter "
                f"{m['jitter_s'] * 1e9:5.2f} ns")
    at = m["at_s"] if m["at_s"] is not None else float("nan")
    misses = m["misses"] * 100 if m["misses"] == m["misses"] else float("nan")
    out.write(f"{at:9.4f} s  {m['state']:<9}  {what}  cross {m['cross_rate_hz']:,.0f} /s  "
              f"misses {misses:.2f} %  losses {m['losses']}  tags {boards[0].tags:,} / "
              f"{boards[1].tags:,}\n")
    out.flush()


def _live(args, kind, sync_a, sync_b):
    from .. import open as open_board
    from ..sim.twin import TwinError
    from .config import ConfigError
    from .driver import BoardSilent, DeviceError, DeviceLost
    from .linklive import link_taggers
    boards = None
    close = None
    try:
        on_update, close = _updates(args, lambda: taggers[0].channels)
        referenced = args.reference_a is not None
        if kind == "sim":
            from ..model.twonode import Clock
            from ..sim.twonode import TwoBoards, build_gates_twin
            ppm = [float(SIM_TARGET.match(t).group(1) or 0) for t in (args.file_a, args.file_b)]
            reference = dict(reference_hz=1 / args.reference_period_s,
                             reference_channel=args.reference_a,
                             binary=build_gates_twin()) if referenced else {}
            boards = TwoBoards(args.duration + 0.03, lead_s=0.02, clock_a=Clock(ppm=ppm[0]),
                               clock_b=Clock(ppm=ppm[1], start_s=args.skew_us * 1e-6),
                               pair_rate_hz=args.pair_rate, efficiency_a=args.efficiency,
                               efficiency_b=args.efficiency, dark_rate_a_hz=args.dark_rate,
                               dark_rate_b_hz=args.dark_rate, fiber_delay_s=args.fiber_us * 1e-6,
                               jitter_s=args.jitter_ps * 1e-12, seed=args.seed, **reference)
            taggers = boards.open()
            time_base = "device"
        else:
            taggers = (open_board(args.file_a), open_board(args.file_b))
            time_base = "start"
        sys.stdout.write(f"board 1: {taggers[0].describe()}\nboard 2: {taggers[1].describe()}\n")
        settings = (None, None)
        if referenced:
            from .tagger import Settings
            settings = (Settings(references=[args.reference_a]),
                        Settings(references=[args.reference_b]))
        live, sides = link_taggers(
            *taggers, *settings, duration=args.duration, time_base=time_base,
            sync_a=sync_a if sync_a is not None else (0,),
            sync_b=sync_b if sync_b is not None else (0,), update_s=args.update_s,
            on_update=on_update,
            reference_period_s=args.reference_period_s if referenced else None,
            **_tracking(args))
        for k, (side, channel) in enumerate(zip(sides, (args.reference_a, args.reference_b))):
            if side.reference is not None:
                _say_reference(side.reference.scale(), k + 1, channel, args.reference_period_s)
    except (ConfigError, TwinError, ValueError) as error:
        _error(error)
        return EXIT_USAGE
    except (DeviceLost, BoardSilent) as error:
        _error(f"a board went away or stopped answering: {error}")
        return EXIT_LOST
    except DeviceError as error:
        _error(error)
        return EXIT_LOST
    finally:
        if close is not None:
            close()
        if boards is not None:
            boards.close()
        elif "taggers" in locals():
            for tagger in taggers:
                tagger.close()
    m = live.metrics()
    return _ended(live, _summary(sys.stdout, m["state"], live.result().fit, m["losses"],
                                 m["locks"], m["synced_s"], m["misses"], live.singles.tolist(),
                                 live.na, m["cross"]))


def _streams(args, sync_a, sync_b):
    from ..extras import MissingExtra
    from ..sync import SyncError
    from .linklive import link_streams
    close = None
    try:
        on_update, close = _updates(args, args.channels_a)
        live, sides = link_streams(
            args.file_a, args.file_b, args.duration, channels_a=args.channels_a,
            channels_b=args.channels_b, sync_a=sync_a if sync_a is not None else (0,),
            sync_b=sync_b if sync_b is not None else (0,), update_s=args.update_s,
            on_update=on_update, **_tracking(args))
    except (MissingExtra, SyncError) as error:
        _error(error)
        return EXIT_USAGE
    except ValueError as error:         # the port, or a message that is not an events message
        _error(error if close is None else f"bad events message: {error}")
        return EXIT_USAGE if close is None else EXIT_FAILED
    finally:
        if close is not None:
            close()
    for k, side in enumerate(sides):
        sys.stdout.write(f"stream {k + 1} {side.endpoint}: {side.messages:,} messages, "
                         f"{side.tags:,} tags, missed {side.missed_messages:,} messages "
                         f"({side.missed_events:,} records)\n")
    m = live.metrics()
    return _ended(live, _summary(sys.stdout, m["state"], live.result().fit, m["losses"],
                                 m["locks"], m["synced_s"], m["misses"], live.singles.tolist(),
                                 live.na, m["cross"]))
