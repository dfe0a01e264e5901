"""The tagger core as a virtual board in the Amaranth simulator (in-process, Python per cycle).

:class:`CoreSimulation` elaborates :class:`heraldry.gateware.core.TaggerCore`, configures it
through its ``config`` port, gates a run with ``run``, consumes the record stream every cycle
(or with a back-pressure pattern), drives detector pins from edge lists, and reads every hardware
counter through the counter read port at the end: exactly what a host does with a board, minus
the link. It runs about 10^4 cycles per second; the Verilated twin is the fast path.
"""

import time as _time
from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from .. import protocol
from ..gateware.core import TaggerCore

__all__ = ["PinStimulus", "SimRun", "CoreSimulation"]


@dataclass
class PinStimulus:
    """Detector pin waveforms as level changes: ``bins`` (edge times, in the bins the core will
    timestamp them with, relative to the run start), ``channels`` and ``levels`` (1 = rise)."""
    bins: np.ndarray
    channels: np.ndarray
    levels: np.ndarray

    @classmethod
    def from_edges(cls, rise, fall):
        """Build from per-channel rise and fall time lists (bins relative to the run start)."""
        bins, channels, levels = [], [], []
        for c, (r, f) in enumerate(zip(rise, fall)):
            bins += [np.asarray(r, np.int64), np.asarray(f, np.int64)]
            channels += [np.full(len(r), c), np.full(len(f), c)]
            levels += [np.ones(len(r), np.int64), np.zeros(len(f), np.int64)]
        bins = np.concatenate(bins) if bins else np.zeros(0, np.int64)
        order = np.argsort(bins, kind="stable")
        return cls(bins[order], np.concatenate(channels)[order].astype(np.int64),
                   np.concatenate(levels)[order])

    @classmethod
    def pulses(cls, times, width=1):
        """Per-channel lists of rising-edge times (bins), each a pulse of ``width`` cycles."""
        rise = [np.asarray(t, np.int64) for t in times]
        fall = [r + width for r in rise]
        return cls.from_edges(rise, fall)


@dataclass
class SimRun:
    """What one simulated acquisition produced.

    Events are accepted while the gate is open: pin edges (and test-signal pulses, which enter
    behind the PHY) with bins ``start_time - phy.latency .. start_time + cycles - phy.latency - 1``.
    A test-signal pulse of cycle ``k`` is stamped ``test_origin + k - phy.latency``.
    """
    records: list          # raw record integers, in stream order
    counters: np.ndarray   # every counter, indexed by protocol.CounterMap address
    start_time: int        # `now` in the first cycle the run gate was open
    test_origin: int       # `now` in cycle k = 0 of the test signal (after clear)
    latency: int           # TaggerCore.latency
    cycles: int            # cycles the run gate was open
    simulated_cycles: int  # every cycle simulated (set-up, run, drain, counter read-out)
    herald_rises: list     # per rule, cycles (relative to start) at which the herald pin rose
    wall_seconds: float


