"""The BSM herald demo (``make demo-bsm``): psi- heralds on the virtual board against the model.

Runs ``heraldry acquire`` on the virtual board with the test signal's Bell-state-measurement
source (detectors D0..D3 on channels 0..3, the sync on channel 4: the board's attempt clock,
``--sync 4``, gating D0..D3 to :data:`DEMO_GATE_NS` after each sync edge) and the two exact
psi- rules on herald pin 0, prints the usual summary, then one line per rule: the board's
herald count, the reference model's for the same seed and run (the bit-exact test-signal model
and the core model, the run placed by its streamed tags and the board's counters:
:func:`model_heralds`), the count expected from the source's probabilities alone (psi- events
with both photons detected, no dark counts) with its standard deviation, and the model's count
for the same events without the gates (the false heralds the gates keep out).

Usage: ``python -m heraldry.host.bsm_demo [acquire options...]``; any ``heraldry acquire``
option given here replaces the demo's own (:data:`DEMO_OPTIONS`). Exit status: that of
``acquire`` if it did not succeed, else 0, or 1 if a rule's count differs from the model's or
the model cannot place the run (events dropped).
"""

import contextlib
import dataclasses
import io
import json
import math
import os
import sys
import tempfile

import numpy as np

__all__ = ["PSI_MINUS_RULES", "DEMO_OPTIONS", "model_heralds", "expected_heralds", "main"]

#: psi- on one pin: D0 & D3 or D1 & D2, and nothing else in the window.
PSI_MINUS_RULES = ("D0&D3&!D1&!D2,exact,pin=0", "D1&D2&!D0&!D3,exact,pin=0")

#: The demo's acquire options (a sync every 10 us keeps 5 channels within a 12 Mbaud link).
DEMO_OPTIONS = {
    "--board": "sim", "--channels": "5", "--duration": "0.1", "--window": "20",
    "--test-signal": "bsm", "--period": "10000", "--bsm-offset": "5000", "--bsm-event": "0.5",
    "--bsm-psi-minus": "0.5", "--efficiency": "0.8", "--dark-rate": "2e4", "--seed": "1",
}

#: The test signal's sync channel (the periodic source), when the board has it.
SYNC_CHANNEL = 4
#: The gate on D0..D3 with the sync on :data:`SYNC_CHANNEL` (offset and width in ns after the
#: sync edge): 100 ns around the photons' arrival (``--bsm-offset`` 5000 ns), 1 % of the period.
DEMO_GATE_NS = (4950.0, 100.0)

# Cycles of slack on each bound of the clear command beyond its round trip (as the link tests
# use).
_SLACK = 4


