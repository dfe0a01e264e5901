"""Measurements (``host/measure.py``) against brute-force counts on small data, fed whole and in
random blocks; pycorrelate gives the same histogram counts; ``heraldry calibrate`` finds the
test signal's pair delay and ``heraldry acquire --config`` applies what it wrote."""

import json
import subprocess
import sys

import numpy as np
import pytest

from heraldry import model
from heraldry.host import measure
from heraldry.host.events import EVENT_DTYPE
from heraldry.protocol import Kind


def random_tags(seed, n=600, span=20_000, channels=3, ties=True):
    """Sorted (times, channels) with many equal times (``span`` small against ``n``)."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.integers(0, span if ties else span * 1000, n))
    return times.astype(np.int64), rng.integers(0, channels, n).astype(np.int64)


def in_blocks(make, times, chans, seed, method="result", **kwargs):
    """Result of a fresh measurement fed whole, and fed in random blocks (some empty, some cut
    inside runs of equal times)."""
    whole = getattr(make().feed(times, chans), method)(**kwargs)
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, len(times) + 1, 12))
    obj = make()
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(times)]):
        obj.feed(times[a:b], chans[a:b])
    return whole, getattr(obj, method)(**kwargs)


def brute_pairs(t1, t2, lo, hi, width):
    dt = (t2[None, :] - t1[:, None]).ravel()
    dt = dt[(dt >= lo) & (dt < hi)]
    return np.bincount((dt - lo) // width, minlength=(hi - lo) // width)


def same(a, b):
    """Dataclass results equal field by field (arrays exactly, floats allowing NaN)."""
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            nan = x.dtype.kind == "f"
            assert (x is None) == (y is None) and np.array_equal(x, y, equal_nan=nan), name
        elif isinstance(x, float):
            assert x == y or (np.isnan(x) and np.isnan(y)), name
        else:
            assert x == y, name


# --- rates ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_count_rates_and_trace(seed):
    times, chans = random_tags(seed, channels=4)
    whole, blocks = in_blocks(lambda: measure.CountRates(4, bin_ps=700, start_ps=0), times,
                              chans, seed, duration_ps=50_000)
    same(whole, blocks)
    for c in range(4):
        assert whole.counts[c] == sum(1 for x in chans if x == c)
        assert whole.rates_hz[c] == pytest.approx(whole.counts[c] / 50e-9)
        for k in range(whole.trace.shape[1]):
            expected = sum(1 for t, x in zip(times, chans)
                           if x == c and 700 * k <= t < 700 * (k + 1))
            assert whole.trace[c, k] == expected
    assert whole.trace_edges_ps[-1] > times[-1] >= whole.trace_edges_ps[-2]


def test_rates_refuse_out_of_order_blocks_and_read_event_blocks():
    rates = measure.CountRates(2)
    rates.feed([10, 20], [0, 1])
    with pytest.raises(ValueError, match="time order"):
        rates.feed([15], [0])
    events = np.zeros(4, EVENT_DTYPE)
    events["time_ps"] = [30, 31, 32, 33]
    events["channel"] = [0, 1, 1, 0]
    events["kind"] = [Kind.TAG.value, Kind.HERALD.value, Kind.TAG.value, Kind.LOSS.value]
    assert rates.feed(events).result().counts.tolist() == [2, 2]


# --- coincidence windows ----------------------------------------------------------------------

@pytest.mark.parametrize("seed,window,selected", [
    (2, 1, (0, 1, 2)), (3, 37, (0, 2)), (4, 1023, (1, 2, 3)), (5, 5, (0, 1, 2, 3))])
def test_coincidences_match_the_reference_model(seed, window, selected):
    times, chans = random_tags(seed, n=800, span=30_000, channels=4)
    groups = [sum(1 << c for c in selected), 1 << selected[0] | 1 << selected[-1]]
    make = lambda: measure.Coincidences(selected, window, groups=groups, keep_windows=True)
    whole, blocks = in_blocks(make, times, chans, seed)
    same(whole, blocks)
    tpc = [times[chans == c] if c in selected else np.zeros(0, np.int64) for c in range(4)]
    ref = model.coincidence_windows(tpc, window)
    assert np.array_equal(whole.t0, ref.t0) and np.array_equal(whole.pattern, ref.pattern)
    counts = model.pattern_counts(ref, 4)
    assert np.array_equal(whole.patterns[:16], counts) and not whole.patterns[16:].any()
    for g in groups:
        assert whole.groups[g] == sum(n for p, n in enumerate(counts) if p & g == g)


def test_coincidence_window_boundaries_and_long_windows():
    # t0 + W exactly opens the next window; W beyond the hardware's range is allowed.
    c = measure.Coincidences([0, 1], 5000, keep_windows=True)
    c.feed([0, 4999, 5000, 9999, 10000, 10000], [0, 1, 1, 0, 0, 1])
    r = c.result()
    assert r.t0.tolist() == [0, 5000, 10000] and r.pattern.tolist() == [3, 3, 3]
    c = measure.Coincidences([0, 1], 5000, keep_windows=True).feed([0, 5001], [0, 1])
    assert c.result().pattern.tolist() == [1, 2]


def test_heralded_g2_from_model_windows():
    times, chans = random_tags(6, n=1500, span=40_000, channels=3)
    whole, blocks = in_blocks(lambda: measure.HeraldedG2(2, 0, 1, 40), times, chans, 6)
    same(whole, blocks)
    ref = model.coincidence_windows([times[chans == c] for c in range(3)], 40)
    n = {m: int(np.sum(ref.pattern & m == m)) for m in (4, 5, 6, 7)}
    assert (whole.n_h, whole.n_h1, whole.n_h2, whole.n_h12) == (n[4], n[5], n[6], n[7])
    assert whole.n_h12 > 0
    assert whole.g2 == pytest.approx(n[4] * n[7] / (n[5] * n[6]))


# --- correlation ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,bin_ps,range_ps", [(7, 1, 30), (8, 10, 500), (9, 250, 1000)])
def test_correlation_against_brute_force(seed, bin_ps, range_ps):
    times, chans = random_tags(seed, n=700, span=10_000)
    whole, blocks = in_blocks(
        lambda: measure.Correlation(0, 2, bin_ps=bin_ps, range_ps=range_ps), times, chans, seed)
    same(whole, blocks)
    t1, t2 = times[chans == 0], times[chans == 2]
    expected = brute_pairs(t1, t2, -range_ps, range_ps, bin_ps)
    assert np.array_equal(whole.counts, expected) and expected.sum() > 0
    assert whole.edges_ps[0] == -range_ps and whole.edges_ps[-1] == range_ps
    duration = times[-1] - times[0]
    assert np.allclose(whole.g2, expected / (len(t1) * len(t2) * bin_ps / duration))


@pytest.mark.slow
def test_correlation_counts_equal_pycorrelate():
    pycorrelate = pytest.importorskip("pycorrelate")
    rng = np.random.default_rng(10)
    t1 = np.sort(rng.integers(0, 10**7, 3000))
    t2 = np.sort(np.r_[rng.integers(0, 10**7, 3000), t1[::3] + 1234])
    edges = np.arange(-5000, 5001, 100)
    theirs = pycorrelate.pcorrelate(t1, t2, edges) * np.diff(edges)
    ours = measure.correlate(t1, t2, 100, -5000, 5000)
    assert np.array_equal(ours, np.rint(theirs).astype(np.int64))
    assert ours[(1234 + 5000) // 100] >= 1000


def test_correlation_refuses_bad_binning():
    with pytest.raises(ValueError, match="whole number"):
        measure.Correlation(0, 1, bin_ps=3, range_ps=10)
    with pytest.raises(ValueError, match="differ"):
        measure.Correlation(1, 1, bin_ps=1, range_ps=10)


@pytest.mark.parametrize("seed,bin_ps,range_ps", [(11, 1, 40), (12, 25, 400)])
def test_start_stop_against_brute_force(seed, bin_ps, range_ps):
    times, chans = random_tags(seed, n=600, span=15_000)
    whole, blocks = in_blocks(
        lambda: measure.StartStop(1, 0, bin_ps=bin_ps, range_ps=range_ps), times, chans, seed)
    same(whole, blocks)
    starts, stops = times[chans == 1], times[chans == 0]
    expected = np.zeros(range_ps // bin_ps, np.int64)
    unmatched = 0
    for t in starts:
        later = stops[stops >= t]
        if later.size and later[0] - t < range_ps:
            expected[(later[0] - t) // bin_ps] += 1
        else:
            unmatched += 1
    assert np.array_equal(whole.counts, expected) and whole.unmatched == unmatched
    assert whole.starts == len(starts) and expected[0] > 0


# --- sliding windows, CAR, Klyshko ------------------------------------------------------------

def test_sliding_coincidences_against_brute_force():
    times, chans = random_tags(13, n=800, span=20_000)
    for w, off in ((0, 0), (3, 0), (10, -25), (40, 100)):
        whole, blocks = in_blocks(
            lambda: measure.SlidingCoincidences(0, 1, w, offset_ps=off), times, chans, 13)
        dt = times[chans == 1][None, :] - times[chans == 0][:, None]
        assert whole == blocks == int(np.sum(np.abs(dt - off) <= w))


def correlated_pairs(seed, pairs=3000, noise=3000, delay=200, span=10**8):
    """Channel 0 heralds, channel 1 sees 60% of the partners ``delay`` later (+-2 jitter),
    both channels plus channel 2 have uniform background."""
    rng = np.random.default_rng(seed)
    t0 = rng.integers(0, span, pairs)
    keep = rng.random(pairs) < 0.6
    t1 = t0[keep] + delay + rng.integers(-2, 3, keep.sum())
    times = np.r_[t0, t1, rng.integers(0, span, 3 * noise)]
    chans = np.r_[np.zeros(pairs), np.ones(keep.sum()), np.repeat([0, 1, 2], noise)]
    order = np.lexsort((chans, times))
    return times[order].astype(np.int64), chans[order].astype(np.int64), int(keep.sum())


def test_car_and_klyshko_against_brute_force():
    times, chans, partners = correlated_pairs(14)
    t_h, t_s = times[chans == 0], times[chans == 1]
    dt = (t_s[None, :] - t_h[:, None]).ravel()
    w, delay = 5, 200
    c = int(np.sum(np.abs(dt - delay) <= w))
    a = int(np.sum(np.abs(dt - delay - 1000) <= w))
    make = lambda: measure.CoincidenceToAccidental(0, 1, w, delay_ps=delay, offset_ps=1000)
    whole, blocks = in_blocks(make, times, chans, 14, duration_ps=10**8)
    same(whole, blocks)
    assert (whole.coincidences, whole.accidentals_offset) == (c, a)
    assert whole.width_ps == 11
    assert whole.accidentals_singles == pytest.approx(len(t_h) * len(t_s) * 11 / 10**8)
    assert whole.car == pytest.approx(c / a) and whole.car_net == pytest.approx((c - a) / a)
    assert c >= partners            # every partner is inside the window
    singles = measure.CoincidenceToAccidental(0, 1, w, delay_ps=delay, method="singles")
    r = singles.feed(times, chans).result(duration_ps=10**8)
    assert r.car == pytest.approx(c / r.accidentals_singles) and r.offset_ps == 110

    make = lambda: measure.KlyshkoEfficiency(0, 1, w, delay_ps=delay, offset_ps=1000,
                                             herald_dark_counts=500)
    whole, blocks = in_blocks(make, times, chans, 15)
    same(whole, blocks)
    assert (whole.heralds, whole.coincidences, whole.accidentals) == (len(t_h), c, a)
    assert whole.efficiency_raw == pytest.approx(c / len(t_h))
    assert whole.efficiency == pytest.approx((c - a) / (len(t_h) - 500))


# --- delay calibration ------------------------------------------------------------------------

def test_delay_calibration_finds_known_delays():
    rng = np.random.default_rng(16)
    bin_ps = 10_000
    source = np.sort(rng.integers(0, 10**6, 2000)) * bin_ps
    delays = {0: 0, 1: 70_000, 2: -30_000}
    times = [source + d for d in delays.values()] + [rng.integers(0, 10**6, 500) * bin_ps]
    chans = np.repeat([0, 1, 2, 3], [2000, 2000, 2000, 500])
    times = np.concatenate(times)
    order = np.lexsort((chans, times))
    times, chans = times[order], chans[order]
    make = lambda: measure.DelayCalibration(0, [0, 1, 2, 3], bin_ps=bin_ps, range_ps=200_000,
                                            resolution_ps=bin_ps)
    whole, blocks = in_blocks(make, times, chans, 16)
    assert whole == blocks
    assert whole[1].found and whole[1].delay_ps == 70_000
    assert whole[2].found and whole[2].delay_ps == -30_000
    assert not whole[3].found and whole[3].delay_ps is None
    assert measure.delays_to_apply(whole, 0) == {0: 70_000, 1: 0, 2: 100_000}


# --- command line -----------------------------------------------------------------------------

def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "heraldry.host.cli", *args],
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def test_calibrate_finds_pair_delay_and_acquire_applies_it(tmp_path):
    config = tmp_path / "delays.json"
    status, stdout, stderr = run_cli(
        "calibrate", "--board", "sim-inprocess", "--duration", "0.00005", "--channels", "2",
        "--pair-delay", "70", "--pair-rate", "5e6", "--efficiency", "0.8", "--out", str(config))
    assert status == 0, stderr
    written = json.loads(config.read_text())
    assert written["delays_ns"] == {"0": 70.0, "1": 0.0}
    assert "70" in stdout
    summary = tmp_path / "summary.json"
    status, stdout, stderr = run_cli(
        "acquire", "--board", "sim-inprocess", "--duration", "0.00002", "--channels", "2",
        "--pair-delay", "70", "--pair-rate", "5e6", "--config", str(config), "--delay", "1=20",
        "--summary-json", str(summary), "--quiet")
    assert status == 0, stderr
    # the config's delay for channel 0, the command line's for channel 1
    assert json.loads(summary.read_text())["delays_bins"] == [7, 2]


@pytest.mark.parametrize("text,fragment", [
    ("{", "not valid JSON"), ('{"delays": {}}', "delays_ns"), ('{"delays_ns": {"x": 1}}', "x"),
    ('{"delays_ns": {"0": "abc"}}', "abc")])
def test_acquire_refuses_bad_config_files(tmp_path, capsys, text, fragment):
    from heraldry.host import cli
    path = tmp_path / "bad.json"
    path.write_text(text)
    status = cli.main(["acquire", "--duration", "1e-6", "--config", str(path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and fragment in err[0], err
    status = cli.main(["acquire", "--duration", "1e-6", "--config", str(tmp_path / "none")])
    assert status == 2 and "cannot read" in capsys.readouterr().err


def test_blocks_cut_inside_runs_of_equal_times():
    """Many tags share a time (span 150 for 900 tags): block cuts fall inside such runs."""
    times, chans = random_tags(17, n=900, span=150)
    for seed in range(5):
        whole, blocks = in_blocks(lambda: measure.StartStop(0, 1, bin_ps=2, range_ps=10),
                                  times, chans, seed)
        same(whole, blocks)
        whole, blocks = in_blocks(lambda: measure.Correlation(2, 1, bin_ps=1, range_ps=3),
                                  times, chans, seed)
        same(whole, blocks)
        assert np.array_equal(whole.counts, brute_pairs(times[chans == 2], times[chans == 1],
                                                        -3, 3, 1))
        whole, blocks = in_blocks(lambda: measure.Coincidences([0, 1, 2], 2), times, chans, seed)
        same(whole, blocks)


def test_delay_calibration_centroid_between_bins():
    # 1 ps resolution, delay 12_345 ps with +-120 ps jitter over 100 ps bins: the centroid of
    # the peak and its significant neighbours is within half a bin of the mean delay.
    rng = np.random.default_rng(18)
    source = np.sort(rng.integers(0, 10**10, 4000))
    arrival = source + 12_345 + rng.integers(-120, 121, 4000)
    times = np.r_[source, arrival]
    chans = np.r_[np.zeros(4000, np.int64), np.ones(4000, np.int64)]
    order = np.lexsort((chans, times))
    cal = measure.DelayCalibration(0, [1], bin_ps=100, range_ps=50_000)
    found = cal.feed(times[order], chans[order]).result()[1]
    true_mean = np.mean(arrival - source)
    assert found.found and abs(found.delay_ps - true_mean) < 50
    assert found.delay_ps % 100 != 50           # not just a bin centre


def test_calibrate_fails_when_the_pair_delay_is_out_of_range(tmp_path):
    config = tmp_path / "delays.json"
    status, stdout, stderr = run_cli(
        "calibrate", "--board", "sim-inprocess", "--duration", "0.00002", "--channels", "2",
        "--pair-delay", "70", "--pair-rate", "5e6", "--range", "30", "--out", str(config))
    assert status == 1 and "WRONG" in stdout and not config.exists()


def test_calibrate_on_the_virtual_board(tmp_path):
    """``heraldry calibrate --board sim``: through the link, on the Verilated twin."""
    config = tmp_path / "delays.json"
    status, stdout, stderr = run_cli(
        "calibrate", "--board", "sim", "--duration", "0.002", "--channels", "4",
        "--pair-delay", "120", "--pair-rate", "2e5", "--efficiency", "0.8", "--out", str(config))
    assert status == 0, stderr
    written = json.loads(config.read_text())
    assert written["delays_ns"] == {"0": 120.0, "1": 0.0}
    assert written["measured_ns"] == {"1": 120.0}
