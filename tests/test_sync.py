"""Two-node time (issue 15): the two-board model source, heraldry.sync's offset search and
tracker, the merge through the reference model, and ``heraldry link``.

Every figure is checked against the model's truth (its clocks, its pair indices) or against the
reference model run on the same detections on one shared clock, never against sync's own
output."""

import dataclasses
import math
import re

import numpy as np
import pytest

from heraldry.model import coincidence_windows
from heraldry.model.twonode import Clock, two_node_source
from heraldry.sync import LOCKED, SyncError, Tracker, find_offset, link, window_misses

WINDOW_BINS = 20        # 20 ns in the model's 1 ns bins


def seconds(src):
    return src.a * src.bin_a_s, src.b * src.bin_b_s


def shared_coincidences(src, window=WINDOW_BINS):
    """Cross-node coincidences of one board carrying both detectors (ideal clock), the fiber
    delay taken out as a cable delay would: the baseline."""
    fiber = round(src.fiber_delay_s / src.bin_a_s)
    w = coincidence_windows([np.sort(src.shared_a), np.sort(src.shared_b - fiber)], window)
    return int(np.count_nonzero(w.pattern == 3))


def true_relative_ppm(src, t_true):
    """Board 2's frequency against board 1's at true time t (from the model's clocks)."""
    fa = 1 + 1e-6 * src.clock_a.ppm_at(t_true)
    fb = 1 + 1e-6 * src.clock_b.ppm_at(t_true)
    return (fb / fa - 1) * 1e6


# --- the model source ---------------------------------------------------------------------------

def test_clock_local_time_closed_form():
    clock = Clock(ppm=20, drift_ppm_per_s=2, steps=((1.0, 5.0),), start_s=0.25)
    t = np.array([0.0, 0.5, 1.0, 3.0])
    # by hand: 0.25 + t + 1e-6 (20 t + t^2 + 5 max(0, t - 1))
    expected = [0.25, 0.75 + 1e-6 * (10 + 0.25), 1.25 + 1e-6 * 21, 3.25 + 1e-6 * (60 + 9 + 10)]
    assert clock.local(t) == pytest.approx(expected, abs=1e-15)
    assert clock.ppm_at(2.0) == pytest.approx(20 + 4 + 5)


def test_two_node_source_contract():
    src = two_node_source(0.5, pair_rate_hz=2e4, efficiency_a=0.5, efficiency_b=0.25,
                          dark_rate_a_hz=2e3, dark_rate_b_hz=0, fiber_delay_s=10e-6,
                          jitter_s=0, clock_a=Clock(ppm=10), clock_b=Clock(ppm=-10), seed=5)
    assert np.all(np.diff(src.a) >= 0) and np.all(np.diff(src.b) >= 0)
    assert np.all(src.pair_b >= 0)                         # no darks on board 2
    assert np.count_nonzero(src.pair_a < 0) == pytest.approx(1000, rel=0.15)
    assert np.count_nonzero(src.pair_a >= 0) == pytest.approx(0.5 * 1e4, rel=0.1)
    assert len(src.b) == pytest.approx(0.25 * 1e4, rel=0.1)
    # without jitter, B is exactly fiber_delay later in true time; each board quantises its clock
    common, ia, ib = np.intersect1d(src.pair_a, src.pair_b, return_indices=True)
    assert len(common) > 500
    assert np.allclose(src.true_b[ib] - src.true_a[ia], 10e-6, atol=1e-12)
    assert np.array_equal(src.b[ib], np.floor(src.true_b[ib] * (1 - 10e-6) / 1e-9))
    assert np.array_equal(src.a[ia], np.floor(src.true_a[ia] * (1 + 10e-6) / 1e-9))


# --- offset search ------------------------------------------------------------------------------

@pytest.mark.parametrize("fiber_s, ppm_a, ppm_b, start_b", [
    (50e-6, 20, -15, 0.0), (0.0, -40, 45, -150e-6), (150e-6, 0, 0, 45e-6), (5e-6, 60, -30, 0)])
def test_find_offset_over_a_wide_range(fiber_s, ppm_a, ppm_b, start_b):
    src = two_node_source(0.6, fiber_delay_s=fiber_s, clock_a=Clock(ppm=ppm_a),
                          clock_b=Clock(ppm=ppm_b, start_s=start_b + 1e-3), seed=11,
                          dark_rate_a_hz=2e4, dark_rate_b_hz=2e4)
    a, b = seconds(src)
    b = b - 1e-3            # board 2 started 1 ms "before true zero": no tags lost at the start
    fit = find_offset(a, b, span_s=0.5)
    truth = src.offset_s(fit.t_ref_s) - 1e-3
    assert fit.offset_s == pytest.approx(truth, abs=0.3e-9)
    assert fit.ppm == pytest.approx(true_relative_ppm(src, 0.25), abs=0.005)


def test_find_offset_at_realistic_rates_with_20ns_jitter():
    # 1e5 singles/s per side, 1e4 pairs/s, 20 ns jitter per detector, 70 % of the singles darks
    src = two_node_source(0.6, pair_rate_hz=1e5, efficiency_a=0.316, efficiency_b=0.316,
                          dark_rate_a_hz=6.8e4, dark_rate_b_hz=6.8e4, jitter_s=20e-9,
                          fiber_delay_s=50e-6, clock_a=Clock(ppm=20), clock_b=Clock(ppm=-15),
                          seed=3)
    a, b = seconds(src)
    assert len(a) / 0.6 == pytest.approx(1e5, rel=0.05)
    fit = find_offset(a, b)
    assert fit.offset_s == pytest.approx(src.offset_s(fit.t_ref_s), abs=2e-9)
    assert fit.ppm == pytest.approx(true_relative_ppm(src, 0.25), abs=0.02)


