"""Replay a PTU T2 file as a virtual board: ``heraldry acquire --board replay:FILE.ptu``.

:class:`ReplaySource` plays a file (ours, with every rotation part, or one PicoQuant's software
wrote) as the driver delivers a run: :class:`~heraldry.host.events.Block` s of
``host.events.EVENT_DTYPE`` records with times in ps from the run start, through
:meth:`ReplaySource.read_block` / :meth:`ReplaySource.blocks`, as fast as possible or at the
pace of the recorded time (``realtime``). :func:`acquire_replay` turns a replay into the
:class:`~heraldry.host.acquire.AcquisitionResult` that ``heraldry acquire`` summarises.

Channels: in our files the header's ``Heraldry_ChannelMap`` gives each PTU channel back its kind
(inputs -> TAG, herald channels -> HERALD with ``pattern`` 0 since the file does not keep the
pattern at firing, coincidence channels -> COINCIDENCE with their pattern) and
``Heraldry_Config`` the acquisition. In other files every photon channel is an input (TAG) and
sync/marker records are skipped (counted in :attr:`ReplaySource.skipped_special`).

A file cut short (fewer records than its header declares, a last record cut mid-way) or never
finished (no record count) is replayed as far as it goes; :attr:`ReplaySource.incomplete` says
why in one line, and the run covers the time its records reach (``device_seconds``).

A file holds no hardware counters. :func:`acquire_replay` reports the counters the reference
model derives from the file's input tags, and its checks are what a file can prove: that the
herald and coincidence records in it are exactly those the model derives from its tags (our
files), and that the file declares no lost events.
"""

import json
import os
import time

import numpy as np

from .. import protocol
from ..protocol import Kind
from .config import Acquisition
from .events import EVENT_DTYPE, Block
from .ptu import SYNC_MARKER, PTUError, part_path, read_ptu

__all__ = ["ReplaySource", "acquire_replay", "replay_parts"]

#: Longest stretch of recorded time one block covers (so a real-time replay stays smooth).
BLOCK_SECONDS = 0.05


def _count_tag(tags, name, real=False):
    """A non-negative number tag (``None`` when absent); PTUError when it is something else."""
    value = tags.get(name)
    if value is None:
        return None
    kinds = (int, float) if real else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds) or not 0 <= value < 2 ** 63:
        raise PTUError(f"PTU tag {name} = {value!r:.40} is not a count")
    return value


def _json_tag(tags, name):
    text = tags.get(name)
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise PTUError(f"PTU tag {name} is not a string")
    try:
        return json.loads(text)
    except ValueError:
        raise PTUError(f"PTU tag {name} is not valid JSON") from None


def _channel_map(cmap):
    """``Heraldry_ChannelMap`` checked: ``({input: ptu}, {rule: ptu}, {pattern: ptu})`` with
    inputs ``0..N-1``, rules ``0..`` and patterns ``1..2**N - 1`` on distinct PTU channels."""
    def table(key, parse):
        part = cmap.get(key) if isinstance(cmap, dict) else None
        if not isinstance(part, dict):
            raise PTUError(f"Heraldry_ChannelMap has no {key!r} table")
        out = {}
        for name, ptu_channel in part.items():
            try:
                number = parse(name)
            except (TypeError, ValueError):
                number = None
            if (number is None or isinstance(ptu_channel, bool)
                    or not isinstance(ptu_channel, int) or not 0 <= ptu_channel < 64):
                raise PTUError(f"Heraldry_ChannelMap {key}: {name!r} -> {ptu_channel!r} is "
                               f"not an entry")
            out[number] = ptu_channel
        return out
    inputs = table("inputs", int)
    rules = table("herald_rules", int)
    patterns = table("coincidence_patterns", lambda p: int(p, 0))
    n = len(inputs)
    if (sorted(inputs) != list(range(n)) or not 1 <= n <= protocol.MAX_CHANNELS
            or sorted(rules) != list(range(len(rules)))
            or any(not 0 < p < 2 ** n for p in patterns)):
        raise PTUError("Heraldry_ChannelMap names inputs, rules or patterns that cannot exist")
    used = list(inputs.values()) + list(rules.values()) + list(patterns.values())
    if len(set(used)) != len(used):
        raise PTUError("Heraldry_ChannelMap maps two things onto one PTU channel")
    return inputs, rules, patterns


