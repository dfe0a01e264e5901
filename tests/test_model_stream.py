"""The stream filter's reference model (docs/semantics.md, "Stream filters") against hand-worked
cases and against a cycle-by-cycle reimplementation of its definition on random stimulus."""

import numpy as np
import pytest

from heraldry.model import (CoreSettings, STREAM_MODES, counts_from_tags, simulate,
                            stream_filter)


def tags_of(tags):
    return [(int(t), int(c)) for t, c in zip(tags["time"], tags["channel"])]


def test_coincident_channel_streams_only_multi_channel_windows():
    # W = 4: windows [0, 4) = {0, 1}, [10, 14) = {0}, [20, 24) = {0}, [30, 34) = {1}.
    tags, filtered, dropped = stream_filter([[0, 10, 11, 20], [1, 30]], 4,
                                            ("coincident", "all"))
    assert tags_of(tags) == [(0, 0), (1, 1), (30, 1)]
    assert filtered.tolist() == [3, 0] and dropped.tolist() == [0, 0]


def test_none_streams_nothing_and_still_makes_windows_coincident():
    tags, filtered, dropped = stream_filter([[0, 10], [2]], 4, ("coincident", "none"))
    assert tags_of(tags) == [(0, 0)]
    assert filtered.tolist() == [1, 1] and dropped.tolist() == [0, 0]


def test_full_hold_buffer_loses_only_tags_of_coincident_windows():
    # hold = 1, W = 10: channel 0 at 0, 2, 4 each need a slot (window single so far, not its
    # last cycle 9); 2 and 4 find it taken. Channel 1 at 6 makes the window coincident.
    tags, filtered, dropped = stream_filter([[0, 2, 4, 8], [6]], 10,
                                            ("coincident", "coincident"), hold=1)
    assert tags_of(tags) == [(0, 0), (6, 1), (8, 0)]
    assert filtered.tolist() == [0, 0] and dropped.tolist() == [2, 0]
    # Without channel 1 the window is single: everything filtered, nothing lost.
    tags, filtered, dropped = stream_filter([[0, 2, 4, 8], []], 10,
                                            ("coincident", "coincident"), hold=1)
    assert len(tags) == 0 and filtered.tolist() == [4, 0] and dropped.tolist() == [0, 0]


def test_last_cycle_of_a_window_needs_no_slot():
    # W = 3, window [0, 3): its last cycle is 2. hold = 1: channel 0 at 0 takes the slot, at 1
    # is lost, at 2 (the last cycle, where channel 1 joins) is decided at once.
    tags, filtered, dropped = stream_filter([[0, 1, 2], [2]], 3, ("coincident", "all"),
                                            hold=1)
    assert tags_of(tags) == [(0, 0), (2, 0), (2, 1)]
    assert dropped.tolist() == [1, 0]


def test_fine_time_slots_are_per_cycle():
    # F = 2, W = 4: window [1, 5) covers cycles 0 (bins 1..3) and 1 (bin 4): channel 0 at 1 and
    # 3 (cycle 0, not the last) need slots; hold = 1 loses the second. Channel 1 at 4 (cycle 1).
    tags, filtered, dropped = stream_filter([[1, 3], [4]], 4, ("coincident", "all"), hold=1,
                                            fine_bits=2)
    assert tags_of(tags) == [(1, 0), (4, 1)]
    assert dropped.tolist() == [1, 0]
    # Channel 1 in cycle 0 as well: the window is coincident from cycle 0, nothing held.
    tags, filtered, dropped = stream_filter([[1, 3], [2]], 4, ("coincident", "all"), hold=1,
                                            fine_bits=2)
    assert tags_of(tags) == [(1, 0), (2, 1), (3, 0)] and dropped.tolist() == [0, 0]


