"""PTU T2 files: what :class:`heraldry.host.ptu.PTUWriter` writes, read back by the independent
readers ``ptufile`` and ``tttrlib`` (every time and channel compared exactly), and our own
:func:`read_ptu` on a file PicoQuant's software wrote."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import ptufile
import pytest
import tttrlib

from heraldry.host.events import EVENT_DTYPE
from heraldry.host.ptu import (WRAP, ChannelMap, PTUWriter, StopReason, read_ptu)
from heraldry.protocol import Kind, LossCause

HYDRAHARP = Path(__file__).parent / "data" / "hydraharp_v30_t2.ptu"


def events(time_ps, channel, kind=Kind.TAG, pattern=0, count=1):
    out = np.zeros(len(time_ps), EVENT_DTYPE)
    out["time_ps"] = time_ps
    out["channel"] = channel
    out["kind"] = kind.value if isinstance(kind, Kind) else kind
    out["pattern"] = pattern
    out["count"] = count
    return out


def read_ptufile(path):
    with ptufile.PtuFile(path) as f:
        tags = dict(f.tags)
        records = f.decode_records() if f.number_records else np.zeros(0, ptufile.T2_RECORD_DTYPE)
    photons = records[records["channel"] >= 0]
    overflows = int(np.count_nonzero((records["channel"] < 0) & (records["marker"] == 0)))
    return photons["time"].astype(np.int64), photons["channel"].astype(np.int64), tags, overflows


def read_tttrlib(path):
    t = tttrlib.TTTR(str(path), "PTU")
    photons = np.asarray(t.event_types) == 0
    resolution_ps = t.header.macro_time_resolution * 1e12
    times = np.asarray(t.macro_times, np.int64)[photons]
    return times, np.asarray(t.routing_channels, np.int64)[photons], resolution_ps


def assert_readers_agree(path, time_ps, channel, bin_ps):
    """Both independent readers (and ours) find exactly these photons."""
    time_ps = np.asarray(time_ps, np.int64)
    channel = np.asarray(channel, np.int64)
    t, c, _, _ = read_ptufile(path)
    np.testing.assert_array_equal(t * bin_ps, time_ps)      # ptufile: time in units
    np.testing.assert_array_equal(c, channel)
    t, c, resolution_ps = read_tttrlib(path)
    assert round(resolution_ps, 6) == bin_ps
    np.testing.assert_array_equal(t * bin_ps, time_ps)
    np.testing.assert_array_equal(c, channel)
    ours = read_ptu(path)
    np.testing.assert_array_equal(ours.time_ps[ours.photons], time_ps)
    np.testing.assert_array_equal(ours.channel[ours.photons], channel)


def poisson(seed, n, channels, mean_gap_bins):
    rng = np.random.default_rng(seed)
    bins = np.cumsum(rng.geometric(1 / mean_gap_bins, n)).astype(np.int64)
    return bins, rng.integers(0, channels, n)


def test_poisson_four_channels_10ns_bins(tmp_path):
    path = tmp_path / "poisson.ptu"
    bins, channel = poisson(1, 100_000, 4, 5_000)   # ~0.5 s at 10 ns: ~15 wraps of 2**25
    ev = events(bins * 10_000, channel)
    config = {"channels": 4, "window_bins": 3, "note": "an acquisition"}
    with PTUWriter(path, bin_ps=10_000, channel_map=ChannelMap(4), config=config,
                   comment="poisson") as w:
        for block in np.array_split(ev, 37):
            w.write_block(block)
    assert_readers_agree(path, ev["time_ps"], channel, 10_000)
    _, _, tags, overflows = read_ptufile(path)
    assert overflows == bins[-1] >> 25     # every wrap is crossed by some ~5000-bin gap
    assert tags["MeasDesc_GlobalResolution"] == pytest.approx(10e-9, rel=1e-12)
    assert tags["TTResultFormat_TTTRRecType"] == 0x01010204
    assert tags["TTResult_NumberOfRecords"] == 100_000 + overflows
    with ptufile.PtuFile(path) as f:
        assert os.path.getsize(path) == read_ptu(path).records * 4 + f.record_offset
    assert tags["Heraldry_Summary"] == ""       # close() was given none
    duration_s = bins[-1] * 10e-9
    assert tags["MeasDesc_AcquisitionTime"] == round(duration_s * 1e3)
    expected_rates = np.bincount(channel, minlength=4) / duration_s
    np.testing.assert_allclose(tags["TTResult_InputRate"], expected_rates, atol=1)
    assert tags["TTResult_StopReason"] == 0
    assert tags.get("TTResult_MDescWarningFlags", 0) == 0
    assert json.loads(tags["Heraldry_Config"]) == config
    assert tags["File_Comment"] == "poisson" and tags["Measurement_Mode"] == 2


GAPS = [WRAP - 1, WRAP, WRAP + 1, (WRAP - 1) * WRAP + 7, (WRAP - 1) * WRAP + WRAP, 1,
        2 * (WRAP - 1) * WRAP + 5, 0, 127 * WRAP, 128 * WRAP + 3]


def _overflow_records(units, cap):
    """Overflow records a writer needs: each carries at most ``cap`` wraps."""
    return sum(-(-int(w) // cap) for w in np.diff(units >> 25))


def test_wrap_gaps_and_multi_overflow(tmp_path):
    path = tmp_path / "gaps.ptu"
    units = np.cumsum([5] + GAPS).astype(np.int64)
    channel = np.arange(len(units)) % 3
    with PTUWriter(path, bin_ps=1, channel_map=ChannelMap(3)) as w:
        w.write_block(events(units, channel))
    assert_readers_agree(path, units, channel, 1)
    _, _, _, overflows = read_ptufile(path)
    assert overflows == _overflow_records(units, 127)
    # Two gaps of 127 and 128 wraps: one and two records.
    assert _overflow_records(units[-3:], 127) == 3


def test_full_overflow_records_for_readers_with_64_bit_sums(tmp_path):
    """With WRAP-1 wraps per record (the format's limit; ptufile 2026.2.6 misreads 128 or more,
    see MAX_WRAPS_PER_RECORD) tttrlib and our reader still agree, with fewer records."""
    path = tmp_path / "gaps_full.ptu"
    units = np.cumsum([5] + GAPS).astype(np.int64)
    channel = np.arange(len(units)) % 3
    with PTUWriter(path, bin_ps=1, channel_map=ChannelMap(3),
                   max_wraps_per_record=WRAP - 1) as w:
        w.write_block(events(units, channel))
    t, c, _ = read_tttrlib(path)
    np.testing.assert_array_equal(t, units)
    np.testing.assert_array_equal(c, channel)
    ours = read_ptu(path)
    np.testing.assert_array_equal(ours.time_ps, units)
    # WRAP-1 wraps: one record; WRAP wraps: two; 2 * (WRAP-1): two.
    assert ours.overflows == _overflow_records(units, WRAP - 1)
    assert ours.overflows == 1 + 1 + 1 + 1 + 2 + 0 + 2 + 0 + 1 + 1


def test_event_exactly_on_wrap_boundaries(tmp_path):
    path = tmp_path / "boundary.ptu"
    units = np.array([0, WRAP - 1, WRAP, 2 * WRAP - 1, 2 * WRAP, 5 * WRAP], np.int64)
    with PTUWriter(path, bin_ps=4, channel_map=ChannelMap(2)) as w:
        for u in units:
            w.write_block(events([u * 4], [1]))
    assert_readers_agree(path, units * 4, np.ones(len(units)), 4)


def test_channel_63_and_identical_timestamps(tmp_path):
    path = tmp_path / "ch63.ptu"
    times = np.array([10, 10, 10, 20, 20, WRAP, WRAP, 3 * WRAP + 1], np.int64)
    channel = np.array([63, 0, 62, 5, 63, 63, 1, 63])
    with PTUWriter(path, bin_ps=1, channel_map=ChannelMap(64)) as w:
        w.write_block(events(times, channel))
    assert_readers_agree(path, times, channel, 1)


def test_header_only_file(tmp_path):
    path = tmp_path / "empty.ptu"
    PTUWriter(path, bin_ps=10_000, channel_map=ChannelMap(2)).close()
    with ptufile.PtuFile(path) as f:
        assert f.number_records == 0 and f.tags["TTResult_NumberOfRecords"] == 0
        assert os.path.getsize(path) == f.record_offset
    assert len(tttrlib.TTTR(str(path), "PTU")) == 0
    ours = read_ptu(path)
    assert ours.records == 0 and len(ours.time_ps) == 0


_KILLED_WRITER = """
import os, signal, sys
import numpy as np
from heraldry.host.events import EVENT_DTYPE
from heraldry.host.ptu import ChannelMap, PTUWriter
rng = np.random.default_rng(7)
ev = np.zeros(20000, EVENT_DTYPE)
ev["time_ps"] = np.cumsum(rng.geometric(1e-4, len(ev))) * 10_000
ev["channel"] = rng.integers(0, 2, len(ev))
np.save(sys.argv[2], ev)
w = PTUWriter(sys.argv[1], bin_ps=10_000, channel_map=ChannelMap(2), reorder_bins=0)
for block in np.array_split(ev, 5):
    w.write_block(block)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_writer_leaves_a_readable_file(tmp_path):
    path = tmp_path / "killed.ptu"
    saved = tmp_path / "events.npy"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path), str(saved)],
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    ev = np.load(saved)
    with ptufile.PtuFile(path) as f:
        assert f.tags["TTResult_NumberOfRecords"] == 0      # never patched
    assert_readers_agree(path, ev["time_ps"], ev["channel"], 10_000)


