"""``heraldry selftest``: run the board's internal test signal and check its counters against the
records it streamed.

``heraldry selftest --board PORT`` (a board on a serial port; it describes itself; the baud rate
is ``--baud`` or found by trying the known boards' rates) or ``heraldry selftest --board sim``
(the virtual board, the default) configures the test signal (``--test-signal pairs``: channel 0
and 1 are the arms of a pair source, the others dark counts; ``periodic``: every channel every
``--period`` ns), one herald rule on channels 0 and 1 (channel 0 alone on a 1-channel board;
every channel with ``periodic``) and a coincidence record for every window of that pattern,
runs ``--duration`` seconds of device time as a :class:`heraldry.host.tagger.Run` (the API's
run, the steps of :func:`heraldry.host.acquire.acquire_device`), stops, and prints one
PASS/FAIL line per check, with its figures:

* ``link``: every byte decoded and verified by its segment's CHECK (no decode error, nothing
  unverified or skipped);
* ``channel C``: streamed tags + tags reported lost in-band (``MERGER_FULL`` loss records) + tags
  the host dropped == the singles counter;
* ``loss records``: the in-band loss records of each cause equal the board's drop counters;
* ``herald rule R``: herald records + ``HERALD_RECORD`` losses == the herald counter;
* ``pattern P``: coincidence records + ``COINCIDENCE_RECORD`` losses == the pattern counter;
* ``model``: when nothing was dropped, the reference model recomputes singles, every pattern
  counter and every herald counter from the streamed tags, and they equal the board's;
* ``test signal C``: singles + delay-line drops lie between the counts the bit-exact test-signal
  model gives for the shortest and the longest run gate the command timing allows (the gate and
  the clear are known to within one command round trip each).

``--port PORT`` is the deprecated spelling of ``--board PORT``: it still works, with one note on
stderr.

Exit status: 0 every check passed; 1 a check failed, or the board failed or does not answer;
2 bad options, or a device that does not identify as a heraldry board at that port and baud rate
(one line on stderr); 4 the board went away during the selftest.
"""

import sys

from ..protocol import MAX_CHANNELS
from .cli import _error
from .config import ConfigError, rule_text

