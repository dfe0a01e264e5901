"""Speed of the Verilated virtual board (``sim/twin.py``): simulated cycles per wall second.

Figures: ``twin_cycles_per_s`` for the 4-channel top streaming the pairs test signal at a
realistic rate (about 2.8 * 10^5 tags/s of device time, half of what 12 Mbaud carries) while the
host reads every byte, and ``twin_idle_cycles_per_s`` for the same executable with the run gate
closed and the host reading an idle link. Both run free for ``CYCLES`` cycles (``--max-cycles``)
and are the speed the harness itself reports at exit, configuration included.
"""

import threading
import time

CYCLES = 20_000_000
CHANNELS, RULES = 4, 2


def _reader(port, sink):
    """Read the pty until the harness exits (the port then fails or stays empty)."""
    import serial
    link = serial.Serial(port, timeout=0.05)

    def loop():
        try:
            while True:
                chunk = link.read(max(1, link.in_waiting))
                sink["bytes"] += len(chunk)
                sink["data"] += chunk
                if sink.get("stop"):
                    return
        except (serial.SerialException, OSError):
            return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return link, thread


def _command(link, sink, op, name, value, rmap, seq):
    # The reader thread owns the port's input; poll its buffer for our REPLY (fixed length).
    from heraldry import wire
    from heraldry.protocol import WIRE_START, WireKind
    fmt = wire.WireFormat(CHANNELS, RULES)
    size = fmt.fixed_bytes[WireKind.REPLY]
    address = rmap[name].address
    start = len(sink["data"])
    link.write(wire.encode_command(op, address, value, seq))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = bytes(sink["data"][start:])
        for i, byte in enumerate(data):
            if byte >= WIRE_START and fmt.record_kind(byte) is WireKind.REPLY:
                parsed = fmt.well_formed(data[i:i + size])
                if parsed and parsed[1]["seq"] == seq and parsed[1]["address"] == address:
                    return parsed[1]["value"]
        time.sleep(0.001)
    raise RuntimeError(f"no reply to {name}")


def _run(binary, stream):
    from heraldry.host.config import Acquisition
    from heraldry.protocol import Command, RegisterMap
    from heraldry.sim.twin import Twin

    rmap = RegisterMap(CHANNELS, RULES)
    sink = {"bytes": 0, "data": bytearray()}
    with Twin(binary, max_cycles=CYCLES) as twin:
        link, thread = _reader(twin.port, sink)
        if stream:
            acq = Acquisition(channels=CHANNELS, rules=RULES, window_bins=4,
                              herald_masks=[0b0011], test_signal="pairs", pair_rate_hz=2e5,
                              dark_rate_hz=2e4, efficiency=0.5)
            bits = acq.gateware_config().as_value().value
            seq = 0
            writes = [(reg.name, bits >> reg.config_offset & ((1 << reg.width) - 1))
                      for reg in rmap.config_registers()]
            writes += [("control.clear", 1), ("control.run", 1)]
            for name, value in writes:
                seq = seq % 31 + 1
                _command(link, sink, Command.WRITE, name, value, rmap, seq)
        twin.wait(600)
        sink["stop"] = True
        thread.join(5)
        link.close()
    return twin.stats, sink["bytes"], twin.clock_hz


def run():
    from heraldry.sim.twin import build_twin
    binary = build_twin(CHANNELS, RULES)
    stream, stream_bytes, clock_hz = _run(binary, stream=True)
    idle, _, _ = _run(binary, stream=False)
    seconds = stream["cycles"] / clock_hz
    print(f"  twin, pairs streaming: {stream['cycles_per_s']:,.0f} cycles/s "
          f"({stream_bytes:,} bytes to the host in {stream['cycles']:,} cycles = "
          f"{stream_bytes / seconds / 1e3:,.0f} kB/s of device time); "
          f"idle link: {idle['cycles_per_s']:,.0f} cycles/s; "
          f"ratio {stream['cycles_per_s'] / idle['cycles_per_s']:.3f}")
    return {
        "twin_cycles_per_s": stream["cycles_per_s"],
        "twin_idle_cycles_per_s": idle["cycles_per_s"],
        "twin_stream_bytes_per_device_s": round(stream_bytes / seconds),
    }


if __name__ == "__main__":
    print(run())
