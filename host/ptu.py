"""PicoQuant PTU files, T2 mode (record type 0x01010204, HydraHarp V2 T2): writer and reader.

PTU is the time-tag format most analysis tools open (tttrlib, ptufile, phconvert, ETA, PicoQuant's
software). The facts used here are in ``docs/ptu-t2.md`` of the shared notes; the tests check
every file against the independent readers ``ptufile`` and ``tttrlib``.

Channel map (written to the header as the JSON tag ``Heraldry_ChannelMap``): with ``N`` physical
inputs and ``R`` herald rules,

* TAG records of input ``c`` are photons on PTU channel ``c`` (0 .. N-1);
* HERALD records of rule ``r`` are photons on channel ``N + r`` (at the completing event's time);
* COINCIDENCE records are photons on one channel per selected pattern: the k-th pattern of
  ``coincidence_patterns`` (ascending) on channel ``N + R + k``, at the window's ``t0``;
* LOSS records are not written as records: their counts go to ``Heraldry_EventsLost`` and set the
  events-dropped bit (0x80) of ``TTResult_MDescWarningFlags``;
* TAG records of the sync input (``sync_marker``: the sync markers, every Nth sync edge with
  ``--sync-marker-every N``) are PTU marker records, marker 1 (special bit, channel field 1:
  what PicoQuant's readers call a marker, tttrlib a marker event, phconvert channel 65), not
  photons; the map's ``"sync_marker"`` entry names the input.

Custom header tags: ``Heraldry_Config`` (JSON: the acquisition's settings), ``Heraldry_ChannelMap``
(JSON, above), ``Heraldry_EventsLost``, ``Heraldry_FilePart`` (rotation index),
``Heraldry_Summary`` (JSON given to :meth:`PTUWriter.close`, e.g. the run's summary with every
hardware counter; a slot of ``summary_bytes`` reserved when the file is opened, empty until
then) and, as plain numbers any PTU reader shows, the counters of the attempt clock from that
summary: ``Heraldry_Attempts`` (the sync edges counted), ``Heraldry_GatedOut(i)`` per input
(events outside their gate) and ``Heraldry_Heralds(r)`` per rule (the board's herald counter,
records lost on the way included); -1 where the summary has no such figure (no sync, no
summary, a run cut short). With attempts and an acquisition time ``TTResult_SyncRate`` is
attempts per second.

``N + R + len(coincidence_patterns)`` must not exceed 64 (the record's 6-bit channel; channel 63
is a photon channel like the others: overflow records are told apart by their special bit).

Time: one PTU time unit is one device bin (``MeasDesc_GlobalResolution`` = bin seconds); times
are from the run start. Records are written in time order: the merged stream puts a coincidence
record (time ``t0``) after tags up to one window later, so the writer holds back the last
``reorder_bins`` bins of events and sorts them (stable: equal times keep arrival order).

Files rotate before ``max_bytes`` (default just under 2 GB; older tttrlib crashed on larger
files): ``name.ptu``, ``name-001.ptu``, ``name-002.ptu``, ... Each part is a complete PTU file
with the full header, ``Heraldry_FilePart`` = its index, and absolute times (a part starts with
overflow records up to its first event's wrap), so the parts read one after the other give the
whole run.
"""

import dataclasses
import datetime
import json
import os
import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from .. import __version__, protocol
from ..protocol import Kind
from .events import EVENT_DTYPE

__all__ = ["RECORD_TYPE_HH2_T2", "WRAP", "MAX_WRAPS_PER_RECORD", "ROTATE_BYTES",
           "WARNING_EVENTS_DROPPED", "StopReason", "ChannelMap", "PTUWriter", "PTUData",
           "PTUError", "read_ptu", "read_tags", "part_path"]

MAGIC = b"PQTTTR\0\0"
TAG_VERSION = b"1.0.00\0\0"
#: HydraHarp V2 T2 records: the type every reader supports.
RECORD_TYPE_HH2_T2 = 0x01010204
#: Generic T2 (same bit layout; written by newer instruments; read, not written).
RECORD_TYPE_GENERIC_T2 = 0x00010207
TIMETAG_BITS = 25
CHANNEL_FIELD_BITS = 6
WRAP = 2 ** TIMETAG_BITS
OVERFLOW_CHANNEL = 2 ** CHANNEL_FIELD_BITS - 1
#: ``TTResult_MDescWarningFlags`` bit: events were dropped.
WARNING_EVENTS_DROPPED = 0x80
#: The PTU marker (channel field of a special record) that sync markers are written as.
SYNC_MARKER = 1
#: A special record's 6-bit channel field and special bit as one 7-bit "channel" (phconvert's
#: convention: marker m is 64 + m), so the writer sorts and encodes markers like photons.
_SPECIAL = 1 << CHANNEL_FIELD_BITS
#: Most wraps one overflow record carries by default. The format allows WRAP-1, but ptufile
#: (2026.2.6) multiplies the count by WRAP in 32 bits, so 128 or more wraps in one record are
#: misread there; 127 wraps (42 s at 10 ns bins) per record costs nothing and every reader agrees.
MAX_WRAPS_PER_RECORD = 2 ** 32 // WRAP - 1
#: Default rotation threshold: below 2**31 bytes with room to spare.
ROTATE_BYTES = 2_000_000_000

