"""``heraldry`` command line: thin layer over :mod:`heraldry.host` (argument parsing, output).

Commands:

* ``heraldry acquire --board sim|sim-inprocess|PORT ...``: one acquisition, summarised. ``sim``
  starts the Verilated virtual board (``sim/twin.py``) and talks to it over its pseudo-terminal
  through the same driver as a real board; ``PORT`` (a device path) is a real board;
  ``sim-inprocess`` runs the core alone in the Amaranth simulator (no link; slow).
  ``replay:FILE.ptu`` plays a PTU T2 file (ours or PicoQuant's) through the same summary
  (``--realtime``: at the recorded pace), see :mod:`heraldry.host.replay`, with the file's
  settings: the options that would set up a board are refused.
  Outputs are checked by :func:`check_output_paths` before anything runs.
  While it runs, a live table on a terminal (plain progress lines once a second when stderr is
  piped; see :mod:`heraldry.host.liveview`); ``--plot DIR`` writes PNG plots at the end
  (:mod:`heraldry.host.plots`).
* ``heraldry sim``: start the virtual board, print its port path, serve until Ctrl-C.

Exit status: 0 success; 2 bad options, a device that is not a heraldry board at the given
port and baud rate, or a missing optional package (:class:`heraldry.extras.MissingExtra`; one
line on stderr, nothing was run, nothing was written to the device); 3 the
run completed but events were dropped (counted and reported; link segments damaged on the way
included: ``link_lost_per_channel``); 4 the board went away during the
run (port closed, cable pulled, virtual board killed) or stopped answering after it had
identified (hung): what was received and verified up to then is saved (``--out``,
``--summary-json`` with ``"complete": false``), a PTU file is finished with its record count
patched, stop reason -10 ("data transfer failed") and the events-dropped flag set; also 4: a
replayed file holds fewer records than its header declares, or declares none (one warning line,
what it holds is replayed and saved, ``"complete": false``, a PTU copy ends with stop reason
-10); 5 an output
file could not be written (disk full, file too large): the run stops at once if it was the PTU
stream, the PTU file keeps the whole records that reached it with its count patched (stop reason
-10, events-dropped flag), a ``.npz``, ``--summary-json`` or plot is written whole or not at all
(never a 0-byte file), the other outputs are still written, the summary is printed on stdout,
and one line names what could not be written (5 outranks 1, 3 and 4); 128 + N stopped by signal
N (130 SIGINT/Ctrl-C, 143 SIGTERM, e.g. from ``timeout``, 129 SIGHUP): the board is stopped and
everything is saved as for 4, but with PTU stop reason 1 ("interrupted"); 1 anything else,
including hardware counters disagreeing with the streamed tags.
"""

import argparse
import errno
import importlib
import json
import math
import os
import re
import signal
import stat
import sys
import time

import numpy as np

from .. import __version__, protocol
from ..extras import MissingExtra, require
from .config import (Acquisition, ConfigError, TEST_SIGNALS, EDGES, ns_to_bins, parse_herald,
                     parse_mask, read_config_file)
from .tagger import REPLAY_PREFIX, VIRTUAL_BOARDS

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DROPPED, EXIT_LOST, EXIT_OUTPUT = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130

def _track_given(parser):
    """Make every option of ``parser`` record its ``dest`` in the namespace's ``given`` set
    when it appears on the command line (argparse alone cannot tell a default from an option
    given with the default's value)."""
    for action in parser._actions:
        if action.dest in (argparse.SUPPRESS, "help"):
            continue
        base = type(action)
        tracked = _TRACKED.get(base)
        if tracked is None:
            def call(self, parser, namespace, values, option_string=None, _base=base):
                given = getattr(namespace, "given", None)
                if given is None:
                    given = set()
                    namespace.given = given
                given.add(self.dest)
                _base.__call__(self, parser, namespace, values, option_string)
            tracked = _TRACKED[base] = type(f"Tracked{base.__name__}", (base,),
                                            {"__call__": call})
        action.__class__ = tracked


_TRACKED = {}

#: The ``acquire`` options a replay takes; the others set up a board, and a file has its own.
REPLAY_OPTIONS = ("board", "out", "summary_json", "plot", "quiet", "realtime")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, exit status 2: the same contract as our own validation errors.
        self.exit(EXIT_USAGE, f"heraldry: error: {message}\n")


def _channel_value(text, what):
    channel, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"{what} {text!r} must look like CHANNEL=VALUE, e.g. 1=2.5")
    try:
        return int(channel), value
    except ValueError:
        raise ConfigError(f"{what} {text!r}: channel {channel!r} is not a number") from None


def _float(text, what):
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a number") from None


def add_test_signal_options(parser, choices, signal_help, pair_delay_help, *,
                            default="pairs"):
    """The test-signal options, shared by every command that can run the built-in signal.
    ``default=None``: the board decides (:func:`test_signal_of`)."""
    parser.add_argument("--test-signal", choices=choices, default=default,
                        help=signal_help + (" (default: pairs on a virtual board, off on a "
                                            "serial port: a real board reads its pins)"
                                            if default is None else f" (default {default})"))
    parser.add_argument("--pair-rate", type=float, default=1e5, metavar="HZ",
                        help="photon pairs per second of the test signal (default 1e5)")
    parser.add_argument("--efficiency", type=float, default=0.5, metavar="P",
                        help="detection probability of each arm (default 0.5)")
    parser.add_argument("--dark-rate", type=float, default=1e3, metavar="HZ",
                        help="dark counts per second per channel (default 1e3)")
    parser.add_argument("--pair-delay", type=float, default=0.0, metavar="NS",
                        help=f"{pair_delay_help} (default 0)")
    parser.add_argument("--seed", type=int, default=1, help="test-signal seed (default 1)")


