"""Wire encoder: the merger's records (and register side records) -> the link's byte stream.

The byte stream is specified in ``docs/protocol.md``; :func:`heraldry.wire.encode_stream` is its
executable reference, and this encoder produces byte for byte what that function produces for the
items it takes, in the order and at the cycles it takes them.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from heraldry.protocol import (
    ATTEMPT_BITS, GATE_BITS, HERALD_UNSYNCED_OFFSET,
    CHANNEL_BITS, COARSE_BITS, LOSS_COUNT_BITS, MAX_CHANNELS, MAX_RULES, REGISTER_ADDRESS_BITS,
    RULE_BITS, WIRE_ANCHOR_TIME_BITS, WIRE_BITS_PER_BYTE, WIRE_GROUP_RECORDS,
    WIRE_OTHER_FIRST_BITS, WIRE_SEQ_BITS,
    WIRE_TAG_FIRST_BITS, Kind, LossCause, WireKind, record_layout, time_bits, wire_channel_bits,
)
from heraldry.protocol import (
    CHECK_CRC_INIT, CHECK_CRC_POLY, CHECK_FIELD_BITS, FIXED_LENGTH_KINDS, REGISTER_VALUE_BITS,
    REPLY_CHECK_BITS, REPLY_FIELD_BITS, reply_check_matrix,
)

__all__ = ["SIDE_LAYOUT", "Encoder"]

#: A register value sent between records: a STATUS snapshot or a REPLY to a command.
SIDE_LAYOUT = data.StructLayout({
    "kind":    WireKind,                 # WireKind.STATUS; any other value is sent as a REPLY
    "ok":      1,
    "seq":     WIRE_SEQ_BITS,
    "address": REGISTER_ADDRESS_BITS,
    "value":   REGISTER_VALUE_BITS,
})


def _crc_byte(m, crc, byte):
    """The CHECK CRC after one more byte (MSB first, as ``heraldry.wire.crc16``): combinational,
    the eight shift steps unrolled into an XOR network. Each step is a signal of its own: nested
    expressions that use the previous step twice would grow exponentially in the simulator."""
    width = CHECK_FIELD_BITS
    value = Signal(width, name="crc_in")
    m.d.comb += value.eq(crc ^ Cat(Const(0, width - 8), byte))
    for step in range(8):
        nxt = Signal(width, name=f"crc_step{step}")
        m.d.comb += nxt.eq(Cat(Const(0, 1), value[:-1])
                           ^ (value[-1].replicate(width) & Const(CHECK_CRC_POLY, width)))
        value = nxt
    return value


def _reply_check(m, fields):
    """The check of a STATUS/REPLY (``heraldry.protocol.reply_check``) of the ``fields`` signal:
    an XOR network built from the CRC's affine form (one parity of a constant subset of the
    fields per check bit)."""
    constant, columns = reply_check_matrix()
    check = Signal(REPLY_CHECK_BITS, name="reply_check")
    for j in range(REPLY_CHECK_BITS):
        taps = [fields[i] for i in range(REPLY_FIELD_BITS) if (columns[i] >> j) & 1]
        m.d.comb += check[j].eq(Cat(*taps).xor() ^ ((constant >> j) & 1))
    return check


def _record_bytes(payload_bits, first_bits):
    """Bytes of a record whose payload is ``payload_bits`` wide (at least the first byte)."""
    rest = max(0, payload_bits - first_bits)
    return 1 + -(-rest // WIRE_BITS_PER_BYTE)


class Encoder(wiring.Component):
    """Encodes records into self-synchronising bytes, in ANCHOR ... CHECK segments cut into
    groups by TIME records.

    Each *item* (a record from ``i``, a side record from ``side``) is *taken* in the cycle of its
    handshake; the encoder's policy is a function of the items, in the order taken, and of the
    value ``k`` of ``ref`` (unwrapped: an epoch counter above it) in the cycle each is taken, and
    equals ``heraldry.wire.encode_stream`` given those items with ``"cycle": k`` and a
    ``{"kind": "clear"}`` item for each ``clear`` strobe (before an item taken in the same
    cycle). With ``A`` the cycle of the open segment's ANCHOR:

    * an item taken while a segment is open and ``k - A >= anchor_interval`` or a ``clear`` came
      since ``A`` is preceded by a CHECK (the segment is closed);
    * a record from ``i`` taken while no segment is open is preceded by an ANCHOR carrying its
      absolute time (``A = k``) and a TIME (the ANCHOR is a group of its own), so a TAG right
      after them has delta 0;
    * a TAG, COINCIDENCE or HERALD record from ``i`` taken while the open group holds
      ``WIRE_GROUP_RECORDS`` data records is preceded by a TIME (the CRC of the group it closes)
      and measured from the ANCHOR's time, to which the TIME sets T back;
    * in a cycle in which nothing is taken but the first condition holds, the encoder closes the
      segment by itself (a CHECK alone): a run's last records are verifiable one anchor interval
      after their segment began, and an item taken later gets no second CHECK. (Same bytes as
      the reference's CHECK before the next item, or its ``final_check``.)

    ``A`` is measured by a cycle counter, so ``ref`` must advance by one every cycle (the core's
    does). Records are then encoded as ``docs/protocol.md`` says: TAG delta, COINCIDENCE and
    HERALD zigzag offsets from the running time T, computed modulo ``2**time_bits(F)`` (a segment's
    items are taken within ``anchor_interval <= 2**31`` cycles, so every true delta fits); LOSS,
    STATUS and REPLY fields (the latter two with their check, ``protocol.reply_check``).
    ANCHOR, TIME, CHECK, STATUS and REPLY go out at their full length (``heraldry.wire
    .FIXED_LENGTH_KINDS``), the others at their shortest. TIME carries the CRC
    (``heraldry.wire.crc16``) of the group it closes (from its ANCHOR or TIME on), CHECK the
    byte count (mod ``2**CHECK_FIELD_BITS``) and CRC of the last group; the ANCHOR group's CRC
    starts from ``CHECK_CRC_INIT``, the others' from the ANCHOR group's CRC.

    Throughput and latency: one byte per cycle while ``o.ready`` is high, with no bubble between
    records (an item is taken in the cycle the previous one's last byte is); the first byte of an
    item taken in cycle ``c`` by an idle encoder is offered in cycle ``c + 2``. When both ``i``
    and ``side`` are valid they are taken alternately.

    Parameters
    ----------
    channels, rules : int
        N and R of the core (N sets the TAG channel field, ``wire_channel_bits(N)`` bits, and
        the pattern fields).
    fine_bits : int
        F of the PHY (records' times are ``time_bits(F)`` bins).
    gates : bool
        The core has gates (``record_layout(F, gates=True)``): HERALD records carry the
        record's ``attempt`` and ``offset`` (``WireFormat(..., gates=True)``).

    Members
    -------
    i : ``In(stream.Signature(record_layout(F)))``
        The merger's records; each record's coarse time must be within ``2**31`` cycles of
        ``ref`` in the cycle it is taken (it is unwrapped against ``ref`` for an ANCHOR). TAG
        and HERALD times must not decrease (the merger's order), and a TAG must not be earlier
        than the record that opened its segment.
    idle : ``In(1)``
        The merger holds nothing. Not needed by protocol version 1's policy (the CHECK that
        closes an idle run does not wait for it, see above); kept as a member so the top level
        can wire the published interface.
    ref : ``In(COARSE_BITS)``
        The current delayed coarse time (the merger's ``ref``), advancing by one per cycle. The
        epoch above it starts at 0 after reset and counts its wraps (its most significant bit
        falling), so absolute times are ``epoch * 2**COARSE_BITS + ref`` cycles.
    side : ``In(stream.Signature(SIDE_LAYOUT))``
        STATUS and REPLY records, sent between records; they do not touch the running time.
    anchor_interval : ``In(32)``
        Cycles from an ANCHOR to the CHECK that closes its segment (``control.anchor_interval``;
        a new value is compared from the cycle after it is presented).
    clear : ``In(1)``
        Strobe: the open segment is closed before the next item (so the next record starts a
        new segment with a new ANCHOR).
    o : ``Out(stream.Signature(8))``
        The bytes.
    """

    def __init__(self, channels, rules, fine_bits=0, gates=False):
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, not {channels}")
        if not 1 <= rules <= MAX_RULES:
            raise ValueError(f"rules must be 1..{MAX_RULES}, not {rules}")
        if not 0 <= fine_bits <= WIRE_ANCHOR_TIME_BITS - COARSE_BITS - 1:
            raise ValueError(f"fine_bits must be 0..{WIRE_ANCHOR_TIME_BITS - COARSE_BITS - 1}, "
                             f"not {fine_bits}")
        self.channels = channels
        self.rules = rules
        self.fine_bits = fine_bits
        self.gates = bool(gates)
        super().__init__({
            "i":               In(stream.Signature(record_layout(fine_bits, self.gates))),
            "idle":            In(1),
            "ref":             In(COARSE_BITS),
            "side":            In(stream.Signature(SIDE_LAYOUT)),
            "anchor_interval": In(32),
            "clear":           In(1),
            "o":               Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        n, f = self.channels, self.fine_bits
        tb = time_bits(f)
        cb = wire_channel_bits(n)
        bpb = WIRE_BITS_PER_BYTE
        kind_bits = Shape.cast(WireKind).width
        register_bits = REPLY_FIELD_BITS + REPLY_CHECK_BITS
        loss_bits = Shape.cast(LossCause).width + CHANNEL_BITS + LOSS_COUNT_BITS
        check_bits = 2 * CHECK_FIELD_BITS

        # Payload widths per kind; the longest record sets the width of the byte shifter.
        widths = {
            Kind.TAG: (cb + tb, WIRE_TAG_FIRST_BITS),
            WireKind.COINCIDENCE: (n + tb, WIRE_OTHER_FIRST_BITS),
            WireKind.HERALD: (RULE_BITS + n + tb
                              + (1 + ATTEMPT_BITS + GATE_BITS if self.gates else 0),
                              WIRE_OTHER_FIRST_BITS),
            WireKind.LOSS: (loss_bits, WIRE_OTHER_FIRST_BITS),
            WireKind.ANCHOR: (WIRE_ANCHOR_TIME_BITS, WIRE_OTHER_FIRST_BITS),
            WireKind.TIME: (CHECK_FIELD_BITS, WIRE_OTHER_FIRST_BITS),
            WireKind.CHECK: (check_bits, WIRE_OTHER_FIRST_BITS),
            WireKind.STATUS: (register_bits, WIRE_OTHER_FIRST_BITS),
            WireKind.REPLY: (register_bits, WIRE_OTHER_FIRST_BITS),
        }
        max_bytes = {kind: _record_bytes(*w) for kind, w in widths.items()}
        groups = max(max_bytes.values())
        sbits = groups * bpb

        def bit_string(kind, payload):
            """The 7-bit groups of a record, first byte's group first, without the start bits:
            the first group holds the first payload bits and the TAG flag / kind above them."""
            if kind is Kind.TAG:
                head = Cat(payload[:WIRE_TAG_FIRST_BITS], Const(0, 1))
                rest = payload[WIRE_TAG_FIRST_BITS:]
            else:
                head = Cat(payload[:WIRE_OTHER_FIRST_BITS], Const(kind.value, kind_bits),
                           Const(1, 1))
                rest = payload[WIRE_OTHER_FIRST_BITS:]
            string = Signal(sbits, name=f"string_{kind.name.lower()}")
            m.d.comb += string.eq(Cat(head, rest))
            return string

        # --- Unwrapping: the epoch above `ref`, for the absolute time an ANCHOR carries.
        epoch_bits = WIRE_ANCHOR_TIME_BITS - f - COARSE_BITS
        epoch = Signal(epoch_bits)
        ref_msb = Signal()
        wrap = Signal()
        epoch_now = Signal(epoch_bits)
        m.d.comb += [
            wrap.eq(ref_msb & ~self.ref[-1]),
            epoch_now.eq(epoch + wrap),
        ]
        m.d.sync += [ref_msb.eq(self.ref[-1]), epoch.eq(epoch_now)]

        rec = self.i.payload
        coarse = rec.time[f:]
        offset = Signal(COARSE_BITS)
        m.d.comb += offset.eq(coarse - self.ref)
        abs_time = Signal(WIRE_ANCHOR_TIME_BITS)
        abs_coarse = Signal(WIRE_ANCHOR_TIME_BITS - f)
        m.d.comb += [
            abs_coarse.eq(Cat(self.ref, epoch_now) + offset.as_signed()),
            abs_time.eq(Cat(rec.time[:f], abs_coarse)),
        ]

        # --- Segment policy, evaluated in the cycle an item is taken.
        seg_open = Signal()
        cleared = Signal()                      # a clear came since the open segment's ANCHOR
        age = Signal(COARSE_BITS + 1)           # cycles since A, saturating
        # age >= anchor_interval, registered with `age` (timing: no 33-bit comparison in front of
        # the item's bits). A new anchor_interval therefore applies from the cycle after it is
        # written.
        aged = Signal()
        expired = Signal()
        m.d.comb += expired.eq(seg_open & (cleared | self.clear | aged))

        # --- The taken item (stage 1): which records remain to send for it, and its bits.
        r1_valid = Signal()
        r1_check = Signal()
        r1_anchor = Signal()
        r1_group = Signal()                     # a TIME: the group ends, the next one begins
        r1_item = Signal()
        r1_string = Signal(sbits)
        r1_bytes = Signal(range(groups + 1))
        r1_time = Signal(WIRE_ANCHOR_TIME_BITS)
        r1_free = Signal()

        prefer_side = Signal()
        take_side = Signal()
        take_i = Signal()
        take_check = Signal()
        m.d.comb += [
            take_side.eq(r1_free & self.side.valid & (~self.i.valid | prefer_side)),
            take_i.eq(r1_free & self.i.valid & ~take_side),
            take_check.eq(r1_free & ~self.side.valid & ~self.i.valid & expired),
            self.side.ready.eq(r1_free & (~self.i.valid | prefer_side)),
            self.i.ready.eq(r1_free & ~(self.side.valid & prefer_side)),
        ]
        # Timing (iCE40): the item's bits below depend only on the inputs and on registers,
        # never on `r1_free` (downstream `o.ready`): they are only stored when an item is taken,
        # so they may assume it is. `would_anchor` is `anchor` without `take_i`.
        anchor = Signal()
        would_anchor = Signal()
        m.d.comb += [
            would_anchor.eq(~seg_open | expired),
            anchor.eq(take_i & would_anchor),
        ]

        # Running time T, modulo 2**tb: every delta and offset fits tb bits (module docstring).
        # An ANCHOR item's delta is from its own time, i.e. 0; the subtraction runs in parallel
        # with the `expired` comparison instead of after it.
        # Groups: `group` counts the data records of the open group (saturating at K). A TAG,
        # COINCIDENCE or HERALD taken when it is K is preceded by a TIME and measured from the
        # ANCHOR's time (`anchor_t`), as every TIME sets T back to it.
        t_run = Signal(tb)
        anchor_t = Signal(tb)
        group = Signal(range(WIRE_GROUP_RECORDS + 1))
        group_full = Signal()
        m.d.comb += group_full.eq((group == WIRE_GROUP_RECORDS) & (rec.kind != Kind.LOSS))
        diff = Signal(tb)
        zigzag = Signal(tb)
        m.d.comb += [
            diff.eq(Mux(would_anchor, 0, rec.time - Mux(group_full, anchor_t, t_run))),
            zigzag.eq(Cat(Const(0, 1), diff[:-1]) ^ diff[-1].replicate(tb)),
        ]

        # With gates: a HERALD with attempt 0 and the offset of no sync edge (no sync channel,
        # or none since clear) leaves both fields out, its synced bit clear (docs/protocol.md).
        # `synced` depends on the record alone, beside the delta subtraction; the multiplexer
        # it drives folds into the zigzag's XOR.
        synced = Signal()
        if self.gates:
            m.d.comb += synced.eq((rec.payload.herald.attempt != 0)
                                  | (rec.payload.herald.offset != HERALD_UNSYNCED_OFFSET))
        payloads = {
            Kind.TAG: (Kind.TAG, Cat(rec.payload.tag.channel[:cb], diff)),
            Kind.COINCIDENCE: (WireKind.COINCIDENCE,
                               Cat(rec.payload.coincidence.pattern[:n], zigzag)),
            Kind.HERALD: (WireKind.HERALD, Cat(
                rec.payload.herald.rule, rec.payload.herald.pattern[:n],
                *((synced, Mux(synced, Cat(rec.payload.herald.attempt,
                                           rec.payload.herald.offset, zigzag), zigzag))
                  if self.gates else (zigzag,)))),
            Kind.LOSS: (WireKind.LOSS, Cat(rec.payload.loss.cause, rec.payload.loss.index,
                                           rec.payload.loss.count)),
        }
        strings = {kind: (wire_kind, bit_string(wire_kind, payload))
                   for kind, (wire_kind, payload) in payloads.items()}
        side = self.side.payload
        side_fields = Cat(side.ok, side.seq, side.address, side.value)
        side_payload = Cat(side_fields, _reply_check(m, side_fields))
        side_strings = {kind: bit_string(kind, side_payload)
                        for kind in (WireKind.STATUS, WireKind.REPLY)}

        # Length: fixed for some kinds; for the others the shortest, up to the highest non-zero
        # group (the first byte always goes), computed from the stored string when stage 2
        # loads it (timing: not behind the delta subtraction). `item_bytes` 0 means "shortest".
        item_string = Signal(sbits)
        shortest = Signal(range(groups + 1))
        m.d.comb += shortest.eq(1)
        for g in range(1, groups):
            with m.If(r1_string[g * bpb:(g + 1) * bpb].any()):
                m.d.comb += shortest.eq(g + 1)

        def length(kind):
            return max_bytes[kind] if kind in FIXED_LENGTH_KINDS else 0

        item_bytes = Signal(range(groups + 1))
        with m.If(self.side.valid & (~self.i.valid | prefer_side)):     # take_side if taken
            # A side record of another kind goes out as a REPLY.
            with m.If(side.kind == WireKind.STATUS):
                m.d.comb += [item_string.eq(side_strings[WireKind.STATUS]),
                             item_bytes.eq(length(WireKind.STATUS))]
            with m.Else():
                m.d.comb += [item_string.eq(side_strings[WireKind.REPLY]),
                             item_bytes.eq(length(WireKind.REPLY))]
        with m.Else():
            with m.Switch(rec.kind):
                for kind, (wire_kind, string) in strings.items():
                    with m.Case(kind):
                        m.d.comb += [item_string.eq(string), item_bytes.eq(length(wire_kind))]
        # Stage 2 sends these two at their full length.
        assert WireKind.ANCHOR in FIXED_LENGTH_KINDS and WireKind.CHECK in FIXED_LENGTH_KINDS

        # --- The byte shifter (stage 2): the record being sent, 7 bits per byte.
        cur = Signal(sbits)
        left = Signal(range(groups + 1))        # bytes still to send, the current one included
        first = Signal()
        cur_check = Signal()
        m.d.comb += [
            self.o.valid.eq(left != 0),
            self.o.payload.eq(Cat(cur[:bpb], first)),
        ]
        fire = Signal()
        free = Signal()
        m.d.comb += [
            fire.eq(self.o.valid & self.o.ready),
            free.eq((left == 0) | (fire & (left == 1))),
        ]

        # Byte count and CRC of the segment, with this cycle's byte: a CHECK loaded in the cycle
        # the segment's last byte leaves covers it.
        seg_bytes = Signal(CHECK_FIELD_BITS)
        seg_crc = Signal(CHECK_FIELD_BITS, init=CHECK_CRC_INIT)
        bytes_next = Signal(CHECK_FIELD_BITS)
        crc_next = Signal(CHECK_FIELD_BITS)
        counted = fire & ~cur_check
        m.d.comb += [
            bytes_next.eq(seg_bytes + counted),
            crc_next.eq(Mux(counted, _crc_byte(m, seg_crc, self.o.payload), seg_crc)),
        ]
        m.d.sync += [seg_bytes.eq(bytes_next), seg_crc.eq(crc_next)]

        # The CRC every group after the ANCHOR's starts from: the ANCHOR group's own (binds each
        # group to its ANCHOR). `first_group`: the open group is the ANCHOR's.
        seed = Signal(CHECK_FIELD_BITS)
        first_group = Signal()
        check_string = bit_string(WireKind.CHECK, Cat(bytes_next, crc_next))
        time_string = bit_string(WireKind.TIME, crc_next)
        anchor_string = bit_string(WireKind.ANCHOR, r1_time)

        with m.If(fire):
            m.d.sync += [cur.eq(cur[bpb:]), left.eq(left - 1), first.eq(0)]
        last_phase = Signal()
        with m.If(free & r1_valid):
            m.d.sync += first.eq(1)
            with m.If(r1_check):
                m.d.sync += [cur.eq(check_string), left.eq(max_bytes[WireKind.CHECK]),
                             cur_check.eq(1), r1_check.eq(0)]
                m.d.comb += last_phase.eq(~r1_anchor & ~r1_group & ~r1_item)
            with m.Elif(r1_anchor):
                # The group's byte count and CRC start with the ANCHOR's first byte.
                m.d.sync += [cur.eq(anchor_string), left.eq(max_bytes[WireKind.ANCHOR]),
                             cur_check.eq(0), r1_anchor.eq(0), first_group.eq(1),
                             seg_bytes.eq(0), seg_crc.eq(CHECK_CRC_INIT)]
                m.d.comb += last_phase.eq(~r1_group & ~r1_item)
            with m.Elif(r1_group):
                # Closes the group (its CRC covers the byte leaving now) and opens the next one,
                # which starts with this TIME's first byte and its CRC from the seed.
                m.d.sync += [cur.eq(time_string), left.eq(max_bytes[WireKind.TIME]),
                             cur_check.eq(0), r1_group.eq(0), first_group.eq(0),
                             seg_bytes.eq(0), seg_crc.eq(Mux(first_group, crc_next, seed))]
                with m.If(first_group):
                    m.d.sync += seed.eq(crc_next)
                m.d.comb += last_phase.eq(~r1_item)
            with m.Else():
                m.d.sync += [cur.eq(r1_string), left.eq(Mux(r1_bytes == 0, shortest, r1_bytes)),
                             cur_check.eq(0)]
                m.d.comb += last_phase.eq(1)
        m.d.comb += r1_free.eq(~r1_valid | (free & last_phase))
        with m.If(r1_free):
            m.d.sync += r1_valid.eq(0)

        # Placed after the shifter's updates: an item taken in the cycle the previous one leaves
        # stage 1 overrides that one's cleared phase flags.
        took = take_side | take_i | take_check
        age_next = Signal.like(age)
        m.d.comb += age_next.eq(Mux(age[-1], age, age + 1))
        m.d.sync += [age.eq(age_next), aged.eq(age_next >= self.anchor_interval)]
        with m.If(took):
            m.d.sync += [
                r1_valid.eq(1),
                r1_check.eq(expired),
                r1_anchor.eq(anchor),
                r1_group.eq(take_i & (would_anchor | group_full)),
                r1_item.eq(~take_check),
                r1_string.eq(item_string),
                r1_bytes.eq(item_bytes),
                r1_time.eq(abs_time),
                cleared.eq(0),
            ]
            with m.If(expired):
                m.d.sync += seg_open.eq(0)
            with m.If(take_i):
                m.d.sync += prefer_side.eq(1)
                with m.If(group_full):
                    m.d.sync += [t_run.eq(anchor_t), group.eq(1)]
                with m.Elif(group != WIRE_GROUP_RECORDS):
                    m.d.sync += group.eq(group + 1)
                with m.Switch(rec.kind):
                    with m.Case(Kind.TAG, Kind.HERALD):
                        m.d.sync += t_run.eq(rec.time)
                with m.If(anchor):
                    m.d.sync += [seg_open.eq(1), age.eq(1), aged.eq(self.anchor_interval <= 1),
                                 t_run.eq(rec.time), anchor_t.eq(rec.time), group.eq(1)]
            with m.If(take_side):
                m.d.sync += prefer_side.eq(0)
        with m.Elif(self.clear & seg_open):
            m.d.sync += cleared.eq(1)

        return m
