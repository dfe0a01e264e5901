"""Every record layout, enum and address map that gateware and host share.

This is the only place where a field width, an enum value or a counter address is written down.
The gateware assigns fields of these layouts; the host decodes with the same definitions
(:func:`record_fields` gives offsets and widths derived from the layout, never copied by hand).

Time is counted in *bins*. A timestamp is ``Cat(fine, coarse)``: ``COARSE_BITS`` of free-running
coarse counter (one count per clock cycle) above the PHY's ``fine_bits`` sub-clock bits, so one
clock cycle is ``2**fine_bits`` bins. With the generic PHY ``fine_bits == 0`` and a bin is a cycle.
"""

from dataclasses import dataclass

from amaranth.hdl import Shape, unsigned
from amaranth.lib import data, enum

__all__ = [
    "COARSE_BITS", "MAX_CHANNELS", "CHANNEL_BITS", "RULE_BITS", "MAX_RULES", "PATTERN_BITS",
    "DELAY_BITS", "WINDOW_BITS", "DEAD_TIME_BITS", "HERALD_WIDTH_BITS", "PAIR_DELAY_BITS",
    "PROBABILITY_BITS", "PERIOD_BITS", "COUNTER_BITS", "LOSS_COUNT_BITS",
    "Kind", "LossCause", "StreamMode", "CAPABILITY_STREAM_FILTER", "STREAM_REGISTERS", "Edge",
    "Source",
    "GATE_BITS", "ATTEMPT_BITS", "HERALD_UNSYNCED_OFFSET",
    "MARKER_EVERY_BITS", "CAPABILITY_GATES", "GATES_REGISTERS", "Role",
    "CAPABILITY_REFERENCES", "ROLE_REGISTERS", "CAPABILITY_FAST_HERALD",
    "CAPABILITY_GATE_STAGE",
    "gates_layout",
    "time_bits", "record_layout", "record_fields", "decode_record",
    "channel_config_layout", "test_signal_layout", "bsm_layout", "BSM_DETECTORS",
    "TEST_SIGNAL_REGISTERS", "config_layout", "herald_pin_bits", "CounterMap",
]

#: Width of the free-running coarse counter (cycles). Wraps are resolved downstream.
COARSE_BITS = 32
#: Most input channels one core supports, and the width of a channel index.
MAX_CHANNELS = 8
CHANNEL_BITS = 3
#: Most herald rules, and the width of a rule index.
MAX_RULES = 8
RULE_BITS = 3
#: Width of a coincidence pattern (bit ``c`` set: channel ``c`` had an event in the window).
PATTERN_BITS = MAX_CHANNELS

#: Per-channel programmable delay, in bins: 0 .. 2**DELAY_BITS - 1.
DELAY_BITS = 10
#: Coincidence window, in bins: 1 .. 2**WINDOW_BITS - 1 (0 is refused by the host).
WINDOW_BITS = 10
#: Per-channel dead time, in bins: 0 (none beyond the PHY) .. 2**DEAD_TIME_BITS - 1.
DEAD_TIME_BITS = 16
#: Herald output pulse width, in clock cycles: 1 .. 2**HERALD_WIDTH_BITS - 1.
HERALD_WIDTH_BITS = 8
#: Delay between the arms of the test signal's photon-pair source, in cycles.
PAIR_DELAY_BITS = 10
#: Test-signal probabilities are per-cycle thresholds: p = threshold / 2**PROBABILITY_BITS.
PROBABILITY_BITS = 32
#: Period of the periodic test signal, in cycles (1 .. 2**PERIOD_BITS - 1).
PERIOD_BITS = 32
#: Width of every hardware counter (singles, patterns, heralds, losses).
COUNTER_BITS = 32
#: Gates (docs/semantics.md, "Sync, gates and reference markers"): a gate's offset and width in
#: bins, and a herald record's offset from its sync edge (saturating at 2**GATE_BITS - 1, which
#: no gate may reach: offset + width <= 2**GATE_BITS - 1).
GATE_BITS = 16
#: A herald record's attempt number (sync edges since clear, modulo 2**ATTEMPT_BITS).
ATTEMPT_BITS = 32
#: A herald record's sync offset when no sync edge is within reach (none yet, or that many bins
#: or more ago). A HERALD with attempt 0 and this offset (no sync edge since clear, e.g. no sync
#: channel) goes on the wire without both fields, its ``synced`` bit clear (docs/protocol.md).
HERALD_UNSYNCED_OFFSET = 2 ** GATE_BITS - 1
#: Every how many sync edges one is streamed as a marker (0: none).
MARKER_EVERY_BITS = 16
#: Largest count one loss record carries; larger losses are reported in several records.
LOSS_COUNT_BITS = 16


