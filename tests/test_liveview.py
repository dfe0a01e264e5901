"""Live view of ``heraldry acquire``: content and cadence on a fake stream with a fake clock.

Expected values come from the reference model (coincidence windows) and plain Python counting
over the fake stream, never from the live view's own aggregation.
"""

import io
import json
import re
from collections import Counter

import numpy as np
import pytest

from heraldry import model
from heraldry.host.config import Acquisition
from heraldry.host.events import EVENT_DTYPE
from heraldry.host.liveview import LiveView
from heraldry.protocol import Kind, LossCause

BIN_PS = 10_000
DURATION_S = 0.01           # 1e6 cycles of 10 ns


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeStream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def _acq(window_bins=3, masks=(0b011,)):
    return Acquisition(channels=4, rules=2, bin_ps=BIN_PS, window_bins=window_bins,
                       herald_masks=list(masks))


def _stream(seed, blocks, per_block):
    """Blocks of EVENT_DTYPE records in time order: tags (pairs on 0/1 plus singles), a herald
    record per 0-1 pair in the same bin, and a loss record per block."""
    rng = np.random.default_rng(seed)
    out, t = [], 0
    for b in range(blocks):
        times = t + np.sort(rng.integers(0, 990, per_block))
        chans = rng.integers(0, 4, per_block)
        pairs = rng.random(per_block) < 0.3
        tags = np.zeros(per_block + pairs.sum(), EVENT_DTYPE)
        tags["time_ps"] = np.concatenate((times, times[pairs] + rng.integers(0, 3, pairs.sum())))
        tags["channel"] = np.concatenate((chans, np.ones(pairs.sum(), int)))
        tags["kind"] = Kind.TAG.value
        tags["count"] = 1
        heralds = np.zeros(int(b % 3), EVENT_DTYPE)
        heralds["kind"] = Kind.HERALD.value
        heralds["channel"] = 0
        heralds["time_ps"] = t + 500
        loss = np.zeros(1, EVENT_DTYPE)
        loss["kind"] = Kind.LOSS.value
        loss["pattern"] = LossCause.MERGER_FULL.value
        loss["channel"] = b % 4
        loss["count"] = b + 1
        loss["time_ps"] = t + 500
        block = np.concatenate((tags, heralds, loss))
        block = block[np.argsort(block["time_ps"], kind="stable")]
        block["time_ps"] *= BIN_PS
        out.append(block)
        t += 1000
    return out


