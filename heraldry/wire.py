"""Reference codec of the link byte stream: the executable spec of ``docs/protocol.md``.

Slow, plain Python, written to be read. The gateware encoder (``gateware/encoder.py``) is tested
byte for byte against :func:`encode_stream`; the fast host decoder (``host/decoder.py``) is tested
record for record and counter for counter against :func:`decode_bytes`.

Every width, code and address comes from :mod:`heraldry.protocol`; :class:`WireFormat` derives
from them the payload fields and record lengths of one core (channels, rules, fine bits).

Record dicts (input of :func:`encode_records`, output of :func:`decode_bytes`):

* ``{"kind": Kind.TAG, "channel", "time"}``, ``{"kind": Kind.COINCIDENCE, "pattern", "time"}``
  (``time`` = t0), ``{"kind": Kind.HERALD, "rule", "pattern", "time"}`` (with ``gates``
  also ``"attempt"`` and ``"offset"``, its place in the attempt clock),
  ``{"kind": Kind.LOSS, "cause", "index", "count"}``: times are absolute, unwrapped, in bins.
  A LOSS record carries no time on the wire; the decoder adds ``"time"`` = the running time T
  at which it was read (the encoder ignores a ``time`` key on LOSS records).
* ``{"kind": "anchor", "time"}``, ``{"kind": "time"}`` and ``{"kind": "check"}`` (``crc`` and
  the CHECK's ``bytes`` computed by the encoder unless given; the decoder returns them).
* ``{"kind": "status" | "reply", "ok", "seq", "address", "value"}`` (the encoder adds the
  ``check``, :func:`~heraldry.protocol.reply_check`, unless given; the decoder takes only records
  whose check matches and leaves it out).
"""

from amaranth.hdl import Shape

from .protocol import (  # noqa: F401 (re-exported: wire constants live in protocol)
    CHECK_CRC_INIT, CHECK_CRC_POLY, CHECK_FIELD_BITS, DEFAULT_ANCHOR_INTERVAL, FIXED_LENGTH_KINDS,
    WIRE_GROUP_RECORDS,
    REGISTER_VALUE_BITS, REPLY_CHECK_BITS, REPLY_FIELD_BITS, reply_check,
    CHANNEL_BITS, COMMAND_BYTES, LOSS_COUNT_BITS, MAX_CHANNELS, MAX_RULES,
    COMMAND_CHECK_BITS, COMMAND_CHECK_INIT, COMMAND_OP_BITS, COMMAND_PAYLOAD_BITS,
    command_check_step,
    ATTEMPT_BITS, GATE_BITS, HERALD_UNSYNCED_OFFSET,
    REGISTER_ADDRESS_BITS, RULE_BITS, WIRE_ANCHOR_TIME_BITS, WIRE_BITS_PER_BYTE, WIRE_KIND_SHIFT,
    WIRE_OTHER_FIRST_BITS, WIRE_SEQ_BITS, WIRE_START, WIRE_TAG_FIRST_BITS, WIRE_TAG_FLAG,
    Command, Kind, LossCause, WireKind, time_bits, wire_channel_bits,
)

__all__ = [
    "CHECK_FIELD_BITS", "CHECK_CRC_POLY", "CHECK_CRC_INIT", "REGISTER_VALUE_BITS",
    "DEFAULT_ANCHOR_INTERVAL", "FIXED_LENGTH_KINDS", "WireFormat", "crc16", "zigzag", "unzigzag",
    "split_records",
    "encode_records", "encode_stream", "decode_bytes", "encode_command", "decode_command",
    "command_check",
]

_CAUSE_BITS = Shape.cast(LossCause).width
_CAUSES = frozenset(cause.value for cause in LossCause)
_CONTINUATION = (1 << WIRE_BITS_PER_BYTE) - 1



_SIDE_KINDS = {"status": WireKind.STATUS, "reply": WireKind.REPLY}


