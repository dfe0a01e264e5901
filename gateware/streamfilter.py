"""Stream filter: per channel, which events go on to the merger as tags (docs/semantics.md,
"Stream filters"; the reference is ``heraldry.model.stream_filter``).

It sits beside the counters, between the coincidence unit and the merger: the counters see every
event, the merger only the streamed ones.
"""

from amaranth.hdl import C, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..protocol import CHANNEL_BITS, COARSE_BITS, MAX_CHANNELS, WINDOW_BITS, StreamMode, time_bits

__all__ = ["StreamFilter", "OFFSET_BITS"]

#: Width of a held tag's offset before the first bin of the cycle that releases it (a held tag
#: is at most ``W - 1`` bins older than that: ``WINDOW_BITS`` would do; one bit of slack, and
#: the width of the merger's coincidence ``t0`` offset).
OFFSET_BITS = WINDOW_BITS + 1
#: Width of the count of a window's events that found the hold buffer full (at most one per
#: cycle of a window: below ``2**WINDOW_BITS``).
OVER_BITS = WINDOW_BITS


def _any_and_two(bits):
    """(any, two or more) of a list of 1-bit values, as a balanced tree of halves: a half's
    pair combines as ``any = a | b`` and ``two = two_a | two_b | (a & b)``, so the depth grows
    with log2 of the width and no carry chain is used (``p & (p - 1)`` was a carry chain on the
    ULX3S's critical path)."""
    if len(bits) == 1:
        return bits[0], C(0, 1)
    half = len(bits) // 2
    any_a, two_a = _any_and_two(bits[:half])
    any_b, two_b = _any_and_two(bits[half:])
    return any_a | any_b, two_a | two_b | (any_a & any_b)


def _two_or_more(pattern):
    """At least two bits of ``pattern`` set."""
    return _any_and_two([pattern[i] for i in range(len(pattern))])[1]