def build_parser():
    parser = _Parser(prog="heraldry", description="Open FPGA time tagger for photon detectors.")
    parser.add_argument("--version", action="version", version=f"heraldry {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    acq = sub.add_parser("acquire", help="run one acquisition and print a summary")
    acq.add_argument("--board", default="sim",
                     help="sim (the virtual board behind a pty, default), sim-inprocess (the "
                          "core in the Amaranth simulator, slow), or a serial device path")
    acq.add_argument("--baud", type=int, default=None,
                     help="UART rate of the board (default: a serial port's board is tried at "
                          "the known boards' rates, 3000000 then 12000000; the virtual board "
                          "runs at 12000000)")
    acq.add_argument("--duration", type=float, default=0.001, metavar="SECONDS",
                     help="acquisition time in device seconds (default 0.001)")
    acq.add_argument("--channels", type=int, default=None, metavar="N",
                     help="inputs (1..8; default: the board's, 4 on the virtual boards)")
    acq.add_argument("--window", type=float, default=None, metavar="NS",
                     help="coincidence window in ns (default one clock cycle: one 10 ns bin "
                          "on the virtual boards)")
    acq.add_argument("--delay", action="append", default=[], metavar="CH=NS",
                     help="input delay of a channel (repeatable)")
    acq.add_argument("--config", metavar="FILE.json",
                     help="input delays from a file written by heraldry calibrate "
                          "({\"delays_ns\": {CH: NS}}), and test-signal settings "
                          "({\"test_signal\": {\"mode\": \"bsm\", \"period_ns\": 1000, "
                          "...}}, see docs/architecture.md); options given override it")
    acq.add_argument("--dead-time", action="append", default=[], metavar="CH=NS",
                     help="dead time of a channel (repeatable)")
    acq.add_argument("--edge", action="append", default=[], metavar="CH=EDGE",
                     help=f"edge of a channel: {', '.join(EDGES)} (repeatable)")
    acq.add_argument("--disable", action="append", default=[], type=int, metavar="CH",
                     help="ignore a channel (repeatable)")
    acq.add_argument("--stream", action="append", default=[], metavar="CH=MODE",
                     help="which events of a channel are streamed as tags (repeatable): all "
                          "(default), coincident (only those of windows with two or more "
                          "channels) or none; the counters count every event "
                          "(docs/semantics.md, \"Stream filters\")")
    acq.add_argument("--sync", type=int, metavar="CH",
                     help="this channel is the attempt clock: counted, never in a window, "
                          "not streamed (docs/semantics.md, \"Sync, gates and reference "
                          "markers\"; needs a board built with gates)")
    acq.add_argument("--gate", action="append", default=[], metavar="CH:OFFSET_NS:WIDTH_NS",
                     help="count this channel's events only from OFFSET_NS to OFFSET_NS + "
                          "WIDTH_NS after the latest sync edge (repeatable; needs --sync)")
    acq.add_argument("--reference", action="append", default=[], type=int, metavar="CH",
                     help="a reference input (PPS, divided 10 MHz): every edge streamed as a "
                          "marker, never in a window (repeatable)")
    acq.add_argument("--sync-marker-every", type=int, default=0, metavar="N",
                     help="stream every Nth sync edge as a marker (default 0: none)")
    acq.add_argument("--herald", action="append", default=[], metavar="RULE",
                     help="herald rule (repeatable): channel terms such as 'D0&D3&!D1&!D2' "
                          "(Dc required, !Dc vetoed) or a mask such as 0b011 (required), then "
                          "options ',exact' (decide when the window closes; default early: at "
                          "the completing event) and ',pin=P' (rules sharing a pin are OR'ed)")
    acq.add_argument("--herald-width", type=int, default=4, metavar="CYCLES",
                     help="herald output pulse width in clock cycles (default 4)")
    acq.add_argument("--record-coincidences", action="append", default=[], metavar="PATTERN",
                     help="also stream a record for every window of this pattern (repeatable)")
    add_test_signal_options(acq, TEST_SIGNALS, "built-in test signal instead of the pins",
                            "delay of arm B after arm A", default=None)
    acq.add_argument("--period", type=float, default=1000.0, metavar="NS",
                     help="period of the periodic test signal, and of the bsm signal's sync "
                          "(default 1000 ns)")
    acq.add_argument("--bsm-offset", type=float, default=0.0, metavar="NS",
                     help="bsm test signal: the two-photon event this long after each sync, "
                          "within the period (default 0)")
    acq.add_argument("--bsm-event", type=float, default=0.1, metavar="P",
                     help="bsm test signal: probability of a two-photon event per attempt "
                          "(default 0.1)")
    acq.add_argument("--bsm-psi-minus", type=float, default=0.5, metavar="P",
                     help="bsm test signal: probability that an event is psi- (D0&D3 or "
                          "D1&D2), else psi+ (D0&D1 or D2&D3) (default 0.5); --efficiency is "
                          "each detector's, --dark-rate each detector's dark counts")
    acq.add_argument("--out", metavar="FILE.npz|FILE.ptu",
                     help="write every streamed tag and herald record (.npz), or stream "
                          "every record to a "
                          "PicoQuant PTU T2 file while the run goes on (.ptu: heralds and "
                          "recorded coincidences on extra channels, see heraldry.host.ptu)")
    acq.add_argument("--summary-json", metavar="FILE", help="write the summary as JSON")
    acq.add_argument("--anchor-interval", type=int, default=None, metavar="CYCLES",
                     help="close a verified segment of the stream every CYCLES clock cycles "
                          "(default: 1/16 of the run, 2**16..2**20). A damaged segment loses "
                          "its records (counted), so a poor link recovers more with a shorter "
                          "one, e.g. 16384 (costs 15 bytes per segment)")
    acq.add_argument("--quiet", action="store_true", help="no progress or table")
    acq.add_argument("--plot", metavar="DIR",
                     help="at the end, write rates.png, g2.png and patterns.png into DIR "
                          "(see heraldry.host.plots); the summary lists them under \"plots\"")
    acq.add_argument("--realtime", action="store_true",
                     help="with --board replay:FILE.ptu, play at the pace of the recorded time")
    _track_given(acq)
    srv = sub.add_parser("sim", help="start the virtual board and serve it on a pty until Ctrl-C")
    srv.add_argument("--channels", type=int, default=4, metavar="N", help="inputs (1..8)")
    srv.add_argument("--baud", type=int, default=VIRTUAL_BOARDS["sim"]["baud"],
                     help="UART rate of the virtual board (default 12000000)")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        # register() adds its sub-parsers and returns [(name, handler), ...]
        for command, handler in module.register(sub):
            COMMAND_HANDLERS[command] = handler
    return parser


def _is_replay(name):
    return name.startswith(REPLAY_PREFIX)


def _is_port(name):
    return name not in VIRTUAL_BOARDS and not _is_replay(name) and (os.sep in name
                                                             or name.startswith("COM"))


def check_board_args(args):
    """The checks that need no board (ConfigError): board name or port, channels, duration."""
    if _is_replay(args.board):
        if not os.path.isfile(args.board[len(REPLAY_PREFIX):]):
            raise ConfigError(f"--board {args.board}: no such file")
        ignored = sorted(set(getattr(args, "given", ())) - set(REPLAY_OPTIONS))
        if ignored:
            raise ConfigError(f"--{ignored[0].replace('_', '-')} does not apply to a replay: "
                              f"the file's own settings are replayed (a replay takes "
                              f"{', '.join('--' + o.replace('_', '-') for o in REPLAY_OPTIONS)})")
    elif getattr(args, "realtime", False):
        raise ConfigError("--realtime applies to --board replay:FILE.ptu only")
    elif args.board not in VIRTUAL_BOARDS and not _is_port(args.board):
        raise ConfigError(f"unknown board {args.board!r}; use one of "
                          f"{', '.join(VIRTUAL_BOARDS)}, a serial device path such as "
                          f"/dev/ttyUSB1, or replay:FILE.ptu")
    if _is_port(args.board):
        check_port(args.board)
    if args.channels is not None and not 1 <= args.channels <= 8:
        raise ConfigError(f"--channels must be 1..8, not {args.channels}")
    if not 0 < args.duration < math.inf:
        raise ConfigError(f"--duration must be positive and finite, not {args.duration:g}")
    if getattr(args, "baud", None) is not None and args.baud <= 0:
        raise ConfigError(f"--baud must be positive, not {args.baud}")
    interval = getattr(args, "anchor_interval", None)
    if interval is not None:
        reg = protocol.RegisterMap(1, 1)["control.anchor_interval"]
        if _is_replay(args.board) or args.board == "sim-inprocess":
            raise ConfigError("--anchor-interval applies to a board with a link "
                              "(sim or a serial port)")
        if not reg.minimum <= interval <= reg.maximum:
            raise ConfigError(f"--anchor-interval must be {reg.minimum}..{reg.maximum} cycles, "
                              f"not {interval}")


def check_port(path):
    """Refuse (ConfigError) a serial port path that cannot be one: missing, not a character
    device, or not readable and writable by this user. Opening it can still fail (busy)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"--board {path}: no such serial device") from None
    except OSError as error:
        raise ConfigError(f"--board {path}: {error.strerror}") from None
    if not stat.S_ISCHR(mode):
        raise ConfigError(f"--board {path}: not a serial device (not a character device)")
    if not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"--board {path}: no permission to read and write it (on Linux, "
                          f"join the group that owns it, e.g. dialout)")
    if is_own_terminal(path):
        # Binary frames written there would garble the terminal (and leave it raw).
        raise ConfigError(f"--board {path}: that is the terminal heraldry runs in, not the "
                          f"serial port of a board")


def is_own_terminal(path):
    """Whether the character device ``path`` is this process's controlling terminal
    (``/dev/tty``, or the device it stands for) or the terminal of its standard input, output
    or error."""
    try:
        device = os.stat(path).st_rdev
    except OSError:
        return False
    if device == os.makedev(5, 0):          # /dev/tty: always the controlling terminal
        return True
    terminals = set()
    try:
        with open("/proc/self/stat") as f:      # Linux: field 7, tty_nr, after "(comm)"
            tty_nr = int(f.read().rsplit(")", 1)[1].split()[4])
        if tty_nr:
            terminals.add(os.makedev((tty_nr >> 8) & 0xFFF,
                                     (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)))
    except (OSError, ValueError, IndexError):
        pass
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                terminals.add(os.fstat(fd).st_rdev)
        except OSError:
            pass
    return device in terminals


def board_from_identity(identity):
    """The board description :func:`acquisition_from_args` needs, from a device's
    identification."""
    return {"clock_hz": float(identity.clock_hz), "fine_bits": identity.fine_bits,
            "rules": identity.rules, "channels": identity.channels, "bin_ps": identity.bin_ps,
            "fixed_channels": True, "identity": identity,
            "test_signal": bool(identity.capabilities & protocol.CAPABILITY_TEST_SIGNAL)}


def test_signal_of(args):
    """``--test-signal`` as given, else the board's default: the photon-pair test signal on a
    virtual board (it has no pins), ``off`` on a serial port (a real board measures its pins
    unless asked otherwise, so a forgotten option never passes synthetic photons off as data)."""
    if args.test_signal is not None:
        return args.test_signal
    return "pairs" if args.board in VIRTUAL_BOARDS else "off"


def settings_from_args(args, identity):
    """Map parsed ``acquire`` options onto the API's :class:`~heraldry.host.tagger.Settings`
    (nanoseconds, as typed). Only the command line's own syntax is checked here (``CH=VALUE``
    pairs, a channel named twice, a channel the board lacks, the ``--config`` file); the values
    are validated against the board by :func:`~heraldry.host.tagger.settings_to_acquisition`,
    the one conversion the API uses too."""
    from .tagger import Settings
    n = identity.channels

    def per_channel(options, what, convert, initial=None):
        # An option overrides the config file's entry for its channel; the same channel twice
        # among the options is refused (which one was meant?).
        values = dict(initial or {})
        given = set()
        for text in options:
            channel, value = _channel_value(text, what)
            if not 0 <= channel < n:
                raise ConfigError(f"{what} {text!r}: no channel {channel} "
                                  f"(channels are 0..{n - 1})")
            if channel in given:
                raise ConfigError(f"{what} {text!r}: channel {channel} is given twice")
            given.add(channel)
            values[channel] = convert(value)
        return values

    delays, from_file = {}, {}
    if getattr(args, "config", None):
        what = f"--config {args.config}: delay"
        file_delays, file_signal = read_config_file(args.config)
        # The file's test-signal values, where the option is not given on the command line.
        given = getattr(args, "given", set())
        from_file = {field: value for field, value in file_signal.items()
                     if _SETTING_OPTIONS.get(field) not in given}
        for channel, ns in sorted(file_delays.items()):
            if not 0 <= channel < n:
                raise ConfigError(f"{what} {f'{channel}={ns!r}'!r}: no channel {channel} "
                                  f"(channels are 0..{n - 1})")
            # Checked here too, so that a bad value names the file it came from.
            ns_to_bins(what, ns, identity.bin_ps, 0, 2 ** protocol.DELAY_BITS - 1)
            delays[channel] = ns
    delays = per_channel(args.delay, "--delay", lambda v: _float(v, "--delay"), delays)
    dead = per_channel(args.dead_time, "--dead-time", lambda v: _float(v, "--dead-time"))
    edges = per_channel(args.edge, "--edge", str)
    # The config file's stream modes, each overridden by a --stream for its channel.
    file_stream = from_file.pop("stream", {})
    for channel in file_stream:
        if not 0 <= channel < n:
            raise ConfigError(f"--config {args.config}: stream channel {channel}: no such "
                              f"channel (channels are 0..{n - 1})")
    stream = per_channel(getattr(args, "stream", []), "--stream", str, file_stream)
    disabled = []
    for ch in args.disable:
        if not 0 <= ch < n:
            raise ConfigError(f"--disable {ch}: no such channel (channels are 0..{n - 1})")
        if ch in disabled:
            raise ConfigError(f"--disable {ch}: channel {ch} is given twice")
        disabled.append(ch)
    gates = {}
    for text in getattr(args, "gate", []):
        parts = text.split(":")
        if len(parts) != 3:
            raise ConfigError(f"--gate {text!r} is not CH:OFFSET_NS:WIDTH_NS, e.g. 2:40:25")
        try:
            channel = int(parts[0])
        except ValueError:
            raise ConfigError(f"--gate {text!r}: channel {parts[0]!r} is not a number")                 from None
        if not 0 <= channel < n:
            raise ConfigError(f"--gate {text!r}: no channel {channel} (channels are "
                              f"0..{n - 1})")
        if channel in gates:
            raise ConfigError(f"--gate {text!r}: channel {channel} is given twice")
        gates[channel] = (_float(parts[1], f"--gate {text!r}: offset"),
                          _float(parts[2], f"--gate {text!r}: width"))
    # Parsed here, so that a bad rule or pattern is refused in the option's own words.
    heralds = tuple(parse_herald(text, n, identity.rules) for text in args.herald)
    patterns = tuple(parse_mask(text, n, "--record-coincidences pattern")
                     for text in args.record_coincidences)
    signal = dict(
        test_signal=test_signal_of(args) if "test_signal" not in from_file else None,
        pair_rate_hz=args.pair_rate, efficiency=args.efficiency, dark_rate_hz=args.dark_rate,
        pair_delay_ns=args.pair_delay, period_ns=args.period, seed=args.seed,
        bsm_offset_ns=getattr(args, "bsm_offset", 0.0),
        bsm_event_probability=getattr(args, "bsm_event", 0.1),
        bsm_psi_minus=getattr(args, "bsm_psi_minus", 0.5))
    signal.update(from_file)
    return Settings(
        window_ns=args.window, delays_ns=delays, dead_times_ns=dead, edges=edges,
        disabled=tuple(disabled), heralds=heralds, herald_width=args.herald_width,
        record_coincidences=patterns, stream=stream, sync=getattr(args, "sync", None),
        references=tuple(getattr(args, "reference", ())), gates_ns=gates,
        sync_marker_every=getattr(args, "sync_marker_every", 0), **signal)


#: The ``acquire`` option (argparse ``dest``) of each test-signal setting a config file may set.
_SETTING_OPTIONS = {
    "test_signal": "test_signal", "seed": "seed", "period_ns": "period",
    "pair_rate_hz": "pair_rate", "efficiency": "efficiency", "dark_rate_hz": "dark_rate",
    "pair_delay_ns": "pair_delay", "bsm_offset_ns": "bsm_offset",
    "bsm_event_probability": "bsm_event", "bsm_psi_minus": "bsm_psi_minus",
    "bsm_efficiencies": None,
}


def acquisition_from_args(args, board=None):
    """Turn parsed ``acquire`` options into a validated :class:`Acquisition` (or ConfigError),
    through the API's :class:`~heraldry.host.tagger.Settings` and its one conversion; messages
    and rounding notes name the command-line options.

    ``board``: ``{"clock_hz", "fine_bits", "rules", "channels"}`` (plus ``"bin_ps"``,
    ``"fixed_channels"``, ``"test_signal"`` and ``"identity"`` for a real board, see
    :func:`board_from_identity`); default: the named board of ``--board``."""
    from .tagger import option_message, settings_to_acquisition, sim_identity
    check_board_args(args)
    if board is None:
        board = VIRTUAL_BOARDS[args.board]
    n = board["channels"] if args.channels is None else args.channels
    if board.get("fixed_channels") and n != board["channels"]:
        raise ConfigError(f"--channels {n}: the board has {board['channels']} channels")
    identity = board.get("identity") or sim_identity(n, board)
    test_signal = test_signal_of(args)
    if test_signal != "off" and not board.get("test_signal", True):
        raise ConfigError(f"--test-signal {test_signal}: this board's gateware has no "
                          f"built-in test signal; use --test-signal off to read the pins")
    if args.duration * board["clock_hz"] < 1:
        raise ConfigError(f"--duration {args.duration:g} s is shorter than one clock cycle "
                          f"({1 / board['clock_hz']:g} s)")
    settings = settings_from_args(args, identity)
    try:
        acq, notes = settings_to_acquisition(settings, identity)
    except ConfigError as error:
        raise ConfigError(option_message(error)) from None
    return acq, [option_message(note) for note in notes]


def _file_key(path):
    """What makes two names one file: device and inode of a file that exists (through
    symlinks, hard links, relative or absolute names), else the resolved absolute name."""
    try:
        info = os.stat(path)
    except OSError:
        return ("name", os.path.realpath(path))
    return ("inode", info.st_dev, info.st_ino)


def check_output_paths(outputs, inputs=()):
    """Refuse (ConfigError, one line) outputs that cannot be written, or that would overwrite
    an input or another output of the same command. One rule for every output option of every
    command: nothing is written or created before it passes.

    ``outputs``: ``[(what, path, kind)]``: ``what`` names the option in the message
    (``"--out"``), ``kind`` is ``"file"`` or ``"folder"`` (a folder, such as ``--plot DIR``,
    may be missing: it is made when written; list the files written into it as outputs too).
    A file's folder must exist (no folders are created for it) and be writable; an existing
    output must be writable and a file must not be a folder. A PTU output (``.ptu``) also
    claims its rotation parts (``NAME-001.ptu``, ...). ``inputs``: ``[(what, path)]`` read by
    the command (config files, replayed files, the serial port); one that does not exist is
    left to its own check."""
    seen = {}           # file key -> (what, path) of the output or input that has it
    for what, path in inputs:
        if os.path.exists(path):
            seen.setdefault(_file_key(path), (what, path))
    parts = []          # (regular expression of an output's rotation parts, what, path)
    made = set()        # folder outputs that do not exist yet: made when written
    # Folders first: the files written into them are checked against them.
    for what, path, kind in sorted(outputs, key=lambda output: output[2] != "folder"):
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.realpath(parent) in made:
            pass        # checked as the folder output
        elif not os.path.isdir(parent):
            raise ConfigError(f"{what} {path}: no such folder {parent} (folders are not "
                              f"created for outputs)")
        elif os.path.isdir(path) != (kind == "folder") and os.path.exists(path):
            raise ConfigError(f"{what} {path}: " + ("is a folder, not a file" if kind == "file"
                                                     else "is not a folder"))
        elif not os.access(path if os.path.exists(path) else parent, os.W_OK):
            raise ConfigError(f"{what} {path}: no permission to write it")
        if kind == "folder" and not os.path.exists(path):
            made.add(os.path.realpath(path))
        key = _file_key(path)
        if key in seen:
            other_what, other = seen[key]
            raise ConfigError(f"{what} {path} is the same file as {other_what} {other}: "
                              f"choose another name (nothing was written)")
        seen[key] = (what, path)
        if _is_ptu(path):
            root, ext = os.path.splitext(os.path.realpath(path))
            parts.append((re.escape(root) + r"-\d{3,}" + re.escape(ext), what, path))
    for pattern, what, path in parts:
        for other_what, other in [*inputs, *((w, p) for w, p, _ in outputs)]:
            if re.fullmatch(pattern, os.path.realpath(other)):
                raise ConfigError(f"{what} {path} would overwrite {other_what} {other} with "
                                  f"its rotation part: choose another name (nothing was "
                                  f"written)")
    for _, what, path in parts:
        from .ptu import part_path
        stale = part_path(path, 1)
        if os.path.exists(stale):
            raise ConfigError(f"{what} {path}: {stale} exists (a rotation part of an earlier "
                              f"run, which a replay of {path} would join): remove it or choose "
                              f"another name")


def acquire_paths(args):
    """``(outputs, inputs)`` of ``heraldry acquire`` for :func:`check_output_paths`;
    ConfigError for an ``--out`` name that is neither ``.npz`` nor ``.ptu``."""
    from .plots import PLOT_FILES
    outputs, inputs = [], []
    if args.out:
        if not (_is_ptu(args.out) or args.out.endswith(".npz")):
            raise ConfigError(f"--out {args.out}: the name must end in .npz (tags) or .ptu "
                              f"(PTU T2 records)")
        outputs.append(("--out", args.out, "file"))
    if args.summary_json:
        outputs.append(("--summary-json", args.summary_json, "file"))
    if args.plot:
        outputs.append(("--plot", args.plot, "folder"))
        outputs += [(f"--plot {args.plot}:", os.path.join(args.plot, name), "file")
                    for name in PLOT_FILES.values()]
    if getattr(args, "config", None):
        inputs.append(("--config", args.config))
    if _is_replay(args.board):
        from .replay import replay_parts
        inputs += [(f"--board {REPLAY_PREFIX}", p)
                   for p in replay_parts(args.board[len(REPLAY_PREFIX):])]
    elif _is_port(args.board):
        inputs.append(("--board", args.board))
    return outputs, inputs


def _error(message):
    sys.stderr.write(f"heraldry: error: {message}\n")


def _is_ptu(path):
    return path is not None and path.lower().endswith(".ptu")


def _run_on_board(args, acq, progress, sink_for=None):
    """Open the board of ``--board`` (``sim`` or a serial port) with :func:`heraldry.open`,
    build the acquisition if not given (a real board describes itself), run it as the API's
    :meth:`~heraldry.host.tagger.Tagger.run` with every record kept. ``sink_for(acq)`` returns
    the run's ``sink`` (or raises ValueError: a usage error). Returns ``(result, None)`` or
    ``(None, exit status)``; a run cut short raises as :class:`~heraldry.host.tagger.DeviceRun`
    says, with the partial result."""
    from ..sim.twin import TwinError
    from .driver import IdentificationError
    from .tagger import open as open_board, option_message
    from .tally import READ_INTERVAL_CYCLES
    from .transport import TransportError
    sim = args.board == "sim"
    try:
        tagger = open_board(args.board, baud=args.baud, channels=acq.channels if sim else None)
    except ConfigError as error:
        _error(option_message(error))
        return None, EXIT_USAGE
    except TransportError as error:
        if sim:
            raise
        _error(f"--board {args.board}: {error}")        # e.g. busy: held by another program
        return None, EXIT_USAGE
    except IdentificationError as error:
        if sim:
            raise           # our own virtual board: a bug, not a usage error
        # Nothing but READs of ident.* was sent: the board was not touched.
        _error(error)
        return None, EXIT_USAGE
    except TwinError as error:
        _error(error)
        return None, EXIT_FAILED
    with tagger:
        identity = tagger.identity
        if acq is None:
            try:
                acq, notes = acquisition_from_args(args, board_from_identity(identity))
            except ConfigError as error:
                _error(error)
                return None, EXIT_USAGE
            for note in notes:
                sys.stderr.write(f"heraldry: note: {note}\n")
        if not args.quiet:
            sys.stderr.write(f"heraldry: {tagger.device.transport.name}: gateware "
                             f"{identity.gateware_version}, {identity.channels} channels, "
                             f"{identity.clock_hz / 1e6:g} MHz; acquiring "
                             f"{args.duration * 1e3:g} ms of device time...\n")
        sink = None
        if sink_for is not None:
            try:
                sink = sink_for(acq)
            except ValueError as error:
                _error(error)
                return None, EXIT_USAGE
        # Counters read every READ_INTERVAL_CYCLES (2**30 cycles) rather than from STATUS
        # snapshots: the summary needs no live counts, and the link carries only the run's
        # records and the polls' replies (snapshots add about 2 % of the link's bytes).
        run = tagger.run(acq, args.duration, keep=True, progress=progress, sink=sink,
                         anchor_interval=args.anchor_interval,
                         counter_read_cycles=READ_INTERVAL_CYCLES)
        with run:
            run.wait()
        return run.result, None


def cmd_acquire(args):
    from .driver import BoardSilent, DeviceError, DeviceLost
    from .transport import TransportError
    acq = None
    replay = None
    try:
        if _is_port(args.board):
            check_board_args(args)      # the rest needs the board's identification
        elif _is_replay(args.board):
            check_board_args(args)      # the file says the rest
            from .replay import ReplaySource
            try:
                replay = ReplaySource(args.board[len(REPLAY_PREFIX):], realtime=args.realtime)
            except (OSError, ValueError, KeyError) as error:
                raise ConfigError(f"--board {args.board}: cannot replay: {error}") from None
            acq, notes = replay.acquisition, []
        else:
            acq, notes = acquisition_from_args(args)
    except ConfigError as error:
        _error(error)
        return EXIT_USAGE
    try:
        check_output_paths(*acquire_paths(args))
    except ConfigError as error:
        _error(error)
        return EXIT_USAGE
    if args.plot:   # (DIR, checked above, is made when the plots are written)
        require("matplotlib", "--plot")         # before the run, not after it
    if acq is not None:
        for note in notes:
            sys.stderr.write(f"heraldry: note: {note}\n")
    tty = not args.quiet and sys.stderr.isatty()
    # Live table on a terminal, a plain line a second when piped, nothing with --quiet.
    from .liveview import LiveView
    # A replay runs for the time its records reach (it takes no --duration).
    duration = args.duration if replay is None else replay.seconds
    live = None if args.quiet else LiveView(duration)
    progress = None if live is None else live.progress
    writers = []    # the PTUWriter of --out FILE.ptu, made once the acquisition is known

    def ptu_sink(acq):
        if not writers:
            from .ptu import PTUWriter
            options = {k: v for k, v in vars(args).items() if k not in ("command", "given")}
            writers.append(PTUWriter.for_acquisition(
                args.out, acq, {"board": args.board, "duration_s": duration,
                                "options": options},
                comment=f"heraldry acquire --board {args.board}, {duration:g} s"))
        return writers[0].write_block
    sink_for = ptu_sink if _is_ptu(args.out) else None
    if sink_for is not None and acq is not None:
        try:
            sink_for(acq)       # refuse an impossible channel map before anything runs
        except ValueError as error:
            _error(error)
            return EXIT_USAGE
        except OSError as error:        # not even the header fits (a full disk)
            _error(f"cannot write {error.filename}: {error.strerror}; nothing was run "
                   f"(no PTU file left)")
            return EXIT_OUTPUT
    if live is not None:
        sink_for = _tee_sink_for(live.start, sink_for)
    from .ptu import StopReason
    result = None
    ended = None        # the exception that cut the run short, if it left a partial result
    stop_reason = StopReason.TRANSFER_FAILED    # unless interrupted, or the run completes
    try:
        result, status = _acquire(args, acq, progress, sink_for, replay)
        if result is None:
            return status
    except DeviceLost as error:
        if tty:
            sys.stderr.write("\n")
        if error.partial is None:
            saved = (f"; {writers[0].paths[0]} holds no records" if writers else "")
            what = ("stopped answering" if isinstance(error, BoardSilent) else "went away")
            _error(f"the board {what} before the run started ({error}){saved}")
            return EXIT_LOST
        result, ended = error.partial, error    # saved below, marked incomplete
    except (DeviceError, TransportError) as error:
        if tty:
            sys.stderr.write("\n")
        _error(error)
        return EXIT_FAILED
    except KeyboardInterrupt as error:      # SIGINT, SIGTERM or SIGHUP (host.interrupt)
        if tty:
            sys.stderr.write("\n")
        if getattr(error, "partial", None) is None:     # not a board run, or before its start
            stop_reason = StopReason.MANUAL
            saved = ""
            if _close_early(writers, stop_reason):
                saved = (f"; saved {writers[0].records} PTU records to "
                         f"{', '.join(writers[0].paths)} (stop reason 1, interrupted; flagged "
                         f"incomplete)")
            sys.stderr.write(f"heraldry: interrupted by {_signal_name(error)}{saved}\n")
            return _interrupted_status(error)
        result, ended = error.partial, error
    except OSError as error:                # an output could not be written (the disk is full)
        if tty:
            sys.stderr.write("\n")
        if getattr(error, "partial", None) is None:     # not a board run, or before its start
            saved = ""
            if writers:
                _close_early(writers, stop_reason)
                saved = "; " + _ptu_saved(writers[0])
            elif _is_ptu(args.out):     # its header did not fit: made after identification
                saved = "; no PTU file left (not even its header fitted)"
            _error(f"cannot write {error.filename}: {error.strerror}{saved}")
            return EXIT_OUTPUT
        result, ended = error.partial, error
    finally:
        if result is None and writers:
            # Whatever was streamed stays readable; the header says why it ends early.
            try:
                writers[0].close(stop_reason=stop_reason, incomplete=True)
            except OSError:
                pass            # reported above (the same full disk)
    from .acquire import print_summary, summarise
    if ended is not None:
        return _save_partial(args, result, writers, ended)
    if live is not None:
        live.finish(getattr(result, "counters", None))      # (a replay's is a tuple)
    if replay is not None:
        result, replay_checks = result
    summary = summarise(result, board=args.board)
    if replay is not None:
        # A file has no hardware counters (the summary's are the model's, from its tags): its
        # checks are the ones a file can prove, and its declared losses count as dropped.
        summary["checks"] = replay_checks
        summary["dropped"] += replay.events_lost
        summary["file_events_lost"] = replay.events_lost
        summary["skipped_special_records"] = replay.skipped_special
        summary["file_records"] = replay.records
        summary["file_records_declared"] = replay.records_declared
        if replay.incomplete:
            summary["complete"] = False
            summary["incomplete"] = replay.incomplete
    failed = []         # (what, OSError) of each output that could not be written
    if writers:
        seconds = result.device_seconds or result.duration_s
        try:
            writers[0].close(acquisition_time_s=seconds,
                             input_rates_hz=[s / seconds if seconds else 0
                                             for s in summary["singles"]],
                             events_dropped=summary["dropped"], summary=summary,
                             stop_reason=_completed_stop_reason(summary))
        except OSError as error:
            failed.append((_ptu_saved(writers[0]), error))
        else:
            if not args.quiet:
                sys.stderr.write(f"heraldry: wrote {writers[0].records} PTU records to "
                                 f"{', '.join(writers[0].paths)}\n")
    elif args.out:
        try:
            _write_npz(args.out, result.events)
        except OSError as error:
            failed.append((f"{args.out} not written", error))
    if args.plot:
        from .plots import write_plots
        try:
            summary["plots"] = write_plots(result, summary, args.plot)
        except OSError as error:
            failed.append((f"plots in {args.plot} incomplete", error))
    if args.summary_json:
        try:
            _write_json(args.summary_json, summary)
        except OSError as error:
            failed.append((f"{args.summary_json} not written", error))
    if not args.quiet:
        print_summary(summary)
    else:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    if failed:
        _output_error(failed)
        return EXIT_OUTPUT
    if summary["complete"] is False:        # a replayed file cut short or never finished
        sys.stderr.write(f"heraldry: warning: {summary['incomplete']}; replayed "
                         f"{summary['device_seconds']:g} s of records, marked \"complete\": "
                         f"false\n")
        return EXIT_LOST
    if not all(summary["checks"].values()):
        return EXIT_FAILED
    if summary["dropped"]:
        return EXIT_DROPPED
    return EXIT_OK


def _close_early(writers, stop_reason):
    """Finish the PTU file of a run that ended without a result (flagged incomplete); whether
    it was finished without an error (a full disk was reported already)."""
    if not writers:
        return False
    try:
        writers[0].close(stop_reason=stop_reason, incomplete=True)
    except OSError:
        return False
    return writers[0].failed is None


def _signal_name(error):
    """The signal behind a KeyboardInterrupt (SIGINT unless host.interrupt says otherwise)."""
    return getattr(error, "name", "SIGINT")


def _interrupted_status(error):
    """128 + the signal's number, as a shell reports a process ended by it."""
    return 128 + getattr(error, "signum", signal.SIGINT)