_TAG_HEAD = struct.Struct("<32siI8s")
_TYPE = {
    "Empty8": 0xFFFF0008, "Bool8": 0x00000008, "Int8": 0x10000008, "BitSet64": 0x11000008,
    "Float8": 0x20000008, "TDateTime": 0x21000008, "Float8Array": 0x2001FFFF,
    "AnsiString": 0x4001FFFF, "WideString": 0x4002FFFF, "BinaryBlob": 0xFFFFFFFF,
}
_TYPE_NAME = {code: name for name, code in _TYPE.items()}
_OVERFLOW_WORD = (1 << 31) | (OVERFLOW_CHANNEL << TIMETAG_BITS)


class PTUError(ValueError):
    """A file :func:`read_ptu` cannot read: not a PTU file, a damaged or truncated header, a
    record type other than T2, tags of the wrong type or out of range. One line, for the user."""


class StopReason(IntEnum):
    """``TTResult_StopReason`` values (PicoQuant's)."""
    TIME_OVER = 0
    MANUAL = 1
    OVERFLOW = 2
    FIFO_OVERRUN = -2
    QUEUE_OVERRUN = -9
    TRANSFER_FAILED = -10


def part_path(path, index):
    """Path of rotation part ``index``: ``name.ptu`` for 0, ``name-001.ptu`` for 1, ..."""
    if index == 0:
        return os.fspath(path)
    root, ext = os.path.splitext(os.fspath(path))
    return f"{root}-{index:03d}{ext}"


@dataclass(frozen=True)
class ChannelMap:
    """Where each kind of record goes among the 64 PTU channels (see the module docstring)."""
    channels: int
    rules: int = 0
    coincidence_patterns: tuple = ()
    sync_marker: int = None        # the input whose tags are sync markers (PTU marker 1)

    def __post_init__(self):
        patterns = tuple(sorted(int(p) for p in self.coincidence_patterns))
        object.__setattr__(self, "coincidence_patterns", patterns)
        if self.channels < 1 or self.rules < 0:
            raise ValueError("a channel map needs at least one input and no negative rules")
        if len(set(patterns)) != len(patterns) or any(p <= 0 for p in patterns):
            raise ValueError(f"coincidence patterns must be distinct and non-zero: {patterns}")
        if self.sync_marker is not None and not 0 <= self.sync_marker < self.channels:
            raise ValueError(f"the sync marker input {self.sync_marker} is not one of the "
                             f"{self.channels} inputs")
        used = self.channels + self.rules + len(patterns)
        if used > 2 ** CHANNEL_FIELD_BITS:
            raise ValueError(f"{self.channels} inputs + {self.rules} herald rules + "
                             f"{len(patterns)} coincidence patterns need {used} PTU channels; "
                             f"a record has {2 ** CHANNEL_FIELD_BITS}")

    def herald_channel(self, rule):
        return self.channels + rule

    def coincidence_channel(self, pattern):
        return self.channels + self.rules + self.coincidence_patterns.index(pattern)

    def lookup(self):
        """``(kind, index) -> PTU channel`` as a dense table ``table[kind, index]`` (-1: none);
        ``index`` is the channel, rule, or pattern."""
        table = np.full((2 ** 3, 2 ** protocol.PATTERN_BITS), -1, np.int16)
        table[Kind.TAG.value, :self.channels] = np.arange(self.channels)
        if self.sync_marker is not None:
            table[Kind.TAG.value, self.sync_marker] = _SPECIAL | SYNC_MARKER
        table[Kind.HERALD.value, :self.rules] = self.channels + np.arange(self.rules)
        for k, p in enumerate(self.coincidence_patterns):
            table[Kind.COINCIDENCE.value, p] = self.channels + self.rules + k
        return table

    def as_dict(self):
        out = {
            "inputs": {str(c): c for c in range(self.channels)},
            "herald_rules": {str(r): self.herald_channel(r) for r in range(self.rules)},
            "coincidence_patterns": {f"0b{p:0{self.channels}b}": self.coincidence_channel(p)
                                     for p in self.coincidence_patterns},
            "note": "PTU channel of each input, herald rule (at the completing event's time, "
                    "an exact rule's at its window's end) and recorded coincidence pattern (at "
                    "the window's t0); loss records are counted in Heraldry_EventsLost",
        }
        if self.sync_marker is not None:
            out["sync_marker"] = {"input": self.sync_marker, "marker": SYNC_MARKER}
            out["note"] += ("; the sync input's tags (sync markers) are PTU marker records, "
                            f"marker {SYNC_MARKER}")
        return out


