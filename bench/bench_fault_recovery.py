"""Events recovered through a damaged link, against the byte fault rate.

The virtual board (``sim/twin.py``) streams its pairs test signal (2 * 10^5 pairs/s, 50 %
detection per arm, about 2 * 10^5 tags/s, 0.2 s of device time) through the fault-injecting
relay (``sim/faults.py``) to the driver and the stream decoder (``heraldry.host.acquire``).
``byte_fault_rate`` is the probability that a byte from the board is hit by a fault, spread
evenly over drop, flip (one bit), duplicate and delay (up to 50 ms; a delay changes no byte).
``events_recovered_fraction`` = tags emitted / tags the board counted (its singles counters,
read over the same faulty link and confirmed); ``decode_errors`` = records in damaged segments;
``faults_injected`` = the faults the relay injected into the board's bytes in that run.

A damaged segment loses all its events, so recovery depends on the segment length. Two series:
the gateware's default ``control.anchor_interval`` (2^20 cycles, 10.5 ms, about 5 kB per
segment here) and a short one (2^14 cycles, 164 us, about 90 bytes per segment, 15 bytes of
ANCHOR + CHECK each: 7 % of a 12 Mbaud link). Beside each measured fraction the table prints what
independent byte faults predict from the board's own segments (the relay keeps the clean
stream): sum over segments of tags * (1 - 3/4 rate)^bytes, over all tags.
"""

import time

import numpy as np

CHANNELS, RULES = 4, 2
RATES = (1e-5, 1e-4, 1e-3, 1e-2)
DURATION_S = 0.2
ANCHORS = {"default": 2 ** 20, "short": 2 ** 14}


def _segment_tags(clean):
    """``(bytes, tags)`` of every segment of a clean stream (ANCHOR .. CHECK)."""
    from heraldry.protocol import Kind, WireKind
    from heraldry.wire import WireFormat, split_records
    out, size, tags = [], None, 0
    for rec in split_records(clean):
        kind = WireFormat.record_kind(rec[0])
        if kind is WireKind.ANCHOR:
            size, tags = 0, 0
        if size is None:
            continue
        size += len(rec)
        tags += kind is Kind.TAG
        if kind is WireKind.CHECK:
            out.append((size, tags))
            size = None
    return np.array(out, np.float64).reshape(-1, 2)


def _run(binary, rate, anchor_interval, seed):
    from heraldry.host.acquire import acquire_device
    from heraldry.host.config import Acquisition
    from heraldry.host.driver import Device
    from heraldry.host.transport import SerialTransport
    from heraldry.sim.faults import FaultRelay, Faults
    from heraldry.sim.twin import Twin

    acq = Acquisition(channels=CHANNELS, rules=RULES, window_bins=2, delays_bins=[3, 0, 0, 0],
                      herald_masks=[0b0011], pair_rate_hz=2e5, pair_delay_bins=3)
    start = time.monotonic()
    with Twin(binary) as twin:
        with FaultRelay(twin.port, to_host=Faults.uniform(rate), seed=seed, record=True) as relay:
            with Device(SerialTransport(relay.port), timeout=0.25, retries=8) as device:
                result = acquire_device(device, acq, DURATION_S, anchor_interval=anchor_interval)
                stats = device.stats()
            clean = relay.clean
            faults = relay.counts["to_host"]
    counted = sum(result.counters["singles"])
    segments = _segment_tags(clean)
    survive = (1 - 0.75 * rate) ** segments[:, 0]
    predicted = float((segments[:, 1] * survive).sum() / max(1, segments[:, 1].sum()))
    return {
        "byte_fault_rate": rate,
        "events_recovered_fraction": round(len(result.tags) / counted, 5) if counted else None,
        "decode_errors": int(stats["decode_errors"]),
        # at 1e-5 a run of 10^5 bytes may see no fault at all: say so beside the fraction
        "faults_injected": sum(faults[k] for k in ("drop", "flip", "duplicate", "delay")),
    }, {
        "predicted": predicted, "tags": len(result.tags), "counted": counted,
        "segments": len(segments), "segment_bytes": float(segments[:, 0].mean()),
        "skipped": stats["skipped_bytes"], "unverified": stats["unverified"],
        "resends": stats["resends"], "mismatches": stats["reply_mismatches"],
        "seconds": time.monotonic() - start,
    }


def run():
    from heraldry.sim.twin import build_twin
    binary = build_twin(CHANNELS, RULES)
    figures = {}
    print(f"  {'anchor':>7} {'rate':>7} {'recovered':>9} {'predicted':>9} {'tags':>6} "
          f"{'counted':>7} {'faults':>6} {'dec.err':>7} {'skipped':>7} {'unverif':>7} "
          f"{'segments':>8} {'seg.bytes':>9} {'resends':>7} {'mismatch':>8} {'wall s':>6}")
    for name, interval in ANCHORS.items():
        rows = []
        for i, rate in enumerate(RATES):
            row, more = _run(binary, rate, interval, seed=1000 + i)
            rows.append(row)
            print(f"  2^{interval.bit_length() - 1:<5} {rate:7.0e} "
                  f"{row['events_recovered_fraction']:9.4f} {more['predicted']:9.4f} "
                  f"{more['tags']:6d} {more['counted']:7d} {row['faults_injected']:6d} "
                  f"{row['decode_errors']:7d} {more['skipped']:7d} {more['unverified']:7d} "
                  f"{more['segments']:8d} {more['segment_bytes']:9.0f} {more['resends']:7d} "
                  f"{more['mismatches']:8d} {more['seconds']:6.1f}", flush=True)
        figures["fault_recovery" if name == "default"
                else f"fault_recovery_anchor_{interval}"] = rows
    return figures


if __name__ == "__main__":
    print(run())
