"""``heraldry build`` and ``heraldry flash``: bitstreams for real boards.

* ``heraldry build --board B [--channels N] [--out DIR] [--seed S] [--verify]``: synthesis,
  place and route and packing with the YoWASP tools; writes the bitstream and
  ``DIR/report.json`` (see :mod:`heraldry.boards.build`) and prints a summary. ``--verify``
  then simulates the synthesised netlist against the RTL and the reference model
  (:func:`heraldry.sim.netlist.verify`, in ``DIR/verify``; ``report.json`` gains ``netlist``).
  Exit 0 if timing is met (and the netlist check passed), 1 if not or if a step failed, 2 for
  bad options.
* ``heraldry flash --board B [--bitstream F] [--sram] [--dry-run]``: programs the board with
  ``iceprog`` (iCEBreaker) or ``openFPGALoader`` (ULX3S), building first if ``DIR`` holds no
  bitstream with timing met for those options. ``--dry-run`` prints the programmer command and
  runs nothing. A missing programmer or a board that does not answer is one line on stderr
  with the fix, exit 2.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from .cli import _error

__all__ = ["register", "cmd_build", "cmd_flash", "programmer_command"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130

#: Environment variable that overrides each programmer's command (Amaranth uses the same).
PROGRAMMER_ENV = {"iceprog": "ICEPROG", "openFPGALoader": "OPENFPGALOADER"}

#: How to get each programmer, for the "not found" message.
PROGRAMMER_FIX = {
    "iceprog": "install it (Debian/Ubuntu: apt install fpga-icestorm) or set ICEPROG",
    "openFPGALoader": "install it (Debian/Ubuntu: apt install openfpgaloader) or set "
                      "OPENFPGALOADER",
}


#: For --help only: importing heraldry.boards (Amaranth, every board module) just to list them
#: would slow down and couple every other command; --board is checked against the registry.
BOARD_NAMES = "icebreaker, ulx3s-85f, ulx3s-25f"


def register(subparsers):
    """Add ``build`` and ``flash`` to the ``heraldry`` sub-parsers."""
    names = BOARD_NAMES
    build = subparsers.add_parser("build", help="build a board's bitstream (YoWASP tools)")
    build.add_argument("--board", required=True, help=f"one of: {names}")
    build.add_argument("--channels", type=int, default=None, metavar="N",
                       help="inputs (default: the board's)")
    build.add_argument("--out", default=None, metavar="DIR",
                       help="build folder (default build/BOARD)")
    build.add_argument("--seed", type=int, default=None,
                       help="nextpnr placement seed (default: the board's, 4 on the iCEBreaker, "
                            "1 elsewhere)")
    build.add_argument("--quiet", action="store_true", help="no progress lines")
    build.add_argument("--verify", action="store_true",
                       help="then simulate the synthesised netlist against the RTL and the "
                            "reference model (minutes; docs/boards.md)")

    flash = subparsers.add_parser("flash", help="program a board (iceprog / openFPGALoader)")
    flash.add_argument("--board", required=True, help=f"one of: {names}")
    flash.add_argument("--bitstream", default=None, metavar="FILE",
                       help="bitstream to program (default: DIR's, built first if needed)")
    flash.add_argument("--channels", type=int, default=None, metavar="N",
                       help="inputs, when building first (default: the board's)")
    flash.add_argument("--out", default=None, metavar="DIR",
                       help="build folder (default build/BOARD)")
    flash.add_argument("--sram", action="store_true",
                       help="load into the FPGA only (lost at power-off) instead of the flash")
    flash.add_argument("--dry-run", action="store_true",
                       help="print the programmer command, run nothing")
    return [("build", cmd_build), ("flash", cmd_flash)]


def _board_and_channels(args):
    """``(board, channels, out)`` or raise BoardError. A given ``--out DIR`` follows the rule of
    every output option (:func:`heraldry.host.cli.check_output_paths`): its parent must exist;
    the default ``build/BOARD`` is made with its parents."""
    from ..boards import BoardError, get_board
    from .cli import check_output_paths
    from .config import ConfigError
    board = get_board(args.board)
    channels = board.check_channels(args.channels)
    if args.out:
        try:
            check_output_paths([("--out", args.out, "folder")])
        except ConfigError as error:
            raise BoardError(str(error)) from None
    out = Path(args.out) if args.out else Path("build") / board.name
    return board, channels, out


def _print_report(report):
    clocks = ", ".join(f"{name} {c['achieved_mhz']:g} MHz achieved of {c['target_mhz']:g} MHz"
                       for name, c in report["clocks"].items())
    cells = ", ".join(f"{name} {use['used']}/{use['available']}"
                      for name, use in report["resources"].items())
    print(f"{report['board']}: {report['channels']} channels, bin {report['bin_ps']:g} ps, "
          f"{clocks} ({'met' if report['timing_met'] else 'NOT MET'})")
    crossings = [f"{c['from']} -> {c['to']} {c['max_delay_ns']:g} ns"
                 + (f" (limit {c['limit_ns']:g})" if c.get("limit_ns") is not None else "")
                 for c in report.get("crossings", [])]
    if crossings:
        print(f"  clock crossings (not timed by nextpnr): {', '.join(crossings)}")
    if report.get("icetime_mhz") is not None:
        print(f"  icetime (second opinion, longest path): {report['icetime_mhz']:g} MHz")
    for hold in report.get("crossing_hold", []):
        print(f"  crossing hold {hold['from']} -> {hold['to']}: shortest path "
              f"{hold['min_delay_ns']:g} ns, slack {hold['slack_ns']:g} ns")
    print(f"  resources: {cells}")
    print(f"  bitstream: {report['bitstream']}")


def _run_build(board, channels, out, seed=None, quiet=False):
    """Build; returns the report or an exit status (int) after printing the error."""
    from ..boards.build import BuildError, build

    def progress(text):
        sys.stderr.write(f"heraldry: {text}\n")
        sys.stderr.flush()
    try:
        return build(board, channels, out, seed=seed, progress=None if quiet else progress)
    except BuildError as error:
        _error(error)
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("\nheraldry: interrupted\n")
        return EXIT_INTERRUPTED


def _run_verify(board, channels, out, report, quiet=False):
    """The netlist check on the build in ``out``; adds ``netlist`` to ``report.json``, prints a
    line; returns an exit status."""
    from ..sim.netlist import NetlistError, verify

    def progress(text):
        sys.stderr.write(f"heraldry: {text}\n")
        sys.stderr.flush()
    try:
        result = verify(board, channels, out / "verify", json_path=out / "heraldry.json",
                        progress=None if quiet else progress)
    except NetlistError as error:
        _error(error)
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("\nheraldry: interrupted\n")
        return EXIT_INTERRUPTED
    report["netlist"] = result
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    runs = result["runs"]
    if result["ok"]:
        summary = runs[0]["netlist"] if runs else {}
        print(f"  netlist check: passed at {len(runs)} clock phase(s): UART bytes and herald "
              f"pins as the RTL's, {summary.get('tags', 0)} tags and "
              f"{summary.get('heralds', 0)} herald records as the model's")
    if not result["ok"]:
        more = len(result["failures"]) - 1
        _error(f"netlist check failed: {result['failures'][0]}"
               + (f" (and {more} more)" if more else "") + f"; see {out / 'report.json'}")
        return EXIT_FAILED
    return EXIT_OK


def cmd_build(args):
    from ..boards import BoardError
    try:
        board, channels, out = _board_and_channels(args)
    except BoardError as error:
        _error(error)
        return EXIT_USAGE
    report = _run_build(board, channels, out, seed=args.seed, quiet=args.quiet)
    if isinstance(report, int):
        return report
    _print_report(report)
    print(f"  report: {out / 'report.json'}")
    if args.verify:
        status = _run_verify(board, channels, out, report, quiet=args.quiet)
        if status != EXIT_OK:
            return status
    if not report["timing_met"]:
        _error(f"timing not met on {board.name} (see {out / 'report.json'}); try another "
               f"--seed or fewer --channels")
        return EXIT_FAILED
    return EXIT_OK


def programmer_command(board, bitstream, *, sram=False, env=None):
    """The command that programs ``bitstream`` into ``board`` (a list of strings).

    The programmer is ``$ICEPROG`` / ``$OPENFPGALOADER`` if set, else ``board.programmer``.
    Default: write the configuration flash (survives power-off); ``sram``: load the FPGA only."""
    env = os.environ if env is None else env
    tool = env.get(PROGRAMMER_ENV.get(board.programmer, ""), board.programmer)
    if board.programmer == "iceprog":
        return [tool, *(["-S"] if sram else []), str(bitstream)]
    if board.programmer == "openFPGALoader":
        return [tool, "-b", "ulx3s", "-m" if sram else "-f", str(bitstream)]
    raise ValueError(f"unknown programmer {board.programmer!r}")


def _built(out, board, channels):
    """The bitstream in ``out`` if its report matches (board, channels, timing met)."""
    from ..boards.build import bitstream_path
    path = bitstream_path(board, out)
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if (report.get("board") == board.name and report.get("channels") == channels
            and report.get("timing_met") and report.get("checks_ok", True)
            and path.exists()):
        return path
    return None


def cmd_flash(args):
    from ..boards import BoardError
    from ..boards.build import bitstream_path, find_tool
    try:
        board, channels, out = _board_and_channels(args)
    except BoardError as error:
        _error(error)
        return EXIT_USAGE
    if args.bitstream is not None:
        bitstream = Path(args.bitstream)
        if not bitstream.is_file():
            _error(f"--bitstream {args.bitstream}: no such file")
            return EXIT_USAGE
        need_build = False
    else:
        bitstream = _built(out, board, channels)
        need_build = bitstream is None
        if need_build:
            bitstream = bitstream_path(board, out)
    command = programmer_command(board, bitstream, sram=args.sram)
    if args.dry_run:
        if need_build:
            print(f"# would build first: heraldry build --board {board.name} "
                  f"--channels {channels} --out {shlex.quote(str(out))}")
        print(shlex.join(command))
        return EXIT_OK
    tool = find_tool(command[0])
    if tool is None:
        _error(f"{command[0]} not found: {PROGRAMMER_FIX[board.programmer]}")
        return EXIT_USAGE
    if need_build:
        report = _run_build(board, channels, out)
        if isinstance(report, int):
            return report
        if not report["timing_met"]:
            _error(f"timing not met on {board.name} (see {out / 'report.json'}); not "
                   f"programming it")
            return EXIT_FAILED
    sys.stderr.write(f"heraldry: {shlex.join(command)}\n")
    try:
        result = subprocess.run([tool, *command[1:]], capture_output=True, text=True)
    except OSError as error:
        _error(f"cannot run {command[0]}: {error}")
        return EXIT_USAGE
    if result.returncode != 0:
        lines = [t for t in (result.stderr + result.stdout).splitlines() if t.strip()]
        last = lines[-1].strip() if lines else f"exit {result.returncode}"
        _error(f"{command[0]} failed ({last}): connect the {board.name} by USB and check "
               f"that you may open it (udev rules, or try with sudo)")
        return EXIT_USAGE
    sys.stderr.write(f"heraldry: programmed {board.name} with {bitstream}\n")
    return EXIT_OK
