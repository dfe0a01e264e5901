"""``heraldry relay PORT``: a relay in front of a board that injects link faults, to try a host.

Opens ``PORT`` (a board's serial port, or the virtual board's from ``heraldry sim``), prints the
path of a new pseudo-terminal on stdout, and relays bytes both ways between them until Ctrl-C or
until the board goes away, dropping, flipping, duplicating and delaying bytes on the way
(:class:`heraldry.sim.faults.FaultRelay`). Any serial client can use the new port, e.g.
``heraldry acquire --board /dev/pts/N``; clients may come and go. At the end it prints how many
faults of each kind it injected. Exit status 0 after Ctrl-C/SIGTERM, 1 if the board went away,
2 for bad options or a port that cannot be opened.
"""

import signal
import sys
import time

from ..sim.faults import FAULT_KINDS as _KINDS
from .cli import _error

__all__ = ["register", "cmd_relay"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers):
    """Add ``relay`` to the ``heraldry`` sub-parsers."""
    relay = subparsers.add_parser(
        "relay", help="serve a board's port through a relay that injects link faults")
    relay.add_argument("port", help="the board's serial port (e.g. the path heraldry sim prints)")
    relay.add_argument("--fault-rate", type=float, default=1e-3, metavar="R",
                       help="probability that a byte from the board is hit (default 1e-3)")
    relay.add_argument("--faults", default=",".join(_KINDS), metavar="KINDS",
                       help=f"comma-separated kinds sharing the rate equally (default "
                            f"{','.join(_KINDS)})")
    relay.add_argument("--delay-ms", type=float, default=50.0, metavar="MS",
                       help="longest delay of a delayed byte (default 50)")
    relay.add_argument("--to-device-rate", type=float, default=0.0, metavar="R",
                       help="the same for bytes from the host to the board (default 0: none)")
    relay.add_argument("--seed", type=int, default=1, help="seed of the faults (default 1)")
    relay.add_argument("--baud", type=int, default=None,
                       help="line rate of a real board's port (default: leave it as it is)")
    return [("relay", cmd_relay)]


def _faults(args):
    """The two :class:`Faults` of the options, or a one-line error (ValueError)."""
    from ..sim.faults import Faults
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in _KINDS]
    if unknown or not kinds:
        raise ValueError(f"--faults takes some of {','.join(_KINDS)}, not {args.faults!r}")
    for name, rate in (("--fault-rate", args.fault_rate),
                       ("--to-device-rate", args.to_device_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be 0..1, not {rate:g}")
    if not 0.0 <= args.delay_ms <= 60_000:
        raise ValueError(f"--delay-ms must be 0..60000, not {args.delay_ms:g}")
    if args.baud is not None and args.baud <= 0:
        raise ValueError(f"--baud must be positive, not {args.baud}")
    delay_s = args.delay_ms / 1000
    return (Faults.uniform(args.fault_rate, kinds, delay_s=delay_s),
            Faults.uniform(args.to_device_rate, kinds, delay_s=delay_s))


def cmd_relay(args):
    from ..sim.faults import FaultRelay
    try:
        to_host, to_device = _faults(args)
    except ValueError as error:
        _error(error)
        return EXIT_USAGE
    relay = FaultRelay(args.port, baud=args.baud, to_host=to_host, to_device=to_device,
                       seed=args.seed, hold=True)
    try:
        relay.start()
    except OSError as error:
        _error(f"cannot open {args.port}: {getattr(error, 'strerror', None) or error}")
        return EXIT_USAGE

    def terminate(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, terminate)
    status = EXIT_OK
    try:
        sys.stdout.write(f"{relay.port}\n")
        sys.stdout.flush()
        sys.stderr.write(f"heraldry: relaying {args.port} on {relay.port} with byte fault rate "
                         f"{args.fault_rate:g} to the host ({args.faults}) and "
                         f"{args.to_device_rate:g} to the board. Ctrl-C to stop.\n")
        while relay.running:
            time.sleep(0.2)
        _error(f"{args.port} went away"
               + (f" ({relay.error})" if relay.error is not None else ""))
        status = EXIT_FAILED
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        relay.close()
    for name, counts in relay.counts.items():
        sys.stderr.write(f"heraldry: {name.replace('_', ' ')}: {counts['bytes_in']} bytes in, "
                         + ", ".join(f"{counts[k]} {k}" for k in _KINDS) + "\n")
    return status
