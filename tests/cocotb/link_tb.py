"""cocotb testbenches of the converted link bench (``test_link_cocotb.LinkBench``: Encoder ->
UARTTx, UARTRx), in Verilator. Run by ``tests/cocotb/test_link_cocotb.py``; not collected by
pytest itself.

The UART on the other end is ``cocotbext.uart`` (``UartSink`` on ``uart_tx``, ``UartSource`` on
``uart_rx``), an implementation independent of the gateware's; the byte stream is checked
against the reference codec :mod:`heraldry.wire` (``encode_stream`` of the items in the order
and cycles the encoder took them, and ``decode_bytes`` back to the records fed in). Parameters
come from the environment (``LINK_*``, set by the pytest runner).
"""

import logging
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge, Timer
from cocotbext.uart import UartSink, UartSource

from heraldry import wire
from heraldry.gateware.encoder import SIDE_LAYOUT
from heraldry.protocol import (
    COARSE_BITS, LOSS_COUNT_BITS, Command, Kind, LossCause, WireKind, record_layout,
)

CHANNELS = int(os.environ.get("LINK_CHANNELS", 4))
RULES = int(os.environ.get("LINK_RULES", 2))
CLOCK_HZ = int(os.environ.get("LINK_CLOCK_HZ", 100_000_000))
BAUD = int(os.environ.get("LINK_BAUD", 12_000_000))
REF_INIT = int(os.environ.get("LINK_REF_INIT", 0))
PERIOD_PS = 10 ** 12 // CLOCK_HZ
CYCLES_PER_BYTE = 10 * CLOCK_HZ // BAUD + 1
TOP = 2 ** COARSE_BITS
LAYOUT = record_layout(0)


async def reset(dut):
    Clock(dut.clk, PERIOD_PS, unit="ps").start(start_high=True)
    dut.i__valid.value = 0
    dut.i__payload.value = 0
    dut.side__valid.value = 0
    dut.side__payload.value = 0
    dut.clear.value = 0
    dut.anchor_interval.value = 0
    dut.uart_rx.value = 1
    dut.rx__ready.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    # The models log every byte at INFO: keep the simulator log readable.
    for name in ("uart_tx", "uart_rx"):
        logging.getLogger(f"cocotb.{dut._path}.{name}").setLevel(logging.WARNING)


def pack_record(rec):
    kind = rec["kind"]
    if kind == Kind.TAG:
        payload = {"tag": {"channel": rec["channel"]}}
    elif kind == Kind.COINCIDENCE:
        payload = {"coincidence": {"pattern": rec["pattern"]}}
    elif kind == Kind.HERALD:
        payload = {"herald": {"rule": rec["rule"], "pattern": rec["pattern"]}}
    else:
        payload = {"loss": {"cause": rec["cause"], "index": rec["index"], "count": rec["count"]}}
    return LAYOUT.const({"kind": kind, "payload": payload,
                         "time": rec["time"] % TOP}).as_bits()


def pack_side(rec):
    kind = WireKind.STATUS if rec["kind"] == "status" else WireKind.REPLY
    return SIDE_LAYOUT.const({"kind": kind, "ok": rec["ok"], "seq": rec["seq"],
                              "address": rec["address"], "value": rec["value"]}).as_bits()