def test_rotation_parts_read_back_whole(tmp_path):
    path = tmp_path / "run.ptu"
    bins, channel = poisson(3, 6000, 2, 20_000)
    ev = events(bins * 10_000, channel)
    header = len(open(_header_only(tmp_path), "rb").read())
    max_bytes = header + 4 * 1000
    w = PTUWriter(path, bin_ps=10_000, channel_map=ChannelMap(2), max_bytes=max_bytes)
    for block in np.array_split(ev, 13):
        w.write_block(block)
    w.close(stop_reason=StopReason.MANUAL)
    names = [Path(p).name for p in w.paths]
    assert names[:3] == ["run.ptu", "run-001.ptu", "run-002.ptu"] and len(names) >= 6
    times, channels = [], []
    for index, part in enumerate(w.paths):
        assert os.path.getsize(part) <= max_bytes
        t, c, tags, _ = read_ptufile(part)
        assert tags["Heraldry_FilePart"] == index
        assert tags["TTResult_StopReason"] == 1
        assert tags["TTResult_NumberOfRecords"] * 4 + header == os.path.getsize(part)
        t2, c2, _ = read_tttrlib(part)
        np.testing.assert_array_equal(t2, t)
        np.testing.assert_array_equal(c2, c)
        times.append(t * 10_000)
        channels.append(c)
    np.testing.assert_array_equal(np.concatenate(times), ev["time_ps"])
    np.testing.assert_array_equal(np.concatenate(channels), channel)


