"""Replaying PTU files (:mod:`heraldry.host.replay`, ``heraldry acquire --board replay:FILE``):
our files (kinds restored from the channel map, rotation parts joined) and PicoQuant's."""

import functools
import json
from pathlib import Path

import numpy as np
import ptufile
import pytest

from heraldry import model
from heraldry.host import cli
from heraldry.host.config import Acquisition
from heraldry.host.events import EVENT_DTYPE
from heraldry.host.ptu import ChannelMap, PTUWriter
from heraldry.host.replay import BLOCK_SECONDS, ReplaySource, acquire_replay
from heraldry.protocol import Kind

HYDRAHARP = Path(__file__).parent / "data" / "hydraharp_v30_t2.ptu"
BIN = 10_000


def _acquisition():
    return Acquisition(channels=3, rules=2, herald_masks=[0b011, 0b110], window_bins=5,
                       coincidence_record_mask=(1 << 0b011) | (1 << 0b111))


def _model_run(seed=2, pairs=3000):
    """A run's records as the core would stream them, from the reference model."""
    acq = _acquisition()
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.geometric(1e-3, pairs)) * 10
    rise = [np.unique(np.concatenate([t + rng.integers(0, 3, pairs)[:] * (c > 0),
                                      rng.integers(0, t[-1], 200)]))
            for c in range(3)]
    rise = [r[rng.random(len(r)) < 0.8] for r in rise]
    result = model.simulate(rise, [np.zeros(0, np.int64)] * 3, acq.model_settings())
    parts = []
    for times, kind, channel, pattern in (
            (result.tags["time"], Kind.TAG, result.tags["channel"], 0),
            (result.heralds["time"], Kind.HERALD, result.heralds["rule"], 0),
            (result.coincidence_records["time"], Kind.COINCIDENCE, 0,
             result.coincidence_records["pattern"])):
        ev = np.zeros(len(times), EVENT_DTYPE)
        ev["time_ps"], ev["kind"], ev["channel"], ev["pattern"] = times * BIN, kind.value, \
            channel, pattern
        ev["count"] = 1
        parts.append(ev)
    events = np.concatenate(parts)
    events = events[np.argsort(events["time_ps"], kind="stable")]
    assert len(result.heralds) > 50 and len(result.coincidence_records) > 50
    return acq, result, events


def _write(path, acq, events, **kwargs):
    with PTUWriter.for_acquisition(path, acq, **kwargs) as w:
        for block in np.array_split(events, 9):
            w.write_block(block)
    return w


def test_replay_restores_kinds_and_joins_rotation_parts(tmp_path):
    acq, result, events = _model_run()
    w = _write(tmp_path / "run.ptu", acq, events, max_bytes=20_000)
    assert len(w.paths) >= 3
    source = ReplaySource(tmp_path / "run.ptu", block_events=1000)
    assert source.paths == w.paths
    assert source.acquisition == acq
    blocks = list(source.blocks())
    assert all(len(b.events) <= 1000 for b in blocks)
    got = np.concatenate([b.events for b in blocks])
    # Herald patterns are not in the file; everything else comes back as written.
    expected = events.copy()
    expected["pattern"][expected["kind"] == Kind.HERALD.value] = 0
    np.testing.assert_array_equal(got, expected)
    replayed, checks = acquire_replay(source.paths[0])
    assert checks == {"file_declares_no_loss": True, "herald_records_equal_model": True,
                      "coincidence_records_equal_model": True}
    assert replayed.counters["singles"] == result.singles.tolist()
    assert replayed.counters["patterns"] == result.patterns[1:].tolist()
    assert replayed.counters["heralds"] == result.herald_counts.tolist()


def test_replay_check_catches_a_missing_herald(tmp_path):
    acq, _, events = _model_run(seed=4)
    herald = np.flatnonzero(events["kind"] == Kind.HERALD.value)[7]
    _write(tmp_path / "bad.ptu", acq, np.delete(events, herald))
    _, checks = acquire_replay(tmp_path / "bad.ptu")
    assert checks["herald_records_equal_model"] is False
    assert checks["coincidence_records_equal_model"] is True


