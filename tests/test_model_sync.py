"""Reference model: channel roles (sync, reference), per-channel gates, attempt numbers and the
dark-count herald prediction (docs/semantics.md, "Sync, gates and reference markers").

The model is checked against a naive per-event re-implementation written from the page's
definitions, on random and boundary stimulus, and its herald prediction against seeded Monte
Carlo runs of the model and an enumeration by hand.
"""

import itertools

import numpy as np
import pytest

from heraldry import model
from heraldry.model import ChannelSettings, CoreSettings, HeraldRule


def naive_latest_sync(t, syncs):
    """(attempt, offset) of time t, by scanning: the definition, quadratic."""
    attempt, latest = 0, None
    for s in syncs:
        if s <= t:
            attempt += 1
            latest = s
    if latest is None:
        return 0, model.OFFSET_NONE
    return attempt, min(t - latest, model.OFFSET_NONE)


def naive_run(rise, settings):
    """Rising edges only, no dead time or delay-line loss: roles, gates, markers, heralds."""
    delayed = [sorted(t + settings.channel_settings(c).delay for t in rise[c])
               for c in range(settings.channels)]
    sync = settings.sync_channel
    syncs = delayed[sync] if sync is not None else []
    detector, gated_out, markers = [], [], []
    for c in range(settings.channels):
        ch = settings.channel_settings(c)
        if ch.role == "sync":
            every = settings.sync_marker_every
            markers += [(t, c) for k, t in enumerate(delayed[c], 1) if every and k % every == 0]
            detector.append([])
            gated_out.append(0)
        elif ch.role == "reference":
            markers += [(t, c) for t in delayed[c]]
            detector.append([])
            gated_out.append(0)
        else:
            kept, out = [], 0
            for t in delayed[c]:
                attempt, offset = naive_latest_sync(t, syncs)
                if ch.gate is None or attempt and ch.gate[0] <= offset < sum(ch.gate):
                    kept.append(t)
                else:
                    out += 1
            detector.append(kept)
            gated_out.append(out)
    tags = sorted([(t, c) for c in range(settings.channels) for t in detector[c]] + markers)
    heralds = model.herald_records([np.array(d, np.int64) for d in detector], settings.window,
                                   settings.herald_rules)
    where = [naive_latest_sync(t, syncs) for t in heralds["time"].tolist()]
    return tags, gated_out, len(syncs), heralds, where


def random_settings(rng, channels=4):
    roles = ["detector"] * channels
    sync = int(rng.integers(channels))
    roles[sync] = "sync"
    if channels > 2 and rng.random() < 0.5:
        roles[(sync + 1) % channels] = "reference"
    chans = []
    for c in range(channels):
        gate = None
        if roles[c] == "detector" and rng.random() < 0.8:
            gate = (int(rng.integers(0, 30)), int(rng.integers(1, 40)))
        chans.append(ChannelSettings(role=roles[c], gate=gate, delay=int(rng.integers(0, 8))))
    detectors = [c for c in range(channels) if roles[c] == "detector"]
    rules = []
    for _ in range(int(rng.integers(1, 4))):
        req = sum(1 << c for c in detectors if rng.random() < 0.6) or 1 << detectors[0]
        veto = sum(1 << c for c in detectors if not req >> c & 1 and rng.random() < 0.3)
        rules.append(HeraldRule(req, veto, str(rng.choice(model.HERALD_MODES))))
    return CoreSettings(channels=channels, window=int(rng.integers(1, 12)), channel=tuple(chans),
                        herald_rules=tuple(rules),
                        sync_marker_every=int(rng.choice([0, 1, 3])))