def _header_only(tmp_path):
    path = tmp_path / "header.ptu"
    PTUWriter(path, bin_ps=10_000, channel_map=ChannelMap(2)).close()
    return path


def test_heralds_coincidences_losses_and_reordering(tmp_path):
    """4 inputs, 2 rules, patterns 0b0011 and 0b1100 recorded: heralds on 4 + r, patterns on
    6 and 7; a coincidence record (t0) arrives after tags up to a window later; losses set the
    warning flag."""
    path = tmp_path / "kinds.ptu"
    b = 10_000
    stream = np.concatenate([
        events([100 * b], [0]),
        events([102 * b], [1]),
        events([102 * b], [1], Kind.HERALD, pattern=0b0011),
        events([103 * b], [2]),
        events([100 * b], [0], Kind.COINCIDENCE, pattern=0b0011),
        events([103 * b], [0], Kind.LOSS, pattern=LossCause.MERGER_FULL.value, count=5),
        events([104 * b], [3]),
        events([104 * b], [0], Kind.HERALD, pattern=0b1111),
        events([103 * b], [0], Kind.COINCIDENCE, pattern=0b1100),
        events([(WRAP + 50) * b], [1]),
    ])
    cmap = ChannelMap(4, 2, (0b1100, 0b0011))
    with PTUWriter(path, bin_ps=b, channel_map=cmap, reorder_bins=16) as w:
        w.write_block(stream[:5])
        w.write_block(stream[5:])
    # By hand: time order, ties in arrival order; herald r -> 4 + r, 0b0011 -> 6, 0b1100 -> 7.
    expected = [(100, 0), (100, 6), (102, 1), (102, 5), (103, 2), (103, 7), (104, 3),
                (104, 4), (WRAP + 50, 1)]
    times = [t * b for t, _ in expected]
    assert_readers_agree(path, times, [c for _, c in expected], b)
    _, _, tags, _ = read_ptufile(path)
    assert tags["TTResult_MDescWarningFlags"] & 0x80
    assert tags["Heraldry_EventsLost"] == 5
    mapping = json.loads(tags["Heraldry_ChannelMap"])
    assert mapping["herald_rules"] == {"0": 4, "1": 5}
    assert mapping["coincidence_patterns"] == {"0b0011": 6, "0b1100": 7}


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="PTU channels"):
        ChannelMap(8, 8, tuple(range(1, 50)))
    w = PTUWriter(tmp_path / "r.ptu", bin_ps=10, channel_map=ChannelMap(2, 1, (3,)),
                  reorder_bins=5)
    with pytest.raises(ValueError, match="no PTU channel"):
        w.write_block(events([10], [0], Kind.COINCIDENCE, pattern=1))
    with pytest.raises(ValueError, match="no PTU channel"):
        w.write_block(events([10], [1], Kind.HERALD))
    with pytest.raises(ValueError, match="whole"):
        w.write_block(events([15], [0]))
    w.write_block(events([1000], [0]))      # 100 bins: everything before 95 is written
    w.write_block(events([960], [1]))       # 96: still held back, fine
    with pytest.raises(ValueError, match="out of order"):
        w.write_block(events([900], [1]))
    w.close()
    assert_readers_agree(tmp_path / "r.ptu", [960, 1000], [1, 0], 10)


