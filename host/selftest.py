"""The board's self-test, as a library: run the built-in test signal (or a loopback through one
jumper wire) and check the board's counters against the records it streamed, the reference model
and the simulated pin-to-pin latency.

:func:`selftest` (or :meth:`heraldry.Tagger.selftest`) runs it on an opened board and returns a
:class:`SelftestReport`: one :class:`Check` per check, PASS/FAIL with its figures, the run's
summary and result. ``heraldry selftest`` only maps its options onto it and prints the report.

What a run does: the test signal (``pairs``: channel 0 and 1 are the arms of a pair source, the
others dark counts; ``periodic``: every channel every ``period_ns``), one herald rule on channels
0 and 1 (channel 0 alone on a 1-channel board; every channel with ``periodic``) and a coincidence
record for every window of that pattern, ``duration_s`` of device time as a
:class:`heraldry.host.tagger.Run`. The checks:

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

With ``loopback=(H, C)`` it checks the board's real pins with one jumper wire from herald output
``H`` to detector input ``C`` (where they are on each board: ``docs/boards.md``, "Loopback
self-test"). Channel 0 is the source: the built-in test signal's periodic source on channel 0
alone (every ``period_ns``; the other channels read their pins), or on a board without the test
signal (the iCEBreaker) channel 0's pin, which the user feeds with a logic signal. Herald rule 0
is channel 0 alone (early) on pin ``H``, input ``C`` takes both edges, so every herald pulse
comes back as a rise and a fall on ``C``. Besides ``link``, the channel counters, ``loss
records``, ``herald rule 0`` and ``model`` above:

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
"""

import warnings
from dataclasses import dataclass, field

from .. import protocol
from .config import ConfigError, rule_text

__all__ = ["selftest", "SelftestReport", "Check", "selftest_settings", "loopback_settings",
           "selftest_checks", "loopback_checks", "DURATION_S", "PERIOD_NS",
           "LOOPBACK_DURATION_S", "LOOPBACK_PERIOD_NS"]

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


@dataclass
class SelftestReport:
    """What :func:`selftest` found.

    ``checks`` (list of :class:`Check`), ``what`` (the source: test signal or loopback, in
    words), ``summary`` (:func:`heraldry.host.acquire.summarise` of the run), ``result`` (the
    run's ``AcquisitionResult``, records kept), ``notes`` (settings notes, one line each).
    ``passed``: every check passed. ``lines()``: the report as ``heraldry selftest`` prints it."""
    board: str
    what: str
    checks: list
    summary: dict
    result: object
    notes: list = field(default_factory=list)

    @property
    def passed(self):
        return all(check.ok for check in self.checks)

    @property
    def failed(self):
        """Names of the checks that failed."""
        return [check.name for check in self.checks if not check.ok]

    def lines(self):
        acq, summary = self.result.acquisition, self.summary
        failed = self.failed
        return ([f"selftest of {self.board} on {self.result.port}: {acq.channels} channels, "
                 f"{summary['device_seconds'] * 1e3:.3g} ms of device time, {self.what}, "
                 f"{summary['tags']} tags, {summary['dropped']} dropped"]
                + [check.line() for check in self.checks]
                + [f"selftest {'FAIL' if failed else 'PASS'}: "
                   f"{len(self.checks) - len(failed)} of {len(self.checks)} checks passed"
                   + (f" (failed: {', '.join(failed)})" if failed else "")])

    def __str__(self):
        return "\n".join(self.lines())


def _check_jumper(jumper, what, channels, rules):
    herald, channel = jumper[:2]
    if channels < 2:
        raise ConfigError(f"{what} needs a board with 2 or more inputs (channel 0 is the "
                          f"source)")
    if herald >= rules:
        raise ConfigError(f"{what}: herald output {herald}: this board has herald outputs "
                          f"0..{rules - 1}")
    if not 1 <= channel < channels:
        raise ConfigError(f"{what}: input {channel}: the jumper goes to an input 1.."
                          f"{channels - 1} (channel 0 is the source)")


