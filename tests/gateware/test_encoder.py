"""Wire encoder against the reference codec (:mod:`heraldry.wire`).

Every test drives the encoder cycle by cycle, logs the items it takes (with the unwrapped ``ref``
of that cycle) and the ``clear`` strobes, and checks that the bytes it sends are exactly what
``wire.encode_stream`` makes of that log, and that ``wire.decode_bytes`` gives back every record
fed in, with no decode error.
"""

import gc
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator

from heraldry import wire
from heraldry.gateware.encoder import Encoder
from heraldry.protocol import (
    COARSE_BITS, LOSS_COUNT_BITS, Kind, LossCause, WireKind, time_bits,
)

TOP = 2 ** COARSE_BITS


@dataclass
class Offer:
    """Something offered to the encoder from cycle ``at`` on (``kind``: "i", "side")."""
    at: int
    kind: str
    record: dict


@dataclass
class Plan:
    channels: int
    rules: int
    fine_bits: int
    base: int                       # unwrapped ref in cycle 0 (< 2**32: the encoder's epoch 0)
    interval: int
    cycles: int
    offers: list                    # Offer, per stream in order of ``at``
    clears: set = field(default_factory=set)
    ready: np.ndarray = None        # o.ready per cycle
    gates: bool = False             # HERALD records with attempt and offset


def side_payload(rec):
    return {"kind": WireKind.STATUS if rec["kind"] == "status" else WireKind.REPLY,
            "ok": rec["ok"], "seq": rec["seq"], "address": rec["address"],
            "value": rec["value"]}


def record_payload(rec, fine_bits, gates=False):
    tmod = 2 ** time_bits(fine_bits)
    kind = rec["kind"]
    out = {"kind": kind, "time": rec["time"] % tmod}
    if kind == Kind.TAG:
        out["payload"] = {"tag": {"channel": rec["channel"]}}
    elif kind == Kind.COINCIDENCE:
        out["payload"] = {"coincidence": {"pattern": rec["pattern"]}}
    elif kind == Kind.HERALD:
        out["payload"] = {"herald": {"rule": rec["rule"], "pattern": rec["pattern"]}}
        if gates:
            out["payload"]["herald"] |= {"attempt": rec["attempt"], "offset": rec["offset"]}
    else:
        out["payload"] = {"loss": {"cause": rec["cause"], "index": rec["index"],
                                   "count": rec["count"]}}
    return out


@dataclass
class Result:
    data: bytes
    log: list                       # items and clears as taken, with "cycle"
    taken: list                     # (cycle, stream) of each handshake
    first_byte: list                # cycle of each byte
    valid: np.ndarray


def run(plan):
    """Simulate ``plan``; return what the encoder sent and took."""
    n, r, f = plan.channels, plan.rules, plan.fine_bits
    dut = Encoder(n, r, fine_bits=f, gates=plan.gates)
    streams = {"i": [o for o in plan.offers if o.kind == "i"],
               "side": [o for o in plan.offers if o.kind != "i"]}
    ports = {"i": dut.i, "side": dut.side}
    out = Result(b"", [], [], [], np.zeros(plan.cycles, np.int64))
    sent = bytearray()

    async def bench(ctx):
        ctx.set(dut.anchor_interval, plan.interval)
        heads = {"i": 0, "side": 0}
        shown = {"i": None, "side": None}
        last_ready = None
        for t in range(plan.cycles):
            ctx.set(dut.ref, (plan.base + t) % TOP)
            ctx.set(dut.clear, t in plan.clears)
            for name, port in ports.items():
                queue, k = streams[name], heads[name]
                offer = queue[k] if k < len(queue) and queue[k].at <= t else None
                if offer is not shown[name]:
                    ctx.set(port.valid, offer is not None)
                    if offer is not None:
                        ctx.set(port.payload, record_payload(offer.record, f, plan.gates)
                                if name == "i"
                                else side_payload(offer.record))
                    shown[name] = offer
            ready = int(plan.ready[t])
            if ready != last_ready:
                ctx.set(dut.o.ready, ready)
                last_ready = ready
            _, _, iv, ir, sv, sr, ov, od = await ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.side.valid, dut.side.ready,
                dut.o.valid, dut.o.payload)
            cycle = plan.base + t
            if t in plan.clears:
                out.log.append({"kind": "clear", "cycle": cycle})
            for name, valid, rdy in (("i", iv, ir), ("side", sv, sr)):
                if valid and rdy:
                    out.log.append({**shown[name].record, "cycle": cycle})
                    out.taken.append((t, name))
                    heads[name] += 1
            out.valid[t] = ov
            if ov and ready:
                sent.append(od)
                out.first_byte.append(t)
        # Everything offered must have been taken.
        assert heads == {"i": len(streams["i"]), "side": len(streams["side"])}

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    out.data = bytes(sent)
    return out