def test_for_acquisition_header(tmp_path):
    from heraldry.host.config import Acquisition
    acq = Acquisition(channels=3, rules=2, herald_masks=[0b011], window_bins=4,
                      coincidence_record_mask=(1 << 0b011) | (1 << 0b111))
    path = tmp_path / "acq.ptu"
    with PTUWriter.for_acquisition(path, acq, {"board": "sim"}) as w:
        w.write_block(events([0, 10_000], [2, 0], Kind.COINCIDENCE, pattern=[0b111, 0b011]))
    _, _, tags, _ = read_ptufile(path)
    config = json.loads(tags["Heraldry_Config"])
    assert config["board"] == "sim"
    assert config["acquisition"]["window_bins"] == 4
    assert config["acquisition"]["herald_masks"] == [0b011]
    assert tags["HW_InpChannels"] == 3
    # 3 inputs, 2 rules: pattern 0b011 on channel 5, 0b111 on 6.
    assert_readers_agree(path, [0, 10_000], [6, 5], 10_000)


def test_reads_hydraharp_file_with_readme_figures():
    data = read_ptu(HYDRAHARP)
    assert data.records == 435_319
    assert data.overflows == 129_754
    photons = data.photons
    assert int(photons.sum()) == 305_565 and len(data.time_ps) == 305_565
    assert np.all(data.channel[photons] == 0)
    assert np.all(np.diff(data.time_ps) >= 0)
    assert data.time_ps[0] == 24_433_765
    assert data.time_ps[-1] == 4_999_964_931_763
    assert data.tags["TTResultFormat_TTTRRecType"] == 0x01010204


ACQUIRE_ARGS = ["--duration", "0.002", "--channels", "4", "--window", "20", "--delay", "0=30",
                "--herald", "0b011", "--herald", "0b1010", "--record-coincidences", "0b0011",
                "--record-coincidences", "0b1100", "--test-signal", "pairs", "--pair-rate",
                "2e5", "--efficiency", "0.7", "--dark-rate", "5e4", "--pair-delay", "30",
                "--seed", "5"]