def test_find_offset_without_pairs_is_an_error():
    src = two_node_source(0.5, pair_rate_hz=0, dark_rate_a_hz=5e4, dark_rate_b_hz=5e4, seed=4)
    with pytest.raises(SyncError, match="no correlation peak"):
        find_offset(*seconds(src))
    with pytest.raises(SyncError):
        find_offset([], [1.0])


def test_offset_outside_the_search_range_is_not_found():
    src = two_node_source(0.5, fiber_delay_s=300e-6, seed=6)
    with pytest.raises(SyncError):
        find_offset(*seconds(src), max_offset_s=100e-6)


# --- tracking and merging -----------------------------------------------------------------------

def test_tracked_link_recovers_the_shared_clock_coincidences():
    """Issue 15's figure: +20 / -15 ppm, 50 us fiber: >= 99 % of the shared-clock run's
    coincidences; the untracked (fixed offset) run < 1 %."""
    src = two_node_source(2.0, fiber_delay_s=50e-6, clock_a=Clock(ppm=20),
                          clock_b=Clock(ppm=-15, start_s=2e-6), seed=1)
    baseline = shared_coincidences(src)
    assert baseline > 15000
    a, b = seconds(src)
    tracked = link(a, b, window_s=20e-9, bin_s=1e-9)
    assert tracked.state == LOCKED and not tracked.losses
    assert tracked.cross >= 0.99 * baseline
    assert tracked.cross <= 1.005 * baseline
    assert tracked.fit.ppm == pytest.approx(true_relative_ppm(src, 1.0), abs=0.01)
    assert tracked.misses < 0.01
    untracked = link(a, b, window_s=20e-9, bin_s=1e-9, track=False)
    assert untracked.cross < 0.01 * baseline


def test_tracked_link_at_realistic_rates():
    """1e5 singles/s per side (70 % darks), 1e4 pairs/s, same clocks: >= 99 % of the
    shared-clock coincidences once the accidentals (the shared-clock run with board 2 shifted
    by 1 ms) are subtracted from both."""
    src = two_node_source(2.0, pair_rate_hz=3.33e5, efficiency_a=0.3, efficiency_b=0.3,
                          dark_rate_a_hz=7e4, dark_rate_b_hz=7e4, fiber_delay_s=50e-6,
                          clock_a=Clock(ppm=20), clock_b=Clock(ppm=-15), seed=16)
    shifted = dataclasses.replace(src, fiber_delay_s=src.fiber_delay_s + 1e-3)
    accidental = shared_coincidences(shifted)
    real = shared_coincidences(src) - accidental
    assert real > 15000 and accidental > 1000
    a, b = seconds(src)
    tracked = link(a, b, window_s=20e-9, bin_s=1e-9)
    assert not tracked.losses
    assert (tracked.cross - accidental) / real >= 0.99
    untracked = link(a, b, window_s=20e-9, bin_s=1e-9, track=False)
    assert (untracked.cross - accidental) / real < 0.01


def test_link_coincidences_are_the_true_pairs():
    """The merged stream's cross-node windows hold board-2 tags of the same pairs as the
    board-1 tags (checked with the model's pair indices)."""
    src = two_node_source(0.8, dark_rate_a_hz=0, dark_rate_b_hz=0, jitter_s=0.3e-9,
                          clock_a=Clock(ppm=-8), clock_b=Clock(ppm=12), seed=9)
    a, b = seconds(src)
    result = link(a, b, window_s=5e-9, bin_s=1e-9, acquire_s=0.3)
    both = np.intersect1d(src.pair_a, src.pair_b)
    # every pair seen on both boards, bar chance overlaps (3e4/s x 3e4/s x 10 ns: ~7 in all)
    assert len(both) > 5000
    assert result.cross == pytest.approx(len(both), abs=0.002 * len(both) + 10)


def test_link_renumbers_board_2_channels_and_runs_herald_rules():
    """Board 1: pairs on channel 0 and an unrelated stream on channel 1; board 2: pairs on its
    channel 0, merged as channel 2. Sync on channel 0 only; a herald rule D0&D2 (early) fires
    once per window holding both, and the D0&D2 windows match the shared-clock baseline."""
    from heraldry.model import HeraldRule
    src = two_node_source(1.2, clock_a=Clock(ppm=20), clock_b=Clock(ppm=-15), seed=14)
    a, b = seconds(src)
    rng = np.random.default_rng(3)
    other = np.sort(rng.uniform(0, a[-1], 30000))
    times_a = np.concatenate((a, other))
    chans_a = np.concatenate((np.zeros(len(a), int), np.ones(len(other), int)))
    order = np.argsort(times_a, kind="stable")
    result = link(times_a[order], b, channels_a=chans_a[order], sync_a=[0], sync_b=[0],
                  window_s=20e-9, bin_s=1e-9, acquire_s=0.3,
                  rules=[HeraldRule(require=0b101)])
    assert result.channels_a == 2 and result.channels_b == 1
    assert set(np.unique(result.tags["channel"]).tolist()) == {0, 1, 2}
    d0_d2 = int(np.count_nonzero((result.windows.pattern & 0b101) == 0b101))
    assert d0_d2 >= 0.99 * shared_coincidences(src)
    assert len(result.heralds) == d0_d2
    assert np.count_nonzero(result.tags["channel"] == 1) == pytest.approx(30000, rel=0.01)


