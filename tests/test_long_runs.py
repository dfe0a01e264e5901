"""Long runs (issue 6, item 5): time extension across many wraps of the coarse counter, hardware
counter wrap, and a virtual-board soak.

**Many wraps of the coarse counter.** The gateware's time is 32 bits of cycles (43 s at 100 MHz)
and wraps; the wire encoder's epoch counter extends it to the ANCHOR's 56 bits (it counts the
falls of ``ref``'s most significant bit), and the host decoders turn ANCHOR + deltas into
absolute picoseconds. One wrap is crossed by the whole core (``counter_init``, in
tests/test_core_sim.py) and by the encoder tests. Here the encoder crosses *thousands*: the
test bench drives ``ref`` cycle by cycle through every wrap, and fast-forwards only through idle
stretches that stay within one epoch (no item offered, the segment closed by its lone CHECK,
nothing in flight). In such a stretch the encoder's state that depends on time is the epoch and
``ref``'s last MSB (both unchanged by a jump that crosses no fall of the MSB) and the segment age
(which only matters while a segment is open), so the bytes are those of a run that really idled
through the skipped cycles; the reference encoder (:func:`heraldry.wire.encode_stream`) is given
the items with their true unwrapped cycles and must produce the same bytes, and both decoders
must give back every record at its absolute time.
"""

import numpy as np
import pytest
from amaranth.sim import Simulator

from heraldry import wire
from heraldry.gateware.encoder import Encoder
from heraldry.host.decoder import StreamDecoder
from heraldry.protocol import COARSE_BITS, WIRE_ANCHOR_TIME_BITS, Kind, LossCause, time_bits

TOP = 2 ** COARSE_BITS
HALF = TOP // 2


def _payload(rec, fine_bits):
    out = {"kind": rec["kind"], "time": rec["time"] % 2 ** time_bits(fine_bits)}
    kind = rec["kind"]
    if kind == Kind.TAG:
        out["payload"] = {"tag": {"channel": rec["channel"]}}
    elif kind == Kind.COINCIDENCE:
        out["payload"] = {"coincidence": {"pattern": rec["pattern"]}}
    elif kind == Kind.HERALD:
        out["payload"] = {"herald": {"rule": rec["rule"], "pattern": rec["pattern"]}}
    else:
        out["payload"] = {"loss": {"cause": rec["cause"], "index": rec["index"],
                                   "count": rec["count"]}}
    return out


def _busy_phase(rng, start, fine_bits, channels, rules):
    """Records from absolute cycle ``start + 25..31`` to at least ``start + 50``: bundles 5 to 11
    cycles apart, each offered 1..24 cycles after its time (so a bundle from just before a wrap
    can be taken just after it). Returns ``[(offer cycle, record)]`` in offer order."""
    offers = []
    t = start + 20
    avail = 0
    for _ in range(int(rng.integers(6, 12))):
        t += int(rng.integers(5, 12))
        coarse = t << fine_bits
        records = []
        if rng.random() < 0.15:
            records.append({"kind": Kind.LOSS, "cause": LossCause.MERGER_FULL,
                            "index": int(rng.integers(0, channels)),
                            "count": int(rng.integers(1, 2 ** 16)), "time": coarse})
        mask = int(rng.integers(1, 2 ** channels))
        fines = rng.integers(0, 2 ** fine_bits, channels)
        for fine, c in sorted((int(fines[c]), c) for c in range(channels) if mask >> c & 1):
            records.append({"kind": Kind.TAG, "channel": c, "time": coarse + fine})
        if rng.random() < 0.3:
            records.append({"kind": Kind.HERALD, "rule": int(rng.integers(0, rules)),
                            "pattern": mask, "time": records[-1]["time"]})
        if rng.random() < 0.3:
            records.append({"kind": Kind.COINCIDENCE, "pattern": mask,
                            "time": coarse - int(rng.integers(0, 3))})
        avail = max(avail, t + int(rng.integers(1, 25)))
        offers += [(avail, rec) for rec in records]
    return offers