def test_acquire_out_ptu_on_the_virtual_board(tmp_path):
    """``heraldry acquire --board sim --out FILE.ptu``: the file's inputs reproduce the summary's
    counters, and its herald and coincidence channels hold exactly what the reference model
    derives from its input channels."""
    from heraldry import model
    from heraldry.host import cli
    path = tmp_path / "run.ptu"
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, "-m", "heraldry.host.cli", "acquire", "--board", "sim",
                           *ACQUIRE_ARGS, "--out", str(path), "--summary-json",
                           str(summary_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(summary_path.read_text())
    time_units, channel, tags, _ = read_ptufile(path)
    t2, c2, _ = read_tttrlib(path)
    np.testing.assert_array_equal(t2, time_units)
    np.testing.assert_array_equal(c2, channel)
    assert np.all(np.diff(time_units) >= 0)
    assert np.bincount(channel[channel < 4], minlength=4).tolist() == summary["singles"]
    acq, _ = cli.acquisition_from_args(cli.build_parser().parse_args(
        ["acquire", "--board", "sim", *ACQUIRE_ARGS]))
    inputs = np.zeros(int(np.count_nonzero(channel < 4)), model.TAG_DTYPE)
    inputs["time"], inputs["channel"] = time_units[channel < 4], channel[channel < 4]
    expected = model.counts_from_tags(inputs, acq.model_settings())
    assert expected.herald_counts.tolist() == summary["heralds"] and sum(summary["heralds"]) > 20
    for rule in range(2):                       # herald rule r on channel 4 + r
        np.testing.assert_array_equal(
            time_units[channel == 4 + rule],
            expected.heralds["time"][expected.heralds["rule"] == rule])
    records = expected.coincidence_records
    assert len(records) > 20
    for ptu_channel, pattern in ((6, 0b0011), (7, 0b1100)):
        np.testing.assert_array_equal(time_units[channel == ptu_channel],
                                      records["time"][records["pattern"] == pattern])
    assert len(channel) == summary["tags"] + summary["herald_records"] \
        + summary["coincidence_records"]
    seconds = summary["device_seconds"]
    np.testing.assert_allclose(tags["TTResult_InputRate"],
                               np.array(summary["singles"]) / seconds, atol=1)
    assert tags["MeasDesc_AcquisitionTime"] == round(seconds * 1e3)
    assert tags["TTResult_StopReason"] == 0 and not tags.get("TTResult_MDescWarningFlags", 0)
    assert tags["MeasDesc_GlobalResolution"] == pytest.approx(10e-9, rel=1e-12)
    config = json.loads(tags["Heraldry_Config"])
    assert config["board"] == "sim" and config["acquisition"]["window_bins"] == 2
    assert json.loads(tags["Heraldry_Summary"]) == summary
    assert config["options"]["herald"] == ["0b011", "0b1010"]


def test_acquire_out_ptu_in_process(tmp_path):
    """The in-process path hands its records to the same writer once, at the end."""
    from heraldry.host import cli
    path = tmp_path / "inproc.ptu"
    summary_path = tmp_path / "summary.json"
    status = cli.main(["acquire", "--board", "sim-inprocess", "--duration", "1e-5", "--quiet",
                       "--test-signal", "periodic", "--period", "100", "--dark-rate", "0",
                       "--out", str(path),
                       "--summary-json", str(summary_path)])
    assert status == 0
    summary = json.loads(summary_path.read_text())
    t, c, tags, _ = read_ptufile(path)
    t2, c2, _ = read_tttrlib(path)
    np.testing.assert_array_equal(t2, t)
    np.testing.assert_array_equal(c2, c)
    counts = np.bincount(c, minlength=4)
    assert counts.tolist() == summary["singles"] == [100] * 4
    # The periodic signal: every channel every 10 cycles (bins).
    for ch in range(4):
        assert set(np.diff(t[c == ch]).tolist()) == {10}
    assert tags["TTResult_InputRate"] == [round(n / 1e-5) for n in counts]


def test_summary_slot_and_its_fallbacks(tmp_path):
    big = {"patterns": {str(p): p for p in range(300)}, "singles": list(range(20))}
    for summary_bytes, expected in ((16384, big), (128, {"singles": list(range(20))}),
                                    (24, {"truncated": True})):
        path = tmp_path / f"s{summary_bytes}.ptu"
        w = PTUWriter(path, bin_ps=1, channel_map=ChannelMap(2), summary_bytes=summary_bytes)
        w.write_block(events([5, 7], [0, 1]))
        w.close(summary=big)
        _, _, tags, _ = read_ptufile(path)
        assert json.loads(tags["Heraldry_Summary"]) == expected
        assert json.loads(read_ptu(path).tags["Heraldry_Summary"]) == expected
        assert_readers_agree(path, [5, 7], [0, 1], 1)


def test_sync_markers_are_ptu_marker_records_and_the_header_has_the_attempt_counters(tmp_path):
    """Issue 13 item 5: the sync input's tags (every Nth sync edge) are PTU marker records
    (marker 1), which ptufile, tttrlib and our reader see as markers, not photons; detector tags
    and herald records stay photons; the summary's attempts, gated-out and herald counters are
    plain header tags (and the sync rate); a replay gives the markers back as sync tags."""
    from heraldry.host.replay import ReplaySource
    rng = np.random.default_rng(13)
    detector_bins = np.unique(rng.integers(1, 3 * WRAP, 400))
    sync_bins = np.arange(500, 3 * WRAP, WRAP // 7)       # markers across the wraps
    herald_bins = detector_bins[::40] + 1
    tags = events(detector_bins * 10, rng.integers(0, 2, len(detector_bins)))
    ev = np.concatenate([tags, events(sync_bins * 10, 2),
                         events(herald_bins * 10, 0, Kind.HERALD, pattern=3)])
    ev["attempt"][ev["kind"] == Kind.HERALD.value] = np.arange(len(herald_bins)) + 1
    ev = ev[np.argsort(ev["time_ps"], kind="stable")]
    path = tmp_path / "sync.ptu"
    summary = {"attempts": 123_456, "gated_out": [5, 6, 0], "heralds": [9]}
    w = PTUWriter(path, bin_ps=10, channel_map=ChannelMap(3, 1, sync_marker=2))
    for block in np.array_split(ev, 5):
        w.write_block(block)
    w.close(acquisition_time_s=2.0, summary=summary)
    photons = ev[(ev["kind"] != Kind.TAG.value) | (ev["channel"] != 2)]
    photon_channels = np.where(photons["kind"] == Kind.HERALD.value, 3, photons["channel"])
    assert_readers_agree(path, photons["time_ps"], photon_channels, 10)
    with ptufile.PtuFile(path) as f:
        records = f.decode_records()
        header = dict(f.tags)
    markers = records[(records["channel"] < 0) & (records["marker"] != 0)]
    np.testing.assert_array_equal(markers["time"].astype(np.int64), sync_bins)
    assert set(markers["marker"].tolist()) == {1}
    t = tttrlib.TTTR(str(path), "PTU")
    is_marker = np.asarray(t.event_types) == 1
    np.testing.assert_array_equal(np.asarray(t.macro_times, np.int64)[is_marker], sync_bins)
    assert set(np.asarray(t.routing_channels)[is_marker].tolist()) == {1}
    ours = read_ptu(path)
    np.testing.assert_array_equal(ours.time_ps[ours.special], sync_bins * 10)
    assert set(ours.channel[ours.special].tolist()) == {1}
    assert header["Heraldry_Attempts"] == 123_456
    assert header["TTResult_SyncRate"] == 61_728          # 123456 attempts in 2 s
    assert header["Heraldry_GatedOut"] == [5, 6, 0]        # ptufile: arrays as lists
    assert header["Heraldry_Heralds"] == [9]
    assert json.loads(header["Heraldry_ChannelMap"])["sync_marker"] == {"input": 2, "marker": 1}
    replay = ReplaySource(path)
    assert replay.skipped_special == 0
    replayed = replay.events
    np.testing.assert_array_equal(replayed["time_ps"], ev["time_ps"])
    np.testing.assert_array_equal(replayed["channel"], ev["channel"])
    np.testing.assert_array_equal(replayed["kind"], ev["kind"])


def test_attempt_counters_unknown_without_a_summary(tmp_path):
    """No summary (or one without a sync): the attempt-clock tags say -1, the sync rate 0, and
    there is no marker."""
    path = tmp_path / "plain.ptu"
    with PTUWriter(path, bin_ps=10, channel_map=ChannelMap(2, 2)) as w:
        w.write_block(events([10, 20], [0, 1]))
    path2 = tmp_path / "nosync.ptu"
    w = PTUWriter(path2, bin_ps=10, channel_map=ChannelMap(2, 2))
    w.write_block(events([10, 20], [0, 1]))
    w.close(summary={"attempts": None, "gated_out": [0, 0], "heralds": [4, 0]})
    for p, gated, heralds in ((path, [-1, -1], [-1, -1]), (path2, [0, 0], [4, 0])):
        with ptufile.PtuFile(p) as f:
            header = dict(f.tags)
            assert not np.any(f.decode_records()["marker"])
        assert header["Heraldry_Attempts"] == -1 and header["TTResult_SyncRate"] == 0
        assert header["Heraldry_GatedOut"] == gated and header["Heraldry_Heralds"] == heralds
        assert "sync_marker" not in json.loads(header["Heraldry_ChannelMap"])
    with pytest.raises(ValueError, match="sync marker input 2"):
        ChannelMap(2, sync_marker=2)
