"""``heraldry serve``: own one board and publish it to many watchers (:mod:`heraldry.host.serve`).

``heraldry serve --board sim|PORT [acquire's configuration options] [--bind 127.0.0.1]
[--pub-port 5560] [--control-port 5561] [--metrics-port 9560] [--token SECRET]
[--rates-hz 2] [--status-interval S] [--hwm 1000] [--sndbuf BYTES] [--herald-floor HZ]
[--car-floor CAR] [--scenario FILE.toml] [--loopback H:C] [--no-start] [--baud B]``

The board is opened with :func:`heraldry.host.tagger.open` (``--baud``, else the known boards'
rates tried in turn; with ``--scenario``, the virtual board whose pins play the scenario,
:func:`heraldry.sim.scenario.open_board`); the server gets the
:class:`~heraldry.host.tagger.Tagger` and the configuration as a dict of acquire options, checked
by :func:`heraldry.host.cli.acquisition_from_args` here, in the command-line layer; it runs the
board with :meth:`~heraldry.host.tagger.Tagger.run`. With ``--loopback H:C`` the virtual board
is started here with a simulated jumper from herald output ``H`` to input ``C``
(:class:`heraldry.sim.twin.Twin` ``loopback``), and the server times the pulses that come back
(``heraldry_loopback_latency_seconds``).

Starts acquiring at once (unless ``--no-start``) and runs until Ctrl-C, SIGTERM or SIGHUP,
leaving the board stopped. When ready it prints one JSON line on stdout: ``{"pub":
"tcp://...", "control": "tcp://...", "metrics": "http://.../metrics"}``. Port 0 picks a free port.
Exit status: 0 after Ctrl-C/SIGTERM/SIGHUP; 2 bad options (one line on stderr: e.g. a
non-loopback ``--bind`` without ``--token``, a port in use, a scenario file that does not
check out, a ``--board`` path that is no serial device, a ``--status-interval`` the link cannot
carry, a ``--loopback`` without a rule on its pin or into an input a rule uses); 1 the board
cannot be started or does not answer.
"""

import json
import signal
import sys

from .cli import _error
from .config import ConfigError