def test_hydraharp_file_replays_with_readme_figures():
    source = ReplaySource(HYDRAHARP)
    assert source.acquisition.channels == 2 and source.acquisition.bin_ps == 1
    assert source.skipped_special == 0 and source.duration_s == 5.0
    blocks = [b.events for b in source.blocks()]
    for block in blocks:
        assert block["time_ps"][-1] - block["time_ps"][0] < BLOCK_SECONDS * 1e12
    events = np.concatenate(blocks)
    assert len(events) == 305_565
    assert np.all(events["kind"] == Kind.TAG.value) and np.all(events["channel"] == 0)
    assert events["time_ps"][0] == 24_433_765 and events["time_ps"][-1] == 4_999_964_931_763
    assert np.all(np.diff(events["time_ps"]) >= 0)


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_realtime_pace(tmp_path):
    path = tmp_path / "paced.ptu"
    times = np.array([0, 10, 120, 130, 400, 401], np.int64) * 1_000_000_000    # ms, in ps
    ev = np.zeros(len(times), EVENT_DTYPE)
    ev["time_ps"], ev["channel"] = times, [0, 1, 0, 1, 0, 1]
    with PTUWriter(path, bin_ps=BIN, channel_map=ChannelMap(2)) as w:
        w.write_block(ev)
    fake = FakeClock()
    source = ReplaySource(path, realtime=True, clock=fake.clock, sleep=fake.sleep)
    delivered = []
    while (block := source.read_block()) is not None:
        if len(block.events):
            delivered.append((fake.now - 100.0, block.events["time_ps"] / 1e12))
    for at, block_times in delivered:
        assert at == pytest.approx(block_times[-1], abs=1e-9)     # due, and not later
    assert fake.now - 100.0 == pytest.approx(0.401, abs=1e-9)
    assert np.concatenate([t for _, t in delivered]).tolist() == (times / 1e12).tolist()
    # A timeout shorter than the wait returns an empty block, then the same block later.
    fake = FakeClock()
    source = ReplaySource(path, realtime=True, clock=fake.clock, sleep=fake.sleep)
    first = source.read_block(timeout=0.05)
    assert first.events["time_ps"].tolist() == times[:2].tolist()
    assert len(source.read_block(timeout=0.05).events) == 0
    assert source.read_block(timeout=0.1).events["time_ps"].tolist() == times[2:4].tolist()
    # As fast as possible: never sleeps.
    fake = FakeClock()
    assert sum(len(b.events) for b in ReplaySource(
        path, clock=fake.clock, sleep=fake.sleep).blocks()) == 6 and fake.slept == []


def test_cli_replay_of_our_file_and_rewrite(tmp_path):
    acq, result, events = _model_run(seed=6)
    _write(tmp_path / "run.ptu", acq, events)
    copy = tmp_path / "copy.ptu"
    summary_path = tmp_path / "s.json"
    status = cli.main(["acquire", "--board", f"replay:{tmp_path / 'run.ptu'}", "--quiet",
                       "--out", str(copy), "--summary-json", str(summary_path)])
    assert status == 0
    summary = json.loads(summary_path.read_text())
    assert summary["singles"] == result.singles.tolist()
    assert summary["heralds"] == result.herald_counts.tolist()
    assert summary["coincidence_records"] == len(result.coincidence_records)
    assert all(summary["checks"].values()) and len(summary["checks"]) == 3
    with ptufile.PtuFile(tmp_path / "run.ptu") as a, ptufile.PtuFile(copy) as b:
        ra, rb = a.decode_records(), b.decode_records()
        assert json.loads(b.tags["Heraldry_Config"])["acquisition"] == json.loads(
            a.tags["Heraldry_Config"])["acquisition"]
    np.testing.assert_array_equal(ra[ra["channel"] >= 0], rb[rb["channel"] >= 0])