def _sync_marker_channel(tags):
    """The PTU channel of the input whose tags our writer stored as marker records
    (``Heraldry_ChannelMap``'s ``sync_marker``), or ``None``."""
    cmap = _json_tag(tags, "Heraldry_ChannelMap")
    entry = cmap.get("sync_marker") if isinstance(cmap, dict) else None
    if entry is None:
        return None
    inputs = cmap.get("inputs")
    number = entry.get("input") if isinstance(entry, dict) else None
    if (not isinstance(inputs, dict) or isinstance(number, bool) or not isinstance(number, int)
            or str(number) not in inputs or entry.get("marker") != SYNC_MARKER):
        raise PTUError(f"Heraldry_ChannelMap sync_marker {entry!r:.60} is not an input's marker "
                       f"{SYNC_MARKER}")
    return inputs[str(number)]


def _incompleteness(path, part):
    """Why one part (a :class:`~heraldry.host.ptu.PTUData`) is not whole, or ``None``."""
    cut = (f", its last record cut after {part.cut_bytes} of 4 bytes" if part.cut_bytes
           else "")
    if part.declared is None:
        if part.records == 0 and not part.cut_bytes:
            return None         # an empty file: nothing can be missing from it
        return (f"{path} declares no record count (its writer never finished it){cut}; "
                f"{part.records} records read")
    if part.missing:
        return (f"{path} holds {part.records} of the {part.declared} records its header "
                f"declares ({part.missing} missing{cut})")
    return None


def replay_parts(path):
    """``path`` and the rotation parts that follow it (``name-001.ptu``, ...) that exist."""
    parts = [os.fspath(path)]
    while os.path.exists(part_path(path, len(parts))):
        parts.append(part_path(path, len(parts)))
    return parts


