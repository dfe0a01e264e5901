"""Reference model of the test signal: spec conformance, statistics, helpers."""

import math

import numpy as np
import pytest

from heraldry import protocol
from heraldry.model import testsignal as model
from heraldry.model.testsignal import (TestSignalSettings, generate, probability,
                                       probability_threshold, threshold)

ALWAYS = 2**32 - 1


def settings(**fields):
    defaults = dict(seed=1, period=0, pair_threshold=0, eta_a=ALWAYS, eta_b=ALWAYS,
                    pair_delay=0, dark=(0,) * 4, sources=("pin",) * 4)
    defaults.update(fields)
    return TestSignalSettings(**defaults)


def p(x):
    return probability_threshold(x)


def naive(config, cycles):
    """The spec of the module docstring, one cycle at a time with plain ints."""
    def step(x):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        return x ^ ((x << 5) & 0xFFFFFFFF)

    channels = len(config.sources)
    states = []
    for i in range(3 + channels):
        constant = ((i + 1) * 0x9E3779B9) % 2**32
        states.append(constant if config.seed == constant else config.seed ^ constant)
    limits = [config.pair_threshold, config.eta_a, config.eta_b, *config.dark]
    events = [[] for _ in range(channels)]
    pending_b = set()
    for k in range(cycles):
        fire = [states[i] - 1 < limits[i] for i in range(len(states))]
        if fire[0] and fire[2]:
            pending_b.add(k + config.pair_delay)
        signal = {
            "periodic": config.period != 0 and k % config.period == 0,
            "pair_a": fire[0] and fire[1],
            "pair_b": k in pending_b,
        }
        for c, source in enumerate(config.sources):
            if source != "pin" and (signal[source] or fire[3 + c]):
                events[c].append(k)
        states = [step(x) for x in states]
    return [np.array(e, dtype=np.int64) for e in events]


NAIVE_CONFIGS = [
    settings(seed=0x12345678, period=7, pair_threshold=p(0.2), eta_a=p(0.6), eta_b=p(0.4),
             pair_delay=37, dark=(p(0.01), p(0.02), p(0.005), p(0.5)),
             sources=("periodic", "pair_a", "pair_b", "pin")),
    settings(seed=0, period=1, pair_threshold=p(0.3), eta_a=p(0.7), eta_b=p(0.5),
             pair_delay=0, dark=(p(0.05), 0, p(0.01), p(0.02)),
             sources=("pair_b", "periodic", "pair_a", "pair_b")),
    settings(seed=0xFFFFFFFF, period=3, pair_threshold=p(0.5), eta_a=ALWAYS, eta_b=p(0.8),
             pair_delay=1, dark=(0, p(0.001), 0, ALWAYS), sources=("pair_a", "pair_b", "pair_b")
             + ("periodic",)),
    settings(seed=(4 * 0x9E3779B9) % 2**32, period=0, pair_threshold=p(0.9), eta_a=p(0.95),
             pair_delay=1023, dark=(p(0.01), 0, p(0.003), 0, p(0.2), 1, 2, ALWAYS - 1),
             sources=("pair_a", "pair_b", "periodic", "pair_b", "pair_b", "pair_a", "periodic",
                      "pair_a")),
    settings(seed=5, period=2**32 - 1, pair_threshold=1, eta_a=1, eta_b=0, pair_delay=2,
             dark=(1,), sources=("periodic",)),
]


def _edge_config():
    # Each dark threshold equals its stream's state at a chosen cycle: the draw (state - 1) is
    # then just below the threshold and fires. The pair threshold equals the pair stream's
    # first state.
    seed = 0xC0FFEE
    states = model.initial_states(seed, 4)
    dark = []
    for c, hit in enumerate((3, 10, 64, 500)):
        x = states[3 + c]
        for _ in range(hit):
            x = model.xorshift32(x)
        dark.append(x)
    return settings(seed=seed, pair_threshold=states[0], dark=tuple(dark),
                    sources=("pair_a", "periodic", "pair_b", "periodic"), pair_delay=3)


