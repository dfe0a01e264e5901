"""Fuzzing (issue 6, item 4): the stream decoders and the PTU reader on at least 10^5 inputs
each, zero crashes, zero hangs.

Inputs are mutations of valid inputs (bit flips, bytes overwritten, truncation at either end,
random insertions, deletions and duplications of ranges, splices of two inputs, random chunking
for the decoder; for PTU files also random header tag types, values, sizes, indices, names and
JSON contents) plus pure random bytes. Hypothesis draws one seed per example; each example runs
a batch of inputs generated from that seed with numpy (hypothesis' per-example cost would not
fit 10^5 inputs in the CI budget otherwise). Exact counts:

* decoder: 2 tests x 250 examples x 200 inputs = 100 000 inputs (``make test-slow``; ``make test``
  runs the first 25 examples of each test, 10 000 inputs), each decoded by the reference
  :func:`heraldry.wire.decode_bytes` and by :class:`heraldry.host.decoder.StreamDecoder` (in
  random chunks), which must agree exactly (``test_decoder.assert_same``: events, replies,
  status, losses, counters); neither may raise; the fast decoder's times of each kind never go
  backwards, its counters are never negative;
* PTU: 2 tests x 250 examples x 200 inputs = 100 000 files (``make test-slow``; 10 000 in
  ``make test``), each read by :func:`read_ptu` and
  replayed by :class:`~heraldry.host.replay.ReplaySource` (+ :func:`acquire_replay` when it
  opens), both from memory (a file object: the same code as from a path once opened), which
  may raise :class:`~heraldry.host.ptu.PTUError` (a ValueError with one line for the user) and
  nothing else; one input per batch also goes through a file on disk.

Hang guards: a watchdog thread checks every 0.1 s how long the current input has run; past
``HANG_S`` it prints the input's seed and index and every thread's stack and ends the test process
(a failure naming the input). As a backstop for a hang that holds the GIL (which would stop that
thread too), ``faulthandler.dump_traceback_later`` is armed for each batch of ``BATCH`` inputs
(``BATCH_HANG_S``; a batch normally takes well under 1 s): it works from C and interrupts even
compiled code, which no Python-level timeout could. Each test asserts at the end how many
inputs it ran.
"""

import faulthandler
import io
import json
import os
import struct
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from heraldry.host.events import EVENT_DTYPE
from heraldry.host.ptu import ChannelMap, PTUError, PTUWriter, read_ptu
from heraldry.host.replay import ReplaySource, acquire_replay
from heraldry.protocol import Kind
from heraldry.wire import encode_stream

from test_decoder import assert_same, random_cuts
from test_wire import random_records

HANG_S = 5.0
BATCH_HANG_S = 60.0
EXAMPLES = 250                  # the full budget: make test-slow
SAMPLE = 25                     # make test: the same seeds' first examples
BATCH = 200
#: Each fuzz test at its full budget (slow tier) and at a sample of it (fast tier).
BUDGETS = [pytest.param(SAMPLE, id="sample"),
           pytest.param(EXAMPLES, id="full", marks=pytest.mark.slow)]
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                phases=[Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck))


class _Watchdog:
    """The per-input hang guard (module docstring)."""

    def __init__(self):
        self.current = None         # (seed, index, start) of the input running now
        self._thread = None

    def watch(self, seed, index):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fuzz-watchdog", daemon=True)
            self._thread.start()
        self.current = (seed, index, time.monotonic())

    def idle(self):
        self.current = None

    def _run(self):
        while True:
            time.sleep(0.1)
            current = self.current
            if current is not None and time.monotonic() - current[2] > HANG_S:
                sys.stderr.write(f"\nfuzz: input {current[1]} of seed {current[0]} has run for "
                                 f"more than {HANG_S:g} s: a hang\n")
                faulthandler.dump_traceback(all_threads=True)
                os._exit(3)


WATCHDOG = _Watchdog()


def _run_batches(batch, examples):
    """Run ``batch(seed)`` for ``examples`` hypothesis seeds; returns the number of inputs run."""
    done = []

    @settings(FUZZ, max_examples=examples)
    @given(st.integers(0, 2 ** 63 - 1))
    def run(seed):
        faulthandler.dump_traceback_later(BATCH_HANG_S, exit=True)
        try:
            done.append(batch(seed))
        finally:
            faulthandler.cancel_dump_traceback_later()
            WATCHDOG.idle()
    run()
    return sum(done)


# -- byte-level mutations ------------------------------------------------------------------------

