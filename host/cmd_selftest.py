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

``heraldry selftest --board PORT --loopback [H:C]`` checks the board's real pins with one
jumper wire from herald output ``H`` to detector input ``C`` (default ``0:1``; where they are on
each board: ``docs/boards.md``, "Loopback self-test"). Channel 0 is the source: the built-in test
signal's periodic source on channel 0 alone (every ``--period`` ns; the other channels read their
pins), or on a board without the test signal (the iCEBreaker) channel 0's pin, which the user
feeds with a logic signal. Herald rule 0 is channel 0 alone (early) on pin ``H``, input ``C``
takes both edges, so every herald pulse comes back as a rise and a fall on ``C``. Besides
``link``, the channel counters, ``loss records``, ``herald rule 0`` and ``model`` above:

* ``source (channel 0)``: events arrived on channel 0;
* ``input path (channel C)``: the herald pulses came back on input ``C`` (or, failing, which
  channel they came back on);
* ``herald pin H``: the edges input ``C`` counted (its singles counter) == 2 x the herald
  counter (the last pulse may still be on its way when the run stops);
* ``latency``: the delay from each channel-0 tag to its returned rise lies within the board's
  simulated pin-to-pin latency (:data:`heraldry.sim.latency.MEASURED`, ``early``) plus
  :data:`LOOPBACK_IO_NS` for buffers and wire on a real board, :data:`LOOPBACK_SLACK_BINS` bins
  each side, and its spread is no wider than that latency's range allows;
* ``pulse width``: fall - rise of every returned pulse == the herald width (4 core cycles),
  within :data:`LOOPBACK_SLACK_BINS` bins.

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
from .config import ConfigError, rule_text

