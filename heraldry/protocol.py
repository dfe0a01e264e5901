"""Every record layout, enum and address map that gateware and host share.

This is the only place where a field width, an enum value or a counter address is written down.
The gateware assigns fields of these layouts; the host decodes with the same definitions
(:func:`record_fields` gives offsets and widths derived from the layout, never copied by hand).

Time is counted in *bins*. A timestamp is ``Cat(fine, coarse)``: ``COARSE_BITS`` of free-running
coarse counter (one count per clock cycle) above the PHY's ``fine_bits`` sub-clock bits, so one
clock cycle is ``2**fine_bits`` bins. With the generic PHY ``fine_bits == 0`` and a bin is a cycle.
"""

from amaranth.hdl import unsigned
from amaranth.lib import data, enum

__all__ = [
    "COARSE_BITS", "MAX_CHANNELS", "CHANNEL_BITS", "RULE_BITS", "MAX_RULES", "PATTERN_BITS",
    "DELAY_BITS", "WINDOW_BITS", "DEAD_TIME_BITS", "HERALD_WIDTH_BITS", "PAIR_DELAY_BITS",
    "PROBABILITY_BITS", "PERIOD_BITS", "COUNTER_BITS", "LOSS_COUNT_BITS",
    "Kind", "LossCause", "Edge", "Source",
    "time_bits", "record_layout", "record_fields", "decode_record",
    "channel_config_layout", "test_signal_layout", "config_layout", "CounterMap",
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
#: Largest count one loss record carries; larger losses are reported in several records.
LOSS_COUNT_BITS = 16


class Kind(enum.Enum, shape=3):
    """What a record in the event stream is."""
    TAG         = 0  #: one detection on ``payload.tag.channel`` at ``time``
    COINCIDENCE = 1  #: a closed window whose pattern is selected for recording; ``time`` is t0
    HERALD      = 2  #: herald rule ``payload.herald.rule`` fired at ``time``
    LOSS        = 3  #: ``payload.loss.count`` items were dropped since the last such record


class LossCause(enum.Enum, shape=2):
    """Why a loss record's items were dropped."""
    MERGER_FULL        = 0  #: tags of channel ``index`` dropped: merger FIFO full
    DELAY_FULL         = 1  #: tags of channel ``index`` dropped: its delay buffer was full
    HERALD_RECORD      = 2  #: herald records of rule ``index`` dropped: merger FIFO full
    COINCIDENCE_RECORD = 3  #: coincidence records dropped: merger FIFO full (``index`` = 0)


class Edge(enum.Enum, shape=2):
    """Which input edges make events."""
    NONE    = 0
    RISING  = 1
    FALLING = 2
    BOTH    = 3


class Source(enum.Enum, shape=2):
    """What feeds a channel: its pin, or one of the built-in test signals."""
    PIN      = 0
    PERIODIC = 1  #: one event every ``test.period`` cycles
    PAIR_A   = 2  #: arm A of the photon-pair source (plus this channel's dark counts)
    PAIR_B   = 3  #: arm B, ``test.pair_delay`` cycles after arm A (plus dark counts)


def time_bits(fine_bits):
    """Width of a timestamp in bins: coarse counter above the fine bits."""
    return COARSE_BITS + fine_bits


def record_layout(fine_bits=0):
    """Layout of one record of the merged event stream (gateware output, host input)."""
    payload = data.UnionLayout({
        "tag":         data.StructLayout({"channel": unsigned(CHANNEL_BITS)}),
        "coincidence": data.StructLayout({"pattern": unsigned(PATTERN_BITS)}),
        "herald":      data.StructLayout({"rule": unsigned(RULE_BITS),
                                          "pattern": unsigned(PATTERN_BITS)}),
        "loss":        data.StructLayout({"cause": LossCause,
                                          "index": unsigned(CHANNEL_BITS),
                                          "count": unsigned(LOSS_COUNT_BITS)}),
    })
    return data.StructLayout({
        "kind":    Kind,
        "payload": payload,
        "time":    unsigned(time_bits(fine_bits)),
    })


def record_fields(fine_bits=0):
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

    walk(record_layout(fine_bits), "", 0)
    return fields


def decode_record(raw, fine_bits=0):
    """Decode one raw record integer into a plain dict (slow path, for tests and small runs)."""
    fields = record_fields(fine_bits)

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
    })


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

    def range(self, name):
        """``range`` of addresses of one counter group (``"singles"``, ``"patterns"``, ...)."""
        base, count = self._base[name]
        return range(base, base + count)
