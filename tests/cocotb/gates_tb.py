"""cocotb testbenches of the converted ``TaggerCore(gates=True)`` (Verilator): channel roles
(detector, sync, reference), per-channel gates, the attempt clock, sync markers and herald
records with attempt number and sync offset (docs/semantics.md, "Sync, gates and reference
markers").

Run by ``tests/cocotb/test_gates_cocotb.py``; not collected by pytest itself. The scoreboard is
``heraldry.model.simulate`` on the pins' edge bins (``core_tb`` explains the time mapping):
every streamed tag and marker in stream order, every herald record with its attempt and offset
(``Result.herald_sync``), coincidence records, herald pins and the counters (singles, which
count the sync's attempts and the reference's markers, heralds, ``gated_out``, ``filtered``).
"""

import random

import cocotb
import numpy as np

from heraldry import model
from heraldry.host.config import Acquisition
from heraldry.protocol import ATTEMPT_BITS, Kind

from core_tb import (PERIOD_PS, PHY_LATENCY, CoreBench, _check_against, _edge_bins, _edges,
                     _off_edge, _pulse_ok, _random_pulses)

SYNC = 3            # the sync channel in both testbenches
SYNC_DELAY = 2      # its delay (bins): a sync edge of bin b is the sync time b + 2


def _sync_pulses(rng, at, first, last, period, pulses, miss=0.0, jitter=0):
    """Sync pulses on channel ``SYNC``: one every ``period`` bins from bin ``first`` to
    ``last``, each up to ``jitter`` bins late, a fraction ``miss`` left out. Returns their
    bins."""
    bins = []
    for b in range(first, last, period):
        b += rng.randrange(0, jitter + 1)
        if rng.random() < miss:
            continue
        rise = at(b, rng.randrange(1, PERIOD_PS))
        fall = _off_edge(rise + rng.randrange(PERIOD_PS + 1, 2 * PERIOD_PS))
        assert _pulse_ok(pulses[SYNC], rise, fall)
        pulses[SYNC].append((rise, fall))
        bins.append(b)
    return bins


async def _run(bench, acq, pulses, run_from, run_to, attempt_preset=None):
    """Configure, clear, optionally preset the attempt counter, run from ``run_from`` to
    ``run_to`` (``now`` values) driving ``pulses``; returns ``(expected, records, counters)``
    after checking every output against the model. With ``attempt_preset`` the hardware's
    attempt numbers are the model's plus it, modulo ``2**ATTEMPT_BITS``."""
    dut = bench.dut
    settings = acq.model_settings()
    await bench.configure(acq.gateware_config())
    await bench.clear()
    if attempt_preset is not None:
        # White box: no sync edge has come since clear; start the attempt clock just below the
        # wrap instead of 2**32 sync edges later.
        await bench.now_at_falling_edge()
        dut.gates.attempt.value = attempt_preset
    driver = cocotb.start_soon(bench.drive(_edges(pulses)))
    started = await bench.set_run(1, at_now=run_from)
    stopped = await bench.set_run(0, at_now=run_to)
    await driver
    await bench.drain(quiet_cycles=2 * bench.channels + bench.rules + 16,
                      at_least=settings.window + 16)
    counters = await bench.read_counters()
    rise, fall = _edge_bins(bench, pulses)
    expected = model.simulate(rise, fall, settings, gate=[(started - PHY_LATENCY,
                                                             stopped - PHY_LATENCY)])
    records = bench.decoded()
    _check_against(bench, records, counters, expected, settings)
    got = [(r["time"], r["rule"], r["attempt"], r["offset"]) for r in records
           if r["kind"] == Kind.HERALD]
    preset = attempt_preset or 0
    want = [(int(h["time"]), int(h["rule"]), (int(s["attempt"]) + preset) % 2**ATTEMPT_BITS,
             int(s["offset"])) for h, s in zip(expected.heralds, expected.herald_sync)]
    assert got == want, "herald records' attempt/offset differ from the model"
    assert counters["singles"][SYNC] == expected.attempts
    dut._log.info("%d tags (%d markers), heralds %s, attempts %d, gated_out %s, singles %s",
                  expected.tags.size, int((expected.tags["channel"] == SYNC).sum()),
                  expected.herald_counts.tolist(), expected.attempts, expected.gated_out.tolist(),
                  expected.singles.tolist())
    return expected, records, counters