def reference(tpc, window, modes, hold, fine_bits):
    """The definition stepped cycle by cycle, as the hardware sees it: windows opened and
    closed event by event, a hold buffer with `hold` slots and an overflow count."""
    events = sorted((t, c) for c, times in enumerate(tpc) for t in times)
    n = len(tpc)
    streamed, filtered, dropped = [], [0] * n, [0] * n
    windows = []                     # [t0, [events]]
    for t, c in events:
        if not windows or t >= windows[-1][0] + window:
            windows.append([t, []])
        windows[-1][1].append((t, c))
    previous_last = -1
    for t0, members in windows:
        last = (t0 + window - 1) >> fine_bits
        pattern = 0
        held, over = [], 0
        by_cycle = {}
        for t, c in members:
            by_cycle.setdefault(t >> fine_bits, []).append((t, c))
        out = []
        for cycle in sorted(by_cycle):
            for t, c in by_cycle[cycle]:
                pattern |= 1 << c
            multi = bin(pattern).count("1") >= 2
            for t, c in by_cycle[cycle]:
                mode = modes[c]
                if mode == "all" or mode == "coincident" and multi:
                    out.append((t, c))
                elif mode == "none":
                    filtered[c] += 1
                elif cycle == last:
                    filtered[c] += 1
                elif cycle == previous_last:
                    out.append((t, c))      # opens a window in the last cycle of the one before
                elif len(held) < hold:
                    held.append((t, c))
                else:
                    over += 1
            if multi and (held or over):
                out.extend(held)
                for _, c in held[:1]:
                    dropped[c] += over
                held, over = [], 0
        for _, c in held[:1]:
            filtered[c] += len(held) + over
        streamed.extend(out)
        previous_last = last
    return sorted(streamed), filtered, dropped


@pytest.mark.parametrize("seed", range(12))
def test_random_against_cycle_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5))
    fine_bits = int(rng.integers(0, 3))
    window = int(rng.integers(2**fine_bits, 24))
    hold = int(rng.integers(1, 4))
    modes = tuple(rng.choice(STREAM_MODES, n))
    tpc = []
    for _ in range(n):
        # One event per channel per cycle at most, as the PHY reports.
        cycles = np.flatnonzero(rng.random(400) < rng.uniform(0.05, 0.5))
        tpc.append((cycles << fine_bits) + rng.integers(0, 2**fine_bits, len(cycles)))
    tags, filtered, dropped = stream_filter(tpc, window, modes, hold, fine_bits)
    ref_tags, ref_filtered, ref_dropped = reference([t.tolist() for t in tpc], window, modes,
                                                    hold, fine_bits)
    assert tags_of(tags) == ref_tags
    assert filtered.tolist() == ref_filtered and dropped.tolist() == ref_dropped
    counts = np.array([len(t) for t in tpc])
    per_channel = np.bincount(tags["channel"].astype(int), minlength=n)
    assert (per_channel + filtered + dropped).tolist() == counts.tolist()


def test_simulate_counts_stay_exact_and_tags_are_filtered():
    settings = CoreSettings(channels=2, window=4, stream=("coincident", "none"))
    plain = CoreSettings(channels=2, window=4)
    rise = [[0, 10, 20], [2, 40]]
    result = simulate(rise, [[], []], settings)
    unfiltered = simulate(rise, [[], []], plain)
    assert result.singles.tolist() == unfiltered.singles.tolist() == [3, 2]
    assert result.patterns.tolist() == unfiltered.patterns.tolist()
    assert tags_of(result.tags) == [(0, 0)]
    assert result.filtered.tolist() == [2, 2] and result.filter_dropped.tolist() == [0, 0]
    assert unfiltered.filtered.tolist() == [0, 0]


def test_settings_refuse_bad_modes_and_counts_from_tags_refuses_filtered_runs():
    with pytest.raises(ValueError, match="stream mode of channel 1"):
        CoreSettings(channels=2, stream=("all", "some"))
    with pytest.raises(ValueError, match="one per channel"):
        CoreSettings(channels=2, stream=("all",))
    with pytest.raises(ValueError, match="stream_hold"):
        CoreSettings(channels=2, stream_hold=0)
    assert CoreSettings(channels=3).stream == ("all",) * 3
    with pytest.raises(ValueError, match="streaming all"):
        counts_from_tags(np.zeros(0, [("time", "i8"), ("channel", "u1")]),
                         CoreSettings(channels=2, stream=("none", "all")))