__all__ = ["register", "cmd_selftest", "selftest_checks", "loopback_checks", "Check"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Cycles of slack on each side of the command bounds for the test-signal bracket: the PHY and
#: input-stage latency between a generated event and the gate, and the clear's re-seed cycle.
GATE_SLACK_CYCLES = 8
#: Defaults of ``--duration`` and ``--period``, and with ``--loopback``: its source sends four
#: records a pulse (the source tag, the herald record, the returned rise and fall) of about four
#: bytes each, 80 kB/s at 200 us, a quarter of the real boards' 3 Mbaud link.
DURATION_S, PERIOD_NS = 0.01, 1000.0
LOOPBACK_DURATION_S, LOOPBACK_PERIOD_NS = 0.2, 200_000.0
#: Loopback on a real board: what the output and input buffers and the jumper may add to the
#: simulated pin-to-pin latency, which has none of them (a few ns per buffer, FPGA datasheets;
#: about 5 ns per metre of wire). The virtual board's jumper adds nothing (``--sim-jumper``'s
#: delay aside).
LOOPBACK_IO_NS = 15.0
#: Loopback: bins of slack on each side of the latency and pulse-width bounds.
LOOPBACK_SLACK_BINS = 2


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


def _check_jumper(jumper, what, channels, rules):
    herald, channel = jumper[:2]
    if channels < 2:
        raise ConfigError("--loopback needs a board with 2 or more inputs (channel 0 is the "
                          "source)")
    if herald >= rules:
        raise ConfigError(f"{what}: herald output {herald}: this board has herald outputs "
                          f"0..{rules - 1}")
    if not 1 <= channel < channels:
        raise ConfigError(f"{what}: input {channel}: the jumper goes to an input 1.."
                          f"{channels - 1} (channel 0 is the source)")


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


def _loopback_acquisition(tagger, args):
    """``(acquisition, notes)`` of a loopback selftest on ``tagger``: herald rule 0 on channel 0
    alone (early) driving herald pin ``H``, both edges on input ``C``, and channel 0 fed by the
    periodic test signal (the other channels read their pins) or, on a board without it, by
    its pin."""
    from ..model import HeraldRule
    from .tagger import Settings
    herald, channel = args.loopback
    _check_jumper(args.loopback, "--loopback", tagger.channels, tagger.rules)
    settings = Settings(
        window_ns=None, heralds=[HeraldRule(0b1, 0, "early", herald)], edges={channel: "both"},
        test_signal="periodic" if tagger.has_test_signal else "off",
        pin_channels=tuple(range(1, tagger.channels)), dark_rate_hz=0.0,
        period_ns=args.period, seed=args.seed)
    return tagger.acquisition(settings)


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


def selftest_checks(summary, result, test_signal=True):
    """The checks (list of :class:`Check`) of one selftest run: ``summary`` from
    :func:`heraldry.host.acquire.summarise` of ``result`` (an ``AcquisitionResult`` of
    :func:`acquire_device`). ``test_signal``: also the test-signal brackets (every channel fed
    by the test signal)."""
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
    if test_signal and result.device_cycles and "stop" in result.device_cycles:
        brackets = _generated_bracket(acq, result.device_cycles)
        for c in range(n):
            generated = summary["singles"][c] + summary["delay_dropped"][c]
            lo, hi = brackets[c]
            checks.append(Check(
                f"test signal {c}", lo <= generated <= hi and hi > 0,
                f"{generated} events (singles + delay-line drops), the model generates "
                f"{lo}..{hi} in the run gate"))
    return checks


def _latency_bounds(fine_bits, bin_ps, real_board):
    """``(lo, hi, spread, text)`` in bins: the loopback delay from a channel-0 tag to the
    returned rise, and its largest spread, for a board of these fine bits; ``None`` for an
    input block with no simulated figure."""
    import math
    from ..sim.latency import BLOCK_BY_FINE_BITS, MEASURED
    block = BLOCK_BY_FINE_BITS.get(fine_bits)
    if block is None:
        return None
    low, high = MEASURED[block]["early"]
    per = 2 ** fine_bits
    io_bins = math.ceil(LOOPBACK_IO_NS * 1000 / bin_ps) if real_board else 0
    s = LOOPBACK_SLACK_BINS
    # The returned edge is seen at the first sample instant after the herald edge: up to one
    # bin after it; the simulated range is open at the top.
    lo = math.floor(low * per) - s
    hi = math.ceil(high * per) + 1 + io_bins + s
    spread = math.ceil((high - low) * per) + s
    text = (f"pin to pin {float(low):g}..{float(high):g} core periods simulated"
            + (f" + up to {LOOPBACK_IO_NS:g} ns of buffers and wire" if real_board else "")
            + f", {s} bins slack")
    return lo, hi, spread, text


def loopback_checks(summary, result, herald, channel, real_board=True):
    """The loopback checks (list of :class:`Check`) of a ``--loopback`` run (herald pin
    ``herald`` wired to input ``channel``, channel 0 the source; module docstring)."""
    import numpy as np
    from ..protocol import Kind
    acq = result.acquisition
    events = result.events
    tags = events[events["kind"] == Kind.TAG.value]
    bin_ps = acq.bin_ps
    source = np.sort(tags["time_ps"][tags["channel"] == 0]) // bin_ps
    back = np.sort(tags["time_ps"][tags["channel"] == channel]) // bin_ps
    source, back = source.astype(np.int64), back.astype(np.int64)
    checks = [Check(
        "source (channel 0)", len(source) > 0,
        f"{len(source)} events" if len(source) else
        "no events on channel 0" + (": the test signal did not run" if acq.test_signal != "off"
                                    else ": this board has no test signal; feed channel 0 a "
                                         "logic signal (docs/boards.md)"))]
    if len(back):
        text = f"{len(back)} edges came back on input {channel}"
    else:
        others = {c: int(np.count_nonzero(tags["channel"] == c))
                  for c in range(1, acq.channels) if c != channel}
        elsewhere = {c: k for c, k in others.items() if k}
        text = (f"nothing came back on input {channel}" + (
            "; " + ", ".join(f"{k} tags on channel {c}" for c, k in elsewhere.items())
            + ": is the jumper on that input?" if elsewhere else
            f": is the jumper from herald output {herald} to input {channel}?"))
    checks.append(Check(f"input path (channel {channel})", len(back) > 0, text))
    # Every pulse comes back as a rise and a fall (both edges), counted by the board.
    edges, counter = summary["singles"][channel], summary["heralds"][0]
    # A pulse fired just before the stop may come back (partly) after it: not counted.
    ok = counter > 0 and 2 * counter - 2 <= edges <= 2 * counter
    checks.append(Check(
        f"herald pin {herald}", ok,
        f"{edges} edges on input {channel} (singles counter), herald counter {counter}: "
        f"{'' if edges == 2 * counter else 'not '}2 edges a pulse"
        + (" (the last pulse was on its way at the stop)" if ok and edges != 2 * counter
           else "")))
    # The returned edges after each source tag, before the next one: the rise, then the fall.
    nxt = np.append(source[1:], np.iinfo(np.int64).max)
    first = np.searchsorted(back, source)
    count = np.searchsorted(back, nxt) - first
    has_rise, has_fall = count >= 1, count >= 2
    if len(back):
        rise = back[np.minimum(first, len(back) - 1)]
        delay = (rise - source)[has_rise]
        widths = (back[np.minimum(first + 1, len(back) - 1)] - rise)[has_fall]
    else:
        delay = widths = np.zeros(0, np.int64)
    paired = len(delay)
    bounds = _latency_bounds(acq.fine_bits, bin_ps, real_board)
    ns = bin_ps / 1000
    if not paired:
        checks.append(Check("latency", False, "no returned pulse to time"))
    elif bounds is None:
        checks.append(Check("latency", False, f"{delay.min()}..{delay.max()} bins; no simulated "
                                              f"figure for {acq.fine_bits} fine bits"))
    else:
        lo, hi, spread, how = bounds
        width = int(delay.max() - delay.min())
        ok = lo <= delay.min() and delay.max() <= hi and width <= spread
        checks.append(Check(
            "latency", ok,
            f"{paired} pulses: {delay.min()}..{delay.max()} bins ({delay.min() * ns:g}.."
            f"{delay.max() * ns:g} ns), median {np.median(delay) * ns:g} ns, spread {width} "
            f"bins; expected {lo}..{hi} bins, spread <= {spread} ({how})"))
    want = acq.herald_width * 2 ** acq.fine_bits
    s = LOOPBACK_SLACK_BINS
    checks.append(Check(
        "pulse width", len(widths) > 0 and bool(np.all(np.abs(widths - want) <= s)),
        (f"{len(widths)} pulses: {widths.min()}..{widths.max()} bins ({widths.min() * ns:g}.."
         f"{widths.max() * ns:g} ns), herald width {acq.herald_width} cycles = {want} bins "
         f"+-{s}") if len(widths) else "no returned pulse ended"))
    return checks


def _run(args, tagger, board_name):
    """Configure, run, check (the board is open). Returns the exit status."""
    import warnings
    from .acquire import summarise
    from .tagger import SettingsNote, option_message
    loopback = args.loopback is not None
    try:
        if loopback:
            settings, notes = _loopback_acquisition(tagger, args)
        else:
            settings, notes = _settings(args, tagger.channels, tagger.rules), []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SettingsNote)      # printed as notes below
            run = tagger.run(settings, args.duration, keep=True)
    except ConfigError as error:
        _error(option_message(error))
        return EXIT_USAGE
    for note in list(notes) + list(run.notes):
        sys.stderr.write(f"heraldry: note: {option_message(note)}\n")
    acq = run.acquisition
    if not args.quiet:
        ident = tagger.identity
        sys.stderr.write(f"heraldry: {tagger.device.transport.name}: gateware "
                         f"{ident.gateware_version}, {ident.channels} channels, "
                         f"{ident.clock_hz / 1e6:g} MHz; "
                         + (f"loopback herald {args.loopback[0]} -> input {args.loopback[1]}"
                            if loopback else f"test signal {acq.test_signal}")
                         + f" for {args.duration * 1e3:g} ms of device time...\n")
    with run:
        run.wait()
    result = run.result
    summary = summarise(result, board=board_name)
    checks = selftest_checks(summary, result, test_signal=not loopback)
    what = f"test signal {acq.test_signal}"
    if loopback:
        herald, channel = args.loopback
        checks += loopback_checks(summary, result, herald, channel,
                                  real_board=board_name != "sim")
        what = (f"loopback herald {herald} -> input {channel}, source on channel 0: "
                + ("periodic test signal" if acq.test_signal != "off" else "its pin"))
    print(f"selftest of {board_name} on {result.port}: {acq.channels} channels, "
          f"{summary['device_seconds'] * 1e3:.3g} ms of device time, {what}, "
          f"{summary['tags']} tags, {summary['dropped']} dropped")
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
            if args.loopback is not None:
                _check_jumper(args.loopback, "--loopback", ident.channels, ident.rules)
                limit = ident.clock_hz // 4      # the UART's four cycles a bit
                if args.baud is not None and args.baud > limit:
                    raise ConfigError(f"--baud must be 1..{limit} on the virtual board, not "
                                      f"{args.baud}")
                if args.sim_jumper not in (None, "none"):
                    _check_jumper(args.sim_jumper, "--sim-jumper", ident.channels, ident.rules)
            try:
                settings_to_acquisition(_settings(args, ident.channels, ident.rules), ident)
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
