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
    # BSM streams 11 .. 17: event, psi-, split (threshold 2**31), efficiency of D0 .. D3.
    bsm_states = []
    for i in range(11, 18):
        constant = ((i + 1) * 0x9E3779B9) % 2**32
        bsm_states.append(constant if config.seed == constant else config.seed ^ constant)
    bsm_limits = [config.bsm_event, config.bsm_psi_minus, 2**31, *config.bsm_eta]
    # Which detectors a photon pair hits: port a = D0 (H), D1 (V), port b = D2 (H), D3 (V).
    # psi-: one photon per port, orthogonal polarisations; psi+: one port, orthogonal.
    hits = {(True, True): (0, 3), (True, False): (1, 2),
            (False, True): (0, 1), (False, False): (2, 3)}
    events = [[] for _ in range(channels)]
    pending_b = set()
    for k in range(cycles):
        fire = [states[i] - 1 < limits[i] for i in range(len(states))]
        bsm = [bsm_states[i] - 1 < bsm_limits[i] for i in range(7)]
        if fire[0] and fire[2]:
            pending_b.add(k + config.pair_delay)
        signal = {
            "periodic": config.period != 0 and k % config.period == 0,
            "pair_a": fire[0] and fire[1],
            "pair_b": k in pending_b,
        }
        attempt = config.period != 0 and k % config.period == config.bsm_offset
        for d in range(4):
            signal[f"bsm_d{d}"] = (attempt and bsm[0] and d in hits[(bsm[1], bsm[2])]
                                   and bsm[3 + d])
        for c, source in enumerate(config.sources):
            if source != "pin" and (signal[source] or fire[3 + c]):
                events[c].append(k)
        states = [step(x) for x in states]
        bsm_states = [step(x) for x in bsm_states]
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


def _bsm_edge_config():
    # The event threshold equals the event stream's state in the attempt of cycle 7 + 2 * 9 (it
    # must fire there), psi- that of cycle 7 (fires); seed equal to the split stream's constant
    # (its state starts at the constant itself).
    seed = model.stream_constant(model.STREAM_BSM_SPLIT)
    def state_at(stream, k):
        x = model.stream_state(seed, stream)
        for _ in range(k):
            x = model.xorshift32(x)
        return x
    return settings(seed=seed, period=9, bsm_offset=7,
                    bsm_event=state_at(model.STREAM_BSM_EVENT, 25),
                    bsm_psi_minus=state_at(model.STREAM_BSM_STATE, 7),
                    bsm_eta=(ALWAYS, p(0.9), ALWAYS - 1, 1), dark=(0, p(0.01), 0, 0, 0),
                    sources=("bsm_d0", "bsm_d1", "bsm_d2", "bsm_d3", "periodic"))


NAIVE_CONFIGS += [
    _bsm_edge_config(),
    settings(seed=0xBEEF, period=4, pair_threshold=p(0.3), bsm_offset=3, bsm_event=p(0.8),
             bsm_psi_minus=p(0.5), bsm_eta=(p(0.9), p(0.8), p(0.7), p(0.6)),
             dark=(p(0.01), p(0.02), 0, p(0.05), 0, 0),
             sources=("bsm_d3", "bsm_d2", "bsm_d1", "bsm_d0", "pair_a", "bsm_d0")),
    settings(seed=3, period=1, bsm_offset=0, bsm_event=ALWAYS, bsm_psi_minus=p(0.25),
             bsm_eta=(ALWAYS,) * 4, sources=("bsm_d0", "bsm_d1", "bsm_d2", "bsm_d3")),
    settings(seed=4, period=10, bsm_offset=10, bsm_event=ALWAYS, bsm_eta=(ALWAYS,) * 4,
             sources=("bsm_d0", "bsm_d1", "bsm_d2", "bsm_d3")),
]


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
    seeds = [0, 1, 0xFFFFFFFF, 0x80000000] + [model.stream_constant(i) for i in range(18)]
    for seed in seeds:
        states = model.initial_states(seed, protocol.MAX_CHANNELS)
        assert len(states) == 3 + protocol.MAX_CHANNELS
        states += tuple(model.stream_state(seed, i) for i in model.BSM_STREAMS)
        assert len(set(states)) == len(states) == 18
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
    assert model.BSM_DETECTORS == protocol.BSM_DETECTORS
    fields = model.TestSignalSettings(
        seed=1, period=5, pair_threshold=0, eta_a=0, eta_b=0, pair_delay=0, dark=(0,),
        sources=("bsm_d2",), bsm_offset=3, bsm_event=7, bsm_psi_minus=8,
        bsm_eta=(1, 2, 3, 4)).bsm_fields()
    bsm = protocol.bsm_layout().const(fields)
    assert (bsm.offset, bsm.event, bsm.psi_minus, bsm.eta[3]) == (3, 7, 8, 4)
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


def test_bsm_statistics():
    # HOM statistics of the BSM source over 2e5 attempts: events, the psi- fraction, the two
    # patterns of each state equally likely, per-detector efficiencies, and never a three- or
    # four-fold from the source itself (dark counts off).
    period, offset, event, minus = 5, 2, 0.6, 0.7
    eta = (0.9, 0.8, 0.7, 0.5)
    attempts = N // period
    config = settings(seed=99, period=period, bsm_offset=offset, bsm_event=p(event),
                      bsm_psi_minus=p(minus), bsm_eta=tuple(p(x) for x in eta),
                      dark=(0,) * 5, sources=("bsm_d0", "bsm_d1", "bsm_d2", "bsm_d3", "periodic"))
    d0, d1, d2, d3, sync = generate(config, N)
    np.testing.assert_array_equal(sync, np.arange(0, N, period))
    clicks = np.zeros(N, np.uint8)
    for d, times in enumerate((d0, d1, d2, d3)):
        assert np.all(times % period == offset)
        clicks[times] |= 1 << d
    counts = np.bincount(clicks[offset::period], minlength=16)
    assert counts[[0b0111, 0b1011, 0b1101, 0b1110, 0b1111, 0b0101, 0b1010]].sum() == 0
    for mask, share in ((0b1001, minus / 2), (0b0110, minus / 2),
                        (0b0011, (1 - minus) / 2), (0b1100, (1 - minus) / 2)):
        a, b = (d for d in range(4) if mask >> d & 1)
        within(counts[mask], attempts, event * share * eta[a] * eta[b])
    # One-folds: the event's other photon lost.
    within(counts[0b0001], attempts,
           event * (minus / 2 * eta[0] * (1 - eta[3]) + (1 - minus) / 2 * eta[0] * (1 - eta[1])))
    # bsm_attempts agrees, and carries the hit pattern before the efficiencies.
    cycle, pattern, detected = model.bsm_attempts(config, N)
    np.testing.assert_array_equal(cycle, np.arange(offset, N, period))
    np.testing.assert_array_equal(detected, clicks[offset::period])
    assert np.all(detected & ~pattern == 0)
    within(np.count_nonzero(pattern), attempts, event)
    within(np.count_nonzero((pattern == 0b1001) | (pattern == 0b0110)), attempts, event * minus)


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
        settings(bsm_eta=(0, 0, 0))
    with pytest.raises(ValueError):
        settings(bsm_offset=2**32)
    with pytest.raises(ValueError):
        settings(bsm_psi_minus=-1)
    with pytest.raises(ValueError):
        generate(settings(), -1)
    config = settings(dark=[1, 2, 3, 4], sources=["pin", "periodic", "pair_a", "pair_b"])
    assert config.dark == (1, 2, 3, 4) and config.channels == 4
    assert protocol.test_signal_layout(4).const(config.config_fields()).dark[3] == 4
