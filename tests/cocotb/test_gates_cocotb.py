"""The converted ``TaggerCore(gates=True)`` in Verilator, driven by cocotb (``gates_tb.py``),
under pytest: roles, gates, attempt clock, markers and herald attempt/offset against the
reference model.

The gates core is a Verilog model of its own (about 1.5 minutes of Verilator build on a loaded
two-core machine, reused while the gateware is unchanged), so these tests are in the slow tier
(``make test-slow``).
"""

from pathlib import Path

import pytest

import cocotb_runner
from heraldry.sim.verilog import CORE_TOPLEVEL, convert_core

HERE = Path(__file__).resolve().parent
CHANNELS, RULES = 4, 2
TB_MODULE = "gates_tb"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def verilated():
    return cocotb_runner.build(convert_core(CHANNELS, RULES, gates=True), CORE_TOPLEVEL)


@pytest.mark.parametrize("testcase", ["random_gates_against_model",
                                      "gate_boundaries_and_attempt_wrap",
                                      "offset_counter_saturates"])
def test_gates_against_model(verilated, testcase):
    cocotb_runner.run(verilated, HERE, TB_MODULE, CORE_TOPLEVEL, testcase)
