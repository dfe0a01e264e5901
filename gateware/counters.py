"""Hardware counters behind the core's counter read port (``protocol.CounterMap``).

Every counter is ``COUNTER_BITS`` wide and wraps modulo ``2**COUNTER_BITS``; it never saturates.
The host reads counters often enough (at most one increment per cycle each, so more than
``2**32`` cycles between wraps) and extends them to 64 bits from successive differences.
"""

from amaranth.hdl import MemoryData, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from ..protocol import COUNTER_BITS, MAX_CHANNELS, MAX_RULES, CounterMap
from .streamfilter import OVER_BITS

__all__ = ["Counters"]


class Counters(wiring.Component):
    """All counters of ``CounterMap(channels, rules)`` with their increment inputs and read port.

    Each increment input bit adds one to its counter in the cycle it is high. The pattern
    counters (one per pattern ``1 .. 2**N - 1``) live in a memory of ``2**N`` rows indexed by the
    pattern (row 0 unused), updated by a two-stage read-modify-write pipeline with forwarding of
    the previous write, so a close may arrive every cycle, with any patterns. The other counters
    are registers.

    Parameters
    ----------
    channels : int
        ``N`` (1 .. ``MAX_CHANNELS``).
    rules : int
        ``R`` (1 .. ``MAX_RULES``).

    Members
    -------
    singles : In(N)
        Events entering the coincidence unit this cycle.
    closed : In(1), closed_pattern : In(N)
        A window with this pattern closed (the coincidence unit's outputs).
    herald_fire : In(R)
        Herald rule firings.
    delay_dropped, merger_dropped : In(N)
        Events lost to a full delay buffer / tags lost to a full merger FIFO.
    herald_dropped : In(R), coincidence_dropped : In(1)
        Herald / coincidence records lost to a full merger FIFO.
    gated_out : In(N)
        Detector events outside their gate. Counted with ``gates`` (a core with gates); without,
        the ``gated_out`` counters are not built (they read 0).
    filtered : In(ArrayLayout(streamfilter.OVER_BITS + 1, N)), filter_dropped :
    In(ArrayLayout(streamfilter.OVER_BITS, N)), held_dropped : In(ArrayLayout(range(hold + 1), N))
        With ``hold`` (a core with the stream filter): per channel, events the filter withheld
        and lost (``StreamFilter``), and released tags the merger dropped (added to
        ``merger_dropped``); several per cycle. Without, the ``filtered`` and
        ``filter_dropped`` counters are not built (they read 0).
    clear : In(1)
        Zeroes every counter. Register counters are 0 from the next cycle. The pattern memory is
        swept: ``busy`` is high for the ``2**N`` cycles after the ``clear`` cycle, one row zeroed
        per cycle. Increments presented in the ``clear`` cycle are not counted, nor are closes
        presented while ``busy`` (``clear`` is only used while stopped; wait for ``busy`` to fall
        before starting a run or reading pattern counters).
    busy : Out(1)
        The pattern-counter clear sweep is running.
    addr : In(range(CounterMap.size)), data : Out(COUNTER_BITS)
        Read port: ``data`` in cycle ``k + 1`` is counter ``addr`` (as set in cycle ``k``)
        counting every increment presented before cycle ``k``. Addresses outside the map read 0.

    Attributes
    ----------
    map : CounterMap
    registers : dict[int, Signal]
        Address -> register of every register counter (for test benches that start near a wrap).
    pattern_data : MemoryData
        The pattern counters' storage; row ``p`` is the counter of pattern ``p``.
    """

    def __init__(self, channels, rules, hold=0, gates=False):
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, not {channels}")
        if not 1 <= rules <= MAX_RULES:
            raise ValueError(f"rules must be 1..{MAX_RULES}, not {rules}")
        self.channels = channels
        self.rules = rules
        self.map = CounterMap(channels, rules)
        self.hold = hold
        self.gates = bool(gates)
        filter_members = {
            "filtered":       In(data.ArrayLayout(unsigned(OVER_BITS + 1), channels)),
            "filter_dropped": In(data.ArrayLayout(unsigned(OVER_BITS), channels)),
            "held_dropped":   In(data.ArrayLayout(range(hold + 1), channels)),
        } if hold else {}
        super().__init__(filter_members | {
            "singles":             In(channels),
            "closed":              In(1),
            "closed_pattern":      In(channels),
            "herald_fire":         In(rules),
            "delay_dropped":       In(channels),
            "merger_dropped":      In(channels),
            "herald_dropped":      In(rules),
            "coincidence_dropped": In(1),
            "gated_out":           In(channels),
            "clear":               In(1),
            "busy":                Out(1),
            "addr":                In(range(self.map.size)),
            "data":                Out(COUNTER_BITS),
        })
        self.registers = {}
        for name in ("singles", "heralds", "delay_dropped", "merger_dropped", "herald_dropped",
                     "coincidence_dropped") + (("gated_out",) if self.gates else ()) + (
                        ("filtered", "filter_dropped") if hold else ()):
            for index, address in enumerate(self.map.range(name)):
                self.registers[address] = Signal(COUNTER_BITS, name=f"{name}{index}")
        self.pattern_data = MemoryData(shape=COUNTER_BITS, depth=2 ** channels, init=[])

    def elaborate(self, platform):
        m = Module()
        n = self.channels
        cmap = self.map

        # Register counters.
        increments = {
            "singles": self.singles, "heralds": self.herald_fire,
            "delay_dropped": self.delay_dropped, "merger_dropped": self.merger_dropped,
            "herald_dropped": self.herald_dropped, "coincidence_dropped": self.coincidence_dropped,
        }
        if self.gates:
            increments["gated_out"] = self.gated_out
        if self.hold:
            increments["filtered"] = self.filtered
            increments["filter_dropped"] = self.filter_dropped
        for name, inc in increments.items():
            for index, address in enumerate(cmap.range(name)):
                counter = self.registers[address]
                step = inc[index]
                if self.hold and name == "merger_dropped":
                    # Released held tags dropped with their bundle, several in one cycle.
                    step = step + self.held_dropped[index]
                with m.If(self.clear):
                    m.d.sync += counter.eq(0)
                with m.Elif(step if len(step) == 1 else 1):
                    m.d.sync += counter.eq(counter + step)

        # Pattern counters.
        m.submodules.patterns = mem = memory.Memory(data=self.pattern_data)
        wr = mem.write_port()
        # The read-modify-write port is not transparent (block RAMs often are not); the write it
        # misses is forwarded below. The host port is, so a read sees the write of its cycle.
        rmw = mem.read_port()
        host = mem.read_port(transparent_for=(wr,))

        sweep = Signal(n)
        with m.If(self.clear):
            m.d.sync += [self.busy.eq(1), sweep.eq(0)]
        with m.Elif(self.busy):
            m.d.sync += sweep.eq(sweep + 1)
            with m.If(sweep == 2 ** n - 1):
                m.d.sync += self.busy.eq(0)

        # Stage 0: read the row of the closing pattern.
        valid1 = Signal()
        pattern1 = Signal(n)
        m.d.comb += rmw.addr.eq(self.closed_pattern)
        m.d.sync += [
            valid1.eq(self.closed & ~self.clear & ~self.busy),
            pattern1.eq(self.closed_pattern),
        ]

        # Stage 1: add one and write back. The row read in the previous cycle misses the write
        # made in that cycle (at most one, by stage 1 or the sweep); take it from `last_*`.
        last_en = Signal()
        last_addr = Signal(n)
        last_data = Signal(COUNTER_BITS)
        current = Mux(last_en & (last_addr == pattern1), last_data, rmw.data)
        with m.If(self.busy):
            m.d.comb += [wr.en.eq(1), wr.addr.eq(sweep), wr.data.eq(0)]
        with m.Else():
            m.d.comb += [
                wr.en.eq(valid1 & ~self.clear),
                wr.addr.eq(pattern1),
                wr.data.eq(current + 1),
            ]
        m.d.sync += [last_en.eq(wr.en), last_addr.eq(wr.addr), last_data.eq(wr.data)]

        # Read port: register counters through a registered mux, patterns through the memory's
        # synchronous port; both are one cycle behind `addr`.
        patterns = cmap.range("patterns")
        reg_data = Signal(COUNTER_BITS)
        from_memory = Signal()
        m.d.comb += host.addr.eq((self.addr - patterns.start + 1)[:n])
        m.d.sync += from_memory.eq((self.addr >= patterns.start) & (self.addr < patterns.stop))
        with m.Switch(self.addr):
            for address, counter in self.registers.items():
                with m.Case(address):
                    m.d.sync += reg_data.eq(counter)
            with m.Default():
                m.d.sync += reg_data.eq(0)
        m.d.comb += self.data.eq(Mux(from_memory, host.data, reg_data))

        return m