class Kind(enum.Enum, shape=3):
    """What a record in the event stream is."""
    TAG         = 0  #: one detection on ``payload.tag.channel`` at ``time``
    COINCIDENCE = 1  #: a closed window whose pattern is selected for recording; ``time`` is t0
    HERALD      = 2  #: herald rule ``payload.herald.rule`` fired at ``time``
    LOSS        = 3  #: ``payload.loss.count`` items were dropped since the last such record


class LossCause(enum.Enum, shape=3):
    """Why a loss record's items were dropped. Values 5..7 are reserved (a record with one is
    malformed)."""
    MERGER_FULL        = 0  #: tags of channel ``index`` dropped: merger FIFO full
    DELAY_FULL         = 1  #: tags of channel ``index`` dropped: its delay buffer was full
    HERALD_RECORD      = 2  #: herald records of rule ``index`` dropped: merger FIFO full
    COINCIDENCE_RECORD = 3  #: coincidence records dropped: merger FIFO full (``index`` = 0)
    #: tags of channel ``index`` (stream mode ``coincident``) of a coincident window dropped:
    #: the stream filter's hold buffer was full (docs/semantics.md, "Stream filters")
    FILTER_FULL        = 4


class StreamMode(enum.Enum, shape=2):
    """Which of a channel's events the stream filter sends as tags (docs/semantics.md)."""
    ALL        = 0  #: every event
    COINCIDENT = 1  #: events of windows with two or more channels
    NONE       = 2  #: none (counted only)


class Role(enum.Enum, shape=2):
    """What a channel's events are (gates builds; docs/semantics.md)."""
    DETECTOR  = 0  #: detections: windows, heralds, tags
    SYNC      = 1  #: the attempt clock: counted, not in windows, every Nth streamed as a marker
    REFERENCE = 2  #: PPS / 10 MHz marker: every event streamed as a tag, not in windows


class Edge(enum.Enum, shape=2):
    """Which input edges make events."""
    NONE    = 0
    RISING  = 1
    FALLING = 2
    BOTH    = 3


class Source(enum.Enum, shape=3):
    """What feeds a channel: its pin, or one of the built-in test signals."""
    PIN      = 0
    PERIODIC = 1  #: one event every ``test.period`` cycles (the BSM source's sync)
    PAIR_A   = 2  #: arm A of the photon-pair source (plus this channel's dark counts)
    PAIR_B   = 3  #: arm B, ``test.pair_delay`` cycles after arm A (plus dark counts)
    BSM_D0   = 4  #: detector D0 (port a, H) of the BSM source (plus dark counts)
    BSM_D1   = 5  #: detector D1 (port a, V)
    BSM_D2   = 6  #: detector D2 (port b, H)
    BSM_D3   = 7  #: detector D3 (port b, V)


def time_bits(fine_bits):
    """Width of a timestamp in bins: coarse counter above the fine bits."""
    return COARSE_BITS + fine_bits


def record_layout(fine_bits=0, gates=False):
    """Layout of one record of the merged event stream (gateware output, host input).

    With ``gates`` (a core built with sync and gates) a herald record also carries its
    ``attempt`` and its ``offset`` (bins) from that attempt's sync edge."""
    herald = {"rule": unsigned(RULE_BITS), "pattern": unsigned(PATTERN_BITS)}
    if gates:
        herald |= {"attempt": unsigned(ATTEMPT_BITS), "offset": unsigned(GATE_BITS)}
    payload = data.UnionLayout({
        "tag":         data.StructLayout({"channel": unsigned(CHANNEL_BITS)}),
        "coincidence": data.StructLayout({"pattern": unsigned(PATTERN_BITS)}),
        "herald":      data.StructLayout(herald),
        "loss":        data.StructLayout({"cause": LossCause,
                                          "index": unsigned(CHANNEL_BITS),
                                          "count": unsigned(LOSS_COUNT_BITS)}),
    })
    return data.StructLayout({
        "kind":    Kind,
        "payload": payload,
        "time":    unsigned(time_bits(fine_bits)),
    })


def record_fields(fine_bits=0, gates=False):
    """``{dotted_name: (offset, width)}`` of every leaf field of :func:`record_layout`.

    Host decoders use this to extract fields from raw record integers (or numpy arrays of them)
    without restating the layout.
    """
    fields = {}

    def walk(layout, prefix, base):
        for name, field in layout:
            shape = field.shape
            offset = base + field.offset
            if isinstance(shape, (data.StructLayout, data.UnionLayout)):
                walk(shape, f"{prefix}{name}.", offset)
            else:
                fields[f"{prefix}{name}"] = (offset, field.width)

    walk(record_layout(fine_bits, gates), "", 0)
    return fields