class StreamFilter(wiring.Component):
    """Per-channel stream modes (``StreamMode``) on the coincidence unit's per-cycle view.

    ``ALL``: a channel's events are streamed in their own cycle. ``NONE``: never (counted in
    ``filtered``). ``COINCIDENT``: streamed if their window's closed pattern holds two or more
    channels. An event is decided in its own cycle if its window's pattern after the cycle holds
    two or more channels (streamed) or the window has no bin after the cycle (filtered);
    otherwise it is **held**: the filter keeps its time in one of ``hold`` slots (all held
    events are of one channel and one window, the open one). In the first cycle in which the
    open window's pattern holds two or more channels, the held events are released (``held``,
    ``held_offset``, ``held_channel``) with that cycle's streamed events; when the window closes
    without, they are filtered. An event that should be held while every slot is taken is
    dropped and counted: if its window turns out coincident it is lost (``dropped``: the merger
    reports it as a ``FILTER_FULL`` loss, the counters in ``filter_dropped``), else filtered.

    Parameters
    ----------
    channels : int
        N, 1 .. ``MAX_CHANNELS``.
    fine_bits : int
        F.
    hold : int
        Slots, >= 1 (``heraldry.model.STREAM_HOLD`` in the core).

    Members
    -------
    events, times, ref : In
        The coincidence unit's inputs of this cycle.
    join, prev_pattern, was_open, last_cycle, opened_last_cycle : In
        The coincidence unit's outputs of the same names, of this cycle.
    mode : In(ArrayLayout(StreamMode, N))
        Per channel (a reserved value 3 acts as ``ALL``). Change it only while stopped and idle.
    clear : In(1)
        Forgets the held events (with the counters' clear; only while stopped).
    stream : Out(N)
        Combinational: this cycle's events that are streamed now.
    held : Out(hold)
        Combinational: held events released in this cycle, slots ``0 .. k - 1`` (a thermometer
        code), in time order.
    held_channel : Out(CHANNEL_BITS)
        Their channel.
    held_offset : Out(ArrayLayout(OFFSET_BITS, hold))
        Combinational: per slot, ``Cat(0, ref)`` minus the held event's time, in bins (> 0).
    filtered : Out(ArrayLayout(unsigned(OVER_BITS + 1), N))
        Combinational: per channel, events withheld by the mode decided in this cycle.
    dropped : Out(ArrayLayout(unsigned(OVER_BITS), N))
        Combinational: per channel, events of a coincident window lost to a full buffer, known
        in this cycle (the release).
    idle : Out(1)
        Nothing is held.

    Latency: every output is combinational from this cycle's inputs (the release and the
    decisions happen in the cycle of the events that make them).
    """

    def __init__(self, channels, fine_bits=0, hold=2):
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, not {channels}")
        if fine_bits < 0:
            raise ValueError(f"fine_bits must be >= 0, not {fine_bits}")
        if hold < 1:
            raise ValueError(f"hold must be >= 1, not {hold}")
        self.channels = channels
        self.fine_bits = fine_bits
        self.hold = hold
        tb = time_bits(fine_bits)
        super().__init__({
            "events":            In(channels),
            "times":             In(data.ArrayLayout(unsigned(tb), channels)),
            "ref":               In(COARSE_BITS),
            "join":              In(channels),
            "prev_pattern":      In(channels),
            "was_open":          In(1),
            "last_cycle":        In(1),
            "opened_last_cycle": In(1),
            "mode":              In(data.ArrayLayout(StreamMode, channels)),
            "clear":             In(1),
            "stream":            Out(channels),
            "held":              Out(hold),
            "held_channel":      Out(CHANNEL_BITS),
            "held_offset":       Out(data.ArrayLayout(unsigned(OFFSET_BITS), hold)),
            "filtered":          Out(data.ArrayLayout(unsigned(OVER_BITS + 1), channels)),
            "dropped":           Out(data.ArrayLayout(unsigned(OVER_BITS), channels)),
            "idle":              Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n, f, k = self.channels, self.fine_bits, self.hold

        count = Signal(range(k + 1))            # slots taken
        over = Signal(OVER_BITS)                # events that found every slot taken
        channel = Signal(CHANNEL_BITS)          # the held events' channel
        slot = [Signal(OFFSET_BITS, name=f"slot{i}") for i in range(k)]   # low time bits

        events = Signal(n)
        m.d.comb += events.eq(Mux(self.clear, 0, self.events))
        new = events & ~self.join
        opening = new.any()
        multi_a = _two_or_more(self.prev_pattern | self.join)   # the window open before
        multi_b = _two_or_more(new)                             # a window opened now
        # The window open before has no bin after this cycle (with F > 0 events beyond it
        # close it now); a window opened now likewise.
        last_a = self.was_open & (opening | self.last_cycle)
        last_b = opening & self.opened_last_cycle
        # With F > 0 events may open a window in the last cycle of the one before (it closes
        # now): the new window's undecided events are streamed at once, since held they would
        # follow the old window's exact herald records (timed at the next cycle's first bin).
        at_once_b = opening & self.was_open

        need = Signal(n)        # events that must be held (at most one per cycle, see below)
        decided_out = Signal(n)
        for c in range(n):
            mode = self.mode[c]
            coincident = mode == StreamMode.COINCIDENT
            none = mode == StreamMode.NONE
            multi = Mux(self.join[c], multi_a, multi_b)
            last = Mux(self.join[c], last_a, last_b)
            at_once = ~self.join[c] & at_once_b & ~last
            m.d.comb += [
                self.stream[c].eq(events[c] & ~none & (~coincident | multi | at_once)),
                decided_out[c].eq(events[c] & (none | coincident & ~multi & last)),
                need[c].eq(events[c] & coincident & ~multi & ~last & ~at_once),
            ]
        # An event needs a slot only if its window holds its channel alone after this cycle and
        # carries on: so at most one channel needs one per cycle (one event per channel per
        # cycle), and not in both windows (a window opened while one was open means the old one
        # ends now).

        holding = count != 0
        release = holding & multi_a             # held events are of the window open before
        discard = holding & ~multi_a & last_a
        keep = holding & ~multi_a & ~last_a
        base_count = Mux(keep, count, 0)
        base_over = Mux(keep, over, 0)
        room = base_count < k

        low = 0
        need_channel = 0
        for c in range(n):
            low = low | Mux(need[c], self.times[c][:OFFSET_BITS], 0)
            need_channel = need_channel | Mux(need[c], c, 0)
        needed = need.any()

        # The late signals (``keep``, ``needed``, ``room``) only select among values computed
        # from the registers alone: an adder after them was on the ULX3S's critical path.
        over_1 = Signal(OVER_BITS)
        count_1 = Signal.like(count)
        m.d.comb += [over_1.eq(over + 1), count_1.eq(count + 1)]
        with m.If(self.clear):
            m.d.sync += [count.eq(0), over.eq(0)]
        with m.Else():
            m.d.sync += [count.eq(Mux(needed & room, Mux(keep, count_1, 1), base_count)),
                         over.eq(Mux(needed & ~room, Mux(keep, over_1, 1), base_over))]
            with m.If(needed):
                m.d.sync += channel.eq(need_channel)
            for i in range(k):
                with m.If(needed & room & (base_count == i)):
                    m.d.sync += slot[i].eq(low)

        # Offsets from the first bin of this cycle; exact modulo 2**OFFSET_BITS since a held
        # event is less than W bins older.
        start = Cat(Const(0, f), self.ref)[:OFFSET_BITS]
        for i in range(k):
            m.d.comb += [
                self.held[i].eq(release & (count > i)),
                self.held_offset[i].eq((start - slot[i])[:OFFSET_BITS]),
            ]
        m.d.comb += [self.held_channel.eq(channel), self.idle.eq(~holding)]
        # Likewise the filtered counts: ``count + over`` (and one more) from the registers,
        # selected by this cycle's decisions.
        held_total = Signal(OVER_BITS + 1)
        held_total_1 = Signal(OVER_BITS + 1)
        m.d.comb += [held_total.eq(count + over), held_total_1.eq(count + over + 1)]
        for c in range(n):
            mine = channel == c
            m.d.comb += [
                self.filtered[c].eq(Mux(discard & mine,
                                        Mux(decided_out[c], held_total_1, held_total),
                                        decided_out[c])),
                self.dropped[c].eq(Mux(release & mine, over, 0)),
            ]
        return m
