"""Fast herald path: ``early`` rules decided in the sampling clock domain (the ULX3S's ``sclk``).

The core runs at a quarter of the sampling clock and its herald pins come three core edges
after its input registers, behind the elastic crossing: 112.5-151.25 ns pin to pin on the ULX3S
(docs/boards.md, "Where the ULX3S's cycles go"). :class:`FastHerald` decides the same ``early``
rules from the sampler's own words, in the sampling domain, and drives the herald pins of the
rules it can decide exactly as the core does; the core still makes every record and counter.

The same rules as the core's blocks, rebuilt for 5 ns a cycle, with ``F = 2`` (4 samples a
word) instead of the core's ``F = 4`` (16 samples a core cycle). Windows, dead times and rules
are defined at bin level (docs/semantics.md), so the same events give the same firings at either
``F``, as long as the fast path sees exactly the core's events: the core's PHY reports only the
first rising and the first falling edge of each 16-sample group (a core cycle's 4 words, cut
where the gearbox's ``phase`` starts a group), so the fast path keeps per channel a flag "an
edge of this kind was already seen in this group", set by the raw edge whether or not it is
accepted (with ``BOTH``, one flag for either kind: the core takes the group's earlier edge).

Why not the core's ``InputStage``, ``CoincidenceUnit`` and ``HeraldGenerator`` under
``DomainRenamer``: that was the first build, and it reached 68.9 MHz of 200 in ``sclk`` on the
ULX3S (96 MHz alone): their state updates run through adders and comparators (the dead time
and the window's bins left, counted down by 2**F bins a cycle, with flags recomputed from the
new value) behind the cycle's events, which 20 ns allow and 5 ns do not. Here the count-downs
are whole cycles plus a constant remainder, with their "0, 1, 2 cycles left" flags as look-ahead
flip-flops, and the state after an accept or a window opening at each fine position is
precomputed in ``sync`` from the configuration: the events only select among registered
values. The window uses that ``W >= 16`` bins (the core's minimum at ``F = 4``): a window's
flags are constant for the two cycles after the one it opens in, so its count-down is loaded a
cycle late. ``tests/gateware/test_fastherald.py`` checks every stage against the reference
model and the core's records.

Pipeline in the fast domain from the sampler's fabric word register: the selected edge (edge
kind, first of the group), the input stage (enable, ``run``, dead time), the events again with
per fine position whether any channel has one (so that the window's opening decision starts
from 4 registered bits, not from the 4N positions through their OR), the window's per-cycle
view, each event's window pattern before and after it, the firings per pin, the pin register:
the pin is high after the 7th fast edge following the word register's (:attr:`LATENCY`).

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

from amaranth.hdl import C, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from ..protocol import (DEAD_TIME_BITS, HERALD_WIDTH_BITS, WINDOW_BITS, Edge, Role, Source,
                        config_layout)

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
    events : Signal(N)
        Fast domain: per channel, an event the fast path took (its input stage's output).
    fines : list of Signal(2)
        Their fine positions in the word (0 earliest), valid with ``events``.
    LATENCY : int
        Fast edges from the word register's edge to the pin register's edge (7).
    """

    LATENCY = 7

    def __init__(self, channels, rules, *, domain="sclk", roles=False, gates=False):
        self.channels = channels
        self.rules = rules
        self.domain = domain
        self.roles = bool(roles) or bool(gates)
        self.gates = bool(gates)
        self.events = Signal(channels, name="events")
        self.fines = [Signal(FINE_BITS, name=f"fine{c}") for c in range(channels)]
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

    def attach(self, m, inputs, core):
        """Drive every input of this path in ``m``: ``word`` and ``phase`` from the input block
        ``inputs`` (a :class:`~.gearbox.GearedInputs`), ``config``, ``run``, ``clear`` and
        ``core_herald`` from ``core`` (the :class:`~.core.TaggerCore` it feeds)."""
        m.d.comb += [
            self.word.eq(inputs.fast_word),
            self.phase.eq(inputs.gearbox.phase),
            self.config.eq(core.config),
            self.run.eq(core.run),
            self.clear.eq(core.clear),
            self.core_herald.eq(core.herald),
        ]

    def elaborate(self, platform):
        m = Module()
        n, r, f = self.channels, self.rules, FINE_BITS
        fast = m.d[self.domain]

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

        # Stage 1: per channel the edge the core's input stage would select from this word
        # (InputStage's edge choice: RISING the first rise, FALLING the first fall, BOTH the
        # earlier, a rise on a tie), unless the group already had one of that kind (the core's
        # PHY reports only the group's first rise and first fall), as a one-hot position.
        # The group flags are kept as the next word sees them: cleared after a group's last
        # word (`phase` is a ring, one step a cycle; after a reset both start over), so that
        # the word's own `phase` is not in the candidate's logic.
        group_end = self.phase[3]
        candidate = [Signal(4, name=f"candidate{c}") for c in range(n)]
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
            seen_r, seen_f = rise_seen, fall_seen
            fast += [rise_seen.eq(Mux(group_end, 0, seen_r | rises.any())),
                     fall_seen.eq(Mux(group_end, 0, seen_f | falls.any()))]

            def first(bits):
                return Cat(bits[i] & ~bits[:i].any() if i else bits[0] for i in range(4))

            # The channel's enable and `run` are applied here (a stage before the dead time, so
            # that the dead time's loop does not wait for them), from a register of their own.
            gate = Signal(name=f"gate{c}")
            fast += gate.eq(cfg.channel[c].enable & run & ~clear)
            with m.If(~gate):
                fast += candidate[c].eq(0)
            with m.Else():
                with m.Switch(cfg.channel[c].edge):
                    with m.Case(Edge.RISING):
                        fast += candidate[c].eq(Mux(seen_r, 0, first(rises)))
                    with m.Case(Edge.FALLING):
                        fast += candidate[c].eq(Mux(seen_f, 0, first(falls)))
                    with m.Case(Edge.BOTH):
                        fast += candidate[c].eq(Mux(seen_r | seen_f, 0, first(rises | falls)))
                    with m.Default():
                        fast += candidate[c].eq(0)

        # Stage 2: the non-extending dead time, in bins (InputStage's rule:
        # an event at fine position i is accepted iff i >= `rem`, the dead time left from this
        # cycle's first bin; after accepting one at i, max(0, dead_time + i - 4) is left from
        # the next cycle's first bin, else 4 fewer). Built for 5 ns a cycle: `rem` is counted as
        # `dq` whole cycles plus a remainder `dr`, with dq == 0 and dq == 1 held as look-ahead
        # flip-flops, and the state after an accept at each position is precomputed in sync
        # from the configuration: the event only selects among registered values.
        events = Signal(n)
        positions = [Signal(4, name=f"position{c}") for c in range(n)]
        dq_bits = DEAD_TIME_BITS - 1
        for c in range(n):
            ch = cfg.channel[c]
            ok = Signal(4, init=0b1111, name=f"ok{c}")
            dq = Signal(dq_bits, name=f"dq{c}")
            dr = Signal(2, name=f"dr{c}")
            dq_is = Signal(2, init=0b01, name=f"dq_is{c}")     # dq == 0, dq == 1
            acc_dq = [Signal(dq_bits, name=f"accept_dq{c}_{i}") for i in range(4)]
            acc_dr = [Signal(2, name=f"accept_dr{c}_{i}") for i in range(4)]
            acc_is = [Signal(2, name=f"accept_dq_is{c}_{i}") for i in range(4)]
            acc_ok = [Signal(4, name=f"accept_ok{c}_{i}") for i in range(4)]
            for i in range(4):
                left = Signal(DEAD_TIME_BITS + 1, name=f"accept_left{c}_{i}")
                m.d.comb += left.eq(Mux(ch.dead_time + i > 4, ch.dead_time + i - 4, 0))
                m.d.sync += [
                    acc_dq[i].eq(left[2:]), acc_dr[i].eq(left[:2]),
                    acc_is[i].eq(Cat(left[2:] == 0, left[2:] == 1)),
                    acc_ok[i].eq(Cat(left <= j for j in range(4))),
                ]
            # The candidate is one-hot: accepted at position i iff candidate[i] & ok[i].
            accept = Signal(name=f"accept{c}")
            m.d.comb += accept.eq((candidate[c] & ok).any())
            fast += [events[c].eq(accept), positions[c].eq(candidate[c] & ok)]
            with m.If(clear):
                fast += [ok.eq(0b1111), dq_is.eq(0b01), dq.eq(0), dr.eq(0)]
            with m.Elif(accept):
                for i in range(4):
                    with m.If(candidate[c][i]):
                        fast += [dq.eq(acc_dq[i]), dr.eq(acc_dr[i]), dq_is.eq(acc_is[i]),
                                 ok.eq(acc_ok[i])]
            with m.Else():
                # 4 bins fewer: none left once dq was 0; the remainder once it was 1.
                fast += [
                    dq.eq(Mux(dq_is[0], 0, dq - 1)),
                    dq_is.eq(Cat(dq_is[0] | dq_is[1], dq == 2)),
                    ok.eq(Cat(dq_is[0] | (dq_is[1] & (dr <= j)) for j in range(4))),
                ]
        for c in range(n):
            m.d.comb += [self.events[c].eq(events[c]),
                         self.fines[c].eq(Cat(positions[c][1] | positions[c][3],
                                              positions[c][2] | positions[c][3]))]

        # Stage 3: the events again, and per fine position whether any channel has one (the
        # window's opening decision then starts from these 4 bits and `inside`, not from the
        # 4N positions through their OR).
        events_d = Signal(n)
        positions_d = [Signal(4, name=f"position_d{c}") for c in range(n)]
        occupied_any = Signal(4)
        fast += [
            events_d.eq(events),
            *(positions_d[c].eq(positions[c]) for c in range(n)),
            occupied_any.eq(Cat(Cat(positions[c][i] for c in range(n)).any() for i in range(4))),
        ]
        fines = []
        for c in range(n):
            fine = Signal(2, name=f"fine_d{c}")
            m.d.comb += fine.eq(Cat(positions_d[c][1] | positions_d[c][3],
                                    positions_d[c][2] | positions_d[c][3]))
            fines.append(fine)

        # Stage 4: the window, cut as CoincidenceUnit cuts it (t0 the first event when none is
        # open, every event before t0 + W joins), but built for 5 ns a cycle: W >= 16 bins (the
        # core's minimum at F = 4) lets a window's first two cycles after the one it opens in
        # use constant flags, so the bins left are loaded a cycle late from precomputed values
        # and counted down as `q` full cycles plus a constant remainder `rem` (left = 4q + rem),
        # with q == 0, 1, 2 held as look-ahead flip-flops: no adder or comparator between this
        # cycle's events and the next cycle's flags. `ending`: this cycle holds the open
        # window's last bin.
        is_open = Signal()
        acc = Signal(n)                        # the open window's pattern (0 while none)
        ending = Signal()
        opened = Signal()                      # the window opened in the previous cycle
        least = Signal(4)                      # ... at this one-hot fine position
        q = Signal(WINDOW_BITS)
        rem = Signal(2)
        q_is = Signal(3)                       # q == 0, 1, 2
        # Static, from the configuration (registered in sync): per opening position i, the
        # state two cycles after the opening cycle (left = W + i - 8 >= 8 bins).
        load_q = [Signal(WINDOW_BITS, name=f"load_q{i}") for i in range(4)]
        load_rem = [Signal(2, name=f"load_rem{i}") for i in range(4)]
        load_q2 = Signal(4)
        for i in range(4):
            left2 = cfg.window + i - 8
            m.d.sync += [load_q[i].eq(left2[2:]), load_rem[i].eq(left2[:2]),
                         load_q2[i].eq(left2[2:] == 2)]

        # `inside[i]`: a window is open and an event at position i of this cycle is in it
        # (is_open & above, kept as one register); `closing`: it ends with this cycle (is_open &
        # ending). `positions[c]` is one-hot while channel c has an event, else 0.
        inside = Signal(4)
        closing = Signal()
        join = Signal(n)
        newcomer = Signal(n)
        m.d.comb += [
            join.eq(Cat((positions_d[c] & inside).any() for c in range(n))),
            newcomer.eq(Cat((positions_d[c] & ~inside).any() for c in range(n))),
        ]
        # Newcomers by fine position, and the earliest position (one-hot).
        occupied = Cat(occupied_any[i] & ~inside[i] for i in range(4))
        first = Cat(occupied[i] & ~occupied[:i].any() if i else occupied[0] for i in range(4))
        opening = occupied.any()
        fast += least.eq(first)
        # Every register's next value depends on this cycle's events through `opening` (and
        # `join`) alone; the count-down runs whatever the events (its value matters only
        # from the cycle after the one following an opening, where it is loaded).
        fast += [
            is_open.eq(~clear & (opening | (is_open & ~ending))),
            opened.eq(~clear & opening),
            acc.eq(Mux(clear, 0, Mux(opening, newcomer, Mux(closing, 0, acc | join)))),
        ]
        # A new window has W + i bins left in its cycle, >= 12 in the next and >= 8 in the
        # one after: all flags set, not ending, until the count-down is loaded.
        next_above = Signal(4)
        next_ending = Signal()
        with m.If(opened):
            for i in range(4):
                with m.If(least[i]):
                    fast += [q.eq(load_q[i]), rem.eq(load_rem[i]),
                             q_is.eq(Cat(C(0, 2), load_q2[i]))]
            m.d.comb += [next_above.eq(0b1111), next_ending.eq(0)]
        with m.Else():
            # left - 4 next cycle: q - 1, the same remainder.
            fast += [q.eq(q - 1), q_is.eq(Cat(q_is[1], q_is[2], q == 3))]
            m.d.comb += [
                next_above.eq(Cat(~(q_is[0] | q_is[1]) | (rem > i) for i in range(4))),
                next_ending.eq(q_is[1] | (q_is[2] & (rem == 0))),
            ]
        staying = is_open & ~ending
        fast += [
            ending.eq(Mux(opening, 0, next_ending)),
            inside.eq(Mux(clear, 0, Mux(opening, 0b1111, Mux(staying, next_above, 0)))),
            closing.eq(~clear & ~opening & staying & next_ending),
        ]

        events_q = Signal(n)
        join_q = Signal(n)
        prev_q = Signal(n)
        fines_q = [Signal(f, name=f"fine_q{c}") for c in range(n)]
        fast += [
            events_q.eq(events_d),
            join_q.eq(join),
            prev_q.eq(acc),
            *(q_.eq(fine) for q_, fine in zip(fines_q, fines)),
        ]

        # Stage 5: per event, its window's pattern before this cycle and right after the
        # event (with every event of its window at the same time), as HeraldGenerator has them.
        before = [Signal(n, name=f"before{c}") for c in range(n)]
        after = [Signal(n, name=f"after{c}") for c in range(n)]
        events_qq = Signal(n)
        newcomer_q = events_q & ~join_q
        for c in range(n):
            base = Mux(join_q[c], prev_q, 0)
            same = Mux(join_q[c], join_q, newcomer_q) & Cat(fines_q[j] <= fines_q[c]
                                                             for j in range(n))
            fast += [before[c].eq(base), after[c].eq(base | same)]
        fast += events_qq.eq(Mux(clear, 0, events_q))

        # Stage 6: every early rule's decision, registered (HeraldGenerator's early rule: an
        # event after which the pattern contains `require` when it did not before, with no
        # `veto` channel in it). Exact rules get a mask of 0 (never fire): a pin with one is
        # not driven by this path.
        masks = [Signal(n, name=f"mask{k}") for k in range(r)]
        m.d.sync += [masks[k].eq(Mux(cfg.herald_exact[k], 0, cfg.herald_mask[k]))
                     for k in range(r)]
        fires = [Cat(events_qq[c] & ((before[c] & masks[k]) != masks[k])
                     & ((after[c] & masks[k]) == masks[k]) & ((after[c] & cfg.herald_veto[k]) == 0)
                     for c in range(n)) for k in range(r)]             # per rule, by event
        # Registered per pin (the firings of its rules, by event), so that the pin's stage
        # has only their OR before the pulse's registers (which sit by the pin's I/O).
        fire = [Signal(n, name=f"fire_pin{p}") for p in range(r)]
        for p in range(r):
            fast += fire[p].eq(Cat(Cat(fires[k][c] & on_pin[p][k] for k in range(r)).any()
                                   for c in range(n)) & Mux(clear, 0, (1 << n) - 1))

        # Stage 7: the pins, 4 * herald_width fast cycles a pulse, restarted by a firing (the
        # firings by event are OR'ed here).
        for p in range(r):
            hit = fire[p].any()
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
