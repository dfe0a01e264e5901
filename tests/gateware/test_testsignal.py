# amaranth: UnusedElaboratable=no
"""TestSignal gateware against the bit-exact model (heraldry.model.testsignal)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from heraldry.gateware.testsignal import TestSignal
from heraldry.model.testsignal import (STREAM_DARK, TestSignalSettings, generate, initial_states,
                                       probability_threshold, stream_constant, xorshift32)
from heraldry.protocol import Source

CHANNELS = 4
ALWAYS = probability_threshold(1.0)


def settings(**fields):
    defaults = dict(seed=1, period=0, pair_threshold=0, eta_a=ALWAYS, eta_b=ALWAYS,
                    pair_delay=0, dark=(0,) * CHANNELS, sources=("pin",) * CHANNELS)
    defaults.update(fields)
    return TestSignalSettings(**defaults)


def p(x):
    return probability_threshold(x)


def simulate(phases):
    """Run ``phases`` = [(settings, clear_cycles, cycles), ...] on one TestSignal instance.

    Each phase sets the configuration, holds ``clear`` high for ``clear_cycles`` cycles
    (0 = no clear: the generator keeps running) and records ``rise`` for ``cycles`` cycles.
    Returns, per phase, per channel, the sorted cycle indices (0 = first recorded cycle) with a
    pulse, and the ``rise`` values seen while ``clear`` was high.
    """
    dut = TestSignal(CHANNELS)
    results = []

    async def bench(ctx):
        for config, clear_cycles, cycles in phases:
            ctx.set(dut.config, config.config_fields())
            ctx.set(dut.bsm, config.bsm_fields())
            ctx.set(dut.sources, [Source[name.upper()] for name in config.sources])
            during_clear = []
            for _ in range(clear_cycles):
                ctx.set(dut.clear, 1)
                during_clear.append(ctx.get(dut.rise))
                await ctx.tick()
            ctx.set(dut.clear, 0)
            rises = np.zeros(cycles, dtype=np.int64)
            for k in range(cycles):
                rises[k] = ctx.get(dut.rise)
                await ctx.tick()
            events = [np.flatnonzero((rises >> c) & 1) for c in range(CHANNELS)]
            results.append((events, during_clear))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


def assert_matches_model(events, config, cycles):
    expected = generate(config, cycles)
    for c in range(CHANNELS):
        np.testing.assert_array_equal(events[c], expected[c], err_msg=f"channel {c}")


# Each config exercises one pair_delay boundary; together they cover period 1 and 7, every
# source, darks on test channels, and a dark threshold on a PIN channel that must stay silent.
CONFIGS = {
    "delay37_period7": settings(
        seed=0x12345678, period=7, pair_threshold=p(0.05), eta_a=p(0.6), eta_b=p(0.4),
        pair_delay=37, dark=(p(0.01), p(0.02), p(0.005), p(0.5)),
        sources=("periodic", "pair_a", "pair_b", "pin")),
    "delay0_period1": settings(
        seed=0, period=1, pair_threshold=p(0.3), eta_a=p(0.7), eta_b=p(0.5),
        pair_delay=0, dark=(p(0.05), 0, p(0.01), p(0.02)),
        sources=("pair_b", "periodic", "pair_a", "pair_b")),
    "delay1_dense": settings(
        seed=0xFFFFFFFF, period=3, pair_threshold=p(0.5), eta_a=ALWAYS, eta_b=p(0.8),
        pair_delay=1, dark=(0, p(0.001), 0, ALWAYS),
        sources=("pair_a", "pair_b", "pair_b", "periodic")),
    "delay1023_every_cycle": settings(
        seed=7, period=0, pair_threshold=p(0.9), eta_a=p(0.95), eta_b=ALWAYS,
        pair_delay=1023, dark=(p(0.01), 0, p(0.003), 0),
        sources=("pair_a", "pair_b", "periodic", "pair_b")),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_matches_model(name):
    config = CONFIGS[name]
    cycles = 6000
    [(events, during_clear)] = simulate([(config, 1, cycles)])
    assert during_clear == [0]
    assert_matches_model(events, config, cycles)
    # The configs must actually exercise what they are named for.
    assert sum(len(e) for e in events) > cycles // 10
    assert all(len(events[c]) == 0 for c in range(CHANNELS) if config.sources[c] == "pin")


def test_long_run_matches_model():
    config = CONFIGS["delay37_period7"]
    cycles = 20000
    [(events, _)] = simulate([(config, 1, cycles)])
    assert_matches_model(events, config, cycles)


def test_boundaries_by_hand():
    # Independent of the model: period 1 and an ALWAYS dark fire every cycle; period 7 fires at
    # multiples of 7 from cycle 0; with every pair born and detected, arm B starts exactly at
    # pair_delay and arm A at 0; a PIN channel with an ALWAYS dark never fires.
    cycles = 1100
    config = settings(seed=3, period=7, pair_threshold=ALWAYS, pair_delay=1023,
                      dark=(0, 0, 0, ALWAYS), sources=("periodic", "pair_a", "pair_b", "pin"))
    every = settings(seed=3, period=1, dark=(0, 0, ALWAYS, 0),
                     sources=("periodic", "pin", "pair_a", "pair_b"))
    (events, _), (every_events, _) = simulate([(config, 1, cycles), (every, 1, 50)])
    np.testing.assert_array_equal(events[0], np.arange(0, cycles, 7))
    np.testing.assert_array_equal(events[1], np.arange(cycles))
    np.testing.assert_array_equal(events[2], np.arange(1023, cycles))
    assert len(events[3]) == 0
    np.testing.assert_array_equal(every_events[0], np.arange(50))
    assert len(every_events[1]) == 0
    np.testing.assert_array_equal(every_events[2], np.arange(50))
    assert len(every_events[3]) == 0  # pair_threshold 0: no pairs, no dark


def test_threshold_equal_to_state_and_zero_seed_state():
    # seed == C_i makes seed ^ C_i zero for the dark stream of channel 0, which must start at C_i
    # instead. Each dark threshold equals its stream's state at a chosen cycle, where the draw
    # (state - 1) is just below the threshold and must fire.
    seed = stream_constant(STREAM_DARK)
    hits = (5, 17, 40, 99)
    states = list(initial_states(seed, CHANNELS))
    dark = []
    for c, hit in enumerate(hits):
        x = states[STREAM_DARK + c]
        for _ in range(hit):
            x = xorshift32(x)
        dark.append(x)
    config = settings(seed=seed, dark=tuple(dark), sources=("periodic",) * CHANNELS)
    cycles = 120
    [(events, _)] = simulate([(config, 1, cycles)])
    assert_matches_model(events, config, cycles)
    for c, hit in enumerate(hits):
        assert hit in events[c]


def test_seed_changes_output():
    base = CONFIGS["delay37_period7"]
    other = settings(**{**base.__dict__, "seed": base.seed ^ 1})
    cycles = 3000
    (a, _), (b, _) = simulate([(base, 1, cycles), (other, 1, cycles)])
    assert_matches_model(a, base, cycles)
    assert_matches_model(b, other, cycles)
    for c in (1, 2):  # the random channels differ
        assert not np.array_equal(a[c], b[c])


def test_clear_restarts():
    # Run long enough that the delay line holds arm-B entries from before the clear, clear for
    # several cycles (no pulses meanwhile), and the run restarts exactly from cycle 0: the stale
    # entries must not leak out during the first pair_delay cycles.
    config = CONFIGS["delay1023_every_cycle"]
    other = settings(**{**config.__dict__, "seed": 99, "pair_delay": 600, "period": 5})
    phases = [(config, 1, 1500), (other, 3, 1700), (config, 2, 1500), (config, 0, 500)]
    results = simulate(phases)
    for (events, during_clear), (phase_config, clear_cycles, cycles) in zip(results[:3], phases):
        assert during_clear == [0] * clear_cycles
        assert_matches_model(events, phase_config, cycles)
    # Without a clear the generator just continues: cycles 1500 .. 1999 of the third run.
    continued = generate(config, 2000)
    for c in range(CHANNELS):
        tail = continued[c][continued[c] >= 1500] - 1500
        np.testing.assert_array_equal(results[3][0][c], tail, err_msg=f"channel {c}")


def bsm_settings(rng):
    """A random BSM configuration: detectors on random channels, the sync on another, every
    probability, the offset (0 and period - 1 included) and the seed drawn from ``rng``."""
    period = int(rng.choice([1, 2, 3, int(rng.integers(4, 40))]))
    offset = int(rng.choice([0, period - 1, int(rng.integers(0, period))]))
    sources = list(rng.permutation(["bsm_d0", "bsm_d1", "bsm_d2", "bsm_d3"]))
    sources[int(rng.integers(0, CHANNELS))] = str(rng.choice(["periodic", "pair_a", "pin"]))
    return settings(
        seed=int(rng.integers(0, 2**32)), period=period, pair_threshold=p(0.2),
        dark=tuple(int(t) for t in rng.choice([0, p(0.01), p(0.05)], CHANNELS)),
        sources=tuple(str(x) for x in sources), bsm_offset=offset,
        bsm_event=p(float(rng.uniform(0.3, 1.0))), bsm_psi_minus=p(float(rng.uniform(0, 1))),
        bsm_eta=tuple(p(float(x)) for x in rng.uniform(0.3, 1.0, 4)))


@pytest.mark.parametrize("seed", range(4))
def test_bsm_matches_model_on_random_settings(seed):
    config = bsm_settings(np.random.default_rng(seed))
    cycles = 3000
    [(events, during_clear)] = simulate([(config, 1, cycles)])
    assert during_clear == [0]
    assert_matches_model(events, config, cycles)
    bsm = [c for c in range(CHANNELS) if config.sources[c].startswith("bsm_")]
    assert sum(len(events[c]) for c in bsm) > cycles // config.period // 4


def test_bsm_by_hand():
    # Independent of the model: every attempt has an event and every detector detects, so each
    # attempt (cycles 3, 8, 13, ...) gives exactly one of the four two-folds: with psi- always
    # D0&D3 or D1&D2, with psi- never D0&D1 or D2&D3, and both splits appear. An offset equal to
    # the period never fires; period 0 never fires.
    cycles = 2000
    attempts = np.arange(3, cycles, 5)
    common = dict(seed=11, period=5, bsm_offset=3, bsm_event=ALWAYS, bsm_eta=(ALWAYS,) * 4,
                  sources=("bsm_d0", "bsm_d1", "bsm_d2", "bsm_d3"))
    minus = settings(bsm_psi_minus=ALWAYS, **common)
    plus = settings(bsm_psi_minus=0, **common)
    never = settings(**{**common, "bsm_offset": 5})
    off = settings(**{**common, "period": 0})
    results = simulate([(minus, 1, cycles), (plus, 1, cycles), (never, 1, 200), (off, 1, 200)])
    for (events, _), pairs in zip(results, (((0, 3), (1, 2)), ((0, 1), (2, 3)))):
        fired = [set(e.tolist()) for e in events]
        assert sorted(set().union(*fired)) == attempts.tolist()
        for a, b in pairs:
            assert fired[a] == fired[b]
        assert fired[pairs[0][0]].isdisjoint(fired[pairs[1][0]])
        assert 0.4 < len(fired[pairs[0][0]]) / len(attempts) < 0.6
    for events, _ in results[2:]:
        assert all(len(e) == 0 for e in events)


def test_rejects_bad_channel_count():
    with pytest.raises(ValueError):
        TestSignal(0)
    with pytest.raises(ValueError):
        TestSignal(9)