def decode_record(raw, fine_bits=0, gates=False):
    """Decode one raw record integer into a plain dict (slow path, for tests and small runs)."""
    fields = record_fields(fine_bits, gates)

    def get(name):
        offset, width = fields[name]
        return (raw >> offset) & ((1 << width) - 1)

    kind = Kind(get("kind"))
    out = {"kind": kind, "time": get("time")}
    if kind == Kind.TAG:
        out["channel"] = get("payload.tag.channel")
    elif kind == Kind.COINCIDENCE:
        out["pattern"] = get("payload.coincidence.pattern")
    elif kind == Kind.HERALD:
        out["rule"] = get("payload.herald.rule")
        out["pattern"] = get("payload.herald.pattern")
        if gates:
            out["attempt"] = get("payload.herald.attempt")
            out["offset"] = get("payload.herald.offset")
    else:
        out["cause"] = LossCause(get("payload.loss.cause"))
        out["index"] = get("payload.loss.index")
        out["count"] = get("payload.loss.count")
    return out


def channel_config_layout():
    """Per-channel input configuration."""
    return data.StructLayout({
        "enable":    unsigned(1),
        "edge":      Edge,
        "source":    Source,
        "dead_time": unsigned(DEAD_TIME_BITS),
        "delay":     unsigned(DELAY_BITS),
    })


#: ``ident.capabilities`` bit: the test-signal generator is present. Without it the ``test.*``
#: registers keep their reset values (writes are answered with them) and the host refuses test
#: sources.
CAPABILITY_TEST_SIGNAL = 0b001
#: ``ident.capabilities`` bit: the core has channel roles, sync, gates and attempt counting
#: (``TaggerCore(gates=True)``): herald records carry ``attempt`` and ``offset`` on the wire
#: (docs/protocol.md). Without it the ``gates.*`` registers keep their reset values (every
#: channel a detector without gate) and the ``gated_out`` counters stay 0.
CAPABILITY_GATES = 0b1000
#: Prefix of the registers of roles and gates (not stored in a build without them).
GATES_REGISTERS = ("gates.",)
#: ``ident.capabilities`` bit: the core has the reference role alone
#: (``TaggerCore(references=True)`` without gates): the ``gates.role[c]`` registers are stored
#: and ``REFERENCE`` is honoured (every event streamed as a tag, counted, never in a window);
#: no sync, gates or attempts (the other ``gates.*`` registers keep their reset values). A
#: gates build honours references too and sets only ``CAPABILITY_GATES``.
CAPABILITY_REFERENCES = 0b100000
#: The registers a references-only build stores.
ROLE_REGISTERS = ("gates.role[",)


def gates_layout(channels):
    """Roles, gates and sync markers (gates builds only; docs/semantics.md). ``gate_width`` 0:
    the channel has no gate. The host keeps ``gate_offset + gate_width <= 2**GATE_BITS - 1``."""
    return data.StructLayout({
        "role":         data.ArrayLayout(Role, channels),
        "gate_offset":  data.ArrayLayout(unsigned(GATE_BITS), channels),
        "gate_width":   data.ArrayLayout(unsigned(GATE_BITS), channels),
        "marker_every": unsigned(MARKER_EVERY_BITS),
    })


#: ``ident.capabilities`` bit: the stream filter is present (``stream[c]`` registers honoured,
#: ``filtered``/``filter_dropped`` counters counting). Without it the ``stream[c]`` registers
#: keep their reset value (all) and the host refuses other stream modes.
CAPABILITY_STREAM_FILTER = 0b10000
#: Prefix of the stream-mode registers (not stored in a build without the stream filter).
STREAM_REGISTERS = ("stream[",)
#: ``ident.capabilities`` bit: the herald pins of ``early`` rules come from a fast path in the
#: sampling clock domain (a ULX3S built with ``fast_herald``: ``heraldry.gateware.fastherald``;
#: not its default build, which misses 200 MHz with it) where that is exactly
#: equivalent to the core's pins (``heraldry.host.config.fast_herald_pins``); the records and
#: counters are the core's either way. Only the pins' latency differs (docs/boards.md).
CAPABILITY_FAST_HERALD = 0b1000000
#: ``ident.capabilities`` bit: the core has a register stage between the delay lines and the
#: gate unit (``TaggerCore(gate_stage=True)``, the ULX3S's builds of more than 4 channels): its
#: herald pins are one core clock period later than :data:`heraldry.sim.latency.MEASURED` gives
#: (the host adds it to every latency figure it quotes); records and counters are unchanged.
CAPABILITY_GATE_STAGE = 0b10000000


