"""Events recovered through a damaged link, against the byte fault rate.

The virtual board (``sim/twin.py``) streams its pairs test signal (2 * 10^5 pairs/s, 50 %
detection per arm, about 2 * 10^5 tags/s, 0.2 s of device time) through the fault-injecting
relay (``sim/faults.py``) to the driver and the stream decoder (``heraldry.host.acquire``).
``byte_fault_rate`` is the probability that a byte from the board is hit by a fault, spread
evenly over drop, flip (one bit), duplicate and delay (up to 50 ms; a delay changes no byte).
``events_recovered_fraction`` = tags emitted / tags the board counted (its singles counters,
read over the same faulty link and confirmed); ``decode_errors`` = records in damaged segments;
``faults_injected`` = the faults the relay injected into the board's bytes in that run.

A damaged group (at most ``WIRE_GROUP_RECORDS`` data records, closed by a TIME or the segment's
CHECK) loses its events, and a damaged ANCHOR group (the ANCHOR and the TIME after it) its whole
segment. Two series: the gateware's default ``control.anchor_interval`` (2^20 cycles, 10.5 ms)
and a short one (2^14 cycles, 164 us). Beside each measured fraction the table prints what
independent byte faults predict from the board's own groups (the relay keeps the clean stream):
sum over groups of tags * (1 - 3/4 rate)^bytes, over all tags, where a group's bytes are its
own, the record that closes it and its segment's ANCHOR group.
"""

import time

import numpy as np

CHANNELS, RULES = 4, 2
RATES = (1e-5, 1e-4, 1e-3, 1e-2)
DURATION_S = 0.2
ANCHORS = {"default": 2 ** 20, "short": 2 ** 14}


def _group_tags(clean):
    """``(bytes, tags)`` of every group of a clean stream (an ANCHOR or TIME up to the next
    TIME or CHECK), where ``bytes`` are those whose damage costs the group's tags: its own, the
    record that closes it (a TIME's CRC verifies the group before it) and its segment's ANCHOR
    group (the ANCHOR and the TIME after it)."""
    from heraldry.protocol import Kind, WireKind
    from heraldry.wire import WireFormat, split_records
    out, group, anchor_cost = [], None, 0
    for rec in split_records(clean):
        kind = WireFormat.record_kind(rec[0])
        if kind is WireKind.ANCHOR:
            group = [len(rec), 0, True]             # bytes, tags, is the ANCHOR's group
            continue
        if group is None:
            continue
        if kind in (WireKind.TIME, WireKind.CHECK):
            if group[2]:
                anchor_cost = group[0] + len(rec)
            else:
                out.append((group[0] + len(rec) + anchor_cost, group[1]))
            group = [len(rec), 0, False] if kind is WireKind.TIME else None
            continue
        group[0] += len(rec)
        group[1] += kind is Kind.TAG
    return np.array(out, np.float64).reshape(-1, 2)


def _run(binary, rate, anchor_interval, seed):
    from heraldry.host.acquire import acquire_device
    from heraldry.host.config import Acquisition
    from heraldry.host.driver import Device
    from heraldry.host.transport import SerialTransport
    from heraldry.sim.faults import FaultRelay, Faults
    from heraldry.sim.twin import Twin

    acq = Acquisition(channels=CHANNELS, rules=RULES, window_bins=2, delays_bins=[3, 0, 0, 0],
                      herald_masks=[0b0011], test_signal="pairs", pair_rate_hz=2e5,
                      pair_delay_bins=3)
    start = time.monotonic()
    with Twin(binary) as twin:
        with FaultRelay(twin.port, to_host=Faults.uniform(rate), seed=seed, record=True) as relay:
            with Device(SerialTransport(relay.port), timeout=0.25, retries=8) as device:
                result = acquire_device(device, acq, DURATION_S, anchor_interval=anchor_interval)
                stats = device.stats()
            clean = relay.clean
            faults = relay.counts["to_host"]
    counted = sum(result.counters["singles"])
    groups = _group_tags(clean)
    survive = (1 - 0.75 * rate) ** groups[:, 0]
    predicted = float((groups[:, 1] * survive).sum() / max(1, groups[:, 1].sum()))
    return {
        "byte_fault_rate": rate,
        "events_recovered_fraction": round(len(result.tags) / counted, 5) if counted else None,
        "decode_errors": int(stats["decode_errors"]),
        # at 1e-5 a run of 10^5 bytes may see no fault at all: say so beside the fraction
        "faults_injected": sum(faults[k] for k in ("drop", "flip", "duplicate", "delay")),
    }, {
        "predicted": predicted, "tags": len(result.tags), "counted": counted,
        "groups": len(groups), "group_bytes": float(groups[:, 0].mean()),
        "skipped": stats["skipped_bytes"], "unverified": stats["unverified"],
        "resends": stats["resends"],
        "seconds": time.monotonic() - start,
    }


def run():
    from heraldry.sim.twin import build_twin
    binary = build_twin(CHANNELS, RULES)
    figures = {}
    print(f"  {'anchor':>7} {'rate':>7} {'recovered':>9} {'predicted':>9} {'tags':>6} "
          f"{'counted':>7} {'faults':>6} {'dec.err':>7} {'skipped':>7} {'unverif':>7} "
          f"{'groups':>8} {'grp.cost':>9} {'resends':>7} {'wall s':>6}")
    for name, interval in ANCHORS.items():
        rows = []
        for i, rate in enumerate(RATES):
            row, more = _run(binary, rate, interval, seed=1000 + i)
            rows.append(row)
            print(f"  2^{interval.bit_length() - 1:<5} {rate:7.0e} "
                  f"{row['events_recovered_fraction']:9.4f} {more['predicted']:9.4f} "
                  f"{more['tags']:6d} {more['counted']:7d} {row['faults_injected']:6d} "
                  f"{row['decode_errors']:7d} {more['skipped']:7d} {more['unverified']:7d} "
                  f"{more['groups']:8d} {more['group_bytes']:9.0f} {more['resends']:7d} "
                  f"{more['seconds']:6.1f}", flush=True)
        figures["fault_recovery" if name == "default"
                else f"fault_recovery_anchor_{interval}"] = rows
    return figures


if __name__ == "__main__":
    print(run())