def mutate(rng, data, other, *, keep=0):
    """1..4 random mutations of ``data`` (``other``: a second input for splices); the first
    ``keep`` bytes are left alone (a PTU magic, so that the header parser is reached)."""
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        n = len(data)
        op = rng.integers(9)
        pos = int(rng.integers(keep, n)) if n > keep else n
        if op == 0 and n > keep:                       # bit flips
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(keep, n))] ^= 1 << int(rng.integers(8))
        elif op == 1 and n > keep:                     # bytes overwritten
            data[pos] = int(rng.integers(256))
        elif op == 2:                                  # truncated at the end
            del data[max(keep, int(rng.integers(0, n + 1))):]
        elif op == 3:                                  # truncated at the start (joined late)
            del data[keep:keep + int(rng.integers(0, max(1, n - keep)))]
        elif op == 4:                                  # random bytes inserted
            data[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 16)), np.uint8).tobytes()
        elif op == 5:                                  # a range deleted
            del data[pos:pos + int(rng.integers(1, 32))]
        elif op == 6:                                  # a range duplicated
            end = pos + int(rng.integers(1, 64))
            data[pos:pos] = data[pos:end]
        elif op == 7:                                  # splice with another input
            cut = int(rng.integers(0, len(other) + 1))
            data = data[:pos] + bytearray(other[cut:])
        else:                                          # a range swapped with another input's
            cut = int(rng.integers(0, len(other) + 1))
            data[pos:pos + 16] = other[cut:cut + 16]
    return bytes(data)


# -- the stream decoders -------------------------------------------------------------------------

#: (channels, rules, fine_bits) -> valid streams: several segments, side records, big gaps.
_SHAPES = [(1, 1, 0), (3, 2, 0), (4, 2, 0), (8, 2, 3)]


def _streams():
    rng = np.random.default_rng(2026)
    out = {}
    for shape in _SHAPES:
        channels, rules, fine_bits = shape
        out[shape] = [
            encode_stream(random_records(rng, channels, rules, fine_bits,
                                         n=int(rng.integers(3, 16)), big_gaps=k % 2 == 0,
                                         start=int(rng.integers(0, 2 ** 40))),
                          channels, rules, fine_bits, anchor_interval=2 ** int(rng.integers(4, 12)))
            for k in range(12)]
    return out


STREAMS = _streams()


def _decode_one(data, shape, cuts):
    channels, rules, fine_bits = shape
    events, replies, status, lost, errors = assert_same(data, channels, rules, fine_bits,
                                                        cuts=cuts)
    for kind in (Kind.TAG, Kind.HERALD, Kind.COINCIDENCE):
        times = events["time_ps"][events["kind"] == kind.value]
        assert np.all(np.diff(times) >= 0), (kind, data.hex())
    assert all(value >= 0 for value in errors.values())
    assert all(count > 0 for count in lost.values())
    tags = events[events["kind"] == Kind.TAG.value]
    assert np.all(tags["channel"] < channels)


_warmed_up = []


def _warm_up():
    """Decode one valid stream of each shape outside the hang guard: on a cold cache numba
    compiles the decoder here (several seconds), which is not a hang."""
    if not _warmed_up:
        for shape in _SHAPES:
            _decode_one(STREAMS[shape][0], shape, ())
        _warmed_up.append(True)


def _decoder_batch(seed, mutated):
    _warm_up()
    rng = np.random.default_rng(seed)
    for index in range(BATCH):
        shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
        pool = STREAMS[shape]
        if mutated:
            data = mutate(rng, pool[int(rng.integers(len(pool)))],
                          pool[int(rng.integers(len(pool)))])
        else:
            n = int(rng.integers(0, 80))
            if rng.random() < 0.5:        # start bytes (bit 7 set) as often as the others
                data = rng.integers(0, 256, n, np.uint8).tobytes()
            else:
                data = (rng.integers(0, 128, n, np.uint8)
                        | (rng.random(n) < 0.3).astype(np.uint8) << 7).tobytes()
        cuts = random_cuts(rng, len(data), int(rng.integers(1, 64)))
        WATCHDOG.watch(seed, index)
        _decode_one(data, shape, cuts)
    return BATCH


@pytest.mark.parametrize("examples", BUDGETS)
def test_fuzz_decoders_on_mutated_streams(examples):
    """100 000 inputs in all with the next test at the full budget; see the module docstring."""
    _warm_up()      # outside the 60 s batch guard: a cold compile on a busy machine may need more
    assert _run_batches(lambda seed: _decoder_batch(seed, True), examples) == examples * BATCH


@pytest.mark.parametrize("examples", BUDGETS)
def test_fuzz_decoders_on_random_bytes(examples):
    _warm_up()
    assert _run_batches(lambda seed: _decoder_batch(seed, False), examples) == examples * BATCH


# -- the PTU reader and the replay -----------------------------------------------------------------

