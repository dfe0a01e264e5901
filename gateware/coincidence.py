"""Coincidence windows and herald rules (see ``docs/architecture.md``, section *Coincidence unit
and herald generator*).

Two components, wired side by side on the same per-cycle events:

* :class:`CoincidenceUnit` keeps the open window and says, per cycle, which of the cycle's events
  join it, the window pattern before and after them, and (registered) which window closed.
* :class:`HeraldGenerator` turns that per-cycle window view into herald firings (combinational,
  in the cycle of the completing events) and registered herald pins.

They are separate because the herald path is latency-critical (one clock edge from the events to
the pin) while the window state is not; the generator only needs the unit's combinational
``join`` and ``prev_pattern`` outputs.

Every time comparison is a difference modulo ``2**time_bits(fine_bits)``, so both blocks work
across the wrap of the coarse counter.
"""

from amaranth.hdl import Array, C, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..protocol import COARSE_BITS, HERALD_WIDTH_BITS, MAX_CHANNELS, MAX_RULES, WINDOW_BITS, \
    herald_pin_bits, time_bits
from .arith import above_each, at_most_step

__all__ = ["CoincidenceUnit", "HeraldGenerator"]


def _check(channels, rules=1, fine_bits=0):
    if not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"channels must be 1..{MAX_CHANNELS}, not {channels}")
    if not 1 <= rules <= MAX_RULES:
        raise ValueError(f"rules must be 1..{MAX_RULES}, not {rules}")
    if fine_bits < 0:
        raise ValueError(f"fine_bits must be >= 0, not {fine_bits}")


def _fine(time, fine_bits):
    return time[:fine_bits]


