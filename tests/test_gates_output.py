"""What a lab sees of the attempt clock (issue 13 item 5): the herald records' attempt and sync
offset in ``--out FILE.npz``, the attempts and gated-out events in the printed summary and in
the live view (from the stream until the board's counters come, then from them). Cheap: no
board runs; the records and counters are made up here, the expected lines computed from them."""

import io
import re

import numpy as np

from heraldry.host import cli
from heraldry.host.acquire import print_summary
from heraldry.host.events import EVENT_DTYPE
from heraldry.host.liveview import LiveView
from heraldry.host.tagger import Settings, settings_to_acquisition
from heraldry.protocol import Kind

from test_gates_host import gates_identity


def _acq(**extra):
    identity = gates_identity()                 # 5 channels, 10 ns bins
    settings = Settings(sync=4, gates_ns={0: (40.0, 200.0), 2: (0.0, 100.0)},
                        heralds=("D0&D1", "D2&D3"), **extra)
    acq, _ = settings_to_acquisition(settings, identity)
    return acq


def _records(rng, acq, heralds):
    """Tags on channels 0..3, sync markers on channel 4 (every ``sync_marker_every``-th
    attempt, 1 us apart), ``heralds`` herald records with attempt numbers and offsets, a loss
    record; in time order."""
    tags = np.zeros(200, EVENT_DTYPE)
    tags["time_ps"] = np.sort(rng.integers(0, 10**8, len(tags))) // 10_000 * 10_000
    tags["channel"] = rng.integers(0, 4, len(tags))
    tags["kind"], tags["count"] = Kind.TAG.value, 1
    every = acq.sync_marker_every
    markers = np.zeros(100 // every if every else 0, EVENT_DTYPE)
    markers["time_ps"] = (np.arange(len(markers)) + 1) * every * 1_000_000
    markers["channel"], markers["kind"], markers["count"] = 4, Kind.TAG.value, 1
    herald = np.zeros(heralds, EVENT_DTYPE)
    herald["time_ps"] = np.sort(rng.integers(0, 10**8, heralds)) // 10_000 * 10_000
    herald["channel"] = rng.integers(0, 2, heralds)
    herald["pattern"] = np.where(herald["channel"] == 0, 0b0011, 0b1100)
    herald["kind"], herald["count"] = Kind.HERALD.value, 1
    herald["attempt"] = herald["time_ps"] // 1_000_000 + 1           # 1 us attempts
    herald["sync_offset"] = herald["time_ps"] % 1_000_000 // 10_000
    loss = np.zeros(1, EVENT_DTYPE)
    loss["kind"], loss["count"], loss["time_ps"] = Kind.LOSS.value, 3, 5 * 10**7
    events = np.concatenate([tags, markers, herald, loss])
    return events[np.argsort(events["time_ps"], kind="stable")], herald


def test_npz_holds_the_heralds_with_their_attempt_clock(tmp_path):
    rng = np.random.default_rng(1)
    events, herald = _records(rng, _acq(), 25)
    path = tmp_path / "run.npz"
    cli._write_npz(path, events)
    data = np.load(path)
    is_tag = events["kind"] == Kind.TAG.value
    np.testing.assert_array_equal(data["time_ps"], events["time_ps"][is_tag])
    np.testing.assert_array_equal(data["channel"], events["channel"][is_tag])
    herald = herald[np.argsort(herald["time_ps"], kind="stable")]
    np.testing.assert_array_equal(data["herald_time_ps"], herald["time_ps"])
    np.testing.assert_array_equal(data["herald_rule"], herald["channel"])
    np.testing.assert_array_equal(data["herald_pattern"], herald["pattern"])
    np.testing.assert_array_equal(data["herald_attempt"], herald["time_ps"] // 10**6 + 1)
    np.testing.assert_array_equal(data["herald_sync_offset"],
                                  herald["time_ps"] % 10**6 // 10_000)
    assert data["herald_attempt"].dtype == np.uint32 and data["channel"].dtype == np.uint8
    # A run without heralds still writes the arrays, empty.
    cli._write_npz(tmp_path / "none.npz", events[events["kind"] != Kind.HERALD.value])
    assert len(np.load(tmp_path / "none.npz")["herald_attempt"]) == 0


def _summary(acq, attempts, gated_out):
    n = acq.channels
    return {"board": "sim", "channels": n, "bin_ps": acq.bin_ps, "duration_s": 0.001,
            "window_bins": acq.window_bins, "singles": [10] * n, "tags_per_channel": [10] * n,
            "dropped_per_channel": [0] * n, "patterns": {}, "herald_rules": ["a", "b"],
            "heralds": [3, 4], "roles": list(acq.roles), "gated_out": gated_out,
            "attempts": attempts, "checks": {}, "dropped": 0}


def test_printed_summary_has_attempts_and_gated_out():
    acq = _acq()
    out = io.StringIO()
    print_summary(_summary(acq, 1234, [7, 0, 9, 0, 0]), file=out)
    lines = out.getvalue().splitlines()
    assert "  attempts (sync edges on channel 4): 1234; gated out per channel: 7, 0, 9, 0, 0" \
        in lines
    assert "  herald rule 0 (a): 3" in lines and "  herald rule 1 (b): 4" in lines
    # No sync and nothing gated out: no such line.
    plain = _summary(acq, None, [0] * 5)
    plain["roles"] = ["detector"] * 5
    out = io.StringIO()
    print_summary(plain, file=out)
    assert "attempts" not in out.getvalue() and "gated out" not in out.getvalue()


class _Stream(io.StringIO):
    def isatty(self):
        return True


def test_live_view_attempts_from_the_stream_then_from_the_counters():
    acq = _acq(sync_marker_every=10)
    rng = np.random.default_rng(2)
    events, herald = _records(rng, acq, 12)
    live = LiveView(0.001, stream=_Stream(), clock=lambda: 0.0)
    sink = live.start(acq)
    half = len(events) // 2
    sink(events[:half])
    # The stream proves attempts up to the later of the latest herald's attempt and the last
    # marker's number (marker k is attempt 10 k).
    first = events[:half]
    markers = np.count_nonzero((first["kind"] == Kind.TAG.value) & (first["channel"] == 4))
    last_herald = first["attempt"][first["kind"] == Kind.HERALD.value][-1]
    seen = max(int(last_herald), 10 * markers)
    assert seen > 0
    lines = live.render(1.0)
    assert f"  attempts >= {seen} (from the stream); gated out: ch0 -, ch2 -" in lines
    heralds_line = next(line for line in lines if line.startswith("  heralds:"))
    per_rule = np.bincount(first["channel"][first["kind"] == Kind.HERALD.value], minlength=2)
    assert re.search(rf"rule 0 \([^)]*\) {per_rule[0]}, rule 1 \([^)]*\) {per_rule[1]}$",
                     heralds_line), heralds_line
    # A progress call that brings the run's counters: the board's figures.
    counters = {"singles": [50, 60, 70, 80, 1000], "gated_out": [11, 0, 13, 0, 0]}
    live.progress(500, 1000, {"tags": 0, "link_bytes": 0, "decode_errors": 0,
                              "counters": counters})
    lines = live.render(1.0)
    assert "  attempts 1000 (counted); gated out: ch0 11, ch2 13" in lines
    # The final counters given to finish() win.
    sink(events[half:])
    live.finish({"singles": [0, 0, 0, 0, 2000], "gated_out": [21, 0, 23, 0, 0]})
    assert "  attempts 2000 (counted); gated out: ch0 21, ch2 23" in live.render(2.0)


def test_live_view_without_sync_or_gates_has_no_attempt_line():
    identity = gates_identity()
    acq, _ = settings_to_acquisition(Settings(heralds=("D0&D1",)), identity)
    live = LiveView(0.001, stream=_Stream(), clock=lambda: 0.0)
    live.start(acq)
    assert not any("attempts" in line or "gated out" in line for line in live.render(1.0))


def test_in_process_core_records_of_a_gates_core_keep_the_attempt_clock():
    """Raw records as a core with gates emits them (packed by Amaranth from the layout) decode
    to their herald's rule, pattern, attempt and offset; tags keep 0 and 0."""
    from heraldry import protocol
    from heraldry.host.core_records import CoreRecordDecoder
    rng = np.random.default_rng(5)
    fine_bits = 2
    layout = protocol.record_layout(fine_bits, gates=True)
    rows, raw = [], []
    t = 1000
    for _ in range(300):
        t += int(rng.integers(0, 5000))
        if rng.random() < 0.3:
            row = (Kind.HERALD, int(rng.integers(0, protocol.MAX_RULES)),
                   int(rng.integers(0, 256)), int(rng.choice([0, 2**32 - 1, rng.integers(2**32)])),
                   int(rng.choice([0, 2**16 - 1, rng.integers(2**16)])))
            payload = {"herald": {"rule": row[1], "pattern": row[2], "attempt": row[3],
                                  "offset": row[4]}}
        else:
            row = (Kind.TAG, int(rng.integers(0, 8)), 0, 0, 0)
            payload = {"tag": {"channel": row[1]}}
        rows.append((t,) + row)
        raw.append(layout.const({"kind": row[0], "payload": payload, "time": t}).as_value()
                   .value)
    block = CoreRecordDecoder(fine_bits=fine_bits, bin_ps=5, gates=True).decode(raw)
    ev = block.events
    assert ev["time_ps"].tolist() == [5 * r[0] for r in rows]
    assert ev["kind"].tolist() == [r[1].value for r in rows]
    assert ev["channel"].tolist() == [r[2] for r in rows]
    assert ev["pattern"].tolist() == [r[3] for r in rows]
    assert ev["attempt"].tolist() == [r[4] for r in rows]
    assert ev["sync_offset"].tolist() == [r[5] for r in rows]