def random_plan(seed, channels, rules, fine_bits=0, *, bundles=150, interval=200,
                base=TOP - 2000, p_ready=0.8, p_side=0.05, clears=2, max_latency=60,
                long_gaps=True, gates=False):
    """Bundles of records (a loss, tags in (fine, channel) order, heralds, a coincidence) at
    random coarse times, each offered ``latency`` cycles after its time, in order; random side
    records and clears in between; the run ends after every segment has been closed."""
    rng = np.random.default_rng(seed)
    n, r, f = channels, rules, fine_bits
    offers = []
    t = 20                              # cycle of the next bundle, relative to base
    wrap = TOP - base                   # cycle in which ref wraps
    avail = 0
    last_t0 = -1
    for _ in range(bundles):
        gap = int(rng.choice([1, 2, int(rng.integers(3, 40)),
                              int(rng.integers(interval, 3 * interval)) if long_gaps else 5],
                             p=[0.3, 0.2, 0.4, 0.1]))
        latency = int(rng.integers(1, max_latency))
        if t < wrap - 3 <= t + gap:
            # A bundle just before ref wraps, taken after it: unwrapped into the old epoch.
            gap, latency = wrap - 3 - t, max_latency
        t += gap
        coarse = plan_time = (base + t) << f
        records = []
        if rng.random() < 0.08:
            cause = LossCause(int(rng.integers(0, 4)))
            limit = {LossCause.MERGER_FULL: n, LossCause.DELAY_FULL: n,
                     LossCause.HERALD_RECORD: r, LossCause.COINCIDENCE_RECORD: 1}[cause]
            count = int(rng.choice([1, 2 ** LOSS_COUNT_BITS - 1,
                                    int(rng.integers(1, 2 ** LOSS_COUNT_BITS))]))
            records.append({"kind": Kind.LOSS, "cause": cause,
                            "index": int(rng.integers(0, limit)), "count": count,
                            "time": coarse})
        mask = int(rng.integers(0, 2 ** n))
        fines = rng.integers(0, 2 ** f, n)
        tags = sorted((int(fines[c]), c) for c in range(n) if (mask >> c) & 1)
        records += [{"kind": Kind.TAG, "channel": c, "time": plan_time + fine}
                    for fine, c in tags]
        if rng.random() < 0.15:
            fine = int(rng.integers(0, 2 ** f))
            pattern = int(rng.integers(1, 2 ** n))
            rules_fired = [i for i in range(r) if rng.random() < 0.6] or [r - 1]
            records += [{"kind": Kind.HERALD, "rule": i, "pattern": pattern,
                         "time": plan_time + fine} for i in rules_fired]
            if gates:
                for rec in records[-len(rules_fired):]:
                    rec["attempt"] = int(rng.choice([0, 1, 2**32 - 1, rng.integers(0, 2**32)]))
                    rec["offset"] = int(rng.choice([0, 2**16 - 1, rng.integers(0, 2**16)]))
                    if rng.random() < 0.3:      # no sync edge: both fields left out
                        rec["attempt"], rec["offset"] = 0, 2**16 - 1
        if rng.random() < 0.15:
            t0 = max(last_t0 + 1, plan_time - int(rng.integers(0, 2 ** 11)))
            if t0 <= plan_time:
                last_t0 = t0
                records.append({"kind": Kind.COINCIDENCE, "pattern": int(rng.integers(1, 2 ** n)),
                                "time": t0})
        if not records:
            continue
        avail = max(avail, t + latency)
        offers += [Offer(avail, "i", rec) for rec in records]
    end = avail
    # Side records at random cycles (some while records wait, some in quiet stretches).
    side_at = np.sort(rng.integers(0, end + 10, max(1, int(p_side * end / 10))))
    for at in side_at:
        offers.append(Offer(int(at), "side", {
            "kind": "status" if rng.random() < 0.5 else "reply",
            "ok": int(rng.integers(0, 2)), "seq": int(rng.integers(0, 32)),
            "address": int(rng.choice([0, 4095, int(rng.integers(0, 4096))])),
            "value": int(rng.choice([0, 2 ** 32 - 1, int(rng.integers(0, 2 ** 32))]))}))
    clear_at = set(int(x) for x in rng.integers(0, end, clears))
    cycles = end + 3 * interval + 200
    ready = rng.random(cycles) < p_ready
    ready[-(2 * interval + 100):] = True
    return Plan(channels=n, rules=r, fine_bits=f, base=base, interval=interval, cycles=cycles,
                offers=offers, clears=clear_at, ready=ready, gates=gates)