def selftest_settings(channels, rules, test_signal="pairs", *, pair_rate_hz=1e5, efficiency=0.5,
                      dark_rate_hz=1e3, pair_delay_ns=0.0, period_ns=PERIOD_NS, seed=1):
    """The selftest's :class:`~heraldry.host.tagger.Settings` for a board of ``channels`` and
    ``rules``: the test signal, a window of one clock cycle (the arms of a pair with no pair
    delay share a cycle), herald rule 0 on channels 0 and 1 (pairs; channel 0 alone on a
    1-channel board) or on every channel (periodic) with its pattern recorded, rule 1 on
    channel 0."""
    from .tagger import Settings
    if test_signal not in ("pairs", "periodic"):
        raise ConfigError(f"the selftest's test signal is pairs or periodic, not {test_signal!r}")
    pair = (0b11 if channels >= 2 else 0b1) if test_signal == "pairs" else 2 ** channels - 1
    return Settings(
        window_ns=None, heralds=[pair] + ([0b1] if rules >= 2 else []),
        record_coincidences=[pair], test_signal=test_signal,
        pair_rate_hz=pair_rate_hz, efficiency=efficiency, dark_rate_hz=dark_rate_hz,
        pair_delay_ns=pair_delay_ns, period_ns=period_ns, seed=seed)


def loopback_settings(tagger, herald, channel, *, period_ns=LOOPBACK_PERIOD_NS, seed=1):
    """The :class:`~heraldry.host.tagger.Settings` of a loopback selftest on ``tagger`` (jumper
    from herald output ``herald`` to input ``channel``): herald rule 0 on channel 0 alone
    (early) driving that herald pin, both edges on input ``channel``, and channel 0 fed by the
    periodic test signal (the other channels read their pins) or, on a board without it, by
    its pin. :class:`ConfigError` if the board has no such pin or input."""
    from ..model import HeraldRule
    from .tagger import Settings
    _check_jumper((herald, channel), "loopback", tagger.channels, tagger.rules)
    return Settings(
        window_ns=None, heralds=[HeraldRule(0b1, 0, "early", herald)], edges={channel: "both"},
        test_signal="periodic" if tagger.has_test_signal else "off",
        pin_channels=tuple(range(1, tagger.channels)), dark_rate_hz=0.0,
        period_ns=period_ns, seed=seed)