@pytest.mark.parametrize("seed", range(40))
def test_roles_and_gates_match_naive(seed):
    rng = np.random.default_rng(seed)
    settings = random_settings(rng, int(rng.integers(2, 6)))
    span = 2000
    rise = []
    for c in range(settings.channels):
        if settings.channel_settings(c).role == "sync":
            # a jittery attempt clock, sometimes late to start
            period = int(rng.integers(20, 80))
            start = int(rng.integers(0, 200))
            times = np.arange(start, span, period) + rng.integers(0, 3, (span - start) // period
                                                                     + 1)[:len(range(start, span,
                                                                                     period))]
            rise.append(np.unique(times))
        else:
            rise.append(np.unique(rng.integers(0, span, int(rng.integers(0, 200)))))
    fall = [t + 1 for t in rise]
    result = model.simulate(rise, fall, settings)
    tags, gated_out, attempts, heralds, where = naive_run(rise, settings)
    assert [tuple(x) for x in result.tags.tolist()] == tags
    assert result.gated_out.tolist() == gated_out
    assert result.attempts == attempts
    np.testing.assert_array_equal(result.heralds, heralds)
    assert [tuple(x) for x in result.herald_sync.tolist()] == where
    singles = [len(r) if settings.channel_settings(c).role != "detector"
               else sum(1 for t, ch in tags if ch == c) for c, r in enumerate(rise)]
    assert result.singles.tolist() == singles


def two_channel(gate0=None, gate1=None, every=0, sync_delay=0, dead_time=0, window=1,
                rules=()):
    return CoreSettings(channels=3, window=window, herald_rules=rules, sync_marker_every=every,
                        channel=(ChannelSettings(gate=gate0, dead_time=dead_time),
                                 ChannelSettings(gate=gate1),
                                 ChannelSettings(role="sync", delay=sync_delay)))


def run(settings, ch0=(), ch1=(), sync=()):
    rise = [np.array(x, np.int64) for x in (ch0, ch1, sync)]
    return model.simulate(rise, [r + 1 for r in rise], settings)


def kept(result, c=0):
    return result.tags["time"][result.tags["channel"] == c].tolist()


def test_gate_boundaries():
    # gate [3, 3 + 4) after the sync at 100: 103..106 kept, 102 and 107 out
    r = run(two_channel(gate0=(3, 4)), ch0=range(100, 110), sync=[100])
    assert kept(r) == [103, 104, 105, 106]
    assert r.gated_out.tolist() == [6, 0, 0]


def test_no_sync_yet_is_outside_every_gate_and_ungated_channels_pass():
    r = run(two_channel(gate0=(0, 50)), ch0=[5, 10, 20], ch1=[5, 10], sync=[15])
    assert kept(r) == [20]
    assert kept(r, 1) == [5, 10]
    assert r.gated_out.tolist() == [2, 0, 0]


def test_sync_in_the_same_bin_starts_the_attempt():
    # an event in the sync's own bin has offset 0 in the new attempt
    r = run(two_channel(gate0=(0, 1)), ch0=[40, 41, 60], sync=[20, 40, 60])
    assert kept(r) == [40, 60]
    r = run(two_channel(gate0=(0, 1), window=3, rules=(0b1,)), ch0=[40], sync=[20, 40])
    assert r.herald_sync.tolist() == [(2, 0)]


def test_gate_longer_than_the_period_is_cut_by_the_next_sync():
    # period 10, gate [5, 5 + 100): every event is measured from its latest sync, so the
    # gate is open for offsets 5..9 of each attempt only
    r = run(two_channel(gate0=(5, 100)), ch0=range(0, 40), sync=[0, 10, 20, 30])
    assert kept(r) == [t for t in range(40) if t % 10 >= 5]


def test_sync_delay_moves_the_gate():
    # the sync channel's own delay applies: sync pin edge at 100 with delay 7 is sync 107
    r = run(two_channel(gate0=(0, 3), sync_delay=7), ch0=range(100, 115), sync=[100])
    assert kept(r) == [107, 108, 109]