def test_signal_layout(channels):
    """Configuration of the built-in test signal (see ``gateware/testsignal.py``)."""
    return data.StructLayout({
        "seed":           unsigned(32),
        "period":         unsigned(PERIOD_BITS),
        "pair_threshold": unsigned(PROBABILITY_BITS),
        "eta_a":          unsigned(PROBABILITY_BITS),
        "eta_b":          unsigned(PROBABILITY_BITS),
        "pair_delay":     unsigned(PAIR_DELAY_BITS),
        "dark":           data.ArrayLayout(unsigned(PROBABILITY_BITS), channels),
    })


#: Detectors of the test signal's Bell-state-measurement (BSM) source.
BSM_DETECTORS = 4


def bsm_layout():
    """Configuration of the test signal's BSM source (see ``heraldry.model.testsignal``): the
    attempt cycle ``offset`` cycles after each periodic pulse (the sync), the thresholds of a
    two-photon event per attempt, of its being psi- (else psi+), and of each detector's
    efficiency."""
    return data.StructLayout({
        "offset":    unsigned(PERIOD_BITS),
        "event":     unsigned(PROBABILITY_BITS),
        "psi_minus": unsigned(PROBABILITY_BITS),
        "eta":       data.ArrayLayout(unsigned(PROBABILITY_BITS), BSM_DETECTORS),
    })


#: Prefixes of the registers of the test-signal generator (not stored in a build without it).
TEST_SIGNAL_REGISTERS = ("test.", "test_bsm.")


def config_layout(channels, rules):
    """Everything the host configures in one core. Change it only while the core is stopped."""
    if not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"channels must be 1..{MAX_CHANNELS}, not {channels}")
    if not 1 <= rules <= MAX_RULES:
        raise ValueError(f"rules must be 1..{MAX_RULES}, not {rules}")
    return data.StructLayout({
        "channel":      data.ArrayLayout(channel_config_layout(), channels),
        "window":       unsigned(WINDOW_BITS),
        "herald_mask":  data.ArrayLayout(unsigned(channels), rules),
        "herald_width": unsigned(HERALD_WIDTH_BITS),
        # bit p set: closed windows with pattern p are also sent as COINCIDENCE records
        "coincidence_record_mask": unsigned(2 ** channels),
        "test":         test_signal_layout(channels),
        # Herald rules beyond a plain mask (docs/semantics.md, "Heralds"); after everything
        # else so that the older registers keep their addresses. herald_mask is each rule's
        # `require` mask.
        "herald_veto":  data.ArrayLayout(unsigned(channels), rules),
        # bit r set: rule r decides when its window closes (exact), else at the completing event
        "herald_exact": unsigned(rules),
        # the herald pin each rule drives (reset: its own); rules sharing a pin are OR'ed
        "herald_pin":   data.ArrayLayout(unsigned(herald_pin_bits(rules)), rules),
        # The test signal's BSM source (a struct of its own so that the registers above keep
        # their addresses).
        "test_bsm":     bsm_layout(),
        # Per channel, which events are streamed (StreamMode); without the stream-filter
        # capability every channel streams all.
        "stream":       data.ArrayLayout(StreamMode, channels),
        # Roles, gates and sync markers; without the gates capability not stored (every
        # channel a detector without gate).
        "gates":        gates_layout(channels),
    })


def herald_pin_bits(rules):
    """Width of a rule's pin number in a core with ``rules`` rules (and pins)."""
    return (rules - 1).bit_length()


class CounterMap:
    """Addresses of the hardware counters behind the core's counter read port.

    Every counter is ``COUNTER_BITS`` wide and is cleared by the core's ``clear`` strobe.
    """

    def __init__(self, channels, rules):
        self.channels = channels
        self.rules = rules
        self._base = {}
        address = 0
        for name, count in (
            ("singles", channels),             # events that entered the coincidence unit
            ("patterns", 2 ** channels - 1),   # closed windows, by pattern 1 .. 2**N - 1
            ("heralds", rules),                # herald rule firings
            ("delay_dropped", channels),       # events lost to a full delay buffer
            ("merger_dropped", channels),      # tags lost to a full merger FIFO
            ("herald_dropped", rules),         # herald records lost to a full merger FIFO
            ("coincidence_dropped", 1),        # coincidence records lost to a full merger FIFO
            ("gated_out", channels),           # detector events outside their gate
            ("filtered", channels),            # events the stream filter withheld (stream mode)
            ("filter_dropped", channels),      # tags lost to the stream filter's full buffer
        ):
            self._base[name] = (address, count)
            address += count
        self.size = address

    def _address(self, name, index):
        base, count = self._base[name]
        if not 0 <= index < count:
            raise IndexError(f"{name} has {count} counters, no index {index}")
        return base + index

    def singles(self, channel):
        return self._address("singles", channel)

    def pattern(self, pattern):
        return self._address("patterns", pattern - 1)

    def herald(self, rule):
        return self._address("heralds", rule)

    def delay_dropped(self, channel):
        return self._address("delay_dropped", channel)

    def merger_dropped(self, channel):
        return self._address("merger_dropped", channel)

    def herald_dropped(self, rule):
        return self._address("herald_dropped", rule)

    def coincidence_dropped(self):
        return self._address("coincidence_dropped", 0)

    def filtered(self, channel):
        return self._address("filtered", channel)

    def filter_dropped(self, channel):
        return self._address("filter_dropped", channel)

    def gated_out(self, channel):
        return self._address("gated_out", channel)

    def range(self, name):
        """``range`` of addresses of one counter group (``"singles"``, ``"patterns"``, ...)."""
        base, count = self._base[name]
        return range(base, base + count)