class ReplaySource:
    """A PTU file (and its rotation parts) as a stream of decoded blocks.

    Parameters
    ----------
    path : str, path, or a binary file object
        The first (or only) part (a file object: the only one).
    realtime : bool
        Deliver each block no earlier than its last record's time after the first
        :meth:`read_block` call (wall clock); otherwise as fast as possible.
    block_events : int
        Most records per block (a block also covers at most :data:`BLOCK_SECONDS`).
    clock, sleep :
        Time source and sleeper (``time.monotonic``, ``time.sleep``; replaceable in tests).

    Members
    -------
    acquisition : Acquisition
        From ``Heraldry_Config`` (ours), else built from the header: ``HW_InpChannels`` inputs
        (at least the highest photon channel + 1, at most ``MAX_CHANNELS``), one bin =
        ``MeasDesc_GlobalResolution``.
    tags : dict
        The first part's header.
    paths : list of str
    duration_s : float
        ``MeasDesc_AcquisitionTime`` if the header has it, else the last record's time.
    events_lost : int
        ``Heraldry_EventsLost`` (ours), or 1 when ``TTResult_MDescWarningFlags`` has the
        events-dropped bit without a count, else 0.
    skipped_special : int
        Sync and marker records (no EVENT_DTYPE kind for them), but for our files' sync
        markers (marker 1 with a ``sync_marker`` in the channel map): tags of the sync input.
    records, records_declared : int, int or None
        Records read (overflow records included, every part), and the sum of the parts'
        ``TTResult_NumberOfRecords`` (``None`` when a part declares none).
    incomplete : str or None
        Why the file is not whole, in one line, or ``None``: a part holds fewer whole records
        than its header declares (copied or written only in part; a last record cut mid-way
        is named), or a part with records declares no count (0 or no tag: its writer never
        finished it, e.g. it was killed). The records that are there are replayed.
    end_s : float
        The time the records read reach (the last record's, overflow records included).
    seconds : float
        The device time a replay covers: ``duration_s``, or ``end_s`` for a file that is not
        whole.
    """

    def __init__(self, path, *, realtime=False, block_events=1 << 16, clock=time.monotonic,
                 sleep=time.sleep):
        if hasattr(path, "read"):
            # A binary file object is one part (no rotation parts to look for).
            self.paths = [str(getattr(path, "name", "<file object>"))]
            parts = [read_ptu(path)]
        else:
            self.paths = replay_parts(path)
            parts = [read_ptu(p) for p in self.paths]
        self.realtime = realtime
        self.block_events = block_events
        self._clock = clock
        self._sleep = sleep
        self.tags = parts[0].tags
        self.records = sum(p.records for p in parts)
        declared = [p.declared for p in parts]
        self.records_declared = None if None in declared else sum(declared)
        self.incomplete = "; ".join(
            reason for reason in (_incompleteness(path, p) for path, p in zip(self.paths, parts))
            if reason) or None
        self.end_s = parts[-1].end_ps * 1e-12
        special = np.concatenate([p.special for p in parts])
        time_ps = np.concatenate([p.time_ps for p in parts])
        channel = np.concatenate([p.channel for p in parts]).astype(np.int64)
        # Our files hold the sync input's tags (sync markers) as marker records: tags again.
        marker_input = _sync_marker_channel(self.tags)
        if marker_input is not None:
            back = special & (channel == SYNC_MARKER)
            channel[back] = marker_input
            special = special & ~back
        self.skipped_special = int(special.sum())
        time_ps, channel = time_ps[~special], channel[~special]
        if time_ps.dtype.kind == "f":
            time_ps = np.rint(time_ps).astype(np.int64)
        backwards = np.flatnonzero(np.diff(time_ps) < 0)
        if len(backwards):
            raise PTUError(f"{self.paths[0]}: record {int(backwards[0]) + 1} (not counting "
                           f"special records) is earlier than the one before it; PTU T2 "
                           f"records are in time order")
        self.acquisition, kinds = self._describe(channel)
        events = np.zeros(len(time_ps), EVENT_DTYPE)
        events["time_ps"] = time_ps
        events["count"] = 1
        lookup_kind, lookup_channel, lookup_pattern = kinds
        if len(channel) and np.any(lookup_kind[channel] < 0):
            bad = int(channel[lookup_kind[channel] < 0][0])
            raise PTUError(f"{self.paths[0]}: PTU channel {bad} is not in the file's channel map")
        events["kind"] = lookup_kind[channel]
        events["channel"] = lookup_channel[channel]
        events["pattern"] = lookup_pattern[channel]
        self.events = events
        acquisition_ms = _count_tag(self.tags, "MeasDesc_AcquisitionTime", real=True)
        self.duration_s = (acquisition_ms / 1e3 if acquisition_ms
                           else (int(time_ps[-1]) * 1e-12 if len(time_ps) else 0.0))
        lost = _count_tag(self.tags, "Heraldry_EventsLost")
        flags = _count_tag(self.tags, "TTResult_MDescWarningFlags") or 0
        self.events_lost = int(lost) if lost is not None else int(bool(flags & 0x80))
        self._edges = self._block_edges(time_ps)
        self._next = 0
        self._start = None

    @property
    def seconds(self):
        # A file cut short covers the time its records reach, not the acquisition time it
        # declares.
        return self.end_s if self.incomplete else self.duration_s

    def _describe(self, channel):
        """The acquisition and the PTU channel -> (kind, channel, pattern) tables.
        :class:`PTUError` when the header's own tags do not make sense."""
        size = 64
        kind = np.full(size, -1, np.int64)
        index = np.zeros(size, np.int64)
        pattern = np.zeros(size, np.int64)
        config = _json_tag(self.tags, "Heraldry_Config")
        cmap = _json_tag(self.tags, "Heraldry_ChannelMap")
        resolution_ps = self.tags["MeasDesc_GlobalResolution"] * 1e12     # checked by read_ptu
        bin_ps = int(round(resolution_ps)) if (round(resolution_ps) >= 1 and abs(
            resolution_ps - round(resolution_ps)) < 1e-6) else resolution_ps
        if cmap:
            inputs, rules, patterns = _channel_map(cmap)
            for c, ptu_channel in inputs.items():
                kind[ptu_channel], index[ptu_channel] = Kind.TAG.value, c
            for r, ptu_channel in rules.items():
                kind[ptu_channel], index[ptu_channel] = Kind.HERALD.value, r
            record_mask = 0
            for p, ptu_channel in patterns.items():
                kind[ptu_channel], pattern[ptu_channel] = Kind.COINCIDENCE.value, p
                record_mask |= 1 << p
            n = len(inputs)
            if isinstance(config, dict) and "acquisition" in config:
                try:
                    acq = Acquisition(**config["acquisition"])
                    acq.model_settings()        # the reference model's own checks
                except (TypeError, ValueError) as error:
                    raise PTUError(f"Heraldry_Config does not describe an acquisition: "
                                   f"{error}") from None
                if (acq.channels != n or acq.rules < len(rules)
                        or record_mask != acq.coincidence_record_mask):
                    raise PTUError("Heraldry_Config and Heraldry_ChannelMap disagree")
                if abs(acq.bin_ps - resolution_ps) > 1e-6 * resolution_ps:
                    raise PTUError(f"Heraldry_Config's bin ({acq.bin_ps} ps) is not the file's "
                                   f"MeasDesc_GlobalResolution ({resolution_ps:g} ps)")
                return acq, (kind, index, pattern)
            # Written without an acquisition: the map still says channels, rules, patterns.
            try:
                acq = Acquisition(channels=n, rules=max(1, len(rules)), bin_ps=bin_ps,
                                  clock_hz=1e12 / bin_ps, coincidence_record_mask=record_mask,
                                  test_signal="off")
            except ValueError as error:
                raise PTUError(f"Heraldry_ChannelMap: {error}") from None
            return acq, (kind, index, pattern)
        highest = int(channel.max()) + 1 if len(channel) else 1
        declared = self.tags.get("HW_InpChannels", 1)
        if isinstance(declared, bool) or not isinstance(declared, int):
            raise PTUError("PTU tag HW_InpChannels has the wrong type")
        n = max(declared, highest)
        if highest > protocol.MAX_CHANNELS:
            raise PTUError(f"{self.paths[0]}: photons on channel {highest - 1}; heraldry "
                           f"replays at most {protocol.MAX_CHANNELS} inputs")
        n = min(n, protocol.MAX_CHANNELS)
        kind[:n], index[:n] = Kind.TAG.value, np.arange(n)
        acq = Acquisition(channels=n, rules=1, bin_ps=bin_ps, clock_hz=1e12 / bin_ps,
                          test_signal="off")
        return acq, (kind, index, pattern)

    def _block_edges(self, time_ps):
        n = len(time_ps)
        by_count = np.arange(0, n, self.block_events)
        step_ps = int(BLOCK_SECONDS * 1e12)
        # Where the BLOCK_SECONDS slot changes (not one edge per slot: a file may span years).
        by_time = np.flatnonzero(np.diff(time_ps // step_ps)) + 1
        return np.unique(np.concatenate([by_count, by_time, [n]]).astype(np.int64))

    def read_block(self, timeout=None):
        """The next :class:`Block`, or ``None`` at the end of the file. With ``realtime`` this
        waits (at most ``timeout`` s, then returns an empty block) until the block is due."""
        if self._start is None:
            self._start = self._clock()
        while self._next < len(self._edges) and self._edges[self._next] == (
                self._edges[self._next - 1] if self._next else 0):
            self._next += 1
        if self._next >= len(self._edges):
            return None
        lo = int(self._edges[self._next - 1]) if self._next else 0
        hi = int(self._edges[self._next])
        events = self.events[lo:hi]
        if self.realtime:
            due = self._start + int(events["time_ps"][-1]) * 1e-12
            wait = due - self._clock()
            if timeout is not None and wait > timeout:
                self._sleep(timeout)
                return Block(np.zeros(0, EVENT_DTYPE), {})
            if wait > 0:
                self._sleep(wait)
        self._next += 1
        return Block(events.copy(), {})

    def blocks(self):
        """Every remaining block, in order."""
        while (block := self.read_block()) is not None:
            if len(block.events):
                yield block

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def acquire_replay(source, *, progress=None, sink=None):
    """Play ``source`` (a :class:`ReplaySource` or a path); returns
    ``(AcquisitionResult, replay_checks)``.

    ``sink(events)`` gets every block (e.g. :meth:`heraldry.host.ptu.PTUWriter.write_block`);
    ``progress(done_ps, total_ps)`` is called after each block. ``replay_checks`` are the checks
    a file supports (see the module docstring).
    """
    from ..model import TAG_DTYPE, counts_from_tags
    from .acquire import AcquisitionResult
    wall = time.monotonic()
    if not isinstance(source, ReplaySource):
        source = ReplaySource(source)
    acq = source.acquisition
    parts = []
    total_ps = int(source.events["time_ps"][-1]) if len(source.events) else 0
    for block in source.blocks():
        parts.append(block.events)
        if sink is not None:
            sink(block.events)
        if progress is not None:
            progress(int(block.events["time_ps"][-1]), total_ps)
    events = np.concatenate(parts) if parts else np.zeros(0, EVENT_DTYPE)
    tags = events[events["kind"] == Kind.TAG.value]
    tag_bins = np.zeros(len(tags), TAG_DTYPE)
    tag_bins["time"] = tags["time_ps"] // acq.bin_ps if isinstance(acq.bin_ps, int) \
        else np.rint(tags["time_ps"] / acq.bin_ps)
    tag_bins["channel"] = tags["channel"]
    model = counts_from_tags(tag_bins, acq.model_settings())
    zeros = [0] * acq.channels
    counters = {
        "singles": model.singles.tolist(),
        "patterns": model.patterns[1:].tolist(),
        "heralds": (model.herald_counts.tolist() + [0] * acq.rules)[:acq.rules],
        "delay_dropped": zeros, "merger_dropped": list(zeros),
        "herald_dropped": [0] * acq.rules, "coincidence_dropped": [0],
    }
    checks = {"file_declares_no_loss": source.events_lost == 0}
    if source.tags.get("Heraldry_ChannelMap"):
        heralds = events[events["kind"] == Kind.HERALD.value]
        order = np.lexsort((heralds["channel"], heralds["time_ps"]))
        checks["herald_records_equal_model"] = (
            np.array_equal(heralds["time_ps"][order], model.heralds["time"] * acq.bin_ps)
            and np.array_equal(heralds["channel"][order], model.heralds["rule"]))
        coincidences = events[events["kind"] == Kind.COINCIDENCE.value]
        checks["coincidence_records_equal_model"] = (
            np.array_equal(coincidences["time_ps"],
                           model.coincidence_records["time"] * acq.bin_ps)
            and np.array_equal(coincidences["pattern"], model.coincidence_records["pattern"]))
    result = AcquisitionResult(
        acquisition=acq, duration_s=source.duration_s, events=events, counters=counters,
        lost={}, start_bin=0, wall_seconds=time.monotonic() - wall,
        device_seconds=source.seconds, port=", ".join(source.paths))
    return result, checks