def _write_npz(path, events):
    """``--out FILE.npz``: of ``events`` (``EVENT_DTYPE``), every tag's ``channel`` and
    ``time_ps``, and every herald record's ``herald_time_ps``, ``herald_rule``,
    ``herald_pattern``, ``herald_attempt`` and ``herald_sync_offset`` (bins; the attempt clock
    of a board with gates, else 0), written whole or not at all. (NumPy adds ``.npz`` to a
    name without it; so does this.) Files written before the herald arrays existed hold
    ``channel`` and ``time_ps`` only."""
    from ..protocol import Kind
    from .outputs import write_atomically
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    tags = events[events["kind"] == Kind.TAG.value]
    heralds = events[events["kind"] == Kind.HERALD.value]
    write_atomically(path, lambda f: np.savez(
        f, channel=tags["channel"].astype(np.uint8), time_ps=tags["time_ps"].astype(np.int64),
        herald_time_ps=heralds["time_ps"].astype(np.int64),
        herald_rule=heralds["channel"].astype(np.uint8),
        herald_pattern=heralds["pattern"].astype(np.uint16),
        herald_attempt=heralds["attempt"].astype(np.uint32),
        herald_sync_offset=heralds["sync_offset"].astype(np.uint32)))


def _write_json(path, summary):
    from .outputs import write_atomically

    def write(f):
        json.dump(summary, f, indent=1)
        f.write("\n")
    write_atomically(path, write, mode="w")


