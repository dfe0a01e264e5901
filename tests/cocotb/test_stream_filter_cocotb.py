"""The stream filter of the converted TaggerCore in Verilator, driven by cocotb
(``stream_filter_tb.py``), under pytest: per-channel modes all/coincident/none against the
reference model. It uses the default core's Verilog and Verilator build, shared with
``test_core_cocotb.py`` (built once, reused)."""

from pathlib import Path

import pytest

import cocotb_runner
from heraldry.sim.verilog import CORE_TOPLEVEL, convert_core

HERE = Path(__file__).resolve().parent
CHANNELS, RULES = 4, 2
TB_MODULE = "stream_filter_tb"


@pytest.fixture(scope="module")
def verilated():
    return cocotb_runner.build(convert_core(CHANNELS, RULES), CORE_TOPLEVEL)


@pytest.mark.parametrize("testcase", ["coincident_channels_hold_and_release",
                                      "every_mode_on_every_channel_position"])
def test_stream_filter_against_model(verilated, testcase):
    cocotb_runner.run(verilated, HERE, TB_MODULE, CORE_TOPLEVEL, testcase)
