"""The carry-chain-free comparisons of gateware/arith.py, exhaustively on small widths."""

import pytest
from amaranth.hdl import Const, Module, Signal
from amaranth.sim import Simulator

from heraldry.gateware.arith import above_each, at_most_each, at_most_step, saturating_sub


@pytest.mark.parametrize("f", [0, 1, 2, 3])
def test_comparisons_match_python_for_every_value(f):
    width = f + 4
    value = Signal(width)
    k = (1 << f) + 1
    above, at_most, step = Signal(2 ** f), Signal(2 ** f), Signal()
    clipped = Signal(width)
    m = Module()
    m.d.comb += [above.eq(above_each(value, f)), at_most.eq(at_most_each(value, f)),
                 step.eq(at_most_step(value, f)), clipped.eq(saturating_sub(value, k))]

    async def bench(ctx):
        for v in range(2 ** width):
            ctx.set(value, v)
            assert ctx.get(above) == sum((v > i) << i for i in range(2 ** f))
            assert ctx.get(at_most) == sum((v <= i) << i for i in range(2 ** f))
            assert ctx.get(step) == (v <= 2 ** f)
            assert ctx.get(clipped) == max(0, v - k)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_saturating_sub_of_zero_is_the_value():
    value = Signal(4)
    assert saturating_sub(value, 0) is value
