"""``heraldry serve``: own one board and publish it to many watchers (:mod:`heraldry.host.serve`).

``heraldry serve --board sim|PORT [acquire's configuration options] [--bind 127.0.0.1]
[--pub-port 5560] [--control-port 5561] [--metrics-port 9560] [--token SECRET]
[--rates-hz 2] [--hwm 1000] [--sndbuf BYTES] [--herald-floor HZ] [--no-start]``

Starts acquiring at once (unless ``--no-start``) and runs until Ctrl-C or SIGTERM, leaving the
board stopped. When ready it prints one JSON line on stdout: ``{"pub": "tcp://...", "control":
"tcp://...", "metrics": "http://.../metrics"}``. Port 0 picks a free port. Exit status: 0 after
Ctrl-C/SIGTERM; 2 bad options (one line on stderr: e.g. a non-loopback ``--bind`` without
``--token``, a port in use); 1 the board cannot be started or does not answer.
"""

import json
import signal
import sys

from .config import ConfigError

__all__ = ["register", "cmd_serve"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Options of ``heraldry acquire`` that serve shares: the board, and the configuration options
# (an allow-list: acquire's output options, present and future, mean nothing to a server).
_SHARED = {"board", "baud", "config", "quiet"}


def register(subparsers):
    """Add ``serve``, with every configuration option of ``acquire`` (shared, not restated)."""
    from .serve import CONFIG_KEYS, DEFAULT_CONTROL_PORT, DEFAULT_METRICS_PORT, DEFAULT_PUB_PORT
    p = subparsers.add_parser("serve", help="own one board; publish events, rates and metrics "
                                            "(ZeroMQ, Prometheus)")
    acquire = subparsers.choices["acquire"]
    for action in acquire._actions:
        if action.dest in _SHARED or action.dest in CONFIG_KEYS:
            p._add_action(action)       # what argparse's parents= does, without its -h clash
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on (default 127.0.0.1; others need --token)")
    p.add_argument("--pub-port", type=int, default=DEFAULT_PUB_PORT,
                   help=f"ZeroMQ PUB port: events and rates (default {DEFAULT_PUB_PORT})")
    p.add_argument("--control-port", type=int, default=DEFAULT_CONTROL_PORT,
                   help=f"ZeroMQ REP control port (default {DEFAULT_CONTROL_PORT})")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                   help=f"Prometheus /metrics HTTP port (default {DEFAULT_METRICS_PORT})")
    p.add_argument("--token", default=None, metavar="SECRET",
                   help="every control request must carry it (required off loopback)")
    p.add_argument("--rates-hz", type=float, default=2.0,
                   help="rates messages per second, 1..10 (default 2)")
    p.add_argument("--hwm", type=int, default=1000,
                   help="PUB send high-water mark, messages per subscriber (default 1000)")
    p.add_argument("--sndbuf", type=int, default=None, metavar="BYTES",
                   help="kernel send buffer per subscriber connection (default: the system's)")
    p.add_argument("--herald-floor", type=float, default=0.0, metavar="HZ",
                   help="herald rate to alert below, exported for the alert rule (default 0)")
    p.add_argument("--no-start", action="store_true", help="wait for a start command")
    return [("serve", cmd_serve)]


def _error(message):
    sys.stderr.write(f"heraldry: error: {message}\n")


def cmd_serve(args):
    from ..extras import require
    require("zmq", "heraldry serve")        # before any board is touched (MissingExtra: exit 2)
    require("prometheus_client", "heraldry serve")
    from ..sim.twin import Twin, TwinError
    from .cli import BOARDS, _is_port, acquisition_from_args, board_from_identity
    from .driver import Device, DeviceError
    from .serve import Server, ServeError, check_bind
    from .transport import SerialTransport, TransportError
    args.duration = 1.0         # acquisition_from_args checks it; a server has none
    try:
        check_bind(args.bind, args.token)
        for name in ("pub_port", "control_port", "metrics_port"):
            if not 0 <= getattr(args, name) <= 65535:
                raise ServeError(f"--{name.replace('_', '-')} must be 0..65535")
        if args.board != "sim" and not _is_port(args.board):
            raise ServeError(f"--board {args.board}: serve needs sim or a serial device path")
        board = BOARDS["sim"] if args.board == "sim" else None
        acq = None
        if board is not None:
            acq, notes = acquisition_from_args(args, board)
            for note in notes:
                sys.stderr.write(f"heraldry: note: {note}\n")
    except (ConfigError, ServeError) as error:
        _error(error)
        return EXIT_USAGE

    def terminate(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, terminate)
    twin = device = server = None
    try:
        if board is not None:
            twin = Twin(channels=acq.channels, rules=acq.rules, clock_hz=int(acq.clock_hz),
                        baud=board["baud"])
            twin.start()
            transport, timeout = SerialTransport(twin.port, board["baud"]), 3.0
        else:
            transport, timeout = SerialTransport(args.board, args.baud), 1.0
        device = Device(transport, timeout=timeout)
        identity = device.identify()
        if board is None:
            board = board_from_identity(identity)
        try:
            server = Server(
                device, args, lambda a: acquisition_from_args(a, board), bind=args.bind,
                pub_port=args.pub_port, control_port=args.control_port,
                metrics_port=args.metrics_port, token=args.token, rates_hz=args.rates_hz,
                hwm=args.hwm, sndbuf=args.sndbuf, start=not args.no_start,
                herald_floor_hz=args.herald_floor,
                log=lambda message: sys.stderr.write(f"heraldry: {message}\n"))
        except (ConfigError, ServeError) as error:
            _error(error)
            return EXIT_USAGE
        host = args.bind
        endpoints = {"pub": f"tcp://{host}:{server.pub_port}",
                     "control": f"tcp://{host}:{server.control_port}",
                     "metrics": f"http://{host}:{server.metrics_port}/metrics"}
        sys.stdout.write(json.dumps(endpoints) + "\n")
        sys.stdout.flush()
        if not args.quiet:
            sys.stderr.write(f"heraldry: serving {transport.name} ({identity.channels} channels, "
                             f"{identity.clock_hz / 1e6:g} MHz): events and rates on "
                             f"{endpoints['pub']}, control on {endpoints['control']}, "
                             f"{endpoints['metrics']}. Ctrl-C to stop.\n")
        server.serve_forever()
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    except (TwinError, DeviceError, TransportError) as error:
        _error(error)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)    # a second SIGTERM must not cut this
        try:
            if server is not None:
                server.close()
            if device is not None:
                device.close()
            if twin is not None:
                twin.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)