def _ptu_saved(writer, reason="stop reason -10, data transfer failed"):
    """What a PTU writer that could not write everything left behind, for the error line."""
    if not writer.paths:
        return "no PTU file left (not even its header fitted)"
    return (f"{writer.records} PTU records kept in {', '.join(writer.paths)} (count patched, "
            f"{reason}, events-dropped flag set)")


def _output_error(failed):
    """One line for every output that could not be written."""
    _error("; ".join(f"cannot write {error.filename}: {error.strerror} ({what})"
                     for what, error in failed)
           + "; the summary is on stdout")


def _save_partial(args, result, writers, ended):
    """A run cut short (``ended``: the board went away (:class:`DeviceLost`) or stopped
    answering (:class:`BoardSilent`), a stop signal (KeyboardInterrupt), an output that could
    not be written (OSError)): finish every output with what was received and verified, print
    the summary, say in one line what happened and what was saved. Returns :data:`EXIT_LOST`,
    128 + the signal's number, or :data:`EXIT_OUTPUT` (also when any output fails here)."""
    from .acquire import print_summary, summarise
    from .driver import BoardSilent, DeviceError, DeviceLost
    from .ptu import StopReason
    summary = summarise(result, board=args.board)
    saved = []
    failed = []
    into = f"{result.device_seconds * 1e3:.1f} ms of device time into the run"
    if isinstance(ended, KeyboardInterrupt):
        head = f"interrupted by {_signal_name(ended)} {into}"
        stop_reason, reason_text = StopReason.MANUAL, "stop reason 1, interrupted"
        status = _interrupted_status(ended)
    else:
        if isinstance(ended, BoardSilent):
            head = f"the board stopped answering {into} ({result.error})"
        elif isinstance(ended, DeviceLost):
            head = f"the board went away {into} ({result.error})"
        else:
            head = f"cannot write {ended.filename}: {ended.strerror}; the run was stopped {into}"
        stop_reason, reason_text = StopReason.TRANSFER_FAILED, "stop reason -10, data " \
            "transfer failed"
        status = EXIT_OUTPUT if isinstance(ended, OSError) and not isinstance(
            ended, DeviceError) else EXIT_LOST
    # Records of the segment open at the end were received but never verified: lost too.
    lost = summary["dropped"] + (summary["unverified"] or 0)
    if writers:
        writer = writers[0]
        seconds = result.device_seconds
        try:
            writer.close(acquisition_time_s=seconds, stop_reason=stop_reason,
                         input_rates_hz=[t / seconds if seconds else 0
                                         for t in summary["tags_per_channel"]],
                         events_dropped=lost, summary=summary, incomplete=True)
        except OSError as error:
            failed.append((_ptu_saved(writer), error))
        if writer.failed is not None and writer.failed is ended:
            saved.append(_ptu_saved(writer, reason_text))
        elif not failed:
            saved.append(f"{writer.records} PTU records to {', '.join(writer.paths)} "
                         f"({reason_text}; flagged incomplete"
                         + (f", {lost} records lost" if lost else "") + ")")
    elif args.out:
        try:
            _write_npz(args.out, result.events)
            saved.append(f"{len(result.tags)} tags to {args.out}")
        except OSError as error:
            failed.append((f"{args.out} not written", error))
    if args.summary_json:
        try:
            _write_json(args.summary_json, summary)
            saved.append(f"the summary to {args.summary_json}")
        except OSError as error:
            failed.append((f"{args.summary_json} not written", error))
    if args.quiet:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_summary(summary)
    what = "; saved " + " and ".join(saved) if saved else "; nothing was saved" + (
        "" if failed or args.out or args.summary_json else " (no --out)")
    problems = "".join(f"; cannot write {error.filename}: {error.strerror} ({w})"
                       for w, error in failed)
    line = f"{head}; {summary['tags']} tags received and verified{what}{problems}"
    if isinstance(ended, KeyboardInterrupt) and not failed:
        sys.stderr.write(f"heraldry: {line}\n")      # what the user asked for: not an error
    else:
        _error(line)
    return EXIT_OUTPUT if failed else status