# -- Wire format (device -> host byte stream) ------------------------------------------------
#
# See docs/protocol.md for the argument. Every byte carries 7 payload bits; bit 7 is set on the
# first byte of a record and clear on the others, so a reader finds the next record start after
# any damage. A record's payload is an unsigned integer, little-endian: the first byte holds its
# lowest bits (6 for a TAG, 3 for the other kinds), each following byte the next 7.

WIRE_START = 0x80           #: bit 7: first byte of a record
WIRE_TAG_FLAG = 0x40        #: bit 6 of a first byte: 0 = TAG record, 1 = another kind
WIRE_TAG_FIRST_BITS = 6     #: payload bits in a TAG record's first byte
WIRE_KIND_SHIFT = 3         #: a non-TAG first byte is 1 1 k k k p p p
WIRE_OTHER_FIRST_BITS = 3   #: payload bits in a non-TAG record's first byte
WIRE_BITS_PER_BYTE = 7      #: payload bits in every following byte


class WireKind(enum.Enum, shape=3):
    """Kind of a non-TAG wire record (the ``kkk`` bits of its first byte).

    Payloads (fields from least significant; ``CB = wire_channel_bits(N)``, N = channels,
    R = rules; ``zigzag(d) = 2d`` for d >= 0 and ``-2d - 1`` for d < 0):

    * TAG (not in this enum: first byte ``1 0 pppppp``): ``channel`` (CB bits), then
      ``delta`` (bins since the running time T, >= 0). T += delta.
    * COINCIDENCE: ``pattern`` (N bits), ``zigzag(t0 - T)``. T unchanged.
    * HERALD: ``rule`` (RULE_BITS), ``pattern`` (N bits), ``zigzag(time - T)``. T = time.
    * LOSS: ``cause`` (2 bits, LossCause), ``index`` (CHANNEL_BITS), ``count``. No time.
    * TIME: ``crc`` (16 bits: CRC-16/CCITT-FALSE, see ``CHECK_CRC_POLY``, of the bytes of the
      group it closes). Ends a group and starts the next one: T = the segment's ANCHOR time.
    * ANCHOR: absolute time in bins (``WIRE_ANCHOR_TIME_BITS``): T = time. Starts a segment, and
      its first group (the ANCHOR alone: a TIME follows it at once).
    * CHECK: ``bytes`` (16 bits: bytes of the group it closes mod 2**16), ``crc`` (16 bits, as
      TIME's). Ends the group and the segment.

    A *group* is an ANCHOR or a TIME and the records after it, up to the next TIME or CHECK
    (excluded). ANCHOR, TIME, CHECK, STATUS and REPLY are sent at full length
    (``FIXED_LENGTH_KINDS``).
    * STATUS / REPLY: a register value: ``ok`` (1 bit), ``seq`` (``WIRE_SEQ_BITS``),
      ``address`` (``REGISTER_ADDRESS_BITS``), ``value`` (32 bits), ``check``
      (``REPLY_CHECK_BITS``: :func:`reply_check` of the fields before it). STATUS records are the
      periodic counter snapshot (seq = 0, ok = 1); REPLY answers a command. No time.
    """
    COINCIDENCE = 0
    HERALD      = 1
    LOSS        = 2
    TIME        = 3
    ANCHOR      = 4
    CHECK       = 5
    STATUS      = 6
    REPLY       = 7


#: Absolute time carried by an ANCHOR, in bins (2**56 bins of 1 ps are 20 hours; of 10 ns, 22 y).
WIRE_ANCHOR_TIME_BITS = 56
#: Command sequence tag, echoed in the REPLY.
WIRE_SEQ_BITS = 5
#: Register addresses.
REGISTER_ADDRESS_BITS = 12


