"""``heraldry selftest``: run the board's internal test signal and check its counters against the
records it streamed.

``heraldry selftest --board PORT`` (a board on a serial port; it describes itself; the baud rate
is ``--baud`` or found by trying the known boards' rates) or ``heraldry selftest --board sim``
(the virtual board, the default) configures the test signal (``--test-signal pairs``: channel 0
and 1 are the arms of a pair source, the others dark counts; ``periodic``: every channel every
``--period`` ns), one herald rule on channels 0 and 1 (channel 0 alone on a 1-channel board;
every channel with ``periodic``) and a coincidence record for every window of that pattern,
runs ``--duration`` seconds of device time, stops, and prints one PASS/FAIL line per check,
with its figures. ``--loopback [H:C]`` checks the board's real pins with one jumper wire from
herald output ``H`` to detector input ``C`` (default ``0:1``; where they are on each board:
``docs/boards.md``, "Loopback self-test"). The run and every check are the library's
:func:`heraldry.host.selftest.selftest` (:meth:`heraldry.Tagger.selftest`); its module docstring
lists them. This command only maps its options onto it.

On the virtual board the jumper is simulated (:class:`heraldry.sim.twin.Twin` ``loopback``):
``--sim-jumper H:C[:CYCLES]`` puts it elsewhere, or delays it, and ``--sim-jumper none`` leaves
it off, to see the checks fail.

``--port PORT`` is the deprecated spelling of ``--board PORT``: it still works, with one note on
stderr.

Exit status: 0 every check passed; 1 a check failed, or the board failed or does not answer;
2 bad options, or a device that does not identify as a heraldry board at that port and baud rate
(one line on stderr); 4 the board went away during the selftest.
"""

import sys

from ..protocol import MAX_CHANNELS
from .cli import _error
from .config import ConfigError
from .selftest import (DURATION_S, LOOPBACK_DURATION_S, LOOPBACK_PERIOD_NS, PERIOD_NS,
                       _check_jumper, selftest, selftest_settings)