def _ptu_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _valid_files(folder):
    """Files to mutate: ours (tags, heralds, coincidences, losses, overflows, a Heraldry_Config
    and channel map) and the head of a file PicoQuant's software wrote."""
    from pathlib import Path
    rng = np.random.default_rng(7)
    files = []
    for k, (channels, rules, patterns) in enumerate([(2, 1, ()), (4, 2, (3, 12)), (1, 0, ())]):
        path = folder / f"ours{k}.ptu"
        n = 40
        events = np.zeros(n, EVENT_DTYPE)
        events["time_ps"] = np.cumsum(rng.geometric(1 / (2 ** (20 + k * 4)), n)) * 10_000
        events["channel"] = rng.integers(0, channels, n)
        events["count"] = 1
        if rules:
            events["kind"][5::7] = Kind.HERALD.value
            events["channel"][5::7] = rng.integers(0, rules, len(events[5::7]))
        if patterns:
            events["kind"][3::9] = Kind.COINCIDENCE.value
            events["pattern"][3::9] = patterns[0]
        from heraldry.host.config import Acquisition
        mask = sum(1 << p for p in patterns)
        acq = Acquisition(channels=channels, rules=max(rules, 1), coincidence_record_mask=mask)
        writer = PTUWriter.for_acquisition(path, acq, summary_bytes=256) if rules else \
            PTUWriter(path, bin_ps=10_000, channel_map=ChannelMap(channels), summary_bytes=64)
        writer.write_block(events)
        writer.close(summary={"k": k})
        files.append(_fixed_guid_and_time(_ptu_bytes(path)))
    hydraharp = Path(__file__).parent / "data" / "hydraharp_v30_t2.ptu"
    data = _ptu_bytes(hydraharp)
    with open(hydraharp, "rb") as f:
        from heraldry.host.ptu import read_tags
        _, offset = read_tags(f)
    files.append(data[:offset + 4 * 300])
    return files


def _fixed_guid_and_time(data):
    """The file with a constant File_GUID and File_CreatingTime, so that a seed names the same
    inputs in every run."""
    data = bytearray(data)
    for start, end in _tags(bytes(data))[0]:
        name = data[start:start + 32].rstrip(b"\0")
        if name == b"File_GUID":
            guid = b"{00000000-0000-0000-0000-000000000000}\0"
            data[start + _TAG.size:start + _TAG.size + len(guid)] = guid
        elif name == b"File_CreatingTime":
            data[start + 40:start + 48] = struct.pack("<d", 46000.5)
    return bytes(data)


_TAG = struct.Struct("<32siI8s")
_TYPES = [0xFFFF0008, 0x00000008, 0x10000008, 0x11000008, 0x20000008, 0x21000008,
          0x2001FFFF, 0x4001FFFF, 0x4002FFFF, 0xFFFFFFFF]
_NAMES = [b"TTResultFormat_TTTRRecType", b"MeasDesc_GlobalResolution",
          b"TTResult_NumberOfRecords", b"Heraldry_ChannelMap", b"Heraldry_Config",
          b"HW_InpChannels", b"Header_End", b"MeasDesc_AcquisitionTime", b"Heraldry_EventsLost",
          b"TTResult_MDescWarningFlags"]
_VALUES = [0, 1, -1, 2 ** 63 - 1, -2 ** 63, 0x01010204, 0x00010207, 2 ** 31, 64, 1 << 40]


def _tags(data):
    """``[(start, end)]`` of each header tag of a valid file, and the data offset."""
    spans, pos = [], 16
    while pos + _TAG.size <= len(data):
        name, _, code, value = _TAG.unpack_from(data, pos)
        end = pos + _TAG.size
        if code in (0x2001FFFF, 0x4001FFFF, 0x4002FFFF, 0xFFFFFFFF):
            end += struct.unpack("<q", value)[0]
        if not pos < end <= len(data):              # an earlier mutation broke the chain
            break
        spans.append((pos, end))
        pos = end
        if name.rstrip(b"\0") == b"Header_End":
            break
    return spans, pos


def _json_mutation(rng):
    """A Heraldry_ChannelMap or Heraldry_Config that parses but may not make sense."""
    weird = [None, -1, 0, 3, 63, 64, 2 ** 70, "3", "0b11", 1.5, [], {}, True, "x"]
    pick = weird[int(rng.integers(len(weird)))]
    if rng.random() < 0.5:
        cmap = {"inputs": {"0": 0, "1": 1}, "herald_rules": {"0": 2},
                "coincidence_patterns": {"0b11": 3}}
        table = ["inputs", "herald_rules", "coincidence_patterns"][int(rng.integers(3))]
        if rng.random() < 0.3:
            cmap[table] = pick
        else:
            cmap[table][str(pick) if rng.random() < 0.5 else "0"] = pick
        return b"Heraldry_ChannelMap", json.dumps(cmap)
    acq = {"channels": 2, "rules": 1, "bin_ps": 10_000, "window_bins": 1}
    acq[["channels", "rules", "bin_ps", "window_bins", "delays_bins", "nonsense"][
        int(rng.integers(6))]] = pick
    return b"Heraldry_Config", json.dumps({"acquisition": acq})


