"""``heraldry acquire --board sim`` end to end: the Verilated virtual board behind a pty, the
serial transport, the driver and the stream decoder, exactly the path of a real board.

The streamed tags are compared with the reference model fed the test signal's own model
(``heraldry.model.testsignal.generate`` + ``heraldry.model.simulate``). The device's run start is
only known to within one command round trip: the summary gives the ``control.now`` counts read
just before and after the clear, start and stop commands, which bound the test signal's cycle 0
and the run gate; the test finds the one test-signal origin in those bounds that explains the
tags, takes the narrowest gate that holds them, and requires that gate to lie within the bounds
and the hardware counters to equal the model's for it.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from heraldry import model
from heraldry.model import testsignal as tsmodel

PHY_LATENCY = 1          # GenericPHY.latency, checked below
CLOCK_HZ = 100_000_000
BIN_PS = 10_000
# The command round trip is not exact to the cycle on either side.
SLACK = 4


@pytest.fixture(scope="module", autouse=True)
def twin_built():
    """Build the virtual board once, before the timed commands (about a minute, cached)."""
    from heraldry.sim.twin import build_twin
    build_twin(4, 2, CLOCK_HZ, 12_000_000)   # g++ and make are required: fail, never skip


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "heraldry.host.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def _acquire(tmp_path, *args):
    out, summary = tmp_path / "tags.npz", tmp_path / "summary.json"
    proc = _cli("acquire", "--board", "sim", "--out", str(out), "--summary-json", str(summary),
                *args)
    assert summary.exists(), proc.stderr
    data = np.load(out)
    return proc, json.loads(summary.read_text()), data["channel"], data["time_ps"]


def test_phy_latency_constant_matches_gateware():
    from heraldry.gateware.phy import GenericPHY
    assert GenericPHY.latency == PHY_LATENCY


def _find_origin(tag_bins, tag_channels, delays, ks, bounds):
    """Every test-signal origin (``now`` in cycle k = 0) within ``bounds`` under which each tag
    is one of the generated events: a tag of channel c at bin t is the event of cycle
    ``t - delay[c] - origin + PHY_LATENCY``."""
    lo, hi = bounds[0] - SLACK, bounds[1] + SLACK
    # Candidates from the first tag, then every tag must agree.
    c0, t0 = int(tag_channels[0]), int(tag_bins[0])
    candidates = t0 - delays[c0] + PHY_LATENCY - ks[c0]
    candidates = candidates[(candidates >= lo) & (candidates <= hi)]
    found = []
    for origin in candidates.tolist():
        k = tag_bins - np.asarray(delays)[tag_channels] + PHY_LATENCY - origin
        if all(np.isin(k[tag_channels == c], ks[c]).all() for c in range(len(ks))):
            found.append(origin)
    return found


def test_pairs_stream_equals_the_model(tmp_path):
    proc, summary, channels, time_ps = _acquire(
        tmp_path, "--duration", "0.01", "--channels", "4", "--window", "20",
        "--delay", "0=30", "--delay", "3=20", "--herald", "0b0011", "--herald", "0b0101",
        "--record-coincidences", "0b0011", "--test-signal", "pairs", "--pair-rate", "2e5",
        "--efficiency", "0.5", "--dark-rate", "3e4", "--pair-delay", "30", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert all(summary["checks"].values()) and summary["dropped"] == 0
    assert summary["port"].startswith("/dev/") and summary["decode_errors"] == 0
    assert summary["unverified"] == 0 and summary["skipped_bytes"] == 0
    assert len(channels) == summary["tags"] > 1000
    assert 1 < summary["bytes_per_event"] < 4 and summary["link_bytes"] > 2 * summary["tags"]

    delays = [3, 0, 0, 2]
    bounds = summary["device_cycles"]
    ts = tsmodel.TestSignalSettings(
        seed=3, period=0, pair_threshold=tsmodel.probability_threshold(2e5 / CLOCK_HZ),
        eta_a=tsmodel.probability_threshold(0.5), eta_b=tsmodel.probability_threshold(0.5),
        pair_delay=3, dark=(tsmodel.probability_threshold(3e4 / CLOCK_HZ),) * 4,
        sources=("pair_a", "pair_b", "periodic", "periodic"))
    clear_lo = bounds["clear"][0] - SLACK
    ks = tsmodel.generate(ts, bounds["stop"][1] - clear_lo + 64)
    tag_bins = time_ps // BIN_PS
    assert np.all(time_ps % BIN_PS == 0)
    origins = _find_origin(tag_bins, channels.astype(np.int64), delays, ks, bounds["clear"])
    assert len(origins) == 1, origins
    rise = [k + origins[0] - PHY_LATENCY for k in ks]

    # The narrowest gate (input bins) that holds every streamed tag, within the command bounds:
    # the gate opens in the cycle the run register is set (now = r, bins from r - latency).
    inputs = tag_bins - np.asarray(delays)[channels]
    gate = (int(inputs.min()), int(inputs.max()) + 1)
    start, stop = bounds["start"], bounds["stop"]
    assert start[0] - PHY_LATENCY - SLACK <= gate[0]
    assert gate[1] <= stop[1] - PHY_LATENCY + SLACK
    # Nothing generated inside the bounds of the start and stop is missing from the stream.
    all_inputs = np.concatenate([r for r in rise])
    assert not np.any((all_inputs >= start[1] + SLACK) & (all_inputs < gate[0]))
    assert not np.any((all_inputs >= gate[1]) & (all_inputs < stop[0] - PHY_LATENCY - SLACK))

    settings = model.CoreSettings(
        channels=4, window=2, herald_masks=(0b0011, 0b0101),
        coincidence_record_mask=1 << 0b0011,
        channel=tuple(model.ChannelSettings(delay=d) for d in delays))
    fall = [np.zeros(0, np.int64)] * 4
    expected = model.simulate(rise, fall, settings, gate=[gate])
    order = np.lexsort((channels, tag_bins))
    assert np.all(order == np.arange(len(order)))          # streamed in time, channel order
    assert tag_bins.tolist() == expected.tags["time"].tolist()
    assert channels.tolist() == expected.tags["channel"].tolist()
    assert summary["singles"] == expected.singles.tolist()
    assert [summary["patterns"][str(p)] for p in range(1, 16)] == expected.patterns[1:].tolist()
    assert summary["heralds"] == expected.herald_counts.tolist()
    assert summary["herald_records"] == len(expected.heralds)
    assert summary["coincidence_records"] == len(expected.coincidence_records)
    assert summary["patterns"]["3"] > 100                    # the pairs line up


def test_far_above_link_rate_every_drop_is_accounted(tmp_path):
    """Every channel fires every 3 cycles (133 M events/s) into a 12 Mbaud link (1.2 MB/s):
    nearly everything is dropped, and the loss records account for each event exactly."""
    proc, summary, channels, time_ps = _acquire(
        tmp_path, "--duration", "0.002", "--channels", "4", "--window", "10",
        "--herald", "0b0011", "--test-signal", "periodic", "--period", "30", "--dark-rate", "0",
        "--quiet")
    assert proc.returncode == 3, proc.stderr                 # completed, with drops
    assert summary["stream_verified"] and summary["decode_errors"] == 0
    singles = summary["singles"]
    tags = np.bincount(channels, minlength=4).tolist()
    lost = summary["loss_records"]["MERGER_FULL"]
    assert [t + m for t, m in zip(tags, lost)] == singles
    assert lost == summary["merger_dropped"] and sum(lost) > 10 * sum(tags) > 0
    # Independent count: one event per channel every 3 cycles while the gate was open.
    start, stop = summary["device_cycles"]["start"], summary["device_cycles"]["stop"]
    assert len(set(singles)) == 1
    assert (stop[0] - start[1]) // 3 - 1 <= singles[0] <= (stop[1] - start[0]) // 3 + 1
    heralds = summary["herald_records"] + summary["loss_records"]["HERALD_RECORD"][0]
    assert heralds == summary["heralds"][0] == singles[0]
    assert summary["herald_dropped"][0] == summary["loss_records"]["HERALD_RECORD"][0]
    assert summary["dropped"] == sum(lost) + summary["loss_records"]["HERALD_RECORD"][0]
    # The tags that made it are periodic events with their exact times: one phase modulo 3.
    assert len(set((time_ps // BIN_PS % 3).tolist())) == 1
    assert np.all(np.diff(time_ps) >= 0)


def test_sim_command_serves_a_board_until_interrupted(tmp_path):
    """``heraldry sim`` prints a port; two clients in turn use it (identification, and a whole
    ``acquire --board PORT`` that learns the board from its identification); Ctrl-C ends it."""
    from heraldry.host.driver import Device
    from heraldry.host.transport import SerialTransport
    proc = subprocess.Popen([sys.executable, "-m", "heraldry.host.cli", "sim", "--channels", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = proc.stdout.readline().strip()
        assert os.path.exists(port), proc.stderr.read() if proc.poll() is not None else port
        with Device(SerialTransport(port)) as device:
            ident = device.identify()
            assert (ident.channels, ident.rules, ident.clock_hz) == (4, 2, CLOCK_HZ)
        summary_path = tmp_path / "summary.json"
        result = _cli("acquire", "--board", port, "--duration", "0.001", "--herald", "0b0011",
                      "--test-signal", "pairs", "--pair-rate", "1e5",
                      "--summary-json", str(summary_path), "--quiet")
        assert result.returncode == 0, result.stderr
        summary = json.loads(summary_path.read_text())
        assert summary["board"] == port == summary["port"] and summary["channels"] == 4
        assert all(summary["checks"].values()) and summary["tags"] > 0
        refused = _cli("acquire", "--board", port, "--channels", "3", "--quiet")
        assert refused.returncode == 2 and "the board has 4 channels" in refused.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sim_command_stops_on_sighup():
    """``heraldry sim`` whose terminal closes (SIGHUP) stops as on Ctrl-C: exit 0 and the
    virtual board's process ended (SIGHUP's default action ended only this process)."""
    from pathlib import Path
    import time
    proc = subprocess.Popen([sys.executable, "-m", "heraldry.host.cli", "sim", "--channels", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = proc.stdout.readline().strip()
        assert os.path.exists(port), proc.stderr.read() if proc.poll() is not None else port
        children = [int(c) for t in Path(f"/proc/{proc.pid}/task").iterdir()
                    for c in (t / "children").read_text().split()]
        twins = [c for c in children
                 if "heraldry_twin" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(twins) == 1, children
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{twins[0]}") and time.monotonic() < deadline:
            try:        # a zombie until reaped by its parent (gone): only its state is left
                if Path(f"/proc/{twins[0]}/stat").read_text().split(")")[1].split()[0] == "Z":
                    break
            except OSError:
                break
            time.sleep(0.05)
        else:
            assert not os.path.exists(f"/proc/{twins[0]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
