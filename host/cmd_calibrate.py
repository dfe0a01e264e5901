"""``heraldry calibrate``: measure every channel's delay against a reference channel and write a
config file that ``heraldry acquire --config FILE`` applies.

One acquisition (on a virtual board by default with the pairs test signal, arm A on channel 0
and arm B on channel 1, ``--pair-delay`` after A; on a serial port by default of the pins), a run of the Python API (:meth:`heraldry.host.tagger.Tagger.run`)
on ``sim`` or a serial port, with :class:`heraldry.host.measure.DelayCalibration` attached to it
(fed block by block, the records are not kept): the
correlation peak of each channel against ``--reference`` gives its delay ``d_c``; the file holds
the input delays that align them, ``delays_ns[c] = max(d) - d_c`` (the reference's ``d`` is 0),
for the reference and every channel with a peak::

    {"delays_ns": {"0": 70.0, "1": 0.0}, "reference": 0, "measured_ns": {"1": 70.0}, ...}

With the pairs test signal the known pair delay is checked: channel 1 must be found
``--pair-delay`` after channel 0 (to the bin), else exit status 1. Exit status 0 success, 1 a
failed acquisition, no peak on a channel that needs one, a delay out of the hardware's range or
a pair delay not found; 2 bad options, or no heraldry board on the port; 4 the board went
away.
"""

import json
import sys

from ..protocol import DELAY_BITS
from .config import ConfigError

__all__ = ["register", "cmd_calibrate"]


def register(subparsers):
    p = subparsers.add_parser(
        "calibrate", help="measure channel delays from correlation peaks, write a config file")
    p.add_argument("--board", default="sim",
                   help="sim (default), sim-inprocess, or a serial device path")
    p.add_argument("--baud", type=int, default=None,
                   help="UART rate of a serial board (default: tried in turn, 3000000 (the "
                        "real boards) then 12000000)")
    p.add_argument("--duration", type=float, default=0.01, metavar="SECONDS",
                   help="acquisition time in device seconds (default 0.01)")
    p.add_argument("--channels", type=int, default=None, metavar="N", help="inputs (1..8)")
    p.add_argument("--reference", type=int, default=0, metavar="CH",
                   help="channel the others are measured against (default 0)")
    p.add_argument("--range", type=float, default=None, metavar="NS",
                   help="largest delay searched, +-NS (default: the delay line's range)")
    from .cli import add_test_signal_options
    add_test_signal_options(p, ("pairs", "off"),
                            "pairs (arms on channels 0 and 1) or off (the pins)",
                            "delay of arm B after arm A, to be found", default=None)
    p.add_argument("--out", required=True, metavar="FILE.json", help="config file to write")
    return [("calibrate", cmd_calibrate)]


def _settings(args):
    from .tagger import Settings
    from .cli import test_signal_of
    return Settings(test_signal=test_signal_of(args), pair_delay_ns=args.pair_delay,
                    pair_rate_hz=args.pair_rate, efficiency=args.efficiency,
                    dark_rate_hz=args.dark_rate, seed=args.seed)


def _calibration(args, acq):
    """The :class:`DelayCalibration` of ``acq``'s channels, or ConfigError (bad ``--reference``).
    Range: ``--range`` rounded up to whole bins, default the delay line's."""
    from .measure import DelayCalibration
    if not 0 <= args.reference < acq.channels:
        raise ConfigError(f"--reference {args.reference}: no such channel "
                          f"(0..{acq.channels - 1})")
    bin_ps = acq.bin_ps
    span = (2 ** DELAY_BITS) * bin_ps if args.range is None else \
        -(-int(round(args.range * 1000)) // bin_ps) * bin_ps
    return DelayCalibration(args.reference, range(acq.channels), bin_ps=bin_ps, range_ps=span,
                            resolution_ps=bin_ps)


def _measure(args):
    """Run the acquisition with the calibration fed block by block; ``(acq, calibration, tags)``.
    ``sim`` and a serial port run on the API's :class:`~heraldry.host.tagger.Run`;
    ``sim-inprocess`` on the in-process core (no link)."""
    import warnings
    from .tagger import SettingsNote, option_message, settings_to_acquisition, sim_identity
    from .tagger import open as open_board

    def notes(messages):
        for note in messages:
            sys.stderr.write(f"heraldry: note: {option_message(note)}\n")
    if args.board in ("sim", "sim-inprocess"):
        # The virtual board's parameters are known: refuse bad options before it starts.
        acq, messages = settings_to_acquisition(_settings(args), sim_identity(args.channels))
        _calibration(args, acq)
        if args.board == "sim-inprocess":
            from .acquire import acquire_sim
            notes(messages)
            result = acquire_sim(acq, args.duration)
            return acq, _calibration(args, acq).feed(result.tags), len(result.tags)
    with open_board(args.board, baud=args.baud, channels=args.channels) as tagger:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SettingsNote)      # printed as notes
            run = tagger.run(_settings(args), args.duration)
        notes(run.notes)
        calibration = run.attach(_calibration(args, run.acquisition))
        with run:
            run.wait()
        return run.acquisition, calibration, sum(run.tags_per_channel)