def model_heralds(acq, channel, time_bins, device_cycles, counters=None, ungated=False):
    """Herald counts per rule that the reference model gives for the run whose streamed tags
    are ``channel`` and ``time_bins`` (delayed bins from the run start), or ``None`` if the
    model cannot place the run.

    The test signal restarts at the clear, which ``device_cycles`` (the acquire summary's
    command bounds) places to within one command round trip; the one start within those bounds
    at which the bit-exact source model (``heraldry.model.testsignal``) gives every streamed tag
    is the run's. The run gate opened within the start command's bounds and closed within the
    stop's: every generated event from the first streamed tag to the last is in it, and of the
    few the source generated within the bounds (a sync edge, an event gated out: neither is
    streamed) the board's counters say which were. So the core model
    (``heraldry.model.simulate``) is run for each gate those events allow, and a gate counts
    when its singles (the sync channel's: its attempts) and gated-out events equal the board's
    ``counters`` (``{"singles", "gated_out"}`` lists; without them, and with no sync channel,
    the gate is the first to the last tag as before). Every gate that counts must give the same
    herald counts, or the answer is ``None``.

    ``ungated``: return ``(counts, ungated_counts)``, the second for the same events and run
    gate with every channel's gate removed (the sync still the attempt clock, never in a
    window): what the heralds would be without the gates (``None`` if that is not unique)."""
    from .. import model
    from ..model import testsignal as tsmodel
    if not device_cycles or len(channel) == 0:
        return None
    clear, start, stop = (device_cycles.get(name) for name in ("clear", "start", "stop"))
    if clear is None or stop is None:
        return None
    delays = np.asarray(acq.delays_bins, np.int64)
    inputs = np.asarray(time_bins, np.int64) - delays[channel]     # input bins from run start
    lo, hi = clear[0] - _SLACK, clear[1] + _SLACK + 2             # PHY latency and the clear
    ks = tsmodel.generate(acq.test_signal_settings(), stop[1] - lo + 8 * _SLACK)
    c0 = int(channel[0])
    found = None
    for origin in (inputs[0] - ks[c0]).tolist():
        if not lo - 2 <= origin <= hi:
            continue
        k = inputs - origin
        if all(np.isin(k[channel == c], ks[c]).all() for c in range(acq.channels)):
            if found is not None:
                return None                     # two starts explain the tags: no answer
            found = origin
    if found is None:
        return None
    rise = [times + found for times in ks]
    no_fall = [np.zeros(0, np.int64)] * acq.channels
    first, last = int(inputs.min()), int(inputs.max())
    if counters is None or start is None:
        if any(role != "detector" for role in acq.roles) or any(
                g is not None for g in acq.gates_bins):
            return None              # events that are not streamed: the counters must place it
        gates = [(first, last + 1)]
    else:
        every = np.concatenate(rise)
        begin_lo = min(first, start[0] - _SLACK)
        end_hi = max(last + 1, stop[1] + _SLACK + 2)
        starts = [first] + np.unique(every[(every >= begin_lo) & (every < first)]).tolist()
        ends = [last + 1] + (np.unique(every[(every > last) & (every < end_hi)]) + 1).tolist()
        gates = [(b, e) for b in starts for e in ends]
    settings = acq.model_settings()
    rules = len(acq.herald_rules)
    answers, placed = set(), []
    for gate in gates:
        result = model.simulate(rise, no_fall, settings, gate=[gate])
        if counters is not None and start is not None and (
                result.singles.tolist() != list(counters["singles"])
                or result.gated_out.tolist() != list(counters["gated_out"])):
            continue
        answers.add(tuple(int(c) for c in result.herald_counts[:rules]))
        placed.append(gate)
    if len(answers) != 1:
        return (None, None) if ungated else None
    counts = list(answers.pop())
    if not ungated:
        return counts
    free = dataclasses.replace(settings, channel=tuple(
        dataclasses.replace(ch, gate=None) for ch in settings.channel))
    others = {tuple(int(c) for c in model.simulate(rise, no_fall, free, gate=[gate])
                    .herald_counts[:rules]) for gate in placed}
    return counts, (list(others.pop()) if len(others) == 1 else None)


def expected_heralds(acq, attempts):
    """``(mean, sd)`` per psi- rule from the source's probabilities alone: ``attempts`` x event
    x psi- x 1/2 x the two detectors' efficiencies (binomial), dark counts left out."""
    p_minus = acq.bsm_event_probability * acq.bsm_psi_minus / 2
    eta = acq.bsm_efficiencies
    out = []
    for a, b in ((0, 3), (1, 2)):
        p = p_minus * eta[a] * eta[b]
        out.append((attempts * p, math.sqrt(attempts * p * (1 - p))))
    return out


def _channels(args):
    """The channel count ``args`` (acquire's) give, as acquire's parser reads it; 0 if they do
    not parse (acquire then says why)."""
    from . import cli
    try:
        with contextlib.redirect_stderr(io.StringIO()):     # acquire says it, once
            return cli.build_parser().parse_args(args).channels or 0
    except SystemExit:
        return 0


def _demo_args(argv):
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    args = ["acquire"]
    for option, value in DEMO_OPTIONS.items():
        if option not in given:
            args += [option, value]
    if "--herald" not in given:
        for rule in PSI_MINUS_RULES:
            args += ["--herald", rule]
    if not {"--sync", "--gate"} & given and _channels(args + list(argv)) > SYNC_CHANNEL:
        # The attempt clock gates the detectors: dark counts herald only inside the gate.
        args += ["--sync", str(SYNC_CHANNEL)]
        for c in range(4):
            args += ["--gate", f"{c}:{DEMO_GATE_NS[0]:g}:{DEMO_GATE_NS[1]:g}"]
    return args + list(argv)


