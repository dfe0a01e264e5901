"""``heraldry`` command line: thin layer over :mod:`heraldry.host` (argument parsing, output).

Exit status: 0 success; 2 bad options (one line on stderr, nothing was run); 3 the run completed
but events were dropped (counted and reported); 1 anything else, including hardware counters
disagreeing with the streamed tags.
"""

import argparse
import json
import sys

import numpy as np

from .config import Acquisition, ConfigError, TEST_SIGNALS, EDGES, ns_to_bins, parse_mask

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DROPPED = 0, 1, 2, 3

# The in-process virtual board: generic PHY at 100 MHz, so one bin is 10 ns.
BOARDS = {"sim": {"clock_hz": 100e6, "fine_bits": 0, "rules": 2}}


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


def build_parser():
    parser = _Parser(prog="heraldry", description="Open FPGA time tagger for photon detectors.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    acq = sub.add_parser("acquire", help="run one acquisition and print a summary")
    acq.add_argument("--board", default="sim", help="board to use (sim: the simulated core)")
    acq.add_argument("--duration", type=float, default=0.001, metavar="SECONDS",
                     help="acquisition time in device seconds (default 0.001)")
    acq.add_argument("--channels", type=int, default=4, metavar="N", help="inputs (1..8)")
    acq.add_argument("--window", type=float, default=10.0, metavar="NS",
                     help="coincidence window in ns (default one 10 ns bin)")
    acq.add_argument("--delay", action="append", default=[], metavar="CH=NS",
                     help="input delay of a channel (repeatable)")
    acq.add_argument("--dead-time", action="append", default=[], metavar="CH=NS",
                     help="dead time of a channel (repeatable)")
    acq.add_argument("--edge", action="append", default=[], metavar="CH=EDGE",
                     help=f"edge of a channel: {', '.join(EDGES)} (repeatable)")
    acq.add_argument("--disable", action="append", default=[], type=int, metavar="CH",
                     help="ignore a channel (repeatable)")
    acq.add_argument("--herald", action="append", default=[], metavar="MASK",
                     help="herald rule: channel mask such as 0b011 (repeatable)")
    acq.add_argument("--herald-width", type=int, default=4, metavar="CYCLES",
                     help="herald output pulse width in clock cycles (default 4)")
    acq.add_argument("--record-coincidences", action="append", default=[], metavar="PATTERN",
                     help="also stream a record for every window of this pattern (repeatable)")
    acq.add_argument("--test-signal", choices=TEST_SIGNALS, default="pairs",
                     help="built-in test signal instead of the pins (default pairs)")
    acq.add_argument("--pair-rate", type=float, default=1e5, metavar="HZ",
                     help="photon pairs per second of the test signal (default 1e5)")
    acq.add_argument("--efficiency", type=float, default=0.5, metavar="P",
                     help="detection probability of each arm (default 0.5)")
    acq.add_argument("--dark-rate", type=float, default=1e3, metavar="HZ",
                     help="dark counts per second per channel (default 1e3)")
    acq.add_argument("--pair-delay", type=float, default=0.0, metavar="NS",
                     help="delay of arm B after arm A (default 0)")
    acq.add_argument("--period", type=float, default=1000.0, metavar="NS",
                     help="period of the periodic test signal (default 1000 ns)")
    acq.add_argument("--seed", type=int, default=1, help="test-signal seed (default 1)")
    acq.add_argument("--out", metavar="FILE.npz", help="write every streamed tag")
    acq.add_argument("--summary-json", metavar="FILE", help="write the summary as JSON")
    acq.add_argument("--quiet", action="store_true", help="no progress or table")
    return parser


def acquisition_from_args(args):
    """Turn parsed ``acquire`` options into a validated :class:`Acquisition` (or ConfigError)."""
    if args.board not in BOARDS:
        raise ConfigError(f"unknown board {args.board!r}; this version supports: "
                          f"{', '.join(BOARDS)}")
    board = BOARDS[args.board]
    n = args.channels
    if not 1 <= n <= 8:
        raise ConfigError(f"--channels must be 1..8, not {n}")
    if not args.duration > 0:
        raise ConfigError(f"--duration must be positive, not {args.duration:g}")
    bin_ps = int(round(1e12 / board["clock_hz"])) >> board["fine_bits"]
    notes = []

    def bins(what, ns, lo, hi):
        value, note = ns_to_bins(what, ns, bin_ps, lo, hi)
        if note:
            notes.append(note)
        return value

    def per_channel(options, what, convert, default):
        values = [default] * n
        for text in options:
            channel, value = _channel_value(text, what)
            if not 0 <= channel < n:
                raise ConfigError(f"{what} {text!r}: no channel {channel} "
                                  f"(channels are 0..{n - 1})")
            values[channel] = convert(value)
        return values

    window = bins("--window", args.window, 1, 1023)
    delays = per_channel(args.delay, "--delay",
                         lambda v: bins("--delay", _float(v, "--delay"), 0, 1023), 0)
    dead = per_channel(args.dead_time, "--dead-time",
                       lambda v: bins("--dead-time", _float(v, "--dead-time"), 0, 65535), 0)

    def edge(v):
        if v not in EDGES:
            raise ConfigError(f"--edge {v!r} must be one of {', '.join(EDGES)}")
        return v
    edges = per_channel(args.edge, "--edge", edge, "rising")
    enabled = [True] * n
    for ch in args.disable:
        if not 0 <= ch < n:
            raise ConfigError(f"--disable {ch}: no such channel (channels are 0..{n - 1})")
        enabled[ch] = False
    masks = [parse_mask(m, n) for m in args.herald]
    record_mask = 0
    for text in args.record_coincidences:
        pattern = parse_mask(text, n)
        record_mask |= 1 << pattern
    pair_delay = bins("--pair-delay", args.pair_delay, 0, 1023)
    period = bins("--period", args.period, 1, 2 ** 32 - 1)
    acq = Acquisition(
        channels=n, rules=board["rules"], bin_ps=bin_ps, clock_hz=board["clock_hz"],
        fine_bits=board["fine_bits"], window_bins=window, delays_bins=delays,
        dead_time_bins=dead, edges=edges, enabled=enabled, herald_masks=masks,
        herald_width=args.herald_width, coincidence_record_mask=record_mask,
        test_signal=args.test_signal, pair_rate_hz=args.pair_rate, efficiency=args.efficiency,
        dark_rate_hz=args.dark_rate, pair_delay_bins=pair_delay, period_cycles=period,
        seed=args.seed)
    return acq, notes


def _progress_printer(enabled, clock_hz):
    import time
    start = time.monotonic()

    def progress(done, total):
        if not enabled:
            return
        elapsed = time.monotonic() - start
        rate = done / elapsed if elapsed else 0
        remaining = (total - done) / rate if rate else float("nan")
        sys.stderr.write(f"\r  {done / clock_hz * 1e3:8.3f} of {total / clock_hz * 1e3:g} ms "
                         f"device time ({100 * done / total:5.1f}%), {rate / 1e3:.1f} k cycles/s, "
                         f"~{remaining:.0f} s left ")
        sys.stderr.flush()
    return progress


def _writable(path):
    import os
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.isdir(folder) and os.access(folder, os.W_OK) and (
        not os.path.exists(path) or os.access(path, os.W_OK))


def cmd_acquire(args):
    try:
        acq, notes = acquisition_from_args(args)
    except ConfigError as error:
        sys.stderr.write(f"heraldry: error: {error}\n")
        return EXIT_USAGE
    for path in (args.out, args.summary_json):
        if path and not _writable(path):
            sys.stderr.write(f"heraldry: error: cannot write {path!r} (no such folder or no "
                             f"permission)\n")
            return EXIT_USAGE
    for note in notes:
        sys.stderr.write(f"heraldry: note: {note}\n")
    from .acquire import acquire_sim, print_summary, summarise
    progress = _progress_printer(not args.quiet and sys.stderr.isatty(), acq.clock_hz)
    if not args.quiet:
        sys.stderr.write(f"heraldry: simulating {args.duration * 1e3:g} ms of device time "
                         f"({int(round(args.duration * acq.clock_hz))} cycles) on the "
                         f"{acq.channels}-channel core...\n")
    result = acquire_sim(acq, args.duration, progress=progress)
    if not args.quiet and sys.stderr.isatty():
        sys.stderr.write("\n")
    summary = summarise(result, board=args.board)
    if args.out:
        tags = result.tags
        np.savez(args.out, channel=tags["channel"].astype(np.uint8),
                 time_ps=tags["time_ps"].astype(np.int64))
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
    if not args.quiet:
        from .acquire import print_summary
        print_summary(summary)
    else:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    if not all(summary["checks"].values()):
        return EXIT_FAILED
    if summary["dropped"]:
        return EXIT_DROPPED
    return EXIT_OK


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "acquire":
        return cmd_acquire(args)
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
