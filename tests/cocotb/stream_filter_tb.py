"""cocotb testbenches of the stream filter in the converted
:class:`~heraldry.gateware.core.TaggerCore` (Verilator; the default core has the filter).

Run by ``tests/cocotb/test_stream_filter_cocotb.py``; not collected by pytest itself. Each
channel streams ``all``, ``coincident`` or ``none`` (docs/semantics.md, "Stream filters"); the
scoreboard is ``heraldry.model.simulate`` on the pin edges' bins (``core_tb`` explains the time
mapping): every streamed tag in stream order, herald and coincidence record, FILTER_FULL loss
record, herald pin and counter, the ``filtered`` and ``filter_dropped`` counters included.
"""

import random

import cocotb

from heraldry import model
from heraldry.host.config import Acquisition

from core_tb import (PERIOD_PS, PHY_LATENCY, CoreBench, _check_against, _edge_bins, _edges,
                     _off_edge, _pulse_ok, _random_pulses)


def _lone_pulses(rng, c, spans, mean_gap, pulses):
    """Add uncorrelated pulses (1..2 cycles wide) on channel ``c`` with exponential gaps of mean
    ``mean_gap`` ps within ``spans``; returns how many were added."""
    added = 0
    for first, last in spans:
        t = first
        while True:
            t += int(rng.expovariate(1 / mean_gap))
            if t > last:
                break
            rise = _off_edge(t)
            fall = _off_edge(rise + rng.randrange(PERIOD_PS + 1, 2 * PERIOD_PS))
            if fall < last and _pulse_ok(pulses[c], rise, fall):
                pulses[c].append((rise, fall))
                added += 1
    return added


async def _run(dut, *, seed, modes, edges, window, rules, directed):
    """Configure ``modes``, drive the ``directed(bench, at, add, gate_from)`` pulses and random
    ones around them, run, compare everything with the model; returns ``(expected, records,
    gate_from)``."""
    rng = random.Random(seed)
    bench = CoreBench(dut)
    await bench.start()
    n = bench.channels
    assert n == 4
    acq = Acquisition(channels=n, rules=bench.rules, test_signal="off", window_bins=window,
                      edges=edges, stream=list(modes), herald_rules=rules, herald_width=2,
                      coincidence_record_mask=(1 << 0b0011) | (1 << 0b0111))
    settings = acq.model_settings()
    assert settings.stream_hold == model.STREAM_HOLD == 2
    await bench.configure(acq.gateware_config())
    await bench.clear()
    n0 = await bench.now_at_falling_edge()
    run_from = n0 + 40
    run_to = run_from + 1800
    gate_from, gate_to = run_from - PHY_LATENCY, run_to - PHY_LATENCY
    pulses = [[] for _ in range(n)]

    def at(b, offset=2500):
        """Time of an edge with bin ``b``, ``offset`` ps after the previous clock edge."""
        return bench.time_of_cycle(b - 1) + offset

    def add(c, rise, fall):
        assert _pulse_ok(pulses[c], rise, fall), (c, rise, fall)
        pulses[c].append((rise, fall))

    directed_to = directed(at, add, gate_from)
    middle = (directed_to + gate_to) // 2
    spans = [(bench.time_of_cycle(directed_to + 10), bench.time_of_cycle(middle)),
             (bench.time_of_cycle(middle), bench.time_of_cycle(gate_to - 20))]
    # Correlated hits make coincident windows throughout. In the first half channel 0 clicks
    # often (several events per window: the hold buffer fills), in the second the lone clicks
    # of every channel make single-channel windows.
    added = _random_pulses(rng, n, spans[:1], 9 * PERIOD_PS, pulses)
    added += _random_pulses(rng, n, spans[1:], 40 * PERIOD_PS, pulses)
    added += _lone_pulses(rng, 0, spans[:1], 3 * PERIOD_PS, pulses)
    for c in range(n):
        gap = 10 if modes[c] == "coincident" else 60
        added += _lone_pulses(rng, c, spans[1:], gap * PERIOD_PS, pulses)
    assert added >= 400, added

    driver = cocotb.start_soon(bench.drive(_edges(pulses)))
    started = await bench.set_run(1, at_now=run_from)
    stopped = await bench.set_run(0, at_now=run_to)
    await driver
    await bench.drain(quiet_cycles=2 * n + bench.rules + 16, at_least=window + 16)
    counters = await bench.read_counters()

    rise, fall = _edge_bins(bench, pulses)
    expected = model.simulate(rise, fall, settings, gate=[(started - PHY_LATENCY,
                                                             stopped - PHY_LATENCY)])
    records = bench.decoded()
    dut._log.info("modes %s: %d tags streamed, filtered %s, filter_dropped %s, %d heralds",
                  modes, expected.tags.size, expected.filtered.tolist(),
                  expected.filter_dropped.tolist(), expected.heralds.size)
    _check_against(bench, records, counters, expected, settings)
    # Every channel's events are streamed, filtered or lost, as its mode says.
    for c, mode in enumerate(modes):
        streamed = int((expected.tags["channel"] == c).sum())
        assert streamed + expected.filtered[c] + expected.filter_dropped[c] == \
            expected.singles[c]
        if mode == "all":
            assert expected.filtered[c] == expected.filter_dropped[c] == 0
        elif mode == "none":
            assert streamed == 0 and expected.filtered[c] == expected.singles[c] > 20
        else:
            assert streamed > 20 and expected.filtered[c] > 10
    return expected, records, gate_from


