"""Sample-word gearbox: the input PHYs sample in a fast clock domain, the core runs slower.

A vendor sampler (iCE40 ``SB_IO`` DDR registers, ECP5 ``IDDRX2F``) delivers a word of ``2**Fp``
pin samples per cycle of its fast clock. The core cannot run that fast, so :class:`WordGearbox`
puts ``R`` consecutive fast words side by side, once per cycle of the core's ``sync`` clock
(``R`` times slower, from the same PLL), and :class:`GearedInputs` encodes each channel's
``R * 2**Fp``-sample word with :class:`~.phy.WordEdges`: ``F = Fp + log2(R)`` fine bits,
bins of one fast sample.

Two ways across the clock boundary (docs/boards.md, "Two clocks"):

* ``elastic=False`` (aligned): the two clocks are outputs of one PLL whose rising edges
  coincide (iCE40 ``GENCLK`` / ``GENCLK_HALF``). ``sync`` captures the sampler's own registers
  plus ``R - 1`` older words held in fast registers: deterministic, no added latency.
* ``elastic=True``: the phase between the clocks is not known (ECP5: ``sync`` from a PLL
  output, the sampler's clock from ``CLKDIVF``, whose divider phase is not defined). Every ``R``
  fast cycles the fast side writes the ``R`` words into the next of ``depth`` slots; the
  ``sync`` side starts reading slot 0 once it has seen (through a two-flop synchroniser) that
  the fast side started, then reads one slot per cycle. The clocks are frequency-locked, so the
  distance between writing and reading a slot stays what it was at start: 2 to 3 ``sync``
  cycles, one more if the synchroniser goes metastable, plus any lag of ``sync``'s reset
  release behind the fast domain's (both come from the PLL's lock, a cycle or two apart). Every
  slot is thus read long after it settled and at least ``depth - 4`` cycles before it is
  rewritten, whatever the phase. The price: the word boundaries and the latency are fixed for
  a power-up but may differ by a ``sync`` cycle between power-ups -- one constant offset shared
  by every channel (one gearbox carries them all), so times between channels are unaffected.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .phy import WordEdges

__all__ = ["WordGearbox", "GearedInputs"]


class WordGearbox(wiring.Component):
    """``R`` consecutive words of domain ``fast`` side by side, one group per ``sync`` cycle.

    Parameters
    ----------
    width : int
        Bits per fast word (all channels' samples of one fast cycle).
    ratio : int
        R, the fast clock's frequency over ``sync``'s, at least 2.
    fast : str
        The fast clock domain.
    elastic : bool
        Crossing for clocks of unknown phase (see the module docstring); otherwise the rising
        edges of ``sync`` must coincide with rising edges of ``fast``.
    depth : int
        Slots of the elastic ring (``elastic=True``), at least 8.
    lanes : int
        Elastic: copies of the slots' write enables, each for an equal share of every word's
        bits (one per channel in :class:`GearedInputs`), so that each copy drives one
        channel's slot bits, placed near them, rather than one enable all of them across the
        chip (the ECP5's ``sclk`` critical path). Divides ``width``. The board build keeps the
        copies (wires ``enable_copy_*``; Yosys would merge them back into one otherwise).

    Members
    -------
    i : In(width)
        The fast word, from a register clocked by ``fast`` (changing right after each fast
        rising edge).
    o : Out(width * ratio)
        Registered in ``sync``: ``R`` consecutive fast words, the earliest in the low bits.
        Aligned: after ``sync`` edge ``k`` it holds the values ``i`` had during the ``R`` fast
        cycles before edge ``k``. Elastic: a constant number of cycles later (2 to 4, fixed at
        start), starting at a fast cycle of fixed but unknown phase.
    running : Out(1)
        ``sync`` domain. Always 1 when aligned; elastic: ``o`` carries words (before it is 0).

    Attributes
    ----------
    phase : Signal(R) or None
        Elastic only (None when aligned), ``fast`` domain: the one-hot position of the current
        ``i`` word in its group (bit 0: the group's first word, the lowest in ``o``), fixed from
        reset on. For logic in ``fast`` that must cut the words into the same groups
        (:class:`~heraldry.gateware.fastherald.FastHerald`).
    """

    def __init__(self, width, ratio, *, fast="fast", elastic=False, depth=8, lanes=1):
        if not isinstance(ratio, int) or ratio < 2:
            raise ValueError(f"ratio must be an integer of at least 2, not {ratio!r}")
        if not isinstance(lanes, int) or lanes < 1 or width % lanes:
            raise ValueError(f"lanes must be a positive divisor of width {width}, not {lanes!r}")
        if elastic and (not isinstance(depth, int) or depth < 8 or depth & (depth - 1)):
            raise ValueError(f"depth must be a power of 2 of at least 8, not {depth!r}")
        self.width = width
        self.ratio = ratio
        self.fast = fast
        self.elastic = elastic
        self.depth = depth
        self.lanes = lanes
        self.phase = Signal(ratio, init=1, name="phase") if elastic else None
        super().__init__({
            "i":       In(width),
            "o":       Out(width * ratio),
            "running": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        w, r = self.width, self.ratio
        fast = m.d[self.fast]

        # The R - 1 words before the current one, newest in the high bits. Elastic: no reset
        # (see the slots below); the first write after a reset comes R - 1 shifts after it.
        history = Signal(w * (r - 1), reset_less=self.elastic)
        if r > 2:
            fast += history.eq(Cat(history[w:], self.i))
        else:
            fast += history.eq(self.i)
        group = Cat(history, self.i)

        if not self.elastic:
            m.d.sync += self.o.eq(group)
            m.d.comb += self.running.eq(1)
            return m

        # Fast side: a write every R cycles, into the next slot of the ring. Every control
        # signal is a flip-flop (at 200 MHz on the ECP5 a decoded write enable fanning out to
        # a slot's flip-flops missed timing): `phase` is a one-hot ring of R, `where` a one-hot
        # ring of slots, and `enable` the registered one-hot write enable of the next cycle.
        # The slots have no reset: the read side only reads a slot written since the last
        # reset (tests/gateware/test_gearbox.py, a lost PLL lock mid-run), and the reset's
        # fan-out to every slot bit (1024 at 8 channels) was `sclk`'s critical path.
        # `enable` has one copy per lane (`lanes`), each writing its share of every word.
        slots = [Signal(w * r, name=f"slot{s}", reset_less=True) for s in range(self.depth)]
        phase = self.phase
        where = Signal(self.depth, init=1)
        # 0 after a cycle of reset (phase)
        enables = [Signal(self.depth, reset_less=True, name=f"enable_copy_{lane}")
                   for lane in range(self.lanes)]
        started = Signal()
        fast += phase.eq(phase.rotate_left(1))
        fast += [enable.eq(Mux(phase[r - 2], where, 0)) for enable in enables]
        with m.If(phase[r - 1]):
            fast += [where.eq(where.rotate_left(1)), started.eq(1)]
        lane_bits = w // self.lanes
        for s, slot in enumerate(slots):
            for lane, enable in enumerate(enables):
                with m.If(enable[s]):
                    for k in range(r):
                        low = k * w + lane * lane_bits
                        fast += slot[low:low + lane_bits].eq(group[low:low + lane_bits])
        slots = Array(slots)

        # Slow side: start once the fast side has started, then one slot per cycle.
        seen = Signal()
        m.submodules.started_sync = FFSynchronizer(started, seen, o_domain="sync", stages=2)
        read = Signal(range(self.depth))
        with m.If(seen):
            m.d.sync += [
                self.o.eq(slots[read]),
                read.eq(read + 1),
                self.running.eq(1),
            ]
        return m


class GearedInputs(wiring.Component):
    """Every channel's sampler words through one :class:`WordGearbox`, then first-edge encoding.

    Base class of the board input blocks (:class:`~.phy_ice40.ICE40DDRInputs`,
    :class:`~.phy_ecp5.ECP5GearboxInputs`), which implement :meth:`sampler`. A board's top level
    builds one per tagger and hands :attr:`phys` to the Tagger (``phys=``): they are the
    per-channel PHYs (``WordEdges`` with ``fine_bits`` and ``latency``), fed from here, so this
    component must be added to the design too.

    Parameters
    ----------
    channels : int
        N.
    sample_bits : int
        Fp: the sampler gives ``2**Fp`` samples per fast cycle.
    ratio : int
        R, fast over ``sync``, a power of 2.
    latency : int
        The PHY latency to declare (``sync`` cycles from the bin's cycle to the report; derived
        in each subclass).
    members : dict
        The subclass's ports (pins are not ports: raw pins are given to the constructor).
    fast, elastic, depth :
        As for :class:`WordGearbox`.

    Attributes
    ----------
    fine_bits : int
        ``Fp + log2(R)``.
    phys : list of WordEdges
        One PHY per channel.
    gearbox : WordGearbox
    fast_word : Signal(N * 2**Fp)
        The sampler's fast-domain register (what :meth:`sampler` returns), for logic in the
        fast domain that reads the samples before the crossing (the ULX3S's fast herald path).
    """

    def __init__(self, channels, sample_bits, ratio, *, latency, members, fast="fast",
                 elastic=False, depth=8):
        if not isinstance(ratio, int) or ratio < 2 or ratio & (ratio - 1):
            raise ValueError(f"ratio must be a power of 2 of at least 2, not {ratio!r}")
        self.channels = channels
        self.sample_bits = sample_bits
        fine_bits = sample_bits + ratio.bit_length() - 1
        if getattr(self, "fine_bits", fine_bits) != fine_bits:
            raise ValueError(f"{type(self).__name__}.fine_bits is {self.fine_bits}, but "
                             f"{2 ** sample_bits} samples x {ratio} make {fine_bits}")
        self.fine_bits = fine_bits
        self.latency = latency
        self.fast = fast
        # One write enable copy per channel (elastic: WordGearbox's `lanes`).
        self.gearbox = WordGearbox(channels * 2 ** sample_bits, ratio, fast=fast,
                                   elastic=elastic, depth=depth,
                                   lanes=channels if elastic else 1)
        self.phys = []
        for _ in range(channels):
            phy = WordEdges(self.fine_bits)
            phy.latency = latency
            self.phys.append(phy)
        self.fast_word = Signal(channels * 2 ** sample_bits, name="fast_word")
        super().__init__(members)

    @classmethod
    def channel_count(cls, ports, channels, sim):
        """N from the constructor's ``ports`` (hardware) or ``channels`` (``sim=True``)."""
        if sim:
            if channels is None:
                raise ValueError(f"{cls.__name__}(sim=True) needs channels")
            return channels
        if not ports:
            raise ValueError(f"{cls.__name__} needs ports unless sim=True")
        return len(ports)

    def sampler(self, m):
        """Add the sampling logic to ``m``; return the fast-domain register (``N * 2**Fp``
        bits: channel ``c``'s samples from bit ``c * 2**Fp``, the earliest lowest) that feeds
        the gearbox."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        m.submodules.gearbox = gearbox = self.gearbox
        word = self.sampler(m)
        m.d.comb += [gearbox.i.eq(word), self.fast_word.eq(word)]
        s, r = 2 ** self.sample_bits, gearbox.ratio
        fast_width = self.channels * s
        for c, phy in enumerate(self.phys):
            # Fast word j of the group holds channel c's samples at bits j * fast_width + c * s.
            m.d.comb += phy.word.eq(Cat(
                gearbox.o[j * fast_width + c * s:j * fast_width + (c + 1) * s]
                for j in range(r)))
        return m
