"""The converted TaggerCore in Verilator, driven by cocotb (``core_tb.py``), under pytest.

The Verilog is converted once per gateware revision (:func:`heraldry.sim.verilog.convert_core`)
and Verilated into ``build/cocotb/<verilog name>/``; later runs reuse both (Verilator skips
identical inputs, make rebuilds nothing). Each pytest function runs one ``@cocotb.test()`` of
``core_tb`` in its own simulator process and fails if it failed (results XML).
"""

from pathlib import Path

import pytest

import cocotb_runner
from heraldry.sim.verilog import CORE_TOPLEVEL, convert_core

HERE = Path(__file__).resolve().parent
CHANNELS, RULES = 4, 2
TB_MODULE = "core_tb"


@pytest.fixture(scope="module")
def verilated():
    """Convert and Verilate the core once; returns ``(runner, build_dir)``."""
    return cocotb_runner.build(convert_core(CHANNELS, RULES), CORE_TOPLEVEL)


def run_cocotb(verilated, testcase):
    """Run one ``@cocotb.test()`` of ``core_tb``; fail unless it ran and passed."""
    cocotb_runner.run(verilated, HERE, TB_MODULE, CORE_TOPLEVEL, testcase)


def test_edge_bins_follow_the_definition(verilated):
    run_cocotb(verilated, "edge_bins_follow_the_definition")


def test_random_pins_against_model(verilated):
    run_cocotb(verilated, "random_pins_against_model")


def test_herald_rules_against_model(verilated):
    run_cocotb(verilated, "herald_rules_against_model")


def test_herald_latency_is_constant(verilated):
    run_cocotb(verilated, "herald_latency_is_constant")


def test_test_signal_counters_match_streamed_tags(verilated):
    run_cocotb(verilated, "test_signal_counters_match_streamed_tags")


def test_bsm_signal_psi_minus_heralds(verilated):
    run_cocotb(verilated, "bsm_signal_psi_minus_heralds")