def data_records(records):
    """The data and side records of a decoded stream, in order, without anchors/checks (a LOSS
    record's decoded time is the running time: not part of the wire record)."""
    out = []
    for rec in records:
        if rec["kind"] in ("anchor", "time", "check", "clear"):
            continue
        rec = {k: v for k, v in rec.items() if k != "cycle"}
        if rec["kind"] == Kind.LOSS:
            rec.pop("time", None)
            rec["cause"] = LossCause(rec["cause"])
        out.append(rec)
    return out


def check_against_reference(plan, result, final_check=True):
    """``final_check``: the run lasted long enough for the encoder to close its last segment."""
    n, r, f = plan.channels, plan.rules, plan.fine_bits
    expected = wire.encode_stream(result.log, n, r, f, anchor_interval=plan.interval,
                                  final_check=final_check, gates=plan.gates)
    if result.data != expected:
        at = next((k for k, (a, b) in enumerate(zip(result.data, expected)) if a != b),
                  min(len(result.data), len(expected)))
        raise AssertionError(
            f"bytes differ at {at} of {len(expected)} (got {len(result.data)}): "
            f"got {result.data[max(0, at - 8):at + 8].hex(' ')}, "
            f"expected {expected[max(0, at - 8):at + 8].hex(' ')}")
    records, errors = wire.decode_bytes(result.data, n, r, f, gates=plan.gates)
    if final_check:
        assert errors == {"decode_errors": 0, "skipped_bytes": 0, "unverified": 0}
        assert data_records(records) == data_records(result.log)
    return records, errors


@pytest.mark.parametrize("channels,rules,fine_bits,seed", [
    pytest.param(1, 1, 0, 1, marks=pytest.mark.slow),
    pytest.param(4, 2, 0, 2, marks=pytest.mark.slow),
    pytest.param(8, 8, 0, 3, marks=pytest.mark.slow),
    pytest.param(4, 3, 2, 4, marks=pytest.mark.slow),
    (2, 1, 2, 5), (4, 2, 4, 6),   # the iCEBreaker's and the ULX3S's shapes: also in make test
])
def test_random_streams_match_reference(channels, rules, fine_bits, seed):
    plan = random_plan(seed, channels, rules, fine_bits, p_side=0.4)
    result = run(plan)
    records, _ = check_against_reference(plan, result)
    # The stimulus did what it is for: many segments, every kind, a wrap of ref, side records
    # taken while records waited, clears.
    kinds = [rec["kind"] for rec in records]
    assert kinds.count("anchor") >= 10
    assert {Kind.TAG, Kind.HERALD, Kind.COINCIDENCE, Kind.LOSS, "status", "reply"} <= set(kinds)
    assert plan.base + plan.cycles > TOP
    assert any(rec["time"] >> fine_bits < TOP <= rec["cycle"] for rec in result.log
               if rec["kind"] in (Kind.TAG, Kind.HERALD))
    assert sum(rec["kind"] == "clear" for rec in result.log) == len(plan.clears)
    taken = [name for _, name in result.taken]
    assert taken.count("side") > 5
    assert not plan.ready.all()
    # Some segments were closed by a CHECK alone: one whose following item (if any) was taken
    # no earlier than the cycle before the CHECK's first byte (a CHECK sent for an item comes
    # at least two cycles after that item was taken).
    lone, items, position = 0, 0, 0
    for rec in wire.split_records(result.data):
        kind = wire.WireFormat.record_kind(rec[0])
        if kind == WireKind.CHECK:
            sent_at = result.first_byte[position]
            lone += items == len(result.taken) or result.taken[items][0] >= sent_at - 1
        elif kind not in (WireKind.ANCHOR, WireKind.TIME):
            items += 1
        position += len(rec)
    checks = kinds.count("check")
    assert 3 <= lone < checks, (lone, checks)


