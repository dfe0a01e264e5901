"""The attempt clock end to end on the Verilated virtual board built with gates (issue 13 items
2 and 5): every sync edge streamed as a marker (``sync_marker_every=1``), so the stream itself
says which attempt each herald record belongs to; the records that ``Tagger.run`` yields carry
exactly that attempt number and the bins from that attempt's sync edge, as the board sent them
through the link, the fast decoder and the driver. The sync comes from a pins FIFO on channel 3
(every 1000 cycles, for as long as the board runs), the heralds from the BSM source's dark
counts on D0..D2 inside their gates."""

import numpy as np
import pytest

from heraldry.protocol import Kind
from test_gates_twin import gates_board_with_sync

pytestmark = pytest.mark.slow

PERIOD_CYCLES = 1000
DURATION_S = 0.01      # at 1e6 dark counts/s per detector: ~0.5 MB/s of herald records and markers


def test_herald_records_carry_the_attempt_the_markers_count():
    from heraldry.host.events import SYNC_OFFSET_NONE
    from heraldry.host.tagger import Settings

    settings = Settings(
        window_ns=40, test_signal="bsm", period_ns=PERIOD_CYCLES * 10.0,
        bsm_event_probability=0.0, dark_rate_hz=1e6, seed=13, sync=3, pin_channels=(3,),
        sync_marker_every=1, gates_ns={c: (40.0, 4000.0) for c in range(3)},
        heralds=("D0&D1", "D1&D2,exact"), stream={c: "none" for c in range(3)})
    blocks = []
    seen = []           # the counters the progress calls brought (a live view shows them)

    def progress(done, total, stats):
        if "counters" in stats:
            seen.append((stats["counters"]["singles"][3], stats["counters"]["gated_out"][:3]))
    with gates_board_with_sync(PERIOD_CYCLES) as tagger:
        bin_ps = tagger.identity.bin_ps
        with tagger.run(settings, duration=DURATION_S, progress=progress,
                        status_interval=DURATION_S / 8) as run:
            for block in run:
                blocks.append(block.events)
        counts = run.counters
    events = np.concatenate(blocks)
    markers = events["time_ps"][(events["kind"] == Kind.TAG.value) & (events["channel"] == 3)]
    heralds = events[events["kind"] == Kind.HERALD.value]
    print(f"{len(markers)} sync markers, {counts['singles'][3]} attempts counted, "
          f"{len(heralds)} herald records ({counts['heralds'][:2]} counted)")
    # Every sync edge streamed: the markers are the attempts, and nothing else streams.
    assert len(markers) == counts["singles"][3] >= DURATION_S * 1e8 / PERIOD_CYCLES
    assert np.all(np.diff(markers) == PERIOD_CYCLES * bin_ps)
    assert len(heralds) == sum(counts["heralds"][:2]) > 20
    # Attempt = sync edges at or before the record's time; offset = bins since the latest.
    attempt = np.searchsorted(markers, heralds["time_ps"], side="right")
    assert heralds["attempt"].tolist() == attempt.tolist()
    assert np.all(attempt >= 1)               # gated detectors fire only after a sync edge
    offset = (heralds["time_ps"] - markers[attempt - 1]) // bin_ps
    assert heralds["sync_offset"].tolist() == np.minimum(offset, SYNC_OFFSET_NONE).tolist()
    # Early rule D0&D1: its completing event is kept, so inside the gate (offsets 4 .. 403).
    early = heralds[heralds["channel"] == 0]
    assert len(early) and np.all((early["sync_offset"] >= 4) & (early["sync_offset"] < 404))
    # Progress calls carry the run's counters once read (snapshots every 1/8 of the run), never
    # the zeros of the start: attempts and gated-out events rise.
    assert seen and seen[0][0] > 0 and sum(seen[-1][1]) > 0
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    others = events[events["kind"] != Kind.HERALD.value]
    assert not others["attempt"].any() and not others["sync_offset"].any()