def test_dead_time_acts_before_the_gate():
    # gated-out events were accepted by the input stage: they restart its dead time
    # (gate [10, 20) after the sync at 100: 107 is gated out but 110, inside the gate, falls in
    # its dead time and is discarded, neither kept nor gated out; 113 is kept)
    r = run(two_channel(gate0=(10, 10), dead_time=5), ch0=[107, 110, 113], sync=[100])
    assert kept(r) == [113]
    assert r.gated_out.tolist() == [1, 0, 0]


def test_sync_markers_every_nth_and_attempts():
    syncs = list(range(0, 100, 10))
    r = run(two_channel(every=3), sync=syncs)
    assert kept(r, 2) == [20, 50, 80]
    assert r.attempts == 10 and r.singles.tolist() == [0, 0, 10]
    assert kept(run(two_channel(), sync=syncs), 2) == []
    assert kept(run(two_channel(every=1), sync=syncs), 2) == syncs


def test_reference_edges_are_markers_not_in_windows():
    settings = CoreSettings(channels=2, window=5, herald_rules=(0b01,), channel=(
        ChannelSettings(), ChannelSettings(role="reference")))
    rise = [np.array([10, 30]), np.array([11, 50])]
    r = model.simulate(rise, [x + 1 for x in rise], settings)
    assert r.windows.pattern.tolist() == [1, 1]
    assert r.tags.tolist() == [(10, 0), (11, 1), (30, 0), (50, 1)]
    assert r.singles.tolist() == [2, 2]
    assert r.attempts == 0
    assert r.herald_sync.tolist() == [(0, model.OFFSET_NONE)] * 2
    again = model.counts_from_tags(r.tags, settings)
    assert again.windows.pattern.tolist() == [1, 1] and again.singles.tolist() == [2, 2]


def test_exact_herald_carries_the_attempt_of_its_window_end():
    # window [98, 103) crosses the sync at 100: the exact rule decides at 103, in attempt 2;
    # the early rule at its completing event 99, in attempt 1
    rules = (HeraldRule(0b11), HeraldRule(0b11, mode="exact"))
    r = run(two_channel(window=5, rules=rules), ch0=[98], ch1=[99], sync=[50, 100])
    assert r.heralds.tolist() == [(99, 0, 3), (103, 1, 3)]
    assert r.herald_sync.tolist() == [(1, 49), (2, 3)]


def test_offset_saturates():
    r = run(two_channel(window=1, rules=(0b1,)), ch0=[model.OFFSET_NONE + 10], sync=[5])
    assert r.herald_sync.tolist() == [(1, model.OFFSET_NONE)]


@pytest.mark.parametrize("make, match", [
    (lambda: ChannelSettings(role="clock"), "role"),
    (lambda: ChannelSettings(gate=(0, 0)), "gate width"),
    (lambda: ChannelSettings(gate=(-1, 3)), "gate offset"),
    (lambda: ChannelSettings(gate=(60000, 6000)), "at most 65535"),
    (lambda: ChannelSettings(gate=5), "pair"),
    (lambda: ChannelSettings(role="sync", gate=(0, 3)), "detector channel"),
    (lambda: CoreSettings(channels=2, channel=(ChannelSettings(role="sync"),) * 2), "one sync"),
    (lambda: CoreSettings(channels=2, channel=(ChannelSettings(gate=(0, 3)), ChannelSettings())),
     "no channel is the sync"),
    (lambda: CoreSettings(channels=2, herald_rules=(0b11,), channel=(
        ChannelSettings(), ChannelSettings(role="sync"))), "sync channel"),
    (lambda: CoreSettings(channels=2, sync_marker_every=2**16), "sync_marker_every"),
])
def test_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_gate_duty():
    assert model.gate_duty(None, 100) == 1.0
    assert model.gate_duty((10, 20), 100) == 0.2
    assert model.gate_duty((90, 20), 100) == 0.1     # cut by the next sync
    assert model.gate_duty((200, 5), 100) == 0.0