def _schedule(rng, wraps, busy_every, fine_bits, channels, rules):
    """Phases in increasing absolute cycles: ``("busy", start, offers)`` around some wraps and
    some MSB rises (``ref`` = 2**31, which must *not* count), and ``("cross", start)``: a few
    idle cycles across the other wraps."""
    phases = []
    busy_wraps = set(range(0, wraps, busy_every)) | {wraps - 1} | {
        w for w in (255, 256, 4095, 4096) if w < wraps}
    for w in range(wraps):
        boundary = (w + 1) * TOP
        if w % (2 * busy_every) == 1:
            rise = w * TOP + HALF - int(rng.integers(45, 61))
            phases.append(("busy", rise, _busy_phase(rng, rise, fine_bits, channels, rules)))
        if w in busy_wraps:
            start = boundary - int(rng.integers(45, 61))     # records on both sides
            phases.append(("busy", start, _busy_phase(rng, start, fine_bits, channels, rules)))
        else:
            phases.append(("cross", boundary - 2))
    return phases


def _run(phases, channels, rules, fine_bits, interval):
    """Simulate the encoder through ``phases``; returns (bytes, log of taken items with their
    unwrapped cycles, simulated cycles)."""
    dut = Encoder(channels, rules, fine_bits=fine_bits)
    sent = bytearray()
    log = []
    counts = {"cycles": 0}

    async def bench(ctx):
        ctx.set(dut.anchor_interval, interval)
        ctx.set(dut.o.ready, 1)
        last_cycle = -1

        async def step(cycle):
            nonlocal last_cycle
            # Jumps only forward and never across a fall of ref's MSB (the epoch's input).
            assert cycle > last_cycle
            if cycle != last_cycle + 1 and last_cycle >= 0:
                assert cycle // TOP == last_cycle // TOP, "a jump may not skip a wrap"
            ctx.set(dut.ref, cycle % TOP)
            _, _, iv, ir, ov, od = await ctx.tick().sample(dut.i.valid, dut.i.ready,
                                                           dut.o.valid, dut.o.payload)
            last_cycle = cycle
            counts["cycles"] += 1
            if ov:
                sent.append(od)
            return iv and ir, ov

        for phase in phases:
            if phase[0] == "cross":
                for cycle in (phase[1], phase[1] + 1, phase[1] + 2):
                    taken, ov = await step(cycle)
                    assert not taken and not ov
                continue
            _, cycle, offers = phase
            head, shown, quiet = 0, None, 0
            while head < len(offers) or quiet < interval + 24:
                offer = offers[head] if head < len(offers) and offers[head][0] <= cycle else None
                if offer is not shown:
                    ctx.set(dut.i.valid, offer is not None)
                    if offer is not None:
                        ctx.set(dut.i.payload, _payload(offer[1], fine_bits))
                    shown = offer
                taken, ov = await step(cycle)
                if taken:
                    log.append({**offer[1], "cycle": cycle})
                    head += 1
                quiet = 0 if (taken or ov or offer is not None) else quiet + 1
                cycle += 1
            # Idle: the segment was closed by its lone CHECK, no byte is in flight.

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return bytes(sent), log, counts["cycles"]


@pytest.mark.parametrize("fine_bits, wraps, busy_every, seed", [
    pytest.param(0, 4200, 97, 1, marks=pytest.mark.slow),       # thousands of wraps: slow tier
    (2, 600, 41, 2)])