def _tag(ident, type_name, value=0, index=-1):
    """One tag's bytes; returns ``(bytes, offset of the 8-byte value within them)``."""
    code = _TYPE[type_name]
    payload = b""
    if type_name in ("AnsiString", "WideString", "BinaryBlob", "Float8Array"):
        if type_name == "AnsiString":
            payload = value.encode("utf-8") + b"\0"
        elif type_name == "WideString":
            payload = value.encode("utf-16-le") + b"\0\0"
        elif type_name == "Float8Array":
            payload = np.asarray(value, "<f8").tobytes()
        else:
            payload = bytes(value)
        payload += b"\0" * (-len(payload) % 8)
        raw = struct.pack("<q", len(payload))
    elif type_name in ("Float8", "TDateTime"):
        raw = struct.pack("<d", value)
    elif type_name == "BitSet64":
        raw = struct.pack("<Q", value)
    else:
        raw = struct.pack("<q", int(value))
    name = ident.encode("ascii")
    if len(name) > 31:
        raise ValueError(f"tag name {ident!r} is longer than 31 characters")
    return _TAG_HEAD.pack(name, index, code, raw) + payload, 40


def _datetime_days(when):
    return when.timestamp() / 86400 + 25569


class PTUWriter:
    """Stream decoded records (``host.events.EVENT_DTYPE``, times in ps) into a PTU T2 file.

    Parameters
    ----------
    path : str or path
        First file; rotation parts get ``-001``, ``-002``, ... before the extension.
    bin_ps : int or float
        One device bin (= one PTU time unit) in picoseconds. Times must be whole bins.
    channel_map : ChannelMap
        Where inputs, herald rules and coincidence patterns go.
    config : dict, optional
        The full acquisition configuration, stored as the JSON tag ``Heraldry_Config``.
    reorder_bins : int
        How far (bins) a record may come after a later one in the stream; default
        ``2**(WINDOW_BITS + 1)``: a coincidence's ``t0`` is at most one window (plus, for F > 0,
        one cycle) before the tags ahead of it, and the merger's ``t0`` offset is 11 bits. A
        record earlier than the latest one minus ``reorder_bins`` raises ``ValueError``.
    max_bytes : int
        Rotate before a part would exceed this size.
    comment : str
        ``File_Comment``.
    hw_type : str
        ``HW_Type``.
    summary_bytes : int
        Room reserved for ``Heraldry_Summary`` (a longer summary is stored without indentation,
        then without ``patterns``, else as ``{"truncated": true}``).
    max_wraps_per_record : int
        Most wraps one overflow record carries (1 .. WRAP-1; default
        :data:`MAX_WRAPS_PER_RECORD`, the most that every tested reader decodes).

    Members: ``paths`` (parts written so far), ``records`` (records of all parts, overflow
    records included), ``events`` (non-overflow records), ``lost`` (items of loss records),
    ``failed`` (the ``OSError`` that stopped the writing, e.g. a full disk, else ``None``).

    Every :meth:`write_block` ends with a flush to the operating system, and the header's record
    count stays 0 until :meth:`close` patches it: a killed run leaves files that size-based
    readers (ptufile, tttrlib) open in full, less the last ``reorder_bins`` still held back.

    When writing fails (``OSError``: no space left, file too large, ...), :meth:`write_block`
    (or :meth:`close`) first makes the part being written readable: it is cut to the whole
    records that reached the file, its record count is patched in place (no new space needed),
    and ``records`` is set to what the parts hold (``events`` still counts every event handed to
    the file, some of which may have been cut); then the error is raised. Nothing more is
    written; :meth:`close` still patches every header (stop reason, events-dropped flag,
    summary). A part whose header could not be written is removed.
    """

    def __init__(self, path, *, bin_ps, channel_map, config=None, reorder_bins=None,
                 max_bytes=ROTATE_BYTES, comment="", hw_type="heraldry",
                 summary_bytes=16384, max_wraps_per_record=MAX_WRAPS_PER_RECORD):
        if not 1 <= max_wraps_per_record <= WRAP - 1:
            raise ValueError(f"max_wraps_per_record must be 1..{WRAP - 1}")
        self.max_wraps = max_wraps_per_record
        self.summary_bytes = summary_bytes - summary_bytes % 8
        self.bin_ps = bin_ps
        self.map = channel_map
        self.config = config
        self.reorder_bins = (2 ** (protocol.WINDOW_BITS + 1) if reorder_bins is None
                             else reorder_bins)
        self.max_bytes = max_bytes
        self.comment = comment
        self.hw_type = hw_type
        self.base_path = os.fspath(path)
        self.paths = []
        self.records = 0
        self.events = 0
        self.lost = 0
        self._lookup = channel_map.lookup()
        self._tag_counts = np.zeros(channel_map.channels, np.int64)
        self._last_units = 0            # last time written (units)
        self._max_seen = None
        self._pending_units = np.zeros(0, np.int64)
        self._pending_channels = np.zeros(0, np.uint8)
        self._file = None
        self._closed = False
        self.failed = None
        self._open_part()

    @classmethod
    def for_acquisition(cls, path, acq, extra_config=None, **kwargs):
        """A writer for an :class:`heraldry.host.config.Acquisition`: its bin, its channel map
        (``acq.rules`` herald channels, the patterns of ``coincidence_record_mask``), and its
        settings as ``Heraldry_Config`` (``{"acquisition": {...}, **extra_config}``)."""
        patterns = [p for p in range(1, 2 ** acq.channels) if acq.coincidence_record_mask >> p & 1]
        cmap = ChannelMap(acq.channels, acq.rules, tuple(patterns), acq.sync_channel)
        config = {"acquisition": dataclasses.asdict(acq), **(extra_config or {})}
        return cls(path, bin_ps=acq.bin_ps, channel_map=cmap, config=config, **kwargs)

    # -- header ------------------------------------------------------------------------------

    def _header(self, part):
        n = self.map.channels
        bin_s = self.bin_ps * 1e-12
        tags = [
            ("File_GUID", "AnsiString", "{" + str(uuid.uuid4()) + "}"),
            ("File_CreatingTime", "TDateTime",
             _datetime_days(datetime.datetime.now(datetime.timezone.utc))),
            ("File_Comment", "AnsiString", self.comment),
            ("CreatorSW_Name", "AnsiString", "heraldry"),
            ("CreatorSW_Version", "AnsiString", __version__),
            ("Measurement_Mode", "Int8", 2),
            ("Measurement_SubMode", "Int8", 1),
            ("MeasDesc_BinningFactor", "Int8", 1),
            ("MeasDesc_GlobalResolution", "Float8", bin_s),
            ("MeasDesc_Resolution", "Float8", bin_s),
            ("MeasDesc_AcquisitionTime", "Int8", 0, "acquisition_ms"),
            ("HW_Type", "AnsiString", self.hw_type),
            ("HW_InpChannels", "Int8", n),
        ]
        tags += [("HWInpChan_Offset", "Int8", 0, None, i) for i in range(n)]
        tags += [("TTResult_SyncRate", "Int8", 0, "sync_rate")]
        tags += [("TTResult_InputRate", "Int8", 0, ("rate", i), i) for i in range(n)]
        tags += [
            ("TTResult_StopReason", "Int8", int(StopReason.TIME_OVER), "stop_reason"),
            ("TTResult_MDescWarningFlags", "BitSet64", 0, "warnings"),
            ("TTResult_NumberOfRecords", "Int8", 0, "records"),
            ("TTResultFormat_BitsPerRecord", "Int8", 32),
            ("TTResultFormat_TTTRRecType", "Int8", RECORD_TYPE_HH2_T2),
            ("Heraldry_Config", "AnsiString", json.dumps(self.config, sort_keys=True)),
            ("Heraldry_ChannelMap", "AnsiString", json.dumps(self.map.as_dict())),
            ("Heraldry_EventsLost", "Int8", 0, "lost"),
            ("Heraldry_FilePart", "Int8", part),
            # The attempt clock's counters, from close()'s summary (-1: not known).
            ("Heraldry_Attempts", "Int8", -1, "attempts"),
        ]
        tags += [("Heraldry_GatedOut", "Int8", -1, ("gated_out", i), i) for i in range(n)]
        tags += [("Heraldry_Heralds", "Int8", -1, ("heralds", r), r)
                 for r in range(self.map.rules)]
        tags += [
            # An empty string in a slot of summary_bytes, filled in by close().
            ("Heraldry_Summary", "AnsiString", "\0" * (self.summary_bytes - 1), "summary"),
            ("Header_End", "Empty8", 0),
        ]
        out = bytearray(MAGIC + TAG_VERSION)
        offsets = {}
        for tag in tags:
            ident, type_name, value = tag[:3]
            key = tag[3] if len(tag) > 3 else None
            index = tag[4] if len(tag) > 4 else -1
            raw, value_at = _tag(ident, type_name, value, index)
            if key is not None:
                offsets[key] = len(out) + value_at
            out += raw
        return bytes(out), offsets

    def _open_part(self):
        path = part_path(self.base_path, len(self.paths))
        header, self._offsets = self._header(len(self.paths))
        if len(header) + 4 * 2 > self.max_bytes:
            raise ValueError(f"max_bytes {self.max_bytes} leaves no room for records")
        self._file = open(path, "wb")
        try:
            self._file.write(header)
            self._file.flush()
        except OSError as error:
            # Without its whole header the part is no PTU file: leave nothing behind.
            file, self._file = self._file, None
            _close_quietly(file)
            os.remove(path)
            if not error.filename:
                error.filename = path           # a buffered write's error names no file
            raise
        self.paths.append(path)
        self._header_bytes = self._part_bytes = len(header)
        self._part_records = 0
        self._wraps = 0                 # wraps accounted for by this part's overflow records

    def _close_part(self):
        self._file.seek(self._offsets["records"])
        self._file.write(struct.pack("<q", self._part_records))
        self._file.close()
        self._file = None

    # -- records -----------------------------------------------------------------------------

    def _units(self, time_ps):
        time_ps = np.asarray(time_ps, np.int64)
        if isinstance(self.bin_ps, (int, np.integer)):
            units, rest = np.divmod(time_ps, self.bin_ps)
            if np.any(rest):
                raise ValueError(f"times are not whole {self.bin_ps} ps bins")
            return units
        return np.rint(time_ps / self.bin_ps).astype(np.int64)

    def _salvage(self, error):
        """After ``error`` (an OSError) while writing: cut the open part to the whole records
        on disk and patch its record count (see the class docstring)."""
        self.failed = error
        if self._file is not None and not error.filename:
            error.filename = self.paths[-1]     # a buffered write's error names no file
        self._pending_units = self._pending_units[:0]
        self._pending_channels = self._pending_channels[:0]
        file, self._file = self._file, None
        if file is None:
            return              # a new part's header failed: it was removed
        _close_quietly(file)    # what the buffer still holds may or may not reach the file
        path = self.paths[-1]
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            whole = max(0, (size - self._header_bytes) // 4)
            f.truncate(self._header_bytes + 4 * whole)
            f.seek(self._offsets["records"])
            f.write(struct.pack("<q", whole))
        self.records += whole - self._part_records
        self._part_records = whole

    def write_block(self, events):
        """Add a block of decoded records (any order within ``reorder_bins``), then flush.
        Raises ``OSError`` when the file cannot be written (after making it readable, see the
        class docstring), ``ValueError`` for records it cannot place."""
        if self._closed:
            raise ValueError("the PTU writer is closed")
        if self.failed is not None:
            raise OSError(self.failed.errno, self.failed.strerror, self.failed.filename)
        events = np.asarray(events, EVENT_DTYPE)
        kind = events["kind"]
        loss = kind == Kind.LOSS.value
        self.lost += int(events["count"][loss].sum())
        events = events[~loss]
        if len(events):
            index = np.where(events["kind"] == Kind.COINCIDENCE.value, events["pattern"],
                             events["channel"]).astype(np.int64)
            if np.any(events["kind"] > 7) or np.any(index >= self._lookup.shape[1]):
                raise ValueError("records outside the protocol's kinds or indices")
            channels = self._lookup[events["kind"], index]
            if np.any(channels < 0):
                bad = events[channels < 0][0]
                raise ValueError(f"no PTU channel for a record of kind {Kind(bad['kind']).name} "
                                 f"channel {bad['channel']} pattern {bad['pattern']}")
            units = self._units(events["time_ps"])
            floor = self._last_units if self._max_seen is None else max(
                self._last_units, self._max_seen - self.reorder_bins)
            if units.min() < floor:
                raise ValueError(f"a record at {units.min()} bins is out of order: before "
                                 f"{floor} bins (reorder_bins = {self.reorder_bins} behind the "
                                 f"latest record, or negative)")
            is_tag = events["kind"] == Kind.TAG.value
            self._tag_counts += np.bincount(channels[is_tag], minlength=self.map.channels)[
                :self.map.channels]
            top = int(units.max())
            self._max_seen = top if self._max_seen is None else max(self._max_seen, top)
            units = np.concatenate([self._pending_units, units])
            channels = np.concatenate([self._pending_channels, channels.astype(np.uint8)])
            order = np.argsort(units, kind="stable")
            units, channels = units[order], channels[order]
            due = np.searchsorted(units, self._max_seen - self.reorder_bins, side="right")
            self._pending_units, self._pending_channels = units[due:], channels[due:]
            try:
                self._emit(units[:due], channels[:due])
            except OSError as error:
                self._salvage(error)
                raise
        try:
            self._file.flush()
        except OSError as error:
            self._salvage(error)
            raise

    def _encode(self, units, channels):
        """Records for sorted ``units``/``channels`` after ``self._wraps``; also returns, per
        event, the number of records up to and including it."""
        wrap = units >> TIMETAG_BITS
        step = np.diff(wrap, prepend=np.int64(self._wraps))
        cap = self.max_wraps
        overflows = (step + cap - 1) // cap
        ends = np.arange(1, len(units) + 1) + np.cumsum(overflows)
        out = np.empty(int(ends[-1]) if len(ends) else 0, np.uint32)
        out[ends - 1] = ((channels.astype(np.uint32) << TIMETAG_BITS)
                         | (units & (WRAP - 1)).astype(np.uint32))
        total = int(overflows.sum())
        if total:
            owner = np.repeat(np.arange(len(units)), overflows)
            first = (ends - 1 - overflows)[owner]
            k = np.arange(total) - np.repeat(np.cumsum(overflows) - overflows, overflows)
            last = k == overflows[owner] - 1
            count = np.where(last, step[owner] - (overflows[owner] - 1) * cap, cap)
            out[first + k] = np.uint32(_OVERFLOW_WORD) | count.astype(np.uint32)
        return out, ends

    def _emit(self, units, channels):
        while len(units):
            records, ends = self._encode(units, channels)
            room = (self.max_bytes - self._part_bytes) // 4
            fit = int(np.searchsorted(ends, room, side="right"))
            if fit == 0 and self._part_records == 0:
                raise ValueError(f"max_bytes {self.max_bytes} cannot hold one event")
            if fit:
                n_records = int(ends[fit - 1])
                self._file.write(records[:n_records].tobytes())
                self._part_bytes += 4 * n_records
                self._part_records += n_records
                self.records += n_records
                self.events += fit
                self._wraps = int(units[fit - 1] >> TIMETAG_BITS)
                self._last_units = int(units[fit - 1])
            units, channels = units[fit:], channels[fit:]
            if len(units):
                self._close_part()
                self._open_part()

    # -- end ---------------------------------------------------------------------------------

    def close(self, *, acquisition_time_s=None, input_rates_hz=None,
              stop_reason=StopReason.TIME_OVER, events_dropped=None, summary=None,
              incomplete=False):
        """Write what is held back, then patch every part's header: record count (own part),
        ``MeasDesc_AcquisitionTime`` (default: the last event's time), ``TTResult_InputRate(i)``
        (default: tags written per input / acquisition time), ``TTResult_StopReason``,
        ``Heraldry_EventsLost`` and the events-dropped warning flag (set when
        ``events_dropped`` (default: the loss records' items) is non-zero, when ``incomplete``
        (a run cut short: what the board still held never arrived), or when writing failed),
        and ``Heraldry_Summary`` (``summary``, a JSON-able dict, if given). From the summary's
        ``attempts``, ``gated_out`` and ``heralds`` (where they are numbers):
        ``Heraldry_Attempts``, ``Heraldry_GatedOut(i)``, ``Heraldry_Heralds(r)`` and
        ``TTResult_SyncRate`` (attempts / acquisition time).

        Raises ``OSError`` if the held-back records cannot be written (after patching every
        header as above) or a header cannot be patched. After a failed :meth:`write_block` it
        patches the headers and raises nothing more."""
        if self._closed:
            return
        error = None
        if self.failed is None:
            try:
                self._emit(self._pending_units, self._pending_channels)
                self._pending_units = self._pending_units[:0]
                self._pending_channels = self._pending_channels[:0]
                self._close_part()
            except OSError as caught:
                self._salvage(caught)
                error = caught
        self._closed = True
        if acquisition_time_s is None:
            acquisition_time_s = self._last_units * self.bin_ps * 1e-12
        if input_rates_hz is None:
            input_rates_hz = (self._tag_counts / acquisition_time_s if acquisition_time_s > 0
                              else np.zeros(self.map.channels))
        dropped = self.lost if events_dropped is None else int(events_dropped)
        flagged = dropped or incomplete or self.failed is not None
        patches = {"acquisition_ms": int(round(acquisition_time_s * 1e3)),
                   "stop_reason": int(stop_reason), "lost": dropped,
                   "warnings": WARNING_EVENTS_DROPPED if flagged else 0}
        for i, rate in enumerate(input_rates_hz):
            patches[("rate", i)] = int(round(rate))
        patches.update(self._counter_patches(summary or {}, acquisition_time_s))
        text = self._summary_text(summary) if summary is not None else None
        for path in self.paths:
            with open(path, "r+b") as f:
                for key, value in patches.items():
                    f.seek(self._offsets[key])
                    f.write(struct.pack("<Q" if key == "warnings" else "<q", value))
                if text is not None:
                    f.seek(self._offsets["summary"] + 8)      # the payload follows the value
                    f.write(text)
        if error is not None:
            raise error

    def _counter_patches(self, summary, acquisition_time_s):
        """The attempt clock's header tags from ``summary`` (a figure that is absent or not a
        whole number stays -1)."""
        def known(value):
            return (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                    and value >= 0)
        patches = {}
        attempts = summary.get("attempts")
        if known(attempts):
            patches["attempts"] = attempts
            if acquisition_time_s > 0:
                patches["sync_rate"] = int(round(attempts / acquisition_time_s))
        for group, size in (("gated_out", self.map.channels), ("heralds", self.map.rules)):
            values = summary.get(group)
            if isinstance(values, (list, tuple)):
                for i, value in enumerate(values[:size]):
                    if known(value):
                        patches[(group, i)] = value
        return patches

    def _summary_text(self, summary):
        for variant in (summary, {k: v for k, v in summary.items() if k != "patterns"},
                        {"truncated": True}):
            for indent in (1, None):
                text = json.dumps(variant, indent=indent, default=str).encode("utf-8") + b"\0"
                if len(text) <= self.summary_bytes:
                    return text
        return b"\0"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(stop_reason=StopReason.TIME_OVER if exc[0] is None else StopReason.MANUAL)


def _close_quietly(file):
    """Close ``file`` after a failed write: flushing its buffer may fail again (the descriptor
    is closed all the same)."""
    try:
        file.close()
    except OSError:
        pass


# -- reading ---------------------------------------------------------------------------------

def read_tags(f):
    """Parse a PTU header from the binary file ``f``: returns ``(tags, data_offset)``.

    ``tags`` maps a name to its value, or for array-element tags to ``{index: value}``.
    Raises :class:`PTUError` for anything that is not a well-formed header (the header cannot
    claim more bytes than the file has)."""
    head = f.read(16)
    if head[:8] != MAGIC:
        raise PTUError("not a PTU file (no PQTTTR magic)")
    size = _size(f)
    tags = {}
    while True:
        raw = f.read(_TAG_HEAD.size)
        if len(raw) < _TAG_HEAD.size:
            raise PTUError("PTU header ends without Header_End")
        name, index, code, value = _TAG_HEAD.unpack(raw)
        name = name.split(b"\0", 1)[0].decode("ascii", "replace")
        kind = _TYPE_NAME.get(code)
        if kind in ("AnsiString", "WideString", "BinaryBlob", "Float8Array"):
            length = struct.unpack("<q", value)[0]
            if not 0 <= length <= size - f.tell():
                raise PTUError(f"PTU tag {name}: {length} bytes of payload, beyond the file's end")
            payload = f.read(length)
            if kind == "AnsiString":
                value = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
            elif kind == "WideString":
                value = payload[:len(payload) & ~1].decode("utf-16-le", "replace").split("\0", 1)[0]
            elif kind == "Float8Array":
                value = np.frombuffer(payload[:len(payload) & ~7], "<f8").copy()
            else:
                value = payload
        elif kind in ("Float8", "TDateTime"):
            value = struct.unpack("<d", value)[0]
        elif kind == "BitSet64":
            value = struct.unpack("<Q", value)[0]
        elif kind == "Bool8":
            value = struct.unpack("<q", value)[0] != 0
        else:
            value = struct.unpack("<q", value)[0]
        if index >= 0:
            entry = tags.setdefault(name, {})
            if not isinstance(entry, dict):
                raise PTUError(f"PTU tag {name} is both a scalar and an array")
            entry[index] = value
        elif isinstance(tags.get(name), dict):
            raise PTUError(f"PTU tag {name} is both a scalar and an array")
        else:
            tags[name] = value
        if name == "Header_End":
            return tags, f.tell()


def _size(f):
    position = f.tell()
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(position)
    return size


def _number(tags, name, default=None, *, integer=False):
    """A numeric scalar tag (or ``default`` when absent); PTUError when it is not one."""
    value = tags.get(name, default)
    if value is None:
        raise PTUError(f"PTU header has no {name}")
    if isinstance(value, (dict, str, bytes, np.ndarray)) or (integer and isinstance(value, float)):
        raise PTUError(f"PTU tag {name} has the wrong type")
    return value


@dataclass
class PTUData:
    """What :func:`read_ptu` found: non-overflow records in file order.

    ``time_ps`` (int64 when the resolution is a whole number of ps, else float64), ``channel``
    (the 6-bit channel field), ``special`` (True: sync (channel 0) or marker (1..15) record),
    ``records`` (all records read, overflows included), ``overflows`` (overflow records),
    ``declared`` (``TTResult_NumberOfRecords``; ``None`` when the header has none or 0, as in a
    file whose writer never finished it), ``cut_bytes`` (bytes of a last record cut short:
    ``0..3``, only when the file holds fewer whole records than declared or none is declared),
    ``end_ps`` (the time the records reach: the last record's, overflow records included).

    :attr:`missing` tells whether records the header declares are not in the file."""
    tags: dict
    time_ps: np.ndarray
    channel: np.ndarray
    special: np.ndarray
    records: int
    overflows: int
    declared: int = None
    cut_bytes: int = 0
    end_ps: float = 0

    @property
    def missing(self):
        """Records the header declares that the file does not hold (0 when it holds them all,
        ``None`` when the header declares no count)."""
        return None if self.declared is None else max(0, self.declared - self.records)

    @property
    def photons(self):
        return ~self.special


def read_ptu(path):
    """Read a T2 PTU file of record type 0x01010204 (HydraHarp V2, ours) or 0x00010207
    (Generic T2, same layout). The record count is the file size's (like tttrlib), or the
    header's when that is smaller and non-zero (trailing bytes). A file holding fewer whole
    records than its header declares (cut short), or declaring none (never finished) is read
    as far as it goes: :attr:`PTUData.missing` and :attr:`PTUData.cut_bytes` say so.

    ``path`` may also be a binary file object (seekable). Raises :class:`PTUError` (a
    ValueError) for a file that is not one we can read, ``OSError`` when it cannot be read."""
    if hasattr(path, "read"):
        tags, offset = read_tags(path)
        data = path.read()
    else:
        with open(path, "rb") as f:
            tags, offset = read_tags(f)
            data = f.read()
    rtype = _number(tags, "TTResultFormat_TTTRRecType", integer=True)
    if rtype not in (RECORD_TYPE_HH2_T2, RECORD_TYPE_GENERIC_T2):
        raise PTUError(f"record type {rtype:#x} is not a supported T2 type")
    n = len(data) // 4
    declared = _number(tags, "TTResult_NumberOfRecords", 0, integer=True)
    if declared < 0:
        raise PTUError(f"PTU tag TTResult_NumberOfRecords = {declared} is not a count")
    if 0 < declared < n:
        n = declared
    # A last record cut mid-way (the file was copied or written only in part): its bytes are
    # not a record. Trailing bytes after all the declared records are not a cut record.
    cut = len(data) % 4 if not 0 < declared <= n else 0
    resolution_ps = _number(tags, "MeasDesc_GlobalResolution") * 1e12
    if not 1e-3 <= resolution_ps <= 1e12:   # a T2 time unit is 1 fs .. 1 s
        raise PTUError(f"MeasDesc_GlobalResolution {resolution_ps * 1e-12:g} s is not a time "
                       f"unit")
    raw = np.frombuffer(data, "<u4", count=n).astype(np.int64)
    special = (raw >> 31).astype(bool)
    channel = (raw >> TIMETAG_BITS) & OVERFLOW_CHANNEL
    timetag = raw & (WRAP - 1)
    overflow = special & (channel == OVERFLOW_CHANNEL)
    wraps = np.cumsum(np.where(overflow, np.where(timetag == 0, 1, timetag), 0))
    units = wraps * WRAP + timetag
    keep = ~overflow
    whole = round(resolution_ps)
    last = int(wraps[-1]) * WRAP + WRAP if len(wraps) else 0     # beyond every record's time
    if last * resolution_ps >= 2 ** 63:
        raise PTUError(f"the records reach {last * resolution_ps * 1e-12:.3g} s: beyond "
                       f"2**63 ps (overflow records that make no sense?)")
    if whole >= 1 and abs(resolution_ps - whole) < 1e-6 * whole:
        time_ps = units[keep] * whole
    else:
        time_ps = units[keep] * resolution_ps
    end_ps = float(units[-1]) * resolution_ps if n else 0.0
    return PTUData(tags=tags, time_ps=time_ps, channel=channel[keep].astype(np.uint8),
                   special=special[keep], records=n, overflows=int(overflow.sum()),
                   declared=declared or None, cut_bytes=cut, end_ps=end_ps)