def test_cli_replay_exit_status_for_lost_events(tmp_path):
    acq, _, events = _model_run(seed=8)
    loss = np.zeros(1, EVENT_DTYPE)
    loss["time_ps"], loss["kind"], loss["count"] = events["time_ps"][100], Kind.LOSS.value, 3
    _write(tmp_path / "lossy.ptu", acq, np.insert(events, 101, loss))
    summary_path = tmp_path / "s.json"
    status = cli.main(["acquire", "--board", f"replay:{tmp_path / 'lossy.ptu'}", "--quiet",
                       "--summary-json", str(summary_path)])
    summary = json.loads(summary_path.read_text())
    assert summary["file_events_lost"] == 3 and summary["dropped"] == 3
    assert status == 1          # a check failed: file_declares_no_loss


def test_cli_replay_hydraharp(tmp_path):
    summary_path = tmp_path / "s.json"
    status = cli.main(["acquire", "--board", f"replay:{HYDRAHARP}", "--summary-json",
                       str(summary_path)])
    assert status == 0
    summary = json.loads(summary_path.read_text())
    assert summary["tags"] == 305_565 and summary["singles"] == [305_565, 0]
    assert summary["bin_ps"] == 1 and summary["device_seconds"] == 5.0


@pytest.mark.parametrize("board,fragment", [
    ("replay:/no/such/file.ptu", "no such file"),
    (f"replay:{__file__}", "not a PTU file"),
])
def test_cli_replay_refusals(board, fragment, capsys):
    assert cli.main(["acquire", "--board", board]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


# -- files cut short or never finished (issue 11, item 2) ------------------------------------

def _cut_hydraharp(tmp_path, size=1_000_003):
    """The first ``size`` bytes of the HydraHarp file (as ``head -c`` makes them)."""
    path = tmp_path / "cut.ptu"
    path.write_bytes(HYDRAHARP.read_bytes()[:size])
    return path


def test_cli_replay_of_a_cut_file_says_so(tmp_path, capsys):
    # The whole file: 435,319 records after a 4,392-byte header (1,745,668 bytes). Cut at
    # 1,000,003 bytes it holds (1,000,003 - 4,392) // 4 = 248,902 whole records and 3 bytes of
    # the next; ptufile decodes the whole file, so the cut's figures come from its records.
    with ptufile.PtuFile(HYDRAHARP) as f:
        records = f.decode_records()
        declared = f.tags["TTResult_NumberOfRecords"]
    assert declared == len(records) == 435_319
    kept = records[:248_902]
    photons = int(np.count_nonzero(kept["channel"] >= 0))
    assert photons == 174_737
    cut = _cut_hydraharp(tmp_path)
    summary_path = tmp_path / "s.json"
    copy = tmp_path / "copy.ptu"
    status = cli.main(["acquire", "--board", f"replay:{cut}", "--quiet", "--out", str(copy),
                       "--summary-json", str(summary_path)])
    assert status == 4
    summary = json.loads(summary_path.read_text())
    assert summary["complete"] is False
    assert summary["tags"] == photons and summary["singles"] == [photons, 0]
    assert summary["file_records"] == 248_902 and summary["file_records_declared"] == declared
    assert summary["device_seconds"] == pytest.approx(int(kept["time"][-1]) * 1e-12, abs=1e-12)
    assert summary["duration_s"] == 5.0         # what the header declares
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("heraldry: warning:")
    assert "248902 of the 435319 records" in err[0] and "cut after 3 of 4 bytes" in err[0]
    assert summary["incomplete"] in err[0]
    # The copy is finished (its own count patched) and marked: stop reason -10.
    with ptufile.PtuFile(copy) as f:
        assert f.tags["TTResult_StopReason"] == -10
        assert int(np.count_nonzero(f.decode_records()["channel"] >= 0)) == photons
        assert json.loads(f.tags["Heraldry_Summary"])["complete"] is False


def test_cli_replay_of_a_cut_file_prints_its_table(tmp_path, capsys, monkeypatch):
    # Without --quiet the summary is printed as a table; a cut file has every counter (the
    # model's, from its tags), so the table is printed whole and says the file is incomplete.
    from heraldry.host import liveview
    # A progress line after every block, however fast the machine replays.
    monkeypatch.setattr(liveview, "LiveView", functools.partial(liveview.LiveView, interval=0))
    with ptufile.PtuFile(HYDRAHARP) as f:
        kept = f.decode_records()[:248_902]
    photons = int(np.count_nonzero(kept["channel"] >= 0))
    reached_s = int(kept["time"][-1]) * 1e-12
    cut = _cut_hydraharp(tmp_path)
    copy = tmp_path / "copy.ptu"
    assert cli.main(["acquire", "--board", f"replay:{cut}", "--out", str(copy)]) == 4
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert not any("Traceback" in line or "error" in line for line in err), err
    assert sum(line.startswith("heraldry: warning:") for line in err) == 1
    # The progress lines name what is there: the records read and the time they reach (not
    # the 5 s the header declares, nor --duration's default, which a replay does not take).
    assert f"(248902 records, {reached_s:g} s)" in err[0], err[0]
    progress = [line for line in err if " ms device time (" in line]
    assert progress and all(f" of {reached_s * 1e3:g} ms device time" in line
                            for line in progress), progress
    with ptufile.PtuFile(copy) as f:
        assert f.tags["File_Comment"].endswith(f", {reached_s:g} s")
    out = captured.out
    assert f"\n        0 {photons:9d} {photons:9d}         0\n" in out, out
    assert f"{reached_s * 1e3:g} ms device time" in out, out
    assert f"INCOMPLETE: {cut} holds 248902 of the 435319 records" in out, out


def test_cut_on_a_record_boundary_and_unfinished_files(tmp_path):
    acq, result, events = _model_run(seed=4)
    whole = tmp_path / "whole.ptu"
    writer = _write(whole, acq, events)
    source = ReplaySource(whole)
    assert source.incomplete is None
    assert source.records == source.records_declared == writer.records
    data = whole.read_bytes()
    # Two records short, on a record boundary: nothing cut mid-record.
    short = tmp_path / "short.ptu"
    short.write_bytes(data[:-8])
    source = ReplaySource(short)
    assert source.records == writer.records - 2
    assert source.incomplete == (f"{short} holds {writer.records - 2} of the "
                                 f"{writer.records} records its header declares (2 missing)")
    assert len(source.events) == len(events) - 2        # the last two are plain records here
    # Never finished: the count our writer patches at the end is still 0 (and a record is
    # half-written).
    from heraldry.host.ptu import read_tags
    with open(whole, "rb") as f:
        _, offset = read_tags(f)
    name = b"TTResult_NumberOfRecords".ljust(32, b"\0")
    at = data.index(name) + 32 + 4 + 4          # ident, index, type code, then the value
    assert int.from_bytes(data[at:at + 8], "little") == writer.records
    unfinished = tmp_path / "unfinished.ptu"
    unfinished.write_bytes(data[:at] + bytes(8) + data[at + 8:-2])
    source = ReplaySource(unfinished)
    assert source.records_declared is None
    assert source.records == (len(data) - 2 - offset) // 4 == writer.records - 1
    assert source.incomplete == (f"{unfinished} declares no record count (its writer never "
                                 f"finished it), its last record cut after 2 of 4 bytes; "
                                 f"{writer.records - 1} records read")
    # An empty file that declares no records is whole.
    with PTUWriter.for_acquisition(tmp_path / "empty.ptu", acq):
        pass
    assert ReplaySource(tmp_path / "empty.ptu").incomplete is None


def test_api_replay_of_a_cut_file_fails_a_check(tmp_path):
    """``heraldry.open("replay:...")``: the same file cut short ends with a failed check and
    the time its records reach."""
    import heraldry
    with ptufile.PtuFile(HYDRAHARP) as f:
        last_ps = int(f.decode_records()["time"][248_901])
    with heraldry.open(f"replay:{_cut_hydraharp(tmp_path)}") as tagger:
        with tagger.run() as run:
            sum(1 for _ in run)         # to the end of the file
    assert run.checks == {"file_declares_no_loss": True,
                          "file_holds_every_declared_record": False}
    assert run.device_seconds == pytest.approx(last_ps * 1e-12, abs=1e-12)
    with heraldry.open(f"replay:{HYDRAHARP}") as tagger:
        with tagger.run() as run:
            sum(1 for _ in run)
    assert run.checks == {"file_declares_no_loss": True} and run.device_seconds == 5.0