@cocotb.test()
async def random_gates_against_model(dut):
    """Random stimulus: the sync on channel 3 (delay 2) every 17 bins with a bin of jitter and
    5 % of its edges missing, markers every 3rd; channel 0 gated to offsets 3..8, channel 1
    (delay 1, streamed ``none``) to 1..7, channel 2 ungated (its events before the first sync
    herald with attempt 0 and the saturated offset); an exact rule D0&D1 vetoed by D2 and an
    early rule D2; pairs, triples and lone clicks at random picoseconds."""
    rng = random.Random(13013)
    bench = CoreBench(dut, gates=True)
    await bench.start()
    n = bench.channels
    assert n == 4 and bench.rules == 2
    acq = Acquisition(channels=n, rules=2, test_signal="off", window_bins=3,
                      delays_bins=[0, 1, 0, SYNC_DELAY],
                      roles=["detector", "detector", "detector", "sync"],
                      gates_bins=[(3, 6), (1, 7), None, None], sync_marker_every=3,
                      stream=["all", "none", "all", "all"],
                      herald_rules=[model.HeraldRule(0b0011, 0b0100, "exact", 0),
                                    model.HeraldRule(0b0100, 0, "early", 1)],
                      herald_width=2, coincidence_record_mask=1 << 0b0011)
    n0 = await bench.now_at_falling_edge()
    run_from, run_to = n0 + 40, n0 + 40 + 1800
    gate_from, gate_to = run_from - PHY_LATENCY, run_to - PHY_LATENCY

    def at(b, offset):
        return bench.time_of_cycle(b - 1) + offset

    pulses = [[] for _ in range(n)]
    # Detectors from the start, the sync from 60 bins on: the first events have no sync edge.
    syncs = _sync_pulses(rng, at, gate_from + 60, gate_to - 10, 17, pulses, miss=0.05, jitter=1)
    spans = [(bench.time_of_cycle(gate_from + 5), bench.time_of_cycle(gate_to - 10))]
    added = _random_pulses(rng, 3, spans, 3 * PERIOD_PS, pulses)
    assert added >= 400 and len(syncs) > 80, (added, len(syncs))

    expected, records, counters = await _run(bench, acq, pulses, run_from, run_to)
    # The stimulus reached what the test is about (a check of the test, not of the core).
    assert expected.gated_out[:2].min() > 50 and expected.singles[:2].min() > 50
    assert expected.gated_out[2] == 0 and expected.filtered[1] == expected.singles[1]
    assert not (expected.tags["channel"] == 1).any()
    assert expected.attempts == len(syncs)
    assert (expected.tags["channel"] == SYNC).sum() == len(syncs) // 3
    assert expected.herald_counts.min() >= 5
    offsets = expected.herald_sync["offset"]
    assert (offsets == model.OFFSET_NONE).sum() >= 1            # a herald before the first sync
    assert len(set(offsets[expected.heralds["rule"] == 0].tolist())) >= 3


