"""Per-channel programmable delay line."""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..protocol import COARSE_BITS, DELAY_BITS, time_bits

__all__ = ["DelayLine"]


class DelayLine(wiring.Component):
    """Delays each event by ``delay`` bins, releasing it in the cycle of its delayed coarse time.

    Timing contract (docs/architecture.md, "Delay line"): an event entering in cycle ``c`` with
    time ``t`` leaves in cycle ``c + k``, ``k = ((t + delay) >> F) - (t >> F)``, with
    ``time = t + delay``. When ``k == 0`` (always when ``delay == 0``) it passes through
    combinationally, in the cycle it enters. So every channel's output is aligned to its delayed
    coarse time, offset by the same pipeline age as its input.

    Capacity: ``depth`` events held. An event that needs holding (``k > 0``) is dropped, with an
    ``overflow`` pulse in its arrival cycle, if ``depth`` events are held that do not leave in
    that cycle (an event leaving in the arrival cycle frees its slot for it). This is
    ``heraldry.model.delay_events`` exactly. Events with ``k == 0`` are never dropped for lack of
    room (they need no slot; and with ``k == 0`` possible nothing held is due later).

    Collisions (only for F > 0): two events less than ``2**F`` bins apart can land in the same
    delayed cycle, and the output carries one event per cycle. The earlier one is kept; the
    later one is dropped at arrival with an ``overflow`` pulse (the model's collision). A dead
    time of at least ``2**F`` bins rules this out. With F = 0 it cannot happen (``k == delay`` for every event).

    Events leave in arrival order, so the store is a FIFO in a :class:`Memory` (block RAM on
    iCE40/ECP5) holding per event only the low ``DELAY_BITS`` bits of its due cycle, the fine bits
    of its delayed time and its age ``now - (t >> F)`` at arrival (``age_bits`` bits). The full
    delayed time is rebuilt when it leaves: ``Cat(fine, now - age)``.

    ``delay`` may change only while the line is empty (stopped and drained, or after ``clear``).

    Parameters
    ----------
    fine_bits : int
        F, the PHY's fine bits.
    depth : int
        Events held, >= 1.
    age_bits : int
        Width of the stored age: every arriving event must satisfy
        ``0 <= (now - (time >> F)) mod 2**32 < 2**age_bits`` (in the core the age is the constant
        ``phy.latency + 1``).

    Members
    -------
    i : In(Signature({"event": Out(1), "time": Out(time_bits(F))}))
        Arriving event (``i.event`` high for one cycle) and its time, from the input stage.
    delay : In(DELAY_BITS)
        Delay in bins.
    now : In(COARSE_BITS)
        Free-running coarse counter; must increment by one every cycle (modulo ``2**32``).
    clear : In(1)
        Strobe: empty the line. Events arriving or due in that cycle are discarded silently.
    o : Out(Signature({"event": Out(1), "time": Out(time_bits(F))}))
        Leaving event and its delayed time (combinational from the state, ``now`` and the
        arriving event).
    overflow : Out(1)
        One-cycle pulse per dropped event, in its arrival cycle (combinational).
    """

    def __init__(self, fine_bits, depth=16, *, age_bits=4):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, not {depth!r}")
        if not isinstance(age_bits, int) or not 1 <= age_bits <= COARSE_BITS:
            raise ValueError(f"age_bits must be 1..{COARSE_BITS}, not {age_bits!r}")
        self.fine_bits = fine_bits
        self.depth = depth
        self.age_bits = age_bits
        tb = time_bits(fine_bits)
        events = wiring.Signature({"event": Out(1), "time": Out(tb)})
        super().__init__({
            "i":        In(events),
            "delay":    In(DELAY_BITS),
            "now":      In(COARSE_BITS),
            "clear":    In(1),
            "o":        Out(events),
            "overflow": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        F = self.fine_bits
        depth = self.depth
        # k <= (2**F - 1 + 2**DELAY_BITS - 1) >> F < 2**DELAY_BITS, so DELAY_BITS low bits of the
        # due cycle identify it uniquely among the cycles an event can be pending.
        due_bits = DELAY_BITS

        entry = data.StructLayout({
            "due":  unsigned(due_bits),
            "fine": unsigned(F),
            "age":  unsigned(self.age_bits),
        })
        m.submodules.mem = mem = Memory(shape=entry, depth=depth, init=[])
        wp = mem.write_port()
        # Transparent: an entry written into the slot that becomes the head is read back at once
        # (the head is read one cycle ahead; a held event can be due one cycle after it arrives).
        rp = mem.read_port(transparent_for=(wp,))

        rd_ptr = Signal(range(depth))
        wr_ptr = Signal(range(depth))
        level = Signal(range(depth + 1))
        last_due = Signal(due_bits)     # due cycle of the newest held event (collision check)

        def next_ptr(ptr):
            return Mux(ptr == depth - 1, 0, ptr + 1)

        # Split the delay: fine + delay = k * 2**F + fine_out, k whole cycles to wait.
        total = Signal(F + DELAY_BITS + 1)
        m.d.comb += total.eq(self.i.time[:F] + self.delay)
        k = total[F:]
        fine_out = total[:F]
        due = Signal(due_bits)
        m.d.comb += due.eq(self.now[:due_bits] + k)
        age = Signal(self.age_bits)
        m.d.comb += age.eq(self.now - self.i.time[F:])

        head = rp.data
        head_due = Signal()
        m.d.comb += head_due.eq((level != 0) & (head.due == self.now[:due_bits]))

        passing = Signal()      # k == 0: leaves now, needs no slot
        m.d.comb += passing.eq(k == 0)
        if F > 0:
            # Due cycles are non-decreasing in arrival order, so the only possible collision is
            # with the newest held event (or the head, when passing through). A held event is
            # never more than 2**DELAY_BITS - 1 cycles ahead, so comparing low bits is exact.
            collision = (level != 0) & (due == last_due)
        else:
            collision = 0
        # (level - head_due) == depth, without the subtraction behind the memory read.
        full = (level == depth) & ~head_due
        drop = Signal()
        m.d.comb += drop.eq(self.i.event & (collision | (~passing & full)))
        push = Signal()
        m.d.comb += push.eq(self.i.event & ~passing & ~drop & ~self.clear)
        pop = head_due

        m.d.comb += [
            self.overflow.eq(drop & ~self.clear),
            # A passing event is dropped only if it collides, i.e. the newest held event is
            # due now: then it is the head (one held event per due cycle, each leaves at its
            # due cycle), `head_due` is set and an event leaves either way. So `drop` (behind
            # two adders: the path from the input stage's time through them into the gate unit
            # was the ULX3S's 8-channel critical one) is not needed here.
            self.o.event.eq((head_due | (self.i.event & passing)) & ~self.clear),
            # A held event due now always has an earlier time than an arriving one, which was
            # dropped above if it would leave in the same cycle.
            self.o.time.eq(Mux(head_due,
                               Cat(head.fine, self.now - head.age),
                               Cat(fine_out, self.i.time[F:]))),
        ]

        rd_next = Signal.like(rd_ptr)
        m.d.comb += [
            rd_next.eq(Mux(pop, next_ptr(rd_ptr), rd_ptr)),
            rp.addr.eq(rd_next),
            wp.addr.eq(wr_ptr),
            wp.en.eq(push),
            wp.data.due.eq(due),
            wp.data.fine.eq(fine_out),
            wp.data.age.eq(age),
        ]
        with m.If(self.clear):
            # The read data is stale for a cycle, but the line is empty then, and the first push
            # (into slot 0) is read back through the transparent port.
            m.d.sync += [rd_ptr.eq(0), wr_ptr.eq(0), level.eq(0)]
        with m.Else():
            m.d.sync += [
                rd_ptr.eq(rd_next),
                level.eq(level + push - pop),
            ]
            with m.If(push):
                m.d.sync += [wr_ptr.eq(next_ptr(wr_ptr)), last_due.eq(due)]
        return m
