"""A registered stage for a ``lib.stream`` interface (a skid buffer)."""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["StreamRegister"]


class StreamRegister(wiring.Component):
    """Cuts every combinational path through a stream: ``o.valid``, ``o.payload`` and
    ``i.ready`` all come from registers, and the stage still passes one payload per cycle.

    The output register holds the payload offered on ``o``; a second (skid) register catches the
    payload taken from ``i`` in a cycle in which ``o`` is stalled, because ``i.ready`` was
    already high (it is registered: it cannot fall in the same cycle as ``o.ready``). Payloads
    leave in the order they arrive, unchanged. Latency: a payload taken from ``i`` in cycle
    ``c`` is offered on ``o`` from cycle ``c + 1`` (``c + 1`` after the skid register empties
    when ``o`` was stalled).

    With ``skid=False`` there is no skid register (half the flip-flops): ``o.valid`` and
    ``o.payload`` are still registered, but ``i.ready = o.ready | ~o.valid`` is combinational,
    so only the forward paths are cut.

    Parameters
    ----------
    shape : shape-like
        The payload shape.
    skid : bool
        Register ``i.ready`` too (default), at the cost of a second payload register.

    Members
    -------
    i : In(stream.Signature(shape))
    o : Out(stream.Signature(shape))
    busy : Out(1)
        The stage holds a payload (``o.valid`` or the skid register full).
    """

    def __init__(self, shape, *, skid=True):
        self.skid = bool(skid)
        super().__init__({
            "i":    In(stream.Signature(shape)),
            "o":    Out(stream.Signature(shape)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        if not self.skid:
            m.d.comb += [
                self.i.ready.eq(self.o.ready | ~self.o.valid),
                self.busy.eq(self.o.valid),
            ]
            with m.If(self.i.ready):
                m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(self.i.valid)]
            return m
        skid = Signal.like(self.i.payload)
        skid_valid = Signal()
        m.d.comb += [
            self.i.ready.eq(~skid_valid),
            self.busy.eq(self.o.valid | skid_valid),
        ]
        with m.If(~self.o.valid | self.o.ready):
            # The output register is free after this cycle: refill it, skid first.
            with m.If(skid_valid):
                m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(self.i.valid)]
        with m.Elif(self.i.valid & ~skid_valid):
            m.d.sync += [skid.eq(self.i.payload), skid_valid.eq(1)]
        return m