class CoincidenceUnit(wiring.Component):
    """The open coincidence window, advanced once per cycle.

    A window opens at the first event when none is open, with ``t0`` = that event's time; every
    event with ``t0 <= t < t0 + window`` joins it (sets its channel's bit of the pattern); the
    window closes once time reaches ``t0 + window``, whether or not an event arrives then, and
    events at ``t0 + window`` or later open the next window.

    Parameters
    ----------
    channels : int
        Number of channels ``N`` (1 .. ``MAX_CHANNELS``).
    fine_bits : int
        ``F``: bins per cycle are ``2**F``; timestamps are ``time_bits(F)`` wide. For ``F > 0``
        the window must be at least ``2**F`` bins; then at most one window closes per cycle, all
        events of a cycle that do not fit the open window fit one new window, and its ``t0`` is
        the earliest of their times.

    Members
    -------
    events : In(N)
        Channels with an event in this cycle (at most one event per channel per cycle).
    times : In(ArrayLayout(time_bits(F), N))
        Their timestamps (bins). The coarse part equals ``ref``; for ``F = 0`` the whole time does,
        so ``times`` is not used.
    ref : In(COARSE_BITS)
        Coarse (delayed) time of this cycle; increments by one every cycle. Lets windows close
        when no event arrives.
    window : In(WINDOW_BITS)
        Window length ``W`` in bins (``W >= 1``; ``W >= 2**F``). Change it only while stopped.
    clear : In(1)
        Drops the open window without reporting it; this cycle's events are ignored.
    prev_pattern : Out(N)
        Combinational: pattern of the window open at the start of this cycle, before this cycle's
        events; 0 if none is open (in particular when the events open a new window).
    join : Out(N)
        Combinational: events of this cycle that join the window of ``prev_pattern``. The others
        (``events & ~join``) open a new window in this cycle. For ``F = 0`` either all or none of
        a cycle's events join.
    pattern : Out(N)
        Combinational: pattern of the window that holds this cycle's latest events, including
        them (``prev_pattern | join`` if no new window opens, else ``events & ~join``); 0 if no
        window is open and no event arrives.
    closed : Out(1)
        Registered: one-cycle pulse per closed window, in the cycle after the cycle that holds
        the window's last bin ``t0 + W - 1``. For ``F = 0`` that is the cycle whose ``ref`` is
        ``t0 + W``. At most one close per cycle.
    closed_pattern : Out(N), closed_t0 : Out(time_bits(F))
        Registered, valid with ``closed``: the closed window's pattern and ``t0``.
    was_open : Out(1)
        A window is open at the start of this cycle (the one of ``prev_pattern``).
    last_cycle : Out(1)
        Valid with ``was_open``: that window has no bin after this cycle (this cycle holds its
        last bin ``t0 + W - 1``), unless events beyond it close it even earlier (``F > 0``).
    opened_last_cycle : Out(1)
        Combinational, valid when events open a new window in this cycle: its last bin is in
        this cycle (``W`` bins from its ``t0`` end within the cycle).

    Latency: ``prev_pattern``, ``join``, ``pattern`` are combinational from the inputs (0 cycles);
    ``closed*`` are registered (see above).
    """

    def __init__(self, channels, fine_bits=0):
        _check(channels, fine_bits=fine_bits)
        self.channels = channels
        self.fine_bits = fine_bits
        tb = time_bits(fine_bits)
        super().__init__({
            "events":         In(channels),
            "times":          In(data.ArrayLayout(unsigned(tb), channels)),
            "ref":            In(COARSE_BITS),
            "window":         In(WINDOW_BITS),
            "clear":          In(1),
            "prev_pattern":   Out(channels),
            "join":           Out(channels),
            "pattern":        Out(channels),
            "closed":         Out(1),
            "closed_pattern": Out(channels),
            "closed_t0":      Out(tb),
            "was_open":       Out(1),
            "last_cycle":     Out(1),
            "opened_last_cycle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n, f = self.channels, self.fine_bits
        tb = time_bits(f)

        is_open = Signal()
        t0 = Signal(tb)
        acc = Signal(n)          # pattern of the open window; kept 0 while none is open
        # Bins of the open window left from the first bin of this cycle on: t0 + W - Cat(0, ref).
        # While a window is open at the start of a cycle, left <= W. Every comparison is against
        # this short register instead of a time_bits-wide difference from t0 (a carry chain as
        # long as the timestamp): an event of this cycle at fine position i (its coarse time is
        # ref) is inside the window iff i < left, and the window has no bin left in the next
        # cycle iff left <= 2**F. Both comparisons are registered with `left` (flags `above[i]`
        # = left > i and `ending` = left <= 2**F), and the values a new window would start from
        # (W + i for each fine position i) are compared from the configuration alone, so the
        # cycle's events only select among precomputed results.
        left_bits = WINDOW_BITS + 1
        step = 1 << f
        left = Signal(left_bits)
        above = Signal(step)
        ending = Signal()

        def flags(value):
            """(above, ending) of a `left` value."""
            return above_each(value, f), at_most_step(value, f)

        events = Signal(n)
        m.d.comb += events.eq(Mux(self.clear, 0, self.events))

        if f == 0:
            # The window is dropped at the end of the cycle that holds its last bin, so a window
            # still open at the start of a cycle accepts every event of that cycle.
            m.d.comb += self.join.eq(Mux(is_open, events, 0))
            new_t0 = self.ref
            least_fine = C(0, 1)
        else:
            fits = Cat(above.bit_select(_fine(self.times[i], f), 1) for i in range(n))
            m.d.comb += self.join.eq(events & fits & Mux(is_open, (1 << n) - 1, 0))
            # The new window starts at the earliest event that does not fit the open one; all of
            # them share this cycle's coarse time.
            newcomer = events & ~self.join
            # The earliest newcomer, equal times to the lowest channel, as a one-hot selection:
            # every pairwise order comes from the fine times alone (not from `join`), so only
            # one AND-OR level follows `newcomer` (a chain of N compare-and-select stages was
            # on the ULX3S's critical path). No newcomer: the last fine position, as before.
            fine = [_fine(self.times[i], f) for i in range(n)]
            newcomer_first = Signal(n)
            m.d.comb += newcomer_first.eq(Cat(
                newcomer[i] & ~Cat(newcomer[j] & (fine[j] <= fine[i] if j < i
                                                  else fine[j] < fine[i])
                                   for j in range(n) if j != i).any()
                if n > 1 else newcomer[i]
                for i in range(n)))
            least = Mux(newcomer.any(), 0, (1 << f) - 1)
            for i in range(n):
                least = least | Mux(newcomer_first[i], fine[i], 0)
            least_fine = Signal(f)
            m.d.comb += least_fine.eq(least)
            new_t0 = Cat(least_fine, self.ref)

        # A window opened at fine position i starts with W + i bins left (this cycle's included);
        # one that carries on has `left`. Next cycle: 2**F fewer.
        opened_left = [Signal(left_bits, name=f"opened_left{i}") for i in range(step)]
        opened_ending = Signal(step)
        opened_next = [Signal(left_bits, name=f"opened_next{i}") for i in range(step)]
        opened_next_above = [Signal(step, name=f"opened_next_above{i}") for i in range(step)]
        opened_next_ending = Signal(step)
        for i in range(step):
            m.d.comb += [
                opened_left[i].eq(self.window + i),
                opened_ending[i].eq(at_most_step(opened_left[i], f)),
                opened_next[i].eq(opened_left[i] - step),
            ]
            a, e = flags(opened_next[i])
            m.d.comb += [opened_next_above[i].eq(a), opened_next_ending[i].eq(e)]
        carried_next = Signal(left_bits)
        m.d.comb += carried_next.eq(left - step)
        carried_next_above, carried_next_ending = flags(carried_next)

        new_events = events & ~self.join
        opening = new_events.any()
        m.d.comb += [
            self.was_open.eq(is_open),
            self.last_cycle.eq(ending),
        ]

        cur_open = is_open | opening
        cur_t0 = Signal(tb)
        cur_acc = Signal(n)
        m.d.comb += [
            cur_t0.eq(Mux(opening, new_t0, t0)),
            cur_acc.eq(Mux(opening, new_events, acc | self.join)),
            self.prev_pattern.eq(acc),
            self.pattern.eq(cur_acc),
        ]

        # The window after this cycle's events has no bin left in the next cycle once
        # t0 + W <= Cat(0, ref + 1), i.e. its `left` this cycle is <= 2**F.
        #
        # A value the new window's fine position selects (a table of 2**F entries): with F > 0
        # each channel's entry at its own fine time is looked up from the registered times and
        # the configuration alone, and the earliest newcomer's (one-hot) is OR'ed out, so the
        # cycle's events only drive one AND-OR level (looking the table up by `least_fine`, an
        # encoding of that selection, was on the 8-channel ULX3S's critical path). No newcomer:
        # 0 (every use is under `opening`, and `opened_last_cycle` is valid only then).
        def at_least_fine(table, width):
            if f == 0:
                return table[0]
            value = Signal(width)
            picked = 0
            for i in range(n):
                entry = Signal(width, name=f"entry{i}")
                m.d.comb += entry.eq(Array(table)[fine[i]])
                picked = picked | Mux(newcomer_first[i], entry, 0)
            m.d.comb += value.eq(picked)
            return value

        opened_ending_now = at_least_fine([opened_ending[i] for i in range(step)], 1)
        m.d.comb += self.opened_last_cycle.eq(opened_ending_now)
        expire = cur_open & Mux(opening, opened_ending_now, ending)
        next_left = Signal(left_bits)
        next_above = Signal(step)
        next_ending = Signal()
        m.d.comb += [
            next_left.eq(Mux(opening, at_least_fine(opened_next, left_bits), carried_next)),
            next_above.eq(Mux(opening, at_least_fine(opened_next_above, step),
                              carried_next_above)),
            next_ending.eq(Mux(opening,
                               at_least_fine([opened_next_ending[i] for i in range(step)], 1),
                               carried_next_ending)),
        ]
        update_left = [left.eq(next_left), above.eq(next_above), ending.eq(next_ending)]

        m.d.sync += self.closed.eq(0)
        with m.If(self.clear):
            m.d.sync += [is_open.eq(0), acc.eq(0)]
        if f > 0:
            # Events beyond the open window: it closes now, the new one (t0 above the old window's
            # last bin, in this cycle) cannot expire in this cycle because W >= 2**F.
            with m.Elif(opening & is_open):
                m.d.sync += [
                    self.closed.eq(1),
                    self.closed_pattern.eq(acc | self.join),
                    self.closed_t0.eq(t0),
                    t0.eq(new_t0),
                    acc.eq(new_events),
                    *update_left,
                ]
        with m.Elif(expire):
            m.d.sync += [
                self.closed.eq(1),
                self.closed_pattern.eq(cur_acc),
                self.closed_t0.eq(cur_t0),
                is_open.eq(0),
                acc.eq(0),
            ]
        with m.Else():
            m.d.sync += [is_open.eq(cur_open), t0.eq(cur_t0), acc.eq(cur_acc), *update_left]

        return m


class HeraldGenerator(wiring.Component):
    """Herald rules (require and veto masks, early or exact) and the herald pins they drive.

    The rules are those of ``heraldry.model.HeraldRule`` (docs/semantics.md, "Heralds").

    An **early** rule ``r`` decides in the cycle whose events make the pattern of their window
    contain ``herald_mask[r]`` (its ``require`` mask) when it did not before, so at most once per
    window, and fires then iff that pattern holds no channel of ``herald_veto[r]``. With ``F > 0``
    the completing event is the earliest event of the cycle after which the window's pattern
    contains the mask; events of the cycle at the same time count, later ones do not. A rule
    decides at most once per cycle even when a window closes and the next opens within the
    cycle: the completing event of the old window is on a channel of the mask, and that channel
    has no other event in the cycle to complete the new window. (So every candidate event of a
    cycle is in one window, and since a window's pattern only grows, the earliest candidate is
    free of veto channels iff some candidate is: the veto needs no earliest-event selection.)

    An **exact** rule (``herald_exact[r]`` set) fires in the cycle ``closed`` pulses for a window
    whose ``closed_pattern`` contains the mask and no veto channel. Its record's time is the
    first bin of that cycle, ``Cat(0, ref)`` (when it decided), and its pattern the closed one,
    which the merger takes from the close it travels with; ``herald_time[r]`` and
    ``herald_pattern[r]`` are meaningful for early rules only. A mask of 0 never fires.

    Parameters
    ----------
    channels : int
        Number of channels ``N``.
    rules : int
        Number of herald rules ``R`` (1 .. ``MAX_RULES``).
    fine_bits : int
        ``F``, as for :class:`CoincidenceUnit`.
    record_stage : bool
        Register each rule's candidates and the per-event patterns and time them out of a
        register: ``herald_time`` and ``herald_pattern`` are then valid one cycle *after*
        ``fire`` (for ``Merger(herald_late=True)``). The earliest-candidate selection and the
        pattern multiplexer get a cycle of their own (the ULX3S's critical path at 8 channels
        ran through them into the merger); ``fire`` and the pins are unchanged.

    Members
    -------
    events, times, ref : In
        The same per-cycle inputs as the :class:`CoincidenceUnit`'s.
    join, prev_pattern : In(N)
        The :class:`CoincidenceUnit`'s combinational outputs of the same name.
    closed, closed_pattern : In(1), In(N)
        The :class:`CoincidenceUnit`'s registered outputs of the same name (exact rules).
    herald_mask : In(ArrayLayout(N, R))
        Each rule's ``require`` mask.
    herald_veto : In(ArrayLayout(N, R))
        Each rule's ``veto`` mask.
    herald_exact : In(R)
        Bit r set: rule r is exact, else early.
    herald_pin : In(ArrayLayout(herald_pin_bits(R), R))
        The pin each rule drives (initially its own); the firings of rules sharing a pin are
        OR'ed.
    herald_width : In(HERALD_WIDTH_BITS)
        Pin pulse length in cycles (0: pins stay low).
    clear : In(1)
        Suppresses firing in this cycle and drops the pins at the next edge.
    fire : Out(R)
        Combinational: one-cycle pulse per firing, in the cycle the completing events are
        presented (early) or the cycle ``closed`` pulses (exact).
    herald_time : Out(ArrayLayout(time_bits(F), R))
        Combinational, valid with ``fire[r]`` (one cycle after it with ``record_stage``): time
        of rule r's completing event (``ref`` for ``F = 0``).
    herald_pattern : Out(ArrayLayout(N, R))
        Combinational, valid with ``fire[r]`` (one cycle after it with ``record_stage``): the
        window's pattern right after the completing event (including every event of the window
        at the same time).
    herald : Out(R)
        Registered pins. A firing in cycle ``c`` of a rule on pin p drives pin p high in cycles
        ``c + 1 .. c + herald_width``; a firing while high restarts the count.

    Latency: ``fire`` 0 cycles from ``events`` (early) or ``closed`` (exact); ``herald`` one
    clock edge later.
    """

    def __init__(self, channels, rules, fine_bits=0, record_stage=False):
        _check(channels, rules, fine_bits)
        self.channels = channels
        self.rules = rules
        self.fine_bits = fine_bits
        self.record_stage = bool(record_stage)
        tb = time_bits(fine_bits)
        super().__init__({
            "events":         In(channels),
            "times":          In(data.ArrayLayout(unsigned(tb), channels)),
            "ref":            In(COARSE_BITS),
            "join":           In(channels),
            "prev_pattern":   In(channels),
            "closed":         In(1),
            "closed_pattern": In(channels),
            "herald_mask":    In(data.ArrayLayout(unsigned(channels), rules)),
            "herald_veto":    In(data.ArrayLayout(unsigned(channels), rules)),
            "herald_exact":   In(rules),
            "herald_pin":     In(data.ArrayLayout(unsigned(herald_pin_bits(rules)), rules),
                                 init=list(range(rules))),
            "herald_width":   In(HERALD_WIDTH_BITS),
            "clear":          In(1),
            "fire":           Out(rules),
            "herald_time":    Out(data.ArrayLayout(unsigned(tb), rules)),
            "herald_pattern": Out(data.ArrayLayout(unsigned(channels), rules)),
            "herald":         Out(rules),
        })

    def elaborate(self, platform):
        m = Module()
        n, f = self.channels, self.fine_bits

        events = Signal(n)
        m.d.comb += events.eq(Mux(self.clear, 0, self.events))
        newcomer = events & ~self.join
        fine = [_fine(self.times[i], f) for i in range(n)]

        # Per event i: the pattern of its window before this cycle (`before`) and right after
        # the event and every event of the same window at the same time (`after`).
        before, after = [], []
        for i in range(n):
            b, a = Signal(n, name=f"before{i}"), Signal(n, name=f"after{i}")
            base = Mux(self.join[i], self.prev_pattern, 0)
            same = Mux(self.join[i], self.join, newcomer)
            if f > 0:
                same = same & Cat(fine[j] <= fine[i] for j in range(n))
            m.d.comb += [b.eq(base), a.eq(base | same)]
            before.append(b)
            after.append(a)

        closed = self.closed & ~self.clear
        # What the record fields are selected from: this cycle's, or last cycle's registered.
        ref = self.ref
        if self.record_stage:
            ref = Signal(COARSE_BITS, name="record_ref")
            rec_fine = [Signal(f, name=f"record_fine{i}") for i in range(n)]
            rec_after = [Signal(n, name=f"record_after{i}") for i in range(n)]
            m.d.sync += [ref.eq(self.ref),
                         *(a.eq(b) for a, b in zip(rec_fine, fine)),
                         *(a.eq(b) for a, b in zip(rec_after, after))]
        else:
            rec_fine, rec_after = fine, after
        for r in range(self.rules):
            mask = self.herald_mask[r]
            veto = self.herald_veto[r]
            cand = Signal(n, name=f"cand{r}")
            m.d.comb += cand.eq(Cat(
                events[i] & ((before[i] & mask) != mask) & ((after[i] & mask) == mask)
                for i in range(n)))
            rec_cand = cand
            if self.record_stage:
                rec_cand = Signal(n, name=f"record_cand{r}")
                m.d.sync += rec_cand.eq(cand)
            # Candidates whose pattern holds no veto channel; computed beside `cand`, not
            # after the earliest-candidate selection (see the class docstring).
            allowed = Cat(cand[i] & ((after[i] & veto) == 0) for i in range(n))
            early = allowed.any()
            exact = (closed & ((self.closed_pattern & mask) == mask)
                     & ((self.closed_pattern & veto) == 0))
            if f > 0:
                # The earliest candidates complete the mask; they share one time and window.
                first = Signal(n, name=f"first{r}")
                m.d.comb += first.eq(Cat(
                    rec_cand[i] & ~Cat(rec_cand[j] & (rec_fine[j] < rec_fine[i])
                                       for j in range(n)).any()
                    for i in range(n)))
            else:
                first = rec_cand   # one time per cycle and, for F = 0, one window per cycle
            pattern, time_fine = 0, C(0, f)
            for i in range(n):
                pattern = pattern | Mux(first[i], rec_after[i], 0)
                time_fine = time_fine | Mux(first[i], rec_fine[i], 0)
            m.d.comb += [
                self.fire[r].eq(Mux(self.herald_exact[r], exact, early)),
                self.herald_pattern[r].eq(pattern),
                self.herald_time[r].eq(Cat(time_fine[:f], ref)),
            ]

        for p in range(self.rules):
            if self.rules == 1:
                fire = self.fire[0]
            else:
                fire = Cat(self.fire[r] & (self.herald_pin[r] == p)
                           for r in range(self.rules)).any()
            # Cycles the pin stays high after the current one.
            remaining = Signal(HERALD_WIDTH_BITS, name=f"remaining{p}")
            with m.If(self.clear):
                m.d.sync += [remaining.eq(0), self.herald[p].eq(0)]
            with m.Elif(fire):
                m.d.sync += [
                    self.herald[p].eq(self.herald_width != 0),
                    remaining.eq(Mux(self.herald_width != 0, self.herald_width - 1, 0)),
                ]
            with m.Elif(remaining != 0):
                m.d.sync += remaining.eq(remaining - 1)
            with m.Else():
                m.d.sync += self.herald[p].eq(0)

        return m