class CoreSimulation:
    """Run a :class:`TaggerCore` in the Amaranth simulator.

    Parameters are those of :class:`TaggerCore`. One instance runs one acquisition
    (:meth:`acquire`); make a new one for the next.
    """

    def __init__(self, channels=4, rules=2, *, fifo_depth=256, counter_init=0, gates=False):
        self.core = TaggerCore(channels=channels, rules=rules, fifo_depth=fifo_depth,
                               counter_init=counter_init, gates=gates)
        self.channels = channels
        self.rules = rules
        self.map = protocol.CounterMap(channels, rules)

    def acquire(self, config, cycles, *, pins=None, ready=None, drain=None, progress=None):
        """Configure, clear, run for ``cycles`` cycles, drain, and read every counter.

        ``config``: a ``protocol.config_layout`` constant (see :meth:`Acquisition.gateware_config`).
        ``pins``: a :class:`PinStimulus` (bins relative to the run start; generic PHY only).
        ``ready``: ``None`` for an always-ready consumer, or a numpy bool array giving the
        consumer's ``ready`` per cycle from the run start (cycled).
        ``drain``: cycles to wait at least after the run (default: the largest delay plus the
        window plus the pipeline); then it waits until the record stream has been idle for
        ``2N + R + 16`` cycles, so every bundle and every pending loss record has come out.
        ``progress``: called as ``progress(done_cycles, total_cycles)`` about once a second.
        """
        core = self.core
        sim = Simulator(core)
        sim.add_clock(1e-8)
        result = {}
        if drain is None:
            drain = (max(config.channel[c].delay for c in range(self.channels))
                     + config.window + 32)
        idle_needed = 2 * self.channels + self.rules + 16

        async def bench(ctx):
            ctx.set(core.config, config)
            ctx.set(core.records.ready, 1)
            await ctx.tick().repeat(2)
            ctx.set(core.clear, 1)
            await ctx.tick()
            ctx.set(core.clear, 0)
            # This is cycle k = 0 of the re-seeded test signal (heraldry.model.testsignal).
            test_origin = ctx.get(core.now)
            await ctx.tick().until(~core.busy)
            records = []
            herald_rises = [[] for _ in range(self.rules)]
            stim = pins
            next_edge = 0
            n_edges = 0 if stim is None else len(stim.bins)
            pin_state = 0
            # The edge of a pin set in the cycle where the run counter reads k is stamped with
            # bin k + 1 (it is sampled at the next clock edge): see docs/architecture.md.
            ctx.set(core.run, 1)
            start_time = ctx.get(core.now)
            ready_pattern = None if ready is None else np.asarray(ready, bool)
            last_herald = 0
            wall = _time.monotonic()
            idle = 0
            k = 0
            while k < cycles + drain or idle < idle_needed:
                if k == cycles:
                    ctx.set(core.run, 0)
                if stim is not None:
                    changed = False
                    while next_edge < n_edges and stim.bins[next_edge] <= k + 1:
                        bit = 1 << int(stim.channels[next_edge])
                        if stim.levels[next_edge]:
                            pin_state |= bit
                        else:
                            pin_state &= ~bit
                        next_edge += 1
                        changed = True
                    if changed:
                        ctx.set(core.pins, pin_state)
                if ready_pattern is not None:
                    ctx.set(core.records.ready, int(ready_pattern[k % len(ready_pattern)])
                            if k < cycles else 1)
                _, _, valid, rdy, payload, herald = await ctx.tick().sample(
                    core.records.valid, core.records.ready, core.records.payload.as_value(),
                    core.herald)
                if valid and rdy:
                    records.append(payload)
                idle = 0 if valid else idle + 1
                rose = herald & ~last_herald
                if rose:
                    for r in range(self.rules):
                        if rose >> r & 1:
                            herald_rises[r].append(k + 1)
                last_herald = herald
                k += 1
                if progress is not None and k % 4096 == 0:
                    now = _time.monotonic()
                    if now - wall >= 1.0:
                        progress(min(k, cycles), cycles)
                        wall = now
            counters = np.zeros(self.map.size, np.int64)
            for address in range(self.map.size):
                ctx.set(core.counter_addr, address)
                await ctx.tick()
                counters[address] = ctx.get(core.counter_data)
            simulated = (ctx.get(core.now) - core.counter_init - core.latency) \
                % 2 ** protocol.COARSE_BITS
            result["run"] = (records, counters, start_time, test_origin, herald_rises, simulated)

        sim.add_testbench(bench)
        t0 = _time.monotonic()
        sim.run()
        records, counters, start_time, test_origin, herald_rises, simulated = result["run"]
        return SimRun(records=records, counters=counters, start_time=start_time,
                      test_origin=test_origin, latency=core.latency, cycles=cycles,
                      simulated_cycles=simulated,
                      herald_rises=herald_rises, wall_seconds=_time.monotonic() - t0)
