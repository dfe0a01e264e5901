"""One acquisition: configure a board, run for a duration, collect tags and counters, summarise.

Two paths give the same :class:`AcquisitionResult`:

* :func:`acquire_device`: any board behind a :class:`heraldry.host.driver.Device` (a real board
  on a serial port, or the Verilated virtual board behind its pseudo-terminal), through the
  API's run (:class:`heraldry.host.tagger.DeviceRun`): configure, clear, run while streaming
  until ``control.now`` has advanced by the duration, stop, wait for the pipeline and the last
  segment's CHECK, read every counter.
* :func:`acquire_sim`: the core alone in the Amaranth simulator, in-process, no link (slow).

The summary cross-checks the hardware counters against counts recomputed independently from the
streamed tags by the reference model (:func:`heraldry.model.counts_from_tags`). For a lossless run
they must agree exactly; a disagreement is a gateware bug and is reported as such.
"""

import sys
from dataclasses import dataclass, field

import numpy as np

from ..protocol import Kind, LossCause
from .config import rule_text
from .core_records import CoreRecordDecoder
from .events import EVENT_DTYPE

__all__ = ["AcquisitionResult", "acquire_device", "acquire_sim", "summarise", "print_summary",
           "anchor_interval_for"]

_COUNTER_GROUPS = ("singles", "patterns", "heralds", "delay_dropped", "merger_dropped",
                   "herald_dropped", "coincidence_dropped", "filtered", "filter_dropped",
                   "gated_out")


@dataclass
class AcquisitionResult:
    """What one acquisition produced.

    ``events`` are every decoded record (``events.EVENT_DTYPE``) with times from the run start:
    for a device, the run start is the ``control.now`` count read just before the start command
    (the gate opened at most one command round trip later, see ``device_cycles``).
    ``device_cycles`` (link path only) gives ``{"clear"|"start"|"stop": [before, after]}``: the
    device cycles, relative to that run start, read just before and after each command, which
    bound the cycle it took effect in. ``link`` (link path only) holds the driver's figures
    (``Device.stats()``) and ``port`` the serial device used.

    A run cut short by a lost link (:class:`heraldry.host.driver.DeviceLost`, whose ``partial``
    this is) has ``error`` set, ``counters`` ``None`` (the board cannot be asked), the verified
    records received up to the failure in ``events``, and ``device_seconds`` up to the last
    ``control.now`` read.
    """
    acquisition: object     # the Acquisition that was run
    duration_s: float
    events: np.ndarray      # every decoded record (events.EVENT_DTYPE), times from run start
    counters: dict          # hardware counters by group name
    lost: dict              # {(LossCause, index): count} from loss records
    start_bin: int
    wall_seconds: float
    device_seconds: float = None        # device time the run gate was open (about)
    port: str = None
    link: dict = field(default_factory=dict)
    host_dropped_tags: list = None      # per channel: decoded, but dropped by the host queue
    device_cycles: dict = None
    error: str = None       # set when the run ended early (the link was lost): counters None

    @property
    def complete(self):
        return self.error is None

    @property
    def tags(self):
        return self.events[self.events["kind"] == Kind.TAG.value]


