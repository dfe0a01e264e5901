"""Input PHYs: turn a detector pin into per-cycle edge reports.

Every PHY implements :class:`PHYSignature` and declares two plain attributes:

* ``fine_bits`` (F): sub-clock bits of its edge positions; one clock cycle is ``2**F`` bins.
* ``latency``: cycles from the cycle that defines an edge's bin to the cycle in which the PHY
  reports it. An edge's bin is the value of the free-running coarse counter ``now`` in the cycle
  that follows the first rising clock edge at which the pin is sampled in its new state (for
  F > 0, the PHY's fine position refines that cycle). The input stage timestamps a report as
  ``Cat(fine, now - latency)``: the only place PHY latency is subtracted.

Vendor PHYs (iCE40 DDR, ECP5 gearbox) live in their own modules and implement the same interface,
so the rest of the core never knows which one it is fed by. :class:`WordEdges`, here, is the
first-edge encoder every sample-word PHY shares.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["PHYSignature", "GenericPHY", "WordEdges"]


class PHYSignature(wiring.Signature):
    """Edge reports of one input, seen from the PHY.

    Parameters
    ----------
    fine_bits : int
        Width F of the sub-clock positions (0 for a PHY that only samples once per cycle).

    Members
    -------
    rise : Out(1)
        High for exactly one cycle per rising edge of the input.
    rise_fine : Out(F)
        Sub-clock position of the first rising edge within that cycle, 0 = earliest. Only
        meaningful while ``rise`` is high.
    fall : Out(1)
        Like ``rise``, for falling edges. ``rise`` and ``fall`` may both be high in one cycle
        (a PHY with F > 0 can see a short pulse inside one cycle).
    fall_fine : Out(F)
        Like ``rise_fine``, for falling edges.
    """

    def __init__(self, fine_bits):
        if not isinstance(fine_bits, int) or fine_bits < 0:
            raise TypeError(f"fine_bits must be a non-negative integer, not {fine_bits!r}")
        self._fine_bits = fine_bits
        super().__init__({
            "rise":      Out(1),
            "rise_fine": Out(fine_bits),
            "fall":      Out(1),
            "fall_fine": Out(fine_bits),
        })

    @property
    def fine_bits(self):
        return self._fine_bits

    def __eq__(self, other):
        return type(other) is type(self) and other.fine_bits == self.fine_bits

    def __repr__(self):
        return f"PHYSignature({self._fine_bits})"


class GenericPHY(wiring.Component):
    """Portable PHY: two-flop synchroniser, then edge detection against a one-cycle-old copy.

    Works on any FPGA family; resolution is one clock cycle (``fine_bits = 0``). A pin that is
    high at reset is reported as a rising edge ``2 + latency`` cycles after reset (the
    synchroniser starts low).

    A pulse is seen only if the pin is sampled high at at least one rising clock edge; shorter
    pulses between two clock edges are lost. Rising and falling edges are never reported in the
    same cycle.

    Attributes
    ----------
    fine_bits : int
        0.
    latency : int
        1. The pin is first sampled high at clock edge k (bin = ``now`` in the cycle after edge
        k). Synchroniser flop 1 captures it at k, flop 2 at k + 1; ``rise`` is the combination
        of flop 2 and its old copy, so it is high in the cycle after edge k + 1, one cycle after
        the bin's cycle.

    Members
    -------
    pin : In(1)
        Asynchronous input, not related to the ``sync`` clock.
    phy : Out(PHYSignature(0))
        Edge reports.
    """

    fine_bits = 0
    latency = 1

    def __init__(self):
        super().__init__({
            "pin": In(1),
            "phy": Out(PHYSignature(self.fine_bits)),
        })

    def elaborate(self, platform):
        m = Module()

        # The pin is asynchronous: two flops before anything looks at it (metastability).
        level = Signal()
        m.submodules.sync = FFSynchronizer(self.pin, level, o_domain="sync", stages=2)

        old = Signal()
        m.d.sync += old.eq(level)

        # Combinational on purpose: registering here would add a cycle to the herald budget
        # (pin -> herald within 4 cycles, see docs/architecture.md).
        m.d.comb += [
            self.phy.rise.eq(level & ~old),
            self.phy.fall.eq(~level & old),
        ]
        return m


class WordEdges(wiring.Component):
    """First rising and first falling edge within a word of ``2**fine_bits`` pin samples.

    The word holds the pin's level at ``2**F`` evenly spaced instants of one clock cycle, bit 0
    the earliest. A rising edge at position ``i`` is ``word[i] & ~word[i - 1]``, where
    ``word[-1]`` is the last sample of the previous cycle's word (kept in a register that starts
    low, so a pin high from reset is one rising edge). Only the first edge of each kind in a word
    is reported; later ones in the same word are lost (one event per cycle, as in the input
    stage and the reference model).

    Latency: 0 cycles (the outputs are combinational in ``word``; registering them would add a
    cycle to the pin-to-herald budget).

    Parameters
    ----------
    fine_bits : int
        F, at least 1.

    Members
    -------
    word : In(2**F)
        This cycle's samples, bit 0 the earliest. Must come from a register (synchronous).
    phy : Out(PHYSignature(F))
        Edge reports for this word.
    """

    def __init__(self, fine_bits):
        if not isinstance(fine_bits, int) or fine_bits < 1:
            raise ValueError(f"fine_bits must be a positive integer, not {fine_bits!r}")
        self.fine_bits = fine_bits
        super().__init__({
            "word": In(2 ** fine_bits),
            "phy":  Out(PHYSignature(fine_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        width = 2 ** self.fine_bits

        last = Signal()
        m.d.sync += last.eq(self.word[-1])

        previous = Signal(width)
        m.d.comb += previous.eq((self.word << 1) | last)
        rises = Signal(width)
        falls = Signal(width)
        m.d.comb += [
            rises.eq(self.word & ~previous),
            falls.eq(~self.word & previous),
        ]
        m.d.comb += [
            self.phy.rise.eq(rises.any()),
            self.phy.fall.eq(falls.any()),
        ]
        # Priority encoders: the last assignment wins, so iterate from the latest position down.
        for i in reversed(range(width)):
            with m.If(rises[i]):
                m.d.comb += self.phy.rise_fine.eq(i)
            with m.If(falls[i]):
                m.d.comb += self.phy.fall_fine.eq(i)
        return m
