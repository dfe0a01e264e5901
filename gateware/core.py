"""The tagger core: every block from the pins to the record stream, in one clock domain.

Data flow (docs/architecture.md)::

    pins -> PHY -> [test-signal mux] -> input stage -> delay line -> coincidence unit + heralds
                                                                   -> merger -> records
                                                                   -> counters
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out

from ..protocol import (COARSE_BITS, COUNTER_BITS, CounterMap, Role, Source, config_layout,
                        record_layout)
from .channel import InputStage
from .coincidence import CoincidenceUnit, HeraldGenerator
from .counters import Counters
from .delay import DelayLine
from .gates import GateUnit
from .merger import Merger
from .phy import GenericPHY, PHYSignature
from .pipe import StreamRegister
from .streamfilter import StreamFilter
from .testsignal import TestSignal

__all__ = ["TaggerCore"]


class TaggerCore(wiring.Component):
    """N-channel time tagger with coincidence counters, herald outputs and a merged record stream.

    Parameters
    ----------
    channels : int
        N inputs, 1..8.
    rules : int
        Herald rules (and herald output pins).
    phy : class
        PHY component class (``GenericPHY`` by default); instantiated once per channel with no
        arguments, it must have ``pin: In(1)`` and ``phy: Out(PHYSignature(phy.fine_bits))``,
        and class attributes ``fine_bits`` and ``latency``.
    phys : list of PHY components, optional
        Pre-built PHYs, one per channel, for PHYs that need their raw pin or extra clocks
        (vendor PHYs built by a board's top level). They must share ``fine_bits`` and
        ``latency``; ``phy`` is then ignored and ``pins`` is not connected (the board wires the
        pins into the PHYs).
    fifo_depth : int
        Merger FIFO depth in bundles (one bundle = everything that happened in one cycle).
    delay_depth : int
        Events each delay line holds.
    counter_init : int
        Reset value of ``ref = now - latency``, the core's time reference (tests start near a
        wrap with it); ``now`` itself starts ``latency`` higher.
    test_signal : bool
        Include the test-signal generator (default). Without it (small FPGAs: it is ~1000
        iCE40 LUTs at 2 channels) a channel whose source is not ``PIN`` sees no events.
    stream_filter : bool
        Include the stream filter (default; docs/semantics.md, "Stream filters"): per channel
        ``config.stream`` selects which events become tags. Without it every event is streamed,
        ``config.stream`` is ignored and the ``filtered``/``filter_dropped`` counters read 0.
    stream_hold : int
        The stream filter's slots (``heraldry.model.STREAM_HOLD``), >= 1.
    herald_stage : bool
        Select each herald record's time and pattern in a cycle of their own, one cycle after
        the firing (``HeraldGenerator(record_stage=True)``, ``Merger(herald_late=True)``; the
        ULX3S's 8-channel critical path ran through that selection). The records, pins and
        latency are the same either way; off, it saves ``N * (N + F) + R * N`` flip-flops
        (both boards build with it: on the iCEBreaker it costs 30 logic cells and gives
        icetime its margin back).
    gates : bool
        Include channel roles, the sync (attempt clock), per-channel gates and sync/reference
        markers (``GateUnit``; docs/semantics.md, "Sync, gates and reference markers"). The
        records are then ``record_layout(F, gates=True)`` (herald records with ``attempt`` and
        ``offset``). Without it (default) ``config.gates`` is ignored: every channel is a
        detector without gate, and the ``gated_out`` counters stay 0.
    gate_stage : bool
        A register stage between the delay lines and what takes their outputs (the gate unit
        with ``gates``, else the register in front of the coincidence unit): the delay lines'
        memory read and due compare, and the gate unit's decision, then have a cycle each. The
        path through both into a channel's ``counted`` register was the ULX3S's 8-channel
        critical one with gates (21.92 ns of 20). Every record, count and time is the same
        (``ref`` and ``latency`` move with it); the price is one more cycle of ``latency``, so
        of herald latency. Off by default.
    references : bool
        Without ``gates``: include the reference role alone (no sync, no gates, no attempt
        clock). A channel whose ``config.gates.role`` is ``REFERENCE`` has every event streamed
        as a tag and counted in its singles, never in a window (a PPS or divided 10 MHz input
        for a two-node link, docs/sync.md); any other role is a detector, and the rest of
        ``config.gates`` is ignored. Records keep ``record_layout(F)``. Implied by ``gates``.

    Members
    -------
    pins : In(N)
        Detector inputs, asynchronous (synchronised in the PHY).
    config : In(config_layout(N, R))
        Configuration; change only while stopped (``run`` low and the pipeline drained). Its
        initial value is all zeros but ``herald_pin``: rule r on pin r.
    run : In(1)
        Run gate, sampled by the input stages only (docs/architecture.md, "Run gate").
    clear : In(1)
        Strobe, while stopped: zero every counter, forget the open window, empty the delay lines,
        re-seed the test signal. ``busy`` is high while the counter memory is being cleared.
    records : Out(stream.Signature(record_layout(F)))
        The merged record stream.
    counter_addr : In(range(CounterMap.size)), counter_data : Out(COUNTER_BITS)
        Counter read port, data valid one cycle after the address.
    herald : Out(R)
        Herald output pins.
    now : Out(COARSE_BITS)
        The coarse counter.
    ref : Out(COARSE_BITS)
        ``now - latency``: the delayed coarse time of this cycle (the merger's ``ref``), against
        which the wire encoder unwraps record times.
    idle : Out(1)
        The merger holds nothing (``Merger.idle``), nor does the stream filter (held tags).

    Attributes
    ----------
    latency : int
        Cycles from the cycle after an edge's sampling clock edge to the cycle its event reaches
        the coincidence unit with zero delay (``phy.latency + PIPELINE``, one more with
        ``gate_stage``): an event of bin ``b`` (zero delay) reaches the coincidence unit,
        heralds, merger and counters in the cycle where ``now == b + latency``.
    PIPELINE : int
        2: the input-stage register and the register behind the delay lines.
    clear_next : Signal or None
        None (default): every block takes ``clear``. Set before elaboration to the value
        ``clear`` takes at the next edge (the :class:`~.top.Tagger` sets
        ``RegisterFile.clear_next``): each block then takes a register of its own loaded from
        it (``clear_copies``), high in the same cycles as ``clear``, on a short net to its
        block. One register fanned out to every block was the start of the ULX3S's 8-channel
        critical path (4.3 ns of routing to its first LUT). The board build keeps the copies
        apart (``boards.build.YOSYS_AFTER_READ``): Yosys would merge identical registers.
    clear_copies : dict
        After elaboration with ``clear_next``: block name -> its ``clear`` register.
    """

    PIPELINE = 2

    def __init__(self, channels=4, rules=2, *, phy=GenericPHY, phys=None, fifo_depth=256,
                 delay_depth=16, counter_init=0, test_signal=True, gates=False,
                 references=False, stream_filter=True, stream_hold=2, herald_stage=True,
                 gate_stage=False):
        if phys is not None:
            phys = list(phys)
            if len(phys) != channels:
                raise ValueError(f"phys must hold {channels} PHYs, not {len(phys)}")
            if len({(p.fine_bits, p.latency) for p in phys}) != 1:
                raise ValueError("all PHYs in phys must have the same fine_bits and latency")
            phy = phys[0]
        self.channels = channels
        self.rules = rules
        self.phy_cls = phy
        self.phys = phys
        self.fine_bits = phy.fine_bits
        self.fifo_depth = fifo_depth
        self.delay_depth = delay_depth
        self.counter_init = counter_init
        self.test_signal = bool(test_signal)
        self.gates = bool(gates)
        self.references = bool(references) or self.gates
        self.stream_filter = bool(stream_filter)
        self.herald_stage = bool(herald_stage)
        if stream_hold < 1:
            raise ValueError(f"stream_hold must be >= 1, not {stream_hold}")
        self.stream_hold = stream_hold if self.stream_filter else 0
        self.gate_stage = bool(gate_stage)
        self.latency = phy.latency + self.PIPELINE + self.gate_stage
        self.map = CounterMap(channels, rules)
        self.clear_next = None
        self.clear_copies = {}
        super().__init__({
            "pins":         In(channels),
            "config":       In(config_layout(channels, rules),
                               init={"herald_pin": list(range(rules))}),
            "run":          In(1),
            "clear":        In(1),
            "records":      Out(stream.Signature(record_layout(self.fine_bits, self.gates))),
            "counter_addr": In(range(self.map.size)),
            "counter_data": Out(COUNTER_BITS),
            "busy":         Out(1),
            "herald":       Out(rules),
            "now":          Out(COARSE_BITS),
            "ref":          Out(COARSE_BITS),
            "idle":         Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n, r, f = self.channels, self.rules, self.fine_bits
        cfg = self.config

        def clear_for(block):
            """The `clear` strobe for `block`: `clear` itself, or with `clear_next` a register
            of its own (the same value in the same cycle, on a short net to the block)."""
            if self.clear_next is None:
                return self.clear
            copy = Signal(name=f"clear_copy_{block}")
            m.d.sync += copy.eq(self.clear_next)
            self.clear_copies[block] = copy
            return copy

        # `now` starts `latency` ahead so that `ref` (the time every block downstream of the
        # input stages works in) starts at `counter_init` and does not wrap right after reset:
        # device time 0 is the reset, and the encoder's epoch counter starts at 0.
        now = Signal(COARSE_BITS, init=(self.counter_init + self.latency) % 2 ** COARSE_BITS)
        m.d.sync += now.eq(now + 1)
        m.d.comb += self.now.eq(now)
        # Coarse (delayed) time of the events that reach the coincidence unit in this cycle.
        # A counter of its own rather than `now - latency`: no subtractor in front of its users.
        ref = Signal(COARSE_BITS, init=self.counter_init % 2 ** COARSE_BITS)
        m.d.sync += ref.eq(ref + 1)
        m.d.comb += self.ref.eq(ref)

        if self.test_signal:
            m.submodules.test_signal = test = TestSignal(n)
            m.d.comb += [
                test.config.eq(cfg.test),
                test.bsm.eq(cfg.test_bsm),
                test.clear.eq(clear_for("test_signal")),
            ]
            for c in range(n):
                m.d.comb += test.sources[c].eq(cfg.channel[c].source)

        delayed = []
        for c in range(n):
            if self.phys is None:
                phy = self.phy_cls()
                m.d.comb += phy.pin.eq(self.pins[c])
            else:
                phy = self.phys[c]
            m.submodules[f"phy{c}"] = phy

            # The test signal replaces the PHY's output, so its events are timestamped alike.
            source = PHYSignature(f).create(path=(f"source{c}",))
            with m.If(cfg.channel[c].source == Source.PIN):
                m.d.comb += [
                    source.rise.eq(phy.phy.rise), source.rise_fine.eq(phy.phy.rise_fine),
                    source.fall.eq(phy.phy.fall), source.fall_fine.eq(phy.phy.fall_fine),
                ]
            if self.test_signal:
                with m.Else():
                    m.d.comb += source.rise.eq(test.rise[c])

            stage = InputStage(f, phy.latency)
            m.submodules[f"input{c}"] = stage
            m.d.comb += [
                stage.phy.rise.eq(source.rise), stage.phy.rise_fine.eq(source.rise_fine),
                stage.phy.fall.eq(source.fall), stage.phy.fall_fine.eq(source.fall_fine),
                stage.config.eq(cfg.channel[c]),
                stage.now.eq(now),
                stage.run.eq(self.run),
                stage.clear.eq(clear_for(f"input{c}")),
            ]

            line = DelayLine(f, self.delay_depth)
            m.submodules[f"delay{c}"] = line
            m.d.comb += [
                line.i.event.eq(stage.event),
                line.i.time.eq(stage.time),
                line.delay.eq(cfg.channel[c].delay),
                line.now.eq(now),
                line.clear.eq(clear_for(f"delay{c}")),
            ]
            delayed.append(line)

        # Pipeline register between the delay lines and everything downstream (coincidence unit,
        # heralds, merger, counters): the delay line's memory read and its due/collision logic
        # then have a cycle of their own. Only the fine bits travel: every event leaving the
        # lines in one cycle has the same coarse time, which is `ref` one cycle later.
        events = Signal(n)
        overflow = Signal(n)
        fines = [Signal(f, name=f"fine{c}") for c in range(n)]
        clear = clear_for("core")
        line_events = Cat(line.o.event for line in delayed)
        line_fines = [line.o.time[:f] for line in delayed]
        if self.gate_stage:
            # The lines' outputs registered (gate_stage): no clear needed, a line's output is
            # already 0 in a clear cycle, and what this register holds in a clear cycle is
            # discarded below as the lines' outputs would be.
            staged = Signal(n, name="staged_events")
            staged_fines = [Signal(f, name=f"staged_fine{c}") for c in range(n)]
            m.d.sync += staged.eq(line_events)
            m.d.sync += [staged_fines[c].eq(line_fines[c]) for c in range(n)]
            line_events, line_fines = staged, staged_fines
        # With gates: `events` are the detector events kept by their gates (windows, heralds);
        # `streamed` adds the markers (merger), `counted` the sync and reference events
        # (singles counters), `gated` the events gated out. The gate unit works at the delay
        # lines' outputs so that its decision is registered here with the events.
        streamed = Signal(n)
        counted = Signal(n)
        gated = Signal(n)
        if self.gates:
            m.submodules.gates = gate_unit = GateUnit(n, f)
            m.d.comb += [
                gate_unit.events.eq(line_events),
                gate_unit.config.eq(cfg.gates),
                gate_unit.clear.eq(clear_for("gates")),
            ]
            for c in range(n):
                m.d.comb += gate_unit.fine[c].eq(line_fines[c])
            clock = {name: Signal.like(getattr(gate_unit, name), name=f"clock_{name}")
                     for name in ("attempt", "base", "synced", "sync_now", "sync_fine")}
            m.d.sync += [
                events.eq(Mux(clear, 0, gate_unit.detect)),
                streamed.eq(Mux(clear, 0, gate_unit.stream)),
                counted.eq(Mux(clear, 0, gate_unit.count)),
                gated.eq(Mux(clear, 0, gate_unit.gated_out)),
                *(sig.eq(getattr(gate_unit, name)) for name, sig in clock.items()),
            ]
        elif self.references:
            # The reference role alone: a reference channel's events are streamed and counted,
            # never in windows (the gate unit's `stream` and `count` without sync or gates).
            is_reference = Cat(cfg.gates.role[c] == Role.REFERENCE for c in range(n))
            m.d.sync += [
                events.eq(Mux(clear, 0, line_events & ~is_reference)),
                streamed.eq(Mux(clear, 0, line_events)),
            ]
            m.d.comb += counted.eq(streamed)
        else:
            m.d.sync += events.eq(Mux(clear, 0, line_events))
            m.d.comb += [streamed.eq(events), counted.eq(events)]
        m.d.sync += overflow.eq(Mux(clear, 0, Cat(line.overflow for line in delayed)))
        times = []
        for c in range(n):
            m.d.sync += fines[c].eq(line_fines[c])
            times.append(Cat(fines[c], ref))

        m.submodules.coincidence = coinc = CoincidenceUnit(n, f)
        m.submodules.heralds = heralds = HeraldGenerator(n, r, f,
                                                         record_stage=self.herald_stage)
        for c in range(n):
            m.d.comb += [
                coinc.times[c].eq(times[c]),
                heralds.times[c].eq(times[c]),
            ]
        m.d.comb += [
            coinc.events.eq(events),
            coinc.ref.eq(ref),
            coinc.window.eq(cfg.window),
            coinc.clear.eq(clear_for("coincidence")),
            heralds.events.eq(events),
            heralds.ref.eq(ref),
            heralds.join.eq(coinc.join),
            heralds.prev_pattern.eq(coinc.prev_pattern),
            heralds.closed.eq(coinc.closed),
            heralds.closed_pattern.eq(coinc.closed_pattern),
            heralds.herald_mask.eq(cfg.herald_mask),
            heralds.herald_veto.eq(cfg.herald_veto),
            heralds.herald_exact.eq(cfg.herald_exact),
            heralds.herald_pin.eq(cfg.herald_pin),
            heralds.herald_width.eq(cfg.herald_width),
            heralds.clear.eq(clear_for("heralds")),
            self.herald.eq(heralds.herald),
        ]

        # The stream filter between the coincidence unit and the merger: it passes every
        # detector event or holds it until its window is known to be coincident; markers (not
        # in windows) pass.
        to_merger = Signal(n)
        filter_idle = Signal(init=1)
        if self.stream_filter:
            m.submodules.stream_filter = stream_filter = StreamFilter(n, f, self.stream_hold)
            for c in range(n):
                m.d.comb += stream_filter.times[c].eq(times[c])
            m.d.comb += [
                stream_filter.events.eq(events),
                stream_filter.ref.eq(ref),
                stream_filter.join.eq(coinc.join),
                stream_filter.prev_pattern.eq(coinc.prev_pattern),
                stream_filter.was_open.eq(coinc.was_open),
                stream_filter.last_cycle.eq(coinc.last_cycle),
                stream_filter.opened_last_cycle.eq(coinc.opened_last_cycle),
                stream_filter.mode.eq(cfg.stream),
                stream_filter.clear.eq(clear_for("stream_filter")),
                to_merger.eq(stream_filter.stream | (streamed & ~events)),
                filter_idle.eq(stream_filter.idle),
            ]
            # The filter's counts reach the counters and the merger's FILTER_FULL counters a
            # cycle later: the path from the window's flags through the filter's decision into
            # a 32-bit adder was the ULX3S's critical one (47.4 MHz of 50).
            filtered = Signal.like(stream_filter.filtered)
            filter_dropped = Signal.like(stream_filter.dropped)
            m.d.sync += [
                filtered.eq(Mux(clear, 0, stream_filter.filtered)),
                filter_dropped.eq(Mux(clear, 0, stream_filter.dropped)),
            ]
        else:
            m.d.comb += to_merger.eq(streamed)

        m.submodules.merger = merger = Merger(n, r, f, depth=self.fifo_depth, gates=self.gates,
                                              hold=self.stream_hold,
                                              herald_late=self.herald_stage)
        # A registered stage between the merger's record multiplexer and whoever takes the
        # records (the wire encoder's time arithmetic), with no loss of throughput.
        m.submodules.record_register = out = StreamRegister(record_layout(f, self.gates),
                                                            skid=False)
        for c in range(n):
            m.d.comb += merger.times[c].eq(times[c])
        if self.gates:
            m.d.comb += [getattr(merger, name).eq(sig) for name, sig in clock.items()]
        m.d.comb += [
            merger.events.eq(to_merger),
            merger.ref.eq(ref),
            merger.closed.eq(coinc.closed),
            merger.closed_pattern.eq(coinc.closed_pattern),
            merger.closed_t0.eq(coinc.closed_t0),
            merger.coincidence_record_mask.eq(cfg.coincidence_record_mask),
            merger.herald_fire.eq(heralds.fire),
            # Every rule's own completing time and pattern: rules firing in one cycle may
            # differ in both once F > 0.
            merger.herald_time.eq(heralds.herald_time),
            merger.herald_pattern.eq(heralds.herald_pattern),
            merger.herald_exact.eq(cfg.herald_exact),
            merger.delay_overflow.eq(overflow),
            *([merger.held.eq(stream_filter.held),
               merger.held_channel.eq(stream_filter.held_channel),
               merger.held_offset.eq(stream_filter.held_offset),
               merger.filter_dropped.eq(filter_dropped)] if self.stream_filter else []),
            merger.clear.eq(clear_for("merger")),
            self.idle.eq(merger.idle & ~out.busy & filter_idle),
        ]
        wiring.connect(m, merger.o, out.i)
        wiring.connect(m, out.o, wiring.flipped(self.records))

        m.submodules.counters = counters = Counters(n, r, hold=self.stream_hold, gates=self.gates)
        # The herald counters count a rule's firing a cycle later: the path from the window's
        # state through an exact rule's decision at the window's close into a 32-bit adder was
        # the iCEBreaker's critical one (icetime 23.87 MHz of 24). Zero in a clear cycle, so a
        # firing registered before a clear is not counted after it.
        herald_fire = Signal.like(heralds.fire)
        m.d.sync += herald_fire.eq(Mux(clear, 0, heralds.fire))
        if self.stream_filter:
            m.d.comb += [
                counters.filtered.eq(filtered),
                counters.filter_dropped.eq(filter_dropped),
                counters.held_dropped.eq(merger.held_dropped),
            ]
        m.d.comb += [
            counters.singles.eq(counted),
            counters.gated_out.eq(gated),
            counters.closed.eq(coinc.closed),
            counters.closed_pattern.eq(coinc.closed_pattern),
            counters.herald_fire.eq(herald_fire),
            counters.delay_dropped.eq(overflow),
            counters.merger_dropped.eq(merger.merger_dropped),
            counters.herald_dropped.eq(merger.herald_dropped),
            counters.coincidence_dropped.eq(merger.coincidence_dropped),
            counters.clear.eq(clear_for("counters")),
            counters.addr.eq(self.counter_addr),
            self.counter_data.eq(counters.data),
            self.busy.eq(counters.busy),
        ]
        return m