#: Width of each CHECK field: ``bytes`` (modulo ``2**CHECK_FIELD_BITS``) and ``crc``.
CHECK_FIELD_BITS = 16
#: The CHECK's ``crc`` is CRC-16/CCITT-FALSE of the segment's bytes: polynomial
#: x^16 + x^12 + x^5 + 1, MSB first, initial value 0xFFFF, no final XOR (Python's
#: ``binascii.crc_hqx(data, 0xFFFF)``). A plain byte sum would miss any
#: transposition and one double bit flip in 16; this CRC catches every error of up to 3 bits and
#: every burst of up to 16, and costs a 16-bit register and a few XORs per byte in the gateware.
CHECK_CRC_POLY = 0x1021
CHECK_CRC_INIT = 0xFFFF
#: Width of a register value on the link (STATUS/REPLY records, command frames).
REGISTER_VALUE_BITS = 32
#: Bits of a STATUS/REPLY record's fields before its check: ok, seq, address, value.
REPLY_FIELD_BITS = 1 + WIRE_SEQ_BITS + REGISTER_ADDRESS_BITS + REGISTER_VALUE_BITS
#: The check of a STATUS/REPLY record (protocol version 3): CRC-8 with polynomial
#: x^8 + x^2 + x + 1 (0x07), initial value 0xFF, MSB-first shift register, no final XOR, over the
#: ``REPLY_FIELD_BITS`` bits of ok, seq, address and value, least significant first. Its Hamming
#: distance is 4 up to 119 message bits: every error of up to 3 bits is caught, and all but 1/256
#: of the others. A REPLY is taken on its check (and its seq and address), not by repetition.
REPLY_CHECK_BITS = 8
REPLY_CHECK_POLY = 0x07
REPLY_CHECK_INIT = 0xFF


def reply_check(fields):
    """The check of a STATUS/REPLY whose ok, seq, address and value are ``fields`` (an integer,
    ``ok`` in bit 0, ``REPLY_FIELD_BITS`` wide)."""
    top = 1 << (REPLY_CHECK_BITS - 1)
    mask = (1 << REPLY_CHECK_BITS) - 1
    crc = REPLY_CHECK_INIT
    for i in range(REPLY_FIELD_BITS):
        feedback = bool(crc & top) ^ ((fields >> i) & 1)
        crc = ((crc << 1) & mask) ^ (REPLY_CHECK_POLY if feedback else 0)
    return crc


def reply_check_matrix():
    """``(constant, columns)``: :func:`reply_check` as an affine map over GF(2), ``check =
    constant ^ XOR of columns[i] for every set bit i of fields``. (A CRC is linear in its message
    once the initial value's part is split off.) The gateware builds its XOR network and the fast
    decoder its check from this, so both follow :func:`reply_check`."""
    constant = reply_check(0)
    return constant, [reply_check(1 << i) ^ constant for i in range(REPLY_FIELD_BITS)]

#: Reset value of ``control.anchor_interval`` (cycles between ANCHORs).
DEFAULT_ANCHOR_INTERVAL = 2 ** 20
#: Data records per group: before a TAG, COINCIDENCE or HERALD record that would be the group's
#: ``WIRE_GROUP_RECORDS + 1``-th data record, the encoder closes the group with a TIME. A damaged
#: group costs its own records only (docs/protocol.md has the trade-off table).
WIRE_GROUP_RECORDS = 16

#: Control records are sent at their kind's full length (payload zero-extended), so a reader
#: knows one is complete at its last byte without waiting for the next record's first byte
#: (a REPLY or the final CHECK of a run may be the last bytes for a long time). The other kinds
#: use the shortest encoding of their payload.
FIXED_LENGTH_KINDS = (WireKind.ANCHOR, WireKind.TIME, WireKind.CHECK, WireKind.STATUS,
                      WireKind.REPLY)


def wire_channel_bits(channels):
    """Bits of a TAG record's channel field: enough for ``channels`` (0 for one channel)."""
    return max(0, (channels - 1).bit_length())


# -- Commands (host -> device byte stream) ---------------------------------------------------
#
# Fixed 8-byte frames: ``0x80 | check << 2 | op`` then 7 bytes of 7 bits (bit 7 clear) holding,
# from the least significant bit, ``seq`` (WIRE_SEQ_BITS), ``address`` (REGISTER_ADDRESS_BITS),
# ``value`` (32). A byte with bit 7 set always starts a new frame, so a torn frame is discarded,
# never misread; ``check`` (a CRC-5 of op and payload) makes the device drop a frame whose bits
# were damaged on the link, so a flipped bit can never turn a READ into a WRITE or write another
# register (the host then times out and sends the frame again).

COMMAND_BYTES = 8
#: Bits of a command frame's first byte that hold the operation (the lowest); the check above.
COMMAND_OP_BITS = 2
#: Payload bits of a command frame after its first byte: seq, address, value.
COMMAND_PAYLOAD_BITS = (COMMAND_BYTES - 1) * WIRE_BITS_PER_BYTE