__all__ = ["register", "cmd_selftest"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

def register(subparsers):
    from .cli import add_test_signal_options
    p = subparsers.add_parser(
        "selftest", help="run the internal test signal and check counters against tags")
    p.add_argument("--board", default=None,
                   help="sim (the virtual board, default) or the serial device of a board "
                        "(e.g. /dev/ttyUSB1)")
    p.add_argument("--port", default=None, metavar="PORT",
                   help="deprecated spelling of --board PORT (prints a note)")
    p.add_argument("--baud", type=int, default=None,
                   help="UART rate of a board on a serial port (default: tried in turn, "
                        "3000000 (the real boards) then 12000000)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help=f"device time to run the test signal (default {DURATION_S:g}, "
                        f"{LOOPBACK_DURATION_S:g} with --loopback)")
    p.add_argument("--channels", type=int, default=None, metavar="N",
                   help="inputs of the virtual board (1..8, default 4); a real board has its own")
    add_test_signal_options(p, ("pairs", "periodic"),
                            "pairs (arms on channels 0 and 1, dark counts elsewhere) or "
                            "periodic (every channel)", "delay of arm B after arm A")
    p.add_argument("--period", type=float, default=None, metavar="NS",
                   help=f"period of the periodic test signal (default {PERIOD_NS:g} ns, "
                        f"{LOOPBACK_PERIOD_NS:g} ns with --loopback)")
    p.add_argument("--loopback", nargs="?", const="0:1", default=None,
                   metavar="HERALD:CHANNEL",
                   help="check the pins with a jumper from herald output HERALD to input "
                        "CHANNEL (default 0:1; docs/boards.md shows where they are): a periodic "
                        "source on channel 0 (its pin on a board without the test signal) "
                        "fires herald rule 0, whose pulses must come back on CHANNEL")
    p.add_argument("--sim-jumper", default=None, metavar="HERALD:CHANNEL[:CYCLES]",
                   help="virtual board with --loopback: where its simulated jumper goes and "
                        "its delay in clock cycles (default: where --loopback says, no delay); "
                        "'none': no jumper")
    p.add_argument("--quiet", action="store_true", help="only the checks, no progress line")
    return [("selftest", cmd_selftest)]


def _jumper(text, what, delay=False):
    """``(herald, channel[, delay])`` from ``H:C`` (``H:C[:D]`` with ``delay``)."""
    parts = text.split(":")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in ((2, 3) if delay else (2,)) or min(values) < 0:
        form = "HERALD:CHANNEL[:CYCLES]" if delay else "HERALD:CHANNEL"
        raise ConfigError(f"{what} {text}: want {form} (non-negative integers, e.g. 0:1)")
    return tuple(values)


def _board(args):
    """The board of ``--board`` (or the deprecated ``--port``), after the checks that need no
    board (ConfigError)."""
    import math
    from . import cli
    board = args.board
    if args.port is not None:
        if board is not None:
            raise ConfigError("--port and --board exclude each other: --port is the old "
                              "spelling of --board PORT")
        sys.stderr.write(f"heraldry: note: --port is deprecated; use --board {args.port}\n")
        board = args.port
    board = board or "sim"
    loopback = args.loopback is not None
    if args.duration is None:
        args.duration = LOOPBACK_DURATION_S if loopback else DURATION_S
    if args.period is None:
        args.period = LOOPBACK_PERIOD_NS if loopback else PERIOD_NS
    if board != "sim":
        if not cli._is_port(board):
            raise ConfigError(f"--board {board}: selftest runs on --board sim or on a board on a "
                              f"serial port (--board /dev/ttyUSB1)")
        cli.check_port(board)
    if not 0 < args.duration < math.inf:
        raise ConfigError(f"--duration must be positive and finite, not {args.duration:g}")
    if args.baud is not None and args.baud <= 0:
        raise ConfigError(f"--baud must be positive, not {args.baud}")
    if args.loopback is not None:
        args.loopback = _jumper(args.loopback, "--loopback")
    if args.sim_jumper is not None:
        if board != "sim" or args.loopback is None:
            raise ConfigError("--sim-jumper is for the virtual board with --loopback")
        if args.sim_jumper != "none":
            args.sim_jumper = _jumper(args.sim_jumper, "--sim-jumper", delay=True)
            from ..sim.twin import MAX_LOOP_DELAY
            if len(args.sim_jumper) == 3 and args.sim_jumper[2] > MAX_LOOP_DELAY:
                raise ConfigError(f"--sim-jumper: a delay of 0..{MAX_LOOP_DELAY} cycles, not "
                                  f"{args.sim_jumper[2]}")
    if args.channels is not None:
        if board != "sim":
            raise ConfigError("--channels is for the virtual board; a real board has its own")
        if not 1 <= args.channels <= MAX_CHANNELS:
            raise ConfigError(f"--channels must be 1..{MAX_CHANNELS}, not {args.channels}")
    return board


def _run(args, tagger, board_name):
    """Run :func:`heraldry.host.selftest.selftest` with the options and print its report (the
    board is open). Returns the exit status."""
    def progress(line):
        if not args.quiet:
            sys.stderr.write(f"heraldry: {line}\n")
    try:
        report = selftest(
            tagger, duration_s=args.duration, loopback=args.loopback,
            test_signal=getattr(args, "test_signal", "pairs"),
            pair_rate_hz=getattr(args, "pair_rate", 1e5),
            efficiency=getattr(args, "efficiency", 0.5),
            dark_rate_hz=getattr(args, "dark_rate", 1e3),
            pair_delay_ns=getattr(args, "pair_delay", 0.0), period_ns=args.period,
            seed=args.seed, real_board=board_name != "sim", label=board_name,
            progress=progress)
    except ConfigError as error:
        _error(error)
        return EXIT_USAGE
    for note in report.notes:
        sys.stderr.write(f"heraldry: note: {note}\n")
    print(report)
    return EXIT_OK if report.passed else EXIT_FAILED


def cmd_selftest(args):
    from . import cli
    from ..sim.twin import TwinError
    from .driver import DeviceError, DeviceLost, IdentificationError
    from .tagger import option_message, settings_to_acquisition, sim_identity
    from .tagger import open as open_board
    from .transport import TransportError
    try:
        board = _board(args)
        if board == "sim":
            # The virtual board's parameters are known: refuse bad options before it starts.
            ident = sim_identity(args.channels)
            if args.loopback is not None:
                _check_jumper(args.loopback, "--loopback", ident.channels, ident.rules)
                limit = ident.clock_hz // 4      # the UART's four cycles a bit
                if args.baud is not None and args.baud > limit:
                    raise ConfigError(f"--baud must be 1..{limit} on the virtual board, not "
                                      f"{args.baud}")
                if args.sim_jumper not in (None, "none"):
                    _check_jumper(args.sim_jumper, "--sim-jumper", ident.channels, ident.rules)
            try:
                settings_to_acquisition(selftest_settings(
                    ident.channels, ident.rules, args.test_signal, pair_rate_hz=args.pair_rate,
                    efficiency=args.efficiency, dark_rate_hz=args.dark_rate,
                    pair_delay_ns=args.pair_delay, period_ns=args.period, seed=args.seed),
                    ident)
            except ConfigError as error:
                raise ConfigError(option_message(error)) from None
    except ConfigError as error:
        _error(error)
        return EXIT_USAGE
    twin = None
    try:
        try:
            if board == "sim" and args.loopback is not None:
                # The virtual board with its simulated jumper, started here (open("sim") has
                # none): the tagger talks to it on its port.
                from ..sim.twin import Twin
                from .tagger import SIM_BOARD
                jumper = (args.sim_jumper if args.sim_jumper is not None
                          else args.loopback)
                twin = Twin(channels=ident.channels, rules=ident.rules,
                            clock_hz=SIM_BOARD["clock_hz"],
                            baud=args.baud or SIM_BOARD["baud"],
                            loopback=[] if jumper == "none" else [jumper])
                twin.start()
                tagger = open_board(twin.port, baud=twin.baud, timeout=3.0)
            else:
                tagger = open_board(board, baud=args.baud, channels=args.channels)
        except TransportError as error:
            if board == "sim":
                raise
            _error(f"--board {board}: {error}")    # busy, or not a serial port: nothing was run
            return EXIT_USAGE
        with tagger:
            return _run(args, tagger, board)
    except ConfigError as error:
        _error(error)
        return EXIT_USAGE
    except IdentificationError as error:     # not a heraldry board, or the wrong baud rate
        _error(error)
        return EXIT_USAGE
    except DeviceLost as error:
        _error(f"the board went away during the selftest ({error})")
        return cli.EXIT_LOST
    except (DeviceError, TransportError, TwinError) as error:
        _error(error)
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("heraldry: interrupted\n")
        return cli.EXIT_INTERRUPTED
    finally:
        if twin is not None:
            twin.stop()