def test_prediction_by_enumeration():
    """Two channels, gates of 2 bins each, W = 2: enumerate every outcome by hand."""
    p0, p1 = 0.3, 0.2
    settings = CoreSettings(channels=3, window=2, herald_rules=(
        HeraldRule(0b11), HeraldRule(0b11, 0, "exact"), HeraldRule(0b01, 0b10, "exact")),
        channel=(ChannelSettings(gate=(0, 2)), ChannelSettings(gate=(0, 2)),
                 ChannelSettings(role="sync")))
    expected = np.zeros(3)
    for bits in itertools.product([0, 1], repeat=4):     # ch0 bin0, bin1, ch1 bin0, bin1
        prob = np.prod([(p0 if i < 2 else p1) if b else 1 - (p0 if i < 2 else p1)
                        for i, b in enumerate(bits)])
        rise = [[t for t in (0, 1) if bits[t]], [t for t in (0, 1) if bits[2 + t]], [0]]
        result = model.simulate([np.array(r, np.int64) for r in rise],
                                [np.array(r, np.int64) + 1 for r in rise], settings)
        expected += prob * result.herald_counts
    got = model.expected_heralds_per_attempt([p0, p1, 0], settings, period=10)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_prediction_matches_seeded_monte_carlo():
    """psi- style exact rules and an early two-fold on four gated dark-count channels."""
    rng = np.random.default_rng(7)
    period, attempts = 60, 40000
    gate = (8, 24)
    rules = (HeraldRule(0b1001, 0b0110, "exact"), HeraldRule(0b0110, 0b1001, "exact"),
             HeraldRule(0b0011))
    settings = CoreSettings(channels=5, window=6, herald_rules=rules, channel=tuple(
        [ChannelSettings(gate=gate)] * 4 + [ChannelSettings(role="sync")]))
    probability = [0.004, 0.006, 0.005, 0.003, 0]
    span = period * attempts
    rise = [np.flatnonzero(rng.random(span) < p) for p in probability[:4]]
    rise.append(np.arange(0, span, period))
    result = model.simulate(rise, [r + 1 for r in rise], settings)
    expected = attempts * model.expected_heralds_per_attempt(probability, settings, period)
    assert (expected > 50).all()
    assert np.all(np.abs(result.herald_counts - expected) < 3 * np.sqrt(expected))
    # the gate's duty factor scales the singles
    duty = model.gate_duty(gate, period)
    singles = result.singles[:4]
    mean = span * duty * np.array(probability[:4])
    assert np.all(np.abs(singles - mean) < 3 * np.sqrt(mean))


def test_prediction_refusals():
    settings = CoreSettings(channels=2, window=4, herald_rules=(0b1,), channel=(
        ChannelSettings(), ChannelSettings(role="sync")))
    with pytest.raises(ValueError, match="no gate"):
        model.expected_heralds_per_attempt([0.1, 0], settings, 100)
    settings = CoreSettings(channels=2, window=4, herald_rules=(0b1,), channel=(
        ChannelSettings(gate=(0, 100)), ChannelSettings(role="sync")))
    with pytest.raises(ValueError, match="next attempt"):
        model.expected_heralds_per_attempt([0.1, 0], settings, 100)


def test_prediction_small_p_two_fold_formula():
    """The docs' first-order figure p0 p1 (w (2W - 1) - W (W - 1)) for a two-fold early rule."""
    w, window, p0, p1 = 40, 5, 1e-4, 2e-4
    settings = CoreSettings(channels=3, window=window, herald_rules=(0b11,), channel=(
        ChannelSettings(gate=(3, w)), ChannelSettings(gate=(3, w)), ChannelSettings(role="sync")))
    got = model.expected_heralds_per_attempt([p0, p1, 0], settings, 100)[0]
    first_order = p0 * p1 * (w * (2 * window - 1) - window * (window - 1))
    assert got == pytest.approx(first_order, rel=1e-2)