@cocotb.test()
async def coincident_channels_hold_and_release(dut):
    """Modes (coincident, coincident, all, none), W = 7, channel 0 on both edges (events one
    cycle apart), an exact rule D0&D1 and an early rule D2; random stimulus plus directed
    windows: a held tag released by a join in the window's last bin; three held-to-be events
    of channel 0 before channel 1 joins (two slots: one lost, FILTER_FULL); four events of a
    single-channel window (two held, one over the full buffer, one in the last bin decided
    at once: all filtered, none lost); back-to-back windows (an event at
    t0 + W opens the next one, the first's held tag is filtered); a channel-0 window joined by
    channel 3 (mode none: not streamed, but it makes the window coincident)."""
    window = 7
    marks = {}

    def directed(at, add, gate_from):
        P = PERIOD_PS
        d = marks["release"] = gate_from + 20
        add(0, at(d, 1), at(d + 2, 4000))                  # rise d, fall d + 2
        add(1, at(d + window - 1, P - 1), at(d + window + 1))
        d = marks["full"] = gate_from + 50
        add(0, at(d), at(d + 2))                            # events d, d + 2, d + 4, d + 6
        add(0, at(d + 4), at(d + 6))
        add(1, at(d + 5), at(d + 7))
        d = marks["last"] = gate_from + 80
        add(0, at(d), at(d + 2))                            # channel 0 alone: d .. d + 6,
        add(0, at(d + 4), at(d + window - 1))               # the last bin decided at once
        d = marks["next"] = gate_from + 110
        add(0, at(d), at(d + 3))                            # d, d + 3 (held), then d + W
        add(1, at(d + window, 7000), at(d + window + 2))    # opens the next window
        d = marks["none"] = gate_from + 140
        add(0, at(d), at(d + 2))
        add(3, at(d + 3), at(d + 5))
        return gate_from + 160

    rules = [model.HeraldRule(0b0011, 0, "exact", 0), model.HeraldRule(0b0100, 0, "early", 1)]
    expected, records, _ = await _run(
        dut, seed=101, modes=("coincident", "coincident", "all", "none"),
        edges=["both", "rising", "rising", "rising"], window=window, rules=rules,
        directed=directed)
    tags = set(map(tuple, expected.tags.tolist()))
    d = marks["release"]
    assert {(d, 0), (d + 2, 0), (d + window - 1, 1)} <= tags
    d = marks["full"]
    assert {(d, 0), (d + 2, 0), (d + 5, 1), (d + 6, 0)} <= tags and (d + 4, 0) not in tags
    d = marks["last"]
    assert not {(d, 0), (d + 2, 0), (d + 4, 0), (d + 6, 0)} & tags
    d = marks["next"]
    assert (d, 0) not in tags and (d + 3, 0) not in tags and (d + window, 1) not in tags
    d = marks["none"]
    assert (d, 0) in tags and (d + 2, 0) in tags and (d + 3, 3) not in tags
    assert expected.filter_dropped[0] >= 1 and expected.heralds.size > 20
    assert expected.coincidence_records.size > 10


@cocotb.test()
async def every_mode_on_every_channel_position(dut):
    """Modes moved round (none, all, coincident, coincident), W = 4, channel 2 on both edges,
    an exact rule D2&D3 with a veto on D1 and an early rule on D0 (a channel streamed
    ``none`` still heralds); random stimulus, every output against the model."""
    window = 4

    def directed(at, add, gate_from):
        # A window of channels 2 and 3 with channel 0 (none) joining: 2 and 3 streamed, 0 not;
        # one of 2 (both edges) and 0 only: 0, not streamed itself, makes it coincident.
        d = gate_from + 20
        add(2, at(d), at(d + 2))
        add(3, at(d + 3), at(d + 5))
        add(0, at(d + 1), at(d + 3))
        add(2, at(d + 30), at(d + 31, 9000))
        add(0, at(d + 32), at(d + 34))
        return d + 40

    rules = [model.HeraldRule(0b1100, 0b0010, "exact", 0), model.HeraldRule(0b0001, 0, "early", 1)]
    expected, records, gate_from = await _run(
        dut, seed=202, modes=("none", "all", "coincident", "coincident"),
        edges=["rising", "rising", "both", "rising"], window=window, rules=rules,
        directed=directed)
    tags = set(map(tuple, expected.tags.tolist()))
    d = gate_from + 20
    assert {(d, 2), (d + 3, 3)} <= tags and (d + 1, 0) not in tags
    assert {(d + 30, 2), (d + 31, 2)} <= tags
    assert (expected.herald_counts > 10).all()