def mutate_header(rng, data):
    """A valid file with one header tag changed: its type, value, size, index or name, or a
    Heraldry JSON tag rewritten, or a tag dropped or repeated."""
    spans, _ = _tags(data)
    if not spans:
        return data
    start, end = spans[int(rng.integers(len(spans)))]
    tag = bytearray(data[start:end])
    op = rng.integers(7)
    if op == 0:
        tag[40:44] = struct.pack("<I", _TYPES[int(rng.integers(len(_TYPES)))]
                                 if rng.random() < 0.8 else int(rng.integers(2 ** 32)))
    elif op == 1:
        value = (_VALUES[int(rng.integers(len(_VALUES)))] if rng.random() < 0.6
                 else int(rng.integers(-2 ** 63, 2 ** 63 - 1)))
        tag[40:48] = struct.pack("<q", value) if rng.random() < 0.7 else struct.pack(
            "<d", [float("nan"), float("inf"), -1e-9, 1e300, 0.0, 1e-12][int(rng.integers(6))])
    elif op == 2:
        tag[32:36] = struct.pack("<i", int(rng.choice([-2, -1, 0, 1, 7, 2 ** 31 - 1])))
    elif op == 3:
        tag[0:32] = _NAMES[int(rng.integers(len(_NAMES)))].ljust(32, b"\0")
    elif op == 4:
        name, text = _json_mutation(rng)
        payload = text.encode() + b"\0"
        payload += b"\0" * (-len(payload) % 8)
        tag = bytearray(_TAG.pack(name.ljust(32, b"\0"), -1, 0x4001FFFF,
                                  struct.pack("<q", len(payload))) + payload)
    elif op == 5:
        tag = bytearray()
    else:
        tag = tag + tag
    return data[:start] + bytes(tag) + data[end:]


def _read_one(data, path=None):
    """Every reader of a PTU file on ``data`` (from memory, and from ``path`` if given):
    read_ptu and the replay; PTUError is the only exception allowed."""
    try:
        from_bytes = read_ptu(io.BytesIO(data))
    except PTUError:
        from_bytes = None
    if path is not None:
        path.write_bytes(data)
        try:
            from_file = read_ptu(path)
        except PTUError:
            assert from_bytes is None
            return
        assert from_bytes is not None and from_bytes.records == from_file.records
        np.testing.assert_array_equal(from_bytes.time_ps, from_file.time_ps)
    if from_bytes is None:
        return
    try:
        source = ReplaySource(io.BytesIO(data) if path is None else path)
    except PTUError:
        return
    result, checks = acquire_replay(source)
    assert len(result.events) == len(source.events) and all(
        isinstance(v, bool) for v in checks.values())


def _ptu_batch(seed, folder, files, header):
    rng = np.random.default_rng(seed)
    for index in range(BATCH):
        base = files[int(rng.integers(len(files)))]
        r = rng.random()
        if header:
            data = mutate_header(rng, base)
            if rng.random() < 0.3:
                data = mutate_header(rng, data)
        elif r < 0.15:                                 # pure random bytes
            data = rng.integers(0, 256, int(rng.integers(0, 600)), np.uint8).tobytes()
        elif r < 0.25:                                 # random bytes after the magic
            data = b"PQTTTR\0\0" + rng.integers(0, 256, int(rng.integers(0, 600)),
                                                np.uint8).tobytes()
        else:
            data = mutate(rng, base, files[int(rng.integers(len(files)))], keep=8)
        WATCHDOG.watch(seed, index)
        _read_one(data, folder / "fuzz.ptu" if index == 0 else None)
    return BATCH


@pytest.mark.parametrize("examples", BUDGETS)
def test_fuzz_ptu_reader_bytes(tmp_path, examples):
    """100 000 files in all with the next test at the full budget; see the module docstring."""
    files = _valid_files(tmp_path)
    assert _run_batches(lambda seed: _ptu_batch(seed, tmp_path, files, False), examples) \
        == examples * BATCH


@pytest.mark.parametrize("examples", BUDGETS)
def test_fuzz_ptu_reader_header_tags(tmp_path, examples):
    files = _valid_files(tmp_path)
    assert _run_batches(lambda seed: _ptu_batch(seed, tmp_path, files, True), examples) \
        == examples * BATCH
