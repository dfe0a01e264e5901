"""Two Verilated virtual boards with their own clocks, linked live (issue 15), on the pair source
of ``heraldry.sim.twonode``.

Data: :class:`heraldry.sim.twonode.TwoBoards`, board 1 at +20 ppm, board 2 at -15 ppm started
37 us later, 50 us fiber, 2.5e5 pairs/s emitted at 0.45 efficiency per arm, 2e4 darks/s per
board (1.3e5 tags/s and 5e4 pairs/s per board), 1 ns jitter, the boards' 10 ns bins; each board
runs 0.05 s of device time; :func:`heraldry.host.linklive.link_taggers` with a 10 ms
acquisition, 1 ms blocks and a 20 ns window in 1 ns bins.

Figures: ``two_node_twin_recovered_fraction``: cross-node coincidences of the live link over
those of the reference model on the same driven detections on one shared clock (10 ns bins, 20
ns window) in the synchronised span both boards recorded, accidentals subtracted from both (the
shared run with board 2 shifted by 1 ms counts them); ``two_node_twin_untracked_fraction``: the
same tags linked offline with the first offset kept and no frequency; ``two_node_twin_wall_s``:
wall time of the linked run (both boards simulated, the link live); with +20 ppm added to board
2 at true time 0.04 s (a 0.1 s run): ``two_node_twin_step_detect_s`` (step to lock lost) and
``two_node_twin_relock_s`` (step to lock regained). A +2 ppm step is followed by the loop on
1 ms blocks without a loss (tests/test_twonode.py); the model bench's step figures use 10 ms.
"""

import time

import numpy as np

WINDOW_S = 20e-9
CLOCK_HZ = 100_000_000


def _boards(duration_s, steps=()):
    from heraldry.model.twonode import Clock
    from heraldry.sim.twonode import TwoBoards
    return TwoBoards(duration_s, lead_s=0.02, clock_a=Clock(ppm=20),
                     clock_b=Clock(ppm=-15, start_s=37e-6, steps=steps), pair_rate_hz=2.5e5,
                     efficiency_a=0.45, efficiency_b=0.45, dark_rate_a_hz=2e4,
                     dark_rate_b_hz=2e4, fiber_delay_s=50e-6, jitter_s=1e-9, seed=15)


def _shared(boards, t0, t1, shift_s=0.0):
    from heraldry.model import coincidence_windows
    src = boards.source
    a_true, b_true = src.true_a[boards.keep_a], src.true_b[boards.keep_b]
    a = src.shared_a[boards.keep_a][(a_true >= t0) & (a_true < t1)]
    b_delayed = b_true - src.fiber_delay_s
    b = src.shared_b[boards.keep_b][(b_delayed >= t0) & (b_delayed < t1)]
    fiber = round((src.fiber_delay_s + shift_s) * CLOCK_HZ)
    w = coincidence_windows([np.sort(a), np.sort(b - fiber)], round(WINDOW_S * CLOCK_HZ))
    return int(np.count_nonzero(w.pattern == 3))


def run():
    from heraldry.host.linklive import link_taggers
    from heraldry.model.twonode import _invert
    from heraldry.sync import link
    boards = _boards(0.07)
    start = time.perf_counter()
    with boards:
        live, sides = link_taggers(*boards.taggers, duration=0.05, window_s=WINDOW_S,
                                   bin_s=1e-9, acquire_s=0.01, block_s=0.001, keep_tags=True)
    wall = time.perf_counter() - start
    if live.tracker.state != "locked":
        raise RuntimeError(f"the live link ended {live.tracker.state}")
    synced = [s for s in live.tracker.segments if s.fit is not None]
    first_b, last_b = live.tracker.fit.to_a(
        np.array([sides[1].times[0][0], sides[1].times[-1][-1]]))
    begin = max(synced[0].start_s, sides[0].times[0][0], first_b)
    end = min(synced[-1].end_s, sides[0].times[-1][-1], last_b)
    t0, t1 = _invert(boards.clock_a, np.array([begin, end]))
    shared, accidental = _shared(boards, t0, t1), _shared(boards, t0, t1, 1e-3)
    real = shared - accidental
    a, b = (np.concatenate(s.times) for s in sides)
    fixed = link(a, b, window_s=WINDOW_S, acquire_s=0.01, block_s=0.001, track=False)
    print(f"   shared clock {shared} coincidences ({accidental} accidental); live {live.cross}, "
          f"untracked {fixed.cross}; {live.tracker.fit.ppm:+.3f} ppm, jitter "
          f"{live.tracker.fit.jitter_s * 1e9:.1f} ns, {wall:.1f} s wall")
    stepped = _boards(0.12, ((0.04, 20.0),))
    with stepped:
        step, _ = link_taggers(*stepped.taggers, duration=0.1, window_s=WINDOW_S, bin_s=1e-9,
                               acquire_s=0.01, block_s=0.001)
    at = float(stepped.clock_a.local(0.04))
    tracker = step.tracker
    if not tracker.losses or tracker.state != "locked":
        raise RuntimeError(f"the +20 ppm step was not seen or not recovered: losses "
                           f"{tracker.losses}, state {tracker.state}")
    print(f"   +20 ppm at board-1 time {at:.4f} s: lost at {tracker.losses[0]:.4f} s, locked "
          f"again at {tracker.locks[-1]:.4f} s, {tracker.fit.ppm:+.3f} ppm after")
    return {
        "two_node_twin_recovered_fraction": (live.cross - accidental) / real,
        "two_node_twin_untracked_fraction": (fixed.cross - accidental) / real,
        "two_node_twin_wall_s": wall,
        "two_node_twin_step_detect_s": float(tracker.losses[0] - at),
        "two_node_twin_relock_s": float(tracker.locks[-1] - at),
    }