def _completed_stop_reason(summary):
    """PTU stop reason of a run that ran its time: FIFO overrun if the board dropped events,
    queue overrun if the host's queue did, data transfer failed if only the link lost records
    (damaged segments), else time over. (The acquisition time stays the run's; the
    events-dropped warning flag and count cover every cause.)"""
    from .ptu import StopReason
    if summary.get("complete") is False:        # replayed from a file cut short
        return StopReason.TRANSFER_FAILED
    board = sum(sum(summary.get(group) or []) for group in (
        "merger_dropped", "delay_dropped", "herald_dropped", "coincidence_dropped"))
    if board:
        return StopReason.FIFO_OVERRUN
    if sum(summary.get("host_dropped") or []):
        return StopReason.QUEUE_OVERRUN
    if summary.get("stream_verified") is False:
        return StopReason.TRANSFER_FAILED
    return StopReason.TIME_OVER


def _tee_sink_for(first, second):
    """``sink_for(acq)`` giving both sinks ``first(acq)`` and ``second(acq)`` (may be None)."""
    def sink_for(acq):
        sinks = [f(acq) for f in (second, first) if f is not None]

        def sink(events):
            for s in sinks:
                s(events)
        return sink
    return sink_for


def _acquire(args, acq, progress, sink_for, replay=None):
    """Run on the board of ``--board``; ``(result, None)`` or ``(None, exit status)``."""
    if replay is not None:
        from .replay import acquire_replay
        sink = sink_for(acq) if sink_for is not None else None
        if not args.quiet:
            sys.stderr.write(f"heraldry: replaying {', '.join(replay.paths)} "
                             f"({replay.records} records, {replay.seconds:g} s)...\n")
        return acquire_replay(replay, progress=progress, sink=sink), None
    if args.board == "sim-inprocess":
        from .acquire import acquire_sim
        if not args.quiet:
            sys.stderr.write(f"heraldry: simulating {args.duration * 1e3:g} ms of device "
                             f"time ({int(round(args.duration * acq.clock_hz))} cycles) on "
                             f"the {acq.channels}-channel core in-process...\n")
        sink = sink_for(acq) if sink_for is not None else None
        return acquire_sim(acq, args.duration, progress=progress, sink=sink), None
    return _run_on_board(args, acq if args.board == "sim" else None, progress, sink_for)