def selftest(tagger, *, duration_s=None, test_signal="pairs", loopback=None, pair_rate_hz=1e5,
             efficiency=0.5, dark_rate_hz=1e3, pair_delay_ns=0.0, period_ns=None, seed=1,
             real_board=None, label=None, progress=None):
    """Run the self-test on an opened board (:func:`heraldry.open`) and return its
    :class:`SelftestReport` (module docstring: what runs and what is checked).

    ``duration_s``: device time (default :data:`DURATION_S`, :data:`LOOPBACK_DURATION_S` with
    ``loopback``). ``test_signal``: ``"pairs"`` or ``"periodic"`` (ignored with ``loopback``,
    which uses the periodic source). ``loopback``: ``(herald, channel)``, a jumper from herald
    output ``herald`` to input ``channel``. ``period_ns``: the periodic source's period (default
    :data:`PERIOD_NS`, :data:`LOOPBACK_PERIOD_NS` with ``loopback``). ``real_board``: whether
    the latency bounds include :data:`LOOPBACK_IO_NS` for buffers and wire (default: unless the
    board is the virtual one). ``label``: the board's name in the report (default
    ``tagger.name``). ``progress``: called with one line before the run starts.
    Bad settings raise :class:`ConfigError` (one line) before anything runs; a board lost
    midway raises :class:`heraldry.host.driver.DeviceLost`."""
    import math
    from .acquire import summarise
    from .tagger import SettingsNote, option_message
    if tagger.is_replay:
        raise ConfigError("a selftest runs on a board, not on a replay")
    if duration_s is None:
        duration_s = LOOPBACK_DURATION_S if loopback is not None else DURATION_S
    if not 0 < duration_s < math.inf:
        raise ConfigError(f"the selftest's duration must be positive and finite, not "
                          f"{duration_s:g}")
    if period_ns is None:
        period_ns = LOOPBACK_PERIOD_NS if loopback is not None else PERIOD_NS
    if real_board is None:
        real_board = not _is_virtual(tagger)
    try:
        if loopback is not None:
            herald, channel = loopback
            settings = loopback_settings(tagger, herald, channel, period_ns=period_ns, seed=seed)
        else:
            settings = selftest_settings(
                tagger.channels, tagger.rules, test_signal, pair_rate_hz=pair_rate_hz,
                efficiency=efficiency, dark_rate_hz=dark_rate_hz, pair_delay_ns=pair_delay_ns,
                period_ns=period_ns, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SettingsNote)   # the same notes are in run.notes
            run = tagger.run(settings, duration_s, keep=True)
    except ConfigError as error:
        raise ConfigError(option_message(error)) from None
    notes = [option_message(note) for note in run.notes]
    acq = run.acquisition
    if loopback is not None:
        what = (f"loopback herald {loopback[0]} -> input {loopback[1]}, source on channel 0: "
                + ("periodic test signal" if acq.test_signal != "off" else "its pin"))
    else:
        what = f"test signal {acq.test_signal}"
    if progress is not None:
        progress(f"{tagger.name}: {tagger.channels} channels, {tagger.clock_hz / 1e6:g} MHz; "
                 f"{what.split(',')[0]} for {duration_s * 1e3:g} ms of device time...")
    with run:
        run.wait()
    result = run.result
    board = tagger.name if label is None else label
    summary = summarise(result, board=board)
    checks = selftest_checks(summary, result, test_signal=loopback is None)
    if loopback is not None:
        checks += loopback_checks(
            summary, result, loopback[0], loopback[1], real_board=real_board,
            gate_stage=bool(tagger.capabilities & protocol.CAPABILITY_GATE_STAGE))
    return SelftestReport(board=board, what=what, checks=checks, summary=summary,
                          result=result, notes=notes)


def _is_virtual(tagger):
    """The board is the virtual one that :func:`heraldry.open` started (``open("sim")``)."""
    return tagger._twin is not None


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


def _latency_bounds(fine_bits, bin_ps, real_board, gate_stage=False):
    """``(lo, hi, spread, text)`` in bins: the loopback delay from a channel-0 tag to the
    returned rise, and its largest spread, for a board of these fine bits (``gate_stage``: its
    core has the gate stage, ``ident.capabilities`` bit 7, one core period later); ``None``
    for an input block with no simulated figure."""
    import math
    from ..sim.latency import BLOCK_BY_FINE_BITS, core_periods
    block = BLOCK_BY_FINE_BITS.get(fine_bits)
    if block is None:
        return None
    low, high = core_periods(block, "early", gate_stage=gate_stage)
    per = 2 ** fine_bits
    io_bins = math.ceil(LOOPBACK_IO_NS * 1000 / bin_ps) if real_board else 0
    s = LOOPBACK_SLACK_BINS
    # The returned edge is seen at the first sample instant after the herald edge: up to one
    # bin after it; the simulated range is open at the top.
    lo = math.floor(low * per) - s
    hi = math.ceil(high * per) + 1 + io_bins + s
    spread = math.ceil((high - low) * per) + s
    text = (f"pin to pin {float(low):g}..{float(high):g} core periods simulated"
            + (" (with the gate stage)" if gate_stage else "")
            + (f" + up to {LOOPBACK_IO_NS:g} ns of buffers and wire" if real_board else "")
            + f", {s} bins slack")
    return lo, hi, spread, text


def loopback_checks(summary, result, herald, channel, real_board=True, gate_stage=False):
    """The loopback checks (list of :class:`Check`) of a ``--loopback`` run (herald pin
    ``herald`` wired to input ``channel``, channel 0 the source; module docstring).
    ``gate_stage``: the board's core has the gate stage (``ident.capabilities`` bit 7)."""
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
    bounds = _latency_bounds(acq.fine_bits, bin_ps, real_board, gate_stage)
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