def make_stimulus(rng, start, bundles, mean_gap):
    """Offers ``(available cycle, stream, record)`` in order: bundles of records at increasing
    coarse times from ``start`` (unwrapped cycles), each available a few cycles after its time,
    and side records at random cycles."""
    offers, t, avail, last_t0 = [], start, 0, -1
    for _ in range(bundles):
        t += rng.choice([1, 2, rng.randrange(3, 2 * mean_gap)])
        records = []
        if rng.random() < 0.08:
            cause = rng.choice(list(LossCause))
            limit = {LossCause.MERGER_FULL: CHANNELS, LossCause.DELAY_FULL: CHANNELS,
                     LossCause.HERALD_RECORD: RULES, LossCause.COINCIDENCE_RECORD: 1,
                     LossCause.FILTER_FULL: CHANNELS}[cause]
            records.append({"kind": Kind.LOSS, "cause": cause, "index": rng.randrange(limit),
                            "count": rng.randrange(1, 2 ** LOSS_COUNT_BITS), "time": t})
        mask = rng.randrange(1, 2 ** CHANNELS)
        records += [{"kind": Kind.TAG, "channel": c, "time": t}
                    for c in range(CHANNELS) if mask >> c & 1]
        if rng.random() < 0.2:
            pattern = rng.randrange(1, 2 ** CHANNELS)
            records += [{"kind": Kind.HERALD, "rule": rule, "pattern": pattern, "time": t}
                        for rule in range(RULES) if rng.random() < 0.6]
        if rng.random() < 0.2:
            t0 = max(last_t0 + 1, t - rng.randrange(0, 1000))
            if t0 <= t:
                last_t0 = t0
                records.append({"kind": Kind.COINCIDENCE, "time": t0,
                                "pattern": rng.randrange(1, 2 ** CHANNELS)})
        avail = max(avail, t + rng.randrange(1, 30))
        offers += [(avail, "i", rec) for rec in records]
    for _ in range(bundles // 10):
        offers.append((rng.randrange(start, avail), "side", {
            "kind": rng.choice(["status", "reply"]), "ok": rng.randrange(2),
            "seq": rng.randrange(32), "address": rng.randrange(4096),
            "value": rng.randrange(2 ** 32)}))
    offers.sort(key=lambda offer: offer[0])
    return offers, avail


@cocotb.test()
async def records_arrive_over_uart(dut):
    """Random records (every kind, across a wrap of ``ref``, a clear, side records) go out of
    ``uart_tx`` at 12 Mbaud; the bytes the independent UART model receives equal the reference
    encoder's for the items as taken, and decode to the records fed in."""
    rng = random.Random(20240601)
    interval = 3000
    await reset(dut)
    dut.anchor_interval.value = interval
    sink = UartSink(dut.uart_tx, baud=BAUD, bits=8, stop_bits=1)

    await FallingEdge(dut.clk)
    first = dut.ref.value.to_unsigned()
    start = first                     # unwrapped ref; REF_INIT < 2**32, so epoch 0
    offers, _ = make_stimulus(rng, start + 20, bundles=90, mean_gap=60)
    clears = {start + 9000}
    queues = {name: [o for o in offers if o[1] == name] for name in ("i", "side")}
    heads = {"i": 0, "side": 0}
    ports = {"i": (dut.i__valid, dut.i__payload, dut.i__ready, pack_record),
             "side": (dut.side__valid, dut.side__payload, dut.side__ready, pack_side)}
    log, last_take, high_run, k = [], None, 0, start
    previous = first
    while True:
        ref = dut.ref.value.to_unsigned()
        k += (ref - previous) % TOP
        previous = ref
        assert k - start < 400_000, "the encoder did not take every item"
        shown = {}
        for name, (valid, payload, _, pack) in ports.items():
            queue, head = queues[name], heads[name]
            offer = queue[head] if head < len(queue) and queue[head][0] <= k else None
            valid.value = offer is not None
            if offer is not None:
                payload.value = pack(offer[2])
            shown[name] = offer
        dut.clear.value = k in clears
        await ReadOnly()
        if k in clears:
            log.append({"kind": "clear", "cycle": k})
        for name, (valid, _, ready, _) in ports.items():
            if shown[name] is not None and ready.value:
                log.append({**shown[name][2], "cycle": k})
                heads[name] += 1
                last_take = k
        high_run = high_run + 1 if dut.uart_tx.value else 0
        done = all(heads[name] == len(queues[name]) for name in queues)
        # Finished when everything was taken, the last segment's interval has passed (its
        # CHECK is out) and the line has been idle for more than a frame.
        if done and k - last_take > interval + 10 and high_run > 2 * CYCLES_PER_BYTE:
            break
        await FallingEdge(dut.clk)

    assert k >= TOP, "the run should cross a wrap of ref"
    data = bytes(sink.read_nowait())
    expected = wire.encode_stream(log, CHANNELS, RULES, 0, anchor_interval=interval,
                                  final_check=True)
    assert data == expected, (
        f"{len(data)} bytes received, {len(expected)} expected; first difference at "
        f"{next((j for j, (a, b) in enumerate(zip(data, expected)) if a != b), None)}")
    records, errors = wire.decode_bytes(data, CHANNELS, RULES)
    assert errors == {"decode_errors": 0, "skipped_bytes": 0, "unverified": 0}

    def strip(recs):
        out = []
        for rec in recs:
            if rec["kind"] in ("anchor", "time", "check", "clear"):
                continue
            rec = {key: value for key, value in rec.items() if key != "cycle"}
            if rec["kind"] == Kind.LOSS:
                rec.pop("time")
            out.append(rec)
        return out

    assert strip(records) == strip(log)
    kinds = {rec["kind"] for rec in records}
    assert {Kind.TAG, Kind.HERALD, Kind.COINCIDENCE, Kind.LOSS, "status", "reply"} <= kinds
    assert sum(rec["kind"] == "anchor" for rec in records) >= 5
    dut._log.info("%d records in %d bytes, %d cycles", len(log), len(data), k - start)


@cocotb.test()
async def bytes_received_over_uart(dut):
    """Bytes from the independent UART model (every value, command frames, back to back) arrive
    on ``rx`` in order; a frame with a low stop bit (driven bit by bit here) pulses
    ``framing_error`` once and yields no byte, and the receiver recovers."""
    rng = random.Random(7)
    await reset(dut)
    source = UartSource(dut.uart_rx, baud=BAUD, bits=8, stop_bits=1)
    received, errors = [], []

    async def monitor():
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if dut.rx__valid.value:
                received.append(dut.rx__payload.value.to_unsigned())
            if dut.framing_error.value:
                errors.append(1)

    cocotb.start_soon(monitor())
    values = list(range(256))
    rng.shuffle(values)
    frames = b"".join(wire.encode_command(rng.choice(list(Command)), rng.randrange(4096),
                                         rng.randrange(2 ** 32), rng.randrange(32))
                      for _ in range(4))
    sent = bytes(values) + frames
    await source.write(sent)
    await source.wait()
    await ClockCycles(dut.clk, 3 * CYCLES_PER_BYTE)
    assert bytes(received) == sent
    assert errors == []

    # A break: start bit, eight zeros and a low stop bit, held low a while longer.
    bit_ps = 10 ** 12 // BAUD
    dut.uart_rx.value = 0
    await Timer(13 * bit_ps, unit="ps")
    dut.uart_rx.value = 1
    await Timer(2 * bit_ps, unit="ps")
    await ClockCycles(dut.clk, 2 * CYCLES_PER_BYTE)
    assert errors == [1]
    assert bytes(received) == sent

    await source.write(b"\xa5\x5a")
    await source.wait()
    await ClockCycles(dut.clk, 3 * CYCLES_PER_BYTE)
    assert bytes(received) == sent + b"\xa5\x5a"
    assert errors == [1]
