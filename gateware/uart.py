"""8N1 UART transmitter and receiver with a fractional baud generator.

Both sides divide the clock by ``clock_hz / baud`` exactly on average with a phase accumulator
(``clock_hz`` and ``baud`` reduced by their greatest common divisor): every bit lasts
``floor(clock_hz / baud)`` or ``ceil(clock_hz / baud)`` cycles, so each bit edge is within one
cycle of its ideal position and the error never accumulates (12 Mbaud from 100 MHz: bits of 8 or
9 cycles, 25 cycles per 3 bits).
"""

from math import gcd

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["BaudGenerator", "UARTTx", "UARTRx"]

#: Bits of one 8N1 frame: start, 8 data bits (LSB first), stop.
_FRAME_BITS = 10


class BaudGenerator:
    """Phase accumulator arithmetic shared by :class:`UARTTx` and :class:`UARTRx`.

    ``modulus`` and ``step`` are ``clock_hz`` and ``baud`` divided by their greatest common
    divisor; the accumulator adds ``step`` every cycle and *ticks* (a bit boundary, or a sample
    point) in each cycle in which it reaches ``modulus`` (which it then subtracts). The mean
    distance between ticks is ``clock_hz / baud`` cycles.

    Raises ``ValueError`` unless ``4 * baud <= clock_hz`` (the receiver needs at least four
    samples per bit to find the middle of a bit within a quarter bit).
    """

    def __init__(self, clock_hz, baud):
        clock_hz, baud = int(clock_hz), int(baud)
        if baud <= 0 or clock_hz <= 0:
            raise ValueError(f"clock_hz and baud must be positive, not {clock_hz}, {baud}")
        if 4 * baud > clock_hz:
            raise ValueError(f"baud must be at most clock_hz / 4: {baud} > {clock_hz} / 4")
        self.clock_hz = clock_hz
        self.baud = baud
        divisor = gcd(clock_hz, baud)
        self.modulus = clock_hz // divisor
        self.step = baud // divisor

    @property
    def cycles_per_bit(self):
        """Mean bit length in cycles (a float: ``clock_hz / baud``)."""
        return self.modulus / self.step

    def elaborate_step(self, m, acc):
        """Add the comb logic of one accumulator step to ``m``; returns ``(tick, next)``: whether
        ``acc`` ticks this cycle and the accumulator's next value (to be assigned by the caller,
        who may override it, e.g. to restart the phase)."""
        total = Signal(range(self.modulus + self.step))
        tick = Signal()
        nxt = Signal(range(self.modulus))
        m.d.comb += [
            total.eq(acc + self.step),
            tick.eq(total >= self.modulus),
            nxt.eq(total - Const(self.modulus, len(total)) * tick),
        ]
        return tick, nxt


class UARTTx(wiring.Component):
    """8N1 transmitter.

    Parameters
    ----------
    clock_hz, baud : int
        Clock and line rate, ``4 * baud <= clock_hz``; any ratio, not only integers.

    Members
    -------
    i : ``In(stream.Signature(8))``
        Bytes to send. A byte is taken (``ready`` high) whenever the transmitter is idle, and in
        the cycle the previous frame's stop bit ends, so back-to-back bytes go out with no idle
        time between frames (``baud / 10`` bytes per second).
    tx : ``Out(1)``
        The line, high when idle, straight from a flip-flop (no glitches). The start bit of a byte
        taken in cycle ``s`` from idle begins in cycle ``s + 1``; each bit then lasts
        ``floor`` or ``ceil`` of ``clock_hz / baud`` cycles, the phase running on across
        back-to-back frames.
    """

    def __init__(self, clock_hz, baud):
        self.baud_gen = BaudGenerator(clock_hz, baud)
        self.clock_hz = self.baud_gen.clock_hz
        self.baud = self.baud_gen.baud
        super().__init__({
            "i":  In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        gen = self.baud_gen

        acc = Signal(range(gen.modulus))
        busy = Signal()
        # Bits still on the line, the current one in bit 0; all ones when idle, so `tx` is
        # this register's bit 0 and needs no mux behind its flip-flop.
        shreg = Signal(_FRAME_BITS, init=2 ** _FRAME_BITS - 1)
        left = Signal(range(_FRAME_BITS + 1))
        tick, acc_next = gen.elaborate_step(m, acc)
        frame = Cat(Const(0, 1), self.i.payload, Const(1, 1))

        m.d.comb += self.tx.eq(shreg[0])
        with m.If(~busy):
            m.d.comb += self.i.ready.eq(1)
            with m.If(self.i.valid):
                # Restart the phase: the start bit lasts a whole bit from its first cycle.
                m.d.sync += [shreg.eq(frame), left.eq(_FRAME_BITS), busy.eq(1), acc.eq(0)]
        with m.Else():
            m.d.sync += acc.eq(acc_next)
            with m.If(tick):
                with m.If(left == 1):
                    # The stop bit ends: take the next byte now, keeping the phase running.
                    m.d.comb += self.i.ready.eq(1)
                    with m.If(self.i.valid):
                        m.d.sync += [shreg.eq(frame), left.eq(_FRAME_BITS)]
                    with m.Else():
                        # `shreg` has shifted in ones behind the stop bit: the line stays high.
                        m.d.sync += [left.eq(0), busy.eq(0)]
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], Const(1, 1))), left.eq(left - 1)]
        return m


