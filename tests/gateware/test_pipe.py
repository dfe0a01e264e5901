"""StreamRegister: order, no loss or duplication, stream rules, full throughput."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from heraldry.gateware.pipe import StreamRegister


def run(valid_p, ready_p, cycles, seed, skid=True):
    rng = np.random.default_rng(seed)
    dut = StreamRegister(16, skid=skid)
    sent, received, trace = [], [], []

    async def bench(ctx):
        nxt = 1
        offered = False
        for _ in range(cycles):
            if not offered and rng.random() < valid_p:
                ctx.set(dut.i.payload, nxt)
                ctx.set(dut.i.valid, 1)
                offered = True
            ctx.set(dut.o.ready, int(rng.random() < ready_p))
            _, _, i_ready, o_valid, o_ready, o_payload, busy = await ctx.tick().sample(
                dut.i.ready, dut.o.valid, dut.o.ready, dut.o.payload, dut.busy)
            trace.append((o_valid, o_ready, o_payload, busy))
            if offered and i_ready:
                sent.append(nxt)
                nxt += 1
                offered = False
                ctx.set(dut.i.valid, 0)
            if o_valid and o_ready:
                received.append(o_payload)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return sent, received, trace


@pytest.mark.parametrize("skid", [True, False])
@pytest.mark.parametrize("valid_p, ready_p, seed", [(0.5, 0.5, 1), (1.0, 0.3, 2), (0.9, 0.9, 3),
                                                    (1.0, 1.0, 4), (0.2, 1.0, 5)])
def test_order_and_stream_rules(valid_p, ready_p, seed, skid):
    sent, received, trace = run(valid_p, ready_p, 600, seed, skid)
    assert len(sent) > 50
    # Everything taken comes out once, in order (what is still inside is at the end).
    assert received == sent[:len(received)]
    assert len(sent) - len(received) <= 2
    # Stream rules: once offered, a payload stays offered and unchanged until taken.
    for (v0, r0, p0, _), (v1, _, p1, _) in zip(trace, trace[1:]):
        if v0 and not r0:
            assert v1 and p1 == p0
    # busy while something is offered.
    assert all(busy for v, _, _, busy in trace if v)


@pytest.mark.parametrize("skid", [True, False])
def test_full_throughput(skid):
    sent, received, trace = run(1.0, 1.0, 300, 6, skid)
    assert len(received) >= 298 and received == sent[:len(received)]
