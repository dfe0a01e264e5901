"""Channel roles, the sync (attempt clock) and per-channel gates (``TaggerCore(gates=True)``).

The semantics are ``heraldry.model``'s (docs/semantics.md, "Sync, gates and reference
markers"): the sync channel's delayed events are the sync edges; a detector event at delayed
time ``t`` is kept iff a sync edge ``s <= t`` exists and ``offset <= t - s < offset + width`` for
the latest one.
"""

from amaranth.hdl import Array, C, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..protocol import ATTEMPT_BITS, GATE_BITS, MAX_CHANNELS, Role, gates_layout
from .arith import at_most_each, saturating_sub

__all__ = ["GateUnit"]


class GateUnit(wiring.Component):
    """Splits each cycle's delayed events by role and gate, and keeps the attempt clock.

    It sits at the delay lines' outputs, in front of the register that feeds the coincidence
    unit, heralds, merger and counters; every output is combinational from this cycle's events
    and registers of the unit, and the core registers them with the events.

    Per cycle (all channels' events share one coarse time; ``fine[c]`` is channel c's fine
    time, F bits):

    * ``sync_now``: the sync channel (the lowest channel whose role is ``SYNC``) has an event,
      at fine time ``sync_fine``.
    * A detector event at fine ``i`` is *after* this cycle's sync edge iff ``sync_now`` and
      ``sync_fine <= i``; its offset is then ``i - sync_fine``, else ``base + i`` (``base``: bins
      from the latest earlier sync edge to this cycle's first bin, saturating at
      ``2**GATE_BITS - 1``), and it has no sync edge at all if neither this cycle's nor an
      earlier one (``synced``) precedes it.
    * ``detect``: detector events kept by their gate (``gate_width`` 0: no gate, all kept):
      they form windows, fire heralds and are streamed. ``gated_out``: the detector events not
      kept.
    * ``stream``: the events streamed as tags: ``detect``, every reference event and the sync
      event when its attempt number is a multiple of ``marker_every`` (0: never).
    * ``count``: the singles counters' increments: ``detect``, and every sync and reference
      event (the sync channel's counter counts the attempts).
    * ``attempt``: sync edges before this cycle (since ``clear``), modulo ``2**ATTEMPT_BITS``;
      with ``base``, ``synced``, ``sync_now`` and ``sync_fine`` it places any time of this cycle
      in the attempt clock (``attempt_offset``).

    The gate test costs the event path a ``2**F``-way bit select: per channel, the registered
    flags ``ok[i]`` say whether an event at fine ``i`` after an earlier sync edge is in the gate;
    they follow from count-downs of the bins until the gate opens and closes (``open_in``,
    ``close_in``), reloaded from the configuration in the cycle after each sync edge (from
    registers: no carry chain behind the delay lines' memory read). An event after this cycle's
    sync edge (offset ``< 2**F``), or in the cycle after one (offset ``< 2**(F + 1)``), uses
    flags of the configuration alone.

    Parameters
    ----------
    channels : int
    fine_bits : int

    Members
    -------
    events : In(N), fine : In(ArrayLayout(F, N))
        This cycle's events (the delay lines' outputs) and their fine times.
    config : In(gates_layout(N))
        Roles, gates and ``marker_every``; change only while stopped.
    clear : In(1)
        Forget every sync edge, zero the attempt count; this cycle's events are ignored.
    detect, gated_out, stream, count : Out(N)
    attempt : Out(ATTEMPT_BITS), base : Out(GATE_BITS), synced, sync_now : Out(1),
    sync_fine : Out(F)
    """

    def __init__(self, channels, fine_bits=0):
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}, not {channels}")
        self.channels = channels
        self.fine_bits = fine_bits
        super().__init__({
            "events":    In(channels),
            "fine":      In(data.ArrayLayout(unsigned(fine_bits), channels)),
            "config":    In(gates_layout(channels)),
            "clear":     In(1),
            "detect":    Out(channels),
            "gated_out": Out(channels),
            "stream":    Out(channels),
            "count":     Out(channels),
            "attempt":   Out(ATTEMPT_BITS),
            "base":      Out(GATE_BITS),
            "synced":    Out(1),
            "sync_now":  Out(1),
            "sync_fine": Out(fine_bits),
        })

    def elaborate(self, platform):
        m = Module()
        n, f = self.channels, self.fine_bits
        step = 1 << f
        cfg = self.config
        top = 2**GATE_BITS - 1

        events = Signal(n)
        m.d.comb += events.eq(Mux(self.clear, 0, self.events))
        is_sync = Signal(n)
        is_detector = Signal(n)
        is_reference = Signal(n)
        # Only the lowest channel with the role SYNC is the sync (the host allows one).
        m.d.comb += [
            is_sync.eq(Cat((cfg.role[c] == Role.SYNC)
                           & ~Cat(cfg.role[d] == Role.SYNC for d in range(c)).any()
                           if c else cfg.role[0] == Role.SYNC for c in range(n))),
            is_detector.eq(Cat(cfg.role[c] == Role.DETECTOR for c in range(n))),
            is_reference.eq(Cat(cfg.role[c] == Role.REFERENCE for c in range(n))),
        ]
        sync_events = events & is_sync
        sync_now = sync_events.any()
        sync_fine = C(0, f)
        for c in range(n):
            sync_fine = sync_fine | Mux(is_sync[c], self.fine[c], 0)
        m.d.comb += [self.sync_now.eq(sync_now), self.sync_fine.eq(sync_fine)]

        # The attempt clock.
        attempt = Signal(ATTEMPT_BITS)
        base = Signal(GATE_BITS)
        synced = Signal()
        m.d.comb += [self.attempt.eq(attempt), self.base.eq(base), self.synced.eq(synced)]
        grown = Signal(GATE_BITS + 1)
        m.d.comb += grown.eq(base + step)
        with m.If(self.clear):
            m.d.sync += [attempt.eq(0), base.eq(top), synced.eq(0)]
        with m.Elif(sync_now):
            m.d.sync += [attempt.eq(attempt + 1), base.eq(step - sync_fine), synced.eq(1)]
        with m.Else():
            m.d.sync += base.eq(Mux(grown > top, top, grown))

        # Sync markers: the edge whose attempt number (attempt + 1) is a multiple of N.
        since_marker = Signal(len(cfg.marker_every))
        marker = Signal()
        m.d.comb += marker.eq((cfg.marker_every != 0) & (since_marker == cfg.marker_every - 1))
        with m.If(self.clear):
            m.d.sync += since_marker.eq(0)
        with m.Elif(sync_now):
            m.d.sync += since_marker.eq(Mux(marker, 0, since_marker + 1))

        # The latest sync edge, one cycle on: `pend` is high in the cycle after a sync edge,
        # with `pend_base` = 2**F - its fine time, the bins from it to this cycle's first bin.
        # The gate count-downs are reloaded from these registers (a carry chain behind a
        # register, not behind the delay lines' memory read), and in that one cycle an event at
        # fine i is at offset pend_base + i < 2**(F + 1), looked up in flags of the
        # configuration.
        pend = Signal()
        pend_base = Signal(f + 1)
        with m.If(self.clear):
            m.d.sync += pend.eq(0)
        with m.Else():
            m.d.sync += [pend.eq(sync_now), pend_base.eq(step - sync_fine)]

        detect = []
        for c in range(n):
            offset, width = cfg.gate_offset[c], cfg.gate_width[c]
            fine = self.fine[c]
            # Configuration-derived flags, registered (config changes only while stopped):
            # near[d]: offset d (< 2**(F + 1)) is in the gate.
            gated = Signal(name=f"gated{c}")
            end = Signal(GATE_BITS + 1, name=f"end{c}")
            near = Signal(2 * step, name=f"near{c}")
            m.d.sync += [
                gated.eq(width != 0),
                end.eq(offset + width),
                near.eq(at_most_each(offset, f + 1) & ~at_most_each(end, f + 1)),
            ]
            # Bins from this cycle's first bin until the gate opens / closes (0: already),
            # counted from the latest sync edge before the previous cycle, and the flags of each
            # fine position of this cycle.
            open_in = Signal(GATE_BITS + 1, name=f"open_in{c}")
            close_in = Signal(GATE_BITS + 1, name=f"close_in{c}")
            ok = Signal(step, name=f"ok{c}")

            def flags(o, e):
                # i >= o (o <= i) and i < e (not e <= i)
                return at_most_each(o, f) & ~at_most_each(e, f)

            # The cycle after this one starts pend_base + 2**F bins after the pending sync edge.
            ahead = Signal(f + 2, name=f"ahead{c}")
            m.d.comb += ahead.eq(pend_base + step)
            reload_open = Signal(GATE_BITS + 1, name=f"reload_open{c}")
            reload_close = Signal(GATE_BITS + 1, name=f"reload_close{c}")
            m.d.comb += [
                reload_open.eq(Mux(offset > ahead, offset - ahead, 0)),
                reload_close.eq(Mux(end > ahead, end - ahead, 0)),
            ]
            next_open = Signal(GATE_BITS + 1, name=f"next_open{c}")
            next_close = Signal(GATE_BITS + 1, name=f"next_close{c}")
            m.d.comb += [
                next_open.eq(Mux(pend, reload_open, saturating_sub(open_in, step))),
                next_close.eq(Mux(pend, reload_close, saturating_sub(close_in, step))),
            ]
            with m.If(self.clear):
                m.d.sync += [open_in.eq(0), close_in.eq(0), ok.eq(0)]
            with m.Else():
                m.d.sync += [open_in.eq(next_open), close_in.eq(next_close),
                             ok.eq(flags(next_open, next_close))]

            if f:
                after = sync_now & (sync_fine <= fine)
                earlier = Mux(pend, near.bit_select((pend_base + fine)[:f + 1], 1),
                              ok.bit_select(fine, 1))
                in_gate = Mux(after, near.bit_select((fine - sync_fine)[:f], 1),
                              synced & earlier)
            else:
                in_gate = Mux(sync_now, near[0], synced & Mux(pend, near[1], ok[0]))
            detect.append(~gated | in_gate)

        keep = Cat(detect)
        m.d.comb += [
            self.detect.eq(events & is_detector & keep),
            self.gated_out.eq(events & is_detector & ~keep),
            self.stream.eq(self.detect | (events & is_reference)
                           | Mux(marker, sync_events, 0)),
            self.count.eq(self.detect | (events & (is_sync | is_reference))),
        ]
        return m


def attempt_offset(attempt, base, synced, sync_now, sync_fine, fine, fine_bits):
    """``(attempt, offset)`` of the time at fine position ``fine`` of a cycle whose attempt
    clock the :class:`GateUnit` gave as ``attempt``, ``base``, ``synced``, ``sync_now`` and
    ``sync_fine`` (values, e.g. from a FIFO): the model's ``sync_position``. Offsets saturate at
    ``2**GATE_BITS - 1``, which is also the offset of a time before any sync edge."""
    top = 2**GATE_BITS - 1
    after = sync_now & (sync_fine <= fine)
    later = base + fine
    offset = Mux(after, (fine - sync_fine)[:max(fine_bits, 1)],
                 Mux(~synced | (later > top), top, later))
    return (attempt + after)[:ATTEMPT_BITS], offset[:GATE_BITS]