NAIVE_CONFIGS.append(_edge_config())


@pytest.mark.parametrize("index", range(len(NAIVE_CONFIGS)))
def test_matches_naive_spec(index):
    config = NAIVE_CONFIGS[index]
    cycles = 3000
    got = generate(config, cycles)
    want = naive(config, cycles)
    assert len(got) == config.channels
    for c in range(config.channels):
        assert got[c].dtype == np.int64
        np.testing.assert_array_equal(got[c], want[c], err_msg=f"channel {c}")


def test_chunking_does_not_change_the_result():
    config = NAIVE_CONFIGS[3]
    whole = generate(config, 20000)
    chunked = generate(config, 20000, chunk_cycles=777)
    shorter = generate(config, 12345)
    for c in range(config.channels):
        np.testing.assert_array_equal(whole[c], chunked[c])
        np.testing.assert_array_equal(shorter[c], whole[c][whole[c] < 12345])
    assert [len(e) for e in generate(config, 0)] == [0] * config.channels


def test_initial_states_distinct_and_nonzero():
    seeds = [0, 1, 0xFFFFFFFF, 0x80000000] + [model.stream_constant(i) for i in range(11)]
    for seed in seeds:
        states = model.initial_states(seed, protocol.MAX_CHANNELS)
        assert len(states) == 3 + protocol.MAX_CHANNELS
        assert len(set(states)) == len(states)
        assert all(0 < x < 2**32 for x in states)


def test_constants_mirror_protocol():
    assert model.PROBABILITY_BITS == protocol.PROBABILITY_BITS
    assert model.PAIR_DELAY_BITS == protocol.PAIR_DELAY_BITS
    assert model.PERIOD_BITS == protocol.PERIOD_BITS
    assert model.MAX_CHANNELS == protocol.MAX_CHANNELS
    layout = protocol.test_signal_layout(3)
    assert layout.size == sum(
        width for width in (model.SEED_BITS, model.PERIOD_BITS, 3 * model.PROBABILITY_BITS,
                            model.PAIR_DELAY_BITS, 3 * model.PROBABILITY_BITS))
    assert model.SOURCES == tuple(member.name.lower() for member in protocol.Source)
    assert [member.value for member in protocol.Source] == list(range(len(model.SOURCES)))


def within(count, trials, prob, sigmas=5):
    mean = trials * prob
    sd = math.sqrt(trials * prob * (1 - prob))
    assert abs(count - mean) <= sigmas * sd + 1, (count, mean, sd)


N = 10**6


def test_statistics():
    pair, eta_a, eta_b, delay = 0.02, 0.6, 0.3, 137
    darks = (1e-3, 5e-3, 0.05, 0.2)
    config = settings(seed=2024, pair_threshold=p(pair), eta_a=p(eta_a), eta_b=p(eta_b),
                      pair_delay=delay, dark=(0, 0) + tuple(p(d) for d in darks[2:]),
                      sources=("pair_a", "pair_b", "periodic", "periodic"))
    a, b, dark2, dark3 = generate(config, N)
    within(len(a), N, pair * eta_a)
    within(len(b), N - delay, pair * eta_b)
    # Both arms of one pair: A at k and B at k + delay iff both detected (independent draws).
    both = np.intersect1d(a + delay, b).size
    within(both, N - delay, pair * eta_a * eta_b)
    # At any other lag arms are uncorrelated.
    within(np.intersect1d(a + delay + 5, b).size, N - delay - 5, (pair * eta_a) * (pair * eta_b))
    within(len(dark2), N, darks[2])
    within(len(dark3), N, darks[3])
    within(np.intersect1d(dark2, dark3).size, N, darks[2] * darks[3])
    # Dark counts of a channel are independent of the pair draws.
    within(np.intersect1d(dark3, a).size, N, darks[3] * pair * eta_a)

    # Darks OR-ed into the arms.
    with_dark = settings(**{**config.__dict__, "dark": tuple(p(d) for d in darks),
                            "sources": ("pair_a", "pair_b", "pin", "pin")})
    a_dark, b_dark, pin2, pin3 = generate(with_dark, N)
    within(len(a_dark), N, 1 - (1 - pair * eta_a) * (1 - darks[0]))
    within(len(b_dark), N, 1 - (1 - pair * eta_b) * (1 - darks[1]), sigmas=6)
    assert len(pin2) == len(pin3) == 0
    # Same seed, same streams: the arms are a subset of arms + darks.
    assert np.isin(a, a_dark).all() and np.isin(b, b_dark).all()