def cmd_sim(args):
    """Serve the virtual board until Ctrl-C (or SIGTERM, or SIGHUP).

    The harness exits when its last client closes the pty; this command keeps the pty's slave
    open itself (it never reads from it), so clients can come and go and the board keeps its
    state between them, like a real board on a USB-serial bridge.
    """
    if not 1 <= args.channels <= 8:
        _error(f"--channels must be 1..8, not {args.channels}")
        return EXIT_USAGE
    sim = VIRTUAL_BOARDS["sim"]
    if args.baud <= 0 or sim["clock_hz"] < 4 * args.baud:
        _error(f"--baud must be 1..{sim['clock_hz'] // 4}, not {args.baud}")
        return EXIT_USAGE
    from ..sim.twin import Twin, TwinError

    def terminate(signum, frame):
        raise KeyboardInterrupt
    # SIGTERM and SIGHUP (the terminal closed) stop it as Ctrl-C does: left to their default
    # action they would end this process and leave the virtual board's process running.
    stop_signals = (signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, terminate) for s in stop_signals}
    twin = None
    hold = None
    try:
        twin = Twin(channels=args.channels, rules=sim["rules"], clock_hz=sim["clock_hz"],
                    baud=args.baud)
        twin.start()
        hold = os.open(twin.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        sys.stdout.write(f"{twin.port}\n")
        sys.stdout.flush()
        sys.stderr.write(f"heraldry: virtual board ({args.channels} channels, "
                         f"{sim['clock_hz'] / 1e6:g} MHz, {args.baud} baud) on "
                         f"{twin.port}; e.g. heraldry acquire --board {twin.port} "
                         f"--test-signal pairs (a serial port reads its pins by default). "
                         f"Ctrl-C to stop.\n")
        while twin.returncode is None:
            time.sleep(0.2)
        _error(f"the virtual board exited ({twin.returncode})")
        return EXIT_FAILED
    except TwinError as error:
        _error(error)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if hold is not None:
            os.close(hold)
        if twin is not None:
            twin.stop()


# Further commands live in their own modules: each has ``register(subparsers)`` that adds its
# sub-parsers and returns ``[(name, handler), ...]``; ``handler(args)`` returns the exit status.
COMMAND_MODULES = ["heraldry.host.cmd_calibrate", "heraldry.host.cmd_board",
                   "heraldry.host.cmd_serve", "heraldry.host.cmd_selftest",
                   "heraldry.host.cmd_relay", "heraldry.host.cmd_link"]
COMMAND_HANDLERS = {}


class _StandardStream:
    """``sys.stdout`` or ``sys.stderr`` that may go away: a pipe whose reader quit (EPIPE), a
    terminal that hung up (EIO, e.g. closed before its SIGHUP). The first write that fails so
    points the stream at the null device and drops it; what the command is finishing (its
    files, its exit status) goes on. Other errors propagate."""

    _GONE = (errno.EPIPE, errno.EIO)

    def __init__(self, stream):
        self._stream = stream
        self.gone = False

    def write(self, text):
        if self.gone:
            return len(text)
        try:
            return self._stream.write(text)
        except OSError as error:
            if error.errno not in self._GONE:
                raise
            self._drop()
            return len(text)

    def flush(self):
        if self.gone:
            return
        try:
            self._stream.flush()
        except OSError as error:
            if error.errno not in self._GONE:
                raise
            self._drop()

    def _drop(self):
        self.gone = True
        try:
            # What is still buffered goes nowhere, also at the interpreter's exit.
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):
            pass        # not a file descriptor (a test's capture): dropped all the same

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv=None):
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _StandardStream(sys.stdout), _StandardStream(sys.stderr)
    try:
        return _main(argv)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = saved


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "acquire":
            from .interrupt import stop_on_signals
            with stop_on_signals():
                try:
                    return cmd_acquire(args)
                except KeyboardInterrupt as error:       # before the run, or while finishing
                    sys.stderr.write(f"heraldry: interrupted by {_signal_name(error)}\n")
                    return _interrupted_status(error)
        if args.command == "sim":
            return cmd_sim(args)
        if args.command in COMMAND_HANDLERS:
            return COMMAND_HANDLERS[args.command](args)
    except MissingExtra as error:       # an optional package the command needs (one line)
        _error(error)
        return EXIT_USAGE
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