__all__ = ["register", "cmd_serve"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: Signals that stop the server like Ctrl-C (exit status 0, the board left stopped).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

# Options of ``heraldry acquire`` that serve shares: the board, and the configuration options
# (an allow-list: acquire's output options, present and future, mean nothing to a server).
_SHARED = {"board", "config", "quiet"}


def register(subparsers):
    """Add ``serve``, with every configuration option of ``acquire`` (shared, not restated)."""
    from .serve import CONFIG_KEYS, DEFAULT_CONTROL_PORT, DEFAULT_METRICS_PORT, DEFAULT_PUB_PORT
    p = subparsers.add_parser("serve", help="own one board; publish events, rates and metrics "
                                            "(ZeroMQ, Prometheus)")
    acquire = subparsers.choices["acquire"]
    for action in acquire._actions:
        if action.dest in _SHARED or action.dest in CONFIG_KEYS:
            p._add_action(action)       # what argparse's parents= does, without its -h clash
    p.add_argument("--baud", type=int, default=None,
                   help="UART rate of a board on a serial port (default: tried in turn, "
                        "3000000 (the real boards) then 12000000)")
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
    p.add_argument("--status-interval", type=float, default=None, metavar="S",
                   help="device seconds between the board's counter snapshots (default: the "
                        "rates period on a serial port; 0.02 on the virtual board, whose "
                        "device time runs slower than the wall's)")
    p.add_argument("--hwm", type=int, default=1000,
                   help="PUB send high-water mark, messages per subscriber (default 1000)")
    p.add_argument("--sndbuf", type=int, default=None, metavar="BYTES",
                   help="kernel send buffer per subscriber connection (default: the system's)")
    p.add_argument("--herald-floor", type=float, default=0.0, metavar="HZ",
                   help="herald rate to alert below, exported for the alert and SLO "
                        "rules (default 0: none)")
    p.add_argument("--car-floor", type=float, default=0.0, metavar="CAR",
                   help="coincidence-to-accidental ratio of channels 0 and 1 to alert below, "
                        "exported for the alert rules (default 0: none)")
    p.add_argument("--scenario", default=None, metavar="FILE.toml",
                   help="--board sim only: its pins play this fault scenario (a photon-pair "
                        "source with scheduled faults; docs/serve.md); the test signal is off")
    p.add_argument("--loopback", default=None, metavar="H:C",
                   help="--board sim only: a simulated jumper from herald output H to the spare "
                        "input C; the pulses that come back are timed "
                        "(heraldry_loopback_latency_seconds)")
    p.add_argument("--no-start", action="store_true", help="wait for a start command")
    return [("serve", cmd_serve)]


def _acquire_options(args, config=None):
    """``args`` as ``heraldry acquire``'s options (for :func:`acquisition_from_args`), with
    ``config`` (a configure request's options) on top. The Namespace stays in this layer; the
    server sees a dict. ``--baud`` is serve's own (None: found by ``heraldry.open``)."""
    from argparse import Namespace
    options = {key: value for key, value in vars(args).items()
               if key not in ("baud", "scenario", "car_floor", "loopback")}
    return Namespace(**{**options, **(config or {})})


def cmd_serve(args):
    from ..extras import require
    require("zmq", "heraldry serve")        # before any board is touched (MissingExtra: exit 2)
    require("prometheus_client", "heraldry serve")
    from ..sim.scenario import ScenarioError
    from ..sim.twin import TwinError
    from .cli import _is_port, acquisition_from_args, board_from_identity
    from .tagger import STATUS_INTERVAL_S, VIRTUAL_BOARDS
    from .driver import DeviceError
    from .serve import CONFIG_KEYS, Server, ServeError, check_bind, with_loopback
    from .tagger import open as open_board
    from .transport import TransportError
    args.duration = 1.0         # acquisition_from_args checks it; a server has none
    try:
        check_bind(args.bind, args.token)
        for name in ("pub_port", "control_port", "metrics_port"):
            if not 0 <= getattr(args, name) <= 65535:
                raise ServeError(f"--{name.replace('_', '-')} must be 0..65535")
        if args.board != "sim" and not _is_port(args.board):
            raise ServeError(f"--board {args.board}: serve needs sim or a serial device path")
        if args.baud is not None and args.baud <= 0:
            raise ServeError(f"--baud must be positive, not {args.baud}")
        if args.car_floor < 0:
            raise ServeError(f"--car-floor must be 0 or more, not {args.car_floor:g}")
        if args.scenario is not None:
            if args.board != "sim":
                raise ServeError("--scenario plays on the virtual board: use --board sim")
            if args.test_signal not in (None, "off"):
                raise ServeError(f"--scenario drives the pins: --test-signal {args.test_signal} "
                                 f"would hide them (leave it out)")
            args.test_signal = "off"
        loopback = None
        if args.loopback is not None:
            from .cmd_selftest import _jumper
            if args.board != "sim":
                raise ServeError("--loopback is the virtual board's simulated jumper: use "
                                 "--board sim")
            if args.scenario is not None:
                raise ServeError("--loopback and --scenario exclude each other (the scenario "
                                 "drives every input)")
            loopback = _jumper(args.loopback, "--loopback")
            from .tagger import SIM_BOARD
            if args.baud is not None and args.baud > SIM_BOARD["clock_hz"] // 4:
                raise ServeError(f"--baud must be 1..{SIM_BOARD['clock_hz'] // 4} on the "
                                 f"virtual board, not {args.baud}")
        board = VIRTUAL_BOARDS["sim"] if args.board == "sim" else None
        acq = scenario = None
        if board is not None:
            acq, notes = acquisition_from_args(_acquire_options(args), board)
            for note in notes:
                sys.stderr.write(f"heraldry: note: {note}\n")
        if args.scenario is not None:
            from ..sim.scenario import load
            scenario = load(args.scenario, channels=acq.channels)
        if loopback is not None:
            from .tagger import SIM_BOARD
            with_loopback(acq, loopback, acq.channels, SIM_BOARD["rules"])
    except (ConfigError, ServeError, ScenarioError) as error:
        _error(error)
        return EXIT_USAGE

    def terminate(signum, frame):
        raise KeyboardInterrupt
    # SIGTERM (kill, a service manager) and SIGHUP (the terminal closed) stop it as Ctrl-C does:
    # left to their default action they would end the process with the board still running.
    previous = {s: signal.signal(s, terminate) for s in _STOP_SIGNALS}
    tagger = server = twin = None
    try:
        # One way to open a board (heraldry.open): the virtual board with the channels asked
        # for, a serial port at --baud or at the rate that identifies.
        if scenario is not None:
            from ..sim.scenario import open_board as open_scenario
            tagger = open_scenario(scenario, **({} if args.baud is None else
                                                {"baud": args.baud}))
        elif loopback is not None:
            # The virtual board with its simulated jumper, started here (open("sim") has none).
            from ..sim.twin import Twin
            from .tagger import SIM_BOARD
            twin = Twin(channels=acq.channels, rules=SIM_BOARD["rules"],
                        clock_hz=SIM_BOARD["clock_hz"], baud=args.baud or SIM_BOARD["baud"],
                        loopback=[loopback])
            twin.start()
            tagger = open_board(twin.port, baud=twin.baud, timeout=3.0)
        else:
            tagger = open_board(args.board, baud=args.baud,
                                channels=acq.channels if board is not None else None)
        identity = tagger.identity
        transport = tagger.device.transport
        status_interval = args.status_interval
        if status_interval is None and args.board == "sim":
            # The Verilated board runs tens of times slower than real time: one snapshot per
            # rates period of device time would refresh the rates every ten wall seconds or so.
            status_interval = STATUS_INTERVAL_S
        if board is None:
            board = board_from_identity(identity)

        def acquisition_for(config):
            # The configure requests' options on top of the command line's, checked as acquire
            # checks them (the Namespace stays in this command-line layer).
            return acquisition_from_args(_acquire_options(args, config), board)
        try:
            server = Server(
                tagger, {key: getattr(args, key) for key in CONFIG_KEYS}, acquisition_for,
                bind=args.bind,
                pub_port=args.pub_port, control_port=args.control_port,
                metrics_port=args.metrics_port, token=args.token, rates_hz=args.rates_hz,
                hwm=args.hwm, sndbuf=args.sndbuf, start=not args.no_start,
                herald_floor_hz=args.herald_floor, car_floor=args.car_floor,
                status_interval=status_interval, loopback=loopback,
                log=lambda message: sys.stderr.write(f"heraldry: {message}\n"))
        except (ConfigError, ServeError) as error:
            # The run's check names the API's keyword: name the option.
            _error(str(error).replace("status_interval ", "--status-interval ", 1))
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
    except ConfigError as error:        # the port: missing, not a serial device, no permission
        _error(error)
        return EXIT_USAGE
    except (TwinError, DeviceError, TransportError) as error:
        _error(error)
        return EXIT_FAILED
    finally:
        for s in _STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)      # a second signal must not cut this short
        try:
            if server is not None:
                server.close()
            if tagger is not None:
                tagger.close()
            if twin is not None:
                twin.stop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
