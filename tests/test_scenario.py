"""Fault scenarios (``heraldry.sim.scenario``): the file format's checks, the seeded source and its
schedule (against rates and delays computed here from the scenario's figures), the virtual board
reading its pins from the source's FIFO as it goes (every tag is one of the source's rises), and
the process faults (hang, cut link, kill) on a running board; ``heraldry serve --scenario``'s
refusals. The game days that run whole scenarios under ``heraldry serve`` are in
tests/test_gameday.py."""

import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from heraldry.sim import scenario as sc
from heraldry.sim.scenario import PairSource, ScenarioError, load, parse

CLOCK_HZ = 100_000_000


def _edges(scenario, seconds):
    src = PairSource(scenario, CLOCK_HZ)
    rows, t = [], 0.0
    for _ in range(int(round(seconds / sc.CHUNK_S))):
        rows.append(src.edges(t, t + sc.CHUNK_S))
        t += sc.CHUNK_S
    return np.concatenate(rows), src


def _rises(rows, channel):
    """Rise cycles of ``channel`` (markers re-assert a level, so only 0 -> 1 changes count)."""
    mine = rows[rows[:, 1] == channel]
    level = np.concatenate([[0], mine[:-1, 2]])
    return mine[(mine[:, 2] == 1) & (level == 0), 0]


