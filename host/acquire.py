"""One acquisition: configure a board, run for a duration, collect tags and counters, summarise.

The summary cross-checks the hardware counters against counts recomputed independently from the
streamed tags by the reference model (:func:`heraldry.model.counts_from_tags`). For a lossless run
they must agree exactly; a disagreement is a gateware bug and is reported as such.
"""

import sys
from dataclasses import dataclass

import numpy as np

from .. import protocol
from ..protocol import Kind, LossCause
from .decode import Decoder

__all__ = ["AcquisitionResult", "acquire_sim", "summarise"]


@dataclass
class AcquisitionResult:
    acquisition: object     # the Acquisition that was run
    duration_s: float
    events: np.ndarray      # every decoded record (decode.EVENT_DTYPE), times from run start
    counters: dict          # hardware counters by group name
    lost: dict              # {(LossCause, index): count} from loss records
    start_bin: int
    wall_seconds: float

    @property
    def tags(self):
        return self.events[self.events["kind"] == Kind.TAG.value]


def acquire_sim(acq, duration_s, *, progress=None):
    """Run ``acq`` (an :class:`Acquisition`) on the in-process simulated core."""
    from ..sim.harness import CoreSimulation
    cycles = int(round(duration_s * acq.clock_hz))
    if cycles < 1:
        raise ValueError(f"duration {duration_s:g} s is shorter than one clock cycle")
    sim = CoreSimulation(channels=acq.channels, rules=acq.rules)
    run = sim.acquire(acq.gateware_config(), cycles, progress=progress)
    decoder = Decoder(fine_bits=acq.fine_bits, bin_ps=acq.bin_ps)
    block = decoder.decode(run.records)
    start_bin = run.start_time << acq.fine_bits
    events = block.events.copy()
    events["time_ps"] -= start_bin * acq.bin_ps
    cmap = sim.map
    counters = {name: run.counters[list(cmap.range(name))].tolist()
                for name in ("singles", "patterns", "heralds", "delay_dropped", "merger_dropped",
                             "herald_dropped", "coincidence_dropped")}
    return AcquisitionResult(acquisition=acq, duration_s=duration_s, events=events,
                             counters=counters, lost=dict(block.lost), start_bin=start_bin,
                             wall_seconds=run.wall_seconds)


def summarise(result, *, board="sim"):
    """The summary dictionary printed by ``heraldry acquire`` and written by ``--summary-json``."""
    from ..model import TAG_DTYPE, counts_from_tags
    acq = result.acquisition
    n = acq.channels
    c = result.counters
    tags = result.tags
    tag_bins = np.zeros(len(tags), TAG_DTYPE)
    tag_bins["time"] = tags["time_ps"] // acq.bin_ps
    tag_bins["channel"] = tags["channel"]
    recomputed = counts_from_tags(tag_bins, acq.model_settings())
    merger_lost = [result.lost.get((LossCause.MERGER_FULL, ch), 0) for ch in range(n)]
    delay_lost = [result.lost.get((LossCause.DELAY_FULL, ch), 0) for ch in range(n)]
    tags_per_channel = np.bincount(tags["channel"], minlength=n)[:n].tolist()
    dropped_per_channel = [m + d for m, d in zip(c["merger_dropped"], c["delay_dropped"])]
    dropped = sum(dropped_per_channel) + sum(c["herald_dropped"]) + sum(c["coincidence_dropped"])
    patterns = {str(p): c["patterns"][p - 1] for p in range(1, 2 ** n)}
    checks = {
        # streamed tags + tags reported lost in-band == hardware singles, per channel
        "tags_plus_lost_equal_singles":
            [t + m for t, m in zip(tags_per_channel, merger_lost)] == c["singles"],
        "loss_records_equal_drop_counters":
            merger_lost == c["merger_dropped"] and delay_lost == c["delay_dropped"],
    }
    if dropped == 0:
        checks["singles_recomputed_from_tags"] = recomputed.singles.tolist() == c["singles"]
        checks["patterns_recomputed_from_tags"] = (
            recomputed.patterns[1:].tolist() == c["patterns"])
        checks["heralds_recomputed_from_tags"] = (
            recomputed.herald_counts.tolist() == c["heralds"][:len(acq.herald_masks)])
    summary = {
        "board": board,
        "channels": n,
        "bin_ps": acq.bin_ps,
        "duration_s": result.duration_s,
        "window_bins": acq.window_bins,
        "delays_bins": list(acq.delays_bins),
        "dead_time_bins": list(acq.dead_time_bins),
        "test_signal": acq.test_signal,
        "singles": c["singles"],
        "patterns": patterns,
        "heralds": c["heralds"][:len(acq.herald_masks)],
        "herald_masks": list(acq.herald_masks),
        "tags": int(len(tags)),
        "tags_per_channel": tags_per_channel,
        "coincidence_records": int(np.count_nonzero(
            result.events["kind"] == Kind.COINCIDENCE.value)),
        "herald_records": int(np.count_nonzero(result.events["kind"] == Kind.HERALD.value)),
        "dropped": int(dropped),
        "dropped_per_channel": dropped_per_channel,
        "delay_dropped": c["delay_dropped"],
        "merger_dropped": c["merger_dropped"],
        "decode_errors": 0,
        "checks": checks,
        "wall_seconds": round(result.wall_seconds, 3),
        "sim_cycles_per_s": round(result.duration_s * acq.clock_hz / result.wall_seconds)
        if result.wall_seconds > 0 else None,
    }
    return summary


def print_summary(summary, file=sys.stdout):
    """Human-readable summary (the JSON file has everything)."""
    n = summary["channels"]
    w = file.write
    w(f"board {summary['board']}: {n} channels, bin {summary['bin_ps'] / 1000:g} ns, "
      f"{summary['duration_s'] * 1e3:g} ms device time, window {summary['window_bins']} bins\n")
    w("  channel   singles      tags   dropped\n")
    for ch in range(n):
        w(f"  {ch:7d} {summary['singles'][ch]:9d} {summary['tags_per_channel'][ch]:9d} "
          f"{summary['dropped_per_channel'][ch]:9d}\n")
    multi = sorted(((int(p), v) for p, v in summary["patterns"].items()
                    if bin(int(p)).count("1") > 1 and v), key=lambda pv: -pv[1])
    if multi:
        w("  coincidences (pattern: windows): " + ", ".join(
            f"{p:0{n}b}: {v}" for p, v in multi[:8]) + ("" if len(multi) <= 8 else ", ...") + "\n")
    for rule, (mask, count) in enumerate(zip(summary["herald_masks"], summary["heralds"])):
        w(f"  herald rule {rule} (mask {mask:0{n}b}): {count}\n")
    failed = [name for name, ok in summary["checks"].items() if not ok]
    if failed:
        w("  CHECK FAILED: " + ", ".join(failed) + " (hardware counters disagree with tags)\n")
    else:
        w("  checks: hardware counters agree with counts recomputed from the streamed tags\n")
    if summary["dropped"]:
        w(f"  WARNING: {summary['dropped']} events/records were dropped (counted, see above)\n")