@pytest.mark.parametrize("channels,rules,fine_bits,seed", [(2, 1, 0, 7), (4, 3, 4, 8)])
def test_random_streams_with_gates_match_reference(channels, rules, fine_bits, seed):
    """A core with gates: HERALD records carry attempt and offset (extreme values included)."""
    plan = random_plan(seed, channels, rules, fine_bits, bundles=120, p_side=0.2, gates=True)
    result = run(plan)
    records, _ = check_against_reference(plan, result)
    heralds = [rec for rec in records if rec["kind"] == Kind.HERALD]
    assert len(heralds) >= 10
    assert {2**32 - 1, 0} <= {rec["attempt"] for rec in heralds}
    # heralds with no sync edge (attempt 0, offset 65535: the synced bit clear) and with one
    unsynced = [(rec["attempt"], rec["offset"]) == (0, 2**16 - 1) for rec in heralds]
    assert any(unsynced) and not all(unsynced)
    # the same stream without gates is shorter by the two fields of every synced herald record
    plain = wire.encode_stream([{k: v for k, v in rec.items() if k not in ("attempt", "offset")
                                 or rec["kind"] != Kind.HERALD} for rec in result.log],
                               channels, rules, fine_bits, anchor_interval=plan.interval)
    assert len(plain) < len(result.data)


def test_anchor_interval_from_register_value():
    # Interval 0: every record gets its own segment (CHECK after each one).
    plan = random_plan(5, 2, 1, bundles=40, interval=0, p_side=0.2, long_gaps=False)
    plan.cycles = max(offer.at for offer in plan.offers) + 1500
    plan.ready = np.ones(plan.cycles, bool)
    result = run(plan)
    records, _ = check_against_reference(plan, result)
    kinds = [rec["kind"] for rec in records]
    data = [k for k in kinds if k not in ("anchor", "time", "check", "status", "reply")]
    assert kinds.count("anchor") == kinds.count("check") == len(data)