# -- the file format -------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("[source\n", "not TOML"),
    ("[sauce]\n", "unknown table 'sauce'"),
    ("[source]\npair_rate = 5\n", "unknown key 'pair_rate'"),
    ("[source]\nefficiency = [0.5]\n", "efficiency is \\[arm A, arm B\\]"),
    ("[source]\nefficiency = [0.5, 1.5]\n", "efficiency must be 0..1"),
    ("[source]\narms = [1, 1]\n", "two different channels"),
    ("[source]\ndark_rate_hz = [1, 2]\n", "needs 4 values"),
    ("[source]\npulse_ns = 20\ndead_time_ns = 25\n", "dead_time_ns must be at least"),
    ("[[fault]]\nkind = \"melt\"\nat = 1\n", "fault 1: kind must be one of"),
    ("[[fault]]\nkind = \"efficiency\"\nat = 1\nchannel = 1\n", "fault 1 \\(efficiency\\): "
     "needs factor"),
    ("[[fault]]\nkind = \"efficiency\"\nchannel = 1\nfactor = 0.2\n", "needs at"),
    ("[[fault]]\nkind = \"efficiency\"\nat = 1\nchannel = 4\nfactor = 0.2\n",
     "channel must be 0..3"),
    ("[[fault]]\nkind = \"efficiency\"\nat = 1\nchannel = 1\nfactor = 2\n", "factor must be 0..1"),
    ("[[fault]]\nkind = \"dead\"\nat = 1\nchannel = 1\nuntil = 0.5\n", "must be after at"),
    ("[[fault]]\nkind = \"efficiency\"\nat = 1\nchannel = 2\nfactor = 0.5\n",
     "fault 1 \\(efficiency\\): channel 2 is no arm"),
    ("[[fault]]\nkind = \"dead\"\nat = 1\nchannel = \"1\"\n", "channel must be an integer"),
    ("[[fault]]\nkind = \"delay\"\nat = 1\nchannel = 1\n", "give step_ns"),
    ("[[fault]]\nkind = \"delay\"\nat = 1\nchannel = 1\nramp_ns_per_s = 5\n", "needs until"),
    ("[[fault]]\nkind = \"delay\"\nat = 1\nchannel = 1\nstep_ns = 5\nuntil = 2\n",
     "until is for a ramp"),
    ("[[fault]]\nkind = \"delay\"\nat = 0\nchannel = 1\nramp_ns_per_s = 1e5\nuntil = 1\n",
     "could reach 100000 ns"),
    ("[[fault]]\nkind = \"hang\"\nat = 1\n", "needs seconds"),
    ("[[fault]]\nkind = \"kill\"\nat = 1\nseconds = 2\n", "unknown key 'seconds'"),
    ("[[fault]]\nkind = \"kill\"\nat = 1\n[[fault]]\nkind = \"hang\"\nat = 2\nseconds = 1\n",
     "after the kill at 1 s can never happen"),
])
def test_bad_scenarios_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "game-day.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message) as error:
        load(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_missing_file_and_defaults(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read scenario .*nothing.toml"):
        load(tmp_path / "nothing.toml")
    s = parse({})
    assert s.faults == () and s.source == sc.Source()
    # Faults come sorted by time; per-channel lists and scalars both work.
    s = parse({"source": {"dark_rate_hz": [1, 2, 3, 4]}, "fault": [
        {"kind": "kill", "at": 3}, {"kind": "dead", "at": 1, "channel": 2}]})
    assert [f.kind for f in s.faults] == ["dead", "kill"]
    assert s.source.dark_rate_hz == (1, 2, 3, 4)


def test_the_documented_example_checks_out():
    """docs/serve.md's example scenario (every fault kind) is a valid scenario."""
    import re
    import tomllib
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "docs" / "serve.md").read_text()
    (example,) = re.findall(r"```toml\n(.*?)```", text, re.S)
    s = parse(tomllib.loads(example))
    assert sorted({f.kind for f in s.faults}) == sorted(sc.FAULT_KINDS)
    assert s.source == sc.Source()      # the documented defaults are the defaults


def test_game_day_files_check_out():
    from pathlib import Path
    folder = Path(__file__).resolve().parent.parent / "docs" / "gamedays"
    files = sorted(folder.glob("*.toml"))
    assert len(files) == 4
    for path in files:
        assert load(path).faults


# -- the source ------------------------------------------------------------------------------

def test_source_rates_and_schedule_match_the_figures():
    """Singles per channel before and after each fault against the figures: pairs times
    efficiency plus darks, less the paralysable dead time's share (exp(-rate * dead))."""
    s = parse({"source": {"pair_rate_hz": 2e5, "efficiency": [0.4, 0.5], "dark_rate_hz": 1e3,
                          "dead_time_ns": 50, "seed": 5},
               "fault": [{"kind": "efficiency", "at": 0.1, "channel": 1, "factor": 0.2},
                         {"kind": "dark_rate", "at": 0.1, "channel": 2, "factor": 100},
                         {"kind": "dead", "at": 0.1, "until": 0.15, "channel": 3}]})
    rows, src = _edges(s, 0.2)
    assert np.all(np.diff(rows[:, 0]) >= 0)
    cut = int(0.1 * CLOCK_HZ)

    def expect(rate, seconds):
        return rate * seconds * math.exp(-rate * 50e-9)

    for ch, before_hz, after_hz in ((0, 2e5 * 0.4 + 1e3, 2e5 * 0.4 + 1e3),
                                    (1, 2e5 * 0.5 + 1e3, 2e5 * 0.1 + 1e3),
                                    (2, 1e3, 1e5)):
        rises = _rises(rows, ch)
        got = (np.sum(rises < cut), np.sum((rises >= cut) & (rises < 0.199 * CLOCK_HZ)))
        for n, hz, seconds in ((got[0], before_hz, 0.1), (got[1], after_hz, 0.099)):
            mean = expect(hz, seconds)
            assert abs(n - mean) < 5 * math.sqrt(mean) + 2, (ch, n, mean)
    dead = _rises(rows, 3)
    assert not np.any((dead >= cut) & (dead < 0.15 * CLOCK_HZ))
    assert np.sum(dead >= 0.15 * CLOCK_HZ) > 0 and np.sum(dead < cut) > 50
    # Pulses: high pulse_ns (2 cycles), never overlapping, low at least one cycle in between.
    for ch in range(4):
        mine = rows[rows[:, 1] == ch]
        changes = mine[np.concatenate([[True], mine[1:, 2] != mine[:-1, 2]])]
        assert changes[0, 2] == 1 and np.all(changes[1:, 2] != changes[:-1, 2])
        high = changes[1::2, 0] - changes[0::2, 0][:len(changes[1::2])]
        assert np.all(high == 2)
        low = changes[2::2, 0] - changes[1::2, 0][:len(changes[2::2])]
        assert np.all(low >= 3)
    assert src.detections == [len(_rises(rows, ch)) for ch in range(4)]


def test_source_delay_step_and_ramp_move_the_peak():
    """Arm B's delay: a 30 ns step at 0.05 s, then a ramp of 2000 ns/s from 0.1 to 0.11 s (20 ns
    more). The most common rise difference B - A near each time is the delay in 10 ns cycles."""
    s = parse({"source": {"pair_rate_hz": 2e5, "efficiency": [0.5, 0.5], "dark_rate_hz": 100,
                          "jitter_ns": 0.5, "seed": 2},
               "fault": [{"kind": "delay", "at": 0.05, "channel": 1, "step_ns": 30},
                         {"kind": "delay", "at": 0.1, "channel": 1, "ramp_ns_per_s": 2000,
                          "until": 0.11}]})
    rows, _ = _edges(s, 0.14)
    a, b = _rises(rows, 0), _rises(rows, 1)

    def peak(t0, t1):
        sel = a[(a >= t0 * CLOCK_HZ) & (a < t1 * CLOCK_HZ)]
        i = np.searchsorted(b, sel)
        d = np.concatenate([b[np.minimum(i, len(b) - 1)] - sel, b[np.maximum(i - 1, 0)] - sel])
        d = d[np.abs(d) <= 20]
        return np.bincount(d + 20).argmax() - 20
    assert peak(0.0, 0.049) == 0
    assert peak(0.051, 0.099) == 3
    assert peak(0.112, 0.139) == 5
    # The same seed gives the same edges.
    again, _ = _edges(s, 0.14)
    assert np.array_equal(rows, again)


# -- on the virtual board --------------------------------------------------------------------

@pytest.fixture(scope="module")
def binary():
    from heraldry.sim.twin import build_twin
    return build_twin(4, 2, CLOCK_HZ, 12_000_000)


def test_board_reads_the_source_fifo_as_it_goes(binary):
    """Through the FIFO (endless: a harness that read its pins file whole before starting would
    never start), every tag of a run is one of the source's rises, on the same channel, at one
    common offset, and no rise inside the run is missed."""
    from heraldry.host.tagger import Settings
    from heraldry.protocol import Kind
    s = parse({"source": {"pair_rate_hz": 1e5, "dark_rate_hz": 2e3, "seed": 9}})
    tagger = sc.open_board(s, binary=binary)
    try:
        with tagger.run(Settings(), duration=0.02, keep=True) as run:
            run.wait()
        events = run.result.events
    finally:
        tagger.close()
    tags = events[events["kind"] == Kind.TAG.value]
    bins = tags["time_ps"] // 10_000
    rows, _ = _edges(s, run.start_cycles / CLOCK_HZ + 0.05)
    offsets = set()
    for ch in range(4):
        mine = np.sort(bins[tags["channel"] == ch])
        rises = _rises(rows, ch)
        assert len(mine) > 20, ch
        # the offset that puts the first tag on a rise and every other tag on one too
        candidates = rises - mine[0]
        for tag in mine[1:6]:
            candidates = candidates[np.isin(tag + candidates, rises)]
        fits = [int(o) for o in candidates if np.all(np.isin(mine + o, rises))]
        assert len(fits) == 1, ch
        offset = fits[0]
        offsets.add(offset)
        i = np.searchsorted(rises, mine[0] + offset)
        assert np.array_equal(rises[i:i + len(mine)], mine + offset), ch
    assert len(offsets) == 1


def test_process_faults_hang_cut_and_kill(binary):
    """On a running board: a hang stops its device time for the hang's wall seconds; a cut link
    passes no byte while it lasts (the host's poll goes unanswered until a resend after the
    cut, the run goes on); a kill ends the board, and the run hears of it as a lost device.
    Each is taken once the board has reached its device time (within the FIFO's read buffer:
    a few dozen edges, well under 0.1 ms here)."""
    from heraldry.host.driver import DeviceError
    from heraldry.host.tagger import Settings
    s = parse({"source": {"pair_rate_hz": 1e5, "seed": 4}, "fault": [
        {"kind": "hang", "at": 0.01, "seconds": 1.5},
        {"kind": "link_drop", "at": 0.02, "seconds": 1.5},
        {"kind": "kill", "at": 0.08}]})   # (the board runs free while cut off: 20 ms or so)
    tagger = sc.open_board(s, binary=binary)
    board = tagger._twin
    seen = []                       # (wall time, board's device seconds) of each answer
    try:
        run = tagger.run(Settings(), status_interval=0.002, poll=0.01)
        run.start()
        with pytest.raises(DeviceError):
            while True:
                run.poll()
                now = run.start_cycles / CLOCK_HZ + run.device_seconds
                if not seen or now != seen[-1][1]:      # a poll the board answered
                    seen.append((time.monotonic(), now))
                time.sleep(0.002)
    finally:
        tagger.close()
    assert [kind for _, kind, _ in board.log] == ["hang", "link_drop", "kill"]
    for (at, kind, wall), want in zip(board.log, (0.01, 0.02, 0.08)):
        assert want - 1e-4 <= at <= want + 1e-9, kind
    # The hang: no device time passed for 1.5 s of wall time after it was taken.
    hang_wall = board.log[0][2]
    frozen = [t for w, t in seen if hang_wall + 0.05 < w < hang_wall + 1.4]
    assert not frozen, "a poll was answered while the board was stopped"
    # (a reply the board sent just before it was stopped may still be read just after: the same
    # 50 ms of grace as above)
    after = [(w, t) for w, t in seen if w > hang_wall + 0.05]
    # (the board hung near 0.01 s: the first answer after it is from no earlier than 0.008 s;
    # a run's device time is its latest reply's, and the FIFO's read buffer holds ~0.2 ms)
    assert after[0][0] - hang_wall >= 1.45 and after[0][1] >= 0.008
    # The cut: the board's bytes were lost, and the run went on after it.
    assert board.relay.cut_bytes["to_host"] > 0 and not board.relay.cut
    cut_wall = board.log[1][2]
    answered = [w for w, t in seen if w > cut_wall + 0.05]
    assert answered and answered[0] - cut_wall >= 1.5
    assert max(t for _, t in seen) >= 0.07       # answered after the cut, up to the kill
    assert board.twin.returncode == -signal.SIGKILL


# -- heraldry serve --scenario -----------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--board", "/dev/null"], "--scenario plays on the virtual board"),
    (["--board", "sim", "--test-signal", "pairs"], "--scenario drives the pins"),
    (["--board", "sim", "--car-floor", "-1"], "--car-floor must be 0 or more"),
    (["--board", "sim"], "fault 1: kind must be one of"),
])
def test_serve_refuses_bad_scenarios_in_one_line(tmp_path, args, message):
    path = tmp_path / "bad.toml"
    path.write_text("[[fault]]\nkind = \"melt\"\nat = 1\n")
    result = subprocess.run([sys.executable, "-m", "heraldry.host.cli", "serve", *args,
                             "--scenario", str(path), "--metrics-port", "0", "--pub-port", "0",
                             "--control-port", "0"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