def test_frequency_step_loses_lock_and_relocks():
    """+2 ppm on board 2 at 1.0 s: lock lost within two blocks, regained after one
    acquisition (0.25 s here), the new ppm measured."""
    step_at = 1.0
    src = two_node_source(2.0, fiber_delay_s=50e-6, clock_a=Clock(ppm=20),
                          clock_b=Clock(ppm=-15, steps=((step_at, 2.0),)), seed=2)
    a, b = seconds(src)
    result = link(a, b, window_s=20e-9, bin_s=1e-9, acquire_s=0.25)
    assert len(result.losses) == 1
    lost_at = result.losses[0]
    assert step_at <= lost_at <= step_at + 0.03
    relock = result.locks[-1] - step_at
    assert 0.25 <= relock <= 0.3
    assert result.state == LOCKED
    assert result.fit.ppm == pytest.approx(true_relative_ppm(src, 1.5), abs=0.01)
    # Coincidences lost: at most the loss and the acquisition's worth
    baseline = shared_coincidences(src)
    assert result.cross >= 0.99 * baseline * (2.0 - 0.3) / 2.0


def test_linear_drift_is_followed_without_loss():
    src = two_node_source(2.0, clock_a=Clock(ppm=5, drift_ppm_per_s=-1.0),
                          clock_b=Clock(ppm=-5, drift_ppm_per_s=1.0), seed=8)
    result = link(*seconds(src), window_s=20e-9, bin_s=1e-9)
    assert not result.losses and result.state == LOCKED
    assert result.cross >= 0.99 * shared_coincidences(src)
    assert result.fit.ppm == pytest.approx(true_relative_ppm(src, 2.0), abs=0.05)


def test_tracker_fed_in_uneven_blocks_matches_whole():
    src = two_node_source(1.2, clock_a=Clock(ppm=3), clock_b=Clock(ppm=-3), seed=12)
    a, b = seconds(src)
    tracker = Tracker(acquire_s=0.3)
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.uniform(a[0], a[-1], 40))
    ia, ib = np.searchsorted(a, cuts), np.searchsorted(b, cuts)
    for k in range(len(cuts) - 1):
        tracker.feed(a[ia[k]:ia[k + 1]], b[ib[k]:ib[k + 1]])
    tracker.feed(a[ia[-1]:], b[ib[-1]:], final=True)
    assert tracker.state == LOCKED
    assert tracker.fit.offset_at(1.0) == pytest.approx(src.offset_s(1.0), abs=0.3e-9)
    # segments tile board 1's time without gaps
    starts = np.array([s.start_s for s in tracker.segments])
    ends = np.array([s.end_s for s in tracker.segments])
    assert np.allclose(starts[1:], ends[:-1], atol=0)


def test_window_misses_against_a_gaussian():
    rng = np.random.default_rng(1)
    a = np.sort(rng.uniform(0, 1.0, 20000))
    sigma, window = 10e-9, 15e-9
    b = np.sort(np.concatenate((a + rng.normal(0, sigma, len(a)), rng.uniform(0, 1.0, 20000))))
    expected = math.erfc(window / sigma / math.sqrt(2))     # outside +-1.5 sigma: 13.4 %
    assert window_misses(a, b, window) == pytest.approx(expected, abs=0.015)


def test_link_rejects_bad_input():
    with pytest.raises(SyncError, match="1..1023"):
        link([0.0, 1.0], [0.0, 1.0], window_s=20e-9, bin_s=1e-12)
    with pytest.raises(SyncError, match="sorted"):
        link([1.0, 0.0], [0.0, 1.0])
    with pytest.raises(SyncError, match="at most 8"):
        link([0.0, 1.0], [0.0, 1.0], channels_a=[0, 6], channels_b=[0, 2])


# --- heraldry link on two PTU files ---------------------------------------------------------------

def _write_ptu(path, times_bins, bin_ps, channel=0, heralds=0):
    """Our PTU file of TAGs on input ``channel``; with ``heralds``, as many HERALD records of
    rule 0 (PTU channel 1) at random times, which ``heraldry link`` must leave out."""
    from heraldry.host.events import EVENT_DTYPE
    from heraldry.host.ptu import ChannelMap, PTUWriter
    from heraldry.protocol import Kind
    times = np.asarray(times_bins, np.int64)
    kinds = np.full(len(times), Kind.TAG.value)
    if heralds:
        extra = np.random.default_rng(7).integers(times[0], times[-1], heralds)
        times = np.concatenate((times, extra))
        kinds = np.concatenate((kinds, np.full(heralds, Kind.HERALD.value)))
    order = np.argsort(times, kind="stable")
    events = np.zeros(len(times), EVENT_DTYPE)
    events["time_ps"] = times[order] * bin_ps
    events["channel"] = np.where(kinds[order] == Kind.TAG.value, channel, 0)
    events["kind"] = kinds[order]
    events["count"] = 1
    with PTUWriter(str(path), bin_ps=bin_ps, channel_map=ChannelMap(1, rules=1)) as writer:
        writer.write_block(events)


