"""``heraldry link A.ptu B.ptu``: coincidences across two boards recorded with their own clocks.

Reads two T2 PTU files (board 1 and board 2), finds and tracks the offset and frequency
difference of board 2's time base from the photon pairs both saw (:mod:`heraldry.sync`), and
prints the lock state, offset, ppm, residual jitter, the estimated window misses and the
cross-node coincidence rates (the reference model's windows on the merged stream). Exit status
0 when locked at the end, 1 when lock was never gained or is lost at the end, 2 for bad options
or a file that cannot be read.
"""

import sys

import numpy as np

from .cli import _error

__all__ = ["register", "cmd_link"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _channel_list(text):
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"channels must be comma-separated numbers, not {text!r}") from None


def register(subparsers):
    """Add ``link`` to the ``heraldry`` sub-parsers."""
    p = subparsers.add_parser(
        "link", help="coincidences across two boards' PTU files (offset and drift tracked)")
    p.add_argument("file_a", help="board 1's PTU file (its time base is kept)")
    p.add_argument("file_b", help="board 2's PTU file (rescaled onto board 1's)")
    p.add_argument("--window-ns", type=float, default=20.0,
                   help="coincidence window (default 20 ns)")
    p.add_argument("--bin-ps", type=float, default=1000.0,
                   help="time bin of the merged stream (default 1000 ps; window/bin <= 1023)")
    p.add_argument("--sync-a", default=None, metavar="CH,...",
                   help="board 1's channels that see the pairs (default: all)")
    p.add_argument("--sync-b", default=None, metavar="CH,...",
                   help="board 2's channels that see the pairs (default: all)")
    p.add_argument("--max-offset-us", type=float, default=200.0,
                   help="offset search range +- (default 200 us)")
    p.add_argument("--max-ppm", type=float, default=100.0,
                   help="frequency search range +- (default 100 ppm)")
    p.add_argument("--acquire-s", type=float, default=0.5,
                   help="data per acquisition (default 0.5 s)")
    p.add_argument("--block-ms", type=float, default=10.0,
                   help="tracking loop block (default 10 ms)")
    p.add_argument("--untracked", action="store_true",
                   help="keep the first offset, no frequency tracking (a fixed calibration)")
    return [("link", cmd_link)]


def _read(path):
    """Tag times (seconds) and input channels of a PTU file. In our files the header's channel
    map tells inputs from herald and coincidence records (left out); in others every photon
    record is a tag of its channel."""
    from .ptu import read_ptu
    from .replay import _channel_map, _json_tag
    data = read_ptu(path)
    keep = data.photons
    channel = data.channel.astype(np.int64)
    cmap = _json_tag(data.tags, "Heraldry_ChannelMap")
    if cmap:
        inputs, _, _ = _channel_map(cmap)
        number = np.full(64, -1, np.int64)
        for c, ptu_channel in inputs.items():
            number[ptu_channel] = c
        channel = number[channel]
        keep = keep & (channel >= 0)
    return data.time_ps[keep].astype(np.float64) * 1e-12, channel[keep]


def cmd_link(args):
    from ..sync import SyncError, link
    try:
        sync_a = _channel_list(args.sync_a) if args.sync_a else None
        sync_b = _channel_list(args.sync_b) if args.sync_b else None
        for name, value in (("--window-ns", args.window_ns), ("--bin-ps", args.bin_ps),
                            ("--max-offset-us", args.max_offset_us),
                            ("--acquire-s", args.acquire_s), ("--block-ms", args.block_ms)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, not {value:g}")
        if not args.max_ppm >= 0:
            raise ValueError(f"--max-ppm must be >= 0, not {args.max_ppm:g}")
    except ValueError as error:
        _error(error)
        return EXIT_USAGE
    streams = []
    for path in (args.file_a, args.file_b):
        try:
            streams.append(_read(path))
        except (OSError, ValueError) as error:
            _error(f"cannot read {path}: {getattr(error, 'strerror', None) or error}")
            return EXIT_USAGE
    (a, ca), (b, cb) = streams
    try:
        result = link(a, b, channels_a=ca, channels_b=cb, sync_a=sync_a, sync_b=sync_b,
                      window_s=args.window_ns * 1e-9, bin_s=args.bin_ps * 1e-12,
                      block_s=args.block_ms * 1e-3, acquire_s=args.acquire_s,
                      track=not args.untracked, max_offset_s=args.max_offset_us * 1e-6,
                      max_ppm=args.max_ppm)
    except SyncError as error:
        _error(error)
        return EXIT_USAGE
    out = sys.stdout
    fit = result.fit
    out.write(f"lock state: {result.state} (losses {len(result.losses)}, locks "
              f"{len(result.locks)}; synchronised {result.synced_s:.3f} s)\n")
    if fit is None:
        out.write("no correlation peak found: no offset, nothing merged\n")
        return EXIT_FAILED
    out.write(f"offset: {fit.offset_s * 1e6:.6f} us at board-1 time {fit.t_ref_s:.6f} s\n")
    out.write(f"frequency: {fit.ppm:+.4f} ppm (board 2 against board 1)\n")
    out.write(f"residual jitter: {fit.jitter_s * 1e12:.0f} ps rms\n")
    out.write(f"window misses (estimated): {result.misses * 100:.2f} %\n")
    span = max(result.synced_s, 1e-12)
    na = result.channels_a
    for c in range(na + result.channels_b):
        board, ch = (1, c) if c < na else (2, c - na)
        count = int(np.count_nonzero(result.tags["channel"] == c))
        out.write(f"singles board {board} ch {ch} (merged ch {c}): {count / span:,.1f} /s\n")
    out.write(f"cross-node coincidences: {result.cross:,} ({result.cross_rate_hz:,.1f} /s)\n")
    return EXIT_OK if result.state == "locked" else EXIT_FAILED
