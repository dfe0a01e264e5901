"""``heraldry calibrate``: measure every channel's delay against a reference channel and write a
config file that ``heraldry acquire --config FILE`` applies.

One acquisition (by default with the pairs test signal, arm A on channel 0 and arm B on channel
1, ``--pair-delay`` after A), then :class:`heraldry.host.measure.DelayCalibration`: the
correlation peak of each channel against ``--reference`` gives its delay ``d_c``; the file holds
the input delays that align them, ``delays_ns[c] = max(d) - d_c`` (the reference's ``d`` is 0),
for the reference and every channel with a peak::

    {"delays_ns": {"0": 70.0, "1": 0.0}, "reference": 0, "measured_ns": {"1": 70.0}, ...}

With the pairs test signal the known pair delay is checked: channel 1 must be found
``--pair-delay`` after channel 0 (to the bin), else exit status 1. Exit status 0 success, 1 a
failed acquisition, no peak on a channel that needs one, a delay out of the hardware's range or
a pair delay not found; 2 bad options.
"""

import json
import os
import sys

from ..protocol import DELAY_BITS
from .config import ConfigError, read_config

__all__ = ["register", "read_config", "config_delay_options", "cmd_calibrate"]


def register(subparsers):
    p = subparsers.add_parser(
        "calibrate", help="measure channel delays from correlation peaks, write a config file")
    p.add_argument("--board", default="sim",
                   help="sim (default), sim-inprocess, or a serial device path")
    p.add_argument("--baud", type=int, default=12_000_000, help="UART rate of a serial board")
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
                            "delay of arm B after arm A, to be found")
    p.add_argument("--out", required=True, metavar="FILE.json", help="config file to write")
    return [("calibrate", cmd_calibrate)]


def config_delay_options(path):
    """The config file's delays as ``--delay`` option values (``"CH=NS"``), for ``acquire``."""
    return [f"{channel}={ns!r}" for channel, ns in sorted(read_config(path).items())]


def _acquire(args):
    """Run the acquisition through the ``acquire`` code paths; ``(result, None)`` or ``(None,
    exit status)``."""
    from . import cli
    argv = ["acquire", "--board", args.board, "--baud", str(args.baud),
            "--duration", repr(args.duration), "--test-signal", args.test_signal,
            "--pair-delay", repr(args.pair_delay), "--pair-rate", repr(args.pair_rate),
            "--efficiency", repr(args.efficiency), "--dark-rate", repr(args.dark_rate),
            "--seed", str(args.seed), "--quiet"]
    if args.channels is not None:
        argv += ["--channels", str(args.channels)]
    acq_args = cli.build_parser().parse_args(argv)
    if cli._is_port(args.board):
        cli.check_board_args(acq_args)
        from .transport import SerialTransport
        return cli._run_on_device(acq_args, lambda: SerialTransport(args.board, args.baud),
                                  None, None)
    acq, notes = cli.acquisition_from_args(acq_args)
    for note in notes:
        sys.stderr.write(f"heraldry: note: {note}\n")
    if args.board == "sim-inprocess":
        from .acquire import acquire_sim
        return acquire_sim(acq, args.duration), None
    from ..sim.twin import Twin
    from .transport import SerialTransport
    board = cli.BOARDS["sim"]
    twin = Twin(channels=acq.channels, rules=acq.rules, clock_hz=int(acq.clock_hz),
                baud=board["baud"])
    twin.start()
    try:
        return cli._run_on_device(acq_args, lambda: SerialTransport(twin.port, board["baud"]),
                                  acq, None, timeout=3.0)
    finally:
        twin.stop()


def cmd_calibrate(args):
    from . import cli
    from .measure import DelayCalibration, delays_to_apply
    from .driver import DeviceError
    from .transport import TransportError
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        cli._error(f"cannot write {args.out!r} (no such folder or no permission)")
        return cli.EXIT_USAGE
    if args.range is not None and not args.range > 0:
        cli._error(f"--range must be positive, not {args.range:g}")
        return cli.EXIT_USAGE
    try:
        result, status = _acquire(args)
    except ConfigError as error:
        cli._error(error)
        return cli.EXIT_USAGE
    except (DeviceError, TransportError) as error:
        cli._error(error)
        return cli.EXIT_FAILED
    if result is None:
        return status
    acq = result.acquisition
    if not 0 <= args.reference < acq.channels:
        cli._error(f"--reference {args.reference}: no such channel (0..{acq.channels - 1})")
        return cli.EXIT_USAGE
    bin_ps = acq.bin_ps
    max_delay = 2 ** DELAY_BITS - 1
    span = (max_delay + 1) * bin_ps if args.range is None else \
        -(-int(round(args.range * 1000)) // bin_ps) * bin_ps
    calibration = DelayCalibration(args.reference, range(acq.channels), bin_ps=bin_ps,
                                   range_ps=span, resolution_ps=bin_ps)
    measured = calibration.feed(result.tags).result()
    apply = delays_to_apply(measured, args.reference)
    ok = True
    print(f"delays against channel {args.reference} ({len(result.tags)} tags, "
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
    if args.test_signal == "pairs" and acq.channels >= 2:
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
        "tags": int(len(result.tags)),
    }
    if not ok:
        return cli.EXIT_FAILED
    with open(args.out, "w") as f:
        json.dump(config, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: heraldry acquire --config {args.out} applies these delays")
    return cli.EXIT_OK