def test_cli_link_two_ptu_files(tmp_path, capsys):
    from heraldry.host.cli import main
    src = two_node_source(1.5, fiber_delay_s=50e-6, clock_a=Clock(ppm=20),
                          clock_b=Clock(ppm=-15), seed=21)
    _write_ptu(tmp_path / "a.ptu", src.a, 1000)
    _write_ptu(tmp_path / "b.ptu", src.b, 1000, heralds=5000)
    status = main(["link", str(tmp_path / "a.ptu"), str(tmp_path / "b.ptu"),
                   "--window-ns", "20", "--bin-ps", "1000"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "lock state: locked" in out
    ppm = float(out.split("frequency: ")[1].split(" ppm")[0])
    assert ppm == pytest.approx(true_relative_ppm(src, 0.5), abs=0.01)
    offset_us = float(out.split("offset: ")[1].split(" us")[0])
    t_ref = float(out.split("at board-1 time ")[1].split(" s")[0])
    assert offset_us * 1e-6 == pytest.approx(src.offset_s(t_ref), abs=1e-9)
    assert "merged ch 2" not in out          # board 2's herald records are not tags
    rate_b = float(out.split("(merged ch 1): ")[1].split(" /s")[0].replace(",", ""))
    assert rate_b == pytest.approx(len(src.b) / 1.5, rel=0.02)
    cross = int(out.split("cross-node coincidences: ")[1].split(" ")[0].replace(",", ""))
    assert cross >= 0.99 * shared_coincidences(src)


def test_cli_link_errors(tmp_path, capsys):
    from heraldry.host.cli import main
    (tmp_path / "junk.ptu").write_bytes(b"not a ptu file at all")
    status = main(["link", str(tmp_path / "junk.ptu"), str(tmp_path / "junk.ptu")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "cannot read" in err
    status = main(["link", str(tmp_path / "missing.ptu"), str(tmp_path / "junk.ptu")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "missing.ptu" in err
    status = main(["link", "a.ptu", "b.ptu", "--window-ns", "0"])
    err = capsys.readouterr().err
    assert status == 2 and "--window-ns" in err
    src = two_node_source(0.6, pair_rate_hz=0, dark_rate_a_hz=2e4, dark_rate_b_hz=2e4, seed=3)
    _write_ptu(tmp_path / "a.ptu", src.a, 1000)
    _write_ptu(tmp_path / "b.ptu", src.b, 1000, heralds=5000)
    status = main(["link", str(tmp_path / "a.ptu"), str(tmp_path / "b.ptu"),
                   "--acquire-s", "0.5"])
    out = capsys.readouterr().out
    assert status == 1 and "no correlation peak found" in out


# --- live merge ---------------------------------------------------------------------------------

def test_live_link_in_random_pieces_gives_the_whole_streams_windows():
    """LiveLink fed in random pieces (either board, sometimes nothing) across a +2 ppm step
    (a loss and a relock) merges exactly what link() does on the whole streams: the same
    merged tags, windows and heralds, with a window that spans two pieces counted once."""
    from heraldry.sync import LiveLink
    src = two_node_source(1.6, pair_rate_hz=1e5, dark_rate_a_hz=3e4, dark_rate_b_hz=3e4,
                          clock_a=Clock(ppm=20), clock_b=Clock(ppm=-15, steps=((1.0, 2.0),)),
                          seed=4)
    a, b = seconds(src)
    a = a[a < b[-1] - 1e-3]     # board 2 runs to the end (LiveLink stops where it stops)
    rng = np.random.default_rng(1)
    ca, cb = rng.integers(0, 2, len(a)), rng.integers(0, 2, len(b))
    rules = [0b0101, 0b1111]
    whole = link(a, b, channels_a=ca, channels_b=cb, rules=rules, acquire_s=0.25)
    live = LiveLink(2, 2, rules=rules, acquire_s=0.25, keep=True)
    ia = ib = 0
    while ia < len(a) or ib < len(b):
        na, nb = rng.integers(0, 5000, 2)
        live.feed(a[ia:ia + na], ca[ia:ia + na], b[ib:ib + nb], cb[ib:ib + nb])
        ia, ib = ia + na, ib + nb
    live.feed(final=True)
    got = live.result()
    assert len(whole.losses) == 1 and len(whole.locks) == 2 and whole.state == LOCKED
    assert got.losses == whole.losses and got.locks == whole.locks
    assert np.array_equal(got.tags, whole.tags)
    assert np.array_equal(got.windows.t0, whole.windows.t0)
    assert np.array_equal(got.windows.pattern, whole.windows.pattern)
    assert np.array_equal(got.heralds, whole.heralds) and len(whole.heralds) > 100
    m = live.metrics()
    assert m["cross"] == whole.cross and m["windows"] == len(whole.windows)
    assert m["heralds"] == np.bincount(whole.heralds["rule"], minlength=2).tolist()
    assert m["singles_hz"][2] * m["synced_s"] == np.count_nonzero(whole.tags["channel"] == 2)
    assert m["state"] == LOCKED and m["losses"] == 1 and m["locks"] == 2


def test_live_link_stops_board_1_where_board_2_stopped():
    """Board 2's stream ends 0.2 s before board 1's: link() on the whole streams loses lock
    there; LiveLink's final feed merges board 1 only as far as board 2 ran and stays locked,
    with the coincidences of the common span."""
    from heraldry.sync import LiveLink
    src = two_node_source(1.0, clock_a=Clock(ppm=20), clock_b=Clock(ppm=-15), seed=8)
    a, b = seconds(src)
    b = b[b < 0.8]
    whole = link(a, b, acquire_s=0.25)
    common = link(a[a < 0.8 - 50e-6], b, acquire_s=0.25)
    live = LiveLink(acquire_s=0.25)
    live.feed(a, None, b, None)
    live.feed(final=True)
    assert whole.state != LOCKED and common.state == LOCKED
    assert live.metrics()["state"] == LOCKED and live.metrics()["losses"] == 0
    assert abs(live.cross - common.cross) <= 3 and common.cross > 5000


def test_live_link_counts_only_without_keep_and_refuses_bad_input():
    from heraldry.sync import LiveLink
    src = two_node_source(0.8, clock_a=Clock(ppm=20), clock_b=Clock(ppm=-15), seed=6)
    a, b = seconds(src)
    live = LiveLink(acquire_s=0.25)
    for k in range(0, len(a), 3000):
        live.feed(a[k:k + 3000], None, b[k:k + 3000], None)
    live.feed(final=True)
    m = live.metrics()
    assert m["state"] == LOCKED and m["cross"] >= 0.99 * shared_coincidences(src) * (
        m["synced_s"] / 0.8) - 5 * math.sqrt(m["cross"])
    assert len(live.result().tags) == 0 and live.result().cross == m["cross"]
    assert 0 <= m["misses"] < 0.01
    with pytest.raises(SyncError, match="channels 0..0"):
        live.feed([1.0], [1])
    with pytest.raises(SyncError, match="at most 8"):
        LiveLink(5, 4)


# --- reference markers --------------------------------------------------------------------------

def _markers(clock, period_s, count, *, jitter_s=1e-9, bin_s=10e-9, seed=0):
    """Reference edges at true times k * period_s (k = 1..count), read on ``clock`` and
    quantised to the board's bins, plus their true times."""
    rng = np.random.default_rng(seed)
    true = np.arange(1, count + 1) * period_s + rng.normal(0, jitter_s, count)
    return np.floor(clock.local(true) / bin_s) * bin_s, true


@pytest.mark.parametrize("ppm, drift", [(13.7, 0.0), (-42.25, 0.0), (20.0, 0.05)])
def test_rescale_from_pps_measures_the_injected_ppm(ppm, drift):
    from heraldry.sync import rescale
    clock = Clock(ppm=ppm, drift_ppm_per_s=drift, start_s=0.3)
    local, true = _markers(clock, 1.0, 60)
    scale = rescale(local, 1.0)
    mid = true[len(true) // 2 - 1: len(true) // 2 + 1].mean()     # the fit's middle
    assert scale.ppm == pytest.approx(clock.ppm_at(mid), abs=0.01)
    assert scale.drift_ppm_per_s == pytest.approx(drift, abs=0.01)
    assert scale.missing == 0 and scale.extra == 0 and len(scale.markers_s) == 60
    # SI seconds of events between the markers: their true times from the first marker
    events = np.sort(np.random.default_rng(1).uniform(true[0], true[-1], 1000))
    si = scale.to_si(clock.local(events))
    assert np.max(np.abs(si - (events - true[0]))) < 20e-9
    assert scale.residual_s < 10e-9


def test_rescale_counts_missing_and_extra_markers():
    from heraldry.sync import rescale
    clock = Clock(ppm=-17.5, start_s=0.1)
    local, true = _markers(clock, 1.0, 40, seed=3)
    dropped = [0, 7, 8, 20]                     # the first marker and three more are missing
    rng = np.random.default_rng(4)
    glitches = rng.uniform(local[0], local[-1], 6)
    bounce = local[[11, 30]] + 150e-9           # a second edge just after two markers
    seen = np.sort(np.concatenate((np.delete(local, dropped), glitches, bounce)))
    scale = rescale(seen, 1.0)
    assert scale.missing == 3 and scale.extra == 8
    assert scale.ppm == pytest.approx(-17.5, abs=0.01)
    assert np.array_equal(scale.index, np.delete(np.arange(40), dropped) - 1)
    # SI time 0 is the first accepted marker: marker 0 is missing, so true[1]
    si = scale.to_si(clock.local(np.array([25.5])))
    assert si[0] == pytest.approx(25.5 - true[1], abs=20e-9)


def test_rescale_from_a_divided_10_mhz_reference():
    from heraldry.sync import rescale
    clock = Clock(ppm=8.25)
    period = 1000 * 1e-7                        # 10 MHz divided by 1000: 10 kHz markers
    local, true = _markers(clock, period, 20000, jitter_s=0.1e-9)
    scale = rescale(local, period)
    assert scale.ppm == pytest.approx(8.25, abs=0.01) and scale.missing == 0
    assert scale.local_period_s == pytest.approx(period * (1 + 8.25e-6), rel=1e-8)


def test_rescale_refuses_markers_off_any_grid():
    from heraldry.sync import rescale
    with pytest.raises(SyncError, match="no reference period"):
        rescale([0.1, 0.45, 1.3], 1.0)
    with pytest.raises(SyncError, match="no reference period"):
        rescale([0.5], 1.0)


def test_live_reference_places_tags_as_rescale_does_offline():
    """LiveReference fed in random pieces (tags and markers together, with missing, glitch and
    bounce markers) gives rescale's grid and to_si's times: to float rounding between the first
    and last markers and after the last; before the first at the first period's rate (offline: the
    fitted rate), within a nanosecond here."""
    from heraldry.sync import LiveReference, rescale
    clock = Clock(ppm=-17.5, drift_ppm_per_s=0.02, start_s=0.1)
    local, true = _markers(clock, 1.0, 40, seed=3)
    rng = np.random.default_rng(5)
    seen = np.sort(np.concatenate((np.delete(local, [0, 7, 8, 20]),
                                   rng.uniform(local[0], local[-1], 6), local[[11, 30]] + 150e-9)))
    tags = np.sort(rng.uniform(0, local[-1] + 0.7, 20000))
    channels = rng.integers(0, 3, len(tags))
    offline = rescale(seen, 1.0)
    want = offline.markers_s[0] + offline.to_si(tags)

    live = LiveReference(1.0)
    got_t, got_c = [], []
    cuts = np.sort(rng.uniform(0, tags[-1], 30))
    lo = -np.inf
    for hi in [*cuts, np.inf]:
        piece = (tags > lo) & (tags <= hi)
        marks = seen[(seen > lo) & (seen <= hi)]
        t, c = live.feed(tags[piece], channels[piece], marks)
        got_t.append(t), got_c.append(c)
        # a tag waits for the next accepted marker, never longer
        assert live.waiting <= np.count_nonzero((tags > (live.scale().markers_s[-1]
                                                         if live.markers >= 2 else -np.inf))
                                                & (tags <= hi))
        lo = hi
    t, c = live.close()
    got_t.append(t), got_c.append(c)
    got_t, got_c = np.concatenate(got_t), np.concatenate(got_c)
    assert np.array_equal(got_c, channels) and len(got_t) == len(tags)
    scale = live.scale()
    assert np.array_equal(scale.index, offline.index) and scale.extra == offline.extra == 8
    assert scale.ppm == offline.ppm and scale.missing == offline.missing == 3
    inside = tags >= offline.markers_s[0]
    assert np.max(np.abs(got_t[inside] - want[inside])) < 1e-13     # float rounding only
    # before the first marker: the first period's rate against the fitted one (the clock
    # drifts 0.02 ppm/s, so they differ by about 0.4 ppm)
    a, n = offline.markers_s, offline.index
    first_rate = (n[1] - n[0]) / (a[1] - a[0])
    fitted_rate = 1.0 / offline.local_period_s
    bound = abs(first_rate - fitted_rate) * (a[0] - tags[~inside]) + 1e-12
    assert np.all(np.abs(got_t[~inside] - want[~inside]) <= bound)
    assert np.all(np.diff(got_t) >= 0)


def test_live_reference_refusals():
    from heraldry.sync import LiveReference
    live = LiveReference(1.0)
    assert live.feed([0.5, 0.7], [0, 1], [0.2]) == (pytest.approx([]), pytest.approx([]))
    with pytest.raises(SyncError, match="time order"):
        live.feed([0.6], [0])
    with pytest.raises(SyncError, match="no reference period"):
        live.close()            # one marker: the tags cannot be placed
    with pytest.raises(SyncError, match="period_s must be > 0"):
        LiveReference(0.0)


# --- two heraldry serve streams -----------------------------------------------------------------

def _publisher(times_ps, seed):
    """A PUB socket on a free loopback port publishing ``times_ps`` as channel-0 TAG records in
    ``events`` messages of the documented format (header seq/first/dtype/count/lost), with
    every 25th message withheld after the tenth (a subscriber sees them as gaps)."""
    import json
    import threading
    import zmq
    from heraldry.host.events import EVENT_DTYPE
    from heraldry.protocol import Kind
    pub = zmq.Context.instance().socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    events = np.zeros(len(times_ps), EVENT_DTYPE)
    events["time_ps"], events["kind"] = times_ps, Kind.TAG.value
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(rng.integers(20, 200, len(events) // 20 + 1))
    parts = np.split(events, cuts[cuts < len(events)])
    withheld = []

    def run():
        import time
        time.sleep(0.5)         # the subscriber connects first (ZeroMQ's slow joiner)
        first = 0
        descr = np.lib.format.dtype_to_descr(EVENT_DTYPE)
        for seq, part in enumerate(parts):
            header = {"seq": seq, "first": first, "dtype": descr, "count": len(part),
                      "lost": {}}
            first += len(part)
            if seq > 10 and seq % 25 == 0:
                withheld.append(len(part))
                continue
            pub.send_multipart([b"events", json.dumps(header).encode(), part.tobytes()])
            time.sleep(0.0005)
        time.sleep(0.2)
        pub.close(linger=1000)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return f"tcp://127.0.0.1:{port}", thread, withheld


def test_link_streams_of_two_serve_publishers():
    """Two publishers in the serve format carry the model's boards (device times): the live
    link locks, finds the model's frequency, counts the withheld messages and records as
    missed, and its coincidences are the shared clock's less the pairs in those messages."""
    pytest.importorskip("zmq")
    from heraldry.host.linklive import link_streams
    src = two_node_source(0.6, pair_rate_hz=1e5, clock_a=Clock(ppm=20),
                          clock_b=Clock(ppm=-15), seed=9)
    end_a, thread_a, withheld_a = _publisher(src.a * 1000, 1)
    end_b, thread_b, withheld_b = _publisher(src.b * 1000, 2)
    live, sides = link_streams(end_a, end_b, 30.0, channels_a=1, channels_b=1, acquire_s=0.2,
                               keep_tags=True,
                               stop=lambda: not thread_a.is_alive() and not thread_b.is_alive())
    thread_a.join()
    thread_b.join()
    for side, withheld, n in ((sides[0], withheld_a, len(src.a)), (sides[1], withheld_b,
                                                                   len(src.b))):
        assert side.missed_events == sum(withheld) and side.missed_messages == len(withheld)
        assert side.tags == n - sum(withheld)
    m = live.metrics()
    assert m["state"] == LOCKED
    assert m["ppm"] == pytest.approx(true_relative_ppm(src, 0.5), abs=0.05)
    kept_a, kept_b = (np.round(np.concatenate(s.times) * 1e12 / 1000).astype(np.int64)
                      for s in sides)
    # the shared-clock baseline on the detections that reached the subscriber
    ia, ib = np.isin(src.a, kept_a), np.isin(src.b, kept_b)
    fiber = round(src.fiber_delay_s / src.bin_a_s)
    t0 = live.tracker.segments[0].start_s
    after = lambda t: t >= t0 * 1e9         # noqa: E731
    w = coincidence_windows([np.sort(src.shared_a[ia & after(src.a)]),
                             np.sort(src.shared_b[ib & after(src.b)] - fiber)], WINDOW_BINS)
    assert m["cross"] >= 0.98 * np.count_nonzero(w.pattern == 3)


@pytest.mark.parametrize("seed", range(4))
def test_tracker_does_not_acquire_on_a_short_last_stretch(seed):
    """Lock lost at a +30 ppm step 80 ms before the streams end: the last stretch (shorter
    than half the 0.2 s acquisition) is not searched. (Searching it locked on a false peak for
    most seeds: -191, +58, -84 ppm where the truth is -5.)"""
    src = two_node_source(0.58, pair_rate_hz=1e5, dark_rate_a_hz=3e4, dark_rate_b_hz=3e4,
                          clock_a=Clock(ppm=20), clock_b=Clock(ppm=-15, steps=((0.5, 30.0),)),
                          seed=seed)
    a, b = seconds(src)
    tracker = Tracker(acquire_s=0.2)
    tracker.feed(a, b)
    tracker.feed([], [], final=True)
    assert tracker.losses and tracker.losses[-1] == pytest.approx(0.51, abs=0.02)
    assert tracker.state == "lost" and tracker.fit is None


def test_cli_link_two_serve_streams(capsys):
    pytest.importorskip("zmq")
    from heraldry.host.cli import main
    src = two_node_source(0.6, pair_rate_hz=1e5, clock_a=Clock(ppm=20),
                          clock_b=Clock(ppm=-15), seed=9)
    end_a, thread_a, withheld_a = _publisher(src.a * 1000, 1)
    end_b, thread_b, withheld_b = _publisher(src.b * 1000, 2)
    status = main(["link", end_a, end_b, "--duration", "3", "--acquire-s", "0.2",
                   "--channels-a", "1", "--channels-b", "1", "--update-s", "0.5",
                   "--metrics-port", "0"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert re.search(r"^metrics: http://127\.0\.0\.1:[1-9][0-9]*/metrics$", out, re.M)
    assert f"stream 1 {end_a}: " in out and f"missed {len(withheld_a)} messages " \
        f"({sum(withheld_a):,} records)" in out
    assert f"({sum(withheld_b):,} records)" in out
    ppm = float(out.split("frequency: ")[1].split(" ppm")[0])
    assert ppm == pytest.approx(true_relative_ppm(src, 0.5), abs=0.05)
    status = main(["link", "tcp://nowhere:notaport", "tcp://127.0.0.1:1", "--duration", "1"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "cannot subscribe" in err
    status = main(["link", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "--metrics-port", "-1"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "--metrics-port" in err
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["link", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "--metrics-port",
                       str(port)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and f"cannot serve /metrics on 127.0.0.1:" \
        f"{port}" in err


def test_live_link_metrics_endpoint():
    """The live link's /metrics (Prometheus text) carry the figures of LiveLink.metrics() and
    the tags each stream delivered, scraped over HTTP after a link of two publishers."""
    pytest.importorskip("zmq")
    pytest.importorskip("prometheus_client")
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    from heraldry.host.linklive import LINK_METRIC_NAMES, LinkMetrics, link_streams
    src = two_node_source(0.6, pair_rate_hz=1e5, clock_a=Clock(ppm=20),
                          clock_b=Clock(ppm=-15), seed=9)
    end_a, thread_a, withheld_a = _publisher(src.a * 1000, 1)
    end_b, thread_b, withheld_b = _publisher(src.b * 1000, 2)
    exporter = LinkMetrics(0, channels_a=1)
    try:
        live, sides = link_streams(end_a, end_b, 30.0, channels_a=1, channels_b=1,
                                   acquire_s=0.2, on_update=exporter.update,
                                   stop=lambda: not thread_a.is_alive()
                                   and not thread_b.is_alive())
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        exporter.close()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    names = {name for name, _ in samples}
    assert set(LINK_METRIC_NAMES) <= names
    assert samples[("heraldry_link_locked", ())] == 1
    assert samples[("heraldry_link_state", (("state", "locked"),))] == 1
    assert samples[("heraldry_link_state", (("state", "lost"),))] == 0
    assert samples[("heraldry_link_frequency_ppm", ())] == pytest.approx(
        true_relative_ppm(src, 0.5), abs=0.05)
    assert samples[("heraldry_link_offset_seconds", ())] == pytest.approx(
        src.offset_s(live.tracker.fit.t_ref_s), abs=2e-9)
    assert samples[("heraldry_link_cross_coincidences_total", ())] == live.cross > 1000
    assert samples[("heraldry_link_losses_total", ())] == 0
    for k, side in enumerate(sides):
        assert samples[("heraldry_link_tags_total", (("board", str(k + 1)),))] == \
            len((src.a, src.b)[k]) - sum((withheld_a, withheld_b)[k])
    assert samples[("heraldry_link_singles_total", (("board", "2"), ("channel", "0")))] == \
        live.singles[1]


def test_cli_link_rescales_ptu_files_by_their_reference_markers(tmp_path, capsys):
    """Each board's file carries markers of one shared 10 MHz reference divided by 10^4
    (1 ms, channel 1) read on its own clock: each board's ppm against the reference is the
    injected one, and on the SI time scales the link finds no frequency difference and every
    shared-clock coincidence; the markers are not merged."""
    from heraldry.host.cli import main
    from heraldry.host.events import EVENT_DTYPE
    from heraldry.host.ptu import ChannelMap, PTUWriter
    from heraldry.protocol import Kind
    clocks = Clock(ppm=20, start_s=1e-3), Clock(ppm=-15, start_s=1.04e-3)
    src = two_node_source(1.5, fiber_delay_s=50e-6, clock_a=clocks[0], clock_b=clocks[1],
                          seed=21)
    marks = np.arange(1, 1500) * 1e-3 + 0.37e-3                # true times of the edges
    for name, bins, clock in (("a", src.a, clocks[0]), ("b", src.b, clocks[1])):
        mbins = np.floor(clock.local(marks) / 1e-9).astype(np.int64)
        times = np.concatenate((bins, mbins))
        chans = np.concatenate((np.zeros(len(bins), int), np.ones(len(mbins), int)))
        order = np.argsort(times, kind="stable")
        events = np.zeros(len(times), EVENT_DTYPE)
        events["time_ps"], events["channel"] = times[order] * 1000, chans[order]
        events["kind"], events["count"] = Kind.TAG.value, 1
        with PTUWriter(str(tmp_path / f"{name}.ptu"), bin_ps=1000,
                       channel_map=ChannelMap(2)) as writer:
            writer.write_block(events)
    status = main(["link", str(tmp_path / "a.ptu"), str(tmp_path / "b.ptu"), "--sync-a", "0",
                   "--sync-b", "0", "--reference-a", "1", "--reference-b", "1",
                   "--reference-period-s", "1e-3"])
    out = capsys.readouterr().out
    assert status == 0, out
    ppm_a = float(out.split("reference board 1 (ch 1, period 0.001 s): clock ")[1].split()[0])
    ppm_b = float(out.split("reference board 2 (ch 1, period 0.001 s): clock ")[1].split()[0])
    assert ppm_a == pytest.approx(20, abs=0.01) and ppm_b == pytest.approx(-15, abs=0.01)
    assert "1,499 markers, 0 missing, 0 extra" in out
    assert abs(float(out.split("frequency: ")[1].split(" ppm")[0])) < 0.01
    assert "singles board 1 ch 1" not in out and "singles board 2 ch 1" not in out
    cross = int(out.split("cross-node coincidences: ")[1].split(" ")[0].replace(",", ""))
    assert cross >= 0.99 * shared_coincidences(src)
    for options, fragment in ((["sim:+1ppm", "sim:-1ppm", "--reference-a", "1"], "give both"),
                              (["sim:+1ppm", "sim:-1ppm", "--reference-a", "1",
                                "--reference-b", "2"], "must be the same"),
                              (["tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "--reference-a", "1",
                                "--reference-b", "1"], "serve stream")):
        status = main(["link", *options])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and fragment in err, err


def test_cli_live_link_stopped_by_a_signal(capsys):
    """SIGINT while two streams are linked (30 s asked): the link ends at once with its summary
    of what came, one line on stderr, exit status 130."""
    pytest.importorskip("zmq")
    import os
    import signal
    import threading
    import time
    from heraldry.host.cli import main
    src = two_node_source(0.6, pair_rate_hz=1e5, clock_a=Clock(ppm=20),
                          clock_b=Clock(ppm=-15), seed=9)
    end_a, thread_a, _ = _publisher(src.a * 1000, 1)
    end_b, thread_b, _ = _publisher(src.b * 1000, 2)

    def interrupt():
        thread_a.join()
        thread_b.join()
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=interrupt, daemon=True).start()
    start = time.monotonic()
    status = main(["link", end_a, end_b, "--duration", "30", "--acquire-s", "0.2",
                   "--channels-a", "1", "--channels-b", "1"])
    captured = capsys.readouterr()
    assert status == 130 and time.monotonic() - start < 15
    assert captured.err.count("\n") == 1 and "interrupted by SIGINT" in captured.err
    assert "lock state: locked" in captured.out and "cross-node coincidences" in captured.out


def test_synchronised_time_ends_with_the_last_tag():
    """The last block is cut at board 1's last tag: the synchronised time (the rates'
    denominator) is the span the tags cover, not a whole block beyond it."""
    src = two_node_source(0.8055, clock_a=Clock(ppm=20), clock_b=Clock(ppm=-15), seed=6)
    a, b = seconds(src)
    a = a[a < b[-1] - 1e-3]
    result = link(a, b, acquire_s=0.25)
    assert result.state == LOCKED
    first_lock = result.segments[0]
    assert result.synced_s == pytest.approx(a[-1] - first_lock.start_s, abs=1e-6)
    assert result.segments[-1].end_s <= a[-1] + 1e-9