class Command(enum.Enum, shape=COMMAND_OP_BITS):
    READ  = 0   #: reply with the register's value
    WRITE = 1   #: write, then reply with the value read back


#: Width of the command frame's check field (the first byte's bits COMMAND_OP_BITS..6).
COMMAND_CHECK_BITS = WIRE_BITS_PER_BYTE - COMMAND_OP_BITS
#: CRC-5 polynomial x^5 + x^2 + 1 (bit i: coefficient of x^i, x^5 implied) and initial value.
COMMAND_CHECK_POLY = 0b00101
COMMAND_CHECK_INIT = 0b11111


def command_check_step(crc, bit):
    """One step of the command check (CRC-5, MSB-first shift register): ``crc`` is a list of
    ``COMMAND_CHECK_BITS`` bits (index 0 least significant), ``bit`` the next message bit. Works
    on Python ints (0/1) and on 1-bit Amaranth values alike, so the host's encoder and the
    gateware's parser share this one definition. The message is op (its bits, least significant
    first), then the frame payload's 49 bits, least significant first."""
    feedback = crc[-1] ^ bit
    out = []
    for i in range(COMMAND_CHECK_BITS):
        shifted = crc[i - 1] if i else 0
        out.append(shifted ^ feedback if (COMMAND_CHECK_POLY >> i) & 1 else shifted)
    return out


# -- Registers -------------------------------------------------------------------------------
#
# Every register is 32 bits wide on the link. The map is derived here, once, from the layouts
# above: the gateware's register file decodes with it, the host validates and names with it,
# and docs/registers.md is generated from it.

MAGIC = 0x484C5244              #: "HRLD" read from register IDENT_MAGIC
#: 2: command frames carry a CRC-5 check; 3: replies a CRC-8; 4: segments are cut into groups of
#: WIRE_GROUP_RECORDS data records, each verified on its own (TIME records); 5: a LOSS record's
#: cause is 3 bits (FILTER_FULL), and with CAPABILITY_GATES a HERALD record carries attempt and
#: sync_offset; 6: that HERALD record has a ``synced`` bit, and without it (attempt 0, sync
#: offset HERALD_UNSYNCED_OFFSET) leaves both fields out
PROTOCOL_VERSION = 6


@dataclass(frozen=True)
class Register:
    """One 32-bit register. ``config_offset``/``width`` place config registers in the config
    layout's bits (``None`` for the others). ``minimum``/``maximum`` bound what the host may
    write; ``reset`` is the value after reset."""
    name: str
    address: int
    access: str             # "ro", "rw" or "wo" (a write strobe; reads 0)
    reset: int
    minimum: int
    maximum: int
    doc: str
    width: int = 32
    config_offset: int = None


# Fixed registers: (name, address, access, reset, minimum, maximum, doc).
_FIXED_REGISTERS = [
    ("ident.magic",            0x000, "ro", MAGIC, 0, 2**32 - 1, "0x484C5244, 'HRLD'"),
    ("ident.protocol",         0x001, "ro", PROTOCOL_VERSION, 0, 2**32 - 1,
     "wire protocol version"),
    ("ident.gateware",         0x002, "ro", 0, 0, 2**32 - 1,
     "gateware version, major << 16 | minor << 8 | patch"),
    ("ident.channels",         0x003, "ro", 0, 1, MAX_CHANNELS, "input channels N"),
    ("ident.rules",            0x004, "ro", 0, 1, MAX_RULES, "herald rules R"),
    ("ident.fine_bits",        0x005, "ro", 0, 0, 8, "fine bits F of the PHY"),
    ("ident.bin_fs",           0x006, "ro", 0, 1, 2**32 - 1, "one bin, in femtoseconds"),
    ("ident.clock_hz",         0x007, "ro", 0, 1, 2**32 - 1, "system clock, Hz"),
    ("ident.capabilities",     0x008, "ro", 0, 0, 2**32 - 1,
     "bit 0 test signal (clear: the test.* and test_bsm.* registers keep their reset values "
     "and ignore writes), bit 1 coincidence records, bit 2 herald outputs, bit 3 roles and "
     "gates (clear: the gates.* registers keep their reset values; set: herald records carry "
     "attempt and offset), bit 4 stream "
     "filter (clear: the stream[c] registers keep their reset value, all), bit 5 the "
     "reference role alone (gates.role[c] stored, REFERENCE honoured; no sync or gates), "
     "bit 6 fast herald pins (early rules' pins from the sampling clock domain where exactly "
     "equivalent to the core's; records unchanged), bit 7 gate stage (the core's herald pins "
     "one clock period later; records unchanged)"),
    ("ident.counters",         0x009, "ro", 0, 0, 2**32 - 1, "number of hardware counters"),
    ("control.run",            0x010, "rw", 0, 0, 1, "run gate: 1 = acquiring"),
    ("control.clear",          0x011, "wo", 0, 0, 1,
     "write 1 (while stopped): zero counters, forget the window, empty delay lines"),
    ("control.busy",           0x012, "ro", 0, 0, 1, "1 while a clear is in progress"),
    ("control.status_period",  0x013, "rw", 0, 0, 2**32 - 1,
     "cycles between counter snapshots (STATUS records); 0 = none"),
    ("control.anchor_interval", 0x014, "rw", DEFAULT_ANCHOR_INTERVAL, 2**10, 2**31,
     "cycles between ANCHOR/CHECK records"),
    ("control.now",            0x015, "ro", 0, 0, 2**32 - 1, "coarse counter"),
    ("control.bad_frames",     0x016, "ro", 0, 0, 2**32 - 1,
     "command frames dropped since reset (torn, or bytes outside a frame); wraps"),
]

