"""Time-ordered event merger: per-cycle bundles -> FIFO -> one record per handshake, with loss.

See ``docs/architecture.md`` (Merger) for the contract this block implements.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from heraldry.protocol import (
    ATTEMPT_BITS, CHANNEL_BITS, COARSE_BITS, COUNTER_BITS, GATE_BITS, LOSS_COUNT_BITS,
    MAX_CHANNELS, MAX_RULES, WINDOW_BITS, Kind, LossCause, record_layout, time_bits,
)
from .gates import attempt_offset
from .streamfilter import OVER_BITS

__all__ = ["Merger"]


class Merger(wiring.Component):
    """Merges each cycle's events, herald firings and coincidence close into the record stream.

    Everything presented in one cycle is a *bundle*. Bundles are registered, written to a FIFO of
    ``depth`` bundles and serialised, one record per ``o`` handshake, in this order:

    1. at most one loss record (``time = Cat(0, coarse)`` of the bundle it travels with);
    2. the stream filter's released tags (``held``, ``hold > 0``), in slot order, then the
       bundle's own tag records, in time order: by (fine time, channel), which for
       ``fine_bits == 0`` is channel order;
    3. herald records, in time order, equal times in rule order (each with its own time and
       pattern: with ``F > 0`` rules firing in one cycle may have different times; the wire
       protocol refuses a herald record earlier than the one before);
    4. the coincidence record (``time`` = the window's ``t0``, earlier than the tags before it).

    When ``o.ready`` stays high the serialiser emits one record every cycle, including across
    bundle boundaries (the next bundle is popped in the cycle its predecessor's last record is
    taken). Latency from a bundle's inputs to its first record on ``o`` (FIFO empty, serialiser
    idle): 4 cycles.

    **Loss.** A bundle with at least one item (event, herald firing, recorded close) that finds
    the FIFO full is dropped whole: each of its items adds one to its pending loss counter
    (``MERGER_FULL`` per channel, ``HERALD_RECORD`` per rule, ``COINCIDENCE_RECORD``) and pulses
    ``merger_dropped`` / ``herald_dropped`` / ``coincidence_dropped`` for one cycle (one cycle
    after the inputs). ``delay_overflow`` pulses add to the ``DELAY_FULL`` counters. Pending
    counters are ``COUNTER_BITS`` wide (they wrap, like the hardware counters, only after
    ``2**COUNTER_BITS`` unreported drops). In a cycle in which the FIFO has room, the loss
    *offer* register is empty (or emptied in this cycle) and some pending counter is non-zero,
    that counter is taken whole into the offer (and restarts from this cycle's increment). From
    the next cycle on, every cycle in which the FIFO has room writes one loss item ``(cause,
    index, min(offer, 2**LOSS_COUNT_BITS - 1))`` *together with* that cycle's bundle (a bundle
    with only a loss item is written if the cycle has no items) and takes it from the offer;
    the next counter is taken in the cycle the offer's last chunk is written, so while counters
    are pending a loss item is written in every cycle with room. (Taking the counter whole
    instead of subtracting the reported count keeps the 32-bit arithmetic out of the selection
    path; the drops that pile up while the FIFO is full are reported together.) The counter
    taken is chosen round-robin, starting after the one taken last, in the order
    ``MERGER_FULL[0..N-1]``, ``DELAY_FULL[0..N-1]``, ``HERALD_RECORD[0..R-1]``,
    ``COINCIDENCE_RECORD`` (and ``FILTER_FULL[0..N-1]`` with ``hold > 0``); so every pending
    counter is taken within ``2N + R + 1`` (``3N + R + 1``) offers.
    (``docs/architecture.md`` asked for
    the loss bundle to replace the cycle's event bundle; riding along costs 22 FIFO bits and
    avoids a self-sustaining cascade of drops while events arrive every cycle.)

    Invariant, once drained and flushed: per channel, streamed tags + ``MERGER_FULL`` counts =
    events presented (released held tags included); ``FILTER_FULL`` counts = ``filter_dropped``; per rule, herald records + ``HERALD_RECORD`` counts = firings presented;
    coincidence records + ``COINCIDENCE_RECORD`` counts = recorded closes presented;
    ``DELAY_FULL`` counts = ``delay_overflow`` pulses.

    Parameters
    ----------
    channels : int
        N, 1 .. ``MAX_CHANNELS``.
    rules : int
        R, 1 .. ``MAX_RULES``.
    fine_bits : int
        F, the PHY's fine bits.
    hold : int
        Slots of the stream filter in front (0: none, and no ``held*``/``filter_dropped``
        members).
    depth : int
        FIFO depth in bundles, >= 2. A stalled merger holds ``depth + 1`` bundles (the serialiser
        holds one). A full FIFO refuses a write in the cycle it is popped, so depth 2 accepts at
        most one bundle every other cycle; depth >= 3 accepts one every cycle.
    gates : bool
        The core has the attempt clock (``GateUnit``): each bundle also stores the cycle's
        ``attempt``, ``base``, ``synced``, ``sync_now`` and ``sync_fine`` (``50 + F`` bits), and
        each herald record carries the ``attempt`` and ``offset`` of its own time
        (``gates.attempt_offset``; ``record_layout(F, gates=True)``).
    herald_late : bool
        ``herald_time`` and ``herald_pattern`` arrive one cycle after the ``herald_fire`` they
        belong to (``HeraldGenerator(record_stage=True)``): they are not registered with the
        bundle but written with it into the FIFO a cycle later, so the latency, the loss rules
        and the record stream are those of ``herald_late=False`` with the fields presented
        with ``herald_fire``.

    Members
    -------
    events : ``In(N)``
        Channels with an event this cycle.
    times : ``In(ArrayLayout(time_bits(F), N))``
        Their timestamps; only the fine bits are stored: the coarse part must equal ``ref``.
    ref : ``In(COARSE_BITS)``
        Delayed coarse time of this cycle (the coarse time of this cycle's events).
    closed, closed_pattern, closed_t0 : ``In(1)``, ``In(N)``, ``In(time_bits(F))``
        A coincidence window closed. ``closed_t0`` must be at most ``2**t0_offset_bits - 1`` bins
        before ``Cat(0, ref)`` (stored as that offset).
    coincidence_record_mask : ``In(2**N)``
        The close is recorded iff bit ``closed_pattern`` is set.
    herald_fire, herald_time, herald_pattern : ``In(R)``, ``In(ArrayLayout(time_bits(F), R))``,
    ``In(ArrayLayout(N, R))``
        Rules firing this cycle and, per rule (valid with its ``herald_fire`` bit), the time of
        its completing event (coarse part must equal ``ref``; only the fine bits are stored)
        and its pattern. Each herald record carries its own rule's time and pattern.
    herald_exact : ``In(R)``
        Bit r set: rule r is exact. Its firings come with a close (``closed``, which need not
        be recorded) and its records carry the cycle's first bin ``Cat(0, ref)`` (when the
        rule decided) and the closed window's pattern instead of ``herald_time[r]`` and
        ``herald_pattern[r]``. Configuration: change it only while ``idle``.
    delay_overflow : ``In(N)``
        One-cycle pulse per event dropped by a delay line.
    held, held_channel, held_offset : ``In(hold)``, ``In(CHANNEL_BITS)``,
    ``In(ArrayLayout(t0_offset_bits, hold))``
        Tags the stream filter releases with this cycle's (``StreamFilter``): slots in a
        thermometer code, their channel, and per slot ``Cat(0, ref)`` minus the tag's time.
    filter_dropped : ``In(ArrayLayout(streamfilter.OVER_BITS, N))``
        Per channel, tags lost to the stream filter's full buffer (``FILTER_FULL``).
    clear : ``In(1)``
        Zeroes the pending loss counters (with the hardware counters; only while stopped). The
        FIFO is not flushed: a record already offered on ``o`` must not be withdrawn.
    o : ``Out(stream.Signature(record_layout(F)))``
        The record stream.
    merger_dropped, herald_dropped, coincidence_dropped : ``Out(N)``, ``Out(R)``, ``Out(1)``
        One-cycle pulses per dropped item, for the hardware counters.
    held_dropped : ``Out(ArrayLayout(range(hold + 1), N))``
        Per channel, released tags dropped with their bundle (also ``MERGER_FULL``).
    idle : ``Out(1)``
        The merger holds nothing: no item in the input register, FIFO empty, serialiser idle
        (``o.valid`` low), no pending loss. Combinational. Items presented on the inputs in the
        same cycle are not counted, so after a cycle with ``idle`` high every tag and herald
        record that follows has a coarse time of at least that cycle's ``ref``.

    Attributes
    ----------
    t0_offset_bits : int
        Width of the stored ``Cat(0, ref) - closed_t0``: ``WINDOW_BITS + 1``. A window is shorter
        than ``2**WINDOW_BITS`` bins and closes within a cycle of reaching ``t0 + W``, so the
        offset is below ``2**WINDOW_BITS + 2**(F+1)``; the extra bit leaves about
        ``2**WINDOW_BITS`` bins of slack for a registered or pipelined close.
    """

    def __init__(self, channels, rules, fine_bits=0, depth=256, gates=False, hold=0,
                 herald_late=False):
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, not {channels}")
        if not 1 <= rules <= MAX_RULES:
            raise ValueError(f"rules must be 1..{MAX_RULES}, not {rules}")
        if fine_bits < 0:
            raise ValueError(f"fine_bits must be >= 0, not {fine_bits}")
        if depth < 2:
            raise ValueError(f"depth must be >= 2, not {depth}")
        if hold < 0:
            raise ValueError(f"hold must be >= 0, not {hold}")
        self.hold = hold
        self.herald_late = bool(herald_late)
        self.channels = channels
        self.rules = rules
        self.fine_bits = fine_bits
        self.depth = depth
        self.gates = bool(gates)
        self.t0_offset_bits = WINDOW_BITS + 1

        n, r, f = channels, rules, fine_bits
        tb = time_bits(f)
        held_fields = {
            "held":                unsigned(hold),
            "held_channel":        unsigned(CHANNEL_BITS),
            "held_offset":         data.ArrayLayout(unsigned(self.t0_offset_bits), hold),
        } if hold else {}
        # One FIFO entry. Only one coarse time is stored: every item of a cycle shares it.
        clock = {}
        if self.gates:
            clock = {"attempt": unsigned(ATTEMPT_BITS), "base": unsigned(GATE_BITS),
                     "synced": unsigned(1), "sync_now": unsigned(1), "sync_fine": unsigned(f)}
        self.bundle_layout = data.StructLayout(held_fields | clock | {
            "coarse":              unsigned(COARSE_BITS),
            "events":              unsigned(n),
            "fine":                data.ArrayLayout(unsigned(f), n),
            "herald":              unsigned(r),
            "herald_fine":         data.ArrayLayout(unsigned(f), r),
            "herald_pattern":      data.ArrayLayout(unsigned(n), r),
            "coincidence":         unsigned(1),
            "coincidence_pattern": unsigned(n),
            "t0_offset":           unsigned(self.t0_offset_bits),
            "loss":                unsigned(1),
            "loss_cause":          LossCause,
            "loss_index":          unsigned(CHANNEL_BITS),
            "loss_count":          unsigned(LOSS_COUNT_BITS),
        })

        ports = {}
        if self.gates:
            ports = {"attempt": In(ATTEMPT_BITS), "base": In(GATE_BITS), "synced": In(1),
                     "sync_now": In(1), "sync_fine": In(f)}
        super().__init__(ports | {
            "events":                  In(n),
            "times":                   In(data.ArrayLayout(unsigned(tb), n)),
            "ref":                     In(COARSE_BITS),
            "closed":                  In(1),
            "closed_pattern":          In(n),
            "closed_t0":               In(tb),
            "coincidence_record_mask": In(2 ** n),
            "herald_fire":             In(r),
            "herald_time":             In(data.ArrayLayout(unsigned(tb), r)),
            "herald_pattern":          In(data.ArrayLayout(unsigned(n), r)),
            "herald_exact":            In(r),
            "delay_overflow":          In(n),
            "clear":                   In(1),
            "o":                       Out(stream.Signature(record_layout(f, self.gates))),
            "merger_dropped":          Out(n),
            "herald_dropped":          Out(r),
            "coincidence_dropped":     Out(1),
            "idle":                    Out(1),
        } | ({
            "held":                    In(hold),
            "held_channel":            In(CHANNEL_BITS),
            "held_offset":             In(data.ArrayLayout(unsigned(self.t0_offset_bits), hold)),
            "filter_dropped":          In(data.ArrayLayout(unsigned(OVER_BITS), n)),
            "held_dropped":            Out(data.ArrayLayout(range(hold + 1), n)),
        } if hold else {}))

    def elaborate(self, platform):
        m = Module()
        n, r, f = self.channels, self.rules, self.fine_bits
        layout = self.bundle_layout

        m.submodules.fifo = fifo = SyncFIFOBuffered(
            width=layout.size, depth=self.depth)

        # --- Stage 1: register the cycle's inputs as a bundle (keeps the coincidence/herald
        # combinational paths away from the FIFO write logic).
        bundle = Signal(layout)
        m.d.sync += [
            bundle.coarse.eq(self.ref),
            bundle.events.eq(self.events),
            bundle.herald.eq(self.herald_fire),
            bundle.coincidence.eq(
                self.closed & self.coincidence_record_mask.bit_select(self.closed_pattern, 1)),
            bundle.coincidence_pattern.eq(self.closed_pattern),
            bundle.t0_offset.eq(Cat(Const(0, f), self.ref) - self.closed_t0),
        ]
        if self.hold:
            m.d.sync += [
                bundle.held.eq(self.held),
                bundle.held_channel.eq(self.held_channel),
                bundle.held_offset.eq(self.held_offset),
            ]
        if self.gates:
            m.d.sync += [
                bundle.attempt.eq(self.attempt), bundle.base.eq(self.base),
                bundle.synced.eq(self.synced), bundle.sync_now.eq(self.sync_now),
                bundle.sync_fine.eq(self.sync_fine),
            ]
        if not self.herald_late:
            m.d.sync += bundle.herald_pattern.eq(self.herald_pattern)
        if f:
            if not self.herald_late:
                for i in range(r):
                    m.d.sync += bundle.herald_fine[i].eq(self.herald_time[i][:f])
            for c in range(n):
                m.d.sync += bundle.fine[c].eq(self.times[c][:f])

        # --- Stage 2: write the bundle (with one loss item if any is pending), or drop it.
        has_items = bundle.events.any() | bundle.herald.any() | bundle.coincidence
        if self.hold:
            has_items = has_items | bundle.held.any()
        room = fifo.w_rdy
        drop = has_items & ~room
        m.d.comb += [
            self.merger_dropped.eq(Mux(drop, bundle.events, 0)),
            self.herald_dropped.eq(Mux(drop, bundle.herald, 0)),
            self.coincidence_dropped.eq(drop & bundle.coincidence),
        ]
        tags_dropped = [self.merger_dropped[c] for c in range(n)]
        if self.hold:
            held_count = sum(bundle.held[i] for i in range(self.hold))
            for c in range(n):
                m.d.comb += self.held_dropped[c].eq(
                    Mux(drop & (bundle.held_channel == c), held_count, 0))
                tags_dropped[c] = self.merger_dropped[c] + self.held_dropped[c]

        # Pending counters in reporting order; (cause, index, per-cycle increment) each.
        sources = (
            [(LossCause.MERGER_FULL, c, tags_dropped[c]) for c in range(n)] +
            [(LossCause.DELAY_FULL, c, self.delay_overflow[c]) for c in range(n)] +
            [(LossCause.HERALD_RECORD, i, self.herald_dropped[i]) for i in range(r)] +
            [(LossCause.COINCIDENCE_RECORD, 0, self.coincidence_dropped)] +
            ([(LossCause.FILTER_FULL, c, self.filter_dropped[c]) for c in range(n)]
             if self.hold else [])
        )
        k_total = len(sources)
        pending = [Signal(COUNTER_BITS, name=f"pending_{cause.name.lower()}_{index}")
                   for cause, index, _ in sources]
        # nonzero[k] == (pending[k] != 0), kept as a register beside each counter so that no
        # 32-bit comparison sits in front of the selection.
        nonzero = Signal(k_total)
        # Round robin: the first non-zero counter after the one taken last (`after`: a mask of
        # the counters after it), else the first non-zero one. One-hot throughout: no index
        # comparisons, no chain of priority multiplexers.
        after = Signal(k_total)
        first_after = nonzero & after
        cand = Signal(k_total)
        m.d.comb += cand.eq(Mux(first_after.any(), first_after, nonzero))
        onehot = Signal(k_total)
        m.d.comb += onehot.eq(Cat(cand[k] & ~cand[:k].any() if k else cand[0]
                                  for k in range(k_total)))

        # The offer: a loss item taken whole out of its pending counter (which restarts from this
        # cycle's increment: no subtraction), written in chunks of at most 2**16 - 1 with the
        # bundles of the following cycles with room. A counter is taken only in a cycle with
        # room, so drops that pile up while the FIFO is full are reported together.
        max_count = 2 ** LOSS_COUNT_BITS - 1
        cause_bits = Shape.cast(LossCause).width
        offer_lo = Signal(LOSS_COUNT_BITS)
        offer_hi = Signal(COUNTER_BITS - LOSS_COUNT_BITS)
        offer_valid = Signal()
        offer_big = Signal()        # offer > max_count: more than one chunk left
        offer_cause = Signal(LossCause)
        offer_index = Signal(CHANNEL_BITS)
        count = Signal(LOSS_COUNT_BITS)
        m.d.comb += count.eq(Mux(offer_big, max_count, offer_lo))
        sent = offer_valid & room
        free = ~offer_valid | (sent & ~offer_big)     # the offer is empty after this cycle
        take = Signal()
        m.d.comb += take.eq(free & room & nonzero.any())
        w_bundle = Signal(layout)
        m.d.comb += [
            w_bundle.eq(bundle),
            w_bundle.loss.eq(offer_valid),
            w_bundle.loss_cause.eq(offer_cause),
            w_bundle.loss_index.eq(offer_index),
            w_bundle.loss_count.eq(count),
            fifo.w_data.eq(w_bundle),
            fifo.w_en.eq(has_items | offer_valid),
        ]

        if self.herald_late:
            # This cycle's herald fields belong to the bundle registered in the last cycle.
            m.d.comb += w_bundle.herald_pattern.eq(self.herald_pattern)
            if f:
                for i in range(r):
                    m.d.comb += w_bundle.herald_fine[i].eq(self.herald_time[i][:f])

        def pick(values, width):
            out = Const(0, width)
            for k, value in enumerate(values):
                out = out | Mux(onehot[k], value, 0)
            return out

        with m.If(take):
            m.d.sync += [
                Cat(offer_lo, offer_hi).eq(pick(pending, COUNTER_BITS)),
                offer_big.eq(pick([p[LOSS_COUNT_BITS:] != 0 for p in pending], 1)),
                offer_cause.eq(pick([Const(cause.value, cause_bits) for cause, _, _ in sources],
                                    cause_bits)),
                offer_index.eq(pick([Const(index, CHANNEL_BITS) for _, index, _ in sources],
                                    CHANNEL_BITS)),
                offer_valid.eq(1),
                after.eq(Cat(onehot[:k].any() if k else Const(0) for k in range(k_total))),
            ]
        with m.Elif(sent):
            # A full chunk: offer - (2**16 - 1) = offer - 2**16 + 1, in halves without a carry
            # between them: if the low half is all ones it becomes 0 and the high half stays,
            # else the low half steps up and the high half down. More than one chunk is left
            # iff the high half is not 0 afterwards.
            lo_full = offer_lo == max_count
            m.d.sync += offer_valid.eq(offer_big)
            with m.If(lo_full):
                m.d.sync += [offer_lo.eq(0), offer_big.eq(1)]
            with m.Else():
                m.d.sync += [offer_lo.eq(offer_lo + 1), offer_hi.eq(offer_hi - 1),
                             offer_big.eq(offer_hi != 1)]
        for k, (_, _, inc) in enumerate(sources):
            some = inc != 0 if len(inc) > 1 else inc
            with m.If(take & onehot[k]):
                m.d.sync += [pending[k].eq(inc), nonzero[k].eq(some)]
            with m.Else():
                m.d.sync += [pending[k].eq(pending[k] + inc), nonzero[k].eq(nonzero[k] | some)]
        with m.If(self.clear):
            m.d.sync += [p.eq(0) for p in pending]
            m.d.sync += [nonzero.eq(0), offer_valid.eq(0), after.eq(0)]
        # --- Serialiser: `cur` is the bundle being emitted, `rem_*` its items not yet taken.
        cur = Signal(layout)
        rem_loss = Signal()
        rem_held = Signal(max(self.hold, 1))
        rem_tags = Signal(n)
        rem_herald = Signal(r)
        rem_coinc = Signal()
        m.d.comb += self.o.valid.eq(rem_loss | rem_held.any() | rem_tags.any() | rem_herald.any()
                                    | rem_coinc)

        # Next tag: smallest (fine, channel) among the remaining ones.
        tag_onehot = Signal(n)
        for c in range(n):
            earlier = []
            for d in range(n):
                if d == c:
                    continue
                if f == 0:
                    before = d < c
                elif d < c:
                    before = cur.fine[d] <= cur.fine[c]
                else:
                    before = cur.fine[d] < cur.fine[c]
                if before is True:
                    earlier.append(rem_tags[d])
                elif before is not False:
                    earlier.append(rem_tags[d] & before)
            blocked = Cat(earlier).any() if earlier else Const(0)
            m.d.comb += tag_onehot[c].eq(rem_tags[c] & ~blocked)
        # Next herald: smallest (time, rule) among the remaining ones. An exact rule's record is
        # at the bundle's first bin (fine 0), an early rule's at its completing event.
        herald_key = [Signal(f, name=f"herald_key{i}") for i in range(r)]
        herald_onehot = Signal(r)
        for i in range(r):
            if f:
                m.d.comb += herald_key[i].eq(Mux(self.herald_exact[i], 0, cur.herald_fine[i]))
                earlier = [rem_herald[j] & (herald_key[j] <= herald_key[i] if j < i
                                            else herald_key[j] < herald_key[i])
                           for j in range(r) if j != i]
            else:
                earlier = [rem_herald[j] for j in range(i)]
            blocked = Cat(earlier).any() if earlier else Const(0)
            m.d.comb += herald_onehot[i].eq(rem_herald[i] & ~blocked)

        after_loss = Signal()
        after_held = Signal(len(rem_held))
        after_tags = Signal(n)
        after_herald = Signal(r)
        after_coinc = Signal()
        m.d.comb += [
            after_loss.eq(rem_loss),
            after_held.eq(rem_held),
            after_tags.eq(rem_tags),
            after_herald.eq(rem_herald),
            after_coinc.eq(rem_coinc),
        ]

        rec = self.o.payload
        coarse_time = Cat(Const(0, f), cur.coarse)
        with m.If(rem_loss):
            m.d.comb += [
                rec.kind.eq(Kind.LOSS),
                rec.payload.loss.cause.eq(cur.loss_cause),
                rec.payload.loss.index.eq(cur.loss_index),
                rec.payload.loss.count.eq(cur.loss_count),
                rec.time.eq(coarse_time),
                after_loss.eq(0),
            ]
        with m.Elif(rem_held.any()):
            # The lowest remaining slot (a thermometer code: slots are taken in order).
            lowest = Cat(rem_held[i] & ~rem_held[:i].any() if i else rem_held[0]
                         for i in range(len(rem_held)))
            offset = 0
            for i in range(self.hold):
                offset = offset | Mux(lowest[i], cur.held_offset[i], 0)
            m.d.comb += [
                rec.kind.eq(Kind.TAG),
                rec.payload.tag.channel.eq(cur.held_channel if self.hold else 0),
                rec.time.eq(coarse_time - offset),
                after_held.eq(rem_held & ~lowest),
            ]
        with m.Elif(rem_tags.any()):
            m.d.comb += [
                rec.kind.eq(Kind.TAG),
                after_tags.eq(rem_tags & ~tag_onehot),
            ]
            for c in range(n):
                with m.If(tag_onehot[c]):
                    m.d.comb += [
                        rec.payload.tag.channel.eq(c),
                        rec.time.eq(Cat(cur.fine[c], cur.coarse)),
                    ]
        with m.Elif(rem_herald.any()):
            # The rule taken is one-hot: select its fields with an AND-OR, no priority chain.
            herald_pattern, herald_fine, rule = 0, 0, 0
            for i in range(r):
                herald_pattern = herald_pattern | Mux(herald_onehot[i], cur.herald_pattern[i], 0)
                herald_fine = herald_fine | Mux(herald_onehot[i], herald_key[i], 0)
                rule = rule | Mux(herald_onehot[i], i, 0)
            exact = (herald_onehot & self.herald_exact).any()
            m.d.comb += [
                rec.kind.eq(Kind.HERALD),
                rec.payload.herald.rule.eq(rule),
                rec.payload.herald.pattern.eq(Mux(exact, cur.coincidence_pattern, herald_pattern)),
                rec.time.eq(Cat(herald_fine[:f], cur.coarse)),
                after_herald.eq(rem_herald & ~herald_onehot),
            ]
            if self.gates:
                attempt, offset = attempt_offset(cur.attempt, cur.base, cur.synced,
                                                 cur.sync_now, cur.sync_fine, herald_fine[:f], f)
                m.d.comb += [
                    rec.payload.herald.attempt.eq(attempt),
                    rec.payload.herald.offset.eq(offset),
                ]
        with m.Elif(rem_coinc):
            m.d.comb += [
                rec.kind.eq(Kind.COINCIDENCE),
                rec.payload.coincidence.pattern.eq(cur.coincidence_pattern),
                rec.time.eq(coarse_time - cur.t0_offset),
                after_coinc.eq(0),
            ]

        m.d.comb += self.idle.eq(
            ~has_items & (fifo.level == 0) & ~self.o.valid & ~nonzero.any() & ~offer_valid)

        more = after_loss | after_held.any() | after_tags.any() | after_herald.any() | after_coinc
        # Pop the next bundle when idle or in the cycle the current one's last record is taken.
        load = ~self.o.valid | (self.o.ready & ~more)
        m.d.comb += fifo.r_en.eq(load)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += [
                rem_loss.eq(after_loss),
                rem_held.eq(after_held),
                rem_tags.eq(after_tags),
                rem_herald.eq(after_herald),
                rem_coinc.eq(after_coinc),
            ]
        with m.If(load & fifo.r_rdy):
            new = layout(fifo.r_data)
            m.d.sync += [
                cur.eq(new),
                rem_loss.eq(new.loss),
                rem_held.eq(new.held if self.hold else 0),
                rem_tags.eq(new.events),
                rem_herald.eq(new.herald),
                rem_coinc.eq(new.coincidence),
            ]

        return m