class UARTRx(wiring.Component):
    """8N1 receiver.

    Parameters
    ----------
    clock_hz, baud : int
        Clock and line rate, ``4 * baud <= clock_hz``; any ratio.

    Members
    -------
    rx : ``In(1)``
        The line, already synchronised to the clock domain (e.g. by an ``FFSynchronizer``).
    o : ``Out(stream.Signature(8))``
        Received bytes. ``valid`` rises in the cycle after the middle of the stop bit and stays
        until ``ready``. A byte completed while the previous one still waits is dropped (the
        consumer must take a byte within one frame time; the command parser always does).
    framing_error : ``Out(1)``
        One-cycle pulse (in the cycle after the middle of the stop bit) when the stop bit is low;
        the byte is discarded and the receiver waits for the line to go high before it looks
        for the next start bit (a break or a stuck-low line makes one error, not a stream).

    Behaviour: idle until ``rx`` reads low; the phase accumulator is then set so that it ticks
    about half a bit later (the middle of the start bit, allowing for the half cycle by which
    the edge preceded the first low sample) and every bit after that. A start bit that reads
    high at its middle is a glitch and ignored. After the stop bit's middle the receiver is idle
    again and re-aligns on the next start bit's falling edge, so clock mismatch between the two
    ends does not accumulate across frames.
    """

    def __init__(self, clock_hz, baud):
        self.baud_gen = BaudGenerator(clock_hz, baud)
        self.clock_hz = self.baud_gen.clock_hz
        self.baud = self.baud_gen.baud
        super().__init__({
            "rx":            In(1, init=1),
            "o":             Out(stream.Signature(8)),
            "framing_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        gen = self.baud_gen

        acc = Signal(range(gen.modulus))
        tick, acc_next = gen.elaborate_step(m, acc)
        # First tick about half a bit after the first low sample, less the half cycle by which
        # the edge (somewhere in the cycle before) preceded it: ticks when acc reaches modulus.
        start_phase = min(gen.modulus - 1, (gen.modulus + gen.step) // 2)
        bit = Signal(range(_FRAME_BITS))   # 0 = start bit, 1..8 = data, 9 = stop
        shreg = Signal(8)
        data = Signal(8)
        valid = Signal()
        m.d.comb += [self.o.payload.eq(data), self.o.valid.eq(valid)]
        with m.If(self.o.ready):
            m.d.sync += valid.eq(0)
        # A one-cycle pulse: cleared every cycle unless the FSM below sets it.
        m.d.sync += self.framing_error.eq(0)

        with m.FSM(name="rx_state"):
            with m.State("IDLE"):
                with m.If(~self.rx):
                    m.d.sync += [acc.eq(start_phase), bit.eq(0)]
                    m.next = "FRAME"
            with m.State("FRAME"):
                m.d.sync += acc.eq(acc_next)
                with m.If(tick):
                    m.d.sync += bit.eq(bit + 1)
                    with m.If(bit == 0):
                        with m.If(self.rx):
                            m.next = "IDLE"
                    with m.Elif(bit == _FRAME_BITS - 1):
                        with m.If(self.rx):
                            with m.If(~valid | self.o.ready):
                                m.d.sync += [data.eq(shreg), valid.eq(1)]
                            m.next = "IDLE"
                        with m.Else():
                            m.d.sync += self.framing_error.eq(1)
                            m.next = "BREAK"
                    with m.Else():
                        m.d.sync += shreg.eq(Cat(shreg[1:], self.rx))
            with m.State("BREAK"):
                with m.If(self.rx):
                    m.next = "IDLE"
        return m