def test_one_byte_per_cycle():
    # One-byte TAGs (N = 4: 2 channel bits, delta < 16) and side records offered all at once
    # with o.ready high: after the ANCHOR, the bytes leave one per cycle without a bubble.
    n = 4
    base = 1000
    offers = [Offer(5, "i", {"kind": Kind.TAG, "channel": k % n, "time": base + k // 2})
              for k in range(300)]
    offers += [Offer(5, "side", {"kind": "reply", "ok": 1, "seq": k, "address": 7,
                                 "value": k}) for k in range(4)]
    plan = Plan(n, 1, 0, base + 10, 2 ** 20, 1000, offers, ready=np.ones(1000, bool))
    plan.interval = 600
    result = run(plan)
    check_against_reference(plan, result)
    byte_cycles = np.array(result.first_byte)
    burst = byte_cycles[byte_cycles < 600]
    # everything but the final CHECK: ANCHOR, TIMEs, tags (two bytes for the first of a group:
    # measured from the ANCHOR's time), replies
    assert len(burst) == len(result.data) - 6 > 9 + 3 + 300 + 4 * 9
    assert burst[-1] - burst[0] == len(burst) - 1   # no bubble
    # Latency: the first item is taken in cycle 5, its ANCHOR's first byte goes in cycle 7.
    assert result.taken[0][0] == 5 and burst[0] == 7
    # Side records were interleaved with the waiting records, not held back until the end.
    taken = [name for _, name in result.taken]
    assert taken[:8] == ["i", "side", "i", "side", "i", "side", "i", "side"]


def test_check_alone_closes_idle_segment():
    # After the last record, the encoder closes its segment by itself once the interval has
    # passed (CHECK alone, in the cycle after the interval ends), and sends nothing more.
    base, interval = TOP - 50, 100
    offers = [Offer(10, "i", {"kind": Kind.TAG, "channel": 0, "time": base + 3}),
              Offer(30, "i", {"kind": Kind.TAG, "channel": 1, "time": base + 25}),
              Offer(200, "side", {"kind": "status", "ok": 1, "seq": 0, "address": 1,
                                  "value": 99})]
    plan = Plan(2, 1, 0, base, interval, 400, offers, ready=np.ones(400, bool))
    result = run(plan)
    records, _ = check_against_reference(plan, result)
    assert [rec["kind"] for rec in records] == ["anchor", "time", Kind.TAG, Kind.TAG, "check",
                                                "status"]
    # The segment opened when the first tag was taken (cycle 10); its CHECK is taken (alone)
    # in cycle 10 + interval, so its 6 bytes leave from cycle 10 + interval + 2 on, long before
    # the status record comes.
    cycles = np.array(result.first_byte)
    assert list(cycles[(cycles > 100) & (cycles < 200)]) == list(range(112, 118))
    assert len(cycles[cycles < 100]) == 9 + 3 + 1 + 1       # ANCHOR, TIME, two TAGs


def test_clear_starts_new_segment():
    # A clear closes the segment (CHECK right away) and the next record opens a new one, even
    # long before the interval ends; a record taken in the clear's cycle is after it.
    base = 5000
    offers = [Offer(10, "i", {"kind": Kind.TAG, "channel": 0, "time": base + 5}),
              Offer(12, "i", {"kind": Kind.HERALD, "rule": 1, "pattern": 3, "time": base + 6}),
              Offer(40, "i", {"kind": Kind.TAG, "channel": 1, "time": base + 38}),
              Offer(60, "i", {"kind": Kind.COINCIDENCE, "pattern": 3, "time": base + 1})]
    plan = Plan(2, 2, 0, base, 10_000, 200, offers, clears={30, 60},
                ready=np.ones(200, bool))
    result = run(plan)
    # The last segment stays open: no CHECK before the interval of 10k cycles has passed.
    records, errors = check_against_reference(plan, result, final_check=False)
    assert [rec["kind"] for rec in records] == [
        "anchor", "time", Kind.TAG, Kind.HERALD, "check", "anchor", "time", Kind.TAG, "check",
        "anchor"]
    # (the open segment's ANCHOR is a group of its own, verified by the TIME after it; that
    # TIME and the coincidence are the open group)
    assert errors == {"decode_errors": 0, "skipped_bytes": 0, "unverified": 2}
    anchors = [rec["time"] for rec in records if rec["kind"] == "anchor"]
    assert anchors == [base + 5, base + 38, base + 1]
    # The open segment's ANCHOR carries the coincidence's t0.
    assert result.data.endswith(wire.encode_records(
        [{"kind": "anchor", "time": base + 1}, {"kind": "time"},
         {"kind": Kind.COINCIDENCE, "pattern": 3, "time": base + 1}], 2, 2))


def test_anchor_unwraps_against_ref():
    # Records taken well after ref wrapped (epoch 1), with times before and after the wrap,
    # and one taken before the wrap with a time from just before it.
    base = TOP - 100
    offers = [Offer(50, "i", {"kind": Kind.TAG, "channel": 0, "time": TOP - 70}),
              Offer(300, "i", {"kind": Kind.LOSS, "cause": LossCause.DELAY_FULL, "index": 1,
                               "count": 5, "time": TOP - 3}),
              Offer(300, "i", {"kind": Kind.TAG, "channel": 1, "time": TOP + 2}),
              Offer(700, "i", {"kind": Kind.HERALD, "rule": 2, "pattern": 2,
                               "time": TOP + 560})]
    plan = Plan(2, 3, 0, base, 150, 1200, offers, ready=np.ones(1200, bool))
    result = run(plan)
    records, _ = check_against_reference(plan, result)
    anchors = [rec["time"] for rec in records if rec["kind"] == "anchor"]
    assert anchors == [TOP - 70, TOP - 3, TOP + 560]


def test_fine_bits_anchor_and_deltas():
    # F = 3: the ANCHOR carries Cat(fine, unwrapped coarse); a TAG's delta counts bins.
    f = 3
    base = TOP - 20
    offers = [Offer(30, "i", {"kind": Kind.TAG, "channel": 2, "time": ((TOP + 5) << f) + 7}),
              Offer(31, "i", {"kind": Kind.TAG, "channel": 0, "time": ((TOP + 6) << f) + 1}),
              Offer(32, "i", {"kind": Kind.COINCIDENCE, "pattern": 5,
                              "time": ((TOP - 3) << f) + 2})]
    plan = Plan(3, 1, f, base, 500, 700, offers, ready=np.ones(700, bool))
    result = run(plan)
    records, _ = check_against_reference(plan, result)
    assert [rec["time"] for rec in records if rec["kind"] == "anchor"] == [((TOP + 5) << f) + 7]


@pytest.mark.parametrize("kwargs", [dict(channels=0, rules=1), dict(channels=9, rules=1),
                                    dict(channels=2, rules=0), dict(channels=2, rules=9),
                                    dict(channels=2, rules=1, fine_bits=-1),
                                    dict(channels=2, rules=1, fine_bits=24)])
def test_bad_parameters(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError):
            Encoder(**kwargs)
        gc.collect()