def anchor_interval_for(cycles, minimum, maximum):
    """An ANCHOR interval for a run of ``cycles``: about 1/16 of the run so that the final CHECK
    comes soon after it, but at least 2**16 cycles (CHECK + ANCHOR cost 15 bytes per interval:
    2 % of a 12 Mbaud link at 100 MHz) and within the register's range."""
    return int(min(maximum, max(minimum, 2 ** 16, min(2 ** 20, cycles // 16))))


def acquire_device(device, acq, duration_s, *, progress=None, anchor_interval=None, poll=0.02,
                   sink=None, counter_read_cycles=None, status_interval=None):
    """Run ``acq`` (an :class:`Acquisition`) on ``device`` for ``duration_s`` of device time;
    returns the :class:`AcquisitionResult`. The caller keeps ``device`` (not closed here).

    The run is :class:`heraldry.host.tagger.DeviceRun` with every record kept (the one run
    sequence: stop, configure, anchor interval, clear, counter baseline, start, poll until the
    device has run ``duration_s``, stop, wait for the pipeline and the last segment's CHECK,
    read every counter). The 32-bit counters are extended beyond their width
    (:class:`heraldry.host.tally.CounterTally`) from reads of every counter each
    ``counter_read_cycles`` (default :data:`heraldry.host.tally.READ_INTERVAL_CYCLES`), or,
    with ``status_interval`` instead, from the board's STATUS snapshots.
    ``progress(done_cycles, total_cycles, stats)`` is called after every poll;
    ``sink(events)`` gets every block as it is collected, with times from the run start like
    ``AcquisitionResult.events`` (e.g. :meth:`heraldry.host.ptu.PTUWriter.write_block`).

    A run cut short raises with ``partial`` set on the exception (``counters`` ``None``,
    ``error`` saying why): :class:`~heraldry.host.driver.DeviceLost`,
    :class:`~heraldry.host.driver.BoardSilent` (the board stopped answering; also before the
    start, without ``partial``), ``KeyboardInterrupt`` (the board is stopped first), and the
    ``OSError`` of a ``sink`` that cannot write (see :class:`~heraldry.host.tagger.DeviceRun`).
    """
    from .tagger import Tagger
    from .tally import READ_INTERVAL_CYCLES
    if counter_read_cycles is None and status_interval is None:
        counter_read_cycles = READ_INTERVAL_CYCLES
    if device.identity is None:
        device.identify()
    tagger = Tagger(device, name=device.transport.name,
                    baud=getattr(device.transport, "baud", None))
    run = tagger.run(acq, duration_s, keep=True, status_interval=status_interval, poll=poll,
                     anchor_interval=anchor_interval, progress=progress, sink=sink,
                     counter_read_cycles=counter_read_cycles)
    with run:
        run.wait()
    return run.result


def _device_result(device, acq, duration_s, parts, counters, start, epoch, stats_before,
                   lost_before, host_dropped_before, wall, end, error=None):
    """The :class:`AcquisitionResult` of :func:`acquire_device` (``end``: the :meth:`now` count
    that closes the run: before the stop command, or the last one read before the link was
    lost)."""
    ident = device.identity
    events = np.concatenate(parts) if parts else np.zeros(0, EVENT_DTYPE)
    events = events.copy()
    if epoch is None:
        epoch = 0               # no events: nothing to place in time
    start_bin = (start - epoch) << ident.fine_bits
    events["time_ps"] -= start_bin * ident.bin_fs // 1000
    stats = {name: value - stats_before[name] for name, value in device.stats().items()}
    lost = {key: count - lost_before.get(key, 0) for key, count in device.lost.items()
            if count != lost_before.get(key, 0)}
    host_dropped = device.host_dropped_tags - host_dropped_before
    names = ("clear", "start", "stop") if error is None else ("clear", "start")
    bounds = {name: [b - start for b in getattr(device, f"{name}_bounds")] for name in names}
    device_seconds = max(0, end - device.start_bounds[1]) / ident.clock_hz
    return AcquisitionResult(
        acquisition=acq, duration_s=duration_s, events=events, counters=counters,
        lost=lost, start_bin=start_bin, wall_seconds=wall,
        device_seconds=device_seconds, port=device.transport.name, link=stats,
        host_dropped_tags=host_dropped[:acq.channels].tolist(),
        device_cycles=bounds, error=error)


def acquire_sim(acq, duration_s, *, progress=None, sink=None):
    """Run ``acq`` (an :class:`Acquisition`) on the in-process simulated core (no link).
    ``sink(events)`` gets the run's records once, at the end (see :func:`acquire_device`)."""
    from ..sim.harness import CoreSimulation
    cycles = int(round(duration_s * acq.clock_hz))
    if cycles < 1:
        raise ValueError(f"duration {duration_s:g} s is shorter than one clock cycle")
    sim = CoreSimulation(channels=acq.channels, rules=acq.rules)
    run = sim.acquire(acq.gateware_config(), cycles, progress=progress)
    decoder = CoreRecordDecoder(fine_bits=acq.fine_bits, bin_ps=acq.bin_ps)
    block = decoder.decode(run.records)
    start_bin = run.start_time << acq.fine_bits
    events = block.events.copy()
    events["time_ps"] -= start_bin * acq.bin_ps
    if sink is not None:
        sink(events)
    cmap = sim.map
    counters = {name: run.counters[list(cmap.range(name))].tolist() for name in _COUNTER_GROUPS}
    return AcquisitionResult(acquisition=acq, duration_s=duration_s, events=events,
                             counters=counters, lost=dict(block.lost), start_bin=start_bin,
                             wall_seconds=run.wall_seconds, device_seconds=cycles / acq.clock_hz)


def summarise(result, *, board="sim"):
    """The summary dictionary printed by ``heraldry acquire`` and written by ``--summary-json``.

    Link figures (``port``, ``link_bytes``, ``bytes_per_event``: link bytes per streamed record,
    everything on the link included) are ``None`` for the in-process path. ``decode_errors``,
    ``skipped_bytes`` and ``unverified`` are the stream decoder's counts; ``host_dropped`` the tags
    the host decoded but could not queue (counted, and part of ``dropped``). ``stream_verified``
    (``None`` in-process) says whether every byte was verified; when it is not, damaged segments
    were not delivered and ``link_lost_per_channel`` (singles - tags - merger drops - host drops,
    per channel) is part of ``dropped_per_channel`` and ``dropped``, as are the herald and
    recorded-coincidence records lost with them (``link_lost_records``: counter - records -
    drops), and the checks are the ones a damaged stream can still prove (nothing invented).
    """
    from ..model import TAG_DTYPE, counts_from_tags
    acq = result.acquisition
    n = acq.channels
    if result.counters is None:
        return _partial_summary(result, board)
    c = result.counters
    link = result.link or {}
    tags = result.tags
    tag_bins = np.zeros(len(tags), TAG_DTYPE)
    tag_bins["time"] = tags["time_ps"] // acq.bin_ps
    tag_bins["channel"] = tags["channel"]
    # With a stream filter the tags no longer determine the counters (counts_from_tags refuses).
    recomputed = None if acq.filtering else counts_from_tags(tag_bins, acq.model_settings())
    merger_lost = [result.lost.get((LossCause.MERGER_FULL, ch), 0) for ch in range(n)]
    delay_lost = [result.lost.get((LossCause.DELAY_FULL, ch), 0) for ch in range(n)]
    filter_lost = [result.lost.get((LossCause.FILTER_FULL, ch), 0) for ch in range(n)]
    # The stream filter's counters (0 without one, or from a replay: nothing was filtered).
    filtered = list(c.get("filtered") or [0] * n)
    filter_dropped = list(c.get("filter_dropped") or [0] * n)
    host_dropped = list(result.host_dropped_tags or [0] * n)
    tags_per_channel = np.bincount(tags["channel"], minlength=n)[:n].tolist()
    # What each channel's singles counter promises to stream: all of it, but for the sync
    # channel, whose singles are its edges (the attempts), every Nth (the markers).
    streamable = list(c["singles"])
    if acq.sync_channel is not None:
        every = acq.sync_marker_every
        streamable[acq.sync_channel] = c["singles"][acq.sync_channel] // every if every else 0
    # Every byte of the stream decoded and verified by its segment's CHECK (None in-process).
    stream_verified = (None if not result.link else
                       link["decode_errors"] == 0 and link["unverified"] == 0
                       and not link.get("skipped_bytes"))
    rules = len(acq.herald_masks)
    herald_rules = result.events["channel"][result.events["kind"] == Kind.HERALD.value]
    herald_records = np.bincount(herald_rules, minlength=rules)[:rules].tolist()
    coincidence_records = int(np.count_nonzero(result.events["kind"] == Kind.COINCIDENCE.value))
    if stream_verified is False:
        # Damaged segments are not delivered (their times cannot be trusted): their tags, herald
        # and coincidence records, and their LOSS records, never reached the host. The hardware
        # counters did see them, so what the link lost is what the counters have and the
        # stream does not.
        link_lost = [s - t - m - h - f - d for s, t, m, h, f, d in zip(
            streamable, tags_per_channel, c["merger_dropped"], host_dropped, filtered,
            filter_dropped)]
        recorded = sum(c["patterns"][p - 1] for p in range(1, 2 ** n)
                       if acq.coincidence_record_mask >> p & 1)
        link_lost_records = {
            "heralds": [h - r - d for h, r, d in zip(c["heralds"][:rules], herald_records,
                                                     c["herald_dropped"][:rules])],
            "coincidences": recorded - coincidence_records - sum(c["coincidence_dropped"]),
        }
    else:
        link_lost = [0] * n
        link_lost_records = {"heralds": [0] * rules, "coincidences": 0}
    dropped_per_channel = [m + d + h + k + f for m, d, h, k, f in zip(
        c["merger_dropped"], c["delay_dropped"], host_dropped, link_lost, filter_dropped)]
    dropped = (sum(dropped_per_channel) + sum(c["herald_dropped"]) + sum(c["coincidence_dropped"])
               + link.get("host_dropped_events", 0) - sum(host_dropped)
               + sum(link_lost_records["heralds"]) + link_lost_records["coincidences"])
    patterns = {str(p): c["patterns"][p - 1] for p in range(1, 2 ** n)}
    if stream_verified is False:
        checks = {
            # What a damaged stream still proves: it invented nothing.
            "link_loss_not_negative": min(link_lost + link_lost_records["heralds"]
                                          + [link_lost_records["coincidences"]]) >= 0,
            "loss_records_within_drop_counters":
                all(x <= y for x, y in zip(merger_lost + delay_lost + filter_lost,
                                           c["merger_dropped"] + c["delay_dropped"]
                                           + filter_dropped)),
        }
    else:
        checks = {
            # streamed tags + tags reported lost in-band (+ tags the host dropped, + events the
            # stream filter withheld by its mode) == hardware singles, per channel
            "tags_plus_lost_equal_singles":
                [t + m + h + f + d for t, m, h, f, d in zip(
                    tags_per_channel, merger_lost, host_dropped, filtered, filter_lost)]
                == streamable,
            "loss_records_equal_drop_counters":
                merger_lost == c["merger_dropped"] and delay_lost == c["delay_dropped"]
                and filter_lost == filter_dropped,
        }
    if dropped == 0 and recomputed is not None:
        checks["singles_recomputed_from_tags"] = recomputed.singles.tolist() == streamable
        checks["patterns_recomputed_from_tags"] = (
            recomputed.patterns[1:].tolist() == c["patterns"])
        checks["heralds_recomputed_from_tags"] = (
            recomputed.herald_counts.tolist() == c["heralds"][:len(acq.herald_masks)])
    records = len(result.events)
    summary = {
        "board": board,
        "complete": True,
        **_run_fields(result),
        "singles": c["singles"],
        "patterns": patterns,
        "heralds": c["heralds"][:len(acq.herald_masks)],
        "herald_masks": list(acq.herald_masks),
        "herald_rules": [rule_text(r, i, acq.channels) for i, r in enumerate(acq.herald_rules)],
        "tags": int(len(tags)),
        "tags_per_channel": tags_per_channel,
        "coincidence_records": coincidence_records,
        "herald_records": int(sum(herald_records)),
        "dropped": int(dropped),
        "dropped_per_channel": dropped_per_channel,
        "delay_dropped": c["delay_dropped"],
        "merger_dropped": c["merger_dropped"],
        "herald_dropped": c["herald_dropped"],
        "coincidence_dropped": c["coincidence_dropped"],
        # Stream filter (docs/semantics.md, "Stream filters"), from the hardware counters: per
        # channel its mode, the events handed on to be streamed (singles - filtered -
        # filter_dropped), withheld by the mode, and lost to the filter's full buffer.
        "stream": list(acq.stream),
        "streamed_per_channel": [s - f - d for s, f, d in zip(c["singles"], filtered,
                                                              filter_dropped)],
        "filtered": filtered,
        "filter_dropped": filter_dropped,
        # Sync and gates (docs/semantics.md, "Sync, gates and reference markers"): per channel
        # its role, the detector events outside their gate, and the attempts (the sync
        # channel's singles; None without a sync).
        "roles": list(acq.roles),
        "gated_out": list(c.get("gated_out") or [0] * n),
        "attempts": (None if acq.sync_channel is None else c["singles"][acq.sync_channel]),
        # Loss records as streamed, by cause and index (independent of the drop counters).
        "loss_records": _loss_table(result.lost, n, acq.rules),
        "host_dropped": host_dropped,
        "stream_verified": stream_verified,
        "link_lost_per_channel": link_lost,
        "link_lost_records": link_lost_records,
        "decode_errors": int(link.get("decode_errors", 0)),
        "skipped_bytes": link.get("skipped_bytes"),
        "unverified": link.get("unverified"),
        "link_bytes": link.get("link_bytes"),
        "bytes_per_event": round(link["link_bytes"] / records, 3)
        if result.link and records else None,
        "device_cycles": result.device_cycles,
        "checks": checks,
        "wall_seconds": round(result.wall_seconds, 3),
        "sim_cycles_per_s": round((result.device_seconds or result.duration_s) * acq.clock_hz
                                  / result.wall_seconds)
        if result.wall_seconds > 0 else None,
    }
    return summary


def _run_fields(result):
    """The summary keys that describe the run (the same in a complete and a partial one)."""
    acq = result.acquisition
    return {
        "port": result.port,
        "channels": acq.channels,
        "bin_ps": acq.bin_ps,
        "duration_s": result.duration_s,
        "device_seconds": result.device_seconds,
        "window_bins": acq.window_bins,
        "delays_bins": list(acq.delays_bins),
        "dead_time_bins": list(acq.dead_time_bins),
        "test_signal": acq.test_signal,
    }


def _partial_summary(result, board):
    """The summary of a run cut short (``result.error`` set, no hardware counters): what was
    received and verified, what the loss records and the host said was dropped, what could not
    be verified; every counter the board would have given is ``None``."""
    acq = result.acquisition
    n = acq.channels
    link = result.link or {}
    tags = result.tags
    host_dropped = list(result.host_dropped_tags or [0] * n)
    lost = result.lost
    in_band = [lost.get((LossCause.MERGER_FULL, ch), 0) + lost.get((LossCause.DELAY_FULL, ch), 0)
               for ch in range(n)]
    dropped_per_channel = [b + h for b, h in zip(in_band, host_dropped)]
    dropped = (sum(lost.values()) + link.get("host_dropped_events", 0))
    records = len(result.events)
    return {
        "board": board,
        "complete": False,
        "error": result.error,
        **_run_fields(result),
        "singles": None,
        "patterns": None,
        "heralds": None,
        "herald_masks": list(acq.herald_masks),
        "herald_rules": [rule_text(r, i, acq.channels) for i, r in enumerate(acq.herald_rules)],
        "tags": int(len(tags)),
        "tags_per_channel": np.bincount(tags["channel"], minlength=n)[:n].tolist(),
        "coincidence_records": int(np.count_nonzero(
            result.events["kind"] == Kind.COINCIDENCE.value)),
        "herald_records": int(np.count_nonzero(result.events["kind"] == Kind.HERALD.value)),
        # Known drops only: in-band loss records received, and blocks the host dropped.
        "dropped": int(dropped),
        "dropped_per_channel": dropped_per_channel,
        "loss_records": _loss_table(lost, n, acq.rules),
        "host_dropped": host_dropped,
        # What the link lost cannot be told without the board's counters.
        "stream_verified": None,
        "link_lost_per_channel": None,
        "link_lost_records": None,
        "decode_errors": int(link.get("decode_errors", 0)),
        "skipped_bytes": link.get("skipped_bytes"),
        # Records of the segment open when the link went: received, never verified, not kept.
        "unverified": link.get("unverified"),
        "link_bytes": link.get("link_bytes"),
        "bytes_per_event": round(link["link_bytes"] / records, 3)
        if link.get("link_bytes") and records else None,
        "device_cycles": result.device_cycles,
        "checks": {},
        "wall_seconds": round(result.wall_seconds, 3),
    }


def _loss_table(lost, channels, rules):
    sizes = {LossCause.MERGER_FULL: channels, LossCause.DELAY_FULL: channels,
             LossCause.HERALD_RECORD: rules, LossCause.COINCIDENCE_RECORD: 1,
             LossCause.FILTER_FULL: channels}
    return {cause.name: [lost.get((cause, i), 0) for i in range(sizes[cause])]
            for cause in LossCause}


def print_summary(summary, file=None):
    """Human-readable summary (the JSON file has everything) on ``file`` (default: the current
    ``sys.stdout``, looked up at call time, not at import)."""
    file = sys.stdout if file is None else file
    n = summary["channels"]
    w = file.write
    port = f" on {summary['port']}" if summary.get("port") else ""
    if not summary.get("complete", True) and "error" in summary:
        # A run cut short: no hardware counters, so no table of them and no checks. (A replayed
        # file cut short has its counters, the model's from its records: the table below.)
        w(f"board {summary['board']}{port}: run INCOMPLETE after "
          f"{summary['device_seconds'] * 1e3:g} ms of device time ({summary['error']})\n")
        w("  tags received and verified per channel: "
          + ", ".join(str(t) for t in summary["tags_per_channel"])
          + f"; dropped (known) {summary['dropped']}, unverified {summary['unverified'] or 0}\n")
        return
    # A replayed file cut short covers the time its records reach, not the time it declares.
    seconds = summary["duration_s"] if summary.get("complete", True) else summary["device_seconds"]
    w(f"board {summary['board']}{port}: {n} channels, bin {summary['bin_ps'] / 1000:g} ns, "
      f"{seconds * 1e3:g} ms device time, window {summary['window_bins']} bins\n")
    w("  channel   singles      tags   dropped\n")
    for ch in range(n):
        w(f"  {ch:7d} {summary['singles'][ch]:9d} {summary['tags_per_channel'][ch]:9d} "
          f"{summary['dropped_per_channel'][ch]:9d}\n")
    multi = sorted(((int(p), v) for p, v in summary["patterns"].items()
                    if bin(int(p)).count("1") > 1 and v), key=lambda pv: -pv[1])
    if multi:
        w("  coincidences (pattern: windows): " + ", ".join(
            f"{p:0{n}b}: {v}" for p, v in multi[:8]) + ("" if len(multi) <= 8 else ", ...") + "\n")
    for rule, (text, count) in enumerate(zip(summary["herald_rules"], summary["heralds"])):
        w(f"  herald rule {rule} ({text}): {count}\n")
    # The attempt clock (docs/semantics.md, "Sync, gates and reference markers").
    attempts, gated = summary.get("attempts"), summary.get("gated_out") or []
    if attempts is not None or any(gated):
        parts = []
        if attempts is not None:
            sync = list(summary.get("roles") or ()).index("sync")
            parts.append(f"attempts (sync edges on channel {sync}): {attempts}")
        if any(gated):
            parts.append("gated out per channel: " + ", ".join(str(g) for g in gated))
        w("  " + "; ".join(parts) + "\n")
    if any(mode != "all" for mode in summary.get("stream", ())):
        # From the hardware counters, not from the tags received.
        w("  stream (counted -> streamed / filtered / lost in the filter): " + ", ".join(
            f"ch{ch} {mode} {summary['singles'][ch]} -> {summary['streamed_per_channel'][ch]}"
            f" / {summary['filtered'][ch]} / {summary['filter_dropped'][ch]}"
            for ch, mode in enumerate(summary["stream"])) + "\n")
    failed = [name for name, ok in summary["checks"].items() if not ok]
    if summary.get("stream_verified") is False:
        w(f"  LINK DAMAGED: {sum(summary['link_lost_per_channel'])} tags lost on the link "
          f"({summary['decode_errors']} records in damaged segments, "
          f"{summary['unverified'] or 0} unverified, {summary['skipped_bytes'] or 0} bytes "
          f"skipped); counted in 'dropped'\n")
    if failed:
        w("  CHECK FAILED: " + ", ".join(failed) + " (hardware counters disagree with tags)\n")
    elif "file_events_lost" in summary:
        w("  replayed file (counters recomputed by the reference model from its tags); checks: "
          + ", ".join(summary["checks"]) + "\n")
    elif "singles_recomputed_from_tags" in summary["checks"]:
        w("  checks: hardware counters agree with counts recomputed from the streamed tags\n")
    else:
        w("  checks: streamed tags plus loss records agree with the hardware counters\n")
    if summary.get("link_bytes") is not None:
        per = summary["bytes_per_event"]
        w(f"  link: {summary['link_bytes']} bytes"
          + (f", {per:.2f} bytes per record" if per is not None else "")
          + f", decode errors {summary['decode_errors']}\n")
    if summary["dropped"]:
        w(f"  WARNING: {summary['dropped']} events/records were dropped (counted, see above)\n")
    if summary.get("incomplete"):
        w(f"  INCOMPLETE: {summary['incomplete']}\n")