def main(argv=None):
    from . import cli
    from .config import ConfigError
    from .tagger import VIRTUAL_BOARDS
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _demo_args(argv)
    own_rules = "--herald" not in argv
    parsed = cli.build_parser().parse_args(args)
    with tempfile.TemporaryDirectory() as folder:
        # The summary and the tags, where the demo's options put them or in a folder of its own.
        summary_path = parsed.summary_json or os.path.join(folder, "summary.json")
        if parsed.summary_json is None:
            args += ["--summary-json", summary_path]
        tags_path = parsed.out
        if tags_path is None or not tags_path.endswith(".npz"):
            tags_path = os.path.join(folder, "tags.npz")
            if parsed.out is None:
                args += ["--out", tags_path]
        status = cli.main(args)
        if status != cli.EXIT_OK or not os.path.exists(summary_path):
            return status
        with open(summary_path) as f:
            summary = json.load(f)
        tags = dict(np.load(tags_path)) if os.path.exists(tags_path) else None
    if parsed.board not in VIRTUAL_BOARDS:
        print("BSM herald demo: the model comparison needs the virtual board's settings "
              "(--board sim)")
        return status
    try:
        acq, _ = cli.acquisition_from_args(cli.build_parser().parse_args(args))
    except ConfigError as error:        # not reached: acquire took these options
        sys.stderr.write(f"heraldry: error: {error}\n")
        return cli.EXIT_USAGE
    period_s = acq.period_cycles / acq.clock_hz
    sync = [c for c, role in enumerate(acq.roles) if role == "sync"]
    gated = bool(sync) and any(g is not None for g in acq.gates_bins)
    if sync and summary.get("attempts"):
        attempts = summary["attempts"]          # the board's count of sync edges in the run
    else:
        attempts = summary["duration_s"] / period_s
    if sync:
        where = f"on channel {sync[0]}, the board's attempt clock"
    else:
        where = ("on channel 4" if acq.channels > 4 else "not on a channel: the board has 4")
    efficiency = ", ".join(f"{e:g}" for e in acq.bsm_efficiencies)
    if len(set(acq.bsm_efficiencies)) == 1:
        efficiency = f"{acq.bsm_efficiencies[0]:g}"
    print(f"BSM herald demo: {attempts:.0f} attempts (sync every {period_s * 1e6:g} us, "
          f"{where}), event {acq.bsm_event_probability:g} per attempt, psi- "
          f"{acq.bsm_psi_minus:g}, efficiency {efficiency}, dark counts "
          f"{acq.dark_rate_hz:g}/s per detector")
    if gated:
        gates = sorted({g for g in acq.gates_bins if g is not None})
        text = ", ".join(f"{g[0] * acq.bin_ps / 1e3:g}-{(g[0] + g[1]) * acq.bin_ps / 1e3:g} ns"
                         for g in gates)
        print(f"  gates after each sync edge: {text}; gated out (not in any window): "
              f"{sum(summary.get('gated_out') or [])} events")
    counts = ungated = None
    if tags is not None:
        counters = {"singles": summary["singles"],
                    "gated_out": summary.get("gated_out") or [0] * acq.channels}
        counts, ungated = model_heralds(acq, tags["channel"].astype(np.int64),
                                        tags["time_ps"] // acq.bin_ps,
                                        summary.get("device_cycles"), counters, ungated=True)
    if counts is None:
        print("  (the model could not place the run: no tags, or a start that is not unique)")
        return cli.EXIT_FAILED
    expected = expected_heralds(acq, attempts)
    extra = gated and ungated is not None
    print(f"  {'rule':<30} {'board':>7} {'model':>7} {'psi- events, no darks':>23}"
          + (f" {'model, no gates':>16}" if extra else ""))
    outside = False
    for rule, (text, count) in enumerate(zip(summary["herald_rules"], summary["heralds"])):
        outside |= count != counts[rule]
        psi = own_rules and rule < 2
        mean = f"{expected[rule][0]:.0f} +- {expected[rule][1]:.0f}" if psi else "-"
        print(f"  {rule} {text:<28} {count:>7} {counts[rule]:>7} {mean:>23}"
              + (f" {ungated[rule]:>16}" if extra else "")
              + ("" if count == counts[rule] else "  DIFFERS from the model"))
    if extra:
        print(f"  without the gates the same events would give "
              f"{sum(ungated) - sum(counts)} more heralds (dark counts outside the gates)")
    if outside:
        return cli.EXIT_FAILED
    return status


if __name__ == "__main__":
    sys.exit(main())
