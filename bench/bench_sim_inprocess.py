"""Speed of the in-process virtual board (Amaranth simulator, Python per cycle).

Figures: ``inprocess_cycles_per_s`` for the 4-channel core streaming the pairs test signal through
the harness that ``heraldry acquire --board sim-inprocess`` uses, and, side by side, the same
simulator running only a 32-bit counter with the same per-cycle Python loop
(``inprocess_baseline_cycles_per_s``): their ratio is the cost of the core itself.
"""

import time

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator

CYCLES = 4000


class _Counter(wiring.Component):
    count: Out(32)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.count.eq(self.count + 1)
        return m


def _baseline(cycles):
    dut = _Counter()
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def bench(ctx):
        for _ in range(cycles):
            await ctx.tick().sample(dut.count)

    sim.add_testbench(bench)
    start = time.perf_counter()
    sim.run()
    return cycles / (time.perf_counter() - start)


def _core(cycles):
    from heraldry.host.config import Acquisition
    from heraldry.sim.harness import CoreSimulation
    acq = Acquisition(channels=4, window_bins=2, herald_masks=[0b0011], test_signal="pairs",
                      pair_rate_hz=5e6, dark_rate_hz=2e5, efficiency=0.5)
    sim = CoreSimulation(channels=4, rules=2)
    run = sim.acquire(acq.gateware_config(), cycles)
    # The harness also clears, drains and reads counters: count every cycle it simulated.
    return run.simulated_cycles / run.wall_seconds, len(run.records)


def run():
    core_rate, records = _core(CYCLES)
    base_rate = _baseline(CYCLES)
    print(f"  in-process core: {core_rate:,.0f} cycles/s ({records} records in {CYCLES} cycles); "
          f"simulator with a bare counter: {base_rate:,.0f} cycles/s; "
          f"ratio {core_rate / base_rate:.3f}")
    return {
        "inprocess_cycles_per_s": round(core_rate),
        "inprocess_baseline_cycles_per_s": round(base_rate),
        "inprocess_ratio_vs_baseline": round(core_rate / base_rate, 4),
    }


if __name__ == "__main__":
    print(run())