__all__ = ["register", "cmd_selftest", "selftest_checks", "Check"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Cycles of slack on each side of the command bounds for the test-signal bracket: the PHY and
#: input-stage latency between a generated event and the gate, and the clear's re-seed cycle.
GATE_SLACK_CYCLES = 8


class Check:
    """One check: ``name``, ``ok`` and ``text`` (the figures)."""

    def __init__(self, name, ok, text):
        self.name, self.ok, self.text = name, bool(ok), text

    def line(self):
        return f"  {'PASS' if self.ok else 'FAIL'}  {self.name}: {self.text}"

    def __repr__(self):
        return f"Check({self.name!r}, {self.ok}, {self.text!r})"


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
    p.add_argument("--duration", type=float, default=0.01, metavar="SECONDS",
                   help="device time to run the test signal (default 0.01)")
    p.add_argument("--channels", type=int, default=None, metavar="N",
                   help="inputs of the virtual board (1..8, default 4); a real board has its own")
    add_test_signal_options(p, ("pairs", "periodic"),
                            "pairs (arms on channels 0 and 1, dark counts elsewhere) or "
                            "periodic (every channel)", "delay of arm B after arm A")
    p.add_argument("--period", type=float, default=1000.0, metavar="NS",
                   help="period of the periodic test signal (default 1000 ns)")
    p.add_argument("--quiet", action="store_true", help="only the checks, no progress line")
    return [("selftest", cmd_selftest)]


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
    if board != "sim":
        if not cli._is_port(board):
            raise ConfigError(f"--board {board}: selftest runs on --board sim or on a board on a "
                              f"serial port (--board /dev/ttyUSB1)")
        cli.check_port(board)
    if not 0 < args.duration < math.inf:
        raise ConfigError(f"--duration must be positive and finite, not {args.duration:g}")
    if args.baud is not None and args.baud <= 0:
        raise ConfigError(f"--baud must be positive, not {args.baud}")
    if args.channels is not None:
        if board != "sim":
            raise ConfigError("--channels is for the virtual board; a real board has its own")
        if not 1 <= args.channels <= MAX_CHANNELS:
            raise ConfigError(f"--channels must be 1..{MAX_CHANNELS}, not {args.channels}")
    return board


def _settings(args, channels, rules):
    """The selftest's :class:`~heraldry.host.tagger.Settings`: the test signal, a window of one
    clock cycle (the arms of a pair with no pair delay share a cycle), herald rule 0 on
    channels 0 and 1 (pairs; channel 0 alone on a 1-channel board) or on every channel
    (periodic) with its pattern recorded, rule 1 on channel 0."""
    from .tagger import Settings
    pair = (0b11 if channels >= 2 else 0b1) if args.test_signal == "pairs" \
        else 2 ** channels - 1
    return Settings(
        window_ns=None, heralds=[pair] + ([0b1] if rules >= 2 else []),
        record_coincidences=[pair], test_signal=args.test_signal,
        pair_rate_hz=args.pair_rate, efficiency=args.efficiency, dark_rate_hz=args.dark_rate,
        pair_delay_ns=args.pair_delay, period_ns=args.period, seed=args.seed)


def _test_signal_settings(acq):
    from ..model.testsignal import TestSignalSettings
    return TestSignalSettings(
        seed=acq.seed, period=acq.period_cycles if acq.test_signal == "periodic" else 0,
        pair_threshold=acq.pair_threshold(), eta_a=acq.efficiency_threshold(),
        eta_b=acq.efficiency_threshold(), pair_delay=acq.pair_delay_cycles(),
        dark=(acq.dark_threshold(),) * acq.channels,
        sources=tuple(source.name.lower() for source in acq.sources()))


def _generated_bracket(acq, bounds):
    """Per channel, ``(lo, hi)``: test-signal events the bit-exact model generates in the
    shortest and the longest run gate the command bounds allow. ``bounds`` is
    ``AcquisitionResult.device_cycles`` (``clear``, ``start``, ``stop``: ``[before, after]``)."""
    from ..model.testsignal import generate
    s = GATE_SLACK_CYCLES
    clear, start, stop = bounds["clear"], bounds["start"], bounds["stop"]
    # Test-signal cycle k = 0 is (about) the cycle after the clear.
    short = (start[1] - clear[0] + s, stop[0] - clear[1] - s)
    long = (max(0, start[0] - clear[1] - s), stop[1] - clear[0] + s)
    events = generate(_test_signal_settings(acq), long[1])
    out = []
    for ks in events:
        lo = int(((ks >= short[0]) & (ks < short[1])).sum()) if short[1] > short[0] else 0
        hi = int(((ks >= long[0]) & (ks < long[1])).sum())
        out.append((lo, hi))
    return out


def selftest_checks(summary, result):
    """The checks (list of :class:`Check`) of one selftest run: ``summary`` from
    :func:`heraldry.host.acquire.summarise` of ``result`` (an ``AcquisitionResult`` of
    :func:`acquire_device`)."""
    import numpy as np
    from ..protocol import Kind
    acq = result.acquisition
    n = summary["channels"]
    loss = summary["loss_records"]
    checks = []
    errors, unverified, skipped = (summary["decode_errors"], summary["unverified"] or 0,
                                   summary["skipped_bytes"] or 0)
    checks.append(Check(
        "link", errors == 0 and unverified == 0 and skipped == 0,
        f"{summary['link_bytes']} bytes, {errors} decode errors, {unverified} unverified, "
        f"{skipped} skipped"))
    host = summary["host_dropped"]
    for c in range(n):
        tags, lost, singles = (summary["tags_per_channel"][c], loss["MERGER_FULL"][c],
                               summary["singles"][c])
        checks.append(Check(
            f"channel {c}", tags + lost + host[c] == singles,
            f"{tags} tags + {lost} lost in-band + {host[c]} dropped by the host = "
            f"{tags + lost + host[c]}, singles counter {singles}"))
    pairs = [("MERGER_FULL", "merger_dropped"), ("DELAY_FULL", "delay_dropped"),
             ("HERALD_RECORD", "herald_dropped"), ("COINCIDENCE_RECORD", "coincidence_dropped")]
    checks.append(Check(
        "loss records", all(loss[cause] == summary[group] for cause, group in pairs),
        ", ".join(f"{cause} {sum(loss[cause])} (counters {sum(summary[group])})"
                  for cause, group in pairs)))
    events = result.events
    heralds = events[events["kind"] == Kind.HERALD.value]
    for rule, herald_rule in enumerate(acq.herald_rules):
        records = int(np.count_nonzero(heralds["channel"] == rule))
        lost = loss["HERALD_RECORD"][rule]
        counter = summary["heralds"][rule]
        checks.append(Check(
            f"herald rule {rule} ({rule_text(herald_rule, rule, n)})", records + lost == counter,
            f"{records} records + {lost} lost = {records + lost}, counter {counter}"))
    coincidences = events[events["kind"] == Kind.COINCIDENCE.value]
    recorded = [p for p in range(1, 2 ** n) if acq.coincidence_record_mask >> p & 1]
    if len(recorded) == 1:      # COINCIDENCE_RECORD losses are not per pattern
        p = recorded[0]
        records = int(np.count_nonzero(coincidences["pattern"] == p))
        lost = loss["COINCIDENCE_RECORD"][0]
        counter = summary["patterns"][str(p)]
        checks.append(Check(
            f"pattern {p:0{n}b}", records + lost == counter,
            f"{records} coincidence records + {lost} lost = {records + lost}, counter "
            f"{counter}"))
    model = [k for k in ("singles_recomputed_from_tags", "patterns_recomputed_from_tags",
                         "heralds_recomputed_from_tags") if k in summary["checks"]]
    if model:
        checks.append(Check(
            "model", all(summary["checks"][k] for k in model),
            "singles, " + f"{2 ** n - 1} pattern and {len(acq.herald_masks)} herald counters "
            "recomputed from the streamed tags by the reference model"
            + ("" if all(summary["checks"][k] for k in model) else
               f" (differ: {', '.join(k for k in model if not summary['checks'][k])})")))
    else:
        checks.append(Check("model", True, f"skipped: {summary['dropped']} events dropped "
                                           f"(counted above), the tags are not the whole run"))
    if result.device_cycles and "stop" in result.device_cycles:
        brackets = _generated_bracket(acq, result.device_cycles)
        for c in range(n):
            generated = summary["singles"][c] + summary["delay_dropped"][c]
            lo, hi = brackets[c]
            checks.append(Check(
                f"test signal {c}", lo <= generated <= hi and hi > 0,
                f"{generated} events (singles + delay-line drops), the model generates "
                f"{lo}..{hi} in the run gate"))
    return checks


def _run(args, tagger, board_name):
    """Configure, run, check (the board is open). Returns the exit status."""
    import warnings
    from .acquire import summarise
    from .tagger import SettingsNote, option_message
    settings = _settings(args, tagger.channels, tagger.rules)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SettingsNote)      # printed as notes below
            run = tagger.run(settings, args.duration, keep=True)
    except ConfigError as error:
        _error(option_message(error))
        return EXIT_USAGE
    for note in run.notes:
        sys.stderr.write(f"heraldry: note: {option_message(note)}\n")
    acq = run.acquisition
    if not args.quiet:
        ident = tagger.identity
        sys.stderr.write(f"heraldry: {tagger.device.transport.name}: gateware "
                         f"{ident.gateware_version}, {ident.channels} channels, "
                         f"{ident.clock_hz / 1e6:g} MHz; test signal {acq.test_signal} "
                         f"for {args.duration * 1e3:g} ms of device time...\n")
    with run:
        run.wait()
    result = run.result
    summary = summarise(result, board=board_name)
    checks = selftest_checks(summary, result)
    print(f"selftest of {board_name} on {result.port}: {acq.channels} channels, "
          f"{summary['device_seconds'] * 1e3:.3g} ms of device time, test signal "
          f"{acq.test_signal}, {summary['tags']} tags, {summary['dropped']} dropped")
    for check in checks:
        print(check.line())
    failed = [c.name for c in checks if not c.ok]
    print(f"selftest {'FAIL' if failed else 'PASS'}: {len(checks) - len(failed)} of "
          f"{len(checks)} checks passed" + (f" (failed: {', '.join(failed)})" if failed else ""))
    return EXIT_FAILED if failed else EXIT_OK


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
            try:
                settings_to_acquisition(_settings(args, ident.channels, ident.rules), ident)
            except ConfigError as error:
                raise ConfigError(option_message(error)) from None
    except ConfigError as error:
        _error(error)
        return EXIT_USAGE
    try:
        try:
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