def crc16(data, crc=CHECK_CRC_INIT):
    """CRC of the CHECK record over ``data``, continuing from ``crc``."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CHECK_CRC_POLY if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def zigzag(d):
    """Signed -> unsigned: ``2d`` for ``d >= 0``, ``-2d - 1`` for ``d < 0``."""
    return 2 * d if d >= 0 else -2 * d - 1


def unzigzag(z):
    """Inverse of :func:`zigzag`."""
    return z >> 1 if not z & 1 else -(z >> 1) - 1


def _bytes_for(bits, first_bits):
    """Bytes needed for a payload of ``bits`` bits (at least the first byte)."""
    rest = max(0, bits - first_bits)
    return 1 + -(-rest // WIRE_BITS_PER_BYTE)


class WireFormat:
    """Payload fields and record lengths of the wire format for one core.

    Parameters: ``channels`` N (1 .. MAX_CHANNELS), ``rules`` R (1 .. MAX_RULES), ``fine_bits``,
    ``gates`` (a core with ``CAPABILITY_GATES``: HERALD records carry ``attempt`` and
    ``sync_offset`` before their time field).

    Members: ``fields[kind]`` = ``[(name, width), ...]`` from the least significant bit, for
    ``kind`` = ``Kind.TAG`` or a :class:`WireKind` (``None`` for the reserved TIME kind; the last
    field of TAG/COINCIDENCE/HERALD is the time field, ``time_bits(F)`` wide);
    ``payload_bits[kind]``, ``max_bytes[kind]`` (longest legal record) and ``fixed_bytes[kind]``
    (the exact length of a control record, ``None`` for the variable-length kinds).
    """

    def __init__(self, channels, rules, fine_bits=0, gates=False):
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, not {channels}")
        if not 1 <= rules <= MAX_RULES:
            raise ValueError(f"rules must be 1..{MAX_RULES}, not {rules}")
        self.channels = channels
        self.rules = rules
        self.fine_bits = fine_bits
        self.gates = bool(gates)
        self.channel_bits = wire_channel_bits(channels)
        self.time_bits = time_bits(fine_bits)
        register = [("ok", 1), ("seq", WIRE_SEQ_BITS), ("address", REGISTER_ADDRESS_BITS),
                    ("value", REGISTER_VALUE_BITS), ("check", REPLY_CHECK_BITS)]
        self.fields = {
            Kind.TAG: [("channel", self.channel_bits), ("delta", self.time_bits)],
            WireKind.COINCIDENCE: [("pattern", channels), ("offset", self.time_bits)],
            WireKind.HERALD: [("rule", RULE_BITS), ("pattern", channels)]
            + ([("synced", 1), ("attempt", ATTEMPT_BITS), ("sync_offset", GATE_BITS)]
               if gates else [])
            + [("offset", self.time_bits)],
            WireKind.LOSS: [("cause", _CAUSE_BITS), ("index", CHANNEL_BITS),
                            ("count", LOSS_COUNT_BITS)],
            WireKind.TIME: [("crc", CHECK_FIELD_BITS)],
            WireKind.ANCHOR: [("time", WIRE_ANCHOR_TIME_BITS)],
            WireKind.CHECK: [("bytes", CHECK_FIELD_BITS), ("crc", CHECK_FIELD_BITS)],
            WireKind.STATUS: register,
            WireKind.REPLY: register,
        }
        #: With ``gates``: the HERALD layout when its ``synced`` bit is 0 (no attempt and no
        #: sync offset on the wire: attempt 0 and sync offset ``HERALD_UNSYNCED_OFFSET``).
        self.herald_unsynced = ([("rule", RULE_BITS), ("pattern", channels), ("synced", 1),
                                 ("offset", self.time_bits)] if gates else None)
        self.payload_bits = {}
        self.max_bytes = {}
        self.fixed_bytes = {}
        for kind, fields in self.fields.items():
            first = WIRE_TAG_FIRST_BITS if kind is Kind.TAG else WIRE_OTHER_FIRST_BITS
            bits = None if fields is None else sum(width for _, width in fields)
            self.payload_bits[kind] = bits
            self.max_bytes[kind] = None if bits is None else _bytes_for(bits, first)
            self.fixed_bytes[kind] = self.max_bytes[kind] if kind in FIXED_LENGTH_KINDS else None

    # -- one record <-> bytes --------------------------------------------------------------

    def layout(self, kind, synced=True):
        """The ``[(name, width), ...]`` of ``kind``; with ``gates`` a HERALD's depends on its
        ``synced`` bit."""
        if kind is WireKind.HERALD and self.gates and not synced:
            return self.herald_unsynced
        return self.fields[kind]

    def pack(self, kind, values):
        """Payload integer of ``kind`` from ``values`` (a dict of field values; with ``gates`` a
        HERALD's ``synced`` says which layout)."""
        if kind is WireKind.HERALD and self.gates:
            values = {"synced": 1, **values}
        payload, shift = 0, 0
        for name, width in self.layout(kind, values.get("synced", 1)):
            value = int(values[name])
            if not 0 <= value < (1 << width):
                raise ValueError(f"{kind}: field {name} = {value} does not fit {width} bits")
            payload |= value << shift
            shift += width
        return payload

    def unpack(self, kind, payload):
        """Field values of ``kind`` from its payload integer (the inverse of :meth:`pack`); a
        HERALD without ``synced`` (``gates``) gets ``attempt`` 0 and ``sync_offset``
        ``HERALD_UNSYNCED_OFFSET``, the values that layout stands for."""
        synced = True
        if kind is WireKind.HERALD and self.gates:
            synced = bool((payload >> (RULE_BITS + self.channels)) & 1)
        values, shift = {}, 0
        for name, width in self.layout(kind, synced):
            values[name] = (payload >> shift) & ((1 << width) - 1)
            shift += width
        if not synced:
            values["attempt"], values["sync_offset"] = 0, HERALD_UNSYNCED_OFFSET
        return values

    def payload_width(self, kind, payload):
        """Bits the fields of this payload's layout take (:attr:`payload_bits` but for a HERALD
        without ``synced``)."""
        if kind is WireKind.HERALD and self.gates \
                and not (payload >> (RULE_BITS + self.channels)) & 1:
            return sum(width for _, width in self.herald_unsynced)
        return self.payload_bits[kind]

    def record_bytes(self, kind, payload):
        """The bytes of one record: minimal length, or ``fixed_bytes[kind]`` for control kinds."""
        if kind is Kind.TAG:
            first_bits, first = WIRE_TAG_FIRST_BITS, WIRE_START
        else:
            first_bits = WIRE_OTHER_FIRST_BITS
            first = WIRE_START | WIRE_TAG_FLAG | (kind.value << WIRE_KIND_SHIFT)
        out = [first | (payload & ((1 << first_bits) - 1))]
        rest = payload >> first_bits
        length = self.fixed_bytes.get(kind) or _bytes_for(payload.bit_length(), first_bits)
        for _ in range(length - 1):
            out.append(rest & _CONTINUATION)
            rest >>= WIRE_BITS_PER_BYTE
        assert rest == 0
        return bytes(out)

    @staticmethod
    def record_kind(first):
        """Kind (``Kind.TAG`` or a WireKind) of a record from its first byte (bit 7 set)."""
        if not first & WIRE_TAG_FLAG:
            return Kind.TAG
        return WireKind((first >> WIRE_KIND_SHIFT) & ((1 << Shape.cast(WireKind).width) - 1))

    def payload_of(self, record):
        """Payload integer of a record's bytes (first byte first)."""
        kind = self.record_kind(record[0])
        first_bits = WIRE_TAG_FIRST_BITS if kind is Kind.TAG else WIRE_OTHER_FIRST_BITS
        payload = record[0] & ((1 << first_bits) - 1)
        for i, byte in enumerate(record[1:]):
            payload |= byte << (first_bits + WIRE_BITS_PER_BYTE * i)
        return payload

    def well_formed(self, record):
        """``(kind, values)`` of a record on its own, or ``None`` if malformed: reserved kind,
        a length outside 1 .. ``max_bytes`` (exactly ``fixed_bytes`` for control kinds), a payload
        wider than the kind's fields, a channel, rule or loss index that does not exist, a
        STATUS/REPLY whose check is not :func:`~heraldry.protocol.reply_check` of its fields.
        (Time rules need the running state: see :func:`decode_bytes`.)"""
        if not record or record[0] < WIRE_START:
            return None
        kind = self.record_kind(record[0])
        bits = self.payload_bits[kind]
        if bits is None:
            return None
        fixed = self.fixed_bytes[kind]
        if len(record) > self.max_bytes[kind] or (fixed is not None and len(record) != fixed):
            return None
        payload = self.payload_of(record)
        if payload >> self.payload_width(kind, payload):
            return None
        values = self.unpack(kind, payload)
        if kind is Kind.TAG and values["channel"] >= self.channels:
            return None
        if kind is WireKind.HERALD and values["rule"] >= self.rules:
            return None
        if kind is WireKind.LOSS:
            if values["cause"] not in _CAUSES:
                return None             # a reserved cause
            cause = LossCause(values["cause"])
            limit = {LossCause.MERGER_FULL: self.channels, LossCause.DELAY_FULL: self.channels,
                     LossCause.HERALD_RECORD: self.rules,
                     LossCause.COINCIDENCE_RECORD: 1,
                     LossCause.FILTER_FULL: self.channels}[cause]
            if values["index"] >= limit:
                return None
        if kind in (WireKind.STATUS, WireKind.REPLY):
            if values["check"] != reply_check(payload & ((1 << REPLY_FIELD_BITS) - 1)):
                return None
        return kind, values


def split_records(data):
    """Cut a byte stream into records: ``[bytes, ...]`` in order, covering every byte.

    A record is a byte with bit 7 set and the bytes without it that follow, up to the next start
    byte; a control record ends at its fixed length. Bytes without bit 7 that follow no start
    byte (at the beginning of the stream, or after a complete control record) form an *orphan*
    record of their own, which is always malformed.
    """
    out, i, n = [], 0, len(data)
    while i < n:
        j = i + 1
        if data[i] >= WIRE_START:
            kind = WireFormat.record_kind(data[i])
            end = i + _FIXED.get(kind, n)
        else:
            end = n
        while j < min(end, n) and data[j] < WIRE_START:
            j += 1
        out.append(bytes(data[i:j]))
        i = j
    return out


# Fixed lengths do not depend on channels/rules/fine bits (their fields do not).
_FIXED = {kind: WireFormat(1, 1).fixed_bytes[kind] for kind in FIXED_LENGTH_KINDS}


# -- Encoding ---------------------------------------------------------------------------------

def encode_records(records, channels, rules, fine_bits=0, gates=False):
    """Encode exactly the given records (see the module docstring) into bytes.

    The running time T starts at 0 and follows the rules of docs/protocol.md (TAG: T += delta,
    HERALD: T = time, ANCHOR: T = time, TIME: T = the last ANCHOR's time). A ``{"kind":
    "time"}`` without ``crc`` and a ``{"kind": "check"}`` without ``bytes``/``crc`` get those of
    the open group: the bytes since the last ANCHOR or TIME (which must exist, and not be
    closed by a CHECK yet). Raises ``ValueError`` for what the format cannot carry (a TAG earlier
    than T, a field too wide).
    """
    fmt = WireFormat(channels, rules, fine_bits, gates)
    out = bytearray()
    t_run = t_anchor = 0
    group_start = None       # offset of the open group's first record (ANCHOR or TIME) in ``out``
    seed = None              # CRC every group after the ANCHOR's starts from; None: in that one
    for rec in records:
        kind = rec["kind"]
        if kind == "anchor":
            wire_kind, values = WireKind.ANCHOR, {"time": rec["time"]}
            t_run = t_anchor = rec["time"]
            group_start = len(out)
            seed = None
        elif kind in ("check", "time"):
            wire_kind = WireKind.CHECK if kind == "check" else WireKind.TIME
            if group_start is None and not ("crc" in rec and (kind == "time" or "bytes" in rec)):
                raise ValueError(f"a {kind.upper()} needs an open group or explicit fields")
            group = out[group_start:] if group_start is not None else b""
            crc = crc16(group, CHECK_CRC_INIT if seed is None else seed)
            values = {"crc": rec["crc"] if "crc" in rec else crc}
            if kind == "check":
                values["bytes"] = (rec["bytes"] if "bytes" in rec
                                   else len(group) & ((1 << CHECK_FIELD_BITS) - 1))
                group_start = None
            else:
                t_run = t_anchor
                group_start = len(out)
                if seed is None:
                    seed = crc
        elif kind in _SIDE_KINDS:
            wire_kind, values = _SIDE_KINDS[kind], dict(rec)
            if "check" not in values:       # a test may give a wrong one
                values["check"] = 0
                values["check"] = reply_check(fmt.pack(wire_kind, values))
        else:
            kind = Kind(kind)
            if kind is Kind.TAG:
                wire_kind = Kind.TAG
                delta = rec["time"] - t_run
                if delta < 0:
                    raise ValueError(f"TAG at {rec['time']} is earlier than T = {t_run}")
                values = {"channel": rec["channel"], "delta": delta}
                t_run = rec["time"]
            elif kind is Kind.COINCIDENCE:
                wire_kind = WireKind.COINCIDENCE
                values = {"pattern": rec["pattern"], "offset": zigzag(rec["time"] - t_run)}
            elif kind is Kind.HERALD:
                wire_kind = WireKind.HERALD
                values = {"rule": rec["rule"], "pattern": rec["pattern"],
                          "offset": zigzag(rec["time"] - t_run)}
                if gates:
                    synced = not (rec["attempt"] == 0 and rec["offset"] == HERALD_UNSYNCED_OFFSET)
                    values |= {"synced": int(synced), "attempt": rec["attempt"],
                               "sync_offset": rec["offset"]}
                t_run = rec["time"]
            else:
                wire_kind = WireKind.LOSS
                values = {"cause": LossCause(rec["cause"]).value, "index": rec["index"],
                          "count": rec["count"]}
        out += fmt.record_bytes(wire_kind, fmt.pack(wire_kind, values))
    return bytes(out)


def encode_stream(records, channels, rules, fine_bits=0, anchor_interval=DEFAULT_ANCHOR_INTERVAL,
                  final_check=True, group_records=WIRE_GROUP_RECORDS, gates=False):
    """The encoder policy of docs/protocol.md: place ANCHORs, TIMEs and CHECKs around ``records``.

    ``records`` are data records (TAG/COINCIDENCE/HERALD/LOSS with absolute ``time`` in bins;
    LOSS records too: the merger gives them the coarse time of their bundle), side records
    (``status``/``reply``) and ``{"kind": "clear"}`` (the encoder's ``clear`` strobe), in the order
    the encoder takes them. Each may carry ``"cycle"``: the value of the encoder's ``ref`` (coarse
    cycles, unwrapped) when it takes the item; items are taken in order, so cycles must not
    decrease. By default a data record's cycle is ``max(previous cycle, time >> fine_bits)`` and
    a side record's or clear's is the previous cycle.

    Policy, for each item taken at cycle ``k``, with ``A`` the cycle the open segment's ANCHOR was
    sent in and ``n`` the data records of the open group:

    1. if a segment is open and (``k - A >= anchor_interval`` or a clear came since its ANCHOR):
       CHECK (the segment is closed);
    2. a data record when no segment is open: ANCHOR carrying the record's time (``A = k``) and
       at once a TIME (the ANCHOR is a group of its own); ``n = 0``;
    3. a TAG, COINCIDENCE or HERALD record when ``n >= group_records``: TIME; ``n = 0``;
    4. the item itself (a clear sends nothing); ``n += 1`` for a data record.

    After the last item, if ``final_check`` and a segment is open: CHECK. (The gateware sends a
    CHECK alone as soon as it is between items at a cycle with ``k - A >= anchor_interval``, or
    after a clear; that yields exactly these bytes, and ``final_check`` stands for the CHECK that
    closes a run once it falls idle.)
    """
    out = []
    cycle = None
    group = 0
    segment_cycle = None         # A; None = no open segment
    cleared = False
    for rec in records:
        kind = rec["kind"]
        data_record = kind not in _SIDE_KINDS and kind != "clear"
        if "cycle" in rec:
            k = rec["cycle"]
            if cycle is not None and k < cycle:
                raise ValueError(f"item cycles go backwards ({k} after {cycle})")
        elif data_record:
            k = rec["time"] >> fine_bits if cycle is None else max(cycle, rec["time"] >> fine_bits)
        else:
            k = 0 if cycle is None else cycle
        cycle = k
        if segment_cycle is not None and (cleared or k - segment_cycle >= anchor_interval):
            out.append({"kind": "check"})
            segment_cycle = None
        if kind == "clear":
            cleared = segment_cycle is not None
            continue
        if data_record:
            if segment_cycle is None:
                if not 0 <= rec["time"] < (1 << WIRE_ANCHOR_TIME_BITS):
                    raise ValueError(f"time {rec['time']} outside the anchor's range")
                out.append({"kind": "anchor", "time": rec["time"]})
                out.append({"kind": "time"})
                segment_cycle = k
                cleared = False
                group = 0
            elif group >= group_records and Kind(kind) is not Kind.LOSS:
                out.append({"kind": "time"})
                group = 0
            group += 1
        out.append({key: value for key, value in rec.items() if key != "cycle"})
    if final_check and segment_cycle is not None:
        out.append({"kind": "check"})
    return encode_records(out, channels, rules, fine_bits, gates)


# -- Decoding ---------------------------------------------------------------------------------

_TIME_LIMIT = 1 << WIRE_ANCHOR_TIME_BITS


def decode_bytes(data, channels, rules, fine_bits=0, gates=False):
    """Decode a whole byte stream with the segment and group rules of docs/protocol.md.

    Returns ``(records, errors)``: ``records`` in stream order (record dicts as in the module
    docstring: the ANCHOR, TIMEs, data records and CHECK of every verified group, and every
    well-formed STATUS/REPLY wherever it is); ``errors`` = ``{"decode_errors", "skipped_bytes",
    "unverified"}``:

    * a segment is an ANCHOR and the records after it up to a CHECK, cut into groups: a group is
      an ANCHOR or a well-formed TIME and the records after it up to the next well-formed TIME or
      CHECK (a TIME excluded: it opens the next group; a CHECK included: it ends the segment),
      which carries the group's :func:`crc16` (a CHECK also its byte count, modulo
      ``2**CHECK_FIELD_BITS``). The ANCHOR's group's CRC starts from ``CHECK_CRC_INIT``, every
      other group's from the ANCHOR group's CRC (so a group verifies only under its own
      ANCHOR). A malformed TIME or CHECK ends nothing. A group is *damaged* if that CRC (or count) disagrees,
      if it holds a malformed record, or if a well-formed ANCHOR comes before its end (that
      ANCHOR starts the next segment). A record is malformed if it is not
      :meth:`WireFormat.well_formed`, or if it places a time outside ``0 ..
      2**WIRE_ANCHOR_TIME_BITS - 1`` or earlier than the previous time of the same kind (TAG,
      HERALD or COINCIDENCE) emitted or in the group;
    * a group's records are emitted if it is intact and the segment's first group (its ANCHOR
      alone) was intact: every TIME sets T back to the ANCHOR's time, so a group needs nothing
      from the groups before it but the ANCHOR. The records of a group that is not emitted (its
      opening ANCHOR or TIME included, and a CHECK that closes it) count in ``decode_errors``;
    * bytes outside segments (before the first ANCHOR, between a CHECK and the next ANCHOR)
      that are not a well-formed STATUS/REPLY count in ``skipped_bytes``;
    * the records of a group still open at the end count in ``unverified``. A control record
      cut short by the end of the stream counts as one of them (or as skipped bytes outside a
      segment): it is incomplete, not malformed.
    """
    fmt = WireFormat(channels, rules, fine_bits, gates)
    errors = {"decode_errors": 0, "skipped_bytes": 0, "unverified": 0}
    out = []                       # (stream position, record)
    last = {Kind.TAG: -1, Kind.HERALD: -1, Kind.COINCIDENCE: -1}   # emitted times, per kind
    seg = None
    group = None

    def open_group(position, opener, record):
        return {"records": [(position, opener)], "count": len(record),
                "crc": crc16(record, seg["seed"]), "n": 1, "bad": False, "t": seg["anchor"],
                "last": dict(last)}

    def close_group(ok):
        # the open group ends; True if its records were emitted
        if ok and not group["bad"] and (seg["anchored"] or group["first"]):
            out.extend(group["records"])
            last.update(group["last"])
            return True
        errors["decode_errors"] += group["n"]
        return False

    records = split_records(data)
    truncated = None
    if records and records[-1][0] >= WIRE_START:
        fixed = fmt.fixed_bytes[fmt.record_kind(records[-1][0])]
        if fixed is not None and len(records[-1]) < fixed:
            truncated = records.pop()     # the stream ends inside a control record
    for position, record in enumerate(records):
        parsed = fmt.well_formed(record)
        kind = fmt.record_kind(record[0]) if record[0] >= WIRE_START else None
        if parsed is not None and kind in (WireKind.STATUS, WireKind.REPLY):
            side = {"kind": "status" if kind is WireKind.STATUS else "reply",
                    **{key: value for key, value in parsed[1].items() if key != "check"}}
            out.append((position, side))
        if parsed is not None and kind is WireKind.ANCHOR:
            if seg is not None:
                errors["decode_errors"] += group["n"]
            seg = {"anchor": parsed[1]["time"], "anchored": False, "seed": CHECK_CRC_INIT}
            group = open_group(position, {"kind": "anchor", "time": parsed[1]["time"]}, record)
            group["first"] = True
            continue
        if seg is None:
            if parsed is None or kind not in (WireKind.STATUS, WireKind.REPLY):
                errors["skipped_bytes"] += len(record)
            continue
        if parsed is not None and kind in (WireKind.TIME, WireKind.CHECK):
            # the group ends; a TIME opens the next one (a malformed TIME or CHECK is a malformed
            # record of the group, which goes on)
            values = parsed[1]
            match = values["crc"] == group["crc"] and (
                kind is WireKind.TIME
                or values["bytes"] == group["count"] & ((1 << CHECK_FIELD_BITS) - 1))
            emitted = close_group(match)
            if group["first"]:
                # the ANCHOR's group, verified or not, gives the CRC the others start from
                seg["anchored"], seg["seed"] = emitted, group["crc"]
            if kind is WireKind.CHECK:
                if emitted:
                    out.append((position, {"kind": "check", **values}))
                else:
                    errors["decode_errors"] += 1
                seg = group = None
            else:
                group = open_group(position, {"kind": "time", **values}, record)
                group["first"] = False
            continue
        group["count"] += len(record)
        group["crc"] = crc16(record, group["crc"])
        group["n"] += 1
        if parsed is None:
            group["bad"] = True
            continue
        values = parsed[1]
        if kind is Kind.TAG:
            rec = {"kind": Kind.TAG, "channel": values["channel"],
                   "time": group["t"] + values["delta"]}
        elif kind is WireKind.COINCIDENCE:
            rec = {"kind": Kind.COINCIDENCE, "pattern": values["pattern"],
                   "time": group["t"] + unzigzag(values["offset"])}
        elif kind is WireKind.HERALD:
            rec = {"kind": Kind.HERALD, "rule": values["rule"], "pattern": values["pattern"],
                   "time": group["t"] + unzigzag(values["offset"])}
            if gates:
                rec |= {"attempt": values["attempt"], "offset": values["sync_offset"]}
        elif kind is WireKind.LOSS:
            rec = {"kind": Kind.LOSS, "cause": LossCause(values["cause"]),
                   "index": values["index"], "count": values["count"], "time": group["t"]}
        else:
            continue                # STATUS / REPLY: already taken
        if rec["kind"] is not Kind.LOSS:
            if not 0 <= rec["time"] < _TIME_LIMIT or rec["time"] < group["last"][rec["kind"]]:
                group["bad"] = True
                continue
            group["last"][rec["kind"]] = rec["time"]
            if rec["kind"] is not Kind.COINCIDENCE:
                group["t"] = rec["time"]
        group["records"].append((position, rec))
    if seg is not None:
        errors["unverified"] += group["n"] + (truncated is not None)
    elif truncated is not None:
        errors["skipped_bytes"] += len(truncated)
    out.sort(key=lambda item: item[0])
    return [rec for _, rec in out], errors


# -- Commands (host -> device) ----------------------------------------------------------------

def encode_command(op, address, value, seq):
    """One command frame: ``COMMAND_BYTES`` bytes (see docs/protocol.md, Commands)."""
    op = Command(op)
    fields = [(seq, WIRE_SEQ_BITS), (address, REGISTER_ADDRESS_BITS),
              (value, REGISTER_VALUE_BITS)]
    payload, shift = 0, 0
    for field, width in fields:
        if not 0 <= field < (1 << width):
            raise ValueError(f"command field {field} does not fit {width} bits")
        payload |= field << shift
        shift += width
    if payload >> COMMAND_PAYLOAD_BITS:
        raise ValueError("command fields do not fit the frame")
    out = [WIRE_START | command_check(op.value, payload) << COMMAND_OP_BITS | op.value]
    for _ in range(COMMAND_BYTES - 1):
        out.append(payload & _CONTINUATION)
        payload >>= WIRE_BITS_PER_BYTE
    return bytes(out)


def command_check(op, payload):
    """The check field of a command frame with operation value ``op`` and the 49-bit
    ``payload`` (seq, address, value): ``protocol.command_check_step`` over op's bits and then
    the payload's, least significant first."""
    crc = [(COMMAND_CHECK_INIT >> i) & 1 for i in range(COMMAND_CHECK_BITS)]
    for i in range(COMMAND_OP_BITS):
        crc = command_check_step(crc, (op >> i) & 1)
    for i in range(COMMAND_PAYLOAD_BITS):
        crc = command_check_step(crc, (payload >> i) & 1)
    return sum(bit << i for i, bit in enumerate(crc))


def decode_command(frame):
    """``{"op": Command, "seq", "address", "value"}`` of one frame; ``ValueError`` if malformed
    (wrong length, bit 7 clear in the first byte or set later, a check that does not match, an
    undefined op)."""
    frame = bytes(frame)
    if len(frame) != COMMAND_BYTES:
        raise ValueError(f"a command frame is {COMMAND_BYTES} bytes, not {len(frame)}")
    first = frame[0]
    if not first & WIRE_START:
        raise ValueError(f"bad first byte {first:#04x}")
    op_value = first & ((1 << COMMAND_OP_BITS) - 1)
    check = (first & ~WIRE_START) >> COMMAND_OP_BITS
    payload = 0
    for i, byte in enumerate(frame[1:]):
        if byte & WIRE_START:
            raise ValueError("bit 7 set in a command's continuation byte")
        payload |= byte << (WIRE_BITS_PER_BYTE * i)
    if check != command_check(op_value, payload):
        raise ValueError(f"command check {check:#04x} does not match the frame "
                         f"(expected {command_check(op_value, payload):#04x})")
    try:
        op = Command(op_value)
    except ValueError:
        raise ValueError(f"undefined command {op_value}") from None
    seq = payload & ((1 << WIRE_SEQ_BITS) - 1)
    payload >>= WIRE_SEQ_BITS
    address = payload & ((1 << REGISTER_ADDRESS_BITS) - 1)
    payload >>= REGISTER_ADDRESS_BITS
    return {"op": op, "seq": seq, "address": address, "value": payload}