def test_time_extension_across_thousands_of_wraps(fine_bits, wraps, busy_every, seed):
    channels, rules, interval = 4, 2, 48
    rng = np.random.default_rng(seed)
    phases = _schedule(rng, wraps, busy_every, fine_bits, channels, rules)
    data, log, cycles = _run(phases, channels, rules, fine_bits, interval)
    # Byte for byte the reference encoder's, given the true unwrapped cycles.
    expected = wire.encode_stream(log, channels, rules, fine_bits, anchor_interval=interval)
    assert data == expected
    # The reference decoder gives back every record at its absolute time (far beyond 2**32
    # cycles), each segment verified.
    records, errors = wire.decode_bytes(data, channels, rules, fine_bits)
    assert errors == {"decode_errors": 0, "skipped_bytes": 0, "unverified": 0}
    data_records = [r for r in records if r["kind"] not in ("anchor", "time", "check")]
    assert len(data_records) == len(log)
    for got, want in zip(data_records, log):
        if want["kind"] == Kind.LOSS:
            assert (got["cause"], got["index"], got["count"]) == \
                (want["cause"], want["index"], want["count"])
        else:
            assert got["time"] == want["time"] and got["kind"] == want["kind"]
    anchors = [r["time"] for r in records if r["kind"] == "anchor"]
    assert anchors == sorted(anchors) and anchors[-1] >> fine_bits > (wraps - 1) * TOP
    assert anchors[-1] < 2 ** WIRE_ANCHOR_TIME_BITS
    # The fast decoder: the same times, in ps (bin 10 ns / 2**F).
    bin_fs = 10_000_000 >> fine_bits
    decoder = StreamDecoder(channels, rules, fine_bits, bin_fs)
    block = decoder.feed(data)
    tail = decoder.close()
    events = np.concatenate([block.events, tail.events])
    assert decoder.decode_errors == decoder.unverified == decoder.skipped_bytes == 0
    timed = [r for r in log if r["kind"] != Kind.LOSS]
    got = events[events["kind"] != Kind.LOSS.value]
    assert got["time_ps"].tolist() == [r["time"] * bin_fs // 1000 for r in timed]
    # What was crossed: every wrap, records on both sides of many of them (the bench asserted
    # that no jump skips a wrap), records at the epoch counter's carries into bits 8 and 12.
    epochs = {(r["time"] >> fine_bits) // TOP for r in log}
    assert max(epochs) == wraps and len(epochs) > wraps // busy_every
    for carry in (256, 4096):
        if carry < wraps:
            assert carry in epochs and carry - 1 in epochs
    # A bundle timed before a wrap but taken after it (unwrapped into the earlier epoch).
    assert any(r["time"] >> fine_bits < r["cycle"] // TOP * TOP <= r["cycle"] for r in log)
    print(f"F={fine_bits}: {wraps} wraps, {len(log)} records, {cycles} simulated cycles, "
          f"last anchor at {anchors[-1] >> fine_bits} cycles "
          f"({(anchors[-1] >> fine_bits) / 100e6 / 86400:.1f} days at 100 MHz)")


# -- Hardware counter wrap -----------------------------------------------------------------------
#
# The counters' own wrap (modulo 2**32, never saturating) is tested on the gateware in
# tests/gateware/test_counters.py::test_wrap. What the host makes of it is tested here: a counter
# that wraps between two reads, and many wraps over a long run.

def test_counter_tally_extends_across_many_wraps():
    """Random increments up to 2**32 - 1 between reads, 2000 reads: the tally is the true
    cumulative count (about 2000 * 2**31, i.e. 1000 wraps per counter)."""
    from heraldry.host.tally import CounterTally
    rng = np.random.default_rng(5)
    start = {"singles": [0, 2 ** 32 - 1, 17], "heralds": [2 ** 31]}
    tally = CounterTally(start)
    true = {g: [0] * len(v) for g, v in start.items()}
    raw = {g: list(v) for g, v in start.items()}
    for _ in range(2000):
        for group, values in raw.items():
            for i in range(len(values)):
                step = int(rng.choice([0, 1, 2 ** 32 - 1, int(rng.integers(0, 2 ** 32))]))
                true[group][i] += step
                values[i] = (values[i] + step) % 2 ** 32
        got = tally.update({g: list(v) for g, v in raw.items()})
    assert got == true and tally.reads == 2000
    assert min(min(v) for v in true.values()) > 500 * 2 ** 32
    with pytest.raises(ValueError, match="differ from the baseline"):
        tally.update({"singles": [0, 0, 0]})
    with pytest.raises(ValueError, match="not a 32-bit count"):
        tally.update({"singles": [0, 0, 2 ** 32], "heralds": [0]})


def test_counters_that_wrap_during_a_run_on_the_virtual_board():
    """A board whose every counter stands a few counts below 2**32 at the clear (as after a long
    run: emulated by adding a preset to each counter the driver reads, modulo 2**32; the
    counters of the gateware cannot be preset through the link), run with the pairs test signal
    so that most counters wrap mid-run. :func:`acquire_device` reads the counters during the
    run and returns their counts since the clear: the streamed tags and the reference model's
    counts recomputed from them equal those counts exactly."""
    from heraldry.host.acquire import acquire_device, summarise
    from heraldry.host.config import Acquisition
    from heraldry.host.driver import Device
    from heraldry.host.transport import SerialTransport
    from heraldry.sim.twin import Twin

    reads = []

    class PresetBoard(Device):
        def counters(self):
            counters = super().counters()
            # Counter k of a group starts 1 + (7k mod 40) below the wrap.
            raw = {g: [(v - 1 - (7 * k) % 40) % 2 ** 32 for k, v in enumerate(values)]
                   for g, values in counters.items()}
            reads.append(raw)
            return raw

    acq = Acquisition(window_bins=2, herald_masks=[0b0011, 0b0001],
                      coincidence_record_mask=1 << 0b0011, test_signal="pairs",
                      pair_rate_hz=1e5, efficiency=0.5, dark_rate_hz=1e4, seed=4)
    with Twin() as twin, PresetBoard(SerialTransport(twin.port, twin.baud), timeout=3.0) as dev:
        dev.identify()
        # Read the counters every 10**5 cycles (the default is every 2**30 cycles).
        result = acquire_device(dev, acq, 0.01, counter_read_cycles=100_000, poll=0.005)
    summary = summarise(result)
    drops = {k: summary[k] for k in ("merger_dropped", "delay_dropped", "herald_dropped",
                                     "coincidence_dropped", "host_dropped")}
    assert all(summary["checks"].values()) and summary["dropped"] == 0, (summary["checks"], drops)
    assert "singles_recomputed_from_tags" in summary["checks"]
    assert summary["tags_per_channel"] == summary["singles"] and summary["singles"][0] > 300
    # The raw reads did wrap mid-run (a later read below an earlier one) on the busy counters,
    # with reads in between: the baseline, at least one during the run (polls every 5 ms of
    # wall time for a run of about 0.1 s; more on an idle machine), the final one.
    assert len(reads) >= 3
    for group, index in (("singles", 0), ("singles", 1), ("patterns", 2), ("heralds", 0)):
        values = [r[group][index] for r in reads]
        assert values[0] > 2 ** 32 - 50 and values[-1] < 1000, (group, values)
    # Counters that never moved stay at their (wrapped) baseline and count 0.
    assert summary["merger_dropped"] == [0] * 4 and reads[-1]["merger_dropped"][0] == 2 ** 32 - 1


# -- Virtual-board soak ------------------------------------------------------------------------

#: Device cycles of the soak: 10 s of device time at 100 MHz.
SOAK_CYCLES = 10 ** 9


@pytest.mark.slow
@pytest.mark.soak
def test_soak_a_billion_cycles_every_event_accounted(tmp_path):
    """``heraldry acquire --board sim`` for 10**9 cycles (10 s of device time; about 7 minutes of
    wall time at the virtual board's 2.4 M cycles/s on an idle core, 16 minutes measured on a
    machine loaded by other jobs) with the pairs test signal, two herald
    rules and a recorded coincidence pattern: nothing dropped, every byte verified, per channel
    the streamed tags equal the singles counters, and the reference model recomputes every
    singles, pattern and herald counter from the 10 s of streamed tags exactly. The counters
    pass 2**32 only in runs 40 times longer; their wrap is tested above."""
    import json
    import subprocess
    import sys
    import time
    from heraldry.sim.twin import build_twin
    build_twin(4, 2, 100_000_000, 12_000_000)
    summary_path = tmp_path / "soak.json"
    wall = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "heraldry.host.cli", "acquire", "--board", "sim", "--quiet",
         "--duration", str(SOAK_CYCLES / 100e6), "--window", "20", "--delay", "0=30",
         "--herald", "0b0011", "--herald", "0b0101", "--record-coincidences", "0b0011",
         "--test-signal", "pairs", "--pair-rate", "1e5", "--efficiency", "0.5",
         "--dark-rate", "2e4", "--pair-delay", "30", "--seed", "11",
         "--summary-json", str(summary_path)],
        capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - wall
    assert proc.returncode == 0, proc.stderr
    s = json.loads(summary_path.read_text())
    assert s["checks"] == {
        "tags_plus_lost_equal_singles": True, "loss_records_equal_drop_counters": True,
        "singles_recomputed_from_tags": True,
        "patterns_recomputed_from_tags": True, "heralds_recomputed_from_tags": True}
    assert s["stream_verified"] and s["link_lost_per_channel"] == [0] * 4
    assert s["dropped"] == 0 and s["dropped_per_channel"] == [0] * 4
    assert s["decode_errors"] == s["unverified"] == s["skipped_bytes"] == 0
    assert s["tags_per_channel"] == s["singles"]
    assert s["herald_records"] == s["heralds"][0] + s["heralds"][1]
    assert s["coincidence_records"] == s["patterns"]["3"]
    cycles = s["device_seconds"] * 100e6
    assert cycles >= SOAK_CYCLES - 10 ** 6
    # Rates: the arms about 5 * 10^4 + 2 * 10^4 per second of device time.
    assert 6e5 < s["singles"][0] < 8e5
    print(f"soak: {cycles:.4g} cycles, {s['tags']} tags, {s['link_bytes']} link bytes, "
          f"{wall:.0f} s wall, {cycles / wall:.3g} cycles/s")