def _pattern_counts_model(blocks, window_bins):
    tags = np.concatenate(blocks)
    tags = tags[tags["kind"] == Kind.TAG.value]
    per_channel = [np.sort(tags["time_ps"][tags["channel"] == c] // BIN_PS) for c in range(4)]
    windows = model.coincidence_windows(per_channel, window_bins)
    return model.pattern_counts(windows, 4)


def test_tallies_match_model_and_counting():
    acq = _acq()
    blocks = _stream(seed=7, blocks=12, per_block=300)
    live = LiveView(DURATION_S, stream=FakeStream(False), clock=FakeClock())
    sink = live.start(acq)
    for block in blocks:
        sink(block)
    every = np.concatenate(blocks)
    counts = Counter(int(r["channel"]) for r in every if r["kind"] == Kind.TAG.value)
    assert live.tags.tolist() == [counts[c] for c in range(4)]
    assert live.heralds[0] == sum(b % 3 for b in range(12))
    assert live.dropped == sum(b + 1 for b in range(12))
    expected = _pattern_counts_model(blocks, acq.window_bins)
    assert live.coincidences.result().patterns[:16].tolist() == expected.tolist()


def _rates_hz(row):
    scale = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}
    return [float(v) * scale[p] for v, p in re.findall(r"([\d.]+) ([kMG]?)Hz", row)]


def test_tty_frame_content_and_rates():
    acq = _acq(window_bins=2)
    clock = FakeClock()
    stream = FakeStream(True)
    live = LiveView(DURATION_S, stream=stream, clock=clock, top=3)
    sink = live.start(acq)
    blocks = _stream(seed=3, blocks=4, per_block=200)
    # Two blocks, then a frame at 40 % of the run; two more, a frame at 100 %.
    for block in blocks[:2]:
        sink(block)
    clock.t = 0.5
    live.progress(400, 1000)
    for block in blocks[2:]:
        sink(block)
    clock.t = 1.0
    live.progress(1000, 1000, {"tags": 5000, "link_bytes": 20000, "decode_errors": 0})
    assert live.frames == 2
    # The second frame moves the cursor up over the first (9 lines: no link figures yet) and
    # clears every line it writes.
    text = stream.getvalue()
    assert re.findall(r"\x1b\[(\d+)A", text) == ["9"]
    up = text.index("\x1b[9A")
    assert text[:up].count("\n") == 9 and text.count("\x1b[2K") == 9 + 10
    lines = live.render(1.0)
    assert lines[0].startswith("heraldry: 10.000 of 10 ms device time (100.0%), 0.000 ms to go")
    tags = [b[b["kind"] == Kind.TAG.value] for b in blocks]
    recent = [sum(int((t["channel"] == c).sum()) for t in tags[2:]) for c in range(4)]
    total = [sum(int((t["channel"] == c).sum()) for t in tags) for c in range(4)]
    # Stream time: the latest record after two blocks, and after all four.
    mid_s = max(int(b["time_ps"].max()) for b in blocks[:2]) * 1e-12
    end_s = max(int(b["time_ps"].max()) for b in blocks) * 1e-12
    for c in range(4):
        row = lines[2 + c]
        now_hz, avg_hz = _rates_hz(row)
        assert row.split()[0] == str(c) and row.split()[-1] == str(total[c])
        # rate now: the last interval's tags over the stream time it added; average: all tags
        # over the stream time so far (4 significant figures shown)
        assert now_hz == pytest.approx(recent[c] / (end_s - mid_s), rel=1e-3)
        assert avg_hz == pytest.approx(total[c] / end_s, rel=1e-3)
    expected = _pattern_counts_model(blocks, 2)
    multi = sorted(((int(p), int(expected[p])) for p in range(16)
                    if bin(p).count("1") > 1 and expected[p]), key=lambda pv: (-pv[1], pv[0]))
    assert lines[6] == ("  coincidences (window 2 bins): "
                        + ", ".join(f"{p:04b}: {v}" for p, v in multi[:3]))
    assert lines[7] == f"  heralds: rule 0 (mask 0011) {0 + 1 + 2 + 0}"
    assert lines[8] == f"  dropped (loss records): {1 + 2 + 3 + 4}"
    assert lines[9] == "  link: 5 ktags/s, 20 kB/s, 0 decode errors"
    # A rendering without new records keeps the last rate; after finish() the average is over
    # the whole device time (10 ms).
    clock.t = 1.5
    live.progress(1000, 1000)
    assert live.frames == 3 and live.render(1.5)[2:6] == lines[2:6]
    live.finish()
    for c, row in enumerate(live.render(2.0)[2:6]):
        assert _rates_hz(row)[1] == pytest.approx(total[c] / DURATION_S, rel=1e-3)


@pytest.mark.parametrize("tty,interval,expected_frames", [
    (True, None, 8),        # 0.25 s on a terminal: every other 0.125 s step over 2 s
    (False, None, 2),       # 1 s piped
    (False, 0.5, 4),
])
def test_cadence(tty, interval, expected_frames):
    clock = FakeClock()
    stream = FakeStream(tty)
    live = LiveView(DURATION_S, stream=stream, clock=clock, interval=interval)
    live.start(_acq())
    for k in range(1, 17):
        clock.t = 0.125 * k
        live.progress(k, 16)
    assert live.frames == expected_frames
    text = stream.getvalue()
    if tty:
        assert text.count("\x1b[2K") == expected_frames * len(live.render())
    else:
        assert "\x1b" not in text
        lines = text.splitlines()
        assert len(lines) == expected_frames
        assert all(line.startswith("heraldry: ") and "tags 0, dropped 0" in line
                   for line in lines)
        assert lines[-1].startswith("heraldry: 10.000 of 10 ms device time (100.0%)")


def test_piped_short_run_is_silent_and_tty_always_shows_the_end():
    for tty, lines in ((False, 0), (True, 1)):
        clock = FakeClock()
        stream = FakeStream(tty)
        live = LiveView(DURATION_S, stream=stream, clock=clock)
        live.start(_acq())
        for k in range(1, 8):          # 0.875 s: under the piped interval
            clock.t = 0.125 * k
            live.progress(k, 7)
        if tty:
            assert live.frames == 3     # at 0.25, 0.5, 0.75 s
        live.finish()
        assert (live.frames > 0) == bool(lines)
        if not tty:
            assert stream.getvalue() == ""


def test_piped_long_run_ends_with_a_final_line():
    clock = FakeClock()
    stream = FakeStream(False)
    live = LiveView(DURATION_S, stream=stream, clock=clock)
    live.start(_acq())
    clock.t = 1.5
    live.progress(5, 10)
    clock.t = 1.7
    live.progress(10, 10)
    live.finish()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "5.000 of 10 ms" in lines[0] and "10.000 of 10 ms" in lines[1]


def test_cli_piped_run_shows_progress_lines(tmp_path, capsys, monkeypatch):
    """``heraldry acquire`` piped: plain lines, the last one at 100 % with every streamed tag and
    loss record counted (the live view is wired as sink and progress). The interval is cut to
    0.05 s so that the test does not depend on the run lasting over a second on this machine."""
    from heraldry.host import cli, liveview

    class Quick(LiveView):
        def __init__(self, duration_s, **kw):
            super().__init__(duration_s, interval=0.05, **kw)
    monkeypatch.setattr(liveview, "LiveView", Quick)
    summary_path = tmp_path / "s.json"
    status = cli.main(["acquire", "--board", "sim", "--duration", "0.01",
                       "--summary-json", str(summary_path)])
    err = capsys.readouterr().err
    assert status == cli.EXIT_OK
    summary = json.loads(summary_path.read_text())
    lines = [line for line in err.splitlines() if "ms device time (" in line]
    assert lines and "\x1b" not in err
    assert len(lines) >= 2
    assert lines[-1].startswith("heraldry: 10.000 of 10 ms device time (100.0%)")
    assert lines[-1].endswith(f"tags {summary['tags']}, dropped {summary['dropped']}")


def test_out_of_order_tags_do_not_end_the_run():
    live = LiveView(DURATION_S, stream=FakeStream(True), clock=FakeClock())
    sink = live.start(_acq())
    blocks = _stream(seed=11, blocks=2, per_block=50)
    sink(blocks[1])
    sink(blocks[0])         # earlier than the block before: Coincidences refuses it
    assert live.coincidences is None
    assert live.tags.sum() == sum(int((b["kind"] == Kind.TAG.value).sum()) for b in blocks)
    lines = live.render()
    assert lines[6].endswith("n/a (tags out of time order)")
    assert "~? s left" in lines[0]