def cmd_calibrate(args):
    from . import cli
    from ..sim.twin import TwinError
    from .driver import DeviceError, DeviceLost, IdentificationError
    from .measure import delays_to_apply
    from .tagger import option_message
    from .transport import TransportError
    try:
        cli.check_output_paths([("--out", args.out, "file")],
                               [("--board", args.board)] if cli._is_port(args.board) else [])
    except ConfigError as error:
        cli._error(error)
        return cli.EXIT_USAGE
    if args.range is not None and not args.range > 0:
        cli._error(f"--range must be positive, not {args.range:g}")
        return cli.EXIT_USAGE
    if args.baud is not None and args.baud <= 0:
        cli._error(f"--baud must be positive, not {args.baud}")
        return cli.EXIT_USAGE
    if args.board not in ("sim", "sim-inprocess") and not cli._is_port(args.board):
        cli._error(f"unknown board {args.board!r}; use sim, sim-inprocess or a serial device "
                   f"path such as /dev/ttyUSB1")
        return cli.EXIT_USAGE
    try:
        try:
            acq, calibration, tags = _measure(args)
        except TransportError as error:
            if not cli._is_port(args.board):
                raise
            cli._error(f"--board {args.board}: {error}")    # busy: held by another program
            return cli.EXIT_USAGE
    except (ConfigError, IdentificationError) as error:
        cli._error(option_message(error))
        return cli.EXIT_USAGE
    except DeviceLost as error:
        cli._error(f"the board went away during the calibration ({error})")
        return cli.EXIT_LOST
    except (DeviceError, TransportError, TwinError) as error:
        cli._error(error)
        return cli.EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("heraldry: interrupted\n")
        return cli.EXIT_INTERRUPTED
    bin_ps = acq.bin_ps
    max_delay = 2 ** DELAY_BITS - 1
    measured = calibration.result()
    apply = delays_to_apply(measured, args.reference)
    ok = True
    print(f"delays against channel {args.reference} ({tags} tags, "
          f"{bin_ps / 1000:g} ns bins):")
    print("  channel  found (ns)  peak  background  apply (ns)")
    for c in range(acq.channels):
        m = measured.get(c)
        found = "reference" if c == args.reference else (
            f"{m.delay_ps / 1000:g}" if m.found else "no peak")
        peak = "" if m is None else f"{m.peak_counts}"
        background = "" if m is None else f"{m.background:g}"
        applied = f"{apply[c] / 1000:g}" if c in apply else "-"
        print(f"  {c:7d}  {found:>10}  {peak:>4}  {background:>10}  {applied:>10}")
    too_large = [c for c, d in apply.items() if round(d / bin_ps) > max_delay]
    if too_large:
        cli._error(f"channels {too_large} need more delay than the delay line's "
                   f"{max_delay * bin_ps / 1000:g} ns")
        ok = False
    if acq.test_signal == "pairs" and acq.channels >= 2:
        expected = acq.pair_delay_bins * bin_ps
        if args.reference == 0:
            arm_b = measured[1]
            got = arm_b.delay_ps if arm_b.found else None
            verdict = "ok" if got is not None and abs(got - expected) < bin_ps / 2 else "WRONG"
            print(f"  pair delay: set {expected / 1000:g} ns, found "
                  f"{'none' if got is None else f'{got / 1000:g} ns'}: {verdict}")
            ok = ok and verdict == "ok"
    config = {
        # the delay line takes whole bins
        "delays_ns": {str(c): round(d / bin_ps) * bin_ps / 1000 for c, d in apply.items()},
        "reference": args.reference,
        "measured_ns": {str(c): m.delay_ps / 1000 for c, m in measured.items() if m.found},
        "bin_ns": bin_ps / 1000,
        "tags": int(tags),
    }
    if not ok:
        return cli.EXIT_FAILED
    with open(args.out, "w") as f:
        json.dump(config, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: heraldry acquire --config {args.out} applies these delays")
    return cli.EXIT_OK