def test_pair_rate_and_exact_lag():
    pair, delay = 0.01, 1023
    config = settings(seed=77, pair_threshold=p(pair), pair_delay=delay,
                      sources=("pair_a", "pair_b", "pair_b", "pin"))
    a, b, b2, _ = generate(config, N)
    within(len(a), N, pair)
    np.testing.assert_array_equal(b, a[a + delay < N] + delay)
    np.testing.assert_array_equal(b, b2)  # every PAIR_B channel carries the same arm
    assert b.min() >= delay


def test_periodic_and_limits():
    cycles = 10000
    for period, want in ((7, np.arange(0, cycles, 7)), (1, np.arange(cycles)),
                         (0, np.zeros(0)), (cycles, np.array([0]))):
        config = settings(period=period, sources=("periodic", "periodic", "pin", "pair_a"))
        periodic, same, pin, pair_a = generate(config, cycles)
        np.testing.assert_array_equal(periodic, want)
        np.testing.assert_array_equal(same, want)
        assert len(pin) == len(pair_a) == 0
    config = settings(pair_threshold=ALWAYS, dark=(ALWAYS, 0, 0, 0),
                      sources=("periodic", "pair_a", "pair_b", "pin"))
    always, arm_a, arm_b, _ = generate(config, cycles)
    np.testing.assert_array_equal(always, np.arange(cycles))
    np.testing.assert_array_equal(arm_a, np.arange(cycles))
    np.testing.assert_array_equal(arm_b, np.arange(cycles))


def test_threshold_helpers():
    assert probability_threshold(0) == 0
    assert probability_threshold(1) == 2**32 - 1
    assert probability_threshold(0.5) == round(0.5 * (2**32 - 1))
    assert threshold(1e6, 100e6) == round(0.01 * (2**32 - 1))
    assert threshold(0, 48e6) == 0
    assert threshold(48e6, 48e6) == 2**32 - 1
    assert probability(2**32 - 1) == 1.0
    assert abs(probability(threshold(1e6, 100e6)) - 0.01) < 1e-9
    for bad in (-1e-9, 1.0000001, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            probability_threshold(bad)
    for rate, clock in ((-1, 1e6), (2e6, 1e6), (1, 0), (1, -5), (float("nan"), 1e6),
                        (1, float("inf"))):
        with pytest.raises(ValueError):
            threshold(rate, clock)


def test_settings_validation():
    with pytest.raises(ValueError):
        settings(pair_delay=2**protocol.PAIR_DELAY_BITS)
    with pytest.raises(ValueError):
        settings(seed=-1)
    with pytest.raises(ValueError):
        settings(eta_a=2**32)
    with pytest.raises(ValueError):
        settings(sources=("pin", "laser", "pin", "pin"))
    with pytest.raises(ValueError):
        settings(dark=(0, 0, 0))
    with pytest.raises(ValueError):
        settings(dark=(0,) * 9, sources=("pin",) * 9)
    with pytest.raises(TypeError):
        settings(period=1.5)
    with pytest.raises(ValueError):
        generate(settings(), -1)
    config = settings(dark=[1, 2, 3, 4], sources=["pin", "periodic", "pair_a", "pair_b"])
    assert config.dark == (1, 2, 3, 4) and config.channels == 4
    assert protocol.test_signal_layout(4).const(config.config_fields()).dark[3] == 4