CONFIG_BASE = 0x100
COUNTER_BASE = 0x800

# Reset value, minimum and maximum of config fields that are not 0 .. 2**width - 1 with reset 0.
_CONFIG_FIELD_RULES = {
    "enable":       (1, 0, 1),
    "edge":         (Edge.RISING.value, 0, 3),
    "window":       (1, 1, 2 ** WINDOW_BITS - 1),
    "herald_width": (1, 1, 2 ** HERALD_WIDTH_BITS - 1),
    "seed":         (1, 0, 2 ** 32 - 1),
    "role":         (0, 0, max(r.value for r in Role)),
    "stream":       (StreamMode.ALL.value, 0, StreamMode.NONE.value),
}


def _config_leaves(layout, prefix="", base=0):
    """(dotted name, bit offset, width) of every leaf of a config layout, in offset order."""
    if isinstance(layout, data.ArrayLayout):
        for i in range(layout.length):
            yield from _config_leaves(layout.elem_shape, f"{prefix}[{i}]",
                                      base + i * Shape.cast(layout.elem_shape).width)
        return
    if isinstance(layout, data.StructLayout):
        for name, field in layout:
            yield from _config_leaves(field.shape, f"{prefix}.{name}" if prefix else name,
                                      base + field.offset)
        return
    yield prefix, base, Shape.cast(layout).width


class RegisterMap:
    """Every register of a core with ``channels`` inputs and ``rules`` herald rules."""

    def __init__(self, channels, rules):
        self.channels = channels
        self.rules = rules
        regs = [Register(name, address, access, reset, lo, hi, doc)
                for name, address, access, reset, lo, hi, doc in _FIXED_REGISTERS]
        address = CONFIG_BASE
        for name, offset, width in _config_leaves(config_layout(channels, rules)):
            leaf = name.rsplit(".", 1)[-1].split("[")[0]
            for part in range(0, width, 32):
                part_width = min(32, width - part)
                reset, lo, hi = _CONFIG_FIELD_RULES.get(leaf, (0, 0, 2 ** part_width - 1))
                if leaf == "herald_pin":        # each rule on its own pin after reset
                    index = int(name.rsplit("[", 1)[1].rstrip("]"))
                    reset, hi = index, self.rules - 1
                reg_name = name if width <= 32 else f"{name}.{part // 32}"
                regs.append(Register(reg_name, address, "rw", reset, lo, min(hi, 2**part_width - 1),
                                     f"config bits {offset + part}..{offset + part + part_width - 1}",
                                     width=part_width, config_offset=offset + part))
                address += 1
        if address > COUNTER_BASE:
            raise ValueError("config registers overflow into the counter range")
        counters = CounterMap(channels, rules)
        for group in ("singles", "patterns", "heralds", "delay_dropped", "merger_dropped",
                      "herald_dropped", "coincidence_dropped", "gated_out", "filtered",
                      "filter_dropped"):
            for i, counter in enumerate(counters.range(group)):
                index = i + 1 if group == "patterns" else i
                regs.append(Register(f"counter.{group}[{index}]", COUNTER_BASE + counter, "ro", 0,
                                     0, 2 ** COUNTER_BITS - 1, f"hardware counter {group}"))
        self.registers = regs
        self.by_name = {r.name: r for r in regs}
        self.by_address = {r.address: r for r in regs}
        self.counters = counters

    def __iter__(self):
        return iter(self.registers)

    def __getitem__(self, name):
        return self.by_name[name]

    def config_registers(self):
        return [r for r in self.registers if r.config_offset is not None]

    def counter_address(self, counter_index):
        return COUNTER_BASE + counter_index

    def config_reset(self):
        """The config layout's bits after reset, as an integer (from the registers' resets)."""
        value = 0
        for reg in self.config_registers():
            value |= reg.reset << reg.config_offset
        return value
