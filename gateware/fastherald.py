"""Fast herald path: ``early`` rules decided in the sampling clock domain (the ULX3S's ``sclk``).

The core runs at a quarter of the sampling clock and its herald pins come three core edges
after its input registers, behind the elastic crossing: 112.5-151.25 ns pin to pin on the ULX3S
(docs/boards.md, "Where the ULX3S's cycles go"). :class:`FastHerald` decides the same ``early``
rules from the sampler's own words, in the sampling domain, and drives the herald pins of the
rules it can decide exactly as the core does; the core still makes every record and counter.

It reuses the core's blocks under :class:`~amaranth.hdl.DomainRenamer`, with ``F = 2`` (4
samples a word) instead of the core's ``F = 4`` (16 samples a core cycle): the input stage
(edge choice, enable and run, non-extending dead time, all in bins), the coincidence unit and
the herald generator's ``early`` decision. Windows, dead times and rules are defined at bin
level (docs/semantics.md), so the same events give the same firings at either ``F``, as long
as the fast path sees exactly the core's events: the core's PHY reports only the first rising
and the first falling edge of each 16-sample group (a core cycle's 4 words, cut where the
gearbox's ``phase`` starts a group), so the fast path keeps per channel a flag "an edge of
this kind was already seen in this group", set by the raw edge whether or not the input stage
accepts it (with ``BOTH``, one flag for either kind: the core takes the group's earlier edge).

Pipeline in the fast domain (5 ns a stage at 200 MHz), from the sampler's fabric word register:
edge reports (registered), the input stage's register, the coincidence unit's state with its
per-cycle outputs registered for the herald generator, the registered firings, the pin
register: the pin is high after the 5th fast edge following the word register's.

A pin is driven by the fast path only while :attr:`fast` says it is exactly equivalent to the
core (:func:`heraldry.host.config.fast_herald_pins` is the same rule for the host): every rule
mapped to the pin (with a non-zero ``require`` mask) is ``early``, and every enabled channel
reads its pin (no test signal), has delay 0 and (with roles) is a detector without gate.
Otherwise the pin is the core's herald. The pulse lasts ``4 * herald_width`` fast cycles (the
core's ``herald_width`` core cycles); a firing while high restarts it, as in the core.

Clock crossings: ``config`` is quasi-static (changed only while stopped): it is registered in
``sync`` and used in the fast domain without synchroniser, like the core's own configuration.
``run`` and ``clear`` pass through two-flop synchronisers (a one-cycle ``clear`` in ``sync``
lasts four fast cycles, so a level synchroniser catches it). Around a start or stop of ``run``
the two paths gate different samples: the core applies ``run`` to a group when it reaches the
input stage, 2-4 core cycles after the samples (the crossing), the fast path to a word about
two fast cycles after its samples (the synchroniser). Events within about 80 ns of a run edge
may therefore herald on the pin but not in the records, or the other way round; in between,
pins and records agree event for event (``tests/gateware/test_fastherald.py``).
"""

from amaranth.hdl import C, Cat, DomainRenamer, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from ..protocol import (HERALD_WIDTH_BITS, Edge, Role, Source, config_layout)
from .channel import InputStage
from .coincidence import CoincidenceUnit, HeraldGenerator

__all__ = ["FastHerald", "fast_pin_mask"]

#: Fine bits of the fast path: one word of 4 samples a fast cycle.
FINE_BITS = 2


def fast_pin_mask(m, config, channels, rules, *, roles=False, gates=False):
    """Combinational mask (``rules`` bits) of the pins the fast path may drive, from a
    ``config_layout`` value; the gateware twin of
    :func:`heraldry.host.config.fast_herald_pins`. ``roles``: the core honours
    ``gates.role`` (roles or gates build); ``gates``: it honours ``gates.gate_width`` too."""
    channel_ok = []
    for c in range(channels):
        ch = config.channel[c]
        ok = (ch.delay == 0) & (ch.source == Source.PIN)
        if roles:
            ok = ok & (config.gates.role[c] == Role.DETECTOR)
        if gates:
            ok = ok & (config.gates.gate_width[c] == 0)
        channel_ok.append(~ch.enable | ok)
    channels_ok = Cat(channel_ok).all()
    mask = Signal(rules, name="fast_pin_mask")
    for p in range(rules):
        blocked = Cat((config.herald_pin[r] == p) & (config.herald_mask[r] != 0)
                      & config.herald_exact[r] for r in range(rules)).any()
        m.d.comb += mask[p].eq(channels_ok & ~blocked)
    return mask


