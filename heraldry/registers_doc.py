"""Generate ``docs/registers.md`` from :class:`heraldry.protocol.RegisterMap`.

``python -m heraldry.registers_doc -o docs/registers.md`` rewrites the committed page (the
default build: 4 channels, 2 rules); ``--channels`` and ``--rules`` print another build's map.
A test checks that the committed page is current; do not edit the page by hand.
"""

import argparse
import sys

from .protocol import COUNTER_BASE, CONFIG_BASE, RegisterMap

__all__ = ["render", "main"]

DEFAULT_CHANNELS = 4
DEFAULT_RULES = 2


def _number(value):
    return f"{value:#x}" if value >= 4096 else str(value)


def _table(registers):
    lines = ["| address | name | access | bits | reset | host writes | description |",
             "|---|---|---|---|---|---|---|"]
    for reg in registers:
        writes = "" if reg.access == "ro" else f"{_number(reg.minimum)} .. {_number(reg.maximum)}"
        # Identification values other than the constants are set by the build's parameters.
        built = reg.name.startswith("ident.") and reg.name not in ("ident.magic", "ident.protocol")
        reset = "build" if built else _number(reg.reset)
        doc = reg.doc.replace("|", "\\|")
        lines.append(f"| `{reg.address:#05x}` | `{reg.name}` | {reg.access} | {reg.width} | "
                     f"{reset} | {writes} | {doc} |")
    return "\n".join(lines)


def render(channels=DEFAULT_CHANNELS, rules=DEFAULT_RULES):
    """The Markdown page for ``RegisterMap(channels, rules)``."""
    rmap = RegisterMap(channels, rules)
    fixed = [r for r in rmap if r.address < CONFIG_BASE]
    config = rmap.config_registers()
    counters = [r for r in rmap if r.address >= COUNTER_BASE]
    command = "python -m heraldry.registers_doc -o docs/registers.md"
    return f"""# Registers

<!-- Generated from heraldry.protocol.RegisterMap by `{command}`. -->

The register map of a build with **{channels} channels and {rules} herald rules** (the default
`Tagger`). The fixed registers are the same in every build; the configuration and counter
registers are derived from `protocol.config_layout(N, R)` and `protocol.CounterMap(N, R)`, so
their addresses depend on N and R (`python -m heraldry.registers_doc --channels N --rules R`
prints another build's map). Commands, replies and STATUS records: [`protocol.md`](protocol.md).

Every register is 32 bits on the link. *bits*: how many the register holds (a write keeps the
value's low bits; `control.run` and `control.clear` use bit 0). *host writes*: the range the
host accepts before sending (the device does not check). A READ or a WRITE of an `rw`/`wo`
register replies `ok = 1` with the value (read back after a write); a WRITE of an `ro`
register, an unknown address or an unknown operation replies `ok = 0`.

## Identification and control

{_table(fixed)}

## Configuration (from `{CONFIG_BASE:#05x}`)

Change only while stopped. Each register holds one field of the config layout (a field wider
than 32 bits takes several registers, low bits first).

{_table(config)}

## Counters (from `{COUNTER_BASE:#05x}`)

Read only, {len(counters)} counters, each wrapping modulo 2^32; zeroed by `control.clear`. With
`control.status_period` set, the device also sends all of them as STATUS records every period.

{_table(counters)}
"""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m heraldry.registers_doc",
                                     description="Print (or write) the register map page.")
    parser.add_argument("--channels", type=int, default=DEFAULT_CHANNELS)
    parser.add_argument("--rules", type=int, default=DEFAULT_RULES)
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    text = render(args.channels, args.rules)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