@cocotb.test()
async def gate_boundaries_and_attempt_wrap(dut):
    """Directed boundaries, then random stimulus, with the attempt counter preset to
    ``2**32 - 3`` after clear (its wrap to 0 is 2**32 sync edges away otherwise): the sync on
    channel 3 every 20 bins, markers every 2nd, channel 2 a reference (every edge streamed,
    counted, in no window; one in the same cycle as a sync edge). Relative to a sync time S,
    channel 0 (gate 3..7): S + 2 out, S + 3 in (the gate opens), S + 7 in, S + 8 out (offset +
    width), S out (same cycle as the sync, gate offset 3); channel 1 (gate 0..3): S in (same
    cycle), S + 3 in, S + 4 out, S - 1 out (the previous attempt's offset 19); detections
    before the first sync edge are gated out."""
    rng = random.Random(4242)
    bench = CoreBench(dut, gates=True)
    await bench.start()
    n = bench.channels
    acq = Acquisition(channels=n, rules=2, test_signal="off", window_bins=2,
                      delays_bins=[0, 1, 0, SYNC_DELAY],
                      roles=["detector", "detector", "reference", "sync"],
                      gates_bins=[(3, 5), (0, 4), None, None], sync_marker_every=2,
                      herald_rules=[model.HeraldRule(0b0011, 0, "exact", 0),
                                    model.HeraldRule(0b0010, 0, "early", 1)],
                      herald_width=1)
    n0 = await bench.now_at_falling_edge()
    run_from, run_to = n0 + 40, n0 + 40 + 1500
    gate_from, gate_to = run_from - PHY_LATENCY, run_to - PHY_LATENCY

    def at(b, offset=2500):
        return bench.time_of_cycle(b - 1) + offset

    pulses = [[] for _ in range(n)]
    delay = [0, 1, 0, SYNC_DELAY]

    def click(c, t, offset=2500):
        """A pulse on channel c whose delayed time is t."""
        b = t - delay[c]
        rise = at(b, offset)
        fall = _off_edge(rise + PERIOD_PS + 1 + rng.randrange(0, PERIOD_PS // 2))
        assert _pulse_ok(pulses[c], rise, fall), (c, t)
        pulses[c].append((rise, fall))

    first = gate_from + 30
    syncs = _sync_pulses(rng, at, first, gate_to - 10, 20, pulses)
    S = [b + SYNC_DELAY for b in syncs]             # sync times (delayed)
    # Before the first sync edge: gated out.
    click(0, S[0] - 10)
    click(1, S[0] - 6)
    plan = {  # k -> [(channel, offset from S[k], kept)]; S[k] starts attempt k + 1
        1: [(0, 2, False), (1, 0, True)],
        2: [(0, 3, True), (1, 3, True)],            # D0&D1 in one window: rule 0
        3: [(0, 7, True), (1, 4, False)],
        4: [(0, 8, False), (1, -1, False)],
        5: [(0, 0, False), (1, 0, True)],
    }
    for k, hits in plan.items():
        for c, offset, _ in hits:
            click(c, S[k] + offset, offset=1 + 3000 * c)
    # The reference: in the same cycle as a sync edge, and between.
    click(2, S[6], offset=PERIOD_PS - 1)
    click(2, S[6] + 9)
    spans = [(bench.time_of_cycle(S[8]), bench.time_of_cycle(gate_to - 10))]
    added = _random_pulses(rng, 2, spans, 5 * PERIOD_PS, pulses)
    for t in range(S[8] + 3, gate_to - 10, 37):
        click(2, t, offset=rng.randrange(1, PERIOD_PS))
    assert added >= 150, added

    preset = 2**ATTEMPT_BITS - 3
    expected, records, counters = await _run(bench, acq, pulses, run_from, run_to,
                                             attempt_preset=preset)
    # The directed cases are where they were meant to be, and the model keeps what it should.
    tags = set(map(tuple, expected.tags.tolist()))
    for k, hits in plan.items():
        for c, offset, kept in hits:
            t = S[k] + offset
            where = model.sync_position([t], S)[0]
            assert (where["attempt"], where["offset"]) == ((k + 1, offset) if offset >= 0
                                                           else (k, 20 + offset))
            assert ((t, c) in tags) == kept, (k, c, offset)
    assert (S[0] - 10, 0) not in tags and (S[0] - 6, 1) not in tags
    assert (S[6], 2) in tags and (S[6] + 9, 2) in tags
    markers = sorted(t for t, c in tags if c == SYNC)
    assert markers == S[1::2]
    # Rule 0 fires on the pair after S[2] (the exact rule at the window's end), rule 1 on the
    # lone channel-1 detections after S[1] and S[5].
    heralds = [(int(h["time"]), int(h["rule"])) for h in expected.heralds]
    assert (S[2] + 3 + acq.window_bins, 0) in heralds
    assert (S[1], 1) in heralds and (S[5], 1) in heralds
    # The attempt numbers wrap: the model's attempts 2, 3 and 6 (S[k] starts attempt k + 1)
    # are 2**32 - 1, 0 and 3.
    attempts = {r["attempt"] for r in records if r["kind"] == Kind.HERALD}
    assert {2**32 - 1, 0, 3} <= attempts, sorted(attempts)[:8]
    assert expected.gated_out[:2].min() > 20 and expected.herald_counts.min() >= 5
    assert expected.singles[2] == int((expected.tags["channel"] == 2).sum()) > 30
    assert np.all(expected.herald_sync["attempt"] >= 1)


@cocotb.test()
async def offset_counter_saturates(dut):
    """The far end of the offset counter (``GATE_BITS`` = 16 bits): one sync edge at S, then
    65 545 bins without one. Channels 0..2 take both edges (events two bins apart). Channel 0
    gated to the last five offsets (65530..65534: offset + width = 2**16 - 1, the most the host
    allows): 65529 out, 65530, 65532, 65534 in, 65536 and 65538 (saturated) out; channel 2 gated
    to 0..65534: 65534 in, 65536 out; channel 1 ungated, its herald records carry offsets up to
    65533, then 65535 (the saturated value) from 65535 on, attempt 0 and offset 65535 before
    the first sync edge, and small offsets of attempt 2 after the second. Every output against
    the model."""
    bench = CoreBench(dut, gates=True)
    await bench.start()
    n = bench.channels
    top = 2**16 - 1
    assert top == model.OFFSET_NONE
    acq = Acquisition(channels=n, rules=2, test_signal="off", window_bins=1,
                      delays_bins=[0, 0, 0, SYNC_DELAY], edges=["both"] * 3 + ["rising"],
                      roles=["detector", "detector", "detector", "sync"],
                      gates_bins=[(top - 5, 5), None, (0, top), None], sync_marker_every=1,
                      herald_rules=[model.HeraldRule(0b0010, 0, "early", 0),
                                    model.HeraldRule(0b0001, 0, "early", 1)],
                      herald_width=1)
    n0 = await bench.now_at_falling_edge()
    gate_from = n0 + 40 - PHY_LATENCY
    S = gate_from + 20                              # the first sync time (delayed)
    S2 = S + top + 10
    run_from, run_to = n0 + 40, S2 + 40

    def at(t, c, offset):
        """Time of an edge on channel c whose delayed time is t."""
        return bench.time_of_cycle(t - (SYNC_DELAY if c == SYNC else 0) - 1) + offset

    pulses = [[] for _ in range(n)]

    def pulse(c, t_rise, t_fall):
        rise, fall = at(t_rise, c, 3000), at(t_fall, c, 5000)
        assert _pulse_ok(pulses[c], rise, fall), (c, t_rise, t_fall)
        pulses[c].append((rise, fall))

    pulse(SYNC, S, S + 1)
    pulse(SYNC, S2, S2 + 1)
    for t in (S + top - 6, S + top - 3, S + top + 1):
        pulse(0, t, t + 1 if t == S + top - 6 else t + 2)
    for t in (S - 8, S + 4, S + top - 2, S + top + 2, S2 + 3):
        pulse(1, t, t + 2)
    for t in (S + 10, S + top - 1):
        pulse(2, t, t + 2)

    expected, records, counters = await _run(bench, acq, pulses, run_from, run_to)
    assert expected.attempts == 2 and [int(t) for t, c in expected.tags.tolist()
                                       if c == SYNC] == [S, S2]
    assert expected.gated_out.tolist() == [3, 0, 1, 0]
    assert expected.singles.tolist() == [3, 10, 3, 2]
    rule0 = [(int(h["time"]) - S, int(s["attempt"]), int(s["offset"]))
             for h, s in zip(expected.heralds, expected.herald_sync) if h["rule"] == 0]
    assert rule0 == [(-8, 0, top), (-6, 0, top), (4, 1, 4), (6, 1, 6), (top - 2, 1, top - 2),
                     (top, 1, top), (top + 2, 1, top), (top + 4, 1, top),
                     (S2 - S + 3, 2, 3), (S2 - S + 5, 2, 5)]
    rule1 = [(int(h["time"]) - S, int(s["offset"]))
             for h, s in zip(expected.heralds, expected.herald_sync) if h["rule"] == 1]
    assert rule1 == [(top - 5, top - 5), (top - 3, top - 3), (top - 1, top - 1)]