class FastHerald(wiring.Component):
    """Herald pins of ``early`` rules from the sampler's words, in the fast domain.

    Parameters
    ----------
    channels, rules : int
        N and R, as the core's (R herald pins).
    domain : str
        The fast (sampling) clock domain, 4 samples a cycle, 4 cycles per ``sync`` cycle.
    roles, gates : bool
        As the core honours ``config.gates`` (``TaggerCore(references=...)`` /
        ``TaggerCore(gates=...)``): roles, and gate widths, then count in :attr:`fast`.

    Members
    -------
    word : In(4 * N)
        Fast domain: the sampler's fabric word register (``GearedInputs.fast_word``), channel
        ``c``'s 4 samples from bit ``4c``, the earliest lowest.
    phase : In(4)
        Fast domain: the gearbox's one-hot group position of ``word`` (``WordGearbox.phase``).
    config : In(config_layout(N, R))
        ``sync``: the core's configuration (quasi-static).
    run, clear : In(1)
        ``sync``: the core's run gate and clear strobe.
    core_herald : In(R)
        The core's herald pins.
    herald : Out(R)
        The pins: the fast path's where :attr:`fast` is set, else the core's.
    fast : Out(R)
        ``sync``, registered: the pins the fast path drives.
    fast_herald : Out(R)
        Fast domain: the fast path's own pins, whatever :attr:`fast` says.

    Attributes
    ----------
    stages : list of InputStage
        Per channel the input stage (``F = 2``, in the fast domain): its ``event`` and ``time``
        (fine part; the coarse part is 0) are the events the fast path takes.
    LATENCY : int
        Fast edges from the word register's edge to the pin register's edge (5).
    """

    LATENCY = 5

    def __init__(self, channels, rules, *, domain="sclk", roles=False, gates=False):
        self.channels = channels
        self.rules = rules
        self.domain = domain
        self.roles = bool(roles) or bool(gates)
        self.gates = bool(gates)
        self.stages = [InputStage(FINE_BITS, 0) for _ in range(channels)]
        super().__init__({
            "word":        In(4 * channels),
            "phase":       In(4),
            "config":      In(config_layout(channels, rules),
                              init={"herald_pin": list(range(rules))}),
            "run":         In(1),
            "clear":       In(1),
            "core_herald": In(rules),
            "herald":      Out(rules),
            "fast":        Out(rules),
            "fast_herald": Out(rules),
        })

    def elaborate(self, platform):
        m = Module()
        n, r, f = self.channels, self.rules, FINE_BITS
        fast = m.d[self.domain]
        rename = DomainRenamer({"sync": self.domain})

        # Quasi-static configuration, registered in sync (the fast domain reads it without
        # synchroniser: it changes only while stopped).
        cfg = Signal(config_layout(n, r), init={"herald_pin": list(range(r))})
        m.d.sync += cfg.eq(self.config)
        m.d.sync += self.fast.eq(fast_pin_mask(m, cfg, n, r, roles=self.roles,
                                               gates=self.gates))
        width_bits = HERALD_WIDTH_BITS + 2
        pulse_left = Signal(width_bits)          # 4 * herald_width - 1 fast cycles after the 1st
        on_pin = [Signal(r, name=f"on_pin{p}") for p in range(r)]
        m.d.sync += [
            pulse_left.eq(Mux(cfg.herald_width != 0, Cat(C(3, 2), cfg.herald_width - 1), 0)),
            *(on_pin[p].eq(Cat(cfg.herald_pin[k] == p for k in range(r))) for p in range(r)),
        ]

        run = Signal()
        clear = Signal()
        m.submodules.run_sync = FFSynchronizer(self.run, run, o_domain=self.domain)
        m.submodules.clear_sync = FFSynchronizer(self.clear, clear, o_domain=self.domain)

        # Stage 1: each channel's first rising and falling edge of its word, unless the group
        # already had one (the core's PHY reports only the group's first of each kind).
        group_start = self.phase[0]
        stages = []
        for c in range(n):
            word = self.word[4 * c:4 * c + 4]
            last = Signal(name=f"last{c}")
            fast += last.eq(word[3])
            previous = Cat(last, word[:3])
            rises = Signal(4, name=f"rises{c}")
            falls = Signal(4, name=f"falls{c}")
            m.d.comb += [rises.eq(word & ~previous), falls.eq(~word & previous)]
            rise_seen = Signal(name=f"rise_seen{c}")
            fall_seen = Signal(name=f"fall_seen{c}")
            seen_r = Mux(group_start, 0, rise_seen)
            seen_f = Mux(group_start, 0, fall_seen)
            fast += [rise_seen.eq(seen_r | rises.any()), fall_seen.eq(seen_f | falls.any())]
            both = cfg.channel[c].edge == Edge.BOTH
            block_r = Mux(both, seen_r | seen_f, seen_r)
            block_f = Mux(both, seen_r | seen_f, seen_f)

            stage = self.stages[c]
            m.submodules[f"input{c}"] = rename(stage)
            fast += [
                stage.phy.rise.eq(rises.any() & ~block_r),
                stage.phy.fall.eq(falls.any() & ~block_f),
            ]
            # First set bit (the earliest sample): the last assignment wins.
            for i in reversed(range(4)):
                with m.If(rises[i]):
                    fast += stage.phy.rise_fine.eq(i)
                with m.If(falls[i]):
                    fast += stage.phy.fall_fine.eq(i)
            # Stage 2: the input stage's register. Its `now` only feeds the coarse part of
            # the times, which nothing here uses (windows and rules look at fine positions).
            m.d.comb += [
                stage.config.eq(cfg.channel[c]),
                stage.now.eq(0),
                stage.run.eq(run),
                stage.clear.eq(clear),
            ]
            stages.append(stage)

        # Stage 3: the window; its per-cycle view is registered for the herald decision.
        m.submodules.coincidence = coinc = rename(CoincidenceUnit(n, f))
        events = Cat(s.event for s in stages)
        for c, s in enumerate(stages):
            m.d.comb += coinc.times[c].eq(s.time)
        m.d.comb += [
            coinc.events.eq(events),
            coinc.ref.eq(0),
            coinc.window.eq(cfg.window),
            coinc.clear.eq(clear),
        ]
        events_q = Signal(n)
        join_q = Signal(n)
        prev_q = Signal(n)
        fines_q = [Signal(f, name=f"fine_q{c}") for c in range(n)]
        clear_q = Signal()
        fast += [
            events_q.eq(Mux(clear, 0, events)),
            join_q.eq(coinc.join),
            prev_q.eq(coinc.prev_pattern),
            clear_q.eq(clear),
            *(q.eq(s.time[:f]) for q, s in zip(fines_q, stages)),
        ]

        # Stage 4: every early rule's decision, registered. Exact rules are given a mask of 0
        # (never fires): a pin with one is not driven by this path.
        m.submodules.heralds = heralds = rename(HeraldGenerator(n, r, f))
        for c in range(n):
            m.d.comb += heralds.times[c].eq(fines_q[c])
        m.d.comb += [
            heralds.events.eq(events_q),
            heralds.ref.eq(0),
            heralds.join.eq(join_q),
            heralds.prev_pattern.eq(prev_q),
            heralds.closed.eq(0),
            *(heralds.herald_mask[k].eq(Mux(cfg.herald_exact[k], 0, cfg.herald_mask[k]))
              for k in range(r)),
            heralds.herald_veto.eq(cfg.herald_veto),
            heralds.herald_exact.eq(0),
            heralds.clear.eq(clear_q),
        ]
        fire = Signal(r)
        fast += fire.eq(Mux(clear_q, 0, heralds.fire))

        # Stage 5: the pins, 4 * herald_width fast cycles a pulse, restarted by a firing.
        for p in range(r):
            hit = (fire & on_pin[p]).any()
            remaining = Signal(width_bits, name=f"remaining{p}")
            with m.If(clear):
                fast += [remaining.eq(0), self.fast_herald[p].eq(0)]
            with m.Elif(hit):
                fast += [self.fast_herald[p].eq(cfg.herald_width != 0),
                         remaining.eq(pulse_left)]
            with m.Elif(remaining != 0):
                fast += remaining.eq(remaining - 1)
            with m.Else():
                fast += self.fast_herald[p].eq(0)
            m.d.comb += self.herald[p].eq(Mux(self.fast[p], self.fast_herald[p],
                                              self.core_herald[p]))
        return m
