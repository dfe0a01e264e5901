"""Overload on the virtual board (issue 6, item 1): far more events than the link carries and
than the merger's FIFO drains, and every one of them accounted for.

``heraldry acquire --board sim`` runs the periodic test signal on every channel every 3 cycles
(4 channels: 1.33 events per cycle into a serialiser that emits one record per cycle, and a
12 Mbaud link that carries about 0.01 bytes per cycle). Channel 0 also goes through a delay of
610 ns (61 bins): 20 events in flight in a delay line that holds 16, so the delay line drops too,
and its events land one bin after the others'. One herald rule and one recorded coincidence
pattern put herald and coincidence records into the overload.

What must hold, per channel, exactly:

* streamed tags + in-band ``MERGER_FULL`` loss counts (+ host-queue drops) == hardware singles
  (singles count the events that reach the coincidence unit, after the delay line);
* in-band ``DELAY_FULL`` loss counts == the ``delay_dropped`` counter, and singles +
  ``delay_dropped`` == the events the test signal generated while the gate was open (periodic:
  known to within one event from the start/stop command bounds);
* ``dropped_per_channel`` (one entry per input) is what the channel lost, all causes, so
  tags + ``dropped_per_channel`` == generated events;
* herald records + ``HERALD_RECORD`` losses == herald counter; coincidence records +
  ``COINCIDENCE_RECORD`` losses == the recorded pattern's counter;
* the PTU file written while the run went on has the events-dropped warning flag, the number of
  dropped events and the FIFO-overrun stop reason, the summary in its header says the same, and
  the exit status is 3 ("completed, but events were dropped").
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from heraldry.host.ptu import WARNING_EVENTS_DROPPED, StopReason, read_ptu

CLOCK_HZ, BIN_PS, PERIOD = 100_000_000, 10_000, 3


@pytest.fixture(scope="module", autouse=True)
def twin_built():
    from heraldry.sim.twin import build_twin
    build_twin(4, 2, CLOCK_HZ, 12_000_000)      # g++ and make are required: fail, never skip


def _acquire(tmp_path, *args):
    summary_path, out = tmp_path / "summary.json", tmp_path / "run.ptu"
    proc = subprocess.run(
        [sys.executable, "-m", "heraldry.host.cli", "acquire", "--board", "sim", "--quiet",
         "--summary-json", str(summary_path), "--out", str(out), *args],
        capture_output=True, text=True, timeout=600)
    assert summary_path.exists(), proc.stderr
    return proc, json.loads(summary_path.read_text()), out


@pytest.fixture(scope="module")
def overload(tmp_path_factory):
    return _acquire(
        tmp_path_factory.mktemp("overload"), "--duration", "0.002", "--channels", "4",
        "--window", "10", "--delay", "0=610", "--herald", "0b0110",
        "--record-coincidences", "0b1110", "--test-signal", "periodic",
        "--period", str(PERIOD * BIN_PS / 1000), "--dark-rate", "0")


def test_every_event_is_accounted_per_channel(overload):
    proc, s, _ = overload
    assert proc.returncode == 3, proc.stderr                 # completed, with drops
    assert s["checks"] and all(s["checks"].values()), s["checks"]
    assert s["decode_errors"] == 0 and s["unverified"] == 0 and s["skipped_bytes"] == 0
    n = s["channels"]
    loss = s["loss_records"]
    tags, singles = s["tags_per_channel"], s["singles"]
    host = s["host_dropped"]
    # The streamed tags and the in-band losses account for the singles counters, exactly.
    assert [t + m + h for t, m, h in zip(tags, loss["MERGER_FULL"], host)] == singles
    assert loss["MERGER_FULL"] == s["merger_dropped"] and loss["DELAY_FULL"] == s["delay_dropped"]
    # It was an overload: most events dropped in the merger on every channel, and the delay line
    # of channel 0 (20 events in flight, 16 places) dropped about a fifth of that channel's.
    assert all(m > 5 * t > 0 for m, t in zip(loss["MERGER_FULL"], tags))
    assert s["delay_dropped"][1:] == [0] * (n - 1)
    generated = [singles[c] + s["delay_dropped"][c] for c in range(n)]
    assert 0.1 < s["delay_dropped"][0] / generated[0] < 0.35
    # dropped_per_channel: one entry per input, every cause; tags + dropped = generated.
    assert len(s["dropped_per_channel"]) == n
    assert [t + d for t, d in zip(tags, s["dropped_per_channel"])] == generated
    # Independent of every counter: one event per channel every PERIOD cycles while the gate was
    # open, i.e. between the start and stop commands (bounds read around each command).
    start, stop = s["device_cycles"]["start"], s["device_cycles"]["stop"]
    for c in range(n):
        assert (stop[0] - start[1]) // PERIOD - 1 <= generated[c] <= \
            (stop[1] - start[0]) // PERIOD + 1, (c, generated[c], start, stop)


def test_herald_and_coincidence_records_are_accounted(overload):
    _, s, _ = overload
    loss = s["loss_records"]
    # Channels 1, 2 and 3 fire in the same bin (pattern 0b1110; channel 0's events come one bin
    # later, in windows of their own): rule 0b0110 fires once per such window.
    assert s["heralds"][0] == s["patterns"][str(0b1110)] > 0
    assert s["herald_records"] + loss["HERALD_RECORD"][0] == s["heralds"][0]
    assert loss["HERALD_RECORD"][0] == s["herald_dropped"][0] > 0
    assert loss["HERALD_RECORD"][1] == s["herald_dropped"][1] == 0
    recorded = s["patterns"][str(0b1110)]
    assert s["coincidence_records"] + loss["COINCIDENCE_RECORD"][0] == recorded
    assert loss["COINCIDENCE_RECORD"][0] == s["coincidence_dropped"][0]
    # "dropped" is every lost item: the per-channel losses plus lost herald and coincidence
    # records.
    assert s["dropped"] == (sum(s["dropped_per_channel"]) + sum(s["herald_dropped"])
                            + sum(s["coincidence_dropped"]))


def test_ptu_header_says_events_were_dropped(overload):
    _, s, out = overload
    data = read_ptu(out)
    tags = data.tags
    assert tags["TTResult_MDescWarningFlags"] & WARNING_EVENTS_DROPPED
    assert tags["Heraldry_EventsLost"] == s["dropped"] > 0
    # The run ran its time, but the device's FIFO overran: PicoQuant's FIFO-overrun reason.
    assert tags["TTResult_StopReason"] == StopReason.FIFO_OVERRUN
    assert tags["MeasDesc_AcquisitionTime"] == round(s["device_seconds"] * 1e3)
    assert json.loads(tags["Heraldry_Summary"]) == s
    # Every streamed record is in the file: tags on 0..3, heralds on 4.., coincidences after.
    channel = data.channel
    assert np.bincount(channel[channel < 4], minlength=4).tolist() == s["tags_per_channel"]
    assert len(channel) == s["tags"] + s["herald_records"] + s["coincidence_records"]


def test_summary_table_shows_the_drops(tmp_path):
    """The printed table has the dropped column and the warning line (no --quiet)."""
    summary_path = tmp_path / "s.json"
    proc = subprocess.run(
        [sys.executable, "-m", "heraldry.host.cli", "acquire", "--board", "sim",
         "--duration", "0.0005", "--test-signal", "periodic", "--period", "20",
         "--dark-rate", "0", "--summary-json", str(summary_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr
    s = json.loads(summary_path.read_text())
    lines = proc.stdout.splitlines()
    assert "channel   singles      tags   dropped" in lines[1]
    for c in range(4):
        assert lines[2 + c].split() == [str(c), str(s["singles"][c]),
                                        str(s["tags_per_channel"][c]),
                                        str(s["dropped_per_channel"][c])]
    assert s["dropped"] > 0 and f"WARNING: {s['dropped']} events/records were dropped" \
        in proc.stdout


def test_host_queue_drops_are_accounted():
    """The other place events can be lost: the host's queue of decoded blocks (here one block
    deep, read every 0.2 s). Its drops are counted per channel and are part of
    ``dropped_per_channel``: tags + host drops = singles, exactly; a PTU file of such a run gets
    the queue-overrun stop reason."""
    from heraldry.host.acquire import acquire_device, summarise
    from heraldry.host.cli import _completed_stop_reason
    from heraldry.host.config import Acquisition
    from heraldry.host.driver import Device
    from heraldry.host.transport import SerialTransport
    from heraldry.sim.twin import Twin
    acq = Acquisition(window_bins=2, herald_masks=[0b0011], test_signal="pairs",
                      pair_rate_hz=2e5, dark_rate_hz=1e4)
    with Twin() as twin, Device(SerialTransport(twin.port, twin.baud), timeout=3.0,
                                queue_blocks=1) as device:
        device.identify()
        result = acquire_device(device, acq, 0.01, poll=0.2)
    s = summarise(result)
    assert sum(s["host_dropped"]) > 0 and s["merger_dropped"] == [0] * 4
    assert [t + h for t, h in zip(s["tags_per_channel"], s["host_dropped"])] == s["singles"]
    assert s["dropped_per_channel"] == s["host_dropped"]
    assert s["checks"]["tags_plus_lost_equal_singles"] and s["stream_verified"]
    assert s["dropped"] >= sum(s["host_dropped"])
    assert _completed_stop_reason(s) == StopReason.QUEUE_OVERRUN
